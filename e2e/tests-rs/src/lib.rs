//! Helpers for ringfs' end-to-end tests (`tests/`), which run against whatever cluster
//! `KUBECONFIG` points to. The tests are `#[ignore]`d so that a plain `cargo test` skips
//! them; `e2e/run.sh` brings up a local cluster and runs them:
//!
//! ```sh
//! e2e/run.sh --ringfs-image -- cargo test -p ringfs-e2e -- --ignored --test-threads=1
//! ```
//!
//! Environment: `RINGFS_E2E_IMAGE` (ringfs image, default `ringfs:dev` as written by
//! `e2e/images/build-ringfs-image.sh`), `RINGFS_E2E_BUSYBOX_IMAGE` (default: `BUSYBOX_IMAGE`
//! of `e2e/versions.env`), `RINGFS_E2E_TIMEOUT` (seconds per wait, default 120),
//! `RINGFS_E2E_KEEP=1` (keep the test namespaces), `HELM` (helm binary; default `helm` on
//! `PATH`, else `~/.cache/ringfs-e2e/bin/helm`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use k8s_openapi::api::core::v1::{Event, Namespace, PersistentVolume, Pod, ServiceAccount};
use kube::api::{
    DeleteParams, DynamicObject, ListParams, LogParams, Patch, PatchParams, PostParams,
    ValidationDirective,
};
use kube::core::ApiResource;
use kube::runtime::wait::{await_condition, Condition};
use kube::{Api, Client, Resource};
use ringfs_api::DfsCluster;
use serde_json::{json, Value};
use std::process::Command;

/// The directory `e2e/` of the repository.
pub fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/tests-rs has a parent")
        .to_path_buf()
}

/// How long each wait may take (`RINGFS_E2E_TIMEOUT` seconds, default 120).
pub fn timeout() -> Duration {
    let secs = std::env::var("RINGFS_E2E_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    Duration::from_secs(secs)
}

/// The ringfs image (`RINGFS_E2E_IMAGE`, default `ringfs:dev`).
pub fn ringfs_image() -> String {
    std::env::var("RINGFS_E2E_IMAGE").unwrap_or_else(|_| "ringfs:dev".to_string())
}

/// A busybox image with sh, wget and httpd (`RINGFS_E2E_BUSYBOX_IMAGE`, default
/// `BUSYBOX_IMAGE` from e2e/versions.env).
pub fn busybox_image() -> String {
    if let Ok(img) = std::env::var("RINGFS_E2E_BUSYBOX_IMAGE") {
        return img;
    }
    version("BUSYBOX_IMAGE").unwrap_or_else(|| "localhost/ringfs-e2e/busybox:1.35".to_string())
}

/// A plain `KEY=value` of e2e/versions.env.
pub fn version(key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    std::fs::read_to_string(e2e_dir().join("versions.env"))
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix(&prefix)
                .map(|v| v.trim_matches('"').to_string())
        })
}

/// The helm binary: `HELM`, else `helm` on `PATH`, else the one e2e/build.sh caches.
pub fn helm_binary() -> PathBuf {
    if let Some(h) = std::env::var_os("HELM") {
        return h.into();
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("helm");
            if p.is_file() {
                return p;
            }
        }
    }
    let cache = std::env::var_os("RINGFS_E2E_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/ringfs-e2e")
        });
    cache.join("bin/helm")
}

/// A short random lowercase suffix for names.
pub fn random_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// A client for the cluster `KUBECONFIG` points to.
pub async fn client() -> Result<Client> {
    Client::try_default()
        .await
        .context("no Kubernetes client (is KUBECONFIG set? run through e2e/run.sh)")
}

/// Waits until `cond` holds for object `name` of `api` (a watch, not polling), at most
/// [`timeout`]. Returns the object that satisfied it.
pub async fn wait_for<K>(api: &Api<K>, name: &str, what: &str, cond: impl Condition<K>) -> Result<K>
where
    K: Clone + std::fmt::Debug + Send + serde::de::DeserializeOwned + Resource + 'static,
{
    let t = timeout();
    match tokio::time::timeout(t, await_condition(api.clone(), name, cond)).await {
        Ok(Ok(Some(obj))) => Ok(obj),
        Ok(Ok(None)) => bail!("{what}: {name} was deleted while waiting"),
        Ok(Err(e)) => Err(anyhow!(e).context(format!("{what}: watching {name}"))),
        Err(_) => bail!("{what}: timed out after {}s", t.as_secs()),
    }
}

