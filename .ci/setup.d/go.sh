#!/usr/bin/env bash
# Debian's Go toolchain and gorilla/websocket source, for test/test_go_client.py (which
# builds example/websocket/go/main.go offline). Idempotent; no Go module proxy is used:
# Debian installs the library's source under /usr/share/gocode/src, and the test builds
# with GO111MODULE=off and GOPATH=/usr/share/gocode (classic GOPATH mode).
set -euo pipefail

GORILLA_SRC=/usr/share/gocode/src/github.com/gorilla/websocket

if command -v go >/dev/null 2>&1 && [ -d "$GORILLA_SRC" ]; then
    echo "go already installed: $(go version); gorilla/websocket in $GORILLA_SRC"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
# Wait for the apt/dpkg lock (other setup scripts may be running) instead of failing.
$SUDO apt-get -o DPkg::Lock::Timeout=900 update
$SUDO apt-get -o DPkg::Lock::Timeout=900 install -y --no-install-recommends \
    golang-go golang-github-gorilla-websocket-dev

go version
ls -d "$GORILLA_SRC"
