//! Secret writes through the API: committed `POST /v1/secrets` per second and latency
//! percentiles at 1, 16 and 64 concurrent clients, against a 3-manager cluster of real
//! processes (mutual TLS, fsync on). Clients are spread over all three managers, as
//! tooling pointed at a load balancer would be; followers forward to the leader. One
//! extra run at 64 clients writes 4 KiB values.
//!
//! Run: `cargo bench -p coffer-benches --bench secret_writes`
//! (`COFFER_BENCH_SECS` per run, default 5)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_tests::Cluster;

struct Run {
    creates: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn run(c: &Cluster, clients: usize, value_len: usize, secs: u64, tag: &str) -> anyhow::Result<Run> {
    let counter = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..clients {
        let client = c.admin(w % c.managers.len());
        let counter = counter.clone();
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            let value = vec![b'v'; value_len];
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                client.create_secret(&format!("{tag}-{n}"), &value, BTreeMap::new()).await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = start.elapsed();
    latencies.sort();
    Ok(Run { creates: latencies.len() as u64, elapsed, latencies })
}

fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::var("COFFER_BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_coffer-bench-node"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let c = Cluster::start(bin, 3, &[]).await?;
        // Warm up connections and the leader.
        run(&c, 4, 64, 1, "warmup").await?;
        println!("== secret creates through the API (3 managers, mutual TLS, fsync on, {secs} s per run) ==");
        println!("{:>8} {:>7} {:>10} {:>9} {:>9} {:>9}", "clients", "value", "creates/s", "p50 ms", "p90 ms", "p99 ms");
        for (clients, len) in [(1usize, 64usize), (16, 64), (64, 64), (64, 4096)] {
            let r = run(&c, clients, len, secs, &format!("c{clients}-v{len}")).await?;
            let rate = r.creates as f64 / r.elapsed.as_secs_f64();
            println!(
                "{clients:>8} {len:>6}B {rate:>10.0} {:>9.2} {:>9.2} {:>9.2}",
                pct(&r.latencies, 0.5),
                pct(&r.latencies, 0.9),
                pct(&r.latencies, 0.99)
            );
        }
        anyhow::Ok(())
    })
}
