//! HTTP (L7) rules: the label syntax and Cilium's `rules.http`, parser
//! fuzzing, and the semantics three ways, as for L3/L4 in semantics.rs: the
//! compiled maps (through `decision::decide`) and the compiled HTTP table
//! (through `http_decision`), the product's attribution, and the
//! independent oracle (tests/oracle), over random rule sets and requests.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

mod oracle;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use labels_policy::attribution::evaluate_http;
use labels_policy::compile::HttpKey;
use labels_policy::datapath_abi::{self as abi, DropReason, PolicyKey};
use labels_policy::decision::{decide, ipcache_identity, CtState, Decision, Packet};
use labels_policy::http::HttpRequest;
use labels_policy::http_decision::{ConnectionRules, RequestVerdict, SideRules};
use labels_policy::syntax::cilium::{parse_policy_file, Format};
use labels_policy::{
    compile, parse_rules, Attachment, CompileInput, ContainerInput, Direction, HeaderMatch,
    HostPolicy, HttpPattern, HttpRule, IdentityAllocator, IdentityKind, LabelSet, Peer, PortSpec,
    Protocol, Rule, RuleOrigin, Selector, Verdict,
};
use oracle::{Block, Expected, ExpectedRequest, Remote};
use proptest::prelude::*;

fn labels(pairs: &[(&str, &str)]) -> LabelSet {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pattern(text: &str) -> Option<HttpPattern> {
    (text != "*").then(|| HttpPattern::new(text).unwrap())
}

fn http(method: &str, path: &str) -> HttpRule {
    HttpRule {
        method: pattern(method),
        path: pattern(path),
        ..HttpRule::default()
    }
}

fn tcp(port: u16) -> PortSpec {
    PortSpec {
        protocol: Protocol::Tcp,
        first: port,
        last: port,
    }
}

// ---- the label syntax --------------------------------------------------------

#[test]
fn the_articles_rule_in_a_label() {
    let rules = parse_rules(
        "bpfwall.ingress",
        Direction::Ingress,
        "allow from id=app2 port 80/tcp http GET /public(/.*)?",
    )
    .unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].ports, vec![tcp(80)]);
    assert_eq!(rules[0].http, vec![http("GET", "/public(/.*)?")]);
    assert_eq!(
        rules[0].to_string(),
        "allow from id=app2 port 80/tcp http GET /public(/.*)?"
    );
}

#[test]
fn every_part_of_an_http_clause() {
    let value = r#"allow from id=a port 80/tcp,8080/tcp http GET|HEAD /v1/.{1,3} host api\.example header X-Token=good header x-debug ;deny from any port 80/tcp http * "/a b;c" ; allow from id=b port 80/tcp http * *"#;
    let rules = parse_rules("bpfwall.ingress.web", Direction::Ingress, value).unwrap();
    assert_eq!(rules.len(), 3);
    let h = &rules[0].http[0];
    assert_eq!(h.method.as_ref().unwrap().text(), "GET|HEAD");
    assert_eq!(h.path.as_ref().unwrap().text(), "/v1/.{1,3}");
    assert_eq!(h.host.as_ref().unwrap().text(), r"api\.example");
    assert_eq!(
        h.headers,
        vec![
            HeaderMatch {
                name: "x-token".into(),
                value: Some("good".into())
            },
            HeaderMatch {
                name: "x-debug".into(),
                value: None
            },
        ]
    );
    assert_eq!(rules[1].verdict, Verdict::Deny);
    assert_eq!(rules[1].http[0], http("*", "/a b;c"));
    assert_eq!(rules[2].http[0], HttpRule::default());
    assert_eq!(rules[2].origin.index, 2);
}

