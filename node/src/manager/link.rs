//! The link: one long-lived mutual-TLS connection from this manager to each other manager,
//! carrying the postcard RPCs that `raft_net::post_postcard` sends (AppendEntries, Vote,
//! forwarded writes, read indexes, ...) as frames, many in flight at once.
//!
//! Why not HTTP/2: an AppendEntries of one small entry spent 0.39 ms in transit on the
//! loopback (`replicate` minus the follower's `follower_append` in
//! `coffer_write_stage_seconds`), in series with two fsyncs on every write: reqwest's
//! request building, h2 framing, and a hop through a connection task at each end and a
//! spawned task per stream. A frame here is written by the caller itself and read by one
//! task per link.
//!
//! The server side (`http::link`) hands each frame to the same router, as a `POST` of the
//! frame's path by the link's certificate: every role and removal check is the HTTP one.
//! The link is negotiated by ALPN ([`tls::LINK_ALPN`]) on the API port; a peer that does
//! not offer it (an older release) refuses the handshake, and calls to it go over HTTP.
//!
//! Frames: `u32` length (big-endian) of what follows, then a request `u64` id, `u16` path
//! length, path, body; a reply `u64` id, `u16` HTTP status, body.
//!
//! Invariant: a link is used only once the peer's certificate names the manager meant
//! (like `raft_net::check_peer`). A call that times out on a link that has heard nothing
//! for [`DEAD_AFTER`] closes it: a cut link is found at a timeout, not by TCP.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use coffer_raft_store::NodeId;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use crate::manager::metrics::PeerCalls;
use crate::trust::pki::{self, Role};
use crate::trust::tls::LINK_ALPN;

/// The largest frame either side takes: the 64 MiB `/raft/append` takes over HTTP, and
/// room for the frame's own fields.
pub(crate) const MAX_FRAME: usize = (64 << 20) + (1 << 16);
/// The longest a new link's TCP connect and handshake may take.
const DIAL_WITHIN: Duration = Duration::from_secs(3);
/// A link unused for this long is closed and dialled again rather than used: well before
/// the server's own idle limit (30 s, `http::link`), so that a call never races the server
/// closing it.
const REUSE_WITHIN: Duration = Duration::from_secs(15);
/// A call that times out on a link that has heard nothing for this long closes it: a
/// peer's answers are late, not lost, when its disk is slow for a moment; a cut link is
/// dialled again instead of waiting for TCP to retransmit after the network heals.
const DEAD_AFTER: Duration = Duration::from_secs(1);
/// After a peer refused the link (an older release), how long its calls go over HTTP
/// before the link is tried again.
const UNSUPPORTED_FOR: Duration = Duration::from_secs(60);

/// Why a call did not go over the link.
#[derive(Debug)]
pub(crate) enum LinkError {
    /// The peer does not speak the link: send the call over HTTP.
    Unsupported,
    /// The peer could not be reached (a TCP connect failed).
    Unreachable(String),
    /// The call failed on the way (a timeout, a closed link, a wrong peer).
    Network(String),
}

type Tls = TlsStream<TcpStream>;
type Reply = (u16, Bytes);

/// This manager's links, one per peer, dialled on first use and again after one closes.
pub(crate) struct Links {
    connector: TlsConnector,
    slots: Mutex<HashMap<NodeId, Arc<Slot>>>,
    pub(crate) calls: PeerCalls,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Slot {
    conn: Mutex<Option<Arc<Conn>>>,
    unsupported_until: Mutex<Option<Instant>>,
    /// One dial at a time per peer.
    dialing: tokio::sync::Mutex<()>,
}

struct Conn {
    addr: String,
    writer: tokio::sync::Mutex<WriteHalf<Tls>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    next_id: AtomicU64,
    /// When a frame last came in, in ms since `born`.
    heard_at: AtomicU64,
    /// When a frame last went either way, in ms since `born`.
    active: AtomicU64,
    born: Instant,
    closed: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Conn {
    fn now(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.active.store(self.now(), Ordering::Relaxed);
    }

    /// Nothing has come in for [`DEAD_AFTER`].
    fn silent(&self) -> bool {
        self.now().saturating_sub(self.heard_at.load(Ordering::Relaxed)) >= DEAD_AFTER.as_millis() as u64
    }

    /// Recently active, or waiting for an answer (the server keeps such a link open).
    fn reusable(&self) -> bool {
        let idle = self.born.elapsed().saturating_sub(Duration::from_millis(self.active.load(Ordering::Relaxed)));
        idle < REUSE_WITHIN || !lock(&self.pending).is_empty()
    }

    /// Fails every call in flight and ends the reader; the socket closes with the last handle.
    fn close(&self) {
        self.closed.cancel();
        lock(&self.pending).clear();
    }
}

impl Slot {
    fn current(&self, addr: &str) -> Option<Arc<Conn>> {
        let mut conn = lock(&self.conn);
        match conn.as_ref() {
            Some(c) if !c.closed.is_cancelled() && c.addr == addr && c.reusable() => Some(c.clone()),
            Some(c) => {
                c.close();
                *conn = None;
                None
            }
            None => None,
        }
    }
}

impl Links {
    /// `config` must present this manager's certificate and accept only a manager's (as
    /// `tls::link_client_config` does).
    pub(crate) fn new(config: rustls::ClientConfig, calls: PeerCalls) -> Self {
        Self { connector: TlsConnector::from(Arc::new(config)), slots: Mutex::default(), calls }
    }

