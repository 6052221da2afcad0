//! The storage contract (DESIGN.md §9, tier 2): openraft's own suite, crash safety, tamper
//! detection and a plaintext canary, all against real RocksDB data dirs.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use coffer_raft_store::backup::{BackupError, BackupFile, BackupKey, BackupWriter};
use coffer_raft_store::model::{Applied, ApplyError, Command, ObjectKind, SealedBytes, SecretRef, ServiceSpec};
use coffer_raft_store::seal::{KeyBytes, LocalKek};
use coffer_raft_store::{open, Response, Store, StoreError, StoreOptions, TypeConfig};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, RaftSnapshotBuilder, StorageError, Vote};
use tempfile::TempDir;

type NodeId = u64;

fn kek(seed: u8) -> LocalKek {
    LocalKek::new(&KeyBytes::from_bytes([seed; 32]), "key-file")
}

fn open_at(dir: &Path) -> Result<Store, StoreError> {
    open(dir, &kek(7), StoreOptions { snapshot_chunk_bytes: 512, ..Default::default() })
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(index: u64, cmd: Command) -> Entry<TypeConfig> {
    Entry { log_id: log_id(1, index), payload: EntryPayload::Normal(cmd) }
}

fn create_secret(n: u64, value: &[u8]) -> Command {
    Command::CreateSecret {
        id: format!("id{n}"),
        name: format!("name{n}"),
        labels: BTreeMap::from([("team".to_string(), "db".to_string())]),
        value: SealedBytes(value.to_vec()),
        size: value.len() as u32,
        at: 1_700_000_000_000 + n,
    }
}

/// Appends through the real `append` path and waits for the durability callback.
async fn append(log: &mut coffer_raft_store::LogStore, entries: Vec<Entry<TypeConfig>>) {
    // `blocking_append` calls `append` and waits for its durability callback.
    log.blocking_append(entries).await.expect("append");
}

// ---------------------------------------------------------------------------------------
// openraft's storage suite

struct Builder;

impl StoreBuilder<TypeConfig, coffer_raft_store::LogStore, coffer_raft_store::StateMachine, TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(TempDir, coffer_raft_store::LogStore, coffer_raft_store::StateMachine), StorageError<NodeId>> {
        let dir = TempDir::new().expect("tempdir");
        // A fresh key per store: the suite moves snapshots between stores, which must
        // re-seal them under the receiver's key.
        let seed = rand_seed();
        let store = open(dir.path(), &kek(seed), StoreOptions { snapshot_chunk_bytes: 64, ..Default::default() })
            .expect("open store");
        Ok((dir, store.log, store.state_machine))
    }
}

fn rand_seed() -> u8 {
    use std::sync::atomic::{AtomicU8, Ordering};
    static N: AtomicU8 = AtomicU8::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("openraft storage suite");
}

// ---------------------------------------------------------------------------------------
// state machine behaviour and reopen

#[tokio::test]
async fn commands_apply_atomically_and_survive_reopen() {
    let dir = TempDir::new().expect("tempdir");
    {
        let mut store = open_at(dir.path()).expect("open");
        let entries = vec![
            entry(1, create_secret(1, b"v1")),
            entry(2, create_secret(1, b"again")), // same name: refused, changes nothing
            entry(3, Command::RotateSecret { id: "id1".into(), value: SealedBytes(b"v2".to_vec()), size: 2, at: 5 }),
            entry(
                4,
                Command::CreateService {
                    id: "svc1".into(),
                    name: "api".into(),
                    spec: ServiceSpec {
                        replicas: 2,
                        constraints: vec![],
                        secrets: vec![SecretRef {
                            secret_id: "id1".into(),
                            target: "db".into(),
                            uid: 0,
                            gid: 0,
                            mode: 0o400,
                            pinned_version: None,
                        }],
                        labels: BTreeMap::new(),
                    },
                    at: 6,
                },
            ),
            entry(5, Command::RemoveSecret { id: "id1".into() }),
        ];
        let replies = store.state_machine.apply(entries).await.expect("apply");
        assert_eq!(replies[0], Response(Ok(Applied::SecretVersion { id: "id1".into(), version: 1 })));
        assert_eq!(replies[1], Response(Err(ApplyError::NameTaken { kind: ObjectKind::Secret, name: "name1".into() })));
        assert_eq!(replies[2], Response(Ok(Applied::SecretVersion { id: "id1".into(), version: 2 })));
        assert_eq!(replies[4], Response(Err(ApplyError::SecretInUse { services: vec!["api".into()] })));
    }
    let store = open_at(dir.path()).expect("reopen");
    let secret = store.reader.secret_by_name("name1").expect("read").expect("secret exists");
    assert_eq!(secret.versions.len(), 2);
    assert_eq!(store.reader.secret_value("id1", 2).expect("read"), Some(SealedBytes(b"v2".to_vec())));
    assert_eq!(store.reader.service_by_name("api").expect("read").map(|s| s.spec.replicas), Some(2));
    assert_eq!(store.reader.last_applied().expect("read"), Some(log_id(1, 5)));
}

// ---------------------------------------------------------------------------------------
// crash safety: a real process, killed with SIGKILL mid-stream of appends

const CRASH_DIR: &str = "COFFER_TEST_CRASH_DIR";

/// The child half of `acknowledged_appends_survive_sigkill`: appends forever, printing
/// every index whose append was reported durable, applying as it goes. Run only by that
/// test (it is ignored otherwise).
#[tokio::test]
#[ignore = "child process of acknowledged_appends_survive_sigkill"]
async fn crash_child_appends_until_killed() {
    let Ok(dir) = std::env::var(CRASH_DIR) else { return };
    let mut store = open_at(Path::new(&dir)).expect("open");
    let mut index = 0u64;
    let mut unapplied = Vec::new();
    loop {
        let batch: Vec<_> = (0..4)
            .map(|_| {
                index += 1;
                entry(index, create_secret(index, format!("value-{index}").as_bytes()))
            })
            .collect();
        append(&mut store.log, batch.clone()).await;
        println!("acked {index}");
        // Apply lags the log, as it does in a running manager.
        unapplied.extend(batch);
        if index % 12 == 0 {
            store.state_machine.apply(std::mem::take(&mut unapplied)).await.expect("apply");
        }
    }
}

