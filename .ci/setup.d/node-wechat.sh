#!/usr/bin/env bash
# Node packages of the WeChat Mini Program example's test harness (the `ws` package,
# pinned in example/wechat-miniprogram/test/package-lock.json). Idempotent: `npm ci`
# reinstalls exactly the locked versions. Needs node and npm (Debian's nodejs/npm).
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v npm >/dev/null 2>&1; then
    echo "npm not found: installing Debian's nodejs and npm"
    apt-get update -qq && apt-get install -y -qq nodejs npm
fi
npm ci --prefix example/wechat-miniprogram/test --no-audit --no-fund
