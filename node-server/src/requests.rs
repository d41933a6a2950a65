//! Exactly-once application of file-system commands (the Raft dissertation's §6.3
//! design).
//!
//! A client that cannot tell whether a command committed (the reply was lost, the leader
//! was killed before answering, a forwarding connection dropped) sends it again. Without
//! help the retry is applied a second time: an `Append` writes its data twice, an
//! exclusive `Create` answers `EEXIST`, an `Unlink` answers `ENOENT` although the first
//! attempt did what was asked.
//!
//! So every mutating command of a client carries a [`RequestId`]: the client's session
//! (one mount or one CLI process, opened with `SessionOpen`) and a sequence number. The
//! state machine stores the result of each applied request and answers a duplicate with
//! it, without applying anything. State kept per session, in `Sys`:
//! - `reply/<vol><session><seq>`: the stored result of request `seq`;
//! - `acked/<vol><session>`: the highest `acked_below` seen: every reply below it was
//!   received by the client, so those records are deleted (a request's `acked_below` is
//!   the lowest seq its client still waits for). Records are bounded by the requests in
//!   flight ([`MAX_OUTSTANDING_REQUESTS`] at most).
//! - `ended/<vol><session>`: a tombstone with the time a session ended (expired or
//!   closed). A request or `SessionOpen` naming it is refused with
//!   [`FsError::SessionExpired`] instead of being applied as new: its earlier attempts'
//!   replies are gone, so applying it could apply it twice. Tombstones are dropped
//!   [`TOMBSTONE_KEEP_NS`] after the session ended, far beyond any client's retries.
//!
//! Everything here is a deterministic function of the log: it runs inside `apply`.

use crate::error::Result;
use crate::fsm::{dec, get, k_session, k_u64, prefix_end, put, SessionRec};
use crate::sm::{Tbl, Writer};
use ringfs_core::fs::{FsError, FsResult, RequestId, MAX_OUTSTANDING_REQUESTS};
use ringfs_core::VolumeId;
use std::ops::Bound;

/// How long an ended session's tombstone is kept (24 h of proposers' clocks).
pub const TOMBSTONE_KEEP_NS: i64 = 24 * 3600 * 1_000_000_000;

/// Tombstones dropped by one `ExpireSessions` command at most.
const TOMBSTONE_PRUNE_BATCH: usize = 256;

fn k_session_part(vol: VolumeId, session: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&k_u64(vol));
    k[8..].copy_from_slice(&k_u64(session));
    k
}
fn k_reply(vol: VolumeId, session: u64, seq: u64) -> Vec<u8> {
    [
        b"reply/".as_slice(),
        &k_session_part(vol, session),
        &k_u64(seq),
    ]
    .concat()
}
fn k_acked(vol: VolumeId, session: u64) -> Vec<u8> {
    [b"acked/".as_slice(), &k_session_part(vol, session)].concat()
}
fn k_ended(vol: VolumeId, session: u64) -> Vec<u8> {
    [b"ended/".as_slice(), &k_session_part(vol, session)].concat()
}
/// The same tombstone in time order (for pruning): `ended-at/<ns + 2^63><vol><session>`.
fn k_ended_at(at: i64, vol: VolumeId, session: u64) -> Vec<u8> {
    let t = (at as u64) ^ (1 << 63);
    [
        b"ended-at/".as_slice(),
        &k_u64(t),
        &k_session_part(vol, session),
    ]
    .concat()
}

/// What to do with a request.
pub enum Admission {
    /// New: apply it, then [`record`] its result.
    Apply,
    /// Already applied (or refused): this is its result.
    Answered(FsResult),
}

