/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * endpoint.h: which endpoint a packet belongs to (by its socket's cgroup),
 * and the per-endpoint and per-reason counters.
 */
#ifndef BPFWALL_ENDPOINT_H
#define BPFWALL_ENDPOINT_H

#include "bpfwall_maps.h"

#define CGROUP_MAX_DEPTH 16

/*
 * The endpoint of the socket's cgroup. A process may sit in a child cgroup of
 * the container's (systemd or nested runtimes do that), so when the cgroup
 * itself is unknown walk its ancestors, deepest first.
 */
static __always_inline struct endpoint_info *endpoint_of(struct __sk_buff *skb)
{
	struct endpoint_key key = { .cgroup_id = bpf_skb_cgroup_id(skb) };
	struct endpoint_info *ep = bpf_map_lookup_elem(&bpfwall_endpoints_v1, &key);

	if (ep)
		return ep;
	for (int level = CGROUP_MAX_DEPTH; level > 0; level--) {
		key.cgroup_id = bpf_skb_ancestor_cgroup_id(skb, level);
		if (!key.cgroup_id)
			continue;
		ep = bpf_map_lookup_elem(&bpfwall_endpoints_v1, &key);
		if (ep)
			return ep;
	}
	return 0;
}

/* Host-wide drops, per named reason (BPFWALL_DROP_*). */
static __always_inline void count_drop(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&bpfwall_drops_v1, &reason);

	if (n)
		*n += 1;
}

/* One endpoint's packets and bytes, passed or dropped, per direction. */
static __always_inline void count_endpoint(const struct endpoint_info *ep, __u8 direction, int passed, __u32 len)
{
	__u32 idx = ep->endpoint_id;
	struct endpoint_counters *c = bpf_map_lookup_elem(&bpfwall_counters_v1, &idx);

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

#endif /* BPFWALL_ENDPOINT_H */