#[tokio::test]
async fn acknowledged_appends_survive_sigkill() {
    let dir = TempDir::new().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Process::new(exe)
        .args(["--exact", "crash_child_appends_until_killed", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CRASH_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let mut acked = 0u64;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child");
        if let Some(n) = line.strip_prefix("acked ") {
            acked = n.parse().expect("index");
            if acked >= 400 {
                break;
            }
        }
    }
    child.kill().expect("SIGKILL child");
    child.wait().expect("reap child");
    assert!(acked >= 400, "child stopped early after {acked}");

    let mut store = open_at(dir.path()).expect("reopen after SIGKILL");
    let state = store.log.get_log_state().await.expect("log state");
    let last = state.last_log_id.expect("some log").index;
    assert!(last >= acked, "lost acknowledged entries: last {last} < acked {acked}");
    let entries = store.log.try_get_log_entries(1..=last).await.expect("read log");
    assert_eq!(entries.len() as u64, last, "gap in the log");
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.log_id.index, i as u64 + 1);
        assert_eq!(e.payload_cmd(), Some(create_secret(i as u64 + 1, format!("value-{}", i + 1).as_bytes())));
    }
    // The state machine is the state of a prefix of the log: every secret up to the
    // last-applied index, none after it.
    let applied = store.reader.last_applied().expect("read").map(|l| l.index).unwrap_or(0);
    assert!(applied <= last);
    let secrets = store.reader.secrets().expect("read");
    assert_eq!(secrets.len() as u64, applied, "state machine is not a prefix of the log");
    for n in 1..=applied {
        assert!(store.reader.secret(&format!("id{n}")).expect("read").is_some(), "secret {n} missing");
    }
    store.state_machine.applied_state().await.expect("applied state");
}

/// Counts the store's stages, to tell which path an append took.
#[derive(Debug, Default)]
struct StageCount(std::sync::Mutex<Vec<coffer_raft_store::StoreStage>>);

impl coffer_raft_store::StageObserver for StageCount {
    fn observe(&self, stage: coffer_raft_store::StoreStage, _took: std::time::Duration) {
        self.0.lock().expect("lock").push(stage);
    }
}

impl StageCount {
    fn syncs(&self) -> usize {
        self.0.lock().expect("lock").iter().filter(|s| **s == coffer_raft_store::StoreStage::LogSync).count()
    }
}

/// Reopens the store under `dir`: a background sync that was finishing when the store
/// was dropped holds the database for one more fsync.
async fn reopen_when_free(dir: &Path, options: StoreOptions) -> Store {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match open(dir, &kek(7), options.clone()) {
            Ok(s) => return s,
            Err(e) if e.to_string().contains("lock") && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(e) => panic!("reopen: {e}"),
        }
    }
}

#[tokio::test]
async fn a_leader_syncs_its_own_entries_behind_append_and_a_follower_before_it_answers() {
    let dir = TempDir::new().expect("tempdir");
    let stages = std::sync::Arc::new(StageCount::default());
    let options = StoreOptions { node_id: Some(1), observer: Some(stages.clone()), ..Default::default() };
    let by = |term: u64, leader: u64, index: u64| Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(term, leader), index),
        payload: EntryPayload::Normal(create_secret(index, b"v")),
    };
    let mut store = open(dir.path(), &kek(7), options.clone()).expect("open");

    // A follower of node 2: what it appended is on disk when `append` calls back.
    store.log.save_vote(&Vote::new_committed(1, 2)).await.expect("vote");
    append(&mut store.log, vec![by(1, 2, 1), by(1, 2, 2)]).await;
    assert_eq!(store.durable.synced(), Some(LogId::new(CommittedLeaderId::new(1, 2), 2)));
    assert_eq!(stages.syncs(), 0, "a follower's append is synced inline");

    // The leader of term 2: its own entries are synced in the background, and applied
    // only once they are on disk.
    store.log.save_vote(&Vote::new_committed(2, 1)).await.expect("vote");
    let own: Vec<_> = (3..=9).map(|i| by(2, 1, i)).collect();
    append(&mut store.log, own).await;
    let all = store.log.try_get_log_entries(1..=9).await.expect("readable at once");
    assert_eq!(all.len(), 9);
    let replies = store.state_machine.apply(all).await.expect("apply");
    assert_eq!(replies.len(), 9);
    assert!(store.durable.synced().is_some_and(|l| l.index >= 9), "applied only once synced");
    assert!(stages.syncs() >= 1, "the leader's entries went through the background sync");

    // A candidate's entries of an uncommitted vote, and entries of a term it does not
    // lead, are synced inline.
    store.log.save_vote(&Vote::new(3, 1)).await.expect("vote");
    let before = stages.syncs();
    append(&mut store.log, vec![by(2, 1, 10)]).await;
    assert_eq!(store.durable.synced().map(|l| l.index), Some(10));
    assert_eq!(stages.syncs(), before);
    // It won the election of term 3 and led when it stopped.
    store.log.save_vote(&Vote::new_committed(3, 1)).await.expect("vote");
    drop(store);

    let mut store = reopen_when_free(dir.path(), options).await;
    let state = store.log.get_log_state().await.expect("log state");
    assert_eq!(state.last_log_id.map(|l| l.index), Some(10));
    assert_eq!(store.durable.synced().map(|l| l.index), Some(10), "the log read at open is on disk");
    assert_eq!(store.reader.last_applied().expect("read").map(|l| l.index), Some(9));
    // A leader that restarts stands for election (its log may lack entries it sent before
    // a power loss): its vote is reopened uncommitted, in the same term for itself.
    let vote = store.log.read_vote().await.expect("read vote");
    assert_eq!(vote, Some(Vote::new(3, 1)));
    // A store opened without a node id (a check, a restore) leaves the vote as it is.
    store.log.save_vote(&Vote::new_committed(4, 1)).await.expect("vote");
    drop(store);
    let mut store = reopen_when_free(dir.path(), StoreOptions::default()).await;
    assert_eq!(store.log.read_vote().await.expect("read vote"), Some(Vote::new_committed(4, 1)));
}

trait PayloadCmd {
    fn payload_cmd(&self) -> Option<Command>;
}

