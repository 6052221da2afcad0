//! openraft's network over HTTPS with mutual TLS: AppendEntries, Vote and full snapshots
//! as postcard bodies on pooled connections (one TLS handshake per peer, not per RPC).
//!
//! Invariant: a response counts only if the peer's certificate names the node we meant to
//! reach (CN = target id, OU = coffer-manager): a stale or wrong address in membership can
//! never make a leader replicate to itself or to another node.
//!
//! Snapshots travel as a stream of length-prefixed frames: first `postcard((vote, meta))`,
//! then each plaintext chunk of the sender's sealed snapshot file, read one at a time on a
//! blocking thread. The receiver seals each chunk again under its own key
//! ([`receive_snapshot`]).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use coffer_raft_store::{DurableLog, ManagerNode, NodeId, SnapshotFile, SnapshotInbox, SnapshotMeta, TypeConfig};
use futures_util::StreamExt;
use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{Snapshot, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::manager::link::{LinkError, Links};
use crate::manager::metrics::WriteStages;
use crate::trust::pki::{self, Role};

/// The pooled mutual-TLS client for calls to other managers. Replaced when this manager's
/// certificate is renewed: pooled connections keep presenting the certificate they were
/// opened with, which the cluster refuses once its grace period is over. Its handshakes
/// accept only a manager's certificate (`tls::peer_client_config`); `probe` is anonymous
/// and takes any server of the cluster CA, for asking a peer whether it is locked.
#[derive(Debug, Clone)]
pub(crate) struct Peers(std::sync::Arc<PeersInner>);

#[derive(Debug)]
pub(crate) struct PeersInner {
    client: std::sync::RwLock<reqwest::Client>,
    probe: reqwest::Client,
    links: Links,
}

impl Peers {
    pub(crate) fn new(client: reqwest::Client, probe: reqwest::Client, links: Links) -> Self {
        Self(std::sync::Arc::new(PeersInner { client: std::sync::RwLock::new(client), probe, links }))
    }

    /// The current client (a cheap handle on its pool).
    pub(crate) fn get(&self) -> reqwest::Client {
        self.0.client.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// An anonymous client that accepts a locked manager's certificate: for `/readyz` only.
    pub(crate) fn probe(&self) -> reqwest::Client {
        self.0.probe.clone()
    }

    /// Starts a new pool and closes the links: connections from now on present the current
    /// certificate.
    pub(crate) fn replace(&self, client: reqwest::Client) {
        *self.0.client.write().unwrap_or_else(|p| p.into_inner()) = client;
        self.0.links.reset();
    }
}

/// Creates one [`PeerClient`] per target; all share the manager's [`Peers`].
#[derive(Debug, Clone)]
pub struct PeerNetwork {
    peers: Peers,
    stages: WriteStages,
    durable: DurableLog,
}

impl PeerNetwork {
    pub(crate) fn new(peers: Peers, stages: WriteStages, durable: DurableLog) -> Self {
        Self { peers, stages, durable }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &ManagerNode) -> PeerClient {
        PeerClient {
            peers: self.peers.clone(),
            target,
            base: format!("https://{}", node.addr),
            stages: self.stages.clone(),
            durable: self.durable.clone(),
        }
    }
}

#[derive(Debug)]
pub struct PeerClient {
    peers: Peers,
    target: NodeId,
    base: String,
    stages: WriteStages,
    durable: DurableLog,
}

/// Why a call to a peer failed, before openraft's error types are chosen.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cannot reach {0}")]
    Unreachable(String),
    #[error("{0}")]
    Network(String),
    #[error("peer answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
}

/// Checks that the server we reached is manager `target` of our CA.
pub fn check_peer(resp: &reqwest::Response, target: NodeId) -> Result<(), PeerError> {
    let der = resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .ok_or_else(|| PeerError::Network("no peer certificate".into()))?;
    let id = pki::parse_peer(der).map_err(|e| PeerError::Network(format!("peer certificate: {e}")))?;
    if id.role != Role::Manager || id.node_id != Some(target) {
        return Err(PeerError::Network(format!("expected manager {target}, reached {} {:?}", id.name, id.role)));
    }
    Ok(())
}

/// POSTs a postcard body and decodes a postcard reply, checking the peer's identity. To a
/// manager (`target`), over its link; over HTTP when it has none.
pub(crate) async fn post_postcard<Req: Serialize, Resp: DeserializeOwned>(
    peers: &Peers,
    url: &str,
    target: Option<NodeId>,
    body: &Req,
    timeout: Duration,
) -> Result<Resp, PeerError> {
    let bytes = postcard::to_allocvec(body).map_err(|e| PeerError::Network(format!("encode: {e}")))?;
    let addr_path = url.strip_prefix("https://").and_then(|rest| rest.find('/').map(|i| rest.split_at(i)));
    if let (Some(target), Some((addr, path))) = (target, addr_path) {
        let links = &peers.0.links;
        let answer = links.call(target, addr, path, &bytes, timeout).await;
        links.calls.count(if matches!(answer, Err(LinkError::Unsupported)) { "http" } else { "link" });
        match answer {
            Ok((status, body)) => return decode_reply(status, &body),
            Err(LinkError::Unreachable(e)) => return Err(PeerError::Unreachable(e)),
            Err(LinkError::Network(e)) => return Err(PeerError::Network(e)),
            Err(LinkError::Unsupported) => {}
        }
    }
    let resp = peers
        .get()
        .post(url)
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .timeout(timeout)
        .send()
        .await
        .map_err(classify)?;
    if let Some(t) = target {
        check_peer(&resp, t)?;
    }
    let status = resp.status();
    let body = resp.bytes().await.map_err(classify)?;
    decode_reply(status.as_u16(), &body)
}

fn decode_reply<Resp: DeserializeOwned>(status: u16, body: &[u8]) -> Result<Resp, PeerError> {
    if !(200..300).contains(&status) {
        return Err(PeerError::Status { status, body: String::from_utf8_lossy(body).into_owned() });
    }
    postcard::from_bytes(body).map_err(|e| PeerError::Network(format!("decode reply: {e}")))
}

fn classify(e: reqwest::Error) -> PeerError {
    if e.is_connect() {
        PeerError::Unreachable(e.to_string())
    } else {
        PeerError::Network(e.to_string())
    }
}

fn rpc_error<E: std::error::Error>(e: PeerError) -> RPCError<NodeId, ManagerNode, E> {
    match e {
        PeerError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
        _ => RPCError::Network(NetworkError::new(&e)),
    }
}

type RpcResult<T> = Result<T, RPCError<NodeId, ManagerNode, RaftError<NodeId>>>;

impl PeerClient {
    /// One postcard RPC to the target manager; the remote's Raft error, a network error and
    /// an unreachable peer are told apart for openraft.
    #[tracing::instrument(level = "debug", name = "raft_rpc", skip_all, fields(path = %path, target = self.target))]
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp> {
        let url = format!("{}{path}", self.base);
        match post_postcard::<_, Result<Resp, RaftError<NodeId>>>(
            &self.peers,
            &url,
            Some(self.target),
            req,
            option.hard_ttl(),
        )
        .await
        {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Err(e) => Err(rpc_error(e)),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    /// openraft gives an AppendEntries its heartbeat interval to complete, and sends up to
    /// `max_payload_entries` at once: 64 secrets of 500 KiB could never make it, and the
    /// same batch was retried forever. A batch over [`APPEND_BYTES`] is sent in part, and
    /// the part that was appended reported as a partial success: openraft sends the rest
    /// next.
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        // This manager's own entries may still be syncing while they replicate: a follower
        // learns of a commit only once the leader holds it on disk too (see the store's
        // `DurableLog`). A heartbeat waits a little for the sync rather than tell less.
        rpc.leader_commit =
            self.durable.commit_to_tell(rpc.leader_commit, !rpc.entries.is_empty(), option.soft_ttl() / 2).await;
        let keep = within_budget(&rpc.entries, APPEND_BYTES);
        if rpc.entries.is_empty() {
            return self.call("/raft/append", &rpc, &option).await;
        }
        let stages = self.stages.clone();
        if keep == rpc.entries.len() {
            return stages.time("replicate", self.call("/raft/append", &rpc, &option)).await;
        }
        rpc.entries.truncate(keep);
        let last = rpc.entries.last().map(|e| e.log_id);
        match stages.time("replicate", self.call("/raft/append", &rpc, &option)).await? {
            AppendEntriesResponse::Success => Ok(AppendEntriesResponse::PartialSuccess(last)),
            other => Ok(other),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        self.call("/raft/vote", &rpc, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let file: Box<SnapshotFile> = snapshot.snapshot;
        let header = postcard::to_allocvec(&(vote, snapshot.meta.clone()))
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        tokio::task::spawn_blocking(move || {
            if tx.blocking_send(Ok(frame(&header))).is_err() {
                return;
            }
            for chunk in file.chunks() {
                let item = chunk.map(|c| frame(&c)).map_err(|e| std::io::Error::other(e.to_string()));
                let failed = item.is_err();
                if tx.blocking_send(item).is_err() || failed {
                    return;
                }
            }
        });
        let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }));
        let url = format!("{}/raft/snapshot", self.base);
        let send = async {
            let resp = self
                .peers
                .get()
                .post(&url)
                .header("content-type", "application/octet-stream")
                .body(body)
                .timeout(option.hard_ttl().max(SNAPSHOT_TIMEOUT))
                .send()
                .await
                .map_err(classify)?;
            check_peer(&resp, self.target)?;
            let status = resp.status();
            let bytes = resp.bytes().await.map_err(classify)?;
            if !status.is_success() {
                return Err(PeerError::Status {
                    status: status.as_u16(),
                    body: String::from_utf8_lossy(&bytes).into_owned(),
                });
            }
            postcard::from_bytes::<Result<SnapshotResponse<NodeId>, Fatal<NodeId>>>(&bytes)
                .map_err(|e| PeerError::Network(format!("decode reply: {e}")))
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = send => match r {
                Ok(Ok(resp)) => Ok(resp),
                Ok(Err(fatal)) => Err(StreamingError::RemoteError(RemoteError::new(self.target, fatal))),
                Err(PeerError::Unreachable(m)) => Err(StreamingError::Unreachable(Unreachable::new(&PeerError::Unreachable(m)))),
                Err(e) => Err(StreamingError::Network(NetworkError::new(&e))),
            },
        }
    }
}

fn frame(payload: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(4 + payload.len());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    Bytes::from(v)
}

/// The least time a whole snapshot transfer (stream and install) gets.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);

/// The most bytes of entries one AppendEntries carries (at least one entry, whatever its
/// size): small enough to be sent, synced and answered within a heartbeat interval on a
/// busy machine, large enough that 64 entries of a few KiB go in one.
const APPEND_BYTES: usize = 512 << 10;

/// A cheap upper estimate of an entry's encoded size: its sealed value, if it carries one,
/// and a bound for the rest of a command.
fn approx_size(entry: &openraft::Entry<TypeConfig>) -> usize {
    use coffer_raft_store::model::Command;
    const REST: usize = 1024;
    match &entry.payload {
        openraft::EntryPayload::Normal(Command::CreateSecret { value, .. } | Command::RotateSecret { value, .. }) => {
            value.0.len() + REST
        }
        _ => REST,
    }
}

/// How many of `entries` (at least one) fit in `budget` bytes.
fn within_budget(entries: &[openraft::Entry<TypeConfig>], budget: usize) -> usize {
    let mut used = 0;
    for (i, e) in entries.iter().enumerate() {
        used += approx_size(e);
        if used > budget && i > 0 {
            return i;
        }
    }
    entries.len()
}

/// Largest frame a receiver accepts (a chunk is ~1 MiB; anything far larger is garbage).
const MAX_FRAME: usize = 64 << 20;

/// Receives a streamed snapshot: returns the vote, and the snapshot sealed under this
/// manager's key, ready for `Raft::install_full_snapshot`.
///
/// # Errors
/// A message for a malformed stream or a failed write.
pub(crate) async fn receive_snapshot<S, E>(
    inbox: &SnapshotInbox,
    stream: S,
) -> Result<(Vote<NodeId>, Snapshot<TypeConfig>), String>
where
    S: futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut stream = stream;
    let mut buf: Vec<u8> = Vec::new();
    let mut header: Option<(Vote<NodeId>, SnapshotMeta)> = None;
    let mut writer = None;
    let mut ended = false;
    loop {
        // Take every complete frame out of the buffer.
        while buf.len() >= 4 {
            let n = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if n > MAX_FRAME {
                return Err(format!("snapshot frame of {n} bytes is too large"));
            }
            if buf.len() < 4 + n {
                break;
            }
            let payload: Vec<u8> = buf[4..4 + n].to_vec();
            buf.drain(..4 + n);
            match header {
                None => {
                    let (vote, meta): (Vote<NodeId>, SnapshotMeta) =
                        postcard::from_bytes(&payload).map_err(|e| format!("snapshot header: {e}"))?;
                    let inbox = inbox.clone();
                    let m = meta.clone();
                    let w = tokio::task::spawn_blocking(move || inbox.receive(m))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())?;
                    writer = Some(w);
                    header = Some((vote, meta));
                }
                Some(_) => {
                    let mut w = writer.take().ok_or("snapshot writer missing")?;
                    let payload = zeroize::Zeroizing::new(payload);
                    w = tokio::task::spawn_blocking(move || w.push_chunk(&payload).map(|()| w))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())?;
                    writer = Some(w);
                }
            }
        }
        if ended {
            break;
        }
        match stream.next().await {
            Some(Ok(data)) => buf.extend_from_slice(&data),
            Some(Err(e)) => return Err(format!("snapshot stream: {e}")),
            None => ended = true,
        }
    }
    if !buf.is_empty() {
        return Err(format!("snapshot stream ends inside a frame ({} bytes left)", buf.len()));
    }
    let (vote, meta) = header.ok_or("empty snapshot stream")?;
    let w = writer.ok_or("snapshot writer missing")?;
    let file =
        tokio::task::spawn_blocking(move || w.finish()).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    Ok((vote, Snapshot { meta, snapshot: Box::new(file) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_raft_store::model::{Command, SealedBytes};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    fn secret(index: u64, bytes: usize) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::RotateSecret {
                id: "s".into(),
                value: SealedBytes(vec![0; bytes]),
                size: 0,
                at: 0,
            }),
        }
    }

    #[test]
    fn large_batches_are_cut_to_the_byte_budget_and_never_to_nothing() {
        let small: Vec<_> = (1..=64).map(|i| secret(i, 4096)).collect();
        assert_eq!(within_budget(&small, APPEND_BYTES), 64, "64 entries of 4 KiB go at once");
        let large: Vec<_> = (1..=64).map(|i| secret(i, 500 << 10)).collect();
        assert_eq!(within_budget(&large, APPEND_BYTES), 1, "one 500 KiB entry at a time");
        let huge = vec![secret(1, 4 << 20)];
        assert_eq!(within_budget(&huge, APPEND_BYTES), 1, "an entry over the budget still goes");
        assert_eq!(within_budget(&[], APPEND_BYTES), 0);
    }
}
