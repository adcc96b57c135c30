//! `bpfwall_endpoints_v1`: cgroup id → endpoint id, identity and flags.

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

    /// Writes endpoint entries.
    pub fn upsert_endpoints(
        &mut self,
        entries: &[(EndpointKey, EndpointInfo)],
    ) -> Result<(), DatapathError> {
        for (k, v) in entries {
            self.endpoints
                .insert(P(*k), P(*v), 0)
                .map_err(map_error(abi::MAP_ENDPOINTS, "insert"))?;
        }
        Ok(())
    }

    /// Deletes endpoint entries (missing ones are fine).
    pub fn remove_endpoints(&mut self, keys: &[EndpointKey]) -> Result<(), DatapathError> {
        for k in keys {
            ignore_missing(self.endpoints.remove(&P(*k)))
                .map_err(map_error(abi::MAP_ENDPOINTS, "remove"))?;
        }
        Ok(())
    }
}
