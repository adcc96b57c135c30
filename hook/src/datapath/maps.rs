//! Typed access to the datapath's maps: read what they hold, apply a diff.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuValues};
use aya::Ebpf;
use labels_policy::datapath_abi::{
    self as abi, CtKey, CtValue, DropReason, EndpointCounters, EndpointInfo, EndpointKey,
    IpcacheKey, IpcacheValue, PolicyKey, PolicyRevision, PolicyValue,
};

use super::pod::{self, IpcacheData, PolicyData, P};
use super::DatapathError;

/// The maps bpfwall writes, plus counters and conntrack.
pub struct Maps<'a> {
    /// `bpfwall_endpoints_v1`.
    pub endpoints: HashMap<&'a mut MapData, P<EndpointKey>, P<EndpointInfo>>,
    /// `bpfwall_ipcache_v1`: prefixes.
    pub ipcache: LpmTrie<&'a mut MapData, IpcacheData, P<IpcacheValue>>,
    /// `bpfwall_ipcache_exact_v1`: host addresses.
    pub ipcache_exact: HashMap<&'a mut MapData, P<IpcacheKey>, P<IpcacheValue>>,
    /// `bpfwall_policy_v1`: port ranges, any port, any protocol.
    pub policy: LpmTrie<&'a mut MapData, PolicyData, P<PolicyValue>>,
    /// `bpfwall_policy_exact_v1`: one protocol, one port.
    pub policy_exact: HashMap<&'a mut MapData, P<PolicyKey>, P<PolicyValue>>,
    /// `bpfwall_ct_v1`.
    pub ct: HashMap<&'a mut MapData, P<CtKey>, P<CtValue>>,
    /// `bpfwall_policy_rev_v1`.
    pub policy_rev: Array<&'a mut MapData, P<PolicyRevision>>,
    /// `bpfwall_counters_v1`.
    pub counters: PerCpuArray<&'a mut MapData, P<EndpointCounters>>,
    /// `bpfwall_drops_v1`.
    pub drops: PerCpuArray<&'a mut MapData, u64>,
}

impl std::fmt::Debug for Maps<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maps").finish_non_exhaustive()
    }
}

fn map_err(name: &'static str, op: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |e| DatapathError::Map {
        name,
        op,
        source: Box::new(e),
    }
}

/// What the three compiled maps hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapContents {
    /// `bpfwall_endpoints_v1`.
    pub endpoints: BTreeMap<EndpointKey, EndpointInfo>,
    /// `bpfwall_ipcache_v1`.
    pub ipcache: BTreeMap<IpcacheKey, IpcacheValue>,
    /// `bpfwall_policy_v1`.
    pub policy: BTreeMap<PolicyKey, PolicyValue>,
}

/// Entries to write and keys to delete to go from one content to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff<K, V> {
    /// Keys missing or holding another value.
    pub upsert: Vec<(K, V)>,
    /// Keys present but not wanted.
    pub remove: Vec<K>,
}

impl<K, V> Diff<K, V> {
    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.remove.is_empty()
    }
}

/// The difference between what a map holds and what it should hold.
pub fn diff<K: Ord + Copy, V: PartialEq + Copy>(
    current: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
) -> Diff<K, V> {
    Diff {
        upsert: desired
            .iter()
            .filter(|(k, v)| current.get(k) != Some(v))
            .map(|(k, v)| (*k, *v))
            .collect(),
        remove: current
            .keys()
            .filter(|k| !desired.contains_key(k))
            .copied()
            .collect(),
    }
}

