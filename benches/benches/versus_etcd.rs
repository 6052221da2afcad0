//! Coffer against etcd, side by side in one run, with the same client code: N independent
//! closed-loop clients, each with its own keep-alive HTTP/1.1 connection over TLS. Coffer
//! creates with `POST /v1/secrets`, etcd puts with its JSON gateway (`/v3/kv/put`); reads
//! are Coffer's linearizable `GET /v1/secrets/{name}` and etcd's linearizable
//! `/v3/kv/range`. Writes go to the leader unless the point says "spread"; reads are
//! always spread over every member. Points are interleaved (etcd and Coffer alternate which
//! goes first), each is warmed up, then measured, and the median of the repetitions is
//! printed with the ratio, and with the CPU time (user and system, all threads) that each
//! system's three server processes used per operation in the measured window: on a
//! machine shared by both clusters and the clients, a system that spends more CPU on an
//! operation also waits longer for the cores at one client.
//!
//! etcd is Debian's `etcd-server` (`apt-get install etcd-server`): three members with peer
//! mutual TLS and client TLS, on loopback. Without it, the etcd half is skipped and said so.
//!
//! Run: `cargo bench -p coffer-benches --bench versus_etcd`
//! (`COFFER_BENCH_SECS` measured per point, default 10; `COFFER_BENCH_WARMUP` 2;
//! `COFFER_BENCH_REPS` 3; `COFFER_BENCH_GROWTH=N`: instead, 64 clients create N secrets
//! and the rate and p99 are printed per window of 10 000, to see whether a write's cost
//! grows with the state; `COFFER_BENCH_MEMORY=MB`: instead, both write MB MiB of 4 KiB
//! values (Coffer: new versions of 1 000 secrets; etcd: puts to 1 000 keys) and each
//! member's RSS and data dir size are printed; `COFFER_BENCH_MANAGER_ARGS` adds flags to
//! every manager; `COFFER_BENCH_POINTS=1,3`: only those points, counted from 1;
//! `COFFER_BENCH_PREFILL_MB=MB`: first, both write MB MiB as the memory mode does, so that
//! the points run on clusters that have written before, as long-running ones have;
//! `COFFER_BENCH_STAGES=1`: after each Coffer point, where its writes' time went, stage
//! by stage, from the managers' `coffer_write_stage_seconds`, and `request`: the whole of
//! each `POST /v1/secrets` on the manager, from `coffer_http_request_seconds`).
//!
//! Each repetition's line also counts the server processes' context switches per
//! operation: at one client, a write's time is mostly hand-offs between threads and
//! processes on a shared machine, and this shows how many it took.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use coffer_benches::{clock_ticks, context_switches, threads_cpu, usage};
use coffer_tests::{eventually, Cluster};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A reqwest client with one HTTP/1.1 connection (no ALPN h2), as most tooling has.
fn http1(mut tls: rustls::ClientConfig) -> reqwest::Client {
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .http1_only()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .build()
        .expect("http client")
}

#[derive(Debug)]
struct StaticCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for StaticCert {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// One system under test, as the load generator sees it.
#[derive(Clone)]
struct Target {
    name: &'static str,
    tls: Arc<rustls::ClientConfig>,
    /// Base URLs, the leader first.
    members: Vec<String>,
    /// Its server processes, whose CPU time is counted per operation.
    pids: Vec<u32>,
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Write { value: usize },
    Read,
}

impl Target {
    fn client(&self) -> reqwest::Client {
        http1((*self.tls).clone())
    }

    async fn call(&self, http: &reqwest::Client, base: &str, op: Op, n: u64, value: &str) -> anyhow::Result<()> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let resp = match (self.name, op) {
            ("coffer", Op::Write { .. }) => {
                http.post(format!("{base}/v1/secrets"))
                    .json(&serde_json::json!({"name": format!("b{n}"), "data": value}))
                    .send()
                    .await?
            }
            ("coffer", Op::Read) => http.get(format!("{base}/v1/secrets/r{}", n % 64)).send().await?,
            (_, Op::Write { .. }) => {
                http.post(format!("{base}/v3/kv/put"))
                    .json(&serde_json::json!({"key": b64.encode(format!("b{n}")), "value": value}))
                    .send()
                    .await?
            }
            (_, Op::Read) => {
                http.post(format!("{base}/v3/kv/range"))
                    .json(&serde_json::json!({"key": b64.encode(format!("r{}", n % 64))}))
                    .send()
                    .await?
            }
        };
        let status = resp.status();
        let _ = resp.bytes().await?;
        anyhow::ensure!(status.is_success(), "{} answered {status}", self.name);
        Ok(())
    }

