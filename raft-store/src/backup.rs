//! Backups: a point-in-time export of the applied state, sealed under a key that the
//! operator holds and the cluster never stores.
//!
//! Three formats live here, one for each place the export passes through:
//!
//! - the **export** ([`crate::StateReader::export`]): a [`BackupInfo`] and plaintext chunks
//!   of records, read from one RocksDB snapshot (a consistent view; writes go on);
//! - the **stream** ([`stream`]): how a manager sends an export to `coffer snapshot save`
//!   over mutual TLS: tagged frames, so that a cut stream is told from a complete one;
//! - the **file**, written by [`BackupWriter`] and read by [`BackupFile`] (all integers
//!   big-endian):
//!
//! ```text
//! "COFFBKUP" | format u32 | header_len u32 | header | frame* | sha256 (32 bytes)
//! header   = postcard(Header { info, kdf })                 readable without the key
//! frame    = len u32 | sealed
//! frame 0      key check   aad = backup-check   | H
//! frame 1..=n  chunk i     aad = backup-chunk   | H | i      (records, as in snapshots)
//! frame n+1    trailer     aad = backup-trailer | H | n      postcard((chunks, records))
//! H = sha256(header); the final sha256 covers every byte before it
//! ```
//!
//! Invariants: the header is bound to the key (a header altered by someone who recomputed
//! the digest fails the key check); a chunk opens only at its own position; a file that is
//! truncated, extended or altered anywhere is refused before anything is restored from it.
//! The key is a random 256-bit key (`coffer snapshot keygen`) or a passphrase stretched
//! with Argon2id, whose parameters and salt are in the header.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use openraft::LogId;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::codec;
use crate::records::records;
use crate::seal::{Aad, KeyBytes, Sealer};
use crate::NodeId;

/// The backup file format this build writes and reads.
pub const BACKUP_FORMAT: u32 = 1;
const MAGIC: &[u8; 8] = b"COFFBKUP";
const MAX_HEADER: usize = 64 << 10;
const MAX_FRAME: usize = 64 << 20;
const DIGEST_LEN: u64 = 32;
/// How a key file made by `coffer snapshot keygen` starts; anything else is a passphrase.
const KEY_PREFIX: &str = "coffer-backup-key-1:";
const MIN_PASSPHRASE: usize = 12;
const KEY_CHECK: &[u8] = b"coffer backup key check";
/// Argon2id cost for new files: RFC 9106's second recommended option (64 MiB, 3 passes).
const ARGON_M_KIB: u32 = 64 * 1024;
const ARGON_T: u32 = 3;
const ARGON_P: u32 = 1;

/// Why a backup could not be written or read. Messages name the file and what to do, never
/// a key or a value.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: not a coffer backup (bad magic)")]
    NotABackup { path: PathBuf },
    #[error("{path}: backup format {found}; this build reads {BACKUP_FORMAT}")]
    NewerFormat { path: PathBuf, found: u32 },
    #[error("{path}: the file is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: the key does not open this backup (wrong key file or passphrase)")]
    WrongKey { path: PathBuf },
    #[error("{path}: frame {frame} does not authenticate: the file was altered")]
    Altered { path: PathBuf, frame: u64 },
    #[error("key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    #[error("snapshot stream: {0}")]
    Stream(String),
    #[error("{context}: {path}: {error}")]
    Io { context: &'static str, path: PathBuf, error: std::io::Error },
}

fn io(context: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BackupError {
    let path = path.to_path_buf();
    move |error| BackupError::Io { context, path, error }
}

/// How many records of each kind an export holds, counted from their keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts {
    pub secrets: u64,
    pub secret_versions: u64,
    pub services: u64,
    pub tasks: u64,
    pub nodes: u64,
    pub api_tokens: u64,
    pub admin_credentials: u64,
    /// Every record, of every kind.
    pub records: u64,
}

impl StateCounts {
    pub(crate) fn count(&mut self, key: &[u8]) {
        use crate::keys;
        self.records += 1;
        let n = if key.starts_with(keys::SECRET_VALUE) {
            &mut self.secret_versions
        } else if key.starts_with(keys::SECRET) {
            &mut self.secrets
        } else if key.starts_with(keys::SERVICE) {
            &mut self.services
        } else if key.starts_with(keys::TASK) {
            &mut self.tasks
        } else if key.starts_with(keys::NODE) {
            &mut self.nodes
        } else if key.starts_with(keys::API_TOKEN) {
            &mut self.api_tokens
        } else if key.starts_with(keys::ADMIN) {
            &mut self.admin_credentials
        } else {
            return;
        };
        *n += 1;
    }
}

