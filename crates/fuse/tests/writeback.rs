//! Honest errors through a real FUSE mount: write-back failures reach fsync and close,
//! files renamed over stay readable by their open handles, and a mount's buffered writes
//! stay within its memory budget. (Node failures under a mount: `faults.rs`.)

mod common;

use common::*;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::time::Duration;

const MIB: usize = 1 << 20;

/// 20 MiB written in 1 MiB writes into an 8 MiB volume, the failing `write()`s ignored,
/// the volume grown before `fsync`: fsync and close report the failure, or every byte
/// `write()` accepted is in the file — never success with data missing (the data of
/// accepted writes stays buffered across the failed flushes).
#[test]
fn write_back_errors_reach_fsync_and_close() {
    if !require_fuse() {
        return;
    }
    let rt = runtime();
    let c = rt.block_on(TestCluster::start(3));
    let vol = rt.block_on(c.volume("small", 8 << 20, 3));
    let m = mount(&c, vol.clone(), "m", Default::default(), &rt);
    let path = m.dir().join("big");
    let f = fs::File::create(&path).unwrap();
    let mut accepted = Vec::new();
    let mut failed = 0;
    for i in 0..20u64 {
        let data = content(i, MIB);
        match f.write_at(&data, i * MIB as u64) {
            Ok(n) if n == MIB => accepted.push(i),
            Ok(n) => panic!("short write of {n} bytes"),
            Err(_) => failed += 1,
        }
    }
    assert!(
        failed > 0,
        "an 8 MiB volume took 20 MiB without a failed write"
    );
    rt.block_on(vol.cluster.resize_volume("small", 1 << 30))
        .expect("resize");
    let synced = f.sync_all();
    let closed = {
        // close(2) through the file descriptor, to see its result.
        use std::os::fd::IntoRawFd;
        let fd = f.into_raw_fd();
        // SAFETY: fd is a file descriptor this test owns and closes exactly once.
        unsafe { libc::close(fd) }
    };
    let reported = synced.is_err() || closed != 0;
    let got = fs::read(&path).unwrap();
    let mut missing = Vec::new();
    for &i in &accepted {
        let at = i as usize * MIB;
        if got.get(at..at + MIB) != Some(content(i, MIB).as_slice()) {
            missing.push(i);
        }
    }
    eprintln!(
        "accepted writes {accepted:?}, {failed} failed; fsync {synced:?}, close {closed}; \
         file {} bytes; accepted writes missing: {missing:?}",
        got.len()
    );
    assert!(
        reported || missing.is_empty(),
        "fsync and close said OK while accepted writes {missing:?} are missing"
    );
    // Buffered data is never dropped while a later flush can succeed: here everything
    // accepted made it once the volume was grown.
    assert!(
        missing.is_empty(),
        "accepted writes {missing:?} were dropped"
    );
    m.unmount().unwrap();
}

/// The write-new-then-rename-over pattern: a reader holding the old file keeps reading
/// its old contents to the end, then the old file is gone.
#[test]
fn a_reader_keeps_reading_a_file_renamed_over() {
    if !require_fuse() {
        return;
    }
    let rt = runtime();
    let c = rt.block_on(TestCluster::start(3));
    let vol = rt.block_on(c.volume("rename", 1 << 30, 3));
    let m = mount(&c, vol.clone(), "m", Default::default(), &rt);
    let dir = m.dir().to_path_buf();
    let old = content(1, 8 * MIB);
    let new = content(2, 2 * MIB);
    fs::write(dir.join("conf"), &old).unwrap();
    let mut reader = fs::File::open(dir.join("conf")).unwrap();
    let mut head = vec![0u8; 4096];
    reader.read_exact(&mut head).unwrap();
    fs::write(dir.join("conf.new"), &new).unwrap();
    fs::rename(dir.join("conf.new"), dir.join("conf")).unwrap();
    assert_eq!(
        fs::read(dir.join("conf")).unwrap(),
        new,
        "the new file is in place"
    );
    // Out of the page cache: the rest must come from the cluster, from the old inode.
    fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    head.extend_from_slice(&rest);
    assert_eq!(head.len(), old.len());
    assert!(
        head == old,
        "the open handle read other bytes than the old file's"
    );
    // Reading again from the start through the same handle still gives the old file.
    reader.seek(SeekFrom::Start(0)).unwrap();
    let mut again = Vec::new();
    reader.read_to_end(&mut again).unwrap();
    assert!(again == old);
    let used_before = rt
        .block_on(vol.cluster.volume("rename"))
        .expect("volume")
        .used_bytes;
    drop(reader);
    // The last close releases the replaced file: its bytes leave the volume's usage.
    wait_until(
        "the replaced file to be released",
        Duration::from_secs(30),
        || {
            rt.block_on(vol.cluster.volume("rename"))
                .map(|v| v.used_bytes < used_before)
                .unwrap_or(false)
        },
    );
    m.unmount().unwrap();
}

/// Many files written at once stay within the mount's write budget: past it, a write
/// commits its own file's buffer before adding to it. Six files of 4 MiB, each under the
/// per-file flush threshold and all kept open: without the budget all 24 MiB would sit
/// in memory until close; with an 8 MiB budget at most the budget plus one write per file
/// may.
#[test]
fn buffered_writes_stay_within_the_mount_budget() {
    if !require_fuse() {
        return;
    }
    let rt = runtime();
    let c = rt.block_on(TestCluster::start(3));
    let vol = rt.block_on(c.volume("budget", 1 << 30, 3));
    let opts = ringfs_fuse::MountOptions {
        write_budget: 8 * MIB,
        ..Default::default()
    };
    let m = mount(&c, vol.clone(), "m", opts, &rt);
    let files: Vec<fs::File> = (0..6)
        .map(|i| fs::File::create(m.dir().join(format!("f{i}"))).unwrap())
        .collect();
    for round in 0..4u64 {
        for (i, f) in files.iter().enumerate() {
            let data = content(round * 10 + i as u64, MIB);
            f.write_all_at(&data, round * MIB as u64).unwrap();
        }
    }
    // Nothing was closed or synced: what the volume's usage lacks is still buffered.
    let used = rt
        .block_on(vol.cluster.volume("budget"))
        .expect("volume")
        .used_bytes;
    let buffered = (24 * MIB as u64).saturating_sub(used);
    eprintln!("24 MiB written, {used} bytes committed, {buffered} buffered");
    assert!(
        buffered <= (8 + 6) as u64 * MIB as u64,
        "{buffered} bytes buffered with an 8 MiB write budget"
    );
    for (i, f) in files.into_iter().enumerate() {
        f.sync_all().unwrap();
        drop(f);
        let got = fs::read(m.dir().join(format!("f{i}"))).unwrap();
        for round in 0..4u64 {
            let at = round as usize * MIB;
            assert!(
                got[at..at + MIB] == content(round * 10 + i as u64, MIB),
                "file {i}, MiB {round}"
            );
        }
    }
    m.unmount().unwrap();
}
