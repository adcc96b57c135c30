//! Policy map keys: how a direction, a protocol and a port range become the
//! bits of a `policy_key`, which key covers which (the LPM trie's rule), and
//! deny precedence resolved over the keys.
//!
//! Imports: [`crate::datapath_abi`] and [`crate::model`].

use std::collections::BTreeMap;

use crate::datapath_abi::{self as abi, PolicyKey};
use crate::model::{Direction, PortSpec, Protocol};

/// The value the datapath uses for a direction (`BPFWALL_DIR_*`).
pub fn datapath_direction(direction: Direction) -> u8 {
    match direction {
        Direction::Ingress => abi::DIR_INGRESS,
        Direction::Egress => abi::DIR_EGRESS,
    }
}

/// Splits an inclusive port range into aligned prefixes: (first port, number
/// of leading port bits matched).
pub fn port_prefixes(first: u16, last: u16) -> Vec<(u16, u32)> {
    let mut out = Vec::new();
    let mut start = u32::from(first);
    let end = u32::from(last);
    while start <= end {
        let mut size: u32 = if start == 0 {
            1 << 16
        } else {
            1 << start.trailing_zeros().min(16)
        };
        while start + size - 1 > end {
            size >>= 1;
        }
        // size is a power of two between 1 and 65536, start is below 65536.
        out.push((start as u16, 16 - size.trailing_zeros()));
        start += size;
    }
    out
}

/// The (protocol, port, prefixlen) triples a port spec compiles to.
pub fn port_spec_keys(spec: &PortSpec) -> Vec<(u8, u16, u32)> {
    let protocols: &[u8] = match spec.protocol {
        Protocol::Tcp => &[abi::IPPROTO_TCP],
        Protocol::Udp => &[abi::IPPROTO_UDP],
        Protocol::Icmp => &[abi::IPPROTO_ICMP, abi::IPPROTO_ICMPV6],
        Protocol::Icmp4 => &[abi::IPPROTO_ICMP],
        Protocol::Icmp6 => &[abi::IPPROTO_ICMPV6],
        Protocol::Any if spec.is_all_ports() => return vec![(0, 0, abi::POLICY_PREFIX_ANY_PROTO)],
        Protocol::Any => &[abi::IPPROTO_TCP, abi::IPPROTO_UDP, abi::IPPROTO_SCTP],
    };
    let mut out = Vec::new();
    for &p in protocols {
        if !spec.protocol.is_icmp() && spec.is_all_ports() {
            out.push((p, 0, abi::POLICY_PREFIX_ANY_PORT));
            continue;
        }
        for (port, bits) in port_prefixes(spec.first, spec.last) {
            out.push((p, port, abi::POLICY_PREFIX_ANY_PORT + bits));
        }
    }
    out
}

/// The 24 bits after the fixed part of a policy key (protocol, then port)
/// and how many of them the key matches.
fn l4_bits(key: &PolicyKey) -> (u32, u32) {
    let value = (u32::from(key.protocol) << 16) | u32::from(u16::from_be(key.dport_be));
    (value, key.prefixlen - abi::POLICY_PREFIX_ANY_PROTO)
}

/// Does key `outer` cover every packet key `inner` covers? Both must share
/// local identity, peer and direction.
pub fn key_covers(outer: &PolicyKey, inner: &PolicyKey) -> bool {
    let (ov, ob) = l4_bits(outer);
    let (iv, ib) = l4_bits(inner);
    if ob > ib {
        return false;
    }
    let mask = if ob == 0 {
        0
    } else {
        (!0u32 << (24 - ob)) & 0x00ff_ffff
    };
    ov & mask == iv & mask
}

/// Deny wins: drops every allow entry that a deny entry of the same
/// (local, peer, direction) covers, so the longest match the trie returns is
/// a deny whenever any deny covers the packet.
pub(crate) fn resolve_deny_precedence(entries: BTreeMap<PolicyKey, u8>) -> BTreeMap<PolicyKey, u8> {
    let group = |k: &PolicyKey| (k.local_identity, k.peer_identity, k.direction);
    let mut denies: BTreeMap<(u32, u32, u8), Vec<PolicyKey>> = BTreeMap::new();
    for (k, v) in &entries {
        if *v == abi::VERDICT_DENY {
            denies.entry(group(k)).or_default().push(*k);
        }
    }
    entries
        .into_iter()
        .filter(|(k, v)| {
            *v == abi::VERDICT_DENY
                || !denies
                    .get(&group(k))
                    .is_some_and(|ds| ds.iter().any(|d| key_covers(d, k)))
        })
        .collect()
}
