#!/usr/bin/env bash
# Set up everything cachenode needs in the project folder: a venv with the pinned CPU torch and
# the package (editable, with test extras), and Azurite from npm into ./node_modules.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
quiet=(-q)
[[ "${CI:-}" == "true" ]] && quiet=()

if [[ ! -x .venv/bin/python ]]; then
  echo "== creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
# The network-namespace tests and `cachebench links|qos` need root, iproute2 (ip, tc) and iperf3
# (the QoS test's competing flow); `cachenode mount` needs fuse3 (fusermount3) and, to build
# pyfuse3, libfuse3-dev and pkg-config; `cachebench kv` compares with redis-server: installed from Debian when we are root and they are missing.
if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
  missing=()
  command -v ip >/dev/null && command -v tc >/dev/null || missing+=(iproute2)
  command -v iperf3 >/dev/null || missing+=(iperf3)
  command -v fusermount3 >/dev/null || missing+=(fuse3)
  dpkg -s libfuse3-dev >/dev/null 2>&1 || missing+=(libfuse3-dev)
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  command -v redis-server >/dev/null || missing+=(redis-server)  # `cachebench kv`'s Redis contender (~2 MB)
  if (( ${#missing[@]} )); then
    echo "== apt: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi
echo "== pip: torch 2.13.0 (CPU wheel), then cachenode and its dependencies"
.venv/bin/python -m pip install "${quiet[@]}" --upgrade pip
# Pinned first: an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -m pip install "${quiet[@]}" "torch==2.13.0"
.venv/bin/python -m pip install "${quiet[@]}" -e '.[test,bench,ucx,mount]'

echo "== npm: Azurite (Azure Blob emulator) into ./node_modules"
command -v npm >/dev/null || { echo "npm not found: install Node.js 18+ (apt-get install nodejs npm)" >&2; exit 1; }
npm ci --no-audit --no-fund --loglevel=error
echo "== setup done"
