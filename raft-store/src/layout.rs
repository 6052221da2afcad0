//! The data dir's layout as RocksDB sees it: the column families, the format record, and
//! the helpers that both the database (`db`) and the data key's move (`data_key`) use.
//!
//! Layout of `<dir>/db` (one RocksDB, several column families, one shared WAL):
//!
//! | column family | keys | values |
//! |---|---|---|
//! | `meta` | `format` | store format (u32 BE) |
//! | `log` | log index, u64 big-endian | sealed `Entry` |
//! | `raft` | `vote`, `committed`, `last_purged` | sealed openraft metadata |
//! | `sm_meta` | `last_applied`, `membership`, `installing` | sealed state-machine metadata |
//! | `sm` | see [`crate::keys`] | sealed state records |
//!

use std::path::PathBuf;

use rocksdb::{ColumnFamily, WriteOptions, DB};

use crate::error::StoreError;

/// The layout version of the data dir as a whole (column families and key schemes).
/// 2: the data key is in its own file (`data_key`), no longer in `meta`. An earlier
/// release refuses a store of format 2 as a newer one's, rather than find no key in it.
pub const STORE_FORMAT: u32 = 2;

pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_RAFT: &str = "raft";
pub(crate) const CF_SM_META: &str = "sm_meta";
pub(crate) const CF_SM: &str = "sm";
pub(crate) const ALL_CFS: [&str; 5] = [CF_META, CF_LOG, CF_RAFT, CF_SM_META, CF_SM];

pub(crate) const META_FORMAT: &[u8] = b"format";

pub(crate) fn cf_of<'a>(db: &'a DB, name: &str) -> Result<&'a ColumnFamily, StoreError> {
    db.cf_handle(name).ok_or_else(|| StoreError::Inconsistent {
        path: PathBuf::from(db.path()),
        reason: format!("column family {name} is missing"),
    })
}

/// Write options for anything that must be on disk before we report it done.
pub(crate) fn synced() -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(true);
    o
}
