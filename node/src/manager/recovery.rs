//! Disaster recovery: a new cluster restored from a backup (`coffer snapshot restore`), and
//! a surviving manager that re-forms the cluster alone after quorum loss (`manager run
//! --force-new-cluster`).
//!
//! Both make a store the only voter of a new Raft configuration and change the state
//! outside the log before Raft starts (a restored cluster's new manager and admin
//! credential and join tokens; the old managers removed). The snapshot built then carries
//! those changes to every manager that joins, so no manager ever sees the state without
//! them.
//!
//! Invariant: no manager of the old configuration is a member of the new one, and its
//! certificate is refused by every manager of it. Marking them merely down would let an old
//! manager that comes back (a healed partition, a copied data dir) speak Raft to the new
//! cluster, with its own, diverging log.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use coffer_api::cluster::NodeRole as WireRole;
use coffer_api::time::now_millis;
use coffer_raft_store::backup::{BackupFile, BackupKey};
use coffer_raft_store::model::{Command, NodeRole};
use coffer_raft_store::{ManagerNode, NodeId, Store, StoreOptions};
use rand::Rng;

use crate::local::config::{ForceNewCluster, ManagerConfig};
use crate::local::data_dir::{DataDir, NodeIdentity};
use crate::local::ids::NodeHex;
use crate::local::key_file;
use crate::local::unlock_key::UnlockKey;
use crate::manager::autolock;
use crate::manager::init::{self, InitSummary};
use crate::manager::raft_net::{post_postcard, Peers};
use crate::manager::values::cluster_ca;
use crate::trust::join_token::JoinToken;
use crate::trust::pki;

/// The managers of the old configuration but this one, removed: they are not members of
/// the new one, and their certificates are refused from now on.
fn remove_old_managers(store: &Store, me: NodeId, now: u64) -> anyhow::Result<Vec<Command>> {
    Ok(store
        .reader
        .nodes()?
        .into_iter()
        .filter(|n| n.role == NodeRole::Manager && !n.removed && n.id != me)
        .map(|n| Command::RemoveNode { id: n.id, at: now })
        .collect())
}

fn apply_all(store: &Store, cmds: &[Command]) -> anyhow::Result<()> {
    for (cmd, reply) in cmds.iter().zip(store.apply_offline(cmds)?) {
        if let Err(e) = reply.0 {
            anyhow::bail!("{} refused: {e}", cmd.kind());
        }
    }
    Ok(())
}

