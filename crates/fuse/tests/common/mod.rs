//! A cluster of real `ringfs-node` processes on ephemeral loopback ports, and FUSE
//! mounts of its volumes, for tests. (A copy of node-server's harness: that one finds
//! the binary through `CARGO_BIN_EXE_*`, which only works inside node-server.)

#![allow(dead_code)]

use ringfs_client::{Cluster, Vol};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The `ringfs-node` binary: `$RINGFS_NODE_BIN`, else the workspace's target directory
/// (build it first: `cargo build -p ringfs-node`).
pub fn node_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RINGFS_NODE_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let bin = target.join("debug/ringfs-node");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build -p ringfs-node` or set RINGFS_NODE_BIN",
        bin.display()
    );
    bin
}

/// The `ringfs` CLI binary: `$RINGFS_BIN`, else the workspace's target directory (build
/// it first: `cargo build --workspace`).
pub fn cli_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RINGFS_BIN") {
        return PathBuf::from(p);
    }
    let bin = node_bin().with_file_name("ringfs");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --workspace` or set RINGFS_BIN",
        bin.display()
    );
    bin
}

/// True when this host can mount FUSE file systems (tests skip otherwise).
pub fn fuse_available() -> bool {
    Path::new("/dev/fuse").exists()
        && ["/usr/bin/fusermount3", "/bin/fusermount3"]
            .iter()
            .any(|p| Path::new(p).exists())
}

/// Whether FUSE tests can run here. When they cannot, says so loudly; in CI (`CI` set)
/// that is a failure, not a skip: the FUSE paths must be tested there.
pub fn require_fuse() -> bool {
    if fuse_available() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "FUSE tests cannot run: /dev/fuse or fusermount3 is missing (CI must provide them)"
    );
    eprintln!("!!! SKIPPED: no /dev/fuse or fusermount3 on this host: FUSE paths NOT tested !!!");
    false
}

pub struct TestNode {
    pub id: u64,
    pub data_dir: PathBuf,
    pub addr: String,
    pub http: String,
    pub child: Option<Child>,
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<TestNode>,
}

fn read_addr_file(dir: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(dir.join("ADDR")).ok()?;
    let grpc = text
        .lines()
        .find_map(|l| l.strip_prefix("grpc="))?
        .to_string();
    let http = text
        .lines()
        .find_map(|l| l.strip_prefix("http="))?
        .to_string();
    Some((grpc, http))
}

