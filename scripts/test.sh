#!/usr/bin/env bash
# The test command: installs (or finds) what the tests talk to, then runs the whole
# suite. Works on a fresh machine of this project's kind (Debian, root, pyenv's Python
# 2.7.18 for the Autobahn suite); quick when everything is already there.
#
#   scripts/test.sh [extra cargo test arguments...]
#
# What the tests need, and where it comes from:
#   promtool, prometheus     Debian package prometheus (a real Prometheus in the stack test)
#   check-jsonschema         PyPI (the compose file against the compose specification)
#   Autobahn|Testsuite       PyPI, on Python 2.7; scripts/autobahn.sh installs it into
#                            target/autobahn the first time a conformance test runs
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '=== %s\n' "$*" >&2; }

apt_install() {
    if [ "$(id -u)" != 0 ]; then
        echo "scripts/test.sh: $* missing; install it as root: apt-get install -y $*" >&2
        exit 2
    fi
    log "installing $* (apt)"
    if [ -z "${apt_updated:-}" ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pip_install() {
    log "installing $* (pip)"
    python3 -m pip install --quiet --disable-pip-version-check "$@"
}

command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || apt_install prometheus
command -v check-jsonschema >/dev/null 2>&1 || pip_install check-jsonschema
log "$(promtool --version 2>&1 | head -n 1); check-jsonschema $(check-jsonschema --version 2>&1 | awk '{print $NF}')"

log "cargo test --workspace $*"
exec cargo test --workspace "$@"
