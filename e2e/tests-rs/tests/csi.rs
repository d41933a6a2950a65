//! The CSI driver on a real cluster: `helm install` with the CSI driver on, a 3-node
//! DfsCluster, then PVCs used by pods through the kubelet: a ReadWriteMany volume shared
//! by two pods, a ReadWriteOnce volume expanded online (seen by `df` in the pod), a
//! snapshot restored into a new PVC with identical content, the node plugin pod deleted
//! while an app writes (the app keeps its mount, no write lost), and PVCs deleted (their
//! ringfs volumes gone).
//!
//! The node plugin registers with the kubelet itself (no node-driver-registrar image can
//! be built here), and the CSI sidecars are the images e2e/build.sh --sidecars builds.

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::CSIStorageCapacity;
use kube::api::{DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::Api;
use ringfs_api::{DfsCluster, DfsVolume, VolumePhase};
use ringfs_e2e::{
    apply_json, busybox_image, cluster_json, condition, delete_pvs, dyn_api, helm_binary,
    helm_install, in_namespace, make_pvs, pod_phase, pod_ready, poll, random_suffix, ringfs_image,
    run_pod_with, version, wait_cluster, TestNamespace,
};
use serde_json::{json, Value};

fn sidecar(bin: &str, version_key: &str) -> Result<String> {
    let prefix = version("CSI_IMAGE_PREFIX").context("CSI_IMAGE_PREFIX in versions.env")?;
    let v = version(version_key).with_context(|| format!("{version_key} in versions.env"))?;
    Ok(format!("{prefix}/{bin}:{v}"))
}

/// Marks the claims and pods this test creates (the cluster's own claims and the
/// release's pods are left alone by the cleanup).
const TEST_LABEL: &str = "ringfs-e2e/test";

fn pvc(name: &str, class: &str, size: &str, mode: &str, source: Option<Value>) -> Value {
    let mut v = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "labels": {TEST_LABEL: "true"}},
        "spec": {
            "storageClassName": class,
            "accessModes": [mode],
            "resources": {"requests": {"storage": size}},
        }
    });
    if let Some(s) = source {
        v["spec"]["dataSource"] = s;
    }
    v
}

/// A busybox pod running `script` with PVC `claim` at /data.
fn app_pod(name: &str, claim: &str, script: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {TEST_LABEL: "true"}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "app", "image": busybox_image(), "imagePullPolicy": "IfNotPresent",
                "command": ["/bin/sh", "-c", script],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
        }
    })
}

async fn create<K>(api: &Api<K>, obj: Value) -> Result<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    let o: K = serde_json::from_value(obj)?;
    api.create(&PostParams::default(), &o)
        .await
        .with_context(|| format!("creating {:?}", o.meta().name))
}

async fn logs(pods: &Api<Pod>, name: &str) -> String {
    pods.logs(name, &LogParams::default())
        .await
        .unwrap_or_default()
}

/// Waits for pod `name` to succeed and returns its logs; a failed pod fails the test.
async fn succeeded(pods: &Api<Pod>, name: &str) -> Result<String> {
    let phase = poll(&format!("pod {name} finished"), || async {
        let p = pods.get(name).await?;
        Ok(match pod_phase(Some(&p)) {
            Some(ph @ ("Succeeded" | "Failed")) => Some(ph.to_string()),
            _ => None,
        })
    })
    .await?;
    let out = logs(pods, name).await;
    ensure!(phase == "Succeeded", "pod {name} failed: {out}");
    Ok(out)
}

async fn running(pods: &Api<Pod>, name: &str) -> Result<()> {
    poll(&format!("pod {name} running"), || async {
        let p = pods.get(name).await?;
        if matches!(pod_phase(Some(&p)), Some("Failed" | "Succeeded")) {
            bail!("pod {name} ended early: {}", logs(pods, name).await);
        }
        Ok(pod_ready(Some(&p)).then_some(()))
    })
    .await
}

