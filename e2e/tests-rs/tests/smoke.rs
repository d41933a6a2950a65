//! End-to-end checks against the cluster `KUBECONFIG` points to. Ignored by default; run
//! them through `e2e/run.sh --ringfs-image -- cargo test -p ringfs-e2e -- --ignored
//! --test-threads=1` (see the crate docs for the environment).

use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, LogParams, Patch, PatchParams, PostParams,
};
use kube::core::GroupVersionKind;
use kube::runtime::wait::conditions;
use kube::Api;
use ringfs_e2e::{
    busybox_image, client, e2e_dir, helm_binary, in_namespace, pod_phase, pod_ready, poll,
    random_suffix, ringfs_image, timeout, wait_for,
};
use serde_json::json;

const FIELD_MANAGER: &str = "ringfs-e2e";

fn pod(value: serde_json::Value) -> Result<Pod> {
    Ok(serde_json::from_value(value)?)
}

/// (a) At least one node is Ready.
#[tokio::test]
#[ignore = "needs a Kubernetes cluster: run through e2e/run.sh"]
async fn a_node_is_ready() -> Result<()> {
    let nodes: Api<Node> = Api::all(client().await?);
    let nodes = &nodes;
    let ready = poll("a Ready node", || async move {
        let list = nodes.list(&ListParams::default()).await?;
        let ready: Vec<String> = list
            .items
            .iter()
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        Ok::<_, anyhow::Error>((!ready.is_empty()).then_some(ready))
    })
    .await?;
    eprintln!("Ready nodes: {ready:?}");
    Ok(())
}

/// (b) A pod of the ringfs image starts a one-node ringfs cluster and passes its HTTP
/// readiness probe (/readyz); (c) another pod reaches its /healthz by pod IP.
#[tokio::test]
#[ignore = "needs a Kubernetes cluster: run through e2e/run.sh"]
async fn ringfs_node_pod_is_ready_and_reachable_by_pod_ip() -> Result<()> {
    in_namespace("ringfs-e2e-node", |ns| async move {
        let pods: Api<Pod> = ns.api();
        let image = ringfs_image();
        let server = pod(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "ringfs-node", "labels": {"app": "ringfs-node"}},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "node",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["ringfs-node", "--id", "1", "--bootstrap", "--data-dir", "/tmp/d",
                                "--listen", "0.0.0.0:7420", "--http-listen", "0.0.0.0:7421"],
                    "env": [
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "RINGFS_ADVERTISE", "value": "$(POD_IP):7420"},
                    ],
                    "ports": [
                        {"name": "grpc", "containerPort": 7420},
                        {"name": "http", "containerPort": 7421},
                    ],
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1},
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5},
                }],
            },
        }))?;
        pods.create(&PostParams::default(), &server).await.context("creating pod ringfs-node")?;
        let server = wait_for(&pods, "ringfs-node", &format!("pod of {image} Ready (/readyz)"), pod_ready).await?;
        let ip = server
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .context("ready pod ringfs-node has no pod IP")?;
        eprintln!("pod ringfs-node ({image}) Ready at {ip}");

        // (c) A busybox pod fetches /healthz by pod IP (retrying until the deadline, since
        // the network may lag the readiness), prints it and exits 0.
        let url = format!("http://{ip}:7421/healthz");
        let client_pod = pod(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "client"},
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "client",
                    "image": busybox_image(),
                    "imagePullPolicy": "IfNotPresent",
                    // Debian's static busybox wget crashes with -T: bound it with timeout.
                    "command": ["sh", "-c",
                        format!("until out=$(timeout 5 wget -q -O - {url}); do sleep 1; done; echo \"healthz: $out\"")],
                }],
            },
        }))?;
        pods.create(&PostParams::default(), &client_pod).await.context("creating pod client")?;
        let done = wait_for(&pods, "client", &format!("pod client fetching {url}"), |p: Option<&Pod>| {
            matches!(pod_phase(p), Some("Succeeded" | "Failed"))
        })
        .await?;
        let logs = pods.logs("client", &LogParams::default()).await?;
        ensure!(
            pod_phase(Some(&done)) == Some("Succeeded") && logs.contains("healthz: ok"),
            "pod client could not fetch {url}: phase {:?}, logs: {logs}",
            pod_phase(Some(&done))
        );
        eprintln!("pod client reached {url}: {}", logs.trim());
        Ok(())
    })
    .await
}

