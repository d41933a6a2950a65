//! Files → chunks → slices → blocks (the JuiceFS shape).
//!
//! A file is a sequence of fixed-size chunks. Each write appends a [`Slice`] to the chunk
//! it falls in; a slice's data lives in immutable blocks of at most [`MAX_BLOCK_SIZE`].
//! Reading merges a chunk's slices, newest on top ([`resolve`]). Because blocks never
//! change, replication, migration and caching need no coordination with writers.

use crate::ids::BlockId;
use serde::{Deserialize, Serialize};

/// Bytes per chunk.
pub const CHUNK_SIZE: u64 = 64 << 20;
/// Largest block.
pub const MAX_BLOCK_SIZE: u32 = 4 << 20;

/// crc32c of a block's content.
pub fn checksum(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// An immutable, checksummed block as referenced from metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRef {
    pub id: BlockId,
    pub len: u32,
    pub crc: u32,
}

/// One write into a chunk: `len` bytes at chunk offset `pos`, whose content is bytes
/// `[skip, skip + len)` of the concatenation of `blocks`. A slice without blocks is a
/// hole and reads as zeros (truncate uses these to hide older data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice {
    pub pos: u32,
    pub len: u32,
    pub skip: u32,
    pub blocks: Vec<BlockRef>,
}

impl Slice {
    pub fn zero(pos: u32, len: u32) -> Self {
        Slice {
            pos,
            len,
            skip: 0,
            blocks: Vec::new(),
        }
    }

    pub fn end(&self) -> u64 {
        u64::from(self.pos) + u64::from(self.len)
    }

    /// Total bytes held by the slice's blocks.
    pub fn data_len(&self) -> u64 {
        self.blocks.iter().map(|b| u64::from(b.len)).sum()
    }

    /// A slice is well-formed when it stays inside its chunk and its visible range lies
    /// inside its data (or it is a hole). Slices come from clients: always check.
    pub fn is_valid(&self) -> bool {
        let in_chunk = self.end() <= CHUNK_SIZE && self.len > 0;
        let blocks_ok = self
            .blocks
            .iter()
            .all(|b| b.len > 0 && b.len <= MAX_BLOCK_SIZE);
        let data_ok =
            self.blocks.is_empty() || u64::from(self.skip) + u64::from(self.len) <= self.data_len();
        in_chunk && blocks_ok && data_ok && (!self.blocks.is_empty() || self.skip == 0)
    }
}

/// A piece of a read: either zeros or a range of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    Zero {
        pos: u32,
        len: u32,
    },
    Data {
        pos: u32,
        len: u32,
        block: BlockRef,
        block_off: u32,
    },
}

