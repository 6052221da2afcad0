//! The leader's group commit: client writes that arrive while earlier ones are being
//! committed are proposed together, as one [`Command::Batch`] entry (one append, one fsync,
//! one replication round), and each caller gets its own command's outcome.
//!
//! Measured before: under 64 concurrent clients the leader called fdatasync about once
//! per two writes (strace: 10 625 in 10 s), while followers, which receive entries in
//! batches, called it 329 times. openraft 0.9 appends each `client_write` on its own.
//!
//! At most [`IN_FLIGHT`] batches are in flight; while they are, new writes queue, and the
//! next caller to get a slot takes the whole queue (bounded in count and bytes). A lone
//! write goes at once, as itself, on its caller's task: no added latency. A write that
//! queues runs on a task of its own ([`GroupCommit::commit`]), which commits the batch it
//! takes: a caller that goes away cancels nobody else's write, and leaves none of its own
//! queued for later.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use coffer_raft_store::model::{Applied, ApplyError, Command, ObservedState};
use coffer_raft_store::{ManagerNode, NodeId, TypeConfig};
use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
use tokio::sync::{oneshot, Semaphore};

/// Batches committing at once.
const IN_FLIGHT: usize = 2;
/// Commands per batch.
const MAX_COMMANDS: usize = 256;
/// Bytes per batch (values dominate): an AppendEntries of `raft.max_payload_entries` (64)
/// such entries stays under the 64 MiB `/raft/append` takes. A single command may be
/// larger (a 500 KiB value); it then goes alone.
const MAX_BYTES: usize = 768 << 10;

/// How one write ended.
#[derive(Debug, Clone)]
pub(crate) enum Committed {
    Applied(Result<Applied, ApplyError>),
    /// This manager does not lead (any more).
    NotLeader(ForwardToLeader<NodeId, ManagerNode>),
    Failed(String),
}

type Waiting = (Command, oneshot::Sender<Committed>);

#[derive(Debug)]
pub(crate) struct GroupCommit {
    queue: Mutex<VecDeque<Waiting>>,
    slots: Arc<Semaphore>,
}

impl Default for GroupCommit {
    fn default() -> Self {
        Self { queue: Mutex::new(VecDeque::new()), slots: Arc::new(Semaphore::new(IN_FLIGHT)) }
    }
}

fn approx_bytes(cmd: &Command) -> usize {
    match cmd {
        Command::CreateSecret { value, .. } | Command::RotateSecret { value, .. } => value.0.len() + 256,
        // Up to 1 024 task ids, each with a state whose message may be 512 characters.
        Command::ReportTaskStatus { reports, .. } => {
            256 + reports
                .iter()
                .map(|(id, s)| id.len() + 16 + if let ObservedState::Failed(m) = s { m.len() } else { 0 })
                .sum::<usize>()
        }
        _ => 256,
    }
}

/// The oldest queued commands, at least one (if any), at most `max_commands` and, unless
/// the first alone is larger, `max_bytes`. Shared with the follower's forwarding.
pub(crate) fn take_within<T>(
    queue: &Mutex<VecDeque<(Command, T)>>,
    max_commands: usize,
    max_bytes: usize,
) -> Vec<(Command, T)> {
    let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = Vec::new();
    let mut bytes = 0;
    while let Some(next) = q.front() {
        let size = approx_bytes(&next.0);
        if !out.is_empty() && (out.len() == max_commands || bytes + size > max_bytes) {
            break;
        }
        bytes += size;
        out.extend(q.pop_front());
    }
    out
}

impl GroupCommit {
    /// The oldest queued writes, at least one (if any), within the bounds.
    fn take(&self) -> Vec<Waiting> {
        take_within(&self.queue, MAX_COMMANDS, MAX_BYTES)
    }

    /// Commits `cmd` on this manager's Raft (which must lead): alone on the caller's task
    /// when nothing is queued and a slot is free; otherwise with whatever else is queued,
    /// on a task of its own, so that a queued write is never left behind by a caller that
    /// went away, to be applied much later.
    pub(crate) async fn commit(self: &Arc<Self>, raft: &openraft::Raft<TypeConfig>, cmd: Command) -> Committed {
        // A lone write (nothing queued, a slot free) is committed by its caller: it carries
        // no one else's write, so a caller that goes away abandons only its own. This
        // spares a write at one client a task and two hand-offs between threads.
        if let Ok(permit) = self.slots.try_acquire() {
            if self.queue.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
                let out = commit_all(raft, vec![cmd]).await.pop();
                drop(permit);
                return out.unwrap_or_else(|| Committed::Failed("the write had no outcome".into()));
            }
            drop(permit);
        }
        let (me, raft) = (self.clone(), raft.clone());
        tokio::spawn(async move { me.write(&raft, cmd).await })
            .await
            .unwrap_or_else(|e| Committed::Failed(format!("the write's task failed: {e}")))
    }

    async fn write(&self, raft: &openraft::Raft<TypeConfig>, cmd: Command) -> Committed {
        let (tx, mut rx) = oneshot::channel();
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).push_back((cmd, tx));
        loop {
            tokio::select! {
                biased;
                r = &mut rx => return r.unwrap_or_else(|_| Committed::Failed("the write's batch was dropped".into())),
                permit = self.slots.clone().acquire_owned() => {
                    let Ok(permit) = permit else { continue };
                    let batch = self.take();
                    if batch.is_empty() {
                        // Someone else took ours: its outcome comes through `rx`.
                        drop(permit);
                        return rx.await.unwrap_or_else(|_| Committed::Failed("the write's batch was dropped".into()));
                    }
                    // This task is already the write's own ([`GroupCommit::commit`]): it
                    // commits the batch itself; other callers take the other slot.
                    commit(raft, batch).await;
                    drop(permit);
                }
            }
        }
    }
}

fn failed(e: RaftError<NodeId, ClientWriteError<NodeId, ManagerNode>>) -> Committed {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Committed::NotLeader(f),
        e => Committed::Failed(format!("write not committed: {e}")),
    }
}

async fn commit(raft: &openraft::Raft<TypeConfig>, batch: Vec<Waiting>) {
    let (cmds, txs): (Vec<Command>, Vec<oneshot::Sender<Committed>>) = batch.into_iter().unzip();
    for (tx, out) in txs.into_iter().zip(commit_all(raft, cmds).await) {
        let _ = tx.send(out);
    }
}

/// Commits `cmds` in order as one log entry (a lone command as itself, a [`Command::Batch`]
/// otherwise) on this manager's Raft, which must lead: one outcome per command. Also the
/// scheduler's way to commit a pass's decisions.
pub(crate) async fn commit_all(raft: &openraft::Raft<TypeConfig>, mut cmds: Vec<Command>) -> Vec<Committed> {
    let n = cmds.len();
    if n <= 1 {
        let Some(cmd) = cmds.pop() else { return Vec::new() };
        return vec![match raft.client_write(cmd).await {
            Ok(r) => Committed::Applied(r.data.0),
            Err(e) => failed(e),
        }];
    }
    match raft.client_write(Command::Batch(cmds)).await {
        Ok(r) => match r.data.0 {
            Ok(Applied::Batch(results)) if results.len() == n => results.into_iter().map(Committed::Applied).collect(),
            other => vec![Committed::Failed(format!("a batch of {n} was answered {other:?}")); n],
        },
        Err(e) => vec![failed(e); n],
    }
}
