//! Shared pieces of the ringfs fuzz targets: an in-memory state-machine store and the
//! writer of each target's seed corpus.
//!
//! Seeds are encoded with the real types (so they stay valid when a format changes):
//! every target writes its seeds when started with `RINGFS_FUZZ_WRITE_SEEDS=<dir>`
//! (see `fuzz/seeds.sh`), then fuzzes as usual.

use ringfs_node::error::Result;
use ringfs_node::sm::{Reader, Tbl, Writer};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::PathBuf;

/// The state-machine tables in memory: what `fsm::apply` sees through [`Writer`].
#[derive(Default)]
pub struct MemStore {
    pub tables: RefCell<BTreeMap<(u8, Vec<u8>), Vec<u8>>>,
}

impl MemStore {
    pub fn snapshot(&self) -> BTreeMap<(u8, Vec<u8>), Vec<u8>> {
        self.tables.borrow().clone()
    }
}

impl Reader for MemStore {
    fn get(&self, t: Tbl, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.tables.borrow().get(&(t as u8, key.to_vec())).cloned())
    }

    fn scan(
        &self,
        t: Tbl,
        start: Bound<&[u8]>,
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let t = t as u8;
        let lo = match start {
            Bound::Included(k) => Bound::Included((t, k.to_vec())),
            Bound::Excluded(k) => Bound::Excluded((t, k.to_vec())),
            Bound::Unbounded => Bound::Included((t, Vec::new())),
        };
        let hi = Bound::Excluded((t, end.to_vec()));
        // BTreeMap::range panics on an inverted range; the redb tables return nothing.
        let inverted = match (&lo, &hi) {
            (Bound::Included(a) | Bound::Excluded(a), Bound::Excluded(b)) => a >= b,
            _ => false,
        };
        if inverted {
            return Ok(Vec::new());
        }
        Ok(self
            .tables
            .borrow()
            .range((lo, hi))
            .take(limit)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }
}

impl Writer for MemStore {
    fn put(&self, t: Tbl, key: &[u8], value: &[u8]) -> Result<()> {
        self.tables
            .borrow_mut()
            .insert((t as u8, key.to_vec()), value.to_vec());
        Ok(())
    }

    fn del(&self, t: Tbl, key: &[u8]) -> Result<bool> {
        Ok(self
            .tables
            .borrow_mut()
            .remove(&(t as u8, key.to_vec()))
            .is_some())
    }
}

/// Writes `seeds` as `<dir>/<target>/seed-<i>` when `RINGFS_FUZZ_WRITE_SEEDS=<dir>` is set.
pub fn write_seeds(target: &str, seeds: impl FnOnce() -> Vec<Vec<u8>>) {
    let Some(dir) = std::env::var_os("RINGFS_FUZZ_WRITE_SEEDS") else {
        return;
    };
    let dir = PathBuf::from(dir).join(target);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("cannot create {}: {e}", dir.display());
    }
    for (i, seed) in seeds().into_iter().enumerate() {
        let path = dir.join(format!("seed-{i:03}"));
        if let Err(e) = std::fs::write(&path, seed) {
            panic!("cannot write {}: {e}", path.display());
        }
    }
}

/// `postcard` encoding of a value the seeds are built from (always encodable).
pub fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    match postcard::to_allocvec(v) {
        Ok(b) => b,
        Err(e) => panic!("seed does not encode: {e}"),
    }
}
