//! `coffer secret ...`: create, list, inspect, rotate and remove secrets. Values are read
//! from a file or standard input (`-`), never from an argument, so they stay out of shell
//! history and `ps`.

use std::io::Read;
use std::path::Path;

use clap::Subcommand;
use coffer_api::rules::{self, MAX_SECRET_BYTES};
use zeroize::Zeroizing;

use crate::cli::exit::{exit_code, CliError};
use crate::cli::output::{age, print_json, Format};
use crate::cli::ClientOpts;

#[derive(Subcommand, Debug)]
pub(crate) enum SecretCmd {
    /// Create a secret from FILE, or from standard input with `-`.
    Create {
        name: String,
        file: String,
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
    },
    /// List secrets; `--filter name=PREFIX`, `--filter label=K` or `label=K=V`.
    Ls {
        #[arg(long = "filter", short = 'f')]
        filters: Vec<String>,
        /// Print names only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show secrets' metadata (never their values).
    Inspect {
        #[arg(required = true)]
        secrets: Vec<String>,
    },
    /// Add a version from FILE or `-`; services that do not pin a version follow it.
    Rotate { secret: String, file: String },
    /// Remove secrets; refused while a service references one.
    Rm {
        #[arg(required = true)]
        secrets: Vec<String>,
    },
}

/// Reads a secret value from `file` or stdin (`-`), refusing more than 500 KiB.
fn read_value(file: &str) -> Result<Zeroizing<Vec<u8>>, CliError> {
    let mut buf = Zeroizing::new(Vec::new());
    let limit = (MAX_SECRET_BYTES + 1) as u64;
    let read = if file == "-" {
        std::io::stdin().lock().take(limit).read_to_end(&mut buf)
    } else {
        std::fs::File::open(Path::new(file)).and_then(|f| f.take(limit).read_to_end(&mut buf))
    };
    read.map_err(|e| CliError::Local(format!("read the value from {file}: {e}")))?;
    if buf.len() > MAX_SECRET_BYTES {
        return Err(CliError::Local(format!("{file}: a secret value is at most {MAX_SECRET_BYTES} bytes (500 KiB)")));
    }
    if buf.is_empty() {
        return Err(CliError::Local(format!("{file}: the value is empty")));
    }
    Ok(buf)
}

pub(crate) async fn secret(cmd: SecretCmd, opts: &ClientOpts) -> Result<(), CliError> {
    let c = opts.client()?;
    match cmd {
        SecretCmd::Create { name, file, labels } => {
            let labels = rules::parse_labels(&labels)?;
            let value = read_value(&file)?;
            let r = c.create_secret(&name, &value, labels).await?;
            println!("{}", r.id);
        }
        SecretCmd::Ls { filters, quiet } => {
            let mut name = None;
            let mut labels = Vec::new();
            for f in &filters {
                match f.split_once('=') {
                    Some(("name", v)) => name = Some(v.to_string()),
                    Some(("label", v)) => labels.push(v.to_string()),
                    _ => return Err(CliError::Local(format!("filter {f:?}: use name=PREFIX or label=K[=V]"))),
                }
            }
            let secrets = c.secrets_filtered(name.as_deref(), &labels).await?;
            if opts.format == Format::Json {
                return print_json(&secrets);
            }
            if quiet {
                secrets.iter().for_each(|s| println!("{}", s.name));
                return Ok(());
            }
            println!("{:<18} {:<28} {:<8} {:<12} USED BY", "ID", "NAME", "VERSION", "CREATED");
            for s in secrets {
                println!(
                    "{:<18} {:<28} {:<8} {:<12} {}",
                    s.id,
                    s.name,
                    s.latest_version,
                    age(s.created_at_ms),
                    s.used_by.join(",")
                );
            }
        }
        SecretCmd::Inspect { secrets } => {
            let mut out = Vec::new();
            for s in &secrets {
                out.push(c.secret(s).await?);
            }
            print_json(&out)?;
        }
        SecretCmd::Rotate { secret, file } => {
            let value = read_value(&file)?;
            let r = c.rotate_secret(&secret, &value).await?;
            println!("{} is now at version {}", r.name, r.version);
        }
        SecretCmd::Rm { secrets } => {
            let mut failed = None;
            for s in &secrets {
                match c.remove_secret(s).await {
                    Ok(()) => println!("{s}"),
                    Err(e) => {
                        eprintln!("error: {s}: {e}");
                        failed = Some(e);
                    }
                }
            }
            if let Some(e) = failed {
                return Err(CliError::Reported(exit_code(&e)));
            }
        }
    }
    Ok(())
}
