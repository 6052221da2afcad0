//! Backups and disaster recovery on real processes: a backup saved while clients write,
//! restored after every data dir is gone; backups that are altered, cut short or under
//! another key, refused; a survivor forced into a new cluster after quorum loss; scheduled
//! snapshots; and no plaintext value in any file a run wrote.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use coffer_api::client::Client;
use coffer_api::error::ErrorCode;
use coffer_tests::{coffer, eventually, files_under, service_of, Cluster, ManagerProc, WorkerProc, DEADLINE};

use crate::bin;

const CANARY: &str = "CANARY-backup-7f3a9e";

fn value(name: &str, version: u32) -> Vec<u8> {
    format!("{CANARY}/{name}/v{version}").into_bytes()
}

fn keygen(dir: &Path, name: &str) -> PathBuf {
    let kf = dir.join(name);
    let out = coffer(bin(), &["snapshot", "keygen", kf.to_str().expect("utf-8")], "-", dir);
    assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
    kf
}

fn save(c: &Cluster, i: usize, file: &Path, kf: &Path) -> std::process::Output {
    let args = ["snapshot", "save", file.to_str().expect("utf-8"), "--key-file", kf.to_str().expect("utf-8")];
    coffer(bin(), &args, &c.managers[i].addr, &c.client_dir())
}

/// No file under `root` holds the canary (the plaintext of every value this test wrote).
fn assert_no_canary(roots: &[&Path]) {
    for root in roots {
        for f in files_under(root) {
            let bytes = std::fs::read(&f).unwrap_or_default();
            assert!(
                !bytes.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()),
                "{} holds a plaintext value",
                f.display()
            );
        }
    }
}

