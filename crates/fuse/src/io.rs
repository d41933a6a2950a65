//! Block upload and chunk reads for the mount, on top of [`Vol`]'s cluster connection.
//!
//! The write path uploads immutable blocks to a write quorum of their replicas *before*
//! committing the slices that reference them, so a committed slice never points at a
//! block that is not durable. Blocks of a commit the cluster refused are deleted
//! best-effort; blocks of a commit whose outcome is unknown are kept (it may have
//! committed); the cluster's orphan sweep removes unreferenced ones after a grace period.

use bytes::{Bytes, BytesMut};
use futures::stream::{self, StreamExt, TryStreamExt};
use ringfs_client::cluster::LayoutView;
use ringfs_client::files::{DOWNLOAD_PARALLELISM, UPLOAD_PARALLELISM};
use ringfs_client::{ClientError, Result, Vol};
use ringfs_core::compact::{self, COMPACT_THRESHOLD};
use ringfs_core::fs::{Attr, ChunkSlice, FsOp, FsReply};
use ringfs_core::slice::{resolve, BlockRef, Piece, Slice, CHUNK_SIZE, MAX_BLOCK_SIZE};
use ringfs_core::{BlockId, Ino};
use std::collections::HashMap;
use std::sync::Arc;

fn expect_attr(r: FsReply) -> Result<Attr> {
    match r {
        FsReply::Attr(a) => Ok(a),
        other => Err(ClientError::Protocol(format!(
            "expected attributes, got {other:?}"
        ))),
    }
}

/// Uploads `blocks` (each at most [`MAX_BLOCK_SIZE`]) to a write quorum of their
/// replicas, in order.
pub async fn upload(vol: &Vol, blocks: Vec<Bytes>) -> Result<Vec<BlockRef>> {
    let rf = vol.replication as usize;
    stream::iter(blocks.into_iter().map(|data| async move {
        let id = BlockId::from_u128(rand::random());
        vol.cluster.put_block(id, data, rf).await
    }))
    .buffered(UPLOAD_PARALLELISM)
    .try_collect()
    .await
}

/// Deletes the blocks of a commit that failed with `e`, when `e` says the commit was
/// certainly not applied. On an unknown outcome (the reply was lost, the retries ran out)
/// the commit may have happened and the namespace may reference them: they stay, and the
/// orphan sweep removes them after its grace period if nothing does.
pub async fn discard_refused(vol: &Vol, e: &ClientError, refs: &[BlockRef]) {
    if e.not_applied() {
        discard(vol, refs).await;
    } else {
        tracing::warn!(
            blocks = refs.len(),
            error = %e,
            "commit outcome unknown: its blocks are kept (the orphan sweep removes them if unreferenced)"
        );
    }
}

/// Deletes blocks that were uploaded but never committed (best effort).
pub async fn discard(vol: &Vol, refs: &[BlockRef]) {
    let Ok(view) = vol.cluster.layout().await else {
        return;
    };
    let ids: Vec<BlockId> = refs.iter().map(|b| b.id).collect();
    for addr in view.addrs.values() {
        let _ = vol.cluster.io.delete(addr, &ids).await;
    }
}

fn split_blocks(data: Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let n = rest.len().min(MAX_BLOCK_SIZE as usize);
        out.push(rest.split_to(n));
    }
    out
}

/// Uploads positional extents and commits them in one [`FsOp::Write`]. Returns the
/// file's attributes after the commit.
///
/// The extents' bytes are packed back to back into as few blocks as possible (random
/// 4 KiB writes would otherwise cost one block, one upload and one file per write);
/// each slice then names the blocks holding its bytes and where in them it starts.
/// Chunks being compacted now, shared with the background compaction so that one chunk
/// is never compacted twice at once.
pub type Compacting = std::sync::Mutex<std::collections::HashSet<(Ino, u64)>>;

