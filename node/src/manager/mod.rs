//! The manager: the [`Manager`] every handler, the scheduler and the leader's operations
//! share, and the operations they share through it: propose with forwarding to the leader,
//! linearizable reads, leader-only operations.
//!
//! Owns: the `Raft` handle, the store reader, this node's certificate, the peer client.
//! Must never: hold a secret value longer than a request, or answer a read that must be
//! current from a follower's possibly stale state without a read index from the leader.
//!
//! Boundary: imports `trust` and `local`, never `http`, `worker` or the CLI. How a manager
//! is built and served is [`crate::start`]'s business, above this room and `http`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_api::error::CodedError;
use coffer_raft_store::model::{Applied, ApplyError, ClusterRecord, Command};
use coffer_raft_store::seal::KeyEncryptionKey;
use coffer_raft_store::{ManagerNode, NodeId, SnapshotInbox, StateReader, TypeConfig};
use openraft::error::{CheckIsLeaderError, ForwardToLeader, RaftError};
use openraft::{Raft, ServerState};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::local::config::ManagerConfig;
use crate::local::data_dir::DataDir;
use crate::manager::error::OpError;
use crate::manager::group_commit::Committed;
use crate::manager::leader_ops::{LeaderOp, OpResult};
use crate::manager::raft_net::{post_postcard, PeerError};
use crate::manager::read_index::ReadIndexBatch;
use crate::trust::tls::NodeCert;

pub(crate) mod audit;
pub(crate) mod autolock;
pub mod backup;
pub(crate) mod compaction;
pub(crate) mod constraints;
pub(crate) mod error;
pub(crate) mod forward;
pub mod grants;
pub(crate) mod group_commit;
pub(crate) mod init;
pub(crate) mod leader_ops;
pub(crate) mod link;
pub(crate) mod membership;
pub(crate) mod metrics;
pub(crate) mod open;
pub(crate) mod raft_net;
pub(crate) mod read_index;
pub mod recovery;
pub(crate) mod renew;
pub(crate) mod scheduler;
pub(crate) mod status;
pub(crate) mod tls_keys;
pub mod unlock;
pub(crate) mod values;

/// How long an operation waits for a leader to be known before it reports `unavailable`.
const LEADER_WAIT: Duration = Duration::from_secs(10);
const FORWARD_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a forwarded write looks whether the leader it waits on was replaced.
const DEPOSED_CHECK: Duration = Duration::from_millis(200);
/// How long a request that could not reach the leader (it died, or restarted) waits for
/// an election to name another before it fails: elections take under a second. Only
/// requests that are safe to send twice wait (read indexes, heartbeats, grant requests).
pub(crate) const LEADER_LOSS_WAIT: Duration = Duration::from_secs(3);
/// How long a leader keeps asking its quorum to confirm a read index that came back
/// unconfirmed (followers that answered late) before the read fails as `unavailable`.
const READ_INDEX_PATIENCE: Duration = Duration::from_secs(2);
/// A running manager. Handlers get it as their state.
pub struct Manager {
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) reader: StateReader,
    pub(crate) inbox: SnapshotInbox,
    pub id: NodeId,
    pub cluster_id: String,
    pub advertise: String,
    pub(crate) cert: Arc<NodeCert>,
    /// Pooled mutual-TLS client for calls to other managers (and to ourselves).
    pub(crate) peers: raft_net::Peers,
    /// The cluster CA certificate, for new TLS configurations (after a renewal).
    pub(crate) ca_pem: String,
    pub(crate) config: ManagerConfig,
    pub(crate) data_dir: DataDir,
    /// The key file's KEK: seals the store's data key and this node's TLS key unless
    /// autolock is on, and the locked certificate's key if it is.
    pub(crate) kek: Arc<dyn KeyEncryptionKey>,
    /// What the store's data key, and this node's TLS key, are sealed under now (autolock
    /// changes it while running).
    pub(crate) store_key: std::sync::Mutex<autolock::StoreKey>,
    /// Serialises writes of the sealed TLS key (renewal, re-sealing after a re-wrap).
    pub(crate) node_key_lock: std::sync::Mutex<()>,
    /// Serialises membership changes made by this manager while it leads.
    pub(crate) membership_lock: tokio::sync::Mutex<()>,
    /// Serialises autolock changes on the leader (each reads the generation it replaces).
    pub(crate) autolock_lock: tokio::sync::Mutex<()>,
    /// Serialises joins on the leader: a hostname is checked and taken in one step.
    pub(crate) join_lock: tokio::sync::Mutex<()>,
    /// This manager's grant key for the term it leads (see `grants`).
    pub(crate) grant_key: tokio::sync::Mutex<Option<Arc<grants::GrantKey>>>,
    /// The cluster value key's sealer, opened once: the key never changes after init, and
    /// creates, rotations and redemptions would otherwise open the cluster record each.
    pub(crate) value_sealer: std::sync::OnceLock<Arc<values::ValueSealer>>,
    /// Counters and gauges served at /metrics.
    pub(crate) metrics: metrics::Metrics,
    /// Coalesces concurrent read-index requests.
    pub(crate) read_batch: ReadIndexBatch,
    /// Coalesces followers' read-index requests (`/raft/read-index`). Apart from
    /// `read_batch`, which may be held across a call to another manager: two managers
    /// that each took the other for the leader would otherwise wait on each other.
    pub(crate) served_batch: ReadIndexBatch,
    /// Coalesces concurrent writes on the leader into one log entry.
    pub(crate) group: Arc<group_commit::GroupCommit>,
    /// Coalesces concurrent writes forwarded to the leader while this manager follows.
    pub(crate) forwarder: Arc<forward::Forwarder>,
    /// The audit log of redemptions (group-committed).
    pub(crate) audit: audit::AuditLog,
    /// When each node last renewed its certificate through this leader.
    pub(crate) renewals: RenewalPace,
    /// Worker heartbeats seen while leading (see `scheduler`).
    pub(crate) liveness: scheduler::Liveness,
    pub(crate) shutdown: CancellationToken,
    /// Every background task this manager spawns (scheduler, renewal, adding a joined
    /// manager): closed and awaited on shutdown, so none outlives it.
    pub(crate) tasks: TaskTracker,
}