/// Runs a node command that must refuse to start; kills it (and fails) if it serves.
fn refused_start(args: &[&str]) -> std::process::Output {
    let mut child = std::process::Command::new(bin())
        .args(args)
        .env("COFFER_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn coffer");
    let deadline = std::time::Instant::now() + DEADLINE;
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("coffer {args:?} started instead of refusing");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// `coffer snapshot restore` that must be refused (it would serve otherwise).
fn refused_restore(backup: &Path, key: &Path, dir: &Path) -> std::process::Output {
    let utf8 = |p: &Path| p.to_str().expect("utf-8").to_string();
    let (b, k, d) = (utf8(backup), utf8(key), utf8(dir));
    refused_start(&["snapshot", "restore", &b, "--key-file", &k, "--data-dir", &d, "--listen", "127.0.0.1:0"])
}

fn admin_of(client_dir: &Path, addr: &str) -> Client {
    Client::from_dir(client_dir, addr).expect("admin bundle")
}

/// Waits until `admin`'s cluster has `n` voters and a leader.
async fn voters(admin: &Client, n: usize) {
    eventually("the managers to vote", DEADLINE, || async {
        let s = admin.status().await.ok()?;
        (s.members.iter().filter(|m| m.voter).count() == n && s.healthy).then_some(())
    })
    .await
    .expect("voters");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_saved_under_writes_restores_into_a_new_cluster() {
    let c = Cluster::start(bin(), 3, &[]).await.expect("cluster");
    let admin = c.admin(0);
    for i in 0..10 {
        let name = format!("s{i}");
        admin.create_secret(&name, &value(&name, 1), BTreeMap::new()).await.expect("create");
        for v in 2..=3 {
            admin.rotate_secret(&name, &value(&name, v)).await.expect("rotate");
        }
    }
    let mut svc = service_of("api", 1, "s0", vec![]);
    svc.secrets[0].target = Some("db".into());
    svc.secrets[0].mode = Some(0o400);
    admin.create_service(&svc).await.expect("service");
    let mut workers = c.start_workers(1, &[]).await.expect("worker");
    let v3 = value("s0", 3);
    eventually("the worker's file", DEADLINE, || async {
        workers[0].read("api.0", "db").filter(|b| *b == v3).map(|_| ())
    })
    .await
    .expect("delivered");

    // Clients keep writing through every manager while the backup is taken; each write
    // acknowledged before the save began must be in it.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, std::time::Instant)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..3 {
        let (client, stop, acked) = (c.admin(w), stop.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("w{w}-{n}");
                if client.create_secret(&name, &value(&name, 1), BTreeMap::new()).await.is_ok() {
                    acked.lock().expect("lock").push((name, std::time::Instant::now()));
                }
                n += 1;
            }
        }));
    }
    eventually("writes under way", DEADLINE, || async { (acked.lock().expect("lock").len() >= 5).then_some(()) })
        .await
        .expect("writes");
    let outside = tempfile::tempdir().expect("tempdir");
    let kf = keygen(outside.path(), "backup.key");
    let file = outside.path().join("cluster.backup");
    let save_began = std::time::Instant::now();
    // Through a follower: it exports after a read index.
    let leader = c.leader_seen_by(0).await.expect("leader");
    let follower = (c.index_of(leader).expect("leader") + 1) % 3;
    let out = save(&c, follower, &file, &kf);
    assert!(out.status.success(), "save: {}", String::from_utf8_lossy(&out.stderr));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let before: Vec<String> =
        acked.lock().expect("lock").iter().filter(|(_, at)| *at < save_began).map(|(n, _)| n.clone()).collect();
    assert!(!before.is_empty());

    // Inspect needs no key and tells what is inside.
    let out =
        coffer(bin(), &["snapshot", "inspect", file.to_str().expect("utf-8"), "--format", "json"], "-", outside.path());
    assert!(out.status.success(), "inspect: {}", String::from_utf8_lossy(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(info["secrets"].as_u64().expect("secrets") >= 10 + before.len() as u64, "{info}");
    assert_eq!(info["services"], 1, "{info}");
    assert_eq!(info["digest"], "intact");

    // Everything is lost: every manager and its data dir.
    // The operator's copy of the old admin bundle survives (it lives on their machine).
    let old_client_dir = outside.path().join("old-client");
    std::fs::create_dir_all(&old_client_dir).expect("mkdir");
    for f in ["ca.pem", "client.pem", "client.key"] {
        std::fs::copy(c.client_dir().join(f), old_client_dir.join(f)).expect("copy the bundle");
    }
    let root = c.root.path().to_path_buf();
    let old_managers: Vec<u64> = c.managers.iter().map(|m| m.id).collect();
    let mut c = c;
    for m in &mut c.managers {
        m.kill();
    }
    workers[0].kill();
    for i in 1..=3 {
        std::fs::remove_dir_all(root.join(format!("m{i}"))).expect("remove data dir");
    }

    let (restored, tokens) =
        ManagerProc::restore(bin(), &root.join("r1"), &file, &kf).expect("restore into a new data dir");
    let new_client_dir = root.join("r1").join("client");
    let mut managers = vec![restored];
    for i in 2..=3 {
        let extra: [&str; 0] = [];
        managers.push(
            ManagerProc::join(bin(), &root.join(format!("r{i}")), &tokens.manager, &managers[0].addr, &extra)
                .expect("join the restored cluster"),
        );
    }
    let admin = admin_of(&new_client_dir, &managers[1].addr);
    voters(&admin, 3).await;

    for i in 0..10 {
        let s = admin.secret(&format!("s{i}")).await.expect("restored secret");
        assert_eq!(s.latest_version, 3, "every version of s{i}");
        assert_eq!(s.versions.len(), 3);
    }
    for name in &before {
        admin.secret(name).await.unwrap_or_else(|e| panic!("{name}, acknowledged before the save, is lost: {e}"));
    }
    let api = admin.service("api").await.expect("restored service");
    assert_eq!(api.secrets.len(), 1);
    assert_eq!(admin.secret("s0").await.expect("s0").used_by, vec!["api".to_string()]);
    // The old admin bundle is of the same CA and its credential was restored: it still works.
    admin_of(&old_client_dir, &managers[2].addr).secrets().await.expect("the old bundle works");
    // The old managers are removed: their certificates are refused by the new cluster.
    for id in &old_managers {
        assert!(admin.node(*id).await.expect("an old manager's record").removed, "old manager {id:x}");
    }
    let nodes = admin.nodes().await.expect("nodes");
    assert_eq!(nodes.iter().filter(|n| n.role == coffer_api::cluster::NodeRole::Manager).count(), 3, "{nodes:?}");

    // The old worker, pointed at the new managers, gets its files again.
    let w = workers.remove(0);
    let (wdir, secrets) = (w.dir.clone(), w.secrets.clone());
    std::mem::forget(w); // its secrets dir is reused below; the process is already dead
    std::fs::remove_dir_all(secrets.join("api.0")).expect("clear the worker's files");
    let w = WorkerProc::restart_with(bin(), &wdir, &secrets, &["--join", &managers[0].addr]).expect("worker run");
    eventually("the worker's file from the restored cluster", DEADLINE, || async {
        w.read("api.0", "db").filter(|b| *b == v3).map(|_| ())
    })
    .await
    .expect("redelivered");
    assert_no_canary(&[&root, outside.path()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_altered_cut_short_or_under_another_key_is_refused() {
    let c = Cluster::start(bin(), 1, &[]).await.expect("cluster");
    let admin = c.admin(0);
    admin.create_secret("db", &value("db", 1), BTreeMap::new()).await.expect("create");
    let outside = tempfile::tempdir().expect("tempdir");
    let kf = keygen(outside.path(), "a.key");
    let other = keygen(outside.path(), "b.key");
    let file = outside.path().join("good.backup");
    let out = save(&c, 0, &file, &kf);
    assert!(out.status.success(), "save: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!save(&c, 0, &file, &kf).status.success(), "a save over an existing file");
    let good = std::fs::read(&file).expect("read");

    let flipped = outside.path().join("flipped.backup");
    let mut bytes = good.clone();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&flipped, &bytes).expect("write");
    let cut = outside.path().join("cut.backup");
    std::fs::write(&cut, &good[..good.len() - 100]).expect("write");
    let passphrase = outside.path().join("pass.key");
    std::fs::write(&passphrase, "correct horse battery staple\n").expect("write");
    std::fs::set_permissions(&passphrase, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");

    for (what, backup, key, expect) in [
        ("another key", &file, &other, "key does not open"),
        ("a passphrase for a keyed file", &file, &passphrase, "key does not open"),
        ("a flipped byte", &flipped, &kf, "corrupt"),
        ("a truncated file", &cut, &kf, "corrupt"),
    ] {
        let dir = c.root.path().join(format!("restore-{}", what.replace(' ', "-")));
        let out = refused_restore(backup, key, &dir);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert!(err.contains(expect), "{what}: {err}");
        assert!(!dir.exists(), "{what}: the data dir was written");
    }
    // Inspect checks the digest too.
    for bad in [&flipped, &cut] {
        let out = coffer(bin(), &["snapshot", "inspect", bad.to_str().expect("utf-8")], "-", outside.path());
        assert!(!out.status.success());
    }
    // A data dir that is not empty is refused, and left as it was.
    let busy = c.root.path().join("busy");
    std::fs::create_dir_all(&busy).expect("mkdir");
    std::fs::write(busy.join("keep"), b"x").expect("write");
    let out = refused_restore(&file, &kf, &busy);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    assert_eq!(std::fs::read_dir(&busy).expect("ls").count(), 1);
    // A read-only API token or no certificate cannot export.
    let token = admin.create_api_token("ro", coffer_api::tokens::TokenScope::ReadOnly).await.expect("token").token;
    let ca = std::fs::read_to_string(c.client_dir().join("ca.pem")).expect("ca");
    let t = Client::with_token(&ca, &token, &c.managers[0].addr).expect("client");
    let e = t.snapshot_stream().await.expect_err("a token exports");
    assert_eq!(e.code(), Some(ErrorCode::Unauthenticated), "admin certificates only: {e}");
    let anon = Client::with_tls(&ca, None, &c.managers[0].addr).expect("client");
    assert!(anon.snapshot_stream().await.is_err(), "an anonymous client exports");
    assert_no_canary(&[c.root.path(), outside.path()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_forms_a_new_cluster_after_quorum_loss() {
    let mut c = Cluster::start(bin(), 3, &[]).await.expect("cluster");
    let admin = c.admin(0);
    for i in 0..5 {
        admin.create_secret(&format!("a{i}"), &value(&format!("a{i}"), 1), BTreeMap::new()).await.expect("create");
    }
    // One manager dies for good: a voter is removed only with --force.
    let dead = c.managers[2].id;
    c.managers[2].kill();
    let hex = format!("{dead:016x}");
    let out = coffer(bin(), &["node", "rm", &hex], &c.managers[0].addr, &c.client_dir());
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    let out = coffer(bin(), &["node", "rm", "--force", &hex], &c.managers[0].addr, &c.client_dir());
    assert!(out.status.success(), "rm --force: {}", String::from_utf8_lossy(&out.stderr));
    voters(&admin, 2).await;
    admin.create_secret("b0", &value("b0", 1), BTreeMap::new()).await.expect("write with two voters");

    // While the other voter answers, --force-new-cluster is refused.
    let dir1 = c.managers[0].dir.clone();
    c.managers[0].terminate().expect("stop m1");
    let d = dir1.to_str().expect("utf-8");
    let out = refused_start(&["manager", "run", "--data-dir", d, "--force-new-cluster"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("quorum"), "{}", String::from_utf8_lossy(&out.stderr));
    c.managers[0] = ManagerProc::restart(bin(), &dir1, &[]).expect("restart m1");
    voters(&c.admin(0), 2).await;
    c.admin(0).create_secret("b1", &value("b1", 1), BTreeMap::new()).await.expect("write");

    // The second loses its data for good: quorum is gone.
    c.managers[1].kill();
    std::fs::remove_dir_all(&c.managers[1].dir).expect("lose m2's disk");
    c.managers[0].terminate().expect("stop m1");
    c.managers[0] = ManagerProc::restart(bin(), &dir1, &["--force-new-cluster"]).expect("force a new cluster");
    voters(&c.admin(0), 1).await;
    // Run again (as after an interrupted forced start): it is already alone, so it starts.
    c.managers[0].terminate().expect("stop m1");
    c.managers[0] = ManagerProc::restart(bin(), &dir1, &["--force-new-cluster"]).expect("force again");
    let admin = c.admin(0);
    voters(&admin, 1).await;
    admin.create_secret("c0", &value("c0", 1), BTreeMap::new()).await.expect("a write on the new cluster");
    let token = admin.rotate_token(coffer_api::cluster::NodeRole::Manager).await.expect("token").token;
    let root = c.root.path().to_path_buf();
    for i in 4..=5 {
        let extra: [&str; 0] = [];
        c.managers.push(
            ManagerProc::join(bin(), &root.join(format!("m{i}")), &token, &c.managers[0].addr, &extra).expect("join"),
        );
    }
    voters(&admin, 3).await;
    let newcomer = c.admin(4);
    for name in ["a0", "a1", "a2", "a3", "a4", "b0", "b1", "c0"] {
        newcomer.secret(name).await.unwrap_or_else(|e| panic!("{name} is lost: {e}"));
    }
    newcomer.create_secret("c1", &value("c1", 1), BTreeMap::new()).await.expect("a write through a newcomer");
    // The abandoned manager is removed: were it to come back, no manager would talk to it.
    assert!(admin.node(c.managers[1].id).await.expect("m2's record").removed);
    assert_no_canary(&[&root]);
}

/// Regression: the managers a forced cluster left behind were only marked down, so when
/// they came back (a healed partition) their certificates still passed on /raft/* and
/// their leader's AppendEntries crashed the new cluster's Raft.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_managers_that_come_back_cannot_disturb_a_forced_cluster() {
    let mut c = Cluster::start(bin(), 3, &[]).await.expect("cluster");
    c.admin(0).create_secret("before", &value("before", 1), BTreeMap::new()).await.expect("create");
    c.managers[0].kill();
    c.managers[1].kill();
    let dir3 = c.managers[2].dir.clone();
    c.managers[2].terminate().expect("stop m3");
    c.managers[2] = ManagerProc::restart(bin(), &dir3, &["--force-new-cluster"]).expect("force a new cluster");
    let survivor = c.admin(2);
    voters(&survivor, 1).await;
    survivor.create_secret("after", &value("after", 1), BTreeMap::new()).await.expect("write");
    // An old manager's certificate no longer passes on Raft RPC (a body it would accept
    // would fail as garbage, with invalid_argument, after the check).
    let dir1 = coffer_node::local::data_dir::DataDir::new(&c.managers[0].dir);
    let kek = coffer_node::local::key_file::load(&dir1.key_file()).expect("kek");
    let creds = coffer_node::trust::credentials::load_credentials(&dir1, &kek).expect("creds");
    let cert = coffer_api::tls::certified_key(&creds.cert_pem, creds.key_pem.expose()).expect("cert");
    let ca = std::fs::read_to_string(c.client_dir().join("ca.pem")).expect("ca");
    let resolver = std::sync::Arc::new(coffer_api::tls::StaticCert(cert));
    let old_cert = Client::with_tls(&ca, Some(resolver), &c.managers[2].addr).expect("client");
    for rpc in ["/raft/append", "/raft/vote"] {
        match old_cert.post::<_, serde_json::Value>(rpc, &serde_json::json!({})).await {
            Err(coffer_api::client::ClientError::Api {
                code: ErrorCode::PermissionDenied | ErrorCode::Unauthenticated,
                ..
            })
            | Err(coffer_api::client::ClientError::Transport { .. }) => {}
            other => panic!("{rpc} took an old manager's certificate: {other:?}"),
        }
    }
    // The partition heals: the old two come back on their old data dirs, a quorum of the
    // old configuration between them.
    for i in 0..2 {
        let dir = c.managers[i].dir.clone();
        c.managers[i] = ManagerProc::restart(bin(), &dir, &[]).expect("an old manager restarts");
    }
    let old = c.admin(0);
    eventually("the old two elect a leader of their own", DEADLINE, || async {
        old.status().await.ok().and_then(|s| s.leader_id)
    })
    .await
    .expect("old leader");
    // Meanwhile the forced cluster keeps working, and stays alone.
    for i in 0..20 {
        survivor.create_secret(&format!("still-{i}"), b"v", BTreeMap::new()).await.expect("a write on the new cluster");
    }
    let s = survivor.status().await.expect("status");
    assert!(s.healthy && s.members.len() == 1, "{s:?}");
    assert!(!c.managers[2].exited(), "the forced cluster's manager died");
    survivor.secret("before").await.expect("kept");
    survivor.secret("after").await.expect("kept");
    assert!(c.managers[2].log().matches("panicked").next().is_none(), "{}", c.managers[2].log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_snapshots_keep_the_newest_and_each_restores() {
    let outside = tempfile::tempdir().expect("tempdir");
    let kf = keygen(outside.path(), "backup.key");
    let snaps = outside.path().join("snapshots");
    let args = [
        "--snapshot-dir",
        snaps.to_str().expect("utf-8"),
        "--snapshot-every",
        "2s",
        "--snapshot-keep",
        "2",
        "--snapshot-key-file",
        kf.to_str().expect("utf-8"),
    ];
    let c = Cluster::start(bin(), 1, &args).await.expect("cluster");
    let admin = c.admin(0);
    admin.create_secret("db", &value("db", 1), BTreeMap::new()).await.expect("create");
    let metrics = || async {
        let text: String = admin.metrics().await.ok()?;
        text.lines()
            .find(|l| l.starts_with("coffer_snapshots_written_total"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<u64>().ok())
    };
    eventually("three scheduled snapshots", DEADLINE, || async { metrics().await.filter(|n| *n >= 3) })
        .await
        .expect("snapshots written");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&snaps), 0o700, "the snapshot dir is its user's only");
    let files: Vec<PathBuf> = std::fs::read_dir(&snaps).expect("ls").flatten().map(|e| e.path()).collect();
    let finished: Vec<&PathBuf> = files.iter().filter(|p| p.extension().is_some_and(|x| x == "backup")).collect();
    assert!(finished.len() <= 2 && !finished.is_empty(), "keep 2: {files:?}");
    for (i, f) in finished.iter().enumerate() {
        assert_eq!(mode(f), 0o600, "{} is readable by others", f.display());
        let dir = c.root.path().join(format!("restored-{i}"));
        let (mut m, _) = ManagerProc::restore(bin(), &dir, f, &kf).expect("restore a scheduled snapshot");
        let a = admin_of(&dir.join("client"), &m.addr);
        voters(&a, 1).await;
        a.secret("db").await.expect("the secret is in the scheduled snapshot");
        m.terminate().expect("stop");
    }
    assert_no_canary(&[c.root.path(), outside.path()]);
}
