//! Leader loss: the time from SIGKILL of the leader of a 3-manager cluster (real processes,
//! mutual TLS, fsync on) to the first write committed afterwards, over several runs.
//!
//! The write is retried through the surviving managers as a client would; each attempt is
//! a real committed command. Prints every run and the median.
//!
//! Run: `cargo bench -p coffer-benches --bench failover` (`COFFER_FAILOVER_RUNS`, default 7)

use std::path::Path;
use std::time::{Duration, Instant};

use coffer_api::cluster::Availability;
use coffer_tests::Cluster;

async fn one_run(bin: &Path) -> anyhow::Result<Duration> {
    let mut c = Cluster::start(bin, 3, &[]).await?;
    let leader = c.leader_seen_by(0).await?;
    let dead = c.index_of(leader).ok_or_else(|| anyhow::anyhow!("leader not among managers"))?;
    let survivors: Vec<usize> = (0..3).filter(|&i| i != dead).collect();
    let clients: Vec<_> = survivors.iter().map(|&i| c.admin(i)).collect();
    let target = c.managers[survivors[0]].id;
    // Warm the clients' connections, as a running client's would be.
    for cl in &clients {
        cl.status().await?;
    }
    c.managers[dead].kill();
    let start = Instant::now();
    let mut attempt = 0usize;
    loop {
        let cl = &clients[attempt % clients.len()];
        attempt += 1;
        let write = cl.set_availability(target, Availability::Drain);
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), write).await {
            return Ok(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("no write committed within 60 s of the leader's death");
        }
    }
}

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::var("COFFER_FAILOVER_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(7);
    let bin = Path::new(env!("CARGO_BIN_EXE_coffer-bench-node"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut times = Vec::new();
    for i in 1..=runs {
        let t = rt.block_on(one_run(bin))?;
        println!("run {i}: SIGKILL of the leader to the next committed write: {} ms", t.as_millis());
        times.push(t);
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "\n== failover ({runs} runs, 3 managers, heartbeat 100 ms, election 250-400 ms) ==\n\
         median {} ms, min {} ms, max {} ms (target: under 1000 ms)",
        median.as_millis(),
        times[0].as_millis(),
        times[times.len() - 1].as_millis()
    );
    Ok(())
}