/// The last number after `key=` in the pod's logs.
async fn last_count(pods: &Api<Pod>, name: &str, key: &str) -> Option<u64> {
    let l = logs(pods, name).await;
    l.lines().rev().find_map(|line| {
        line.strip_prefix(key)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

async fn bound(claims: &Api<PersistentVolumeClaim>, name: &str) -> Result<String> {
    poll(&format!("PVC {name} bound"), || async {
        let c = claims.get(name).await?;
        let phase = c.status.as_ref().and_then(|s| s.phase.clone());
        Ok(match phase.as_deref() {
            Some("Bound") => c.spec.and_then(|s| s.volume_name),
            _ => None,
        })
    })
    .await
}

/// The ringfs volume behind PersistentVolume `pv`.
async fn volume_handle(pvs: &Api<PersistentVolume>, pv: &str) -> Result<String> {
    pvs.get(pv)
        .await?
        .spec
        .and_then(|s| s.csi)
        .map(|c| c.volume_handle)
        .with_context(|| format!("PV {pv} is not a CSI volume"))
}

/// The volume names `ringfs volume ls` prints, via a pod of the ringfs image.
async fn cluster_volumes(ns: &TestNamespace, pod: &str) -> Result<String> {
    // The DfsCluster runs mutual TLS: present the client certificate the operator issued.
    run_pod_with(
        ns,
        pod,
        "ringfs --cluster c:7420 volume ls",
        Some("c-client-tls"),
    )
    .await
}

const WRITER: &str = r#"
i=0
while [ ! -f /data/stop ]; do
  echo "$i" >> /data/seq || { echo "write $i failed"; exit 1; }
  i=$((i+1))
  [ $((i % 10)) = 0 ] && echo "wrote=$i"
  sleep 0.05 2>/dev/null || true
done
n=$(wc -l < /data/seq)
[ "$n" -eq "$i" ] || { echo "file has $n lines, $i writes succeeded"; exit 1; }
awk 'NR-1 != $1 { print "line " NR " holds " $1; bad=1 } END { exit bad }' /data/seq || exit 1
echo "writes=$i all intact"
"#;

async fn body(ns: &TestNamespace, class: &str, sc: &str, vsc: &str) -> Result<()> {
    let clusters: Api<DfsCluster> = ns.api();
    let (dyn_clusters, _) = dyn_api::<DfsCluster>(ns);
    apply_json(&dyn_clusters, &cluster_json("c", 3, 3, class))
        .await
        .map_err(anyhow::Error::msg)?;
    wait_cluster(&clusters, "c", "DfsCluster c Available", |dc| {
        condition(dc, "Available").is_some_and(|c| c.0 == "True")
    })
    .await?;
    let pods: Api<Pod> = ns.api();
    let claims: Api<PersistentVolumeClaim> = ns.api();
    let pvs: Api<PersistentVolume> = Api::all(ns.client.clone());

    // Capacity tracking: csi-provisioner publishes what GetCapacity reports for the class.
    let caps: Api<CSIStorageCapacity> = ns.api();
    let avail = poll(
        "a CSIStorageCapacity object for the StorageClass",
        || async {
            Ok(caps
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|c| c.storage_class_name == sc)
                .find_map(|c| c.capacity.map(|q| q.0))
                // The first report may predate the nodes' registration; the provisioner
                // refreshes it every minute.
                .filter(|q| q != "0"))
        },
    )
    .await?;
    eprintln!("CSIStorageCapacity for {sc}: {avail}");

    // ReadWriteMany: two pods on one volume, each writes a file and checks the other's.
    create(&claims, pvc("shared", sc, "64Mi", "ReadWriteMany", None)).await?;
    let shared_pv = bound(&claims, "shared").await?;
    let both = |me: &str, other: &str| {
        format!(
            "set -e; head -c 3000000 /dev/urandom > /data/{me}; \
             sha256sum /data/{me} > /data/{me}.tmp && mv /data/{me}.tmp /data/{me}.sum; \
             for i in $(seq 120); do [ -f /data/{other}.sum ] && break; sleep 1; done; \
             sha256sum -c /data/{other}.sum && echo read-{other}-ok"
        )
    };
    create(&pods, app_pod("rwx-a", "shared", &both("a", "b"))).await?;
    create(&pods, app_pod("rwx-b", "shared", &both("b", "a"))).await?;
    let (a, b) = (
        succeeded(&pods, "rwx-a").await?,
        succeeded(&pods, "rwx-b").await?,
    );
    ensure!(
        a.contains("read-b-ok") && b.contains("read-a-ok"),
        "{a}\n{b}"
    );
    eprintln!("RWX: two pods wrote and read each other's files on {shared_pv}");
    // The volume is a DfsVolume the operator reconciled: `kubectl get dfsvolumes` shows it.
    let dfs_volumes: Api<DfsVolume> = ns.api();
    let handle = volume_handle(&pvs, &shared_pv).await?;
    let dv = dfs_volumes
        .get(&handle)
        .await
        .with_context(|| format!("no DfsVolume {handle} for PVC shared"))?;
    let st = dv.status.clone().unwrap_or_default();
    ensure!(
        st.phase == Some(VolumePhase::Bound) && st.capacity_bytes == Some(64 << 20),
        "DfsVolume {handle}: {st:?}"
    );
    ensure!(dv.spec.cluster == "c", "DfsVolume {handle}: {:?}", dv.spec);

    // ReadWriteOnce, expanded online: the running pod's df sees the new size.
    create(&claims, pvc("single", sc, "64Mi", "ReadWriteOnce", None)).await?;
    let single_pv = bound(&claims, "single").await?;
    create(
        &pods,
        app_pod(
            "sizer",
            "single",
            "set -e; head -c 5000000 /dev/urandom > /data/file; \
             cd /data && sha256sum file > file.sum && echo written; \
             while true; do echo \"kib=$(df -kP /data | tail -1 | awk '{print $2}')\"; sleep 1; done",
        ),
    )
    .await?;
    running(&pods, "sizer").await?;
    let before = poll("sizer reports the size", || async {
        Ok(last_count(&pods, "sizer", "kib=").await)
    })
    .await?;
    ensure!(
        (60_000..=70_000).contains(&before),
        "a 64Mi volume shows {before} KiB in the pod"
    );
    claims
        .patch(
            "single",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"resources": {"requests": {"storage": "128Mi"}}}})),
        )
        .await?;
    let after = poll("the pod sees the expanded volume", || async {
        Ok(last_count(&pods, "sizer", "kib=")
            .await
            .filter(|k| *k >= 128 * 1024))
    })
    .await?;
    poll("PVC single reports 128Mi", || async {
        let c = claims.get("single").await?;
        let cap = c
            .status
            .and_then(|s| s.capacity)
            .and_then(|c| c.get("storage").map(|q| q.0.clone()));
        Ok((cap.as_deref() == Some("128Mi")).then_some(()))
    })
    .await?;
    eprintln!("expansion: the pod's df went from {before} to {after} KiB without a restart");

    // Snapshot -> restore into a new PVC with identical content.
    let vs_ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshot",
    ));
    let snaps: Api<DynamicObject> = Api::namespaced_with(ns.client.clone(), &ns.name, &vs_ar);
    snaps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                "metadata": {"name": "snap"},
                "spec": {"volumeSnapshotClassName": vsc,
                         "source": {"persistentVolumeClaimName": "single"}},
            }))?,
        )
        .await
        .context("creating VolumeSnapshot (are the snapshot CRDs installed?)")?;
    poll("VolumeSnapshot snap ready", || async {
        let s = snaps.get("snap").await?;
        if let Some(err) = s.data["status"]["error"]["message"].as_str() {
            bail!("snapshot failed: {err}");
        }
        Ok((s.data["status"]["readyToUse"] == json!(true)).then_some(()))
    })
    .await?;
    create(
        &claims,
        pvc(
            "restored",
            sc,
            "128Mi",
            "ReadWriteOnce",
            Some(json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap"})),
        ),
    )
    .await?;
    let restored_pv = bound(&claims, "restored").await?;
    create(
        &pods,
        app_pod(
            "check",
            "restored",
            "cd /data && sha256sum -c file.sum && echo same",
        ),
    )
    .await?;
    let out = succeeded(&pods, "check").await?;
    ensure!(out.contains("same"), "{out}");
    let restored = dfs_volumes
        .get(&volume_handle(&pvs, &restored_pv).await?)
        .await?;
    ensure!(
        restored
            .spec
            .source
            .as_ref()
            .and_then(|s| s.snapshot.as_ref())
            .is_some(),
        "the restored volume's DfsVolume does not name its snapshot: {:?}",
        restored.spec
    );
    eprintln!("snapshot restored into {restored_pv} with identical content");

    // The node plugin pod is deleted while an app writes: the FUSE daemon lives outside
    // it, so the app never sees an error, and every write is in the file afterwards.
    create(&pods, app_pod("writer", "shared", WRITER)).await?;
    running(&pods, "writer").await?;
    poll("writer makes progress", || async {
        Ok(last_count(&pods, "writer", "wrote=").await)
    })
    .await?;
    let lp = ListParams::default().labels("app.kubernetes.io/name=ringfs-csi-node");
    let old: Vec<String> = pods
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    ensure!(!old.is_empty(), "no CSI node plugin pod");
    for p in &old {
        pods.delete(p, &DeleteParams::default()).await?;
    }
    poll("a new CSI node plugin pod ready", || async {
        let list = pods.list(&lp).await?;
        Ok(list
            .items
            .iter()
            .any(|p| {
                p.metadata.name.as_ref().is_some_and(|n| !old.contains(n)) && pod_ready(Some(p))
            })
            .then_some(()))
    })
    .await?;
    let at_restart = last_count(&pods, "writer", "wrote=").await.unwrap_or(0);
    poll("writes continue after the plugin restart", || async {
        let p = pods.get("writer").await?;
        if pod_phase(Some(&p)) != Some("Running") {
            bail!("writer stopped: {}", logs(&pods, "writer").await);
        }
        Ok(last_count(&pods, "writer", "wrote=")
            .await
            .filter(|n| *n >= at_restart + 50))
    })
    .await?;
    create(&pods, app_pod("stopper", "shared", "touch /data/stop")).await?;
    succeeded(&pods, "stopper").await?;
    let out = succeeded(&pods, "writer").await?;
    ensure!(out.contains("all intact"), "{out}");
    let restarts: i32 = pods
        .get("writer")
        .await?
        .status
        .and_then(|s| s.container_statuses)
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0);
    ensure!(restarts == 0, "the writer restarted {restarts} times");
    eprintln!(
        "node plugin pod {old:?} deleted at {at_restart} writes: {}",
        out.lines().last().unwrap_or_default()
    );

    // Deleting the PVCs deletes the PVs and the ringfs volumes.
    let handles = [
        volume_handle(&pvs, &shared_pv).await?,
        volume_handle(&pvs, &single_pv).await?,
        volume_handle(&pvs, &restored_pv).await?,
    ];
    let listed = cluster_volumes(ns, "ls-before").await?;
    for h in &handles {
        ensure!(listed.contains(h.as_str()), "volume {h} missing: {listed}");
    }
    cleanup_claims(ns).await?;
    for pv in [&shared_pv, &single_pv, &restored_pv] {
        poll(&format!("PV {pv} deleted"), || async {
            Ok(pvs.get_opt(pv).await?.is_none().then_some(()))
        })
        .await?;
    }
    let listed = cluster_volumes(ns, "ls-after").await?;
    for h in &handles {
        ensure!(
            !listed.contains(h.as_str()),
            "volume {h} still exists: {listed}"
        );
    }
    for h in &handles {
        ensure!(
            dfs_volumes.get_opt(h).await?.is_none(),
            "DfsVolume {h} still exists after its PVC was deleted"
        );
    }
    eprintln!("PVCs deleted: DfsVolumes and volumes {handles:?} are gone from the cluster");
    Ok(())
}

