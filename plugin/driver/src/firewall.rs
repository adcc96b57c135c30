//! The plugin's firewall rules, in two places, each for its reason:
//!
//! - **forwarding** is accepted with `iptables`/`ip6tables`, the tool (and
//!   so the backend, legacy or nf_tables) dockerd uses: where dockerd
//!   manages iptables it sets FORWARD's policy to DROP, and only a rule in
//!   that same backend can accept (an accept in a table of our own would
//!   still meet dockerd's drop). In a chain of our own, `BPFWALL-PLUGIN`,
//!   jumped to first from `DOCKER-USER` (made if missing, and jumped to
//!   from FORWARD as dockerd does): per network, accept what a plugin
//!   interface (`bw+`) sends from the network's prefix and what goes to
//!   the prefix on one.
//! - **address translation** is an nftables table of the plugin's own
//!   (`ip bpfwall_<plugin>` and `ip6 ...`), a nat chain at priority
//!   `srcnat - 1`: it runs before every iptables nat chain, whatever the
//!   backend and whatever order dockerd puts its rules in (it inserts its
//!   bridges' masquerade first whenever it makes a bridge or starts). Per
//!   network: what goes into a plugin interface, and what the network
//!   sends to another plugin interface or to Docker's bridges (`docker0`,
//!   `br-*`), keeps its source address (a same-address SNAT, which also
//!   keeps dockerd's bridge masquerade from applying: a connection is
//!   translated once), so containers on either side see each other's
//!   identity; the rest of what the network sends is masqueraded to the
//!   world, unless the network is internal (the gate drops what would
//!   leave it). The table is written whole, in one transaction, from the
//!   networks the plugin has.
//!
//! Every iptables rule carries the comment `bpfwall <plugin> <network
//! short id>`, which is how a rule is found again to remove it (also one
//! left by a daemon that died); [`Firewall::reconcile`] also puts the jump
//! first again.

use ipnet::IpNet;
use tokio::process::Command;

use crate::host::HostError;
use crate::network::{NetworkRecord, HOST_PREFIX};

/// The filter chain.
pub const FILTER_CHAIN: &str = "BPFWALL-PLUGIN";

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

/// The nftables table of a plugin (one per family).
pub fn nat_table_name(plugin: &str) -> String {
    let safe: String = plugin
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("bpfwall_{safe}")
}

/// The nft script that replaces the plugin's nat tables with the rules of
/// `networks` (pure: what [`Firewall::sync_nat`] runs, in one transaction).
pub fn nat_script(plugin: &str, networks: &[NetworkRecord]) -> String {
    let table = nat_table_name(plugin);
    let any_plugin_if = format!("\"{HOST_PREFIX}*\"");
    let mut out = String::new();
    for (family, addr) in [("ip", "ip"), ("ip6", "ip6")] {
        // Create, delete, create: replaces the table atomically.
        out.push_str(&format!(
            "table {family} {table} {{}}\ndelete table {family} {table}\n"
        ));
        let mut rules = Vec::new();
        for n in networks {
            for subnet in n.subnets() {
                let is_v6 = matches!(subnet, IpNet::V6(_));
                if is_v6 != (family == "ip6") {
                    continue;
                }
                let c = format!("comment \"{}\"", comment(plugin, n));
                rules.push(format!(
                    "oifname {any_plugin_if} {addr} daddr {subnet} snat to {addr} saddr {c}"
                ));
                if !n.internal {
                    rules.push(format!(
                        "{addr} saddr {subnet} oifname {{ {any_plugin_if}, \"docker0\", \"br-*\" }} snat to {addr} saddr {c}"
                    ));
                    rules.push(format!("{addr} saddr {subnet} masquerade {c}"));
                }
            }
        }
        if rules.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "table {family} {table} {{\n\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat - 1; policy accept;\n"
        ));
        for r in rules {
            out.push_str(&format!("\t\t{r}\n"));
        }
        out.push_str("\t}\n}\n");
    }
    out
}

