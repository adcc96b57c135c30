/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * bpfwall_maps.h: the single source of truth for every map key, value and
 * constant shared between the datapath and userspace.
 *
 * Rust mirrors live in labels-policy/src/datapath_abi.rs. Each mirror names
 * the struct it mirrors; const asserts check sizes there, and
 * hook/datapath/tests/abi_layout.rs checks sizes and member offsets against
 * the BTF of the compiled object; labels-policy/tests/abi_defines.rs reads
 * this file and checks every numeric BPFWALL_* define against
 * datapath_abi::DEFINES and every map name against datapath_abi::ALL_MAPS.
 * Change a layout here, bump the map's _vN suffix (and BPFWALL_ABI_VERSION)
 * so a pinned map of the old layout is never misread by new code.
 *
 * Rules for this file: fixed-width types only, explicit padding fields, no
 * bool, no bitfields. Fields in network byte order end in _be.
 */
#ifndef BPFWALL_MAPS_H
#define BPFWALL_MAPS_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define BPFWALL_ABI_VERSION 4

/* ---- generations ------------------------------------------------------ */
/*
 * Every value the daemon compiles (endpoint state, ipcache identity, policy
 * verdict, allowed source) is stored twice, once per generation, and a
 * packet reads the generation that is active when it starts: the lowest bit
 * of the policy revision. The daemon writes a change into the inactive
 * generation of every map (keys new to a map carry "absent" for the active
 * one), flips the revision, waits until no packet still runs with the old
 * generation, and only then deletes keys the new one does not have. So
 * every packet is decided by one whole generation, never by a mix of old
 * and new entries. A zero in a generation's slot means "absent in that
 * generation".
 */
#define BPFWALL_GENERATIONS 2

/* ---- identities ------------------------------------------------------ */
/* In a policy key, peer identity 0 means "any peer". */
#define BPFWALL_IDENTITY_ANY 0
#define BPFWALL_IDENTITY_HOST 1
#define BPFWALL_IDENTITY_WORLD 2
/* Container (label-set) identities: [FIRST_CONTAINER, FIRST_CIDR). */
#define BPFWALL_IDENTITY_FIRST_CONTAINER 256
/* CIDR identities, one per prefix some rule names. */
#define BPFWALL_IDENTITY_FIRST_CIDR 0x01000000

/* ---- directions and verdicts ---------------------------------------- */
#define BPFWALL_DIR_INGRESS 0
#define BPFWALL_DIR_EGRESS 1

#define BPFWALL_VERDICT_ALLOW 1
#define BPFWALL_VERDICT_DENY 2

/* Named drop reasons; index into bpfwall_drops_v2. */
#define BPFWALL_DROP_POLICY_DENY 1       /* an explicit deny entry matched */
#define BPFWALL_DROP_POLICY_DEFAULT 2    /* enforced direction, no allow matched */
#define BPFWALL_DROP_POLICY_ERROR 3      /* the endpoint's policy is invalid (or did not fit): closed */
#define BPFWALL_DROP_UNKNOWN_ENDPOINT 4  /* attached cgroup not (or no longer) an endpoint */
#define BPFWALL_DROP_MALFORMED 5         /* IP or L4 header could not be read */
#define BPFWALL_DROP_SPOOFED 6           /* egress source address is not the endpoint's */
#define BPFWALL_DROP_EXT_HEADERS 7       /* IPv6 extension headers past the parser's bound */
#define BPFWALL_DROP_FLOW_REVOKED 8      /* a tracked flow that policy no longer allows */
#define BPFWALL_DROP_REASON_MAX 9

/* ---- endpoints: cgroup id -> endpoint -------------------------------- */
#define BPFWALL_EP_ENFORCE_INGRESS 0x1   /* some rule applies to ingress: default deny */
#define BPFWALL_EP_ENFORCE_EGRESS 0x2
#define BPFWALL_EP_ERROR_INGRESS 0x4     /* ingress closed: policy invalid, or did not fit */
#define BPFWALL_EP_ERROR_EGRESS 0x8
#define BPFWALL_EP_HOST_NETWORK 0x10     /* in the host's netns: loopback is policed too */

