//! The manager: the composition root that builds storage, Raft, network and listener in
//! order, and the operations every handler shares (propose with forwarding to the leader,
//! linearizable reads, leader-only operations).
//!
//! Owns: the `Raft` handle, the store reader, this node's certificate, the peer client.
//! Must never: hold a secret value longer than a request, or answer a read that must be
//! current from a follower's possibly stale state without a read index from the leader.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_api::cluster::{ClusterStatus, MemberStatus};
use coffer_raft_store::model::{Applied, ApplyError, ClusterRecord, Command, ObjectKind};
use coffer_raft_store::seal::KeyEncryptionKey;
use coffer_raft_store::{ManagerNode, NodeId, SnapshotInbox, StateReader, StoreOptions, TypeConfig};
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::{Raft, ServerState};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api_error::ApiError;
use crate::config::ManagerConfig;
use crate::data_dir::{DataDir, NodeIdentity};
use crate::leader_ops::{LeaderOp, OpResult};
use crate::raft_net::{post_postcard, PeerError, PeerNetwork};
use crate::tls::NodeCert;
use crate::{bootstrap, renewal, routes, server, tls};

/// How long an operation waits for a leader to be known before it reports `unavailable`.
const LEADER_WAIT: Duration = Duration::from_secs(10);
const FORWARD_TIMEOUT: Duration = Duration::from_secs(15);
/// Committed-but-not-applied entries a healthy (ready) manager may have.
const HEALTHY_APPLY_LAG: u64 = 100;

/// A running manager. Handlers get it as their state.
pub struct Manager {
    pub raft: Raft<TypeConfig>,
    pub reader: StateReader,
    pub(crate) inbox: SnapshotInbox,
    pub id: NodeId,
    pub cluster_id: String,
    pub advertise: String,
    pub(crate) cert: Arc<NodeCert>,
    /// Pooled mutual-TLS client for calls to other managers (and to ourselves).
    pub(crate) peers: reqwest::Client,
    pub(crate) config: ManagerConfig,
    pub(crate) data_dir: DataDir,
    pub(crate) kek: Arc<dyn KeyEncryptionKey>,
    /// Serialises membership changes made by this manager while it leads.
    pub(crate) membership_lock: tokio::sync::Mutex<()>,
    /// This manager's grant key for the term it leads (see `grants`).
    pub(crate) grant_key: tokio::sync::Mutex<Option<Arc<crate::grants::GrantKey>>>,
    /// The cluster value key's sealer, opened once: the key never changes after init, and
    /// creates, rotations and redemptions would otherwise open the cluster record each.
    value_sealer: std::sync::OnceLock<Arc<crate::values::ValueSealer>>,
    /// Counters and gauges served at /metrics.
    pub(crate) metrics: crate::metrics::Metrics,
    /// Coalesces concurrent read-index requests.
    pub(crate) read_batch: ReadIndexBatch,
    /// The audit log of redemptions (group-committed).
    pub(crate) audit: crate::audit::AuditLog,
    /// Worker heartbeats seen while leading (see `scheduler`).
    pub(crate) liveness: crate::scheduler::Liveness,
    pub(crate) shutdown: CancellationToken,
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

/// What `start` needs besides the config: the listener (already bound, so port 0 works)
/// and, for `manager init`, the commands that create the cluster.
#[derive(Debug)]
pub struct Startup {
    pub listener: TcpListener,
    pub bootstrap: Option<bootstrap::Bootstrap>,
}

/// A started manager, and the task that serves it until shutdown.
#[derive(Debug)]
pub struct RunningManager {
    pub manager: Arc<Manager>,
    pub serving: tokio::task::JoinHandle<()>,
}

impl Manager {
    /// Builds storage, Raft, network and listener for the data dir in `config`, and serves
    /// until `shutdown` is cancelled (see [`RunningManager`]).
    ///
    /// # Errors
    /// A data dir that cannot be read or opened (wrong key, tampered store), or a cluster
    /// that cannot be bootstrapped.
    pub async fn start(
        config: ManagerConfig,
        startup: Startup,
        shutdown: CancellationToken,
    ) -> anyhow::Result<RunningManager> {
        use anyhow::Context;
        tls::install_provider();
        config.validate().map_err(anyhow::Error::msg)?;
        let data_dir = DataDir::new(&config.data_dir);
        let identity = NodeIdentity::load(&data_dir)?;
        let kek: Arc<dyn KeyEncryptionKey> = Arc::new(crate::key_file::load(&data_dir.key_file())?);
        let creds = bootstrap::load_credentials(&data_dir, kek.as_ref())?;
        let cert = NodeCert::new(tls::certified_key(&creds.cert_pem, creds.key_pem.expose())?);
        let peers = tls::http_client(tls::client_config(&creds.ca_pem, Some(cert.clone()))?)?;
        let server_tls = tls::server_config(&creds.ca_pem, cert.clone())?;

        let store = coffer_raft_store::open(&data_dir.store(), kek.as_ref(), StoreOptions::default())
            .context("open the manager's store")?;
        let raft_config = Arc::new(config.openraft_config().map_err(anyhow::Error::msg)?);
        let raft =
            Raft::new(identity.node_id, raft_config, PeerNetwork::new(peers.clone()), store.log, store.state_machine)
                .await
                .context("start raft")?;

        let audit = crate::audit::AuditLog::start(data_dir.root().join("audit.log")).context("start the audit log")?;
        let manager = Arc::new(Manager {
            raft,
            reader: store.reader,
            inbox: store.snapshots,
            id: identity.node_id,
            cluster_id: identity.cluster_id.clone(),
            advertise: identity.advertise.clone(),
            cert,
            peers,
            config: config.clone(),
            data_dir,
            kek,
            membership_lock: tokio::sync::Mutex::new(()),
            grant_key: tokio::sync::Mutex::new(None),
            read_batch: ReadIndexBatch::default(),
            metrics: crate::metrics::Metrics::default(),
            value_sealer: std::sync::OnceLock::new(),
            audit,
            liveness: crate::scheduler::Liveness::default(),
            shutdown: shutdown.clone(),
        });

        let app = routes::router(manager.clone());
        let serving =
            tokio::spawn(server::serve(startup.listener, server_tls, app, config.max_connections, shutdown.clone()));
        if let Some(b) = startup.bootstrap {
            bootstrap::bootstrap_cluster(&manager, b).await?;
        }
        tokio::spawn(renewal::renew_certificates(manager.clone()));
        tokio::spawn(crate::scheduler::run(manager.clone()));
        let m = manager.clone();
        let serving = tokio::spawn(async move {
            shutdown.cancelled().await;
            let _ = serving.await;
            if let Err(e) = m.raft.shutdown().await {
                tracing::warn!(error = %e, "raft shutdown");
            }
        });
        tracing::info!(node_id = manager.id, addr = %manager.advertise, "manager serving");
        Ok(RunningManager { manager, serving })
    }

