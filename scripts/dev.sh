#!/usr/bin/env bash
# Builds ringfs and runs `ringfs dev ...` (default: `dev up`: a local 3-node cluster with a
# volume named "default", mounted on ./ringfs-mnt; `dev down` unmounts it and stops the
# nodes). Build outputs are cached in ~/.cache/ringfs/target.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ringfs/target}"
cargo build -p ringfs-node -p ringfs-cli
if [ $# -eq 0 ]; then set -- up; fi
exec "$CARGO_TARGET_DIR/debug/ringfs" dev "$@"
