//! `MetaService`: volumes and namespace operations. Any node accepts any request;
//! followers forward to the leader, which serves writes through Raft and reads
//! linearizably.

use crate::error::NodeError;
use crate::fsm;
use crate::node::{now_ns, Node, Route};
use crate::types::{Command, RefusalCode, Response as SmResponse, VolumeInfo};
use ringfs_core::fs::{FsOp, FsResult, FS_FORMAT};
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

    fn client(&self, addr: &str) -> Result<MetaServiceClient<tonic::transport::Channel>, Status> {
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
}

pub fn refusal(code: RefusalCode, message: String) -> Status {
    match code {
        RefusalCode::InvalidArgument => Status::invalid_argument(message),
        RefusalCode::NotFound => Status::not_found(message),
        RefusalCode::AlreadyExists => Status::already_exists(message),
        RefusalCode::FailedPrecondition => Status::failed_precondition(message),
    }
}

pub fn volume_msg(v: VolumeInfo) -> Volume {
    Volume {
        name: v.name,
        id: v.id,
        capacity_bytes: v.capacity,
        replication: v.replication,
        used_bytes: v.used_bytes,
        used_inodes: v.used_inodes,
        created_unix: v.created_ns / 1_000_000_000,
    }
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
        let cmd = Command::CreateVolume {
            name: r.name,
            capacity: r.capacity_bytes,
            replication: r.replication,
            now_ns: now_ns(),
        };
        match self.propose(cmd).await? {
            SmResponse::Volume { volume, created } => Ok(Response::new(CreateVolumeReply {
                volume: Some(volume_msg(volume)),
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
        let vols = self.read(fsm::list_volumes).await?;
        Ok(Response::new(ListVolumesReply {
            volumes: vols.into_iter().map(volume_msg).collect(),
        }))
    }

    #[instrument(skip_all, fields(volume = %req.get_ref().name), err)]
    async fn get_volume(&self, req: Request<GetVolumeRequest>) -> Result<Response<Volume>, Status> {
        route!(self, req, get_volume);
        let name = req.into_inner().name;
        match self.read(|tx| fsm::volume_by_name(tx, &name)).await? {
            Some(v) => Ok(Response::new(volume_msg(v.info))),
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
            SmResponse::Volume { volume, .. } => Ok(Response::new(volume_msg(volume))),
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
        let op: FsOp = postcard::from_bytes(&r.op)
            .map_err(|e| Status::invalid_argument(format!("malformed file-system op: {e}")))?;
        let result: FsResult = if op.is_read() {
            let vol = r.volume_id;
            self.read(|tx| fsm::query(tx, vol, &op)).await?
        } else {
            match self
                .node
                .write(Command::Fs {
                    volume: r.volume_id,
                    op,
                    now_ns: now_ns(),
                })
                .await?
            {
                SmResponse::Fs(res) => res,
                other => return Err(unexpected(other)),
            }
        };
        let bytes =
            postcard::to_allocvec(&result).map_err(|e| NodeError::Storage(e.to_string()))?;
        Ok(Response::new(FsReply {
            result: bytes.into(),
        }))
    }
}
