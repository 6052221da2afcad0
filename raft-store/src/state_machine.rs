//! openraft's state machine on RocksDB, its snapshots, and their installation.
//!
//! `apply` evaluates a whole batch of entries in one [`Txn`] and writes the result, the
//! last-applied log id and the membership in one `WriteBatch`: after a crash the state is
//! that of some prefix of the log, never a mix. The batch is not synced on its own; the log
//! it came from is, and openraft re-applies from the last-applied id after a restart.
//!
//! Snapshots are built from a RocksDB snapshot (a consistent, point-in-time view) on a
//! blocking thread while `apply` goes on, and installed by streaming their chunks into the
//! `sm` column family. An install first records an `installing` marker; a manager that
//! stops half-way finds the marker when it reopens and installs the same snapshot again.

use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, StorageError, StoredMembership,
};
use rand::RngCore;
use rocksdb::{IteratorMode, WriteBatch};

use crate::apply::Txn;
use crate::db::{decode_at, Db};
use crate::error::{to_raft, StoreError};
use crate::layout::{CF_RAFT, CF_SM, CF_SM_META};
use crate::log_store::COMMITTED;
use crate::model::{Applied, Response};
use crate::snapshot::{self, Meta, SnapshotFile, SnapshotWriter};
use crate::stages::{Stages, StoreStage};
use crate::{keys, ManagerNode, NodeId, TypeConfig};

pub(crate) const LAST_APPLIED: &[u8] = b"last_applied";
pub(crate) const MEMBERSHIP: &[u8] = b"membership";
const INSTALLING: &[u8] = b"installing";

type Membership = StoredMembership<NodeId, ManagerNode>;

/// The replicated state machine of one manager.
#[derive(Debug)]
pub struct StateMachine {
    db: Arc<Db>,
    chunk_bytes: usize,
    stages: Stages,
}

impl StateMachine {
    /// Opens the state machine, finishing a snapshot install that a crash interrupted.
    pub(crate) fn open(db: Arc<Db>, chunk_bytes: usize, stages: Stages) -> Result<Self, StoreError> {
        let sm = Self { db, chunk_bytes, stages };
        // Snapshots half-received before a restart are useless: the sender starts over.
        let incoming = sm.db.snapshots_dir().join("incoming");
        if incoming.exists() {
            std::fs::remove_dir_all(&incoming).map_err(StoreError::io("clear incoming snapshots", &incoming))?;
        }
        if let Some(id) = sm.db.get_sealed::<String>(CF_SM_META, INSTALLING)? {
            let snap = snapshot::latest_in(&sm.db.snapshots_dir(), &sm.db.sealer)?
                .filter(|s| s.meta().snapshot_id == id)
                .ok_or_else(|| StoreError::Inconsistent {
                    path: sm.db.dir.clone(),
                    reason: format!("an install of snapshot {id} was interrupted and the snapshot file is gone"),
                })?;
            tracing::warn!(snapshot = %id, "resuming an interrupted snapshot install");
            load_into_db(&sm.db, &snap)?;
        }
        // Watchers may resume only after what this process applies itself.
        let (last, _) = sm.applied()?;
        sm.db.events.reset(last.map(|l| l.index).unwrap_or(0));
        Ok(sm)
    }

    pub(crate) fn chunk_bytes(&self) -> usize {
        self.chunk_bytes
    }

    fn applied(&self) -> Result<(Option<LogId<NodeId>>, Membership), StoreError> {
        let last: Option<Option<LogId<NodeId>>> = self.db.get_sealed(CF_SM_META, LAST_APPLIED)?;
        let membership: Option<Membership> = self.db.get_sealed(CF_SM_META, MEMBERSHIP)?;
        Ok((last.flatten(), membership.unwrap_or_default()))
    }

