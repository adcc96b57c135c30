//! The label language: what parses, to what, and where errors point.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use labels_policy::model::{Direction, Peer, PortSpec, Protocol, Verdict};
use labels_policy::syntax::labels::{parse_port, parse_rules};
use labels_policy::syntax::policy_from_labels;
use labels_policy::LabelSet;

fn labels(pairs: &[(&str, &str)]) -> LabelSet {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn article_rule_parses() {
    let rules = parse_rules(
        "bpfwall.ingress",
        Direction::Ingress,
        "allow from id=app2 port 80/tcp",
    )
    .unwrap();
    assert_eq!(rules.len(), 1);
    let r = &rules[0];
    assert_eq!(r.verdict, Verdict::Allow);
    assert_eq!(r.direction, Direction::Ingress);
    match &r.peers[..] {
        [Peer::Endpoints(sel)] => {
            assert_eq!(sel.match_labels.get("id").map(String::as_str), Some("app2"))
        }
        other => panic!("unexpected peers {other:?}"),
    }
    assert_eq!(
        r.ports,
        vec![PortSpec {
            protocol: Protocol::Tcp,
            first: 80,
            last: 80
        }]
    );
    assert_eq!(r.origin.source, "bpfwall.ingress");
    assert_eq!(r.origin.index, 0);
}

#[test]
fn every_peer_form_parses() {
    let value = "allow to any; deny to host; allow to world port 443/tcp; \
                 allow to cidr 10.0.0.0/8 except 10.1.0.0/16, 10.2.0.0/16 port 53/udp,53/tcp; \
                 allow to cidr fd00::/64; allow to com.docker.compose.service=web,tier=front port 8000-8100/tcp";
    let rules = parse_rules("bpfwall.egress", Direction::Egress, value).unwrap();
    assert_eq!(rules.len(), 6);
    assert_eq!(rules[0].peers, vec![Peer::Any]);
    assert_eq!(rules[1].peers, vec![Peer::Host]);
    assert_eq!(rules[1].verdict, Verdict::Deny);
    assert_eq!(rules[2].peers, vec![Peer::World]);
    match &rules[3].peers[0] {
        Peer::Cidr { prefix, except } => {
            assert_eq!(prefix.to_string(), "10.0.0.0/8");
            assert_eq!(except.len(), 2);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(rules[3].ports.len(), 2);
    assert!(
        matches!(&rules[4].peers[0], Peer::Cidr { prefix, .. } if prefix.to_string() == "fd00::/64")
    );
    match &rules[5].peers[0] {
        Peer::Endpoints(sel) => {
            assert_eq!(sel.match_labels.len(), 2);
            assert_eq!(sel.match_labels["com.docker.compose.service"], "web");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        rules[5].ports,
        vec![PortSpec {
            protocol: Protocol::Tcp,
            first: 8000,
            last: 8100
        }]
    );
    assert_eq!(
        rules.iter().map(|r| r.origin.index).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4, 5]
    );
}

#[test]
fn port_forms() {
    assert_eq!(
        parse_port("icmp").unwrap(),
        PortSpec::all_ports(Protocol::Icmp)
    );
    assert_eq!(
        parse_port("any/icmp").unwrap(),
        PortSpec::all_ports(Protocol::Icmp)
    );
    assert_eq!(
        parse_port("any").unwrap(),
        PortSpec::all_ports(Protocol::Any)
    );
    assert_eq!(
        parse_port("any/udp").unwrap(),
        PortSpec::all_ports(Protocol::Udp)
    );
    assert_eq!(
        parse_port("53/any").unwrap(),
        PortSpec {
            protocol: Protocol::Any,
            first: 53,
            last: 53
        }
    );
    assert_eq!(parse_port("80/tcp").unwrap().to_string(), "80/tcp");
    assert_eq!(
        parse_port("1-65535/udp").unwrap().to_string(),
        "1-65535/udp"
    );
    assert_eq!(parse_port("80").unwrap_err().0, 0);
    assert_eq!(parse_port("80/tpc").unwrap_err().0, 3);
    assert_eq!(parse_port("0/tcp").unwrap_err().0, 0);
    assert_eq!(parse_port("65536/tcp").unwrap_err().0, 0);
    assert_eq!(parse_port("90-80/tcp").unwrap_err().0, 0);
    assert_eq!(parse_port("80-x/tcp").unwrap_err().0, 3);
    assert!(parse_port("8/icmp").is_err());
}

/// (label value, column, a word the expectation must mention)
const BAD_INGRESS: &[(&str, usize, &str)] = &[
    ("allow form id=app2", 7, "'from'"),
    ("allow to id=app2", 7, "ingress label"),
    ("permit from id=app2", 1, "'allow' or 'deny'"),
    ("allow from", 11, "a peer"),
    ("allow from id=app2 port", 24, "a port"),
    ("allow from id=app2 port 80", 25, "PORT/PROTO"),
    ("allow from id=app2 port 80/tpc", 28, "protocol"),
    ("allow from id=app2 port 80/tcp,", 32, "a port"),
    ("allow from id=app2 prot 80/tcp", 20, "';'"),
    ("allow from app2", 12, "a peer"),
    ("allow from id=app2,", 20, "key=value"),
    ("allow from id=a=b", 16, "','"),
    ("allow from cidr 10.0.0.0/33", 17, "prefix"),
    ("allow from cidr 10.0.0.1/8", 17, "no host bits"),
    (
        "allow from cidr 10.0.0.0/8 except 11.0.0.0/16",
        35,
        "inside 10.0.0.0/8",
    ),
    ("allow from id=a,id=b", 17, "one value"),
    ("", 1, "a rule"),
    (" ; ", 4, "a rule"),
];

#[test]
fn errors_name_the_label_and_column() {
    for (value, column, mention) in BAD_INGRESS {
        let err = parse_rules("bpfwall.ingress.web", Direction::Ingress, value)
            .expect_err(&format!("'{value}' must not parse"));
        assert_eq!(err.label, "bpfwall.ingress.web", "{value}");
        assert_eq!(err.column, *column, "column for '{value}': {err}");
        assert!(
            err.message.contains(mention),
            "'{value}': expected '{}' to mention {mention}",
            err.message
        );
        assert_eq!(err.closes, vec![Direction::Ingress]);
        let text = err.to_string();
        assert!(
            text.starts_with("label 'bpfwall.ingress.web' column "),
            "{text}"
        );
    }
}

#[test]
fn multiple_labels_and_separators() {
    let p = policy_from_labels(&labels(&[
        ("bpfwall.ingress", "allow from id=a;; allow from id=b ;"),
        ("bpfwall.ingress.admin", "allow from id=c port 22/tcp"),
        ("bpfwall.egress.dns", "allow to any port 53/udp"),
        ("com.docker.compose.service", "web"),
        ("id", "x"),
    ]));
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert_eq!(p.rules.len(), 4);
    assert_eq!(
        p.rules
            .iter()
            .filter(|r| r.direction == Direction::Egress)
            .count(),
        1
    );
    let sources: Vec<&str> = p.rules.iter().map(|r| r.origin.source.as_str()).collect();
    assert_eq!(
        sources,
        vec![
            "bpfwall.egress.dns",
            "bpfwall.ingress",
            "bpfwall.ingress",
            "bpfwall.ingress.admin"
        ]
    );
}

#[test]
fn unknown_bpfwall_keys_close_both_directions() {
    let p = policy_from_labels(&labels(&[("bpfwall.ingres", "allow from id=a")]));
    assert_eq!(p.errors.len(), 1);
    assert_eq!(p.errors[0].label, "bpfwall.ingres");
    assert!(p.has_error(Direction::Ingress) && p.has_error(Direction::Egress));
    let p = policy_from_labels(&labels(&[("bpfwall.egress.", "allow to any")]));
    assert_eq!(p.errors.len(), 1);
    assert!(p.has_error(Direction::Egress) && !p.has_error(Direction::Ingress));
}

#[test]
fn one_bad_label_keeps_the_others() {
    let p = policy_from_labels(&labels(&[
        ("bpfwall.ingress", "allow from id=a port 80/tcp"),
        ("bpfwall.egress", "allow to id=b port eighty/tcp"),
    ]));
    assert_eq!(p.rules.len(), 1);
    assert_eq!(p.errors.len(), 1);
    assert_eq!(p.errors[0].label, "bpfwall.egress");
    assert_eq!(p.errors[0].column, 20);
    assert!(p.has_error(Direction::Egress));
    assert!(!p.has_error(Direction::Ingress));
}

#[test]
fn display_round_trips() {
    let value = "allow from id=app2 port 80/tcp,8000-8100/tcp; deny from cidr 10.0.0.0/8 except 10.1.0.0/16; allow from any port icmp";
    let rules = parse_rules("bpfwall.ingress", Direction::Ingress, value).unwrap();
    let printed: Vec<String> = rules.iter().map(ToString::to_string).collect();
    let again = parse_rules("bpfwall.ingress", Direction::Ingress, &printed.join("; ")).unwrap();
    assert_eq!(rules, again);
}
