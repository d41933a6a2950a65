//! Node membership states and layout transitions, as applied by the state machine.
//!
//! A node is `Active` (holds partitions), `Draining` (the newest layout gives it none;
//! its data is still being copied away), `Drained` (every live layout version gives it
//! none: safe to remove) or `Down` (unreachable past the grace period; its partitions are
//! repaired elsewhere). States live in the `Sys` table under `node_state/<id>` so that
//! the node table's record format stays unchanged.
//!
//! Layout versions stay live until every active node of the newest version has reported
//! (through the leader's migration scheduler) that it holds everything that version
//! assigns it; then the older versions are deleted (retired) and their owners' extra
//! copies become garbage for the holders to delete.

use crate::error::Result;
use crate::fsm::{self, get, k_u64, put, refused, K_LAYOUT_VERSION, K_PARTITIONS, K_REPLICATION};
use crate::sm::{Reader, Tbl, Writer};
use crate::types::{RefusalCode, Response};
use ringfs_core::layout::{Layout, NodeSpec};
use ringfs_core::migrate::capacity_change_significant;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    Active,
    Draining,
    Drained,
    Down,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Active => "active",
            NodeState::Draining => "draining",
            NodeState::Drained => "drained",
            NodeState::Down => "down",
        }
    }
}

fn k_state(id: u64) -> Vec<u8> {
    [b"node_state/".as_slice(), &k_u64(id)].concat()
}
fn k_synced(id: u64) -> Vec<u8> {
    [b"node_synced/".as_slice(), &k_u64(id)].concat()
}

pub fn node_state(r: &impl Reader, id: u64) -> Result<NodeState> {
    Ok(get(r, Tbl::Sys, &k_state(id))?.unwrap_or(NodeState::Active))
}

/// The state of every node in the node table.
pub fn node_states(r: &impl Reader) -> Result<BTreeMap<u64, NodeState>> {
    fsm::nodes(r)?
        .into_iter()
        .map(|n| Ok((n.spec.id, node_state(r, n.spec.id)?)))
        .collect()
}

/// The newest layout version `id` reported synced (0: none).
pub fn synced_version(r: &impl Reader, id: u64) -> Result<u64> {
    Ok(get(r, Tbl::Sys, &k_synced(id))?.unwrap_or(0))
}

/// A record change that should recompute the layout: zone, or a capacity change beyond
/// the hysteresis band.
pub fn spec_change_significant(old: &NodeSpec, new: &NodeSpec) -> bool {
    old.zone != new.zone || capacity_change_significant(old.capacity, new.capacity)
}

/// The specs the layout is computed from: nodes that are not active hold nothing.
pub fn effective_specs(r: &impl Reader, specs: Vec<NodeSpec>) -> Result<Vec<NodeSpec>> {
    specs
        .into_iter()
        .map(|mut s| {
            if node_state(r, s.id)? != NodeState::Active {
                s.capacity = 0;
            }
            Ok(s)
        })
        .collect()
}

fn replication(r: &impl Reader) -> Result<u32> {
    Ok(get(r, Tbl::Sys, K_REPLICATION)?.unwrap_or(ringfs_core::layout::DEFAULT_REPLICATION))
}

/// Computes and stores the next layout for the current node table and states, unless it
/// would assign exactly what the newest one does. Returns the newest version, or a
/// refusal when no layout exists for these nodes.
fn relayout(w: &impl Writer) -> Result<std::result::Result<u64, Response>> {
    let current = fsm::current_layout(w)?;
    let specs: Vec<NodeSpec> = fsm::nodes(w)?.into_iter().map(|n| n.spec).collect();
    let specs = effective_specs(w, specs)?;
    let Some(partitions) = get::<u32>(w, Tbl::Sys, K_PARTITIONS)? else {
        return Ok(Err(refused(
            RefusalCode::FailedPrecondition,
            "the cluster has no layout yet; wait until the first node has registered",
        )));
    };
    let rf = replication(w)?;
    let next = match Layout::compute(current.as_ref(), &specs, rf, partitions) {
        Ok(l) => l,
        Err(e) => return Ok(Err(refused(RefusalCode::FailedPrecondition, e.to_string()))),
    };
    if let Some(c) = &current {
        if c.assignment == next.assignment && c.nodes == next.nodes {
            return Ok(Ok(c.version));
        }
    }
    put(w, Tbl::Layouts, &k_u64(next.version), &next)?;
    put(w, Tbl::Sys, K_LAYOUT_VERSION, &next.version)?;
    retire(w)?;
    Ok(Ok(next.version))
}

fn active_count_without(states: &BTreeMap<u64, NodeState>, id: u64) -> usize {
    states
        .iter()
        .filter(|(n, s)| **n != id && **s == NodeState::Active)
        .count()
}

