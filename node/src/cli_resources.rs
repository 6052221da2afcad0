//! `coffer secret|service|token ...`: clients of `/v1/secrets`, `/v1/services` and
//! `/v1/tokens`. Secret values are read from a file or standard input (`-`), never from
//! an argument, so they stay out of shell history and `ps`.

use std::io::Read;
use std::path::Path;

use clap::{Subcommand, ValueEnum};
use coffer_api::services::{SecretRefSpec, ServiceCreate, ServiceInfo, ServiceUpdate};
use coffer_api::tokens::TokenScope;
use zeroize::Zeroizing;

use crate::cli::{client, lower, print_json, CliError, ClientOpts, Format};
use crate::secrets_api::parse_labels;
use crate::validate::MAX_SECRET_BYTES;

#[derive(Subcommand, Debug)]
pub enum SecretCmd {
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

#[derive(Subcommand, Debug)]
pub enum ServiceCmd {
    /// Create a service. SPEC = source=NAME[,target=T][,uid=U][,gid=G][,mode=0440][,version=N]
    Create {
        name: String,
        #[arg(long)]
        replicas: Option<u32>,
        #[arg(long = "constraint", value_name = "EXPR")]
        constraints: Vec<String>,
        #[arg(long = "secret", value_name = "SPEC")]
        secrets: Vec<String>,
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
    },
    /// Change a service: add or remove secret references, replicas, constraints.
    Update {
        service: String,
        #[arg(long = "secret-add", value_name = "SPEC")]
        secret_add: Vec<String>,
        #[arg(long = "secret-rm", value_name = "NAME")]
        secret_rm: Vec<String>,
        #[arg(long)]
        replicas: Option<u32>,
        /// Replace the constraints (repeat for several).
        #[arg(long = "constraint", value_name = "EXPR")]
        constraints: Vec<String>,
    },
    Ls,
    Inspect {
        service: String,
    },
    /// Where the service's replicas run.
    Ps {
        service: String,
    },
    Rm {
        #[arg(required = true)]
        services: Vec<String>,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum ScopeArg {
    ReadOnly,
    ReadWrite,
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create an API token (shown once).
    Create {
        name: String,
        #[arg(long, value_enum)]
        scope: ScopeArg,
    },
    Ls,
    /// Revoke a token: refused by every manager once this returns.
    Rm {
        id: String,
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

/// Parses `source=NAME[,target=T][,uid=U][,gid=G][,mode=0440][,version=N]`, or just `NAME`.
pub fn parse_spec(text: &str) -> Result<SecretRefSpec, String> {
    let mut spec =
        SecretRefSpec { source: String::new(), target: None, uid: None, gid: None, mode: None, version: None };
    if !text.contains('=') {
        spec.source = text.to_string();
        return Ok(spec);
    }
    for part in text.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| format!("secret spec {text:?}: {part:?} is not key=value"))?;
        let num =
            |what: &str| v.parse::<u32>().map_err(|_| format!("secret spec {text:?}: {what} {v:?} is not a number"));
        match k {
            "source" | "src" => spec.source = v.to_string(),
            "target" => spec.target = Some(v.to_string()),
            "uid" => spec.uid = Some(num("uid")?),
            "gid" => spec.gid = Some(num("gid")?),
            "mode" => {
                spec.mode = Some(
                    u32::from_str_radix(v.trim_start_matches("0o"), 8)
                        .map_err(|_| format!("secret spec {text:?}: mode {v:?} is not octal"))?,
                )
            }
            "version" => spec.version = Some(num("version")?),
            other => return Err(format!("secret spec {text:?}: unknown key {other:?}")),
        }
    }
    if spec.source.is_empty() {
        return Err(format!("secret spec {text:?} has no source=NAME"));
    }
    Ok(spec)
}

fn age(ms: u64) -> String {
    let now = crate::bootstrap::now_millis();
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

pub(crate) async fn secret(cmd: SecretCmd, opts: &ClientOpts) -> Result<(), CliError> {
    let c = client(opts)?;
    match cmd {
        SecretCmd::Create { name, file, labels } => {
            let labels = parse_labels(&labels).map_err(CliError::Local)?;
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
                return Err(CliError::Reported(crate::cli::exit_code_num(&e)));
            }
        }
    }
    Ok(())
}

fn print_service_table(services: &[ServiceInfo]) {
    println!("{:<18} {:<28} {:<9} SECRETS", "ID", "NAME", "REPLICAS");
    for s in services {
        let secrets: Vec<String> = s.secrets.iter().map(|r| format!("{}->{}", r.secret_name, r.target)).collect();
        println!("{:<18} {:<28} {:<9} {}", s.id, s.name, s.replicas, secrets.join(","));
    }
}

pub(crate) async fn service(cmd: ServiceCmd, opts: &ClientOpts) -> Result<(), CliError> {
    let c = client(opts)?;
    let specs = |v: &[String]| v.iter().map(|s| parse_spec(s)).collect::<Result<Vec<_>, _>>().map_err(CliError::Local);
    match cmd {
        ServiceCmd::Create { name, replicas, constraints, secrets, labels } => {
            let req = ServiceCreate {
                name,
                replicas,
                constraints,
                secrets: specs(&secrets)?,
                labels: parse_labels(&labels).map_err(CliError::Local)?,
            };
            let s = c.create_service(&req).await?;
            println!("{}", s.id);
        }
        ServiceCmd::Update { service, secret_add, secret_rm, replicas, constraints } => {
            let update = ServiceUpdate {
                expected_version: None,
                replicas,
                constraints: if constraints.is_empty() { None } else { Some(constraints) },
                secret_add: specs(&secret_add)?,
                secret_rm,
            };
            let s = c.update_service(&service, &update).await?;
            println!("{} updated (spec version {})", s.name, s.spec_version);
        }
        ServiceCmd::Ls => {
            let services = c.services().await?;
            if opts.format == Format::Json {
                return print_json(&services);
            }
            print_service_table(&services);
        }
        ServiceCmd::Inspect { service } => print_json(&c.service(&service).await?)?,
        ServiceCmd::Ps { service } => {
            let tasks = c.service_tasks(&service).await?;
            if opts.format == Format::Json {
                return print_json(&tasks);
            }
            println!("{:<18} {:<5} {:<22} {:<16} SECRET VERSIONS", "TASK", "SLOT", "NODE", "HOSTNAME");
            for t in tasks {
                let node = t.node_id.map(|n| n.to_string()).unwrap_or_else(|| "(pending)".into());
                let versions: Vec<String> = t.secret_versions.iter().map(|(id, v)| format!("{id}@{v}")).collect();
                println!(
                    "{:<18} {:<5} {:<22} {:<16} {}",
                    t.task_id,
                    t.slot,
                    node,
                    t.node_hostname.unwrap_or_default(),
                    versions.join(",")
                );
            }
        }
        ServiceCmd::Rm { services } => {
            for s in &services {
                c.remove_service(s).await?;
                println!("{s}");
            }
        }
    }
    Ok(())
}

pub(crate) async fn token(cmd: TokenCmd, opts: &ClientOpts) -> Result<(), CliError> {
    let c = client(opts)?;
    match cmd {
        TokenCmd::Create { name, scope } => {
            let scope = match scope {
                ScopeArg::ReadOnly => TokenScope::ReadOnly,
                ScopeArg::ReadWrite => TokenScope::ReadWrite,
            };
            let t = c.create_api_token(&name, scope).await?;
            let token = Zeroizing::new(t.token);
            println!("API token {} ({}), shown once:", t.id, lower(&t.scope));
            println!("  {}", token.as_str());
        }
        TokenCmd::Ls => {
            let list = c.api_tokens().await?;
            if opts.format == Format::Json {
                return print_json(&list.tokens);
            }
            println!("{:<18} {:<24} {:<11} {:<12} REVOKED", "ID", "NAME", "SCOPE", "CREATED");
            for t in list.tokens {
                println!(
                    "{:<18} {:<24} {:<11} {:<12} {}",
                    t.id,
                    t.name,
                    lower(&t.scope),
                    age(t.created_at_ms),
                    t.revoked
                );
            }
        }
        TokenCmd::Rm { id } => {
            c.revoke_api_token(&id).await?;
            println!("token {id} revoked");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_specs_parse_like_docker() {
        let s = parse_spec("source=db_password,target=db,uid=10,gid=20,mode=0400").expect("spec");
        assert_eq!(
            (s.source.as_str(), s.target.as_deref(), s.uid, s.gid, s.mode),
            ("db_password", Some("db"), Some(10), Some(20), Some(0o400))
        );
        assert_eq!(parse_spec("db_password").expect("bare name").source, "db_password");
        assert_eq!(parse_spec("source=x,version=3").expect("pinned").version, Some(3));
        for bad in ["target=db", "source=x,mode=999", "source=x,uid=-1", "source=x,colour=red", "source=x,oops"] {
            assert!(parse_spec(bad).is_err(), "{bad:?}");
        }
    }
}
