//! Applying commands: a pure function of (state, command), evaluated against a
//! transaction over the `sm` column family.
//!
//! A [`Txn`] layers two overlays of encoded records over RocksDB: `staged` holds what
//! earlier commands of this `apply` call wrote, `pending` what the current command writes.
//! A command that is refused ([`ApplyError`]) drops `pending` and so changes nothing; the
//! whole call is written as one `WriteBatch` together with the last-applied log id.
//!
//! Must never: read the clock, randomness or anything but the state and the command.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::codec;
use crate::db::{decode_at, Db};
use crate::error::StoreError;
use crate::events::{ChangeAction, ChangeKind};
use crate::keys;
use crate::layout::CF_SM;
use crate::model::*;
use crate::NodeId;

type Overlay = BTreeMap<Vec<u8>, Option<Zeroizing<Vec<u8>>>>;

/// A change a command made, for watchers: kind, action, object id and, when the command
/// names it, the object's name.
pub(crate) type Changed = (ChangeKind, ChangeAction, String, Option<String>);

pub(crate) struct Txn<'a> {
    db: &'a Db,
    staged: Overlay,
    pending: Overlay,
    /// Changes of the current command (dropped with its writes if it is refused), and of
    /// the accepted commands not yet taken.
    pending_changes: Vec<Changed>,
    changes: Vec<Changed>,
}

impl<'a> Txn<'a> {
    pub(crate) fn new(db: &'a Db) -> Self {
        Self { db, staged: Overlay::new(), pending: Overlay::new(), pending_changes: Vec::new(), changes: Vec::new() }
    }

    fn changed(&mut self, kind: ChangeKind, action: ChangeAction, id: &str, name: Option<&str>) {
        self.pending_changes.push((kind, action, id.to_string(), name.map(str::to_string)));
    }

    /// The changes of the commands accepted since the last call.
    pub(crate) fn take_changes(&mut self) -> Vec<Changed> {
        std::mem::take(&mut self.changes)
    }

    /// What an accepted command changed, where the command alone says it.
    fn changes_of(&mut self, cmd: &Command) {
        use ChangeAction::*;
        use ChangeKind::*;
        match cmd {
            Command::CreateSecret { id, name, .. } => self.changed(Secret, Create, id, Some(name)),
            Command::RotateSecret { id, .. } | Command::SetSecretLabels { id, .. } => {
                self.changed(Secret, Update, id, None)
            }
            Command::RemoveSecret { id } => self.changed(Secret, Remove, id, None),
            Command::CreateService { id, name, .. }
            | Command::CreateServiceWithRuntime { id, name, .. }
            | Command::CreateServiceWithOptions { id, name, .. } => self.changed(Service, Create, id, Some(name)),
            Command::UpdateService { id, .. }
            | Command::UpdateServiceWithRuntime { id, .. }
            | Command::UpdateServiceWithOptions { id, .. } => self.changed(Service, Update, id, None),
            Command::RemoveService { id } => self.changed(Service, Remove, id, None),
            Command::RemoveTask { id } => self.changed(Task, Remove, id, None),
            Command::RemoveNode { id, .. } => self.changed(Node, Remove, &id.to_string(), None),
            Command::UpdateNode { id, .. } | Command::SetNodeSpec { id, .. } | Command::RenewNodeCert { id, .. } => {
                self.changed(Node, Update, &id.to_string(), None)
            }
            // PutNode and PutTask say whether they create (in `apply_inner`); the rest
            // (cluster settings, tokens, authorities, credentials) are not watched objects.
            _ => {}
        }
    }