    pub(crate) fn apply_entries(
        &self,
        entries: impl IntoIterator<Item = openraft::Entry<TypeConfig>>,
    ) -> Result<Vec<Response>, StoreError> {
        let mut txn = Txn::new(&self.db);
        let mut replies = Vec::new();
        let mut last = None;
        let mut membership = None;
        let mut placement = false;
        let mut changes = Vec::new();
        for entry in entries {
            last = Some(entry.log_id);
            replies.push(match &entry.payload {
                EntryPayload::Blank => Response(Ok(Applied::Done)),
                EntryPayload::Normal(cmd) => {
                    placement |= cmd.affects_placement();
                    let r = txn.apply(cmd)?;
                    if let Err(e) = &r.0 {
                        tracing::debug!(log_id = %entry.log_id, command = cmd.kind(), error = %e, "command refused");
                    }
                    changes.push((entry.log_id.index, txn.take_changes()));
                    r
                }
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
                    Response(Ok(Applied::Done))
                }
            });
        }
        let Some(last) = last else { return Ok(replies) };
        let mut batch = WriteBatch::default();
        for (key, value) in txn.into_writes() {
            match value {
                Some(plain) => self.db.put_sealed_raw(&mut batch, CF_SM, &key, &plain)?,
                None => batch.delete_cf(self.db.cf(CF_SM)?, &key),
            }
        }
        self.db.put_sealed(&mut batch, CF_SM_META, LAST_APPLIED, &Some(last))?;
        let committed = self.db.unsaved_committed.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(committed) = committed {
            self.db.put_sealed(&mut batch, CF_RAFT, COMMITTED, &committed)?;
        }
        if let Some(m) = membership {
            self.db.put_sealed(&mut batch, CF_SM_META, MEMBERSHIP, &m)?;
        }
        self.db.write(batch, false, "apply")?;
        if placement {
            self.db.placement_changed();
        }
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.db.events.publish(
            changes
                .into_iter()
                .map(|(index, changes)| crate::events::Batch {
                    index,
                    at_ms,
                    changes: changes
                        .into_iter()
                        .map(|(kind, action, id, name)| crate::events::Change { kind, action, id, name })
                        .collect(),
                })
                .collect(),
        );
        Ok(replies)
    }
}

/// Receives snapshots sent by another manager. A separate handle because openraft owns the
/// [`StateMachine`] once the node runs.
#[derive(Debug, Clone)]
pub struct SnapshotInbox {
    db: Arc<Db>,
    chunk_bytes: usize,
}

impl SnapshotInbox {
    pub(crate) fn new(db: Arc<Db>, chunk_bytes: usize) -> Self {
        Self { db, chunk_bytes }
    }

    /// Starts receiving a snapshot: push its plaintext chunks (from the sender's
    /// [`SnapshotFile::chunks`], over mutual TLS), then `finish()` and hand the file to
    /// `Raft::install_full_snapshot`. Blocking I/O.
    ///
    /// # Errors
    /// When the snapshot directory cannot be written.
    pub fn receive(&self, meta: Meta) -> Result<SnapshotWriter, StoreError> {
        SnapshotWriter::create(
            &self.db.snapshots_dir().join("incoming"),
            self.db.sealer.clone(),
            meta,
            self.chunk_bytes,
        )
    }
}

/// Builds snapshots on a blocking thread from a consistent view of RocksDB.
#[derive(Debug)]
pub struct SnapshotBuilder {
    db: Arc<Db>,
    chunk_bytes: usize,
}

