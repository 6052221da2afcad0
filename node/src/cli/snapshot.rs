//! `coffer snapshot keygen|save|inspect|restore`: backups of the whole cluster under a key
//! that only the operator holds, and a new cluster made from one.
//!
//! `save` receives the export over mutual TLS and seals it chunk by chunk as it arrives
//! (nothing plaintext touches the disk); the file appears under its name only once it is
//! complete and synced.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Subcommand;
use coffer_raft_store::backup::{stream, BackupFile, BackupInfo, BackupKey, BackupWriter};
use futures_util::StreamExt;

use crate::cli::daemon::{config_for, Placement, Tuning};
use crate::cli::exit::CliError;
use crate::cli::output::{print_json_line, Format};
use crate::cli::ClientOpts;
use crate::start;

// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub(crate) enum SnapshotCmd {
    /// Write a new random backup key to KF (mode 0600). Keep it away from the cluster: whoever
    /// holds a backup and its key holds every secret.
    Keygen { key_file: PathBuf },
    /// Save a backup of the whole cluster (admin only), sealed under the key in KF (a key
    /// from `keygen`, or a passphrase of 12 bytes or more).
    Save {
        file: PathBuf,
        #[arg(long)]
        key_file: PathBuf,
    },
    /// Show what a backup's header says and check the file's digest (no key needed; only
    /// restore, with the key, authenticates what is inside).
    Inspect { file: PathBuf },
    /// Make a new one-manager cluster from a backup, in a new data dir, and serve it.
    Restore {
        file: PathBuf,
        #[arg(long)]
        key_file: PathBuf,
        #[command(flatten)]
        at: Placement,
        #[command(flatten)]
        tuning: Tuning,
    },
}

fn local(e: impl std::fmt::Display) -> CliError {
    CliError::Local(e.to_string())
}

pub(crate) async fn snapshot(cmd: SnapshotCmd, opts: &ClientOpts) -> Result<(), CliError> {
    match cmd {
        SnapshotCmd::Keygen { key_file } => {
            BackupKey::generate_file(&key_file).map_err(local)?;
            println!("backup key written to {} (mode 0600); store it apart from the cluster", key_file.display());
            Ok(())
        }
        SnapshotCmd::Save { file, key_file } => save(&file, &key_file, opts).await,
        SnapshotCmd::Inspect { file } => {
            let backup = BackupFile::open(&file).map_err(local)?;
            print_info(backup.info(), opts.format, backup.passphrase());
            Ok(())
        }
        SnapshotCmd::Restore { .. } => Err(local("a restore runs a manager: see `coffer snapshot restore --help`")),
    }
}

/// `snapshot restore`: runs the restored manager in the foreground, like `manager init`.
pub(crate) async fn restore(cmd: SnapshotCmd, format: Format) -> anyhow::Result<()> {
    let SnapshotCmd::Restore { file, key_file, at, tuning } = cmd else {
        anyhow::bail!("not a restore");
    };
    let key = BackupKey::load(&key_file)?;
    let config = config_for(&at, &tuning)?;
    config.validate()?;
    let listener = start::bind(&at.listen).await?;
    let (summary, running) =
        start::restore_manager(config, listener, &file, &key, crate::cli::shutdown_on_signal()).await?;
    crate::cli::daemon::print_init(&summary, format, "restored");
    crate::cli::daemon::serve_until_stopped(running, format).await;
    Ok(())
}

fn print_info(info: &BackupInfo, format: Format, passphrase: bool) {
    let (index, term) = info.last_applied.map(|l| (l.index, l.leader_id.term)).unwrap_or((0, 0));
    let c = &info.counts;
    if format == Format::Json {
        print_json_line(&serde_json::json!({
            "format": coffer_raft_store::backup::BACKUP_FORMAT,
            "cluster_id": info.cluster_id,
            "applied_index": index,
            "term": term,
            "created_at_ms": info.created_at_ms,
            "created_at": coffer_api::time::rfc3339(info.created_at_ms),
            "key": if passphrase { "passphrase" } else { "key file" },
            "secrets": c.secrets, "secret_versions": c.secret_versions, "services": c.services,
            "tasks": c.tasks, "nodes": c.nodes, "api_tokens": c.api_tokens,
            "admin_credentials": c.admin_credentials, "records": c.records,
            "digest": "intact",
            "authenticated": false,
        }));
        return;
    }
    println!("format:          {}", coffer_raft_store::backup::BACKUP_FORMAT);
    println!("cluster:         {}", info.cluster_id);
    println!("applied index:   {index} (term {term})");
    println!("created:         {}", coffer_api::time::rfc3339(info.created_at_ms));
    println!("sealed with:     {}", if passphrase { "a passphrase (Argon2id)" } else { "a key file" });
    println!("secrets:         {} ({} versions)", c.secrets, c.secret_versions);
    println!("services:        {} ({} tasks)", c.services, c.tasks);
    println!("nodes:           {}", c.nodes);
    println!("api tokens:      {}", c.api_tokens);
    println!("admin creds:     {}", c.admin_credentials);
    println!("digest:          intact (the header is authenticated only with the key, by restore)");
}