    /// The leader as this manager sees it, with its address.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id).map(|n| n.addr.clone())?;
        Some((id, addr))
    }

    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// Waits until some leader is known.
    pub async fn wait_for_leader(&self, within: Duration) -> Result<(NodeId, String), ApiError> {
        let deadline = Instant::now() + within;
        let mut rx = self.raft.metrics();
        loop {
            if let Some(l) = self.leader() {
                return Ok(l);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, rx.changed()).await.is_err() {
                return Err(ApiError::unavailable("no leader is known; the cluster may have lost its quorum"));
            }
        }
    }

    /// Commits `cmd` (on the leader, forwarding if this manager does not lead) and returns
    /// what the state machine said.
    pub async fn write(&self, cmd: Command) -> Result<Result<Applied, ApplyError>, ApiError> {
        let mut leader = self.wait_for_leader(LEADER_WAIT).await?;
        for _ in 0..3 {
            if leader.0 == self.id {
                match self.raft.client_write(cmd.clone()).await {
                    Ok(resp) => {
                        self.metrics.writes_local.inc();
                        return Ok(resp.data.0);
                    }
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                        leader = self.forward_target(f).await?;
                        continue;
                    }
                    Err(e) => return Err(ApiError::unavailable(format!("write not committed: {e}"))),
                }
            }
            self.metrics.writes_forwarded.inc();
            let url = format!("https://{}/raft/propose", leader.1);
            return match post_postcard::<_, coffer_raft_store::Response>(
                &self.peers,
                &url,
                Some(leader.0),
                &cmd,
                FORWARD_TIMEOUT,
            )
            .await
            {
                Ok(r) => Ok(r.0),
                Err(e) => Err(forward_error(e)),
            };
        }
        Err(ApiError::unavailable("leadership kept changing; retry"))
    }

    /// [`Manager::write`], with refusals turned into API errors.
    pub async fn propose(&self, cmd: Command) -> Result<Applied, ApiError> {
        self.write(cmd).await?.map_err(apply_error)
    }

    async fn forward_target(&self, f: ForwardToLeader<NodeId, ManagerNode>) -> Result<(NodeId, String), ApiError> {
        match (f.leader_id, f.leader_node) {
            (Some(id), Some(node)) => Ok((id, node.addr)),
            _ => self.wait_for_leader(LEADER_WAIT).await,
        }
    }

    /// Makes the next reads of this manager's state linearizable: on the leader, a
    /// confirmed read index; on a follower, the leader's read index, applied here.
    pub async fn linearizable(&self) -> Result<(), ApiError> {
        let leader = self.wait_for_leader(LEADER_WAIT).await?;
        // Concurrent reads share one read index (see `ReadIndexBatch`): under load, one
        // round trip to the leader's quorum serves every request that was waiting for it.
        let read_index = self.read_batch.read_index(|| self.fetch_read_index(leader)).await?;
        if let Some(index) = read_index {
            self.raft
                .wait(Some(LEADER_WAIT))
                .applied_index_at_least(Some(index), "linearizable read")
                .await
                .map_err(|e| ApiError::unavailable(format!("catching up to the leader: {e}")))?;
        }
        Ok(())
    }

    /// A read index confirmed by a quorum: our own if we lead, else the leader's.
    pub(crate) async fn fetch_read_index(&self, leader: (NodeId, String)) -> Result<Option<u64>, ApiError> {
        if leader.0 != self.id {
            return self.remote_read_index(&leader).await;
        }
        match self.raft.get_read_log_id().await {
            Ok((read, _applied)) => Ok(read.map(|l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                let l = self.forward_target(f).await?;
                self.remote_read_index(&l).await
            }
            Err(e) => Err(ApiError::unavailable(format!("read index: {e}"))),
        }
    }

    async fn remote_read_index(&self, leader: &(NodeId, String)) -> Result<Option<u64>, ApiError> {
        let url = format!("https://{}/raft/read-index", leader.1);
        post_postcard::<_, Result<Option<u64>, String>>(&self.peers, &url, Some(leader.0), &(), FORWARD_TIMEOUT)
            .await
            .map_err(forward_error)?
            .map_err(ApiError::unavailable)
    }

    /// Runs an operation that only the leader may perform, here or on the leader.
    pub async fn leader_op(self: &Arc<Self>, op: LeaderOp) -> Result<OpResult, ApiError> {
        let leader = self.wait_for_leader(LEADER_WAIT).await?;
        if leader.0 == self.id {
            return crate::leader_ops::execute(self, op).await;
        }
        let url = format!("https://{}/raft/op", leader.1);
        let resp = self
            .peers
            .post(&url)
            .json(&op)
            .timeout(FORWARD_TIMEOUT)
            .send()
            .await
            .map_err(|e| ApiError::unavailable(format!("forwarding to the leader: {e}")))?;
        crate::raft_net::check_peer(&resp, leader.0).map_err(forward_error)?;
        if resp.status().is_success() {
            resp.json().await.map_err(|e| ApiError::unavailable(format!("leader's reply: {e}")))
        } else {
            let body: coffer_api::error::ErrorBody =
                resp.json().await.map_err(|e| ApiError::unavailable(format!("leader's reply: {e}")))?;
            Err(ApiError::from_body(body))
        }
    }

    /// The sealer of secret values under the cluster's value key.
    pub fn value_sealer(&self) -> Result<Arc<crate::values::ValueSealer>, ApiError> {
        if let Some(s) = self.value_sealer.get() {
            return Ok(s.clone());
        }
        let sealer = Arc::new(crate::values::ValueSealer::for_cluster(&self.cluster()?)?);
        Ok(self.value_sealer.get_or_init(|| sealer).clone())
    }

    /// The cluster record; every initialized cluster has one.
    pub fn cluster(&self) -> Result<ClusterRecord, ApiError> {
        self.reader.cluster()?.ok_or_else(|| ApiError::unavailable("the cluster is not initialized yet"))
    }

    /// This manager's view of the cluster.
    pub fn status(&self) -> Result<ClusterStatus, ApiError> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let matched: BTreeMap<NodeId, Option<u64>> = m
            .replication
            .as_ref()
            .map(|r| r.iter().map(|(id, l)| (*id, l.map(|l| l.index))).collect())
            .unwrap_or_default();
        let members = membership
            .nodes()
            .map(|(id, node)| MemberStatus {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
                matched_index: matched.get(id).copied().flatten(),
                reachable: if m.state == ServerState::Leader && *id != self.id {
                    Some(matched.get(id).copied().flatten().is_some())
                } else {
                    None
                },
            })
            .collect();
        let committed = self.reader.committed()?.map(|l| l.index);
        let applied = m.last_applied.map(|l| l.index);
        Ok(ClusterStatus {
            cluster_id: self.cluster_id.clone(),
            node_id: self.id,
            leader_id: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            committed_index: committed,
            applied_index: applied,
            members,
            // Applying trails committing by a few entries under load; a manager is
            // unhealthy when it has no leader or has fallen behind, not for that.
            healthy: m.current_leader.is_some()
                && m.running_state.is_ok()
                && committed.unwrap_or(0).saturating_sub(applied.unwrap_or(0)) <= HEALTHY_APPLY_LAG,
        })
    }
}