pub(crate) fn build(db: &Db, chunk_bytes: usize) -> Result<SnapshotFile, StoreError> {
    // Everything in the snapshot must be durable before openraft purges the log it covers.
    db.db.flush_wal(true).map_err(StoreError::db("sync wal before snapshot"))?;
    let view = db.db.snapshot();
    let read_meta = |key: &[u8]| -> Result<Option<Vec<u8>>, StoreError> {
        let Some(sealed) = view.get_cf(db.cf(CF_SM_META)?, key).map_err(StoreError::db("read sm meta"))? else {
            return Ok(None);
        };
        Ok(Some(db.open_at(CF_SM_META, key, &sealed)?.to_vec()))
    };
    let last_applied: Option<LogId<NodeId>> = match read_meta(LAST_APPLIED)? {
        Some(b) => decode_at(CF_SM_META, LAST_APPLIED, &b)?,
        None => None,
    };
    let membership: Membership = match read_meta(MEMBERSHIP)? {
        Some(b) => decode_at(CF_SM_META, MEMBERSHIP, &b)?,
        None => Membership::default(),
    };
    let mut rnd = [0u8; 6];
    rand::thread_rng().fill_bytes(&mut rnd);
    let snapshot_id = match last_applied {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, snapshot::hex(&rnd)),
        None => format!("0-0-{}", snapshot::hex(&rnd)),
    };
    let meta = Meta { last_log_id: last_applied, last_membership: membership, snapshot_id };
    let _guard = db.snapshot_lock.lock().map_err(|_| StoreError::Join("snapshot lock poisoned".into()))?;
    let mut writer = SnapshotWriter::create(&db.snapshots_dir(), db.sealer.clone(), meta, chunk_bytes)?;
    for item in view.iterator_cf_opt(db.cf(CF_SM)?, crate::db::bulk_read(), IteratorMode::Start) {
        let (key, sealed) = item.map_err(StoreError::db("iterate state for snapshot"))?;
        let plain = db.open_at(CF_SM, &key, &sealed)?;
        writer.add_record(&key, &plain)?;
    }
    let file = writer.finish()?;
    snapshot::remove_others(&db.snapshots_dir(), file.path());
    tracing::info!(snapshot = %file.meta().snapshot_id, "built snapshot");
    Ok(file)
}

/// Replaces the state machine with the content of `snap` (a file sealed by this store).
fn load_into_db(db: &Db, snap: &SnapshotFile) -> Result<(), StoreError> {
    let meta = snap.meta();
    let mut batch = WriteBatch::default();
    db.put_sealed(&mut batch, CF_SM_META, INSTALLING, &meta.snapshot_id)?;
    db.write(batch, true, "mark snapshot install")?;

    let sm = db.cf(CF_SM)?;
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(sm, &[0u8][..], &keys::prefix_end(&[0xff; 8])[..]);
    db.write(batch, false, "clear state for snapshot")?;
    for chunk in snap.chunks() {
        let chunk = chunk?;
        let mut batch = WriteBatch::default();
        for rec in crate::records::records(&chunk) {
            let (key, value) =
                rec.map_err(|reason| StoreError::Snapshot { path: snap.path().to_path_buf(), reason })?;
            db.put_sealed_raw(&mut batch, CF_SM, key, value)?;
        }
        db.write(batch, false, "load snapshot chunk")?;
    }
    let mut batch = WriteBatch::default();
    db.put_sealed(&mut batch, CF_SM_META, LAST_APPLIED, &meta.last_log_id)?;
    db.put_sealed(&mut batch, CF_SM_META, MEMBERSHIP, &meta.last_membership)?;
    batch.delete_cf(db.cf(CF_SM_META)?, INSTALLING);
    db.write(batch, true, "finish snapshot install")?;
    db.placement_changed();
    Ok(())
}

