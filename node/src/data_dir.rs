//! The layout of a manager's data dir, in one place.
//!
//! ```text
//! <data-dir>/kek       key-encryption key (mode 0600), absent under autolock
//! <data-dir>/raft/     the RocksDB store and its snapshots (raft-store)
//! ```

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn key_file(&self) -> PathBuf {
        self.root.join("kek")
    }

    pub fn store(&self) -> PathBuf {
        self.root.join("raft")
    }
}
