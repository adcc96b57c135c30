//! `bpfwall_sources_v2`: (endpoint, address) → may send from it, per
//! generation (egress drops forged source addresses).

use std::collections::BTreeMap;

use labels_policy::datapath_abi::{self as abi, SourceKey, SourceValue};

use super::{ignore_missing, Maps};
use crate::error::map_error;
use crate::pod::P;
use crate::DatapathError;

impl Maps<'_> {
    /// Every source entry.
    pub fn read_sources(&self) -> Result<BTreeMap<SourceKey, SourceValue>, DatapathError> {
        let mut out = BTreeMap::new();
        for item in self.sources.iter() {
            let (k, v) = item.map_err(map_error(abi::MAP_SOURCES, "iterate"))?;
            out.insert(k.0, v.0);
        }
        Ok(out)
    }

    /// Writes one source entry.
    pub fn put_source(&mut self, k: &SourceKey, v: &SourceValue) -> Result<(), DatapathError> {
        self.sources
            .insert(P(*k), P(*v), 0)
            .map_err(map_error(abi::MAP_SOURCES, "insert"))
    }

    /// Deletes one source entry (a missing one is fine).
    pub fn delete_source(&mut self, k: &SourceKey) -> Result<(), DatapathError> {
        ignore_missing(self.sources.remove(&P(*k))).map_err(map_error(abi::MAP_SOURCES, "remove"))
    }
}