impl PayloadCmd for Entry<TypeConfig> {
    fn payload_cmd(&self) -> Option<Command> {
        match &self.payload {
            EntryPayload::Normal(c) => Some(c.clone()),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// tampering, wrong keys, newer formats

/// Opens the raw RocksDB under a data dir, as an attacker with disk access would.
fn raw_db(dir: &Path) -> rocksdb::DB {
    let cfs = ["meta", "log", "raft", "sm_meta", "sm"];
    rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.join("db"), cfs).expect("raw open")
}

async fn store_with_secrets(dir: &Path) {
    let mut store = open_at(dir).expect("open");
    let entries: Vec<_> = (1..=3).map(|n| entry(n, create_secret(n, format!("value-{n}").as_bytes()))).collect();
    append(&mut store.log, entries.clone()).await;
    store.state_machine.apply(entries).await.expect("apply");
}

fn assert_tampered<T: std::fmt::Debug>(r: Result<T, StoreError>, names: &str) {
    match r {
        Err(StoreError::Tampered { what, .. }) => assert!(what.contains(names), "error names {what:?}, not {names:?}"),
        other => panic!("expected a tamper error naming {names}, got {other:?}"),
    }
}

#[tokio::test]
async fn flipped_byte_in_a_sealed_value_is_detected() {
    let dir = TempDir::new().expect("tempdir");
    store_with_secrets(dir.path()).await;
    {
        let db = raw_db(dir.path());
        let cf = db.cf_handle("sm").expect("cf");
        let mut v = db.get_cf(cf, b"secret/id2").expect("get").expect("present");
        let mid = v.len() / 2;
        v[mid] ^= 0x20;
        db.put_cf(cf, b"secret/id2", v).expect("put");
    }
    let store = open_at(dir.path()).expect("reopen");
    assert!(store.reader.secret("id1").expect("untouched record still opens").is_some());
    assert_tampered(store.reader.secret("id2"), "sm/secret/id2");
    assert_tampered(store.reader.verify_all(), "sm/secret/id2");
}

#[tokio::test]
async fn swapped_sealed_values_are_detected() {
    let dir = TempDir::new().expect("tempdir");
    store_with_secrets(dir.path()).await;
    {
        let db = raw_db(dir.path());
        let sm = db.cf_handle("sm").expect("cf");
        let (a, b) = (b"secret-value/id1\0\0\0\0\x01".to_vec(), b"secret-value/id2\0\0\0\0\x01".to_vec());
        let (va, vb) = (db.get_cf(sm, &a).expect("get").expect("a"), db.get_cf(sm, &b).expect("get").expect("b"));
        db.put_cf(sm, &a, vb).expect("put");
        db.put_cf(sm, &b, va).expect("put");
        let log = db.cf_handle("log").expect("cf");
        let (k1, k2) = (1u64.to_be_bytes(), 2u64.to_be_bytes());
        let (e1, e2) = (db.get_cf(log, k1).expect("get").expect("1"), db.get_cf(log, k2).expect("get").expect("2"));
        db.put_cf(log, k1, e2).expect("put");
        db.put_cf(log, k2, e1).expect("put");
    }
    let mut store = open_at(dir.path()).expect("reopen");
    assert_tampered(store.reader.secret_value("id1", 1), "sm/secret-value/id1");
    assert_tampered(store.reader.secret_value("id2", 1), "sm/secret-value/id2");
    let err = store.log.try_get_log_entries(1..=3).await.expect_err("swapped log entries must not read");
    assert!(err.to_string().contains("log entry 1"), "{err}");
}

#[tokio::test]
async fn wrong_key_newer_format_and_corrupt_files_are_refused() {
    let dir = TempDir::new().expect("tempdir");
    store_with_secrets(dir.path()).await;

    match open(dir.path(), &kek(8), StoreOptions::default()) {
        Err(StoreError::WrongKey { .. }) => {}
        other => panic!("expected WrongKey, got {other:?}"),
    }
    match open(dir.path(), &LocalKek::new(&KeyBytes::from_bytes([7; 32]), "unlock-key"), StoreOptions::default()) {
        Err(e @ StoreError::WrongKey { .. }) => assert!(e.to_string().contains("key-file"), "{e}"),
        other => panic!("expected WrongKey naming the kind, got {other:?}"),
    }

    // Rewrapping the data key (autolock turned on) moves the store to the new KEK only.
    let unlock = LocalKek::new(&KeyBytes::from_bytes([42; 32]), "unlock-key");
    open_at(dir.path()).expect("open").rewrap_data_key(&kek(7), &unlock).expect("rewrap");
    assert!(matches!(open_at(dir.path()), Err(StoreError::WrongKey { .. })));
    let store = open(dir.path(), &unlock, StoreOptions::default()).expect("opens with the new KEK");
    assert_eq!(store.reader.secrets().expect("read").len(), 3, "data is intact after rewrap");
    store.rewrap_data_key(&unlock, &kek(7)).expect("rewrap back");
    drop(store);

    {
        let db = raw_db(dir.path());
        let newer = coffer_raft_store::STORE_FORMAT + 1;
        db.put_cf(db.cf_handle("meta").expect("cf"), b"format", newer.to_be_bytes()).expect("put");
    }
    match open_at(dir.path()) {
        Err(e @ StoreError::NewerStore { found, .. }) if found == coffer_raft_store::STORE_FORMAT + 1 => {
            assert!(e.to_string().contains(&format!("format {found}")), "{e}")
        }
        other => panic!("expected NewerStore, got {other:?}"),
    }
    {
        let db = raw_db(dir.path());
        let current = coffer_raft_store::STORE_FORMAT;
        db.put_cf(db.cf_handle("meta").expect("cf"), b"format", current.to_be_bytes()).expect("put");
        for cf in ["log", "sm", "sm_meta", "raft"] {
            db.flush_cf(db.cf_handle(cf).expect("cf")).expect("flush");
        }
    }
    open_at(dir.path()).expect("format restored: opens again");

    // Garble the middle of every table file: RocksDB's checksums or our seals must catch
    // it, as an error (at open or at read), never a panic or wrong data.
    let mut garbled = 0;
    for f in files_under(&dir.path().join("db")) {
        if f.extension().is_some_and(|x| x == "sst") {
            let mut bytes = std::fs::read(&f).expect("read sst");
            let mid = bytes.len() / 3;
            for b in bytes.iter_mut().skip(mid).take(64) {
                *b ^= 0x5a;
            }
            std::fs::write(&f, bytes).expect("write sst");
            garbled += 1;
        }
    }
    assert!(garbled > 0, "no table file to garble");
    let outcome = open_at(dir.path()).and_then(|s| s.reader.verify_all());
    assert!(outcome.is_err(), "garbled table files went unnoticed: {outcome:?}");
}

#[tokio::test]
async fn damaged_snapshots_are_refused() {
    let src_dir = TempDir::new().expect("tempdir");
    store_with_secrets(src_dir.path()).await;
    let mut src = open_at(src_dir.path()).expect("open");
    let snap = src.state_machine.get_snapshot_builder().await.build_snapshot().await.expect("build");
    let path = snap.snapshot.path().to_path_buf();
    let good = std::fs::read(&path).expect("read snapshot");
    assert!(good.len() > 200, "snapshot too small to damage meaningfully");

    // An intact snapshot installs into a store with another key, and carries the state.
    {
        let dst_dir = TempDir::new().expect("tempdir");
        let mut dst = open(dst_dir.path(), &kek(9), StoreOptions::default()).expect("open");
        let cur = src.state_machine.get_current_snapshot().await.expect("current").expect("some");
        dst.state_machine.install_snapshot(&cur.meta, cur.snapshot).await.expect("install intact snapshot");
        assert_eq!(dst.reader.secrets().expect("read").len(), 3);
        assert_eq!(dst.reader.secret_value("id3", 1).expect("read"), Some(SealedBytes(b"value-3".to_vec())));
    }

    let damage: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() - 7].to_vec()),
        ("truncated at a frame boundary", good[..good.len() - trailer_len(&good)].to_vec()),
        ("flipped byte", {
            let mut b = good.clone();
            let i = b.len() / 2;
            b[i] ^= 1;
            b
        }),
        ("extended", {
            let mut b = good.clone();
            b.extend_from_slice(&[0, 0, 0, 1, 0]);
            b
        }),
    ];
    for (what, bytes) in damage {
        std::fs::write(&path, &bytes).expect("write damaged snapshot");
        let outcome = async {
            let cur = src.state_machine.get_current_snapshot().await?.expect("some");
            let dst_dir = TempDir::new().expect("tempdir");
            let mut dst = open(dst_dir.path(), &kek(9), StoreOptions::default()).expect("open");
            dst.state_machine.install_snapshot(&cur.meta, cur.snapshot).await?;
            Ok::<_, StorageError<NodeId>>(dst.reader.secrets().expect("read").len())
        }
        .await;
        assert!(outcome.is_err(), "{what} snapshot was accepted: {outcome:?}");
    }
}

