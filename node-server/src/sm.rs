//! The metadata state machine, stored in redb (`<data>/meta.redb`).
//!
//! Why redb: pure Rust (no C++ build on 2-core builders), ACID transactions with
//! copy-on-write B-trees, one file, and cheap concurrent read transactions, which is what
//! linearizable reads next to a single applying writer need. fjall (LSM) would write
//! faster under heavy load but brings background compaction we do not need yet.
//!
//! Durability: applied batches commit with `Durability::None` (no fsync): the Raft log
//! is the durable record, and after a crash the store comes back at its last durable
//! commit together with the matching `last_applied`, so openraft re-applies the rest.
//! A durable commit happens at least every [`DURABLE_EVERY`] batches and always before a
//! snapshot is built, so the state is never behind a snapshot that allowed log purging.
//!
//! Snapshots stream: the builder writes a file record by record from one read
//! transaction; installing reads it back record by record. Neither holds the whole state
//! in memory.

use crate::error::{NodeError, Result};
use crate::fsm;
use crate::types::{
    Entry, LogId, NodeId, Response, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use redb::{Database, Durability, ReadableTable, TableDefinition};
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Longest run of non-durable commits.
pub const DURABLE_EVERY: u64 = 64;

const SNAP_MAGIC: &[u8; 4] = b"RFSS";
const SNAP_VERSION: u32 = 1;
const SNAP_END: u8 = 0xff;

/// The tables of the state machine. Keys and values are bytes; encodings are in `fsm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Tbl {
    Sys = 0,
    Volumes = 1,
    VolumeNames = 2,
    Inodes = 3,
    Dentries = 4,
    Chunks = 5,
    Xattrs = 6,
    BlockRefs = 7,
    Gc = 8,
    Nodes = 9,
    Layouts = 10,
    Deleting = 11,
    /// Snapshots by id ([`crate::snapshots::SnapshotRec`]); their namespaces live in the
    /// namespace tables under that id, like a volume's.
    Snapshots = 12,
    /// Snapshot name → id.
    SnapshotNames = 13,
}

pub const ALL_TABLES: [Tbl; 14] = [
    Tbl::Sys,
    Tbl::Volumes,
    Tbl::VolumeNames,
    Tbl::Inodes,
    Tbl::Dentries,
    Tbl::Chunks,
    Tbl::Xattrs,
    Tbl::BlockRefs,
    Tbl::Gc,
    Tbl::Nodes,
    Tbl::Layouts,
    Tbl::Deleting,
    Tbl::Snapshots,
    Tbl::SnapshotNames,
];

type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;

impl Tbl {
    fn def(self) -> Def {
        const NAMES: [&str; 14] = [
            "sys",
            "volumes",
            "volume_names",
            "inodes",
            "dentries",
            "chunks",
            "xattrs",
            "block_refs",
            "gc",
            "nodes",
            "layouts",
            "deleting",
            "snapshots",
            "snapshot_names",
        ];
        TableDefinition::new(NAMES[self as usize])
    }

    fn from_u8(v: u8) -> Option<Tbl> {
        ALL_TABLES.get(v as usize).copied()
    }
}

