#!/usr/bin/env bash
# Build the ringfs container image as an OCI archive, without Docker, from binaries that
# cargo already built:
#
#   build-ringfs-image.sh [--tag NAME:TAG] [--bin-dir DIR] [--import] [OUT.tar]
#
# The image holds the ringfs binaries found in DIR (every one of ringfs, ringfs-node,
# ringfs-operator, ringfs-csi, crdgen that exists), the shared libraries they link (ldd),
# fusermount3 and mount.fuse3 from Debian's fuse3, and a static busybox as /bin/sh with its
# applets (for exec probes and debugging).
# DIR: --bin-dir, else $RINGFS_BIN_DIR, else ${CARGO_TARGET_DIR:-target}/debug when it
# holds ringfs-node (the CI build: `cargo build -p ringfs-node -p ringfs-cli`), else
# ${CARGO_TARGET_DIR:-target}/release; a relative CARGO_TARGET_DIR is taken relative to
# the workspace root.
# No entrypoint: a pod names the binary, e.g. command: [ringfs-node, ...].
# Default tag: ringfs:dev (containerd name docker.io/library/ringfs:dev).
# Default OUT: ${RINGFS_E2E_CACHE:-~/.cache/ringfs-e2e}/images/ringfs.tar.
# --import also imports it into the running e2e cluster (e2e/cluster import).
#
# e2e/images/Dockerfile builds the same image for people who have Docker.
set -euo pipefail

IMG_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
E2E_DIR="$(dirname "$IMG_DIR")"
REPO="$(dirname "$E2E_DIR")"
CACHE="${RINGFS_E2E_CACHE:-$HOME/.cache/ringfs-e2e}"
tag=ringfs:dev
bin_dir="${RINGFS_BIN_DIR:-}"
import=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --bin-dir) bin_dir="$2"; shift 2 ;;
    --import) import=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    -*) echo "build-ringfs-image.sh: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
out="${1:-$CACHE/images/ringfs.tar}"
if [ -z "$bin_dir" ]; then
  target="${CARGO_TARGET_DIR:-target}"
  case "$target" in /*) ;; *) target="$REPO/$target" ;; esac
  bin_dir="$target/release"
  [ -x "$target/debug/ringfs-node" ] && bin_dir="$target/debug"
fi
echo "build-ringfs-image.sh: binaries from $bin_dir" >&2

bins=()
for b in ringfs ringfs-node ringfs-operator ringfs-csi crdgen; do
  [ -x "$bin_dir/$b" ] && bins+=("$bin_dir/$b")
done
[ ${#bins[@]} -gt 0 ] || { echo "build-ringfs-image.sh: no ringfs binaries in $bin_dir (cargo build -p ringfs-node -p ringfs-cli? or set RINGFS_BIN_DIR)" >&2; exit 1; }
[ -x /bin/busybox ] || { echo "build-ringfs-image.sh: needs busybox-static" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
fuse=()
[ -x /bin/fusermount3 ] && fuse+=(/bin/fusermount3)
[ -x /sbin/mount.fuse3 ] && fuse+=(--dest /sbin /sbin/mount.fuse3)
[ ${#fuse[@]} -gt 0 ] || echo "build-ringfs-image.sh: warning: fuse3 is not installed; no fusermount3 in the image" >&2
"$IMG_DIR/mkrootfs.sh" "$root" "${bins[@]}" --dest /bin /bin/busybox "${fuse[@]}"
for a in $(/bin/busybox --list); do
  [ -e "$root/bin/$a" ] || ln -s busybox "$root/bin/$a"
done
"$IMG_DIR/build-oci.sh" --env RUST_LOG=info "$tag" "$root" "$out"
if [ "$import" = 1 ]; then
  "$E2E_DIR/cluster" import "$out"
fi
