//! openraft's log storage on RocksDB: entries, vote, committed id and purge state.
//!
//! Durability contract (what openraft relies on):
//! - `save_vote` returns only after the vote is synced to disk;
//! - `append` reports completion through its callback only after the entries are synced
//!   (one synced `WriteBatch` per call, so a batch of client writes costs one fsync);
//! - `purge` records `last_purged` in the same synced batch that deletes the range, so a
//!   restart never finds a log that starts after a purge it does not know of;
//! - `truncate` is synced too: a conflicting suffix must not come back after a crash.
//!
//! Every entry is sealed for `(log, index)`: an entry moved to another index fails to open.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogReader, StorageError, Vote};
use rocksdb::{IteratorMode, WriteBatch};

use crate::db::{decode_at, Db, CF_LOG, CF_RAFT};
use crate::error::{to_raft, StoreError};
use crate::stages::{Stages, StoreStage};
use crate::{NodeId, TypeConfig};

pub(crate) const VOTE: &[u8] = b"vote";
pub(crate) const COMMITTED: &[u8] = b"committed";
pub(crate) const LAST_PURGED: &[u8] = b"last_purged";

/// The Raft log of one manager. Cheap to clone; clones share the database.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<Db>,
    stages: Stages,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl LogStore {
    pub(crate) fn new(db: Arc<Db>, stages: Stages) -> Self {
        Self { db, stages }
    }

    pub(crate) fn entries<RB: RangeBounds<u64>>(&self, range: RB) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let cf = self.db.cf(CF_LOG)?;
        let mut out = Vec::new();
        let iter = self.db.db.iterator_cf(cf, IteratorMode::From(&index_key(start), rocksdb::Direction::Forward));
        for item in iter {
            let (key, sealed) = item.map_err(StoreError::db("iterate log"))?;
            let index = parse_index(&key)?;
            if !range.contains(&index) {
                break;
            }
            let plain = self.db.open_at(CF_LOG, &key, &sealed)?;
            let entry: Entry<TypeConfig> = decode_at(CF_LOG, &key, &plain)?;
            if entry.log_id.index != index {
                return Err(StoreError::Inconsistent {
                    path: self.db.dir.clone(),
                    reason: format!("log entry at index {index} claims index {}", entry.log_id.index),
                });
            }
            out.push(entry);
        }
        Ok(out)
    }

    pub(crate) fn last_entry_id(&self) -> Result<Option<LogId<NodeId>>, StoreError> {
        let cf = self.db.cf(CF_LOG)?;
        let Some(item) = self.db.db.iterator_cf(cf, IteratorMode::End).next() else { return Ok(None) };
        let (key, sealed) = item.map_err(StoreError::db("read last log entry"))?;
        let plain = self.db.open_at(CF_LOG, &key, &sealed)?;
        let entry: Entry<TypeConfig> = decode_at(CF_LOG, &key, &plain)?;
        Ok(Some(entry.log_id))
    }

    fn append_batch(&self, entries: impl IntoIterator<Item = Entry<TypeConfig>>) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for entry in entries {
            self.db.put_sealed(&mut batch, CF_LOG, &index_key(entry.log_id.index), &entry)?;
        }
        self.db.write(batch, true, "append log entries")
    }

    fn delete_from(&self, from: u64) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.db.cf(CF_LOG)?, index_key(from), index_key(u64::MAX));
        batch.delete_cf(self.db.cf(CF_LOG)?, index_key(u64::MAX));
        self.db.write(batch, true, "truncate log")
    }

    fn purge_upto(&self, log_id: &LogId<NodeId>) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        self.db.put_sealed(&mut batch, CF_RAFT, LAST_PURGED, log_id)?;
        batch.delete_range_cf(self.db.cf(CF_LOG)?, index_key(0), index_key(log_id.index.saturating_add(1)));
        self.db.write(batch, true, "purge log")
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], value: &T, what: &str) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        self.db.put_sealed(&mut batch, CF_RAFT, key, value)?;
        self.db.write(batch, true, what)
    }
}

fn parse_index(key: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(key).map(u64::from_be_bytes).map_err(|_| StoreError::Inconsistent {
        path: Default::default(),
        reason: format!("log key of {} bytes", key.len()),
    })
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        self.entries(range).map_err(to_raft(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged: Option<LogId<NodeId>> =
            self.db.get_sealed(CF_RAFT, LAST_PURGED).map_err(to_raft(ErrorSubject::Store, ErrorVerb::Read))?;
        let last = self.last_entry_id().map_err(to_raft(ErrorSubject::Logs, ErrorVerb::Read))?;
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last.or(last_purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.put_meta(VOTE, vote, "save vote").map_err(to_raft(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.db.get_sealed(CF_RAFT, VOTE).map_err(to_raft(ErrorSubject::Vote, ErrorVerb::Read))
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        // Not synced on its own: losing it only means re-applying from the last applied id.
        let mut batch = WriteBatch::default();
        self.db
            .put_sealed(&mut batch, CF_RAFT, COMMITTED, &committed)
            .and_then(|()| self.db.write(batch, false, "save committed"))
            .map_err(to_raft(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let c: Option<Option<LogId<NodeId>>> =
            self.db.get_sealed(CF_RAFT, COMMITTED).map_err(to_raft(ErrorSubject::Store, ErrorVerb::Read))?;
        Ok(c.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        match self.stages.time(StoreStage::LogAppend, || self.append_batch(entries)) {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(to_raft(ErrorSubject::Logs, ErrorVerb::Write)(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        tracing::debug!(%log_id, "truncate log");
        self.delete_from(log_id.index).map_err(to_raft(ErrorSubject::Logs, ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        tracing::debug!(%log_id, "purge log");
        self.purge_upto(&log_id).map_err(to_raft(ErrorSubject::Logs, ErrorVerb::Delete))
    }
}
