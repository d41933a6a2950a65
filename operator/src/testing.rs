//! Test support: a scripted Kubernetes API server behind a real `kube::Client` (every
//! request is checked against the script: method, path, query, body) and a scripted fake of
//! the ringfs cluster.

use crate::admin::{
    Admin, AdminError, AdminResult, ClusterState, MemberInfo, Rebalance, VolumeInfo,
};
use crate::context::Context;
use crate::metrics::Metrics;
use futures::future::BoxFuture;
use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::Client;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Check = Box<dyn Fn(&Value) + Send>;

pub enum Reply {
    /// Answer as the API server does: a POST creates the body, a PATCH merges the body into
    /// the object the server knows (only its `status` for a `/status` patch; an unknown
    /// object is created by a plain patch and is 404 for a status patch). The reply is the
    /// whole resulting object, metadata included.
    Echo,
    NotFound,
    Json(Value),
}

pub struct Expect {
    pub method: &'static str,
    pub path: String,
    pub query: Vec<&'static str>,
    pub check: Check,
    pub reply: Reply,
}

impl Expect {
    pub fn new(method: &'static str, path: impl Into<String>, reply: Reply) -> Expect {
        Expect {
            method,
            path: path.into(),
            query: Vec::new(),
            check: Box::new(|_| {}),
            reply,
        }
    }
    pub fn check(mut self, f: impl Fn(&Value) + Send + 'static) -> Expect {
        self.check = Box::new(f);
        self
    }
    /// The query string must contain each of these `key=value` pairs.
    pub fn query(mut self, pairs: &[&'static str]) -> Expect {
        self.query.extend_from_slice(pairs);
        self
    }
}

/// The running script; [`ScriptedServer::finish`] reports how it went.
pub struct ScriptedServer {
    task: tokio::task::JoinHandle<Played>,
}

struct Played {
    bodies: Vec<Value>,
    failures: Vec<String>,
}

/// How long `finish` waits for every `kube::Client` clone to be dropped. Only reached when
/// a test leaks a client; a passing test finishes as soon as the last clone goes.
const FINISH_DEADLINE: Duration = Duration::from_secs(10);

impl ScriptedServer {
    /// Waits until the client is dropped (so no request can follow), then fails the test if
    /// any request did not match the script or a scripted request never came. Returns the
    /// request bodies in order.
    pub async fn finish(self) -> Vec<Value> {
        let played = match tokio::time::timeout(FINISH_DEADLINE, self.task).await {
            Ok(Ok(played)) => played,
            Ok(Err(e)) => panic!("scripted API server task failed: {e}"),
            Err(_) => panic!(
                "a kube::Client of the scripted API server is still alive after {FINISH_DEADLINE:?}; \
                 drop every clone (the Context) before finish()"
            ),
        };
        assert!(
            played.failures.is_empty(),
            "scripted API server:\n{}",
            played.failures.join("\n")
        );
        played.bodies
    }
}

/// Runs `script` as the API server, which starts out knowing `objects` (path, object).
/// Each request must match the next expectation; a mismatch, a request beyond the script or
/// a failed check is answered with a 500 carrying the reason (so the reconcile fails with
/// it) and recorded for [`ScriptedServer::finish`]; every later request then gets a 500.
pub fn api_server(objects: Vec<(String, Value)>, script: Vec<Expect>) -> (Client, ScriptedServer) {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let task = tokio::spawn(async move {
        let mut store: HashMap<String, Value> = objects.into_iter().collect();
        let mut steps = script.into_iter().enumerate();
        let mut played = Played {
            bodies: Vec::new(),
            failures: Vec::new(),
        };
        // Ends when the last client clone is dropped.
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().as_str().to_string();
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or_default().to_string();
            let body = match req.into_body().collect_bytes().await {
                Ok(b) if b.is_empty() => Ok(Value::Null),
                Ok(b) => serde_json::from_slice(&b)
                    .map_err(|e| format!("{method} {path}: request body is not JSON: {e}")),
                Err(e) => Err(format!("{method} {path}: cannot read request body: {e}")),
            };
            let outcome = if let Some(first) = played.failures.first() {
                Err(format!(
                    "{method} {path} after the script already failed: {first}"
                ))
            } else {
                body.and_then(|body| {
                    let (i, exp) = steps.next().ok_or_else(|| {
                        format!("unexpected request {method} {path} beyond the script")
                    })?;
                    let call = Call {
                        method: &method,
                        path: &path,
                        query: &query,
                    };
                    play(i, exp, &call, body, &mut store, &mut played.bodies)
                })
            };
            let (status, reply) = outcome.unwrap_or_else(|msg| {
                played.failures.push(msg.clone());
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    status_body(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &msg),
                )
            });
            let resp = Response::builder()
                .status(status)
                .body(Body::from(reply.to_string().into_bytes()));
            match resp {
                Ok(r) => send.send_response(r),
                Err(e) => played
                    .failures
                    .push(format!("cannot build a response: {e}")),
            }
        }
        for (i, exp) in steps {
            played.failures.push(format!(
                "script step {i}: expected {} {} but the client made no more requests",
                exp.method, exp.path
            ));
        }
        played
    });
    (client, ScriptedServer { task })
}

