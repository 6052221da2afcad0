//! The changes this store's state machine applied, for watchers: which secret, service,
//! task or node was created, updated or removed, at which log index. Never a value.
//!
//! Kept in memory, about the last [`KEEP`] of them (whole entries): a watcher resumes from an index it saw as
//! long as every change after it is still here. Before the oldest kept change, or before
//! this process opened the store, or before a snapshot was installed (its state arrived
//! whole, without its changes), the log is *gone* and the watcher relists.
//!
//! Must never: hand a watcher a gap (a change after its index it would not see) without
//! saying so, or a change twice.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

/// Changes kept for resuming watchers.
pub const KEEP: usize = 10_000;
/// Changes a live watcher may fall behind before it is told to resume.
const LIVE: usize = 4_096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Secret,
    Service,
    Task,
    Node,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeAction {
    Create,
    Update,
    Remove,
}

/// One change to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    pub action: ChangeAction,
    pub id: String,
    /// The object's name, when the command names it.
    pub name: Option<String>,
}

/// The changes of one log entry: they go to a watcher whole or not at all, so that a
/// watcher's last index always means "everything up to here".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub index: u64,
    /// When this manager applied it (ms since the epoch; not replicated).
    pub at_ms: u64,
    pub changes: Vec<Change>,
}

/// What a live watcher receives.
#[derive(Debug, Clone)]
pub enum Feed {
    Batch(Arc<Batch>),
    /// Changes up to this index are not known here (a snapshot was installed): relist.
    Gone(u64),
}

#[derive(Debug)]
struct Inner {
    ring: VecDeque<Arc<Batch>>,
    /// Changes in `ring`.
    kept: usize,
    /// Every change after this index is in `ring` (or not applied yet).
    floor: u64,
}

/// The log of applied changes.
#[derive(Debug)]
pub struct EventLog {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Feed>,
}

/// Why a watcher cannot resume where it asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("changes up to index {floor} are gone from this manager; relist and resume from a later index")]
pub struct Gone {
    pub floor: u64,
}

/// A watcher's start: the kept changes after its index, then the live feed.
#[derive(Debug)]
pub struct Subscription {
    pub backlog: Vec<Arc<Batch>>,
    pub live: broadcast::Receiver<Feed>,
    /// The index of the last change published when the watcher started.
    pub last: u64,
}

impl Default for EventLog {
    fn default() -> Self {
        Self::new()
    }
}

impl EventLog {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(LIVE);
        Self { inner: Mutex::new(Inner { ring: VecDeque::new(), kept: 0, floor: 0 }), tx }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes are known only after `index` (the state was loaded whole up to it).
    pub(crate) fn reset(&self, index: u64) {
        let mut inner = self.lock();
        inner.ring.clear();
        inner.kept = 0;
        inner.floor = index;
        let _ = self.tx.send(Feed::Gone(index));
    }

    /// Records the changes of entries just applied, in index order.
    pub(crate) fn publish(&self, batches: Vec<Batch>) {
        let mut inner = self.lock();
        for b in batches.into_iter().filter(|b| !b.changes.is_empty()) {
            let b = Arc::new(b);
            inner.kept += b.changes.len();
            // Sent under the lock: a subscriber sees each batch once, in the backlog or live.
            let _ = self.tx.send(Feed::Batch(b.clone()));
            inner.ring.push_back(b);
            while inner.kept > KEEP && inner.ring.len() > 1 {
                if let Some(old) = inner.ring.pop_front() {
                    inner.kept -= old.changes.len();
                    inner.floor = old.index;
                }
            }
        }
    }

    fn start(&self, inner: &Inner, backlog: Vec<Arc<Batch>>) -> Subscription {
        let last = inner.ring.back().map(|c| c.index).unwrap_or(inner.floor);
        Subscription { backlog, live: self.tx.subscribe(), last }
    }

    /// Starts watching from the oldest change kept.
    pub fn subscribe_kept(&self) -> Subscription {
        let inner = self.lock();
        let backlog = inner.ring.iter().cloned().collect();
        self.start(&inner, backlog)
    }

    /// Starts watching after `since` (every change after it), or from now.
    ///
    /// # Errors
    /// [`Gone`] when a change after `since` is no longer kept.
    pub fn subscribe(&self, since: Option<u64>) -> Result<Subscription, Gone> {
        let inner = self.lock();
        let backlog = match since {
            None => Vec::new(),
            Some(s) if s < inner.floor => return Err(Gone { floor: inner.floor }),
            Some(s) => inner.ring.iter().filter(|c| c.index > s).cloned().collect(),
        };
        Ok(self.start(&inner, backlog))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(index: u64, ids: &[&str]) -> Batch {
        let changes = ids
            .iter()
            .map(|id| Change { kind: ChangeKind::Secret, action: ChangeAction::Create, id: id.to_string(), name: None })
            .collect();
        Batch { index, at_ms: 0, changes }
    }

    #[test]
    fn a_watcher_resumes_without_gap_or_repeat_or_is_told_it_is_gone() {
        let log = EventLog::new();
        log.reset(10);
        assert_eq!(log.subscribe(Some(9)).map(|_| ()), Err(Gone { floor: 10 }));
        log.publish(vec![batch(11, &["a"]), batch(12, &["b", "c"]), batch(13, &[])]);
        let mut s = log.subscribe(Some(11)).expect("resume");
        assert_eq!(s.backlog.len(), 1);
        assert_eq!(s.backlog[0].changes.len(), 2, "one entry's changes travel together");
        assert_eq!(s.last, 12);
        log.publish(vec![batch(14, &["d"])]);
        match s.live.try_recv() {
            Ok(Feed::Batch(b)) => assert_eq!(b.index, 14),
            other => panic!("{other:?}"),
        }
        assert!(s.live.try_recv().is_err(), "nothing twice");
        // About KEEP changes are kept, whole entries at a time; older ones are gone.
        log.publish((0..KEEP as u64).map(|i| batch(15 + i, &["x"])).collect());
        assert!(log.subscribe(Some(12)).is_err());
        let floor = log.subscribe(Some(0)).expect_err("gone").floor;
        assert!(log.subscribe(Some(floor)).is_ok());
        // An entry with more changes than KEEP is still kept whole.
        let big: Vec<String> = (0..KEEP + 5).map(|i| format!("t{i}")).collect();
        let refs: Vec<&str> = big.iter().map(String::as_str).collect();
        log.publish(vec![batch(90_000, &refs)]);
        let s = log.subscribe(Some(89_999)).expect("kept");
        assert_eq!(s.backlog[0].changes.len(), KEEP + 5);
        // A snapshot install forgets everything before it.
        let mut live = log.subscribe(None).expect("live").live;
        log.reset(100_000);
        assert!(matches!(live.try_recv(), Ok(Feed::Gone(100_000))));
        assert!(log.subscribe(Some(99_999)).is_err());
    }
}
