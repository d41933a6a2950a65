//! The namespace operations shared by the metadata state machine and every client.
//!
//! Clients send an [`FsOp`] (postcard-encoded, format [`FS_FORMAT`]) and get back an
//! [`FsResult`]. Keeping the one definition here means the FUSE layer, the CLI and the
//! state machine cannot disagree about an operation's fields.

use crate::ids::{Ino, VolumeId};
use crate::slice::{BlockRef, Slice};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Encoding version of [`FsOp`] / [`FsResult`] on the wire.
pub const FS_FORMAT: u32 = 1;

/// Most directory entries returned by one [`FsOp::ReadDir`].
pub const MAX_READDIR: u32 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
}

/// Inode attributes. Times are nanoseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub ino: Ino,
    pub kind: FileKind,
    /// Permission bits (and setuid/setgid/sticky), without the file type.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: FileKind,
}

/// Attribute changes; `None` leaves a field unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime_ns: Option<i64>,
    pub mtime_ns: Option<i64>,
}

/// One slice committed into chunk `chunk` of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkSlice {
    pub chunk: u64,
    pub slice: Slice,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsOp {
    // ---- reads ----
    Lookup {
        parent: Ino,
        name: Vec<u8>,
    },
    GetAttr {
        ino: Ino,
    },
    /// Resolves a `/`-separated path from the root (no `..`).
    ResolvePath {
        path: String,
    },
    /// Entries with names strictly after `after`, in name order, at most `limit`.
    ReadDir {
        ino: Ino,
        after: Vec<u8>,
        limit: u32,
    },
    ReadLink {
        ino: Ino,
    },
    /// The slices of chunk `chunk`, oldest first, with the file's current attributes.
    ReadChunk {
        ino: Ino,
        chunk: u64,
    },
    StatFs,
    // ---- writes ----
    Create {
        parent: Ino,
        name: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
        exclusive: bool,
    },
    Mkdir {
        parent: Ino,
        name: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Symlink {
        parent: Ino,
        name: Vec<u8>,
        target: Vec<u8>,
        uid: u32,
        gid: u32,
    },
    Link {
        ino: Ino,
        new_parent: Ino,
        new_name: Vec<u8>,
    },
    Unlink {
        parent: Ino,
        name: Vec<u8>,
    },
    Rmdir {
        parent: Ino,
        name: Vec<u8>,
    },
    Rename {
        parent: Ino,
        name: Vec<u8>,
        new_parent: Ino,
        new_name: Vec<u8>,
        no_replace: bool,
    },
    SetAttr {
        ino: Ino,
        set: SetAttr,
    },
    /// Commits written slices; the file grows to at least `min_size`.
    Write {
        ino: Ino,
        slices: Vec<ChunkSlice>,
        min_size: u64,
    },
    // ---- added with format 1, appended so that earlier variants keep their tags ----
    /// Appends `len` bytes, the concatenation of `blocks`, at the file's size *as of the
    /// commit*, so concurrent appenders on different mounts never overwrite each other.
    /// Replies with the new attributes; the data starts at `size - len`.
    Append {
        ino: Ino,
        blocks: Vec<BlockRef>,
        len: u64,
    },
    /// The value of extended attribute `name`.
    GetXattr {
        ino: Ino,
        name: Vec<u8>,
    },
    /// The names of every extended attribute of `ino`.
    ListXattr {
        ino: Ino,
    },
    SetXattr {
        ino: Ino,
        name: Vec<u8>,
        value: Vec<u8>,
        mode: XattrMode,
    },
    RemoveXattr {
        ino: Ino,
        name: Vec<u8>,
    },
    /// Unlinks `parent/name`, but when that drops the last link of a file that a client
    /// still holds open, keeps the inode (nlink 0, listed as an orphan) until
    /// [`FsOp::Forget`] so the open handles keep reading and writing it.
    UnlinkOpen {
        parent: Ino,
        name: Vec<u8>,
    },
    /// The last open handle of `ino` went away: drop it if it is an orphan (nlink 0).
    /// A no-op for linked inodes, so it is safe to send on every last close.
    Forget {
        ino: Ino,
    },
    /// Replaces the slices `expect` of chunk `chunk` by `slices` (the same content,
    /// rewritten into fresh blocks, see [`crate::compact`]) if and only if the chunk's
    /// list still begins with exactly `expect` — a compare-and-swap. Slices committed
    /// after the read stay on top, so no write is ever undone; any other change
    /// (another compaction, the chunk dropped) makes the swap fail.
    /// The old slices' blocks are released (garbage-collected when unreferenced).
    /// Replies [`FsReply::Compacted`]; sizes, times and quota do not change.
    CompactChunk {
        ino: Ino,
        chunk: u64,
        expect: Vec<Slice>,
        slices: Vec<Slice>,
    },
    /// Registers (or renews) a client session — one mount — that lives `ttl_ms` past
    /// this command unless renewed. Orphans a session holds are dropped when it closes or
    /// expires, so a mount that dies does not leak the files it had unlinked while open.
    /// Idempotent.
    SessionOpen {
        session: u64,
        ttl_ms: u64,
        /// Who holds it (host, process, mount point), for operators.
        info: String,
    },
    /// Extends a session's lease; [`FsError::NotFound`] when it expired or never existed
    /// (the client must open a new one: orphans it held may be gone).
    SessionRenew {
        session: u64,
        ttl_ms: u64,
    },
    /// Ends a session: drops every orphan no other session holds. Idempotent.
    SessionClose {
        session: u64,
    },
    /// [`FsOp::UnlinkOpen`] on behalf of `session`: the orphan is held by it until
    /// [`FsOp::Release`] or the session ends.
    UnlinkHeld {
        parent: Ino,
        name: Vec<u8>,
        session: u64,
    },
    /// `session` closed its last handle of `ino`: drops the orphan once no session holds
    /// it. A no-op for linked inodes.
    Release {
        ino: Ino,
        session: u64,
    },
    /// [`FsOp::Rename`] on behalf of `session`, which holds the file it replaces open:
    /// that file stays as an orphan held by the session (like [`FsOp::UnlinkHeld`]) until
    /// [`FsOp::Release`], so its readers keep reading it (write-new-then-rename-over).
    RenameHeld {
        parent: Ino,
        name: Vec<u8>,
        new_parent: Ino,
        new_name: Vec<u8>,
        no_replace: bool,
        session: u64,
    },
}

/// How [`FsOp::SetXattr`] treats an existing / missing attribute (setxattr(2) flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum XattrMode {
    /// Create or replace.
    Any,
    /// Fail with [`FsError::Exists`] when it exists (`XATTR_CREATE`).
    Create,
    /// Fail with [`FsError::NoXattr`] when it is missing (`XATTR_REPLACE`).
    Replace,
}

