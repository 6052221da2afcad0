//! A cluster forms, replicates, survives the loss of its leader, catches a lagging manager
//! up by snapshot, changes membership, renews certificates, and runs as `coffer dev`.

use std::collections::BTreeMap;
use std::time::Duration;

use coffer_api::cluster::{Availability, RaftRole};
use coffer_api::error::ErrorCode;
use coffer_tests::{eventually, send_signal, Cluster, ManagerProc, DEADLINE};

use crate::bin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_managers_form_and_a_write_through_a_follower_is_everywhere() {
    let c = Cluster::start(bin(), 3, &[]).await.expect("cluster");
    let leader = c.leader_seen_by(0).await.expect("leader");
    let follower = (0..3).find(|&i| c.managers[i].id != leader).expect("a follower");
    let target = c.managers[(follower + 1) % 3].id;

    c.admin(follower).set_availability(target, Availability::Drain).await.expect("write through a follower");

    for i in 0..3 {
        let n = c.admin(i).node(target).await.expect("read");
        assert_eq!(n.availability, Availability::Drain, "manager {i} does not see the write");
    }
    let nodes = c.admin(0).nodes().await.expect("ls");
    assert_eq!(nodes.len(), 3);
    assert_eq!(nodes.iter().filter(|n| n.raft == RaftRole::Leader).count(), 1);
    let status = c.admin(follower).status().await.expect("status");
    assert_eq!(status.leader_id, Some(leader));
    assert!(status.healthy);
    assert_eq!(status.members.len(), 3);
}

