//! Workers: (a) time from `secret rotate` to the new value in every worker's file, and
//! (b) grant redemptions per second against one manager and against all three.
//! Real processes: 3 managers, 3 workers (secrets on tmpfs), mutual TLS, fsync on; every
//! redemption is checked on a linearizable view and audited (synced) before it answers.
//!
//! Run: `cargo bench -p coffer-benches --bench workers`
//! (`COFFER_ROTATIONS`, default 40; `COFFER_BENCH_SECS` per redemption run, default 5)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_api::worker::{GrantList, GrantRequest, RedeemRequest, Redeemed};
use coffer_tests::{eventually, raw_worker, service_of, Cluster, DEADLINE};

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

async fn rotations(c: &Cluster, n: usize) -> anyhow::Result<Vec<Duration>> {
    let workers = c.start_workers(3, &[]).await?;
    let admin = c.admin(0);
    admin.create_secret("rotating", b"v0", BTreeMap::new()).await?;
    admin.create_service(&service_of("rot", 3, "rotating", vec![])).await?;
    let file = |w: &coffer_tests::WorkerProc| {
        std::fs::read_dir(&w.secrets)
            .ok()
            .and_then(|mut rd| rd.next())
            .and_then(|e| e.ok())
            .and_then(|e| std::fs::read(e.path().join("value")).ok())
    };
    eventually("delivery to 3 workers", DEADLINE, || async {
        workers.iter().all(|w| file(w).as_deref() == Some(b"v0".as_slice())).then_some(())
    })
    .await?;
    let mut lat = Vec::new();
    for i in 1..=n {
        let value = format!("v{i}").into_bytes();
        let start = Instant::now();
        admin.rotate_secret("rotating", &value).await?;
        let mut pending: Vec<&coffer_tests::WorkerProc> = workers.iter().collect();
        while !pending.is_empty() {
            pending.retain(|w| {
                if file(w).as_deref() == Some(value.as_slice()) {
                    lat.push(start.elapsed());
                    false
                } else {
                    true
                }
            });
            anyhow::ensure!(start.elapsed() < Duration::from_secs(30), "rotation {i} did not arrive");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    lat.sort();
    Ok(lat)
}

async fn redemptions(
    c: &Cluster,
    managers: &[usize],
    clients: usize,
    secs: u64,
) -> anyhow::Result<(f64, Vec<Duration>)> {
    let admin = c.admin(0);
    let token = admin.rotate_token(coffer_api::cluster::NodeRole::Worker).await?.token;
    let w = raw_worker(c, &token).await;
    let name = format!("grant-{}", w.id);
    admin.create_secret(&name, &[7u8; 64], BTreeMap::new()).await?;
    admin.create_service(&service_of(&name, 1, &name, vec![format!("node.id=={}", w.id)])).await?;
    let task = eventually("the task", DEADLINE, || async {
        admin.service_tasks(&name).await.ok()?.into_iter().find(|t| t.node_id == Some(w.id)).map(|t| t.task_id)
    })
    .await?;
    let leader = c.leader_seen_by(0).await?;
    let li = c.index_of(leader).unwrap_or(0);
    let grants: GrantList = w.clients[li].post("/v1/worker/grants", &GrantRequest { task_ids: vec![task] }).await?;
    let grant = grants.grants[0].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let client = w.clients[managers[i % managers.len()]].clone();
        let req = RedeemRequest { grant: grant.clone() };
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let _: Redeemed = client.post("/v1/worker/redeem", &req).await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
    lat.sort();
    Ok((rate, lat))
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("COFFER_ROTATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let secs: u64 = std::env::var("COFFER_BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_coffer-bench-node"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let c = Cluster::start(bin, 3, &[]).await?;
        let lat = rotations(&c, n).await?;
        println!("== rotation to file ({n} rotations x 3 workers) ==");
        println!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target: p99 under 1000 ms)",
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            pct(&lat, 1.0)
        );
        let leader = c.leader_seen_by(0).await?;
        let follower = (0..3).find(|&i| c.managers[i].id != leader).unwrap_or(0);
        println!("\n== grant redemptions ({secs} s per run, 64-byte value, audited and synced) ==");
        for (label, managers) in [("one manager (a follower)", vec![follower]), ("all three managers", vec![0, 1, 2])] {
            for clients in [16usize, 64] {
                let (rate, lat) = redemptions(&c, &managers, clients, secs).await?;
                println!(
                    "{label:<26} {clients:>3} clients: {rate:>7.0} redemptions/s, p50 {:.2} ms, p99 {:.2} ms",
                    pct(&lat, 0.5),
                    pct(&lat, 0.99)
                );
            }
        }
        anyhow::Ok(())
    })
}