/// What a request asks for, apart from its body.
struct Call<'a> {
    method: &'a str,
    path: &'a str,
    query: &'a str,
}

/// Checks one request against script step `i` and computes the reply.
fn play(
    i: usize,
    exp: Expect,
    call: &Call,
    body: Value,
    store: &mut HashMap<String, Value>,
    bodies: &mut Vec<Value>,
) -> Result<(StatusCode, Value), String> {
    let Call {
        method,
        path,
        query,
    } = *call;
    if method != exp.method || path != exp.path {
        return Err(format!(
            "script step {i}: expected {} {}, got {method} {path}",
            exp.method, exp.path
        ));
    }
    let pairs: Vec<&str> = query.split('&').collect();
    if let Some(missing) = exp.query.iter().find(|q| !pairs.contains(q)) {
        return Err(format!(
            "script step {i}: {method} {path}?{query} lacks {missing}"
        ));
    }
    // A check is a block of asserts; its panic message becomes the step's failure.
    catch_unwind(AssertUnwindSafe(|| (exp.check)(&body))).map_err(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("check panicked");
        format!("script step {i}: {method} {path}: {msg}")
    })?;
    bodies.push(body.clone());
    Ok(match exp.reply {
        Reply::Json(v) => {
            if method == "GET" {
                store.insert(path.to_string(), v.clone());
            }
            (StatusCode::OK, v)
        }
        Reply::NotFound => {
            store.remove(path);
            not_found(path)
        }
        Reply::Echo => echo(store, method, path, body)?,
    })
}

fn status_body(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "reason": reason, "code": code.as_u16(), "message": message})
}

fn not_found(path: &str) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        status_body(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{path} not found"),
        ),
    )
}

fn echo(
    store: &mut HashMap<String, Value>,
    method: &str,
    path: &str,
    body: Value,
) -> Result<(StatusCode, Value), String> {
    match method {
        "POST" => {
            let name = body["metadata"]["name"]
                .as_str()
                .ok_or_else(|| format!("POST {path}: the object has no metadata.name"))?;
            store.insert(format!("{path}/{name}"), body.clone());
            Ok((StatusCode::CREATED, body))
        }
        "PATCH" => {
            let (key, status_only) = match path.strip_suffix("/status") {
                Some(key) => (key, true),
                None => (path, false),
            };
            let obj = match (store.get(key).cloned(), status_only) {
                (None, true) => return Ok(not_found(key)),
                (Some(mut obj), true) => {
                    merge_patch(&mut obj["status"], &body["status"]);
                    obj
                }
                (Some(mut obj), false) => {
                    merge_patch(&mut obj, &body);
                    obj
                }
                (None, false) => with_identity(body, key),
            };
            store.insert(key.to_string(), obj.clone());
            Ok((StatusCode::OK, obj))
        }
        _ => Err(format!(
            "{method} {path}: Reply::Echo answers POST and PATCH only"
        )),
    }
}

