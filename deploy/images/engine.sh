# Sourced by the image scripts: pick the container engine and set it up for this machine.
# ENGINE=docker|podman forces one; otherwise a working Docker engine is used, else podman,
# which is installed from Debian's packages (with runc and debootstrap) when it is missing
# and we are root. Podman runs with deploy/images/containers.conf (host networking, cgroupfs,
# no default ulimits) unless CONTAINERS_CONF is already set.
IMAGES_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$IMAGES_DIR/containers.conf}

install_podman() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "no container engine: install podman, runc and debootstrap (or Docker)" >&2
    return 1
  fi
  echo "installing podman, runc and debootstrap from Debian's packages ..." >&2
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      podman runc debootstrap uidmap; } >/var/tmp/gridledger-apt.log 2>&1 \
    || { tail -20 /var/tmp/gridledger-apt.log >&2; return 1; }
}

pick_engine() {
  if [ -n "${ENGINE:-}" ]; then
    command -v "$ENGINE" >/dev/null || { [ "$ENGINE" = podman ] && install_podman; }
  elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    ENGINE=docker
  else
    command -v podman >/dev/null && command -v runc >/dev/null || install_podman
    ENGINE=podman
  fi
  export ENGINE
}