    /// A node that exists and was not removed, or why not: a change to a removed node is
    /// refused, so that no decision made on an older read can bring it back.
    fn live_node(&self, id: NodeId) -> Result<Result<NodeRecord, ApplyError>, StoreError> {
        Ok(match self.get::<NodeRecord>(&keys::node(id))? {
            None => Err(ApplyError::NotFound { kind: ObjectKind::Node, id: id.to_string() }),
            Some(n) if n.removed => Err(ApplyError::NodeRemoved(id)),
            Some(n) => Ok(n),
        })
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        if let Some(v) = self.pending.get(key).or_else(|| self.staged.get(key)) {
            return v.as_ref().map(|bytes| decode_at(CF_SM, key, bytes)).transpose();
        }
        self.db.get_sealed(CF_SM, key)
    }

    fn put<T: Serialize>(&mut self, key: Vec<u8>, value: &T) -> Result<(), StoreError> {
        let bytes = Zeroizing::new(codec::encode(value).map_err(StoreError::Encode)?);
        self.pending.insert(key, Some(bytes));
        Ok(())
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.pending.insert(key, None);
    }

    /// Every record under `prefix`, as of this transaction, in key order.
    fn scan<T: DeserializeOwned>(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, T)>, StoreError> {
        let mut merged: BTreeMap<Vec<u8>, Option<Zeroizing<Vec<u8>>>> = BTreeMap::new();
        for item in self.db.prefix_iter(CF_SM, prefix)? {
            let (key, sealed) = item.map_err(StoreError::db("scan state"))?;
            if !key.starts_with(prefix) {
                break;
            }
            let plain = self.db.open_at(CF_SM, &key, &sealed)?;
            merged.insert(key.to_vec(), Some(plain));
        }
        for overlay in [&self.staged, &self.pending] {
            for (k, v) in overlay.range(prefix.to_vec()..) {
                if !k.starts_with(prefix) {
                    break;
                }
                merged.insert(k.clone(), v.clone());
            }
        }
        merged.into_iter().filter_map(|(k, v)| v.map(|bytes| decode_at(CF_SM, &k, &bytes).map(|t| (k, t)))).collect()
    }

    fn commit_pending(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        self.staged.extend(pending);
    }

    /// Applies one command; on refusal, its writes are dropped.
    pub(crate) fn apply(&mut self, cmd: &Command) -> Result<Response, StoreError> {
        if let Command::Batch(cmds) = cmd {
            let mut out = Vec::with_capacity(cmds.len());
            for c in cmds {
                out.push(self.apply(c)?.0);
            }
            return Ok(Response(Ok(Applied::Batch(out))));
        }
        let result = self.apply_inner(cmd)?;
        if result.is_ok() {
            self.changes_of(cmd);
            self.commit_pending();
            let accepted = std::mem::take(&mut self.pending_changes);
            self.changes.extend(accepted);
        } else {
            self.pending.clear();
            self.pending_changes.clear();
        }
        Ok(Response(result))
    }

    /// The writes of every accepted command, for sealing into one batch.
    pub(crate) fn into_writes(self) -> Overlay {
        self.staged
    }

