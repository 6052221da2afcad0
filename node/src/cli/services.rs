//! `coffer service ...`: create, update, list, inspect, `ps` and remove services. Secret
//! references use Docker's `--secret` grammar (`source=NAME,target=T,mode=0400,...`).

use clap::Subcommand;
use coffer_api::rules;
use coffer_api::services::{RunSpec, ServiceCreate, ServiceInfo, ServiceUpdate};

use crate::cli::exit::CliError;
use crate::cli::output::{node_opt, print_json, resolve_node, Format};
use crate::cli::ClientOpts;

#[derive(Subcommand, Debug)]
pub(crate) enum ServiceCmd {
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
        #[command(flatten)]
        run: RunArgs,
        /// The container's command (its arguments), after `--`: `-- sleep 1d`.
        #[arg(last = true, value_name = "ARG")]
        args: Vec<String>,
    },
    /// Change a service: add or remove secret references, replicas, constraints, what it runs.
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
        #[command(flatten)]
        run: RunArgs,
        /// Replace the container's command (its arguments), after `--`.
        #[arg(last = true, value_name = "ARG")]
        args: Vec<String>,
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

/// What a service's tasks run on workers with `--runtime docker`.
#[derive(clap::Args, Debug)]
pub(crate) struct RunArgs {
    /// The container image, as the workers' engines know it (images are not pulled). On
    /// update, an empty value removes it (files only).
    #[arg(long, value_name = "IMAGE")]
    image: Option<String>,
    /// The container's entrypoint, one word per flag: `--command sh --command -c`.
    #[arg(long = "command", value_name = "WORD", allow_hyphen_values = true)]
    command: Vec<String>,
    /// An environment entry (repeat for several); on update, replaces them all.
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Where the container sees the task's secrets, read-only (default /run/secrets).
    #[arg(long, value_name = "PATH")]
    secrets_mount: Option<String>,
    /// What the container is told when a secret changes: none (the file is replaced in
    /// place), restart, or signal=NAME (such as signal=SIGHUP).
    #[arg(long, value_name = "WHAT")]
    on_secret_change: Option<String>,
}

impl RunArgs {
    fn spec(self, args: Vec<String>) -> Result<RunSpec, CliError> {
        let spec = RunSpec {
            image: self.image,
            command: self.command,
            args,
            env: self.env,
            secrets_mount: self.secrets_mount,
            on_secret_change: self.on_secret_change,
        };
        rules::run_spec(&RunSpec { image: spec.image.clone().filter(|i| !i.is_empty()), ..spec.clone() })?;
        Ok(spec)
    }
}

fn print_service_table(services: &[ServiceInfo]) {
    println!("{:<18} {:<28} {:<9} SECRETS", "ID", "NAME", "REPLICAS");
    for s in services {
        let secrets: Vec<String> = s.secrets.iter().map(|r| format!("{}->{}", r.secret_name, r.target)).collect();
        println!("{:<18} {:<28} {:<9} {}", s.id, s.name, s.replicas, secrets.join(","));
    }
}

/// `node.id==X` with X as people see it (a hex id or prefix, a hostname) becomes the API's
/// decimal id. Needs the node list (admin bundle); without it the constraint goes as written
/// and the cluster says what it accepts.
async fn resolve_constraints(
    c: &coffer_api::client::Client,
    constraints: Vec<String>,
) -> Result<Vec<String>, CliError> {
    let mut nodes = None;
    let mut out = Vec::new();
    for text in constraints {
        let split = text
            .split_once("==")
            .map(|(l, r)| (l, "==", r))
            .or_else(|| text.split_once("!=").map(|(l, r)| (l, "!=", r)));
        match split {
            Some((lhs, op, value)) if lhs.trim() == "node.id" && value.trim().parse::<u64>().is_err() => {
                if nodes.is_none() {
                    nodes = c.nodes().await.ok();
                }
                match &nodes {
                    Some(list) => out.push(format!("node.id{op}{}", resolve_node(list, value.trim())?)),
                    None => out.push(text),
                }
            }
            _ => out.push(text),
        }
    }
    Ok(out)
}

pub(crate) async fn service(cmd: ServiceCmd, opts: &ClientOpts) -> Result<(), CliError> {
    let c = opts.client()?;
    let specs = |v: &[String]| v.iter().map(|s| rules::parse_secret_spec(s)).collect::<Result<Vec<_>, _>>();
    match cmd {
        ServiceCmd::Create { name, replicas, constraints, secrets, labels, run, args } => {
            let run = run.spec(args)?;
            let req = ServiceCreate {
                name,
                replicas,
                constraints: resolve_constraints(&c, constraints).await?,
                secrets: specs(&secrets)?,
                labels: rules::parse_labels(&labels)?,
                run,
            };
            let s = c.create_service(&req).await?;
            println!("{}", s.id);
        }
        ServiceCmd::Update { service, secret_add, secret_rm, replicas, constraints, run, args } => {
            let run = run.spec(args)?;
            let update = ServiceUpdate {
                image: run.image,
                command: Some(run.command).filter(|c| !c.is_empty()),
                args: Some(run.args).filter(|a| !a.is_empty()),
                env: Some(run.env).filter(|e| !e.is_empty()),
                secrets_mount: run.secrets_mount,
                on_secret_change: run.on_secret_change,
                expected_version: None,
                replicas,
                constraints: if constraints.is_empty() {
                    None
                } else {
                    Some(resolve_constraints(&c, constraints).await?)
                },
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
            println!("{:<18} {:<5} {:<12}  {:<20} {:<36} STATE", "TASK", "SLOT", "NODE", "HOSTNAME", "SECRET VERSIONS");
            for t in tasks {
                let node = if t.node_id.is_some() { node_opt(t.node_id) } else { "(pending)".into() };
                let versions: Vec<String> = t.secret_versions.iter().map(|(id, v)| format!("{id}@{v}")).collect();
                println!(
                    "{:<18} {:<5} {:<12}  {:<20} {:<36} {}",
                    t.task_id,
                    t.slot,
                    node,
                    t.node_hostname.unwrap_or_default(),
                    versions.join(","),
                    t.status
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
