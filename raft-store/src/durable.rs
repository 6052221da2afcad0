//! How far this manager's Raft log is on disk, while a leader's own entries are synced in
//! the background.
//!
//! openraft 0.9 waits for the leader's append to be reported durable before it sends the
//! entries to followers, so a write pays two fsyncs in series: the leader's, then a
//! follower's. Raft allows the leader to write its disk in parallel with replicating
//! (Ongaro's thesis, §10.2.1), as long as nothing treats an entry as committed before a
//! majority holds it on disk. Here the leader's append of its own entries returns after an
//! unsynced write (the entries are readable, the process may crash and the page cache
//! keeps them) and one background task syncs the write-ahead log, covering every append
//! made meanwhile. openraft then counts the leader in its quorum early; what keeps that
//! safe against a power loss of the leader:
//!
//! - the state machine applies an entry only once it is durable here ([`Durable::wait`]):
//!   a client is answered after apply, so an answered write is on the leader's disk and on
//!   a follower's (openraft counted the follower after its synced append);
//! - followers are not told a commit index beyond what is durable here (the network clamps
//!   `leader_commit` with [`DurableLog::commit_to_tell`]), so no follower applies an entry
//!   that only one disk holds;
//! - a follower's append is synced before it returns, as before: its answer counts it;
//! - a leader that steps down saves a new vote before it answers another leader or a
//!   candidate, with a synced write: that syncs the whole write-ahead log, so no answer of
//!   a former leader (a heartbeat's success counts its log as matching) covers an unsynced
//!   entry of its own;
//! - a leader that restarts does not resume leading its term (openraft 0.9 would, and
//!   would number new entries after a log that lost its unsynced tail, giving a follower's
//!   entry's log id to another entry): `LogStore` reopens its vote uncommitted, so it
//!   stands for election and any leader after it writes in a new term.
//!
//! An entry that the leader counted but lost in a power loss was applied nowhere and
//! answered to nobody: losing it is losing an unacknowledged write, which Raft permits.
//! Everything else (votes, truncations, purges) stays synced inline.
//!
//! RocksDB's write-ahead log is one sequence: syncing it makes every write made before the
//! sync durable, and a crash keeps a prefix of it. The committed id and applied state,
//! written unsynced after the entries they follow, cannot outlive the entries they need.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use openraft::LogId;
use tokio::sync::watch;

use crate::error::StoreError;
use crate::stages::{Stages, StoreStage};
use crate::NodeId;

/// What is known durable: the last log id synced, or why syncing failed (then nothing is
/// applied any more and the manager's Raft stops on its next store error).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Synced {
    upto: Option<LogId<NodeId>>,
    /// The last entry written, synced or not (changed only under `Durable::state`).
    written: Option<LogId<NodeId>>,
    failed: Option<Arc<str>>,
}

impl Synced {
    /// Whether what this log holds up to `index` is on disk. An index beyond the log (only
    /// openraft's storage suite applies entries it never appended) waits for the whole log.
    fn holds(&self, index: u64) -> bool {
        let need = self.written.map_or(0, |w| w.index.min(index));
        self.written.is_none() || self.upto.is_some_and(|u| u.index >= need)
    }
}

#[derive(Debug, Default)]
struct State {
    /// Bumped by a truncation: a sync that began before it must not mark entries of the
    /// new suffix durable.
    generation: u64,
    /// An unsynced append waits for the syncer.
    pending: bool,
    /// The syncer runs (one at a time).
    syncing: bool,
}

/// The log's durability, shared by the log store, the state machine and the network.
#[derive(Debug)]
pub(crate) struct Durable {
    state: Mutex<State>,
    synced: watch::Sender<Synced>,
}

impl Default for Durable {
    fn default() -> Self {
        Self { state: Mutex::new(State::default()), synced: watch::channel(Synced::default()).0 }
    }
}

impl Durable {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a few plain fields: a panic elsewhere cannot leave it half-changed.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Everything up to `last` is on disk (at open, after a synced append or truncation).
    pub(crate) fn all_synced(&self, last: Option<LogId<NodeId>>) {
        self.set_synced(&mut self.lock(), last);
    }

