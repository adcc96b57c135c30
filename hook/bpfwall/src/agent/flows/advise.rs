//! `bpfwall advise`: the least allow policy that lets a workload do what
//! the edge record saw it do (allowed, or passed in audit mode). Peers that
//! are containers are named by their labels, never by address; only peers
//! outside the containers and the host get a prefix (their /32 or /128).
//! Pure: the edges in, the rules out (`cli::advise` writes them as labels,
//! a compose override or a policy file).

use std::collections::{BTreeMap, BTreeSet};

use labels_policy::datapath_abi as abi;

use crate::api::flow::{Advice, Edge, EdgePeer, SuggestedRule};

const COMPOSE_SERVICE: &str = "com.docker.compose.service";
const COMPOSE_PROJECT: &str = "com.docker.compose.project";

/// Can the label language (and a selector of a policy file) say this pair?
/// Keys are letters, digits, `.`, `_`, `-`, `/`; values stop at white
/// space, `,` and `;` (docs/labels.md).
fn expressible(key: &str, value: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
        && !value.is_empty()
        && !value.chars().any(|c| {
            c.is_whitespace()
                || matches!(
                    c,
                    ',' | ';' | '"' | '\'' | '{' | '}' | '[' | ']' | ':' | '#'
                )
        })
}

/// The labels that select a workload: its compose project and service
/// when it has them (replicas and recreated containers keep them), else
/// every label it has that can be written down.
pub fn selector_for(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let pick = |keys: &[&str]| -> BTreeMap<String, String> {
        labels
            .iter()
            .filter(|(k, _)| keys.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let chosen = if labels.contains_key(COMPOSE_SERVICE) {
        pick(&[COMPOSE_SERVICE, COMPOSE_PROJECT])
    } else {
        labels.clone()
    };
    chosen
        .into_iter()
        .filter(|(k, v)| expressible(k, v))
        .collect()
}

fn selector_text(sel: &BTreeMap<String, String>) -> String {
    sel.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The port of the label language for a protocol and port, or None.
fn port_text(protocol: u8, port: u16) -> Option<(String, u16)> {
    match protocol {
        abi::IPPROTO_TCP if port > 0 => Some(("tcp".into(), port)),
        abi::IPPROTO_UDP if port > 0 => Some(("udp".into(), port)),
        abi::IPPROTO_ICMP | abi::IPPROTO_ICMPV6 if port > 0 => Some(("icmp".into(), port)),
        _ => None,
    }
}

/// The ports seen with one peer in one direction, and how many new flows.
type PortsSeen = (BTreeSet<(String, u16)>, u64);

/// The least allow policy for the workload with labels `local` (its
/// identity-relevant labels without `bpfwall.*`), from the edges seen.
pub fn advise(container: &str, local: &BTreeMap<String, String>, edges: &[Edge]) -> Advice {
    let mut notes = Vec::new();
    // (direction, peer) -> ports, seen
    let mut grouped: BTreeMap<(String, EdgePeer), PortsSeen> = BTreeMap::new();
    for e in edges.iter().filter(|e| e.key.local == *local) {
        let seen = e.stats.allowed + e.stats.audit;
        if seen == 0 {
            continue;
        }
        let Some(port) = port_text(e.key.protocol, e.key.port) else {
            notes.push(format!(
                "{} {}/{}: the label language has no port for it; not suggested",
                e.key.direction, e.key.port, e.key.protocol
            ));
            continue;
        };
        let slot = grouped
            .entry((e.key.direction.clone(), e.key.peer.clone()))
            .or_default();
        slot.0.insert(port);
        slot.1 += seen;
    }
    let mut rules = Vec::new();
    for ((direction, peer), (ports, seen)) in grouped {
        let word = if direction == "egress" { "to" } else { "from" };
        let (peer_text, peer_kind, peer_labels, peer_cidr) = match &peer {
            EdgePeer::Container { labels } => {
                let sel = selector_for(labels);
                if sel.is_empty() {
                    notes.push(format!(
                        "{direction} peer with labels {labels:?}: none of its labels can be written in a selector; not suggested"
                    ));
                    continue;
                }
                (selector_text(&sel), "container", sel, None)
            }
            EdgePeer::Host => ("host".to_string(), "host", BTreeMap::new(), None),
            EdgePeer::Outside { address } => {
                let cidr = ipnet::IpNet::from(*address).to_string();
                (format!("cidr {cidr}"), "cidr", BTreeMap::new(), Some(cidr))
            }
        };
        // The label language has ICMP without types: `icmp` (a policy
        // file names the type).
        let mut port_list: Vec<String> = ports
            .iter()
            .map(|(p, n)| {
                if p == "icmp" {
                    "icmp".to_string()
                } else {
                    format!("{n}/{p}")
                }
            })
            .collect();
        port_list.dedup();
        rules.push(SuggestedRule {
            direction: direction.clone(),
            rule: format!("allow {word} {peer_text} port {}", port_list.join(",")),
            peer_labels,
            peer_kind: peer_kind.to_string(),
            peer_cidr,
            ports: ports.into_iter().collect(),
            seen,
        });
    }
    // Ingress first, as in the label order.
    rules.sort_by_key(|r| r.direction != "ingress");
    Advice {
        container: container.to_string(),
        service: local.get(COMPOSE_SERVICE).cloned(),
        selector: selector_for(local),
        rules,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::flow::{EdgeKey, EdgeStats};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn edge(
        dir: &str,
        peer: EdgePeer,
        protocol: u8,
        port: u16,
        allowed: u64,
        audit: u64,
        denied: u64,
    ) -> Edge {
        Edge {
            key: EdgeKey {
                local: labels(&[("id", "api")]),
                direction: dir.into(),
                peer,
                protocol,
                port,
            },
            stats: EdgeStats {
                allowed,
                audit,
                denied,
                ..EdgeStats::default()
            },
        }
    }

    #[test]
    fn peers_by_labels_outside_by_prefix_ports_merged_denied_left_out() {
        let web = EdgePeer::Container {
            labels: labels(&[
                ("com.docker.compose.project", "shop"),
                ("com.docker.compose.service", "web"),
                ("com.docker.compose.network", "has space"),
            ]),
        };
        let edges = vec![
            edge("ingress", web.clone(), 6, 8080, 3, 0, 0),
            edge("ingress", web.clone(), 6, 9090, 0, 2, 0),
            edge("ingress", EdgePeer::Host, 6, 22, 0, 0, 5),
            edge(
                "egress",
                EdgePeer::Outside {
                    address: "192.0.2.7".parse().unwrap(),
                },
                17,
                53,
                1,
                0,
                0,
            ),
            edge(
                "egress",
                EdgePeer::Container {
                    labels: labels(&[("id", "db")]),
                },
                6,
                5432,
                4,
                0,
                0,
            ),
            edge("egress", EdgePeer::Host, 1, 8, 1, 0, 0),
        ];
        let a = advise("api-1", &labels(&[("id", "api")]), &edges);
        let texts: Vec<&str> = a.rules.iter().map(|r| r.rule.as_str()).collect();
        assert_eq!(
            texts,
            vec![
                "allow from com.docker.compose.project=shop,com.docker.compose.service=web port 8080/tcp,9090/tcp",
                "allow to id=db port 5432/tcp",
                "allow to host port icmp",
                "allow to cidr 192.0.2.7/32 port 53/udp",
            ]
        );
        assert_eq!(a.rules[0].seen, 5);
        // Every rule is valid label language.
        for r in &a.rules {
            let direction = if r.direction == "ingress" {
                labels_policy::Direction::Ingress
            } else {
                labels_policy::Direction::Egress
            };
            labels_policy::parse_rules("bpfwall.ingress", direction, &r.rule).unwrap();
        }
    }

    #[test]
    fn another_workload_s_edges_are_not_advised() {
        let mut e = edge("ingress", EdgePeer::Host, 6, 80, 1, 0, 0);
        e.key.local = labels(&[("id", "other")]);
        assert!(advise("api", &labels(&[("id", "api")]), &[e])
            .rules
            .is_empty());
    }
}
