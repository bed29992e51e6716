#!/usr/bin/env bash
# ansible-test needs the collection at ansible_collections/<ns>/<name>: copy the tracked
# collection files there and run the sanity tests on our plugins with the venv's Python.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
dest="$work/ansible_collections/canarychat/platform"
mkdir -p "$dest"
git ls-files -z galaxy.yml meta plugins tests/sanity | xargs -0 cp --parents -t "$dest"
cd "$dest"
git init -q && git add -A
"$root/.venv/bin/ansible-test" sanity --python 3.11 --color no plugins/
