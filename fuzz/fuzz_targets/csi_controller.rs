//! The CSI controller service fed with protobuf requests as the sidecars
//! (external-provisioner, -snapshotter, -resizer) or anyone on the socket send them.
//! The input is a sequence of `[rpc: u8][length: u16 le][protobuf bytes]`; each request
//! is decoded with prost and handled by the real `ControllerService` on an in-memory
//! backend that keeps state across the sequence. Contracts checked:
//! - no handler panics, whatever the parameters, names, ids, ranges or tokens;
//! - an error carries a code other than OK and a message saying what was wrong;
//! - a created volume's id is a valid volume name, its capacity is within the
//!   requested range, and repeating the request returns the same volume (CSI
//!   idempotency); deleting twice succeeds twice.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use ringfs_core::names::validate_volume_name;
use ringfs_csi::backend::{CapacityInfo, ContentSource, SnapshotInfo, VolumeBackend, VolumeInfo};
use ringfs_csi::controller::ControllerService;
use ringfs_csi::error::{CsiError, Result};
use ringfs_fuzz::write_seeds;
use ringfs_proto::csi::controller_server::Controller;
use ringfs_proto::csi::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use tonic::{Code, Request, Status};

const MAX_VOLUME: u64 = 10 << 30;

#[derive(Default)]
struct Mem {
    volumes: Mutex<BTreeMap<String, VolumeInfo>>,
    snapshots: Mutex<BTreeMap<String, SnapshotInfo>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait::async_trait]
impl VolumeBackend for Mem {
    async fn get(&self, name: &str) -> Result<Option<VolumeInfo>> {
        Ok(lock(&self.volumes).get(name).cloned())
    }
    async fn create(&self, name: &str, capacity: u64, replication: u32) -> Result<VolumeInfo> {
        let v = VolumeInfo {
            name: name.into(),
            capacity,
            replication: if replication == 0 { 3 } else { replication },
            used: capacity / 2,
            source: None,
        };
        lock(&self.volumes).insert(name.into(), v.clone());
        Ok(v)
    }
    async fn delete(&self, name: &str) -> Result<()> {
        lock(&self.volumes).remove(name);
        Ok(())
    }
    async fn list(&self) -> Result<Vec<VolumeInfo>> {
        Ok(lock(&self.volumes).values().cloned().collect())
    }
    async fn resize(&self, name: &str, capacity: u64) -> Result<VolumeInfo> {
        let mut vols = lock(&self.volumes);
        let v = vols
            .get_mut(name)
            .ok_or_else(|| CsiError::NotFound(format!("volume {name:?}")))?;
        v.capacity = capacity;
        Ok(v.clone())
    }
    async fn capacity(&self, _replication: u32) -> Result<CapacityInfo> {
        Ok(CapacityInfo {
            available: MAX_VOLUME,
            max_volume: MAX_VOLUME,
        })
    }
    async fn clone_volume(
        &self,
        name: &str,
        capacity: u64,
        _replication: u32,
        source: &ContentSource,
    ) -> Result<VolumeInfo> {
        let (used, replication) = match source {
            ContentSource::Snapshot(s) => {
                let snaps = lock(&self.snapshots);
                let s = snaps
                    .get(s)
                    .ok_or_else(|| CsiError::NotFound(format!("snapshot {s:?}")))?;
                (s.size, s.replication)
            }
            ContentSource::Volume(v) => {
                let vols = lock(&self.volumes);
                let v = vols
                    .get(v)
                    .ok_or_else(|| CsiError::NotFound(format!("volume {v:?}")))?;
                (v.used, v.replication)
            }
        };
        let v = VolumeInfo {
            name: name.into(),
            capacity,
            replication,
            used,
            source: Some(source.clone()),
        };
        lock(&self.volumes).insert(name.into(), v.clone());
        Ok(v)
    }
    async fn get_snapshot(&self, name: &str) -> Result<Option<SnapshotInfo>> {
        Ok(lock(&self.snapshots).get(name).cloned())
    }
    async fn create_snapshot(&self, name: &str, source: &str) -> Result<SnapshotInfo> {
        if let Some(s) = lock(&self.snapshots).get(name) {
            return match s.source_volume == source {
                true => Ok(s.clone()),
                false => Err(CsiError::AlreadyExists(format!("snapshot {name:?}"))),
            };
        }
        let v = self
            .get(source)
            .await?
            .ok_or_else(|| CsiError::NotFound(format!("volume {source:?}")))?;
        let s = SnapshotInfo {
            name: name.into(),
            source_volume: source.into(),
            size: v.used,
            source_capacity: v.capacity,
            replication: v.replication,
            created_ns: 1_700_000_000_000_000_000,
        };
        lock(&self.snapshots).insert(name.into(), s.clone());
        Ok(s)
    }
    async fn delete_snapshot(&self, name: &str) -> Result<()> {
        lock(&self.snapshots).remove(name);
        Ok(())
    }
    async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        Ok(lock(&self.snapshots).values().cloned().collect())
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
    })
}

fn check_status(rpc: &str, s: &Status) {
    assert_ne!(s.code(), Code::Ok, "{rpc}: error with code OK");
    assert!(!s.message().is_empty(), "{rpc}: error without a message");
}

fn fits(v: &Volume, r: Option<&CapacityRange>) -> bool {
    let Some(r) = r else { return true };
    v.capacity_bytes >= r.required_bytes
        && (r.limit_bytes == 0 || v.capacity_bytes <= r.limit_bytes)
}