struct endpoint_key {
	__u64 cgroup_id;
};

struct endpoint_state {
	__u32 identity; /* the endpoint's own (label-set) identity; 0: absent */
	__u32 flags;    /* BPFWALL_EP_* */
};

struct endpoint_info {
	__u32 endpoint_id; /* index into the counter and conntrack-use maps,
			    * < BPFWALL_MAX_ENDPOINTS; the same in every generation */
	__u32 ct_limit;    /* conntrack entries this endpoint may hold */
	struct endpoint_state gen[BPFWALL_GENERATIONS];
};

/* ---- ipcache: address prefix -> identity ------------------------------ */
#define BPFWALL_FAMILY_IPV4 4
#define BPFWALL_FAMILY_IPV6 6
/* prefixlen counts the family byte and padding (32 bits) plus address bits. */
#define BPFWALL_IPCACHE_PREFIX_BASE 32

struct ipcache_key {
	__u32 prefixlen;
	__u8 family; /* BPFWALL_FAMILY_* */
	__u8 pad[3];
	__u8 addr[16]; /* network order; IPv4 in addr[0..4], rest zero */
};

struct ipcache_value {
	__u32 identity[BPFWALL_GENERATIONS]; /* 0: no entry in that generation */
};
/*
 * Host addresses (prefixlen 64 for IPv4, 160 for IPv6) go to
 * bpfwall_ipcache_exact_v2, a hash with the same key; shorter prefixes to
 * the trie. A host address is always the longest match, so the datapath
 * asks the hash first and the trie only on a miss (or when the hash entry
 * is absent in the packet's generation): one hash lookup for every
 * container peer, however many entries there are. A trie entry absent in a
 * generation carries, for that generation, the identity of the longest
 * prefix of that generation that contains it (or none: the world), which
 * is what the trie would have answered without it.
 */

/* ---- policy: (local identity, peer, direction, proto, port) -> verdict */
/*
 * An LPM trie. local_identity, peer_identity and direction are always fully
 * matched (72 bits); the protocol byte and then the port bits are matched
 * as far as prefixlen says, so a port range is a few prefix entries and
 * "any protocol" stops before the protocol byte.
 */
#define BPFWALL_POLICY_PREFIX_ANY_PROTO 72
#define BPFWALL_POLICY_PREFIX_ANY_PORT 80
#define BPFWALL_POLICY_PREFIX_FULL 96

struct policy_key {
	__u32 prefixlen;
	__u32 local_identity;
	__u32 peer_identity; /* BPFWALL_IDENTITY_ANY matches every peer */
	__u8 direction;      /* BPFWALL_DIR_* */
	__u8 protocol;       /* IPPROTO_* */
	__be16 dport_be;     /* TCP/UDP destination port; ICMP type */
};

struct policy_value {
	__u8 verdict[BPFWALL_GENERATIONS]; /* BPFWALL_VERDICT_*; 0: none */
	__u8 pad[2];
};
/*
 * Entries with prefixlen BPFWALL_POLICY_PREFIX_FULL (one protocol, one
 * port) go to bpfwall_policy_exact_v2, a hash with the same key; port
 * ranges, any-port and any-protocol entries to the trie. Within one (local
 * identity, peer, direction) an exact entry is the longest match there can
 * be, and the compiler has already resolved deny precedence into the
 * entries, so a hash hit is the trie's answer; the trie is asked on a miss.
 * As in the ipcache, a trie entry absent in a generation carries the
 * verdict of that generation's longest entry covering it, or none.
 */

/* ---- sources: which addresses an endpoint may send from -------------- */
/*
 * Egress drops a packet whose source address is not one of the sending
 * endpoint's (BPFWALL_DROP_SPOOFED): a container with CAP_NET_RAW cannot
 * borrow a peer's identity. Host-network endpoints may send from the
 * host's addresses; a container in another's netns from that one's.
 */
