//! Autolock on real processes: a restarted manager keeps no key that opens its store and
//! serves nothing but health and unlock until it is given the unlock key; a whole cluster
//! restarted waits for a quorum of unlocks; a key backend unlocks without a person; after a
//! rotation the old key opens nothing; and the unlock key is in no file, log or metric.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use coffer_api::client::Client;
use coffer_api::error::ErrorCode;
use coffer_raft_store::seal::{KeyBytes, LocalKek};
use coffer_tests::{eventually, files_under, Cluster, ManagerProc, DEADLINE};

use crate::bin;

const CANARY: &str = "CANARY-autolock-51c2";

/// `coffer cluster unlock -` at `addr`, the key on standard input.
fn unlock(c: &Cluster, addr: &str, key: &str) -> std::process::Output {
    unlock_with(&c.client_dir(), addr, key)
}

/// [`unlock`] with the admin bundle of `client_dir`.
fn unlock_with(client_dir: &Path, addr: &str, key: &str) -> std::process::Output {
    let mut child = Command::new(bin())
        .args(["cluster", "unlock", "-"])
        .env("COFFER_ADDR", addr)
        .env("COFFER_CLIENT_DIR", client_dir)
        .env("COFFER_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn coffer");
    child.stdin.take().expect("stdin").write_all(key.as_bytes()).expect("write the key");
    child.wait_with_output().expect("coffer finished")
}

fn unlock_ok(c: &Cluster, addr: &str, key: &str) {
    let out = unlock(c, addr, key);
    assert!(out.status.success(), "unlock: {}", String::from_utf8_lossy(&out.stderr));
}

/// Waits until every manager's store is sealed under unlock key `generation`.
async fn sealed_under(admin: &Client, n: usize, generation: u64) {
    eventually("every store sealed under the unlock key", DEADLINE, || async {
        let s = admin.status().await.ok()?;
        (s.autolock == (generation > 0)
            && s.members.len() == n
            && s.members.iter().all(|m| m.unlock_generation.unwrap_or(0) == generation))
        .then_some(())
    })
    .await
    .expect("re-wrapped");
}

/// No file in `dir` opens the store of `dir`: neither as a key file nor as an unlock key.
fn no_file_opens_the_store(dir: &Path) {
    let store = dir.join("raft");
    for f in files_under(dir) {
        if f.starts_with(&store) {
            continue;
        }
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(!bytes.windows(13).any(|w| w == b"COFFER-KEY-1-"), "{} holds an unlock key", f.display());
        if let Some(key) = KeyBytes::from_slice(&bytes) {
            for kind in ["key-file", "unlock-key"] {
                let kek = LocalKek::new(&key, kind);
                assert!(
                    coffer_raft_store::check_kek(&store, &kek).is_err(),
                    "{} opens the store as a {kind} key",
                    f.display()
                );
            }
        }
    }
}

/// A copy of a locked manager's data dir yields no certificate the cluster takes from a
/// manager: its own TLS key does not open under the key file beside it, and the locked
/// certificate that does is refused as a caller by the live manager at `live`.
async fn no_manager_credential_in(dir: &Path, ca: &str, live: &str) {
    use coffer_node::local::data_dir::DataDir;
    use coffer_node::trust::credentials;
    let d = DataDir::new(dir);
    let kek = coffer_node::local::key_file::load(&d.key_file()).expect("the key file");
    assert!(credentials::load_credentials(&d, &kek).is_err(), "the manager's TLS key opens under the key file");
    let (cert, key) = credentials::load_locked_cert(&d, &kek).expect("readable").expect("a locked certificate");
    let certified = coffer_api::tls::certified_key(&cert, key.expose()).expect("a key pair");
    let resolver = Arc::new(coffer_api::tls::StaticCert(certified));
    let as_locked = Client::with_tls(ca, Some(resolver.clone()), live).expect("client");
    let e = as_locked.status().await.expect_err("a locked certificate is no caller");
    assert_ne!(e.code(), Some(ErrorCode::Locked), "{e}");
    // Nor a manager's: the Raft endpoints (a proposal, a leader operation) refuse it.
    let raw =
        coffer_api::tls::http_client(coffer_api::tls::client_config(ca, Some(resolver)).expect("tls")).expect("client");
    for path in ["/raft/op", "/raft/propose", "/raft/append"] {
        match raw.post(format!("https://{live}{path}")).body(vec![0u8; 16]).send().await {
            Err(_) => {}
            Ok(r) => assert!(r.status().is_client_error(), "{path} answered {}", r.status()),
        }
    }
}

