//! Data movement: the migration scheduler (Raft leader only), the pull side of a
//! transfer (every node), failure detection, Raft voter upkeep, and the sweep of stale
//! copies.
//!
//! A transfer is a batch of partitions one destination copies from the older owners
//! ([`pull_partitions`]). Planning is pure (`ringfs_core::migrate`); this module runs it:
//! each tick the leader re-plans from the live layout versions and node states, starts
//! what the concurrency limits allow, retries failures with backoff, and reports a node
//! synced (a Raft command) once none of its copies for the newest version is left — the
//! state machine then retires old versions.

use crate::admin::target_voters;
use crate::blocks::{BlockHooks, BlockStore};
use crate::confirm::Confirm;
use crate::fsm;
use crate::members::{self, NodeState};
use crate::node::Node;
use crate::sm::membership_nodes;
use crate::types::{Command, Response};
use openraft::ChangeMembers;
use ringfs_client::blocks::{BlockIo, Replica};
use ringfs_core::layout::Layout;
use ringfs_core::migrate::{self as plan, Job, JobClass, Limits, RateMeter};
use ringfs_core::{BlockId, NodeId};
use ringfs_proto::admin::admin_service_client::AdminServiceClient;
use ringfs_proto::admin::HealthRequest;
use ringfs_proto::block::{PullReply, PullRequest, PullSource};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::RwLock;
use tokio::task::JoinSet;
use tonic::Status;
use tracing::{debug, info, warn};

/// Scheduler tick.
const TICK: Duration = Duration::from_millis(300);
/// Blocks per listing page during a pull.
const LIST_PAGE: u32 = 2000;
/// Unreferenced copies remembered while their age is confirmed (see [`orphan_round`]).
const MAX_TRACKED_ORPHANS: usize = 1_000_000;
/// Concurrent block copies inside one pull.
const COPY_PARALLELISM: usize = 4;
/// How long a put or a listing waits for this node to apply a layout version it has
/// not seen yet.
const APPLY_WAIT: Duration = Duration::from_secs(10);
/// A down node must answer this long before it is marked up again (hysteresis against
/// flapping).
const UP_STABLE: Duration = Duration::from_secs(2);
/// First retry delay of a failed transfer; doubles up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Serializes bytes through a per-node rate: each caller reserves its bytes' time slot
/// and sleeps until it starts.
pub struct Throttle {
    bytes_per_sec: u64,
    next: Mutex<Instant>,
}

