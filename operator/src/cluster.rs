//! The DfsCluster reconciler: owned objects, safe scaling, status and conditions.

use crate::admin::{AdminError, ClusterState, Rebalance, Target};
use crate::conditions::{cond, merge, unknown};
use crate::context::{Context, MANAGER};
use crate::error::{Error, Result};
use crate::resources::{self, node_id, Names};
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::{Api, Resource, ResourceExt};
use ringfs_api::conditions::{AVAILABLE, DEGRADED, PROGRESSING, REBALANCING};
use ringfs_api::{DfsCluster, DfsClusterStatus, DfsVolume, RebalanceProgress};
use std::sync::Arc;
use tracing::instrument;

pub const FINALIZER: &str = "ringfs.io/cluster";
pub const CONTROLLER: &str = "dfscluster";

/// What to do about membership in this reconcile.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing beyond applying the StatefulSet with `target` replicas.
    Steady,
    /// The requested replicas are below the replication factor: keep the current size.
    Refused { requested: i32, replication: u32 },
    /// The cluster state is unknown (unreachable): wait before any scale-down step.
    WaitForCluster { node: u64 },
    /// Start draining this node.
    Drain { node: u64 },
    /// This node is draining: wait for its data to move.
    WaitDrain { node: u64 },
    /// This node holds nothing the cluster needs: remove it from the cluster.
    Remove { node: u64 },
    /// The highest node is no longer a member: shrink the StatefulSet by one.
    Shrink { node: u64 },
}

/// Decides the StatefulSet size and the next membership step. Scale-down goes one node at
/// a time from the highest ordinal: drain, wait, remove, shrink.
pub fn plan(
    requested: i32,
    replication: u32,
    current: Option<i32>,
    state: Option<&ClusterState>,
) -> (i32, Step) {
    let current = current.unwrap_or(requested);
    if i64::from(requested) < i64::from(replication) {
        return (
            current,
            Step::Refused {
                requested,
                replication,
            },
        );
    }
    if requested >= current {
        return (requested, Step::Steady);
    }
    let node = node_id(current - 1);
    let Some(state) = state else {
        return (current, Step::WaitForCluster { node });
    };
    match state.members.iter().find(|m| m.id == node) {
        None => (current - 1, Step::Shrink { node }),
        Some(m) if m.state == "drained" => (current, Step::Remove { node }),
        Some(m) if m.state == "draining" => (current, Step::WaitDrain { node }),
        Some(_) => (current, Step::Drain { node }),
    }
}

