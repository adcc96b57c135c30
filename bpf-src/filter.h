/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * filter.h: one packet at one endpoint, from parse to verdict, in the order
 * of the decision table in policy.h (and docs/design.md).
 */
#ifndef BPFWALL_FILTER_H
#define BPFWALL_FILTER_H

#include "bpfwall_maps.h"
#include "parse.h"
#include "endpoint.h"
#include "conntrack.h"
#include "policy.h"

#define LOOPBACK_IFINDEX 1
#define PASS 1
#define DROP 0

/* Returns PASS or DROP (cgroup/skb's 1 and 0). */
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

#endif /* BPFWALL_FILTER_H */
