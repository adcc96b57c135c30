//! The compiler's output, entry by entry, and its properties. Its decisions
//! against an independent reference are in semantics.rs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use std::collections::BTreeSet;
use std::net::IpAddr;

use labels_policy::compile::{port_prefixes, port_spec_keys};
use labels_policy::datapath_abi::{self as abi, PolicyKey};
use labels_policy::{
    compile, Attachment, CompileInput, ContainerInput, IdentityAllocator, LabelSet,
};
use proptest::prelude::*;

fn labels(pairs: &[(&str, &str)]) -> LabelSet {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Compiles containers with no host addresses, no host policies and a fresh allocator.
fn compile_alone(containers: &[ContainerInput]) -> labels_policy::Compiled {
    compile(
        CompileInput {
            containers,
            host_addresses: &[],
            host_policies: &[],
        },
        &mut IdentityAllocator::new(),
    )
    .unwrap()
}

fn container(
    name: &str,
    pairs: &[(&str, &str)],
    addr: &str,
    cgroup: Option<u64>,
) -> ContainerInput {
    ContainerInput {
        name: name.into(),
        labels: labels(pairs),
        addresses: vec![addr.parse().unwrap()],
        attachment: cgroup.map(|c| Attachment {
            cgroup_id: c,
            endpoint_id: c as u32,
        }),
        network: Default::default(),
        started: 0,
    }
}

#[test]
fn article_policy_compiles_to_one_entry() {
    let containers = vec![
        container(
            "app1",
            &[
                ("id", "app1"),
                ("bpfwall.ingress", "allow from id=app2 port 80/tcp"),
            ],
            "172.17.0.2",
            Some(11),
        ),
        container("app2", &[("id", "app2")], "172.17.0.3", Some(12)),
        container("app3", &[("id", "app3")], "172.17.0.4", Some(13)),
    ];
    let host: Vec<IpAddr> = vec!["172.17.0.1".parse().unwrap()];
    let mut alloc = IdentityAllocator::new();
    let out = compile(
        CompileInput {
            containers: &containers,
            host_addresses: &host,
            host_policies: &[],
        },
        &mut alloc,
    )
    .unwrap();
    let app1 = out.containers[0].identity;
    let app2 = out.containers[1].identity;
    assert_eq!(out.policy.len(), 1);
    let (k, v) = out.policy.iter().next().unwrap();
    assert_eq!(
        *k,
        PolicyKey {
            prefixlen: abi::POLICY_PREFIX_FULL,
            local_identity: app1,
            peer_identity: app2,
            direction: abi::DIR_INGRESS,
            protocol: abi::IPPROTO_TCP,
            dport_be: 80u16.to_be(),
        }
    );
    assert_eq!(*v, abi::VERDICT_ALLOW);
    assert_eq!(out.endpoints.len(), 3);
    assert_eq!(
        out.endpoints[&abi::EndpointKey { cgroup_id: 11 }].flags,
        abi::EP_ENFORCE_INGRESS
    );
    assert_eq!(out.endpoints[&abi::EndpointKey { cgroup_id: 12 }].flags, 0);
    assert_eq!(out.ipcache.len(), 4);
    // Identities are stable across compiles.
    let again = compile(
        CompileInput {
            containers: &containers,
            host_addresses: &host,
            host_policies: &[],
        },
        &mut alloc,
    )
    .unwrap();
    assert_eq!(out, again);
}

#[test]
fn a_new_peer_gets_entries_without_touching_old_ones() {
    let mut containers = vec![
        container(
            "app1",
            &[
                ("id", "app1"),
                ("bpfwall.ingress", "allow from role=client port 80/tcp"),
            ],
            "172.17.0.2",
            Some(1),
        ),
        container(
            "c1",
            &[("role", "client"), ("n", "1")],
            "172.17.0.3",
            Some(2),
        ),
    ];
    let mut alloc = IdentityAllocator::new();
    let before = compile(
        CompileInput {
            containers: &containers,
            host_addresses: &[],
            host_policies: &[],
        },
        &mut alloc,
    )
    .unwrap();
    containers.push(container(
        "c2",
        &[("role", "client"), ("n", "2")],
        "172.17.0.4",
        Some(3),
    ));
    let after = compile(
        CompileInput {
            containers: &containers,
            host_addresses: &[],
            host_policies: &[],
        },
        &mut alloc,
    )
    .unwrap();
    assert_eq!(before.policy.len(), 1);
    assert_eq!(after.policy.len(), 2);
    assert!(before.policy.keys().all(|k| after.policy.contains_key(k)));
}

#[test]
fn covered_allows_are_removed_and_narrow_denies_kept() {
    let containers = vec![
        container("a", &[("id", "a"), ("bpfwall.ingress", "allow from id=b port 80/tcp; deny from id=b; allow from id=c; deny from id=c port 22/tcp")], "10.0.0.1", Some(1)),
        container("b", &[("id", "b")], "10.0.0.2", None),
        container("c", &[("id", "c")], "10.0.0.3", None),
    ];
    let out = compile_alone(&containers);
    let verdicts: BTreeSet<(u32, u8, u8)> = out
        .policy
        .iter()
        .map(|(k, v)| (k.peer_identity, k.protocol, *v))
        .collect();
    let b = out.containers[1].identity;
    let c = out.containers[2].identity;
    // b: only the broad deny is left; c: broad allow plus the narrow deny.
    assert_eq!(
        verdicts,
        BTreeSet::from([
            (b, 0, abi::VERDICT_DENY),
            (c, 0, abi::VERDICT_ALLOW),
            (c, abi::IPPROTO_TCP, abi::VERDICT_DENY)
        ])
    );
}

#[test]
fn address_conflicts_are_reported() {
    let containers = vec![
        container("a", &[("id", "a")], "10.0.0.1", None),
        container("b", &[("id", "b")], "10.0.0.1", None),
    ];
    let out = compile_alone(&containers);
    assert_eq!(out.warnings.len(), 1);
}

#[test]
fn icmp_and_any_protocol_keys() {
    let icmp = port_spec_keys(&labels_policy::PortSpec::all_ports(
        labels_policy::Protocol::Icmp,
    ));
    assert_eq!(
        icmp,
        vec![(abi::IPPROTO_ICMP, 0, 88), (abi::IPPROTO_ICMPV6, 0, 88)]
    );
    let any = port_spec_keys(&labels_policy::PortSpec::all_ports(
        labels_policy::Protocol::Any,
    ));
    assert_eq!(any, vec![(0, 0, abi::POLICY_PREFIX_ANY_PROTO)]);
    let tcp = port_spec_keys(&labels_policy::PortSpec::all_ports(
        labels_policy::Protocol::Tcp,
    ));
    assert_eq!(
        tcp,
        vec![(abi::IPPROTO_TCP, 0, abi::POLICY_PREFIX_ANY_PORT)]
    );
}

proptest! {
    #[test]
    fn port_prefixes_cover_exactly_the_range(a in 0u16.., b in 0u16..) {
        let (first, last) = (a.min(b), a.max(b));
        let prefixes = port_prefixes(first, last);
        prop_assert!(prefixes.len() <= 32);
        let mut covered: u32 = 0;
        let mut next = u32::from(first);
        for (start, bits) in prefixes {
            let size = 1u32 << (16 - bits);
            prop_assert_eq!(u32::from(start), next, "prefixes must be contiguous");
            prop_assert_eq!(u32::from(start) % size, 0, "prefix must be aligned");
            next += size;
            covered += size;
        }
        prop_assert_eq!(covered, u32::from(last) - u32::from(first) + 1);
    }
}

#[test]
fn the_mode_label_sets_audit_and_a_bad_value_closes_both_directions() {
    let rule = ("bpfwall.ingress", "allow from id=b port 80/tcp");
    let c = compile_alone(&[
        container(
            "audited",
            &[("id", "a"), ("bpfwall.mode", "audit"), rule],
            "10.0.0.1",
            Some(1),
        ),
        container(
            "enforced",
            &[("id", "e"), ("bpfwall.mode", "enforce"), rule],
            "10.0.0.2",
            Some(2),
        ),
        container(
            "typo",
            &[("id", "t"), ("bpfwall.mode", "audti"), rule],
            "10.0.0.3",
            Some(3),
        ),
        container("plain", &[("id", "p"), rule], "10.0.0.4", Some(4)),
    ]);
    let flags = |name: &str| c.containers.iter().find(|r| r.name == name).unwrap().flags;
    assert_eq!(flags("audited"), abi::EP_ENFORCE_INGRESS | abi::EP_AUDIT);
    assert_eq!(flags("enforced"), abi::EP_ENFORCE_INGRESS);
    assert_eq!(flags("plain"), abi::EP_ENFORCE_INGRESS);
    // A bad value: closed both ways (never audit), and the error names the label.
    let typo = c.containers.iter().find(|r| r.name == "typo").unwrap();
    assert_eq!(typo.flags & abi::EP_AUDIT, 0);
    assert_ne!(typo.flags & abi::EP_ERROR_INGRESS, 0);
    assert_ne!(typo.flags & abi::EP_ERROR_EGRESS, 0);
    assert_eq!(typo.errors.len(), 1);
    assert_eq!(
        typo.errors[0].to_string(),
        "label 'bpfwall.mode' column 1: expected 'audit' or 'enforce', found 'audti'"
    );
}
