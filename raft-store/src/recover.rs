//! Recovery: exporting the applied state for a backup, restoring a store from one, and
//! re-forming a store as the only member of a new Raft configuration (restore,
//! `--force-new-cluster`).
//!
//! Everything here runs before Raft starts on the store (export excepted, which reads a
//! consistent RocksDB view while Raft runs).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::{LogId, Membership, StoredMembership, Vote};
use rocksdb::{IteratorMode, WriteBatch};
use zeroize::Zeroizing;

use crate::apply::Txn;
use crate::backup::{BackupInfo, StateCounts, UnlockedBackup};
use crate::db::decode_at;
use crate::error::StoreError;
use crate::layout::{CF_LOG, CF_RAFT, CF_SM, CF_SM_META};
use crate::log_store::{COMMITTED, LAST_PURGED, VOTE};
use crate::model::{ClusterRecord, Command, Response};
use crate::records::records;
use crate::state_machine::{self, LAST_APPLIED, MEMBERSHIP};
use crate::{keys, seal, ManagerNode, NodeId, StateReader, Store, StoreOptions};

impl StateReader {
    /// Exports the applied state from one consistent view: `on_info` first (cluster id,
    /// last applied log id, counts), then `on_chunk` with plaintext chunks of about
    /// `chunk_bytes` of records. Writes go on meanwhile. Blocking: call from a blocking
    /// thread. Returns the counts of chunks and records exported.
    ///
    /// # Errors
    /// A store error, a state with no cluster record yet, or what a callback returns.
    pub fn export<E: From<StoreError>>(
        &self,
        chunk_bytes: usize,
        created_at_ms: u64,
        on_info: impl FnOnce(&BackupInfo) -> Result<(), E>,
        mut on_chunk: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(u64, u64), E> {
        let db = self.db();
        let view = db.db.snapshot();
        let sm = db.cf(CF_SM)?;
        let last_applied: Option<LogId<NodeId>> =
            match view.get_cf(db.cf(CF_SM_META)?, LAST_APPLIED).map_err(StoreError::db("read last applied"))? {
                Some(sealed) => {
                    let plain = db.open_at(CF_SM_META, LAST_APPLIED, &sealed)?;
                    decode_at::<Option<LogId<NodeId>>>(CF_SM_META, LAST_APPLIED, &plain)?
                }
                None => None,
            };
        let cluster =
            view.get_cf(sm, keys::CLUSTER).map_err(StoreError::db("read the cluster record"))?.ok_or_else(|| {
                StoreError::Inconsistent {
                    path: db.dir.clone(),
                    reason: "nothing to export: the cluster record has not been applied yet".into(),
                }
            })?;
        let cluster: ClusterRecord = decode_at(CF_SM, keys::CLUSTER, &db.open_at(CF_SM, keys::CLUSTER, &cluster)?)?;
        let mut counts = StateCounts::default();
        for item in view.iterator_cf_opt(sm, crate::db::bulk_read(), IteratorMode::Start) {
            let (key, _) = item.map_err(StoreError::db("count state records"))?;
            counts.count(&key);
        }
        on_info(&BackupInfo { cluster_id: cluster.id.clone(), last_applied, created_at_ms, counts })?;
        let (mut chunks, mut recs) = (0u64, 0u64);
        let mut pending = Zeroizing::new(Vec::with_capacity(chunk_bytes + 4096));
        for item in view.iterator_cf_opt(sm, crate::db::bulk_read(), IteratorMode::Start) {
            let (key, sealed) = item.map_err(StoreError::db("iterate state for export"))?;
            let plain = db.open_at(CF_SM, &key, &sealed)?;
            for field in [&key[..], &plain[..]] {
                pending.extend_from_slice(&u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes());
                pending.extend_from_slice(field);
            }
            recs += 1;
            if pending.len() >= chunk_bytes {
                on_chunk(&pending)?;
                pending.clear();
                chunks += 1;
            }
        }
        if !pending.is_empty() {
            on_chunk(&pending)?;
            chunks += 1;
        }
        Ok((chunks, recs))
    }
}

/// What [`Store::reform_alone`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reformed {
    /// The last log id applied: the state the new configuration starts from.
    pub applied: LogId<NodeId>,
    /// Entries of the log applied now (they had not been applied before the stop).
    pub replayed: u64,
    /// The voters of the old configuration.
    pub old_voters: BTreeSet<NodeId>,
}

/// Restores a backup into a new, empty store under `dir`: the backup's records and its
/// last applied log id. The caller then amends it ([`Store::apply_offline`]) and makes it
/// the only member of a new configuration ([`Store::reform_alone`]).
///
/// # Errors
/// A store that is not empty, a backup that fails to authenticate half-way (the caller
/// removes `dir`), a store error.
pub fn restore(
    dir: &Path,
    kek: &dyn seal::KeyEncryptionKey,
    options: StoreOptions,
    backup: &UnlockedBackup<'_>,
) -> Result<Store, StoreError> {
    let store = crate::open(dir, kek, options)?;
    let db = store.reader.db();
    for cf in [CF_LOG, CF_SM, CF_SM_META] {
        if db.db.iterator_cf(db.cf(cf)?, IteratorMode::Start).next().is_some() {
            return Err(StoreError::Inconsistent {
                path: dir.to_path_buf(),
                reason: "a backup is restored only into an empty store".into(),
            });
        }
    }
    backup.for_each_chunk(|plain| {
        let mut batch = WriteBatch::default();
        for rec in records(plain) {
            let (key, value) = rec.map_err(|reason| StoreError::Inconsistent { path: dir.to_path_buf(), reason })?;
            db.put_sealed_raw(&mut batch, CF_SM, key, value)?;
        }
        db.write(batch, false, "restore backup chunk")
    })?;
    let mut batch = WriteBatch::default();
    db.put_sealed(&mut batch, CF_SM_META, LAST_APPLIED, &backup.info().last_applied)?;
    db.write(batch, true, "restore backup")?;
    Ok(store)
}

