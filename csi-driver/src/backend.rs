//! Where volumes and snapshots live. The controller talks to a [`VolumeBackend`]: today
//! the ringfs cluster directly ([`ClusterBackend`]); a Kubernetes backend that creates
//! `DfsVolume` objects (so `kubectl get dfsvolumes` shows them) can implement the same
//! trait.

use crate::error::{CsiError, Result};
use async_trait::async_trait;
use ringfs_client::{Cluster, VolumeSource};
use std::sync::Arc;
use tonic::Code;

/// A volume as the controller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    pub capacity: u64,
    pub replication: u32,
    pub used: u64,
    /// What the volume was cloned from, if anything.
    pub source: Option<ContentSource>,
}

/// The content a volume was created from (CSI `VolumeContentSource`), by ringfs name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentSource {
    Snapshot(String),
    Volume(String),
}

/// A snapshot as the controller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub name: String,
    pub source_volume: String,
    /// Bytes it holds: the least capacity of a volume restored from it.
    pub size: u64,
    /// The source's capacity when it was taken.
    pub source_capacity: u64,
    pub replication: u32,
    /// Unix time in nanoseconds.
    pub created_ns: i64,
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
    /// Creates a volume as a copy-on-write clone of `source` (replication 0: the
    /// source's). A missing source is `NotFound`; an existing volume of that name with
    /// another source or other parameters is `AlreadyExists`.
    async fn clone_volume(
        &self,
        name: &str,
        capacity: u64,
        replication: u32,
        source: &ContentSource,
    ) -> Result<VolumeInfo>;
    async fn get_snapshot(&self, name: &str) -> Result<Option<SnapshotInfo>>;
    /// Takes a snapshot; the same name of another volume is `AlreadyExists`, a missing
    /// volume `NotFound`.
    async fn create_snapshot(&self, name: &str, source_volume: &str) -> Result<SnapshotInfo>;
    /// Deletes a snapshot; a missing one is success.
    async fn delete_snapshot(&self, name: &str) -> Result<()>;
    /// All snapshots, sorted by name.
    async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>>;
}

/// Volumes kept directly in a ringfs cluster through its metadata API.
pub struct ClusterBackend {
    pub cluster: Arc<Cluster>,
}

fn info(v: ringfs_proto::meta::Volume) -> VolumeInfo {
    let source = if !v.source_snapshot.is_empty() {
        Some(ContentSource::Snapshot(v.source_snapshot))
    } else if !v.source_volume.is_empty() {
        Some(ContentSource::Volume(v.source_volume))
    } else {
        None
    };
    VolumeInfo {
        name: v.name,
        capacity: v.capacity_bytes,
        replication: v.replication,
        used: v.used_bytes,
        source,
    }
}

fn snapshot_info(s: ringfs_proto::meta::Snapshot) -> SnapshotInfo {
    SnapshotInfo {
        name: s.name,
        source_volume: s.source_volume,
        size: s.size_bytes,
        source_capacity: s.source_capacity_bytes,
        replication: s.replication,
        created_ns: s.created_unix_nanos,
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
        // Raw bytes in use: every volume's and snapshot's logical usage times its
        // replication (the status reply's byte counts are one node's, not the cluster's).
        // Clones and snapshots share blocks with their sources, so this overestimates:
        // the safe side for admission.
        let volumes: u64 = self
            .cluster
            .list_volumes()
            .await?
            .iter()
            .map(|v| v.used_bytes.saturating_mul(u64::from(v.replication.max(1))))
            .sum();
        let snapshots: u64 = self
            .cluster
            .list_snapshots(None)
            .await?
            .iter()
            .map(|s| s.size_bytes.saturating_mul(u64::from(s.replication.max(1))))
            .sum();
        let used = volumes.saturating_add(snapshots);
        let free = raw.saturating_sub(used);
        Ok(CapacityInfo {
            available: free / u64::from(rf),
            max_volume: raw / u64::from(rf),
        })
    }

    async fn clone_volume(
        &self,
        name: &str,
        capacity: u64,
        replication: u32,
        source: &ContentSource,
    ) -> Result<VolumeInfo> {
        let source = match source {
            ContentSource::Snapshot(s) => VolumeSource::Snapshot(s.clone()),
            ContentSource::Volume(v) => VolumeSource::Volume(v.clone()),
        };
        let (v, _created) = self
            .cluster
            .clone_volume(name, capacity, replication, &source)
            .await?;
        Ok(info(v))
    }

    async fn get_snapshot(&self, name: &str) -> Result<Option<SnapshotInfo>> {
        match self.cluster.snapshot(name).await {
            Ok(s) => Ok(Some(snapshot_info(s))),
            Err(e) if e.code() == Some(Code::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn create_snapshot(&self, name: &str, source_volume: &str) -> Result<SnapshotInfo> {
        let (s, _created) = self.cluster.create_snapshot(name, source_volume).await?;
        Ok(snapshot_info(s))
    }

    async fn delete_snapshot(&self, name: &str) -> Result<()> {
        match self.cluster.delete_snapshot(name).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(Code::NotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        // The cluster answers in name order.
        Ok(self
            .cluster
            .list_snapshots(None)
            .await?
            .into_iter()
            .map(snapshot_info)
            .collect())
    }
}
