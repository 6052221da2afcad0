//! Snapshot files: a consistent copy of the state machine, sealed chunk by chunk.
//!
//! A snapshot is built by iterating a RocksDB snapshot of the state machine and written to
//! `<dir>/snapshots/` as a stream of sealed frames; it is installed by streaming the frames
//! back into RocksDB. Neither side holds more than one chunk in memory.
//!
//! File format (all integers big-endian):
//!
//! ```text
//! "COFFSNAP" | format u32 | frame* ;  frame = len u32 | sealed bytes
//! frame 0      header:  codec(SnapshotMeta)          aad = snapshot-header
//! frame 1..=n  chunk i: record*                      aad = snapshot-chunk  | id | 0 | i
//! frame n+1    trailer: codec((chunks, records))     aad = snapshot-trailer | id | 0 | n
//! record = key_len u32 | key | value_len u32 | value   (values are encoded state records)
//! ```
//!
//! Invariants: a chunk opens only at its own position in its own snapshot, so reordered,
//! spliced, truncated or altered files fail to open; nothing follows the trailer. Chunks are
//! sealed with the manager's own data key: a snapshot sent to another manager travels as
//! plaintext chunks inside mutual TLS and is sealed again by the receiver
//! ([`SnapshotWriter::push_chunk`]).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::SnapshotMeta;
use rand::RngCore;
use zeroize::Zeroizing;

use crate::codec;
use crate::error::StoreError;
use crate::records::{add_record, records};
use crate::seal::{Aad, Sealer};
use crate::{ManagerNode, NodeId};

const MAGIC: &[u8; 8] = b"COFFSNAP";
/// The snapshot file format this build writes and reads.
pub const SNAPSHOT_FORMAT: u32 = 1;
/// Frames above this size are refused as corrupt rather than allocated.
const MAX_FRAME: usize = 64 << 20;
/// Default plaintext bytes per chunk.
pub const DEFAULT_CHUNK_BYTES: usize = 1 << 20;
const PREAMBLE: u64 = 12;

pub type Meta = SnapshotMeta<NodeId, ManagerNode>;

fn chunk_aad(kind: &str, id: &str, index: u64) -> Aad {
    let mut loc = Vec::with_capacity(id.len() + 9);
    loc.extend_from_slice(id.as_bytes());
    loc.push(0);
    loc.extend_from_slice(&index.to_be_bytes());
    Aad::new(kind, &loc)
}

fn header_aad() -> Aad {
    Aad::new("snapshot-header", b"")
}

/// A complete snapshot on disk: openraft's `SnapshotData` for Coffer.
///
/// It keeps its file open, so a newer snapshot may replace (and unlink) it while a reader
/// streams it to a follower.
pub struct SnapshotFile {
    file: Arc<File>,
    path: PathBuf,
    sealer: Sealer,
    meta: Meta,
    /// Offset of the first chunk frame.
    body: u64,
}

impl std::fmt::Debug for SnapshotFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotFile").field("path", &self.path).field("id", &self.meta.snapshot_id).finish()
    }
}

impl SnapshotFile {
    /// Opens a snapshot file and checks its header. Chunks are checked as they are read.
    ///
    /// # Errors
    /// [`StoreError::Snapshot`] for a file that is not a snapshot or is of a newer format,
    /// [`StoreError::Tampered`] for a header that does not open under `sealer`.
    pub fn open(path: &Path, sealer: Sealer) -> Result<Self, StoreError> {
        let file = File::open(path).map_err(StoreError::io("open snapshot", path))?;
        let bad = |reason: String| StoreError::Snapshot { path: path.to_path_buf(), reason };
        let mut pre = [0u8; PREAMBLE as usize];
        file.read_exact_at(&mut pre, 0).map_err(|_| bad("shorter than its preamble".into()))?;
        if &pre[..8] != MAGIC {
            return Err(bad("not a coffer snapshot (bad magic)".into()));
        }
        let format = u32::from_be_bytes([pre[8], pre[9], pre[10], pre[11]]);
        if format != SNAPSHOT_FORMAT {
            return Err(bad(format!("snapshot format {format}; this build reads {SNAPSHOT_FORMAT}")));
        }
        let (frame, body) = read_frame(&file, path, PREAMBLE)?.ok_or_else(|| bad("no header".into()))?;
        let plain = sealer.open(&header_aad(), &frame).map_err(|source| StoreError::Tampered {
            what: format!("snapshot header of {}", path.display()),
            source,
        })?;
        let meta: Meta = codec::decode(&plain)
            .map_err(|source| StoreError::Decode { what: format!("snapshot header of {}", path.display()), source })?;
        Ok(Self { file: Arc::new(file), path: path.to_path_buf(), sealer, meta, body })
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The plaintext chunks, in order, each checked as it is read; the last item is an
    /// error if the file was truncated or extended. Blocking I/O: call from a blocking
    /// context. Each chunk is zeroized when dropped.
    pub fn chunks(&self) -> ChunkReader {
        ChunkReader {
            file: self.file.clone(),
            path: self.path.clone(),
            sealer: self.sealer.clone(),
            id: self.meta.snapshot_id.clone(),
            offset: self.body,
            index: 0,
            records: 0,
            done: false,
        }
    }
}

/// Reads a frame at `offset`; `Ok(None)` at a clean end of file.
fn read_frame(file: &File, path: &Path, offset: u64) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
    let bad = |reason: String| StoreError::Snapshot { path: path.to_path_buf(), reason };
    let mut len = [0u8; 4];
    match file.read_at(&mut len, offset).map_err(StoreError::io("read snapshot", path))? {
        0 => return Ok(None),
        4 => {}
        n => {
            // A short read may just be the OS; insist on the rest.
            file.read_exact_at(&mut len[n..], offset + n as u64)
                .map_err(|_| bad(format!("truncated frame length at offset {offset}")))?;
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(bad(format!("frame of {len} bytes at offset {offset} is larger than any we write")));
    }
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset + 4).map_err(|_| bad(format!("truncated frame at offset {offset}")))?;
    Ok(Some((buf, offset + 4 + len as u64)))
}

