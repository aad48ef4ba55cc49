# shellcheck shell=bash
# Shared by the benchmark scripts (source it: . "$(dirname "$0")/lib.sh"): the binary,
# a `wsscale serve` on loopback with its addresses read from its one stdout line, and
# metric readings. Every wait is bounded.
#
# A reading takes the whole scrape first and then picks the metric out of it: piping
# `curl | awk '... exit'` lets awk exit before curl has written everything, curl dies of
# SIGPIPE, and under `set -o pipefail` the pipeline fails, and with `set -e` the script.

# The wsscale binary: $WSSCALE_BIN, or a release build (built here).
wsscale_bin() {
    if [ -n "${WSSCALE_BIN:-}" ]; then
        echo "$WSSCALE_BIN"
    else
        cargo build --release --quiet >&2
        echo target/release/wsscale
    fi
}

# start_server BIN MODE LISTEN OUTDIR [serve flags...]
# Starts `wsscale serve` in the background (stdout OUTDIR/serve.out, stderr appended to
# OUTDIR/serve.err; SERVE_ENV adds environment variables to the server alone, e.g.
# SERVE_ENV=GLIBC_TUNABLES=glibc.malloc.arena_max=1) and waits up to 10 s for its start
# line. The metrics listener is on $METRICS_LISTEN (default 127.0.0.1:0). Sets
# server_pid, ws_url (ws://ADDR/ws, or wss://), ws_addr (ADDR), metrics_url
# (http://ADDR/metrics) and metrics_addr (ADDR).
start_server() {
    local bin=$1 mode=$2 listen=$3 outdir=$4
    shift 4
    local serve_env
    read -r -a serve_env <<<"${SERVE_ENV:-}"
    : >"$outdir/serve.out"
    RUST_LOG=${RUST_LOG:-warn} env "${serve_env[@]}" "$bin" serve --mode "$mode" --listen "$listen" \
        --metrics-listen "${METRICS_LISTEN:-127.0.0.1:0}" "$@" >"$outdir/serve.out" 2>>"$outdir/serve.err" &
    server_pid=$!
    local _
    for _ in $(seq 100); do
        grep -q '^listening ' "$outdir/serve.out" 2>/dev/null && break
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    if ! grep -q '^listening ' "$outdir/serve.out" 2>/dev/null; then
        echo "wsscale serve did not start; its log:" >&2
        tail -20 "$outdir/serve.err" >&2
        return 1
    fi
    # shellcheck disable=SC2034 # metrics_url is for the caller
    ws_url=$(start_line_field url "$outdir/serve.out")
    metrics_url=$(start_line_field metrics "$outdir/serve.out")
    ws_addr=${ws_url#*://}
    ws_addr=${ws_addr%%/*}
    metrics_addr=${metrics_url#http://}
    metrics_addr=${metrics_addr%%/*}
}

# start_line_field KEY FILE: the value of KEY in the start line `wsscale serve` printed
# into FILE ("listening url=ws://ADDR/ws metrics=http://ADDR/metrics mode=... ...").
start_line_field() {
    local key=$1 file=$2 line word
    line=$(grep -m 1 '^listening ' "$file") || return 1
    for word in $line; do
        case $word in "$key="*) echo "${word#*=}"; return 0 ;; esac
    done
    return 1
}

# stop_process PID [SECONDS]: SIGTERM, then wait up to SECONDS (default 30) for the
# exit; SIGKILL after that. Returns the process's exit status when it exited in time.
stop_process() {
    local pid=$1 seconds=${2:-30} _
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq $((seconds * 10))); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "pid $pid did not exit within ${seconds}s of SIGTERM; killing it" >&2
        kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
}

# metric URL NAME [LABEL]: the first sample of NAME (with LABEL, e.g. 'source="rss"',
# among its labels); empty when absent or when the scrape fails.
metric() {
    local scrape
    scrape=$(curl -sf --max-time 5 "$1") || return 0
    awk -v name="$2" -v label="${3:-}" \
        '$1 ~ "^"name"([{]|$)" && index($1, label) {print $2; exit}' <<<"$scrape"
}

# wait_metric URL NAME VALUE SECONDS: polls until NAME reads VALUE (as a whole number);
# returns 1 after SECONDS.
wait_metric() {
    local url=$1 name=$2 value=$3 seconds=$4 current _
    for _ in $(seq $((seconds * 10))); do
        current=$(metric "$url" "$name")
        [ "${current%%.*}" = "$value" ] && return 0
        sleep 0.1
    done
    echo "$name is ${current:-absent} after ${seconds}s, expected $value" >&2
    return 1
}

# steady_metric URL NAME LABEL SECONDS: a reading of NAME{LABEL} once two readings one
# second apart agree within 1 % (at most SECONDS of waiting; the last reading then).
steady_metric() {
    local url=$1 name=$2 label=$3 seconds=$4 previous current _
    previous=$(metric "$url" "$name" "$label")
    for _ in $(seq "$seconds"); do
        sleep 1
        current=$(metric "$url" "$name" "$label")
        if awk -v a="${previous:-0}" -v b="${current:-0}" 'BEGIN {d = a - b; if (d < 0) d = -d; exit !(b > 0 && d <= b / 100)}'; then
            break
        fi
        previous=$current
    done
    echo "${current:-$previous}"
}

# now: UNIX time with fractions.
now() {
    date +%s.%N
}