impl Piece {
    pub fn pos(&self) -> u32 {
        match *self {
            Piece::Zero { pos, .. } | Piece::Data { pos, .. } => pos,
        }
    }
    pub fn len(&self) -> u32 {
        match *self {
            Piece::Zero { len, .. } | Piece::Data { len, .. } => len,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Visible ranges of a chunk: `(start, end, slice index)` sorted and non-overlapping,
/// with newer slices (later in `slices`) on top of older ones.
pub fn visible(slices: &[Slice]) -> Vec<(u64, u64, usize)> {
    let mut segs: Vec<(u64, u64, usize)> = Vec::new();
    for (idx, s) in slices.iter().enumerate() {
        let (a, b) = (u64::from(s.pos), s.end());
        if a >= b {
            continue;
        }
        let mut next = Vec::with_capacity(segs.len() + 2);
        for &(s0, e0, i0) in &segs {
            if e0 <= a || s0 >= b {
                next.push((s0, e0, i0));
                continue;
            }
            if s0 < a {
                next.push((s0, a, i0));
            }
            if e0 > b {
                next.push((b, e0, i0));
            }
        }
        next.push((a, b, idx));
        next.sort_unstable();
        segs = next;
    }
    segs
}

/// The pieces to read for chunk range `[start, end)`, in order and covering it exactly.
/// Ranges no slice covers read as zeros.
pub fn resolve(slices: &[Slice], start: u32, end: u32) -> Vec<Piece> {
    let (start64, end64) = (u64::from(start), u64::from(end));
    let mut out = Vec::new();
    let mut cur = start64;
    for (s0, e0, idx) in visible(slices) {
        let (a, b) = (s0.max(start64), e0.min(end64));
        if a >= b {
            continue;
        }
        if cur < a {
            out.push(Piece::Zero {
                pos: cur as u32,
                len: (a - cur) as u32,
            });
        }
        push_slice_pieces(&slices[idx], a, b, &mut out);
        cur = b;
    }
    if cur < end64 {
        out.push(Piece::Zero {
            pos: cur as u32,
            len: (end64 - cur) as u32,
        });
    }
    out
}

fn push_slice_pieces(s: &Slice, a: u64, b: u64, out: &mut Vec<Piece>) {
    if s.blocks.is_empty() {
        out.push(Piece::Zero {
            pos: a as u32,
            len: (b - a) as u32,
        });
        return;
    }
    // Offset of chunk position `a` inside the slice's concatenated data.
    let mut data_pos = u64::from(s.skip) + (a - u64::from(s.pos));
    let mut pos = a;
    let mut block_start = 0u64;
    for blk in &s.blocks {
        let block_end = block_start + u64::from(blk.len);
        if pos >= b {
            break;
        }
        if data_pos < block_end {
            let off = data_pos - block_start;
            let n = (block_end - data_pos).min(b - pos);
            out.push(Piece::Data {
                pos: pos as u32,
                len: n as u32,
                block: *blk,
                block_off: off as u32,
            });
            pos += n;
            data_pos += n;
        }
        block_start = block_end;
    }
    // A valid slice always has data for its whole visible range; if not (corrupt
    // metadata) the rest reads as zeros rather than panicking.
    if pos < b {
        out.push(Piece::Zero {
            pos: pos as u32,
            len: (b - pos) as u32,
        });
    }
}

/// Splits a file range into per-chunk ranges: `(chunk index, start in chunk, end in chunk)`.
pub fn chunk_ranges(offset: u64, len: u64) -> Vec<(u64, u32, u32)> {
    let mut out = Vec::new();
    let end = offset.saturating_add(len);
    let mut pos = offset;
    while pos < end {
        let idx = pos / CHUNK_SIZE;
        let cstart = pos % CHUNK_SIZE;
        let cend = (end - idx * CHUNK_SIZE).min(CHUNK_SIZE);
        out.push((idx, cstart as u32, cend as u32));
        pos = idx * CHUNK_SIZE + cend;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;

    /// Oracle: paint every slice onto a byte array, oldest first. Each byte records
    /// (block id as u128, offset in block) or None for zeros.
    fn paint(slices: &[Slice], size: usize) -> Vec<Option<(u128, u32)>> {
        let mut bytes = vec![None; size];
        for s in slices {
            let mut flat = Vec::new();
            for b in &s.blocks {
                for o in 0..b.len {
                    flat.push((b.id.as_u128(), o));
                }
            }
            for i in 0..s.len as usize {
                let p = s.pos as usize + i;
                bytes[p] = if s.blocks.is_empty() {
                    None
                } else {
                    Some(flat[s.skip as usize + i])
                };
            }
        }
        bytes
    }

    fn flatten(pieces: &[Piece]) -> Vec<Option<(u128, u32)>> {
        let mut out = Vec::new();
        for p in pieces {
            match *p {
                Piece::Zero { len, .. } => out.extend(std::iter::repeat_n(None, len as usize)),
                Piece::Data {
                    len,
                    block,
                    block_off,
                    ..
                } => out.extend((0..len).map(|i| Some((block.id.as_u128(), block_off + i)))),
            }
        }
        out
    }

    fn arb_slice(size: u32, next_id: u128) -> impl Strategy<Value = Slice> {
        (
            0..size,
            1..=size,
            prop::collection::vec(1u32..40, 0..4),
            0u32..10,
        )
            .prop_map(move |(pos, len, blens, skip)| {
                let len = len.min(size - pos).max(1);
                let pos = pos.min(size - len);
                if blens.is_empty() {
                    return Slice::zero(pos, len);
                }
                let mut blocks: Vec<BlockRef> = blens
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| BlockRef {
                        id: BlockId::from_u128(next_id * 16 + i as u128),
                        len: l,
                        crc: 0,
                    })
                    .collect();
                let total: u32 = blocks.iter().map(|b| b.len).sum();
                let skip = skip.min(total.saturating_sub(1));
                let need = skip + len;
                if need > total {
                    let last = blocks.len() - 1;
                    blocks[last].len += need - total;
                }
                Slice {
                    pos,
                    len,
                    skip,
                    blocks,
                }
            })
    }

    proptest! {
        #[test]
        fn resolve_matches_painting(
            seeds in prop::collection::vec(any::<u8>(), 1..12),
            start in 0u32..200, span in 0u32..200,
        ) {
            let size = 200u32;
            let mut runner = proptest::test_runner::TestRunner::deterministic();
            let slices: Vec<Slice> = seeds.iter().enumerate().map(|(i, _)| {
                arb_slice(size, i as u128 + 1).new_tree(&mut runner).map(|t| t.current())
            }).collect::<Result<_, _>>().map_err(|e| TestCaseError::fail(e.to_string()))?;
            for s in &slices { prop_assert!(s.is_valid(), "{s:?}"); }
            let end = (start + span).min(size);
            let start = start.min(end);
            let pieces = resolve(&slices, start, end);
            let mut pos = start;
            for p in &pieces { prop_assert_eq!(p.pos(), pos); pos += p.len(); }
            prop_assert_eq!(pos, end);
            let painted = paint(&slices, size as usize);
            prop_assert_eq!(flatten(&pieces), painted[start as usize..end as usize].to_vec());
        }
    }

    #[test]
    fn chunk_ranges_split_at_boundaries() {
        assert_eq!(chunk_ranges(0, 0), vec![]);
        assert_eq!(chunk_ranges(10, 5), vec![(0, 10, 15)]);
        let c = CHUNK_SIZE as u32;
        assert_eq!(
            chunk_ranges(CHUNK_SIZE - 1, 2),
            vec![(0, c - 1, c), (1, 0, 1)]
        );
        assert_eq!(chunk_ranges(CHUNK_SIZE, CHUNK_SIZE), vec![(1, 0, c)]);
    }

    #[test]
    fn invalid_slices_are_refused() {
        let b = BlockRef {
            id: BlockId::from_u128(1),
            len: 10,
            crc: 0,
        };
        assert!(Slice {
            pos: 0,
            len: 10,
            skip: 0,
            blocks: vec![b]
        }
        .is_valid());
        assert!(!Slice {
            pos: 0,
            len: 11,
            skip: 0,
            blocks: vec![b]
        }
        .is_valid());
        assert!(!Slice {
            pos: 0,
            len: 0,
            skip: 0,
            blocks: vec![b]
        }
        .is_valid());
        assert!(!Slice {
            pos: CHUNK_SIZE as u32 - 5,
            len: 10,
            skip: 0,
            blocks: vec![b]
        }
        .is_valid());
        assert!(!Slice {
            pos: 0,
            len: 5,
            skip: 1,
            blocks: vec![]
        }
        .is_valid());
    }
}
