//! `coffer manager init|join|run` and `coffer worker join|run`: commands that run a node in
//! the foreground until Ctrl-C or SIGTERM, through [`crate::start`].
//!
//! What they print on stdout is for the operator (or, with `--format json`, one JSON
//! object per line for scripts and the test harness): the init summary, shown once, and a
//! line when the node serves.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::cli::output::{node_hex, print_json_line, Format};
use crate::local::config::{ConfigFile, ManagerConfig};
use crate::local::data_dir::DataDir;
use crate::start::{self, InitSummary, RuntimeKind, WorkerSettings};

#[derive(Subcommand, Debug)]
pub(crate) enum ManagerCmd {
    /// Create a new cluster with this manager as its first member, and serve.
    Init {
        #[command(flatten)]
        at: Placement,
        #[command(flatten)]
        tuning: Tuning,
        /// Autolock: no manager keeps a key on disk that opens its store; a restarted
        /// manager waits for the unlock key (printed once, here).
        #[arg(long)]
        autolock: bool,
    },
    /// Join an existing cluster with a manager join token, and serve.
    Join {
        #[command(flatten)]
        at: Placement,
        #[command(flatten)]
        token: TokenArg,
        /// Address of any manager of the cluster.
        #[arg(long)]
        join: String,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Restart a manager from its data dir.
    Run {
        #[arg(long)]
        data_dir: PathBuf,
        #[command(flatten)]
        tuning: Tuning,
        /// After quorum loss: start as the only voter of a new configuration, keeping this
        /// manager's state; other managers then join it. Refused while a quorum of the old
        /// configuration answers.
        #[arg(long)]
        force_new_cluster: bool,
        /// With --force-new-cluster: go on even though a quorum answers (splits the cluster).
        #[arg(long, requires = "force_new_cluster")]
        yes_i_know: bool,
        /// Autolock: a command whose output is the unlock key (a KMS CLI, `systemd-creds
        /// decrypt`, `pass`), run when this manager starts locked and after a failed unlock.
        #[arg(long, conflicts_with = "unlock_key_file")]
        unlock_key_command: Option<String>,
        /// Autolock: a file holding the unlock key. For tests: the key beside the data dir
        /// defeats autolock.
        #[arg(long)]
        unlock_key_file: Option<PathBuf>,
    },
}

/// Where a new manager keeps its data and listens.
#[derive(Args, Debug, Clone)]
pub(crate) struct Placement {
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long, default_value = "0.0.0.0:7370")]
    pub(crate) listen: String,
    /// The address other nodes dial (default: the bound listen address).
    #[arg(long)]
    advertise: Option<String>,
    /// The hostname to report (default: this machine's); unique among live nodes.
    #[arg(long)]
    hostname: Option<String>,
}

/// A join token: from `--token-file F` or COFFER_JOIN_TOKEN (preferred: neither shows in the
/// process list), or `--token` (warned about).
#[derive(Args, Clone)]
pub(crate) struct TokenArg {
    /// The join token. Visible to every local user in the process list while the node
    /// runs: prefer --token-file or COFFER_JOIN_TOKEN.
    #[arg(long, env = "COFFER_JOIN_TOKEN", hide_env_values = true, conflicts_with = "token_file")]
    token: Option<String>,
    /// A file holding the join token (read once, at join).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

impl std::fmt::Debug for TokenArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenArg").field("token", &"[redacted]").field("token_file", &self.token_file).finish()
    }
}

impl TokenArg {
    fn take(self) -> anyhow::Result<Zeroizing<String>> {
        if let Some(path) = &self.token_file {
            let text = Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("read the join token from {}: {e}", path.display()))?,
            );
            return Ok(Zeroizing::new(text.trim().to_string()));
        }
        let Some(token) = self.token else {
            anyhow::bail!("no join token: give --token-file F, or set COFFER_JOIN_TOKEN");
        };
        if std::env::var_os("COFFER_JOIN_TOKEN").is_none() {
            eprintln!(
                "warning: --token is visible to local users in the process list while this node runs; \
                 prefer --token-file or COFFER_JOIN_TOKEN"
            );
        }
        Ok(Zeroizing::new(token))
    }
}