/// Read access shared by queries (read transactions) and commands (write transactions).
pub trait Reader {
    fn get(&self, t: Tbl, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Entries with `start` (bound) ≤ key < `end`, in key order, at most `limit`.
    fn scan(
        &self,
        t: Tbl,
        start: Bound<&[u8]>,
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
}

pub trait Writer: Reader {
    fn put(&self, t: Tbl, key: &[u8], value: &[u8]) -> Result<()>;
    fn del(&self, t: Tbl, key: &[u8]) -> Result<bool>;
}

fn scan_table<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    start: Bound<&[u8]>,
    end: &[u8],
    limit: usize,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    let range = table.range::<&[u8]>((start, Bound::Excluded(end)))?;
    for item in range {
        if out.len() >= limit {
            break;
        }
        let (k, v) = item?;
        out.push((k.value().to_vec(), v.value().to_vec()));
    }
    Ok(out)
}

impl Reader for redb::ReadTransaction {
    fn get(&self, t: Tbl, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let table = self.open_table(t.def())?;
        Ok(table.get(key)?.map(|v| v.value().to_vec()))
    }
    fn scan(
        &self,
        t: Tbl,
        start: Bound<&[u8]>,
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let table = self.open_table(t.def())?;
        scan_table(&table, start, end, limit)
    }
}

impl Reader for redb::WriteTransaction {
    fn get(&self, t: Tbl, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let table = self.open_table(t.def())?;
        let v = table.get(key)?.map(|v| v.value().to_vec());
        Ok(v)
    }
    fn scan(
        &self,
        t: Tbl,
        start: Bound<&[u8]>,
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let table = self.open_table(t.def())?;
        scan_table(&table, start, end, limit)
    }
}

impl Writer for redb::WriteTransaction {
    fn put(&self, t: Tbl, key: &[u8], value: &[u8]) -> Result<()> {
        let mut table = self.open_table(t.def())?;
        table.insert(key, value)?;
        Ok(())
    }
    fn del(&self, t: Tbl, key: &[u8]) -> Result<bool> {
        let mut table = self.open_table(t.def())?;
        let existed = table.remove(key)?.is_some();
        Ok(existed)
    }
}

const KEY_LAST_APPLIED: &[u8] = b"last_applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";

/// The state-machine store, shared (by `Arc`) between openraft's apply loop and the
/// services that read it.
pub struct SmStore {
    db: Database,
    snap_dir: PathBuf,
    batches_since_durable: AtomicU64,
    snapshot_seq: AtomicU64,
    incoming: Mutex<Option<PathBuf>>,
    /// Bumped after every applied batch; readers use it to notice changes cheaply.
    pub applied_index: AtomicU64,
}

fn to_storage_err(e: impl std::fmt::Display) -> StorageError {
    StorageError::from(StorageIOError::write(&std::io::Error::other(e.to_string())))
}

impl SmStore {
    pub fn open(dir: &Path) -> Result<Arc<SmStore>> {
        std::fs::create_dir_all(dir)?;
        let snap_dir = dir.join("snapshots");
        std::fs::create_dir_all(&snap_dir)?;
        // Partially received snapshots are useless after a restart.
        for entry in std::fs::read_dir(&snap_dir)? {
            let p = entry?.path();
            if p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("incoming") || n.ends_with(".tmp"))
            {
                let _ = std::fs::remove_file(&p);
            }
        }
        let db = Database::create(dir.join("meta.redb"))?;
        let tx = db.begin_write()?;
        for t in ALL_TABLES {
            tx.open_table(t.def())?;
        }
        tx.commit()?;
        let store = SmStore {
            db,
            snap_dir,
            batches_since_durable: AtomicU64::new(0),
            snapshot_seq: AtomicU64::new(0),
            incoming: Mutex::new(None),
            applied_index: AtomicU64::new(0),
        };
        let (applied, _) = store.applied_state()?;
        store
            .applied_index
            .store(applied.map(|l| l.index).unwrap_or(0), Ordering::Release);
        Ok(Arc::new(store))
    }

    pub fn read(&self) -> Result<redb::ReadTransaction> {
        Ok(self.db.begin_read()?)
    }

    /// A write transaction outside Raft, for tests of the state machine's logic.
    #[cfg(test)]
    pub(crate) fn begin_write(&self) -> Result<redb::WriteTransaction> {
        Ok(self.db.begin_write()?)
    }

