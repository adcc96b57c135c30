//! Endpoint ids: each attached container's slot in the counters map (and
//! the key of its conntrack entries), below `MAX_ENDPOINTS`.

use std::collections::{BTreeMap, BTreeSet};

use labels_policy::datapath_abi::{self as abi, EndpointInfo};

/// What one assignment changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Ids handed out fresh: their counters must be zeroed.
    pub fresh: Vec<u32>,
    /// Ids taken back from containers that are gone.
    pub freed: BTreeSet<u32>,
    /// Containers that got no id, because every slot is taken.
    pub exhausted: Vec<String>,
}

/// The ids handed out, by container id.
#[derive(Debug, Default, Clone)]
pub struct EndpointIds {
    by_container: BTreeMap<String, u32>,
    /// Endpoints a previous daemon left pinned, by cgroup id: their ids are
    /// taken over by the containers still in those cgroups.
    adoptable: BTreeMap<u64, EndpointInfo>,
}

impl EndpointIds {
    /// Nothing handed out; `adoptable` are the endpoint entries found pinned.
    pub fn new(adoptable: BTreeMap<u64, EndpointInfo>) -> Self {
        EndpointIds {
            by_container: BTreeMap::new(),
            adoptable,
        }
    }

    /// A container's id.
    pub fn get(&self, container: &str) -> Option<u32> {
        self.by_container.get(container).copied()
    }

    /// The pinned endpoint a container's cgroup had, if any is left to adopt.
    pub fn adoptable(&self, cgroup_id: u64) -> Option<&EndpointInfo> {
        self.adoptable.get(&cgroup_id)
    }

    /// Adoption happens once, with the first reconcile.
    pub fn done_adopting(&mut self) {
        self.adoptable.clear();
    }

    /// Gives every live container (id, cgroup id) an id, keeping the ids of
    /// those that had one and taking back those of containers gone.
    pub fn assign<'a>(&mut self, live: impl IntoIterator<Item = (&'a str, u64)>) -> Assignment {
        let live: BTreeMap<&str, u64> = live.into_iter().collect();
        let mut out = Assignment::default();
        self.by_container.retain(|id, ep| {
            let keep = live.contains_key(id.as_str());
            if !keep {
                out.freed.insert(*ep);
            }
            keep
        });
        for (id, cgroup_id) in live {
            if self.by_container.contains_key(id) {
                continue;
            }
            let used: BTreeSet<u32> = self.by_container.values().copied().collect();
            let adopted = self
                .adoptable
                .get(&cgroup_id)
                .map(|info| info.endpoint_id)
                .filter(|ep| !used.contains(ep) && *ep < abi::MAX_ENDPOINTS);
            let ep = match adopted {
                Some(ep) => ep,
                None => match (1..abi::MAX_ENDPOINTS).find(|n| !used.contains(n)) {
                    Some(ep) => {
                        out.fresh.push(ep);
                        ep
                    }
                    None => {
                        out.exhausted.push(id.to_string());
                        continue;
                    }
                },
            };
            out.freed.remove(&ep);
            self.by_container.insert(id.to_string(), ep);
        }
        out
    }
}