struct source_key {
	__u32 endpoint_id;
	__u8 family; /* BPFWALL_FAMILY_* */
	__u8 pad[3];
	__u8 addr[16];
};

struct source_value {
	__u8 allowed[BPFWALL_GENERATIONS]; /* 1: allowed in that generation */
	__u8 pad[2];
};

/* ---- conntrack, keyed from the endpoint's point of view -------------- */
#define BPFWALL_CT_TCP_CLOSING 0x1 /* FIN or RST seen */
#define BPFWALL_CT_SEEN_REPLY 0x2  /* a packet passed in the reply direction */
#define BPFWALL_CT_REVOKED 0x4     /* policy no longer allows the flow (at policy_revision) */
/* Lifetimes since the last packet, in seconds, after Cilium's defaults
 * (the daemon's collector removes entries past them). */
#define BPFWALL_CT_LIFETIME_TCP_S 21600        /* a TCP flow that saw a reply */
#define BPFWALL_CT_LIFETIME_TCP_OPENING_S 60   /* a TCP flow that did not (yet) */
#define BPFWALL_CT_LIFETIME_TCP_CLOSING_S 10   /* after FIN or RST */
#define BPFWALL_CT_LIFETIME_OTHER_S 60

struct ct_key {
	__u8 local_addr[16];
	__u8 remote_addr[16];
	__be16 local_port_be;
	__be16 remote_port_be;
	__u8 protocol;
	__u8 family;
	__u16 pad;
	__u32 endpoint_id;
};

struct ct_value {
	__u64 last_seen_ns;      /* bpf_ktime_get_coarse_ns() (CLOCK_MONOTONIC) */
	__u8 origin_direction;   /* direction of the packet that opened the flow */
	__u8 flags;              /* BPFWALL_CT_* */
	__u8 pad[2];
	__u32 policy_revision;   /* the revision policy last decided the flow at;
				  * packets in both directions are decided
				  * again when it is not the current one */
};
/*
 * bpfwall_ct_v2 is a hash without preallocation and without eviction: a
 * flood of flows cannot push out another endpoint's entries. Each endpoint
 * may hold at most its endpoint_info.ct_limit entries; beyond the shared
 * limit (ct_config.shared_limit) an endpoint still gets its first
 * ct_config.guaranteed entries, which the daemon keeps room for. Entries
 * are counted in bpfwall_ct_used_v2 (index: endpoint id; index 0: the whole
 * map): the datapath adds, the daemon's collector removes expired entries
 * and recounts. A flow that finds no room is not tracked (and counted).
 */
struct ct_config {
	__u32 shared_limit; /* entries beyond which only guaranteed shares remain */
	__u32 guaranteed;   /* entries every endpoint may take whatever the fill */
	__u32 pad[2];
};

/* ---- policy revision ------------------------------------------------- */
/*
 * One u32 at key 0, bumped by the daemon by exactly one for every change
 * (it never passes through zero: zero marks conntrack entries that must
 * be decided again). Its lowest bit is the active generation.
 */
struct policy_revision {
	__u32 revision;
};

/* ---- counters -------------------------------------------------------- */
struct endpoint_counters {
	__u64 allowed_packets[2]; /* [BPFWALL_DIR_*] */
	__u64 dropped_packets[2];
	__u64 allowed_bytes[2];
	__u64 dropped_bytes[2];
	__u64 untracked_flows;    /* allowed flows that found no conntrack room */
	__u64 pad;
};

/* ---- map sizes ------------------------------------------------------- */
#define BPFWALL_MAX_ENDPOINTS 16384
#define BPFWALL_IPCACHE_ENTRIES 65536
#define BPFWALL_POLICY_ENTRIES 524288
#define BPFWALL_SOURCE_ENTRIES 65536
#define BPFWALL_CT_ENTRIES 524288