/// At most one certificate renewal per node per [`RENEWAL_SPACING`] (or a quarter of a
/// certificate's life, if shorter), on this leader: a renewal is a Raft entry and a valid
/// certificate, not something to ask for in a loop.
#[derive(Debug, Default)]
pub(crate) struct RenewalPace {
    last: std::sync::Mutex<std::collections::HashMap<NodeId, Instant>>,
}

const RENEWAL_SPACING: Duration = Duration::from_secs(60);

impl RenewalPace {
    /// Refuses a renewal of `node` that comes too soon after its last one.
    pub(crate) fn check(&self, node: NodeId, quarter_life: Duration) -> Result<(), OpError> {
        let spacing = RENEWAL_SPACING.min(quarter_life);
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = last.get(&node).filter(|at| at.elapsed() < spacing) {
            let wait = spacing.saturating_sub(at.elapsed()).as_secs() + 1;
            return Err(OpError::with_code(
                coffer_api::error::ErrorCode::FailedPrecondition,
                format!("this node renewed its certificate moments ago; retry in {wait} s"),
            ));
        }
        Ok(())
    }

    /// Notes a renewal of `node` that went through (a refused one costs nothing).
    pub(crate) fn record(&self, node: NodeId) {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).insert(node, Instant::now());
    }
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("id", &self.id)
            .field("cluster_id", &self.cluster_id)
            .field("advertise", &self.advertise)
            .finish()
    }
}

/// The leader as `raft` sees it, with its address.
pub(crate) fn leader_of(raft: &Raft<TypeConfig>) -> Option<(NodeId, String)> {
    let m = raft.metrics();
    let m = m.borrow();
    let id = m.current_leader?;
    let addr = m.membership_config.membership().get_node(&id).map(|n| n.addr.clone())?;
    Some((id, addr))
}

/// Waits until `raft` knows some leader.
pub(crate) async fn wait_for_leader_of(raft: &Raft<TypeConfig>, within: Duration) -> Result<(NodeId, String), OpError> {
    let deadline = Instant::now() + within;
    let mut rx = raft.metrics();
    loop {
        if let Some(l) = leader_of(raft) {
            return Ok(l);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, rx.changed()).await.is_err() {
            return Err(OpError::unavailable("no leader is known; the cluster may have lost its quorum"));
        }
    }
}

/// Returns once `raft` knows a leader other than `old`.
pub(crate) async fn deposed_from(raft: &Raft<TypeConfig>, old: NodeId) {
    let mut every = tokio::time::interval(DEPOSED_CHECK);
    loop {
        every.tick().await;
        if leader_of(raft).is_some_and(|(id, _)| id != old) {
            return;
        }
    }
}

