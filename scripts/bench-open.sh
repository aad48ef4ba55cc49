#!/usr/bin/env bash
# Opening benchmark: N connections (default 19,000) against `wsscale serve` on loopback;
# prints the load generator's summary (opening rate, its RSS per connection) and the
# server's view. Bounded: the run holds for --hold and stops by itself.
#
#   scripts/bench-open.sh [CONNECTIONS] [MODE] [extra wsscale load flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
connections=${1:-19000}
mode=${2:-tasks}
shift $(( $# > 2 ? 2 : $# ))
bin=$(wsscale_bin)
out=$(mktemp -d)
server_pid=
trap '[ -n "$server_pid" ] && stop_process "$server_pid" 15; rm -rf "$out"' EXIT
start_server "$bin" "$mode" 127.0.0.1:0 "$out"
echo "server: $mode mode, $ws_url"
"$bin" load --url "$ws_url" --connections "$connections" --rate 0 --concurrency 512 --hold 5s \
    --ping-interval 5s --json "$out/summary.json" "$@" &
load=$!
# The server's view while the connections are held.
wait_metric "$metrics_url" wsscale_connections_active "$connections" 30 || true
scrape=$(curl -s "$metrics_url")
grep -E '^(wsscale_connections_active|wsscale_memory_per_connection_bytes|process_resident_memory_bytes|process_threads)' \
    <<<"$scrape"
wait "$load"
