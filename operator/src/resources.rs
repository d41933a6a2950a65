//! The Kubernetes objects a DfsCluster owns, built as pure functions of the spec so they
//! are unit-tested without an API server and applied with server-side apply.

use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy,
    StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, ConfigMapEnvSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, TopologySpreadConstraint, Volume,
    VolumeMount, VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use ringfs_api::DfsCluster;
use std::collections::BTreeMap;

pub const GRPC_PORT: i32 = 7420;
pub const HTTP_PORT: i32 = 7421;
const DATA_DIR: &str = "/data";

/// Names and addresses derived from a DfsCluster's name and namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Names {
    pub cluster: String,
    pub namespace: String,
}

impl Names {
    pub fn new(cluster: &str, namespace: &str) -> Names {
        Names {
            cluster: cluster.to_string(),
            namespace: namespace.to_string(),
        }
    }
    pub fn statefulset(&self) -> String {
        self.cluster.clone()
    }
    /// Headless Service giving every node pod a stable DNS name.
    pub fn headless(&self) -> String {
        format!("{}-nodes", self.cluster)
    }
    /// ClusterIP Service over ready nodes, for clients.
    pub fn client_service(&self) -> String {
        self.cluster.clone()
    }
    pub fn config_map(&self) -> String {
        format!("{}-config", self.cluster)
    }
    pub fn pdb(&self) -> String {
        self.cluster.clone()
    }
    /// gRPC address of the node pod with this StatefulSet ordinal.
    pub fn node_addr(&self, ordinal: i32) -> String {
        format!(
            "{}-{ordinal}.{}.{}.svc:{GRPC_PORT}",
            self.cluster,
            self.headless(),
            self.namespace
        )
    }
    /// Address of the client Service.
    pub fn client_addr(&self) -> String {
        format!(
            "{}.{}.svc:{GRPC_PORT}",
            self.client_service(),
            self.namespace
        )
    }
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".into(), "ringfs".into()),
            ("app.kubernetes.io/instance".into(), self.cluster.clone()),
            ("app.kubernetes.io/component".into(), "node".into()),
            (
                "app.kubernetes.io/managed-by".into(),
                "ringfs-operator".into(),
            ),
        ])
    }
    /// Includes the component, so a Helm release named like the cluster (whose operator
    /// pods carry the same name and instance labels) is never selected.
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".into(), "ringfs".into()),
            ("app.kubernetes.io/instance".into(), self.cluster.clone()),
            ("app.kubernetes.io/component".into(), "node".into()),
        ])
    }
    /// The selector as a string, for the scale subresource.
    pub fn selector_string(&self) -> String {
        self.selector_labels()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Node id of the pod with this ordinal (ids start at 1).
pub fn node_id(ordinal: i32) -> u64 {
    u64::try_from(ordinal).unwrap_or(0) + 1
}

/// Ordinal of the pod running this node id, when it is one of ours.
pub fn ordinal(node_id: u64) -> Option<i32> {
    node_id.checked_sub(1).and_then(|o| i32::try_from(o).ok())
}

fn meta(names: &Names, name: String, owner: &OwnerReference) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(names.labels()),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    }
}

/// Node capacity in the `ringfs-node` size syntax, from the storage size quantity.
pub fn capacity_arg(size: &str) -> Result<String, String> {
    ringfs_api::parse_quantity(size).map(|b| b.to_string())
}

pub fn config_map(
    dc: &DfsCluster,
    names: &Names,
    owner: &OwnerReference,
) -> Result<ConfigMap, String> {
    let capacity =
        capacity_arg(&dc.spec.storage.size).map_err(|e| format!("spec.storage.size: {e}"))?;
    let data = BTreeMap::from([
        ("RINGFS_DATA_DIR".to_string(), DATA_DIR.to_string()),
        ("RINGFS_LISTEN".into(), format!("0.0.0.0:{GRPC_PORT}")),
        ("RINGFS_HTTP_LISTEN".into(), format!("0.0.0.0:{HTTP_PORT}")),
        ("RINGFS_PARTITIONS".into(), dc.spec.partitions.to_string()),
        ("RINGFS_REPLICATION".into(), dc.spec.replication.to_string()),
        ("RINGFS_CAPACITY".into(), capacity),
        ("RINGFS_SEED".into(), names.node_addr(0)),
        (
            "RINGFS_PEER_DOMAIN".into(),
            format!("{}.{}.svc", names.headless(), names.namespace),
        ),
    ]);
    Ok(ConfigMap {
        metadata: meta(names, names.config_map(), owner),
        data: Some(data),
        ..Default::default()
    })
}