/// Largest encoded [`FsOp`] a node accepts. With the Raft envelope around it (log id,
/// vote, the command's other fields: a few hundred bytes at most) one command always fits
/// in one replication message (8 MiB): a larger one could be committed by nobody, and
/// every later write would queue behind it.
pub const MAX_FS_OP_BYTES: usize = 7 << 20;

/// Most blocks one slice (of a `Write` or `CompactChunk`) or one `Append` may reference.
/// A slice covers at most one 64 MiB chunk, 17 blocks of 4 MiB; the bound keeps a chunk
/// record (at most `MAX_SLICES_PER_CHUNK` slices) near 3 MiB, so it always fits in a
/// reply and a snapshot record.
pub const MAX_BLOCKS_PER_SLICE: usize = 32;

/// Longest `info` of a [`FsOp::SessionOpen`].
pub const MAX_SESSION_INFO: usize = 4096;

/// Range of a session lease (`ttl_ms` of `SessionOpen` / `SessionRenew`): at least a
/// second, at most a day.
pub const SESSION_TTL_MS: std::ops::RangeInclusive<u64> = 1_000..=86_400_000;

/// Longest extended-attribute name (Linux's XATTR_NAME_MAX).
pub const MAX_XATTR_NAME: usize = 255;
/// Largest extended-attribute value (Linux's XATTR_SIZE_MAX).
pub const MAX_XATTR_VALUE: usize = 64 * 1024;
/// Extended attributes of one inode.
pub const MAX_XATTRS_PER_INODE: usize = 1024;
/// Bytes of one inode's attribute-name list as `listxattr` returns it (each name and its
/// NUL): Linux's XATTR_LIST_MAX, so a listing always fits the kernel's buffer.
pub const MAX_XATTR_LIST: usize = 64 * 1024;
/// Bytes of names and values of one inode's extended attributes together. Every byte is
/// also charged to the volume's quota.
pub const MAX_XATTR_BYTES_PER_INODE: usize = 1 << 20;

impl FsOp {
    /// The session an op holds files for ([`FsOp::UnlinkHeld`], [`FsOp::RenameHeld`],
    /// [`FsOp::Release`]): the client sets it to the session the op is sent under, which
    /// can be a fresh one by the time it is sent.
    pub fn holds_files(&self) -> bool {
        matches!(
            self,
            FsOp::UnlinkHeld { .. } | FsOp::RenameHeld { .. } | FsOp::Release { .. }
        )
    }