/// Length of the last frame (the trailer) of a snapshot file.
fn trailer_len(file: &[u8]) -> usize {
    let mut off = 12;
    let mut last = 0;
    while off + 4 <= file.len() {
        let n = u32::from_be_bytes([file[off], file[off + 1], file[off + 2], file[off + 3]]) as usize;
        last = 4 + n;
        off += last;
    }
    last
}

// ---------------------------------------------------------------------------------------
// plaintext canary

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Every form in which a value could leak: raw, hex (both cases), and base64 at each of
/// the three alignments it can start at inside a longer encoded string.
fn leak_forms(value: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine;
    let mut forms = vec![value.to_vec()];
    let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
    forms.push(hex.clone().into_bytes());
    forms.push(hex.to_uppercase().into_bytes());
    for engine in [base64::engine::general_purpose::STANDARD, base64::engine::general_purpose::URL_SAFE] {
        for pad in 0..3 {
            let mut padded = vec![b'x'; pad];
            padded.extend_from_slice(value);
            let enc = engine.encode(&padded);
            // Skip the characters that depend on the prefix, and the tail.
            let start = (pad * 4).div_ceil(3) + 1;
            forms.push(enc.as_bytes()[start..enc.len() - 4].to_vec());
        }
    }
    forms
}

#[tokio::test]
async fn no_file_holds_a_secret_value_in_plaintext() {
    let canary = b"COFFER-CANARY-7f3e19a2c4b85d60-do-not-leak".to_vec();
    let large: Vec<u8> = canary.iter().copied().cycle().take(4096).collect();
    let dir = TempDir::new().expect("tempdir");
    {
        let mut store = open_at(dir.path()).expect("open");
        let mut entries = Vec::new();
        for n in 1..=50u64 {
            let mut value = canary.clone();
            value.extend_from_slice(format!("-{n}").as_bytes());
            entries.push(entry(n, create_secret(n, &value)));
        }
        entries.push(entry(
            51,
            Command::RotateSecret {
                id: "id1".into(),
                value: SealedBytes(canary.clone()),
                size: canary.len() as u32,
                at: 9,
            },
        ));
        // A large value: the state keeps it in a blob file, not in a table.
        entries.push(entry(52, create_secret(52, &large)));
        append(&mut store.log, entries.clone()).await;
        store.state_machine.apply(entries).await.expect("apply");
        store.log.save_vote(&openraft::Vote::new(1, 1)).await.expect("vote");
        let snap = store.state_machine.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
        assert_eq!(snap.meta.last_log_id, Some(log_id(1, 52)));
        store.log.purge(log_id(1, 40)).await.expect("purge");
        // Install the snapshot again, as a follower would: the install path writes too.
        let cur = store.state_machine.get_current_snapshot().await.expect("current").expect("some");
        store.state_machine.install_snapshot(&cur.meta, cur.snapshot).await.expect("install");
    }
    {
        // Compact every column family so nothing lingers only in the WAL or memtables,
        // with the state's large records in blob files, as the store keeps them.
        let mut sm = rocksdb::Options::default();
        sm.set_enable_blob_files(true);
        sm.set_min_blob_size(1024);
        let cfs = ["meta", "log", "raft", "sm_meta"]
            .map(|cf| rocksdb::ColumnFamilyDescriptor::new(cf, rocksdb::Options::default()))
            .into_iter()
            .chain([rocksdb::ColumnFamilyDescriptor::new("sm", sm)]);
        let db = rocksdb::DB::open_cf_descriptors(&rocksdb::Options::default(), dir.path().join("db"), cfs)
            .expect("raw open");
        for cf in ["meta", "log", "raft", "sm_meta", "sm"] {
            let h = db.cf_handle(cf).expect("cf");
            db.flush_cf(h).expect("flush");
            db.compact_range_cf(h, None::<&[u8]>, None::<&[u8]>);
        }
    }
    let forms = leak_forms(&canary);
    let files = files_under(dir.path());
    assert!(files.iter().any(|f| f.extension().is_some_and(|x| x == "snap")), "no snapshot file was written");
    assert!(files.iter().any(|f| f.extension().is_some_and(|x| x == "sst")), "no table file was written");
    assert!(files.iter().any(|f| f.extension().is_some_and(|x| x == "blob")), "no blob file was written");
    for f in &files {
        let bytes = std::fs::read(f).expect("read file");
        for form in &forms {
            assert!(
                !bytes.windows(form.len()).any(|w| w == form.as_slice()),
                "{} holds the canary (form {:?})",
                f.display(),
                String::from_utf8_lossy(form)
            );
        }
    }
    // And the store still reads back what was written.
    let store = open_at(dir.path()).expect("reopen");
    assert_eq!(store.reader.secret_value("id1", 2).expect("read"), Some(SealedBytes(canary)));
    assert_eq!(store.reader.secret_value("id52", 1).expect("read a blob"), Some(SealedBytes(large)));
    assert!(store.reader.verify_all().expect("verify").state_records > 52);
}

// ---------------------------------------------------------------------------------------
// the per-node task index and the placement watch

/// A ready worker node `id`.
fn node(id: u64) -> Command {
    use coffer_raft_store::model::{Availability, NodeRecord, NodeRole, NodeStatus};
    Command::PutNode(NodeRecord {
        id,
        role: NodeRole::Worker,
        hostname: format!("w{id}"),
        addr: "0.0.0.0:0".into(),
        availability: Availability::Active,
        status: NodeStatus::Ready,
        labels: BTreeMap::new(),
        cert_serial: "00".into(),
        grant_public_key: None,
        removed: false,
        joined_at: 1,
        updated_at: 1,
    })
}

/// Task `t1` of service `svc1`, placed on node `on`.
fn task(on: u64) -> Command {
    use coffer_raft_store::model::{TaskRecord, TaskState};
    Command::PutTask(TaskRecord {
        id: "t1".into(),
        service_id: "svc1".into(),
        slot: 0,
        node_id: Some(on),
        desired: TaskState::Running,
        secret_versions: vec![],
        spec_version: 1,
        updated_at: 1,
    })
}

