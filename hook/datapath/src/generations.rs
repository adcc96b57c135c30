//! Two generations in one set of maps (see `bpf-src/bpfwall_maps.h`): how
//! the logical content of a generation ([`MapContents`], what a compile
//! produces) is stored beside another one, and read back. Pure: the kernel
//! datapath writes what [`encode`] says, the tests hold the stored maps,
//! looked up the way the C program looks them up ([`lookup`]), to the
//! logical contents of both generations.
//!
//! The rules, per key present in either generation (or left in the maps):
//! - a hash entry (endpoints, sources, exact ipcache and policy entries)
//!   carries its value in a generation that has it, and zero ("absent")
//!   in one that does not, so the lookup falls through (to the trie, or to
//!   "unknown");
//! - a trie entry (prefixes, port ranges) carries, in a generation that
//!   does not have it, the value of that generation's longest trie entry
//!   that covers it (or zero): the longest match a packet finds among all
//!   the keys then answers what it would have answered among that
//!   generation's keys alone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use labels_policy::compile::{key_covers, Endpoint};
use labels_policy::datapath_abi::{
    self as abi, EndpointInfo, EndpointKey, EndpointState, IpcacheKey, IpcacheValue, PolicyKey,
    PolicyValue, SourceKey, SourceValue, GENERATIONS,
};

/// The logical content of one generation of the compiled maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapContents {
    /// cgroup → endpoint.
    pub endpoints: BTreeMap<EndpointKey, Endpoint>,
    /// prefix → identity.
    pub ipcache: BTreeMap<IpcacheKey, u32>,
    /// key → `VERDICT_*`.
    pub policy: BTreeMap<PolicyKey, u8>,
    /// (endpoint, address) an endpoint may send from.
    pub sources: BTreeSet<SourceKey>,
}

impl MapContents {
    /// The maps a compile asks for.
    pub fn of(compiled: &labels_policy::Compiled) -> MapContents {
        MapContents {
            endpoints: compiled.endpoints.clone(),
            ipcache: compiled.ipcache.clone(),
            policy: compiled.policy.clone(),
            sources: compiled.sources.clone(),
        }
    }
}

/// What the maps hold: every key with its values in both generations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Physical {
    /// `bpfwall_endpoints_v2`.
    pub endpoints: BTreeMap<EndpointKey, EndpointInfo>,
    /// `bpfwall_ipcache_v2` and `bpfwall_ipcache_exact_v2`.
    pub ipcache: BTreeMap<IpcacheKey, IpcacheValue>,
    /// `bpfwall_policy_v2` and `bpfwall_policy_exact_v2`.
    pub policy: BTreeMap<PolicyKey, PolicyValue>,
    /// `bpfwall_sources_v2`.
    pub sources: BTreeMap<SourceKey, SourceValue>,
}

/// The generation a revision makes active: its lowest bit.
pub fn generation_of(revision: u32) -> usize {
    (revision & 1) as usize
}

/// The revision after `revision`: one more, never zero (conntrack entries
/// of programs older than the revision carry zero and must be decided
/// again), so the active generation always flips.
pub fn next_revision(revision: u32) -> u32 {
    match revision.wrapping_add(1) {
        0 => 2,
        n => n,
    }
}

fn ipcache_prefix_of(key: &IpcacheKey) -> Option<IpNet> {
    abi::ipcache_prefix(key)
}

/// The identity generation content `m` gives a trie key it may not hold:
/// its own, else its longest covering trie entry's, else zero.
fn ipcache_trie_value(m: &BTreeMap<IpcacheKey, u32>, key: &IpcacheKey) -> u32 {
    if let Some(id) = m.get(key) {
        return *id;
    }
    let Some(net) = ipcache_prefix_of(key) else {
        return 0;
    };
    m.iter()
        .filter(|(k, _)| !abi::ipcache_is_exact(k) && k.family == key.family)
        .filter_map(|(k, id)| ipcache_prefix_of(k).map(|p| (p, *id)))
        .filter(|(p, _)| p.contains(&net))
        .max_by_key(|(p, _)| p.prefix_len())
        .map_or(0, |(_, id)| id)
}

