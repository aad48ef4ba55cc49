#!/usr/bin/env bash
# Push at the floor: what one broadcast to N held connections costs `wsscale serve` (each
# mode with the lean engine, the only one with push), beside the floor — floor-sender, a
# raw send() of the same 34-byte frame to every socket from a few threads — all read by
# the same receiver (floor-receiver, one epoll thread) on the same 2 cores.
#
#   scripts/bench-push.sh --connections N --broadcasts K --out DIR [--runs R]
#                         [--threads-connections M] [--servers tasks-lean,threads-lean]
#                         [--push-size BYTES] [--sender-threads T] [--receiver-threads T]
#
# Each run: the server (or floor-sender) on 127.0.0.1:0; the receiver opens N connections
# and waits; the server's CPU settles; a quiet window of K seconds (pings are off:
# --ping-interval 10m, so the window holds only timers and the sampler); then K
# `POST /broadcast?size=BYTES`, one second apart, and the receiver's summary once every
# connection has all K pushes (it holds the connections until the server's CPU is read).
# CPU per broadcast = (CPU in the push window − the quiet window's rate × its length) ÷ K,
# every thread of the server process (/proc/PID/stat utime + stime, clock ticks).
# Runs alternate (floor, tasks-lean, floor, threads-lean, ... R times), so a drift of the
# machine's load hits both. Threads mode runs at M connections (default: N, or the
# threads server's own cap rounded down to a thousand if lower — vm.max_map_count), and
# the floor runs at M too, so each ratio compares equal N.
#
# Prints a table (medians of the R runs, ratios to the floor at the same N) and writes
# DIR/push.json: `runs[]` (one per server and N: name, connections, cpu_ms_per_broadcast,
# p50_ms, p99_ms, max_ms, cpu_over_floor, p99_over_floor; the floor's named `floor`),
# `raw[]` (every run's figures), the command and the machine's load before and after;
# DIR/push.md (the table) and DIR/runs/ (every run's logs and the receiver's summaries).
#
# Loopback only; every wait has a deadline; everything started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

connections=19000
broadcasts=10
out=
runs=3
threads_connections=
servers=tasks-lean,threads-lean
push_size=32
sender_threads=$(nproc)
receiver_threads=1
command_line="scripts/bench-push.sh $*"
while [ $# -gt 0 ]; do
    case $1 in
    --connections) connections=$2; shift 2 ;;
    --broadcasts) broadcasts=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --threads-connections) threads_connections=$2; shift 2 ;;
    --servers) servers=$2; shift 2 ;;
    --push-size) push_size=$2; shift 2 ;;
    --sender-threads) sender_threads=$2; shift 2 ;;
    --receiver-threads) receiver_threads=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
for pair in "connections=$connections" "broadcasts=$broadcasts" "runs=$runs" "push-size=$push_size" \
    "sender-threads=$sender_threads" "receiver-threads=$receiver_threads" "threads-connections=${threads_connections:-1}"; do
    if ! [[ ${pair#*=} =~ ^[1-9][0-9]*$ ]]; then
        echo "--${pair%%=*} must be a whole number of at least 1, not '${pair#*=}'" >&2
        exit 2
    fi
done
if [ -z "$out" ]; then
    echo "--out DIR is required (see --help)" >&2
    exit 2
fi
IFS=, read -r -a server_list <<<"$servers"
for server in "${server_list[@]}"; do
    case $server in
    tasks-lean | threads-lean) ;;
    *-tungstenite) echo "--servers: $server has no push (the stock engine answers 501)" >&2; exit 2 ;;
    *) echo "--servers: $server is not one of tasks-lean, threads-lean" >&2; exit 2 ;;
    esac
done
mkdir -p "$out/runs"
out=$(cd "$out" && pwd)
: >"$out/raw.jsonl"

echo "building wsscale and the floor programs (release)..." >&2
if [ -n "${WSSCALE_BIN:-}" ]; then
    bin=$WSSCALE_BIN
    cargo build --release --quiet -p wsscale-floor
else
    cargo build --release --quiet -p wsscale -p wsscale-floor
    bin=target/release/wsscale
fi
sender_bin=target/release/floor-sender
receiver_bin=target/release/floor-receiver
ticks_per_second=$(getconf CLK_TCK)

server_pid=
sender_pid=
receiver_pid=
cleanup() {
    [ -n "$receiver_pid" ] && kill -TERM "$receiver_pid" 2>/dev/null && wait "$receiver_pid" 2>/dev/null
    [ -n "$sender_pid" ] && kill -TERM "$sender_pid" 2>/dev/null && wait "$sender_pid" 2>/dev/null
    [ -n "$server_pid" ] && stop_process "$server_pid" 15
    return 0
}
trap cleanup EXIT

# cpu_ticks PID: user + system time of every thread of PID so far, in clock ticks
# (fields 14 and 15 of /proc/PID/stat, counted after the command name's closing paren).
cpu_ticks() {
    sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}