/// Applies a state change. Draining is refused when fewer than RF active nodes would
/// remain; marking a node down is refused likewise (a layout without it could not hold RF
/// replicas; the node stays in the layout and writes go on with a quorum of the others).
/// Idempotent: setting the current state again changes nothing.
pub fn set_state(w: &impl Writer, id: u64, state: NodeState) -> Result<Response> {
    let Some(_) = fsm::nodes(w)?.into_iter().find(|n| n.spec.id == id) else {
        return Ok(refused(
            RefusalCode::NotFound,
            format!("node {id} is not a member of the cluster; `ringfs cluster status` lists the members"),
        ));
    };
    let states = node_states(w)?;
    let old = states.get(&id).copied().unwrap_or(NodeState::Active);
    let version = fsm::current_layout(w)?.map(|l| l.version).unwrap_or(0);
    let unchanged = Response::Layout {
        version,
        changed: false,
    };
    let rf = replication(w)? as usize;
    match state {
        _ if state == old => return Ok(unchanged),
        // Cancelling a drain of a drained node, or a node coming back up.
        NodeState::Active => {}
        NodeState::Draining => {
            if old == NodeState::Drained {
                return Ok(unchanged);
            }
            let left = active_count_without(&states, id);
            if left < rf {
                return Ok(refused(
                    RefusalCode::FailedPrecondition,
                    format!(
                        "draining node {id} would leave {left} active node(s), fewer than the \
                         replication factor {rf}: add a node first (`ringfs cluster add-node`), \
                         then drain"
                    ),
                ));
            }
        }
        NodeState::Drained => {
            return Ok(refused(
                RefusalCode::InvalidArgument,
                "a node becomes drained by itself once its data has moved; drain it instead",
            ));
        }
        NodeState::Down => {
            if old != NodeState::Active {
                // A draining or drained node that stops answering: its data is already
                // being (or has been) re-homed; remember it is gone.
            } else if active_count_without(&states, id) < rf {
                return Ok(refused(
                    RefusalCode::FailedPrecondition,
                    format!(
                        "node {id} is unreachable but the cluster has no spare node to \
                         restore replication factor {rf} on; it stays in the layout"
                    ),
                ));
            }
        }
    }
    put(w, Tbl::Sys, &k_state(id), &state)?;
    match relayout(w)? {
        Ok(version) => Ok(Response::Layout {
            version,
            changed: true,
        }),
        Err(refusal) => {
            // Validation happened before the write above; undo it (one transaction).
            put(w, Tbl::Sys, &k_state(id), &old)?;
            Ok(refusal)
        }
    }
}

/// Removes a node from the node table and the layout. Refused unless it is drained, or
/// `force` and it is down. Removing an unknown node answers `Deleted(false)`.
pub fn remove(w: &impl Writer, id: u64, force: bool) -> Result<Response> {
    if !fsm::nodes(w)?.iter().any(|n| n.spec.id == id) {
        return Ok(Response::Deleted(false));
    }
    let state = node_state(w, id)?;
    let allowed = state == NodeState::Drained || (force && state == NodeState::Down);
    if !allowed {
        let why = match state {
            NodeState::Active => format!(
                "node {id} is active and holds data: drain it first (`ringfs cluster drain {id}`), \
                 wait until it is drained, then remove it"
            ),
            NodeState::Draining => format!(
                "node {id} is still draining (data is moving off it; see `ringfs rebalance \
                 status`): remove it once it is drained"
            ),
            NodeState::Down | NodeState::Drained => format!(
                "node {id} is down but its data has not been re-homed; pass --force to remove \
                 it anyway (its partitions are then restored from the other replicas)"
            ),
        };
        return Ok(refused(RefusalCode::FailedPrecondition, why));
    }
    let remaining = fsm::nodes(w)?
        .iter()
        .filter(|n| n.spec.id != id && node_state(w, n.spec.id).ok() == Some(NodeState::Active))
        .count();
    if remaining == 0 {
        return Ok(refused(
            RefusalCode::FailedPrecondition,
            format!("node {id} is the last active node"),
        ));
    }
    w.del(Tbl::Nodes, &k_u64(id))?;
    w.del(Tbl::Sys, &k_state(id))?;
    w.del(Tbl::Sys, &k_synced(id))?;
    match relayout(w)? {
        Ok(_) => Ok(Response::Deleted(true)),
        Err(refusal) => Ok(refusal),
    }
}

/// Records that `node` holds everything layout `version` assigns it, then retires what
/// can be retired.
pub fn sync_report(w: &impl Writer, node: u64, version: u64) -> Result<Response> {
    if synced_version(w, node)? < version {
        put(w, Tbl::Sys, &k_synced(node), &version)?;
    }
    retire(w)?;
    let version = fsm::current_layout(w)?.map(|l| l.version).unwrap_or(0);
    Ok(Response::Layout {
        version,
        changed: false,
    })
}

/// Deletes every layout version older than the oldest version all active nodes of the
/// newest layout have synced, then marks draining nodes that no live version gives a
/// partition as drained.
fn retire(w: &impl Writer) -> Result<()> {
    let live = fsm::layouts(w)?;
    let Some(newest) = live.first() else {
        return Ok(());
    };
    if live.len() > 1 {
        let states = node_states(w)?;
        let mut floor = newest.version;
        for n in &newest.nodes {
            if n.capacity > 0 && states.get(&n.id) == Some(&NodeState::Active) {
                floor = floor.min(synced_version(w, n.id)?);
            }
        }
        for l in &live[1..] {
            if l.version < floor {
                w.del(Tbl::Layouts, &k_u64(l.version))?;
            }
        }
    }
    let live = fsm::layouts(w)?;
    for (id, state) in node_states(w)? {
        if state == NodeState::Draining && live.iter().all(|l| !l.assignment.contains(&id)) {
            put(w, Tbl::Sys, &k_state(id), &NodeState::Drained)?;
        }
    }
    Ok(())
}
