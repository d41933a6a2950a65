//! `AdminService`: status, membership (join), layout, health.

use crate::fsm;
use crate::members::{self, NodeState};
use crate::meta::refusal;
use crate::node::{Node, Route};
use crate::sm::membership_nodes;
use crate::types::{Command, Response as SmResponse};
use openraft::{BasicNode, ChangeMembers};
use ringfs_core::layout::{Layout, NodeSpec};
use ringfs_core::BlockId;
use ringfs_proto::admin::admin_service_client::AdminServiceClient;
use ringfs_proto::admin::admin_service_server::{AdminService, AdminServiceServer};
use ringfs_proto::admin::*;
use ringfs_proto::MAX_MESSAGE_BYTES;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
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

    fn client(&self, addr: &str) -> Result<AdminServiceClient<ringfs_client::NodeChannel>, Status> {
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
    if known.is_some() {
        // A member registering again has restarted: it may lack blocks written while it
        // was away.
        node.migration.request_catch_up(r.id);
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
        let volumes = fsm::list_volumes(&tx)?.len() as u64;
        let nodes = node_infos(&self.node, &tx)?;
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
        let c = &self.node.migration.counters;
        Ok(Response::new(StatusReply {
            node_id: self.node.id,
            leader_id: m.current_leader.unwrap_or(0),
            leader_addr,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            last_purged_index: m.purged.map(|l| l.index).unwrap_or(0),
            nodes,
            layout_version: layout.as_ref().map(|l| l.version).unwrap_or(0),
            partitions: layout.as_ref().map(|l| l.partitions).unwrap_or(0),
            replication: layout.as_ref().map(|l| l.replication).unwrap_or(0),
            volumes,
            blocks_stored: blocks,
            bytes_stored: bytes,
            scrub_passes: c.scrub_passes.load(Ordering::Relaxed),
            scrub_checked: c.scrub_checked.load(Ordering::Relaxed),
            scrub_errors: c.scrub_errors.load(Ordering::Relaxed),
            scrub_repaired: c.scrub_repaired.load(Ordering::Relaxed),
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
        Ok(Response::new(HealthReply {
            ready,
            detail,
            boot_id: self.node.boot_id,
        }))
    }

    #[instrument(skip_all, fields(node = req.get_ref().node_id, cancel = req.get_ref().cancel), err)]
    async fn drain(&self, req: Request<DrainRequest>) -> Result<Response<DrainReply>, Status> {
        if let Route::Forward(addr) = self.node.route(&req).await? {
            return self
                .client(&addr)?
                .drain(Node::forwarded(req.into_inner()))
                .await;
        }
        let r = req.into_inner();
        let state = {
            let tx = self.node.sm.read()?;
            if !fsm::nodes(&tx)?.iter().any(|n| n.spec.id == r.node_id) {
                return Err(Status::not_found(format!(
                    "node {} is not a member of the cluster; `ringfs cluster status` lists the \
                     members",
                    r.node_id
                )));
            }
            members::node_state(&tx, r.node_id)?
        };
        let target = if r.cancel {
            match state {
                NodeState::Draining | NodeState::Drained => NodeState::Active,
                NodeState::Active => {
                    return Ok(Response::new(DrainReply {
                        layout_version: self.current_version()?,
                        message: format!("node {} is not draining; nothing to cancel", r.node_id),
                    }))
                }
                NodeState::Down => {
                    return Err(Status::failed_precondition(format!(
                        "node {} is down; it becomes active again by itself once it answers",
                        r.node_id
                    )))
                }
            }
        } else {
            NodeState::Draining
        };
        match self
            .node
            .write(Command::SetNodeState {
                id: r.node_id,
                state: target,
            })
            .await?
        {
            SmResponse::Layout { version, changed } => {
                let message = match (r.cancel, changed) {
                    (true, _) => format!("node {} is active again (layout v{version})", r.node_id),
                    (false, true) => format!(
                        "node {} is draining: layout v{version} gives it no partitions; follow \
                         the data moving away with `ringfs rebalance status --watch`",
                        r.node_id
                    ),
                    (false, false) => format!(
                        "node {} is already {} (layout v{version})",
                        r.node_id,
                        state.as_str()
                    ),
                };
                Ok(Response::new(DrainReply {
                    layout_version: version,
                    message,
                }))
            }
            SmResponse::Refused { code, message } => Err(refusal(code, message)),
            other => Err(Status::internal(format!("unexpected response {other:?}"))),
        }
    }

    #[instrument(skip_all, fields(node = req.get_ref().node_id, force = req.get_ref().force), err)]
    async fn remove(&self, req: Request<RemoveRequest>) -> Result<Response<RemoveReply>, Status> {
        if let Route::Forward(addr) = self.node.route(&req).await? {
            return self
                .client(&addr)?
                .remove(Node::forwarded(req.into_inner()))
                .await;
        }
        let r = req.into_inner();
        if r.node_id == self.node.id {
            return Err(Status::failed_precondition(format!(
                "node {} is the Raft leader; it cannot remove itself. Drain it, then remove it \
                 through another node once leadership has moved (restart it to step down)",
                r.node_id
            )));
        }
        let removed = match self
            .node
            .write(Command::RemoveNode {
                id: r.node_id,
                force: r.force,
            })
            .await?
        {
            SmResponse::Deleted(removed) => removed,
            SmResponse::Refused { code, message } => return Err(refusal(code, message)),
            other => return Err(Status::internal(format!("unexpected response {other:?}"))),
        };
        // Leave Raft too: first make sure enough voters remain (the scheduler promotes
        // learners; do it here so removal is immediate), then drop the node.
        let _guard = self.node.membership_lock.lock().await;
        let m = self.node.raft.metrics().borrow().membership_config.clone();
        let is_voter = membership_nodes(&m)
            .iter()
            .any(|(id, _, voter)| *id == r.node_id && *voter);
        if is_voter {
            let learners: Vec<u64> = membership_nodes(&m)
                .iter()
                .filter(|(id, _, voter)| !voter && *id != r.node_id)
                .map(|(id, _, _)| *id)
                .collect();
            if let Some(l) = learners.first() {
                self.node
                    .raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([*l])), false)
                    .await
                    .map_err(|e| Status::unavailable(format!("promoting node {l} failed: {e}")))?;
            }
            self.node
                .raft
                .change_membership(
                    ChangeMembers::RemoveVoters(BTreeSet::from([r.node_id])),
                    false,
                )
                .await
                .map_err(|e| {
                    Status::unavailable(format!("demoting node {} failed: {e}", r.node_id))
                })?;
        }
        let present = membership_nodes(&self.node.raft.metrics().borrow().membership_config)
            .iter()
            .any(|(id, _, _)| *id == r.node_id);
        if present {
            self.node
                .raft
                .change_membership(
                    ChangeMembers::RemoveNodes(BTreeSet::from([r.node_id])),
                    false,
                )
                .await
                .map_err(|e| {
                    Status::unavailable(format!(
                        "removing node {} from Raft failed: {e}",
                        r.node_id
                    ))
                })?;
        }
        Ok(Response::new(RemoveReply {
            layout_version: self.current_version()?,
            removed,
        }))
    }

    #[instrument(skip_all, err)]
    async fn rebalance_status(
        &self,
        req: Request<RebalanceStatusRequest>,
    ) -> Result<Response<RebalanceStatusReply>, Status> {
        if let Route::Forward(addr) = self.node.route(&req).await? {
            return self
                .client(&addr)?
                .rebalance_status(Node::forwarded(req.into_inner()))
                .await;
        }
        let p = self.node.migration.progress();
        let tx = self.node.sm.read()?;
        let live = fsm::layouts(&tx)?;
        let nodes = node_infos(&self.node, &tx)?;
        let any_down = nodes.iter().any(|n| n.state == NodeState::Down.as_str());
        let newest = live.first().map(|l| l.version).unwrap_or(0);
        // Progress from a scheduler that has not looked at the newest version yet is
        // stale: say so rather than report an old version's numbers.
        let current = p.version == newest;
        let healthy = live.len() == 1 && !any_down && current && p.under_replicated == 0;
        Ok(Response::new(RebalanceStatusReply {
            layout_version: newest,
            live_versions: live.iter().map(|l| l.version).collect(),
            active: live.len() > 1 || (current && p.active),
            partitions_total: if current { p.partitions_total } else { 0 },
            partitions_left: if current { p.partitions_left } else { 0 },
            bytes_total: if current { p.bytes_total } else { 0 },
            bytes_moved: if current { p.bytes_moved } else { 0 },
            bytes_left: if current { p.bytes_left } else { 0 },
            rate_bytes_per_sec: if current { p.rate } else { 0.0 },
            eta_seconds: if current { p.eta } else { 0.0 },
            under_replicated: p.under_replicated,
            nodes,
            healthy,
            message: if current {
                p.message
            } else {
                "the scheduler is planning the newest layout".into()
            },
            queued: p.queue,
            running: p.running,
            repair_backlog: p.repair_backlog,
        }))
    }

    #[instrument(skip_all, fields(ids = request.get_ref().ids.len()), err)]
    async fn unreferenced(
        &self,
        request: Request<UnreferencedRequest>,
    ) -> Result<Response<UnreferencedReply>, Status> {
        if let Route::Forward(addr) = self.node.route(&request).await? {
            return self
                .client(&addr)?
                .unreferenced(Node::forwarded(request.into_inner()))
                .await;
        }
        let r = request.into_inner();
        if r.ids.len() > MAX_UNREFERENCED_IDS {
            return Err(Status::invalid_argument(format!(
                "{} ids in one request; ask about at most {MAX_UNREFERENCED_IDS}",
                r.ids.len()
            )));
        }
        let mut ids = Vec::with_capacity(r.ids.len());
        for raw in &r.ids {
            ids.push(BlockId::from_slice(raw).ok_or_else(|| {
                Status::invalid_argument(format!("a block id is 16 bytes, got {} bytes", raw.len()))
            })?);
        }
        match self.node.write(Command::Unreferenced { ids }).await? {
            SmResponse::Blocks(ids) => Ok(Response::new(UnreferencedReply {
                ids: ids
                    .into_iter()
                    .map(|id| bytes::Bytes::copy_from_slice(&id.0))
                    .collect(),
            })),
            other => Err(Status::internal(format!(
                "unexpected state machine answer {other:?}"
            ))),
        }
    }
}

/// Upper bound of ids in one `Unreferenced` request.
pub const MAX_UNREFERENCED_IDS: usize = 4096;

impl AdminServer {
    fn current_version(&self) -> Result<u64, Status> {
        let tx = self.node.sm.read()?;
        Ok(fsm::current_layout(&tx)?.map(|l| l.version).unwrap_or(0))
    }
}

/// Every Raft member with its role, membership state and partitions in the newest layout.
fn node_infos(node: &Node, tx: &impl crate::sm::Reader) -> Result<Vec<NodeInfo>, Status> {
    let m = node.raft.metrics().borrow().membership_config.clone();
    let layout = fsm::current_layout(tx)?;
    let records = fsm::nodes(tx)?;
    let mut ids: BTreeSet<u64> = membership_nodes(&m).iter().map(|n| n.0).collect();
    ids.extend(records.iter().map(|r| r.spec.id));
    let members = membership_nodes(&m);
    let mut out = Vec::new();
    for id in ids {
        let rec = records.iter().find(|n| n.spec.id == id);
        let member = members.iter().find(|n| n.0 == id);
        let state = if rec.is_some() {
            members::node_state(tx, id)?.as_str().to_string()
        } else {
            "joining".to_string()
        };
        out.push(NodeInfo {
            id,
            addr: member
                .map(|m| m.1.clone())
                .or_else(|| rec.map(|r| r.addr.clone()))
                .unwrap_or_default(),
            zone: rec.map(|r| r.spec.zone.clone()).unwrap_or_default(),
            capacity_bytes: rec.map(|r| r.spec.capacity).unwrap_or(0),
            role: match member {
                Some((_, _, true)) => "voter".into(),
                Some(_) => "learner".into(),
                None => "none".into(),
            },
            state,
            partitions: layout
                .as_ref()
                .map(|l| l.assignment.iter().filter(|n| **n == id).count() as u32)
                .unwrap_or(0),
        });
    }
    Ok(out)
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
