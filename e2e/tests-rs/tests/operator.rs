//! The operator on a real cluster: helm install, schema validation by the API server, a
//! 3-node DfsCluster becoming Available, DfsVolume create/resize/delete, a refused
//! scale-down below the replication factor, and scale 3 -> 4 -> 3.
//!
//! The e2e cluster has no dynamic volume provisioner, so each test pre-creates hostPath
//! PersistentVolumes of its own StorageClass name for the node claims.

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::Api;
use ringfs_api::{DfsCluster, DfsVolume};
use ringfs_e2e::{
    apply_json, cluster_json, condition, delete_pvs, dyn_api, helm_install, in_namespace, make_pvs,
    poll, random_suffix, run_pod, run_pod_with, sha256_in, wait_cluster, TestNamespace,
};
use serde_json::json;

/// The client and admin identities the operator issues for DfsCluster `c` (mutual TLS is
/// the default).
const CLIENT: &str = "c-client-tls";
const ADMIN: &str = "c-admin-tls";

/// Reads `data:/f` back through the cluster's client Service and returns its sha256.
async fn read_back(ns: &TestNamespace, pod: &str) -> Result<String> {
    let logs = run_pod_with(
        ns,
        pod,
        "ringfs --cluster c:7420 get data:/f /tmp/g && sha256sum /tmp/g",
        Some(CLIENT),
    )
    .await?;
    sha256_in(&logs).with_context(|| format!("no checksum in: {logs}"))
}

/// Invalid specs are refused by the API server itself, with messages naming the field.
#[tokio::test]
#[ignore = "needs a Kubernetes cluster: run through e2e/run.sh"]
async fn operator_invalid_specs_are_rejected() -> Result<()> {
    in_namespace("ringfs-e2e-opval", |ns| async move {
        helm_install(&ns, &[]).await?;
        let (api, _) = dyn_api::<DfsCluster>(&ns);
        let err = apply_json(&api, &cluster_json("bad-replicas", 0, 1, "x"))
            .await
            .expect_err("replicas 0 must be rejected");
        ensure!(err.contains("spec.replicas"), "unclear message: {err}");
        let err = apply_json(&api, &cluster_json("bad-rf", 2, 3, "x"))
            .await
            .expect_err("replication > replicas must be rejected");
        ensure!(
            err.contains("must not exceed spec.replicas"),
            "unclear message: {err}"
        );
        let mut unknown = cluster_json("bad-field", 3, 3, "x");
        unknown["spec"]["bogus"] = json!(1);
        let err = apply_json(&api, &unknown)
            .await
            .expect_err("unknown fields must be rejected");
        ensure!(err.contains("bogus"), "unclear message: {err}");
        // Partitions are fixed at creation. The object stays without pods (no PVs).
        apply_json(&api, &cluster_json("fixed", 3, 3, "none"))
            .await
            .map_err(anyhow::Error::msg)?;
        let mut changed = cluster_json("fixed", 3, 3, "none");
        changed["spec"]["partitions"] = json!(128);
        let err = apply_json(&api, &changed)
            .await
            .expect_err("changing partitions must be rejected");
        ensure!(
            err.contains("spec.partitions is fixed"),
            "unclear message: {err}"
        );
        // Nodes with and without TLS cannot talk: TLS is fixed at creation too.
        let mut plain = cluster_json("fixed", 3, 3, "none");
        plain["spec"]["tls"] = json!({"enabled": false});
        let err = apply_json(&api, &plain)
            .await
            .expect_err("turning TLS off must be rejected");
        ensure!(
            err.contains("spec.tls.enabled is fixed"),
            "unclear message: {err}"
        );
        let mut days = cluster_json("bad-days", 3, 3, "none");
        days["spec"]["tls"] = json!({"certificateDays": 0});
        let err = apply_json(&api, &days)
            .await
            .expect_err("a zero certificate lifetime must be rejected");
        ensure!(
            err.contains("spec.tls.certificateDays"),
            "unclear message: {err}"
        );
        let (vols, _) = dyn_api::<DfsVolume>(&ns);
        let err = apply_json(
            &vols,
            &json!({"apiVersion": "ringfs.io/v1alpha1", "kind": "DfsVolume",
                    "metadata": {"name": "v"},
                    "spec": {"cluster": "fixed", "capacity": "ten gigs"}}),
        )
        .await
        .expect_err("bad capacity must be rejected");
        ensure!(err.contains("spec.capacity"), "unclear message: {err}");
        let err = apply_json(
            &vols,
            &json!({"apiVersion": "ringfs.io/v1alpha1", "kind": "DfsVolume",
                    "metadata": {"name": "v"},
                    "spec": {"cluster": "fixed", "capacity": "1Gi",
                             "source": {"snapshot": "s", "volume": "w"}}}),
        )
        .await
        .expect_err("two sources must be rejected");
        ensure!(
            err.contains("exactly one of snapshot"),
            "unclear message: {err}"
        );
        Ok(())
    })
    .await
}

