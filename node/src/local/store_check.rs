//! `coffer store check`: opens every sealed record of a stopped manager's store and
//! reports what it checked, or the first record that fails and why.
//!
//! Like `etcdutl check`, it is for an operator who suspects the disk, a restore, or a
//! copied data dir. It never prints a value.

use coffer_raft_store::{StoreOptions, VerifyReport};

use crate::local::data_dir::DataDir;
use crate::local::key_file;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Key(#[from] key_file::KeyFileError),
    #[error(transparent)]
    Store(#[from] coffer_raft_store::StoreError),
}

/// Checks the store of the manager whose data dir is `dir`.
///
/// # Errors
/// The key file cannot be read, or the store fails to open or verify (named in the error).
pub fn check(dir: &DataDir) -> Result<VerifyReport, CheckError> {
    let kek = key_file::load(&dir.key_file())?;
    let store = coffer_raft_store::open(&dir.store(), &kek, StoreOptions::default())?;
    Ok(store.reader.verify_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_a_store_and_names_a_missing_key() {
        let tmp = tempfile::TempDir::new().expect("tempdir");
        let dir = DataDir::new(tmp.path());
        assert!(matches!(check(&dir), Err(CheckError::Key(_))));
        let kek = key_file::create(&dir.key_file()).expect("key file");
        drop(coffer_raft_store::open(&dir.store(), &kek, StoreOptions::default()).expect("create store"));
        assert_eq!(check(&dir).expect("check").log_entries, 0);
    }
}
