//! Compaction of fragmented chunks: which byte ranges of a chunk to rewrite as fresh
//! data slices so the chunk reads the same with far fewer slices.
//!
//! Every write adds a slice; reads merge them newest-first, so a chunk written in many
//! small pieces gets slow to read and its metadata grows. Compaction reads the merged
//! content and replaces the whole slice list by the [`plan`]'s runs, each one new slice.
//! Nothing lies underneath the new slices, so ranges that read as zeros need no slice
//! at all (an uncovered range reads as zeros); short zero gaps between data are kept
//! inside a run so the result stays a handful of slices.

use crate::slice::{resolve, Piece, Slice};

/// A chunk with more slices than this is worth compacting.
pub const COMPACT_THRESHOLD: usize = 32;

/// Words of the error a write gets when its chunk already holds the most slices the
/// state machine accepts; writers compact the chunk and retry on it.
pub const TOO_MANY_SLICES: &str = "has too many slices";

/// Zero gaps at most this long between data are rewritten as data (cheaper than an
/// extra slice and an extra block fetch).
pub const INLINE_ZERO_GAP: u32 = 1 << 20;

/// A range `[pos, pos + len)` of the chunk to rewrite as one data slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub pos: u32,
    pub len: u32,
}

impl Run {
    pub fn end(&self) -> u32 {
        self.pos + self.len
    }
}

/// The data runs that reproduce the merged content of `slices`: every byte outside the
/// runs reads as zero. Runs are sorted and disjoint.
pub fn plan(slices: &[Slice]) -> Vec<Run> {
    let (Some(lo), Some(hi)) = (
        slices.iter().map(|s| s.pos).min(),
        slices.iter().map(|s| s.end()).max(),
    ) else {
        return Vec::new();
    };
    let mut runs: Vec<Run> = Vec::new();
    for p in resolve(slices, lo, hi as u32) {
        let Piece::Data { pos, len, .. } = p else {
            continue;
        };
        match runs.last_mut() {
            Some(r) if pos - r.end() <= INLINE_ZERO_GAP => r.len = pos + len - r.pos,
            _ => runs.push(Run { pos, len }),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::BlockId;
    use crate::slice::{BlockRef, CHUNK_SIZE};
    use proptest::prelude::*;

    fn data_slice(pos: u32, len: u32, id: u128) -> Slice {
        Slice {
            pos,
            len,
            skip: 0,
            blocks: vec![BlockRef {
                id: BlockId::from_u128(id),
                len,
                crc: 0,
            }],
        }
    }

    /// Which ranges hold data (non-zero source) in the merged view.
    fn data_ranges(slices: &[Slice], end: u32) -> Vec<(u32, u32)> {
        resolve(slices, 0, end)
            .into_iter()
            .filter_map(|p| match p {
                Piece::Data { pos, len, .. } => Some((pos, pos + len)),
                Piece::Zero { .. } => None,
            })
            .collect()
    }

    #[test]
    fn merges_overlaps_and_drops_zero_tails() {
        let s = vec![
            data_slice(0, 100, 1),
            data_slice(50, 100, 2),
            Slice::zero(120, (CHUNK_SIZE - 120) as u32),
            data_slice(10_000_000, 10, 3),
        ];
        assert_eq!(
            plan(&s),
            vec![
                Run { pos: 0, len: 120 },
                Run {
                    pos: 10_000_000,
                    len: 10
                }
            ]
        );
        assert!(plan(&[]).is_empty());
        assert!(plan(&[Slice::zero(0, 10)]).is_empty());
    }

    #[test]
    fn short_zero_gaps_are_inlined() {
        let s = vec![data_slice(0, 10, 1), data_slice(20, 10, 2)];
        assert_eq!(plan(&s), vec![Run { pos: 0, len: 30 }]);
    }

    proptest! {
        /// Every byte that reads as data before compaction lies inside a run, and a run
        /// never starts or ends on a zero byte (runs are as tight as the data).
        #[test]
        fn runs_cover_exactly_the_data(
            raw in prop::collection::vec((0u32..4_000_000, 1u32..600_000, any::<bool>()), 0..60)
        ) {
            let slices: Vec<Slice> = raw
                .iter()
                .enumerate()
                .map(|(i, &(pos, len, zero))| {
                    if zero { Slice::zero(pos, len) } else { data_slice(pos, len, i as u128) }
                })
                .collect();
            let runs = plan(&slices);
            for w in runs.windows(2) {
                prop_assert!(w[0].end() + INLINE_ZERO_GAP < w[1].pos);
            }
            let data = data_ranges(&slices, 5_000_000);
            for (a, b) in &data {
                prop_assert!(runs.iter().any(|r| r.pos <= *a && *b <= r.end()),
                    "data [{a}, {b}) outside the runs {runs:?}");
            }
            for r in &runs {
                prop_assert!(data.iter().any(|(a, _)| *a == r.pos));
                prop_assert!(data.iter().any(|(_, b)| *b == r.end()));
            }
        }
    }
}
