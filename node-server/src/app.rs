//! Composition: config → stores → Raft → services → background tasks.

use crate::admin::AdminServer;
use crate::blocks::BlockStore;
use crate::config::Config;
use crate::logstore::LogStore;
use crate::meta::MetaServer;
use crate::network::{Network, RaftServer};
use crate::node::Node;
use crate::sm::{SmStore, StateMachine};
use crate::types::Raft;
use anyhow::Context;
use openraft::{BasicNode, SnapshotPolicy};
use ringfs_client::ChannelPool;
use ringfs_proto::admin::admin_service_client::AdminServiceClient;
use ringfs_proto::admin::JoinRequest;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// File in the data directory holding the addresses the node actually listens on
/// (useful with port 0): `grpc=HOST:PORT` and `http=HOST:PORT` lines.
pub const ADDR_FILE: &str = "ADDR";

/// How long a stopping node waits for in-flight requests before it exits anyway.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

/// Calls in progress on one connection. A node forwards every client's metadata calls to
/// the leader over one connection, and a mount multiplexes all its reads on one: the
/// bound is far above what one of them needs (the metadata benchmark's 256 clients),
/// yet caps what one misbehaving client can hold.
pub const MAX_CALLS_PER_CONNECTION: usize = 1024;

/// How long a node retries binding a port that is in use at start.
const BIND_RETRY: Duration = Duration::from_secs(10);

