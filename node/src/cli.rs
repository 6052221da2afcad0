//! The `coffer` command line. Parses arguments, calls the library, prints, and maps
//! outcomes to exit codes scripts can rely on:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | the cluster refused (bad input, not found, conflict, permission) |
//! | 2 | usage error, or a local problem (files, keys, data dir) |
//! | 3 | the cluster could not be reached or has no leader; retry later |

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use coffer_api::cluster::{Availability, NodeInfo, NodeRole};
use coffer_api::error::ErrorCode;
use tokio_util::sync::CancellationToken;

use crate::config::ManagerConfig;
use crate::data_dir::{DataDir, NodeIdentity};
use crate::manager::{bind, Manager, Startup};
use crate::{bootstrap, dev, store_check};
use coffer_api::client::{Client as AdminClient, ClientError};

#[derive(Parser, Debug)]
#[command(name = "coffer", version, about = "Coffer: a Raft-replicated secret store")]
pub struct Cli {
    #[command(subcommand)]
    command: Top,
    #[command(flatten)]
    client: ClientOpts,
}

#[derive(Args, Clone)]
pub struct ClientOpts {
    /// Address of any manager.
    #[arg(long, env = "COFFER_ADDR", global = true, default_value = "127.0.0.1:7370")]
    pub(crate) addr: String,
    /// Directory with ca.pem, client.pem and client.key (written by `manager init`).
    #[arg(long, env = "COFFER_CLIENT_DIR", global = true)]
    client_dir: Option<PathBuf>,
    /// Authenticate with an API token instead of the bundle's certificate (the bundle's
    /// ca.pem is still used to check the manager).
    #[arg(long, env = "COFFER_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Output format of listings.
    #[arg(long, value_enum, global = true, default_value = "table")]
    pub(crate) format: Format,
}

impl std::fmt::Debug for ClientOpts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOpts")
            .field("addr", &self.addr)
            .field("client_dir", &self.client_dir)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Top {
    /// Run a manager: create a cluster, join one, or restart.
    #[command(subcommand)]
    Manager(ManagerCmd),
    /// Run a worker: join a cluster, or restart.
    #[command(subcommand)]
    Worker(WorkerCmd),
    /// List, inspect and change nodes.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Rotate the join tokens (they are shown once; only their hashes are stored).
    JoinToken {
        role: RoleArg,
        /// Make a new token; the old one stops admitting new nodes.
        #[arg(long)]
        rotate: bool,
        /// Print the token only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Create, list, inspect, rotate and remove secrets. Values come from a file or stdin.
    Secret {
        #[command(subcommand)]
        cmd: crate::cli_resources::SecretCmd,
    },
    /// Create, update, list, inspect and remove services.
    Service {
        #[command(subcommand)]
        cmd: crate::cli_resources::ServiceCmd,
    },
    /// API tokens for tooling (needs the admin bundle).
    Token {
        #[command(subcommand)]
        cmd: crate::cli_resources::TokenCmd,
    },
    /// Cluster-wide views.
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// A whole local cluster on loopback, for trying Coffer out.
    Dev {
        #[arg(long, default_value_t = 3)]
        managers: usize,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Where the managers keep their data dirs (default: a temporary directory, removed on exit).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Offline tools for a stopped manager's store.
    #[command(subcommand)]
    Store(StoreCmd),
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum RoleArg {
    Worker,
    Manager,
}

impl From<RoleArg> for NodeRole {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Worker => NodeRole::Worker,
            RoleArg::Manager => NodeRole::Manager,
        }
    }
}

#[derive(Subcommand, Debug)]
enum ManagerCmd {
    /// Create a new cluster with this manager as its first member, and serve.
    Init {
        #[command(flatten)]
        at: Placement,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Join an existing cluster with a manager join token, and serve.
    Join {
        #[command(flatten)]
        at: Placement,
        #[arg(long, env = "COFFER_JOIN_TOKEN", hide_env_values = true)]
        token: String,
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
    },
}

/// Where a new manager keeps its data and listens.
#[derive(Args, Debug, Clone)]
struct Placement {
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long, default_value = "0.0.0.0:7370")]
    listen: String,
    /// The address other nodes dial (default: the bound listen address).
    #[arg(long)]
    advertise: Option<String>,
}

