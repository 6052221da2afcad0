//! Grants are useless to any node but their own, after their expiry, after a newer leader
//! term has an authority, when altered or forged, once their task moved, and to a removed
//! node; only the leader issues them (a follower asks it for the worker). Driven through
//! the worker API with real worker certificates, each refusal returning no value.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use coffer_api::client::{Client, ClientError};
use coffer_api::cluster::NodeRole;
use coffer_api::error::ErrorCode;
use coffer_api::services::{SecretRefSpec, ServiceCreate, ServiceUpdate};
use coffer_api::worker::{Grant, GrantList, GrantRequest, RedeemRequest, Redeemed};
use coffer_tests::{eventually, raw_worker, Cluster, DEADLINE};

use crate::bin;

async fn task_of(admin: &Client, svc: &str, node: u64) -> String {
    eventually("the task on the node", DEADLINE, || async {
        admin.service_tasks(svc).await.ok()?.into_iter().find(|t| t.node_id == Some(node)).map(|t| t.task_id)
    })
    .await
    .expect("task placed")
}

async fn grant(from: &Client, task: &str) -> Result<Grant, ClientError> {
    let l: GrantList = from.post("/v1/worker/grants", &GrantRequest { task_ids: vec![task.into()] }).await?;
    Ok(l.grants.into_iter().next().expect("one grant"))
}

async fn redeem(at: &Client, g: &Grant) -> Result<Redeemed, ClientError> {
    at.post("/v1/worker/redeem", &RedeemRequest { grant: g.clone() }).await
}

/// Service `svc`, one replica on `node`, with `secret` at its default target.
fn on_node(node: u64, secret: &str) -> ServiceCreate {
    ServiceCreate {
        name: "svc".into(),
        replicas: Some(1),
        constraints: vec![format!("node.id=={node}")],
        secrets: vec![SecretRefSpec {
            source: secret.into(),
            target: None,
            uid: None,
            gid: None,
            mode: None,
            version: None,
        }],
        labels: BTreeMap::new(),
        run: Default::default(),
    }
}

