//! The `coffer` command line: parses arguments, calls the library, prints, and maps
//! outcomes to exit codes scripts can rely on ([`exit`]).
//!
//! Boundary: the CLI starts nodes only through [`crate::start`] (and `coffer dev`), and
//! talks to a cluster only through `coffer_api::client`; it imports no server module
//! (`trust` for an operator's own key, `local` for files).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use coffer_api::client::Client;

use crate::cli::cluster::ClusterCmd;
use crate::cli::daemon::{ManagerCmd, WorkerCmd};
use crate::cli::exit::{client_outcome, node_outcome, CliError};
use crate::cli::nodes::{NodeCmd, RoleArg};
use crate::cli::output::Format;
use crate::local::data_dir::DataDir;
use crate::local::store_check;

mod admins;
mod client;
mod cluster;
mod daemon;
mod events;
mod exit;
mod nodes;
mod output;
mod secrets;
mod services;
mod snapshot;
mod tokens;

pub use daemon::shutdown_on_signal;

#[derive(Parser, Debug)]
#[command(name = "coffer", version, about = "Coffer: a Raft-replicated secret store")]
pub struct Cli {
    #[command(subcommand)]
    command: Top,
    #[command(flatten)]
    client: ClientOpts,
    /// Log lines as text (coloured on a terminal) or as JSON objects, on stderr.
    #[arg(long, value_enum, global = true, default_value = "text", env = "COFFER_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Clone)]
pub(crate) struct ClientOpts {
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
    /// Output: tables for people, JSON for scripts.
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

impl ClientOpts {
    pub(crate) fn client_dir(&self) -> Option<PathBuf> {
        self.client_dir.clone()
    }

    /// The client these options describe: the admin bundle, or an API token with the
    /// bundle's CA.
    pub(crate) fn client(&self) -> Result<Client, CliError> {
        let dir = self.client_dir.clone().ok_or_else(|| {
            CliError::Local(
                "no client bundle: pass --client-dir or set COFFER_CLIENT_DIR (see `coffer manager init`)".into(),
            )
        })?;
        match &self.token {
            Some(token) => {
                let ca_path = dir.join("ca.pem");
                let ca = std::fs::read_to_string(&ca_path)
                    .map_err(|e| CliError::Local(format!("{}: {e}", ca_path.display())))?;
                Client::with_token(&ca, token, &self.addr).map_err(|e| CliError::Local(e.to_string()))
            }
            None => Ok(Client::from_dir(&dir, &self.addr)?),
        }
    }
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
        cmd: secrets::SecretCmd,
    },
    /// Create, update, list, inspect and remove services.
    Service {
        #[command(subcommand)]
        cmd: services::ServiceCmd,
    },
    /// API tokens for tooling (needs the admin bundle).
    Token {
        #[command(subcommand)]
        cmd: tokens::TokenCmd,
    },
    /// Admin credentials: issue (or re-issue), list, revoke.
    Admin {
        #[command(subcommand)]
        cmd: admins::AdminCmd,
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
    /// Backups: save the whole cluster under your key, inspect a backup, restore one into
    /// a new cluster.
    Snapshot {
        #[command(subcommand)]
        cmd: snapshot::SnapshotCmd,
    },
    /// Offline tools for a stopped manager's store.
    #[command(subcommand)]
    Store(StoreCmd),
    /// Follow the cluster's changes (secrets, services, tasks, nodes; never values).
    Events {
        /// Resume after this index: the last one printed before a cut.
        #[arg(long)]
        since: Option<u64>,
    },
    /// The admin bundle for other clients (the docker CLI).
    Client {
        #[command(subcommand)]
        cmd: client::ClientCmd,
    },
}

#[derive(Subcommand, Debug)]
enum StoreCmd {
    /// Open and authenticate every sealed record of a stopped manager's data dir.
    Check {
        #[arg(long, env = "COFFER_DATA_DIR")]
        data_dir: PathBuf,
    },
}

/// Logs to stderr, filtered by `COFFER_LOG` (default `info,openraft=error`): text with
/// colours only on a terminal (a file or a pipe gets no escape codes), or JSON objects.
fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("COFFER_LOG").unwrap_or_else(|_| "info,openraft=error".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// `coffer secret ls | head`: when the reader of our standard output goes away, `println!`
/// panics on the broken pipe. That is the reader's choice, not our failure: stop quietly,
/// with the status a shell gives a process ended by SIGPIPE, instead of printing a panic.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

/// Parses `std::env::args` and runs the command.
pub fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    init_logging(cli.log_format);
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
    let opts = &cli.client;
    match cli.command {
        Top::Manager(cmd) => node_outcome(daemon::manager(cmd, opts.format).await),
        Top::Worker(cmd) => node_outcome(daemon::worker(cmd, opts.format).await),
        Top::Dev { managers, workers, dir } => node_outcome(
            crate::dev::run(managers, workers, dir, opts.format == Format::Json, shutdown_on_signal()).await,
        ),
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
        Top::Node { cmd } => client_outcome(nodes::node(cmd, opts).await),
        Top::JoinToken { role, rotate, quiet } => {
            client_outcome(nodes::join_token(role.into(), rotate, quiet, opts).await)
        }
        Top::Cluster { cmd } => client_outcome(cluster::cluster(cmd, opts).await),
        Top::Secret { cmd } => client_outcome(secrets::secret(cmd, opts).await),
        Top::Service { cmd } => client_outcome(services::service(cmd, opts).await),
        Top::Token { cmd } => client_outcome(tokens::token(cmd, opts).await),
        Top::Admin { cmd } => client_outcome(admins::admin(cmd, opts).await),
        Top::Snapshot { cmd: cmd @ snapshot::SnapshotCmd::Restore { .. } } => {
            node_outcome(snapshot::restore(cmd, opts.format).await)
        }
        Top::Snapshot { cmd } => client_outcome(snapshot::snapshot(cmd, opts).await),
        Top::Client { cmd } => client_outcome(client::client(cmd, opts)),
        Top::Events { since } => client_outcome(events::events(since, opts).await),
    }
}
