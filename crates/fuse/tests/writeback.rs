//! Honest errors and exactly-once appends through a real FUSE mount: write-back failures
//! reach fsync and close, files renamed over stay readable by their open handles, and
//! O_APPEND records from two mounts survive leader kills exactly once.

mod common;

use common::*;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
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

/// With every node down (all three frozen with SIGSTOP: unreachable, as after a power
/// cut of their hosts), fsync fails and the data stays buffered; once the nodes are back,
/// the next fsync commits it and the file holds every byte.
#[test]
#[ignore = "not yet reliable next to other mounts (an unmount left busy, or a cluster slow to re-form, hung the test binary in parallel runs): run with --ignored --test-threads=1; issue 17"]
fn fsync_with_every_replica_down_fails_and_keeps_the_data() {
    if !require_fuse() {
        return;
    }
    let rt = runtime();
    let c = rt.block_on(TestCluster::start(3));
    let vol = rt.block_on(c.volume("down", 1 << 30, 3));
    let m = mount(&c, vol, "m", Default::default(), &rt);
    let path = m.dir().join("f");
    let data = content(7, 3 * MIB);
    let mut f = fs::File::create(&path).unwrap();
    f.write_all(&data).unwrap();
    for id in 1..=3 {
        signal_node(&c, id, libc::SIGSTOP);
    }
    let synced = f.sync_all();
    for id in 1..=3 {
        signal_node(&c, id, libc::SIGCONT);
    }
    assert!(synced.is_err(), "fsync succeeded with every node down");
    rt.block_on(c.wait_formed(3));
    // The failure was reported once; the data is still buffered and commits now.
    wait_until("fsync to succeed", Duration::from_secs(120), || {
        f.sync_all().is_ok()
    });
    drop(f);
    assert_eq!(fs::read(&path).unwrap(), data);
    unmount_when_released(m);
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

/// Two mounts append numbered records with O_APPEND and fsync while the leader is killed
/// again and again: every acknowledged record (write and fsync returned success) is in
/// the file exactly once, no record is torn, and none appears twice.
#[test]
#[ignore = "not yet reliable next to other mounts (an unmount left busy, or a cluster slow to re-form, hung the test binary in parallel runs): run with --ignored --test-threads=1; issue 17"]
fn appends_from_two_mounts_survive_leader_kills_exactly_once() {
    if !require_fuse() {
        return;
    }
    let rt = runtime();
    let mut c = rt.block_on(TestCluster::start(3));
    let vol = rt.block_on(c.volume("appends", 1 << 30, 3));
    let a = mount(&c, vol.clone(), "a", Default::default(), &rt);
    let b = mount(&c, vol, "b", Default::default(), &rt);
    fs::write(a.dir().join("log"), b"").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = [(0u8, a.dir().to_path_buf()), (1u8, b.dir().to_path_buf())]
        .into_iter()
        .map(|(id, dir)| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut f = fs::OpenOptions::new()
                    .append(true)
                    .open(dir.join("log"))
                    .unwrap();
                let mut acked = Vec::new();
                let mut seq = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let ok = f.write_all(&record(id, seq)).is_ok() && f.sync_data().is_ok();
                    if ok {
                        acked.push(seq);
                    }
                    seq += 1;
                }
                (id, acked, seq)
            })
        })
        .collect();
    let mut kills = 0;
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(1500));
        let leader = rt.block_on(c.leader());
        c.kill(leader);
        kills += 1;
        std::thread::sleep(Duration::from_millis(1000));
        c.restart(leader);
        rt.block_on(c.wait_formed(3));
    }
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let results: Vec<(u8, Vec<u32>, u32)> =
        writers.into_iter().map(|w| w.join().unwrap()).collect();
    let data = fs::read(a.dir().join("log")).unwrap();
    assert_eq!(data.len() % 64, 0, "a torn record: {} bytes", data.len());
    let mut seen: std::collections::HashMap<(u8, u32), u32> = Default::default();
    for rec in data.chunks(64) {
        let id = rec[1].wrapping_sub(b'0');
        let seq: u32 = std::str::from_utf8(&rec[3..11])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("torn record {:?}", String::from_utf8_lossy(rec)));
        assert_eq!(rec, record(id, seq).as_slice(), "torn record");
        *seen.entry((id, seq)).or_default() += 1;
    }
    let mut acked_total = 0;
    for (id, acked, sent) in &results {
        acked_total += acked.len();
        for seq in acked {
            assert_eq!(
                seen.get(&(*id, *seq)).copied().unwrap_or(0),
                1,
                "writer {id}: acknowledged record {seq} is not there exactly once"
            );
        }
        eprintln!(
            "writer {id}: {} of {sent} records acknowledged",
            acked.len()
        );
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "records appended twice: {dups:?}");
    assert!(
        acked_total > 50,
        "only {acked_total} records acknowledged across {kills} kills"
    );
    a.unmount().unwrap();
    b.unmount().unwrap();
}
