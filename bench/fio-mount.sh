#!/usr/bin/env bash
# fio on one or more directories, side by side: sequential 1 MiB write (end_fsync) and
# read, 4 KiB random read and write (psync, 4 jobs). Typical use: a ringfs mount
# (`ringfs dev up` mounts ./ringfs-mnt) against a local directory on the same disk.
#
# Usage: bench/fio-mount.sh DIR [DIR...]     (SIZE=256M RUNTIME=20 to change)
set -euo pipefail
SIZE=${SIZE:-256M}
RUNTIME=${RUNTIME:-20}
command -v fio >/dev/null || { echo "fio is not installed (apt-get install fio)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is needed to read fio's JSON" >&2; exit 1; }

run() { # dir name fio-args...
    local dir=$1 name=$2
    shift 2
    fio --name="$name" --directory="$dir" --filename=fio-bench.dat --output-format=json \
        --ioengine=psync "$@" >"$dir/.fio-$name.json"
    python3 - "$dir/.fio-$name.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"]
bw = sum(x["read"]["bw_bytes"] + x["write"]["bw_bytes"] for x in j) / 2**20
iops = sum(x["read"]["iops"] + x["write"]["iops"] for x in j)
print(f"{bw:10.1f} MiB/s {iops:10.0f} IOPS")
PY
    rm -f "$dir/.fio-$name.json"
}

for dir in "$@"; do
    [ -d "$dir" ] || { echo "$dir is not a directory" >&2; exit 1; }
    echo "== $dir"
    printf '%-34s' "seq write 1M, end_fsync"
    run "$dir" seqwrite --rw=write --bs=1M --size="$SIZE" --end_fsync=1
    sync; echo 1 >/proc/sys/vm/drop_caches 2>/dev/null || true
    printf '%-34s' "seq read 1M"
    run "$dir" seqread --rw=read --bs=1M --size="$SIZE" --invalidate=1
    printf '%-34s' "rand read 4K, 4 jobs"
    run "$dir" randread --rw=randread --bs=4k --size="$SIZE" --numjobs=4 \
        --time_based --runtime="$RUNTIME" --invalidate=1 --group_reporting
    printf '%-34s' "rand write 4K, 4 jobs, end_fsync"
    run "$dir" randwrite --rw=randwrite --bs=4k --size="$SIZE" --numjobs=4 \
        --time_based --runtime="$RUNTIME" --end_fsync=1 --group_reporting
    rm -f "$dir/fio-bench.dat"
done
