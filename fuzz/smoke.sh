#!/usr/bin/env bash
# Fuzz smoke run: builds every cargo-fuzz target of fuzz/ and runs each for a bounded
# time on its committed corpus, printing one line per target:
#   fuzz <target>: <N> executions in <S> s, no crash
# Exits non-zero when a target crashes (or fails to run), printing the artifact path.
#
# Environment:
#   FUZZ_SECS        seconds per target (default 20)
#   FUZZ_TARGETS     space-separated targets to run (default: all)
#   CARGO_TARGET_DIR build directory (default ~/.cache/ringfs/fuzz-target; never the repo)
#   FUZZ_ARTIFACTS   where crash inputs go (default $CARGO_TARGET_DIR/fuzz-artifacts)
#   FUZZ_OPT_LEVEL   optimisation of the fuzz build (default 1: fast to build)
#
# Only a stable toolchain is needed: cargo-fuzz passes -Z flags to rustc, which a stable
# compiler accepts with RUSTC_BOOTSTRAP=1. No sanitizer (-s none): the code under test is
# safe Rust, so libFuzzer's coverage guidance plus Rust's own checks (panics, overflow
# checks, debug assertions) find what ASan would, at a fraction of the build time.
#
# --build-only: install cargo-fuzz and build the targets, run nothing (the test command
# builds in the background while other stages run).
set -euo pipefail

build_only=0
[ "${1:-}" != --build-only ] || build_only=1
here=$(cd "$(dirname "$0")" && pwd)
secs=${FUZZ_SECS:-20}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ringfs/fuzz-target}
export RUSTC_BOOTSTRAP=1
artifacts=${FUZZ_ARTIFACTS:-$CARGO_TARGET_DIR/fuzz-artifacts}

# Pinned: a fresh machine must install the same cargo-fuzz a warm one has.
CARGO_FUZZ_VERSION=0.13.1
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$cargo_bin:$PATH"
if [ "$(cargo-fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    echo "installing cargo-fuzz $CARGO_FUZZ_VERSION (into $cargo_bin)"
    # A tool run for seconds: optimised lightly, it installs in a fraction of the time.
    CARGO_PROFILE_RELEASE_OPT_LEVEL=1 cargo install --locked --force "cargo-fuzz@$CARGO_FUZZ_VERSION"
fi

cd "$here"
start=$(date +%s)
# cargo-fuzz has no --locked: check first that fuzz/Cargo.lock needs no change.
if ! cargo metadata --locked --format-version 1 >/dev/null; then
    echo "fuzz/Cargo.lock is stale (a workspace crate's dependencies changed): run" >&2
    echo "  (cd fuzz && cargo update --workspace) and commit fuzz/Cargo.lock" >&2
    exit 1
fi
# opt-level 1 instead of release's 3: a smoke run of 20 s per target needs coverage
# guidance, not peak speed, and a fresh machine builds it in about half the time.
# (A long fuzzing campaign: FUZZ_OPT_LEVEL=3.)
CARGO_PROFILE_RELEASE_OPT_LEVEL=${FUZZ_OPT_LEVEL:-1} cargo fuzz build -s none
echo "fuzz build: $(($(date +%s) - start)) s"
[ "$build_only" = 0 ] || exit 0

triple=$(rustc -vV | sed -n 's/^host: //p')
bindir=$CARGO_TARGET_DIR/$triple/release
targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

failed=0
for t in $targets; do
    mkdir -p "$work/$t" "$artifacts/$t" "$here/corpus/$t"
    log=$work/$t.log
    t0=$(date +%s)
    # New inputs go to the scratch dir (first corpus dir); the committed corpus is read only.
    set +e
    "$bindir/$t" "$work/$t" "$here/corpus/$t" \
        -max_total_time="$secs" -print_final_stats=1 -timeout=30 -rss_limit_mb=2048 \
        -artifact_prefix="$artifacts/$t/" >"$log" 2>&1
    rc=$?
    set -e
    elapsed=$(($(date +%s) - t0))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    if [ "$rc" -eq 0 ] && [ -n "$execs" ]; then
        echo "fuzz $t: $execs executions in $elapsed s, no crash"
    else
        failed=1
        tail -n 40 "$log"
        artifact=$(sed -n 's/.*Test unit written to //p' "$log" | tail -n 1)
        echo "fuzz $t: FAILED (exit $rc) after ${execs:-?} executions in $elapsed s; artifact: ${artifact:-none}"
        echo "  reproduce: $bindir/$t ${artifact:-<input>}"
    fi
done
exit "$failed"
