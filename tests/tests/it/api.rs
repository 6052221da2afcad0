//! The secrets and services API against a 3-manager cluster, through the leader and
//! through a follower: every operation, every documented error, and no value ever
//! returned by list or inspect.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use coffer_api::client::{Client, ClientError};
use coffer_api::error::ErrorCode;
use coffer_api::secrets::SecretCreate;
use coffer_api::services::{SecretRefSpec, ServiceCreate, ServiceUpdate};
use coffer_api::tokens::TokenScope;
use coffer_tests::Cluster;

use crate::bin;

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    match r {
        Err(e) => e.code().unwrap_or_else(|| panic!("expected an API error, got {e}")),
        Ok(v) => panic!("expected an API error, got {v:?}"),
    }
}

fn spec(source: &str, target: Option<&str>) -> SecretRefSpec {
    SecretRefSpec {
        source: source.into(),
        target: target.map(Into::into),
        uid: None,
        gid: None,
        mode: None,
        version: None,
    }
}

/// Every JSON document a test received, to search for values afterwards.
#[derive(Default, Clone)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    fn add<T: serde::Serialize>(&self, v: &T) {
        self.0.lock().expect("lock").push(serde_json::to_string(v).expect("json"));
    }

    fn assert_never_contains(&self, value: &[u8]) {
        let forms = [
            String::from_utf8_lossy(value).into_owned(),
            base64::engine::general_purpose::STANDARD.encode(value),
            value.iter().map(|b| format!("{b:02x}")).collect(),
        ];
        for doc in self.0.lock().expect("lock").iter() {
            for f in &forms {
                assert!(!doc.contains(f.as_str()), "a response carried a secret value: {doc}");
            }
        }
    }
}

