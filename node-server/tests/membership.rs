//! Membership and rebalancing with real node processes: grow and shrink under load, node
//! loss and repair, scrub, and refusals. Run one at a time (`--test-threads 1`): each
//! starts up to five nodes on a small machine.

mod common;

use common::*;
use ringfs_client::blocks::BlockIo;
use ringfs_client::{Cluster, Vol};
use ringfs_core::layout::{moved_fraction, Layout};
use ringfs_core::BlockId;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PARTITIONS: &str = "256";

/// Flags shared by these tests: fewer partitions (faster planning on a loaded machine),
/// frequent stale-copy sweeps, a generous grace period unless a test shortens it.
fn flags<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut f = vec![
        "--partitions",
        PARTITIONS,
        "--stale-gc-interval-secs",
        "2",
        "--migrate-batch",
        "32",
    ];
    f.extend_from_slice(extra);
    f
}

/// Waits until one layout version is live and nothing is left to move or repair (a down
/// node may still be listed).
async fn wait_settled(client: &Arc<Cluster>, what: &str, timeout: Duration) {
    wait_for(what, timeout, || {
        let client = client.clone();
        async move {
            let r = client.rebalance_status().await.ok()?;
            (r.live_versions.len() == 1
                && r.partitions_left == 0
                && r.under_replicated == 0
                && !r.message.contains("planning"))
            .then_some(())
        }
    })
    .await;
}

/// Waits until one layout version is live, no node is down, every partition is at RF
/// and nothing is left to move.
async fn wait_healthy(client: &Arc<Cluster>, what: &str, timeout: Duration) {
    wait_for(what, timeout, || {
        let client = client.clone();
        async move {
            let r = client.rebalance_status().await.ok()?;
            (r.healthy && r.live_versions.len() == 1 && r.partitions_left == 0).then_some(())
        }
    })
    .await;
}

async fn newest_layout(client: &Arc<Cluster>) -> Layout {
    let view = client.refresh_layout().await.expect("layout");
    view.versions[0].clone()
}

/// Every block any of `nodes` stores, per node.
async fn blocks_per_node(c: &TestCluster, nodes: &[u64]) -> BTreeMap<u64, BTreeSet<BlockId>> {
    let io = BlockIo::new(c.client().pool().clone());
    let mut out = BTreeMap::new();
    for &n in nodes {
        let mut set = BTreeSet::new();
        let mut after = None;
        loop {
            let page = io.list(&c.node(n).addr, after, 1000).await.expect("list");
            for b in &page {
                set.insert(b.id);
                after = Some(b.id);
            }
            if page.len() < 1000 {
                break;
            }
        }
        out.insert(n, set);
    }
    out
}

/// Every block stored anywhere is on each of its owners in the (single) live layout.
async fn wait_all_at_rf(c: &TestCluster, nodes: &[u64], timeout: Duration) {
    let client = c.client();
    wait_for("every block on each of its owners", timeout, || {
        let client = client.clone();
        async move {
            let view = client.refresh_layout().await.ok()?;
            if view.versions.len() != 1 {
                return None;
            }
            let layout = &view.versions[0];
            let per = blocks_per_node(c, nodes).await;
            let all: BTreeSet<BlockId> = per.values().flatten().copied().collect();
            let missing = all
                .iter()
                .flat_map(|b| layout.replicas_for_block(b).iter().map(move |n| (*n, *b)))
                .filter(|(n, b)| !per.get(n).is_some_and(|s| s.contains(b)))
                .count();
            (missing == 0 && !all.is_empty()).then_some(())
        }
    })
    .await;
}

fn p99(samples: &[Duration]) -> Duration {
    let mut v = samples.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1]
}

