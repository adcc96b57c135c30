//! Rust mirrors of `bpf-src/bpfwall_maps.h`, the one header that defines every
//! map key and value. Each struct names the C struct it mirrors. Sizes are
//! checked here at compile time; sizes and member offsets are checked
//! against the BTF of the compiled object by `hook/datapath/tests/abi_layout.rs`.
//! Every numeric `BPFWALL_*` define is listed in [`DEFINES`] with the value
//! of its mirror, and `labels-policy/tests/abi_defines.rs` holds that table,
//! [`ALL_MAPS`] and [`DropReason`] to the header's text.
//!
//! A leaf: imports nothing of the crate (ipnet only, for the ipcache key of
//! a prefix). The compiler, the decision table and the daemon import it.
//!
//! All structs are `#[repr(C)]` with explicit padding, no `bool` and no
//! bitfields, so any byte pattern the kernel hands back is a valid value.

#![allow(
    missing_docs,
    reason = "constants and fields are documented once, in bpfwall_maps.h"
)]

/// `BPFWALL_ABI_VERSION`: bumped with every layout change, with the map names.
pub const ABI_VERSION: u32 = 4;

/// `BPFWALL_GENERATIONS`: every compiled value is stored once per generation.
pub const GENERATIONS: usize = 2;

pub const MAP_ENDPOINTS: &str = "bpfwall_endpoints_v2";
pub const MAP_IPCACHE: &str = "bpfwall_ipcache_v2";
pub const MAP_POLICY: &str = "bpfwall_policy_v2";
pub const MAP_IPCACHE_EXACT: &str = "bpfwall_ipcache_exact_v2";
pub const MAP_POLICY_EXACT: &str = "bpfwall_policy_exact_v2";
pub const MAP_SOURCES: &str = "bpfwall_sources_v2";
pub const MAP_CT: &str = "bpfwall_ct_v2";
pub const MAP_CT_USED: &str = "bpfwall_ct_used_v2";
pub const MAP_CT_CONFIG: &str = "bpfwall_ct_config_v2";
pub const MAP_POLICY_REV: &str = "bpfwall_policy_rev_v2";
pub const MAP_COUNTERS: &str = "bpfwall_counters_v2";
pub const MAP_DROPS: &str = "bpfwall_drops_v2";
pub const MAP_NETGATE: &str = "bpfwall_netgate_v1";
pub const MAP_NETGATE_DROPS: &str = "bpfwall_netgate_drops_v1";
pub const MAP_L7_ADDRESSES: &str = "bpfwall_l7_addresses_v1";
pub const MAP_L7_SOCKETS: &str = "bpfwall_l7_sockets_v1";
pub const MAP_L7_DROPS: &str = "bpfwall_l7_drops_v1";
pub const MAP_EVENTS: &str = "bpfwall_events_v1";
pub const MAP_EVENT_LIMIT: &str = "bpfwall_event_limit_v1";
pub const MAP_EVENTS_CONFIG: &str = "bpfwall_events_config_v1";
pub const MAP_METRICS: &str = "bpfwall_metrics_v1";
/// Every map the objects define, for pinning.
pub const ALL_MAPS: [&str; 21] = [
    MAP_ENDPOINTS,
    MAP_IPCACHE,
    MAP_IPCACHE_EXACT,
    MAP_POLICY,
    MAP_POLICY_EXACT,
    MAP_SOURCES,
    MAP_CT,
    MAP_CT_USED,
    MAP_CT_CONFIG,
    MAP_POLICY_REV,
    MAP_COUNTERS,
    MAP_DROPS,
    MAP_NETGATE,
    MAP_NETGATE_DROPS,
    MAP_L7_ADDRESSES,
    MAP_L7_SOCKETS,
    MAP_L7_DROPS,
    MAP_EVENTS,
    MAP_EVENT_LIMIT,
    MAP_EVENTS_CONFIG,
    MAP_METRICS,
];

pub const PROG_INGRESS: &str = "bpfwall_ingress";
pub const PROG_EGRESS: &str = "bpfwall_egress";
/// The sk_lookup program of `bpf-src/bpfwall_sk_lookup.c`.
pub const PROG_L7_LOOKUP: &str = "bpfwall_l7_lookup";

