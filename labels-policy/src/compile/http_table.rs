//! The HTTP table: for each (local identity, direction, TCP port) that some
//! HTTP rule names, the rules the proxy applies to a connection there, with
//! their peers resolved to identities. Beside it, which (identity, port)
//! the datapath steers to the proxy.
//!
//! Semantics (Cilium's, plus explicit HTTP deny):
//! - a request passes when an HTTP allow for its peer and port matches it;
//! - an L3/L4 allow (no HTTP rules) for the same peer and port lifts the
//!   HTTP restriction: every request passes ...
//! - ... except those an HTTP deny for the peer and port matches: an HTTP
//!   deny wins over every allow.
//!
//! Ingress rules are enforced by the proxy in the receiver's network
//! namespace. Egress rules too: a client's egress HTTP rules are enforced
//! at the server's proxy, so they reach only servers whose every container
//! bpfwall manages in a network namespace of their own ("proxied"
//! identities); towards any other peer an egress HTTP allow admits nothing
//! (fail closed).
//!
//! Imports: [`crate::compile::selector_index`], [`crate::identity`] and
//! [`crate::model`].

use std::collections::{BTreeMap, BTreeSet};

use crate::compile::selector_index::SelectorIndex;
use crate::identity::IdentityKind;
use crate::model::{Direction, HttpRule, Peer, PortSpec, Protocol, Rule, RuleOrigin, Verdict};

/// The identities a rule's peers select.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerSet {
    /// Every peer (`any`): containers, the host, the world.
    pub any: bool,
    /// Otherwise these identities.
    pub identities: BTreeSet<u32>,
}

impl PeerSet {
    /// Does the set hold this identity?
    pub fn contains(&self, identity: u32) -> bool {
        self.any || self.identities.contains(&identity)
    }
}

/// One rule as the proxy applies it at one (identity, direction, port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpEntry {
    /// Allow or deny.
    pub verdict: Verdict,
    /// Its peers.
    pub peers: PeerSet,
    /// Its HTTP rules: empty for an L3/L4 allow (which lifts the HTTP
    /// restriction for its peers).
    pub http: Vec<HttpRule>,
    /// Where it was written.
    pub origin: RuleOrigin,
}

/// Where the proxy applies HTTP rules: a local identity, the direction of
/// the rules (ingress: the receiver's; egress: the sender's), a TCP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HttpKey {
    /// The identity whose rules these are.
    pub identity: u32,
    /// Their direction.
    pub direction: Direction,
    /// The TCP port.
    pub port: u16,
}

/// Does a port spec cover TCP port `port`?
pub fn covers_tcp(spec: &PortSpec, port: u16) -> bool {
    let tcp = match spec.protocol {
        Protocol::Tcp => true,
        Protocol::Any => true,
        Protocol::Udp | Protocol::Icmp | Protocol::Icmp4 | Protocol::Icmp6 => false,
    };
    tcp && spec.first <= port && port <= spec.last
}

/// Does a rule apply to TCP port `port` (no ports: all traffic)?
fn rule_covers_tcp(rule: &Rule, port: u16) -> bool {
    rule.ports.is_empty() || rule.ports.iter().any(|s| covers_tcp(s, port))
}

/// The identities `peers` select; `Peer::Any` is the `any` flag.
pub(crate) fn peer_set(
    peers: &[Peer],
    index: &SelectorIndex<'_>,
    identities: &BTreeMap<u32, IdentityKind>,
) -> PeerSet {
    let mut out = PeerSet::default();
    for peer in peers {
        if *peer == Peer::Any {
            out.any = true;
        } else {
            out.identities.extend(index.select(peer, identities));
        }
    }
    out
}

