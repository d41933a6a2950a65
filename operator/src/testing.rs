//! Test support: a scripted Kubernetes API server behind a real `kube::Client` (every
//! request is checked against the script: method, path, body) and a scripted fake of the
//! ringfs cluster.

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
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Check = Box<dyn Fn(&Value) + Send>;

pub enum Reply {
    /// Answer with the request body (what SSA of a complete object returns).
    Echo,
    NotFound,
    Json(Value),
}

pub struct Expect {
    pub method: &'static str,
    pub path: String,
    pub check: Check,
    pub reply: Reply,
}

impl Expect {
    pub fn new(method: &'static str, path: impl Into<String>, reply: Reply) -> Expect {
        Expect {
            method,
            path: path.into(),
            check: Box::new(|_| {}),
            reply,
        }
    }
    pub fn check(mut self, f: impl Fn(&Value) + Send + 'static) -> Expect {
        self.check = Box::new(f);
        self
    }
}

/// Runs `script` as the API server: each request must match the next expectation; a
/// request beyond the script, or a script entry never requested, fails the test.
pub fn api_server(script: Vec<Expect>) -> (Client, tokio::task::JoinHandle<Vec<Value>>) {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let task = tokio::spawn(async move {
        let mut bodies = Vec::new();
        for (i, exp) in script.into_iter().enumerate() {
            let next = tokio::time::timeout(Duration::from_secs(30), handle.next_request()).await;
            let (req, send) = match next {
                Ok(Some(r)) => r,
                Ok(None) => panic!(
                    "script step {i}: expected {} {} but the client made no more requests",
                    exp.method, exp.path
                ),
                Err(_) => panic!(
                    "script step {i}: timed out waiting for {} {}",
                    exp.method, exp.path
                ),
            };
            assert_eq!(
                req.method().as_str(),
                exp.method,
                "script step {i}: method of {}",
                req.uri()
            );
            assert_eq!(req.uri().path(), exp.path, "script step {i}: path");
            let bytes = req.into_body().collect_bytes().await.expect("request body");
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("JSON request body")
            };
            (exp.check)(&body);
            let (status, reply) = match exp.reply {
                Reply::Echo => (StatusCode::OK, body.clone()),
                Reply::Json(v) => (StatusCode::OK, v),
                Reply::NotFound => (
                    StatusCode::NOT_FOUND,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "reason": "NotFound", "code": 404, "message": "not found"}),
                ),
            };
            bodies.push(body);
            let resp = Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&reply).expect("json")))
                .expect("response");
            send.send_response(resp);
        }
        if let Ok(Some((req, _))) =
            tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await
        {
            panic!("unexpected extra request {} {}", req.method(), req.uri());
        }
        bodies
    });
    (client, task)
}

/// A scripted ringfs cluster recording every mutating call.
#[derive(Default)]
pub struct FakeAdmin {
    pub state: Mutex<Option<ClusterState>>,
    pub rebalance: Mutex<Option<Rebalance>>,
    pub volumes: Mutex<Vec<(String, VolumeInfo)>>,
    pub calls: Mutex<Vec<String>>,
    pub drain_refusal: Mutex<Option<String>>,
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

    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
}

fn unavailable<T>(o: Option<T>) -> AdminResult<T> {
    o.ok_or_else(|| AdminError::Unavailable("fake cluster is down".into()))
}

impl Admin for FakeAdmin {
    fn state(&self, _seeds: Vec<String>) -> BoxFuture<'_, AdminResult<ClusterState>> {
        Box::pin(async move { unavailable(self.state.lock().unwrap().clone()) })
    }
    fn rebalance(&self, _seeds: Vec<String>) -> BoxFuture<'_, AdminResult<Rebalance>> {
        Box::pin(async move { unavailable(self.rebalance.lock().unwrap().clone()) })
    }
    fn drain(&self, _seeds: Vec<String>, node: u64) -> BoxFuture<'_, AdminResult<()>> {
        Box::pin(async move {
            self.record(format!("drain {node}"));
            match self.drain_refusal.lock().unwrap().clone() {
                Some(msg) => Err(AdminError::Refused(msg)),
                None => Ok(()),
            }
        })
    }
    fn remove(&self, _seeds: Vec<String>, node: u64) -> BoxFuture<'_, AdminResult<bool>> {
        Box::pin(async move {
            self.record(format!("remove {node}"));
            Ok(true)
        })
    }
    fn volume(&self, _seeds: Vec<String>, name: String) -> BoxFuture<'_, AdminResult<VolumeInfo>> {
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
        _seeds: Vec<String>,
        name: String,
        capacity: u64,
        replication: u32,
    ) -> BoxFuture<'_, AdminResult<VolumeInfo>> {
        Box::pin(async move {
            self.record(format!("create {name} {capacity} {replication}"));
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
        _seeds: Vec<String>,
        name: String,
        capacity: u64,
    ) -> BoxFuture<'_, AdminResult<VolumeInfo>> {
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
    fn delete_volume(&self, _seeds: Vec<String>, name: String) -> BoxFuture<'_, AdminResult<bool>> {
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
