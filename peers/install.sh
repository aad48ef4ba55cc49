#!/usr/bin/env bash
# Installs and builds what the reference peers need, only what is missing, into each peer's
# folder (node_modules/, .venv/, build/, target/: all git-ignored). Quick when all is there.
#
#   peers/install.sh                 every peer
#   peers/install.sh node-ws go-gorilla
#
# Debian packages (Go, gorilla/websocket, Netty, a JDK when javac is missing) need root for
# apt-get; the rest installs as any user. The commands that run the peers: peers/servers.txt.
set -euo pipefail

cd "$(dirname "$0")"
ALL_PEERS=(node-ws python-websockets go-gorilla java-netty rust-fastwebsockets)

say() { echo "peers/install.sh: $*" >&2; }

# apt-get install the packages that are not installed yet. Waits for another apt-get to finish
# (the lock), and refreshes the package lists once if a package is unknown or a download fails.
apt_install() {
    local missing=() package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$package")
    done
    ((${#missing[@]})) || return 0
    local sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q)
    say "apt-get install ${missing[*]}"
    for package in "${missing[@]}"; do
        if [[ -z $(apt-cache policy "$package" 2>/dev/null | grep -v '(none)' | grep Candidate) ]]; then
            "${apt[@]}" update
            break
        fi
    done
    "${apt[@]}" install -y --no-install-recommends "${missing[@]}" ||
        { "${apt[@]}" update && "${apt[@]}" install -y --no-install-recommends "${missing[@]}"; }
}

install_node_ws() {
    command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
    # npm ci writes node_modules/.package-lock.json: newer than the lock file means installed.
    if [[ node-ws/node_modules/.package-lock.json -nt node-ws/package-lock.json ]]; then
        return 0
    fi
    (cd node-ws && npm ci --no-audit --no-fund --loglevel=error)
}

install_python_websockets() {
    local venv=python-websockets/.venv python=${PYTHON:-python3}
    if [[ ! -x $venv/bin/python ]]; then
        "$python" -m venv "$venv" || {
            apt_install python3-venv && rm -rf "$venv" && /usr/bin/python3 -m venv "$venv"
        }
    fi
    # The requirements installed last are kept beside the venv: the same file means installed.
    if cmp -s python-websockets/requirements.txt "$venv/installed-requirements.txt"; then
        return 0
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir \
        -r python-websockets/requirements.txt
    cp python-websockets/requirements.txt "$venv/installed-requirements.txt"
}

install_go_gorilla() {
    # No Go module proxy here: Debian's Go and gorilla/websocket, built in GOPATH mode.
    apt_install golang-go golang-github-gorilla-websocket-dev
    if [[ go-gorilla/build/server -nt go-gorilla/server.go ]]; then
        return 0
    fi
    local gopath
    gopath=$(mktemp -d)
    (cd go-gorilla && GO111MODULE=off GOPATH="/usr/share/gocode:$gopath" go build -o build/server server.go)
    rm -rf "$gopath"
}

install_java_netty() {
    # No Maven Central here: Debian's Netty jars (/usr/share/java), compiled with javac.
    local packages=(libnetty-java)
    command -v javac >/dev/null || packages+=(default-jdk-headless)
    apt_install "${packages[@]}"
    local class=java-netty/build/classes/EchoServer.class
    if [[ $class -nt java-netty/src/EchoServer.java ]]; then
        return 0
    fi
    local classpath="" jar
    for jar in common buffer transport resolver codec codec-http handler; do
        classpath+=":/usr/share/java/netty-$jar.jar"
    done
    javac -d java-netty/build/classes -cp "${classpath#:}" java-netty/src/EchoServer.java
}

install_rust_fastwebsockets() {
    # Its own workspace and target/; cargo itself skips the build when nothing changed.
    (cd rust-fastwebsockets && cargo build --release --locked --quiet)
}

peers=("$@")
((${#peers[@]})) || peers=("${ALL_PEERS[@]}")
for peer in "${peers[@]}"; do
    case $peer in
        node-ws | python-websockets | go-gorilla | java-netty | rust-fastwebsockets) ;;
        *) say "unknown peer '$peer' (known: ${ALL_PEERS[*]})"; exit 2 ;;
    esac
done
for peer in "${peers[@]}"; do
    start=$SECONDS
    "install_${peer//-/_}"
    say "$peer ready ($((SECONDS - start)) s)"
done
