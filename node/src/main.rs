//! The `coffer` binary: parses arguments, calls the library, maps errors to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use coffer_node::{data_dir::DataDir, store_check};

#[derive(Parser, Debug)]
#[command(name = "coffer", version, about = "Coffer: a Raft-replicated secret store")]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand, Debug)]
enum Top {
    /// Offline tools for a stopped manager's store.
    #[command(subcommand)]
    Store(StoreCmd),
}

#[derive(Subcommand, Debug)]
enum StoreCmd {
    /// Open and authenticate every sealed record of a manager's data dir.
    Check {
        #[arg(long, env = "COFFER_DATA_DIR")]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("COFFER_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
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
    }
}