pub const IDENTITY_ANY: u32 = 0;
pub const IDENTITY_HOST: u32 = 1;
pub const IDENTITY_WORLD: u32 = 2;
/// `BPFWALL_IDENTITY_PROXY`: the peer of policy entries that say a (local
/// identity, TCP port) goes through bpfwall's HTTP proxy; no address has it.
pub const IDENTITY_PROXY: u32 = 3;
pub const IDENTITY_FIRST_CONTAINER: u32 = 256;
pub const IDENTITY_FIRST_CIDR: u32 = 0x0100_0000;

pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

pub const VERDICT_ALLOW: u8 = 1;
pub const VERDICT_DENY: u8 = 2;
/// `BPFWALL_VERDICT_PROXY`: the value of an `IDENTITY_PROXY` entry.
pub const VERDICT_PROXY: u8 = 3;

pub const EP_ENFORCE_INGRESS: u32 = 0x1;
pub const EP_ENFORCE_EGRESS: u32 = 0x2;
pub const EP_ERROR_INGRESS: u32 = 0x4;
pub const EP_ERROR_EGRESS: u32 = 0x8;
pub const EP_HOST_NETWORK: u32 = 0x10;
pub const EP_AUDIT: u32 = 0x20;

pub const EVENT_ALLOWED: u8 = 1;
pub const EVENT_DENIED: u8 = 2;
pub const EVENT_AUDIT: u8 = 3;
pub const EVENT_KINDS: usize = 4;
pub const EVENTS_RING_BYTES: u32 = 1_048_576;
pub const EVENT_LIMIT_ENTRIES: u32 = 65536;

pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;
pub const IPCACHE_PREFIX_BASE: u32 = 32;

pub const POLICY_PREFIX_ANY_PROTO: u32 = 72;
pub const POLICY_PREFIX_ANY_PORT: u32 = 80;
pub const POLICY_PREFIX_FULL: u32 = 96;

pub const CT_TCP_CLOSING: u8 = 0x1;
pub const CT_SEEN_REPLY: u8 = 0x2;
pub const CT_REVOKED: u8 = 0x4;
pub const CT_LIFETIME_TCP_S: u64 = 21600;
pub const CT_LIFETIME_TCP_OPENING_S: u64 = 60;
pub const CT_LIFETIME_TCP_CLOSING_S: u64 = 10;
pub const CT_LIFETIME_OTHER_S: u64 = 60;

pub const MAX_ENDPOINTS: u32 = 16384;
pub const IPCACHE_ENTRIES: u32 = 65536;
pub const POLICY_ENTRIES: u32 = 524_288;
pub const SOURCE_ENTRIES: u32 = 65536;
pub const CT_ENTRIES: u32 = 524_288;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;

/// Named drop reasons (`BPFWALL_DROP_*`), indices into `bpfwall_drops_v2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum DropReason {
    PolicyDeny = 1,
    PolicyDefault = 2,
    PolicyError = 3,
    UnknownEndpoint = 4,
    Malformed = 5,
    Spoofed = 6,
    ExtHeaders = 7,
    FlowRevoked = 8,
}

/// `BPFWALL_DROP_REASON_MAX`.
pub const DROP_REASON_MAX: u32 = 9;

impl DropReason {
    /// Every reason, in index order.
    pub const ALL: [DropReason; 8] = [
        DropReason::PolicyDeny,
        DropReason::PolicyDefault,
        DropReason::PolicyError,
        DropReason::UnknownEndpoint,
        DropReason::Malformed,
        DropReason::Spoofed,
        DropReason::ExtHeaders,
        DropReason::FlowRevoked,
    ];

    /// The name operators see in `status`.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::PolicyDeny => "policy-deny",
            DropReason::PolicyDefault => "policy-default-deny",
            DropReason::PolicyError => "policy-error",
            DropReason::UnknownEndpoint => "unknown-endpoint",
            DropReason::Malformed => "malformed",
            DropReason::Spoofed => "spoofed-source",
            DropReason::ExtHeaders => "ipv6-extension-headers",
            DropReason::FlowRevoked => "flow-revoked",
        }
    }
}

/// Why a connection to a port steered to the HTTP proxy was dropped
/// (`BPFWALL_L7_DROP_*`), indices into `bpfwall_l7_drops_v1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum L7DropReason {
    NoProxy = 16,
    Assign = 17,
    Bypass = 18,
}

/// `BPFWALL_L7_DROP_REASON_MAX`.
pub const L7_DROP_REASON_MAX: u32 = 19;
pub const L7_SOCKET_SLOTS: u32 = 32768;
pub const L7_ADDRESS_ENTRIES: u32 = 65536;