async fn exercise(c: &Client, tag: &str, seen: &Seen) {
    let canary = format!("CANARY-{tag}-5b1e0c77d2").into_bytes();
    let name = format!("db_password-{tag}");
    let labels = BTreeMap::from([("team".to_string(), "db".to_string()), (format!("only-{tag}"), "1".to_string())]);

    // Create, and the errors of create.
    let created = c.create_secret(&name, &canary, labels.clone()).await.expect("create");
    assert_eq!(created.version, 1);
    seen.add(&created);
    assert_eq!(code(c.create_secret(&name, b"x", BTreeMap::new()).await), ErrorCode::AlreadyExists);
    assert_eq!(code(c.create_secret("bad name!", b"x", BTreeMap::new()).await), ErrorCode::InvalidArgument);
    assert_eq!(code(c.create_secret(&format!("empty-{tag}"), b"", BTreeMap::new()).await), ErrorCode::InvalidArgument);
    let too_big = vec![7u8; 500 * 1024 + 1];
    assert_eq!(
        code(c.create_secret(&format!("big-{tag}"), &too_big, BTreeMap::new()).await),
        ErrorCode::PayloadTooLarge
    );
    let bad_b64 = SecretCreate { name: format!("b64-{tag}"), data: "not base64!".into(), labels: BTreeMap::new() };
    assert_eq!(code(c.post::<_, serde_json::Value>("/v1/secrets", &bad_b64).await), ErrorCode::InvalidArgument);
    let huge = SecretCreate { name: format!("huge-{tag}"), data: "A".repeat(2 << 20), labels: BTreeMap::new() };
    assert_eq!(code(c.post::<_, serde_json::Value>("/v1/secrets", &huge).await), ErrorCode::PayloadTooLarge);
    let not_json = c.post::<_, serde_json::Value>("/v1/secrets", &serde_json::json!({"name": 5})).await;
    assert_eq!(code(not_json), ErrorCode::InvalidArgument);

    // List (with filters) and inspect never show a value.
    let all = c.secrets().await.expect("ls");
    seen.add(&all);
    assert!(all.iter().any(|s| s.name == name));
    let by_label = c.secrets_filtered(None, &[format!("only-{tag}=1")]).await.expect("label filter");
    assert_eq!(by_label.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), vec![name.as_str()]);
    let by_key = c.secrets_filtered(None, &["team".into()]).await.expect("label key filter");
    assert!(by_key.iter().any(|s| s.name == name));
    let by_name = c.secrets_filtered(Some(&name), &[]).await.expect("name filter");
    assert_eq!(by_name.len(), 1);
    let none = c.secrets_filtered(Some("no-such-prefix"), &[]).await.expect("empty filter");
    assert!(none.is_empty());
    let info = c.secret(&name).await.expect("inspect by name");
    seen.add(&info);
    assert_eq!(c.secret(&info.id).await.expect("inspect by id"), info);
    assert_eq!(info.versions[0].size as usize, canary.len());
    assert_eq!(info.labels, labels);
    assert_eq!(code(c.secret("no-such-secret").await), ErrorCode::NotFound);
    let raw: serde_json::Value = c.get(&format!("/v1/secrets/{}", info.id)).await.expect("raw inspect");
    assert!(raw.get("data").is_none() && raw.get("value").is_none(), "inspect has a value field: {raw}");

    // Rotate adds a version; labels are replaced.
    let mut rotated_value = canary.clone();
    rotated_value.extend_from_slice(b"-v2");
    let r = c.rotate_secret(&name, &rotated_value).await.expect("rotate");
    seen.add(&r);
    assert_eq!(r.version, 2);
    assert_eq!(code(c.rotate_secret("no-such-secret", b"x").await), ErrorCode::NotFound);
    assert_eq!(code(c.rotate_secret(&name, b"").await), ErrorCode::InvalidArgument);
    let relabeled =
        c.set_secret_labels(&name, BTreeMap::from([("team".into(), "payments".into())])).await.expect("labels");
    seen.add(&relabeled);
    assert_eq!(relabeled.versions.len(), 2);
    assert_eq!(relabeled.labels.get("team").map(String::as_str), Some("payments"));

    // Services, and the errors of their secret references.
    let svc_name = format!("api-{tag}");
    let mk = |secrets: Vec<SecretRefSpec>, constraints: Vec<String>| ServiceCreate {
        name: svc_name.clone(),
        replicas: Some(2),
        constraints,
        secrets,
        labels: BTreeMap::new(),
        run: Default::default(),
    };
    assert_eq!(code(c.create_service(&mk(vec![spec("missing", None)], vec![])).await), ErrorCode::NotFound);
    let dup = vec![spec(&name, Some("db")), spec(&name, Some("db"))];
    assert_eq!(code(c.create_service(&mk(dup, vec![])).await), ErrorCode::InvalidArgument);
    let file_and_dir = vec![spec(&name, Some("pw")), spec(&name, Some("pw/app.conf"))];
    assert_eq!(code(c.create_service(&mk(file_and_dir, vec![])).await), ErrorCode::InvalidArgument);
    for target in ["../escape", "/etc/passwd", "", "a/../../b"] {
        let r = c.create_service(&mk(vec![spec(&name, Some(target))], vec![])).await;
        assert_eq!(code(r), ErrorCode::InvalidArgument, "target {target:?}");
    }
    let bad_mode = SecretRefSpec { mode: Some(0o7777), ..spec(&name, Some("db")) };
    assert_eq!(code(c.create_service(&mk(vec![bad_mode], vec![])).await), ErrorCode::InvalidArgument);
    let bad_pin = SecretRefSpec { version: Some(9), ..spec(&name, Some("db")) };
    assert_eq!(code(c.create_service(&mk(vec![bad_pin], vec![])).await), ErrorCode::NotFound);
    let r = c.create_service(&mk(vec![spec(&name, Some("db"))], vec!["node.colour==red".into()])).await;
    assert_eq!(code(r), ErrorCode::InvalidArgument);
    let with_mode = SecretRefSpec { mode: Some(0o400), uid: Some(1000), ..spec(&name, Some("db")) };
    let svc = c.create_service(&mk(vec![with_mode], vec!["node.role==worker".into()])).await.expect("create service");
    seen.add(&svc);
    assert_eq!((svc.replicas, svc.spec_version), (2, 1));
    assert_eq!((svc.secrets[0].target.as_str(), svc.secrets[0].mode, svc.secrets[0].uid), ("db", 0o400, 1000));
    assert_eq!(svc.secrets[0].secret_name, name);
    let defaults = c
        .create_service(&ServiceCreate { name: format!("defaults-{tag}"), ..mk(vec![spec(&name, None)], vec![]) })
        .await
        .expect("service with defaults");
    assert_eq!(
        (defaults.replicas, defaults.secrets[0].target.as_str(), defaults.secrets[0].mode),
        (2, name.as_str(), 0o400)
    );
    assert_eq!(code(c.create_service(&mk(vec![], vec![])).await), ErrorCode::AlreadyExists);

    // A referenced secret cannot be removed; the error names the services.
    let e = c.remove_secret(&name).await.expect_err("in use");
    assert_eq!(e.code(), Some(ErrorCode::SecretInUse));
    assert!(e.to_string().contains(&svc_name), "{e}");
    assert_eq!(c.secret(&name).await.expect("still there").used_by.len(), 2);

    // Updates: a stale expected version conflicts; secret-rm frees the secret.
    let stale = ServiceUpdate { expected_version: Some(99), replicas: Some(3), ..Default::default() };
    assert_eq!(code(c.update_service(&svc_name, &stale).await), ErrorCode::Conflict);
    let not_referenced = ServiceUpdate { secret_rm: vec!["other".into()], ..Default::default() };
    assert_eq!(code(c.update_service(&svc_name, &not_referenced).await), ErrorCode::InvalidArgument);
    let updated = c
        .update_service(
            &svc_name,
            &ServiceUpdate { secret_rm: vec![name.clone()], replicas: Some(3), ..Default::default() },
        )
        .await
        .expect("update");
    assert_eq!((updated.replicas, updated.secrets.len(), updated.spec_version), (3, 0, 2));
    let readded = c
        .update_service(
            &svc_name,
            &ServiceUpdate { secret_add: vec![spec(&name, Some("again"))], ..Default::default() },
        )
        .await
        .expect("secret-add");
    assert_eq!(readded.secrets[0].target, "again");
    c.remove_service(&svc_name).await.expect("service rm");
    c.remove_service(&format!("defaults-{tag}")).await.expect("service rm");
    assert_eq!(code(c.service(&svc_name).await), ErrorCode::NotFound);
    assert_eq!(code(c.remove_service(&svc_name).await), ErrorCode::NotFound);

    c.remove_secret(&name).await.expect("secret rm once unreferenced");
    assert_eq!(code(c.secret(&name).await), ErrorCode::NotFound);
    seen.add(&c.services().await.expect("services"));
    seen.add(&c.secrets().await.expect("secrets"));
    seen.assert_never_contains(&canary);
    seen.assert_never_contains(&rotated_value);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_services_through_the_leader_and_a_follower() {
    let c = Cluster::start(bin(), 3, &[]).await.expect("cluster");
    let leader = c.leader_seen_by(0).await.expect("leader");
    let li = c.index_of(leader).expect("leader index");
    let fi = (li + 1) % 3;
    let seen = Seen::default();
    exercise(&c.admin(li), "leader", &seen).await;
    exercise(&c.admin(fi), "follower", &seen).await;

    // A value written through one manager is described identically by all three.
    c.admin(fi).create_secret("shared", b"shared-value", BTreeMap::new()).await.expect("create");
    let views: Vec<_> = futures_views(&c, "shared").await;
    assert!(views.windows(2).all(|w| w[0] == w[1]), "managers disagree: {views:?}");
}

