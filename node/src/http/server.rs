//! The accept loop: TCP, then TLS, then HTTP/1.1 or HTTP/2 into an axum router, with the
//! caller's certificate identity attached to every request of the connection.
//!
//! Owns: the connection limit (a semaphore: one client cannot starve the rest of
//! connections), the TLS handshake and header deadlines (an idle connection does not hold
//! a slot forever), and backing off when accept fails. Stops accepting when `shutdown` fires and
//! drops live connections.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::http::auth::Caller;
use crate::trust::pki;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that sends no complete request headers for this long is closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The address a connection came from, attached to each of its requests.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// Serves `app` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    max_connections: usize,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut conns = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, app, shutdown) = (acceptor.clone(), app.clone(), shutdown.clone());
        conns.spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "tls handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let caller = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|der| {
                match pki::parse_peer(der) {
                    Ok(id) => Some(Arc::new(id)),
                    Err(e) => {
                        tracing::debug!(error = %e, "client certificate has no coffer identity");
                        None
                    }
                }
            });
            let svc = app.map_request(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(Caller(caller.clone()));
                req.extensions_mut().insert(PeerAddr(peer));
                req
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(HEADER_TIMEOUT))
                .keep_alive_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc));
            tokio::select! {
                r = conn => if let Err(e) = r { tracing::debug!(error = %e, "connection ended with an error") },
                _ = shutdown.cancelled() => {}
            }
        });
        while conns.try_join_next().is_some() {}
    }
    conns.shutdown().await;
}
