//! Sends the states of the worker's tasks to the manager of its session: what changed
//! since the last report that went through, soon after it changes, and everything once a
//! minute (the managers drop what they already have, so a report lost on the way, or a
//! task that came back, heals without a log entry per minute).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use coffer_api::worker::{StatusReport, TaskRunState, TaskStatusEntry};
use tokio_util::sync::CancellationToken;

use crate::worker::runtime::Shared;
use crate::worker::session::{Managers, SharedClient, CALL_TIMEOUT};

/// Lets a burst of changes (an assignment's tasks written one by one) go in one report.
const GATHER: Duration = Duration::from_millis(100);
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
            let tasks: Vec<TaskStatusEntry> = now
                .iter()
                .filter(|(id, s)| sent.get(*id) != Some(*s))
                .map(|(id, s)| TaskStatusEntry { task_id: id.clone(), status: s.clone() })
                .collect();
            if tasks.is_empty() {
                break;
            }
            let (turn, addr) = managers.current();
            match client.at(&addr).with_timeout(CALL_TIMEOUT).report_status(&StatusReport { tasks }).await {
                Ok(_) => {
                    sent = now;
                    backoff = Duration::from_millis(250);
                    break;
                }
                Err(e) => {
                    tracing::debug!(manager = %addr, error = %e, "task states not taken; trying again");
                    managers.move_on(turn);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
