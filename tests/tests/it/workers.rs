//! Workers: a service's secrets land exactly on the workers of its tasks, with the right
//! owner and mode; rotations reach running workers; tasks move off dead or drained
//! workers; files survive the leader's loss; and no file outside the secrets dirs ever
//! holds a value.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use coffer_api::cluster::Availability;
use coffer_api::services::{SecretRefSpec, ServiceCreate, ServiceUpdate};
use coffer_tests::{eventually, Cluster, WorkerProc, DEADLINE};

use crate::bin;

fn service(name: &str, replicas: u32, secret: &str, target: &str) -> ServiceCreate {
    ServiceCreate {
        name: name.into(),
        replicas: Some(replicas),
        constraints: vec![],
        secrets: vec![SecretRefSpec {
            source: secret.into(),
            target: Some(target.into()),
            uid: Some(1234),
            gid: Some(2345),
            mode: Some(0o440),
            version: None,
        }],
        labels: BTreeMap::new(),
        run: Default::default(),
    }
}

/// The workers whose `<service>.<slot>/<target>` holds `value`, for any slot.
fn holders(workers: &[WorkerProc], svc: &str, target: &str, value: &[u8]) -> Vec<u64> {
    workers
        .iter()
        .filter(|w| task_dirs(w, svc).iter().any(|d| std::fs::read(d.join(target)).ok().as_deref() == Some(value)))
        .map(|w| w.id)
        .collect()
}