/// Iterator over a snapshot's plaintext chunks. See [`SnapshotFile::chunks`].
pub struct ChunkReader {
    file: Arc<File>,
    path: PathBuf,
    sealer: Sealer,
    id: String,
    offset: u64,
    index: u64,
    records: u64,
    done: bool,
}

impl std::fmt::Debug for ChunkReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkReader").field("path", &self.path).field("index", &self.index).finish()
    }
}

impl ChunkReader {
    fn next_chunk(&mut self) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let bad = |reason: String| StoreError::Snapshot { path: self.path.clone(), reason };
        let Some((frame, next)) = read_frame(&self.file, &self.path, self.offset)? else {
            return Err(bad(format!("truncated after {} chunks: the trailer is missing", self.index)));
        };
        self.offset = next;
        if let Ok(plain) = self.sealer.open(&chunk_aad("snapshot-chunk", &self.id, self.index), &frame) {
            self.index += 1;
            for rec in records(&plain) {
                rec.map_err(|reason| bad(format!("chunk {}: {reason}", self.index - 1)))?;
                self.records += 1;
            }
            return Ok(Some(plain));
        }
        let trailer =
            self.sealer.open(&chunk_aad("snapshot-trailer", &self.id, self.index), &frame).map_err(|source| {
                StoreError::Tampered {
                    what: format!("snapshot {} frame {}", self.path.display(), self.index + 1),
                    source,
                }
            })?;
        let (chunks, records): (u64, u64) = codec::decode(&trailer).map_err(|source| StoreError::Decode {
            what: format!("snapshot trailer of {}", self.path.display()),
            source,
        })?;
        if chunks != self.index || records != self.records {
            return Err(bad(format!(
                "trailer counts {chunks} chunks and {records} records, file has {} and {}",
                self.index, self.records
            )));
        }
        if read_frame(&self.file, &self.path, self.offset)?.is_some() {
            return Err(bad("data after the trailer".into()));
        }
        Ok(None)
    }
}