pub async fn commit_extents(
    vol: &Vol,
    cache: &BlockCache,
    compacting: &Compacting,
    ino: Ino,
    extents: &[(u64, Vec<u8>)],
) -> Result<Attr> {
    // (chunk, pos in chunk, len, offset in the packed stream) per slice.
    let mut layout = Vec::new();
    let mut packed = BytesMut::new();
    let mut min_size = 0u64;
    for (off, data) in extents {
        let off = *off;
        let len = data.len() as u64;
        min_size = min_size.max(off + len);
        let mut p = 0u64;
        while p < len {
            let abs = off + p;
            let pos = abs % CHUNK_SIZE;
            let n = (CHUNK_SIZE - pos).min(len - p);
            layout.push((
                abs / CHUNK_SIZE,
                pos as u32,
                n as u32,
                packed.len() as u64 + p,
            ));
            p += n;
        }
        packed.extend_from_slice(data);
    }
    let refs = upload(vol, split_blocks(packed.freeze()))
        .await
        .map_err(|e| ClientError::NotCommitted(Box::new(e)))?;
    let slices: Vec<ChunkSlice> = layout
        .into_iter()
        .map(|(chunk, pos, len, start)| {
            let (skip, blocks) = blocks_for(&refs, start, u64::from(len));
            ChunkSlice {
                chunk,
                slice: Slice {
                    pos,
                    len,
                    skip,
                    blocks,
                },
            }
        })
        .collect();
    let chunks: std::collections::BTreeSet<u64> = slices.iter().map(|s| s.chunk).collect();
    let op = FsOp::Write {
        ino,
        slices,
        min_size,
    };
    // Small random writes can outrun the background compaction until a chunk holds the
    // most slices the state machine accepts: then the writer compacts the chunk itself
    // and retries (back-pressure), instead of failing the application's write.
    let mut attempt = 0u32;
    loop {
        match vol.fs(op.clone()).await {
            Ok(r) => return expect_attr(r),
            Err(e) if too_many_slices(&e) && attempt < MAX_COMPACT_RETRIES => {
                attempt += 1;
                tracing::debug!(
                    ino,
                    attempt,
                    "chunk full of slices: compacting before retrying"
                );
                for &c in &chunks {
                    // Wait out a background compaction of the chunk, then compact it here.
                    let mut waited = 0;
                    while !compacting
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert((ino, c))
                    {
                        if waited >= 3000 {
                            break;
                        }
                        waited += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                    let res = compact_chunk(vol, cache, ino, c).await;
                    compacting
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&(ino, c));
                    if let Err(ce) = res {
                        tracing::warn!(ino, chunk = c, error = %ce, "compaction before retry failed");
                    }
                }
            }
            Err(e) => {
                discard_refused(vol, &e, &refs).await;
                return Err(e);
            }
        }
    }
}

/// Retries of a write whose chunk was full of slices (each after compacting it).
const MAX_COMPACT_RETRIES: u32 = 20;

fn too_many_slices(e: &ClientError) -> bool {
    use ringfs_core::compact::TOO_MANY_SLICES;
    match e {
        ClientError::Fs(ringfs_core::fs::FsError::Invalid(m)) => m.contains(TOO_MANY_SLICES),
        ClientError::Rejected(s) => {
            s.code() == tonic::Code::InvalidArgument && s.message().contains(TOO_MANY_SLICES)
        }
        _ => false,
    }
}

/// The blocks of `refs` (consecutive parts of one stream) that hold stream bytes
/// `[start, start + len)`, and the offset of `start` inside the first of them.
fn blocks_for(refs: &[BlockRef], start: u64, len: u64) -> (u32, Vec<BlockRef>) {
    let end = start + len;
    let mut out = Vec::new();
    let mut skip = 0u64;
    let mut at = 0u64;
    for r in refs {
        let next = at + u64::from(r.len);
        if next > start && at < end {
            if out.is_empty() {
                skip = start - at;
            }
            out.push(*r);
        }
        at = next;
    }
    (skip as u32, out)
}