/// What an export (and the backup file made of it) is: shown by `snapshot inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    pub cluster_id: String,
    /// The last log entry applied to the exported state.
    pub last_applied: Option<LogId<NodeId>>,
    pub created_at_ms: u64,
    pub counts: StateCounts,
}

/// How the file key is derived from the operator's key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kdf {
    /// The key file holds the 256-bit key itself.
    Raw,
    /// The key file holds a passphrase, stretched with Argon2id.
    Argon2id { salt: [u8; 16], m_kib: u32, t: u32, p: u32 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Header {
    info: BackupInfo,
    kdf: Kdf,
}

/// The operator's backup key, as read from a key file: a raw key or a passphrase. Never
/// printed; wiped on drop.
pub struct BackupKey {
    secret: Zeroizing<Vec<u8>>,
    raw: bool,
}

impl std::fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupKey").field("raw", &self.raw).finish_non_exhaustive()
    }
}

impl BackupKey {
    /// `coffer snapshot keygen`: writes a new random key to `path` (mode 0600; an existing
    /// file is never overwritten).
    ///
    /// # Errors
    /// When `path` exists or cannot be written.
    pub fn generate_file(path: &Path) -> Result<(), BackupError> {
        let key = KeyBytes::generate();
        let text = Zeroizing::new(format!("{KEY_PREFIX}{}\n", hex(key.expose())));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io("create key file", path))?;
        f.write_all(text.as_bytes()).map_err(io("write key file", path))?;
        f.sync_all().map_err(io("sync key file", path))
    }

    /// Reads a key file: a key made by `keygen`, or a passphrase of at least 12 bytes (one
    /// trailing newline is not part of it). Refuses a file that other users can read.
    ///
    /// # Errors
    /// [`BackupError::KeyFile`] for a missing, unprotected, malformed or short key file.
    pub fn load(path: &Path) -> Result<Self, BackupError> {
        let bad = |reason: String| BackupError::KeyFile { path: path.to_path_buf(), reason };
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(bad(format!(
                "mode {:o} lets other users read it; chmod 600 it",
                meta.permissions().mode() & 0o777
            )));
        }
        let text = Zeroizing::new(std::fs::read(path).map_err(|e| bad(e.to_string()))?);
        let body = text.strip_suffix(b"\n").unwrap_or(&text);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if let Some(hex_key) = body.strip_prefix(KEY_PREFIX.as_bytes()) {
            let key = unhex(hex_key)
                .filter(|k| k.len() == 32)
                .ok_or_else(|| bad("starts like a generated key but is not 64 hex digits; was it edited?".into()))?;
            return Ok(Self { secret: key, raw: true });
        }
        if body.iter().filter(|b| !b.is_ascii_whitespace()).count() < MIN_PASSPHRASE {
            return Err(bad(format!(
                "a passphrase must have at least {MIN_PASSPHRASE} characters other than spaces (or make a key with \
                 `coffer snapshot keygen`)"
            )));
        }
        Ok(Self { secret: Zeroizing::new(body.to_vec()), raw: false })
    }

    /// A generated key's 32 bytes (as `keygen` writes them), for tests and fuzzing.
    pub fn from_raw(key: &[u8; 32]) -> Self {
        Self { secret: Zeroizing::new(key.to_vec()), raw: true }
    }

    /// A passphrase, for tests and benchmarks.
    pub fn from_passphrase(passphrase: &str) -> Self {
        Self { secret: Zeroizing::new(passphrase.as_bytes().to_vec()), raw: false }
    }

    fn new_kdf(&self) -> Kdf {
        if self.raw {
            return Kdf::Raw;
        }
        let mut salt = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        Kdf::Argon2id { salt, m_kib: ARGON_M_KIB, t: ARGON_T, p: ARGON_P }
    }

    fn derive(&self, kdf: &Kdf, path: &Path) -> Result<KeyBytes, BackupError> {
        match (kdf, self.raw) {
            (Kdf::Raw, true) => KeyBytes::from_slice(&self.secret).ok_or(BackupError::WrongKey { path: path.into() }),
            (Kdf::Argon2id { salt, m_kib, t, p }, false) => {
                // Parameters come from the file: bound them, so a crafted header cannot make
                // us allocate gigabytes or spin for hours.
                if *m_kib > 4 * ARGON_M_KIB || *t > 4 * ARGON_T || *p > 4 {
                    return Err(BackupError::Corrupt {
                        path: path.into(),
                        reason: format!("Argon2id parameters out of range (m={m_kib} KiB, t={t}, p={p})"),
                    });
                }
                let params = argon2::Params::new(*m_kib, *t, *p, Some(32)).map_err(|e| BackupError::Corrupt {
                    path: path.into(),
                    reason: format!("Argon2id parameters: {e}"),
                })?;
                let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
                let mut out = Zeroizing::new([0u8; 32]);
                argon
                    .hash_password_into(&self.secret, salt, out.as_mut())
                    .map_err(|e| BackupError::Corrupt { path: path.into(), reason: format!("Argon2id: {e}") })?;
                Ok(KeyBytes::from_bytes(*out))
            }
            // A passphrase for a keyed file, or a key for a passphrase file.
            _ => Err(BackupError::WrongKey { path: path.into() }),
        }
    }
}