/// Calls `f` until it returns `Some`, at most [`timeout`]; `f` is retried after an error
/// or `None`, and the last error is reported on timeout.
pub async fn poll<T, F, Fut>(what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let t = timeout();
    let deadline = tokio::time::Instant::now() + t;
    let mut last = None;
    loop {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = Some(e),
        }
        if tokio::time::Instant::now() >= deadline {
            let msg = format!("{what}: timed out after {}s", t.as_secs());
            return Err(match last {
                Some(e) => e.context(msg),
                None => anyhow!(msg),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// True when the pod's `Ready` condition is `True`.
pub fn pod_ready(pod: Option<&Pod>) -> bool {
    pod.and_then(|p| p.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The pod's phase, e.g. `Running` or `Succeeded`.
pub fn pod_phase(pod: Option<&Pod>) -> Option<&str> {
    pod.and_then(|p| p.status.as_ref())
        .and_then(|s| s.phase.as_deref())
}

/// A namespace of one test, with a random suffix.
#[derive(Clone)]
pub struct TestNamespace {
    pub client: Client,
    pub name: String,
}

impl TestNamespace {
    /// Creates the namespace and waits for its default service account (pods are rejected
    /// before it exists).
    pub async fn create(client: Client, prefix: &str) -> Result<Self> {
        let name = format!("{prefix}-{}", random_suffix());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "ringfs-e2e"}},
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        wait_for(
            &sas,
            "default",
            "default service account",
            |sa: Option<&ServiceAccount>| sa.is_some(),
        )
        .await?;
        Ok(TestNamespace { client, name })
    }

    /// An API of namespaced objects in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// A description of the pods and recent events, for failure messages.
    pub async fn describe(&self) -> String {
        let mut out = format!("--- namespace {}\n", self.name);
        let pods: Api<Pod> = self.api();
        if let Ok(list) = pods.list(&ListParams::default()).await {
            for p in list.items {
                let name = p.metadata.name.clone().unwrap_or_default();
                let status = p.status.as_ref();
                out += &format!(
                    "pod {name}: phase={:?} ip={:?} conditions={:?} containers={:?}\n",
                    status.and_then(|s| s.phase.clone()),
                    status.and_then(|s| s.pod_ip.clone()),
                    status.and_then(|s| s.conditions.as_ref()).map(|cs| cs
                        .iter()
                        .map(|c| format!("{}={}", c.type_, c.status))
                        .collect::<Vec<_>>()),
                    status
                        .and_then(|s| s.container_statuses.as_ref())
                        .map(|cs| cs
                            .iter()
                            .map(|c| format!("{}: {:?}", c.name, c.state))
                            .collect::<Vec<_>>()),
                );
                let lp = LogParams {
                    tail_lines: Some(20),
                    ..LogParams::default()
                };
                if let Ok(logs) = pods.logs(&name, &lp).await {
                    out += &format!("logs of {name}:\n{logs}\n");
                }
            }
        }
        let events: Api<Event> = self.api();
        if let Ok(list) = events.list(&ListParams::default()).await {
            for e in list.items.iter().rev().take(20).rev() {
                out += &format!(
                    "event {} {}: {}\n",
                    e.involved_object.name.as_deref().unwrap_or("?"),
                    e.reason.as_deref().unwrap_or("?"),
                    e.message.as_deref().unwrap_or(""),
                );
            }
        }
        out
    }

    /// Deletes the namespace (without waiting for it to be gone).
    pub async fn delete(&self) -> Result<()> {
        Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::background())
            .await
            .with_context(|| format!("deleting namespace {}", self.name))?;
        Ok(())
    }
}

/// Runs `test` in a fresh namespace `PREFIX-RANDOM` and deletes the namespace afterwards,
/// whether the test passed or not (unless `RINGFS_E2E_KEEP=1`). On failure the error
/// carries a description of the namespace's pods and events.
pub async fn in_namespace<F, Fut>(prefix: &str, test: F) -> Result<()>
where
    F: FnOnce(TestNamespace) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let ns = TestNamespace::create(client().await?, prefix).await?;
    eprintln!("ringfs-e2e: namespace {}", ns.name);
    let result = test(ns.clone()).await;
    let result = match result {
        Ok(()) => Ok(()),
        Err(e) => Err(e.context(ns.describe().await)),
    };
    if std::env::var("RINGFS_E2E_KEEP").as_deref() == Ok("1") {
        eprintln!("ringfs-e2e: keeping namespace {}", ns.name);
        return result;
    }
    let deleted = ns.delete().await;
    result.and(deleted)
}
/// Field manager of the tests' server-side applies.
pub const MANAGER: &str = "ringfs-e2e";

pub fn strict_apply() -> PatchParams {
    let mut pp = PatchParams::apply(MANAGER).force();
    pp.field_validation = Some(ValidationDirective::Strict);
    pp
}

/// `helm install op charts/ringfs` into `ns` with the e2e ringfs image, the operator
/// watching `ns`, extra `--set` values, and `--wait`.
pub async fn helm_install(ns: &TestNamespace, sets: &[String]) -> Result<()> {
    let chart = e2e_dir().join("../charts/ringfs");
    let image = ringfs_image();
    let sets = sets.to_vec();
    let (repo, tag) = image.rsplit_once(':').unwrap_or((image.as_str(), "latest"));
    let out = tokio::task::spawn_blocking({
        let ns = ns.name.clone();
        let (repo, tag) = (repo.to_string(), tag.to_string());
        move || {
            Command::new(helm_binary())
                .args(["install", "op"])
                .arg(&chart)
                .args(["-n", &ns])
                .args(["--set", &format!("image.repository={repo}")])
                .args(["--set", &format!("image.tag={tag}")])
                .args(["--set", &format!("operator.watchNamespace={ns}")])
                .args(sets.iter().flat_map(|s| ["--set", s.as_str()]))
                .args(["--wait", "--timeout", &format!("{}s", timeout().as_secs())])
                .output()
        }
    })
    .await??;
    ensure!(
        out.status.success(),
        "helm install of charts/ringfs failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Static hostPath volumes for `n` node claims of class `class`.
pub async fn make_pvs(client: &Client, class: &str, n: usize) -> Result<Vec<String>> {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let mut names = Vec::new();
    for i in 0..n {
        let name = format!("{class}-{i}");
        let pv: PersistentVolume = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "ringfs-e2e"}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": class,
                "hostPath": {"path": format!("/tmp/{name}"), "type": "DirectoryOrCreate"},
            }
        }))?;
        pvs.patch(&name, &PatchParams::apply(MANAGER), &Patch::Apply(&pv))
            .await
            .with_context(|| format!("creating PersistentVolume {name}"))?;
        names.push(name);
    }
    Ok(names)
}

