#!/usr/bin/env python
"""Echo server written the way the websockets docs write one (asyncio API), default options.

websockets serves every path, so /ws is served like any other. Port: first argument, else
WSSCALE_PORT. SIGTERM: Python's default (the process exits); asyncio installs no handler.

wss://: `--cert FILE --key FILE` (PEM) serve TLS on the same port, the way the websockets
docs' "Encrypt connections" example does: an `ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)` with
`load_cert_chain`, passed to `serve(..., ssl=ssl_context)` (Python's ssl module: OpenSSL,
with its defaults).
"""

import argparse
import asyncio
import os
import ssl
import sys

from websockets.asyncio.server import serve


async def echo(websocket):
    async for message in websocket:
        await websocket.send(message)


async def main(port, ssl_context):
    async with serve(echo, "127.0.0.1", port, ssl=ssl_context) as server:
        scheme = "ws" if ssl_context is None else "wss"
        print(f"python-websockets listening {scheme}://127.0.0.1:{port}/ws", file=sys.stderr)
        await server.serve_forever()


def tls_context(parser, cert, key):
    """The docs' SSL context, or the exit status 2 naming the file that is wrong."""
    for flag, path in (("--cert", cert), ("--key", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as error:
            parser.exit(2, f"python-websockets: {flag} {path}: {error.strerror}\n")
    ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ssl_context.load_cert_chain(cert, key)
    except ssl.SSLError as error:
        parser.exit(2, f"python-websockets: --cert {cert} --key {key}: {error}\n")
    return ssl_context


if __name__ == "__main__":
    parser = argparse.ArgumentParser(usage="server.py PORT [--cert FILE --key FILE] "
                                           "(or set WSSCALE_PORT)")
    parser.add_argument("port", nargs="?", type=int, default=os.environ.get("WSSCALE_PORT"))
    parser.add_argument("--cert", help="PEM certificate (chain): serve wss://")
    parser.add_argument("--key", help="PEM private key of --cert")
    args = parser.parse_args()
    if args.port is None:
        parser.error("no PORT")
    if (args.cert is None) != (args.key is None):
        parser.error("--cert and --key go together")
    context = None if args.cert is None else tls_context(parser, args.cert, args.key)
    asyncio.run(main(int(args.port), context))