fn located(kind: &str, header_digest: &[u8; 32], index: Option<u64>) -> Aad {
    let mut loc = header_digest.to_vec();
    if let Some(i) = index {
        loc.extend_from_slice(&i.to_be_bytes());
    }
    Aad::new(kind, &loc)
}

/// A writer that hashes everything written through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Hashing<W> {
    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.hash.update(b);
        self.inner.write_all(b)
    }
}

/// Writes a backup file from an export: [`BackupWriter::chunk`] for each chunk, then
/// [`BackupWriter::finish`]. The caller owns the destination (a temporary file, synced and
/// renamed into place once finished).
pub struct BackupWriter<W: Write> {
    out: Hashing<W>,
    sealer: Sealer,
    header_digest: [u8; 32],
    index: u64,
    records: u64,
    frame: Vec<u8>,
    path: PathBuf,
}

impl<W: Write> std::fmt::Debug for BackupWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupWriter").field("path", &self.path).field("chunks", &self.index).finish()
    }
}

impl<W: Write> BackupWriter<W> {
    /// Starts a backup of `info` sealed under `key`; `path` names the destination in errors.
    ///
    /// # Errors
    /// When the destination cannot be written.
    pub fn new(out: W, key: &BackupKey, info: &BackupInfo, path: &Path) -> Result<Self, BackupError> {
        let kdf = key.new_kdf();
        let file_key = key.derive(&kdf, path)?;
        let header = codec::encode(&Header { info: info.clone(), kdf })
            .map_err(|e| BackupError::Corrupt { path: path.into(), reason: format!("encode header: {e}") })?;
        let header_digest: [u8; 32] = Sha256::digest(&header).into();
        let mut w = Self {
            out: Hashing { inner: out, hash: Sha256::new() },
            sealer: Sealer::new(&file_key),
            header_digest,
            index: 0,
            records: 0,
            frame: Vec::new(),
            path: path.to_path_buf(),
        };
        let len = u32::try_from(header.len()).unwrap_or(u32::MAX);
        let mut pre = MAGIC.to_vec();
        pre.extend_from_slice(&BACKUP_FORMAT.to_be_bytes());
        pre.extend_from_slice(&len.to_be_bytes());
        w.put(&pre)?;
        w.put(&header)?;
        let aad = located("backup-check", &header_digest, None);
        w.frame(&aad, KEY_CHECK)?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> Result<(), BackupError> {
        self.out.put(b).map_err(io("write backup", &self.path))
    }

    fn frame(&mut self, aad: &Aad, plain: &[u8]) -> Result<(), BackupError> {
        let mut frame = std::mem::take(&mut self.frame);
        frame.clear();
        self.sealer
            .seal_into(aad, plain, &mut frame)
            .map_err(|e| BackupError::Corrupt { path: self.path.clone(), reason: format!("seal: {e}") })?;
        let len = u32::try_from(frame.len())
            .map_err(|_| BackupError::Corrupt { path: self.path.clone(), reason: "chunk too large".into() })?;
        self.put(&len.to_be_bytes())?;
        self.put(&frame)?;
        self.frame = frame;
        Ok(())
    }

    /// Seals one plaintext chunk of records, after checking that it splits into records.
    ///
    /// # Errors
    /// A malformed chunk, or a failed write.
    pub fn chunk(&mut self, plain: &[u8]) -> Result<(), BackupError> {
        let mut n = 0;
        for rec in records(plain) {
            rec.map_err(|reason| BackupError::Stream(format!("chunk {}: {reason}", self.index)))?;
            n += 1;
        }
        let aad = located("backup-chunk", &self.header_digest, Some(self.index));
        self.frame(&aad, plain)?;
        self.index += 1;
        self.records += n;
        Ok(())
    }

    /// The trailer and the digest; returns the destination (to sync and rename) and the
    /// counts of chunks and records written.
    ///
    /// # Errors
    /// A failed write.
    pub fn finish(mut self) -> Result<(W, u64, u64), BackupError> {
        let trailer = codec::encode(&(self.index, self.records))
            .map_err(|e| BackupError::Corrupt { path: self.path.clone(), reason: format!("encode trailer: {e}") })?;
        let aad = located("backup-trailer", &self.header_digest, Some(self.index));
        self.frame(&aad, &trailer)?;
        let digest = self.out.hash.clone().finalize();
        self.out.inner.write_all(&digest).map_err(io("write backup", &self.path))?;
        self.out.inner.flush().map_err(io("write backup", &self.path))?;
        Ok((self.out.inner, self.index, self.records))
    }
}

/// A backup file whose structure and digest have been checked (no key needed).
#[derive(Debug)]
pub struct BackupFile {
    path: PathBuf,
    header: Header,
    header_digest: [u8; 32],
    body: u64,
    end: u64,
}

impl BackupFile {
    /// Opens `path`, reads its header and checks the digest over the whole file: a
    /// truncated or altered file is refused here, before any key is tried.
    ///
    /// # Errors
    /// [`BackupError::NotABackup`], [`BackupError::NewerFormat`], [`BackupError::Corrupt`].
    pub fn open(path: &Path) -> Result<Self, BackupError> {
        let corrupt = |reason: String| BackupError::Corrupt { path: path.to_path_buf(), reason };
        let mut f = File::open(path).map_err(io("open backup", path))?;
        let len = f.metadata().map_err(io("read backup", path))?.len();
        let mut pre = [0u8; 16];
        f.read_exact(&mut pre).map_err(|_| corrupt("shorter than its preamble".into()))?;
        if &pre[..8] != MAGIC {
            return Err(BackupError::NotABackup { path: path.into() });
        }
        let format = u32::from_be_bytes([pre[8], pre[9], pre[10], pre[11]]);
        if format != BACKUP_FORMAT {
            return Err(BackupError::NewerFormat { path: path.into(), found: format });
        }
        let hlen = u32::from_be_bytes([pre[12], pre[13], pre[14], pre[15]]) as usize;
        if hlen > MAX_HEADER {
            return Err(corrupt(format!("a header of {hlen} bytes")));
        }
        let mut header_bytes = vec![0u8; hlen];
        f.read_exact(&mut header_bytes).map_err(|_| corrupt("truncated in its header".into()))?;
        let body = 16 + hlen as u64;
        if len < body + DIGEST_LEN {
            return Err(corrupt("truncated: no digest".into()));
        }
        let end = len - DIGEST_LEN;
        // The digest over everything before it.
        f.seek(SeekFrom::Start(0)).map_err(io("read backup", path))?;
        let mut hash = Sha256::new();
        let mut rest = (&mut f).take(end);
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = rest.read(&mut buf).map_err(io("read backup", path))?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
        }
        let mut stored = [0u8; 32];
        f.read_exact(&mut stored).map_err(io("read backup", path))?;
        if hash.finalize().as_slice() != stored {
            return Err(corrupt("its digest does not match: truncated, extended or altered".into()));
        }
        let header: Header = codec::decode(&header_bytes).map_err(|e| corrupt(format!("unreadable header: {e}")))?;
        let header_digest: [u8; 32] = Sha256::digest(&header_bytes).into();
        Ok(Self { path: path.to_path_buf(), header, header_digest, body, end })
    }

