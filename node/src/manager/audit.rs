//! The append-only audit log of grant redemptions: `<data-dir>/audit.log`, one JSON line
//! per redemption (node, task, secret ids and versions, term, manager, time; never a
//! value), synced before the redemption is answered.
//!
//! Group commit: concurrent redemptions hand their records to one writer thread, which
//! appends everything queued and syncs once for the lot, then answers each. A record is
//! acknowledged only after the sync that covers it.

use std::io::Write;
use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot};

type Pending = (Vec<u8>, oneshot::Sender<Result<(), String>>);

/// A handle to the audit log's writer thread.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::UnboundedSender<Pending>,
}

impl AuditLog {
    /// Starts the writer for `path` (created 0600 if missing). It stops when every handle
    /// is dropped.
    ///
    /// # Errors
    /// When the writer thread cannot be started.
    pub fn start(path: PathBuf) -> std::io::Result<Self> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Pending>();
        std::thread::Builder::new().name("coffer-audit".into()).spawn(move || {
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = None;
            while let Some(first) = rx.blocking_recv() {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                if file.is_none() {
                    file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&path).ok();
                }
                let result = match file.as_mut() {
                    None => Err(format!("cannot open {}", path.display())),
                    Some(f) => {
                        let mut buf = Vec::new();
                        for (line, _) in &batch {
                            buf.extend_from_slice(line);
                        }
                        f.write_all(&buf).and_then(|()| f.sync_data()).map_err(|e| e.to_string())
                    }
                };
                if result.is_err() {
                    file = None;
                }
                for (_, done) in batch {
                    let _ = done.send(result.clone());
                }
            }
        })?;
        Ok(Self { tx })
    }

    /// Appends one record (a JSON line) and waits until it is synced.
    ///
    /// # Errors
    /// When the log cannot be written or synced.
    pub async fn append(&self, line: Vec<u8>) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        self.tx.send((line, done)).map_err(|_| "the audit writer stopped".to_string())?;
        wait.await.map_err(|_| "the audit writer stopped".to_string())?
    }
}
