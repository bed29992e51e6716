#!/usr/bin/env bash
# One-time set-up of a fresh Debian/Ubuntu machine for canary-chat: system packages,
# the project's virtualenv with every pinned Python dependency. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# System packages: Python venv support, the real components the stack and the tests use.
# buildah and debootstrap: the image test (tests/image, scripts/image.sh) builds and runs
# chat/Dockerfile without a Docker engine or a registry.
APT_PACKAGES=(python3 python3-venv python3-pip redis-server haproxy chromium git make curl procps
  buildah debootstrap shellcheck)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

# Debian's packages may start redis/haproxy through init scripts; the stack and the tests
# run their own supervised copies, so the distribution's are stopped.
for svc in redis-server haproxy; do
  if command -v service >/dev/null 2>&1; then $SUDO service "$svc" stop >/dev/null 2>&1 || true; fi
done

# The local stack runs the venv's python as unprivileged users (docs/security.md, "Local
# stack"): a venv made from an interpreter they cannot execute (pyenv's under /root, 0700)
# would not start. The distribution's python3 (installed above) is the default.
if [ -x /usr/bin/python3 ]; then PY="${PYTHON:-/usr/bin/python3}"; else PY="${PYTHON:-python3}"; fi
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
echo "setup: ok ($(.venv/bin/python --version), $(.venv/bin/ansible --version | sed -n 1p))"