async fn futures_views(c: &Cluster, name: &str) -> Vec<coffer_api::secrets::SecretInfo> {
    let mut out = Vec::new();
    for i in 0..3 {
        out.push(c.admin(i).secret(name).await.expect("inspect"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_and_certificates_are_checked_on_every_call() {
    let c = Cluster::start(bin(), 3, &[]).await.expect("cluster");
    let foreign = Cluster::start(bin(), 1, &[]).await.expect("foreign cluster");
    let admin = c.admin(0);
    let ca = std::fs::read_to_string(c.client_dir().join("ca.pem")).expect("ca");
    admin.create_secret("existing", b"v", BTreeMap::new()).await.expect("create");

    // No certificate, no token.
    let anon = Client::with_tls(&ca, None, &c.managers[1].addr).expect("client");
    assert_eq!(code(anon.secrets().await), ErrorCode::Unauthenticated);
    assert_eq!(code(anon.create_secret("x", b"v", BTreeMap::new()).await), ErrorCode::Unauthenticated);
    assert_eq!(code(anon.metrics().await), ErrorCode::Unauthenticated);

    // A worker's certificate.
    let worker = crate::security::worker_client(&c, 1).await;
    assert_eq!(code(worker.secrets().await), ErrorCode::PermissionDenied);
    assert_eq!(code(worker.create_secret("x", b"v", BTreeMap::new()).await), ErrorCode::PermissionDenied);

    // A foreign CA's admin certificate does not get through TLS.
    let fdir = foreign.client_dir();
    let fcert = std::fs::read_to_string(fdir.join("client.pem")).expect("cert");
    let fkey = std::fs::read_to_string(fdir.join("client.key")).expect("key");
    let fk = coffer_api::tls::StaticCert(coffer_api::tls::certified_key(&fcert, &fkey).expect("key"));
    let f = Client::with_tls(&ca, Some(Arc::new(fk)), &c.managers[0].addr).expect("client");
    assert!(matches!(f.secrets().await, Err(ClientError::Transport { .. })));

    // A read-only token reads and cannot write.
    let ro = admin.create_api_token("ci-read", TokenScope::ReadOnly).await.expect("token");
    let ro_client = Client::with_token(&ca, &ro.token, &c.managers[1].addr).expect("client");
    crate::security::eventually_ok(|| ro_client.secrets()).await;
    assert_eq!(code(ro_client.create_secret("x", b"v", BTreeMap::new()).await), ErrorCode::PermissionDenied);
    assert!(ro_client.metrics().await.expect("a read-only token scrapes /metrics").contains("coffer_raft_term"));
    assert_eq!(code(ro_client.remove_secret("existing").await), ErrorCode::PermissionDenied);
    // Tokens cannot manage tokens or the cluster.
    assert_eq!(code(ro_client.create_api_token("x", TokenScope::ReadWrite).await), ErrorCode::Unauthenticated);
    assert_eq!(code(ro_client.nodes().await), ErrorCode::Unauthenticated);

    // A read-write token writes; once revoked, it is refused by every manager at once.
    let rw = admin.create_api_token("deployer", TokenScope::ReadWrite).await.expect("token");
    let rw_clients: Vec<Client> =
        (0..3).map(|i| Client::with_token(&ca, &rw.token, &c.managers[i].addr).expect("client")).collect();
    crate::security::eventually_ok(|| rw_clients[2].secrets()).await;
    rw_clients[2].create_secret("by-token", b"v", BTreeMap::new()).await.expect("write with a read-write token");
    let listed = admin.api_tokens().await.expect("token ls");
    assert!(listed.tokens.iter().any(|t| t.id == rw.id && !t.revoked));
    assert!(!serde_json::to_string(&listed).expect("json").contains(&rw.token), "token ls shows a token");
    c.admin(1).revoke_api_token(&rw.id).await.expect("revoke through a follower");
    for client in &rw_clients {
        assert_eq!(code(client.secrets().await), ErrorCode::Unauthenticated);
    }
    // A malformed or made-up token.
    let fake = Client::with_token(&ca, "COFFER-API-0123456789abcdef-AAAAAAAAAAAAAAAAAAAAAAAAAA", &c.managers[0].addr)
        .expect("client");
    assert_eq!(code(fake.secrets().await), ErrorCode::Unauthenticated);
    let junk = Client::with_token(&ca, "hello", &c.managers[0].addr).expect("client");
    assert_eq!(code(junk.secrets().await), ErrorCode::Unauthenticated);

    // Nothing the refused callers tried changed anything.
    let names: Vec<String> = admin.secrets().await.expect("ls").into_iter().map(|s| s.name).collect();
    assert_eq!(names, vec!["by-token".to_string(), "existing".to_string()]);
}

/// Concurrent writes are committed together (the leader's group commit), and each caller
/// still gets its own command's answer: of three creates of each name, through the leader
/// and both followers at once, exactly one wins and the others are told the name is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_commit_together_and_each_gets_its_own_answer() {
    let c = Cluster::start(bin(), 3, &[]).await.expect("cluster");
    let before = c.admin(0).state_digest().await.expect("digest").applied_index;
    let mut calls = Vec::new();
    for i in 0..48usize {
        let client = c.admin(i % 3);
        calls.push(tokio::spawn(async move {
            let name = format!("together-{}", i % 16);
            (name.clone(), client.create_secret(&name, format!("value-{i}").as_bytes(), BTreeMap::new()).await)
        }));
    }
    let mut won: BTreeMap<String, usize> = BTreeMap::new();
    for call in calls {
        let (name, r) = call.await.expect("task");
        match r {
            Ok(created) => {
                assert_eq!((created.name.as_str(), created.version), (name.as_str(), 1));
                *won.entry(name).or_default() += 1;
            }
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::AlreadyExists), "{name}: {e}"),
        }
    }
    assert_eq!(won.len(), 16, "{won:?}");
    assert!(won.values().all(|&n| n == 1), "a name was created twice: {won:?}");
    let secrets = c.admin(1).secrets().await.expect("list");
    assert_eq!(secrets.len(), 16);
    let after = c.admin(0).state_digest().await.expect("digest").applied_index;
    println!("48 writes took {} log entries", after.unwrap_or(0).saturating_sub(before.unwrap_or(0)));
}
