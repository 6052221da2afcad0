//! Scale: 1 000 workers and 10 000 secrets on one 3-manager cluster (DESIGN §8).
//!
//! The managers are real processes. The workers are real worker sessions hosted in this
//! process (`coffer_node::start::join_worker`, the same code `coffer worker join` runs):
//! each joins with the worker token and gets its own certificate, heartbeats, long-polls
//! its assignment, asks the leader for grants, redeems them and writes its files on tmpfs.
//! Their joins are spread over the three managers, as an operator with a load balancer
//! (or a list of managers) would spread them.
//!
//! Printed: the managers' CPU and RSS at rest without and with the workers (and so the
//! RSS per worker); the scheduler's pass time (from `/metrics`); the time to place and
//! deliver every task; rotation-to-file over the services; `secret ls`; the time from a
//! SIGKILL of the leader until every worker holds a value rotated after it (re-attached,
//! granted, redeemed); the time for a new manager to join and catch up.
//!
//! Run: `cargo bench -p coffer-benches --bench scale`
//! (`COFFER_SCALE_WORKERS` default 1000, `COFFER_SCALE_SECRETS` 10000 of 1 KiB with 3
//! versions each, `COFFER_SCALE_SERVICES` 200, `COFFER_SCALE_REST_SECS` 10 per CPU sample;
//! `COFFER_SCALE_SETTLE_SECS` 15 before the sample with workers;
//! `COFFER_SCALE_HOLD_AT_REST=SECS`: after the figures at rest, hold the cluster and the
//! workers that long before going on, e.g. to attach a heap profiler to a manager)

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_api::cluster::NodeRole;
use coffer_benches::{clock_ticks, usage, Usage};
use coffer_node::local::data_dir::DataDir;
use coffer_node::start::{join_worker, RunningWorker, WorkerSettings};
use coffer_tests::{eventually, service_of, Cluster, ManagerProc};
use tokio_util::sync::CancellationToken;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

/// The value of version `v` of secret `i`: 1 KiB, different for every (secret, version).
fn value(i: usize, v: usize) -> Vec<u8> {
    let mut out = format!("secret-{i}-version-{v}-").into_bytes();
    out.resize(1024, b'.');
    out
}

fn usage_of(pid: u32, ticks: u64) -> anyhow::Result<Usage> {
    usage(pid, ticks).ok_or_else(|| anyhow::anyhow!("process {pid} is gone"))
}

/// Each process's share of a core over `secs`, and its RSS at the end.
async fn at_rest(pids: &[u32], secs: u64, ticks: u64) -> anyhow::Result<Vec<(f64, u64)>> {
    let before: Vec<Usage> = pids.iter().map(|&p| usage_of(p, ticks)).collect::<Result<_, _>>()?;
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let wall = start.elapsed().as_secs_f64();
    let after: Vec<Usage> = pids.iter().map(|&p| usage_of(p, ticks)).collect::<Result<_, _>>()?;
    Ok(before
        .iter()
        .zip(&after)
        .map(|(b, a)| ((a.cpu.saturating_sub(b.cpu)).as_secs_f64() / wall, a.rss_kib))
        .collect())
}

/// A value of `name` in a Prometheus text exposition (the first sample).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name).filter(|r| r.starts_with(' ')).and_then(|r| r.trim().parse().ok()))
}

/// The workers hosted here: node id to secrets dir.
struct Workers {
    running: Vec<RunningWorker>,
    secrets: HashMap<u64, PathBuf>,
    shutdown: CancellationToken,
    shm: PathBuf,
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.shutdown.cancel();
        let _ = std::fs::remove_dir_all(&self.shm);
    }
}