impl<'a> Maps<'a> {
    pub(super) fn new(ebpf: &'a mut Ebpf) -> Result<Self, DatapathError> {
        // Take each map out by name; disjoint borrows of the Ebpf's maps.
        let mut found: BTreeMap<&'static str, &'a mut aya::maps::Map> = BTreeMap::new();
        for (name, map) in ebpf.maps_mut() {
            if let Some(known) = abi::ALL_MAPS.iter().find(|n| **n == name) {
                found.insert(known, map);
            }
        }
        let mut take =
            |name: &'static str| found.remove(name).ok_or(DatapathError::MissingMap { name });
        Ok(Maps {
            endpoints: HashMap::try_from(take(abi::MAP_ENDPOINTS)?)
                .map_err(map_err(abi::MAP_ENDPOINTS, "open"))?,
            ipcache: LpmTrie::try_from(take(abi::MAP_IPCACHE)?)
                .map_err(map_err(abi::MAP_IPCACHE, "open"))?,
            ipcache_exact: HashMap::try_from(take(abi::MAP_IPCACHE_EXACT)?)
                .map_err(map_err(abi::MAP_IPCACHE_EXACT, "open"))?,
            policy: LpmTrie::try_from(take(abi::MAP_POLICY)?)
                .map_err(map_err(abi::MAP_POLICY, "open"))?,
            policy_exact: HashMap::try_from(take(abi::MAP_POLICY_EXACT)?)
                .map_err(map_err(abi::MAP_POLICY_EXACT, "open"))?,
            ct: HashMap::try_from(take(abi::MAP_CT)?).map_err(map_err(abi::MAP_CT, "open"))?,
            policy_rev: Array::try_from(take(abi::MAP_POLICY_REV)?)
                .map_err(map_err(abi::MAP_POLICY_REV, "open"))?,
            counters: PerCpuArray::try_from(take(abi::MAP_COUNTERS)?)
                .map_err(map_err(abi::MAP_COUNTERS, "open"))?,
            drops: PerCpuArray::try_from(take(abi::MAP_DROPS)?)
                .map_err(map_err(abi::MAP_DROPS, "open"))?,
        })
    }

    /// Reads the three compiled maps.
    pub fn read(&self) -> Result<MapContents, DatapathError> {
        let mut out = MapContents::default();
        for item in self.endpoints.iter() {
            let (k, v) = item.map_err(map_err(abi::MAP_ENDPOINTS, "iterate"))?;
            out.endpoints.insert(k.0, v.0);
        }
        for item in self.ipcache.iter() {
            let (k, v) = item.map_err(map_err(abi::MAP_IPCACHE, "iterate"))?;
            out.ipcache.insert(pod::ipcache_key_from_trie(&k), v.0);
        }
        for item in self.ipcache_exact.iter() {
            let (k, v) = item.map_err(map_err(abi::MAP_IPCACHE_EXACT, "iterate"))?;
            out.ipcache.insert(k.0, v.0);
        }
        for item in self.policy.iter() {
            let (k, v) = item.map_err(map_err(abi::MAP_POLICY, "iterate"))?;
            out.policy.insert(pod::policy_key_from_trie(&k), v.0);
        }
        for item in self.policy_exact.iter() {
            let (k, v) = item.map_err(map_err(abi::MAP_POLICY_EXACT, "iterate"))?;
            out.policy.insert(k.0, v.0);
        }
        Ok(out)
    }

    /// Writes upserts of all three maps (endpoints last, so a new endpoint
    /// is only found once its policy is in place).
    pub fn apply_upserts(
        &mut self,
        endpoints: &Diff<EndpointKey, EndpointInfo>,
        ipcache: &Diff<IpcacheKey, IpcacheValue>,
        policy: &Diff<PolicyKey, PolicyValue>,
    ) -> Result<(), DatapathError> {
        for (k, v) in &policy.upsert {
            if abi::policy_is_exact(k) {
                self.policy_exact
                    .insert(P(*k), P(*v), 0)
                    .map_err(map_err(abi::MAP_POLICY_EXACT, "insert"))?;
            } else {
                self.policy
                    .insert(&pod::policy_trie_key(k), P(*v), 0)
                    .map_err(map_err(abi::MAP_POLICY, "insert"))?;
            }
        }
        for (k, v) in &ipcache.upsert {
            if abi::ipcache_is_exact(k) {
                self.ipcache_exact
                    .insert(P(*k), P(*v), 0)
                    .map_err(map_err(abi::MAP_IPCACHE_EXACT, "insert"))?;
            } else {
                self.ipcache
                    .insert(&pod::ipcache_trie_key(k), P(*v), 0)
                    .map_err(map_err(abi::MAP_IPCACHE, "insert"))?;
            }
        }
        for (k, v) in &endpoints.upsert {
            self.endpoints
                .insert(P(*k), P(*v), 0)
                .map_err(map_err(abi::MAP_ENDPOINTS, "insert"))?;
        }
        Ok(())
    }

