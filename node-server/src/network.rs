//! Raft traffic over gRPC: the client side (openraft's network factory) and the
//! `RaftService` server. Messages are openraft's own types, postcard-encoded.

use crate::types::{NodeId, Raft, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use ringfs_client::ChannelPool;
use ringfs_proto::raft::raft_service_client::RaftServiceClient;
use ringfs_proto::raft::raft_service_server::{RaftService, RaftServiceServer};
use ringfs_proto::raft::{RaftReply, RaftRequest};
use ringfs_proto::MAX_MESSAGE_BYTES;

/// The largest encoded AppendEntries sent in one message (room left for the envelope).
const APPEND_LIMIT: usize = MAX_MESSAGE_BYTES - (64 << 10);
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

/// Encoding version of Raft payloads.
pub const RAFT_FORMAT: u32 = 1;

#[derive(Clone)]
pub struct Network {
    pub pool: ChannelPool,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            addr: node.addr.clone(),
            pool: self.pool.clone(),
        }
    }
}

pub struct Peer {
    target: NodeId,
    addr: String,
    pool: ChannelPool,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl Peer {
    fn client(&self) -> Result<RaftServiceClient<ringfs_client::NodeChannel>, Unreachable> {
        let ch = self
            .pool
            .get(&self.addr)
            .map_err(|e| Unreachable::new(&e))?;
        Ok(RaftServiceClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Encodes a request for [`Peer::send`].
    fn encode(req: &impl Serialize) -> Result<Vec<u8>, NetworkError> {
        postcard::to_allocvec(req).map_err(|e| NetworkError::new(&e))
    }

    /// Sends an encoded request with `f` and decodes the reply.
    async fn send<Resp, E>(
        &self,
        payload: Vec<u8>,
        option: &RPCOption,
        f: impl AsyncFnOnce(
            RaftServiceClient<ringfs_client::NodeChannel>,
            Request<RaftRequest>,
        ) -> Result<Response<RaftReply>, Status>,
    ) -> Result<Resp, RpcErr<E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut request = Request::new(RaftRequest {
            format: RAFT_FORMAT,
            payload: payload.into(),
        });
        request.set_timeout(option.hard_ttl());
        let client = self.client().map_err(RPCError::Unreachable)?;
        let reply = match f(client, request).await {
            Ok(r) => r.into_inner(),
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                ) =>
            {
                return Err(RPCError::Unreachable(Unreachable::new(&s)))
            }
            Err(s) => return Err(RPCError::Network(NetworkError::new(&s))),
        };
        let res: Result<Resp, RaftError<NodeId, E>> = postcard::from_bytes(&reply.payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let payload = Self::encode(&rpc).map_err(RPCError::Network)?;
        // Larger than a message may be (entries are batches of file-system commands, and
        // openraft sends up to `max_payload_entries` of them): ask openraft to send fewer.
        // One entry always fits (see `batch::MAX_BATCH_BYTES`).
        let n = rpc.entries.len() as u64;
        if payload.len() > APPEND_LIMIT && n > 1 {
            let hint = (n * APPEND_LIMIT as u64 / payload.len() as u64).clamp(1, n - 1);
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        self.send(payload, &option, async |mut c, r| c.append_entries(r).await)
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.send(
            Self::encode(&rpc).map_err(RPCError::Network)?,
            &option,
            async |mut c, r| c.install_snapshot(r).await,
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        self.send(
            Self::encode(&rpc).map_err(RPCError::Network)?,
            &option,
            async |mut c, r| c.vote(r).await,
        )
        .await
    }
}

/// The server side: decodes a request, hands it to the local Raft, encodes the result.
pub struct RaftServer {
    pub raft: Raft,
}

impl RaftServer {
    pub fn server(raft: Raft) -> RaftServiceServer<RaftServer> {
        RaftServiceServer::new(RaftServer { raft })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

fn decode<T: DeserializeOwned>(req: &RaftRequest) -> Result<T, Status> {
    if req.format != RAFT_FORMAT {
        return Err(Status::invalid_argument(format!(
            "raft payload format {} is not supported (this node speaks {RAFT_FORMAT}); upgrade nodes one at a time",
            req.format
        )));
    }
    postcard::from_bytes(&req.payload)
        .map_err(|e| Status::invalid_argument(format!("malformed raft payload: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<RaftReply>, Status> {
    let payload = postcard::to_allocvec(v).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftReply {
        payload: payload.into(),
    }))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn append_entries(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref())?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let rpc: VoteRequest<NodeId> = decode(req.get_ref())?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(req.get_ref())?;
        encode(&self.raft.install_snapshot(rpc).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Command, Entry, FsCommand};
    use openraft::{CommittedLeaderId, EntryPayload, LogId, Vote};
    use ringfs_core::fs::FsOp;

    /// An AppendEntries too large for one message is not sent: openraft is asked for
    /// fewer entries, with a hint that fits.
    #[tokio::test]
    async fn oversized_append_entries_asks_for_fewer_entries() {
        let mut peer = Network {
            pool: ChannelPool::new(),
        }
        .new_client(
            2,
            &BasicNode {
                addr: "127.0.0.1:1".into(),
            },
        )
        .await;
        let big = |index: u64| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::FsBatch(vec![
                FsCommand {
                    volume: 1,
                    op: FsOp::Mkdir {
                        parent: 1,
                        name: vec![b'x'; 200],
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                    },
                    now_ns: 0,
                };
                5000
            ])),
        };
        // ~1 MiB per entry, 20 entries: well over one message.
        let rpc = AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: (1..=20).map(big).collect(),
        };
        let option = RPCOption::new(std::time::Duration::from_secs(1));
        match peer.append_entries(rpc, option).await {
            Err(RPCError::PayloadTooLarge(p)) => {
                let hint = p.entries_hint();
                assert!((1..20).contains(&hint), "hint {hint}");
                assert!(hint <= 8, "hint {hint} entries of ~1 MiB exceed a message");
            }
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }
    }
}
