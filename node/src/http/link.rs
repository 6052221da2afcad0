//! The server side of a manager's link (`manager::link`): each request frame becomes a
//! `POST` of its path into the router, by the link's certificate and address, and its
//! response a reply frame. Role, removal and body checks are the router's, as over HTTP.
//!
//! Only a connection whose certificate is a current manager's gets here (the accept loop
//! closes any other that asks for the link). Requests are served concurrently, at most
//! [`IN_FLIGHT`] at once; a malformed frame, or none for [`IDLE`], closes the link.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::Router;
use hyper::http::Extensions;
use hyper::Request;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::manager::link::{parse_request, read_frame, reply_frame, MAX_FRAME};

/// A link that carries no frame for this long is closed: it holds one of the managers'
/// connection slots, and one whose peer went away (a cut network, a killed process) would
/// hold it for good. A leader's links carry heartbeats every 100 ms; an idle follower's
/// link is dialled again when next needed.
const IDLE: Duration = Duration::from_secs(30);

/// Requests one link may have in flight (a leader's AppendEntries and votes, a follower's
/// forwarded writes and read indexes).
const IN_FLIGHT: usize = 256;

/// Serves the link on `io` until the peer closes it or sends a malformed frame. Each
/// request carries `extensions` (the caller's identity and address), as the connection's
/// HTTP requests do.
pub(crate) async fn serve<IO>(io: IO, app: Router, extensions: Extensions)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    let mut rd = BufReader::with_capacity(64 << 10, rd);
    let wr = Arc::new(tokio::sync::Mutex::new(wr));
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut tasks = JoinSet::new();
    loop {
        // Waiting for a frame to begin is cancel-safe (nothing is consumed); a frame, once
        // begun, must arrive whole within `IDLE`.
        match tokio::time::timeout(IDLE, rd.fill_buf()).await {
            Ok(Ok([])) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "link closed");
                break;
            }
            // Idle, unless it waits for an answer of ours.
            Err(_) if slots.available_permits() == IN_FLIGHT => {
                tracing::debug!("link idle; closing it");
                break;
            }
            Err(_) => continue,
        }
        let frame = match tokio::time::timeout(IDLE, read_frame(&mut rd)).await {
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) | Err(_) => break,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "link closed");
                break;
            }
        };
        let Some((id, path, body)) = parse_request(frame) else {
            tracing::warn!("malformed frame on a link; closing it");
            break;
        };
        let Ok(permit) = slots.clone().acquire_owned().await else { break };
        let (app, wr, extensions) = (app.clone(), wr.clone(), extensions.clone());
        tasks.spawn(async move {
            let (status, body) = dispatch(app, &path, body, extensions).await;
            let reply = reply_frame(id, status, &body);
            let mut w = wr.lock().await;
            // A failed write shows on the reading side too, which ends the link.
            if w.write_all(&reply).await.is_ok() {
                let _ = w.flush().await;
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    // Dropping `tasks` abandons what is in flight: its caller sees the link close.
}

/// One request through the router: its status and body.
async fn dispatch(app: Router, path: &str, body: Bytes, extensions: Extensions) -> (u16, Bytes) {
    let mut req = match Request::post(path).header("content-type", "application/octet-stream").body(Body::from(body)) {
        Ok(r) => r,
        Err(e) => return (400, format!("bad path on a link: {e}").into()),
    };
    *req.extensions_mut() = extensions;
    let resp = match app.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = resp.status().as_u16();
    match axum::body::to_bytes(resp.into_body(), MAX_FRAME).await {
        Ok(b) => (status, b),
        Err(e) => (500, format!("reading the reply: {e}").into()),
    }
}
