//! `MetaService`: volumes and namespace operations. Any node accepts any request;
//! followers forward to the leader, which serves writes through Raft and reads
//! linearizably.

use crate::error::NodeError;
use crate::fsm;
use crate::node::{now_ns, Node, Route};
use crate::snapshots;
use crate::types::{
    CloneSource, Command, FsCall, RefusalCode, Response as SmResponse, SnapshotInfo, VolumeInfo,
};
use ringfs_core::fs::{FsOp, FsResult, RequestId, FS_FORMAT, MAX_FS_OP_BYTES};
use ringfs_proto::meta::meta_service_client::MetaServiceClient;
use ringfs_proto::meta::meta_service_server::{MetaService, MetaServiceServer};
use ringfs_proto::meta::*;
use ringfs_proto::MAX_MESSAGE_BYTES;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::instrument;

pub struct MetaServer {
    node: Arc<Node>,
}

impl MetaServer {
    pub fn server(node: Arc<Node>) -> MetaServiceServer<MetaServer> {
        MetaServiceServer::new(MetaServer { node })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn client(&self, addr: &str) -> Result<MetaServiceClient<ringfs_client::NodeChannel>, Status> {
        let ch = self
            .node
            .pool
            .get(addr)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(MetaServiceClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    async fn propose(&self, cmd: Command) -> Result<SmResponse, Status> {
        let resp = self.node.write(cmd).await?;
        if let SmResponse::Refused { code, message } = resp {
            return Err(refusal(code, message));
        }
        Ok(resp)
    }

    async fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> crate::error::Result<T>,
    ) -> Result<T, Status> {
        self.node.linearizable().await?;
        let tx = self.node.sm.read()?;
        Ok(f(&tx)?)
    }

    /// A volume's message with its origin, read locally: origins never change, and the
    /// caller has just applied (or linearizably read) the volume.
    fn volume_reply(&self, v: VolumeInfo) -> Result<Volume, Status> {
        let tx = self.node.sm.read()?;
        let origin = fsm::volume_origin(&tx, v.id)?;
        Ok(volume_msg(v, origin.as_ref()))
    }
}

pub fn refusal(code: RefusalCode, message: String) -> Status {
    match code {
        RefusalCode::InvalidArgument => Status::invalid_argument(message),
        RefusalCode::NotFound => Status::not_found(message),
        RefusalCode::AlreadyExists => Status::already_exists(message),
        RefusalCode::FailedPrecondition => Status::failed_precondition(message),
        RefusalCode::OutOfRange => Status::out_of_range(message),
    }
}

pub fn volume_msg(v: VolumeInfo, origin: Option<&CloneSource>) -> Volume {
    let (source_snapshot, source_volume) = match origin {
        Some(CloneSource::Snapshot(s)) => (s.clone(), String::new()),
        Some(CloneSource::Volume(s)) => (String::new(), s.clone()),
        None => (String::new(), String::new()),
    };
    Volume {
        name: v.name,
        id: v.id,
        capacity_bytes: v.capacity,
        replication: v.replication,
        used_bytes: v.used_bytes,
        used_inodes: v.used_inodes,
        created_unix: v.created_ns / 1_000_000_000,
        source_snapshot,
        source_volume,
    }
}

pub fn snapshot_msg(s: SnapshotInfo) -> Snapshot {
    Snapshot {
        name: s.name,
        id: s.id,
        source_volume: s.source_volume,
        source_volume_id: s.source_volume_id,
        source_capacity_bytes: s.source_capacity,
        replication: s.replication,
        size_bytes: s.used_bytes,
        used_inodes: s.used_inodes,
        created_unix_nanos: s.created_ns,
    }
}

fn snapshot_not_found(name: &str) -> Status {
    Status::not_found(format!(
        "snapshot {name:?} does not exist; `ringfs snapshot ls` lists snapshots"
    ))
}

fn unexpected(r: SmResponse) -> Status {
    Status::internal(format!("unexpected state-machine response {r:?}"))
}

/// Forwards the call to the leader when this node is not it.
macro_rules! route {
    ($self:ident, $req:ident, $method:ident) => {
        if let Route::Forward(addr) = $self.node.route(&$req).await? {
            return $self
                .client(&addr)?
                .$method(Node::forwarded($req.into_inner()))
                .await;
        }
    };
}

#[tonic::async_trait]
impl MetaService for MetaServer {
    #[instrument(skip_all, fields(volume = %req.get_ref().name), err)]
    async fn create_volume(
        &self,
        req: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeReply>, Status> {
        route!(self, req, create_volume);
        let r = req.into_inner();
        if r.capacity_bytes == 0 {
            return Err(Status::invalid_argument(
                "capacity_bytes must be greater than 0 (e.g. 10GiB)",
            ));
        }
        let source = match (r.source_snapshot.is_empty(), r.source_volume.is_empty()) {
            (true, true) => None,
            (false, true) => Some(CloneSource::Snapshot(r.source_snapshot)),
            (true, false) => Some(CloneSource::Volume(r.source_volume)),
            (false, false) => {
                return Err(Status::invalid_argument(
                    "give source_snapshot or source_volume, not both",
                ))
            }
        };
        let cmd = match source {
            None => Command::CreateVolume {
                name: r.name,
                capacity: r.capacity_bytes,
                replication: r.replication,
                now_ns: now_ns(),
            },
            Some(source) => Command::CloneVolume {
                name: r.name,
                capacity: r.capacity_bytes,
                replication: r.replication,
                source,
                now_ns: now_ns(),
            },
        };
        match self.propose(cmd).await? {
            SmResponse::Volume { volume, created } => Ok(Response::new(CreateVolumeReply {
                volume: Some(self.volume_reply(volume)?),
                created,
            })),
            other => Err(unexpected(other)),
        }
    }

    #[instrument(skip_all, err)]
    async fn list_volumes(
        &self,
        req: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesReply>, Status> {
        route!(self, req, list_volumes);
        let vols = self
            .read(|tx| {
                fsm::list_volumes(tx)?
                    .into_iter()
                    .map(|v| {
                        let origin = fsm::volume_origin(tx, v.id)?;
                        Ok(volume_msg(v, origin.as_ref()))
                    })
                    .collect::<crate::error::Result<Vec<_>>>()
            })
            .await?;
        Ok(Response::new(ListVolumesReply { volumes: vols }))
    }

    #[instrument(skip_all, fields(volume = %req.get_ref().name), err)]
    async fn get_volume(&self, req: Request<GetVolumeRequest>) -> Result<Response<Volume>, Status> {
        route!(self, req, get_volume);
        let name = req.into_inner().name;
        match self.read(|tx| fsm::volume_by_name(tx, &name)).await? {
            Some(v) => Ok(Response::new(self.volume_reply(v.info)?)),
            None => Err(Status::not_found(format!(
                "volume {name:?} does not exist; `ringfs volume ls` lists volumes"
            ))),
        }
    }

    #[instrument(skip_all, fields(volume = %req.get_ref().name), err)]
    async fn resize_volume(
        &self,
        req: Request<ResizeVolumeRequest>,
    ) -> Result<Response<Volume>, Status> {
        route!(self, req, resize_volume);
        let r = req.into_inner();
        match self
            .propose(Command::ResizeVolume {
                name: r.name,
                capacity: r.capacity_bytes,
            })
            .await?
        {
            SmResponse::Volume { volume, .. } => Ok(Response::new(self.volume_reply(volume)?)),
            other => Err(unexpected(other)),
        }
    }

    #[instrument(skip_all, fields(volume = %req.get_ref().name), err)]
    async fn delete_volume(
        &self,
        req: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeReply>, Status> {
        route!(self, req, delete_volume);
        let name = req.into_inner().name;
        if let Err(e) = ringfs_core::names::validate_volume_name(&name) {
            return Err(Status::invalid_argument(e.to_string()));
        }
        match self.propose(Command::DeleteVolume { name }).await? {
            SmResponse::Deleted(deleted) => Ok(Response::new(DeleteVolumeReply { deleted })),
            other => Err(unexpected(other)),
        }
    }

    #[instrument(skip_all, fields(snapshot = %req.get_ref().name, volume = %req.get_ref().source_volume), err)]
    async fn create_snapshot(
        &self,
        req: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotReply>, Status> {
        route!(self, req, create_snapshot);
        let r = req.into_inner();
        if r.source_volume.is_empty() {
            return Err(Status::invalid_argument(
                "source_volume is required: the volume to snapshot",
            ));
        }
        let cmd = Command::CreateSnapshot {
            name: r.name,
            volume: r.source_volume,
            now_ns: now_ns(),
        };
        match self.propose(cmd).await? {
            SmResponse::Snapshot { snapshot, created } => {
                if created {
                    tracing::info!(
                        snapshot = %snapshot.name,
                        inodes = snapshot.used_inodes,
                        bytes = snapshot.used_bytes,
                        "snapshot taken"
                    );
                }
                Ok(Response::new(CreateSnapshotReply {
                    snapshot: Some(snapshot_msg(snapshot)),
                    created,
                }))
            }
            other => Err(unexpected(other)),
        }
    }

    #[instrument(skip_all, err)]
    async fn list_snapshots(
        &self,
        req: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsReply>, Status> {
        route!(self, req, list_snapshots);
        let source = req.into_inner().source_volume;
        let snaps = self.read(snapshots::list_snapshots).await?;
        Ok(Response::new(ListSnapshotsReply {
            snapshots: snaps
                .into_iter()
                .filter(|s| source.is_empty() || s.source_volume == source)
                .map(snapshot_msg)
                .collect(),
        }))
    }

    #[instrument(skip_all, fields(snapshot = %req.get_ref().name), err)]
    async fn get_snapshot(
        &self,
        req: Request<GetSnapshotRequest>,
    ) -> Result<Response<Snapshot>, Status> {
        route!(self, req, get_snapshot);
        let name = req.into_inner().name;
        match self
            .read(|tx| snapshots::snapshot_by_name(tx, &name))
            .await?
        {
            Some(s) => Ok(Response::new(snapshot_msg(s.info))),
            None => Err(snapshot_not_found(&name)),
        }
    }

    #[instrument(skip_all, fields(snapshot = %req.get_ref().name), err)]
    async fn delete_snapshot(
        &self,
        req: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotReply>, Status> {
        route!(self, req, delete_snapshot);
        let name = req.into_inner().name;
        if let Err(e) = ringfs_core::names::validate_volume_name(&name) {
            return Err(Status::invalid_argument(format!(
                "invalid snapshot name: {e}"
            )));
        }
        match self.propose(Command::DeleteSnapshot { name }).await? {
            SmResponse::Deleted(deleted) => Ok(Response::new(DeleteSnapshotReply { deleted })),
            other => Err(unexpected(other)),
        }
    }

    #[instrument(skip_all, fields(volume = req.get_ref().volume_id), err)]
    async fn fs(&self, req: Request<FsRequest>) -> Result<Response<FsReply>, Status> {
        route!(self, req, fs);
        let r = req.into_inner();
        if r.format != FS_FORMAT {
            return Err(Status::invalid_argument(format!(
                "file-system op format {} is not supported (this node speaks {FS_FORMAT})",
                r.format
            )));
        }
        if r.op.len() > MAX_FS_OP_BYTES {
            return Err(Status::invalid_argument(format!(
                "file-system op of {} bytes is larger than the {MAX_FS_OP_BYTES} one command may \
                 have (it must fit in one replication message); split it",
                r.op.len()
            )));
        }
        let op: FsOp = postcard::from_bytes(&r.op)
            .map_err(|e| Status::invalid_argument(format!("malformed file-system op: {e}")))?;
        op.check_bounds().map_err(Status::invalid_argument)?;
        let result: FsResult = if op.is_read() {
            let vol = r.volume_id;
            self.read(|tx| fsm::query(tx, vol, &op)).await?
        } else {
            // Session management is idempotent by nature and opens the session the ids
            // would name: it is never deduplicated.
            let request = (r.session != 0 && !op.is_session_op()).then_some(RequestId {
                session: r.session,
                seq: r.seq,
                acked_below: r.acked_below,
            });
            let result = self
                .node
                .write_fs(
                    FsCall {
                        volume: r.volume_id,
                        op,
                        now_ns: now_ns(),
                        request,
                    },
                    r.op.len(),
                )
                .await?;
            if let Some(id) = request {
                self.node.failpoints.committed();
                if self.node.failpoints.lose_reply(id) {
                    return Err(Status::unavailable(
                        "failpoint: the reply of this committed command was dropped",
                    ));
                }
            }
            result
        };
        let bytes =
            postcard::to_allocvec(&result).map_err(|e| NodeError::Storage(e.to_string()))?;
        Ok(Response::new(FsReply {
            result: bytes.into(),
        }))
    }
}
