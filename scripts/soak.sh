#!/usr/bin/env bash
# The full soak of issue 5 (scenario 7): 100 users at 20 msgs/s through HAProxy for 30
# minutes on a private stack (redis-server, moto server, chat blue + green, HAProxy, all on
# free ports), printing each chat process's RSS every minute and the final figures
# (sent, acked, lost, duplicated, out of order, start/end RSS). CI runs the same test for
# two minutes (SOAK_SECONDS=120, the default of tests/faults/test_soak.py).
#
#   scripts/soak.sh            # 30 minutes
#   SOAK_SECONDS=600 scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export SOAK_SECONDS="${SOAK_SECONDS:-1800}" SOAK_SAMPLE="${SOAK_SAMPLE:-60}"
export FAULTS_RESULTS="${FAULTS_RESULTS:-soak-results.jsonl}"
exec .venv/bin/python -m pytest -p no:cacheprovider -s -q tests/faults/test_soak.py
