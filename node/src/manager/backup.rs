//! Backups of the whole replicated state: the export streamed to `coffer snapshot save`,
//! and the snapshots the leader writes on a schedule.
//!
//! Both read one consistent view of the applied state, taken after a read index, so a
//! backup holds every write acknowledged before it began; writes go on meanwhile. The
//! stream carries plaintext records inside mutual TLS to an admin, who seals them under a
//! key the cluster never sees; scheduled snapshots are sealed here, under the key file the
//! operator gave this manager (read at each snapshot, never replicated).

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use coffer_api::time::now_millis;
use coffer_raft_store::backup::{stream, BackupError, BackupKey, BackupWriter};
use coffer_raft_store::{StateReader, DEFAULT_CHUNK_BYTES};
use tokio::sync::mpsc;

use crate::local::config::ScheduledSnapshots;
use crate::manager::error::OpError;
use crate::manager::Manager;

/// Frames in flight between the exporting thread and the response: a slow client slows
/// the export instead of filling memory.
const IN_FLIGHT: usize = 4;
const FILE_PREFIX: &str = "coffer-";
const FILE_SUFFIX: &str = ".backup";

/// The export as the stream of [`stream`] frames, after a read index: what
/// `GET /v1/snapshot` sends. A failure half-way ends the stream with an error frame.
///
/// # Errors
/// No quorum for the read index.
pub(crate) async fn export_stream(
    m: &Arc<Manager>,
    by: &str,
) -> Result<impl futures_util::Stream<Item = Result<Bytes, std::io::Error>>, OpError> {
    m.linearizable().await?;
    let (tx, rx) = mpsc::channel::<Bytes>(IN_FLIGHT);
    let reader = m.reader.clone();
    let (manager, admin) = (m.id, by.to_string());
    tokio::task::spawn_blocking(move || {
        let send = |b: Bytes| tx.blocking_send(b).map_err(|_| Stop::ClientGone);
        let r = reader.export(
            DEFAULT_CHUNK_BYTES,
            now_millis(),
            |info| {
                tracing::info!(
                    %admin, manager, applied = ?info.last_applied.map(|l| l.index), records = info.counts.records,
                    "snapshot export started"
                );
                send(Bytes::from(stream::info(info)))
            },
            // The frame is copied into `Bytes` for the body; the copy lives until hyper has
            // written it.
            |chunk| send(Bytes::from(stream::chunk(chunk).to_vec())),
        );
        match r {
            Ok((chunks, records)) => {
                let _ = send(Bytes::from(stream::end(chunks, records)));
                tracing::info!(%admin, chunks, records, "snapshot export sent");
            }
            Err(Stop::ClientGone) => tracing::warn!(%admin, "snapshot export: the client went away"),
            Err(Stop::Store(e)) => {
                tracing::warn!(%admin, error = %e, "snapshot export failed");
                let _ = send(Bytes::from(stream::error(&format!("the export failed on the manager: {e}"))));
            }
        }
    });
    Ok(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok(b), rx)) }))
}

enum Stop {
    ClientGone,
    Store(coffer_raft_store::StoreError),
}

impl From<coffer_raft_store::StoreError> for Stop {
    fn from(e: coffer_raft_store::StoreError) -> Self {
        Self::Store(e)
    }
}

