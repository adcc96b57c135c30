//! The compiler: containers, host addresses and rules in; the exact content
//! of the endpoint, ipcache, policy and source maps out, as one generation
//! of them holds it (the datapath crate stores each value once per
//! generation). Pure: the daemon diffs the result against what the maps
//! hold and applies the difference.
//!
//! This file is the whole compile: identities for label sets and prefixes,
//! the ipcache, one policy entry per (local identity, peer identity,
//! protocol and port prefix), endpoints and reports. Its parts:
//! `policy_keys` (ports to key prefixes, which key covers which, deny
//! precedence, the direction's datapath code) and `selector_index` (which
//! identities a peer selects).
//!
//! Imports: [`crate::syntax`] (a container's labels to rules),
//! [`crate::model`], [`crate::identity`] and [`crate::datapath_abi`]; the
//! decision table, attribution and `query` come after it and import it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

mod http_table;
mod policy_keys;
mod selector_index;

pub use http_table::{covers_tcp, HttpEntry, HttpKey, PeerSet};

pub use policy_keys::key_covers;
pub use policy_keys::{datapath_direction, port_prefixes, port_spec_keys};

use self::http_table::{identity_table, peer_set};
use self::policy_keys::resolve_deny_precedence;
use self::selector_index::SelectorIndex;
use crate::datapath_abi::{self as abi, EndpointKey, IpcacheKey, PolicyKey, SourceKey};
use crate::identity::{IdentityAllocator, IdentityExhausted, IdentityKind};
use crate::model::{Direction, HostPolicy, LabelSet, Peer, Rule, RuleOrigin, Verdict};
use crate::syntax::{policy_from_labels, LabelError};

/// A container attached to the datapath: its cgroup and counter slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attachment {
    /// The cgroup v2 id (inode number of its directory).
    pub cgroup_id: u64,
    /// Its slot in the counters map, below `MAX_ENDPOINTS`.
    pub endpoint_id: u32,
}

/// Whose network namespace a container runs in, which says whose its
/// addresses are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Network {
    /// A namespace of its own: its addresses are its own, and peers see
    /// them as its identity.
    #[default]
    Own,
    /// Another container's namespace (`--network container:X`): it sends
    /// from that container's addresses, which peers see as that container.
    Joined,
    /// The host's namespace: it sends from the host's addresses, which peers
    /// see as the host; its loopback traffic is policed too.
    Host,
}

/// One container as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInput {
    /// The container's name, for reports.
    pub name: String,
    /// Its identity-relevant labels (see `identity::IdentityLabels`).
    pub labels: LabelSet,
    /// The addresses in its network namespace (none for host networking).
    pub addresses: Vec<IpAddr>,
    /// Whose namespace that is.
    pub network: Network,
    /// When it started, in any unit that orders starts (0: unknown). When
    /// two containers in different namespaces claim one address, the one
    /// that started last has it: the other is gone or going.
    pub started: u64,
    /// Set when bpfwall's programs are attached to it.
    pub attachment: Option<Attachment>,
    /// It is on a network whose default is deny (a bpfwall network made
    /// with `-o bpfwall.default=deny`): both directions are enforced even
    /// where no rule applies, so it is default deny plus what its rules
    /// allow. Which networks a container is on is the daemon's to know;
    /// this one bit is all the compile needs of them.
    pub default_deny: bool,
}

/// One attached container, as one generation of `bpfwall_endpoints_v2`
/// holds it (`struct endpoint_state` plus its slot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// Its slot in the counter and conntrack maps.
    pub endpoint_id: u32,
    /// Its identity.
    pub identity: u32,
    /// `EP_*` flags.
    pub flags: u32,
}

/// Everything a compile reads.
#[derive(Debug, Clone, Copy)]
pub struct CompileInput<'a> {
    /// Every container the runtime knows, attached or not: all are peers.
    pub containers: &'a [ContainerInput],
    /// The host's own addresses.
    pub host_addresses: &'a [IpAddr],
    /// Host-wide policies.
    pub host_policies: &'a [HostPolicy],
}

/// What a compile says about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerReport {
    /// The container's name.
    pub name: String,
    /// Its identity.
    pub identity: u32,
    /// The rules in force for it, per direction (none for a direction in error).
    pub ingress_rules: Vec<Rule>,
    /// See `ingress_rules`.
    pub egress_rules: Vec<Rule>,
    /// Labels that failed to parse.
    pub errors: Vec<LabelError>,
    /// The endpoint flags (`EP_*`).
    pub flags: u32,
    /// Default deny both ways from its network (see `ContainerInput`).
    pub default_deny: bool,
}

