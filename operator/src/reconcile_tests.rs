//! Reconcilers against the scripted API server: every HTTP call is asserted in order.

use crate::testing::{api_server, condition, context, Expect, FakeAdmin, Reply};
use crate::{cluster, volume};
use kube::ResourceExt;
use ringfs_api::{AccessMode, DfsCluster, DfsClusterStatus, DfsVolume, DfsVolumeSpec, TlsSpec};
use serde_json::{json, Value};
use std::sync::Arc;

const NS: &str = "ns";

fn dfs_cluster(replicas: i32, finalizer: bool) -> DfsCluster {
    let mut spec = crate::testing::cluster_spec(replicas);
    // TLS has its own tests below; these scripts are about everything else.
    spec.tls = TlsSpec {
        enabled: false,
        ..Default::default()
    };
    let mut dc = DfsCluster::new("c1", spec);
    dc.metadata.namespace = Some(NS.into());
    dc.metadata.uid = Some("uid-c1".into());
    dc.metadata.generation = Some(2);
    dc.metadata.resource_version = Some("10".into());
    if finalizer {
        dc.metadata.finalizers = Some(vec![cluster::FINALIZER.into()]);
    }
    dc
}

fn sts_json(replicas: i32, ready: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "c1", "namespace": NS},
        "spec": {"replicas": replicas, "selector": {}, "template": {}, "serviceName": "c1-nodes"},
        "status": {"replicas": replicas, "readyReplicas": ready}
    })
}

const CLUSTERS: &str = "/apis/ringfs.io/v1alpha1/namespaces/ns/dfsclusters/c1";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ns/events";

/// Query of every server-side apply the operator makes: its field manager, forced.
const SSA: &[&str] = &["fieldManager=ringfs-operator", "force=true"];

/// The five server-side applies of the owned objects, asserting owner and replicas.
fn owned_applies(replicas: i32) -> Vec<Expect> {
    let owner = |b: &Value| {
        assert_eq!(b["metadata"]["ownerReferences"][0]["uid"], "uid-c1", "{b}");
        assert_eq!(b["metadata"]["ownerReferences"][0]["controller"], true);
    };
    vec![
        Expect::new(
            "PATCH",
            "/api/v1/namespaces/ns/configmaps/c1-config",
            Reply::Echo,
        )
        .query(SSA)
        .check(move |b| {
            owner(b);
            assert_eq!(b["data"]["RINGFS_REPLICATION"], "3");
        }),
        Expect::new(
            "PATCH",
            "/api/v1/namespaces/ns/services/c1-nodes",
            Reply::Echo,
        )
        .query(SSA)
        .check(move |b| {
            owner(b);
            assert_eq!(b["spec"]["clusterIP"], "None");
            assert_eq!(b["spec"]["publishNotReadyAddresses"], true);
        }),
        Expect::new("PATCH", "/api/v1/namespaces/ns/services/c1", Reply::Echo)
            .query(SSA)
            .check(owner),
        Expect::new(
            "PATCH",
            "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/c1",
            Reply::Echo,
        )
        .query(SSA)
        .check(move |b| {
            owner(b);
            assert_eq!(b["spec"]["maxUnavailable"], 1);
        }),
        Expect::new(
            "PATCH",
            "/apis/apps/v1/namespaces/ns/statefulsets/c1",
            Reply::Echo,
        )
        .query(SSA)
        .check(move |b| {
            owner(b);
            assert_eq!(b["spec"]["replicas"], replicas, "StatefulSet replicas");
        }),
    ]
}

/// An Event of `type_` ("Normal" or "Warning") with `reason` about the object `regarding`.
fn event(type_: &'static str, reason: &'static str, regarding: &'static str) -> Expect {
    Expect::new("POST", EVENTS, Reply::Echo).check(move |b| {
        assert_eq!(b["reason"], reason, "{b}");
        assert_eq!(b["type"], type_, "{b}");
        assert_eq!(b["regarding"]["name"], regarding, "{b}");
        assert_eq!(b["regarding"]["namespace"], NS, "{b}");
    })
}

fn status_patch(check: impl Fn(&Value) + Send + 'static) -> Expect {
    Expect::new("PATCH", format!("{CLUSTERS}/status"), Reply::Echo)
        .query(SSA)
        .check(move |b| {
            assert_eq!(b["kind"], "DfsCluster", "{b}");
            assert_eq!(b["apiVersion"], "ringfs.io/v1alpha1", "{b}");
            assert_eq!(b["status"]["observedGeneration"], 2);
            check(b)
        })
}

