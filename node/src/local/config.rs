//! One configuration type for a manager: defaults from DESIGN.md §7, `validate()`, and
//! `for_test()`. The CLI only overrides fields.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a manager's config file (`--config FILE`, JSON) may set: a listener's limits, the
/// request body limit and Raft's timing. Every field is optional; an unknown one is an
/// error (a misspelt limit must not be silently ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigFile {
    pub limits: Option<ConnectionLimits>,
    pub max_body_bytes: Option<usize>,
    pub raft: Option<RaftTuning>,
    pub snapshots: Option<SnapshotsFile>,
}

/// `"snapshots"` in the config file: scheduled backups (see [`ScheduledSnapshots`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotsFile {
    pub dir: PathBuf,
    /// `2s`, `30m`, `1h`, `1d`.
    pub every: String,
    pub keep: usize,
    pub key_file: PathBuf,
}

impl ConfigFile {
    /// Reads `path`.
    ///
    /// # Errors
    /// A file that cannot be read, is not JSON, or names a field that does not exist.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError(format!("read {}: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
    }

    /// Sets what the file names on `config`.
    ///
    /// # Errors
    /// A duration that does not parse.
    pub fn apply(self, config: &mut ManagerConfig) -> Result<(), ConfigError> {
        if let Some(s) = self.snapshots {
            config.snapshots = Some(ScheduledSnapshots {
                dir: s.dir,
                every_secs: parse_duration_secs(&s.every).map_err(|e| ConfigError(format!("snapshots.every: {e}")))?,
                keep: s.keep,
                key_file: s.key_file,
            });
        }
        if let Some(l) = self.limits {
            config.limits = l;
        }
        if let Some(n) = self.max_body_bytes {
            config.max_body_bytes = n;
        }
        if let Some(r) = self.raft {
            config.raft = r;
        }
        Ok(())
    }
}

/// `30d`, `12h`, `90m`, `3600s` or `3600`, in seconds.
///
/// # Errors
/// A message saying what is expected.
pub fn parse_duration_secs(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?}: give N followed by s, m, h or d (e.g. 30d)");
    let (num, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(scale).ok_or_else(bad)
}

/// Backups the leader writes on a schedule: sealed under the key in `key_file` (which the
/// cluster does not replicate), written atomically to `dir`, the newest `keep` kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledSnapshots {
    pub dir: PathBuf,
    pub every_secs: u64,
    pub keep: usize,
    pub key_file: PathBuf,
}

/// `manager run --force-new-cluster`: start as the only voter of a new configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForceNewCluster {
    /// Go on even though a quorum of the old configuration answers.
    pub yes_i_know: bool,
}

/// A configuration value out of range; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// Raft timing and log compaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftTuning {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot after at least this many applied entries, and after as many as
    /// the state holds records (`manager::compaction`).
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot (for followers that are a little behind).
    pub keep_after_snapshot: u64,
    pub install_snapshot_timeout_ms: u64,
    pub max_payload_entries: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_min_ms: 250,
            election_max_ms: 400,
            snapshot_every: 10_000,
            keep_after_snapshot: 1_000,
            install_snapshot_timeout_ms: 120_000,
            // Bounds an AppendEntries body: 64 entries of at most ~500 KiB stay under the
            // 64 MiB limit of /raft/append.
            max_payload_entries: 64,
        }
    }
}

