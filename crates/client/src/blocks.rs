//! Replicated block I/O: quorum writes to every replica in parallel, and verified reads
//! that fail over from replica to replica.
//!
//! Checksums are end to end: the writer computes the block's crc32c and every node checks
//! it before storing; a reader checks each 64 KiB segment against the crcs the node sends
//! and, when it reads a whole block, the block's crc against the one recorded in metadata
//! ([`BlockRef::crc`]). A copy that fails either check, or that a replica reports corrupt
//! or missing, is remembered as a bad copy for the caller to report for repair
//! ([`BlockIo::take_bad_copies`]).

use crate::error::{ClientError, Result};
use crate::pool::ChannelPool;
use crate::pool::NodeChannel as Channel;
use bytes::{Bytes, BytesMut};
use futures::future::join_all;
use ringfs_core::ids::{BlockId, NodeId};
use ringfs_core::slice::{checksum, BlockRef, MAX_BLOCK_SIZE};
use ringfs_proto::block::block_service_client::BlockServiceClient;
use ringfs_proto::block::{
    get_block_reply, put_block_request, BlockHeader, DeleteBlocksRequest, GetBlockReply,
    GetBlockRequest, HasBlocksRequest, ListBlocksRequest, PullReply, PullRequest, PutBlockRequest,
};
use ringfs_proto::{MAX_MESSAGE_BYTES, STREAM_CHUNK_BYTES};
use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Code, Status, Streaming};
use tracing::{debug, instrument, warn};

/// Size of a checksummed segment in get replies (fixed by block.proto).
pub const SEGMENT_BYTES: u32 = 64 << 10;

/// Time budget of one call to one replica, before size-proportional extra time.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Extra time per MiB transferred: a replica slower than 1 MiB/s counts as failed.
const TIMEOUT_PER_MIB: Duration = Duration::from_secs(1);

/// Bad copies kept until [`BlockIo::take_bad_copies`] drains them; beyond this, new ones
/// are dropped (and still logged) so a caller that never drains cannot exhaust memory.
const MAX_BAD_COPIES: usize = 4096;

/// Marker in the message of a put refused because the writer's layout is stale.
pub const STALE_LAYOUT: &str = "stale layout";

/// One node holding (or meant to hold) a copy of a block.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Replica {
    pub node: NodeId,
    pub addr: String,
}

impl fmt::Display for Replica {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} ({})", self.node, self.addr)
    }
}

/// Block reads and writes against the nodes of a cluster, over a shared [`ChannelPool`].
/// Cheap to clone; clones share the pool and the bad-copy list.
#[derive(Clone)]
pub struct BlockIo {
    pool: ChannelPool,
    timeout: Duration,
    bad_copies: Arc<Mutex<Vec<(NodeId, BlockId)>>>,
}

/// Why reading from one replica failed.
enum ReadFail {
    /// The replica's copy is corrupt or is not the block metadata describes.
    Corrupt(String),
    /// The replica does not have the block.
    Missing(String),
    /// The replica could not be reached or misbehaved; says nothing about its copy.
    Failed(String),
}

impl ReadFail {
    fn from_status(s: &Status) -> Self {
        match s.code() {
            Code::DataLoss => ReadFail::Corrupt(describe(s)),
            Code::NotFound => ReadFail::Missing(describe(s)),
            _ => ReadFail::Failed(describe(s)),
        }
    }
}

/// A status as one short line: code, message and transport cause when there is one.
fn describe(s: &Status) -> String {
    let mut out = format!("{:?}: {}", s.code(), s.message());
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

/// A failed single-node call as a client error: transport trouble is `Unavailable`,
/// anything the node decided is `Rejected`.
fn node_error(addr: &str, s: Status) -> ClientError {
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            ClientError::Unavailable(format!("{addr}: {}", describe(&s)))
        }
        _ => ClientError::Rejected(s),
    }
}

fn id_bytes(id: BlockId) -> Bytes {
    Bytes::copy_from_slice(&id.0)
}

impl BlockIo {
    pub fn new(pool: ChannelPool) -> Self {
        BlockIo {
            pool,
            timeout: DEFAULT_TIMEOUT,
            bad_copies: Arc::default(),
        }
    }