    /// The session field of an op that [holds files](FsOp::holds_files).
    pub fn holder_mut(&mut self) -> Option<&mut u64> {
        match self {
            FsOp::UnlinkHeld { session, .. }
            | FsOp::RenameHeld { session, .. }
            | FsOp::Release { session, .. } => Some(session),
            _ => None,
        }
    }

    /// Session management: idempotent by nature, so never deduplicated (and sent without
    /// a [`RequestId`]: the session they open may not exist yet).
    pub fn is_session_op(&self) -> bool {
        matches!(
            self,
            FsOp::SessionOpen { .. } | FsOp::SessionRenew { .. } | FsOp::SessionClose { .. }
        )
    }

    /// Checks the bounds that keep every accepted op replicable and every state record
    /// it can produce bounded (see [`MAX_FS_OP_BYTES`]); the message says what was too
    /// large. Everything else is validated when the op is applied.
    pub fn check_bounds(&self) -> Result<(), String> {
        let slices: Box<dyn Iterator<Item = &Slice>> = match self {
            FsOp::Write { slices, .. } => Box::new(slices.iter().map(|s| &s.slice)),
            FsOp::CompactChunk { slices, .. } => Box::new(slices.iter()),
            FsOp::Append { blocks, .. } if blocks.len() > MAX_BLOCKS_PER_SLICE => {
                return Err(format!(
                    "an append may reference at most {MAX_BLOCKS_PER_SLICE} blocks, this one {}; \
                     append less at a time",
                    blocks.len()
                ))
            }
            FsOp::SessionOpen { info, .. } if info.len() > MAX_SESSION_INFO => {
                return Err(format!(
                    "session info is at most {MAX_SESSION_INFO} bytes, got {}",
                    info.len()
                ))
            }
            FsOp::SessionOpen { ttl_ms, .. } | FsOp::SessionRenew { ttl_ms, .. }
                if !SESSION_TTL_MS.contains(ttl_ms) =>
            {
                return Err(format!(
                    "a session lease must be between {} and {} ms, got {ttl_ms}",
                    SESSION_TTL_MS.start(),
                    SESSION_TTL_MS.end()
                ))
            }
            _ => Box::new(std::iter::empty()),
        };
        for s in slices {
            if s.blocks.len() > MAX_BLOCKS_PER_SLICE {
                return Err(format!(
                    "a slice may reference at most {MAX_BLOCKS_PER_SLICE} blocks, this one {}",
                    s.blocks.len()
                ));
            }
        }
        Ok(())
    }

    pub fn is_read(&self) -> bool {
        matches!(
            self,
            FsOp::Lookup { .. }
                | FsOp::GetAttr { .. }
                | FsOp::ResolvePath { .. }
                | FsOp::ReadDir { .. }
                | FsOp::ReadLink { .. }
                | FsOp::ReadChunk { .. }
                | FsOp::StatFs
                | FsOp::GetXattr { .. }
                | FsOp::ListXattr { .. }
        )
    }
}

/// Identifies one mutating request of a client session, so the state machine applies it
/// exactly once however often it is sent (the Raft dissertation's §6.3 design): a retry
/// after an ambiguous failure (reply lost, leader killed, connection dropped) carries the
/// same `seq` and gets the first attempt's result instead of being applied again.
///
/// `acked_below` is the lowest `seq` the client still waits for: every reply below it
/// has been received, so the state machine forgets them. This keeps the stored replies
/// bounded by the requests in flight while still allowing many at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestId {
    pub session: u64,
    pub seq: u64,
    pub acked_below: u64,
}

