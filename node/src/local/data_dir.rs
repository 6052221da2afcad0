//! The layout of a manager's (or worker's) data dir, in one place.
//!
//! ```text
//! <data-dir>/kek                key-encryption key (mode 0600); under autolock it opens
//!                               only the locked certificate's key
//! <data-dir>/node.json          who this node is: id, role, cluster id, addresses
//! <data-dir>/tls/ca.pem         the cluster CA certificate
//! <data-dir>/tls/node.pem       this node's certificate
//! <data-dir>/tls/node.key.sealed this node's private key and certificate, sealed with the
//!                               KEK its store is sealed with (the unlock key's under autolock)
//! <data-dir>/tls/locked.sealed  under autolock: the powerless certificate a locked manager
//!                               serves with, and its key, sealed with `kek`
//! <data-dir>/raft/              the RocksDB store and its snapshots (managers)
//! <data-dir>/client/            admin client bundle written by `manager init`
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn key_file(&self) -> PathBuf {
        self.root.join("kek")
    }

    pub fn store(&self) -> PathBuf {
        self.root.join("raft")
    }

    pub fn node_file(&self) -> PathBuf {
        self.root.join("node.json")
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.root.join("tls")
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.tls_dir().join("ca.pem")
    }

    pub fn node_cert(&self) -> PathBuf {
        self.tls_dir().join("node.pem")
    }

    pub fn node_key(&self) -> PathBuf {
        self.tls_dir().join("node.key.sealed")
    }

    pub fn locked_cert(&self) -> PathBuf {
        self.tls_dir().join("locked.sealed")
    }

    pub fn client_dir(&self) -> PathBuf {
        self.root.join("client")
    }

    /// Refuses a data dir that already holds a node: creating one twice would make a second
    /// identity with a second key, and orphan the first.
    ///
    /// # Errors
    /// When `node.json` exists.
    pub fn refuse_existing(&self) -> anyhow::Result<()> {
        if self.node_file().exists() {
            anyhow::bail!(
                "{} already holds a node; restart it with `coffer manager run` or `coffer worker run` \
                 and --data-dir {}",
                self.root.display(),
                self.root.display()
            );
        }
        Ok(())
    }
}

/// What a node knows of itself across restarts. Not secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub node_id: u64,
    pub cluster_id: String,
    pub role: coffer_api::cluster::NodeRole,
    /// The address the listener binds (with the port actually bound, after port 0).
    pub listen: String,
    /// The address other nodes dial; in the certificate's SAN and in Raft membership.
    pub advertise: String,
}

impl NodeIdentity {
    /// # Errors
    /// When the file is missing or not a node identity.
    pub fn load(dir: &DataDir) -> anyhow::Result<Self> {
        use anyhow::Context;
        let path = dir.node_file();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("read {} (is this a coffer data dir?)", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
    }

    /// Writes the identity atomically (temporary file, sync, rename).
    ///
    /// # Errors
    /// On any I/O failure.
    pub fn save(&self, dir: &DataDir) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        write_atomic(&dir.node_file(), text.as_bytes(), 0o644)
    }
}

/// Writes `bytes` to `path` via a temporary file and a rename, synced, with `mode`.
///
/// # Errors
/// On any I/O failure.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    use anyhow::Context;
    let dir = path.parent().context("path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("write {}", tmp.display()))?;
    f.write_all(bytes).with_context(|| format!("write {}", tmp.display()))?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}
