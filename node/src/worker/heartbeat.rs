//! The worker's heartbeats: every `heartbeat_ms` (the cluster's setting, learned from each
//! assignment) to the manager of the session, which passes it to the leader. A heartbeat
//! that fails moves the session to the next manager too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::worker::session::{Managers, SharedClient};

/// Runs until shutdown.
pub(crate) async fn heartbeats(
    client: SharedClient,
    managers: Managers,
    every_ms: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    loop {
        let wait = Duration::from_millis(every_ms.load(Ordering::Relaxed));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let (turn, addr) = managers.current();
        let sent = client.at(&addr).with_timeout(wait.max(Duration::from_millis(500))).heartbeat().await;
        if let Err(e) = sent {
            tracing::debug!(manager = %addr, error = %e, "heartbeat not taken; moving to another manager");
            managers.move_on(turn);
        }
    }
}
