//! Dirty (written, not yet committed) byte ranges of one file.
//!
//! Invariant: extents never overlap and never touch (adjacent writes are merged), so a
//! sequential writer builds one growing buffer and a read can overlay the extents in
//! any order.

use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub struct Extents {
    /// Start offset → data.
    map: BTreeMap<u64, Vec<u8>>,
    bytes: usize,
}

impl Extents {
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Buffered bytes.
    /// Separate extents held (each becomes at least one slice when committed).
    pub fn count(&self) -> usize {
        self.map.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// One past the last buffered byte (0 when empty).
    pub fn end(&self) -> u64 {
        self.map
            .iter()
            .next_back()
            .map(|(off, d)| off + d.len() as u64)
            .unwrap_or(0)
    }

    /// Records a write of `data` at `off`, newer than everything buffered.
    pub fn write(&mut self, off: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = off + data.len() as u64;
        // Fast path: extends (or overwrites the tail of) the extent starting at or before
        // `off`, with nothing after it that the write reaches.
        if let Some((&s, buf)) = self.map.range_mut(..=off).next_back() {
            let e = s + buf.len() as u64;
            let next_reached = self
                .map
                .range(off + 1..)
                .next()
                .is_some_and(|(&n, _)| n <= end);
            if e >= off && !next_reached {
                let buf = self.map.get_mut(&s).expect("extent just found");
                let rel = (off - s) as usize;
                let old_len = buf.len();
                let new_len = old_len.max(rel + data.len());
                buf.resize(new_len, 0);
                buf[rel..rel + data.len()].copy_from_slice(data);
                self.bytes += new_len - old_len;
                return;
            }
        }
        // General path: merge every extent overlapping or touching [off, end).
        let touching: Vec<u64> = self
            .map
            .range(..=end)
            .filter(|(&s, d)| s + d.len() as u64 >= off)
            .map(|(&s, _)| s)
            .collect();
        let start = touching.first().map_or(off, |&s| s.min(off));
        let mut stop = end;
        for s in &touching {
            stop = stop.max(s + self.map[s].len() as u64);
        }
        let mut merged = vec![0u8; (stop - start) as usize];
        for s in touching {
            if let Some(d) = self.map.remove(&s) {
                self.bytes -= d.len();
                let rel = (s - start) as usize;
                merged[rel..rel + d.len()].copy_from_slice(&d);
            }
        }
        let rel = (off - start) as usize;
        merged[rel..rel + data.len()].copy_from_slice(data);
        self.bytes += merged.len();
        self.map.insert(start, merged);
    }

    /// The buffered bytes inside `[off, end)`, as (offset, bytes) in offset order.
    fn overlapping(&self, off: u64, end: u64) -> impl Iterator<Item = (u64, &[u8])> {
        self.map.range(..end).filter_map(move |(&s, d)| {
            let e = s + d.len() as u64;
            if e <= off {
                return None;
            }
            let a = s.max(off);
            let b = e.min(end);
            Some((a, &d[(a - s) as usize..(b - s) as usize]))
        })
    }

    /// Copies buffered bytes that fall inside `[off, off + out.len())` into `out`.
    pub fn overlay(&self, off: u64, out: &mut [u8]) {
        let end = off + out.len() as u64;
        for (a, part) in self.overlapping(off, end) {
            let rel = (a - off) as usize;
            out[rel..rel + part.len()].copy_from_slice(part);
        }
    }

    /// A copy of the buffered bytes inside `[off, off + len)`, for overlaying later.
    pub fn copy_range(&self, off: u64, len: u64) -> Extents {
        let mut out = Extents::default();
        for (a, part) in self.overlapping(off, off.saturating_add(len)) {
            out.bytes += part.len();
            out.map.insert(a, part.to_vec());
        }
        out
    }

    /// Removes and returns every extent, in offset order.
    pub fn take(&mut self) -> Vec<(u64, Vec<u8>)> {
        self.bytes = 0;
        std::mem::take(&mut self.map).into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn matches_a_flat_buffer() {
        for seed in 0..200u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut ext = Extents::default();
            let mut flat = vec![0u8; 4096];
            let mut written = vec![false; 4096];
            for _ in 0..rng.random_range(1..30) {
                let off = rng.random_range(0..4000u64);
                let len = rng.random_range(1..=(4096 - off as usize).min(300));
                let byte: u8 = rng.random();
                let data = vec![byte; len];
                ext.write(off, &data);
                flat[off as usize..off as usize + len].copy_from_slice(&data);
                written[off as usize..off as usize + len].fill(true);
            }
            let mut out = vec![0u8; 4096];
            ext.overlay(0, &mut out);
            assert_eq!(out, flat, "seed {seed}");
            // A copied window overlays exactly what the window of the flat buffer holds.
            let (w_off, w_len) = (rng.random_range(0..4096u64), rng.random_range(0..600u64));
            let w_end = (w_off + w_len).min(4096);
            let copy = ext.copy_range(w_off, w_end - w_off);
            let mut window = vec![0u8; (w_end - w_off) as usize];
            copy.overlay(w_off, &mut window);
            let mut mask = window.clone();
            for (i, m) in mask.iter_mut().enumerate() {
                let p = w_off as usize + i;
                *m = if written[p] { flat[p] } else { 0 };
            }
            assert_eq!(window, mask, "seed {seed} window {w_off}+{w_len}");
            let in_window = written[w_off as usize..w_end as usize]
                .iter()
                .filter(|w| **w)
                .count();
            assert_eq!(copy.bytes(), in_window, "seed {seed}");
            assert_eq!(ext.bytes(), written.iter().filter(|w| **w).count());
            let last = written.iter().rposition(|w| *w).map_or(0, |p| p + 1);
            assert_eq!(ext.end(), last as u64);
            let parts = ext.take();
            for w in parts.windows(2) {
                assert!(w[0].0 + w[0].1.len() as u64 <= w[1].0);
            }
        }
    }
}