impl L7DropReason {
    /// Every reason, in index order.
    pub const ALL: [L7DropReason; 3] = [
        L7DropReason::NoProxy,
        L7DropReason::Assign,
        L7DropReason::Bypass,
    ];

    /// The name operators see in `status`.
    pub fn name(self) -> &'static str {
        match self {
            L7DropReason::NoProxy => "l7-proxy-unavailable",
            L7DropReason::Assign => "l7-proxy-refused",
            L7DropReason::Bypass => "l7-proxy-bypass",
        }
    }

    /// The proxy socket slot of an endpoint and family.
    pub fn socket_slot(endpoint_id: u32, v6: bool) -> u32 {
        endpoint_id * 2 + u32::from(v6)
    }
}

/// Every numeric `#define BPFWALL_*` of `bpfwall_maps.h` with the value of
/// the Rust constant that mirrors it (built from the constants, not written
/// again). `labels-policy/tests/abi_defines.rs` reads the header and fails
/// when a define is missing here, an entry is missing there, or a value
/// differs; it also holds [`ALL_MAPS`] to the header's maps and
/// [`DropReason`] to `BPFWALL_DROP_*`.
pub const DEFINES: &[(&str, u64)] = &[
    ("BPFWALL_ABI_VERSION", ABI_VERSION as u64),
    ("BPFWALL_GENERATIONS", GENERATIONS as u64),
    ("BPFWALL_IDENTITY_ANY", IDENTITY_ANY as u64),
    ("BPFWALL_IDENTITY_HOST", IDENTITY_HOST as u64),
    ("BPFWALL_IDENTITY_WORLD", IDENTITY_WORLD as u64),
    (
        "BPFWALL_IDENTITY_FIRST_CONTAINER",
        IDENTITY_FIRST_CONTAINER as u64,
    ),
    ("BPFWALL_IDENTITY_FIRST_CIDR", IDENTITY_FIRST_CIDR as u64),
    ("BPFWALL_DIR_INGRESS", DIR_INGRESS as u64),
    ("BPFWALL_DIR_EGRESS", DIR_EGRESS as u64),
    ("BPFWALL_VERDICT_ALLOW", VERDICT_ALLOW as u64),
    ("BPFWALL_VERDICT_DENY", VERDICT_DENY as u64),
    ("BPFWALL_DROP_POLICY_DENY", DropReason::PolicyDeny as u64),
    (
        "BPFWALL_DROP_POLICY_DEFAULT",
        DropReason::PolicyDefault as u64,
    ),
    ("BPFWALL_DROP_POLICY_ERROR", DropReason::PolicyError as u64),
    (
        "BPFWALL_DROP_UNKNOWN_ENDPOINT",
        DropReason::UnknownEndpoint as u64,
    ),
    ("BPFWALL_DROP_MALFORMED", DropReason::Malformed as u64),
    ("BPFWALL_DROP_SPOOFED", DropReason::Spoofed as u64),
    ("BPFWALL_DROP_EXT_HEADERS", DropReason::ExtHeaders as u64),
    ("BPFWALL_DROP_FLOW_REVOKED", DropReason::FlowRevoked as u64),
    ("BPFWALL_DROP_REASON_MAX", DROP_REASON_MAX as u64),
    ("BPFWALL_EP_ENFORCE_INGRESS", EP_ENFORCE_INGRESS as u64),
    ("BPFWALL_EP_ENFORCE_EGRESS", EP_ENFORCE_EGRESS as u64),
    ("BPFWALL_EP_ERROR_INGRESS", EP_ERROR_INGRESS as u64),
    ("BPFWALL_EP_ERROR_EGRESS", EP_ERROR_EGRESS as u64),
    ("BPFWALL_EP_HOST_NETWORK", EP_HOST_NETWORK as u64),
    ("BPFWALL_FAMILY_IPV4", FAMILY_IPV4 as u64),
    ("BPFWALL_FAMILY_IPV6", FAMILY_IPV6 as u64),
    ("BPFWALL_IPCACHE_PREFIX_BASE", IPCACHE_PREFIX_BASE as u64),
    (
        "BPFWALL_POLICY_PREFIX_ANY_PROTO",
        POLICY_PREFIX_ANY_PROTO as u64,
    ),
    (
        "BPFWALL_POLICY_PREFIX_ANY_PORT",
        POLICY_PREFIX_ANY_PORT as u64,
    ),
    ("BPFWALL_POLICY_PREFIX_FULL", POLICY_PREFIX_FULL as u64),
    ("BPFWALL_CT_TCP_CLOSING", CT_TCP_CLOSING as u64),
    ("BPFWALL_CT_SEEN_REPLY", CT_SEEN_REPLY as u64),
    ("BPFWALL_CT_REVOKED", CT_REVOKED as u64),
    ("BPFWALL_CT_LIFETIME_TCP_S", CT_LIFETIME_TCP_S),
    (
        "BPFWALL_CT_LIFETIME_TCP_OPENING_S",
        CT_LIFETIME_TCP_OPENING_S,
    ),
    (
        "BPFWALL_CT_LIFETIME_TCP_CLOSING_S",
        CT_LIFETIME_TCP_CLOSING_S,
    ),
    ("BPFWALL_CT_LIFETIME_OTHER_S", CT_LIFETIME_OTHER_S),
    ("BPFWALL_EP_AUDIT", EP_AUDIT as u64),
    ("BPFWALL_EVENT_ALLOWED", EVENT_ALLOWED as u64),
    ("BPFWALL_EVENT_DENIED", EVENT_DENIED as u64),
    ("BPFWALL_EVENT_AUDIT", EVENT_AUDIT as u64),
    ("BPFWALL_EVENT_KINDS", EVENT_KINDS as u64),
    ("BPFWALL_EVENTS_RING_BYTES", EVENTS_RING_BYTES as u64),
    ("BPFWALL_EVENT_LIMIT_ENTRIES", EVENT_LIMIT_ENTRIES as u64),
    ("BPFWALL_MAX_ENDPOINTS", MAX_ENDPOINTS as u64),
    ("BPFWALL_IPCACHE_ENTRIES", IPCACHE_ENTRIES as u64),
    ("BPFWALL_POLICY_ENTRIES", POLICY_ENTRIES as u64),
    ("BPFWALL_SOURCE_ENTRIES", SOURCE_ENTRIES as u64),
    ("BPFWALL_CT_ENTRIES", CT_ENTRIES as u64),
    ("BPFWALL_NETGATE_OPEN", NETGATE_OPEN as u64),
    ("BPFWALL_NETGATE_INTERNAL", NETGATE_INTERNAL as u64),
    ("BPFWALL_NETGATE_IPV4", NETGATE_IPV4 as u64),
    ("BPFWALL_NETGATE_IPV6", NETGATE_IPV6 as u64),
    ("BPFWALL_NETGATE_DROP_CLOSED", NetgateDrop::Closed as u64),
    ("BPFWALL_NETGATE_DROP_SPOOFED", NetgateDrop::Spoofed as u64),
    (
        "BPFWALL_NETGATE_DROP_INTERNAL",
        NetgateDrop::Internal as u64,
    ),
    ("BPFWALL_NETGATE_DROP_UNKNOWN", NetgateDrop::Unknown as u64),
    (
        "BPFWALL_NETGATE_DROP_NEIGHBOUR",
        NetgateDrop::Neighbour as u64,
    ),
    (
        "BPFWALL_NETGATE_DROP_PROTOCOL",
        NetgateDrop::Protocol as u64,
    ),
    (
        "BPFWALL_NETGATE_DROP_MALFORMED",
        NetgateDrop::Malformed as u64,
    ),
    (
        "BPFWALL_NETGATE_DROP_REASON_MAX",
        NETGATE_DROP_REASON_MAX as u64,
    ),
    ("BPFWALL_NETGATE_ENTRIES", NETGATE_ENTRIES as u64),
    ("BPFWALL_IDENTITY_PROXY", IDENTITY_PROXY as u64),
    ("BPFWALL_VERDICT_PROXY", VERDICT_PROXY as u64),
    ("BPFWALL_L7_DROP_NO_PROXY", L7DropReason::NoProxy as u64),
    ("BPFWALL_L7_DROP_ASSIGN", L7DropReason::Assign as u64),
    ("BPFWALL_L7_DROP_BYPASS", L7DropReason::Bypass as u64),
    ("BPFWALL_L7_DROP_REASON_MAX", L7_DROP_REASON_MAX as u64),
    ("BPFWALL_L7_SOCKET_SLOTS", L7_SOCKET_SLOTS as u64),
    ("BPFWALL_L7_ADDRESS_ENTRIES", L7_ADDRESS_ENTRIES as u64),
];

