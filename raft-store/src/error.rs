//! The store's error type: what failed, and where, in words an operator can act on.
//!
//! Storage errors are fatal to a manager (openraft stops the node on any of them), so each
//! variant names the column family, key or file that failed, never its contents.

use std::path::PathBuf;

use crate::codec::CodecError;
use crate::seal::SealError;
use crate::NodeId;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {context}: {source}")]
    Db {
        context: String,
        #[source]
        source: rocksdb::Error,
    },
    #[error("{context}: {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open sealed {what}: {source}; the data dir was altered, moved, or belongs to another key")]
    Tampered {
        what: String,
        #[source]
        source: SealError,
    },
    #[error("cannot decode {what}: {source}")]
    Decode {
        what: String,
        #[source]
        source: CodecError,
    },
    #[error("cannot unwrap the data key with the {kek_kind} key-encryption key: wrong key, or wrong unlock key")]
    WrongKey { kek_kind: String },
    #[error("data dir {path} was written by store format {found}; this build reads up to {supported}")]
    NewerStore { path: PathBuf, found: u32, supported: u32 },
    #[error("data dir {path} is inconsistent: {reason}")]
    Inconsistent { path: PathBuf, reason: String },
    #[error("snapshot {path}: {reason}")]
    Snapshot { path: PathBuf, reason: String },
    #[error("sealing failed: {0}")]
    Seal(#[from] SealError),
    #[error("encoding failed: {0}")]
    Encode(CodecError),
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
    #[error("background task failed: {0}")]
    Join(String),
    #[error("syncing the raft log failed: {0}")]
    Synced(String),
}

impl StoreError {
    pub(crate) fn db(context: impl Into<String>) -> impl FnOnce(rocksdb::Error) -> Self {
        let context = context.into();
        move |source| Self::Db { context, source }
    }

    pub(crate) fn io(context: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { context, path, source }
    }
}

/// Lifts a store error into openraft's error, keeping our message as its source.
pub(crate) fn to_raft(
    subject: openraft::ErrorSubject<NodeId>,
    verb: openraft::ErrorVerb,
) -> impl FnOnce(StoreError) -> openraft::StorageError<NodeId> {
    move |e| openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(&e)).into()
}