/// Polls `f` until it returns `Some`, failing the test after `timeout`.
/// Polls `f` until it holds, failing the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl TestCluster {
    /// Starts `n` nodes: node 1 bootstraps, the others join it; returns once every node is
    /// a member and the layout covers them.
    pub async fn start(n: usize) -> TestCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = TestCluster {
            dir,
            nodes: Vec::new(),
        };
        for i in 1..=n as u64 {
            let data_dir = c.dir.path().join(format!("node-{i}"));
            std::fs::create_dir_all(&data_dir).expect("mkdir");
            c.nodes.push(TestNode {
                id: i,
                data_dir,
                addr: String::new(),
                http: String::new(),
                child: None,
            });
            c.spawn(i, "127.0.0.1:0", "127.0.0.1:0");
            let dd = c.node(i).data_dir.clone();
            let (addr, http) = wait_for("node address file", Duration::from_secs(120), || async {
                read_addr_file(&dd)
            })
            .await;
            let node = c.node_mut(i);
            node.addr = addr;
            node.http = http;
        }
        c.wait_formed(n).await;
        c
    }

    pub fn node(&self, id: u64) -> &TestNode {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: u64) -> &mut TestNode {
        &mut self.nodes[(id - 1) as usize]
    }

    fn spawn(&mut self, id: u64, listen: &str, http: &str) {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.id != id && !n.addr.is_empty())
            .map(|n| n.addr.clone())
            .collect();
        let node = self.node_mut(id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.data_dir.join("node.log"))
            .expect("log file");
        let mut cmd = Command::new(node_bin());
        cmd.args(["--id", &id.to_string()])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--listen", listen, "--http-listen", http])
            .args([
                "--capacity",
                "10GiB",
                "--zone",
                &format!("zone-{}", (id - 1) % 3 + 1),
            ])
            .args(["--heartbeat-ms", "100", "--election-timeout-ms", "600"])
            // Tests use leases of seconds; confirm their expiry as quickly.
            .args(["--session-confirm-secs", "1"])
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if id == 1 {
            cmd.arg("--bootstrap");
        }
        if !seeds.is_empty() {
            cmd.arg("--join").arg(seeds.join(","));
        }
        node.child = Some(cmd.spawn().expect("start ringfs-node"));
    }

    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    pub fn client(&self) -> Arc<Cluster> {
        Cluster::new(self.seeds()).expect("client")
    }

    /// Waits until all `n` nodes are members and the layout includes them.
    pub async fn wait_formed(&self, n: usize) {
        let client = self.client();
        wait_for("cluster to form", Duration::from_secs(60), || {
            let client = client.clone();
            async move {
                let s = client.status().await.ok()?;
                (s.nodes.len() == n && s.replication as usize == n.min(3) && s.leader_id != 0)
                    .then_some(())
            }
        })
        .await;
    }

    pub async fn leader(&self) -> u64 {
        let client = self.client();
        wait_for("a leader", Duration::from_secs(30), || {
            let client = client.clone();
            async move {
                client
                    .status()
                    .await
                    .ok()
                    .map(|s| s.leader_id)
                    .filter(|l| *l != 0)
            }
        })
        .await
    }

    /// `kill -9`.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.node_mut(id).child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts a stopped node on its previous ports, from its data directory.
    pub fn restart(&mut self, id: u64) {
        assert!(self.node(id).child.is_none(), "node {id} is still running");
        let (addr, http) = (self.node(id).addr.clone(), self.node(id).http.clone());
        self.spawn(id, &addr, &http);
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.node(id).child.is_some()
    }

    pub async fn volume(&self, name: &str, capacity: u64, rf: u32) -> Vol {
        let client = self.client();
        client
            .create_volume(name, capacity, rf)
            .await
            .expect("create volume");
        Vol::open(client, name).await.expect("open volume")
    }

    /// Every block file stored on node `id`.
    pub fn block_files(&self, id: u64) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let root = self.node(id).data_dir.join("blocks");
        let Ok(dirs) = std::fs::read_dir(&root) else {
            return out;
        };
        for d in dirs.flatten() {
            let name = d.file_name();
            let name = name.to_string_lossy();
            if name.len() != 2 || !d.path().is_dir() {
                continue;
            }
            for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
                out.push(f.path());
            }
        }
        out.sort();
        out
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            for n in &self.nodes {
                if let Ok(log) = std::fs::read_to_string(n.data_dir.join("node.log")) {
                    let tail: Vec<&str> = log.lines().rev().take(40).collect();
                    eprintln!("---- node {} log (last 40 lines) ----", n.id);
                    for l in tail.iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
        }
    }
}

/// Deterministic pseudo-random content for file `i` of `len` bytes.
pub fn content(i: u64, len: usize) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub async fn put_bytes(vol: &Vol, path: &str, data: &[u8]) -> ringfs_client::Result<()> {
    vol.write_file(path, data, 0o644, &|_| {}).await.map(|_| ())
}

pub async fn get_bytes(vol: &Vol, path: &str) -> ringfs_client::Result<Vec<u8>> {
    let mut out = Vec::new();
    vol.read_file(path, &mut out, &|_| {}).await?;
    Ok(out)
}

/// Mounts `vol` on a fresh directory under the cluster's temp dir.
pub fn mount(
    c: &TestCluster,
    vol: Vol,
    name: &str,
    opts: ringfs_fuse::MountOptions,
    rt: &tokio::runtime::Runtime,
) -> ringfs_fuse::Mount {
    let dir = c.dir.path().join(name);
    std::fs::create_dir_all(&dir).expect("mount dir");
    ringfs_fuse::mount(vol, &dir, opts, rt.handle().clone()).expect("mount")
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// One record: writer id, sequence number, padding, newline — 64 bytes.
pub fn record(writer: u8, seq: u32) -> Vec<u8> {
    let mut r = format!("w{writer} {seq:08} ").into_bytes();
    r.resize(63, b'a' + writer);
    r.push(b'\n');
    r
}

/// Unmounts `m` once the kernel lets go of it: right after the last close, a release may
/// still be in flight and the unmount fails with EBUSY; this retries (through
/// fusermount3) until it succeeds, then waits for the session to end.
pub fn unmount_when_released(m: ringfs_fuse::Mount) {
    let dir = m.dir().to_path_buf();
    wait_until("the mount to be released", Duration::from_secs(30), || {
        Command::new("fusermount3")
            .arg("-u")
            .arg(&dir)
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    });
    m.join().expect("mount session");
}

/// Sends `signal` (SIGSTOP / SIGCONT) to node `id`'s process.
pub fn signal_node(c: &TestCluster, id: u64, signal: i32) {
    let pid = c.node(id).child.as_ref().expect("node running").id();
    // SAFETY: kill(2) on a child process this harness started and still owns.
    let rc = unsafe { libc::kill(pid as i32, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal})");
}
