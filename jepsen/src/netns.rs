//! The `netns` network mode: every node in its own Linux network namespace, with its own address
//! on a private bridge; the harness and its clients stay in the root namespace and reach every
//! node over the bridge. Partitions are iptables DROP rules inside the node namespaces, so they cut
//! links between nodes and never a client's link to a node (a client of an isolated node sees what
//! a client in the isolated node's rack would see).
//!
//! Contract: everything a [`Network`] makes (namespaces, bridge, veth links, rules) is removed
//! when it is dropped, also while a panic unwinds. Names carry the creating process id
//! (`cj<pid>…`), so [`Network::create`] first sweeps what a harness that was killed left behind.
//! Needs root, `ip` (iproute2) and `iptables`. Addresses come from 198.18.0.0/15, the range set
//! aside for benchmarking network devices (RFC 2544), so they never shadow a real network.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use conclave_testkit::Host;

/// A link between two nodes (0-based indexes) that a partition cuts, in both directions.
pub type Link = (usize, usize);

/// The namespaces, bridge and addresses of one run.
#[derive(Debug)]
pub struct Network {
    bridge: String,
    /// Root-namespace ends of the veth pairs, one per node.
    veths: Vec<String>,
    namespaces: Vec<String>,
    addresses: Vec<Ipv4Addr>,
}

/// Prefix of every name this module gives to a namespace or link.
const PREFIX: &str = "cj";

