//! Volumes as `DfsVolume` objects: with `--dfs-cluster`, the controller creates, resizes
//! and deletes a DfsVolume per CSI volume and lets the ringfs operator do the work, so
//! `kubectl get dfsvolumes` shows every provisioned volume with its phase, capacity and
//! usage, and deleting a PVC deletes its DfsVolume (whose finalizer deletes the data).
//! Reads, listings, capacity and snapshots go to the cluster directly ([`ClusterBackend`]).

use crate::backend::{
    CapacityInfo, ClusterBackend, ContentSource, SnapshotInfo, VolumeBackend, VolumeInfo,
};
use crate::error::{CsiError, Result};
use async_trait::async_trait;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::Api;
use ringfs_api::{AccessMode, DfsCluster, DfsVolume, DfsVolumeSource, DfsVolumeSpec, VolumePhase};
use std::time::Duration;

/// Field manager of the controller's applies.
const MANAGER: &str = "ringfs-csi";
/// Label on DfsVolumes the driver created.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "ringfs-csi");

pub struct KubeBackend {
    pub inner: ClusterBackend,
    pub volumes: Api<DfsVolume>,
    pub clusters: Api<DfsCluster>,
    /// The DfsCluster (same namespace) volumes are created in.
    pub cluster: String,
    /// How long a call waits for the operator before answering `Aborted` (the sidecars
    /// retry; every step is idempotent).
    pub wait: Duration,
}

fn kube_err(what: &str, e: kube::Error) -> CsiError {
    CsiError::Unavailable(format!("{what}: Kubernetes API: {e}"))
}

fn spec_matches(a: &DfsVolumeSpec, b: &DfsVolumeSpec) -> bool {
    a.cluster == b.cluster
        && a.capacity == b.capacity
        && a.replication == b.replication
        && a.source == b.source
}

fn ready_message(dv: &DfsVolume) -> String {
    dv.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| format!("{}: {}", c.reason, c.message))
        .unwrap_or_else(|| "not reconciled yet (is the ringfs operator running?)".into())
}

impl KubeBackend {
    /// DfsVolume `name`, if it exists.
    async fn fetch(&self, name: &str) -> Result<Option<DfsVolume>> {
        self.volumes
            .get_opt(name)
            .await
            .map_err(|e| kube_err("reading the DfsVolume", e))
    }

    async fn replication(&self, asked: u32) -> Result<u32> {
        if asked > 0 {
            return Ok(asked);
        }
        let dc = self
            .clusters
            .get_opt(&self.cluster)
            .await
            .map_err(|e| kube_err("reading the DfsCluster", e))?
            .ok_or_else(|| {
                CsiError::FailedPrecondition(format!(
                    "DfsCluster {:?} does not exist; fix --dfs-cluster (csi.dfsCluster)",
                    self.cluster
                ))
            })?;
        Ok(dc.spec.replication)
    }

    /// Applies the DfsVolume and waits for the operator to bind it.
    async fn ensure(
        &self,
        name: &str,
        capacity: u64,
        replication: u32,
        source: Option<&ContentSource>,
    ) -> Result<VolumeInfo> {
        let spec = DfsVolumeSpec {
            cluster: self.cluster.clone(),
            volume_name: None,
            capacity: capacity.to_string(),
            replication: self.replication(replication).await?,
            access_mode: AccessMode::ReadWriteMany,
            source: source.map(|s| match s {
                ContentSource::Snapshot(s) => DfsVolumeSource {
                    snapshot: Some(s.clone()),
                    volume: None,
                },
                ContentSource::Volume(v) => DfsVolumeSource {
                    snapshot: None,
                    volume: Some(v.clone()),
                },
            }),
        };
        let existing = self.fetch(name).await?;
        match &existing {
            Some(dv) if !spec_matches(&dv.spec, &spec) => {
                return Err(CsiError::AlreadyExists(format!(
                    "DfsVolume {name} exists with other parameters (capacity {}, replication {}, source {:?})",
                    dv.spec.capacity, dv.spec.replication, dv.spec.source
                )))
            }
            Some(_) => {}
            None => {
                let mut dv = DfsVolume::new(name, spec);
                dv.metadata.labels = Some(
                    [(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())]
                        .into_iter()
                        .collect(),
                );
                let body = serde_json::json!({
                    "apiVersion": "ringfs.io/v1alpha1",
                    "kind": "DfsVolume",
                    "metadata": dv.metadata,
                    "spec": dv.spec,
                });
                self.volumes
                    .patch(name, &PatchParams::apply(MANAGER), &Patch::Apply(&body))
                    .await
                    .map_err(|e| kube_err("creating the DfsVolume", e))?;
            }
        }
        self.wait_for(name, "bound", |dv| {
            let st = dv.status.as_ref()?;
            match st.phase {
                Some(VolumePhase::Bound) if st.capacity_bytes == Some(capacity) => Some(Ok(())),
                Some(VolumePhase::Failed) => Some(Err(CsiError::InvalidArgument(format!(
                    "DfsVolume {name} failed: {}",
                    ready_message(dv)
                )))),
                _ => None,
            }
        })
        .await?;
        self.inner.get(name).await?.ok_or_else(|| {
            CsiError::Aborted(format!("volume {name} is Bound but not in the cluster yet"))
        })
    }

