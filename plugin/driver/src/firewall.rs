//! The plugin's firewall rules, made with `iptables`/`ip6tables`: the same
//! tool (and so the same backend, legacy or nf_tables) dockerd uses. That
//! is the point: where dockerd manages iptables it sets FORWARD's policy
//! to DROP, and only a rule in that same backend can accept the plugin's
//! traffic (an accept in a table of our own would still meet dockerd's
//! drop). Everything is in two chains of our own:
//!
//! - `BPFWALL-PLUGIN` (filter), jumped to first from `DOCKER-USER` (made
//!   if missing, and jumped to from FORWARD as dockerd does): per network,
//!   accept what a plugin interface (`bw+`) sends from the network's
//!   prefix and what goes to the prefix on one;
//! - `BPFWALL-PLUGIN-NAT` (nat), jumped to first from POSTROUTING: per
//!   network, nothing going into a plugin interface is masqueraded (a
//!   container on one of Docker's bridges keeps its address, so its
//!   identity, when it talks to ours: dockerd's bridge masquerade would
//!   otherwise match), nor what the network sends to another plugin
//!   interface or to Docker's bridges (`docker0`, `br-+`); the rest of what
//!   it sends is masqueraded, unless the network is internal (the gate
//!   drops what would leave it).
//!
//! Every rule carries the comment `bpfwall <plugin> <network short id>`,
//! which is how a rule is found again to remove it (also one left by a
//! daemon that died). dockerd puts its jumps first when it starts:
//! [`Firewall::reconcile`] puts ours first again.

use ipnet::IpNet;
use tokio::process::Command;

use crate::host::HostError;
use crate::network::{NetworkRecord, HOST_PREFIX};

/// The filter chain.
pub const FILTER_CHAIN: &str = "BPFWALL-PLUGIN";
/// The nat chain.
pub const NAT_CHAIN: &str = "BPFWALL-PLUGIN-NAT";

/// One rule: tool, table, chain, and the match and target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `iptables` or `ip6tables`.
    pub tool: &'static str,
    /// `filter` or `nat`.
    pub table: &'static str,
    /// The chain.
    pub chain: &'static str,
    /// Everything after the chain.
    pub spec: Vec<String>,
}

fn tool_of(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "iptables",
        IpNet::V6(_) => "ip6tables",
    }
}

/// The comment that marks a network's rules.
pub fn comment(plugin: &str, network: &NetworkRecord) -> String {
    format!("bpfwall {plugin} {}", network.short_id())
}

/// Every rule of one network, in order (pure: what `add` makes).
pub fn rules(plugin: &str, network: &NetworkRecord) -> Vec<Rule> {
    let c = comment(plugin, network);
    let any_plugin_if = format!("{HOST_PREFIX}+");
    let mut out = Vec::new();
    for subnet in network.subnets() {
        let tool = tool_of(&subnet);
        let s = subnet.to_string();
        let rule = |table, chain, parts: &[&str], target: &str| Rule {
            tool,
            table,
            chain,
            spec: parts
                .iter()
                .map(|p| p.to_string())
                .chain(["-m", "comment", "--comment", &c, "-j", target].map(String::from))
                .collect(),
        };
        out.push(rule(
            "filter",
            FILTER_CHAIN,
            &["-i", &any_plugin_if, "-s", &s],
            "ACCEPT",
        ));
        out.push(rule(
            "filter",
            FILTER_CHAIN,
            &["-o", &any_plugin_if, "-d", &s],
            "ACCEPT",
        ));
        out.push(rule(
            "nat",
            NAT_CHAIN,
            &["-o", &any_plugin_if, "-d", &s],
            "ACCEPT",
        ));
        if !network.internal {
            for out_if in [any_plugin_if.as_str(), "docker0", "br-+"] {
                out.push(rule("nat", NAT_CHAIN, &["-s", &s, "-o", out_if], "ACCEPT"));
            }
            out.push(rule("nat", NAT_CHAIN, &["-s", &s], "MASQUERADE"));
        }
    }
    out
}

/// Splits a line of `iptables -S` into words (double quotes group).
pub fn split_words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    out.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(word);
    }
    out
}

/// The plugin's rules on the host.
#[derive(Debug, Clone)]
pub struct Firewall {
    plugin: String,
}