/// What a manager's listener allows each kind of connection (see `http::budget`), and how
/// long a client may take to say what it wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionLimits {
    /// Connections without a certificate of this cluster (handshakes in progress, joins,
    /// API tokens, health checks). When full, the oldest is closed.
    pub anonymous: usize,
    /// Of those, at most this many from one source address.
    pub anonymous_per_source: usize,
    /// Connections with a manager certificate (Raft, forwarding): a budget of their own.
    pub managers: usize,
    /// Connections with a worker or admin certificate.
    pub nodes: usize,
    /// Connections one certificate may hold at once (a tool with a connection per client
    /// holds many; a stolen key cannot take a whole budget).
    pub per_certificate: usize,
    /// A TLS handshake must be done within this.
    pub handshake_timeout_ms: u64,
    /// A request's headers (HTTP/1) must arrive within this; also the idle time allowed
    /// between requests.
    pub header_timeout_ms: u64,
    /// A request body may pause this long between two pieces at most.
    pub body_idle_timeout_ms: u64,
    /// And must arrive at this rate at least, after a first second.
    pub body_min_bytes_per_sec: u64,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            anonymous: 256,
            anonymous_per_source: 64,
            managers: 64,
            nodes: 1024,
            per_certificate: 256,
            handshake_timeout_ms: 5_000,
            header_timeout_ms: 10_000,
            body_idle_timeout_ms: 5_000,
            body_min_bytes_per_sec: 8 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerConfig {
    pub data_dir: PathBuf,
    /// `host:port` to bind; port 0 picks a free port (remembered for restarts).
    pub listen: String,
    /// `host:port` other nodes dial; defaults to the bound listen address.
    pub advertise: Option<String>,
    /// The hostname this node reports at init or join (default: the machine's). Unique
    /// among live nodes.
    pub hostname: Option<String>,
    pub raft: RaftTuning,
    /// Validity of node certificates issued by this cluster (set at init).
    pub node_cert_validity_secs: u64,
    /// Grant lifetime (set at init).
    pub grant_ttl_secs: u64,
    /// Worker heartbeat period (set at init); a worker is down after 3 missed.
    pub worker_heartbeat_ms: u64,
    /// Connection budgets and client deadlines.
    pub limits: ConnectionLimits,
    /// Request body limit in bytes.
    pub max_body_bytes: usize,
    /// Scheduled backups, written by whichever manager leads.
    pub snapshots: Option<ScheduledSnapshots>,
    /// Set for one start only, never remembered.
    pub force_new_cluster: Option<ForceNewCluster>,
    /// Where a manager that restarts locked (autolock) gets its unlock key without a person.
    pub unlock: Option<UnlockSource>,
    /// `manager init --autolock`: the new cluster starts with autolock on.
    pub autolock: bool,
}

/// A key backend for a locked manager: a command whose standard output is the unlock key
/// (a KMS CLI, `pass`, `systemd-creds`, an HSM tool), or a file (for tests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnlockSource {
    Command(String),
    File(PathBuf),
}

