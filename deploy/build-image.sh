#!/usr/bin/env bash
# Builds Coffer's container images from this workspace, without a registry (nothing is
# pulled, ever):
#
#   coffer:latest          FROM scratch: the `coffer` binary, exactly the shared libraries
#                          `ldd` lists for it and the dynamic loader, /etc/passwd, /etc/group,
#                          /etc/nsswitch.conf, /tmp. No shell. (deploy/Dockerfile)
#   coffer-toolbox:latest  Debian's static busybox, made with `docker import`: the example
#                          app of deploy/compose.yaml runs on it, and it lends the nodes a
#                          shell for their start-up script (the coffer image has none).
#
#   deploy/build-image.sh                               # cargo build --release, then both
#   COFFER_BINARY=path/to/coffer deploy/build-image.sh  # package a binary already built
#   COFFER_IMAGE=coffer:dev COFFER_TOOLBOX_IMAGE=coffer-toolbox:dev deploy/build-image.sh
#
# COFFER_BUSYBOX names a static busybox (default /bin/busybox: apt-get install busybox-static).
set -euo pipefail
umask 022

here=$(cd "$(dirname "$0")" && pwd)
workspace=$(dirname "$here")
image=${COFFER_IMAGE:-coffer:latest}
toolbox=${COFFER_TOOLBOX_IMAGE:-coffer-toolbox:latest}
busybox=${COFFER_BUSYBOX:-/bin/busybox}
binary=${COFFER_BINARY:-}

die() { echo "build-image: $*" >&2; exit 1; }

command -v docker >/dev/null 2>&1 || die "no docker CLI (scripts/setup.sh installs it)"
[ -x "$busybox" ] || die "no busybox at $busybox: apt-get install busybox-static (or set COFFER_BUSYBOX)"
if ldd "$busybox" >/dev/null 2>&1; then
  die "$busybox is linked dynamically; the toolbox image needs a static one (apt-get install busybox-static)"
fi

if [ -z "$binary" ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/coffer/target}"
  (cd "$workspace" && cargo build --release -p coffer-node --bin coffer)
  binary=$CARGO_TARGET_DIR/release/coffer
fi
[ -x "$binary" ] || die "$binary is not an executable"

stage=$(mktemp -d "${TMPDIR:-/tmp}/coffer-image.XXXXXX")
trap 'rm -rf "$stage"' EXIT

# --- coffer: the binary, its libraries and loader, a few files of /etc ---------------------
root=$stage/rootfs
install -d -m 0755 "$root/usr/local/bin" "$root/etc"
install -d -m 1777 "$root/tmp"
install -d -m 0700 "$stage/data"
# Debug info makes a test build's binary several times larger; symbols stay for backtraces.
if command -v strip >/dev/null 2>&1; then
  strip --strip-debug -o "$root/usr/local/bin/coffer" "$binary"
  chmod 0755 "$root/usr/local/bin/coffer"
else
  install -m 0755 "$binary" "$root/usr/local/bin/coffer"
fi

# `ldd` prints `libfoo.so.1 => /path (0x...)` per library, the loader as `/path (0x...)`,
# and the vDSO without a path (the kernel provides it).
libs=()
while read -r first arrow target _; do
  if [ "$arrow" = "=>" ]; then
    case "$target" in
      /*) libs+=("$target") ;;
      *) die "ldd: $first not found for $binary" ;;
    esac
  elif [[ "$first" == /* ]]; then
    libs+=("$first")
  fi
done < <(ldd "$binary" 2>/dev/null || true)
for lib in "${libs[@]}"; do
  install -d -m 0755 "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib" # the file a link names, under the name ldd printed; its mode kept
done
echo "build-image: coffer with ${#libs[@]} shared objects: ${libs[*]:-none (static)}" >&2

cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
coffer:x:10001:10001:coffer:/var/lib/coffer:/sbin/nologin
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
coffer:x:10001:
EOF
cat >"$root/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
hosts: files dns
EOF

docker build --quiet --tag "$image" --file "$here/Dockerfile" "$stage" >/dev/null
echo "build-image: built $image" >&2

# --- the toolbox: busybox, and a link per applet ------------------------------------------
tb=$stage/toolbox
install -d -m 0755 "$tb/bin" "$tb/etc"
install -d -m 1777 "$tb/tmp"
install -m 0755 "$busybox" "$tb/bin/busybox"
# Relative links: the nodes see this directory as a volume mounted elsewhere (/opt/tools).
for applet in $("$tb/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$tb/bin/$applet"
done
cat >"$tb/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/tmp:/bin/sh
EOF
cat >"$tb/etc/group" <<'EOF'
root:x:0:
app:x:1000:
EOF
tar --numeric-owner --owner=0 --group=0 -C "$tb" -cf - . |
  docker import --change 'ENV PATH=/bin' --change 'CMD ["/bin/sh"]' - "$toolbox" >/dev/null
echo "build-image: built $toolbox" >&2
