//! The CSI Controller service: volume and snapshot lifecycle on a [`VolumeBackend`].
//!
//! Snapshots are ringfs snapshots (copy-on-write: a consistent copy of the volume's
//! metadata that shares its blocks), ready as soon as CreateSnapshot returns. A volume
//! created from a snapshot or another volume is a ringfs clone: writable, independent of
//! its source, sharing the source's blocks until either side rewrites them. Snapshot ids
//! are ringfs snapshot names, derived from CSI names like volume ids.

use crate::backend::{ContentSource, SnapshotInfo, VolumeBackend, VolumeInfo};
use crate::caps;
use crate::error::{CsiError, Result};
use crate::names::{page_token, parse_page_token, volume_id_for};
use ringfs_proto::csi::controller_server::Controller;
use ringfs_proto::csi::controller_service_capability::{self, rpc};
use ringfs_proto::csi::*;
use std::collections::HashMap;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::instrument;

/// StorageClass parameter: replication factor of new volumes (default: the cluster's).
pub const PARAM_REPLICATION: &str = "replication";
/// StorageClass parameter: which ringfs cluster (checked against `--cluster-name`).
pub const PARAM_CLUSTER: &str = "cluster";
/// Prefix of the parameters the external-provisioner adds (PVC/PV names); ignored.
const K8S_PARAM_PREFIX: &str = "csi.storage.k8s.io/";

pub struct ControllerService {
    pub backend: Arc<dyn VolumeBackend>,
    /// Name of the cluster this controller serves; `cluster` parameters must match.
    pub cluster_name: String,
    /// Capacity of a volume whose request gives no size.
    pub default_capacity: u64,
}

struct Params {
    replication: u32,
}

impl ControllerService {
    fn params(&self, p: &HashMap<String, String>) -> Result<Params> {
        let mut out = Params { replication: 0 };
        for (k, v) in p {
            match k.as_str() {
                PARAM_REPLICATION => {
                    out.replication = v.trim().parse().ok().filter(|r| (1..=7).contains(r)).ok_or_else(|| {
                        CsiError::InvalidArgument(format!(
                            "parameter {PARAM_REPLICATION}={v:?} is invalid: give a whole number from 1 to 7"
                        ))
                    })?;
                }
                PARAM_CLUSTER => {
                    if v != &self.cluster_name {
                        return Err(CsiError::InvalidArgument(format!(
                            "unknown cluster {v:?}: this driver serves cluster {:?}; fix the \
                             StorageClass parameter {PARAM_CLUSTER}",
                            self.cluster_name
                        )));
                    }
                }
                k if k.starts_with(K8S_PARAM_PREFIX) => {}
                other => {
                    return Err(CsiError::InvalidArgument(format!(
                    "unknown parameter {other:?}; supported: {PARAM_REPLICATION}, {PARAM_CLUSTER}"
                )))
                }
            }
        }
        Ok(out)
    }

    /// CreateVolume with a content source: a clone of a snapshot or a volume. The new
    /// volume must be at least as large as the source (a snapshot's size is the data it
    /// holds; a volume's is its capacity) and keeps the source's replication, because
    /// it shares the source's blocks.
    async fn create_clone(
        &self,
        id: &str,
        wanted: (u64, u64),
        params: Params,
        source: ContentSource,
    ) -> Result<VolumeInfo> {
        // (least size, size when none is asked for, replication)
        let (min, default, rf) = match &source {
            ContentSource::Snapshot(s) => {
                let snap = match valid_id(s) {
                    true => self.backend.get_snapshot(s).await?,
                    false => None,
                };
                let snap = snap.ok_or_else(|| {
                    CsiError::NotFound(format!("source snapshot {s:?} does not exist"))
                })?;
                (
                    snap.size,
                    snap.source_capacity.max(snap.size),
                    snap.replication,
                )
            }
            ContentSource::Volume(v) => {
                let vol = match valid_id(v) {
                    true => self.backend.get(v).await?,
                    false => None,
                };
                let vol = vol.ok_or_else(|| {
                    CsiError::NotFound(format!("source volume {v:?} does not exist"))
                })?;
                (vol.capacity, vol.capacity, vol.replication)
            }
        };
        if params.replication != 0 && params.replication != rf {
            return Err(CsiError::InvalidArgument(format!(
                "parameter {PARAM_REPLICATION}={} does not match the source's replication {rf}; \
                 a clone shares its source's blocks and keeps its replication",
                params.replication
            )));
        }
        let size = match wanted {
            (0, 0) => default,
            (0, lim) => default.min(lim),
            (req, _) => req,
        };
        if size < min {
            return Err(CsiError::OutOfRange(format!(
                "requested capacity {size} bytes is smaller than the source ({}: {min} bytes); \
                 ask for at least {min} bytes",
                describe(Some(&source))
            )));
        }
        let cap = self.backend.capacity(rf).await?;
        if size > cap.max_volume {
            return Err(CsiError::OutOfRange(format!(
                "requested capacity {size} bytes exceeds the largest possible volume, {} bytes \
                 (cluster capacity divided by replication); ask for less or add nodes",
                cap.max_volume
            )));
        }
        let v = self
            .backend
            .clone_volume(id, size, params.replication, &source)
            .await?;
        tracing::info!(volume = %id, capacity = v.capacity, source = ?source, "volume cloned");
        Ok(v)
    }

