//! `bpfwall_endpoints_v2`: cgroup id → endpoint slot, conntrack limit and
//! state per generation.

use std::collections::BTreeMap;

use labels_policy::datapath_abi::{self as abi, EndpointInfo, EndpointKey};

use super::{ignore_missing, Maps};
use crate::error::map_error;
use crate::pod::P;
use crate::DatapathError;

impl Maps<'_> {
    /// Every endpoint entry.
    pub fn read_endpoints(&self) -> Result<BTreeMap<EndpointKey, EndpointInfo>, DatapathError> {
        let mut out = BTreeMap::new();
        for item in self.endpoints.iter() {
            let (k, v) = item.map_err(map_error(abi::MAP_ENDPOINTS, "iterate"))?;
            out.insert(k.0, v.0);
        }
        Ok(out)
    }

    /// Writes one endpoint entry.
    pub fn put_endpoint(&mut self, k: &EndpointKey, v: &EndpointInfo) -> Result<(), DatapathError> {
        self.endpoints
            .insert(P(*k), P(*v), 0)
            .map_err(map_error(abi::MAP_ENDPOINTS, "insert"))
    }

    /// Deletes one endpoint entry (a missing one is fine).
    pub fn delete_endpoint(&mut self, k: &EndpointKey) -> Result<(), DatapathError> {
        ignore_missing(self.endpoints.remove(&P(*k)))
            .map_err(map_error(abi::MAP_ENDPOINTS, "remove"))
    }
}
