//! `bpfwall_policy_rev_v2`: the policy revision, whose lowest bit is the
//! active generation and which conntrack checks its decisions against.

use labels_policy::datapath_abi::{self as abi, PolicyRevision};

use super::Maps;
use crate::error::map_error;
use crate::pod::P;
use crate::DatapathError;

impl Maps<'_> {
    /// The current policy revision.
    pub fn policy_revision(&self) -> Result<u32, DatapathError> {
        self.policy_rev
            .get(&0, 0)
            .map(|r| r.0.revision)
            .map_err(map_error(abi::MAP_POLICY_REV, "read"))
    }

    /// Sets the revision (one aligned u32: the programs see the old one or
    /// the new one).
    pub fn set_policy_revision(&mut self, revision: u32) -> Result<(), DatapathError> {
        self.policy_rev
            .set(0, P(PolicyRevision { revision }), 0)
            .map_err(map_error(abi::MAP_POLICY_REV, "write"))
    }
}