    pub fn applied_state(&self) -> Result<(Option<LogId>, StoredMembership)> {
        let tx = self.db.begin_read()?;
        let applied = match tx.get(Tbl::Sys, KEY_LAST_APPLIED)? {
            Some(v) => postcard::from_bytes(&v)?,
            None => None,
        };
        let membership = match tx.get(Tbl::Sys, KEY_MEMBERSHIP)? {
            Some(v) => postcard::from_bytes(&v)?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }

    fn apply_entries(&self, entries: Vec<Entry>) -> Result<Vec<Response>> {
        let mut tx = self.db.begin_write()?;
        let n = self.batches_since_durable.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= DURABLE_EVERY {
            self.batches_since_durable.store(0, Ordering::Release);
            tx.set_durability(Durability::Immediate);
        } else {
            tx.set_durability(Durability::None);
        }
        let mut out = Vec::with_capacity(entries.len());
        let mut last = None;
        for entry in entries {
            last = Some(entry.log_id);
            let resp = match entry.payload {
                EntryPayload::Blank => Response::None,
                EntryPayload::Normal(cmd) => fsm::apply(&tx, cmd)?,
                EntryPayload::Membership(m) => {
                    let sm = StoredMembership::new(Some(entry.log_id), m);
                    tx.put(Tbl::Sys, KEY_MEMBERSHIP, &postcard::to_allocvec(&sm)?)?;
                    Response::None
                }
            };
            out.push(resp);
        }
        if let Some(l) = last {
            tx.put(
                Tbl::Sys,
                KEY_LAST_APPLIED,
                &postcard::to_allocvec(&Some(l))?,
            )?;
        }
        tx.commit()?;
        if let Some(l) = last {
            self.applied_index.store(l.index, Ordering::Release);
        }
        Ok(out)
    }

    /// Forces every earlier non-durable commit to disk.
    fn make_durable(&self) -> Result<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate);
        tx.commit()?;
        self.batches_since_durable.store(0, Ordering::Release);
        Ok(())
    }

    fn current_path(&self) -> PathBuf {
        self.snap_dir.join("current.snap")
    }

    /// Writes a snapshot of the current state to `current.snap` (atomically replaced).
    fn build_snapshot_file(&self) -> Result<SnapshotMeta> {
        // Read first, then make durable: a durable commit persists every commit before
        // it, so the state this snapshot describes is on disk before openraft purges the
        // logs up to its last id. (The other order let an apply committed in between land
        // in the snapshot but not on disk: after a crash the node's state was behind logs
        // already purged, and it could not start.)
        let tx = self.db.begin_read()?;
        self.make_durable()?;
        let (applied, membership) = {
            let applied: Option<LogId> = match tx.get(Tbl::Sys, KEY_LAST_APPLIED)? {
                Some(v) => postcard::from_bytes(&v)?,
                None => None,
            };
            let m: StoredMembership = match tx.get(Tbl::Sys, KEY_MEMBERSHIP)? {
                Some(v) => postcard::from_bytes(&v)?,
                None => StoredMembership::default(),
            };
            (applied, m)
        };
        let seq = self.snapshot_seq.fetch_add(1, Ordering::AcqRel) + 1;
        let snapshot_id = match applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, seq),
            None => format!("0-0-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id,
        };
        let tmp = self.snap_dir.join(format!("build-{seq}.tmp"));
        {
            let f = std::fs::File::create(&tmp)?;
            let mut w = BufWriter::with_capacity(1 << 20, f);
            write_snapshot_header(&mut w, &meta)?;
            for t in ALL_TABLES {
                let table = tx.open_table(t.def())?;
                for item in table.iter()? {
                    let (k, v) = item?;
                    write_snapshot_record(&mut w, t, k.value(), v.value())?;
                }
            }
            write_snapshot_end(&mut w)?;
            let f = w
                .into_inner()
                .map_err(|e| NodeError::Storage(e.to_string()))?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.current_path())?;
        sync_dir(&self.snap_dir)?;
        Ok(meta)
    }

    fn current_snapshot_meta(&self) -> Result<Option<SnapshotMeta>> {
        let path = self.current_path();
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut r = BufReader::new(f);
        Ok(Some(read_snapshot_header(&mut r)?))
    }

    /// Replaces the whole state with the snapshot in `file`.
    fn install_from(&self, mut file: std::fs::File, meta: &SnapshotMeta) -> Result<()> {
        file.rewind()?;
        let mut r = BufReader::with_capacity(1 << 20, file);
        let file_meta = read_snapshot_header(&mut r)?;
        if file_meta.last_log_id != meta.last_log_id {
            return Err(NodeError::Storage(format!(
                "snapshot file is for {:?}, expected {:?}",
                file_meta.last_log_id, meta.last_log_id
            )));
        }
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate);
        for t in ALL_TABLES {
            tx.delete_table(t.def())?;
            tx.open_table(t.def())?;
        }
        while let Some((t, k, v)) = read_snapshot_record(&mut r)? {
            tx.put(t, &k, &v)?;
        }
        // The snapshot's own last_applied/membership records are authoritative, but write
        // them from `meta` too in case the snapshot predates them.
        tx.put(
            Tbl::Sys,
            KEY_LAST_APPLIED,
            &postcard::to_allocvec(&meta.last_log_id)?,
        )?;
        tx.put(
            Tbl::Sys,
            KEY_MEMBERSHIP,
            &postcard::to_allocvec(&meta.last_membership)?,
        )?;
        tx.commit()?;
        self.applied_index.store(
            meta.last_log_id.map(|l| l.index).unwrap_or(0),
            Ordering::Release,
        );
        Ok(())
    }
}

