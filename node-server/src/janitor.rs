//! Leader-only background work: ending expired client sessions, deleting unreferenced
//! blocks from every node, and purging deleted volumes' metadata in bounded batches.

use crate::confirm::Confirm;
use crate::fsm;
use crate::node::Node;
use crate::types::{Command, Response};
use ringfs_client::blocks::BlockIo;
use std::sync::Arc;
use std::time::Duration;

/// Blocks deleted per GC round.
pub const GC_BATCH: usize = 1000;
/// Records removed per purge command.
pub const PURGE_BATCH: u32 = 2000;

/// Sessions remembered while their expiry is being confirmed.
const MAX_TRACKED_SESSIONS: usize = 100_000;

pub async fn run(node: Arc<Node>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let io = BlockIo::new(node.pool.clone());
    let window = Duration::from_secs(node.config.session_confirm_secs);
    let mut sessions = Confirm::new(window, MAX_TRACKED_SESSIONS);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if !node.is_leader() {
            // A new term starts every confirmation over (another node's observations
            // are not ours).
            if !sessions.is_empty() {
                sessions = Confirm::new(window, MAX_TRACKED_SESSIONS);
            }
            continue;
        }
        if let Err(e) = round(&node, &io, &mut sessions).await {
            tracing::warn!(error = %e, "janitor round failed; will retry");
        }
    }
}

async fn round(
    node: &Node,
    io: &BlockIo,
    sessions: &mut Confirm<(u64, u64), i64>,
) -> anyhow::Result<()> {
    // Client sessions (mounts) whose lease ran out: the orphans they held go. Expired by
    // the wall clock is not enough: the lease must also have stayed unrenewed for the
    // confirmation window of monotonic time (see `crate::confirm`).
    let now = crate::node::now_ns();
    let candidates = {
        let tx = node.sm.read()?;
        fsm::expired_sessions(&tx, now, 256)?
    };
    let mono = std::time::Instant::now();
    let mut expired = Vec::new();
    for (key, expires_ns) in candidates {
        if sessions.observe(key, expires_ns, mono) {
            expired.push(key);
        }
    }
    sessions.end_round();
    for key in &expired {
        sessions.forget(key);
    }
    if !expired.is_empty() {
        tracing::info!(
            sessions = expired.len(),
            "ending client sessions whose lease expired (their mounts stopped renewing)"
        );
        node.write(Command::ExpireSessions {
            sessions: expired,
            now_ns: now,
        })
        .await?;
    }
    let (ids, addrs, deleting) = {
        let tx = node.sm.read()?;
        let ids = fsm::gc_batch(&tx, GC_BATCH)?;
        // Down nodes are skipped so one dead node does not stall GC for everyone; a copy
        // it still holds when it returns is left behind (see the README's limitations).
        let mut addrs = Vec::new();
        for n in fsm::nodes(&tx)? {
            if crate::members::node_state(&tx, n.spec.id)? != crate::members::NodeState::Down {
                addrs.push(n.addr);
            }
        }
        (ids, addrs, fsm::deleting_volumes(&tx)?)
    };
    for id in deleting {
        while let Response::Purged { remaining: true } = node
            .write(Command::PurgeVolume {
                id,
                limit: PURGE_BATCH,
            })
            .await?
        {}
        tracing::info!(volume = id, "deleted volume purged");
    }
    if ids.is_empty() {
        return Ok(());
    }
    // A block may sit on any node that ever owned its partition, so ask every node. A
    // node that cannot be reached keeps the batch queued: nothing is forgotten early.
    for addr in &addrs {
        io.delete(addr, &ids)
            .await
            .map_err(|e| anyhow::anyhow!("deleting blocks on {addr}: {e}"))?;
    }
    let n = ids.len();
    node.write(Command::GcDone { ids }).await?;
    tracing::debug!(blocks = n, "garbage-collected blocks");
    Ok(())
}
