//! The certificates of a DfsCluster with `spec.tls.enabled`: a cluster CA and, issued from
//! it, one identity each for the nodes, for clients (CSI driver, mounts) and for admins
//! (the operator itself, the `ringfs` CLI). All four live in Secrets owned by the
//! DfsCluster; leaves are re-issued when missing, signed by another CA, issued for other
//! names or lifetime, or past two thirds of their lifetime. Nodes re-read their
//! directory every 30 s, so a renewal needs no restart.
//!
//! What to write is decided by [`plan`], a pure function of the existing Secrets and the
//! time, so it is unit-tested without an API server.

use crate::admin::Target;
use crate::context::Context;
use crate::error::Result;
use crate::resources::Names;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::ByteString;
use kube::Api;
use ringfs_api::DfsCluster;
use ringfs_tls::issue::DEFAULT_CA_VALIDITY;
use ringfs_tls::Role;
use ringfs_tls::{CertAuthority, IssueOptions};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};
use tonic::transport::ClientTlsConfig;

/// Label on every certificate Secret: which identity it holds (`ca`, `node`, ...).
pub const ROLE_LABEL: &str = "ringfs.io/tls";
/// Annotation of a leaf Secret: the names and lifetime it was issued for, so a change of
/// either re-issues it.
pub const ISSUED_FOR: &str = "ringfs.io/issued-for";
/// Where node pods mount their Secret (`RINGFS_TLS_DIR`).
pub const NODE_TLS_DIR: &str = "/etc/ringfs/tls";

/// The three identities issued from the cluster CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    Node,
    Client,
    Admin,
}

impl Leaf {
    pub const ALL: [Leaf; 3] = [Leaf::Node, Leaf::Client, Leaf::Admin];

    fn role(self) -> Role {
        match self {
            Leaf::Node => Role::Node,
            Leaf::Client => Role::Client,
            Leaf::Admin => Role::Admin,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Leaf::Node => "node",
            Leaf::Client => "client",
            Leaf::Admin => "admin",
        }
    }

    /// The Secret's name: `<cluster>-node-tls`, `<cluster>-client-tls`, `<cluster>-admin-tls`.
    pub fn secret(self, names: &Names) -> String {
        format!("{}-{}-tls", names.cluster, self.label())
    }
}

/// Name of the Secret holding the cluster CA (`ca.crt`, `ca.key`).
pub fn ca_secret(names: &Names) -> String {
    format!("{}-ca", names.cluster)
}

/// Every name a node is dialled by: its pod name under the headless Service, the client
/// Service, and loopback (probes and tools run inside the pod).
pub fn node_dns_names(names: &Names) -> Vec<String> {
    let headless = format!("{}.{}.svc", names.headless(), names.namespace);
    let client = format!("{}.{}", names.client_service(), names.namespace);
    vec![
        format!("*.{headless}"),
        format!("*.{headless}.cluster.local"),
        names.client_service(),
        client.clone(),
        format!("{client}.svc"),
        format!("{client}.svc.cluster.local"),
        "localhost".into(),
    ]
}

/// What a reconcile writes, and the admin identity the operator calls the nodes with.
pub struct Plan {
    /// Secrets to apply (new or re-issued), each with why.
    pub apply: Vec<(Secret, String)>,
    /// The admin identity: ca.crt, tls.crt, tls.key (PEM).
    pub admin: (String, String, String),
}