/// A problem that does not stop the compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompileWarning {
    /// Two containers with different identities claim one address.
    AddressConflict {
        /// The address.
        address: IpAddr,
        /// The container whose identity the address keeps.
        kept: String,
        /// The container ignored for it.
        ignored: String,
    },
    /// An egress HTTP rule selects peers whose side bpfwall does not proxy
    /// (not managed, the host's or another's network namespace, the host,
    /// the world): it admits nothing towards them.
    HttpPeerNotProxied {
        /// The rule.
        rule: RuleOrigin,
        /// The container whose rule it is.
        container: String,
        /// The identities it cannot reach, described.
        peers: Vec<String>,
    },
}

/// The desired content of every map bpfwall writes, as one generation
/// holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    /// `bpfwall_endpoints_v2`: cgroup → endpoint.
    pub endpoints: BTreeMap<EndpointKey, Endpoint>,
    /// `bpfwall_ipcache_v2` and its exact hash: prefix → identity.
    pub ipcache: BTreeMap<IpcacheKey, u32>,
    /// `bpfwall_policy_v2` and its exact hash: key → `VERDICT_*`.
    pub policy: BTreeMap<PolicyKey, u8>,
    /// `bpfwall_sources_v2`: the addresses each endpoint may send from.
    pub sources: BTreeSet<SourceKey>,
    /// Every identity in use and what it stands for.
    pub identities: BTreeMap<u32, IdentityKind>,
    /// What the HTTP proxy applies, per (identity, direction, TCP port)
    /// that an HTTP rule names.
    pub http: BTreeMap<HttpKey, Vec<HttpEntry>>,
    /// Container identities whose every container is attached in a network
    /// namespace of its own: the proxy can stand in front of them.
    pub proxied: BTreeSet<u32>,
    /// One report per container, in input order.
    pub containers: Vec<ContainerReport>,
    /// Problems that did not stop the compile.
    pub warnings: Vec<CompileWarning>,
}

/// The rules and errors that apply to one label set.
#[derive(Debug, Clone)]
struct IdentityPolicy {
    rules: Vec<Rule>,
    errors: Vec<LabelError>,
    audit: bool,
}

impl IdentityPolicy {
    fn for_labels(labels: &LabelSet, host_policies: &[HostPolicy]) -> Self {
        let from_labels = policy_from_labels(labels);
        let mut rules = from_labels.rules;
        for hp in host_policies {
            if hp.subject.matches(labels) {
                rules.extend(hp.rules.iter().cloned());
            }
        }
        IdentityPolicy {
            rules,
            errors: from_labels.errors,
            audit: from_labels.audit,
        }
    }

    fn flags(&self) -> u32 {
        let mut flags = 0;
        for rule in &self.rules {
            flags |= match rule.direction {
                Direction::Ingress => abi::EP_ENFORCE_INGRESS,
                Direction::Egress => abi::EP_ENFORCE_EGRESS,
            };
        }
        for error in &self.errors {
            for d in &error.closes {
                flags |= match d {
                    Direction::Ingress => abi::EP_ERROR_INGRESS,
                    Direction::Egress => abi::EP_ERROR_EGRESS,
                };
            }
        }
        // A bad mode label is an error like any other (both directions
        // closed), and never audit.
        if self.audit && self.errors.is_empty() {
            flags |= abi::EP_AUDIT;
        }
        flags
    }

    fn in_error(&self, direction: Direction) -> bool {
        self.errors.iter().any(|e| e.closes.contains(&direction))
    }
}

/// Every prefix a rule names (prefixes and their excepts).
fn rule_prefixes(rules: &[Rule], out: &mut BTreeSet<IpNet>) {
    for rule in rules {
        for peer in &rule.peers {
            if let Peer::Cidr { prefix, except } = peer {
                out.insert(*prefix);
                out.extend(except.iter().copied());
            }
        }
    }
}

