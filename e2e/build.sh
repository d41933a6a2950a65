#!/usr/bin/env bash
# Build, once, every binary the e2e cluster needs, from published Go modules:
#   kubernetes-<v>/bin: kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl
#   etcd-<v>/bin:       etcd etcdctl
#   helm-<v>/bin:       helm
#   csi-test-<v>/bin:   csi-sanity
#   cri-tools-<v>/bin:  crictl
#   coredns-<v>/bin:    coredns
#   csi-sidecars-<k>/bin (only with --sidecars or RINGFS_E2E_SIDECARS=1): see modules/csi-sidecars
# into ${RINGFS_E2E_CACHE:-~/.cache/ringfs-e2e}/<name>-<version>-<key>/bin, where <key> is a
# hash of everything the build is made from: the version, the wrapper module's go.mod and
# go.sum, the build function's own text (flags included), the Go version and the Go
# settings. A directory that is complete (has .complete) is reused; any change to one of
# its inputs gives a new key, so the next run rebuilds it (a cache can never hide a build
# that no longer works). $CACHE/current/<name> points at the directory in use, and
# symlinks to every binary are kept in $CACHE/bin.
#
# Usage: e2e/build.sh [--sidecars] [--only NAME]...   (NAME: kubernetes etcd helm cri-tools coredns csi-test csi-sidecars)
#        e2e/build.sh --print-dir NAME   the cache directory NAME's current inputs map to (builds nothing)
set -euo pipefail

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
. "$E2E_DIR/versions.env"
CACHE="${RINGFS_E2E_CACHE:-$HOME/.cache/ringfs-e2e}"
mkdir -p "$CACHE/bin" "$CACHE/logs" "$CACHE/current"

want_sidecars="${RINGFS_E2E_SIDECARS:-0}"
only=()
print_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --sidecars) want_sidecars=1 ;;
    --only) only+=("$2"); shift ;;
    --print-dir) print_dir="$2"; only+=("$2"); want_sidecars=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

for n in "${only[@]}"; do
  case "$n" in
    kubernetes|etcd|helm|cri-tools|coredns|csi-test|csi-sidecars) ;;
    *) echo "build.sh: unknown build '$n' (kubernetes etcd helm cri-tools coredns csi-test csi-sidecars)" >&2; exit 2 ;;
  esac
done

command -v go >/dev/null || { echo "build.sh: go is not installed" >&2; exit 1; }

# Go settings: resolve modules from the proxy (GOPROXY as configured on the machine),
# static binaries, no VCS stamping (the wrapper modules are not their own repositories).
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0
# Be kind to a 2-core machine that is compiling other things too.
NICE=(nice -n 19)

# One build of each NAME at a time per cache (a lock per name, taken only when something
# must be built): a fully cached run never waits, and a build of helm is not held up by
# a build of Kubernetes running in the background (scripts/test.sh starts one early).
lock() { # name
  exec 9>"$CACHE/.build-$1.lock"
  if ! flock -n 9; then
    echo "build.sh: waiting for another build of $1 to finish ($CACHE/.build-$1.lock)"
    flock 9
  fi
}
unlock() { flock -u 9; exec 9>&-; }