    fn set_synced(&self, s: &mut State, last: Option<LogId<NodeId>>) {
        s.generation = s.generation.wrapping_add(1);
        self.synced.send_modify(|v| {
            v.upto = last;
            v.written = last;
        });
    }

    /// A synced write other than an append (a vote, a purge up to `purged`) synced the
    /// whole write-ahead log: everything written is on disk. A purge beyond the log (after
    /// a snapshot was installed) leaves the log starting after `purged`, which counts as
    /// its last entry until the next append.
    pub(crate) fn wal_synced(&self, purged: Option<LogId<NodeId>>) {
        let mut s = self.lock();
        let written = self.synced.borrow().written;
        let last = match (written, purged) {
            (Some(w), Some(p)) if p.index > w.index => Some(p),
            (None, p) => p,
            (w, _) => w,
        };
        self.set_synced(&mut s, last);
    }

    /// An unsynced append of entries up to `last`; true when the caller must start the
    /// syncer ([`sync_loop`]).
    pub(crate) fn written(&self, last: LogId<NodeId>) -> bool {
        let mut s = self.lock();
        // Waiters need not wake: more written never makes anything durable.
        self.synced.send_if_modified(|v| {
            v.written = Some(last);
            false
        });
        s.pending = true;
        let start = !s.syncing;
        s.syncing = true;
        start
    }

    /// Waits until the entry at `index` is durable.
    ///
    /// # Errors
    /// The background sync failed.
    pub(crate) async fn wait(&self, index: u64) -> Result<(), StoreError> {
        let ready = |s: &Synced| s.failed.is_none() && s.holds(index);
        if ready(&self.synced.borrow()) {
            return Ok(());
        }
        let mut rx = self.synced.subscribe();
        let seen = rx.wait_for(|s| s.failed.is_some() || s.holds(index)).await;
        match seen {
            Ok(s) => match &s.failed {
                Some(why) => Err(StoreError::Synced(why.to_string())),
                None => Ok(()),
            },
            // The sender lives in the store this state machine holds.
            Err(_) => Err(StoreError::Synced("the store was closed".into())),
        }
    }

    pub(crate) fn handle(&self) -> DurableLog {
        DurableLog(self.synced.subscribe())
    }
}

/// Syncs `db`'s write-ahead log until no unsynced append waits; runs on a blocking thread.
pub(crate) fn sync_loop(db: &rocksdb::DB, durable: &Durable, stages: &Stages) {
    loop {
        let (target, generation) = {
            let mut s = durable.lock();
            if !s.pending {
                s.syncing = false;
                return;
            }
            s.pending = false;
            (durable.synced.borrow().written, s.generation)
        };
        let result = stages.time(StoreStage::LogSync, || db.flush_wal(true));
        let mut s = durable.lock();
        match result {
            Ok(()) if s.generation == generation => {
                durable.synced.send_if_modified(|v| {
                    let ahead = target.is_some_and(|t| v.upto.is_none_or(|u| t.index > u.index));
                    if ahead {
                        v.upto = target;
                    }
                    ahead
                });
            }
            Ok(()) => {}
            Err(e) => {
                tracing::error!(error = %e, "syncing the raft log failed");
                durable.synced.send_modify(|v| v.failed = Some(e.to_string().into()));
                s.syncing = false;
                return;
            }
        }
    }
}

/// A view of how far the log is durable, for the network: followers are told a commit
/// index only once the leader holds the entry on disk.
#[derive(Debug, Clone)]
pub struct DurableLog(watch::Receiver<Synced>);