/// Uploads `data` and appends it at the file's size as of the commit.
pub async fn commit_append(vol: &Vol, ino: Ino, data: Bytes) -> Result<Attr> {
    let len = data.len() as u64;
    let refs = upload(vol, split_blocks(data))
        .await
        .map_err(|e| ClientError::NotCommitted(Box::new(e)))?;
    match vol
        .fs(FsOp::Append {
            ino,
            blocks: refs.clone(),
            len,
        })
        .await
    {
        Ok(r) => expect_attr(r),
        Err(e) => {
            discard_refused(vol, &e, &refs).await;
            Err(e)
        }
    }
}

pub use crate::cache::{BlockCache, Fetch};

async fn read_piece(
    vol: &Vol,
    cache: &BlockCache,
    view: &LayoutView,
    p: Piece,
    mode: Fetch,
) -> Result<Bytes> {
    match p {
        Piece::Zero { len, .. } => Ok(Bytes::from(vec![0u8; len as usize])),
        Piece::Data {
            len,
            block,
            block_off,
            ..
        } => {
            cache
                .read(&block, block_off, len, mode, |a, b| {
                    async move {
                        let mut replicas = vol.cluster.read_replicas(view, &block.id);
                        if replicas.is_empty() {
                            let fresh = vol.cluster.refresh_layout().await?;
                            replicas = vol.cluster.read_replicas(&fresh, &block.id);
                        }
                        let d = vol.cluster.io.get(&replicas, &block, a, b - a).await?;
                        // Copies this read found corrupt or missing are re-written now,
                        // so a mount that reads a damaged block also heals it.
                        vol.repair_bad_copies(view, &block).await;
                        Ok(d)
                    }
                })
                .await
        }
    }
}

async fn read_pieces(
    vol: &Vol,
    cache: &BlockCache,
    pieces: Vec<Piece>,
    mode: Fetch,
) -> Result<Vec<Bytes>> {
    let view = vol.cluster.layout().await?;
    stream::iter(pieces.into_iter().map(|p| {
        let view = view.clone();
        async move { read_piece(vol, cache, &view, p, mode).await }
    }))
    .buffered(DOWNLOAD_PARALLELISM)
    .try_collect()
    .await
}

/// Rewrites chunk `chunk` of `ino` into a few fresh slices when it holds more than
/// [`COMPACT_THRESHOLD`] (see [`ringfs_core::compact`]), committed with a
/// compare-and-swap on the slice list read. Returns whether the chunk was replaced;
/// `false` also when a write changed it meanwhile (its new blocks are then deleted).
pub async fn compact_chunk(vol: &Vol, cache: &BlockCache, ino: Ino, chunk: u64) -> Result<bool> {
    let slices = match vol.fs(FsOp::ReadChunk { ino, chunk }).await? {
        FsReply::Chunk { slices, .. } => slices,
        other => {
            return Err(ClientError::Protocol(format!(
                "expected chunk, got {other:?}"
            )))
        }
    };
    if slices.len() <= COMPACT_THRESHOLD {
        return Ok(false);
    }
    let mut fresh: Vec<Slice> = Vec::new();
    let mut uploaded: Vec<BlockRef> = Vec::new();
    for run in compact::plan(&slices) {
        let res = async {
            let parts = read_pieces(
                vol,
                cache,
                resolve(&slices, run.pos, run.end()),
                Fetch::ToEnd,
            )
            .await?;
            let mut data = BytesMut::with_capacity(run.len as usize);
            for p in parts {
                data.extend_from_slice(&p);
            }
            upload(vol, split_blocks(data.freeze())).await
        }
        .await;
        match res {
            Ok(refs) => {
                uploaded.extend_from_slice(&refs);
                fresh.push(Slice {
                    pos: run.pos,
                    len: run.len,
                    skip: 0,
                    blocks: refs,
                });
            }
            Err(e) => {
                discard(vol, &uploaded).await;
                return Err(e);
            }
        }
    }
    let op = FsOp::CompactChunk {
        ino,
        chunk,
        expect: slices,
        slices: fresh,
    };
    match vol.fs(op).await {
        Ok(FsReply::Compacted { applied: true }) => Ok(true),
        Ok(_) => {
            // The swap was refused (the chunk changed): nothing references them.
            discard(vol, &uploaded).await;
            Ok(false)
        }
        Err(e) => {
            discard_refused(vol, &e, &uploaded).await;
            Err(e)
        }
    }
}