/// A continuous write + read load: writes new files and reads back earlier ones,
/// recording every error and each operation's latency with a phase tag.
struct Load {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicU64>,
    files: Arc<Mutex<Vec<(String, u64, usize)>>>,
    errors: Arc<Mutex<Vec<String>>>,
    latencies: Arc<Mutex<Vec<(u64, Duration)>>>,
    ops: Arc<AtomicU64>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(vol: Vol) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicU64::new(0));
        let files = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let ops = Arc::new(AtomicU64::new(0));
        let (s, ph, f, e, l, o) = (
            stop.clone(),
            phase.clone(),
            files.clone(),
            errors.clone(),
            latencies.clone(),
            ops.clone(),
        );
        let task = tokio::spawn(async move {
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                let len = 20_000 + (i as usize * 7919) % 180_000;
                let path = format!("/load-{i}");
                let data = content(1000 + i, len);
                let t = Instant::now();
                match put_bytes(&vol, &path, &data).await {
                    Ok(()) => {
                        l.lock()
                            .unwrap()
                            .push((ph.load(Ordering::Relaxed), t.elapsed()));
                        f.lock().unwrap().push((path, 1000 + i, len));
                    }
                    Err(err) => e.lock().unwrap().push(format!("write {path}: {err}")),
                }
                let pick = {
                    let files = f.lock().unwrap();
                    files.get((i as usize * 31) % files.len().max(1)).cloned()
                };
                if let Some((path, seed, len)) = pick {
                    let t = Instant::now();
                    match get_bytes(&vol, &path).await {
                        Ok(d) if d == content(seed, len) => l
                            .lock()
                            .unwrap()
                            .push((ph.load(Ordering::Relaxed), t.elapsed())),
                        Ok(_) => e
                            .lock()
                            .unwrap()
                            .push(format!("read {path}: wrong content")),
                        Err(err) => e.lock().unwrap().push(format!("read {path}: {err}")),
                    }
                }
                o.fetch_add(1, Ordering::Relaxed);
            }
        });
        Load {
            stop,
            phase,
            files,
            errors,
            latencies,
            ops,
            task: Some(task),
        }
    }

    async fn wait_ops(&self, more: u64) {
        let target = self.ops.load(Ordering::Relaxed) + more;
        let ops = self.ops.clone();
        wait_for("load operations", Duration::from_secs(120), || {
            let ops = ops.clone();
            async move { (ops.load(Ordering::Relaxed) >= target).then_some(()) }
        })
        .await;
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    fn p99(&self, phase: u64) -> (Duration, usize) {
        let l: Vec<Duration> = self
            .latencies
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| *p == phase)
            .map(|(_, d)| *d)
            .collect();
        (p99(&l), l.len())
    }
}

