//! Raft commit rate against a running cluster, and layout quality (pure computation).

use crate::record::{emit, parse_list};
use crate::Tags;
use anyhow::{bail, Context, Result};
use ringfs_client::{Cluster, Vol};
use ringfs_core::layout::{moved_fraction, Layout, NodeSpec};
use std::time::{Duration, Instant};

/// Each of `clients` tasks commits mkdirs (one Raft command each) until the time is up.
/// Prints commits/s and the p50/p99 commit latency per client count.
pub async fn run(tags: &Tags, seeds: &str, volume: &str, clients: &str, secs: f64) -> Result<()> {
    let counts: Vec<usize> = parse_list("clients", clients)?;
    if secs.is_nan() || secs <= 0.0 {
        bail!("--seconds must be positive");
    }
    let seeds: Vec<String> = seeds.split(',').map(|s| s.trim().to_string()).collect();
    let cluster = Cluster::new(seeds).context("connecting to the cluster")?;
    let vol = Vol::open(cluster, volume)
        .await
        .with_context(|| format!("opening volume {volume:?}"))?;
    let run_id = std::process::id();
    let top = format!("/raft-bench-{run_id}");
    vol.mkdir(&top, 0o755).await?;
    for c in counts {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..c {
            let vol = vol.clone();
            let top = top.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    vol.mkdir(&format!("{top}/c{c}-{t}-{i}"), 0o755).await?;
                    lat.push(t0.elapsed());
                    i += 1;
                }
                Ok::<_, ringfs_client::ClientError>(lat)
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.context("client task")??);
        }
        let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
        lat.sort();
        let pct = |q: f64| {
            lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
                .map(|d| d.as_secs_f64() * 1e3)
                .unwrap_or(0.0)
        };
        let test = format!("raft-{c}-clients");
        emit(tags, &test, "commits_per_s", "ops/s", rate, true);
        emit(tags, &test, "p50_ms", "ms", pct(0.50), false);
        emit(tags, &test, "p99_ms", "ms", pct(0.99), false);
        eprintln!(
            "[raft] {c} clients: {} commits, {rate:.0}/s, p99 {:.1} ms",
            lat.len(),
            pct(0.99)
        );
    }
    vol.remove_all(&top).await?;
    Ok(())
}

/// Balance and join movement of the layout for equal-capacity nodes, each in its own zone
/// (with fewer zones than nodes, zone spread can force imbalance between zones of
/// different sizes; crates/core's property tests cover those cases).
pub fn layout(tags: &Tags, nodes: &str, partitions: u32, replication: u32) -> Result<()> {
    let counts: Vec<u64> = parse_list("nodes", nodes)?;
    let spec = |id: u64| NodeSpec {
        id,
        zone: format!("zone-{id}"),
        capacity: 1 << 40,
    };
    for n in counts {
        if n == 0 {
            bail!("--nodes entries must be at least 1");
        }
        let specs: Vec<NodeSpec> = (1..=n).map(spec).collect();
        let t0 = Instant::now();
        let base = Layout::compute(None, &specs, replication, partitions)?;
        let compute_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut grown = specs.clone();
        grown.push(spec(n + 1));
        let next = Layout::compute(Some(&base), &grown, replication, partitions)?;
        let moved = moved_fraction(&base, &next);
        let optimum = 1.0 / (n + 1) as f64;
        let test = format!("layout-{n}-nodes");
        emit(
            tags,
            &test,
            "max_over_mean",
            "ratio",
            base.max_over_mean_per_capacity(),
            false,
        );
        emit(
            tags,
            &test,
            "join_moved_over_optimum",
            "ratio",
            moved / optimum,
            false,
        );
        emit(tags, &test, "compute_ms", "ms", compute_ms, false);
        eprintln!(
            "[layout] N={n}: max/mean {:.4}, join moves {moved:.4} = {:.3} x optimum 1/(N+1), {compute_ms:.1} ms",
            base.max_over_mean_per_capacity(),
            moved / optimum
        );
    }
    Ok(())
}
