//! A cluster of real `ringfs-node` processes speaking mutual TLS, with a CA and
//! identities made for the test (alongside `common`, which runs plaintext clusters).

#![allow(dead_code)]

use crate::common::{wait_for, TestNode};
use ringfs_client::{ChannelPool, Cluster};
use ringfs_tls::issue::{CertAuthority, IssueOptions, DEFAULT_CA_VALIDITY};
use ringfs_tls::Role;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

pub struct TlsCluster {
    pub dir: tempfile::TempDir,
    pub ca: CertAuthority,
    pub nodes: Vec<TestNode>,
    pub admin: PathBuf,
    pub client: PathBuf,
    pub extra_args: Vec<String>,
}

/// Writes a TLS directory for `role` signed by `ca` under `root/name`.
pub fn identity(ca: &CertAuthority, root: &Path, role: Role, name: &str) -> PathBuf {
    let dir = root.join(name);
    ca.issue(
        &IssueOptions::new(role, name)
            .dns(["localhost"])
            .ips(["127.0.0.1".parse().expect("ip")]),
    )
    .expect("issue")
    .write_dir(&dir, true)
    .expect("write identity");
    dir
}

fn read_addr(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("ADDR")).ok()?;
    Some(
        text.lines()
            .find_map(|l| l.strip_prefix("grpc="))?
            .to_string(),
    )
}

impl TlsCluster {
    /// Starts `n` nodes with `--tls-dir` (each its own node certificate) and waits until
    /// the cluster has formed, observed through an admin client.
    pub async fn start(n: usize, extra_args: &[&str]) -> TlsCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CertAuthority::generate("test", DEFAULT_CA_VALIDITY).expect("ca");
        let pki = dir.path().join("pki");
        let admin = identity(&ca, &pki, Role::Admin, "admin");
        let client = identity(&ca, &pki, Role::Client, "client");
        let mut c = TlsCluster {
            dir,
            ca,
            nodes: Vec::new(),
            admin,
            client,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        for i in 1..=n as u64 {
            let data_dir = c.dir.path().join(format!("node-{i}"));
            std::fs::create_dir_all(&data_dir).expect("mkdir");
            identity(&c.ca, &pki, Role::Node, &format!("node-{i}"));
            c.nodes.push(TestNode {
                id: i,
                data_dir: data_dir.clone(),
                addr: String::new(),
                http: String::new(),
                child: None,
            });
            c.spawn(i);
            let addr = wait_for("node address file", Duration::from_secs(120), || async {
                read_addr(&data_dir)
            })
            .await;
            c.nodes[(i - 1) as usize].addr = addr;
        }
        let admin = c.cluster_as(&c.admin.clone());
        wait_for("TLS cluster to form", Duration::from_secs(90), || {
            let admin = admin.clone();
            async move {
                let s = admin.status().await.ok()?;
                (s.nodes.len() == n && s.replication as usize == n.min(3) && s.leader_id != 0)
                    .then_some(())
            }
        })
        .await;
        c
    }

    /// The TLS directory of node `id`.
    pub fn node_tls(&self, id: u64) -> PathBuf {
        self.dir.path().join("pki").join(format!("node-{id}"))
    }

    fn spawn(&mut self, id: u64) {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.id != id && !n.addr.is_empty())
            .map(|n| n.addr.clone())
            .collect();
        let tls = self.node_tls(id);
        let extra = self.extra_args.clone();
        let node = &mut self.nodes[(id - 1) as usize];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.data_dir.join("node.log"))
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringfs-node"));
        cmd.args(["--id", &id.to_string()])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .args(["--capacity", "10GiB", "--partitions", "256"])
            .args(["--zone", &format!("zone-{}", (id - 1) % 3 + 1)])
            .args(["--heartbeat-ms", "100", "--election-timeout-ms", "600"])
            .arg("--tls-dir")
            .arg(&tls)
            .args(&extra)
            .env("RUST_LOG", "info,openraft=warn")
            .env_remove("RINGFS_TLS_DIR")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if id == 1 {
            cmd.arg("--bootstrap");
        } else {
            cmd.arg("--join").arg(seeds.join(","));
        }
        node.child = Some(cmd.spawn().expect("start ringfs-node"));
    }

    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// A pool presenting the identity in `tls_dir`.
    pub fn pool_as(&self, tls_dir: &Path) -> ChannelPool {
        ChannelPool::secured(Some(tls_dir), None).expect("client TLS")
    }

    pub fn cluster_as(&self, tls_dir: &Path) -> Arc<Cluster> {
        Cluster::with_pool(self.seeds(), self.pool_as(tls_dir)).expect("client")
    }

    /// The node log, for assertions about what a node logged.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.nodes[(id - 1) as usize].data_dir.join("node.log"))
            .unwrap_or_default()
    }
}

impl Drop for TlsCluster {
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
