//! `ringfs-csi`: the CSI driver `csi.ringfs.io`. One binary serves Identity plus the
//! Controller service (`--mode controller`), the Node service (`--mode node`) or both,
//! on a Unix socket.

pub mod authority;
pub mod backend;
pub mod caps;
pub mod cgroups;
pub mod controller;
pub mod error;
pub mod identity;
pub mod kube_backend;
pub mod mounts;
pub mod names;
pub mod node;
pub mod registration;

use anyhow::{bail, Context};
use ringfs_client::Cluster;
use ringfs_proto::csi::controller_server::ControllerServer;
use ringfs_proto::csi::identity_server::IdentityServer;
use ringfs_proto::csi::node_server::NodeServer;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Identity + Controller + Node (single-process setups and tests).
    All,
    /// Identity + Controller (the controller Deployment).
    Controller,
    /// Identity + Node (the node DaemonSet).
    Node,
}

fn parse_size(s: &str) -> Result<u64, String> {
    ringfs_core::units::parse_size(s).map_err(|e| e.to_string())
}

#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "ringfs-csi",
    version,
    about = "The ringfs CSI driver (csi.ringfs.io)"
)]
pub struct Config {
    /// Socket to serve on: unix:///path or a plain path.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    pub endpoint: String,
    /// Services to serve.
    #[arg(long, value_enum, default_value = "all", env = "CSI_MODE")]
    pub mode: Mode,
    #[arg(long, default_value = "csi.ringfs.io")]
    pub driver_name: String,
    /// ringfs cluster addresses (any nodes; comma-separated).
    #[arg(long, env = "RINGFS_CLUSTER", value_delimiter = ',', required = true)]
    pub cluster: Vec<String>,
    /// Name of that cluster; StorageClass `cluster` parameters must match it.
    #[arg(long, env = "RINGFS_CLUSTER_NAME", default_value = "ringfs")]
    pub cluster_name: String,
    /// Capacity of volumes whose request gives no size.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub default_capacity: u64,
    /// This node's id as reported to Kubernetes (the node name).
    #[arg(long, env = "CSI_NODE_ID")]
    pub node_id: Option<String>,
    /// This node's zone (reported as topology).
    #[arg(long, env = "CSI_NODE_ZONE")]
    pub zone: Option<String>,
    /// The `ringfs` CLI used for FUSE mounts (default: next to this binary, else PATH).
    #[arg(long, env = "RINGFS_BIN")]
    pub ringfs_bin: Option<PathBuf>,
    /// Directory for mount logs.
    #[arg(long, default_value = "/var/lib/ringfs-csi")]
    pub state_dir: PathBuf,
    /// Only ringfs mounts below this directory are adopted and repaired.
    #[arg(long, default_value = "/var/lib/kubelet")]
    pub managed_root: PathBuf,
    /// Seconds a mount may take to answer statfs before it counts as dead.
    #[arg(long, default_value_t = 5)]
    pub health_timeout_secs: u64,
    /// Seconds between checks that repair dead mounts (0: only on stage/publish).
    #[arg(long, default_value_t = 30)]
    pub repair_interval_secs: u64,
    /// Register with the kubelet (no node-driver-registrar sidecar needed): the path of
    /// the CSI socket on the host, e.g.
    /// /var/lib/kubelet/plugins/csi.ringfs.io/csi.sock. Node mode only.
    #[arg(long)]
    pub kubelet_registration_path: Option<String>,
    /// The kubelet's plugins_registry directory as mounted into this container.
    #[arg(long, default_value = "/registration")]
    pub registration_dir: PathBuf,
    /// Cgroup FUSE daemons are moved into, so that they outlive this plugin's container
    /// (see the cgroups module; needs hostPID). Empty: they stay in the plugin's cgroup.
    #[arg(long, default_value = "")]
    pub mount_cgroup: String,
    /// Keep CSI volumes as DfsVolume objects of this DfsCluster (reconciled by the ringfs
    /// operator), so Kubernetes shows them; without it the controller creates volumes in
    /// the cluster directly.
    #[arg(long, env = "RINGFS_DFS_CLUSTER")]
    pub dfs_cluster: Option<String>,
    /// Namespace of that DfsCluster and its DfsVolumes (default: this pod's).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// Seconds a call waits for the operator before answering `aborted` (then retried).
    #[arg(long, default_value_t = 8)]
    pub operator_wait_secs: u64,
    /// The host's cgroup file system (/sys/fs/cgroup) as mounted into this container.
    #[arg(long, default_value = "/sys/fs/cgroup")]
    pub mount_cgroup_root: PathBuf,
    /// Mutual TLS towards the ringfs nodes: a directory with ca.crt, tls.crt and tls.key
    /// (an `admin` certificate of the cluster's CA: the controller creates and deletes
    /// volumes). The node plugin hands it to the `ringfs mount` processes it starts.
    #[arg(long, env = "RINGFS_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
}

