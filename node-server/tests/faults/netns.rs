//! Real `ringfs-node` processes, each in its own network namespace, joined by veth pairs
//! to one bridge in the root namespace (where the test's client runs), and the faults a
//! nemesis injects into them: kill -9, isolation and partitions (iptables inside the
//! namespaces), slow and lossy links (tc netem), a full disk (the node's data directory
//! on a small tmpfs), corrupted block files, a slow disk (the node's process in a blkio
//! cgroup throttled to a few IO operations per second) and wall-clock jumps (libfaketime
//! preloaded into every node, shifting its real-time clock by the offset in a file it
//! re-reads every second; monotonic clocks are left alone, as NTP would).
//!
//! Names carry a run number `R` (rfsbrR, rfsRnI, rfsRhI/rfsRpI, 10.77.R.I/24) so reruns
//! never collide; a run records itself in `/run/ringfs-faults/R` and a later run removes
//! what a crashed run left behind. Everything is torn down in `Drop`, also on panic.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const STATE_DIR: &str = "/run/ringfs-faults";
/// libfaketime's multi-threaded build (Debian package `faketime`).
pub const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
/// cgroup v1 blkio hierarchy (blk-throttle); cgroup v2 machines use `io.max` instead.
const BLKIO_V1: &str = "/sys/fs/cgroup/blkio";
const CGROUP_V2: &str = "/sys/fs/cgroup";
pub const GRPC_PORT: u16 = 7420;

/// Runs a command; `Err` carries its stderr.
pub fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) -> String {
    sh(args).unwrap_or_else(|e| panic!("{e}"))
}

/// True when this machine can run the suite (root, ip, tc, iptables).
pub fn available() -> Result<(), String> {
    for tool in ["ip", "tc", "iptables"] {
        sh(&["sh", "-c", &format!("command -v {tool}")]).map_err(|_| {
            format!("`{tool}` is missing: install iproute2 and iptables (apt-get install iproute2 iptables)")
        })?;
    }
    let uid = sh(&["id", "-u"])?;
    if uid.trim() != "0" {
        return Err("the fault-injection suite needs root (network namespaces)".into());
    }
    if !Path::new(FAKETIME_LIB).exists() {
        return Err(format!(
            "{FAKETIME_LIB} is missing (clock jumps): apt-get install faketime"
        ));
    }
    if !Path::new(BLKIO_V1)
        .join("blkio.throttle.write_iops_device")
        .exists()
        && !Path::new(CGROUP_V2).join("cgroup.subtree_control").exists()
    {
        return Err("no blkio (cgroup v1) or io (cgroup v2) controller for slow disks".into());
    }
    Ok(())
}

/// `major:minor` of the block device holding `path`, or None for a file system without
/// one (tmpfs, overlay).
fn device_of(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    (major != 0).then(|| format!("{major}:{minor}"))
}

fn cgroup_dir(run: u32, id: u64) -> PathBuf {
    let v1 = Path::new(BLKIO_V1);
    let root = if v1.exists() {
        v1
    } else {
        Path::new(CGROUP_V2)
    };
    root.join(format!("ringfs-faults-{run}-{id}"))
}

/// Moves every process of cgroup `dir` back to the root and removes it.
fn remove_cgroup(dir: &Path) {
    let Some(root) = dir.parent() else { return };
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.split_whitespace() {
            let _ = std::fs::write(root.join("cgroup.procs"), pid);
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Removes namespaces, bridges, mounts and processes of earlier runs whose test process
/// is gone.
pub fn cleanup_leftovers() {
    let Ok(dir) = std::fs::read_dir(STATE_DIR) else {
        return;
    };
    for f in dir.flatten() {
        let Ok(run) = f.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let text = std::fs::read_to_string(f.path()).unwrap_or_default();
        let owner = text
            .lines()
            .find_map(|l| l.strip_prefix("owner="))
            .and_then(|p| p.parse::<u32>().ok());
        if owner.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists()) {
            continue;
        }
        eprintln!("faults: removing leftovers of crashed run {run}");
        let mounts: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("mount="))
            .map(str::to_string)
            .collect();
        teardown_run(run, &mounts);
        let _ = std::fs::remove_file(f.path());
    }
}