/// Every iptables rule of one network, in order (pure: what `add` makes).
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
        for (table, chain) in [("filter", FILTER_CHAIN), ("filter", "DOCKER-USER")] {
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
            .await
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

    /// Removes a network's rules (every copy), and the chain with its jump
    /// once no network (of any plugin) has a rule in it.
    pub async fn remove(&self, network: &NetworkRecord) -> Result<(), HostError> {
        for rule in rules(&self.plugin, network) {
            let mut delete = vec!["-t", rule.table, "-D", rule.chain];
            delete.extend(rule.spec.iter().map(String::as_str));
            while succeeds(rule.tool, &delete).await {}
        }
        for tool in Self::tools(network) {
            self.drop_chain_if_empty(tool).await?;
        }
        Ok(())
    }

    /// Takes the jump out of `DOCKER-USER` and deletes the chain when it
    /// holds no rule, so a host whose last plugin network is gone is left
    /// as it was. Several plugins (daemons) share the chain: if one adds a
    /// rule meanwhile, the delete fails (the chain is not empty, or its
    /// jump is back) and the jump is put first again.
    async fn drop_chain_if_empty(&self, tool: &'static str) -> Result<(), HostError> {
        let Ok(listing) = run(tool, &["-t", "filter", "-S", FILTER_CHAIN]).await else {
            return Ok(());
        };
        if listing.lines().any(|l| l.starts_with("-A ")) {
            return Ok(());
        }
        while succeeds(
            tool,
            &["-t", "filter", "-D", "DOCKER-USER", "-j", FILTER_CHAIN],
        )
        .await
        {}
        if !succeeds(tool, &["-t", "filter", "-X", FILTER_CHAIN]).await
            && succeeds(tool, &["-t", "filter", "-S", FILTER_CHAIN]).await
        {
            self.jump_first(tool, "filter", "DOCKER-USER", FILTER_CHAIN)
                .await?;
        }
        Ok(())
    }

    /// Writes the plugin's nat tables for `networks` (removes them when
    /// there are none), in one nftables transaction.
    pub async fn sync_nat(&self, networks: &[NetworkRecord]) -> Result<(), HostError> {
        use tokio::io::AsyncWriteExt as _;
        let script = nat_script(&self.plugin, networks);
        let command = "nft -f -".to_string();
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|source| HostError::FirewallSpawn {
                command: command.clone(),
                source,
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(script.as_bytes()).await.map_err(|source| {
                HostError::FirewallSpawn {
                    command: command.clone(),
                    source,
                }
            })?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|source| HostError::FirewallSpawn {
                command: command.clone(),
                source,
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(HostError::Firewall {
                command: format!("{command} <<'EOF'\n{script}EOF"),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// Removes this plugin's rules of networks not in `keep`, and puts the
    /// jumps first again.
    pub async fn reconcile(&self, keep: &[NetworkRecord]) -> Result<(), HostError> {
        let keep: Vec<String> = keep.iter().map(|n| comment(&self.plugin, n)).collect();
        let mine = format!("bpfwall {} ", self.plugin);
        for tool in ["iptables", "ip6tables"] {
            for (table, chain) in [("filter", FILTER_CHAIN)] {
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
                    self.jump_first(tool, table, "DOCKER-USER", chain).await?;
                    self.drop_chain_if_empty(tool).await?;
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
            text[..2],
            [
                format!(
                    "iptables -t filter -A BPFWALL-PLUGIN -i bw+ -s 10.77.0.0/24 {c} -j ACCEPT"
                ),
                format!(
                    "iptables -t filter -A BPFWALL-PLUGIN -o bw+ -d 10.77.0.0/24 {c} -j ACCEPT"
                ),
            ]
        );
        assert_eq!(r.iter().filter(|r| r.tool == "ip6tables").count(), 2);

        let script = nat_script("plug-x", &[network(false)]);
        let c = "comment \"bpfwall plug-x ab435418689e\"";
        let expected = [
            "table ip bpfwall_plug_x {}".to_string(),
            "delete table ip bpfwall_plug_x".into(),
            "table ip bpfwall_plug_x {".into(),
            "\tchain postrouting {".into(),
            "\t\ttype nat hook postrouting priority srcnat - 1; policy accept;".into(),
            format!("\t\toifname \"bw*\" ip daddr 10.77.0.0/24 snat to ip saddr {c}"),
            format!("\t\tip saddr 10.77.0.0/24 oifname {{ \"bw*\", \"docker0\", \"br-*\" }} snat to ip saddr {c}"),
            format!("\t\tip saddr 10.77.0.0/24 masquerade {c}"),
            "\t}".into(),
            "}".into(),
            "table ip6 bpfwall_plug_x {}".into(),
            "delete table ip6 bpfwall_plug_x".into(),
            "table ip6 bpfwall_plug_x {".into(),
            "\tchain postrouting {".into(),
            "\t\ttype nat hook postrouting priority srcnat - 1; policy accept;".into(),
            format!("\t\toifname \"bw*\" ip6 daddr fd00:77::/64 snat to ip6 saddr {c}"),
            format!("\t\tip6 saddr fd00:77::/64 oifname {{ \"bw*\", \"docker0\", \"br-*\" }} snat to ip6 saddr {c}"),
            format!("\t\tip6 saddr fd00:77::/64 masquerade {c}"),
            "\t}".into(),
            "}".into(),
        ];
        assert_eq!(script.lines().collect::<Vec<_>>(), expected);
        // Internal: sources kept into plugin interfaces, nothing masqueraded.
        let internal = nat_script("plug-x", &[network(true)]);
        assert!(!internal.contains("masquerade") && internal.contains("snat to ip saddr"));
        // No networks: the tables go.
        assert_eq!(
            nat_script("plug-x", &[]),
            "table ip bpfwall_plug_x {}\ndelete table ip bpfwall_plug_x\ntable ip6 bpfwall_plug_x {}\ndelete table ip6 bpfwall_plug_x\n"
        );
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
