#!/usr/bin/env bash
# Pack a root file system directory into a single-layer OCI image archive (an OCI image
# layout in a tar), without Docker or any daemon:
#
#   build-oci.sh [--env K=V]... [--workdir DIR] [--user UID[:GID]] NAME:TAG ROOTFS_DIR OUT.tar [ENTRYPOINT...]
#
# The archive holds oci-layout, index.json and blobs/sha256/{layer (tar+gzip), config, manifest}
# with real sha256 digests. Import it with `ctr -n k8s.io images import OUT.tar`
# (containerd names it NAME:TAG, normalised like Docker: "ringfs:dev" becomes
# "docker.io/library/ringfs:dev", which is what the kubelet asks for when a pod says
# image: ringfs:dev), or `docker load -i OUT.tar` / `podman load -i OUT.tar`.
# Files in the layer are owned by root, with mtime 0, sorted: the same input gives the
# same digest.
set -euo pipefail

usage() { sed -n '2,14p' "$0" >&2; exit 2; }

envs=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
workdir=/
user=""
while [ $# -gt 0 ]; do
  case "$1" in
    --env) envs+=("$2"); shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --user) user="$2"; shift 2 ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) echo "build-oci.sh: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[ $# -ge 3 ] || usage
ref="$1" rootfs="$2" out="$3"; shift 3
entrypoint=("$@")
[ -d "$rootfs" ] || { echo "build-oci.sh: $rootfs is not a directory" >&2; exit 1; }

# Docker-style reference normalisation: name[:tag], domain defaults to docker.io,
# a one-component docker.io path gets library/.
name="${ref%:*}" tag="${ref##*:}"
if [ "$name" = "$ref" ] || [[ "$tag" == */* ]]; then name="$ref" tag=latest; fi
first="${name%%/*}"
if [ "$first" = "$name" ] || { [[ "$first" != *.* ]] && [[ "$first" != *:* ]] && [ "$first" != localhost ]; }; then
  name="docker.io/$name"
fi
if [[ "$name" == docker.io/* ]] && [[ "${name#docker.io/}" != */* ]]; then
  name="docker.io/library/${name#docker.io/}"
fi
full="$name:$tag"

json_str() { # JSON-escape one string
  local s="$1"
  if [[ "$s" =~ [[:cntrl:]] ]]; then echo "build-oci.sh: control character in '$s'" >&2; exit 1; fi
  s="${s//\\/\\\\}"; s="${s//\"/\\\"}"
  printf '"%s"' "$s"
}
json_arr() { # JSON array of strings
  local out="[" sep="" a
  for a in "$@"; do out+="$sep$(json_str "$a")"; sep=","; done
  printf '%s]' "$out"
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/blobs/sha256"

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
add_blob() { # file -> prints digest hex, moves file into blobs
  local d; d="$(sha "$1")"; mv "$1" "$work/blobs/sha256/$d"; printf '%s' "$d"
}

# The layer: a reproducible tar of the rootfs.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$rootfs" -cf "$work/layer.tar" .
diff_id="$(sha "$work/layer.tar")"
gzip -n -6 "$work/layer.tar"
layer_size="$(size "$work/layer.tar.gz")"
layer_digest="$(add_blob "$work/layer.tar.gz")"

cfg="{\"created\":\"1970-01-01T00:00:00Z\",\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{"
cfg+="\"Env\":$(json_arr "${envs[@]}"),\"WorkingDir\":$(json_str "$workdir")"
[ -n "$user" ] && cfg+=",\"User\":$(json_str "$user")"
[ ${#entrypoint[@]} -gt 0 ] && cfg+=",\"Entrypoint\":$(json_arr "${entrypoint[@]}")"
cfg+="},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$diff_id\"]},"
cfg+="\"history\":[{\"created\":\"1970-01-01T00:00:00Z\",\"created_by\":\"e2e/images/build-oci.sh\"}]}"
printf '%s' "$cfg" > "$work/config.json"
config_size="$(size "$work/config.json")"
config_digest="$(add_blob "$work/config.json")"

printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$config_digest\",\"size\":$config_size},\
\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$layer_digest\",\"size\":$layer_size}]}" \
  > "$work/manifest.json"
manifest_size="$(size "$work/manifest.json")"
manifest_digest="$(add_blob "$work/manifest.json")"

printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[{\
\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$manifest_digest\",\"size\":$manifest_size,\
\"platform\":{\"architecture\":\"amd64\",\"os\":\"linux\"},\
\"annotations\":{\"io.containerd.image.name\":$(json_str "$full"),\"org.opencontainers.image.ref.name\":$(json_str "$tag")}}]}" \
  > "$work/index.json"
printf '%s' '{"imageLayoutVersion":"1.0.0"}' > "$work/oci-layout"

mkdir -p "$(dirname "$out")"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$work" -cf "$out.tmp" oci-layout index.json blobs
mv "$out.tmp" "$out"
echo "build-oci.sh: $full -> $out (manifest sha256:$manifest_digest, layer $layer_size bytes)"
