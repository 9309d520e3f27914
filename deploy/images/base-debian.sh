#!/usr/bin/env bash
# Make the image BASE_TAG (default localhost/gridledger-base:bookworm-py3.11), an offline
# stand-in for python:3.11-slim-bookworm, from Debian 12 packages with debootstrap: Debian's
# python3.11 with venv/pip, and `python`/`python3` in /usr/local/bin as in the official image.
# Used when the official image cannot be pulled. Kept in the engine's image store, so it is
# made once per machine. The Debian mirror is the one apt on this machine uses.
set -euo pipefail
ENGINE=${ENGINE:?set ENGINE to podman or docker}
BASE_TAG=${BASE_TAG:-localhost/gridledger-base:bookworm-py3.11}
SUITE=bookworm

if "$ENGINE" image inspect "$BASE_TAG" >/dev/null 2>&1; then
  echo "base image $BASE_TAG already present"; exit 0
fi
command -v debootstrap >/dev/null || {
  echo "debootstrap is missing: apt-get install debootstrap (as root)" >&2; exit 1; }

mirror() {  # the first Debian (non-security) mirror apt is configured with
  local uri
  uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' \
        | grep -v -e security -e nodesource -e google | head -n1 || true)
  [ -n "$uri" ] || uri=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' \
        | grep -v security | head -n1 || true)
  [ -n "$uri" ] || { echo "no Debian mirror found in apt's sources" >&2; exit 1; }
  echo "$uri"
}

ROOTFS=$(mktemp -d /var/tmp/gridledger-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
echo "making $BASE_TAG offline from Debian $SUITE packages (debootstrap) ..."
debootstrap --variant=minbase \
  --include=python3.11,python3.11-venv,python3-distutils,ca-certificates,tzdata \
  "$SUITE" "$ROOTFS" "$(mirror)" >/var/tmp/gridledger-debootstrap.log 2>&1 || {
  tail -20 /var/tmp/gridledger-debootstrap.log >&2; exit 1; }
# As in the official image: `python` and `python3` on the PATH under /usr/local/bin.
ln -sf /usr/bin/python3.11 "$ROOTFS/usr/local/bin/python"
ln -sf /usr/bin/python3.11 "$ROOTFS/usr/local/bin/python3"
# Nothing of apt's caches or logs in the image.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
       "$ROOTFS"/var/log/* "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/*
tar --numeric-owner -C "$ROOTFS" -c . | "$ENGINE" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE_TAG" \
  >/var/tmp/gridledger-import.log 2>&1 || { cat /var/tmp/gridledger-import.log >&2; exit 1; }
echo "base image $BASE_TAG made from Debian $SUITE (python3.11 $(chroot "$ROOTFS" python3.11 -c 'import platform; print(platform.python_version())'))"
