//! The store's data key, wrapped by the key-encryption key (KEK), in its own file beside the
//! database: `<dir>/data-key` (the KEK's kind and the wrapping, in our record codec;
//! mode 0600).
//!
//! Why not in RocksDB: its write-ahead logs are recycled (see `db`), and RocksDB refuses a
//! write without the log while it recycles them. A recycled log keeps its old bytes until
//! new writes reach that far, so a wrapping written to a log would outlive a rewrap, and
//! whoever kept the old KEK (a key file that autolock removed) could open the data key
//! from a copy of the disk. A file replaced by a rename leaves no file behind with the old
//! wrapping.
//!
//! Stores of earlier releases keep the wrapping in the `meta` column family. They are
//! moved at open ([`free_logs`]): the wrapping to its file, then deleted from `meta`, every
//! column family flushed (this open does not recycle, so the logs that held it are
//! deleted) and `meta`'s tables rewritten. Once no old log is left, [`WAL_MARKER`] says
//! so, and the next open recycles.
//!
//! Must never: write a wrapping into the database, or mark a store whose logs may hold one.

use std::path::Path;

use rocksdb::{BottommostLevelCompaction, CompactOptions, WriteBatch, DB};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::layout::{cf_of, synced, ALL_CFS, CF_META, META_FORMAT, STORE_FORMAT};
use crate::seal::{KeyBytes, KeyEncryptionKey};

/// The data key's file, beside `db`.
pub const DATA_KEY_FILE: &str = "data-key";

/// Beside `db`: present once no write-ahead log of the store can hold a wrapping of the
/// data key, so that its logs may be recycled. Removing it costs one open without recycling.
pub const WAL_MARKER: &str = "db.wal-recycled";

/// Where earlier releases kept the KEK's kind and the wrapping, in `meta`.
const LEGACY_KEK_KIND: &[u8] = b"kek_kind";
const LEGACY_DATA_KEY: &[u8] = b"data_key";

/// The data key as stored: wrapped, with the kind of KEK that wrapped it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Wrapped {
    pub(crate) kind: String,
    pub(crate) wrapped: Vec<u8>,
}

impl Wrapped {
    pub(crate) fn new(kek: &dyn KeyEncryptionKey, key: &KeyBytes) -> Result<Self, StoreError> {
        Ok(Self { kind: kek.kind().to_string(), wrapped: kek.wrap(key)? })
    }

    /// The data key, after checking that `kek` is of the kind that wrapped it.
    pub(crate) fn unwrap(&self, kek: &dyn KeyEncryptionKey) -> Result<KeyBytes, StoreError> {
        if self.kind != kek.kind() {
            return Err(StoreError::WrongKey {
                kek_kind: format!("{} (the store was sealed by {})", kek.kind(), self.kind),
            });
        }
        kek.unwrap(&self.wrapped).map_err(|_| StoreError::WrongKey { kek_kind: self.kind.clone() })
    }
}

