//! `coffer service ...`: create, update, list, inspect, `ps` and remove services. Secret
//! references use Docker's `--secret` grammar (`source=NAME,target=T,mode=0400,...`).

use clap::Subcommand;
use coffer_api::rules;
use coffer_api::services::{ServiceCreate, ServiceInfo, ServiceUpdate};

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
        ServiceCmd::Create { name, replicas, constraints, secrets, labels } => {
            let req = ServiceCreate {
                name,
                replicas,
                constraints: resolve_constraints(&c, constraints).await?,
                secrets: specs(&secrets)?,
                labels: rules::parse_labels(&labels)?,
            };
            let s = c.create_service(&req).await?;
            println!("{}", s.id);
        }
        ServiceCmd::Update { service, secret_add, secret_rm, replicas, constraints } => {
            let update = ServiceUpdate {
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
            println!("{:<18} {:<5} {:<12}  {:<20} SECRET VERSIONS", "TASK", "SLOT", "NODE", "HOSTNAME");
            for t in tasks {
                let node = if t.node_id.is_some() { node_opt(t.node_id) } else { "(pending)".into() };
                let versions: Vec<String> = t.secret_versions.iter().map(|(id, v)| format!("{id}@{v}")).collect();
                println!(
                    "{:<18} {:<5} {:<12}  {:<20} {}",
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