/// Reconciles `dc` once against `script`, the API server knowing `dc`; returns the request
/// bodies.
async fn run_cluster(dc: DfsCluster, admin: Arc<FakeAdmin>, script: Vec<Expect>) -> Vec<Value> {
    let known = vec![(CLUSTERS.to_string(), to_value(&dc))];
    let (client, server) = api_server(known, script);
    let ctx = context(client, admin);
    cluster::reconcile(Arc::new(dc), ctx.clone())
        .await
        .expect("reconcile");
    drop(ctx);
    server.finish().await
}

fn to_value(obj: &impl serde::Serialize) -> Value {
    serde_json::to_value(obj).expect("test objects serialize")
}

#[tokio::test]
async fn new_cluster_gets_a_finalizer_first() {
    let admin = Arc::new(FakeAdmin::default());
    let bodies = run_cluster(
        dfs_cluster(3, false),
        admin.clone(),
        vec![Expect::new(
            "PATCH",
            CLUSTERS,
            Reply::Json(to_value(&dfs_cluster(3, true))),
        )],
    )
    .await;
    // Added with a JSON patch that fails if someone else set finalizers meanwhile.
    assert_eq!(
        bodies,
        vec![json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [cluster::FINALIZER]},
        ])]
    );
    assert!(admin.calls().is_empty(), "{:?}", admin.calls());
}

#[tokio::test]
async fn first_reconcile_creates_owned_objects_and_reports_starting() {
    let admin = Arc::new(FakeAdmin::default());
    let mut script = vec![Expect::new(
        "GET",
        "/apis/apps/v1/namespaces/ns/statefulsets/c1",
        Reply::NotFound,
    )];
    script.extend(owned_applies(3));
    script.push(status_patch(|b| {
        assert_eq!(condition(b, "Available")["status"], "False");
        assert_eq!(condition(b, "Available")["reason"], "NodesStarting");
        assert_eq!(condition(b, "Progressing")["reason"], "ScalingUp");
        assert_eq!(
            b["status"]["selector"],
            "app.kubernetes.io/component=node,app.kubernetes.io/instance=c1,app.kubernetes.io/name=ringfs"
        );
    }));
    run_cluster(dfs_cluster(3, true), admin.clone(), script).await;
    assert!(
        admin.calls().is_empty(),
        "no cluster calls before pods are ready"
    );
}

#[tokio::test]
async fn healthy_cluster_is_available() {
    let admin = Arc::new(FakeAdmin::with_members(&[
        (1, "active"),
        (2, "active"),
        (3, "active"),
    ]));
    let mut script = vec![Expect::new(
        "GET",
        "/apis/apps/v1/namespaces/ns/statefulsets/c1",
        Reply::Json(sts_json(3, 3)),
    )];
    script.extend(owned_applies(3));
    script.push(status_patch(|b| {
        assert_eq!(condition(b, "Available")["status"], "True");
        assert_eq!(condition(b, "Progressing")["reason"], "Stable");
        assert_eq!(condition(b, "Degraded")["status"], "False");
        assert_eq!(condition(b, "Rebalancing")["reason"], "Balanced");
        assert_eq!(b["status"]["members"], 3);
        assert_eq!(b["status"]["readyReplicas"], 3);
        assert_eq!(b["status"]["leader"], 1);
    }));
    run_cluster(dfs_cluster(3, true), admin.clone(), script).await;
    assert!(admin.calls().is_empty());
}

#[tokio::test]
async fn scale_up_grows_the_statefulset_and_says_so() {
    let admin = Arc::new(FakeAdmin::with_members(&[
        (1, "active"),
        (2, "active"),
        (3, "active"),
    ]));
    let mut script = vec![
        Expect::new(
            "GET",
            "/apis/apps/v1/namespaces/ns/statefulsets/c1",
            Reply::Json(sts_json(3, 3)),
        ),
        event("Normal", "ScalingUp", "c1"),
    ];
    script.extend(owned_applies(4));
    script.push(status_patch(|b| {
        assert_eq!(condition(b, "Progressing")["status"], "True");
        assert_eq!(condition(b, "Progressing")["reason"], "ScalingUp");
    }));
    run_cluster(dfs_cluster(4, true), admin, script).await;
}

