#!/usr/bin/env bash
# The quickstart: set up (venv, pinned torch, Azurite), then load a generated ~1 GiB checkpoint
# from Azurite through a cachenode node, cold then warm, and print the load-time table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash bench/setup.sh
exec .venv/bin/cachebench quickstart "$@"