    /// Closes every link: the next calls dial again (and present the current certificate).
    pub(crate) fn reset(&self) {
        for slot in lock(&self.slots).values() {
            if let Some(c) = lock(&slot.conn).take() {
                c.close();
            }
        }
    }

    /// POSTs `body` to `path` on manager `target` at `addr`; its HTTP status and body.
    pub(crate) async fn call(
        &self,
        target: NodeId,
        addr: &str,
        path: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Reply, LinkError> {
        let deadline = Instant::now() + timeout;
        let conn = self.conn(target, addr, deadline).await?;
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = request_frame(id, path, body).map_err(LinkError::Network)?;
        let (tx, rx) = oneshot::channel();
        lock(&conn.pending).insert(id, tx);
        let _forget = Forget { conn: &conn, id };
        let network = |m: &str| LinkError::Network(format!("link to manager {target}: {m}"));
        match timeout_at(deadline, write_frame(&conn, &frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(network(&e.to_string())),
            Err(_) => {
                conn.close();
                return Err(network("timed out sending"));
            }
        }
        match timeout_at(deadline, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(network("closed")),
            Err(_) => {
                // A link that has heard nothing for a while is cut, not just slow.
                if conn.silent() {
                    conn.close();
                }
                Err(network("timed out"))
            }
        }
    }

    async fn conn(&self, target: NodeId, addr: &str, deadline: Instant) -> Result<Arc<Conn>, LinkError> {
        let slot = lock(&self.slots).entry(target).or_default().clone();
        if let Some(c) = slot.current(addr) {
            return Ok(c);
        }
        if lock(&slot.unsupported_until).is_some_and(|until| Instant::now() < until) {
            return Err(LinkError::Unsupported);
        }
        let timed_out = || LinkError::Network(format!("link to manager {target}: timed out dialling"));
        let _dialing = timeout_at(deadline, slot.dialing.lock()).await.map_err(|_| timed_out())?;
        if let Some(c) = slot.current(addr) {
            return Ok(c);
        }
        let dialled = timeout_at(deadline.min(Instant::now() + DIAL_WITHIN), self.dial(target, addr))
            .await
            .map_err(|_| timed_out())?;
        match dialled {
            Ok(conn) => {
                *lock(&slot.conn) = Some(conn.clone());
                Ok(conn)
            }
            Err(LinkError::Unsupported) => {
                tracing::info!(target, "manager does not take the link; calls to it go over HTTP");
                *lock(&slot.unsupported_until) = Some(Instant::now() + UNSUPPORTED_FOR);
                Err(LinkError::Unsupported)
            }
            Err(e) => Err(e),
        }
    }

    async fn dial(&self, target: NodeId, addr: &str) -> Result<Arc<Conn>, LinkError> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| LinkError::Unreachable(format!("{addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| LinkError::Network(format!("manager address {addr}: {e}")))?;
        let tls = match self.connector.connect(name, tcp).await {
            Ok(t) => t,
            Err(e) if refused_protocol(&e) => return Err(LinkError::Unsupported),
            Err(e) => return Err(LinkError::Network(format!("link handshake with {addr}: {e}"))),
        };
        let session = tls.get_ref().1;
        if session.alpn_protocol() != Some(LINK_ALPN) {
            return Err(LinkError::Unsupported);
        }
        let der = session
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| LinkError::Network("no peer certificate".into()))?;
        let id = pki::parse_peer(der).map_err(|e| LinkError::Network(format!("peer certificate: {e}")))?;
        if id.role != Role::Manager || id.node_id != Some(target) {
            return Err(LinkError::Network(format!("expected manager {target}, reached {} {:?}", id.name, id.role)));
        }
        let (rd, wr) = tokio::io::split(tls);
        let conn = Arc::new(Conn {
            addr: addr.to_string(),
            writer: tokio::sync::Mutex::new(wr),
            pending: Mutex::default(),
            next_id: AtomicU64::new(1),
            heard_at: AtomicU64::new(0),
            active: AtomicU64::new(0),
            born: Instant::now(),
            closed: CancellationToken::new(),
        });
        tokio::spawn(read_replies(conn.clone(), BufReader::with_capacity(64 << 10, rd)));
        tracing::debug!(target, addr, "link up");
        Ok(conn)
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        self.reset();
    }
}

/// Whether the handshake failed because the peer does not know the link's protocol.
fn refused_protocol(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)))
}

/// Takes a call's slot back when it ends, answered or not (a caller may be dropped).
struct Forget<'a> {
    conn: &'a Conn,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(&self.conn.pending).remove(&self.id);
    }
}

