//! The RocksDB database under a manager's data dir, and sealed reads and writes on it.
//!
//! The column families and what they hold are in `layout`.
//!
//! Invariant: every value outside `meta` is sealed with the data key for `(column family,
//! key)`; `meta` holds nothing secret. The data key, wrapped by the KEK, is in a file of its
//! own beside `db` (`data_key`), never in the database.
//!
//! Because all column families share one WAL, a synced write (a log append, a vote) also
//! makes every earlier unsynced write durable, state-machine writes included.
//!
//! The write-ahead log's files are recycled: RocksDB overwrites an obsolete log instead of
//! appending to a new file, so a synced write need not also journal the file's new size
//! (on ext4 here, an fdatasync after overwriting took 0.18 ms against 0.41 ms after
//! appending; every write waits for one). A store of an earlier release, whose logs may
//! hold the data key's wrapping, is opened without recycling until they are gone
//! (`data_key::WAL_MARKER`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions,
    WriteBatch, WriteOptions, DB,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::codec;
use crate::data_key::{self, Wrapped};
use crate::error::StoreError;
use crate::layout::{cf_of, synced, ALL_CFS, CF_LOG, CF_META, CF_RAFT, CF_SM, CF_SM_META, META_FORMAT, STORE_FORMAT};
use crate::seal::{Aad, KeyBytes, KeyEncryptionKey, Sealer};

/// The memory all column families' memtables may take together.
const MEMTABLES_BYTES: usize = 48 << 20;

/// The block cache all column families share. Without one of our own, RocksDB gives each
/// column family its own (32 MiB apiece); the state a manager reads is its records, the
/// values of secrets being redeemed, and the log's tail.
const BLOCK_CACHE_BYTES: usize = 32 << 20;

/// Bits per key of the state's Bloom filters (about 1% false positives).
const BLOOM_BITS_PER_KEY: f64 = 10.0;

/// The share of a memtable's size given to its own Bloom filter, which lets a read by key
/// skip a memtable that does not hold the key (most reads are of older records).
const MEMTABLE_BLOOM_RATIO: f64 = 0.02;

/// Records of the state at least this large (a secret's version: its sealed value) are
/// kept in blob files, out of the tables that compactions rewrite (see `column_families`).
const MIN_BLOB_BYTES: u64 = 1 << 10;

/// The size at which a blob file is closed: smaller files are reclaimed sooner once the
/// versions in them are removed.
const BLOB_FILE_BYTES: u64 = 64 << 20;

/// The removed values in blob files at which a snapshot build also reclaims their space
/// (see [`Db::reclaim_blob_garbage`]): at least a file's worth, and half of all blob bytes.
pub(crate) const RECLAIM_BLOB_GARBAGE_BYTES: u64 = BLOB_FILE_BYTES;

/// How many obsolete write-ahead logs are kept to be overwritten.
const RECYCLED_LOGS: usize = 2;

/// The write-ahead log's total size at which the oldest log's memtables are flushed and a
/// new (recycled) log begins. It also bounds what a restart replays.
const MAX_WAL_BYTES: u64 = 32 << 20;

/// Read options of a pass over the whole state (a snapshot build, a digest, an export):
/// what it reads is not put in the block cache. A snapshot is built every time the log
/// grows as long as the state is large, and a pass through a state of hundreds of MiB
/// would otherwise empty the cache of the records that the API reads.
pub(crate) fn bulk_read() -> ReadOptions {
    let mut opts = ReadOptions::default();
    opts.fill_cache(false);
    opts
}