/// Writes sent to a follower at once travel to the leader together; each still gets its
/// own answer: one create of a name wins and the rest are told it exists, and concurrent
/// rotations get one version each. `/metrics` shows where the writes' time went, how long
/// the API requests took, and that managers called each other over their links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_a_follower_each_get_their_own_answer() {
    let c = Cluster::start(bin(), 3, &[]).await.expect("cluster");
    let leader = c.leader_seen_by(0).await.expect("leader");
    let f = (0..3).find(|&i| c.managers[i].id != leader).expect("a follower");
    let li = c.index_of(leader).expect("leader index");
    c.admin(f).create_secret("rotated", b"v1", BTreeMap::new()).await.expect("create through a follower");

    let mut calls = Vec::new();
    for i in 0..60 {
        let admin = c.admin(f);
        calls.push(tokio::spawn(async move {
            match i {
                0..20 => {
                    admin.create_secret(&format!("s{i}"), b"value", BTreeMap::new()).await.map(|v| ("own", v.version))
                }
                20..40 => {
                    admin.create_secret("contested", b"value", BTreeMap::new()).await.map(|v| ("contested", v.version))
                }
                _ => admin.rotate_secret("rotated", format!("v{i}").as_bytes()).await.map(|v| ("rotated", v.version)),
            }
        }));
    }
    let (mut won, mut exists, mut versions) = (0, 0, Vec::new());
    for call in calls {
        match call.await.expect("join") {
            Ok(("own", v)) => assert_eq!(v, 1),
            Ok(("contested", _)) => won += 1,
            Ok((_, v)) => versions.push(v),
            Err(e) if e.code() == Some(ErrorCode::AlreadyExists) => exists += 1,
            Err(e) => panic!("a forwarded write failed: {e}"),
        }
    }
    assert_eq!((won, exists), (1, 19), "one create of a name wins, the others are told it exists");
    versions.sort_unstable();
    assert_eq!(versions, (2..=21).collect::<Vec<u32>>(), "each rotation gets a version of its own");
    let all = c.admin(li).secrets().await.expect("list on the leader");
    assert_eq!(all.len(), 22, "20 own names, the contested one and the rotated one");
    assert_eq!(all.iter().find(|s| s.name == "rotated").expect("rotated").versions.len(), 21);

    let stage =
        |text: &str, name: &str| text.contains(&format!("coffer_write_stage_seconds_count{{stage=\"{name}\"}}"));
    let on_follower = c.admin(f).metrics().await.expect("follower metrics");
    for name in ["forward", "seal", "log_append", "follower_append", "apply"] {
        assert!(stage(&on_follower, name), "the follower shows stage {name}");
    }
    let on_leader = c.admin(li).metrics().await.expect("leader metrics");
    for name in ["propose", "log_append", "log_sync", "replicate", "apply"] {
        assert!(stage(&on_leader, name), "the leader shows stage {name}");
    }
    // Each API request is timed by its route's pattern, never by a secret's name; calls
    // between managers are not API requests.
    assert!(
        on_follower.contains("coffer_http_request_seconds_count{method=\"POST\",route=\"/v1/secrets\"} 41\n"),
        "the follower timed the 41 creates sent to it"
    );
    assert!(on_follower.contains("route=\"/v1/secrets/{secret}/rotate\""), "rotations are timed by their pattern");
    for (who, text) in [("follower", &on_follower), ("leader", &on_leader)] {
        assert!(!text.contains("contested") && !text.contains("rotated"), "the {who}'s metrics name no secret");
        assert!(!text.contains("route=\"/raft/"), "the {who} counts no Raft call as an API request");
    }
    // Raft RPC and forwarded writes went over the managers' links, none over HTTP.
    for (who, text) in [("follower", &on_follower), ("leader", &on_leader)] {
        assert!(text.contains("coffer_peer_calls_total{over=\"link\"}"), "the {who} calls over its links");
        assert!(!text.contains("over=\"http\""), "the {who} fell back to HTTP");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_leader_elects_another_and_the_restarted_manager_catches_up() {
    let mut c = Cluster::start(bin(), 3, &[]).await.expect("cluster");
    let old = c.leader_seen_by(0).await.expect("leader");
    let dead = c.index_of(old).expect("leader index");
    c.managers[dead].kill();
    let alive = (dead + 1) % 3;

    let admin = c.admin(alive);
    let new = eventually("a new leader", DEADLINE, || async {
        admin.status().await.ok().and_then(|s| s.leader_id).filter(|&l| l != old)
    })
    .await
    .expect("new leader");
    assert_ne!(new, old);
    let target = c.managers[alive].id;
    eventually("a committed write without the old leader", DEADLINE, || async {
        admin.set_availability(target, Availability::Pause).await.ok()
    })
    .await
    .expect("write");

    let dir = c.managers[dead].dir.clone();
    let extra = c.extra_args().into_iter().map(String::from).collect::<Vec<_>>();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    c.managers[dead] = ManagerProc::restart(bin(), &dir, &extra).expect("restart with manager run");
    let restarted = c.admin(dead);
    let seen = eventually("the restarted manager to catch up", DEADLINE, || async {
        restarted.node(target).await.ok().filter(|n| n.availability == Availability::Pause)
    })
    .await
    .expect("caught up");
    assert_eq!(seen.id, target);
    let s = restarted.status().await.expect("status");
    assert_eq!(s.leader_id, Some(new), "the restarted manager follows the new leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_that_missed_purged_entries_catches_up_by_snapshot() {
    let tuning = ["--raft-snapshot-every", "20", "--raft-keep-after-snapshot", "0"];
    let mut c = Cluster::start(bin(), 3, &tuning).await.expect("cluster");
    let leader = c.leader_seen_by(0).await.expect("leader");
    let lagging = (0..3).find(|&i| c.managers[i].id != leader).expect("a follower");
    c.managers[lagging].kill();

    let live = (0..3).find(|&i| i != lagging).expect("live manager");
    let admin = c.admin(live);
    let target = c.managers[live].id;
    for n in 0..60 {
        let a = if n % 2 == 0 { Availability::Drain } else { Availability::Active };
        admin.set_availability(target, a).await.expect("write");
    }
    admin.set_availability(target, Availability::Pause).await.expect("last write");

    let dir = c.managers[lagging].dir.clone();
    c.managers[lagging] = ManagerProc::restart(bin(), &dir, &tuning).expect("restart");
    let restarted = c.admin(lagging);
    eventually("the lagging manager to catch up", DEADLINE, || async {
        restarted.node(target).await.ok().filter(|n| n.availability == Availability::Pause)
    })
    .await
    .expect("caught up");
    assert!(
        c.managers[lagging].log().contains("installed snapshot"),
        "the lagging manager caught up without a snapshot install:\n{}",
        c.managers[lagging].log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_cluster_compact_a_new_manager_catches_up_from_the_snapshot() {
    let tuning = ["--raft-keep-after-snapshot", "0"];
    let mut c = Cluster::start(bin(), 3, &tuning).await.expect("cluster");
    let admin = c.admin(0);
    for i in 0..20 {
        admin.create_secret(&format!("before-{i}"), b"v", Default::default()).await.expect("create");
    }
    let applied = admin.status().await.expect("status").applied_index.expect("applied");

    // Only an admin may compact: not a token, not a worker, not anonymous.
    let ca = std::fs::read_to_string(c.client_dir().join("ca.pem")).expect("ca");
    let ro = admin.create_api_token("ro", coffer_api::tokens::TokenScope::ReadOnly).await.expect("token");
    let ro = coffer_api::client::Client::with_token(&ca, &ro.token, &c.managers[0].addr).expect("client");
    // A token is no cluster credential at all (as for `/v1/nodes`).
    assert_eq!(ro.compact().await.expect_err("token").code(), Some(ErrorCode::Unauthenticated));
    let anon = coffer_api::client::Client::with_tls(&ca, None, &c.managers[0].addr).expect("client");
    assert_eq!(anon.compact().await.expect_err("anonymous").code(), Some(ErrorCode::Unauthenticated));
    let w = coffer_tests::raw_worker(&c, &c.tokens.worker).await;
    assert_eq!(w.clients[0].compact().await.expect_err("worker").code(), Some(ErrorCode::PermissionDenied));

    let out =
        coffer_tests::coffer(bin(), &["cluster", "compact", "--format", "json"], &c.managers[0].addr, &c.client_dir());
    assert!(out.status.success(), "cluster compact failed: {}", String::from_utf8_lossy(&out.stderr));
    let done: Vec<coffer_api::cluster::Compacted> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(done.len(), 3, "every manager compacted: {done:?}");
    for d in &done {
        assert!(d.snapshot_index >= applied, "a snapshot older than what was applied: {d:?}");
        assert_eq!(d.purged_index, Some(d.snapshot_index), "with nothing kept, the log is purged up to it: {d:?}");
    }

    // The log no longer starts at 1: a new manager can only catch up from the snapshot.
    let dir = c.root.path().join("m4");
    let m4 = ManagerProc::join(bin(), &dir, &c.tokens.manager, &c.managers[1].addr, &tuning).expect("join");
    let fourth = coffer_api::client::Client::from_dir(&c.client_dir(), &m4.addr).expect("client");
    eventually("the new manager to hold every secret", DEADLINE, || async {
        let names = fourth.secrets().await.ok()?;
        (names.len() == 20).then_some(())
    })
    .await
    .expect("caught up");
    assert!(m4.log().contains("installed snapshot"), "the new manager replayed the log instead:\n{}", m4.log());
    c.managers.push(m4);
    // And the cluster goes on: a write after the compaction is everywhere.
    admin.create_secret("after", b"v", Default::default()).await.expect("create after");
    let fourth = coffer_api::client::Client::from_dir(&c.client_dir(), &c.managers[3].addr).expect("client");
    eventually("the write after to reach the new manager", DEADLINE, || async { fourth.secret("after").await.ok() })
        .await
        .expect("replicated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managers_are_demoted_promoted_and_the_last_one_is_kept() {
    let c = Cluster::start(bin(), 3, &[]).await.expect("cluster");
    let admin = c.admin(0);
    let leader = c.leader_seen_by(0).await.expect("leader");
    let other = c.managers.iter().map(|m| m.id).find(|&id| id != leader).expect("other");

    admin.demote(other).await.expect("demote");
    assert_eq!(admin.node(other).await.expect("node").raft, RaftRole::Learner);
    assert_eq!(admin.status().await.expect("status").members.iter().filter(|m| m.voter).count(), 2);
    admin.promote(other).await.expect("promote");
    assert_eq!(admin.node(other).await.expect("node").raft, RaftRole::Voter);

    // A one-manager cluster refuses to lose its last voter, and changes nothing.
    let single = Cluster::start(bin(), 1, &[]).await.expect("single");
    let a = single.admin(0);
    let id = single.managers[0].id;
    for r in [a.demote(id).await, a.remove(id).await, a.remove_forced(id).await] {
        assert_eq!(r.expect_err("refused").code(), Some(ErrorCode::FailedPrecondition));
    }
    let n = a.node(id).await.expect("still there");
    assert_eq!(n.raft, RaftRole::Leader);
    assert!(!n.removed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_before_they_expire() {
    // 10-second certificates renew between 5 and 8 seconds.
    let issued = tokio::time::Instant::now();
    let c = Cluster::start(bin(), 2, &["--cert-validity-secs", "10"]).await.expect("cluster");
    let workers = c.start_workers(1, &[]).await.expect("a worker renews too");
    let admin = c.admin(0);
    let before: Vec<(u64, String)> =
        admin.nodes().await.expect("ls").into_iter().map(|n| (n.id, n.cert_serial)).collect();
    eventually("every manager to renew", DEADLINE, || async {
        let now = admin.nodes().await.ok()?;
        now.iter().all(|n| before.iter().any(|(id, serial)| *id == n.id && *serial != n.cert_serial)).then_some(())
    })
    .await
    .expect("renewed");
    // Not synchronisation: the wall clock must pass the first certificates' expiry (they
    // were issued after `issued`, valid 10 s) to show the cluster runs on the new ones.
    tokio::time::sleep_until(
        issued + Duration::from_secs(11) + (tokio::time::Instant::now() - issued).min(Duration::from_secs(20)),
    )
    .await;
    let target = c.managers[1].id;
    eventually("a write after the old certificates expired", DEADLINE, || async {
        c.admin(1).set_availability(target, Availability::Drain).await.ok()
    })
    .await
    .expect("write");
    let a1 = c.admin(1);
    eventually("manager 2 healthy on its new certificate", DEADLINE, || async {
        a1.status().await.ok().filter(|s| s.healthy)
    })
    .await
    .expect("healthy");
    // The worker, on its renewed certificate, is still in session (heartbeats count).
    let w = admin.node(workers[0].id).await.expect("worker");
    assert_eq!(w.status, coffer_api::cluster::NodeStatus::Ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coffer_dev_runs_a_cluster_and_stops_on_ctrl_c() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::TempDir::new().expect("tempdir");
    let mut child = std::process::Command::new(bin())
        .args(["dev", "--format=json", "--dir"])
        .arg(dir.path())
        .env("COFFER_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn coffer dev");
    // If an assertion fails, the cluster must not outlive the test.
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if self.0 != 0 {
                send_signal(self.0, libc::SIGKILL);
            }
        }
    }
    let mut guard = KillOnDrop(child.id());
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let ready: serde_json::Value = loop {
        let line = rx.recv_timeout(DEADLINE).expect("coffer dev printed its ready event");
        let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if event["event"] == "ready" {
            break event;
        }
    };
    let addr = ready["managers"][0].as_str().expect("a manager address").to_string();
    let mut secrets_dirs: Vec<String> = ready["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .filter_map(|w| w["secrets_dir"].as_str().map(str::to_string))
        .collect();
    let admin = coffer_api::client::Client::from_dir(&dir.path().join("manager-1/client"), &addr).expect("bundle");
    let nodes = admin.nodes().await.expect("node ls against coffer dev");
    let managers = nodes.iter().filter(|n| n.role == coffer_api::cluster::NodeRole::Manager).count();
    let workers: Vec<u64> =
        nodes.iter().filter(|n| n.role == coffer_api::cluster::NodeRole::Worker).map(|n| n.id).collect();
    assert_eq!((managers, workers.len()), (3, 2));
    // The README's tour: a secret lands in both workers' directories.
    admin.create_secret("db_password", b"tour-value", Default::default()).await.expect("secret");
    let svc = coffer_api::services::ServiceCreate {
        name: "api".into(),
        replicas: Some(2),
        constraints: vec![],
        secrets: vec![coffer_api::services::SecretRefSpec {
            source: "db_password".into(),
            target: None,
            uid: None,
            gid: None,
            mode: Some(0o400),
            version: None,
        }],
        labels: Default::default(),
        run: Default::default(),
    };
    admin.create_service(&svc).await.expect("service");
    secrets_dirs.sort();
    secrets_dirs.dedup();
    assert_eq!(secrets_dirs.len(), 2, "coffer dev names both workers' secrets dirs");
    let dirs: Vec<std::path::PathBuf> = secrets_dirs.iter().map(std::path::PathBuf::from).collect();
    coffer_tests::eventually("the secret in both workers' dirs", DEADLINE, || async {
        let found = dirs
            .iter()
            .filter(|d| {
                std::fs::read_dir(d).into_iter().flatten().flatten().any(|e| {
                    std::fs::read(e.path().join("db_password")).ok().as_deref() == Some(b"tour-value".as_slice())
                })
            })
            .count();
        (found == 2).then_some(())
    })
    .await
    .expect("delivered by coffer dev's workers");

    send_signal(child.id(), libc::SIGINT);
    let deadline = std::time::Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "coffer dev did not stop on Ctrl-C");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    guard.0 = 0; // reaped: the pid is no longer ours to signal
    assert!(status.success(), "coffer dev exited with {status}");
    // A given --dir is kept for a restart, but the workers' secrets on tmpfs are not.
    for d in &dirs {
        assert!(!d.exists(), "{} outlived coffer dev", d.display());
    }
    assert!(dir.path().join("manager-1/node.json").exists(), "the --dir is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_that_lost_its_quorum_still_stops_on_sigterm() {
    let mut c = Cluster::start(bin(), 3, &["--worker-heartbeat-ms", "100"]).await.expect("cluster");
    let workers = c.start_workers(1, &[]).await.expect("worker");
    let leader = c.leader_seen_by(0).await.expect("leader");
    let li = c.index_of(leader).expect("leader index");
    let admin = c.admin(li);
    let wid = workers[0].id;
    eventually("the worker to be ready", DEADLINE, || async {
        (admin.node(wid).await.ok()?.status == coffer_api::cluster::NodeStatus::Ready).then_some(())
    })
    .await
    .expect("worker ready");
    // The leader loses both followers: its scheduler's next decision (the worker, which
    // can no longer heartbeat, goes down) waits for a quorum that never comes.
    for i in (0..3).filter(|&i| i != li) {
        c.managers[i].kill();
    }
    drop(workers);
    // A write of our own waits for the lost quorum too. The scheduler's decision may never
    // come: a leader re-elected in a new term just before the kills (a busy machine) first
    // waits for a read index, which needs the quorum, before it decides anything.
    let pending = {
        let admin = c.admin(li);
        tokio::spawn(async move { admin.create_secret("pending", b"v", BTreeMap::new()).await })
    };
    // (On a busy machine leadership may have moved just before the kills: then the one left
    // is a follower without a leader, which must stop on SIGTERM just as well.)
    eventually("a proposal the lost quorum never commits", DEADLINE, || async {
        let s = admin.status().await.ok()?;
        (s.last_log_index > s.committed_index || s.leader_id != Some(leader)).then_some(())
    })
    .await
    .expect("the leader proposed a decision, or lost its leadership");
    let status = c.managers[li].terminate().expect("the leader stops within the deadline without a quorum");
    assert!(status.success(), "{status:?}: {}", c.managers[li].log());
    assert!(pending.await.expect("join").is_err(), "a write was acknowledged without a quorum");
}

/// Found by the fault harness: a worker cut off together with the leader waited out its
/// 15 s grant and 40 s poll timeouts on a pooled connection that was dead, so files lagged
/// 16 s and more after the heal. Clients now ping their HTTP/2 connections while requests
/// are in flight: a request to a peer that stopped answering fails within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_to_a_manager_that_stopped_answering_fails_long_before_its_timeout() {
    let c = Cluster::start(bin(), 1, &[]).await.expect("cluster");
    let admin = c.admin(0).with_timeout(std::time::Duration::from_secs(40));
    admin.status().await.expect("a first call opens the pooled connection");
    let pid = c.managers[0].pid();
    send_signal(pid, libc::SIGSTOP);
    // A stop reaches every thread of the process soon, not at once: wait until it has.
    let stopped = || {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
        tasks
            .map(|t| std::fs::read_to_string(t.path().join("stat")).unwrap_or_default())
            .all(|stat| stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('T')))
    };
    eventually("the manager stopped", DEADLINE, || async { stopped().then_some(()) }).await.expect("stopped");
    let began = std::time::Instant::now();
    let e = admin.status().await.expect_err("a paused manager answers nothing");
    let took = began.elapsed();
    send_signal(c.managers[0].pid(), libc::SIGCONT);
    assert!(took < std::time::Duration::from_secs(20), "failed only after {took:?} (its timeout is 40 s): {e}");
    eventually("the manager again", DEADLINE, || async { admin.status().await.ok() }).await.expect("answers");
}