async fn join_workers(c: &Cluster, n: usize) -> anyhow::Result<Workers> {
    let token = c.admin(0).rotate_token(NodeRole::Worker).await?.token;
    let shm = Path::new("/dev/shm").join(format!("coffer-scale-{}", std::process::id()));
    let shutdown = CancellationToken::new();
    let mut workers = Workers { running: Vec::new(), secrets: HashMap::new(), shutdown: shutdown.clone(), shm };
    let addrs: Vec<String> = c.managers.iter().map(|m| m.addr.clone()).collect();
    let root = c.root.path().to_path_buf();
    let gate = Arc::new(tokio::sync::Semaphore::new(16));
    let mut joins = Vec::new();
    for i in 0..n {
        let (token, shutdown, gate) = (token.clone(), shutdown.clone(), gate.clone());
        let addr = addrs[i % addrs.len()].clone();
        let secrets = workers.shm.join(format!("w{i}"));
        let data = DataDir::new(root.join(format!("w{i}")));
        joins.push(tokio::spawn(async move {
            let _slot = gate.acquire_owned().await?;
            let settings = WorkerSettings {
                hostname: Some(format!("scale-w{i}")),
                ..WorkerSettings::new(secrets.clone(), false, None, &addr)
            };
            let w = join_worker(data, &token, &addr, settings, shutdown).await?;
            anyhow::Ok((w, secrets))
        }));
    }
    for j in joins {
        let (w, secrets) = j.await??;
        workers.secrets.insert(w.identity.node_id, secrets);
        workers.running.push(w);
    }
    Ok(workers)
}

/// Where each task of `service` keeps its file: (node, path).
async fn task_files(c: &Cluster, i: usize, service: &str, w: &Workers) -> anyhow::Result<Vec<PathBuf>> {
    let tasks = c.admin(i).service_tasks(service).await?;
    Ok(tasks
        .iter()
        .filter_map(|t| {
            let dir = w.secrets.get(&t.node_id?)?;
            Some(dir.join(format!("{service}.{}", t.slot)).join("value"))
        })
        .collect())
}

/// Polls until every file holds `want`; when each did, counted from `start`, sorted.
/// Polling runs on a thread of its own (file reads block, and this process's runtime also
/// runs the workers), a sweep every millisecond for a few files, every 10 ms for many.
async fn until_all_hold(
    files: &[PathBuf],
    want: &[u8],
    start: Instant,
    limit: Duration,
) -> anyhow::Result<Vec<Duration>> {
    Ok(arrivals(files, want, start, limit).await?.into_iter().map(|(t, _)| t).collect())
}

/// [`until_all_hold`], with the file each time is of.
async fn arrivals(
    files: &[PathBuf],
    want: &[u8],
    start: Instant,
    limit: Duration,
) -> anyhow::Result<Vec<(Duration, PathBuf)>> {
    let (files, want) = (files.to_vec(), want.to_vec());
    tokio::task::spawn_blocking(move || {
        let mut pending: Vec<PathBuf> = files;
        let mut arrived = Vec::with_capacity(pending.len());
        while !pending.is_empty() {
            pending.retain(|f| {
                if std::fs::read(f).is_ok_and(|v| v == want) {
                    arrived.push((start.elapsed(), f.clone()));
                    false
                } else {
                    true
                }
            });
            anyhow::ensure!(start.elapsed() < limit, "{} files still without the value after {limit:?}", pending.len());
            std::thread::sleep(Duration::from_millis(if pending.len() > 20 { 10 } else { 1 }));
        }
        arrived.sort();
        Ok(arrived)
    })
    .await?
}

/// With `COFFER_SCALE_TRACE=<file>`, the hosted workers' warnings and their info events
/// (secrets written, sessions lost) go to that file with the time since start, each with
/// its worker's node id: the timeline of a straggler after the leader kill.
fn trace_to_file() -> anyhow::Result<()> {
    let Ok(path) = std::env::var("COFFER_SCALE_TRACE") else { return Ok(()) };
    let file = std::fs::File::create(&path)?;
    tracing_subscriber::fmt()
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn,coffer_node::worker=info"))
        .init();
    println!("workers' events in {path}");
    Ok(())
}

/// p50, p90, p99 and the last of sorted arrival times, in seconds.
fn spread(arrived: &[Duration]) -> String {
    format!(
        "p50 {:.2} s, p90 {:.2} s, p99 {:.2} s, all {} {:.2} s",
        pct(arrived, 0.5) / 1000.0,
        pct(arrived, 0.9) / 1000.0,
        pct(arrived, 0.99) / 1000.0,
        arrived.len(),
        pct(arrived, 1.0) / 1000.0
    )
}

/// The CPU time each of `pids` has used so far (zero for a process that is gone).
fn cpu_of(pids: &[u32], ticks: u64) -> Vec<Duration> {
    pids.iter().map(|&p| usage(p, ticks).map(|u| u.cpu).unwrap_or_default()).collect()
}

