//! Read access to the applied state, for the API handlers, the scheduler and the grant
//! checks in `node`.
//!
//! Reads see what this manager has applied, nothing more: a caller that needs a current
//! view first makes sure the manager has applied up to a linearizable read index.
//! Nothing here returns a secret value but [`StateReader::secret_value`], which exists for
//! grant redemption alone.

use std::sync::Arc;

use openraft::{LogId, StoredMembership};
use rocksdb::{Direction, IteratorMode};
use serde::de::DeserializeOwned;

use crate::db::{decode_at, Db};
use crate::error::StoreError;
use crate::keys;
use crate::layout::{CF_SM, CF_SM_META};
use crate::model::*;
use crate::{ManagerNode, NodeId};

/// A cheap, cloneable handle for reading the applied state.
#[derive(Debug, Clone)]
pub struct StateReader {
    db: Arc<Db>,
}

impl StateReader {
    pub(crate) fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        self.db.get_sealed(CF_SM, key)
    }

    fn scan<T: DeserializeOwned>(&self, prefix: &[u8]) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.prefix_iter(CF_SM, prefix)? {
            let (key, sealed) = item.map_err(StoreError::db("scan state"))?;
            if !key.starts_with(prefix) {
                break;
            }
            let plain = self.db.open_at(CF_SM, &key, &sealed)?;
            out.push(decode_at(CF_SM, &key, &plain)?);
        }
        Ok(out)
    }

    /// The last log id applied to the state machine.
    pub fn last_applied(&self) -> Result<Option<LogId<NodeId>>, StoreError> {
        Ok(self.db.get_sealed::<Option<LogId<NodeId>>>(CF_SM_META, b"last_applied")?.flatten())
    }

    /// The last log id this manager knows to be committed (as last saved by openraft).
    pub fn committed(&self) -> Result<Option<LogId<NodeId>>, StoreError> {
        Ok(self.db.get_sealed::<Option<LogId<NodeId>>>(crate::layout::CF_RAFT, b"committed")?.flatten())
    }

    pub fn membership(&self) -> Result<StoredMembership<NodeId, ManagerNode>, StoreError> {
        Ok(self.db.get_sealed(CF_SM_META, b"membership")?.unwrap_or_default())
    }

    pub fn cluster(&self) -> Result<Option<ClusterRecord>, StoreError> {
        self.get(keys::CLUSTER)
    }

    pub fn node(&self, id: NodeId) -> Result<Option<NodeRecord>, StoreError> {
        self.get(&keys::node(id))
    }

    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.scan(keys::NODE)
    }

    pub fn secret(&self, id: &str) -> Result<Option<SecretRecord>, StoreError> {
        self.get(&keys::secret(id))
    }

    pub fn secret_by_name(&self, name: &str) -> Result<Option<SecretRecord>, StoreError> {
        match self.get::<String>(&keys::secret_name(name))? {
            Some(id) => self.secret(&id),
            None => Ok(None),
        }
    }

    pub fn secrets(&self) -> Result<Vec<SecretRecord>, StoreError> {
        self.scan(keys::SECRET)
    }

    /// The sealed value of one version of a secret. For grant redemption only.
    pub fn secret_value(&self, id: &str, version: u32) -> Result<Option<SealedBytes>, StoreError> {
        self.get(&keys::secret_value(id, version))
    }

    pub fn service(&self, id: &str) -> Result<Option<ServiceRecord>, StoreError> {
        self.get(&keys::service(id))
    }

    /// What service `id` runs (image, command, environment, a Docker spec), if it was
    /// created or last updated with one.
    pub fn service_runtime(&self, id: &str) -> Result<Option<ServiceRuntime>, StoreError> {
        self.get(&keys::service_runtime(id))
    }

    /// Coffer's runtime options of service `id`, if it was created or last updated with them.
    pub fn service_options(&self, id: &str) -> Result<Option<RuntimeOptions>, StoreError> {
        self.get(&keys::service_options(id))
    }

    /// What the worker of task `id` last reported of it, if it has since it was placed.
    pub fn task_status(&self, id: &str) -> Result<Option<TaskStatusRecord>, StoreError> {
        self.get(&keys::task_status(id))
    }

    /// Watches the changes this manager applies, after `since` or from now.
    ///
    /// # Errors
    /// [`crate::events::Gone`] when a change after `since` is no longer known here.
    pub fn watch_changes(&self, since: Option<u64>) -> Result<crate::events::Subscription, crate::events::Gone> {
        self.db.events.subscribe(since)
    }

    /// About how many records the applied state holds (RocksDB's estimate; cheap).
    pub fn estimated_records(&self) -> u64 {
        self.db
            .cf(CF_SM)
            .ok()
            .and_then(|cf| self.db.db.property_int_value_cf(cf, "rocksdb.estimate-num-keys").ok().flatten())
            .unwrap_or(0)
    }

    /// Watches from the oldest change this manager still keeps.
    pub fn watch_kept_changes(&self) -> crate::events::Subscription {
        self.db.events.subscribe_kept()
    }

    pub fn service_by_name(&self, name: &str) -> Result<Option<ServiceRecord>, StoreError> {
        match self.get::<String>(&keys::service_name(name))? {
            Some(id) => self.service(&id),
            None => Ok(None),
        }
    }

    pub fn services(&self) -> Result<Vec<ServiceRecord>, StoreError> {
        self.scan(keys::SERVICE)
    }

    pub fn task(&self, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        self.get(&keys::task(id))
    }

    pub fn tasks(&self) -> Result<Vec<TaskRecord>, StoreError> {
        self.scan(keys::TASK)
    }

    pub fn api_token(&self, id: &str) -> Result<Option<ApiTokenRecord>, StoreError> {
        self.get(&keys::api_token(id))
    }

    pub fn api_tokens(&self) -> Result<Vec<ApiTokenRecord>, StoreError> {
        self.scan(keys::API_TOKEN)
    }

    /// The certificate `node` had before its last renewal, while it is still accepted.
    /// The unlock key generation each manager last recorded its store to be sealed under.
    pub fn unlock_generations(&self) -> Result<std::collections::BTreeMap<NodeId, u64>, StoreError> {
        Ok(self.scan::<(NodeId, u64)>(keys::UNLOCK_GEN)?.into_iter().collect())
    }

    /// Re-wraps the store's data key under `new_kek` while the store runs (autolock turned
    /// on or off, unlock key rotated).
    ///
    /// # Errors
    /// [`StoreError::WrongKey`] when `old_kek` does not open the current wrapping.
    pub fn rewrap_data_key(
        &self,
        old_kek: &dyn crate::seal::KeyEncryptionKey,
        new_kek: &dyn crate::seal::KeyEncryptionKey,
    ) -> Result<(), StoreError> {
        self.db.rewrap_data_key(old_kek, new_kek)
    }

    pub fn retiring_cert(&self, node: NodeId) -> Result<Option<RetiringCert>, StoreError> {
        self.get(&keys::retiring_cert(node))
    }

    pub fn admin_credential(&self, name: &str) -> Result<Option<AdminCredentialRecord>, StoreError> {
        self.get(&keys::admin(name))
    }

    pub fn admin_credentials(&self) -> Result<Vec<AdminCredentialRecord>, StoreError> {
        self.scan(keys::ADMIN)
    }

    /// The tasks placed on `node`, through the per-node index (not a scan of all tasks).
    pub fn tasks_of_node(&self, node: NodeId) -> Result<Vec<TaskRecord>, StoreError> {
        let prefix = keys::node_tasks(node);
        let mut out = Vec::new();
        for item in self.db.prefix_iter(CF_SM, &prefix)? {
            let (key, _) = item.map_err(StoreError::db("scan node tasks"))?;
            if !key.starts_with(&prefix) {
                break;
            }
            let id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            if let Some(t) = self.task(&id)? {
                if t.node_id == Some(node) {
                    out.push(t);
                }
            }
        }
        Ok(out)
    }

    /// Changes whenever applied state that places tasks changes (see
    /// [`Command::affects_placement`]).
    pub fn watch_placement(&self) -> tokio::sync::watch::Receiver<u64> {
        self.db.placement.subscribe()
    }

    pub fn grant_authority(&self, term: u64) -> Result<Option<GrantAuthority>, StoreError> {
        self.get(&keys::authority(term))
    }

    /// The authority of the newest term that has one.
    pub fn latest_grant_authority(&self) -> Result<Option<GrantAuthority>, StoreError> {
        let cf = self.db.cf(CF_SM)?;
        let end = keys::prefix_end(keys::AUTHORITY);
        let mut it = self.db.db.iterator_cf(cf, IteratorMode::From(&end, Direction::Reverse));
        match it.next() {
            Some(item) => {
                let (key, sealed) = item.map_err(StoreError::db("read grant authority"))?;
                if !key.starts_with(keys::AUTHORITY) {
                    return Ok(None);
                }
                let plain = self.db.open_at(CF_SM, &key, &sealed)?;
                decode_at(CF_SM, &key, &plain).map(Some)
            }
            None => Ok(None),
        }
    }

    /// Opens every sealed record in the store (log, Raft metadata, state machine) and
    /// checks its format (log entries are decoded whole): the `coffer store check` of an operator who suspects the disk.
    ///
    /// # Errors
    /// The first record that fails, named.
    pub fn verify_all(&self) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        for cf_name in [crate::layout::CF_LOG, crate::layout::CF_RAFT, CF_SM_META, CF_SM] {
            let cf = self.db.cf(cf_name)?;
            for item in self.db.db.iterator_cf_opt(cf, crate::db::bulk_read(), IteratorMode::Start) {
                let (key, sealed) = item.map_err(StoreError::db(format!("iterate {cf_name}")))?;
                let plain = self.db.open_at(cf_name, &key, &sealed)?;
                let what = || crate::db::describe(cf_name, &key);
                if cf_name == crate::layout::CF_LOG {
                    decode_at::<openraft::Entry<crate::TypeConfig>>(cf_name, &key, &plain)?;
                } else {
                    crate::codec::check_version(&plain)
                        .map_err(|source| StoreError::Decode { what: what(), source })?;
                }
                match cf_name {
                    crate::layout::CF_LOG => report.log_entries += 1,
                    CF_SM => report.state_records += 1,
                    _ => report.metadata_records += 1,
                }
            }
        }
        Ok(report)
    }
}

/// What [`StateReader::verify_all`] checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub log_entries: u64,
    pub metadata_records: u64,
    pub state_records: u64,
}
