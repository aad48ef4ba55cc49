#!/usr/bin/env python3
"""Checks the reference peers for real: starts each one as peers/servers.txt says, on a free
loopback port, and checks the upgrade on /ws, text, binary and fragmented echo, ping, the close
handshake (the server's Close frame comes back) and that SIGTERM stops it within 5 s.
A peer whose command takes {cert} and {key} (the NAME-wss lines) is checked over wss://: it gets
a self-signed ECDSA P-256 certificate for 127.0.0.1 made here with the openssl command, and the
client trusts that certificate alone.

With --connections N it also holds N idle connections (no pings, no compression, like
`wsscale load`) and prints the RSS growth per connection of the server's process tree
(VmRSS from /proc, summed over the process and its descendants). A rough figure: the table
comes from `wsscale compare` (scripts/bench-peers.sh).

Runs on the python-websockets peer's venv, which has the websockets client:

    peers/install.sh python-websockets
    peers/python-websockets/.venv/bin/python peers/check.py [--connections 2000] [NAME...]

Exits non-zero when a check fails. Every run is bounded: each step has a deadline.
"""

import argparse
import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

REPO = Path(__file__).resolve().parent.parent
SERVERS = REPO / "peers" / "servers.txt"


def read_servers():
    servers = {}
    for line in SERVERS.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, command = line.split("=", 1)
            servers[name] = command
    return servers


