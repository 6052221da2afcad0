//! Entry points for fuzzing every decoder of input from the network or the disk: join and
//! API tokens, certificates and certificate requests, grants, the request bodies of every
//! route, replicated commands and store records, Raft RPC bodies, snapshot and backup
//! files and the export stream.
//!
//! Each takes arbitrary bytes and must return, without panicking, in time proportional to
//! its input. The coverage-guided targets in `fuzz/` call them under libFuzzer; the test
//! suite (`garbage_tests`) runs them on seeded inputs.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use coffer_api::cluster::{AdminIssue, JoinRequest, NodeUpdate, RenewRequest};
use coffer_api::secrets::{SecretCreate, SecretLabels, SecretRotate};
use coffer_api::services::{ServiceCreate, ServiceUpdate};
use coffer_api::tokens::ApiTokenCreate;
use coffer_api::worker::{Grant, GrantRequest, RedeemRequest};
use coffer_raft_store::backup::{stream, BackupFile, BackupInfo, BackupKey, BackupWriter};
use coffer_raft_store::model::{Command, NodeRecord, SecretRecord, ServiceRecord, TaskRecord};
use coffer_raft_store::seal::{KeyBytes, Sealer};
use coffer_raft_store::{NodeId, SnapshotFile, SnapshotMeta, TypeConfig};

use crate::manager::grants::{self, GrantBody};
use crate::manager::leader_ops::LeaderOp;
use crate::trust::api_token::ApiToken;
use crate::trust::join_token::JoinToken;
use crate::trust::pki;

fn ca() -> &'static pki::ClusterCa {
    static CA: OnceLock<pki::ClusterCa> = OnceLock::new();
    CA.get_or_init(|| pki::ClusterCa::generate("fuzz").unwrap_or_else(|e| panic!("a CA for fuzzing: {e}")))
}

/// A file of this process and thread, rewritten for each input of the file decoders.
fn scratch(name: &str) -> PathBuf {
    let thread = format!("{:?}", std::thread::current().id()).replace(|c: char| !c.is_ascii_alphanumeric(), "");
    std::env::temp_dir().join(format!("coffer-fuzz-{}-{thread}-{name}", std::process::id()))
}

/// Join tokens and API tokens as a node or a tool presents them.
pub fn tokens(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = text.parse::<JoinToken>();
    let _ = text.parse::<ApiToken>();
}

/// Certificate requests (`/v1/join`, `/v1/renew`, `/v1/admins`) and peer certificates.
pub fn certificates(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let ca = ca();
    let _ = pki::parse_peer(data);
    let _ = pki::cert_digest(&text);
    let _ = ca.sign_csr(&text, 1, pki::Role::Worker, "fuzz", &[], Duration::from_secs(60));
    let _ = ca.sign_admin_csr(&text, "ops", "fuzz", Duration::from_secs(60));
}

/// A grant as a worker presents it for redemption.
pub fn grant(data: &[u8]) {
    if let Ok(grant) = serde_json::from_slice::<Grant>(data) {
        let _ = grants::decode(&grant);
    }
    if let Ok(body) = postcard::from_bytes::<GrantBody>(data) {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        if let Ok(g) = grants::sign(&key, &body) {
            let _ = grants::decode(&g);
        }
    }
}

