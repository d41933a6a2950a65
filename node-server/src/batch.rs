//! Group commit of file-system commands on the leader.
//!
//! openraft (0.9) appends one log entry per `client_write` and waits for that append's
//! fsync before it takes the next, so entries per second are capped by the disk's flush
//! rate however many clients write at once. The batcher puts every file-system command
//! that arrives while earlier ones are being committed into one entry
//! ([`Command::FsCalls`]): many commands share one append, one fsync on each replica and
//! one replication round trip. A command that finds the batcher idle is proposed at once
//! on its own, so a lone client pays no extra latency.
//!
//! At most [`IN_FLIGHT`] entries are proposed at a time; while all are in flight, new
//! commands accumulate into the next one (at most [`MAX_BATCH`] commands and
//! [`MAX_BATCH_BYTES`]). Commands in
//! a batch are applied in order, each exactly as if it were its own entry; a caller that
//! waits for its answer before sending the next command keeps its order.
//!
//! The queue is bounded: at most [`MAX_QUEUED`] commands and [`MAX_QUEUED_BYTES`] of
//! them wait or are being committed at once. Beyond that a caller waits for room (its
//! client's deadline still applies), so a leader that cannot commit (no quorum) holds a
//! bounded amount of memory however many clients keep sending.

use crate::error::{NodeError, Result};
use crate::types::{Command, FsCall, Raft, Response};
use prometheus_client::metrics::counter::Counter;
use ringfs_core::fs::FsResult;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Entries of batched commands proposed at a time.
pub const IN_FLIGHT: usize = 4;

/// Commands in one entry.
pub const MAX_BATCH: usize = 512;

/// Encoded bytes of the commands in one entry (most are a few hundred bytes; a write
/// commit with many extents is tens of KiB). Far below a replication message
/// (`MAX_MESSAGE_BYTES`), so one entry always fits in one; openraft is told to send fewer
/// entries per message when many do not (see `network`).
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// Commands queued or being committed at once.
pub const MAX_QUEUED: usize = 8192;

/// Encoded bytes of the commands queued or being committed at once (a command larger
/// than this waits until it is alone).
pub const MAX_QUEUED_BYTES: usize = 64 << 20;

/// A command, its encoded size, and where its result goes.
type Waiter = (FsCall, usize, oneshot::Sender<Result<FsResult>>);

/// The handle callers submit through; the batching task ends when it is dropped.
pub struct FsBatcher {
    tx: mpsc::Sender<Waiter>,
    /// Bytes of [`MAX_QUEUED_BYTES`] not taken by queued or committing commands.
    room: Arc<Semaphore>,
    pub stats: BatchStats,
}

/// What the batcher proposed (exported as metrics): commands per entry is the batching
/// factor.
#[derive(Clone, Default)]
pub struct BatchStats {
    /// Raft entries proposed with file-system commands.
    pub entries: Counter,
    /// File-system commands proposed.
    pub commands: Counter,
}

impl FsBatcher {
    /// Starts the batching task for `raft` (on the current Tokio runtime).
    pub fn start(raft: Raft) -> FsBatcher {
        let (tx, rx) = mpsc::channel(MAX_QUEUED);
        let stats = BatchStats::default();
        tokio::spawn(run(raft, rx, stats.clone()));
        FsBatcher {
            tx,
            room: Arc::new(Semaphore::new(MAX_QUEUED_BYTES)),
            stats,
        }
    }

    /// Commits `cmd`, whose encoded op is `size` bytes (alone or with others), and
    /// returns its result.
    pub async fn write(&self, cmd: FsCall, size: usize) -> Result<FsResult> {
        let gone = || NodeError::Unavailable("the node is shutting down".into());
        // Held until the answer arrives: a command counts until it is committed.
        let bytes = size.clamp(1, MAX_QUEUED_BYTES) as u32;
        let _room = self
            .room
            .clone()
            .acquire_many_owned(bytes)
            .await
            .map_err(|_| gone())?;
        let (done, wait) = oneshot::channel();
        self.tx.send((cmd, size, done)).await.map_err(|_| gone())?;
        wait.await.map_err(|_| gone())?
    }
}

async fn run(raft: Raft, mut rx: mpsc::Receiver<Waiter>, stats: BatchStats) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    // A command that did not fit in the previous entry opens the next one.
    let mut carry: Option<Waiter> = None;
    loop {
        let first = match carry.take() {
            Some(w) => w,
            None => match rx.recv().await {
                Some(w) => w,
                None => return,
            },
        };
        // Wait for a free slot before collecting: commands that arrive meanwhile join
        // this entry.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.1;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) if bytes + w.1 > MAX_BATCH_BYTES => {
                    carry = Some(w);
                    break;
                }
                Ok(w) => {
                    bytes += w.1;
                    batch.push(w);
                }
                Err(_) => break,
            }
        }
        // A caller that gave up (its request was cancelled while it waited, e.g. while
        // the cluster had no quorum) is not proposed for: nobody would hear the answer,
        // and its client may already have retried.
        batch.retain(|(_, _, done)| !done.is_closed());
        if batch.is_empty() {
            continue;
        }
        stats.entries.inc();
        stats.commands.inc_by(batch.len() as u64);
        let raft = raft.clone();
        tokio::spawn(async move {
            commit(&raft, batch).await;
            drop(permit);
        });
    }
}

/// Proposes `batch` as one entry and answers each waiter.
async fn commit(raft: &Raft, batch: Vec<Waiter>) {
    let (cmds, waiters): (Vec<FsCall>, Vec<_>) =
        batch.into_iter().map(|(c, _, done)| (c, done)).unzip();
    let n = cmds.len();
    let cmd = Command::FsCalls(cmds);
    let results: Result<Vec<FsResult>> = match crate::node::propose(raft, cmd).await {
        Ok(Response::FsBatch(rs)) if rs.len() == n => Ok(rs),
        Ok(other) => Err(NodeError::Storage(format!(
            "a batch of {n} file-system commands was answered with {other:?}"
        ))),
        Err(e) => Err(e),
    };
    match results {
        Ok(rs) => {
            for (w, r) in waiters.into_iter().zip(rs) {
                let _ = w.send(Ok(r));
            }
        }
        Err(e) => {
            for w in waiters {
                let _ = w.send(Err(e.clone()));
            }
        }
    }
}