    fn apply_inner(&mut self, cmd: &Command) -> Result<Result<Applied, ApplyError>, StoreError> {
        let done = Ok(Applied::Done);
        Ok(match cmd {
            // Applied command by command in `apply`.
            Command::Batch(_) => done,
            Command::InitCluster(rec) => {
                if self.get::<ClusterRecord>(keys::CLUSTER)?.is_some() {
                    return Ok(Err(ApplyError::AlreadyInitialized));
                }
                self.put(keys::CLUSTER.to_vec(), rec)?;
                done
            }
            Command::SetSettings(settings) => self.update_cluster(|c| c.settings = settings.clone())?,
            Command::SetJoinTokenHash { role, hash } => self.update_cluster(|c| match role {
                NodeRole::Worker => c.worker_token_hash = *hash,
                NodeRole::Manager => c.manager_token_hash = *hash,
            })?,
            Command::PutNode(node) => {
                let existed = self.get::<NodeRecord>(&keys::node(node.id))?.is_some();
                let action = if existed { ChangeAction::Update } else { ChangeAction::Create };
                self.changed(ChangeKind::Node, action, &node.id.to_string(), Some(&node.hostname));
                self.put(keys::node(node.id), node)?;
                done
            }
            Command::RemoveNode { id, at } => {
                let Some(mut node) = self.get::<NodeRecord>(&keys::node(*id))? else {
                    return Ok(not_found(ObjectKind::Node, id));
                };
                node.removed = true;
                node.status = NodeStatus::Down;
                node.updated_at = *at;
                self.put(keys::node(*id), &node)?;
                done
            }
            Command::CreateSecret { id, name, labels, value, size, at } => {
                self.create_secret(id, name, labels, value, *size, *at)?
            }
            Command::RotateSecret { id, value, size, at } => {
                let Some(mut secret) = self.get::<SecretRecord>(&keys::secret(id))? else {
                    return Ok(not_found(ObjectKind::Secret, id));
                };
                let version = secret.latest_version().unwrap_or(0).saturating_add(1);
                secret.versions.push(SecretVersionMeta { version, created_at: *at, size: *size });
                secret.updated_at = *at;
                self.put(keys::secret(id), &secret)?;
                self.put(keys::secret_value(id, version), value)?;
                Ok(Applied::SecretVersion { id: id.clone(), version })
            }
            Command::SetSecretLabels { id, labels, at } => {
                let Some(mut secret) = self.get::<SecretRecord>(&keys::secret(id))? else {
                    return Ok(not_found(ObjectKind::Secret, id));
                };
                secret.labels = labels.clone();
                secret.updated_at = *at;
                self.put(keys::secret(id), &secret)?;
                done
            }
            Command::RemoveSecret { id } => self.remove_secret(id)?,
            Command::CreateService { id, name, spec, at } => self.create_service(id, name, spec, *at)?,
            Command::UpdateService { id, expected_version, spec, at } => {
                self.update_service(id, *expected_version, spec, *at)?
            }
            Command::CreateServiceWithRuntime { id, name, spec, runtime, at } => {
                let applied = self.create_service(id, name, spec, *at)?;
                if applied.is_ok() {
                    self.put(keys::service_runtime(id), runtime)?;
                }
                applied
            }
            Command::UpdateServiceWithRuntime { id, expected_version, spec, runtime, at } => {
                let applied = self.update_service(id, *expected_version, spec, *at)?;
                if applied.is_ok() {
                    self.put(keys::service_runtime(id), runtime)?;
                }
                applied
            }
            Command::CreateServiceWithOptions { id, name, spec, runtime, options, at } => {
                let applied = self.create_service(id, name, spec, *at)?;
                if applied.is_ok() {
                    self.put(keys::service_runtime(id), runtime)?;
                    self.put(keys::service_options(id), options)?;
                }
                applied
            }
            Command::UpdateServiceWithOptions { id, expected_version, spec, runtime, options, at } => {
                let applied = self.update_service(id, *expected_version, spec, *at)?;
                if applied.is_ok() {
                    self.put(keys::service_runtime(id), runtime)?;
                    self.put(keys::service_options(id), options)?;
                }
                applied
            }
            Command::ReportTaskStatus { node, reports, at } => {
                for (task_id, state) in reports {
                    let Some(task) = self.get::<TaskRecord>(&keys::task(task_id))? else { continue };
                    if task.node_id != Some(*node) || task.desired != TaskState::Running {
                        continue;
                    }
                    let old = self.get::<TaskStatusRecord>(&keys::task_status(task_id))?;
                    if old.as_ref().is_some_and(|o| o.node_id == *node && o.state == *state) {
                        continue;
                    }
                    let rec = TaskStatusRecord { node_id: *node, state: state.clone(), at: *at };
                    self.put(keys::task_status(task_id), &rec)?;
                    self.changed(ChangeKind::Task, ChangeAction::Update, task_id, None);
                }
                done
            }
            Command::RemoveService { id } => {
                let Some(svc) = self.get::<ServiceRecord>(&keys::service(id))? else {
                    return Ok(not_found(ObjectKind::Service, id));
                };
                self.delete(keys::service(id));
                self.delete(keys::service_name(&svc.name));
                self.delete(keys::service_runtime(id));
                self.delete(keys::service_options(id));
                for (key, task) in self.scan::<TaskRecord>(keys::TASK)? {
                    if task.service_id == *id {
                        self.delete(keys::task_status(&task.id));
                        if let Some(n) = task.node_id {
                            self.delete(keys::node_task(n, &task.id));
                        }
                        self.changed(ChangeKind::Task, ChangeAction::Remove, &task.id, None);
                        self.delete(key);
                    }
                }
                done
            }
            Command::PutTask(task) => {
                if self.get::<ServiceRecord>(&keys::service(&task.service_id))?.is_none() {
                    return Ok(not_found(ObjectKind::Service, &task.service_id));
                }
                if let Some(node_id) = task.node_id {
                    match self.get::<NodeRecord>(&keys::node(node_id))? {
                        None => return Ok(not_found(ObjectKind::Node, &node_id)),
                        Some(n) if n.removed => return Ok(Err(ApplyError::NodeRemoved(node_id))),
                        Some(_) => {}
                    }
                }
                // The per-node index follows the task's placement.
                let old = self.get::<TaskRecord>(&keys::task(&task.id))?;
                let action = if old.is_some() { ChangeAction::Update } else { ChangeAction::Create };
                self.changed(ChangeKind::Task, action, &task.id, None);
                if let Some(old) = old.and_then(|t| t.node_id) {
                    self.delete(keys::node_task(old, &task.id));
                }
                // A status is what the task's node said: it goes when the task moves.
                if self
                    .get::<TaskStatusRecord>(&keys::task_status(&task.id))?
                    .is_some_and(|s| Some(s.node_id) != task.node_id)
                {
                    self.delete(keys::task_status(&task.id));
                }
                if let Some(n) = task.node_id {
                    self.put(keys::node_task(n, &task.id), &())?;
                }
                self.put(keys::task(&task.id), task)?;
                done
            }
            Command::RemoveTask { id } => {
                let Some(task) = self.get::<TaskRecord>(&keys::task(id))? else {
                    return Ok(not_found(ObjectKind::Task, id));
                };
                if let Some(n) = task.node_id {
                    self.delete(keys::node_task(n, id));
                }
                self.delete(keys::task(id));
                self.delete(keys::task_status(id));
                done
            }
            Command::UpdateNode { id, status, availability, cert_serial, at } => {
                let mut node = match self.live_node(*id)? {
                    Ok(node) => node,
                    Err(refused) => return Ok(Err(refused)),
                };
                if let Some(s) = status {
                    node.status = *s;
                }
                if let Some(a) = availability {
                    node.availability = *a;
                }
                if let Some(c) = cert_serial {
                    node.cert_serial = c.clone();
                }
                node.updated_at = *at;
                self.put(keys::node(*id), &node)?;
                done
            }
            Command::SetNodeSpec { id, availability, add, remove, at } => {
                let mut node = match self.live_node(*id)? {
                    Ok(node) => node,
                    Err(refused) => return Ok(Err(refused)),
                };
                if let Some(a) = availability {
                    node.availability = *a;
                }
                for k in remove {
                    node.labels.remove(k);
                }
                node.labels.extend(add.iter().map(|(k, v)| (k.clone(), v.clone())));
                node.updated_at = *at;
                self.put(keys::node(*id), &node)?;
                done
            }
            Command::RenewNodeCert { id, serial, previous_until, at } => {
                let mut node = match self.live_node(*id)? {
                    Ok(node) => node,
                    Err(refused) => return Ok(Err(refused)),
                };
                let previous = std::mem::replace(&mut node.cert_serial, serial.clone());
                if previous != *serial {
                    self.put(keys::retiring_cert(*id), &RetiringCert { serial_hex: previous, until: *previous_until })?;
                }
                node.updated_at = *at;
                self.put(keys::node(*id), &node)?;
                done
            }
            Command::SetAutolock { enabled, wrapped_unlock } => self.update_cluster(|c| {
                c.autolock = *enabled;
                if wrapped_unlock.is_some() {
                    c.wrapped_unlock = wrapped_unlock.clone();
                }
            })?,
            Command::SetUnlockGeneration { node, generation } => {
                self.put(keys::unlock_gen(*node), &(*node, *generation))?;
                done
            }
            Command::PutAdminCredential(rec) => {
                self.put(keys::admin(&rec.name), rec)?;
                done
            }
            Command::RevokeAdminCredential { name } => {
                let Some(mut rec) = self.get::<AdminCredentialRecord>(&keys::admin(name))? else {
                    return Ok(not_found(ObjectKind::AdminCredential, name));
                };
                let others = self
                    .scan::<AdminCredentialRecord>(keys::ADMIN)?
                    .into_iter()
                    .filter(|(_, r)| r.name != *name && !r.revoked)
                    .count();
                if !rec.revoked && others == 0 {
                    return Ok(Err(ApplyError::LastAdminCredential(name.clone())));
                }
                rec.revoked = true;
                self.put(keys::admin(name), &rec)?;
                done
            }
            Command::CreateApiToken(rec) => {
                if self.get::<ApiTokenRecord>(&keys::api_token(&rec.id))?.is_some() {
                    return Ok(Err(ApplyError::IdTaken { kind: ObjectKind::ApiToken, id: rec.id.clone() }));
                }
                self.put(keys::api_token(&rec.id), rec)?;
                done
            }
            Command::RevokeApiToken { id } => {
                let Some(mut rec) = self.get::<ApiTokenRecord>(&keys::api_token(id))? else {
                    return Ok(not_found(ObjectKind::ApiToken, id));
                };
                rec.revoked = true;
                self.put(keys::api_token(id), &rec)?;
                done
            }
            Command::SetGrantAuthority(auth) => {
                let newest = self.scan::<GrantAuthority>(keys::AUTHORITY)?.into_iter().map(|(_, a)| a.term).max();
                if let Some(newer) = newest.filter(|&t| t > auth.term) {
                    return Ok(Err(ApplyError::StaleAuthority { term: auth.term, newer }));
                }
                self.put(keys::authority(auth.term), auth)?;
                done
            }
        })
    }

