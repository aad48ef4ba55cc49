#!/usr/bin/env bash
# The reference peers next to wsscale's own modes, by one method: installs what the peers need
# (peers/install.sh), builds wsscale, then runs ONE `wsscale compare` over every peer of
# peers/servers.txt (as --server NAME=COMMAND) and wsscale's own runs (both modes, both
# engines, unless --modes / --engines say otherwise). compare
# prints the table and writes the report to report-peers/ (WSSCALE_COMPARE_OUT or --out to
# change). Bounded: compare steps up to --connections, measures, and stops every server.
#
#   scripts/bench-peers.sh [wsscale compare flags...]       e.g. --connections 5000 --steps 3
#   WSSCALE_PEERS="node-ws go-gorilla" scripts/bench-peers.sh   only some peers
set -euo pipefail
cd "$(dirname "$0")/.."

read -r -a peers <<<"${WSSCALE_PEERS:-}"
peers/install.sh "${peers[@]}"
cargo build --release --quiet
bin=target/release/wsscale

servers=()
while IFS= read -r line; do
    [[ -z $line || $line == \#* ]] && continue
    name=${line%%=*}
    if ((${#peers[@]})) && [[ " ${peers[*]} " != *" $name "* ]]; then
        continue
    fi
    servers+=(--server "$line")
done <peers/servers.txt

export WSSCALE_COMPARE_OUT=${WSSCALE_COMPARE_OUT:-report-peers}
"$bin" compare "${servers[@]}" "$@"