    /// Polls DfsVolume `name` until `done` gives an answer, at most `self.wait`.
    async fn wait_for(
        &self,
        name: &str,
        what: &str,
        done: impl Fn(&DfsVolume) -> Option<Result<()>>,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let dv = self.fetch(name).await?.ok_or_else(|| {
                CsiError::Aborted(format!("DfsVolume {name} disappeared while being {what}"))
            })?;
            if let Some(r) = done(&dv) {
                return r;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CsiError::Aborted(format!(
                    "DfsVolume {name} is not {what} yet ({}); retry",
                    ready_message(&dv)
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[async_trait]
impl VolumeBackend for KubeBackend {
    async fn get(&self, name: &str) -> Result<Option<VolumeInfo>> {
        self.inner.get(name).await
    }

    async fn create(&self, name: &str, capacity: u64, replication: u32) -> Result<VolumeInfo> {
        self.ensure(name, capacity, replication, None).await
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let exists = self.fetch(name).await?.is_some();
        if !exists {
            // Not made through a DfsVolume (or already gone): delete it directly.
            return self.inner.delete(name).await;
        }
        match self.volumes.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(e) => return Err(kube_err("deleting the DfsVolume", e)),
        }
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let left = self.fetch(name).await?;
            match left {
                None => return Ok(()),
                Some(dv) if tokio::time::Instant::now() >= deadline => {
                    return Err(CsiError::Aborted(format!(
                        "DfsVolume {name} is still being deleted ({}); retry",
                        ready_message(&dv)
                    )))
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    async fn list(&self) -> Result<Vec<VolumeInfo>> {
        self.inner.list().await
    }

    async fn resize(&self, name: &str, capacity: u64) -> Result<VolumeInfo> {
        let exists = self.fetch(name).await?.is_some();
        if !exists {
            return self.inner.resize(name, capacity).await;
        }
        self.volumes
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"capacity": capacity.to_string()}})),
            )
            .await
            .map_err(|e| kube_err("resizing the DfsVolume", e))?;
        self.wait_for(name, "resized", |dv| {
            let st = dv.status.as_ref()?;
            if st.capacity_bytes == Some(capacity) {
                return Some(Ok(()));
            }
            (st.phase == Some(VolumePhase::Failed)).then(|| {
                Err(CsiError::InvalidArgument(format!(
                    "resizing DfsVolume {name} failed: {}",
                    ready_message(dv)
                )))
            })
        })
        .await?;
        self.inner
            .get(name)
            .await?
            .ok_or_else(|| CsiError::NotFound(format!("volume {name} does not exist")))
    }

    async fn capacity(&self, replication: u32) -> Result<CapacityInfo> {
        self.inner.capacity(replication).await
    }

    async fn clone_volume(
        &self,
        name: &str,
        capacity: u64,
        replication: u32,
        source: &ContentSource,
    ) -> Result<VolumeInfo> {
        // A missing source is NotFound (the CSI spec's answer), not a Failed DfsVolume.
        let found = match source {
            ContentSource::Snapshot(s) => self.inner.get_snapshot(s).await?.is_some(),
            ContentSource::Volume(v) => self.inner.get(v).await?.is_some(),
        };
        if !found {
            return Err(CsiError::NotFound(format!(
                "clone source {source:?} does not exist"
            )));
        }
        self.ensure(name, capacity, replication, Some(source)).await
    }

    async fn get_snapshot(&self, name: &str) -> Result<Option<SnapshotInfo>> {
        self.inner.get_snapshot(name).await
    }

    async fn create_snapshot(&self, name: &str, source_volume: &str) -> Result<SnapshotInfo> {
        self.inner.create_snapshot(name, source_volume).await
    }

    async fn delete_snapshot(&self, name: &str) -> Result<()> {
        self.inner.delete_snapshot(name).await
    }

    async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        self.inner.list_snapshots().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cap: &str, rf: u32, source: Option<DfsVolumeSource>) -> DfsVolumeSpec {
        DfsVolumeSpec {
            cluster: "c".into(),
            volume_name: None,
            capacity: cap.into(),
            replication: rf,
            access_mode: AccessMode::ReadWriteOnce,
            source,
        }
    }

    #[test]
    fn repeats_match_only_with_the_same_parameters() {
        let snap = Some(DfsVolumeSource {
            snapshot: Some("s".into()),
            volume: None,
        });
        assert!(spec_matches(&spec("10", 3, None), &spec("10", 3, None)));
        assert!(!spec_matches(&spec("10", 3, None), &spec("11", 3, None)));
        assert!(!spec_matches(&spec("10", 3, None), &spec("10", 2, None)));
        assert!(!spec_matches(
            &spec("10", 3, None),
            &spec("10", 3, snap.clone())
        ));
        assert!(spec_matches(
            &spec("10", 3, snap.clone()),
            &spec("10", 3, snap)
        ));
    }
}
