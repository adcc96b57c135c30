//! Cilium-format policies: what parses, to what, where errors point, and
//! that labels, label JSON and files compile to the same map entries.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use labels_policy::attribution::{evaluate_rules, RuleVerdict};
use labels_policy::syntax::cilium::{parse_policy_file, parse_policy_label, Format};
use labels_policy::{
    compile, CompileInput, ContainerInput, Direction, HostPolicy, IdentityAllocator, IdentityKind,
    LabelSet, Peer, Protocol, Verdict,
};

const ARTICLE: &str = r#"[{"endpointSelector":{"matchLabels":{"id":"app1"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"id":"app2"}}],"toPorts":[{"ports":[{"port":"80","protocol":"TCP"}]}]}]}]"#;

fn labels(pairs: &[(&str, &str)]) -> LabelSet {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_articles_policy_as_written() {
    let policies = parse_policy_file(ARTICLE, Format::Json, "article.json").unwrap();
    assert_eq!(policies.len(), 1);
    let p = &policies[0];
    assert_eq!(p.subject.match_labels, labels(&[("id", "app1")]));
    assert_eq!(p.rules.len(), 1);
    let r = &p.rules[0];
    assert_eq!(
        (r.direction, r.verdict),
        (Direction::Ingress, Verdict::Allow)
    );
    assert_eq!(r.peers.len(), 1);
    assert_eq!(r.ports[0].protocol, Protocol::Tcp);
    assert_eq!((r.ports[0].first, r.ports[0].last), (80, 80));
    assert_eq!(r.origin.to_string(), "article.json spec[0].ingress[0]");
    // The same text is valid YAML.
    assert_eq!(
        parse_policy_file(ARTICLE, Format::Yaml, "article.yaml").unwrap()[0].rules[0].ports,
        r.ports
    );
}

fn app1_compiled(app1: &[(&str, &str)], host_policies: &[HostPolicy]) -> labels_policy::Compiled {
    let containers = vec![
        ContainerInput {
            name: "app1".into(),
            labels: labels(app1),
            addresses: vec!["10.0.0.1".parse().unwrap()],
            attachment: Some(labels_policy::Attachment {
                cgroup_id: 1,
                endpoint_id: 1,
            }),
            network: Default::default(),
            default_deny: false,
            started: 0,
        },
        ContainerInput {
            name: "app2".into(),
            labels: labels(&[("id", "app2")]),
            addresses: vec!["10.0.0.2".parse().unwrap()],
            attachment: None,
            network: Default::default(),
            default_deny: false,
            started: 0,
        },
        ContainerInput {
            name: "app3".into(),
            labels: labels(&[("id", "app3")]),
            addresses: vec!["10.0.0.3".parse().unwrap()],
            attachment: None,
            network: Default::default(),
            default_deny: false,
            started: 0,
        },
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
fn labels_label_json_and_files_give_identical_entries() {
    let label_json = r#"[{"ingress":[{"fromEndpoints":[{"matchLabels":{"id":"app2"}}],"toPorts":[{"ports":[{"port":80,"protocol":"tcp"}]}]}],"egressDeny":[{"toCIDRSet":[{"cidr":"10.9.0.0/16","except":["10.9.1.0/24"]}]}]}]"#;
    let file = "\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: app1
spec:
  endpointSelector:
    matchLabels:
      id: app1
  ingress:
    - fromEndpoints:
        - matchLabels: {id: app2}
      toPorts:
        - ports:
            - port: \"80\"
              protocol: TCP
  egressDeny:
    - toCIDRSet:
        - cidr: 10.9.0.0/16
          except: [10.9.1.0/24]
";
    let from_labels = app1_compiled(
        &[
            ("id", "app1"),
            ("bpfwall.ingress", "allow from id=app2 port 80/tcp"),
            (
                "bpfwall.egress",
                "deny to cidr 10.9.0.0/16 except 10.9.1.0/24",
            ),
        ],
        &[],
    );
    let from_label_json = app1_compiled(&[("id", "app1"), ("bpfwall.policy", label_json)], &[]);
    let policies = parse_policy_file(file, Format::Yaml, "app1.yaml").unwrap();
    let from_file = app1_compiled(&[("id", "app1")], &policies);
    assert!(
        from_labels.containers[0].errors.is_empty(),
        "{:?}",
        from_labels.containers[0].errors
    );
    assert!(
        from_label_json.containers[0].errors.is_empty(),
        "{:?}",
        from_label_json.containers[0].errors
    );
    assert!(!from_labels.policy.is_empty());
    assert_eq!(from_labels.policy, from_label_json.policy);
    assert_eq!(from_labels.policy, from_file.policy);
    assert_eq!(from_labels.ipcache, from_file.ipcache);
    assert_eq!(
        from_labels
            .endpoints
            .values()
            .map(|e| e.flags)
            .collect::<Vec<_>>(),
        from_file
            .endpoints
            .values()
            .map(|e| e.flags)
            .collect::<Vec<_>>()
    );
}

fn verdict(
    policies: &[HostPolicy],
    remote: &IdentityKind,
    direction: Direction,
    protocol: u8,
    port: u16,
) -> RuleVerdict {
    evaluate_rules(&policies[0].rules, direction, remote, protocol, port)
}

#[test]
fn match_expressions() {
    let yaml = "
endpointSelector:
  matchExpressions:
    - {key: tier, operator: In, values: [api, web]}
ingress:
  - fromEndpoints:
      - matchExpressions:
          - {key: env, operator: NotIn, values: [dev]}
          - {key: team, operator: Exists}
          - {key: quarantine, operator: DoesNotExist}
";
    let p = parse_policy_file(yaml, Format::Yaml, "x.yaml").unwrap();
    assert!(p[0].subject.matches(&labels(&[("tier", "web")])));
    assert!(!p[0].subject.matches(&labels(&[("tier", "db")])));
    let peer = |pairs: &[(&str, &str)]| IdentityKind::Containers(labels(pairs));
    let allowed = |pairs: &[(&str, &str)]| {
        matches!(
            verdict(&p, &peer(pairs), Direction::Ingress, 6, 80),
            RuleVerdict::Allowed(_)
        )
    };
    assert!(allowed(&[("env", "prod"), ("team", "a")]));
    assert!(allowed(&[("team", "a")]));
    assert!(!allowed(&[("env", "dev"), ("team", "a")]));
    assert!(!allowed(&[("env", "prod")]));
    assert!(!allowed(&[("team", "a"), ("quarantine", "yes")]));
}

#[test]
fn entities_cidrs_icmps_and_denies() {
    let json = r#"{
      "endpointSelector": {},
      "egress": [
        {"toEntities": ["world"], "toPorts": [{"ports": [{"port": 443, "protocol": "Tcp"}]}]},
        {"toCIDR": ["192.0.2.0/24"]},
        {"toEntities": ["host"], "icmps": [{"fields": [{"type": 8}, {"type": "EchoRequest", "family": "IPv6"}]}]}
      ],
      "egressDeny": [{"toCIDRSet": [{"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"]}], "toPorts": [{"ports": [{"port": "22", "endPort": 23, "protocol": "TCP"}]}]}],
      "ingress": [{"fromEntities": ["all"], "toPorts": [{"ports": [{"port": "53", "protocol": "udp"}]}]}],
      "ingressDeny": [{"fromEntities": ["world"]}]
    }"#;
    let p = parse_policy_file(json, Format::Json, "e.json").unwrap();
    assert!(
        p[0].subject.matches(&labels(&[("anything", "x")])),
        "{{}} selects every container"
    );
    let world = IdentityKind::World;
    let host = IdentityKind::Host;
    let low: IdentityKind = IdentityKind::Cidr("192.0.2.0/24".parse().unwrap());
    let high: IdentityKind = IdentityKind::Cidr("192.0.2.128/25".parse().unwrap());
    assert!(matches!(
        verdict(&p, &world, Direction::Egress, 6, 443),
        RuleVerdict::Allowed(_)
    ));
    assert!(matches!(
        verdict(&p, &world, Direction::Egress, 6, 80),
        RuleVerdict::DefaultDeny
    ));
    assert!(matches!(
        verdict(&p, &low, Direction::Egress, 6, 22),
        RuleVerdict::Denied(_)
    ));
    assert!(matches!(
        verdict(&p, &low, Direction::Egress, 6, 24),
        RuleVerdict::Allowed(_)
    ));
    assert!(matches!(
        verdict(&p, &high, Direction::Egress, 6, 22),
        RuleVerdict::Allowed(_)
    ));
    assert!(matches!(
        verdict(&p, &host, Direction::Egress, 1, 8),
        RuleVerdict::Allowed(_)
    ));
    assert!(matches!(
        verdict(&p, &host, Direction::Egress, 58, 128),
        RuleVerdict::Allowed(_)
    ));
    assert!(
        matches!(
            verdict(&p, &host, Direction::Egress, 58, 8),
            RuleVerdict::DefaultDeny
        ),
        "type 8 was IPv4 only"
    );
    assert!(matches!(
        verdict(&p, &host, Direction::Ingress, 17, 53),
        RuleVerdict::Allowed(_)
    ));
    match verdict(&p, &world, Direction::Ingress, 17, 53) {
        RuleVerdict::Denied(origin) => {
            assert_eq!(origin.to_string(), "e.json spec[0].ingressDeny[0]")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn objects_lists_and_documents() {
    let yaml = "\
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: two}
specs:
  - endpointSelector: {matchLabels: {a: '1'}}
    ingress: [{}]
  - endpointSelector: {matchLabels: {b: '2'}}
    egress: [{toEntities: [all]}]
---
- endpointSelector: {matchLabels: {c: '3'}}
  ingress: [{fromEntities: [host]}]
";
    let p = parse_policy_file(yaml, Format::Yaml, "multi.yaml").unwrap();
    assert_eq!(p.len(), 3);
    // `ingress: [{}]` is Cilium's default-deny idiom: a rule that selects nobody.
    assert!(p[0].rules[0].peers.is_empty());
    assert!(matches!(
        evaluate_rules(&p[0].rules, Direction::Ingress, &IdentityKind::Host, 6, 80),
        RuleVerdict::DefaultDeny
    ));
    assert_eq!(p[1].rules[0].peers, vec![Peer::Any]);
    assert_eq!(
        p[2].rules[0].origin.to_string(),
        "multi.yaml spec[2].ingress[0]"
    );
    assert!(p[0].rules[0].origin.source.contains("(two)"));
}

/// (text, format, line, column, words the message must contain). JSON
/// positions are the end of the offending token, YAML ones the start of the
/// item that holds it.
const BAD: &[(&str, Format, usize, usize, &str)] = &[
    ("{\"endpointSelector\": {},\n \"ingress\": [{\"fromRequires\": []}]}", Format::Json, 2, 28, "fromRequires"),
    ("endpointSelector: {}\ningress:\n  - toPorts:\n      - ports: [{port: 80, protocol: SCTP}]\n", Format::Yaml, 4, 16, "SCTP"),
    ("endpointSelector: {}\ningress:\n  - toPorts:\n      - ports:\n          - {port: 80, endPort: 70}\n", Format::Yaml, 5, 11, "endPort 70"),
    ("endpointSelector: {}\negress:\n  - toPorts: [{ports: [{port: http}]}]\n", Format::Yaml, 3, 23, "named port"),
    ("endpointSelector: {}\negress:\n  - toEntities: [cluster]\n", Format::Yaml, 3, 17, "entity `cluster`"),
    ("endpointSelector: {}\negress:\n  - toCIDR: [10.0.0.1/8]\n", Format::Yaml, 3, 13, "host bits"),
    ("endpointSelector: {}\negress:\n  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [11.0.0.0/16]}]\n", Format::Yaml, 3, 16, "not inside"),
    ("endpointSelector: {}\negress:\n  - toPorts: [{ports: [{port: 80}], rules: {kafka: [{}]}}]\n", Format::Yaml, 3, 44, "rules.kafka"),
    ("{\"endpointSelector\": {}, \"ingress\": [{\"toPorts\": [{\"ports\": [{\"port\": \"53\"}],\n \"rules\": {\"dns\": [{}]}}]}]}", Format::Json, 2, 18, "rules.dns"),
    ("{\"endpointSelector\": {}, \"ingress\": [{\"toPorts\": [{\"ports\": [{\"port\": \"80\"}],\n \"rules\": {\"l7proto\": \"x\"}}]}]}", Format::Json, 2, 22, "rules.l7proto"),
    ("{\"endpointSelector\": {}, \"ingress\": [{\"toPorts\": [{\"ports\": [{\"port\": \"80\"}], \"rules\": {\"http\": [\n {\"headerMatches\": [{\"name\": \"x\", \"mismatch\": \"LOG\"}]}]}}]}]}", Format::Json, 2, 46, "mismatch"),
    ("{\"endpointSelector\": {}, \"ingress\": [{\"toPorts\": [{\"ports\": [{\"port\": \"80\"}], \"rules\": {\"http\": [\n {\"headerMatches\": [{\"name\": \"x\", \"secret\": {\"name\": \"s\"}}]}]}}]}]}", Format::Json, 2, 44, "secret"),
    ("{\"endpointSelector\": {}, \"ingress\": [{\"toPorts\": [{\"ports\": [{\"port\": \"80\"}], \"rules\": {\"http\": [\n {\"path\": \"/public(\"}]}}]}]}", Format::Json, 2, 22, "path `/public(`"),
    ("endpointSelector: {}\ningress:\n  - toPorts:\n      - ports: [{port: 80, endPort: 90, protocol: TCP}]\n        rules: {http: [{method: GET}]}\n", Format::Yaml, 4, 7, "single TCP ports"),
    ("endpointSelector: {}\ningress:\n  - toPorts:\n      - ports: [{port: 80, protocol: UDP}]\n        rules: {http: [{method: GET}]}\n", Format::Yaml, 4, 7, "single TCP ports"),
    ("endpointSelector: {}\ningress:\n  - toPorts:\n      - rules: {http: [{method: GET}]}\n", Format::Yaml, 4, 7, "needs ports"),
    ("endpointSelector: {}\ningress:\n  - toPorts:\n      - ports: [{port: 80}]\n        rules: {http: [{headers: [\"X-A:b\"]}]}\n", Format::Yaml, 5, 23, "X-A:b"),
    ("endpointSelector:\n  matchExpressions: [{key: a, operator: Maybe}]\n", Format::Yaml, 2, 21, "Maybe"),
    ("ingress: []\n", Format::Yaml, 1, 1, "endpointSelector"),
    ("{\"endpointSelector\": {}, \"ingress\": [}", Format::Json, 1, 38, "expected"),
];

#[test]
fn errors_carry_positions() {
    for (text, format, line, column, words) in BAD {
        let err = parse_policy_file(text, *format, "bad.file").expect_err(text);
        assert_eq!(
            (err.line, err.column),
            (*line, *column),
            "position for {text:?}: {err}"
        );
        assert!(
            err.message.contains(words),
            "{text:?}: '{}' should mention {words}",
            err.message
        );
        assert!(
            err.to_string()
                .starts_with(&format!("bad.file:{line}:{column}: ")),
            "{err}"
        );
    }
}

#[test]
fn policy_label_rules() {
    let rules = parse_policy_label(r#"{"ingress":[{"fromEntities":["host"]}]}"#).unwrap();
    assert_eq!(rules[0].peers, vec![Peer::Host]);
    let err = parse_policy_label(r#"{"endpointSelector":{},"ingress":[]}"#).unwrap_err();
    assert!(err.message.contains("not allowed in a label"), "{err}");
    let bad = labels_policy::policy_from_labels(&labels(&[(
        "bpfwall.policy",
        r#"{"ingress":[{"fromEntity":["host"]}]}"#,
    )]));
    assert_eq!(bad.errors.len(), 1);
    assert_eq!(bad.errors[0].label, "bpfwall.policy");
    assert_eq!(bad.errors[0].column, 25);
    assert!(bad.errors[0].message.contains("fromEntity"));
    assert!(bad.has_error(Direction::Ingress) && bad.has_error(Direction::Egress));
}
