#!/usr/bin/env bash
# Debian's nginx, for test/test_nginx.py (which starts its own nginx on loopback with
# docker/nginx.conf). Idempotent; the system service is neither enabled nor started.
set -euo pipefail

if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
    echo "nginx already installed: $(/usr/sbin/nginx -v 2>&1 || nginx -v 2>&1)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

# Keep the package's postinst from starting the service (policy-rc.d answering 101
# "action forbidden"), unless a policy is already in place.
POLICY=/usr/sbin/policy-rc.d
OWN_POLICY=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod +x "$POLICY"
    OWN_POLICY=1
fi
cleanup() { if [ "$OWN_POLICY" = 1 ]; then $SUDO rm -f "$POLICY"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get -o DPkg::Lock::Timeout=900 update
$SUDO apt-get -o DPkg::Lock::Timeout=900 install -y --no-install-recommends nginx-light \
    || $SUDO apt-get -o DPkg::Lock::Timeout=900 install -y --no-install-recommends nginx

# Not a service here: tests run their own nginx with a temporary prefix.
if command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable nginx >/dev/null 2>&1 || true
fi
/usr/sbin/nginx -v
