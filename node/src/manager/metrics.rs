//! `/metrics`, in the Prometheus text format: Raft's view (term, indexes, leadership,
//! voters), workers by status, and counters of the work that matters (writes, grants,
//! redemptions by outcome). Never a value, a name of a secret, or a token.

use std::time::{Duration, Instant};

use coffer_raft_store::{StageObserver, StoreStage};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::manager::error::OpError;
use crate::manager::Manager;

/// Counters updated where the work happens, and gauges filled in at scrape time.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub writes_local: Counter,
    pub writes_forwarded: Counter,
    pub grants_issued: Counter,
    pub redemptions_ok: Counter,
    pub redemptions_refused: Counter,
    term: Gauge,
    last_log_index: Gauge,
    committed_index: Gauge,
    applied_index: Gauge,
    is_leader: Gauge,
    voters: Gauge,
    workers_ready: Gauge,
    workers_down: Gauge,
    pub snapshots_ok: Counter,
    pub snapshots_failed: Counter,
    /// When the last scheduled snapshot was written (ms since the epoch; 0: never).
    pub last_snapshot_ms: std::sync::atomic::AtomicU64,
    last_snapshot_age: Gauge,
    autolock: Gauge,
    locked: Gauge,
    /// The index of the last snapshot this manager holds (built here or installed from
    /// the leader).
    snapshot_index: Gauge,
    /// The last log index purged here (the log starts after it).
    purged_index: Gauge,
    /// Scheduling passes, whole (reading, planning and committing the decisions).
    pub scheduler_pass: Histogram,
    /// Of each pass, reading the state and planning (no commits).
    pub scheduler_plan: Histogram,
    /// Where a write's time goes, stage by stage.
    pub stages: WriteStages,
    /// Calls to other managers, by how they went.
    pub peer_calls: PeerCalls,
    /// API requests served here, by method and route.
    pub requests: Requests,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: &'static str,
}

type StageFamily = Family<StageLabel, Histogram, fn() -> Histogram>;

/// The time each stage of a write takes here, in `coffer_write_stage_seconds{stage}`:
///
/// - `seal`: a value sealed with the cluster's value key (the HTTP handler);
/// - `propose`: on the leader, from handing a command to group commit to its result
///   (holds `log_append`, `replicate` and `apply`; `log_sync` runs beside `replicate`);
/// - `forward`: on a follower, a write sent to the leader and answered;
/// - `log_append`: entries sealed and written to the log (synced on a follower; on the
///   leader its own entries are written, and synced by `log_sync` while they replicate);
/// - `log_sync`: on the leader, one background sync of the log, covering every append
///   since the last one;
/// - `replicate`: on the leader, one AppendEntries with entries, sent and answered (holds
///   the follower's `follower_append`);
/// - `follower_append`: on a follower, an AppendEntries with entries, decoded and appended;
/// - `apply`: committed entries applied to the state machine.
///
/// Stages overlap as said; what `propose` holds beyond its parts is openraft's own
/// hand-offs between its tasks.
#[derive(Debug, Clone)]
pub struct WriteStages(StageFamily);

impl Default for WriteStages {
    fn default() -> Self {
        // 50 us to about 1.6 s, doubling.
        Self(Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_05, 2.0, 16))))
    }
}

impl WriteStages {
    pub fn observe(&self, stage: &'static str, took: Duration) {
        self.0.get_or_create(&StageLabel { stage }).observe(took.as_secs_f64());
    }

    /// Runs `f` to its end, observing how long it took as `stage`.
    pub async fn time<T>(&self, stage: &'static str, f: impl std::future::Future<Output = T>) -> T {
        let began = Instant::now();
        let out = f.await;
        self.observe(stage, began.elapsed());
        out
    }
}

