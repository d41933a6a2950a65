//! Scrub: every node re-verifies the checksums of all its blocks in the background
//! (rate-limited), quarantines corrupt copies, then compares its partitions with the
//! other replicas and copies back whatever it lacks — blocks found corrupt, and blocks
//! whose files vanished.

use crate::fsm;
use crate::members::{self, NodeState};
use crate::migrate::{pull_partitions, Throttle};
use crate::node::Node;
use ringfs_client::blocks::{BlockIo, Replica};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

const PAGE: u32 = 1000;

pub async fn run(node: Arc<Node>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    if node.config.scrub_interval_secs == 0 {
        return;
    }
    let period = Duration::from_secs(node.config.scrub_interval_secs);
    let throttle = Throttle::new(node.config.scrub_bandwidth);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => return,
        }
        match pass(&node, &throttle).await {
            Ok((checked, bad, repaired)) => {
                let c = &node.migration.counters;
                c.scrub_passes.fetch_add(1, Ordering::Relaxed);
                if bad > 0 || repaired > 0 {
                    warn!(
                        checked,
                        corrupt = bad,
                        repaired,
                        "scrub pass found and repaired damage"
                    );
                } else {
                    info!(checked, "scrub pass clean");
                }
            }
            Err(e) => debug!(error = %e, "scrub pass failed; will retry next period"),
        }
    }
}

/// One pass: (blocks checked, corrupt copies found, blocks copied back).
pub async fn pass(node: &Arc<Node>, throttle: &Throttle) -> anyhow::Result<(u64, u64, u64)> {
    let c = &node.migration.counters;
    let (mut checked, mut bad) = (0u64, 0u64);
    let mut after = None;
    loop {
        let page = node.blocks.list(after, PAGE).await?;
        let n = page.len();
        for b in page {
            after = Some(b.id);
            throttle.acquire(u64::from(b.len)).await;
            match node.blocks.verify(b.id).await {
                Ok(_) => {}
                Err(crate::blocks::BlockError::NotFound(_)) => {}
                Err(e @ crate::blocks::BlockError::Corrupt { .. }) => {
                    warn!(block = %b.id, error = %e, "scrub: corrupt copy quarantined");
                    bad += 1;
                    c.scrub_errors.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => return Err(e.into()),
            }
            checked += 1;
            c.scrub_checked.fetch_add(1, Ordering::Relaxed);
        }
        if n < PAGE as usize {
            break;
        }
    }
    let repaired = repair_from_replicas(node).await?;
    c.scrub_repaired.fetch_add(repaired, Ordering::Relaxed);
    Ok((checked, bad, repaired))
}

/// Copies back every block of this node's partitions (newest layout) that another live
/// owner holds and this node lacks.
async fn repair_from_replicas(node: &Arc<Node>) -> anyhow::Result<u64> {
    let (live, states, addrs) = {
        let tx = node.sm.read()?;
        let live = fsm::layouts(&tx)?;
        let states = members::node_states(&tx)?;
        let addrs: Vec<(u64, String)> = fsm::nodes(&tx)?
            .into_iter()
            .map(|n| (n.spec.id, n.addr))
            .collect();
        (live, states, addrs)
    };
    let Some(newest) = live.first() else {
        return Ok(0);
    };
    let mine: Vec<u32> = (0..newest.partitions)
        .filter(|p| newest.replicas(*p).contains(&node.id))
        .collect();
    if mine.is_empty() {
        return Ok(0);
    }
    let mut peers: BTreeSet<u64> = BTreeSet::new();
    for l in &live {
        for p in &mine {
            peers.extend(l.replicas(*p).iter().copied());
        }
    }
    let sources: Vec<Replica> = addrs
        .into_iter()
        .filter(|(id, _)| {
            *id != node.id
                && peers.contains(id)
                && states.get(id).copied().unwrap_or(NodeState::Active) != NodeState::Down
        })
        .map(|(node, addr)| Replica { node, addr })
        .collect();
    if sources.is_empty() {
        return Ok(0);
    }
    let io = BlockIo::new(node.pool.clone());
    let reply = pull_partitions(
        &node.blocks,
        &io,
        &node.migration,
        &mine,
        newest.partitions,
        &sources,
        0,
        false,
        &|id| crate::migrate::collecting(node, id),
    )
    .await
    .map_err(|e| anyhow::anyhow!(e))?;
    Ok(reply.blocks_copied)
}
