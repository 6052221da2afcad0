//! `POST /v1/worker/status`: what a worker observes of its tasks (pending, starting,
//! running, ready, exited, failed), committed through Raft so that every manager shows it
//! (`service ps`, Docker's `/tasks`). Only what changed is proposed; a report about a task
//! that is not (any more) on the reporting worker is skipped when it applies.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::Json;
use coffer_api::error::{CodedError, ErrorBody, ErrorCode};
use coffer_api::time::now_millis;
use coffer_api::worker::{StatusRecorded, StatusReport, TaskRunState};
use coffer_raft_store::model::{Command, ObservedState, TaskState};
use coffer_raft_store::NodeId;

use crate::http::auth::NodeCaller;
use crate::http::error::ApiError;
use crate::http::extract::ApiJson;
use crate::manager::Manager;
use crate::trust::pki::Role;

/// Tasks one report may name (workers send at most 256 at a time).
const MAX_REPORTED: usize = 1024;
/// A failure's message is the engine's or the host's: kept to this many characters.
const MAX_MESSAGE: usize = 512;

/// The store's form of a reported state; a message is cut to [`MAX_MESSAGE`] characters
/// and loses control and bidi characters (it is printed by `service ps`).
pub(crate) fn to_observed(s: &TaskRunState) -> ObservedState {
    match s {
        TaskRunState::Pending => ObservedState::Pending,
        TaskRunState::Starting => ObservedState::Starting,
        TaskRunState::Running => ObservedState::Running,
        TaskRunState::Ready => ObservedState::Ready,
        TaskRunState::Exited { code } => ObservedState::Exited(*code),
        TaskRunState::Failed { message } => ObservedState::Failed(
            message
                .chars()
                .map(|c| if coffer_api::rules::is_unsafe_char(c) { ' ' } else { c })
                .take(MAX_MESSAGE)
                .collect(),
        ),
    }
}

pub(crate) fn to_api(s: &ObservedState) -> TaskRunState {
    match s {
        ObservedState::Pending => TaskRunState::Pending,
        ObservedState::Starting => TaskRunState::Starting,
        ObservedState::Running => TaskRunState::Running,
        ObservedState::Ready => TaskRunState::Ready,
        ObservedState::Exited(code) => TaskRunState::Exited { code: *code },
        ObservedState::Failed(message) => TaskRunState::Failed { message: message.clone() },
    }
}

/// Reports that change something, per worker and manager: each costs a log entry, so a
/// worker that flips its states (broken, or hostile) must not fill the log. A bucket of
/// [`BURST`], refilled at [`PER_SECOND`]; a refused report is sent again by the worker
/// with the states of then.
const PER_SECOND: f64 = 5.0;
const BURST: f64 = 20.0;

struct Limiter(Mutex<BTreeMap<(NodeId, NodeId), (Instant, f64)>>);

static REPORTS: Limiter = Limiter(Mutex::new(BTreeMap::new()));

impl Limiter {
    fn admit(&self, manager: NodeId, worker: NodeId) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if map.len() > 100_000 {
            map.retain(|_, (at, _)| now.duration_since(*at).as_secs() < 60);
        }
        let (at, tokens) = map.entry((manager, worker)).or_insert((now, BURST));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * PER_SECOND).min(BURST);
        *at = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }
}

/// The reported states that differ from what this manager has applied, for tasks placed on
/// `node`; and whether some were about tasks not placed on it (here).
type Changed = (Vec<(String, ObservedState)>, bool);

fn changed_reports(m: &Manager, node: NodeId, req: &StatusReport) -> Result<Changed, ApiError> {
    let mut reports = Vec::new();
    let mut strangers = false;
    for e in &req.tasks {
        let state = to_observed(&e.status);
        let placed =
            m.reader.task(&e.task_id)?.is_some_and(|t| t.node_id == Some(node) && t.desired == TaskState::Running);
        if !placed {
            strangers = true;
            continue;
        }
        let known = m.reader.task_status(&e.task_id)?;
        if known.is_some_and(|k| k.node_id == node && k.state == state) {
            continue;
        }
        reports.push((e.task_id.clone(), state));
    }
    Ok((reports, strangers))
}

#[utoipa::path(post, operation_id = "reportTaskStatus", path = "/v1/worker/status", tag = "worker", request_body = StatusReport,
    responses((status = 200, body = StatusRecorded), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 429, description = "too many changed reports from this worker", body = ErrorBody)))]
pub async fn report(
    State(m): State<Arc<Manager>>,
    caller: NodeCaller,
    ApiJson(req): ApiJson<StatusReport>,
) -> Result<Json<StatusRecorded>, ApiError> {
    if caller.role != Role::Worker {
        return Err(ApiError::forbidden("this endpoint is for workers"));
    }
    if req.tasks.len() > MAX_REPORTED {
        return Err(ApiError::invalid(format!("at most {MAX_REPORTED} tasks per report")));
    }
    // Compared with this manager's applied state: a report that changes nothing costs no
    // log entry. One that looks new here but was applied meanwhile is skipped by the
    // state machine, which compares again.
    let (mut reports, mut strangers) = changed_reports(&m, caller.node_id, &req)?;
    if strangers && m.linearizable().await.is_ok() {
        // Some are not the caller's here: this manager may lag the commit that placed them
        // on it. Ask again as of the leader's commit.
        (reports, strangers) = changed_reports(&m, caller.node_id, &req)?;
    }
    if strangers {
        tracing::debug!(node = caller.node_id, "a worker reported on tasks that are not placed on it");
    }
    let changed = reports.len();
    if changed > 0 {
        if !REPORTS.admit(m.id, caller.node_id) {
            return Err(ApiError::with_code(
                ErrorCode::TooManyRequests,
                format!("more than {PER_SECOND} changed task reports a second from this worker; slow down"),
            ));
        }
        m.propose(Command::ReportTaskStatus { node: caller.node_id, reports, at: now_millis() }).await?;
    }
    Ok(Json(StatusRecorded { changed }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_gets_a_burst_of_reports_then_its_rate() {
        let l = Limiter(Mutex::new(BTreeMap::new()));
        let admitted = (0..100).filter(|_| l.admit(1, 7)).count();
        assert!((20..=21).contains(&admitted), "{admitted}");
        assert!(l.admit(1, 8), "another worker has its own bucket");
        assert!(l.admit(2, 7), "so has the same worker at another manager");
        let bad = to_observed(&TaskRunState::Failed { message: format!("a\u{1b}[31m\u{202e}b{}", "x".repeat(600)) });
        let ObservedState::Failed(m) = bad else { panic!("not failed") };
        assert!(m.chars().count() == MAX_MESSAGE && !m.chars().any(coffer_api::rules::is_unsafe_char));
    }
}
