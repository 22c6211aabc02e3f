#!/usr/bin/env bash
# Installs what cellgate needs on Debian, idempotently: apt-get runs only
# when a package is missing, and apt-get update only then.
set -euo pipefail

packages=(
  libzmq3-dev pkg-config
  python3-ipykernel python3-ipywidgets python3-matplotlib python3-numpy
  sagemath-jupyter
  bubblewrap util-linux procps catatonit
  chromium
  python3-jupyter-server
  haproxy
  postgresql
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps: missing Debian packages and not root; run: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