fn data(secret: Option<&Secret>, key: &str) -> Option<String> {
    let bytes = secret?.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn issued_for(leaf: Leaf, names: &Names, days: u32) -> String {
    match leaf {
        Leaf::Node => format!("{}d;{}", days, node_dns_names(names).join(",")),
        Leaf::Client | Leaf::Admin => format!("{days}d"),
    }
}

fn secret(
    names: &Names,
    owner: &OwnerReference,
    name: String,
    role: &str,
    type_: &str,
    annotations: Option<BTreeMap<String, String>>,
    files: &[(&str, &str)],
) -> Secret {
    let mut labels = names.labels();
    labels.remove("app.kubernetes.io/component");
    labels.insert(ROLE_LABEL.into(), role.into());
    Secret {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(names.namespace.clone()),
            labels: Some(labels),
            annotations,
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        },
        type_: Some(type_.into()),
        data: Some(
            files
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// Why the leaf in `existing` must be issued anew, or None when it is fine.
fn reissue_reason(
    existing: Option<&Secret>,
    ca_pem: &str,
    want: &str,
    now: SystemTime,
) -> Option<String> {
    let Some(s) = existing else {
        return Some("missing".into());
    };
    let (Some(ca), Some(cert), Some(_key)) = (
        data(Some(s), ringfs_tls::CA_FILE),
        data(Some(s), ringfs_tls::CERT_FILE),
        data(Some(s), ringfs_tls::KEY_FILE),
    ) else {
        return Some("incomplete (ca.crt, tls.crt or tls.key missing)".into());
    };
    if ca.trim() != ca_pem.trim() {
        return Some("issued by another CA".into());
    }
    let have = s
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ISSUED_FOR))
        .map(String::as_str);
    if have != Some(want) {
        return Some("names or lifetime changed".into());
    }
    if ringfs_tls::needs_renewal(&cert, now) {
        return Some("renewal due (less than a third of its lifetime left)".into());
    }
    None
}

/// Decides the Secrets to write. `existing` holds whichever of the four Secrets exist.
/// Fails (with a message saying what to do) only when the CA Secret exists but is unusable:
/// replacing a CA silently would cut every client off.
pub fn plan(
    dc: &DfsCluster,
    names: &Names,
    owner: &OwnerReference,
    existing: &BTreeMap<String, Secret>,
    now: SystemTime,
) -> std::result::Result<Plan, String> {
    let mut apply = Vec::new();
    let ca_name = ca_secret(names);
    let ca = match existing.get(&ca_name) {
        Some(s) => {
            let cert = data(Some(s), ringfs_tls::CA_FILE);
            let key = data(Some(s), ringfs_tls::CA_KEY_FILE);
            let (Some(cert), Some(key)) = (cert, key) else {
                return Err(format!(
                    "Secret {ca_name} lacks ca.crt or ca.key; delete it and the operator issues a \
                     new CA and new certificates for every node and client"
                ));
            };
            CertAuthority::from_pem(&cert, &key).map_err(|e| {
                format!(
                    "Secret {ca_name} holds no usable CA ({e}); delete it and the operator issues \
                     a new CA and new certificates for every node and client"
                )
            })?
        }
        None => {
            let ca = CertAuthority::generate(&names.cluster, DEFAULT_CA_VALIDITY)
                .map_err(|e| format!("cannot generate the cluster CA: {e}"))?;
            apply.push((
                secret(
                    names,
                    owner,
                    ca_name,
                    "ca",
                    "Opaque",
                    None,
                    &[
                        (ringfs_tls::CA_FILE, ca.cert_pem()),
                        (ringfs_tls::CA_KEY_FILE, ca.key_pem()),
                    ],
                ),
                "missing".to_string(),
            ));
            ca
        }
    };
    let days = dc.spec.tls.certificate_days.max(1);
    let mut admin = None;
    for leaf in Leaf::ALL {
        let name = leaf.secret(names);
        let want = issued_for(leaf, names, days);
        let current = existing.get(&name);
        let pems = match reissue_reason(current, ca.cert_pem(), &want, now) {
            None => (
                data(current, ringfs_tls::CA_FILE).unwrap_or_default(),
                data(current, ringfs_tls::CERT_FILE).unwrap_or_default(),
                data(current, ringfs_tls::KEY_FILE).unwrap_or_default(),
            ),
            Some(why) => {
                let mut opts =
                    IssueOptions::new(leaf.role(), format!("{}-{}", names.cluster, leaf.label()))
                        .validity(Duration::from_secs(u64::from(days) * 24 * 3600));
                if leaf == Leaf::Node {
                    opts = opts
                        .dns(node_dns_names(names))
                        .ips([IpAddr::V4(Ipv4Addr::LOCALHOST)]);
                }
                let issued = ca
                    .issue(&opts)
                    .map_err(|e| format!("cannot issue the {} certificate: {e}", leaf.label()))?;
                apply.push((
                    secret(
                        names,
                        owner,
                        name,
                        leaf.label(),
                        "kubernetes.io/tls",
                        Some(BTreeMap::from([(ISSUED_FOR.to_string(), want)])),
                        &[
                            (ringfs_tls::CA_FILE, &issued.ca_pem),
                            (ringfs_tls::CERT_FILE, &issued.cert_pem),
                            (ringfs_tls::KEY_FILE, &issued.key_pem),
                        ],
                    ),
                    why,
                ));
                (issued.ca_pem, issued.cert_pem, issued.key_pem)
            }
        };
        if leaf == Leaf::Admin {
            admin = Some(pems);
        }
    }
    let admin = admin.ok_or_else(|| "no admin identity was planned".to_string())?;
    Ok(Plan { apply, admin })
}

/// The operator's client TLS from an admin Secret (`<cluster>-admin-tls`), when complete.
pub fn admin_tls(secret: &Secret) -> Option<ClientTlsConfig> {
    let ca = data(Some(secret), ringfs_tls::CA_FILE)?;
    let cert = data(Some(secret), ringfs_tls::CERT_FILE)?;
    let key = data(Some(secret), ringfs_tls::KEY_FILE)?;
    Some(ringfs_tls::client_tls_from_pem(&ca, &cert, &key))
}

/// Reads the cluster's certificate Secrets, writes what [`plan`] decides, and returns the
/// admin identity to call the nodes with. The inner error is a problem a human must fix
/// (an unusable CA Secret); the outer one an API failure (retried).
pub async fn ensure(
    ctx: &Context,
    dc: &DfsCluster,
    names: &Names,
    owner: &OwnerReference,
) -> Result<Result<ClientTlsConfig, String>> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let mut existing = BTreeMap::new();
    let wanted = std::iter::once(ca_secret(names)).chain(Leaf::ALL.map(|l| l.secret(names)));
    for name in wanted {
        if let Some(s) = api.get_opt(&name).await? {
            existing.insert(name, s);
        }
    }
    let plan = match plan(dc, names, owner, &existing, SystemTime::now()) {
        Ok(p) => p,
        Err(msg) => return Ok(Err(msg)),
    };
    let mut issued = Vec::new();
    for (secret, why) in &plan.apply {
        ctx.apply(&names.namespace, secret).await?;
        issued.push(format!(
            "{} ({why})",
            secret.metadata.name.as_deref().unwrap_or_default()
        ));
    }
    if !issued.is_empty() {
        ctx.event(
            dc,
            false,
            "CertificatesIssued",
            "Certificates",
            format!("issued {}", issued.join(", ")),
        )
        .await;
    }
    let (ca, cert, key) = &plan.admin;
    Ok(Ok(ringfs_tls::client_tls_from_pem(ca, cert, key)))
}

