//! The CSI Node service. A volume is FUSE-mounted once per node at its staging path by a
//! detached `ringfs mount` process (its own session, so the plugin can restart or be
//! upgraded without taking the mount down), and bind-mounted into each pod's target path.
//! The kernel mount table is the only state: a restarted plugin re-adopts what it finds.

use crate::caps;
use crate::error::{CsiError, Result};
use crate::mounts::{self, MountEntry};
use ringfs_client::Cluster;
use ringfs_proto::csi::node_server::Node;
use ringfs_proto::csi::node_service_capability::{self, rpc};
use ringfs_proto::csi::*;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Code, Request, Response, Status};
use tracing::instrument;

/// Topology key carrying the node's zone.
pub const TOPOLOGY_ZONE_KEY: &str = "topology.csi.ringfs.io/zone";
/// Topology key naming the ringfs cluster a node reaches. Every node of a cluster has the
/// same value (volumes are reachable from all of them); it gives capacity tracking
/// (CSIStorageCapacity) a segment to report the cluster's free space for.
pub const TOPOLOGY_CLUSTER_KEY: &str = "topology.csi.ringfs.io/cluster";

pub struct NodeConfig {
    pub node_id: String,
    pub zone: Option<String>,
    /// The cluster's name (reported as topology when it is a valid label value).
    pub cluster_name: String,
    /// The `ringfs` CLI that runs FUSE mounts.
    pub ringfs_bin: PathBuf,
    pub seeds: Vec<String>,
    /// Mutual TLS identity the mount processes present (`ringfs --tls-dir`).
    pub tls_dir: Option<PathBuf>,
    /// Where mount logs go.
    pub state_dir: PathBuf,
    /// Only ringfs mounts below this directory are adopted and repaired (the kubelet's).
    pub managed_root: PathBuf,
    /// How long a mount may take to answer statfs before it counts as dead.
    pub health_timeout: Duration,
    /// Cgroups FUSE daemons join so that they outlive the plugin's container.
    pub mount_cgroups: Option<Arc<crate::cgroups::MountCgroups>>,
}

pub struct NodeService {
    pub cfg: NodeConfig,
    cluster: Arc<Cluster>,
    /// Serializes mount-table changes: a stage, publish or repair sees a stable table.
    lock: tokio::sync::Mutex<()>,
}

/// Whether `path` (normalized: absolute, `..` resolved) lies inside `root`.
pub fn within(root: &Path, path: &Path) -> bool {
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    path.starts_with(&root)
}

fn require(field: &str, v: &str) -> Result<()> {
    if v.is_empty() {
        return Err(CsiError::InvalidArgument(format!("{field} is required")));
    }
    Ok(())
}

fn rpc_cap(t: rpc::Type) -> NodeServiceCapability {
    NodeServiceCapability {
        r#type: Some(node_service_capability::Type::Rpc(
            node_service_capability::Rpc { r#type: t as i32 },
        )),
    }
}

impl NodeService {
    /// `raw` normalized, refused unless inside the kubelet's directory (`--managed-root`):
    /// a request must never make this privileged plugin mount over, or unmount, anything
    /// else on the host (e.g. `/var/lib/kubelet/pods/../../../etc`).
    fn confined(&self, field: &str, raw: &str) -> Result<PathBuf> {
        let path = mounts::normalize(raw)?;
        if !within(&self.cfg.managed_root, &path) {
            return Err(CsiError::InvalidArgument(format!(
                "{field} {raw:?} resolves to {} outside {} (the kubelet directory, \
                 --managed-root); refusing to mount or unmount there",
                path.display(),
                self.cfg.managed_root.display()
            )));
        }
        Ok(path)
    }