    /// Deletes removed keys of all three maps (endpoints first).
    pub fn apply_removals(
        &mut self,
        endpoints: &Diff<EndpointKey, EndpointInfo>,
        ipcache: &Diff<IpcacheKey, IpcacheValue>,
        policy: &Diff<PolicyKey, PolicyValue>,
    ) -> Result<(), DatapathError> {
        for k in &endpoints.remove {
            ignore_missing(self.endpoints.remove(&P(*k)))
                .map_err(map_err(abi::MAP_ENDPOINTS, "remove"))?;
        }
        for k in &ipcache.remove {
            if abi::ipcache_is_exact(k) {
                ignore_missing(self.ipcache_exact.remove(&P(*k)))
                    .map_err(map_err(abi::MAP_IPCACHE_EXACT, "remove"))?;
            } else {
                ignore_missing(self.ipcache.remove(&pod::ipcache_trie_key(k)))
                    .map_err(map_err(abi::MAP_IPCACHE, "remove"))?;
            }
        }
        for k in &policy.remove {
            if abi::policy_is_exact(k) {
                ignore_missing(self.policy_exact.remove(&P(*k)))
                    .map_err(map_err(abi::MAP_POLICY_EXACT, "remove"))?;
            } else {
                ignore_missing(self.policy.remove(&pod::policy_trie_key(k)))
                    .map_err(map_err(abi::MAP_POLICY, "remove"))?;
            }
        }
        Ok(())
    }

    /// The current policy revision.
    pub fn policy_revision(&self) -> Result<u32, DatapathError> {
        self.policy_rev
            .get(&0, 0)
            .map(|r| r.0.revision)
            .map_err(map_err(abi::MAP_POLICY_REV, "read"))
    }

    /// Tells the datapath that the maps changed: every established flow is
    /// decided again on its next packet. Call after all writes and removals
    /// of a change have landed. Returns the new revision.
    pub fn bump_policy_revision(&mut self) -> Result<u32, DatapathError> {
        // Never zero: conntrack entries written by programs older than the
        // revision carry zero there, and must be decided again.
        let next = self.policy_revision()?.wrapping_add(1).max(1);
        self.policy_rev
            .set(0, P(PolicyRevision { revision: next }), 0)
            .map_err(map_err(abi::MAP_POLICY_REV, "write"))?;
        Ok(next)
    }

    /// Moves exact entries (host addresses, single ports) that an older
    /// daemon wrote into the tries over to the hashes: written to the hash
    /// first, then deleted from the trie, so a lookup (hash, then trie)
    /// finds them all along. Returns how many moved.
    pub fn migrate_exact_entries(&mut self) -> Result<usize, DatapathError> {
        let mut ipcache = Vec::new();
        for item in self.ipcache.iter() {
            let (k, v) = item.map_err(map_err(abi::MAP_IPCACHE, "iterate"))?;
            let key = pod::ipcache_key_from_trie(&k);
            if abi::ipcache_is_exact(&key) {
                ipcache.push((key, v.0));
            }
        }
        let mut policy = Vec::new();
        for item in self.policy.iter() {
            let (k, v) = item.map_err(map_err(abi::MAP_POLICY, "iterate"))?;
            let key = pod::policy_key_from_trie(&k);
            if abi::policy_is_exact(&key) {
                policy.push((key, v.0));
            }
        }
        for (k, v) in &ipcache {
            self.ipcache_exact
                .insert(P(*k), P(*v), 0)
                .map_err(map_err(abi::MAP_IPCACHE_EXACT, "insert"))?;
            ignore_missing(self.ipcache.remove(&pod::ipcache_trie_key(k)))
                .map_err(map_err(abi::MAP_IPCACHE, "remove"))?;
        }
        for (k, v) in &policy {
            self.policy_exact
                .insert(P(*k), P(*v), 0)
                .map_err(map_err(abi::MAP_POLICY_EXACT, "insert"))?;
            ignore_missing(self.policy.remove(&pod::policy_trie_key(k)))
                .map_err(map_err(abi::MAP_POLICY, "remove"))?;
        }
        Ok(ipcache.len() + policy.len())
    }