impl ManagerConfig {
    pub fn new(data_dir: impl Into<PathBuf>, listen: impl Into<String>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: listen.into(),
            advertise: None,
            hostname: None,
            raft: RaftTuning::default(),
            node_cert_validity_secs: 90 * 24 * 3600,
            grant_ttl_secs: 30,
            worker_heartbeat_ms: 2000,
            limits: ConnectionLimits::default(),
            max_body_bytes: 1 << 20,
            snapshots: None,
            force_new_cluster: None,
            unlock: None,
            autolock: false,
        }
    }

    /// A config for tests: loopback, port 0.
    pub fn for_test(data_dir: impl Into<PathBuf>) -> Self {
        Self::new(data_dir, "127.0.0.1:0")
    }

    /// # Errors
    /// A message naming the field that is out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(ConfigError)
    }

    fn check(&self) -> Result<(), String> {
        let r = &self.raft;
        if r.heartbeat_ms == 0 || r.election_min_ms <= r.heartbeat_ms || r.election_max_ms <= r.election_min_ms {
            return Err("raft timing: need 0 < heartbeat < election_min < election_max".into());
        }
        if r.snapshot_every == 0 {
            return Err("raft.snapshot_every must be at least 1".into());
        }
        if self.node_cert_validity_secs < 10 {
            return Err("node_cert_validity_secs must be at least 10".into());
        }
        let l = &self.limits;
        if l.anonymous == 0 || l.anonymous_per_source == 0 || l.managers == 0 || l.nodes == 0 || l.per_certificate == 0
        {
            return Err("limits: every connection budget must be at least 1".into());
        }
        if l.handshake_timeout_ms == 0 || l.header_timeout_ms == 0 || l.body_idle_timeout_ms == 0 {
            return Err("limits: timeouts must be positive".into());
        }
        if self.max_body_bytes == 0 {
            return Err("max_body_bytes must be positive".into());
        }
        if let Some(s) = &self.snapshots {
            if s.every_secs == 0 || s.keep == 0 {
                return Err("snapshots: every and keep must be positive".into());
            }
        }
        self.listen
            .parse::<std::net::SocketAddr>()
            .map_err(|_| format!("listen {:?} is not host:port", self.listen))?;
        Ok(())
    }

    pub(crate) fn openraft_config(&self) -> Result<openraft::Config, ConfigError> {
        let r = &self.raft;
        let cfg = openraft::Config {
            cluster_name: "coffer".into(),
            heartbeat_interval: r.heartbeat_ms,
            election_timeout_min: r.election_min_ms,
            election_timeout_max: r.election_max_ms,
            install_snapshot_timeout: r.install_snapshot_timeout_ms,
            max_payload_entries: r.max_payload_entries,
            // `manager::compaction` triggers snapshots, sized to the state.
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: r.keep_after_snapshot,
            ..Default::default()
        };
        cfg.validate().map_err(|e| ConfigError(format!("raft: {e}")))
    }

    /// The address other nodes dial: `advertise`, or else the bound listen address, which
    /// must then be a specific one.
    ///
    /// # Errors
    /// An advertise address that is not ip:port, or an unspecified address (0.0.0.0).
    pub fn advertise_addr(&self, bound: SocketAddr) -> Result<SocketAddr, ConfigError> {
        let adv = match &self.advertise {
            Some(a) => a.parse().map_err(|_| ConfigError(format!("advertise address {a:?} is not ip:port")))?,
            None => bound,
        };
        if adv.ip().is_unspecified() {
            return Err(ConfigError(format!(
                "listening on {bound}: give --advertise with an address other nodes can dial"
            )));
        }
        Ok(adv)
    }

    pub fn node_cert_validity(&self) -> Duration {
        Duration::from_secs(self.node_cert_validity_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_sets_what_it_names_and_refuses_what_does_not_exist() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let path = dir.path().join("manager.json");
        std::fs::write(&path, r#"{"limits": {"anonymous": 32}, "max_body_bytes": 65536}"#).expect("write");
        let mut c = ManagerConfig::for_test("/tmp/x");
        ConfigFile::load(&path).expect("load").apply(&mut c).expect("apply");
        assert_eq!((c.limits.anonymous, c.limits.nodes, c.max_body_bytes), (32, 1024, 65536));
        c.validate().expect("valid");
        std::fs::write(&path, r#"{"limits": {"anonymus": 32}}"#).expect("write");
        assert!(ConfigFile::load(&path).expect_err("a misspelt field").0.contains("anonymus"));
        std::fs::write(&path, r#"{"limits": {"anonymous": 0}}"#).expect("write");
        let mut c = ManagerConfig::for_test("/tmp/x");
        ConfigFile::load(&path).expect("load").apply(&mut c).expect("apply");
        assert!(c.validate().is_err(), "a budget of 0");
        std::fs::write(&path, r#"{"snapshots": {"dir": "/b", "every": "1h", "keep": 24, "key_file": "/k"}}"#)
            .expect("write");
        let mut c = ManagerConfig::for_test("/tmp/x");
        ConfigFile::load(&path).expect("load").apply(&mut c).expect("apply");
        assert_eq!(c.snapshots.as_ref().map(|s| (s.every_secs, s.keep)), Some((3600, 24)));
        std::fs::write(&path, r#"{"snapshots": {"dir": "/b", "every": "1 hour", "keep": 24, "key_file": "/k"}}"#)
            .expect("write");
        let mut c = ManagerConfig::for_test("/tmp/x");
        assert!(ConfigFile::load(&path).expect("load").apply(&mut c).is_err(), "a duration that does not parse");
        // The example in deploy/ holds the defaults, as it says.
        let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/manager.json");
        let example = ConfigFile::load(&example).expect("deploy/manager.json");
        let defaults = ManagerConfig::for_test("/tmp/x");
        assert_eq!(example.limits, Some(defaults.limits));
        assert_eq!(example.max_body_bytes, Some(defaults.max_body_bytes));
    }

    #[test]
    fn defaults_validate_and_bad_values_are_named() {
        let c = ManagerConfig::for_test("/tmp/x");
        c.validate().expect("defaults are valid");
        c.openraft_config().expect("openraft accepts the defaults");
        let mut bad = c.clone();
        bad.raft.election_min_ms = 50;
        assert!(bad.validate().expect_err("invalid").0.contains("raft timing"));
        let mut bad = c;
        bad.listen = "nowhere".into();
        assert!(bad.validate().expect_err("invalid").0.contains("listen"));
    }
}
