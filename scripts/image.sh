#!/usr/bin/env bash
# Build the chat image (chat/Dockerfile) without a Docker engine or a registry, with Debian's
# buildah (chroot isolation, host network), as the image test and a person on this machine do.
#
#   scripts/image.sh base            the local stand-in for python:3.11-slim; prints its name
#   scripts/image.sh build [TAG]     the chat image on that base (TAG: canary-chat:test)
#
# The base: `debootstrap --variant=minbase` of Debian bookworm (Python 3.11) plus a `python`
# link and without pip's EXTERNALLY-MANAGED marker, imported as
# localhost/canary-chat-base:<key>, where <key> is a hash of the package list and suite below,
# so it is built once (about 40 s) and reused until that list changes. The rootfs tarball is
# also kept under $CANARY_IMAGE_CACHE (default ~/.cache/canary-chat/image), outside the
# checkout, so a CI job can cache it between runs.
#
# pip inside the build reaches the package index through this machine's TLS egress, whose CA
# is the host's bundle: it is mounted read-only into the build (and nothing of it stays in a
# layer). The format is Docker's (v2s2): OCI has no HEALTHCHECK. With Docker and a registry, `docker build -f chat/Dockerfile .` needs none of this.
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES=python3,python3-venv,python3-pip,ca-certificates
KEY="$(printf '%s %s %s' "$SUITE" "$PACKAGES" v1 | sha256sum | cut -c1-12)"
BASE="localhost/canary-chat-base:$KEY"
CACHE="${CANARY_IMAGE_CACHE:-$HOME/.cache/canary-chat/image}"
CA=/etc/ssl/certs/ca-certificates.crt

need() { command -v "$1" >/dev/null 2>&1 || { echo "image.sh: $1 is not installed (scripts/setup.sh installs it)" >&2; exit 2; }; }

base() {
  need buildah
  if buildah inspect --type image "$BASE" >/dev/null 2>&1; then echo "$BASE"; return; fi
  mkdir -p "$CACHE"
  local tarball="$CACHE/base-$KEY.tar"
  if [ ! -s "$tarball" ]; then
    need debootstrap
    local root
    root="$(mktemp -d)"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >&2
    # what python:3.11-slim offers and a Debian rootfs lacks: `python`, pip allowed to install
    ln -sf python3 "$root/usr/bin/python"
    rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$tarball.tmp" .
    rm -rf "$root"
    mv "$tarball.tmp" "$tarball"
  fi
  local ctr
  ctr="$(buildah from scratch)"
  buildah add "$ctr" "$tarball" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd python3 "$ctr"
  buildah commit --rm "$ctr" "$BASE" >/dev/null
  echo "$BASE"
}

build() {
  local tag="${1:-canary-chat:test}"
  local from
  from="$(base)"
  local mount=()
  if [ -r "$CA" ]; then mount=(-v "$CA:$CA:ro"); fi
  buildah bud --isolation chroot --network host --layers --format docker \
    --build-arg "BASE_IMAGE=$from" "${mount[@]}" \
    --file chat/Dockerfile --tag "$tag" . >&2
  echo "$tag"
}

case "${1:-}" in
  base) base ;;
  build) shift; build "$@" ;;
  *) echo "usage: $0 base | build [TAG]" >&2; exit 2 ;;
esac