    /// Deletes every conntrack entry of these endpoints. Returns how many.
    pub fn forget_conntrack(
        &mut self,
        endpoint_ids: &BTreeSet<u32>,
    ) -> Result<usize, DatapathError> {
        if endpoint_ids.is_empty() {
            return Ok(0);
        }
        let mut stale = Vec::new();
        for key in self.ct.keys() {
            let key = key.map_err(map_err(abi::MAP_CT, "iterate"))?;
            if endpoint_ids.contains(&key.0.endpoint_id) {
                stale.push(key);
            }
        }
        for key in &stale {
            ignore_missing(self.ct.remove(key)).map_err(map_err(abi::MAP_CT, "remove"))?;
        }
        Ok(stale.len())
    }

    /// Adds a conntrack entry (tests and benchmarks set up flows this way).
    pub fn insert_conntrack(&mut self, key: CtKey, value: CtValue) -> Result<(), DatapathError> {
        self.ct
            .insert(P(key), P(value), 0)
            .map_err(map_err(abi::MAP_CT, "insert"))
    }

    /// The counters of one endpoint, summed over CPUs.
    pub fn counters(&self, endpoint_id: u32) -> Result<EndpointCounters, DatapathError> {
        let per_cpu = self
            .counters
            .get(&endpoint_id, 0)
            .map_err(map_err(abi::MAP_COUNTERS, "read"))?;
        let mut total = EndpointCounters::default();
        for c in per_cpu.iter() {
            total.add(&c.0);
        }
        Ok(total)
    }

    /// Zeroes one endpoint's counters (when its slot is handed out).
    pub fn reset_counters(&mut self, endpoint_id: u32) -> Result<(), DatapathError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Io {
            op: "count CPUs in",
            path: "/sys/devices/system/cpu/possible".into(),
            source: e,
        })?;
        let zero =
            PerCpuValues::try_from(vec![P(EndpointCounters::default()); cpus]).map_err(|e| {
                DatapathError::Io {
                    op: "build per-CPU values for",
                    path: abi::MAP_COUNTERS.into(),
                    source: e,
                }
            })?;
        self.counters
            .set(endpoint_id, zero, 0)
            .map_err(map_err(abi::MAP_COUNTERS, "reset"))
    }

    /// Host-wide drop counts per reason.
    pub fn drops(&self) -> Result<BTreeMap<DropReason, u64>, DatapathError> {
        let mut out = BTreeMap::new();
        for reason in DropReason::ALL {
            let per_cpu = self
                .drops
                .get(&(reason as u32), 0)
                .map_err(map_err(abi::MAP_DROPS, "read"))?;
            out.insert(reason, per_cpu.iter().sum());
        }
        Ok(out)
    }
}

fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(ref e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_finds_changes_and_removals() {
        let current = BTreeMap::from([(1, 'a'), (2, 'b'), (3, 'c')]);
        let desired = BTreeMap::from([(1, 'a'), (2, 'x'), (4, 'd')]);
        let d = diff(&current, &desired);
        assert_eq!(d.upsert, vec![(2, 'x'), (4, 'd')]);
        assert_eq!(d.remove, vec![3]);
        assert!(diff(&desired, &desired).is_empty());
    }
}