/// Raft tuning, for tests and benchmarks; the defaults suit production.
#[derive(Args, Debug, Clone)]
struct Tuning {
    #[arg(long, hide = true)]
    snapshot_every: Option<u64>,
    #[arg(long, hide = true)]
    keep_after_snapshot: Option<u64>,
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
    fn apply(&self, c: &mut ManagerConfig) {
        if let Some(n) = self.snapshot_every {
            c.raft.snapshot_every = n;
        }
        if let Some(n) = self.keep_after_snapshot {
            c.raft.keep_after_snapshot = n;
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
    }
}

#[derive(Subcommand, Debug)]
enum WorkerCmd {
    /// Join a cluster with a worker join token, and run.
    Join {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, env = "COFFER_JOIN_TOKEN", hide_env_values = true)]
        token: String,
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
    },
    /// Restart a worker from its data dir.
    Run {
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum NodeCmd {
    Ls,
    Inspect {
        node: String,
    },
    /// Make a manager that is a learner a voter.
    Promote {
        node: String,
    },
    /// Make a voting manager a learner (it keeps a copy of the state but no vote).
    Demote {
        node: String,
    },
    /// Remove a node: its certificate is refused everywhere from now on.
    Rm {
        node: String,
    },
    Update {
        node: String,
        #[arg(long, value_enum)]
        availability: AvailabilityArg,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum AvailabilityArg {
    Active,
    Drain,
    Pause,
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// Members, leader, term, log indexes and health, as the manager asked sees them.
    Status,
}

#[derive(Subcommand, Debug)]
enum StoreCmd {
    /// Open and authenticate every sealed record of a stopped manager's data dir.
    Check {
        #[arg(long, env = "COFFER_DATA_DIR")]
        data_dir: PathBuf,
    },
}

/// Parses `std::env::args` and runs the command.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COFFER_LOG").unwrap_or_else(|_| "info,openraft=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Top::Manager(cmd) => outcome(manager(cmd).await),
        Top::Worker(cmd) => outcome(worker(cmd).await),
        Top::Dev { managers, workers, dir } => outcome(dev::run(managers, workers, dir, shutdown_on_signal()).await),
        Top::Store(StoreCmd::Check { data_dir }) => match store_check::check(&DataDir::new(&data_dir)) {
            Ok(r) => {
                println!(
                    "ok: {} log entries, {} metadata records, {} state records opened and verified",
                    r.log_entries, r.metadata_records, r.state_records
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {}: {e}", data_dir.display());
                ExitCode::from(2)
            }
        },
        Top::Node { cmd } => client_outcome(node(cmd, &cli.client).await),
        Top::JoinToken { role, rotate, quiet } => {
            client_outcome(join_token(role.into(), rotate, quiet, &cli.client).await)
        }
        Top::Cluster { cmd: ClusterCmd::Status } => client_outcome(cluster_status(&cli.client).await),
        Top::Secret { cmd } => client_outcome(crate::cli_resources::secret(cmd, &cli.client).await),
        Top::Service { cmd } => client_outcome(crate::cli_resources::service(cmd, &cli.client).await),
        Top::Token { cmd } => client_outcome(crate::cli_resources::token(cmd, &cli.client).await),
    }
}

fn outcome(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn client_outcome(r: Result<(), CliError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Local(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(CliError::Reported(code)) => ExitCode::from(code),
        Err(CliError::Client(e)) => {
            eprintln!("error: {e}");
            exit_code(&e)
        }
    }
}

/// The exit code for a client error (see the table at the top of this module).
pub(crate) fn exit_code(e: &ClientError) -> ExitCode {
    ExitCode::from(exit_code_num(e))
}

pub(crate) fn exit_code_num(e: &ClientError) -> u8 {
    match e {
        ClientError::Bundle { .. } => 2,
        ClientError::Transport { .. } => 3,
        ClientError::Api { code: ErrorCode::Unavailable | ErrorCode::Locked | ErrorCode::Internal, .. } => 3,
        ClientError::Api { .. } => 1,
    }
}

#[derive(Debug)]
pub(crate) enum CliError {
    Local(String),
    Client(ClientError),
    /// Already reported item by item; exit with this code.
    Reported(u8),
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        CliError::Client(e)
    }
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

async fn manager(cmd: ManagerCmd) -> anyhow::Result<()> {
    let shutdown = shutdown_on_signal();
    let (config, startup) = match cmd {
        ManagerCmd::Init { at: Placement { data_dir, listen, advertise }, tuning } => {
            let mut config = ManagerConfig::new(&data_dir, &listen);
            config.advertise = advertise;
            tuning.apply(&mut config);
            config.validate().map_err(anyhow::Error::msg)?;
            let listener = bind(&listen).await?;
            let (b, summary) = bootstrap::init_data_dir(&config, listener.local_addr()?)?;
            print_init(&summary);
            (config, Startup { listener, bootstrap: Some(b) })
        }
        ManagerCmd::Join { at: Placement { data_dir, listen, advertise }, token, join, tuning } => {
            if std::env::var_os("COFFER_JOIN_TOKEN").is_none() {
                eprintln!(
                    "warning: --token is visible to local users in the process list while this manager \
                     runs; prefer COFFER_JOIN_TOKEN"
                );
            }
            let mut config = ManagerConfig::new(&data_dir, &listen);
            config.advertise = advertise.clone();
            tuning.apply(&mut config);
            config.validate().map_err(anyhow::Error::msg)?;
            let listener = bind(&listen).await?;
            let bound = listener.local_addr()?;
            let adv: SocketAddr = match &advertise {
                Some(a) => a.parse().map_err(|_| anyhow::anyhow!("advertise address {a:?} is not ip:port"))?,
                None => bound,
            };
            if adv.ip().is_unspecified() {
                anyhow::bail!("listening on {bound}: give --advertise with an address other nodes can dial");
            }
            bootstrap::join_data_dir(&DataDir::new(&data_dir), NodeRole::Manager, &token, &join, bound, adv).await?;
            (config, Startup { listener, bootstrap: None })
        }
        ManagerCmd::Run { data_dir, tuning } => {
            let identity = NodeIdentity::load(&DataDir::new(&data_dir))?;
            let mut config = ManagerConfig::new(&data_dir, &identity.listen);
            config.advertise = Some(identity.advertise.clone());
            tuning.apply(&mut config);
            let listener = bind(&identity.listen).await?;
            (config, Startup { listener, bootstrap: None })
        }
    };
    let running = Manager::start(config, startup, shutdown).await?;
    println!("coffer: manager {} serving on {}", running.manager.id, running.manager.advertise);
    running.serving.await?;
    Ok(())
}

async fn worker(cmd: WorkerCmd) -> anyhow::Result<()> {
    let shutdown = shutdown_on_signal();
    let data_dir = match cmd {
        WorkerCmd::Join { data_dir, token, join, secrets_dir, insecure_disk, on_change } => {
            let dir = DataDir::new(&data_dir);
            let settings = crate::worker::settings(secrets_dir, insecure_disk, on_change, &join);
            let id = crate::worker::join(&dir, &token, &join, settings).await?;
            eprintln!("joined as worker {}", id.node_id);
            dir
        }
        WorkerCmd::Run { data_dir } => DataDir::new(&data_dir),
    };
    crate::worker::run(data_dir, shutdown).await
}

fn print_init(s: &bootstrap::InitSummary) {
    println!("Cluster {} created; this manager is node {} at {}.", s.cluster_id, s.node_id, s.addr);
    println!();
    println!("Join tokens (shown once; `coffer join-token ROLE --rotate` makes new ones):");
    println!("  worker:  {}", s.worker_token.as_str());
    println!("  manager: {}", s.manager_token.as_str());
    println!();
    println!("Admin client bundle: {}", s.client_dir.display());
    println!("  export COFFER_ADDR={} COFFER_CLIENT_DIR={}", s.addr, s.client_dir.display());
}

pub(crate) fn client(opts: &ClientOpts) -> Result<AdminClient, CliError> {
    let dir = opts.client_dir.clone().ok_or_else(|| {
        CliError::Local(
            "no client bundle: pass --client-dir or set COFFER_CLIENT_DIR (see `coffer manager init`)".into(),
        )
    })?;
    match &opts.token {
        Some(token) => {
            let ca_path = dir.join("ca.pem");
            let ca = std::fs::read_to_string(&ca_path)
                .map_err(|e| CliError::Local(format!("{}: {e}", ca_path.display())))?;
            AdminClient::with_token(&ca, token, &opts.addr).map_err(|e| CliError::Local(e.to_string()))
        }
        None => Ok(AdminClient::from_dir(&dir, &opts.addr)?),
    }
}

/// A node named by id, or by a hostname that only one node has.
async fn resolve_node(c: &AdminClient, name: &str) -> Result<u64, CliError> {
    if let Ok(id) = name.parse() {
        return Ok(id);
    }
    let matches: Vec<u64> = c.nodes().await?.into_iter().filter(|n| n.hostname == name).map(|n| n.id).collect();
    match matches.as_slice() {
        [id] => Ok(*id),
        [] => Err(CliError::Local(format!("no node has id or hostname {name:?}"))),
        _ => Err(CliError::Local(format!("several nodes have hostname {name:?}; use the node id"))),
    }
}

pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(v).map_err(|e| CliError::Local(e.to_string()))?;
    println!("{text}");
    Ok(())
}

pub(crate) fn lower<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn print_nodes(nodes: &[NodeInfo]) {
    println!(
        "{:<20} {:<8} {:<16} {:<22} {:<7} {:<12} {:<8}",
        "ID", "ROLE", "HOSTNAME", "ADDRESS", "STATUS", "AVAILABILITY", "RAFT"
    );
    for n in nodes {
        println!(
            "{:<20} {:<8} {:<16} {:<22} {:<7} {:<12} {:<8}",
            n.id,
            lower(&n.role),
            n.hostname,
            n.addr,
            lower(&n.status),
            lower(&n.availability),
            lower(&n.raft)
        );
    }
}

async fn node(cmd: NodeCmd, opts: &ClientOpts) -> Result<(), CliError> {
    let c = client(opts)?;
    match cmd {
        NodeCmd::Ls => {
            let nodes = c.nodes().await?;
            if opts.format == Format::Json {
                return print_json(&nodes);
            }
            print_nodes(&nodes);
        }
        NodeCmd::Inspect { node } => {
            let id = resolve_node(&c, &node).await?;
            print_json(&c.node(id).await?)?;
        }
        NodeCmd::Promote { node } => {
            let id = resolve_node(&c, &node).await?;
            c.promote(id).await?;
            println!("node {id} is a voting manager");
        }
        NodeCmd::Demote { node } => {
            let id = resolve_node(&c, &node).await?;
            c.demote(id).await?;
            println!("node {id} no longer votes");
        }
        NodeCmd::Rm { node } => {
            let id = resolve_node(&c, &node).await?;
            c.remove(id).await?;
            println!("node {id} removed; its certificate is refused from now on");
        }
        NodeCmd::Update { node, availability } => {
            let id = resolve_node(&c, &node).await?;
            let a = match availability {
                AvailabilityArg::Active => Availability::Active,
                AvailabilityArg::Drain => Availability::Drain,
                AvailabilityArg::Pause => Availability::Pause,
            };
            c.set_availability(id, a).await?;
            println!("node {id} is now {}", lower(&a));
        }
    }
    Ok(())
}

async fn join_token(role: NodeRole, rotate: bool, quiet: bool, opts: &ClientOpts) -> Result<(), CliError> {
    let c = client(opts)?;
    let t = if rotate { c.rotate_token(role).await? } else { c.show_token(role).await? };
    let token = zeroize::Zeroizing::new(t.token);
    if quiet {
        println!("{}", token.as_str());
    } else {
        let role = lower(&role);
        println!("New {role} join token (shown once; the previous one no longer admits nodes):");
        println!("  {}", token.as_str());
        println!("Join with: coffer {role} join --token <token> --join {} ...", opts.addr);
    }
    Ok(())
}

async fn cluster_status(opts: &ClientOpts) -> Result<(), CliError> {
    let s = client(opts)?.status().await?;
    if opts.format == Format::Json {
        return print_json(&s);
    }
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    println!("cluster:   {}", s.cluster_id);
    println!("answered by node {}", s.node_id);
    println!("leader:    {}", opt(s.leader_id));
    println!("term:      {}", s.term);
    println!(
        "log:       last {}, committed {}, applied {}",
        opt(s.last_log_index),
        opt(s.committed_index),
        opt(s.applied_index)
    );
    println!("health:    {}", if s.healthy { "healthy" } else { "unhealthy" });
    println!("{:<20} {:<22} {:<6} {:<8}", "MEMBER", "ADDRESS", "VOTER", "MATCHED");
    for m in &s.members {
        println!("{:<20} {:<22} {:<6} {:<8}", m.id, m.addr, m.voter, opt(m.matched_index));
    }
    Ok(())
}
