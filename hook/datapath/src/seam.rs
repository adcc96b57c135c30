//! The interface between the agent and the datapath.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use labels_policy::datapath_abi::{DropReason, EndpointCounters};

use crate::maps::conntrack::{Collected, CtShares};
use crate::{DatapathError, KernelDatapath, LinkPin, MapContents};

/// Why a change could not be staged. Either way the active generation is
/// untouched: every packet is still decided as before.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// A map would not hold both generations: nothing was written.
    #[error("map {map} is full: the change needs {needed} entries and it holds {capacity}")]
    Full {
        /// The map.
        map: &'static str,
        /// Entries the change needs there (both generations).
        needed: usize,
        /// The map's size.
        capacity: usize,
    },
    /// A write failed; what was added for the staged generation was taken
    /// back.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

/// What the agent's reconciler asks of the datapath. A change goes through
/// generations (`crate::generations`): [`Datapath::stage`] writes the next
/// content beside the active one, [`Datapath::flip`] makes it the one every
/// new packet is decided by, [`Datapath::prune`] waits for the packets
/// decided by the old one and deletes what only the old one had. The
/// reconciler decides the order of these and of the links; the `testing`
/// feature's fake records it.
pub trait Datapath {
    /// The content every packet is decided by now.
    fn active(&self) -> &MapContents;
    /// Writes `next` into the staged generation.
    fn stage(&mut self, next: &MapContents) -> Result<(), StageError>;
    /// Makes the staged generation the one every packet that starts from
    /// now on is decided by. Returns the new policy revision. Packets
    /// already running finish with the old generation: the next `stage` or
    /// `prune` waits for them before it touches it.
    fn flip(&mut self) -> Result<u32, DatapathError>;
    /// Deletes the keys the active generation does not have, once no packet
    /// decided by the old one is running.
    fn prune(&mut self) -> Result<(), DatapathError>;
    /// Entries and capacity of every compiled map, by name.
    fn fill(&self) -> BTreeMap<&'static str, (usize, usize)>;
    /// Sets the conntrack shares (per-endpoint limit, shared limit,
    /// guaranteed share).
    fn set_conntrack_shares(&mut self, shares: &CtShares) -> Result<(), DatapathError>;
    /// Conntrack entries the map holds at most.
    fn conntrack_capacity(&self) -> u32;
    /// Zeroes an endpoint slot's counters.
    fn reset_counters(&mut self, endpoint_id: u32) -> Result<(), DatapathError>;
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
    /// A collector of expired conntrack entries for a thread of its own.
    fn conntrack_collector(&mut self) -> Result<Box<dyn ConntrackCollector>, DatapathError>;
}

/// Reads the per-CPU counters, summed; shared with the threads that answer
/// `status` while the reconciler works.
pub trait CounterReader: Send + Sync + std::fmt::Debug {
    /// One endpoint slot's counters.
    fn counters(&self, endpoint_id: u32) -> Result<EndpointCounters, DatapathError>;
    /// Host-wide drops per reason.
    fn drops(&self) -> Result<BTreeMap<DropReason, u64>, DatapathError>;
    /// Conntrack entries an endpoint slot holds (0: the whole map).
    fn conntrack_used(&self, endpoint_id: u32) -> Result<u32, DatapathError>;
}

/// Removes expired conntrack entries and recounts what each endpoint holds.
pub trait ConntrackCollector: Send + std::fmt::Debug {
    /// One pass at `now` (CLOCK_MONOTONIC_COARSE, ns).
    fn collect(&mut self, now: u64) -> Result<Collected, DatapathError>;
}

impl ConntrackCollector for crate::maps::conntrack::Collector {
    fn collect(&mut self, now: u64) -> Result<Collected, DatapathError> {
        crate::maps::conntrack::Collector::collect(self, now)
    }
}

impl Datapath for KernelDatapath {
    fn active(&self) -> &MapContents {
        self.active_contents()
    }

    fn stage(&mut self, next: &MapContents) -> Result<(), StageError> {
        self.stage_contents(next)
    }

    fn flip(&mut self) -> Result<u32, DatapathError> {
        self.flip_generation()
    }

    fn prune(&mut self) -> Result<(), DatapathError> {
        self.prune_keys()
    }

    fn fill(&self) -> BTreeMap<&'static str, (usize, usize)> {
        self.map_fill()
    }

    fn set_conntrack_shares(&mut self, shares: &CtShares) -> Result<(), DatapathError> {
        self.set_shares(shares)
    }

    fn conntrack_capacity(&self) -> u32 {
        self.capacity(labels_policy::datapath_abi::MAP_CT) as u32
    }

    fn reset_counters(&mut self, endpoint_id: u32) -> Result<(), DatapathError> {
        self.maps()?.reset_counters(endpoint_id)
    }

    fn forget_conntrack(&mut self, endpoint_ids: &BTreeSet<u32>) -> Result<usize, DatapathError> {
        self.forget(endpoint_ids)
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
        Ok(Box::new(self.open_counters()?))
    }

    fn conntrack_collector(&mut self) -> Result<Box<dyn ConntrackCollector>, DatapathError> {
        Ok(Box::new(self.open_collector()?))
    }
}
