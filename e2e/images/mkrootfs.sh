#!/usr/bin/env bash
# Make a minimal root file system for a container image from host binaries:
#
#   mkrootfs.sh ROOTFS_DIR [--dest DIR] FILE... [--dest DIR FILE...]...
#
# Each FILE is copied to ROOTFS_DIR/DIR/ (DIR defaults to /usr/local/bin) and, when it is
# dynamically linked, every shared library that `ldd` reports (and the dynamic loader) is
# copied to the same absolute path inside ROOTFS_DIR. The rootfs also gets /etc/passwd,
# /etc/group, /etc/nsswitch.conf, /tmp (1777) and the host's CA bundle when present.
# Pack the result with build-oci.sh.
set -euo pipefail

[ $# -ge 2 ] || { sed -n '2,11p' "$0" >&2; exit 2; }
root="$1"; shift
mkdir -p "$root"/{etc,tmp,dev,proc,sys,usr/local/bin}
chmod 1777 "$root/tmp"

copy_path() { # absolute host path -> same path in rootfs (following symlinks)
  local src="$1" real
  real="$(readlink -f "$src")"
  mkdir -p "$root$(dirname "$src")"
  cp -L --preserve=mode "$real" "$root$src"
}

copy_libs() { # binary
  local line lib
  # `ldd` prints "not a dynamic executable" (exit 1) for static binaries.
  if ! ldd "$1" >/dev/null 2>&1; then return 0; fi
  while read -r line; do
    case "$line" in
      *"=> not found"*) echo "mkrootfs.sh: $1: missing library: $line" >&2; exit 1 ;;
      *"=> /"*) lib="${line#*=> }"; lib="${lib%% (*}" ;;
      /*) lib="${line%% (*}" ;;
      *) continue ;;
    esac
    [ -e "$root$lib" ] || copy_path "$lib"
  done < <(ldd "$1")
}

dest=/usr/local/bin
while [ $# -gt 0 ]; do
  case "$1" in
    --dest) dest="$2"; shift 2; continue ;;
  esac
  f="$1"; shift
  [ -f "$f" ] || { echo "mkrootfs.sh: $f: no such file" >&2; exit 1; }
  mkdir -p "$root$dest"
  cp -L --preserve=mode "$f" "$root$dest/$(basename "$f")"
  copy_libs "$f"
done

[ -e "$root/etc/passwd" ] || printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$root/etc/passwd"
[ -e "$root/etc/group" ] || printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
[ -e "$root/etc/nsswitch.conf" ] || printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
if [ -f /etc/ssl/certs/ca-certificates.crt ] && [ ! -e "$root/etc/ssl/certs/ca-certificates.crt" ]; then
  mkdir -p "$root/etc/ssl/certs"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
fi