/// Binds `addr`, retrying for [`BIND_RETRY`] while it is in use: a node restarted on its
/// previous port can find it briefly taken as the source port of some outgoing
/// connection (clients retrying against the dead node use ephemeral ports from the same
/// range); such a connection is gone within moments. Another listener that keeps it
/// still fails the start, with the error.
async fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let deadline = tokio::time::Instant::now() + BIND_RETRY;
    loop {
        match TcpListener::bind(addr).await {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && addr.port() != 0
                    && tokio::time::Instant::now() < deadline =>
            {
                tracing::warn!(%addr, "address in use; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let listener = bind(config.listen).await.with_context(|| {
        format!(
            "cannot listen on {} (is another node using it?)",
            config.listen
        )
    })?;
    let http_listener = bind(config.http_listen)
        .await
        .with_context(|| format!("cannot listen on {} for HTTP", config.http_listen))?;
    let grpc_addr = listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let mut config = config;
    if config.advertise.is_none() && config.listen.port() == 0 {
        config.advertise = Some(grpc_addr.to_string());
    }
    let config = Arc::new(config);
    let addr = config.advertise_addr();

    let logstore = LogStore::open(&config.data_dir.join("raft")).context("opening the Raft log")?;
    let sm = SmStore::open(&config.data_dir.join("meta")).context("opening the metadata store")?;
    let blocks = BlockStore::open(config.data_dir.clone())
        .await
        .context("opening the block store")?;

    let raft_config = openraft::Config {
        cluster_name: "ringfs".into(),
        heartbeat_interval: config.heartbeat_ms,
        election_timeout_min: config.election_timeout_ms,
        election_timeout_max: config.election_timeout_ms * 2,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_logs),
        max_in_snapshot_log_to_keep: config.snapshot_keep_logs,
        purge_batch_size: 256,
        ..Default::default()
    }
    .validate()
    .context("invalid Raft timing settings")?;
    let restart = {
        use openraft::storage::RaftLogStorage;
        let mut ls = logstore.clone();
        crate::node::RestartGate {
            vote: ls.read_vote().await.context("reading the Raft vote")?,
            last_log_index: ls
                .get_log_state()
                .await
                .context("reading the Raft log state")?
                .last_log_id
                .map(|l| l.index),
        }
    };
    let (tls, policy, pool) = security(&config)?;
    let raft = Raft::new(
        config.id,
        Arc::new(raft_config),
        Network { pool: pool.clone() },
        logstore,
        StateMachine { store: sm.clone() },
    )
    .await
    .context("starting Raft")?;

    let node = Arc::new(Node {
        id: config.id,
        config: config.clone(),
        raft: raft.clone(),
        sm,
        blocks: blocks.clone(),
        pool,
        membership_lock: tokio::sync::Mutex::new(()),
        lease: Default::default(),
        migration: crate::migrate::Migration::new(config.migrate_bandwidth),
        boot_id: rand::random::<u64>() | 1,
        fs_batch: crate::batch::FsBatcher::start(raft.clone()),
        failpoints: crate::node::Failpoints::new(&config),
        restart,
    });

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let grpc = {
        let mut rx = shutdown_rx.clone();
        let router = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(16 << 20))
            // One client connection cannot take the node's whole capacity: beyond this
            // many calls in progress, its further calls wait (HTTP/2 flow control pushes
            // back to the client) instead of piling up tasks and buffers here.
            .concurrency_limit_per_connection(MAX_CALLS_PER_CONNECTION)
            .max_concurrent_streams(Some(MAX_CALLS_PER_CONNECTION as u32 * 2))
            // Peers that vanished without closing (a node powered off, a partition) are
            // noticed and their connections and calls released.
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .tcp_keepalive(Some(Duration::from_secs(60)))
            .layer(crate::auth::AuthLayer::new(policy))
            .add_service(RaftServer::server(raft.clone()))
            .add_service(MetaServer::server(node.clone()))
            .add_service(AdminServer::server(node.clone()))
            .add_service(crate::blocks::server_with_hooks(
                blocks.clone(),
                Arc::new(crate::migrate::Hooks { node: node.clone() }),
            ));
        let stop = async move {
            let _ = rx.changed().await;
        };
        let serve: std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>,
        > = match &tls {
            Some(acceptor) => {
                tokio::spawn(acceptor.clone().watch(
                    Duration::from_secs(config.tls_reload_secs),
                    shutdown_rx.clone(),
                ));
                Box::pin(router.serve_with_incoming_shutdown(acceptor.incoming(listener), stop))
            }
            // A listener passed in does not get the builder's tcp_nodelay: without it,
            // Nagle held each reply's trailers until the client's delayed ACK (~40 ms
            // per unary call and per block read).
            None => Box::pin(router.serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                stop,
            )),
        };
        serve
    };
    let http = {
        let mut rx = shutdown_rx.clone();
        axum::serve(http_listener, crate::http::router(node.clone())).with_graceful_shutdown(
            async move {
                let _ = rx.changed().await;
            },
        )
    };
    let grpc_task = tokio::spawn(grpc);
    let http_task = tokio::spawn(async move { http.await });
    std::fs::write(
        config.data_dir.join(ADDR_FILE),
        format!("grpc={grpc_addr}\nhttp={http_addr}\n"),
    )?;
    tracing::info!(id = config.id, grpc = %grpc_addr, http = %http_addr, advertise = %addr, "ringfs-node listening");

    if config.bootstrap && !raft.is_initialized().await? {
        let members = BTreeMap::from([(config.id, BasicNode { addr: addr.clone() })]);
        raft.initialize(members)
            .await
            .context("bootstrapping the cluster")?;
        tracing::info!("bootstrapped a new cluster");
    }
    tokio::spawn(crate::node::LeaderLease::track(
        node.clone(),
        shutdown_rx.clone(),
    ));
    tokio::spawn(register(node.clone(), shutdown_rx.clone()));
    tokio::spawn(crate::janitor::run(node.clone(), shutdown_rx.clone()));
    tokio::spawn(crate::migrate::run(node.clone(), shutdown_rx.clone()));
    tokio::spawn(crate::migrate::run_stale_gc(
        node.clone(),
        shutdown_rx.clone(),
    ));
    tokio::spawn(crate::scrub::run(node.clone(), shutdown_rx.clone()));

    let fatal = tokio::select! {
        _ = wait_for_signal() => None,
        reason = raft_fatal(raft.clone()) => Some(reason),
    };
    if let Some(reason) = &fatal {
        // The Raft core stops for good on a storage error (a full or failing disk: redb
        // then refuses every later transaction too). Staying up would leave a node that
        // answers but can never serve or vote again; exiting lets the supervisor restart
        // it, and a restart reopens the stores once the disk has room.
        tracing::error!(%reason, "Raft stopped on a fatal error; exiting");
    } else {
        tracing::info!("shutting down");
    }
    let _ = shutdown_tx.send(true);
    // Graceful shutdown waits for in-flight requests; one that never ends (a forwarded
    // call to an unreachable leader, a stuck stream) must not keep a node that should
    // exit alive: a node hanging here after a fatal Raft error answered nothing and was
    // never restarted by its supervisor. Bounded, then the process exits regardless.
    let drain = async {
        let _ = raft.shutdown().await;
        let _ = grpc_task.await;
        let _ = http_task.await;
    };
    if tokio::time::timeout(SHUTDOWN_DRAIN, drain).await.is_err() {
        tracing::warn!(
            after_secs = SHUTDOWN_DRAIN.as_secs(),
            "requests still in flight at shutdown; exiting without them"
        );
    }
    match fatal {
        Some(reason) => anyhow::bail!("Raft stopped on a fatal error: {reason}"),
        None => Ok(()),
    }
}