fn forward_error(e: PeerError) -> ApiError {
    match e {
        PeerError::Status { status, body } => serde_json::from_str::<coffer_api::error::ErrorBody>(&body)
            .map(ApiError::from_body)
            .unwrap_or_else(|_| ApiError::unavailable(format!("leader answered HTTP {status}"))),
        other => ApiError::unavailable(format!("forwarding to the leader: {other}")),
    }
}

/// A refusal of the state machine, as the API reports it.
pub fn apply_error(e: ApplyError) -> ApiError {
    use coffer_api::error::ErrorCode;
    let code = match &e {
        ApplyError::NameTaken { .. } | ApplyError::IdTaken { .. } | ApplyError::AlreadyInitialized => {
            ErrorCode::AlreadyExists
        }
        ApplyError::NotFound { kind, .. } if *kind != ObjectKind::Cluster => ErrorCode::NotFound,
        ApplyError::NotFound { .. } | ApplyError::NotInitialized => ErrorCode::FailedPrecondition,
        ApplyError::SecretInUse { services } => {
            return ApiError::new(
                ErrorCode::SecretInUse,
                format!(
                    "the secret is used by services {}; remove the references first \
                     (coffer service update SERVICE --secret-rm SECRET)",
                    services.join(", ")
                ),
            )
        }
        ApplyError::VersionConflict { .. } | ApplyError::StaleAuthority { .. } => ErrorCode::Conflict,
        ApplyError::NodeRemoved(_) => ErrorCode::NotFound,
    };
    ApiError::new(code, e.to_string())
}

