//! Typed access to the datapath's maps, one module per map family:
//! [`endpoints`], [`ipcache`], [`policy`] (each family a hash of exact
//! entries beside an LPM trie where it has one), [`sources`],
//! [`conntrack`], [`counters`], [`revision`] and [`events`] (the flow
//! events, their settings and the host-wide metrics). This module opens them and
//! reads what the compiled families hold, as stored (both generations:
//! `crate::generations`); the order in which a change is written is the
//! reconciler's and `crate::kernel`'s, not this module's.

pub mod conntrack;
pub mod counters;
pub mod endpoints;
pub mod events;
pub mod ipcache;
pub mod policy;
pub mod revision;
pub mod sources;

use std::collections::BTreeMap;

use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray};
use aya::Ebpf;
use labels_policy::datapath_abi::{
    self as abi, CtConfig, CtKey, CtValue, EndpointCounters, EndpointInfo, EndpointKey, IpcacheKey,
    IpcacheValue, PolicyKey, PolicyRevision, PolicyValue, SourceKey, SourceValue,
};

use crate::error::map_error;
use crate::generations::Physical;
use crate::pod::{IpcacheData, PolicyData, P};
use crate::DatapathError;

pub use crate::generations::MapContents;

/// Every map of the object.
pub struct Maps<'a> {
    /// `bpfwall_endpoints_v2`.
    pub endpoints: HashMap<&'a mut MapData, P<EndpointKey>, P<EndpointInfo>>,
    /// `bpfwall_ipcache_v2`: prefixes.
    pub ipcache: LpmTrie<&'a mut MapData, IpcacheData, P<IpcacheValue>>,
    /// `bpfwall_ipcache_exact_v2`: host addresses.
    pub ipcache_exact: HashMap<&'a mut MapData, P<IpcacheKey>, P<IpcacheValue>>,
    /// `bpfwall_policy_v2`: port ranges, any port, any protocol.
    pub policy: LpmTrie<&'a mut MapData, PolicyData, P<PolicyValue>>,
    /// `bpfwall_policy_exact_v2`: one protocol, one port.
    pub policy_exact: HashMap<&'a mut MapData, P<PolicyKey>, P<PolicyValue>>,
    /// `bpfwall_sources_v2`.
    pub sources: HashMap<&'a mut MapData, P<SourceKey>, P<SourceValue>>,
    /// `bpfwall_ct_v2`.
    pub ct: HashMap<&'a mut MapData, P<CtKey>, P<CtValue>>,
    /// `bpfwall_ct_used_v2`.
    pub ct_used: Array<&'a mut MapData, u32>,
    /// `bpfwall_ct_config_v2`.
    pub ct_config: Array<&'a mut MapData, P<CtConfig>>,
    /// `bpfwall_policy_rev_v2`.
    pub policy_rev: Array<&'a mut MapData, P<PolicyRevision>>,
    /// `bpfwall_counters_v2`.
    pub counters: PerCpuArray<&'a mut MapData, P<EndpointCounters>>,
    /// `bpfwall_drops_v2`.
    pub drops: PerCpuArray<&'a mut MapData, u64>,
}

impl std::fmt::Debug for Maps<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maps").finish_non_exhaustive()
    }
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
        macro_rules! open {
            ($ty:ident, $name:expr) => {
                $ty::try_from(take($name)?).map_err(map_error($name, "open"))?
            };
        }
        Ok(Maps {
            endpoints: open!(HashMap, abi::MAP_ENDPOINTS),
            ipcache: open!(LpmTrie, abi::MAP_IPCACHE),
            ipcache_exact: open!(HashMap, abi::MAP_IPCACHE_EXACT),
            policy: open!(LpmTrie, abi::MAP_POLICY),
            policy_exact: open!(HashMap, abi::MAP_POLICY_EXACT),
            sources: open!(HashMap, abi::MAP_SOURCES),
            ct: open!(HashMap, abi::MAP_CT),
            ct_used: open!(Array, abi::MAP_CT_USED),
            ct_config: open!(Array, abi::MAP_CT_CONFIG),
            policy_rev: open!(Array, abi::MAP_POLICY_REV),
            counters: open!(PerCpuArray, abi::MAP_COUNTERS),
            drops: open!(PerCpuArray, abi::MAP_DROPS),
        })
    }

    /// What the compiled families hold, both generations.
    pub fn read_physical(&self) -> Result<Physical, DatapathError> {
        Ok(Physical {
            endpoints: self.read_endpoints()?,
            ipcache: self.read_ipcache()?,
            policy: self.read_policy()?,
            sources: self.read_sources()?,
        })
    }

    /// The capacity of every compiled map, by name (as loaded: a daemon
    /// flag may have set it).
    pub fn capacities(&self) -> Result<BTreeMap<&'static str, usize>, DatapathError> {
        use aya::maps::IterableMap as _;
        let max = |data: &MapData, name: &'static str| -> Result<usize, DatapathError> {
            data.info()
                .map(|i| i.max_entries() as usize)
                .map_err(map_error(name, "read the size of"))
        };
        Ok(BTreeMap::from([
            (
                abi::MAP_ENDPOINTS,
                max(self.endpoints.map(), abi::MAP_ENDPOINTS)?,
            ),
            (abi::MAP_IPCACHE, max(self.ipcache.map(), abi::MAP_IPCACHE)?),
            (
                abi::MAP_IPCACHE_EXACT,
                max(self.ipcache_exact.map(), abi::MAP_IPCACHE_EXACT)?,
            ),
            (abi::MAP_POLICY, max(self.policy.map(), abi::MAP_POLICY)?),
            (
                abi::MAP_POLICY_EXACT,
                max(self.policy_exact.map(), abi::MAP_POLICY_EXACT)?,
            ),
            (abi::MAP_SOURCES, max(self.sources.map(), abi::MAP_SOURCES)?),
            (abi::MAP_CT, max(self.ct.map(), abi::MAP_CT)?),
        ]))
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