/// Each process's share of a core between two [`cpu_of`] samples `wall` apart; the last
/// pid is this process (the workers).
fn print_cpu(label: &str, pids: &[u32], before: &[Duration], after: &[Duration], wall: Duration) {
    let shares: Vec<String> = pids
        .iter()
        .zip(before.iter().zip(after))
        .enumerate()
        .map(|(i, (p, (b, a)))| {
            let who = if i + 1 == pids.len() { "workers".to_string() } else { format!("pid {p}") };
            format!("{who} {:.2}", a.saturating_sub(*b).as_secs_f64() / wall.as_secs_f64())
        })
        .collect();
    println!("{label} (cores): {}", shares.join(", "));
}

fn print_rest(label: &str, c: &Cluster, rest: &[(f64, u64)]) {
    for (m, (cpu, rss)) in c.managers.iter().zip(rest) {
        println!("{label:<28} manager {:>16x}: {:>5.3} core, RSS {:>7.1} MiB", m.id, cpu, *rss as f64 / 1024.0);
    }
}

/// A histogram's count, mean and the bucket bound its p99 falls under, from `/metrics`.
fn histogram(text: &str, name: &str) -> (f64, f64, f64) {
    let count = metric(text, &format!("{name}_count")).unwrap_or(0.0);
    let sum = metric(text, &format!("{name}_sum")).unwrap_or(0.0);
    let prefix = format!("{name}_bucket{{le=\"");
    let p99 = text
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|r| {
            let (le, n) = r.split_once("\"} ")?;
            Some((le.parse::<f64>().ok()?, n.trim().parse::<f64>().ok()?))
        })
        .find(|(_, n)| *n >= count * 0.99)
        .map_or(f64::INFINITY, |(le, _)| le);
    (count, if count > 0.0 { sum / count } else { 0.0 }, p99)
}

