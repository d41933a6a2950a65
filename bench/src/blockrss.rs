//! Memory of a storage node holding many blocks: writes `blocks` block files in the
//! node's on-disk format straight into a fresh data directory (a put per block through
//! the network would take hours here and measures nothing more about memory), starts a
//! real `ringfs-node` on it, waits until the node reports that many blocks stored, and
//! samples its resident memory for a while. Prints current and peak RSS.

use crate::record::emit;
use crate::Tags;
use anyhow::{bail, Context, Result};
use ringfs_core::BlockId;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Params {
    pub node_bin: PathBuf,
    /// Scratch data directory (must not exist; removed afterwards).
    pub dir: PathBuf,
    pub blocks: u64,
    pub block_bytes: usize,
    /// How long the running node is sampled after it reported every block.
    pub sample_secs: f64,
}

/// Spread ids over the 256 shard directories like random ids do.
fn block_id(i: u64) -> BlockId {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    BlockId::from_u128(((z as u128) << 64) | i as u128)
}

/// (VmRSS, VmHWM) in KiB.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

struct Node(Child);
impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_blocks(dir: &Path, p: &Params) -> Result<()> {
    let data: Vec<u8> = (0..p.block_bytes).map(|i| (i * 7 + 3) as u8).collect();
    let Some(file) = ringfs_node::blocks::encode_block_file(&data) else {
        bail!("--block-bytes {} is not a valid block size", p.block_bytes);
    };
    let blocks = dir.join("blocks");
    for shard in 0..=255u8 {
        std::fs::create_dir_all(blocks.join(format!("{shard:02x}")))?;
    }
    let t0 = Instant::now();
    for i in 0..p.blocks {
        let id = block_id(i);
        let path = blocks.join(format!("{:02x}", id.0[0])).join(id.to_string());
        std::fs::write(&path, &file).with_context(|| format!("writing {}", path.display()))?;
        if (i + 1) % 200_000 == 0 {
            eprintln!(
                "[block-rss] {} block files written ({:.0} s)",
                i + 1,
                t0.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

pub async fn run(tags: &Tags, p: &Params) -> Result<()> {
    if p.dir.exists() {
        bail!(
            "{} exists; give a directory that does not (it is removed afterwards)",
            p.dir.display()
        );
    }
    if p.sample_secs.is_nan() || p.sample_secs <= 0.0 {
        bail!("--sample-seconds must be positive");
    }
    let result = measure(tags, p).await;
    let _ = std::fs::remove_dir_all(&p.dir);
    result
}

async fn measure(tags: &Tags, p: &Params) -> Result<()> {
    write_blocks(&p.dir, p)?;
    let log = std::fs::File::create(p.dir.join("node.log"))?;
    let child = Command::new(&p.node_bin)
        .args(["--id", "1", "--bootstrap", "--listen", "127.0.0.1:0"])
        .args(["--http-listen", "127.0.0.1:0", "--capacity", "100GiB"])
        .arg("--data-dir")
        .arg(&p.dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", p.node_bin.display()))?;
    let pid = child.id();
    let mut node = Node(child);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    let addr = loop {
        if let Some(status) = node.0.try_wait()? {
            bail!(
                "the node exited ({status}); see {}",
                p.dir.join("node.log").display()
            );
        }
        let text = std::fs::read_to_string(p.dir.join(ringfs_node::app::ADDR_FILE)).ok();
        if let Some(a) = text.as_deref().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("grpc="))
                .map(str::to_string)
        }) {
            break a;
        }
        if Instant::now() > deadline {
            bail!("the node did not start within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let cluster = ringfs_client::Cluster::new(vec![addr.clone()])?;
    loop {
        if let Ok(s) = cluster.node_status(&addr).await {
            if s.blocks_stored == p.blocks {
                break;
            }
            if s.blocks_stored > p.blocks {
                bail!(
                    "the node reports {} blocks, expected {}",
                    s.blocks_stored,
                    p.blocks
                );
            }
        }
        if Instant::now() > deadline {
            bail!("the node did not report {} blocks within 600 s", p.blocks);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let startup = started.elapsed().as_secs_f64();
    // The sampling window: the node serves (status calls) with every block on disk.
    let until = Instant::now() + Duration::from_secs_f64(p.sample_secs);
    let (mut rss, mut hwm) = (0u64, 0u64);
    while Instant::now() < until {
        let _ = cluster.node_status(&addr).await;
        if let Some((r, h)) = rss_kib(pid) {
            rss = rss.max(r);
            hwm = hwm.max(h);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if hwm == 0 {
        bail!("could not read /proc/{pid}/status");
    }
    let test = "node-blocks";
    emit(tags, test, "blocks", "blocks", p.blocks as f64, true);
    emit(tags, test, "rss_mib", "MiB", rss as f64 / 1024.0, false);
    emit(
        tags,
        test,
        "peak_rss_mib",
        "MiB",
        hwm as f64 / 1024.0,
        false,
    );
    emit(tags, test, "startup_s", "s", startup, false);
    eprintln!(
        "[block-rss] node with {} blocks: RSS {:.1} MiB, peak {:.1} MiB; up with every block counted in {startup:.1} s",
        p.blocks,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    drop(node);
    Ok(())
}
