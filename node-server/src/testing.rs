//! Test support for the state machine: a store applied to directly, without Raft or a
//! network (used by the unit tests of `fsm`, `requests` and `snapshots`).

use crate::fsm::{apply, deleting_volumes, gc_batch, get, k_u64, prefix_end, query};
use crate::sm::{Reader, SmStore, Tbl};
use crate::types::{CloneSource, Command, Response};
use ringfs_core::fs::{Attr, ChunkSlice, FsError, FsOp, FsReply, FsResult};
use ringfs_core::ids::ROOT_INO;
use ringfs_core::layout::NodeSpec;
use ringfs_core::slice::{BlockRef, Slice};
use ringfs_core::{BlockId, Ino, VolumeId};
use std::ops::Bound;
use std::sync::Arc;

/// A state machine applied to directly, without Raft.
pub struct Sm {
    _dir: tempfile::TempDir,
    pub store: Arc<SmStore>,
}

pub fn block(n: u128, len: u32) -> BlockRef {
    BlockRef {
        id: BlockId::from_u128(n),
        len,
        crc: n as u32,
    }
}

pub fn one_slice(b: BlockRef) -> Vec<ChunkSlice> {
    vec![ChunkSlice {
        chunk: 0,
        slice: Slice {
            pos: 0,
            len: b.len,
            skip: 0,
            blocks: vec![b],
        },
    }]
}

impl Sm {
    pub fn new() -> Sm {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SmStore::open(dir.path()).expect("open");
        let sm = Sm { _dir: dir, store };
        let r = sm.apply(Command::AddNode {
            spec: NodeSpec {
                id: 1,
                zone: "z".into(),
                capacity: 1 << 40,
            },
            addr: "127.0.0.1:1".into(),
            partitions: 16,
            replication: 1,
        });
        assert!(matches!(r, Response::Layout { .. }), "{r:?}");
        sm
    }

    pub fn apply(&self, cmd: Command) -> Response {
        let tx = self.store.begin_write().expect("tx");
        let r = apply(&tx, cmd).expect("apply");
        tx.commit().expect("commit");
        r
    }

    pub fn volume(&self, name: &str, capacity: u64) -> VolumeId {
        match self.apply(Command::CreateVolume {
            name: name.into(),
            capacity,
            replication: 0,
            now_ns: 1,
        }) {
            Response::Volume { volume, .. } => volume.id,
            other => panic!("create volume {name}: {other:?}"),
        }
    }

    pub fn fs(&self, volume: VolumeId, op: FsOp) -> FsResult {
        match self.apply(Command::Fs {
            volume,
            op,
            now_ns: 2,
        }) {
            Response::Fs(r) => r,
            other => panic!("fs: {other:?}"),
        }
    }

    pub fn attr(&self, volume: VolumeId, op: FsOp) -> Attr {
        match self.fs(volume, op) {
            Ok(FsReply::Attr(a)) => a,
            other => panic!("expected attributes: {other:?}"),
        }
    }

    /// Creates `/name` holding block `b`.
    pub fn file(&self, volume: VolumeId, name: &str, b: BlockRef) -> Ino {
        let a = self.attr(
            volume,
            FsOp::Create {
                parent: ROOT_INO,
                name: name.into(),
                mode: 0o644,
                uid: 0,
                gid: 0,
                exclusive: true,
            },
        );
        self.attr(
            volume,
            FsOp::Write {
                ino: a.ino,
                slices: one_slice(b),
                min_size: 0,
            },
        );
        a.ino
    }

    pub fn read(&self, volume: VolumeId, op: FsOp) -> FsResult {
        query(&self.store.read().expect("read"), volume, &op).expect("query")
    }

    /// (attributes, slices) of `/path`'s first chunk.
    pub fn content(&self, volume: VolumeId, path: &str) -> Result<(Attr, Vec<Slice>), FsError> {
        let a = match self.read(volume, FsOp::ResolvePath { path: path.into() })? {
            FsReply::Attr(a) => a,
            other => panic!("{other:?}"),
        };
        match self.read(
            volume,
            FsOp::ReadChunk {
                ino: a.ino,
                chunk: 0,
            },
        )? {
            FsReply::Chunk { attr, slices } => Ok((attr, slices)),
            other => panic!("{other:?}"),
        }
    }

    pub fn refs(&self, b: &BlockRef) -> u64 {
        let tx = self.store.read().expect("read");
        get::<u64>(&tx, Tbl::BlockRefs, &b.id.0)
            .expect("get")
            .unwrap_or(0)
    }

    pub fn queued_for_gc(&self, b: &BlockRef) -> bool {
        let tx = self.store.read().expect("read");
        gc_batch(&tx, usize::MAX).expect("gc").contains(&b.id)
    }

    /// Runs the janitor's purge to the end, in small batches.
    pub fn purge(&self) {
        let ids = deleting_volumes(&self.store.read().expect("read")).expect("deleting");
        for id in ids {
            while let Response::Purged { remaining: true } =
                self.apply(Command::PurgeVolume { id, limit: 3 })
            {}
        }
    }

    pub fn rows(&self, t: Tbl, vol: VolumeId) -> usize {
        let tx = self.store.read().expect("read");
        let p = k_u64(vol);
        tx.scan(t, Bound::Included(&p), &prefix_end(&p), usize::MAX)
            .expect("scan")
            .len()
    }

    pub fn snapshot(&self, name: &str, volume: &str) -> Response {
        self.apply(Command::CreateSnapshot {
            name: name.into(),
            volume: volume.into(),
            now_ns: 3,
        })
    }

    pub fn clone_of(&self, name: &str, capacity: u64, source: CloneSource) -> Response {
        self.apply(Command::CloneVolume {
            name: name.into(),
            capacity,
            replication: 0,
            source,
            now_ns: 4,
        })
    }
}
