//! Fault injection: five real `ringfs-node` processes in network namespaces, concurrent
//! clients doing random file and metadata operations while a seeded nemesis kills nodes,
//! isolates the leader, partitions the cluster, slows links and disks, fills a disk,
//! corrupts block files, jumps clocks, and does two of these at once. Every operation is recorded (invoke, complete or unknown, result); after
//! everything heals, every file is read back byte-exact and the history is checked:
//! no acknowledged write lost, every read returns a value some write produced, file
//! contents and directory operations linearizable (`ringfs_core::history`).
//!
//! `RINGFS_FAULTS_SEED` replays a schedule (the seed is printed), `RINGFS_FAULTS_SECS`
//! sets how long faults are injected (default 90 s: the CI run; longer on demand).
//!
//! Also injected: a slow disk (one node's process throttled by a blkio cgroup to a few
//! I/O operations per second), wall-clock jumps of one node (libfaketime; forward by up
//! to three hours or back by up to one, monotonic clocks untouched, as a misbehaving NTP
//! server would do), and two faults at once (overlapping: e.g. a slow disk on one node
//! while another is killed). Slow links use netem where the kernel has it, else a
//! token-bucket rate limit and random loss.

mod common;
#[path = "faults/netns.rs"]
mod netns;

use common::{content, put_bytes, wait_for};
use netns::NetCluster;
use ringfs_client::{ClientError, Cluster, Vol};
use ringfs_core::fs::{FsError, FsOp, FsReply};
use ringfs_core::history::{self, Entry, FileOp, NamespaceModel, NsOp, Verdict};
use ringfs_core::slice::CHUNK_SIZE;
use ringfs_core::Ino;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NODES: u64 = 5;
const FILE_KEYS: usize = 5;
const NS_NAMES: u8 = 4;
const WORKERS: u64 = 6;
const OP_TIMEOUT: Duration = Duration::from_secs(20);
/// The node whose data directory is a small tmpfs (disk-full fault).
const SMALL_DISK_NODE: u64 = 5;
/// The one node whose block files get corrupted (one bad disk: the others stay good,
/// so every block keeps a good copy).
const BAD_DISK_NODE: u64 = 4;
const CHECK_BUDGET: u64 = 50_000_000;

/// splitmix64: small, seedable, good enough for schedules.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Fault {
    KillNode,
    IsolateLeader,
    PartitionMinorityMajority,
    KillAllRestart,
    SlowNetwork,
    DiskFull,
    CorruptBlocks,
    SlowDisk,
    ClockJump,
    /// Two of [`OVERLAPPABLE`] at once, healed in reverse order.
    Overlapping,
}
const FAULTS: [Fault; 10] = [
    Fault::KillNode,
    Fault::IsolateLeader,
    Fault::PartitionMinorityMajority,
    Fault::KillAllRestart,
    Fault::SlowNetwork,
    Fault::DiskFull,
    Fault::CorruptBlocks,
    Fault::SlowDisk,
    Fault::ClockJump,
    Fault::Overlapping,
];
/// Faults that can be combined (not killing everything, not two partitions).
const OVERLAPPABLE: [Fault; 7] = [
    Fault::KillNode,
    Fault::IsolateLeader,
    Fault::SlowNetwork,
    Fault::DiskFull,
    Fault::CorruptBlocks,
    Fault::SlowDisk,
    Fault::ClockJump,
];

/// A fault in effect, with what healing it needs.
enum Active {
    Killed(u64),
    Isolated(u64),
    Partitioned,
    AllKilled,
    SlowLinks(u64, u64),
    DiskFilled,
    Nothing,
    SlowDisk(u64),
    Clock(u64),
}

/// Operation counts by kind and outcome.
#[derive(Default)]
struct Counts(BTreeMap<(&'static str, &'static str), u64>);
impl Counts {
    fn add(&mut self, kind: &'static str, outcome: &'static str) {
        *self.0.entry((kind, outcome)).or_default() += 1;
    }
    fn outcome(&self, outcome: &str) -> u64 {
        self.0
            .iter()
            .filter(|((_, o), _)| *o == outcome)
            .map(|(_, n)| n)
            .sum()
    }
}

#[derive(Default)]
struct Recorder {
    files: HashMap<String, Vec<Entry<FileOp>>>,
    ns: Vec<Entry<NsOp>>,
    counts: Counts,
    /// Reads whose bytes matched no write's content (header or body damaged).
    corrupt_reads: Vec<String>,
}

