//! The block store: immutable, checksummed blocks on the node's local disk, and the
//! `BlockService` gRPC API over it.
//!
//! # Directory layout
//!
//! ```text
//! <data_dir>/blocks/
//!   00/ … ff/      one shard per first id byte; a block lives at <shard>/<32-hex id>
//!   tmp/           blocks being written; emptied at every open
//!   quarantine/    copies that failed verification, kept for inspection, never served
//! ```
//!
//! The 256 shard directories are created once at open, so a put never creates a
//! directory (and never needs to fsync a parent it created).
//!
//! # Block file format, version 1 (all integers little-endian)
//!
//! | offset           | size          | field                                          |
//! |------------------|---------------|------------------------------------------------|
//! | 0                | 4             | magic `RFB1`                                   |
//! | 4                | 4             | format version (`1`)                           |
//! | 8                | 4             | `len`: data bytes, 1 ..= 4 MiB                 |
//! | 12               | 4             | crc32c of the whole data                       |
//! | 16               | 4             | segment count `n` = ceil(len / 64 KiB)         |
//! | 20               | 4 × n         | crc32c of each 64 KiB data segment             |
//! | 20 + 4n          | len           | data                                           |
//!
//! Only the last segment may be shorter than 64 KiB. Per-segment checksums let a ranged
//! read verify exactly the segments it touches instead of the whole block; the whole-block
//! crc is what metadata records ([`BlockRef::crc`]) and what a put is checked against.
//! The header is validated against the file size (`20 + 4n + len`) on every read, so a
//! truncated or garbled header is detected as corruption rather than misread.
//!
//! # Durability and invariants
//!
//! A put verifies length and crc32c *before* touching the disk, writes a temp file, fsyncs
//! it, renames it into its shard and fsyncs the shard directory; only then does the node
//! acknowledge. So a file in a shard directory is always complete and checksummed as it
//! was received, and a crash mid-write leaves only a temp file that the next open
//! removes. Blocks are immutable: a put of an id that is already stored intact is a no-op
//! (`already_present`), and a put of an id stored with *different* content is refused.
//!
//! A copy found corrupt (by a read, an idempotent put or [`BlockStore::verify`]) is moved to
//! `quarantine/` so the node stops claiming it and `has` answers `false`: the replica
//! then looks missing, which is what repair restores.
//!
//! Namespace changes of one id (publish, delete, quarantine) are serialized by a striped
//! lock so the block/byte counters stay exact; reads take no lock (files never change
//! after publication). All file I/O runs on tokio's blocking pool.

use bytes::Bytes;
use ringfs_core::ids::BlockId;
use ringfs_core::slice::{checksum, BlockRef, MAX_BLOCK_SIZE};
use ringfs_proto::block::block_service_server::{BlockService, BlockServiceServer};
use ringfs_proto::block::{
    get_block_reply, put_block_request, BlockHeader, DeleteBlocksReply, DeleteBlocksRequest,
    GetBlockReply, GetBlockRequest, HasBlocksReply, HasBlocksRequest, ListBlocksReply,
    ListBlocksRequest, PullReply, PullRequest, PutBlockReply, PutBlockRequest, SegmentData,
};
use ringfs_proto::{MAX_MESSAGE_BYTES, STREAM_CHUNK_BYTES};
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::{Request, Response, Status, Streaming};
use tracing::{field, info, instrument, warn, Span};

/// Size of a checksummed segment. The block protocol (block.proto) fixes it at 64 KiB:
/// get replies carry whole segments and one crc32c per segment.
pub const SEGMENT_BYTES: u32 = 64 << 10;

/// `list` page size when the caller asks for 0.
pub const DEFAULT_LIST_LIMIT: u32 = 1000;
/// Largest `list` page, whatever the caller asks for.
pub const MAX_LIST_LIMIT: u32 = 10_000;

/// Longest a put stream may send nothing before the call is ended.
pub const PUT_READ_DEADLINE: Duration = Duration::from_secs(30);

/// The next message of a put stream, within `deadline`: a sender that stops mid-stream
/// (it hung, or its network did) must not hold the call and the chunks it buffered
/// forever.
async fn next_message<T>(
    stream: &mut Streaming<T>,
    deadline: Duration,
) -> Result<Option<T>, Status> {
    match tokio::time::timeout(deadline, stream.message()).await {
        Ok(m) => m,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "the put stream sent nothing for {deadline:?}; resend the block"
        ))),
    }
}

const MAGIC: [u8; 4] = *b"RFB1";
const FORMAT_VERSION: u32 = 1;
const HEADER_BYTES: u64 = 20;
const LOCK_STRIPES: usize = 64;

/// Everything a block store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("block {0} not found")]
    NotFound(BlockId),
    /// The stored copy failed verification; it has been quarantined.
    #[error("block {id} is corrupt on this node: {reason}")]
    Corrupt { id: BlockId, reason: String },
    #[error(
        "block {id}: checksum mismatch: header says crc32c {expected:#010x}, \
         received data has {actual:#010x}"
    )]
    ChecksumMismatch {
        id: BlockId,
        expected: u32,
        actual: u32,
    },
    #[error("block {id}: length mismatch: header says {expected} bytes, received {actual}")]
    LengthMismatch {
        id: BlockId,
        expected: u64,
        actual: u64,
    },
    #[error("block {id}: {len} bytes exceeds the {MAX_BLOCK_SIZE}-byte block limit")]
    TooLarge { id: BlockId, len: u64 },
    #[error("block {0} is empty; a block holds at least one byte")]
    Empty(BlockId),
    #[error(
        "block {id} is already stored with different content \
         (stored: {stored_len} bytes, crc32c {stored_crc:#010x})"
    )]
    Conflict {
        id: BlockId,
        stored_len: u32,
        stored_crc: u32,
    },
    #[error(
        "block {id}: range offset {offset} len {len} is outside the block's {block_len} bytes"
    )]
    OutOfRange {
        id: BlockId,
        offset: u32,
        len: u32,
        block_len: u32,
    },
    #[error("block {0} kept changing under a concurrent put/delete; retry")]
    Busy(BlockId),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("block store task failed: {0}")]
    Task(String),
}

type Result<T, E = BlockError> = std::result::Result<T, E>;

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> BlockError {
    let context = context.into();
    move |source| BlockError::Io { context, source }
}

/// The one mapping of block store errors to gRPC statuses. `data_loss` is reserved for
/// "this node's stored copy is corrupt", so clients can key replica failover and repair
/// reports off it; a put whose data does not match its own checksum is the request's
/// fault and is `invalid_argument` ("checksum mismatch").
impl From<BlockError> for Status {
    fn from(e: BlockError) -> Self {
        let msg = e.to_string();
        match e {
            BlockError::NotFound(_) => Status::not_found(msg),
            BlockError::Corrupt { .. } => Status::data_loss(msg),
            BlockError::ChecksumMismatch { .. }
            | BlockError::LengthMismatch { .. }
            | BlockError::TooLarge { .. }
            | BlockError::Empty(_) => Status::invalid_argument(msg),
            BlockError::Conflict { .. } => Status::already_exists(msg),
            BlockError::OutOfRange { .. } => Status::out_of_range(msg),
            BlockError::Busy(_) => Status::aborted(msg),
            BlockError::Io { ref source, .. } if source.kind() == io::ErrorKind::StorageFull => {
                Status::resource_exhausted(msg)
            }
            BlockError::Io { .. } | BlockError::Task(_) => Status::internal(msg),
        }
    }
}

/// A verified, segment-aligned range of a block, as returned by [`BlockStore::get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRead {
    /// The block's id, length and whole-block crc32c, from the stored header.
    pub block: BlockRef,
    /// Offset of `data` in the block: a multiple of [`SEGMENT_BYTES`].
    pub seg_offset: u32,
    /// Whole segments covering the requested range (the block's last may be shorter).
    pub data: Bytes,
    /// crc32c of each segment in `data`.
    pub seg_crcs: Vec<u32>,
}

