//! When a change does not fit in a map: close what would grow it, so the
//! change needs no new entries there, and say so. A closed direction drops
//! every new flow (`EP_ERROR_*`, drop reason `policy-error`): never open.
//! The next reconcile tries the whole change again, so closing lasts only
//! while the map is full.

use std::collections::{BTreeMap, BTreeSet};

use bpfwall_datapath::MapContents;
use labels_policy::datapath_abi as abi;
use labels_policy::Direction;

/// One direction of one identity closed because a map was full.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Closure {
    /// The identity whose endpoints are closed.
    pub identity: u32,
    /// Which way.
    pub direction: Direction,
    /// The map that was full.
    pub map: &'static str,
}

fn error_flag(direction: Direction) -> u32 {
    match direction {
        Direction::Ingress => abi::EP_ERROR_INGRESS,
        Direction::Egress => abi::EP_ERROR_EGRESS,
    }
}

fn direction_of(code: u8) -> Direction {
    if code == abi::DIR_EGRESS {
        Direction::Egress
    } else {
        Direction::Ingress
    }
}

/// Closes, in `next`, everything that would add entries to `map` beyond
/// what the maps hold (`held`: the active generation and what is left of
/// the previous one), and returns what it closed.
pub fn close_growth(next: &mut MapContents, held: &MapContents, map: &'static str) -> Vec<Closure> {
    let mut closed: BTreeSet<(u32, Direction)> = BTreeSet::new();
    if map == abi::MAP_POLICY || map == abi::MAP_POLICY_EXACT {
        // Every (identity, direction) that adds a key: all of its entries go.
        for k in next.policy.keys() {
            if !held.policy.contains_key(k) {
                closed.insert((k.local_identity, direction_of(k.direction)));
            }
        }
    } else if map == abi::MAP_IPCACHE || map == abi::MAP_IPCACHE_EXACT {
        let new: BTreeMap<_, u32> = next
            .ipcache
            .iter()
            .filter(|(k, _)| !held.ipcache.contains_key(k))
            .map(|(k, v)| (*k, *v))
            .collect();
        let unregistered: BTreeSet<u32> = new.values().copied().collect();
        for k in new.keys() {
            next.ipcache.remove(k);
        }
        // Without its address, a container would reach peers as "world":
        // it sends nothing until it is registered.
        for e in next.endpoints.values() {
            if unregistered.contains(&e.identity) {
                closed.insert((e.identity, Direction::Egress));
            }
        }
        // Without a prefix's entry, its CIDR identity would not be found:
        // rules that name it stop until it is.
        for k in next.policy.keys() {
            if unregistered.contains(&k.peer_identity) {
                closed.insert((k.local_identity, direction_of(k.direction)));
            }
        }
    } else if map == abi::MAP_SOURCES {
        let new: Vec<_> = next
            .sources
            .iter()
            .filter(|k| !held.sources.contains(k))
            .copied()
            .collect();
        let endpoints: BTreeSet<u32> = new.iter().map(|k| k.endpoint_id).collect();
        for k in new {
            next.sources.remove(&k);
        }
        for e in next.endpoints.values() {
            if endpoints.contains(&e.endpoint_id) {
                closed.insert((e.identity, Direction::Egress));
            }
        }
    } else {
        // The endpoint map: new endpoints stay out (their cgroups get the
        // programs anyway, which drop what an unknown endpoint sends).
        let new: Vec<_> = next
            .endpoints
            .keys()
            .filter(|k| !held.endpoints.contains_key(k))
            .copied()
            .collect();
        for k in new {
            if let Some(e) = next.endpoints.remove(&k) {
                closed.insert((e.identity, Direction::Ingress));
                closed.insert((e.identity, Direction::Egress));
            }
        }
    }
    next.policy
        .retain(|k, _| !closed.contains(&(k.local_identity, direction_of(k.direction))));
    for e in next.endpoints.values_mut() {
        for (identity, direction) in &closed {
            if e.identity == *identity {
                e.flags |= error_flag(*direction);
            }
        }
    }
    closed
        .into_iter()
        .map(|(identity, direction)| Closure {
            identity,
            direction,
            map,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use labels_policy::compile::Endpoint;
    use labels_policy::datapath_abi::{EndpointKey, PolicyKey};

    fn key(local: u32, peer: u32, port: u16) -> PolicyKey {
        PolicyKey {
            prefixlen: abi::POLICY_PREFIX_FULL,
            local_identity: local,
            peer_identity: peer,
            direction: abi::DIR_INGRESS,
            protocol: abi::IPPROTO_TCP,
            dport_be: port.to_be(),
        }
    }

    #[test]
    fn a_full_policy_map_closes_the_identities_that_would_grow_it() {
        let ep = |identity, endpoint_id| Endpoint {
            endpoint_id,
            identity,
            flags: abi::EP_ENFORCE_INGRESS,
        };
        let held = MapContents {
            policy: [(key(256, 257, 80), abi::VERDICT_ALLOW)].into(),
            ..MapContents::default()
        };
        let mut next = MapContents {
            endpoints: [
                (EndpointKey { cgroup_id: 1 }, ep(256, 1)),
                (EndpointKey { cgroup_id: 2 }, ep(258, 2)),
            ]
            .into(),
            policy: [
                (key(256, 257, 80), abi::VERDICT_ALLOW),
                (key(258, 257, 22), abi::VERDICT_ALLOW),
                (key(258, 257, 23), abi::VERDICT_ALLOW),
            ]
            .into(),
            ..MapContents::default()
        };
        let closed = close_growth(&mut next, &held, abi::MAP_POLICY_EXACT);
        assert_eq!(
            closed,
            [Closure {
                identity: 258,
                direction: Direction::Ingress,
                map: abi::MAP_POLICY_EXACT
            }]
        );
        // Nothing new is left to write, and 258's ingress is closed, not open.
        assert!(next.policy.keys().all(|k| held.policy.contains_key(k)));
        let e258 = next.endpoints[&EndpointKey { cgroup_id: 2 }];
        assert_ne!(e258.flags & abi::EP_ERROR_INGRESS, 0);
        let e256 = next.endpoints[&EndpointKey { cgroup_id: 1 }];
        assert_eq!(e256.flags & abi::EP_ERROR_INGRESS, 0, "256 did not grow");
    }
}
