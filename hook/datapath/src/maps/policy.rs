//! Policy: (local identity, peer identity, direction, protocol, port) →
//! allow or deny. Single-port entries live in `bpfwall_policy_exact_v1`, a
//! hash asked first; port ranges, any-port and any-protocol entries in the
//! LPM trie `bpfwall_policy_v1` (the rule of `bpfwall_maps.h`,
//! [`abi::policy_is_exact`]).

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

    /// Writes policy entries, each to the hash or the trie.
    pub fn upsert_policy(
        &mut self,
        entries: &[(PolicyKey, PolicyValue)],
    ) -> Result<(), DatapathError> {
        for (k, v) in entries {
            if abi::policy_is_exact(k) {
                self.policy_exact
                    .insert(P(*k), P(*v), 0)
                    .map_err(map_error(abi::MAP_POLICY_EXACT, "insert"))?;
            } else {
                self.policy
                    .insert(&policy_trie_key(k), P(*v), 0)
                    .map_err(map_error(abi::MAP_POLICY, "insert"))?;
            }
        }
        Ok(())
    }

    /// Deletes policy entries (missing ones are fine).
    pub fn remove_policy(&mut self, keys: &[PolicyKey]) -> Result<(), DatapathError> {
        for k in keys {
            if abi::policy_is_exact(k) {
                ignore_missing(self.policy_exact.remove(&P(*k)))
                    .map_err(map_error(abi::MAP_POLICY_EXACT, "remove"))?;
            } else {
                ignore_missing(self.policy.remove(&policy_trie_key(k)))
                    .map_err(map_error(abi::MAP_POLICY, "remove"))?;
            }
        }
        Ok(())
    }

    /// Moves single-port entries an older daemon wrote into the trie over to
    /// the hash (hash first, then trie removal). Returns how many.
    pub(crate) fn migrate_exact_policy(&mut self) -> Result<usize, DatapathError> {
        let mut exact = Vec::new();
        for item in self.policy.iter() {
            let (k, v) = item.map_err(map_error(abi::MAP_POLICY, "iterate"))?;
            let key = policy_key_from_trie(&k);
            if abi::policy_is_exact(&key) {
                exact.push((key, v.0));
            }
        }
        for (k, v) in &exact {
            self.policy_exact
                .insert(P(*k), P(*v), 0)
                .map_err(map_error(abi::MAP_POLICY_EXACT, "insert"))?;
            ignore_missing(self.policy.remove(&policy_trie_key(k)))
                .map_err(map_error(abi::MAP_POLICY, "remove"))?;
        }
        Ok(exact.len())
    }

    /// Moves exact entries (host addresses, single ports) that an older
    /// daemon wrote into the tries over to the hashes. Returns how many.
    pub fn migrate_exact_entries(&mut self) -> Result<usize, DatapathError> {
        Ok(self.migrate_exact_ipcache()? + self.migrate_exact_policy()?)
    }
}