/// (d) Server-side apply of a CRD and of a custom object; the schema is enforced.
#[tokio::test]
#[ignore = "needs a Kubernetes cluster: run through e2e/run.sh"]
async fn crd_and_custom_object_server_side_apply() -> Result<()> {
    let client = client().await?;
    // A CRD of its own (cluster-scoped) so that parallel runs and smoke.sh do not collide.
    let group = format!("t{}.e2e.ringfs.io", random_suffix());
    let crd_name = format!("widgets.{group}");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": crd_name},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{
                "name": "v1alpha1",
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "required": ["size"],
                            "properties": {
                                "size": {"type": "integer", "minimum": 1},
                                "color": {"type": "string", "enum": ["red", "green", "blue"]},
                            },
                        },
                        "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
                    },
                }},
            }],
        },
    }))?;
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    crds.patch(&crd_name, &apply, &Patch::Apply(&crd))
        .await
        .with_context(|| format!("server-side apply of CRD {crd_name}"))?;

    let result = in_namespace("ringfs-e2e-crd", |ns| {
        let crds = crds.clone();
        let crd_name = crd_name.clone();
        let group = group.clone();
        async move {
            wait_for(
                &crds,
                &crd_name,
                "CRD Established",
                conditions::is_crd_established(),
            )
            .await?;
            let gvk = GroupVersionKind::gvk(&group, "v1alpha1", "Widget");
            let ar = ApiResource::from_gvk_with_plural(&gvk, "widgets");
            let widgets: Api<DynamicObject> =
                Api::namespaced_with(ns.client.clone(), &ns.name, &ar);
            let w1 =
                DynamicObject::new("w1", &ar).data(json!({"spec": {"size": 3, "color": "blue"}}));
            // The new resource may take a moment to be served after Established: retry.
            let (widgets_ref, apply_ref, w1_ref) = (&widgets, &apply, &w1);
            poll("server-side apply of Widget w1", || async move {
                let obj = widgets_ref
                    .patch("w1", apply_ref, &Patch::Apply(w1_ref))
                    .await?;
                Ok::<_, anyhow::Error>(Some(obj))
            })
            .await?;
            let got = widgets.get("w1").await?;
            ensure!(
                got.data["spec"]["size"] == 3,
                "Widget w1 reads back as {:?}",
                got.data
            );
            // Applying again with a change updates it (same field manager).
            let w1b =
                DynamicObject::new("w1", &ar).data(json!({"spec": {"size": 5, "color": "red"}}));
            widgets.patch("w1", &apply, &Patch::Apply(&w1b)).await?;
            let got = widgets.get("w1").await?;
            ensure!(
                got.data["spec"]["size"] == 5,
                "Widget w1 after re-apply: {:?}",
                got.data
            );
            let w2 = DynamicObject::new("w2", &ar).data(json!({"spec": {"size": 0}}));
            match widgets.patch("w2", &apply, &Patch::Apply(&w2)).await {
                Ok(_) => bail!("schema validation did not reject Widget w2 with size 0"),
                Err(kube::Error::Api(e)) if e.code == 422 => {}
                Err(e) => bail!("unexpected error for invalid Widget w2: {e}"),
            }
            Ok(())
        }
    })
    .await;
    let deleted = crds.delete(&crd_name, &DeleteParams::background()).await;
    result?;
    deleted.with_context(|| format!("deleting CRD {crd_name}"))?;
    Ok(())
}

/// (e) `helm install --wait` of e2e/testdata/charts/ringfs-smoke; its ConfigMap and
/// Deployment appear and the Deployment becomes available.
#[tokio::test]
#[ignore = "needs a Kubernetes cluster: run through e2e/run.sh"]
async fn helm_install_of_test_chart() -> Result<()> {
    in_namespace("ringfs-e2e-helm", |ns| async move {
        let helm = helm_binary();
        let chart = e2e_dir().join("testdata/charts/ringfs-smoke");
        let out = tokio::task::spawn_blocking({
            let ns = ns.name.clone();
            let helm = helm.clone();
            move || {
                Command::new(&helm)
                    .args(["install", "smoke"])
                    .arg(&chart)
                    .args(["-n", &ns, "--set", &format!("image={}", busybox_image())])
                    .args(["--wait", "--timeout", &format!("{}s", timeout().as_secs())])
                    .output()
            }
        })
        .await?
        .with_context(|| format!("running {}", helm.display()))?;
        ensure!(
            out.status.success(),
            "helm install failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cm: Api<ConfigMap> = ns.api();
        let cm = cm
            .get("smoke-config")
            .await
            .context("ConfigMap smoke-config of the chart")?;
        ensure!(
            cm.data.as_ref().is_some_and(|d| d.contains_key("message")),
            "ConfigMap smoke-config has no message"
        );
        let deployments: Api<Deployment> = ns.api();
        wait_for(
            &deployments,
            "smoke-web",
            "Deployment smoke-web available",
            |d: Option<&Deployment>| {
                d.and_then(|d| d.status.as_ref())
                    .and_then(|s| s.available_replicas)
                    .is_some_and(|n| n >= 1)
            },
        )
        .await?;
        let pods: Api<Pod> = ns.api();
        let list = pods
            .list(&ListParams::default().labels("app.kubernetes.io/instance=smoke"))
            .await?;
        ensure!(
            list.items.iter().any(|p| pod_ready(Some(p))),
            "no Ready pod of the chart"
        );
        eprintln!("helm release smoke deployed in {}", ns.name);
        Ok(())
    })
    .await
}
