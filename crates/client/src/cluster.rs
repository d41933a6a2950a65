//! Metadata calls with leader discovery and retries, and the cached cluster layout.

use crate::blocks::{BlockIo, Replica};
use crate::error::{ClientError, Result};
use crate::pool::ChannelPool;
use crate::pool::NodeChannel as Channel;
use ringfs_core::fs::{FsOp, FsReply, FsResult, RequestId, FS_FORMAT};
use ringfs_core::layout::{Layout, NodeSpec};
use ringfs_core::slice::BlockRef;
use ringfs_core::{BlockId, NodeId, VolumeId};
use ringfs_proto::admin::admin_service_client::AdminServiceClient;
use ringfs_proto::admin::{
    DrainReply, DrainRequest, GetLayoutRequest, RebalanceStatusReply, RebalanceStatusRequest,
    RemoveReply, RemoveRequest, StatusReply, StatusRequest,
};
use ringfs_proto::meta::meta_service_client::MetaServiceClient;
use ringfs_proto::meta::*;
use ringfs_proto::{LEADER_HINT_KEY, MAX_MESSAGE_BYTES};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tonic::{Code, Status};

/// How long one client call keeps retrying while the cluster has no reachable leader.
pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(30);

/// How long a cached layout is used before it is fetched again. Staleness is also caught
/// by the nodes (a put made with an old layout is refused and retried), so this only
/// bounds how long reads may prefer owners that no longer hold a partition.
pub const LAYOUT_TTL: Duration = Duration::from_secs(3);

/// A layout version's owners of a block and how many of them must store it.
pub type QuorumSet = (Vec<NodeId>, usize);

/// Attempts of one block put when nodes keep reporting a newer layout.
const STALE_LAYOUT_ATTEMPTS: usize = 5;

/// The layout versions a client knows, newest first, with node addresses.
#[derive(Debug, Clone, Default)]
pub struct LayoutView {
    pub versions: Vec<Layout>,
    pub addrs: BTreeMap<NodeId, String>,
    /// When this view was fetched (None: never).
    pub fetched: Option<Instant>,
}

impl LayoutView {
    pub fn current(&self) -> Option<&Layout> {
        self.versions.first()
    }
}

/// What a clone copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    Snapshot(String),
    Volume(String),
}

/// A connection to a ringfs cluster. Cheap to share (`Arc`); safe to use concurrently.
pub struct Cluster {
    seeds: Vec<String>,
    pool: ChannelPool,
    leader: Mutex<Option<String>>,
    layout: RwLock<Arc<LayoutView>>,
    /// When a node last failed a block call; such nodes are tried last for a while.
    suspect: Mutex<HashMap<NodeId, Instant>>,
    pub io: BlockIo,
    pub retry_budget: Duration,
}

fn is_retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::Cancelled
    ) || (s.code() == Code::Unknown && s.message().contains("transport"))
}

impl Cluster {
    /// Connects (lazily) through `seeds`: addresses of any cluster nodes.
    pub fn new(seeds: Vec<String>) -> Result<Arc<Cluster>> {
        Self::with_pool(seeds, ChannelPool::new())
    }

    /// Like [`Cluster::new`], with a pool carrying credentials (see
    /// [`ChannelPool::secured`]).
    pub fn with_pool(seeds: Vec<String>, pool: ChannelPool) -> Result<Arc<Cluster>> {
        let seeds: Vec<String> = seeds
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if seeds.is_empty() {
            return Err(ClientError::Invalid(
                "no cluster address given; pass --cluster HOST:PORT or set RINGFS_CLUSTER".into(),
            ));
        }
        for s in &seeds {
            pool.get(s)?;
        }
        Ok(Arc::new(Cluster {
            seeds,
            io: BlockIo::new(pool.clone()),
            pool,
            leader: Mutex::new(None),
            layout: RwLock::new(Arc::new(LayoutView::default())),
            suspect: Mutex::new(HashMap::new()),
            retry_budget: DEFAULT_RETRY_BUDGET,
        }))
    }

    pub fn pool(&self) -> &ChannelPool {
        &self.pool
    }

