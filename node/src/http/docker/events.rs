//! Docker's `/events`: the same changes as `/v1/events`, for secrets, services and nodes,
//! in Docker's shape (`Type`, `Action`, `Actor`, `scope: swarm`, `time`, `timeNano`).
//! `since` and `until` are Unix times, as Docker takes them: `since` replays the changes
//! this manager still keeps from then on, `until` ends the stream.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use coffer_raft_store::events::{Change, ChangeAction, ChangeKind};
use serde::Serialize;

use crate::http::auth::Operator;
use crate::http::docker::{err, query_filters, query_param};
use crate::http::error::ApiError;
use crate::http::events::{Next, Watch};
use crate::local::ids::NodeHex;
use crate::manager::Manager;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Actor {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Attributes")]
    pub attributes: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Event {
    #[serde(rename = "Type")]
    pub kind: &'static str,
    #[serde(rename = "Action")]
    pub action: &'static str,
    #[serde(rename = "Actor")]
    pub actor: Actor,
    pub scope: &'static str,
    pub time: u64,
    #[serde(rename = "timeNano")]
    pub time_nano: u64,
}

/// A Unix time as Docker sends it (`1700000000` or `1700000000.123456789`), in ms.
fn unix_ms(raw: &str, what: &str) -> Result<u64, ApiError> {
    let (secs, frac) = raw.split_once('.').unwrap_or((raw, ""));
    let secs: u64 = secs.parse().map_err(|_| err(StatusCode::BAD_REQUEST, format!("invalid {what} time {raw:?}")))?;
    let frac_ms: u64 = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().chain("000".chars()).take(3).collect();
        digits.parse().map_err(|_| err(StatusCode::BAD_REQUEST, format!("invalid {what} time {raw:?}")))?
    };
    Ok(secs.saturating_mul(1000).saturating_add(frac_ms))
}

fn docker_event(c: &Change, at_ms: u64) -> Option<Event> {
    let (kind, id) = match c.kind {
        ChangeKind::Secret => ("secret", c.id.clone()),
        ChangeKind::Service => ("service", c.id.clone()),
        ChangeKind::Node => ("node", c.id.parse::<u64>().map(|n| NodeHex(n).to_string()).unwrap_or_default()),
        // Swarm reports no task events.
        ChangeKind::Task => return None,
    };
    let action = match c.action {
        ChangeAction::Create => "create",
        ChangeAction::Update => "update",
        ChangeAction::Remove => "remove",
    };
    let attributes = c.name.iter().map(|n| ("name".to_string(), n.clone())).collect();
    Some(Event {
        kind,
        action,
        actor: Actor { id, attributes },
        scope: "swarm",
        time: at_ms / 1000,
        time_nano: at_ms.saturating_mul(1_000_000),
    })
}

#[utoipa::path(get, operation_id = "dockerEvents", path = "/events", tag = "docker",
    params(("since" = Option<String>, Query, description = "Unix time"), ("until" = Option<String>, Query, description = "Unix time"),
        ("filters" = Option<String>, Query, description = "JSON: type (secret, service, node), event (create, update, remove), scope")),
    responses((status = 200, description = "one event per line", body = Event), (status = 400, body = super::DockerErrorBody)))]
pub async fn events(State(m): State<Arc<Manager>>, o: Operator, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let f = query_filters(&q, &["type", "event", "scope"])?;
    let since = query_param(&q, "since").filter(|s| !s.is_empty()).map(|s| unix_ms(&s, "since")).transpose()?;
    let until = query_param(&q, "until").filter(|s| !s.is_empty()).map(|s| unix_ms(&s, "until")).transpose()?;
    let sub = match since {
        Some(_) => m.reader.watch_kept_changes(),
        None => m.reader.watch_changes(None).map_err(|g| err(StatusCode::INTERNAL_SERVER_ERROR, g.to_string()))?,
    };
    let sees_nodes = o.is_admin();
    let watch = Watch::new(m.clone(), o, sub, None);
    let keep = move |e: &Event| {
        (sees_nodes || e.kind != "node")
            && f.exact("type", e.kind)
            && f.exact("event", e.action)
            && f.exact("scope", e.scope)
    };
    let deadline = until.map(|u| {
        let now = coffer_api::time::now_millis();
        tokio::time::Instant::now() + std::time::Duration::from_millis(u.saturating_sub(now))
    });
    let lines = futures_util::stream::unfold(Some(watch), move |w| {
        let keep = keep.clone();
        async move {
            let mut w = w?;
            loop {
                let next = match deadline {
                    Some(d) => tokio::select! {
                        biased;
                        n = w.next() => n,
                        _ = tokio::time::sleep_until(d) => return None,
                    },
                    None => w.next().await,
                };
                let b = match next {
                    Next::Batch(b) => b,
                    Next::Gone(_) | Next::End => return None,
                };
                if since.is_some_and(|s| b.at_ms < s) {
                    continue;
                }
                if until.is_some_and(|u| b.at_ms > u) {
                    return None;
                }
                let mut out = Vec::new();
                for e in b.changes.iter().filter_map(|c| docker_event(c, b.at_ms)).filter(|e| keep(e)) {
                    out.extend(serde_json::to_vec(&e).unwrap_or_default());
                    out.push(b'\n');
                }
                if !out.is_empty() {
                    return Some((Ok::<_, std::convert::Infallible>(Bytes::from(out)), Some(w)));
                }
            }
        }
    });
    Ok(([("content-type", "application/json")], Body::from_stream(lines)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_times_parse_with_or_without_fractions() {
        assert_eq!(unix_ms("1700000000", "since").expect("secs"), 1_700_000_000_000);
        assert_eq!(unix_ms("1700000000.123456789", "since").expect("nanos"), 1_700_000_000_123);
        assert_eq!(unix_ms("1700000000.5", "since").expect("tenths"), 1_700_000_000_500);
        assert!(unix_ms("yesterday", "since").is_err());
    }
}
