//! The node: the Raft handle plus the stores, and the two primitives every service is
//! built on — propose a command (`write`) and read linearizably (`read`).

use crate::batch::FsBatcher;
use crate::blocks::BlockStore;
use crate::config::Config;
use crate::error::{NodeError, Result};
use crate::sm::SmStore;
use crate::types::{Command, FsCall, NodeId, Raft, Response};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ServerState, Vote};
use ringfs_client::ChannelPool;
use ringfs_core::fs::FsResult;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;

/// Request metadata marking a request a follower already forwarded, so the receiver never
/// forwards it again (no forwarding loops while leadership moves).
pub const FORWARDED_KEY: &str = "x-ringfs-forwarded";

/// How long a request waits for a leader to be elected before failing `unavailable`.
pub const LEADER_WAIT: Duration = Duration::from_secs(5);

pub struct Node {
    pub id: NodeId,
    pub config: Arc<Config>,
    pub raft: Raft,
    pub sm: Arc<SmStore>,
    pub blocks: Arc<BlockStore>,
    pub pool: ChannelPool,
    /// Serializes membership changes on the leader.
    pub membership_lock: Mutex<()>,
    pub lease: LeaderLease,
    /// Migration, repair and scrub state (see `migrate`).
    pub migration: Arc<crate::migrate::Migration>,
    /// Group commit of file-system commands (see `batch`).
    pub fs_batch: FsBatcher,
    /// Random per process start (reported by Health; see `migrate::detect_failures`).
    pub boot_id: u64,
    /// Test-only fault injection (off unless `--failpoint-lose-replies`).
    pub failpoints: Failpoints,
    /// The vote and the last log index this process started with (see [`RestartGate`]).
    pub restart: RestartGate,
}

/// Linearizable reads on a leader that was restored by a restart.
///
/// openraft restores a node whose persisted vote is its own committed one as leader of
/// the *same* term at startup, without an election or a blank entry of a new term. Its
/// commit index is only re-learned by replicating (the stored one is not fsynced), so
/// right after a restart it may not have applied writes it acknowledged before it died:
/// every check of "leader of this term, own-term entry applied, quorum confirmed" passes
/// on stale state. (Found by the fault suite, seed 1796354377195471596: a kill of every
/// node, then a read that returned the value before the last acknowledged write.)
///
/// Every write this node acknowledged as leader is in its log at or below
/// `last_log_index` (an entry is fsynced before the leader counts itself in its quorum),
/// and a leader never truncates its own log: so while the vote is still the one it
/// started with, reads wait until that index is applied. A new vote means a new term,
/// where openraft's blank entry and the own-term rule already cover this.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestartGate {
    pub vote: Option<Vote<NodeId>>,
    pub last_log_index: Option<u64>,
}

impl RestartGate {
    /// True when reads may be served as far as the restart is concerned: the vote has
    /// changed since start, or everything logged before the restart is applied.
    pub fn passed(&self, vote: &Vote<NodeId>, last_applied: Option<u64>) -> bool {
        match (self.vote, self.last_log_index) {
            (Some(v), Some(last)) if v == *vote => last_applied.is_some_and(|a| a >= last),
            _ => true,
        }
    }
}

/// Test-only fault injection inside the node, for what a proxy cannot do precisely: lose
/// the reply of a command that *did* commit.
#[derive(Default)]
pub struct Failpoints {
    lose_replies: bool,
    /// Requests whose reply was already dropped once (their retry is answered).
    lost: std::sync::Mutex<std::collections::HashSet<ringfs_core::fs::RequestId>>,
    /// Committed requests left before the process exits unanswered (none: never).
    exit_after: Option<std::sync::atomic::AtomicU64>,
}

impl Failpoints {
    pub fn new(config: &Config) -> Failpoints {
        if config.failpoint_lose_replies {
            tracing::warn!("TEST FAILPOINT: replies of committed commands are dropped once");
        }
        if let Some(n) = config.failpoint_exit_after_commits {
            tracing::warn!(
                n,
                "TEST FAILPOINT: the process exits after {n} committed commands"
            );
        }
        Failpoints {
            lose_replies: config.failpoint_lose_replies,
            lost: Default::default(),
            exit_after: config
                .failpoint_exit_after_commits
                .map(std::sync::atomic::AtomicU64::new),
        }
    }

