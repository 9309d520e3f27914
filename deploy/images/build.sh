#!/usr/bin/env bash
# `make images`: build gridledger/<role>:$TAG for every role from the one Dockerfile, with
# docker or podman (deploy/images/engine.sh). The base is BASE_IMAGE if given, else the
# official python:3.11-slim-bookworm if it is present or can be pulled, else an equivalent
# Debian 12 + python3.11 base made offline with debootstrap (base-debian.sh), and the script
# says which. Dependencies come from build/wheelhouse (wheelhouse.sh). Both the base and the
# wheels are cached, and the role images share every layer but the last, so a rebuild after a
# code change takes seconds.
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/images/engine.sh
pick_engine
TAG=${TAG:-dev}
ROLES=${ROLES:-orderer committer endorser meter-agent}
OFFICIAL=docker.io/library/python:3.11-slim-bookworm

if [ -z "${BASE_IMAGE:-}" ]; then
  if "$ENGINE" image inspect "$OFFICIAL" >/dev/null 2>&1 \
     || timeout 300 "$ENGINE" pull -q "$OFFICIAL" >/dev/null 2>&1; then
    BASE_IMAGE=$OFFICIAL
  else
    BASE_IMAGE=localhost/gridledger-base:bookworm-py3.11
    echo "note: $OFFICIAL cannot be pulled here; using $BASE_IMAGE, an equivalent" \
         "Debian 12 + python3.11 base made offline from Debian packages (debootstrap)"
    command -v debootstrap >/dev/null || install_podman
    BASE_TAG=$BASE_IMAGE deploy/images/base-debian.sh
  fi
fi
deploy/images/wheelhouse.sh

network=()
[ "$ENGINE" = podman ] && network=(--network host)  # no CNI set up here; the build is offline
for role in $ROLES; do
  echo "building gridledger/$role:$TAG ($ENGINE, base $BASE_IMAGE) ..."
  "$ENGINE" build "${network[@]}" --quiet -f Dockerfile --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --build-arg "ROLE=$role" -t "gridledger/$role:$TAG" . >/dev/null
done
"$ENGINE" images --filter reference='gridledger/*' --format '{{.Repository}}:{{.Tag}} {{.Size}}' \
  2>/dev/null || true
