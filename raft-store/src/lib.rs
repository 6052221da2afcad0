//! Coffer's Raft storage: openraft 0.9's log storage and state machine on RocksDB, with
//! every byte at rest sealed by XChaCha20-Poly1305.
//!
//! # Layout
//!
//! - [`seal`]: the data key, the key-encryption-key trait, sealing with associated data.
//! - [`codec`]: postcard behind a format version byte; newer data is refused, not misread.
//! - `db`: the RocksDB database, its column families, sealed get/put.
//! - [`LogStore`] (`log_store`): entries, vote, committed id, purge; synced before done.
//! - [`StateMachine`] (`state_machine`, `apply`): commands applied atomically with the
//!   last-applied id; snapshots built from and installed into RocksDB.
//! - `snapshot`: the sealed, chunked snapshot file ([`SnapshotFile`]).
//! - [`StateReader`] (`reader`): read access to the applied state for `node`.
//! - [`events`]: the changes applied since the store was opened, for watchers.
//! - [`model`]: the records of DESIGN.md §3 and the [`Command`]s that change them.
//! - [`backup`]: backup files under an operator's key, and the stream that carries an
//!   export; `recover`: export, [`restore`], and re-forming a store as the only member
//!   of a new configuration ([`Store::reform_alone`]).
//!
//! Boundary: no HTTP, no TLS, no networking. `node` owns those and drives this crate
//! through openraft's traits, [`StateReader`] and [`SnapshotInbox`].

mod apply;
pub mod backup;
pub mod codec;
mod data_key;
mod db;
mod digest;
mod durable;
mod error;
pub mod events;
mod keys;
mod layout;
mod log_cache;
mod log_store;
pub mod model;
mod reader;
mod records;
mod recover;
pub mod seal;
mod snapshot;
mod stages;
mod state_machine;

use std::io::Cursor;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use data_key::{DATA_KEY_FILE, WAL_MARKER};
pub use digest::StateDigest;
pub use durable::DurableLog;
pub use error::StoreError;
pub use layout::STORE_FORMAT;
pub use log_store::LogStore;
pub use model::{Command, Response};
pub use reader::{StateReader, VerifyReport};
pub use recover::{restore, Reformed};
pub use snapshot::{
    ChunkReader, Meta as SnapshotMeta, SnapshotFile, SnapshotWriter, DEFAULT_CHUNK_BYTES, SNAPSHOT_FORMAT,
};
pub use stages::{StageObserver, StoreStage};
pub use state_machine::{SnapshotBuilder, SnapshotInbox, StateMachine};

/// A Raft node id. Managers and workers share one id space.
pub type NodeId = u64;

/// What Raft membership knows of a manager: where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerNode {
    /// `host:port` of the manager's TLS listener (Raft RPC and API share it).
    pub addr: String,
}

impl std::fmt::Display for ManagerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)
    }
}

// `declare_raft_types!` names `Cursor` unqualified in its defaults.
#[allow(unused_imports)]
use Cursor as _;

openraft::declare_raft_types!(
    /// Coffer's Raft type configuration.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = ManagerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Tunables of the store. Defaults suit production.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Plaintext bytes per sealed snapshot chunk.
    pub snapshot_chunk_bytes: usize,
    /// Told how long log appends and applies take (the manager's `/metrics`).
    pub observer: Option<std::sync::Arc<dyn StageObserver>>,
    /// This manager's Raft id: while it leads, its own entries are synced in the
    /// background as they replicate (see [`DurableLog`]). `None`: every append is synced
    /// before it returns.
    pub node_id: Option<NodeId>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { snapshot_chunk_bytes: DEFAULT_CHUNK_BYTES, observer: None, node_id: None }
    }
}

/// An opened store: hand `log` and `state_machine` to `openraft::Raft::new`, keep `reader`.
#[derive(Debug)]
pub struct Store {
    pub log: LogStore,
    pub state_machine: StateMachine,
    pub reader: StateReader,
    pub snapshots: SnapshotInbox,
    /// How far the log is on disk: the network tells followers no commit beyond it.
    pub durable: DurableLog,
}

impl Store {
    /// Re-wraps this store's data key under `new_kek` (autolock on, unlock key rotated).
    ///
    /// # Errors
    /// [`StoreError::WrongKey`] when `old_kek` does not open the current wrapping.
    pub fn rewrap_data_key(
        &self,
        old_kek: &dyn seal::KeyEncryptionKey,
        new_kek: &dyn seal::KeyEncryptionKey,
    ) -> Result<(), StoreError> {
        self.reader.db().rewrap_data_key(old_kek, new_kek)
    }
}

/// The kind of key-encryption key the store under `dir` is sealed with (`key-file`, or
/// `unlock-key` under autolock), read without its key; `None` when there is no store yet.
///
/// # Errors
/// A store that cannot be read.
pub fn kek_kind(dir: &Path) -> Result<Option<String>, StoreError> {
    db::Db::kek_kind(dir)
}

/// Whether `kek` opens the store under `dir`, checked read-only (a wrong key changes
/// nothing on disk).
///
/// # Errors
/// [`StoreError::WrongKey`] for another key; a store that cannot be read.
pub fn check_kek(dir: &Path, kek: &dyn seal::KeyEncryptionKey) -> Result<(), StoreError> {
    db::Db::check_kek(dir, kek)
}

/// Opens (or creates) the store under `dir`, unwrapping its data key with `kek`.
///
/// # Errors
/// A clear [`StoreError`] for a wrong key, a newer format, tampered or corrupt data, or a
/// data dir that another process holds open.
pub fn open(dir: &Path, kek: &dyn seal::KeyEncryptionKey, options: StoreOptions) -> Result<Store, StoreError> {
    let db = db::Db::open(dir, kek)?;
    let stages = stages::Stages(options.observer);
    let state_machine = StateMachine::open(db.clone(), options.snapshot_chunk_bytes, stages.clone())?;
    Ok(Store {
        log: LogStore::new(db.clone(), stages, options.node_id)?,
        state_machine,
        reader: StateReader::new(db.clone()),
        durable: db.durable.handle(),
        snapshots: SnapshotInbox::new(db, options.snapshot_chunk_bytes),
    })
}
