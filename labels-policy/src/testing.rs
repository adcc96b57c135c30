//! The shared decision table: rows of (policy labels, peer, packet,
//! conntrack state) with the decision the datapath must take. The same rows
//! drive [`crate::decision::decide`] (the unit tests below) and the real
//! program under `BPF_PROG_TEST_RUN` (`hook/tests/datapath_test_run.rs`).
//!
//! Test fixture, not product API: compiled only for this crate's own unit
//! tests and, through the `testing` feature, for other crates' tests (hook
//! enables it in its `[dev-dependencies]`; resolver 2 keeps it out of the
//! normal build).
//!
//! Imports: everything before it ([`crate::compile`](mod@crate::compile), [`crate::decision`],
//! [`crate::datapath_abi`], [`crate::identity`], [`crate::model`]); nothing
//! imports it.

use std::net::IpAddr;

use crate::compile::{compile, Attachment, CompileInput, Compiled, ContainerInput, Endpoint};
use crate::datapath_abi::{self as abi, DropReason, L7DropReason};
use crate::decision::{CtState, Decision, Packet};
use crate::identity::{IdentityAllocator, IdentityExhausted};
use crate::model::{Direction, LabelSet};

/// Who is on the other side in a table case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasePeer {
    /// The case's peer container (labels `id=<name>`) at `CASE_PEER_ADDR`.
    Container(&'static str),
    /// The host, at `CASE_HOST_ADDR`.
    Host,
    /// An address that is neither.
    Address(&'static str),
}

/// The local container's address in every case.
pub const CASE_LOCAL_ADDR: &str = "172.31.0.2";
/// The peer container's address.
pub const CASE_PEER_ADDR: &str = "172.31.0.3";
/// The host's address.
pub const CASE_HOST_ADDR: &str = "172.31.0.1";

/// One row of the shared decision table.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// What the row shows.
    pub name: &'static str,
    /// The local container's policy labels (its other label is `id=local`).
    pub labels: &'static [(&'static str, &'static str)],
    /// The remote side.
    pub peer: CasePeer,
    /// Direction of the packet.
    pub direction: Direction,
    /// IP protocol.
    pub protocol: u8,
    /// Destination port or ICMP type.
    pub dport: u16,
    /// A TCP SYN without ACK.
    pub tcp_syn: bool,
    /// Conntrack state.
    pub ct: CtState,
    /// On the loopback device.
    pub loopback: bool,
    /// The local side's address (on egress, the source): normally
    /// `CASE_LOCAL_ADDR`, another for a forged source.
    pub local: &'static str,
    /// What must happen.
    pub expect: Decision,
}

const IN: Direction = Direction::Ingress;
const OUT: Direction = Direction::Egress;
const TCP: u8 = abi::IPPROTO_TCP;
const UDP: u8 = abi::IPPROTO_UDP;
const ICMP: u8 = abi::IPPROTO_ICMP;
const PASS: Decision = Decision::Pass;
const DENY: Decision = Decision::Drop(DropReason::PolicyDeny);
const DEFAULT: Decision = Decision::Drop(DropReason::PolicyDefault);
const ERROR: Decision = Decision::Drop(DropReason::PolicyError);
const SPOOFED: Decision = Decision::Drop(DropReason::Spoofed);
const BYPASS: Decision = Decision::DropL7(L7DropReason::Bypass);

const fn case(
    name: &'static str,
    labels: &'static [(&'static str, &'static str)],
    peer: CasePeer,
    direction: Direction,
    protocol: u8,
    dport: u16,
    expect: Decision,
) -> Case {
    Case {
        name,
        labels,
        peer,
        direction,
        protocol,
        dport,
        tcp_syn: protocol == TCP,
        ct: CtState::None,
        loopback: false,
        local: CASE_LOCAL_ADDR,
        expect,
    }
}