/// `snapshot restore`: a one-manager cluster in the new data dir `config.data_dir` from a
/// backup, for a listener bound at `bound`. The backup is read and authenticated whole
/// before anything is written; a failure after that removes what was written.
///
/// # Errors
/// A data dir that is not empty, a backup that does not open under `key`, a store error.
pub fn restore_data_dir(
    config: &ManagerConfig,
    bound: SocketAddr,
    backup: &Path,
    key: &BackupKey,
) -> anyhow::Result<InitSummary> {
    let root = config.data_dir.clone();
    let existed = root.exists();
    if existed && std::fs::read_dir(&root).with_context(|| format!("read {}", root.display()))?.next().is_some() {
        anyhow::bail!("{} is not empty: a backup is restored only into a new, empty data dir", root.display());
    }
    let advertise = config.advertise_addr(bound)?;
    let file = BackupFile::open(backup)?;
    let unlocked = file.unlock(key)?;
    unlocked.verify()?;

    let result = restore_into(config, bound, advertise, &unlocked);
    if result.is_err() {
        // Leave the data dir as it was found: nothing half-restored that a later `manager
        // run` could start from.
        if existed {
            if let Ok(entries) = std::fs::read_dir(&root) {
                for e in entries.flatten() {
                    let p = e.path();
                    let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(&root);
        }
    }
    result
}

fn restore_into(
    config: &ManagerConfig,
    bound: SocketAddr,
    advertise: SocketAddr,
    backup: &coffer_raft_store::backup::UnlockedBackup<'_>,
) -> anyhow::Result<InitSummary> {
    let dir = DataDir::new(&config.data_dir);
    std::fs::create_dir_all(dir.root()).with_context(|| format!("create {}", dir.root().display()))?;
    let kek = key_file::create(&dir.key_file())?;
    let mut store = coffer_raft_store::restore(&dir.store(), &kek, StoreOptions::default(), backup)
        .context("restore the backup into the new store")?;
    let cluster = store.reader.cluster()?.context("the backup holds no cluster record")?;
    if cluster.id != backup.info().cluster_id {
        anyhow::bail!(
            "the backup's header names cluster {} but its state is of {}",
            backup.info().cluster_id,
            cluster.id
        );
    }
    let ca = cluster_ca(&cluster).map_err(|e| anyhow::anyhow!("open the cluster CA from the backup: {}", e.message))?;
    let taken: std::collections::BTreeSet<NodeId> = store.reader.nodes()?.iter().map(|n| n.id).collect();
    let node_id = loop {
        let id: u64 = rand::thread_rng().gen_range(1..u64::MAX);
        if !taken.contains(&id) {
            break id;
        }
    };
    let serial = init::certify_manager(&dir, &kek, (&ca, &cluster.id), node_id, advertise, config)?;
    let now = now_millis();
    // The old admin bundles stay valid (same CA, recorded credentials); this one is new, so
    // that whoever restores has one even if every old bundle was lost with the cluster.
    let admin = init::write_admin_bundle(&dir, (&ca, &cluster.id), &format!("restored-{}", now / 1000), now)?;
    // New join tokens: the backup holds only hashes of the old ones, which nobody may have
    // any more, and which may be why the cluster is being restored.
    let digest = pki::cert_digest(ca.cert_pem())?;
    let (worker_token, manager_token) = (JoinToken::generate(digest), JoinToken::generate(digest));
    let mut cmds = remove_old_managers(&store, node_id, now)?;
    cmds.extend([
        Command::PutNode(init::manager_record(config, node_id, advertise, serial, now)),
        Command::PutAdminCredential(admin),
        Command::SetJoinTokenHash { role: NodeRole::Worker, hash: worker_token.hash() },
        Command::SetJoinTokenHash { role: NodeRole::Manager, hash: manager_token.hash() },
    ]);
    // Under autolock, a new unlock key: the backup's may be one that was since rotated
    // because it leaked, and the restored cluster's stores are new anyway.
    let unlock_key = if cluster.autolock {
        let generation =
            autolock::current(&cluster).map_err(|e| anyhow::anyhow!("{}", e.message))?.map_or(0, |(g, _)| g);
        let key = UnlockKey::generate();
        let wrapped = autolock::seal(&cluster, generation + 1, &key).map_err(|e| anyhow::anyhow!("{}", e.message))?;
        cmds.push(Command::SetAutolock { enabled: true, wrapped_unlock: Some(wrapped) });
        Some(key.reveal())
    } else {
        None
    };
    apply_all(&store, &cmds)?;
    let reformed = store.reform_alone(node_id, ManagerNode { addr: advertise.to_string() })?;
    drop(store);
    NodeIdentity {
        node_id,
        cluster_id: cluster.id.clone(),
        role: WireRole::Manager,
        listen: bound.to_string(),
        advertise: advertise.to_string(),
    }
    .save(&dir)?;
    tracing::info!(cluster_id = %cluster.id, node_id = %NodeHex(node_id), applied = %reformed.applied, "restored from backup");
    Ok(InitSummary {
        cluster_id: cluster.id,
        node_id,
        addr: advertise.to_string(),
        worker_token: worker_token.reveal(),
        manager_token: manager_token.reveal(),
        client_dir: dir.client_dir(),
        unlock_key,
    })
}

/// `manager run --force-new-cluster`, before Raft starts: unless told otherwise, refuses
/// while a quorum of the old configuration answers; then keeps every entry of its log,
/// removes the other managers and makes this manager the only voter.
///
/// # Errors
/// A quorum that still answers (without `yes_i_know`), or a store error.
pub(crate) async fn force_new_cluster(
    store: &mut Store,
    me: NodeId,
    advertise: &str,
    peers: &Peers,
    f: ForceNewCluster,
) -> anyhow::Result<()> {
    let membership = store.reader.membership()?;
    let voters: Vec<(NodeId, String)> = membership
        .membership()
        .voter_ids()
        .filter(|id| *id != me)
        .map(|id| (id, membership.membership().get_node(&id).map(|n| n.addr.clone()).unwrap_or_default()))
        .collect();
    let total = voters.len() + 1;
    // This one answers.
    let mut answering = 1;
    // Already the only voter: a forced start that was interrupted, run again. Nothing to
    // ask; re-forming again is idempotent and rebuilds what the interruption left out.
    let alone = voters.is_empty();
    for (id, addr) in &voters {
        let url = format!("https://{addr}/raft/applied");
        let r = post_postcard::<_, Option<u64>>(peers, &url, Some(*id), &(), std::time::Duration::from_secs(2)).await;
        if r.is_ok() {
            answering += 1;
            tracing::warn!(node_id = %NodeHex(*id), %addr, "a manager of the old configuration answers");
        }
    }
    if !alone && answering > total / 2 && !f.yes_i_know {
        anyhow::bail!(
            "{answering} of the {total} voting managers of this cluster answer: it has a quorum, so forcing a new \
             cluster would split it in two. Restart this manager without --force-new-cluster (or, if you are sure \
             those managers must be abandoned, add --yes-i-know)"
        );
    }
    store.replay_log()?;
    let cmds = remove_old_managers(store, me, now_millis())?;
    apply_all(store, &cmds)?;
    let r = store.reform_alone(me, ManagerNode { addr: advertise.to_string() })?;
    tracing::warn!(
        applied = %r.applied, replayed = r.replayed, old_voters = r.old_voters.len(),
        "forced a new cluster: this manager is its only voter; join others to it with a manager token"
    );
    Ok(())
}
