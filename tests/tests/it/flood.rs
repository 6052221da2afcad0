//! A flood of anonymous connections against one manager: raw TCP sockets that never speak,
//! and TLS connections that send a request's headers with a large `Content-Length` and
//! never the body. While they are held, the CLI's calls, a worker's session and Raft
//! replication to that manager keep working, and its memory stays bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_api::cluster::NodeStatus;
use coffer_tests::{eventually, Cluster, WorkerProc, DEADLINE};
use tokio::io::AsyncWriteExt;

use crate::bin;

const RAW: usize = 1000;
const SLOW_TLS: usize = 600;

/// Lets this process (and the managers it spawns) hold the flood's sockets.
fn raise_fd_limit() {
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("prlimit").args(["--pid", &pid, "--nofile=16384:16384"]).status();
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.split_whitespace().next()?.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_anonymous_connections_locks_nobody_out() {
    raise_fd_limit();
    let c = Cluster::start(bin(), 3, &[]).await.expect("cluster");
    let leader = c.leader_seen_by(0).await.expect("leader");
    let target = (c.index_of(leader).expect("leader") + 1) % 3; // a follower: Raft replicates to it
    let addr = c.managers[target].addr.clone();
    let admin = c.admin(target);
    let token = admin.rotate_token(coffer_api::cluster::NodeRole::Worker).await.expect("token").token;
    // The worker's session starts at the target manager.
    let worker = WorkerProc::join(bin(), &c.root.path().join("w-flood"), &token, &addr, &[]).expect("worker");
    let rss_before = rss_kib(c.managers[target].pid());

    // The flood: raw sockets first, then TLS connections with a promised body.
    let mut raw = Vec::new();
    for _ in 0..RAW {
        if let Ok(s) = tokio::net::TcpStream::connect(&addr).await {
            raw.push(s);
        }
    }
    let ca = std::fs::read_to_string(c.client_dir().join("ca.pem")).expect("ca");
    let tls = Arc::new(coffer_api::tls::client_config(&ca, None).expect("tls config"));
    let connector = tokio_rustls::TlsConnector::from(tls);
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut slow = Vec::new();
    for _ in 0..SLOW_TLS {
        let Ok(tcp) = tokio::net::TcpStream::connect(&addr).await else { continue };
        let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(5), connector.connect(name.clone(), tcp)).await
        else {
            continue;
        };
        let head =
            "POST /v1/secrets HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 900000\r\n\r\n{";
        if s.write_all(head.as_bytes()).await.is_ok() {
            slow.push(s);
        }
    }
    assert!(raw.len() + slow.len() >= RAW, "the flood could not even connect ({} + {})", raw.len(), slow.len());

    // And it keeps coming while everything below runs: new anonymous connections, each
    // pushing the oldest out of the anonymous budget.
    let churn_stop = tokio_util::sync::CancellationToken::new();
    let churn = {
        let (addr, stop) = (addr.clone(), churn_stop.clone());
        tokio::spawn(async move {
            let mut held = std::collections::VecDeque::new();
            let mut opened = 0u64;
            while !stop.is_cancelled() {
                if let Ok(s) = tokio::net::TcpStream::connect(&addr).await {
                    held.push_back(s);
                    opened += 1;
                }
                if held.len() > 300 {
                    held.pop_front();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            opened
        })
    };

    // While it is held: the CLI's calls through the flooded manager.
    let mut latencies = Vec::new();
    for i in 0..10 {
        let started = Instant::now();
        admin
            .create_secret(&format!("during-flood-{i}"), b"v", Default::default())
            .await
            .expect("write during the flood");
        admin.secrets().await.expect("list during the flood");
        latencies.push(started.elapsed());
    }
    latencies.sort();
    eprintln!("flood: CLI create+list through the flooded manager: median {:?}, max {:?}", latencies[5], latencies[9]);
    // Raft replication to it: a write through the leader is applied there.
    let leader_admin = c.admin(c.index_of(leader).expect("leader"));
    leader_admin.create_secret("through-the-leader", b"v", Default::default()).await.expect("leader write");
    let committed = leader_admin.status().await.expect("status").committed_index;
    eventually("the flooded follower to apply the leader's writes", DEADLINE, || async {
        (admin.status().await.ok()?.applied_index >= committed).then_some(())
    })
    .await
    .expect("replication to the flooded manager");
    // The worker's session: heartbeats keep it ready, and it gets a service's secret.
    let svc = coffer_api::services::ServiceCreate {
        name: "api".into(),
        replicas: Some(1),
        constraints: vec![],
        secrets: vec![coffer_api::services::SecretRefSpec {
            source: "through-the-leader".into(),
            target: None,
            uid: None,
            gid: None,
            mode: None,
            version: None,
        }],
        labels: Default::default(),
        run: Default::default(),
    };
    admin.create_service(&svc).await.expect("service");
    eventually("the worker's file during the flood", DEADLINE, || async {
        worker.read("api.0", "through-the-leader").filter(|v| v == b"v").map(|_| ())
    })
    .await
    .expect("delivery during the flood");
    let node = admin.node(worker.id).await.expect("worker record");
    assert_eq!(node.status, NodeStatus::Ready, "the worker's heartbeats got through");
    // A join (anonymous, like the flood) still gets in.
    let joiner = WorkerProc::join(bin(), &c.root.path().join("w-join-in-flood"), &token, &addr, &[]);
    assert!(joiner.is_ok(), "a join during the flood: {:?}", joiner.err());
    let rss_during = rss_kib(c.managers[target].pid());
    eprintln!("flood: manager RSS {rss_before} KiB before, {rss_during} KiB during");
    assert!(rss_during < rss_before + 200 * 1024, "memory grew from {rss_before} to {rss_during} KiB");
    churn_stop.cancel();
    let churned = churn.await.expect("churn");
    eprintln!("flood: {} raw + {} slow TLS held, {churned} more opened during the checks", raw.len(), slow.len());
    assert!(churned > 10, "the flood kept coming during the checks ({churned})");
    drop((raw, slow));
}