pub async fn delete_pvs(client: &Client, names: &[String]) {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for n in names {
        let _ = pvs.delete(n, &DeleteParams::default()).await;
    }
}

pub fn dyn_api<K: kube::Resource<DynamicType = ()>>(
    ns: &TestNamespace,
) -> (Api<DynamicObject>, ApiResource) {
    let ar = ApiResource::erase::<K>(&());
    (Api::namespaced_with(ns.client.clone(), &ns.name, &ar), ar)
}

pub async fn apply_json(api: &Api<DynamicObject>, obj: &Value) -> Result<(), String> {
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    api.patch(&name, &strict_apply(), &Patch::Apply(obj))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Runs `script` with busybox sh in a pod of the ringfs image (which has the `ringfs`
/// CLI) and returns its output; fails with the output when the script fails.
pub async fn run_pod(ns: &TestNamespace, name: &str, script: &str) -> Result<String> {
    run_pod_with(ns, name, script, None).await
}

/// Like [`run_pod`], with the Secret `tls_secret` (a TLS identity: ca.crt, tls.crt,
/// tls.key) mounted at `/tls` and `RINGFS_TLS_DIR=/tls`, so `ringfs` presents it.
pub async fn run_pod_with(
    ns: &TestNamespace,
    name: &str,
    script: &str,
    tls_secret: Option<&str>,
) -> Result<String> {
    let pods: Api<Pod> = ns.api();
    let mut spec = json!({
        "restartPolicy": "Never",
        "containers": [{
            "name": "c", "image": ringfs_image(), "imagePullPolicy": "IfNotPresent",
            "command": ["/bin/sh", "-c", script],
        }],
    });
    if let Some(secret) = tls_secret {
        spec["volumes"] = json!([{"name": "tls", "secret": {"secretName": secret}}]);
        spec["containers"][0]["volumeMounts"] =
            json!([{"name": "tls", "mountPath": "/tls", "readOnly": true}]);
        spec["containers"][0]["env"] = json!([{"name": "RINGFS_TLS_DIR", "value": "/tls"}]);
    }
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": spec,
    }))?;
    pods.create(&PostParams::default(), &pod)
        .await
        .with_context(|| format!("creating pod {name}"))?;
    let phase = poll(&format!("pod {name} finished"), || async {
        let p = pods.get(name).await?;
        Ok(match pod_phase(Some(&p)) {
            Some(ph @ ("Succeeded" | "Failed")) => Some(ph.to_string()),
            _ => None,
        })
    })
    .await?;
    let logs = pods.logs(name, &LogParams::default()).await?;
    ensure!(phase == "Succeeded", "pod {name} failed: {logs}");
    Ok(logs)
}

/// The first 64-hex-digit word of `logs` (a sha256sum line).
pub fn sha256_in(logs: &str) -> Option<String> {
    logs.split_whitespace()
        .find(|w| w.len() == 64 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .map(str::to_string)
}

/// A DfsCluster of the e2e image with node claims of StorageClass `class`.
pub fn cluster_json(name: &str, replicas: i64, replication: i64, class: &str) -> Value {
    json!({
        "apiVersion": "ringfs.io/v1alpha1", "kind": "DfsCluster",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas, "replication": replication, "partitions": 64,
            "image": ringfs_image(), "imagePullPolicy": "IfNotPresent",
            "storage": {"size": "1Gi", "storageClassName": class, "deleteClaimsOnScaleDown": true},
        }
    })
}

/// (status, reason, message) of the DfsCluster condition `type_`.
pub fn condition(dc: &DfsCluster, type_: &str) -> Option<(String, String, String)> {
    dc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Polls DfsCluster `name` until `ok` holds.
pub async fn wait_cluster(
    api: &Api<DfsCluster>,
    name: &str,
    what: &str,
    ok: impl Fn(&DfsCluster) -> bool,
) -> Result<DfsCluster> {
    poll(what, || async {
        let dc = api.get(name).await?;
        Ok(ok(&dc).then_some(dc))
    })
    .await
}
