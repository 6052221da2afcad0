//! A manager that restarts under autolock is locked: it opens no store and starts no Raft
//! until it is given the unlock key, by an operator (`coffer cluster unlock`, through the
//! locked listener's `/v1/unlock`) or by a key backend (`--unlock-key-command`,
//! `--unlock-key-file`). This waits for the first key that opens the store.
//!
//! Must never: log, print or keep a key that was tried, right or wrong.

use std::time::Duration;

use coffer_api::error::{CodedError, ErrorCode};
use coffer_raft_store::StoreError;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::local::config::UnlockSource;
use crate::local::unlock_key::UnlockKey;
use crate::manager::error::OpError;
use crate::manager::open::Local;

/// The longest a key backend may take to answer.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// A backend that failed is asked again after this, doubling up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// The most bytes of a key backend's output that are read.
const MAX_OUTPUT: usize = 4096;

/// An unlock key to try, and where to say whether it opened the store.
#[derive(Debug)]
pub struct Attempt {
    pub key: UnlockKey,
    pub reply: oneshot::Sender<Result<(), OpError>>,
}

/// Whether `key` opens this manager's store (checked read-only: a wrong key changes nothing).
async fn try_key(local: &Local, key: &UnlockKey) -> Result<(), OpError> {
    let kek = key.kek_for(&local.identity.cluster_id, local.identity.node_id);
    let dir = local.data_dir.store();
    let r = tokio::task::spawn_blocking(move || coffer_raft_store::check_kek(&dir, &kek))
        .await
        .map_err(|e| OpError::internal("trying the unlock key", e))?;
    match r {
        Ok(()) => Ok(()),
        Err(StoreError::WrongKey { .. }) => {
            Err(OpError::with_code(ErrorCode::UnlockFailed, "this key does not unlock this manager".into()))
        }
        Err(e) => Err(OpError::internal("opening the store", e)),
    }
}

/// Runs the key backend once: its standard output is the key.
async fn from_backend(source: &UnlockSource) -> Result<UnlockKey, String> {
    let text = match source {
        UnlockSource::File(path) => {
            zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?)
        }
        UnlockSource::Command(cmd) => {
            // The command line is the operator's configuration, not a secret; only its
            // output is, and that never reaches a shell. At most MAX_OUTPUT bytes are read.
            use tokio::io::AsyncReadExt;
            let mut child = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("could not be started: {e}"))?;
            let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
                return Err("no pipes to read".into());
            };
            let run = async {
                let (mut stdout, mut stderr) = (zeroize::Zeroizing::new(Vec::new()), Vec::new());
                let (mut out, mut err) = (out.take(MAX_OUTPUT as u64 + 1), err.take(4096));
                let (a, b) = tokio::join!(out.read_to_end(&mut stdout), err.read_to_end(&mut stderr));
                a.and(b).map_err(|e| format!("reading its output: {e}"))?;
                if stdout.len() > MAX_OUTPUT {
                    return Err(format!("printed more than {MAX_OUTPUT} bytes; an unlock key is one line"));
                }
                let status = child.wait().await.map_err(|e| e.to_string())?;
                Ok::<_, String>((status, stdout, stderr))
            };
            let (status, stdout, stderr) = tokio::time::timeout(COMMAND_TIMEOUT, run)
                .await
                .map_err(|_| format!("did not answer within {} s", COMMAND_TIMEOUT.as_secs()))??;
            if !status.success() {
                let stderr = String::from_utf8_lossy(&stderr);
                return Err(format!("{status} (stderr: {})", stderr.trim().chars().take(300).collect::<String>()));
            }
            zeroize::Zeroizing::new(String::from_utf8_lossy(&stdout).into_owned())
        }
    };
    UnlockKey::parse(&text).map_err(|e| e.to_string())
}

fn describe(source: &UnlockSource) -> String {
    match source {
        UnlockSource::File(p) => format!("--unlock-key-file {}", p.display()),
        UnlockSource::Command(_) => "--unlock-key-command".into(),
    }
}

/// Waits for a key that opens the store: from the backend (at once, then again with
/// backoff after each failure) or from an operator's attempts. `None` when `shutdown`
/// fires first.
pub async fn wait(
    local: &Local,
    source: Option<&UnlockSource>,
    mut attempts: mpsc::Receiver<Attempt>,
    shutdown: &CancellationToken,
) -> Option<UnlockKey> {
    tracing::warn!(
        node_id = %crate::local::ids::NodeHex(local.identity.node_id),
        "this manager is locked (autolock): run `coffer cluster unlock --addr {}`",
        local.identity.advertise
    );
    let mut retry = RETRY_FIRST;
    let mut next_backend = source.map(|_| tokio::time::Instant::now());
    loop {
        let backend_due = async {
            match next_backend {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            Some(a) = attempts.recv() => {
                let r = try_key(local, &a.key).await;
                let ok = r.is_ok();
                match &r {
                    Ok(()) => tracing::info!("unlocked by an operator"),
                    Err(e) => tracing::warn!(error = %e.message, "an unlock attempt failed"),
                }
                let _ = a.reply.send(r);
                if ok {
                    return Some(a.key);
                }
                // A failed unlock: ask the backend again too (its key may have changed).
                if source.is_some() {
                    next_backend = Some(tokio::time::Instant::now());
                }
            }
            () = backend_due => {
                let Some(source) = source else { continue };
                let r = match from_backend(source).await {
                    Ok(key) => try_key(local, &key).await.map(|()| key).map_err(|e| e.message),
                    Err(e) => Err(e),
                };
                match r {
                    Ok(key) => {
                        tracing::info!(backend = %describe(source), "unlocked by the key backend");
                        return Some(key);
                    }
                    Err(e) => {
                        tracing::warn!(
                            backend = %describe(source), error = %e, retry_in_s = retry.as_secs(),
                            "the key backend did not unlock this manager; it stays locked"
                        );
                        next_backend = Some(tokio::time::Instant::now() + retry);
                        retry = (retry * 2).min(RETRY_MAX);
                    }
                }
            }
        }
    }
}