#[tokio::test]
async fn tasks_are_indexed_by_node_and_placement_changes_are_signalled() {
    use coffer_raft_store::model::TaskRecord;
    let dir = TempDir::new().expect("tempdir");
    let mut store = open_at(dir.path()).expect("open");
    let spec = ServiceSpec { replicas: 1, constraints: vec![], secrets: vec![], labels: BTreeMap::new() };
    let mut watch = store.reader.watch_placement();
    watch.borrow_and_update();
    store
        .state_machine
        .apply(vec![
            entry(1, node(10)),
            entry(2, node(20)),
            entry(3, Command::CreateService { id: "svc1".into(), name: "api".into(), spec, at: 1 }),
            entry(4, task(10)),
        ])
        .await
        .expect("apply");
    assert!(watch.has_changed().expect("watch"), "placing a task is signalled");
    watch.borrow_and_update();
    let ids = |v: Vec<TaskRecord>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(ids(store.reader.tasks_of_node(10).expect("read")), vec!["t1".to_string()]);
    assert!(store.reader.tasks_of_node(20).expect("read").is_empty());

    // A secret that no service uses is not a placement change.
    store.state_machine.apply(vec![entry(5, create_secret(5, b"x"))]).await.expect("apply");
    assert!(!watch.has_changed().expect("watch"));

    // The task moves: the index follows; the service goes: so does its task's entry.
    store.state_machine.apply(vec![entry(6, task(20))]).await.expect("apply");
    assert!(store.reader.tasks_of_node(10).expect("read").is_empty());
    assert_eq!(ids(store.reader.tasks_of_node(20).expect("read")), vec!["t1".to_string()]);
    store.state_machine.apply(vec![entry(7, Command::RemoveService { id: "svc1".into() })]).await.expect("apply");
    assert!(store.reader.tasks_of_node(20).expect("read").is_empty());
    assert!(store.reader.tasks().expect("read").is_empty());
}

