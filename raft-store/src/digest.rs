//! A digest of the applied state, to tell whether managers agree: SHA-256 over every
//! state-machine record (key and plaintext, in key order) from one consistent view, with the
//! last applied log index of that view. Two managers at the same applied index must have the
//! same digest; the fault harness checks it after every run.

use openraft::LogId;
use rocksdb::IteratorMode;
use sha2::{Digest, Sha256};

use crate::db::decode_at;
use crate::error::StoreError;
use crate::layout::{CF_SM, CF_SM_META};
use crate::state_machine::LAST_APPLIED;
use crate::{NodeId, StateReader};

/// The applied state's digest at one applied index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDigest {
    /// The index of the last applied entry (none before the first).
    pub applied_index: Option<u64>,
    /// SHA-256 over the records, each as (length, key, length, plaintext), in key order.
    pub sha256: [u8; 32],
    pub records: u64,
}

impl StateReader {
    /// The digest of the applied state, from one consistent view. Reads every record:
    /// blocking, and for checks rather than hot paths.
    ///
    /// # Errors
    /// A store error.
    pub fn digest(&self) -> Result<StateDigest, StoreError> {
        let db = self.db();
        let view = db.db.snapshot();
        let applied: Option<LogId<NodeId>> =
            match view.get_cf(db.cf(CF_SM_META)?, LAST_APPLIED).map_err(StoreError::db("read last applied"))? {
                Some(sealed) => decode_at(CF_SM_META, LAST_APPLIED, &db.open_at(CF_SM_META, LAST_APPLIED, &sealed)?)?,
                None => None,
            };
        let mut hash = Sha256::new();
        let mut records = 0;
        for item in view.iterator_cf_opt(db.cf(CF_SM)?, crate::db::bulk_read(), IteratorMode::Start) {
            let (key, sealed) = item.map_err(StoreError::db("iterate state for a digest"))?;
            let plain = db.open_at(CF_SM, &key, &sealed)?;
            for field in [&key[..], &plain[..]] {
                hash.update((field.len() as u64).to_be_bytes());
                hash.update(field);
            }
            records += 1;
        }
        Ok(StateDigest { applied_index: applied.map(|l| l.index), sha256: hash.finalize().into(), records })
    }
}