/// Most requests a session may have outstanding (`seq - acked_below`): bounds the replies
/// the state machine keeps per session.
pub const MAX_OUTSTANDING_REQUESTS: u64 = 16_384;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatFs {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub used_inodes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsReply {
    Done,
    Attr(Attr),
    Entries {
        entries: Vec<DirEntry>,
        more: bool,
    },
    Link(Vec<u8>),
    Chunk {
        attr: Attr,
        slices: Vec<Slice>,
    },
    StatFs(StatFs),
    /// An extended attribute's value.
    Xattr(Vec<u8>),
    /// Extended attribute names, in name order.
    XattrNames(Vec<Vec<u8>>),
    /// Whether a [`FsOp::CompactChunk`] replaced the chunk (false: it changed meanwhile).
    Compacted {
        applied: bool,
    },
}

/// File-system errors; each maps to one errno.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("is a directory")]
    IsDir,
    #[error("not a directory")]
    NotDir,
    #[error("file name too long (at most 255 bytes)")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("volume quota exceeded: {used} of {capacity} bytes used, this write needs {needed} more; resize the volume or delete files")]
    QuotaExceeded {
        used: u64,
        capacity: u64,
        needed: u64,
    },
    #[error("permission denied")]
    PermissionDenied,
    #[error("volume {0} does not exist")]
    NoVolume(VolumeId),
    #[error("cannot move a directory into itself")]
    Loop,
    #[error("no such extended attribute")]
    NoXattr,
    #[error("operation not permitted")]
    NotPermitted,
    #[error("extended attribute name too long (at most 255 bytes)")]
    Range,
    // ---- appended (variant tags are part of the wire format) ----
    /// The namespace is a snapshot: read-only forever (clone it to write).
    #[error("read-only file system: this is a snapshot; create a volume from it to write")]
    ReadOnly,
    /// The client session a request named has ended (its lease ran out, or it was
    /// closed) or was never opened. Nothing was applied; a retry of an earlier attempt
    /// can no longer learn that attempt's outcome.
    #[error("client session {0:x} has ended or was never opened: open a new session")]
    SessionExpired(u64),
    /// An inode's extended attributes would exceed a per-inode bound
    /// ([`MAX_XATTRS_PER_INODE`], [`MAX_XATTR_LIST`], [`MAX_XATTR_BYTES_PER_INODE`]).
    #[error("no space for extended attributes on this inode: {0}")]
    XattrSpace(String),
}

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound | FsError::NoVolume(_) => 2, // ENOENT
            FsError::Exists => 17,                         // EEXIST
            FsError::NotEmpty => 39,                       // ENOTEMPTY
            FsError::IsDir => 21,                          // EISDIR
            FsError::NotDir => 20,                         // ENOTDIR
            FsError::NameTooLong => 36,                    // ENAMETOOLONG
            FsError::Invalid(_) | FsError::Loop => 22,     // EINVAL
            FsError::QuotaExceeded { .. } => 122,          // EDQUOT
            FsError::PermissionDenied => 13,               // EACCES
            FsError::NoXattr => 61,                        // ENODATA
            FsError::NotPermitted => 1,                    // EPERM
            FsError::Range => 34,                          // ERANGE
            FsError::ReadOnly => 30,                       // EROFS
            FsError::SessionExpired(_) => 5,               // EIO
            FsError::XattrSpace(_) => 28,                  // ENOSPC
        }
    }
}

pub type FsResult = Result<FsReply, FsError>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BlockId;

    fn refs(n: usize) -> Vec<BlockRef> {
        (0..n)
            .map(|i| BlockRef {
                id: BlockId::from_u128(i as u128),
                len: 1,
                crc: 0,
            })
            .collect()
    }

    /// What could make a command unreplicable or a state record unbounded is refused;
    /// everything a real client sends passes.
    #[test]
    fn bounds_refuse_oversized_ops_and_pass_real_ones() {
        let slice = |n: usize| ChunkSlice {
            chunk: 0,
            slice: Slice {
                pos: 0,
                len: 1,
                skip: 0,
                blocks: refs(n),
            },
        };
        let write = |n| FsOp::Write {
            ino: 2,
            slices: vec![slice(n)],
            min_size: 0,
        };
        assert!(write(MAX_BLOCKS_PER_SLICE).check_bounds().is_ok());
        assert!(write(MAX_BLOCKS_PER_SLICE + 1).check_bounds().is_err());
        let compact = |n| FsOp::CompactChunk {
            ino: 2,
            chunk: 0,
            expect: vec![],
            slices: vec![slice(n).slice],
        };
        assert!(compact(17).check_bounds().is_ok());
        assert!(compact(MAX_BLOCKS_PER_SLICE + 1).check_bounds().is_err());
        let append = |n| FsOp::Append {
            ino: 2,
            blocks: refs(n),
            len: 1,
        };
        assert!(append(5).check_bounds().is_ok());
        assert!(append(MAX_BLOCKS_PER_SLICE + 1).check_bounds().is_err());
        let open = |info: usize, ttl_ms| FsOp::SessionOpen {
            session: 1,
            ttl_ms,
            info: "x".repeat(info),
        };
        assert!(open(100, 120_000).check_bounds().is_ok());
        assert!(open(MAX_SESSION_INFO + 1, 120_000).check_bounds().is_err());
        assert!(open(10, 0).check_bounds().is_err());
        assert!(open(10, u64::MAX).check_bounds().is_err());
        let renew = |ttl_ms| FsOp::SessionRenew { session: 1, ttl_ms };
        assert!(renew(300_000).check_bounds().is_ok());
        assert!(renew(999).check_bounds().is_err());
        assert!(FsOp::StatFs.check_bounds().is_ok());
    }
}