/// Mirrors `struct endpoint_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct EndpointKey {
    pub cgroup_id: u64,
}

/// Mirrors `struct endpoint_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct EndpointState {
    pub identity: u32,
    pub flags: u32,
}

/// Mirrors `struct endpoint_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct EndpointInfo {
    pub endpoint_id: u32,
    pub ct_limit: u32,
    pub gen: [EndpointState; GENERATIONS],
}

/// Mirrors `struct ipcache_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct IpcacheKey {
    pub prefixlen: u32,
    pub family: u8,
    pub pad: [u8; 3],
    pub addr: [u8; 16],
}

/// Mirrors `struct ipcache_value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct IpcacheValue {
    pub identity: [u32; GENERATIONS],
}

/// Mirrors `struct policy_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct PolicyKey {
    pub prefixlen: u32,
    pub local_identity: u32,
    pub peer_identity: u32,
    pub direction: u8,
    pub protocol: u8,
    pub dport_be: u16,
}

/// Mirrors `struct policy_value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct PolicyValue {
    pub verdict: [u8; GENERATIONS],
    pub pad: [u8; 2],
}

/// Mirrors `struct source_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct SourceKey {
    pub endpoint_id: u32,
    pub family: u8,
    pub pad: [u8; 3],
    pub addr: [u8; 16],
}

