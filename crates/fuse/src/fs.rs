//! The [`fuser::Filesystem`] over a ringfs volume.
//!
//! FUSE inode numbers are ringfs inode numbers (the root is 1 in both), so no mapping
//! table exists and nothing leaks when the kernel forgets inodes.
//!
//! Writes are buffered per *inode* (not per handle) in this mount, so every handle of
//! the mount sees every other handle's writes, as on a local disk. Buffered data is
//! uploaded as immutable blocks and committed in one Raft command on flush (each
//! close), fsync, release, before a truncate, or when [`MountOptions::flush_threshold`]
//! bytes are dirty. Across mounts the promise is close-to-open: a file closed on one
//! mount is fully visible to an open on another, because close commits and open drops
//! the kernel's cached attributes and pages of the file.
//!
//! Handles opened with `O_APPEND` buffer into a separate queue committed with
//! [`FsOp::Append`], which the state machine places at the file size *at commit*, so
//! appenders on different mounts never overwrite each other.

use crate::extents::Extents;
use crate::io;
use crate::MountOptions;
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, Notifier, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};
use ringfs_client::{ClientError, Vol};
use ringfs_core::compact::COMPACT_THRESHOLD;
use ringfs_core::fs::{Attr, DirEntry, FileKind, FsOp, FsReply, SetAttr, XattrMode, MAX_READDIR};
use ringfs_core::slice::CHUNK_SIZE;
use ringfs_core::Ino;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::runtime::Handle;

/// Separate dirty extents that trigger a commit: each commit then adds at most about this
/// many slices to a chunk, well below the state machine's limit per chunk (4096), which a
/// writer meets only after several commits and answers by compacting (see
/// `io::commit_extents`). Without it, scattered small writes buffered up to the byte
/// threshold could make one commit the state machine can never accept.
const MAX_DIRTY_EXTENTS: usize = 1024;

/// Bound on the per-chunk commit counters (compaction) and clean-file versions
/// (keep_cache) kept; past it they are forgotten, which only costs an optimisation.
const MAX_COMMIT_COUNTERS: usize = 100_000;
/// Longest file name component (as in the state machine).
const NAME_MAX: usize = 255;
/// File capabilities are not supported: answering this xattr locally saves a metadata
/// round trip on every write (the kernel asks for it before each one).
const XATTR_CAPS: &[u8] = b"security.capability";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The errno for a failed client call.
pub fn errno(e: &ClientError) -> Errno {
    match e {
        ClientError::NotCommitted(inner) => errno(inner),
        ClientError::Fs(f) => Errno::from_i32(f.errno()),
        ClientError::Invalid(_) => Errno::EINVAL,
        ClientError::Rejected(s) => match s.code() {
            tonic::Code::InvalidArgument => Errno::EINVAL,
            tonic::Code::NotFound => Errno::ENOENT,
            tonic::Code::ResourceExhausted => Errno::ENOSPC,
            tonic::Code::PermissionDenied => Errno::EACCES,
            _ => Errno::EIO,
        },
        ClientError::Unavailable(_)
        | ClientError::OutcomeUnknown(_)
        | ClientError::Blocks(_)
        | ClientError::Protocol(_)
        | ClientError::StaleLayout(_) => Errno::EIO,
    }
}

/// The errno of an operation on an open file whose inode is gone: ESTALE, not ENOENT.
fn stale(e: Errno) -> Errno {
    if e == Errno::ENOENT {
        Errno::ESTALE
    } else {
        e
    }
}

/// Buffered state of one inode in this mount.
#[derive(Default)]
struct FileState {
    dirty: Extents,
    /// Bytes written through `O_APPEND` handles, placed at commit time.
    append: Vec<u8>,
    /// Open handles of this mount.
    open: u32,
    /// Unlinked while open: the state machine keeps it until [`FsOp::Forget`].
    orphan: bool,
    /// A flush triggered by a write failed and lost buffered data; the next flush,
    /// fsync or close reports it (as a local file system reports writeback errors).
    error: Option<Errno>,
    /// Slices read while open; see [`io::ChunkCache`].
    chunks: io::ChunkCache,
    /// The file's version when first opened (None if it could not be read).
    opened_at: Option<Version>,
    /// Written through this mount since the first open.
    wrote: bool,
    /// Where the last read ended (see [`SEQUENTIAL_WINDOW`]).
    read_end: u64,
}