/// (label value, column, words the message must contain).
const BAD_LABELS: &[(&str, usize, &str)] = &[
    (
        "allow from id=a http GET /",
        17,
        "'port PORT/tcp' before 'http'",
    ),
    (
        "allow from id=a port 53/udp http GET /",
        22,
        "single TCP ports",
    ),
    (
        "allow from id=a port 80-90/tcp http GET /",
        22,
        "single TCP ports",
    ),
    (
        "allow from id=a port any/tcp http GET /",
        22,
        "single TCP ports",
    ),
    ("allow from id=a port 80/tcp http", 33, "an HTTP method"),
    ("allow from id=a port 80/tcp http GET", 37, "a path"),
    (
        "allow from id=a port 80/tcp http GET /public(",
        45,
        "unclosed group",
    ),
    (
        "allow from id=a port 80/tcp http GE(T /",
        36,
        "unclosed group",
    ),
    (
        "allow from id=a port 80/tcp http GET /x[z-a]",
        41,
        "invalid character class range",
    ),
    (
        "allow from id=a port 80/tcp http GET /x)",
        40,
        "unopened group",
    ),
    (
        "allow from id=a port 80/tcp http GET / extra",
        40,
        "'host', 'header'",
    ),
    ("allow from id=a port 80/tcp http GET / host", 44, "a host"),
    (
        "allow from id=a port 80/tcp http GET / host a host b",
        47,
        "one 'host'",
    ),
    (
        "allow from id=a port 80/tcp http GET / header",
        46,
        "a header NAME",
    ),
    (
        "allow from id=a port 80/tcp http GET / header X:Y=1",
        47,
        "a header name",
    ),
    (
        "allow from id=a port 80/tcp http GET \"/a",
        38,
        "closing '\"'",
    ),
    (
        "allow from id=a port 80/tcp http GET \"\"",
        38,
        "inside the quotes",
    ),
    (
        "allow from id=a port 80/tcp http GET \"/(a\"",
        40,
        "unclosed group",
    ),
    (
        "allow from id=a port 80/tcp http * * ; allow from id=a http",
        56,
        "'port PORT/tcp'",
    ),
];

#[test]
fn label_errors_say_where_and_what() {
    for (value, column, words) in BAD_LABELS {
        let err = parse_rules("bpfwall.ingress", Direction::Ingress, value).expect_err(value);
        assert_eq!(err.column, *column, "column for {value:?}: {err}");
        assert!(
            err.message.contains(words),
            "{value:?}: '{}' should mention {words}",
            err.message
        );
        assert_eq!(err.closes, vec![Direction::Ingress]);
    }
}

// ---- Cilium's rules.http -------------------------------------------------------

/// The article's policy extended with `path: "/public(/.*)?"`, as a Cilium
/// user writes it.
const ARTICLE_HTTP: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: article-http
spec:
  endpointSelector:
    matchLabels:
      id: app1
  ingress:
    - fromEndpoints:
        - matchLabels:
            id: app2
      toPorts:
        - ports:
            - port: "80"
              protocol: TCP
          rules:
            http:
              - method: GET
                path: "/public(/.*)?"
"#;

fn compile_one(subject: &[(&str, &str)], host_policies: &[HostPolicy]) -> labels_policy::Compiled {
    let attached = |name: &str, pairs: &[(&str, &str)], addr: &str, id: u32| ContainerInput {
        name: name.into(),
        labels: labels(pairs),
        addresses: vec![addr.parse().unwrap()],
        network: Default::default(),
        started: 0,
        default_deny: false,
        attachment: Some(Attachment {
            cgroup_id: u64::from(id),
            endpoint_id: id,
        }),
    };
    let containers = vec![
        attached("app1", subject, "10.0.0.1", 1),
        attached("app2", &[("id", "app2")], "10.0.0.2", 2),
        attached("app3", &[("id", "app3")], "10.0.0.3", 3),
    ];
    compile(
        CompileInput {
            containers: &containers,
            host_addresses: &[],
            host_policies,
        },
        &mut IdentityAllocator::new(),
    )
    .unwrap()
}