/// Mirrors `struct source_value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct SourceValue {
    pub allowed: [u8; GENERATIONS],
    pub pad: [u8; 2],
}

/// Mirrors `struct ct_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct CtKey {
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port_be: u16,
    pub remote_port_be: u16,
    pub protocol: u8,
    pub family: u8,
    pub pad: u16,
    pub endpoint_id: u32,
}

/// Mirrors `struct ct_value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct CtValue {
    pub last_seen_ns: u64,
    pub origin_direction: u8,
    pub flags: u8,
    pub pad: [u8; 2],
    pub policy_revision: u32,
}

/// Mirrors `struct ct_config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct CtConfig {
    pub shared_limit: u32,
    pub guaranteed: u32,
    pub pad: [u32; 2],
}

/// Mirrors `struct policy_revision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct PolicyRevision {
    pub revision: u32,
}

/// Mirrors `struct endpoint_counters`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct EndpointCounters {
    pub allowed_packets: [u64; 2],
    pub dropped_packets: [u64; 2],
    pub allowed_bytes: [u64; 2],
    pub dropped_bytes: [u64; 2],
    pub untracked_flows: u64,
    pub pad: u64,
}

impl EndpointCounters {
    /// Adds another CPU's counters.
    pub fn add(&mut self, other: &EndpointCounters) {
        for d in 0..2 {
            self.allowed_packets[d] += other.allowed_packets[d];
            self.dropped_packets[d] += other.dropped_packets[d];
            self.allowed_bytes[d] += other.allowed_bytes[d];
            self.dropped_bytes[d] += other.dropped_bytes[d];
        }
        self.untracked_flows += other.untracked_flows;
    }
}

/// Mirrors `struct l7_address_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct L7AddressKey {
    pub family: u8,
    pub pad: [u8; 3],
    pub addr: [u8; 16],
}

/// Mirrors `struct l7_address_value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct L7AddressValue {
    pub cgroup_id: u64,
}

/// The key of a container address in `bpfwall_l7_addresses_v1`.
pub fn l7_address_key(addr: std::net::IpAddr) -> L7AddressKey {
    let (family, addr) = family_and_bytes(addr);
    L7AddressKey {
        family,
        addr,
        ..L7AddressKey::default()
    }
}

/// An address as the header's keys hold it: its family and 16 bytes (an
/// IPv4 address in the first 4, the rest zero).
pub fn family_and_bytes(addr: std::net::IpAddr) -> (u8, [u8; 16]) {
    let mut bytes = [0u8; 16];
    match addr {
        std::net::IpAddr::V4(a) => {
            bytes[..4].copy_from_slice(&a.octets());
            (FAMILY_IPV4, bytes)
        }
        std::net::IpAddr::V6(a) => (FAMILY_IPV6, a.octets()),
    }
}

