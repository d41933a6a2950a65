//! `AdminService`: status, membership (join), layout, health.

use crate::fsm;
use crate::meta::refusal;
use crate::node::{Node, Route};
use crate::sm::membership_nodes;
use crate::types::{Command, Response as SmResponse};
use openraft::{BasicNode, ChangeMembers};
use ringfs_core::layout::{Layout, NodeSpec};
use ringfs_proto::admin::admin_service_client::AdminServiceClient;
use ringfs_proto::admin::admin_service_server::{AdminService, AdminServiceServer};
use ringfs_proto::admin::*;
use ringfs_proto::MAX_MESSAGE_BYTES;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::instrument;

/// Raft voters to keep: 3, or 5 once the cluster has at least 5 nodes.
pub fn target_voters(nodes: usize) -> usize {
    if nodes >= 5 {
        5
    } else {
        nodes.min(3)
    }
}

pub struct AdminServer {
    node: Arc<Node>,
}

impl AdminServer {
    pub fn server(node: Arc<Node>) -> AdminServiceServer<AdminServer> {
        AdminServiceServer::new(AdminServer { node })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn client(&self, addr: &str) -> Result<AdminServiceClient<tonic::transport::Channel>, Status> {
        let ch = self
            .node
            .pool
            .get(addr)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(AdminServiceClient::new(ch))
    }
}

pub fn layout_msg(l: &Layout, addrs: &BTreeMap<u64, String>) -> LayoutVersion {
    LayoutVersion {
        version: l.version,
        partitions: l.partitions,
        replication: l.replication,
        nodes: l
            .nodes
            .iter()
            .map(|n| NodeInfo {
                id: n.id,
                addr: addrs.get(&n.id).cloned().unwrap_or_default(),
                zone: n.zone.clone(),
                capacity_bytes: n.capacity,
                role: String::new(),
                state: String::new(),
                partitions: 0,
            })
            .collect(),
        assignment: l.assignment.clone(),
    }
}

/// Adds (or re-registers) a node: Raft learner, voter while fewer than the target, then
/// its entry in the node table and the next layout. Idempotent. Runs on the leader.
pub async fn join_local(node: &Node, r: JoinRequest) -> Result<JoinReply, Status> {
    if r.id == 0 {
        return Err(Status::invalid_argument(
            "node id 0 is reserved; node ids start at 1",
        ));
    }
    if r.addr.is_empty() || !r.addr.contains(':') {
        return Err(Status::invalid_argument(format!(
            "node address {:?} must be host:port",
            r.addr
        )));
    }
    if r.capacity_bytes == 0 {
        return Err(Status::invalid_argument(
            "capacity_bytes must be greater than 0",
        ));
    }
    let zone = if r.zone.is_empty() {
        "default".to_string()
    } else {
        r.zone.clone()
    };
    let _guard = node.membership_lock.lock().await;
    let membership = node.raft.metrics().borrow().membership_config.clone();
    let members = membership_nodes(&membership);
    let known = members.iter().find(|(id, _, _)| *id == r.id).cloned();
    match &known {
        None => {
            node.raft
                .add_learner(
                    r.id,
                    BasicNode {
                        addr: r.addr.clone(),
                    },
                    true,
                )
                .await
                .map_err(|e| {
                    Status::unavailable(format!("adding node {} as a learner failed: {e}", r.id))
                })?;
        }
        Some((_, addr, _)) if *addr != r.addr => {
            let nodes = BTreeMap::from([(
                r.id,
                BasicNode {
                    addr: r.addr.clone(),
                },
            )]);
            node.raft
                .change_membership(ChangeMembers::SetNodes(nodes), false)
                .await
                .map_err(|e| {
                    Status::unavailable(format!("updating node {}'s address failed: {e}", r.id))
                })?;
        }
        Some(_) => {}
    }
    let voters: BTreeSet<u64> = node
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    let all = node
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .nodes()
        .count();
    if !voters.contains(&r.id) && voters.len() < target_voters(all) {
        node.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([r.id])), false)
            .await
            .map_err(|e| {
                Status::unavailable(format!("promoting node {} to voter failed: {e}", r.id))
            })?;
    }
    let cmd = Command::AddNode {
        spec: NodeSpec {
            id: r.id,
            zone,
            capacity: r.capacity_bytes,
        },
        addr: r.addr,
        partitions: node.config.partitions,
        replication: node.config.replication,
    };
    match node.write(cmd).await? {
        SmResponse::Layout { version, changed } => Ok(JoinReply {
            layout_version: version,
            joined: changed || known.is_none(),
        }),
        SmResponse::Refused { code, message } => Err(refusal(code, message)),
        other => Err(Status::internal(format!("unexpected response {other:?}"))),
    }
}

