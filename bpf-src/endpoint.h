/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * endpoint.h: which endpoint a packet belongs to (by its socket's cgroup),
 * which source addresses it may use, and the per-endpoint and per-reason
 * counters.
 */
#ifndef BPFWALL_ENDPOINT_H
#define BPFWALL_ENDPOINT_H

#include "bpfwall_maps.h"
#include "parse.h"

#define CGROUP_MAX_DEPTH 16

/* An endpoint entry that is an endpoint in generation g. */
static __always_inline struct endpoint_info *endpoint_in(struct endpoint_key *key, __u32 g)
{
	struct endpoint_info *ep = bpf_map_lookup_elem(&bpfwall_endpoints_v2, key);

	return ep && ep->gen[g & 1].identity ? ep : 0;
}

/*
 * The endpoint of the socket's cgroup, in generation g. A process may sit in
 * a child cgroup of the container's (systemd or nested runtimes do that), so
 * when the cgroup itself is unknown walk its ancestors, deepest first.
 */
static __always_inline struct endpoint_info *endpoint_of(struct __sk_buff *skb, __u32 g)
{
	struct endpoint_key key = { .cgroup_id = bpf_skb_cgroup_id(skb) };
	struct endpoint_info *ep = endpoint_in(&key, g);

	if (ep)
		return ep;
	for (int level = CGROUP_MAX_DEPTH; level > 0; level--) {
		key.cgroup_id = bpf_skb_ancestor_cgroup_id(skb, level);
		if (!key.cgroup_id)
			continue;
		ep = endpoint_in(&key, g);
		if (ep)
			return ep;
	}
	return 0;
}

/*
 * Is the packet's local address one the endpoint may send from, in
 * generation g? (Egress only: there the local address is the source.) The
 * unspecified address is allowed for ICMPv6 alone (neighbour discovery and
 * MLD before an address is configured).
 */
static __always_inline int source_is_own(const struct endpoint_info *ep, const struct flow *f, __u32 g)
{
	struct source_key key = {};
	struct source_value *v;

	key.endpoint_id = ep->endpoint_id;
	key.family = f->family;
	__builtin_memcpy(key.addr, f->local_addr, 16);
	v = bpf_map_lookup_elem(&bpfwall_sources_v2, &key);
	if (v && v->allowed[g & 1])
		return 1;
	if (f->family == BPFWALL_FAMILY_IPV6 && f->protocol == IPPROTO_ICMPV6) {
		__u8 any = 0;

#pragma unroll
		for (int i = 0; i < 16; i++)
			any |= f->local_addr[i];
		return any == 0;
	}
	return 0;
}

/* Host-wide drops, per named reason (BPFWALL_DROP_*). */
static __always_inline void count_drop(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&bpfwall_drops_v2, &reason);

	if (n)
		*n += 1;
}

/* One endpoint's packets and bytes, passed or dropped, per direction. */
static __always_inline void count_endpoint(const struct endpoint_info *ep, __u8 direction, int passed, __u32 len)
{
	__u32 idx = ep->endpoint_id;
	struct endpoint_counters *c = bpf_map_lookup_elem(&bpfwall_counters_v2, &idx);

	if (!c || direction > BPFWALL_DIR_EGRESS)
		return;
	if (passed) {
		c->allowed_packets[direction] += 1;
		c->allowed_bytes[direction] += len;
	} else {
		c->dropped_packets[direction] += 1;
		c->dropped_bytes[direction] += len;
	}
}

/* An allowed flow that found no conntrack room. */
static __always_inline void count_untracked(const struct endpoint_info *ep)
{
	__u32 idx = ep->endpoint_id;
	struct endpoint_counters *c = bpf_map_lookup_elem(&bpfwall_counters_v2, &idx);

	if (c)
		c->untracked_flows += 1;
}

#endif /* BPFWALL_ENDPOINT_H */