/// The HTTP table of one identity's rules in force (one direction's, none
/// in error), and the ports of the proxied identities that must go through
/// the proxy for them. `proxied` says which container identities the proxy
/// can reach (see the module's documentation).
pub(crate) fn identity_table(
    identity: u32,
    rules: &[&Rule],
    index: &SelectorIndex<'_>,
    identities: &BTreeMap<u32, IdentityKind>,
    proxied: &BTreeSet<u32>,
    table: &mut BTreeMap<HttpKey, Vec<HttpEntry>>,
    steered: &mut BTreeSet<(u32, u16)>,
) {
    for direction in Direction::ALL {
        let in_direction: Vec<&Rule> = rules
            .iter()
            .copied()
            .filter(|r| r.direction == direction)
            .collect();
        let ports: BTreeSet<u16> = in_direction
            .iter()
            .filter(|r| r.is_http())
            .flat_map(|r| r.ports.iter().map(|p| p.first))
            .collect();
        for port in ports {
            let mut entries = Vec::new();
            for rule in &in_direction {
                // L3/L4 denies are the datapath's: a connection they deny
                // never reaches the proxy.
                if !rule_covers_tcp(rule, port)
                    || (!rule.is_http() && rule.verdict == Verdict::Deny)
                {
                    continue;
                }
                let peers = peer_set(&rule.peers, index, identities);
                if rule.is_http() {
                    match direction {
                        Direction::Ingress => {
                            steered.insert((identity, port));
                        }
                        Direction::Egress => {
                            // Enforced at the server: steer its port there.
                            for p in proxied.iter().filter(|p| peers.contains(**p)) {
                                steered.insert((*p, port));
                            }
                        }
                    }
                }
                entries.push(HttpEntry {
                    verdict: rule.verdict,
                    peers,
                    http: rule.http.clone(),
                    origin: rule.origin.clone(),
                });
            }
            table.insert(
                HttpKey {
                    identity,
                    direction,
                    port,
                },
                entries,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::model::LabelSet;
    use crate::syntax::policy_from_labels;

    const APP1: u32 = 1001;
    const APP2: u32 = 1002;
    const APP3: u32 = 1003;

    fn labels(pairs: &[(&str, &str)]) -> LabelSet {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn identities() -> BTreeMap<u32, IdentityKind> {
        [APP1, APP2, APP3]
            .into_iter()
            .enumerate()
            .map(|(i, id)| {
                let name = format!("app{}", i + 1);
                (id, IdentityKind::Containers(labels(&[("id", &name)])))
            })
            .collect()
    }

    type Table = BTreeMap<HttpKey, Vec<HttpEntry>>;

    /// Compiles app1's labels: its HTTP table and the steered ports, with
    /// `proxied` the identities the proxy reaches.
    fn compile_app1(pairs: &[(&str, &str)], proxied: &[u32]) -> (Table, BTreeSet<(u32, u16)>) {
        let policy = policy_from_labels(&labels(pairs));
        assert!(policy.errors.is_empty(), "{:?}", policy.errors);
        let ids = identities();
        let index = SelectorIndex::new(&ids);
        let rules: Vec<&Rule> = policy.rules.iter().collect();
        let (mut table, mut steered) = (BTreeMap::new(), BTreeSet::new());
        let proxied: BTreeSet<u32> = proxied.iter().copied().collect();
        identity_table(
            APP1,
            &rules,
            &index,
            &ids,
            &proxied,
            &mut table,
            &mut steered,
        );
        (table, steered)
    }

    fn key(direction: Direction, port: u16) -> HttpKey {
        HttpKey {
            identity: APP1,
            direction,
            port,
        }
    }

    fn peers(ids: &[u32]) -> PeerSet {
        PeerSet {
            any: false,
            identities: ids.iter().copied().collect(),
        }
    }

    #[test]
    fn an_ingress_http_rule_steers_its_port_and_collects_the_rules_there() {
        let (table, steered) = compile_app1(
            &[(
                "bpfwall.ingress",
                "allow from id=app2 port 80/tcp http GET /public(/.*)?; \
                 allow from id=app3 port 1-1000/tcp; deny from id=app3 port 80/tcp; \
                 allow from id=app3 port 80/udp; allow from id=app2 port 443/tcp; \
                 deny from any port 80/tcp http * /admin",
            )],
            &[],
        );
        assert_eq!(steered, BTreeSet::from([(APP1, 80)]));
        assert_eq!(
            table.keys().copied().collect::<Vec<_>>(),
            [key(Direction::Ingress, 80)]
        );
        let entries = &table[&key(Direction::Ingress, 80)];
        // In rule order: the HTTP allow, the L3/L4 allow over a range that
        // covers 80 (it lifts the HTTP rules for app3), the HTTP deny. The
        // L3/L4 deny is the datapath's, UDP and port 443 are elsewhere.
        let summary: Vec<(Verdict, PeerSet, usize, usize)> = entries
            .iter()
            .map(|e| (e.verdict, e.peers.clone(), e.http.len(), e.origin.index))
            .collect();
        assert_eq!(
            summary,
            [
                (Verdict::Allow, peers(&[APP2]), 1, 0),
                (Verdict::Allow, peers(&[APP3]), 0, 1),
                (
                    Verdict::Deny,
                    PeerSet {
                        any: true,
                        identities: BTreeSet::new()
                    },
                    1,
                    5
                ),
            ]
        );
        assert_eq!(entries[0].http[0].to_string(), "GET /public(/.*)?");
    }

    #[test]
    fn egress_http_rules_steer_only_proxied_servers() {
        let pairs = [(
            "bpfwall.egress",
            "allow to id=app2 port 8080/tcp http GET /v1/.*; allow to id=app3 port 8080/tcp http GET /v1/.*",
        )];
        let (table, steered) = compile_app1(&pairs, &[APP2]);
        assert_eq!(
            steered,
            BTreeSet::from([(APP2, 8080)]),
            "app3 is not proxied: its port is not steered, the rule admits nothing there"
        );
        let entries = &table[&key(Direction::Egress, 8080)];
        assert_eq!(entries.len(), 2);
        assert!(entries[1].peers.contains(APP3) && !entries[1].peers.contains(APP2));
        // Nothing egress steers app1's own port.
        assert!(!steered.iter().any(|(id, _)| *id == APP1));
        let (_, steered) = compile_app1(&pairs, &[APP2, APP3]);
        assert_eq!(steered, BTreeSet::from([(APP2, 8080), (APP3, 8080)]));
    }

    #[test]
    fn without_http_rules_there_is_no_table_and_nothing_is_steered() {
        let (table, steered) = compile_app1(
            &[(
                "bpfwall.ingress",
                "allow from id=app2 port 80/tcp; deny from id=app3",
            )],
            &[APP1, APP2, APP3],
        );
        assert!(table.is_empty() && steered.is_empty());
    }

    #[test]
    fn port_specs_cover_tcp_ports() {
        let spec = |protocol, first, last| PortSpec {
            protocol,
            first,
            last,
        };
        assert!(covers_tcp(&spec(Protocol::Tcp, 80, 80), 80));
        assert!(covers_tcp(&spec(Protocol::Any, 1, 1000), 80));
        assert!(!covers_tcp(&spec(Protocol::Tcp, 81, 90), 80));
        assert!(!covers_tcp(&spec(Protocol::Udp, 80, 80), 80));
        assert!(!covers_tcp(&spec(Protocol::Icmp, 0, 65535), 80));
    }
}