/* ---- the maps -------------------------------------------------------- */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BPFWALL_MAX_ENDPOINTS);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
} bpfwall_endpoints_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, BPFWALL_IPCACHE_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
} bpfwall_ipcache_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BPFWALL_IPCACHE_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
} bpfwall_ipcache_exact_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, BPFWALL_POLICY_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
} bpfwall_policy_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BPFWALL_POLICY_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
} bpfwall_policy_exact_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BPFWALL_SOURCE_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct source_key);
	__type(value, struct source_value);
} bpfwall_sources_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BPFWALL_CT_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
} bpfwall_ct_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BPFWALL_MAX_ENDPOINTS);
	__type(key, __u32);
	__type(value, __u32);
} bpfwall_ct_used_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ct_config);
} bpfwall_ct_config_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct policy_revision);
} bpfwall_policy_rev_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BPFWALL_MAX_ENDPOINTS);
	__type(key, __u32);
	__type(value, struct endpoint_counters);
} bpfwall_counters_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BPFWALL_DROP_REASON_MAX);
	__type(key, __u32);
	__type(value, __u64);
} bpfwall_drops_v2 SEC(".maps");

/* ---- the network plugin's gate (bpfwall_network_gate.c) -------------- */
/*
 * bpfwall's Docker network driver connects each container with a veth
 * pair, routed /32 (/128) from the host. Two tc programs sit on the host
 * end (SEC("classifier"), attached at Join, before the container has a
 * process): netgate_from_container on its ingress (what the container
 * sends) and netgate_to_container on its egress. They find the endpoint
 * by the host end's ifindex; an interface without an entry drops
 * everything. Until the daemon has bound the endpoint to its container
 * and that container's cgroup programs and policy are in force, the
 * entry lacks BPFWALL_NETGATE_OPEN and every IP packet is dropped both
 * ways; ARP and neighbour discovery still work (the gate answers them
 * itself, from the host end's MAC, for every address of the network
 * but the container's own), so the interface comes up. Always, whatever
 * the state: a container sends only from its own addresses (ARP and IP),
 * may not send router advertisements or redirects, and on an internal
 * network reaches only its network's prefixes.
 */
#define BPFWALL_NETGATE_OPEN 0x1     /* bound and policed: IP passes */
#define BPFWALL_NETGATE_INTERNAL 0x2 /* --internal: only the network's prefixes */
#define BPFWALL_NETGATE_IPV4 0x4     /* addr4 and subnet4 are set */
#define BPFWALL_NETGATE_IPV6 0x8     /* addr6 and subnet6 are set */

/* Named drop reasons; index into bpfwall_netgate_drops_v1. */
#define BPFWALL_NETGATE_DROP_CLOSED 1    /* not bound to a policed container yet */
#define BPFWALL_NETGATE_DROP_SPOOFED 2   /* source address (IP or ARP) not the container's */
#define BPFWALL_NETGATE_DROP_INTERNAL 3  /* an internal network's packet to or from outside it */
#define BPFWALL_NETGATE_DROP_UNKNOWN 4   /* no entry for the interface */
#define BPFWALL_NETGATE_DROP_NEIGHBOUR 5 /* ARP/ND the gate neither answers nor passes */
#define BPFWALL_NETGATE_DROP_PROTOCOL 6  /* neither IPv4, IPv6 nor ARP; or a family the network lacks */
#define BPFWALL_NETGATE_DROP_MALFORMED 7 /* a header could not be read */
#define BPFWALL_NETGATE_DROP_REASON_MAX 8

#define BPFWALL_NETGATE_ENTRIES 16384

struct netgate_key {
	__u32 ifindex; /* the host end of the veth */
};