/// The open database plus the key that seals everything in it. Shared by the log store,
/// the state machine, readers and snapshot builders.
#[derive(Debug)]
pub struct Db {
    pub(crate) db: DB,
    pub(crate) sealer: Sealer,
    pub(crate) dir: PathBuf,
    /// Serialises replacing the current snapshot file (build and install both do it).
    pub(crate) snapshot_lock: std::sync::Mutex<()>,
    /// Bumped whenever applied state that places tasks changes (tasks, services, secret
    /// versions, nodes): watchers that only care about placement wake only for that.
    pub(crate) placement: tokio::sync::watch::Sender<u64>,
    /// The changes applied since this process opened the store, for watchers.
    pub(crate) events: crate::events::EventLog,
    /// How far the Raft log is on disk (see `durable`).
    pub(crate) durable: crate::durable::Durable,
    /// The commit index openraft last asked to save, not written yet: it goes to disk
    /// with the next apply's batch (see `LogStore::save_committed`).
    pub(crate) unsaved_committed: std::sync::Mutex<Option<Option<openraft::LogId<crate::NodeId>>>>,
    /// A reclaim of blob garbage is running (see [`Db::reclaim_blob_garbage`]).
    reclaiming: std::sync::atomic::AtomicBool,
}

/// The column families' options: one block cache for all, and Bloom filters on those read
/// by key. A read by key on a store that has written a lot otherwise searches a table file
/// of every level it might be in (and of every level for a key that does not exist, as
/// when a secret is looked up by id with its name): reads fell with the store's size.
/// The log is read in ranges, which filters do not help.
///
/// The state keeps large records (secret versions) in blob files: its keys are ids, spread
/// all over the key space, so every compaction into the bottom level rewrote all of it.
/// With 64 clients writing 4 KiB values to a store of a few hundred MiB, RocksDB's own
/// threads took 100-210 µs of CPU per write (a fifth to a third of the managers' CPU),
/// rising as the store grew, and ran on into whatever the cluster did next. A blob is
/// written once, at flush; compactions move its reference.
///
/// RocksDB's blob garbage collection stays off: it relocates the live blobs of the oldest
/// files whenever a compaction meets them, and with keys spread like ours every compaction
/// meets all of them, so it cost more than the blobs saved (RocksDB's threads went from 93
/// to 320 µs per write over five rounds of 4 KiB writes). Versions are never overwritten,
/// so blob garbage comes only from removed secrets; a snapshot build reclaims it when it is
/// half of the blob files ([`Db::reclaim_blob_garbage`]).
///
/// The log needs none of this: its keys grow, so its tables move down without a rewrite.
fn column_families() -> Vec<ColumnFamilyDescriptor> {
    let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
    ALL_CFS
        .iter()
        .map(|name| {
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            let mut opts = Options::default();
            if *name != CF_LOG {
                table.set_bloom_filter(BLOOM_BITS_PER_KEY, false);
                opts.set_memtable_whole_key_filtering(true);
                opts.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
            }
            if *name == CF_SM {
                opts.set_enable_blob_files(true);
                opts.set_min_blob_size(MIN_BLOB_BYTES);
                opts.set_blob_file_size(BLOB_FILE_BYTES);
                opts.set_blob_cache(&cache);
            }
            opts.set_block_based_table_factory(&table);
            ColumnFamilyDescriptor::new(*name, opts)
        })
        .collect()
}