    fn targets(&self) -> Vec<String> {
        let mut t = Vec::with_capacity(self.seeds.len() + 1);
        if let Some(l) = self
            .leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            t.push(l);
        }
        for s in &self.seeds {
            if !t.contains(s) {
                t.push(s.clone());
            }
        }
        t
    }

    /// Runs `f` against the leader (or any node, which forwards), retrying on
    /// unavailability with backoff until the retry budget is spent. Errors that are the
    /// caller's fault are returned at once.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.retry_budget;
        let mut attempt = 0u32;
        let mut last_err;
        loop {
            let targets = self.targets();
            let target = targets[attempt as usize % targets.len()].clone();
            attempt += 1;
            let ch = match self.pool.get(&target) {
                Ok(ch) => ch,
                // Before anything was sent, a client-side failure is the answer (the
                // request certainly was not applied).
                Err(e) if attempt == 1 => return Err(e),
                // After an attempt, the request may have been applied: a target that
                // cannot be reached (a bad leader hint, TLS setup failing after a
                // certificate rotation) is skipped, never reported as "not applied".
                Err(e) => {
                    last_err = format!("{target}: {e}");
                    *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    if Instant::now() >= deadline {
                        return Err(ClientError::Unavailable(last_err));
                    }
                    let backoff = Duration::from_millis((50u64 << attempt.min(5)).min(1000));
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            match f(ch).await {
                Ok(r) => {
                    *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = Some(target);
                    return Ok(r.into_inner());
                }
                Err(s) if is_retryable(&s) => {
                    let hint = s
                        .metadata()
                        .get(LEADER_HINT_KEY)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    {
                        let mut leader = self.leader.lock().unwrap_or_else(|p| p.into_inner());
                        if let Some(h) = &hint {
                            // A hint points at the leader: go there next, without waiting.
                            *leader = Some(h.clone());
                        } else if leader.as_deref() == Some(target.as_str()) {
                            *leader = None;
                        }
                    }
                    last_err = format!("{target}: {}", s.message());
                    if Instant::now() >= deadline {
                        return Err(ClientError::Unavailable(last_err));
                    }
                    if hint.is_none() {
                        let backoff = Duration::from_millis((50u64 << attempt.min(5)).min(1000));
                        tokio::time::sleep(backoff).await;
                    }
                }
                Err(s) => return Err(ClientError::Rejected(s)),
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Unavailable(last_err));
            }
        }
    }

    fn meta(ch: Channel) -> MetaServiceClient<Channel> {
        MetaServiceClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn admin(ch: Channel) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub async fn create_volume(
        &self,
        name: &str,
        capacity: u64,
        replication: u32,
    ) -> Result<(Volume, bool)> {
        let req = CreateVolumeRequest {
            name: name.into(),
            capacity_bytes: capacity,
            replication,
            ..Default::default()
        };
        let r = self
            .call(|ch| {
                let req = req.clone();
                async move { Self::meta(ch).create_volume(req).await }
            })
            .await?;
        let v = r
            .volume
            .ok_or_else(|| ClientError::Protocol("create_volume reply without a volume".into()))?;
        Ok((v, r.created))
    }

    /// Creates volume `name` as a copy-on-write clone of a snapshot or another volume
    /// (idempotent when the source and settings match). `replication` 0 means the
    /// source's; `capacity` must be at least the bytes the source holds.
    pub async fn clone_volume(
        &self,
        name: &str,
        capacity: u64,
        replication: u32,
        source: &VolumeSource,
    ) -> Result<(Volume, bool)> {
        let (source_snapshot, source_volume) = match source {
            VolumeSource::Snapshot(s) => (s.clone(), String::new()),
            VolumeSource::Volume(v) => (String::new(), v.clone()),
        };
        let req = CreateVolumeRequest {
            name: name.into(),
            capacity_bytes: capacity,
            replication,
            source_snapshot,
            source_volume,
        };
        let r = self
            .call(|ch| {
                let req = req.clone();
                async move { Self::meta(ch).create_volume(req).await }
            })
            .await?;
        let v = r
            .volume
            .ok_or_else(|| ClientError::Protocol("create_volume reply without a volume".into()))?;
        Ok((v, r.created))
    }

    /// Takes snapshot `name` of `volume` (idempotent for the same volume).
    pub async fn create_snapshot(&self, name: &str, volume: &str) -> Result<(Snapshot, bool)> {
        let req = CreateSnapshotRequest {
            name: name.into(),
            source_volume: volume.into(),
        };
        let r = self
            .call(|ch| {
                let req = req.clone();
                async move { Self::meta(ch).create_snapshot(req).await }
            })
            .await?;
        let s = r.snapshot.ok_or_else(|| {
            ClientError::Protocol("create_snapshot reply without a snapshot".into())
        })?;
        Ok((s, r.created))
    }

    /// Snapshots in name order; only those of `volume` when given.
    pub async fn list_snapshots(&self, volume: Option<&str>) -> Result<Vec<Snapshot>> {
        let req = ListSnapshotsRequest {
            source_volume: volume.unwrap_or_default().into(),
        };
        Ok(self
            .call(|ch| {
                let req = req.clone();
                async move { Self::meta(ch).list_snapshots(req).await }
            })
            .await?
            .snapshots)
    }

    pub async fn snapshot(&self, name: &str) -> Result<Snapshot> {
        let req = GetSnapshotRequest { name: name.into() };
        self.call(|ch| {
            let req = req.clone();
            async move { Self::meta(ch).get_snapshot(req).await }
        })
        .await
    }

    /// Deletes a snapshot (idempotent: false when it did not exist). Its blocks are
    /// garbage-collected once nothing else references them.
    pub async fn delete_snapshot(&self, name: &str) -> Result<bool> {
        let req = DeleteSnapshotRequest { name: name.into() };
        Ok(self
            .call(|ch| {
                let req = req.clone();
                async move { Self::meta(ch).delete_snapshot(req).await }
            })
            .await?
            .deleted)
    }

    pub async fn list_volumes(&self) -> Result<Vec<Volume>> {
        Ok(self
            .call(|ch| async move { Self::meta(ch).list_volumes(ListVolumesRequest {}).await })
            .await?
            .volumes)
    }

    pub async fn volume(&self, name: &str) -> Result<Volume> {
        let req = GetVolumeRequest { name: name.into() };
        self.call(|ch| {
            let req = req.clone();
            async move { Self::meta(ch).get_volume(req).await }
        })
        .await
    }

    pub async fn resize_volume(&self, name: &str, capacity: u64) -> Result<Volume> {
        let req = ResizeVolumeRequest {
            name: name.into(),
            capacity_bytes: capacity,
        };
        self.call(|ch| {
            let req = req.clone();
            async move { Self::meta(ch).resize_volume(req).await }
        })
        .await
    }

    pub async fn delete_volume(&self, name: &str) -> Result<bool> {
        let req = DeleteVolumeRequest { name: name.into() };
        Ok(self
            .call(|ch| {
                let req = req.clone();
                async move { Self::meta(ch).delete_volume(req).await }
            })
            .await?
            .deleted)
    }

    /// Runs a file-system operation without a request id; POSIX failures come back as
    /// [`ClientError::Fs`]. Safe to retry only for reads and ops idempotent by nature
    /// (session management): mutating ops go through [`crate::Vol::fs`], which gives
    /// them an exactly-once request id.
    pub async fn fs(&self, volume: VolumeId, op: &FsOp) -> Result<FsReply> {
        self.fs_raw(volume, op, None).await
    }

    /// [`Cluster::fs`] with a fixed request id (or none).
    pub async fn fs_raw(
        &self,
        volume: VolumeId,
        op: &FsOp,
        request: Option<RequestId>,
    ) -> Result<FsReply> {
        self.fs_raw_with(volume, op, || request).await
    }

    /// Runs a file-system op; `request` gives the request id of each attempt. Every
    /// attempt of a mutating op must name the same session and seq (only `acked_below`
    /// may move): that is what makes resending it after an ambiguous failure safe.
    pub async fn fs_raw_with(
        &self,
        volume: VolumeId,
        op: &FsOp,
        request: impl Fn() -> Option<RequestId>,
    ) -> Result<FsReply> {
        let bytes: bytes::Bytes = postcard::to_allocvec(op)
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .into();
        let reply = self
            .call(|ch| {
                let id = request();
                let req = FsRequest {
                    volume_id: volume,
                    format: FS_FORMAT,
                    op: bytes.clone(),
                    session: id.map_or(0, |i| i.session),
                    seq: id.map_or(0, |i| i.seq),
                    acked_below: id.map_or(0, |i| i.acked_below),
                };
                async move { Self::meta(ch).fs(req).await }
            })
            .await?;
        let result: FsResult = postcard::from_bytes(&reply.result)
            .map_err(|e| ClientError::Protocol(format!("malformed fs reply: {e}")))?;
        Ok(result?)
    }

    pub async fn status(&self) -> Result<StatusReply> {
        self.call(|ch| async move { Self::admin(ch).status(StatusRequest {}).await })
            .await
    }

    /// Marks node `id` leaving (or, with `cancel`, active again); see admin.proto.
    pub async fn drain(&self, id: NodeId, cancel: bool) -> Result<DrainReply> {
        self.call(|ch| async move {
            Self::admin(ch)
                .drain(DrainRequest {
                    node_id: id,
                    cancel,
                })
                .await
        })
        .await
    }

    /// Removes node `id` from the cluster (refused until drained unless `force` on a
    /// down node).
    pub async fn remove_node(&self, id: NodeId, force: bool) -> Result<RemoveReply> {
        self.call(|ch| async move {
            Self::admin(ch)
                .remove(RemoveRequest { node_id: id, force })
                .await
        })
        .await
    }

    /// Data movement progress, from the leader.
    pub async fn rebalance_status(&self) -> Result<RebalanceStatusReply> {
        self.call(|ch| async move {
            Self::admin(ch)
                .rebalance_status(RebalanceStatusRequest {})
                .await
        })
        .await
    }

    /// Status of one particular node (no leader redirection).
    pub async fn node_status(&self, addr: &str) -> Result<StatusReply> {
        let ch = self.pool.get(addr)?;
        Self::admin(ch)
            .status(StatusRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(ClientError::Rejected)
    }

    /// Fetches the layout versions from the cluster and caches them.
    pub async fn refresh_layout(&self) -> Result<Arc<LayoutView>> {
        let reply = self
            .call(|ch| async move { Self::admin(ch).get_layout(GetLayoutRequest {}).await })
            .await?;
        let mut view = LayoutView {
            fetched: Some(Instant::now()),
            ..Default::default()
        };
        for v in reply.versions {
            let rf = v.replication as usize;
            if rf == 0 || v.assignment.len() != v.partitions as usize * rf {
                return Err(ClientError::Protocol(format!(
                    "layout version {} is malformed",
                    v.version
                )));
            }
            for n in &v.nodes {
                if !n.addr.is_empty() {
                    view.addrs.insert(n.id, n.addr.clone());
                }
            }
            view.versions.push(Layout {
                version: v.version,
                partitions: v.partitions,
                replication: v.replication,
                nodes: v
                    .nodes
                    .iter()
                    .map(|n| NodeSpec {
                        id: n.id,
                        zone: n.zone.clone(),
                        capacity: n.capacity_bytes,
                    })
                    .collect(),
                assignment: v.assignment,
            });
        }
        let view = Arc::new(view);
        *self.layout.write().unwrap_or_else(|p| p.into_inner()) = view.clone();
        Ok(view)
    }

    /// The cached layout, fetched on first use.
    pub async fn layout(&self) -> Result<Arc<LayoutView>> {
        let cur = self
            .layout
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let expired = cur.fetched.is_none_or(|t| t.elapsed() > LAYOUT_TTL);
        if cur.versions.is_empty() {
            return self.refresh_layout().await;
        }
        if expired {
            // A failed refresh keeps the cached view: it is still usable for reads, and
            // writes made with it are checked by the nodes.
            if let Ok(v) = self.refresh_layout().await {
                return Ok(v);
            }
        }
        Ok(cur)
    }

    /// Where a new block goes while layout versions overlap: the union of the first `rf`
    /// owners of every live version (newest first). A majority of the newest version's
    /// owners must store it; older versions' owners get it best-effort (no quorum).
    ///
    /// Requiring a majority in every live version made one down node block all writes
    /// while an old version lingered (e.g. the 2-node layout from cluster formation, whose
    /// majority is both nodes, stays live until every node synced — never, while one is
    /// down). Readers that miss a block on an older version's owners fall back to the
    /// newest owners and then to every node, so a block on a majority of the newest
    /// version is always found.
    pub fn write_targets(
        view: &LayoutView,
        block: &BlockId,
        rf: usize,
    ) -> Result<(Vec<Replica>, Vec<QuorumSet>)> {
        let newest = Self::write_replicas(view, block, rf)?;
        let mut union: Vec<Replica> = newest.clone();
        let quorums = vec![(
            newest.iter().map(|r| r.node).collect::<Vec<_>>(),
            crate::files::write_quorum(newest.len()),
        )];
        for l in view.versions.iter().skip(1) {
            let owners = l.replicas_for_block(block);
            let set: Vec<NodeId> = owners[..rf.min(owners.len())].to_vec();
            if set.is_empty() {
                continue;
            }
            for id in &set {
                if !union.iter().any(|r| r.node == *id) {
                    union.push(Self::replica(view, *id).ok_or_else(|| {
                        ClientError::Protocol(format!("node {id} has no address"))
                    })?);
                }
            }
        }
        Ok((union, quorums))
    }

    /// Writes a new block with id `id` to a quorum of each live layout version's owners,
    /// refreshing the layout and retrying when a node reports a newer one.
    pub async fn put_block(&self, id: BlockId, data: bytes::Bytes, rf: usize) -> Result<BlockRef> {
        let mut view = self.layout().await?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (replicas, quorums) = Self::write_targets(&view, &id, rf)?;
            let version = view.current().map(|l| l.version).unwrap_or(0);
            match self
                .io
                .put_quorums(
                    &replicas,
                    &quorums,
                    version,
                    attempt >= STALE_LAYOUT_ATTEMPTS,
                    id,
                    data.clone(),
                )
                .await
            {
                Err(ClientError::StaleLayout(msg)) if attempt < STALE_LAYOUT_ATTEMPTS => {
                    tracing::debug!(%msg, "layout changed under a write; refreshing");
                    tokio::time::sleep(Duration::from_millis(50 * attempt as u64)).await;
                    view = self.refresh_layout().await?;
                }
                // Quorum missed in a version that may have been retired meanwhile (its
                // owners drained and gone): retry once the view has moved on.
                Err(ClientError::Blocks(msg)) if attempt < STALE_LAYOUT_ATTEMPTS => {
                    let fresh = self.refresh_layout().await?;
                    let versions = |v: &LayoutView| -> Vec<u64> {
                        v.versions.iter().map(|l| l.version).collect()
                    };
                    if versions(&fresh) == versions(&view) {
                        return Err(ClientError::Blocks(msg));
                    }
                    view = fresh;
                }
                other => return other,
            }
        }
    }

    fn replica(view: &LayoutView, id: NodeId) -> Option<Replica> {
        view.addrs.get(&id).map(|a| Replica {
            node: id,
            addr: a.clone(),
        })
    }

    /// The `rf` nodes a new block is written to (current layout).
    pub fn write_replicas(view: &LayoutView, block: &BlockId, rf: usize) -> Result<Vec<Replica>> {
        let layout = view
            .current()
            .ok_or_else(|| ClientError::Unavailable("the cluster has no layout yet".into()))?;
        let owners = layout.replicas_for_block(block);
        if owners.len() < rf {
            return Err(ClientError::Invalid(format!(
                "replication {rf} needs {rf} nodes but the layout places blocks on {}",
                owners.len()
            )));
        }
        owners[..rf]
            .iter()
            .map(|id| {
                Self::replica(view, *id)
                    .ok_or_else(|| ClientError::Protocol(format!("node {id} has no address")))
            })
            .collect()
    }

    /// Nodes to read a block from, best first: its owners in the newest *synced* layout
    /// (the oldest live version: newer ones are still being filled; healthy before
    /// recently failing ones), then owners in newer versions, then every other node.
    /// Blocks are immutable, so any copy that verifies is correct.
    pub fn read_replicas(&self, view: &LayoutView, block: &BlockId) -> Vec<Replica> {
        let mut ids: Vec<NodeId> = Vec::new();
        for l in view.versions.iter().rev() {
            for id in l.replicas_for_block(block) {
                if !ids.contains(id) {
                    ids.push(*id);
                }
            }
        }
        let owners = ids.len();
        for id in view.addrs.keys() {
            if !ids.contains(id) {
                ids.push(*id);
            }
        }
        let suspect = self.suspect.lock().unwrap_or_else(|p| p.into_inner());
        let recent = |id: &NodeId| {
            suspect
                .get(id)
                .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
        };
        let (owner_ids, others) = ids.split_at(owners);
        let mut ordered: Vec<NodeId> = owner_ids.iter().copied().filter(|i| !recent(i)).collect();
        ordered.extend(owner_ids.iter().copied().filter(|i| recent(i)));
        ordered.extend_from_slice(others);
        ordered
            .iter()
            .filter_map(|id| Self::replica(view, *id))
            .collect()
    }

    /// Remembers that `node` failed a call, so reads try it last for a while.
    pub fn mark_suspect(&self, node: NodeId) {
        self.suspect
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node, Instant::now());
    }
}
