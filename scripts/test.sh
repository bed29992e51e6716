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

# Without arguments, everything CI runs: two lanes at once (2 cores: much of a suite's time
# is waiting on playbooks, bakes and emulators, not CPU), then the load suites alone.
# - lane A, at normal priority: the suites on the local stack's fixed ports and
#   /var/lib/canary-chat (e2e, then molecule local, one after the other), the browser
#   tests and the chat's integration tests.
# - lane B, at nice 10 so lane A sees an idle machine: the static checks, then the suites
#   that assert no timing (unit, pipeline, image, and the files that drive Ansible against
#   the emulator on free ports), then molecule on the AWS target.
# - then, alone: the fault and fuzz suites (1,000-client storms, a slow consumer among 500,
#   the soak), whose figures need the whole machine.
# A new test file goes to lane A unless listed below.
LANE_B=(tests/unit tests/pipeline tests/image
  tests/integration/test_aws_site.py tests/integration/test_aws_modules_emulator.py
  tests/integration/test_traffic_shift_elbv2.py tests/integration/test_deploy_input.py
  tests/integration/test_collection_package.py)
ALONE=(tests/faults tests/fuzz)
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
export PYTHONUNBUFFERED=1

lane_a() {
  echo "== pytest, lane A ($(date -u +%T))"
  local ignore=()
  for path in "${LANE_B[@]}" "${ALONE[@]}"; do ignore+=("--ignore=$path"); done
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
  # a longer hang guard than the default 300 s per test: this lane yields the CPU
  python -m pytest -p no:cacheprovider --durations=20 --basetemp="$tmp/b" -o timeout=900 \
    "${LANE_B[@]}"
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
if [ "$rc" -ne 0 ]; then exit "$rc"; fi
echo "== pytest, the load suites alone ($(date -u +%T))"
python -m pytest -p no:cacheprovider --durations=20 --basetemp="$tmp/c" "${ALONE[@]}"
echo "== all done $(date -u +%T)"
