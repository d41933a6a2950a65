//! HTTP endpoints: Prometheus `/metrics`, liveness `/healthz`, readiness `/readyz`.

use crate::admin::readiness;
use crate::node::Node;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

struct Metrics {
    registry: Registry,
    term: Gauge,
    is_leader: Gauge,
    last_log_index: Gauge,
    last_applied: Gauge,
    blocks: Gauge,
    bytes: Gauge<u64, AtomicU64>,
    members: Gauge,
    /// Migration, repair and scrub figures (see `migrate::Counters` and `Progress`).
    migration: Vec<(&'static str, Gauge<u64, AtomicU64>)>,
}

/// (name, help) of the migration gauges, in the order [`migration_values`] fills them.
const MIGRATION_GAUGES: [(&str, &str); 14] = [
    (
        "migration_moved_bytes",
        "Bytes copied into this node by migration, repair and scrub since start",
    ),
    (
        "migration_moved_blocks",
        "Blocks copied into this node by migration, repair and scrub since start",
    ),
    (
        "migration_transfers_failed",
        "Migration transfers that failed (and were retried), on the leader",
    ),
    (
        "migration_queue_length",
        "Partition copies waiting to start (leader)",
    ),
    (
        "migration_running_transfers",
        "Partition copies running (leader)",
    ),
    (
        "migration_partitions_left",
        "Partition copies left for the newest layout (leader)",
    ),
    (
        "migration_bytes_left",
        "Estimated bytes left to move (leader)",
    ),
    (
        "migration_rate_bytes_per_second",
        "Recent migration rate (leader)",
    ),
    (
        "repair_backlog",
        "Partition copies of the repair class left (leader)",
    ),
    (
        "under_replicated_partitions",
        "Partitions with fewer than RF synced replicas (leader)",
    ),
    ("scrub_passes", "Completed scrub passes on this node"),
    (
        "scrub_checked_blocks",
        "Blocks whose checksums scrub verified on this node",
    ),
    (
        "scrub_errors",
        "Corrupt block copies scrub found on this node",
    ),
    (
        "scrub_repaired_blocks",
        "Blocks scrub copied back from other replicas",
    ),
];

fn migration_values(node: &Node) -> [u64; 14] {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &node.migration.counters;
    let p = node.migration.progress();
    [
        c.moved_bytes.load(Relaxed),
        c.moved_blocks.load(Relaxed),
        c.transfers_failed.load(Relaxed),
        u64::from(p.queue),
        u64::from(p.running),
        u64::from(p.partitions_left),
        p.bytes_left,
        p.rate as u64,
        u64::from(p.repair_backlog),
        u64::from(p.under_replicated),
        c.scrub_passes.load(Relaxed),
        c.scrub_checked.load(Relaxed),
        c.scrub_errors.load(Relaxed),
        c.scrub_repaired.load(Relaxed),
    ]
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("ringfs_node");
        let m = Metrics {
            term: Gauge::default(),
            is_leader: Gauge::default(),
            last_log_index: Gauge::default(),
            last_applied: Gauge::default(),
            blocks: Gauge::default(),
            bytes: Gauge::default(),
            members: Gauge::default(),
            migration: Vec::new(),
            registry: Registry::default(),
        };
        let mut migration = Vec::new();
        for (name, help) in MIGRATION_GAUGES {
            let g: Gauge<u64, AtomicU64> = Gauge::default();
            registry.register(name, help, g.clone());
            migration.push((name, g));
        }
        registry.register("raft_term", "Current Raft term", m.term.clone());
        registry.register(
            "raft_is_leader",
            "1 when this node is the Raft leader",
            m.is_leader.clone(),
        );
        registry.register(
            "raft_last_log_index",
            "Last Raft log index",
            m.last_log_index.clone(),
        );
        registry.register(
            "raft_last_applied",
            "Last applied Raft log index",
            m.last_applied.clone(),
        );
        registry.register(
            "raft_members",
            "Raft members (voters and learners)",
            m.members.clone(),
        );
        registry.register(
            "blocks_stored",
            "Blocks stored on this node",
            m.blocks.clone(),
        );
        registry.register(
            "block_bytes_stored",
            "Bytes of block data stored on this node",
            m.bytes.clone(),
        );
        Metrics {
            registry,
            migration,
            ..m
        }
    }
}

struct AppState {
    node: Arc<Node>,
    metrics: Metrics,
}

pub fn router(node: Arc<Node>) -> Router {
    let mut m = Metrics::new();
    let batch = &node.fs_batch.stats;
    m.registry.register(
        "fs_raft_entries",
        "Raft entries this node proposed with file-system commands (group commit)",
        batch.entries.clone(),
    );
    m.registry.register(
        "fs_commands",
        "File-system commands this node proposed; divided by fs_raft_entries it gives \
         the commands per entry",
        batch.commands.clone(),
    );
    let state = Arc::new(AppState { node, metrics: m });
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(state)
}

async fn metrics(State(s): State<Arc<AppState>>) -> Result<String, StatusCode> {
    let m = s.node.raft.metrics().borrow().clone();
    let g = &s.metrics;
    g.term.set(m.current_term as i64);
    g.is_leader
        .set(i64::from(m.current_leader == Some(s.node.id)));
    g.last_log_index.set(m.last_log_index.unwrap_or(0) as i64);
    g.last_applied
        .set(m.last_applied.map(|l| l.index).unwrap_or(0) as i64);
    g.members
        .set(m.membership_config.membership().nodes().count() as i64);
    let (blocks, bytes) = s.node.blocks.stats();
    g.blocks.set(blocks as i64);
    g.bytes.set(bytes);
    for ((_, gauge), v) in g.migration.iter().zip(migration_values(&s.node)) {
        gauge.set(v);
    }
    let mut out = String::new();
    encode(&mut out, &g.registry).map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(out)
}

async fn ready(State(s): State<Arc<AppState>>) -> (StatusCode, String) {
    let (ok, detail) = readiness(&s.node);
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        detail + "\n",
    )
}