    /// Called once a request's command committed, before its reply is sent: ends the
    /// process at the configured count, as a kill between commit and reply would.
    pub fn committed(&self) {
        let Some(left) = &self.exit_after else {
            return;
        };
        if left.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) <= 1 {
            eprintln!("failpoint: exiting after a commit, before its reply");
            std::process::exit(86);
        }
    }

    /// Whether to drop the reply to `id` (true once per request id).
    pub fn lose_reply(&self, id: ringfs_core::fs::RequestId) -> bool {
        if !self.lose_replies {
            return false;
        }
        let key = ringfs_core::fs::RequestId {
            acked_below: 0,
            ..id
        };
        let mut lost = self.lost.lock().unwrap_or_else(|e| e.into_inner());
        if lost.len() > 100_000 {
            lost.clear();
        }
        lost.insert(key)
    }
}

/// When a quorum last acknowledged this node as leader, as seen in Raft's metrics.
///
/// Every metrics report of a leader carries the time since its last quorum
/// acknowledgement; [`LeaderLease::track`] turns it into an instant. The instant is
/// computed when the report is *observed*, so it can only be later than the true one by
/// the observation delay — which the lease window (far below openraft's leader lease of
/// `election_timeout_max`) absorbs, together with clock-rate drift between nodes.
#[derive(Default)]
pub struct LeaderLease {
    acked: std::sync::Mutex<Option<(Vote<NodeId>, Instant)>>,
}

impl LeaderLease {
    /// Follows the Raft metrics until shutdown.
    pub async fn track(node: Arc<Node>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut rx = node.raft.metrics();
        loop {
            {
                let m = rx.borrow_and_update();
                let now = Instant::now();
                let fresh = match (m.state, m.millis_since_quorum_ack) {
                    (ServerState::Leader, Some(ms)) => now
                        .checked_sub(Duration::from_millis(ms))
                        .map(|t| (m.vote, t)),
                    _ => None,
                };
                let mut acked = node.lease.acked.lock().unwrap_or_else(|e| e.into_inner());
                *acked = match (acked.take(), fresh) {
                    (Some((v, t)), Some((v2, t2))) if v == v2 => Some((v, t.max(t2))),
                    (_, fresh) => fresh,
                };
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = shutdown.changed() => return,
            }
        }
    }

    /// True when this node may serve a linearizable read without a quorum round trip: it
    /// is the leader of the current term, a quorum acknowledged it within `window`, and
    /// it has applied an entry of its own term (so everything committed before it took
    /// over is applied; writes it acknowledged itself were applied before their reply).
    fn holds(&self, node: &Node, window: Duration) -> bool {
        if window.is_zero() {
            return false;
        }
        let m = node.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader || m.current_leader != Some(node.id) {
            return false;
        }
        let own_term_applied = m
            .last_applied
            .map(|l| l.leader_id == *m.vote.leader_id())
            .unwrap_or(false);
        if !own_term_applied
            || !node
                .restart
                .passed(&m.vote, m.last_applied.map(|l| l.index))
        {
            return false;
        }
        let acked = self.acked.lock().unwrap_or_else(|e| e.into_inner());
        matches!(*acked, Some((v, t)) if v == m.vote && t.elapsed() < window)
    }
}

/// Proposes a command and waits until it is committed and applied on this node.
pub async fn propose(raft: &Raft, cmd: Command) -> Result<Response> {
    match raft.client_write(cmd).await {
        Ok(resp) => Ok(resp.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Err(NodeError::NotLeader {
                leader: f.leader_node.map(|n| n.addr),
            })
        }
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            Err(NodeError::FailedPrecondition(e.to_string()))
        }
        Err(RaftError::Fatal(e)) => Err(NodeError::Unavailable(format!("raft stopped: {e}"))),
    }
}

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Where a request should be served.
pub enum Route {
    Local,
    Forward(String),
}