/// The verdict generation content `m` gives a trie key it may not hold.
fn policy_trie_value(m: &BTreeMap<PolicyKey, u8>, key: &PolicyKey) -> u8 {
    if let Some(v) = m.get(key) {
        return *v;
    }
    let lo = PolicyKey {
        prefixlen: 0,
        protocol: 0,
        dport_be: 0,
        ..*key
    };
    let hi = PolicyKey {
        prefixlen: u32::MAX,
        protocol: u8::MAX,
        dport_be: u16::MAX,
        ..*key
    };
    m.range(lo..=hi)
        .filter(|(k, _)| {
            k.local_identity == key.local_identity
                && k.peer_identity == key.peer_identity
                && k.direction == key.direction
                && !abi::policy_is_exact(k)
                && key_covers(k, key)
        })
        .max_by_key(|(k, _)| k.prefixlen)
        .map_or(0, |(_, v)| *v)
}

/// What the maps must hold so that generation `active` is `current` and
/// the other one is `next`. `leftover` are keys the maps hold beyond both
/// (from an interrupted change): they get the values their generation
/// gives them too, so they are harmless until they are deleted.
pub fn encode(
    active: usize,
    current: &MapContents,
    next: &MapContents,
    leftover: &Physical,
) -> Physical {
    let staged = 1 - active;
    let mut out = Physical::default();
    let by_gen = |g: usize| if g == active { current } else { next };

    let endpoint_keys: BTreeSet<EndpointKey> = current
        .endpoints
        .keys()
        .chain(next.endpoints.keys())
        .chain(leftover.endpoints.keys())
        .copied()
        .collect();
    for key in endpoint_keys {
        let mut info = EndpointInfo::default();
        for g in 0..GENERATIONS {
            if let Some(ep) = by_gen(g).endpoints.get(&key) {
                info.gen[g] = EndpointState {
                    identity: ep.identity,
                    flags: ep.flags,
                };
            }
        }
        // The slot is the same in every generation; the staged one wins
        // (it is what the daemon now counts on).
        info.endpoint_id = next
            .endpoints
            .get(&key)
            .or_else(|| current.endpoints.get(&key))
            .map_or_else(
                || leftover.endpoints.get(&key).map_or(0, |i| i.endpoint_id),
                |e| e.endpoint_id,
            );
        out.endpoints.insert(key, info);
    }

    let ipcache_keys: BTreeSet<IpcacheKey> = current
        .ipcache
        .keys()
        .chain(next.ipcache.keys())
        .chain(leftover.ipcache.keys())
        .copied()
        .collect();
    for key in ipcache_keys {
        let mut value = IpcacheValue::default();
        for g in 0..GENERATIONS {
            let m = &by_gen(g).ipcache;
            value.identity[g] = if abi::ipcache_is_exact(&key) {
                m.get(&key).copied().unwrap_or(0)
            } else {
                ipcache_trie_value(m, &key)
            };
        }
        out.ipcache.insert(key, value);
    }

    let policy_keys: BTreeSet<PolicyKey> = current
        .policy
        .keys()
        .chain(next.policy.keys())
        .chain(leftover.policy.keys())
        .copied()
        .collect();
    for key in policy_keys {
        let mut value = PolicyValue::default();
        for g in 0..GENERATIONS {
            let m = &by_gen(g).policy;
            value.verdict[g] = if abi::policy_is_exact(&key) {
                m.get(&key).copied().unwrap_or(0)
            } else {
                policy_trie_value(m, &key)
            };
        }
        out.policy.insert(key, value);
    }

    let source_keys: BTreeSet<SourceKey> = current
        .sources
        .iter()
        .chain(&next.sources)
        .chain(leftover.sources.keys())
        .copied()
        .collect();
    for key in source_keys {
        let mut value = SourceValue::default();
        for g in 0..GENERATIONS {
            value.allowed[g] = u8::from(by_gen(g).sources.contains(&key));
        }
        out.sources.insert(key, value);
    }
    debug_assert_eq!(staged, 1 - active);
    out
}