/// Mirrors `struct flow_event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct FlowEvent {
    pub time_ns: u64,
    pub endpoint_id: u32,
    pub local_identity: u32,
    pub peer_identity: u32,
    pub policy_revision: u32,
    pub suppressed: u32,
    pub kind: u8,
    pub direction: u8,
    pub reason: u8,
    pub protocol: u8,
    pub family: u8,
    pub tcp_flags: u8,
    pub dport_be: u16,
    pub local_port_be: u16,
    pub remote_port_be: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

impl FlowEvent {
    /// Reads an event from the bytes of a ring buffer record (None when
    /// they are too short: a record of another layout).
    pub fn from_bytes(bytes: &[u8]) -> Option<FlowEvent> {
        if bytes.len() < size_of::<FlowEvent>() {
            return None;
        }
        let u16_at = |o: usize| u16::from_ne_bytes([bytes[o], bytes[o + 1]]);
        let u32_at =
            |o: usize| u32::from_ne_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let mut time = [0u8; 8];
        time.copy_from_slice(&bytes[0..8]);
        let mut local_addr = [0u8; 16];
        local_addr.copy_from_slice(&bytes[40..56]);
        let mut remote_addr = [0u8; 16];
        remote_addr.copy_from_slice(&bytes[56..72]);
        Some(FlowEvent {
            time_ns: u64::from_ne_bytes(time),
            endpoint_id: u32_at(8),
            local_identity: u32_at(12),
            peer_identity: u32_at(16),
            policy_revision: u32_at(20),
            suppressed: u32_at(24),
            kind: bytes[28],
            direction: bytes[29],
            reason: bytes[30],
            protocol: bytes[31],
            family: bytes[32],
            tcp_flags: bytes[33],
            dport_be: u16_at(34),
            local_port_be: u16_at(36),
            remote_port_be: u16_at(38),
            local_addr,
            remote_addr,
        })
    }

    /// The local address (None for an unreadable IP header).
    pub fn local(&self) -> Option<std::net::IpAddr> {
        addr_of(self.family, &self.local_addr)
    }

    /// The remote address (None for an unreadable IP header).
    pub fn remote(&self) -> Option<std::net::IpAddr> {
        addr_of(self.family, &self.remote_addr)
    }
}

fn addr_of(family: u8, addr: &[u8; 16]) -> Option<std::net::IpAddr> {
    match family {
        FAMILY_IPV4 => Some(std::net::IpAddr::from([addr[0], addr[1], addr[2], addr[3]])),
        FAMILY_IPV6 => Some(std::net::IpAddr::from(*addr)),
        _ => None,
    }
}

/// Mirrors `struct event_limit_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct EventLimitKey {
    pub endpoint_id: u32,
    pub peer_identity: u32,
    pub dport_be: u16,
    pub direction: u8,
    pub protocol: u8,
    pub kind: u8,
    pub reason: u8,
    pub pad: [u8; 2],
}

/// Mirrors `struct event_limit_value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct EventLimitValue {
    pub last_sent_ns: u64,
    pub suppressed: u32,
    pub pad: u32,
}

/// Mirrors `struct events_config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct EventsConfig {
    pub enabled: u32,
    pub pad: u32,
    pub interval_ns: u64,
}

/// Mirrors `struct metrics_counters`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct MetricsCounters {
    pub forwarded: [u64; 2],
    pub verdicts: [[u64; 2]; EVENT_KINDS],
    pub drops: [[u64; 2]; DROP_REASON_MAX as usize],
    pub events_sent: u64,
    pub events_lost: u64,
}

impl MetricsCounters {
    /// Adds another CPU's counters.
    pub fn add(&mut self, other: &MetricsCounters) {
        for d in 0..2 {
            self.forwarded[d] += other.forwarded[d];
            for k in 0..EVENT_KINDS {
                self.verdicts[k][d] += other.verdicts[k][d];
            }
            for r in 0..DROP_REASON_MAX as usize {
                self.drops[r][d] += other.drops[r][d];
            }
        }
        self.events_sent += other.events_sent;
        self.events_lost += other.events_lost;
    }
}