const ARTICLE: &[(&str, &str)] = &[("bpfwall.ingress", "allow from id=app2 port 80/tcp")];
const L3_ONLY: &[(&str, &str)] = &[("bpfwall.ingress", "allow from id=app2")];
const L4_ONLY: &[(&str, &str)] = &[("bpfwall.ingress", "allow from any port 53/udp")];
const DENY_NARROW: &[(&str, &str)] = &[(
    "bpfwall.ingress",
    "allow from id=app2; deny from id=app2 port 22/tcp",
)];
const DENY_ANY_PEER: &[(&str, &str)] = &[(
    "bpfwall.ingress",
    "allow from id=app2 port 80/tcp; deny from any port 80/tcp",
)];
const DENY_PEER: &[(&str, &str)] = &[("bpfwall.ingress", "deny from id=app3; allow from any")];
const RANGE: &[(&str, &str)] = &[("bpfwall.ingress", "allow from id=app2 port 8000-8100/tcp")];
const EGRESS_CIDR: &[(&str, &str)] = &[(
    "bpfwall.egress",
    "allow to cidr 198.18.0.0/15 except 198.18.1.0/24",
)];
const CIDR_OVER_CONTAINERS: &[(&str, &str)] = &[("bpfwall.egress", "allow to cidr 172.31.0.0/16")];
const EGRESS_WORLD: &[(&str, &str)] = &[("bpfwall.egress", "allow to world port 443/tcp")];
const HOST_ONLY: &[(&str, &str)] = &[("bpfwall.ingress", "allow from host")];
const ICMP_ONLY: &[(&str, &str)] = &[("bpfwall.ingress", "allow from id=app2 port icmp")];
const BROKEN: &[(&str, &str)] = &[("bpfwall.ingress", "allow form id=app2")];
const HTTP: &[(&str, &str)] = &[(
    "bpfwall.ingress",
    "allow from id=app2 port 80/tcp http GET /public(/.*)?; allow from id=app2 port 8080/tcp",
)];
const HTTP_DENY_ONLY: &[(&str, &str)] = &[(
    "bpfwall.ingress",
    "deny from any port 80/tcp http * /admin.*",
)];
const HTTP_EGRESS: &[(&str, &str)] = &[(
    "bpfwall.egress",
    "allow to id=app2 port 80/tcp http GET /v1/.*",
)];
const NAMED: &[(&str, &str)] = &[
    ("bpfwall.ingress.web", "allow from id=app2 port 80/tcp"),
    ("bpfwall.ingress.admin", "allow from id=app3 port 22/tcp"),
];

