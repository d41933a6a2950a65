#!/usr/bin/env bash
# The e2e test command: bring the local cluster up (building what is not cached), run the
# smoke test and then any e2e test command given, and tear the cluster down again.
#
#   e2e/run.sh [--keep] [--ringfs-image] [-- COMMAND...]
#
# COMMAND (e.g. `cargo test -p ringfs-e2e -- --ignored --test-threads=1`) runs with
# KUBECONFIG set to the cluster. --keep leaves the cluster running afterwards (e2e/cluster
# down stops it). --ringfs-image (or RINGFS_E2E_RINGFS_IMAGE=1) packs the ringfs image
# (ringfs:dev) from binaries cargo built (RINGFS_BIN_DIR, default target/debug; see
# images/build-ringfs-image.sh) and imports it into the cluster before the smoke test.
# The CI command: cargo build -p ringfs-node -p ringfs-cli &&
#   e2e/run.sh --ringfs-image -- cargo test -p ringfs-e2e -- --ignored --test-threads=1
# Exit status: non-zero when bring-up, the smoke test or COMMAND failed.
set -euo pipefail

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
keep=0
ringfs_image="${RINGFS_E2E_RINGFS_IMAGE:-0}"
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) keep=1; shift ;;
    --ringfs-image) ringfs_image=1; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

t0=$SECONDS
teardown() {
  local rc=$?
  if [ "$keep" = 0 ]; then
    "$E2E_DIR/cluster" down || rc=1
  else
    echo "run.sh: cluster left running: eval \"\$($E2E_DIR/cluster env)\""
  fi
  echo "run.sh: finished in $(( SECONDS - t0 ))s with status $rc"
  exit $rc
}
trap teardown EXIT

env_line="$("$E2E_DIR/cluster" up)"
eval "$env_line"
echo "run.sh: cluster up after $(( SECONDS - t0 ))s"
if [ "$ringfs_image" = 1 ]; then
  "$E2E_DIR/images/build-ringfs-image.sh" --import
  echo "run.sh: ringfs image imported after $(( SECONDS - t0 ))s"
fi
"$E2E_DIR/smoke.sh"
if [ $# -gt 0 ]; then
  echo "run.sh: running $*"
  "$@"
fi