    /// Snapshot parameters (VolumeSnapshotClass): ringfs takes none; the sidecar's own
    /// (`csi.storage.k8s.io/...`) are ignored.
    fn snapshot_params(p: &HashMap<String, String>) -> Result<()> {
        match p.keys().find(|k| !k.starts_with(K8S_PARAM_PREFIX)) {
            Some(k) => Err(CsiError::InvalidArgument(format!(
                "unknown snapshot parameter {k:?}: ringfs snapshots take no parameters"
            ))),
            None => Ok(()),
        }
    }
}

fn csi_volume(v: &VolumeInfo) -> Volume {
    use volume_content_source::{SnapshotSource, Type, VolumeSource};
    Volume {
        capacity_bytes: i64::try_from(v.capacity).unwrap_or(i64::MAX),
        volume_id: v.name.clone(),
        volume_context: HashMap::from([("replication".to_string(), v.replication.to_string())]),
        content_source: v.source.as_ref().map(|s| VolumeContentSource {
            r#type: Some(match s {
                ContentSource::Snapshot(id) => Type::Snapshot(SnapshotSource {
                    snapshot_id: id.clone(),
                }),
                ContentSource::Volume(id) => Type::Volume(VolumeSource {
                    volume_id: id.clone(),
                }),
            }),
        }),
        accessible_topology: vec![],
    }
}

fn csi_snapshot(s: &SnapshotInfo) -> Snapshot {
    Snapshot {
        size_bytes: i64::try_from(s.size).unwrap_or(i64::MAX),
        snapshot_id: s.name.clone(),
        source_volume_id: s.source_volume.clone(),
        creation_time: Some(prost_types::Timestamp {
            seconds: s.created_ns.div_euclid(1_000_000_000),
            nanos: s.created_ns.rem_euclid(1_000_000_000) as i32,
        }),
        // Taken in one metadata transaction: usable the moment it exists.
        ready_to_use: true,
        group_snapshot_id: String::new(),
    }
}

/// The content source of a CreateVolume request, by ringfs name.
fn content_source(s: Option<&VolumeContentSource>) -> Result<Option<ContentSource>> {
    use volume_content_source::Type;
    let Some(s) = s else { return Ok(None) };
    match &s.r#type {
        None => Err(CsiError::InvalidArgument(
            "volume_content_source names neither a snapshot nor a volume".into(),
        )),
        Some(Type::Snapshot(x)) if x.snapshot_id.is_empty() => Err(CsiError::InvalidArgument(
            "volume_content_source.snapshot.snapshot_id is required".into(),
        )),
        Some(Type::Volume(x)) if x.volume_id.is_empty() => Err(CsiError::InvalidArgument(
            "volume_content_source.volume.volume_id is required".into(),
        )),
        Some(Type::Snapshot(x)) => Ok(Some(ContentSource::Snapshot(x.snapshot_id.clone()))),
        Some(Type::Volume(x)) => Ok(Some(ContentSource::Volume(x.volume_id.clone()))),
    }
}

fn describe(source: Option<&ContentSource>) -> String {
    match source {
        Some(ContentSource::Snapshot(s)) => format!("a clone of snapshot {s:?}"),
        Some(ContentSource::Volume(v)) => format!("a clone of volume {v:?}"),
        None => "empty".to_string(),
    }
}

/// Whether `id` can name a ringfs volume or snapshot at all (anything else does not
/// exist, so lookups can skip the cluster).
fn valid_id(id: &str) -> bool {
    ringfs_core::names::validate_volume_name(id).is_ok()
}

/// One page of `items` (sorted by `key`): those after the token's key, at most
/// `max_entries` (0: all), and the token of the next page ("" when none).
fn page<'a, T>(
    items: &'a [T],
    key: impl Fn(&T) -> &str,
    starting_token: &str,
    max_entries: i32,
) -> Result<(Vec<&'a T>, String)> {
    if max_entries < 0 {
        return Err(CsiError::InvalidArgument(format!(
            "max_entries {max_entries} is negative"
        )));
    }
    let after = parse_page_token(starting_token)?;
    let rest: Vec<&T> = items
        .iter()
        .filter(|v| after.as_ref().is_none_or(|a| key(v) > a.as_str()))
        .collect();
    let take = if max_entries == 0 {
        rest.len()
    } else {
        (max_entries as usize).min(rest.len())
    };
    let next_token = if take < rest.len() && take > 0 {
        page_token(key(rest[take - 1]))
    } else {
        String::new()
    };
    let mut rest = rest;
    rest.truncate(take);
    Ok((rest, next_token))
}

/// The requested size range as (required, limit); 0 means unset.
fn range(r: Option<&CapacityRange>) -> Result<(u64, u64)> {
    let Some(r) = r else { return Ok((0, 0)) };
    let req = u64::try_from(r.required_bytes).map_err(|_| {
        CsiError::InvalidArgument(format!("required_bytes {} is negative", r.required_bytes))
    })?;
    let lim = u64::try_from(r.limit_bytes).map_err(|_| {
        CsiError::InvalidArgument(format!("limit_bytes {} is negative", r.limit_bytes))
    })?;
    if lim > 0 && req > lim {
        return Err(CsiError::InvalidArgument(format!(
            "required_bytes {req} is larger than limit_bytes {lim}"
        )));
    }
    Ok((req, lim))
}

