//! `bpfwall_ct_v1`: connection tracking, keyed from the endpoint's side.

use std::collections::BTreeSet;

use labels_policy::datapath_abi::{self as abi, CtKey, CtValue};

use super::{ignore_missing, Maps};
use crate::error::map_error;
use crate::pod::P;
use crate::DatapathError;

impl Maps<'_> {
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
            let key = key.map_err(map_error(abi::MAP_CT, "iterate"))?;
            if endpoint_ids.contains(&key.0.endpoint_id) {
                stale.push(key);
            }
        }
        for key in &stale {
            ignore_missing(self.ct.remove(key)).map_err(map_error(abi::MAP_CT, "remove"))?;
        }
        Ok(stale.len())
    }

    /// Adds a conntrack entry (tests and benchmarks set up flows this way).
    pub fn insert_conntrack(&mut self, key: CtKey, value: CtValue) -> Result<(), DatapathError> {
        self.ct
            .insert(P(key), P(value), 0)
            .map_err(map_error(abi::MAP_CT, "insert"))
    }
}
