//! Hosts of their own for a fault run: one network namespace per node, each with one
//! address on a bridge in the harness's namespace (where the clients run). Links are cut
//! with iptables in the receiving host's namespace (`INPUT -s PEER -j DROP`): packets vanish
//! without an error, as on a real partition, and a one-way drop is one rule.
//!
//! Everything made here is named after a random run id and removed on drop, also when the
//! run fails.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use rand::Rng;

/// A host: its namespace and address.
#[derive(Debug, Clone)]
pub struct Host {
    pub netns: String,
    pub ip: Ipv4Addr,
}

/// The network of a run.
#[derive(Debug)]
pub struct Net {
    bridge: String,
    pub hosts: Vec<Host>,
    /// Where the clients' packets come from (the bridge's address).
    pub client_ip: Ipv4Addr,
    forward_rule: bool,
}

fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("run {}", args[0]))?;
    if !out.status.success() {
        bail!("{} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Net {
    /// `n` hosts on a new bridge. Needs root (CAP_NET_ADMIN) and iproute2 and iptables.
    ///
    /// # Errors
    /// When a namespace, link or address cannot be made (everything made is removed).
    pub fn new(n: usize) -> anyhow::Result<Self> {
        reap_stale();
        let mut rng = rand::thread_rng();
        let id = format!("{:04x}", rng.gen::<u16>());
        let (a, b) = (rng.gen_range(100..200u8), rng.gen::<u8>());
        let mut net = Self {
            bridge: format!("cfb{id}"),
            hosts: Vec::new(),
            client_ip: Ipv4Addr::new(10, a, b, 254),
            forward_rule: false,
        };
        run(&["ip", "link", "add", &net.bridge, "type", "bridge"])
            .context("make a bridge (fault runs need root: network namespaces and iptables)")?;
        run(&["ip", "addr", "add", &format!("{}/24", net.client_ip), "dev", &net.bridge])?;
        run(&["ip", "link", "set", &net.bridge, "up"])?;
        // Where br_netfilter is loaded (Docker loads it, and sets FORWARD's policy to DROP),
        // bridged packets between the hosts pass the FORWARD chain: let ours through.
        run(&["iptables", "-w", "-I", "FORWARD", "-i", &net.bridge, "-o", &net.bridge, "-j", "ACCEPT"])?;
        net.forward_rule = true;
        for i in 0..n {
            let host =
                Host { netns: format!("cf-{}-{id}-{i}", std::process::id()), ip: Ipv4Addr::new(10, a, b, i as u8 + 1) };
            let (outer, inner) = (format!("cf{id}{i}a"), format!("cf{id}{i}b"));
            run(&["ip", "netns", "add", &host.netns])?;
            net.hosts.push(host.clone());
            run(&["ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner])?;
            run(&["ip", "link", "set", &outer, "master", &net.bridge, "up"])?;
            run(&["ip", "link", "set", &inner, "netns", &host.netns])?;
            run(&["ip", "-n", &host.netns, "addr", "add", &format!("{}/24", host.ip), "dev", &inner])?;
            run(&["ip", "-n", &host.netns, "link", "set", &inner, "up"])?;
            run(&["ip", "-n", &host.netns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// A command that runs `program` on host `i`.
    pub fn command(&self, i: usize, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[i].netns]).arg(program);
        c
    }

    /// Drops every packet from host `from` (or the clients, `None`) arriving at host `to`.
    ///
    /// # Errors
    /// When iptables fails.
    pub fn drop_from(&self, from: Option<usize>, to: usize) -> anyhow::Result<()> {
        let src = from.map_or(self.client_ip, |f| self.hosts[f].ip).to_string();
        let ns = &self.hosts[to].netns;
        run(&["ip", "netns", "exec", ns, "iptables", "-w", "-A", "INPUT", "-s", &src, "-j", "DROP"])
    }

    /// Cuts hosts `a` and `b` apart, both ways.
    ///
    /// # Errors
    /// When iptables fails.
    pub fn cut(&self, a: usize, b: usize) -> anyhow::Result<()> {
        self.drop_from(Some(a), b)?;
        self.drop_from(Some(b), a)
    }

    /// Splits the hosts into `side` and the rest.
    ///
    /// # Errors
    /// When iptables fails.
    pub fn partition(&self, side: &[usize]) -> anyhow::Result<()> {
        for a in side {
            for b in (0..self.hosts.len()).filter(|b| !side.contains(b)) {
                self.cut(*a, b)?;
            }
        }
        Ok(())
    }

    /// Removes every drop.
    ///
    /// # Errors
    /// When iptables fails.
    pub fn heal(&self) -> anyhow::Result<()> {
        for h in &self.hosts {
            run(&["ip", "netns", "exec", &h.netns, "iptables", "-w", "-F", "INPUT"])?;
        }
        Ok(())
    }
}

/// Removes what runs of processes that no longer exist left behind (a run killed by a
/// signal cannot clean up after itself): their hosts' processes, namespaces and bridges, and
/// their workers' secrets dirs on tmpfs (`coffer-it-PID-...`).
fn reap_stale() {
    let dead = |pid: &str| !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists();
    for e in std::fs::read_dir("/dev/shm").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.strip_prefix("coffer-it-").and_then(|r| r.split('-').next()).is_some_and(dead) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let ns = line.split_whitespace().next().unwrap_or_default();
        let mut parts = ns.strip_prefix("cf-").unwrap_or_default().split('-');
        let (Some(pid), Some(id)) = (parts.next(), parts.next()) else { continue };
        if !dead(pid) {
            continue;
        }
        if let Ok(pids) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for p in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", p]).status();
            }
        }
        let _ = run(&["ip", "netns", "del", ns]);
        let bridge = format!("cfb{id}");
        let _ = run(&["iptables", "-w", "-D", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT"]);
        let _ = run(&["ip", "link", "del", &bridge]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            // Deleting a namespace deletes the veth end in it, and so its peer.
            let _ = run(&["ip", "netns", "del", &h.netns]);
        }
        if self.forward_rule {
            let _ = run(&["iptables", "-w", "-D", "FORWARD", "-i", &self.bridge, "-o", &self.bridge, "-j", "ACCEPT"]);
        }
        let _ = run(&["ip", "link", "del", &self.bridge]);
    }
}