    pub fn new(cfg: NodeConfig, cluster: Arc<Cluster>) -> NodeService {
        NodeService {
            cfg,
            cluster,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    async fn volume_exists(&self, id: &str) -> Result<()> {
        if ringfs_core::names::validate_volume_name(id).is_err() {
            return Err(CsiError::NotFound(format!("volume {id:?} does not exist")));
        }
        match self.cluster.volume(id).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(Code::NotFound) => {
                Err(CsiError::NotFound(format!("volume {id:?} does not exist")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Runs `ringfs mount --background` in a new session; returns once mounted.
    async fn fuse_mount(&self, volume: &str, dir: &Path) -> Result<()> {
        use std::os::unix::process::CommandExt;
        std::fs::create_dir_all(&self.cfg.state_dir).map_err(|e| {
            CsiError::Internal(format!("creating {}: {e}", self.cfg.state_dir.display()))
        })?;
        let log = self.cfg.state_dir.join(format!("mount-{volume}.log"));
        let mut cmd = std::process::Command::new(&self.cfg.ringfs_bin);
        cmd.arg("--cluster").arg(self.cfg.seeds.join(","));
        if let Some(t) = &self.cfg.tls_dir {
            cmd.arg("--tls-dir").arg(t);
        }
        cmd.arg("mount")
            .arg(volume)
            .arg(dir)
            .args(["--background", "--allow-other", "--log-file"])
            .arg(&log)
            .stdin(std::process::Stdio::null());
        let cgroups = self.cfg.mount_cgroups.clone();
        // SAFETY: setsid is async-signal-safe. A new session detaches the mount from the
        // plugin's process group and terminal, so signals to the plugin never reach it.
        // `MountCgroups::enter` only makes system calls on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                libc::setsid();
                if let Some(c) = &cgroups {
                    c.enter()?;
                }
                Ok(())
            });
        }
        let bin = self.cfg.ringfs_bin.clone();
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .map_err(|e| CsiError::Internal(format!("mount task: {e}")))?
            .map_err(|e| {
                CsiError::Internal(format!(
                    "starting {} for the mount: {e} (check --ringfs-bin, and \
                     --mount-cgroup-root when moving daemons out of the container)",
                    bin.display()
                ))
            })?;
        if !out.status.success() {
            return Err(CsiError::Internal(format!(
                "mounting volume {volume} on {} failed: {} (log: {})",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim(),
                log.display()
            )));
        }
        tracing::info!(volume, dir = %dir.display(), "FUSE mount started");
        Ok(())
    }

    /// Replaces the dead FUSE mount at `staging` with a fresh one and re-binds every
    /// publish of the old one (same device), keeping each one's read-only flag.
    async fn repair(&self, volume: &str, staging: &Path, old: &MountEntry) -> Result<()> {
        tracing::warn!(volume, staging = %staging.display(), "repairing a dead FUSE mount");
        let table = mounts::read_mountinfo()?;
        let binds: Vec<MountEntry> = table
            .iter()
            .filter(|m| m.dev == old.dev && m.mount_point != staging)
            .cloned()
            .collect();
        mounts::umount(staging, true)?;
        self.fuse_mount(volume, staging).await?;
        for b in binds {
            mounts::umount(&b.mount_point, true)?;
            let flags = if b.read_only() { libc::MS_RDONLY } else { 0 };
            mounts::bind(staging, &b.mount_point, flags)?;
            tracing::info!(target = %b.mount_point.display(), "publish re-bound");
        }
        Ok(())
    }

    /// The ringfs mounts this node manages, grouped by device: the staging mount (the
    /// oldest) and its binds.
    fn managed(&self, table: &[MountEntry]) -> BTreeMap<String, Vec<MountEntry>> {
        let mut by_dev: BTreeMap<String, Vec<MountEntry>> = BTreeMap::new();
        for m in table {
            if m.ringfs_volume().is_some() && m.mount_point.starts_with(&self.cfg.managed_root) {
                by_dev.entry(m.dev.clone()).or_default().push(m.clone());
            }
        }
        for v in by_dev.values_mut() {
            v.sort_by_key(|m| m.id);
        }
        by_dev
    }

    /// Checks every managed mount; repairs dead ones when `fix`. Returns
    /// (healthy, dead) counts. Called at start (re-adoption) and periodically.
    pub async fn sweep(&self, fix: bool) -> Result<(usize, usize)> {
        let _g = self.lock.lock().await;
        let table = mounts::read_mountinfo()?;
        let (mut ok, mut dead) = (0, 0);
        for group in self.managed(&table).values() {
            let staging = &group[0];
            let volume = staging.ringfs_volume().unwrap_or_default().to_string();
            match mounts::probe(&staging.mount_point, self.cfg.health_timeout).await {
                Ok(_) => {
                    ok += 1;
                    tracing::debug!(volume, staging = %staging.mount_point.display(), publishes = group.len() - 1, "mount healthy");
                }
                Err(why) => {
                    dead += 1;
                    tracing::warn!(volume, staging = %staging.mount_point.display(), %why, "mount dead");
                    if fix {
                        if let Err(e) = self.repair(&volume, &staging.mount_point, staging).await {
                            tracing::error!(volume, error = %e, "repair failed; retrying later");
                        }
                    }
                }
            }
        }
        Ok((ok, dead))
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    #[instrument(skip_all, fields(volume = %req.get_ref().volume_id), err)]
    async fn node_stage_volume(
        &self,
        req: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        let req = req.into_inner();
        require("volume_id", &req.volume_id)?;
        require("staging_target_path", &req.staging_target_path)?;
        caps::require_one(req.volume_capability.as_ref())?;
        self.volume_exists(&req.volume_id).await?;
        let staging = self.confined("staging_target_path", &req.staging_target_path)?;
        let _g = self.lock.lock().await;
        let table = mounts::read_mountinfo()?;
        if let Some(m) = mounts::mount_at(&table, &staging) {
            if m.ringfs_volume() != Some(req.volume_id.as_str()) {
                return Err(CsiError::AlreadyExists(format!(
                    "{} already has another file system mounted ({} {}); unstage it first",
                    staging.display(),
                    m.fstype,
                    m.source
                ))
                .into());
            }
            match mounts::probe(&staging, self.cfg.health_timeout).await {
                Ok(_) => return Ok(Response::new(NodeStageVolumeResponse {})),
                Err(why) => {
                    tracing::warn!(%why, "staged mount is dead; remounting");
                    self.repair(&req.volume_id, &staging, m).await?;
                    return Ok(Response::new(NodeStageVolumeResponse {}));
                }
            }
        }
        std::fs::create_dir_all(&staging)
            .map_err(|e| CsiError::Internal(format!("creating {}: {e}", staging.display())))?;
        self.fuse_mount(&req.volume_id, &staging).await?;
        Ok(Response::new(NodeStageVolumeResponse {}))
    }

    #[instrument(skip_all, fields(volume = %req.get_ref().volume_id), err)]
    async fn node_unstage_volume(
        &self,
        req: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        let req = req.into_inner();
        require("volume_id", &req.volume_id)?;
        require("staging_target_path", &req.staging_target_path)?;
        let staging = self.confined("staging_target_path", &req.staging_target_path)?;
        let _g = self.lock.lock().await;
        // Unmount every layer (a crash may have stacked mounts); the FUSE daemon exits
        // when its mount goes away.
        loop {
            let table = mounts::read_mountinfo()?;
            let Some(m) = mounts::mount_at(&table, &staging) else {
                break;
            };
            let dead = mounts::probe(&staging, self.cfg.health_timeout)
                .await
                .is_err();
            if mounts::umount(&m.mount_point, dead).is_err() {
                mounts::umount(&m.mount_point, true)?;
            }
        }
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }

    #[instrument(skip_all, fields(volume = %req.get_ref().volume_id), err)]
    async fn node_publish_volume(
        &self,
        req: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let req = req.into_inner();
        require("volume_id", &req.volume_id)?;
        require("staging_target_path", &req.staging_target_path)?;
        require("target_path", &req.target_path)?;
        let cap = caps::require_one(req.volume_capability.as_ref())?;
        let mut flags: libc::c_ulong = 0;
        if req.readonly || caps::is_read_only_mode(cap) {
            flags |= libc::MS_RDONLY;
        }
        if let Some(volume_capability::AccessType::Mount(m)) = &cap.access_type {
            for f in m.mount_flags.iter().flat_map(|f| f.split(',')) {
                flags |= mounts::flag_for(f.trim()).ok_or_else(|| {
                    CsiError::InvalidArgument(format!(
                        "mount option {f:?} is not supported on ringfs volumes; supported: ro, \
                         rw, noexec, nosuid, nodev, noatime, nodiratime, relatime"
                    ))
                })?;
            }
        }
        let staging = self.confined("staging_target_path", &req.staging_target_path)?;
        let target = self.confined("target_path", &req.target_path)?;
        let _g = self.lock.lock().await;
        let table = mounts::read_mountinfo()?;
        let Some(st) = mounts::mount_at(&table, &staging)
            .filter(|m| m.ringfs_volume() == Some(req.volume_id.as_str()))
            .cloned()
        else {
            return Err(CsiError::FailedPrecondition(format!(
                "volume {} is not staged at {}; call NodeStageVolume first",
                req.volume_id,
                staging.display()
            ))
            .into());
        };
        if mounts::probe(&staging, self.cfg.health_timeout)
            .await
            .is_err()
        {
            self.repair(&req.volume_id, &staging, &st).await?;
        }
        let table = mounts::read_mountinfo()?;
        if let Some(m) = mounts::mount_at(&table, &target) {
            let want_ro = flags & libc::MS_RDONLY != 0;
            if m.ringfs_volume() == Some(req.volume_id.as_str()) && m.read_only() == want_ro {
                return Ok(Response::new(NodePublishVolumeResponse {}));
            }
            return Err(CsiError::AlreadyExists(format!(
                "{} is already mounted ({} {}, {}) incompatibly with this request",
                target.display(),
                m.fstype,
                m.source,
                m.options
            ))
            .into());
        }
        // SINGLE_NODE_SINGLE_WRITER (ReadWriteOncePod): one publish at a time.
        let single = cap.access_mode.as_ref().map(|m| m.mode)
            == Some(volume_capability::access_mode::Mode::SingleNodeSingleWriter as i32);
        if let Some(other) = table
            .iter()
            .filter(|m| single && m.dev == st.dev && m.mount_point != staging)
            .find(|m| m.mount_point != target)
        {
            return Err(CsiError::FailedPrecondition(format!(
                "volume {} has single-writer access and is already published at {}",
                req.volume_id,
                other.mount_point.display()
            ))
            .into());
        }
        std::fs::create_dir_all(&target)
            .map_err(|e| CsiError::Internal(format!("creating {}: {e}", target.display())))?;
        mounts::bind(&staging, &target, flags)?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    #[instrument(skip_all, fields(volume = %req.get_ref().volume_id), err)]
    async fn node_unpublish_volume(
        &self,
        req: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let req = req.into_inner();
        require("volume_id", &req.volume_id)?;
        require("target_path", &req.target_path)?;
        let target = self.confined("target_path", &req.target_path)?;
        let _g = self.lock.lock().await;
        loop {
            let table = mounts::read_mountinfo()?;
            if mounts::mount_at(&table, &target).is_none() {
                break;
            }
            if mounts::umount(&target, false).is_err() {
                mounts::umount(&target, true)?;
            }
        }
        // The target directory is ours to remove (the CO creates only its parent).
        match std::fs::remove_dir(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(target = %target.display(), error = %e, "target left in place")
            }
        }
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    #[instrument(skip_all, fields(volume = %req.get_ref().volume_id), err)]
    async fn node_get_volume_stats(
        &self,
        req: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let req = req.into_inner();
        require("volume_id", &req.volume_id)?;
        require("volume_path", &req.volume_path)?;
        let path = mounted_path(&req.volume_id, &req.volume_path)?;
        let table = mounts::read_mountinfo()?;
        let mounted = mounts::mount_at(&table, &path)
            .is_some_and(|m| m.ringfs_volume() == Some(req.volume_id.as_str()));
        if !mounted {
            let what = if mounts::exists(&path, self.cfg.health_timeout).await {
                "is not mounted there"
            } else {
                "path does not exist"
            };
            return Err(CsiError::NotFound(format!(
                "volume {} at {}: {what}",
                req.volume_id,
                path.display()
            ))
            .into());
        }
        let resp = match mounts::probe(&path, self.cfg.health_timeout).await {
            Ok(s) => NodeGetVolumeStatsResponse {
                usage: vec![
                    VolumeUsage {
                        available: s.bytes_avail as i64,
                        total: s.bytes_total as i64,
                        used: s.bytes_total.saturating_sub(s.bytes_free) as i64,
                        unit: volume_usage::Unit::Bytes as i32,
                    },
                    VolumeUsage {
                        available: s.inodes_free as i64,
                        total: s.inodes_total as i64,
                        used: s.inodes_total.saturating_sub(s.inodes_free) as i64,
                        unit: volume_usage::Unit::Inodes as i32,
                    },
                ],
                volume_condition: Some(VolumeCondition {
                    abnormal: false,
                    message: "mounted and answering".into(),
                }),
            },
            Err(why) => NodeGetVolumeStatsResponse {
                usage: vec![],
                volume_condition: Some(VolumeCondition {
                    abnormal: true,
                    message: format!(
                        "{why}; the node plugin remounts it on the next check or stage"
                    ),
                }),
            },
        };
        Ok(Response::new(resp))
    }

    #[instrument(skip_all, fields(volume = %req.get_ref().volume_id), err)]
    async fn node_expand_volume(
        &self,
        req: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        let req = req.into_inner();
        require("volume_id", &req.volume_id)?;
        require("volume_path", &req.volume_path)?;
        if let Some(c) = &req.volume_capability {
            if let Some(why) = caps::unsupported(c) {
                return Err(CsiError::InvalidArgument(why).into());
            }
        }
        let path = mounted_path(&req.volume_id, &req.volume_path)?;
        let table = mounts::read_mountinfo()?;
        let mounted = mounts::mount_at(&table, &path)
            .is_some_and(|m| m.ringfs_volume() == Some(req.volume_id.as_str()));
        if !mounted {
            return Err(CsiError::NotFound(format!(
                "volume {} is not mounted at {}",
                req.volume_id,
                path.display()
            ))
            .into());
        }
        // The capacity is a cluster-side quota: nothing to grow on the node. Report what
        // the mount now shows.
        let s = mounts::probe(&path, self.cfg.health_timeout)
            .await
            .map_err(CsiError::Unavailable)?;
        Ok(Response::new(NodeExpandVolumeResponse {
            capacity_bytes: s.bytes_total as i64,
        }))
    }

    async fn node_get_capabilities(
        &self,
        _req: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: vec![
                rpc_cap(rpc::Type::StageUnstageVolume),
                rpc_cap(rpc::Type::GetVolumeStats),
                rpc_cap(rpc::Type::VolumeCondition),
                rpc_cap(rpc::Type::ExpandVolume),
                rpc_cap(rpc::Type::SingleNodeMultiWriter),
            ],
        }))
    }

    async fn node_get_info(
        &self,
        _req: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        let mut segments = HashMap::new();
        if let Some(z) = &self.cfg.zone {
            segments.insert(TOPOLOGY_ZONE_KEY.to_string(), z.clone());
        }
        if is_label_value(&self.cfg.cluster_name) {
            segments.insert(
                TOPOLOGY_CLUSTER_KEY.to_string(),
                self.cfg.cluster_name.clone(),
            );
        }
        let accessible_topology = (!segments.is_empty()).then_some(Topology { segments });
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.cfg.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology,
        }))
    }
}