impl BlockRead {
    /// The bytes of the originally requested range `[offset, offset + len)`.
    pub fn range(&self, offset: u32, len: u32) -> Option<Bytes> {
        let start = offset.checked_sub(self.seg_offset)? as usize;
        let end = start.checked_add(len as usize)?;
        (end <= self.data.len()).then(|| self.data.slice(start..end))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileHeader {
    len: u32,
    crc: u32,
    segments: u32,
}

impl FileHeader {
    fn encode(&self) -> [u8; HEADER_BYTES as usize] {
        let mut b = [0u8; HEADER_BYTES as usize];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..16].copy_from_slice(&self.crc.to_le_bytes());
        b[16..20].copy_from_slice(&self.segments.to_le_bytes());
        b
    }

    fn decode(b: &[u8; HEADER_BYTES as usize]) -> Result<Self, String> {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        if b[0..4] != MAGIC {
            return Err(format!("bad magic {:02x?}", &b[0..4]));
        }
        let version = word(4);
        if version != FORMAT_VERSION {
            return Err(format!("unknown format version {version}"));
        }
        let h = FileHeader {
            len: word(8),
            crc: word(12),
            segments: word(16),
        };
        if h.len == 0 || h.len > MAX_BLOCK_SIZE {
            return Err(format!(
                "header length {} is not a valid block length",
                h.len
            ));
        }
        if h.segments != segment_count(h.len) {
            return Err(format!(
                "header says {} segments for {} bytes",
                h.segments, h.len
            ));
        }
        Ok(h)
    }

    fn data_offset(&self) -> u64 {
        HEADER_BYTES + 4 * u64::from(self.segments)
    }

    fn file_size(&self) -> u64 {
        self.data_offset() + u64::from(self.len)
    }
}

/// What precedes the data in a block file: the header and the segment checksums.
fn file_prefix(header: &FileHeader, seg_crcs: &[u32]) -> Vec<u8> {
    let mut meta = Vec::with_capacity(HEADER_BYTES as usize + 4 * seg_crcs.len());
    meta.extend_from_slice(&header.encode());
    for c in seg_crcs {
        meta.extend_from_slice(&c.to_le_bytes());
    }
    meta
}

/// The complete block file for `data` (1 ..= [`MAX_BLOCK_SIZE`] bytes), as a put writes
/// it; `None` for an invalid length. Puts stream their chunks instead; this is for
/// tests and fuzz targets.
pub fn encode_block_file(data: &[u8]) -> Option<Vec<u8>> {
    let len = u32::try_from(data.len())
        .ok()
        .filter(|l| (1..=MAX_BLOCK_SIZE).contains(l))?;
    let (crc, seg_crcs) = checksums(&[Bytes::copy_from_slice(data)]);
    let header = FileHeader {
        len,
        crc,
        segments: segment_count(len),
    };
    let mut out = file_prefix(&header, &seg_crcs);
    out.extend_from_slice(data);
    Some(out)
}

/// Decodes and fully verifies a block file held in memory (header, size, every segment
/// and the whole-block crc) and returns its data: the read path's checks, for fuzzing.
pub fn decode_block_file(id: BlockId, bytes: &[u8]) -> Result<BlockRead> {
    verified_read(id, bytes)
}

fn segment_count(len: u32) -> u32 {
    len.div_ceil(SEGMENT_BYTES)
}

/// Whole-data crc32c and per-segment crc32cs of a block given as chunks of any sizes.
fn checksums(chunks: &[Bytes]) -> (u32, Vec<u32>) {
    let mut whole = 0u32;
    let mut segs = Vec::new();
    let (mut seg_crc, mut seg_fill) = (0u32, 0usize);
    for chunk in chunks {
        whole = crc32c::crc32c_append(whole, chunk);
        let mut rest: &[u8] = chunk;
        while !rest.is_empty() {
            let take = rest.len().min(SEGMENT_BYTES as usize - seg_fill);
            seg_crc = crc32c::crc32c_append(seg_crc, &rest[..take]);
            seg_fill += take;
            rest = &rest[take..];
            if seg_fill == SEGMENT_BYTES as usize {
                segs.push(seg_crc);
                (seg_crc, seg_fill) = (0, 0);
            }
        }
    }
    if seg_fill > 0 {
        segs.push(seg_crc);
    }
    (whole, segs)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("fsync directory {}", dir.display())))
}

fn is_not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

/// Removes a temp file on drop unless it was published.
struct TmpFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = fs::remove_file(&self.path) {
                if !is_not_found(&e) {
                    warn!(path = %self.path.display(), error = %e, "could not remove temp block file");
                }
            }
        }
    }
}

/// Immutable blocks in `<data_dir>/blocks`. See the module docs for the format.
#[derive(Debug)]
pub struct BlockStore {
    dir: PathBuf,
    tmp: PathBuf,
    quarantine: PathBuf,
    locks: Vec<Mutex<()>>,
    blocks: AtomicU64,
    bytes: AtomicU64,
}

impl BlockStore {
    /// Opens (creating if needed) the store under `<data_dir>/blocks`, removes leftover
    /// temp files from interrupted puts and counts the stored blocks.
    pub async fn open(data_dir: impl Into<PathBuf>) -> Result<Arc<Self>> {
        let data_dir = data_dir.into();
        tokio::task::spawn_blocking(move || Self::open_blocking(&data_dir))
            .await
            .map_err(|e| BlockError::Task(e.to_string()))?
            .map(Arc::new)
    }

