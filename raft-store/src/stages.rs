//! How long the store's parts of a write take, told to whoever watches (the manager's
//! `/metrics`): appending entries to the log (sealing them and the synced write) and
//! applying committed entries to the state machine.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A stage of a write that the store runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreStage {
    /// `append`: entries sealed and written to the log (synced, except a leader's own
    /// entries, which `LogSync` makes durable while they replicate).
    LogAppend,
    /// The background sync of the leader's own appended entries (one covers many).
    LogSync,
    /// `apply`: committed entries applied to the state machine (one unsynced write).
    Apply,
}

/// Receives the time each stage took.
pub trait StageObserver: Send + Sync + Debug {
    fn observe(&self, stage: StoreStage, took: Duration);
}

/// The observer, if any, shared by the log and the state machine.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stages(pub(crate) Option<Arc<dyn StageObserver>>);

impl Stages {
    /// Runs `f`, telling the observer how long it took.
    pub(crate) fn time<T>(&self, stage: StoreStage, f: impl FnOnce() -> T) -> T {
        let Some(o) = &self.0 else { return f() };
        let began = Instant::now();
        let out = f();
        o.observe(stage, began.elapsed());
        out
    }
}
