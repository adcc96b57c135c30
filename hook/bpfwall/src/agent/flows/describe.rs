//! One datapath event in words: which containers (their names and
//! identity-relevant labels), which rule decided (labels-policy's
//! attribution over the rules of the compile in force at the event's
//! revision) or which drop reason, and the edge it adds to the record.
//! Pure: an event and a snapshot in, a record out.

use std::collections::BTreeMap;

use labels_policy::attribution::{evaluate_rules, RuleVerdict};
use labels_policy::datapath_abi::{self as abi, DropReason, FlowEvent, L7DropReason};
use labels_policy::{ContainerInput, Direction, IdentityKind, LabelSet};

use crate::agent::snapshot::Snapshot;
use crate::api::flow::{EdgeKey, EdgePeer, FlowPeer, FlowRecord};

/// Labels that say what a workload is: its identity-relevant labels
/// without the `bpfwall.*` ones (its policy is not what it is).
pub fn workload_labels(labels: &LabelSet) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(k, _)| !k.starts_with(labels_policy::syntax::LABEL_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A protocol's name.
pub fn protocol_name(protocol: u8) -> String {
    match protocol {
        abi::IPPROTO_TCP => "tcp".into(),
        abi::IPPROTO_UDP => "udp".into(),
        abi::IPPROTO_ICMP => "icmp".into(),
        abi::IPPROTO_ICMPV6 => "icmpv6".into(),
        abi::IPPROTO_SCTP => "sctp".into(),
        n => n.to_string(),
    }
}

fn reason_of(code: u8) -> Option<DropReason> {
    DropReason::ALL.into_iter().find(|r| *r as u8 == code)
}

/// A drop of the HTTP proxy's (step 10b of the cgroup programs).
fn l7_reason_of(code: u8) -> Option<L7DropReason> {
    L7DropReason::ALL
        .into_iter()
        .find(|r| *r as u32 == u32::from(code))
}

fn l7_reason_words(r: L7DropReason) -> String {
    let words = match r {
        L7DropReason::NoProxy => "the port is http-policed and its proxy is not there",
        L7DropReason::Assign => "the kernel refused the proxy's socket",
        L7DropReason::Bypass => "a new connection to an http-policed port went around the proxy",
    };
    format!("{words} ({})", r.name())
}

/// The event as a record, and the edge it adds (None for drops that are
/// not policy, or events without an endpoint or addresses).
#[derive(Debug, Clone)]
pub struct Described {
    /// What `monitor` shows.
    pub record: FlowRecord,
    /// What the edge record learns.
    pub edge: Option<(EdgeKey, Option<String>, Option<String>)>,
}

fn input_by_name<'a>(snap: &'a Snapshot, name: &str) -> Option<(usize, &'a ContainerInput)> {
    snap.inputs.iter().enumerate().find(|(_, c)| c.name == name)
}

/// The peer end, by address first (a container's own address names it),
/// then by identity.
fn peer_of(snap: &Snapshot, event: &FlowEvent) -> (FlowPeer, Option<EdgePeer>) {
    let port = match event.protocol {
        abi::IPPROTO_TCP | abi::IPPROTO_UDP | abi::IPPROTO_SCTP => {
            Some(u16::from_be(event.remote_port_be))
        }
        _ => None,
    };
    end_of(snap, event.remote(), port, event.peer_identity)
}

/// One end of a flow, by address first (a container's own address names
/// it), then by identity; and what an edge records of it.
pub fn end_of(
    snap: &Snapshot,
    address: Option<std::net::IpAddr>,
    port: Option<u16>,
    identity: u32,
) -> (FlowPeer, Option<EdgePeer>) {
    let by_address = address.and_then(|a| {
        snap.inputs
            .iter()
            .filter(|c| c.network == labels_policy::compile::Network::Own)
            .find(|c| c.addresses.contains(&a))
    });
    let mut peer = FlowPeer {
        identity,
        address,
        port,
        ..FlowPeer::default()
    };
    if let Some(c) = by_address {
        peer.container = Some(c.name.clone());
        peer.labels = workload_labels(&c.labels);
        peer.kind = "container".into();
        let edge = EdgePeer::Container {
            labels: peer.labels.clone(),
        };
        return (peer, Some(edge));
    }
    let edge = match snap.compiled.identities.get(&identity) {
        Some(IdentityKind::Host) => {
            peer.kind = "host".into();
            Some(EdgePeer::Host)
        }
        Some(IdentityKind::Containers(labels)) => {
            peer.kind = "container".into();
            peer.labels = workload_labels(labels);
            Some(EdgePeer::Container {
                labels: peer.labels.clone(),
            })
        }
        Some(IdentityKind::Cidr(_)) | Some(IdentityKind::World) => {
            peer.kind = if identity == abi::IDENTITY_WORLD {
                "world".into()
            } else {
                "cidr".into()
            };
            address.map(|address| EdgePeer::Outside { address })
        }
        None => {
            peer.kind = "unknown".into();
            None
        }
    };
    (peer, edge)
}