/// Writes a whole frame. A write cut short (its caller dropped, an error) leaves half a
/// frame on the link, which then closes.
async fn write_frame(conn: &Conn, frame: &[u8]) -> std::io::Result<()> {
    struct CloseUnlessDone<'a>(&'a Conn, bool);
    impl Drop for CloseUnlessDone<'_> {
        fn drop(&mut self) {
            if !self.1 {
                self.0.close();
            }
        }
    }
    if conn.closed.is_cancelled() {
        return Err(std::io::Error::other("closed"));
    }
    let mut w = conn.writer.lock().await;
    let mut guard = CloseUnlessDone(conn, false);
    w.write_all(frame).await?;
    w.flush().await?;
    guard.1 = true;
    conn.touch();
    Ok(())
}

async fn read_replies(conn: Arc<Conn>, mut rd: BufReader<ReadHalf<Tls>>) {
    loop {
        let frame = tokio::select! {
            () = conn.closed.cancelled() => break,
            f = read_frame(&mut rd) => f,
        };
        let Ok(Some(frame)) = frame else { break };
        let Some((id, status, body)) = parse_reply(frame) else {
            tracing::warn!("malformed frame on a link; closing it");
            break;
        };
        conn.heard_at.store(conn.now(), Ordering::Relaxed);
        conn.touch();
        if let Some(tx) = lock(&conn.pending).remove(&id) {
            let _ = tx.send((status, body));
        }
    }
    conn.close();
}

/// The next frame's contents; `None` at a clean end between frames.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(rd: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match rd.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("a frame of {len} bytes")));
    }
    let mut buf = vec![0u8; len];
    rd.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

/// A request frame (length, id, path, body).
///
/// # Errors
/// A path or body too long for a frame.
pub(crate) fn request_frame(id: u64, path: &str, body: &[u8]) -> Result<Vec<u8>, String> {
    let path_len = u16::try_from(path.len()).map_err(|_| "path too long".to_string())?;
    let len = 8 + 2 + path.len() + body.len();
    if len > MAX_FRAME {
        return Err(format!("a request of {} bytes is more than a link carries", body.len()));
    }
    let mut f = Vec::with_capacity(4 + len);
    f.extend_from_slice(&(len as u32).to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&path_len.to_be_bytes());
    f.extend_from_slice(path.as_bytes());
    f.extend_from_slice(body);
    Ok(f)
}

/// A request frame's id, path and body (the frame's own bytes, not a copy); `None` when
/// malformed.
pub(crate) fn parse_request(frame: Vec<u8>) -> Option<(u64, String, Bytes)> {
    let id = u64::from_be_bytes(frame.get(..8)?.try_into().ok()?);
    let path_len = u16::from_be_bytes(frame.get(8..10)?.try_into().ok()?) as usize;
    let path = std::str::from_utf8(frame.get(10..10 + path_len)?).ok()?.to_string();
    Some((id, path, Bytes::from(frame).slice(10 + path_len..)))
}

/// A reply frame (length, id, status, body). A body too large for a frame becomes a 500.
pub(crate) fn reply_frame(id: u64, status: u16, body: &[u8]) -> Vec<u8> {
    if 8 + 2 + body.len() > MAX_FRAME {
        return reply_frame(id, 500, b"the reply is larger than a link carries");
    }
    let len = 8 + 2 + body.len();
    let mut f = Vec::with_capacity(4 + len);
    f.extend_from_slice(&(len as u32).to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&status.to_be_bytes());
    f.extend_from_slice(body);
    f
}