/// The bytes and names of every file in `dir` but RocksDB's info logs.
fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    files_under(dir)
        .into_iter()
        .filter(|p| !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("LOG")))
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap_or_default()))
        .collect()
}

fn assert_key_nowhere(root: &Path, key: &str) {
    let body = &key.as_bytes()[13..];
    for f in files_under(root) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(!bytes.windows(body.len()).any(|w| w == body), "{} holds the unlock key", f.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_manager_is_locked_until_it_is_given_the_key() {
    let mut c = Cluster::start_with_init(bin(), 3, &["--autolock"], &[]).await.expect("cluster");
    let key = c.tokens.unlock_key.clone().expect("init --autolock prints the unlock key");
    let admin = c.admin(0);
    sealed_under(&admin, 3, 1).await;
    admin.create_secret("db", CANARY.as_bytes(), BTreeMap::new()).await.expect("create");

    let dir = c.managers[2].dir.clone();
    c.managers[2].kill();
    no_file_opens_the_store(&dir);
    let ca = std::fs::read_to_string(c.client_dir().join("ca.pem")).expect("ca");
    no_manager_credential_in(&dir, &ca, &c.managers[0].addr).await;
    c.managers[2] = ManagerProc::restart_locked(bin(), &dir, &[]).expect("restart, locked");
    let addr = c.managers[2].addr.clone();
    let locked = c.admin(2);
    for e in [locked.secrets().await.map(drop), locked.status().await.map(drop), locked.ready().await] {
        let e = e.expect_err("a locked manager answers");
        assert_eq!(e.code(), Some(ErrorCode::Locked), "{e}");
    }
    let anon = Client::with_tls(&ca, None, &addr).expect("client");
    assert_eq!(anon.ready().await.expect_err("not ready").code(), Some(ErrorCode::Locked));
    let out = coffer_tests::coffer(bin(), &["secret", "ls"], &addr, &c.client_dir());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("coffer cluster unlock"));
    // The others keep serving writes, and see it locked.
    admin.create_secret("while-locked", b"v", BTreeMap::new()).await.expect("a write without it");
    let s = admin.status().await.expect("status");
    let me = s.members.iter().find(|m| m.addr == addr).expect("member");
    assert_eq!(me.locked, Some(true), "{s:?}");

    // The key as an argument is refused, and not echoed.
    let out = coffer_tests::coffer(bin(), &["cluster", "unlock", &key], &addr, &c.client_dir());
    assert_eq!(out.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&key[13..]), "the key was echoed");

    // A wrong key is refused, paced, and changes nothing on disk.
    let before = contents(&dir);
    let out = unlock(&c, &addr, "COFFER-KEY-1-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("UnlockFailed"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = unlock(&c, &addr, &key);
    assert!(String::from_utf8_lossy(&out.stderr).contains("too soon"), "attempts are paced");
    assert_eq!(contents(&dir), before, "a wrong key changed the data dir");

    // The right key (once the pause is over): it serves and catches up.
    eventually("an unlock", DEADLINE, || async { unlock(&c, &addr, &key).status.success().then_some(()) })
        .await
        .expect("unlocked");
    c.managers[2].wait_serving().expect("serving");
    let unlocked = c.admin(2);
    eventually("the write made while it was locked", DEADLINE, || async { unlocked.secret("while-locked").await.ok() })
        .await
        .expect("caught up");
    assert!(unlocked.metrics().await.expect("metrics").contains("coffer_locked 0"));
    c.managers[2].kill();
    assert_key_nowhere(c.root.path(), &key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restarted_whole_waits_for_a_quorum_of_unlocks() {
    let mut c = Cluster::start_with_init(bin(), 3, &["--autolock"], &[]).await.expect("cluster");
    let key = c.tokens.unlock_key.clone().expect("unlock key");
    let admin = c.admin(0);
    sealed_under(&admin, 3, 1).await;
    for i in 0..5 {
        admin.create_secret(&format!("s{i}"), CANARY.as_bytes(), BTreeMap::new()).await.expect("create");
    }
    for m in &mut c.managers {
        m.kill();
    }
    for i in 0..3 {
        let dir = c.managers[i].dir.clone();
        c.managers[i] = ManagerProc::restart_locked(bin(), &dir, &[]).expect("locked");
    }
    let first = c.admin(0).with_timeout(std::time::Duration::from_secs(3));
    assert_eq!(first.secrets().await.expect_err("locked").code(), Some(ErrorCode::Locked));
    unlock_ok(&c, &c.managers[0].addr.clone(), &key);
    c.managers[0].wait_serving().expect("serving");
    assert!(first.create_secret("one-of-three", b"v", BTreeMap::new()).await.is_err(), "a write without a quorum");
    unlock_ok(&c, &c.managers[1].addr.clone(), &key);
    c.managers[1].wait_serving().expect("serving");
    let admin = c.admin(1);
    eventually("a write with two of three", DEADLINE, || async {
        admin.create_secret("two-of-three", b"v", BTreeMap::new()).await.ok()
    })
    .await
    .expect("quorum");
    unlock_ok(&c, &c.managers[2].addr.clone(), &key);
    c.managers[2].wait_serving().expect("serving");
    let third = c.admin(2);
    for i in 0..5 {
        third.secret(&format!("s{i}")).await.expect("nothing lost");
    }
    third.secret("two-of-three").await.expect("the write made meanwhile");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_command_unlocks_a_restarted_manager_and_a_failing_one_leaves_it_locked() {
    let mut c = Cluster::start_with_init(bin(), 1, &["--autolock"], &[]).await.expect("cluster");
    let key = c.tokens.unlock_key.clone().expect("unlock key");
    sealed_under(&c.admin(0), 1, 1).await;
    c.admin(0).create_secret("db", CANARY.as_bytes(), BTreeMap::new()).await.expect("create");
    let dir = c.managers[0].dir.clone();

    // A failing backend: reported, and the manager stays locked.
    c.managers[0].kill();
    c.managers[0] = ManagerProc::restart_locked(bin(), &dir, &["--unlock-key-command", "echo no key here >&2; exit 7"])
        .expect("locked");
    eventually("the failure reported", DEADLINE, || async {
        c.managers[0].log().contains("key backend did not unlock").then_some(())
    })
    .await
    .expect("reported");
    assert!(c.managers[0].log().contains("no key here"), "the backend's stderr is in the log");
    assert_eq!(c.admin(0).ready().await.expect_err("locked").code(), Some(ErrorCode::Locked));

    // SIGTERM while locked is a clean stop (a service manager must not count it a failure).
    let status = c.managers[0].terminate().expect("stop while locked");
    assert!(status.success(), "{status}");

    // A backend that gives the key: no person needed. (The key comes from a file outside the
    // data dir, standing in for a KMS; the command line holds no secret.)
    let outside = tempfile::tempdir().expect("tempdir");
    let kf = outside.path().join("unlock-key");
    std::fs::write(&kf, &key).expect("write");
    let cmd = format!("cat {}", kf.display());
    c.managers[0] = ManagerProc::restart_locked(bin(), &dir, &["--unlock-key-command", &cmd]).expect("locked");
    c.managers[0].wait_serving().expect("unlocked by the command");
    c.admin(0).secret("db").await.expect("serves");
    c.managers[0].kill();
    assert_key_nowhere(c.root.path(), &key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rotation_the_old_key_unlocks_nothing() {
    let mut c = Cluster::start_with_init(bin(), 3, &["--autolock"], &[]).await.expect("cluster");
    let old = c.tokens.unlock_key.clone().expect("unlock key");
    let admin = c.admin(0);
    sealed_under(&admin, 3, 1).await;
    // Manager 3 is down during the rotation: it still opens with the old key.
    let dir3 = c.managers[2].dir.clone();
    c.managers[2].kill();
    let rotated = admin.rotate_unlock_key().await.expect("rotate");
    let new = rotated.key.clone().expect("a new key");
    assert_eq!(rotated.generation, 2);
    eventually("the running managers re-wrapped", DEADLINE, || async {
        let s = admin.status().await.ok()?;
        (s.members.iter().filter(|m| m.unlock_generation == Some(2)).count() == 2).then_some(())
    })
    .await
    .expect("re-wrapped");
    c.managers[2] = ManagerProc::restart_locked(bin(), &dir3, &[]).expect("locked");
    let addr3 = c.managers[2].addr.clone();
    assert!(!unlock(&c, &addr3, &new).status.success(), "the new key before it applied the rotation");
    eventually("the old key, once the pause is over", DEADLINE, || async {
        unlock(&c, &addr3, &old).status.success().then_some(())
    })
    .await
    .expect("unlocked with the old key");
    c.managers[2].wait_serving().expect("serving");
    sealed_under(&admin, 3, 2).await;

    // Every manager now opens with the new key only.
    for i in 0..3 {
        let dir = c.managers[i].dir.clone();
        c.managers[i].kill();
        no_file_opens_the_store(&dir);
        c.managers[i] = ManagerProc::restart_locked(bin(), &dir, &[]).expect("locked");
        let addr = c.managers[i].addr.clone();
        let out = unlock(&c, &addr, &old);
        assert!(!out.status.success(), "the old key unlocked manager {i}");
        eventually("the new key", DEADLINE, || async { unlock(&c, &addr, &new).status.success().then_some(()) })
            .await
            .expect("unlocked with the new key");
        c.managers[i].wait_serving().expect("serving");
        // Its TLS key had followed its store to the new key (no fallback was needed).
        assert!(!c.managers[i].log().contains("issued itself"), "{}", c.managers[i].log());
    }
    // Turning autolock off puts each store back under its key file: restarts need no key.
    c.admin(0).set_autolock(false).await.expect("off");
    sealed_under(&c.admin(0), 3, 0).await;
    let dir = c.managers[1].dir.clone();
    c.managers[1].kill();
    // Its TLS key is back under the key file, and the locked certificate is gone.
    let d = coffer_node::local::data_dir::DataDir::new(&dir);
    let kek = coffer_node::local::key_file::load(&d.key_file()).expect("the key file");
    coffer_node::trust::credentials::load_credentials(&d, &kek).expect("the TLS key opens under the key file");
    assert!(!d.locked_cert().exists(), "a locked certificate without autolock");
    c.managers[1] = ManagerProc::restart(bin(), &dir, &[]).expect("restarts unlocked");
    let metrics = c.admin(0).metrics().await.expect("metrics");
    for m in &mut c.managers {
        m.kill();
    }
    for k in [&old, &new] {
        assert!(!metrics.contains(&k[13..]));
        assert_key_nowhere(c.root.path(), k);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_autolocked_backup_comes_with_a_new_unlock_key() {
    let mut c = Cluster::start_with_init(bin(), 1, &["--autolock"], &[]).await.expect("cluster");
    let old = c.tokens.unlock_key.clone().expect("unlock key");
    let admin = c.admin(0);
    sealed_under(&admin, 1, 1).await;
    admin.create_secret("db", CANARY.as_bytes(), BTreeMap::new()).await.expect("create");
    let outside = tempfile::tempdir().expect("tempdir");
    let kf = outside.path().join("backup.key");
    let file = outside.path().join("cluster.backup");
    let out = coffer_tests::coffer(bin(), &["snapshot", "keygen", kf.to_str().expect("utf-8")], "-", outside.path());
    assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
    let args = ["snapshot", "save", file.to_str().expect("utf-8"), "--key-file", kf.to_str().expect("utf-8")];
    let out = coffer_tests::coffer(bin(), &args, &c.managers[0].addr, &c.client_dir());
    assert!(out.status.success(), "save: {}", String::from_utf8_lossy(&out.stderr));
    c.managers[0].kill();

    let dir = c.root.path().join("restored");
    let (mut restored, tokens) = ManagerProc::restore(bin(), &dir, &file, &kf).expect("restore");
    let new = tokens.unlock_key.clone().expect("a restore of an autolocked backup prints a new unlock key");
    assert_ne!(new, old);
    let restored_admin = Client::from_dir(&dir.join("client"), &restored.addr).expect("admin bundle");
    sealed_under(&restored_admin, 1, 2).await;
    restored.kill();
    no_file_opens_the_store(&dir);
    let mut restored = ManagerProc::restart_locked(bin(), &dir, &[]).expect("locked");
    let unlock_at = |key: &str| unlock_with(&dir.join("client"), &restored.addr, key).status.success();
    assert!(!unlock_at(&old), "the backup's unlock key opened the restored store");
    eventually("the new key", DEADLINE, || async { unlock_at(&new).then_some(()) }).await.expect("unlocked");
    restored.wait_serving().expect("serving");
    let restored_admin = Client::from_dir(&dir.join("client"), &restored.addr).expect("admin bundle");
    eventually("the restored secret", DEADLINE, || async { restored_admin.secret("db").await.ok() })
        .await
        .expect("restored");
    restored.kill();
    for k in [&old, &new] {
        assert_key_nowhere(c.root.path(), k);
        assert_key_nowhere(outside.path(), k);
    }
}
