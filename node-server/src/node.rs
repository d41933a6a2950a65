//! The node: the Raft handle plus the stores, and the two primitives every service is
//! built on — propose a command (`write`) and read linearizably (`read`).

use crate::batch::FsBatcher;
use crate::blocks::BlockStore;
use crate::config::Config;
use crate::error::{NodeError, Result};
use crate::sm::SmStore;
use crate::types::{Command, FsCommand, NodeId, Raft, Response};
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
        if !own_term_applied {
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
    pub async fn write_fs(&self, cmd: FsCommand, size: usize) -> Result<FsResult> {
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
            Ok(_) => Ok(()),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(NodeError::NotLeader {
                    leader: f.leader_node.map(|n| n.addr),
                })
            }
            Err(e) => Err(NodeError::Unavailable(e.to_string())),
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