/// Writes a backup of the applied state to `dir` (temporary file, fsync, rename, fsync of
/// the directory); returns its path. Blocking.
///
/// # Errors
/// An unreadable key file, a store error, or a failed write.
pub fn write_backup(reader: &StateReader, dir: &Path, key: &BackupKey) -> Result<PathBuf, String> {
    // Only this manager's user reads them: a backup sealed under a passphrase can be
    // attacked offline by whoever copies it.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("create {}: {e}", dir.display()))?;
    let now = now_millis();
    let tmp = dir.join(format!(".{FILE_PREFIX}{now}{FILE_SUFFIX}.tmp"));
    let result = (|| -> Result<(PathBuf, u64), String> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| format!("create {}: {e}", tmp.display()))?;
        // Both callbacks need the writer: the first makes it, the second feeds it.
        let writer: std::cell::RefCell<Option<BackupWriter<std::io::BufWriter<std::fs::File>>>> = Default::default();
        let mut file = Some(std::io::BufWriter::with_capacity(256 << 10, file));
        let mut index = 0;
        reader
            .export(
                DEFAULT_CHUNK_BYTES,
                now,
                |info| -> Result<(), Failed> {
                    index = info.last_applied.map(|l| l.index).unwrap_or(0);
                    let out = file.take().ok_or(Failed::Other("export began twice".into()))?;
                    *writer.borrow_mut() = Some(BackupWriter::new(out, key, info, &tmp)?);
                    Ok(())
                },
                |chunk| {
                    writer.borrow_mut().as_mut().ok_or(Failed::Other("no header".into()))?.chunk(chunk)?;
                    Ok(())
                },
            )
            .map_err(|e: Failed| e.to_string())?;
        let writer = writer.into_inner();
        let (out, _, _) = writer.ok_or("nothing exported")?.finish().map_err(|e| e.to_string())?;
        let file = out.into_inner().map_err(|e| format!("write {}: {e}", tmp.display()))?;
        file.sync_all().map_err(|e| format!("sync {}: {e}", tmp.display()))?;
        let path = dir.join(format!("{FILE_PREFIX}{now:013}-{index:012}{FILE_SUFFIX}"));
        std::fs::rename(&tmp, &path).map_err(|e| format!("rename to {}: {e}", path.display()))?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| format!("sync {}: {e}", dir.display()))?;
        Ok((path, index))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|(p, _)| p)
}

#[derive(Debug, thiserror::Error)]
enum Failed {
    #[error(transparent)]
    Store(#[from] coffer_raft_store::StoreError),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error("{0}")]
    Other(String),
}

/// Keeps the newest `keep` backups in `dir` (by name: they sort by time), removes the rest.
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut ours: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(FILE_PREFIX) && n.ends_with(FILE_SUFFIX))
        })
        .collect();
    ours.sort();
    let excess = ours.len().saturating_sub(keep);
    for old in ours.into_iter().take(excess) {
        if let Err(e) = std::fs::remove_file(&old) {
            tracing::warn!(path = %old.display(), error = %e, "could not remove an old snapshot");
        }
    }
}

/// The leader's snapshot schedule: every `every_secs`, while this manager leads, a backup
/// to `dir`, the newest `keep` kept. Success, failure and the last one's age are in
/// `/metrics`. A follower writes none (it would write the same state).
pub(crate) async fn scheduled(m: Arc<Manager>, s: ScheduledSnapshots) {
    let mut tick = tokio::time::interval(Duration::from_secs(s.every_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = m.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !m.is_leader() {
            continue;
        }
        if let Err(e) = m.linearizable().await {
            tracing::warn!(error = %e.message, "scheduled snapshot skipped: no read index");
            m.metrics.snapshots_failed.inc();
            continue;
        }
        let (reader, s2) = (m.reader.clone(), s.clone());
        let r = tokio::task::spawn_blocking(move || {
            let key = BackupKey::load(&s2.key_file).map_err(|e| e.to_string())?;
            let path = write_backup(&reader, &s2.dir, &key)?;
            prune(&s2.dir, s2.keep);
            Ok::<_, String>(path)
        })
        .await
        .unwrap_or_else(|e| Err(format!("the snapshot task failed: {e}")));
        match r {
            Ok(path) => {
                m.metrics.snapshots_ok.inc();
                m.metrics.last_snapshot_ms.store(now_millis(), Ordering::Relaxed);
                tracing::info!(path = %path.display(), "scheduled snapshot written");
            }
            Err(e) => {
                m.metrics.snapshots_failed.inc();
                tracing::warn!(error = %e, "scheduled snapshot failed");
            }
        }
    }
}
