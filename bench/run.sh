#!/usr/bin/env bash
# ringfs side by side with GlusterFS (replica 3), bindfs (the FUSE ceiling) and the raw
# local directory (the disk's limit), in one run on this machine. Installs what it needs.
#
# Usage: bench/run.sh [--smoke] [--reps N] [--runtime SECONDS] [--systems LIST] [--out FILE]
#   --smoke     tiny sizes, one repetition, debug binaries: checks that every piece works
#               (used by CI), says nothing about speed; report goes to $WORK/BENCHMARKS-smoke.md
#   --reps      repetitions (default 3); systems alternate A/B/A/B inside each repetition
#   --runtime   seconds per time-based fio job (default 15)
#   --systems   comma-separated subset of raw,bindfs,glusterfs,ringfs (default: all four)
#   --out       report file (default: BENCHMARKS.md in the repository)
# Environment: RINGFS_BENCH_DIR (scratch space, default /var/tmp/ringfs-bench, must be on
# the disk you want to measure), CARGO_TARGET_DIR (default ~/.cache/ringfs/target).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SMOKE=0
REPS=3
RUNTIME=15
SYSTEMS="raw,bindfs,glusterfs,ringfs"
OUT="$ROOT/BENCHMARKS.md"
while (($#)); do
    case "$1" in
    --smoke) SMOKE=1 ;;
    --reps) REPS="$2"; shift ;;
    --runtime) RUNTIME="$2"; shift ;;
    --systems) SYSTEMS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[[ "$REPS" =~ ^[1-9][0-9]*$ ]] || { echo "--reps must be a positive integer, got '$REPS'" >&2; exit 2; }
[[ "$RUNTIME" =~ ^[1-9][0-9]*$ ]] || { echo "--runtime must be a positive integer, got '$RUNTIME'" >&2; exit 2; }
IFS=, read -r -a SYS <<<"$SYSTEMS"
for s in "${SYS[@]}"; do
    case "$s" in raw | bindfs | glusterfs | ringfs) ;; *) echo "unknown system '$s' (raw, bindfs, glusterfs, ringfs)" >&2; exit 2 ;; esac
done
if [ "$(id -u)" != 0 ]; then
    echo "bench/run.sh mounts file systems and must run as root" >&2
    exit 1
fi

WORK="${RINGFS_BENCH_DIR:-/var/tmp/ringfs-bench}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ringfs/target}"
if ((SMOKE)); then
    REPS=1
    RUNTIME=1
    RAMP=0
    SEQ_MB=32
    RAND_MB=16
    MD_ARGS=(--files 200 --fanout 3 --depth 2 --per-dir 2)
    RAFT_CLIENTS="1,16"
    RAFT_SECONDS=1
    REB_STEADY=3
    REB_PRELOAD=8
    RSS_BLOCKS=20000
    OUT="$WORK/BENCHMARKS-smoke.md"
    PROFILE=debug
else
    RAMP=2
    SEQ_MB=1024
    RAND_MB=256
    MD_ARGS=(--files 10000 --fanout 6 --depth 4 --per-dir 8)
    RAFT_CLIENTS="1,64,256"
    RAFT_SECONDS=10
    REB_STEADY=20
    REB_PRELOAD=256
    RSS_BLOCKS=1000000
    PROFILE=release
fi

say() { printf '\n==== %s ====\n' "$*"; }

