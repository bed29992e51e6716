#!/usr/bin/env bash
# ansible-test sanity for every plugin of the collection (modules and module_utils; new
# modules are picked up as they are added under plugins/).
#
# ansible-test needs the collection at ansible_collections/<ns>/<name>: the
# collection files are copied there, next to the collections we depend on (amazon.aws,
# community.aws, ... as the PyPI `ansible` package ships them), and the sanity tests run
# with the venv's Python. Each sanity test installs its pinned requirements from PyPI into
# its own virtual environment under ~/.ansible/test/venv (cached after the first run).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
py="$root/.venv/bin/python"
pyver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

# ansible-test bootstraps pip in those virtual environments with a get-pip script that it
# downloads from ci-files.testing.ansible.com, a host that offline-ish machines (behind a
# PyPI mirror only) cannot reach. When that script is not cached, cache a stand-in that
# does the same from Python's own ensurepip plus the configured package index.
pip_version="$("$py" - <<'PY'
import inspect, re
from ansible_test._internal import python_requirements as pr
print(re.search(r"pip='([^']+)'", inspect.getsource(pr.get_venv_packages)).group(1))
PY
)"
cache="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
if [ ! -s "$cache" ]; then
  mkdir -p "$(dirname "$cache")"
  cat >"$cache.tmp" <<'PY'
"""Stand-in for pypa's get-pip.py, cached by canary-chat's scripts/sanity.sh: install pip
with ensurepip, then `pip install` the requested packages from the configured index."""
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
subprocess.check_call([sys.executable, "-m", "pip", "install", "--upgrade"] + args)
PY
  mv "$cache.tmp" "$cache"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
dest="$work/ansible_collections/canarychat/platform"
mkdir -p "$dest"
# Tracked files and new ones not yet added (but not ignored ones), so a module can be
# checked before its first commit.
git ls-files -z --cached --others --exclude-standard galaxy.yml meta plugins tests/sanity README.md |
  while IFS= read -r -d '' f; do
    if [ -e "$f" ]; then cp --parents "$f" "$dest"; fi  # skip files deleted, not committed
  done
# Collections we import from (module_utils of amazon.aws, ...), beside ours.
site="$("$py" -c 'import ansible_collections, os; print(os.path.dirname(ansible_collections.__file__) if ansible_collections.__file__ else list(ansible_collections.__path__)[0])')"
for coll in "$site"/*/*/galaxy.yml "$site"/*/*/MANIFEST.json; do
  [ -e "$coll" ] || continue
  dir="$(dirname "$coll")"
  name="$(basename "$dir")"
  ns="$(basename "$(dirname "$dir")")"
  [ "$ns" = "canarychat" ] && continue
  [ -e "$work/ansible_collections/$ns/$name" ] && continue
  mkdir -p "$work/ansible_collections/$ns"
  ln -s "$dir" "$work/ansible_collections/$ns/$name"
done
# The collection is Apache-2.0 (galaxy.yml), not GPLv3: validate-modules' license-header
# check (meant for ansible-core's own modules) is ignored for every module, and only that.
core="$("$py" -c 'from ansible.release import __version__ as v; print(".".join(v.split(".")[:2]))')"
ignore="$dest/tests/sanity/ignore-$core.txt"
mkdir -p "$(dirname "$ignore")"
touch "$ignore"
for module in $(cd "$dest" && ls plugins/modules/*.py 2>/dev/null); do
  grep -q "^$module validate-modules:missing-gplv3-license" "$ignore" ||
    echo "$module validate-modules:missing-gplv3-license # Apache-2.0 collection (galaxy.yml)" >>"$ignore"
done
cd "$dest"
git init -q && git add -A
"$root/.venv/bin/ansible-test" sanity --python "$pyver" --color no --requirements "$@" plugins/