impl Store {
    /// Applies commands to the state outside the Raft log. Only for a store about to become
    /// the only member of a new configuration ([`Self::reform_alone`] then builds the
    /// snapshot that carries them to every manager that joins): a restored cluster's new
    /// manager and admin credential, old managers marked down.
    ///
    /// # Errors
    /// A store error; a command the state machine refuses is in the replies.
    pub fn apply_offline(&self, cmds: &[Command]) -> Result<Vec<Response>, StoreError> {
        let db = self.reader.db();
        let mut txn = Txn::new(db);
        let replies = cmds.iter().map(|c| txn.apply(c)).collect::<Result<Vec<_>, _>>()?;
        let mut batch = WriteBatch::default();
        for (key, value) in txn.into_writes() {
            match value {
                Some(plain) => db.put_sealed_raw(&mut batch, CF_SM, &key, &plain)?,
                None => batch.delete_cf(db.cf(CF_SM)?, &key),
            }
        }
        db.write(batch, true, "apply offline")?;
        db.placement_changed();
        Ok(replies)
    }

    /// Applies every entry of the log that is not applied yet, committed or not as far as
    /// this store knows; returns how many. The first step of forcing a new cluster: like a
    /// leader elected with this log, the new cluster keeps all of it, so no write the old
    /// cluster acknowledged is lost even when this store's (unsynced) commit index lags.
    ///
    /// # Errors
    /// A store error.
    pub fn replay_log(&self) -> Result<u64, StoreError> {
        let from = self.reader.last_applied()?.map(|l| l.index + 1).unwrap_or(0);
        let entries = self.log.entries(from..)?;
        let n = entries.len() as u64;
        if n > 0 {
            self.state_machine.apply_entries(entries)?;
        }
        Ok(n)
    }

    /// Makes this store the only voter of a new configuration, keeping its state: applies
    /// what its log holds ([`Self::replay_log`]), records `me` as the only member at the
    /// last applied log id, builds a snapshot of the result (from which managers that join
    /// catch up), then purges the log and records a vote in the highest term seen.
    ///
    /// Crash safety: the snapshot is built and synced before the log is purged, so an
    /// interruption leaves a store that starts as the only member with its log intact, or
    /// one that is fully re-formed; running this again finishes the job.
    ///
    /// # Errors
    /// A store that has applied nothing (nothing to keep), or a store error.
    pub fn reform_alone(&mut self, me: NodeId, node: ManagerNode) -> Result<Reformed, StoreError> {
        let db = self.reader.db();
        let old: StoredMembership<NodeId, ManagerNode> = db.get_sealed(CF_SM_META, MEMBERSHIP)?.unwrap_or_default();
        let old_voters: BTreeSet<NodeId> = old.membership().voter_ids().collect();
        let replayed = self.replay_log()?;
        let applied = self.reader.last_applied()?.ok_or_else(|| StoreError::Inconsistent {
            path: db.dir.clone(),
            reason: "this manager has applied nothing: there is no state to form a cluster from".into(),
        })?;
        let last_entry = self.log.last_entry_id()?;
        let vote: Option<Vote<NodeId>> = db.get_sealed(CF_RAFT, VOTE)?;
        let term = [vote.map(|v| v.leader_id.term), last_entry.map(|l| l.leader_id.term), Some(applied.leader_id.term)]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(0);

        // 1. The new configuration, and a snapshot of the state under it.
        let membership = Membership::new(vec![BTreeSet::from([me])], BTreeMap::from([(me, node)]));
        let mut batch = WriteBatch::default();
        db.put_sealed(&mut batch, CF_SM_META, MEMBERSHIP, &StoredMembership::new(Some(applied), membership))?;
        db.write(batch, true, "record the new configuration")?;
        state_machine::build(db, self.state_machine.chunk_bytes())?;
        // 2. Only then the log goes: everything in it is applied and in the snapshot.
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(db.cf(CF_LOG)?, 0u64.to_be_bytes(), u64::MAX.to_be_bytes());
        batch.delete_cf(db.cf(CF_LOG)?, u64::MAX.to_be_bytes());
        db.put_sealed(&mut batch, CF_RAFT, LAST_PURGED, &applied)?;
        db.put_sealed(&mut batch, CF_RAFT, COMMITTED, &Some(applied))?;
        db.put_sealed(&mut batch, CF_RAFT, VOTE, &Vote::new(term, me))?;
        db.write(batch, true, "purge the log of the old configuration")?;
        self.log.forget_cached();
        db.durable.all_synced(Some(applied));
        tracing::warn!(
            applied = %applied, replayed, old_voters = ?old_voters,
            "store re-formed as the only member of a new configuration"
        );
        Ok(Reformed { applied, replayed, old_voters })
    }
}
