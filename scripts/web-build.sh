#!/usr/bin/env bash
# Builds cellgate's browser client into static/dist/ (embedded into the
# binary by package static). Idempotent: npm ci runs only when
# package-lock.json changed since the last install; the bundle is rebuilt
# (in well under a second) and files are rewritten only when they change.
set -euo pipefail
cd "$(dirname "$0")/../static"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "web-build: node and npm are needed (Debian: apt-get install nodejs npm)" >&2
  exit 1
fi

stamp=node_modules/.cellgate-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "web-build: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" >"$stamp"
fi

node build.mjs
