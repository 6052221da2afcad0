//! The worker's manifest (`<data-dir>/worker-tasks.json`): every task directory it may have
//! written, kept across restarts so that a restarted worker removes the directories of tasks
//! that left it while it was away. Directory names only; never a value.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::local::data_dir::{write_atomic, DataDir};

fn path(dir: &DataDir) -> PathBuf {
    dir.root().join("worker-tasks.json")
}

pub(crate) fn save(dir: &DataDir, dirs: &BTreeSet<PathBuf>) {
    if let Ok(text) = serde_json::to_string(dirs) {
        if let Err(e) = write_atomic(&path(dir), text.as_bytes(), 0o600) {
            tracing::warn!(error = %e, "cannot record this worker's task directories");
        }
    }
}

pub(crate) fn load(dir: &DataDir) -> BTreeSet<PathBuf> {
    std::fs::read_to_string(path(dir)).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
}