# wait_line FILE PATTERN SECONDS PID: until FILE has a line matching PATTERN; fails if PID
# exits first or after SECONDS.
wait_line() {
    local file=$1 pattern=$2 seconds=$3 pid=$4 _
    for _ in $(seq $((seconds * 10))); do
        grep -q "$pattern" "$file" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    grep -q "$pattern" "$file" 2>/dev/null
}

# settle PID: until the process used at most one clock tick in half a second (at most 10 s):
# what opening the connections set off (trims, the sampler catching up) is over.
settle() {
    local pid=$1 before after _
    for _ in $(seq 20); do
        before=$(cpu_ticks "$pid")
        sleep 0.5
        after=$(cpu_ticks "$pid")
        [ $((after - before)) -le 1 ] && return 0
    done
    echo "  (the server's CPU did not settle within 10 s; measuring anyway)" >&2
}

# The threads server's own cap (what vm.max_map_count, pid_max and the fd limit allow).
if [ -z "$threads_connections" ]; then
    threads_connections=$connections
    if [[ ,$servers, == *,threads-lean,* ]]; then
        start_server "$bin" threads 127.0.0.1:0 "$out" --engine lean
        cap=$(metric "$metrics_url" wsscale_connections_max)
        stop_process "$server_pid" 15
        server_pid=
        cap=${cap%%.*}
        if [ -n "$cap" ] && [ "$cap" -lt "$connections" ]; then
            threads_connections=$((cap / 1000 * 1000))
            echo "threads mode holds at most $cap connections here: threads-lean and its floor run at $threads_connections" >&2
        fi
    fi
fi

