// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * bpfwall's cgroup/skb programs, attached to every managed container's
 * cgroup v2. Return 1 passes the packet, 0 drops it. The decision order is
 * the table in policy.h.
 */
#include "bpfwall_maps.h"
#include "parse.h"
#include "conntrack.h"
#include "policy.h"

#define LOOPBACK_IFINDEX 1
#define CGROUP_MAX_DEPTH 16
#define PASS 1
#define DROP 0

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

static __always_inline void count_drop(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&bpfwall_drops_v1, &reason);

	if (n)
		*n += 1;
}

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

static __always_inline int bpfwall_filter(struct __sk_buff *skb, __u8 direction)
{
	struct endpoint_info *ep;
	struct ct_value *entry;
	struct ct_key ct;
	struct flow f;
	__u64 now;
	__u32 reason, revision;
	int parsed;

	parsed = parse_flow(skb, direction, &f);
	if (parsed > 0)
		return PASS;                                    /* step 1 */
	if (skb->ifindex == LOOPBACK_IFINDEX)
		return PASS;                                    /* step 2 */
	if (parsed < 0) {
		count_drop(BPFWALL_DROP_MALFORMED);             /* step 3 */
		return DROP;
	}
	ep = endpoint_of(skb);
	if (!ep) {
		count_drop(BPFWALL_DROP_UNKNOWN_ENDPOINT);      /* step 4 */
		return DROP;
	}

	/* Lifetimes are seconds: the coarse clock (jiffies) is plenty, and cheaper. */
	now = bpf_ktime_get_coarse_ns();
	revision = policy_revision_now();
	ct_key_from_flow(&ct, &f, ep->endpoint_id);
	entry = bpf_map_lookup_elem(&bpfwall_ct_v1, &ct);
	if (ct_classify(entry, &ct, &f, direction, now, revision) != CT_NEW) { /* step 5 */
		count_endpoint(ep, direction, 1, skb->len);
		return PASS;
	}
	reason = policy_decide(ep, direction, &f);          /* steps 6 to 10 */
	if (reason) {
		count_drop(reason);
		count_endpoint(ep, direction, 0, skb->len);
		return DROP;
	}
	ct_track(entry, &ct, &f, direction, now, revision);
	count_endpoint(ep, direction, 1, skb->len);
	return PASS;
}

SEC("cgroup_skb/ingress")
int bpfwall_ingress(struct __sk_buff *skb)
{
	return bpfwall_filter(skb, BPFWALL_DIR_INGRESS);
}

SEC("cgroup_skb/egress")
int bpfwall_egress(struct __sk_buff *skb)
{
	return bpfwall_filter(skb, BPFWALL_DIR_EGRESS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
