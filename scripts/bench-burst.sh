#!/usr/bin/env bash
# Burst benchmark: does the memory an idle connection leaves behind depend on how fast the
# connections arrived? For each arrival pattern, a fresh `wsscale serve` on loopback gets
# N connections (default 10,000) from `wsscale load`, held until the server has no
# handshake in flight and its RSS is steady; prints the server's RSS and heap growth per
# held connection (from its /metrics: RSS and live heap read just before the load starts,
# then again once steady) and how many times it gave freed memory back to the OS
# (wsscale_memory_trims_total). Bounded: every load run holds for a fixed time and ends by
# itself.
#
#   scripts/bench-burst.sh [N] [MODE] [extra wsscale serve flags...]
#
# Patterns: paced (5,000/s, 256 in flight) and unpaced (--rate 0) at 256, 2048 and 8192
# in flight. WSSCALE_BIN picks the binary (default: a fresh release build). SERVE_ENV adds
# environment variables to the server only (e.g. SERVE_ENV=GLIBC_TUNABLES=glibc.malloc.arena_max=1
# or SERVE_ENV=LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2, to compare allocators).
# The machine's load matters on a small machine: quote the median of several runs.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
connections=${1:-10000}
mode=${2:-tasks}
shift $(( $# > 2 ? 2 : $# ))
if [ -z "${WSSCALE_BIN:-}" ]; then
    cargo build --release --quiet
fi
bin=${WSSCALE_BIN:-target/release/wsscale}
out=$(mktemp -d)
server=""
load=""
# Stop what is still running, and wait for it, however the script ends.
stop() {
    [ -n "$load" ] && { kill "$load" 2>/dev/null || true; wait "$load" 2>/dev/null || true; }
    [ -n "$server" ] && { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; }
    load=""; server=""
}
trap 'stop; rm -rf "$out"' EXIT

# One value from the server's /metrics (see lib.sh).
server_metric() {
    metric "$metrics" "$@"
}

printf '%-18s %7s %10s %12s %13s %6s %6s\n' pattern held rss_bytes rss_per_conn heap_per_conn trims secs
for pattern in "paced 5000 256" "unpaced 0 256" "unpaced 0 2048" "unpaced 0 8192"; do
    read -r name rate concurrency <<<"$pattern"
    start_server "$bin" "$mode" 127.0.0.1:0 "$out" "$@"
    server=$server_pid ws=$ws_url metrics=$metrics_url
    sleep 1
    rss_before=$(server_metric process_resident_memory_bytes)
    heap_before=$(server_metric wsscale_heap_allocated_bytes)
    started=$(date +%s.%N)
    RUST_LOG=warn "$bin" load --url "$ws" --connections "$connections" --rate "$rate" \
        --concurrency "$concurrency" --hold 30s --ping-interval 0s >"$out/load.out" 2>"$out/load.err" &
    load=$!
    # Held, with no handshake in flight, then steady: the RSS reads the same (within
    # 0.5 %) four times 250 ms apart.
    for _ in $(seq 600); do
        if ! kill -0 "$server" 2>/dev/null; then
            echo "the server exited during $name c=$concurrency:" >&2; tail -3 "$out/serve.err" >&2; exit 1
        fi
        [ "$(server_metric wsscale_connections_active | cut -d. -f1)" = "$connections" ] &&
            [ "$(server_metric wsscale_handshakes_in_flight | cut -d. -f1)" = 0 ] && break
        sleep 0.1
    done
    held_secs=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
    previous=0; same=0
    for _ in $(seq 40); do
        rss=$(server_metric process_resident_memory_bytes)
        if awk -v a="$rss" -v b="$previous" 'BEGIN {exit !(a <= b * 1.005 && a >= b * 0.995)}'; then
            same=$((same + 1)); [ "$same" -ge 3 ] && break
        else
            same=0
        fi
        previous=$rss; sleep 0.25
    done
    held=$(server_metric wsscale_connections_active)
    if [ "${held%.*}" != "$connections" ]; then
        echo "$name c=$concurrency: the server holds ${held:-?} of $connections connections; the generator said:" >&2
        tail -3 "$out/load.err" >&2
    fi
    rss=$(server_metric process_resident_memory_bytes)
    heap=$(server_metric wsscale_heap_allocated_bytes)
    trims=$(server_metric wsscale_memory_trims_total)
    awk -v p="$name c=$concurrency" -v held="${held%.*}" -v rss="$rss" -v rb="$rss_before" -v heap="$heap" \
        -v hb="$heap_before" -v trims="${trims:--}" -v secs="$held_secs" 'BEGIN {
            if (held > 0) printf "%-18s %7d %10d %12.0f %13.0f %6s %6s\n", p, held, rss, (rss - rb) / held, (heap - hb) / held, trims, secs
            else printf "%-18s %7d %10d %12s %13s %6s %6s\n", p, held, rss, "-", "-", trims, secs
        }'
    # The generator may have ended already (its hold is over): that is no error.
    stop
done
