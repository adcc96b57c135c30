//! `bpfwall_policy_rev_v1`: the policy revision conntrack checks its
//! cached decisions against.

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

    /// Tells the datapath that the maps changed: every established flow is
    /// decided again on its next packet. Call after all writes and removals
    /// of a change have landed. Returns the new revision.
    pub fn bump_policy_revision(&mut self) -> Result<u32, DatapathError> {
        // Never zero: conntrack entries written by programs older than the
        // revision carry zero there, and must be decided again.
        let next = self.policy_revision()?.wrapping_add(1).max(1);
        self.policy_rev
            .set(0, P(PolicyRevision { revision: next }), 0)
            .map_err(map_error(abi::MAP_POLICY_REV, "write"))?;
        Ok(next)
    }
}
