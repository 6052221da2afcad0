//! Backups: time and size of `coffer snapshot save` for N secrets of 1 KiB on a 3-manager
//! cluster (saved through a follower, after a read index), and time of `coffer snapshot
//! restore` until the restored manager serves and answers for every secret.
//!
//! Run: `cargo bench -p coffer-benches --bench backup` (`COFFER_BACKUP_SECRETS`, default
//! 10000).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use coffer_tests::{coffer, Cluster, ManagerProc};

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("COFFER_BACKUP_SECRETS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_coffer-bench-node"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let c = Cluster::start(bin, 3, &[]).await?;
        let started = Instant::now();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..32 {
            let (client, next) = (c.admin(i % 3), next.clone());
            tasks.push(tokio::spawn(async move {
                let value = vec![b'x'; 1024];
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if k >= n {
                        return anyhow::Ok(());
                    }
                    client.create_secret(&format!("bench-{k}"), &value, BTreeMap::new()).await?;
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        println!("== backup of {n} secrets of 1 KiB (3 managers) ==");
        println!("created in {:.1} s", started.elapsed().as_secs_f64());

        let out_dir = tempfile::tempdir()?;
        let kf = out_dir.path().join("key");
        let kfs = kf.to_str().unwrap_or_default();
        let keygen = coffer(bin, &["snapshot", "keygen", kfs], "-", out_dir.path());
        anyhow::ensure!(keygen.status.success(), "keygen failed");
        let leader = c.leader_seen_by(0).await?;
        let follower = (c.index_of(leader).unwrap_or(0) + 1) % 3;
        let file = out_dir.path().join("bench.backup");
        let fs = file.to_str().unwrap_or_default();
        let t = Instant::now();
        let out =
            coffer(bin, &["snapshot", "save", fs, "--key-file", kfs], &c.managers[follower].addr, &c.client_dir());
        let save = t.elapsed();
        anyhow::ensure!(out.status.success(), "save failed: {}", String::from_utf8_lossy(&out.stderr));
        let size = std::fs::metadata(&file)?.len();
        println!(
            "save:    {:.2} s, {:.1} MiB ({:.0} bytes per secret)",
            save.as_secs_f64(),
            size as f64 / (1 << 20) as f64,
            size as f64 / n as f64
        );

        let t = Instant::now();
        let (m, _) = ManagerProc::restore(bin, &c.root.path().join("restored"), &file, &kf)?;
        let serving = t.elapsed();
        let admin = coffer_api::client::Client::from_dir(&c.root.path().join("restored/client"), &m.addr)?;
        coffer_tests::eventually("the restored cluster answers", coffer_tests::DEADLINE, || async {
            admin.secrets().await.ok().filter(|l| l.len() >= n).map(|_| ())
        })
        .await?;
        println!(
            "restore: {:.2} s until it serves, {:.2} s until `secret ls` lists all {n}",
            serving.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
        anyhow::Ok(())
    })
}
