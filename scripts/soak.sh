#!/usr/bin/env bash
# Soak: hold many connections with pings for a long time on loopback, and show that none
# is lost and memory stays flat. Bounded: the load run ends by itself after DURATION.
#
#   scripts/soak.sh [MODE] [CONNECTIONS|max] [DURATION]
#   scripts/soak.sh tasks 19000 10m     (the defaults)
#   scripts/soak.sh threads max 10m     (as many as this machine's limits allow)
#
# Prints the server's RSS, heap, threads and active connections every 30 s, then the
# generator's summary and the RSS drift between the first and last sample of the hold.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
mode=${1:-tasks}
connections=${2:-19000}
duration=${3:-10m}
bin=$(wsscale_bin)
out=$(mktemp -d)
server_pid=
trap '[ -n "$server_pid" ] && stop_process "$server_pid" 15; echo "logs kept in $out"' EXIT
start_server "$bin" "$mode" 127.0.0.1:0 "$out"
if [ "$connections" = max ]; then
    connections=$(( $(metric "$metrics_url" wsscale_connections_max | cut -d. -f1) - 64 ))
fi
echo "soak: $mode mode, $connections connections, $duration, server $ws_url"
"$bin" load --url "$ws_url" --connections "$connections" --rate 5000 --concurrency 256 --hold "$duration" \
    --ping-interval 5s --json "$out/summary.json" >"$out/load.out" 2>"$out/load.err" &
load=$!
printf '%8s %8s %12s %12s %8s\n' elapsed active rss_bytes heap_bytes threads | tee "$out/samples.txt"
start=$(date +%s)
while kill -0 "$load" 2>/dev/null; do
    printf '%8s %8s %12s %12s %8s\n' "$(( $(date +%s) - start ))s" "$(metric "$metrics_url" wsscale_connections_active)" \
        "$(metric "$metrics_url" process_resident_memory_bytes)" "$(metric "$metrics_url" wsscale_heap_allocated_bytes)" \
        "$(metric "$metrics_url" process_threads)" | tee -a "$out/samples.txt"
    for _ in $(seq 30); do kill -0 "$load" 2>/dev/null || break; sleep 1; done
done
wait "$load"
cat "$out/load.out"
# RSS drift over the hold: the first and the last sample with every connection open.
awk -v n="$connections" '$2 == n {if (!first) first = $3; last = $3}
    END {if (first) printf "RSS during the hold: first %d, last %d, drift %+.2f%%\n", first, last, (last - first) * 100 / first}' \
    "$out/samples.txt"