    pub fn info(&self) -> &BackupInfo {
        &self.header.info
    }

    /// Whether the file is sealed under a passphrase (else a generated key).
    pub fn passphrase(&self) -> bool {
        matches!(self.header.kdf, Kdf::Argon2id { .. })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Derives the file key from `key` and checks it against the file.
    ///
    /// # Errors
    /// [`BackupError::WrongKey`] when `key` is not this file's key.
    pub fn unlock(&self, key: &BackupKey) -> Result<UnlockedBackup<'_>, BackupError> {
        let sealer = Sealer::new(&key.derive(&self.header.kdf, &self.path)?);
        let mut r = self.reader()?;
        let check = r
            .frame()?
            .ok_or_else(|| BackupError::Corrupt { path: self.path.clone(), reason: "no key check frame".into() })?;
        let plain = sealer
            .open(&located("backup-check", &self.header_digest, None), &check)
            .map_err(|_| BackupError::WrongKey { path: self.path.clone() })?;
        if plain.as_slice() != KEY_CHECK {
            return Err(BackupError::WrongKey { path: self.path.clone() });
        }
        Ok(UnlockedBackup { file: self, sealer, first_chunk: r.offset })
    }

    fn reader(&self) -> Result<FrameReader, BackupError> {
        let mut f = File::open(&self.path).map_err(io("open backup", &self.path))?;
        f.seek(SeekFrom::Start(self.body)).map_err(io("read backup", &self.path))?;
        Ok(FrameReader {
            r: BufReader::with_capacity(256 << 10, f),
            offset: self.body,
            end: self.end,
            path: self.path.clone(),
        })
    }
}

