//! Sends the states of the worker's tasks to the manager of its session: what changed
//! since the last report that went through, soon after it changes, and everything once a
//! minute (the managers drop what they already have, so a report lost on the way, or a
//! task that came back, heals without a log entry per minute). Always to the manager of
//! the session, which the long poll and heartbeats choose.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use coffer_api::client::ClientError;
use coffer_api::worker::{StatusReport, TaskRunState, TaskStatusEntry};
use tokio_util::sync::CancellationToken;

use crate::worker::runtime::Shared;
use crate::worker::session::{Managers, SharedClient, CALL_TIMEOUT};

/// Lets a burst of changes (an assignment's tasks written one by one) go in one report.
const GATHER: Duration = Duration::from_millis(200);
/// Tasks per request (the managers take up to 1 024; failure messages make entries big).
const PER_REQUEST: usize = 256;
const EVERYTHING_EVERY: Duration = Duration::from_secs(60);

/// Runs until shutdown.
pub(crate) async fn reporter(
    shared: Arc<Shared>,
    client: SharedClient,
    managers: Managers,
    shutdown: CancellationToken,
) {
    let mut sent: BTreeMap<String, TaskRunState> = BTreeMap::new();
    let mut backoff = Duration::from_millis(250);
    let mut everything = tokio::time::Instant::now() + EVERYTHING_EVERY;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = shared.wake_report.notified() => {}
            _ = tokio::time::sleep_until(everything) => {
                sent.clear();
                everything = tokio::time::Instant::now() + EVERYTHING_EVERY;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(GATHER) => {}
        }
        loop {
            let now = shared.board().states.clone();
            // `pending` is what a task without a report shows: not worth a log entry.
            let tasks: Vec<TaskStatusEntry> = now
                .iter()
                .filter(|(id, s)| **s != TaskRunState::Pending && sent.get(*id) != Some(*s))
                .map(|(id, s)| TaskStatusEntry { task_id: id.clone(), status: s.clone() })
                .collect();
            if tasks.is_empty() {
                break;
            }
            let (_, addr) = managers.current();
            let mut failed = None;
            for chunk in tasks.chunks(PER_REQUEST) {
                let report = StatusReport { tasks: chunk.to_vec() };
                match client.at(&addr).with_timeout(CALL_TIMEOUT).report_status(&report).await {
                    Ok(_) => {
                        for e in chunk {
                            sent.insert(e.task_id.clone(), e.status.clone());
                        }
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            let Some(e) = failed else {
                sent.retain(|id, _| now.contains_key(id));
                backoff = Duration::from_millis(250);
                break;
            };
            tracing::debug!(manager = %addr, error = %e, "task states not taken; trying again");
            // Too many reports: later. Whatever else failed, the session's long poll and
            // heartbeats decide whether to move to another manager: a report refused for
            // want of a leader must not move a worker off a manager that is fine.
            if let ClientError::Api { status: 429, .. } = &e {
                backoff = backoff.max(Duration::from_secs(1));
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}