impl Db {
    /// Opens (or creates) the store under `dir`, unwrapping the data key with `kek`.
    ///
    /// # Errors
    /// [`StoreError::NewerStore`] for a data dir of a newer release, [`StoreError::WrongKey`]
    /// when `kek` did not wrap the data key, [`StoreError::Inconsistent`] for a data dir that
    /// has data but no key, and RocksDB's own errors (corrupt files, a lock held by another
    /// process).
    pub fn open(dir: &Path, kek: &dyn KeyEncryptionKey) -> Result<Arc<Self>, StoreError> {
        std::fs::create_dir_all(dir).map_err(StoreError::io("create data dir", dir))?;
        let db_path = dir.join("db");
        let marker = dir.join(data_key::WAL_MARKER);
        // A new store never writes a wrapping into the database; an older one is opened
        // without recycling until its logs are known to be free of one.
        let fresh = !db_path.join("CURRENT").exists();
        let recycle = marker.exists() || fresh;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Corruption is an error, not something to skip over.
        opts.set_paranoid_checks(true);
        opts.set_keep_log_file_num(4);
        // File descriptors are shared with the listener: keep RocksDB to a bounded share.
        opts.set_max_open_files(256);
        // Memtables of every column family together: RocksDB's default is 64 MiB for each
        // of five, which under sustained writes held a manager near 200 MiB. The log is
        // purged after each snapshot and the state is read through the block cache, so
        // larger memtables buy little.
        opts.set_db_write_buffer_size(MEMTABLES_BYTES);
        opts.set_max_total_wal_size(MAX_WAL_BYTES);
        opts.set_recycle_log_file_num(if recycle { RECYCLED_LOGS } else { 0 });
        let db = DB::open_cf_descriptors(&opts, &db_path, column_families())
            .map_err(StoreError::db(format!("open {}", db_path.display())))?;

        // A marker beside a database that still holds a wrapping (a data dir put together
        // from two) is not believed.
        if marker.exists() && data_key::legacy(&db)?.is_some() {
            std::fs::remove_file(&marker).map_err(StoreError::io("remove the log marker", &marker))?;
        }
        if !fresh && !marker.exists() {
            data_key::free_logs(&db, dir)?;
        }
        let sealer = Self::load_or_create_key(&db, dir, kek)?;
        if fresh {
            data_key::mark(dir)?;
        }
        Ok(Arc::new(Self {
            db,
            sealer,
            dir: dir.to_path_buf(),
            snapshot_lock: std::sync::Mutex::new(()),
            placement: tokio::sync::watch::channel(0).0,
            events: crate::events::EventLog::new(),
            durable: crate::durable::Durable::default(),
            unsaved_committed: std::sync::Mutex::new(None),
            reclaiming: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    fn load_or_create_key(db: &DB, dir: &Path, kek: &dyn KeyEncryptionKey) -> Result<Sealer, StoreError> {
        let meta = cf_of(db, CF_META)?;
        let format = db.get_cf(meta, META_FORMAT).map_err(StoreError::db("read store format"))?;
        let Some(format) = format else {
            // A new store, unless something was written without the key (never by us).
            for name in [CF_LOG, CF_RAFT, CF_SM_META, CF_SM] {
                let cf = cf_of(db, name)?;
                if db.iterator_cf(cf, rocksdb::IteratorMode::Start).next().is_some() {
                    return Err(StoreError::Inconsistent {
                        path: dir.to_path_buf(),
                        reason: format!("column family {name} holds data but the store has no data key"),
                    });
                }
            }
            let key = KeyBytes::generate();
            data_key::write(dir, &Wrapped::new(kek, &key)?)?;
            let mut batch = WriteBatch::default();
            batch.put_cf(meta, META_FORMAT, STORE_FORMAT.to_be_bytes());
            db.write_opt(batch, &synced()).map_err(StoreError::db("write store format"))?;
            tracing::info!(kek = kek.kind(), "created a new data key for this store");
            return Ok(Sealer::new(&key));
        };

        let found = <[u8; 4]>::try_from(format.as_slice()).map(u32::from_be_bytes).map_err(|_| {
            StoreError::Inconsistent { path: dir.to_path_buf(), reason: "store format record is malformed".into() }
        })?;
        if found > STORE_FORMAT {
            return Err(StoreError::NewerStore { path: dir.to_path_buf(), found, supported: STORE_FORMAT });
        }
        Ok(Sealer::new(&wrapped_key(dir)?.unwrap(kek)?))
    }

    /// Re-wraps the data key under `new_kek` (e.g. when autolock is turned on or the unlock
    /// key is rotated). Data is not re-encrypted: only the wrapping changes. The old
    /// wrapping was only ever in the file this replaces.
    ///
    /// # Errors
    /// When `old_kek` does not open the current wrapping, or the write fails.
    pub fn rewrap_data_key(
        &self,
        old_kek: &dyn KeyEncryptionKey,
        new_kek: &dyn KeyEncryptionKey,
    ) -> Result<(), StoreError> {
        let current = wrapped_key(&self.dir)?;
        let key =
            old_kek.unwrap(&current.wrapped).map_err(|_| StoreError::WrongKey { kek_kind: old_kek.kind().into() })?;
        data_key::write(&self.dir, &Wrapped::new(new_kek, &key)?)
    }

    /// The kind of key-encryption key the store under `dir` was sealed with (`key-file`,
    /// `unlock-key`), read without opening it; `None` for no store yet.
    ///
    /// # Errors
    /// A store that cannot be read.
    pub fn kek_kind(dir: &Path) -> Result<Option<String>, StoreError> {
        Ok(Self::stored_key(dir)?.map(|w| w.kind))
    }

    /// Whether `kek` opens the store under `dir`, checked read-only: trying a wrong key
    /// changes nothing on disk.
    ///
    /// # Errors
    /// [`StoreError::WrongKey`] for another key (or kind of key); a store that cannot be read.
    pub fn check_kek(dir: &Path, kek: &dyn KeyEncryptionKey) -> Result<(), StoreError> {
        Self::stored_key(dir)?.ok_or_else(|| key_missing(dir))?.unwrap(kek).map(drop)
    }

    /// The wrapped data key of the store under `dir`, read without opening it for writing:
    /// its file, or where a store of an earlier release kept it.
    fn stored_key(dir: &Path) -> Result<Option<Wrapped>, StoreError> {
        if let Some(w) = data_key::read(dir)? {
            return Ok(Some(w));
        }
        let db_path = dir.join("db");
        if !db_path.join("CURRENT").exists() {
            return Ok(None);
        }
        let db = DB::open_cf_for_read_only(&Options::default(), &db_path, ALL_CFS, false)
            .map_err(StoreError::db(format!("open {} read-only", db_path.display())))?;
        data_key::legacy(&db)
    }

    pub(crate) fn cf(&self, name: &str) -> Result<&ColumnFamily, StoreError> {
        cf_of(&self.db, name)
    }

    /// Reclaims the space of removed secrets' values once they are at least `min_bytes`
    /// and half of the blob files: one full compaction of the state with blob garbage
    /// collection on, which moves the live values out of files that are mostly garbage and
    /// deletes those files. Blocking, and one at a time; returns whether it ran.
    ///
    /// Garbage is counted as compactions drop the records of removed versions, so what a
    /// removal frees shows once its deletion has been compacted down.
    pub(crate) fn reclaim_blob_garbage(&self, min_bytes: u64) -> Result<bool, StoreError> {
        let cf = self.cf(CF_SM)?;
        let property = |name: &str| -> Result<u64, StoreError> {
            Ok(self.db.property_int_value_cf(cf, name).map_err(StoreError::db("read blob file sizes"))?.unwrap_or(0))
        };
        let (live, garbage) =
            (property("rocksdb.live-blob-file-size")?, property("rocksdb.live-blob-file-garbage-size")?);
        if garbage < min_bytes || garbage.saturating_mul(2) < live || garbage == 0 {
            return Ok(false);
        }
        if self.reclaiming.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return Ok(false);
        }
        tracing::info!(live, garbage, "reclaiming the space of removed values");
        let collected = self.collect_blob_garbage(cf);
        self.reclaiming.store(false, std::sync::atomic::Ordering::Release);
        collected.map(|()| true)
    }

    /// One full compaction of `cf` with blob garbage collection on for every blob file.
    fn collect_blob_garbage(&self, cf: &ColumnFamily) -> Result<(), StoreError> {
        let set = |on: &str, cutoff: &str| {
            self.db
                .set_options_cf(
                    cf,
                    &[("enable_blob_garbage_collection", on), ("blob_garbage_collection_age_cutoff", cutoff)],
                )
                .map_err(StoreError::db("set blob garbage collection"))
        };
        set("true", "1.0")?;
        let mut full = rocksdb::CompactOptions::default();
        full.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        self.db.compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &full);
        set("false", "0.25")
    }

    /// The keys of `cf` that start with `prefix`, in order, with their sealed values. The
    /// iterator is told where the prefix ends: RocksDB then stops there rather than seek
    /// on to the next live key (through any deleted ones after the prefix), and skips the
    /// table files that start past it.
    pub(crate) fn prefix_iter<'a>(
        &'a self,
        cf: &str,
        prefix: &[u8],
    ) -> Result<rocksdb::DBIteratorWithThreadMode<'a, DB>, StoreError> {
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(crate::keys::prefix_end(prefix));
        Ok(self.db.iterator_cf_opt(self.cf(cf)?, opts, IteratorMode::From(prefix, Direction::Forward)))
    }