fn ns_name(run: u32, i: u64) -> String {
    format!("rfs{run}n{i}")
}

fn teardown_run(run: u32, mounts: &[String]) {
    for root in [BLKIO_V1, CGROUP_V2] {
        for d in std::fs::read_dir(root).into_iter().flatten().flatten() {
            if d.file_name()
                .to_string_lossy()
                .starts_with(&format!("ringfs-faults-{run}-"))
            {
                remove_cgroup(&d.path());
            }
        }
    }
    let prefix = format!("rfs{run}n");
    let list = sh(&["ip", "netns", "list"]).unwrap_or_default();
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if !name.starts_with(&prefix) {
            continue;
        }
        // Node processes of that run, by pid (ours: started by this suite).
        for pid in sh(&["ip", "netns", "pids", name])
            .unwrap_or_default()
            .split_whitespace()
        {
            let _ = sh(&["kill", "-9", pid]);
        }
        let _ = sh(&["ip", "netns", "del", name]);
    }
    let _ = sh(&["ip", "link", "del", &format!("rfsbr{run}")]);
    let _ = sh(&[
        "iptables",
        "-D",
        "FORWARD",
        "-i",
        &format!("rfsbr{run}"),
        "-o",
        &format!("rfsbr{run}"),
        "-j",
        "ACCEPT",
    ]);
    for m in mounts {
        let _ = sh(&["umount", "-l", m]);
    }
}

pub struct NetNode {
    pub id: u64,
    pub ns: String,
    /// The veth end inside the namespace, and its peer on the bridge.
    pub dev: String,
    pub host_dev: String,
    pub ip: String,
    pub addr: String,
    pub data_dir: PathBuf,
    pub child: Option<Child>,
    /// The data directory is a tmpfs of this many MiB (for the disk-full fault).
    pub tmpfs_mib: Option<u64>,
}

pub struct NetCluster {
    pub run: u32,
    pub dir: tempfile::TempDir,
    pub nodes: Vec<NetNode>,
    pub extra_args: Vec<String>,
    mounts: Vec<String>,
}

