// Echo server written the way the `ws` README writes one, with its default options.
// Port: first argument, else WSSCALE_PORT. SIGTERM: Node's default (the process exits).
// wss://: `--cert FILE --key FILE` (PEM) serve TLS on the same port, the way the `ws`
// README's "External HTTP/S server" example does (an `https` server with Node's TLS
// defaults, `ws` attached to it).
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import { parseArgs } from 'node:util';
import { WebSocketServer } from 'ws';

const usage = 'usage: node server.js PORT [--cert FILE --key FILE] (or set WSSCALE_PORT)';
let parsed;
try {
  parsed = parseArgs({
    allowPositionals: true,
    options: { cert: { type: 'string' }, key: { type: 'string' } },
  });
} catch (error) {
  console.error(`${error.message}\n${usage}`);
  process.exit(2);
}
const { values: options, positionals } = parsed;
const port = Number(positionals[0] ?? process.env.WSSCALE_PORT);
if (!Number.isInteger(port) || port <= 0) {
  console.error(usage);
  process.exit(2);
}
if ((options.cert === undefined) !== (options.key === undefined)) {
  console.error(`--cert and --key go together\n${usage}`);
  process.exit(2);
}

function echo(ws) {
  ws.on('error', console.error);

  ws.on('message', function message(data, isBinary) {
    ws.send(data, { binary: isBinary });
  });
}

if (options.cert === undefined) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port, path: '/ws' });
  wss.on('connection', echo);
  wss.on('listening', () => console.error(`node-ws listening ws://127.0.0.1:${port}/ws`));
} else {
  let server;
  try {
    server = createServer({ cert: readFileSync(options.cert), key: readFileSync(options.key) });
  } catch (error) {
    console.error(`node-ws: --cert ${options.cert} --key ${options.key}: ${error.message}`);
    process.exit(2);
  }
  const wss = new WebSocketServer({ server, path: '/ws' });
  wss.on('connection', echo);
  server.listen(port, '127.0.0.1', () => console.error(`node-ws listening wss://127.0.0.1:${port}/ws`));
}