    fn open_blocking(data_dir: &Path) -> Result<Self> {
        let dir = data_dir.join("blocks");
        let store = BlockStore {
            tmp: dir.join("tmp"),
            quarantine: dir.join("quarantine"),
            dir,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            blocks: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        };
        let fresh = !store.dir.exists();
        fs::create_dir_all(&store.dir)
            .map_err(io_err(format!("create {}", store.dir.display())))?;
        if fresh {
            sync_dir(data_dir)?;
        }
        let mut created = false;
        let subdirs = (0..=255u8)
            .map(|s| store.shard_dir(s))
            .chain([store.tmp.clone(), store.quarantine.clone()]);
        for sub in subdirs {
            match fs::create_dir(&sub) {
                Ok(()) => created = true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(format!("create {}", sub.display()))(e)),
            }
        }
        if created {
            sync_dir(&store.dir)?;
        }
        store.clean_tmp()?;
        let (blocks, bytes) = store.scan()?;
        store.blocks.store(blocks, Ordering::Relaxed);
        store.bytes.store(bytes, Ordering::Relaxed);
        info!(dir = %store.dir.display(), blocks, bytes, "block store opened");
        Ok(store)
    }

    fn clean_tmp(&self) -> Result<()> {
        let ctx = || format!("clean {}", self.tmp.display());
        let mut removed = 0u64;
        for entry in fs::read_dir(&self.tmp).map_err(io_err(ctx()))? {
            let path = entry.map_err(io_err(ctx()))?.path();
            let res = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            res.map_err(io_err(format!("remove {}", path.display())))?;
            removed += 1;
        }
        if removed > 0 {
            info!(removed, "removed temp files of interrupted block writes");
        }
        Ok(())
    }

    fn scan(&self) -> Result<(u64, u64)> {
        let (mut blocks, mut bytes) = (0u64, 0u64);
        for shard in 0..=255u8 {
            let dir = self.shard_dir(shard);
            let ctx = || format!("scan {}", dir.display());
            for entry in fs::read_dir(&dir).map_err(io_err(ctx()))? {
                let entry = entry.map_err(io_err(ctx()))?;
                let name = entry.file_name();
                match name.to_str().and_then(|n| n.parse::<BlockId>().ok()) {
                    Some(id) if id.0[0] == shard => {
                        let meta = entry.metadata().map_err(io_err(ctx()))?;
                        blocks += 1;
                        bytes += meta.len();
                    }
                    _ => {
                        warn!(path = %entry.path().display(), "stray file in block store; ignored")
                    }
                }
            }
        }
        Ok((blocks, bytes))
    }

    /// The store's root directory, `<data_dir>/blocks`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `(blocks, bytes)` currently stored; bytes are on-disk file sizes (header included).
    pub fn stats(&self) -> (u64, u64) {
        (
            self.blocks.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    fn shard_dir(&self, shard: u8) -> PathBuf {
        self.dir.join(format!("{shard:02x}"))
    }

    fn block_path(&self, id: BlockId) -> PathBuf {
        self.shard_dir(id.0[0]).join(id.to_string())
    }

    fn lock(&self, id: BlockId) -> MutexGuard<'_, ()> {
        let stripe = usize::from(id.0[15]) % self.locks.len();
        // The lock guards no data, only ordering, so a poisoned lock is still usable.
        self.locks[stripe].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count_added(&self, size: u64) {
        self.blocks.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(size, Ordering::Relaxed);
    }

    /// Saturating: a file changed on disk behind the store's back (truncated, say) can
    /// make `size` differ from what was counted; the next open recounts exactly.
    fn count_removed(&self, size: u64) {
        for (counter, n) in [(&self.blocks, 1), (&self.bytes, size)] {
            // Never fails: the closure always returns Some.
            let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
        }
    }

    async fn blocking<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&BlockStore) -> Result<T> + Send + 'static,
    {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| BlockError::Task(e.to_string()))?
    }

    /// Stores block `id` whose content is the concatenation of `chunks`, after checking it
    /// against `len` and `crc` (crc32c). Returns `true` when the block was already stored
    /// intact (nothing written). Returns only once the block is durable.
    pub async fn put(
        self: &Arc<Self>,
        id: BlockId,
        len: u32,
        crc: u32,
        chunks: Vec<Bytes>,
    ) -> Result<bool> {
        self.blocking(move |s| s.put_blocking(id, len, crc, &chunks))
            .await
    }

    fn put_blocking(&self, id: BlockId, len: u32, crc: u32, chunks: &[Bytes]) -> Result<bool> {
        if len == 0 {
            return Err(BlockError::Empty(id));
        }
        let actual_len: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        if u64::from(len) > u64::from(MAX_BLOCK_SIZE) || actual_len > u64::from(MAX_BLOCK_SIZE) {
            return Err(BlockError::TooLarge {
                id,
                len: u64::from(len).max(actual_len),
            });
        }
        if actual_len != u64::from(len) {
            return Err(BlockError::LengthMismatch {
                id,
                expected: len.into(),
                actual: actual_len,
            });
        }
        let (actual_crc, seg_crcs) = checksums(chunks);
        if actual_crc != crc {
            return Err(BlockError::ChecksumMismatch {
                id,
                expected: crc,
                actual: actual_crc,
            });
        }
        if self.existing_matches(id, len, crc)? {
            return Ok(true);
        }

        let tmp_path = self
            .tmp
            .join(format!("{id}.{:016x}", rand::random::<u64>()));
        let mut tmp = TmpFile {
            path: tmp_path.clone(),
            armed: true,
        };
        let ctx = || format!("write {}", tmp_path.display());
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .map_err(io_err(ctx()))?;
        let header = FileHeader {
            len,
            crc,
            segments: segment_count(len),
        };
        file.write_all(&file_prefix(&header, &seg_crcs))
            .map_err(io_err(ctx()))?;
        for chunk in chunks {
            file.write_all(chunk).map_err(io_err(ctx()))?;
        }
        file.sync_all().map_err(io_err(ctx()))?;
        drop(file);

        let path = self.block_path(id);
        // A concurrent put of the same id may publish first; then this one behaves like
        // the idempotent path. Two rounds cover a copy that vanished in between.
        for _ in 0..2 {
            let published = {
                let _guard = self.lock(id);
                match fs::symlink_metadata(&path) {
                    Ok(_) => false,
                    Err(e) if is_not_found(&e) => {
                        fs::rename(&tmp_path, &path)
                            .map_err(io_err(format!("publish {}", path.display())))?;
                        tmp.armed = false;
                        self.count_added(header.file_size());
                        true
                    }
                    Err(e) => return Err(io_err(format!("stat {}", path.display()))(e)),
                }
            };
            if published {
                sync_dir(&self.shard_dir(id.0[0]))?;
                return Ok(false);
            }
            if self.existing_matches(id, len, crc)? {
                return Ok(true);
            }
        }
        Err(BlockError::Busy(id))
    }

    /// Whether `id` is stored intact with this length and crc. An intact copy with other
    /// content is a [`BlockError::Conflict`]; a corrupt copy is quarantined (→ `false`).
    fn existing_matches(&self, id: BlockId, len: u32, crc: u32) -> Result<bool> {
        let path = self.block_path(id);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(io_err(format!("open {}", path.display()))(e)),
        };
        match verify_file(id, &file) {
            Ok(h) if h.len == len && h.crc == crc => {
                // The copy may have been published by a concurrent put that has not yet
                // fsynced the directory; make sure it is durable before acknowledging.
                sync_dir(&self.shard_dir(id.0[0]))?;
                Ok(true)
            }
            Ok(h) => Err(BlockError::Conflict {
                id,
                stored_len: h.len,
                stored_crc: h.crc,
            }),
            Err(e @ BlockError::Corrupt { .. }) => {
                self.quarantine(id, &file, &e);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads `[offset, offset + len)` of block `id` (`len` 0: to the end of the block),
    /// widened to whole segments, each verified against its stored crc32c. A copy that
    /// fails verification is quarantined and reported as [`BlockError::Corrupt`].
    pub async fn get(self: &Arc<Self>, id: BlockId, offset: u32, len: u32) -> Result<BlockRead> {
        self.blocking(move |s| s.get_blocking(id, offset, len))
            .await
    }

    fn get_blocking(&self, id: BlockId, offset: u32, len: u32) -> Result<BlockRead> {
        let path = self.block_path(id);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if is_not_found(&e) => return Err(BlockError::NotFound(id)),
            Err(e) => return Err(io_err(format!("open {}", path.display()))(e)),
        };
        read_range(id, &file, offset, len).inspect_err(|e| {
            if matches!(e, BlockError::Corrupt { .. }) {
                self.quarantine(id, &file, e);
            }
        })
    }

    /// Re-reads block `id` completely and checks every segment and the whole-block crc
    /// (for scrub). A corrupt copy is quarantined and reported as [`BlockError::Corrupt`].
    pub async fn verify(self: &Arc<Self>, id: BlockId) -> Result<BlockRef> {
        self.blocking(move |s| {
            let path = s.block_path(id);
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if is_not_found(&e) => return Err(BlockError::NotFound(id)),
                Err(e) => return Err(io_err(format!("open {}", path.display()))(e)),
            };
            match verify_file(id, &file) {
                Ok(h) => Ok(BlockRef {
                    id,
                    len: h.len,
                    crc: h.crc,
                }),
                Err(e) => {
                    if matches!(e, BlockError::Corrupt { .. }) {
                        s.quarantine(id, &file, &e);
                    }
                    Err(e)
                }
            }
        })
        .await
    }

    /// Moves the corrupt copy `file` of `id` to `quarantine/`, unless the path meanwhile
    /// holds another file (a concurrent quarantine, delete or fresh put). Best effort: a
    /// failure is logged, and as a last resort the copy is deleted so it is not served.
    fn quarantine(&self, id: BlockId, file: &File, reason: &BlockError) {
        let path = self.block_path(id);
        let opened = match file.metadata() {
            Ok(m) => (m.dev(), m.ino()),
            Err(e) => {
                warn!(block = %id, error = %e, "cannot stat corrupt block copy; not quarantined");
                return;
            }
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dest = self.quarantine.join(format!("{id}.{nanos}"));
        {
            let _guard = self.lock(id);
            let current = match fs::symlink_metadata(&path) {
                Ok(m) if (m.dev(), m.ino()) == opened => m,
                _ => return,
            };
            match fs::rename(&path, &dest) {
                Ok(()) => {
                    self.count_removed(current.len());
                    warn!(block = %id, %reason, quarantined = %dest.display(),
                        "corrupt block copy quarantined; this node no longer serves it");
                }
                Err(e) => {
                    warn!(block = %id, %reason, error = %e,
                        "cannot quarantine corrupt block copy; deleting it");
                    match fs::remove_file(&path) {
                        Ok(()) => self.count_removed(current.len()),
                        Err(e) => {
                            warn!(block = %id, error = %e, "cannot delete corrupt block copy");
                            return;
                        }
                    }
                }
            }
        }
        for dir in [self.shard_dir(id.0[0]), self.quarantine.clone()] {
            if let Err(e) = sync_dir(&dir) {
                warn!(block = %id, error = %e, "fsync after quarantine failed");
            }
        }
    }

    /// Which of `ids` this node stores (presence only; content is verified on read).
    /// The ids among `ids` whose copy here was stored more than `age` ago (by the block
    /// file's modification time). Missing copies are left out.
    pub async fn older_than(
        self: &Arc<Self>,
        ids: Vec<BlockId>,
        age: std::time::Duration,
    ) -> Result<Vec<BlockId>> {
        self.blocking(move |s| {
            let now = std::time::SystemTime::now();
            let mut out = Vec::new();
            for id in ids {
                let path = s.block_path(id);
                let modified = match fs::symlink_metadata(&path).and_then(|m| m.modified()) {
                    Ok(t) => t,
                    Err(e) if is_not_found(&e) => continue,
                    Err(e) => return Err(io_err(format!("stat {}", path.display()))(e)),
                };
                // A clock set back makes copies look young: they are kept, never lost.
                if now.duration_since(modified).is_ok_and(|d| d > age) {
                    out.push(id);
                }
            }
            Ok(out)
        })
        .await
    }

    pub async fn has(self: &Arc<Self>, ids: Vec<BlockId>) -> Result<Vec<bool>> {
        self.blocking(move |s| {
            ids.iter()
                .map(|&id| {
                    let path = s.block_path(id);
                    match fs::symlink_metadata(&path) {
                        Ok(_) => Ok(true),
                        Err(e) if is_not_found(&e) => Ok(false),
                        Err(e) => Err(io_err(format!("stat {}", path.display()))(e)),
                    }
                })
                .collect()
        })
        .await
    }

    /// Deletes `ids`; absent ids are skipped, so a repeated delete succeeds. Returns how
    /// many blocks were actually removed, once the removals are durable.
    pub async fn delete(self: &Arc<Self>, ids: Vec<BlockId>) -> Result<u32> {
        self.blocking(move |s| s.delete_blocking(&ids)).await
    }

    fn delete_blocking(&self, ids: &[BlockId]) -> Result<u32> {
        let mut dirty = BTreeSet::new();
        let mut deleted = 0u32;
        let mut failure = None;
        for &id in ids {
            let path = self.block_path(id);
            let _guard = self.lock(id);
            let res = fs::symlink_metadata(&path).and_then(|m| fs::remove_file(&path).map(|()| m));
            match res {
                Ok(meta) => {
                    self.count_removed(meta.len());
                    deleted += 1;
                    dirty.insert(id.0[0]);
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    failure = Some(io_err(format!("delete {}", path.display()))(e));
                    break;
                }
            }
        }
        for shard in dirty {
            sync_dir(&self.shard_dir(shard))?;
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(deleted),
        }
    }

    /// Up to `limit` stored blocks (0: [`DEFAULT_LIST_LIMIT`], capped at
    /// [`MAX_LIST_LIMIT`]) with ids greater than `after`, in id order, with the length and
    /// crc from their headers. Copies whose header is corrupt are quarantined and skipped.
    pub async fn list(
        self: &Arc<Self>,
        after: Option<BlockId>,
        limit: u32,
    ) -> Result<Vec<BlockRef>> {
        self.blocking(move |s| s.list_blocking(after, limit, &|_| true))
            .await
    }

    /// Like [`BlockStore::list`], only blocks of `partitions` (of `partition_count`).
    pub async fn list_partitions(
        self: &Arc<Self>,
        after: Option<BlockId>,
        limit: u32,
        partitions: std::collections::HashSet<u32>,
        partition_count: u32,
    ) -> Result<Vec<BlockRef>> {
        self.blocking(move |s| {
            s.list_blocking(after, limit, &|id: BlockId| {
                partitions.contains(&id.partition(partition_count))
            })
        })
        .await
    }

    fn list_blocking(
        &self,
        after: Option<BlockId>,
        limit: u32,
        keep: &dyn Fn(BlockId) -> bool,
    ) -> Result<Vec<BlockRef>> {
        let limit = match limit {
            0 => DEFAULT_LIST_LIMIT,
            n => n.min(MAX_LIST_LIMIT),
        } as usize;
        let mut out = Vec::new();
        for shard in after.map_or(0, |a| a.0[0])..=255u8 {
            let dir = self.shard_dir(shard);
            let ctx = || format!("list {}", dir.display());
            let mut ids = Vec::new();
            for entry in fs::read_dir(&dir).map_err(io_err(ctx()))? {
                let name = entry.map_err(io_err(ctx()))?.file_name();
                if let Some(id) = name.to_str().and_then(|n| n.parse::<BlockId>().ok()) {
                    if id.0[0] == shard && after.is_none_or(|a| id > a) && keep(id) {
                        ids.push(id);
                    }
                }
            }
            ids.sort_unstable();
            for id in ids {
                if out.len() >= limit {
                    return Ok(out);
                }
                if let Some(block) = self.read_meta(id)? {
                    out.push(block);
                }
            }
        }
        Ok(out)
    }

    /// The header of `id` checked against the file size; `None` when absent or corrupt.
    fn read_meta(&self, id: BlockId) -> Result<Option<BlockRef>> {
        let path = self.block_path(id);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(io_err(format!("open {}", path.display()))(e)),
        };
        match read_header(id, &file) {
            Ok(h) => Ok(Some(BlockRef {
                id,
                len: h.len,
                crc: h.crc,
            })),
            Err(e @ BlockError::Corrupt { .. }) => {
                self.quarantine(id, &file, &e);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

fn corrupt(id: BlockId, reason: impl Into<String>) -> BlockError {
    BlockError::Corrupt {
        id,
        reason: reason.into(),
    }
}

/// Where the bytes of a block file are read from: the file itself, or memory (the fuzz
/// targets decode untrusted bytes with exactly the code that reads files).
pub trait BlockSource {
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()>;
    fn size(&self) -> io::Result<u64>;
}

impl BlockSource for File {
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, pos)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl BlockSource for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        let src = usize::try_from(pos)
            .ok()
            .and_then(|start| self.get(start..start.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

/// Positional read; a short file is corruption, any other failure an I/O error.
fn read_at(
    id: BlockId,
    file: &(impl BlockSource + ?Sized),
    buf: &mut [u8],
    pos: u64,
    what: &str,
) -> Result<()> {
    file.read_exact_at(buf, pos).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            corrupt(id, format!("file too short for its {what}"))
        } else {
            io_err(format!("read block {id} {what}"))(e)
        }
    })
}

fn read_header(id: BlockId, file: &(impl BlockSource + ?Sized)) -> Result<FileHeader> {
    let mut buf = [0u8; HEADER_BYTES as usize];
    read_at(id, file, &mut buf, 0, "header")?;
    let h = FileHeader::decode(&buf).map_err(|reason| corrupt(id, reason))?;
    let size = file.size().map_err(io_err(format!("stat block {id}")))?;
    if size != h.file_size() {
        return Err(corrupt(
            id,
            format!("file is {size} bytes, its header implies {}", h.file_size()),
        ));
    }
    Ok(h)
}

/// Reads `[offset, offset + len)` (`len` 0: to the end) of block file `file`, checking
/// its header against its size and the checksum of every segment it returns. Never
/// trusts the file: anything inconsistent is [`BlockError::Corrupt`].
pub fn read_range(
    id: BlockId,
    file: &(impl BlockSource + ?Sized),
    offset: u32,
    len: u32,
) -> Result<BlockRead> {
    let h = read_header(id, file)?;
    let end = if len == 0 {
        u64::from(h.len)
    } else {
        u64::from(offset) + u64::from(len)
    };
    if offset > h.len || end > u64::from(h.len) {
        return Err(BlockError::OutOfRange {
            id,
            offset,
            len,
            block_len: h.len,
        });
    }
    // `end` ≤ h.len ≤ MAX_BLOCK_SIZE, so it fits in u32.
    let end = end as u32;
    let (first, last) = (offset / SEGMENT_BYTES, end.div_ceil(SEGMENT_BYTES));
    let block = BlockRef {
        id,
        len: h.len,
        crc: h.crc,
    };
    if first >= last {
        let seg_offset = first * SEGMENT_BYTES;
        return Ok(BlockRead {
            block,
            seg_offset,
            data: Bytes::new(),
            seg_crcs: Vec::new(),
        });
    }
    let n = (last - first) as usize;
    let mut crc_buf = vec![0u8; 4 * n];
    read_at(
        id,
        file,
        &mut crc_buf,
        HEADER_BYTES + 4 * u64::from(first),
        "segment checksums",
    )?;
    let seg_crcs: Vec<u32> = crc_buf
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let data_start = first * SEGMENT_BYTES;
    let data_end = (last * SEGMENT_BYTES).min(h.len);
    let mut data = vec![0u8; (data_end - data_start) as usize];
    read_at(
        id,
        file,
        &mut data,
        h.data_offset() + u64::from(data_start),
        "data",
    )?;
    for (i, (seg, &want)) in data
        .chunks(SEGMENT_BYTES as usize)
        .zip(&seg_crcs)
        .enumerate()
    {
        let got = checksum(seg);
        if got != want {
            let at = u64::from(data_start) + (i as u64) * u64::from(SEGMENT_BYTES);
            return Err(corrupt(
                id,
                format!("segment at byte {at} has crc32c {got:#010x}, stored {want:#010x}"),
            ));
        }
    }
    Ok(BlockRead {
        block,
        seg_offset: data_start,
        data: Bytes::from(data),
        seg_crcs,
    })
}

/// Reads and checks a whole block file: header, every segment and the whole-block crc.
fn verify_file(id: BlockId, file: &(impl BlockSource + ?Sized)) -> Result<FileHeader> {
    let read = verified_read(id, file)?;
    Ok(FileHeader {
        len: read.block.len,
        crc: read.block.crc,
        segments: segment_count(read.block.len),
    })
}

/// The whole data of a block file, every segment and the whole-block crc checked.
fn verified_read(id: BlockId, file: &(impl BlockSource + ?Sized)) -> Result<BlockRead> {
    let read = read_range(id, file, 0, 0)?;
    let got = checksum(&read.data);
    if got != read.block.crc {
        return Err(corrupt(
            id,
            format!(
                "whole-block crc32c {got:#010x} differs from the header's {:#010x}",
                read.block.crc
            ),
        ));
    }
    Ok(read)
}

/// What the block service needs from the rest of the node for layout transitions
/// (implemented by `migrate::Hooks`; absent in store-only tests).
#[tonic::async_trait]
pub trait BlockHooks: Send + Sync + 'static {
    /// Admits a put made with `layout_version` (0: unchecked); the returned guard is held
    /// until the block is stored.
    async fn admit_put(&self, layout_version: u64) -> Result<Box<dyn Send + Sync>, Status>;
    /// Waits until listing for a copy under `min_layout_version` is safe.
    async fn before_list(&self, min_layout_version: u64) -> Result<(), Status>;
    /// Copies the missing blocks of some partitions from other nodes.
    async fn pull(&self, req: PullRequest) -> Result<PullReply, Status>;
}

/// The gRPC face of a [`BlockStore`].
#[derive(Clone)]
pub struct BlockServiceImpl {
    store: Arc<BlockStore>,
    hooks: Option<Arc<dyn BlockHooks>>,
    /// [`PUT_READ_DEADLINE`] (shorter in tests).
    put_deadline: Duration,
}

impl std::fmt::Debug for BlockServiceImpl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockServiceImpl")
            .field("store", &self.store.dir())
            .field("hooks", &self.hooks.is_some())
            .finish()
    }
}