    fn update_cluster(
        &mut self,
        f: impl FnOnce(&mut ClusterRecord),
    ) -> Result<Result<Applied, ApplyError>, StoreError> {
        let Some(mut cluster) = self.get::<ClusterRecord>(keys::CLUSTER)? else {
            return Ok(Err(ApplyError::NotInitialized));
        };
        f(&mut cluster);
        self.put(keys::CLUSTER.to_vec(), &cluster)?;
        Ok(Ok(Applied::Done))
    }

    fn create_secret(
        &mut self,
        id: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
        value: &SealedBytes,
        size: u32,
        at: Millis,
    ) -> Result<Result<Applied, ApplyError>, StoreError> {
        if self.get::<String>(&keys::secret_name(name))?.is_some() {
            return Ok(Err(ApplyError::NameTaken { kind: ObjectKind::Secret, name: name.into() }));
        }
        if self.get::<SecretRecord>(&keys::secret(id))?.is_some() {
            return Ok(Err(ApplyError::IdTaken { kind: ObjectKind::Secret, id: id.into() }));
        }
        let record = SecretRecord {
            id: id.into(),
            name: name.into(),
            labels: labels.clone(),
            created_at: at,
            updated_at: at,
            versions: vec![SecretVersionMeta { version: 1, created_at: at, size }],
        };
        self.put(keys::secret(id), &record)?;
        self.put(keys::secret_name(name), &id.to_string())?;
        self.put(keys::secret_value(id, 1), value)?;
        Ok(Ok(Applied::SecretVersion { id: id.into(), version: 1 }))
    }

