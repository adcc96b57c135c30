//! `bpfwall_netgate_v1` (the network plugin's gate: host-end ifindex to
//! endpoint) and `bpfwall_netgate_drops_v1` (its drops by reason). The gate
//! programs live in an object of their own (`crate::netgate`), which reuses
//! these maps from the pin root; this module is their typed access.

use std::collections::BTreeMap;

use aya::maps::{HashMap, MapData, PerCpuArray};
use aya::Ebpf;
use labels_policy::datapath_abi::{self as abi, NetgateDrop, NetgateEndpoint, NetgateKey};

use super::ignore_missing;
use crate::error::map_error;
use crate::pod::P;
use crate::DatapathError;

/// The gate's maps, opened from an object that has them.
pub struct NetgateMaps<'a> {
    /// `bpfwall_netgate_v1`.
    pub endpoints: HashMap<&'a mut MapData, P<NetgateKey>, P<NetgateEndpoint>>,
    /// `bpfwall_netgate_drops_v1`.
    pub drops: PerCpuArray<&'a mut MapData, u64>,
}

impl std::fmt::Debug for NetgateMaps<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetgateMaps").finish_non_exhaustive()
    }
}

impl<'a> NetgateMaps<'a> {
    /// Opens the two maps of a loaded object.
    pub fn new(ebpf: &'a mut Ebpf) -> Result<Self, DatapathError> {
        let mut endpoints = None;
        let mut drops = None;
        for (name, map) in ebpf.maps_mut() {
            if name == abi::MAP_NETGATE {
                endpoints = Some(map);
            } else if name == abi::MAP_NETGATE_DROPS {
                drops = Some(map);
            }
        }
        let endpoints = endpoints.ok_or(DatapathError::MissingMap {
            name: abi::MAP_NETGATE,
        })?;
        let drops = drops.ok_or(DatapathError::MissingMap {
            name: abi::MAP_NETGATE_DROPS,
        })?;
        Ok(NetgateMaps {
            endpoints: HashMap::try_from(endpoints).map_err(map_error(abi::MAP_NETGATE, "open"))?,
            drops: PerCpuArray::try_from(drops)
                .map_err(map_error(abi::MAP_NETGATE_DROPS, "open"))?,
        })
    }

    /// Writes one interface's entry.
    pub fn put(&mut self, ifindex: u32, endpoint: &NetgateEndpoint) -> Result<(), DatapathError> {
        self.endpoints
            .insert(P(NetgateKey { ifindex }), P(*endpoint), 0)
            .map_err(map_error(abi::MAP_NETGATE, "write"))
    }

    /// Removes one interface's entry (nothing to remove is fine).
    pub fn delete(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        ignore_missing(self.endpoints.remove(&P(NetgateKey { ifindex })))
            .map_err(map_error(abi::MAP_NETGATE, "delete from"))
    }

    /// Every entry, by ifindex.
    pub fn entries(&self) -> Result<BTreeMap<u32, NetgateEndpoint>, DatapathError> {
        let mut out = BTreeMap::new();
        for item in self.endpoints.iter() {
            let (k, v) = item.map_err(map_error(abi::MAP_NETGATE, "read"))?;
            out.insert(k.0.ifindex, v.0);
        }
        Ok(out)
    }

    /// Drops by reason, summed over CPUs.
    pub fn drops(&self) -> Result<BTreeMap<NetgateDrop, u64>, DatapathError> {
        let mut out = BTreeMap::new();
        for reason in NetgateDrop::ALL {
            let per_cpu = self
                .drops
                .get(&(reason as u32), 0)
                .map_err(map_error(abi::MAP_NETGATE_DROPS, "read"))?;
            out.insert(reason, per_cpu.iter().sum());
        }
        Ok(out)
    }
}