/// Decodes and runs one request; `Err` when the bytes are not that request.
async fn run(
    svc: &ControllerService,
    tag: u8,
    body: &[u8],
) -> std::result::Result<(), prost::DecodeError> {
    macro_rules! call {
        ($method:ident, $req:ty) => {{
            let req = <$req>::decode(body)?;
            if let Err(s) = svc.$method(Request::new(req)).await {
                check_status(stringify!($method), &s);
            }
        }};
    }
    match tag % 12 {
        0 => {
            let req = CreateVolumeRequest::decode(body)?;
            match svc.create_volume(Request::new(req.clone())).await {
                Ok(resp) => {
                    let v = resp.into_inner().volume.unwrap_or_default();
                    assert!(
                        validate_volume_name(&v.volume_id).is_ok(),
                        "created volume has invalid id {:?}",
                        v.volume_id
                    );
                    assert!(
                        fits(&v, req.capacity_range.as_ref()),
                        "{v:?} does not fit {req:?}"
                    );
                    match svc.create_volume(Request::new(req)).await {
                        Ok(again) => {
                            assert_eq!(again.into_inner().volume, Some(v), "not idempotent")
                        }
                        Err(s) => panic!("repeated CreateVolume failed: {s:?}"),
                    }
                }
                Err(s) => check_status("create_volume", &s),
            }
        }
        1 => {
            let req = DeleteVolumeRequest::decode(body)?;
            if svc.delete_volume(Request::new(req.clone())).await.is_ok() {
                if let Err(s) = svc.delete_volume(Request::new(req)).await {
                    panic!("second DeleteVolume failed: {s:?}");
                }
            }
        }
        2 => call!(
            validate_volume_capabilities,
            ValidateVolumeCapabilitiesRequest
        ),
        3 => call!(list_volumes, ListVolumesRequest),
        4 => call!(get_capacity, GetCapacityRequest),
        5 => call!(create_snapshot, CreateSnapshotRequest),
        6 => call!(delete_snapshot, DeleteSnapshotRequest),
        7 => call!(list_snapshots, ListSnapshotsRequest),
        8 => call!(controller_expand_volume, ControllerExpandVolumeRequest),
        9 => call!(controller_get_volume, ControllerGetVolumeRequest),
        10 => call!(controller_modify_volume, ControllerModifyVolumeRequest),
        _ => call!(get_snapshot, GetSnapshotRequest),
    }
    Ok(())
}

fn frame(tag: u8, msg: &impl Message) -> Vec<u8> {
    let body = msg.encode_to_vec();
    let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
    [vec![tag], len.to_le_bytes().to_vec(), body].concat()
}

fn seeds() -> Vec<Vec<u8>> {
    let cap = VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(
            volume_capability::MountVolume::default(),
        )),
        access_mode: Some(volume_capability::AccessMode {
            mode: volume_capability::access_mode::Mode::MultiNodeMultiWriter as i32,
        }),
    };
    let create = |name: &str, params: &[(&str, &str)], source: Option<VolumeContentSource>| {
        CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(CapacityRange {
                required_bytes: 1 << 30,
                limit_bytes: 2 << 30,
            }),
            volume_capabilities: vec![cap.clone()],
            parameters: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
            volume_content_source: source,
            ..Default::default()
        }
    };
    let snap_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: "snap-1".into(),
            },
        )),
    });
    vec![
        [
            frame(
                0,
                &create(
                    "pvc-1",
                    &[
                        ("replication", "2"),
                        ("csi.storage.k8s.io/pvc/name", "data"),
                    ],
                    None,
                ),
            ),
            frame(
                5,
                &CreateSnapshotRequest {
                    source_volume_id: "pvc-1".into(),
                    name: "snap-1".into(),
                    ..Default::default()
                },
            ),
            frame(0, &create("pvc-2", &[], snap_source)),
            frame(
                3,
                &ListVolumesRequest {
                    max_entries: 1,
                    starting_token: String::new(),
                },
            ),
            frame(
                7,
                &ListSnapshotsRequest {
                    max_entries: 1,
                    starting_token: "after:snap-0".into(),
                    ..Default::default()
                },
            ),
        ]
        .concat(),
        [
            frame(
                0,
                &create("Sanity Volume_1", &[("cluster", "ringfs")], None),
            ),
            frame(
                8,
                &ControllerExpandVolumeRequest {
                    volume_id: "sanity-volume-1-0000000000000000".into(),
                    capacity_range: Some(CapacityRange {
                        required_bytes: 3 << 30,
                        limit_bytes: 0,
                    }),
                    ..Default::default()
                },
            ),
            frame(
                2,
                &ValidateVolumeCapabilitiesRequest {
                    volume_id: "pvc-1".into(),
                    volume_capabilities: vec![cap.clone()],
                    ..Default::default()
                },
            ),
            frame(
                4,
                &GetCapacityRequest {
                    volume_capabilities: vec![cap.clone()],
                    parameters: HashMap::from([("replication".to_string(), "3".to_string())]),
                    ..Default::default()
                },
            ),
            frame(
                1,
                &DeleteVolumeRequest {
                    volume_id: "pvc-1".into(),
                    ..Default::default()
                },
            ),
        ]
        .concat(),
    ]
}

fuzz_target!(
    init: {
        write_seeds("csi_controller", seeds);
    },
    |data: &[u8]| {
        let svc = ControllerService {
            backend: Arc::new(Mem::default()),
            cluster_name: "ringfs".into(),
            default_capacity: 1 << 30,
        };
        let mut rest = data;
        runtime().block_on(async {
            while rest.len() >= 3 {
                let (tag, len) = (rest[0], usize::from(u16::from_le_bytes([rest[1], rest[2]])));
                let body = &rest[3..(3 + len).min(rest.len())];
                rest = &rest[(3 + len).min(rest.len())..];
                let _ = run(&svc, tag, body).await;
            }
        });
    }
);