const IDLE: u64 = 0;
const REBALANCING: u64 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grow_and_shrink_under_load() {
    let mut c = TestCluster::start_with(3, &flags(&[])).await;
    let client = c.client();
    let vol = c.volume("load", 1 << 30, 3).await;
    for i in 0..30u64 {
        put_bytes(
            &vol,
            &format!("/pre-{i}"),
            &content(i, 100_000 + i as usize * 1000),
        )
        .await
        .unwrap();
    }
    let mut load = Load::start(Vol::open(c.client(), "load").await.unwrap());
    load.wait_ops(30).await;

    for expect_nodes in [4usize, 5] {
        let before = newest_layout(&client).await;
        load.phase.store(REBALANCING, Ordering::Relaxed);
        let id = c.add_node().await;
        let after = wait_for(
            "the new node in the layout",
            Duration::from_secs(60),
            || {
                let client = client.clone();
                async move {
                    let l = newest_layout(&client).await;
                    l.slots_per_node()
                        .get(&id)
                        .is_some_and(|s| *s > 0)
                        .then_some(l)
                }
            },
        )
        .await;
        let moved = moved_fraction(&before, &after);
        let optimum = 1.0 / expect_nodes as f64;
        println!(
            "join of node {id} ({} -> {expect_nodes} nodes): moved fraction {moved:.4}, \
             optimum 1/(N+1) = {optimum:.4}, ratio {:.3}",
            expect_nodes - 1,
            moved / optimum
        );
        assert!(moved <= 1.1 * optimum, "moved {moved} > 1.1 x {optimum}");
        let t = Instant::now();
        wait_healthy(&client, "rebalance after join", Duration::from_secs(180)).await;
        let r = client.rebalance_status().await.unwrap();
        println!(
            "rebalance to {expect_nodes} nodes took {:.1}s (layout v{})",
            t.elapsed().as_secs_f64(),
            r.layout_version
        );
        load.phase.store(IDLE, Ordering::Relaxed);
        load.wait_ops(10).await;
    }

    // Drain 5 and 4, then remove them.
    for id in [5u64, 4] {
        load.phase.store(REBALANCING, Ordering::Relaxed);
        let r = client.drain(id, false).await.unwrap();
        println!("drain {id}: {}", r.message);
        // Idempotent.
        client.drain(id, false).await.unwrap();
        // Removal before the data moved is refused.
        if let Err(e) = client.remove_node(id, false).await {
            assert_eq!(e.code(), Some(tonic::Code::FailedPrecondition), "{e}");
        }
        wait_for("node drained", Duration::from_secs(180), || {
            let client = client.clone();
            async move {
                let s = client.rebalance_status().await.ok()?;
                s.nodes
                    .iter()
                    .any(|n| n.id == id && n.state == "drained")
                    .then_some(())
            }
        })
        .await;
        wait_healthy(&client, "rebalance after drain", Duration::from_secs(180)).await;
        load.phase.store(IDLE, Ordering::Relaxed);
        let rm = client.remove_node(id, false).await.unwrap();
        assert!(rm.removed);
        assert!(
            !client.remove_node(id, false).await.unwrap().removed,
            "remove is idempotent"
        );
        c.kill(id);
    }
    wait_for(
        "nodes 4 and 5 gone from Raft",
        Duration::from_secs(60),
        || {
            let client = client.clone();
            async move {
                let s = client.status().await.ok()?;
                (s.nodes.len() == 3
                    && s.nodes.iter().all(|n| n.state == "active")
                    && s.nodes.iter().filter(|n| n.role == "voter").count() == 3)
                    .then_some(())
            }
        },
    )
    .await;
    load.wait_ops(10).await;
    load.stop.store(true, Ordering::Relaxed);
    load.task.take().unwrap().await.unwrap();
    let errs = load.errors();
    assert!(errs.is_empty(), "client errors under load: {errs:?}");

    // Every byte readable.
    let files = load.files.lock().unwrap().clone();
    for (path, seed, len) in &files {
        assert_eq!(
            &get_bytes(&vol, path).await.unwrap(),
            &content(*seed, *len),
            "{path}"
        );
    }
    for i in 0..30u64 {
        let d = get_bytes(&vol, &format!("/pre-{i}")).await.unwrap();
        assert_eq!(d, content(i, 100_000 + i as usize * 1000));
    }
    // Every partition back at RF on the remaining nodes.
    wait_all_at_rf(&c, &[1, 2, 3], Duration::from_secs(60)).await;
    let (idle, n_idle) = load.p99(IDLE);
    let (busy, n_busy) = load.p99(REBALANCING);
    println!(
        "foreground p99: idle {:.1} ms ({n_idle} ops), during rebalance {:.1} ms ({n_busy} ops); \
         {} files written under load",
        idle.as_secs_f64() * 1e3,
        busy.as_secs_f64() * 1e3,
        files.len()
    );
    assert!(files.len() > 20, "the load made progress");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_node_is_repaired_and_drain_below_rf_is_refused() {
    let mut c = TestCluster::start_with(4, &flags(&["--down-grace-secs", "3"])).await;
    let client = c.client();
    let vol = c.volume("v", 1 << 30, 3).await;
    for i in 0..30u64 {
        put_bytes(&vol, &format!("/f-{i}"), &content(i, 150_000))
            .await
            .unwrap();
    }
    let leader = c.leader().await;
    let victim = (1..=4).rev().find(|n| *n != leader).unwrap();
    c.kill(victim);
    wait_for("victim marked down", Duration::from_secs(60), || {
        let client = client.clone();
        async move {
            let s = client.rebalance_status().await.ok()?;
            s.nodes
                .iter()
                .any(|n| n.id == victim && n.state == "down")
                .then_some(())
        }
    })
    .await;
    // Writes go on while repair runs.
    for i in 30..40u64 {
        put_bytes(&vol, &format!("/f-{i}"), &content(i, 150_000))
            .await
            .unwrap();
    }
    wait_settled(&client, "repair after node loss", Duration::from_secs(180)).await;
    let alive: Vec<u64> = (1..=4).filter(|n| *n != victim).collect();
    wait_all_at_rf(&c, &alive, Duration::from_secs(60)).await;
    for i in 0..40u64 {
        assert_eq!(
            get_bytes(&vol, &format!("/f-{i}")).await.unwrap(),
            content(i, 150_000)
        );
    }

    // Three active nodes, RF 3: draining any is refused with a clear error.
    let err = client.drain(alive[0], false).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::FailedPrecondition), "{err}");
    assert!(err.to_string().contains("replication factor"), "{err}");
    println!("drain below RF refused: {err}");
    // A down node is removed only with --force.
    let err = client.remove_node(victim, false).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::FailedPrecondition), "{err}");
    assert!(client.remove_node(victim, true).await.unwrap().removed);
    wait_healthy(
        &client,
        "healthy after removing the lost node",
        Duration::from_secs(60),
    )
    .await;
    wait_for(
        "three voters after removal",
        Duration::from_secs(60),
        || {
            let client = client.clone();
            async move {
                let s = client.status().await.ok()?;
                (s.nodes.len() == 3 && s.nodes.iter().filter(|n| n.role == "voter").count() == 3)
                    .then_some(())
            }
        },
    )
    .await;
    put_bytes(&vol, "/after", b"still writable").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scrub_repairs_corrupt_and_deleted_blocks() {
    let c = TestCluster::start_with(3, &flags(&["--scrub-interval-secs", "2"])).await;
    let client = c.client();
    let vol = c.volume("s", 1 << 30, 3).await;
    for i in 0..12u64 {
        put_bytes(&vol, &format!("/f-{i}"), &content(i, 300_000))
            .await
            .unwrap();
    }
    wait_all_at_rf(&c, &[1, 2, 3], Duration::from_secs(60)).await;
    let files = c.block_files(2);
    assert!(files.len() >= 8, "{} block files", files.len());
    let (corrupt, deleted) = (&files[0..3], &files[3..6]);
    for f in corrupt {
        let mut b = std::fs::read(f).unwrap();
        let at = b.len() - 100;
        b[at] ^= 0xff;
        std::fs::write(f, b).unwrap();
    }
    for f in deleted {
        std::fs::remove_file(f).unwrap();
    }
    let reference = |f: &std::path::PathBuf| {
        let rel = f
            .strip_prefix(c.node(2).data_dir.clone())
            .unwrap()
            .to_path_buf();
        std::fs::read(c.node(1).data_dir.join(rel)).unwrap()
    };
    wait_for(
        "scrub to repair node 2",
        Duration::from_secs(120),
        || async {
            corrupt
                .iter()
                .chain(deleted)
                .all(|f| std::fs::read(f).ok().is_some_and(|b| b == reference(f)))
                .then_some(())
        },
    )
    .await;
    let s = client.node_status(&c.node(2).addr).await.unwrap();
    println!(
        "scrub on node 2: {} passes, {} checked, {} corrupt, {} repaired",
        s.scrub_passes, s.scrub_checked, s.scrub_errors, s.scrub_repaired
    );
    assert!(
        s.scrub_errors >= 3,
        "corrupt copies counted: {}",
        s.scrub_errors
    );
    assert!(
        s.scrub_repaired >= 6,
        "repaired blocks counted: {}",
        s.scrub_repaired
    );
    let (code, body) = http_get(&c.node(2).http, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("ringfs_node_scrub_errors"), "{body}");
    for i in 0..12u64 {
        assert_eq!(
            get_bytes(&vol, &format!("/f-{i}")).await.unwrap(),
            content(i, 300_000)
        );
    }
}

