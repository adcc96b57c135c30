//! Typed access to the datapath's maps, one module per map family:
//! [`endpoints`], [`ipcache`], [`policy`] (each family a hash of exact
//! entries beside an LPM trie where it has one), [`conntrack`],
//! [`counters`] and [`revision`]. This module opens them and reads what the
//! three compiled families hold; the order in which a change is written is
//! the reconciler's, not this module's.

pub mod conntrack;
pub mod counters;
pub mod endpoints;
pub mod ipcache;
pub mod policy;
pub mod revision;

use std::collections::BTreeMap;

use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray};
use aya::Ebpf;
use labels_policy::datapath_abi::{
    self as abi, CtKey, CtValue, EndpointCounters, EndpointInfo, EndpointKey, IpcacheKey,
    IpcacheValue, PolicyKey, PolicyRevision, PolicyValue,
};

use crate::error::map_error;
use crate::pod::{IpcacheData, PolicyData, P};
use crate::DatapathError;

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

/// What the three compiled map families hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapContents {
    /// `bpfwall_endpoints_v1`.
    pub endpoints: BTreeMap<EndpointKey, EndpointInfo>,
    /// `bpfwall_ipcache_v1` and `bpfwall_ipcache_exact_v1`.
    pub ipcache: BTreeMap<IpcacheKey, IpcacheValue>,
    /// `bpfwall_policy_v1` and `bpfwall_policy_exact_v1`.
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
    pub(crate) fn new(ebpf: &'a mut Ebpf) -> Result<Self, DatapathError> {
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
                .map_err(map_error(abi::MAP_ENDPOINTS, "open"))?,
            ipcache: LpmTrie::try_from(take(abi::MAP_IPCACHE)?)
                .map_err(map_error(abi::MAP_IPCACHE, "open"))?,
            ipcache_exact: HashMap::try_from(take(abi::MAP_IPCACHE_EXACT)?)
                .map_err(map_error(abi::MAP_IPCACHE_EXACT, "open"))?,
            policy: LpmTrie::try_from(take(abi::MAP_POLICY)?)
                .map_err(map_error(abi::MAP_POLICY, "open"))?,
            policy_exact: HashMap::try_from(take(abi::MAP_POLICY_EXACT)?)
                .map_err(map_error(abi::MAP_POLICY_EXACT, "open"))?,
            ct: HashMap::try_from(take(abi::MAP_CT)?).map_err(map_error(abi::MAP_CT, "open"))?,
            policy_rev: Array::try_from(take(abi::MAP_POLICY_REV)?)
                .map_err(map_error(abi::MAP_POLICY_REV, "open"))?,
            counters: PerCpuArray::try_from(take(abi::MAP_COUNTERS)?)
                .map_err(map_error(abi::MAP_COUNTERS, "open"))?,
            drops: PerCpuArray::try_from(take(abi::MAP_DROPS)?)
                .map_err(map_error(abi::MAP_DROPS, "open"))?,
        })
    }

    /// Reads the three compiled map families.
    pub fn read(&self) -> Result<MapContents, DatapathError> {
        Ok(MapContents {
            endpoints: self.read_endpoints()?,
            ipcache: self.read_ipcache()?,
            policy: self.read_policy()?,
        })
    }
}

/// A removal that finds nothing to remove succeeded.
pub(crate) fn ignore_missing(
    r: Result<(), aya::maps::MapError>,
) -> Result<(), aya::maps::MapError> {
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
