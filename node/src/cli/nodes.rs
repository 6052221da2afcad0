//! `coffer node ...`, `coffer join-token ...` and `coffer cluster status`.

use clap::{Subcommand, ValueEnum};
use coffer_api::cluster::{Availability, NodeInfo, NodeRole, NodeUpdate};
use coffer_api::rules;

use crate::cli::exit::CliError;
use crate::cli::output::{lower, node_addr, node_opt, node_short, print_json, resolve_node, Format};
use crate::cli::ClientOpts;

#[derive(Subcommand, Debug)]
pub(crate) enum NodeCmd {
    /// List nodes (ids are shortened; any unique prefix, the full id or a hostname names a node).
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
    /// Remove a node: its certificate is refused everywhere from now on. A voting manager
    /// must be demoted first, or removed with --force (a dead manager that will not come
    /// back; the remaining managers must still have a quorum).
    Rm {
        node: String,
        #[arg(long)]
        force: bool,
    },
    /// Change a node's availability and labels. Labels are set by operators only (a node
    /// cannot set its own): place security-relevant services with `node.labels.K==V`
    /// rather than `node.hostname`, which is what the node itself reports.
    Update {
        node: String,
        #[arg(long, value_enum)]
        availability: Option<AvailabilityArg>,
        #[arg(long = "label-add", value_name = "K=V")]
        label_add: Vec<String>,
        #[arg(long = "label-rm", value_name = "K")]
        label_rm: Vec<String>,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub(crate) enum AvailabilityArg {
    Active,
    Drain,
    Pause,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub(crate) enum RoleArg {
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

fn print_nodes(nodes: &[NodeInfo]) {
    println!(
        "{:<12}  {:<8} {:<20} {:<22} {:<7} {:<12} {:<8}",
        "ID", "ROLE", "HOSTNAME", "ADDRESS", "STATUS", "AVAILABILITY", "RAFT"
    );
    for n in nodes {
        println!(
            "{:<12}  {:<8} {:<20} {:<22} {:<7} {:<12} {:<8}",
            node_short(n.id),
            lower(&n.role),
            n.hostname,
            node_addr(&n.addr),
            lower(&n.status),
            lower(&n.availability),
            lower(&n.raft)
        );
    }
}

pub(crate) async fn node(cmd: NodeCmd, opts: &ClientOpts) -> Result<(), CliError> {
    let c = opts.client()?;
    // A decimal id goes to the cluster as it is (a removed node can still be inspected, and
    // an unknown one is the cluster's `not_found`); other names are looked up.
    let resolve = |name: String| {
        let c = c.clone();
        async move {
            match name.parse::<u64>() {
                Ok(id) if name.len() > 16 => Ok(id),
                _ => resolve_node(&c.nodes().await?, &name),
            }
        }
    };
    match cmd {
        NodeCmd::Ls => {
            let nodes = c.nodes().await?;
            if opts.format == Format::Json {
                return print_json(&nodes);
            }
            print_nodes(&nodes);
        }
        NodeCmd::Inspect { node } => {
            let id = resolve(node).await?;
            print_json(&c.node(id).await?)?;
        }
        NodeCmd::Promote { node } => {
            let id = resolve(node).await?;
            c.promote(id).await?;
            println!("node {} is a voting manager", node_short(id));
        }
        NodeCmd::Demote { node } => {
            let id = resolve(node).await?;
            c.demote(id).await?;
            println!("node {} no longer votes", node_short(id));
        }
        NodeCmd::Rm { node, force } => {
            let id = resolve(node).await?;
            if force {
                c.remove_forced(id).await?;
            } else {
                c.remove(id).await?;
            }
            println!("node {} removed; its certificate is refused from now on", node_short(id));
        }
        NodeCmd::Update { node, availability, label_add, label_rm } => {
            let availability = availability.map(|a| match a {
                AvailabilityArg::Active => Availability::Active,
                AvailabilityArg::Drain => Availability::Drain,
                AvailabilityArg::Pause => Availability::Pause,
            });
            let update = NodeUpdate { availability, label_add: rules::parse_labels(&label_add)?, label_rm };
            if update == NodeUpdate::default() {
                return Err(CliError::Local(
                    "nothing to update: give --availability, --label-add or --label-rm".into(),
                ));
            }
            let id = resolve(node).await?;
            c.update_node(id, &update).await?;
            println!("node {} updated", node_short(id));
        }
    }
    Ok(())
}

pub(crate) async fn join_token(role: NodeRole, rotate: bool, quiet: bool, opts: &ClientOpts) -> Result<(), CliError> {
    let c = opts.client()?;
    let t = if rotate { c.rotate_token(role).await? } else { c.show_token(role).await? };
    let token = zeroize::Zeroizing::new(t.token);
    if quiet {
        println!("{}", token.as_str());
    } else {
        let role = lower(&role);
        println!("New {role} join token (shown once; the previous one no longer admits nodes):");
        println!("  {}", token.as_str());
        println!("Join with: COFFER_JOIN_TOKEN=<token> coffer {role} join --join {} ...", opts.addr);
    }
    Ok(())
}

pub(crate) async fn cluster_status(opts: &ClientOpts) -> Result<(), CliError> {
    let s = opts.client()?.status().await?;
    if opts.format == Format::Json {
        return print_json(&s);
    }
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    println!("cluster:   {}", s.cluster_id);
    println!("answered by node {}", node_short(s.node_id));
    println!("leader:    {}", node_opt(s.leader_id));
    println!("term:      {}", s.term);
    println!(
        "log:       last {}, committed {}, applied {}",
        opt(s.last_log_index),
        opt(s.committed_index),
        opt(s.applied_index)
    );
    println!("health:    {}", if s.healthy { "healthy" } else { "unhealthy" });
    if s.autolock {
        println!("autolock:  on (unlock key generation {})", s.unlock_generation);
    } else {
        println!("autolock:  off");
    }
    println!("{:<12}  {:<22} {:<6} {:<8} {:<8} {:<8}", "MEMBER", "ADDRESS", "VOTER", "MATCHED", "LOCKED", "KEY GEN");
    for m in &s.members {
        let locked = match m.locked {
            Some(true) => "locked",
            Some(false) => "no",
            None => "-",
        };
        // The generation of the unlock key this member's store is sealed under (0: its key
        // file); one behind the cluster's opens only with the key it was sealed under.
        let generation = m.unlock_generation.unwrap_or(0);
        let behind = s.autolock && generation < s.unlock_generation;
        println!(
            "{:<12}  {:<22} {:<6} {:<8} {:<8} {:<8}{}",
            node_short(m.id),
            m.addr,
            m.voter,
            opt(m.matched_index),
            locked,
            generation,
            if behind { "  behind: opens with the key of its generation" } else { "" }
        );
    }
    Ok(())
}
