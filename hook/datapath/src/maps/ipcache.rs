//! The ipcache: address prefix → identity (per generation). Host addresses
//! (/32, /128) live in `bpfwall_ipcache_exact_v2`, a hash asked first;
//! shorter prefixes in the LPM trie `bpfwall_ipcache_v2` (the rule of
//! `bpfwall_maps.h`, [`abi::ipcache_is_exact`]).

use std::collections::BTreeMap;

use labels_policy::datapath_abi::{self as abi, IpcacheKey, IpcacheValue};

use super::{ignore_missing, Maps};
use crate::error::map_error;
use crate::pod::{ipcache_key_from_trie, ipcache_trie_key, P};
use crate::DatapathError;

impl Maps<'_> {
    /// Every ipcache entry, from the hash and the trie.
    pub fn read_ipcache(&self) -> Result<BTreeMap<IpcacheKey, IpcacheValue>, DatapathError> {
        let mut out = BTreeMap::new();
        for item in self.ipcache.iter() {
            let (k, v) = item.map_err(map_error(abi::MAP_IPCACHE, "iterate"))?;
            out.insert(ipcache_key_from_trie(&k), v.0);
        }
        for item in self.ipcache_exact.iter() {
            let (k, v) = item.map_err(map_error(abi::MAP_IPCACHE_EXACT, "iterate"))?;
            out.insert(k.0, v.0);
        }
        Ok(out)
    }

    /// Writes one ipcache entry, to the hash or the trie.
    pub fn put_ipcache(&mut self, k: &IpcacheKey, v: &IpcacheValue) -> Result<(), DatapathError> {
        if abi::ipcache_is_exact(k) {
            self.ipcache_exact
                .insert(P(*k), P(*v), 0)
                .map_err(map_error(abi::MAP_IPCACHE_EXACT, "insert"))
        } else {
            self.ipcache
                .insert(&ipcache_trie_key(k), P(*v), 0)
                .map_err(map_error(abi::MAP_IPCACHE, "insert"))
        }
    }

    /// Deletes one ipcache entry (a missing one is fine).
    pub fn delete_ipcache(&mut self, k: &IpcacheKey) -> Result<(), DatapathError> {
        if abi::ipcache_is_exact(k) {
            ignore_missing(self.ipcache_exact.remove(&P(*k)))
                .map_err(map_error(abi::MAP_IPCACHE_EXACT, "remove"))
        } else {
            ignore_missing(self.ipcache.remove(&ipcache_trie_key(k)))
                .map_err(map_error(abi::MAP_IPCACHE, "remove"))
        }
    }
}