pub(crate) fn parse_reply(frame: Vec<u8>) -> Option<(u64, u16, Bytes)> {
    let id = u64::from_be_bytes(frame.get(..8)?.try_into().ok()?);
    let status = u16::from_be_bytes(frame.get(8..10)?.try_into().ok()?);
    Some((id, status, Bytes::from(frame).slice(10..)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::pki::{ClusterCa, NodeKey};
    use crate::trust::tls::{self, NodeCert};

    /// Manager `id`'s certificate of `ca`, for 127.0.0.1.
    fn manager_cert(ca: &ClusterCa, id: u64) -> Arc<NodeCert> {
        let key = NodeKey::generate().expect("test setup");
        let sans = ["127.0.0.1".to_string()];
        let issued = ca
            .sign_csr(&key.csr_pem(&sans).expect("test setup"), id, Role::Manager, "c", &sans, Duration::from_secs(600))
            .expect("test setup");
        NodeCert::new(tls::certified_key(&issued.cert_pem, key.key_pem().expose()).expect("test setup"))
    }

    /// A listener that completes (or fails) TLS handshakes with `config` and then holds
    /// each connection open without a word.
    async fn listener(config: Arc<rustls::ServerConfig>) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("test setup");
        let addr = l.local_addr().expect("test setup").to_string();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        std::future::pending::<()>().await;
                        drop(tls);
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_peer_without_the_link_is_called_over_http_and_an_impostor_is_refused() {
        let ca = ClusterCa::generate("c").expect("test setup");
        let links = Links::new(
            tls::link_client_config(ca.cert_pem(), manager_cert(&ca, 1)).expect("test setup"),
            PeerCalls::default(),
        );
        let within = Duration::from_secs(30);

        // Manager 2 of an older release: HTTP only.
        let mut old =
            Arc::unwrap_or_clone(tls::server_config(ca.cert_pem(), manager_cert(&ca, 2)).expect("test setup"));
        old.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let old_addr = listener(Arc::new(old)).await;
        assert!(matches!(links.call(2, &old_addr, "/raft/vote", b"", within).await, Err(LinkError::Unsupported)));
        // Not dialled again for a while: the next call goes to HTTP at once.
        let began = std::time::Instant::now();
        assert!(matches!(links.call(2, &old_addr, "/raft/vote", b"", within).await, Err(LinkError::Unsupported)));
        assert!(began.elapsed() < Duration::from_secs(1));

        // Manager 3's certificate at the address of manager 4: nothing is sent to it.
        let other = listener(tls::server_config(ca.cert_pem(), manager_cert(&ca, 3)).expect("test setup")).await;
        match links.call(4, &other, "/raft/vote", b"", within).await {
            Err(LinkError::Network(m)) => assert!(m.contains("expected manager 4"), "{m}"),
            other => panic!("an impostor was taken for manager 4: {other:?}"),
        }

        // A link up whose peer never answers: the call times out, and the silent link is
        // closed for the next call to dial again.
        let began = std::time::Instant::now();
        let r = links.call(3, &other, "/raft/vote", b"", Duration::from_millis(1500)).await;
        assert!(matches!(r, Err(LinkError::Network(ref m)) if m.contains("timed out")), "{r:?}");
        assert!(began.elapsed() < Duration::from_secs(20));
        let slot = lock(&links.slots).get(&3).cloned().expect("a slot for manager 3 after a call to it");
        assert!(slot.current(&other).is_none(), "a link silent for over a second stays in use");
    }

    #[tokio::test]
    async fn frames_read_back_as_written_and_bad_ones_are_refused() {
        let req = request_frame(7, "/raft/append", b"body").expect("a small frame");
        let reply = reply_frame(9, 503, b"not the leader");
        let mut wire = req.clone();
        wire.extend_from_slice(&reply);
        let mut rd = wire.as_slice();
        let got = read_frame(&mut rd).await.expect("read").expect("the request frame");
        assert_eq!(parse_request(got), Some((7, "/raft/append".to_string(), Bytes::from_static(b"body"))));
        let got = read_frame(&mut rd).await.expect("read").expect("the reply frame");
        assert_eq!(parse_reply(got), Some((9, 503, Bytes::from_static(b"not the leader"))));
        assert!(read_frame(&mut rd).await.expect("read").is_none(), "a clean end between frames");

        // A length beyond what a link carries is refused before anything is allocated.
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(read_frame(&mut huge.as_slice()).await.is_err());
        // Cut inside a frame: an error, not a clean end.
        assert!(read_frame(&mut &req[..req.len() - 1]).await.is_err());
        // A path length past the frame's end, and a frame too short for its fields.
        let mut bad = request_frame(1, "/x", b"").expect("a small frame").split_off(4);
        bad[8..10].copy_from_slice(&500u16.to_be_bytes());
        assert_eq!(parse_request(bad), None);
        assert_eq!(parse_request(vec![0; 5]), None);
        assert_eq!(parse_reply(vec![0; 9]), None);
    }
}
