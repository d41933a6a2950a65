//! The mount's cache of block data, kept in 64 KiB segments (the unit the block
//! protocol checksums and returns).
//!
//! Blocks are immutable, so a cached segment can never be stale: no invalidation exists
//! or is needed. A read fetches only the segments it lacks: a random 4 KiB read moves
//! one 64 KiB segment instead of the whole (up to 4 MiB) block, while a sequential reader
//! fetches the rest of the block at once (see [`Fetch`]). Reads that need a segment
//! another read is already fetching wait for that fetch instead of repeating it, so the
//! kernel's parallel readahead requests cost one transfer.

use bytes::{Bytes, BytesMut};
use ringfs_client::blocks::SEGMENT_BYTES;
use ringfs_client::{ClientError, Result};
use ringfs_core::slice::BlockRef;
use ringfs_core::BlockId;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::watch;

/// How much of a block a cache miss fetches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fetch {
    /// The segments the read needs.
    Needed,
    /// From the first missing segment to the end of the block (sequential readers).
    ToEnd,
}

type Key = (BlockId, u32);

struct Inflight {
    id: u64,
    lo: u32,
    hi: u32,
    done: watch::Receiver<bool>,
}

#[derive(Default)]
struct Inner {
    /// Segment → (data, LRU tick).
    segs: HashMap<Key, (Bytes, u64)>,
    /// LRU tick → segment; the smallest tick is evicted first.
    lru: BTreeMap<u64, Key>,
    tick: u64,
    bytes: usize,
    /// Fetches under way, per block: the inclusive segment range each covers.
    inflight: HashMap<BlockId, Vec<Inflight>>,
    next_fetch: u64,
}

impl Inner {
    fn touch(&mut self, key: Key) -> Option<Bytes> {
        self.tick += 1;
        let tick = self.tick;
        let (data, t) = self.segs.get_mut(&key)?;
        let old = std::mem::replace(t, tick);
        let data = data.clone();
        self.lru.remove(&old);
        self.lru.insert(tick, key);
        Some(data)
    }

    fn insert(&mut self, key: Key, data: Bytes, cap: usize) {
        if self.segs.contains_key(&key) {
            return;
        }
        self.tick += 1;
        self.bytes += data.len();
        self.segs.insert(key, (data, self.tick));
        self.lru.insert(self.tick, key);
        while self.bytes > cap {
            let Some((_, k)) = self.lru.pop_first() else {
                break;
            };
            if let Some((d, _)) = self.segs.remove(&k) {
                self.bytes -= d.len();
            }
        }
    }
}

pub struct BlockCache {
    cap_bytes: usize,
    inner: Mutex<Inner>,
}

/// Removes its in-flight registration when the fetch ends, however it ends (also when
/// the reading future is dropped); dropping the sender wakes the waiters.
struct Registration<'a> {
    cache: &'a BlockCache,
    block: BlockId,
    id: u64,
    done: Option<watch::Sender<bool>>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut inner = self.cache.lock();
        if let Some(v) = inner.inflight.get_mut(&self.block) {
            v.retain(|f| f.id != self.id);
            if v.is_empty() {
                inner.inflight.remove(&self.block);
            }
        }
        drop(inner);
        if let Some(tx) = self.done.take() {
            let _ = tx.send(true);
        }
    }
}

enum Look<'a> {
    Hit(Vec<Bytes>),
    Wait(watch::Receiver<bool>),
    Fetch {
        have: Vec<Bytes>,
        m: u32,
        f_hi: u32,
        reg: Registration<'a>,
    },
}

/// Segment indexes `[lo, hi]` of the bytes `[off, off + len)`, `len > 0`.
fn seg_range(off: u32, len: u32) -> (u32, u32) {
    (off / SEGMENT_BYTES, (off + len - 1) / SEGMENT_BYTES)
}

