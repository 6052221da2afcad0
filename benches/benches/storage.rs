//! Storage micro-benchmarks (issue: encrypted Raft storage).
//!
//! - `log_append/<batch>`: synced appends of 256-byte entries in batches of 1, 16 and 64
//!   entries, through `RaftLogStorage::append` and its durability callback.
//! - `seal/<size>` vs `raw_aead/<size>`: our sealing (random nonce, associated data,
//!   framing) against bare XChaCha20-Poly1305 on the same buffers.
//!
//! - in the summary only, reads of the state by key on a store of 200 000 secrets (which
//!   RocksDB holds in several levels of table files): by name, and of an id that does not
//!   exist, as every lookup of a secret by name first is.
//!
//! After criterion's own report, a summary prints appends per second and the seal/raw
//! throughput ratio, measured over a fixed number of operations.
//!
//! Run: `cargo bench -p coffer-benches --bench storage`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use coffer_raft_store::model::{Command, SealedBytes};
use coffer_raft_store::seal::{Aad, KeyBytes, LocalKek, Sealer};
use coffer_raft_store::{open, LogStore, StoreOptions, TypeConfig};
use criterion::{black_box, BenchmarkId, Criterion, Throughput};
use openraft::storage::{RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

const ENTRY_VALUE: usize = 256;

/// Log entry `index`: the creation of secret `id` named `name`, with a `value`-byte value.
fn create_entry(index: u64, id: String, name: String, value: usize) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Command::CreateSecret {
            id,
            name,
            labels: BTreeMap::new(),
            value: SealedBytes(vec![0x5a; value]),
            size: value as u32,
            at: index,
        }),
    }
}

struct AppendBench {
    _dir: tempfile::TempDir,
    log: LogStore,
    next: u64,
    rt: tokio::runtime::Runtime,
}

impl AppendBench {
    fn new() -> Self {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let kek = LocalKek::new(&KeyBytes::generate(), "key-file");
        let store = open(dir.path(), &kek, StoreOptions::default()).expect("open store");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        Self { _dir: dir, log: store.log, next: 1, rt }
    }

    /// Appends `mb` MiB of 4 KiB entries, 256 at a time; returns `mb`.
    fn prefill(&mut self, mb: usize) -> usize {
        let batches = mb * (1 << 20) / (4096 * 256);
        for _ in 0..batches {
            self.append_sized(256, 4096);
        }
        mb
    }

    fn append(&mut self, batch: usize) {
        self.append_sized(batch, ENTRY_VALUE);
    }

    fn append_sized(&mut self, batch: usize, value: usize) {
        let entries: Vec<Entry<TypeConfig>> = (0..batch)
            .map(|_| {
                let index = self.next;
                self.next += 1;
                create_entry(index, format!("id{index}"), format!("name{index}"), value)
            })
            .collect();
        let log = &mut self.log;
        self.rt.block_on(log.blocking_append(entries)).expect("append");
    }
}

fn bench_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_append");
    group.measurement_time(Duration::from_secs(5));
    for batch in [1usize, 16, 64] {
        let mut b = AppendBench::new();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |bench, &batch| {
            bench.iter(|| b.append(batch))
        });
    }
    group.finish();
}

fn raw_seal(cipher: &XChaCha20Poly1305, nonce: &[u8; 24], buf: &[u8]) -> Vec<u8> {
    cipher.encrypt(XNonce::from_slice(nonce), Payload { msg: buf, aad: b"" }).expect("encrypt")
}

fn bench_seal(c: &mut Criterion) {
    let key = KeyBytes::generate();
    let sealer = Sealer::new(&key);
    let raw = XChaCha20Poly1305::new(key.expose().into());
    let aad = Aad::new("sm", b"secret-value/some-id");
    let mut group = c.benchmark_group("seal");
    for size in [64usize, 4096, 65536] {
        let buf = vec![0x42u8; size];
        let sealed = sealer.seal(&aad, &buf).expect("seal");
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("seal", size), &buf, |b, buf| {
            b.iter(|| sealer.seal(&aad, black_box(buf)))
        });
        group.bench_with_input(BenchmarkId::new("open", size), &sealed, |b, s| {
            b.iter(|| sealer.open(&aad, black_box(s)))
        });
        group.bench_with_input(BenchmarkId::new("raw_aead", size), &buf, |b, buf| {
            b.iter(|| raw_seal(&raw, &[7u8; 24], black_box(buf)))
        });
    }
    group.finish();
}