struct FrameReader {
    r: BufReader<File>,
    offset: u64,
    end: u64,
    path: PathBuf,
}

impl FrameReader {
    /// The next frame; `None` at the digest.
    fn frame(&mut self) -> Result<Option<Vec<u8>>, BackupError> {
        if self.offset == self.end {
            return Ok(None);
        }
        let corrupt = |reason: String| BackupError::Corrupt { path: self.path.clone(), reason };
        if self.end - self.offset < 4 {
            return Err(corrupt(format!("a frame length cut short at offset {}", self.offset)));
        }
        let mut len = [0u8; 4];
        self.r.read_exact(&mut len).map_err(io("read backup", &self.path))?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME || self.offset + 4 + len as u64 > self.end {
            return Err(corrupt(format!("a frame of {len} bytes at offset {} runs past the end", self.offset)));
        }
        let mut buf = vec![0u8; len];
        self.r.read_exact(&mut buf).map_err(io("read backup", &self.path))?;
        self.offset += 4 + len as u64;
        Ok(Some(buf))
    }
}

/// A backup whose key has been checked: its chunks can be read.
#[derive(Debug)]
pub struct UnlockedBackup<'a> {
    file: &'a BackupFile,
    sealer: Sealer,
    first_chunk: u64,
}

impl UnlockedBackup<'_> {
    pub fn info(&self) -> &BackupInfo {
        self.file.info()
    }

    /// Reads every chunk, calling `each` with its plaintext, and checks the trailer: an
    /// error for any frame that does not open at its place or a count that does not match.
    ///
    /// # Errors
    /// [`BackupError::Altered`], [`BackupError::Corrupt`], or the error `each` returns.
    pub fn for_each_chunk<E: From<BackupError>>(
        &self,
        mut each: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(u64, u64), E> {
        let f = self.file;
        let mut r = f.reader()?;
        r.frame()?; // the key check, already verified
        debug_assert_eq!(r.offset, self.first_chunk);
        let (mut index, mut count) = (0u64, 0u64);
        loop {
            let frame = r.frame()?.ok_or_else(|| BackupError::Corrupt {
                path: f.path.clone(),
                reason: format!("truncated after {index} chunks: the trailer is missing"),
            })?;
            if let Ok(plain) = self.sealer.open(&located("backup-chunk", &f.header_digest, Some(index)), &frame) {
                for rec in records(&plain) {
                    rec.map_err(|reason| BackupError::Corrupt { path: f.path.clone(), reason })?;
                    count += 1;
                }
                each(&plain)?;
                index += 1;
                continue;
            }
            let trailer = self
                .sealer
                .open(&located("backup-trailer", &f.header_digest, Some(index)), &frame)
                .map_err(|_| BackupError::Altered { path: f.path.clone(), frame: index + 1 })?;
            let (chunks, recs): (u64, u64) = codec::decode(&trailer)
                .map_err(|e| BackupError::Corrupt { path: f.path.clone(), reason: format!("trailer: {e}") })?;
            if chunks != index || recs != count || recs != f.info().counts.records {
                return Err(BackupError::Corrupt {
                    path: f.path.clone(),
                    reason: format!(
                        "the trailer counts {chunks} chunks and {recs} records, the header {} records, the file has {index} and {count}",
                        f.info().counts.records
                    ),
                }
                .into());
            }
            if r.frame()?.is_some() {
                return Err(
                    BackupError::Corrupt { path: f.path.clone(), reason: "data after the trailer".into() }.into()
                );
            }
            return Ok((index, count));
        }
    }

    /// Reads and authenticates the whole file without using it.
    ///
    /// # Errors
    /// As [`Self::for_each_chunk`].
    pub fn verify(&self) -> Result<(u64, u64), BackupError> {
        self.for_each_chunk(|_| Ok::<(), BackupError>(()))
    }
}