/// Largest key or value a snapshot record may hold (guards against corrupt files).
const MAX_RECORD: u32 = 64 << 20;

fn read_chunk(r: &mut impl Read) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_RECORD {
        return Err(NodeError::Storage(format!(
            "snapshot record of {len} bytes is corrupt"
        )));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

// ---- snapshot file format (all integers little-endian) ----
//
// magic `RFSS`, version u32 (1), u32 length + postcard SnapshotMeta, then records
// `table: u8, u32 key length, key, u32 value length, value`, then the end tag 0xff.
// The file comes from the leader over the network: the reader trusts nothing in it.

/// Writes the snapshot file header for `meta`.
pub fn write_snapshot_header(w: &mut impl Write, meta: &SnapshotMeta) -> Result<()> {
    let meta_bytes = postcard::to_allocvec(meta)?;
    let len = u32::try_from(meta_bytes.len())
        .map_err(|_| NodeError::Storage("snapshot metadata too large".into()))?;
    w.write_all(SNAP_MAGIC)?;
    w.write_all(&SNAP_VERSION.to_le_bytes())?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&meta_bytes)?;
    Ok(())
}

/// Writes one record of table `t`.
pub fn write_snapshot_record(w: &mut impl Write, t: Tbl, k: &[u8], v: &[u8]) -> Result<()> {
    w.write_all(&[t as u8])?;
    for part in [k, v] {
        let len = u32::try_from(part.len())
            .ok()
            .filter(|&l| l <= MAX_RECORD)
            .ok_or_else(|| NodeError::Storage("snapshot record too large".into()))?;
        w.write_all(&len.to_le_bytes())?;
        w.write_all(part)?;
    }
    Ok(())
}

/// Writes the end tag after the last record.
pub fn write_snapshot_end(w: &mut impl Write) -> Result<()> {
    w.write_all(&[SNAP_END])?;
    Ok(())
}

/// One snapshot record: table, key, value.
pub type SnapshotRecord = (Tbl, Vec<u8>, Vec<u8>);

/// Reads the next record, `None` at the end tag. A file cut short is an error.
pub fn read_snapshot_record(r: &mut impl Read) -> Result<Option<SnapshotRecord>> {
    let mut tag = [0u8; 1];
    r.read_exact(&mut tag)?;
    if tag[0] == SNAP_END {
        return Ok(None);
    }
    let t = Tbl::from_u8(tag[0])
        .ok_or_else(|| NodeError::Storage(format!("snapshot has unknown table {}", tag[0])))?;
    let k = read_chunk(r)?;
    let v = read_chunk(r)?;
    Ok(Some((t, k, v)))
}

/// Reads and checks the snapshot file header.
pub fn read_snapshot_header(r: &mut impl Read) -> Result<SnapshotMeta> {
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    if &magic != SNAP_MAGIC {
        return Err(NodeError::Storage("not a ringfs snapshot file".into()));
    }
    let mut ver = [0u8; 4];
    r.read_exact(&mut ver)?;
    if u32::from_le_bytes(ver) != SNAP_VERSION {
        return Err(NodeError::Storage(format!(
            "unsupported snapshot version {}",
            u32::from_le_bytes(ver)
        )));
    }
    let meta = read_chunk(r)?;
    Ok(postcard::from_bytes(&meta)?)
}