/// The shared decision table: every row must hold for [`decide`](crate::decision::decide) and for
/// the real program under `BPF_PROG_TEST_RUN`.
pub fn cases() -> Vec<Case> {
    use CasePeer::{Address, Container, Host};
    let app2 = Container("app2");
    let app3 = Container("app3");
    vec![
        case(
            "L3+L4: app2 may reach 80/tcp",
            ARTICLE,
            app2,
            IN,
            TCP,
            80,
            PASS,
        ),
        case(
            "L3+L4: app2 may not reach 81/tcp",
            ARTICLE,
            app2,
            IN,
            TCP,
            81,
            DEFAULT,
        ),
        case(
            "L3+L4: app3 may not reach 80/tcp",
            ARTICLE,
            app3,
            IN,
            TCP,
            80,
            DEFAULT,
        ),
        case(
            "L3+L4: 80/udp is not 80/tcp",
            ARTICLE,
            app2,
            IN,
            UDP,
            80,
            DEFAULT,
        ),
        case(
            "L4 only: anyone on 53/udp",
            L4_ONLY,
            app3,
            IN,
            UDP,
            53,
            PASS,
        ),
        case("L4 only: host on 53/udp", L4_ONLY, Host, IN, UDP, 53, PASS),
        case("L4 only: not 53/tcp", L4_ONLY, app3, IN, TCP, 53, DEFAULT),
        case(
            "L3 only: app2 on any port",
            L3_ONLY,
            app2,
            IN,
            TCP,
            31337,
            PASS,
        ),
        case("L3 only: app2 with udp", L3_ONLY, app2, IN, UDP, 9, PASS),
        case("L3 only: app3 refused", L3_ONLY, app3, IN, TCP, 80, DEFAULT),
        case(
            "deny precedence: narrow deny beats broad allow",
            DENY_NARROW,
            app2,
            IN,
            TCP,
            22,
            DENY,
        ),
        case(
            "deny precedence: the rest of the allow holds",
            DENY_NARROW,
            app2,
            IN,
            TCP,
            23,
            PASS,
        ),
        case(
            "deny precedence: any-peer deny beats peer allow",
            DENY_ANY_PEER,
            app2,
            IN,
            TCP,
            80,
            DENY,
        ),
        case(
            "deny precedence: peer deny beats allow-any",
            DENY_PEER,
            app3,
            IN,
            TCP,
            80,
            DENY,
        ),
        case(
            "deny precedence: allow-any for others",
            DENY_PEER,
            app2,
            IN,
            TCP,
            80,
            PASS,
        ),
        case("port range: inside", RANGE, app2, IN, TCP, 8050, PASS),
        case("port range: first", RANGE, app2, IN, TCP, 8000, PASS),
        case("port range: last", RANGE, app2, IN, TCP, 8100, PASS),
        case(
            "port range: past the end",
            RANGE,
            app2,
            IN,
            TCP,
            8101,
            DEFAULT,
        ),
        case(
            "unenforced direction: egress is open",
            ARTICLE,
            app3,
            OUT,
            TCP,
            80,
            PASS,
        ),
        case("no policy: open", &[], app3, IN, TCP, 80, PASS),
        Case {
            ct: CtState::OpenedOtherWay,
            tcp_syn: false,
            ..case(
                "conntrack: reply passes default deny",
                ARTICLE,
                app3,
                IN,
                TCP,
                40000,
                PASS,
            )
        },
        Case {
            ct: CtState::OpenedOtherWay,
            tcp_syn: true,
            ..case(
                "conntrack: a SYN is never a reply",
                ARTICLE,
                app3,
                IN,
                TCP,
                80,
                DEFAULT,
            )
        },
        Case {
            ct: CtState::OpenedThisWay,
            tcp_syn: false,
            ..case(
                "conntrack: same-direction traffic is policed",
                ARTICLE,
                app3,
                IN,
                TCP,
                80,
                DEFAULT,
            )
        },
        Case {
            loopback: true,
            ..case("loopback: not policed", ARTICLE, app3, IN, TCP, 80, PASS)
        },
        case(
            "cidr: inside the prefix",
            EGRESS_CIDR,
            Address("198.18.0.5"),
            OUT,
            TCP,
            80,
            PASS,
        ),
        case(
            "cidr: inside except",
            EGRESS_CIDR,
            Address("198.18.1.5"),
            OUT,
            TCP,
            80,
            DEFAULT,
        ),
        case(
            "cidr: outside",
            EGRESS_CIDR,
            Address("203.0.113.9"),
            OUT,
            TCP,
            80,
            DEFAULT,
        ),
        case(
            "cidr: containers are not cidr",
            CIDR_OVER_CONTAINERS,
            app2,
            OUT,
            TCP,
            80,
            DEFAULT,
        ),
        case(
            "cidr: the host is not cidr",
            CIDR_OVER_CONTAINERS,
            Host,
            OUT,
            TCP,
            80,
            DEFAULT,
        ),
        case(
            "cidr: other addresses in it are",
            CIDR_OVER_CONTAINERS,
            Address("172.31.9.9"),
            OUT,
            TCP,
            80,
            PASS,
        ),
        case(
            "world: an outside address",
            EGRESS_WORLD,
            Address("203.0.113.9"),
            OUT,
            TCP,
            443,
            PASS,
        ),
        case(
            "world: not the host",
            EGRESS_WORLD,
            Host,
            OUT,
            TCP,
            443,
            DEFAULT,
        ),
        case(
            "world: not a container",
            EGRESS_WORLD,
            app2,
            OUT,
            TCP,
            443,
            DEFAULT,
        ),
        case("host: the host may", HOST_ONLY, Host, IN, TCP, 80, PASS),
        case(
            "host: a container may not",
            HOST_ONLY,
            app2,
            IN,
            TCP,
            80,
            DEFAULT,
        ),
        case(
            "icmp: echo request allowed",
            ICMP_ONLY,
            app2,
            IN,
            ICMP,
            8,
            PASS,
        ),
        case(
            "icmp: tcp is not icmp",
            ICMP_ONLY,
            app2,
            IN,
            TCP,
            80,
            DEFAULT,
        ),
        case("named labels: first", NAMED, app2, IN, TCP, 80, PASS),
        case("named labels: second", NAMED, app3, IN, TCP, 22, PASS),
        case(
            "named labels: not crossed",
            NAMED,
            app3,
            IN,
            TCP,
            80,
            DEFAULT,
        ),
        case(
            "bad label: direction closed",
            BROKEN,
            app2,
            IN,
            TCP,
            80,
            ERROR,
        ),
        case(
            "bad label: other direction open",
            BROKEN,
            app2,
            OUT,
            TCP,
            80,
            PASS,
        ),
        Case {
            ct: CtState::OpenedOtherWay,
            tcp_syn: false,
            ..case(
                "bad label: replies still pass",
                BROKEN,
                app2,
                IN,
                TCP,
                40000,
                PASS,
            )
        },
        Case {
            local: CASE_PEER_ADDR,
            ..case(
                "forged source: a peer's address on egress",
                ARTICLE,
                app3,
                OUT,
                UDP,
                5353,
                SPOOFED,
            )
        },
        Case {
            local: CASE_HOST_ADDR,
            ..case(
                "forged source: the host's address from a container",
                ARTICLE,
                app2,
                OUT,
                TCP,
                80,
                SPOOFED,
            )
        },
        case(
            "L7: a flow to a port steered to the proxy that went around it",
            HTTP,
            app2,
            IN,
            TCP,
            80,
            BYPASS,
        ),
        case(
            "L7: a peer the policy refuses is refused as before",
            HTTP,
            app3,
            IN,
            TCP,
            80,
            DEFAULT,
        ),
        case(
            "L7: the container's other ports are L3/L4 as before",
            HTTP,
            app2,
            IN,
            TCP,
            8080,
            PASS,
        ),
        case(
            "L7: udp on the port is not steered",
            HTTP,
            app2,
            IN,
            UDP,
            80,
            DEFAULT,
        ),
        Case {
            loopback: true,
            ..case(
                "L7: loopback (the proxy's hop to the server) passes",
                HTTP,
                app2,
                IN,
                TCP,
                80,
                PASS,
            )
        },
        case(
            "L7: an http deny alone admits no connection",
            HTTP_DENY_ONLY,
            app2,
            IN,
            TCP,
            80,
            DEFAULT,
        ),
        case(
            "L7: an egress http rule admits nothing towards a peer bpfwall does not proxy",
            HTTP_EGRESS,
            app2,
            OUT,
            TCP,
            80,
            DEFAULT,
        ),
        Case {
            local: CASE_PEER_ADDR,
            ..case(
                "forged source: ingress does not look at it",
                L3_ONLY,
                app2,
                IN,
                TCP,
                80,
                PASS,
            )
        },
    ]
}