impl Network {
    /// Creates `nodes` namespaces on a new bridge, after removing what dead harnesses left.
    pub fn create(nodes: usize) -> anyhow::Result<Network> {
        for tool in ["ip", "iptables"] {
            if !on_path(tool) {
                bail!(
                    "--net netns needs root and the `ip` and `iptables` commands \
                     (apt-get install -y iproute2 iptables); `{tool}` was not found"
                );
            }
        }
        sweep_stale()?;
        let pid = std::process::id();
        let id = format!("{PREFIX}{pid}");
        // One /24 of 198.18.0.0/15 per harness process.
        let subnet = (pid % 512) as u16;
        let (b, c) = (18 + (subnet >> 8) as u8, (subnet & 0xff) as u8);
        let mut network = Network {
            bridge: format!("{id}br"),
            veths: Vec::new(),
            namespaces: Vec::new(),
            addresses: (0..nodes)
                .map(|i| Ipv4Addr::new(198, b, c, 11 + i as u8))
                .collect(),
        };
        // From here on, a failure drops `network`, which removes what was made so far.
        let gateway = Ipv4Addr::new(198, b, c, 1);
        ip(&["link", "add", &network.bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{gateway}/24"),
            "dev",
            &network.bridge,
        ])?;
        ip(&["link", "set", &network.bridge, "up"])?;
        for i in 0..nodes {
            let ns = format!("{id}n{}", i + 1);
            let veth = format!("{id}v{}", i + 1);
            ip(&["netns", "add", &ns])?;
            network.namespaces.push(ns.clone());
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            network.veths.push(veth.clone());
            ip(&["link", "set", &veth, "master", &network.bridge, "up"])?;
            let address = format!("{}/24", network.addresses[i]);
            ip(&["-n", &ns, "addr", "add", &address, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(network)
    }

    /// Where each node runs: its address, launched with `ip netns exec` (which execs the node).
    pub fn hosts(&self) -> Vec<Host> {
        self.namespaces
            .iter()
            .zip(&self.addresses)
            .map(|(ns, address)| Host {
                address: address.to_string(),
                launcher: ["ip", "netns", "exec", ns.as_str()]
                    .into_iter()
                    .map(Into::into)
                    .collect(),
            })
            .collect()
    }

    /// Cuts `links` in both directions: each end drops every packet from the other.
    pub fn cut(&self, links: &[Link]) -> anyhow::Result<()> {
        for &(a, b) in links {
            self.drop_from(a, b)?;
            self.drop_from(b, a)?;
        }
        Ok(())
    }

    /// Removes every rule: all links work again.
    pub fn heal(&self) -> anyhow::Result<()> {
        for ns in &self.namespaces {
            iptables(ns, &["-F", "INPUT"])?;
        }
        Ok(())
    }

    fn drop_from(&self, node: usize, from: usize) -> anyhow::Result<()> {
        let (Some(ns), Some(source)) = (self.namespaces.get(node), self.addresses.get(from)) else {
            bail!("no node {node} or {from} in a network of {}", self.len());
        };
        iptables(
            ns,
            &["-A", "INPUT", "-s", &source.to_string(), "-j", "DROP"],
        )
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.namespaces.len()
    }

    /// Whether the network has no node.
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Deleting a veth deletes its peer in the namespace; deleting a namespace drops its rules.
        for veth in &self.veths {
            quietly(ip(&["link", "del", veth]));
        }
        for ns in &self.namespaces {
            quietly(ip(&["netns", "del", ns]));
        }
        quietly(ip(&["link", "del", &self.bridge]));
    }
}

fn quietly(outcome: anyhow::Result<()>) {
    if let Err(e) = outcome {
        tracing::warn!(error = %e, "netns cleanup");
    }
}

/// The links a partition into `groups` cuts: every pair of nodes in different groups.
pub fn split(groups: &[Vec<usize>]) -> Vec<Link> {
    let mut links = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        for other in &groups[g + 1..] {
            for &a in group {
                for &b in other {
                    links.push((a.min(b), a.max(b)));
                }
            }
        }
    }
    links.sort_unstable();
    links
}

/// Removes namespaces and links named by this module whose creating process is gone.
fn sweep_stale() -> anyhow::Result<()> {
    let namespaces = output("ip", &["netns", "list"])?;
    for name in namespaces
        .lines()
        .filter_map(|l| l.split_whitespace().next())
    {
        if stale(name) {
            tracing::warn!(
                namespace = name,
                "removing a namespace left by a dead harness"
            );
            quietly(ip(&["netns", "del", name]));
        }
    }
    let links = output("ip", &["-o", "link", "show"])?;
    for line in links.lines() {
        // "12: cj4242v1@if2: <BROADCAST,…" — the name is the second field, up to '@' or ':'.
        let Some(name) = line
            .split_whitespace()
            .nth(1)
            .and_then(|f| f.split(['@', ':']).next())
        else {
            continue;
        };
        if stale(name) {
            tracing::warn!(link = name, "removing a link left by a dead harness");
            quietly(ip(&["link", "del", name]));
        }
    }
    Ok(())
}

/// Whether `name` is one of ours (`cj<pid>` followed by `br`, `n<i>` or `v<i>`) and its pid is
/// not a running process.
fn stale(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(PREFIX) else {
        return false;
    };
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    let (pid, kind) = rest.split_at(digits);
    let ours = !pid.is_empty()
        && (kind == "br"
            || (kind.len() > 1
                && (kind.starts_with('n') || kind.starts_with('v'))
                && kind[1..].chars().all(|c| c.is_ascii_digit())));
    ours && !alive(pid)
}

/// Whether process `pid` runs (a zombie, killed but not yet reaped, does not).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(Path::new("/proc").join(pid).join("stat")).is_ok_and(|stat| {
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        !state.is_some_and(|s| s.starts_with('Z'))
    })
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    output("ip", args).map(drop)
}

fn iptables(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    // -w: wait for the xtables lock, which every namespace shares.
    let mut full = vec!["netns", "exec", ns, "iptables", "-w"];
    full.extend_from_slice(args);
    output("ip", &full).map(drop)
}

/// Runs `program args`, returning its stdout; a failure names the command and its stderr.
fn output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_cuts_every_pair_across_groups() {
        assert_eq!(split(&[vec![0], vec![1, 2]]), vec![(0, 1), (0, 2)]);
        assert_eq!(
            split(&[vec![3, 1], vec![0, 2, 4]]),
            vec![(0, 1), (0, 3), (1, 2), (1, 4), (2, 3), (3, 4)]
        );
        assert!(split(&[vec![0, 1, 2]]).is_empty());
    }

    #[test]
    fn only_our_names_of_dead_processes_are_stale() {
        // pid 0 never has a /proc entry of its own; our own pid is alive.
        assert!(stale("cj0br"));
        assert!(stale("cj0n3"));
        assert!(stale("cj0v12"));
        let me = std::process::id();
        assert!(!stale(&format!("cj{me}br")));
        assert!(!stale(&format!("cj{me}n1")));
        for foreign in [
            "eth0", "cjbr", "cj0", "cj0x1", "cj0n", "cj0nx", "docker0", "cj0br2",
        ] {
            assert!(!stale(foreign), "{foreign}");
        }
    }
}