#[test]
fn a_cilium_file_and_a_label_compile_to_the_same_maps_and_table() {
    let policies = parse_policy_file(ARTICLE_HTTP, Format::Yaml, "article.yaml").unwrap();
    assert_eq!(policies[0].rules.len(), 1);
    assert_eq!(
        policies[0].rules[0].http,
        vec![http("GET", "/public(/.*)?")]
    );
    let from_file = compile_one(&[("id", "app1")], &policies);
    let from_label = compile_one(
        &[
            ("id", "app1"),
            (
                "bpfwall.ingress",
                "allow from id=app2 port 80/tcp http GET /public(/.*)?",
            ),
        ],
        &[],
    );
    assert_eq!(from_file.policy, from_label.policy);
    type Table = Vec<(HttpKey, Vec<(Verdict, Vec<HttpRule>)>)>;
    let strip = |c: &labels_policy::Compiled| -> Table {
        c.http
            .iter()
            .map(|(k, v)| (*k, v.iter().map(|e| (e.verdict, e.http.clone())).collect()))
            .collect()
    };
    assert_eq!(strip(&from_file), strip(&from_label));
    // app1's port 80 goes through the proxy; app2 may connect, app3 not.
    let app1 = from_file.containers[0].identity;
    assert_eq!(
        from_file.policy.get(&PolicyKey {
            prefixlen: abi::POLICY_PREFIX_FULL,
            local_identity: app1,
            peer_identity: abi::IDENTITY_PROXY,
            direction: abi::DIR_INGRESS,
            protocol: abi::IPPROTO_TCP,
            dport_be: 80u16.to_be(),
        }),
        Some(&abi::VERDICT_PROXY)
    );
}

#[test]
fn cilium_headers_and_header_matches() {
    let text = r#"{"endpointSelector":{},"ingress":[{"toPorts":[{"ports":[{"port":"80"}],"rules":{"http":[
        {"method":"GET","headers":["X-Token: good","X-Debug"],"headerMatches":[{"name":"X-Env","value":"prod"},{"name":"X-Any"}],"host":"api\\.example"}]}}]}]}"#;
    let p = parse_policy_file(text, Format::Json, "h.json").unwrap();
    let rule = &p[0].rules[0];
    // protocol ANY with http rules is its TCP port; no peer field: any peer.
    assert_eq!(rule.ports, vec![tcp(80)]);
    assert_eq!(rule.peers, vec![Peer::Any]);
    let names: Vec<String> = rule.http[0]
        .headers
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(names, ["x-token=good", "x-debug", "x-env=prod", "x-any"]);
    // An entry with L4 ports and http ports makes two rules.
    let mixed = r#"{"endpointSelector":{},"ingress":[{"toPorts":[{"ports":[{"port":"22","protocol":"TCP"}]},{"ports":[{"port":"80","protocol":"TCP"}],"rules":{"http":[{}]}}]}]}"#;
    let p = parse_policy_file(mixed, Format::Json, "m.json").unwrap();
    assert_eq!(p[0].rules.len(), 2);
    assert!(p[0].rules[0].http.is_empty() && p[0].rules[0].ports == vec![tcp(22)]);
    assert_eq!(p[0].rules[1].http, vec![HttpRule::default()]);
    // The deny extension: ingressDeny with rules.http.
    let deny = r#"{"endpointSelector":{},"ingressDeny":[{"toPorts":[{"ports":[{"port":"80","protocol":"TCP"}],"rules":{"http":[{"path":"/admin.*"}]}}]}]}"#;
    let p = parse_policy_file(deny, Format::Json, "d.json").unwrap();
    assert_eq!(p[0].rules[0].verdict, Verdict::Deny);
    assert_eq!(p[0].rules[0].http, vec![http("*", "/admin.*")]);
}

// ---- fuzz-style: the parsers never panic and always say where ------------------

