//! `bpfwall advise`: the daemon's suggestion written as `--label` flags
//! (the default), a compose override (`--format compose`) or a Cilium
//! policy file (`--format cilium`). Every form parses with `bpfwall policy
//! validate` (the unit tests below hold it to that).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::api::flow::{Advice, SuggestedRule};

/// The three forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `--label 'bpfwall.ingress=...'` flags for `docker run`.
    Labels,
    /// A compose override file.
    Compose,
    /// A Cilium policy file for the policy directory.
    Cilium,
}

fn joined(rules: &[SuggestedRule], direction: &str) -> Option<String> {
    let texts: Vec<&str> = rules
        .iter()
        .filter(|r| r.direction == direction)
        .map(|r| r.rule.as_str())
        .collect();
    (!texts.is_empty()).then(|| texts.join("; "))
}

/// A YAML string: double-quoted, JSON escaping (YAML reads JSON strings).
fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| format!("\"{text}\""))
}

/// The advice in one form.
pub fn render(a: &Advice, format: Format) -> String {
    let mut out = String::new();
    for note in &a.notes {
        let _ = writeln!(out, "# note: {note}");
    }
    if a.rules.is_empty() {
        let _ = writeln!(
            out,
            "# nothing seen for {}: no rule to suggest (run its traffic first, in audit mode if it is enforced)",
            a.container
        );
        return out;
    }
    match format {
        Format::Labels => {
            let _ = writeln!(
                out,
                "# the least allow policy for what {} was seen doing",
                a.container
            );
            for direction in ["ingress", "egress"] {
                if let Some(text) = joined(&a.rules, direction) {
                    let _ = writeln!(out, "--label 'bpfwall.{direction}={text}'");
                }
            }
        }
        Format::Compose => {
            let service = a.service.clone().unwrap_or_else(|| a.container.clone());
            let _ = writeln!(
                out,
                "# compose override: the least allow policy for what {} was seen doing",
                a.container
            );
            let _ = writeln!(out, "services:\n  {}:\n    labels:", quoted(&service));
            for direction in ["ingress", "egress"] {
                if let Some(text) = joined(&a.rules, direction) {
                    let _ = writeln!(out, "      bpfwall.{direction}: {}", quoted(&text));
                }
            }
        }
        Format::Cilium => {
            let _ = writeln!(
                out,
                "# the least allow policy for what {} was seen doing",
                a.container
            );
            let _ = writeln!(out, "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy");
            let name: String = a
                .container
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c.to_ascii_lowercase()
                    } else {
                        '-'
                    }
                })
                .collect();
            let _ = writeln!(
                out,
                "metadata:\n  name: {}",
                quoted(&format!("advised-{name}"))
            );
            let _ = writeln!(out, "spec:\n  endpointSelector:\n    matchLabels:");
            write_labels(&mut out, "      ", &a.selector);
            for direction in ["ingress", "egress"] {
                let rules: Vec<&SuggestedRule> = a
                    .rules
                    .iter()
                    .filter(|r| r.direction == direction)
                    .collect();
                if rules.is_empty() {
                    continue;
                }
                let (peers, cidr, entities, word) = if direction == "ingress" {
                    ("fromEndpoints", "fromCIDR", "fromEntities", "ingress")
                } else {
                    ("toEndpoints", "toCIDR", "toEntities", "egress")
                };
                let _ = writeln!(out, "  {word}:");
                for r in rules {
                    match r.peer_kind.as_str() {
                        "container" => {
                            let _ = writeln!(out, "  - {peers}:\n    - matchLabels:");
                            write_labels(&mut out, "        ", &r.peer_labels);
                        }
                        "host" => {
                            let _ = writeln!(out, "  - {entities}: [host]");
                        }
                        _ => {
                            let _ = writeln!(
                                out,
                                "  - {cidr}: [{}]",
                                quoted(r.peer_cidr.as_deref().unwrap_or(""))
                            );
                        }
                    }
                    let ports: Vec<&(String, u16)> =
                        r.ports.iter().filter(|(p, _)| p != "icmp").collect();
                    let icmp: Vec<&(String, u16)> =
                        r.ports.iter().filter(|(p, _)| p == "icmp").collect();
                    if !ports.is_empty() {
                        let _ = writeln!(out, "    toPorts:\n    - ports:");
                        for (proto, port) in ports {
                            let _ = writeln!(
                                out,
                                "      - {{port: \"{port}\", protocol: {}}}",
                                proto.to_uppercase()
                            );
                        }
                    }
                    if !icmp.is_empty() {
                        let _ = writeln!(out, "    icmps:\n    - fields:");
                        for (_, t) in icmp {
                            let _ = writeln!(out, "      - {{type: {t}}}");
                        }
                    }
                }
            }
        }
    }
    out
}