const _: () = {
    assert!(size_of::<L7AddressKey>() == 20);
    assert!(size_of::<L7AddressValue>() == 8);
    assert!(size_of::<FlowEvent>() == 72);
    assert!(size_of::<EventLimitKey>() == 16);
    assert!(size_of::<EventLimitValue>() == 16);
    assert!(size_of::<EventsConfig>() == 16);
    assert!(size_of::<MetricsCounters>() == 240);
    assert!(size_of::<EndpointKey>() == 8);
    assert!(size_of::<EndpointState>() == 8);
    assert!(size_of::<EndpointInfo>() == 24);
    assert!(size_of::<IpcacheKey>() == 24);
    assert!(size_of::<IpcacheValue>() == 8);
    assert!(size_of::<PolicyKey>() == 16);
    assert!(size_of::<PolicyValue>() == 4);
    assert!(size_of::<SourceKey>() == 24);
    assert!(size_of::<SourceValue>() == 4);
    assert!(size_of::<CtKey>() == 44);
    assert!(size_of::<CtValue>() == 16);
    assert!(size_of::<CtConfig>() == 16);
    assert!(size_of::<PolicyRevision>() == 4);
    assert!(size_of::<EndpointCounters>() == 80);
    assert!(size_of::<NetgateKey>() == 4);
    assert!(size_of::<NetgateEndpoint>() == 52);
};

/// One struct's layout as the tests compare it with the object's BTF:
/// (C struct name, size, [(member, offset in bytes)]).
pub type StructLayout = (&'static str, usize, Vec<(&'static str, usize)>);

macro_rules! layout {
    ($c:literal, $ty:ty, [$($field:ident),* $(,)?]) => {
        ($c, size_of::<$ty>(), vec![$((stringify!($field), std::mem::offset_of!($ty, $field))),*])
    };
}

/// Every mirrored struct with its size and member offsets, for the check
/// against the compiled object.
pub fn layouts() -> Vec<StructLayout> {
    vec![
        layout!("endpoint_key", EndpointKey, [cgroup_id]),
        layout!("endpoint_state", EndpointState, [identity, flags]),
        layout!("endpoint_info", EndpointInfo, [endpoint_id, ct_limit, gen]),
        layout!("ipcache_key", IpcacheKey, [prefixlen, family, pad, addr]),
        layout!("ipcache_value", IpcacheValue, [identity]),
        layout!(
            "policy_key",
            PolicyKey,
            [
                prefixlen,
                local_identity,
                peer_identity,
                direction,
                protocol,
                dport_be
            ]
        ),
        layout!("policy_value", PolicyValue, [verdict, pad]),
        layout!("source_key", SourceKey, [endpoint_id, family, pad, addr]),
        layout!("source_value", SourceValue, [allowed, pad]),
        layout!("ct_config", CtConfig, [shared_limit, guaranteed, pad]),
        layout!(
            "ct_key",
            CtKey,
            [
                local_addr,
                remote_addr,
                local_port_be,
                remote_port_be,
                protocol,
                family,
                pad,
                endpoint_id
            ]
        ),
        layout!(
            "ct_value",
            CtValue,
            [last_seen_ns, origin_direction, flags, pad, policy_revision]
        ),
        layout!("policy_revision", PolicyRevision, [revision]),
        layout!(
            "endpoint_counters",
            EndpointCounters,
            [
                allowed_packets,
                dropped_packets,
                allowed_bytes,
                dropped_bytes,
                untracked_flows,
                pad
            ]
        ),
        layout!("netgate_key", NetgateKey, [ifindex]),
        layout!(
            "netgate_endpoint",
            NetgateEndpoint,
            [
                flags,
                host_mac,
                subnet4_len,
                subnet6_len,
                addr4,
                subnet4,
                addr6,
                subnet6
            ]
        ),
        layout!("l7_address_key", L7AddressKey, [family, pad, addr]),
        layout!("l7_address_value", L7AddressValue, [cgroup_id]),
        layout!(
            "flow_event",
            FlowEvent,
            [
                time_ns,
                endpoint_id,
                local_identity,
                peer_identity,
                policy_revision,
                suppressed,
                kind,
                direction,
                reason,
                protocol,
                family,
                tcp_flags,
                dport_be,
                local_port_be,
                remote_port_be,
                local_addr,
                remote_addr
            ]
        ),
        layout!(
            "event_limit_key",
            EventLimitKey,
            [
                endpoint_id,
                peer_identity,
                dport_be,
                direction,
                protocol,
                kind,
                reason,
                pad
            ]
        ),
        layout!(
            "event_limit_value",
            EventLimitValue,
            [last_sent_ns, suppressed, pad]
        ),
        layout!("events_config", EventsConfig, [enabled, pad, interval_ns]),
        layout!(
            "metrics_counters",
            MetricsCounters,
            [forwarded, verdicts, drops, events_sent, events_lost]
        ),
    ]
}

