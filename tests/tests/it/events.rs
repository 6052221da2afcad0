//! `coffer events`: a watcher cut off mid-stream (its manager killed) resumes at another
//! manager with `--since` the last index it printed, and sees every later change once;
//! an index a manager no longer knows is refused as `gone`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use coffer_api::client::Client as AdminClient;
use coffer_api::events::{ChangeEvent, EventAction, EventKind};
use coffer_api::tokens::TokenScope;
use coffer_tests::{eventually, Cluster, ManagerProc, DEADLINE};

use crate::bin;

/// `coffer events --format json ARGS` against `addr`, its lines read on a thread.
fn watch(c: &Cluster, addr: &str, args: &[&str]) -> (Child, mpsc::Receiver<ChangeEvent>) {
    watch_as(c, addr, args, None)
}

fn watch_as(c: &Cluster, addr: &str, args: &[&str], token: Option<&str>) -> (Child, mpsc::Receiver<ChangeEvent>) {
    let mut cmd = Command::new(&c.bin);
    if let Some(t) = token {
        cmd.env("COFFER_TOKEN", t);
    }
    let mut child = cmd
        .args(["events", "--format", "json"])
        .args(args)
        .env("COFFER_ADDR", addr)
        .env("COFFER_CLIENT_DIR", c.client_dir())
        .env("COFFER_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("coffer events");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let e: ChangeEvent = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not an event ({e}): {line}"));
            if tx.send(e).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Lines from `rx` until one creates a secret named `name` (or `within` passes).
fn until_created(rx: &mpsc::Receiver<ChangeEvent>, name: &str, seen: &mut Vec<ChangeEvent>, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(e) => {
                let done = e.changes.iter().any(|c| {
                    c.kind == EventKind::Secret && c.action == EventAction::Create && c.name.as_deref() == Some(name)
                });
                seen.push(e);
                if done {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

/// Creates probe secrets until the watcher on `rx` shows one: it is subscribed from then on.
async fn probe(admin: &AdminClient, rx: &mpsc::Receiver<ChangeEvent>, prefix: &str, seen: &mut Vec<ChangeEvent>) {
    let deadline = Instant::now() + DEADLINE;
    for n in 1.. {
        assert!(Instant::now() < deadline, "the watcher saw no probe: {seen:?}");
        let name = format!("{prefix}-{n}");
        admin.create_secret(&name, b"p", BTreeMap::new()).await.expect("probe");
        if until_created(rx, &name, seen, Duration::from_millis(500)) {
            return;
        }
    }
}

fn created_secrets(events: &[ChangeEvent]) -> Vec<String> {
    events
        .iter()
        .flat_map(|e| e.changes.iter())
        .filter(|c| c.kind == EventKind::Secret && c.action == EventAction::Create)
        .filter_map(|c| c.name.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_watcher_resumes_elsewhere_with_no_change_missed_or_repeated() {
    let mut c = Cluster::start(bin(), 3, &[]).await.expect("cluster");
    let leader = c.leader_seen_by(0).await.expect("leader");
    let li = c.index_of(leader).expect("index");
    let (a, b) = ((li + 1) % 3, (li + 2) % 3);
    let admin = c.admin(li);

    // Watch at follower A from now: probe until the watcher is seen to be subscribed.
    let (mut child, rx) = watch(&c, &c.managers[a].addr.clone(), &[]);
    let mut first = Vec::new();
    probe(&admin, &rx, "probe", &mut first).await;
    for name in ["s1", "s2", "s3"] {
        admin.create_secret(name, b"v", BTreeMap::new()).await.expect("create");
    }
    assert!(until_created(&rx, "s3", &mut first, DEADLINE), "s1..s3 not seen: {first:?}");
    let last = first.last().expect("events").index;
    assert!(first.windows(2).all(|w| w[0].index < w[1].index), "out of order or split: {first:?}");
    assert!(first.iter().all(|e| !e.at.is_empty() && !e.gone && !e.changes.is_empty()));

    // The stream is cut: A dies. The watcher says so and exits.
    c.managers[a].kill();
    let status = child.wait().expect("watcher exits");
    assert!(!status.success(), "the watcher ended quietly");

    for name in ["s4", "s5", "s6"] {
        admin.create_secret(name, b"v", BTreeMap::new()).await.expect("create");
    }
    let since = last.to_string();
    let (mut resumed, rx) = watch(&c, &c.managers[b].addr.clone(), &["--since", &since]);
    let mut second = Vec::new();
    assert!(until_created(&rx, "s6", &mut second, DEADLINE), "s4..s6 not seen after resuming: {second:?}");
    let _ = resumed.kill();
    assert!(second.iter().all(|e| e.index > last), "an event at or before {last} came again: {second:?}");
    assert_eq!(created_secrets(&second), vec!["s4", "s5", "s6"], "missed or repeated: {second:?}");
    let mut all = first.clone();
    all.extend(second);
    let mut indexes: Vec<u64> = all.iter().map(|e| e.index).collect();
    let before = indexes.len();
    indexes.dedup();
    assert_eq!(indexes.len(), before, "an entry was given twice");

    // A restarted manager knows only what it applied since: an older index is gone.
    let dir = c.managers[a].dir.clone();
    let extra: Vec<String> = c.extra_args().iter().map(|s| s.to_string()).collect();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    c.managers[a] = ManagerProc::restart(&c.bin, &dir, &extra).expect("restart A");
    let addr = c.managers[a].addr.clone();
    let out = eventually("A to answer", DEADLINE, || async {
        let out = coffer_tests::coffer(&c.bin, &["events", "--since", "1"], &addr, &c.client_dir());
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (!out.status.success() && err.contains("gone")).then_some(out)
    })
    .await
    .expect("gone");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));

    // A watcher whose token is revoked is cut off within seconds, and never sees nodes.
    let token = admin.create_api_token("watcher", TokenScope::ReadOnly).await.expect("token");
    let (by_token, rx) = watch_as(&c, &c.managers[li].addr.clone(), &[], Some(&token.token));
    let mut seen = Vec::new();
    probe(&admin, &rx, "tprobe", &mut seen).await;
    admin.revoke_api_token(&token.id).await.expect("revoke");
    let ended = {
        let by_token = std::sync::Mutex::new(by_token);
        eventually("the revoked token's stream to end", DEADLINE, || async {
            by_token.lock().expect("lock").try_wait().ok().flatten()
        })
        .await
        .expect("cut off")
    };
    assert!(!ended.success());
    assert!(seen.iter().flat_map(|e| e.changes.iter()).all(|c| c.kind != EventKind::Node), "a token saw nodes");
}
