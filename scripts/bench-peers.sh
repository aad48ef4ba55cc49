#!/usr/bin/env bash
# The reference peers next to wsscale's own modes, by one method: installs what the peers need
# (peers/install.sh), builds wsscale, then runs ONE `wsscale compare` over every peer of
# peers/servers.txt (as --server NAME=COMMAND) and wsscale's own runs (both modes, both
# engines, unless --modes / --engines say otherwise). compare
# prints the table and writes the report to report-peers/ (WSSCALE_COMPARE_OUT or --out to
# change). Bounded: compare steps up to --connections, measures, and stops every server.
#
# --schemes (compare's flag, passed on; default ws as compare's): with ws the peers' plain lines
# of servers.txt run, with wss their NAME-wss lines (the peer serving wss:// with compare's
# certificate, {cert} and {key}) and wsscale's own runs over TLS too.
#
#   scripts/bench-peers.sh [wsscale compare flags...]       e.g. --connections 5000 --steps 3
#   scripts/bench-peers.sh --schemes ws,wss                 every peer and run, ws and wss
#   WSSCALE_PEERS="node-ws go-gorilla" scripts/bench-peers.sh   only some peers (and their -wss)
set -euo pipefail
cd "$(dirname "$0")/.."

read -r -a peers <<<"${WSSCALE_PEERS:-}"
peers/install.sh "${peers[@]}"
cargo build --release --quiet
bin=target/release/wsscale

# The schemes compare will run: the last --schemes among the arguments, else compare's env/default.
schemes=${WSSCALE_COMPARE_SCHEMES:-ws}
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case ${args[i]} in
        --schemes=*) schemes=${args[i]#--schemes=} ;;
        --schemes) schemes=${args[i + 1]:-} ;;
    esac
done
has_scheme() { [[ ",$schemes," == *",$1,"* ]]; }

servers=()
while IFS= read -r line; do
    [[ -z $line || $line == \#* ]] && continue
    name=${line%%=*}
    if [[ $name == *-wss ]]; then
        has_scheme wss || continue
    else
        has_scheme ws || continue
    fi
    if ((${#peers[@]})) && [[ " ${peers[*]} " != *" ${name%-wss} "* ]]; then
        continue
    fi
    servers+=(--server "$line")
done <peers/servers.txt

export WSSCALE_COMPARE_OUT=${WSSCALE_COMPARE_OUT:-report-peers}
"$bin" compare "${servers[@]}" "$@"
