//! Cluster tests with real `ringfs-node` processes: replication, node loss, restarts,
//! corruption, and refusal of bad input.

mod common;

use common::*;
use ringfs_client::ClientError;
use ringfs_core::fs::FsError;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

/// Mixed sizes from 0 B to 20 MiB: mostly small files, some medium, a few large.
fn size_of(i: u64) -> usize {
    match i % 50 {
        0 => 20 * MIB - (i as usize * 4099) % MIB, // ~19-20 MiB
        1 => 0,
        n if n % 10 == 5 => MIB + (i as usize * 7919) % (3 * MIB),
        _ => (i as usize * 104_729) % (64 << 10),
    }
}

async fn write_files(vol: &ringfs_client::Vol, range: std::ops::Range<u64>) -> (usize, Duration) {
    let start = Instant::now();
    let mut bytes = 0;
    for i in range {
        let data = content(i, size_of(i));
        bytes += data.len();
        put_bytes(vol, &format!("/d{}/f{i}", i % 10), &data)
            .await
            .unwrap_or_else(|e| panic!("writing file {i} ({} bytes): {e}", data.len()));
    }
    (bytes, start.elapsed())
}

async fn verify_files(vol: &ringfs_client::Vol, range: std::ops::Range<u64>) {
    for i in range {
        let got = get_bytes(vol, &format!("/d{}/f{i}", i % 10))
            .await
            .unwrap_or_else(|e| panic!("reading file {i}: {e}"));
        let want = content(i, size_of(i));
        assert!(
            got.len() == want.len() && got == want,
            "file {i}: content differs ({} vs {} bytes)",
            got.len(),
            want.len()
        );
    }
}

async fn make_dirs(vol: &ringfs_client::Vol) {
    for d in 0..10 {
        vol.mkdir_p(&format!("/d{d}")).await.expect("mkdir");
    }
}