/// Describes one event against the snapshot of its revision.
/// `wall_offset_ns` turns the event's CLOCK_MONOTONIC time into unix time.
pub fn describe(event: &FlowEvent, snap: &Snapshot, wall_offset_ns: i128) -> Described {
    let direction = if event.direction == abi::DIR_EGRESS {
        Direction::Egress
    } else {
        Direction::Ingress
    };
    let local_view = (event.endpoint_id != 0)
        .then(|| {
            snap.containers
                .iter()
                .find(|c| c.endpoint_id == Some(event.endpoint_id))
        })
        .flatten();
    let local_input = local_view.and_then(|v| input_by_name(snap, &v.record.name));
    let local = FlowPeer {
        container: local_view.map(|v| v.record.name.clone()),
        labels: local_input
            .map(|(_, c)| workload_labels(&c.labels))
            .unwrap_or_default(),
        kind: if local_view.is_some() {
            "container".into()
        } else {
            "unknown".into()
        },
        identity: event.local_identity,
        address: event.local(),
        port: match event.protocol {
            abi::IPPROTO_TCP | abi::IPPROTO_UDP | abi::IPPROTO_SCTP => {
                Some(u16::from_be(event.local_port_be))
            }
            _ => None,
        },
    };
    let (peer, edge_peer) = peer_of(snap, event);
    let port = u16::from_be(event.dport_be);
    let reason = reason_of(event.reason);

    // The rule, from the rules of the local container's compile.
    let rules = local_input.and_then(|(i, _)| snap.compiled.containers.get(i));
    let attributed = rules.map(|report| {
        let rules = match direction {
            Direction::Ingress => &report.ingress_rules,
            Direction::Egress => &report.egress_rules,
        };
        let kind = snap
            .compiled
            .identities
            .get(&event.peer_identity)
            .cloned()
            .unwrap_or(IdentityKind::World);
        evaluate_rules(rules, direction, &kind, event.protocol, port)
    });
    let (verdict, rule, summary) = match event.kind {
        abi::EVENT_ALLOWED => match attributed {
            Some(RuleVerdict::Allowed(o)) => {
                ("allowed", Some(o.to_string()), format!("allowed by {o}"))
            }
            Some(RuleVerdict::Unenforced) => (
                "allowed",
                None,
                format!("allowed: no {direction} rule (open)"),
            ),
            _ => ("allowed", None, "allowed".to_string()),
        },
        abi::EVENT_AUDIT => {
            let why = reason.map_or("policy", DropReason::name);
            match attributed {
                Some(RuleVerdict::Denied(o)) => (
                    "audit",
                    Some(o.to_string()),
                    format!("audit: passed, {o} would drop it ({why})"),
                ),
                _ => (
                    "audit",
                    None,
                    format!("audit: passed, no {direction} rule allows it ({why})"),
                ),
            }
        }
        _ => match (reason, attributed) {
            (Some(DropReason::PolicyDeny), Some(RuleVerdict::Denied(o))) => (
                "dropped",
                Some(o.to_string()),
                format!("dropped by {o} (policy-deny)"),
            ),
            (Some(DropReason::PolicyDefault), _) => (
                "dropped",
                None,
                format!("dropped: no {direction} rule allows it (policy-default-deny)"),
            ),
            (Some(r), _) => ("dropped", None, format!("dropped: {}", reason_words(r))),
            (None, _) => match l7_reason_of(event.reason) {
                Some(r) => ("dropped", None, format!("dropped: {}", l7_reason_words(r))),
                None => (
                    "dropped",
                    None,
                    format!("dropped (reason {})", event.reason),
                ),
            },
        },
    };
    let (source, destination) = match direction {
        Direction::Ingress => (peer, local),
        Direction::Egress => (local, peer),
    };
    let record = FlowRecord {
        time_unix_ns: u64::try_from(i128::from(event.time_ns) + wall_offset_ns).unwrap_or(0),
        verdict: verdict.to_string(),
        direction: direction.to_string(),
        container: local_view.map(|v| v.record.name.clone()),
        source,
        destination,
        protocol: protocol_name(event.protocol),
        port,
        rule,
        drop_reason: reason
            .map(|r| r.name())
            .or_else(|| l7_reason_of(event.reason).map(L7DropReason::name))
            .filter(|_| event.kind != abi::EVENT_ALLOWED)
            .map(str::to_string),
        summary,
        suppressed: event.suppressed,
        policy_revision: event.policy_revision,
        http: None,
    };
    // Edges: decisions of policy only (a forged or malformed packet is no
    // edge of the service graph).
    let policy_decision = match event.kind {
        abi::EVENT_ALLOWED | abi::EVENT_AUDIT => true,
        _ => matches!(
            reason,
            Some(DropReason::PolicyDeny | DropReason::PolicyDefault)
        ),
    };
    let edge = match (policy_decision, local_input, edge_peer) {
        (true, Some((_, input)), Some(peer)) => {
            let local_name = Some(input.name.clone());
            let (src, dst) = (&record.source, &record.destination);
            let peer_name = match direction {
                Direction::Ingress => src.container.clone(),
                Direction::Egress => dst.container.clone(),
            };
            Some((
                EdgeKey {
                    local: workload_labels(&input.labels),
                    direction: direction.to_string(),
                    peer,
                    protocol: event.protocol,
                    port,
                },
                local_name,
                peer_name,
            ))
        }
        _ => None,
    };
    Described { record, edge }
}

