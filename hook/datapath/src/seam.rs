//! The interface between the agent and the datapath.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use labels_policy::datapath_abi::{
    DropReason, EndpointCounters, EndpointInfo, EndpointKey, IpcacheKey, IpcacheValue, PolicyKey,
    PolicyValue,
};

use crate::maps::counters::OwnedCounters;
use crate::{DatapathError, KernelDatapath, LinkPin, MapContents};

/// What the agent's reconciler asks of the datapath. Each call does one
/// thing to one map family or to the links; the reconciler decides the
/// order, and the `testing` feature's fake records it.
pub trait Datapath {
    /// What the endpoint, ipcache and policy maps hold.
    fn read(&mut self) -> Result<MapContents, DatapathError>;
    /// Writes policy entries.
    fn upsert_policy(&mut self, entries: &[(PolicyKey, PolicyValue)]) -> Result<(), DatapathError>;
    /// Writes ipcache entries.
    fn upsert_ipcache(
        &mut self,
        entries: &[(IpcacheKey, IpcacheValue)],
    ) -> Result<(), DatapathError>;
    /// Writes endpoint entries.
    fn upsert_endpoints(
        &mut self,
        entries: &[(EndpointKey, EndpointInfo)],
    ) -> Result<(), DatapathError>;
    /// Deletes policy entries.
    fn remove_policy(&mut self, keys: &[PolicyKey]) -> Result<(), DatapathError>;
    /// Deletes ipcache entries.
    fn remove_ipcache(&mut self, keys: &[IpcacheKey]) -> Result<(), DatapathError>;
    /// Deletes endpoint entries.
    fn remove_endpoints(&mut self, keys: &[EndpointKey]) -> Result<(), DatapathError>;
    /// Zeroes an endpoint slot's counters.
    fn reset_counters(&mut self, endpoint_id: u32) -> Result<(), DatapathError>;
    /// Marks the maps changed; returns the new revision.
    fn bump_policy_revision(&mut self) -> Result<u32, DatapathError>;
    /// Deletes the conntrack entries of these endpoint slots; returns how many.
    fn forget_conntrack(&mut self, endpoint_ids: &BTreeSet<u32>) -> Result<usize, DatapathError>;
    /// Every pinned link.
    fn links(&self) -> Result<Vec<LinkPin>, DatapathError>;
    /// Attaches both programs to a cgroup, links pinned under `owner`.
    fn attach(
        &mut self,
        owner: &str,
        cgroup_dir: &Path,
        cgroup_id: u64,
    ) -> Result<(), DatapathError>;
    /// Removes a link.
    fn detach(&mut self, pin: &LinkPin) -> Result<(), DatapathError>;
    /// A reader of the counters that other threads may use.
    fn counter_reader(&mut self) -> Result<Box<dyn CounterReader>, DatapathError>;
}

/// Reads the per-CPU counters, summed; shared with the threads that answer
/// `status` while the reconciler works.
pub trait CounterReader: Send + Sync + std::fmt::Debug {
    /// One endpoint slot's counters.
    fn counters(&self, endpoint_id: u32) -> Result<EndpointCounters, DatapathError>;
    /// Host-wide drops per reason.
    fn drops(&self) -> Result<BTreeMap<DropReason, u64>, DatapathError>;
}

impl Datapath for KernelDatapath {
    fn read(&mut self) -> Result<MapContents, DatapathError> {
        self.maps()?.read()
    }

    fn upsert_policy(&mut self, entries: &[(PolicyKey, PolicyValue)]) -> Result<(), DatapathError> {
        self.maps()?.upsert_policy(entries)
    }

    fn upsert_ipcache(
        &mut self,
        entries: &[(IpcacheKey, IpcacheValue)],
    ) -> Result<(), DatapathError> {
        self.maps()?.upsert_ipcache(entries)
    }

    fn upsert_endpoints(
        &mut self,
        entries: &[(EndpointKey, EndpointInfo)],
    ) -> Result<(), DatapathError> {
        self.maps()?.upsert_endpoints(entries)
    }

    fn remove_policy(&mut self, keys: &[PolicyKey]) -> Result<(), DatapathError> {
        self.maps()?.remove_policy(keys)
    }

    fn remove_ipcache(&mut self, keys: &[IpcacheKey]) -> Result<(), DatapathError> {
        self.maps()?.remove_ipcache(keys)
    }

    fn remove_endpoints(&mut self, keys: &[EndpointKey]) -> Result<(), DatapathError> {
        self.maps()?.remove_endpoints(keys)
    }

    fn reset_counters(&mut self, endpoint_id: u32) -> Result<(), DatapathError> {
        self.maps()?.reset_counters(endpoint_id)
    }

    fn bump_policy_revision(&mut self) -> Result<u32, DatapathError> {
        self.maps()?.bump_policy_revision()
    }

    fn forget_conntrack(&mut self, endpoint_ids: &BTreeSet<u32>) -> Result<usize, DatapathError> {
        self.maps()?.forget_conntrack(endpoint_ids)
    }

    fn links(&self) -> Result<Vec<LinkPin>, DatapathError> {
        self.pinned_links()
    }

    fn attach(
        &mut self,
        owner: &str,
        cgroup_dir: &Path,
        cgroup_id: u64,
    ) -> Result<(), DatapathError> {
        self.attach_cgroup(owner, cgroup_dir, cgroup_id)
    }

    fn detach(&mut self, pin: &LinkPin) -> Result<(), DatapathError> {
        self.detach_pin(pin)
    }

    fn counter_reader(&mut self) -> Result<Box<dyn CounterReader>, DatapathError> {
        use aya::maps::IterableMap as _;
        use labels_policy::datapath_abi as abi;
        let maps = self.maps()?;
        let id = |data: &aya::maps::MapData, name: &'static str| {
            data.info()
                .map(|i| i.id())
                .map_err(crate::error::map_error(name, "read the id of"))
        };
        let counters = id(maps.counters.map(), abi::MAP_COUNTERS)?;
        let drops = id(maps.drops.map(), abi::MAP_DROPS)?;
        Ok(Box::new(OwnedCounters::open(counters, drops)?))
    }
}