async fn run(tool: &str, args: &[&str]) -> Result<String, HostError> {
    let command = format!("{tool} {}", args.join(" "));
    let out = Command::new(tool)
        .arg("-w")
        .args(args)
        .output()
        .await
        .map_err(|source| HostError::FirewallSpawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(HostError::Firewall {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

async fn succeeds(tool: &str, args: &[&str]) -> bool {
    run(tool, args).await.is_ok()
}

impl Firewall {
    /// The rules of plugin `plugin`.
    pub fn new(plugin: &str) -> Self {
        Firewall {
            plugin: plugin.to_string(),
        }
    }

    /// Makes the chains and puts the jumps to them first.
    async fn ensure_chains(&self, tool: &'static str) -> Result<(), HostError> {
        for (table, chain) in [
            ("filter", FILTER_CHAIN),
            ("filter", "DOCKER-USER"),
            ("nat", NAT_CHAIN),
        ] {
            if !succeeds(tool, &["-t", table, "-S", chain]).await {
                // Another daemon may make it at the same moment.
                if let Err(e) = run(tool, &["-t", table, "-N", chain]).await {
                    if !succeeds(tool, &["-t", table, "-S", chain]).await {
                        return Err(e);
                    }
                }
            }
        }
        if !succeeds(
            tool,
            &["-t", "filter", "-C", "FORWARD", "-j", "DOCKER-USER"],
        )
        .await
        {
            run(
                tool,
                &["-t", "filter", "-I", "FORWARD", "1", "-j", "DOCKER-USER"],
            )
            .await?;
        }
        self.jump_first(tool, "filter", "DOCKER-USER", FILTER_CHAIN)
            .await?;
        self.jump_first(tool, "nat", "POSTROUTING", NAT_CHAIN).await
    }

    /// Makes `-j target` the first rule of `chain`.
    async fn jump_first(
        &self,
        tool: &'static str,
        table: &str,
        chain: &str,
        target: &str,
    ) -> Result<(), HostError> {
        let listing = run(tool, &["-t", table, "-S", chain]).await?;
        let first = listing
            .lines()
            .find(|l| l.starts_with("-A "))
            .map(split_words)
            .unwrap_or_default();
        if first == ["-A", chain, "-j", target] {
            return Ok(());
        }
        while succeeds(tool, &["-t", table, "-D", chain, "-j", target]).await {}
        run(tool, &["-t", table, "-I", chain, "1", "-j", target]).await?;
        Ok(())
    }

    fn tools(network: &NetworkRecord) -> Vec<&'static str> {
        let mut tools: Vec<&'static str> = network.subnets().iter().map(tool_of).collect();
        tools.dedup();
        tools
    }

    /// Adds a network's rules (those missing).
    pub async fn add(&self, network: &NetworkRecord) -> Result<(), HostError> {
        for tool in Self::tools(network) {
            self.ensure_chains(tool).await?;
        }
        for rule in rules(&self.plugin, network) {
            let spec: Vec<&str> = rule.spec.iter().map(String::as_str).collect();
            let mut check = vec!["-t", rule.table, "-C", rule.chain];
            check.extend(&spec);
            if succeeds(rule.tool, &check).await {
                continue;
            }
            let mut append = vec!["-t", rule.table, "-A", rule.chain];
            append.extend(&spec);
            run(rule.tool, &append).await?;
        }
        Ok(())
    }

    /// Removes a network's rules (every copy).
    pub async fn remove(&self, network: &NetworkRecord) -> Result<(), HostError> {
        for rule in rules(&self.plugin, network) {
            let mut delete = vec!["-t", rule.table, "-D", rule.chain];
            delete.extend(rule.spec.iter().map(String::as_str));
            while succeeds(rule.tool, &delete).await {}
        }
        Ok(())
    }

    /// Removes this plugin's rules of networks not in `keep`, and puts the
    /// jumps first again.
    pub async fn reconcile(&self, keep: &[NetworkRecord]) -> Result<(), HostError> {
        let keep: Vec<String> = keep.iter().map(|n| comment(&self.plugin, n)).collect();
        let mine = format!("bpfwall {} ", self.plugin);
        for tool in ["iptables", "ip6tables"] {
            for (table, chain) in [("filter", FILTER_CHAIN), ("nat", NAT_CHAIN)] {
                let Ok(listing) = run(tool, &["-t", table, "-S", chain]).await else {
                    continue;
                };
                for line in listing.lines() {
                    let words = split_words(line);
                    let Some(at) = words.iter().position(|w| w == "--comment") else {
                        continue;
                    };
                    let Some(c) = words.get(at + 1) else { continue };
                    if !c.starts_with(&mine) || keep.contains(c) {
                        continue;
                    }
                    if words.first().map(String::as_str) != Some("-A") {
                        continue;
                    }
                    let mut delete: Vec<&str> = vec!["-t", table, "-D"];
                    delete.extend(words[1..].iter().map(String::as_str));
                    tracing::info!(tool, rule = %line, "removing a rule of a network this plugin no longer has");
                    run(tool, &delete).await?;
                }
                if succeeds(tool, &["-t", table, "-S", chain]).await {
                    match table {
                        "filter" => self.jump_first(tool, table, "DOCKER-USER", chain).await?,
                        _ => self.jump_first(tool, table, "POSTROUTING", chain).await?,
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(internal: bool) -> NetworkRecord {
        NetworkRecord {
            id: "ab435418689ede2b8353fe7db03bfca5c253ec6244e41a133dcb83b2286261bb".into(),
            default_deny: false,
            internal,
            ipv4: Some((
                "10.77.0.0/24".parse().unwrap(),
                "10.77.0.1".parse().unwrap(),
            )),
            ipv6: Some((
                "fd00:77::/64".parse().unwrap(),
                "fd00:77::1".parse().unwrap(),
            )),
        }
    }

    #[test]
    fn a_network_accepts_its_prefixes_and_masquerades_only_to_the_world() {
        let r = rules("bpfwall", &network(false));
        let text: Vec<String> = r
            .iter()
            .map(|r| {
                format!(
                    "{} -t {} -A {} {}",
                    r.tool,
                    r.table,
                    r.chain,
                    r.spec.join(" ")
                )
            })
            .collect();
        let c = "-m comment --comment bpfwall bpfwall ab435418689e";
        assert_eq!(
            text[..7],
            [
                format!("iptables -t filter -A BPFWALL-PLUGIN -i bw+ -s 10.77.0.0/24 {c} -j ACCEPT"),
                format!("iptables -t filter -A BPFWALL-PLUGIN -o bw+ -d 10.77.0.0/24 {c} -j ACCEPT"),
                format!("iptables -t nat -A BPFWALL-PLUGIN-NAT -o bw+ -d 10.77.0.0/24 {c} -j ACCEPT"),
                format!("iptables -t nat -A BPFWALL-PLUGIN-NAT -s 10.77.0.0/24 -o bw+ {c} -j ACCEPT"),
                format!("iptables -t nat -A BPFWALL-PLUGIN-NAT -s 10.77.0.0/24 -o docker0 {c} -j ACCEPT"),
                format!("iptables -t nat -A BPFWALL-PLUGIN-NAT -s 10.77.0.0/24 -o br-+ {c} -j ACCEPT"),
                format!("iptables -t nat -A BPFWALL-PLUGIN-NAT -s 10.77.0.0/24 {c} -j MASQUERADE"),
            ]
        );
        assert_eq!(r.iter().filter(|r| r.tool == "ip6tables").count(), 7);
        let internal = rules("bpfwall", &network(true));
        assert!(internal
            .iter()
            .all(|r| !r.spec.contains(&"MASQUERADE".to_string())));
        assert_eq!(internal.len(), 6);
    }

    #[test]
    fn listing_lines_split_like_a_shell() {
        assert_eq!(
            split_words(
                r#"-A BPFWALL-PLUGIN -i bw+ -s 10.77.0.0/24 -m comment --comment "bpfwall x ab" -j ACCEPT"#
            ),
            [
                "-A",
                "BPFWALL-PLUGIN",
                "-i",
                "bw+",
                "-s",
                "10.77.0.0/24",
                "-m",
                "comment",
                "--comment",
                "bpfwall x ab",
                "-j",
                "ACCEPT"
            ]
        );
    }
}