/// Resolves when the Raft core has stopped on a fatal error, with its description.
async fn raft_fatal(raft: Raft) -> String {
    let mut metrics = raft.metrics();
    loop {
        if let Err(fatal) = &metrics.borrow().running_state {
            return fatal.to_string();
        }
        if metrics.changed().await.is_err() {
            return "the Raft core stopped".to_string();
        }
    }
}

/// The node's TLS identity (reloaded when its files change), how callers are checked,
/// and the pool for the node's own calls (presenting the same identity or token).
fn security(
    config: &Config,
) -> anyhow::Result<(
    Option<ringfs_tls::ReloadingAcceptor>,
    crate::auth::Policy,
    ChannelPool,
)> {
    use crate::auth::Policy;
    let token = config
        .admin_token_file
        .as_deref()
        .map(ringfs_client::pool::read_token_file)
        .transpose()?;
    let Some(dir) = &config.tls_dir else {
        let pool = ChannelPool::with_credentials(None, token.as_deref())?;
        return Ok(match token {
            Some(t) => {
                tracing::warn!("no --tls-dir: traffic is plaintext; only administrative calls are guarded (by the admin token)");
                (None, Policy::Token(t), pool)
            }
            None => {
                tracing::warn!("no --tls-dir and no --admin-token-file: traffic is plaintext and UNAUTHENTICATED; anyone who can reach this node can read and change all data and administer the cluster");
                (None, Policy::Open, pool)
            }
        });
    };
    let acceptor = ringfs_tls::ReloadingAcceptor::load(dir).with_context(|| {
        format!(
            "loading the node's TLS certificates (--tls-dir {})",
            dir.display()
        )
    })?;
    let material = acceptor.current();
    if material.role != Some(ringfs_tls::Role::Node) {
        anyhow::bail!(
            "{}: the certificate has role {}, a node needs role node; issue one with `ringfs certs issue --role node --name NAME --dns/--ip ADDRESSES`",
            dir.join(ringfs_tls::CERT_FILE).display(),
            material.role.map(|r| r.as_str()).unwrap_or("(none)")
        );
    }
    let pool = ChannelPool::with_credentials(Some(material.client_tls()), token.as_deref())?;
    // Rotated certificates: the node's own calls switch to them as the listener does.
    let mut changes = acceptor.material();
    let follower = pool.clone();
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            let m = changes.borrow_and_update().clone();
            follower.set_tls(Some(m.client_tls()));
        }
    });
    tracing::info!(dir = %dir.display(), "mutual TLS on: peers and clients need a certificate of the cluster CA");
    Ok((Some(acceptor), Policy::Tls, pool))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Registers this node with the cluster (idempotently) until it succeeds: through the
/// join seeds, and through itself (which forwards to the leader once it knows one).
async fn register(node: Arc<Node>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let cfg = &node.config;
    let me = cfg.advertise_addr();
    let mut targets: Vec<String> = cfg.join.iter().filter(|a| **a != me).cloned().collect();
    if cfg.bootstrap || node.raft.is_initialized().await.unwrap_or(false) {
        targets.insert(0, me.clone());
    }
    if targets.is_empty() {
        tracing::warn!("neither --bootstrap nor --join given and no cluster state on disk: waiting to be added");
        targets.push(me.clone());
    }
    let req = JoinRequest {
        id: cfg.id,
        addr: me.clone(),
        zone: cfg.zone.clone(),
        capacity_bytes: cfg.capacity,
    };
    let mut attempt = 0u32;
    loop {
        let target = &targets[attempt as usize % targets.len()];
        attempt += 1;
        let result = match node.pool.get(target) {
            Ok(ch) => AdminServiceClient::new(ch)
                .join(req.clone())
                .await
                .map_err(|s| s.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(r) => {
                let r = r.into_inner();
                tracing::info!(layout = r.layout_version, joined = r.joined, via = %target, "registered with the cluster");
                return;
            }
            Err(e) if attempt.is_multiple_of(10) => {
                tracing::warn!(via = %target, error = %e, "still trying to join the cluster")
            }
            Err(e) => tracing::debug!(via = %target, error = %e, "join attempt failed"),
        }
        let delay = Duration::from_millis((100 * u64::from(attempt)).min(1000));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
    }
}
