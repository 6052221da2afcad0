//! When a manager builds a Raft snapshot (after which its log is purged): once the log
//! since the last snapshot is as long as the state holds records, and at least
//! `raft.snapshot_every` entries.
//!
//! A snapshot writes the whole state. Built every fixed number of entries, it made each
//! write cost in proportion to the state: with 64 clients creating secrets, creates/s fell
//! from 3 200 to 1 700 and p99 rose from 29 to 100 ms between 10 000 and 110 000 secrets
//! (`COFFER_BENCH_GROWTH`). Sized to the state, the snapshot work a write carries is
//! constant, and the log kept between snapshots replays into a state no smaller than
//! itself. openraft's own policy is off (`SnapshotPolicy::Never`); this task triggers.
//!
//! An operator can also compact at once ([`compact_now`], `coffer cluster compact`): before
//! adding a manager (which then catches up from the snapshot instead of replaying the
//! whole log), or to bound a log that grew through large batches.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_api::cluster::Compacted;
use coffer_api::error::ErrorCode;

use crate::manager::error::OpError;
use crate::manager::Manager;

/// How long to wait for a triggered snapshot before asking again.
const PATIENCE: Duration = Duration::from_secs(60);

/// Entries after the last snapshot that make the next one due.
pub(crate) fn due_after(every: u64, records: u64) -> u64 {
    every.max(records)
}

pub(crate) async fn run(m: Arc<Manager>) {
    let every = m.config.raft.snapshot_every;
    let mut metrics = m.raft.metrics();
    // The snapshot index a trigger is waiting to see move, and since when.
    let mut waiting: Option<(u64, Instant)> = None;
    loop {
        tokio::select! {
            _ = m.shutdown.cancelled() => return,
            r = metrics.changed() => if r.is_err() { return },
        }
        let (applied, snapshot) = {
            let x = metrics.borrow_and_update();
            (x.last_applied.map(|l| l.index).unwrap_or(0), x.snapshot.map(|l| l.index).unwrap_or(0))
        };
        if let Some((at, since)) = waiting {
            if snapshot == at && since.elapsed() < PATIENCE {
                continue;
            }
            waiting = None;
        }
        if applied.saturating_sub(snapshot) < due_after(every, m.reader.estimated_records()) {
            continue;
        }
        tracing::debug!(applied, snapshot, "building a snapshot");
        if let Err(e) = m.raft.trigger().snapshot().await {
            tracing::warn!(error = %e, "cannot trigger a snapshot");
            return;
        }
        waiting = Some((snapshot, Instant::now()));
    }
}

/// How long a built snapshot's purge may take to show before [`compact_now`] answers with
/// what it sees (the leader keeps entries a lagging follower still needs).
const PURGE_WAIT: Duration = Duration::from_secs(2);

/// Builds a snapshot of everything applied here now, and waits until it is built (and,
/// briefly, until the log up to it is purged).
///
/// # Errors
/// `unavailable` when the snapshot cannot be triggered or is not built within a minute.
pub async fn compact_now(m: &Manager) -> Result<Compacted, OpError> {
    let mut metrics = m.raft.metrics();
    let applied = metrics.borrow().last_applied.map(|l| l.index).unwrap_or(0);
    m.raft
        .trigger()
        .snapshot()
        .await
        .map_err(|e| OpError::new(ErrorCode::Unavailable, format!("cannot build a snapshot now: {e}")))?;
    let keep = m.config.raft.keep_after_snapshot;
    let mut deadline = Instant::now() + PATIENCE;
    let mut built = false;
    loop {
        {
            let x = metrics.borrow_and_update();
            let snapshot = x.snapshot.map(|l| l.index).unwrap_or(0);
            let purged = x.purged.map(|l| l.index);
            if snapshot >= applied {
                let out = Compacted { node_id: m.id, snapshot_index: snapshot, purged_index: purged };
                if purged.unwrap_or(0) + keep >= snapshot {
                    return Ok(out);
                }
                if !built {
                    built = true;
                    deadline = Instant::now() + PURGE_WAIT;
                }
            }
        }
        match tokio::time::timeout_at(deadline.into(), metrics.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(OpError::new(ErrorCode::Unavailable, "this manager is shutting down")),
            Err(_) if built => {
                let x = metrics.borrow();
                return Ok(Compacted {
                    node_id: m.id,
                    snapshot_index: x.snapshot.map(|l| l.index).unwrap_or(0),
                    purged_index: x.purged.map(|l| l.index),
                });
            }
            Err(_) => {
                return Err(OpError::new(
                    ErrorCode::Unavailable,
                    format!("the snapshot was not built within {} s", PATIENCE.as_secs()),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_waits_for_as_many_entries_as_the_state_holds() {
        assert_eq!(due_after(10_000, 50), 10_000, "small states: the configured interval");
        assert_eq!(due_after(10_000, 140_000), 140_000, "large states: as many entries as records");
        assert_eq!(due_after(50, 0), 50);
    }
}
