//! Refusals (DESIGN.md §5): each with a clear error, and nothing changed.

use coffer_api::client::{Client as AdminClient, ClientError};
use coffer_api::cluster::{JoinRequest, JoinResponse, NodeRole};
use coffer_api::error::ErrorCode;
use coffer_node::local::data_dir::DataDir;
use coffer_node::trust::pki::NodeKey;
use coffer_node::trust::tls::{self, NodeCert};
use coffer_tests::{Cluster, ManagerProc};

use crate::bin;

fn ca_pem(c: &Cluster) -> String {
    std::fs::read_to_string(c.client_dir().join("ca.pem")).expect("ca.pem")
}

/// A number for names that must differ (hostnames are unique among live nodes).
fn key_serial() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Joins through the HTTP API directly (as a joiner would after checking the CA).
async fn join_raw(c: &Cluster, token: &str, role: NodeRole) -> Result<(JoinResponse, NodeKey), ClientError> {
    let key = NodeKey::generate().expect("key");
    let req = JoinRequest {
        token: token.to_string(),
        role,
        csr_pem: key.csr_pem(&["127.0.0.1".into()]).expect("csr"),
        advertise_addr: "127.0.0.1:1".into(),
        hostname: format!("intruder-{}", key_serial()),
    };
    let anon = AdminClient::with_tls(&ca_pem(c), None, &c.managers[0].addr).expect("client");
    anon.post::<_, JoinResponse>("/v1/join", &req).await.map(|r| (r, key))
}

/// A client presenting `cert_pem`/`key_pem`, trusting `c`'s CA.
fn client_with(c: &Cluster, i: usize, cert_pem: &str, key_pem: &str) -> AdminClient {
    let cert = coffer_api::tls::StaticCert(tls::certified_key(cert_pem, key_pem).expect("cert"));
    AdminClient::with_tls(&ca_pem(c), Some(std::sync::Arc::new(cert)), &c.managers[i].addr).expect("client")
}

type Link = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A connection to manager `i` that asks for a manager-to-manager link (by ALPN), with a
/// certificate (PEM pair) or none.
async fn link_to(c: &Cluster, i: usize, cert: Option<(&str, &str)>) -> Link {
    let resolver = cert.map(|(cert, key)| {
        std::sync::Arc::new(coffer_api::tls::StaticCert(tls::certified_key(cert, key).expect("cert")))
            as std::sync::Arc<dyn rustls::client::ResolvesClientCert>
    });
    let mut cfg = coffer_api::tls::client_config(&ca_pem(c), resolver).expect("tls config");
    cfg.alpn_protocols = vec![tls::LINK_ALPN.to_vec()];
    let addr = &c.managers[i].addr;
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let host = addr.rsplit_once(':').expect("host:port").0.to_string();
    let name = rustls::pki_types::ServerName::try_from(host).expect("server name");
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg)).connect(name, tcp).await.expect("handshake")
}

/// One request frame on a link (length, id, path, body): the reply's status, or `None`
/// when the manager closed the link instead of answering.
async fn link_call(link: &mut Link, path: &str, body: &[u8]) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let len = 8 + 2 + path.len() + body.len();
    let mut frame = (len as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&7u64.to_be_bytes());
    frame.extend_from_slice(&(path.len() as u16).to_be_bytes());
    frame.extend_from_slice(path.as_bytes());
    frame.extend_from_slice(body);
    let answered = async {
        link.write_all(&frame).await.ok()?;
        link.flush().await.ok()?;
        let mut len = [0u8; 4];
        link.read_exact(&mut len).await.ok()?;
        let mut rest = vec![0u8; u32::from_be_bytes(len) as usize];
        link.read_exact(&mut rest).await.ok()?;
        assert_eq!(rest[..8], 7u64.to_be_bytes(), "the reply names the request it answers");
        Some(u16::from_be_bytes([rest[8], rest[9]]))
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), answered).await.expect("an answer or a close")
}