impl BlockServiceImpl {
    pub fn new(store: Arc<BlockStore>) -> Self {
        BlockServiceImpl {
            store,
            hooks: None,
            put_deadline: PUT_READ_DEADLINE,
        }
    }
}

/// The block service, ready to add to a tonic server, accepting messages up to
/// [`MAX_MESSAGE_BYTES`].
pub fn server(store: Arc<BlockStore>) -> BlockServiceServer<BlockServiceImpl> {
    BlockServiceServer::new(BlockServiceImpl::new(store))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// [`server`] with the node's layout-transition hooks.
pub fn server_with_hooks(
    store: Arc<BlockStore>,
    hooks: Arc<dyn BlockHooks>,
) -> BlockServiceServer<BlockServiceImpl> {
    BlockServiceServer::new(BlockServiceImpl {
        store,
        hooks: Some(hooks),
        put_deadline: PUT_READ_DEADLINE,
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

fn parse_id(bytes: &[u8], what: &str) -> Result<BlockId, Status> {
    BlockId::from_slice(bytes).ok_or_else(|| {
        Status::invalid_argument(format!("{what} must be 16 bytes, got {}", bytes.len()))
    })
}

fn parse_ids(ids: &[Bytes]) -> Result<Vec<BlockId>, Status> {
    ids.iter()
        .enumerate()
        .map(|(i, b)| parse_id(b, &format!("ids[{i}]")))
        .collect()
}

fn header_msg(block: &BlockRef) -> BlockHeader {
    BlockHeader {
        id: Bytes::copy_from_slice(&block.id.0),
        len: block.len,
        crc32c: block.crc,
        layout_version: 0,
    }
}

/// Splits a verified read into get replies: the header, then data messages of whole
/// segments, each at most [`STREAM_CHUNK_BYTES`].
fn get_replies(read: &BlockRead) -> Vec<Result<GetBlockReply, Status>> {
    let segs_per_msg = (STREAM_CHUNK_BYTES / SEGMENT_BYTES as usize).max(1);
    let mut out = vec![Ok(GetBlockReply {
        part: Some(get_block_reply::Part::Header(header_msg(&read.block))),
    })];
    for (i, crcs) in read.seg_crcs.chunks(segs_per_msg).enumerate() {
        let start = i * segs_per_msg * SEGMENT_BYTES as usize;
        let end = (start + crcs.len() * SEGMENT_BYTES as usize).min(read.data.len());
        out.push(Ok(GetBlockReply {
            part: Some(get_block_reply::Part::Data(SegmentData {
                // start < data.len() ≤ MAX_BLOCK_SIZE, so it fits in u32.
                seg_offset: read.seg_offset + start as u32,
                data: read.data.slice(start..end),
                seg_crc32c: crcs.to_vec(),
            })),
        }));
    }
    out
}

#[tonic::async_trait]
impl BlockService for BlockServiceImpl {
    #[instrument(skip_all, fields(block = field::Empty, len = field::Empty), err)]
    async fn put(
        &self,
        request: Request<Streaming<PutBlockRequest>>,
    ) -> Result<Response<PutBlockReply>, Status> {
        use put_block_request::Part;
        let mut stream = request.into_inner();
        let header = match next_message(&mut stream, self.put_deadline).await? {
            Some(PutBlockRequest {
                part: Some(Part::Header(h)),
            }) => h,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "put stream must start with a header",
                ));
            }
            None => return Err(Status::invalid_argument("empty put stream")),
        };
        let id = parse_id(&header.id, "header.id")?;
        Span::current().record("block", field::display(id));
        Span::current().record("len", header.len);
        if header.len == 0 || header.len > MAX_BLOCK_SIZE {
            return Err(Status::invalid_argument(format!(
                "header.len {} must be between 1 and {MAX_BLOCK_SIZE}",
                header.len
            )));
        }
        let mut chunks = Vec::new();
        let mut total = 0u64;
        while let Some(msg) = next_message(&mut stream, self.put_deadline).await? {
            match msg.part {
                Some(Part::Data(data)) => {
                    total += data.len() as u64;
                    if total > u64::from(header.len) {
                        return Err(Status::invalid_argument(format!(
                            "put stream carries more than header.len = {} bytes",
                            header.len
                        )));
                    }
                    chunks.push(data);
                }
                Some(Part::Header(_)) => {
                    return Err(Status::invalid_argument("put stream has a second header"));
                }
                None => return Err(Status::invalid_argument("put message without a part")),
            }
        }
        if total != u64::from(header.len) {
            return Err(Status::invalid_argument(format!(
                "put stream carried {total} bytes, header.len is {}",
                header.len
            )));
        }
        let _admitted = match &self.hooks {
            Some(h) => Some(h.admit_put(header.layout_version).await?),
            None => None,
        };
        let already_present = self
            .store
            .put(id, header.len, header.crc32c, chunks)
            .await?;
        Ok(Response::new(PutBlockReply { already_present }))
    }

    type GetStream = tokio_stream::Iter<std::vec::IntoIter<Result<GetBlockReply, Status>>>;

    #[instrument(skip_all, fields(block = field::Empty, offset = field::Empty, len = field::Empty),
        err(level = "warn"))]
    async fn get(
        &self,
        request: Request<GetBlockRequest>,
    ) -> Result<Response<Self::GetStream>, Status> {
        let req = request.into_inner();
        let id = parse_id(&req.id, "id")?;
        let span = Span::current();
        span.record("block", field::display(id));
        span.record("offset", req.offset);
        span.record("len", req.len);
        let read = self.store.get(id, req.offset, req.len).await?;
        Ok(Response::new(tokio_stream::iter(get_replies(&read))))
    }

    #[instrument(skip_all, fields(blocks = field::Empty), err)]
    async fn has(
        &self,
        request: Request<HasBlocksRequest>,
    ) -> Result<Response<HasBlocksReply>, Status> {
        let ids = parse_ids(&request.into_inner().ids)?;
        Span::current().record("blocks", ids.len());
        let present = self.store.has(ids).await?;
        Ok(Response::new(HasBlocksReply { present }))
    }

    #[instrument(skip_all, fields(blocks = field::Empty, deleted = field::Empty), err)]
    async fn delete(
        &self,
        request: Request<DeleteBlocksRequest>,
    ) -> Result<Response<DeleteBlocksReply>, Status> {
        let ids = parse_ids(&request.into_inner().ids)?;
        Span::current().record("blocks", ids.len());
        let deleted = self.store.delete(ids).await?;
        Span::current().record("deleted", deleted);
        Ok(Response::new(DeleteBlocksReply { deleted }))
    }

    #[instrument(skip_all, fields(after = field::Empty, limit = field::Empty), err)]
    async fn list(
        &self,
        request: Request<ListBlocksRequest>,
    ) -> Result<Response<ListBlocksReply>, Status> {
        let req = request.into_inner();
        Span::current().record("limit", req.limit);
        let after = if req.after.is_empty() {
            None
        } else {
            let id = parse_id(&req.after, "after")?;
            Span::current().record("after", field::display(id));
            Some(id)
        };
        if req.min_layout_version > 0 {
            if let Some(h) = &self.hooks {
                h.before_list(req.min_layout_version).await?;
            }
        }
        let blocks = if req.partitions.is_empty() {
            self.store.list(after, req.limit).await?
        } else {
            if req.partition_count == 0 {
                return Err(Status::invalid_argument(
                    "partition_count must be set when partitions are given",
                ));
            }
            let set = req.partitions.iter().copied().collect();
            self.store
                .list_partitions(after, req.limit, set, req.partition_count)
                .await?
        };
        Ok(Response::new(ListBlocksReply {
            blocks: blocks.iter().map(header_msg).collect(),
        }))
    }

    #[instrument(skip_all, fields(partitions = request.get_ref().partitions.len()), err)]
    async fn pull(&self, request: Request<PullRequest>) -> Result<Response<PullReply>, Status> {
        match &self.hooks {
            Some(h) => Ok(Response::new(h.pull(request.into_inner()).await?)),
            None => Err(Status::unimplemented(
                "this block service runs without a node and cannot pull",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringfs_client::blocks::{BlockIo, Replica};
    use ringfs_client::{ChannelPool, ClientError};
    use ringfs_proto::block::block_service_client::BlockServiceClient;
    use std::net::SocketAddr;
    use std::time::Duration;
    use tempfile::TempDir;
    use tokio_stream::wrappers::TcpListenerStream;
    use tokio_stream::StreamExt;

    /// Deterministic, non-repeating test content.
    fn content(len: usize, seed: u8) -> Bytes {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
            .collect()
    }

    fn split(data: &Bytes, chunk: usize) -> Vec<Bytes> {
        (0..data.len())
            .step_by(chunk)
            .map(|i| data.slice(i..(i + chunk).min(data.len())))
            .collect()
    }

    async fn put(store: &Arc<BlockStore>, id: BlockId, data: &Bytes) -> Result<bool> {
        store
            .put(id, data.len() as u32, checksum(data), split(data, 100_000))
            .await
    }

    fn files_in(dir: &Path) -> Vec<PathBuf> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    /// Flips one data byte of `id`'s file at block offset `at`.
    fn flip_data_byte(store: &BlockStore, id: BlockId, at: u64) {
        let path = store.block_path(id);
        let mut bytes = fs::read(&path).unwrap();
        let h = FileHeader::decode(bytes[..20].try_into().unwrap()).unwrap();
        bytes[(h.data_offset() + at) as usize] ^= 0x40;
        fs::write(&path, bytes).unwrap();
    }

    #[tokio::test]
    async fn put_then_get_roundtrips() {
        let tmp = TempDir::new().unwrap();
        let store = BlockStore::open(tmp.path()).await.unwrap();
        let id = BlockId::from_u128(0xab01);
        let data = content(3 * SEGMENT_BYTES as usize + 123, 1);
        assert!(!put(&store, id, &data).await.unwrap());
        let read = store.get(id, 0, 0).await.unwrap();
        assert_eq!(
            read.block,
            BlockRef {
                id,
                len: data.len() as u32,
                crc: checksum(&data)
            }
        );
        assert_eq!((read.seg_offset, &read.data), (0, &data));
        assert_eq!(read.seg_crcs.len(), 4);
        assert_eq!(store.stats(), (1, HEADER_BYTES + 16 + data.len() as u64));
        assert_eq!(store.verify(id).await.unwrap(), read.block);
        assert!(files_in(&store.tmp).is_empty());
        // A full 4 MiB block in one chunk.
        let big = content(MAX_BLOCK_SIZE as usize, 2);
        let big_id = BlockId::from_u128(0xcd02);
        store
            .put(big_id, MAX_BLOCK_SIZE, checksum(&big), vec![big.clone()])
            .await
            .unwrap();
        assert_eq!(store.get(big_id, 0, 0).await.unwrap().data, big);
        assert_eq!(store.stats().0, 2);
    }

    /// The in-memory encoder and decoder the fuzz targets use are the put's format:
    /// a stored file is byte-for-byte `encode_block_file`, and it decodes to its data.
    #[tokio::test]
    async fn in_memory_codec_matches_stored_files() {
        let tmp = TempDir::new().unwrap();
        let store = BlockStore::open(tmp.path()).await.unwrap();
        for (n, len) in [(1u128, 1usize), (2, SEGMENT_BYTES as usize), (3, 200_000)] {
            let id = BlockId::from_u128(n);
            let data = content(len, n as u8);
            put(&store, id, &data).await.unwrap();
            let file = fs::read(store.block_path(id)).unwrap();
            assert_eq!(encode_block_file(&data).as_deref(), Some(&file[..]));
            assert_eq!(decode_block_file(id, &file).unwrap().data, data);
            let mut cut = file.clone();
            cut.pop();
            assert!(matches!(
                decode_block_file(id, &cut),
                Err(BlockError::Corrupt { .. })
            ));
        }
        assert_eq!(encode_block_file(&[]), None);
    }

    #[tokio::test]
    async fn put_is_idempotent_and_refuses_other_content() {
        let tmp = TempDir::new().unwrap();
        let store = BlockStore::open(tmp.path()).await.unwrap();
        let id = BlockId::from_u128(7);
        let data = content(1000, 3);
        assert!(!put(&store, id, &data).await.unwrap());
        let stats = store.stats();
        assert!(put(&store, id, &data).await.unwrap());
        assert_eq!(store.stats(), stats);
        let other = content(1000, 4);
        let err = put(&store, id, &other).await.unwrap_err();
        assert!(matches!(err, BlockError::Conflict { .. }), "{err}");
        assert_eq!(store.get(id, 0, 0).await.unwrap().data, data);
        assert!(files_in(&store.tmp).is_empty());
    }

    #[tokio::test]
    async fn concurrent_puts_of_one_block_count_it_once() {
        let tmp = TempDir::new().unwrap();
        let store = BlockStore::open(tmp.path()).await.unwrap();
        let id = BlockId::from_u128(8);
        let data = content(200_000, 5);
        let puts: Vec<_> = (0..8).map(|_| put(&store, id, &data)).collect();
        let results = futures::future::join_all(puts).await;
        let fresh = results
            .into_iter()
            .filter(|r| !*r.as_ref().unwrap())
            .count();
        assert_eq!(fresh, 1);
        assert_eq!(store.stats().0, 1);
        assert!(files_in(&store.tmp).is_empty());
    }

    #[tokio::test]
    async fn mismatched_puts_are_refused_and_leave_nothing() {
        let tmp = TempDir::new().unwrap();
        let store = BlockStore::open(tmp.path()).await.unwrap();
        let id = BlockId::from_u128(9);
        let data = content(70_000, 6);
        let len = data.len() as u32;
        let crc = checksum(&data);
        let chunks = split(&data, 4096);
        let err = store
            .put(id, len, crc ^ 1, chunks.clone())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        let err = store
            .put(id, len + 1, crc, chunks.clone())
            .await
            .unwrap_err();
        assert!(matches!(err, BlockError::LengthMismatch { .. }), "{err}");
        let err = store.put(id, 0, 0, Vec::new()).await.unwrap_err();
        assert!(matches!(err, BlockError::Empty(_)), "{err}");
        let big = vec![Bytes::from(vec![0u8; MAX_BLOCK_SIZE as usize + 1])];
        let err = store.put(id, MAX_BLOCK_SIZE + 1, 0, big).await.unwrap_err();
        assert!(matches!(err, BlockError::TooLarge { .. }), "{err}");
        assert!(matches!(
            store.get(id, 0, 0).await,
            Err(BlockError::NotFound(_))
        ));
        assert_eq!(store.has(vec![id]).await.unwrap(), vec![false]);
        assert!(files_in(&store.tmp).is_empty());
        assert!(files_in(&store.shard_dir(0)).is_empty());
        assert_eq!(store.stats(), (0, 0));
    }

    #[tokio::test]
    async fn corrupt_copy_is_detected_and_quarantined() {
        let tmp = TempDir::new().unwrap();
        let store = BlockStore::open(tmp.path()).await.unwrap();
        let id = BlockId::from_u128(10);
        let data = content(3 * SEGMENT_BYTES as usize, 7);
        put(&store, id, &data).await.unwrap();
        flip_data_byte(&store, id, u64::from(SEGMENT_BYTES) + 5);
        // Segments that are not touched still verify: a ranged read only checks its own.
        let read = store.get(id, 2 * SEGMENT_BYTES, 10).await.unwrap();
        assert_eq!(
            read.range(2 * SEGMENT_BYTES, 10).unwrap(),
            data.slice(131_072..131_082)
        );
        let err = store.get(id, SEGMENT_BYTES - 1, 2).await.unwrap_err();
        assert!(matches!(err, BlockError::Corrupt { .. }), "{err}");
        assert_eq!(Status::from(err).code(), tonic::Code::DataLoss);
        assert_eq!(store.has(vec![id]).await.unwrap(), vec![false]);
        assert!(matches!(
            store.get(id, 0, 0).await,
            Err(BlockError::NotFound(_))
        ));
        assert_eq!(store.stats(), (0, 0));
        let quarantined = files_in(&store.quarantine);
        assert_eq!(quarantined.len(), 1);
        assert!(quarantined[0]
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(&id.to_string()));
        // The block can be written again from a good replica.
        assert!(!put(&store, id, &data).await.unwrap());
        assert_eq!(store.get(id, 0, 0).await.unwrap().data, data);
    }

    #[tokio::test]
    async fn corrupt_headers_and_truncation_are_detected() {
        let tmp = TempDir::new().unwrap();
        let store = BlockStore::open(tmp.path()).await.unwrap();
        let (a, b, c) = (
            BlockId::from_u128(11),
            BlockId::from_u128(12),
            BlockId::from_u128(13),
        );
        let data = content(5000, 8);
        for id in [a, b, c] {
            put(&store, id, &data).await.unwrap();
        }
        // Truncated file.
        let f = OpenOptions::new()
            .write(true)
            .open(store.block_path(a))
            .unwrap();
        f.set_len(100).unwrap();
        assert!(matches!(
            store.get(a, 0, 1).await,
            Err(BlockError::Corrupt { .. })
        ));
        // Garbled length in the header: caught by list, which skips and quarantines it.
        let mut bytes = fs::read(store.block_path(b)).unwrap();
        bytes[9] ^= 1;
        fs::write(store.block_path(b), bytes).unwrap();
        let listed = store.list(None, 0).await.unwrap();
        assert_eq!(
            listed,
            vec![BlockRef {
                id: c,
                len: 5000,
                crc: checksum(&data)
            }]
        );
        // A flipped whole-block crc is only visible to a full verification.
        let mut bytes = fs::read(store.block_path(c)).unwrap();
        bytes[12] ^= 1;
        fs::write(store.block_path(c), bytes).unwrap();
        assert!(store.get(c, 0, 0).await.is_ok());
        assert!(matches!(
            store.verify(c).await,
            Err(BlockError::Corrupt { .. })
        ));
        assert_eq!(files_in(&store.quarantine).len(), 3);
        // Bytes are off by what the truncation removed; only blocks are exact here.
        assert_eq!(store.stats().0, 0);
    }

    #[tokio::test]
    async fn partial_reads_return_covering_segments() {
        let tmp = TempDir::new().unwrap();
        let store = BlockStore::open(tmp.path()).await.unwrap();
        let id = BlockId::from_u128(14);
        let data = content(5 * SEGMENT_BYTES as usize + 777, 9);
        put(&store, id, &data).await.unwrap();
        let seg = SEGMENT_BYTES;
        let total = data.len() as u32;
        for (off, len) in [
            (0, 1),
            (1, 1),
            (seg - 1, 2),
            (seg, seg),
            (12_345, 3 * seg + 17),
            (total - 1, 1),
            (total - 777, 777),
            (5 * seg + 1, 0),
            (3 * seg + 99, 0),
            (total, 0),
        ] {
            let read = store.get(id, off, len).await.unwrap();
            let end = if len == 0 { total } else { off + len };
            assert_eq!(read.seg_offset, off / seg * seg, "{off} {len}");
            assert_eq!(read.seg_offset % seg, 0);
            let seg_end = (read.seg_offset as usize + read.data.len()) as u32;
            let misalign = if seg_end == total { 0 } else { seg_end % seg };
            assert_eq!(misalign, 0, "{off} {len}");
            assert!(seg_end >= end);
            let want: Vec<u32> = read.data.chunks(seg as usize).map(checksum).collect();
            assert_eq!(read.seg_crcs, want);
            assert_eq!(
                read.range(off, end - off).unwrap(),
                data.slice(off as usize..end as usize)
            );
        }
        for (off, len) in [(total + 1, 0), (total, 1), (10, total)] {
            let err = store.get(id, off, len).await.unwrap_err();
            assert!(
                matches!(err, BlockError::OutOfRange { .. }),
                "{off} {len}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn delete_is_idempotent() {
        let tmp = TempDir::new().unwrap();
        let store = BlockStore::open(tmp.path()).await.unwrap();
        let ids: Vec<BlockId> = (0..4u128)
            .map(|i| BlockId::from_u128(i << 120 | 15))
            .collect();
        for (i, &id) in ids.iter().enumerate() {
            put(&store, id, &content(100 + i, 10)).await.unwrap();
        }
        assert_eq!(store.delete(vec![ids[0], ids[1]]).await.unwrap(), 2);
        assert_eq!(store.delete(vec![ids[0], ids[1]]).await.unwrap(), 0);
        assert_eq!(
            store.has(ids.clone()).await.unwrap(),
            vec![false, false, true, true]
        );
        assert_eq!(store.delete(ids.clone()).await.unwrap(), 2);
        assert_eq!(store.delete(Vec::new()).await.unwrap(), 0);
        assert_eq!(store.stats(), (0, 0));
    }

    #[tokio::test]
    async fn list_is_ordered_and_pages() {
        let tmp = TempDir::new().unwrap();
        let store = BlockStore::open(tmp.path()).await.unwrap();
        // Spread over several shards, inserted out of order.
        let mut ids: Vec<BlockId> = [0xff, 0x00, 0x7f, 0x00, 0x80, 0x7f, 0x01]
            .iter()
            .enumerate()
            .map(|(i, &shard)| BlockId::from_u128((shard as u128) << 120 | (1000 - i as u128)))
            .collect();
        for &id in &ids {
            put(&store, id, &content(10, id.0[15])).await.unwrap();
        }
        ids.sort();
        let all = store.list(None, 0).await.unwrap();
        assert_eq!(all.iter().map(|b| b.id).collect::<Vec<_>>(), ids);
        assert!(all.iter().all(|b| b.len == 10));
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = store.list(after, 3).await.unwrap();
            assert!(page.len() <= 3);
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            paged.extend(page);
        }
        assert_eq!(paged, all);
        assert!(store.list(Some(ids[6]), 10).await.unwrap().is_empty());
        // `after` need not be stored itself.
        let mid = BlockId::from_u128(0x7f << 120);
        let tail = store.list(Some(mid), 10).await.unwrap();
        assert_eq!(tail.iter().map(|b| b.id).collect::<Vec<_>>(), ids[3..]);
    }

    #[tokio::test]
    async fn open_cleans_tmp_and_counts_blocks() {
        let tmp = TempDir::new().unwrap();
        let store = BlockStore::open(tmp.path()).await.unwrap();
        let data = content(1234, 11);
        put(&store, BlockId::from_u128(16), &data).await.unwrap();
        put(&store, BlockId::from_u128(17 << 120), &data)
            .await
            .unwrap();
        let stats = store.stats();
        let leftover = store
            .tmp
            .join(format!("{}.0123456789abcdef", BlockId::from_u128(18)));
        fs::write(&leftover, b"half a block").unwrap();
        fs::create_dir(store.tmp.join("junk")).unwrap();
        drop(store);
        let store = BlockStore::open(tmp.path()).await.unwrap();
        assert!(files_in(&store.tmp).is_empty());
        assert_eq!(store.stats(), stats);
        assert_eq!(stats.0, 2);
    }

    // ---- the gRPC service, directly and through the client ----

    async fn serve<S>(svc: BlockServiceServer<S>) -> SocketAddr
    where
        S: BlockService,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        addr
    }

    struct Node {
        _dir: TempDir,
        store: Arc<BlockStore>,
        replica: Replica,
    }

    async fn start_node(node: u64) -> Node {
        let dir = TempDir::new().unwrap();
        let store = BlockStore::open(dir.path()).await.unwrap();
        let addr = serve(server(store.clone())).await;
        Node {
            _dir: dir,
            store,
            replica: Replica {
                node,
                addr: addr.to_string(),
            },
        }
    }

    /// A replica address nothing listens on.
    fn down(node: u64) -> Replica {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        Replica { node, addr }
    }

    fn block_io() -> BlockIo {
        BlockIo::new(ChannelPool::new()).with_timeout(Duration::from_secs(10))
    }

    fn put_msgs(parts: Vec<put_block_request::Part>) -> Vec<PutBlockRequest> {
        parts
            .into_iter()
            .map(|p| PutBlockRequest { part: Some(p) })
            .collect()
    }

    /// A put stream that stops sending is ended after the read deadline (it holds a
    /// call and buffered chunks), with an error that says so.
    #[tokio::test]
    async fn a_stalled_put_stream_is_ended() {
        use put_block_request::Part;
        let dir = TempDir::new().unwrap();
        let store = BlockStore::open(dir.path()).await.unwrap();
        let svc = BlockServiceImpl {
            put_deadline: Duration::from_millis(300),
            ..BlockServiceImpl::new(store)
        };
        let addr = serve(BlockServiceServer::new(svc)).await;
        let mut client = BlockServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let data = content(1000, 3);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(PutBlockRequest {
            part: Some(Part::Header(BlockHeader {
                id: Bytes::copy_from_slice(&BlockId::from_u128(3).0),
                len: 1000,
                crc32c: checksum(&data),
                layout_version: 0,
            })),
        })
        .await
        .unwrap();
        tx.send(PutBlockRequest {
            part: Some(Part::Data(data.slice(..100))),
        })
        .await
        .unwrap();
        // `tx` stays open and silent: the stream neither ends nor sends.
        let started = std::time::Instant::now();
        let res = tokio::time::timeout(
            Duration::from_secs(20),
            client.put(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await
        .expect("the node ended the stalled stream");
        let err = res.expect_err("a stalled put succeeded");
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err}");
        assert!(err.message().contains("sent nothing"), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        drop(tx);
    }

    #[tokio::test]
    async fn put_stream_is_validated() {
        use put_block_request::Part;
        let node = start_node(1).await;
        let mut client = BlockServiceClient::connect(format!("http://{}", node.replica.addr))
            .await
            .unwrap();
        let data = content(1000, 12);
        let header = |id: &[u8], len: u32, crc: u32| {
            Part::Header(BlockHeader {
                id: Bytes::copy_from_slice(id),
                len,
                crc32c: crc,
                layout_version: 0,
            })
        };
        let id = BlockId::from_u128(19);
        let (len, crc) = (data.len() as u32, checksum(&data));
        let cases: Vec<(Vec<Part>, tonic::Code, &str)> = vec![
            (vec![], tonic::Code::InvalidArgument, "empty put stream"),
            (
                vec![Part::Data(data.clone())],
                tonic::Code::InvalidArgument,
                "start with a header",
            ),
            (
                vec![header(&[1; 15], len, crc)],
                tonic::Code::InvalidArgument,
                "16 bytes",
            ),
            (
                vec![header(&id.0, MAX_BLOCK_SIZE + 1, crc)],
                tonic::Code::InvalidArgument,
                "header.len",
            ),
            (
                vec![header(&id.0, len, crc), Part::Data(data.slice(..500))],
                tonic::Code::InvalidArgument,
                "carried 500 bytes",
            ),
            (
                vec![
                    header(&id.0, len, crc),
                    Part::Data(data.clone()),
                    Part::Data(data.slice(..1)),
                ],
                tonic::Code::InvalidArgument,
                "more than header.len",
            ),
            (
                vec![header(&id.0, len, crc), header(&id.0, len, crc)],
                tonic::Code::InvalidArgument,
                "second header",
            ),
            (
                vec![header(&id.0, len, crc ^ 1), Part::Data(data.clone())],
                tonic::Code::InvalidArgument,
                "checksum mismatch",
            ),
        ];
        for (parts, code, text) in cases {
            let status = client
                .put(tokio_stream::iter(put_msgs(parts)))
                .await
                .unwrap_err();
            assert_eq!(status.code(), code, "{status:?}");
            assert!(
                status.message().contains(text),
                "{text:?} not in {status:?}"
            );
        }
        assert_eq!(node.store.stats(), (0, 0));
        let ok = vec![
            header(&id.0, len, crc),
            Part::Data(data.slice(..1)),
            Part::Data(data.slice(1..)),
        ];
        let reply = client
            .put(tokio_stream::iter(put_msgs(ok.clone())))
            .await
            .unwrap();
        assert!(!reply.into_inner().already_present);
        let reply = client.put(tokio_stream::iter(put_msgs(ok))).await.unwrap();
        assert!(reply.into_inner().already_present);
        let status = client
            .get(GetBlockRequest {
                id: id_bytes(BlockId::from_u128(20)),
                offset: 0,
                len: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound);
    }

    fn id_bytes(id: BlockId) -> Bytes {
        Bytes::copy_from_slice(&id.0)
    }

    #[tokio::test]
    async fn get_streams_whole_segments_in_bounded_messages() {
        let node = start_node(1).await;
        let mut client = BlockServiceClient::connect(format!("http://{}", node.replica.addr))
            .await
            .unwrap()
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let id = BlockId::from_u128(21);
        let data = content(MAX_BLOCK_SIZE as usize - 5, 13);
        put(&node.store, id, &data).await.unwrap();
        let req = GetBlockRequest {
            id: id_bytes(id),
            offset: 100,
            len: 0,
        };
        let mut stream = client.get(req).await.unwrap().into_inner();
        let first = stream.next().await.unwrap().unwrap();
        let Some(get_block_reply::Part::Header(h)) = first.part else {
            panic!("{first:?}")
        };
        assert_eq!((h.len, h.crc32c), (data.len() as u32, checksum(&data)));
        let mut got = Vec::new();
        while let Some(msg) = stream.next().await {
            let Some(get_block_reply::Part::Data(seg)) = msg.unwrap().part else {
                panic!()
            };
            assert!(seg.data.len() <= STREAM_CHUNK_BYTES);
            assert_eq!(seg.seg_offset as usize, got.len());
            assert_eq!(
                seg.seg_crc32c.len(),
                seg.data.len().div_ceil(SEGMENT_BYTES as usize)
            );
            got.extend_from_slice(&seg.data);
        }
        assert_eq!(got, data);
        let reply = client.has(HasBlocksRequest {
            ids: vec![id_bytes(id), id_bytes(BlockId::from_u128(1))],
        });
        assert_eq!(reply.await.unwrap().into_inner().present, vec![true, false]);
        let status = client
            .has(HasBlocksRequest {
                ids: vec![Bytes::from_static(b"short")],
            })
            .await;
        assert_eq!(status.unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn client_put_reaches_quorum_with_one_node_down() {
        let (a, b) = (start_node(1).await, start_node(2).await);
        let replicas = vec![a.replica.clone(), down(3), b.replica.clone()];
        let io = block_io();
        let id = BlockId::from_u128(22);
        let data = content(2 * STREAM_CHUNK_BYTES + 99, 14);
        let block = io.put(&replicas, id, data.clone(), 2).await.unwrap();
        assert_eq!(
            block,
            BlockRef {
                id,
                len: data.len() as u32,
                crc: checksum(&data)
            }
        );
        for n in [&a, &b] {
            assert_eq!(n.store.get(id, 0, 0).await.unwrap().data, data);
        }
        // A retry is idempotent.
        assert_eq!(io.put(&replicas, id, data.clone(), 2).await.unwrap(), block);
        assert_eq!(io.get(&replicas, &block, 0, 0).await.unwrap(), data);
        assert_eq!(
            io.has(&a.replica.addr, &[id, BlockId::from_u128(1)])
                .await
                .unwrap(),
            vec![true, false]
        );
        assert_eq!(
            io.list(&a.replica.addr, None, 0).await.unwrap(),
            vec![block]
        );
        assert_eq!(io.delete(&a.replica.addr, &[id]).await.unwrap(), 1);
        assert_eq!(io.delete(&a.replica.addr, &[id]).await.unwrap(), 0);
        assert!(io.take_bad_copies().is_empty());
    }

    #[tokio::test]
    async fn client_put_fails_without_quorum() {
        let (a, b) = (start_node(1).await, start_node(2).await);
        let replicas = vec![a.replica.clone(), b.replica.clone(), down(3)];
        let io = block_io();
        let id = BlockId::from_u128(23);
        let err = io
            .put(&replicas, id, content(5000, 15), 3)
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ClientError::Blocks(_)), "{msg}");
        assert!(
            msg.contains("2 of [1, 2, 3] stored it") && msg.contains("node 3"),
            "{msg}"
        );
        // Every write finished before put returned: nothing is still in flight.
        assert_eq!(a.store.stats().0, 1);
        assert_eq!(b.store.stats().0, 1);
    }

    #[tokio::test]
    async fn client_get_fails_over_from_a_corrupt_copy_and_reports_it() {
        let nodes = [
            start_node(1).await,
            start_node(2).await,
            start_node(3).await,
        ];
        let replicas: Vec<Replica> = nodes.iter().map(|n| n.replica.clone()).collect();
        let io = block_io();
        let id = BlockId::from_u128(24);
        let data = content(3 * SEGMENT_BYTES as usize + 1, 16);
        let block = io.put(&replicas, id, data.clone(), 3).await.unwrap();
        flip_data_byte(&nodes[0].store, id, 70_000);
        let got = io.get(&replicas, &block, 65_000, 10_000).await.unwrap();
        assert_eq!(got, data.slice(65_000..75_000));
        assert_eq!(io.take_bad_copies(), vec![(1, id)]);
        assert_eq!(nodes[0].store.has(vec![id]).await.unwrap(), vec![false]);
        // The quarantined copy now reads as missing, which is reported too.
        assert_eq!(io.get(&replicas, &block, 0, 0).await.unwrap(), data);
        assert_eq!(io.take_bad_copies(), vec![(1, id)]);
    }

    #[tokio::test]
    async fn client_get_fails_when_every_copy_is_corrupt() {
        let nodes = [
            start_node(1).await,
            start_node(2).await,
            start_node(3).await,
        ];
        let replicas: Vec<Replica> = nodes.iter().map(|n| n.replica.clone()).collect();
        let io = block_io();
        let id = BlockId::from_u128(25);
        let data = content(100_000, 17);
        let block = io.put(&replicas, id, data, 2).await.unwrap();
        for n in &nodes {
            flip_data_byte(&n.store, id, 99_999);
        }
        let err = io.get(&replicas, &block, 0, 0).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ClientError::Blocks(_)), "{msg}");
        assert!(
            ["node 1", "node 2", "node 3"]
                .iter()
                .all(|n| msg.contains(n)),
            "{msg}"
        );
        let mut bad = io.take_bad_copies();
        bad.sort();
        assert_eq!(bad, vec![(1, id), (2, id), (3, id)]);
    }

    #[tokio::test]
    async fn client_get_rejects_a_copy_that_differs_from_metadata() {
        let nodes = [start_node(1).await, start_node(2).await];
        let io = block_io();
        let id = BlockId::from_u128(26);
        let good = content(5000, 18);
        let block = io
            .put(&[nodes[1].replica.clone()], id, good.clone(), 1)
            .await
            .unwrap();
        // Node 1 holds a self-consistent block with the same id but other content.
        io.put(&[nodes[0].replica.clone()], id, content(5000, 19), 1)
            .await
            .unwrap();
        let replicas: Vec<Replica> = nodes.iter().map(|n| n.replica.clone()).collect();
        assert_eq!(io.get(&replicas, &block, 0, 0).await.unwrap(), good);
        assert_eq!(io.take_bad_copies(), vec![(1, id)]);
    }

    /// Serves the real store with one fault: `Garble` damages get data on the wire,
    /// after the node computed its segment crcs (only the client's end-to-end check can
    /// catch it); `RefuseStale` refuses every put the way a node that applied a newer
    /// layout does.
    #[derive(Clone, Copy)]
    enum Fault {
        Garble,
        RefuseStale,
    }

    struct Faulty(BlockServiceImpl, Fault);

    #[tonic::async_trait]
    impl BlockService for Faulty {
        async fn put(
            &self,
            r: Request<Streaming<PutBlockRequest>>,
        ) -> Result<Response<PutBlockReply>, Status> {
            if let Fault::RefuseStale = self.1 {
                return Err(Status::failed_precondition(format!(
                    "{}: the write used layout version 4 but this node has \
                     applied version 5; refresh the layout and retry",
                    ringfs_client::blocks::STALE_LAYOUT
                )));
            }
            self.0.put(r).await
        }
        type GetStream = tokio_stream::Iter<std::vec::IntoIter<Result<GetBlockReply, Status>>>;
        async fn get(
            &self,
            r: Request<GetBlockRequest>,
        ) -> Result<Response<Self::GetStream>, Status> {
            let mut msgs: Vec<_> = self.0.get(r).await?.into_inner().collect().await;
            if let (
                Fault::Garble,
                Some(Ok(GetBlockReply {
                    part: Some(get_block_reply::Part::Data(seg)),
                })),
            ) = (self.1, msgs.last_mut())
            {
                let mut bytes = seg.data.to_vec();
                bytes[0] ^= 1;
                seg.data = bytes.into();
            }
            Ok(Response::new(tokio_stream::iter(msgs)))
        }
        async fn has(
            &self,
            r: Request<HasBlocksRequest>,
        ) -> Result<Response<HasBlocksReply>, Status> {
            self.0.has(r).await
        }
        async fn delete(
            &self,
            r: Request<DeleteBlocksRequest>,
        ) -> Result<Response<DeleteBlocksReply>, Status> {
            self.0.delete(r).await
        }
        async fn list(
            &self,
            r: Request<ListBlocksRequest>,
        ) -> Result<Response<ListBlocksReply>, Status> {
            self.0.list(r).await
        }
        async fn pull(&self, r: Request<PullRequest>) -> Result<Response<PullReply>, Status> {
            self.0.pull(r).await
        }
    }

    /// A node serving `fault`; the directory lives as long as the returned guard.
    async fn start_faulty(node: u64, fault: Fault) -> (Replica, TempDir) {
        let dir = TempDir::new().unwrap();
        let store = BlockStore::open(dir.path()).await.unwrap();
        let replica = Replica {
            node,
            addr: serve(BlockServiceServer::new(Faulty(
                BlockServiceImpl::new(store),
                fault,
            )))
            .await
            .to_string(),
        };
        (replica, dir)
    }

    /// A replica that refuses a put because it applied a newer layout makes the write
    /// stale even when the other replicas met the quorum: that replica owns the block
    /// under the newer layout too, and the writer must refresh and write again so the
    /// copy is not left missing. On the last attempt a met quorum is accepted.
    #[tokio::test]
    async fn stale_refusal_fails_a_put_that_met_its_quorum() {
        let (a, b) = (start_node(1).await, start_node(2).await);
        let (stale, _dir) = start_faulty(3, Fault::RefuseStale).await;
        let replicas = vec![a.replica.clone(), b.replica.clone(), stale];
        let quorums = [(vec![1, 2, 3], 2)];
        let io = block_io();
        let id = BlockId::from_u128(31);
        let data = content(5000, 21);
        let err = io
            .put_quorums(&replicas, &quorums, 4, false, id, data.clone())
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::StaleLayout(_)), "{err}");
        let block = io
            .put_quorums(&replicas, &quorums, 4, true, id, data.clone())
            .await
            .unwrap();
        assert_eq!(block.len as usize, data.len());
        for n in [&a, &b] {
            assert_eq!(n.store.get(id, 0, 0).await.unwrap().data, data);
        }
        // Without a quorum the result stays stale whatever the flag says.
        let lone = [(vec![1, 2, 3], 3)];
        let err = io
            .put_quorums(&replicas, &lone, 4, true, id, data)
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::StaleLayout(_)), "{err}");
    }

    #[tokio::test]
    async fn client_detects_corruption_in_transit() {
        let dir = TempDir::new().unwrap();
        let store = BlockStore::open(dir.path()).await.unwrap();
        let garbling = Replica {
            node: 1,
            addr: serve(BlockServiceServer::new(Faulty(
                BlockServiceImpl::new(store),
                Fault::Garble,
            )))
            .await
            .to_string(),
        };
        let good = start_node(2).await;
        let replicas = vec![garbling, good.replica.clone()];
        let io = block_io();
        let id = BlockId::from_u128(27);
        let data = content(2 * SEGMENT_BYTES as usize, 20);
        let block = io.put(&replicas, id, data.clone(), 2).await.unwrap();
        assert_eq!(
            io.get(&replicas, &block, 1, 2 * SEGMENT_BYTES - 2)
                .await
                .unwrap(),
            data.slice(1..data.len() - 1)
        );
        assert_eq!(io.take_bad_copies(), vec![(1, id)]);
        let err = io.get(&replicas[..1], &block, 0, 0).await.unwrap_err();
        assert!(err.to_string().contains("crc32c"), "{err}");
    }
}