/// Whether an ipcache entry lives in the exact-match hash (a host address)
/// rather than the trie: the rule of `bpfwall_maps.h`.
pub fn ipcache_is_exact(key: &IpcacheKey) -> bool {
    let bits = match key.family {
        FAMILY_IPV4 => 32,
        _ => 128,
    };
    key.prefixlen == IPCACHE_PREFIX_BASE + bits
}

/// Whether a policy entry lives in the exact-match hash (one protocol, one
/// port) rather than the trie: the rule of `bpfwall_maps.h`.
pub fn policy_is_exact(key: &PolicyKey) -> bool {
    key.prefixlen == POLICY_PREFIX_FULL
}

/// The key of an address an endpoint may send from.
pub fn source_key(endpoint_id: u32, addr: std::net::IpAddr) -> SourceKey {
    let (family, addr) = family_and_bytes(addr);
    SourceKey {
        endpoint_id,
        family,
        addr,
        ..SourceKey::default()
    }
}

/// The ipcache key for an address prefix.
pub fn ipcache_key(net: &ipnet::IpNet) -> IpcacheKey {
    let (family, addr) = family_and_bytes(net.network());
    IpcacheKey {
        prefixlen: IPCACHE_PREFIX_BASE + u32::from(net.prefix_len()),
        family,
        addr,
        ..IpcacheKey::default()
    }
}

/// The prefix an ipcache key stands for, or None for a key no compiler
/// writes (unknown family, impossible length).
pub fn ipcache_prefix(key: &IpcacheKey) -> Option<ipnet::IpNet> {
    let bits = u8::try_from(key.prefixlen.checked_sub(IPCACHE_PREFIX_BASE)?).ok()?;
    match key.family {
        FAMILY_IPV4 => {
            let a: [u8; 4] = key.addr[..4].try_into().ok()?;
            ipnet::Ipv4Net::new(a.into(), bits)
                .ok()
                .map(ipnet::IpNet::V4)
        }
        FAMILY_IPV6 => ipnet::Ipv6Net::new(key.addr.into(), bits)
            .ok()
            .map(ipnet::IpNet::V6),
        _ => None,
    }
}

// ---- the network plugin's gate (the netgate section of the header) ------

pub const NETGATE_OPEN: u32 = 0x1;
pub const NETGATE_INTERNAL: u32 = 0x2;
pub const NETGATE_IPV4: u32 = 0x4;
pub const NETGATE_IPV6: u32 = 0x8;
pub const NETGATE_ENTRIES: u32 = 16384;
/// `BPFWALL_NETGATE_DROP_REASON_MAX`.
pub const NETGATE_DROP_REASON_MAX: u32 = 8;

pub const PROG_NETGATE_IN: &str = "bpfwall_netgate_in";
pub const PROG_NETGATE_OUT: &str = "bpfwall_netgate_out";

/// `BPFWALL_NETGATE_DROP_*`: why the gate dropped a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum NetgateDrop {
    Closed = 1,
    Spoofed = 2,
    Internal = 3,
    Unknown = 4,
    Neighbour = 5,
    Protocol = 6,
    Malformed = 7,
}

impl NetgateDrop {
    /// Every reason, in index order.
    pub const ALL: [NetgateDrop; 7] = [
        NetgateDrop::Closed,
        NetgateDrop::Spoofed,
        NetgateDrop::Internal,
        NetgateDrop::Unknown,
        NetgateDrop::Neighbour,
        NetgateDrop::Protocol,
        NetgateDrop::Malformed,
    ];

    /// Its name in `status`.
    pub fn name(self) -> &'static str {
        match self {
            NetgateDrop::Closed => "closed",
            NetgateDrop::Spoofed => "spoofed-source",
            NetgateDrop::Internal => "internal",
            NetgateDrop::Unknown => "unknown-interface",
            NetgateDrop::Neighbour => "neighbour",
            NetgateDrop::Protocol => "protocol",
            NetgateDrop::Malformed => "malformed",
        }
    }
}

/// Mirrors `struct netgate_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct NetgateKey {
    pub ifindex: u32,
}

/// Mirrors `struct netgate_endpoint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct NetgateEndpoint {
    pub flags: u32,
    pub host_mac: [u8; 6],
    pub subnet4_len: u8,
    pub subnet6_len: u8,
    pub addr4: [u8; 4],
    pub subnet4: [u8; 4],
    pub addr6: [u8; 16],
    pub subnet6: [u8; 16],
}