const PIECES: &[&str] = &[
    "allow",
    "deny",
    "from",
    "to",
    "id=a",
    "any",
    "port",
    "80/tcp",
    "8080/tcp",
    "53/udp",
    "http",
    "GET",
    "*",
    "/public(/.*)?",
    "/(",
    ")",
    "[",
    "\\",
    "\"",
    "host",
    "header",
    "X-A=1",
    ";",
    ",",
    " ",
    "  ",
    "é",
    "\t",
    "a{2,1}",
    "(?P<x>a)",
    "\\p{Greek}",
    "\\pX",
    "=",
    "/",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
    /// Any text: the label parser answers (never panics) and an error's
    /// column lies inside the value or just past its end.
    #[test]
    fn label_parser_never_panics(pieces in prop::collection::vec(0..PIECES.len(), 0..16), raw in ".{0,40}") {
        let mut value: String = pieces.iter().map(|i| PIECES[*i]).collect::<Vec<_>>().join(" ");
        value.push_str(&raw);
        for direction in Direction::ALL {
            if let Err(e) = parse_rules("bpfwall.x", direction, &value) {
                let len = value.chars().count();
                prop_assert!(e.column >= 1 && e.column <= len + 1, "column {} of {:?} (length {len}): {e}", e.column, value);
            }
        }
    }

    /// Any http entry text in a Cilium file: parsed or refused with a
    /// position, never a panic.
    #[test]
    fn cilium_http_parser_never_panics(method in ".{0,8}", path in ".{0,12}", header in ".{0,10}") {
        let doc = serde_json::json!({
            "endpointSelector": {},
            "ingress": [{"toPorts": [{"ports": [{"port": "80"}], "rules": {"http": [
                {"method": method, "path": path, "headers": [header]}
            ]}}]}]
        });
        let text = doc.to_string();
        if let Err(e) = parse_policy_file(&text, Format::Json, "f.json") {
            prop_assert!(e.line >= 1 && e.column >= 1, "{e}");
        }
    }

    /// Request targets: the normal form is stable and never holds what a
    /// server could read otherwise (dot segments, encoded separators,
    /// repeated slashes).
    #[test]
    fn normal_targets_are_stable(target in "/[a-z%./\\\\?=0-9A-F]{0,16}") {
        if let Ok(n) = labels_policy::http::normalize_target(&target) {
            let again = labels_policy::http::normalize_target(&n);
            prop_assert_eq!(again.as_ref(), Ok(&n));
            let path = n.split('?').next().unwrap();
            prop_assert!(!path.contains("//"), "{}", n);
            prop_assert!(!path.split('/').any(|s| s == "." || s == ".."), "{}", n);
            let lower = path.to_ascii_lowercase();
            prop_assert!(!lower.contains("%2f") && !lower.contains("%5c") && !lower.contains("%2e"), "{}", n);
        }
    }
}

// ---- the semantics against the oracle ------------------------------------------

const METHODS: &[&str] = &["*", "GET", "GET|HEAD", "POST", "[A-Z]+"];
const PATHS: &[&str] = &[
    "*",
    "/public(/.*)?",
    "/restricted.*",
    "/v1/.*",
    "/",
    "/admin",
];
const HOSTS: &[&str] = &["", r"api\.example", "app1(:80)?"];
const HEADERS: &[&str] = &["", "x-token=good", "x-debug"];
const HTTP_PORTS: &[u16] = &[80, 8080];
const PEERS: &[&str] = &["b", "c", "u", "any", "host", "world"];
const L4_PORTS: &[&str] = &["", "80/tcp", "any/tcp", "1-1024/tcp", "8080/tcp", "53/udp"];

fn peer_of(i: usize) -> Peer {
    match PEERS[i] {
        "any" => Peer::Any,
        "host" => Peer::Host,
        "world" => Peer::World,
        id => Peer::Endpoints(Selector {
            match_labels: labels(&[("id", id)]),
            match_expressions: Vec::new(),
        }),
    }
}

fn http_rule() -> impl Strategy<Value = HttpRule> {
    (
        0..METHODS.len(),
        0..PATHS.len(),
        0..HOSTS.len(),
        0..HEADERS.len(),
    )
        .prop_map(|(m, p, h, x)| {
            let mut rule = http(METHODS[m], PATHS[p]);
            rule.host = (!HOSTS[h].is_empty()).then(|| HttpPattern::new(HOSTS[h]).unwrap());
            if !HEADERS[x].is_empty() {
                let (name, value) = match HEADERS[x].split_once('=') {
                    Some((n, v)) => (n, Some(v.to_string())),
                    None => (HEADERS[x], None),
                };
                rule.headers.push(HeaderMatch {
                    name: name.into(),
                    value,
                });
            }
            rule
        })
}