#[tokio::test]
async fn what_a_service_runs_commits_with_its_spec_and_goes_with_it() {
    use coffer_raft_store::model::ServiceRuntime;
    let dir = tempfile::TempDir::new().expect("tempdir");
    let mut store = open_at(dir.path()).expect("open");
    let spec = ServiceSpec { replicas: 1, constraints: vec![], secrets: vec![], labels: BTreeMap::new() };
    let runtime = |image: &str| ServiceRuntime {
        image: Some(image.into()),
        command: vec!["sleep".into()],
        args: vec!["1d".into()],
        env: vec!["MODE=prod".into()],
        docker_spec: Some(r#"{"EndpointSpec":{"Ports":[]}}"#.into()),
    };
    let create = |id: &str, name: &str, image: &str| Command::CreateServiceWithRuntime {
        id: id.into(),
        name: name.into(),
        spec: spec.clone(),
        runtime: runtime(image),
        at: 1,
    };
    let update = |expected_version, image: &str| Command::UpdateServiceWithRuntime {
        id: "svc1".into(),
        expected_version,
        spec: ServiceSpec { replicas: 3, ..spec.clone() },
        runtime: runtime(image),
        at: 2,
    };
    let applied = store
        .state_machine
        .apply(vec![
            entry(1, create("svc1", "web", "nginx:1")),
            // A second service of the same name is refused, and leaves no runtime behind.
            entry(2, create("svc2", "web", "evil:1")),
            entry(3, update(1, "nginx:2")),
            // A stale update changes neither the spec nor the runtime.
            entry(4, update(1, "nginx:3")),
        ])
        .await
        .expect("apply");
    assert!(matches!(applied[1].0, Err(ApplyError::NameTaken { .. })), "{:?}", applied[1]);
    assert!(matches!(applied[3].0, Err(ApplyError::VersionConflict { .. })), "{:?}", applied[3]);
    assert_eq!(store.reader.service_runtime("svc2").expect("read"), None);
    assert_eq!(store.reader.service_runtime("svc1").expect("read"), Some(runtime("nginx:2")));
    let svc = store.reader.service("svc1").expect("read").expect("service");
    assert_eq!((svc.spec.replicas, svc.spec_version), (3, 2));
    drop(store);
    let mut store = open_at(dir.path()).expect("reopen");
    assert_eq!(store.reader.service_runtime("svc1").expect("read"), Some(runtime("nginx:2")), "survives reopen");
    store.state_machine.apply(vec![entry(5, Command::RemoveService { id: "svc1".into() })]).await.expect("apply");
    assert_eq!(store.reader.service_runtime("svc1").expect("read"), None);
}

#[tokio::test]
async fn task_reports_stick_to_their_node_and_go_with_the_task() {
    use coffer_raft_store::model::{ObservedState, OnSecretChange, RuntimeOptions, ServiceRuntime};
    let dir = TempDir::new().expect("tempdir");
    let mut store = open_at(dir.path()).expect("open");
    let report = |from: u64, state: ObservedState, at| Command::ReportTaskStatus {
        node: from,
        reports: vec![("t1".into(), state), ("no-such-task".into(), ObservedState::Running)],
        at,
    };
    let spec = ServiceSpec { replicas: 1, constraints: vec![], secrets: vec![], labels: BTreeMap::new() };
    let options = RuntimeOptions {
        secrets_mount: Some("/etc/app".into()),
        on_secret_change: OnSecretChange::Signal("SIGHUP".into()),
    };
    let runtime = ServiceRuntime { image: Some("app:1".into()), ..Default::default() };
    let create = Command::CreateServiceWithOptions {
        id: "svc1".into(),
        name: "api".into(),
        spec,
        runtime: runtime.clone(),
        options: options.clone(),
        at: 1,
    };
    store
        .state_machine
        .apply(vec![
            entry(1, node(10)),
            entry(2, node(20)),
            entry(3, create),
            entry(4, task(10)),
            entry(5, report(10, ObservedState::Running, 5)),
            // Another worker cannot speak for a task that is not its own.
            entry(6, report(20, ObservedState::Failed("lies".into()), 6)),
        ])
        .await
        .expect("apply");
    assert_eq!(store.reader.service_options("svc1").expect("read"), Some(options));
    assert_eq!(store.reader.service_runtime("svc1").expect("read"), Some(runtime));
    let status = store.reader.task_status("t1").expect("read").expect("reported");
    assert_eq!((status.node_id, status.state, status.at), (10, ObservedState::Running, 5));
    assert_eq!(store.reader.task_status("no-such-task").expect("read"), None);

    // The task moves: what the old node said goes; the new node's report counts.
    store.state_machine.apply(vec![entry(7, task(20))]).await.expect("apply");
    assert_eq!(store.reader.task_status("t1").expect("read"), None);
    store.state_machine.apply(vec![entry(8, report(10, ObservedState::Exited(1), 8))]).await.expect("apply");
    assert_eq!(store.reader.task_status("t1").expect("read"), None, "the old node's late report");
    store.state_machine.apply(vec![entry(9, report(20, ObservedState::Exited(137), 9))]).await.expect("apply");
    let status = store.reader.task_status("t1").expect("read").expect("reported");
    assert_eq!((status.node_id, status.state), (20, ObservedState::Exited(137)));

    // The service goes: its options and its tasks' states go with it.
    store.state_machine.apply(vec![entry(10, Command::RemoveService { id: "svc1".into() })]).await.expect("apply");
    assert_eq!(store.reader.task_status("t1").expect("read"), None);
    assert_eq!(store.reader.service_options("svc1").expect("read"), None);
}

#[tokio::test]
async fn a_batch_applies_each_command_in_order_with_its_own_outcome() {
    let dir = tempfile::TempDir::new().expect("tempdir");
    let mut store = open_at(dir.path()).expect("open");
    let batch = Command::Batch(vec![
        create_secret(1, b"one"),
        // The same name again: refused, and it holds back neither neighbour.
        create_secret(1, b"again"),
        create_secret(2, b"two"),
    ]);
    let out = store.state_machine.apply(vec![entry(1, batch)]).await.expect("apply");
    let Ok(Applied::Batch(results)) = &out[0].0 else { panic!("{:?}", out[0]) };
    assert_eq!(results.len(), 3);
    assert!(matches!(results[0], Ok(Applied::SecretVersion { version: 1, .. })), "{results:?}");
    assert!(matches!(results[1], Err(ApplyError::NameTaken { .. } | ApplyError::IdTaken { .. })), "{results:?}");
    assert!(matches!(results[2], Ok(Applied::SecretVersion { version: 1, .. })), "{results:?}");
    assert_eq!(store.reader.secrets().expect("read").len(), 2);
    // One entry: its changes travel together, at its index.
    let kept = store.reader.watch_kept_changes();
    assert_eq!(kept.backlog.len(), 1);
    assert_eq!((kept.backlog[0].index, kept.backlog[0].changes.len()), (1, 2));
}

// ---------------------------------------------------------------------------------------
// backups, restore, and re-forming a store alone

fn init_cluster() -> Command {
    use coffer_raft_store::model::{ClusterRecord, ClusterSettings, SecretBytes};
    Command::InitCluster(ClusterRecord {
        id: "c0ffee".into(),
        created_at: 1,
        ca_cert_pem: "CERT".into(),
        ca_key: SealedBytes(b"sealed-ca-key".to_vec()),
        value_key: SecretBytes(vec![9; 32]),
        worker_token_hash: [1; 32],
        manager_token_hash: [2; 32],
        settings: ClusterSettings::default(),
        autolock: false,
        wrapped_unlock: None,
    })
}

/// A store with a cluster record and `n` secrets applied (not in its log).
async fn applied_store(dir: &Path, n: u64) -> Store {
    let mut store = open_at(dir).expect("open");
    let mut entries = vec![entry(1, init_cluster())];
    entries.extend((1..=n).map(|i| entry(i + 1, create_secret(i, format!("BACKUP-CANARY-{i}").as_bytes()))));
    store.state_machine.apply(entries).await.expect("apply");
    store
}

fn write_backup(store: &Store, path: &Path, key: &BackupKey) {
    use std::cell::RefCell;
    let file = std::fs::File::create(path).expect("create");
    let writer: RefCell<Option<BackupWriter<std::fs::File>>> = RefCell::new(None);
    let mut out = Some(file);
    store
        .reader
        .export(
            256,
            42,
            |info| -> Result<(), StoreError> {
                *writer.borrow_mut() = Some(BackupWriter::new(out.take().expect("once"), key, info, path)?);
                Ok(())
            },
            |chunk| {
                writer.borrow_mut().as_mut().expect("header first").chunk(chunk)?;
                Ok(())
            },
        )
        .expect("export");
    writer.into_inner().expect("writer").finish().expect("finish");
}

fn key_file(dir: &Path, name: &str) -> BackupKey {
    let path = dir.join(name);
    BackupKey::generate_file(&path).expect("keygen");
    BackupKey::load(&path).expect("load key")
}

#[tokio::test]
async fn a_backup_restores_whole_and_any_damage_or_wrong_key_is_refused() {
    let dir = TempDir::new().expect("tempdir");
    let store = applied_store(&dir.path().join("src"), 40).await;
    let key = key_file(dir.path(), "k1");
    let file = dir.path().join("b.backup");
    write_backup(&store, &file, &key);

    let backup = BackupFile::open(&file).expect("open");
    let info = backup.info().clone();
    assert_eq!((info.cluster_id.as_str(), info.counts.secrets, info.counts.secret_versions), ("c0ffee", 40, 40));
    assert_eq!(info.last_applied, Some(log_id(1, 41)));
    let (chunks, records) = backup.unlock(&key).expect("unlock").verify().expect("verify");
    assert!(chunks > 3, "small chunks: {chunks}");
    assert_eq!(records, info.counts.records);

    // Restored, the state is the same, record for record.
    let unlocked = backup.unlock(&key).expect("unlock");
    let mut restored = coffer_raft_store::restore(&dir.path().join("dst"), &kek(8), StoreOptions::default(), &unlocked)
        .expect("restore");
    for i in 1..=40u64 {
        let s = restored.reader.secret_by_name(&format!("name{i}")).expect("read").expect("restored");
        let v = restored.reader.secret_value(&s.id, 1).expect("read");
        assert_eq!(v, Some(SealedBytes(format!("BACKUP-CANARY-{i}").into_bytes())));
    }
    assert_eq!(restored.reader.last_applied().expect("read"), Some(log_id(1, 41)));
    let r = restored.reform_alone(9, coffer_raft_store::ManagerNode { addr: "127.0.0.1:1".into() }).expect("reform");
    assert_eq!(r.applied, log_id(1, 41));
    let voters: Vec<u64> = restored.reader.membership().expect("read").membership().voter_ids().collect();
    assert_eq!(voters, vec![9]);

    // Another key, a passphrase for a keyed file: refused at the key check.
    let other = key_file(dir.path(), "k2");
    assert!(matches!(backup.unlock(&other), Err(BackupError::WrongKey { .. })));
    assert!(matches!(
        backup.unlock(&BackupKey::from_passphrase("a long passphrase")),
        Err(BackupError::WrongKey { .. })
    ));
    // Any flipped byte and any cut is refused by the digest, before a key is tried.
    let good = std::fs::read(&file).expect("read");
    let bad = dir.path().join("bad.backup");
    for at in [0, 9, 14, 20, good.len() / 3, good.len() / 2, good.len() - 40, good.len() - 1] {
        let mut b = good.clone();
        b[at] ^= 1;
        std::fs::write(&bad, &b).expect("write");
        assert!(BackupFile::open(&bad).is_err(), "a flipped byte at {at} of {}", good.len());
    }
    for len in [0, 10, 30, good.len() / 2, good.len() - 1] {
        std::fs::write(&bad, &good[..len]).expect("write");
        assert!(BackupFile::open(&bad).is_err(), "cut to {len} of {}", good.len());
    }
    // An altered frame whose digest was recomputed (an attacker, not a bit flip) is refused
    // by the AEAD.
    let mut b = good.clone();
    let at = good.len() / 2;
    b[at] ^= 1;
    let n = b.len() - 32;
    let digest: [u8; 32] = sha2::Digest::finalize(sha2::Digest::chain_update(sha2::Sha256::default(), &b[..n])).into();
    b[n..].copy_from_slice(&digest);
    std::fs::write(&bad, &b).expect("write");
    let altered = BackupFile::open(&bad).expect("the digest matches");
    let r = altered.unlock(&key).and_then(|u| u.verify());
    assert!(matches!(r, Err(BackupError::Altered { .. } | BackupError::Corrupt { .. })), "{r:?}");

    // A passphrase file: stretched with Argon2id; the backup opens with it alone.
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "correct horse battery staple\n").expect("write");
    std::fs::set_permissions(&pass, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let pkey = BackupKey::load(&pass).expect("passphrase");
    let pfile = dir.path().join("p.backup");
    write_backup(&store, &pfile, &pkey);
    let pb = BackupFile::open(&pfile).expect("open");
    assert!(pb.passphrase());
    pb.unlock(&pkey).expect("unlock").verify().expect("verify");
    assert!(matches!(pb.unlock(&key), Err(BackupError::WrongKey { .. })));
    // A short passphrase, or a key file other users can read, is refused.
    std::fs::write(&pass, "short\n").expect("write");
    assert!(matches!(BackupKey::load(&pass), Err(BackupError::KeyFile { .. })));
    std::fs::write(&pass, "correct horse battery staple\n").expect("write");
    std::fs::set_permissions(&pass, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
    assert!(matches!(BackupKey::load(&pass), Err(BackupError::KeyFile { .. })));

    // No plaintext value in either backup file.
    for f in [&file, &pfile] {
        let bytes = std::fs::read(f).expect("read");
        assert!(!bytes.windows(14).any(|w| w == b"BACKUP-CANARY-"), "{} holds a value", f.display());
    }
}

/// Appends (unapplied) the cluster's first entry and creates of secrets 2..=`last`.
async fn cluster_with_secrets(store: &mut Store, last: u64) -> Vec<Entry<TypeConfig>> {
    let entries: Vec<_> =
        std::iter::once(entry(1, init_cluster())).chain((2..=last).map(|n| entry(n, create_secret(n, b"v")))).collect();
    append(&mut store.log, entries.clone()).await;
    entries
}

#[tokio::test]
async fn reforming_alone_keeps_every_entry_of_the_log() {
    let dir = TempDir::new().expect("tempdir");
    {
        let mut store = open_at(dir.path()).expect("open");
        let entries = cluster_with_secrets(&mut store, 5).await;
        store.state_machine.apply(entries[..2].to_vec()).await.expect("apply 1..=2");
        store.log.save_committed(Some(log_id(1, 4))).await.expect("committed");
        store.log.save_vote(&openraft::Vote::new(3, 2)).await.expect("vote");
        let r = store.reform_alone(9, coffer_raft_store::ManagerNode { addr: "127.0.0.1:9".into() }).expect("reform");
        // Entry 5 is past the commit index this store saved (unsynced: it may lag what the
        // old cluster acknowledged): kept, as a leader elected with this log would keep it.
        assert_eq!((r.applied, r.replayed), (log_id(1, 5), 3));
    }
    let mut store = open_at(dir.path()).expect("reopen");
    for n in [2, 3, 4, 5] {
        assert!(store.reader.secret_by_name(&format!("name{n}")).expect("read").is_some(), "entry {n} kept");
    }
    let state = store.log.get_log_state().await.expect("log state");
    assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(log_id(1, 5)), Some(log_id(1, 5))));
    let vote = store.log.read_vote().await.expect("vote").expect("a vote");
    assert_eq!((vote.leader_id.term, vote.leader_id.voted_for()), (3, Some(9)));
    let snap = store.state_machine.get_current_snapshot().await.expect("snapshot").expect("one was built");
    assert_eq!(snap.meta.last_log_id, Some(log_id(1, 5)));
    assert_eq!(snap.meta.last_membership.membership().voter_ids().collect::<Vec<_>>(), vec![9]);
}