fn socket_path(endpoint: &str) -> anyhow::Result<PathBuf> {
    let p = endpoint
        .strip_prefix("unix://")
        .unwrap_or(endpoint)
        .to_string();
    if !p.starts_with('/') {
        bail!("--endpoint {endpoint:?} must be unix:///absolute/path or an absolute path");
    }
    Ok(PathBuf::from(p))
}

/// Binds the CSI socket with mode 0660. A socket file nobody answers on is a leftover of
/// a previous instance and is replaced; a live one means another plugin runs: refuse.
pub async fn bind_socket(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!("{} exists and is not a socket; remove it", path.display());
        }
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            bail!("another process serves {}; stop it first", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    // SAFETY: umask only changes this process's file-creation mask; restored at once, so
    // the socket is never reachable with wider permissions than 0660.
    let old = unsafe { libc::umask(0o117) };
    let l = tokio::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let l = l.with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod 0660 {}", path.display()))?;
    Ok(l)
}

fn default_ringfs_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("ringfs")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("ringfs"))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Waits until `dir` holds an identity. On Kubernetes the driver may start before the
/// operator has issued the DfsCluster's client certificate: the Secret volume is optional
/// and filled in by the kubelet once the Secret exists. Files that exist are loaded (and
/// fail the start with a clear error if unusable) by the caller.
async fn wait_for_identity(dir: &std::path::Path) {
    let started = std::time::Instant::now();
    let mut said = None::<std::time::Instant>;
    while !dir.join(ringfs_tls::CERT_FILE).exists() || !dir.join(ringfs_tls::KEY_FILE).exists() {
        if said.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
            tracing::warn!(
                dir = %dir.display(),
                waited_secs = started.elapsed().as_secs(),
                "waiting for a TLS identity (ca.crt, tls.crt, tls.key); on Kubernetes the \
                 operator issues <dfsCluster>-client-tls once the DfsCluster exists"
            );
            said = Some(std::time::Instant::now());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// How often TLS directories are checked for renewed certificates.
const TLS_RELOAD: Duration = Duration::from_secs(30);

/// The identity FUSE mounts present: a copy of `--tls-dir` under the state directory,
/// kept current by a background task. Mounts outlive this pod (and the Secret volume the
/// kubelet mounts into it), but the state directory is the host's, so mounts started by
/// an earlier instance of the plugin see renewed certificates too (they re-read their
/// directory like the plugin does).
fn mount_tls_dir(cfg: &Config) -> anyhow::Result<Option<PathBuf>> {
    let Some(src) = cfg.tls_dir.clone() else {
        return Ok(None);
    };
    let dst = cfg.state_dir.join("tls");
    ringfs_tls::TlsMaterial::mirror_dir(&src, &dst)
        .with_context(|| format!("copying the TLS identity to {}", dst.display()))?;
    let d = dst.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TLS_RELOAD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match ringfs_tls::TlsMaterial::mirror_dir(&src, &d) {
                Ok(true) => {
                    tracing::info!(dir = %d.display(), "renewed TLS identity handed to the mounts")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot hand the TLS identity to the mounts; they keep the current one")
                }
            }
        }
    });
    Ok(Some(dst))
}