fn fits(capacity: u64, (req, lim): (u64, u64)) -> bool {
    capacity >= req && (lim == 0 || capacity <= lim)
}

fn require_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(CsiError::InvalidArgument("volume_id is required".into()));
    }
    Ok(())
}

fn rpc_cap(t: rpc::Type) -> ControllerServiceCapability {
    ControllerServiceCapability {
        r#type: Some(controller_service_capability::Type::Rpc(
            controller_service_capability::Rpc { r#type: t as i32 },
        )),
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    #[instrument(skip_all, fields(name = %req.get_ref().name), err)]
    async fn create_volume(
        &self,
        req: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        let req = req.into_inner();
        if req.name.is_empty() {
            return Err(CsiError::InvalidArgument("name is required".into()).into());
        }
        caps::require_all(&req.volume_capabilities)?;
        let params = self.params(&req.parameters)?;
        let source = content_source(req.volume_content_source.as_ref())?;
        let wanted = range(req.capacity_range.as_ref())?;
        let id = volume_id_for(&req.name);
        if let Some(v) = self.backend.get(&id).await? {
            let rf_ok = params.replication == 0 || params.replication == v.replication;
            if fits(v.capacity, wanted) && rf_ok && v.source == source {
                return Ok(Response::new(CreateVolumeResponse {
                    volume: Some(csi_volume(&v)),
                }));
            }
            return Err(CsiError::AlreadyExists(format!(
                "volume {:?} (id {id}) already exists ({}) with capacity {} bytes and \
                 replication {}, which does not match this request ({}, capacity {}..{} bytes, \
                 replication {}); use another name or delete the volume first",
                req.name,
                describe(v.source.as_ref()),
                v.capacity,
                v.replication,
                describe(source.as_ref()),
                wanted.0,
                if wanted.1 == 0 {
                    "unlimited".to_string()
                } else {
                    wanted.1.to_string()
                },
                if params.replication == 0 {
                    "default".to_string()
                } else {
                    params.replication.to_string()
                },
            ))
            .into());
        }
        if let Some(source) = source {
            let v = self.create_clone(&id, wanted, params, source).await?;
            return Ok(Response::new(CreateVolumeResponse {
                volume: Some(csi_volume(&v)),
            }));
        }
        let size = match wanted {
            (0, 0) => self.default_capacity,
            (0, lim) => self.default_capacity.min(lim),
            (req, _) => req,
        };
        let cap = self.backend.capacity(params.replication).await?;
        if size > cap.max_volume {
            return Err(CsiError::OutOfRange(format!(
                "requested capacity {size} bytes exceeds the largest possible volume, {} bytes \
                 (cluster capacity divided by replication); ask for less or add nodes",
                cap.max_volume
            ))
            .into());
        }
        let v = self.backend.create(&id, size, params.replication).await?;
        tracing::info!(volume = %id, capacity = v.capacity, replication = v.replication, "volume created");
        Ok(Response::new(CreateVolumeResponse {
            volume: Some(csi_volume(&v)),
        }))
    }

    #[instrument(skip_all, fields(volume = %req.get_ref().volume_id), err)]
    async fn delete_volume(
        &self,
        req: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        let req = req.into_inner();
        require_id(&req.volume_id)?;
        if ringfs_core::names::validate_volume_name(&req.volume_id).is_ok() {
            self.backend.delete(&req.volume_id).await?;
        }
        Ok(Response::new(DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        _req: Request<ControllerPublishVolumeRequest>,
    ) -> Result<Response<ControllerPublishVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "ringfs volumes need no attach step (PUBLISH_UNPUBLISH_VOLUME is not advertised)",
        ))
    }

    async fn controller_unpublish_volume(
        &self,
        _req: Request<ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "ringfs volumes need no attach step (PUBLISH_UNPUBLISH_VOLUME is not advertised)",
        ))
    }

    #[instrument(skip_all, fields(volume = %req.get_ref().volume_id), err)]
    async fn validate_volume_capabilities(
        &self,
        req: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        let req = req.into_inner();
        require_id(&req.volume_id)?;
        if req.volume_capabilities.is_empty() {
            return Err(CsiError::InvalidArgument(
                "volume_capabilities is required (at least one)".into(),
            )
            .into());
        }
        let exists = ringfs_core::names::validate_volume_name(&req.volume_id).is_ok()
            && self.backend.get(&req.volume_id).await?.is_some();
        if !exists {
            return Err(
                CsiError::NotFound(format!("volume {:?} does not exist", req.volume_id)).into(),
            );
        }
        if let Some(why) = req.volume_capabilities.iter().find_map(caps::unsupported) {
            return Ok(Response::new(ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: why,
            }));
        }
        if let Err(e) = self.params(&req.parameters) {
            return Ok(Response::new(ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: e.to_string(),
            }));
        }
        Ok(Response::new(ValidateVolumeCapabilitiesResponse {
            confirmed: Some(validate_volume_capabilities_response::Confirmed {
                volume_context: req.volume_context,
                volume_capabilities: req.volume_capabilities,
                parameters: req.parameters,
                mutable_parameters: Default::default(),
            }),
            message: String::new(),
        }))
    }

    #[instrument(skip_all, err)]
    async fn list_volumes(
        &self,
        req: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        let req = req.into_inner();
        let all = self.backend.list().await?;
        let (items, next_token) = page(
            &all,
            |v| v.name.as_str(),
            &req.starting_token,
            req.max_entries,
        )?;
        let entries = items
            .iter()
            .map(|v| list_volumes_response::Entry {
                volume: Some(csi_volume(v)),
                status: None,
            })
            .collect();
        Ok(Response::new(ListVolumesResponse {
            entries,
            next_token,
        }))
    }

    #[instrument(skip_all, err)]
    async fn get_capacity(
        &self,
        req: Request<GetCapacityRequest>,
    ) -> Result<Response<GetCapacityResponse>, Status> {
        let req = req.into_inner();
        // Capabilities or parameters we cannot serve mean no capacity, not an error.
        let servable = req
            .volume_capabilities
            .iter()
            .all(|c| caps::unsupported(c).is_none());
        let params = match self.params(&req.parameters) {
            Ok(p) if servable => p,
            _ => {
                return Ok(Response::new(GetCapacityResponse {
                    available_capacity: 0,
                    maximum_volume_size: None,
                    minimum_volume_size: None,
                }))
            }
        };
        let cap = self.backend.capacity(params.replication).await?;
        Ok(Response::new(GetCapacityResponse {
            available_capacity: i64::try_from(cap.available).unwrap_or(i64::MAX),
            maximum_volume_size: Some(i64::try_from(cap.max_volume).unwrap_or(i64::MAX)),
            minimum_volume_size: Some(1),
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _req: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities: vec![
                rpc_cap(rpc::Type::CreateDeleteVolume),
                rpc_cap(rpc::Type::ListVolumes),
                rpc_cap(rpc::Type::GetCapacity),
                rpc_cap(rpc::Type::ExpandVolume),
                rpc_cap(rpc::Type::SingleNodeMultiWriter),
                rpc_cap(rpc::Type::CreateDeleteSnapshot),
                rpc_cap(rpc::Type::ListSnapshots),
                rpc_cap(rpc::Type::GetSnapshot),
                rpc_cap(rpc::Type::CloneVolume),
            ],
        }))
    }

    #[instrument(skip_all, fields(name = %req.get_ref().name, volume = %req.get_ref().source_volume_id), err)]
    async fn create_snapshot(
        &self,
        req: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        let req = req.into_inner();
        if req.name.is_empty() {
            return Err(CsiError::InvalidArgument("name is required".into()).into());
        }
        if req.source_volume_id.is_empty() {
            return Err(CsiError::InvalidArgument("source_volume_id is required".into()).into());
        }
        Self::snapshot_params(&req.parameters)?;
        if !valid_id(&req.source_volume_id) {
            return Err(CsiError::NotFound(format!(
                "source volume {:?} does not exist",
                req.source_volume_id
            ))
            .into());
        }
        let id = volume_id_for(&req.name);
        let s = self
            .backend
            .create_snapshot(&id, &req.source_volume_id)
            .await?;
        tracing::info!(snapshot = %id, volume = %s.source_volume, bytes = s.size, "snapshot ready");
        Ok(Response::new(CreateSnapshotResponse {
            snapshot: Some(csi_snapshot(&s)),
        }))
    }

    #[instrument(skip_all, fields(snapshot = %req.get_ref().snapshot_id), err)]
    async fn delete_snapshot(
        &self,
        req: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        let req = req.into_inner();
        if req.snapshot_id.is_empty() {
            return Err(CsiError::InvalidArgument("snapshot_id is required".into()).into());
        }
        if valid_id(&req.snapshot_id) {
            self.backend.delete_snapshot(&req.snapshot_id).await?;
        }
        Ok(Response::new(DeleteSnapshotResponse {}))
    }

    #[instrument(skip_all, err)]
    async fn list_snapshots(
        &self,
        req: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        let req = req.into_inner();
        let mut all = if req.snapshot_id.is_empty() {
            self.backend.list_snapshots().await?
        } else if valid_id(&req.snapshot_id) {
            self.backend
                .get_snapshot(&req.snapshot_id)
                .await?
                .into_iter()
                .collect()
        } else {
            Vec::new()
        };
        if !req.source_volume_id.is_empty() {
            all.retain(|s| s.source_volume == req.source_volume_id);
        }
        let (items, next_token) = page(
            &all,
            |s| s.name.as_str(),
            &req.starting_token,
            req.max_entries,
        )?;
        Ok(Response::new(ListSnapshotsResponse {
            entries: items
                .iter()
                .map(|s| list_snapshots_response::Entry {
                    snapshot: Some(csi_snapshot(s)),
                })
                .collect(),
            next_token,
        }))
    }

    #[instrument(skip_all, fields(snapshot = %req.get_ref().snapshot_id), err)]
    async fn get_snapshot(
        &self,
        req: Request<GetSnapshotRequest>,
    ) -> Result<Response<GetSnapshotResponse>, Status> {
        let req = req.into_inner();
        if req.snapshot_id.is_empty() {
            return Err(CsiError::InvalidArgument("snapshot_id is required".into()).into());
        }
        let s = match valid_id(&req.snapshot_id) {
            true => self.backend.get_snapshot(&req.snapshot_id).await?,
            false => None,
        };
        match s {
            Some(s) => Ok(Response::new(GetSnapshotResponse {
                snapshot: Some(csi_snapshot(&s)),
            })),
            None => Err(CsiError::NotFound(format!(
                "snapshot {:?} does not exist",
                req.snapshot_id
            ))
            .into()),
        }
    }

    #[instrument(skip_all, fields(volume = %req.get_ref().volume_id), err)]
    async fn controller_expand_volume(
        &self,
        req: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        let req = req.into_inner();
        require_id(&req.volume_id)?;
        let Some(r) = req.capacity_range.as_ref() else {
            return Err(CsiError::InvalidArgument("capacity_range is required".into()).into());
        };
        let (want, lim) = range(Some(r))?;
        let want = if want == 0 { lim } else { want };
        if want == 0 {
            return Err(CsiError::InvalidArgument(
                "capacity_range needs required_bytes or limit_bytes".into(),
            )
            .into());
        }
        let v = match ringfs_core::names::validate_volume_name(&req.volume_id) {
            Ok(()) => self.backend.get(&req.volume_id).await?,
            Err(_) => None,
        };
        let Some(v) = v else {
            return Err(
                CsiError::NotFound(format!("volume {:?} does not exist", req.volume_id)).into(),
            );
        };
        // Already large enough: expansion is idempotent and never shrinks.
        let v = if v.capacity >= want {
            v
        } else {
            let cap = self.backend.capacity(v.replication).await?;
            if want > cap.max_volume {
                return Err(CsiError::OutOfRange(format!(
                    "requested capacity {want} bytes exceeds the largest possible volume, {} bytes",
                    cap.max_volume
                ))
                .into());
            }
            self.backend.resize(&v.name, want).await?
        };
        Ok(Response::new(ControllerExpandVolumeResponse {
            capacity_bytes: i64::try_from(v.capacity).unwrap_or(i64::MAX),
            // The quota is enforced by the cluster: mounts see the new size at once.
            node_expansion_required: false,
        }))
    }

    async fn controller_get_volume(
        &self,
        _req: Request<ControllerGetVolumeRequest>,
    ) -> Result<Response<ControllerGetVolumeResponse>, Status> {
        Err(Status::unimplemented("GET_VOLUME is not advertised"))
    }

    async fn controller_modify_volume(
        &self,
        _req: Request<ControllerModifyVolumeRequest>,
    ) -> Result<Response<ControllerModifyVolumeResponse>, Status> {
        Err(Status::unimplemented("MODIFY_VOLUME is not advertised"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CapacityInfo;
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use tonic::Code;

    /// In-memory volumes with a 10 GiB limit per volume, and snapshots.
    #[derive(Default)]
    struct Mem(
        Mutex<BTreeMap<String, VolumeInfo>>,
        Mutex<BTreeMap<String, SnapshotInfo>>,
    );

    #[async_trait::async_trait]
    impl VolumeBackend for Mem {
        async fn get(&self, name: &str) -> Result<Option<VolumeInfo>> {
            Ok(self.0.lock().unwrap().get(name).cloned())
        }
        async fn create(&self, name: &str, capacity: u64, replication: u32) -> Result<VolumeInfo> {
            let v = VolumeInfo {
                name: name.into(),
                capacity,
                replication: if replication == 0 { 3 } else { replication },
                used: 0,
                source: None,
            };
            self.0.lock().unwrap().insert(name.into(), v.clone());
            Ok(v)
        }
        async fn delete(&self, name: &str) -> Result<()> {
            self.0.lock().unwrap().remove(name);
            Ok(())
        }
        async fn list(&self) -> Result<Vec<VolumeInfo>> {
            Ok(self.0.lock().unwrap().values().cloned().collect())
        }
        async fn resize(&self, name: &str, capacity: u64) -> Result<VolumeInfo> {
            let mut m = self.0.lock().unwrap();
            let v = m
                .get_mut(name)
                .ok_or_else(|| CsiError::NotFound(name.into()))?;
            v.capacity = capacity;
            Ok(v.clone())
        }
        async fn capacity(&self, _replication: u32) -> Result<CapacityInfo> {
            Ok(CapacityInfo {
                available: 10 << 30,
                max_volume: 10 << 30,
            })
        }
        async fn clone_volume(
            &self,
            name: &str,
            capacity: u64,
            replication: u32,
            source: &ContentSource,
        ) -> Result<VolumeInfo> {
            let (used, rf) = match source {
                ContentSource::Snapshot(s) => {
                    let snaps = self.1.lock().unwrap();
                    let s = snaps.get(s).ok_or_else(|| CsiError::NotFound(s.clone()))?;
                    (s.size, s.replication)
                }
                ContentSource::Volume(v) => {
                    let vols = self.0.lock().unwrap();
                    let v = vols.get(v).ok_or_else(|| CsiError::NotFound(v.clone()))?;
                    (v.used, v.replication)
                }
            };
            assert!(replication == 0 || replication == rf);
            let v = VolumeInfo {
                name: name.into(),
                capacity,
                replication: rf,
                used,
                source: Some(source.clone()),
            };
            self.0.lock().unwrap().insert(name.into(), v.clone());
            Ok(v)
        }
        async fn get_snapshot(&self, name: &str) -> Result<Option<SnapshotInfo>> {
            Ok(self.1.lock().unwrap().get(name).cloned())
        }
        async fn create_snapshot(&self, name: &str, source: &str) -> Result<SnapshotInfo> {
            if let Some(s) = self.1.lock().unwrap().get(name) {
                if s.source_volume == source {
                    return Ok(s.clone());
                }
                return Err(CsiError::AlreadyExists(name.into()));
            }
            let v = self
                .get(source)
                .await?
                .ok_or_else(|| CsiError::NotFound(source.into()))?;
            let s = SnapshotInfo {
                name: name.into(),
                source_volume: source.into(),
                size: v.used,
                source_capacity: v.capacity,
                replication: v.replication,
                created_ns: 1_700_000_000_123_456_789,
            };
            self.1.lock().unwrap().insert(name.into(), s.clone());
            Ok(s)
        }
        async fn delete_snapshot(&self, name: &str) -> Result<()> {
            self.1.lock().unwrap().remove(name);
            Ok(())
        }
        async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>> {
            Ok(self.1.lock().unwrap().values().cloned().collect())
        }
    }

    fn svc() -> ControllerService {
        ControllerService {
            backend: Arc::new(Mem::default()),
            cluster_name: "ringfs".into(),
            default_capacity: 1 << 30,
        }
    }

    fn mount_cap() -> VolumeCapability {
        VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(Default::default())),
            access_mode: Some(volume_capability::AccessMode {
                mode: volume_capability::access_mode::Mode::SingleNodeWriter as i32,
            }),
        }
    }

    fn create(name: &str, req: i64, params: &[(&str, &str)]) -> CreateVolumeRequest {
        CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(CapacityRange {
                required_bytes: req,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![mount_cap()],
            parameters: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    async fn code(f: impl std::future::Future<Output = Result<impl Sized, Status>>) -> Code {
        match f.await {
            Ok(_) => Code::Ok,
            Err(s) => {
                assert!(!s.message().is_empty(), "error without a message");
                s.code()
            }
        }
    }

    #[tokio::test]
    async fn create_validates_and_is_idempotent() {
        let c = svc();
        assert_eq!(
            code(c.create_volume(Request::new(create("", 1, &[])))).await,
            Code::InvalidArgument
        );
        let mut no_caps = create("a", 1, &[]);
        no_caps.volume_capabilities.clear();
        assert_eq!(
            code(c.create_volume(Request::new(no_caps))).await,
            Code::InvalidArgument
        );
        let mut block = create("a", 1, &[]);
        block.volume_capabilities[0].access_type =
            Some(volume_capability::AccessType::Block(Default::default()));
        assert_eq!(
            code(c.create_volume(Request::new(block))).await,
            Code::InvalidArgument
        );
        assert_eq!(
            code(c.create_volume(Request::new(create("a", 11 << 30, &[])))).await,
            Code::OutOfRange
        );
        for bad in [
            ("replication", "x"),
            ("replication", "0"),
            ("cluster", "other"),
            ("colour", "red"),
        ] {
            assert_eq!(
                code(c.create_volume(Request::new(create("a", 1, &[bad])))).await,
                Code::InvalidArgument,
                "{bad:?}"
            );
        }
        let first = c
            .create_volume(Request::new(create("a", 5 << 20, &[("replication", "2")])))
            .await
            .unwrap()
            .into_inner();
        let again = c
            .create_volume(Request::new(create("a", 5 << 20, &[("replication", "2")])))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(first, again);
        assert_eq!(
            code(c.create_volume(Request::new(create("a", 6 << 20, &[])))).await,
            Code::AlreadyExists
        );
        assert_eq!(
            code(c.create_volume(Request::new(create("a", 5 << 20, &[("replication", "3")]))))
                .await,
            Code::AlreadyExists
        );
    }

    #[tokio::test]
    async fn list_pages_survive_deletes_and_reject_foreign_tokens() {
        let c = svc();
        for n in ["v1", "v2", "v3", "v4", "v5"] {
            c.create_volume(Request::new(create(n, 1, &[])))
                .await
                .unwrap();
        }
        let page = |token: String| ListVolumesRequest {
            max_entries: 2,
            starting_token: token,
        };
        let p1 = c
            .list_volumes(Request::new(page(String::new())))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(p1.entries.len(), 2);
        // Deleting the page's last volume must not invalidate the token.
        c.delete_volume(Request::new(DeleteVolumeRequest {
            volume_id: "v2".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
        let mut seen: Vec<String> = p1
            .entries
            .iter()
            .map(|e| e.volume.clone().unwrap().volume_id)
            .collect();
        let mut token = p1.next_token;
        while !token.is_empty() {
            let p = c
                .list_volumes(Request::new(page(token)))
                .await
                .unwrap()
                .into_inner();
            seen.extend(
                p.entries
                    .iter()
                    .map(|e| e.volume.clone().unwrap().volume_id),
            );
            token = p.next_token;
        }
        assert_eq!(seen, ["v1", "v2", "v3", "v4", "v5"]);
        assert_eq!(
            code(c.list_volumes(Request::new(page("bogus".into())))).await,
            Code::Aborted
        );
    }

    #[tokio::test]
    async fn expand_and_delete() {
        let c = svc();
        c.create_volume(Request::new(create("e", 1 << 20, &[])))
            .await
            .unwrap();
        let expand = |id: &str, bytes: i64| ControllerExpandVolumeRequest {
            volume_id: id.into(),
            capacity_range: Some(CapacityRange {
                required_bytes: bytes,
                limit_bytes: 0,
            }),
            ..Default::default()
        };
        let r = c
            .controller_expand_volume(Request::new(expand("e", 2 << 20)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.capacity_bytes, 2 << 20);
        assert!(!r.node_expansion_required);
        assert_eq!(
            code(c.controller_expand_volume(Request::new(expand("nope", 2 << 20)))).await,
            Code::NotFound
        );
        assert_eq!(
            code(c.controller_expand_volume(Request::new(expand("e", 20 << 30)))).await,
            Code::OutOfRange
        );
        for _ in 0..2 {
            c.delete_volume(Request::new(DeleteVolumeRequest {
                volume_id: "e".into(),
                ..Default::default()
            }))
            .await
            .unwrap();
        }
        assert_eq!(
            code(
                c.validate_volume_capabilities(Request::new(ValidateVolumeCapabilitiesRequest {
                    volume_id: "e".into(),
                    volume_capabilities: vec![mount_cap()],
                    ..Default::default()
                }))
            )
            .await,
            Code::NotFound
        );
    }

    fn snap_req(name: &str, source: &str) -> CreateSnapshotRequest {
        CreateSnapshotRequest {
            name: name.into(),
            source_volume_id: source.into(),
            ..Default::default()
        }
    }

    fn from_snapshot(name: &str, bytes: i64, snapshot: &str) -> CreateVolumeRequest {
        let mut r = create(name, bytes, &[]);
        r.volume_content_source = Some(VolumeContentSource {
            r#type: Some(volume_content_source::Type::Snapshot(
                volume_content_source::SnapshotSource {
                    snapshot_id: snapshot.into(),
                },
            )),
        });
        r
    }

    fn from_volume(name: &str, bytes: i64, volume: &str) -> CreateVolumeRequest {
        let mut r = create(name, bytes, &[]);
        r.volume_content_source = Some(VolumeContentSource {
            r#type: Some(volume_content_source::Type::Volume(
                volume_content_source::VolumeSource {
                    volume_id: volume.into(),
                },
            )),
        });
        r
    }

    #[tokio::test]
    async fn snapshots_validate_and_are_idempotent() {
        let c = svc();
        for n in ["v1", "v2"] {
            c.create_volume(Request::new(create(n, 1 << 20, &[])))
                .await
                .unwrap();
        }
        assert_eq!(
            code(c.create_snapshot(Request::new(snap_req("", "v1")))).await,
            Code::InvalidArgument
        );
        assert_eq!(
            code(c.create_snapshot(Request::new(snap_req("s", "")))).await,
            Code::InvalidArgument
        );
        assert_eq!(
            code(c.create_snapshot(Request::new(snap_req("s", "nope")))).await,
            Code::NotFound
        );
        assert_eq!(
            code(c.create_snapshot(Request::new(snap_req("s", "Not_A_Volume")))).await,
            Code::NotFound
        );
        let mut params = snap_req("s", "v1");
        params.parameters.insert("colour".into(), "red".into());
        assert_eq!(
            code(c.create_snapshot(Request::new(params))).await,
            Code::InvalidArgument
        );
        // A CSI name that is not a ringfs name maps to a stable id.
        let first = c
            .create_snapshot(Request::new(snap_req("Snap-One", "v1")))
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        assert_eq!(first.snapshot_id, volume_id_for("Snap-One"));
        assert_eq!(first.source_volume_id, "v1");
        assert!(first.ready_to_use);
        let t = first.creation_time.expect("creation time");
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_456_789));
        let again = c
            .create_snapshot(Request::new(snap_req("Snap-One", "v1")))
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        assert_eq!(first, again);
        assert_eq!(
            code(c.create_snapshot(Request::new(snap_req("Snap-One", "v2")))).await,
            Code::AlreadyExists
        );
        let get = |id: &str| GetSnapshotRequest {
            snapshot_id: id.into(),
            ..Default::default()
        };
        assert_eq!(
            c.get_snapshot(Request::new(get(&first.snapshot_id)))
                .await
                .unwrap()
                .into_inner()
                .snapshot,
            Some(first.clone())
        );
        assert_eq!(
            code(c.get_snapshot(Request::new(get("")))).await,
            Code::InvalidArgument
        );
        assert_eq!(
            code(c.get_snapshot(Request::new(get("none-exist-id")))).await,
            Code::NotFound
        );
        let del = |id: &str| DeleteSnapshotRequest {
            snapshot_id: id.into(),
            ..Default::default()
        };
        assert_eq!(
            code(c.delete_snapshot(Request::new(del("")))).await,
            Code::InvalidArgument
        );
        for id in [
            first.snapshot_id.as_str(),
            first.snapshot_id.as_str(),
            "Fake_Id",
        ] {
            c.delete_snapshot(Request::new(del(id))).await.unwrap();
        }
        assert_eq!(
            code(c.get_snapshot(Request::new(get(&first.snapshot_id)))).await,
            Code::NotFound
        );
    }

    #[tokio::test]
    async fn list_snapshots_filters_and_pages() {
        let c = svc();
        for v in ["va", "vb"] {
            c.create_volume(Request::new(create(v, 1 << 20, &[])))
                .await
                .unwrap();
        }
        for (s, v) in [("s1", "va"), ("s2", "vb"), ("s3", "va"), ("s4", "va")] {
            c.create_snapshot(Request::new(snap_req(s, v)))
                .await
                .unwrap();
        }
        let list = |r: ListSnapshotsRequest| {
            let c = &c;
            async move {
                let r = c.list_snapshots(Request::new(r)).await?.into_inner();
                let ids: Vec<String> = r
                    .entries
                    .into_iter()
                    .map(|e| e.snapshot.unwrap().snapshot_id)
                    .collect();
                Ok::<_, Status>((ids, r.next_token))
            }
        };
        let (all, token) = list(ListSnapshotsRequest::default()).await.unwrap();
        assert_eq!(all, ["s1", "s2", "s3", "s4"]);
        assert_eq!(token, "");
        let by_volume = list(ListSnapshotsRequest {
            source_volume_id: "va".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(by_volume.0, ["s1", "s3", "s4"]);
        for (id, want) in [
            ("s2", vec!["s2"]),
            ("none-exist-id", vec![]),
            ("Bad_Id", vec![]),
        ] {
            let r = list(ListSnapshotsRequest {
                snapshot_id: id.into(),
                ..Default::default()
            })
            .await
            .unwrap();
            assert_eq!(r.0, want, "{id}");
        }
        let both = list(ListSnapshotsRequest {
            snapshot_id: "s2".into(),
            source_volume_id: "va".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        assert!(both.0.is_empty(), "s2 is not a snapshot of va");
        let (p1, token) = list(ListSnapshotsRequest {
            max_entries: 3,
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(p1, ["s1", "s2", "s3"]);
        let (p2, end) = list(ListSnapshotsRequest {
            starting_token: token,
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(p2, ["s4"]);
        assert_eq!(end, "");
        for bad in [
            ListSnapshotsRequest {
                starting_token: "bogus".into(),
                ..Default::default()
            },
            ListSnapshotsRequest {
                max_entries: -1,
                ..Default::default()
            },
        ] {
            let e = list(bad).await.expect_err("bad request");
            assert!(
                matches!(e.code(), Code::Aborted | Code::InvalidArgument),
                "{e}"
            );
        }
    }

    #[tokio::test]
    async fn volumes_from_snapshots_and_volumes() {
        let mem = Arc::new(Mem::default());
        let c = ControllerService {
            backend: mem.clone(),
            ..svc()
        };
        let mut src = create("src", 4 << 20, &[("replication", "2")]);
        src.capacity_range = Some(CapacityRange {
            required_bytes: 4 << 20,
            limit_bytes: 0,
        });
        c.create_volume(Request::new(src)).await.unwrap();
        // Pretend it holds 3 MiB.
        if let Some(v) = mem.0.lock().unwrap().get_mut("src") {
            v.used = 3 << 20;
        }
        c.create_snapshot(Request::new(snap_req("snap", "src")))
            .await
            .unwrap();

        assert_eq!(
            code(c.create_volume(Request::new(from_snapshot("r", 1 << 20, "nope")))).await,
            Code::NotFound
        );
        assert_eq!(
            code(c.create_volume(Request::new(from_volume("r", 1 << 20, "nope")))).await,
            Code::NotFound
        );
        assert_eq!(
            code(c.create_volume(Request::new(from_snapshot("r", 2 << 20, "snap")))).await,
            Code::OutOfRange,
            "smaller than the snapshot's data"
        );
        assert_eq!(
            code(c.create_volume(Request::new(from_volume("r", 3 << 20, "src")))).await,
            Code::OutOfRange,
            "smaller than the source volume"
        );
        let mut other_rf = from_snapshot("r", 4 << 20, "snap");
        other_rf.parameters.insert("replication".into(), "3".into());
        assert_eq!(
            code(c.create_volume(Request::new(other_rf))).await,
            Code::InvalidArgument
        );
        let mut empty = from_snapshot("r", 4 << 20, "snap");
        empty.volume_content_source = Some(VolumeContentSource { r#type: None });
        assert_eq!(
            code(c.create_volume(Request::new(empty))).await,
            Code::InvalidArgument
        );

        let restored = c
            .create_volume(Request::new(from_snapshot("r", 3 << 20, "snap")))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(restored.capacity_bytes, 3 << 20);
        assert_eq!(
            restored.content_source,
            from_snapshot("r", 0, "snap").volume_content_source
        );
        let again = c
            .create_volume(Request::new(from_snapshot("r", 3 << 20, "snap")))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(restored, again);
        assert_eq!(
            code(c.create_volume(Request::new(create("r", 3 << 20, &[])))).await,
            Code::AlreadyExists,
            "same name without the source"
        );
        assert_eq!(
            code(c.create_volume(Request::new(from_volume("r", 3 << 20, "src")))).await,
            Code::AlreadyExists,
            "same name from another source"
        );
        // No size asked: a snapshot restores at its source's capacity, a clone at its
        // source's.
        let mut unsized_req = from_snapshot("r2", 0, "snap");
        unsized_req.capacity_range = None;
        let r2 = c
            .create_volume(Request::new(unsized_req))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(r2.capacity_bytes, 4 << 20);
        let cl = c
            .create_volume(Request::new(from_volume("cl", 4 << 20, "src")))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(
            cl.content_source,
            from_volume("cl", 0, "src").volume_content_source
        );
        assert_eq!(cl.volume_context["replication"], "2");
    }
}