fn task_dirs(w: &WorkerProc, svc: &str) -> Vec<PathBuf> {
    std::fs::read_dir(&w.secrets)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{svc}.")))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn leak_forms(value: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine;
    let mut forms = vec![value.to_vec(), value.iter().map(|b| format!("{b:02x}")).collect::<String>().into_bytes()];
    for pad in 0..3 {
        let mut v = vec![b'x'; pad];
        v.extend_from_slice(value);
        let enc = base64::engine::general_purpose::STANDARD.encode(&v);
        let start = (pad * 4).div_ceil(3) + 1;
        forms.push(enc.as_bytes()[start..enc.len() - 4].to_vec());
    }
    forms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_land_on_their_tasks_workers_follow_rotations_and_never_leak() {
    let mut c = Cluster::start(bin(), 3, &[]).await.expect("cluster");
    let mut workers = c.start_workers(3, &[]).await.expect("workers");
    let admin = c.admin(1);
    let canary = b"COFFER-WORKER-CANARY-91c4e2f07d".to_vec();
    admin.create_secret("db_password", &canary, BTreeMap::new()).await.expect("secret");
    admin.create_service(&service("api", 2, "db_password", "conf/db")).await.expect("service");

    let on = eventually("the secret on two workers", DEADLINE, || async {
        let h = holders(&workers, "api", "conf/db", &canary);
        (h.len() == 2).then_some(h)
    })
    .await
    .expect("delivered");
    let tasks = admin.service_tasks("api").await.expect("ps");
    let mut placed: Vec<u64> = tasks.iter().filter_map(|t| t.node_id).collect();
    placed.sort();
    let mut holding = on.clone();
    holding.sort();
    assert_eq!(placed, holding, "files are where `service ps` says the tasks are");
    for w in workers.iter().filter(|w| on.contains(&w.id)) {
        let dir = &task_dirs(w, "api")[0];
        let meta = std::fs::metadata(dir.join("conf/db")).expect("file");
        assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (1234, 2345, 0o440));
    }
    let idle = workers.iter().find(|w| !on.contains(&w.id)).expect("a worker without the service");
    assert!(task_dirs(idle, "api").is_empty(), "a worker without a task has the service's files");
    let idle_id = idle.id;

    // Rotation reaches the running workers: same processes, new content.
    let pids: Vec<u32> = workers.iter().map(|w| w.pid()).collect();
    let v2 = b"COFFER-WORKER-CANARY-91c4e2f07d-v2".to_vec();
    admin.rotate_secret("db_password", &v2).await.expect("rotate");
    eventually("the rotation on both workers", DEADLINE, || async {
        (holders(&workers, "api", "conf/db", &v2).len() == 2).then_some(())
    })
    .await
    .expect("rotated");
    assert_eq!(workers.iter().map(|w| w.pid()).collect::<Vec<_>>(), pids);
    assert!(workers.iter_mut().all(|w| w.alive()), "a worker restarted");

    // Dropping the reference removes the file; removing the service removes the directory.
    let audit_lines = |c: &Cluster| -> Vec<String> {
        c.managers
            .iter()
            .flat_map(|m| {
                std::fs::read_to_string(m.dir.join("audit.log"))
                    .unwrap_or_default()
                    .lines()
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let before_rm = audit_lines(&c).len();
    let secret_id = admin.secret("db_password").await.expect("inspect").id;
    let update = ServiceUpdate { secret_rm: vec!["db_password".into()], ..Default::default() };
    admin.update_service("api", &update).await.expect("secret-rm");
    eventually("the file to go", DEADLINE, || async {
        workers.iter().all(|w| task_dirs(w, "api").iter().all(|d| !d.join("conf/db").exists())).then_some(())
    })
    .await
    .expect("file removed");
    // No redemption after the reference was dropped covered the dropped secret.
    for line in audit_lines(&c).iter().skip(before_rm) {
        assert!(!line.contains(&secret_id), "a value was sent for a reference already dropped: {line}");
    }
    admin.remove_service("api").await.expect("service rm");
    eventually("the task directories to go", DEADLINE, || async {
        workers.iter().all(|w| task_dirs(w, "api").is_empty()).then_some(())
    })
    .await
    .expect("dirs removed");

    // The worker that never had a task never redeemed anything: no audit record names it.
    let mut audited = 0;
    for m in &c.managers {
        let log = std::fs::read_to_string(m.dir.join("audit.log")).unwrap_or_default();
        for line in log.lines() {
            let rec: serde_json::Value = serde_json::from_str(line).expect("audit record is JSON");
            assert_ne!(rec["node"].as_u64(), Some(idle_id), "the idle worker redeemed a grant");
            assert!(rec["task"].is_string() && rec["secrets"].is_array());
            if rec["outcome"] == "redeemed" {
                audited += 1;
            }
        }
    }
    assert!(audited >= 4, "every redemption is audited ({audited} records)");

    // /metrics agrees: one successful redemption per audit record, across the managers;
    // the leader says so and counts the three ready workers.
    let mut redeemed = 0u64;
    let mut leaders = 0;
    for i in 0..3 {
        let text = c.admin(i).metrics().await.expect("metrics");
        let value = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()))
                .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}")) as u64
        };
        redeemed += value("coffer_redemptions_ok_total ");
        if value("coffer_raft_is_leader ") == 1 {
            leaders += 1;
            assert_eq!(value("coffer_workers_ready "), 3, "{text}");
        }
        assert!(!text.contains("COFFER-WORKER-CANARY"), "a value in /metrics");
    }
    assert_eq!(leaders, 1);
    assert_eq!(redeemed, audited as u64, "redemptions counted by /metrics vs audit records");

    // No file the managers or workers wrote outside the secrets dirs holds a value. Stop
    // them first (SIGKILL: the files as a thief would find them), so nothing moves while
    // the files are read.
    for m in c.managers.iter_mut() {
        m.kill();
    }
    for w in workers.iter_mut() {
        w.kill();
    }
    let skip: Vec<PathBuf> = workers.iter().map(|w| w.secrets.clone()).collect();
    let files: Vec<PathBuf> = coffer_tests::files_under(c.root.path())
        .into_iter()
        .filter(|p| !skip.iter().any(|s| p.starts_with(s)))
        .collect();
    assert!(files.iter().any(|f| f.ends_with("audit.log")));
    for f in &files {
        let bytes = std::fs::read(f).expect("read");
        for value in [&canary, &v2] {
            for form in leak_forms(value) {
                assert!(
                    !bytes.windows(form.len()).any(|w| w == form.as_slice()),
                    "{} holds a secret value",
                    f.display()
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_move_off_drained_and_dead_workers() {
    let c = Cluster::start(bin(), 3, &["--worker-heartbeat-ms", "300"]).await.expect("cluster");
    let mut workers = c.start_workers(3, &[]).await.expect("workers");
    let admin = c.admin(0);
    admin.create_secret("token", b"value-1", BTreeMap::new()).await.expect("secret");
    admin.create_service(&service("web", 1, "token", "t")).await.expect("service");
    let first = eventually("the task placed", DEADLINE, || async {
        holders(&workers, "web", "t", b"value-1").first().copied()
    })
    .await
    .expect("placed");

    // Drain: the task moves, the drained worker (alive) removes its files.
    admin.set_availability(first, Availability::Drain).await.expect("drain");
    let second = eventually("the task to move off the drained worker", DEADLINE, || async {
        let h = holders(&workers, "web", "t", b"value-1");
        (h.len() == 1 && h[0] != first).then(|| h[0])
    })
    .await
    .expect("moved");

    // Kill the worker that has it now: after missed heartbeats it is down, the task moves
    // to the last active worker, which receives the secret.
    let i = workers.iter().position(|w| w.id == second).expect("worker");
    workers[i].kill();
    let third = eventually("the task to move off the dead worker", DEADLINE, || async {
        let live: Vec<&WorkerProc> = workers.iter().filter(|w| w.id != second).collect();
        live.iter().find(|w| w.id != first && !task_dirs(w, "web").is_empty()).map(|w| w.id)
    })
    .await
    .expect("moved again");
    assert!(third != first && third != second);
    let n = admin.node(second).await.expect("node");
    assert_eq!(n.status, coffer_api::cluster::NodeStatus::Down);

    // The dead worker comes back: the files of the task that left it meanwhile go.
    let (dir, secrets) = (workers[i].dir.clone(), workers[i].secrets.clone());
    assert!(!task_dirs(&workers[i], "web").is_empty(), "the killed worker's files stay while it is down");
    workers[i] = WorkerProc::restart(bin(), &dir, &secrets).expect("restart the worker");
    eventually("the restarted worker to drop the task that moved", DEADLINE, || async {
        task_dirs(&workers[i], "web").is_empty().then_some(())
    })
    .await
    .expect("stale files removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_keep_their_files_through_leader_loss_and_get_later_rotations() {
    let mut c = Cluster::start(bin(), 3, &[]).await.expect("cluster");
    let on_change = "echo \"$COFFER_SERVICE\" >> \"$COFFER_TASK_DIR.changes\"";
    let workers = c.start_workers(2, &["--on-change", on_change]).await.expect("workers");
    let admin = c.admin(0);
    admin.create_secret("cfg", b"before", BTreeMap::new()).await.expect("secret");
    admin.create_service(&service("app", 2, "cfg", "cfg")).await.expect("service");
    eventually("delivery", DEADLINE, || async {
        (holders(&workers, "app", "cfg", b"before").len() == 2).then_some(())
    })
    .await
    .expect("delivered");

    let leader = c.leader_seen_by(0).await.expect("leader");
    let li = c.index_of(leader).expect("index");
    c.managers[li].kill();
    assert_eq!(holders(&workers, "app", "cfg", b"before").len(), 2, "files vanished with the leader");

    let alive = (li + 1) % 3;
    let survivor = c.admin(alive);
    eventually("a rotation after the leader's loss", DEADLINE, || async {
        survivor.rotate_secret("cfg", b"after").await.ok()
    })
    .await
    .expect("rotate");
    eventually("the rotation on both workers", DEADLINE, || async {
        (holders(&workers, "app", "cfg", b"after").len() == 2).then_some(())
    })
    .await
    .expect("rotation arrived");
    // --on-change ran after the first delivery and after the rotation, on each worker.
    for w in &workers {
        let changes = eventually("the on-change command to run twice", DEADLINE, || async {
            let dir = task_dirs(w, "app").into_iter().next()?;
            let log =
                std::fs::read_to_string(dir.with_extension(format!("{}.changes", dir.extension()?.to_str()?))).ok()?;
            (log.lines().count() >= 2).then_some(log)
        })
        .await
        .expect("on-change ran");
        assert!(changes.lines().all(|l| l == "app"), "{changes}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_joins_through_a_follower_and_is_listed_where_it_joined_from() {
    let c = Cluster::start(bin(), 3, &[]).await.expect("cluster");
    let leader = c.leader_seen_by(0).await.expect("leader");
    let follower = (c.index_of(leader).expect("leader") + 1) % 3;
    let admin = c.admin(follower);
    let token = admin.rotate_token(coffer_api::cluster::NodeRole::Worker).await.expect("token").token;
    let dir = c.root.path().join("w-through-follower");
    let w = WorkerProc::join(bin(), &dir, &token, &c.managers[follower].addr, &[]).expect("join through a follower");
    let node = admin.node(w.id).await.expect("the worker's record");
    // A worker dials out only: its address is the one its join came from, not 0.0.0.0:0.
    assert_eq!(node.addr, "127.0.0.1", "{node:?}");
    assert_eq!(node.role, coffer_api::cluster::NodeRole::Worker);
    assert!(node.joined_at.ends_with('Z') && node.joined_at.starts_with("20"), "RFC 3339: {}", node.joined_at);
}

/// Runs `cmd` as `uid`:`gid` with no supplementary groups; whether it succeeded.
fn as_user(uid: u32, gid: u32, cmd: &[&str]) -> bool {
    std::process::Command::new("setpriv")
        .args([format!("--reuid={uid}"), format!("--regid={gid}"), "--clear-groups".into()])
        .args(cmd)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("setpriv (util-linux) runs")
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_local_user_can_neither_read_a_secret_nor_list_a_task_directory() {
    let c = Cluster::start(bin(), 1, &[]).await.expect("cluster");
    let workers = c.start_workers(1, &[]).await.expect("worker");
    let admin = c.admin(0);
    admin.create_secret("db_password", b"local-user-canary", Default::default()).await.expect("secret");
    // The service's user is uid 4242; the default mode is 0400.
    let spec = SecretRefSpec {
        uid: Some(4242),
        gid: Some(4242),
        mode: None,
        ..service("api", 1, "db_password", "db").secrets[0].clone()
    };
    admin
        .create_service(&ServiceCreate { secrets: vec![spec], ..service("api", 1, "db_password", "db") })
        .await
        .expect("service");
    let w = &workers[0];
    eventually("the file", DEADLINE, || async { w.read("api.0", "db").map(|_| ()) }).await.expect("delivered");
    let dir = w.secrets.join("api.0");
    let file = dir.join("db");
    let (file_s, dir_s, root_s) =
        (file.to_str().expect("utf-8"), dir.to_str().expect("utf-8"), w.secrets.to_str().expect("utf-8"));
    let meta = std::fs::metadata(&file).expect("stat");
    assert_eq!((meta.uid(), meta.mode() & 0o777), (4242, 0o400));
    assert_eq!(std::fs::metadata(&dir).expect("stat").mode() & 0o777, 0o711);
    assert_eq!(std::fs::metadata(&w.secrets).expect("stat").mode() & 0o777, 0o711);
    // The service's user reads its file; nobody else reads it or lists a directory.
    assert!(as_user(4242, 4242, &["cat", file_s]), "the owner cannot read its secret");
    for (uid, gid) in [(65534, 65534), (1000, 1000)] {
        assert!(!as_user(uid, gid, &["cat", file_s]), "uid {uid} read the secret");
        assert!(!as_user(uid, gid, &["ls", dir_s]), "uid {uid} listed the task directory");
        assert!(!as_user(uid, gid, &["ls", root_s]), "uid {uid} listed the secrets dir");
    }
    assert!(
        !as_user(4242, 4242, &["sh", "-c", &format!("ln -s /etc {dir_s}/planted")]),
        "the service's user wrote into its task directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_trusts_operator_labels_and_a_live_hostname_cannot_be_claimed() {
    use coffer_api::cluster::{JoinRequest, JoinResponse, NodeRole, NodeUpdate};
    let c = Cluster::start(bin(), 1, &[]).await.expect("cluster");
    let workers = c.start_workers(2, &[]).await.expect("workers");
    let admin = c.admin(0);
    let token = admin.rotate_token(NodeRole::Worker).await.expect("token").token;

    // A joiner claiming a live worker's hostname is refused, and nothing joins.
    let taken = admin.node(workers[0].id).await.expect("node").hostname;
    let key = coffer_node::trust::pki::NodeKey::generate().expect("key");
    let ca = std::fs::read_to_string(c.client_dir().join("ca.pem")).expect("ca");
    let anon = coffer_api::client::Client::with_tls(&ca, None, &c.managers[0].addr).expect("client");
    let req = JoinRequest {
        token: token.clone(),
        role: NodeRole::Worker,
        csr_pem: key.csr_pem(&[]).expect("csr"),
        advertise_addr: "0.0.0.0:0".into(),
        hostname: taken.clone(),
    };
    let e = anon.post::<_, JoinResponse>("/v1/join", &req).await.expect_err("a live node's hostname");
    assert_eq!(e.code(), Some(coffer_api::error::ErrorCode::AlreadyExists), "{e}");
    assert_eq!(admin.nodes().await.expect("nodes").len(), 3, "nothing joined");

    // Labels are the operator's: a worker's certificate cannot set them, not even its own.
    let raw = coffer_tests::raw_worker(&c, &token).await;
    let own = NodeUpdate { label_add: BTreeMap::from([("tier".into(), "db".into())]), ..Default::default() };
    let e = raw.clients[0].patch::<_, serde_json::Value>(&format!("/v1/nodes/{}", raw.id), &own).await;
    assert_eq!(e.expect_err("a worker labels itself").code(), Some(coffer_api::error::ErrorCode::PermissionDenied));
    drop(raw);
    admin.update_node(workers[1].id, &own).await.expect("the operator labels a worker");
    assert_eq!(admin.node(workers[1].id).await.expect("node").labels.get("tier").map(String::as_str), Some("db"));

    // A service placed on the label lands on that worker only.
    admin.create_secret("db_password", b"label-placed", Default::default()).await.expect("secret");
    let svc =
        ServiceCreate { constraints: vec!["node.labels.tier==db".into()], ..service("db", 2, "db_password", "pw") };
    admin.create_service(&svc).await.expect("service");
    eventually("both replicas on the labelled worker", DEADLINE, || async {
        let tasks = admin.service_tasks("db").await.ok()?;
        (tasks.len() == 2 && tasks.iter().all(|t| t.node_id == Some(workers[1].id))).then_some(())
    })
    .await
    .expect("placed by label");
    // Removing the label takes the service off it: no worker qualifies any more.
    let rm = NodeUpdate { label_rm: vec!["tier".into()], ..Default::default() };
    admin.update_node(workers[1].id, &rm).await.expect("label removed");
    eventually("the replicas to leave", DEADLINE, || async {
        admin.service_tasks("db").await.ok()?.iter().all(|t| t.node_id.is_none()).then_some(())
    })
    .await
    .expect("unplaced");
}
