#!/usr/bin/env bash
# A fleet on one machine, for real: N replicas of `wsscale serve` on loopback, HAProxy in
# front of them configured from deploy/haproxy/haproxy.cfg (the file compose mounts; the
# loopback variant is derived from it here, not written by hand), `wsscale load` segments
# with --reconnect through the balancer (or, with --direct, straight to the replicas as
# DNS round robin would spread them), a real Prometheus scraping every replica and every
# segment, and the dashboard's fleet queries answered by it. With --rolling-restart each
# replica in turn gets SIGTERM, drains (--drain-delay: /healthz answers 503 so HAProxy
# takes it out while it still accepts; then 1001 to its sessions) and exits, and is
# started again on the same ports, while the load holds.
#
#   scripts/fleet.sh --replicas N --connections C [--direct] [--rolling-restart]
#                    [--mode tasks|threads] --out DIR [options]
#
# Options (defaults in brackets):
#   --segments S          load generators, each its own process and metrics endpoint [N]
#   --drain-delay D       the replicas' --drain-delay [5s, as docker-compose.yml]
#   --drain-timeout D     the replicas' --drain-timeout [10s]
#   --haproxy-cfg FILE    the configuration to derive from [deploy/haproxy/haproxy.cfg]
#   --rate R              new connections per second, the whole run's [5000]
#   --ping-interval D     client pings per connection [5s]
#   --down-secs SECS      with --rolling-restart, how long a replica stays down after its
#                         exit before it is started again (a replacement that takes time
#                         to come up) [0]
#   --timeout SECS        the longest the load may hold; every wait has its own bound [900]
#
# Writes DIR/fleet.json (replicas, held_per_replica, the merged load summary, the
# dashboard's queries over the fleet, rolling_restart: failed_attempts, recovered_secs,
# held_after, lost_at_end and each restart) and prints a table; every process's log,
# the generated haproxy.cfg and prometheus.yml stay in DIR. Loopback only; every process
# it starts is stopped on exit, by its recorded PID. $WSSCALE_BIN picks the binary (a
# release build otherwise).
#
# Sizing on one machine: each process holds fewer descriptors than RLIMIT_NOFILE. A
# replica holds one per connection, HAProxy two (client and server side), so through the
# balancer a run stays below (RLIMIT_NOFILE - 100) / 2 connections, and --direct goes as
# far as the replicas do. Threads mode holds one thread per connection, and every thread
# on the host counts against kernel.pid_max: the script refuses a run that would take
# the host's last threads.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

replicas= connections= direct=0 rolling=0 mode=tasks out= segments=
drain_delay=5s drain_timeout=10s haproxy_cfg=deploy/haproxy/haproxy.cfg rate=5000 ping_interval=5s timeout=900
down_secs=0
while [ $# -gt 0 ]; do
    case $1 in
        --replicas) replicas=$2; shift 2 ;;
        --connections) connections=$2; shift 2 ;;
        --direct) direct=1; shift ;;
        --rolling-restart) rolling=1; shift ;;
        --mode) mode=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --segments) segments=$2; shift 2 ;;
        --drain-delay) drain_delay=$2; shift 2 ;;
        --drain-timeout) drain_timeout=$2; shift 2 ;;
        --haproxy-cfg) haproxy_cfg=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --ping-interval) ping_interval=$2; shift 2 ;;
        --timeout) timeout=$2; shift 2 ;;
        --down-secs) down_secs=$2; shift 2 ;;
        -h | --help) usage ;;
        *) echo "fleet.sh: unknown argument $1" >&2; usage ;;
    esac
done
die() { echo "fleet.sh: $*" >&2; exit 2; }
is_count() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b - a}'; }
# seconds_of DURATION: 5s, 500ms, 2m, 0 as seconds.
seconds_of() {
    awk -v d="$1" 'BEGIN {
        if (d ~ /^[0-9.]+ms$/) print substr(d, 1, length(d) - 2) / 1000
        else if (d ~ /^[0-9.]+s$/) print substr(d, 1, length(d) - 1) + 0
        else if (d ~ /^[0-9.]+m$/) print substr(d, 1, length(d) - 1) * 60
        else if (d ~ /^[0-9.]+$/) print d + 0
        else exit 1 }'
}
[ -n "$out" ] || die "--out DIR is required"
is_count "${replicas:-x}" || die "--replicas N: a whole number above 0"
is_count "${connections:-x}" || die "--connections C: a whole number above 0"
segments=${segments:-$replicas}
is_count "$segments" || die "--segments S: a whole number above 0"
is_count "$timeout" || die "--timeout SECS: a whole number above 0"
[[ $down_secs =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--down-secs SECS: a number of seconds"
case $mode in tasks | threads) ;; *) die "--mode is tasks or threads, not $mode" ;; esac
drain_secs=$(seconds_of "$drain_delay") || die "--drain-delay $drain_delay: a duration such as 5s or 500ms"
drain_timeout_secs=$(seconds_of "$drain_timeout") || die "--drain-timeout $drain_timeout: a duration such as 10s"
if [ "$direct" = 1 ] && [ $((segments % replicas)) != 0 ]; then
    die "--direct: --segments ($segments) must be a multiple of --replicas ($replicas), so each replica gets the same share"