fn service_ports() -> Vec<ServicePort> {
    vec![
        ServicePort {
            name: Some("grpc".into()),
            port: GRPC_PORT,
            target_port: Some(IntOrString::Int(GRPC_PORT)),
            ..Default::default()
        },
        ServicePort {
            name: Some("http".into()),
            port: HTTP_PORT,
            target_port: Some(IntOrString::Int(HTTP_PORT)),
            ..Default::default()
        },
    ]
}

pub fn headless_service(names: &Names, owner: &OwnerReference) -> Service {
    Service {
        metadata: meta(names, names.headless(), owner),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            // Raft peers must find each other before they are ready (joining is what
            // makes them ready).
            publish_not_ready_addresses: Some(true),
            selector: Some(names.selector_labels()),
            ports: Some(service_ports()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn client_service(names: &Names, owner: &OwnerReference) -> Service {
    Service {
        metadata: meta(names, names.client_service(), owner),
        spec: Some(ServiceSpec {
            selector: Some(names.selector_labels()),
            ports: Some(service_ports()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn pdb(names: &Names, owner: &OwnerReference) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(names, names.pdb(), owner),
        spec: Some(PodDisruptionBudgetSpec {
            // One node at a time keeps the Raft majority and every partition readable.
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(names.selector_labels()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The node start script: ordinal 0 bootstraps the cluster on first start, the others
/// join through it; the node id is the ordinal plus one. Both are no-ops once the data
/// directory holds cluster state.
const START_SCRIPT: &str = r#"ord="${POD_NAME##*-}"
id=$((ord + 1))
export RINGFS_NODE_ID="$id"
export RINGFS_ADVERTISE="${POD_NAME}.${RINGFS_PEER_DOMAIN}:7420"
if [ "$ord" = 0 ]; then
  exec ringfs-node --bootstrap
else
  exec ringfs-node --join "$RINGFS_SEED"
fi
"#;

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(HTTP_PORT),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(5),
        ..Default::default()
    }
}

/// The unprivileged user and group the node process runs as.
pub const NODE_UID: i64 = 65532;

/// Makes the data directory the node user's before the node starts: a new volume whose
/// type ignores fsGroup (hostPath, some local provisioners), or data written by an older
/// version that ran as root. Runs as root with only the capabilities `chown` needs, and
/// does nothing when the directory already belongs to the node user.
fn data_owner(dc: &DfsCluster) -> Container {
    Container {
        name: "data-owner".into(),
        image: Some(dc.spec.image.clone()),
        image_pull_policy: dc.spec.image_pull_policy.map(|p| p.as_str().to_string()),
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            format!(
                "[ \"$(stat -c %u:%g {DATA_DIR})\" = {NODE_UID}:{NODE_UID} ] || chown -R {NODE_UID}:{NODE_UID} {DATA_DIR}"
            ),
        ]),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".into(),
            mount_path: DATA_DIR.into(),
            ..Default::default()
        }]),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: Some(vec![
                    "CHOWN".into(),
                    "DAC_READ_SEARCH".into(),
                    "FOWNER".into(),
                ]),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The StatefulSet of the nodes. `partition`: pods with a lower ordinal keep the old pod
/// template when it changes (see [`crate::cluster::rollout_partition`]: the operator
/// lets one pod update at a time, and only while the cluster is healthy).
pub fn statefulset(
    dc: &DfsCluster,
    names: &Names,
    owner: &OwnerReference,
    replicas: i32,
    partition: i32,
) -> StatefulSet {
    let labels = names.labels();
    let storage = &dc.spec.storage;
    let mut env = vec![EnvVar {
        name: "POD_NAME".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }];
    let mut mounts = vec![
        VolumeMount {
            name: "data".into(),
            mount_path: DATA_DIR.into(),
            ..Default::default()
        },
        // The root file system is read-only; scratch space for the process.
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
    ];
    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }];
    if dc.spec.tls.enabled {
        // The node re-reads this directory every 30 s: the kubelet refreshes the files
        // when the operator renews the Secret, so no restart is needed.
        env.push(EnvVar {
            name: "RINGFS_TLS_DIR".into(),
            value: Some(crate::tls::NODE_TLS_DIR.into()),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "tls".into(),
            mount_path: crate::tls::NODE_TLS_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(crate::tls::Leaf::Node.secret(names)),
                // Group-readable: the node runs as NODE_UID with fsGroup NODE_UID.
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let container = Container {
        name: "node".into(),
        image: Some(dc.spec.image.clone()),
        image_pull_policy: dc.spec.image_pull_policy.map(|p| p.as_str().to_string()),
        command: Some(vec!["sh".into(), "-c".into(), START_SCRIPT.into()]),
        env: Some(env),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: names.config_map(),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ports: Some(vec![
            ContainerPort {
                name: Some("grpc".into()),
                container_port: GRPC_PORT,
                ..Default::default()
            },
            ContainerPort {
                name: Some("http".into()),
                container_port: HTTP_PORT,
                ..Default::default()
            },
        ]),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        liveness_probe: Some(http_probe("/healthz", 10, 6)),
        resources: dc.spec.resources.clone(),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let spread_term = PodAffinityTerm {
        label_selector: Some(LabelSelector {
            match_labels: Some(names.selector_labels()),
            ..Default::default()
        }),
        topology_key: "kubernetes.io/hostname".into(),
        ..Default::default()
    };
    let pod = PodSpec {
        containers: vec![container],
        affinity: Some(Affinity {
            // Preferred, not required: a small cluster still schedules on fewer hosts.
            pod_anti_affinity: Some(PodAntiAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    WeightedPodAffinityTerm {
                        weight: 100,
                        pod_affinity_term: spread_term,
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        topology_spread_constraints: Some(vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "topology.kubernetes.io/zone".into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(LabelSelector {
                match_labels: Some(names.selector_labels()),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        termination_grace_period_seconds: Some(30),
        volumes: Some(volumes),
        init_containers: Some(vec![data_owner(dc)]),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(NODE_UID),
            run_as_group: Some(NODE_UID),
            // Volumes that support it (most PersistentVolumes, Secrets) are made group-
            // owned by this group; the init container covers those that do not (hostPath).
            fs_group: Some(NODE_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        automount_service_account_token: Some(false),
        ..Default::default()
    };
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".into()),
            labels: Some(names.selector_labels()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(storage.size.clone()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    StatefulSet {
        metadata: meta(names, names.statefulset(), owner),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(names.headless()),
            // Nodes join through ordinal 0 with retries, so they may start together.
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy {
                    partition: Some(partition),
                    max_unavailable: None,
                }),
            }),
            selector: LabelSelector {
                match_labels: Some(names.selector_labels()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            volume_claim_templates: Some(vec![claim]),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".into()),
                    when_scaled: Some(
                        if storage.delete_claims_on_scale_down {
                            "Delete"
                        } else {
                            "Retain"
                        }
                        .into(),
                    ),
                },
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> DfsCluster {
        let mut spec = crate::testing::cluster_spec(3);
        spec.storage.storage_class_name = Some("fast".into());
        spec.storage.delete_claims_on_scale_down = true;
        let mut dc = DfsCluster::new("c1", spec);
        dc.metadata.namespace = Some("ns".into());
        dc.metadata.uid = Some("uid-1".into());
        dc
    }

    #[test]
    fn addresses_and_ids() {
        let n = Names::new("c1", "ns");
        assert_eq!(n.node_addr(2), "c1-2.c1-nodes.ns.svc:7420");
        assert_eq!(n.client_addr(), "c1.ns.svc:7420");
        assert_eq!(node_id(0), 1);
        assert_eq!(ordinal(3), Some(2));
        assert_eq!(ordinal(0), None);
        assert_eq!(
            n.selector_string(),
            "app.kubernetes.io/component=node,app.kubernetes.io/instance=c1,app.kubernetes.io/name=ringfs"
        );
    }

    #[test]
    fn statefulset_carries_the_spec() {
        let dc = cluster();
        let n = Names::new("c1", "ns");
        let owner = OwnerReference::default();
        let sts = statefulset(&dc, &n, &owner, 4, 4);
        let spec = sts.spec.unwrap();
        assert_eq!(spec.replicas, Some(4));
        assert_eq!(spec.service_name.as_deref(), Some("c1-nodes"));
        let claim = &spec.volume_claim_templates.unwrap()[0];
        let cs = claim.spec.as_ref().unwrap();
        assert_eq!(cs.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            cs.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
            "1Gi"
        );
        assert_eq!(
            spec.persistent_volume_claim_retention_policy
                .unwrap()
                .when_scaled
                .as_deref(),
            Some("Delete")
        );
        let c = &spec.template.spec.unwrap().containers[0];
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/readyz")
        );
        assert!(c.command.as_ref().unwrap()[2].contains("--bootstrap"));
        // TLS (the default): the node Secret is mounted and named to the node.
        let env = c.env.as_ref().unwrap();
        assert!(env
            .iter()
            .any(|e| e.name == "RINGFS_TLS_DIR" && e.value.as_deref() == Some("/etc/ringfs/tls")));
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
    }

    #[test]
    fn nodes_run_unprivileged_and_only_the_init_container_may_chown() {
        let dc = cluster();
        let n = Names::new("c1", "ns");
        let pod = statefulset(&dc, &n, &OwnerReference::default(), 3, 3)
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        let psc = pod.security_context.unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.run_as_user, Some(NODE_UID));
        assert_eq!(psc.fs_group, Some(NODE_UID));
        let init = &pod.init_containers.unwrap()[0];
        let caps = init
            .security_context
            .as_ref()
            .unwrap()
            .capabilities
            .as_ref()
            .unwrap();
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert!(caps.add.as_ref().unwrap().contains(&"CHOWN".to_string()));
        let script = &init.command.as_ref().unwrap()[2];
        assert!(script.contains("chown -R 65532:65532 /data"), "{script}");
        // The node container itself adds nothing.
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert!(sc.capabilities.as_ref().unwrap().add.is_none());
        assert!(sc.run_as_user.is_none());
    }

    #[test]
    fn node_secret_is_mounted_only_with_tls() {
        let n = Names::new("c1", "ns");
        let owner = OwnerReference::default();
        let volumes = |dc: &DfsCluster| {
            statefulset(dc, &n, &owner, 3, 3)
                .spec
                .unwrap()
                .template
                .spec
                .unwrap()
                .volumes
                .unwrap()
        };
        let dc = cluster();
        let tls = volumes(&dc);
        let secret = tls.iter().find(|v| v.name == "tls").unwrap();
        assert_eq!(
            secret.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("c1-node-tls")
        );
        let mut plain = cluster();
        plain.spec.tls.enabled = false;
        assert!(volumes(&plain).iter().all(|v| v.name != "tls"));
    }

    #[test]
    fn config_map_has_node_settings() {
        let dc = cluster();
        let n = Names::new("c1", "ns");
        let cm = config_map(&dc, &n, &OwnerReference::default()).unwrap();
        let d = cm.data.unwrap();
        assert_eq!(d["RINGFS_CAPACITY"], (1u64 << 30).to_string());
        assert_eq!(d["RINGFS_PARTITIONS"], "64");
        assert_eq!(d["RINGFS_SEED"], "c1-0.c1-nodes.ns.svc:7420");
    }
}