fn l7_rule() -> impl Strategy<Value = Rule> {
    (
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(0..PEERS.len(), 1..3),
        prop::bool::weighted(0.6),
        0..HTTP_PORTS.len(),
        prop::collection::vec(http_rule(), 1..3),
        0..L4_PORTS.len(),
    )
        .prop_map(|(egress, deny, peers, is_http, port, http, l4)| {
            let direction = if egress {
                Direction::Egress
            } else {
                Direction::Ingress
            };
            let (ports, http) = if is_http {
                (vec![tcp(HTTP_PORTS[port])], http)
            } else {
                let ports = match L4_PORTS[l4] {
                    "" => Vec::new(),
                    p => vec![labels_policy::syntax::parse_port(p).unwrap()],
                };
                (ports, Vec::new())
            };
            Rule {
                direction,
                verdict: if deny { Verdict::Deny } else { Verdict::Allow },
                peers: peers.into_iter().map(peer_of).collect(),
                ports,
                http,
                origin: RuleOrigin {
                    source: "generated".into(),
                    index: 0,
                },
            }
        })
}

const REQ_METHODS: &[&str] = &["GET", "HEAD", "POST", "DELETE"];
const REQ_TARGETS: &[&str] = &[
    "/",
    "/public",
    "/public/",
    "/public/a",
    "/publicity",
    "/restricted",
    "/restricted/x",
    "/restricted?x=1",
    "/public?x=1",
    "/v1/items",
    "/admin",
    "/admin?",
];
const REQ_HOSTS: &[&str] = &["", "api.example", "app1:80", "other"];
const REQ_HEADERS: &[(&str, &str)] = &[("x-token", "good"), ("x-token", "evil"), ("x-debug", "1")];

fn request() -> impl Strategy<Value = oracle::Request> {
    (
        0..REQ_METHODS.len(),
        0..REQ_TARGETS.len(),
        0..REQ_HOSTS.len(),
        prop::collection::vec(0..REQ_HEADERS.len(), 0..3),
    )
        .prop_map(|(m, t, h, hs)| oracle::Request {
            method: REQ_METHODS[m].into(),
            target: REQ_TARGETS[t].into(),
            host: REQ_HOSTS[h].into(),
            headers: hs
                .into_iter()
                .map(|i| (REQ_HEADERS[i].0.to_string(), REQ_HEADERS[i].1.to_string()))
                .collect(),
        })
}

/// The product's view of the oracle's request.
fn product_request(r: &oracle::Request) -> HttpRequest {
    let mut headers: Vec<(&str, &[u8])> = r
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    if !r.host.is_empty() {
        headers.push(("Host", r.host.as_bytes()));
    }
    let out = HttpRequest::from_parts(&r.method, &r.target, headers).unwrap();
    assert_eq!(
        out.target, r.target,
        "the generated targets are in normal form"
    );
    out
}

fn agrees(want: &Option<ExpectedRequest>, got: &Option<RequestVerdict>) -> bool {
    match (want, got) {
        (None, None) => true,
        (Some(ExpectedRequest::DeniedByDefault), Some(RequestVerdict::DeniedByDefault)) => true,
        (Some(ExpectedRequest::Allowed(o, h)), Some(RequestVerdict::Allowed { origin, http })) => {
            o.to_string() == *origin && h == http
        }
        (Some(ExpectedRequest::Denied(o, h)), Some(RequestVerdict::Denied { origin, http })) => {
            o.to_string() == *origin && h == http
        }
        _ => false,
    }
}