fn write_labels(out: &mut String, indent: &str, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        let _ = writeln!(out, "{indent}{}: {}", quoted(k), quoted(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advice() -> Advice {
        let rule = |direction: &str,
                    rule: &str,
                    kind: &str,
                    labels: &[(&str, &str)],
                    cidr: Option<&str>,
                    ports: &[(&str, u16)]| SuggestedRule {
            direction: direction.into(),
            rule: rule.into(),
            peer_labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            peer_kind: kind.into(),
            peer_cidr: cidr.map(String::from),
            ports: ports.iter().map(|(p, n)| (p.to_string(), *n)).collect(),
            seen: 1,
        };
        Advice {
            container: "shop_api_1".into(),
            service: Some("api".into()),
            selector: [("com.docker.compose.service".to_string(), "api".to_string())].into(),
            rules: vec![
                rule(
                    "ingress",
                    "allow from com.docker.compose.service=web port 8080/tcp",
                    "container",
                    &[("com.docker.compose.service", "web")],
                    None,
                    &[("tcp", 8080)],
                ),
                rule(
                    "ingress",
                    "allow from host port 22/tcp",
                    "host",
                    &[],
                    None,
                    &[("tcp", 22)],
                ),
                rule(
                    "egress",
                    "allow to id=db port 5432/tcp,icmp",
                    "container",
                    &[("id", "db")],
                    None,
                    &[("tcp", 5432), ("icmp", 8)],
                ),
                rule(
                    "egress",
                    "allow to cidr 192.0.2.7/32 port 53/udp",
                    "cidr",
                    &[],
                    Some("192.0.2.7/32"),
                    &[("udp", 53)],
                ),
            ],
            notes: vec![],
        }
    }

    fn labels_of(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter_map(|l| l.strip_prefix("--label '")?.strip_suffix('\''))
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn valid_labels(pairs: &[(String, String)]) -> usize {
        let set: labels_policy::LabelSet = pairs.iter().cloned().collect();
        let parsed = labels_policy::policy_from_labels(&set);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        parsed.rules.len()
    }

    #[test]
    fn the_label_form_parses() {
        let text = render(&advice(), Format::Labels);
        let pairs = labels_of(&text);
        assert_eq!(pairs.len(), 2, "{text}");
        assert_eq!(valid_labels(&pairs), 4);
    }

    #[test]
    fn the_compose_form_is_yaml_whose_labels_parse() {
        let text = render(&advice(), Format::Compose);
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let labels = doc["services"]["api"]["labels"].as_mapping().unwrap();
        let pairs: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().unwrap().to_string(),
                    v.as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(valid_labels(&pairs), 4, "{text}");
    }

    #[test]
    fn the_cilium_form_is_a_policy_file_that_parses() {
        use labels_policy::syntax::cilium::{parse_policy_file, Format as F};
        let text = render(&advice(), Format::Cilium);
        let policies = parse_policy_file(&text, F::Yaml, "advised.yaml")
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(policies.len(), 1);
        assert_eq!(policies[0].rules.len(), 4, "{text}");
    }
}
