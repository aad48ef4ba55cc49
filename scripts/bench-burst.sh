#!/usr/bin/env bash
# Burst benchmark: does the memory an idle connection leaves behind depend on how fast the
# connections arrived? For each arrival pattern, a fresh `wsscale serve` on loopback gets
# N connections (default 10,000) from `wsscale load`, held until the server's RSS is
# steady; prints the server's RSS and heap per connection (its own gauges, baseline at
# zero connections). Bounded: every load run holds for a fixed time and ends by itself.
#
#   scripts/bench-burst.sh [N] [MODE] [extra wsscale serve flags...]
#
# Patterns: paced (5,000/s, 256 in flight) and unpaced (--rate 0) at 256, 2048 and 8192
# in flight. WSSCALE_BIN picks the binary (default: a fresh release build).
set -euo pipefail
cd "$(dirname "$0")/.."
connections=${1:-10000}
mode=${2:-tasks}
shift $(( $# > 2 ? 2 : $# ))
if [ -z "${WSSCALE_BIN:-}" ]; then
    cargo build --release --quiet
fi
bin=${WSSCALE_BIN:-target/release/wsscale}
out=$(mktemp -d)
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$out"' EXIT

# One value from /metrics (the scrape is read whole: awk leaving early must not fail curl).
metric() {
    local text
    text=$(curl -s "$metrics") || return 0
    awk -v name="$1" -v labels="${2:-}" '$1 ~ "^"name"([{]|$)" && index($1, labels) {print $2; exit}' <<<"$text"
}

printf '%-22s %10s %12s %12s %12s\n' pattern held rss_bytes rss_per_conn heap_per_conn
for pattern in "paced 5000 256" "unpaced 0 256" "unpaced 0 2048" "unpaced 0 8192"; do
    read -r name rate concurrency <<<"$pattern"
    RUST_LOG=warn "$bin" serve --mode "$mode" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 "$@" \
        >"$out/serve.out" 2>"$out/serve.err" &
    server=$!
    for _ in $(seq 100); do grep -q metrics "$out/serve.out" 2>/dev/null && break; sleep 0.1; done
    read -r _ ws _ metrics <"$out/serve.out"
    RUST_LOG=warn "$bin" load --url "$ws" --connections "$connections" --rate "$rate" \
        --concurrency "$concurrency" --hold 20s --ping-interval 0s >"$out/load.out" 2>"$out/load.err" &
    load=$!
    # Held, then steady: the RSS reads the same (within 0.5 %) four times 250 ms apart.
    for _ in $(seq 600); do
        [ "$(metric wsscale_connections_active | cut -d. -f1)" = "$connections" ] && break
        sleep 0.1
    done
    previous=0; same=0
    for _ in $(seq 40); do
        rss=$(metric process_resident_memory_bytes)
        if awk -v a="$rss" -v b="$previous" 'BEGIN {exit !(a <= b * 1.005 && a >= b * 0.995)}'; then
            same=$((same + 1)); [ "$same" -ge 3 ] && break
        else
            same=0
        fi
        previous=$rss; sleep 0.25
    done
    printf '%-22s %10s %12s %12.0f %12.0f\n' "$name c=$concurrency" "$(metric wsscale_connections_active)" \
        "$(metric process_resident_memory_bytes)" \
        "$(metric wsscale_memory_per_connection_bytes 'source="rss"')" \
        "$(metric wsscale_memory_per_connection_bytes 'source="heap"')"
    kill "$load" 2>/dev/null; wait "$load" 2>/dev/null || true
    kill "$server"; wait "$server" 2>/dev/null || true
    server=""
done
