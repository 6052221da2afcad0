//! `coffer cluster status|unlock|unlock-key|update|compact`: the cluster as a whole,
//! autolock, and compacting every manager's log.
//!
//! The unlock key is read from standard input or typed at a prompt that does not echo;
//! never from an argument, which every local user could read in the process list.

use std::io::{IsTerminal, Read};

use clap::Subcommand;
use coffer_api::cluster::UnlockKeyIssued;

use crate::cli::exit::CliError;
use crate::cli::output::{print_json, Format};
use crate::cli::ClientOpts;

#[derive(Subcommand, Debug)]
pub(crate) enum ClusterCmd {
    /// Members, leader, term, log indexes, health and lock state, as the manager asked sees
    /// them.
    Status,
    /// Exit 0 when the manager asked (--addr) is ready (`/readyz`: it knows a leader and has
    /// applied what was committed), 3 when not: for health checks.
    Ready,
    /// Unlock a manager that restarted locked (autolock; --addr names it). The key is read
    /// from a prompt, or from standard input: `printf %s "$KEY" | coffer cluster unlock -`.
    Unlock {
        /// `-`: read the key from standard input. (Never the key itself: every local user
        /// can read a command's arguments.)
        stdin: Option<String>,
    },
    /// The unlock key (autolock).
    UnlockKey {
        /// Make a new unlock key; every manager re-wraps its store under it.
        #[arg(long, required = true)]
        rotate: bool,
        /// Print the key only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Build a Raft snapshot on every manager now and purge their logs up to it: a manager
    /// added next catches up from the snapshot instead of replaying the log.
    Compact,
    /// Cluster-wide settings.
    Update {
        /// Turn autolock on (a new unlock key is printed, once) or off.
        #[arg(long, action = clap::ArgAction::Set, required = true)]
        autolock: Option<bool>,
        /// Print the key only.
        #[arg(short, long)]
        quiet: bool,
    },
}

fn read_key(from_stdin: bool) -> Result<zeroize::Zeroizing<String>, CliError> {
    let stdin = std::io::stdin();
    if from_stdin || !stdin.is_terminal() {
        let mut text = zeroize::Zeroizing::new(String::new());
        stdin
            .lock()
            .take(4096)
            .read_to_string(&mut text)
            .map_err(|e| CliError::Local(format!("read the unlock key from standard input: {e}")))?;
        return Ok(text);
    }
    rpassword::prompt_password("unlock key: ")
        .map(zeroize::Zeroizing::new)
        .map_err(|e| CliError::Local(format!("read the unlock key: {e}")))
}

fn print_key(k: &UnlockKeyIssued, quiet: bool, format: Format) -> Result<(), CliError> {
    if format == Format::Json {
        return print_json(k);
    }
    match (&k.key, quiet) {
        (Some(key), true) => println!("{key}"),
        (Some(key), false) => {
            println!("Unlock key (generation {}), shown once; store it apart from the cluster:", k.generation);
            println!("  {key}");
            println!("A manager that restarts is locked until `coffer cluster unlock` gives it this key.");
        }
        (None, _) if !quiet => println!("autolock is off"),
        (None, _) => {}
    }
    Ok(())
}

pub(crate) async fn cluster(cmd: ClusterCmd, opts: &ClientOpts) -> Result<(), CliError> {
    match cmd {
        ClusterCmd::Status => crate::cli::nodes::cluster_status(opts).await,
        ClusterCmd::Ready => {
            opts.client()?.ready().await?;
            println!("ready {}", opts.addr);
            Ok(())
        }
        ClusterCmd::Unlock { stdin } => {
            if stdin.as_deref().is_some_and(|a| a != "-") {
                // Not echoed back: it may be the key.
                return Err(CliError::Local(
                    "give the unlock key on standard input (`-`) or at the prompt, never as an argument".into(),
                ));
            }
            let key = read_key(stdin.is_some())?;
            opts.client()?.unlock(key.trim()).await?;
            println!("unlocked {}", opts.addr);
            Ok(())
        }
        ClusterCmd::UnlockKey { rotate: _, quiet } => {
            let k = opts.client()?.rotate_unlock_key().await?;
            print_key(&k, quiet, opts.format)
        }
        ClusterCmd::Compact => compact(opts).await,
        ClusterCmd::Update { autolock, quiet } => {
            let enabled = autolock.unwrap_or(false);
            let k = opts.client()?.set_autolock(enabled).await?;
            print_key(&k, quiet, opts.format)
        }
    }
}

/// Every member in turn (each keeps its own log); one that fails is reported and the others
/// are still compacted.
async fn compact(opts: &ClientOpts) -> Result<(), CliError> {
    let client = opts.client()?;
    let members = client.status().await?.members;
    let mut done = Vec::new();
    let mut failed = None;
    for member in &members {
        match client.at(&member.addr).compact().await {
            Ok(c) => {
                if opts.format != Format::Json {
                    let purged =
                        c.purged_index.map_or("nothing purged".to_string(), |p| format!("log purged up to {p}"));
                    println!("{:016x} ({}): snapshot at {}, {purged}", c.node_id, member.addr, c.snapshot_index);
                }
                done.push(c);
            }
            Err(e) => {
                eprintln!("{:016x} ({}): {e}", member.id, member.addr);
                failed = Some(e);
            }
        }
    }
    if opts.format == Format::Json {
        print_json(&done)?;
    }
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
