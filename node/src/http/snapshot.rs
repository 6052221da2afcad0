//! `GET /v1/snapshot`: the whole replicated state, streamed to `coffer snapshot save`
//! (admin certificates only, re-checked on a current view: the export holds the cluster's
//! keys). The export is recorded in the audit log before the first byte is sent.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use coffer_api::error::ErrorBody;
use coffer_api::time::now_millis;

use crate::http::auth::AdminWriter;
use crate::http::error::ApiError;
use crate::manager::backup::export_stream;
use crate::manager::error::OpError;
use crate::manager::Manager;

/// The media type of the stream (frames of `coffer_raft_store::backup::stream`).
pub const SNAPSHOT_STREAM: &str = "application/vnd.coffer.snapshot-stream";

#[utoipa::path(get, operation_id = "saveSnapshot", path = "/v1/snapshot", tag = "cluster",
    description = "A point-in-time export of the whole state after a read index, as tagged frames \
        (info, chunks of records, end; an error frame if the export fails half-way). `coffer snapshot \
        save` seals it under the operator's key. Admin certificate only.",
    responses((status = 200, description = "The export stream", content_type = "application/vnd.coffer.snapshot-stream"),
        (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn save(State(m): State<Arc<Manager>>, by: AdminWriter) -> Result<Response, ApiError> {
    let line = serde_json::json!({
        "at_ms": now_millis(), "manager": m.id, "admin": by.0, "outcome": "snapshot_export",
    });
    let mut line = serde_json::to_vec(&line).map_err(|e| OpError::internal("encoding an audit record", e))?;
    line.push(b'\n');
    m.audit.append(line).await.map_err(|e| OpError::internal("writing the audit log", e))?;
    let stream = export_stream(&m, &by.0).await?;
    Ok(([(CONTENT_TYPE, SNAPSHOT_STREAM)], Body::from_stream(stream)).into_response())
}