/// Block ids stored in node `id`'s data directory (read from disk: works while it is down).
fn block_ids_on_disk(c: &TestCluster, id: u64) -> BTreeSet<BlockId> {
    c.block_files(id)
        .iter()
        .filter_map(|p| p.file_name()?.to_str()?.parse::<BlockId>().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn returning_node_drops_copies_deleted_while_it_was_down() {
    let mut c = TestCluster::start_with(
        4,
        &flags(&["--down-grace-secs", "3", "--orphan-grace-secs", "2"]),
    )
    .await;
    let client = c.client();
    let vol = c.volume("v", 1 << 30, 3).await;
    for i in 0..24u64 {
        put_bytes(&vol, &format!("/f-{i}"), &content(i, 100_000))
            .await
            .unwrap();
    }
    wait_healthy(&client, "healthy before the loss", Duration::from_secs(120)).await;
    let leader = c.leader().await;
    let victim = (1..=4).rev().find(|n| *n != leader).unwrap();
    let alive: Vec<u64> = (1..=4).filter(|n| *n != victim).collect();
    let before = blocks_per_node(&c, &alive).await;
    let before: BTreeSet<BlockId> = before.values().flatten().copied().collect();
    c.kill(victim);
    let on_victim = block_ids_on_disk(&c, victim);
    assert!(!on_victim.is_empty(), "node {victim} holds no block");
    wait_for("victim marked down", Duration::from_secs(60), || {
        let client = client.clone();
        async move {
            let s = client.rebalance_status().await.ok()?;
            s.nodes
                .iter()
                .any(|n| n.id == victim && n.state == "down")
                .then_some(())
        }
    })
    .await;
    // Delete half the files while the victim is away: the collector deletes their blocks
    // from the nodes it reaches, not from the victim.
    for i in 0..12u64 {
        vol.remove(&format!("/f-{i}")).await.unwrap();
    }
    let gone = wait_for(
        "blocks of deleted files collected on the live nodes",
        Duration::from_secs(60),
        || {
            let (c, alive, before) = (&c, &alive, &before);
            async move {
                let now = blocks_per_node(c, alive).await;
                let now: BTreeSet<BlockId> = now.values().flatten().copied().collect();
                let gone: BTreeSet<BlockId> = before.difference(&now).copied().collect();
                // 12 files of 100 kB: at least one block each.
                (gone.len() >= 12).then_some(gone)
            }
        },
    )
    .await;
    let leftovers: BTreeSet<BlockId> = on_victim.intersection(&gone).copied().collect();
    assert!(
        !leftovers.is_empty(),
        "node {victim} held none of the deleted blocks: the test proves nothing"
    );
    println!(
        "node {victim} holds {} copies of blocks deleted while it was down",
        leftovers.len()
    );
    c.restart(victim);
    wait_healthy(
        &client,
        "healthy after the node returned",
        Duration::from_secs(180),
    )
    .await;
    wait_for(
        "the returned node dropped the deleted blocks",
        Duration::from_secs(60),
        || {
            let (c, leftovers) = (&c, &leftovers);
            async move {
                let here = blocks_per_node(c, &[victim]).await;
                let here = here.get(&victim)?;
                here.is_disjoint(leftovers).then_some(())
            }
        },
    )
    .await;
    // Nothing still referenced was lost: every remaining file reads back byte-exact and
    // every block is at RF again.
    for i in 12..24u64 {
        assert_eq!(
            get_bytes(&vol, &format!("/f-{i}")).await.unwrap(),
            content(i, 100_000)
        );
    }
    wait_all_at_rf(&c, &[1, 2, 3, 4], Duration::from_secs(120)).await;
}

/// A node that restarts within the grace period is never marked down, so nothing repairs
/// the blocks written while it was away — unless it catches up: on re-joining, the leader
/// has it pull every partition it owns from the other owners, and the cluster reports
/// itself unhealthy until that is done (which is what the operator's rolling update waits
/// for before restarting the next node).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_node_catches_up_on_writes_it_missed() {
    let mut c = TestCluster::start_with(3, &flags(&["--down-grace-secs", "600"])).await;
    let client = c.client();
    let vol = c.volume("v", 1 << 30, 3).await;
    for i in 0..4u64 {
        put_bytes(&vol, &format!("/before-{i}"), &content(i, 100_000))
            .await
            .unwrap();
    }
    wait_healthy(
        &client,
        "healthy before the restart",
        Duration::from_secs(120),
    )
    .await;
    let leader = c.leader().await;
    let victim = (1..=3).rev().find(|n| *n != leader).unwrap();
    let alive: Vec<u64> = (1..=3).filter(|n| *n != victim).collect();
    c.kill(victim);
    for i in 0..8u64 {
        put_bytes(
            &vol,
            &format!("/while-away-{i}"),
            &content(100 + i, 100_000),
        )
        .await
        .unwrap();
    }
    let on_others: BTreeSet<BlockId> = blocks_per_node(&c, &alive)
        .await
        .values()
        .flatten()
        .copied()
        .collect();
    let missing: BTreeSet<BlockId> = on_others
        .difference(&block_ids_on_disk(&c, victim))
        .copied()
        .collect();
    assert!(
        missing.len() >= 8,
        "node {victim} should lack the blocks written while it was down: {} missing",
        missing.len()
    );
    c.restart(victim);
    wait_for(
        "the restarted node holds every block again",
        Duration::from_secs(120),
        || {
            let (c, missing) = (&c, &missing);
            async move {
                let have = block_ids_on_disk(c, victim);
                missing.is_subset(&have).then_some(())
            }
        },
    )
    .await;
    wait_healthy(
        &client,
        "healthy after the catch-up",
        Duration::from_secs(120),
    )
    .await;
    let log = std::fs::read_to_string(c.node(leader).data_dir.join("node.log")).unwrap_or_default();
    assert!(
        log.contains("catches up") || {
            // Leadership may have moved: any node's log tells.
            (1..=3).any(|n| {
                std::fs::read_to_string(c.node(n).data_dir.join("node.log"))
                    .is_ok_and(|l| l.contains("catches up"))
            })
        },
        "no node logged the catch-up"
    );
    for i in 0..8u64 {
        assert_eq!(
            get_bytes(&vol, &format!("/while-away-{i}")).await.unwrap(),
            content(100 + i, 100_000)
        );
    }
}
