//! What the operator asks of a running ringfs cluster, behind a trait so reconcilers are
//! unit-tested with a scripted fake instead of real nodes.

use futures::future::BoxFuture;
pub use ringfs_client::VolumeSource;
use ringfs_client::{ClientError, Cluster};
use ringfs_proto::admin::admin_service_client::AdminServiceClient;
use ringfs_proto::admin::{DrainRequest, RebalanceStatusRequest, RemoveRequest};
use std::sync::Arc;
use std::time::Duration;

/// One node as the cluster sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberInfo {
    pub id: u64,
    pub addr: String,
    /// "active", "draining", "drained" or "down" (older servers report "").
    pub state: String,
}

/// The cluster-wide picture used for status and scale decisions.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClusterState {
    pub leader: Option<u64>,
    pub layout_version: u64,
    pub members: Vec<MemberInfo>,
}

/// Data movement as reported by `RebalanceStatus`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rebalance {
    pub active: bool,
    pub healthy: bool,
    pub partitions_total: u32,
    pub partitions_left: u32,
    pub bytes_moved: u64,
    pub bytes_left: u64,
    pub under_replicated: u32,
    pub eta_seconds: f64,
    pub nodes: Vec<MemberInfo>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VolumeInfo {
    pub id: u64,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub replication: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The cluster refused the request because of its input or state (not retryable as is).
    #[error("{0}")]
    Refused(String),
    /// The named volume does not exist.
    #[error("volume not found")]
    NotFound,
    /// The server does not implement the call yet.
    #[error("the ringfs nodes do not support {0} yet (upgrade the image)")]
    Unimplemented(&'static str),
    /// The cluster could not be reached or had no leader.
    #[error("cluster unreachable: {0}")]
    Unavailable(String),
}

fn map_err(e: ClientError, call: &'static str) -> AdminError {
    match e.code() {
        Some(tonic::Code::NotFound) => AdminError::NotFound,
        Some(tonic::Code::Unimplemented) => AdminError::Unimplemented(call),
        Some(
            tonic::Code::InvalidArgument
            | tonic::Code::FailedPrecondition
            | tonic::Code::AlreadyExists
            | tonic::Code::ResourceExhausted
            | tonic::Code::OutOfRange,
        ) => AdminError::Refused(e.to_string()),
        _ => AdminError::Unavailable(e.to_string()),
    }
}

pub type AdminResult<T> = Result<T, AdminError>;

/// Which cluster to call and how: node addresses, and the admin TLS identity when the
/// cluster runs mutual TLS.
#[derive(Clone, Debug, Default)]
pub struct Target {
    pub seeds: Vec<String>,
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

/// Admin and volume calls against the ringfs cluster `target`.
pub trait Admin: Send + Sync {
    fn state(&self, target: Target) -> BoxFuture<'_, AdminResult<ClusterState>>;
    fn rebalance(&self, target: Target) -> BoxFuture<'_, AdminResult<Rebalance>>;
    fn drain(&self, target: Target, node: u64) -> BoxFuture<'_, AdminResult<()>>;
    fn remove(&self, target: Target, node: u64) -> BoxFuture<'_, AdminResult<bool>>;
    fn volume(&self, target: Target, name: String) -> BoxFuture<'_, AdminResult<VolumeInfo>>;
    /// Creates the volume, empty or (with `source`) as a copy-on-write clone.
    fn create_volume(
        &self,
        target: Target,
        name: String,
        capacity: u64,
        replication: u32,
        source: Option<VolumeSource>,
    ) -> BoxFuture<'_, AdminResult<VolumeInfo>>;
    fn resize_volume(
        &self,
        target: Target,
        name: String,
        capacity: u64,
    ) -> BoxFuture<'_, AdminResult<VolumeInfo>>;
    fn delete_volume(&self, target: Target, name: String) -> BoxFuture<'_, AdminResult<bool>>;
}

/// The real implementation over gRPC (`ringfs-client`).
pub struct GrpcAdmin {
    /// Bounded so a reconcile never blocks long on an unreachable cluster.
    pub retry_budget: Duration,
}

impl Default for GrpcAdmin {
    fn default() -> Self {
        GrpcAdmin {
            retry_budget: Duration::from_secs(5),
        }
    }
}

impl GrpcAdmin {
    fn connect(&self, target: Target) -> AdminResult<Arc<Cluster>> {
        let pool = ringfs_client::ChannelPool::with_credentials(target.tls, None)
            .map_err(|e| AdminError::Refused(e.to_string()))?;
        let c = Cluster::with_pool(target.seeds, pool)
            .map_err(|e| AdminError::Refused(e.to_string()))?;
        // A fresh connection per call: the seed set changes with the cluster's size, and
        // the operator's calls are rare.
        let mut c = Arc::try_unwrap(c).unwrap_or_else(|_| unreachable!("just created"));
        c.retry_budget = self.retry_budget;
        Ok(Arc::new(c))
    }
}

fn admin_client(ch: ringfs_client::NodeChannel) -> AdminServiceClient<ringfs_client::NodeChannel> {
    AdminServiceClient::new(ch)
}

fn member(n: &ringfs_proto::admin::NodeInfo) -> MemberInfo {
    MemberInfo {
        id: n.id,
        addr: n.addr.clone(),
        state: n.state.clone(),
    }
}

fn volume_info(v: ringfs_proto::meta::Volume) -> VolumeInfo {
    VolumeInfo {
        id: v.id,
        capacity_bytes: v.capacity_bytes,
        used_bytes: v.used_bytes,
        replication: v.replication,
    }
}

impl Admin for GrpcAdmin {
    fn state(&self, target: Target) -> BoxFuture<'_, AdminResult<ClusterState>> {
        Box::pin(async move {
            let c = self.connect(target)?;
            let s = c.status().await.map_err(|e| map_err(e, "Status"))?;
            Ok(ClusterState {
                leader: (s.leader_id != 0).then_some(s.leader_id),
                layout_version: s.layout_version,
                members: s.nodes.iter().map(member).collect(),
            })
        })
    }

    fn rebalance(&self, target: Target) -> BoxFuture<'_, AdminResult<Rebalance>> {
        Box::pin(async move {
            let c = self.connect(target)?;
            let r = c
                .call(|ch| async move {
                    admin_client(ch)
                        .rebalance_status(RebalanceStatusRequest {})
                        .await
                })
                .await
                .map_err(|e| map_err(e, "RebalanceStatus"))?;
            Ok(Rebalance {
                active: r.active,
                healthy: r.healthy,
                partitions_total: r.partitions_total,
                partitions_left: r.partitions_left,
                bytes_moved: r.bytes_moved,
                bytes_left: r.bytes_left,
                under_replicated: r.under_replicated,
                eta_seconds: r.eta_seconds,
                nodes: r.nodes.iter().map(member).collect(),
                message: r.message,
            })
        })
    }

    fn drain(&self, target: Target, node: u64) -> BoxFuture<'_, AdminResult<()>> {
        Box::pin(async move {
            let c = self.connect(target)?;
            let req = DrainRequest {
                node_id: node,
                cancel: false,
            };
            c.call(|ch| async move { admin_client(ch).drain(req).await })
                .await
                .map_err(|e| map_err(e, "Drain"))?;
            Ok(())
        })
    }

    fn remove(&self, target: Target, node: u64) -> BoxFuture<'_, AdminResult<bool>> {
        Box::pin(async move {
            let c = self.connect(target)?;
            let req = RemoveRequest {
                node_id: node,
                force: false,
            };
            let r = c
                .call(|ch| async move { admin_client(ch).remove(req).await })
                .await
                .map_err(|e| map_err(e, "Remove"))?;
            Ok(r.removed)
        })
    }

    fn volume(&self, target: Target, name: String) -> BoxFuture<'_, AdminResult<VolumeInfo>> {
        Box::pin(async move {
            let c = self.connect(target)?;
            let v = c.volume(&name).await.map_err(|e| map_err(e, "GetVolume"))?;
            Ok(volume_info(v))
        })
    }

    fn create_volume(
        &self,
        target: Target,
        name: String,
        capacity: u64,
        replication: u32,
        source: Option<VolumeSource>,
    ) -> BoxFuture<'_, AdminResult<VolumeInfo>> {
        Box::pin(async move {
            let c = self.connect(target)?;
            let (v, _) = match &source {
                None => c.create_volume(&name, capacity, replication).await,
                Some(src) => c.clone_volume(&name, capacity, replication, src).await,
            }
            .map_err(|e| map_err(e, "CreateVolume"))?;
            Ok(volume_info(v))
        })
    }

    fn resize_volume(
        &self,
        target: Target,
        name: String,
        capacity: u64,
    ) -> BoxFuture<'_, AdminResult<VolumeInfo>> {
        Box::pin(async move {
            let c = self.connect(target)?;
            let v = c
                .resize_volume(&name, capacity)
                .await
                .map_err(|e| map_err(e, "ResizeVolume"))?;
            Ok(volume_info(v))
        })
    }

    fn delete_volume(&self, target: Target, name: String) -> BoxFuture<'_, AdminResult<bool>> {
        Box::pin(async move {
            let c = self.connect(target)?;
            c.delete_volume(&name)
                .await
                .map_err(|e| map_err(e, "DeleteVolume"))
        })
    }
}
