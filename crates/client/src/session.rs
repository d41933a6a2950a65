//! The client side of exactly-once commands: a session per volume and the sequence
//! numbers of its mutating requests (see node-server `requests` for the state machine's
//! side, and the Raft dissertation §6.3).
//!
//! Every mutating file-system op a [`crate::Vol`] sends carries `(session, seq,
//! acked_below)`. [`crate::Cluster::call`] resends it unchanged after an ambiguous
//! failure, so the state machine applies it once and answers every copy with the first
//! result. The session is opened on the first mutating op (readers never register one)
//! and renewed in the background every quarter of its lease while the `Session` lives.
//!
//! A session ends when its lease runs out (the client was cut off longer than the TTL) or
//! it is closed; then the state machine refuses its ids with
//! [`FsError::SessionExpired`]. A *new* request refused that way was not applied, so it is
//! sent again under a fresh session. A request that had earlier attempts cannot learn
//! their outcome any more: the caller gets [`ClientError::OutcomeUnknown`].

use crate::cluster::Cluster;
use crate::error::{ClientError, Result};
use ringfs_core::fs::{FsError, FsOp, RequestId, MAX_OUTSTANDING_REQUESTS};
use ringfs_core::VolumeId;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Lease of a library session (CLI, CSI, tests): long enough to ride out a leader
/// election or a restart of every node, short enough that a dead client's state goes
/// away soon. Mounts choose their own (`--session-ttl`).
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(300);

/// A client session of one volume.
pub struct Session {
    volume: VolumeId,
    ttl: Duration,
    info: String,
    state: Mutex<State>,
    /// Serializes registration (one `SessionOpen` at a time).
    opening: tokio::sync::Mutex<()>,
    /// Signalled when a request stops being waited for (see [`Session::begin`]).
    room: tokio::sync::Notify,
}

struct State {
    /// The current session id (a new one after the previous ended).
    id: u64,
    registered: bool,
    next_seq: u64,
    /// Seqs sent and not yet answered or given up on.
    pending: BTreeSet<u64>,
}