/// A temporary file beside `dest`, removed unless [`Pending::keep`] moved it into place.
struct Pending {
    tmp: PathBuf,
    done: bool,
}

impl Pending {
    fn keep(mut self, file: &std::fs::File, dest: &Path) -> Result<(), CliError> {
        file.sync_all().map_err(|e| local(format!("sync {}: {e}", self.tmp.display())))?;
        std::fs::rename(&self.tmp, dest).map_err(|e| local(format!("rename to {}: {e}", dest.display())))?;
        let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| local(format!("sync {}: {e}", dir.display())))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

async fn save(file: &Path, key_file: &Path, opts: &ClientOpts) -> Result<(), CliError> {
    if file.exists() {
        return Err(local(format!("{} exists; give a new file name", file.display())));
    }
    let key = BackupKey::load(key_file).map_err(local)?;
    let client = opts.client()?;
    // The destination first: a directory that cannot be written is found before the
    // cluster exports anything.
    let tmp = file.with_file_name(format!(
        ".{}.{}.tmp",
        file.file_name().and_then(|n| n.to_str()).unwrap_or("backup"),
        std::process::id()
    ));
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| local(format!("create {}: {e}", tmp.display())))?;
    let pending = Pending { tmp: tmp.clone(), done: false };
    let started = Instant::now();
    let resp = client.snapshot_stream().await?;
    let mut body = resp.bytes_stream();
    let mut decoder = stream::Decoder::default();
    let mut out = Some(std::io::BufWriter::with_capacity(256 << 10, out));
    let mut writer: Option<BackupWriter<std::io::BufWriter<std::fs::File>>> = None;
    let mut info: Option<BackupInfo> = None;
    let cut =
        |why: String| local(format!("the snapshot stream from {} broke off: {why}; nothing was saved", client.addr()));
    let (chunks, records) = 'stream: loop {
        let Some(piece) = body.next().await else {
            return Err(cut("it ended before its last frame".into()));
        };
        decoder.push(&piece.map_err(|e| cut(e.to_string()))?);
        while let Some(frame) = decoder.next_frame().map_err(local)? {
            match frame {
                stream::Frame::Info(i) => {
                    let o = out.take().ok_or_else(|| cut("a second header".into()))?;
                    writer = Some(BackupWriter::new(o, &key, &i, file).map_err(local)?);
                    info = Some(i);
                }
                stream::Frame::Chunk(c) => {
                    writer.as_mut().ok_or_else(|| cut("a chunk before the header".into()))?.chunk(&c).map_err(local)?;
                }
                stream::Frame::End { chunks, records } => break 'stream (chunks, records),
                stream::Frame::Error(msg) => return Err(cut(format!("the manager could not finish: {msg}"))),
            }
        }
    };
    let (info, writer) = info.zip(writer).ok_or_else(|| cut("no header".into()))?;
    let (w, wrote_chunks, wrote_records) = writer.finish().map_err(local)?;
    if (wrote_chunks, wrote_records) != (chunks, records) || records != info.counts.records {
        return Err(cut(format!(
            "the manager sent {chunks} chunks and {records} records, {wrote_chunks} and {wrote_records} arrived"
        )));
    }
    let mut f = w.into_inner().map_err(|e| local(format!("write {}: {e}", tmp.display())))?;
    f.flush().map_err(|e| local(format!("write {}: {e}", tmp.display())))?;
    pending.keep(&f, file)?;
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let index = info.last_applied.map(|l| l.index).unwrap_or(0);
    let secs = started.elapsed().as_secs_f64();
    if opts.format == Format::Json {
        print_json_line(&serde_json::json!({
            "event": "saved", "file": file, "cluster_id": info.cluster_id, "applied_index": index,
            "records": records, "secrets": info.counts.secrets, "bytes": size, "seconds": secs,
        }));
    } else {
        println!(
            "saved cluster {} at index {index}: {} secrets, {} services, {} nodes ({size} bytes, {secs:.1} s) to {}",
            info.cluster_id,
            info.counts.secrets,
            info.counts.services,
            info.counts.nodes,
            file.display()
        );
    }
    Ok(())
}
