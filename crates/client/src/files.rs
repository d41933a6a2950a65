//! Whole-file operations on a volume: the write path (blocks to replicas, then one Raft
//! commit per chunk) and the read path (slices → pieces → verified block reads).

use crate::blocks::Replica;
use crate::cluster::{Cluster, LayoutView};
use crate::error::{ClientError, Result};
use crate::session::{Session, DEFAULT_SESSION_TTL};
use bytes::{Bytes, BytesMut};
use futures::stream::{self, StreamExt, TryStreamExt};
use ringfs_core::fs::{Attr, ChunkSlice, DirEntry, FileKind, FsError, FsOp, FsReply, MAX_READDIR};
use ringfs_core::ids::ROOT_INO;
use ringfs_core::names::split_path;
use ringfs_core::slice::{resolve, BlockRef, Piece, Slice, CHUNK_SIZE, MAX_BLOCK_SIZE};
use ringfs_core::{BlockId, Ino, VolumeId};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Blocks uploaded concurrently by one writer.
pub const UPLOAD_PARALLELISM: usize = 4;
/// Block reads in flight for one reader.
pub const DOWNLOAD_PARALLELISM: usize = 4;

/// A volume opened by name.
#[derive(Clone)]
pub struct Vol {
    pub cluster: Arc<Cluster>,
    pub id: VolumeId,
    pub name: String,
    pub replication: u32,
    /// The client session mutating ops are sent under (exactly once; see `session`).
    /// Clones share it.
    pub session: Arc<Session>,
}

/// Who holds a library session, for operators (`ringfs` lists sessions with it).
fn session_info() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let exe = std::env::args()
        .next()
        .and_then(|a| a.rsplit('/').next().map(str::to_string))
        .unwrap_or_default();
    format!("{exe} pid {} on {host}", std::process::id())
}

fn expect_attr(r: FsReply) -> Result<Attr> {
    match r {
        FsReply::Attr(a) => Ok(a),
        other => Err(ClientError::Protocol(format!(
            "expected attributes, got {other:?}"
        ))),
    }
}

/// Majority of `rf` replicas: a block is durable once this many nodes have it.
pub fn write_quorum(rf: usize) -> usize {
    rf / 2 + 1
}

impl Vol {
    pub async fn open(cluster: Arc<Cluster>, name: &str) -> Result<Vol> {
        let v = cluster.volume(name).await?;
        Ok(Vol {
            cluster,
            session: Session::new(v.id, DEFAULT_SESSION_TTL, session_info()),
            id: v.id,
            name: v.name,
            replication: v.replication,
        })
    }

    /// Opens snapshot `name` for reading (every write fails with `FsError::ReadOnly`).
    pub async fn open_snapshot(cluster: Arc<Cluster>, name: &str) -> Result<Vol> {
        let s = cluster.snapshot(name).await?;
        Ok(Vol {
            cluster,
            session: Session::new(s.id, DEFAULT_SESSION_TTL, session_info()),
            id: s.id,
            name: s.name,
            replication: s.replication,
        })
    }

    /// The same volume under a session of its own with lease `ttl` (a mount's), named
    /// `info` for operators.
    pub fn with_session(mut self, ttl: std::time::Duration, info: impl Into<String>) -> Vol {
        self.session = Session::new(self.id, ttl, info);
        self
    }

    /// Runs a file-system op. A mutating one is sent under this volume's client session
    /// with a request id, so however often it is resent after an ambiguous failure it is
    /// applied once, and the caller gets the first attempt's result. Reads and session
    /// management are idempotent by nature and carry none.
    pub async fn fs(&self, op: FsOp) -> Result<FsReply> {
        if op.is_read() || op.is_session_op() {
            return self.cluster.fs(self.id, &op).await;
        }
        self.session.run(&self.cluster, &op).await
    }

    /// Ends this volume's client session now (best effort; it expires by itself).
    pub async fn close_session(&self) -> Result<()> {
        self.session.close(&self.cluster).await
    }

    pub async fn stat(&self, path: &str) -> Result<Attr> {
        expect_attr(self.fs(FsOp::ResolvePath { path: path.into() }).await?)
    }

    /// Splits a path into (parent inode, final name).
    async fn parent_of(&self, path: &str) -> Result<(Ino, Vec<u8>)> {
        let comps = split_path(path).map_err(|e| ClientError::Invalid(e.to_string()))?;
        let Some((name, dirs)) = comps.split_last() else {
            return Err(ClientError::Invalid(format!(
                "{path:?} names the volume root, not a file"
            )));
        };
        let parent = if dirs.is_empty() {
            ROOT_INO
        } else {
            self.stat(&dirs.join("/")).await?.ino
        };
        Ok((parent, name.as_bytes().to_vec()))
    }

