//! The durable Raft log, in redb (`<data>/raft-log.redb`).
//!
//! Every append and every vote is committed with `Durability::Immediate` (fsync) before
//! openraft is told it is persisted; openraft already batches concurrent proposals into
//! one append, so one fsync covers many commands.

// openraft's trait methods return its StorageError by value; boxing it here would only
// move the allocation.
#![allow(clippy::result_large_err)]

use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError, Vote};
use redb::{Database, Durability, ReadableTable, TableDefinition};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

fn io_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::fmt::Display,
) -> StorageError {
    StorageError::from(StorageIOError::new(
        subject,
        verb,
        openraft::AnyError::error(e.to_string()),
    ))
}

fn read_err(e: impl std::fmt::Display) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Write, e)
}

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub fn open(dir: &Path) -> crate::error::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let db = Database::create(dir.join("raft-log.redb"))?;
        let tx = db.begin_write()?;
        tx.open_table(LOG)?;
        tx.open_table(META)?;
        tx.commit()?;
        Ok(LogStore { db: Arc::new(db) })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let tx = self.db.begin_read().map_err(read_err)?;
        let t = tx.open_table(META).map_err(read_err)?;
        match t.get(key).map_err(read_err)? {
            Some(v) => Ok(Some(postcard::from_bytes(v.value()).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: serde::Serialize>(
        &self,
        key: &str,
        v: &T,
        durable: bool,
    ) -> Result<(), StorageError> {
        let bytes = postcard::to_allocvec(v).map_err(write_err)?;
        let mut tx = self.db.begin_write().map_err(write_err)?;
        tx.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        });
        {
            let mut t = tx.open_table(META).map_err(write_err)?;
            t.insert(key, bytes.as_slice()).map_err(write_err)?;
        }
        tx.commit().map_err(write_err)
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StorageError> {
        let tx = self.db.begin_read().map_err(read_err)?;
        let t = tx.open_table(LOG).map_err(read_err)?;
        let last = t.last().map_err(read_err)?;
        let id = match last {
            Some((_, v)) => {
                let e: Entry = postcard::from_bytes(v.value()).map_err(read_err)?;
                Some(e.log_id)
            }
            None => None,
        };
        Ok(id)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let db = self.db.clone();
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        tokio::task::block_in_place(move || {
            let tx = db.begin_read().map_err(read_err)?;
            let t = tx.open_table(LOG).map_err(read_err)?;
            let mut out = Vec::new();
            for item in t.range::<u64>((start, end)).map_err(read_err)? {
                let (_, v) = item.map_err(read_err)?;
                out.push(postcard::from_bytes(v.value()).map_err(read_err)?);
            }
            Ok(out)
        })
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get_meta("last_purged")?.flatten();
        let last = self.last_entry_id()?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let v = *vote;
        tokio::task::block_in_place(|| self.put_meta("vote", &v, true))
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_meta("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not fsynced: losing it only means re-learning the commit index from the leader.
        tokio::task::block_in_place(|| self.put_meta("committed", &committed, false))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>("committed")?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let db = self.db.clone();
        let res = tokio::task::block_in_place(move || -> Result<(), StorageError> {
            let mut tx = db.begin_write().map_err(write_err)?;
            tx.set_durability(Durability::Immediate);
            {
                let mut t = tx.open_table(LOG).map_err(write_err)?;
                for e in entries {
                    let bytes = postcard::to_allocvec(&e).map_err(write_err)?;
                    t.insert(e.log_id.index, bytes.as_slice())
                        .map_err(write_err)?;
                }
            }
            tx.commit().map_err(write_err)
        });
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        tokio::task::block_in_place(move || {
            let mut tx = db.begin_write().map_err(write_err)?;
            tx.set_durability(Durability::Immediate);
            {
                let mut t = tx.open_table(LOG).map_err(write_err)?;
                let keys: Vec<u64> = t
                    .range::<u64>((Bound::Included(log_id.index), Bound::Unbounded))
                    .map_err(write_err)?
                    .map(|r| r.map(|(k, _)| k.value()))
                    .collect::<Result<_, _>>()
                    .map_err(write_err)?;
                for k in keys {
                    t.remove(k).map_err(write_err)?;
                }
            }
            tx.commit().map_err(write_err)
        })
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        tokio::task::block_in_place(move || {
            let bytes = postcard::to_allocvec(&Some(log_id)).map_err(write_err)?;
            let mut tx = db.begin_write().map_err(write_err)?;
            tx.set_durability(Durability::Immediate);
            {
                let mut m = tx.open_table(META).map_err(write_err)?;
                m.insert("last_purged", bytes.as_slice())
                    .map_err(write_err)?;
                let mut t = tx.open_table(LOG).map_err(write_err)?;
                let keys: Vec<u64> = t
                    .range::<u64>(..=log_id.index)
                    .map_err(write_err)?
                    .map(|r| r.map(|(k, _)| k.value()))
                    .collect::<Result<_, _>>()
                    .map_err(write_err)?;
                for k in keys {
                    t.remove(k).map_err(write_err)?;
                }
            }
            tx.commit().map_err(write_err)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sm::{SmStore, StateMachine};
    use openraft::storage::RaftLogStorageExt;
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{CommittedLeaderId, EntryPayload};
    use tempfile::TempDir;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
        async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
            let dir = TempDir::new().map_err(write_err)?;
            let log = LogStore::open(&dir.path().join("raft")).map_err(write_err)?;
            let store = SmStore::open(&dir.path().join("meta")).map_err(write_err)?;
            Ok((dir, log, StateMachine { store }))
        }
    }

    /// openraft's own compliance suite for log and state-machine storage: log state,
    /// appends, truncation, purging, votes, membership, applying and snapshots.
    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).unwrap();
    }

    fn blank(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    /// Appended entries are durable when reported: a reopened store has every one, also
    /// after concurrent appends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reported_appends_survive_reopening() {
        let dir = TempDir::new().unwrap();
        {
            let mut log = LogStore::open(dir.path()).unwrap();
            for i in 1..=20u64 {
                log.blocking_append([blank(i)]).await.unwrap();
                assert_eq!(log.try_get_log_entries(i..=i).await.unwrap().len(), 1);
            }
            // Eight writers at once (openraft appends from one task; clones let this
            // test overlap appends).
            let tasks: Vec<_> = (0..8u64)
                .map(|w| {
                    let mut log = log.clone();
                    tokio::spawn(async move {
                        for k in 0..10u64 {
                            log.blocking_append([blank(21 + w * 10 + k)]).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        }
        let mut log = LogStore::open(dir.path()).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index), Some(100));
        let all = log.try_get_log_entries(1..=100).await.unwrap();
        assert_eq!(
            all.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            (1..=100).collect::<Vec<_>>()
        );
    }
}