/// The path a volume is said to be mounted at, for the calls that ask about a mounted
/// volume (stats, expand): a path that is not absolute cannot be one, so the volume is
/// NOT_FOUND there (the spec's answer), not an invalid argument.
/// A valid Kubernetes label value: at most 63 characters, alphanumerics with `-`, `_`
/// and `.` inside.
fn is_label_value(v: &str) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.first().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.last().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
}

fn mounted_path(volume_id: &str, volume_path: &str) -> Result<std::path::PathBuf, Status> {
    if !std::path::Path::new(volume_path).is_absolute() {
        return Err(CsiError::NotFound(format!(
            "volume {volume_id} is not mounted at {volume_path:?}: not an absolute path"
        ))
        .into());
    }
    Ok(mounts::normalize(volume_path)?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths_outside_the_kubelet_directory_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("kubelet");
        std::fs::create_dir_all(root.join("pods/p1/volumes")).unwrap();
        let inside = mounts::normalize(&format!("{}/pods/p1/volumes/v", root.display())).unwrap();
        assert!(within(&root, &inside));
        // `..` climbing out is resolved before the check.
        let escape = mounts::normalize(&format!(
            "{}/pods/p1/volumes/../../../../etc",
            root.display()
        ))
        .unwrap();
        assert!(!within(&root, &escape), "{}", escape.display());
        assert!(!within(&root, Path::new("/etc")));
        // A sibling whose name merely starts like the root is outside too.
        let sibling = tmp.path().join("kubelet-evil/x");
        assert!(!within(&root, &sibling));
    }

    use super::{is_label_value, mounts, within};
    use std::path::Path;

    #[test]
    fn cluster_names_become_topology_only_when_valid_label_values() {
        for ok in ["ringfs", "prod-1", "a.b_c", "x"] {
            assert!(is_label_value(ok), "{ok}");
        }
        let long = "a".repeat(64);
        for bad in ["", "-a", "a-", "a b", "ä", long.as_str()] {
            assert!(!is_label_value(bad), "{bad}");
        }
    }
}