selected() {
  [ ${#only[@]} -eq 0 ] && return 0
  local n; for n in "${only[@]}"; do [ "$n" = "$1" ] && return 0; done
  return 1
}

# The cache key of a build: a hash of its name and version, the files of its wrapper
# module (if any), the text of the shell functions that build it (so a changed flag or
# package list counts), the Go toolchain and the Go settings that shape the output.
cache_key() { # name version module-dirs(: separated)|- function args...
  local name="$1" version="$2" modules="$3" fn="$4" m; shift 4
  {
    printf 'name=%s version=%s args=%s\n' "$name" "$version" "$*"
    go version
    printf 'GOFLAGS=%s CGO_ENABLED=%s\n' "$GOFLAGS" "$CGO_ENABLED"
    if [ "$modules" != - ]; then
      local IFS=:
      for m in $modules; do cat "$E2E_DIR/modules/$m/go.mod" "$E2E_DIR/modules/$m/go.sum"; done
    fi
    declare -f "$fn" k8s_ldflags build_go_install
  } | sha256sum | cut -c1-12
}

# build NAME VERSION MODULES|- FUNCTION [ARGS...]; the function must write its binaries
# to $OUT. MODULES are the wrapper modules under modules/ it builds from, ':'-separated.
build() {
  local name="$1" version="$2" modules="$3" fn="$4"; shift 4
  local key; key="$(cache_key "$name" "$version" "$modules" "$fn" "$@")"
  local dir="$CACHE/$name-$version-$key"
  if [ -n "$print_dir" ]; then echo "$dir"; return 0; fi
  if [ ! -f "$dir/.complete" ]; then lock "$name"; fi
  if [ -f "$dir/.complete" ]; then
    echo "build.sh: $name $version: cached in $dir"
    use_dir "$name" "$dir"; unlock 2>/dev/null || true; return 0
  fi
  local tmp="$dir.tmp" log="$CACHE/logs/build-$name-$version-$key.log" t0=$SECONDS
  rm -rf "$tmp"; mkdir -p "$tmp/bin"
  echo "build.sh: $name $version: building (key $key; log: $log)"
  # In the background, not in an `if`: errexit must stay on inside the build function.
  ( export OUT="$tmp/bin"; "$fn" "$@" ) >"$log" 2>&1 &
  if ! wait $!; then
    echo "build.sh: $name $version: BUILD FAILED; last lines of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
  # A build that "succeeded" without producing anything is a failure, not a cache entry.
  if [ -z "$(ls -A "$tmp/bin")" ]; then
    echo "build.sh: $name $version: the build wrote no binaries to $tmp/bin" >&2
    exit 1
  fi
  echo "$(( SECONDS - t0 ))" > "$tmp/.build-seconds"
  go version > "$tmp/.go-version"
  touch "$tmp/.complete"
  rm -rf "$dir"; mv "$tmp" "$dir"
  echo "build.sh: $name $version: built in $(( SECONDS - t0 ))s"
  use_dir "$name" "$dir"
  unlock
}

# Point $CACHE/current/NAME and the binary symlinks in $CACHE/bin at DIR.
use_dir() { # name dir
  local f
  ln -sfn "$2" "$CACHE/current/$1"
  for f in "$2"/bin/*; do ln -sfn "$f" "$CACHE/bin/$(basename "$f")"; done
  if [ -d "$2/crds" ]; then ln -sfn "$2/crds" "$CACHE/snapshot-crds"; fi
}

k8s_ldflags() {
  local v="$K8S_VERSION" minor ld="-s -w" p
  minor="${v#v1.}"; minor="${minor%%.*}"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    ld+=" -X $p.gitCommit=0000000000000000000000000000000000000000 -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  printf '%s' "$ld"
}

build_kubernetes() {
  cd "$E2E_DIR/modules/kubernetes"
  # Ask Go which version the module graph selects (the wrapper has no code of its own, so
  # its go.mod marks every requirement "// indirect": a text match on the line is fragile).
  local have
  have="$(go list -m -f '{{.Version}}' k8s.io/kubernetes)"
  [ "$have" = "$K8S_VERSION" ] \
    || { echo "modules/kubernetes/go.mod selects k8s.io/kubernetes $have, versions.env says $K8S_VERSION: keep them in step"; return 1; }
  "${NICE[@]}" go build -trimpath -ldflags "$(k8s_ldflags)" -o "$OUT/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy \
    k8s.io/kubernetes/cmd/kubectl
}

build_etcd() {
  cd "$E2E_DIR/modules/etcd"
  "${NICE[@]}" go build -trimpath -ldflags "-s -w" -o "$OUT/etcd" go.etcd.io/etcd/server/v3
  "${NICE[@]}" go build -trimpath -ldflags "-s -w" -o "$OUT/etcdctl" go.etcd.io/etcd/etcdctl/v3
}

build_go_install() { # pkg@version (module without replace directives)
  cd /
  GOBIN="$OUT" "${NICE[@]}" go install -trimpath -ldflags "-s -w" "$1"
}

selected kubernetes && build kubernetes "$K8S_VERSION" kubernetes build_kubernetes
selected etcd && build etcd "$ETCD_VERSION" etcd build_etcd
selected helm && build helm "$HELM_VERSION" - build_go_install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
selected cri-tools && build cri-tools "$CRI_TOOLS_VERSION" - \
  build_go_install "sigs.k8s.io/cri-tools/cmd/crictl@$CRI_TOOLS_VERSION"
selected coredns && build coredns "$COREDNS_VERSION" - \
  build_go_install "github.com/coredns/coredns@$COREDNS_VERSION"
selected csi-test && build csi-test "$CSI_TEST_VERSION" - \
  build_go_install "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@$CSI_TEST_VERSION"
if [ "$want_sidecars" = 1 ] && selected csi-sidecars; then
  # shellcheck source=lib/sidecars.sh
  . "$E2E_DIR/lib/sidecars.sh"
  build csi-sidecars "$CSI_SIDECARS_KEY" csi-provisioner:csi-attacher:csi-snapshotter build_csi_sidecars
fi
[ -n "$print_dir" ] || echo "build.sh: binaries are linked in $CACHE/bin"
