//! The DfsVolume reconciler: creates, resizes and (on delete) removes the volume in its
//! cluster, and reports phase, capacity and usage.

use crate::admin::AdminError;
use crate::conditions::{cond, merge};
use crate::context::{Context, MANAGER};
use crate::error::{Error, Result};
use crate::resources::Names;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::{Api, Resource, ResourceExt};
use ringfs_api::conditions::{AVAILABLE, READY};
use ringfs_api::{parse_quantity, DfsCluster, DfsVolume, DfsVolumeStatus, VolumePhase};
use std::sync::Arc;
use tracing::instrument;

pub const FINALIZER: &str = "ringfs.io/volume";
pub const CONTROLLER: &str = "dfsvolume";

pub async fn reconcile(dv: Arc<DfsVolume>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start(CONTROLLER);
    let ns = dv
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<DfsVolume> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, dv, |event| async {
        match event {
            Finalizer::Apply(dv) => apply(dv, ctx.clone()).await,
            Finalizer::Cleanup(dv) => cleanup(dv, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

struct Outcome {
    phase: VolumePhase,
    ready: bool,
    reason: &'static str,
    message: String,
    info: Option<crate::admin::VolumeInfo>,
}

impl Outcome {
    fn not_ready(phase: VolumePhase, reason: &'static str, message: String) -> Outcome {
        Outcome {
            phase,
            ready: false,
            reason,
            message,
            info: None,
        }
    }
}

#[instrument(skip_all, fields(volume = %dv.name_any(), ns = dv.namespace().unwrap_or_default()), err)]
async fn apply(dv: Arc<DfsVolume>, ctx: Arc<Context>) -> Result<Action> {
    let ns = dv
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let outcome = ensure(&dv, &ctx, &ns).await?;
    let previous = dv
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let old_capacity = dv.status.as_ref().and_then(|s| s.capacity_bytes);
    let status = DfsVolumeStatus {
        observed_generation: dv.metadata.generation,
        phase: Some(outcome.phase),
        volume_id: outcome.info.as_ref().map(|i| i.id),
        capacity_bytes: outcome.info.as_ref().map(|i| i.capacity_bytes),
        used_bytes: outcome.info.as_ref().map(|i| i.used_bytes),
        conditions: merge(
            &previous,
            vec![cond(
                READY,
                outcome.ready,
                outcome.reason,
                outcome.message.clone(),
            )],
            dv.metadata.generation,
        ),
    };
    if let Some(info) = &outcome.info {
        if old_capacity.is_some_and(|c| c != info.capacity_bytes) {
            ctx.event(
                &*dv,
                false,
                "Resized",
                "Resize",
                format!("capacity is now {} bytes", info.capacity_bytes),
            )
            .await;
        } else if old_capacity.is_none() {
            ctx.event(&*dv, false, "Created", "Create", outcome.message.clone())
                .await;
        }
    } else if outcome.phase == VolumePhase::Failed {
        ctx.event(
            &*dv,
            true,
            outcome.reason,
            "Create",
            outcome.message.clone(),
        )
        .await;
    }
    let api: Api<DfsVolume> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({
        "apiVersion": DfsVolume::api_version(&()),
        "kind": DfsVolume::kind(&()),
        "status": status,
    });
    api.patch_status(
        &dv.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(Action::requeue(if outcome.ready {
        ctx.idle_requeue
    } else {
        ctx.busy_requeue
    }))
}

/// Brings the volume in the cluster in line with the spec. Errors the user must fix become
/// a Failed phase with a message; transient ones a Pending phase (retried).
async fn ensure(dv: &DfsVolume, ctx: &Context, ns: &str) -> Result<Outcome> {
    let Some(vol_name) = dv.volume_name().map(str::to_string) else {
        return Err(Error::MissingField("metadata.name"));
    };
    if let Err(e) = ringfs_core_name_check(&vol_name) {
        return Ok(Outcome::not_ready(VolumePhase::Failed, "InvalidName", e));
    }
    let capacity = match parse_quantity(&dv.spec.capacity) {
        Ok(c) => c,
        Err(e) => {
            return Ok(Outcome::not_ready(
                VolumePhase::Failed,
                "InvalidCapacity",
                format!("spec.capacity: {e}"),
            ))
        }
    };
    let clusters: Api<DfsCluster> = Api::namespaced(ctx.client.clone(), ns);
    let Some(dc) = clusters.get_opt(&dv.spec.cluster).await? else {
        return Ok(Outcome::not_ready(
            VolumePhase::Pending,
            "ClusterNotFound",
            format!(
                "DfsCluster {:?} does not exist in namespace {ns}; create it or fix spec.cluster",
                dv.spec.cluster
            ),
        ));
    };
    let cluster_ready = dc
        .status
        .as_ref()
        .is_some_and(|s| crate::conditions::is_true(&s.conditions, AVAILABLE));
    if !cluster_ready {
        return Ok(Outcome::not_ready(
            VolumePhase::Pending,
            "ClusterNotAvailable",
            format!(
                "waiting for DfsCluster {} to become Available",
                dv.spec.cluster
            ),
        ));
    }
    if dv.spec.replication > dc.spec.replication {
        return Ok(Outcome::not_ready(
            VolumePhase::Failed,
            "ReplicationTooHigh",
            format!(
                "spec.replication={} exceeds the replication {} of DfsCluster {}; lower it",
                dv.spec.replication, dc.spec.replication, dv.spec.cluster
            ),
        ));
    }
    let seeds = vec![Names::new(&dv.spec.cluster, ns).client_addr()];
    let seeds = match crate::tls::target(ctx, &dc, seeds).await? {
        Ok(t) => t,
        Err(msg) => {
            return Ok(Outcome::not_ready(
                VolumePhase::Pending,
                "CertificatesPending",
                msg,
            ))
        }
    };
    let existing = match ctx.admin.volume(seeds.clone(), vol_name.clone()).await {
        Ok(v) => Some(v),
        Err(AdminError::NotFound) => None,
        Err(e) => return Ok(transient(e)),
    };
    let result = match existing {
        None => {
            let source = match &dv.spec.source {
                None => None,
                Some(ringfs_api::DfsVolumeSource {
                    snapshot: Some(s),
                    volume: None,
                }) => Some(crate::admin::VolumeSource::Snapshot(s.clone())),
                Some(ringfs_api::DfsVolumeSource {
                    snapshot: None,
                    volume: Some(v),
                }) => Some(crate::admin::VolumeSource::Volume(v.clone())),
                Some(_) => {
                    return Ok(Outcome::not_ready(
                        VolumePhase::Failed,
                        "InvalidSource",
                        "spec.source needs exactly one of snapshot or volume".into(),
                    ))
                }
            };
            ctx.admin
                .create_volume(
                    seeds,
                    vol_name.clone(),
                    capacity,
                    dv.spec.replication,
                    source,
                )
                .await
        }
        Some(v) if v.replication != dv.spec.replication => {
            return Ok(Outcome::not_ready(
                VolumePhase::Failed,
                "ReplicationMismatch",
                format!(
                    "volume {vol_name} already exists in the cluster with replication {}, not {}; \
                     use another spec.volumeName",
                    v.replication, dv.spec.replication
                ),
            ))
        }
        Some(v) if v.capacity_bytes != capacity => {
            ctx.admin
                .resize_volume(seeds, vol_name.clone(), capacity)
                .await
        }
        Some(v) => Ok(v),
    };
    Ok(match result {
        Ok(info) => Outcome {
            phase: VolumePhase::Bound,
            ready: true,
            reason: "VolumeReady",
            message: format!(
                "volume {vol_name} (id {}) holds {} of {} bytes",
                info.id, info.used_bytes, info.capacity_bytes
            ),
            info: Some(info),
        },
        Err(AdminError::Refused(msg)) => Outcome::not_ready(
            VolumePhase::Failed,
            "Refused",
            format!("the cluster refused the volume: {msg}"),
        ),
        Err(e) => transient(e),
    })
}

fn transient(e: AdminError) -> Outcome {
    Outcome::not_ready(
        VolumePhase::Pending,
        "ClusterUnreachable",
        format!("cannot reach the cluster, retrying: {e}"),
    )
}

/// The same rule the cluster applies, checked first so the message names the field.
fn ringfs_core_name_check(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "volume name {name:?} is not valid in ringfs (lowercase letters, digits and '-', at most 63); set spec.volumeName"
        ))
    }
}

#[instrument(skip_all, fields(volume = %dv.name_any()), err)]
async fn cleanup(dv: Arc<DfsVolume>, ctx: Arc<Context>) -> Result<Action> {
    let ns = dv
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let Some(vol_name) = dv.volume_name().map(str::to_string) else {
        return Ok(Action::await_change());
    };
    let clusters: Api<DfsCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(dc) = clusters.get_opt(&dv.spec.cluster).await? else {
        tracing::warn!(cluster = %dv.spec.cluster, "cluster is gone; nothing to delete");
        return Ok(Action::await_change());
    };
    // Deleted even when the status never recorded a volume id: a create may have
    // succeeded without its status being written.
    let seeds = vec![Names::new(&dv.spec.cluster, &ns).client_addr()];
    let seeds = crate::tls::target(&ctx, &dc, seeds)
        .await?
        .map_err(Error::Waiting)?;
    let deleted = ctx.admin.delete_volume(seeds, vol_name.clone()).await?;
    ctx.event(
        &*dv,
        false,
        "Deleted",
        "Delete",
        if deleted {
            format!("volume {vol_name} and its data were deleted from the cluster")
        } else {
            format!("volume {vol_name} was not in the cluster")
        },
    )
    .await;
    Ok(Action::await_change())
}