pub async fn reconcile(dc: Arc<DfsCluster>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start(CONTROLLER);
    let ns = dc
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<DfsCluster> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, dc, |event| async {
        match event {
            Finalizer::Apply(dc) => apply(dc, ctx.clone()).await,
            Finalizer::Cleanup(dc) => cleanup(dc, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

fn seeds(names: &Names, pods: i32) -> Vec<String> {
    (0..pods.max(1)).map(|o| names.node_addr(o)).collect()
}

#[instrument(skip_all, fields(cluster = %dc.name_any(), ns = dc.namespace().unwrap_or_default()), err)]
async fn apply(dc: Arc<DfsCluster>, ctx: Arc<Context>) -> Result<Action> {
    let ns = dc
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = dc.name_any();
    let names = Names::new(&name, &ns);
    let owner = dc
        .controller_owner_ref(&())
        .ok_or(Error::MissingField("metadata.uid"))?;
    // Checked before anything is changed: an invalid spec must not drain or remove a node
    // it then cannot finish scaling for. The CRD pattern admits sizes that overflow u64
    // (`20000Pi`), so this is reachable.
    let cm = match resources::config_map(&dc, &names, &owner) {
        Ok(cm) => cm,
        Err(msg) => {
            write_invalid(&dc, &ctx, &ns, "InvalidSpec", msg).await?;
            return Ok(Action::await_change());
        }
    };
    // The certificates come before anything that talks to the nodes or starts them: the
    // operator calls the nodes with the admin identity, and node pods mount theirs.
    let tls = if dc.spec.tls.enabled {
        match crate::tls::ensure(&ctx, &dc, &names, &owner).await? {
            Ok(tls) => Some(tls),
            Err(msg) => {
                // Fixed by deleting or repairing a Secret, which is not watched: look again.
                write_invalid(&dc, &ctx, &ns, "CertificatesUnusable", msg).await?;
                return Ok(Action::requeue(ctx.busy_requeue));
            }
        }
    } else {
        None
    };
    let sts_api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let sts = sts_api.get_opt(&names.statefulset()).await?;
    let current = sts
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.replicas);
    let sts_status = sts.as_ref().and_then(|s| s.status.clone());
    let ready = sts_status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let pods = sts_status.as_ref().map(|s| s.replicas).unwrap_or(0);

    let target_nodes = Target {
        seeds: seeds(&names, current.unwrap_or(dc.spec.replicas)),
        tls,
    };
    let (state, rebalance) = if ready > 0 {
        let state = ctx.admin.state(target_nodes.clone()).await;
        let rebalance = ctx.admin.rebalance(target_nodes.clone()).await;
        (state, Some(rebalance))
    } else {
        (
            Err(AdminError::Unavailable("no node pod is ready yet".into())),
            None,
        )
    };
    if let Err(e) = &state {
        tracing::debug!(error = %e, "cluster state unavailable");
    }

    let (target, step) = plan(
        dc.spec.replicas,
        dc.spec.replication,
        current,
        state.as_ref().ok(),
    );
    let mut step_error: Option<String> = None;
    match &step {
        Step::Refused {
            requested,
            replication,
        } => {
            ctx.event(
                &*dc,
                true,
                "ScaleDownRefused",
                "Scale",
                format!(
                    "spec.replicas={requested} is below spec.replication={replication}; keeping {target} nodes"
                ),
            )
            .await;
        }
        Step::Drain { node } => match ctx.admin.drain(target_nodes.clone(), *node).await {
            Ok(()) => {
                ctx.event(
                    &*dc,
                    false,
                    "DrainStarted",
                    "Scale",
                    format!("draining node {node} before removing it"),
                )
                .await
            }
            Err(e) => step_error = Some(e.to_string()),
        },
        Step::Remove { node } => match ctx.admin.remove(target_nodes.clone(), *node).await {
            Ok(_) => {
                ctx.event(
                    &*dc,
                    false,
                    "NodeRemoved",
                    "Scale",
                    format!("node {node} was drained and removed from the cluster"),
                )
                .await
            }
            Err(e) => step_error = Some(e.to_string()),
        },
        Step::Shrink { node } => {
            ctx.event(
                &*dc,
                false,
                "ScaledDown",
                "Scale",
                format!("node {node} left the cluster; StatefulSet shrinks to {target}"),
            )
            .await
        }
        Step::Steady if current.is_some_and(|c| c < target) => {
            ctx.event(
                &*dc,
                false,
                "ScalingUp",
                "Scale",
                format!("StatefulSet grows to {target} nodes"),
            )
            .await
        }
        Step::Steady | Step::WaitDrain { .. } | Step::WaitForCluster { .. } => {}
    }

    ctx.apply(&ns, &cm).await?;
    ctx.apply(&ns, &resources::headless_service(&names, &owner))
        .await?;
    ctx.apply(&ns, &resources::client_service(&names, &owner))
        .await?;
    ctx.apply(&ns, &resources::pdb(&names, &owner)).await?;
    // Rolling update of a changed pod template (image, resources, ...): one node at a
    // time, each only once every node is ready and every partition is at RF.
    let revisions = sts_status
        .as_ref()
        .and_then(|s| Some((s.current_revision.clone()?, s.update_revision.clone()?)));
    let outdated = match &revisions {
        Some((current, update)) if current != update => {
            let pods: Api<k8s_openapi::api::core::v1::Pod> =
                Api::namespaced(ctx.client.clone(), &ns);
            let lp = ListParams::default().labels(&names.selector_string());
            let mut old = Vec::new();
            for p in pods.list(&lp).await?.items {
                let rev = p.labels().get("controller-revision-hash").cloned();
                let ord = p
                    .metadata
                    .name
                    .as_deref()
                    .and_then(|n| n.rsplit('-').next())
                    .and_then(|o| o.parse::<i32>().ok());
                if let (Some(o), true) = (ord, rev.as_ref() != Some(update)) {
                    old.push(o);
                }
            }
            Some(old)
        }
        _ => None,
    };
    let healthy = rebalance
        .as_ref()
        .and_then(|r| r.as_ref().ok())
        .is_some_and(|r| r.healthy);
    let current_partition = sts
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.partition);
    let partition = rollout_partition(
        target,
        current_partition,
        outdated.as_deref(),
        ready >= pods && pods >= target,
        healthy,
    );
    ctx.apply(
        &ns,
        &resources::statefulset(&dc, &names, &owner, target, partition),
    )
    .await?;

    let state = state.ok();
    let members = state.as_ref().map(|s| s.members.len()).unwrap_or(0);
    let members = i32::try_from(members).unwrap_or(i32::MAX);
    let progress = rebalance
        .as_ref()
        .and_then(|r| r.as_ref().ok())
        .map(|r| RebalanceProgress {
            active: r.active,
            partitions_left: r.partitions_left,
            partitions_total: r.partitions_total,
            bytes_moved: r.bytes_moved,
            bytes_left: r.bytes_left,
            under_replicated: r.under_replicated,
            eta_seconds: r.eta_seconds.max(0.0).round() as u64,
        });
    let conditions = conditions(&Observed {
        requested: dc.spec.replicas,
        replication: dc.spec.replication,
        target,
        ready,
        members,
        leader: state.as_ref().and_then(|s| s.leader),
        step: &step,
        step_error: step_error.as_deref(),
        rebalance: rebalance.as_ref(),
        pod_name: format!("{name}-0"),
        selector: names.selector_string(),
        rollout: outdated.as_ref().map(|old| {
            let total = pods.max(target);
            (total - i32::try_from(old.len()).unwrap_or(total), total)
        }),
    });
    let busy = conditions
        .iter()
        .any(|c| (c.type_ == PROGRESSING || c.type_ == REBALANCING) && c.status == "True");
    let previous = dc
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let status = DfsClusterStatus {
        observed_generation: dc.metadata.generation,
        replicas: pods,
        ready_replicas: ready,
        members,
        selector: Some(names.selector_string()),
        leader: state.as_ref().and_then(|s| s.leader),
        layout_version: state.as_ref().map(|s| s.layout_version),
        rebalance: progress,
        draining_node: match step {
            Step::Drain { node } | Step::WaitDrain { node } | Step::Remove { node } => Some(node),
            _ => None,
        },
        conditions: merge(&previous, conditions, dc.metadata.generation),
    };
    patch_status(&ctx, &ns, &name, &status).await?;
    Ok(Action::requeue(if busy {
        ctx.busy_requeue
    } else {
        ctx.idle_requeue
    }))
}

async fn patch_status(
    ctx: &Context,
    ns: &str,
    name: &str,
    status: &DfsClusterStatus,
) -> Result<()> {
    let api: Api<DfsCluster> = Api::namespaced(ctx.client.clone(), ns);
    let patch = serde_json::json!({
        "apiVersion": DfsCluster::api_version(&()),
        "kind": DfsCluster::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn write_invalid(
    dc: &DfsCluster,
    ctx: &Context,
    ns: &str,
    reason: &str,
    msg: String,
) -> Result<()> {
    let mut status = dc.status.clone().unwrap_or_default();
    let previous = status.conditions.clone();
    status.observed_generation = dc.metadata.generation;
    status.conditions = merge(
        &previous,
        vec![cond(DEGRADED, true, reason, msg)],
        dc.metadata.generation,
    );
    patch_status(ctx, ns, &dc.name_any(), &status).await
}

/// Everything the conditions are computed from.
pub struct Observed<'a> {
    pub requested: i32,
    pub replication: u32,
    pub target: i32,
    pub ready: i32,
    pub members: i32,
    pub leader: Option<u64>,
    pub step: &'a Step,
    pub step_error: Option<&'a str>,
    pub rebalance: Option<&'a Result<Rebalance, AdminError>>,
    pub pod_name: String,
    pub selector: String,
    /// A pod template change being rolled out: (pods updated, pods).
    pub rollout: Option<(i32, i32)>,
}

/// The StatefulSet's update partition: pods with an ordinal at or above it take a new pod
/// template. Without a rollout, it stays at `target` so that a template change updates no
/// pod by itself. During a rollout (`outdated`: ordinals of pods still on the old
/// template), it moves down to the highest outdated ordinal — letting exactly one more pod
/// update — only when every pod is ready and the cluster is healthy (one layout version,
/// every partition at RF); otherwise it stays where it is.
pub fn rollout_partition(
    target: i32,
    current: Option<i32>,
    outdated: Option<&[i32]>,
    all_ready: bool,
    healthy: bool,
) -> i32 {
    match outdated {
        None | Some([]) => target,
        Some(old) => {
            let next = old.iter().copied().max().unwrap_or(0);
            let held = current.unwrap_or(target);
            if all_ready && healthy {
                next.min(held)
            } else {
                held
            }
        }
    }
}

pub fn conditions(o: &Observed) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    let quorum = i32::try_from(o.replication)
        .unwrap_or(i32::MAX)
        .min(o.target)
        .max(1);
    let available = match o.leader {
        Some(l) if o.ready >= quorum => cond(
            AVAILABLE,
            true,
            "ClusterReady",
            format!(
                "{}/{} nodes ready, {} members, leader is node {l}",
                o.ready, o.target, o.members
            ),
        ),
        Some(_) => cond(
            AVAILABLE,
            false,
            "TooFewNodesReady",
            format!(
                "only {}/{} nodes are ready, {quorum} are needed; see `kubectl describe pods -l {}`",
                o.ready, o.target, o.selector
            ),
        ),
        None if o.ready == 0 => cond(
            AVAILABLE,
            false,
            "NodesStarting",
            format!(
                "no node pod is ready yet (0/{}); see `kubectl describe pods -l {}`",
                o.target, o.selector
            ),
        ),
        None => cond(
            AVAILABLE,
            false,
            "NoLeader",
            format!(
                "{} pods are ready but the cluster has no Raft leader or cannot be reached; see `kubectl logs {}`",
                o.ready, o.pod_name
            ),
        ),
    };
    let progressing = match (o.step, o.step_error) {
        (
            Step::Refused {
                requested,
                replication,
            },
            _,
        ) => cond(
            PROGRESSING,
            false,
            "ScaleDownRefused",
            format!(
                "spec.replicas={requested} is below spec.replication={replication}: every piece of data needs {replication} nodes. \
                 Set spec.replicas to {replication} or more; the cluster keeps running {} nodes",
                o.target
            ),
        ),
        (Step::Drain { node } | Step::Remove { node }, Some(err)) => cond(
            PROGRESSING,
            false,
            "ScaleDownBlocked",
            format!("cannot take node {node} out of the cluster: {err}"),
        ),
        (Step::Drain { node }, None) | (Step::WaitDrain { node }, _) => cond(
            PROGRESSING,
            true,
            "Draining",
            format!(
                "moving the data of node {node} to the other nodes before removing it ({} -> {} nodes)",
                o.target, o.requested
            ),
        ),
        (Step::Remove { node }, None) => cond(
            PROGRESSING,
            true,
            "RemovingNode",
            format!("node {node} is drained and is being removed from the cluster"),
        ),
        (Step::Shrink { node }, _) => cond(
            PROGRESSING,
            true,
            "ScalingDown",
            format!("node {node} left the cluster; its pod is being deleted"),
        ),
        (Step::WaitForCluster { node }, _) => cond(
            PROGRESSING,
            true,
            "WaitingForCluster",
            format!("cannot reach the cluster to drain node {node}; waiting for a leader"),
        ),
        (Step::Steady, _) if o.rollout.is_some() => {
            let (updated, total) = o.rollout.unwrap_or((0, o.target));
            cond(
                PROGRESSING,
                true,
                "RollingUpdate",
                format!(
                    "updating the nodes to the new pod template one at a time, each once the \
                     cluster is healthy (every partition at RF): {updated}/{total} updated"
                ),
            )
        }
        (Step::Steady, _) if o.ready < o.target || o.members < o.target => cond(
            PROGRESSING,
            true,
            "ScalingUp",
            format!(
                "waiting for nodes to become ready and join: {}/{} ready, {} members",
                o.ready, o.target, o.members
            ),
        ),
        (Step::Steady, _) => cond(
            PROGRESSING,
            false,
            "Stable",
            format!("the cluster runs the requested {} nodes", o.target),
        ),
    };
    let under = match o.rebalance {
        Some(Ok(r)) => r.under_replicated,
        _ => 0,
    };
    let degraded = if o.leader.is_some() && o.ready < o.target && o.ready > 0 {
        cond(
            DEGRADED,
            true,
            "NodesNotReady",
            format!(
                "{} of {} nodes are not ready; see `kubectl describe pods -l {}`",
                o.target - o.ready,
                o.target,
                o.selector
            ),
        )
    } else if under > 0 {
        cond(
            DEGRADED,
            true,
            "UnderReplicated",
            format!(
                "{under} partitions have fewer than {} healthy copies; repair is running",
                o.replication
            ),
        )
    } else {
        cond(DEGRADED, false, "Healthy", "no known problem")
    };
    let rebalancing = match o.rebalance {
        Some(Ok(r)) if r.active => cond(
            REBALANCING,
            true,
            "MovingData",
            format!(
                "{}/{} partition replicas left to copy ({} bytes left, {} moved){}",
                r.partitions_left,
                r.partitions_total,
                r.bytes_left,
                r.bytes_moved,
                if r.eta_seconds > 0.0 {
                    format!(", about {:.0} s to go", r.eta_seconds)
                } else {
                    String::new()
                }
            ),
        ),
        Some(Ok(_)) => cond(REBALANCING, false, "Balanced", "every partition is at its owners"),
        Some(Err(AdminError::Unimplemented(_))) => unknown(
            REBALANCING,
            "RebalanceStatusUnsupported",
            "the ringfs nodes do not report rebalance progress (RebalanceStatus); upgrade the image",
        ),
        Some(Err(e)) => unknown(REBALANCING, "ClusterUnreachable", e.to_string()),
        None => unknown(REBALANCING, "NodesStarting", "no node is ready yet"),
    };
    vec![available, progressing, degraded, rebalancing]
}

/// Deleting a DfsCluster waits until no DfsVolume uses it, so those volumes' finalizers
/// can still delete their data from a running cluster.
async fn cleanup(dc: Arc<DfsCluster>, ctx: Arc<Context>) -> Result<Action> {
    let ns = dc
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = dc.name_any();
    let vols: Api<DfsVolume> = Api::namespaced(ctx.client.clone(), &ns);
    let users: Vec<String> = vols
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|v| v.spec.cluster == name)
        .map(|v| v.name_any())
        .collect();
    if users.is_empty() {
        return Ok(Action::await_change());
    }
    let msg = format!(
        "DfsCluster {name} is still used by DfsVolumes {}; it is deleted after them",
        users.join(", ")
    );
    ctx.event(&*dc, true, "DeletionWaiting", "Delete", msg.clone())
        .await;
    Err(Error::Waiting(msg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::MemberInfo;

    fn state(members: &[(u64, &str)]) -> ClusterState {
        ClusterState {
            leader: Some(1),
            layout_version: 3,
            members: members
                .iter()
                .map(|(id, s)| MemberInfo {
                    id: *id,
                    addr: format!("n{id}"),
                    state: s.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn scale_up_and_steady_apply_the_request() {
        assert_eq!(plan(3, 3, None, None), (3, Step::Steady));
        assert_eq!(plan(4, 3, Some(3), None), (4, Step::Steady));
    }

    #[test]
    fn below_replication_is_refused_and_keeps_the_size() {
        assert_eq!(
            plan(1, 3, Some(3), None),
            (
                3,
                Step::Refused {
                    requested: 1,
                    replication: 3
                }
            )
        );
    }

    #[test]
    fn scale_down_drains_waits_removes_then_shrinks() {
        let all = [(1, "active"), (2, "active"), (3, "active"), (4, "active")];
        assert_eq!(
            plan(3, 3, Some(4), None),
            (4, Step::WaitForCluster { node: 4 })
        );
        assert_eq!(
            plan(3, 3, Some(4), Some(&state(&all))),
            (4, Step::Drain { node: 4 })
        );
        let draining = [(1, "active"), (2, "active"), (3, "active"), (4, "draining")];
        assert_eq!(
            plan(3, 3, Some(4), Some(&state(&draining))),
            (4, Step::WaitDrain { node: 4 })
        );
        let drained = [(1, "active"), (2, "active"), (3, "active"), (4, "drained")];
        assert_eq!(
            plan(3, 3, Some(4), Some(&state(&drained))),
            (4, Step::Remove { node: 4 })
        );
        let removed = [(1, "active"), (2, "active"), (3, "active")];
        assert_eq!(
            plan(3, 3, Some(4), Some(&state(&removed))),
            (3, Step::Shrink { node: 4 })
        );
    }

    #[test]
    fn rolling_update_moves_one_pod_at_a_time_and_only_when_healthy() {
        // No rollout: hold every pod.
        assert_eq!(rollout_partition(3, Some(0), None, true, true), 3);
        assert_eq!(rollout_partition(3, Some(2), Some(&[]), true, true), 3);
        // Template changed, all three pods old: the highest ordinal goes first.
        assert_eq!(
            rollout_partition(3, Some(3), Some(&[0, 1, 2]), true, true),
            2
        );
        // Pod 2 updating (not ready) or data moving: hold.
        assert_eq!(rollout_partition(3, Some(2), Some(&[0, 1]), false, true), 2);
        assert_eq!(rollout_partition(3, Some(2), Some(&[0, 1]), true, false), 2);
        // Healthy again: next one.
        assert_eq!(rollout_partition(3, Some(2), Some(&[0, 1]), true, true), 1);
        assert_eq!(rollout_partition(3, Some(1), Some(&[0]), true, true), 0);
        // Never moves up during a rollout (a pod already allowed stays allowed).
        assert_eq!(rollout_partition(3, Some(0), Some(&[2]), true, true), 0);
    }

    #[test]
    fn refused_scale_down_condition_says_what_to_do() {
        let step = Step::Refused {
            requested: 1,
            replication: 3,
        };
        let c = conditions(&Observed {
            requested: 1,
            replication: 3,
            target: 3,
            ready: 3,
            members: 3,
            leader: Some(1),
            step: &step,
            step_error: None,
            rebalance: None,
            pod_name: "c-0".into(),
            selector: "a=b".into(),
            rollout: None,
        });
        let p = c.iter().find(|c| c.type_ == PROGRESSING).unwrap();
        assert_eq!(p.reason, "ScaleDownRefused");
        assert!(
            p.message.contains("Set spec.replicas to 3 or more"),
            "{}",
            p.message
        );
        let a = c.iter().find(|c| c.type_ == AVAILABLE).unwrap();
        assert_eq!(a.status, "True");
    }
}