impl StageObserver for WriteStages {
    fn observe(&self, stage: StoreStage, took: Duration) {
        let name = match stage {
            StoreStage::LogAppend => "log_append",
            StoreStage::LogSync => "log_sync",
            StoreStage::Apply => "apply",
        };
        WriteStages::observe(self, name, took);
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabel {
    method: &'static str,
    route: String,
}

/// How long this manager took over each API request, from its head read to its response
/// built, in `coffer_http_request_seconds{method, route}`: `route` is the router's pattern
/// (`/v1/secrets/{secret}`, never a name), `-` for a path no route matched; a method other
/// than HTTP's own is `other` (the labels a caller can choose are bounded). Manager-to-manager
/// calls are not counted here; a write's own stages are in `coffer_write_stage_seconds`.
#[derive(Debug, Clone)]
pub struct Requests(Family<RequestLabel, Histogram, fn() -> Histogram>);

impl Default for Requests {
    fn default() -> Self {
        // 50 us to about 1.6 s, doubling, as the write stages.
        Self(Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_05, 2.0, 16))))
    }
}

impl Requests {
    pub fn observe(&self, method: &str, route: String, took: Duration) {
        const KNOWN: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"];
        let method = KNOWN.into_iter().find(|k| *k == method).unwrap_or("other");
        self.0.get_or_create(&RequestLabel { method, route }).observe(took.as_secs_f64());
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OverLabel {
    over: &'static str,
}

/// Postcard calls to other managers (Raft RPC, forwarded writes, read indexes), in
/// `coffer_peer_calls_total{over}`: `link` (`manager::link`), or `http` to a peer that does
/// not take the link.
#[derive(Debug, Clone, Default)]
pub struct PeerCalls(Family<OverLabel, Counter>);

impl PeerCalls {
    pub fn count(&self, over: &'static str) {
        self.0.get_or_create(&OverLabel { over }).inc();
    }
}

/// 0.25 ms to about 8 s, doubling.
fn pass_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("coffer");
        let m = Self {
            registry: Registry::default(),
            writes_local: Counter::default(),
            writes_forwarded: Counter::default(),
            grants_issued: Counter::default(),
            redemptions_ok: Counter::default(),
            redemptions_refused: Counter::default(),
            term: Gauge::default(),
            last_log_index: Gauge::default(),
            committed_index: Gauge::default(),
            applied_index: Gauge::default(),
            is_leader: Gauge::default(),
            voters: Gauge::default(),
            workers_ready: Gauge::default(),
            workers_down: Gauge::default(),
            snapshots_ok: Counter::default(),
            snapshots_failed: Counter::default(),
            last_snapshot_ms: Default::default(),
            last_snapshot_age: Gauge::default(),
            autolock: Gauge::default(),
            locked: Gauge::default(),
            snapshot_index: Gauge::default(),
            purged_index: Gauge::default(),
            scheduler_pass: pass_buckets(),
            scheduler_plan: pass_buckets(),
            stages: WriteStages::default(),
            peer_calls: PeerCalls::default(),
            requests: Requests::default(),
        };
        r.register("writes_local", "Commands this manager committed as leader", m.writes_local.clone());
        r.register("writes_forwarded", "Commands this manager forwarded to the leader", m.writes_forwarded.clone());
        r.register("grants_issued", "Grants this manager signed as leader", m.grants_issued.clone());
        r.register("redemptions_ok", "Grants redeemed here (values returned, audited)", m.redemptions_ok.clone());
        r.register("redemptions_refused", "Grants refused here", m.redemptions_refused.clone());
        r.register("raft_term", "Current Raft term", m.term.clone());
        r.register("raft_last_log_index", "Last log index", m.last_log_index.clone());
        r.register("raft_committed_index", "Last committed index known here", m.committed_index.clone());
        r.register("raft_applied_index", "Last applied index", m.applied_index.clone());
        r.register("raft_is_leader", "1 if this manager leads", m.is_leader.clone());
        r.register("raft_voters", "Voting managers in the membership", m.voters.clone());
        r.register("workers_ready", "Workers marked ready", m.workers_ready.clone());
        r.register("workers_down", "Workers marked down", m.workers_down.clone());
        r.register("snapshots_written", "Scheduled snapshots written by this manager", m.snapshots_ok.clone());
        r.register("snapshots_failed", "Scheduled snapshots this manager failed to write", m.snapshots_failed.clone());
        r.register("raft_snapshot_index", "Last log index in this manager's snapshot", m.snapshot_index.clone());
        r.register("raft_purged_index", "Last log index purged from this manager's log", m.purged_index.clone());
        r.register(
            "scheduler_pass_seconds",
            "Scheduling passes on the leader: reading, planning and committing",
            m.scheduler_pass.clone(),
        );
        r.register(
            "scheduler_plan_seconds",
            "Of each scheduling pass, reading the state and planning",
            m.scheduler_plan.clone(),
        );
        r.register("write_stage_seconds", "Time of each stage of a write on this manager", m.stages.0.clone());
        r.register("peer_calls", "Calls to other managers, over the link or over HTTP", m.peer_calls.0.clone());
        r.register(
            "http_request_seconds",
            "API requests served by this manager, by method and route",
            m.requests.0.clone(),
        );
        r.register("autolock", "1 when autolock is on", m.autolock.clone());
        r.register(
            "locked",
            "1 while this manager waits for its unlock key (it then serves no metrics but this)",
            m.locked.clone(),
        );
        r.register(
            "snapshot_age_seconds",
            "Age of the last scheduled snapshot this manager wrote (-1: none yet)",
            m.last_snapshot_age.clone(),
        );
        Self { registry: r, ..m }
    }
}