struct netgate_endpoint {
	__u32 flags;        /* BPFWALL_NETGATE_* */
	__u8 host_mac[6];   /* the host end's MAC: ARP and ND answers carry it */
	__u8 subnet4_len;
	__u8 subnet6_len;
	__u8 addr4[4];      /* the container's addresses, network order */
	__u8 subnet4[4];    /* its network's prefixes */
	__u8 addr6[16];
	__u8 subnet6[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BPFWALL_NETGATE_ENTRIES);
	__type(key, struct netgate_key);
	__type(value, struct netgate_endpoint);
} bpfwall_netgate_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BPFWALL_NETGATE_DROP_REASON_MAX);
	__type(key, __u32);
	__type(value, __u64);
} bpfwall_netgate_drops_v1 SEC(".maps");

/* ---- L7: connections steered to bpfwall's HTTP proxy ------------------ */
/*
 * A port of a container that HTTP rules police is served by bpfwall's
 * proxy, a listening socket the daemon opens in the container's network
 * namespace. Which (local identity, TCP port) is steered there is policy,
 * so it lives in the policy map with its generations: an exact entry with
 * peer BPFWALL_IDENTITY_PROXY (an identity no address has, so no packet's
 * lookup ever meets it), direction ingress, protocol TCP and the port,
 * whose verdict is BPFWALL_VERDICT_PROXY.
 *
 * The sk_lookup program (bpfwall_sk_lookup.c, attached to each such
 * namespace) finds the container by the packet's local address
 * (bpfwall_l7_addresses_v1), makes the L3/L4 decision of policy.h for it,
 * and hands a connection the policy lets through to the proxy socket in
 * bpfwall_l7_sockets_v1; with no socket there (no daemon) it drops
 * (BPFWALL_L7_DROP_NO_PROXY), never passes. A new flow that reaches the
 * container's own socket on a steered port did not come through the proxy:
 * the cgroup program drops it (BPFWALL_L7_DROP_BYPASS). The proxy's own
 * connection to the server runs over the namespace's loopback, which
 * neither program steers nor polices.
 */
#define BPFWALL_IDENTITY_PROXY 3
#define BPFWALL_VERDICT_PROXY 3

/* L7 drop reasons, indices into bpfwall_l7_drops_v1 (from 16: apart from
 * BPFWALL_DROP_*, whose map is sized to them). */
#define BPFWALL_L7_DROP_NO_PROXY 16   /* steered, and no proxy socket: the daemon is down */
#define BPFWALL_L7_DROP_ASSIGN 17     /* the kernel refused the proxy socket */
#define BPFWALL_L7_DROP_BYPASS 18     /* a new flow to a steered port reached the container's own socket */
#define BPFWALL_L7_DROP_REASON_MAX 19

/* Proxy sockets: slot 2 * endpoint id for IPv4, 2 * endpoint id + 1 for IPv6. */
#define BPFWALL_L7_SOCKET_SLOTS 32768
#define BPFWALL_L7_ADDRESS_ENTRIES 65536

/* An address of a container whose ports the proxy may serve. */
struct l7_address_key {
	__u8 family; /* BPFWALL_FAMILY_* */
	__u8 pad[3];
	__u8 addr[16]; /* network order; IPv4 in addr[0..4], rest zero */
};

struct l7_address_value {
	__u64 cgroup_id; /* the container's endpoint (bpfwall_endpoints_v2 key) */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BPFWALL_L7_ADDRESS_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct l7_address_key);
	__type(value, struct l7_address_value);
} bpfwall_l7_addresses_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, BPFWALL_L7_SOCKET_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} bpfwall_l7_sockets_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BPFWALL_L7_DROP_REASON_MAX);
	__type(key, __u32);
	__type(value, __u64);
} bpfwall_l7_drops_v1 SEC(".maps");

/* ---- flow events, audit mode and metrics ------------------------------ */
/*
 * Audit: an endpoint with this flag (in a generation) lets through what its
 * policy would drop (BPFWALL_DROP_POLICY_DENY and _POLICY_DEFAULT only) and
 * reports it as an event of kind BPFWALL_EVENT_AUDIT. Every other drop
 * (spoofed source, malformed, unknown endpoint, policy error, a flow
 * revoked while enforcing) stays a drop: those are not policy the operator
 * is trying out, and letting them pass would let a container forge or
 * escape rather than be observed.
 */
