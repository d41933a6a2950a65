//! Where volumes live. The controller talks to a [`VolumeBackend`]: today the ringfs
//! cluster directly ([`ClusterBackend`]); a Kubernetes backend that creates `DfsVolume`
//! objects (so `kubectl get dfsvolumes` shows them) can implement the same trait.

use crate::error::{CsiError, Result};
use async_trait::async_trait;
use ringfs_client::Cluster;
use std::sync::Arc;
use tonic::Code;

/// A volume as the controller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    pub capacity: u64,
    pub replication: u32,
    pub used: u64,
}

/// What can still be provisioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacityInfo {
    /// Bytes a new volume could actually store now (free raw space / replication).
    pub available: u64,
    /// Largest capacity a single volume may be given (raw capacity / replication).
    pub max_volume: u64,
}

#[async_trait]
pub trait VolumeBackend: Send + Sync + 'static {
    async fn get(&self, name: &str) -> Result<Option<VolumeInfo>>;
    /// Creates a volume; an existing one with other parameters is `AlreadyExists`.
    async fn create(&self, name: &str, capacity: u64, replication: u32) -> Result<VolumeInfo>;
    /// Deletes a volume and its data; a missing volume is success.
    async fn delete(&self, name: &str) -> Result<()>;
    /// All volumes, sorted by name.
    async fn list(&self) -> Result<Vec<VolumeInfo>>;
    async fn resize(&self, name: &str, capacity: u64) -> Result<VolumeInfo>;
    /// Capacity for volumes of the given replication (0 = the cluster default).
    async fn capacity(&self, replication: u32) -> Result<CapacityInfo>;
}

/// Volumes kept directly in a ringfs cluster through its metadata API.
pub struct ClusterBackend {
    pub cluster: Arc<Cluster>,
}

fn info(v: ringfs_proto::meta::Volume) -> VolumeInfo {
    VolumeInfo {
        name: v.name,
        capacity: v.capacity_bytes,
        replication: v.replication,
        used: v.used_bytes,
    }
}

#[async_trait]
impl VolumeBackend for ClusterBackend {
    async fn get(&self, name: &str) -> Result<Option<VolumeInfo>> {
        match self.cluster.volume(name).await {
            Ok(v) => Ok(Some(info(v))),
            Err(e) if e.code() == Some(Code::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn create(&self, name: &str, capacity: u64, replication: u32) -> Result<VolumeInfo> {
        let (v, _created) = self
            .cluster
            .create_volume(name, capacity, replication)
            .await?;
        Ok(info(v))
    }

    async fn delete(&self, name: &str) -> Result<()> {
        match self.cluster.delete_volume(name).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(Code::NotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn list(&self) -> Result<Vec<VolumeInfo>> {
        let mut v: Vec<VolumeInfo> = self
            .cluster
            .list_volumes()
            .await?
            .into_iter()
            .map(info)
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    async fn resize(&self, name: &str, capacity: u64) -> Result<VolumeInfo> {
        Ok(info(self.cluster.resize_volume(name, capacity).await?))
    }

    async fn capacity(&self, replication: u32) -> Result<CapacityInfo> {
        let s = self.cluster.status().await?;
        let raw: u64 = s.nodes.iter().map(|n| n.capacity_bytes).sum();
        let rf = if replication == 0 {
            s.replication.max(1)
        } else {
            replication
        };
        if rf as usize > s.nodes.len() {
            return Err(CsiError::InvalidArgument(format!(
                "replication {rf} needs at least {rf} storage nodes; the cluster has {}",
                s.nodes.len()
            )));
        }
        // Raw bytes in use: every volume's logical usage times its replication (the status
        // reply's byte counts are one node's, not the cluster's).
        let used: u64 = self
            .cluster
            .list_volumes()
            .await?
            .iter()
            .map(|v| v.used_bytes.saturating_mul(u64::from(v.replication.max(1))))
            .sum();
        let free = raw.saturating_sub(used);
        Ok(CapacityInfo {
            available: free / u64::from(rf),
            max_volume: raw / u64::from(rf),
        })
    }
}
