#!/usr/bin/env bash
# What permessage-deflate costs once messages flow: the lean server's live heap (its
# wsscale_heap_allocated_bytes) before any connection and after every connection sent one
# compressible 1 KiB message and got its compressed echo, per --deflate setting, with the
# generator offering the extension as Chromium does. Loopback only, bounded (about 15 s
# per setting), stops what it starts. compare measures idle connections; this is the
# figure for connections that have sent something.
#
#   scripts/bench-deflate-messages.sh [CONNECTIONS]      (default 2000)
#   WSSCALE_BIN=path/to/wsscale scripts/bench-deflate-messages.sh
set -euo pipefail
cd "$(dirname "$0")/.."
connections=${1:-2000}
if [ -z "${WSSCALE_BIN:-}" ]; then
    cargo build --release --quiet
fi
bin=${WSSCALE_BIN:-target/release/wsscale}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
for setting in "off" "stateless" "context 15" "context 10"; do
    read -r mode bits <<<"$setting"
    args=(serve --engine lean --mode tasks --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --deflate "$mode")
    [ -n "${bits:-}" ] && args+=(--deflate-window-bits "$bits")
    "$bin" "${args[@]}" > serve.out 2>&1 &
    server=$!
    for _ in $(seq 100); do grep -q "metrics" serve.out 2>/dev/null && break; sleep 0.1; done
    ws=$(grep -o "url=ws://[0-9.:]*/ws" serve.out | head -1 | cut -d= -f2)
    metrics=$(grep -o "metrics=http://[0-9.:]*/metrics" serve.out | head -1 | cut -d= -f2)
    heap() { curl -s "$metrics" | awk '/^wsscale_heap_allocated_bytes/{print $2}'; }
    before=$(heap)
    "$bin" load --url "$ws" -n "$connections" --hold 14s --ping-interval 0s --message-interval 8s --message-size 1KiB --offer-deflate --json load.json > load.out 2>&1 &
    load=$!
    sleep 11
    after=$(heap)
    wait $load
    kill -TERM $server; wait $server || true
    echo "$setting: heap $before B before, $after B after one message on each of $connections connections: $(( (${after%.*} - ${before%.*}) / connections )) B per connection; echoed $(jq .messages_echoed load.json)"
done