/// Raft tuning, for tests and benchmarks; the defaults suit production.
#[derive(Args, Debug, Clone)]
pub(crate) struct Tuning {
    /// A JSON file of limits and timing (`limits`, `max_body_bytes`, `raft`); see
    /// deploy/README.md. Flags given here win over it.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, hide = true)]
    raft_snapshot_every: Option<u64>,
    #[arg(long, hide = true)]
    raft_keep_after_snapshot: Option<u64>,
    /// Scheduled backups: the leader writes one to DIR every --snapshot-every (needs
    /// --snapshot-key-file; the newest --snapshot-keep are kept).
    #[arg(long)]
    snapshot_dir: Option<PathBuf>,
    /// How often: 30s, 15m, 1h, 1d.
    #[arg(long, default_value = "1h")]
    snapshot_every: String,
    #[arg(long, default_value_t = 24)]
    snapshot_keep: usize,
    /// The backup key (from `coffer snapshot keygen`, or a passphrase file); read at each
    /// snapshot, never replicated.
    #[arg(long, requires = "snapshot_dir")]
    snapshot_key_file: Option<PathBuf>,
    /// Validity of node certificates in seconds (read at `init`; default 90 days).
    #[arg(long)]
    cert_validity_secs: Option<u64>,
    /// Lifetime of grants in seconds (read at `init`; default 30).
    #[arg(long)]
    grant_ttl_secs: Option<u64>,
    /// Worker heartbeat period in milliseconds (read at `init`; default 2000).
    #[arg(long)]
    worker_heartbeat_ms: Option<u64>,
}

impl Tuning {
    fn apply(&self, c: &mut ManagerConfig) -> anyhow::Result<()> {
        if let Some(path) = &self.config {
            ConfigFile::load(path)?.apply(c)?;
        }
        if let Some(n) = self.raft_snapshot_every {
            c.raft.snapshot_every = n;
        }
        if let Some(n) = self.raft_keep_after_snapshot {
            c.raft.keep_after_snapshot = n;
        }
        if let Some(dir) = &self.snapshot_dir {
            let key_file = self
                .snapshot_key_file
                .clone()
                .ok_or_else(|| anyhow::anyhow!("--snapshot-dir needs --snapshot-key-file"))?;
            let every_secs = crate::local::config::parse_duration_secs(&self.snapshot_every)
                .map_err(|e| anyhow::anyhow!("--snapshot-every {e}"))?;
            c.snapshots = Some(crate::local::config::ScheduledSnapshots {
                dir: dir.clone(),
                every_secs,
                keep: self.snapshot_keep,
                key_file,
            });
        }
        if let Some(n) = self.cert_validity_secs {
            c.node_cert_validity_secs = n;
        }
        if let Some(n) = self.grant_ttl_secs {
            c.grant_ttl_secs = n;
        }
        if let Some(n) = self.worker_heartbeat_ms {
            c.worker_heartbeat_ms = n;
        }
        Ok(())
    }
}

/// What runs a worker's tasks.
#[derive(clap::Args, Debug)]
pub(crate) struct RuntimeArgs {
    /// `none`: write each task's secret files only (an external orchestrator runs it);
    /// `docker`: also run a container per task on the local Docker engine, with the task's
    /// secrets mounted read-only (default at join: none).
    #[arg(long, value_enum)]
    runtime: Option<RuntimeKind>,
    /// The Docker engine's socket (default /var/run/docker.sock).
    #[arg(long, value_name = "PATH")]
    docker_socket: Option<String>,
}

impl RuntimeArgs {
    fn apply(self, settings: &mut WorkerSettings) {
        if let Some(r) = self.runtime {
            settings.runtime = r;
        }
        if let Some(s) = self.docker_socket {
            settings.docker_socket = Some(s);
        }
    }
}

