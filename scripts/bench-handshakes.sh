#!/usr/bin/env bash
# Upgrades per server CPU-second during a ramp, for every mode × engine × scheme: each
# server (`wsscale serve`, wss:// with --tls-self-signed) on 127.0.0.1:0 gets N
# connections from `wsscale load` at 1,000/s; its CPU (utime + stime of every thread,
# /proc/PID/stat) is read before the first connection and when it holds all N (polled
# from /metrics), so the figure is what the TCP accept, the TLS handshake and the
# WebSocket upgrade cost the server, per connection.
#
#   scripts/bench-handshakes.sh [N]        (default 3000; WSSCALE_BIN picks the binary)
#
# Loopback only; every server is stopped before the next starts; each wait has a deadline.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${WSSCALE_BIN:-target/release/wsscale}
n=${1:-3000}
tick=$(getconf CLK_TCK)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
printf '%-26s %8s %10s %22s\n' run held cpu_ms upgrades_per_cpu_second
for stack in "tasks lean" "tasks tungstenite" "threads lean" "threads tungstenite"; do
    for scheme in ws wss; do
        set -- $stack
        tls=()
        [ "$scheme" = wss ] && tls=(--tls-self-signed)
        "$bin" serve --mode "$1" --engine "$2" "${tls[@]}" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
            >"$work/out" 2>"$work/err" &
        pid=$!
        for _ in $(seq 100); do grep -q listening "$work/out" && break; sleep 0.1; done
        line=$(cat "$work/out")
        field() { tr ' ' '\n' <<<"$line" | sed -n "s/^$1=//p"; }
        url=$(field url)
        metrics=$(field metrics)
        ca=()
        [ "$scheme" = wss ] && ca=(--tls-ca "$(field cert)")
        before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
        "$bin" load --url "$url" "${ca[@]}" --connections "$n" --rate 1000 --hold 3s \
            --no-reachability-check >"$work/load" 2>&1 &
        load=$!
        held=0
        for _ in $(seq 1200); do
            held=$(curl -s "$metrics" | awk '/^wsscale_connections_active/ {print $2}')
            [ "$held" = "$n" ] && break
            sleep 0.1
        done
        after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
        wait "$load" || true
        kill "$pid"
        wait "$pid" 2>/dev/null || true
        ticks=$((after - before))
        printf '%-26s %8s %10s %22s\n' "$1-$2-$scheme" "$held" $((ticks * 1000 / tick)) \
            "$([ "$ticks" -gt 0 ] && echo $((n * tick / ticks)) || echo -)"
    done
done