    pub async fn mkdir(&self, path: &str, mode: u32) -> Result<Attr> {
        let (parent, name) = self.parent_of(path).await?;
        expect_attr(
            self.fs(FsOp::Mkdir {
                parent,
                name,
                mode,
                uid: 0,
                gid: 0,
            })
            .await?,
        )
    }

    /// Creates every missing directory of `path`.
    pub async fn mkdir_p(&self, path: &str) -> Result<Ino> {
        let comps = split_path(path).map_err(|e| ClientError::Invalid(e.to_string()))?;
        let mut cur = ROOT_INO;
        for c in comps {
            let name = c.as_bytes().to_vec();
            cur = match self
                .fs(FsOp::Lookup {
                    parent: cur,
                    name: name.clone(),
                })
                .await
            {
                Ok(r) => {
                    let a = expect_attr(r)?;
                    if a.kind != FileKind::Dir {
                        return Err(FsError::NotDir.into());
                    }
                    a.ino
                }
                Err(ClientError::Fs(FsError::NotFound)) => {
                    match self
                        .fs(FsOp::Mkdir {
                            parent: cur,
                            name: name.clone(),
                            mode: 0o755,
                            uid: 0,
                            gid: 0,
                        })
                        .await
                    {
                        Ok(r) => expect_attr(r)?.ino,
                        // Someone else created it meanwhile.
                        Err(ClientError::Fs(FsError::Exists)) => {
                            expect_attr(self.fs(FsOp::Lookup { parent: cur, name }).await?)?.ino
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            };
        }
        Ok(cur)
    }

    pub async fn list(&self, path: &str) -> Result<Vec<DirEntry>> {
        let dir = self.stat(path).await?;
        if dir.kind != FileKind::Dir {
            return Err(FsError::NotDir.into());
        }
        let mut out = Vec::new();
        let mut after = Vec::new();
        loop {
            match self
                .fs(FsOp::ReadDir {
                    ino: dir.ino,
                    after: after.clone(),
                    limit: MAX_READDIR,
                })
                .await?
            {
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
                other => {
                    return Err(ClientError::Protocol(format!(
                        "expected entries, got {other:?}"
                    )))
                }
            }
        }
    }

    /// Removes a file, a symlink or an empty directory.
    pub async fn remove(&self, path: &str) -> Result<()> {
        let (parent, name) = self.parent_of(path).await?;
        match self
            .fs(FsOp::Unlink {
                parent,
                name: name.clone(),
            })
            .await
        {
            Err(ClientError::Fs(FsError::IsDir)) => {
                self.fs(FsOp::Rmdir { parent, name }).await.map(|_| ())
            }
            r => r.map(|_| ()),
        }
    }

    /// Removes `path` and, for a directory, everything below it.
    pub async fn remove_all(&self, path: &str) -> Result<()> {
        let attr = self.stat(path).await?;
        if attr.kind == FileKind::Dir {
            for e in self.list(path).await? {
                let child = format!(
                    "{}/{}",
                    path.trim_end_matches('/'),
                    String::from_utf8_lossy(&e.name)
                );
                Box::pin(self.remove_all(&child)).await?;
            }
        }
        if split_path(path).map(|c| c.is_empty()).unwrap_or(false) {
            return Ok(()); // the root itself stays
        }
        self.remove(path).await
    }

    /// Writes `reader`'s content as the file at `path`, reporting bytes written to
    /// `progress`, and returns the final attributes. The data is durable (on a write
    /// quorum of replicas and committed in Raft) when this returns.
    ///
    /// The content goes to a hidden temporary file that is renamed over `path` at the
    /// end, so readers see the old or the new file, never a mix, and a failure (quota,
    /// lost quorum) leaves the previous content intact and no partial file behind.
    pub async fn write_file<R: AsyncRead + Unpin>(
        &self,
        path: &str,
        reader: R,
        mode: u32,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Attr> {
        let (parent, name) = self.parent_of(path).await?;
        if let Ok(r) = self
            .fs(FsOp::Lookup {
                parent,
                name: name.clone(),
            })
            .await
        {
            if expect_attr(r)?.kind == FileKind::Dir {
                return Err(FsError::IsDir.into());
            }
        }
        let mut tmp = b".".to_vec();
        tmp.extend_from_slice(&name[..name.len().min(200)]);
        tmp.extend_from_slice(format!(".ringfs-tmp-{:016x}", rand::random::<u64>()).as_bytes());
        let attr = expect_attr(
            self.fs(FsOp::Create {
                parent,
                name: tmp.clone(),
                mode,
                uid: 0,
                gid: 0,
                exclusive: true,
            })
            .await?,
        )?;
        let written = self.write_contents(attr, reader, progress).await;
        let result = match written {
            Ok(a) => self
                .fs(FsOp::Rename {
                    parent,
                    name: tmp.clone(),
                    new_parent: parent,
                    new_name: name,
                    no_replace: false,
                })
                .await
                .map(|_| a),
            Err(e) => Err(e),
        };
        if result.is_err() {
            let _ = self.fs(FsOp::Unlink { parent, name: tmp }).await;
        }
        result
    }

    /// Appends `reader`'s content to the empty file `attr`, one chunk per commit.
    async fn write_contents<R: AsyncRead + Unpin>(
        &self,
        attr: Attr,
        mut reader: R,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Attr> {
        let view = self.cluster.layout().await?;
        let rf = self.replication as usize;
        let mut offset = 0u64;
        let ino = attr.ino;
        let mut last = attr;
        loop {
            // Read up to one chunk, block by block.
            let mut blocks: Vec<Bytes> = Vec::new();
            let mut chunk_len = 0u64;
            while chunk_len < CHUNK_SIZE {
                let block = read_block(&mut reader, MAX_BLOCK_SIZE as usize).await?;
                if block.is_empty() {
                    break;
                }
                chunk_len += block.len() as u64;
                let full = block.len() == MAX_BLOCK_SIZE as usize;
                blocks.push(block);
                if !full {
                    break;
                }
            }
            if blocks.is_empty() {
                break;
            }
            let refs = self.upload(blocks, rf).await?;
            let chunk = offset / CHUNK_SIZE;
            let slice = Slice {
                pos: (offset % CHUNK_SIZE) as u32,
                len: chunk_len as u32,
                skip: 0,
                blocks: refs.clone(),
            };
            let op = FsOp::Write {
                ino,
                slices: vec![ChunkSlice { chunk, slice }],
                min_size: offset + chunk_len,
            };
            match self.fs(op).await {
                Ok(r) => last = expect_attr(r)?,
                Err(e) => {
                    // Refused: the uploaded blocks are garbage; remove them now (best
                    // effort; the orphan sweep catches what this misses). Never on an
                    // unknown outcome: the commit may have happened, and then the file
                    // references them.
                    if e.not_applied() {
                        self.discard(&view, &refs).await;
                    }
                    return Err(e);
                }
            }
            offset += chunk_len;
            progress(offset);
            if chunk_len < CHUNK_SIZE {
                break;
            }
        }
        Ok(last)
    }

    /// Uploads blocks to their replicas (bounded parallelism), each on a write quorum.
    /// The layout is re-read per block (cached, refreshed when old or stale): a large
    /// upload spans layout changes.
    async fn upload(&self, blocks: Vec<Bytes>, rf: usize) -> Result<Vec<BlockRef>> {
        stream::iter(blocks.into_iter().map(|data| {
            let id = BlockId::from_u128(rand::random());
            async move { self.cluster.put_block(id, data, rf).await }
        }))
        .buffered(UPLOAD_PARALLELISM)
        .try_collect()
        .await
    }

    async fn discard(&self, view: &LayoutView, refs: &[BlockRef]) {
        let ids: Vec<BlockId> = refs.iter().map(|b| b.id).collect();
        for addr in view.addrs.values() {
            let _ = self.cluster.io.delete(addr, &ids).await;
        }
    }

    /// Reads the whole file at `path` into `writer`.
    pub async fn read_file<W: AsyncWrite + Unpin>(
        &self,
        path: &str,
        writer: &mut W,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<u64> {
        let attr = self.stat(path).await?;
        if attr.kind == FileKind::Dir {
            return Err(FsError::IsDir.into());
        }
        let size = attr.size;
        let mut done = 0u64;
        let mut chunk = 0u64;
        while done < size {
            let chunk_end = ((chunk + 1) * CHUNK_SIZE).min(size);
            let len = (chunk_end - chunk * CHUNK_SIZE) as u32;
            let data = self.read_chunk(attr.ino, chunk, 0, len).await?;
            writer
                .write_all(&data)
                .await
                .map_err(|e| ClientError::Invalid(format!("writing output: {e}")))?;
            done += data.len() as u64;
            progress(done);
            chunk += 1;
        }
        writer
            .flush()
            .await
            .map_err(|e| ClientError::Invalid(format!("writing output: {e}")))?;
        Ok(done)
    }

    /// Reads `[start, end)` of chunk `chunk` of inode `ino`.
    pub async fn read_chunk(&self, ino: Ino, chunk: u64, start: u32, end: u32) -> Result<Bytes> {
        let slices = match self.fs(FsOp::ReadChunk { ino, chunk }).await? {
            FsReply::Chunk { slices, .. } => slices,
            other => {
                return Err(ClientError::Protocol(format!(
                    "expected chunk, got {other:?}"
                )))
            }
        };
        let pieces = resolve(&slices, start, end);
        let view = self.cluster.layout().await?;
        let parts: Vec<Bytes> = stream::iter(pieces.into_iter().map(|p| {
            let view = view.clone();
            async move { self.read_piece(&view, p).await }
        }))
        .buffered(DOWNLOAD_PARALLELISM)
        .try_collect()
        .await?;
        let mut out = BytesMut::with_capacity((end - start) as usize);
        for p in parts {
            out.extend_from_slice(&p);
        }
        Ok(out.freeze())
    }

    async fn read_piece(&self, view: &LayoutView, p: Piece) -> Result<Bytes> {
        match p {
            Piece::Zero { len, .. } => Ok(Bytes::from(vec![0u8; len as usize])),
            Piece::Data {
                len,
                block,
                block_off,
                ..
            } => {
                let mut replicas = self.cluster.read_replicas(view, &block.id);
                if replicas.is_empty() {
                    let fresh = self.cluster.refresh_layout().await?;
                    replicas = self.cluster.read_replicas(&fresh, &block.id);
                }
                let data = self
                    .cluster
                    .io
                    .get(&replicas, &block, block_off, len)
                    .await?;
                self.repair_bad_copies(view, &block).await;
                Ok(data)
            }
        }
    }

    /// Re-writes the copies of `block` that a read through this client found corrupt or
    /// missing, from a verified copy, so the block is back at full replication without
    /// waiting for scrub. Call it after a successful read of `block` (the FUSE read path
    /// and `get` do). Returns how many copies were re-written.
    pub async fn repair_bad_copies(&self, view: &LayoutView, block: &BlockRef) -> usize {
        let bad = self.cluster.io.take_bad_copies_of(block.id);
        if bad.is_empty() {
            return 0;
        }
        for node in &bad {
            self.cluster.mark_suspect(*node);
            tracing::warn!(node, block = %block.id, "bad block copy reported; repairing");
        }
        let targets: Vec<Replica> = bad
            .iter()
            .filter_map(|node| {
                view.addrs.get(node).map(|a| Replica {
                    node: *node,
                    addr: a.clone(),
                })
            })
            .collect();
        if targets.is_empty() {
            return 0;
        }
        // Good copies first: a source already known bad would only fail again.
        let mut sources = self.cluster.read_replicas(view, &block.id);
        sources.sort_by_key(|r| bad.contains(&r.node));
        match self.cluster.io.get(&sources, block, 0, 0).await {
            // With the layout version of the view it was planned on: a node that has not
            // applied that version yet waits for it, so its stale-copy sweep (which works
            // on its own applied layout) cannot delete the repaired copy.
            Ok(data) => match self
                .cluster
                .io
                .put_quorums(
                    &targets,
                    &[(targets.iter().map(|r| r.node).collect(), targets.len())],
                    view.current().map(|l| l.version).unwrap_or(0),
                    true,
                    block.id,
                    data,
                )
                .await
            {
                Ok(_) => targets.len(),
                Err(e) => {
                    tracing::warn!(block = %block.id, error = %e, "repair of bad copies failed");
                    0
                }
            },
            Err(e) => {
                tracing::warn!(block = %block.id, error = %e, "no good copy to repair from");
                0
            }
        }
        // Copies found bad while reading the repair source are reported next time.
    }
}

/// Reads up to `max` bytes (less only at end of input).
async fn read_block<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Bytes> {
    let mut buf = BytesMut::zeroed(max);
    let mut n = 0;
    while n < max {
        let got = r
            .read(&mut buf[n..])
            .await
            .map_err(|e| ClientError::Invalid(format!("reading input: {e}")))?;
        if got == 0 {
            break;
        }
        n += got;
    }
    buf.truncate(n);
    Ok(buf.freeze())
}
