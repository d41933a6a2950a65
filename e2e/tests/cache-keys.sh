#!/usr/bin/env bash
# Proves that e2e/build.sh's cache cannot hide a broken build: for each cached build, a
# change to any of its inputs (a version in versions.env, its wrapper module's go.mod or
# go.sum, a build flag in build.sh) maps it to a different cache directory, which has no
# .complete marker, so the next run builds it again. Works on a copy of e2e/; builds
# nothing and needs no network.
set -euo pipefail
E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export RINGFS_E2E_CACHE="$work/cache"

fresh() { rm -rf "$work/e2e"; cp -r "$E2E_DIR" "$work/e2e"; }
dir_of() { "$work/e2e/build.sh" --print-dir "$1"; }

checks=0
failed=0
expect_change() { # build what-changed edit-command...
    local name="$1" what="$2" before after
    shift 2
    fresh
    before=$(dir_of "$name")
    (cd "$work/e2e" && "$@")
    after=$(dir_of "$name")
    checks=$((checks + 1))
    if [ "$before" = "$after" ]; then
        echo "FAIL: $name: changing $what kept the cache directory $before"
        failed=$((failed + 1))
    else
        echo "ok: $name: changing $what moves the cache from $(basename "$before") to $(basename "$after")"
    fi
}
expect_same() { # build: the key is stable when nothing changed
    local name="$1" a b
    fresh
    a=$(dir_of "$name")
    b=$(dir_of "$name")
    checks=$((checks + 1))
    if [ "$a" != "$b" ] || [ -z "$a" ]; then
        echo "FAIL: $name: two runs with the same inputs gave '$a' and '$b'"
        failed=$((failed + 1))
    fi
}

for b in kubernetes etcd helm cri-tools coredns csi-test csi-sidecars; do expect_same "$b"; done
expect_change kubernetes "K8S_VERSION" sed -i 's/^K8S_VERSION=.*/K8S_VERSION=v1.35.99/' versions.env
expect_change kubernetes "modules/kubernetes/go.mod" sh -c 'echo "// changed" >> modules/kubernetes/go.mod'
expect_change kubernetes "modules/kubernetes/go.sum" sh -c 'echo "example.com/x v1.0.0 h1:AAAA=" >> modules/kubernetes/go.sum'
expect_change kubernetes "a linker flag" sed -i 's/local v="$K8S_VERSION" minor ld="-s -w"/local v="$K8S_VERSION" minor ld="-s"/' build.sh
expect_change etcd "modules/etcd/go.mod" sh -c 'echo "// changed" >> modules/etcd/go.mod'
expect_change etcd "ETCD_VERSION" sed -i 's/^ETCD_VERSION=.*/ETCD_VERSION=v3.6.99/' versions.env
expect_change helm "HELM_VERSION" sed -i 's/^HELM_VERSION=.*/HELM_VERSION=v3.99.0/' versions.env
expect_change helm "the go install flags" sed -i 's/go install -trimpath -ldflags "-s -w"/go install -trimpath -ldflags "-s"/' build.sh
expect_change csi-test "CSI_TEST_VERSION" sed -i 's/^CSI_TEST_VERSION=.*/CSI_TEST_VERSION=v5.9.9/' versions.env
expect_change csi-sidecars "modules/csi-attacher/go.sum" sh -c 'echo "example.com/x v1.0.0 h1:AAAA=" >> modules/csi-attacher/go.sum'
expect_change csi-sidecars "lib/sidecars.sh" sed -i 's/-X main.version=$CSI_ATTACHER_VERSION/-X main.version=x$CSI_ATTACHER_VERSION/' lib/sidecars.sh
expect_change csi-sidecars "CSI_PROVISIONER_VERSION" sed -i 's/^CSI_PROVISIONER_VERSION=.*/CSI_PROVISIONER_VERSION=v6.9.9/' versions.env

# A complete directory for the current inputs is reused (no rebuild), and build.sh finds it.
fresh
d=$(dir_of helm)
mkdir -p "$d/bin" && touch "$d/bin/helm" "$d/.complete"
checks=$((checks + 1))
out=$("$work/e2e/build.sh" --only helm)
if grep -q "helm .*: cached in $d" <<<"$out"; then
    echo "ok: helm: a complete directory for the same inputs is reused"
else
    echo "FAIL: helm: a complete directory for the same inputs was not reused"
    failed=$((failed + 1))
fi

echo "cache keys: $((checks - failed)) passed, $failed failed"
[ "$failed" = 0 ]