fi
[ "$direct" = 1 ] || [ -r "$haproxy_cfg" ] || die "--haproxy-cfg $haproxy_cfg: not readable"
for tool in curl jq awk python3 prometheus promtool; do
    command -v "$tool" >/dev/null || die "$tool is required (scripts/test.sh installs prometheus and haproxy)"
done
[ "$direct" = 1 ] || command -v haproxy >/dev/null || die "haproxy is required (Debian package haproxy; scripts/test.sh installs it)"

fd_limit=$(ulimit -Hn)
[ "$fd_limit" = unlimited ] && fd_limit=1048576
per_replica=$(((connections + replicas - 1) / replicas))
# A replica keeps 256 descriptors for itself (wsscale serve's default --max-connections).
if [ "$per_replica" -gt $((fd_limit - 256)) ]; then
    die "$per_replica connections per replica do not fit its fd limit ($fd_limit - 256): add replicas"
fi
haproxy_maxconn=
if [ "$direct" = 0 ]; then
    configured=$(awk '$1 == "maxconn" {print $2; exit}' "$haproxy_cfg")
    [ -n "$configured" ] || die "$haproxy_cfg sets no global maxconn"
    # Two descriptors per proxied connection, and some for listeners, checks and logs.
    haproxy_maxconn=$(((fd_limit - 100) / 2))
    [ "$configured" -lt "$haproxy_maxconn" ] && haproxy_maxconn=$configured
    if [ "$connections" -gt "$haproxy_maxconn" ]; then
        die "$connections connections through one HAProxy need $((2 * connections)) descriptors; its limit here" \
            "is $fd_limit, so maxconn is $haproxy_maxconn. Use --direct (DNS round robin) past it"
    fi
fi
if [ "$mode" = threads ]; then
    # Every connection is a thread, and every thread on the host takes a pid.
    pid_max=$(cat /proc/sys/kernel/pid_max)
    threads_max=$(cat /proc/sys/kernel/threads-max)
    map_count=$(cat /proc/sys/vm/max_map_count)
    threads_now=$(ps -eLf --no-headers | wc -l)
    reserve=2000 # left for everyone else on this machine
    host_room=$((pid_max < threads_max ? pid_max : threads_max))
    host_room=$((host_room - threads_now - reserve))
    if [ "$connections" -gt "$host_room" ]; then
        die "threads mode: $connections connections need as many threads, and this host has room for $host_room" \
            "(kernel.pid_max $pid_max, kernel.threads-max $threads_max, $threads_now threads running now," \
            "$reserve kept for other processes): more replicas do not help, they share the host's pids." \
            "Raise kernel.pid_max (and threads-max) or run fewer connections"
    fi
    # Each thread takes 4 memory maps: a replica stops near vm.max_map_count / 4.
    if [ "$per_replica" -gt $(((map_count - 1000) / 4)) ]; then
        die "threads mode: $per_replica connections per replica exceed vm.max_map_count ($map_count) / 4 maps per thread: add replicas"
    fi
fi

bin=$(wsscale_bin)
mkdir -p "$out"
out=$(cd "$out" && pwd)
began=$(now)
run_id="fleet-$(date +%s)-$$"