/// A read starting this close to where the previous one ended counts as sequential.
/// The kernel's readahead sends several reads at once, which arrive out of order.
const SEQUENTIAL_WINDOW: u64 = 2 << 20;

/// What identifies a file's content from outside: size, mtime and ctime (every commit
/// and every attribute change moves ctime).
type Version = (u64, i64, i64);

fn version(a: &Attr) -> Version {
    (a.size, a.mtime_ns, a.ctime_ns)
}

impl FileState {
    fn is_idle(&self) -> bool {
        self.open == 0 && self.dirty.is_empty() && self.append.is_empty()
    }
    fn pending(&self) -> usize {
        self.dirty.bytes() + self.append.len()
    }
}

struct OpenFile {
    /// Opened with `O_APPEND`: writes go to the append queue, ignoring their offset.
    append: bool,
}

pub struct RingFs {
    vol: Vol,
    rt: Handle,
    opts: MountOptions,
    files: Mutex<HashMap<Ino, Arc<Mutex<FileState>>>>,
    handles: Mutex<HashMap<u64, OpenFile>>,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    next_fh: AtomicU64,
    blocks: Arc<io::BlockCache>,
    /// Commits per (inode, chunk) since its last compaction check.
    commits: Mutex<HashMap<(Ino, u64), u32>>,
    /// Chunks being compacted now (one compaction per chunk at a time).
    compacting: Arc<Mutex<HashSet<(Ino, u64)>>>,
    /// Files closed by this mount without writing, with their version at open: the
    /// kernel's pages of such a file are current as long as the version is unchanged.
    clean: Mutex<HashMap<Ino, Version>>,
    /// Set once the session exists; used to drop stale kernel caches at open.
    pub(crate) notifier: Arc<OnceLock<Notifier>>,
    /// Bytes buffered by all files (see [`MountOptions::write_budget`]); changed only
    /// through [`RingFs::account`], next to every change of a file's buffer.
    buffered: AtomicUsize,
}

fn to_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn from_time(t: TimeOrNow) -> i64 {
    let t = match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    };
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos().min(i64::MAX as u128) as i64,
        Err(e) => -(e.duration().as_nanos().min(i64::MAX as u128) as i64),
    }
}