/// The commit index is written in the batch of the apply that follows it (one write on
/// every write's path, not two): read back before that, and found after a restart.
#[tokio::test]
async fn the_commit_index_is_saved_with_the_next_apply() {
    let dir = TempDir::new().expect("tempdir");
    {
        let mut store = open_at(dir.path()).expect("open");
        let entries = cluster_with_secrets(&mut store, 3).await;
        store.log.save_committed(Some(log_id(1, 3))).await.expect("committed");
        assert_eq!(store.log.read_committed().await.expect("read"), Some(log_id(1, 3)));
        store.state_machine.apply(entries).await.expect("apply");
    }
    let mut store = open_at(dir.path()).expect("reopen");
    assert_eq!(store.log.read_committed().await.expect("read"), Some(log_id(1, 3)));
    // Entries read back after a restart come from RocksDB, not from memory.
    let read = store.log.try_get_log_entries(1..4).await.expect("entries");
    assert_eq!(read.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![1, 2, 3]);
}

/// Regression: re-wrapping the data key (autolock turned on) left the old wrapping in the
/// write-ahead log and in table files, where the key file beside the store opened it.
#[tokio::test]
async fn a_rewrapped_data_key_leaves_no_old_wrapping_on_disk() {
    let dir = TempDir::new().expect("tempdir");
    store_with_secrets(dir.path()).await;
    let old = wrapping(dir.path());
    {
        let store = open_at(dir.path()).expect("open");
        store.rewrap_data_key(&kek(7), &kek(8)).expect("rewrap");
    }
    for f in files_under(dir.path()) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(!bytes.windows(old.len()).any(|w| w == old.as_slice()), "{} holds the old wrapping", f.display());
    }
    assert!(open_at(dir.path()).is_err(), "the old key opens nothing");
    open(dir.path(), &kek(8), StoreOptions::default()).expect("the new key opens it");
}

/// Whether any file under `dir` (all of it, or only the write-ahead logs) holds `bytes`.
fn a_file_holds(dir: &Path, bytes: &[u8], only_logs: bool) -> bool {
    files_under(dir)
        .iter()
        .filter(|f| !only_logs || f.extension().is_some_and(|x| x == "log"))
        .any(|f| std::fs::read(f).unwrap_or_default().windows(bytes.len()).any(|w| w == bytes))
}