impl Manager {
    /// The leader as this manager sees it, with its address.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        leader_of(&self.raft)
    }

    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// Waits until some leader is known.
    pub async fn wait_for_leader(&self, within: Duration) -> Result<(NodeId, String), OpError> {
        wait_for_leader_of(&self.raft, within).await
    }

    /// Commits `cmd` (on the leader, forwarding if this manager does not lead) and returns
    /// what the state machine said.
    pub async fn write(&self, cmd: Command) -> Result<Result<Applied, ApplyError>, OpError> {
        let mut leader = self.wait_for_leader(LEADER_WAIT).await?;
        for _ in 0..3 {
            if leader.0 == self.id {
                match self.metrics.stages.time("propose", self.group.commit(&self.raft, cmd.clone())).await {
                    Committed::Applied(r) => {
                        self.metrics.writes_local.inc();
                        return Ok(r);
                    }
                    Committed::NotLeader(f) => {
                        leader = self.forward_target(f).await?;
                        continue;
                    }
                    Committed::Failed(e) => return Err(OpError::unavailable(e)),
                }
            }
            self.metrics.writes_forwarded.inc();
            match self.forwarder.forward(&self.forward_link(), cmd.clone()).await {
                forward::Forwarded::Answered(r) => return Ok(r),
                forward::Forwarded::Failed(e) => return Err(e),
                // Became the leader meanwhile: commit here.
                forward::Forwarded::LeadHere => leader = (self.id, self.advertise.clone()),
            }
        }
        Err(OpError::unavailable("leadership kept changing; retry"))
    }

    fn forward_link(&self) -> forward::Link {
        forward::Link {
            id: self.id,
            raft: self.raft.clone(),
            peers: self.peers.clone(),
            stages: self.metrics.stages.clone(),
            leader_wait: LEADER_WAIT,
            timeout: FORWARD_TIMEOUT,
        }
    }

    /// Returns once this manager knows a leader other than `old`.
    async fn deposed(&self, old: NodeId) {
        deposed_from(&self.raft, old).await;
    }

    /// The leader that replaced `old`, once an election names one within `within`: for a
    /// request that could not reach `old` and is safe to send again.
    pub(crate) async fn replacement(&self, old: NodeId, within: Duration) -> Option<(NodeId, String)> {
        tokio::time::timeout(within, self.deposed(old)).await.ok()?;
        self.leader()
    }

    /// [`Manager::write`], with refusals turned into API errors.
    pub async fn propose(&self, cmd: Command) -> Result<Applied, OpError> {
        Ok(self.write(cmd).await??)
    }

    async fn forward_target(&self, f: ForwardToLeader<NodeId, ManagerNode>) -> Result<(NodeId, String), OpError> {
        match (f.leader_id, f.leader_node) {
            (Some(id), Some(node)) => Ok((id, node.addr)),
            _ => self.wait_for_leader(LEADER_WAIT).await,
        }
    }

    /// Makes the next reads of this manager's state linearizable: on the leader, a
    /// confirmed read index; on a follower, the leader's read index, applied here.
    pub async fn linearizable(&self) -> Result<(), OpError> {
        let leader = self.wait_for_leader(LEADER_WAIT).await?;
        // Concurrent reads share one read index (see `ReadIndexBatch`): under load, one
        // round trip to the leader's quorum serves every request that was waiting for it.
        let read_index = self.read_batch.read_index(|| self.fetch_read_index(leader)).await?;
        if let Some(index) = read_index {
            self.raft
                .wait(Some(LEADER_WAIT))
                .applied_index_at_least(Some(index), "linearizable read")
                .await
                .map_err(|e| OpError::unavailable(format!("catching up to the leader: {e}")))?;
        }
        Ok(())
    }

    /// A read index confirmed by a quorum: our own if we lead, else the leader's.
    pub(crate) async fn fetch_read_index(&self, leader: (NodeId, String)) -> Result<Option<u64>, OpError> {
        if leader.0 != self.id {
            return self.remote_read_index(&leader).await;
        }
        self.own_read_index(true).await
    }

    /// This manager's own read index, confirmed by a quorum. When it does not lead: the
    /// leader's if `forward`, else `unavailable` (what `/raft/read-index` answers, so that
    /// two managers that each take the other for the leader never wait on each other).
    pub(crate) async fn own_read_index(&self, forward: bool) -> Result<Option<u64>, OpError> {
        let deadline = tokio::time::Instant::now() + READ_INDEX_PATIENCE;
        let mut pause = Duration::from_millis(5);
        loop {
            match self.raft.get_read_log_id().await {
                Ok((read, _applied)) => return Ok(read.map(|l| l.index)),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) if !forward => {
                    return Err(OpError::unavailable("not the leader"));
                }
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    let l = self.forward_target(f).await?;
                    if l.0 != self.id {
                        return self.remote_read_index(&l).await;
                    }
                    // Elected meanwhile: ask this manager's Raft again. Asking itself over
                    // HTTP waited on the read batch this very call holds, until the call's
                    // 15 s timeout: every linearizable request (a rotation's among them) on
                    // a manager elected that way stalled 15 s.
                    if tokio::time::Instant::now() + pause >= deadline {
                        return Err(OpError::unavailable("this manager was just elected; retry"));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                // openraft gives each follower one heartbeat interval (100 ms) to confirm;
                // a follower busy appending a burst of writes on a loaded machine can take
                // longer. A round confirmed too late is not a lost leadership: ask again,
                // for a while. (Under 500 MB of sustained writes, one such round failed a
                // rotation with 503 before this.)
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))
                    if tokio::time::Instant::now() + pause < deadline =>
                {
                    tracing::debug!(error = %e, "read index not confirmed in time; asking again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Err(e) => return Err(OpError::unavailable(format!("read index: {e}"))),
            }
        }
    }

    async fn remote_read_index(&self, leader: &(NodeId, String)) -> Result<Option<u64>, OpError> {
        let mut leader = leader.clone();
        for _ in 0..3 {
            if leader.0 == self.id {
                return Box::pin(self.fetch_read_index(leader)).await;
            }
            let url = format!("https://{}/raft/read-index", leader.1);
            let asked = post_postcard::<_, Result<Option<u64>, String>>(
                &self.peers,
                &url,
                Some(leader.0),
                &(),
                FORWARD_TIMEOUT,
            );
            // A read index can be asked again: of the leader that replaced this one, when
            // this one is replaced while asked, or cannot be reached at all (it died: the
            // read waits for the election rather than fail while one is under way).
            tokio::select! {
                r = asked => match r {
                    Err(PeerError::Unreachable(e)) => {
                        if self.replacement(leader.0, LEADER_LOSS_WAIT).await.is_none() {
                            return Err(forward_error(PeerError::Unreachable(e)));
                        }
                    }
                    r => return r.map_err(forward_error)?.map_err(OpError::unavailable),
                },
                () = self.deposed(leader.0) => {}
            }
            leader = self.wait_for_leader(LEADER_WAIT).await?;
        }
        Err(OpError::unavailable("leadership kept changing; retry"))
    }

    /// Runs an operation that only the leader may perform, here or on the leader.
    pub async fn leader_op(self: &Arc<Self>, op: LeaderOp) -> Result<OpResult, OpError> {
        let leader = self.wait_for_leader(LEADER_WAIT).await?;
        if leader.0 == self.id {
            return leader_ops::execute(self, op).await;
        }
        let url = format!("https://{}/raft/op", leader.1);
        let resp = self
            .peers
            .get()
            .post(&url)
            .json(&op)
            .timeout(FORWARD_TIMEOUT)
            .send()
            .await
            .map_err(|e| OpError::unavailable(format!("forwarding to the leader: {e}")))?;
        raft_net::check_peer(&resp, leader.0).map_err(forward_error)?;
        if resp.status().is_success() {
            resp.json().await.map_err(|e| OpError::unavailable(format!("leader's reply: {e}")))
        } else {
            let body: coffer_api::error::ErrorBody =
                resp.json().await.map_err(|e| OpError::unavailable(format!("leader's reply: {e}")))?;
            Err(OpError::from_body(body))
        }
    }

    /// The sealer of secret values under the cluster's value key.
    pub fn value_sealer(&self) -> Result<Arc<values::ValueSealer>, OpError> {
        if let Some(s) = self.value_sealer.get() {
            return Ok(s.clone());
        }
        let sealer = Arc::new(values::ValueSealer::for_cluster(&self.cluster()?)?);
        Ok(self.value_sealer.get_or_init(|| sealer).clone())
    }

    /// A node of the cluster that has not been removed.
    pub(crate) fn existing_node(&self, id: u64) -> Result<coffer_raft_store::model::NodeRecord, OpError> {
        match self.reader.node(id)? {
            Some(n) if !n.removed => Ok(n),
            Some(_) => Err(OpError::not_found(format!("node {id} was removed"))),
            None => Err(OpError::not_found(format!("no node {id}"))),
        }
    }

    /// The cluster record; every initialized cluster has one.
    pub fn cluster(&self) -> Result<ClusterRecord, OpError> {
        self.reader.cluster()?.ok_or_else(|| OpError::unavailable("the cluster is not initialized yet"))
    }
}

pub(crate) fn forward_error(e: PeerError) -> OpError {
    match e {
        PeerError::Status { status, body } => serde_json::from_str::<coffer_api::error::ErrorBody>(&body)
            .map(OpError::from_body)
            .unwrap_or_else(|_| OpError::unavailable(format!("leader answered HTTP {status}"))),
        other => OpError::unavailable(format!("forwarding to the leader: {other}")),
    }
}
