#!/usr/bin/env bash
# Regenerates the seed inputs of every fuzz target into fuzz/corpus/<target>/seed-NNN.
# The seeds are built in each target's `init` from the real types (see
# `ringfs_fuzz::write_seeds`), so they stay valid when a wire or disk format changes:
# rerun this after such a change and commit the result. Inputs found by fuzzing (other
# file names in the corpus) are kept.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ringfs/fuzz-target}
export RUSTC_BOOTSTRAP=1
export PATH="$HOME/.cargo/bin:$PATH"
cd "$here"
# cargo-fuzz has no --locked: check first that fuzz/Cargo.lock needs no change.
cargo metadata --locked --format-version 1 >/dev/null
cargo fuzz build -s none
bindir=$CARGO_TARGET_DIR/$(rustc -vV | sed -n 's/^host: //p')/release
empty=$(mktemp -d)
trap 'rm -rf "$empty"' EXIT
for t in $(cargo fuzz list); do
    rm -f "$here/corpus/$t"/seed-*
    RINGFS_FUZZ_WRITE_SEEDS="$here/corpus" "$bindir/$t" -runs=0 "$empty" >/dev/null 2>&1
    echo "$t: $(ls "$here/corpus/$t" | grep -c '^seed-') seeds"
done