/// Compiles the whole host's state. Identities come from (and are recorded
/// in) `allocator`.
pub fn compile(
    input: CompileInput<'_>,
    allocator: &mut IdentityAllocator,
) -> Result<Compiled, IdentityExhausted> {
    let mut out = Compiled::default();

    // Identities of every label set, and the policy each label set has.
    let mut label_identity: BTreeMap<&LabelSet, u32> = BTreeMap::new();
    let mut policies: BTreeMap<u32, IdentityPolicy> = BTreeMap::new();
    for c in input.containers {
        if label_identity.contains_key(&c.labels) {
            continue;
        }
        let id = allocator.container(&c.labels)?;
        label_identity.insert(&c.labels, id);
        out.identities
            .insert(id, IdentityKind::Containers(c.labels.clone()));
        policies.insert(
            id,
            IdentityPolicy::for_labels(&c.labels, input.host_policies),
        );
    }
    out.identities
        .insert(abi::IDENTITY_HOST, IdentityKind::Host);
    out.identities
        .insert(abi::IDENTITY_WORLD, IdentityKind::World);

    // CIDR identities for every prefix any rule names.
    let mut prefixes = BTreeSet::new();
    for p in policies.values() {
        rule_prefixes(&p.rules, &mut prefixes);
    }
    for prefix in &prefixes {
        let id = allocator.cidr(*prefix)?;
        out.identities.insert(id, IdentityKind::Cidr(*prefix));
        out.ipcache.insert(abi::ipcache_key(prefix), id);
    }
    allocator.retain(&label_identity.keys().copied().collect(), &prefixes);

    // Container addresses, then the host's (a host address always wins).
    // Only a container in a namespace of its own owns its addresses; when
    // two claim one, the one that started last has it (the other is gone
    // or going), so an address is never inherited from a stale container.
    let mut claimants: Vec<&ContainerInput> = input
        .containers
        .iter()
        .filter(|c| c.network == Network::Own)
        .collect();
    claimants.sort_by_key(|c| std::cmp::Reverse(c.started));
    let mut owner: BTreeMap<IpAddr, (&str, u32)> = BTreeMap::new();
    for c in claimants {
        let id = label_identity[&c.labels];
        for addr in &c.addresses {
            match owner.get(addr) {
                Some((kept, kept_id)) if *kept_id != id => {
                    out.warnings.push(CompileWarning::AddressConflict {
                        address: *addr,
                        kept: (*kept).to_string(),
                        ignored: c.name.clone(),
                    })
                }
                Some(_) => {}
                None => {
                    owner.insert(*addr, (&c.name, id));
                    out.ipcache
                        .insert(abi::ipcache_key(&IpNet::from(*addr)), id);
                }
            }
        }
    }
    for addr in input.host_addresses {
        out.ipcache
            .insert(abi::ipcache_key(&IpNet::from(*addr)), abi::IDENTITY_HOST);
    }

    // Identities the proxy can stand in front of: every container of them
    // attached, in a network namespace of its own.
    let mut proxied: BTreeMap<u32, bool> = BTreeMap::new();
    for c in input.containers {
        let ok = c.attachment.is_some() && c.network == Network::Own;
        let slot = proxied.entry(label_identity[&c.labels]).or_insert(true);
        *slot &= ok;
    }
    out.proxied = proxied
        .into_iter()
        .filter(|(_, ok)| *ok)
        .map(|(id, _)| id)
        .collect();
    let owner_name: BTreeMap<u32, &str> = input
        .containers
        .iter()
        .map(|c| (label_identity[&c.labels], c.name.as_str()))
        .collect();

    // Policy entries per local identity.
    let selector_index = SelectorIndex::new(&out.identities);
    let mut entries: BTreeMap<PolicyKey, u8> = BTreeMap::new();
    let mut steered: BTreeSet<(u32, u16)> = BTreeSet::new();
    for (&local, policy) in &policies {
        let in_force: Vec<&Rule> = policy
            .rules
            .iter()
            .filter(|r| !policy.in_error(r.direction))
            .collect();
        identity_table(
            local,
            &in_force,
            &selector_index,
            &out.identities,
            &out.proxied,
            &mut out.http,
            &mut steered,
        );
        for rule in in_force {
            // An HTTP deny refuses requests, not connections: the proxy's.
            if rule.is_http() && rule.verdict == Verdict::Deny {
                continue;
            }
            let verdict = match rule.verdict {
                Verdict::Allow => abi::VERDICT_ALLOW,
                Verdict::Deny => abi::VERDICT_DENY,
            };
            let mut peers = BTreeSet::new();
            if rule.is_http() && rule.direction == Direction::Egress {
                // Enforced at the server's proxy: only proxied servers.
                let selected = peer_set(&rule.peers, &selector_index, &out.identities);
                let unreached: Vec<String> = out
                    .identities
                    .iter()
                    .filter(|(id, _)| selected.contains(**id) && !out.proxied.contains(*id))
                    .map(|(id, kind)| match kind {
                        IdentityKind::Containers(_) => {
                            format!("containers like {}", owner_name.get(id).unwrap_or(&"?"))
                        }
                        IdentityKind::Host => "the host".to_string(),
                        IdentityKind::World => "the world".to_string(),
                        IdentityKind::Cidr(p) => format!("cidr {p}"),
                    })
                    .collect();
                if !unreached.is_empty() {
                    out.warnings.push(CompileWarning::HttpPeerNotProxied {
                        rule: rule.origin.clone(),
                        container: owner_name.get(&local).unwrap_or(&"?").to_string(),
                        peers: unreached,
                    });
                }
                peers.extend(out.proxied.iter().filter(|p| selected.contains(**p)));
            } else {
                for peer in &rule.peers {
                    if *peer == Peer::Any {
                        peers.insert(abi::IDENTITY_ANY);
                        continue;
                    }
                    peers.extend(selector_index.select(peer, &out.identities));
                }
            }
            let l4: Vec<(u8, u16, u32)> = if rule.ports.is_empty() {
                vec![(0, 0, abi::POLICY_PREFIX_ANY_PROTO)]
            } else {
                rule.ports.iter().flat_map(port_spec_keys).collect()
            };
            for &peer in &peers {
                for &(protocol, port, prefixlen) in &l4 {
                    let key = PolicyKey {
                        prefixlen,
                        local_identity: local,
                        peer_identity: peer,
                        direction: datapath_direction(rule.direction),
                        protocol,
                        dport_be: port.to_be(),
                    };
                    let slot = entries.entry(key).or_insert(verdict);
                    *slot = (*slot).max(verdict); // VERDICT_DENY > VERDICT_ALLOW
                }
            }
        }
    }
    // Which (identity, TCP port) the datapath hands to the proxy.
    for (identity, port) in steered {
        entries.insert(
            PolicyKey {
                prefixlen: abi::POLICY_PREFIX_FULL,
                local_identity: identity,
                peer_identity: abi::IDENTITY_PROXY,
                direction: abi::DIR_INGRESS,
                protocol: abi::IPPROTO_TCP,
                dport_be: port.to_be(),
            },
            abi::VERDICT_PROXY,
        );
    }
    out.policy = resolve_deny_precedence(entries);

    // Endpoints and reports.
    for c in input.containers {
        let id = label_identity[&c.labels];
        let policy = &policies[&id];
        let mut flags = policy.flags();
        if c.network == Network::Host {
            flags |= abi::EP_HOST_NETWORK;
        }
        if c.default_deny {
            flags |= abi::EP_ENFORCE_INGRESS | abi::EP_ENFORCE_EGRESS;
        }
        // The proxy stands in a network namespace of the container's own:
        // ingress HTTP rules elsewhere close ingress rather than go unchecked.
        let mut errors = policy.errors.clone();
        if c.network != Network::Own && !policy.in_error(Direction::Ingress) {
            if let Some(rule) = policy
                .rules
                .iter()
                .find(|r| r.direction == Direction::Ingress && r.is_http())
            {
                flags |= abi::EP_ERROR_INGRESS;
                errors.push(LabelError {
                    label: rule.origin.source.clone(),
                    column: 1,
                    message: format!(
                        "rule {}: http rules need a container with a network namespace of its own (this one is in {}): ingress closed",
                        rule.origin,
                        if c.network == Network::Host { "the host's" } else { "another container's" }
                    ),
                    closes: vec![Direction::Ingress],
                });
            }
        }
        if let Some(a) = c.attachment {
            out.endpoints.insert(
                EndpointKey {
                    cgroup_id: a.cgroup_id,
                },
                Endpoint {
                    endpoint_id: a.endpoint_id,
                    identity: id,
                    flags,
                },
            );
            // The addresses it may send from.
            let sources = match c.network {
                Network::Own | Network::Joined => &c.addresses[..],
                Network::Host => input.host_addresses,
            };
            out.sources.extend(
                sources
                    .iter()
                    .map(|addr| abi::source_key(a.endpoint_id, *addr)),
            );
        }
        let in_force = |d: Direction| -> Vec<Rule> {
            if errors.iter().any(|e| e.closes.contains(&d)) {
                return Vec::new();
            }
            policy
                .rules
                .iter()
                .filter(|r| r.direction == d)
                .cloned()
                .collect()
        };
        out.containers.push(ContainerReport {
            name: c.name.clone(),
            identity: id,
            ingress_rules: in_force(Direction::Ingress),
            egress_rules: in_force(Direction::Egress),
            errors,
            flags,
            default_deny: c.default_deny,
        });
    }
    Ok(out)
}