def make_certificate(directory):
    """A self-signed certificate for 127.0.0.1 and localhost (openssl): (cert, key) paths."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                    "-subj", "/CN=wsscale peers check",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=30)
    return cert, key


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(pid):
    """pid and all its descendants, from the ppid field of /proc/*/stat."""
    children = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def vm_rss_bytes(pid):
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


async def wait_for_port(port, process, deadline_s):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before listening")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {deadline_s} s")


async def check_protocol(url, tls):
    """Returns a list of (check, ok, detail). tls: the client's SSLContext for wss://, or None."""
    results = []
    async with connect(url, compression=None, ping_interval=None, close_timeout=5,
                       max_size=None, ssl=tls) as ws:
        results.append(("upgrade", True, f"101 on {url}"))

        text = "hello, wsscale \u00e9\u6f22"
        await ws.send(text)
        got = await asyncio.wait_for(ws.recv(), 5)
        results.append(("text echo", got == text, repr(got)[:40]))

        data = bytes(range(256)) * 128  # 32 KiB
        await ws.send(data)
        got = await asyncio.wait_for(ws.recv(), 5)
        results.append(("binary echo", got == data, f"{len(got) if got else 0} bytes"))

        await ws.send(["frag", "ment"])  # one text message in two frames
        got = await asyncio.wait_for(ws.recv(), 5)
        results.append(("fragmented echo", got == "fragment", repr(got)))

        pong = await ws.ping(b"wsscale")
        await asyncio.wait_for(pong, 5)
        results.append(("ping answered", True, "pong"))

        await ws.close()
        received = ws.protocol.close_rcvd
        clean = received is not None and ws.protocol.close_rcvd_then_sent is False
        detail = f"server sent Close {received.code}" if received else "no Close from the server"
        results.append(("close handshake", clean, detail))

    # What the server does with the client's default offer of permessage-deflate (information).
    async with connect(url, ping_interval=None, close_timeout=5, ssl=tls) as ws:
        await ws.send("deflate?")
        got = await asyncio.wait_for(ws.recv(), 5)
        extension = ws.response.headers.get("Sec-WebSocket-Extensions", "none")
        results.append(("echo with deflate offered", got == "deflate?", f"negotiated: {extension}"))

    # Another path (information: whatever the library does by default).
    try:
        async with connect(url.replace("/ws", "/other"), compression=None, ping_interval=None,
                           close_timeout=2, open_timeout=5, ssl=tls):
            detail = "upgraded"
    except InvalidStatus as error:
        detail = f"HTTP {error.response.status_code}"
    except Exception as error:  # noqa: BLE001 -- the outcome is information
        detail = f"{type(error).__name__}: {error}"
    results.append(("path /other", True, detail))
    return results


async def hold_idle(url, tls, pid, n_connections, in_flight):
    """Opens n_connections idle connections, reads the RSS growth, closes them."""
    await asyncio.sleep(1.0)
    rss_before = vm_rss_bytes(pid)
    semaphore = asyncio.Semaphore(in_flight)

    async def open_one():
        async with semaphore:
            return await connect(url, compression=None, ping_interval=None, close_timeout=5,
                                 open_timeout=20, ssl=tls)

    start = time.monotonic()
    results = await asyncio.gather(*(open_one() for _ in range(n_connections)),
                                   return_exceptions=True)
    open_secs = time.monotonic() - start
    connections = [c for c in results if not isinstance(c, BaseException)]
    failures = len(results) - len(connections)

    # Settle: read until two readings 0.5 s apart differ by less than 0.5 %, at most 10 s.
    rss_with, deadline = vm_rss_bytes(pid), time.monotonic() + 10
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = vm_rss_bytes(pid)
        stable = abs(now - rss_with) < 0.005 * rss_with
        rss_with = now
        if stable:
            break

    async def close_one(ws):
        async with semaphore:
            await ws.close()
            return ws.protocol.close_rcvd is not None

    clean = sum(await asyncio.gather(*(close_one(ws) for ws in connections)))
    held = len(connections)
    return {
        "held": held,
        "failed": failures,
        "open_secs": open_secs,
        "rss_before": rss_before,
        "rss_with": rss_with,
        "per_connection": (rss_with - rss_before) / held if held else float("nan"),
        "clean_closes": clean,
    }


def stop_with_sigterm(process, deadline_s=5.0):
    start = time.monotonic()
    tree_before = process_tree(process.pid)
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return False, f"still running {deadline_s} s after SIGTERM (killed)"
    elapsed = time.monotonic() - start
    leftovers = [p for p in tree_before[1:] if Path(f"/proc/{p}").exists()]
    if leftovers:
        os.killpg(process.pid, signal.SIGKILL)
        return False, f"exited ({code}) but left children {leftovers}"
    return True, f"exited with {code} after {elapsed:.2f} s"


async def check_peer(name, command, n_connections, in_flight, log_dir):
    port = free_port()
    argv = command.replace("{port}", str(port)).split()
    tls = None
    if "{cert}" in command or "{key}" in command:
        cert, key = make_certificate(log_dir)
        argv = [arg.replace("{cert}", str(cert)).replace("{key}", str(key)) for arg in argv]
        tls = ssl.create_default_context(cafile=cert)
    env = dict(os.environ, WSSCALE_PORT=str(port))
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    results, memory = [], None
    try:
        started = time.monotonic()
        await wait_for_port(port, process, 60)
        results.append(("listening", True, f"after {time.monotonic() - started:.2f} s"))
        url = f"{'ws' if tls is None else 'wss'}://127.0.0.1:{port}/ws"
        results += await asyncio.wait_for(check_protocol(url, tls), 60)
        if n_connections:
            memory = await asyncio.wait_for(
                hold_idle(url, tls, process.pid, n_connections, in_flight), 180)
    except Exception as error:  # noqa: BLE001 -- reported as a failed check
        results.append(("run", False, f"{type(error).__name__}: {error} (log: {log_path})"))
    finally:
        if process.poll() is None:
            ok, detail = stop_with_sigterm(process)
        else:
            ok, detail = False, f"had already exited with {process.returncode}"
        results.append(("SIGTERM stops it", ok, detail))
    return results, memory


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="peers to check (default: all in servers.txt)")
    parser.add_argument("--connections", type=int, default=0,
                        help="idle connections to hold for the RSS figure (0: none)")
    parser.add_argument("--in-flight", type=int, default=100,
                        help="connection attempts in flight while opening them")
    args = parser.parse_args()

    servers = read_servers()
    names = args.names or list(servers)
    unknown = [n for n in names if n not in servers]
    if unknown:
        sys.exit(f"unknown peer(s) {unknown}; known: {list(servers)}")

    failed = False
    log_dir = Path(tempfile.mkdtemp(prefix="wsscale-peers-check-"))
    for name in names:
        print(f"== {name}: {servers[name]}", flush=True)
        results, memory = await check_peer(name, servers[name], args.connections,
                                           args.in_flight, log_dir)
        for check, ok, detail in results:
            failed |= not ok
            print(f"  {'ok  ' if ok else 'FAIL'} {check}: {detail}", flush=True)
        if memory:
            failed |= memory["held"] < args.connections
            print(f"  rss: {memory['rss_before'] / 2**20:.1f} MiB idle, "
                  f"{memory['rss_with'] / 2**20:.1f} MiB with {memory['held']} connections "
                  f"({memory['failed']} failed, opened in {memory['open_secs']:.1f} s): "
                  f"{memory['per_connection'] / 1024:.1f} KiB per connection; "
                  f"{memory['clean_closes']} clean closes", flush=True)
    print(f"logs: {log_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
