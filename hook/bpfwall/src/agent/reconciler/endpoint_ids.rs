//! Endpoint ids: each attached container's slot in the counters map and the
//! key of its conntrack entries, below `MAX_ENDPOINTS`.
//!
//! An id that leaves a container is quarantined until its conntrack
//! entries are gone: a new container never gets a slot whose old flows
//! would count as its own (a reused address would otherwise receive the
//! old container's "replies").

use std::collections::{BTreeMap, BTreeSet};

use labels_policy::compile::Endpoint;
use labels_policy::datapath_abi as abi;

/// What one assignment changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Ids handed out fresh: their counters must be zeroed.
    pub fresh: Vec<u32>,
    /// Ids whose conntrack entries must go before they are handed out again
    /// (taken back now, or earlier and not forgotten yet).
    pub quarantined: BTreeSet<u32>,
    /// Containers that got no id, because every slot is taken.
    pub exhausted: Vec<String>,
}

/// The ids handed out, by container id.
#[derive(Debug, Default, Clone)]
pub struct EndpointIds {
    by_container: BTreeMap<String, u32>,
    /// Endpoints a previous daemon left, by cgroup id: their ids are taken
    /// over by the containers still in those cgroups; the others are
    /// quarantined with the first assignment.
    adoptable: BTreeMap<u64, Endpoint>,
    /// Ids taken back whose conntrack entries may still exist.
    quarantine: BTreeSet<u32>,
}

impl EndpointIds {
    /// Nothing handed out; `adoptable` are the endpoints found in the maps.
    pub fn new(adoptable: BTreeMap<u64, Endpoint>) -> Self {
        EndpointIds {
            by_container: BTreeMap::new(),
            adoptable,
            quarantine: BTreeSet::new(),
        }
    }

    /// A container's id.
    pub fn get(&self, container: &str) -> Option<u32> {
        self.by_container.get(container).copied()
    }

    /// How many containers hold an id.
    pub fn len(&self) -> usize {
        self.by_container.len()
    }

    /// The endpoint a container's cgroup had, if any is left to adopt.
    pub fn adoptable(&self, cgroup_id: u64) -> Option<&Endpoint> {
        self.adoptable.get(&cgroup_id)
    }

    /// Gives every live container (id, cgroup id) an id, keeping the ids of
    /// those that had one, adopting those an earlier daemon gave, and
    /// taking back those of containers gone (into quarantine).
    pub fn assign<'a>(&mut self, live: impl IntoIterator<Item = (&'a str, u64)>) -> Assignment {
        let live: BTreeMap<&str, u64> = live.into_iter().collect();
        let mut out = Assignment::default();
        let quarantine = &mut self.quarantine;
        self.by_container.retain(|id, ep| {
            let keep = live.contains_key(id.as_str());
            if !keep {
                quarantine.insert(*ep);
            }
            keep
        });
        let adoptable = std::mem::take(&mut self.adoptable);
        let mut adopted = BTreeSet::new();
        for (id, cgroup_id) in &live {
            if self.by_container.contains_key(*id) {
                continue;
            }
            let used: BTreeSet<u32> = self.by_container.values().copied().collect();
            let candidate = adoptable
                .get(cgroup_id)
                .map(|e| e.endpoint_id)
                .filter(|ep| !used.contains(ep) && *ep < abi::MAX_ENDPOINTS && *ep > 0);
            let ep = match candidate {
                Some(ep) => {
                    adopted.insert(ep);
                    ep
                }
                None => {
                    // Ids an earlier daemon used are not free until adoption
                    // is over and their flows are forgotten.
                    let pinned: BTreeSet<u32> = adoptable.values().map(|e| e.endpoint_id).collect();
                    match (1..abi::MAX_ENDPOINTS).find(|n| {
                        !used.contains(n) && !self.quarantine.contains(n) && !pinned.contains(n)
                    }) {
                        Some(ep) => {
                            out.fresh.push(ep);
                            ep
                        }
                        None => {
                            out.exhausted.push(id.to_string());
                            continue;
                        }
                    }
                }
            };
            self.by_container.insert(id.to_string(), ep);
        }
        // Whatever an earlier daemon left that nobody took over is freed.
        for e in adoptable.values() {
            if !adopted.contains(&e.endpoint_id) {
                self.quarantine.insert(e.endpoint_id);
            }
        }
        let held: BTreeSet<u32> = self.by_container.values().copied().collect();
        self.quarantine.retain(|ep| !held.contains(ep));
        out.quarantined = self.quarantine.clone();
        out
    }

    /// These ids' conntrack entries are gone: they may be handed out again.
    pub fn release(&mut self, forgotten: &BTreeSet<u32>) {
        self.quarantine.retain(|ep| !forgotten.contains(ep));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_id_is_not_handed_out_before_its_flows_are_forgotten() {
        let mut ids = EndpointIds::default();
        ids.assign([("a", 100)]);
        assert_eq!(ids.get("a"), Some(1));
        // a goes and b comes in the same reconcile: b must not get 1.
        let out = ids.assign([("b", 101)]);
        assert_eq!(ids.get("b"), Some(2));
        assert_eq!(out.quarantined, BTreeSet::from([1]));
        // Until the release, 1 stays out of reach.
        let out = ids.assign([("b", 101), ("c", 102)]);
        assert_eq!(ids.get("c"), Some(3));
        ids.release(&out.quarantined);
        ids.assign([("b", 101), ("c", 102), ("d", 103)]);
        assert_eq!(ids.get("d"), Some(1));
    }

    #[test]
    fn ids_an_earlier_daemon_left_are_adopted_or_quarantined() {
        let e = |ep| Endpoint {
            endpoint_id: ep,
            identity: 256,
            flags: 0,
        };
        let mut ids = EndpointIds::new(BTreeMap::from([(100, e(5)), (200, e(1))]));
        // The container of cgroup 100 is still there; cgroup 200's is gone,
        // and a new container arrives.
        let out = ids.assign([("still", 100), ("new", 300)]);
        assert_eq!(ids.get("still"), Some(5));
        assert_ne!(ids.get("new"), Some(1), "not the slot of a container gone");
        assert_eq!(out.quarantined, BTreeSet::from([1]));
    }
}