#[tokio::test]
async fn scale_down_drains_the_highest_node_before_shrinking() {
    let admin = Arc::new(FakeAdmin::with_members(&[
        (1, "active"),
        (2, "active"),
        (3, "active"),
        (4, "active"),
    ]));
    let mut script = vec![
        Expect::new(
            "GET",
            "/apis/apps/v1/namespaces/ns/statefulsets/c1",
            Reply::Json(sts_json(4, 4)),
        ),
        event("Normal", "DrainStarted", "c1"),
    ];
    script.extend(owned_applies(4));
    script.push(status_patch(|b| {
        assert_eq!(condition(b, "Progressing")["reason"], "Draining");
        assert_eq!(b["status"]["drainingNode"], 4);
    }));
    run_cluster(dfs_cluster(3, true), admin.clone(), script).await;
    assert_eq!(admin.calls(), vec!["drain 4"]);
}

#[tokio::test]
async fn drained_node_is_removed_then_the_statefulset_shrinks() {
    let admin = Arc::new(FakeAdmin::with_members(&[
        (1, "active"),
        (2, "active"),
        (3, "active"),
        (4, "drained"),
    ]));
    let mut script = vec![
        Expect::new(
            "GET",
            "/apis/apps/v1/namespaces/ns/statefulsets/c1",
            Reply::Json(sts_json(4, 4)),
        ),
        event("Normal", "NodeRemoved", "c1"),
    ];
    script.extend(owned_applies(4));
    script.push(status_patch(|b| {
        assert_eq!(condition(b, "Progressing")["reason"], "RemovingNode");
    }));
    run_cluster(dfs_cluster(3, true), admin.clone(), script).await;
    assert_eq!(admin.calls(), vec!["remove 4"]);

    // Next round: node 4 is gone from the membership, so the pod goes.
    let admin = Arc::new(FakeAdmin::with_members(&[
        (1, "active"),
        (2, "active"),
        (3, "active"),
    ]));
    let mut script = vec![
        Expect::new(
            "GET",
            "/apis/apps/v1/namespaces/ns/statefulsets/c1",
            Reply::Json(sts_json(4, 4)),
        ),
        event("Normal", "ScaledDown", "c1"),
    ];
    script.extend(owned_applies(3));
    script.push(status_patch(|b| {
        assert_eq!(condition(b, "Progressing")["reason"], "ScalingDown");
    }));
    run_cluster(dfs_cluster(3, true), admin.clone(), script).await;
    assert!(admin.calls().is_empty());
}

#[tokio::test]
async fn scale_below_replication_is_refused_with_a_condition() {
    let admin = Arc::new(FakeAdmin::with_members(&[
        (1, "active"),
        (2, "active"),
        (3, "active"),
    ]));
    let mut script = vec![
        Expect::new(
            "GET",
            "/apis/apps/v1/namespaces/ns/statefulsets/c1",
            Reply::Json(sts_json(3, 3)),
        ),
        event("Warning", "ScaleDownRefused", "c1"),
    ];
    script.extend(owned_applies(3));
    script.push(status_patch(|b| {
        let p = condition(b, "Progressing");
        assert_eq!(p["status"], "False");
        assert_eq!(p["reason"], "ScaleDownRefused");
        assert!(
            p["message"]
                .as_str()
                .is_some_and(|m| m.contains("spec.replicas=1 is below spec.replication=3")),
            "{p}"
        );
        assert_eq!(condition(b, "Available")["status"], "True");
    }));
    run_cluster(dfs_cluster(1, true), admin.clone(), script).await;
    assert!(
        admin.calls().is_empty(),
        "nothing drained: {:?}",
        admin.calls()
    );
}