/// Serves until SIGINT/SIGTERM.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    if let Some(dir) = &cfg.tls_dir {
        wait_for_identity(dir).await;
    }
    let pool = ringfs_client::ChannelPool::secured(cfg.tls_dir.as_deref(), None)?;
    if let Some(dir) = &cfg.tls_dir {
        // A renewed Secret reaches this directory through the kubelet; follow it.
        pool.watch_tls_dir(dir.clone(), TLS_RELOAD);
    }
    let cluster = Cluster::with_pool(cfg.cluster.clone(), pool)?;
    let path = socket_path(&cfg.endpoint)?;
    let listener = bind_socket(&path).await?;
    let serve_controller = cfg.mode != Mode::Node;
    let serve_node = cfg.mode != Mode::Controller;

    let mut router = tonic::transport::Server::builder().add_service(IdentityServer::new(
        identity::IdentityService {
            driver_name: cfg.driver_name.clone(),
            controller: serve_controller,
        },
    ));
    if serve_controller {
        let direct = backend::ClusterBackend {
            cluster: cluster.clone(),
        };
        let backend: Arc<dyn backend::VolumeBackend> = match &cfg.dfs_cluster {
            None => Arc::new(direct),
            Some(dc) => {
                let client = kube::Client::try_default().await.context(
                    "--dfs-cluster needs the Kubernetes API (in-cluster config or KUBECONFIG)",
                )?;
                let ns = cfg
                    .namespace
                    .clone()
                    .unwrap_or_else(|| client.default_namespace().to_string());
                tracing::info!(cluster = %dc, namespace = %ns, "volumes are DfsVolume objects");
                Arc::new(kube_backend::KubeBackend {
                    inner: direct,
                    volumes: kube::Api::namespaced(client.clone(), &ns),
                    clusters: kube::Api::namespaced(client, &ns),
                    cluster: dc.clone(),
                    wait: Duration::from_secs(cfg.operator_wait_secs.max(1)),
                })
            }
        };
        router = router.add_service(ControllerServer::new(controller::ControllerService {
            backend,
            cluster_name: cfg.cluster_name.clone(),
            default_capacity: cfg.default_capacity,
        }));
    }
    if serve_node {
        let mount_cgroups = if cfg.mount_cgroup.is_empty() {
            None
        } else {
            let c = cgroups::MountCgroups::prepare(&cfg.mount_cgroup_root, &cfg.mount_cgroup)?;
            tracing::info!(cgroup = %c.description, "FUSE daemons will run outside this container");
            Some(Arc::new(c))
        };
        let node = Arc::new(node::NodeService::new(
            node::NodeConfig {
                node_id: cfg.node_id.clone().unwrap_or_else(hostname),
                zone: cfg.zone.clone(),
                cluster_name: cfg.cluster_name.clone(),
                ringfs_bin: cfg.ringfs_bin.clone().unwrap_or_else(default_ringfs_bin),
                seeds: cfg.cluster.clone(),
                tls_dir: mount_tls_dir(&cfg)?,
                state_dir: cfg.state_dir.clone(),
                managed_root: cfg.managed_root.clone(),
                health_timeout: Duration::from_secs(cfg.health_timeout_secs.max(1)),
                mount_cgroups,
            },
            cluster.clone(),
        ));
        // Re-adopt what a previous instance mounted, repairing mounts that died meanwhile.
        match node.sweep(true).await {
            Ok((ok, dead)) => {
                tracing::info!(healthy = ok, repaired = dead, "existing mounts adopted")
            }
            Err(e) => tracing::warn!(error = %e, "could not scan existing mounts"),
        }
        if cfg.repair_interval_secs > 0 {
            let n = node.clone();
            let every = Duration::from_secs(cfg.repair_interval_secs);
            tokio::spawn(async move {
                let mut t = tokio::time::interval(every);
                t.tick().await;
                loop {
                    t.tick().await;
                    if let Err(e) = n.sweep(true).await {
                        tracing::warn!(error = %e, "mount check failed");
                    }
                }
            });
        }
        router = router.add_service(NodeServer::from_arc(node));
    }
    tracing::info!(socket = %path.display(), mode = ?cfg.mode, "serving CSI");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = stop_tx.send(true);
    });
    let registration = match (&cfg.kubelet_registration_path, serve_node) {
        (Some(endpoint), true) => {
            let registrar = registration::Registrar {
                driver_name: cfg.driver_name.clone(),
                endpoint: endpoint.clone(),
                registered: Default::default(),
            };
            let bound = registration::bind(&cfg.registration_dir, &cfg.driver_name)
                .await
                .context("the kubelet registration socket (--registration-dir)")?;
            let stop = stopped(stop_rx.clone());
            Some(tokio::spawn(registration::serve(bound, registrar, stop)))
        }
        (Some(_), false) => {
            bail!("--kubelet-registration-path is for the node plugin (--mode node or all)")
        }
        (None, _) => None,
    };
    router
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            stopped(stop_rx),
        )
        .await
        .context("serving CSI")?;
    if let Some(r) = registration {
        match r.await {
            Ok(res) => res?,
            Err(e) => bail!("registration task: {e}"),
        }
    }
    // The FUSE mounts stay: they belong to their own processes, not to this one.
    let _ = std::fs::remove_file(&path);
    Ok(())
}
