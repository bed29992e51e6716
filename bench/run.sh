#!/usr/bin/env bash
# Side-by-side benchmark of the chat's fan-out against Socket.IO 4.8 (see docs/benchmarks.md).
#   bash bench/run.sh            full sitting, A B A B, about 10 min
#   bash bench/run.sh --quick    one round each, 2-4 min
# Installs the peer from bench/peer/package-lock.json on first use (npm ci).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python bench/bench.py "$@"