/// JSON merge patch (RFC 7386): objects merge key by key, `null` deletes, anything else
/// replaces. Server-side apply differs for lists with merge keys; no test relies on that.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (k, v) in patch {
            if v.is_null() {
                target.remove(k);
            } else {
                merge_patch(target.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// An object created by a patch gets the name and namespace of its path, as on a real
/// server.
fn with_identity(obj: Value, path: &str) -> Value {
    let segments: Vec<&str> = path.split('/').collect();
    let name = segments.last().copied().unwrap_or_default();
    let namespace = segments
        .iter()
        .position(|s| *s == "namespaces")
        .and_then(|i| segments.get(i + 1))
        .copied();
    let mut identity = json!({"metadata": {"name": name}});
    if let Some(ns) = namespace {
        identity["metadata"]["namespace"] = json!(ns);
    }
    merge_patch(&mut identity, &obj);
    identity
}

/// A scripted ringfs cluster recording every mutating call.
#[derive(Default)]
pub struct FakeAdmin {
    pub state: Mutex<Option<ClusterState>>,
    pub rebalance: Mutex<Option<Rebalance>>,
    pub volumes: Mutex<Vec<(String, VolumeInfo)>>,
    pub calls: Mutex<Vec<String>>,
    pub drain_refusal: Mutex<Option<String>>,
    /// For every call, in order: whether it carried a TLS identity.
    pub tls: Mutex<Vec<bool>>,
}

impl FakeAdmin {
    pub fn with_members(ids: &[(u64, &str)]) -> FakeAdmin {
        let members: Vec<MemberInfo> = ids
            .iter()
            .map(|(id, st)| MemberInfo {
                id: *id,
                addr: format!("node-{id}"),
                state: st.to_string(),
            })
            .collect();
        FakeAdmin {
            state: Mutex::new(Some(ClusterState {
                leader: Some(1),
                layout_version: 7,
                members: members.clone(),
            })),
            rebalance: Mutex::new(Some(Rebalance {
                healthy: true,
                partitions_total: 192,
                nodes: members,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn saw(&self, target: &crate::admin::Target) {
        self.tls.lock().unwrap().push(target.tls.is_some());
    }

    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
}

fn unavailable<T>(o: Option<T>) -> AdminResult<T> {
    o.ok_or_else(|| AdminError::Unavailable("fake cluster is down".into()))
}

impl Admin for FakeAdmin {
    fn state(&self, target: crate::admin::Target) -> BoxFuture<'_, AdminResult<ClusterState>> {
        self.saw(&target);
        Box::pin(async move { unavailable(self.state.lock().unwrap().clone()) })
    }
    fn rebalance(&self, target: crate::admin::Target) -> BoxFuture<'_, AdminResult<Rebalance>> {
        self.saw(&target);
        Box::pin(async move { unavailable(self.rebalance.lock().unwrap().clone()) })
    }
    fn drain(&self, target: crate::admin::Target, node: u64) -> BoxFuture<'_, AdminResult<()>> {
        self.saw(&target);
        Box::pin(async move {
            self.record(format!("drain {node}"));
            match self.drain_refusal.lock().unwrap().clone() {
                Some(msg) => Err(AdminError::Refused(msg)),
                None => Ok(()),
            }
        })
    }
    fn remove(&self, target: crate::admin::Target, node: u64) -> BoxFuture<'_, AdminResult<bool>> {
        self.saw(&target);
        Box::pin(async move {
            self.record(format!("remove {node}"));
            Ok(true)
        })
    }
    fn volume(
        &self,
        target: crate::admin::Target,
        name: String,
    ) -> BoxFuture<'_, AdminResult<VolumeInfo>> {
        self.saw(&target);
        Box::pin(async move {
            self.volumes
                .lock()
                .unwrap()
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
                .ok_or(AdminError::NotFound)
        })
    }
    fn create_volume(
        &self,
        target: crate::admin::Target,
        name: String,
        capacity: u64,
        replication: u32,
        source: Option<crate::admin::VolumeSource>,
    ) -> BoxFuture<'_, AdminResult<VolumeInfo>> {
        self.saw(&target);
        Box::pin(async move {
            match source {
                None => self.record(format!("create {name} {capacity} {replication}")),
                Some(src) => self.record(format!(
                    "create {name} {capacity} {replication} from {src:?}"
                )),
            }
            let v = VolumeInfo {
                id: 11,
                capacity_bytes: capacity,
                used_bytes: 0,
                replication,
            };
            self.volumes.lock().unwrap().push((name, v.clone()));
            Ok(v)
        })
    }
    fn resize_volume(
        &self,
        target: crate::admin::Target,
        name: String,
        capacity: u64,
    ) -> BoxFuture<'_, AdminResult<VolumeInfo>> {
        self.saw(&target);
        Box::pin(async move {
            self.record(format!("resize {name} {capacity}"));
            let mut vols = self.volumes.lock().unwrap();
            let v = vols
                .iter_mut()
                .find(|(n, _)| *n == name)
                .ok_or(AdminError::NotFound)?;
            v.1.capacity_bytes = capacity;
            Ok(v.1.clone())
        })
    }
    fn delete_volume(
        &self,
        target: crate::admin::Target,
        name: String,
    ) -> BoxFuture<'_, AdminResult<bool>> {
        self.saw(&target);
        Box::pin(async move {
            self.record(format!("delete {name}"));
            let mut vols = self.volumes.lock().unwrap();
            let before = vols.len();
            vols.retain(|(n, _)| *n != name);
            Ok(vols.len() != before)
        })
    }
}