impl Iterator for ChunkReader {
    type Item = Result<Zeroizing<Vec<u8>>, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_chunk() {
            Ok(Some(c)) => Some(Ok(c)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Writes a snapshot file: records or whole plaintext chunks in, one sealed frame per chunk.
pub struct SnapshotWriter {
    out: BufWriter<File>,
    tmp: PathBuf,
    dir: PathBuf,
    sealer: Sealer,
    meta: Meta,
    chunk_bytes: usize,
    pending: Zeroizing<Vec<u8>>,
    index: u64,
    records: u64,
    frame: Vec<u8>,
}

impl std::fmt::Debug for SnapshotWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotWriter").field("tmp", &self.tmp).field("id", &self.meta.snapshot_id).finish()
    }
}

impl SnapshotWriter {
    /// Starts a snapshot for `meta` in `dir` (a temporary file until [`Self::finish`]).
    pub(crate) fn create(dir: &Path, sealer: Sealer, meta: Meta, chunk_bytes: usize) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(StoreError::io("create snapshot dir", dir))?;
        let mut rnd = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut rnd);
        let tmp = dir.join(format!("{}.tmp", hex(&rnd)));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(StoreError::io("create snapshot", &tmp))?;
        let mut w = Self {
            out: BufWriter::with_capacity(256 << 10, file),
            tmp,
            dir: dir.to_path_buf(),
            sealer,
            meta,
            chunk_bytes: chunk_bytes.max(1),
            pending: Zeroizing::new(Vec::new()),
            index: 0,
            records: 0,
            frame: Vec::new(),
        };
        let mut pre = Vec::with_capacity(PREAMBLE as usize);
        pre.extend_from_slice(MAGIC);
        pre.extend_from_slice(&SNAPSHOT_FORMAT.to_be_bytes());
        w.write_bytes(&pre)?;
        let header = Zeroizing::new(codec::encode(&w.meta).map_err(StoreError::Encode)?);
        w.write_frame(&header_aad(), &header)?;
        Ok(w)
    }

    fn write_bytes(&mut self, b: &[u8]) -> Result<(), StoreError> {
        self.out.write_all(b).map_err(StoreError::io("write snapshot", &self.tmp))
    }

    fn write_frame(&mut self, aad: &Aad, plain: &[u8]) -> Result<(), StoreError> {
        let mut frame = std::mem::take(&mut self.frame);
        frame.clear();
        self.sealer.seal_into(aad, plain, &mut frame)?;
        let len = u32::try_from(frame.len())
            .map_err(|_| StoreError::Snapshot { path: self.tmp.clone(), reason: "chunk too large".into() })?;
        self.write_bytes(&len.to_be_bytes())?;
        self.write_bytes(&frame)?;
        self.frame = frame;
        Ok(())
    }

    /// Adds one record; seals a chunk whenever enough records are buffered.
    pub(crate) fn add_record(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        add_record(&mut self.pending, key, value)
            .ok_or_else(|| StoreError::Snapshot { path: self.tmp.clone(), reason: "record too large".into() })?;
        if self.pending.len() >= self.chunk_bytes {
            self.flush_chunk()?;
        }
        Ok(())
    }

    fn flush_chunk(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.pending, Zeroizing::new(Vec::new()));
        self.push_chunk(&chunk)
    }

    /// Adds a whole plaintext chunk as received from another manager's
    /// [`SnapshotFile::chunks`]. The chunk is checked to be well-formed records.
    ///
    /// # Errors
    /// [`StoreError::Snapshot`] for a chunk that does not split into records.
    pub fn push_chunk(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        let mut n = 0u64;
        for rec in records(chunk) {
            rec.map_err(|reason| StoreError::Snapshot {
                path: self.tmp.clone(),
                reason: format!("received chunk: {reason}"),
            })?;
            n += 1;
        }
        let aad = chunk_aad("snapshot-chunk", &self.meta.snapshot_id, self.index);
        self.write_frame(&aad, chunk)?;
        self.index += 1;
        self.records += n;
        Ok(())
    }

    /// Seals the trailer, syncs the file and moves it into place; returns it opened.
    pub fn finish(mut self) -> Result<SnapshotFile, StoreError> {
        self.flush_chunk()?;
        let trailer = codec::encode(&(self.index, self.records)).map_err(StoreError::Encode)?;
        let aad = chunk_aad("snapshot-trailer", &self.meta.snapshot_id, self.index);
        self.write_frame(&aad, &trailer)?;
        self.out.flush().map_err(StoreError::io("write snapshot", &self.tmp))?;
        self.out.get_ref().sync_all().map_err(StoreError::io("sync snapshot", &self.tmp))?;
        let index = self.meta.last_log_id.map(|l| l.index).unwrap_or(0);
        let mut rnd = [0u8; 4];
        rand::thread_rng().fill_bytes(&mut rnd);
        let path = self.dir.join(format!("snap-{index:020}-{}.snap", hex(&rnd)));
        std::fs::rename(&self.tmp, &path).map_err(StoreError::io("move snapshot into place", &path))?;
        sync_dir(&self.dir)?;
        SnapshotFile::open(&path, self.sealer.clone())
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        // An unfinished snapshot leaves nothing behind (after finish, tmp no longer exists).
        let _ = std::fs::remove_file(&self.tmp);
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(StoreError::io("sync directory", dir))
}

/// The newest complete snapshot in `dir`, after removing leftovers (temporary files and
/// older snapshots).
pub(crate) fn latest_in(dir: &Path, sealer: &Sealer) -> Result<Option<SnapshotFile>, StoreError> {
    let mut snaps = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries {
                let path = e.map_err(StoreError::io("list snapshots", dir))?.path();
                match path.extension().and_then(|x| x.to_str()) {
                    Some("snap") => snaps.push(path),
                    Some("tmp") => {
                        let _ = std::fs::remove_file(&path);
                    }
                    _ => {}
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("list snapshots", dir)(e)),
    }
    snaps.sort();
    let Some(newest) = snaps.pop() else { return Ok(None) };
    let file = SnapshotFile::open(&newest, sealer.clone())?;
    for old in snaps {
        let _ = std::fs::remove_file(old);
    }
    Ok(Some(file))
}

/// Removes every snapshot in `dir` but `keep`.
pub(crate) fn remove_others(dir: &Path, keep: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p != keep && p.extension().is_some_and(|x| x == "snap") {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