fn gauge(v: Option<u64>) -> i64 {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// The text exposition of `m`'s metrics, gauges refreshed now.
pub fn render(m: &Manager) -> Result<String, OpError> {
    use coffer_raft_store::model::{NodeRole, NodeStatus};
    let raft = m.raft.metrics().borrow().clone();
    let x = &m.metrics;
    x.term.set(gauge(Some(raft.current_term)));
    x.last_log_index.set(gauge(raft.last_log_index));
    x.applied_index.set(gauge(raft.last_applied.map(|l| l.index)));
    x.committed_index.set(gauge(m.reader.committed()?.map(|l| l.index)));
    x.is_leader.set(i64::from(m.is_leader()));
    x.snapshot_index.set(gauge(raft.snapshot.map(|l| l.index)));
    x.purged_index.set(gauge(raft.purged.map(|l| l.index)));
    x.voters.set(gauge(Some(raft.membership_config.membership().voter_ids().count() as u64)));
    let workers: Vec<_> = m.reader.nodes()?.into_iter().filter(|n| n.role == NodeRole::Worker && !n.removed).collect();
    x.workers_ready.set(gauge(Some(workers.iter().filter(|n| n.status == NodeStatus::Ready).count() as u64)));
    x.workers_down.set(gauge(Some(workers.iter().filter(|n| n.status == NodeStatus::Down).count() as u64)));
    x.autolock.set(i64::from(m.reader.cluster()?.is_some_and(|c| c.autolock)));
    x.locked.set(0);
    let last = x.last_snapshot_ms.load(std::sync::atomic::Ordering::Relaxed);
    x.last_snapshot_age.set(if last == 0 {
        -1
    } else {
        gauge(Some(coffer_api::time::now_millis().saturating_sub(last) / 1000))
    });
    let mut out = String::new();
    encode(&mut out, &x.registry).map_err(|e| OpError::internal("encoding metrics", e))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_route_and_a_method_of_the_callers_own_is_other() {
        let m = Metrics::default();
        m.requests.observe("POST", "/v1/secrets".into(), Duration::from_micros(900));
        m.requests.observe("POST", "/v1/secrets".into(), Duration::from_micros(700));
        for made_up in ["BREW", "X-1", "POST2"] {
            m.requests.observe(made_up, "-".into(), Duration::from_micros(10));
        }
        let mut text = String::new();
        encode(&mut text, &m.registry).expect("encode");
        assert!(
            text.contains("coffer_http_request_seconds_count{method=\"POST\",route=\"/v1/secrets\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("coffer_http_request_seconds_count{method=\"other\",route=\"-\"} 3\n"), "{text}");
        assert!(!text.contains("BREW") && !text.contains("POST2"), "no label a caller chose: {text}");
    }
}