#[tokio::test]
async fn refused_drain_blocks_with_the_clusters_reason() {
    let admin = Arc::new(FakeAdmin::with_members(&[
        (1, "active"),
        (2, "active"),
        (3, "active"),
        (4, "active"),
    ]));
    *admin.drain_refusal.lock().unwrap() = Some("only 3 active nodes would remain".into());
    let mut script = vec![Expect::new(
        "GET",
        "/apis/apps/v1/namespaces/ns/statefulsets/c1",
        Reply::Json(sts_json(4, 4)),
    )];
    script.extend(owned_applies(4));
    script.push(status_patch(|b| {
        let p = condition(b, "Progressing");
        assert_eq!(p["reason"], "ScaleDownBlocked");
        assert!(
            p["message"]
                .as_str()
                .is_some_and(|m| m.contains("only 3 active nodes")),
            "{p}"
        );
    }));
    run_cluster(dfs_cluster(3, true), admin.clone(), script).await;
    assert_eq!(admin.calls(), vec!["drain 4"], "the drain was tried once");
}

/// "20000Pi" passes the CRD's pattern but does not fit in u64 bytes: the reconcile reports
/// it and touches nothing, not even the scale-down the same spec asks for.
#[tokio::test]
async fn invalid_storage_size_is_reported_before_any_change() {
    let admin = Arc::new(FakeAdmin::with_members(&[
        (1, "active"),
        (2, "active"),
        (3, "active"),
        (4, "active"),
    ]));
    let mut dc = dfs_cluster(3, true);
    dc.spec.storage.size = "20000Pi".into();
    let script = vec![status_patch(|b| {
        let d = condition(b, "Degraded");
        assert_eq!(d["status"], "True");
        assert_eq!(d["reason"], "InvalidSpec");
        assert!(
            d["message"]
                .as_str()
                .is_some_and(|m| m.contains("spec.storage.size") && m.contains("too large")),
            "{d}"
        );
    })];
    run_cluster(dc, admin.clone(), script).await;
    assert!(
        admin.calls().is_empty(),
        "no node drained for an invalid spec: {:?}",
        admin.calls()
    );
}

#[tokio::test]
async fn deleting_a_cluster_in_use_waits_for_its_volumes() {
    let mut dc = dfs_cluster(3, true);
    dc.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::now(),
    ));
    let vol = to_value(&dfs_volume("v1", "1Gi", true));
    let known = vec![(CLUSTERS.to_string(), to_value(&dc))];
    let (client, server) = api_server(
        known,
        vec![
            Expect::new(
                "GET",
                "/apis/ringfs.io/v1alpha1/namespaces/ns/dfsvolumes",
                Reply::Json(
                    json!({"apiVersion": "ringfs.io/v1alpha1", "kind": "DfsVolumeList",
                               "metadata": {}, "items": [vol]}),
                ),
            ),
            event("Warning", "DeletionWaiting", "c1"),
        ],
    );
    let ctx = context(client, Arc::new(FakeAdmin::default()));
    let err = cluster::reconcile(Arc::new(dc), ctx.clone())
        .await
        .expect_err("finalizer must stay while volumes exist");
    assert!(
        err.to_string().contains("still used by DfsVolumes v1"),
        "{err}"
    );
    drop(ctx);
    server.finish().await;
}

fn dfs_volume(name: &str, capacity: &str, finalizer: bool) -> DfsVolume {
    let mut v = DfsVolume::new(
        name,
        DfsVolumeSpec {
            cluster: "c1".into(),
            volume_name: None,
            capacity: capacity.into(),
            replication: 2,
            access_mode: AccessMode::ReadWriteMany,
            source: None,
        },
    );
    v.metadata.namespace = Some(NS.into());
    v.metadata.uid = Some(format!("uid-{name}"));
    v.metadata.generation = Some(1);
    v.metadata.resource_version = Some("5".into());
    if finalizer {
        v.metadata.finalizers = Some(vec![volume::FINALIZER.into()]);
    }
    v
}

fn available_cluster() -> Value {
    let mut dc = dfs_cluster(3, true);
    dc.status = Some(DfsClusterStatus {
        conditions: vec![crate::conditions::cond(
            "Available",
            true,
            "ClusterReady",
            "ok",
        )],
        ..Default::default()
    });
    to_value(&dc)
}

const VOLUMES: &str = "/apis/ringfs.io/v1alpha1/namespaces/ns/dfsvolumes";

/// Reconciles `dv` once against `script`, the API server knowing `dv`.
async fn run_volume(dv: DfsVolume, admin: Arc<FakeAdmin>, script: Vec<Expect>) -> Vec<Value> {
    let path = format!("{VOLUMES}/{}", dv.name_any());
    let (client, server) = api_server(vec![(path, to_value(&dv))], script);
    let ctx = context(client, admin);
    volume::reconcile(Arc::new(dv), ctx.clone())
        .await
        .expect("reconcile");
    drop(ctx);
    server.finish().await
}