/// Whether `path` names the file open as `file`.
fn same_file(path: &Path, file: &std::fs::File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// openraft's handle on the state machine.
#[derive(Clone)]
pub struct StateMachine {
    pub store: Arc<SmStore>,
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let store = self.store.clone();
        let meta = tokio::task::spawn_blocking(move || store.build_snapshot_file())
            .await
            .map_err(to_storage_err)?
            .map_err(to_storage_err)?;
        let f = tokio::fs::File::open(self.store.current_path())
            .await
            .map_err(to_storage_err)?;
        tracing::info!(snapshot = %meta.snapshot_id, "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(f),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        self.store.applied_state().map_err(to_storage_err)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let store = self.store.clone();
        tokio::task::block_in_place(move || store.apply_entries(entries)).map_err(to_storage_err)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let seq = self.store.snapshot_seq.fetch_add(1, Ordering::AcqRel) + 1;
        let path = self.store.snap_dir.join(format!("incoming-{seq}"));
        let f = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(to_storage_err)?;
        *self
            .store
            .incoming
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(path);
        Ok(Box::new(f))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let store = self.store.clone();
        let meta2 = meta.clone();
        let file = *snapshot;
        file.sync_all().await.map_err(to_storage_err)?;
        let std_file = file.into_std().await;
        let incoming = store
            .incoming
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        tokio::task::spawn_blocking(move || -> Result<()> {
            // Normally the data is in the file `begin_receiving_snapshot` made, which then
            // becomes the current snapshot as is; if it came in another file, keep a copy.
            let kept = match incoming {
                Some(p) if same_file(&p, &std_file) => p,
                other => {
                    if let Some(p) = other {
                        let _ = std::fs::remove_file(p);
                    }
                    let seq = store.snapshot_seq.fetch_add(1, Ordering::AcqRel) + 1;
                    let p = store.snap_dir.join(format!("incoming-{seq}"));
                    let mut src = std_file.try_clone()?;
                    src.rewind()?;
                    let mut dst = std::fs::File::create(&p)?;
                    std::io::copy(&mut src, &mut dst)?;
                    dst.sync_all()?;
                    p
                }
            };
            store.install_from(std_file, &meta2)?;
            std::fs::rename(&kept, store.current_path())?;
            sync_dir(&store.snap_dir)?;
            Ok(())
        })
        .await
        .map_err(to_storage_err)?
        .map_err(to_storage_err)?;
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Some(meta) = self.store.current_snapshot_meta().map_err(to_storage_err)? else {
            return Ok(None);
        };
        let f = tokio::fs::File::open(self.store.current_path())
            .await
            .map_err(to_storage_err)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(f),
        }))
    }
}

/// Node ids of a membership config, voters and learners.
pub fn membership_nodes(m: &StoredMembership) -> Vec<(NodeId, String, bool)> {
    let voters: std::collections::BTreeSet<NodeId> = m.membership().voter_ids().collect();
    m.membership()
        .nodes()
        .map(|(id, n)| (*id, n.addr.clone(), voters.contains(id)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(mut r: &[u8]) -> Result<(SnapshotMeta, Vec<SnapshotRecord>)> {
        let meta = read_snapshot_header(&mut r)?;
        let mut records = Vec::new();
        while let Some(rec) = read_snapshot_record(&mut r)? {
            records.push(rec);
        }
        Ok((meta, records))
    }

    #[test]
    fn snapshot_format_round_trips_and_refuses_damage() {
        let meta = SnapshotMeta {
            snapshot_id: "1-2-3".into(),
            ..SnapshotMeta::default()
        };
        let records = vec![
            (Tbl::Volumes, b"k1".to_vec(), b"v1".to_vec()),
            (Tbl::SnapshotNames, Vec::new(), vec![7; 300]),
        ];
        let mut file = Vec::new();
        write_snapshot_header(&mut file, &meta).unwrap();
        for (t, k, v) in &records {
            write_snapshot_record(&mut file, *t, k, v).unwrap();
        }
        write_snapshot_end(&mut file).unwrap();
        let (m, r) = read_all(&file).unwrap();
        assert_eq!((m, r), (meta, records));

        // Cut anywhere (the end tag included): an error, never a shorter state.
        for len in 0..file.len() {
            assert!(read_all(&file[..len]).is_err(), "cut at {len}");
        }
        // An unknown table and an oversized record length are refused.
        let header_len = file.len() - (1 + 4 + 2 + 4 + 2) - (1 + 4 + 4 + 300) - 1;
        let mut bad = file.clone();
        bad[header_len] = ALL_TABLES.len() as u8;
        assert!(read_all(&bad).is_err());
        let mut bad = file.clone();
        bad[header_len + 1..header_len + 5].copy_from_slice(&(MAX_RECORD + 1).to_le_bytes());
        assert!(read_all(&bad).is_err());
    }
}
