#!/usr/bin/env bash
# Installs what building Coffer needs and a fresh Debian machine of ours lacks, and points
# cargo at one shared target dir. Sourced by scripts/dev and .ci/run; safe to run again.
#
# RocksDB's Rust bindings are generated with libclang at build time; its C++ library takes
# most of the first build (20-30 minutes on two cores). Every checkout on the machine shares
# one target dir so that it is built once.
set -euo pipefail

if ! dpkg -s libclang-dev >/dev/null 2>&1; then
  echo "setup: installing libclang-dev (needed to build RocksDB's bindings)" >&2
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev >/dev/null
  else
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev >/dev/null
  fi
fi

# The fault harness's hosts are network namespaces joined by a bridge, cut with iptables.
if ! command -v ip >/dev/null 2>&1 || ! command -v iptables >/dev/null 2>&1; then
  echo "setup: installing iproute2 and iptables (the fault harness's network)" >&2
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 iptables >/dev/null
  else
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 iptables >/dev/null
  fi
fi

# The Docker-compatible API is tested with the real docker CLI (no engine needed for that).
if ! command -v docker >/dev/null 2>&1; then
  echo "setup: installing the docker CLI (the Docker-compatible API's tests run it)" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-cli >/dev/null 2>&1 \
    || $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi

# The workers' container runtime is tested on the local engine (tests/tests/it/runtime.rs)
# with an image made from Debian's static busybox: no registry is reachable.
if ! dpkg -s busybox-static >/dev/null 2>&1; then
  echo "setup: installing busybox-static (the container runtime's test image)" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
fi

# deploy/compose.yaml is tested on the local engine (tests/tests/it/compose.rs) with
# docker-compose; deploy/build-image.sh makes its example app's image from the busybox above.
if ! command -v docker-compose >/dev/null 2>&1; then
  echo "setup: installing docker-compose (deploy/compose.yaml's test)" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/coffer/target}"
mkdir -p "$CARGO_TARGET_DIR"