fn volume_status_patch(check: impl Fn(&Value) + Send + 'static) -> Expect {
    Expect::new("PATCH", format!("{VOLUMES}/data/status"), Reply::Echo)
        .query(SSA)
        .check(move |b| {
            assert_eq!(b["kind"], "DfsVolume", "{b}");
            assert_eq!(b["status"]["observedGeneration"], 1);
            check(b)
        })
}

#[tokio::test]
async fn volume_is_created_in_the_cluster_and_bound() {
    let admin = Arc::new(FakeAdmin::default());
    let script = vec![
        Expect::new("GET", CLUSTERS, Reply::Json(available_cluster())),
        event("Normal", "Created", "data"),
        volume_status_patch(|b| {
            assert_eq!(b["status"]["phase"], "Bound");
            assert_eq!(b["status"]["volumeId"], 11);
            assert_eq!(b["status"]["capacityBytes"], 1u64 << 30);
            assert_eq!(b["status"]["usedBytes"], 0);
            assert_eq!(condition(b, "Ready")["status"], "True");
        }),
    ];
    run_volume(dfs_volume("data", "1Gi", true), admin.clone(), script).await;
    assert_eq!(admin.calls(), vec![format!("create data {} 2", 1u64 << 30)]);
}

#[tokio::test]
async fn volume_from_a_snapshot_is_created_as_a_clone() {
    let admin = Arc::new(FakeAdmin::default());
    let script = vec![
        Expect::new("GET", CLUSTERS, Reply::Json(available_cluster())),
        event("Normal", "Created", "data"),
        volume_status_patch(|b| {
            assert_eq!(b["status"]["phase"], "Bound");
            assert_eq!(condition(b, "Ready")["status"], "True");
        }),
    ];
    let mut dv = dfs_volume("data", "1Gi", true);
    dv.spec.source = Some(ringfs_api::DfsVolumeSource {
        snapshot: Some("nightly".into()),
        volume: None,
    });
    run_volume(dv, admin.clone(), script).await;
    assert_eq!(
        admin.calls(),
        vec![format!(
            "create data {} 2 from Snapshot(\"nightly\")",
            1u64 << 30
        )]
    );
}

#[tokio::test]
async fn volume_with_two_sources_fails_without_a_call() {
    let admin = Arc::new(FakeAdmin::default());
    let script = vec![
        Expect::new("GET", CLUSTERS, Reply::Json(available_cluster())),
        event("Warning", "InvalidSource", "data"),
        volume_status_patch(|b| {
            assert_eq!(b["status"]["phase"], "Failed");
            let c = condition(b, "Ready");
            assert_eq!(c["reason"], "InvalidSource");
            assert!(
                c["message"].as_str().unwrap_or("").contains("exactly one"),
                "{c}"
            );
        }),
    ];
    let mut dv = dfs_volume("data", "1Gi", true);
    dv.spec.source = Some(ringfs_api::DfsVolumeSource {
        snapshot: Some("nightly".into()),
        volume: Some("other".into()),
    });
    run_volume(dv, admin.clone(), script).await;
    assert!(admin.calls().is_empty(), "{:?}", admin.calls());
}

#[tokio::test]
async fn volume_capacity_change_resizes() {
    let admin = Arc::new(FakeAdmin::default());
    admin.volumes.lock().unwrap().push((
        "data".into(),
        crate::admin::VolumeInfo {
            id: 11,
            capacity_bytes: 1 << 30,
            used_bytes: 4096,
            replication: 2,
        },
    ));
    let mut dv = dfs_volume("data", "2Gi", true);
    dv.status = Some(ringfs_api::DfsVolumeStatus {
        capacity_bytes: Some(1 << 30),
        ..Default::default()
    });
    let script = vec![
        Expect::new("GET", CLUSTERS, Reply::Json(available_cluster())),
        event("Normal", "Resized", "data"),
        volume_status_patch(|b| {
            assert_eq!(b["status"]["phase"], "Bound");
            assert_eq!(b["status"]["capacityBytes"], 2u64 << 30);
            assert_eq!(b["status"]["usedBytes"], 4096);
        }),
    ];
    run_volume(dv, admin.clone(), script).await;
    assert_eq!(admin.calls(), vec![format!("resize data {}", 2u64 << 30)]);
}

