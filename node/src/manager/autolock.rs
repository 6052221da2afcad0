//! Autolock: no manager keeps a key on disk that opens its store. Each store's data key is
//! wrapped under a KEK derived from the cluster's unlock key, which is shown once and
//! stored nowhere in plaintext: the cluster record carries it sealed with the cluster value
//! key, which is itself only inside the stores it opens.
//!
//! Turning autolock on or off and rotating the unlock key are commits; every manager then
//! re-wraps its own store ([`follow`]): a manager that is down or locked does so once it is
//! unlocked (with the key its store is sealed under) and has applied the change, and
//! records the generation it has reached, which `cluster status` shows. Its TLS key follows
//! its store's key (`tls_keys`), so that a copy of a data dir yields no manager certificate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_api::cluster::UnlockKeyIssued;
use coffer_api::error::CodedError;
use coffer_raft_store::model::{ClusterRecord, Command, SealedBytes};
use coffer_raft_store::seal::{Aad, KeyBytes, KeyEncryptionKey, Sealer};
use subtle::ConstantTimeEq;

use crate::local::unlock_key::UnlockKey;
use crate::manager::error::OpError;
use crate::manager::Manager;

const FOLLOW_EVERY: Duration = Duration::from_millis(500);
/// How often the TLS files are checked against the store's key when nothing changed (the
/// locked certificate is renewed at half its life).
const SETTLE_EVERY: Duration = Duration::from_secs(3600);

/// The key-encryption key a manager's store is sealed under right now, and the unlock key
/// it was derived from (none: the key file).
#[derive(Clone)]
pub struct StoreKey {
    pub kek: Arc<dyn KeyEncryptionKey>,
    pub unlock: Option<UnlockKey>,
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreKey").field("kind", &self.kek.kind()).finish()
    }
}

fn aad(cluster_id: &str) -> Aad {
    Aad::new("unlock-key", cluster_id.as_bytes())
}

fn value_key(cluster: &ClusterRecord) -> Result<KeyBytes, OpError> {
    KeyBytes::from_slice(&cluster.value_key.0)
        .ok_or_else(|| OpError::internal("reading the cluster key", "wrong length"))
}

/// The current unlock key and its generation, opened from the cluster record (none before
/// autolock was first turned on).
pub(crate) fn current(cluster: &ClusterRecord) -> Result<Option<(u64, UnlockKey)>, OpError> {
    let Some(sealed) = &cluster.wrapped_unlock else { return Ok(None) };
    let plain = Sealer::new(&value_key(cluster)?)
        .open(&aad(&cluster.id), &sealed.0)
        .map_err(|e| OpError::internal("opening the unlock key", e))?;
    if plain.len() != 8 + 32 {
        return Err(OpError::internal("opening the unlock key", "wrong length"));
    }
    let generation = u64::from_be_bytes(plain[..8].try_into().unwrap_or_default());
    let key = KeyBytes::from_slice(&plain[8..]).ok_or_else(|| OpError::internal("the unlock key", "wrong length"))?;
    Ok(Some((generation, UnlockKey::from_key(key))))
}

/// `key` of `generation`, sealed for the cluster record.
pub(crate) fn seal(cluster: &ClusterRecord, generation: u64, key: &UnlockKey) -> Result<SealedBytes, OpError> {
    let mut plain = zeroize::Zeroizing::new(generation.to_be_bytes().to_vec());
    plain.extend_from_slice(key.key().expose());
    Sealer::new(&value_key(cluster)?)
        .seal(&aad(&cluster.id), &plain)
        .map(SealedBytes)
        .map_err(|e| OpError::internal("sealing the unlock key", e))
}

/// On the leader: turns autolock on (a new unlock key), off, or rotates the key.
pub(crate) async fn change(m: &Manager, enabled: bool, rotate: bool) -> Result<UnlockKeyIssued, OpError> {
    // One change at a time: two rotations at once would both read generation N and commit
    // two keys labelled N + 1, one of which nobody would end up holding.
    let _one = m.autolock_lock.lock().await;
    m.linearizable().await?;
    let cluster = m.cluster()?;
    let generation = current(&cluster)?.map(|(g, _)| g).unwrap_or(0);
    if !enabled {
        if cluster.autolock {
            m.propose(Command::SetAutolock { enabled: false, wrapped_unlock: None }).await?;
            tracing::warn!("autolock turned off: each manager's store key goes back to its key file");
        }
        return Ok(UnlockKeyIssued { key: None, generation });
    }
    if cluster.autolock && !rotate {
        return Err(OpError::precondition(
            "autolock is already on; `coffer cluster unlock-key --rotate` makes a new unlock key",
        ));
    }
    if !cluster.autolock && rotate {
        return Err(OpError::precondition("autolock is off: there is no unlock key to rotate"));
    }
    let key = UnlockKey::generate();
    let wrapped = seal(&cluster, generation + 1, &key)?;
    m.propose(Command::SetAutolock { enabled: true, wrapped_unlock: Some(wrapped) }).await?;
    tracing::warn!(generation = generation + 1, rotated = rotate, "autolock: a new unlock key is in force");
    Ok(UnlockKeyIssued { key: Some(key.reveal().to_string()), generation: generation + 1 })
}