/// The JSON bodies of every route, and the input rules they pass through.
pub fn request_bodies(data: &[u8]) {
    let _ = serde_json::from_slice::<JoinRequest>(data);
    let _ = serde_json::from_slice::<RenewRequest>(data);
    if let Ok(u) = serde_json::from_slice::<NodeUpdate>(data) {
        let _ = coffer_api::rules::labels(&u.label_add);
    }
    let _ = serde_json::from_slice::<AdminIssue>(data);
    if let Ok(s) = serde_json::from_slice::<SecretCreate>(data) {
        let _ = coffer_api::rules::name("secret", &s.name);
        let _ = coffer_api::rules::labels(&s.labels);
    }
    let _ = serde_json::from_slice::<SecretRotate>(data);
    let _ = serde_json::from_slice::<SecretLabels>(data);
    let _ = serde_json::from_slice::<ApiTokenCreate>(data);
    let _ = serde_json::from_slice::<GrantRequest>(data);
    let _ = serde_json::from_slice::<RedeemRequest>(data);
    if let Ok(s) = serde_json::from_slice::<ServiceCreate>(data) {
        let _ = coffer_api::rules::constraints(&s.constraints);
        let _ = coffer_api::rules::labels(&s.labels);
        let _ = coffer_api::rules::name("service", &s.name);
    }
    let _ = serde_json::from_slice::<ServiceUpdate>(data);
    let text = String::from_utf8_lossy(data);
    let _ = coffer_api::rules::parse_secret_spec(&text);
    let _ = coffer_api::rules::Constraint::parse(&text);
    let _ = coffer_api::rules::hostname(&text);
    let _ = coffer_api::rules::target(&text);
}

/// What managers send each other and what the store reads back: commands (in the log and
/// forwarded), state records, leader operations, Raft RPC bodies, snapshot headers, and
/// the frames of a link, both ways.
pub fn replicated(data: &[u8]) {
    use coffer_raft_store::codec::decode;
    let _ = crate::manager::link::parse_request(data.to_vec());
    let _ = crate::manager::link::parse_reply(data.to_vec());
    let _ = decode::<Command>(data);
    let _ = decode::<NodeRecord>(data);
    let _ = decode::<SecretRecord>(data);
    let _ = decode::<ServiceRecord>(data);
    let _ = decode::<TaskRecord>(data);
    let _ = postcard::from_bytes::<Command>(data);
    let _ = postcard::from_bytes::<LeaderOp>(data);
    let _ = postcard::from_bytes::<openraft::raft::AppendEntriesRequest<TypeConfig>>(data);
    let _ = postcard::from_bytes::<openraft::raft::VoteRequest<NodeId>>(data);
    let _ = postcard::from_bytes::<(openraft::Vote<NodeId>, SnapshotMeta)>(data);
}

/// The export stream as `coffer snapshot save` receives it, each chunk checked and sealed.
pub fn backup_stream(data: &[u8]) {
    let mut decoder = stream::Decoder::default();
    decoder.push(data);
    let key = BackupKey::from_raw(&[3u8; 32]);
    let mut writer: Option<BackupWriter<Vec<u8>>> = None;
    while let Ok(Some(frame)) = decoder.next_frame() {
        match frame {
            stream::Frame::Info(info) => {
                writer = BackupWriter::new(Vec::new(), &key, &info, std::path::Path::new("fuzz")).ok();
            }
            stream::Frame::Chunk(c) => {
                if let Some(w) = writer.as_mut() {
                    if w.chunk(&c).is_err() {
                        return;
                    }
                }
            }
            stream::Frame::End { .. } | stream::Frame::Error(_) => break,
        }
    }
    if let Some(w) = writer {
        let _ = w.finish();
    }
}

