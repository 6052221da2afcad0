//! Worker liveness: when each worker last sent a heartbeat, kept in the leader's memory only.
//! A new leader gives every worker a full heartbeat window before it marks one down.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use coffer_raft_store::NodeId;

/// Which workers counted as alive at one moment (see [`Liveness::alive_now`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Alive {
    unseen: bool,
    seen: Vec<NodeId>,
}

/// Heartbeats seen by this manager while it leads.
#[derive(Debug, Default)]
pub(crate) struct Liveness {
    inner: Mutex<LivenessState>,
}

#[derive(Debug, Default)]
struct LivenessState {
    seen: HashMap<NodeId, Instant>,
    /// The term this manager leads and since when.
    leading: Option<(u64, Instant)>,
}

impl Liveness {
    pub(crate) fn seen(&self, node: NodeId) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).seen.insert(node, Instant::now());
    }

    /// Starts (or continues) leading `term`; a new term forgets what an older one saw.
    pub(super) fn lead(&self, term: u64) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if s.leading.map(|(t, _)| t) != Some(term) {
            s.leading = Some((term, Instant::now()));
            s.seen.clear();
        }
    }

    pub(super) fn leading_term(&self) -> Option<u64> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).leading.map(|(t, _)| t)
    }

    /// Who counts as alive now: whether a worker never heard from is (the window a new
    /// leader gives everyone), and those heard from within `window`, sorted.
    pub(super) fn alive_now(&self, window: Duration) -> Alive {
        let s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let unseen = s.leading.is_some_and(|(_, at)| at.elapsed() <= window);
        let mut seen: Vec<NodeId> = s.seen.iter().filter(|(_, t)| t.elapsed() <= window).map(|(n, _)| *n).collect();
        seen.sort_unstable();
        Alive { unseen, seen }
    }

    pub(super) fn alive(&self, node: NodeId, window: Duration) -> bool {
        let s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let since = s.seen.get(&node).copied().or(s.leading.map(|(_, at)| at));
        since.is_some_and(|t| t.elapsed() <= window)
    }
}
