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

# A subset (pytest arguments given): the static checks, then those tests.
if [ "$#" -gt 0 ]; then
  lint
  echo "== pytest"
  exec python -m pytest -p no:cacheprovider "$@"
fi

echo "== pytest ($(date -u +%T))"
python -m pytest -p no:cacheprovider --durations=30

# Then three jobs side by side, each with its own log printed whole at the end: the static
# checks, and the two targets as molecule sees them (converge, idempotence, verify,
# cleanup). They share no port and no state: the local scenario uses the fixed local-stack
# ports and /var/lib/canary-chat (so it runs after pytest, whose e2e module tears its own
# stack down, and only as root, like the e2e tests); the AWS scenario starts an emulator on
# a free port. None of them has a time limit that a shared CPU could trip (the timed suites
# all ran above, alone).
logs=$(mktemp -d)
declare -A jobs=()
job() {  # job NAME COMMAND...: run in the background, timed, into $logs/NAME
  local name=$1; shift
  (
    trap 'echo "== $name: rc $? (ended $(date -u +%T))"' EXIT
    echo "== $name (started $(date -u +%T))"
    "$@"  # errexit holds in here: the first failing check ends the job
  ) >"$logs/$name" 2>&1 &
  jobs[$name]=$!
}
molecule_aws() {
  # a previous run's state would make molecule skip prepare (the emulator's start)
  molecule reset -s aws && molecule test -s aws
}
job lint lint
[ "$(id -u)" -eq 0 ] && job "molecule (local target)" molecule test -s local
job "molecule (AWS target on the emulator)" molecule_aws
failed=()
for name in lint "molecule (local target)" "molecule (AWS target on the emulator)"; do
  [ -n "${jobs[$name]:-}" ] || continue
  wait "${jobs[$name]}" || failed+=("$name")
  cat "$logs/$name"
done
rm -rf "$logs"
if [ "${#failed[@]}" -gt 0 ]; then
  printf 'failed: %s\n' "${failed[@]}"
  exit 1
fi
echo "== all passed ($(date -u +%T))"