/// Deletes pods, snapshots and claims (pods first: a claim in use is not deleted).
async fn cleanup_claims(ns: &TestNamespace) -> Result<()> {
    let pods: Api<Pod> = ns.api();
    let dp = DeleteParams::default();
    let mine = ListParams::default().labels(&format!("{TEST_LABEL}=true"));
    // Pods of run_pod (the ringfs image, no labels) end by themselves; app pods do not.
    for p in pods.list(&mine).await?.items {
        let _ = pods.delete(&p.metadata.name.unwrap_or_default(), &dp).await;
    }
    let vs_ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshot",
    ));
    let snaps: Api<DynamicObject> = Api::namespaced_with(ns.client.clone(), &ns.name, &vs_ar);
    if let Ok(list) = snaps.list(&ListParams::default()).await {
        for s in list.items {
            let _ = snaps
                .delete(&s.metadata.name.unwrap_or_default(), &dp)
                .await;
        }
    }
    let claims: Api<PersistentVolumeClaim> = ns.api();
    for c in claims.list(&mine).await?.items {
        let _ = claims
            .delete(&c.metadata.name.unwrap_or_default(), &dp)
            .await;
    }
    poll("pods, snapshots and claims gone", || async {
        let apps = pods.list(&mine).await?.items.len();
        let snaps_left = snaps
            .list(&ListParams::default())
            .await
            .map(|l| l.items.len())
            .unwrap_or(0);
        let claims_left = claims.list(&mine).await?.items.len();
        Ok((apps + snaps_left + claims_left == 0).then_some(()))
    })
    .await
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with the CSI sidecar images: run through e2e/run.sh"]
async fn csi_volumes_in_pods() -> Result<()> {
    let client = ringfs_e2e::client().await?;
    let suffix = random_suffix();
    let class = format!("ringfs-e2e-{suffix}");
    let sc = format!("ringfs-csi-{suffix}");
    let vsc = format!("ringfs-snap-{suffix}");
    let pvs = make_pvs(&client, &class, 3).await?;
    let result = in_namespace("ringfs-e2e-csi", |ns| {
        let (class, sc, vsc) = (class.clone(), sc.clone(), vsc.clone());
        async move {
            let image = ringfs_image();
            let (repo, tag) = image.rsplit_once(':').unwrap_or((image.as_str(), "latest"));
            helm_install(
                &ns,
                &[
                    "csi.enabled=true".into(),
                    // PVCs become DfsVolumes of DfsCluster c (its client Service is the
                    // address the driver uses).
                    "csi.dfsCluster=c".into(),
                    format!("csi.image.repository={repo}"),
                    format!("csi.image.tag={tag}"),
                    "csi.livenessProbe.enabled=false".into(),
                    format!("csi.storageClass.name={sc}"),
                    format!("csi.snapshots.className={vsc}"),
                    format!(
                        "csi.sidecars.provisioner={}",
                        sidecar("csi-provisioner", "CSI_PROVISIONER_VERSION")?
                    ),
                    format!(
                        "csi.sidecars.resizer={}",
                        sidecar("csi-resizer", "CSI_RESIZER_VERSION")?
                    ),
                    format!(
                        "csi.sidecars.snapshotter={}",
                        sidecar("csi-snapshotter", "CSI_SNAPSHOTTER_VERSION")?
                    ),
                ],
            )
            .await?;
            let result = body(&ns, &class, &sc, &vsc).await;
            // Leave nothing behind that outlives the namespace: claims (their PVs are
            // deleted by this release's provisioner), the cluster (its finalizer needs
            // the operator), then the release's cluster-scoped objects.
            let cleaned = async {
                cleanup_claims(&ns).await?;
                let clusters: Api<DfsCluster> = ns.api();
                let _ = clusters.delete("c", &DeleteParams::default()).await;
                poll("DfsCluster c deleted", || async {
                    Ok(clusters.get_opt("c").await?.is_none().then_some(()))
                })
                .await?;
                let out = tokio::process::Command::new(helm_binary())
                    .args(["uninstall", "op", "-n", &ns.name, "--wait"])
                    .output()
                    .await?;
                ensure!(
                    out.status.success(),
                    "helm uninstall: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                Ok::<_, anyhow::Error>(())
            }
            .await;
            result.and(cleaned)
        }
    })
    .await;
    delete_pvs(&client, &pvs).await;
    result
}