fn code(r: Result<serde_json::Value, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Api { code, .. }) => code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn joiner_dir(root: &std::path::Path, name: &str) -> std::path::PathBuf {
    root.join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_with_bad_tokens_are_refused_and_change_nothing() {
    let c = Cluster::start(bin(), 1, &[]).await.expect("cluster");
    let other = Cluster::start(bin(), 1, &[]).await.expect("another cluster");
    let admin = c.admin(0);
    let before = admin.nodes().await.expect("ls").len();

    // A well-formed token with this cluster's CA digest but a wrong secret.
    let mut wrong = c.tokens.manager.clone();
    let last = wrong.pop().expect("char");
    wrong.push(if last == 'A' { 'B' } else { 'A' });
    let e = join_raw(&c, &wrong, NodeRole::Manager).await.expect_err("wrong token");
    assert_eq!(e.code(), Some(ErrorCode::Unauthenticated), "{e}");

    // Another cluster's token, sent straight to the API: refused by the server.
    let e = join_raw(&c, &other.tokens.manager, NodeRole::Manager).await.expect_err("foreign token");
    assert_eq!(e.code(), Some(ErrorCode::Unauthenticated));
    assert!(e.to_string().contains("another cluster"), "{e}");

    // A worker token used to join as a manager.
    let e = join_raw(&c, &c.tokens.worker, NodeRole::Manager).await.expect_err("worker token as manager");
    assert_eq!(e.code(), Some(ErrorCode::PermissionDenied));
    assert!(e.to_string().contains("manager token"), "{e}");

    // A rotated token.
    let fresh = admin.rotate_token(NodeRole::Manager).await.expect("rotate");
    assert_ne!(fresh.token, c.tokens.manager);
    let e = join_raw(&c, &c.tokens.manager, NodeRole::Manager).await.expect_err("rotated token");
    assert_eq!(e.code(), Some(ErrorCode::Unauthenticated));
    assert!(e.to_string().contains("rotated"), "{e}");
    // Rotation invalidates only new joins: the manager's own certificate still works.
    assert!(admin.status().await.expect("status").healthy);

    // Malformed input gets a clear error too.
    let e = join_raw(&c, "COFFER-1-nonsense", NodeRole::Manager).await.expect_err("malformed");
    assert_eq!(e.code(), Some(ErrorCode::Unauthenticated));

    assert_eq!(admin.nodes().await.expect("ls").len(), before, "a refused join changed the cluster");

    // The same through the CLI: a process that exits non-zero and leaves no node behind.
    let dir = joiner_dir(c.root.path(), "refused");
    let r = ManagerProc::join(bin(), &dir, &c.tokens.manager, &c.managers[0].addr, &[]);
    assert!(r.is_err(), "joined with a rotated token");
    assert!(!dir.join("node.json").exists(), "a refused joiner wrote an identity");
    // And the new token works.
    let joined =
        ManagerProc::join(bin(), &joiner_dir(c.root.path(), "accepted"), &fresh.token, &c.managers[0].addr, &[])
            .expect("join with the fresh token");
    assert!(joined.id != 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_facing_a_ca_that_does_not_match_its_token_sends_nothing() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let c = Cluster::start(bin(), 1, &[]).await.expect("cluster");
    let impostor = Cluster::start(bin(), 1, &[]).await.expect("impostor's CA");

    // A listener that serves the impostor's CA and counts every other request it gets.
    let impostor_dir = DataDir::new(&impostor.managers[0].dir);
    let kek = coffer_node::local::key_file::load(&impostor_dir.key_file()).expect("kek");
    let creds = coffer_node::trust::credentials::load_credentials(&impostor_dir, &kek).expect("creds");
    let cert = NodeCert::new(tls::certified_key(&creds.cert_pem, creds.key_pem.expose()).expect("cert"));
    let server_tls = tls::server_config(&creds.ca_pem, cert).expect("server tls");
    let others = Arc::new(AtomicUsize::new(0));
    let counted = others.clone();
    let ca_text = creds.ca_pem.clone();
    let app = axum::Router::new().route("/v1/ca", axum::routing::get(move || async move { ca_text })).fallback(
        move || async move {
            counted.fetch_add(1, Ordering::SeqCst);
            "nothing"
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let stop = tokio_util_cancel();
    let serving =
        tokio::spawn(coffer_node::http::server::serve(listener, server_tls, app, Default::default(), stop.clone()));

    let dir = joiner_dir(c.root.path(), "fooled");
    let err = ManagerProc::join(bin(), &dir, &c.tokens.manager, &addr, &[]).expect_err("join must refuse");
    assert!(err.to_string().contains("does not match the join token"), "{err}");
    assert_eq!(others.load(Ordering::SeqCst), 0, "the joiner sent something past the CA check");
    assert!(!dir.join("node.json").exists());

    // The real CA with the impostor's appended: the digest of the first certificate
    // matches, but nothing may ride along with it.
    let real_ca = ca_pem(&c);
    let both = format!("{real_ca}{}", creds.ca_pem);
    let counted = others.clone();
    let app = axum::Router::new().route("/v1/ca", axum::routing::get(move || async move { both })).fallback(
        move || async move {
            counted.fetch_add(1, Ordering::SeqCst);
            "nothing"
        },
    );
    let cert = NodeCert::new(tls::certified_key(&creds.cert_pem, creds.key_pem.expose()).expect("cert"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr2 = listener.local_addr().expect("addr").to_string();
    let serving2 = tokio::spawn(coffer_node::http::server::serve(
        listener,
        tls::server_config(&creds.ca_pem, cert).expect("tls"),
        app,
        Default::default(),
        stop.clone(),
    ));
    let dir = joiner_dir(c.root.path(), "fooled-twice");
    let err = ManagerProc::join(bin(), &dir, &c.tokens.manager, &addr2, &[]).expect_err("join must refuse");
    assert!(err.to_string().contains("does not match the join token"), "{err}");
    assert_eq!(others.load(Ordering::SeqCst), 0, "the joiner sent something past the CA check");
    stop.cancel();
    let _ = serving.await;
    let _ = serving2.await;
}

fn tokio_util_cancel() -> tokio_util::sync::CancellationToken {
    tokio_util::sync::CancellationToken::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_endpoint_refuses_callers_without_its_role() {
    let c = Cluster::start(bin(), 3, &[]).await.expect("cluster");
    let foreign = Cluster::start(bin(), 1, &[]).await.expect("foreign cluster");
    let admin = c.admin(0);
    let vote = serde_json::json!({});

    // No certificate: unauthenticated, on the admin API and on Raft RPC.
    let anon = AdminClient::with_tls(&ca_pem(&c), None, &c.managers[0].addr).expect("client");
    assert_eq!(code(anon.get("/v1/nodes").await), ErrorCode::Unauthenticated);
    assert_eq!(code(anon.post("/raft/vote", &vote).await), ErrorCode::Unauthenticated);
    // Nor does a link answer it: anyone but a manager who asks for one is closed.
    assert_eq!(link_call(&mut link_to(&c, 0, None).await, "/raft/vote", b"").await, None);

    // A worker certificate: not an admin, not a manager.
    let (worker, worker_key) = join_raw(&c, &c.tokens.worker, NodeRole::Worker).await.expect("worker joins");
    let w = client_with(&c, 1, &worker.cert_pem, worker_key.key_pem().expose());
    assert_eq!(code(w.post("/raft/vote", &vote).await), ErrorCode::PermissionDenied);
    assert_eq!(code(w.post("/raft/append", &vote).await), ErrorCode::PermissionDenied);
    assert_eq!(code(w.get("/v1/nodes").await), ErrorCode::PermissionDenied);
    let mut wl = link_to(&c, 0, Some((&worker.cert_pem, worker_key.key_pem().expose()))).await;
    assert_eq!(link_call(&mut wl, "/raft/vote", b"").await, None, "a worker's link was answered");
    let admin_dir = c.client_dir();
    let (acert, akey) = (
        std::fs::read_to_string(admin_dir.join("client.pem")).expect("admin cert"),
        std::fs::read_to_string(admin_dir.join("client.key")).expect("admin key"),
    );
    assert_eq!(link_call(&mut link_to(&c, 0, Some((&acert, &akey))).await, "/raft/vote", b"").await, None);

    // A manager's own certificate is not an admin credential either.
    let m3 = DataDir::new(&c.managers[2].dir);
    let kek = coffer_node::local::key_file::load(&m3.key_file()).expect("kek");
    let creds = coffer_node::trust::credentials::load_credentials(&m3, &kek).expect("creds");
    let m = client_with(&c, 0, &creds.cert_pem, creds.key_pem.expose());
    assert_eq!(code(m.get("/v1/nodes").await), ErrorCode::PermissionDenied);
    // ...while Raft RPC accepts it (the body is garbage, so it fails later, as bad input),
    // over HTTP and over a link, which is served by the same router.
    assert_eq!(code(m.post("/raft/vote", &vote).await), ErrorCode::InvalidArgument);
    let mut ml = link_to(&c, 0, Some((&creds.cert_pem, creds.key_pem.expose()))).await;
    assert_eq!(link_call(&mut ml, "/raft/vote", b"garbage").await, Some(400));
    assert_eq!(link_call(&mut ml, "/v1/nodes", b"").await, Some(405), "a link reaches POST routes only");
    assert_eq!(link_call(&mut ml, "/v1/secrets", b"{}").await, Some(403), "a link is no admin credential");

    // A certificate from a foreign CA: the TLS handshake itself fails.
    let fdir = foreign.client_dir();
    let fcert = std::fs::read_to_string(fdir.join("client.pem")).expect("cert");
    let fkey = std::fs::read_to_string(fdir.join("client.key")).expect("key");
    let f = client_with(&c, 0, &fcert, &fkey);
    match f.get::<serde_json::Value>("/v1/nodes").await {
        Err(ClientError::Transport { .. }) => {}
        other => panic!("a foreign CA's certificate got through: {other:?}"),
    }

    // Removed nodes are refused at once, though their certificates have not expired.
    admin.remove(worker.node_id).await.expect("remove worker");
    let renew = coffer_api::cluster::RenewRequest { csr_pem: worker_key.csr_pem(&[]).expect("csr") };
    let e = w.post::<_, serde_json::Value>("/v1/renew", &renew).await.expect_err("removed worker renews");
    assert_eq!(e.code(), Some(ErrorCode::PermissionDenied));
    assert!(e.to_string().contains("removed"), "{e}");

    // A voting manager is removed only with force (Docker's rule: demote it first).
    let e = admin.remove(c.managers[2].id).await.expect_err("a voter removed without force");
    assert_eq!(e.code(), Some(ErrorCode::FailedPrecondition));
    assert!(e.to_string().contains("--force"), "{e}");
    admin.remove_forced(c.managers[2].id).await.expect("remove manager 3");
    let e = m.post::<_, serde_json::Value>("/raft/vote", &vote).await.expect_err("removed manager votes");
    assert_eq!(e.code(), Some(ErrorCode::PermissionDenied));
    // Its link opened before the removal is refused request by request; a new one is closed.
    assert_eq!(link_call(&mut ml, "/raft/vote", b"garbage").await, Some(403));
    let mut again = link_to(&c, 0, Some((&creds.cert_pem, creds.key_pem.expose()))).await;
    assert_eq!(link_call(&mut again, "/raft/vote", b"garbage").await, None, "a removed manager's new link");
    let nodes = admin.nodes().await.expect("ls");
    assert!(nodes.iter().all(|n| n.id != c.managers[2].id && n.id != worker.node_id), "removed nodes are listed");
    let s = admin.status().await.expect("status");
    assert_eq!(s.members.len(), 2, "the removed manager is still a Raft member");
    assert!(s.healthy);
}

/// A client holding a fresh worker certificate of `c`, aimed at manager `i`.
pub async fn worker_client(c: &Cluster, i: usize) -> AdminClient {
    let (w, key) = join_raw(c, &c.tokens.worker, NodeRole::Worker).await.expect("worker joins");
    client_with(c, i, &w.cert_pem, key.key_pem().expose())
}

/// Retries `f` until it succeeds (a record committed on the leader may take a heartbeat
/// to be applied on the manager asked).
pub async fn eventually_ok<T, F, Fut>(f: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    coffer_tests::eventually("the call to succeed", coffer_tests::DEADLINE, || async { f().await.ok() })
        .await
        .expect("call succeeds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_that_never_comes_up_does_not_stall_the_cluster() {
    let c = Cluster::start(bin(), 1, &[]).await.expect("cluster");
    let admin = c.admin(0);
    // Admitted, but nothing ever answers at its address.
    let (ghost, _key) = join_raw(&c, &c.tokens.manager, NodeRole::Manager).await.expect("ghost joins");
    // The cluster keeps committing: a write, a token rotation, and removing the ghost.
    admin.rotate_token(NodeRole::Worker).await.expect("rotate with a ghost learner");
    let g = admin.node(ghost.node_id).await.expect("ghost recorded");
    assert_ne!(g.raft, coffer_api::cluster::RaftRole::Voter, "a manager that never answered became a voter");
    let e = admin.promote(ghost.node_id).await.expect_err("promoting a ghost");
    assert_eq!(e.code(), Some(ErrorCode::FailedPrecondition), "{e}");
    admin.remove(ghost.node_id).await.expect("remove the ghost");
    let s = admin.status().await.expect("status");
    assert_eq!(s.members.len(), 1);
    assert!(s.healthy);
}

/// A TLS connection to manager 0 without a client certificate, to speak HTTP by hand.
async fn raw_tls(c: &Cluster) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tls = std::sync::Arc::new(coffer_api::tls::client_config(&ca_pem(c), None).expect("tls"));
    let tcp = tokio::net::TcpStream::connect(&c.managers[0].addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.expect("handshake")
}

/// Every refusal, including the router's own and the body's, is the envelope with a stable
/// code; a declared body over the limit is refused before it is read; control and bidi
/// characters are refused wherever text is shown back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_the_envelope_and_bad_text_changes_nothing() {
    let c = Cluster::start(bin(), 1, &[]).await.expect("cluster");
    let ca = ca_pem(&c);
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(coffer_api::tls::client_config(&ca, None).expect("tls"))
        .build()
        .expect("client");
    let base = format!("https://{}", c.managers[0].addr);
    let envelope = |status: u16, body: &str| -> String {
        let v: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|_| panic!("HTTP {status}: not JSON: {body}"));
        v["error"]["code"].as_str().unwrap_or_else(|| panic!("HTTP {status}: no error code: {body}")).to_string()
    };
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (http.get(format!("{base}/v1/no-such-thing")), 404, "not_found"),
        (http.delete(format!("{base}/v1/ca")), 405, "invalid_argument"),
        (
            http.post(format!("{base}/v1/join")).header("content-type", "application/json").body("{not json"),
            400,
            "invalid_argument",
        ),
        (
            http.post(format!("{base}/v1/join")).header("content-type", "application/json").body("{}"),
            400,
            "invalid_argument",
        ),
    ];
    for (req, status, code) in cases {
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => panic!("{status} {code}: {e}"),
        };
        assert_eq!(resp.status().as_u16(), status);
        let body = resp.text().await.expect("body");
        assert_eq!(envelope(status, &body), code, "{body}");
    }

    // A declared body over the limit is answered 413 before a byte of it is sent.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = raw_tls(&c).await;
        let head =
            "POST /v1/join HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 5000000\r\n\r\n";
        s.write_all(head.as_bytes()).await.expect("send headers");
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), s.read_to_end(&mut reply)).await;
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
        let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
        assert_eq!(envelope(413, body), "payload_too_large", "{reply}");
    }

    // A body that stops coming is given up on (after the 5 s idle default), not waited for.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = raw_tls(&c).await;
        let head =
            "POST /v1/join HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{";
        s.write_all(head.as_bytes()).await.expect("send headers");
        let started = std::time::Instant::now();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(30), s.read(&mut buf))
            .await
            .expect("the manager answers a stalled body within its deadline")
            .unwrap_or(0);
        let reply = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || reply.starts_with("HTTP/1.1 4"), "{reply}");
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "took {:?}", started.elapsed());
    }

    let admin = c.admin(0);
    let bidi = std::collections::BTreeMap::from([("team".to_string(), "\u{202e}gpj.exe".to_string())]);
    let e = admin.create_secret("s", b"v", bidi).await.expect_err("a bidi override in a label");
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument));
    let svc = coffer_api::services::ServiceCreate {
        name: "svc".into(),
        replicas: Some(1),
        constraints: vec!["node.labels.zone==\u{1b}]8;;evil".into()],
        secrets: vec![],
        labels: Default::default(),
        run: Default::default(),
    };
    let e = admin.create_service(&svc).await.expect_err("an escape in a constraint");
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument));
    let many = coffer_api::services::ServiceCreate {
        constraints: (0..65).map(|i| format!("node.labels.k{i}==v")).collect(),
        ..svc
    };
    assert_eq!(admin.create_service(&many).await.expect_err("65 constraints").code(), Some(ErrorCode::InvalidArgument));
    assert!(admin.secrets().await.expect("list").is_empty() && admin.services().await.expect("list").is_empty());
    // A join whose hostname carries an escape sequence is refused.
    let key = NodeKey::generate().expect("key");
    let token = admin.rotate_token(NodeRole::Worker).await.expect("token").token;
    let req = JoinRequest {
        token,
        role: NodeRole::Worker,
        csr_pem: key.csr_pem(&[]).expect("csr"),
        advertise_addr: "0.0.0.0:0".into(),
        hostname: "prod\u{1b}[2Jdb".into(),
    };
    let anon = AdminClient::with_tls(&ca, None, &c.managers[0].addr).expect("client");
    let e = anon.post::<_, JoinResponse>("/v1/join", &req).await.expect_err("an escape in a hostname");
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument));
    assert_eq!(admin.nodes().await.expect("nodes").len(), 1, "nothing joined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_credentials_are_issued_replaced_and_revoked_on_every_manager() {
    let c = Cluster::start(bin(), 3, &[]).await.expect("cluster");
    let cli = |args: &[&str], client_dir: &std::path::Path| {
        std::process::Command::new(bin())
            .args(args)
            .env("COFFER_ADDR", &c.managers[1].addr)
            .env("COFFER_CLIENT_DIR", client_dir)
            .env("COFFER_LOG", "error")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run coffer")
    };
    let bundle = |dir: &std::path::Path, i: usize| AdminClient::from_dir(dir, &c.managers[i].addr).expect("bundle");
    let init_dir = c.client_dir();
    let first = c.admin(0);
    let listed = first.admins().await.expect("admin ls");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].name == "admin" && !listed[0].revoked, "manager init's bundle is the first credential");

    // `coffer admin issue` makes the key locally and writes a bundle that works everywhere.
    let ops_dir = c.root.path().join("ops-bundle");
    let out = cli(&["admin", "issue", "ops", "--out", ops_dir.to_str().expect("utf-8"), "--ttl", "1d"], &init_dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(ops_dir.join("client.key")).expect("key").permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600);
    for i in 0..3 {
        bundle(&ops_dir, i).status().await.expect("the new bundle works on every manager");
    }

    // Revoking the init bundle refuses it on every manager as soon as the call returns.
    let out = cli(&["admin", "revoke", "admin"], &ops_dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for i in 0..3 {
        let e = bundle(&init_dir, i).status().await.expect_err("a revoked bundle");
        assert_eq!(e.code(), Some(ErrorCode::Unauthenticated), "manager {i}: {e}");
    }
    // The last credential left cannot be revoked (exit 1: the cluster refused).
    let out = cli(&["admin", "revoke", "ops"], &ops_dir);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("last"));

    // Re-issuing a name replaces its certificate: the old bundle is refused everywhere.
    let ops2 = c.root.path().join("ops-bundle-2");
    let out = cli(&["admin", "issue", "ops", "--out", ops2.to_str().expect("utf-8")], &ops_dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for i in 0..3 {
        bundle(&ops2, i).status().await.expect("the re-issued bundle works");
        let e = bundle(&ops_dir, i).status().await.expect_err("the replaced bundle");
        assert_eq!(e.code(), Some(ErrorCode::Unauthenticated));
    }
    // A worker's or an API token's credentials cannot issue admins.
    let token =
        bundle(&ops2, 0).create_api_token("rw", coffer_api::tokens::TokenScope::ReadWrite).await.expect("token").token;
    let with_token = AdminClient::with_token(&ca_pem(&c), &token, &c.managers[0].addr).expect("client");
    let e = with_token.admins().await.expect_err("an API token lists admins");
    assert!(matches!(e.code(), Some(ErrorCode::Unauthenticated | ErrorCode::PermissionDenied)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_come_when_due_and_not_in_a_loop() {
    use coffer_api::cluster::{RenewRequest, RenewResponse};
    let c = Cluster::start(bin(), 1, &["--cert-validity-secs", "20"]).await.expect("cluster");
    let token = c.admin(0).rotate_token(NodeRole::Worker).await.expect("token").token;
    let w = coffer_tests::raw_worker(&c, &token).await;
    let fresh_key = NodeKey::generate().expect("key");
    let csr = || RenewRequest { csr_pem: NodeKey::generate().expect("key").csr_pem(&[]).expect("csr") };
    // A fresh certificate is not due: renewing at will is refused.
    let e =
        w.clients[0].post::<_, RenewResponse>("/v1/renew", &csr()).await.expect_err("renewal of a fresh certificate");
    assert_eq!(e.code(), Some(ErrorCode::FailedPrecondition), "{e}");
    assert!(e.to_string().contains("not due"), "{e}");
    // Once due (40% of its 20 s), one renewal goes through...
    let renewed_req = RenewRequest { csr_pem: fresh_key.csr_pem(&[]).expect("csr") };
    let renewed = coffer_tests::eventually("the certificate to be due", coffer_tests::DEADLINE, || async {
        w.clients[0].post::<_, RenewResponse>("/v1/renew", &renewed_req).await.ok()
    })
    .await
    .expect("a due renewal");
    // ...and a burst right after it with the same (still valid) certificate gets nothing.
    let mut renewed_count = 0;
    for _ in 0..30 {
        if w.clients[0].post::<_, RenewResponse>("/v1/renew", &csr()).await.is_ok() {
            renewed_count += 1;
        }
    }
    assert_eq!(renewed_count, 0, "a burst of renewals was honoured");
    // The replaced certificate is retired after its grace period (a quarter of its life
    // here), on every manager; the new one works.
    let new_client = client_with(&c, 0, &renewed.cert_pem, fresh_key.key_pem().expose());
    coffer_tests::eventually("the old certificate to be retired", coffer_tests::DEADLINE, || async {
        let e = w.clients[0].post::<_, serde_json::Value>("/v1/worker/heartbeat", &()).await.err()?;
        (e.code() == Some(ErrorCode::PermissionDenied) && e.to_string().contains("replaced")).then_some(())
    })
    .await
    .expect("retired");
    new_client.post::<_, serde_json::Value>("/v1/worker/heartbeat", &()).await.expect("the new certificate works");
}
