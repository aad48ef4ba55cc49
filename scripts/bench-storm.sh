#!/usr/bin/env bash
# Reconnect storm: N held connections (default 19,000; `max` in threads mode is the
# server's cap minus 64), the server stopped with SIGTERM (every client gets close 1001)
# and started again on the same port, the generator reconnecting (`--reconnect`, full
# jitter backoff from 100 ms to 5 s). Prints the time until all N are back, the 503s and
# failures on the way, and the new server's RSS per connection after the storm against
# the figure after the paced ramp (5,000/s).
#
#   scripts/bench-storm.sh [N|max] [MODE]
#
# Bounded: every wait has a deadline, the generator holds at most 10 minutes, and the
# script stops the generator and the servers itself. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
connections=${1:-19000}
mode=${2:-tasks}
bin=$(wsscale_bin)
out=$(mktemp -d)
server_pid=
load=
cleanup() {
    [ -n "$load" ] && kill -KILL "$load" 2>/dev/null
    [ -n "$server_pid" ] && stop_process "$server_pid" 15
    echo "logs kept in $out"
}
trap cleanup EXIT

start_server "$bin" "$mode" 127.0.0.1:0 "$out"
if [ "$connections" = max ]; then
    connections=$(( $(metric "$metrics_url" wsscale_connections_max | cut -d. -f1) - 64 ))
fi
listen=$ws_addr
echo "storm: $mode mode, $connections connections, server $ws_url (pid $server_pid)"

"$bin" load --url "$ws_url" --connections "$connections" --rate 5000 --concurrency 256 --hold 10m \
    --ping-interval 5s --reconnect --json "$out/summary.json" >"$out/load.out" 2>"$out/load.err" &
load=$!
wait_metric "$metrics_url" wsscale_connections_active "$connections" 120
paced_rss=$(steady_metric "$metrics_url" wsscale_memory_per_connection_bytes 'source="rss"' 15)
echo "paced ramp: $connections held, server RSS per connection ${paced_rss%%.*} B"

# The storm: SIGTERM, wait for the drain and the exit, start again on the same port.
stopped=$(now)
stop_process "$server_pid" 60
server_pid=
exited=$(now)
start_server "$bin" "$mode" "$listen" "$out"
listening=$(now)
echo "server stopped (exit after $(awk -v a="$stopped" -v b="$exited" 'BEGIN {printf "%.2f", b - a}') s)," \
    "new server pid $server_pid on $ws_url after $(awk -v a="$stopped" -v b="$listening" 'BEGIN {printf "%.2f", b - a}') s"
if ! wait_metric "$metrics_url" wsscale_connections_active "$connections" 120; then
    echo "not every connection came back within 120 s" >&2
fi
back=$(now)
active=$(metric "$metrics_url" wsscale_connections_active)
echo "all back: ${active%%.*}/$connections open after $(awk -v a="$stopped" -v b="$back" 'BEGIN {printf "%.2f", b - a}') s" \
    "from SIGTERM, $(awk -v a="$listening" -v b="$back" 'BEGIN {printf "%.2f", b - a}') s from the new server's start"
storm_rss=$(steady_metric "$metrics_url" wsscale_memory_per_connection_bytes 'source="rss"' 15)
rejected=$(metric "$metrics_url" wsscale_connections_rejected_total 'reason="capacity"')
echo "new server: 503 at capacity ${rejected:-0}; RSS per connection after the storm ${storm_rss%%.*} B" \
    "vs ${paced_rss%%.*} B after the paced ramp"

# Stop the generator: it closes every connection with 1000 and writes its summary.
kill -INT "$load"
for _ in $(seq 600); do kill -0 "$load" 2>/dev/null || break; sleep 0.1; done
wait "$load" || echo "the generator exited with status $?" >&2
load=
cat "$out/load.out"
jq -c '{reconnected, reconnect_failures, reconnect_ms, lost}' "$out/summary.json"
