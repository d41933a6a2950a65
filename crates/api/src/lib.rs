//! The ringfs Kubernetes API (`ringfs.io/v1alpha1`): `DfsCluster` (a ringfs cluster run
//! as a StatefulSet) and `DfsVolume` (a volume inside such a cluster).
//!
//! Validation lives in the schema so the API server refuses bad objects before the
//! operator sees them: ranges, enums, patterns, and CEL rules for immutable and
//! cross-field constraints. Unknown fields are rejected by the API server's strict field
//! validation (kubectl's default) because the schema is structural and closed.

// `printcolumn(...)` is repeated once per column inside `#[kube(...)]`; clippy reads the
// repetitions as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::core::crd::merge_crds;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "ringfs.io";
pub const VERSION: &str = "v1alpha1";

/// Partitions of a new cluster when the spec does not say (same as `ringfs-node`).
pub const DEFAULT_PARTITIONS: u32 = 4096;
/// Replicas per partition when the spec does not say (same as `ringfs-node`).
pub const DEFAULT_REPLICATION: u32 = 3;
/// Largest `spec.replicas` the operator manages.
pub const MAX_REPLICAS: i32 = 128;

/// Condition types shared by both kinds.
pub mod conditions {
    pub const AVAILABLE: &str = "Available";
    pub const PROGRESSING: &str = "Progressing";
    pub const DEGRADED: &str = "Degraded";
    pub const REBALANCING: &str = "Rebalancing";
    pub const READY: &str = "Ready";
}

fn default_partitions() -> u32 {
    DEFAULT_PARTITIONS
}

fn default_replication() -> u32 {
    DEFAULT_REPLICATION
}

/// A ringfs cluster: `replicas` storage nodes in a StatefulSet, each with its own
/// persistent volume, forming one Raft group.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "ringfs.io",
    version = "v1alpha1",
    kind = "DfsCluster",
    namespaced,
    status = "DfsClusterStatus",
    shortname = "dfsc",
    category = "ringfs",
    derive = "PartialEq",
    doc = "A ringfs cluster: replicated storage nodes run as a StatefulSet.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Members", type_ = "integer", json_path = ".status.members"),
    printcolumn(name = "RF", type_ = "integer", json_path = ".spec.replication"),
    printcolumn(
        name = "Available",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Available\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Available\")].reason",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("oldSelf.hasValue() || self.replication <= self.replicas")
    .optional_old_self(true)
    .message("spec.replication (copies of each piece of data) must not exceed spec.replicas (nodes) when the cluster is created; lower replication or add replicas"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DfsClusterSpec {
    /// Number of storage nodes. Scaling below `replication` is refused by the operator.
    #[schemars(range(min = 1, max = 128))]
    pub replicas: i32,
    /// Container image holding `ringfs-node`.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Image pull policy of the node containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Partitions of the cluster; fixed when it is created.
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1, max = 1048576))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.partitions is fixed when the cluster is created and cannot be changed; create a new DfsCluster to use another partition count"))]
    pub partitions: u32,
    /// Copies of every piece of data (the largest replication a volume may use); fixed
    /// when the cluster is created.
    #[serde(default = "default_replication")]
    #[schemars(range(min = 1, max = 7))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.replication is fixed when the cluster is created and cannot be changed"))]
    pub replication: u32,
    /// Persistent storage of every node.
    pub storage: StorageSpec,
    /// CPU and memory of every node container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Mutual TLS between the nodes and their clients, with certificates the operator
    /// issues and renews.
    #[serde(default)]
    pub tls: TlsSpec,
}

/// Default lifetime of the node, client and admin certificates the operator issues.
pub const DEFAULT_CERTIFICATE_DAYS: u32 = 90;

fn default_true() -> bool {
    true
}

fn default_certificate_days() -> u32 {
    DEFAULT_CERTIFICATE_DAYS
}

/// Mutual TLS of a cluster. When enabled (the default), the operator keeps a cluster CA in
/// the Secret `<name>-ca` and issues from it `<name>-node-tls` (mounted by every node),
/// `<name>-client-tls` (for the CSI driver and mounts) and `<name>-admin-tls` (for the
/// operator and the `ringfs` CLI); each is re-issued once two thirds of its lifetime have
/// passed, and nodes pick up the new one without a restart.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsSpec {
    /// Require mutual TLS on every connection to the nodes. Fixed when the cluster is
    /// created: nodes with and without TLS cannot talk to each other.
    #[serde(default = "default_true")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.tls.enabled is fixed when the cluster is created: nodes with and without TLS cannot talk to each other; create a new DfsCluster to change it"))]
    pub enabled: bool,
    /// Lifetime in days of the node, client and admin certificates (the CA lives ten
    /// years). Renewed when a third of it is left.
    #[serde(default = "default_certificate_days")]
    #[schemars(range(min = 1, max = 3650))]
    pub certificate_days: u32,
}