replica_pids=() replica_ws=() replica_metrics=()
segment_pids=() segment_metrics=() segment_urls=()
haproxy_pid= prometheus_pid=
cleanup() {
    local pid
    set +e # stopping is best effort: HAProxy, for one, exits 143 on SIGTERM
    for pid in "${segment_pids[@]}"; do
        [ -n "$pid" ] && kill -INT "$pid" 2>/dev/null
    done
    for pid in "${segment_pids[@]}"; do
        [ -n "$pid" ] && stop_process "$pid" 20
    done
    # Every replica at once, and a second signal: the load is gone, no drain delay needed.
    for pid in "${replica_pids[@]}"; do
        [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && kill -INT "$pid" 2>/dev/null
    done
    for pid in "${replica_pids[@]}"; do
        [ -n "$pid" ] && stop_process "$pid" 30
    done
    [ -n "$haproxy_pid" ] && stop_process "$haproxy_pid" 10
    [ -n "$prometheus_pid" ] && stop_process "$prometheus_pid" 10
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port: a port nobody listens on now (for HAProxy and the generators' metrics, which
# cannot report a port 0 back); Prometheus and the replicas bind port 0 themselves.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}


# --- the replicas --------------------------------------------------------------------
serve_flags=(--drain-delay "$drain_delay" --drain-timeout "$drain_timeout")
start_replica() { # I LISTEN METRICS_LISTEN
    local dir="$out/replica-$1"
    mkdir -p "$dir"
    METRICS_LISTEN=$3 start_server "$bin" "$mode" "$2" "$dir" "${serve_flags[@]}"
    replica_pids[$1]=$server_pid
    replica_ws[$1]=$ws_addr
    replica_metrics[$1]=$metrics_addr
}
for ((i = 0; i < replicas; i++)); do
    start_replica "$i" 127.0.0.1:0 127.0.0.1:0
done
echo "fleet: $replicas $mode replicas: ${replica_ws[*]} (metrics ${replica_metrics[*]})"

# --- the balancer ----------------------------------------------------------------------
stats_url=
if [ "$direct" = 0 ]; then
    lb_port=$(free_port)
    stats_port=$(free_port)
    servers=
    for ((i = 0; i < replicas; i++)); do
        servers+="    server $mode-$((i + 1)) ${replica_ws[$i]} port ${replica_metrics[$i]##*:}"$'\n'
    done
    # The loopback variant: the backend of this mode gets the replicas as `server` lines
    # in place of its `server-template` (health checks on each one's metrics port), the
    # other mode's frontend and backend and the Docker resolvers go, the frontends bind
    # loopback ports, maxconn fits this host's fd limit. Everything else is the file's.
    awk -v mode="$mode" -v lb="127.0.0.1:$lb_port" -v stats="127.0.0.1:$stats_port" \
        -v maxconn="$haproxy_maxconn" -v servers="$servers" -v source="$haproxy_cfg" '
        BEGIN { print "# Generated by scripts/fleet.sh from " source " (see there); do not edit." }
        /^[^ \t#]/ {
            section = $1; name = $2
            skip = section == "resolvers" ||
                ((section == "frontend" && name ~ /^ws-/ && name != "ws-" mode) ||
                 (section == "backend" && name ~ /^server-/ && name != "server-" mode))
        }
        skip { next }
        section == "global" && $1 == "maxconn" { print "    maxconn " maxconn; next }
        $1 == "default-server" {
            line = "   "
            for (f = 1; f <= NF; f++) {
                if ($f == "init-addr" || $f == "resolvers") { f++; continue }
                line = line " " $f
            }
            print line; next
        }
        section == "frontend" && $1 == "bind" { print "    bind " (name == "stats" ? stats : lb); binds++; next }
        section == "backend" && $1 == "server-template" { printf "%s", servers; templates++; next }
        { print }
        END { if (templates != 1 || binds != 2) { print "expected one server-template and two binds" > "/dev/stderr"; exit 3 } }
    ' "$haproxy_cfg" >"$out/haproxy.cfg" || die "cannot derive a loopback configuration from $haproxy_cfg"
    # How long the checks take to mark a replica down once it answers 503: the next check
    # (inter), fall - 1 more at fastinter, and timeout check for the one in flight.
    takes_out=$(awk '
        function secs(d) { return d ~ /ms$/ ? substr(d, 1, length(d) - 2) / 1000 : (d ~ /s$/ ? substr(d, 1, length(d) - 1) : d / 1000) }
        $1 == "timeout" && $2 == "check" { check = secs($3) }
        $1 == "default-server" { for (f = 2; f < NF; f++) o[$f] = $(f + 1) }
        END {
            inter = "inter" in o ? secs(o["inter"]) : 2; fast = "fastinter" in o ? secs(o["fastinter"]) : inter
            fall = "fall" in o ? o["fall"] : 3
            printf "%.2f", inter + fast * (fall - 1) + (check ? check : inter)
        }' "$out/haproxy.cfg")
    if awk -v d="$drain_secs" -v t="$takes_out" 'BEGIN {exit !(d <= t)}'; then
        echo "fleet.sh: --drain-delay $drain_delay is not longer than the ${takes_out} s HAProxy's checks may take to" \
            "mark a replica down ($haproxy_cfg): clients may be sent to a replica that no longer accepts" >&2
    fi
    haproxy -c -f "$out/haproxy.cfg" >"$out/haproxy-check.log" 2>&1 ||
        { cat "$out/haproxy-check.log" >&2; die "haproxy -c refuses $out/haproxy.cfg"; }
    haproxy -db -f "$out/haproxy.cfg" >"$out/haproxy.log" 2>&1 &
    haproxy_pid=$!
    stats_url="http://127.0.0.1:$stats_port/;csv"
fi

# haproxy_servers STATUS: how many of the replicas HAProxy reports in STATUS (UP, DOWN...).
haproxy_servers() {
    local csv
    csv=$(curl -sf --max-time 2 "$stats_url") || { echo 0; return; }
    awk -F, -v backend="server-$mode" -v want="$1" '
        NR == 1 { for (c = 1; c <= NF; c++) if ($c == "status") col = c; next }
        $1 == backend && $2 != "BACKEND" && $col ~ "^" want { n++ }
        END { print n + 0 }' <<<"$csv"
}

# wait_until SECONDS WHAT COMMAND...: polls COMMAND every 0.1 s until it succeeds.
wait_until() {
    local seconds=$1 what=$2 _
    shift 2
    for _ in $(seq $((seconds * 10))); do
        "$@" && return 0
        sleep 0.1
    done
    echo "fleet.sh: timed out after ${seconds}s waiting for $what" >&2
    return 1
}
all_up() { [ "$(haproxy_servers UP)" = "$replicas" ]; }
# haproxy_backend_counters: the backend's sessions, connection errors, retries and
# redispatches since HAProxy started, as JSON.
haproxy_backend_counters() {
    local csv
    csv=$(curl -sf --max-time 2 "$stats_url") || { echo null; return; }
    awk -F, -v backend="server-$mode" '
        NR == 1 { for (c = 1; c <= NF; c++) col[$c] = c; next }
        $1 == backend && $2 == "BACKEND" {
            printf "{\"sessions\": %d, \"connection_errors\": %d, \"retries\": %d, \"redispatches\": %d}\n",
                $col["stot"], $col["econ"], $col["wretr"], $col["wredis"]
        }' <<<"$csv"
}
if [ "$direct" = 0 ]; then
    wait_until 30 "HAProxy to check every replica UP" all_up || { tail -20 "$out/haproxy.log" >&2; exit 1; }
    haproxy_rss_before=$(awk '/^VmRSS/ {print $2 * 1024}' "/proc/$haproxy_pid/status")
    echo "balancer: HAProxy on ws://127.0.0.1:$lb_port/ws, maxconn $haproxy_maxconn, stats http://127.0.0.1:$stats_port/"
fi

# --- Prometheus ------------------------------------------------------------------------
for ((s = 0; s < segments; s++)); do
    segment_metrics[$s]=127.0.0.1:$(free_port)
    segment_urls[$s]="http://${segment_metrics[$s]}/metrics"
done
targets() { printf '"%s", ' "$@" | sed 's/, $//'; }
cat >"$out/prometheus.yml" <<EOF
# Generated by scripts/fleet.sh: every replica and every load segment, each second.
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: wsscale
    static_configs:
      - targets: [$(targets "${replica_metrics[@]}")]
  - job_name: wsscale-loadgen
    static_configs:
      - targets: [$(targets "${segment_metrics[@]}")]
EOF
promtool check config "$out/prometheus.yml" >/dev/null
prometheus --config.file="$out/prometheus.yml" --storage.tsdb.path="$out/prometheus-data" \
    --web.listen-address=127.0.0.1:0 >/dev/null 2>"$out/prometheus.log" &
prometheus_pid=$!
prometheus_listening() { grep -q 'msg="Listening on"' "$out/prometheus.log"; }
wait_until 60 "Prometheus to listen" prometheus_listening
prometheus_api="http://$(sed -n 's/.*msg="Listening on" address=\([^ ]*\).*/\1/p' "$out/prometheus.log" | head -1)/api/v1"
echo "prometheus: ${prometheus_api%/api/v1}"

# prom_query EXPR [TIME]: the instant query's JSON result (an array of series).
prom_query() {
    local args=(--data-urlencode "query=$1")
    [ -n "${2:-}" ] && args+=(--data-urlencode "time=$2")
    curl -sf --max-time 10 "${args[@]}" "$prometheus_api/query" | jq -c '.data.result'
}

# --- the load --------------------------------------------------------------------------
start_at=$(awk -v t="$(now)" 'BEGIN {printf "%.1f", t + 2}')
for ((s = 0; s < segments; s++)); do
    if [ "$direct" = 1 ]; then
        url="ws://${replica_ws[$((s % replicas))]}/ws"
    else
        url="ws://127.0.0.1:$lb_port/ws"
    fi
    # The run id names the run, not the target: direct segments have different URLs.
    RUST_LOG=${RUST_LOG:-warn} "$bin" load --url "$url" --connections "$connections" --rate "$rate" \
        --segment "$s/$segments" --start-at "$start_at" --run-id "$run_id" --reconnect \
        --hold "${timeout}s" --ping-interval "$ping_interval" --metrics-listen "${segment_metrics[$s]}" \
        --json "$out/segment-$s.json" >"$out/segment-$s.out" 2>"$out/segment-$s.err" &
    segment_pids[$s]=$!
done

# fleet_held: connections the replicas hold now (a replica that does not answer counts 0).
fleet_held() {
    local total=0 i value
    for ((i = 0; i < replicas; i++)); do
        value=$(metric "http://${replica_metrics[$i]}/metrics" wsscale_connections_active)
        value=${value%%.*}
        total=$((total + ${value:-0}))
    done
    echo "$total"
}
# load_counts: "OPEN LOST FAILED" over every segment, from one scrape of each (one curl):
# connections the generators hold open now, connections lost so far, failed reconnect
# attempts so far (every reason). Fails when a segment does not answer.
load_counts() {
    local scrape
    scrape=$(curl -sf --max-time 5 "${segment_urls[@]}") || return 1
    awk '$1 == "wsscale_loadgen_connections_open" {open += $2}
         $1 ~ /^wsscale_loadgen_connections_lost_total([{]|$)/ {lost += $2}
         $1 ~ /^wsscale_loadgen_reconnect_failures_total([{]|$)/ {failed += $2}
         END {printf "%d %d %d\n", open, lost, failed}' <<<"$scrape"
}
clients_open() { local counts; counts=$(load_counts) || { echo 0; return; }; echo "${counts%% *}"; }
# counts_now: load_counts, retried for up to 5 s; the script stops when the segments do not answer.
counts_now() {
    local _
    for _ in $(seq 50); do
        load_counts && return 0
        sleep 0.1
    done
    die "the load segments stopped answering on their metrics endpoints (see $out/segment-*.err)"
}
everyone_held() { [ "$(fleet_held)" = "$connections" ] && [ "$(clients_open)" = "$connections" ]; }
ramp_seconds=$(awk -v c="$connections" -v r="$rate" 'BEGIN {print (r > 0 ? int(c / r) : 0) + 60}')
complete=true
if ! wait_until "$ramp_seconds" "all $connections connections held" everyone_held; then
    complete=false
    echo "fleet.sh: the fleet holds $(fleet_held) and the generators $(clients_open) of $connections" >&2
fi

# Each replica's share and memory once its RSS is steady.
held_per_replica=() rss_per_replica=() per_connection=()
for ((i = 0; i < replicas; i++)); do
    url="http://${replica_metrics[$i]}/metrics"
    per_connection[$i]=$(steady_metric "$url" wsscale_memory_per_connection_bytes 'source="rss"' 15)
    held=$(metric "$url" wsscale_connections_active)
    held_per_replica[$i]=${held%%.*}
    rss_per_replica[$i]=$(metric "$url" process_resident_memory_bytes)
done
haproxy_rss= haproxy_fds=
if [ "$direct" = 0 ]; then
    haproxy_rss=$(awk '/^VmRSS/ {print $2 * 1024}' "/proc/$haproxy_pid/status")
    haproxy_fds=$(find "/proc/$haproxy_pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
fi
echo "held: ${held_per_replica[*]} (of $connections)"

# --- the rolling restart -----------------------------------------------------------------
restarts=()
poll=0.02
if [ "$rolling" = 1 ] && [ "$complete" = true ]; then
    for ((i = 0; i < replicas; i++)); do
        read -r _ lost_before failed_before <<<"$(counts_now)"
        held_before=$(metric "http://${replica_metrics[$i]}/metrics" wsscale_connections_active)
        held_before=${held_before%%.*}
        signalled=${EPOCHREALTIME/,/.}
        kill -TERM "${replica_pids[$i]}"
        lost_at= back_at= exited_at= started_at=
        deadline=$(awk -v t="$signalled" -v d="$drain_secs" -v w="$drain_timeout_secs" -v g="$down_secs" \
            'BEGIN {printf "%.3f", t + d + w + g + 60}')
        # Until the replica has exited (then it is started again on its ports) and every
        # one of its connections has been lost and is back (bounded).
        # A loss or a return is stamped when a poll has seen it: within one poll (the
        # mean time between polls is in fleet.json) after it happened.
        polls=0
        while :; do
            t=${EPOCHREALTIME/,/.}
            if [ -z "$exited_at" ] && ! kill -0 "${replica_pids[$i]}" 2>/dev/null; then
                wait "${replica_pids[$i]}" || echo "fleet.sh: replica $i exited with status $?" >&2
                exited_at=$t
            fi
            if [ -n "$exited_at" ] && [ -z "$started_at" ] &&
                awk -v t="$t" -v e="$exited_at" -v d="$down_secs" 'BEGIN {exit !(t >= e + d)}'; then
                start_replica "$i" "${replica_ws[$i]}" "${replica_metrics[$i]}"
                started_at=${EPOCHREALTIME/,/.}
            fi
            if counts=$(load_counts); then
                t=${EPOCHREALTIME/,/.}
                polls=$((polls + 1))
                read -r open lost _ <<<"$counts"
                [ -z "$lost_at" ] && [ "$lost" -gt "$lost_before" ] && lost_at=$t
                if [ -n "$lost_at" ] && [ -z "$back_at" ] && [ "$open" = "$connections" ] &&
                    [ $((lost - lost_before)) -ge "$held_before" ]; then
                    back_at=$t
                fi
            fi
            [ -n "$started_at" ] && [ -n "$back_at" ] && break
            if awk -v t="$t" -v d="$deadline" 'BEGIN {exit !(t > d)}'; then
                echo "fleet.sh: replica $i: not every connection back within the bound ($open of $connections)" >&2
                break
            fi
            sleep "$poll"
        done
        mean_poll=$(awk -v a="$signalled" -v b="${EPOCHREALTIME/,/.}" -v n="$polls" 'BEGIN {printf "%.3f", (b - a) / (n > 0 ? n : 1)}')
        if [ "$direct" = 0 ]; then
            wait_until 30 "HAProxy to take replica $i back" all_up || true
        fi
        read -r _ lost_after failed_after <<<"$(counts_now)"
        # Recovered: from the moment the replica starts closing its sessions (SIGTERM +
        # the drain delay) until a poll sees every connection back.
        recovered=null
        [ -n "$back_at" ] && recovered=$(awk -v s="$signalled" -v d="$drain_secs" -v b="$back_at" \
            'BEGIN {r = b - s - d; printf "%.2f", (r > 0 ? r : 0)}')
        restarts+=("$(jq -nc --argjson replica "$i" --argjson held "$held_before" \
            --argjson lost "$((lost_after - lost_before))" --argjson failed "$((failed_after - failed_before))" \
            --argjson recovered "$recovered" --argjson mean_poll "$mean_poll" \
            --argjson exited "$(elapsed "$signalled" "${exited_at:-$signalled}")" \
            --argjson started "$([ -n "$started_at" ] && elapsed "$signalled" "$started_at" || echo null)" \
            --argjson lost_at "$([ -n "$lost_at" ] && elapsed "$signalled" "$lost_at" || echo null)" \
            --argjson back_at "$([ -n "$back_at" ] && elapsed "$signalled" "$back_at" || echo null)" \
            '{replica: $replica, held: $held, lost: $lost, failed_attempts: $failed, recovered_secs: $recovered,
              first_loss_after_sigterm_secs: $lost_at, all_back_after_sigterm_secs: $back_at,
              exited_after_sigterm_secs: $exited, started_after_sigterm_secs: $started,
              mean_poll_secs: $mean_poll}')")
        echo "restart of replica $i: held $held_before, exited after $(elapsed "$signalled" "${exited_at:-$signalled}") s," \
            "started again after $([ -n "$started_at" ] && elapsed "$signalled" "$started_at" || echo -) s," \
            "recovered in ${recovered} s, $((failed_after - failed_before)) failed attempts"
    done
fi

# --- the dashboard's queries over the fleet, at one evaluation time ----------------------
held_after=$(fleet_held)
held_after_per_replica=()
for ((i = 0; i < replicas; i++)); do
    value=$(metric "http://${replica_metrics[$i]}/metrics" wsscale_connections_active)
    held_after_per_replica[$i]=${value%%.*}
done
open_at_end=$(clients_open)
# The fleet is settled now: once Prometheus has scraped every target after this moment,
# its latest samples show the settled fleet, and every query is evaluated at one time.
settled=$(now)
scraped_after() {
    awk -v t="$(prom_query 'min(timestamp(up))' | jq -r '.[0].value[1] // 0')" -v e="$settled" 'BEGIN {exit !(t > e)}'
}
wait_until 30 "Prometheus to scrape every target after the fleet settled" scraped_after || true
evaluation=$(now)
instances=$(printf '%s|' "${replica_metrics[@]}")
instances="(${instances%|})"
instances=${instances//./\\\\.}
panel() { # TITLE REF: the panel's expression, variables substituted as Grafana would
    local expr
    expr=$(jq -r --arg title "$1" --arg ref "$2" \
        '.panels[] | select(.title == $title) | .targets[] | select(.refId == $ref) | .expr' dashboards/wsscale.json)
    [ -n "$expr" ] || die "no panel \"$1\" $2 in dashboards/wsscale.json"
    expr=${expr//\$mode/"$mode"}
    expr=${expr//\$engine/lean}
    expr=${expr//\$scheme/ws}
    expr=${expr//\$instance/"$instances"}
    echo "$expr"
}
first_value() { jq -r "${1:-.}"' | map(.value[1] | tonumber) | first // null'; }
by_instance() { jq -c 'map({key: .metric.instance, value: (.value[1] | tonumber)}) | from_entries'; }
dashboard=$(jq -n \
    --argjson active "$(prom_query "$(panel 'Active connections' A)" "$evaluation" | first_value)" \
    --argjson active_each "$(prom_query "wsscale_connections_active{instance=~\"$instances\"}" "$evaluation" | by_instance)" \
    --argjson rss "$(prom_query "$(panel 'Resident memory (RSS) and live heap' A)" "$evaluation" | first_value)" \
    --argjson rss_each "$(prom_query "process_resident_memory_bytes{instance=~\"$instances\"}" "$evaluation" | by_instance)" \
    --argjson per_connection "$(prom_query "$(panel 'Memory per connection, by source' A)" "$evaluation" |
        first_value 'map(select(.metric.source == "rss"))')" \
    --argjson per_connection_each "$(prom_query "wsscale_memory_per_connection_bytes{source=\"rss\", instance=~\"$instances\"}" "$evaluation" | by_instance)" \
    --argjson clients "$(prom_query "$(panel 'Load generator: connections open' A)" "$evaluation" | first_value)" \
    --argjson evaluation "$evaluation" \
    '{evaluated_at_unix: $evaluation,
      active_connections: $active, active_connections_per_replica: $active_each,
      rss_bytes: $rss, rss_bytes_per_replica: $rss_each,
      memory_per_connection_rss_bytes: $per_connection,
      memory_per_connection_rss_bytes_per_replica: $per_connection_each,
      loadgen_connections_open: $clients}')

# --- stop the load, merge its segments -----------------------------------------------------
for pid in "${segment_pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
for ((s = 0; s < segments; s++)); do
    stop_process "${segment_pids[$s]}" 60 || echo "fleet.sh: segment $s exited with status $?" >&2
    segment_pids[$s]=
done
"$bin" load merge "$out"/segment-*.json --json "$out/load.json" >"$out/load.out"
haproxy_counters=null
[ "$direct" = 0 ] && haproxy_counters=$(haproxy_backend_counters)

# --- fleet.json and the table --------------------------------------------------------------
json_array() { printf '%s\n' "$@" | jq -Rsc 'split("\n")[:-1] | map(tonumber? // null)'; }
rolling_json=null
if [ "$rolling" = 1 ]; then
    rolling_json=$(printf '%s\n' "${restarts[@]}" | jq -sc \
        --argjson held_after "$held_after" --argjson open "$open_at_end" --argjson connections "$connections" \
        --argjson held_each "$(json_array "${held_after_per_replica[@]}")" '
        {failed_attempts: (map(.failed_attempts) | add // 0),
         recovered_secs: (map(.recovered_secs) | max),
         held_after: $held_after, held_after_per_replica: $held_each,
         lost_at_end: ($connections - $open),
         restarts: .}')
fi
jq -n \
    --arg mode "$mode" --argjson replicas "$replicas" --argjson connections "$connections" \
    --argjson segments "$segments" --arg through "$([ "$direct" = 1 ] && echo direct || echo haproxy)" \
    --arg drain_delay "$drain_delay" --arg drain_timeout "$drain_timeout" --argjson down "$down_secs" \
    --arg haproxy_cfg "$([ "$direct" = 1 ] && echo "" || echo "$haproxy_cfg")" \
    --argjson haproxy_maxconn "${haproxy_maxconn:-null}" \
    --argjson haproxy_rss "${haproxy_rss:-null}" --argjson haproxy_rss_before "${haproxy_rss_before:-null}" \
    --argjson haproxy_fds "${haproxy_fds:-null}" --argjson haproxy_counters "$haproxy_counters" \
    --argjson complete "$complete" \
    --argjson held "$(json_array "${held_per_replica[@]}")" \
    --argjson rss "$(json_array "${rss_per_replica[@]}")" \
    --argjson per_connection "$(json_array "${per_connection[@]}")" \
    --argjson dashboard "$dashboard" \
    --slurpfile load "$out/load.json" \
    --argjson rolling "$rolling_json" \
    --arg load_average "$(cut -d' ' -f1-3 /proc/loadavg)" --argjson cores "$(nproc)" \
    --argjson secs "$(elapsed "$began" "$(now)")" '
    ($held | add) as $total |
    {mode: $mode, engine: "lean", replicas: $replicas, connections: $connections, segments: $segments,
     through: $through, drain_delay: $drain_delay, drain_timeout: $drain_timeout, down_secs: $down,
     all_held: $complete,
     held_per_replica: $held,
     balance_max_deviation_pct: (if $total > 0 then ($held | map((. - $total / ($held | length)) | if . < 0 then -. else . end) | max) * 100 / ($total / ($held | length)) else null end),
     rss_bytes_per_replica: $rss, rss_bytes_fleet: ($rss | add),
     memory_per_connection_rss_bytes_per_replica: $per_connection,
     haproxy: (if $through == "haproxy" then
        {configuration: $haproxy_cfg, maxconn: $haproxy_maxconn, rss_bytes: $haproxy_rss,
         rss_bytes_before_load: $haproxy_rss_before, open_fds: $haproxy_fds,
         rss_per_connection_bytes: (($haproxy_rss - $haproxy_rss_before) / $connections),
         backend: $haproxy_counters}
        else null end),
     dashboard: $dashboard,
     load: ($load[0] | del(.histograms)),
     rolling_restart: $rolling,
     machine: {cores: $cores, load_average_at_end: $load_average},
     secs: $secs}' >"$out/fleet.json"

printf '\n%-34s %s\n' "fleet" "$replicas x $mode-lean, $connections connections, $segments segments, $(jq -r .through "$out/fleet.json")"
printf '%-34s %s\n' "held per replica" "$(jq -r '.held_per_replica | join(" / ")' "$out/fleet.json") (max deviation $(jq -r '.balance_max_deviation_pct // "n/a" | if type == "number" then (. * 10 | round / 10 | tostring) + " %" else . end' "$out/fleet.json"))"
printf '%-34s %s\n' "RSS per replica (MiB)" "$(jq -r '.rss_bytes_per_replica | map(. / 1048576 * 10 | round / 10) | join(" / ")' "$out/fleet.json"), fleet $(jq -r '.rss_bytes_fleet / 1048576 * 10 | round / 10' "$out/fleet.json")"
printf '%-34s %s\n' "RSS per connection (B)" "$(jq -r '.memory_per_connection_rss_bytes_per_replica | map(round) | join(" / ")' "$out/fleet.json"), at the end weighted by the dashboard: $(jq -r '.dashboard.memory_per_connection_rss_bytes // "n/a" | if type == "number" then round else . end' "$out/fleet.json")"
printf '%-34s %s\n' "dashboard: active connections" "$(jq -r '.dashboard.active_connections' "$out/fleet.json") (per replica $(jq -r '.dashboard.active_connections_per_replica | to_entries | map(.value) | join(" / ")' "$out/fleet.json"))"
if [ "$direct" = 0 ]; then
    printf '%-34s %s\n' "HAProxy: sessions, errors, retries" "$(jq -r '.haproxy.backend | "\(.sessions) sessions, \(.connection_errors) connection errors, \(.retries) retries, \(.redispatches) redispatches"' "$out/fleet.json")"
    printf '%-34s %s\n' "HAProxy" "maxconn $haproxy_maxconn, $(jq -r '.haproxy.open_fds' "$out/fleet.json") fds, RSS $(jq -r '.haproxy.rss_bytes / 1048576 * 10 | round / 10' "$out/fleet.json") MiB ($(jq -r '.haproxy.rss_per_connection_bytes | round' "$out/fleet.json") B per connection)"
fi
if [ "$rolling" = 1 ]; then
    printf '%-34s %s\n' "rolling restart: failed attempts" "$(jq -r .rolling_restart.failed_attempts "$out/fleet.json")"
    printf '%-34s %s\n' "rolling restart: recovered (s)" "$(jq -r '.rolling_restart.restarts | map(.recovered_secs) | join(" / ")' "$out/fleet.json") (closes begin to all back, per replica; polls $(jq -r '.rolling_restart.restarts | map(.mean_poll_secs) | join(" / ")' "$out/fleet.json") s apart)"
    printf '%-34s %s\n' "rolling restart: held after" "$(jq -r '.rolling_restart.held_after_per_replica | join(" / ")' "$out/fleet.json"); lost at the end: $(jq -r .rolling_restart.lost_at_end "$out/fleet.json")"
fi
printf '%-34s %s\n' "load: reconnect time (ms)" "$(jq -r '.load.reconnect_ms | "p50 \(.p50), p99 \(.p99), max \(.max) over \(.count)"' "$out/fleet.json") (loss to new upgrade, each connection)"
printf '%-34s %s\n' "load: failed reconnect attempts" "$(jq -c '.load.reconnect_failures' "$out/fleet.json")"
printf '%-34s %s\n' "run" "$(jq -r .secs "$out/fleet.json") s, load average $(jq -r .machine.load_average_at_end "$out/fleet.json") on $(nproc) cores; $out/fleet.json"