fn l4_agrees(expected: &Expected, maps: Decision) -> bool {
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

fn as_remote(kind: &IdentityKind) -> Remote {
    match kind {
        IdentityKind::Host => Remote::Host,
        IdentityKind::World => Remote::World,
        IdentityKind::Containers(l) => Remote::Container(l.clone()),
        IdentityKind::Cidr(net) => Remote::Cidr(Block::of_net(net)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
    /// Random L3/L4 and HTTP rules of one container (a), both directions,
    /// towards managed containers (b, c), an unmanaged one (u), the host and
    /// the world, on the HTTP ports: the connection verdict from the maps,
    /// the steering entries, and each request's verdict from the compiled
    /// table and from the rules agree with the oracle.
    #[test]
    fn http_decisions_agree_with_the_oracle(
        generated in prop::collection::vec(l7_rule(), 1..6),
        requests in prop::collection::vec(request(), 1..6),
    ) {
        let rules: Vec<Rule> = generated
            .into_iter()
            .enumerate()
            .map(|(index, r)| Rule { origin: RuleOrigin { source: "generated".into(), index }, ..r })
            .collect();
        let subject = Selector { match_labels: labels(&[("id", "a")]), match_expressions: Vec::new() };
        let host_policies = [HostPolicy { subject, rules: rules.clone() }];
        let c = |name: &str, addr: &str, slot: Option<u32>| ContainerInput {
            name: name.into(),
            labels: labels(&[("id", name)]),
            addresses: vec![addr.parse().unwrap()],
            network: Default::default(),
            started: 0,
            default_deny: false,
            attachment: slot.map(|s| Attachment { cgroup_id: u64::from(s), endpoint_id: s }),
        };
        let containers = vec![
            c("a", "10.0.0.1", Some(1)),
            c("b", "10.0.0.2", Some(2)),
            c("c", "10.0.0.3", Some(3)),
            c("u", "10.0.0.4", None),
        ];
        let host: Vec<IpAddr> = vec!["172.17.0.1".parse().unwrap()];
        let compiled = compile(
            CompileInput { containers: &containers, host_addresses: &host, host_policies: &host_policies },
            &mut IdentityAllocator::new(),
        ).unwrap();
        let a = compiled.endpoints[&abi::EndpointKey { cgroup_id: 1 }];
        let report = &compiled.containers[0];
        let peers: Vec<(Vec<IpAddr>, BTreeMap<String, String>)> =
            containers.iter().map(|c| (c.addresses.clone(), c.labels.clone())).collect();
        let local: IpAddr = "10.0.0.1".parse().unwrap();
        let mut steered_expected: BTreeSet<(u32, u16)> = BTreeSet::new();
        for remote in ["10.0.0.2", "10.0.0.3", "10.0.0.4", "172.17.0.1", "203.0.113.5"] {
            let remote: IpAddr = remote.parse().unwrap();
            let want_remote = oracle::classify(remote, &host, &peers, &[]);
            let remote_id = ipcache_identity(&compiled, remote);
            let kind = compiled.identities[&remote_id].clone();
            prop_assert_eq!(as_remote(&kind), want_remote.clone());
            let proxied = matches!(&want_remote, Remote::Container(l) if l["id"] == "b" || l["id"] == "c");
            for direction in Direction::ALL {
                for port in HTTP_PORTS {
                    let packet = Packet {
                        direction, local, remote, protocol: oracle::TCP, dport: *port,
                        tcp_syn: true, loopback: false,
                    };
                    // Step 10b: a steered port's connections come through the
                    // proxy; one that meets a's own program went around it.
                    let steered = labels_policy::decision::l7_steered(&compiled, report.identity, *port);
                    let maps = match decide(&compiled, &a, &packet, CtState::None) {
                        Decision::DropL7(abi::L7DropReason::Bypass) => {
                            prop_assert!(direction == Direction::Ingress && steered);
                            Decision::Pass
                        }
                        other => {
                            prop_assert!(other != Decision::Pass || direction == Direction::Egress || !steered, "a steered port passed at a's own program");
                            other
                        }
                    };
                    let want = oracle::expected_connection(&rules, direction, &want_remote, proxied, oracle::TCP, *port);
                    prop_assert!(l4_agrees(&want, maps), "{direction} {remote}:{port}: maps {maps:?}, oracle {want:?}\n{rules:#?}");
                    // Steering: a's own ingress HTTP ports; for a's egress
                    // HTTP rules, the proxied servers they select.
                    let names_port = |d: Direction| rules.iter().any(|r| r.direction == d && !r.http.is_empty() && r.ports[0].first == *port
                        && (d == Direction::Ingress || r.peers.iter().any(|p| match (p, &want_remote) {
                            (Peer::Any, Remote::Container(_)) => true,
                            (Peer::Endpoints(s), Remote::Container(l)) => s.match_labels.iter().all(|(k, v)| l.get(k) == Some(v)),
                            _ => false,
                        })));
                    if names_port(Direction::Ingress) {
                        steered_expected.insert((report.identity, *port));
                    }
                    if proxied && names_port(Direction::Egress) {
                        steered_expected.insert((remote_id, *port));
                    }
                    if maps != Decision::Pass {
                        continue;
                    }
                    let (table, other) = match direction {
                        Direction::Ingress => (ConnectionRules::of(&compiled, remote_id, report.identity, *port).ingress, remote_id),
                        Direction::Egress => (SideRules::of(&compiled, HttpKey { identity: report.identity, direction, port: *port }, remote_id), remote_id),
                    };
                    let _ = other;
                    let rules_in_force = match direction {
                        Direction::Ingress => &report.ingress_rules,
                        Direction::Egress => &report.egress_rules,
                    };
                    for req in &requests {
                        let want = oracle::expected_request(&rules, direction, &want_remote, *port, req);
                        let product = product_request(req);
                        let got = table.as_ref().filter(|s| s.restricts()).map(|s| s.decide(&product));
                        prop_assert!(agrees(&want, &got), "{direction} {remote}:{port} {req:?}: table {got:?}, oracle {want:?}\n{rules:#?}");
                        let attributed = evaluate_http(rules_in_force, direction, &kind, *port, &product);
                        prop_assert_eq!(&attributed, &got, "attribution disagrees for {:?}", req);
                    }
                }
            }
        }
        // Replicas of a are proxied servers too: `any` selects them.
        for r in &rules {
            if r.direction == Direction::Egress && !r.http.is_empty() && r.peers.contains(&Peer::Any) {
                steered_expected.insert((report.identity, r.ports[0].first));
            }
        }
        let steered: BTreeSet<(u32, u16)> = compiled
            .policy
            .iter()
            .filter(|(k, _)| k.peer_identity == abi::IDENTITY_PROXY)
            .map(|(k, v)| {
                assert_eq!(*v, abi::VERDICT_PROXY);
                (k.local_identity, u16::from_be(k.dport_be))
            })
            .collect();
        prop_assert_eq!(steered, steered_expected, "steered ports\n{:#?}", rules);
    }
}

// ---- hand-written cases of the oracle itself ------------------------------------

fn hand(
    direction: Direction,
    verdict: Verdict,
    peer: Peer,
    port: u16,
    http: Vec<HttpRule>,
    index: usize,
) -> Rule {
    Rule {
        direction,
        verdict,
        peers: vec![peer],
        ports: vec![tcp(port)],
        http,
        origin: RuleOrigin {
            source: "hand".into(),
            index,
        },
    }
}

#[test]
fn the_oracle_reads_the_documented_cases() {
    let app2 = Remote::Container(labels(&[("id", "app2")]));
    let sel = Peer::Endpoints(Selector {
        match_labels: labels(&[("id", "app2")]),
        match_expressions: Vec::new(),
    });
    let get = |t: &str| oracle::Request {
        method: "GET".into(),
        target: t.into(),
        host: String::new(),
        headers: Vec::new(),
    };
    let post = |t: &str| oracle::Request {
        method: "POST".into(),
        ..get(t)
    };
    let article = [hand(
        Direction::Ingress,
        Verdict::Allow,
        sel.clone(),
        80,
        vec![http("GET", "/public(/.*)?")],
        0,
    )];
    let e = |r: &oracle::Request, rules: &[Rule]| {
        oracle::expected_request(rules, Direction::Ingress, &app2, 80, r)
    };
    assert!(matches!(
        e(&get("/public/"), &article),
        Some(ExpectedRequest::Allowed(_, Some(_)))
    ));
    assert_eq!(
        e(&get("/restricted/"), &article),
        Some(ExpectedRequest::DeniedByDefault)
    );
    assert_eq!(
        e(&post("/public/"), &article),
        Some(ExpectedRequest::DeniedByDefault)
    );
    // An L3/L4 allow lifts the HTTP rules...
    let mut lifted = article.to_vec();
    lifted.push(Rule {
        http: Vec::new(),
        ..hand(
            Direction::Ingress,
            Verdict::Allow,
            sel.clone(),
            80,
            Vec::new(),
            1,
        )
    });
    assert_eq!(e(&get("/restricted/"), &lifted), None);
    // ... but not an HTTP deny, which wins over every allow.
    lifted.push(hand(
        Direction::Ingress,
        Verdict::Deny,
        Peer::Any,
        80,
        vec![http("*", "/restricted.*")],
        2,
    ));
    assert!(
        matches!(e(&get("/restricted/x"), &lifted), Some(ExpectedRequest::Denied(o, _)) if o.index == 2)
    );
    assert!(matches!(
        e(&get("/restricted?x=1"), &lifted),
        Some(ExpectedRequest::Denied(..))
    ));
    assert!(
        matches!(e(&get("/public/"), &lifted), Some(ExpectedRequest::Allowed(o, None)) if o.index == 1)
    );
    // At L3/L4, an HTTP deny matches nothing but still mentions its direction.
    let only_deny = [hand(
        Direction::Ingress,
        Verdict::Deny,
        Peer::Any,
        80,
        vec![http("*", "/x")],
        0,
    )];
    assert_eq!(
        oracle::expected_connection(&only_deny, Direction::Ingress, &app2, true, oracle::TCP, 80),
        Expected::DefaultDeny
    );
    // An egress HTTP allow admits only a proxied peer.
    let egress = [hand(
        Direction::Egress,
        Verdict::Allow,
        Peer::Any,
        80,
        vec![http("GET", "/v1/.*")],
        0,
    )];
    assert!(matches!(
        oracle::expected_connection(&egress, Direction::Egress, &app2, true, oracle::TCP, 80),
        Expected::Allowed(_)
    ));
    assert_eq!(
        oracle::expected_connection(
            &egress,
            Direction::Egress,
            &Remote::World,
            false,
            oracle::TCP,
            80
        ),
        Expected::DefaultDeny
    );
}

#[test]
fn check_answers_with_the_deciding_http_rule() {
    use labels_policy::query::{check_http, FlowEnd};
    let compiled = compile_one(
        &[
            ("id", "app1"),
            (
                "bpfwall.ingress",
                "allow from id=app2 port 80/tcp http GET /public(/.*)?; deny from any port 80/tcp http * /public/secret.*",
            ),
        ],
        &[],
    );
    let containers: Vec<ContainerInput> = ["app1", "app2", "app3"]
        .iter()
        .enumerate()
        .map(|(i, name)| ContainerInput {
            name: name.to_string(),
            labels: compiled_labels(&compiled, i),
            addresses: vec![format!("10.0.0.{}", i + 1).parse().unwrap()],
            network: Default::default(),
            started: 0,
            default_deny: false,
            attachment: Some(Attachment {
                cgroup_id: i as u64 + 1,
                endpoint_id: i as u32 + 1,
            }),
        })
        .collect();
    let ask = |from: usize, method: &str, target: &str| {
        let request = HttpRequest::from_parts(method, target, []).unwrap();
        check_http(
            &compiled,
            &containers,
            &[],
            &FlowEnd::Container(from),
            &FlowEnd::Container(0),
            80,
            &request,
        )
        .unwrap()
    };
    let public = ask(1, "GET", "/public/");
    assert!(public.allowed, "{public:?}");
    let side = public.sides.last().unwrap();
    assert!(
        side.reason
            .contains("allowed by bpfwall.ingress[0] (http GET /public(/.*)?)"),
        "{}",
        side.reason
    );
    let restricted = ask(1, "GET", "/restricted/x");
    assert!(!restricted.allowed);
    assert_eq!(
        restricted.sides[1].http,
        Some(RequestVerdict::DeniedByDefault)
    );
    let post = ask(1, "POST", "/public/");
    assert!(!post.allowed);
    let secret = ask(1, "GET", "/public/secret?x");
    assert!(
        matches!(&secret.sides[1].http, Some(RequestVerdict::Denied { origin, .. }) if origin == "bpfwall.ingress[1]"),
        "{secret:?}"
    );
    let app3 = ask(2, "GET", "/public/");
    assert!(!app3.allowed);
    assert_eq!(
        app3.sides[1].http, None,
        "blocked at L3/L4 before any request"
    );
    assert!(
        app3.sides[1].reason.contains("denied by default"),
        "{app3:?}"
    );
}

/// The labels the compile saw for container `i` of `compile_one`.
fn compiled_labels(compiled: &labels_policy::Compiled, i: usize) -> LabelSet {
    match &compiled.identities[&compiled.containers[i].identity] {
        IdentityKind::Containers(l) => l.clone(),
        other => panic!("container {i} has identity {other:?}"),
    }
}
