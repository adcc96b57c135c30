//! aya map key/value types for the mirrors in `labels_policy::datapath_abi`.
//!
//! The mirrors live in the pure library, which does not know aya, so they
//! are wrapped here. The two LPM tries take aya's `Key<K>` (prefix length
//! first, then the data); their data is built field by field from the flat
//! mirror, at the offsets `bpf-src/bpfwall_maps.h` gives (checked by
//! tests/abi_layout.rs).

use aya::maps::lpm_trie::Key;
use aya::Pod;
use labels_policy::datapath_abi::{
    CtConfig, CtKey, CtValue, EndpointCounters, EndpointInfo, EndpointKey, EventsConfig,
    IpcacheKey, IpcacheValue, L7AddressKey, L7AddressValue, MetricsCounters, NetgateEndpoint,
    NetgateKey, PolicyKey, PolicyRevision, PolicyValue, SourceKey, SourceValue,
};

/// A mirror struct as an aya map key or value.
#[derive(Debug, Clone, Copy)]
#[repr(transparent)]
pub struct P<T>(pub T);

// SAFETY: each mirror is #[repr(C)] with explicit padding fields and only
// integer fields, so every byte is initialised and every byte pattern is a
// valid value; abi_layout.rs checks the layout against the C header.
unsafe impl Pod for P<EndpointKey> {}
// SAFETY: as above.
unsafe impl Pod for P<EndpointInfo> {}
// SAFETY: as above.
unsafe impl Pod for P<IpcacheValue> {}
// SAFETY: as above.
unsafe impl Pod for P<PolicyValue> {}
// SAFETY: as above.
unsafe impl Pod for P<CtKey> {}
// SAFETY: as above.
unsafe impl Pod for P<CtValue> {}
// SAFETY: as above.
unsafe impl Pod for P<EndpointCounters> {}
// SAFETY: as above.
unsafe impl Pod for P<PolicyRevision> {}
// SAFETY: as above.
unsafe impl Pod for P<IpcacheKey> {}
// SAFETY: as above.
unsafe impl Pod for P<PolicyKey> {}
// SAFETY: as above.
unsafe impl Pod for P<SourceKey> {}
// SAFETY: as above.
unsafe impl Pod for P<SourceValue> {}
// SAFETY: as above.
unsafe impl Pod for P<CtConfig> {}
// SAFETY: as above.
unsafe impl Pod for P<NetgateKey> {}
// SAFETY: as above.
unsafe impl Pod for P<NetgateEndpoint> {}
// SAFETY: as above.
unsafe impl Pod for P<L7AddressKey> {}
// SAFETY: as above.
unsafe impl Pod for P<L7AddressValue> {}
// SAFETY: as above.
unsafe impl Pod for P<EventsConfig> {}
// SAFETY: as above.
unsafe impl Pod for P<MetricsCounters> {}

/// `struct ipcache_key` after its prefixlen.
pub type IpcacheData = [u8; 20];
/// `struct policy_key` after its prefixlen.
pub type PolicyData = [u8; 12];

/// The trie key for an ipcache entry.
pub fn ipcache_trie_key(k: &IpcacheKey) -> Key<IpcacheData> {
    let mut d = [0u8; 20];
    d[0] = k.family;
    d[1..4].copy_from_slice(&k.pad);
    d[4..20].copy_from_slice(&k.addr);
    Key::new(k.prefixlen, d)
}

/// The mirror of a trie key read back from the ipcache.
pub fn ipcache_key_from_trie(k: &Key<IpcacheData>) -> IpcacheKey {
    let d = k.data();
    let mut key = IpcacheKey {
        prefixlen: k.prefix_len(),
        family: d[0],
        ..IpcacheKey::default()
    };
    key.pad.copy_from_slice(&d[1..4]);
    key.addr.copy_from_slice(&d[4..20]);
    key
}

/// The trie key for a policy entry.
pub fn policy_trie_key(k: &PolicyKey) -> Key<PolicyData> {
    let mut d = [0u8; 12];
    d[0..4].copy_from_slice(&k.local_identity.to_ne_bytes());
    d[4..8].copy_from_slice(&k.peer_identity.to_ne_bytes());
    d[8] = k.direction;
    d[9] = k.protocol;
    d[10..12].copy_from_slice(&k.dport_be.to_ne_bytes());
    Key::new(k.prefixlen, d)
}

/// The mirror of a trie key read back from the policy map.
pub fn policy_key_from_trie(k: &Key<PolicyData>) -> PolicyKey {
    let d = k.data();
    PolicyKey {
        prefixlen: k.prefix_len(),
        local_identity: u32::from_ne_bytes([d[0], d[1], d[2], d[3]]),
        peer_identity: u32::from_ne_bytes([d[4], d[5], d[6], d[7]]),
        direction: d[8],
        protocol: d[9],
        dport_be: u16::from_ne_bytes([d[10], d[11]]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trie_keys_round_trip() {
        let p = PolicyKey {
            prefixlen: 93,
            local_identity: 0x0102_0304,
            peer_identity: 0x0506_0708,
            direction: 1,
            protocol: 6,
            dport_be: 8080u16.to_be(),
        };
        assert_eq!(policy_key_from_trie(&policy_trie_key(&p)), p);
        let net: ipnet::IpNet = "fd00:1::/48".parse().unwrap();
        let i = labels_policy::datapath_abi::ipcache_key(&net);
        assert_eq!(ipcache_key_from_trie(&ipcache_trie_key(&i)), i);
    }
}
