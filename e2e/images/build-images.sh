#!/usr/bin/env bash
# Build the e2e cluster's own images as OCI archives, without Docker:
#   pause   - images/pause/pause.c compiled with gcc -static (the pod sandbox image)
#   busybox - Debian's busybox-static, with an applet symlink for every command (test pods)
#   coredns - the coredns binary from build.sh, when it has been built
#   sidecars - one image per CSI sidecar (build.sh --sidecars), when they have been built:
#             $CSI_IMAGE_PREFIX/<binary>:<version>, entrypoint /<binary>
# into ${RINGFS_E2E_CACHE:-~/.cache/ringfs-e2e}/images/<name>-<input hash>.tar; an archive whose
# inputs did not change is reused. Prints "NAME PATH" for each image.
#
# Usage: e2e/images/build-images.sh [pause] [busybox] [coredns] [sidecars]   (default: all that can be built)
set -euo pipefail

IMG_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
E2E_DIR="$(dirname "$IMG_DIR")"
# shellcheck source=../versions.env
. "$E2E_DIR/versions.env"
CACHE="${RINGFS_E2E_CACHE:-$HOME/.cache/ringfs-e2e}"
OUT="$CACHE/images"
mkdir -p "$OUT"

hash_of() { cat "$@" | sha256sum | cut -c1-16; }

pause() {
  local h tar work
  command -v gcc >/dev/null || { echo "build-images.sh: gcc is needed for the pause image" >&2; exit 1; }
  h="$(printf '%s' "$PAUSE_IMAGE" | cat - "$IMG_DIR/pause/pause.c" "$IMG_DIR/build-oci.sh" | sha256sum | cut -c1-16)"
  tar="$OUT/pause-$h.tar"
  if [ ! -f "$tar" ]; then
    work="$(mktemp -d)"
    mkdir -p "$work/rootfs"
    gcc -static -Os -s -o "$work/rootfs/pause" "$IMG_DIR/pause/pause.c"
    "$IMG_DIR/build-oci.sh" "$PAUSE_IMAGE" "$work/rootfs" "$tar" /pause >&2
    rm -rf "$work"
  fi
  echo "pause $tar"
}

busybox() {
  local bb=/bin/busybox h tar work a
  [ -x "$bb" ] && ! ldd "$bb" >/dev/null 2>&1 \
    || { echo "build-images.sh: a static /bin/busybox is needed (apt-get install busybox-static)" >&2; exit 1; }
  h="$(printf '%s' "$BUSYBOX_IMAGE" | cat - "$bb" "$IMG_DIR/build-oci.sh" "$IMG_DIR/mkrootfs.sh" | sha256sum | cut -c1-16)"
  tar="$OUT/busybox-$h.tar"
  if [ ! -f "$tar" ]; then
    work="$(mktemp -d)"
    "$IMG_DIR/mkrootfs.sh" "$work/rootfs" --dest /bin "$bb"
    for a in $("$bb" --list); do
      [ "$a" = busybox ] || ln -sf busybox "$work/rootfs/bin/$a"
    done
    mkdir -p "$work/rootfs/var/www"
    "$IMG_DIR/build-oci.sh" "$BUSYBOX_IMAGE" "$work/rootfs" "$tar" /bin/sh >&2
    rm -rf "$work"
  fi
  echo "busybox $tar"
}

coredns() {
  local bin="$CACHE/current/coredns/bin/coredns" h tar work
  [ -x "$bin" ] || { echo "build-images.sh: $bin is missing (run e2e/build.sh)" >&2; return 1; }
  h="$(printf '%s' "$COREDNS_IMAGE" | cat - "$bin" "$IMG_DIR/build-oci.sh" "$IMG_DIR/mkrootfs.sh" | sha256sum | cut -c1-16)"
  tar="$OUT/coredns-$h.tar"
  if [ ! -f "$tar" ]; then
    work="$(mktemp -d)"
    "$IMG_DIR/mkrootfs.sh" "$work/rootfs" --dest / "$bin"
    "$IMG_DIR/build-oci.sh" "$COREDNS_IMAGE" "$work/rootfs" "$tar" /coredns >&2
    rm -rf "$work"
  fi
  echo "coredns $tar"
}

# One image per CSI sidecar binary (static Go programs): localhost/ringfs-e2e/<binary>:<version>.
sidecars() {
  local dir="$CACHE/current/csi-sidecars/bin" bin name ver h tar work
  [ -d "$dir" ] || { echo "build-images.sh: $dir is missing (run e2e/build.sh --sidecars)" >&2; return 1; }
  for bin in "$dir"/*; do
    name="$(basename "$bin")"
    case "$name" in
      csi-provisioner) ver="$CSI_PROVISIONER_VERSION" ;;
      csi-attacher) ver="$CSI_ATTACHER_VERSION" ;;
      csi-resizer) ver="$CSI_RESIZER_VERSION" ;;
      *) ver="$CSI_SNAPSHOTTER_VERSION" ;;
    esac
    h="$(printf '%s' "$name:$ver" | cat - "$bin" "$IMG_DIR/build-oci.sh" "$IMG_DIR/mkrootfs.sh" | sha256sum | cut -c1-16)"
    tar="$OUT/$name-$h.tar"
    if [ ! -f "$tar" ]; then
      work="$(mktemp -d)"
      "$IMG_DIR/mkrootfs.sh" "$work/rootfs" --dest / "$bin"
      "$IMG_DIR/build-oci.sh" "$CSI_IMAGE_PREFIX/$name:$ver" "$work/rootfs" "$tar" "/$name" >&2
      rm -rf "$work"
    fi
    echo "$name $tar"
  done
}

if [ $# -eq 0 ]; then
  set -- pause busybox
  # $CACHE/current/* is what e2e/build.sh last built or found for the current inputs.
  [ -x "$CACHE/current/coredns/bin/coredns" ] && set -- "$@" coredns
  [ -f "$CACHE/current/csi-sidecars/.complete" ] && set -- "$@" sidecars
fi
for img in "$@"; do
  case "$img" in
    pause|busybox|coredns|sidecars) "$img" ;;
    *) echo "build-images.sh: unknown image $img" >&2; exit 2 ;;
  esac
done