/// The logical content of generation `g` as the maps hold it. Trie entries
/// a generation does not have carry their covering entry's value: read
/// back, they are entries that answer exactly what the covering one does,
/// so the content read is equivalent for every lookup (and they go at the
/// next change).
pub fn decode(g: usize, physical: &Physical) -> MapContents {
    MapContents {
        endpoints: physical
            .endpoints
            .iter()
            .filter(|(_, i)| i.gen[g].identity != 0)
            .map(|(k, i)| {
                (
                    *k,
                    Endpoint {
                        endpoint_id: i.endpoint_id,
                        identity: i.gen[g].identity,
                        flags: i.gen[g].flags,
                    },
                )
            })
            .collect(),
        ipcache: physical
            .ipcache
            .iter()
            .filter(|(_, v)| v.identity[g] != 0)
            .map(|(k, v)| (*k, v.identity[g]))
            .collect(),
        policy: physical
            .policy
            .iter()
            .filter(|(_, v)| v.verdict[g] != 0)
            .map(|(k, v)| (*k, v.verdict[g]))
            .collect(),
        sources: physical
            .sources
            .iter()
            .filter(|(_, v)| v.allowed[g] != 0)
            .map(|(k, _)| *k)
            .collect(),
    }
}

/// How many entries each map would hold, by map name.
pub fn fill(physical: &Physical) -> BTreeMap<&'static str, usize> {
    let exact_ipcache = physical
        .ipcache
        .keys()
        .filter(|k| abi::ipcache_is_exact(k))
        .count();
    let exact_policy = physical
        .policy
        .keys()
        .filter(|k| abi::policy_is_exact(k))
        .count();
    BTreeMap::from([
        (abi::MAP_ENDPOINTS, physical.endpoints.len()),
        (abi::MAP_IPCACHE_EXACT, exact_ipcache),
        (abi::MAP_IPCACHE, physical.ipcache.len() - exact_ipcache),
        (abi::MAP_POLICY_EXACT, exact_policy),
        (abi::MAP_POLICY, physical.policy.len() - exact_policy),
        (abi::MAP_SOURCES, physical.sources.len()),
    ])
}

/// The lookups of the C program (`policy.h`, `endpoint.h`) over what the
/// maps hold, for one generation: how the tests check [`encode`].
pub mod lookup {
    use super::*;

    /// `ipcache_identity()`: the exact hash, then the longest trie entry.
    pub fn identity(physical: &Physical, g: usize, addr: IpAddr) -> u32 {
        let exact = abi::ipcache_key(&IpNet::from(addr));
        let mut id = physical.ipcache.get(&exact).map_or(0, |v| v.identity[g]);
        if id == 0 {
            id = physical
                .ipcache
                .iter()
                .filter(|(k, _)| !abi::ipcache_is_exact(k))
                .filter_map(|(k, v)| super::ipcache_prefix_of(k).map(|p| (p, v.identity[g])))
                .filter(|(p, _)| p.contains(&addr))
                .max_by_key(|(p, _)| p.prefix_len())
                .map_or(0, |(_, id)| id);
        }
        if id == 0 {
            abi::IDENTITY_WORLD
        } else {
            id
        }
    }