impl Session {
    pub fn new(volume: VolumeId, ttl: Duration, info: impl Into<String>) -> Arc<Session> {
        Arc::new(Session {
            volume,
            ttl,
            info: info.into(),
            state: Mutex::new(State {
                id: fresh_id(),
                registered: false,
                next_seq: 1,
                pending: BTreeSet::new(),
            }),
            opening: tokio::sync::Mutex::new(()),
            room: tokio::sync::Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current session id (what orphans this client holds are registered under).
    pub fn id(&self) -> u64 {
        self.state().id
    }

    fn ttl_ms(&self) -> u64 {
        // Within what the cluster accepts (`SESSION_TTL_MS`).
        u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .clamp(
                *ringfs_core::fs::SESSION_TTL_MS.start(),
                *ringfs_core::fs::SESSION_TTL_MS.end(),
            )
    }

    /// Registers the session if it is not (a fresh id when the old one ended) and returns
    /// its id. The first registration starts the renewal task.
    pub async fn ensure(self: &Arc<Self>, cluster: &Arc<Cluster>) -> Result<u64> {
        {
            let st = self.state();
            if st.registered {
                return Ok(st.id);
            }
        }
        let _one = self.opening.lock().await;
        loop {
            let id = {
                let st = self.state();
                if st.registered {
                    return Ok(st.id);
                }
                st.id
            };
            let open = FsOp::SessionOpen {
                session: id,
                ttl_ms: self.ttl_ms(),
                info: self.info.clone(),
            };
            // SessionOpen is idempotent (it registers or renews) and never deduplicated.
            match cluster.fs_raw(self.volume, &open, None).await {
                Ok(_) => {
                    self.state().registered = true;
                    spawn_renewal(Arc::downgrade(self), cluster.clone(), id);
                    return Ok(id);
                }
                Err(ClientError::Fs(FsError::SessionExpired(_))) => self.replace(id),
                Err(e) => return Err(e),
            }
        }
    }

    /// Session `id` has ended on the cluster: later requests use a fresh one.
    fn replace(&self, id: u64) {
        let mut st = self.state();
        if st.id == id {
            st.id = fresh_id();
            st.registered = false;
        }
    }

    /// Marks session `id` unregistered (its lease lapsed): the next request registers
    /// it again, or a fresh one if the cluster ended it.
    fn lapsed(&self, id: u64) {
        let mut st = self.state();
        if st.id == id {
            st.registered = false;
        }
    }

    /// Allocates the next sequence number of session `id`, once fewer than
    /// [`MAX_OUTSTANDING_REQUESTS`] separate it from the oldest one still waited for (the
    /// state machine refuses requests beyond that window: one slow request must hold the
    /// others back, not make them fail).
    async fn begin(self: &Arc<Self>, id: u64) -> Pending {
        loop {
            let room = self.room.notified();
            {
                let mut st = self.state();
                let oldest = st.pending.first().copied().unwrap_or(st.next_seq);
                if st.next_seq - oldest < MAX_OUTSTANDING_REQUESTS {
                    let seq = st.next_seq;
                    st.next_seq += 1;
                    st.pending.insert(seq);
                    return Pending {
                        session: self.clone(),
                        id,
                        seq,
                    };
                }
            }
            room.await;
        }
    }

    /// The lowest seq still waited for (the request being sent is among them).
    fn acked_below(&self) -> u64 {
        let st = self.state();
        st.pending.first().copied().unwrap_or(st.next_seq)
    }

    /// Ends the session now (orphans it holds are dropped, its replies forgotten).
    /// Idempotent; a session not closed expires by itself.
    pub async fn close(&self, cluster: &Cluster) -> Result<()> {
        let id = {
            let mut st = self.state();
            if !st.registered {
                return Ok(());
            }
            st.registered = false;
            let id = st.id;
            st.id = fresh_id();
            id
        };
        cluster
            .fs_raw(self.volume, &FsOp::SessionClose { session: id }, None)
            .await
            .map(|_| ())
    }

    /// Runs mutating `op` exactly once: registers the session if needed, then sends the
    /// op under one request id, however many attempts that takes.
    pub async fn run(
        self: &Arc<Self>,
        cluster: &Arc<Cluster>,
        op: &FsOp,
    ) -> Result<ringfs_core::fs::FsReply> {
        let mut held;
        loop {
            // Not sent: registering failed, so the op certainly was not applied (its
            // caller may discard what it uploaded for it, or keep it buffered to retry).
            let id = self.ensure(cluster).await.map_err(|e| {
                // A refusal (the volume is a read-only snapshot, ...) already says
                // "not applied" and keeps its kind; anything else is wrapped so.
                if e.not_applied() {
                    e
                } else {
                    ClientError::NotCommitted(Box::new(e))
                }
            })?;
            // An op that holds files holds them for the session it is sent under (a
            // fresh one after the previous ended): otherwise the hold would name an
            // ended session and the file would never be released.
            let op = if op.holds_files() {
                held = op.clone();
                if let Some(h) = held.holder_mut() {
                    *h = id;
                }
                &held
            } else {
                op
            };
            let pending = self.begin(id).await;
            let attempts = std::sync::atomic::AtomicU32::new(0);
            let res = cluster
                .fs_raw_with(self.volume, op, || {
                    attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Some(RequestId {
                        session: id,
                        seq: pending.seq,
                        acked_below: self.acked_below(),
                    })
                })
                .await;
            drop(pending);
            match res {
                Err(ClientError::Fs(FsError::SessionExpired(s))) => {
                    self.replace(s);
                    if attempts.load(std::sync::atomic::Ordering::Relaxed) > 1 {
                        return Err(ClientError::OutcomeUnknown(format!(
                            "the client session ended while this request was retried; \
                             whether it was applied cannot be known ({op_name})",
                            op_name = op_name(op)
                        )));
                    }
                    // Refused, not applied: send it again under a fresh session.
                }
                Err(ClientError::Unavailable(msg))
                    if attempts.load(std::sync::atomic::Ordering::Relaxed) > 0 =>
                {
                    return Err(ClientError::OutcomeUnknown(format!(
                        "{} may or may not have been applied: {msg}",
                        op_name(op)
                    )))
                }
                other => return other,
            }
        }
    }
}

fn op_name(op: &FsOp) -> String {
    let s = format!("{op:?}");
    s.split([' ', '{', '(']).next().unwrap_or("op").to_string()
}

/// A sequence number in flight; dropping it (answered, or the caller gave up) lets the
/// state machine forget its reply.
struct Pending {
    session: Arc<Session>,
    #[allow(dead_code)]
    id: u64,
    seq: u64,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.session.state().pending.remove(&self.seq);
        self.session.room.notify_waiters();
    }
}

fn fresh_id() -> u64 {
    rand::random::<u64>().max(1)
}

/// Renews session `id` every quarter of its lease until the `Session` is dropped or
/// moves to another id.
fn spawn_renewal(session: Weak<Session>, cluster: Arc<Cluster>, id: u64) {
    let Some(s) = session.upgrade() else { return };
    let (volume, ttl_ms) = (s.volume, s.ttl_ms());
    drop(s);
    tokio::spawn(async move {
        let period = Duration::from_millis(ttl_ms / 4);
        loop {
            tokio::time::sleep(period).await;
            let Some(s) = session.upgrade() else { return };
            {
                let st = s.state();
                if st.id != id || !st.registered {
                    return;
                }
            }
            drop(s);
            // SessionRenew is idempotent: it only moves the lease's end.
            let renew = FsOp::SessionRenew {
                session: id,
                ttl_ms,
            };
            match cluster.fs_raw(volume, &renew, None).await {
                Ok(_) => {}
                Err(ClientError::Fs(FsError::NotFound)) => {
                    tracing::warn!(
                        session = format_args!("{id:x}"),
                        "the client session lapsed (cut off longer than its lease); files \
                         unlinked while open may be gone; registering a new one"
                    );
                    if let Some(s) = session.upgrade() {
                        s.lapsed(id);
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the client session failed; will retry")
                }
            }
        }
    });
}