    async fn seed_reads(&self) -> anyhow::Result<()> {
        let http = self.client();
        let b64 = base64::engine::general_purpose::STANDARD;
        for i in 0..64 {
            let (base, value) = (&self.members[0], b64.encode(vec![b'r'; 256]));
            let resp = if self.name == "coffer" {
                http.post(format!("{base}/v1/secrets"))
                    .json(&serde_json::json!({"name": format!("r{i}"), "data": value}))
                    .send()
                    .await?
            } else {
                http.post(format!("{base}/v3/kv/put"))
                    .json(&serde_json::json!({"key": b64.encode(format!("r{i}")), "value": value}))
                    .send()
                    .await?
            };
            anyhow::ensure!(resp.status().is_success(), "seeding {}: {}", self.name, resp.status());
        }
        Ok(())
    }
}

struct Measured {
    ops: u64,
    secs: f64,
    latencies: Vec<Duration>,
    /// CPU seconds the target's server processes used in the measured window.
    cpu_secs: f64,
    /// Of which RocksDB's own threads (flushes and compactions): none for etcd.
    background_secs: f64,
    /// Context switches of the server processes' threads in the window: on a shared
    /// machine, each is a wait for a core and the kernel's work of switching.
    switches: u64,
}

/// CPU seconds (user and system) that `pids` have used so far: all threads, and RocksDB's;
/// and their threads' context switches.
fn server_usage(pids: &[u32], ticks: u64) -> (f64, f64, u64) {
    let all = pids.iter().filter_map(|&p| usage(p, ticks)).map(|u| u.cpu.as_secs_f64()).sum();
    let rocksdb = pids.iter().map(|&p| threads_cpu(p, ticks, "rocksdb:").as_secs_f64()).sum();
    (all, rocksdb, pids.iter().map(|&p| context_switches(p)).sum())
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

/// `clients` closed loops for `warmup` + `secs`; only the second part counts.
async fn load(
    t: &Target,
    op: Op,
    clients: usize,
    spread: bool,
    warmup: Duration,
    secs: Duration,
    next: &Arc<AtomicU64>,
) -> anyhow::Result<Measured> {
    let start = Instant::now() + warmup;
    let end = start + secs;
    let value = match op {
        Op::Write { value } => base64::engine::general_purpose::STANDARD.encode(vec![b'v'; value]),
        Op::Read => String::new(),
    };
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (t, next, value) = (t.clone(), next.clone(), value.clone());
        let base = if spread { t.members[c % t.members.len()].clone() } else { t.members[0].clone() };
        tasks.push(tokio::spawn(async move {
            let http = t.client();
            let mut lat = Vec::new();
            loop {
                let began = Instant::now();
                if began >= end {
                    break;
                }
                t.call(&http, &base, op, next.fetch_add(1, Ordering::Relaxed), &value).await?;
                if began >= start {
                    lat.push(began.elapsed());
                }
            }
            anyhow::Ok(lat)
        }));
    }
    // The servers' CPU over the measured window (the clients' own is not counted).
    let pids = t.pids.clone();
    let cpu = tokio::spawn(async move {
        let ticks = clock_ticks();
        tokio::time::sleep_until(start.into()).await;
        let before = server_usage(&pids, ticks);
        tokio::time::sleep_until(end.into()).await;
        let after = server_usage(&pids, ticks);
        (after.0 - before.0, after.1 - before.1, after.2.saturating_sub(before.2))
    });
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    latencies.sort();
    let (cpu_secs, background_secs, switches) = cpu.await?;
    Ok(Measured {
        ops: latencies.len() as u64,
        secs: secs.as_secs_f64(),
        latencies,
        cpu_secs,
        background_secs,
        switches,
    })
}

// ---------------------------------------------------------------------------------------
// etcd: three members with peer mutual TLS and client TLS

