#!/usr/bin/env python
"""Echo server written the way the websockets docs write one (asyncio API), default options.

websockets serves every path, so /ws is served like any other. Port: first argument, else
WSSCALE_PORT. SIGTERM: Python's default (the process exits); asyncio installs no handler.
"""

import asyncio
import os
import sys

from websockets.asyncio.server import serve


async def echo(websocket):
    async for message in websocket:
        await websocket.send(message)


async def main(port):
    async with serve(echo, "127.0.0.1", port) as server:
        print(f"python-websockets listening ws://127.0.0.1:{port}/ws", file=sys.stderr)
        await server.serve_forever()


if __name__ == "__main__":
    port = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("WSSCALE_PORT")
    if port is None:
        sys.exit("usage: server.py PORT (or set WSSCALE_PORT)")
    asyncio.run(main(int(port)))
