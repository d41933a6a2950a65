//! `ringfs dev up|down|status`: a local cluster of separate `ringfs-node` processes,
//! all state under one directory (default `./ringfs-dev`).

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use ringfs_client::Cluster;
use serde::{Deserialize, Serialize};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

#[derive(Subcommand, Debug)]
pub enum DevCmd {
    /// Start a local cluster (idempotent: a running one is left as it is).
    Up {
        /// Number of storage nodes.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=32))]
        nodes: u32,
        /// Directory for all node data, logs and the cluster file.
        #[arg(long, default_value = "ringfs-dev")]
        dir: PathBuf,
        /// First port; node N uses BASE+2(N-1) for gRPC and the next one for HTTP.
        /// 0 picks free ports.
        #[arg(long, default_value_t = 7420)]
        base_port: u16,
        /// Capacity each node offers.
        #[arg(long, default_value = "10GiB")]
        capacity: String,
        /// Name and size of the volume to create (skipped when empty).
        #[arg(long, default_value = "default")]
        volume: String,
        #[arg(long, default_value = "1GiB")]
        volume_size: String,
        /// Where to mount the volume (default: `ringfs-mnt` next to --dir).
        #[arg(long, value_name = "DIR", conflicts_with = "no_mount")]
        mount: Option<PathBuf>,
        /// Do not mount the volume.
        #[arg(long)]
        no_mount: bool,
        /// Run without TLS (plaintext, unauthenticated). By default a CA and certificates
        /// for every node, an admin and a client are made under DIR/tls and every channel
        /// uses mutual TLS.
        #[arg(long)]
        insecure: bool,
    },
    /// Stop the local cluster.
    Down {
        #[arg(long, default_value = "ringfs-dev")]
        dir: PathBuf,
        /// Also delete all data.
        #[arg(long)]
        purge: bool,
    },
    /// Show which dev nodes are running.
    Status {
        #[arg(long, default_value = "ringfs-dev")]
        dir: PathBuf,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevNode {
    pub id: u64,
    pub addr: String,
    pub http: String,
    pub pid: u32,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

/// The background `ringfs mount` process of the dev volume.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevMount {
    pub volume: String,
    pub dir: PathBuf,
    pub pid: u32,
    pub log: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevState {
    pub nodes: Vec<DevNode>,
    #[serde(default)]
    pub mount: Option<DevMount>,
    /// Certificates of a cluster run with mutual TLS (None: plaintext).
    #[serde(default)]
    pub tls: Option<PathBuf>,
}

/// Under the dev TLS directory: the CA, one directory per node (`node-N`), and the
/// admin and client identities the CLI and the dev mount use.
pub const CA_CERT_DIR: &str = "ca";
pub const ADMIN_CERT_DIR: &str = "admin";
pub const CLIENT_CERT_DIR: &str = "client";

/// A TLS directory issued by the dev CA, unless one that loads is there already.
fn ensure_identity(
    ca: &ringfs_tls::CertAuthority,
    out: &Path,
    opts: ringfs_tls::IssueOptions,
) -> Result<()> {
    if ringfs_tls::TlsMaterial::load(out).is_ok_and(|m| m.role == Some(opts.role)) {
        return Ok(());
    }
    ca.issue(&opts)?.write_dir(out, true)?;
    Ok(())
}

/// The dev cluster's certificates under `dir/tls` (made once, reused by later runs):
/// a CA, node-1..node-n, admin and client. Nodes are reached on 127.0.0.1/localhost.
fn ensure_certs(dir: &Path, nodes: impl IntoIterator<Item = u64>) -> Result<PathBuf> {
    use ringfs_tls::{CertAuthority, IssueOptions, Role};
    let tls = dir.join("tls");
    let ca_dir = tls.join(CA_CERT_DIR);
    let ca = if ca_dir.join(ringfs_tls::CA_FILE).exists() {
        CertAuthority::load(&ca_dir)?
    } else {
        let ca = CertAuthority::generate("dev", ringfs_tls::issue::DEFAULT_CA_VALIDITY)?;
        ca.write_dir(&ca_dir, true)?;
        ca
    };
    for i in nodes {
        ensure_identity(
            &ca,
            &tls.join(format!("node-{i}")),
            IssueOptions::new(Role::Node, format!("node-{i}"))
                .dns(["localhost"])
                .ips([std::net::IpAddr::from([127, 0, 0, 1])]),
        )?;
    }
    ensure_identity(
        &ca,
        &tls.join(ADMIN_CERT_DIR),
        IssueOptions::new(Role::Admin, "dev-admin"),
    )?;
    ensure_identity(
        &ca,
        &tls.join(CLIENT_CERT_DIR),
        IssueOptions::new(Role::Client, "dev-client"),
    )?;
    Ok(tls)
}

/// A client of the dev cluster, with the admin identity when it runs with TLS.
fn dev_cluster(state: &DevState, seeds: Vec<String>) -> Result<std::sync::Arc<Cluster>> {
    let admin = state.tls.as_ref().map(|t| t.join(ADMIN_CERT_DIR));
    let pool = ringfs_client::ChannelPool::secured(admin.as_deref(), None)?;
    Ok(Cluster::with_pool(seeds, pool)?)
}

impl DevState {
    pub fn file(dir: &Path) -> PathBuf {
        dir.join("cluster.json")
    }

    pub fn load(dir: &Path) -> Result<DevState> {
        let text = std::fs::read_to_string(Self::file(dir))?;
        Ok(serde_json::from_str(&text)?)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        let tmp = dir.join("cluster.json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(self)?)?;
        std::fs::rename(tmp, Self::file(dir))?;
        Ok(())
    }
}

fn alive(pid: u32) -> bool {
    if pid == 0 {
        return false; // a stopped node (see `down`)
    }
    // A zombie still has a /proc entry; check its state too.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// The `ringfs-node` binary: $RINGFS_NODE_BIN, next to this executable, or on PATH.
pub fn node_binary() -> PathBuf {
    if let Ok(p) = std::env::var("RINGFS_NODE_BIN") {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let p = dir.join("ringfs-node");
            if p.exists() {
                return p;
            }
        }
    }
    PathBuf::from("ringfs-node")
}

pub async fn run(cmd: DevCmd) -> Result<()> {
    match cmd {
        DevCmd::Up {
            nodes,
            dir,
            base_port,
            capacity,
            volume,
            volume_size,
            mount,
            no_mount,
            insecure,
        } => {
            // The mount point must not be inside the node data (it would be purged).
            let mount_dir = if no_mount || volume.is_empty() {
                None
            } else {
                Some(mount.unwrap_or_else(|| default_mount_dir(&dir)))
            };
            up(
                nodes,
                &dir,
                base_port,
                &capacity,
                &volume,
                &volume_size,
                mount_dir,
                !insecure,
            )
            .await
        }
        DevCmd::Down { dir, purge } => down(&dir, purge).await,
        DevCmd::Status { dir } => {
            let state = DevState::load(&dir)
                .with_context(|| format!("no dev cluster in {}", dir.display()))?;
            for n in &state.nodes {
                let st = if alive(n.pid) { "running" } else { "stopped" };
                println!(
                    "node {} pid {} {} {st} (log {})",
                    n.id,
                    n.pid,
                    n.addr,
                    n.log.display()
                );
            }
            match &state.tls {
                Some(t) => println!("tls: mutual TLS, certificates in {}", t.display()),
                None => println!("tls: off (plaintext)"),
            }
            match &state.mount {
                Some(m) => {
                    let st = match (crate::mount::is_ringfs_mount(&m.dir), alive(m.pid)) {
                        (true, true) => "mounted",
                        (true, false) => "mounted, but its process is gone",
                        (false, true) => "not mounted, process still running",
                        (false, false) => "not mounted",
                    };
                    println!(
                        "mount {} volume {} pid {} {st} (log {})",
                        m.dir.display(),
                        m.volume,
                        m.pid,
                        m.log.display()
                    );
                }
                None => println!("mount: none"),
            }
            Ok(())
        }
    }
}

fn read_addr_file(data_dir: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(data_dir.join("ADDR")).ok()?;
    let mut grpc = None;
    let mut http = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("grpc=") {
            grpc = Some(v.to_string());
        }
        if let Some(v) = line.strip_prefix("http=") {
            http = Some(v.to_string());
        }
    }
    Some((grpc?, http?))
}

/// `ringfs-mnt` next to the dev directory.
fn default_mount_dir(dir: &Path) -> PathBuf {
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    abs.parent().unwrap_or(Path::new(".")).join("ringfs-mnt")
}

/// Mounts `volume` on `mount_dir` with a background `ringfs mount` process (unless it
/// is mounted already) and records it in the state file.
async fn ensure_mount(
    state: &mut DevState,
    dir: &Path,
    volume: &str,
    mount_dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(mount_dir)
        .with_context(|| format!("cannot create mount point {}", mount_dir.display()))?;
    let mount_dir = mount_dir.canonicalize()?;
    if mount_dir.starts_with(dir) {
        bail!(
            "mount point {} is inside the dev directory {}; choose another --mount",
            mount_dir.display(),
            dir.display()
        );
    }
    if crate::mount::is_ringfs_mount(&mount_dir) {
        if let Some(m) = &state.mount {
            if m.dir == mount_dir && alive(m.pid) {
                println!(
                    "volume {volume:?} is already mounted on {}",
                    mount_dir.display()
                );
                return Ok(());
            }
        }
        bail!(
            "another ringfs volume is mounted on {}; `ringfs umount {}` first or pass --mount",
            mount_dir.display(),
            mount_dir.display()
        );
    }
    let log = dir.join(format!("mount-{volume}.log"));
    let seeds: Vec<&str> = state.nodes.iter().map(|n| n.addr.as_str()).collect();
    let mut args: Vec<std::ffi::OsString> = vec!["--cluster".into(), seeds.join(",").into()];
    if let Some(t) = &state.tls {
        args.extend(["--tls-dir".into(), t.join(CLIENT_CERT_DIR).into()]);
    }
    args.extend(["mount".into(), volume.into(), mount_dir.clone().into()]);
    let pid = crate::mount::spawn_mount_process(&args, volume, &mount_dir, &log).await?;
    state.mount = Some(DevMount {
        volume: volume.to_string(),
        dir: mount_dir.clone(),
        pid,
        log: log.clone(),
    });
    state.save(dir)?;
    println!(
        "mounted volume {volume:?} on {} (pid {pid}, log {})",
        mount_dir.display(),
        log.display()
    );
    Ok(())
}

/// Unmounts the dev mount (lazily if busy) and waits for its process to end.
async fn stop_mount(m: &DevMount) -> Result<()> {
    if crate::mount::is_ringfs_mount(&m.dir) {
        let d = m.dir.clone();
        let r = tokio::task::spawn_blocking(move || crate::mount::fusermount(&d, false)).await?;
        if let Err(e) = r {
            eprintln!("{e:#}; detaching lazily");
            let d = m.dir.clone();
            tokio::task::spawn_blocking(move || crate::mount::fusermount(&d, true)).await??;
        }
    }
    // The mount process exits by itself once unmounted; make sure it does.
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(m.pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if alive(m.pid) {
        signal(m.pid, "-TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(m.pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if alive(m.pid) {
        eprintln!("mount process {} did not stop; killing it", m.pid);
        signal(m.pid, "-KILL");
    }
    if crate::mount::is_ringfs_mount(&m.dir) {
        bail!("{} is still mounted", m.dir.display());
    }
    println!("unmounted {}", m.dir.display());
    Ok(())
}

/// Starts node `i` of a dev cluster in `dir` and waits until it reports its addresses.
#[allow(clippy::too_many_arguments)]
async fn spawn_node(
    bin: &Path,
    dir: &Path,
    i: u32,
    base_port: u16,
    capacity: u64,
    seeds: &[String],
    tls: Option<&Path>,
    previous: Option<&DevNode>,
) -> Result<DevNode> {
    let data_dir = dir.join(format!("node-{i}"));
    std::fs::create_dir_all(&data_dir)?;
    let _ = std::fs::remove_file(data_dir.join("ADDR"));
    // A node that ran here before keeps its addresses: the cluster's Raft membership
    // and layout name them (with --base-port 0 a restart would otherwise pick new free
    // ports that no other node knows).
    let (listen, http) = if let Some(p) = previous {
        (p.addr.clone(), p.http.clone())
    } else if base_port == 0 {
        ("127.0.0.1:0".to_string(), "127.0.0.1:0".to_string())
    } else {
        let p = base_port as u32 + 2 * (i - 1);
        if p + 1 > u16::MAX as u32 {
            bail!("--base-port {base_port} leaves no room for node {i}");
        }
        (format!("127.0.0.1:{p}"), format!("127.0.0.1:{}", p + 1))
    };
    let log = data_dir.join("node.log");
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("--id")
        .arg(i.to_string())
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--listen")
        .arg(&listen)
        .arg("--http-listen")
        .arg(&http)
        .arg("--capacity")
        .arg(capacity.to_string())
        .arg("--zone")
        .arg(format!("zone-{}", (i - 1) % 3 + 1))
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        // The CLI's own credentials (e.g. RINGFS_TLS_DIR naming the admin certificate)
        // must not become the node's.
        .env_remove("RINGFS_TLS_DIR")
        .env_remove("RINGFS_ADMIN_TOKEN_FILE")
        // Own process group: Ctrl-C in this terminal must not kill the nodes.
        .process_group(0);
    if let Some(t) = tls {
        cmd.arg("--tls-dir").arg(t.join(format!("node-{i}")));
    }
    if i == 1 {
        cmd.arg("--bootstrap");
    } else {
        cmd.arg("--join").arg(seeds.join(","));
    }
    let child = cmd.spawn().with_context(|| {
        format!(
            "cannot start {} (build it with `cargo build`, or set RINGFS_NODE_BIN)",
            bin.display()
        )
    })?;
    let pid = child.id();
    // Wait for the node to report its addresses.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (addr, http_addr) = loop {
        if let Some(a) = read_addr_file(&data_dir) {
            break a;
        }
        if !alive(pid) {
            bail!("node {i} exited during start-up; see {}", log.display());
        }
        if Instant::now() > deadline {
            bail!("node {i} did not start within 30s; see {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Ok(DevNode {
        id: i as u64,
        addr,
        http: http_addr,
        pid,
        data_dir,
        log,
    })
}

/// `ringfs cluster add-node`: starts one more node process for the dev cluster in `dir`,
/// joins it and records it in the cluster file.
pub async fn add_node(dir: &Path, capacity: &str) -> Result<()> {
    let capacity = ringfs_core::units::parse_size(capacity)?;
    let dir = dir.canonicalize().with_context(|| {
        format!(
            "no dev cluster in {}; start one with `ringfs dev up`",
            dir.display()
        )
    })?;
    let mut state = DevState::load(&dir).with_context(|| {
        format!(
            "no dev cluster in {}; start one with `ringfs dev up`",
            dir.display()
        )
    })?;
    let seeds: Vec<String> = state
        .nodes
        .iter()
        .filter(|n| alive(n.pid))
        .map(|n| n.addr.clone())
        .collect();
    if seeds.is_empty() {
        bail!(
            "no node of the dev cluster in {} is running; run `ringfs dev up` first",
            dir.display()
        );
    }
    let id = state.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
    let i = u32::try_from(id).context("too many nodes")?;
    // Continue the port pattern of node 1 (BASE + 2(N-1)); free ports otherwise.
    let base_port = state
        .nodes
        .iter()
        .find(|n| n.id == 1)
        .and_then(|n| n.addr.rsplit(':').next()?.parse::<u16>().ok())
        .unwrap_or(0);
    if state.tls.is_some() {
        ensure_certs(&dir, [id])?;
    }
    let node = spawn_node(
        &node_binary(),
        &dir,
        i,
        base_port,
        capacity,
        &seeds,
        state.tls.as_deref(),
        None,
    )
    .await?;
    println!(
        "started node {id} at {} (log {})",
        node.addr,
        node.log.display()
    );
    state.nodes.push(node);
    state.save(&dir)?;
    let cluster = dev_cluster(&state, seeds)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(s) = cluster.status().await {
            if s.nodes.iter().any(|n| n.id == id && n.partitions > 0) {
                println!(
                    "node {id} joined (layout v{}); follow the rebalance with `ringfs rebalance status --watch`",
                    s.layout_version
                );
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("node {id} did not join within 60s; see its log");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// The flags of `dev up`, one argument each.
#[allow(clippy::too_many_arguments)]
async fn up(
    n: u32,
    dir: &Path,
    base_port: u16,
    capacity: &str,
    volume: &str,
    volume_size: &str,
    mount_dir: Option<PathBuf>,
    tls: bool,
) -> Result<()> {
    let capacity = ringfs_core::units::parse_size(capacity)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let mut previous: Vec<DevNode> = Vec::new();
    if let Ok(mut state) = DevState::load(&dir) {
        if state.nodes.iter().all(|n| alive(n.pid)) && !state.nodes.is_empty() {
            println!(
                "a dev cluster is already running in {} ({} nodes)",
                dir.display(),
                state.nodes.len()
            );
            if let Some(m) = &mount_dir {
                ensure_mount(&mut state, &dir, volume, m).await?;
            }
            print_usage(&state, volume);
            return Ok(());
        }
        if state.nodes.iter().any(|n| alive(n.pid)) {
            bail!(
                "the dev cluster in {} is partly running; run `ringfs dev down --dir {}` first",
                dir.display(),
                dir.display()
            );
        }
        previous = state.nodes;
    }
    let bin = node_binary();
    let tls = if tls {
        Some(ensure_certs(&dir, 1..=u64::from(n))?)
    } else {
        None
    };
    let mut state = DevState {
        nodes: Vec::new(),
        mount: None,
        tls,
    };
    let mut seeds: Vec<String> = Vec::new();
    for i in 1..=n {
        let prev = previous.iter().find(|p| p.id == u64::from(i));
        let node = spawn_node(
            &bin,
            &dir,
            i,
            base_port,
            capacity,
            &seeds,
            state.tls.as_deref(),
            prev,
        )
        .await?;
        let addr = node.addr.clone();
        seeds.push(addr.clone());
        state.nodes.push(node);
        state.save(&dir)?;
    }
    // Wait until every node has joined and the layout covers them all.
    let cluster = dev_cluster(&state, seeds.clone())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match cluster.status().await {
            Ok(s)
                if s.nodes.len() == n as usize
                    && s.layout_version > 0
                    && s.replication == n.min(3) =>
            {
                break
            }
            Ok(_) | Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Ok(s) => bail!(
                "cluster formed only partly ({} of {n} nodes); see logs in {}",
                s.nodes.len(),
                dir.display()
            ),
            Err(e) => bail!("cluster did not form: {e}; see logs in {}", dir.display()),
        }
    }
    if !volume.is_empty() {
        let size = ringfs_core::units::parse_size(volume_size)?;
        cluster
            .create_volume(volume, size, 0)
            .await
            .with_context(|| format!("creating volume {volume}"))?;
    }
    if let Some(m) = &mount_dir {
        ensure_mount(&mut state, &dir, volume, m).await?;
    }
    println!(
        "ringfs dev cluster is up: {n} nodes, data in {}",
        dir.display()
    );
    print_usage(&state, volume);
    Ok(())
}

fn print_usage(state: &DevState, volume: &str) {
    let seeds: Vec<&str> = state.nodes.iter().map(|n| n.addr.as_str()).collect();
    for n in &state.nodes {
        println!(
            "  node {}: grpc {}  metrics http://{}/metrics  log {}",
            n.id,
            n.addr,
            n.http,
            n.log.display()
        );
    }
    println!();
    println!("Try:");
    println!("  export RINGFS_CLUSTER={}", seeds.join(","));
    if let Some(t) = &state.tls {
        // Needed once RINGFS_CLUSTER is set (without --cluster the CLI finds it itself).
        println!(
            "  export RINGFS_TLS_DIR={}",
            t.join(ADMIN_CERT_DIR).display()
        );
    }
    println!("  ringfs cluster status");
    if !volume.is_empty() {
        println!("  ringfs put ./some-file {volume}:/some-file");
        println!("  ringfs ls {volume}:/");
        println!("  ringfs get {volume}:/some-file ./copy");
    }
    if let Some(m) = &state.mount {
        println!(
            "  ls {}                # the volume, mounted",
            m.dir.display()
        );
    }
    println!("  ringfs dev down            # unmount and stop (add --purge to delete the data)");
}

async fn down(dir: &Path, purge: bool) -> Result<()> {
    let state = match DevState::load(dir) {
        Ok(s) => s,
        Err(_) => {
            println!("no dev cluster in {} (nothing to do)", dir.display());
            return Ok(());
        }
    };
    // Unmount first: the mount needs the nodes to write back what it buffers.
    if let Some(m) = &state.mount {
        stop_mount(m).await?;
    }
    for n in &state.nodes {
        if alive(n.pid) {
            signal(n.pid, "-TERM");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while state.nodes.iter().any(|n| alive(n.pid)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in &state.nodes {
        if alive(n.pid) {
            eprintln!("node {} did not stop within 15s; killing it", n.id);
            signal(n.pid, "-KILL");
        }
    }
    if purge {
        if let Some(m) = &state.mount {
            // Only an empty mount point (which `dev up` created) goes.
            let _ = std::fs::remove_dir(&m.dir);
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        println!("stopped the dev cluster and deleted {}", dir.display());
    } else {
        // The state stays, with no processes: a resume starts each node on the
        // addresses the cluster knows it by.
        let mut stopped = state.clone();
        stopped.mount = None;
        for n in &mut stopped.nodes {
            n.pid = 0;
        }
        stopped.save(dir)?;
        println!(
            "stopped the dev cluster; data kept in {} (`ringfs dev up` resumes it)",
            dir.display()
        );
    }
    Ok(())
}