/// Binds `addr` (port 0 picks one).
///
/// # Errors
/// When the address cannot be bound.
pub async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    TcpListener::bind(addr).await.with_context(|| format!("bind {addr}"))
}

/// A read index (`None` on an empty log), or why there is none.
type ReadIndex = Result<Option<u64>, ApiError>;

/// Shares read indexes between concurrent linearizable reads.
///
/// Invariant: a caller gets the result of a fetch that *started after it arrived* (so the
/// index reflects every write acknowledged before the read began), never of one that was
/// already under way. Fetches run one at a time; everyone who queued behind a fetch is
/// served by the next one.
#[derive(Debug, Default)]
pub struct ReadIndexBatch {
    started: std::sync::atomic::AtomicU64,
    last: tokio::sync::Mutex<Option<(u64, ReadIndex)>>,
}

impl ReadIndexBatch {
    pub async fn read_index<F, Fut>(&self, fetch: F) -> ReadIndex
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = ReadIndex>,
    {
        use std::sync::atomic::Ordering::SeqCst;
        let arrival = self.started.load(SeqCst);
        let mut last = self.last.lock().await;
        if let Some((generation, result)) = last.as_ref() {
            if *generation > arrival {
                return result.clone();
            }
        }
        let generation = self.started.fetch_add(1, SeqCst) + 1;
        let result = fetch().await;
        *last = Some((generation, result.clone()));
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test]
    async fn a_read_never_reuses_an_index_fetched_before_it_arrived() {
        let batch = Arc::new(ReadIndexBatch::default());
        let fetches = Arc::new(AtomicU64::new(0));
        // A first fetch is under way (holding the lock) when 20 reads arrive.
        let gate = Arc::new(tokio::sync::Notify::new());
        let (b, f, g) = (batch.clone(), fetches.clone(), gate.clone());
        let first = tokio::spawn(async move {
            b.read_index(|| async move {
                g.notified().await;
                Ok(Some(f.fetch_add(1, Ordering::SeqCst) + 1))
            })
            .await
        });
        tokio::task::yield_now().await;
        while batch.started.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let mut later = Vec::new();
        for _ in 0..20 {
            let (b, f) = (batch.clone(), fetches.clone());
            later.push(tokio::spawn(async move {
                b.read_index(|| async move { Ok(Some(f.fetch_add(1, Ordering::SeqCst) + 1)) }).await
            }));
        }
        tokio::task::yield_now().await;
        gate.notify_one();
        assert_eq!(first.await.expect("join"), Ok(Some(1)));
        for r in later {
            // Served by a fetch that began after they arrived: index 2, not the first one.
            assert_eq!(r.await.expect("join"), Ok(Some(2)));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 2, "twenty waiting reads cost one more fetch");
    }
}