    fn remove_secret(&mut self, id: &str) -> Result<Result<Applied, ApplyError>, StoreError> {
        let Some(secret) = self.get::<SecretRecord>(&keys::secret(id))? else {
            return Ok(not_found(ObjectKind::Secret, id));
        };
        let users: Vec<String> = self
            .scan::<ServiceRecord>(keys::SERVICE)?
            .into_iter()
            .filter(|(_, svc)| svc.spec.secrets.iter().any(|r| r.secret_id == id))
            .map(|(_, svc)| svc.name)
            .collect();
        if !users.is_empty() {
            return Ok(Err(ApplyError::SecretInUse { services: users }));
        }
        self.delete(keys::secret(id));
        self.delete(keys::secret_name(&secret.name));
        for v in &secret.versions {
            self.delete(keys::secret_value(id, v.version));
        }
        Ok(Ok(Applied::Done))
    }

    fn create_service(
        &mut self,
        id: &str,
        name: &str,
        spec: &ServiceSpec,
        at: Millis,
    ) -> Result<Result<Applied, ApplyError>, StoreError> {
        if self.get::<String>(&keys::service_name(name))?.is_some() {
            return Ok(Err(ApplyError::NameTaken { kind: ObjectKind::Service, name: name.into() }));
        }
        if self.get::<ServiceRecord>(&keys::service(id))?.is_some() {
            return Ok(Err(ApplyError::IdTaken { kind: ObjectKind::Service, id: id.into() }));
        }
        if let Err(e) = self.check_refs(spec)? {
            return Ok(Err(e));
        }
        let record = ServiceRecord {
            id: id.into(),
            name: name.into(),
            spec: spec.clone(),
            spec_version: 1,
            created_at: at,
            updated_at: at,
        };
        self.put(keys::service(id), &record)?;
        self.put(keys::service_name(name), &id.to_string())?;
        Ok(Ok(Applied::ServiceVersion { id: id.into(), version: 1 }))
    }