/// Joins segments `lo..` (in order) and cuts out `[off, off + len)` of the block.
fn assemble(segs: Vec<Bytes>, lo: u32, off: u32, len: u32) -> Result<Bytes> {
    let start = (off - lo * SEGMENT_BYTES) as usize;
    let end = start + len as usize;
    let joined = if segs.len() == 1 {
        segs.into_iter().next().unwrap_or_default()
    } else {
        let mut b = BytesMut::with_capacity(segs.iter().map(Bytes::len).sum());
        for s in &segs {
            b.extend_from_slice(s);
        }
        b.freeze()
    };
    if end > joined.len() {
        return Err(ClientError::Protocol(format!(
            "block data holds {} bytes from segment {lo}, a read needs up to {end}",
            joined.len()
        )));
    }
    Ok(joined.slice(start..end))
}

impl BlockCache {
    pub fn new(cap_bytes: usize) -> BlockCache {
        BlockCache {
            cap_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes cached now.
    pub fn cached_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Reads `[off, off + len)` of `block`, from the cache where it can. `fetch(a, b)`
    /// must return bytes `[a, b)` of the block; `a` is segment-aligned and `b` is a
    /// segment boundary or the block's end.
    pub async fn read<F, Fut>(
        &self,
        block: &BlockRef,
        off: u32,
        len: u32,
        mode: Fetch,
        fetch: F,
    ) -> Result<Bytes>
    where
        F: Fn(u32, u32) -> Fut,
        Fut: Future<Output = Result<Bytes>>,
    {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let end = u64::from(off) + u64::from(len);
        if end > u64::from(block.len) {
            return Err(ClientError::Invalid(format!(
                "read of block {} at {off}+{len} is outside its {} bytes",
                block.id, block.len
            )));
        }
        let (lo, hi) = seg_range(off, len);
        let last_seg = (block.len - 1) / SEGMENT_BYTES;
        // Waiting on another reader's fetch is bounded: after a few rounds (its fetches
        // failed or its data was evicted at once) this read fetches for itself.
        for _ in 0..4 {
            match self.look(block, lo, hi, mode, last_seg) {
                Look::Hit(have) => return assemble(have, lo, off, len),
                Look::Fetch { have, m, f_hi, reg } => {
                    return self
                        .fetch_into(block, reg, have, (lo, hi, m, f_hi), off, len, &fetch)
                        .await;
                }
                Look::Wait(mut done) => {
                    // An error means the fetch ended without data (its sender was
                    // dropped): look again, and fetch here if still missing.
                    let _ = done.wait_for(|done| *done).await;
                }
            }
        }
        let a = lo * SEGMENT_BYTES;
        let b = ((hi + 1) * SEGMENT_BYTES).min(block.len);
        let data = fetch(a, b).await?;
        assemble(vec![data], lo, off, len)
    }

    /// Finds segments `lo..=hi` of `block` in the cache, or the fetch to wait for, or
    /// registers a fetch of the first missing segment onwards.
    fn look(&self, block: &BlockRef, lo: u32, hi: u32, mode: Fetch, last_seg: u32) -> Look<'_> {
        let mut inner = self.lock();
        let mut have = Vec::with_capacity((hi - lo + 1) as usize);
        let mut missing = None;
        for s in lo..=hi {
            match inner.touch((block.id, s)) {
                Some(d) => have.push(d),
                None => {
                    missing = Some(s);
                    break;
                }
            }
        }
        let Some(m) = missing else {
            return Look::Hit(have);
        };
        if let Some(f) = inner
            .inflight
            .get(&block.id)
            .and_then(|v| v.iter().find(|f| f.lo <= m && m <= f.hi))
        {
            return Look::Wait(f.done.clone());
        }
        let f_hi = match mode {
            Fetch::Needed => hi,
            Fetch::ToEnd => last_seg,
        };
        inner.next_fetch += 1;
        let id = inner.next_fetch;
        let (tx, rx) = watch::channel(false);
        inner.inflight.entry(block.id).or_default().push(Inflight {
            id,
            lo: m,
            hi: f_hi,
            done: rx,
        });
        Look::Fetch {
            have,
            m,
            f_hi,
            reg: Registration {
                cache: self,
                block: block.id,
                id,
                done: Some(tx),
            },
        }
    }

    /// Fetches segments `m..=f_hi`, caches them and answers the read of segments
    /// `lo..=hi` (`have` holds `lo..m` from the cache).
    #[allow(clippy::too_many_arguments)]
    async fn fetch_into<F, Fut>(
        &self,
        block: &BlockRef,
        reg: Registration<'_>,
        mut have: Vec<Bytes>,
        (lo, hi, m, f_hi): (u32, u32, u32, u32),
        off: u32,
        len: u32,
        fetch: &F,
    ) -> Result<Bytes>
    where
        F: Fn(u32, u32) -> Fut,
        Fut: Future<Output = Result<Bytes>>,
    {
        let a = m * SEGMENT_BYTES;
        let b = ((f_hi + 1) * SEGMENT_BYTES).min(block.len);
        let data = fetch(a, b).await?;
        if data.len() != (b - a) as usize {
            return Err(ClientError::Protocol(format!(
                "block {}: asked for {} bytes at {a}, got {}",
                block.id,
                b - a,
                data.len()
            )));
        }
        let mut segs = Vec::with_capacity((f_hi - m + 1) as usize);
        let mut pos = 0usize;
        while pos < data.len() {
            let e = (pos + SEGMENT_BYTES as usize).min(data.len());
            segs.push(data.slice(pos..e));
            pos = e;
        }
        {
            let mut inner = self.lock();
            for (i, s) in segs.iter().enumerate() {
                inner.insert((block.id, m + i as u32), s.clone(), self.cap_bytes);
            }
        }
        drop(reg);
        have.extend(segs.into_iter().take((hi - m + 1) as usize));
        assemble(have, lo, off, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const SEG: u32 = SEGMENT_BYTES;

    fn block(len: u32) -> (BlockRef, Bytes) {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let b = BlockRef {
            id: BlockId([7; 16]),
            len,
            crc: 0,
        };
        (b, Bytes::from(data))
    }

    struct Source {
        data: Bytes,
        calls: AtomicUsize,
        fetched: AtomicUsize,
    }

    impl Source {
        async fn get(&self, a: u32, b: u32) -> Result<Bytes> {
            assert_eq!(a % SEG, 0, "fetch starts on a segment");
            assert!(b.is_multiple_of(SEG) || b as usize == self.data.len());
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.fetched.fetch_add((b - a) as usize, Ordering::SeqCst);
            tokio::task::yield_now().await;
            Ok(self.data.slice(a as usize..b as usize))
        }
    }

    fn source(data: &Bytes) -> Source {
        Source {
            data: data.clone(),
            calls: AtomicUsize::new(0),
            fetched: AtomicUsize::new(0),
        }
    }

    #[tokio::test]
    async fn a_small_read_fetches_one_segment_and_then_hits() {
        let (b, data) = block(4 << 20);
        let src = source(&data);
        let cache = BlockCache::new(64 << 20);
        let off = 3 * SEG + 100;
        let got = cache
            .read(&b, off, 4096, Fetch::Needed, |a, e| src.get(a, e))
            .await
            .unwrap();
        assert_eq!(got, data.slice(off as usize..off as usize + 4096));
        assert_eq!(src.fetched.load(Ordering::SeqCst), SEG as usize);
        let again = cache
            .read(&b, off + 8000, 1000, Fetch::Needed, |a, e| src.get(a, e))
            .await
            .unwrap();
        assert_eq!(again, data.slice(off as usize + 8000..off as usize + 9000));
        assert_eq!(src.calls.load(Ordering::SeqCst), 1, "second read hit");
    }

    #[tokio::test]
    async fn reads_across_segments_and_the_short_last_segment() {
        let len = 5 * SEG + 1234;
        let (b, data) = block(len);
        let src = source(&data);
        let cache = BlockCache::new(64 << 20);
        for (off, n) in [
            (SEG - 10, 20),
            (0, len),
            (len - 1, 1),
            (2 * SEG, SEG),
            (5 * SEG, 1234),
        ] {
            let got = cache
                .read(&b, off, n, Fetch::Needed, |a, e| src.get(a, e))
                .await
                .unwrap();
            assert_eq!(
                got,
                data.slice(off as usize..(off + n) as usize),
                "{off}+{n}"
            );
        }
        let err = cache
            .read(&b, len - 1, 2, Fetch::Needed, |a, e| src.get(a, e))
            .await;
        assert!(err.is_err(), "a read past the block's end is refused");
    }

    #[tokio::test]
    async fn sequential_mode_fetches_the_rest_of_the_block_once() {
        let (b, data) = block(4 << 20);
        let src = source(&data);
        let cache = BlockCache::new(64 << 20);
        let mut off = SEG;
        while off + (128 << 10) <= b.len {
            let got = cache
                .read(&b, off, 128 << 10, Fetch::ToEnd, |a, e| src.get(a, e))
                .await
                .unwrap();
            assert_eq!(got, data.slice(off as usize..(off + (128 << 10)) as usize));
            off += 128 << 10;
        }
        assert_eq!(src.calls.load(Ordering::SeqCst), 1);
        assert_eq!(src.fetched.load(Ordering::SeqCst), (4 << 20) - SEG as usize);
    }

    #[tokio::test]
    async fn concurrent_readers_share_one_fetch() {
        let (b, data) = block(4 << 20);
        let src = source(&data);
        let cache = BlockCache::new(64 << 20);
        let reads = (0..32u32).map(|i| {
            let (b, src, cache) = (&b, &src, &cache);
            async move {
                let off = i * (128 << 10);
                let got = cache
                    .read(b, off, 128 << 10, Fetch::ToEnd, |a, e| src.get(a, e))
                    .await
                    .unwrap();
                (off, got)
            }
        });
        for (off, got) in futures::future::join_all(reads).await {
            assert_eq!(got, data.slice(off as usize..(off + (128 << 10)) as usize));
        }
        assert_eq!(src.calls.load(Ordering::SeqCst), 1, "one transfer for all");
    }

    #[tokio::test]
    async fn a_failed_fetch_lets_waiters_fetch_themselves() {
        let (b, data) = block(1 << 20);
        let cache = BlockCache::new(64 << 20);
        let fails = AtomicUsize::new(1);
        let calls = AtomicUsize::new(0);
        let get = |a: u32, e: u32| {
            let data = data.clone();
            let (fails, calls) = (&fails, &calls);
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
                if fails
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| f.checked_sub(1))
                    .is_ok()
                {
                    return Err(ClientError::Blocks("replica down".into()));
                }
                Ok(data.slice(a as usize..e as usize))
            }
        };
        let (r1, r2) = tokio::join!(
            cache.read(&b, 0, 100, Fetch::ToEnd, get),
            cache.read(&b, 200, 100, Fetch::ToEnd, get)
        );
        assert!(r1.is_err(), "the failing fetch reports its error");
        assert_eq!(r2.unwrap(), data.slice(200..300));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(
            cache.lock().inflight.is_empty(),
            "no registration left behind"
        );
    }

    #[tokio::test]
    async fn the_cache_stays_within_its_capacity() {
        let (b, data) = block(4 << 20);
        let src = source(&data);
        let cache = BlockCache::new(4 * SEG as usize);
        for s in 0..64 {
            cache
                .read(&b, s * SEG, 10, Fetch::Needed, |a, e| src.get(a, e))
                .await
                .unwrap();
            assert!(cache.cached_bytes() <= 4 * SEG as usize);
        }
        // The most recent segments are the ones kept.
        let calls = src.calls.load(Ordering::SeqCst);
        cache
            .read(&b, 63 * SEG, 10, Fetch::Needed, |a, e| src.get(a, e))
            .await
            .unwrap();
        assert_eq!(src.calls.load(Ordering::SeqCst), calls);
        cache
            .read(&b, 0, 10, Fetch::Needed, |a, e| src.get(a, e))
            .await
            .unwrap();
        assert_eq!(src.calls.load(Ordering::SeqCst), calls + 1);
    }
}
