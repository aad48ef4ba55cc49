// Echo server written the way the `ws` README writes one, with its default options.
// Port: first argument, else WSSCALE_PORT. SIGTERM: Node's default (the process exits).
import { WebSocketServer } from 'ws';

const port = Number(process.argv[2] ?? process.env.WSSCALE_PORT);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node server.js PORT (or set WSSCALE_PORT)');
  process.exit(2);
}

const wss = new WebSocketServer({ host: '127.0.0.1', port, path: '/ws' });

wss.on('connection', function connection(ws) {
  ws.on('error', console.error);

  ws.on('message', function message(data, isBinary) {
    ws.send(data, { binary: isBinary });
  });
});

wss.on('listening', () => console.error(`node-ws listening ws://127.0.0.1:${port}/ws`));
