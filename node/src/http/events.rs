//! `GET /v1/events?since=INDEX`: the changes this manager applies, one JSON line each
//! ([`ChangeEvent`]), after `since` or from now on. Any manager serves it from its own
//! applied state; a client that reconnects elsewhere resumes with the last index it saw.
//! An index no longer kept is answered `gone` (410) before the stream starts, or with a
//! last `gone` line once it has: the client relists, then resumes.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use coffer_api::error::{CodedError, ErrorBody, ErrorCode};
use coffer_api::events::{ChangeEvent, EventAction, EventKind};
use coffer_api::time::rfc3339;
use coffer_raft_store::events::{Change, ChangeAction, ChangeKind, Feed, Subscription};
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

pub(crate) fn wire(c: &Change) -> ChangeEvent {
    ChangeEvent {
        index: c.index,
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
        at_ms: c.at_ms,
        at: rfc3339(c.at_ms),
    }
}

fn gone_line(index: u64) -> ChangeEvent {
    let now = coffer_api::time::now_millis();
    ChangeEvent {
        index,
        kind: EventKind::Gone,
        action: EventAction::Relist,
        id: String::new(),
        name: None,
        at_ms: now,
        at: rfc3339(now),
    }
}

/// What a stream yields next: a change, or the end (after a last `gone` line if the
/// stream cannot go on without a gap).
pub(crate) enum Next {
    Change(Change),
    Gone(u64),
    End,
}

/// A watcher's changes in order: the backlog, then the live feed, never one twice.
pub(crate) struct Watch {
    backlog: std::vec::IntoIter<Change>,
    live: tokio::sync::broadcast::Receiver<Feed>,
    /// What the watcher has seen: from `since`, or from anywhere else (a manager ahead of
    /// this one), so never again.
    seen: u64,
    /// The index of the last change given.
    last: u64,
}

impl Watch {
    pub(crate) fn new(s: Subscription, since: Option<u64>) -> Self {
        let seen = since.unwrap_or(0);
        Self { backlog: s.backlog.into_iter(), live: s.live, seen, last: since.unwrap_or(s.last) }
    }

    pub(crate) async fn next(&mut self) -> Next {
        if let Some(c) = self.backlog.next() {
            self.last = c.index;
            return Next::Change(c);
        }
        loop {
            match self.live.recv().await {
                Ok(Feed::Change(c)) if c.index <= self.seen => continue,
                Ok(Feed::Change(c)) => {
                    self.last = c.index;
                    return Next::Change(c);
                }
                Ok(Feed::Gone(_)) | Err(RecvError::Lagged(_)) => return Next::Gone(self.last),
                Err(RecvError::Closed) => return Next::End,
            }
        }
    }
}

#[utoipa::path(get, operation_id = "watchEvents", path = "/v1/events", tag = "events",
    params(("since" = Option<u64>, Query, description = "resume after this index (the last one seen)")),
    responses((status = 200, description = "one ChangeEvent per line, as changes are applied", body = ChangeEvent, content_type = "application/x-ndjson"),
        (status = 410, description = "gone: changes after `since` are no longer kept here; relist", body = ErrorBody)))]
pub async fn events(
    State(m): State<Arc<Manager>>,
    _o: Operator,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(format!("query: {}", e.body_text())))?;
    let sub = m.reader.watch_changes(q.since).map_err(|g| ApiError::with_code(ErrorCode::Gone, g.to_string()))?;
    let watch = Watch::new(sub, q.since);
    let lines = futures_util::stream::unfold(Some(watch), |w| async move {
        let mut w = w?;
        let (event, more) = match w.next().await {
            Next::Change(c) => (wire(&c), true),
            Next::Gone(i) => (gone_line(i), false),
            Next::End => return None,
        };
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(line)), more.then_some(w)))
    });
    Ok(([("content-type", "application/x-ndjson"), ("cache-control", "no-cache")], Body::from_stream(lines))
        .into_response())
}