fn same(a: &UnlockKey, b: &UnlockKey) -> bool {
    bool::from(a.key().expose().ct_eq(b.key().expose()))
}

/// What this manager's store should be sealed under, given the applied cluster record: the
/// current unlock key under autolock, else the key file. `None` when nothing is to change.
fn wanted(m: &Manager, have: &StoreKey) -> Result<Option<(u64, StoreKey)>, OpError> {
    let Some(cluster) = m.reader.cluster()? else { return Ok(None) };
    let current = current(&cluster)?;
    match (cluster.autolock, current, &have.unlock) {
        (true, Some((_, want)), Some(h)) if same(&want, h) => Ok(None),
        (true, Some((g, want)), _) => {
            Ok(Some((g, StoreKey { kek: Arc::new(want.kek_for(&m.cluster_id, m.id)), unlock: Some(want) })))
        }
        (false, _, Some(_)) => Ok(Some((0, StoreKey { kek: m.kek.clone(), unlock: None }))),
        _ => Ok(None),
    }
}

/// The generation this manager's store is sealed under now (0: the key file).
fn generation_of(m: &Manager, have: &StoreKey) -> Result<u64, OpError> {
    let Some(h) = &have.unlock else { return Ok(0) };
    let cluster = m.cluster()?;
    Ok(match current(&cluster)? {
        Some((g, k)) if same(&k, h) => g,
        // An older key: its generation is not kept, and all that matters is that it is
        // behind the current one.
        Some((g, _)) => g.saturating_sub(1),
        None => 0,
    })
}

/// Re-wraps the store when the cluster's autolock setting or unlock key changes, and
/// records the generation reached. Runs on every manager while it runs.
pub(crate) async fn follow(m: Arc<Manager>) {
    let mut last_error = None;
    // When the TLS files were last brought in line with the store's key (none yet).
    let mut settled: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = m.shutdown.cancelled() => return,
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
        match follow_once(&m, &mut settled).await {
            Ok(()) => last_error = None,
            // Said once, not twice a second while a quorum is gone.
            Err(e) if last_error.as_ref() != Some(&e.message) => {
                tracing::warn!(error = %e.message, "autolock: could not bring this manager's store key up to date");
                last_error = Some(e.message);
            }
            Err(_) => {}
        }
    }
}

async fn follow_once(m: &Arc<Manager>, settled: &mut Option<Instant>) -> Result<(), OpError> {
    let have = m.store_key.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut previous = None;
    if let Some((generation, want)) = wanted(m, &have)? {
        let (reader, old, new) = (m.reader.clone(), have.kek.clone(), want.kek.clone());
        tokio::task::spawn_blocking(move || reader.rewrap_data_key(old.as_ref(), new.as_ref()))
            .await
            .map_err(|e| OpError::internal("re-wrapping the store key", e))?
            .map_err(|e| OpError::internal("re-wrapping the store key", e))?;
        tracing::info!(generation, kind = want.kek.kind(), "this manager's store key is re-wrapped");
        *m.store_key.lock().unwrap_or_else(|p| p.into_inner()) = want;
        previous = Some(have.kek);
        *settled = None;
    }
    // The TLS key follows the store's key: at start, after each re-wrap, and now and then
    // to renew the locked certificate.
    if settled.is_none_or(|at| at.elapsed() >= SETTLE_EVERY) {
        let m2 = m.clone();
        tokio::task::spawn_blocking(move || crate::manager::tls_keys::settle(&m2, previous.as_deref()))
            .await
            .map_err(|e| OpError::internal("re-sealing the TLS key", e))?
            .map_err(|e| OpError::internal("re-sealing the TLS key", e))?;
        *settled = Some(Instant::now());
    }
    // Record the generation reached (again after a restart that lost the first attempt).
    let have = m.store_key.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let reached = generation_of(m, &have)?;
    if m.reader.unlock_generations()?.get(&m.id).copied().unwrap_or(0) != reached {
        m.propose(Command::SetUnlockGeneration { node: m.id, generation: reached }).await?;
    }
    Ok(())
}
