//! Secret values under the cluster's value key: sealed by the manager that takes the
//! request, before the command is proposed, so the Raft log, every snapshot and every
//! follower's store hold only ciphertext (then sealed again at rest with each manager's
//! own data key). Opened only to answer a redeemed grant.
//!
//! The associated data binds a value to its secret id, so a value cannot be moved to
//! another secret.

use coffer_raft_store::model::{ClusterRecord, SealedBytes};
use coffer_raft_store::seal::{Aad, KeyBytes, Sealer};
use zeroize::Zeroizing;

use crate::api_error::ApiError;

pub struct ValueSealer(Sealer);

impl std::fmt::Debug for ValueSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ValueSealer([redacted])")
    }
}

impl ValueSealer {
    pub fn for_cluster(cluster: &ClusterRecord) -> Result<Self, ApiError> {
        let key = KeyBytes::from_slice(&cluster.value_key.0)
            .ok_or_else(|| ApiError::internal("loading the cluster value key", "wrong length"))?;
        Ok(Self(Sealer::new(&key)))
    }

    fn aad(secret_id: &str) -> Aad {
        Aad::new("secret-value", secret_id.as_bytes())
    }

    pub fn seal(&self, secret_id: &str, value: &[u8]) -> Result<SealedBytes, ApiError> {
        self.0.seal(&Self::aad(secret_id), value).map(SealedBytes).map_err(|e| ApiError::internal("sealing a value", e))
    }

    pub fn open(&self, secret_id: &str, sealed: &SealedBytes) -> Result<Zeroizing<Vec<u8>>, ApiError> {
        self.0.open(&Self::aad(secret_id), &sealed.0).map_err(|e| ApiError::internal("opening a value", e))
    }
}