#define BPFWALL_EP_AUDIT 0x20

/* Event kinds (struct flow_event.kind). */
#define BPFWALL_EVENT_ALLOWED 1 /* a new flow passed policy (or a direction without rules) */
#define BPFWALL_EVENT_DENIED 2  /* a packet was dropped; reason says why */
#define BPFWALL_EVENT_AUDIT 3   /* a new flow policy would drop passed: the endpoint audits */
#define BPFWALL_EVENT_KINDS 4

/*
 * One event per new-flow decision and per drop, never per packet of an
 * established flow. Events of one key (struct event_limit_key) are sent at
 * most once per events_config.interval_ns: the ones in between are counted
 * in the key's entry and carried, as `suppressed`, by the next one sent.
 * A reservation that finds the ring full is counted in
 * metrics_counters.events_lost (with what it carried).
 */
struct flow_event {
	__u64 time_ns;         /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) */
	__u32 endpoint_id;     /* 0: the packet met no endpoint */
	__u32 local_identity;  /* the endpoint's identity in the packet's generation; 0: none */
	__u32 peer_identity;   /* 0: not known (dropped before the addresses were read) */
	__u32 policy_revision; /* the revision (so the generation) that decided */
	__u32 suppressed;      /* events of this key not sent since the last one was */
	__u8 kind;             /* BPFWALL_EVENT_* */
	__u8 direction;        /* the decided direction (a flow's opening one) */
	__u8 reason;           /* BPFWALL_DROP_*: why it was (DENIED) or would be (AUDIT) dropped */
	__u8 protocol;
	__u8 family;           /* BPFWALL_FAMILY_*; 0 when the IP header was unreadable */
	__u8 tcp_flags;
	__be16 dport_be;       /* the decided destination port (ICMP: type) */
	__be16 local_port_be;
	__be16 remote_port_be;
	__u8 local_addr[16];
	__u8 remote_addr[16];
};

struct event_limit_key {
	__u32 endpoint_id;
	__u32 peer_identity;
	__be16 dport_be;
	__u8 direction;
	__u8 protocol;
	__u8 kind;
	__u8 reason;
	__u8 pad[2];
};

struct event_limit_value {
	__u64 last_sent_ns; /* bpf_ktime_get_ns() of the last event sent */
	__u32 suppressed;   /* events counted since, not sent */
	__u32 pad;
};

struct events_config {
	__u32 enabled;      /* 0: no event is sent (counters go on) */
	__u32 pad;
	__u64 interval_ns;  /* at most one event per key per interval; 0: all */
};

/* Host-wide packet and decision counts, per CPU (summed by the daemon). */
struct metrics_counters {
	__u64 forwarded[2];                        /* packets passed, [BPFWALL_DIR_*] */
	__u64 verdicts[BPFWALL_EVENT_KINDS][2];    /* policy decisions by kind (0 unused), direction */
	__u64 drops[BPFWALL_DROP_REASON_MAX][2];   /* drops by reason and direction */
	__u64 events_sent;
	__u64 events_lost;                         /* events (and what they carried) the ring had no room for */
};

#define BPFWALL_EVENTS_RING_BYTES 1048576
#define BPFWALL_EVENT_LIMIT_ENTRIES 65536

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, BPFWALL_EVENTS_RING_BYTES);
} bpfwall_events_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, BPFWALL_EVENT_LIMIT_ENTRIES);
	__type(key, struct event_limit_key);
	__type(value, struct event_limit_value);
} bpfwall_event_limit_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct events_config);
} bpfwall_events_config_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct metrics_counters);
} bpfwall_metrics_v1 SEC(".maps");

#endif /* BPFWALL_MAPS_H */