    /// Overrides the base per-replica time budget (default [`DEFAULT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Copies found corrupt or missing since the last call, as `(node, block)`, for the
    /// caller to report for repair. Each pair appears once.
    pub fn take_bad_copies(&self) -> Vec<(NodeId, BlockId)> {
        std::mem::take(&mut *self.bad_copies.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Like [`BlockIo::take_bad_copies`], for one block only: the nodes whose copy of
    /// `id` was found bad. Other blocks' reports stay for their own readers, so
    /// concurrent reads (a FUSE mount) never drop each other's repairs.
    pub fn take_bad_copies_of(&self, id: BlockId) -> Vec<NodeId> {
        let mut bad = self.bad_copies.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        bad.retain(|(node, b)| {
            if *b == id {
                out.push(*node);
                false
            } else {
                true
            }
        });
        out
    }

    fn record_bad_copy(&self, node: NodeId, id: BlockId) {
        let mut bad = self.bad_copies.lock().unwrap_or_else(|p| p.into_inner());
        if bad.len() < MAX_BAD_COPIES && !bad.contains(&(node, id)) {
            bad.push((node, id));
        }
    }

    fn timeout_for(&self, bytes: u64) -> Duration {
        // Rounded up so even a small transfer gets its extra second.
        let mib = u32::try_from(bytes.div_ceil(1 << 20)).unwrap_or(u32::MAX);
        self.timeout
            .saturating_add(TIMEOUT_PER_MIB.saturating_mul(mib))
    }

    fn client(&self, addr: &str) -> Result<BlockServiceClient<Channel>> {
        Ok(BlockServiceClient::new(self.pool.get(addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Writes block `id` to every replica in parallel and returns its [`BlockRef`] once
    /// all replicas have answered (or timed out) and at least `quorum` stored it.
    ///
    /// Every per-replica write has finished or been cancelled when this returns, so no
    /// write is left running in the background whatever the outcome. A replica that
    /// already held the block counts as a success (puts are idempotent).
    pub async fn put(
        &self,
        replicas: &[Replica],
        id: BlockId,
        data: Bytes,
        quorum: usize,
    ) -> Result<BlockRef> {
        let all: Vec<NodeId> = replicas.iter().map(|r| r.node).collect();
        self.put_quorums(replicas, &[(all, quorum)], 0, false, id, data)
            .await
    }

    /// Like [`BlockIo::put`], for a layout transition: `replicas` is the union of the
    /// owners of every live layout version, and the write succeeds only when, for each
    /// `(set, quorum)` in `quorums`, at least `quorum` nodes of `set` stored the block.
    /// `layout_version` is the newest version the caller knows (0: unchecked); a node that
    /// has applied a newer one refuses and the result is [`ClientError::StaleLayout`] —
    /// even when the quorums were met, because that node owns the block under the newer
    /// layout too (most partitions keep their owners across a change, so no migration
    /// would bring the copy there): the caller refreshes its layout and writes again, and
    /// the replicas that already hold the block answer at once. Only when
    /// `accept_stale_with_quorum` (the caller's last attempt) does a met quorum count as
    /// success despite a stale refusal; the missing copy is then left to scrub.
    #[instrument(skip_all, fields(block = %id, len = data.len(), replicas = replicas.len()))]
    pub async fn put_quorums(
        &self,
        replicas: &[Replica],
        quorums: &[(Vec<NodeId>, usize)],
        layout_version: u64,
        accept_stale_with_quorum: bool,
        id: BlockId,
        data: Bytes,
    ) -> Result<BlockRef> {
        for (set, quorum) in quorums {
            if *quorum == 0 || *quorum > set.len() {
                return Err(ClientError::Invalid(format!(
                    "write quorum {quorum} must be between 1 and the number of replicas ({})",
                    set.len()
                )));
            }
            if let Some(n) = set.iter().find(|n| !replicas.iter().any(|r| r.node == **n)) {
                return Err(ClientError::Invalid(format!(
                    "block {id}: quorum set names node {n}, which is not among the replicas"
                )));
            }
        }
        let distinct: HashSet<NodeId> = replicas.iter().map(|r| r.node).collect();
        if distinct.len() != replicas.len() {
            return Err(ClientError::Invalid(format!(
                "block {id}: replicas must be distinct nodes, got {:?}",
                replicas.iter().map(|r| r.node).collect::<Vec<_>>()
            )));
        }
        if data.is_empty() || data.len() > MAX_BLOCK_SIZE as usize {
            return Err(ClientError::Invalid(format!(
                "block {id}: {} bytes; a block holds 1 to {MAX_BLOCK_SIZE} bytes",
                data.len()
            )));
        }
        // data.len() ≤ MAX_BLOCK_SIZE, checked above.
        let block = BlockRef {
            id,
            len: data.len() as u32,
            crc: checksum(&data),
        };
        let budget = self.timeout_for(data.len() as u64);
        let attempts = replicas.iter().map(|r| {
            let data = data.clone();
            async move {
                let res = match tokio::time::timeout(
                    budget,
                    self.put_one(r, block, data, layout_version),
                )
                .await
                {
                    Ok(res) => res,
                    Err(_) => Err((false, format!("timed out after {budget:?}"))),
                };
                (r, res)
            }
        });
        let results = join_all(attempts).await;
        let mut stored: HashSet<NodeId> = HashSet::new();
        let mut failures = Vec::new();
        let mut stale = false;
        for (r, res) in results {
            match res {
                Ok(already_present) => {
                    stored.insert(r.node);
                    debug!(replica = %r, already_present, "block stored");
                }
                Err((is_stale, reason)) => {
                    stale |= is_stale;
                    failures.push(format!("{r}: {reason}"));
                }
            }
        }
        let short: Vec<String> = quorums
            .iter()
            .filter_map(|(set, quorum)| {
                let n = set.iter().filter(|n| stored.contains(n)).count();
                (n < *quorum).then(|| format!("{n} of {set:?} stored it, quorum is {quorum}"))
            })
            .collect();
        if short.is_empty() && (!stale || accept_stale_with_quorum) {
            if !failures.is_empty() {
                warn!(stored = stored.len(), failed = %failures.join("; "),
                    "block written with quorum but not to every replica");
            }
            Ok(block)
        } else if stale {
            Err(ClientError::StaleLayout(format!(
                "put block {id}: {}",
                failures.join("; ")
            )))
        } else {
            Err(ClientError::Blocks(format!(
                "put block {id}: {}: {}",
                short.join("; "),
                failures.join("; ")
            )))
        }
    }

    /// Err carries (the node refused a stale layout, reason).
    async fn put_one(
        &self,
        replica: &Replica,
        block: BlockRef,
        data: Bytes,
        layout_version: u64,
    ) -> std::result::Result<bool, (bool, String)> {
        let mut client = self
            .client(&replica.addr)
            .map_err(|e| (false, e.to_string()))?;
        let mut msgs = Vec::with_capacity(1 + data.len().div_ceil(STREAM_CHUNK_BYTES));
        msgs.push(PutBlockRequest {
            part: Some(put_block_request::Part::Header(BlockHeader {
                id: id_bytes(block.id),
                len: block.len,
                crc32c: block.crc,
                layout_version,
            })),
        });
        let mut off = 0;
        while off < data.len() {
            let end = (off + STREAM_CHUNK_BYTES).min(data.len());
            msgs.push(PutBlockRequest {
                part: Some(put_block_request::Part::Data(data.slice(off..end))),
            });
            off = end;
        }
        let reply = client.put(tokio_stream::iter(msgs)).await.map_err(|s| {
            let stale = s.code() == Code::FailedPrecondition && s.message().contains(STALE_LAYOUT);
            (stale, describe(&s))
        })?;
        Ok(reply.into_inner().already_present)
    }

    /// Reads `[offset, offset + len)` of `block` (`len` 0: to the end of the block),
    /// trying `replicas` in the given order (callers put the nearest first) until one
    /// returns data that passes verification. Corrupt and missing copies met on the way
    /// are logged and recorded (see [`BlockIo::take_bad_copies`]).
    #[instrument(skip_all, fields(block = %block.id, offset, len))]
    pub async fn get(
        &self,
        replicas: &[Replica],
        block: &BlockRef,
        offset: u32,
        len: u32,
    ) -> Result<Bytes> {
        let end = if len == 0 {
            u64::from(block.len)
        } else {
            u64::from(offset) + u64::from(len)
        };
        if offset > block.len || end > u64::from(block.len) {
            return Err(ClientError::Invalid(format!(
                "read of block {} at offset {offset} len {len} is outside its {} bytes",
                block.id, block.len
            )));
        }
        // end ≤ block.len, checked above.
        let end = end as u32;
        if offset == end {
            return Ok(Bytes::new());
        }
        if replicas.is_empty() {
            return Err(ClientError::Invalid(format!(
                "block {}: no replicas to read",
                block.id
            )));
        }
        let budget = self.timeout_for(u64::from(end - offset));
        let mut failures = Vec::new();
        for r in replicas {
            let res = tokio::time::timeout(budget, self.get_one(r, block, offset, end)).await;
            let reason = match res {
                Ok(Ok(data)) => return Ok(data),
                Ok(Err(ReadFail::Corrupt(reason) | ReadFail::Missing(reason))) => {
                    warn!(replica = %r, block = %block.id, %reason,
                        "bad block copy; reporting it and trying the next replica");
                    self.record_bad_copy(r.node, block.id);
                    reason
                }
                Ok(Err(ReadFail::Failed(reason))) => {
                    debug!(replica = %r, %reason, "block read failed; trying the next replica");
                    reason
                }
                Err(_) => format!("timed out after {budget:?}"),
            };
            failures.push(format!("{r}: {reason}"));
        }
        Err(ClientError::Blocks(format!(
            "get block {}: no replica returned a good copy: {}",
            block.id,
            failures.join("; ")
        )))
    }

    async fn get_one(
        &self,
        replica: &Replica,
        block: &BlockRef,
        offset: u32,
        end: u32,
    ) -> std::result::Result<Bytes, ReadFail> {
        let mut client = self
            .client(&replica.addr)
            .map_err(|e| ReadFail::Failed(e.to_string()))?;
        let req = GetBlockRequest {
            id: id_bytes(block.id),
            offset,
            len: end - offset,
        };
        let mut stream = client
            .get(req)
            .await
            .map_err(|s| ReadFail::from_status(&s))?
            .into_inner();
        let header = match next_part(&mut stream).await? {
            get_block_reply::Part::Header(h) => h,
            get_block_reply::Part::Data(_) => {
                return Err(ReadFail::Failed(
                    "protocol: get stream must start with a header".into(),
                ));
            }
        };
        if header.id != block.id.0[..] || header.len != block.len || header.crc32c != block.crc {
            return Err(ReadFail::Corrupt(format!(
                "node holds a different block: {} bytes, crc32c {:#010x}; expected {} bytes, \
                 crc32c {:#010x}",
                header.len, header.crc32c, block.len, block.crc
            )));
        }
        let seg_start = offset / SEGMENT_BYTES * SEGMENT_BYTES;
        let seg_end = end
            .div_ceil(SEGMENT_BYTES)
            .saturating_mul(SEGMENT_BYTES)
            .min(block.len);
        let mut pos = seg_start;
        let mut parts: Vec<Bytes> = Vec::new();
        while pos < seg_end {
            let seg = match next_part(&mut stream).await? {
                get_block_reply::Part::Data(d) => d,
                get_block_reply::Part::Header(_) => {
                    return Err(ReadFail::Failed(
                        "protocol: second header in get stream".into(),
                    ));
                }
            };
            verify_segments(
                block,
                pos,
                seg_end,
                seg.seg_offset,
                &seg.data,
                &seg.seg_crc32c,
            )?;
            // verify_segments bounds pos + data.len() by seg_end.
            pos += seg.data.len() as u32;
            parts.push(seg.data);
        }
        let covered = match parts.len() {
            1 => parts.pop().unwrap_or_default(),
            _ => {
                let mut buf = BytesMut::with_capacity((seg_end - seg_start) as usize);
                for p in &parts {
                    buf.extend_from_slice(p);
                }
                buf.freeze()
            }
        };
        if offset == 0 && end == block.len && checksum(&covered) != block.crc {
            return Err(ReadFail::Corrupt(format!(
                "whole-block crc32c {:#010x} differs from metadata's {:#010x}",
                checksum(&covered),
                block.crc
            )));
        }
        Ok(covered.slice((offset - seg_start) as usize..(end - seg_start) as usize))
    }

    /// Deletes `ids` on the node at `addr`; returns how many it actually removed
    /// (deleting an absent block succeeds and counts 0).
    pub async fn delete(&self, addr: &str, ids: &[BlockId]) -> Result<u32> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut client = self.client(addr)?;
        let req = DeleteBlocksRequest {
            ids: ids.iter().map(|&id| id_bytes(id)).collect(),
        };
        let reply = tokio::time::timeout(self.timeout, client.delete(req))
            .await
            .map_err(|_| ClientError::Unavailable(format!("{addr}: delete timed out")))?
            .map_err(|s| node_error(addr, s))?;
        Ok(reply.into_inner().deleted)
    }

    /// Which of `ids` the node at `addr` holds, in the same order.
    pub async fn has(&self, addr: &str, ids: &[BlockId]) -> Result<Vec<bool>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut client = self.client(addr)?;
        let req = HasBlocksRequest {
            ids: ids.iter().map(|&id| id_bytes(id)).collect(),
        };
        let present = tokio::time::timeout(self.timeout, client.has(req))
            .await
            .map_err(|_| ClientError::Unavailable(format!("{addr}: has timed out")))?
            .map_err(|s| node_error(addr, s))?
            .into_inner()
            .present;
        if present.len() != ids.len() {
            return Err(ClientError::Protocol(format!(
                "{addr}: has answered {} flags for {} ids",
                present.len(),
                ids.len()
            )));
        }
        Ok(present)
    }

    /// Up to `limit` blocks stored on the node at `addr` with ids after `after`, in id
    /// order (a page of a scan; continue from the last id returned).
    pub async fn list(
        &self,
        addr: &str,
        after: Option<BlockId>,
        limit: u32,
    ) -> Result<Vec<BlockRef>> {
        let req = ListBlocksRequest {
            after: after.map(id_bytes).unwrap_or_default(),
            limit,
            ..Default::default()
        };
        self.list_req(addr, req).await
    }

    /// Like [`BlockIo::list`], only blocks of `partitions` (of `partition_count`), once
    /// the node has applied `min_layout_version` and finished older puts.
    pub async fn list_partitions(
        &self,
        addr: &str,
        after: Option<BlockId>,
        limit: u32,
        partitions: &[u32],
        partition_count: u32,
        min_layout_version: u64,
    ) -> Result<Vec<BlockRef>> {
        let req = ListBlocksRequest {
            after: after.map(id_bytes).unwrap_or_default(),
            limit,
            partitions: partitions.to_vec(),
            partition_count,
            min_layout_version,
        };
        self.list_req(addr, req).await
    }

    async fn list_req(&self, addr: &str, req: ListBlocksRequest) -> Result<Vec<BlockRef>> {
        let mut client = self.client(addr)?;
        let blocks = tokio::time::timeout(self.timeout, client.list(req))
            .await
            .map_err(|_| ClientError::Unavailable(format!("{addr}: list timed out")))?
            .map_err(|s| node_error(addr, s))?
            .into_inner()
            .blocks;
        blocks
            .into_iter()
            .map(|h| {
                let id = BlockId::from_slice(&h.id).ok_or_else(|| {
                    ClientError::Protocol(format!("{addr}: list returned a {}-byte id", h.id.len()))
                })?;
                Ok(BlockRef {
                    id,
                    len: h.len,
                    crc: h.crc32c,
                })
            })
            .collect()
    }

    /// Asks the node at `addr` to copy the blocks of `req.partitions` it lacks from
    /// `req.sources`; waits up to `deadline`.
    pub async fn pull(
        &self,
        addr: &str,
        req: PullRequest,
        deadline: Duration,
    ) -> Result<PullReply> {
        let mut client = self.client(addr)?;
        let reply = tokio::time::timeout(deadline, client.pull(req))
            .await
            .map_err(|_| {
                ClientError::Unavailable(format!("{addr}: pull timed out after {deadline:?}"))
            })?
            .map_err(|s| node_error(addr, s))?;
        Ok(reply.into_inner())
    }
}

async fn next_part(
    stream: &mut Streaming<GetBlockReply>,
) -> std::result::Result<get_block_reply::Part, ReadFail> {
    match stream.message().await {
        Ok(Some(GetBlockReply { part: Some(part) })) => Ok(part),
        Ok(Some(GetBlockReply { part: None })) => Err(ReadFail::Failed(
            "protocol: get reply without a part".into(),
        )),
        Ok(None) => Err(ReadFail::Failed("protocol: get stream ended early".into())),
        Err(s) => Err(ReadFail::from_status(&s)),
    }
}

/// Checks one get data message: it must continue exactly at `pos`, stay within
/// `seg_end`, consist of whole segments (only the block's last may be short), carry one
/// crc per segment, and every segment must match its crc.
fn verify_segments(
    block: &BlockRef,
    pos: u32,
    seg_end: u32,
    seg_offset: u32,
    data: &[u8],
    crcs: &[u32],
) -> std::result::Result<(), ReadFail> {
    let protocol = |what: String| Err(ReadFail::Failed(format!("protocol: {what}")));
    if seg_offset != pos {
        return protocol(format!("data at byte {seg_offset}, expected byte {pos}"));
    }
    if data.is_empty() || data.len() as u64 > u64::from(seg_end - pos) {
        return protocol(format!(
            "{} bytes at byte {pos}, expected 1 to {}",
            data.len(),
            seg_end - pos
        ));
    }
    let segments = data.len().div_ceil(SEGMENT_BYTES as usize);
    if crcs.len() != segments {
        return protocol(format!("{} crcs for {segments} segments", crcs.len()));
    }
    let last_len = data.len() - (segments - 1) * SEGMENT_BYTES as usize;
    if last_len != SEGMENT_BYTES as usize && pos as usize + data.len() != block.len as usize {
        return protocol(format!(
            "short segment in the middle of the block at byte {pos}"
        ));
    }
    for (i, (seg, &want)) in data.chunks(SEGMENT_BYTES as usize).zip(crcs).enumerate() {
        let got = checksum(seg);
        if got != want {
            let at = pos as usize + i * SEGMENT_BYTES as usize;
            return Err(ReadFail::Corrupt(format!(
                "segment at byte {at} has crc32c {got:#010x}, node sent {want:#010x}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An address nothing listens on: bound, then released.
    fn dead_addr() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        addr
    }

    fn io() -> BlockIo {
        BlockIo::new(ChannelPool::new()).with_timeout(Duration::from_secs(5))
    }

    #[tokio::test]
    async fn put_rejects_bad_quorum_and_sizes() {
        let io = io();
        let reps: Vec<Replica> = (1..=2)
            .map(|n| Replica {
                node: n,
                addr: dead_addr(),
            })
            .collect();
        let id = BlockId::from_u128(1);
        let data = Bytes::from_static(b"abc");
        for q in [0, 3] {
            let err = io.put(&reps, id, data.clone(), q).await.unwrap_err();
            assert!(matches!(err, ClientError::Invalid(_)), "{err}");
        }
        let err = io.put(&reps, id, Bytes::new(), 1).await.unwrap_err();
        assert!(matches!(err, ClientError::Invalid(_)), "{err}");
        let big = Bytes::from(vec![0u8; MAX_BLOCK_SIZE as usize + 1]);
        let err = io.put(&reps, id, big, 1).await.unwrap_err();
        assert!(matches!(err, ClientError::Invalid(_)), "{err}");
        let dup = vec![reps[0].clone(), reps[0].clone()];
        let err = io.put(&dup, id, data, 2).await.unwrap_err();
        assert!(matches!(err, ClientError::Invalid(_)), "{err}");
    }

    #[tokio::test]
    async fn put_to_unreachable_nodes_names_each_failure() {
        let io = io();
        let reps: Vec<Replica> = (1..=2)
            .map(|n| Replica {
                node: n,
                addr: dead_addr(),
            })
            .collect();
        let err = io
            .put(&reps, BlockId::from_u128(2), Bytes::from_static(b"x"), 1)
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ClientError::Blocks(_)), "{msg}");
        assert!(msg.contains("node 1") && msg.contains("node 2"), "{msg}");
        assert!(msg.contains("0 of [1, 2] stored it"), "{msg}");
    }

    #[tokio::test]
    async fn get_from_unreachable_nodes_fails_without_bad_copies() {
        let io = io();
        let reps: Vec<Replica> = (1..=2)
            .map(|n| Replica {
                node: n,
                addr: dead_addr(),
            })
            .collect();
        let block = BlockRef {
            id: BlockId::from_u128(3),
            len: 10,
            crc: 0,
        };
        let err = io.get(&reps, &block, 0, 0).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ClientError::Blocks(_)), "{msg}");
        assert!(msg.contains("node 1") && msg.contains("node 2"), "{msg}");
        // Unreachable nodes say nothing about their copies.
        assert!(io.take_bad_copies().is_empty());
    }

    #[test]
    fn bad_copies_of_one_block_leave_the_others() {
        let io = io();
        io.record_bad_copy(1, BlockId::from_u128(9));
        io.record_bad_copy(2, BlockId::from_u128(8));
        io.record_bad_copy(3, BlockId::from_u128(9));
        assert_eq!(io.take_bad_copies_of(BlockId::from_u128(9)), vec![1, 3]);
        assert!(io.take_bad_copies_of(BlockId::from_u128(9)).is_empty());
        assert_eq!(io.take_bad_copies(), vec![(2, BlockId::from_u128(8))]);
    }

    #[tokio::test]
    async fn get_validates_the_range() {
        let io = io();
        let reps = vec![Replica {
            node: 1,
            addr: dead_addr(),
        }];
        let block = BlockRef {
            id: BlockId::from_u128(4),
            len: 10,
            crc: 0,
        };
        for (off, len) in [(11, 0), (5, 6), (u32::MAX, u32::MAX)] {
            let err = io.get(&reps, &block, off, len).await.unwrap_err();
            assert!(matches!(err, ClientError::Invalid(_)), "{off} {len}: {err}");
        }
        assert!(io.get(&reps, &block, 10, 0).await.unwrap().is_empty());
        assert!(io.get(&[], &block, 0, 1).await.is_err());
    }

    #[test]
    fn segment_checks_catch_protocol_errors_and_corruption() {
        let data = vec![7u8; SEGMENT_BYTES as usize + 10];
        let block = BlockRef {
            id: BlockId::from_u128(5),
            len: data.len() as u32,
            crc: checksum(&data),
        };
        let crcs: Vec<u32> = data.chunks(SEGMENT_BYTES as usize).map(checksum).collect();
        let end = block.len;
        assert!(verify_segments(&block, 0, end, 0, &data, &crcs).is_ok());
        let failed = |r| matches!(r, Err(ReadFail::Failed(_)));
        assert!(failed(verify_segments(&block, 0, end, 1, &data, &crcs)));
        assert!(failed(verify_segments(
            &block,
            0,
            end,
            0,
            &data,
            &crcs[..1]
        )));
        assert!(failed(verify_segments(&block, 0, end, 0, &[], &[])));
        assert!(failed(verify_segments(
            &block,
            0,
            end,
            0,
            &data[..100],
            &crcs[..1]
        )));
        let mut bad = data.clone();
        bad[SEGMENT_BYTES as usize + 3] ^= 1;
        assert!(matches!(
            verify_segments(&block, 0, end, 0, &bad, &crcs),
            Err(ReadFail::Corrupt(_))
        ));
    }

    #[test]
    fn bad_copies_are_deduplicated_and_drained() {
        let io = io();
        io.record_bad_copy(1, BlockId::from_u128(9));
        io.record_bad_copy(1, BlockId::from_u128(9));
        io.record_bad_copy(2, BlockId::from_u128(9));
        assert_eq!(
            io.take_bad_copies(),
            vec![(1, BlockId::from_u128(9)), (2, BlockId::from_u128(9))]
        );
        assert!(io.take_bad_copies().is_empty());
    }
}
