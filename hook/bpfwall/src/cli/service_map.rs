//! `bpfwall map`: the service graph of the edge record, as DOT or as an SVG
//! drawn here (nodes on a circle, no graphviz needed). Nodes are
//! identities: workloads by their compose service name (else the `id`
//! label, else the last container seen), the host, and addresses outside;
//! edges carry the protocol and port, coloured by what was seen (green
//! allowed, orange audit, red denied; mixed edges take the worst).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::api::flow::{Edge, EdgeList, EdgePeer};

/// One node's name for a workload's labels.
fn workload_name(labels: &BTreeMap<String, String>, seen: Option<&str>) -> String {
    if let Some(s) = labels.get("com.docker.compose.service") {
        return s.clone();
    }
    if let Some(id) = labels.get("id") {
        return id.clone();
    }
    if let Some(name) = seen {
        return name.to_string();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A drawn edge: from, to, label, colour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arc {
    /// The node that opened the flow.
    pub from: String,
    /// The node it went to.
    pub to: String,
    /// "tcp/80 allowed".
    pub label: String,
    /// "allowed", "audit" or "denied" (the worst seen).
    pub verdict: &'static str,
}

/// The graph: node names and arcs (from the opener to the receiver).
pub fn graph(list: &EdgeList) -> (Vec<String>, Vec<Arc>) {
    let mut nodes = std::collections::BTreeSet::new();
    let mut arcs: BTreeMap<(String, String, String), &'static str> = BTreeMap::new();
    for Edge { key, stats } in &list.edges {
        let local = workload_name(&key.local, stats.local_name.as_deref());
        let peer = match &key.peer {
            EdgePeer::Container { labels } => workload_name(labels, stats.peer_name.as_deref()),
            EdgePeer::Host => "host".to_string(),
            EdgePeer::Outside { address } => address.to_string(),
        };
        let (from, to) = if key.direction == "ingress" {
            (peer, local)
        } else {
            (local, peer)
        };
        let proto = crate::agent::flows::describe::protocol_name(key.protocol);
        let verdict = if stats.denied > 0 {
            "denied"
        } else if stats.audit > 0 {
            "audit"
        } else {
            "allowed"
        };
        nodes.insert(from.clone());
        nodes.insert(to.clone());
        let slot = arcs
            .entry((from, to, format!("{proto}/{}", key.port)))
            .or_insert(verdict);
        // Seen from both ends (egress of one, ingress of the other): the worst.
        let rank = |v: &str| match v {
            "denied" => 2,
            "audit" => 1,
            _ => 0,
        };
        if rank(verdict) > rank(slot) {
            *slot = verdict;
        }
    }
    let arcs = arcs
        .into_iter()
        .map(|((from, to, port), verdict)| Arc {
            label: format!("{port} {verdict}"),
            from,
            to,
            verdict,
        })
        .collect();
    (nodes.into_iter().collect(), arcs)
}

fn colour(verdict: &str) -> &'static str {
    match verdict {
        "denied" => "#d62728",
        "audit" => "#ff7f0e",
        _ => "#2ca02c",
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The graph in DOT.
pub fn dot(list: &EdgeList) -> String {
    let (nodes, arcs) = graph(list);
    let mut out =
        String::from("digraph bpfwall {\n  rankdir=LR;\n  node [shape=box, style=rounded];\n");
    for n in &nodes {
        let _ = writeln!(out, "  {};", serde_json::to_string(n).unwrap_or_default());
    }
    for a in &arcs {
        let _ = writeln!(
            out,
            "  {} -> {} [label={}, color=\"{}\"];",
            serde_json::to_string(&a.from).unwrap_or_default(),
            serde_json::to_string(&a.to).unwrap_or_default(),
            serde_json::to_string(&a.label).unwrap_or_default(),
            colour(a.verdict)
        );
    }
    out.push_str("}\n");
    out
}

/// The graph as an SVG: nodes on a circle, arcs as straight arrows with
/// their port and verdict written halfway.
pub fn svg(list: &EdgeList) -> String {
    let (nodes, arcs) = graph(list);
    let n = nodes.len().max(1) as f64;
    let radius = (90.0 * n / std::f64::consts::PI).max(160.0);
    let size = 2.0 * radius + 260.0;
    let centre = size / 2.0;
    let at: BTreeMap<&str, (f64, f64)> = nodes
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let angle = 2.0 * std::f64::consts::PI * i as f64 / n - std::f64::consts::FRAC_PI_2;
            (
                name.as_str(),
                (centre + radius * angle.cos(), centre + radius * angle.sin()),
            )
        })
        .collect();
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{size:.0}\" height=\"{size:.0}\" viewBox=\"0 0 {size:.0} {size:.0}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <title>bpfwall service map</title>\n\
         <defs>\n"
    );
    for v in ["allowed", "audit", "denied"] {
        let _ = writeln!(
            out,
            "<marker id=\"arrow-{v}\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"8\" markerHeight=\"8\" orient=\"auto-start-reverse\"><path d=\"M 0 0 L 10 5 L 0 10 z\" fill=\"{}\"/></marker>",
            colour(v)
        );
    }
    out.push_str("</defs>\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    for a in &arcs {
        let (Some(&(x1, y1)), Some(&(x2, y2))) = (at.get(a.from.as_str()), at.get(a.to.as_str()))
        else {
            continue;
        };
        // Stop short of the node boxes.
        let (dx, dy) = (x2 - x1, y2 - y1);
        let len = (dx * dx + dy * dy).sqrt().max(1.0);
        let shrink = 34.0 / len;
        let (sx, sy) = (x1 + dx * shrink, y1 + dy * shrink);
        let (ex, ey) = (x2 - dx * shrink, y2 - dy * shrink);
        let _ = writeln!(
            out,
            "<g class=\"edge\"><line x1=\"{sx:.1}\" y1=\"{sy:.1}\" x2=\"{ex:.1}\" y2=\"{ey:.1}\" stroke=\"{c}\" stroke-width=\"2\" marker-end=\"url(#arrow-{v})\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"{c}\" text-anchor=\"middle\">{}</text></g>",
            (sx + ex) / 2.0,
            (sy + ey) / 2.0 - 4.0,
            escape(&a.label),
            c = colour(a.verdict),
            v = a.verdict,
        );
    }
    for (name, (x, y)) in &at {
        let width = 16.0 + 7.0 * name.chars().count() as f64;
        let _ = writeln!(
            out,
            "<g class=\"node\"><rect x=\"{:.1}\" y=\"{:.1}\" width=\"{width:.1}\" height=\"28\" rx=\"8\" fill=\"#eef3fb\" stroke=\"#4a6fa5\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text></g>",
            x - width / 2.0,
            y - 14.0,
            y + 4.0,
            escape(name)
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"10\" y=\"{:.0}\" fill=\"#555\">green: allowed, orange: audit (would be dropped), red: denied</text>",
        size - 10.0
    );
    out.push_str("</svg>\n");
    out
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

    fn list() -> EdgeList {
        let web = labels(&[
            ("com.docker.compose.service", "web"),
            ("com.docker.compose.project", "a&b"),
        ]);
        let api = labels(&[("com.docker.compose.service", "api")]);
        let e =
            |local: &BTreeMap<String, String>, dir: &str, peer: EdgePeer, port, allowed, denied| {
                Edge {
                    key: EdgeKey {
                        local: local.clone(),
                        direction: dir.into(),
                        peer,
                        protocol: 6,
                        port,
                    },
                    stats: EdgeStats {
                        allowed,
                        denied,
                        ..EdgeStats::default()
                    },
                }
            };
        EdgeList {
            edges: vec![
                e(
                    &web,
                    "egress",
                    EdgePeer::Container {
                        labels: api.clone(),
                    },
                    8080,
                    3,
                    0,
                ),
                e(
                    &api,
                    "ingress",
                    EdgePeer::Container {
                        labels: web.clone(),
                    },
                    8080,
                    3,
                    0,
                ),
                e(&api, "ingress", EdgePeer::Host, 22, 0, 4),
                e(
                    &api,
                    "egress",
                    EdgePeer::Outside {
                        address: "192.0.2.9".parse().unwrap(),
                    },
                    443,
                    1,
                    0,
                ),
            ],
            evicted: 0,
            capacity: 10,
        }
    }

    #[test]
    fn nodes_are_services_and_both_ends_of_a_flow_make_one_arc() {
        let (nodes, arcs) = graph(&list());
        assert_eq!(nodes, vec!["192.0.2.9", "api", "host", "web"]);
        assert_eq!(arcs.len(), 3);
        assert!(arcs.contains(&Arc {
            from: "web".into(),
            to: "api".into(),
            label: "tcp/8080 allowed".into(),
            verdict: "allowed"
        }));
        assert!(arcs
            .iter()
            .any(|a| a.from == "host" && a.verdict == "denied"));
    }

    #[test]
    fn the_svg_is_well_formed_xml_naming_every_node() {
        let text = svg(&list());
        assert!(text.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        // Well formed: every element opened is closed, in order.
        let mut stack: Vec<String> = Vec::new();
        let mut rest = text.as_str();
        while let Some(i) = rest.find('<') {
            rest = &rest[i + 1..];
            let end = rest.find('>').unwrap();
            let tag = &rest[..end];
            rest = &rest[end + 1..];
            if let Some(closing) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(closing), "{text}");
            } else if !tag.ends_with('/') {
                stack.push(tag.split_whitespace().next().unwrap().to_string());
            }
        }
        assert!(stack.is_empty(), "unclosed: {stack:?}");
        for name in ["web", "api", "host", "192.0.2.9"] {
            assert!(text.contains(&format!(">{name}</text>")), "{name}");
        }
        let dot = dot(&list());
        assert!(
            dot.contains("\"web\" -> \"api\" [label=\"tcp/8080 allowed\""),
            "{dot}"
        );
    }
}