# measure NAME CONNECTIONS RUN: one run of NAME (floor, tasks-lean, threads-lean) at
# CONNECTIONS; appends its figures to raw.jsonl.
measure() {
    local name=$1 n=$2 run=$3 dir pid ws control load_before load_after
    dir=$out/runs/$name-$n-$run
    mkdir -p "$dir"
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    if [ "$name" = floor ]; then
        "$sender_bin" --threads "$sender_threads" --push-size "$push_size" >"$dir/sender.out" 2>"$dir/sender.err" &
        sender_pid=$!
        pid=$sender_pid
        if ! wait_line "$dir/sender.out" '^listening' 10 "$pid"; then
            echo "floor-sender did not start: $(tail -3 "$dir/sender.err")" >&2
            return 1
        fi
        read -r _ ws _ control <"$dir/sender.out"
    else
        start_server "$bin" "${name%-lean}" 127.0.0.1:0 "$dir" --engine lean --allow-broadcast \
            --push-size "$push_size" --ping-interval 10m --idle-timeout 30m
        pid=$server_pid
        ws=$ws_url
        control=${metrics_url%/metrics}/broadcast
    fi
    "$receiver_bin" --url "$ws" --connections "$n" --pushes "$broadcasts" --threads "$receiver_threads" \
        --timeout 5m --linger --json "$dir/receiver.json" >"$dir/receiver.out" 2>"$dir/receiver.err" &
    receiver_pid=$!
    if ! wait_line "$dir/receiver.out" '^ready' 300 "$receiver_pid"; then
        echo "[$name $n run $run] the receiver did not open $n connections: $(tail -3 "$dir/receiver.err")" >&2
        return 1
    fi
    if [ "$name" != floor ]; then
        wait_metric "$metrics_url" wsscale_connections_active "$n" 60
    fi
    settle "$pid"

    local quiet_start quiet_end push_start push_end t0 t1 t2 t3 i
    t0=$(now)
    quiet_start=$(cpu_ticks "$pid")
    sleep "$broadcasts"
    quiet_end=$(cpu_ticks "$pid")
    t1=$(now)
    push_start=$(cpu_ticks "$pid")
    t2=$(now)
    for i in $(seq "$broadcasts"); do
        curl -sf --max-time 30 -X POST "$control?size=$push_size" -o "$dir/post-$i.json" ||
            { echo "[$name $n run $run] POST /broadcast failed" >&2; return 1; }
        # One second apart, from the first.
        sleep "$(awk -v start="$t2" -v i="$i" -v now="$(now)" 'BEGIN {d = start + i - now; print (d > 0 ? d : 0)}')"
    done
    if ! wait_line "$dir/receiver.out" '^done' 300 "$receiver_pid"; then
        echo "[$name $n run $run] the receiver did not finish: $(tail -3 "$dir/receiver.err")" >&2
        return 1
    fi
    push_end=$(cpu_ticks "$pid")
    t3=$(now)
    kill -TERM "$receiver_pid"
    wait "$receiver_pid" || true
    receiver_pid=
    if [ "$name" = floor ]; then
        kill -TERM "$sender_pid"
        wait "$sender_pid" 2>/dev/null || true
        sender_pid=
    else
        stop_process "$server_pid" 30 || true
        server_pid=
    fi
    load_after=$(cut -d' ' -f1-3 /proc/loadavg)

    # The sender's own figures (its writer threads only) as a cross-check of /proc.
    local sender_cpu=null
    if [ "$name" = floor ]; then
        sender_cpu=$(cat "$dir"/post-*.json | jq -s 'map(.cpu_ms) | add / length')
    fi
    jq -c -n --arg name "$name" --argjson n "$n" --argjson run "$run" --argjson k "$broadcasts" \
        --argjson hz "$ticks_per_second" --argjson q0 "$quiet_start" --argjson q1 "$quiet_end" \
        --argjson p0 "$push_start" --argjson p1 "$push_end" \
        --argjson t0 "$t0" --argjson t1 "$t1" --argjson t2 "$t2" --argjson t3 "$t3" \
        --arg load_before "$load_before" --arg load_after "$load_after" --argjson sender_cpu "$sender_cpu" \
        --slurpfile receiver "$dir/receiver.json" '
        ($receiver[0]) as $r
        | (($q1 - $q0) / ($t1 - $t0)) as $quiet_ticks_per_s
        | {
            name: $name, connections: $n, run: $run, broadcasts: $k,
            cpu_ms_per_broadcast: ((($p1 - $p0) - $quiet_ticks_per_s * ($t3 - $t2)) / $hz * 1000 / $k),
            quiet_cpu_ms_per_s: ($quiet_ticks_per_s / $hz * 1000),
            push_window_s: ($t3 - $t2),
            p50_ms: $r.delivery_ms.p50, p99_ms: $r.delivery_ms.p99, max_ms: $r.delivery_ms.max,
            delivered: $r.delivered, missed: $r.missed, lost_connections: $r.lost_connections,
            per_push: ($r.pushes | map({seq, p50_ms, p99_ms, max_ms, delivered})),
            sender_cpu_ms_per_broadcast: $sender_cpu,
            load_before: $load_before, load_after: $load_after
          }' >>"$out/raw.jsonl"
    tail -1 "$out/raw.jsonl" | jq -r '"[\(.name) \(.connections) run \(.run)] CPU \(.cpu_ms_per_broadcast * 10 | round / 10) ms per broadcast; delivery p50 \(.p50_ms) / p99 \(.p99_ms) / max \(.max_ms) ms; delivered \(.delivered), missed \(.missed), lost \(.lost_connections); load \(.load_before) -> \(.load_after)"'
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load average before: $load_start" >&2
for run in $(seq "$runs"); do
    for server in "${server_list[@]}"; do
        n=$connections
        [ "$server" = threads-lean ] && n=$threads_connections
        measure floor "$n" "$run"
        measure "$server" "$n" "$run"
    done
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load average after: $load_end" >&2

jq -s --arg command "$command_line" --arg load_start "$load_start" --arg load_end "$load_end" \
    --arg kernel "$(uname -r)" --argjson cores "$(nproc)" --argjson push_size "$push_size" \
    --argjson sender_threads "$sender_threads" --argjson receiver_threads "$receiver_threads" '
    def median: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    def round2: . * 100 | round / 100;
    . as $raw
    | [group_by([.connections, .name])[] | {
        name: .[0].name, connections: .[0].connections, runs: length,
        cpu_ms_per_broadcast: (map(.cpu_ms_per_broadcast) | median),
        cpu_ms_per_broadcast_range: [(map(.cpu_ms_per_broadcast) | min), (map(.cpu_ms_per_broadcast) | max)],
        p50_ms: (map(.p50_ms) | median), p99_ms: (map(.p99_ms) | median), max_ms: (map(.max_ms) | median),
        missed: (map(.missed) | add), lost_connections: (map(.lost_connections) | add)
      }] as $medians
    | {
        command: $command,
        machine: {cores: $cores, kernel: $kernel, load_before: $load_start, load_after: $load_end},
        settings: {push_size_bytes: $push_size, sender_threads: $sender_threads, receiver_threads: $receiver_threads,
                   cpu: "every thread of the server process, /proc/PID/stat utime+stime, net of the quiet window"},
        runs: [$medians[] | . as $m
          | ($medians[] | select(.name == "floor" and .connections == $m.connections)) as $floor
          | $m + {cpu_over_floor: ($m.cpu_ms_per_broadcast / $floor.cpu_ms_per_broadcast | round2),
                  p99_over_floor: ($m.p99_ms / $floor.p99_ms | round2)}],
        raw: $raw
      }' "$out/raw.jsonl" >"$out/push.json"

jq -r '
    def r1: . * 10 | round / 10;
    "| server | connections | CPU per broadcast (median, range) | delivery p50 / p99 / max | CPU ÷ floor | p99 ÷ floor | missed |",
    "|---|---:|---:|---:|---:|---:|---:|",
    (.runs | sort_by(.connections, (.name != "floor"))[] |
     "| \(.name) | \(.connections) | \(.cpu_ms_per_broadcast | r1) ms (\(.cpu_ms_per_broadcast_range[0] | r1)–\(.cpu_ms_per_broadcast_range[1] | r1)) | \(.p50_ms | r1) / \(.p99_ms | r1) / \(.max_ms | r1) ms | \(.cpu_over_floor)× | \(.p99_over_floor)× | \(.missed) |")
' "$out/push.json" | tee "$out/push.md"
echo "written: $out/push.json, $out/push.md (runs: $out/runs)" >&2
