//! The datapath's decision, written again in Rust: a port of the C program
//! over compiled map contents, product code that `query` answers with.
//!
//! [`decide`] walks the table of `bpf-src/policy.h` (and docs/design.md) over
//! compiled map contents, as the C program walks it over the maps:
//! [`ipcache_identity`] is its address lookup, [`policy_lookup`] its trie.
//! The shared decision table (`testing::cases`, behind the `testing`
//! feature) holds this port and the real program (under
//! `BPF_PROG_TEST_RUN`) to the same rows; the property tests in
//! `labels-policy/tests/` hold it to an independent reference of the rule
//! semantics.
//!
//! Imports: [`crate::compile`](mod@crate::compile) (the compiled maps, the trie's key cover,
//! the direction code), [`crate::datapath_abi`] and [`crate::model`].

use std::net::IpAddr;

use crate::compile::{datapath_direction, key_covers, Compiled, Endpoint};
use crate::datapath_abi::{self as abi, DropReason, L7DropReason, PolicyKey};
use crate::model::Direction;

/// What happens to a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// It passes.
    Pass,
    /// It is dropped, for this reason.
    Drop(DropReason),
    /// It is dropped for a reason of the HTTP proxy's (step 10b: a new
    /// inbound flow to a steered port that went around the proxy).
    DropL7(L7DropReason),
}

/// What conntrack holds for the packet's flow at this endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtState {
    /// Nothing (or an expired entry).
    None,
    /// A live flow opened in the other direction: this packet is a reply.
    OpenedOtherWay,
    /// A live flow opened in this direction.
    OpenedThisWay,
}

/// One packet at one endpoint, as the program sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// Ingress or egress.
    pub direction: Direction,
    /// The endpoint's own side's address (on egress, the source).
    pub local: IpAddr,
    /// The other side's address.
    pub remote: IpAddr,
    /// IP protocol number.
    pub protocol: u8,
    /// Destination port (ICMP: type).
    pub dport: u16,
    /// A TCP SYN without ACK.
    pub tcp_syn: bool,
    /// Sent or received on the loopback device.
    pub loopback: bool,
}

/// The identity the ipcache gives an address (longest prefix; world on miss).
pub fn ipcache_identity(compiled: &Compiled, addr: IpAddr) -> u32 {
    compiled
        .ipcache
        .iter()
        .filter_map(|(k, v)| abi::ipcache_prefix(k).map(|p| (p, *v)))
        .filter(|(p, _)| p.contains(&addr))
        .max_by_key(|(p, _)| p.prefix_len())
        .map_or(abi::IDENTITY_WORLD, |(_, id)| id)
}

/// Longest-prefix lookup in the compiled policy map, as the trie does it.
pub fn policy_lookup(
    compiled: &Compiled,
    local: u32,
    peer: u32,
    direction: u8,
    protocol: u8,
    dport: u16,
) -> Option<u8> {
    let packet_key = PolicyKey {
        prefixlen: abi::POLICY_PREFIX_FULL,
        local_identity: local,
        peer_identity: peer,
        direction,
        protocol,
        dport_be: dport.to_be(),
    };
    let lo = PolicyKey {
        prefixlen: 0,
        local_identity: local,
        peer_identity: peer,
        direction,
        protocol: 0,
        dport_be: 0,
    };
    let hi = PolicyKey {
        prefixlen: u32::MAX,
        protocol: u8::MAX,
        dport_be: u16::MAX,
        ..lo
    };
    compiled
        .policy
        .range(PolicyKey { prefixlen: 0, ..lo }..=hi)
        .filter(|(k, _)| {
            k.local_identity == local
                && k.peer_identity == peer
                && k.direction == direction
                && key_covers(k, &packet_key)
        })
        .max_by_key(|(k, _)| k.prefixlen)
        .map(|(_, v)| *v)
}

/// May the endpoint send from this address (step 4b)?
pub fn source_is_own(compiled: &Compiled, endpoint: &Endpoint, local: IpAddr) -> bool {
    compiled
        .sources
        .contains(&abi::source_key(endpoint.endpoint_id, local))
}

/// Steps 2 to 10b of the decision table for an endpoint found in step 4
/// (step 1, non-IP, and step 3, unreadable headers, happen before a packet
/// has this shape). A conntrack state is one at the current revision (a
/// flow decided at an older one is decided again, like a new one).
pub fn decide(compiled: &Compiled, endpoint: &Endpoint, packet: &Packet, ct: CtState) -> Decision {
    if packet.loopback && endpoint.flags & abi::EP_HOST_NETWORK == 0 {
        return Decision::Pass;
    }
    let unspecified_icmpv6 = packet.protocol == abi::IPPROTO_ICMPV6
        && matches!(packet.local, IpAddr::V6(a) if a.is_unspecified());
    if packet.direction == Direction::Egress
        && !source_is_own(compiled, endpoint, packet.local)
        && !unspecified_icmpv6
    {
        return Decision::Drop(DropReason::Spoofed);
    }
    if ct == CtState::OpenedOtherWay && !packet.tcp_syn {
        return Decision::Pass;
    }
    let (enforce, error) = match packet.direction {
        Direction::Ingress => (abi::EP_ENFORCE_INGRESS, abi::EP_ERROR_INGRESS),
        Direction::Egress => (abi::EP_ENFORCE_EGRESS, abi::EP_ERROR_EGRESS),
    };
    if endpoint.flags & (enforce | error) == 0 {
        return l7_bypass(compiled, endpoint, packet);
    }
    if endpoint.flags & error != 0 {
        return Decision::Drop(DropReason::PolicyError);
    }
    let peer = ipcache_identity(compiled, packet.remote);
    let dir = datapath_direction(packet.direction);
    let specific = policy_lookup(
        compiled,
        endpoint.identity,
        peer,
        dir,
        packet.protocol,
        packet.dport,
    );
    let wildcard = policy_lookup(
        compiled,
        endpoint.identity,
        abi::IDENTITY_ANY,
        dir,
        packet.protocol,
        packet.dport,
    );
    if specific == Some(abi::VERDICT_DENY) || wildcard == Some(abi::VERDICT_DENY) {
        return Decision::Drop(DropReason::PolicyDeny);
    }
    if specific.is_none() && wildcard.is_none() {
        return Decision::Drop(DropReason::PolicyDefault);
    }
    l7_bypass(compiled, endpoint, packet)
}

/// Step 10b: is (identity, TCP port) steered to the proxy in the compiled
/// policy (the entry under `IDENTITY_PROXY`)?
pub fn l7_steered(compiled: &Compiled, identity: u32, port: u16) -> bool {
    compiled.policy.get(&PolicyKey {
        prefixlen: abi::POLICY_PREFIX_FULL,
        local_identity: identity,
        peer_identity: abi::IDENTITY_PROXY,
        direction: abi::DIR_INGRESS,
        protocol: abi::IPPROTO_TCP,
        dport_be: port.to_be(),
    }) == Some(&abi::VERDICT_PROXY)
}

/// Step 10b for a packet policy lets through: a new inbound TCP flow to a
/// steered port meets the container's own program only if it went around
/// the proxy.
fn l7_bypass(compiled: &Compiled, endpoint: &Endpoint, packet: &Packet) -> Decision {
    if packet.direction == Direction::Ingress
        && packet.protocol == abi::IPPROTO_TCP
        && l7_steered(compiled, endpoint.identity, packet.dport)
    {
        return Decision::DropL7(L7DropReason::Bypass);
    }
    Decision::Pass
}