#[tokio::test]
async fn volume_waits_for_a_missing_cluster() {
    let admin = Arc::new(FakeAdmin::default());
    let script = vec![
        Expect::new("GET", CLUSTERS, Reply::NotFound),
        volume_status_patch(|b| {
            assert_eq!(b["status"]["phase"], "Pending");
            let r = condition(b, "Ready");
            assert_eq!(r["status"], "False");
            assert_eq!(r["reason"], "ClusterNotFound");
            assert!(r["message"]
                .as_str()
                .is_some_and(|m| m.contains("fix spec.cluster")));
        }),
    ];
    run_volume(dfs_volume("data", "1Gi", true), admin.clone(), script).await;
    assert!(admin.calls().is_empty());
}

#[tokio::test]
async fn deleted_volume_is_removed_from_the_cluster_then_released() {
    let admin = Arc::new(FakeAdmin::default());
    admin.volumes.lock().unwrap().push((
        "data".into(),
        crate::admin::VolumeInfo {
            id: 11,
            capacity_bytes: 1 << 30,
            used_bytes: 0,
            replication: 2,
        },
    ));
    let mut dv = dfs_volume("data", "1Gi", true);
    dv.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::now(),
    ));
    let released = to_value(&dfs_volume("data", "1Gi", false));
    let script = vec![
        Expect::new("GET", CLUSTERS, Reply::Json(available_cluster())),
        event("Normal", "Deleted", "data"),
        Expect::new("PATCH", format!("{VOLUMES}/data"), Reply::Json(released)).check(|b| {
            // The finalizer is removed with a JSON patch guarded by a test of its value.
            assert_eq!(
                b,
                &json!([
                    {"op": "test", "path": "/metadata/finalizers/0", "value": volume::FINALIZER},
                    {"op": "remove", "path": "/metadata/finalizers/0"},
                ]),
            );
        }),
    ];
    run_volume(dv, admin.clone(), script).await;
    assert_eq!(admin.calls(), vec!["delete data"]);
    assert!(admin.volumes.lock().unwrap().is_empty());
}

const SECRETS: &str = "/api/v1/namespaces/ns/secrets";

fn with_tls(mut dc: DfsCluster) -> DfsCluster {
    dc.spec.tls = TlsSpec::default();
    dc
}

/// First reconcile of a cluster with TLS: the CA and the three identities are issued
/// into owned Secrets before the StatefulSet, which mounts the node Secret.
#[tokio::test]
async fn tls_cluster_gets_its_certificates_before_its_pods() {
    let admin = Arc::new(FakeAdmin::default());
    let names = ["c1-ca", "c1-node-tls", "c1-client-tls", "c1-admin-tls"];
    let mut script: Vec<Expect> = names
        .iter()
        .map(|n| Expect::new("GET", format!("{SECRETS}/{n}"), Reply::NotFound))
        .collect();
    for n in names {
        script.push(
            Expect::new("PATCH", format!("{SECRETS}/{n}"), Reply::Echo)
                .query(SSA)
                .check(move |b| {
                    assert_eq!(b["metadata"]["ownerReferences"][0]["uid"], "uid-c1");
                    let keys: Vec<&str> = b["data"]
                        .as_object()
                        .unwrap()
                        .keys()
                        .map(String::as_str)
                        .collect();
                    if n == "c1-ca" {
                        assert_eq!(b["type"], "Opaque");
                        assert_eq!(keys, ["ca.crt", "ca.key"]);
                    } else {
                        assert_eq!(b["type"], "kubernetes.io/tls");
                        assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
                        assert!(b["metadata"]["annotations"]["ringfs.io/issued-for"]
                            .as_str()
                            .unwrap()
                            .starts_with("90d"));
                    }
                }),
        );
    }
    script.push(Expect::new("POST", EVENTS, Reply::Echo).check(|b| {
        assert_eq!(b["reason"], "CertificatesIssued", "{b}");
        let note = b["note"].as_str().unwrap();
        assert!(note.contains("c1-node-tls (missing)"), "{note}");
    }));
    script.push(Expect::new(
        "GET",
        "/apis/apps/v1/namespaces/ns/statefulsets/c1",
        Reply::NotFound,
    ));
    let mut applies = owned_applies(3);
    let sts = applies.pop().unwrap();
    applies.push(sts.check(|b| {
        assert_eq!(b["spec"]["replicas"], 3);
        assert_eq!(b["metadata"]["ownerReferences"][0]["uid"], "uid-c1");
        let pod = &b["spec"]["template"]["spec"];
        let tls = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "tls")
            .expect("the node Secret is mounted");
        assert_eq!(tls["secret"]["secretName"], "c1-node-tls");
    }));
    script.extend(applies);
    script.push(status_patch(|b| {
        assert_eq!(condition(b, "Available")["reason"], "NodesStarting");
    }));
    let bodies = run_cluster(with_tls(dfs_cluster(3, true)), admin.clone(), script).await;
    // The node certificate verifies against the CA written with it.
    let pem = |i: usize, key: &str| {
        let b64 = bodies[4 + i]["data"][key].as_str().unwrap().to_string();
        String::from_utf8(base64_decode(&b64)).unwrap()
    };
    let ca = ringfs_tls::CertAuthority::from_pem(&pem(0, "ca.crt"), &pem(0, "ca.key")).unwrap();
    assert_eq!(ca.cert_pem().trim(), pem(1, "ca.crt").trim());
    assert!(admin.calls().is_empty());
}

