//! Health and metrics: `/healthz` (the process answers), `/readyz` (a leader is known and
//! committed entries are applied), `/metrics` (Prometheus text, for operators).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use coffer_api::error::CodedError;

use crate::http::auth::Operator;
use crate::http::error::ApiError;
use crate::manager::Manager;

type S = State<Arc<Manager>>;

/// Prometheus scrapes with an admin certificate or an API token (read-only will do).
pub(crate) async fn metrics(State(m): S, _o: Operator) -> Result<Response, ApiError> {
    let text = crate::manager::metrics::render(&m)?;
    Ok(([("content-type", "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}

pub(crate) async fn readyz(State(m): S) -> Result<&'static str, ApiError> {
    let s = m.status()?;
    if s.healthy {
        Ok("ready")
    } else {
        Err(ApiError::unavailable("no leader known, or committed entries not yet applied"))
    }
}