/// The `recycle_log_file_num` RocksDB last opened the store under `dir` with (its newest
/// OPTIONS file).
fn recycled_logs(dir: &Path) -> usize {
    let newest = files_under(&dir.join("db"))
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n.to_string_lossy().starts_with("OPTIONS-")))
        .max()
        .expect("an OPTIONS file");
    let text = std::fs::read_to_string(newest).expect("read OPTIONS");
    text.lines()
        .find_map(|l| l.trim().strip_prefix("recycle_log_file_num="))
        .and_then(|v| v.parse().ok())
        .expect("recycle_log_file_num in OPTIONS")
}

/// The data key's wrapping, from its file (the KEK's kind and the wrapping).
fn wrapping(dir: &Path) -> Vec<u8> {
    let bytes = std::fs::read(dir.join(coffer_raft_store::DATA_KEY_FILE)).expect("the data key's file");
    coffer_raft_store::codec::decode::<(String, Vec<u8>)>(&bytes).expect("decode").1
}

/// Opens the store under `dir` until it is marked free of wrappings in its logs (at most 3
/// times), each time without recycling and with its data intact.
fn open_until_marked(dir: &Path) {
    let mut opens = 0;
    while !dir.join(coffer_raft_store::WAL_MARKER).exists() {
        opens += 1;
        assert!(opens <= 3, "the store was never marked free of the data key");
        let store = open_at(dir).expect("open");
        assert_eq!(recycled_logs(dir), 0, "no log is recycled while one may hold the key");
        assert_eq!(store.reader.secrets().expect("read").len(), 3, "data is intact");
    }
}

/// Write-ahead logs are recycled (overwritten, not appended to: a cheaper fsync), so the
/// data key's wrapping must never be written into the database: a recycled log would keep
/// an old wrapping after a rewrap.
#[tokio::test]
async fn a_new_store_recycles_its_logs_and_keeps_its_data_key_out_of_the_database() {
    let dir = TempDir::new().expect("tempdir");
    drop(open_at(dir.path()).expect("open"));
    assert!(dir.path().join(coffer_raft_store::WAL_MARKER).exists(), "a new store is marked at once");
    store_with_secrets(dir.path()).await;
    assert_eq!(recycled_logs(dir.path()), 2, "a marked store recycles its logs");
    let wrapped = wrapping(dir.path());
    assert!(!a_file_holds(&dir.path().join("db"), &wrapped, false), "the database holds the data key");
    open_at(dir.path()).expect("open").rewrap_data_key(&kek(7), &kek(8)).expect("rewrap");
    let rewrapped = wrapping(dir.path());
    assert_ne!(rewrapped, wrapped);
    assert!(!a_file_holds(&dir.path().join("db"), &rewrapped, false), "the database holds the new wrapping");
    assert!(!a_file_holds(dir.path(), &wrapped, false), "a file holds the old wrapping");
    open(dir.path(), &kek(8), StoreOptions::default()).expect("the new key opens it");
}

/// A store of an earlier release keeps its wrapping in `meta`, and its logs may hold it:
/// the wrapping moves to its file, the store is opened without recycling until no old log
/// is left, and a rewrap then leaves the old wrapping nowhere on disk.
#[tokio::test]
async fn a_store_of_an_earlier_release_moves_its_data_key_out_before_its_logs_are_recycled() {
    let dir = TempDir::new().expect("tempdir");
    store_with_secrets(dir.path()).await;
    // As an earlier release left it: format 1, the wrapping in `meta`, written through the
    // log, no file, no marker.
    let old = wrapping(dir.path());
    {
        let raw = raw_db(dir.path());
        let meta = raw.cf_handle("meta").expect("meta");
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(meta, b"format", 1u32.to_be_bytes());
        batch.put_cf(meta, b"kek_kind", b"key-file");
        batch.put_cf(meta, b"data_key", &old);
        let mut synced = rocksdb::WriteOptions::default();
        synced.set_sync(true);
        raw.write_opt(batch, &synced).expect("write through the log");
    }
    std::fs::remove_file(dir.path().join(coffer_raft_store::DATA_KEY_FILE)).expect("remove the key file");
    std::fs::remove_file(dir.path().join(coffer_raft_store::WAL_MARKER)).expect("remove the marker");
    assert!(a_file_holds(dir.path(), &old, true), "the earlier release's log holds the wrapping");
    assert_eq!(coffer_raft_store::kek_kind(dir.path()).expect("kind"), Some("key-file".into()));
    coffer_raft_store::check_kek(dir.path(), &kek(7)).expect("the key is checked where the release kept it");

    open_until_marked(dir.path());
    assert_eq!(wrapping(dir.path()), old, "the wrapping moved to its file");
    assert!(!a_file_holds(&dir.path().join("db"), &old, false), "the database still holds the wrapping");
    {
        let store = open_at(dir.path()).expect("open");
        assert_eq!(recycled_logs(dir.path()), 2, "a marked store recycles its logs");
        store.rewrap_data_key(&kek(7), &kek(8)).expect("rewrap");
    }
    assert!(!a_file_holds(dir.path(), &old, false), "a file holds the old wrapping");
    assert!(open_at(dir.path()).is_err(), "the old key opens nothing");
    open(dir.path(), &kek(8), StoreOptions::default()).expect("the new key opens it");
}

/// A move of an earlier release's store cut short after the wrapping left `meta` but before
/// `meta`'s tables were rewritten: the next start finishes it, so a rewrap still leaves the
/// old wrapping nowhere.
#[tokio::test]
async fn a_move_cut_short_is_finished_at_the_next_start() {
    let dir = TempDir::new().expect("tempdir");
    store_with_secrets(dir.path()).await;
    let old = wrapping(dir.path());
    {
        let raw = raw_db(dir.path());
        let meta = raw.cf_handle("meta").expect("meta");
        raw.put_cf(meta, b"data_key", &old).expect("put");
        raw.flush_cf(meta).expect("flush: the wrapping is in a table now");
        raw.delete_cf(meta, b"data_key").expect("deleted, not yet compacted away");
    }
    std::fs::remove_file(dir.path().join(coffer_raft_store::WAL_MARKER)).expect("remove the marker");
    assert!(a_file_holds(&dir.path().join("db"), &old, false), "a table holds the wrapping");
    open_until_marked(dir.path());
    assert!(!a_file_holds(&dir.path().join("db"), &old, false), "the database still holds the wrapping");
    open_at(dir.path()).expect("open").rewrap_data_key(&kek(7), &kek(8)).expect("rewrap");
    assert!(!a_file_holds(dir.path(), &old, false), "a file holds the old wrapping");
}
