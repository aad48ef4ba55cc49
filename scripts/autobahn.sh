#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzing client against a WebSocket URL and writes its
# reports to OUTDIR (OUTDIR/index.json is the verdict per case). Installs the suite into
# target/autobahn first where it is missing: it runs only on Python 2.7 (pyenv's 2.7.18).
#
#   scripts/autobahn.sh ws://127.0.0.1:PORT/ws OUTDIR [AGENT] [--compression|--compression-only|--compression-sample]
#
# URL is ws:// or wss:// (the suite does not verify the certificate). Cases 12.* and 13.*
# (permessage-deflate) run only with --compression (every case), --compression-only
# (those two sections alone) or --compression-sample (of each of their subsections, the
# cases of messages up to 1 KiB, 12.*.1-4 and 13.*.1-4, and one fragmented case, 12.1.11:
# every offer and data set in minutes rather than the hour the 1000 messages of up to
# 128 KiB per case take the suite's Python client), for a server started with --deflate;
# without, they are excluded. Exit status: non-zero when the suite cannot be installed or
# run.
set -euo pipefail
url=${1:?usage: autobahn.sh URL OUTDIR [AGENT]}
outdir=${2:?usage: autobahn.sh URL OUTDIR [AGENT]}
agent=${3:-wsscale}
cases='"*"'
exclude='"12.*", "13.*"'
case "${4:-}" in
    --compression) exclude='' ;;
    --compression-only) cases='"12.*", "13.*"' exclude='' ;;
    # Patterns are regular expressions once they hold a '*' (matched from the start).
    --compression-sample) cases='"12.*.[1-4]$", "13.*.[1-4]$", "12.1.11"' exclude='' ;;
    "") ;;
    *) echo "autobahn.sh: unknown option ${4}" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
site="$root/target/autobahn/site"

python2=""
if command -v pyenv >/dev/null 2>&1 && [ -x "$(pyenv root)/versions/2.7.18/bin/python" ]; then
    python2="$(pyenv root)/versions/2.7.18/bin/python"
elif command -v python2.7 >/dev/null 2>&1; then
    python2=$(command -v python2.7)
else
    echo "autobahn.sh: no Python 2.7 (pyenv's 2.7.18 or python2.7); the Autobahn suite cannot run" >&2
    exit 2
fi

# Tests run this script for both modes at once: one installs, the other waits.
mkdir -p "$root/target/autobahn"
exec 9>"$root/target/autobahn/install.lock"
flock 9
if [ ! -f "$site/.installed" ]; then
    echo "autobahn.sh: installing autobahntestsuite 25.10.1 into $site" >&2
    rm -rf "$site"
    mkdir -p "$site"
    # The pins of the sdist's autobahntestsuite.egg-info/requires.txt.
    "$python2" -m pip install --quiet --disable-pip-version-check --no-warn-script-location --target "$site" \
        autobahntestsuite==25.10.1 setuptools==44.0.0 txaio==2.1.0 incremental==16.10.1 pyOpenSSL==19.1.0 \
        cryptography==3.3.2 Twisted==19.10.0 zope.interface==4.6.0 jinja2==2.11.3 markupsafe==1.1.1 \
        Werkzeug==1.0.1 klein==17.10.0 service_identity==18.1.0 unittest2==1.1.0 six==1.16.0 \
        "autobahn[accelerate,twisted]==0.10.9" 2>&1 | grep -v DEPRECATION >&2 || true
    "$python2" -c "import site; site.addsitedir('$site'); import autobahntestsuite.wstest" \
        || { echo "autobahn.sh: the install is broken" >&2; exit 2; }
    touch "$site/.installed"
fi
flock -u 9

mkdir -p "$outdir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/spec.json" <<SPEC
{
  "outdir": "$outdir",
  "servers": [{"agent": "$agent", "url": "$url"}],
  "cases": [$cases],
  "exclude-cases": [$exclude],
  "exclude-agent-cases": {}
}
SPEC
cd "$work"
"$python2" -c "import site,sys; site.addsitedir('$site'); from autobahntestsuite.wstest import run; run()" \
    -m fuzzingclient -s "$work/spec.json" >"$outdir/wstest.log" 2>&1 \
    || { echo "autobahn.sh: wstest failed, see $outdir/wstest.log" >&2; tail -20 "$outdir/wstest.log" >&2; exit 2; }
test -f "$outdir/index.json" || { echo "autobahn.sh: no $outdir/index.json" >&2; exit 2; }