fn per_second(ops: u64, f: impl FnMut()) -> f64 {
    let mut f = f;
    let start = Instant::now();
    for _ in 0..ops {
        f();
    }
    ops as f64 / start.elapsed().as_secs_f64()
}

/// Reads by key of the state of `n` secrets (applied 1 000 to an entry batch).
fn state_reads(n: u64) {
    let dir = tempfile::TempDir::new().expect("tempdir");
    let kek = LocalKek::new(&KeyBytes::generate(), "key-file");
    let mut store = open(dir.path(), &kek, StoreOptions::default()).expect("open store");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    for first in (1..=n).step_by(1000) {
        let entries: Vec<Entry<TypeConfig>> = (first..(first + 1000).min(n + 1))
            .map(|i| create_entry(i, format!("{i:016x}"), format!("secret-{i}"), ENTRY_VALUE))
            .collect();
        rt.block_on(store.state_machine.apply(entries)).expect("apply");
    }
    let reader = store.reader.clone();
    let mut x = 1u64;
    let found = per_second(100_000, || {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let name = format!("secret-{}", 1 + (x >> 33) % n);
        assert!(black_box(reader.secret_by_name(&name).expect("read")).is_some());
    });
    let missing = per_second(100_000, || assert!(black_box(reader.secret("secret-1").expect("read")).is_none()));
    println!("state reads by key, {n} secrets: by name {found:>7.0}/s, of an id that does not exist {missing:>7.0}/s");
}

fn summary() {
    println!("\n== storage summary ==");
    for (batch, batches) in [(1usize, 400u64), (16, 200), (64, 100)] {
        let mut b = AppendBench::new();
        let rate = per_second(batches, || b.append(batch)) * batch as f64;
        let fsyncs = rate / batch as f64;
        println!("log appends, batch {batch:>2}: {rate:>9.0} entries/s ({fsyncs:.0} synced writes/s)");
    }
    // A store that has written before, as a running manager's has: its write-ahead logs
    // switched several times, and the obsolete ones are recycled (overwritten in place).
    let mut b = AppendBench::new();
    let prefill = b.prefill(96);
    let rate = per_second(400, || b.append(1));
    println!("log appends, batch  1, after {prefill} MiB written before: {rate:>9.0} synced writes/s");
    state_reads(200_000);
    let key = KeyBytes::generate();
    let sealer = Sealer::new(&key);
    let raw = XChaCha20Poly1305::new(key.expose().into());
    let aad = Aad::new("sm", b"secret-value/some-id");
    for (size, ops) in [(64usize, 200_000u64), (4096, 50_000), (65536, 4_000)] {
        let buf = vec![0x42u8; size];
        let sealed = sealer.seal(&aad, &buf).expect("seal");
        let seal = per_second(ops, || drop(black_box(sealer.seal(&aad, black_box(&buf)))));
        let open = per_second(ops, || drop(black_box(sealer.open(&aad, black_box(&sealed)))));
        let bare = per_second(ops, || drop(black_box(raw_seal(&raw, &[7u8; 24], black_box(&buf)))));
        let mib = |r: f64| r * size as f64 / (1 << 20) as f64;
        println!(
            "{size:>6} B: seal {:>7.1} MiB/s ({:.2}x raw), open {:>7.1} MiB/s ({:.2}x raw), raw aead {:>7.1} MiB/s",
            mib(seal),
            seal / bare,
            mib(open),
            open / bare,
            mib(bare)
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_append(&mut c);
    bench_seal(&mut c);
    c.final_summary();
    summary();
}
