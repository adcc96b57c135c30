//! The rule semantics three ways: the compiled maps read through the
//! datapath's decision table (`decision::decide`), the product's rule
//! attribution (`attribution::evaluate_rules`), and an independent reference
//! written from the documented semantics (`oracle`, in tests/oracle/). The
//! property tests hold the first two to the third over random rule sets,
//! both directions, TCP, UDP, SCTP, ICMP, ICMPv6 and a protocol without
//! ports, at the edges of every port range; they also hold the ipcache's
//! view of each remote address to the oracle's.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

mod oracle;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use labels_policy::attribution::{evaluate_rules, RuleVerdict};
use labels_policy::datapath_abi::{self as abi, DropReason};
use labels_policy::decision::{decide, ipcache_identity, CtState, Decision, Packet};
use labels_policy::model::{Requirement, SelectorOperator};
use labels_policy::{
    compile, Attachment, CompileInput, ContainerInput, Direction, HostPolicy, IdentityAllocator,
    IdentityKind, LabelSet, Peer, PortSpec, Protocol, Rule, RuleOrigin, Selector, Verdict,
};
use oracle::{Block, Expected, Remote};
use proptest::prelude::*;

fn labels(pairs: &[(&str, &str)]) -> LabelSet {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn addrs(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

fn container(name: &str, pairs: &[(&str, &str)], addresses: &[&str]) -> ContainerInput {
    ContainerInput {
        name: name.into(),
        labels: labels(pairs),
        addresses: addrs(addresses),
        attachment: None,
        network: Default::default(),
        default_deny: false,
        started: 0,
    }
}

/// The product's identity kind as the oracle's kind of remote.
fn as_remote(kind: &IdentityKind) -> Remote {
    match kind {
        IdentityKind::Host => Remote::Host,
        IdentityKind::World => Remote::World,
        IdentityKind::Containers(l) => Remote::Container(l.clone()),
        IdentityKind::Cidr(net) => Remote::Cidr(Block::of_net(net)),
    }
}

/// Does the datapath's decision say what the oracle expects?
fn maps_agree(expected: &Expected, maps: Decision) -> bool {
    matches!(
        (expected, maps),
        (Expected::Open | Expected::Allowed(_), Decision::Pass)
            | (Expected::Denied(_), Decision::Drop(DropReason::PolicyDeny))
            | (
                Expected::DefaultDeny,
                Decision::Drop(DropReason::PolicyDefault)
            )
    )
}

/// Does the product's attribution say what the oracle expects, naming the
/// first deciding rule in rule order (its documented choice)?
fn attribution_agrees(expected: &Expected, got: &RuleVerdict) -> bool {
    match (expected, got) {
        (Expected::Open, RuleVerdict::Unenforced)
        | (Expected::DefaultDeny, RuleVerdict::DefaultDeny) => true,
        (Expected::Allowed(origins), RuleVerdict::Allowed(origin))
        | (Expected::Denied(origins), RuleVerdict::Denied(origin)) => {
            origins.first() == Some(origin)
        }
        _ => false,
    }
}

/// Compiles the containers (the first is attached at cgroup 1 and is the
/// only one with rules: `rules` are all of them, from its labels or from
/// `host_policies`) and checks every direction, remote and probe.
fn check_against_oracle(
    mut containers: Vec<ContainerInput>,
    host: &[IpAddr],
    host_policies: &[HostPolicy],
    rules: &[Rule],
    remotes: &[IpAddr],
    probes: &BTreeSet<(u8, u16)>,
) -> Result<(), TestCaseError> {
    containers[0].attachment = Some(Attachment {
        cgroup_id: 1,
        endpoint_id: 1,
    });
    // Egress packets leave from the container's own address (a forged one
    // is dropped before policy: the decision-table cases cover that).
    if containers[0].addresses.is_empty() {
        containers[0].addresses.push("192.0.2.254".parse().unwrap());
    }
    let local = containers[0].addresses[0];
    let compiled = compile(
        CompileInput {
            containers: &containers,
            host_addresses: host,
            host_policies,
        },
        &mut IdentityAllocator::new(),
    )
    .unwrap();
    let endpoint = compiled.endpoints[&abi::EndpointKey { cgroup_id: 1 }];
    let peers: Vec<(Vec<IpAddr>, BTreeMap<String, String>)> = containers
        .iter()
        .map(|c| (c.addresses.clone(), c.labels.clone()))
        .collect();
    let prefixes = oracle::named_prefixes(rules);
    for &remote in remotes {
        let want_remote = oracle::classify(remote, host, &peers, &prefixes);
        let kind = compiled
            .identities
            .get(&ipcache_identity(&compiled, remote))
            .cloned()
            .unwrap_or(IdentityKind::World);
        prop_assert_eq!(
            as_remote(&kind),
            want_remote.clone(),
            "the ipcache classifies {} differently",
            remote
        );
        for direction in Direction::ALL {
            for &(protocol, dport) in probes {
                let expected = oracle::expected(rules, direction, &want_remote, protocol, dport);
                let packet = Packet {
                    direction,
                    local,
                    remote,
                    protocol,
                    dport,
                    tcp_syn: protocol == oracle::TCP,
                    loopback: false,
                };
                let maps = decide(&compiled, &endpoint, &packet, CtState::None);
                prop_assert!(
                    maps_agree(&expected, maps),
                    "{direction} {remote} {protocol}/{dport}: maps {maps:?}, oracle {expected:?}\nrules {rules:#?}"
                );
                let attributed = evaluate_rules(rules, direction, &kind, protocol, dport);
                prop_assert!(
                    attribution_agrees(&expected, &attributed),
                    "{direction} {remote} {protocol}/{dport}: attribution {attributed:?}, oracle {expected:?}\nrules {rules:#?}"
                );
            }
        }
    }
    Ok(())
}

// ---- rules written as labels ---------------------------------------------

const PEERS: &[&str] = &[
    "id=b",
    "id=c",
    "role=x",
    "any",
    "host",
    "world",
    "cidr 198.18.0.0/15",
    "cidr 198.18.1.0/24",
    "cidr 0.0.0.0/0 except 198.18.0.0/16",
];
const PORTS: &[&str] = &[
    "",
    " port 80/tcp",
    " port 22/tcp",
    " port 1-1024/tcp",
    " port 53/udp",
    " port 53/any",
    " port icmp",
    " port any/udp",
    " port 80-90/tcp,53/udp",
];

fn rule_text() -> impl Strategy<Value = String> {
    (any::<bool>(), 0..PEERS.len(), 0..PORTS.len()).prop_map(|(deny, p, q)| {
        format!(
            "{} {{dir}} {}{}",
            if deny { "deny" } else { "allow" },
            PEERS[p],
            PORTS[q]
        )
    })
}

const REMOTES: &[&str] = &[
    "10.0.0.2",
    "10.0.0.3",
    "10.0.0.9",
    "172.17.0.1",
    "198.18.0.7",
    "198.18.1.7",
    "203.0.113.5",
];
const PROBES: &[(u8, u16)] = &[
    (6, 80),
    (6, 22),
    (6, 85),
    (6, 1024),
    (6, 1025),
    (17, 53),
    (17, 9),
    (1, 8),
    (58, 128),
    (132, 53),
    (47, 0),
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    /// Label text through the parser and the compiler: the maps, the rule
    /// attribution (and so each other, as `query` requires) and the oracle
    /// agree.
    #[test]
    fn map_decisions_agree_with_rule_evaluation(
        ingress in prop::collection::vec(rule_text(), 0..5),
        egress in prop::collection::vec(rule_text(), 0..5),
    ) {
        let mut a_labels = vec![("id".to_string(), "a".to_string())];
        if !ingress.is_empty() {
            a_labels.push(("bpfwall.ingress".into(), ingress.join("; ").replace("{dir}", "from")));
        }
        if !egress.is_empty() {
            a_labels.push(("bpfwall.egress".into(), egress.join("; ").replace("{dir}", "to")));
        }
        let a_labels: LabelSet = a_labels.into_iter().collect();
        let parsed = labels_policy::policy_from_labels(&a_labels);
        prop_assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let containers = vec![
            ContainerInput { name: "a".into(), labels: a_labels.clone(), addresses: addrs(&["10.0.0.1"]), attachment: None, network: Default::default(), default_deny: false, started: 0, },
            container("b", &[("id", "b"), ("role", "x")], &["10.0.0.2"]),
            container("c", &[("id", "c")], &["10.0.0.3"]),
            container("d", &[("id", "d"), ("role", "x")], &["10.0.0.9"]),
        ];
        check_against_oracle(
            containers,
            &addrs(&["172.17.0.1"]),
            &[],
            &parsed.rules,
            &addrs(REMOTES),
            &PROBES.iter().copied().collect(),
        )?;
    }
}

// ---- rules written as the model (every peer and port form) ----------------

const KEYS: &[&str] = &["id", "role", "tier", "env"];
const VALUES: &[&str] = &["a", "b", "c", "d", "x", "y", "api", "web", "dev"];
const NETS: &[&str] = &[
    "0.0.0.0/0",
    "10.0.0.0/8",
    "10.0.0.2/32",
    "172.17.0.1/32",
    "198.18.0.0/15",
    "198.18.1.0/24",
    "198.18.1.128/25",
    "::/0",
    "2001:db8::/32",
    "2001:db8:1::/48",
    "fd00::/64",
];
const EDGES: &[u16] = &[
    0, 1, 8, 22, 53, 79, 80, 81, 128, 255, 256, 1023, 1024, 8000, 8100, 65534, 65535,
];
const PROTOCOLS: &[Protocol] = &[
    Protocol::Tcp,
    Protocol::Udp,
    Protocol::Icmp,
    Protocol::Icmp4,
    Protocol::Icmp6,
    Protocol::Any,
];

fn requirement() -> impl Strategy<Value = Requirement> {
    (
        0..KEYS.len(),
        0..4usize,
        prop::collection::vec(0..VALUES.len(), 1..3),
    )
        .prop_map(|(k, op, values)| {
            let operator = [
                SelectorOperator::In,
                SelectorOperator::NotIn,
                SelectorOperator::Exists,
                SelectorOperator::DoesNotExist,
            ][op];
            let values = match operator {
                SelectorOperator::In | SelectorOperator::NotIn => {
                    values.iter().map(|v| VALUES[*v].to_string()).collect()
                }
                SelectorOperator::Exists | SelectorOperator::DoesNotExist => Vec::new(),
            };
            Requirement {
                key: KEYS[k].to_string(),
                operator,
                values,
            }
        })
}

fn selector() -> impl Strategy<Value = Selector> {
    (
        prop::collection::vec((0..KEYS.len(), 0..VALUES.len()), 0..3),
        prop::collection::vec(requirement(), 0..3),
    )
        .prop_map(|(pairs, match_expressions)| Selector {
            match_labels: pairs
                .into_iter()
                .map(|(k, v)| (KEYS[k].to_string(), VALUES[v].to_string()))
                .collect(),
            match_expressions,
        })
}

fn peer() -> impl Strategy<Value = Peer> {
    prop_oneof![
        Just(Peer::Any),
        Just(Peer::Host),
        Just(Peer::World),
        selector().prop_map(Peer::Endpoints),
        (0..NETS.len(), prop::collection::vec(0..NETS.len(), 0..3)).prop_map(|(p, except)| {
            Peer::Cidr {
                prefix: NETS[p].parse().unwrap(),
                except: except.iter().map(|e| NETS[*e].parse().unwrap()).collect(),
            }
        }),
    ]
}

fn port_spec() -> impl Strategy<Value = PortSpec> {
    prop_oneof![
        (0..PROTOCOLS.len()).prop_map(|p| PortSpec::all_ports(PROTOCOLS[p])),
        (0..PROTOCOLS.len(), 0..EDGES.len(), 0..EDGES.len()).prop_map(|(p, a, b)| PortSpec {
            protocol: PROTOCOLS[p],
            first: EDGES[a.min(b)],
            last: EDGES[a.max(b)],
        }),
    ]
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(peer(), 0..3),
        prop::collection::vec(port_spec(), 0..3),
    )
        .prop_map(|(egress, deny, peers, ports)| Rule {
            direction: if egress {
                Direction::Egress
            } else {
                Direction::Ingress
            },
            verdict: if deny { Verdict::Deny } else { Verdict::Allow },
            peers,
            ports,
            http: Vec::new(),
            origin: RuleOrigin {
                source: "generated".into(),
                index: 0,
            },
        })
}

/// Fixed probes plus, for every port spec, the ports on both sides of both
/// edges of its range, in every protocol it names and one it does not.
fn edge_probes(rules: &[Rule]) -> BTreeSet<(u8, u16)> {
    let mut out: BTreeSet<(u8, u16)> = PROBES.iter().copied().collect();
    for spec in rules.iter().flat_map(|r| &r.ports) {
        let edges = [
            spec.first.saturating_sub(1),
            spec.first,
            spec.last,
            spec.last.saturating_add(1),
        ];
        for protocol in [
            oracle::TCP,
            oracle::UDP,
            oracle::SCTP,
            oracle::ICMP,
            oracle::ICMPV6,
        ] {
            out.extend(edges.iter().map(|&port| (protocol, port)));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    /// Model rules straight into the compiler (through a host policy), with
    /// what labels cannot write: several peers per rule, match expressions,
    /// IPv6 and overlapping prefixes with excepts anywhere, ICMP per family,
    /// any protocol with a range, ranges from 0 to 65535.
    #[test]
    fn model_rules_agree_with_the_oracle(generated in prop::collection::vec(rule(), 0..6)) {
        let rules: Vec<Rule> = generated
            .into_iter()
            .enumerate()
            .map(|(index, r)| Rule { origin: RuleOrigin { source: "generated".into(), index }, ..r })
            .collect();
        let subject = Selector { match_labels: labels(&[("id", "a")]), match_expressions: Vec::new() };
        let host_policies = [HostPolicy { subject, rules: rules.clone() }];
        let containers = vec![
            container("a", &[("id", "a"), ("tier", "api")], &["10.0.0.1", "fd00::a"]),
            container("b", &[("id", "b"), ("role", "x")], &["10.0.0.2", "fd00::2"]),
            container("c", &[("id", "c"), ("env", "dev")], &["10.0.0.3"]),
            container("d", &[("id", "d"), ("role", "x"), ("tier", "web")], &["10.0.0.9", "fd00::9"]),
        ];
        let remotes = addrs(&[
            "10.0.0.2", "10.0.0.3", "10.0.0.9", "10.5.5.5", "172.17.0.1", "198.18.0.7",
            "198.18.1.7", "198.18.1.200", "203.0.113.5", "fd00::1", "fd00::2", "fd00::9",
            "fd00::77", "2001:db8::1", "2001:db8:1::1", "2001:db9::1",
        ]);
        check_against_oracle(
            containers,
            &addrs(&["172.17.0.1", "fd00::1"]),
            &host_policies,
            &rules,
            &remotes,
            &edge_probes(&rules),
        )?;
    }
}

// ---- the oracle against hand-written expectations -------------------------

fn rule_of(direction: Direction, verdict: Verdict, peers: Vec<Peer>, ports: Vec<PortSpec>) -> Rule {
    Rule {
        direction,
        verdict,
        peers,
        ports,
        http: Vec::new(),
        origin: RuleOrigin {
            source: "hand".into(),
            index: 0,
        },
    }
}

fn net(text: &str) -> Block {
    Block::of_net(&text.parse().unwrap())
}

#[test]
fn oracle_blocks_compare_masked_integers() {
    assert!(net("10.0.0.0/8").holds(&net("10.1.0.0/16")));
    assert!(net("10.0.0.0/8").holds(&net("10.0.0.0/8")));
    assert!(!net("10.1.0.0/16").holds(&net("10.0.0.0/8")));
    assert!(!net("10.0.0.0/8").holds(&net("11.0.0.0/16")));
    assert!(net("0.0.0.0/0").holds(&Block::of_addr("255.255.255.255".parse().unwrap())));
    assert!(!net("::/0").holds(&net("10.0.0.0/8")), "families differ");
    assert!(net("2001:db8::/32").holds(&net("2001:db8:1::/48")));
    assert!(!net("2001:db8:1::/48").holds(&net("2001:db8:2::/48")));
    assert_eq!(
        net("10.1.2.3/8"),
        net("10.0.0.0/8"),
        "host bits are cleared"
    );
}

#[test]
fn oracle_deny_wins_and_open_directions() {
    let tcp80 = PortSpec {
        protocol: Protocol::Tcp,
        first: 80,
        last: 80,
    };
    let rules = vec![
        rule_of(
            Direction::Ingress,
            Verdict::Allow,
            vec![Peer::Any],
            vec![tcp80],
        ),
        rule_of(Direction::Ingress, Verdict::Deny, vec![Peer::World], vec![]),
    ];
    let world = Remote::World;
    let host = Remote::Host;
    assert!(matches!(
        oracle::expected(&rules, Direction::Ingress, &world, oracle::TCP, 80),
        Expected::Denied(_)
    ));
    assert!(matches!(
        oracle::expected(&rules, Direction::Ingress, &host, oracle::TCP, 80),
        Expected::Allowed(_)
    ));
    assert_eq!(
        oracle::expected(&rules, Direction::Ingress, &host, oracle::TCP, 81),
        Expected::DefaultDeny
    );
    assert_eq!(
        oracle::expected(&rules, Direction::Egress, &world, oracle::TCP, 80),
        Expected::Open
    );
    let nobody = vec![rule_of(Direction::Egress, Verdict::Allow, vec![], vec![])];
    assert_eq!(
        oracle::expected(&nobody, Direction::Egress, &host, oracle::TCP, 80),
        Expected::DefaultDeny,
        "a rule that selects nobody still closes its direction"
    );
}

#[test]
fn oracle_classifies_and_matches_peers() {
    let host = addrs(&["172.17.0.1"]);
    let containers = vec![(addrs(&["10.0.0.2"]), labels(&[("id", "b"), ("env", "dev")]))];
    let rules = vec![rule_of(
        Direction::Egress,
        Verdict::Allow,
        vec![Peer::Cidr {
            prefix: "10.0.0.0/8".parse().unwrap(),
            except: vec!["10.9.0.0/16".parse().unwrap()],
        }],
        vec![],
    )];
    let prefixes = oracle::named_prefixes(&rules);
    let at = |a: &str| oracle::classify(a.parse().unwrap(), &host, &containers, &prefixes);
    assert_eq!(at("172.17.0.1"), Remote::Host);
    assert!(matches!(at("10.0.0.2"), Remote::Container(_)));
    assert_eq!(at("10.1.1.1"), Remote::Cidr(net("10.0.0.0/8")));
    assert_eq!(at("10.9.1.1"), Remote::Cidr(net("10.9.0.0/16")));
    assert_eq!(at("8.8.8.8"), Remote::World);
    let verdict = |a: &str| oracle::expected(&rules, Direction::Egress, &at(a), oracle::UDP, 53);
    assert!(matches!(verdict("10.1.1.1"), Expected::Allowed(_)));
    assert_eq!(verdict("10.9.1.1"), Expected::DefaultDeny, "except");
    assert_eq!(
        verdict("10.0.0.2"),
        Expected::DefaultDeny,
        "a container is not cidr"
    );
    assert_eq!(
        verdict("172.17.0.1"),
        Expected::DefaultDeny,
        "the host is not cidr"
    );

    let world = vec![rule_of(
        Direction::Egress,
        Verdict::Allow,
        vec![Peer::World],
        vec![],
    )];
    let w = |a: &str| oracle::expected(&world, Direction::Egress, &at(a), oracle::TCP, 1);
    assert!(
        matches!(w("10.1.1.1"), Expected::Allowed(_)),
        "world holds cidr identities"
    );
    assert!(matches!(w("8.8.8.8"), Expected::Allowed(_)));
    assert_eq!(w("10.0.0.2"), Expected::DefaultDeny);
    assert_eq!(w("172.17.0.1"), Expected::DefaultDeny);

    let selector = Selector {
        match_labels: labels(&[("id", "b")]),
        match_expressions: vec![
            Requirement {
                key: "env".into(),
                operator: SelectorOperator::NotIn,
                values: vec!["prod".into()],
            },
            Requirement {
                key: "quarantine".into(),
                operator: SelectorOperator::DoesNotExist,
                values: vec![],
            },
        ],
    };
    let sel = vec![rule_of(
        Direction::Ingress,
        Verdict::Allow,
        vec![Peer::Endpoints(selector.clone())],
        vec![],
    )];
    let s = |pairs: &[(&str, &str)]| {
        oracle::expected(
            &sel,
            Direction::Ingress,
            &Remote::Container(labels(pairs)),
            oracle::TCP,
            1,
        )
    };
    assert!(matches!(
        s(&[("id", "b"), ("env", "dev")]),
        Expected::Allowed(_)
    ));
    assert!(
        matches!(s(&[("id", "b")]), Expected::Allowed(_)),
        "NotIn holds when absent"
    );
    assert_eq!(s(&[("id", "b"), ("env", "prod")]), Expected::DefaultDeny);
    assert_eq!(
        s(&[("id", "b"), ("quarantine", "1")]),
        Expected::DefaultDeny
    );
    assert_eq!(s(&[("id", "c")]), Expected::DefaultDeny);
}

#[test]
fn oracle_ports() {
    let one = |protocol: Protocol, first: u16, last: u16, p: u8, port: u16| {
        let rules = vec![rule_of(
            Direction::Ingress,
            Verdict::Allow,
            vec![Peer::Any],
            vec![PortSpec {
                protocol,
                first,
                last,
            }],
        )];
        matches!(
            oracle::expected(&rules, Direction::Ingress, &Remote::World, p, port),
            Expected::Allowed(_)
        )
    };
    assert!(one(Protocol::Tcp, 80, 90, oracle::TCP, 80));
    assert!(one(Protocol::Tcp, 80, 90, oracle::TCP, 90));
    assert!(!one(Protocol::Tcp, 80, 90, oracle::TCP, 91));
    assert!(!one(Protocol::Tcp, 80, 90, oracle::UDP, 85));
    assert!(one(Protocol::Icmp, 0, 255, oracle::ICMP, 8));
    assert!(one(Protocol::Icmp, 0, 255, oracle::ICMPV6, 128));
    assert!(one(Protocol::Icmp4, 8, 8, oracle::ICMP, 8));
    assert!(!one(Protocol::Icmp4, 8, 8, oracle::ICMPV6, 8));
    assert!(one(Protocol::Icmp6, 128, 128, oracle::ICMPV6, 128));
    assert!(
        one(Protocol::Any, 0, u16::MAX, 47, 0),
        "any: every protocol"
    );
    assert!(one(Protocol::Any, 53, 53, oracle::SCTP, 53));
    assert!(
        !one(Protocol::Any, 53, 53, oracle::ICMP, 53),
        "a range: only protocols with ports"
    );
    assert!(!one(Protocol::Any, 53, 53, 47, 53));
}