say "dependencies"
need=()
command -v fio >/dev/null || need+=(fio)
command -v bindfs >/dev/null || need+=(bindfs)
command -v glusterd >/dev/null || need+=(glusterfs-server)
command -v mount.glusterfs >/dev/null || need+=(glusterfs-client)
command -v fusermount3 >/dev/null || need+=(fuse3)
if ((${#need[@]})); then
    echo "installing Debian packages: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}"
fi
fio --version

say "build ($PROFILE)"
if [ "$PROFILE" = release ]; then
    cargo build --release --locked --bin ringfs-node --bin ringfs --bin ringfs-bench \
        -p ringfs-node -p ringfs-cli -p ringfs-bench
else
    # The same command as the test suite's build stage (with test targets, so the same
    # dependency features): after it, this is a no-op instead of a rebuild.
    cargo build --workspace --all-targets --locked
fi
BIN="$CARGO_TARGET_DIR/$PROFILE"
RINGFS="$BIN/ringfs"
BENCH="$BIN/ringfs-bench"
export RINGFS_NODE_BIN="$BIN/ringfs-node" # the node binary `ringfs dev up` starts

# ---------------------------------------------------------------------------- systems
GLUSTER_HOST=127.0.1.1 # glusterd refuses 127.0.0.1 as a brick host
RINGFS_SEEDS=""

teardown_all() {
    for m in "$WORK"/mnt/*; do
        mountpoint -q "$m" 2>/dev/null && { umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; }
    done
    if command -v gluster >/dev/null && pgrep -x glusterd >/dev/null; then
        gluster --mode=script volume stop gv force >/dev/null 2>&1 || true
        gluster --mode=script volume delete gv >/dev/null 2>&1 || true
    fi
    pkill -x glusterfsd 2>/dev/null || true
    pkill -x glusterd 2>/dev/null || true
    pkill -x glusterfs 2>/dev/null || true
    [ -f "$WORK/ringfs-dev/cluster.json" ] && "$RINGFS" dev down --dir "$WORK/ringfs-dev" --purge >/dev/null 2>&1 || true
}
trap teardown_all EXIT

wait_mounted() { # dir seconds
    local deadline=$((SECONDS + $2))
    until mountpoint -q "$1"; do
        ((SECONDS < deadline)) || { echo "$1 did not get mounted within $2 s" >&2; return 1; }
        sleep 0.2
    done
}

declare -A MNT PIDS
setup_raw() {
    mkdir -p "$WORK/raw"
    MNT[raw]="$WORK/raw"
    PIDS[raw]=""
}
setup_bindfs() {
    mkdir -p "$WORK/bindfs-src" "$WORK/mnt/bindfs"
    bindfs "$WORK/bindfs-src" "$WORK/mnt/bindfs"
    wait_mounted "$WORK/mnt/bindfs" 30
    MNT[bindfs]="$WORK/mnt/bindfs"
    PIDS[bindfs]=$(pgrep -f "bindfs $WORK/bindfs-src" | paste -sd,)
}
setup_glusterfs() {
    mkdir -p "$WORK/gluster/b1" "$WORK/gluster/b2" "$WORK/gluster/b3" "$WORK/mnt/glusterfs"
    pgrep -x glusterd >/dev/null || glusterd
    local deadline=$((SECONDS + 60))
    until gluster --mode=script volume list >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { echo "glusterd did not answer within 60 s" >&2; return 1; }
        sleep 0.5
    done
    gluster --mode=script volume create gv replica 3 \
        "$GLUSTER_HOST:$WORK/gluster/b1" "$GLUSTER_HOST:$WORK/gluster/b2" "$GLUSTER_HOST:$WORK/gluster/b3" force
    gluster --mode=script volume start gv
    mount -t glusterfs "$GLUSTER_HOST:/gv" "$WORK/mnt/glusterfs"
    wait_mounted "$WORK/mnt/glusterfs" 60
    MNT[glusterfs]="$WORK/mnt/glusterfs"
    PIDS[glusterfs]=$( (pgrep -x glusterd; pgrep -x glusterfsd; pgrep -x glusterfs) | paste -sd,)
}
setup_ringfs() {
    mkdir -p "$WORK/mnt/ringfs"
    # `dev up` starts the nodes, creates the volume and mounts it (background process).
    # Plaintext (--insecure), like the GlusterFS peer; the cost of mutual TLS is not measured here.
    "$RINGFS" dev up --insecure --nodes 3 --dir "$WORK/ringfs-dev" --base-port 0 --capacity 40GiB \
        --volume bench --volume-size 30GiB --mount "$WORK/mnt/ringfs"
    wait_mounted "$WORK/mnt/ringfs" 60
    MNT[ringfs]="$WORK/mnt/ringfs"
    local state="$WORK/ringfs-dev/cluster.json"
    RINGFS_SEEDS=$(python3 -c 'import json,sys; print(",".join(n["addr"] for n in json.load(open(sys.argv[1]))["nodes"]))' "$state")
    PIDS[ringfs]=$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(",".join([str(n["pid"]) for n in s["nodes"]] + [str(s["mount"]["pid"])]))' "$state")
}

# ---------------------------------------------------------------------------- workloads
RESULTS="$WORK/results.jsonl"
NOTES="$WORK/notes.md"

# fio JOBNAME SYSTEM REP -- fio options (the file lives in the system's mount)
run_fio() {
    local test=$1 sys=$2 rep=$3
    shift 3
    local out="$WORK/fio/$sys-$test-$rep.json"
    mkdir -p "$WORK/fio"
    local cost=()
    if [ "$test" = fio-seq-write ] && [ -n "${PIDS[$sys]}" ]; then
        cost=("$BENCH" cost --system "$sys" --rep "$rep" --test "$test" --pids "${PIDS[$sys]}" --bytes $((SEQ_MB << 20)) --)
    fi
    # With `cost`, its records (CPU s/GiB, peak RSS) go to the results too.
    if ! "${cost[@]}" fio --output-format=json --output="$out" --name="$test" \
        --directory="${MNT[$sys]}/bench" "$@" >>"$RESULTS"; then
        echo "fio $test failed on $sys:" >&2
        cat "$out" >&2 || true
        return 1
    fi
    "$BENCH" fio-extract --system "$sys" --rep "$rep" --test "$test" --file "$out" >>"$RESULTS"
}

# Direct I/O where the system supports it (kubestr's job uses direct=1).
direct_for() {
    local sys=$1
    local f="${MNT[$sys]}/bench/.direct-probe"
    if python3 -c 'import os,sys; fd=os.open(sys.argv[1], os.O_CREAT|os.O_WRONLY|os.O_DIRECT, 0o644); os.close(fd)' "$f" 2>/dev/null; then
        rm -f "$f"
        echo 1
    else
        rm -f "$f"
        echo "- $sys: O_DIRECT is not supported; its random-I/O jobs ran with direct=0 (page cache)." >>"$NOTES"
        echo 0
    fi
}

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

run_workloads() { # SYSTEM REP
    local sys=$1 rep=$2 d
    mkdir -p "${MNT[$sys]}/bench"
    d=$(direct_for "$sys")
    local common=(--ioengine=libaio --randrepeat=0 --verify=0 --group_reporting)
    run_fio fio-seq-write "$sys" "$rep" --rw=write --bs=1M --size=${SEQ_MB}M --ioengine=psync --end_fsync=1
    drop_caches
    run_fio fio-seq-read "$sys" "$rep" --rw=read --bs=1M --size=${SEQ_MB}M --ioengine=psync
    rm -f "${MNT[$sys]}/bench/"*
    local tb=(--time_based --runtime="$RUNTIME" --ramp_time="$RAMP" --size="${RAND_MB}M" --direct="$d")
    run_fio fio-randread-4k-qd64 "$sys" "$rep" "${common[@]}" "${tb[@]}" --rw=randread --bs=4k --iodepth=64 --gtod_reduce=1
    run_fio fio-randwrite-4k-qd64 "$sys" "$rep" "${common[@]}" "${tb[@]}" --rw=randwrite --bs=4k --iodepth=64 --gtod_reduce=1
    run_fio fio-read-128k-qd64 "$sys" "$rep" "${common[@]}" "${tb[@]}" --rw=randread --bs=128k --iodepth=64 --gtod_reduce=1
    run_fio fio-write-128k-qd64 "$sys" "$rep" "${common[@]}" "${tb[@]}" --rw=randwrite --bs=128k --iodepth=64 --gtod_reduce=1
    run_fio fio-randread-4k-qd1 "$sys" "$rep" "${common[@]}" "${tb[@]}" --rw=randread --bs=4k --iodepth=1
    run_fio fio-randwrite-4k-qd1 "$sys" "$rep" "${common[@]}" "${tb[@]}" --rw=randwrite --bs=4k --iodepth=1
    run_fio fio-write-4k-fdatasync-qd1 "$sys" "$rep" --ioengine=psync --time_based --runtime="$RUNTIME" \
        --size=${RAND_MB}M --rw=write --bs=4k --fdatasync=1
    rm -rf "${MNT[$sys]}/bench"
    "$BENCH" md --system "$sys" --rep "$rep" --dir "${MNT[$sys]}/md-$rep" "${MD_ARGS[@]}" >>"$RESULTS"
    rm -rf "${MNT[$sys]}/md-$rep"
}

# ---------------------------------------------------------------------------- run
teardown_all
rm -rf "$WORK"
mkdir -p "$WORK/mnt"
: >"$RESULTS"
: >"$NOTES"
for s in "${SYS[@]}"; do
    say "set up $s"
    "setup_$s"
    echo "$s mounted at ${MNT[$s]} (daemons: ${PIDS[$s]:-none})"
done

for ((rep = 1; rep <= REPS; rep++)); do
    # A/B/A/B: rotate the order every repetition so no system always runs first.
    order=()
    for ((i = 0; i < ${#SYS[@]}; i++)); do order+=("${SYS[$(((i + rep - 1) % ${#SYS[@]}))]}"); done
    for s in "${order[@]}"; do
        say "repetition $rep/$REPS: $s"
        run_workloads "$s" "$rep"
    done
    if [[ " ${SYS[*]} " == *" ringfs "* ]]; then
        say "repetition $rep/$REPS: Raft commit rate"
        "$BENCH" raft --system ringfs --rep "$rep" --seeds "$RINGFS_SEEDS" --volume bench \
            --clients "$RAFT_CLIENTS" --seconds "$RAFT_SECONDS" >>"$RESULTS"
    fi
done
if [[ " ${SYS[*]} " == *" ringfs "* ]]; then
    say "foreground p99 in steady state and while a 4th node joins and data moves to it"
    "$BENCH" rebalance --system ringfs --seeds "$RINGFS_SEEDS" --volume bench \
        --steady-seconds "$REB_STEADY" --preload-mib "$REB_PRELOAD" -- \
        "$RINGFS" cluster add-node --dir "$WORK/ringfs-dev" --capacity 40GiB >>"$RESULTS"
fi
say "layout balance and join movement"
"$BENCH" layout --system ringfs --nodes "$( ((SMOKE)) && echo 3,8 || echo 3,4,5,8,16,32,64)" >>"$RESULTS"

if [[ " ${SYS[*]} " == *" ringfs "* ]]; then
    teardown_all # quiet machine, and the disk space back
    say "node memory with $RSS_BLOCKS blocks stored"
    "$BENCH" block-rss --system ringfs --node-bin "$BIN/ringfs-node" --dir "$WORK/block-rss" \
        --blocks "$RSS_BLOCKS" >>"$RESULTS"
fi

say "report"
machine="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo), $(uname -sr), disk $(df -h "$WORK" | awk 'NR==2 {print $1}'), $PROFILE build, $(date -u +%Y-%m-%d)"
note="ringfs: 3 node processes on loopback, RF 3, FUSE mount. GlusterFS $(glusterd --version | awk 'NR==1 {print $2}'): replica 3, three bricks on the same disk. bindfs over a local directory. raw: the local directory. fio $(fio --version)."
((SMOKE)) && note="SMOKE RUN (tiny sizes, debug build): checks that the benchmark works, says nothing about speed. $note"
"$BENCH" report --results "$RESULTS" --out "$OUT" --machine "$machine" --note "$note"
if [ -s "$NOTES" ]; then
    printf '\n## Notes from this run\n\n' >>"$OUT"
    cat "$NOTES" >>"$OUT"
    cat "$NOTES"
fi
echo
echo "bench: report written to $OUT ($(wc -l <"$RESULTS") measurements)"
