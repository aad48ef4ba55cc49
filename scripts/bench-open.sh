#!/usr/bin/env bash
# Opening benchmark: N connections (default 19,000) against `wsscale serve` on loopback;
# prints the load generator's summary (opening rate, its RSS per connection) and the
# server's view. Bounded: the run holds for --hold and stops by itself.
#
#   scripts/bench-open.sh [CONNECTIONS] [MODE] [extra wsscale load flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
connections=${1:-19000}
mode=${2:-tasks}
shift $(( $# > 2 ? 2 : $# ))
cargo build --release --quiet
bin=target/release/wsscale
out=$(mktemp -d)
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$out"' EXIT
"$bin" serve --mode "$mode" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 >"$out/serve.out" 2>"$out/serve.err" &
server=$!
for _ in $(seq 100); do grep -q metrics "$out/serve.out" 2>/dev/null && break; sleep 0.1; done
read -r _ ws _ metrics <"$out/serve.out"
echo "server: $mode mode, $ws"
"$bin" load --url "$ws" --connections "$connections" --rate 0 --concurrency 512 --hold 5s \
    --ping-interval 5s --json "$out/summary.json" "$@" &
load=$!
# The server's view while the connections are held.
for _ in $(seq 300); do
    active=$(curl -s "$metrics" | awk '/^wsscale_connections_active/ {print $2}')
    [ "${active:-0}" = "$connections" ] && break
    sleep 0.1
done
curl -s "$metrics" | grep -E '^(wsscale_connections_active|wsscale_memory_per_connection_bytes|process_resident_memory_bytes|process_threads)'
wait "$load"