/// Installs a snapshot that may be sealed under another key (a file received from, or
/// handed over by, another store): it is first copied, re-sealed, into this store's
/// snapshot dir, so that the marker of an interrupted install always finds it.
fn install(db: &Db, chunk_bytes: usize, snap: &SnapshotFile) -> Result<(), StoreError> {
    let _guard = db.snapshot_lock.lock().map_err(|_| StoreError::Join("snapshot lock poisoned".into()))?;
    let dir = db.snapshots_dir();
    let own = if snap.path().parent() == Some(dir.as_path()) {
        SnapshotFile::open(snap.path(), db.sealer.clone())?
    } else {
        let mut w = SnapshotWriter::create(&dir, db.sealer.clone(), snap.meta().clone(), chunk_bytes)?;
        for chunk in snap.chunks() {
            w.push_chunk(&chunk?)?;
        }
        w.finish()?
    };
    load_into_db(db, &own)?;
    // The state arrived whole: watchers of what came before must relist.
    db.events.reset(own.meta().last_log_id.map(|l| l.index).unwrap_or(0));
    snapshot::remove_others(&dir, own.path());
    if snap.path().parent() == Some(dir.join("incoming").as_path()) {
        let _ = std::fs::remove_file(snap.path());
    }
    tracing::info!(snapshot = %own.meta().snapshot_id, "installed snapshot");
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StoreError::Join(e.to_string()))?
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (db, chunk_bytes) = (self.db.clone(), self.chunk_bytes);
        let file = blocking(move || build(&db, chunk_bytes))
            .await
            .map_err(to_raft(ErrorSubject::Snapshot(None), ErrorVerb::Write))?;
        // Snapshots come as the state is rewritten, removals included: the time to reclaim
        // what removed values hold. That may take a full compaction, which neither the
        // snapshot nor `coffer cluster compact` waits for; the build's view of the
        // database, which would keep removed records alive, is gone by now. A failure costs
        // disk space, not the snapshot.
        let db = self.db.clone();
        drop(tokio::task::spawn_blocking(move || {
            if let Err(e) = db.reclaim_blob_garbage(crate::db::RECLAIM_BLOB_GARBAGE_BYTES) {
                tracing::warn!(error = %e, "cannot reclaim the space of removed values");
            }
        }));
        Ok(Snapshot { meta: file.meta().clone(), snapshot: Box::new(file) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        self.applied().map_err(to_raft(ErrorSubject::StateMachine, ErrorVerb::Read))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Nothing is applied before it is on this manager's disk: a leader's own entries may
        // still be syncing (see `durable`), and an answered write must survive a power loss.
        let entries: Vec<_> = entries.into_iter().collect();
        if let Some(last) = entries.last() {
            self.db.durable.wait(last.log_id.index).await.map_err(to_raft(ErrorSubject::Logs, ErrorVerb::Write))?;
        }
        let stages = self.stages.clone();
        stages
            .time(StoreStage::Apply, || self.apply_entries(entries))
            .map_err(to_raft(ErrorSubject::StateMachine, ErrorVerb::Write))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { db: self.db.clone(), chunk_bytes: self.chunk_bytes }
    }

    /// Coffer transfers snapshots with `full_snapshot` (feature `generic-snapshot-data`), so
    /// openraft never fills this handle itself: the receiver uses
    /// [`SnapshotInbox::receive`]. What is returned is an empty, valid snapshot of
    /// nothing, which a caller replaces before installing.
    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError<NodeId>> {
        let meta = Meta { last_log_id: None, last_membership: Membership::default(), snapshot_id: "empty".into() };
        let db = self.db.clone();
        let chunk_bytes = self.chunk_bytes;
        blocking(move || {
            SnapshotWriter::create(&db.snapshots_dir().join("incoming"), db.sealer.clone(), meta, chunk_bytes)?.finish()
        })
        .await
        .map(Box::new)
        .map_err(to_raft(ErrorSubject::Snapshot(None), ErrorVerb::Write))
    }

    async fn install_snapshot(&mut self, meta: &Meta, snapshot: Box<SnapshotFile>) -> Result<(), StorageError<NodeId>> {
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        if snapshot.meta() != meta {
            let e = StoreError::Snapshot {
                path: snapshot.path().to_path_buf(),
                reason: format!(
                    "holds snapshot {} but {} was to be installed",
                    snapshot.meta().snapshot_id,
                    meta.snapshot_id
                ),
            };
            return Err(to_raft(subject, ErrorVerb::Read)(e));
        }
        let (db, chunk_bytes) = (self.db.clone(), self.chunk_bytes);
        blocking(move || install(&db, chunk_bytes, &snapshot)).await.map_err(to_raft(subject, ErrorVerb::Write))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let db = self.db.clone();
        let file = blocking(move || {
            let _guard = db.snapshot_lock.lock().map_err(|_| StoreError::Join("snapshot lock poisoned".into()))?;
            snapshot::latest_in(&db.snapshots_dir(), &db.sealer)
        })
        .await
        .map_err(to_raft(ErrorSubject::Snapshot(None), ErrorVerb::Read))?;
        Ok(file.map(|f| Snapshot { meta: f.meta().clone(), snapshot: Box::new(f) }))
    }
}
