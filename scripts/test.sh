#!/usr/bin/env bash
# Everything CI runs, in order. `scripts/test.sh lint` runs only the static checks.
# Each test suite starts the real services it needs itself (redis-server, moto server,
# HAProxy, chat processes, Chromium) on 127.0.0.1 and stops them afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export ANSIBLE_CONFIG="$PWD/ansible.cfg"
# No test reads stdin, and Ansible refuses a non-blocking one (an inherited pipe).
exec </dev/null

lint() {
  echo "== ruff"; ruff check chat loadgen plugins tests bench
  echo "== mypy"; mypy chat loadgen plugins
  echo "== ansible-lint (production profile)"; ansible-lint --profile production --offline
  echo "== ansible-test sanity"; bash scripts/sanity.sh
  echo "== actionlint"; actionlint
}

if [ "${1:-}" = "lint" ]; then lint; exit 0; fi

lint
echo "== pytest"
python -m pytest -p no:cacheprovider --durations=30 "$@"

# The local target as molecule sees it (converge, idempotence, verify, cleanup). It uses
# the fixed local-stack ports and /var/lib/canary-chat, so it runs after pytest (whose e2e
# module tears its own stack down) and only as root, like the e2e tests.
if [ "$(id -u)" -eq 0 ] && [ "$#" -eq 0 ]; then
  echo "== molecule (local target)"
  molecule test -s local </dev/null
fi

# The AWS target as molecule sees it, against an emulator its prepare step starts on a free
# port (no fixed ports, no root needed).
if [ "$#" -eq 0 ]; then
  echo "== molecule (AWS target on the emulator)"
  # a previous run's state would make molecule skip prepare (the emulator's start)
  molecule reset -s aws </dev/null
  molecule test -s aws </dev/null
fi
