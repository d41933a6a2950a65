//! Deterministic application of [`Command`]s and evaluation of read-only file-system ops
//! against the state-machine tables.
//!
//! Every command validates completely before its first write: a refused command leaves
//! the state untouched (a batch shares one transaction, so a half-applied refusal would
//! otherwise leak into the commit).

use crate::error::{NodeError, Result};
use crate::sm::{Reader, Tbl, Writer};
use crate::types::{CloneSource, Command, NodeRecord, RefusalCode, Response, VolumeInfo};
use ringfs_core::fs::{
    Attr, ChunkSlice, DirEntry, FileKind, FsError, FsOp, FsReply, FsResult, SetAttr, StatFs,
    XattrMode, MAX_READDIR, MAX_XATTRS_PER_INODE, MAX_XATTR_BYTES_PER_INODE, MAX_XATTR_LIST,
    MAX_XATTR_NAME, MAX_XATTR_VALUE,
};
use ringfs_core::layout::{Layout, NodeSpec};
use ringfs_core::names::{split_path, validate_file_name, validate_volume_name, MAX_NAME_LEN};
use ringfs_core::slice::{BlockRef, Slice, CHUNK_SIZE, MAX_BLOCK_SIZE};
use ringfs_core::{BlockId, Ino, VolumeId};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::ops::Bound;

/// Largest file: 2^50 bytes (1 PiB), far beyond any quota and safe from overflow.
pub const MAX_FILE_SIZE: u64 = 1 << 50;
/// Slices per chunk before a write is refused until compaction catches up.
pub const MAX_SLICES_PER_CHUNK: usize = 4096;

