#!/usr/bin/env bash
# Lints the Helm chart and scans its rendered manifests with checkov (a Kubernetes manifest
# security scanner from PyPI), failing on any finding that is not accepted with a reason
# (charts/ringfs/.checkov.yaml for chart-wide ones, checkov.io/skipN annotations next to
# the workload for the others).
#
# The chart is rendered with everything on (operator, DfsCluster, CSI driver,
# NetworkPolicies): the hardened configuration users are pointed to.
#
# Installs what it needs: helm via e2e/build.sh (the e2e cache), checkov into a venv under
# ${RINGFS_CACHE:-~/.cache/ringfs}/checkov-<version> (python3-venv from Debian if missing).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${RINGFS_CACHE:-$HOME/.cache/ringfs}"
CHECKOV_VERSION="${CHECKOV_VERSION:-3.3.30}"
# Keyed by the Python that builds it too: a venv made by another interpreter is unusable.
VENV="$CACHE/checkov-$CHECKOV_VERSION-py$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

. "$ROOT/e2e/versions.env"
# build.sh reuses a build whose inputs did not change and rebuilds one whose did.
bash "$ROOT/e2e/build.sh" --only helm
HELM="${RINGFS_E2E_CACHE:-$HOME/.cache/ringfs-e2e}/current/helm/bin/helm"

if [ ! -f "$VENV/.complete" ]; then
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
        echo "installing Debian package python3-venv"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq python3-venv
    fi
    echo "installing checkov $CHECKOV_VERSION into $VENV (once)"
    # A venv cannot be moved (its scripts name their own path): built in place, marked
    # complete at the end.
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "checkov==$CHECKOV_VERSION"
    touch "$VENV/.complete"
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
chart="$ROOT/charts/ringfs"
set_all=(--namespace ringfs
    --set cluster.enabled=true
    --set csi.enabled=true --set csi.dfsCluster=ringfs
    --set networkPolicy.enabled=true)

"$HELM" lint "$chart" "${set_all[@]:2}"
"$HELM" template ringfs "$chart" "${set_all[@]}" > "$out/rendered.yaml"
echo "rendered $(grep -c '^kind:' "$out/rendered.yaml") objects"

# checkov asks a vendor API for guideline links first; this machine may have no route to
# it, which only costs the links.
set +e
"$VENV/bin/checkov" --config-file "$chart/.checkov.yaml" -f "$out/rendered.yaml" \
    > "$out/report.txt" 2> "$out/stderr.txt"
rc=$?
set -e
cat "$out/report.txt"
if [ "$rc" -ne 0 ]; then
    grep -v -i "prismacloud\|NameResolutionError\|MaxRetryError" "$out/stderr.txt" >&2 || true
    echo "chart scan: checkov found problems (exit $rc); fix them or accept them with a reason" >&2
    exit 1
fi
summary="$(grep -m1 '^Passed checks' "$out/report.txt" || true)"
[ -n "$summary" ] || { echo "chart scan: no checkov summary line" >&2; exit 1; }
echo "chart scan: $summary"
