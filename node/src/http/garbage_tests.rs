//! Every decoder of input from the network or the disk, fed garbage: random bytes, and
//! valid encodings with bytes flipped, cut or appended. None may panic; each refuses with
//! its error. (A seeded quick run for the test suite; not a coverage-guided fuzzer.)

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use coffer_api::cluster::{AdminIssue, JoinRequest, NodeUpdate, RenewRequest};
use coffer_api::secrets::{SecretCreate, SecretLabels, SecretRotate};
use coffer_api::services::{ServiceCreate, ServiceUpdate};
use coffer_api::tokens::ApiTokenCreate;
use coffer_api::worker::{Grant, GrantRequest, RedeemRequest};
use coffer_raft_store::model::{Command, NodeRecord, SecretRecord, ServiceRecord, TaskRecord};

use crate::manager::grants::{self, GrantBody};
use crate::trust::api_token::ApiToken;
use crate::trust::join_token::JoinToken;
use crate::trust::pki;

const ROUNDS: usize = 3_000;

/// Random bytes, and mutations of `seeds`: a flipped byte, a cut, junk appended.
fn inputs(seeds: &[Vec<u8>], rng: &mut StdRng) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS {
        let mut v = if seeds.is_empty() || i % 3 == 0 {
            let mut v = vec![0u8; rng.gen_range(0..256)];
            rng.fill_bytes(&mut v);
            v
        } else {
            seeds[i % seeds.len()].clone()
        };
        if !v.is_empty() {
            match rng.gen_range(0..4) {
                0 => {
                    let at = rng.gen_range(0..v.len());
                    v[at] ^= 1 << rng.gen_range(0..8);
                }
                1 => v.truncate(rng.gen_range(0..v.len())),
                2 => v.extend((0..rng.gen_range(1..16)).map(|_| rng.gen::<u8>())),
                _ => {}
            }
        }
        out.push(v);
    }
    out
}

#[test]
fn tokens_grants_and_certificates_refuse_garbage_without_panicking() {
    let mut rng = StdRng::seed_from_u64(0xC0FFE);
    let ca = pki::ClusterCa::generate("c1").expect("ca");
    let join = JoinToken::generate(pki::cert_digest(ca.cert_pem()).expect("digest"));
    let api = ApiToken::generate();
    let csr = pki::NodeKey::generate().expect("key").csr_pem(&[]).expect("csr");
    let seeds = vec![join.reveal().as_bytes().to_vec(), api.reveal().as_bytes().to_vec(), csr.into_bytes()];
    for input in inputs(&seeds, &mut rng) {
        let text = String::from_utf8_lossy(&input);
        let _ = text.parse::<JoinToken>();
        let _ = text.parse::<ApiToken>();
        let _ = pki::parse_peer(&input);
        let _ = pki::cert_digest(&text);
        let _ = ca.sign_csr(&text, 1, pki::Role::Worker, "c1", &[], std::time::Duration::from_secs(60));
        let _ = ca.sign_admin_csr(&text, "ops", "c1", std::time::Duration::from_secs(60));
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
    let g = grants::sign(&key, &body).expect("sign");
    let seeds = vec![serde_json::to_vec(&g).expect("json")];
    for input in inputs(&seeds, &mut rng) {
        if let Ok(grant) = serde_json::from_slice::<Grant>(&input) {
            let _ = grants::decode(&grant);
        }
    }
}

#[test]
fn request_bodies_and_input_rules_refuse_garbage_without_panicking() {
    let mut rng = StdRng::seed_from_u64(0xBEEF);
    let seeds: Vec<Vec<u8>> = [
        r#"{"token":"x","role":"worker","csr_pem":"","advertise_addr":"1.2.3.4:0","hostname":"h"}"#,
        r#"{"name":"s","data":"aGk=","labels":{"a":"b"}}"#,
        r#"{"name":"svc","replicas":2,"constraints":["node.labels.a==b"],"secrets":[{"source":"s","mode":256}]}"#,
        r#"{"expected_version":1,"secret_add":[{"source":"s"}],"secret_rm":["x"]}"#,
        r#"{"availability":"drain","label_add":{"k":"v"},"label_rm":["k"]}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    for input in inputs(&seeds, &mut rng) {
        let _ = serde_json::from_slice::<JoinRequest>(&input);
        let _ = serde_json::from_slice::<RenewRequest>(&input);
        let _ = serde_json::from_slice::<NodeUpdate>(&input);
        let _ = serde_json::from_slice::<AdminIssue>(&input);
        let _ = serde_json::from_slice::<SecretCreate>(&input);
        let _ = serde_json::from_slice::<SecretRotate>(&input);
        let _ = serde_json::from_slice::<SecretLabels>(&input);
        let _ = serde_json::from_slice::<ApiTokenCreate>(&input);
        let _ = serde_json::from_slice::<GrantRequest>(&input);
        let _ = serde_json::from_slice::<RedeemRequest>(&input);
        if let Ok(s) = serde_json::from_slice::<ServiceCreate>(&input) {
            let _ = coffer_api::rules::constraints(&s.constraints);
            let _ = coffer_api::rules::labels(&s.labels);
            let _ = coffer_api::rules::name("service", &s.name);
        }
        let _ = serde_json::from_slice::<ServiceUpdate>(&input);
        let text = String::from_utf8_lossy(&input);
        let _ = coffer_api::rules::parse_secret_spec(&text);
        let _ = coffer_api::rules::Constraint::parse(&text);
        let _ = coffer_api::rules::hostname(&text);
        let _ = coffer_api::rules::target(&text);
    }
}

#[test]
fn replicated_commands_and_store_records_refuse_garbage_without_panicking() {
    let mut rng = StdRng::seed_from_u64(0xFEED);
    let cmd = Command::RemoveTask { id: "t".into() };
    let seeds = vec![coffer_raft_store::codec::encode(&cmd).expect("encode")];
    for input in inputs(&seeds, &mut rng) {
        let _ = coffer_raft_store::codec::decode::<Command>(&input);
        let _ = coffer_raft_store::codec::decode::<NodeRecord>(&input);
        let _ = coffer_raft_store::codec::decode::<SecretRecord>(&input);
        let _ = coffer_raft_store::codec::decode::<ServiceRecord>(&input);
        let _ = coffer_raft_store::codec::decode::<TaskRecord>(&input);
        let _ = postcard::from_bytes::<GrantBody>(&input);
        let _ = postcard::from_bytes::<Command>(&input);
    }
}