#[derive(Subcommand, Debug)]
pub(crate) enum WorkerCmd {
    /// Join a cluster with a worker join token, and run.
    Join {
        #[arg(long)]
        data_dir: PathBuf,
        #[command(flatten)]
        token: TokenArg,
        /// Address of any manager of the cluster.
        #[arg(long)]
        join: String,
        /// Where tasks' secrets are written; must be tmpfs (or ramfs).
        #[arg(long)]
        secrets_dir: PathBuf,
        /// Allow a secrets dir on persistent storage.
        #[arg(long)]
        insecure_disk: bool,
        /// A shell command run after a task's files change (COFFER_TASK_DIR, COFFER_SERVICE).
        #[arg(long)]
        on_change: Option<String>,
        /// The hostname to report (default: this machine's); unique among live nodes.
        #[arg(long)]
        hostname: Option<String>,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// Restart a worker from its data dir.
    Run {
        #[arg(long)]
        data_dir: PathBuf,
        /// Changes the runtime recorded at join (remembered).
        #[command(flatten)]
        runtime: RuntimeArgs,
        /// A manager to try first (repeat for several): after a restore, point the worker
        /// at the new cluster's managers. Remembered.
        #[arg(long)]
        join: Vec<String>,
    },
}

/// Cancelled on Ctrl-C or SIGTERM.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                t.cancel();
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        t.cancel();
    });
    token
}

pub(crate) fn config_for(at: &Placement, tuning: &Tuning) -> anyhow::Result<ManagerConfig> {
    let mut config = ManagerConfig::new(&at.data_dir, &at.listen);
    config.advertise = at.advertise.clone();
    config.hostname = at.hostname.clone();
    tuning.apply(&mut config)?;
    Ok(config)
}