fn report(what: &str, files: u64, bytes: usize, took: Duration) {
    let s = took.as_secs_f64().max(1e-9);
    eprintln!(
        "[measure] {what}: {files} files, {:.1} MiB in {:.2}s = {:.1} files/s, {:.1} MiB/s",
        bytes as f64 / MIB as f64,
        s,
        files as f64 / s,
        bytes as f64 / MIB as f64 / s
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_survive_follower_kill_and_full_restart() {
    let mut c = TestCluster::start(3).await;
    let vol = c.volume("data", 100 << 30, 3).await;
    make_dirs(&vol).await;

    let (bytes, took) = write_files(&vol, 0..500).await;
    report("write 500 files, 3 nodes RF3", 500, bytes, took);
    let t = Instant::now();
    verify_files(&vol, 0..500).await;
    report("read 500 files", 500, bytes, t.elapsed());

    // Lose a follower: writes need only a quorum, reads fail over.
    let leader = c.leader().await;
    let victim = (1..=3).find(|i| *i != leader).expect("a follower");
    c.kill(victim);
    let (bytes2, took2) = write_files(&vol, 500..600).await;
    report("write 100 files with one node down", 100, bytes2, took2);
    verify_files(&vol, 0..600).await;

    // Bring it back, then restart the whole cluster from disk.
    c.restart(victim);
    c.wait_formed(3).await;
    for id in 1..=3 {
        c.kill(id);
    }
    for id in 1..=3 {
        c.restart(id);
    }
    c.wait_formed(3).await;
    let vol = ringfs_client::Vol::open(c.client(), "data")
        .await
        .expect("volume after restart");
    verify_files(&vol, 0..600).await;
    let v = c.client().volume("data").await.expect("volume");
    let expected: usize = (0..600).map(size_of).sum();
    assert_eq!(
        v.used_bytes, expected as u64,
        "quota accounting survives restarts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_continue_after_leader_kill() {
    let mut c = TestCluster::start(3).await;
    let vol = c.volume("data", 100 << 30, 3).await;
    make_dirs(&vol).await;
    write_files(&vol, 0..100).await;
    let leader = c.leader().await;
    c.kill(leader);
    let t = Instant::now();
    let new_leader = wait_for("a new leader", Duration::from_secs(30), || {
        let client = c.client();
        async move {
            client
                .status()
                .await
                .ok()
                .map(|s| s.leader_id)
                .filter(|l| *l != 0 && *l != leader)
        }
    })
    .await;
    eprintln!(
        "[measure] leader {leader} killed; node {new_leader} leads after {:.2}s",
        t.elapsed().as_secs_f64()
    );
    let (bytes, took) = write_files(&vol, 100..200).await;
    report("write 100 files after leader loss", 100, bytes, took);
    verify_files(&vol, 0..200).await;
    c.restart(leader);
    c.wait_formed(3).await;
    verify_files(&vol, 0..200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_block_is_detected_and_served_from_another_replica() {
    let c = TestCluster::start(3).await;
    let vol = c.volume("data", 1 << 30, 3).await;
    let data = content(7, 3 * MIB + 123);
    put_bytes(&vol, "/f", &data).await.expect("put");
    // Wait until every node holds the block (puts go to all replicas; quorum returns
    // after 2, the third may land a moment later).
    let files = wait_for("block on all nodes", Duration::from_secs(10), || async {
        let f: Vec<_> = (1..=3).map(|i| c.block_files(i)).collect();
        f.iter().all(|v| v.len() == 1).then_some(f)
    })
    .await;
    // Corrupt every node's copy but one: flip a byte in the data part of the file.
    for node_files in files.iter().take(2) {
        let path = &node_files[0];
        let mut bytes = std::fs::read(path).expect("read block file");
        let at = bytes.len() - 1000;
        bytes[at] ^= 0xff;
        std::fs::write(path, bytes).expect("corrupt");
    }
    let got = get_bytes(&vol, "/f")
        .await
        .expect("read despite corruption");
    assert_eq!(got, data, "the good replica's data is served");
    // The corrupt copies were quarantined and repaired from the good one.
    wait_for("bad copies repaired", Duration::from_secs(10), || async {
        let ok = (1..=2).all(|i| {
            let f = c.block_files(i);
            f.len() == 1 && std::fs::read(&f[0]).ok() == std::fs::read(&files[2][0]).ok()
        });
        ok.then_some(())
    })
    .await;
    // With every copy corrupt, the read fails loudly instead of returning bad data.
    for node_files in &files {
        let path = &node_files[0];
        let mut bytes = std::fs::read(path).expect("read block file");
        let at = bytes.len() - 10;
        bytes[at] ^= 0x55;
        std::fs::write(path, bytes).expect("corrupt");
    }
    let err = get_bytes(&vol, "/f").await.expect_err("all copies corrupt");
    assert!(matches!(err, ClientError::Blocks(_)), "{err}");
}

fn code(e: &ClientError) -> Option<tonic::Code> {
    e.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_and_changes_nothing() {
    let c = TestCluster::start(3).await;
    let client = c.client();
    let vol = c.volume("data", 10 * MIB as u64, 3).await;
    put_bytes(&vol, "/keep", &content(1, 6 * MIB))
        .await
        .expect("put");
    let before = client.list_volumes().await.expect("ls");

    // Unknown volume.
    let e = client.volume("nope").await.expect_err("unknown volume");
    assert_eq!(code(&e), Some(tonic::Code::NotFound), "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");
    let e = client
        .resize_volume("nope", 1 << 20)
        .await
        .expect_err("resize unknown");
    assert_eq!(code(&e), Some(tonic::Code::NotFound), "{e}");
    assert!(!client
        .delete_volume("nope")
        .await
        .expect("delete is idempotent"));

    // Invalid names, sizes, replication.
    for bad in ["", "UPPER", "a/b", "-x", &"x".repeat(64)] {
        let e = client
            .create_volume(bad, 1 << 20, 0)
            .await
            .expect_err("bad name");
        assert_eq!(code(&e), Some(tonic::Code::InvalidArgument), "{bad:?}: {e}");
    }
    let e = client
        .create_volume("zero", 0, 0)
        .await
        .expect_err("zero size");
    assert_eq!(code(&e), Some(tonic::Code::InvalidArgument), "{e}");
    let e = client
        .create_volume("rf5", 1 << 20, 5)
        .await
        .expect_err("rf > nodes");
    assert_eq!(code(&e), Some(tonic::Code::InvalidArgument), "{e}");
    assert!(e.to_string().contains("needs at least 5"), "{e}");
    let e = client
        .create_volume("data", 20 << 20, 3)
        .await
        .expect_err("conflicting re-create");
    assert_eq!(code(&e), Some(tonic::Code::AlreadyExists), "{e}");
    let (_, created) = client
        .create_volume("data", 10 * MIB as u64, 3)
        .await
        .expect("identical re-create");
    assert!(!created, "create is idempotent");
    let e = client
        .resize_volume("data", 0)
        .await
        .expect_err("resize to 0");
    assert_eq!(code(&e), Some(tonic::Code::InvalidArgument), "{e}");
    let e = client
        .resize_volume("data", MIB as u64)
        .await
        .expect_err("shrink below used");
    assert_eq!(code(&e), Some(tonic::Code::FailedPrecondition), "{e}");

    // Invalid file names and paths.
    let e = put_bytes(&vol, &format!("/{}", "n".repeat(256)), b"x")
        .await
        .expect_err("long name");
    assert!(
        matches!(
            e,
            ClientError::Invalid(_) | ClientError::Fs(FsError::NameTooLong)
        ),
        "{e}"
    );
    let e = put_bytes(&vol, "/a/../b", b"x").await.expect_err("dot-dot");
    assert!(matches!(e, ClientError::Invalid(_)), "{e}");
    let e = get_bytes(&vol, "/missing").await.expect_err("missing file");
    assert!(matches!(e, ClientError::Fs(FsError::NotFound)), "{e}");

    // Quota: a write past the capacity fails with EDQUOT and nothing written is lost.
    let e = put_bytes(&vol, "/big", &content(2, 5 * MIB))
        .await
        .expect_err("over quota");
    assert!(
        matches!(e, ClientError::Fs(FsError::QuotaExceeded { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("quota"), "{e}");
    assert_eq!(
        get_bytes(&vol, "/keep").await.expect("keep"),
        content(1, 6 * MIB)
    );

    // Malformed and oversized gRPC messages.
    use ringfs_proto::meta::meta_service_client::MetaServiceClient;
    use ringfs_proto::meta::FsRequest;
    let ch = client.pool().get(&c.node(1).addr).expect("channel");
    let mut raw = MetaServiceClient::new(ch.clone()).max_encoding_message_size(64 << 20);
    let e = raw
        .fs(FsRequest {
            volume_id: 1,
            format: ringfs_core::fs::FS_FORMAT,
            op: vec![0xff, 0xff, 0xff].into(),
            ..Default::default()
        })
        .await
        .expect_err("garbage op");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let e = raw
        .fs(FsRequest {
            volume_id: 1,
            format: 999,
            op: vec![].into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown format");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let e = raw
        .fs(FsRequest {
            volume_id: 1,
            format: 1,
            op: vec![0u8; 16 << 20].into(),
            ..Default::default()
        })
        .await
        .expect_err("oversized");
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e}");
    // Within one gRPC message but too large for one replication message with its
    // envelope: refused before it is proposed (it could never be committed).
    let e = raw
        .fs(FsRequest {
            volume_id: 1,
            format: 1,
            op: vec![0u8; ringfs_core::fs::MAX_FS_OP_BYTES + 1].into(),
            ..Default::default()
        })
        .await
        .expect_err("op larger than one command may be");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("replication message"), "{e}");
    let mut raw_blocks = ringfs_proto::block::block_service_client::BlockServiceClient::new(ch)
        .max_encoding_message_size(64 << 20);
    let e = raw_blocks
        .get(ringfs_proto::block::GetBlockRequest {
            id: vec![1, 2, 3].into(),
            offset: 0,
            len: 0,
        })
        .await
        .expect_err("short block id");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");

    // The cluster still works and nothing changed.
    assert_eq!(client.list_volumes().await.expect("ls"), before);
    assert_eq!(
        get_bytes(&vol, "/keep").await.expect("keep"),
        content(1, 6 * MIB)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_commit_rate() {
    let c = TestCluster::start(3).await;
    let vol = c.volume("data", 1 << 30, 3).await;
    for clients in [1usize, 64] {
        let ops_per_client = if clients == 1 { 300 } else { 30 };
        let start = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..clients {
            let vol = vol.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..ops_per_client {
                    vol.mkdir(&format!("/c{clients}-{t}-{i}"), 0o755)
                        .await
                        .expect("mkdir");
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        let n = clients * ops_per_client;
        let rate = n as f64 / start.elapsed().as_secs_f64();
        eprintln!("[measure] raft: {n} mkdir commits with {clients} concurrent clients: {rate:.0} commits/s");
        assert!(rate > 0.0);
    }
    let entries = vol.list("/").await.expect("ls");
    assert_eq!(
        entries.len(),
        300 + 64 * 30,
        "every acknowledged mkdir is there"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lagging_follower_catches_up_from_a_snapshot() {
    let mut c =
        TestCluster::start_with(3, &["--snapshot-logs", "50", "--snapshot-keep-logs", "5"]).await;
    let vol = c.volume("data", 1 << 30, 3).await;
    let leader = c.leader().await;
    let follower = (1..=3).find(|i| *i != leader).expect("a follower");
    let follower_had = c
        .client()
        .node_status(&c.node(follower).addr.clone())
        .await
        .expect("follower status")
        .last_applied;
    c.kill(follower);
    for i in 0..300 {
        vol.mkdir(&format!("/d{i}"), 0o755).await.expect("mkdir");
    }
    // The leader must have purged the log entries the follower lacks before it comes
    // back, or it could catch up from the log alone. (The leader postpones a purge while
    // a replication stream still has those entries in flight, so keep it busy until
    // the purge happened.)
    let leader_addr = c.node(leader).addr.clone();
    let client = c.client();
    let mut extra = 0;
    wait_for(
        "leader purged the log the follower lacks",
        Duration::from_secs(60),
        || {
            extra += 1;
            let (client, leader_addr, vol) = (client.clone(), leader_addr.clone(), vol.clone());
            async move {
                let s = client.node_status(&leader_addr).await.ok()?;
                if s.last_purged_index > follower_had + 1 {
                    return Some(());
                }
                vol.mkdir(&format!("/d0/extra{extra}"), 0o755).await.ok()?;
                None
            }
        },
    )
    .await;
    let target = c.client().status().await.expect("status").last_applied;
    c.restart(follower);
    let addr = c.node(follower).addr.clone();
    let client = c.client();
    wait_for("follower to catch up", Duration::from_secs(60), || {
        let client = client.clone();
        let addr = addr.clone();
        async move {
            client
                .node_status(&addr)
                .await
                .ok()
                .filter(|s| s.last_applied >= target)
                .map(|_| ())
        }
    })
    .await;
    let log = std::fs::read_to_string(c.node(follower).data_dir.join("node.log")).expect("log");
    assert!(
        log.contains("installed snapshot"),
        "the follower was brought up to date by a snapshot"
    );
    // The restored follower now carries the cluster: lose the old leader.
    c.kill(leader);
    c.wait_formed(3).await;
    let entries = vol
        .list("/")
        .await
        .expect("ls after snapshot install and leader loss");
    assert_eq!(entries.len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_endpoints_report_health_and_metrics() {
    let c = TestCluster::start(3).await;
    for id in 1..=3 {
        let http = c.node(id).http.clone();
        let (code, body) = http_get(&http, "/healthz").expect("healthz");
        assert_eq!(code, 200, "{body}");
        let (code, body) = wait_for("readyz", Duration::from_secs(20), || {
            let http = http.clone();
            async move { http_get(&http, "/readyz").ok().filter(|(c, _)| *c == 200) }
        })
        .await;
        assert_eq!(code, 200, "{body}");
        let (code, body) = http_get(&http, "/metrics").expect("metrics");
        assert_eq!(code, 200);
        assert!(body.contains("ringfs_node_raft_term"), "{body}");
        assert!(body.contains("ringfs_node_raft_members 3"), "{body}");
        assert!(body.contains("ringfs_node_blocks_stored"), "{body}");
    }
}

/// Reads a counter (`<name>_total`) from a node's /metrics.
fn counter(c: &TestCluster, id: u64, name: &str) -> u64 {
    let (code, body) = http_get(&c.node(id).http, "/metrics").expect("metrics");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}_total ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name}_total in {body}"))
}

/// Many clients creating in one directory at once: every create succeeds exactly once,
/// and the leader commits them in fewer Raft entries than commands (group commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_are_group_committed() {
    let c = TestCluster::start(3).await;
    let vol = c.volume("busy", 1 << 30, 3).await;
    vol.mkdir("/d", 0o755).await.expect("mkdir");
    let leader = c.leader().await;
    let (entries0, commands0) = (
        counter(&c, leader, "ringfs_node_fs_raft_entries"),
        counter(&c, leader, "ringfs_node_fs_commands"),
    );
    let n = 200usize;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let vol = vol.clone();
            tokio::spawn(async move { vol.mkdir(&format!("/d/m{i}"), 0o755).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("concurrent mkdir");
    }
    let mut names: Vec<String> = vol
        .list("/d")
        .await
        .expect("list")
        .into_iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    want.sort();
    assert_eq!(names, want);
    // A second attempt at each is refused: each ran exactly once.
    let again = vol.mkdir("/d/m7", 0o755).await;
    assert!(again.is_err(), "{again:?}");

    let entries = counter(&c, leader, "ringfs_node_fs_raft_entries") - entries0;
    let commands = counter(&c, leader, "ringfs_node_fs_commands") - commands0;
    println!(
        "{n} concurrent mkdirs (each a lookup and a mkdir): {commands} file-system commands \
         in {entries} Raft entries, {:.1} per entry",
        commands as f64 / entries.max(1) as f64
    );
    assert!(commands >= n as u64, "{commands} commands for {n} mkdirs");
    assert!(
        entries < commands,
        "{commands} commands took {entries} entries: nothing was batched"
    );
}