struct Etcd {
    children: Vec<Child>,
    data_dirs: Vec<PathBuf>,
    _dir: tempfile::TempDir,
    target: Target,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn etcd_binary() -> Option<PathBuf> {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"].iter().map(PathBuf::from).find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn certs(dir: &Path) -> anyhow::Result<String> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key)?;
    let ca_pem = ca_cert.pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    leaf.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &issuer)?;
    std::fs::write(dir.join("ca.pem"), &ca_pem)?;
    std::fs::write(dir.join("member.pem"), cert.pem())?;
    std::fs::write(dir.join("member.key"), key.serialize_pem())?;
    Ok(ca_pem)
}

async fn start_etcd(bin: &Path) -> anyhow::Result<Etcd> {
    let dir = tempfile::TempDir::new()?;
    let ca_pem = certs(dir.path())?;
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let cluster: Vec<String> =
        ports.iter().enumerate().map(|(i, (_, peer))| format!("e{i}=https://127.0.0.1:{peer}")).collect();
    let p = |f: &str| dir.path().join(f).display().to_string();
    let mut children = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let log = std::fs::File::create(dir.path().join(format!("e{i}.log")))?;
        children.push(
            Command::new(bin)
                .args(["--name", &format!("e{i}"), "--data-dir", &p(&format!("e{i}.data"))])
                .args(["--listen-client-urls", &format!("https://127.0.0.1:{client}")])
                .args(["--advertise-client-urls", &format!("https://127.0.0.1:{client}")])
                .args(["--listen-peer-urls", &format!("https://127.0.0.1:{peer}")])
                .args(["--initial-advertise-peer-urls", &format!("https://127.0.0.1:{peer}")])
                .args(["--initial-cluster", &cluster.join(","), "--initial-cluster-state", "new"])
                .args(["--cert-file", &p("member.pem"), "--key-file", &p("member.key")])
                .args(["--peer-cert-file", &p("member.pem"), "--peer-key-file", &p("member.key")])
                .args(["--peer-trusted-ca-file", &p("ca.pem"), "--peer-client-cert-auth"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?,
        );
    }
    coffer_api::tls::install_provider();
    let tls = Arc::new(coffer_api::tls::client_config(&ca_pem, None)?);
    let mut members: Vec<String> = ports.iter().map(|(c, _)| format!("https://127.0.0.1:{c}")).collect();
    let probe = http1((*tls).clone());
    let leader = eventually("etcd to elect a leader", Duration::from_secs(60), || async {
        let mut statuses = Vec::new();
        for m in &members {
            let v: serde_json::Value = probe
                .post(format!("{m}/v3/maintenance/status"))
                .json(&serde_json::json!({}))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            statuses.push(v);
        }
        let leader = statuses[0]["leader"].as_str()?.to_string();
        statuses.iter().position(|s| s["header"]["member_id"].as_str() == Some(leader.as_str()))
    })
    .await?;
    members.swap(0, leader);
    let pids = children.iter().map(Child::id).collect();
    let data_dirs = (0..3).map(|i| dir.path().join(format!("e{i}.data"))).collect();
    Ok(Etcd { children, data_dirs, _dir: dir, target: Target { name: "etcd", tls, members, pids } })
}

// ---------------------------------------------------------------------------------------

async fn coffer_target(c: &Cluster) -> anyhow::Result<Target> {
    let leader = c.leader_seen_by(0).await?;
    let li = c.index_of(leader).ok_or_else(|| anyhow::anyhow!("no leader index"))?;
    let dir = c.client_dir();
    let read = |f: &str| std::fs::read_to_string(dir.join(f));
    let key = coffer_api::tls::certified_key(&read("client.pem")?, &read("client.key")?)?;
    let tls = Arc::new(coffer_api::tls::client_config(&read("ca.pem")?, Some(Arc::new(StaticCert(key))))?);
    let mut members: Vec<String> = c.managers.iter().map(|m| format!("https://{}", m.addr)).collect();
    members.swap(0, li);
    let pids = c.managers.iter().map(|m| m.pid()).collect();
    Ok(Target { name: "coffer", tls, members, pids })
}

struct Point {
    label: &'static str,
    op: Op,
    clients: usize,
    spread: bool,
}

const POINTS: &[Point] = &[
    Point { label: "writes, 256 B, 1 client", op: Op::Write { value: 256 }, clients: 1, spread: false },
    Point { label: "writes, 256 B, 16 clients", op: Op::Write { value: 256 }, clients: 16, spread: false },
    Point { label: "writes, 256 B, 64 clients", op: Op::Write { value: 256 }, clients: 64, spread: false },
    Point { label: "writes, 4 KiB, 64 clients", op: Op::Write { value: 4096 }, clients: 64, spread: false },
    Point { label: "writes, 256 B, 64 clients, spread", op: Op::Write { value: 256 }, clients: 64, spread: true },
    Point { label: "linearizable reads, 64 clients, spread", op: Op::Read, clients: 64, spread: true },
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn rss_mib(pid: u32) -> f64 {
    usage(pid, 100).map_or(0.0, |u| u.rss_kib as f64 / 1024.0)
}

fn dir_mib(dir: &Path) -> f64 {
    fn walk(p: &Path) -> u64 {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => {
                std::fs::read_dir(p).map(|rd| rd.filter_map(Result::ok).map(|e| walk(&e.path())).sum()).unwrap_or(0)
            }
            Ok(m) => m.len(),
            Err(_) => 0,
        }
    }
    walk(dir) as f64 / (1 << 20) as f64
}

/// 64 clients write `mb` MiB of 4 KiB values, as new versions of 1 000 secrets (Coffer)
/// or puts to 1 000 keys (etcd); then each member's RSS, at once and after 10 s at rest.
async fn memory(t: &Target, procs: &[(u32, PathBuf)], mb: u64) -> anyhow::Result<()> {
    let before: Vec<f64> = procs.iter().map(|(p, _)| rss_mib(*p)).collect();
    let (total, took) = fill(t, mb, "m").await?;
    let after: Vec<f64> = procs.iter().map(|(p, _)| rss_mib(*p)).collect();
    tokio::time::sleep(Duration::from_secs(10)).await;
    println!(
        "== {}: {mb} MiB as {total} writes of 4 KiB to {FILL_KEYS} keys, 64 clients, {:.0} s ({:.0}/s) ==",
        t.name,
        took,
        total as f64 / took
    );
    println!("{:>8} {:>12} {:>12} {:>14} {:>12}", "member", "RSS before", "RSS after", "RSS +10 s", "data dir");
    for (i, (pid, dir)) in procs.iter().enumerate() {
        println!(
            "{i:>8} {:>9.0} MiB {:>8.0} MiB {:>10.0} MiB {:>8.0} MiB",
            before[i],
            after[i],
            rss_mib(*pid),
            dir_mib(dir)
        );
    }
    Ok(())
}

const FILL_KEYS: u64 = 1000;

/// 64 clients write `mb` MiB of 4 KiB values to `FILL_KEYS` keys named `<prefix><n>`:
/// secrets created then rotated (Coffer), puts (etcd). The number of writes and the
/// seconds they took.
async fn fill(t: &Target, mb: u64, prefix: &'static str) -> anyhow::Result<(u64, f64)> {
    const VALUE: usize = 4096;
    const KEYS: u64 = FILL_KEYS;
    let total = mb * (1 << 20) / VALUE as u64;
    let b64 = base64::engine::general_purpose::STANDARD;
    let value = b64.encode(vec![b'm'; VALUE]);
    let http = t.client();
    for k in 0..KEYS {
        let resp = if t.name == "coffer" {
            http.post(format!("{}/v1/secrets", t.members[0]))
                .json(&serde_json::json!({"name": format!("{prefix}{k}"), "data": value}))
                .send()
                .await?
        } else {
            http.post(format!("{}/v3/kv/put", t.members[0]))
                .json(&serde_json::json!({"key": b64.encode(format!("{prefix}{k}")), "value": value}))
                .send()
                .await?
        };
        anyhow::ensure!(resp.status().is_success(), "seeding {}: {}", t.name, resp.status());
    }
    let next = Arc::new(AtomicU64::new(KEYS));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (t, next, value) = (t.clone(), next.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let http = t.client();
            let base = &t.members[0];
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let key = format!("{prefix}{}", n % KEYS);
                let resp = if t.name == "coffer" {
                    http.post(format!("{base}/v1/secrets/{key}/rotate"))
                        .json(&serde_json::json!({"data": value}))
                        .send()
                        .await?
                } else {
                    http.post(format!("{base}/v3/kv/put"))
                        .json(&serde_json::json!({
                            "key": base64::engine::general_purpose::STANDARD.encode(&key),
                            "value": value
                        }))
                        .send()
                        .await?
                };
                let status = resp.status();
                let body = resp.bytes().await?;
                anyhow::ensure!(
                    status.is_success(),
                    "{} answered {status} to write {n}: {}",
                    t.name,
                    String::from_utf8_lossy(&body)
                );
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok((total, start.elapsed().as_secs_f64()))
}

async fn growth(t: &Target, total: u64) -> anyhow::Result<()> {
    println!("== {}: 64 clients create {total} secrets of 256 B; per window of 10 000 ==", t.name);
    println!("{:>10} {:>10} {:>9}", "secrets", "creates/s", "p99 ms");
    let next = Arc::new(AtomicU64::new(1_000_000));
    let done = Arc::new(AtomicU64::new(0));
    let value = base64::engine::general_purpose::STANDARD.encode(vec![b'v'; 256]);
    let window: Arc<std::sync::Mutex<Vec<Duration>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (t, next, done, value, window) = (t.clone(), next.clone(), done.clone(), value.clone(), window.clone());
        tasks.push(tokio::spawn(async move {
            let http = t.client();
            while done.load(Ordering::Relaxed) < total {
                let began = Instant::now();
                t.call(&http, &t.members[0], Op::Write { value: 256 }, next.fetch_add(1, Ordering::Relaxed), &value)
                    .await?;
                window.lock().expect("lock").push(began.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let mut mark = (Instant::now(), 0u64);
    while mark.1 + 10_000 <= total {
        let n = done.load(Ordering::Relaxed);
        if n >= mark.1 + 10_000 {
            let mut lat = std::mem::take(&mut *window.lock().expect("lock"));
            lat.sort();
            let rate = (n - mark.1) as f64 / mark.0.elapsed().as_secs_f64();
            println!("{n:>10} {rate:>10.0} {:>9.1}", pct(&lat, 0.99));
            mark = (Instant::now(), n);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Each manager's `coffer_raft_snapshot_index`: the Raft snapshots a manager built (or
/// installed) between two readings show as a change.
async fn snapshot_indexes(c: &Cluster) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::new();
    for i in 0..c.managers.len() {
        let text = c.admin(i).metrics().await?;
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix("coffer_raft_snapshot_index "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        out.push(value);
    }
    Ok(out)
}

/// Each manager's `coffer_write_stage_seconds` as (stage, sum, count).
async fn stage_sums(c: &Cluster) -> anyhow::Result<Vec<Vec<(String, f64, f64)>>> {
    let mut out = Vec::new();
    for i in 0..c.managers.len() {
        let text = c.admin(i).metrics().await?;
        let mut stages: Vec<(String, f64, f64)> = Vec::new();
        for line in text.lines() {
            // The write stages, and the whole of the requests that write a secret (as
            // `request`): what a write spends here outside `propose`.
            let (kind, stage, value) = if let Some(rest) = line.strip_prefix("coffer_write_stage_seconds_") {
                let (kind, rest) = rest.split_once("{stage=\"").unwrap_or(("", ""));
                let Some((stage, value)) = rest.split_once("\"} ") else { continue };
                (kind, stage, value)
            } else if let Some(rest) = line.strip_prefix("coffer_http_request_seconds_") {
                let Some((kind, value)) = rest.split_once("{method=\"POST\",route=\"/v1/secrets\"} ") else { continue };
                (kind, "request", value)
            } else {
                continue;
            };
            let value: f64 = value.trim().parse().unwrap_or(0.0);
            let at = match stages.iter().position(|(s, _, _)| s == stage) {
                Some(at) => at,
                None => {
                    stages.push((stage.to_string(), 0.0, 0.0));
                    stages.len() - 1
                }
            };
            match kind {
                "sum" => stages[at].1 = value,
                "count" => stages[at].2 = value,
                _ => {}
            }
        }
        out.push(stages);
    }
    Ok(out)
}

/// The mean time of each stage between two readings (warm-up included), and how many
/// times it ran, per manager, leader first.
fn print_stages(c: &Cluster, leader: u64, before: &[Vec<(String, f64, f64)>], after: &[Vec<(String, f64, f64)>]) {
    let mut order: Vec<usize> = (0..c.managers.len()).collect();
    order.sort_by_key(|&i| c.managers[i].id != leader);
    for i in order {
        let role = if c.managers[i].id == leader { "leader" } else { "follower" };
        let mut line = format!("  stages, {role:<8} {:>16x}:", c.managers[i].id);
        for (stage, sum, count) in &after[i] {
            let (s0, n0) = before[i].iter().find(|(s, _, _)| s == stage).map_or((0.0, 0.0), |(_, s, n)| (*s, *n));
            let n = count - n0;
            if n > 0.0 {
                line.push_str(&format!(" {stage} {:.3} ms ({n:.0})", (sum - s0) / n * 1000.0));
            }
        }
        println!("{line}");
    }
}

fn main() -> anyhow::Result<()> {
    let secs = Duration::from_secs(env_u64("COFFER_BENCH_SECS", 10));
    let warmup = Duration::from_secs(env_u64("COFFER_BENCH_WARMUP", 2));
    let reps = env_u64("COFFER_BENCH_REPS", 3).max(1);
    let bin = Path::new(env!("CARGO_BIN_EXE_coffer-bench-node"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        // Extra manager flags, to compare settings (e.g. `--raft-snapshot-every N`).
        let extra = std::env::var("COFFER_BENCH_MANAGER_ARGS").unwrap_or_default();
        let extra: Vec<&str> = extra.split_whitespace().collect();
        let c = Cluster::start(bin, 3, &extra).await?;
        let coffer = coffer_target(&c).await?;
        if let Ok(total) = std::env::var("COFFER_BENCH_GROWTH").map(|v| v.parse::<u64>().unwrap_or(200_000)) {
            return growth(&coffer, total).await;
        }
        let etcd = match etcd_binary() {
            Some(b) => Some(start_etcd(&b).await?),
            None => {
                println!("etcd is not installed (apt-get install etcd-server): the etcd half is skipped");
                None
            }
        };
        if let Ok(mb) = std::env::var("COFFER_BENCH_MEMORY").map(|v| v.parse::<u64>().unwrap_or(500)) {
            let coffer_procs: Vec<(u32, PathBuf)> = c.managers.iter().map(|m| (m.pid(), m.dir.clone())).collect();
            if let Err(e) = memory(&coffer, &coffer_procs, mb).await {
                // What the managers said about it, before their directories go.
                for m in &c.managers {
                    let log = m.log();
                    let notable: Vec<&str> =
                        log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
                    eprintln!("--- manager {:x}: {} warnings and errors, the last 20:", m.id, notable.len());
                    for l in notable.iter().rev().take(20).rev() {
                        eprintln!("{l}");
                    }
                }
                return Err(e);
            }
            if let Some(e) = &etcd {
                let procs: Vec<(u32, PathBuf)> =
                    e.children.iter().zip(&e.data_dirs).map(|(c, d)| (c.id(), d.clone())).collect();
                memory(&e.target, &procs, mb).await?;
            }
            return Ok(());
        }
        let mut targets = vec![coffer.clone()];
        if let Some(e) = &etcd {
            targets.push(e.target.clone());
        }
        // A long-running cluster has written before: its write-ahead logs are recycled
        // (Coffer) or preallocated segments (etcd) by now. A fresh one appends to new files.
        let prefill = env_u64("COFFER_BENCH_PREFILL_MB", 0);
        for t in &targets {
            if prefill > 0 {
                let (n, took) = fill(t, prefill, "p").await?;
                println!("{}: prefilled with {prefill} MiB ({n} writes of 4 KiB) in {took:.0} s", t.name);
            }
            t.seed_reads().await?;
        }
        let next = Arc::new(AtomicU64::new(0));
        let only: Vec<usize> = std::env::var("COFFER_BENCH_POINTS")
            .map(|v| v.split(',').filter_map(|p| p.trim().parse::<usize>().ok()).collect())
            .unwrap_or_default();
        let chosen = |pi: usize| only.is_empty() || only.contains(&(pi + 1));
        let stages = std::env::var("COFFER_BENCH_STAGES").is_ok_and(|v| v == "1");
        let mut figures: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); targets.len()]; POINTS.len()];
        let mut p99: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); targets.len()]; POINTS.len()];
        let mut cpu: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); targets.len()]; POINTS.len()];
        let mut background: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); targets.len()]; POINTS.len()];
        for rep in 0..reps {
            for (pi, point) in POINTS.iter().enumerate().filter(|(pi, _)| chosen(*pi)) {
                let mut order: Vec<usize> = (0..targets.len()).collect();
                if (rep + pi as u64) % 2 == 1 {
                    order.reverse();
                }
                for ti in order {
                    let before = if stages && ti == 0 { Some(stage_sums(&c).await?) } else { None };
                    let snapshots_before = if ti == 0 { snapshot_indexes(&c).await? } else { Vec::new() };
                    let m = load(&targets[ti], point.op, point.clients, point.spread, warmup, secs, &next).await?;
                    let snapshots = if ti == 0 {
                        let after = snapshot_indexes(&c).await?;
                        let built = after.iter().zip(&snapshots_before).filter(|(a, b)| a != b).count();
                        format!(", {built} of the managers built a Raft snapshot (warm-up included)")
                    } else {
                        String::new()
                    };
                    if let Some(before) = before {
                        let after = stage_sums(&c).await?;
                        println!("{} (Coffer, repetition {}): {:.0}/s", point.label, rep + 1, m.ops as f64 / m.secs);
                        print_stages(&c, c.leader_seen_by(0).await?, &before, &after);
                    }
                    let per_op = |secs: f64| secs * 1e6 / (m.ops.max(1) as f64);
                    // Each repetition's figures, so that an outlier of the median shows, and
                    // whether RocksDB's flushes and compactions ran in its window.
                    println!(
                        "{:<40} {:<6} rep {}: {:>8.0}/s, p99 {:>6.1} ms, cpu {:>5.0} us/op, of which RocksDB's threads {:>4.0}, {:.1} context switches/op{snapshots}",
                        point.label,
                        targets[ti].name,
                        rep + 1,
                        m.ops as f64 / m.secs,
                        pct(&m.latencies, 0.99),
                        per_op(m.cpu_secs),
                        per_op(m.background_secs),
                        m.switches as f64 / m.ops.max(1) as f64
                    );
                    figures[pi][ti].push(m.ops as f64 / m.secs);
                    p99[pi][ti].push(pct(&m.latencies, 0.99));
                    cpu[pi][ti].push(per_op(m.cpu_secs));
                    background[pi][ti].push(per_op(m.background_secs));
                }
            }
        }
        println!(
            "== Coffer (3 managers) and etcd (3 members), {} s per point after {} s warm-up, median of {reps}; \
             each client its own HTTP/1.1 keep-alive connection ==",
            secs.as_secs(),
            warmup.as_secs()
        );
        println!(
            "{:<40} {:>10} {:>10} {:>8} {:>12} {:>12} {:>12} {:>12} {:>12}",
            "point", "etcd/s", "coffer/s", "ratio", "etcd p99 ms", "coffer p99", "etcd cpu us", "coffer cpu", "of it rocksdb"
        );
        for (pi, point) in POINTS.iter().enumerate().filter(|(pi, _)| chosen(*pi)) {
            let coffer_rate = median(figures[pi][0].clone());
            let coffer_p99 = median(p99[pi][0].clone());
            let coffer_cpu = median(cpu[pi][0].clone());
            let coffer_bg = median(background[pi][0].clone());
            match targets.len() {
                2 => {
                    let etcd_rate = median(figures[pi][1].clone());
                    let etcd_p99 = median(p99[pi][1].clone());
                    let etcd_cpu = median(cpu[pi][1].clone());
                    println!(
                        "{:<40} {etcd_rate:>10.0} {coffer_rate:>10.0} {:>8.2} {etcd_p99:>12.1} {coffer_p99:>12.1} \
                         {etcd_cpu:>12.0} {coffer_cpu:>12.0} {coffer_bg:>12.0}",
                        point.label,
                        coffer_rate / etcd_rate.max(1.0)
                    );
                }
                _ => println!(
                    "{:<40} {:>10} {coffer_rate:>10.0} {:>8} {:>12} {coffer_p99:>12.1} {:>12} {coffer_cpu:>12.0} {coffer_bg:>12.0}",
                    point.label, "-", "-", "-", "-"
                ),
            }
        }
        drop(etcd);
        anyhow::Ok(())
    })
}
