//! Exit codes scripts can rely on, and the error type of every client command:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | the cluster refused (bad input, not found, conflict, permission, a locked manager) |
//! | 2 | usage error (bad input caught before anything is sent), or a local problem (files, keys, data dir) |
//! | 3 | the cluster could not be reached or has no leader; retry later |

use std::process::ExitCode;

use coffer_api::client::ClientError;
use coffer_api::error::ErrorCode;
use coffer_api::rules::RuleError;

#[derive(Debug)]
pub(crate) enum CliError {
    /// A local problem or bad input caught before anything was sent.
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

impl From<RuleError> for CliError {
    fn from(e: RuleError) -> Self {
        CliError::Local(e.message)
    }
}

/// The exit code for a client error (see the table above).
pub(crate) fn exit_code(e: &ClientError) -> u8 {
    match e {
        ClientError::Bundle { .. } => 2,
        ClientError::Transport { .. } => 3,
        // A locked manager needs an operator (`coffer cluster unlock`), not a retry: 1.
        ClientError::Api { code: ErrorCode::Unavailable | ErrorCode::Internal, .. } => 3,
        ClientError::Api { .. } => 1,
    }
}

/// A command that runs a node: any failure is local (exit 2), reported once.
pub(crate) fn node_outcome(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A client command's outcome, reported once.
pub(crate) fn client_outcome(r: Result<(), CliError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Local(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(CliError::Reported(code)) => ExitCode::from(code),
        Err(CliError::Client(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}