/// A backup file as `snapshot inspect` and `snapshot restore` read it. The input is the
/// file without its final SHA-256, which is appended here: a fuzzer would otherwise never
/// get past the digest to the header, the key check and the frames.
pub fn backup_file(data: &[u8]) {
    use sha2::Digest;
    let path = scratch("backup");
    let mut file = data.to_vec();
    file.extend_from_slice(&sha2::Sha256::digest(data));
    if std::fs::write(&path, &file).is_err() {
        return;
    }
    if let Ok(file) = BackupFile::open(&path) {
        let _ = file.info();
        // A raw key only: a passphrase file runs Argon2id, which is slow by design.
        if let Ok(u) = file.unlock(&BackupKey::from_raw(&[3u8; 32])) {
            let _ = u.verify();
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// A snapshot file in a manager's data dir, as the store opens and streams it.
pub fn snapshot_file(data: &[u8]) {
    let path = scratch("snapshot");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(s) = SnapshotFile::open(&path, Sealer::new(&KeyBytes::from_bytes([5u8; 32]))) {
        for chunk in s.chunks() {
            if chunk.is_err() {
                break;
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// Valid inputs to start from: one of each kind the decoders above read.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let digest = pki::cert_digest(ca().cert_pem()).unwrap_or([0; 32]);
    out.push(("tokens", JoinToken::generate(digest).reveal().as_bytes().to_vec()));
    out.push(("tokens", ApiToken::generate().reveal().as_bytes().to_vec()));
    if let Ok(csr) = pki::NodeKey::generate().and_then(|k| k.csr_pem(&[])) {
        out.push(("certificates", csr.into_bytes()));
    }
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let body = GrantBody {
        node_id: 1,
        task_id: "t".into(),
        versions: vec![("s".into(), 1)],
        term: 1,
        issuer: 1,
        expires_at_ms: 1,
    };
    if let Ok(g) = grants::sign(&key, &body) {
        out.push(("grant", serde_json::to_vec(&g).unwrap_or_default()));
    }
    for body in [
        r#"{"token":"x","role":"worker","csr_pem":"","advertise_addr":"1.2.3.4:0","hostname":"h"}"#,
        r#"{"name":"s","data":"aGk=","labels":{"a":"b"}}"#,
        r#"{"name":"svc","replicas":2,"constraints":["node.labels.a==b"],"secrets":[{"source":"s","mode":256}]}"#,
        r#"{"expected_version":1,"secret_add":[{"source":"s"}],"secret_rm":["x"]}"#,
        r#"{"availability":"drain","label_add":{"k":"v"},"label_rm":["k"]}"#,
    ] {
        out.push(("request_bodies", body.as_bytes().to_vec()));
    }
    if let Ok(b) = coffer_raft_store::codec::encode(&Command::RemoveTask { id: "t".into() }) {
        out.push(("replicated", b));
    }
    let info = BackupInfo { cluster_id: "c".into(), last_applied: None, created_at_ms: 1, counts: Default::default() };
    let mut s = stream::info(&info);
    let mut rec = Vec::new();
    for field in [&b"secret/x"[..], b"value"] {
        rec.extend_from_slice(&(field.len() as u32).to_be_bytes());
        rec.extend_from_slice(field);
    }
    s.extend_from_slice(&stream::chunk(&rec));
    s.extend_from_slice(&stream::end(1, 1));
    out.push(("backup_stream", s));
    // Past the preamble: the header frame and what follows are then the fuzzer's.
    out.push(("snapshot_file", [&b"COFFSNAP"[..], &1u32.to_be_bytes(), &16u32.to_be_bytes(), &[0u8; 16]].concat()));
    let key = BackupKey::from_raw(&[3u8; 32]);
    let info =
        BackupInfo { counts: coffer_raft_store::backup::StateCounts { records: 1, ..Default::default() }, ..info };
    if let Ok(mut w) = BackupWriter::new(Vec::new(), &key, &info, std::path::Path::new("seed")) {
        if w.chunk(&rec).is_ok() {
            if let Ok((mut file, _, _)) = w.finish() {
                // The entry point appends the digest itself.
                file.truncate(file.len().saturating_sub(32));
                out.push(("backup_file", file));
            }
        }
    }
    out
}

/// Runs the entry point named `target` on `data`.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "tokens" => tokens(data),
        "certificates" => certificates(data),
        "grant" => grant(data),
        "request_bodies" => request_bodies(data),
        "replicated" => replicated(data),
        "backup_stream" => backup_stream(data),
        "backup_file" => backup_file(data),
        "snapshot_file" => snapshot_file(data),
        _ => {}
    }
}

/// Every entry point's name.
pub const TARGETS: &[&str] = &[
    "tokens",
    "certificates",
    "grant",
    "request_bodies",
    "replicated",
    "backup_stream",
    "backup_file",
    "snapshot_file",
];