impl Throttle {
    pub fn new(bytes_per_sec: u64) -> Self {
        Throttle {
            bytes_per_sec: bytes_per_sec.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    pub async fn acquire(&self, bytes: u64) {
        let wait = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            // Idle time does not accumulate into a burst larger than one second.
            let start = (*next).max(now.checked_sub(Duration::from_secs(1)).unwrap_or(now));
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
            start.saturating_duration_since(now)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Rebalance progress as the leader's scheduler last computed it.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Newest layout version the numbers are for.
    pub version: u64,
    pub active: bool,
    pub partitions_total: u32,
    pub partitions_left: u32,
    pub bytes_total: u64,
    pub bytes_moved: u64,
    pub bytes_left: u64,
    pub rate: f64,
    pub eta: f64,
    pub under_replicated: u32,
    pub queue: u32,
    pub running: u32,
    pub repair_backlog: u32,
    pub message: String,
}

/// Counters exported as metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub moved_bytes: AtomicU64,
    pub moved_blocks: AtomicU64,
    pub transfers_failed: AtomicU64,
    pub scrub_checked: AtomicU64,
    pub scrub_errors: AtomicU64,
    pub scrub_repaired: AtomicU64,
    pub scrub_passes: AtomicU64,
    pub stale_deleted: AtomicU64,
}

/// Migration state shared by the scheduler, the block service hooks, admin and metrics.
pub struct Migration {
    pub progress: Mutex<Progress>,
    pub counters: Counters,
    pub throttle: Throttle,
    /// Puts hold it shared; a listing for a copy takes it exclusively for an instant, so
    /// that every put admitted under an older layout has landed before the listing.
    gate: Arc<RwLock<()>>,
    /// Nodes that asked (by re-joining after a restart) to catch up; taken by the leader's
    /// scheduler.
    catch_up_requests: Mutex<BTreeSet<NodeId>>,
}

impl Migration {
    pub fn new(bandwidth: u64) -> Arc<Self> {
        Arc::new(Migration {
            progress: Mutex::new(Progress::default()),
            counters: Counters::default(),
            throttle: Throttle::new(bandwidth),
            gate: Arc::new(RwLock::new(())),
            catch_up_requests: Mutex::new(BTreeSet::new()),
        })
    }

    /// Has `node` pull every partition it owns from the other owners (see
    /// `Sched::catch_up`): it restarted and may have missed writes while it was away.
    pub fn request_catch_up(&self, node: NodeId) {
        self.catch_up_requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node);
    }

    pub fn progress(&self) -> Progress {
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The newest layout version this node has applied (0: none).
fn applied_version(node: &Node) -> Result<u64, Status> {
    let tx = node.sm.read()?;
    Ok(fsm::current_layout(&tx)?.map(|l| l.version).unwrap_or(0))
}

async fn wait_applied(node: &Node, version: u64) -> Result<u64, Status> {
    let deadline = Instant::now() + APPLY_WAIT;
    loop {
        let v = applied_version(node)?;
        if v >= version {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(Status::unavailable(format!(
                "this node has not applied layout version {version} yet (it has {v}); retry"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The block service's view of the node.
pub struct Hooks {
    pub node: Arc<Node>,
}

#[tonic::async_trait]
impl BlockHooks for Hooks {
    async fn admit_put(&self, layout_version: u64) -> Result<Box<dyn Send + Sync>, Status> {
        if layout_version > 0 {
            wait_applied(&self.node, layout_version).await?;
        }
        let guard = self.node.migration.gate.clone().read_owned().await;
        if layout_version > 0 {
            let applied = applied_version(&self.node)?;
            if layout_version < applied {
                return Err(Status::failed_precondition(format!(
                    "{}: the write used layout version {layout_version} but this node has \
                     applied version {applied}; refresh the layout and retry",
                    ringfs_client::blocks::STALE_LAYOUT
                )));
            }
        }
        Ok(Box::new(guard))
    }

    async fn before_list(&self, min_layout_version: u64) -> Result<(), Status> {
        wait_applied(&self.node, min_layout_version).await?;
        drop(self.node.migration.gate.write().await);
        Ok(())
    }

    async fn pull(&self, req: PullRequest) -> Result<PullReply, Status> {
        if req.partition_count == 0 {
            return Err(Status::invalid_argument("partition_count must be > 0"));
        }
        if let Some(p) = req.partitions.iter().find(|p| **p >= req.partition_count) {
            return Err(Status::invalid_argument(format!(
                "partition {p} is not below partition_count {}",
                req.partition_count
            )));
        }
        if req.sources.is_empty() {
            return Err(Status::invalid_argument("a pull needs at least one source"));
        }
        // Copy only once this node has applied the layout the pull was planned on: its
        // stale-copy sweep works on its own applied layouts, and a node still on an older
        // version would delete the pulled copies of partitions only the newer one gives
        // it (after the leader counted the pull done). Once the version is applied, the
        // sweep's own check under the gate sees it and stops.
        if req.layout_version > 0 {
            wait_applied(&self.node, req.layout_version).await?;
        }
        let sources: Vec<Replica> = req
            .sources
            .iter()
            .filter(|s| s.node != self.node.id)
            .map(|s| Replica {
                node: s.node,
                addr: s.addr.clone(),
            })
            .collect();
        pull_partitions(
            &self.node.blocks,
            &BlockIo::new(self.node.pool.clone()),
            &self.node.migration,
            &req.partitions,
            req.partition_count,
            &sources,
            req.layout_version,
            true,
            &|id| collecting(&self.node, id),
        )
        .await
        .map_err(Status::unavailable)
    }
}

/// Copies into `store` every block of `partitions` that some source lists and the store
/// lacks, verifying each end to end, within the node's bandwidth cap. With `strict`, a
/// source that cannot be listed fails the pull (a complete copy is required); without,
/// unreachable sources are skipped (best-effort repair).
#[allow(clippy::too_many_arguments)]
pub async fn pull_partitions(
    store: &Arc<BlockStore>,
    io: &BlockIo,
    mig: &Migration,
    partitions: &[u32],
    partition_count: u32,
    sources: &[Replica],
    layout_version: u64,
    strict: bool,
    collecting: &(dyn Fn(BlockId) -> bool + Sync),
) -> Result<PullReply, String> {
    let mut found: HashMap<BlockId, (ringfs_core::slice::BlockRef, Vec<Replica>)> = HashMap::new();
    let mut listed_any = false;
    for src in sources {
        let mut after = None;
        loop {
            let page = match io
                .list_partitions(
                    &src.addr,
                    after,
                    LIST_PAGE,
                    partitions,
                    partition_count,
                    layout_version,
                )
                .await
            {
                Ok(p) => p,
                Err(e) if strict => return Err(format!("listing {src}: {e}")),
                Err(e) => {
                    debug!(source = %src, error = %e, "source skipped");
                    break;
                }
            };
            let n = page.len();
            for b in page {
                after = Some(b.id);
                let entry = found.entry(b.id).or_insert_with(|| (b, Vec::new()));
                entry.1.push(src.clone());
            }
            if n < LIST_PAGE as usize {
                listed_any = true;
                break;
            }
        }
    }
    if !listed_any && !sources.is_empty() {
        return Err("no source could be listed".into());
    }
    let mut per_partition: BTreeMap<u32, u64> = BTreeMap::new();
    let ids: Vec<BlockId> = found.keys().copied().collect();
    let present = store.has(ids.clone()).await.map_err(|e| e.to_string())?;
    let mut reply = PullReply::default();
    let mut missing = Vec::new();
    for (id, here) in ids.iter().zip(present) {
        let (b, _) = &found[id];
        reply.blocks_seen += 1;
        reply.bytes_seen += u64::from(b.len);
        *per_partition
            .entry(id.partition(partition_count))
            .or_insert(0) += u64::from(b.len);
        // A block being garbage-collected is not copied: the collector may already
        // have deleted it here, and a copy made now would outlive it on this node.
        if !here && !collecting(*id) {
            missing.push(*id);
        }
    }
    use futures::stream::{self, StreamExt};
    let results: Vec<Result<u64, String>> = stream::iter(missing.into_iter().map(|id| {
        let (block, holders) = found[&id].clone();
        async move {
            mig.throttle.acquire(u64::from(block.len)).await;
            let data = io
                .get(&holders, &block, 0, 0)
                .await
                .map_err(|e| format!("copying block {id}: {e}"))?;
            store
                .put(id, block.len, block.crc, vec![data])
                .await
                .map_err(|e| format!("storing block {id}: {e}"))?;
            // Released while it was being copied: the collector may have deleted this
            // node's copy before the copy landed, so drop it again (the source's copy
            // goes too; nothing references the block).
            if collecting(id) {
                let _ = store.delete(vec![id]).await;
                return Ok(0);
            }
            Ok(u64::from(block.len))
        }
    }))
    .buffer_unordered(COPY_PARALLELISM)
    .collect()
    .await;
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(bytes) => {
                reply.blocks_copied += 1;
                reply.bytes_copied += bytes;
            }
            Err(e) => errors.push(e),
        }
    }
    mig.counters
        .moved_bytes
        .fetch_add(reply.bytes_copied, Ordering::Relaxed);
    mig.counters
        .moved_blocks
        .fetch_add(reply.blocks_copied, Ordering::Relaxed);
    reply.partition_bytes = partitions
        .iter()
        .map(|p| per_partition.get(p).copied().unwrap_or(0))
        .collect();
    if !errors.is_empty() && strict {
        return Err(format!(
            "{} of {} copies failed, first: {}",
            errors.len(),
            errors.len() + reply.blocks_copied as usize,
            errors[0]
        ));
    }
    Ok(reply)
}

/// Per-job retry bookkeeping.
#[derive(Debug, Clone, Copy)]
struct Retry {
    attempts: u32,
    not_before: Instant,
}

type Key = (NodeId, u32);

/// The scheduler's memory. Lost on leader change: the next leader re-plans, and copies
/// already made are skipped cheaply (the destination has the blocks).
#[derive(Default)]
struct Sched {
    version: u64,
    done: HashSet<Key>,
    running: HashSet<Key>,
    retry: HashMap<Key, Retry>,
    /// Bytes of each partition seen by a pull (carried across versions: an estimate).
    sizes: HashMap<u32, u64>,
    total_jobs: u32,
    bytes_moved: u64,
    started: Option<Instant>,
    meter: RateMeter,
    last_ok: HashMap<NodeId, Instant>,
    first_ok: HashMap<NodeId, Instant>,
    down_refused: HashSet<NodeId>,
    /// Each node's boot id as last seen by this leader.
    boots: HashMap<NodeId, u64>,
    /// Nodes that failed a probe since they last answered.
    missed: HashSet<NodeId>,
    /// Nodes catching up: they restarted or were unreachable, so writes made meanwhile
    /// (to a majority of the other replicas) may be missing on them. Every partition
    /// they own is pulled from the other owners (a pull copies only missing blocks);
    /// the node leaves this set when all are done. Until then the cluster reports the
    /// partitions as under-replicated, so health-gated operations (rolling updates,
    /// drains) wait.
    catch_up: BTreeSet<NodeId>,
}

struct Outcome {
    jobs: Vec<Job>,
    result: Result<PullReply, String>,
}

/// The leader's loop. Other nodes idle here.
pub async fn run(node: Arc<Node>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut sched = Sched::default();
    let mut tasks: JoinSet<Outcome> = JoinSet::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_leader = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(res) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(outcome) = res {
                    finish(&node, &mut sched, outcome);
                }
                // Plan again at once: the freed slots take the next transfers.
            }
            _ = shutdown.changed() => return,
        }
        let leader = node.is_leader();
        if !leader {
            if was_leader {
                tasks.abort_all();
                sched = Sched::default();
                *node
                    .migration
                    .progress
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Progress::default();
            }
            was_leader = false;
            continue;
        }
        was_leader = true;
        if let Err(e) = round(&node, &mut sched, &mut tasks).await {
            debug!(error = %e, "migration round failed; will retry");
        }
    }
}

fn finish(node: &Node, s: &mut Sched, o: Outcome) {
    for j in &o.jobs {
        s.running.remove(&(j.dest, j.partition));
    }
    match o.result {
        Ok(reply) => {
            for (j, bytes) in o.jobs.iter().zip(reply.partition_bytes.iter()) {
                s.sizes.insert(j.partition, *bytes);
            }
            for j in &o.jobs {
                s.done.insert((j.dest, j.partition));
                s.retry.remove(&(j.dest, j.partition));
            }
            s.bytes_moved += reply.bytes_copied;
            debug!(
                dest = o.jobs[0].dest,
                partitions = o.jobs.len(),
                bytes = reply.bytes_copied,
                "transfer done"
            );
        }
        Err(e) => {
            node.migration
                .counters
                .transfers_failed
                .fetch_add(1, Ordering::Relaxed);
            warn!(dest = o.jobs[0].dest, partitions = o.jobs.len(), error = %e,
                "transfer failed; will retry");
            for j in &o.jobs {
                let r = s.retry.entry((j.dest, j.partition)).or_insert(Retry {
                    attempts: 0,
                    not_before: Instant::now(),
                });
                r.attempts += 1;
                let backoff = BASE_BACKOFF
                    .saturating_mul(1 << r.attempts.min(8))
                    .min(MAX_BACKOFF);
                r.not_before = Instant::now() + backoff;
            }
        }
    }
}

struct View {
    live: Vec<Layout>,
    states: BTreeMap<NodeId, NodeState>,
    addrs: BTreeMap<NodeId, String>,
    synced: BTreeMap<NodeId, u64>,
}

fn view(node: &Node) -> anyhow::Result<View> {
    let tx = node.sm.read()?;
    let live = fsm::layouts(&tx)?;
    let records = fsm::nodes(&tx)?;
    let mut states = BTreeMap::new();
    let mut synced = BTreeMap::new();
    for r in &records {
        states.insert(r.spec.id, members::node_state(&tx, r.spec.id)?);
        synced.insert(r.spec.id, members::synced_version(&tx, r.spec.id)?);
    }
    let addrs = records.into_iter().map(|r| (r.spec.id, r.addr)).collect();
    Ok(View {
        live,
        states,
        addrs,
        synced,
    })
}

async fn round(
    node: &Arc<Node>,
    s: &mut Sched,
    tasks: &mut JoinSet<Outcome>,
) -> anyhow::Result<()> {
    let v = view(node)?;
    detect_failures(node, s, &v).await;
    keep_voters(node).await;
    let Some(newest) = v.live.first() else {
        return Ok(());
    };
    if s.version != newest.version {
        info!(
            version = newest.version,
            live = v.live.len(),
            "planning migration for a new layout"
        );
        s.version = newest.version;
        s.done.clear();
        s.retry.clear();
        s.total_jobs = 0;
        s.bytes_moved = 0;
        s.started = Some(Instant::now());
        s.meter = RateMeter::default();
    }
    let down: BTreeSet<NodeId> = v
        .live
        .iter()
        .flat_map(|l| l.assignment.iter().copied())
        .filter(|n| !v.states.contains_key(n) || v.states.get(n) == Some(&NodeState::Down))
        .collect();
    let draining: BTreeSet<NodeId> = v
        .states
        .iter()
        .filter(|(_, st)| matches!(st, NodeState::Draining | NodeState::Drained))
        .map(|(n, _)| *n)
        .collect();
    let asked = std::mem::take(
        &mut *node
            .migration
            .catch_up_requests
            .lock()
            .unwrap_or_else(|p| p.into_inner()),
    );
    for id in asked {
        if newest.assignment.contains(&id) && s.catch_up.insert(id) {
            info!(
                node = id,
                "node re-joined after a restart; it catches up on writes it may have missed"
            );
            s.done.retain(|(dest, _)| *dest != id);
        }
    }
    let (mut jobs, lost) = plan::plan(&v.live, &down, &draining);
    add_catch_up(s, newest, &down, &mut jobs);
    // A partition not seen by any pull yet is estimated at the mean of those seen.
    let mean = match s.sizes.len() as u64 {
        0 => 0,
        n => s.sizes.values().sum::<u64>() / n,
    };
    for j in &mut jobs {
        j.est_bytes = s.sizes.get(&j.partition).copied().unwrap_or(mean);
    }
    plan::prioritize(&mut jobs);
    s.total_jobs = s.total_jobs.max(jobs.len() as u32);
    let now = Instant::now();
    let remaining: Vec<&Job> = jobs
        .iter()
        .filter(|j| !s.done.contains(&(j.dest, j.partition)))
        .collect();
    let pending: Vec<Job> = remaining
        .iter()
        .filter(|j| {
            let k = (j.dest, j.partition);
            !s.running.contains(&k) && s.retry.get(&k).is_none_or(|r| r.not_before <= now)
        })
        .map(|j| (*j).clone())
        .collect();
    let mut load: BTreeMap<NodeId, usize> = BTreeMap::new();
    for t in running_transfers(s, &jobs) {
        for n in t {
            *load.entry(n).or_insert(0) += 1;
        }
    }
    let limits = Limits {
        per_node: node.config.migrate_concurrency as usize,
        batch: node.config.migrate_batch as usize,
        batch_bytes: node.config.migrate_batch_bytes,
    };
    for batch in plan::next_batches(&pending, &load, limits) {
        let Some(first) = batch.first() else { continue };
        let Some(dest_addr) = v.addrs.get(&first.dest).cloned() else {
            continue;
        };
        let mut sources: Vec<NodeId> = Vec::new();
        for j in &batch {
            for src in &j.sources {
                if !sources.contains(src) {
                    sources.push(*src);
                }
            }
        }
        let req = PullRequest {
            partitions: batch.iter().map(|j| j.partition).collect(),
            partition_count: newest.partitions,
            sources: sources
                .iter()
                .filter_map(|n| {
                    v.addrs.get(n).map(|a| PullSource {
                        node: *n,
                        addr: a.clone(),
                    })
                })
                .collect(),
            layout_version: newest.version,
        };
        for j in &batch {
            s.running.insert((j.dest, j.partition));
        }
        let io = BlockIo::new(node.pool.clone());
        let deadline = Duration::from_secs(node.config.transfer_deadline_secs.max(1));
        tasks.spawn(async move {
            let result = io
                .pull(&dest_addr, req, deadline)
                .await
                .map_err(|e| e.to_string());
            Outcome {
                jobs: batch,
                result,
            }
        });
    }
    // Sync reports: an active owner in the newest version with nothing left to copy.
    if v.live.len() > 1 {
        let mut outstanding: BTreeSet<NodeId> = BTreeSet::new();
        for j in &remaining {
            outstanding.insert(j.dest);
        }
        for n in &newest.nodes {
            let active = v.states.get(&n.id) == Some(&NodeState::Active);
            if n.capacity > 0
                && active
                && !outstanding.contains(&n.id)
                && v.synced.get(&n.id).copied().unwrap_or(0) < newest.version
            {
                match node
                    .write(Command::SyncReport {
                        node: n.id,
                        version: newest.version,
                    })
                    .await
                {
                    Ok(_) => debug!(node = n.id, version = newest.version, "node synced"),
                    Err(e) => debug!(node = n.id, error = %e, "sync report failed; will retry"),
                }
            }
        }
    }
    // Progress.
    let left = remaining.len() as u32;
    let known: Vec<u64> = s.sizes.values().copied().collect();
    let avg = if known.is_empty() {
        0
    } else {
        known.iter().sum::<u64>() / known.len() as u64
    };
    let bytes_left: u64 = remaining
        .iter()
        .map(|j| s.sizes.get(&j.partition).copied().unwrap_or(avg))
        .sum();
    let elapsed = s.started.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
    s.meter.observe(elapsed, s.bytes_moved);
    let mut under: BTreeSet<u32> = lost.iter().copied().collect();
    for j in &remaining {
        if j.class == JobClass::Repair {
            under.insert(j.partition);
        }
    }
    let repair_backlog = remaining
        .iter()
        .filter(|j| j.class == JobClass::Repair)
        .count() as u32;
    let message = if !lost.is_empty() {
        format!(
            "{} partition(s) have no reachable copy in any live layout version; bring their \
             nodes back to restore them",
            lost.len()
        )
    } else if left > 0 {
        format!("moving {left} partition replica(s) to their new owners")
    } else if v.live.len() > 1 {
        "copies done; waiting for nodes to confirm sync before retiring old layout versions"
            .to_string()
    } else {
        "idle".to_string()
    };
    let p = Progress {
        version: newest.version,
        active: left > 0 || v.live.len() > 1,
        partitions_total: s.total_jobs,
        partitions_left: left,
        bytes_total: s.bytes_moved + bytes_left,
        bytes_moved: s.bytes_moved,
        bytes_left,
        rate: s.meter.rate(),
        eta: s.meter.eta(bytes_left),
        under_replicated: under.len() as u32,
        queue: pending.len() as u32,
        running: s.running.len() as u32,
        repair_backlog,
        message,
    };
    *node
        .migration
        .progress
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = p;
    Ok(())
}

/// Adds a pull of every partition a catching-up node owns in the newest layout (from the
/// partition's other owners), unless the plan already has it or it is done; a node with
/// nothing left to pull has caught up.
fn add_catch_up(s: &mut Sched, newest: &Layout, down: &BTreeSet<NodeId>, jobs: &mut Vec<Job>) {
    let nodes: Vec<NodeId> = s.catch_up.iter().copied().collect();
    for n in nodes {
        if down.contains(&n) {
            continue;
        }
        let mut left = 0;
        for p in 0..newest.partitions {
            let owners = newest.replicas(p);
            if !owners.contains(&n) {
                continue;
            }
            if s.done.contains(&(n, p)) {
                continue;
            }
            if jobs.iter().any(|j| j.dest == n && j.partition == p) {
                left += 1;
                continue;
            }
            let sources: Vec<NodeId> = owners
                .iter()
                .copied()
                .filter(|o| *o != n && !down.contains(o))
                .collect();
            if sources.is_empty() {
                // No other copy to compare with (RF 1, or the others are down).
                continue;
            }
            left += 1;
            jobs.push(Job {
                dest: n,
                partition: p,
                class: JobClass::Repair,
                sources,
                est_bytes: 0,
            });
        }
        if left == 0 {
            info!(node = n, "node caught up");
            s.catch_up.remove(&n);
        }
    }
}

/// The nodes each running transfer occupies (destination and possible sources).
fn running_transfers(s: &Sched, jobs: &[Job]) -> Vec<Vec<NodeId>> {
    let mut per_dest: BTreeMap<NodeId, BTreeSet<NodeId>> = BTreeMap::new();
    for j in jobs {
        if s.running.contains(&(j.dest, j.partition)) {
            let e = per_dest.entry(j.dest).or_default();
            e.insert(j.dest);
            e.extend(j.sources.iter().copied());
        }
    }
    per_dest
        .into_values()
        .map(|s| s.into_iter().collect())
        .collect()
}

/// Probes every member; marks a node down after the grace period without an answer and
/// up again once it has answered steadily.
async fn detect_failures(node: &Arc<Node>, s: &mut Sched, v: &View) {
    let now = Instant::now();
    let grace = Duration::from_secs(node.config.down_grace_secs);
    let probes = v.addrs.iter().map(|(id, addr)| {
        let pool = node.pool.clone();
        let (id, addr) = (*id, addr.clone());
        let me = node.id;
        async move {
            if id == me {
                return (id, Some(0));
            }
            let boot = match pool.get(&addr) {
                Ok(ch) => match tokio::time::timeout(
                    Duration::from_secs(1),
                    AdminServiceClient::new(ch).health(HealthRequest {}),
                )
                .await
                {
                    Ok(Ok(r)) => Some(r.into_inner().boot_id),
                    _ => None,
                },
                Err(_) => None,
            };
            (id, boot)
        }
    });
    let owners: BTreeSet<NodeId> = v
        .live
        .iter()
        .flat_map(|l| l.assignment.iter().copied())
        .collect();
    for (id, boot) in futures::future::join_all(probes).await {
        let state = v.states.get(&id).copied().unwrap_or(NodeState::Active);
        if let Some(boot) = boot {
            let restarted = boot != 0 && s.boots.insert(id, boot).is_some_and(|old| old != boot);
            let was_away = s.missed.remove(&id);
            if (restarted || was_away) && owners.contains(&id) && s.catch_up.insert(id) {
                info!(
                    node = id,
                    restarted, "node is back; it catches up on writes it may have missed"
                );
                // Partitions it already pulled for this layout are pulled again.
                s.done.retain(|(dest, _)| *dest != id);
            }
            s.last_ok.insert(id, now);
            let first = *s.first_ok.entry(id).or_insert(now);
            if state == NodeState::Down && now.duration_since(first) >= UP_STABLE {
                info!(node = id, "node answers again; marking it up");
                let _ = node
                    .write(Command::SetNodeState {
                        id,
                        state: NodeState::Active,
                    })
                    .await;
            }
            s.down_refused.remove(&id);
            continue;
        }
        s.first_ok.remove(&id);
        s.missed.insert(id);
        // A node never seen answering by this leader gets the grace period from now.
        let last = *s.last_ok.entry(id).or_insert(now);
        // A drained node holds nothing the cluster needs: it may stop before removal.
        if matches!(state, NodeState::Active | NodeState::Draining)
            && now.duration_since(last) >= grace
        {
            match node
                .write(Command::SetNodeState {
                    id,
                    state: NodeState::Down,
                })
                .await
            {
                Ok(Response::Refused { message, .. }) => {
                    if s.down_refused.insert(id) {
                        warn!(node = id, %message, "node unreachable past the grace period");
                    }
                }
                Ok(_) => {
                    warn!(node = id, grace_secs = grace.as_secs(),
                    "node unreachable past the grace period: marked down; repairing its partitions")
                }
                Err(e) => debug!(node = id, error = %e, "marking node down failed"),
            }
        }
    }
}

/// Keeps [`target_voters`] voters among the active, reachable nodes: promotes learners
/// when a voter is draining, drained, down or gone, then demotes the unfit voter.
async fn keep_voters(node: &Arc<Node>) {
    let _guard = node.membership_lock.lock().await;
    // Read under the lock: a join holds it from adding the learner until the node is in
    // the node table, so a learner missing from the table here has really left.
    let Ok(v) = view(node) else {
        return;
    };
    let m = node.raft.metrics().borrow().membership_config.clone();
    let members = membership_nodes(&m);
    let fit = |id: &NodeId| v.states.get(id) == Some(&NodeState::Active);
    let voters: Vec<NodeId> = members.iter().filter(|m| m.2).map(|m| m.0).collect();
    let fit_nodes = members.iter().filter(|m| fit(&m.0)).count();
    let want = target_voters(fit_nodes).max(1);
    let fit_voters = voters.iter().filter(|id| fit(id)).count();
    if fit_voters < want {
        let candidates: Vec<NodeId> = members
            .iter()
            .filter(|m| !m.2 && fit(&m.0))
            .map(|m| m.0)
            .take(want - fit_voters)
            .collect();
        if !candidates.is_empty() {
            info!(?candidates, "promoting learners to Raft voters");
            if let Err(e) = node
                .raft
                .change_membership(
                    ChangeMembers::AddVoterIds(candidates.into_iter().collect()),
                    false,
                )
                .await
            {
                debug!(error = %e, "promoting learners failed; will retry");
                return;
            }
        }
    }
    let m = node.raft.metrics().borrow().membership_config.clone();
    let voters: Vec<NodeId> = membership_nodes(&m)
        .iter()
        .filter(|m| m.2)
        .map(|m| m.0)
        .collect();
    let fit_voters = voters.iter().filter(|id| fit(id)).count();
    let unfit: BTreeSet<NodeId> = voters
        .iter()
        .copied()
        .filter(|id| !fit(id) && *id != node.id)
        .collect();
    if fit_voters >= want && !unfit.is_empty() {
        info!(?unfit, "demoting Raft voters that are not active");
        if let Err(e) = node
            .raft
            .change_membership(ChangeMembers::RemoveVoters(unfit), true)
            .await
        {
            debug!(error = %e, "demoting voters failed; will retry");
        }
    }
    // Nodes gone from the node table (removed) leave Raft too.
    let gone: BTreeSet<NodeId> = membership_nodes(&node.raft.metrics().borrow().membership_config)
        .iter()
        .filter(|m| !m.2 && !v.addrs.contains_key(&m.0) && !v.live.is_empty())
        .map(|m| m.0)
        .collect();
    if !gone.is_empty() {
        info!(?gone, "removing nodes that left the cluster from Raft");
        if let Err(e) = node
            .raft
            .change_membership(ChangeMembers::RemoveNodes(gone), false)
            .await
        {
            debug!(error = %e, "removing learners failed; will retry");
        }
    }
}

/// Every node: deletes local copies of partitions this node owns in no live layout
/// version, once a single version is live (old owners keep their copies until the
/// transition is over); then deletes copies no file references any more (see
/// [`orphan_round`]).
pub async fn run_stale_gc(node: Arc<Node>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let period = Duration::from_secs(node.config.stale_gc_interval_secs.max(1));
    let mut orphans = Confirm::new(
        Duration::from_secs(node.config.orphan_grace_secs),
        MAX_TRACKED_ORPHANS,
    );
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        match stale_gc_round(&node).await {
            Ok(0) => {}
            Ok(n) => info!(
                blocks = n,
                "deleted copies of partitions this node no longer owns"
            ),
            Err(e) => debug!(error = %e, "stale copy sweep failed; will retry"),
        }
        match orphan_round(&node, &mut orphans).await {
            Ok(0) => {}
            Ok(n) => info!(
                blocks = n,
                "deleted copies of blocks no file references (deleted while this node was away)"
            ),
            Err(e) => debug!(error = %e, "unreferenced copy sweep failed; will retry"),
        }
    }
}

/// Deletes local copies of blocks that no file references: the leader's garbage collector
/// deletes an unreferenced block from the nodes it can reach, so a node that was down or
/// cut off keeps its copy. Candidates are copies with no reference in this node's state
/// machine, older than `--orphan-grace-secs` (a younger one may belong to a write not
/// committed yet); the leader then confirms them through the Raft log, because this
/// node's state machine may lag. The age is by file time (so a restarted node need not
/// wait) and, because a wall clock may jump, also by this node's monotonic clock: a
/// copy is a candidate only after it has been one in every round for the whole grace
/// period (`orphans` remembers them, see `crate::confirm`).
pub async fn orphan_round(node: &Node, orphans: &mut Confirm<BlockId, ()>) -> anyhow::Result<u64> {
    let grace = Duration::from_secs(node.config.orphan_grace_secs);
    let mut deleted = 0u64;
    let mut after = None;
    loop {
        let page = node.blocks.list(after, LIST_PAGE).await?;
        let n = page.len();
        after = page.last().map(|b| b.id);
        let candidates: Vec<BlockId> = {
            let tx = node.sm.read()?;
            let mut c = Vec::new();
            for b in &page {
                if !fsm::block_referenced(&tx, b.id)? {
                    c.push(b.id);
                }
            }
            c
        };
        let candidates = node.blocks.older_than(candidates, grace).await?;
        let mono = std::time::Instant::now();
        let candidates: Vec<BlockId> = candidates
            .into_iter()
            .filter(|id| orphans.observe(*id, (), mono))
            .collect();
        for chunk in candidates.chunks(crate::admin::MAX_UNREFERENCED_IDS) {
            let (_, leader) = node.leader().await?;
            let ch = node.pool.get(&leader)?;
            let reply = AdminServiceClient::new(ch)
                .unreferenced(ringfs_proto::admin::UnreferencedRequest {
                    ids: chunk
                        .iter()
                        .map(|id| bytes::Bytes::copy_from_slice(&id.0))
                        .collect(),
                })
                .await?
                .into_inner();
            let asked: HashSet<BlockId> = chunk.iter().copied().collect();
            let confirmed: Vec<BlockId> = reply
                .ids
                .iter()
                .filter_map(|raw| BlockId::from_slice(raw))
                .filter(|id| asked.contains(id))
                .collect();
            if !confirmed.is_empty() {
                deleted += u64::from(node.blocks.delete(confirmed).await?);
            }
        }
        if n < LIST_PAGE as usize {
            break;
        }
    }
    orphans.end_round();
    node.migration
        .counters
        .stale_deleted
        .fetch_add(deleted, Ordering::Relaxed);
    Ok(deleted)
}

async fn stale_gc_round(node: &Node) -> anyhow::Result<u64> {
    let live = {
        let tx = node.sm.read()?;
        fsm::layouts(&tx)?
    };
    let [layout] = live.as_slice() else {
        return Ok(0);
    };
    // A node that left the layout entirely (drained, about to be removed) keeps its
    // copies: they are harmless and an operator may still cancel.
    if !layout
        .nodes
        .iter()
        .any(|n| n.id == node.id && n.capacity > 0)
    {
        return Ok(0);
    }
    let owned: HashSet<u32> = (0..layout.partitions)
        .filter(|p| layout.replicas(*p).contains(&node.id))
        .collect();
    let mut stale = Vec::new();
    let mut after = None;
    loop {
        let page = node.blocks.list(after, LIST_PAGE).await?;
        let n = page.len();
        for b in page {
            after = Some(b.id);
            if !owned.contains(&b.id.partition(layout.partitions)) {
                stale.push(b.id);
            }
        }
        if n < LIST_PAGE as usize {
            break;
        }
    }
    let mut deleted = 0u64;
    for chunk in stale.chunks(256) {
        // Exclusive: no put is in flight, and the version check below sees any layout a
        // concurrent writer used.
        let _g = node.migration.gate.write().await;
        if applied_version(node).map_err(|e| anyhow::anyhow!("{e}"))? != layout.version {
            break;
        }
        deleted += u64::from(node.blocks.delete(chunk.to_vec()).await?);
    }
    node.migration
        .counters
        .stale_deleted
        .fetch_add(deleted, Ordering::Relaxed);
    Ok(deleted)
}

/// Whether `id` is queued for garbage collection in this node's state machine (an error
/// reading it counts as no: the copy is then made, and the orphan sweep removes it if
/// it is garbage).
pub fn collecting(node: &Node, id: BlockId) -> bool {
    node.sm
        .read()
        .ok()
        .and_then(|tx| fsm::gc_queued(&tx, id).ok())
        .unwrap_or(false)
}