pub fn context(client: Client, admin: Arc<FakeAdmin>) -> Arc<Context> {
    Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "ringfs-operator-test".into(),
                instance: None,
            },
        ),
        client,
        metrics: Arc::new(Metrics::default()),
        admin,
        busy_requeue: Duration::from_secs(5),
        idle_requeue: Duration::from_secs(30),
    })
}

/// The value of condition `type_` in a status patch body.
pub fn condition<'a>(status_patch: &'a Value, type_: &str) -> &'a Value {
    status_patch["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status_patch}"))
}

/// The DfsCluster spec the unit tests start from (each test changes what it is about):
/// `replicas` nodes of the `ringfs:dev` image, 64 partitions, RF 3, 1Gi per node in the
/// default StorageClass, TLS on with its defaults.
pub fn cluster_spec(replicas: i32) -> ringfs_api::DfsClusterSpec {
    ringfs_api::DfsClusterSpec {
        replicas,
        image: "ringfs:dev".into(),
        image_pull_policy: None,
        partitions: 64,
        replication: 3,
        storage: ringfs_api::StorageSpec {
            size: "1Gi".into(),
            storage_class_name: None,
            delete_claims_on_scale_down: false,
        },
        resources: None,
        tls: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, path: &str, body: Value) -> Request<Vec<u8>> {
        Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(body.to_string().into_bytes())
            .expect("request")
    }

    /// The panic message of `finish()` on a failed script.
    async fn failure(server: ScriptedServer) -> String {
        let err = tokio::spawn(server.finish())
            .await
            .expect_err("the script must fail");
        let panic = err.into_panic();
        panic
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| format!("{panic:?}"))
    }

    const CM: &str = "/api/v1/namespaces/ns/configmaps/a";

    #[tokio::test]
    async fn echo_merges_patches_into_the_known_object() {
        let known = json!({"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": "a", "namespace": "ns", "uid": "u1"},
                           "data": {"x": "1", "y": "2"}});
        let (client, server) = api_server(
            vec![(CM.to_string(), known)],
            vec![
                Expect::new("PATCH", format!("{CM}/status"), Reply::Echo),
                Expect::new("PATCH", CM, Reply::Echo),
                Expect::new("PATCH", "/api/v1/namespaces/ns/configmaps/new", Reply::Echo),
                Expect::new(
                    "PATCH",
                    "/api/v1/namespaces/ns/configmaps/b/status",
                    Reply::Echo,
                ),
            ],
        );
        // A status patch changes only the status, whatever else it carries.
        let obj: Value = client
            .request(request(
                "PATCH",
                &format!("{CM}/status"),
                json!({"status": {"phase": "Ready"}, "data": {"x": "9"}}),
            ))
            .await
            .expect("status patch");
        assert_eq!(obj["metadata"]["uid"], "u1");
        assert_eq!(obj["status"]["phase"], "Ready");
        assert_eq!(obj["data"]["x"], "1");
        // A plain patch merges into what the server knows, including the status just set.
        let obj: Value = client
            .request(request("PATCH", CM, json!({"data": {"x": "9", "y": null}})))
            .await
            .expect("patch");
        assert_eq!(obj["data"], json!({"x": "9"}));
        assert_eq!(obj["status"]["phase"], "Ready");
        // A patch of an unknown object creates it, named by its path.
        let obj: Value = client
            .request(request(
                "PATCH",
                "/api/v1/namespaces/ns/configmaps/new",
                json!({"data": {"z": "3"}}),
            ))
            .await
            .expect("patch creating an object");
        assert_eq!(obj["metadata"], json!({"name": "new", "namespace": "ns"}));
        // The status of an unknown object is not found, as on a real server.
        let err = client
            .request::<Value>(request(
                "PATCH",
                "/api/v1/namespaces/ns/configmaps/b/status",
                json!({"status": {}}),
            ))
            .await
            .expect_err("status of an unknown object");
        assert!(err.to_string().contains("not found"), "{err}");
        drop(client);
        assert_eq!(server.finish().await.len(), 4);
    }

    #[tokio::test]
    async fn a_request_off_the_script_fails_it() {
        let (client, server) = api_server(vec![], vec![Expect::new("GET", CM, Reply::NotFound)]);
        let err = client
            .request::<Value>(request(
                "GET",
                "/api/v1/namespaces/ns/configmaps/b",
                Value::Null,
            ))
            .await
            .expect_err("a request off the script");
        assert!(err.to_string().contains("expected GET"), "{err}");
        drop(client);
        let msg = failure(server).await;
        assert!(
            msg.contains("script step 0: expected GET /api/v1/namespaces/ns/configmaps/a, got GET /api/v1/namespaces/ns/configmaps/b"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn a_failed_check_fails_the_script_even_if_the_client_ignores_it() {
        let (client, server) = api_server(
            vec![],
            vec![
                Expect::new("POST", "/api/v1/namespaces/ns/configmaps", Reply::Echo)
                    .check(|b| assert_eq!(b["data"]["x"], "1", "the x of the new map")),
            ],
        );
        let body = json!({"metadata": {"name": "a"}, "data": {"x": "2"}});
        let _ignored = client
            .request::<Value>(request("POST", "/api/v1/namespaces/ns/configmaps", body))
            .await;
        drop(client);
        let msg = failure(server).await;
        assert!(msg.contains("the x of the new map"), "{msg}");
    }

    #[tokio::test]
    async fn missing_requests_and_query_pairs_fail_the_script() {
        let (client, server) = api_server(
            vec![],
            vec![
                Expect::new("POST", "/api/v1/namespaces/ns/configmaps", Reply::Echo)
                    .query(&["fieldManager=m"]),
                Expect::new("GET", CM, Reply::NotFound),
            ],
        );
        let body = json!({"metadata": {"name": "a"}});
        let _ignored = client
            .request::<Value>(request(
                "POST",
                "/api/v1/namespaces/ns/configmaps?fieldManager=other",
                body,
            ))
            .await;
        drop(client);
        let msg = failure(server).await;
        assert!(msg.contains("lacks fieldManager=m"), "{msg}");
        assert!(
            msg.contains("script step 1: expected GET /api/v1/namespaces/ns/configmaps/a but the client made no more requests"),
            "{msg}"
        );
    }
}