impl Default for TlsSpec {
    fn default() -> Self {
        TlsSpec {
            enabled: true,
            certificate_days: DEFAULT_CERTIFICATE_DAYS,
        }
    }
}

/// Persistent storage of one node.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageSpec {
    /// Size of each node's volume, a Kubernetes quantity such as `10Gi`. The node offers
    /// this much capacity to the cluster.
    #[schemars(regex(pattern = r"^[1-9][0-9]*(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"))]
    pub size: String,
    /// StorageClass of the node volumes; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Delete a node's PersistentVolumeClaim after it was drained and removed on scale
    /// down. Off by default: the claim (and its data) stays until deleted by hand.
    #[serde(default)]
    pub delete_claims_on_scale_down: bool,
}

#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Observed state of a DfsCluster.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DfsClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods the StatefulSet runs now (the scale subresource's current replicas).
    #[serde(default)]
    pub replicas: i32,
    /// Pods that pass their readiness probe.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Nodes that are members of the Raft cluster.
    #[serde(default)]
    pub members: i32,
    /// Label selector of the node pods (for the scale subresource and autoscalers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Node id of the current Raft leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<u64>,
    /// Newest layout version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout_version: Option<u64>,
    /// Data movement after a membership change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance: Option<RebalanceProgress>,
    /// Node being drained for a scale-down, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining_node: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Progress of data movement between nodes.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RebalanceProgress {
    pub active: bool,
    pub partitions_left: u32,
    pub partitions_total: u32,
    pub bytes_moved: u64,
    pub bytes_left: u64,
    pub under_replicated: u32,
    /// Estimated seconds to completion; 0 when unknown.
    pub eta_seconds: u64,
}

/// A volume in a DfsCluster of the same namespace.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "ringfs.io",
    version = "v1alpha1",
    kind = "DfsVolume",
    namespaced,
    status = "DfsVolumeStatus",
    shortname = "dfsv",
    category = "ringfs",
    derive = "PartialEq",
    doc = "A ringfs volume (a quota-limited file system tree) in a DfsCluster.",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster"),
    printcolumn(name = "Capacity", type_ = "string", json_path = ".spec.capacity"),
    printcolumn(name = "Used", type_ = "integer", json_path = ".status.usedBytes"),
    printcolumn(name = "RF", type_ = "integer", json_path = ".spec.replication"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("has(self.source) == has(oldSelf.source)")
    .message("spec.source is fixed when the volume is created; it cannot be added or removed later"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DfsVolumeSpec {
    /// Name of the DfsCluster (same namespace) holding the volume.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.cluster cannot be changed; create a new DfsVolume in the other cluster"))]
    pub cluster: String,
    /// Name of the volume inside the cluster; defaults to the object's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.volumeName cannot be changed"))]
    pub volume_name: Option<String>,
    /// Quota of the volume, a Kubernetes quantity such as `10Gi`. May be raised, or
    /// lowered down to what is used.
    #[schemars(regex(pattern = r"^[1-9][0-9]*(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"))]
    pub capacity: String,
    /// Copies of every file block; at most the cluster's replication.
    #[serde(default = "default_replication")]
    #[schemars(range(min = 1, max = 7))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.replication of a volume cannot be changed"))]
    pub replication: u32,
    /// How pods may mount the volume (used by the CSI driver).
    #[serde(default)]
    pub access_mode: AccessMode,
    /// Initial content: a copy-on-write clone of a snapshot or of another volume of the
    /// same cluster. Only used when the volume is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.source cannot be changed after the volume is created"))]
    pub source: Option<DfsVolumeSource>,
}

/// Where a new volume's content comes from: exactly one of `snapshot` and `volume`.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[x_kube(validation = Rule::new("has(self.snapshot) != has(self.volume)")
    .message("spec.source needs exactly one of snapshot (a snapshot name) or volume (a volume to clone)"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DfsVolumeSource {
    /// A snapshot in the cluster (`ringfs snapshot ls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub snapshot: Option<String>,
    /// A volume of the cluster to clone (its name inside the cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub volume: Option<String>,
}

#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessMode {
    #[default]
    ReadWriteMany,
    ReadWriteOnce,
    ReadOnlyMany,
}

#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumePhase {
    /// Waiting for the cluster, or the create call has not succeeded yet.
    Pending,
    /// Exists in the cluster.
    Bound,
    /// The spec cannot be satisfied; see the Ready condition.
    Failed,
    /// Being deleted from the cluster.
    Deleting,
}

/// Observed state of a DfsVolume.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DfsVolumeStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<VolumePhase>,
    /// Volume id inside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_id: Option<u64>,
    /// Quota in bytes as the cluster reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl DfsVolume {
    /// The volume's name inside the cluster.
    pub fn volume_name(&self) -> Option<&str> {
        self.spec
            .volume_name
            .as_deref()
            .or(self.metadata.name.as_deref())
    }
}

