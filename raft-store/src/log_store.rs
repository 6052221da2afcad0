//! openraft's log storage on RocksDB: entries, vote, committed id and purge state.
//!
//! Durability contract (what openraft relies on):
//! - `save_vote` returns only after the vote is synced to disk;
//! - `append` of a follower reports completion through its callback only after the entries
//!   are synced (one synced `WriteBatch` per call, so a batch of client writes costs one
//!   fsync). A leader's append of its own entries is reported after an unsynced write and
//!   synced in the background while the entries replicate; `durable` says why that is safe
//!   and what holds back apply and the commit index told to followers until then;
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

use crate::codec;
use crate::db::{decode_at, Db};
use crate::error::{to_raft, StoreError};
use crate::layout::{CF_LOG, CF_RAFT};
use crate::log_cache::LogCache;
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
    /// This manager's Raft id, when its own entries may be synced in the background.
    me: Option<NodeId>,
    /// The vote last read or saved: tells a leader's own entries from a follower's.
    vote: Option<Vote<NodeId>>,
    /// The log's newest entries, shared by every clone (see `log_cache`).
    cache: Arc<LogCache>,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl LogStore {
    /// The log of `db`. A process that crashed may have left unsynced entries of its own
    /// in the page cache: they are synced first, so that the log read here is on disk.
    ///
    /// A manager that led when it stopped stands for election again rather than resume
    /// leading: openraft 0.9 restarts a node whose vote is committed for itself as the
    /// leader of that term, numbering new entries after the log it finds. After a power
    /// loss that log may lack entries it had sent (they were synced in the background),
    /// and a follower holding one would take a new entry with the same log id for it. So
    /// its vote is reopened uncommitted (same term, same candidate: it still votes for no
    /// one else in that term), which a new election supersedes.
    pub(crate) fn new(db: Arc<Db>, stages: Stages, me: Option<NodeId>) -> Result<Self, StoreError> {
        db.db.flush_wal(true).map_err(StoreError::db("sync the log at open"))?;
        let log = Self { db, stages, me, vote: None, cache: Arc::default() };
        if let Some(me) = me {
            let vote: Option<Vote<NodeId>> = log.db.get_sealed(CF_RAFT, VOTE)?;
            if let Some(v) = vote.filter(|v| v.is_committed() && v.leader_id().voted_for() == Some(me)) {
                log.put_meta(VOTE, &Vote::new(v.leader_id().term, me), "reopen the vote of a leader")?;
            }
        }
        log.db.durable.all_synced(log.durable_tail()?);
        Ok(log)
    }

    /// The log was changed behind this store's back (a re-formed store's purge).
    pub(crate) fn forget_cached(&self) {
        self.cache.forget();
    }

    /// The last log id the log holds or purged: what is on disk after a synced write.
    fn durable_tail(&self) -> Result<Option<LogId<NodeId>>, StoreError> {
        let last_purged: Option<LogId<NodeId>> = self.db.get_sealed(CF_RAFT, LAST_PURGED)?;
        Ok(self.last_entry_id()?.or(last_purged))
    }

    /// Whether `entries` are this manager's own, appended while it leads: only those may
    /// be synced after `append` returns.
    fn own_as_leader(&self, entries: &[Entry<TypeConfig>]) -> bool {
        let (Some(me), Some(vote)) = (self.me, self.vote) else { return false };
        vote.is_committed()
            && vote.leader_id().voted_for() == Some(me)
            && entries
                .iter()
                .all(|e| e.log_id.leader_id.node_id == me && e.log_id.leader_id.term == vote.leader_id().term)
    }

    pub(crate) fn entries<RB: RangeBounds<u64>>(&self, range: RB) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => Some(i.saturating_add(1)),
            Bound::Excluded(&i) => Some(i),
            Bound::Unbounded => None,
        };
        if let Some(cached) = self.cache.get(start, end) {
            return Ok(cached);
        }
        let cf = self.db.cf(CF_LOG)?;
        let mut out = Vec::new();
        let mut opts = rocksdb::ReadOptions::default();
        if let Some(end) = end {
            opts.set_iterate_upper_bound(index_key(end));
        }
        let iter =
            self.db.db.iterator_cf_opt(cf, opts, IteratorMode::From(&index_key(start), rocksdb::Direction::Forward));
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

    /// Writes `entries`, synced unless they are the leader's own; then the syncer runs.
    fn append_batch(&self, entries: Vec<Entry<TypeConfig>>) -> Result<(), StoreError> {
        let Some(last) = entries.last().map(|e| e.log_id) else { return Ok(()) };
        let sync = !self.own_as_leader(&entries);
        let mut batch = WriteBatch::default();
        let mut sizes = Vec::with_capacity(entries.len());
        for entry in &entries {
            let plain = zeroize::Zeroizing::new(codec::encode(entry).map_err(StoreError::Encode)?);
            self.db.put_sealed_raw(&mut batch, CF_LOG, &index_key(entry.log_id.index), &plain)?;
            sizes.push(plain.len());
        }
        self.db.write(batch, sync, "append log entries")?;
        self.cache.appended(entries.into_iter().zip(sizes).collect());
        if sync {
            self.db.durable.all_synced(Some(last));
        } else if self.db.durable.written(last) {
            let (db, stages) = (self.db.clone(), self.stages.clone());
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(move || crate::durable::sync_loop(&db.db, &db.durable, &stages))),
                // openraft always runs in a runtime; without one, sync before returning.
                Err(_) => crate::durable::sync_loop(&db.db, &db.durable, &stages),
            }
        }
        Ok(())
    }

    fn delete_from(&self, from: u64) -> Result<(), StoreError> {
        // Out of the cache first: a reader meanwhile reads the log itself.
        self.cache.truncated_from(from);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.db.cf(CF_LOG)?, index_key(from), index_key(u64::MAX));
        batch.delete_cf(self.db.cf(CF_LOG)?, index_key(u64::MAX));
        self.db.write(batch, true, "truncate log")?;
        // The synced write synced everything before it: the remaining log is on disk.
        self.db.durable.all_synced(self.durable_tail()?);
        Ok(())
    }

    fn purge_upto(&self, log_id: &LogId<NodeId>) -> Result<(), StoreError> {
        self.cache.purged_upto(log_id.index);
        let mut batch = WriteBatch::default();
        self.db.put_sealed(&mut batch, CF_RAFT, LAST_PURGED, log_id)?;
        batch.delete_range_cf(self.db.cf(CF_LOG)?, index_key(0), index_key(log_id.index.saturating_add(1)));
        self.db.write(batch, true, "purge log")?;
        self.db.durable.wal_synced(Some(*log_id));
        Ok(())
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
        self.put_meta(VOTE, vote, "save vote").map_err(to_raft(ErrorSubject::Vote, ErrorVerb::Write))?;
        self.vote = Some(*vote);
        // The synced write synced every unsynced append before it (a leader stepping down).
        self.db.durable.wal_synced(None);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        let vote: Option<Vote<NodeId>> =
            self.db.get_sealed(CF_RAFT, VOTE).map_err(to_raft(ErrorSubject::Vote, ErrorVerb::Read))?;
        self.vote = vote;
        Ok(vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        // Written with the apply that follows every advance of the commit index, in the
        // same batch (one write instead of two on every write's path), and never synced
        // on its own: losing it only means re-applying from the last applied id.
        *self.db.unsaved_committed.lock().unwrap_or_else(|p| p.into_inner()) = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        if let Some(c) = *self.db.unsaved_committed.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(c);
        }
        let c: Option<Option<LogId<NodeId>>> =
            self.db.get_sealed(CF_RAFT, COMMITTED).map_err(to_raft(ErrorSubject::Store, ErrorVerb::Read))?;
        Ok(c.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
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