/// A case turned into compiled maps, the local endpoint and the packet.
#[derive(Debug, Clone)]
pub struct CaseSetup {
    /// The compiled maps for the local container, app2, app3 and the host.
    pub compiled: Compiled,
    /// The local container's endpoint entry.
    pub endpoint: Endpoint,
    /// The packet.
    pub packet: Packet,
    /// The local address the packet uses.
    pub local: IpAddr,
}

fn parse_addr(text: &str) -> IpAddr {
    // Only called on the constants of this module, which are valid.
    text.parse()
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

/// Compiles a case: the local container (labels `id=local` plus the case's)
/// attached at `cgroup_id`, peers app2 and app3 (app3 at a further address)
/// and the host.
pub fn case_setup(case: &Case, cgroup_id: u64) -> Result<CaseSetup, IdentityExhausted> {
    let labels = |extra: &[(&str, &str)], id: &str| {
        let mut l: LabelSet = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.insert("id".into(), id.into());
        l
    };
    let app3_addr = "172.31.0.4";
    let containers = vec![
        ContainerInput {
            name: "local".into(),
            labels: labels(case.labels, "local"),
            addresses: vec![parse_addr(CASE_LOCAL_ADDR)],
            attachment: Some(Attachment {
                cgroup_id,
                endpoint_id: 7,
            }),
            network: Default::default(),
            default_deny: false,
            started: 0,
        },
        ContainerInput {
            name: "app2".into(),
            labels: labels(&[], "app2"),
            addresses: vec![parse_addr(CASE_PEER_ADDR)],
            attachment: None,
            network: Default::default(),
            default_deny: false,
            started: 0,
        },
        ContainerInput {
            name: "app3".into(),
            labels: labels(&[], "app3"),
            addresses: vec![parse_addr(app3_addr)],
            attachment: None,
            network: Default::default(),
            default_deny: false,
            started: 0,
        },
    ];
    let host = [parse_addr(CASE_HOST_ADDR)];
    let compiled = compile(
        CompileInput {
            containers: &containers,
            host_addresses: &host,
            host_policies: &[],
        },
        &mut IdentityAllocator::new(),
    )?;
    let remote = match case.peer {
        CasePeer::Container("app2") => parse_addr(CASE_PEER_ADDR),
        CasePeer::Container(_) => parse_addr(app3_addr),
        CasePeer::Host => parse_addr(CASE_HOST_ADDR),
        CasePeer::Address(a) => parse_addr(a),
    };
    let endpoint = compiled
        .endpoints
        .get(&abi::EndpointKey { cgroup_id })
        .copied()
        .unwrap_or_default();
    Ok(CaseSetup {
        compiled,
        endpoint,
        packet: Packet {
            direction: case.direction,
            local: parse_addr(case.local),
            remote,
            protocol: case.protocol,
            dport: case.dport,
            tcp_syn: case.tcp_syn,
            loopback: case.loopback,
        },
        local: parse_addr(case.local),
    })
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        reason = "tests: a failed step is a failed test"
    )]

    use super::{case_setup, cases};
    use crate::datapath_abi as abi;
    use crate::decision::decide;

    #[test]
    fn every_row_holds() {
        let mut failures = Vec::new();
        for case in cases() {
            let setup = case_setup(&case, 4242).unwrap();
            assert_eq!(
                setup.endpoint.endpoint_id, 7,
                "{}: local endpoint missing",
                case.name
            );
            let got = decide(&setup.compiled, &setup.endpoint, &setup.packet, case.ct);
            if got != case.expect {
                failures.push(format!(
                    "{}: expected {:?}, got {:?}",
                    case.name, case.expect, got
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn table_covers_what_the_issue_lists() {
        let names: Vec<&str> = cases().iter().map(|c| c.name).collect();
        for topic in [
            "L3+L4",
            "L4 only",
            "L3 only",
            "deny precedence",
            "conntrack",
            "loopback",
            "L7",
        ] {
            assert!(
                names.iter().any(|n| n.starts_with(topic)),
                "no case for {topic}"
            );
        }
    }

    #[test]
    fn bad_label_sets_error_flag_and_no_entries() {
        let case = cases()
            .into_iter()
            .find(|c| c.name == "bad label: direction closed")
            .unwrap();
        let setup = case_setup(&case, 1).unwrap();
        assert_eq!(
            setup.endpoint.flags & abi::EP_ERROR_INGRESS,
            abi::EP_ERROR_INGRESS
        );
        assert_eq!(setup.endpoint.flags & abi::EP_ERROR_EGRESS, 0);
        assert!(setup
            .compiled
            .policy
            .keys()
            .all(|k| k.local_identity != setup.endpoint.identity));
    }
}