pub(crate) async fn manager(cmd: ManagerCmd, format: Format) -> anyhow::Result<()> {
    let shutdown = shutdown_on_signal();
    let running = match cmd {
        ManagerCmd::Init { at, tuning, autolock } => {
            let mut config = config_for(&at, &tuning)?;
            config.autolock = autolock;
            config.validate()?;
            let listener = start::bind(&at.listen).await?;
            let (summary, running) = start::init_manager(config, listener, shutdown).await?;
            print_init(&summary, format, "initialized");
            running
        }
        ManagerCmd::Join { at, token, join, tuning } => {
            let token = token.take()?;
            let config = config_for(&at, &tuning)?;
            config.validate()?;
            let listener = start::bind(&at.listen).await?;
            start::join_manager(config, listener, &token, &join, shutdown).await?
        }
        ManagerCmd::Run { data_dir, tuning, force_new_cluster, yes_i_know, unlock_key_command, unlock_key_file } => {
            let mut config = start::restart_config(&data_dir)?;
            tuning.apply(&mut config)?;
            config.unlock = match (unlock_key_command, unlock_key_file) {
                (Some(cmd), _) => Some(crate::local::config::UnlockSource::Command(cmd)),
                (None, Some(f)) => {
                    eprintln!(
                        "warning: --unlock-key-file keeps the unlock key on this machine, which defeats \
                         autolock; use it for tests, and --unlock-key-command with a key service otherwise"
                    );
                    Some(crate::local::config::UnlockSource::File(f))
                }
                (None, None) => None,
            };
            if force_new_cluster {
                config.force_new_cluster = Some(crate::local::config::ForceNewCluster { yes_i_know });
            }
            config.validate()?;
            let listener = start::bind(&config.listen).await?;
            // Said once the port is bound: whoever reads it may unlock at once.
            if start::starts_locked(&data_dir)? {
                let advertise = config.advertise.clone().unwrap_or_default();
                match format {
                    Format::Json => print_json_line(&serde_json::json!({"event": "locked", "addr": advertise})),
                    Format::Table => println!(
                        "coffer: manager at {advertise} is locked (autolock); run `coffer cluster unlock --addr {advertise}`"
                    ),
                }
            }
            match start::restart_manager(config, listener, shutdown).await {
                Ok(running) => running,
                // SIGTERM while locked: a clean stop (systemd must not count it a failure).
                Err(e) if e.is::<start::StoppedLocked>() => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    };
    serve_until_stopped(running, format).await;
    Ok(())
}

/// Says that the manager serves, then waits until it has stopped.
pub(crate) async fn serve_until_stopped(running: start::RunningManager, format: Format) {
    let (id, addr) = (running.manager.id, running.manager.advertise.clone());
    match format {
        Format::Json => {
            print_json_line(&serde_json::json!({"event": "serving", "role": "manager", "node_id": id, "addr": addr}))
        }
        Format::Table => println!("coffer: manager {} serving on {addr}", node_hex(id)),
    }
    running.wait().await;
}

pub(crate) async fn worker(cmd: WorkerCmd, format: Format) -> anyhow::Result<()> {
    let shutdown = shutdown_on_signal();
    let running = match cmd {
        WorkerCmd::Join { data_dir, token, join, secrets_dir, insecure_disk, on_change, hostname, runtime } => {
            let token = token.take()?;
            let mut settings =
                WorkerSettings { hostname, ..WorkerSettings::new(secrets_dir, insecure_disk, on_change, &join) };
            runtime.apply(&mut settings);
            let w = start::join_worker(DataDir::new(&data_dir), &token, &join, settings, shutdown).await?;
            eprintln!("joined as worker {}", node_hex(w.identity.node_id));
            w
        }
        WorkerCmd::Run { data_dir, join, runtime } => {
            let dir = DataDir::new(&data_dir);
            if !join.is_empty() {
                start::point_worker_at(&dir, &join)?;
            }
            if runtime.runtime.is_some() || runtime.docker_socket.is_some() {
                let mut settings = WorkerSettings::load(&dir)?;
                runtime.apply(&mut settings);
                settings.save(&dir)?;
            }
            start::restart_worker(dir, shutdown).await?
        }
    };
    let (id, secrets) = (running.identity.node_id, running.settings.secrets_dir.display().to_string());
    match format {
        Format::Json => print_json_line(
            &serde_json::json!({"event": "running", "role": "worker", "node_id": id, "secrets_dir": secrets}),
        ),
        Format::Table => println!("coffer: worker {} running, secrets in {secrets}", node_hex(id)),
    }
    running.wait().await
}

/// The summary of a new cluster (`event`: `initialized`, or `restored` from a backup).
pub(crate) fn print_init(s: &InitSummary, format: Format, event: &str) {
    if format == Format::Json {
        print_json_line(&serde_json::json!({
            "event": event,
            "cluster_id": s.cluster_id,
            "node_id": s.node_id,
            "addr": s.addr,
            "worker_token": s.worker_token.as_str(),
            "manager_token": s.manager_token.as_str(),
            "client_dir": s.client_dir,
            "unlock_key": s.unlock_key.as_ref().map(|k| k.as_str()),
        }));
        return;
    }
    let what = if event == "restored" { "restored from the backup" } else { "created" };
    println!("Cluster {} {what}; this manager is node {} at {}.", s.cluster_id, node_hex(s.node_id), s.addr);
    println!();
    println!("Join tokens (shown once; `coffer join-token ROLE --rotate` makes new ones):");
    println!("  worker:  {}", s.worker_token.as_str());
    println!("  manager: {}", s.manager_token.as_str());
    println!();
    if let Some(key) = &s.unlock_key {
        if event == "restored" {
            println!("Autolock was on in the backup. A new unlock key (the backup's opens nothing here):");
        }
        println!("Unlock key (autolock; shown once, stored nowhere: a restarted manager waits for it):");
        println!("  {}", key.as_str());
        println!();
    }
    println!("Admin client bundle: {}", s.client_dir.display());
    println!("  export COFFER_ADDR={} COFFER_CLIENT_DIR={}", s.addr, s.client_dir.display());
}
