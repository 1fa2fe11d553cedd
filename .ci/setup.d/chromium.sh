#!/usr/bin/env bash
# Debian's Chromium for the web demo test (test/test_web_demo.py), at /usr/bin/chromium.
# Playwright drives it with executable_path="/usr/bin/chromium"; never download a browser.
# Idempotent: does nothing when Chromium is already installed.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y chromium