impl Node {
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// The leader's id and address, waiting up to [`LEADER_WAIT`] for an election.
    pub async fn leader(&self) -> Result<(NodeId, String)> {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        let mut rx = self.raft.metrics();
        loop {
            {
                let m = rx.borrow_and_update();
                if let Some(l) = m.current_leader {
                    if let Some(n) = m.membership_config.membership().get_node(&l) {
                        return Ok((l, n.addr.clone()));
                    }
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(NodeError::Unavailable("raft is shutting down".into())),
                Err(_) => {
                    return Err(NodeError::Unavailable(
                        "no Raft leader was elected within 5s; a majority of voters may be down"
                            .into(),
                    ))
                }
            }
        }
    }

    /// Decides whether to serve a request here or forward it to the leader. A request
    /// that was already forwarded once is never forwarded again.
    pub async fn route<T>(&self, req: &tonic::Request<T>) -> Result<Route> {
        let (leader, addr) = self.leader().await?;
        if leader == self.id {
            return Ok(Route::Local);
        }
        if req.metadata().contains_key(FORWARDED_KEY) {
            return Err(NodeError::NotLeader { leader: Some(addr) });
        }
        Ok(Route::Forward(addr))
    }

    /// Proposes a command and waits until it is committed and applied here.
    pub async fn write(&self, cmd: Command) -> Result<Response> {
        propose(&self.raft, cmd).await
    }

    /// Commits a file-system command, whose encoded op is `size` bytes, through the
    /// group-commit batcher (see `batch`).
    pub async fn write_fs(&self, cmd: FsCall, size: usize) -> Result<FsResult> {
        self.fs_batch.write(cmd, size).await
    }

    /// Waits until this node may serve a linearizable read: it is the leader, a quorum
    /// confirmed it, and everything committed before the read is applied.
    pub async fn linearizable(&self) -> Result<()> {
        if self
            .lease
            .holds(self, Duration::from_millis(self.config.lease_read_ms))
        {
            return Ok(());
        }
        match self.raft.ensure_linearizable().await {
            Ok(_) => self.restart_caught_up().await,
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(NodeError::NotLeader {
                    leader: f.leader_node.map(|n| n.addr),
                })
            }
            Err(e) => Err(NodeError::Unavailable(e.to_string())),
        }
    }

    /// Waits (up to [`LEADER_WAIT`]) until this node has applied everything it logged
    /// before its restart, unless its vote changed since (see [`RestartGate`]).
    async fn restart_caught_up(&self) -> Result<()> {
        let mut rx = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        loop {
            {
                let m = rx.borrow_and_update();
                if self
                    .restart
                    .passed(&m.vote, m.last_applied.map(|l| l.index))
                {
                    return Ok(());
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(NodeError::Unavailable("raft is shutting down".into())),
                Err(_) => return Err(NodeError::Unavailable(
                    "this leader is still re-applying what it had logged before its restart; retry"
                        .into(),
                )),
            }
        }
    }

    /// Marks an outgoing forwarded request.
    pub fn forwarded<T>(msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert(
            FORWARDED_KEY,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A leader restored by a restart in the vote it had serves no read until it has
    /// applied everything it had logged; a new vote (a new term) lifts the gate.
    #[test]
    fn restart_gate_holds_reads_until_the_logged_entries_are_applied() {
        let vote = Vote::new_committed(5, 3);
        let gate = RestartGate {
            vote: Some(vote),
            last_log_index: Some(100),
        };
        assert!(!gate.passed(&vote, None));
        assert!(
            !gate.passed(&vote, Some(90)),
            "own-term entry 90 applied, 91-100 not yet"
        );
        assert!(gate.passed(&vote, Some(100)));
        assert!(gate.passed(&vote, Some(120)));
        assert!(
            gate.passed(&Vote::new_committed(6, 2), Some(90)),
            "another term"
        );
        assert!(
            gate.passed(&Vote::new_committed(6, 3), Some(90)),
            "re-elected: new term"
        );
        // A node that started with an empty log or no vote has nothing to wait for.
        assert!(RestartGate::default().passed(&vote, None));
        let empty = RestartGate {
            vote: Some(vote),
            last_log_index: None,
        };
        assert!(empty.passed(&vote, None));
    }
}
