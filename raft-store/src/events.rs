//! The changes this store's state machine applied, for watchers: which secret, service,
//! task or node was created, updated or removed, at which log index. Never a value.
//!
//! Kept in memory, the last [`KEEP`] of them: a watcher resumes from an index it saw as
//! long as every change after it is still here. Before the oldest kept change, or before
//! this process opened the store, or before a snapshot was installed (its state arrived
//! whole, without its changes), the log is *gone* and the watcher relists.
//!
//! Must never: hand a watcher a gap (a change after its index it would not see) without
//! saying so, or a change twice.

use std::collections::VecDeque;
use std::sync::Mutex;

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

/// One applied change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The log index of the command that made it (several changes may share one).
    pub index: u64,
    /// When this manager applied it (ms since the epoch; not replicated).
    pub at_ms: u64,
    pub kind: ChangeKind,
    pub action: ChangeAction,
    pub id: String,
    /// The object's name, when the command names it.
    pub name: Option<String>,
}

/// What a live watcher receives.
#[derive(Debug, Clone)]
pub enum Feed {
    Change(Change),
    /// Changes up to this index are not known here (a snapshot was installed): relist.
    Gone(u64),
}

#[derive(Debug)]
struct Inner {
    ring: VecDeque<Change>,
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
    pub backlog: Vec<Change>,
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
        Self { inner: Mutex::new(Inner { ring: VecDeque::new(), floor: 0 }), tx }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes are known only after `index` (the state was loaded whole up to it).
    pub(crate) fn reset(&self, index: u64) {
        let mut inner = self.lock();
        inner.ring.clear();
        inner.floor = index;
        let _ = self.tx.send(Feed::Gone(index));
    }

    /// Records changes just applied, in index order.
    pub(crate) fn publish(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let mut inner = self.lock();
        for c in changes {
            if inner.ring.len() == KEEP {
                if let Some(old) = inner.ring.pop_front() {
                    // Changes of one index leave together or the floor would lie.
                    inner.floor = old.index;
                    while inner.ring.front().is_some_and(|f| f.index == old.index) {
                        inner.ring.pop_front();
                    }
                }
            }
            // Sent under the lock: a subscriber sees each change once, in the backlog or live.
            let _ = self.tx.send(Feed::Change(c.clone()));
            inner.ring.push_back(c);
        }
    }

    /// Starts watching from the oldest change kept.
    pub fn subscribe_kept(&self) -> Subscription {
        let inner = self.lock();
        let live = self.tx.subscribe();
        let last = inner.ring.back().map(|c| c.index).unwrap_or(inner.floor);
        Subscription { backlog: inner.ring.iter().cloned().collect(), live, last }
    }

    /// Starts watching after `since` (every change after it), or from now.
    ///
    /// # Errors
    /// [`Gone`] when a change after `since` is no longer kept.
    pub fn subscribe(&self, since: Option<u64>) -> Result<Subscription, Gone> {
        let inner = self.lock();
        let live = self.tx.subscribe();
        let last = inner.ring.back().map(|c| c.index).unwrap_or(inner.floor);
        let backlog = match since {
            None => Vec::new(),
            Some(s) if s < inner.floor => return Err(Gone { floor: inner.floor }),
            Some(s) => inner.ring.iter().filter(|c| c.index > s).cloned().collect(),
        };
        Ok(Subscription { backlog, live, last })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(index: u64, id: &str) -> Change {
        Change { index, at_ms: 0, kind: ChangeKind::Secret, action: ChangeAction::Create, id: id.into(), name: None }
    }

    #[test]
    fn a_watcher_resumes_without_gap_or_repeat_or_is_told_it_is_gone() {
        let log = EventLog::new();
        log.reset(10);
        assert_eq!(log.subscribe(Some(9)).map(|_| ()), Err(Gone { floor: 10 }));
        log.publish(vec![change(11, "a"), change(12, "b"), change(12, "c")]);
        let mut s = log.subscribe(Some(11)).expect("resume");
        assert_eq!(s.backlog.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), vec!["b", "c"]);
        assert_eq!(s.last, 12);
        log.publish(vec![change(13, "d")]);
        match s.live.try_recv() {
            Ok(Feed::Change(c)) => assert_eq!(c.id, "d"),
            other => panic!("{other:?}"),
        }
        assert!(s.live.try_recv().is_err(), "nothing twice");
        // The ring keeps KEEP changes; older ones make their index gone, a whole index at a time.
        log.publish((0..KEEP as u64).map(|i| change(14 + i, "x")).collect());
        assert!(log.subscribe(Some(12)).is_err());
        let floor = log.subscribe(Some(0)).expect_err("gone").floor;
        assert!(log.subscribe(Some(floor)).is_ok());
        // A snapshot install forgets everything before it.
        let mut live = log.subscribe(None).expect("live").live;
        log.reset(50_000);
        assert!(matches!(live.try_recv(), Ok(Feed::Gone(50_000))));
        assert!(log.subscribe(Some(49_999)).is_err());
    }
}