fn reason_words(r: DropReason) -> String {
    let words = match r {
        DropReason::PolicyDeny => "a deny rule matched",
        DropReason::PolicyDefault => "no rule allows it",
        DropReason::PolicyError => {
            "the container's policy is in error (a bad label, or a map is full): closed"
        }
        DropReason::UnknownEndpoint => "the cgroup is not (or no longer) a policed container",
        DropReason::Malformed => "the IP or L4 header could not be read",
        DropReason::Spoofed => "the source address is not the container's",
        DropReason::ExtHeaders => "more IPv6 extension headers than bpfwall reads",
        DropReason::FlowRevoked => "the flow is no longer allowed by policy",
    };
    format!("{words} ({})", r.name())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use labels_policy::{compile, Attachment, CompileInput, IdentityAllocator};

    use super::*;
    use crate::agent::snapshot::ContainerView;
    use crate::runtime::ContainerRecord;

    fn labels(pairs: &[(&str, &str)]) -> LabelSet {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// web (endpoint 7) admits app2 on 80 and denies app3 on 81; app2 and
    /// app3 are peers.
    fn snapshot() -> Snapshot {
        let c = |name: &str, l: LabelSet, addr: &str, ep: Option<u32>| ContainerInput {
            name: name.into(),
            labels: l,
            addresses: vec![addr.parse().unwrap()],
            network: Default::default(),
            started: 0,
            default_deny: false,
            attachment: ep.map(|e| Attachment {
                cgroup_id: 100 + u64::from(e),
                endpoint_id: e,
            }),
        };
        let inputs = vec![
            c(
                "web",
                labels(&[
                    ("id", "web"),
                    (
                        "bpfwall.ingress",
                        "allow from id=app2 port 80/tcp; deny from id=app3 port 81/tcp",
                    ),
                ]),
                "10.0.0.1",
                Some(7),
            ),
            c("app2", labels(&[("id", "app2")]), "10.0.0.2", None),
            c("app3", labels(&[("id", "app3")]), "10.0.0.3", None),
        ];
        let compiled = compile(
            CompileInput {
                containers: &inputs,
                host_addresses: &["10.0.0.254".parse().unwrap()],
                host_policies: &[],
            },
            &mut IdentityAllocator::new(),
        )
        .unwrap();
        let view = ContainerView {
            id: "abc".into(),
            record: ContainerRecord {
                id: "abc".into(),
                name: "web".into(),
                labels: inputs[0].labels.clone(),
                addresses: inputs[0].addresses.clone(),
                pid: 1,
                pid_start_time: None,
                image_labels: LabelSet::new(),
                joins: None,
                ..ContainerRecord::default()
            },
            endpoint_id: Some(7),
            problem: None,
            policed_since_unix_us: None,
            network: "own".into(),
            addresses: inputs[0].addresses.clone(),
            closed: Default::default(),
        };
        Snapshot {
            compiled: Arc::new(compiled),
            inputs: Arc::new(inputs),
            containers: vec![view],
            ..Snapshot::default()
        }
    }

    fn event(snap: &Snapshot, kind: u8, reason: u8, from: &str, port: u16) -> FlowEvent {
        let id = |name: &str| {
            snap.compiled
                .containers
                .iter()
                .find(|r| r.name == name)
                .map_or(abi::IDENTITY_HOST, |r| r.identity)
        };
        let addr = |a: &str| {
            let mut out = [0u8; 16];
            out[..4].copy_from_slice(&a.parse::<std::net::Ipv4Addr>().unwrap().octets());
            out
        };
        let remote = match from {
            "app2" => "10.0.0.2",
            "app3" => "10.0.0.3",
            _ => "10.0.0.254",
        };
        FlowEvent {
            time_ns: 1_000,
            endpoint_id: 7,
            local_identity: id("web"),
            peer_identity: id(from),
            kind,
            direction: abi::DIR_INGRESS,
            reason,
            protocol: abi::IPPROTO_TCP,
            family: abi::FAMILY_IPV4,
            dport_be: port.to_be(),
            local_port_be: port.to_be(),
            remote_port_be: 40000u16.to_be(),
            local_addr: addr("10.0.0.1"),
            remote_addr: addr(remote),
            ..FlowEvent::default()
        }
    }

    #[test]
    fn an_allowed_flow_names_both_containers_and_the_rule() {
        let snap = snapshot();
        let d = describe(&event(&snap, abi::EVENT_ALLOWED, 0, "app2", 80), &snap, 5);
        let r = &d.record;
        assert_eq!(r.verdict, "allowed");
        assert_eq!(r.source.container.as_deref(), Some("app2"));
        assert_eq!(r.source.labels, labels(&[("id", "app2")]));
        assert_eq!(r.destination.container.as_deref(), Some("web"));
        // bpfwall.* labels are policy, not what the workload is.
        assert_eq!(r.destination.labels, labels(&[("id", "web")]));
        assert_eq!(r.rule.as_deref(), Some("bpfwall.ingress[0]"));
        assert_eq!(r.time_unix_ns, 1_005);
        let (key, local, peer) = d.edge.unwrap();
        assert_eq!(key.local, labels(&[("id", "web")]));
        assert_eq!(
            key.peer,
            EdgePeer::Container {
                labels: labels(&[("id", "app2")])
            }
        );
        assert_eq!(
            (local.as_deref(), peer.as_deref()),
            (Some("web"), Some("app2"))
        );
    }

    #[test]
    fn a_connection_around_the_http_proxy_is_named_as_such() {
        let snap = snapshot();
        let d = describe(
            &event(
                &snap,
                abi::EVENT_DENIED,
                L7DropReason::Bypass as u8,
                "app2",
                80,
            ),
            &snap,
            0,
        );
        assert_eq!(d.record.verdict, "dropped");
        assert_eq!(d.record.drop_reason.as_deref(), Some("l7-proxy-bypass"));
        assert!(
            d.record.summary.contains("went around the proxy"),
            "{}",
            d.record.summary
        );
        assert!(d.edge.is_none(), "not a policy decision of the graph");
    }

    #[test]
    fn drops_name_the_deny_rule_or_the_reason_and_audit_the_would_be_rule() {
        let snap = snapshot();
        let deny = describe(
            &event(
                &snap,
                abi::EVENT_DENIED,
                DropReason::PolicyDeny as u8,
                "app3",
                81,
            ),
            &snap,
            0,
        );
        assert_eq!(deny.record.verdict, "dropped");
        assert_eq!(deny.record.rule.as_deref(), Some("bpfwall.ingress[1]"));
        assert_eq!(deny.record.drop_reason.as_deref(), Some("policy-deny"));
        let default = describe(
            &event(
                &snap,
                abi::EVENT_DENIED,
                DropReason::PolicyDefault as u8,
                "app3",
                82,
            ),
            &snap,
            0,
        );
        assert_eq!(default.record.rule, None);
        assert!(
            default.record.summary.contains("no ingress rule allows it"),
            "{}",
            default.record.summary
        );
        let audit = describe(
            &event(
                &snap,
                abi::EVENT_AUDIT,
                DropReason::PolicyDeny as u8,
                "app3",
                81,
            ),
            &snap,
            0,
        );
        assert_eq!(audit.record.verdict, "audit");
        assert_eq!(audit.record.rule.as_deref(), Some("bpfwall.ingress[1]"));
        let host = describe(
            &event(
                &snap,
                abi::EVENT_DENIED,
                DropReason::PolicyDefault as u8,
                "host",
                22,
            ),
            &snap,
            0,
        );
        assert_eq!(host.record.source.kind, "host");
        assert_eq!(host.edge.unwrap().0.peer, EdgePeer::Host);
        // A forged packet is no edge.
        let spoofed = describe(
            &event(
                &snap,
                abi::EVENT_DENIED,
                DropReason::Spoofed as u8,
                "app2",
                80,
            ),
            &snap,
            0,
        );
        assert!(spoofed.edge.is_none());
        assert!(spoofed.record.summary.contains("spoofed-source"));
    }
}