fn refused(r: Result<Redeemed, ClientError>, why: &str) {
    match r {
        Err(e) => {
            assert_eq!(e.code(), Some(ErrorCode::PermissionDenied), "{why}: {e}");
            assert!(e.to_string().contains(why), "expected {why:?} in {e}");
        }
        Ok(v) => panic!("a grant was honoured ({why}): {:?}", v.secrets.len()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_are_useless_to_anyone_but_their_node_and_only_while_current() {
    let c =
        Cluster::start(bin(), 3, &["--grant-ttl-secs", "3", "--worker-heartbeat-ms", "300"]).await.expect("cluster");
    let admin = c.admin(0);
    let token = admin.rotate_token(NodeRole::Worker).await.expect("token").token;
    let a = raw_worker(&c, &token).await;
    let b = raw_worker(&c, &token).await;
    admin.create_secret("s", b"grant-value", BTreeMap::new()).await.expect("secret");
    admin.create_service(&on_node(a.id, "s")).await.expect("service");
    let task = task_of(&admin, "svc", a.id).await;

    let leader = c.leader_seen_by(0).await.expect("leader");
    let li = c.index_of(leader).expect("leader index");
    let fi = (li + 1) % 3;

    // Only the leader issues: a follower asks it on the worker's behalf, over its link.
    let relayed = grant(&a.clients[fi], &task).await.expect("a follower relays the request");
    let issued: coffer_node::manager::grants::GrantBody =
        postcard::from_bytes(&base64::engine::general_purpose::STANDARD.decode(&relayed.body).expect("b64"))
            .expect("body");
    assert_eq!(issued.node_id, a.id, "issued to the caller");
    assert_eq!(redeem(&a.clients[fi], &relayed).await.expect("the relayed grant redeems").secrets.len(), 1);
    let g = grant(&a.clients[li], &task).await.expect("the leader issues");
    // And only for the caller's own tasks, asked at the leader or through a follower.
    for i in [li, fi] {
        assert_eq!(
            grant(&b.clients[i], &task).await.expect_err("grant for another's task").code(),
            Some(ErrorCode::PermissionDenied)
        );
    }
    // A worker cannot pose as a manager relaying for another node.
    let posed: Result<serde_json::Value, _> =
        b.clients[li].post("/raft/grants", &serde_json::json!({ "node": a.id, "tasks": [task] })).await;
    assert_eq!(posed.expect_err("a worker relayed").code(), Some(ErrorCode::PermissionDenied));

    // The right node redeems at any manager (a follower here).
    let ok = redeem(&a.clients[fi], &g).await.expect("redeem");
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(&ok.secrets[0].data).expect("b64"), b"grant-value");

    // Another worker's certificate.
    refused(redeem(&b.clients[fi], &g).await, "issued to another node");

    // Altered: a flipped byte in the body; forged: signed with some other key.
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut body = b64.decode(&g.body).expect("b64");
    let last = body.len() - 1;
    body[last] ^= 1;
    let altered = Grant { body: b64.encode(&body), ..g.clone() };
    assert_eq!(redeem(&a.clients[fi], &altered).await.expect_err("altered").code(), Some(ErrorCode::PermissionDenied));
    let forged = {
        let body: coffer_node::manager::grants::GrantBody =
            postcard::from_bytes(&b64.decode(&g.body).expect("b64")).expect("body");
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        coffer_node::manager::grants::sign(&key, &body).expect("sign")
    };
    refused(redeem(&a.clients[fi], &forged).await, "bad signature");

    // Expired (3 s TTL).
    eventually("the grant to expire", Duration::from_secs(20), || async {
        matches!(redeem(&a.clients[fi], &g).await, Err(e) if e.to_string().contains("expired")).then_some(())
    })
    .await
    .expect("expired grants are refused");

    // The task moves: a grant for it, issued before the move, is refused after.
    let before_move = grant(&a.clients[li], &task).await.expect("fresh grant");
    let upd = ServiceUpdate { constraints: Some(vec![format!("node.id=={}", b.id)]), ..Default::default() };
    admin.update_service("svc", &upd).await.expect("move the task");
    let moved = task_of(&admin, "svc", b.id).await;
    assert_eq!(moved, task, "the same task, now on B");
    refused(redeem(&a.clients[fi], &before_move).await, "moved");
    // Refusals are audited where they happened, with the caller, the task and the reason.
    let log = std::fs::read_to_string(c.managers[fi].dir.join("audit.log")).unwrap_or_default();
    let refusals: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["outcome"] == "refused")
        .collect();
    assert!(
        refusals.iter().any(|r| r["node"].as_u64() == Some(a.id)
            && r["task"] == task.as_str()
            && r["reason"].as_str().is_some_and(|why| why.contains("moved"))),
        "the refused redemption is not in the audit log: {refusals:?}"
    );
    assert!(!log.contains("grant-value"), "a value in the audit log");

    // A deposed leader's grant, once the new leader's authority is committed.
    let old = grant(&b.clients[li], &task).await.expect("grant from the old leader");
    let mut c = c;
    c.managers[li].kill();
    let survivor = c.admin(fi);
    let new_leader = eventually("a new leader", DEADLINE, || async {
        survivor.status().await.ok().and_then(|s| s.leader_id).filter(|&l| l != leader)
    })
    .await
    .expect("new leader");
    let ni = c.index_of(new_leader).expect("index");
    // The new leader commits its authority when it first issues a grant.
    let fresh =
        eventually("a grant from the new leader", DEADLINE, || async { grant(&b.clients[ni], &task).await.ok() })
            .await
            .expect("new grant");
    let other = (0..3).find(|&i| i != li && i != ni).expect("third manager");
    refused(redeem(&b.clients[other], &old).await, "newer leader term");
    redeem(&b.clients[other], &fresh).await.expect("the new leader's grant works");

    // A removed node's certificate is refused, grant or not.
    c.admin(ni).remove(b.id).await.expect("remove B");
    let e = redeem(&b.clients[other], &fresh).await.expect_err("removed node redeems");
    assert_eq!(e.code(), Some(ErrorCode::PermissionDenied));
    assert!(e.to_string().contains("removed"), "{e}");
}

/// Found by the fault harness: a grant named the versions the leader saw and was refused
/// once the task's versions changed, so rotations faster than a grant's round trip voided
/// every grant before its redemption and workers fell ever further behind. A grant issued
/// before a rotation now redeems the rotated version, never the old one, and never a secret
/// whose reference was dropped since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_issued_before_a_rotation_redeems_the_new_version_never_the_old() {
    let c = Cluster::start(bin(), 3, &[]).await.expect("cluster");
    let admin = c.admin(0);
    let token = admin.rotate_token(NodeRole::Worker).await.expect("token").token;
    let a = raw_worker(&c, &token).await;
    admin.create_secret("hot", b"HOT-v1", BTreeMap::new()).await.expect("secret");
    admin.create_service(&on_node(a.id, "hot")).await.expect("service");
    let task = task_of(&admin, "svc", a.id).await;
    let leader = c.leader_seen_by(0).await.expect("leader");
    let li = c.index_of(leader).expect("leader index");
    let fi = (li + 1) % 3;
    let g = grant(&a.clients[li], &task).await.expect("grant for version 1");

    let v2 = admin.rotate_secret("hot", b"HOT-v2").await.expect("rotate").version;
    eventually("the task to be given version 2", DEADLINE, || async {
        let t = admin.service_tasks("svc").await.ok()?.into_iter().next()?;
        (t.secret_versions.iter().map(|(_, v)| *v).collect::<Vec<_>>() == vec![v2]).then_some(())
    })
    .await
    .expect("task updated");
    let got = redeem(&a.clients[fi], &g).await.expect("a rotation does not void the grant");
    let b64 = base64::engine::general_purpose::STANDARD;
    assert_eq!(got.secrets.len(), 1);
    assert_eq!((got.secrets[0].version, b64.decode(&got.secrets[0].data).expect("b64")), (v2, b"HOT-v2".to_vec()));
    let log = std::fs::read_to_string(c.managers[fi].dir.join("audit.log")).unwrap_or_default();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().expect("audited")).expect("json");
    assert_eq!(last["secrets"][0][1], v2, "the audit names the version returned: {last}");

    // The reference goes: the same grant returns nothing of it.
    let upd = ServiceUpdate { secret_rm: vec!["hot".into()], ..Default::default() };
    admin.update_service("svc", &upd).await.expect("drop the reference");
    let none = redeem(&a.clients[fi], &g).await.expect("the task is still the node's");
    assert!(none.secrets.is_empty(), "a dropped reference was returned: {:?}", none.secrets.len());
}