impl DurableLog {
    /// The commit index to send a follower in an AppendEntries: `committed` once it is
    /// durable here. A request that carries entries goes now with the durable part of it
    /// (its entries must not wait); one that only tells the commit (a heartbeat) waits up
    /// to `patience` for the sync, then tells the durable part.
    pub async fn commit_to_tell(
        &self,
        committed: Option<LogId<NodeId>>,
        carries_entries: bool,
        patience: Duration,
    ) -> Option<LogId<NodeId>> {
        let c = committed?;
        let durable = |s: &Synced| s.upto.is_some_and(|u| u.index >= c.index);
        if durable(&self.0.borrow()) {
            return committed;
        }
        if !carries_entries {
            let mut rx = self.0.clone();
            if tokio::time::timeout(patience, rx.wait_for(|s| durable(s))).await.is_ok_and(|r| r.is_ok()) {
                return committed;
            }
        }
        // The leader's log only grows, so its durable prefix below `c` is committed too.
        match self.0.borrow().upto {
            Some(u) if u.index >= c.index => committed,
            upto => upto,
        }
    }

    /// The last log id known durable.
    pub fn synced(&self) -> Option<LogId<NodeId>> {
        self.0.borrow().upto
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    #[tokio::test]
    async fn an_unsynced_entry_is_waited_for_and_a_truncation_voids_an_older_sync() {
        let d = Durable::default();
        d.all_synced(Some(id(1, 5)));
        d.wait(5).await.expect("synced at open");
        assert!(d.written(id(2, 8)), "the first unsynced append starts the syncer");
        assert!(!d.written(id(2, 9)), "one syncer at a time");
        {
            let wait = d.wait(9);
            tokio::pin!(wait);
            assert!(poll_once(&mut wait).is_none(), "entry 9 is not durable yet");
        }

        // The syncer took its target, then the log was truncated (synced) behind it and a
        // new leader's entries were written in the place of the old ones.
        let (target, generation) = {
            let mut s = d.lock();
            s.pending = false;
            (d.synced.borrow().written, s.generation)
        };
        d.all_synced(Some(id(1, 6)));
        d.written(id(3, 9));
        assert_eq!(target, Some(id(2, 9)));
        assert_ne!(d.lock().generation, generation, "the older sync will not be counted");
        assert_eq!(d.handle().synced(), Some(id(1, 6)));
        let wait = d.wait(9);
        tokio::pin!(wait);
        assert!(poll_once(&mut wait).is_none(), "the new entry 9 is not durable yet");
        d.synced.send_modify(|v| v.upto = Some(id(3, 9)));
        wait.await.expect("durable once synced");
    }

    #[test]
    fn an_entry_beyond_the_log_waits_only_for_the_log() {
        let s = Synced { upto: Some(id(1, 4)), written: Some(id(1, 4)), failed: None };
        assert!(s.holds(4) && s.holds(10));
        let s = Synced { upto: Some(id(1, 4)), written: Some(id(1, 6)), failed: None };
        assert!(s.holds(4) && !s.holds(5) && !s.holds(10));
        assert!(Synced::default().holds(1), "nothing written here");
    }

    #[tokio::test]
    async fn followers_are_told_only_a_durable_commit() {
        let d = Durable::default();
        d.all_synced(Some(id(2, 10)));
        let log = d.handle();
        let patience = Duration::from_millis(20);
        assert_eq!(log.commit_to_tell(Some(id(2, 10)), true, patience).await, Some(id(2, 10)));
        assert_eq!(log.commit_to_tell(None, true, patience).await, None);
        d.written(id(2, 12));
        assert_eq!(log.commit_to_tell(Some(id(2, 12)), true, patience).await, Some(id(2, 10)), "entries go now");
        assert_eq!(log.commit_to_tell(Some(id(2, 12)), false, patience).await, Some(id(2, 10)), "after patience");
        let later = log.commit_to_tell(Some(id(2, 12)), false, Duration::from_secs(60));
        let sync = async {
            tokio::task::yield_now().await;
            d.synced.send_modify(|v| v.upto = Some(id(2, 12)));
        };
        let (told, ()) = tokio::join!(later, sync);
        assert_eq!(told, Some(id(2, 12)), "a heartbeat waits for the sync");
    }

    #[tokio::test]
    async fn a_failed_sync_fails_the_waiters() {
        let d = Durable::default();
        d.written(id(1, 1));
        d.synced.send_modify(|v| v.failed = Some("disk gone".into()));
        assert!(d.wait(1).await.is_err());
    }

    fn poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match std::pin::Pin::new(f).poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
