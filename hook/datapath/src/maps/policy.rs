//! Policy: (local identity, peer identity, direction, protocol, port) →
//! allow or deny (per generation). Single-port entries live in
//! `bpfwall_policy_exact_v2`, a hash asked first; port ranges, any-port and
//! any-protocol entries in the LPM trie `bpfwall_policy_v2` (the rule of
//! `bpfwall_maps.h`, [`abi::policy_is_exact`]).

use std::collections::BTreeMap;

use labels_policy::datapath_abi::{self as abi, PolicyKey, PolicyValue};

use super::{ignore_missing, Maps};
use crate::error::map_error;
use crate::pod::{policy_key_from_trie, policy_trie_key, P};
use crate::DatapathError;

impl Maps<'_> {
    /// Every policy entry, from the hash and the trie.
    pub fn read_policy(&self) -> Result<BTreeMap<PolicyKey, PolicyValue>, DatapathError> {
        let mut out = BTreeMap::new();
        for item in self.policy.iter() {
            let (k, v) = item.map_err(map_error(abi::MAP_POLICY, "iterate"))?;
            out.insert(policy_key_from_trie(&k), v.0);
        }
        for item in self.policy_exact.iter() {
            let (k, v) = item.map_err(map_error(abi::MAP_POLICY_EXACT, "iterate"))?;
            out.insert(k.0, v.0);
        }
        Ok(out)
    }

    /// Writes one policy entry, to the hash or the trie.
    pub fn put_policy(&mut self, k: &PolicyKey, v: &PolicyValue) -> Result<(), DatapathError> {
        if abi::policy_is_exact(k) {
            self.policy_exact
                .insert(P(*k), P(*v), 0)
                .map_err(map_error(abi::MAP_POLICY_EXACT, "insert"))
        } else {
            self.policy
                .insert(&policy_trie_key(k), P(*v), 0)
                .map_err(map_error(abi::MAP_POLICY, "insert"))
        }
    }

    /// Deletes one policy entry (a missing one is fine).
    pub fn delete_policy(&mut self, k: &PolicyKey) -> Result<(), DatapathError> {
        if abi::policy_is_exact(k) {
            ignore_missing(self.policy_exact.remove(&P(*k)))
                .map_err(map_error(abi::MAP_POLICY_EXACT, "remove"))
        } else {
            ignore_missing(self.policy.remove(&policy_trie_key(k)))
                .map_err(map_error(abi::MAP_POLICY, "remove"))
        }
    }
}