/// The stream a manager sends to `coffer snapshot save`: tagged frames,
/// `tag u8 | len u32 | body`. `Info` first, then `Chunk`s, then `End` with the counts; an
/// `Error` frame (a message) replaces what is left when the export fails mid-way. A stream
/// that stops before `End` is incomplete, whatever it carried.
pub mod stream {
    use super::{codec, BackupError, BackupInfo};

    const INFO: u8 = 1;
    const CHUNK: u8 = 2;
    const END: u8 = 3;
    const ERROR: u8 = 4;
    const MAX_BODY: usize = 64 << 20;

    /// One frame of the stream.
    #[derive(Debug)]
    pub enum Frame {
        Info(BackupInfo),
        Chunk(zeroize::Zeroizing<Vec<u8>>),
        End { chunks: u64, records: u64 },
        Error(String),
    }

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + body.len());
        out.push(tag);
        out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    pub fn info(info: &BackupInfo) -> Vec<u8> {
        frame(INFO, &codec::encode(info).unwrap_or_default())
    }

    /// A chunk frame. Its bytes hold plaintext records: wiped when dropped.
    pub fn chunk(plain: &[u8]) -> zeroize::Zeroizing<Vec<u8>> {
        zeroize::Zeroizing::new(frame(CHUNK, plain))
    }

    pub fn end(chunks: u64, records: u64) -> Vec<u8> {
        frame(END, &codec::encode(&(chunks, records)).unwrap_or_default())
    }

    pub fn error(message: &str) -> Vec<u8> {
        frame(ERROR, message.as_bytes())
    }

    /// Splits received bytes into frames.
    #[derive(Default)]
    pub struct Decoder {
        buf: zeroize::Zeroizing<Vec<u8>>,
    }

    impl std::fmt::Debug for Decoder {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Decoder").field("buffered", &self.buf.len()).finish()
        }
    }

    impl Decoder {
        pub fn push(&mut self, bytes: &[u8]) {
            self.buf.extend_from_slice(bytes);
        }

        /// The next complete frame, if one is buffered.
        ///
        /// # Errors
        /// An unknown tag, an oversized or undecodable frame.
        pub fn next_frame(&mut self) -> Result<Option<Frame>, BackupError> {
            if self.buf.len() < 5 {
                return Ok(None);
            }
            let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
            if len > MAX_BODY {
                return Err(BackupError::Stream(format!("a frame of {len} bytes")));
            }
            if self.buf.len() < 5 + len {
                return Ok(None);
            }
            let tag = self.buf[0];
            let body = zeroize::Zeroizing::new(self.buf[5..5 + len].to_vec());
            self.buf.drain(..5 + len);
            let bad = |e: codec::CodecError| BackupError::Stream(format!("undecodable frame: {e}"));
            Ok(Some(match tag {
                INFO => Frame::Info(codec::decode(&body).map_err(bad)?),
                CHUNK => Frame::Chunk(body),
                END => {
                    let (chunks, records) = codec::decode(&body).map_err(bad)?;
                    Frame::End { chunks, records }
                }
                ERROR => Frame::Error(String::from_utf8_lossy(&body).into_owned()),
                t => return Err(BackupError::Stream(format!("unknown frame tag {t}"))),
            }))
        }

        /// Whether bytes of an unfinished frame are buffered.
        pub fn has_partial(&self) -> bool {
            !self.buf.is_empty()
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if s.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Zeroizing::new(Vec::with_capacity(s.len() / 2));
    for pair in s.chunks(2) {
        out.push(digit(pair[0])? << 4 | digit(pair[1])?);
    }
    Some(out)
}
