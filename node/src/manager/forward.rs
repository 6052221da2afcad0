//! A follower's forwarding of writes to the leader, in batches: writes that arrive while
//! earlier ones are on their way go together, as one `/raft/propose-batch` request, where
//! the leader hands each to its group commit and answers each on its own.
//!
//! Measured before: with 64 clients spread over three managers, two thirds of the writes
//! were forwarded one request each, and the spread figure was 0.87 of the leader's.
//!
//! At most [`IN_FLIGHT`] batches are in flight; while they are, new writes queue, and the
//! next caller to get a slot takes the whole queue (bounded in count and bytes). A lone
//! write goes at once. Each write runs on a task of its own ([`Forwarder::forward`]): a
//! caller that goes away cancels nobody else's write.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coffer_api::error::CodedError;
use coffer_raft_store::model::{Applied, ApplyError, Command};
use coffer_raft_store::{NodeId, TypeConfig};
use tokio::sync::{oneshot, Semaphore};

use crate::manager::error::OpError;
use crate::manager::group_commit::take_within;
use crate::manager::metrics::WriteStages;
use crate::manager::raft_net::{post_postcard, PeerError, Peers};

/// Batches on their way at once.
const IN_FLIGHT: usize = 4;
/// Commands per batch; the leader refuses more.
pub(crate) const MAX_COMMANDS: usize = 256;
/// Bytes per batch (values dominate). A single larger command goes alone.
const MAX_BYTES: usize = 768 << 10;

/// What became of one forwarded write.
#[derive(Debug, Clone)]
pub(crate) enum Forwarded {
    /// The leader committed it (or refused it on the state).
    Answered(Result<Applied, ApplyError>),
    Failed(OpError),
    /// This manager leads now: commit it here.
    LeadHere,
}

/// The leader's answer to one command of a batch: its outcome, or why it was not committed.
pub(crate) type BatchReply = Vec<Result<Result<Applied, ApplyError>, String>>;

type Waiting = (Command, oneshot::Sender<Forwarded>);

/// How batches reach the leader: what a sending task needs, owned.
#[derive(Clone)]
pub(crate) struct Link {
    pub(crate) id: NodeId,
    pub(crate) raft: openraft::Raft<TypeConfig>,
    pub(crate) peers: Peers,
    pub(crate) stages: WriteStages,
    pub(crate) leader_wait: Duration,
    pub(crate) timeout: Duration,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("id", &self.id).finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub(crate) struct Forwarder {
    queue: Mutex<VecDeque<Waiting>>,
    slots: Arc<Semaphore>,
}

impl Default for Forwarder {
    fn default() -> Self {
        Self { queue: Mutex::new(VecDeque::new()), slots: Arc::new(Semaphore::new(IN_FLIGHT)) }
    }
}

impl Forwarder {
    fn take(&self) -> Vec<Waiting> {
        take_within(&self.queue, MAX_COMMANDS, MAX_BYTES)
    }

    /// Forwards `cmd` to the leader over `link`, with whatever else is queued.
    pub(crate) async fn forward(self: &Arc<Self>, link: &Link, cmd: Command) -> Forwarded {
        let (me, link) = (self.clone(), link.clone());
        tokio::spawn(async move { me.run(&link, cmd).await }).await.unwrap_or_else(|e| {
            Forwarded::Failed(OpError::unavailable(format!("the forwarded write's task failed: {e}")))
        })
    }

    async fn run(&self, link: &Link, cmd: Command) -> Forwarded {
        let dropped = || Forwarded::Failed(OpError::unavailable("the forwarded write's batch was dropped"));
        let (tx, mut rx) = oneshot::channel();
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).push_back((cmd, tx));
        loop {
            tokio::select! {
                biased;
                r = &mut rx => return r.unwrap_or_else(|_| dropped()),
                permit = self.slots.clone().acquire_owned() => {
                    let Ok(permit) = permit else { continue };
                    let batch = self.take();
                    if batch.is_empty() {
                        drop(permit);
                        return rx.await.unwrap_or_else(|_| dropped());
                    }
                    let (cmds, txs): (Vec<Command>, Vec<oneshot::Sender<Forwarded>>) = batch.into_iter().unzip();
                    let outcomes = link.send(cmds).await;
                    drop(permit);
                    for (tx, out) in txs.into_iter().zip(outcomes) {
                        let _ = tx.send(out);
                    }
                }
            }
        }
    }
}

impl Link {
    /// Sends `cmds` to the current leader: one outcome per command, in order.
    async fn send(&self, cmds: Vec<Command>) -> Vec<Forwarded> {
        let n = cmds.len();
        let all = |f: Forwarded| vec![f; n];
        let leader = match super::wait_for_leader_of(&self.raft, self.leader_wait).await {
            Ok(l) => l,
            Err(e) => return all(Forwarded::Failed(e)),
        };
        if leader.0 == self.id {
            return all(Forwarded::LeadHere);
        }
        let sent = self.stages.time("forward", self.post(&leader, cmds));
        // A leader that died keeps a forwarded write waiting until the connection is
        // found dead (HTTP/2 pings: up to 6 s; a connect: 3 s). Once another leader is
        // known, that one will never answer: say so, so the client can ask again now.
        tokio::select! {
            r = sent => match r {
                Ok(replies) if replies.len() == n => replies
                    .into_iter()
                    .map(|r| match r {
                        Ok(answer) => Forwarded::Answered(answer),
                        Err(why) => Forwarded::Failed(OpError::unavailable(format!("the leader did not commit it: {why}"))),
                    })
                    .collect(),
                Ok(replies) => all(Forwarded::Failed(OpError::unavailable(format!(
                    "the leader answered {} of {n} forwarded writes",
                    replies.len()
                )))),
                Err(e) => all(Forwarded::Failed(super::forward_error(e))),
            },
            () = super::deposed_from(&self.raft, leader.0) => all(Forwarded::Failed(OpError::unavailable(
                "the leader changed while this write was forwarded to it: it may or may not have been \
                 committed; read before you write again",
            ))),
        }
    }

    async fn post(&self, leader: &(NodeId, String), cmds: Vec<Command>) -> Result<BatchReply, PeerError> {
        let url = format!("https://{}/raft/propose-batch", leader.1);
        match post_postcard::<_, BatchReply>(&self.peers, &url, Some(leader.0), &cmds, self.timeout).await {
            // A leader of an older version knows only single forwarded writes.
            Err(PeerError::Status { status: 404, .. }) => {
                let url = format!("https://{}/raft/propose", leader.1);
                let one = |cmd: Command| {
                    let url = url.clone();
                    async move {
                        post_postcard::<_, coffer_raft_store::Response>(
                            &self.peers,
                            &url,
                            Some(leader.0),
                            &cmd,
                            self.timeout,
                        )
                        .await
                    }
                };
                let answers = futures_util::future::join_all(cmds.into_iter().map(one)).await;
                Ok(answers.into_iter().map(|a| a.map(|r| r.0).map_err(|e| e.to_string())).collect())
            }
            other => other,
        }
    }
}