/// Parses a Kubernetes quantity restricted to what the schema admits (an integer with an
/// optional binary or decimal suffix) into bytes.
pub fn parse_quantity(q: &str) -> Result<u64, String> {
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{q:?} is not a quantity like 10Gi"))?;
    let mult: u64 = match suffix {
        "" => 1,
        "k" => 1000,
        "M" => 1000u64.pow(2),
        "G" => 1000u64.pow(3),
        "T" => 1000u64.pow(4),
        "P" => 1000u64.pow(5),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        other => {
            return Err(format!(
                "{q:?} has unknown unit {other:?}; use Ki, Mi, Gi, Ti, Pi, k, M, G, T or P"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{q:?} is too large"))
}

/// Directories (relative to the workspace root) holding the committed CRD files: the
/// plain manifests and the Helm chart's copy.
pub const CRD_DIRS: [&str; 2] = ["crds", "charts/ringfs/crds"];

/// The CRDs as `(file name, YAML)` pairs, in the order `crdgen` writes them.
pub fn crd_files() -> Vec<(&'static str, String)> {
    let docs = [
        ("dfsclusters.ringfs.io.yaml", DfsCluster::crd()),
        ("dfsvolumes.ringfs.io.yaml", DfsVolume::crd()),
    ];
    docs.into_iter()
        .map(|(file, crd)| {
            // merge_crds with one version is the identity; it validates the version set.
            let crd = merge_crds(vec![crd], VERSION)
                .unwrap_or_else(|e| unreachable!("a single-version CRD always merges: {e}"));
            (file, to_yaml(&crd))
        })
        .collect()
}

fn to_yaml<T: Serialize>(v: &T) -> String {
    let json = serde_json::to_value(v)
        .unwrap_or_else(|e| unreachable!("generated CRDs always serialize: {e}"));
    let mut out =
        String::from("# Generated by `cargo run --bin crdgen` from crates/api; do not edit.\n");
    yaml::write(&mut out, &json, 0, false);
    out
}

mod yaml;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("10Gi"), Ok(10 << 30));
        assert_eq!(parse_quantity("5M"), Ok(5_000_000));
        assert_eq!(parse_quantity("123"), Ok(123));
        assert!(parse_quantity("1Xi").is_err());
        assert!(parse_quantity("99999999999Pi").is_err());
    }

    #[test]
    fn cluster_crd_has_scale_validations_and_columns() {
        let crd = serde_json::to_value(DfsCluster::crd()).unwrap();
        let v = &crd["spec"]["versions"][0];
        assert_eq!(
            v["subresources"]["scale"]["specReplicasPath"],
            ".spec.replicas"
        );
        assert_eq!(
            v["subresources"]["scale"]["labelSelectorPath"],
            ".status.selector"
        );
        let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(
            spec["properties"]["replicas"]["minimum"].as_f64(),
            Some(1.0)
        );
        assert_eq!(
            spec["properties"]["partitions"]["x-kubernetes-validations"][0]["rule"],
            "self == oldSelf"
        );
        assert_eq!(spec["x-kubernetes-validations"][0]["optionalOldSelf"], true);
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "dfsc");
        assert!(v["additionalPrinterColumns"].as_array().unwrap().len() >= 5);
    }

    #[test]
    fn volume_name_defaults_to_object_name() {
        let mut v = DfsVolume::new(
            "data",
            DfsVolumeSpec {
                cluster: "c".into(),
                volume_name: None,
                capacity: "1Gi".into(),
                replication: 3,
                access_mode: AccessMode::default(),
                source: None,
            },
        );
        assert_eq!(v.volume_name(), Some("data"));
        v.spec.volume_name = Some("other".into());
        assert_eq!(v.volume_name(), Some("other"));
    }
}
