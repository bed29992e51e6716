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

# With arguments: the static checks, then pytest on what was asked (one process).
if [ "$#" -gt 0 ]; then
  lint
  echo "== pytest"
  exec python -m pytest -p no:cacheprovider --durations=30 "$@"
fi

# Without arguments, everything CI runs, in two lanes at once (2 cores: much of a suite's
# time is waiting on playbooks, bakes and emulators, not CPU):
# - lane A, at normal priority: every suite that measures time or load (faults, e2e,
#   browser, fuzz, the chat's integration tests), then molecule on the local target. e2e
#   and molecule local use the fixed local-stack ports and /var/lib/canary-chat, so they
#   stay in this one lane, one after the other.
# - lane B, at nice 10 so lane A's timings see an idle machine: the static checks, then the
#   suites that assert no timing (unit, pipeline, image, and the integration files that
#   drive Ansible against the emulator on free ports), then molecule on the AWS target.
# A new test file goes to lane A unless listed here.
LANE_B=(tests/unit tests/pipeline tests/image
  tests/integration/test_aws_site.py tests/integration/test_aws_modules_emulator.py
  tests/integration/test_traffic_shift_elbv2.py tests/integration/test_deploy_input.py
  tests/integration/test_collection_package.py)
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
export PYTHONUNBUFFERED=1

lane_a() {
  echo "== pytest, lane A ($(date -u +%T))"
  local ignore=()
  for path in "${LANE_B[@]}"; do ignore+=("--ignore=$path"); done
  python -m pytest -p no:cacheprovider --durations=20 --basetemp="$tmp/a" "${ignore[@]}" tests
  # The local target as molecule sees it (converge, idempotence, verify, cleanup): fixed
  # ports and /var/lib/canary-chat, so after lane A's pytest (whose e2e module tears its
  # own stack down), and only as root, like the e2e tests.
  if [ "$(id -u)" -eq 0 ]; then
    echo "== molecule (local target) ($(date -u +%T))"
    molecule test -s local </dev/null
  fi
  echo "== lane A done ($(date -u +%T))"
}

lane_b() {
  renice -n 10 -p "$BASHPID" >/dev/null
  lint
  echo "== pytest, lane B ($(date -u +%T))"
  python -m pytest -p no:cacheprovider --durations=20 --basetemp="$tmp/b" "${LANE_B[@]}"
  # The AWS target as molecule sees it, against an emulator its prepare step starts on a
  # free port (no fixed ports, no root needed). A previous run's state would make molecule
  # skip prepare (the emulator's start).
  echo "== molecule (AWS target on the emulator) ($(date -u +%T))"
  molecule reset -s aws </dev/null
  molecule test -s aws </dev/null
  echo "== lane B done ($(date -u +%T))"
}

# Each lane's lines carry its letter; a lane stops at its first failure, the other goes on.
run_lane() {
  set -o pipefail
  case "$1" in
    A) lane_a ;;
    B) lane_b ;;
  esac 2>&1 | sed -u "s/^/[$1] /"
}
echo "== two lanes from $(date -u +%T)"
run_lane A & lane_a_pid=$!
run_lane B & lane_b_pid=$!
rc=0
wait "$lane_a_pid" || { echo "== lane A FAILED"; rc=1; }
wait "$lane_b_pid" || { echo "== lane B FAILED"; rc=1; }
echo "== both lanes ended $(date -u +%T), rc $rc"
exit "$rc"