#[tonic::async_trait]
impl AdminService for AdminServer {
    #[instrument(skip_all, err)]
    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let m = self.node.raft.metrics().borrow().clone();
        let tx = self.node.sm.read()?;
        let layout = fsm::current_layout(&tx)?;
        let records = fsm::nodes(&tx)?;
        let volumes = fsm::list_volumes(&tx)?.len() as u64;
        let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
        let mut nodes: Vec<NodeInfo> = membership_nodes(&m.membership_config)
            .into_iter()
            .map(|(id, addr, voter)| {
                let rec = records.iter().find(|n| n.spec.id == id);
                NodeInfo {
                    id,
                    addr,
                    zone: rec.map(|r| r.spec.zone.clone()).unwrap_or_default(),
                    capacity_bytes: rec.map(|r| r.spec.capacity).unwrap_or(0),
                    role: if voter || voters.contains(&id) {
                        "voter".into()
                    } else {
                        "learner".into()
                    },
                    state: "active".into(),
                    partitions: layout
                        .as_ref()
                        .map(|l| l.assignment.iter().filter(|n| **n == id).count() as u32)
                        .unwrap_or(0),
                }
            })
            .collect();
        nodes.sort_by_key(|n| n.id);
        let leader_addr = m
            .current_leader
            .and_then(|l| {
                m.membership_config
                    .membership()
                    .get_node(&l)
                    .map(|n| n.addr.clone())
            })
            .unwrap_or_default();
        let (blocks, bytes) = self.node.blocks.stats();
        Ok(Response::new(StatusReply {
            node_id: self.node.id,
            leader_id: m.current_leader.unwrap_or(0),
            leader_addr,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            nodes,
            layout_version: layout.as_ref().map(|l| l.version).unwrap_or(0),
            partitions: layout.as_ref().map(|l| l.partitions).unwrap_or(0),
            replication: layout.as_ref().map(|l| l.replication).unwrap_or(0),
            volumes,
            blocks_stored: blocks,
            bytes_stored: bytes,
        }))
    }

    #[instrument(skip_all, fields(node = req.get_ref().id), err)]
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        if let Route::Forward(addr) = self.node.route(&req).await? {
            return self
                .client(&addr)?
                .join(Node::forwarded(req.into_inner()))
                .await;
        }
        Ok(Response::new(
            join_local(&self.node, req.into_inner()).await?,
        ))
    }

    #[instrument(skip_all, err)]
    async fn get_layout(
        &self,
        req: Request<GetLayoutRequest>,
    ) -> Result<Response<GetLayoutReply>, Status> {
        if let Route::Forward(addr) = self.node.route(&req).await? {
            return self
                .client(&addr)?
                .get_layout(Node::forwarded(req.into_inner()))
                .await;
        }
        self.node.linearizable().await?;
        let tx = self.node.sm.read()?;
        let addrs: BTreeMap<u64, String> = fsm::nodes(&tx)?
            .into_iter()
            .map(|n| (n.spec.id, n.addr))
            .collect();
        let versions = fsm::layouts(&tx)?
            .iter()
            .map(|l| layout_msg(l, &addrs))
            .collect();
        Ok(Response::new(GetLayoutReply { versions }))
    }

    async fn health(&self, _req: Request<HealthRequest>) -> Result<Response<HealthReply>, Status> {
        let (ready, detail) = readiness(&self.node);
        Ok(Response::new(HealthReply { ready, detail }))
    }

    // Membership transitions (issue 5) land with the migration scheduler; until then these
    // say so instead of pretending.
    async fn drain(&self, _req: Request<DrainRequest>) -> Result<Response<DrainReply>, Status> {
        Err(Status::unimplemented("drain is not implemented yet"))
    }

    async fn remove(&self, _req: Request<RemoveRequest>) -> Result<Response<RemoveReply>, Status> {
        Err(Status::unimplemented("remove is not implemented yet"))
    }

    async fn rebalance_status(
        &self,
        _req: Request<RebalanceStatusRequest>,
    ) -> Result<Response<RebalanceStatusReply>, Status> {
        Err(Status::unimplemented(
            "rebalance status is not implemented yet",
        ))
    }
}

/// Ready = a leader is known, this node is a member, and it has applied what it has.
pub fn readiness(node: &Node) -> (bool, String) {
    let m = node.raft.metrics().borrow().clone();
    if m.current_leader.is_none() {
        return (false, "no Raft leader is known".into());
    }
    if m.membership_config
        .membership()
        .get_node(&node.id)
        .is_none()
    {
        return (false, "this node has not joined the cluster yet".into());
    }
    if let Some(err) = &m.running_state.as_ref().err() {
        return (false, format!("raft stopped: {err}"));
    }
    (
        true,
        format!("term {} leader {:?}", m.current_term, m.current_leader),
    )
}
