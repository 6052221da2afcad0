//! The accept loop: TCP, then TLS, then HTTP/1.1 or HTTP/2 into an axum router, with the
//! caller's certificate identity and address attached to every request of the connection;
//! or, for a manager that asked for it by ALPN, a link (`http::link`) into the same router.
//!
//! Owns: the connection budgets ([`Budgets`]: anonymous connections can never take the
//! slots of managers, workers and admins, and a full anonymous budget closes its oldest
//! connection rather than refusing the newest), the TLS handshake and header deadlines, and
//! backing off when accept fails. Body deadlines are the router's (`router::guard_body`).
//! Stops accepting when `shutdown` fires and drops live connections.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::http::auth::Caller;
use crate::http::budget::Budgets;
use crate::local::config::ConnectionLimits;
use crate::trust::pki::{self, PeerIdentity, Role};
use crate::trust::tls::LINK_ALPN;

const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Streams one HTTP/2 connection may carry at once.
const MAX_STREAMS: u32 = 128;
/// Streams an anonymous HTTP/2 connection may carry at once.
const ANONYMOUS_STREAMS: u32 = 4;
/// Streams reset before they were served that a manager's connection may have waiting
/// (h2's default, kept for every other caller, is 20).
const MANAGER_RESET_STREAMS: usize = 4096;

/// The address a connection came from, attached to each of its requests.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// How long a connection accepted while locked may take to finish what it has in flight
/// once the manager is unlocked.
const UNLOCKED_CLOSE_WITHIN: Duration = Duration::from_secs(10);

/// Whether a certificate's identity is still one of the cluster's (not a removed node, not
/// a revoked or replaced credential). Chains are checked by rustls; this is the rest.
pub type StillValid = Arc<dyn Fn(&PeerIdentity) -> bool + Send + Sync>;

/// Serves `app` on `listener` until `shutdown` is cancelled, within `limits`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    serve_checked(listener, tls, app, limits, Arc::new(|_: &PeerIdentity| true), None, shutdown).await
}

/// [`serve`], with certificates that are no longer valid given no connection slot.
///
/// `locked`: while a manager is locked (autolock), it serves with its locked certificate.
/// Connections accepted before `locked` is cancelled (when the manager is unlocked) are then
/// closed gracefully, so that clients, which pool connections, reconnect and see the
/// manager's own certificate.
pub async fn serve_checked(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: ConnectionLimits,
    still_valid: StillValid,
    locked: Option<CancellationToken>,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    let budgets = Arc::new(Budgets::new(&limits));
    let limits = Arc::new(limits);
    let mut conns = JoinSet::new();
    loop {
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
        let conn = Connection {
            acceptor: acceptor.clone(),
            app: app.clone(),
            budgets: budgets.clone(),
            limits: limits.clone(),
            still_valid: still_valid.clone(),
            locked: locked.clone().filter(|t| !t.is_cancelled()),
            shutdown: shutdown.clone(),
        };
        conns.spawn(conn.serve(tcp, peer));
        while conns.try_join_next().is_some() {}
    }
    conns.shutdown().await;
}

/// What one connection's task needs.
struct Connection {
    acceptor: TlsAcceptor,
    app: Router,
    budgets: Arc<Budgets>,
    limits: Arc<ConnectionLimits>,
    still_valid: StillValid,
    /// Set on a connection accepted while the manager was locked.
    locked: Option<CancellationToken>,
    shutdown: CancellationToken,
}

impl Connection {
    async fn serve(self, tcp: TcpStream, peer: std::net::SocketAddr) {
        // Anonymous until it shows a certificate of this cluster.
        let anonymous = self.budgets.admit(peer.ip());
        let evicted = anonymous.evicted.clone();
        let handshake =
            tokio::time::timeout(Duration::from_millis(self.limits.handshake_timeout_ms), self.acceptor.accept(tcp));
        let tls = tokio::select! {
            _ = evicted.cancelled() => return,
            r = handshake => match r {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "tls handshake failed");
                    return;
                }
                Err(_) => return,
            },
        };
        let caller =
            tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|der| match pki::parse_peer(der) {
                Ok(id) => Some(Arc::new(id)),
                Err(e) => {
                    tracing::debug!(error = %e, "client certificate has no coffer identity");
                    None
                }
            });
        // A certificate moves the connection to its own budget, out of the anonymous one:
        // from here on, anonymous churn can never close it.
        // A certificate that is no longer valid (a removed node, a revoked credential) stays
        // anonymous: its requests are answered with the reason, and it takes no slot of the
        // cluster's own.
        let valid = caller.as_ref().filter(|id| (self.still_valid)(id));
        let (_slots, anonymous) = match valid {
            Some(id) => {
                drop(anonymous);
                let slot = if id.role == Role::Manager { self.budgets.manager() } else { self.budgets.node() };
                match (slot, self.budgets.certificate(&id.serial_hex)) {
                    (Some(p), Some(c)) => (Some((p, c)), None),
                    _ => {
                        tracing::warn!(role = id.role.word(), "connection budget full; closing a new connection");
                        return;
                    }
                }
            }
            None => (None, Some(anonymous)),
        };
        let from_manager = valid.is_some_and(|id| id.role == Role::Manager);
        let unlocked = async {
            match &self.locked {
                Some(t) => t.cancelled().await,
                None => std::future::pending().await,
            }
        };
        if tls.get_ref().1.alpn_protocol() == Some(LINK_ALPN) {
            // A link is for current managers only; anybody else asking for one is closed.
            if from_manager {
                let mut extensions = hyper::http::Extensions::new();
                extensions.insert(Caller(caller));
                extensions.insert(PeerAddr(peer));
                let link = crate::http::link::serve(tls, self.app.clone(), extensions);
                tokio::select! {
                    () = link => {}
                    () = self.shutdown.cancelled() => {}
                    () = unlocked => {}
                }
            }
            return;
        }
        let evicted = anonymous.as_ref().map(|a| a.evicted.clone());
        // An anonymous connection gets few HTTP/2 streams: each may carry a body.
        let streams = if anonymous.is_some() { ANONYMOUS_STREAMS } else { MAX_STREAMS };
        let svc = self.app.map_request(move |req: Request<Incoming>| {
            // Docker clients put the API version in front of every path.
            let mut req = crate::http::docker::unversion(req);
            req.extensions_mut().insert(Caller(caller.clone()));
            req.extensions_mut().insert(PeerAddr(peer));
            req
        });
        let idle = Duration::from_millis(self.limits.header_timeout_ms);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).header_read_timeout(idle);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(streams)
            .keep_alive_interval(Some(idle))
            .keep_alive_timeout(idle);
        if from_manager {
            // openraft gives each AppendEntries one heartbeat interval and then drops it,
            // which resets its stream: a busy follower saw more than h2's 20 resets waiting
            // and closed the whole connection, with every forwarded write and read index
            // on it. A manager is trusted not to flood resets (others keep the limit).
            builder.http2().max_pending_accept_reset_streams(Some(MANAGER_RESET_STREAMS));
        }
        let conn = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc));
        tokio::pin!(conn);
        let evicted = async {
            match evicted {
                Some(t) => t.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = evicted => return,
            _ = self.shutdown.cancelled() => return,
            _ = unlocked => {}
        }
        // Unlocked: finish what is in flight (the unlock request's answer among it), then close.
        conn.as_mut().graceful_shutdown();
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = tokio::time::sleep(UNLOCKED_CLOSE_WITHIN) => {}
            _ = self.shutdown.cancelled() => {}
        }
    }
}