/// The data key's file under `dir`; `None` when there is none (a new store, or one of an
/// earlier release).
pub(crate) fn read(dir: &Path) -> Result<Option<Wrapped>, StoreError> {
    let path = dir.join(DATA_KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => crate::codec::decode(&bytes)
            .map(Some)
            .map_err(|_| StoreError::Inconsistent { path, reason: "the data key's file is malformed".into() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io("read the data key's file", path)(e)),
    }
}

/// Replaces the data key's file under `dir`: written aside, synced, renamed over the old
/// one, and the directory synced. A crash leaves the old file or the new one.
pub(crate) fn write(dir: &Path, key: &Wrapped) -> Result<(), StoreError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let bytes = crate::codec::encode(key).map_err(StoreError::Encode)?;
    let (tmp, path) = (dir.join(format!("{DATA_KEY_FILE}.tmp")), dir.join(DATA_KEY_FILE));
    // One a crash left behind goes first: the new one is made afresh, mode and all.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(StoreError::io("remove a stale data key file", &tmp)(e))
        }
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(StoreError::io("create the data key's file", &tmp))?;
    f.write_all(&bytes).and_then(|()| f.sync_all()).map_err(StoreError::io("write the data key's file", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(StoreError::io("replace the data key's file", &path))?;
    crate::snapshot::sync_dir(dir)
}

/// The wrapping an earlier release kept in `meta`, if any.
pub(crate) fn legacy(db: &DB) -> Result<Option<Wrapped>, StoreError> {
    let meta = cf_of(db, CF_META)?;
    let Some(wrapped) = db.get_cf(meta, LEGACY_DATA_KEY).map_err(StoreError::db("read data key"))? else {
        return Ok(None);
    };
    let kind = db.get_cf(meta, LEGACY_KEK_KIND).map_err(StoreError::db("read kek kind"))?.unwrap_or_default();
    Ok(Some(Wrapped { kind: String::from_utf8_lossy(&kind).into_owned(), wrapped }))
}

/// Readies a store opened without recycling for recycling, step by step, every step run
/// again at each open until the marker is written, so that a crash or an error between
/// two of them leaves nothing behind:
/// - an earlier release's wrapping in `meta` is written to its file (while `meta` holds
///   one, it is the authority: an earlier release may have rewrapped it since a file was
///   written) and deleted from `meta`;
/// - every column family is flushed, so every log but the live one becomes obsolete and is
///   deleted (not recycled, in this open), and `meta`'s tables are rewritten down to the
///   last level, without the wrapping;
/// - the marker is written once at most one log is left and no `meta` table holds the
///   wrapping of the file (which is the one `meta` held, unless a rewrap came since).
pub(crate) fn free_logs(db: &DB, dir: &Path) -> Result<(), StoreError> {
    let meta = cf_of(db, CF_META)?;
    if let Some(found) = legacy(db)? {
        write(dir, &found)?;
        let mut batch = WriteBatch::default();
        batch.delete_cf(meta, LEGACY_DATA_KEY);
        batch.delete_cf(meta, LEGACY_KEK_KIND);
        batch.put_cf(meta, META_FORMAT, STORE_FORMAT.to_be_bytes());
        db.write_opt(batch, &synced()).map_err(StoreError::db("remove the data key from meta"))?;
        tracing::info!("moved the data key's wrapping out of the database into its own file");
    }
    for name in ALL_CFS {
        db.flush_cf(cf_of(db, name)?).map_err(StoreError::db(format!("flush {name}")))?;
    }
    let mut deep = CompactOptions::default();
    deep.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
    db.compact_range_cf_opt(meta, None::<&[u8]>, None::<&[u8]>, &deep);

    let db_dir = dir.join("db");
    let mut logs = 0;
    for entry in std::fs::read_dir(&db_dir).map_err(StoreError::io("list the store's files", &db_dir))? {
        let entry = entry.map_err(StoreError::io("list the store's files", &db_dir))?;
        logs += usize::from(entry.path().extension().is_some_and(|x| x == "log"));
    }
    if logs > 1 {
        tracing::info!(logs, "old write-ahead logs are still being deleted; logs are recycled from a later start");
        return Ok(());
    }
    if let Some(current) = read(dir)? {
        let tables = db.live_files().map_err(StoreError::db("list the store's tables"))?;
        for t in tables.iter().filter(|t| t.column_family_name == CF_META) {
            let path = db_dir.join(t.name.trim_start_matches('/'));
            // Unread, a table is not known to be free of it: the marker waits.
            let bytes = std::fs::read(&path).unwrap_or_else(|_| current.wrapped.clone());
            if bytes.windows(current.wrapped.len().max(1)).any(|w| w == current.wrapped.as_slice()) {
                tracing::warn!(table = %path.display(), "a table of meta still holds the data key; retried at the next start");
                return Ok(());
            }
        }
    }
    mark(dir)
}

/// Writes [`WAL_MARKER`] under `dir`: a new store's logs never held a wrapping.
pub(crate) fn mark(dir: &Path) -> Result<(), StoreError> {
    let marker = dir.join(WAL_MARKER);
    std::fs::write(&marker, b"no write-ahead log of this store holds a wrapping of its data key\n")
        .and_then(|()| std::fs::File::open(&marker)?.sync_all())
        .map_err(StoreError::io("write the log marker", &marker))?;
    crate::snapshot::sync_dir(dir)
}