/// Decides whether request `id` on volume `vol` is applied, and forgets the replies the
/// client acknowledged.
pub fn admit(w: &impl Writer, vol: VolumeId, id: RequestId) -> Result<Admission> {
    let refuse = |e: FsError| Ok(Admission::Answered(Err(e)));
    if get::<SessionRec>(w, Tbl::Sys, &k_session(vol, id.session))?.is_none() {
        return refuse(FsError::SessionExpired(id.session));
    }
    if let Some(v) = w.get(Tbl::Sys, &k_reply(vol, id.session, id.seq))? {
        return Ok(Admission::Answered(dec(&v)?));
    }
    let acked: u64 = get(w, Tbl::Sys, &k_acked(vol, id.session))?.unwrap_or(0);
    if id.seq < acked {
        // The client said it had every reply below `acked`: this is a late copy of a
        // request whose answer it already has (or gave up on). Never apply it again.
        return refuse(FsError::Invalid(format!(
            "request {} of session {:x} was already answered",
            id.seq, id.session
        )));
    }
    if id.acked_below > id.seq || id.seq - id.acked_below.max(acked) >= MAX_OUTSTANDING_REQUESTS {
        return refuse(FsError::Invalid(format!(
            "request {} of session {:x} claims acked_below {}: at most {MAX_OUTSTANDING_REQUESTS} \
             requests may be outstanding, and acked_below cannot pass the request itself",
            id.seq, id.session, id.acked_below
        )));
    }
    if id.acked_below > acked {
        forget_replies(w, vol, id.session, Some(id.acked_below))?;
        put(w, Tbl::Sys, &k_acked(vol, id.session), &id.acked_below)?;
    }
    Ok(Admission::Apply)
}

/// Stores the result of request `id` (applied just now) for its duplicates.
pub fn record(w: &impl Writer, vol: VolumeId, id: RequestId, result: &FsResult) -> Result<()> {
    put(w, Tbl::Sys, &k_reply(vol, id.session, id.seq), result)
}

/// Deletes the stored replies of `session` below `below` (all of them with `None`).
fn forget_replies(w: &impl Writer, vol: VolumeId, session: u64, below: Option<u64>) -> Result<()> {
    let prefix = [b"reply/".as_slice(), &k_session_part(vol, session)].concat();
    let end = match below {
        Some(seq) => k_reply(vol, session, seq),
        None => prefix_end(&prefix),
    };
    loop {
        let rows = w.scan(Tbl::Sys, Bound::Included(&prefix), &end, 1024)?;
        if rows.is_empty() {
            return Ok(());
        }
        for (k, _) in rows {
            w.del(Tbl::Sys, &k)?;
        }
    }
}

/// Whether `session` of `vol` has ended (a tombstone exists): it cannot be opened again.
pub fn ended(w: &impl Writer, vol: VolumeId, session: u64) -> Result<bool> {
    Ok(w.get(Tbl::Sys, &k_ended(vol, session))?.is_some())
}

/// `session` ended at `now`: its replies go, a tombstone stays.
pub fn end_session(w: &impl Writer, vol: VolumeId, session: u64, now: i64) -> Result<()> {
    forget_replies(w, vol, session, None)?;
    w.del(Tbl::Sys, &k_acked(vol, session))?;
    if !ended(w, vol, session)? {
        put(w, Tbl::Sys, &k_ended(vol, session), &now)?;
        w.put(Tbl::Sys, &k_ended_at(now, vol, session), &[])?;
    }
    Ok(())
}

/// Drops up to a batch of tombstones that ended more than [`TOMBSTONE_KEEP_NS`] before
/// `now`, oldest first.
pub fn prune_tombstones(w: &impl Writer, now: i64) -> Result<()> {
    let prefix = b"ended-at/".as_slice();
    let end = k_ended_at(now.saturating_sub(TOMBSTONE_KEEP_NS), 0, 0);
    let rows = w.scan(
        Tbl::Sys,
        Bound::Included(prefix),
        &end,
        TOMBSTONE_PRUNE_BATCH,
    )?;
    for (k, _) in rows {
        let part = k.get(prefix.len() + 8..).unwrap_or_default();
        if part.len() == 16 {
            w.del(Tbl::Sys, &[b"ended/".as_slice(), part].concat())?;
        }
        w.del(Tbl::Sys, &k)?;
    }
    Ok(())
}

