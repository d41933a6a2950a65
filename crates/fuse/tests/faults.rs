//! A real FUSE mount over a cluster whose nodes fail: fsync with every replica down
//! fails and keeps the data; O_APPEND records from two mounts survive leader kills
//! exactly once.
//!
//! These tests stop or kill every node of their cluster, which slows anything else on the
//! machine's two cores: they run one at a time ([`one_at_a_time`]), and a watchdog ends
//! the binary with a message when one hangs (a FUSE request the kernel waits for forever
//! would otherwise hold the whole test run).

mod common;

use common::*;
use std::fs;
use std::io::Write;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

const MIB: usize = 1 << 20;

/// Longest one test here may take before the watchdog ends the binary.
const TEST_LIMIT: Duration = Duration::from_secs(600);

/// Serialises the tests of this binary and arms a watchdog for the one holding it: the
/// guard must live to the end of the test.
fn one_at_a_time(what: &'static str) -> (MutexGuard<'static, ()>, Watchdog) {
    static LOCK: Mutex<()> = Mutex::new(());
    // A test that failed while holding the lock poisoned it; the next one may still run.
    let guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    (guard, Watchdog::arm(what, TEST_LIMIT))
}

/// Ends the process when not dropped within its limit.
struct Watchdog(Option<std::sync::mpsc::Sender<()>>);

impl Watchdog {
    fn arm(what: &'static str, limit: Duration) -> Watchdog {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("WATCHDOG: test '{what}' still running after {limit:?}: aborting");
                std::process::exit(101);
            }
        });
        Watchdog(Some(tx))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Disarms: the watchdog thread sees the channel closed.
        self.0.take();
    }
}

/// With every node down (all three frozen with SIGSTOP: unreachable, as after a power
/// cut of their hosts), fsync fails and the data stays buffered; once the nodes are back,
/// the next fsync commits it and the file holds every byte.
#[test]
fn fsync_with_every_replica_down_fails_and_keeps_the_data() {
    if !require_fuse() {
        return;
    }
    let _one = one_at_a_time("fsync with every replica down");
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

/// Two mounts append numbered records with O_APPEND and fsync while the leader is killed
/// again and again: every acknowledged record (write and fsync returned success) is in
/// the file exactly once, no record is torn, and none appears twice.
#[test]
fn appends_from_two_mounts_survive_leader_kills_exactly_once() {
    if !require_fuse() {
        return;
    }
    let _one = one_at_a_time("appends from two mounts across leader kills");
    let rt = runtime();
    let mut c = rt.block_on(TestCluster::start(3));
    let vol = rt.block_on(c.volume("appends", 1 << 30, 3));
    let a = mount(&c, vol.clone(), "a", Default::default(), &rt);
    let b = mount(&c, vol, "b", Default::default(), &rt);
    fs::write(a.dir().join("log"), b"").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers: Vec<_> = [(0u8, a.dir().to_path_buf()), (1u8, b.dir().to_path_buf())]
        .into_iter()
        .map(|(id, dir)| {
            let stop = stop.clone();
            let acked_count = acked.clone();
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
                        acked_count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    seq += 1;
                }
                (id, acked, seq)
            })
        })
        .collect();
    // Paced by progress, not by the clock: each kill comes after both writers got
    // records acknowledged since the previous one, and the run ends the same way.
    let acked_since = |n: usize| {
        let start = acked.load(std::sync::atomic::Ordering::Relaxed);
        wait_until(
            "both mounts to get records acknowledged",
            Duration::from_secs(120),
            || acked.load(std::sync::atomic::Ordering::Relaxed) >= start + n,
        );
    };
    let mut kills = 0;
    for _ in 0..6 {
        acked_since(20);
        let leader = rt.block_on(c.leader());
        c.kill(leader);
        kills += 1;
        // The writers retry against the survivors meanwhile (a new leader is elected).
        acked_since(5);
        c.restart(leader);
        rt.block_on(c.wait_formed(3));
    }
    acked_since(20);
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