impl NetCluster {
    /// Creates the bridge and one namespace per node (nodes not started). The node with
    /// id `small_disk` gets its data directory on a tmpfs of `small_disk_mib`.
    pub fn create(n: usize, small_disk: Option<(u64, u64)>, extra_args: &[&str]) -> NetCluster {
        cleanup_leftovers();
        std::fs::create_dir_all(STATE_DIR).expect("state dir");
        let used = sh(&["ip", "-o", "link", "show"]).unwrap_or_default();
        let seed = std::process::id();
        let run = (0..250u32)
            .map(|k| (seed + k) % 250 + 1)
            .find(|r| {
                !Path::new(&format!("{STATE_DIR}/{r}")).exists()
                    && !used.contains(&format!("rfsbr{r}:"))
            })
            .expect("a free run number");
        let state = format!("{STATE_DIR}/{run}");
        std::fs::write(&state, format!("owner={}\n", std::process::id())).expect("state file");
        let bridge = format!("rfsbr{run}");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = NetCluster {
            run,
            dir,
            nodes: Vec::new(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            mounts: Vec::new(),
        };
        must(&["ip", "link", "add", &bridge, "type", "bridge"]);
        must(&[
            "ip",
            "addr",
            "add",
            &format!("10.77.{run}.254/24"),
            "dev",
            &bridge,
        ]);
        must(&["ip", "link", "set", &bridge, "up"]);
        // Bridged traffic may pass the root namespace's FORWARD chain
        // (br_netfilter); let this bridge's own traffic through whatever the policy is.
        let _ = sh(&[
            "iptables", "-I", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT",
        ]);
        eprintln!("faults: bridge {bridge}, nodes at 10.77.{run}.1-{n}");
        for i in 1..=n as u64 {
            let ns = ns_name(run, i);
            let dev = format!("rfs{run}p{i}");
            let host_dev = format!("rfs{run}h{i}");
            let ip = format!("10.77.{run}.{i}");
            must(&["ip", "netns", "add", &ns]);
            must(&[
                "ip", "link", "add", &host_dev, "type", "veth", "peer", "name", &dev,
            ]);
            must(&["ip", "link", "set", &dev, "netns", &ns]);
            must(&["ip", "link", "set", &host_dev, "master", &bridge, "up"]);
            must(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "ip",
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                &dev,
            ]);
            must(&["ip", "netns", "exec", &ns, "ip", "link", "set", &dev, "up"]);
            must(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
            let data_dir = c.dir.path().join(format!("node-{i}"));
            std::fs::create_dir_all(&data_dir).expect("mkdir");
            let mut tmpfs_mib = None;
            if let Some((id, mib)) = small_disk {
                if id == i {
                    let d = data_dir.to_string_lossy().into_owned();
                    must(&[
                        "mount",
                        "-t",
                        "tmpfs",
                        "-o",
                        &format!("size={mib}m"),
                        "tmpfs",
                        &d,
                    ]);
                    c.mounts.push(d.clone());
                    let mut text = std::fs::read_to_string(&state).unwrap_or_default();
                    text.push_str(&format!("mount={d}\n"));
                    std::fs::write(&state, text).expect("state file");
                    tmpfs_mib = Some(mib);
                }
            }
            c.nodes.push(NetNode {
                id: i,
                ns,
                dev,
                host_dev,
                addr: format!("{ip}:{GRPC_PORT}"),
                ip,
                data_dir,
                child: None,
                tmpfs_mib,
            });
        }
        c
    }

    pub fn node(&self, id: u64) -> &NetNode {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: u64) -> &mut NetNode {
        &mut self.nodes[(id - 1) as usize]
    }

    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// Starts (or restarts, from its data directory) node `id` inside its namespace.
    /// Node 1 bootstraps; the others join through the nodes before them.
    pub fn start(&mut self, id: u64) {
        assert!(self.node(id).child.is_none(), "node {id} is running");
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.id != id)
            .map(|n| n.addr.clone())
            .collect();
        let extra = self.extra_args.clone();
        let node = self.node_mut(id);
        if !clock_file(node).exists() {
            std::fs::write(clock_file(node), "+0\n").expect("clock file");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node_log(node))
            .expect("log file");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &node.ns])
            .arg(env!("CARGO_BIN_EXE_ringfs-node"))
            .args(["--id", &id.to_string()])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--listen", &node.addr, "--advertise", &node.addr])
            .args(["--http-listen", &format!("{}:7421", node.ip)])
            .args(["--capacity", "10GiB"])
            .args(["--zone", &format!("zone-{}", (id - 1) % 3 + 1)])
            .args(["--heartbeat-ms", "100", "--election-timeout-ms", "600"])
            .args(&extra)
            .env("RUST_LOG", "info,openraft=warn")
            // Wall-clock jumps: the node's real-time clock is shifted by the offset in
            // its clock file (see `jump_clock`), re-read every second.
            .env("LD_PRELOAD", FAKETIME_LIB)
            .env("FAKETIME_TIMESTAMP_FILE", clock_file(node))
            .env("FAKETIME_CACHE_DURATION", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if id == 1 {
            cmd.arg("--bootstrap");
        } else {
            cmd.arg("--join").arg(seeds.join(","));
        }
        // `ip netns exec` execs the node: the child's pid is the node's.
        node.child = Some(cmd.spawn().expect("start ringfs-node"));
    }

    /// `kill -9`.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.node_mut(id).child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether node `id` runs (a node that exited by itself, e.g. on a full disk, is
    /// reaped and reported stopped).
    pub fn is_running(&mut self, id: u64) -> bool {
        let node = self.node_mut(id);
        match node.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                node.child = None;
                false
            }
            None => false,
        }
    }

    fn ns_exec(&self, id: u64, args: &[&str]) -> Result<String, String> {
        let node = self.node(id);
        let mut full = vec!["ip", "netns", "exec", node.ns.as_str()];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Cuts node `id` off from everyone (peers and clients).
    pub fn isolate(&self, id: u64) {
        let dev = self.node(id).dev.clone();
        self.ns_exec(id, &["iptables", "-A", "INPUT", "-i", &dev, "-j", "DROP"])
            .unwrap_or_else(|e| panic!("{e}"));
        self.ns_exec(id, &["iptables", "-A", "OUTPUT", "-o", &dev, "-j", "DROP"])
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Drops all traffic between the nodes of `a` and those of `b` (clients still reach
    /// both sides).
    pub fn partition(&self, a: &[u64], b: &[u64]) {
        for (side, other) in [(a, b), (b, a)] {
            for &x in side {
                for &y in other {
                    let ip = self.node(y).ip.clone();
                    self.ns_exec(x, &["iptables", "-A", "INPUT", "-s", &ip, "-j", "DROP"])
                        .unwrap_or_else(|e| panic!("{e}"));
                    self.ns_exec(x, &["iptables", "-A", "OUTPUT", "-d", &ip, "-j", "DROP"])
                        .unwrap_or_else(|e| panic!("{e}"));
                }
            }
        }
    }

    /// Slows node `id`'s link in both directions and drops `loss_pct` % of its packets:
    /// `tc netem delay 50ms 20ms` where the kernel has netem, otherwise (this CI's
    /// kernel has no sch_netem) a token bucket (`tbf`) at `rate`, whose queue adds the
    /// delay. Loss comes from iptables' `statistic` match. Returns what was applied.
    pub fn slow_link(&self, id: u64, rate: &str, loss_pct: u32) -> String {
        let node = self.node(id);
        let netem = ["netem", "delay", "50ms", "20ms"];
        let tbf = ["tbf", "rate", rate, "burst", "32kbit", "latency", "500ms"];
        let mut how = "netem delay 50ms 20ms";
        for (ns, dev) in [(true, node.dev.as_str()), (false, node.host_dev.as_str())] {
            let base = ["tc", "qdisc", "replace", "dev", dev, "root"];
            let run = |q: &[&str]| {
                let mut args: Vec<&str> = base.to_vec();
                args.extend_from_slice(q);
                if ns {
                    self.ns_exec(id, &args)
                } else {
                    sh(&args)
                }
            };
            if run(&netem).is_err() {
                run(&tbf).unwrap_or_else(|e| panic!("{e}"));
                how = "tbf";
            }
        }
        let p = format!("{:.4}", f64::from(loss_pct) / 100.0);
        for chain in ["INPUT", "OUTPUT"] {
            self.ns_exec(
                id,
                &[
                    "iptables",
                    "-A",
                    chain,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &p,
                    "-j",
                    "DROP",
                ],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
        if how == "tbf" {
            format!("tbf rate {rate}, {loss_pct}% loss")
        } else {
            format!("{how}, {loss_pct}% loss")
        }
    }

    /// Undoes every network fault on node `id`.
    pub fn heal_net(&self, id: u64) {
        let node = self.node(id);
        let _ = self.ns_exec(id, &["iptables", "-F"]);
        let _ = self.ns_exec(id, &["tc", "qdisc", "del", "dev", &node.dev, "root"]);
        let _ = sh(&["tc", "qdisc", "del", "dev", &node.host_dev, "root"]);
    }

    /// Fills node `id`'s (small) disk until writes fail with ENOSPC; returns the bytes
    /// written.
    pub fn fill_disk(&self, id: u64) -> u64 {
        use std::io::Write;
        let node = self.node(id);
        assert!(node.tmpfs_mib.is_some(), "node {id} has no small disk");
        let path = node.data_dir.join("FILLER");
        let mut f = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0xA5u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling the disk of node {id}: {e}"),
            }
        }
        total
    }

    pub fn free_disk(&self, id: u64) {
        let _ = std::fs::remove_file(self.node(id).data_dir.join("FILLER"));
    }

    /// Shifts node `id`'s wall clock by `offset_secs` (negative: back) from true time;
    /// 0 sets it right again. Takes effect within a second; survives restarts.
    pub fn jump_clock(&self, id: u64, offset_secs: i64) {
        let text = if offset_secs >= 0 {
            format!("+{offset_secs}\n")
        } else {
            format!("{offset_secs}\n")
        };
        std::fs::write(clock_file(self.node(id)), text).expect("clock file");
    }

    /// Throttles node `id`'s disk: its process joins a cgroup limited to `iops` reads and
    /// writes per second and `bps` bytes per second on the device of its data directory.
    /// Synchronous I/O (the Raft log's and block files' fsyncs, reads that miss the page
    /// cache) waits. Returns a description, or why the node's disk cannot be throttled.
    pub fn slow_disk(&self, id: u64, iops: u64, bps: u64) -> Result<String, String> {
        let node = self.node(id);
        let dev = device_of(&node.data_dir)
            .ok_or_else(|| format!("node {id}'s data directory is not on a block device"))?;
        let pid = node
            .child
            .as_ref()
            .map(|c| c.id())
            .ok_or_else(|| format!("node {id} is not running"))?;
        let dir = cgroup_dir(self.run, id);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let write = |file: &str, value: String| {
            std::fs::write(dir.join(file), &value)
                .map_err(|e| format!("{} <- {value}: {e}", dir.join(file).display()))
        };
        if dir.starts_with(BLKIO_V1) {
            write("blkio.throttle.read_iops_device", format!("{dev} {iops}"))?;
            write("blkio.throttle.write_iops_device", format!("{dev} {iops}"))?;
            write("blkio.throttle.read_bps_device", format!("{dev} {bps}"))?;
            write("blkio.throttle.write_bps_device", format!("{dev} {bps}"))?;
        } else {
            let _ = std::fs::write(Path::new(CGROUP_V2).join("cgroup.subtree_control"), "+io");
            write(
                "io.max",
                format!("{dev} riops={iops} wiops={iops} rbps={bps} wbps={bps}"),
            )?;
        }
        write("cgroup.procs", pid.to_string())?;
        Ok(format!(
            "{iops} IO/s and {} KiB/s on device {dev}",
            bps >> 10
        ))
    }

    /// I/O operations node `id`'s throttled cgroup has issued so far (cgroup v1), to show
    /// the throttle was in the node's path.
    pub fn slow_disk_ios(&self, id: u64) -> Option<u64> {
        let text =
            std::fs::read_to_string(cgroup_dir(self.run, id).join("blkio.throttle.io_serviced"))
                .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("Total "))
            .and_then(|n| n.trim().parse().ok())
    }

    /// Lifts node `id`'s disk throttle.
    pub fn heal_disk(&self, id: u64) {
        remove_cgroup(&cgroup_dir(self.run, id));
    }

    /// Every block file stored on node `id` (layout of `node-server/src/blocks.rs`:
    /// `blocks/<2 hex>/<id>`).
    pub fn block_files(&self, id: u64) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let root = self.node(id).data_dir.join("blocks");
        let Ok(dirs) = std::fs::read_dir(&root) else {
            return out;
        };
        for d in dirs.flatten() {
            let name = d.file_name();
            if name.len() != 2 || !d.path().is_dir() {
                continue;
            }
            for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
                if f.path().is_file() {
                    out.push(f.path());
                }
            }
        }
        out.sort();
        out
    }

    /// Flips one byte in place in each of `files`; returns how many were changed.
    pub fn corrupt(files: &[PathBuf], pick: impl Fn(u64) -> u64) -> usize {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut done = 0;
        for p in files {
            let Ok(mut f) = std::fs::OpenOptions::new().read(true).write(true).open(p) else {
                continue;
            };
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if len == 0 {
                continue;
            }
            let at = pick(len);
            let mut b = [0u8];
            if f.seek(SeekFrom::Start(at)).is_err() || f.read_exact(&mut b).is_err() {
                continue;
            }
            b[0] ^= 0xFF;
            if f.seek(SeekFrom::Start(at)).is_ok() && f.write_all(&b).is_ok() {
                done += 1;
            }
        }
        done
    }

    /// The last lines of every node's log, for a failing test.
    pub fn log_tails(&self, lines: usize) {
        for n in &self.nodes {
            if let Ok(log) = std::fs::read_to_string(node_log(n)) {
                let tail: Vec<&str> = log.lines().rev().take(lines).collect();
                eprintln!("---- node {} log (last {lines} lines) ----", n.id);
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

fn clock_file(n: &NetNode) -> PathBuf {
    n.data_dir.with_extension("clock")
}

fn node_log(n: &NetNode) -> PathBuf {
    // Outside the (possibly full) data directory.
    n.data_dir.with_extension("log")
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            self.log_tails(30);
        }
        teardown_run(self.run, &self.mounts);
        let _ = std::fs::remove_file(format!("{STATE_DIR}/{}", self.run));
    }
}