    fn update_service(
        &mut self,
        id: &str,
        expected_version: u64,
        spec: &ServiceSpec,
        at: Millis,
    ) -> Result<Result<Applied, ApplyError>, StoreError> {
        let Some(mut svc) = self.get::<ServiceRecord>(&keys::service(id))? else {
            return Ok(not_found(ObjectKind::Service, id));
        };
        if svc.spec_version != expected_version {
            return Ok(Err(ApplyError::VersionConflict { expected: expected_version, found: svc.spec_version }));
        }
        if let Err(e) = self.check_refs(spec)? {
            return Ok(Err(e));
        }
        svc.spec = spec.clone();
        svc.spec_version += 1;
        svc.updated_at = at;
        self.put(keys::service(id), &svc)?;
        Ok(Ok(Applied::ServiceVersion { id: id.into(), version: svc.spec_version }))
    }

    /// Every referenced secret (and pinned version) must exist when the spec is committed.
    fn check_refs(&self, spec: &ServiceSpec) -> Result<Result<(), ApplyError>, StoreError> {
        for r in &spec.secrets {
            let Some(secret) = self.get::<SecretRecord>(&keys::secret(&r.secret_id))? else {
                return Ok(Err(ApplyError::NotFound { kind: ObjectKind::Secret, id: r.secret_id.clone() }));
            };
            if let Some(v) = r.pinned_version {
                if !secret.versions.iter().any(|m| m.version == v) {
                    return Ok(Err(ApplyError::NotFound {
                        kind: ObjectKind::SecretVersion,
                        id: format!("{}@{v}", r.secret_id),
                    }));
                }
            }
        }
        Ok(Ok(()))
    }
}

fn not_found(kind: ObjectKind, id: &(impl ToString + ?Sized)) -> Result<Applied, ApplyError> {
    Err(ApplyError::NotFound { kind, id: id.to_string() })
}