struct Shared {
    start: Instant,
    rec: Mutex<Recorder>,
    stop: AtomicBool,
}

impl Shared {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

fn file_key(k: usize) -> String {
    format!("/k{k}")
}

fn ns_name(n: u8) -> Vec<u8> {
    format!("d{n}").into_bytes()
}

/// The bytes of write `id`: a header naming the write and its length, then
/// deterministic content, so a read is both identified and verified byte-exact.
fn file_bytes(id: u64, len: usize) -> Vec<u8> {
    let mut out = format!("ringfs-faults {id:016x} {len:08x}\n").into_bytes();
    out.extend_from_slice(&content(id, len));
    out
}

/// The write id `data` is, or `None` when it is not exactly some write's content.
fn identify(data: &[u8]) -> Option<u64> {
    let header = data.get(..40)?;
    let text = std::str::from_utf8(header).ok()?;
    let mut parts = text.trim_end().split(' ');
    (parts.next()? == "ringfs-faults").then_some(())?;
    let id = u64::from_str_radix(parts.next()?, 16).ok()?;
    let len = usize::from_str_radix(parts.next()?, 16).ok()?;
    (file_bytes(id, len) == data).then_some(id)
}

fn write_len(rng: &mut Rng) -> usize {
    match rng.below(20) {
        0 => (1 << 20) + rng.below(4 << 20) as usize, // 1-5 MiB: two blocks at most
        1..=3 => rng.below(1 << 20) as usize,
        _ => rng.below(64 << 10) as usize,
    }
}

async fn timed<T>(
    f: impl std::future::Future<Output = ringfs_client::Result<T>>,
) -> Option<ringfs_client::Result<T>> {
    tokio::time::timeout(OP_TIMEOUT, f).await.ok()
}

/// Reads file `key`, returning the history entry (None when the read failed: reads have
/// no effect, so a failed one is left out).
async fn read_key(vol: &Vol, shared: &Shared, key: &str) -> Option<FileOp> {
    // The path is resolved once (the read's linearization point); a NotFound there means
    // "no file", while a NotFound from the data read means the inode was replaced
    // meanwhile (a concurrent overwrite): then the read failed, it did not see "no file".
    let attr = match timed(vol.stat(key)).await {
        Some(Ok(a)) => a,
        Some(Err(ClientError::Fs(FsError::NotFound))) => return Some(FileOp::Read(None)),
        _ => return None,
    };
    let read = async {
        if attr.size == 0 {
            return Ok(Vec::new());
        }
        assert!(attr.size < CHUNK_SIZE, "test files fit one chunk");
        vol.read_chunk(attr.ino, 0, 0, attr.size as u32)
            .await
            .map(|b| b.to_vec())
    };
    match timed(read).await {
        Some(Ok(data)) => match identify(&data) {
            Some(id) => Some(FileOp::Read(Some(id))),
            None => {
                let head = String::from_utf8_lossy(&data[..data.len().min(40)]).into_owned();
                shared
                    .rec
                    .lock()
                    .unwrap()
                    .corrupt_reads
                    .push(format!("{key}: {} bytes starting {head:?}", data.len()));
                None
            }
        },
        _ => None,
    }
}

/// `vol` serves the file operations (its client retries, so a refusal may follow the
/// request's own success: file errors are unknown outcomes); `ns_vol` the namespace
/// operations, through a client that never retries.
async fn worker(w: u64, seed: u64, vol: Vol, ns_vol: Vol, ns_dir: Ino, shared: Arc<Shared>) {
    let mut rng = Rng(seed ^ (w.wrapping_mul(0xA24B_AED4_963E_E407)));
    let mut seq = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let roll = rng.below(100);
        let invoke = shared.now();
        if roll < 65 {
            let key = file_key(rng.below(FILE_KEYS as u64) as usize);
            if roll < 30 {
                seq += 1;
                let id = (w << 40) | seq;
                let data = file_bytes(id, write_len(&mut rng));
                let r = timed(put_bytes(&vol, &key, &data)).await;
                let complete = shared.now();
                let mut rec = shared.rec.lock().unwrap();
                let ok = matches!(r, Some(Ok(())));
                rec.counts.add("write", if ok { "ok" } else { "unknown" });
                rec.files.entry(key).or_default().push(Entry {
                    process: w,
                    op: FileOp::Write(id),
                    invoke,
                    complete: ok.then_some(complete),
                });
            } else if roll < 62 {
                let op = read_key(&vol, &shared, &key).await;
                let complete = shared.now();
                let mut rec = shared.rec.lock().unwrap();
                rec.counts
                    .add("read", if op.is_some() { "ok" } else { "fail" });
                if let Some(op) = op {
                    rec.files.entry(key).or_default().push(Entry {
                        process: w,
                        op,
                        invoke,
                        complete: Some(complete),
                    });
                }
            } else {
                let r = timed(vol.remove(&key)).await;
                let complete = shared.now();
                let mut rec = shared.rec.lock().unwrap();
                let ok = matches!(r, Some(Ok(())));
                // A failed unlink may still have happened: the client retries a request
                // whose answer was lost, and the retry then fails with NotFound.
                rec.counts.add("unlink", if ok { "ok" } else { "unknown" });
                rec.files.entry(key).or_default().push(Entry {
                    process: w,
                    op: FileOp::Delete,
                    invoke,
                    complete: ok.then_some(complete),
                });
            }
        } else {
            let a = rng.below(NS_NAMES as u64) as u8;
            let b = (a + 1 + rng.below(NS_NAMES as u64 - 1) as u8) % NS_NAMES;
            let (kind, op, fsop) = match roll {
                65..=74 => (
                    "mkdir",
                    NsOp::Mkdir(a),
                    FsOp::Mkdir {
                        parent: ns_dir,
                        name: ns_name(a),
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                    },
                ),
                75..=82 => (
                    "rmdir",
                    NsOp::Rmdir(a),
                    FsOp::Rmdir {
                        parent: ns_dir,
                        name: ns_name(a),
                    },
                ),
                83..=89 => (
                    "rename",
                    NsOp::Rename(a, b),
                    FsOp::Rename {
                        parent: ns_dir,
                        name: ns_name(a),
                        new_parent: ns_dir,
                        new_name: ns_name(b),
                        no_replace: false,
                    },
                ),
                _ => (
                    "lookup",
                    NsOp::Lookup(a, true),
                    FsOp::Lookup {
                        parent: ns_dir,
                        name: ns_name(a),
                    },
                ),
            };
            let r = timed(ns_vol.fs(fsop)).await;
            let complete = shared.now();
            let unknown = matches!(&r, None | Some(Err(_)));
            {
                let mut rec = shared.rec.lock().unwrap();
                let entry = |op, complete| Entry {
                    process: w,
                    op,
                    invoke,
                    complete,
                };
                let refused = |e: &ClientError| {
                    matches!(e, ClientError::Fs(FsError::Exists | FsError::NotFound))
                };
                match (kind, r) {
                    // The namespace client makes one attempt per call (no retries), so a
                    // refusal is a definite answer of the state machine: an observation.
                    ("mkdir", Some(Err(e))) if refused(&e) => {
                        rec.counts.add(kind, "refused");
                        rec.ns.push(entry(NsOp::Lookup(a, true), Some(complete)));
                    }
                    ("rmdir" | "rename", Some(Err(e))) if refused(&e) => {
                        rec.counts.add(kind, "refused");
                        rec.ns.push(entry(NsOp::Lookup(a, false), Some(complete)));
                    }
                    ("lookup", Some(Ok(_))) => {
                        rec.counts.add(kind, "ok");
                        rec.ns.push(entry(NsOp::Lookup(a, true), Some(complete)));
                    }
                    ("lookup", Some(Err(ClientError::Fs(FsError::NotFound)))) => {
                        rec.counts.add(kind, "ok");
                        rec.ns.push(entry(NsOp::Lookup(a, false), Some(complete)));
                    }
                    ("lookup", _) => rec.counts.add(kind, "fail"),
                    (_, Some(Ok(_))) => {
                        rec.counts.add(kind, "ok");
                        rec.ns.push(entry(op, Some(complete)));
                    }
                    (_, _) => {
                        // No answer, or no leader: it may still be applied.
                        rec.counts.add(kind, "unknown");
                        rec.ns.push(entry(op, None));
                    }
                }
            }
            if unknown {
                // Without retries a client would spin while the cluster has no leader.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn node_answers(client: &Cluster, addr: &str) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(3), client.node_status(addr)).await,
        Ok(Ok(_))
    )
}

/// Waits until a leader is known and every node answers. Like a supervisor (the kubelet
/// restarting a pod), it restarts a node that has exited meanwhile and notes it: a node
/// exits by design on a fatal storage error (ENOSPC), and may do so only after draining
/// its requests, after the fault that caused it has already been healed.
async fn wait_available(
    c: &mut NetCluster,
    client: &Arc<Cluster>,
    what: &str,
    notes: &mut Vec<String>,
) {
    let timeout = Duration::from_secs(120);
    let deadline = Instant::now() + timeout;
    loop {
        for i in 1..=NODES {
            if !c.is_running(i) {
                notes.push(format!("node {i} had exited before: {what}"));
                c.start(i);
            }
        }
        let addrs: Vec<String> = (1..=NODES).map(|i| c.node(i).addr.clone()).collect();
        let mut all = true;
        for addr in &addrs {
            if !node_answers(client, addr).await {
                all = false;
                break;
            }
        }
        if all {
            let status = tokio::time::timeout(Duration::from_secs(5), client.status()).await;
            if matches!(status, Ok(Ok(s)) if s.leader_id != 0) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn leader(client: &Arc<Cluster>) -> u64 {
    wait_for("a leader", Duration::from_secs(60), || async {
        let s = tokio::time::timeout(Duration::from_secs(5), client.status())
            .await
            .ok()?
            .ok()?;
        (s.leader_id != 0).then_some(s.leader_id)
    })
    .await
}

/// Starts `fault`; returns what is in effect and a description.
async fn begin(
    c: &mut NetCluster,
    client: &Arc<Cluster>,
    rng: &mut Rng,
    fault: Fault,
) -> (Active, String) {
    match fault {
        Fault::KillNode => {
            let id = 1 + rng.below(NODES);
            c.kill(id);
            (Active::Killed(id), format!("kill -9 node {id}"))
        }
        Fault::IsolateLeader => {
            let id = leader(client).await;
            c.isolate(id);
            (Active::Isolated(id), format!("leader {id} isolated"))
        }
        Fault::PartitionMinorityMajority => {
            // Two nodes (the leader among them half the time) against three.
            let l = leader(client).await;
            let mut ids: Vec<u64> = (1..=NODES).collect();
            for i in (1..ids.len()).rev() {
                ids.swap(i, rng.below(i as u64 + 1) as usize);
            }
            if rng.below(2) == 0 {
                let p = ids.iter().position(|&x| x == l).unwrap();
                ids.swap(0, p);
            }
            let (minority, majority) = ids.split_at(2);
            c.partition(minority, majority);
            (
                Active::Partitioned,
                format!("partition {minority:?} | {majority:?} (leader was {l})"),
            )
        }
        Fault::KillAllRestart => {
            for i in 1..=NODES {
                c.kill(i);
            }
            (Active::AllKilled, "all nodes killed".to_string())
        }
        Fault::SlowNetwork => {
            let a = 1 + rng.below(NODES);
            let b = 1 + (a + rng.below(NODES - 1)) % NODES;
            let mut how = String::new();
            for id in [a, b] {
                how = c.slow_link(id, "4mbit", 2);
            }
            (
                Active::SlowLinks(a, b),
                format!("slow links ({how}) on nodes {a} and {b}"),
            )
        }
        Fault::DiskFull => {
            let filled = c.fill_disk(SMALL_DISK_NODE);
            (
                Active::DiskFilled,
                format!(
                    "disk of node {SMALL_DISK_NODE} filled ({} MiB)",
                    filled >> 20
                ),
            )
        }
        Fault::CorruptBlocks => {
            let files = c.block_files(BAD_DISK_NODE);
            let mut picked = Vec::new();
            for _ in 0..5.min(files.len()) {
                picked.push(files[rng.below(files.len() as u64) as usize].clone());
            }
            let seed = rng.next();
            let n = NetCluster::corrupt(&picked, |len| seed % len);
            (
                Active::Nothing,
                format!(
                    "{n} of {} block files on node {BAD_DISK_NODE} corrupted",
                    files.len()
                ),
            )
        }
        Fault::SlowDisk => {
            // Not the tmpfs node (no block device to throttle).
            let id = 1 + rng.below(NODES - 1);
            if !c.is_running(id) {
                c.start(id);
            }
            let iops = 5 + rng.below(16);
            match c.slow_disk(id, iops, 1 << 20) {
                Ok(how) => (
                    Active::SlowDisk(id),
                    format!("slow disk on node {id}: {how}"),
                ),
                Err(e) => panic!("cannot slow node {id}'s disk: {e}"),
            }
        }
        Fault::ClockJump => {
            let id = 1 + rng.below(NODES);
            // Forward up to 3 h or back up to 1 h.
            let offset = if rng.below(2) == 0 {
                60 + rng.below(3 * 3600) as i64
            } else {
                -(60 + rng.below(3600) as i64)
            };
            c.jump_clock(id, offset);
            (
                Active::Clock(id),
                format!("node {id}'s wall clock jumped {offset:+} s"),
            )
        }
        Fault::Overlapping => unreachable!("begin() takes single faults"),
    }
}

/// Heals what `begin` started; returns a note about it, if any.
fn end(c: &mut NetCluster, rng: &mut Rng, active: Active) -> Option<String> {
    match active {
        Active::Killed(id) => {
            if !c.is_running(id) {
                c.start(id);
            }
            None
        }
        Active::Isolated(id) => {
            c.heal_net(id);
            None
        }
        Active::Partitioned => {
            for i in 1..=NODES {
                c.heal_net(i);
            }
            None
        }
        Active::AllKilled => {
            for i in 1..=NODES {
                if !c.is_running(i) {
                    c.start(i);
                }
            }
            None
        }
        Active::SlowLinks(a, b) => {
            c.heal_net(a);
            c.heal_net(b);
            None
        }
        Active::DiskFilled => {
            c.free_disk(SMALL_DISK_NODE);
            let crashed = !c.is_running(SMALL_DISK_NODE);
            if crashed {
                c.start(SMALL_DISK_NODE);
            }
            crashed.then(|| "the node exited on ENOSPC and was restarted".to_string())
        }
        Active::Nothing => None,
        Active::SlowDisk(id) => {
            let ios = c.slow_disk_ios(id);
            c.heal_disk(id);
            ios.map(|n| format!("{n} throttled I/O operations"))
        }
        Active::Clock(id) => {
            // Set right again, or (one time in three) left a minute off, as after an
            // imperfect correction.
            let left = if rng.below(3) == 0 { 60 } else { 0 };
            c.jump_clock(id, left);
            (left != 0).then(|| format!("clock left {left} s ahead"))
        }
    }
}

/// Injects one fault (or two at once), holds it, heals it, and waits until the cluster
/// is available.
async fn inject(
    c: &mut NetCluster,
    client: &Arc<Cluster>,
    rng: &mut Rng,
    fault: Fault,
    notes: &mut Vec<String>,
) {
    let hold = match fault {
        Fault::KillAllRestart => rng.millis(500, 2000),
        _ => rng.millis(2000, 6000),
    };
    let t = Instant::now();
    let kinds = if fault == Fault::Overlapping {
        let a = OVERLAPPABLE[rng.below(OVERLAPPABLE.len() as u64) as usize];
        let mut b = a;
        while b == a {
            b = OVERLAPPABLE[rng.below(OVERLAPPABLE.len() as u64) as usize];
        }
        vec![a, b]
    } else {
        vec![fault]
    };
    let mut active = Vec::new();
    let mut descs = Vec::new();
    for k in &kinds {
        let (a, d) = begin(c, client, rng, *k).await;
        active.push(a);
        descs.push(d);
    }
    tokio::time::sleep(hold).await;
    while let Some(a) = active.pop() {
        if let Some(note) = end(c, rng, a) {
            let i = active.len();
            descs[i] = format!("{}; {note}", descs[i]);
        }
    }
    let desc = descs.join(" + ");
    wait_available(
        c,
        client,
        &format!("cluster available after: {desc}"),
        notes,
    )
    .await;
    eprintln!(
        "[nemesis] {:>7.1}s {fault:?}: {desc} ({:.1}s until available again)",
        c_elapsed(),
        t.elapsed().as_secs_f64()
    );
}

fn c_elapsed() -> f64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_history_is_linearizable() {
    if let Err(e) = netns::available() {
        panic!("cannot run the fault-injection suite: {e}");
    }
    let _ = c_elapsed();
    let seed = std::env::var("RINGFS_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let secs = std::env::var("RINGFS_FAULTS_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(90);
    eprintln!("faults: seed {seed} (replay with RINGFS_FAULTS_SEED={seed}), {secs} s of faults");
    let run_start = Instant::now();

    let mut c = NetCluster::create(
        NODES as usize,
        Some((SMALL_DISK_NODE, 384)),
        // Nodes are never declared down during a fault (no repair churn); scrub runs
        // often so corrupted copies are also found in the background.
        &["--down-grace-secs", "3600", "--scrub-interval-secs", "20"],
    );
    for i in 1..=NODES {
        c.start(i);
        let client = Cluster::new(vec![c.node(i).addr.clone()]).unwrap();
        let addr = c.node(i).addr.clone();
        wait_for(
            &format!("node {i} to answer"),
            Duration::from_secs(60),
            || {
                let client = client.clone();
                let addr = addr.clone();
                async move { node_answers(&client, &addr).await.then_some(()) }
            },
        )
        .await;
    }
    let client = Cluster::new(c.seeds()).unwrap();
    wait_for("the cluster to form", Duration::from_secs(120), || {
        let client = client.clone();
        async move {
            let s = client.status().await.ok()?;
            (s.nodes.len() == NODES as usize && s.replication == 3 && s.leader_id != 0)
                .then_some(())
        }
    })
    .await;
    client
        .create_volume("faults", 10 << 30, 3)
        .await
        .expect("create volume");
    let vol = Vol::open(client.clone(), "faults").await.unwrap();
    let ns_dir = vol.mkdir("/ns", 0o755).await.unwrap().ino;

    let shared = Arc::new(Shared {
        start: Instant::now(),
        rec: Mutex::new(Recorder::default()),
        stop: AtomicBool::new(false),
    });
    let mut ns_client = Cluster::new(c.seeds()).unwrap();
    Arc::get_mut(&mut ns_client).unwrap().retry_budget = Duration::ZERO;
    let ns_vol = Vol {
        cluster: ns_client,
        ..vol.clone()
    };
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            tokio::spawn(worker(
                w + 1,
                seed,
                vol.clone(),
                ns_vol.clone(),
                ns_dir,
                shared.clone(),
            ))
        })
        .collect();

    // The nemesis: every kind once in a seeded order, then random kinds, until time is up.
    let mut rng = Rng(seed);
    let mut order: Vec<Fault> = FAULTS.to_vec();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut injected: BTreeMap<Fault, u64> = BTreeMap::new();
    let mut notes = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut k = 0usize;
    while Instant::now() < end || k < FAULTS.len() {
        tokio::time::sleep(rng.millis(1000, 3000)).await;
        let fault = order
            .get(k)
            .copied()
            .unwrap_or_else(|| FAULTS[rng.below(FAULTS.len() as u64) as usize]);
        k += 1;
        inject(&mut c, &client, &mut rng, fault, &mut notes).await;
        *injected.entry(fault).or_default() += 1;
    }
    // A little more load on the healed cluster, then stop the clients.
    tokio::time::sleep(Duration::from_secs(3)).await;
    shared.stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }

    // Heal everything (already healed after each fault; this is the safety net) and
    // wait for a healthy cluster.
    for i in 1..=NODES {
        c.heal_net(i);
        c.heal_disk(i);
        if !c.is_running(i) {
            c.start(i);
        }
    }
    c.free_disk(SMALL_DISK_NODE);
    wait_available(&mut c, &client, "cluster available at the end", &mut notes).await;
    wait_for("a healthy cluster", Duration::from_secs(180), || {
        let client = client.clone();
        async move {
            let r = client.rebalance_status().await.ok()?;
            (r.healthy && r.live_versions.len() == 1 && r.partitions_left == 0).then_some(())
        }
    })
    .await;

    // Final reads: every file, byte-exact, into the history as the last operations.
    let mut finals: HashMap<String, Option<u64>> = HashMap::new();
    for k in 0..FILE_KEYS {
        let key = file_key(k);
        let (invoke, op) = wait_for(
            &format!("final read of {key}"),
            Duration::from_secs(120),
            || {
                let vol = vol.clone();
                let shared = shared.clone();
                let key = key.clone();
                async move {
                    let invoke = shared.now();
                    read_key(&vol, &shared, &key).await.map(|op| (invoke, op))
                }
            },
        )
        .await;
        let complete = shared.now();
        let FileOp::Read(v) = op else { unreachable!() };
        finals.insert(key.clone(), v);
        let mut rec = shared.rec.lock().unwrap();
        rec.counts.add("final read", "ok");
        rec.files.entry(key).or_default().push(Entry {
            process: 0,
            op,
            invoke,
            complete: Some(complete),
        });
    }
    for n in 0..NS_NAMES {
        let invoke = shared.now();
        let found = wait_for("final lookup", Duration::from_secs(60), || {
            let vol = vol.clone();
            async move {
                match vol
                    .fs(FsOp::Lookup {
                        parent: ns_dir,
                        name: ns_name(n),
                    })
                    .await
                {
                    Ok(FsReply::Attr(_)) => Some(true),
                    Err(ClientError::Fs(FsError::NotFound)) => Some(false),
                    _ => None,
                }
            }
        })
        .await;
        let complete = shared.now();
        let mut rec = shared.rec.lock().unwrap();
        rec.counts.add("final lookup", "ok");
        rec.ns.push(Entry {
            process: 0,
            op: NsOp::Lookup(n, found),
            invoke,
            complete: Some(complete),
        });
    }

    // Check.
    let check_start = Instant::now();
    let rec = shared.rec.lock().unwrap();
    let files = history::check_files(&rec.files, &finals, CHECK_BUDGET);
    let ns_verdict = history::check(&NamespaceModel, &rec.ns, CHECK_BUDGET);
    let check_time = check_start.elapsed();

    eprintln!("==== fault injection summary (seed {seed}) ====");
    eprintln!("faults injected per kind:");
    for (f, n) in &injected {
        eprintln!("  {f:?}: {n}");
    }
    for n in &notes {
        eprintln!("  note: {n}");
    }
    eprintln!("operations per kind and outcome:");
    for ((kind, outcome), n) in &rec.counts.0 {
        eprintln!("  {kind} {outcome}: {n}");
    }
    eprintln!(
        "operations: {} ok, {} refused (checked as observations), {} failed (reads without effect), {} unknown outcome",
        rec.counts.outcome("ok"),
        rec.counts.outcome("refused"),
        rec.counts.outcome("fail"),
        rec.counts.outcome("unknown")
    );
    eprintln!(
        "checked: {} file operations on {} files, {} namespace operations (check took {:.1}s)",
        files.operations,
        files.objects,
        rec.ns.len(),
        check_time.as_secs_f64()
    );
    for (key, i) in &files.lost {
        eprintln!("LOST acknowledged write: {key} {:?}", rec.files[key][*i]);
    }
    for (key, i) in &files.unproduced {
        eprintln!(
            "read of a value never written: {key} {:?}",
            rec.files[key][*i]
        );
    }
    for (key, v) in &files.violations {
        if let Verdict::Violation { stuck, .. } = v {
            eprintln!(
                "NOT LINEARIZABLE: {key}: {v:?}, stuck at {:?}",
                rec.files[key].get(*stuck)
            );
        }
    }
    for c in &rec.corrupt_reads {
        eprintln!("read returned bytes no write produced: {c}");
    }
    let ns_violations = usize::from(ns_verdict.is_violation());
    if let Verdict::Violation { stuck, .. } = &ns_verdict {
        eprintln!(
            "NOT LINEARIZABLE: namespace: {ns_verdict:?}, stuck at {:?}",
            rec.ns.get(*stuck)
        );
    }
    let inconclusive =
        files.inconclusive.len() + usize::from(matches!(ns_verdict, Verdict::Inconclusive { .. }));
    eprintln!("acknowledged writes lost: {}", files.lost.len());
    eprintln!(
        "linearizability violations: {} (files {}, namespace {ns_violations}); inconclusive checks: {inconclusive}",
        files.violations.len() + ns_violations,
        files.violations.len()
    );
    eprintln!("run time: {:.1}s", run_start.elapsed().as_secs_f64());

    let writes_ok = rec.counts.0.get(&("write", "ok")).copied().unwrap_or(0);
    assert!(
        writes_ok >= 20,
        "only {writes_ok} writes succeeded: the run checked too little"
    );
    assert_eq!(injected.len(), FAULTS.len(), "every fault kind is injected");
    assert!(files.lost.is_empty(), "acknowledged writes were lost");
    assert!(
        files.unproduced.is_empty(),
        "reads returned unwritten values"
    );
    assert!(rec.corrupt_reads.is_empty(), "reads returned corrupt bytes");
    assert!(
        files.violations.is_empty() && ns_violations == 0,
        "linearizability violations"
    );
    assert_eq!(inconclusive, 0, "a check hit its budget (seed {seed})");
}