    pub(crate) fn placement_changed(&self) {
        self.placement.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub(crate) fn snapshots_dir(&self) -> PathBuf {
        self.dir.join("snapshots")
    }

    /// Encodes and seals `value` for `(cf, key)` into `batch`.
    pub(crate) fn put_sealed<T: Serialize + ?Sized>(
        &self,
        batch: &mut WriteBatch,
        cf: &str,
        key: &[u8],
        value: &T,
    ) -> Result<(), StoreError> {
        let plain = Zeroizing::new(codec::encode(value).map_err(StoreError::Encode)?);
        self.put_sealed_raw(batch, cf, key, &plain)
    }

    /// Seals already-encoded bytes for `(cf, key)` into `batch`.
    pub(crate) fn put_sealed_raw(
        &self,
        batch: &mut WriteBatch,
        cf: &str,
        key: &[u8],
        plain: &[u8],
    ) -> Result<(), StoreError> {
        let sealed = self.sealer.seal(&Aad::new(cf, key), plain)?;
        batch.put_cf(self.cf(cf)?, key, sealed);
        Ok(())
    }

    /// Reads, opens and decodes the value at `(cf, key)`.
    pub(crate) fn get_sealed<T: DeserializeOwned>(&self, cf: &str, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.get_sealed_raw(cf, key)? {
            None => Ok(None),
            Some(plain) => decode_at(cf, key, &plain).map(Some),
        }
    }

    /// Reads and opens the value at `(cf, key)`, leaving it encoded.
    pub(crate) fn get_sealed_raw(&self, cf: &str, key: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let Some(sealed) = self.db.get_pinned_cf(self.cf(cf)?, key).map_err(StoreError::db(format!("read {cf}")))?
        else {
            return Ok(None);
        };
        self.open_at(cf, key, &sealed).map(Some)
    }

    pub(crate) fn open_at(&self, cf: &str, key: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        self.sealer
            .open(&Aad::new(cf, key), sealed)
            .map_err(|source| StoreError::Tampered { what: describe(cf, key), source })
    }

    pub(crate) fn write(&self, batch: WriteBatch, sync: bool, what: &str) -> Result<(), StoreError> {
        let opts = if sync { synced() } else { WriteOptions::default() };
        self.db.write_opt(batch, &opts).map_err(StoreError::db(what.to_string()))
    }
}

/// The data key's file under `dir`, which an opened store has.
fn wrapped_key(dir: &Path) -> Result<Wrapped, StoreError> {
    data_key::read(dir)?.ok_or_else(|| key_missing(dir))
}

fn key_missing(dir: &Path) -> StoreError {
    StoreError::Inconsistent { path: dir.to_path_buf(), reason: "the data key is missing".into() }
}

pub(crate) fn decode_at<T: DeserializeOwned>(cf: &str, key: &[u8], plain: &[u8]) -> Result<T, StoreError> {
    codec::decode(plain).map_err(|source| StoreError::Decode { what: describe(cf, key), source })
}

/// Names a record for an error message: the column family and a printable key. Keys hold
/// ids and names, never values.
pub(crate) fn describe(cf: &str, key: &[u8]) -> String {
    if cf == CF_LOG && key.len() == 8 {
        let mut b = [0u8; 8];
        b.copy_from_slice(key);
        return format!("log entry {}", u64::from_be_bytes(b));
    }
    let printable: String = key
        .iter()
        .map(|&c| if c.is_ascii_graphic() { char::from(c).to_string() } else { format!("\\x{c:02x}") })
        .collect();
    format!("{cf}/{printable}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::{KeyBytes, LocalKek};

    fn blob_bytes(db: &Db) -> (u64, u64) {
        let cf = db.cf(CF_SM).expect("cf");
        let get = |name: &str| db.db.property_int_value_cf(cf, name).expect("property").unwrap_or(0);
        (get("rocksdb.live-blob-file-size"), get("rocksdb.live-blob-file-garbage-size"))
    }

    #[test]
    fn large_records_go_to_blob_files_and_removed_ones_are_reclaimed() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let db = Db::open(dir.path(), &LocalKek::new(&KeyBytes::generate(), "test")).expect("open");
        let key = |n: u32| format!("secret-value/id{n}\0").into_bytes();
        let value = |n: u32| vec![u8::try_from(n).unwrap_or(0); 4096];
        let mut batch = WriteBatch::default();
        for n in 0..20 {
            db.put_sealed_raw(&mut batch, CF_SM, &key(n), &value(n)).expect("seal");
        }
        db.write(batch, true, "write").expect("write");
        db.db.flush_cf(db.cf(CF_SM).expect("cf")).expect("flush");
        let (written, _) = blob_bytes(&db);
        assert!(written >= 20 * 4096, "the values went to blob files: {written} bytes of blobs");

        // Most are removed; once compacted, they are garbage in the same file as the rest.
        let mut batch = WriteBatch::default();
        for n in 0..16 {
            batch.delete_cf(db.cf(CF_SM).expect("cf"), key(n));
        }
        db.write(batch, true, "remove").expect("remove");
        db.db.flush_cf(db.cf(CF_SM).expect("cf")).expect("flush");
        db.db.compact_range_cf(db.cf(CF_SM).expect("cf"), None::<&[u8]>, None::<&[u8]>);
        let (live, garbage) = blob_bytes(&db);
        assert!(garbage >= 16 * 4096, "removed values are counted as garbage: {garbage} of {live}");

        assert!(!db.reclaim_blob_garbage(live + 1).expect("reclaim"), "below the threshold nothing runs");
        db.reclaiming.store(true, std::sync::atomic::Ordering::Release);
        assert!(!db.reclaim_blob_garbage(1).expect("reclaim"), "one reclaim at a time");
        db.reclaiming.store(false, std::sync::atomic::Ordering::Release);
        assert!(db.reclaim_blob_garbage(1).expect("reclaim"));
        let (after, garbage) = blob_bytes(&db);
        assert_eq!(garbage, 0);
        assert!(after < live / 2, "the files of removed values are gone: {after} bytes left of {live}");
        for n in 0..20 {
            let read = db.get_sealed_raw(CF_SM, &key(n)).expect("read");
            assert_eq!(read.map(|v| v.to_vec()), (n >= 16).then(|| value(n)), "record {n}");
        }
        // Collection is off again for the compactions that follow.
        assert!(!db.reclaim_blob_garbage(1).expect("nothing left"));
    }

    #[test]
    fn a_prefix_scan_stops_at_its_prefix() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let db = Db::open(dir.path(), &LocalKek::new(&KeyBytes::generate(), "test")).expect("open");
        let mut batch = WriteBatch::default();
        for key in ["service-name/a", "service/a", "service/b", "service0", "task/a"] {
            db.put_sealed_raw(&mut batch, CF_SM, key.as_bytes(), b"v").expect("seal");
        }
        db.write(batch, false, "write").expect("write");
        let keys: Vec<Vec<u8>> =
            db.prefix_iter(CF_SM, b"service/").expect("iter").map(|i| i.expect("item").0.to_vec()).collect();
        assert_eq!(keys, vec![b"service/a".to_vec(), b"service/b".to_vec()]);
    }
}
