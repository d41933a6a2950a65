#!/usr/bin/env bash
# csi-sanity (kubernetes-csi/csi-test) against the real ringfs-csi driver and a real
# 3-node cluster of ringfs-node processes, with real FUSE mounts. Exits non-zero when any
# csi-sanity test fails. Builds csi-sanity (e2e/build.sh --only csi-test) when missing.
#
# Usage: csi-driver/tests/sanity.sh [extra csi-sanity flags, e.g. --ginkgo.focus=Node]
# Needs: the workspace built (cargo build --workspace --locked), root, /dev/fuse, fusermount3.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
. "$ROOT/e2e/versions.env"
CACHE="${RINGFS_E2E_CACHE:-$HOME/.cache/ringfs-e2e}"
BIN="${CARGO_TARGET_DIR:-$HOME/.cache/ringfs/target}/debug"
for b in ringfs ringfs-node ringfs-csi; do
    [ -x "$BIN/$b" ] || { echo "sanity.sh: $BIN/$b missing; run cargo build --workspace --locked" >&2; exit 1; }
done

# build.sh reuses a build whose inputs did not change and rebuilds one whose did.
"$ROOT/e2e/build.sh" --only csi-test
SANITY="$CACHE/current/csi-test/bin/csi-sanity"

WORK=$(mktemp -d /tmp/ringfs-sanity.XXXXXX)
CSI_PID=
# Runs under `set -e -o pipefail`: every step must succeed even when there is nothing to
# clean (no mounts left makes grep exit 1), or the script fails after a passing run.
cleanup() {
    if [ -n "$CSI_PID" ]; then
        kill "$CSI_PID" 2>/dev/null || true
        wait "$CSI_PID" 2>/dev/null || true
    fi
    # Mounts the run left behind (a failing test may skip its cleanup).
    { grep " $WORK/" /proc/self/mounts || true; } | awk '{print $2}' | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
    "$BIN/ringfs" dev down --dir "$WORK/cluster" --purge >/dev/null 2>&1 || true
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# A plaintext cluster: this stage checks the CSI spec; mutual TLS has its own stage.
"$BIN/ringfs" dev up --insecure --nodes 3 --dir "$WORK/cluster" --base-port 0 --volume "" >"$WORK/dev-up.log" 2>&1 \
    || { cat "$WORK/dev-up.log"; exit 1; }
SEEDS=$(python3 -c 'import json,sys; print(",".join(n["addr"] for n in json.load(open(sys.argv[1]))["nodes"]))' "$WORK/cluster/cluster.json")
echo "cluster: $SEEDS"

SOCK="$WORK/csi.sock"
RUST_LOG="${RUST_LOG:-info}" "$BIN/ringfs-csi" --endpoint "unix://$SOCK" --cluster "$SEEDS" \
    --node-id sanity-node --zone zone-1 --ringfs-bin "$BIN/ringfs" \
    --state-dir "$WORK/state" --managed-root "$WORK" >"$WORK/csi.log" 2>&1 &
CSI_PID=$!
for _ in $(seq 1 300); do
    [ -S "$SOCK" ] && break
    kill -0 "$CSI_PID" 2>/dev/null || { cat "$WORK/csi.log"; echo "ringfs-csi exited" >&2; exit 1; }
    sleep 0.1
done
[ -S "$SOCK" ] || { echo "ringfs-csi did not create $SOCK" >&2; exit 1; }
mode=$(stat -c %a "$SOCK")
[ "$mode" = 660 ] || { echo "socket mode is $mode, want 660" >&2; exit 1; }

# The specs this driver must run (all but those of capabilities it does not offer). One
# run was seen skipping 22 more without any failure (not reproducible with the same seed);
# a short run is repeated once, verbosely so the skip reasons are in the log, and fails the
# stage if it is short again: a run that quietly tests less must not pass.
MIN_SPECS=71
attempt=1
focused=$#  # extra flags (e.g. --ginkgo.focus) may select fewer specs on purpose
while :; do
    set +e
    "$SANITY" --csi.endpoint "$SOCK" \
        --csi.stagingdir "$WORK/staging" --csi.mountdir "$WORK/mount" \
        --csi.testvolumesize $((1 << 30)) --csi.testvolumeexpandsize $((2 << 30)) \
        --ginkgo.junit-report "$WORK/junit.xml" --ginkgo.no-color "$@" 2>&1 | tee "$WORK/sanity.log"
    rc=${PIPESTATUS[0]}
    set -e
    summary=$(grep -E "^Ran [0-9]+ of [0-9]+ Specs|Passed \| [0-9]+ Failed" "$WORK/sanity.log" | tr '\n' ' ')
    echo "csi-sanity: $summary(exit $rc)"
    ran=$(grep -oE "^Ran [0-9]+ of" "$WORK/sanity.log" | grep -oE "[0-9]+" | head -1)
    if [ "$rc" = 0 ] && [ "$focused" = 0 ] && [ "${ran:-0}" -lt "$MIN_SPECS" ]; then
        if [ "$attempt" = 1 ]; then
            echo "!!! csi-sanity ran only ${ran:-0} specs, fewer than the $MIN_SPECS this driver must pass; running it again (verbose) !!!"
            attempt=2
            set -- --ginkgo.v
            continue
        fi
        grep -E "\[SKIPPED\]" -A4 "$WORK/sanity.log" | head -80 || true
        echo "csi-sanity: only ${ran:-0} of the $MIN_SPECS specs ran twice in a row" >&2
        rc=1
    fi
    break
done
if [ "$rc" != 0 ]; then
    echo "---- ringfs-csi log (last 80 lines) ----"
    tail -n 80 "$WORK/csi.log"
    exit 1
fi
