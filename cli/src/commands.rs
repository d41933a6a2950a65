//! Cluster, volume and file commands.

use crate::Command;
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use ringfs_client::{ChannelPool, ClientError, Cluster, Vol, VolumeSource};
use ringfs_core::fs::FileKind;
use ringfs_core::units::{format_size, parse_size};
use ringfs_proto::admin::RebalanceStatusReply;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Leader, members, layout and stored data.
    Status,
    /// Mark a node leaving: its data moves to the other nodes; remove it once drained.
    /// Refused when fewer than the replication factor of active nodes would remain.
    Drain {
        /// Node id (see `ringfs cluster status`).
        node: u64,
        /// Cancel a drain in progress: the node becomes active again.
        #[arg(long)]
        cancel: bool,
    },
    /// Remove a drained node from the cluster (refused until it is drained, unless
    /// --force on a node that is down).
    Remove {
        node: u64,
        /// Remove a down node whose data was not re-homed (restored from other replicas).
        #[arg(long)]
        force: bool,
    },
    /// Start one more local node process and join it (dev clusters from `ringfs dev up`).
    AddNode {
        /// The dev cluster's directory.
        #[arg(long, default_value = "ringfs-dev")]
        dir: std::path::PathBuf,
        /// Capacity the new node offers.
        #[arg(long, default_value = "10GiB")]
        capacity: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum RebalanceCmd {
    /// Data movement progress: partitions and bytes left, rate, ETA.
    Status {
        /// Keep showing progress (a progress bar) until the cluster is healthy.
        #[arg(long)]
        watch: bool,
        /// Seconds between updates with --watch.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
}

#[derive(Subcommand, Debug)]
pub enum VolumeCmd {
    /// Create a volume (idempotent when the settings match), empty or as a clone.
    Create {
        name: String,
        /// Capacity quota, e.g. 10GiB (with --from: default the source's capacity).
        #[arg(long, short, required_unless_present = "from")]
        size: Option<String>,
        /// Replicas of every block (default: 3, or fewer on a smaller cluster; a clone
        /// keeps its source's).
        #[arg(long, short, default_value_t = 0)]
        replication: u32,
        /// Start as a copy-on-write clone of this snapshot or volume (blocks are shared,
        /// nothing is copied; later writes on either side stay on that side). Write
        /// `snapshot:NAME` or `volume:NAME` when a snapshot and a volume share the name.
        #[arg(long, value_name = "SNAPSHOT_OR_VOLUME")]
        from: Option<String>,
    },
    /// List volumes.
    Ls,
    /// Change a volume's capacity quota.
    Resize {
        name: String,
        #[arg(long, short)]
        size: String,
    },
    /// Delete a volume and all its data (idempotent).
    Rm { name: String },
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Take a snapshot of a volume: a read-only, point-in-time copy of its whole
    /// namespace that shares its blocks (idempotent for the same volume).
    Create { volume: String, name: String },
    /// List snapshots (of one volume, when given).
    Ls { volume: Option<String> },
    /// Delete a snapshot; blocks only it references are freed (idempotent).
    Rm { name: String },
}

/// Seeds from --cluster, else the dev cluster's file, else the default port.
pub fn resolve_seeds(given: Vec<String>) -> Vec<String> {
    if !given.is_empty() {
        return given;
    }
    if let Ok(state) = crate::dev::DevState::load(&crate::default_dev_dir()) {
        return state.nodes.iter().map(|n| n.addr.clone()).collect();
    }
    vec!["127.0.0.1:7420".into()]
}

/// The credentials the CLI presents: `--tls-dir` / `--admin-token-file`, or else the admin
/// certificate of the local dev cluster (`./ringfs-dev`) when it runs with TLS and the
/// addresses used are its nodes'.
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub tls_dir: Option<PathBuf>,
    pub admin_token_file: Option<PathBuf>,
}

impl Security {
    pub fn resolve(
        tls_dir: Option<PathBuf>,
        admin_token_file: Option<PathBuf>,
        cluster: &[String],
    ) -> Security {
        // The dev cluster's certificate is used only for that cluster: no --cluster, or
        // addresses that are all its nodes (e.g. RINGFS_CLUSTER as `dev up` printed it).
        let tls_dir = tls_dir.or_else(|| {
            let state = crate::dev::DevState::load(&crate::default_dev_dir()).ok()?;
            let ours = cluster
                .iter()
                .all(|a| state.nodes.iter().any(|n| n.addr == a.trim()));
            if !ours {
                return None;
            }
            Some(state.tls.as_ref()?.join(crate::dev::ADMIN_CERT_DIR))
        });
        Security {
            tls_dir,
            admin_token_file,
        }
    }

    /// The channel pool presenting these credentials.
    pub fn pool(&self) -> Result<ChannelPool> {
        Ok(ChannelPool::secured(
            self.tls_dir.as_deref(),
            self.admin_token_file.as_deref(),
        )?)
    }

    pub fn cluster(&self, seeds: Vec<String>) -> Result<Arc<Cluster>> {
        Ok(Cluster::with_pool(seeds, self.pool()?)?)
    }
}

/// `volume:/path` → (volume, path).
fn split_remote(s: &str) -> Result<(&str, &str)> {
    match s.split_once(':') {
        Some((v, p)) if !v.is_empty() => Ok((v, if p.is_empty() { "/" } else { p })),
        _ => bail!("{s:?} is not a volume path; write it as VOLUME:/path, e.g. data:/logs/a.txt"),
    }
}

/// Opens `VOLUME`, or `@SNAPSHOT` read-only.
async fn open_vol(cluster: &Arc<Cluster>, name: &str) -> Result<Vol> {
    Ok(match name.strip_prefix('@') {
        Some(snap) => Vol::open_snapshot(cluster.clone(), snap).await?,
        None => Vol::open(cluster.clone(), name).await?,
    })
}

fn size_arg(s: &str) -> Result<u64> {
    let v = parse_size(s)?;
    if v == 0 {
        bail!("size must be greater than 0");
    }
    Ok(v)
}

fn progress_bar(len: Option<u64>) -> ProgressBar {
    // Hidden automatically when stderr is not a terminal; only worth it for big copies.
    match len {
        Some(n) if n >= 8 << 20 => {
            let pb = ProgressBar::new(n);
            pb.set_style(
                ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            pb
        }
        _ => ProgressBar::hidden(),
    }
}

pub async fn run(cmd: Command, seeds: Vec<String>, security: Security, json: bool) -> Result<()> {
    let cluster = security.cluster(seeds)?;
    match cmd {
        Command::Cluster(ClusterCmd::Status) => status(&cluster, json).await,
        Command::Cluster(ClusterCmd::Drain { node, cancel }) => {
            let r = cluster.drain(node, cancel).await?;
            println!("{}", r.message);
            Ok(())
        }
        Command::Cluster(ClusterCmd::Remove { node, force }) => {
            let r = cluster.remove_node(node, force).await?;
            if r.removed {
                println!("node {node} removed (layout v{})", r.layout_version);
            } else {
                println!("node {node} is not a member; nothing to do");
            }
            Ok(())
        }
        Command::Cluster(ClusterCmd::AddNode { dir, capacity }) => {
            crate::dev::add_node(&dir, &capacity).await
        }
        Command::Rebalance(RebalanceCmd::Status { watch, interval }) => {
            rebalance_status(&cluster, watch, interval, json).await
        }
        Command::Volume(v) => volume(&cluster, v, json).await,
        Command::Snapshot(s) => snapshot(&cluster, s, json).await,
        Command::Put { src, dst } => {
            let (vname, path) = split_remote(&dst)?;
            let vol = open_vol(&cluster, vname).await?;
            let (reader, len): (Box<dyn tokio::io::AsyncRead + Unpin + Send>, Option<u64>) =
                if src == "-" {
                    (Box::new(tokio::io::stdin()), None)
                } else {
                    let f = tokio::fs::File::open(&src)
                        .await
                        .with_context(|| format!("cannot open {src}"))?;
                    let len = f.metadata().await.ok().map(|m| m.len());
                    (Box::new(f), len)
                };
            let pb = progress_bar(len);
            let start = std::time::Instant::now();
            let attr = vol
                .write_file(path, reader, 0o644, &|n| pb.set_position(n))
                .await?;
            pb.finish_and_clear();
            let secs = start.elapsed().as_secs_f64().max(1e-6);
            eprintln!(
                "wrote {} to {dst} ({}/s)",
                format_size(attr.size),
                format_size((attr.size as f64 / secs) as u64)
            );
            Ok(())
        }
        Command::Get { src, dst } => {
            let (vname, path) = split_remote(&src)?;
            let vol = open_vol(&cluster, vname).await?;
            let size = vol.stat(path).await?.size;
            let pb = progress_bar(Some(size));
            if dst == "-" {
                let mut out = tokio::io::stdout();
                vol.read_file(path, &mut out, &|n| pb.set_position(n))
                    .await?;
            } else {
                // Write next to the target and rename, so a failed copy never leaves a
                // truncated file under the final name.
                let tmp = format!("{dst}.ringfs-partial");
                let mut f = tokio::fs::File::create(&tmp)
                    .await
                    .with_context(|| format!("cannot create {tmp}"))?;
                let res = vol.read_file(path, &mut f, &|n| pb.set_position(n)).await;
                if let Err(e) = res {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return Err(e.into());
                }
                f.sync_all().await?;
                tokio::fs::rename(&tmp, &dst).await?;
            }
            pb.finish_and_clear();
            Ok(())
        }
        Command::Ls { path } => {
            let (vname, path) = split_remote(&path)?;
            let vol = open_vol(&cluster, vname).await?;
            let entries = vol.list(path).await?;
            if json {
                let v: Vec<_> = entries
                    .iter()
                    .map(|e| serde_json::json!({"name": String::from_utf8_lossy(&e.name), "ino": e.ino, "kind": format!("{:?}", e.kind)}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            for e in entries {
                let child = format!(
                    "{}/{}",
                    path.trim_end_matches('/'),
                    String::from_utf8_lossy(&e.name)
                );
                let size = match e.kind {
                    FileKind::Dir => "-".to_string(),
                    _ => vol
                        .stat(&child)
                        .await
                        .map(|a| a.size.to_string())
                        .unwrap_or_else(|_| "?".into()),
                };
                let kind = match e.kind {
                    FileKind::Dir => "d",
                    FileKind::File => "-",
                    FileKind::Symlink => "l",
                };
                println!("{kind} {size:>14} {}", String::from_utf8_lossy(&e.name));
            }
            Ok(())
        }
        Command::Mkdir { path, parents } => {
            let (vname, path) = split_remote(&path)?;
            let vol = open_vol(&cluster, vname).await?;
            if parents {
                vol.mkdir_p(path).await?;
            } else {
                vol.mkdir(path, 0o755).await?;
            }
            Ok(())
        }
        Command::Rm { path, recursive } => {
            let (vname, path) = split_remote(&path)?;
            let vol = open_vol(&cluster, vname).await?;
            if recursive {
                vol.remove_all(path).await?;
            } else {
                vol.remove(path).await?;
            }
            Ok(())
        }
        Command::Dev(_) | Command::Mount(_) | Command::Umount(_) | Command::Certs(_) => {
            unreachable!("handled in main")
        }
    }
}

fn rebalance_line(r: &RebalanceStatusReply) -> String {
    let versions: Vec<String> = r.live_versions.iter().map(|v| format!("v{v}")).collect();
    format!(
        "layout v{} (live: {}), {} of {} partition copies left, {} of {} moved, {}/s, eta {}, \
         under-replicated {}: {}",
        r.layout_version,
        versions.join(","),
        r.partitions_left,
        r.partitions_total,
        format_size(r.bytes_moved),
        format_size(r.bytes_total),
        format_size(r.rate_bytes_per_sec as u64),
        if r.eta_seconds > 0.0 {
            format!("{:.0}s", r.eta_seconds)
        } else {
            "-".into()
        },
        r.under_replicated,
        r.message
    )
}

async fn rebalance_status(
    cluster: &Arc<Cluster>,
    watch: bool,
    interval: f64,
    json: bool,
) -> Result<()> {
    if !(interval > 0.0 && interval.is_finite()) {
        bail!("--interval must be a positive number of seconds");
    }
    let r = cluster.rebalance_status().await?;
    if json {
        let v = serde_json::json!({
            "layout_version": r.layout_version, "live_versions": r.live_versions,
            "active": r.active, "healthy": r.healthy,
            "partitions_total": r.partitions_total, "partitions_left": r.partitions_left,
            "bytes_total": r.bytes_total, "bytes_moved": r.bytes_moved, "bytes_left": r.bytes_left,
            "rate_bytes_per_sec": r.rate_bytes_per_sec, "eta_seconds": r.eta_seconds,
            "under_replicated": r.under_replicated, "message": r.message,
            "nodes": r.nodes.iter().map(|n| serde_json::json!({"id": n.id, "state": n.state, "partitions": n.partitions})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if !watch {
        println!("{}", rebalance_line(&r));
        for n in &r.nodes {
            println!(
                "  node {:>3}  {:<9} {:>5} partitions  {}",
                n.id, n.state, n.partitions, n.addr
            );
        }
        println!("healthy: {}", r.healthy);
        return Ok(());
    }
    let pb = ProgressBar::new(u64::from(r.partitions_total.max(1)));
    pb.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} partitions {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut r = r;
    loop {
        pb.set_length(u64::from(r.partitions_total.max(1)));
        pb.set_position(u64::from(
            r.partitions_total.saturating_sub(r.partitions_left),
        ));
        pb.set_message(format!(
            "{} left, {}/s, eta {}, v{} live {:?}",
            format_size(r.bytes_left),
            format_size(r.rate_bytes_per_sec as u64),
            if r.eta_seconds > 0.0 {
                format!("{:.0}s", r.eta_seconds)
            } else {
                "-".into()
            },
            r.layout_version,
            r.live_versions
        ));
        if pb.is_hidden() {
            println!("{}", rebalance_line(&r));
        }
        if r.healthy {
            pb.finish_with_message("healthy: one layout version live, every partition at RF");
            if pb.is_hidden() {
                println!("healthy");
            }
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_secs_f64(interval)).await;
        r = cluster.rebalance_status().await?;
    }
}

async fn status(cluster: &Arc<Cluster>, json: bool) -> Result<()> {
    let s = cluster.status().await?;
    if json {
        let nodes: Vec<_> = s
            .nodes
            .iter()
            .map(|n| serde_json::json!({"id": n.id, "addr": n.addr, "zone": n.zone, "capacity_bytes": n.capacity_bytes, "role": n.role, "state": n.state, "partitions": n.partitions}))
            .collect();
        let v = serde_json::json!({
            "leader_id": s.leader_id, "leader_addr": s.leader_addr, "term": s.term,
            "last_log_index": s.last_log_index, "last_applied": s.last_applied,
            "layout_version": s.layout_version, "partitions": s.partitions, "replication": s.replication,
            "volumes": s.volumes, "nodes": nodes,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("leader:      node {} ({})", s.leader_id, s.leader_addr);
    println!(
        "raft:        term {}, log {}, applied {}",
        s.term, s.last_log_index, s.last_applied
    );
    println!(
        "layout:      version {}, {} partitions, replication {}",
        s.layout_version, s.partitions, s.replication
    );
    println!("volumes:     {}", s.volumes);
    println!("nodes:");
    for n in &s.nodes {
        let stored = match cluster.node_status(&n.addr).await {
            Ok(ns) => format!(
                "{} blocks, {}",
                ns.blocks_stored,
                format_size(ns.bytes_stored)
            ),
            Err(_) => "unreachable".to_string(),
        };
        println!(
            "  {:>3}  {:<22} zone={:<10} capacity={:<10} {:<8} {:<9} {:>5} partitions  {}",
            n.id,
            n.addr,
            n.zone,
            format_size(n.capacity_bytes),
            n.role,
            n.state,
            n.partitions,
            stored
        );
    }
    Ok(())
}

async fn volume(cluster: &Arc<Cluster>, cmd: VolumeCmd, json: bool) -> Result<()> {
    match cmd {
        VolumeCmd::Create {
            name,
            size,
            replication,
            from,
        } => {
            let (v, created) = match from {
                None => {
                    let size = size.context("--size is required")?;
                    cluster
                        .create_volume(&name, size_arg(&size)?, replication)
                        .await?
                }
                Some(from) => {
                    let (source, default_size) = resolve_source(cluster, &from).await?;
                    let size = match size {
                        Some(s) => size_arg(&s)?,
                        None => default_size,
                    };
                    cluster
                        .clone_volume(&name, size, replication, &source)
                        .await?
                }
            };
            let origin = origin_text(&v);
            if created {
                println!(
                    "created volume {} ({}, replication {}{})",
                    v.name,
                    format_size(v.capacity_bytes),
                    v.replication,
                    if origin.is_empty() {
                        String::new()
                    } else {
                        format!(", clone of {origin}")
                    }
                );
            } else {
                println!("volume {} already exists with these settings", v.name);
            }
        }
        VolumeCmd::Ls => {
            let vols = cluster.list_volumes().await?;
            if json {
                let v: Vec<_> = vols
                    .iter()
                    .map(|v| serde_json::json!({"name": v.name, "id": v.id, "capacity_bytes": v.capacity_bytes, "used_bytes": v.used_bytes, "replication": v.replication, "inodes": v.used_inodes, "source_snapshot": v.source_snapshot, "source_volume": v.source_volume}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!(
                "{:<24} {:>12} {:>12} {:>4} {:>8}  SOURCE",
                "NAME", "CAPACITY", "USED", "RF", "INODES"
            );
            for v in vols {
                println!(
                    "{:<24} {:>12} {:>12} {:>4} {:>8}  {}",
                    v.name,
                    format_size(v.capacity_bytes),
                    format_size(v.used_bytes),
                    v.replication,
                    v.used_inodes,
                    origin_text(&v)
                );
            }
        }
        VolumeCmd::Resize { name, size } => {
            let v = cluster.resize_volume(&name, size_arg(&size)?).await?;
            println!(
                "volume {} now has capacity {}",
                v.name,
                format_size(v.capacity_bytes)
            );
        }
        VolumeCmd::Rm { name } => {
            if cluster.delete_volume(&name).await? {
                println!("deleted volume {name}");
            } else {
                println!("volume {name} does not exist (nothing to do)");
            }
        }
    }
    Ok(())
}

/// "snapshot NAME" / "volume NAME" for a clone, "" otherwise.
fn origin_text(v: &ringfs_proto::meta::Volume) -> String {
    if !v.source_snapshot.is_empty() {
        format!("snapshot {}", v.source_snapshot)
    } else if !v.source_volume.is_empty() {
        format!("volume {}", v.source_volume)
    } else {
        String::new()
    }
}

fn not_found(e: &ClientError) -> bool {
    e.code() == Some(tonic::Code::NotFound)
}

/// What `--from` names, and the capacity a clone of it gets unless told: a snapshot's
/// source capacity, a volume's capacity.
async fn resolve_source(cluster: &Arc<Cluster>, from: &str) -> Result<(VolumeSource, u64)> {
    let snapshot = |name: String| async move {
        match cluster.snapshot(&name).await {
            Ok(s) => Ok(Some((
                VolumeSource::Snapshot(s.name),
                s.source_capacity_bytes.max(s.size_bytes),
            ))),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(anyhow::Error::from(e)),
        }
    };
    let volume = |name: String| async move {
        match cluster.volume(&name).await {
            Ok(v) => Ok(Some((VolumeSource::Volume(v.name), v.capacity_bytes))),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(anyhow::Error::from(e)),
        }
    };
    if let Some(n) = from.strip_prefix("snapshot:") {
        return snapshot(n.to_string()).await?.with_context(|| {
            format!("snapshot {n:?} does not exist; `ringfs snapshot ls` lists snapshots")
        });
    }
    if let Some(n) = from.strip_prefix("volume:") {
        return volume(n.to_string()).await?.with_context(|| {
            format!("volume {n:?} does not exist; `ringfs volume ls` lists volumes")
        });
    }
    match (snapshot(from.to_string()).await?, volume(from.to_string()).await?) {
        (Some(_), Some(_)) => bail!(
            "{from:?} names both a snapshot and a volume; write --from snapshot:{from} or --from volume:{from}"
        ),
        (Some(s), None) | (None, Some(s)) => Ok(s),
        (None, None) => bail!(
            "no snapshot or volume is named {from:?}; `ringfs snapshot ls` and `ringfs volume ls` list them"
        ),
    }
}

async fn snapshot(cluster: &Arc<Cluster>, cmd: SnapshotCmd, json: bool) -> Result<()> {
    match cmd {
        SnapshotCmd::Create { volume, name } => {
            let (s, created) = cluster.create_snapshot(&name, &volume).await?;
            if created {
                println!(
                    "snapshot {} of volume {} taken ({} in {} inodes)",
                    s.name,
                    s.source_volume,
                    format_size(s.size_bytes),
                    s.used_inodes
                );
            } else {
                println!(
                    "snapshot {} of volume {} already exists",
                    s.name, s.source_volume
                );
            }
        }
        SnapshotCmd::Ls { volume } => {
            let snaps = cluster.list_snapshots(volume.as_deref()).await?;
            if json {
                let v: Vec<_> = snaps
                    .iter()
                    .map(|s| serde_json::json!({"name": s.name, "id": s.id, "source_volume": s.source_volume, "size_bytes": s.size_bytes, "inodes": s.used_inodes, "replication": s.replication, "created_unix_nanos": s.created_unix_nanos}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!(
                "{:<24} {:<24} {:>12} {:>8}  CREATED (unix)",
                "NAME", "VOLUME", "SIZE", "INODES"
            );
            for s in snaps {
                println!(
                    "{:<24} {:<24} {:>12} {:>8}  {}",
                    s.name,
                    s.source_volume,
                    format_size(s.size_bytes),
                    s.used_inodes,
                    s.created_unix_nanos / 1_000_000_000
                );
            }
        }
        SnapshotCmd::Rm { name } => {
            if cluster.delete_snapshot(&name).await? {
                println!("deleted snapshot {name}");
            } else {
                println!("snapshot {name} does not exist (nothing to do)");
            }
        }
    }
    Ok(())
}