/// Once the Secrets exist, a reconcile reads them, writes none, and calls the cluster with
/// the admin identity.
#[tokio::test]
async fn tls_cluster_is_called_with_the_admin_identity() {
    let dc = with_tls(dfs_cluster(3, true));
    let names = crate::resources::Names::new("c1", NS);
    let owner = kube::Resource::controller_owner_ref(&dc, &()).unwrap();
    let plan = crate::tls::plan(
        &dc,
        &names,
        &owner,
        &Default::default(),
        std::time::SystemTime::now(),
    )
    .unwrap();
    let admin = Arc::new(FakeAdmin::with_members(&[
        (1, "active"),
        (2, "active"),
        (3, "active"),
    ]));
    let mut script: Vec<Expect> = plan
        .apply
        .iter()
        .map(|(s, _)| {
            Expect::new(
                "GET",
                format!("{SECRETS}/{}", s.metadata.name.as_deref().unwrap()),
                Reply::Json(to_value(s)),
            )
        })
        .collect();
    script.push(Expect::new(
        "GET",
        "/apis/apps/v1/namespaces/ns/statefulsets/c1",
        Reply::Json(sts_json(3, 3)),
    ));
    script.extend(owned_applies(3));
    script.push(status_patch(|b| {
        assert_eq!(condition(b, "Available")["status"], "True");
    }));
    run_cluster(dc, admin.clone(), script).await;
    let tls = admin.tls.lock().unwrap().clone();
    assert!(!tls.is_empty() && tls.iter().all(|t| *t), "{tls:?}");
}

/// A CA Secret that cannot be used is reported on the DfsCluster, never replaced.
#[tokio::test]
async fn unusable_ca_secret_is_reported() {
    let admin = Arc::new(FakeAdmin::default());
    let bad = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "c1-ca", "namespace": NS},
        "data": {"ca.crt": "bm90IGEgY2VydA==", "ca.key": "bm90IGEga2V5"}});
    let mut script = vec![Expect::new(
        "GET",
        format!("{SECRETS}/c1-ca"),
        Reply::Json(bad),
    )];
    for n in ["c1-node-tls", "c1-client-tls", "c1-admin-tls"] {
        script.push(Expect::new(
            "GET",
            format!("{SECRETS}/{n}"),
            Reply::NotFound,
        ));
    }
    script.push(status_patch(|b| {
        let d = condition(b, "Degraded");
        assert_eq!(d["reason"], "CertificatesUnusable");
        let msg = d["message"].as_str().unwrap();
        assert!(msg.contains("Secret c1-ca holds no usable CA"), "{msg}");
    }));
    run_cluster(with_tls(dfs_cluster(3, true)), admin.clone(), script).await;
    assert!(admin.calls().is_empty());
}

fn base64_decode(s: &str) -> Vec<u8> {
    let v: k8s_openapi::ByteString =
        serde_json::from_value(Value::String(s.to_string())).expect("base64");
    v.0
}