const K_NEXT_VOLUME: &[u8] = b"next_volume_id";
pub(crate) const K_LAYOUT_VERSION: &[u8] = b"layout_version";
pub(crate) const K_PARTITIONS: &[u8] = b"partitions";
pub(crate) const K_REPLICATION: &[u8] = b"replication";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRec {
    pub info: VolumeInfo,
    pub next_ino: Ino,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodeRec {
    pub attr: Attr,
    /// Symlink target.
    pub target: Vec<u8>,
    /// Parent directory (directories only; they have exactly one).
    pub parent: Ino,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DentryRec {
    pub ino: Ino,
    pub kind: FileKind,
}

// ---- key encodings (big-endian so that byte order is numeric order) ----

pub(crate) fn k_u64(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}
fn k_inode(vol: VolumeId, ino: Ino) -> Vec<u8> {
    [k_u64(vol), k_u64(ino)].concat()
}
fn k_dentry(vol: VolumeId, parent: Ino, name: &[u8]) -> Vec<u8> {
    let mut k = k_inode(vol, parent);
    k.extend_from_slice(name);
    k
}
/// Marks an unlinked-but-open inode, so a sweep can find orphans whose client died.
fn k_orphan(vol: VolumeId, ino: Ino) -> Vec<u8> {
    [b"orphan/".as_slice(), &k_u64(vol), &k_u64(ino)].concat()
}
/// A client session (one mount) of a volume: [`SessionRec`].
pub(crate) fn k_session(vol: VolumeId, session: u64) -> Vec<u8> {
    [b"session/".as_slice(), &k_u64(vol), &k_u64(session)].concat()
}
/// Session `session` holds orphan `ino` open.
fn k_held(vol: VolumeId, session: u64, ino: Ino) -> Vec<u8> {
    [
        b"held/".as_slice(),
        &k_u64(vol),
        &k_u64(session),
        &k_u64(ino),
    ]
    .concat()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRec {
    /// Proposer's clock (ns) after which the session is over unless renewed.
    pub expires_ns: i64,
    pub info: String,
}

fn session_expiry(now: i64, ttl_ms: u64) -> i64 {
    let ttl_ns = i64::try_from(ttl_ms.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
    now.saturating_add(ttl_ns)
}

/// Ends `session`: forgets what it holds and drops the orphans nobody else holds.
fn close_session(w: &impl Writer, vol: &mut VolumeRec, session: u64, now: i64) -> Result<()> {
    let id = vol.info.id;
    let prefix = [b"held/".as_slice(), &k_u64(id), &k_u64(session)].concat();
    let rows = w.scan(
        Tbl::Sys,
        Bound::Included(&prefix),
        &prefix_end(&prefix),
        usize::MAX,
    )?;
    for (k, _) in rows {
        w.del(Tbl::Sys, &k)?;
        if let Some(ino) = k.get(prefix.len()..).and_then(|b| b.try_into().ok()) {
            release_orphan(w, vol, u64::from_be_bytes(ino))?;
        }
    }
    w.del(Tbl::Sys, &k_session(id, session))?;
    crate::requests::end_session(w, id, session, now)
}

/// Drops orphan `ino` unless some session still holds it. A linked inode is left alone.
fn release_orphan(w: &impl Writer, vol: &mut VolumeRec, ino: Ino) -> Result<()> {
    let id = vol.info.id;
    let Some(rec) = inode(w, id, ino)? else {
        return Ok(());
    };
    if rec.attr.nlink != 0 || rec.attr.kind != FileKind::File {
        return Ok(());
    }
    let prefix = [b"held/".as_slice(), &k_u64(id)].concat();
    let mut after = prefix.clone();
    loop {
        let rows = w.scan(
            Tbl::Sys,
            Bound::Excluded(&after),
            &prefix_end(&prefix),
            1024,
        )?;
        let Some((last, _)) = rows.last() else { break };
        after = last.clone();
        if rows
            .iter()
            .any(|(k, _)| k.ends_with(&k_u64(ino)) && k.len() == prefix.len() + 16)
        {
            return Ok(());
        }
    }
    drop_inode(w, vol, rec)
}

/// Sessions of every volume whose lease ran out before `now` (ns), oldest key first.
/// Sessions whose lease expired by `now`, with their expiry (which a renewal changes).
pub fn expired_sessions(
    r: &impl Reader,
    now: i64,
    limit: usize,
) -> Result<Vec<((VolumeId, u64), i64)>> {
    let prefix = b"session/".to_vec();
    let mut out = Vec::new();
    let mut after = prefix.clone();
    loop {
        let rows = r.scan(
            Tbl::Sys,
            Bound::Excluded(&after),
            &prefix_end(&prefix),
            1024,
        )?;
        let Some((last, _)) = rows.last() else { break };
        after = last.clone();
        for (k, v) in &rows {
            let rec: SessionRec = dec(v)?;
            if rec.expires_ns < now {
                if let Some((vol, s)) = split_session_key(&k[prefix.len()..]) {
                    out.push(((vol, s), rec.expires_ns));
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
    }
    Ok(out)
}

fn split_session_key(k: &[u8]) -> Option<(VolumeId, u64)> {
    let vol = u64::from_be_bytes(k.get(..8)?.try_into().ok()?);
    let s = u64::from_be_bytes(k.get(8..16)?.try_into().ok()?);
    Some((vol, s))
}

/// Every session of volume `vol` with its record.
pub fn sessions(r: &impl Reader, vol: VolumeId) -> Result<Vec<(u64, SessionRec)>> {
    let prefix = [b"session/".as_slice(), &k_u64(vol)].concat();
    let rows = r.scan(
        Tbl::Sys,
        Bound::Included(&prefix),
        &prefix_end(&prefix),
        usize::MAX,
    )?;
    let mut out = Vec::new();
    for (k, v) in rows {
        if let Some((_, s)) = split_session_key(&k[b"session/".len()..]) {
            out.push((s, dec(&v)?));
        }
    }
    Ok(out)
}
fn k_chunk(vol: VolumeId, ino: Ino, chunk: u64) -> Vec<u8> {
    [k_u64(vol), k_u64(ino), k_u64(chunk)].concat()
}
/// The smallest key greater than every key starting with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

pub(crate) fn dec<T: DeserializeOwned>(v: &[u8]) -> Result<T> {
    postcard::from_bytes(v).map_err(|e| NodeError::Storage(format!("corrupt metadata record: {e}")))
}
pub(crate) fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    Ok(postcard::to_allocvec(v)?)
}
pub(crate) fn get<T: DeserializeOwned>(r: &impl Reader, t: Tbl, k: &[u8]) -> Result<Option<T>> {
    r.get(t, k)?.map(|v| dec(&v)).transpose()
}
pub(crate) fn put<T: Serialize>(w: &impl Writer, t: Tbl, k: &[u8], v: &T) -> Result<()> {
    w.put(t, k, &enc(v)?)
}

pub(crate) fn refused(code: RefusalCode, message: impl Into<String>) -> Response {
    Response::Refused {
        code,
        message: message.into(),
    }
}

// ---- reads shared by queries and commands ----

pub fn volume_by_name(r: &impl Reader, name: &str) -> Result<Option<VolumeRec>> {
    let Some(id) = get::<u64>(r, Tbl::VolumeNames, name.as_bytes())? else {
        return Ok(None);
    };
    volume_by_id(r, id)
}

pub fn volume_by_id(r: &impl Reader, id: VolumeId) -> Result<Option<VolumeRec>> {
    get(r, Tbl::Volumes, &k_u64(id))
}

pub fn list_volumes(r: &impl Reader) -> Result<Vec<VolumeInfo>> {
    let rows = r.scan(Tbl::Volumes, Bound::Unbounded, &[0xff; 9], usize::MAX)?;
    rows.iter()
        .map(|(_, v)| dec::<VolumeRec>(v).map(|rec| rec.info))
        .collect()
}

/// Whether block `id` is queued for garbage collection (released, not yet deleted on
/// every node).
pub fn gc_queued(r: &impl Reader, id: BlockId) -> Result<bool> {
    Ok(r.get(Tbl::Gc, &id.0)?.is_some())
}

/// Whether some file references block `id`.
pub fn block_referenced(r: &impl Reader, id: BlockId) -> Result<bool> {
    Ok(get::<u64>(r, Tbl::BlockRefs, &id.0)?.is_some())
}

pub fn nodes(r: &impl Reader) -> Result<Vec<NodeRecord>> {
    let rows = r.scan(Tbl::Nodes, Bound::Unbounded, &[0xff; 9], usize::MAX)?;
    rows.iter().map(|(_, v)| dec(v)).collect()
}

/// Layout versions, newest first.
pub fn layouts(r: &impl Reader) -> Result<Vec<Layout>> {
    let rows = r.scan(Tbl::Layouts, Bound::Unbounded, &[0xff; 9], usize::MAX)?;
    let mut out: Vec<Layout> = rows.iter().map(|(_, v)| dec(v)).collect::<Result<_>>()?;
    out.reverse();
    Ok(out)
}

pub fn current_layout(r: &impl Reader) -> Result<Option<Layout>> {
    let Some(v) = get::<u64>(r, Tbl::Sys, K_LAYOUT_VERSION)? else {
        return Ok(None);
    };
    get(r, Tbl::Layouts, &k_u64(v))
}

/// Blocks waiting to be deleted from their replicas.
pub fn gc_batch(r: &impl Reader, limit: usize) -> Result<Vec<BlockId>> {
    let rows = r.scan(Tbl::Gc, Bound::Unbounded, &[0xff; 17], limit)?;
    Ok(rows
        .iter()
        .filter_map(|(k, _)| BlockId::from_slice(k))
        .collect())
}

pub fn deleting_volumes(r: &impl Reader) -> Result<Vec<VolumeId>> {
    let rows = r.scan(Tbl::Deleting, Bound::Unbounded, &[0xff; 9], usize::MAX)?;
    Ok(rows
        .iter()
        .filter_map(|(k, _)| k.as_slice().try_into().ok().map(u64::from_be_bytes))
        .collect())
}

fn inode(r: &impl Reader, vol: VolumeId, ino: Ino) -> Result<Option<InodeRec>> {
    get(r, Tbl::Inodes, &k_inode(vol, ino))
}

type FsRes<T> = std::result::Result<T, FsError>;

fn need_inode(r: &impl Reader, vol: VolumeId, ino: Ino) -> Result<FsRes<InodeRec>> {
    Ok(inode(r, vol, ino)?.ok_or(FsError::NotFound))
}

fn need_dir(r: &impl Reader, vol: VolumeId, ino: Ino) -> Result<FsRes<InodeRec>> {
    Ok(match inode(r, vol, ino)? {
        None => Err(FsError::NotFound),
        Some(i) if i.attr.kind != FileKind::Dir => Err(FsError::NotDir),
        Some(i) => Ok(i),
    })
}

fn check_name(name: &[u8]) -> FsRes<()> {
    if name.len() > MAX_NAME_LEN {
        return Err(FsError::NameTooLong);
    }
    validate_file_name(name).map_err(|e| FsError::Invalid(e.to_string()))
}

fn lookup(r: &impl Reader, vol: VolumeId, parent: Ino, name: &[u8]) -> Result<Option<DentryRec>> {
    get(r, Tbl::Dentries, &k_dentry(vol, parent, name))
}

fn dir_is_empty(r: &impl Reader, vol: VolumeId, ino: Ino) -> Result<bool> {
    let prefix = k_inode(vol, ino);
    Ok(r.scan(
        Tbl::Dentries,
        Bound::Included(&prefix),
        &prefix_end(&prefix),
        1,
    )?
    .is_empty())
}

/// Evaluates a read-only file-system op.
/// `vol` may also be a snapshot's id: snapshots answer every read (and no write).
pub fn query(r: &impl Reader, vol: VolumeId, op: &FsOp) -> Result<FsResult> {
    let statfs = match volume_by_id(r, vol)? {
        Some(v) => StatFs {
            capacity_bytes: v.info.capacity,
            used_bytes: v.info.used_bytes,
            used_inodes: v.info.used_inodes,
        },
        None => match crate::snapshots::snapshot_by_id(r, vol)? {
            // Full: nothing can be added to a snapshot.
            Some(s) => StatFs {
                capacity_bytes: s.info.used_bytes,
                used_bytes: s.info.used_bytes,
                used_inodes: s.info.used_inodes,
            },
            None => return Ok(Err(FsError::NoVolume(vol))),
        },
    };
    Ok(match op {
        FsOp::Lookup { parent, name } => {
            if let Err(e) = need_dir(r, vol, *parent)? {
                return Ok(Err(e));
            }
            match lookup(r, vol, *parent, name)? {
                None => Err(FsError::NotFound),
                Some(d) => need_inode(r, vol, d.ino)?.map(|i| FsReply::Attr(i.attr)),
            }
        }
        FsOp::GetAttr { ino } => need_inode(r, vol, *ino)?.map(|i| FsReply::Attr(i.attr)),
        FsOp::ResolvePath { path } => {
            let comps = match split_path(path) {
                Ok(c) => c,
                Err(e) => return Ok(Err(FsError::Invalid(e.to_string()))),
            };
            let mut cur = match need_inode(r, vol, ringfs_core::ids::ROOT_INO)? {
                Ok(i) => i,
                Err(e) => return Ok(Err(e)),
            };
            for c in comps {
                if cur.attr.kind != FileKind::Dir {
                    return Ok(Err(FsError::NotDir));
                }
                let Some(d) = lookup(r, vol, cur.attr.ino, c.as_bytes())? else {
                    return Ok(Err(FsError::NotFound));
                };
                cur = match need_inode(r, vol, d.ino)? {
                    Ok(i) => i,
                    Err(e) => return Ok(Err(e)),
                };
            }
            Ok(FsReply::Attr(cur.attr))
        }
        FsOp::ReadDir { ino, after, limit } => {
            if let Err(e) = need_dir(r, vol, *ino)? {
                return Ok(Err(e));
            }
            let limit = (*limit).clamp(1, MAX_READDIR) as usize;
            let prefix = k_inode(vol, *ino);
            let start = k_dentry(vol, *ino, after);
            let lower = if after.is_empty() {
                Bound::Included(prefix.as_slice())
            } else {
                Bound::Excluded(start.as_slice())
            };
            let rows = r.scan(Tbl::Dentries, lower, &prefix_end(&prefix), limit + 1)?;
            let more = rows.len() > limit;
            let entries = rows
                .iter()
                .take(limit)
                .map(|(k, v)| {
                    let d: DentryRec = dec(v)?;
                    Ok(DirEntry {
                        name: k[16..].to_vec(),
                        ino: d.ino,
                        kind: d.kind,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(FsReply::Entries { entries, more })
        }
        FsOp::ReadLink { ino } => match need_inode(r, vol, *ino)? {
            Ok(i) if i.attr.kind == FileKind::Symlink => Ok(FsReply::Link(i.target)),
            Ok(_) => Err(FsError::Invalid("not a symbolic link".into())),
            Err(e) => Err(e),
        },
        FsOp::ReadChunk { ino, chunk } => match need_inode(r, vol, *ino)? {
            Ok(i) if i.attr.kind == FileKind::Dir => Err(FsError::IsDir),
            Ok(i) => {
                let slices: Vec<Slice> =
                    get(r, Tbl::Chunks, &k_chunk(vol, *ino, *chunk))?.unwrap_or_default();
                Ok(FsReply::Chunk {
                    attr: i.attr,
                    slices,
                })
            }
            Err(e) => Err(e),
        },
        FsOp::GetXattr { ino, name } => {
            if let Err(e) = check_xattr_name(name) {
                return Ok(Err(e));
            }
            if let Err(e) = need_inode(r, vol, *ino)? {
                return Ok(Err(e));
            }
            match r.get(Tbl::Xattrs, &k_dentry(vol, *ino, name))? {
                Some(v) => Ok(FsReply::Xattr(v)),
                None => Err(FsError::NoXattr),
            }
        }
        FsOp::ListXattr { ino } => {
            if let Err(e) = need_inode(r, vol, *ino)? {
                return Ok(Err(e));
            }
            let prefix = k_inode(vol, *ino);
            let rows = r.scan(
                Tbl::Xattrs,
                Bound::Included(&prefix),
                &prefix_end(&prefix),
                usize::MAX,
            )?;
            Ok(FsReply::XattrNames(
                rows.into_iter().map(|(k, _)| k[16..].to_vec()).collect(),
            ))
        }
        FsOp::StatFs => Ok(FsReply::StatFs(statfs)),
        _ => Err(FsError::Invalid("not a read operation".into())),
    })
}

// ---- commands ----

/// Applies one file-system command to volume `volume` (a snapshot's id: read-only).
fn apply_fs(w: &impl Writer, volume: VolumeId, op: FsOp, now_ns: i64) -> Result<FsResult> {
    let Some(mut vol) = volume_by_id(w, volume)? else {
        if crate::snapshots::snapshot_by_id(w, volume)?.is_some() {
            return Ok(if op.is_read() {
                query(w, volume, &op)?
            } else {
                Err(FsError::ReadOnly)
            });
        }
        return Ok(Err(FsError::NoVolume(volume)));
    };
    if op.is_read() {
        return query(w, volume, &op);
    }
    let res = fs_write(w, &mut vol, op, now_ns)?;
    if res.is_ok() {
        put(w, Tbl::Volumes, &k_u64(volume), &vol)?;
    }
    Ok(res)
}

/// Applies one file-system command exactly once per request id (see `requests`); a
/// command without one is applied each time it arrives.
fn apply_call(w: &impl Writer, call: crate::types::FsCall) -> Result<FsResult> {
    use crate::requests::{admit, record, Admission};
    // Reads and session management are idempotent by nature; on a missing volume (or a
    // read-only snapshot) nothing is applied and the answer says why.
    let Some(id) = call
        .request
        .filter(|_| !call.op.is_read() && !call.op.is_session_op())
    else {
        return apply_fs(w, call.volume, call.op, call.now_ns);
    };
    if volume_by_id(w, call.volume)?.is_none() {
        return apply_fs(w, call.volume, call.op, call.now_ns);
    }
    if let Admission::Answered(r) = admit(w, call.volume, id)? {
        return Ok(r);
    }
    let result = apply_fs(w, call.volume, call.op, call.now_ns)?;
    record(w, call.volume, id, &result)?;
    Ok(result)
}

/// Applies one command. Storage failures are errors (fatal for the node); everything a
/// user can cause is a [`Response`].
pub fn apply(w: &impl Writer, cmd: Command) -> Result<Response> {
    match cmd {
        Command::CreateVolume {
            name,
            capacity,
            replication,
            now_ns,
        } => create_volume(w, &name, capacity, replication, now_ns),
        Command::ResizeVolume { name, capacity } => resize_volume(w, &name, capacity),
        Command::DeleteVolume { name } => delete_volume(w, &name),
        Command::Fs { volume, op, now_ns } => Ok(Response::Fs(apply_fs(w, volume, op, now_ns)?)),
        Command::FsBatch(cmds) => {
            let mut out = Vec::with_capacity(cmds.len());
            for c in cmds {
                out.push(apply_fs(w, c.volume, c.op, c.now_ns)?);
            }
            Ok(Response::FsBatch(out))
        }
        Command::FsCalls(calls) => {
            let mut out = Vec::with_capacity(calls.len());
            for c in calls {
                out.push(apply_call(w, c)?);
            }
            Ok(Response::FsBatch(out))
        }
        Command::AddNode {
            spec,
            addr,
            partitions,
            replication,
        } => add_node(w, spec, addr, partitions, replication),
        Command::GcDone { ids } => {
            for id in ids {
                w.del(Tbl::Gc, &id.0)?;
            }
            Ok(Response::None)
        }
        Command::PurgeVolume { id, limit } => purge_volume(w, id, limit),
        Command::SetNodeState { id, state } => crate::members::set_state(w, id, state),
        Command::RemoveNode { id, force } => crate::members::remove(w, id, force),
        Command::SyncReport { node, version } => crate::members::sync_report(w, node, version),
        Command::ExpireSessions { sessions, now_ns } => {
            let mut ended = 0u32;
            for (vol_id, session) in sessions {
                let Some(rec) = get::<SessionRec>(w, Tbl::Sys, &k_session(vol_id, session))? else {
                    continue;
                };
                let Some(mut vol) = get::<VolumeRec>(w, Tbl::Volumes, &k_u64(vol_id))? else {
                    w.del(Tbl::Sys, &k_session(vol_id, session))?;
                    continue;
                };
                if rec.expires_ns < now_ns {
                    close_session(w, &mut vol, session, now_ns)?;
                    put(w, Tbl::Volumes, &k_u64(vol_id), &vol)?;
                    ended += 1;
                }
            }
            if ended > 0 {
                tracing::debug!(sessions = ended, "expired client sessions ended");
            }
            crate::requests::prune_tombstones(w, now_ns)?;
            Ok(Response::None)
        }
        Command::CreateSnapshot {
            name,
            volume,
            now_ns,
        } => crate::snapshots::create_snapshot(w, &name, &volume, now_ns),
        Command::DeleteSnapshot { name } => crate::snapshots::delete_snapshot(w, &name),
        Command::CloneVolume {
            name,
            capacity,
            replication,
            source,
            now_ns,
        } => crate::snapshots::clone_volume(w, &name, capacity, replication, &source, now_ns),
        Command::Unreferenced { ids } => {
            let mut out = Vec::new();
            for id in ids {
                if !block_referenced(w, id)? {
                    out.push(id);
                }
            }
            Ok(Response::Blocks(out))
        }
    }
}

fn create_volume(
    w: &impl Writer,
    name: &str,
    capacity: u64,
    replication: u32,
    now_ns: i64,
) -> Result<Response> {
    if let Err(e) = validate_volume_name(name) {
        return Ok(refused(RefusalCode::InvalidArgument, e.to_string()));
    }
    if capacity == 0 {
        return Ok(refused(
            RefusalCode::InvalidArgument,
            "volume capacity must be greater than 0 bytes",
        ));
    }
    let rf = match new_volume_replication(w, replication)? {
        Ok(rf) => rf,
        Err(refusal) => return Ok(refusal),
    };
    if let Some(existing) = volume_by_name(w, name)? {
        let i = &existing.info;
        if let Some(origin) = volume_origin(w, i.id)? {
            return Ok(refused(
                RefusalCode::AlreadyExists,
                format!("volume {name:?} already exists as a clone of {origin}; pick another name"),
            ));
        }
        if i.capacity == capacity && i.replication == rf {
            return Ok(Response::Volume {
                volume: existing.info,
                created: false,
            });
        }
        return Ok(refused(
            RefusalCode::AlreadyExists,
            format!(
                "volume {name:?} already exists with capacity {} bytes and replication {}; \
                 use resize to change its capacity, or pick another name",
                i.capacity, i.replication
            ),
        ));
    }
    let id = next_volume_id(w)?;
    let root = InodeRec {
        attr: Attr {
            ino: ringfs_core::ids::ROOT_INO,
            kind: FileKind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            nlink: 2,
            atime_ns: now_ns,
            mtime_ns: now_ns,
            ctime_ns: now_ns,
        },
        target: Vec::new(),
        parent: ringfs_core::ids::ROOT_INO,
    };
    put(w, Tbl::Inodes, &k_inode(id, root.attr.ino), &root)?;
    let info = VolumeInfo {
        id,
        name: name.to_string(),
        capacity,
        replication: rf,
        used_bytes: 0,
        used_inodes: 1,
        created_ns: now_ns,
    };
    put(
        w,
        Tbl::Volumes,
        &k_u64(id),
        &VolumeRec {
            info: info.clone(),
            next_ino: 2,
        },
    )?;
    put(w, Tbl::VolumeNames, name.as_bytes(), &id)?;
    Ok(Response::Volume {
        volume: info,
        created: true,
    })
}

/// Allocates a volume id (also used for snapshots' namespaces); ids are never reused.
pub(crate) fn next_volume_id(w: &impl Writer) -> Result<VolumeId> {
    let id: u64 = get(w, Tbl::Sys, K_NEXT_VOLUME)?.unwrap_or(1);
    put(w, Tbl::Sys, K_NEXT_VOLUME, &(id + 1))?;
    Ok(id)
}

/// The replication of a new volume asked for `replication` (0: the cluster default), or
/// the refusal when the cluster cannot place that many copies.
pub(crate) fn new_volume_replication(
    r: &impl Reader,
    replication: u32,
) -> Result<std::result::Result<u32, Response>> {
    let Some(layout) = current_layout(r)? else {
        return Ok(Err(refused(
            RefusalCode::FailedPrecondition,
            "the cluster has no storage nodes yet; wait for nodes to join",
        )));
    };
    let max_rf = layout.replication;
    let rf = if replication == 0 {
        max_rf.min(ringfs_core::layout::DEFAULT_REPLICATION)
    } else {
        replication
    };
    if rf > max_rf {
        return Ok(Err(refused(
            RefusalCode::InvalidArgument,
            format!(
                "replication {rf} needs at least {rf} storage nodes, but the cluster places data on {max_rf}; \
                 add nodes or ask for replication <= {max_rf}"
            ),
        )));
    }
    Ok(Ok(rf))
}

/// Where a clone came from: `origin/<volume id>` in `Sys`, removed with the volume.
pub(crate) fn k_origin(vol: VolumeId) -> Vec<u8> {
    [b"origin/".as_slice(), &k_u64(vol)].concat()
}

/// The source a volume was cloned from (`None`: created empty).
pub fn volume_origin(r: &impl Reader, vol: VolumeId) -> Result<Option<CloneSource>> {
    get(r, Tbl::Sys, &k_origin(vol))
}

fn resize_volume(w: &impl Writer, name: &str, capacity: u64) -> Result<Response> {
    if capacity == 0 {
        return Ok(refused(
            RefusalCode::InvalidArgument,
            "volume capacity must be greater than 0 bytes",
        ));
    }
    let Some(mut rec) = volume_by_name(w, name)? else {
        return Ok(refused(
            RefusalCode::NotFound,
            format!("volume {name:?} does not exist; `ringfs volume ls` lists volumes"),
        ));
    };
    if capacity < rec.info.used_bytes {
        return Ok(refused(
            RefusalCode::FailedPrecondition,
            format!(
                "volume {name:?} holds {} bytes; it cannot shrink to {capacity} bytes. Delete files first",
                rec.info.used_bytes
            ),
        ));
    }
    rec.info.capacity = capacity;
    put(w, Tbl::Volumes, &k_u64(rec.info.id), &rec)?;
    Ok(Response::Volume {
        volume: rec.info,
        created: false,
    })
}

fn delete_volume(w: &impl Writer, name: &str) -> Result<Response> {
    let Some(rec) = volume_by_name(w, name)? else {
        return Ok(Response::Deleted(false));
    };
    w.del(Tbl::VolumeNames, name.as_bytes())?;
    w.del(Tbl::Volumes, &k_u64(rec.info.id))?;
    w.put(Tbl::Deleting, &k_u64(rec.info.id), &[])?;
    Ok(Response::Deleted(true))
}

/// Removes up to `limit` records of a deleted volume (or snapshot: its namespace has the
/// same shape); blocks no longer referenced go to the GC queue.
fn purge_volume(w: &impl Writer, id: VolumeId, limit: u32) -> Result<Response> {
    let prefix = k_u64(id);
    let end = prefix_end(&prefix);
    let mut budget = limit.max(1) as usize;
    for t in [Tbl::Chunks, Tbl::Dentries, Tbl::Xattrs, Tbl::Inodes] {
        let rows = w.scan(t, Bound::Included(&prefix), &end, budget)?;
        for (k, v) in &rows {
            if t == Tbl::Chunks {
                let slices: Vec<Slice> = dec(v)?;
                decref_slices(w, &slices)?;
            }
            w.del(t, k)?;
        }
        budget -= rows.len();
        if budget == 0 {
            return Ok(Response::Purged { remaining: true });
        }
    }
    // Orphan marks, client sessions and what they hold, and a clone's origin.
    let kinds = [b"orphan/".as_slice(), b"session/", b"held/", b"origin/"];
    for kind in kinds.into_iter().chain(crate::requests::VOLUME_PREFIXES) {
        let marks = [kind, &prefix].concat();
        let rows = w.scan(
            Tbl::Sys,
            Bound::Included(&marks),
            &prefix_end(&marks),
            budget,
        )?;
        for (k, _) in &rows {
            w.del(Tbl::Sys, k)?;
        }
        if rows.len() == budget {
            return Ok(Response::Purged { remaining: true });
        }
        budget -= rows.len();
    }
    w.del(Tbl::Deleting, &prefix)?;
    Ok(Response::Purged { remaining: false })
}

fn add_node(
    w: &impl Writer,
    spec: NodeSpec,
    addr: String,
    partitions: u32,
    replication: u32,
) -> Result<Response> {
    if spec.id == 0 {
        return Ok(refused(
            RefusalCode::InvalidArgument,
            "node id 0 is reserved; node ids start at 1",
        ));
    }
    let key = k_u64(spec.id);
    let prev: Option<NodeRecord> = get(w, Tbl::Nodes, &key)?;
    let current = current_layout(w)?;
    if let (Some(p), Some(_)) = (&prev, &current) {
        if p.spec == spec && p.addr == addr {
            let version = current.as_ref().map(|l| l.version).unwrap_or(0);
            return Ok(Response::Layout {
                version,
                changed: false,
            });
        }
    }
    let mut all = nodes(w)?;
    all.retain(|n| n.spec.id != spec.id);
    all.push(NodeRecord {
        spec: spec.clone(),
        addr: addr.clone(),
    });
    all.sort_by_key(|n| n.spec.id);
    let specs: Vec<NodeSpec> = all.iter().map(|n| n.spec.clone()).collect();
    let partitions = get(w, Tbl::Sys, K_PARTITIONS)?.unwrap_or(partitions);
    let replication = get(w, Tbl::Sys, K_REPLICATION)?.unwrap_or(replication);
    let layout_changed = prev
        .as_ref()
        .map(|p| crate::members::spec_change_significant(&p.spec, &spec))
        .unwrap_or(true);
    let specs = crate::members::effective_specs(w, specs)?;
    let mut version = current.as_ref().map(|l| l.version).unwrap_or(0);
    if layout_changed || current.is_none() {
        let next = match Layout::compute(current.as_ref(), &specs, replication, partitions) {
            Ok(l) => l,
            Err(e) => return Ok(refused(RefusalCode::InvalidArgument, e.to_string())),
        };
        version = next.version;
        put(w, Tbl::Layouts, &k_u64(version), &next)?;
        put(w, Tbl::Sys, K_LAYOUT_VERSION, &version)?;
        put(w, Tbl::Sys, K_PARTITIONS, &partitions)?;
        put(w, Tbl::Sys, K_REPLICATION, &replication)?;
    }
    put(w, Tbl::Nodes, &key, &NodeRecord { spec, addr })?;
    Ok(Response::Layout {
        version,
        changed: layout_changed,
    })
}

pub(crate) fn incref_slices(w: &impl Writer, slices: &[Slice]) -> Result<()> {
    for s in slices {
        for b in &s.blocks {
            let n: u64 = get(w, Tbl::BlockRefs, &b.id.0)?.unwrap_or(0);
            put(w, Tbl::BlockRefs, &b.id.0, &(n + 1))?;
        }
    }
    Ok(())
}

fn decref_slices(w: &impl Writer, slices: &[Slice]) -> Result<()> {
    for s in slices {
        for b in &s.blocks {
            let n: u64 = get(w, Tbl::BlockRefs, &b.id.0)?.unwrap_or(0);
            if n <= 1 {
                w.del(Tbl::BlockRefs, &b.id.0)?;
                w.put(Tbl::Gc, &b.id.0, &[])?;
            } else {
                put(w, Tbl::BlockRefs, &b.id.0, &(n - 1))?;
            }
        }
    }
    Ok(())
}

/// Drops every chunk of `ino` at or after `from_chunk`.
fn drop_chunks(w: &impl Writer, vol: VolumeId, ino: Ino, from_chunk: u64) -> Result<()> {
    let start = k_chunk(vol, ino, from_chunk);
    let end = prefix_end(&k_inode(vol, ino));
    loop {
        let rows = w.scan(Tbl::Chunks, Bound::Included(&start), &end, 256)?;
        if rows.is_empty() {
            return Ok(());
        }
        for (k, v) in rows {
            let slices: Vec<Slice> = dec(&v)?;
            decref_slices(w, &slices)?;
            w.del(Tbl::Chunks, &k)?;
        }
    }
}

/// Changes a file's size: shrinking drops whole chunks past the end and hides the tail of
/// the last one behind a zero slice, so growing later reads zeros, never old data.
fn set_size(w: &impl Writer, vol: VolumeId, ino: Ino, old: u64, new: u64) -> Result<()> {
    if new >= old {
        return Ok(());
    }
    let keep_chunks = new.div_ceil(CHUNK_SIZE);
    drop_chunks(w, vol, ino, keep_chunks)?;
    let tail = new % CHUNK_SIZE;
    if tail != 0 {
        let idx = new / CHUNK_SIZE;
        let key = k_chunk(vol, ino, idx);
        let mut slices: Vec<Slice> = get(w, Tbl::Chunks, &key)?.unwrap_or_default();
        if !slices.is_empty() {
            slices.push(Slice::zero(tail as u32, (CHUNK_SIZE - tail) as u32));
            put(w, Tbl::Chunks, &key, &slices)?;
        }
    }
    Ok(())
}

fn check_quota(vol: &VolumeRec, grow: u64) -> FsRes<()> {
    let used = vol.info.used_bytes;
    if grow > 0 && used.saturating_add(grow) > vol.info.capacity {
        return Err(FsError::QuotaExceeded {
            used,
            capacity: vol.info.capacity,
            needed: grow,
        });
    }
    Ok(())
}

/// Removes the dentry `parent/name` pointing at `rec` and drops the inode when its last
/// link goes — unless `keep_open` and it is a file, which then stays as an orphan (nlink
/// 0) until [`FsOp::Forget`]. The caller has validated everything.
fn unlink_inode(
    w: &impl Writer,
    vol: &mut VolumeRec,
    parent: Ino,
    name: &[u8],
    mut rec: InodeRec,
    keep_open: bool,
    now: i64,
) -> Result<()> {
    let id = vol.info.id;
    w.del(Tbl::Dentries, &k_dentry(id, parent, name))?;
    let is_dir = rec.attr.kind == FileKind::Dir;
    if is_dir || rec.attr.nlink <= 1 {
        if keep_open && rec.attr.kind == FileKind::File {
            rec.attr.nlink = 0;
            rec.attr.ctime_ns = now;
            put(w, Tbl::Inodes, &k_inode(id, rec.attr.ino), &rec)?;
            w.put(Tbl::Sys, &k_orphan(id, rec.attr.ino), &[])?;
            return Ok(());
        }
        drop_inode(w, vol, rec)?;
        if is_dir {
            if let Some(mut p) = inode(w, id, parent)? {
                p.attr.nlink = p.attr.nlink.saturating_sub(1);
                put(w, Tbl::Inodes, &k_inode(id, parent), &p)?;
            }
        }
    } else {
        rec.attr.nlink -= 1;
        rec.attr.ctime_ns = now;
        put(w, Tbl::Inodes, &k_inode(id, rec.attr.ino), &rec)?;
    }
    Ok(())
}

/// Deletes an inode with its chunks (their blocks go to GC), xattrs and orphan mark.
fn drop_inode(w: &impl Writer, vol: &mut VolumeRec, rec: InodeRec) -> Result<()> {
    let id = vol.info.id;
    drop_chunks(w, id, rec.attr.ino, 0)?;
    let xprefix = k_inode(id, rec.attr.ino);
    let mut xattr_bytes = 0u64;
    for (k, v) in w.scan(
        Tbl::Xattrs,
        Bound::Included(&xprefix),
        &prefix_end(&xprefix),
        usize::MAX,
    )? {
        xattr_bytes += (k.len().saturating_sub(xprefix.len()) + v.len()) as u64;
        w.del(Tbl::Xattrs, &k)?;
    }
    w.del(Tbl::Inodes, &k_inode(id, rec.attr.ino))?;
    w.del(Tbl::Sys, &k_orphan(id, rec.attr.ino))?;
    vol.info.used_bytes = vol
        .info
        .used_bytes
        .saturating_sub(rec.attr.size.saturating_add(xattr_bytes));
    vol.info.used_inodes = vol.info.used_inodes.saturating_sub(1);
    Ok(())
}

fn unlink(
    w: &impl Writer,
    vol: &mut VolumeRec,
    parent: Ino,
    name: &[u8],
    keep_open: bool,
    now: i64,
) -> Result<FsResult> {
    let id = vol.info.id;
    if let Err(e) = need_dir(w, id, parent)? {
        return Ok(Err(e));
    }
    let Some(d) = lookup(w, id, parent, name)? else {
        return Ok(Err(FsError::NotFound));
    };
    if d.kind == FileKind::Dir {
        return Ok(Err(FsError::IsDir));
    }
    let rec = match need_inode(w, id, d.ino)? {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    unlink_inode(w, vol, parent, name, rec, keep_open, now)?;
    if let Some(dir) = inode(w, id, parent)? {
        touch_dir(w, id, dir, now, 0)?;
    }
    Ok(Ok(FsReply::Done))
}

/// Places an append at the file's current size: one slice per chunk the data spans, each
/// referencing only the blocks it shows.
fn append(
    w: &impl Writer,
    vol: &mut VolumeRec,
    ino: Ino,
    blocks: Vec<BlockRef>,
    len: u64,
    now: i64,
) -> Result<FsResult> {
    let data_len: u64 = blocks.iter().map(|b| u64::from(b.len)).sum();
    if len == 0 || data_len < len || blocks.iter().any(|b| b.len == 0 || b.len > MAX_BLOCK_SIZE) {
        return Ok(Err(FsError::Invalid(format!(
            "append of {len} bytes over {} blocks holding {data_len} bytes is malformed",
            blocks.len()
        ))));
    }
    let start = match need_inode(w, vol.info.id, ino)? {
        Ok(r) => r.attr.size,
        Err(e) => return Ok(Err(e)),
    };
    let Some(end) = start.checked_add(len).filter(|e| *e <= MAX_FILE_SIZE) else {
        return Ok(Err(FsError::Invalid(format!(
            "files are at most {MAX_FILE_SIZE} bytes"
        ))));
    };
    let mut slices = Vec::new();
    let mut off = start;
    let mut data_off = 0u64;
    while off < end {
        let pos = off % CHUNK_SIZE;
        let n = (CHUNK_SIZE - pos).min(end - off);
        let (skip, sub) = sub_blocks(&blocks, data_off, n);
        slices.push(ChunkSlice {
            chunk: off / CHUNK_SIZE,
            slice: Slice {
                pos: pos as u32,
                len: n as u32,
                skip,
                blocks: sub,
            },
        });
        off += n;
        data_off += n;
    }
    write_slices(w, vol, ino, slices, end, now)
}

/// The blocks covering bytes `[from, from + len)` of the concatenation of `blocks`, and
/// the offset of `from` inside the first of them.
fn sub_blocks(blocks: &[BlockRef], from: u64, len: u64) -> (u32, Vec<BlockRef>) {
    let mut out = Vec::new();
    let mut skip = 0u32;
    let mut start = 0u64;
    for b in blocks {
        let end = start + u64::from(b.len);
        if end > from && start < from + len {
            if out.is_empty() {
                skip = (from - start) as u32;
            }
            out.push(*b);
        }
        start = end;
    }
    (skip, out)
}

/// What one inode's extended attributes take (see [`MAX_XATTRS_PER_INODE`] and its
/// neighbours), and the value length of attribute `name` when it exists.
struct XattrUsage {
    count: usize,
    /// `listxattr` bytes: every name with its NUL.
    list_bytes: usize,
    /// Names and values: what the quota is charged.
    bytes: u64,
    old_value: Option<usize>,
}

/// Bounded by the per-inode limits: at most [`MAX_XATTRS_PER_INODE`] rows are read.
fn xattr_usage(r: &impl Reader, vol: VolumeId, ino: Ino, name: &[u8]) -> Result<XattrUsage> {
    let prefix = k_inode(vol, ino);
    let mut u = XattrUsage {
        count: 0,
        list_bytes: 0,
        bytes: 0,
        old_value: None,
    };
    for (k, v) in r.scan(
        Tbl::Xattrs,
        Bound::Included(&prefix),
        &prefix_end(&prefix),
        MAX_XATTRS_PER_INODE + 1,
    )? {
        let n = &k[prefix.len().min(k.len())..];
        u.count += 1;
        u.list_bytes += n.len() + 1;
        u.bytes += (n.len() + v.len()) as u64;
        if n == name {
            u.old_value = Some(v.len());
        }
    }
    Ok(u)
}

fn check_xattr_name(name: &[u8]) -> FsRes<()> {
    if name.is_empty() || name.contains(&0) {
        return Err(FsError::Invalid(
            "extended attribute names are 1-255 bytes without NUL".into(),
        ));
    }
    if name.len() > MAX_XATTR_NAME {
        return Err(FsError::Range);
    }
    Ok(())
}

fn touch_dir(
    w: &impl Writer,
    vol: VolumeId,
    mut dir: InodeRec,
    now: i64,
    nlink_delta: i32,
) -> Result<()> {
    dir.attr.mtime_ns = now;
    dir.attr.ctime_ns = now;
    dir.attr.nlink = dir.attr.nlink.saturating_add_signed(nlink_delta);
    put(w, Tbl::Inodes, &k_inode(vol, dir.attr.ino), &dir)
}

/// `tryfs!(r)`: the value of a `Result<FsRes<T>>`, returning the file-system error as
/// the command's answer (and a storage error as a failure).
macro_rules! tryfs {
    ($e:expr) => {
        match $e? {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        }
    };
}
/// `ensure!(r)`: returns the file-system error of an `FsRes<()>` as the answer.
macro_rules! ensure {
    ($e:expr) => {
        if let Err(e) = $e {
            return Ok(Err(e));
        }
    };
}

fn fs_write(w: &impl Writer, vol: &mut VolumeRec, op: FsOp, now: i64) -> Result<FsResult> {
    let id = vol.info.id;
    match op {
        FsOp::Create {
            parent,
            name,
            mode,
            uid,
            gid,
            exclusive,
        } => {
            ensure!(check_name(&name));
            let dir = tryfs!(need_dir(w, id, parent));
            if let Some(d) = lookup(w, id, parent, &name)? {
                if exclusive {
                    return Ok(Err(FsError::Exists));
                }
                if d.kind == FileKind::Dir {
                    return Ok(Err(FsError::IsDir));
                }
                return Ok(need_inode(w, id, d.ino)?.map(|i| FsReply::Attr(i.attr)));
            }
            let (mode, gid) = inherit_sgid(&dir, FileKind::File, mode & 0o7777, gid);
            let rec = new_inode(vol, FileKind::File, mode, uid, gid, now, parent);
            put(w, Tbl::Inodes, &k_inode(id, rec.attr.ino), &rec)?;
            put(
                w,
                Tbl::Dentries,
                &k_dentry(id, parent, &name),
                &DentryRec {
                    ino: rec.attr.ino,
                    kind: FileKind::File,
                },
            )?;
            touch_dir(w, id, dir, now, 0)?;
            Ok(Ok(FsReply::Attr(rec.attr)))
        }
        FsOp::Mkdir {
            parent,
            name,
            mode,
            uid,
            gid,
        } => {
            ensure!(check_name(&name));
            let dir = tryfs!(need_dir(w, id, parent));
            if lookup(w, id, parent, &name)?.is_some() {
                return Ok(Err(FsError::Exists));
            }
            let (mode, gid) = inherit_sgid(&dir, FileKind::Dir, mode & 0o7777, gid);
            let rec = new_inode(vol, FileKind::Dir, mode, uid, gid, now, parent);
            put(w, Tbl::Inodes, &k_inode(id, rec.attr.ino), &rec)?;
            put(
                w,
                Tbl::Dentries,
                &k_dentry(id, parent, &name),
                &DentryRec {
                    ino: rec.attr.ino,
                    kind: FileKind::Dir,
                },
            )?;
            touch_dir(w, id, dir, now, 1)?;
            Ok(Ok(FsReply::Attr(rec.attr)))
        }
        FsOp::Symlink {
            parent,
            name,
            target,
            uid,
            gid,
        } => {
            ensure!(check_name(&name));
            if target.is_empty() || target.len() > 4096 || target.contains(&0) {
                return Ok(Err(FsError::Invalid(
                    "symlink targets are 1-4096 bytes without NUL".into(),
                )));
            }
            let dir = tryfs!(need_dir(w, id, parent));
            if lookup(w, id, parent, &name)?.is_some() {
                return Ok(Err(FsError::Exists));
            }
            ensure!(check_quota(vol, target.len() as u64));
            let (_, gid) = inherit_sgid(&dir, FileKind::Symlink, 0o777, gid);
            let mut rec = new_inode(vol, FileKind::Symlink, 0o777, uid, gid, now, parent);
            rec.attr.size = target.len() as u64;
            rec.target = target;
            vol.info.used_bytes += rec.attr.size;
            put(w, Tbl::Inodes, &k_inode(id, rec.attr.ino), &rec)?;
            put(
                w,
                Tbl::Dentries,
                &k_dentry(id, parent, &name),
                &DentryRec {
                    ino: rec.attr.ino,
                    kind: FileKind::Symlink,
                },
            )?;
            touch_dir(w, id, dir, now, 0)?;
            Ok(Ok(FsReply::Attr(rec.attr)))
        }
        FsOp::Link {
            ino,
            new_parent,
            new_name,
        } => {
            ensure!(check_name(&new_name));
            let mut rec = tryfs!(need_inode(w, id, ino));
            if rec.attr.kind == FileKind::Dir {
                return Ok(Err(FsError::NotPermitted));
            }
            if rec.attr.nlink == 0 {
                // An unlinked file still open somewhere cannot get a name back (linkat
                // of an O_TMPFILE-like orphan is not supported).
                return Ok(Err(FsError::NotFound));
            }
            let dir = tryfs!(need_dir(w, id, new_parent));
            if lookup(w, id, new_parent, &new_name)?.is_some() {
                return Ok(Err(FsError::Exists));
            }
            rec.attr.nlink += 1;
            rec.attr.ctime_ns = now;
            put(w, Tbl::Inodes, &k_inode(id, ino), &rec)?;
            put(
                w,
                Tbl::Dentries,
                &k_dentry(id, new_parent, &new_name),
                &DentryRec {
                    ino,
                    kind: rec.attr.kind,
                },
            )?;
            touch_dir(w, id, dir, now, 0)?;
            Ok(Ok(FsReply::Attr(rec.attr)))
        }
        FsOp::Unlink { parent, name } => unlink(w, vol, parent, &name, false, now),
        FsOp::UnlinkOpen { parent, name } => unlink(w, vol, parent, &name, true, now),
        FsOp::Forget { ino } => {
            let Some(rec) = inode(w, id, ino)? else {
                return Ok(Ok(FsReply::Done));
            };
            if rec.attr.nlink == 0 && rec.attr.kind == FileKind::File {
                drop_inode(w, vol, rec)?;
            }
            Ok(Ok(FsReply::Done))
        }
        FsOp::Append { ino, blocks, len } => append(w, vol, ino, blocks, len, now),
        FsOp::SetXattr {
            ino,
            name,
            value,
            mode,
        } => {
            ensure!(check_xattr_name(&name));
            if value.len() > MAX_XATTR_VALUE {
                return Ok(Err(FsError::Invalid(format!(
                    "extended attribute values are at most {MAX_XATTR_VALUE} bytes"
                ))));
            }
            let mut rec = tryfs!(need_inode(w, id, ino));
            let key = k_dentry(id, ino, &name);
            let usage = xattr_usage(w, id, ino, &name)?;
            match mode {
                XattrMode::Create if usage.old_value.is_some() => return Ok(Err(FsError::Exists)),
                XattrMode::Replace if usage.old_value.is_none() => {
                    return Ok(Err(FsError::NoXattr))
                }
                _ => {}
            }
            let charge = (name.len() + value.len()) as u64;
            let old_charge = usage.old_value.map_or(0, |v| (name.len() + v) as u64);
            if usage.old_value.is_none() {
                if usage.count >= MAX_XATTRS_PER_INODE {
                    return Ok(Err(FsError::XattrSpace(format!(
                        "an inode holds at most {MAX_XATTRS_PER_INODE} extended attributes; \
                         remove one first"
                    ))));
                }
                if usage.list_bytes + name.len() + 1 > MAX_XATTR_LIST {
                    return Ok(Err(FsError::XattrSpace(format!(
                        "the names of one inode's extended attributes take at most \
                         {MAX_XATTR_LIST} bytes (with a NUL each); remove one first"
                    ))));
                }
            }
            let total = usage.bytes - old_charge + charge;
            if total > MAX_XATTR_BYTES_PER_INODE as u64 {
                return Ok(Err(FsError::XattrSpace(format!(
                    "the names and values of one inode's extended attributes take at most \
                     {MAX_XATTR_BYTES_PER_INODE} bytes, this one would take {total}"
                ))));
            }
            // Attribute bytes are volume data: charged to the quota like file bytes.
            ensure!(check_quota(vol, charge.saturating_sub(old_charge)));
            w.put(Tbl::Xattrs, &key, &value)?;
            vol.info.used_bytes = (vol.info.used_bytes + charge).saturating_sub(old_charge);
            rec.attr.ctime_ns = now;
            put(w, Tbl::Inodes, &k_inode(id, ino), &rec)?;
            Ok(Ok(FsReply::Done))
        }
        FsOp::RemoveXattr { ino, name } => {
            ensure!(check_xattr_name(&name));
            let mut rec = tryfs!(need_inode(w, id, ino));
            let key = k_dentry(id, ino, &name);
            let Some(old) = w.get(Tbl::Xattrs, &key)? else {
                return Ok(Err(FsError::NoXattr));
            };
            w.del(Tbl::Xattrs, &key)?;
            vol.info.used_bytes = vol
                .info
                .used_bytes
                .saturating_sub((name.len() + old.len()) as u64);
            rec.attr.ctime_ns = now;
            put(w, Tbl::Inodes, &k_inode(id, ino), &rec)?;
            Ok(Ok(FsReply::Done))
        }
        FsOp::Rmdir { parent, name } => {
            tryfs!(need_dir(w, id, parent));
            let Some(d) = lookup(w, id, parent, &name)? else {
                return Ok(Err(FsError::NotFound));
            };
            if d.kind != FileKind::Dir {
                return Ok(Err(FsError::NotDir));
            }
            if !dir_is_empty(w, id, d.ino)? {
                return Ok(Err(FsError::NotEmpty));
            }
            let rec = tryfs!(need_inode(w, id, d.ino));
            unlink_inode(w, vol, parent, &name, rec, false, now)?;
            if let Some(dir) = inode(w, id, parent)? {
                touch_dir(w, id, dir, now, 0)?;
            }
            Ok(Ok(FsReply::Done))
        }
        FsOp::Rename {
            parent,
            name,
            new_parent,
            new_name,
            no_replace,
        } => rename(
            w, vol, parent, name, new_parent, new_name, no_replace, None, now,
        ),
        FsOp::RenameHeld {
            parent,
            name,
            new_parent,
            new_name,
            no_replace,
            session,
        } => rename(
            w,
            vol,
            parent,
            name,
            new_parent,
            new_name,
            no_replace,
            Some(session),
            now,
        ),
        FsOp::SetAttr { ino, set } => set_attr(w, vol, ino, set, now),
        FsOp::Write {
            ino,
            slices,
            min_size,
        } => write_slices(w, vol, ino, slices, min_size, now),
        FsOp::CompactChunk {
            ino,
            chunk,
            expect,
            slices,
        } => compact_chunk(w, vol, ino, chunk, expect, slices),
        FsOp::SessionOpen {
            session,
            ttl_ms,
            info,
        } => {
            if crate::requests::ended(w, id, session)? {
                // Its stored replies are gone: reopening it would let a late retry of one
                // of its requests be applied a second time.
                return Ok(Err(FsError::SessionExpired(session)));
            }
            let rec = SessionRec {
                expires_ns: session_expiry(now, ttl_ms),
                info,
            };
            put(w, Tbl::Sys, &k_session(id, session), &rec)?;
            Ok(Ok(FsReply::Done))
        }
        FsOp::SessionRenew { session, ttl_ms } => {
            let Some(mut rec) = get::<SessionRec>(w, Tbl::Sys, &k_session(id, session))? else {
                return Ok(Err(FsError::NotFound));
            };
            rec.expires_ns = session_expiry(now, ttl_ms);
            put(w, Tbl::Sys, &k_session(id, session), &rec)?;
            Ok(Ok(FsReply::Done))
        }
        FsOp::SessionClose { session } => {
            close_session(w, vol, session, now)?;
            Ok(Ok(FsReply::Done))
        }
        FsOp::UnlinkHeld {
            parent,
            name,
            session,
        } => {
            let held = match lookup(w, id, parent, &name)? {
                Some(d) if d.kind == FileKind::File => Some(d.ino),
                _ => None,
            };
            let res = unlink(w, vol, parent, &name, true, now)?;
            if let (Ok(_), Some(ino)) = (&res, held) {
                // Still there with no link: it became an orphan this session holds.
                if inode(w, id, ino)?.is_some_and(|r| r.attr.nlink == 0) {
                    w.put(Tbl::Sys, &k_held(id, session, ino), &[])?;
                }
            }
            Ok(res)
        }
        FsOp::Release { ino, session } => {
            w.del(Tbl::Sys, &k_held(id, session, ino))?;
            release_orphan(w, vol, ino)?;
            Ok(Ok(FsReply::Done))
        }
        other => Ok(Err(FsError::Invalid(format!(
            "{other:?} is not a write operation"
        )))),
    }
}

/// Renames `parent/name` to `new_parent/new_name`, replacing what is there (unless
/// `no_replace`). With `held`, a replaced file that loses its last link stays as an
/// orphan held by that session instead of being dropped.
#[allow(clippy::too_many_arguments)]
fn rename(
    w: &impl Writer,
    vol: &mut VolumeRec,
    parent: Ino,
    name: Vec<u8>,
    new_parent: Ino,
    new_name: Vec<u8>,
    no_replace: bool,
    held: Option<u64>,
    now: i64,
) -> Result<FsResult> {
    let id = vol.info.id;
    ensure!(check_name(&new_name));
    tryfs!(need_dir(w, id, parent));
    tryfs!(need_dir(w, id, new_parent));
    let Some(src) = lookup(w, id, parent, &name)? else {
        return Ok(Err(FsError::NotFound));
    };
    let dst = lookup(w, id, new_parent, &new_name)?;
    if let Some(d) = dst {
        if d.ino == src.ino {
            return Ok(Ok(FsReply::Done));
        }
        if no_replace {
            return Ok(Err(FsError::Exists));
        }
        match (src.kind == FileKind::Dir, d.kind == FileKind::Dir) {
            (true, false) => return Ok(Err(FsError::NotDir)),
            (false, true) => return Ok(Err(FsError::IsDir)),
            (true, true) if !dir_is_empty(w, id, d.ino)? => return Ok(Err(FsError::NotEmpty)),
            _ => {}
        }
    }
    if src.kind == FileKind::Dir && parent != new_parent {
        // Refuse moving a directory below itself: walk up from the new parent.
        let mut cur = new_parent;
        loop {
            if cur == src.ino {
                return Ok(Err(FsError::Loop));
            }
            if cur == ringfs_core::ids::ROOT_INO {
                break;
            }
            cur = tryfs!(need_inode(w, id, cur)).parent;
        }
    }
    // All checks passed: mutate.
    if let Some(d) = dst {
        let rec = tryfs!(need_inode(w, id, d.ino));
        let replaced = rec.attr.ino;
        unlink_inode(w, vol, new_parent, &new_name, rec, held.is_some(), now)?;
        if let Some(session) = held {
            // The replaced file became an orphan the session holds open.
            if inode(w, id, replaced)?.is_some_and(|r| r.attr.nlink == 0) {
                w.put(Tbl::Sys, &k_held(id, session, replaced), &[])?;
            }
        }
    }
    w.del(Tbl::Dentries, &k_dentry(id, parent, &name))?;
    put(w, Tbl::Dentries, &k_dentry(id, new_parent, &new_name), &src)?;
    let mut rec = tryfs!(need_inode(w, id, src.ino));
    rec.attr.ctime_ns = now;
    let moved_dir = src.kind == FileKind::Dir && parent != new_parent;
    if src.kind == FileKind::Dir {
        rec.parent = new_parent;
    }
    put(w, Tbl::Inodes, &k_inode(id, src.ino), &rec)?;
    let old_dir = tryfs!(need_inode(w, id, parent));
    touch_dir(w, id, old_dir, now, if moved_dir { -1 } else { 0 })?;
    if parent != new_parent {
        let new_dir = tryfs!(need_inode(w, id, new_parent));
        touch_dir(w, id, new_dir, now, if moved_dir { 1 } else { 0 })?;
    }
    Ok(Ok(FsReply::Done))
}

/// BSD group semantics of a set-group-ID directory: what is created in it gets the
/// directory's group, and subdirectories inherit the bit. (The kernel already strips
/// S_ISGID from a new file whose creator is not in that group.)
fn inherit_sgid(dir: &InodeRec, kind: FileKind, mode: u32, gid: u32) -> (u32, u32) {
    const S_ISGID: u32 = 0o2000;
    if dir.attr.mode & S_ISGID == 0 {
        return (mode, gid);
    }
    let mode = if kind == FileKind::Dir {
        mode | S_ISGID
    } else {
        mode
    };
    (mode, dir.attr.gid)
}

fn new_inode(
    vol: &mut VolumeRec,
    kind: FileKind,
    mode: u32,
    uid: u32,
    gid: u32,
    now: i64,
    parent: Ino,
) -> InodeRec {
    let ino = vol.next_ino;
    vol.next_ino += 1;
    vol.info.used_inodes += 1;
    InodeRec {
        attr: Attr {
            ino,
            kind,
            mode,
            uid,
            gid,
            size: 0,
            nlink: if kind == FileKind::Dir { 2 } else { 1 },
            atime_ns: now,
            mtime_ns: now,
            ctime_ns: now,
        },
        target: Vec::new(),
        parent,
    }
}

fn set_attr(
    w: &impl Writer,
    vol: &mut VolumeRec,
    ino: Ino,
    set: SetAttr,
    now: i64,
) -> Result<FsResult> {
    let id = vol.info.id;
    let mut rec = match need_inode(w, id, ino)? {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    if let Some(size) = set.size {
        if rec.attr.kind == FileKind::Dir {
            return Ok(Err(FsError::IsDir));
        }
        if rec.attr.kind != FileKind::File {
            return Ok(Err(FsError::Invalid(
                "only regular files can be truncated".into(),
            )));
        }
        if size > MAX_FILE_SIZE {
            return Ok(Err(FsError::Invalid(format!(
                "files are at most {MAX_FILE_SIZE} bytes"
            ))));
        }
        if let Err(e) = check_quota(vol, size.saturating_sub(rec.attr.size)) {
            return Ok(Err(e));
        }
        set_size(w, id, ino, rec.attr.size, size)?;
        vol.info.used_bytes = vol.info.used_bytes - rec.attr.size.min(vol.info.used_bytes) + size;
        rec.attr.size = size;
        rec.attr.mtime_ns = now;
    }
    if let Some(m) = set.mode {
        rec.attr.mode = m & 0o7777;
    }
    if let Some(u) = set.uid {
        rec.attr.uid = u;
    }
    if let Some(g) = set.gid {
        rec.attr.gid = g;
    }
    if let Some(t) = set.atime_ns {
        rec.attr.atime_ns = t;
    }
    if let Some(t) = set.mtime_ns {
        rec.attr.mtime_ns = t;
    }
    rec.attr.ctime_ns = now;
    put(w, Tbl::Inodes, &k_inode(id, ino), &rec)?;
    Ok(Ok(FsReply::Attr(rec.attr)))
}

fn write_slices(
    w: &impl Writer,
    vol: &mut VolumeRec,
    ino: Ino,
    slices: Vec<ChunkSlice>,
    min_size: u64,
    now: i64,
) -> Result<FsResult> {
    let id = vol.info.id;
    let mut rec = match need_inode(w, id, ino)? {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    match rec.attr.kind {
        FileKind::File => {}
        FileKind::Dir => return Ok(Err(FsError::IsDir)),
        FileKind::Symlink => {
            return Ok(Err(FsError::Invalid(
                "cannot write to a symbolic link".into(),
            )))
        }
    }
    let mut end = min_size;
    for cs in &slices {
        if !cs.slice.is_valid() {
            return Ok(Err(FsError::Invalid(format!(
                "malformed slice for chunk {} (pos {}, len {}, skip {}, {} blocks)",
                cs.chunk,
                cs.slice.pos,
                cs.slice.len,
                cs.slice.skip,
                cs.slice.blocks.len()
            ))));
        }
        let slice_end = cs
            .chunk
            .saturating_mul(CHUNK_SIZE)
            .saturating_add(cs.slice.end());
        end = end.max(slice_end);
    }
    if end > MAX_FILE_SIZE {
        return Ok(Err(FsError::Invalid(format!(
            "files are at most {MAX_FILE_SIZE} bytes"
        ))));
    }
    let new_size = rec.attr.size.max(end);
    if let Err(e) = check_quota(vol, new_size - rec.attr.size) {
        return Ok(Err(e));
    }
    // Group by chunk, preserving order, and check slice-count limits before writing.
    let mut by_chunk: std::collections::BTreeMap<u64, Vec<Slice>> =
        std::collections::BTreeMap::new();
    for cs in slices {
        by_chunk.entry(cs.chunk).or_default().push(cs.slice);
    }
    let mut updates = Vec::with_capacity(by_chunk.len());
    for (chunk, new) in by_chunk {
        let key = k_chunk(id, ino, chunk);
        let list: Vec<Slice> = get(w, Tbl::Chunks, &key)?.unwrap_or_default();
        if list.len() + new.len() > MAX_SLICES_PER_CHUNK {
            return Ok(Err(FsError::Invalid(format!(
                "chunk {chunk} of inode {ino} {}; retry after compaction",
                ringfs_core::compact::TOO_MANY_SLICES
            ))));
        }
        updates.push((key, list, new));
    }
    for (key, mut list, new) in updates {
        incref_slices(w, &new)?;
        list.extend(new);
        put(w, Tbl::Chunks, &key, &list)?;
    }
    vol.info.used_bytes += new_size - rec.attr.size;
    rec.attr.size = new_size;
    rec.attr.mtime_ns = now;
    rec.attr.ctime_ns = now;
    put(w, Tbl::Inodes, &k_inode(id, ino), &rec)?;
    Ok(Ok(FsReply::Attr(rec.attr)))
}

/// [`FsOp::CompactChunk`]: swaps the slices `expect` for `slices` only if the chunk still
/// starts with exactly `expect`.
/// New blocks are referenced before the old ones are released, so a block shared by
/// both lists never drops to zero references in between.
fn compact_chunk(
    w: &impl Writer,
    vol: &mut VolumeRec,
    ino: Ino,
    chunk: u64,
    expect: Vec<Slice>,
    slices: Vec<Slice>,
) -> Result<FsResult> {
    let id = vol.info.id;
    let rec = match need_inode(w, id, ino)? {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    if rec.attr.kind != FileKind::File {
        return Ok(Err(FsError::Invalid(
            "only regular files have chunks".into(),
        )));
    }
    if slices.len() > expect.len() || slices.iter().any(|s| !s.is_valid()) {
        return Ok(Err(FsError::Invalid(
            "a compaction must bring fewer, well-formed slices".into(),
        )));
    }
    let key = k_chunk(id, ino, chunk);
    let mut current: Vec<Slice> = get(w, Tbl::Chunks, &key)?.unwrap_or_default();
    // Slices appended since the read (writes, truncation masks) lie on top of the
    // content that was compacted, so they stay on top of its replacement; anything
    // else (another compaction, chunks dropped and rewritten) fails the swap.
    if expect.is_empty() || !current.starts_with(&expect) {
        return Ok(Ok(FsReply::Compacted { applied: false }));
    }
    let newer = current.split_off(expect.len());
    incref_slices(w, &slices)?;
    let mut list = slices;
    list.extend(newer);
    if list.is_empty() {
        w.del(Tbl::Chunks, &key)?;
    } else {
        put(w, Tbl::Chunks, &key, &list)?;
    }
    decref_slices(w, &current)?;
    Ok(Ok(FsReply::Compacted { applied: true }))
}

#[cfg(test)]
mod tests {
    use crate::testing::{block, Sm};
    use ringfs_core::fs::{
        FsError, FsOp, FsReply, XattrMode, MAX_XATTRS_PER_INODE, MAX_XATTR_BYTES_PER_INODE,
        MAX_XATTR_LIST, MAX_XATTR_VALUE,
    };
    use ringfs_core::{Ino, VolumeId};

    fn set(sm: &Sm, v: VolumeId, ino: Ino, name: &[u8], len: usize) -> Result<(), FsError> {
        sm.fs(
            v,
            FsOp::SetXattr {
                ino,
                name: name.to_vec(),
                value: vec![7; len],
                mode: XattrMode::Any,
            },
        )
        .map(|_| ())
    }

    fn used(sm: &Sm, v: VolumeId) -> u64 {
        match sm.read(v, FsOp::StatFs) {
            Ok(FsReply::StatFs(s)) => s.used_bytes,
            other => panic!("statfs: {other:?}"),
        }
    }

    /// Extended attributes are charged to the quota (names and values), credited back
    /// when replaced by something smaller, removed, or dropped with their inode; a set
    /// that does not fit the quota is refused with EDQUOT and changes nothing.
    #[test]
    fn xattrs_are_charged_to_the_quota() {
        let sm = Sm::new();
        let v = sm.volume("v", 10_000);
        let ino = sm.file(v, "f", block(1, 1000));
        assert_eq!(used(&sm, v), 1000);
        set(&sm, v, ino, b"user.a", 994).expect("set");
        assert_eq!(used(&sm, v), 2000, "name (6) + value (994)");
        set(&sm, v, ino, b"user.a", 94).expect("replace smaller");
        assert_eq!(used(&sm, v), 1100);
        let over = set(&sm, v, ino, b"user.b", 9000);
        assert!(
            matches!(over, Err(FsError::QuotaExceeded { .. })),
            "{over:?}"
        );
        assert_eq!(over.unwrap_err().errno(), 122, "EDQUOT");
        assert_eq!(used(&sm, v), 1100, "a refused set changes nothing");
        let r = sm.fs(
            v,
            FsOp::RemoveXattr {
                ino,
                name: b"user.a".to_vec(),
            },
        );
        assert_eq!(r, Ok(FsReply::Done));
        assert_eq!(used(&sm, v), 1000);
        set(&sm, v, ino, b"user.c", 500).expect("set");
        let r = sm.fs(
            v,
            FsOp::Unlink {
                parent: ringfs_core::ids::ROOT_INO,
                name: b"f".to_vec(),
            },
        );
        assert_eq!(r, Ok(FsReply::Done));
        assert_eq!(
            used(&sm, v),
            0,
            "the inode's data and attributes are credited"
        );
    }

    /// Per-inode bounds: attribute count, the name list (what listxattr returns) and all
    /// names and values together; each refused with ENOSPC, and nothing changes.
    #[test]
    fn xattr_bounds_per_inode() {
        let sm = Sm::new();
        let v = sm.volume("v", 1 << 40);
        let ino = sm.file(v, "f", block(1, 10));
        for i in 0..MAX_XATTRS_PER_INODE {
            set(&sm, v, ino, format!("user.{i}").as_bytes(), 0).expect("set");
        }
        let before = used(&sm, v);
        let r = set(&sm, v, ino, b"user.one-more", 0);
        assert!(matches!(r, Err(FsError::XattrSpace(_))), "{r:?}");
        assert_eq!(r.unwrap_err().errno(), 28, "ENOSPC");
        assert_eq!(used(&sm, v), before);
        // Replacing an existing attribute is not a new one.
        set(&sm, v, ino, b"user.0", 10).expect("replace at the count bound");

        let ino = sm.file(v, "g", block(2, 10));
        let long = |i: usize| {
            let mut n = format!("user.{i:04}-").into_bytes();
            n.resize(255, b'x');
            n
        };
        let fit = MAX_XATTR_LIST / 256;
        for i in 0..fit {
            set(&sm, v, ino, &long(i), 0).expect("set");
        }
        let r = set(&sm, v, ino, &long(fit), 0);
        assert!(matches!(r, Err(FsError::XattrSpace(_))), "name list: {r:?}");

        let ino = sm.file(v, "h", block(3, 10));
        let per = MAX_XATTR_VALUE;
        let n = MAX_XATTR_BYTES_PER_INODE / (per + 8);
        for i in 0..n {
            set(&sm, v, ino, format!("user.{i:03}").as_bytes(), per).expect("set");
        }
        let r = set(&sm, v, ino, b"user.big", per);
        assert!(
            matches!(r, Err(FsError::XattrSpace(_))),
            "total bytes: {r:?}"
        );
    }
}