/// Chunk index → (file size, slices) as last read. Valid while the file stays open in
/// this mount and this mount commits nothing to it (close-to-open consistency); the
/// owner clears it at first open and after every commit or truncate.
pub type ChunkCache = HashMap<u64, (u64, Arc<Vec<Slice>>)>;

/// What a read of committed data needs: the pieces covering the range (clipped to the
/// committed size) and the chunks whose slice lists they came from.
pub struct ReadPlan {
    pub pieces: Vec<Piece>,
    /// The committed size seen by the first chunk read.
    pub committed: u64,
    pub chunks: Vec<u64>,
}

/// Plans a read of `[off, off + size)` of `ino` from the slice lists in `chunks`,
/// reading (and caching) the lists it lacks.
pub async fn plan_read(
    vol: &Vol,
    chunks: &mut ChunkCache,
    ino: Ino,
    off: u64,
    size: u64,
) -> Result<ReadPlan> {
    let want_end = off.saturating_add(size);
    let mut plan = ReadPlan {
        pieces: Vec::new(),
        committed: 0,
        chunks: Vec::new(),
    };
    let mut committed: Option<u64> = None;
    let mut pos = off;
    loop {
        let chunk = pos / CHUNK_SIZE;
        let (size, slices) = match chunks.get(&chunk) {
            Some(c) => c.clone(),
            None => match vol.fs(FsOp::ReadChunk { ino, chunk }).await? {
                FsReply::Chunk { attr, slices } => {
                    let c = (attr.size, Arc::new(slices));
                    chunks.insert(chunk, c.clone());
                    c
                }
                other => {
                    return Err(ClientError::Protocol(format!(
                        "expected chunk, got {other:?}"
                    )))
                }
            },
        };
        let csize = *committed.get_or_insert(size);
        if pos >= want_end || pos >= csize {
            break;
        }
        let base = chunk * CHUNK_SIZE;
        let end = want_end.min(csize).min(base + CHUNK_SIZE);
        plan.pieces
            .extend(resolve(&slices, (pos - base) as u32, (end - base) as u32));
        plan.chunks.push(chunk);
        pos = end;
    }
    plan.committed = committed.unwrap_or(0);
    Ok(plan)
}

/// Fetches the data of a plan's pieces, in order.
pub async fn fetch_plan(
    vol: &Vol,
    cache: &BlockCache,
    plan: Vec<Piece>,
    mode: Fetch,
) -> Result<Vec<u8>> {
    let total: u64 = plan.iter().map(|p| u64::from(p.len())).sum();
    let parts = read_pieces(vol, cache, plan, mode).await?;
    let mut out = Vec::with_capacity(total as usize);
    for p in parts {
        out.extend_from_slice(&p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_for_finds_the_blocks_of_a_stream_range() {
        let r = |i: u128, len: u32| BlockRef {
            id: BlockId::from_u128(i),
            len,
            crc: 0,
        };
        let refs = [r(1, 100), r(2, 100), r(3, 50)];
        assert_eq!(blocks_for(&refs, 0, 100), (0, vec![refs[0]]));
        assert_eq!(blocks_for(&refs, 10, 5), (10, vec![refs[0]]));
        assert_eq!(blocks_for(&refs, 95, 10), (95, vec![refs[0], refs[1]]));
        assert_eq!(blocks_for(&refs, 100, 100), (0, vec![refs[1]]));
        assert_eq!(blocks_for(&refs, 150, 100), (50, vec![refs[1], refs[2]]));
        assert_eq!(blocks_for(&refs, 249, 1), (49, vec![refs[2]]));
    }
}
