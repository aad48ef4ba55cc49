#!/usr/bin/env bash
# What permessage-deflate costs once messages flow: the lean server's live heap (its
# wsscale_heap_allocated_bytes) before any connection and after every connection sent one
# compressible 1 KiB message and got its compressed echo, per --deflate setting, with the
# generator offering the extension as Chromium does. Loopback only, bounded (about 15 s
# per setting), stops what it starts. compare measures idle connections; this is the
# figure for connections that have sent something.
#
#   scripts/bench-deflate-messages.sh [CONNECTIONS]      (default 2000)
#   WSSCALE_BIN=path/to/wsscale scripts/bench-deflate-messages.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
connections=${1:-2000}
bin=$(wsscale_bin)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for setting in "off" "stateless" "context 15" "context 10"; do
    read -r mode bits <<<"$setting"
    flags=(--engine lean --deflate "$mode")
    [ -n "${bits:-}" ] && flags+=(--deflate-window-bits "$bits")
    start_server "$bin" tasks 127.0.0.1:0 "$work" "${flags[@]}"
    before=$(metric "$metrics_url" wsscale_heap_allocated_bytes)
    # Each connection sends its one message 8 s after it opened, and is released at 14 s.
    "$bin" load --url "$ws_url" -n "$connections" --hold 14s --ping-interval 0s --message-interval 8s \
        --message-size 1KiB --offer-deflate --json "$work/load.json" >"$work/load.out" 2>&1 &
    load=$!
    # Every connection's message echoed (compressed): the heap is read with each of them
    # having sent exactly one.
    wait_metric "$metrics_url" wsscale_messages_sent_total "$connections" 30
    after=$(metric "$metrics_url" wsscale_heap_allocated_bytes)
    wait "$load"
    stop_process "$server_pid"
    echo "$setting: heap $before B before, $after B after one message on each of $connections connections: $(((${after%.*} - ${before%.*}) / connections)) B per connection; echoed $(jq .messages_echoed "$work/load.json")"
done
