//! Foreground latency during a rebalance: a client writes and reads back small files
//! without pause; first in steady state, then while the cluster moves data to a node
//! that joins (the command given, e.g. `ringfs cluster add-node`), until every partition
//! is at RF on the new layout. Prints the p99 of each phase and how long the move took.

use crate::record::emit;
use crate::Tags;
use anyhow::{bail, Context, Result};
use ringfs_client::{Cluster, Vol};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const STEADY: u64 = 0;
const DURING: u64 = 1;
/// Size of each foreground file (written, then read back and compared).
const FILE_BYTES: usize = 64 << 10;

pub struct Params<'a> {
    pub seeds: &'a str,
    pub volume: &'a str,
    /// Length of the steady-state measurement window.
    pub steady_secs: f64,
    /// MiB written before measuring, so that the join has data to move.
    pub preload_mib: usize,
    /// Longest the rebalance may take before the run fails.
    pub timeout_secs: f64,
    pub command: &'a [String],
}

fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn p99(mut v: Vec<Duration>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort();
    let i = ((v.len() as f64 * 0.99) as usize).min(v.len() - 1);
    Some(v[i].as_secs_f64() * 1e3)
}

pub async fn run(tags: &Tags, p: &Params<'_>) -> Result<()> {
    if [p.steady_secs, p.timeout_secs]
        .iter()
        .any(|s| s.is_nan() || *s <= 0.0)
    {
        bail!("--steady-seconds and --timeout-seconds must be positive");
    }
    let Some((program, args)) = p.command.split_first() else {
        bail!("give the command that adds a node after `--`");
    };
    let seeds: Vec<String> = p.seeds.split(',').map(|s| s.trim().to_string()).collect();
    let cluster = Cluster::new(seeds).context("connecting to the cluster")?;
    let vol = Vol::open(cluster.clone(), p.volume)
        .await
        .with_context(|| format!("opening volume {:?}", p.volume))?;
    let top = format!("/rebalance-bench-{}", std::process::id());
    vol.mkdir(&top, 0o755).await?;
    for i in 0..p.preload_mib as u64 {
        vol.write_file(
            &format!("{top}/pre-{i}"),
            &content(i, 1 << 20)[..],
            0o644,
            &|_| {},
        )
        .await
        .context("preloading data")?;
    }
    let before = cluster.rebalance_status().await?.layout_version;

    let phase = Arc::new(AtomicU64::new(STEADY));
    let stop = Arc::new(AtomicBool::new(false));
    let lat: Arc<Mutex<Vec<(u64, Duration)>>> = Arc::default();
    let load = {
        let (vol, top, phase, stop, lat) = (
            vol.clone(),
            top.clone(),
            phase.clone(),
            stop.clone(),
            lat.clone(),
        );
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let ph = phase.load(Ordering::Relaxed);
                let data = content(1_000_000 + i, FILE_BYTES);
                let path = format!("{top}/fg-{i}");
                let t0 = Instant::now();
                vol.write_file(&path, &data[..], 0o644, &|_| {}).await?;
                let mut back = Vec::new();
                vol.read_file(&path, &mut back, &|_| {}).await?;
                let took = t0.elapsed();
                if back != data {
                    bail!("{path}: read back different bytes");
                }
                if let Ok(mut l) = lat.lock() {
                    l.push((ph, took));
                }
                i += 1;
            }
            Ok::<_, anyhow::Error>(())
        })
    };

    tokio::time::sleep(Duration::from_secs_f64(p.steady_secs)).await; // the steady window
    phase.store(DURING, Ordering::Relaxed);
    let t0 = Instant::now();
    // Its output goes to stderr: stdout carries this tool's records.
    let to_stderr = std::io::stderr().as_fd().try_clone_to_owned()?;
    let status = tokio::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::from(to_stderr))
        .status()
        .await
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("{program} failed ({status})");
    }
    // Done when a newer layout is the only live one and every partition is at RF there.
    let deadline = t0 + Duration::from_secs_f64(p.timeout_secs);
    loop {
        if load.is_finished() {
            break;
        }
        if let Ok(r) = cluster.rebalance_status().await {
            if r.layout_version > before
                && r.live_versions.len() == 1
                && r.partitions_left == 0
                && r.under_replicated == 0
            {
                break;
            }
        }
        if Instant::now() > deadline {
            stop.store(true, Ordering::Relaxed);
            bail!("the rebalance did not finish within {} s", p.timeout_secs);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let moved_in = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    load.await.context("foreground load task")??;

    let all = lat.lock().map(|l| l.clone()).unwrap_or_default();
    let of = |ph: u64| -> Vec<Duration> {
        all.iter()
            .filter(|(p, _)| *p == ph)
            .map(|(_, d)| *d)
            .collect()
    };
    let (steady, during) = (of(STEADY), of(DURING));
    let (n_steady, n_during) = (steady.len(), during.len());
    let (Some(p_steady), Some(p_during)) = (p99(steady), p99(during)) else {
        bail!("no foreground operation completed in one of the phases ({n_steady} steady, {n_during} during)");
    };
    emit(tags, "rebalance", "p99_steady_ms", "ms", p_steady, false);
    emit(tags, "rebalance", "p99_during_ms", "ms", p_during, false);
    emit(tags, "rebalance", "rebalance_s", "s", moved_in, false);
    eprintln!(
        "[rebalance] foreground p99 steady {p_steady:.1} ms ({n_steady} ops), during {p_during:.1} ms ({n_during} ops); rebalance took {moved_in:.1} s"
    );
    vol.remove_all(&top).await?;
    Ok(())
}