/// A 3-node cluster becomes Available; volumes are created, resized and deleted; a
/// scale-down below RF is refused with a condition; 3 -> 4 -> 3 keeps the volume.
#[tokio::test]
#[ignore = "needs a Kubernetes cluster: run through e2e/run.sh"]
async fn operator_cluster_lifecycle() -> Result<()> {
    let client = ringfs_e2e::client().await?;
    let class = format!("ringfs-e2e-{}", random_suffix());
    let pvs = make_pvs(&client, &class, 4).await?;
    let result = in_namespace("ringfs-e2e-op", |ns| {
        let class = class.clone();
        async move {
            helm_install(&ns, &[]).await?;
            let (dyn_clusters, _) = dyn_api::<DfsCluster>(&ns);
            apply_json(&dyn_clusters, &cluster_json("c", 3, 3, &class))
                .await
                .map_err(anyhow::Error::msg)?;
            let clusters: Api<DfsCluster> = ns.api();
            let dc = wait_cluster(
                &clusters,
                "c",
                "DfsCluster c Available with 3 members",
                |dc| {
                    condition(dc, "Available").is_some_and(|c| c.0 == "True")
                        && dc.status.as_ref().is_some_and(|s| s.members == 3)
                },
            )
            .await
            .with_context(|| "cluster never became Available")?;
            eprintln!("DfsCluster c available: {:?}", dc.status);

            // Volume lifecycle.
            let (vols, _) = dyn_api::<DfsVolume>(&ns);
            let vol = |cap: &str| {
                json!({"apiVersion": "ringfs.io/v1alpha1", "kind": "DfsVolume",
                       "metadata": {"name": "data"},
                       "spec": {"cluster": "c", "capacity": cap, "replication": 3}})
            };
            apply_json(&vols, &vol("64Mi"))
                .await
                .map_err(anyhow::Error::msg)?;
            let typed: Api<DfsVolume> = ns.api();
            poll("DfsVolume data Bound at 64Mi", || async {
                let v = typed.get("data").await?;
                Ok(v.status
                    .as_ref()
                    .is_some_and(|s| s.capacity_bytes == Some(64 << 20))
                    .then_some(()))
            })
            .await?;
            apply_json(&vols, &vol("128Mi"))
                .await
                .map_err(anyhow::Error::msg)?;
            poll("DfsVolume data resized to 128Mi", || async {
                let v = typed.get("data").await?;
                Ok(v.status
                    .as_ref()
                    .is_some_and(|s| s.capacity_bytes == Some(128 << 20))
                    .then_some(()))
            })
            .await?;

            // Mutual TLS: the operator issued the CA and three identities; a client
            // without a certificate is refused, and a client certificate may not
            // administer the cluster.
            let secrets: Api<k8s_openapi::api::core::v1::Secret> = ns.api();
            for s in ["c-ca", "c-node-tls", CLIENT, ADMIN] {
                ensure!(
                    secrets.get_opt(s).await?.is_some(),
                    "the operator did not issue Secret {s}"
                );
            }
            let logs = run_pod(
                &ns,
                "no-cert",
                "if ringfs --cluster c:7420 volume ls; then echo UNEXPECTED; exit 1; fi",
            )
            .await?;
            eprintln!("without a certificate: {logs}");
            let logs = run_pod_with(
                &ns,
                "client-cert-admin-op",
                "if ringfs --cluster c:7420 volume create nope --size 1MiB; \
                 then echo UNEXPECTED; exit 1; fi",
                Some(CLIENT),
            )
            .await?;
            ensure!(
                logs.contains("admin"),
                "a client certificate must be refused admin calls with a clear message: {logs}"
            );

            // Data written before any scaling, checked after each step.
            let logs = run_pod_with(
                &ns,
                "writer",
                "head -c 6000000 /dev/urandom > /tmp/f && sha256sum /tmp/f && \
                 ringfs --cluster c:7420 put /tmp/f data:/f",
                Some(CLIENT),
            )
            .await?;
            let want = sha256_in(&logs).with_context(|| format!("no checksum in: {logs}"))?;
            ensure!(
                read_back(&ns, "reader-0").await? == want,
                "data differs after write"
            );

            // A DfsVolume created from a snapshot of it holds the same file.
            run_pod_with(
                &ns,
                "snap",
                "ringfs --cluster c:7420 snapshot create data snap1",
                Some(ADMIN),
            )
            .await?;
            apply_json(
                &vols,
                &json!({"apiVersion": "ringfs.io/v1alpha1", "kind": "DfsVolume",
                        "metadata": {"name": "copy"},
                        "spec": {"cluster": "c", "capacity": "128Mi", "replication": 3,
                                 "source": {"snapshot": "snap1"}}}),
            )
            .await
            .map_err(anyhow::Error::msg)?;
            poll("DfsVolume copy Bound", || async {
                let v = typed.get("copy").await?;
                Ok(v.status
                    .as_ref()
                    .is_some_and(|s| s.phase == Some(ringfs_api::VolumePhase::Bound))
                    .then_some(()))
            })
            .await?;
            let logs = run_pod_with(
                &ns,
                "read-copy",
                "ringfs --cluster c:7420 get copy:/f /tmp/g && sha256sum /tmp/g",
                Some(CLIENT),
            )
            .await?;
            ensure!(
                sha256_in(&logs).as_deref() == Some(want.as_str()),
                "the volume cloned from a snapshot differs: {logs}"
            );
            let err = apply_json(
                &vols,
                &json!({"apiVersion": "ringfs.io/v1alpha1", "kind": "DfsVolume",
                        "metadata": {"name": "copy"},
                        "spec": {"cluster": "c", "capacity": "128Mi", "replication": 3,
                                 "source": {"volume": "data"}}}),
            )
            .await
            .expect_err("changing spec.source must be rejected");
            ensure!(
                err.contains("spec.source cannot be changed"),
                "unclear message: {err}"
            );
            typed.delete("copy", &DeleteParams::default()).await?;

            // Below RF: refused, the StatefulSet keeps 3 pods.
            clusters
                .patch(
                    "c",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"replicas": 1}})),
                )
                .await?;
            let dc = wait_cluster(&clusters, "c", "scale-down to 1 refused", |dc| {
                condition(dc, "Progressing").is_some_and(|c| c.1 == "ScaleDownRefused")
            })
            .await?;
            let (_, _, msg) = condition(&dc, "Progressing").unwrap_or_default();
            ensure!(
                msg.contains("below spec.replication=3"),
                "unclear refusal: {msg}"
            );
            ensure!(
                dc.status.as_ref().is_some_and(|s| s.members == 3),
                "members changed"
            );

            // 3 -> 4 through the scale subresource (what `kubectl scale` uses): the new
            // node joins, the layout changes and the data moves (Rebalancing), then
            // Available again.
            let before = clusters.get("c").await?;
            let layout_before = before.status.as_ref().and_then(|s| s.layout_version);
            ensure!(
                condition(&before, "Available").is_some_and(|c| c.0 == "True"),
                "not Available before scaling: {:?}",
                before.status
            );
            clusters
                .patch_scale(
                    "c",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"replicas": 4}})),
                )
                .await?;
            let saw = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let dc = poll("4 members, rebalanced and Available", || {
                let seen = saw.clone();
                let clusters = clusters.clone();
                async move {
                    let dc = clusters.get("c").await?;
                    if condition(&dc, "Rebalancing").is_some_and(|c| c.0 == "True")
                        || dc
                            .status
                            .as_ref()
                            .and_then(|s| s.rebalance.as_ref())
                            .is_some_and(|r| r.active)
                    {
                        seen.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    let done = dc.status.as_ref().is_some_and(|s| s.members == 4)
                        && condition(&dc, "Available").is_some_and(|c| c.0 == "True")
                        && condition(&dc, "Rebalancing").is_some_and(|c| c.0 == "False");
                    Ok(done.then_some(dc))
                }
            })
            .await?;
            let layout_after = dc.status.as_ref().and_then(|s| s.layout_version);
            ensure!(
                layout_after > layout_before,
                "the layout did not change on scale-up: {layout_before:?} -> {layout_after:?}"
            );
            eprintln!(
                "scaled to 4: layout {layout_before:?} -> {layout_after:?}, Rebalancing \
                 observed while moving: {}",
                saw.load(std::sync::atomic::Ordering::Relaxed)
            );
            ensure!(
                read_back(&ns, "reader-1").await? == want,
                "data differs after 3 -> 4"
            );

            // 4 -> 3: the highest ordinal is drained, then removed and the StatefulSet
            // shrunk. The operator pod is deleted mid-way: its successor finishes.
            clusters
                .patch_scale(
                    "c",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"replicas": 3}})),
                )
                .await?;
            let operators: Api<Pod> = ns.api();
            let lp = ListParams::default().labels("app.kubernetes.io/component=operator");
            let old: Vec<String> = operators
                .list(&lp)
                .await?
                .items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect();
            ensure!(!old.is_empty(), "no operator pod found");
            for p in &old {
                operators.delete(p, &DeleteParams::default()).await?;
            }
            eprintln!("deleted operator pod(s) {old:?} during the scale-down");
            wait_cluster(&clusters, "c", "back to 3 members and 3 pods", |dc| {
                dc.status
                    .as_ref()
                    .is_some_and(|s| s.members == 3 && s.replicas == 3)
                    && condition(dc, "Available").is_some_and(|c| c.0 == "True")
            })
            .await?;
            let successors = operators.list(&lp).await?.items;
            ensure!(
                successors.iter().any(|p| p
                    .metadata
                    .name
                    .as_ref()
                    .is_some_and(|n| !old.contains(n))),
                "no new operator pod finished the scale-down"
            );
            ensure!(
                read_back(&ns, "reader-2").await? == want,
                "data differs after 4 -> 3"
            );

            // A pod template change (here: resources) rolls out one node at a time.
            let sets: Api<StatefulSet> = ns.api();
            let rev_before = sets
                .get("c")
                .await?
                .status
                .and_then(|s| s.update_revision)
                .context("StatefulSet c has no update revision")?;
            clusters
                .patch(
                    "c",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"resources": {"requests": {"cpu": "10m"}}}})),
                )
                .await?;
            let nodes: Api<Pod> = ns.api();
            let selector = sets
                .get("c")
                .await?
                .spec
                .and_then(|s| s.selector.match_labels)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .context("StatefulSet c has no selector")?;
            let max_down = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let saw_rolling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            poll(
                "rolling update done: 3 pods on the new template, Available",
                || {
                    let (sets, nodes, clusters) = (sets.clone(), nodes.clone(), clusters.clone());
                    let (max_down, saw_rolling, selector, rev_before) = (
                        max_down.clone(),
                        saw_rolling.clone(),
                        selector.clone(),
                        rev_before.clone(),
                    );
                    async move {
                        let pods = nodes.list(&ListParams::default().labels(&selector)).await?;
                        let down = pods
                            .items
                            .iter()
                            .filter(|p| !ringfs_e2e::pod_ready(Some(p)))
                            .count();
                        max_down.fetch_max(down, std::sync::atomic::Ordering::Relaxed);
                        let dc = clusters.get("c").await?;
                        if condition(&dc, "Progressing").is_some_and(|c| c.1 == "RollingUpdate") {
                            saw_rolling.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        let st = sets
                            .get("c")
                            .await?
                            .status
                            .context("no StatefulSet status")?;
                        let new_rev = st.update_revision.clone().filter(|r| *r != rev_before);
                        let all_new = new_rev.is_some()
                            && pods.items.len() == 3
                            && pods.items.iter().all(|p| {
                                p.metadata
                                    .labels
                                    .as_ref()
                                    .and_then(|l| l.get("controller-revision-hash"))
                                    == new_rev.as_ref()
                            });
                        let done = all_new
                            && st.current_revision == st.update_revision
                            && st.updated_replicas == Some(3)
                            && st.ready_replicas == Some(3)
                            && condition(&dc, "Available").is_some_and(|c| c.0 == "True");
                        Ok(done.then_some(()))
                    }
                },
            )
            .await?;
            let max_down = max_down.load(std::sync::atomic::Ordering::Relaxed);
            eprintln!(
                "rolling update: at most {max_down} node pod(s) not ready at a time; \
                 RollingUpdate condition seen: {}",
                saw_rolling.load(std::sync::atomic::Ordering::Relaxed)
            );
            ensure!(max_down <= 1, "{max_down} node pods were down at once");
            ensure!(
                max_down == 1,
                "no node pod was ever seen restarting: the rollout was not observed"
            );
            ensure!(
                read_back(&ns, "reader-3").await? == want,
                "data differs after the rolling update"
            );
            let v = typed.get("data").await?;
            ensure!(
                v.status.as_ref().and_then(|s| s.capacity_bytes) == Some(128 << 20),
                "volume changed across scaling: {:?}",
                v.status
            );

            // Delete the volume: the finalizer removes it from the cluster.
            typed.delete("data", &DeleteParams::default()).await?;
            poll("DfsVolume data deleted", || async {
                Ok(typed.get_opt("data").await?.is_none().then_some(()))
            })
            .await?;
            Ok(())
        }
    })
    .await;
    delete_pvs(&client, &pvs).await;
    result
}
