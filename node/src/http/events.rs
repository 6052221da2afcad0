//! `GET /v1/events?since=INDEX`: the changes this manager applies, one JSON line per log
//! entry ([`ChangeEvent`]), after `since` or from now on. Any manager serves it from its own
//! applied state; a client that reconnects elsewhere resumes with the last index it saw.
//! An index no longer kept is answered `gone` (410) before the stream starts, or with a
//! last `gone` line once it has: the client relists, then resumes. Node changes (hostnames)
//! go to admin certificates only, as in the native API; a stream ends within seconds of
//! its caller's credential being revoked.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use coffer_api::error::{CodedError, ErrorBody, ErrorCode};
use coffer_api::events::{Change as WireChange, ChangeEvent, EventAction, EventKind};
use coffer_api::time::rfc3339;
use coffer_raft_store::events::{Batch, Change, ChangeAction, ChangeKind, Feed, Subscription};
use tokio::sync::broadcast::error::RecvError;

use crate::http::auth::Operator;
use crate::http::error::ApiError;
use crate::manager::Manager;

/// `?since=`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    since: Option<u64>,
}

/// How often a stream checks that its caller's credential is still accepted.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(2);

pub(crate) fn wire_change(c: &Change) -> WireChange {
    WireChange {
        kind: match c.kind {
            ChangeKind::Secret => EventKind::Secret,
            ChangeKind::Service => EventKind::Service,
            ChangeKind::Task => EventKind::Task,
            ChangeKind::Node => EventKind::Node,
        },
        action: match c.action {
            ChangeAction::Create => EventAction::Create,
            ChangeAction::Update => EventAction::Update,
            ChangeAction::Remove => EventAction::Remove,
        },
        id: c.id.clone(),
        name: c.name.clone(),
    }
}

/// A batch as a line, without what `sees_nodes` says the caller may not see.
fn line(b: &Batch, sees_nodes: bool) -> ChangeEvent {
    ChangeEvent {
        index: b.index,
        at_ms: b.at_ms,
        at: rfc3339(b.at_ms),
        changes: b.changes.iter().filter(|c| sees_nodes || c.kind != ChangeKind::Node).map(wire_change).collect(),
        gone: false,
    }
}

fn gone_line(index: u64) -> ChangeEvent {
    let now = coffer_api::time::now_millis();
    ChangeEvent { index, at_ms: now, at: rfc3339(now), changes: Vec::new(), gone: true }
}

/// What a stream yields next: an entry's changes, or the end (after a last `gone` line if
/// the stream cannot go on without a gap, or at once if its caller's credential was
/// revoked).
pub(crate) enum Next {
    Batch(Arc<Batch>),
    Gone(u64),
    End,
}

/// A watcher's changes in order, whole entries: the backlog, then the live feed, never one
/// twice; its caller's credential checked again every few seconds.
pub(crate) struct Watch {
    m: Arc<Manager>,
    caller: Operator,
    backlog: std::vec::IntoIter<Arc<Batch>>,
    live: tokio::sync::broadcast::Receiver<Feed>,
    /// The index of the last entry given (or the watcher's `since`).
    last: u64,
    recheck: tokio::time::Interval,
}

impl Watch {
    pub(crate) fn new(m: Arc<Manager>, caller: Operator, s: Subscription, since: Option<u64>) -> Self {
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { m, caller, backlog: s.backlog.into_iter(), live: s.live, last: since.unwrap_or(s.last), recheck }
    }

    pub(crate) fn sees_nodes(&self) -> bool {
        self.caller.is_admin()
    }

    pub(crate) async fn next(&mut self) -> Next {
        if let Some(b) = self.backlog.next() {
            self.last = b.index;
            return Next::Batch(b);
        }
        loop {
            tokio::select! {
                biased;
                _ = self.recheck.tick() => {
                    if !self.caller.still_accepted(&self.m) {
                        return Next::End;
                    }
                }
                r = self.live.recv() => match r {
                    Ok(Feed::Batch(b)) if b.index <= self.last => continue,
                    Ok(Feed::Batch(b)) => {
                        self.last = b.index;
                        return Next::Batch(b);
                    }
                    Ok(Feed::Gone(_)) | Err(RecvError::Lagged(_)) => return Next::Gone(self.last),
                    Err(RecvError::Closed) => return Next::End,
                },
            }
        }
    }
}

#[utoipa::path(get, operation_id = "watchEvents", path = "/v1/events", tag = "events",
    params(("since" = Option<u64>, Query, description = "resume after this index (the last one seen)")),
    responses((status = 200, description = "one ChangeEvent per line (per log entry), as changes are applied", body = ChangeEvent, content_type = "application/x-ndjson"),
        (status = 410, description = "gone: changes after `since` are no longer kept here; relist", body = ErrorBody)))]
pub async fn events(
    State(m): State<Arc<Manager>>,
    caller: Operator,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(format!("query: {}", e.body_text())))?;
    if let Some(since) = q.since {
        // An index this cluster has not reached is another history's (a restored or
        // re-formed cluster reuses indexes): skipping up to it would hide changes.
        m.linearizable().await?;
        let applied = m.raft.metrics().borrow().last_applied.map(|l| l.index).unwrap_or(0);
        if since > applied {
            return Err(ApiError::with_code(
                ErrorCode::Gone,
                format!("index {since} is ahead of this cluster's ({applied}): it is another history's; relist"),
            ));
        }
    }
    let sub = m.reader.watch_changes(q.since).map_err(|g| ApiError::with_code(ErrorCode::Gone, g.to_string()))?;
    let watch = Watch::new(m.clone(), caller, sub, q.since);
    let lines = futures_util::stream::unfold(Some(watch), |w| async move {
        let mut w = w?;
        let (event, more) = loop {
            match w.next().await {
                Next::Batch(b) => {
                    let l = line(&b, w.sees_nodes());
                    if !l.changes.is_empty() {
                        break (l, true);
                    }
                }
                Next::Gone(i) => break (gone_line(i), false),
                Next::End => return None,
            }
        };
        let mut bytes = serde_json::to_vec(&event).unwrap_or_default();
        bytes.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(bytes)), more.then_some(w)))
    });
    Ok(([("content-type", "application/x-ndjson"), ("cache-control", "no-cache")], Body::from_stream(lines))
        .into_response())
}