    /// `policy_lookup()`: the exact hash, then the longest trie entry.
    pub fn verdict(physical: &Physical, g: usize, packet: &PolicyKey) -> u8 {
        let v = physical.policy.get(packet).map_or(0, |v| v.verdict[g]);
        if v != 0 {
            return v;
        }
        physical
            .policy
            .iter()
            .filter(|(k, _)| {
                k.local_identity == packet.local_identity
                    && k.peer_identity == packet.peer_identity
                    && k.direction == packet.direction
                    && !abi::policy_is_exact(k)
                    && key_covers(k, packet)
            })
            .max_by_key(|(k, _)| k.prefixlen)
            .map_or(0, |(_, v)| v.verdict[g])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use labels_policy::compile::{Compiled, Endpoint};
    use proptest::prelude::*;

    fn logical_identity(m: &MapContents, addr: IpAddr) -> u32 {
        let compiled = Compiled {
            ipcache: m.ipcache.clone(),
            ..Compiled::default()
        };
        labels_policy::decision::ipcache_identity(&compiled, addr)
    }

    fn logical_verdict(m: &MapContents, packet: &PolicyKey) -> u8 {
        let compiled = Compiled {
            policy: m.policy.clone(),
            ..Compiled::default()
        };
        labels_policy::decision::policy_lookup(
            &compiled,
            packet.local_identity,
            packet.peer_identity,
            packet.direction,
            packet.protocol,
            u16::from_be(packet.dport_be),
        )
        .unwrap_or(0)
    }

    fn prefix() -> impl Strategy<Value = IpcacheKey> {
        // A few nested IPv4 prefixes and host addresses in 10.0.0.0/16, so
        // entries cover each other often.
        (
            prop_oneof![Just(8u8), Just(16), Just(24), Just(28), Just(32)],
            0u8..4,
            0u8..8,
        )
            .prop_map(|(len, b, c)| {
                let addr = std::net::Ipv4Addr::new(10, 0, b, c * 16 + 1);
                let net = ipnet::Ipv4Net::new(addr, len).map(|n| n.trunc());
                abi::ipcache_key(&IpNet::V4(net.unwrap_or_default()))
            })
    }

    fn ipcache() -> impl Strategy<Value = BTreeMap<IpcacheKey, u32>> {
        proptest::collection::btree_map(prefix(), 256u32..264, 0..8)
    }

    fn policy_key() -> impl Strategy<Value = PolicyKey> {
        (
            prop_oneof![Just(0u32), Just(300)],
            prop_oneof![Just(abi::IPPROTO_TCP), Just(abi::IPPROTO_UDP)],
            0u16..4,
            prop_oneof![
                Just(abi::POLICY_PREFIX_ANY_PROTO),
                Just(abi::POLICY_PREFIX_ANY_PORT),
                Just(abi::POLICY_PREFIX_ANY_PORT + 14),
                Just(abi::POLICY_PREFIX_FULL)
            ],
        )
            .prop_map(|(peer, protocol, port, prefixlen)| {
                let bits = prefixlen - abi::POLICY_PREFIX_ANY_PROTO;
                let (protocol, port) = match bits {
                    0 => (0, 0),
                    8 => (protocol, 0),
                    _ => {
                        let p = 80 + port;
                        let keep = bits - 8;
                        (
                            protocol,
                            if keep >= 16 {
                                p
                            } else {
                                p & !((1 << (16 - keep)) - 1)
                            },
                        )
                    }
                };
                PolicyKey {
                    prefixlen,
                    local_identity: 256,
                    peer_identity: peer,
                    direction: abi::DIR_INGRESS,
                    protocol,
                    dport_be: port.to_be(),
                }
            })
    }

    fn policy() -> impl Strategy<Value = BTreeMap<PolicyKey, u8>> {
        proptest::collection::btree_map(
            policy_key(),
            prop_oneof![Just(abi::VERDICT_ALLOW), Just(abi::VERDICT_DENY)],
            0..8,
        )
    }

    fn contents() -> impl Strategy<Value = MapContents> {
        (ipcache(), policy()).prop_map(|(ipcache, policy)| MapContents {
            ipcache,
            policy,
            ..MapContents::default()
        })
    }

    fn addresses() -> Vec<IpAddr> {
        let mut out = Vec::new();
        for b in 0..4u8 {
            for c in 0..8u8 {
                out.push(IpAddr::from([10, 0, b, c * 16 + 1]));
                out.push(IpAddr::from([10, 0, b, c * 16 + 9]));
            }
        }
        out.push(IpAddr::from([10, 1, 0, 1]));
        out.push(IpAddr::from([192, 0, 2, 1]));
        out
    }

    fn packets() -> Vec<PolicyKey> {
        let mut out = Vec::new();
        for peer in [0, 300, 301] {
            for protocol in [abi::IPPROTO_TCP, abi::IPPROTO_UDP, abi::IPPROTO_ICMP] {
                for port in [79u16, 80, 81, 82, 83, 84, 443] {
                    out.push(PolicyKey {
                        prefixlen: abi::POLICY_PREFIX_FULL,
                        local_identity: 256,
                        peer_identity: peer,
                        direction: abi::DIR_INGRESS,
                        protocol,
                        dport_be: port.to_be(),
                    });
                }
            }
        }
        out
    }

    /// Every lookup of generation `g` of `physical` answers what `m` does.
    fn holds(physical: &Physical, g: usize, m: &MapContents) -> Result<(), TestCaseError> {
        for addr in addresses() {
            prop_assert_eq!(
                lookup::identity(physical, g, addr),
                logical_identity(m, addr),
                "identity of {} in generation {}",
                addr,
                g
            );
        }
        for p in packets() {
            prop_assert_eq!(
                lookup::verdict(physical, g, &p),
                logical_verdict(m, &p),
                "verdict of {:?} in generation {}",
                p,
                g
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Whatever the two contents, each generation of the stored maps
        /// answers every lookup exactly as its content does: before the
        /// flip the old one, after it the new one, and after the leftovers
        /// are deleted still the new one. No lookup ever sees a mix.
        #[test]
        fn each_generation_answers_as_its_content(current in contents(), next in contents(), active in 0usize..2) {
            // What the maps hold before the change: `current`, as stored.
            let before = encode(active, &current, &current, &Physical::default());
            holds(&before, active, &current)?;
            let staged = encode(active, &current, &next, &before);
            holds(&staged, active, &current)?;
            holds(&staged, 1 - active, &next)?;
            // After the flip, keys the new generation lacks are deleted.
            let mut pruned = staged.clone();
            pruned.ipcache.retain(|k, _| next.ipcache.contains_key(k));
            pruned.policy.retain(|k, _| next.policy.contains_key(k));
            holds(&pruned, 1 - active, &next)?;
            // Read back, the new generation is equivalent to `next`.
            let read = decode(1 - active, &staged);
            holds(&staged, 1 - active, &read)?;
        }
    }

    #[test]
    fn endpoints_and_sources_absent_in_a_generation_read_as_absent() {
        let key = EndpointKey { cgroup_id: 9 };
        let current = MapContents::default();
        let next = MapContents {
            endpoints: BTreeMap::from([(
                key,
                Endpoint {
                    endpoint_id: 3,
                    identity: 256,
                    flags: abi::EP_ENFORCE_INGRESS,
                },
            )]),
            sources: BTreeSet::from([abi::source_key(3, "10.0.0.2".parse().unwrap())]),
            ..MapContents::default()
        };
        let staged = encode(0, &current, &next, &Physical::default());
        assert_eq!(
            staged.endpoints[&key].gen[0].identity, 0,
            "not yet an endpoint"
        );
        assert_eq!(staged.endpoints[&key].endpoint_id, 3);
        assert_eq!(decode(0, &staged), current);
        assert_eq!(decode(1, &staged), next);
    }

    #[test]
    fn revisions_flip_the_generation_and_skip_zero() {
        assert_eq!(next_revision(1), 2);
        assert_eq!(next_revision(u32::MAX), 2);
        for r in [1u32, 2, 77, u32::MAX] {
            assert_ne!(generation_of(r), generation_of(next_revision(r)));
        }
    }
}
