//! The key-encryption key of a manager without autolock: 32 random bytes in
//! `<data-dir>/kek`, readable by its owner only.
//!
//! This is the same trade-off Swarm makes without autolock: a manager must restart
//! unattended, so the root of its at-rest encryption sits beside the data it protects,
//! guarded by file permissions. Autolock replaces this file with a key derived from an
//! unlock key that is never stored (a later issue); the store does not change, since it
//! only sees a [`KeyEncryptionKey`](coffer_raft_store::seal::KeyEncryptionKey).

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use coffer_raft_store::seal::{KeyBytes, LocalKek, KEY_LEN};
use zeroize::Zeroizing;

/// The `kind` recorded in the store for keys from a key file.
pub const KIND: &str = "key-file";

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("key file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("key file {path} is {len} bytes; a key file holds exactly {KEY_LEN}")]
    Length { path: String, len: usize },
    #[error("key file {path} is readable by group or others (mode {mode:o}); run: chmod 600 {path}")]
    Permissions { path: String, mode: u32 },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io { path: path.display().to_string(), source }
}

/// Creates a new key file (refusing to overwrite one) and returns its KEK.
///
/// # Errors
/// When the file exists or cannot be written and synced.
pub fn create(path: &Path) -> Result<LocalKek, KeyFileError> {
    let key = KeyBytes::generate();
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io(path))?;
    f.write_all(key.expose()).map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    Ok(LocalKek::new(&key, KIND))
}

/// Loads the KEK of an existing key file.
///
/// # Errors
/// When the file is missing, of the wrong length, or readable by anyone but its owner.
pub fn load(path: &Path) -> Result<LocalKek, KeyFileError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mode = f.metadata().map_err(io(path))?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions { path: path.display().to_string(), mode });
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(KEY_LEN));
    f.read_to_end(&mut buf).map_err(io(path))?;
    let key = KeyBytes::from_slice(&buf)
        .ok_or_else(|| KeyFileError::Length { path: path.display().to_string(), len: buf.len() })?;
    Ok(LocalKek::new(&key, KIND))
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_raft_store::seal::KeyEncryptionKey;

    #[test]
    fn create_then_load_gives_the_same_key() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let path = dir.path().join("kek");
        let kek = create(&path).expect("create");
        let wrapped = kek.wrap(&KeyBytes::generate()).expect("wrap");
        assert!(load(&path).expect("load").unwrap(&wrapped).is_ok());
        assert!(create(&path).is_err(), "an existing key file must never be overwritten");
        assert_eq!(std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn loose_permissions_and_bad_lengths_are_refused() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let path = dir.path().join("kek");
        create(&path).expect("create");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(load(&path), Err(KeyFileError::Permissions { mode: 0o644, .. })));
        let short = dir.path().join("short");
        std::fs::write(&short, [1u8; 7]).expect("write");
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(matches!(load(&short), Err(KeyFileError::Length { len: 7, .. })));
        assert!(matches!(load(&dir.path().join("missing")), Err(KeyFileError::Io { .. })));
    }
}
