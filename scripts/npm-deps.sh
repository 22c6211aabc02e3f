#!/usr/bin/env bash
# Installs the npm packages the Go tests drive (gateway/testdata/jupyterlab:
# the unchanged @jupyterlab/services and ws; gateway/testdata/sockjs: the
# unchanged sockjs-client), idempotently: `npm ci` runs
# only when node_modules is missing or older than package-lock.json.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dirs=(gateway/testdata/jupyterlab gateway/testdata/sockjs)

for rel in "${dirs[@]}"; do
  dir=$root/$rel
  # Written after a successful `npm ci`, so an interrupted install is redone.
  stamp=$dir/node_modules/.cellgate-npm-ci
  if [ -f "$stamp" ] && [ ! "$dir/package-lock.json" -nt "$stamp" ]; then
    continue
  fi
  if ! command -v npm >/dev/null 2>&1; then
    echo "npm-deps: npm not found; install Node.js >= 20 with npm (Debian: apt-get install nodejs npm)" >&2
    exit 1
  fi
  echo "npm-deps: npm ci in $rel"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  touch "$stamp"
done