/// How to call the cluster `dc` as an admin: plaintext, or with its admin Secret. The inner
/// error says what is missing (the Secret is issued by the DfsCluster's reconcile).
pub async fn target(
    ctx: &Context,
    dc: &DfsCluster,
    seeds: Vec<String>,
) -> Result<std::result::Result<Target, String>> {
    if !dc.spec.tls.enabled {
        return Ok(Ok(Target { seeds, tls: None }));
    }
    let ns = dc.metadata.namespace.clone().unwrap_or_default();
    let names = Names::new(&dc.metadata.name.clone().unwrap_or_default(), &ns);
    let name = Leaf::Admin.secret(&names);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let tls = api.get_opt(&name).await?.as_ref().and_then(admin_tls);
    Ok(match tls {
        Some(tls) => Ok(Target {
            seeds,
            tls: Some(tls),
        }),
        None => Err(format!(
            "waiting for the operator to issue the admin certificate Secret {name} of \
             DfsCluster {}",
            names.cluster
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(days: u32) -> DfsCluster {
        let mut spec = crate::testing::cluster_spec(3);
        spec.tls.certificate_days = days;
        let mut dc = DfsCluster::new("c1", spec);
        dc.metadata.namespace = Some("ns".into());
        dc
    }

    fn store(plan: &Plan) -> BTreeMap<String, Secret> {
        plan.apply
            .iter()
            .map(|(s, _)| (s.metadata.name.clone().unwrap(), s.clone()))
            .collect()
    }

    fn names_of(plan: &Plan) -> Vec<String> {
        plan.apply
            .iter()
            .map(|(s, _)| s.metadata.name.clone().unwrap())
            .collect()
    }

    #[test]
    fn first_reconcile_issues_everything_and_the_next_nothing() {
        let dc = cluster(90);
        let n = Names::new("c1", "ns");
        let owner = OwnerReference::default();
        let now = SystemTime::now();
        let first = plan(&dc, &n, &owner, &BTreeMap::new(), now).unwrap();
        assert_eq!(
            names_of(&first),
            ["c1-ca", "c1-node-tls", "c1-client-tls", "c1-admin-tls"]
        );
        let all = store(&first);
        // The node certificate carries the pod and Service names; every leaf its role.
        let node = &all["c1-node-tls"];
        assert_eq!(node.type_.as_deref(), Some("kubernetes.io/tls"));
        let cert = data(Some(node), "tls.crt").unwrap();
        let der = ringfs_tls::material::parse_cert_pem(cert.as_bytes()).unwrap();
        assert_eq!(ringfs_tls::role_of_der(&der), Some(Role::Node));
        assert!(node_dns_names(&n).contains(&"*.c1-nodes.ns.svc".to_string()));
        let admin = data(all.get("c1-admin-tls"), "tls.crt").unwrap();
        let der = ringfs_tls::material::parse_cert_pem(admin.as_bytes()).unwrap();
        assert_eq!(ringfs_tls::role_of_der(&der), Some(Role::Admin));
        assert_eq!(first.admin.1, admin);
        // Idempotent: the same Secrets back give nothing to write and the same admin.
        let again = plan(&dc, &n, &owner, &all, now).unwrap();
        assert!(again.apply.is_empty(), "{:?}", names_of(&again));
        assert_eq!(again.admin, first.admin);
    }

    #[test]
    fn leaves_are_renewed_after_two_thirds_of_their_lifetime() {
        let dc = cluster(30);
        let n = Names::new("c1", "ns");
        let owner = OwnerReference::default();
        let now = SystemTime::now();
        let all = store(&plan(&dc, &n, &owner, &BTreeMap::new(), now).unwrap());
        let day = Duration::from_secs(24 * 3600);
        let early = plan(&dc, &n, &owner, &all, now + 19 * day).unwrap();
        assert!(early.apply.is_empty());
        let due = plan(&dc, &n, &owner, &all, now + 21 * day).unwrap();
        assert_eq!(
            names_of(&due),
            ["c1-node-tls", "c1-client-tls", "c1-admin-tls"],
            "the CA is kept, every leaf renewed"
        );
        assert!(due.apply.iter().all(|(_, why)| why.contains("renewal due")));
        // Renewed leaves are signed by the same CA.
        assert_eq!(
            data(Some(&due.apply[0].0), "ca.crt"),
            data(all.get("c1-ca"), "ca.crt")
        );
    }

    #[test]
    fn another_ca_changed_lifetime_or_missing_leaf_reissues_only_that() {
        let dc = cluster(90);
        let n = Names::new("c1", "ns");
        let owner = OwnerReference::default();
        let now = SystemTime::now();
        let mut all = store(&plan(&dc, &n, &owner, &BTreeMap::new(), now).unwrap());
        all.remove("c1-client-tls");
        let p = plan(&dc, &n, &owner, &all, now).unwrap();
        assert_eq!(names_of(&p), ["c1-client-tls"]);
        assert_eq!(p.apply[0].1, "missing");

        // A new CA (the old CA Secret was deleted): every leaf follows it.
        let mut fresh = store(&plan(&dc, &n, &owner, &BTreeMap::new(), now).unwrap());
        let old_ca = all["c1-ca"].clone();
        fresh.insert("c1-ca".into(), old_ca);
        let p = plan(&dc, &n, &owner, &fresh, now).unwrap();
        assert_eq!(names_of(&p).len(), 3);
        assert!(p.apply.iter().all(|(_, why)| why == "issued by another CA"));

        let longer = cluster(180);
        let p = plan(&longer, &n, &owner, &all, now).unwrap();
        assert!(p
            .apply
            .iter()
            .all(|(_, why)| why == "names or lifetime changed" || why == "missing"));
        assert_eq!(names_of(&p).len(), 3);
    }

    #[test]
    fn an_unusable_ca_is_reported_not_replaced() {
        let dc = cluster(90);
        let n = Names::new("c1", "ns");
        let owner = OwnerReference::default();
        let mut all = store(&plan(&dc, &n, &owner, &BTreeMap::new(), SystemTime::now()).unwrap());
        let ca = all.get_mut("c1-ca").unwrap();
        ca.data
            .as_mut()
            .unwrap()
            .insert("ca.key".into(), ByteString(b"garbage".to_vec()));
        let err = plan(&dc, &n, &owner, &all, SystemTime::now())
            .err()
            .expect("an unusable CA must be reported");
        assert!(err.contains("Secret c1-ca holds no usable CA"), "{err}");
        assert!(err.contains("delete it"), "{err}");
    }
}
