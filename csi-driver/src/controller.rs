//! The CSI Controller service: volume lifecycle on a [`VolumeBackend`].

use crate::backend::{VolumeBackend, VolumeInfo};
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
}

fn csi_volume(v: &VolumeInfo) -> Volume {
    Volume {
        capacity_bytes: i64::try_from(v.capacity).unwrap_or(i64::MAX),
        volume_id: v.name.clone(),
        volume_context: HashMap::from([("replication".to_string(), v.replication.to_string())]),
        content_source: None,
        accessible_topology: vec![],
    }
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
        if req.volume_content_source.is_some() {
            return Err(CsiError::InvalidArgument(
                "creating a volume from a snapshot or another volume is not supported yet".into(),
            )
            .into());
        }
        let wanted = range(req.capacity_range.as_ref())?;
        let id = volume_id_for(&req.name);
        if let Some(v) = self.backend.get(&id).await? {
            let rf_ok = params.replication == 0 || params.replication == v.replication;
            if fits(v.capacity, wanted) && rf_ok {
                return Ok(Response::new(CreateVolumeResponse {
                    volume: Some(csi_volume(&v)),
                }));
            }
            return Err(CsiError::AlreadyExists(format!(
                "volume {:?} (id {id}) already exists with capacity {} bytes and replication \
                 {}, which does not match this request (capacity {}..{} bytes, replication {}); \
                 use another name or delete the volume first",
                req.name,
                v.capacity,
                v.replication,
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
        if req.max_entries < 0 {
            return Err(CsiError::InvalidArgument(format!(
                "max_entries {} is negative",
                req.max_entries
            ))
            .into());
        }
        let after = parse_page_token(&req.starting_token)?;
        let all = self.backend.list().await?;
        let rest: Vec<&VolumeInfo> = all
            .iter()
            .filter(|v| after.as_ref().is_none_or(|a| v.name.as_str() > a.as_str()))
            .collect();
        let take = if req.max_entries == 0 {
            rest.len()
        } else {
            (req.max_entries as usize).min(rest.len())
        };
        let next_token = if take < rest.len() && take > 0 {
            page_token(&rest[take - 1].name)
        } else {
            String::new()
        };
        let entries = rest[..take]
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
            ],
        }))
    }

    async fn create_snapshot(
        &self,
        _req: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        Err(Status::unimplemented("snapshots are not supported yet"))
    }

    async fn delete_snapshot(
        &self,
        _req: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        Err(Status::unimplemented("snapshots are not supported yet"))
    }

    async fn list_snapshots(
        &self,
        _req: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        Err(Status::unimplemented("snapshots are not supported yet"))
    }

    async fn get_snapshot(
        &self,
        _req: Request<GetSnapshotRequest>,
    ) -> Result<Response<GetSnapshotResponse>, Status> {
        Err(Status::unimplemented("snapshots are not supported yet"))
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

    /// In-memory volumes with a 10 GiB limit per volume.
    #[derive(Default)]
    struct Mem(Mutex<BTreeMap<String, VolumeInfo>>);

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
}