async fn scheduler_figures(c: &Cluster, leader: usize) -> anyhow::Result<()> {
    let text = c.admin(leader).metrics().await?;
    for (what, label) in [("pass", "whole pass (with commits)"), ("plan", "reading and planning")] {
        let (count, mean, p99) = histogram(&text, &format!("coffer_scheduler_{what}_seconds"));
        println!(
            "scheduler, {label:<26} {count:>6.0} passes, mean {:>7.2} ms, p99 under {:>7.2} ms",
            mean * 1000.0,
            p99 * 1000.0
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let n_workers = env_usize("COFFER_SCALE_WORKERS", 1000);
    let n_secrets = env_usize("COFFER_SCALE_SECRETS", 10_000);
    let n_services = env_usize("COFFER_SCALE_SERVICES", 200).min(n_secrets).max(1);
    let rest_secs = env_usize("COFFER_SCALE_REST_SECS", 10) as u64;
    let bin = Path::new(env!("CARGO_BIN_EXE_coffer-bench-node"));
    let ticks = clock_ticks();
    let began = Instant::now();
    trace_to_file()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let mut c = Cluster::start(bin, 3, &[]).await?;
        let leader_id = c.leader_seen_by(0).await?;
        let li = c.index_of(leader_id).unwrap_or(0);
        let pids: Vec<String> = c.managers.iter().map(|m| format!("{:x}={}", m.id, m.pid())).collect();
        println!("managers' pids: {} (leader {leader_id:x})", pids.join(", "));
        println!(
            "== scale: 3 managers, {n_workers} workers in this process, {n_secrets} secrets of 1 KiB x 3 versions =="
        );

        // Secrets: 64 writers, each its own connection, creating then rotating twice.
        let start = Instant::now();
        let mut writers = Vec::new();
        for k in 0..64 {
            let admin = c.admin(li);
            writers.push(tokio::spawn(async move {
                for i in (k..n_secrets).step_by(64) {
                    admin.create_secret(&format!("s{i}"), &value(i, 1), BTreeMap::new()).await?;
                    admin.rotate_secret(&format!("s{i}"), &value(i, 2)).await?;
                    admin.rotate_secret(&format!("s{i}"), &value(i, 3)).await?;
                }
                anyhow::Ok(())
            }));
        }
        for w in writers {
            w.await??;
        }
        let took = start.elapsed();
        println!(
            "secrets written: {} versions in {:.1} s ({:.0}/s, 64 clients)",
            n_secrets * 3,
            took.as_secs_f64(),
            (n_secrets * 3) as f64 / took.as_secs_f64()
        );
        let pids: Vec<u32> = c.managers.iter().map(|m| m.pid()).collect();
        let bare = at_rest(&pids, rest_secs, ticks).await?;
        print_rest("at rest, no workers", &c, &bare);

        // Workers.
        let start = Instant::now();
        let workers = join_workers(&c, n_workers).await?;
        println!("workers joined: {n_workers} in {:.1} s", start.elapsed().as_secs_f64());
        let admin = c.admin(li);
        eventually("every worker ready", Duration::from_secs(120), || async {
            let text = admin.metrics().await.ok()?;
            (metric(&text, "coffer_workers_ready")? as usize >= n_workers).then_some(())
        })
        .await?;

        // Services: `n_services` of a secret each, their replicas covering the workers,
        // and one service on every worker, for the leader kill below.
        let replicas = (n_workers / n_services).max(1) as u32;
        let start = Instant::now();
        for j in 0..n_services {
            admin.create_service(&service_of(&format!("svc{j}"), replicas, &format!("s{j}"), vec![])).await?;
        }
        admin.create_secret("shared", &value(0, 0), BTreeMap::new()).await?;
        admin.create_service(&service_of("everyone", n_workers as u32, "shared", vec![])).await?;
        let mut files: Vec<Vec<PathBuf>> = Vec::new();
        for j in 0..n_services {
            let name = format!("svc{j}");
            let f = eventually("tasks placed", Duration::from_secs(120), || async {
                task_files(&c, li, &name, &workers).await.ok().filter(|f| f.len() == replicas as usize)
            })
            .await?;
            files.push(f);
        }
        let everyone = eventually("every worker's task placed", Duration::from_secs(120), || async {
            task_files(&c, li, "everyone", &workers).await.ok().filter(|f| f.len() == n_workers)
        })
        .await?;
        let deadline = Duration::from_secs(300);
        for (j, f) in files.iter().enumerate() {
            until_all_hold(f, &value(j, 3), start, deadline).await?;
        }
        until_all_hold(&everyone, &value(0, 0), start, deadline).await?;
        println!(
            "tasks placed and delivered: {} in {:.1} s (from the first service create)",
            n_services * replicas as usize + n_workers,
            start.elapsed().as_secs_f64()
        );

        // At rest means settled: a worker lets a connection go once it was idle for 10 s
        // (the one to the leader for grants, when its session is elsewhere).
        tokio::time::sleep(Duration::from_secs(env_usize("COFFER_SCALE_SETTLE_SECS", 15) as u64)).await;
        let busy = at_rest(&pids, rest_secs, ticks).await?;
        print_rest(&format!("at rest, {n_workers} workers"), &c, &busy);
        let me = at_rest(&[std::process::id()], rest_secs.min(5), ticks).await?;
        println!(
            "{:<28} this process (all workers): {:.3} core, RSS {:.1} MiB",
            "at rest, workers",
            me[0].0,
            me[0].1 as f64 / 1024.0
        );
        for ((m, b), a) in c.managers.iter().zip(&bare).zip(&busy) {
            println!(
                "RSS per worker, manager {:>16x}: {:.1} KiB",
                m.id,
                a.1.saturating_sub(b.1) as f64 / n_workers as f64
            );
        }
        scheduler_figures(&c, li).await?;
        let hold = env_usize("COFFER_SCALE_HOLD_AT_REST", 0) as u64;
        if hold > 0 {
            println!("holding at rest for {hold} s");
            tokio::time::sleep(Duration::from_secs(hold)).await;
        }

        // Rotation to file, one service at a time.
        let mut lat = Vec::new();
        for (j, f) in files.iter().enumerate() {
            let v = value(j, 4);
            let start = Instant::now();
            admin.rotate_secret(&format!("s{j}"), &v).await?;
            let arrived = until_all_hold(f, &v, start, Duration::from_secs(30)).await?;
            lat.push(arrived.last().copied().unwrap_or_default());
        }
        lat.sort();
        println!(
            "rotation to file, {} services x {replicas} tasks: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            files.len(),
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            pct(&lat, 1.0)
        );

        // `secret ls`, at the leader and at a follower.
        let fi = (li + 1) % 3;
        for (label, i) in [("leader", li), ("follower", fi)] {
            let client = c.admin(i);
            let mut times = Vec::new();
            for _ in 0..5 {
                let t = Instant::now();
                let list = client.secrets().await?;
                times.push(t.elapsed());
                anyhow::ensure!(list.len() > n_secrets, "secret ls listed {}", list.len());
            }
            times.sort();
            println!(
                "secret ls ({} secrets) at the {label}: median {:.0} ms, max {:.0} ms",
                n_secrets + 1,
                pct(&times, 0.5),
                pct(&times, 1.0)
            );
        }

        // The same delivery without a fault, for comparison with the leader kill below:
        // `shared` rotated once, every worker gets a grant (through the manager of its
        // session) and redeems it.
        let mut all_pids: Vec<u32> = pids.clone();
        all_pids.push(std::process::id());
        let before = cpu_of(&all_pids, ticks);
        let start = Instant::now();
        let v = value(0, 1);
        admin.rotate_secret("shared", &v).await?;
        let arrived = until_all_hold(&everyone, &v, start, Duration::from_secs(120)).await?;
        println!("rotation to every worker (no fault): {}", spread(&arrived));
        print_cpu("  CPU meanwhile", &all_pids, &before, &cpu_of(&all_pids, ticks), start.elapsed());

        // SIGKILL the leader; rotate `shared` as soon as a write is accepted; wait until
        // every worker holds it.
        let survivor = c.admin(fi);
        let before = cpu_of(&all_pids, ticks);
        let killed = Instant::now();
        c.managers[li].kill();
        let v = value(0, 2);
        let resumed = eventually("a write after the leader kill", Duration::from_secs(60), || async {
            survivor.rotate_secret("shared", &v).await.ok().map(|_| killed.elapsed())
        })
        .await?;
        let timed = arrivals(&everyone, &v, killed, Duration::from_secs(120)).await?;
        let arrived: Vec<Duration> = timed.iter().map(|(t, _)| *t).collect();
        let by_dir: HashMap<&Path, u64> = workers.secrets.iter().map(|(id, d)| (d.as_path(), *id)).collect();
        let stragglers: Vec<String> = timed
            .iter()
            .rev()
            .take(5)
            .map(|(t, f)| {
                let id = f.ancestors().find_map(|d| by_dir.get(d)).copied().unwrap_or(0);
                format!("{id:016x} at {:.2} s", t.as_secs_f64())
            })
            .collect();
        println!(
            "  slowest workers (the kill was {:.2} s into the run): {}",
            killed.duration_since(began).as_secs_f64(),
            stragglers.join(", ")
        );
        println!(
            "leader SIGKILLed: writes resumed after {:.2} s; a value rotated then reached the workers after \
             (from the kill) {}",
            resumed.as_secs_f64(),
            spread(&arrived)
        );
        print_cpu("  CPU meanwhile", &all_pids, &before, &cpu_of(&all_pids, ticks), killed.elapsed());

        // Compact every survivor's log (`coffer cluster compact`), then a new manager joins:
        // the log it would replay is gone, so it catches up from a snapshot.
        for i in (0..3).filter(|&i| i != li) {
            let done = c.admin(i).compact().await?;
            println!(
                "compacted {:x}: snapshot at {}, purged up to {:?}",
                done.node_id, done.snapshot_index, done.purged_index
            );
        }
        let target = metric(&survivor.metrics().await?, "coffer_raft_applied_index").unwrap_or(0.0);
        let dir = c.root.path().join("m-new");
        let start = Instant::now();
        let joined = ManagerProc::join(bin, &dir, &c.tokens.manager, &c.managers[fi].addr, &[])?;
        let fresh = coffer_api::client::Client::from_dir(&c.client_dir(), &joined.addr)?;
        eventually("the new manager to catch up", Duration::from_secs(120), || async {
            let applied = metric(&fresh.metrics().await.ok()?, "coffer_raft_applied_index")?;
            (applied >= target).then_some(())
        })
        .await?;
        let took = start.elapsed();
        let records = fresh.state_digest().await?.records;
        let by_snapshot = joined.log().contains("installed snapshot");
        println!(
            "new manager joined and caught up to index {target:.0} ({records} records) in {:.2} s ({})",
            took.as_secs_f64(),
            if by_snapshot { "from a snapshot" } else { "by replaying the log" }
        );
        c.managers.push(joined);
        drop(workers);
        anyhow::Ok(())
    })
}
