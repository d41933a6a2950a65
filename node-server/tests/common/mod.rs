//! A cluster of real `ringfs-node` processes on ephemeral loopback ports, for tests.

#![allow(dead_code)]

use ringfs_client::{Cluster, Vol};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// Extra flags for every node.
    pub extra_args: Vec<String>,
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
        Self::start_with(n, &[]).await
    }

    /// Like [`TestCluster::start`], passing `extra_args` to every node.
    pub async fn start_with(n: usize, extra_args: &[&str]) -> TestCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let extra_args = extra_args.iter().map(|s| s.to_string()).collect();
        let mut c = TestCluster {
            dir,
            nodes: Vec::new(),
            extra_args,
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

    /// Starts one more node (id = current count + 1) that joins the cluster; returns its
    /// id once it listens (joining and rebalancing are for the caller to wait on).
    pub async fn add_node(&mut self) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        let data_dir = self.dir.path().join(format!("node-{id}"));
        std::fs::create_dir_all(&data_dir).expect("mkdir");
        self.nodes.push(TestNode {
            id,
            data_dir: data_dir.clone(),
            addr: String::new(),
            http: String::new(),
            child: None,
        });
        self.spawn(id, "127.0.0.1:0", "127.0.0.1:0");
        let (addr, http) = wait_for("node address file", Duration::from_secs(120), || async {
            read_addr_file(&data_dir)
        })
        .await;
        let node = self.node_mut(id);
        node.addr = addr;
        node.http = http;
        id
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
        let extra = self.extra_args.clone();
        let node = self.node_mut(id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.data_dir.join("node.log"))
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringfs-node"));
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
            .args(&extra)
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

    /// Restarts every node whose process has exited on its own (a failpoint ended it);
    /// returns their ids.
    pub fn restart_exited(&mut self) -> Vec<u64> {
        let exited: Vec<u64> = self
            .nodes
            .iter_mut()
            .filter_map(|n| {
                let done = matches!(n.child.as_mut().map(|c| c.try_wait()), Some(Ok(Some(_))));
                done.then(|| {
                    n.child = None;
                    n.id
                })
            })
            .collect();
        for &id in &exited {
            self.restart(id);
        }
        exited
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

/// A plain HTTP/1.1 GET against `addr`; returns (status code, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}