fn kind(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: to_time(a.atime_ns),
        mtime: to_time(a.mtime_ns),
        ctime: to_time(a.ctime_ns),
        crtime: to_time(a.ctime_ns),
        kind: kind(a.kind),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn check_name(name: &OsStr) -> Result<Vec<u8>, Errno> {
    let b = name.as_bytes();
    if b.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(b.to_vec())
}

fn want_attr(r: FsReply) -> Result<Attr, Errno> {
    match r {
        FsReply::Attr(a) => Ok(a),
        _ => Err(Errno::EIO),
    }
}

impl RingFs {
    /// A file system for `vol`, with a client session registered in the cluster (fails
    /// when the cluster cannot be reached). `info` names the mount for operators.
    pub fn new(vol: Vol, rt: Handle, opts: MountOptions, info: String) -> std::io::Result<RingFs> {
        let blocks = Arc::new(io::BlockCache::new(opts.block_cache_bytes));
        // The mount's session: its mutating ops are applied exactly once, and files it
        // unlinks while open are held under it. Registered now, so a mount fails at once
        // when the cluster cannot be reached; renewed in the background from then on.
        let vol = vol.with_session(opts.session_ttl, info);
        let (session, cluster) = (vol.session.clone(), vol.cluster.clone());
        // On a thread of its own: the caller may be running inside the runtime.
        std::thread::scope(|s| {
            s.spawn(|| rt.block_on(session.ensure(&cluster)))
                .join()
                .map_err(|_| std::io::Error::other("registering the mount's session panicked"))?
                .map_err(|e| {
                    std::io::Error::other(format!("cannot register the mount's session: {e}"))
                })
        })?;
        Ok(RingFs {
            vol,
            rt,
            opts,
            files: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            buffered: AtomicUsize::new(0),
            blocks,
            commits: Mutex::new(HashMap::new()),
            compacting: Arc::new(Mutex::new(HashSet::new())),
            clean: Mutex::new(HashMap::new()),
            notifier: Arc::new(OnceLock::new()),
        })
    }

    fn op(&self, op: FsOp) -> Result<FsReply, Errno> {
        self.rt.block_on(self.vol.fs(op)).map_err(|e| {
            if !matches!(e, ClientError::Fs(_)) {
                tracing::warn!(error = %e, "metadata call failed");
            }
            errno(&e)
        })
    }

    fn file(&self, ino: Ino) -> Arc<Mutex<FileState>> {
        lock(&self.files).entry(ino).or_default().clone()
    }

    fn file_if(&self, ino: Ino) -> Option<Arc<Mutex<FileState>>> {
        lock(&self.files).get(&ino).cloned()
    }

    /// Drops the state of `ino` when nothing refers to it any more.
    fn reap(&self, ino: Ino) {
        let mut files = lock(&self.files);
        if let Some(f) = files.get(&ino) {
            if lock(f).is_idle() {
                files.remove(&ino);
            }
        }
    }

    /// Commits everything buffered for `ino`, positional writes before appends (a
    /// write switches between the two kinds only after flushing the other).
    /// Commits a file's buffered writes. A file that vanished meanwhile (another mount
    /// unlinked it while it was open here: only the unlinking mount's own open handles
    /// keep an unlinked file alive) fails with ESTALE, as on NFS.
    fn flush_state(&self, ino: Ino, st: &mut FileState) -> Result<(), Errno> {
        let before = st.pending();
        let res = self.flush_state_inner(ino, st).map_err(stale);
        self.account(before, st.pending());
        res
    }

    /// Moves the mount's buffered total from a file's `before` to its `after`.
    fn account(&self, before: usize, after: usize) {
        if after >= before {
            self.buffered.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.buffered.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    fn flush_state_inner(&self, ino: Ino, st: &mut FileState) -> Result<(), Errno> {
        if !st.dirty.is_empty() || !st.append.is_empty() {
            st.chunks.clear();
        }
        // A failed commit keeps what it could not commit buffered for the next flush,
        // fsync or close, and records the error for the next fsync or close to report
        // (Linux's write-back error semantics), so nothing `write()` accepted is dropped
        // silently.
        if !st.dirty.is_empty() {
            let ext = st.dirty.take();
            let res = self.rt.block_on(io::commit_extents(
                &self.vol,
                &self.blocks,
                &self.compacting,
                ino,
                &ext,
            ));
            if let Err(e) = res {
                tracing::warn!(ino, error = %e, "committing buffered writes failed; they stay buffered");
                // Positional data: committing it again writes the same bytes at the same
                // offsets, so it is kept even when this commit's outcome is unknown.
                for (off, d) in &ext {
                    st.dirty.write(*off, d);
                }
                let e = errno(&e);
                st.error = Some(e);
                return Err(e);
            }
            for (off, d) in &ext {
                self.committed(ino, *off, *off + d.len() as u64);
            }
        }
        if !st.append.is_empty() {
            let data = bytes::Bytes::from(std::mem::take(&mut st.append));
            let len = data.len() as u64;
            match self
                .rt
                .block_on(io::commit_append(&self.vol, ino, data.clone()))
            {
                Ok(attr) => self.committed(ino, attr.size.saturating_sub(len), attr.size),
                Err(e) => {
                    if e.not_applied() {
                        tracing::warn!(ino, error = %e, "committing appends failed; they stay buffered");
                        st.append = data.to_vec();
                    } else {
                        // Appending again could add the data twice: the commit may have
                        // happened. The error says the data may be missing.
                        tracing::warn!(ino, error = %e, bytes = len, "append outcome unknown; not retried");
                    }
                    let e = errno(&e);
                    st.error = Some(e);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Counts a commit into `[a, b)` of `ino`; every [`COMPACT_THRESHOLD`] commits into
    /// one chunk, that chunk is checked and compacted in the background.
    fn committed(&self, ino: Ino, a: u64, b: u64) {
        if b <= a {
            return;
        }
        for chunk in a / CHUNK_SIZE..=(b - 1) / CHUNK_SIZE {
            let due = {
                let mut commits = lock(&self.commits);
                if commits.len() > MAX_COMMIT_COUNTERS {
                    // Forgetting counts only delays compaction; the state machine's
                    // slice limit still holds.
                    commits.clear();
                }
                let n = commits.entry((ino, chunk)).or_insert(0);
                *n += 1;
                if *n as usize >= COMPACT_THRESHOLD {
                    commits.remove(&(ino, chunk));
                    true
                } else {
                    false
                }
            };
            if due && lock(&self.compacting).insert((ino, chunk)) {
                let (vol, blocks, compacting) = (
                    self.vol.clone(),
                    self.blocks.clone(),
                    self.compacting.clone(),
                );
                self.rt.spawn(async move {
                    match io::compact_chunk(&vol, &blocks, ino, chunk).await {
                        Ok(true) => tracing::debug!(ino, chunk, "chunk compacted"),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(ino, chunk, error = %e, "compaction failed"),
                    }
                    lock(&compacting).remove(&(ino, chunk));
                });
            }
        }
    }

    /// Flushes and reports (once) an earlier write-back failure.
    fn flush_ino(&self, ino: Ino) -> Result<(), Errno> {
        let Some(f) = self.file_if(ino) else {
            return Ok(());
        };
        let mut st = lock(&f);
        let res = self.flush_state(ino, &mut st);
        match st.error.take() {
            Some(e) => Err(e),
            None => res,
        }
    }

    /// The attributes as this mount sees them: committed plus buffered data.
    fn local_attr(&self, mut a: Attr) -> Attr {
        if a.kind == FileKind::File {
            if let Some(f) = self.file_if(a.ino) {
                let st = lock(&f);
                a.size = a.size.max(st.dirty.end()) + st.append.len() as u64;
            }
        }
        a
    }

    fn getattr_ino(&self, ino: Ino) -> Result<Attr, Errno> {
        let a = want_attr(self.op(FsOp::GetAttr { ino })?)?;
        Ok(self.local_attr(a))
    }

    fn entry(&self, reply: ReplyEntry, r: Result<FsReply, Errno>) {
        match r.and_then(want_attr) {
            Ok(a) => {
                let a = self.local_attr(a);
                reply.entry(&self.opts.entry_ttl, &file_attr(&a), Generation(0))
            }
            Err(e) => reply.error(e),
        }
    }

    /// Registers an open handle. `known` is the file's attributes if the caller just
    /// read them. Returns the handle and whether the kernel may keep its cached pages.
    fn new_handle(&self, ino: Ino, flags: i32, known: Option<&Attr>) -> (u64, bool) {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(
            fh,
            OpenFile {
                append: flags & libc::O_APPEND != 0,
            },
        );
        let f = self.file(ino);
        let first = {
            let mut st = lock(&f);
            st.open += 1;
            if st.open == 1 {
                st.chunks.clear();
            }
            st.open == 1
        };
        let mut keep = false;
        if first {
            // Close-to-open: the cached pages survive only if the file is exactly as it
            // was when this mount last had it open, unwritten (keep_cache).
            let now = match known {
                Some(a) => Some(version(a)),
                None => self
                    .op(FsOp::GetAttr { ino })
                    .and_then(want_attr)
                    .ok()
                    .map(|a| version(&a)),
            };
            let before = lock(&self.clean).remove(&ino);
            keep = now.is_some() && before == now;
            {
                let mut st = lock(&f);
                st.opened_at = now;
                st.wrote = false;
            }
            if !keep {
                // Forget cached attributes and pages so the size and data committed by
                // other mounts since the kernel cached them are seen.
                if let Some(n) = self.notifier.get() {
                    let _ = n.inval_inode(INodeNo(ino), 0, 0);
                }
            }
        }
        (fh, keep)
    }

    fn read_dir_all(&self, ino: Ino) -> Result<Vec<DirEntry>, Errno> {
        let mut out = Vec::new();
        let mut after = Vec::new();
        loop {
            match self.op(FsOp::ReadDir {
                ino,
                after: after.clone(),
                limit: MAX_READDIR,
            })? {
                FsReply::Entries { entries, more } => {
                    if let Some(last) = entries.last() {
                        after = last.name.clone();
                    }
                    let done = !more || entries.is_empty();
                    out.extend(entries);
                    if done {
                        return Ok(out);
                    }
                }
                _ => return Err(Errno::EIO),
            }
        }
    }

    /// True when some file of this mount is open (unlink then needs a lookup).
    fn any_open(&self) -> bool {
        lock(&self.files).values().any(|f| lock(f).open > 0)
    }
}

impl fuser::Filesystem for RingFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(self.opts.max_write);
        let _ = config.set_max_background(64);
        if let Err(max) = config.set_max_readahead(self.opts.max_readahead) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_PARALLEL_DIROPS);
        Ok(())
    }

    fn destroy(&mut self) {
        let inos: Vec<Ino> = lock(&self.files).keys().copied().collect();
        for ino in inos {
            if let Err(e) = self.flush_ino(ino) {
                tracing::warn!(ino, error = ?e, "unflushed data at unmount");
            }
        }
        // Files still open at unmount are closed now: their orphans go with the session.
        if let Err(e) = self.rt.block_on(self.vol.close_session()) {
            tracing::warn!(error = %e, "ending the mount's session failed; it expires by itself");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = match check_name(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let r = self.op(FsOp::Lookup {
            parent: parent.0,
            name,
        });
        self.entry(reply, r)
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.getattr_ino(ino.0) {
            Ok(a) => reply.attr(&self.opts.attr_ttl, &file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let ino = ino.0;
        let set = SetAttr {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime_ns: atime.map(from_time),
            mtime_ns: mtime.map(from_time),
        };
        // Hold the file's buffer across the truncate so no write slips in between.
        let f = size.map(|_| self.file(ino));
        let mut guard = f.as_ref().map(|f| lock(f));
        if let Some(st) = guard.as_deref_mut() {
            if let Err(e) = self.flush_state(ino, st) {
                return reply.error(e);
            }
        }
        let r = self.op(FsOp::SetAttr { ino, set }).and_then(want_attr);
        if let Some(st) = guard.as_deref_mut() {
            st.chunks.clear();
        }
        drop(guard);
        if f.is_some() {
            self.reap(ino);
        }
        match r {
            Ok(a) => reply.attr(&self.opts.attr_ttl, &file_attr(&self.local_attr(a))),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.op(FsOp::ReadLink { ino: ino.0 }) {
            Ok(FsReply::Link(t)) => reply.data(&t),
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG && mode & libc::S_IFMT != 0 {
            // Device nodes, FIFOs and sockets are not stored by ringfs.
            return reply.error(Errno::EPERM);
        }
        let name = match check_name(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let r = self.op(FsOp::Create {
            parent: parent.0,
            name,
            mode: mode & 0o7777,
            uid: req.uid(),
            gid: req.gid(),
            exclusive: true,
        });
        self.entry(reply, r)
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let name = match check_name(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let r = self.op(FsOp::Mkdir {
            parent: parent.0,
            name,
            mode: mode & 0o7777,
            uid: req.uid(),
            gid: req.gid(),
        });
        self.entry(reply, r)
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match check_name(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let parent = parent.0;
        // A file open in this mount must outlive its last name until its last close.
        let open_target = if self.any_open() {
            match self.op(FsOp::Lookup {
                parent,
                name: name.clone(),
            }) {
                Ok(FsReply::Attr(a)) => self
                    .file_if(a.ino)
                    .filter(|f| lock(f).open > 0)
                    .map(|f| (a.ino, f)),
                Ok(_) => return reply.error(Errno::EIO),
                Err(e) => return reply.error(e),
            }
        } else {
            None
        };
        match open_target {
            Some((_, f)) => {
                let mut st = lock(&f);
                match self.op(FsOp::UnlinkHeld {
                    parent,
                    name,
                    session: self.vol.session.id(),
                }) {
                    Ok(_) => {
                        st.orphan = true;
                        reply.ok()
                    }
                    Err(e) => reply.error(e),
                }
            }
            None => match self.op(FsOp::Unlink { parent, name }) {
                Ok(_) => reply.ok(),
                Err(e) => reply.error(e),
            },
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match check_name(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        match self.op(FsOp::Rmdir {
            parent: parent.0,
            name,
        }) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let name = match check_name(link_name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let r = self.op(FsOp::Symlink {
            parent: parent.0,
            name,
            target: target.as_os_str().as_bytes().to_vec(),
            uid: req.uid(),
            gid: req.gid(),
        });
        self.entry(reply, r)
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let (name, new_name) = match (check_name(name), check_name(newname)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        // A file open in this mount that the rename replaces must stay readable until its
        // last close (the write-new-then-rename-over pattern), as with unlink.
        let open_target = if self.any_open() && !no_replace {
            match self.op(FsOp::Lookup {
                parent: newparent.0,
                name: new_name.clone(),
            }) {
                Ok(FsReply::Attr(a)) => self.file_if(a.ino).filter(|f| lock(f).open > 0),
                Ok(_) => return reply.error(Errno::EIO),
                Err(Errno::ENOENT) => None,
                Err(e) => return reply.error(e),
            }
        } else {
            None
        };
        let Some(f) = open_target else {
            return match self.op(FsOp::Rename {
                parent: parent.0,
                name,
                new_parent: newparent.0,
                new_name,
                no_replace,
            }) {
                Ok(_) => reply.ok(),
                Err(e) => reply.error(e),
            };
        };
        let mut st = lock(&f);
        match self.op(FsOp::RenameHeld {
            parent: parent.0,
            name,
            new_parent: newparent.0,
            new_name,
            no_replace,
            session: self.vol.session.id(),
        }) {
            Ok(_) => {
                st.orphan = true;
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let new_name = match check_name(newname) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let r = self.op(FsOp::Link {
            ino: ino.0,
            new_parent: newparent.0,
            new_name,
        });
        self.entry(reply, r)
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (fh, keep) = self.new_handle(ino.0, flags.0, None);
        let flags = if keep {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        reply.opened(FileHandle(fh), flags)
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let ino = ino.0;
        let f = self.file(ino);
        let mut retried = false;
        loop {
            // Under the file's lock: buffered appends are committed, the slice lists
            // are read, and the buffered writes the range overlaps are copied. The
            // blocks are fetched after the lock is released (blocks are immutable), so
            // reads of one file run in parallel and the result is the file as of that
            // moment, this mount's writes included.
            let (plan, dirty, dirty_end, mode) = {
                let mut st = lock(&f);
                if !st.append.is_empty() {
                    if let Err(e) = self.flush_state(ino, &mut st) {
                        return reply.error(e);
                    }
                }
                let plan = match self.rt.block_on(io::plan_read(
                    &self.vol,
                    &mut st.chunks,
                    ino,
                    offset,
                    u64::from(size),
                )) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(ino, offset, size, error = %e, "read failed");
                        return reply.error(stale(errno(&e)));
                    }
                };
                // Reads near where the last one ended are sequential: a cache miss then
                // fetches the rest of the block, not only the segments this read needs.
                let mode = if offset.abs_diff(st.read_end) <= SEQUENTIAL_WINDOW {
                    io::Fetch::ToEnd
                } else {
                    io::Fetch::Needed
                };
                st.read_end = offset + u64::from(size);
                let dirty =
                    (!st.dirty.is_empty()).then(|| st.dirty.copy_range(offset, u64::from(size)));
                (plan, dirty, st.dirty.end(), mode)
            };
            let mut data =
                match self
                    .rt
                    .block_on(io::fetch_plan(&self.vol, &self.blocks, plan.pieces, mode))
                {
                    Ok(d) => d,
                    // The slice lists may name blocks that a compaction or another mount's
                    // overwrite released and the janitor deleted: read the lists again.
                    Err(e) if !retried && !plan.chunks.is_empty() => {
                        tracing::debug!(ino, error = %e, "re-reading the chunks of a failed read");
                        let mut st = lock(&f);
                        for c in &plan.chunks {
                            st.chunks.remove(c);
                        }
                        retried = true;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(ino, offset, size, error = %e, "read failed");
                        return reply.error(stale(errno(&e)));
                    }
                };
            if let Some(dirty) = dirty {
                let visible = plan.committed.max(dirty_end);
                let end = visible.min(offset + u64::from(size));
                data.resize(end.saturating_sub(offset) as usize, 0);
                dirty.overlay(offset, &mut data);
            }
            return reply.data(&data);
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let ino = ino.0;
        let append = match lock(&self.handles).get(&fh.0) {
            Some(h) => h.append,
            None => return reply.error(Errno::EBADF),
        };
        let f = self.file(ino);
        let mut st = lock(&f);
        st.wrote = true;
        // Flushes happen before this write's data joins the buffer: when one fails, this
        // write fails with it and its data is not taken (an application that retries a
        // failed write must not find it twice), while the data of earlier writes stays
        // buffered for the next try. The buffer never grows past the threshold.
        let other_kind = if append {
            !st.dirty.is_empty()
        } else {
            !st.append.is_empty()
        };
        let full = st.pending() + data.len() > self.opts.flush_threshold
            || st.dirty.count() >= MAX_DIRTY_EXTENTS
            || (st.pending() > 0
                && self.buffered.load(Ordering::Relaxed) + data.len() > self.opts.write_budget);
        if other_kind || full {
            if let Err(e) = self.flush_state(ino, &mut st) {
                return reply.error(e);
            }
        }
        let before = st.pending();
        if append {
            st.append.extend_from_slice(data);
        } else {
            st.dirty.write(offset, data);
        }
        self.account(before, st.pending());
        reply.written(data.len() as u32)
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.flush_ino(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let ino = ino.0;
        lock(&self.handles).remove(&fh.0);
        let res = self.flush_ino(ino);
        if let Some(f) = self.file_if(ino) {
            let forget = {
                let mut st = lock(&f);
                st.open = st.open.saturating_sub(1);
                if st.open == 0 && res.is_err() && !(st.dirty.is_empty() && st.append.is_empty()) {
                    // The last close of the file reported the failure (close's flush):
                    // nobody is left to retry, so the buffer goes.
                    tracing::warn!(
                        ino,
                        bytes = st.pending(),
                        "dropping buffered writes that could not be committed (reported to close)"
                    );
                    let before = st.pending();
                    st.dirty.take();
                    st.append.clear();
                    self.account(before, st.pending());
                }
                if st.open == 0 && !st.wrote && !st.orphan {
                    if let Some(v) = st.opened_at {
                        let mut clean = lock(&self.clean);
                        if clean.len() >= MAX_COMMIT_COUNTERS {
                            clean.clear();
                        }
                        clean.insert(ino, v);
                    }
                }
                if st.open == 0 && st.orphan {
                    st.orphan = false;
                    true
                } else {
                    false
                }
            };
            if forget {
                if let Err(e) = self.op(FsOp::Release {
                    ino,
                    session: self.vol.session.id(),
                }) {
                    tracing::warn!(ino, error = ?e, "dropping an unlinked file failed");
                }
            }
            self.reap(ino);
        }
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.flush_ino(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.read_dir_all(ino.0) {
            Ok(entries) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                lock(&self.dirs).insert(fh, Arc::new(entries));
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(entries) = lock(&self.dirs).get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        // Offsets: 1 = ".", 2 = "..", 3.. = entries; each names the *next* position.
        let mut pos = offset;
        if pos == 0 {
            if reply.add(ino, 1, FileType::Directory, ".") {
                return reply.ok();
            }
            pos = 1;
        }
        if pos == 1 {
            if reply.add(ino, 2, FileType::Directory, "..") {
                return reply.ok();
            }
            pos = 2;
        }
        for (i, e) in entries.iter().enumerate().skip((pos - 2) as usize) {
            let name = OsStr::from_bytes(&e.name);
            if reply.add(INodeNo(e.ino), i as u64 + 3, kind(e.kind), name) {
                break;
            }
        }
        reply.ok()
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.dirs).remove(&fh.0);
        reply.ok()
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Namespace changes are committed in Raft before their call returns.
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        const BSIZE: u64 = 4096;
        match self.op(FsOp::StatFs) {
            Ok(FsReply::StatFs(s)) => {
                let blocks = s.capacity_bytes / BSIZE;
                let free = s.capacity_bytes.saturating_sub(s.used_bytes) / BSIZE;
                let files = u64::from(u32::MAX);
                reply.statfs(
                    blocks,
                    free,
                    free,
                    files,
                    files.saturating_sub(s.used_inodes),
                    BSIZE as u32,
                    NAME_MAX as u32,
                    BSIZE as u32,
                )
            }
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        if name.as_bytes() == XATTR_CAPS {
            return reply.error(Errno::from_i32(libc::EOPNOTSUPP));
        }
        let mode = if flags & libc::XATTR_CREATE != 0 {
            XattrMode::Create
        } else if flags & libc::XATTR_REPLACE != 0 {
            XattrMode::Replace
        } else {
            XattrMode::Any
        };
        match self.op(FsOp::SetXattr {
            ino: ino.0,
            name: name.as_bytes().to_vec(),
            value: value.to_vec(),
            mode,
        }) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if name.as_bytes() == XATTR_CAPS {
            return reply.error(Errno::from_i32(libc::ENODATA));
        }
        match self.op(FsOp::GetXattr {
            ino: ino.0,
            name: name.as_bytes().to_vec(),
        }) {
            Ok(FsReply::Xattr(v)) => xattr_reply(reply, size, &v),
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.op(FsOp::ListXattr { ino: ino.0 }) {
            Ok(FsReply::XattrNames(names)) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                xattr_reply(reply, size, &buf)
            }
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if name.as_bytes() == XATTR_CAPS {
            return reply.error(Errno::from_i32(libc::ENODATA));
        }
        match self.op(FsOp::RemoveXattr {
            ino: ino.0,
            name: name.as_bytes().to_vec(),
        }) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let a = match self.getattr_ino(ino.0) {
            Ok(a) => a,
            Err(e) => return reply.error(e),
        };
        if access_ok(&a, req.uid(), req.gid(), mask.bits()) {
            reply.ok()
        } else {
            reply.error(Errno::EACCES)
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = match check_name(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let r = self.op(FsOp::Create {
            parent: parent.0,
            name,
            mode: mode & 0o7777,
            uid: req.uid(),
            gid: req.gid(),
            exclusive: flags & libc::O_EXCL != 0,
        });
        match r.and_then(want_attr) {
            Ok(a) => {
                if a.kind != FileKind::File {
                    return reply.error(Errno::EISDIR);
                }
                let (fh, _) = self.new_handle(a.ino, flags, Some(&a));
                let a = self.local_attr(a);
                reply.created(
                    &self.opts.entry_ttl,
                    &file_attr(&a),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                )
            }
            Err(e) => reply.error(e),
        }
    }
}

fn xattr_reply(reply: ReplyXattr, size: u32, v: &[u8]) {
    if size == 0 {
        reply.size(v.len() as u32)
    } else if v.len() > size as usize {
        reply.error(Errno::from_i32(libc::ERANGE))
    } else {
        reply.data(v)
    }
}

/// access(2) by mode bits; root may read and write anything and execute anything that
/// has an execute bit (or is a directory).
fn access_ok(a: &Attr, uid: u32, gid: u32, mask: i32) -> bool {
    if mask == libc::F_OK {
        return true;
    }
    let mode = a.mode;
    if uid == 0 {
        return mask & libc::X_OK == 0 || a.kind == FileKind::Dir || mode & 0o111 != 0;
    }
    let bits = if uid == a.uid {
        (mode >> 6) & 7
    } else if gid == a.gid {
        (mode >> 3) & 7
    } else {
        mode & 7
    };
    (mask as u32 & 7) & !bits == 0
}
