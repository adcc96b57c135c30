//! `bpfwall_counters_v1` (per endpoint and direction) and
//! `bpfwall_drops_v1` (host-wide, per drop reason): per-CPU, summed here.

use std::collections::BTreeMap;

use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use bpfwall_sys::IoError;
use labels_policy::datapath_abi::{self as abi, DropReason, EndpointCounters};

use super::Maps;
use crate::error::map_error;
use crate::pod::P;
use crate::DatapathError;

fn sum_counters(
    map: &PerCpuArray<impl std::borrow::Borrow<MapData>, P<EndpointCounters>>,
    endpoint_id: u32,
) -> Result<EndpointCounters, DatapathError> {
    let per_cpu = map
        .get(&endpoint_id, 0)
        .map_err(map_error(abi::MAP_COUNTERS, "read"))?;
    let mut total = EndpointCounters::default();
    for c in per_cpu.iter() {
        total.add(&c.0);
    }
    Ok(total)
}

fn sum_drops(
    map: &PerCpuArray<impl std::borrow::Borrow<MapData>, u64>,
) -> Result<BTreeMap<DropReason, u64>, DatapathError> {
    let mut out = BTreeMap::new();
    for reason in DropReason::ALL {
        let per_cpu = map
            .get(&(reason as u32), 0)
            .map_err(map_error(abi::MAP_DROPS, "read"))?;
        out.insert(reason, per_cpu.iter().sum());
    }
    Ok(out)
}

impl Maps<'_> {
    /// The counters of one endpoint, summed over CPUs.
    pub fn counters(&self, endpoint_id: u32) -> Result<EndpointCounters, DatapathError> {
        sum_counters(&self.counters, endpoint_id)
    }

    /// Zeroes one endpoint's counters (when its slot is handed out).
    pub fn reset_counters(&mut self, endpoint_id: u32) -> Result<(), DatapathError> {
        let cpu_list = std::path::Path::new("/sys/devices/system/cpu/possible");
        let cpus = aya::util::nr_cpus().map_err(|(_, source)| IoError {
            op: "count CPUs in",
            path: cpu_list.to_path_buf(),
            source,
        })?;
        let zero = PerCpuValues::try_from(vec![P(EndpointCounters::default()); cpus]).map_err(
            |source| IoError {
                op: "build per-CPU values for",
                path: abi::MAP_COUNTERS.into(),
                source,
            },
        )?;
        self.counters
            .set(endpoint_id, zero, 0)
            .map_err(map_error(abi::MAP_COUNTERS, "reset"))
    }

    /// Host-wide drop counts per reason.
    pub fn drops(&self) -> Result<BTreeMap<DropReason, u64>, DatapathError> {
        sum_drops(&self.drops)
    }
}

/// The counter maps opened a second time, by map id, so they are read
/// from another thread than the one that writes the other maps.
pub struct OwnedCounters {
    counters: PerCpuArray<MapData, P<EndpointCounters>>,
    drops: PerCpuArray<MapData, u64>,
    ct_used: aya::maps::Array<MapData, u32>,
}

impl std::fmt::Debug for OwnedCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedCounters").finish_non_exhaustive()
    }
}

impl OwnedCounters {
    /// Opens the maps with these kernel ids.
    pub(crate) fn open(
        counters_id: u32,
        drops_id: u32,
        used_id: u32,
    ) -> Result<Self, DatapathError> {
        let open = |id: u32, name: &'static str| -> Result<aya::maps::Map, DatapathError> {
            let data = MapData::from_id(id).map_err(map_error(name, "open by id"))?;
            aya::maps::Map::from_map_data(data).map_err(map_error(name, "open by id"))
        };
        Ok(OwnedCounters {
            counters: PerCpuArray::try_from(open(counters_id, abi::MAP_COUNTERS)?)
                .map_err(map_error(abi::MAP_COUNTERS, "open"))?,
            drops: PerCpuArray::try_from(open(drops_id, abi::MAP_DROPS)?)
                .map_err(map_error(abi::MAP_DROPS, "open"))?,
            ct_used: aya::maps::Array::try_from(open(used_id, abi::MAP_CT_USED)?)
                .map_err(map_error(abi::MAP_CT_USED, "open"))?,
        })
    }
}

impl crate::CounterReader for OwnedCounters {
    fn counters(&self, endpoint_id: u32) -> Result<EndpointCounters, DatapathError> {
        sum_counters(&self.counters, endpoint_id)
    }

    fn drops(&self) -> Result<BTreeMap<DropReason, u64>, DatapathError> {
        sum_drops(&self.drops)
    }

    fn conntrack_used(&self, endpoint_id: u32) -> Result<u32, DatapathError> {
        self.ct_used
            .get(&endpoint_id, 0)
            .map_err(map_error(abi::MAP_CT_USED, "read"))
    }
}