/// Key prefixes (before the volume id) of the per-session records, removed with the
/// volume. (`ended-at/` records are keyed by time first; they go when they age out.)
pub const VOLUME_PREFIXES: [&[u8]; 3] = [b"reply/", b"acked/", b"ended/"];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsm::apply;
    use crate::testing::{block, Sm};
    use crate::types::{Command, FsCall, Response};
    use ringfs_core::fs::{FsOp, FsReply};
    use ringfs_core::ids::ROOT_INO;

    fn call(sm: &Sm, vol: VolumeId, op: FsOp, request: Option<RequestId>, now: i64) -> FsResult {
        match sm.apply(Command::FsCalls(vec![FsCall {
            volume: vol,
            op,
            now_ns: now,
            request,
        }])) {
            Response::FsBatch(mut r) if r.len() == 1 => r.remove(0),
            other => panic!("{other:?}"),
        }
    }

    fn open(sm: &Sm, vol: VolumeId, session: u64) -> FsResult {
        call(
            sm,
            vol,
            FsOp::SessionOpen {
                session,
                ttl_ms: 60_000,
                info: "test".into(),
            },
            None,
            10,
        )
    }

    fn id(seq: u64, acked_below: u64) -> Option<RequestId> {
        Some(RequestId {
            session: 7,
            seq,
            acked_below,
        })
    }

    fn mkdir(name: &str) -> FsOp {
        FsOp::Mkdir {
            parent: ROOT_INO,
            name: name.into(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        }
    }

    fn size_of(sm: &Sm, vol: VolumeId, path: &str) -> u64 {
        match sm.read(vol, FsOp::ResolvePath { path: path.into() }) {
            Ok(FsReply::Attr(a)) => a.size,
            other => panic!("{other:?}"),
        }
    }

    fn replies(sm: &Sm) -> usize {
        use crate::sm::Reader;
        let tx = sm.store.read().expect("read");
        tx.scan(
            Tbl::Sys,
            Bound::Included(b"reply/".as_slice()),
            &prefix_end(b"reply/"),
            usize::MAX,
        )
        .expect("scan")
        .len()
    }

    /// Every mutating op kind, sent twice with one request id (a retry after a lost
    /// reply): applied once, and the duplicate gets the first attempt's answer.
    #[test]
    fn a_duplicate_gets_the_first_result_and_changes_nothing() {
        let sm = Sm::new();
        let v = sm.volume("v", 1 << 30);
        assert_eq!(open(&sm, v, 7), Ok(FsReply::Done));
        let file = sm.file(v, "f", block(1, 100));
        let b2 = block(2, 10);
        let ops = vec![
            mkdir("d"),
            FsOp::Create {
                parent: ROOT_INO,
                name: b"x".to_vec(),
                mode: 0o644,
                uid: 0,
                gid: 0,
                exclusive: true,
            },
            FsOp::Append {
                ino: file,
                blocks: vec![b2],
                len: 10,
            },
            FsOp::Link {
                ino: file,
                new_parent: ROOT_INO,
                new_name: b"f2".to_vec(),
            },
            FsOp::Rename {
                parent: ROOT_INO,
                name: b"f2".to_vec(),
                new_parent: ROOT_INO,
                new_name: b"f3".to_vec(),
                no_replace: false,
            },
            FsOp::Unlink {
                parent: ROOT_INO,
                name: b"f3".to_vec(),
            },
            FsOp::Rmdir {
                parent: ROOT_INO,
                name: b"d".to_vec(),
            },
            FsOp::SetAttr {
                ino: file,
                set: ringfs_core::fs::SetAttr {
                    size: Some(50),
                    ..Default::default()
                },
            },
        ];
        for (i, op) in ops.into_iter().enumerate() {
            let seq = i as u64 + 1;
            let first = call(&sm, v, op.clone(), id(seq, seq), 20);
            assert!(first.is_ok(), "{op:?}: {first:?}");
            let again = call(&sm, v, op.clone(), id(seq, seq), 30);
            // Times come from the first application too: nothing was applied again.
            assert_eq!(again, first, "{op:?}");
            if matches!(op, FsOp::Append { .. }) {
                assert_eq!(size_of(&sm, v, "/f"), 110, "appended once");
            }
        }
        assert_eq!(size_of(&sm, v, "/f"), 50);
        // Without an id the same op is applied again: Mkdir of an existing name fails.
        call(&sm, v, mkdir("e"), None, 40).expect("mkdir");
        assert_eq!(call(&sm, v, mkdir("e"), None, 40), Err(FsError::Exists));
    }

    /// A refusal is an answer too: the duplicate of a refused request is refused the
    /// same way even if it would succeed now.
    #[test]
    fn a_refusal_is_remembered() {
        let sm = Sm::new();
        let v = sm.volume("v", 1 << 30);
        open(&sm, v, 7).expect("open");
        let rmdir = FsOp::Rmdir {
            parent: ROOT_INO,
            name: b"d".to_vec(),
        };
        assert_eq!(
            call(&sm, v, rmdir.clone(), id(1, 1), 20),
            Err(FsError::NotFound)
        );
        call(&sm, v, mkdir("d"), id(2, 1), 20).expect("mkdir");
        assert_eq!(call(&sm, v, rmdir, id(1, 1), 20), Err(FsError::NotFound));
    }

    /// Replies below `acked_below` are forgotten; a late copy of such a request is never
    /// applied again.
    #[test]
    fn acknowledged_replies_are_forgotten_and_never_reapplied() {
        let sm = Sm::new();
        let v = sm.volume("v", 1 << 30);
        open(&sm, v, 7).expect("open");
        for seq in 1..=5 {
            call(&sm, v, mkdir(&format!("d{seq}")), id(seq, 1), 20).expect("mkdir");
        }
        assert_eq!(replies(&sm), 5);
        call(&sm, v, mkdir("d6"), id(6, 6), 20).expect("mkdir");
        assert_eq!(replies(&sm), 1, "only request 6 is still waited for");
        let late = call(&sm, v, mkdir("d3"), id(3, 3), 20);
        assert!(matches!(late, Err(FsError::Invalid(_))), "{late:?}");
        // A request whose acked_below passes itself, or one too far ahead, is refused.
        let bad = call(&sm, v, mkdir("z"), id(10, 11), 20);
        assert!(matches!(bad, Err(FsError::Invalid(_))), "{bad:?}");
        let far = call(&sm, v, mkdir("z"), id(6 + MAX_OUTSTANDING_REQUESTS, 6), 20);
        assert!(matches!(far, Err(FsError::Invalid(_))), "{far:?}");
    }

    /// A request naming a session that was never opened, or has ended, is refused; an
    /// ended session cannot be opened again until its tombstone ages out.
    #[test]
    fn ended_sessions_refuse_requests_and_reopening() {
        let sm = Sm::new();
        let v = sm.volume("v", 1 << 30);
        assert_eq!(
            call(&sm, v, mkdir("a"), id(1, 1), 20),
            Err(FsError::SessionExpired(7))
        );
        open(&sm, v, 7).expect("open");
        call(&sm, v, mkdir("a"), id(1, 1), 20).expect("mkdir");
        call(&sm, v, FsOp::SessionClose { session: 7 }, None, 100).expect("close");
        assert_eq!(replies(&sm), 0, "its replies went with it");
        assert_eq!(
            call(&sm, v, mkdir("a"), id(1, 1), 200),
            Err(FsError::SessionExpired(7)),
            "a late retry is refused, not applied as new"
        );
        assert_eq!(open(&sm, v, 7), Err(FsError::SessionExpired(7)));
        // A day later the tombstone is pruned (by the expiry command) and the id is free.
        sm.apply(Command::ExpireSessions {
            sessions: vec![],
            now_ns: 100 + TOMBSTONE_KEEP_NS + 1,
        });
        assert_eq!(open(&sm, v, 7), Ok(FsReply::Done));
    }

    /// Expiry ends a session the same way as a close.
    #[test]
    fn expiry_ends_a_session() {
        let sm = Sm::new();
        let v = sm.volume("v", 1 << 30);
        open(&sm, v, 7).expect("open");
        call(&sm, v, mkdir("a"), id(1, 1), 20).expect("mkdir");
        sm.apply(Command::ExpireSessions {
            sessions: vec![(v, 7)],
            now_ns: 10 + 61_000_000_000,
        });
        assert_eq!(
            call(&sm, v, mkdir("a"), id(1, 1), 20),
            Err(FsError::SessionExpired(7))
        );
    }

    /// A deleted volume's purge removes its sessions' records too.
    #[test]
    fn purge_removes_session_records() {
        let sm = Sm::new();
        let v = sm.volume("v", 1 << 30);
        open(&sm, v, 7).expect("open");
        call(&sm, v, mkdir("a"), id(1, 1), 20).expect("mkdir");
        assert_eq!(replies(&sm), 1);
        let tx = sm.store.begin_write().expect("tx");
        apply(&tx, Command::DeleteVolume { name: "v".into() }).expect("delete");
        tx.commit().expect("commit");
        sm.purge();
        assert_eq!(replies(&sm), 0);
    }
}
