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
#include "l7.h"

#define LOOPBACK_IFINDEX 1
#define PASS 1
#define DROP 0

static __always_inline int drop(const struct endpoint_info *ep, __u8 direction, __u32 reason, __u32 len)
{
	count_drop(reason);
	count_l7_drop(reason);
	if (ep)
		count_endpoint(ep, direction, 0, len);
	return DROP;
}

/* Returns PASS or DROP (cgroup/skb's 1 and 0). */
static __always_inline int bpfwall_filter(struct __sk_buff *skb, __u8 direction)
{
	struct endpoint_info *ep;
	struct endpoint_state state;
	struct ct_value *entry;
	struct ct_key ct;
	struct flow f, origin;
	__u64 now;
	__u32 reason, revision, g;
	int parsed;

	parsed = parse_flow(skb, direction, &f);
	if (parsed == PARSE_NOT_IP)
		return PASS;                                                   /* step 1 */
	/* One generation for the whole packet (bpfwall_maps.h). */
	revision = policy_revision_now();
	g = revision & 1;
	ep = endpoint_of(skb, g);
	if (skb->ifindex == LOOPBACK_IFINDEX &&
	    !(ep && (ep->gen[g & 1].flags & BPFWALL_EP_HOST_NETWORK)))
		return PASS;                                                   /* step 2 */
	if (parsed == PARSE_EXT_HEADERS)
		return drop(ep, direction, BPFWALL_DROP_EXT_HEADERS, skb->len); /* step 3b */
	if (parsed != PARSE_OK)
		return drop(ep, direction, BPFWALL_DROP_MALFORMED, skb->len);   /* step 3 */
	if (!ep)
		return drop(ep, direction, BPFWALL_DROP_UNKNOWN_ENDPOINT, skb->len); /* step 4 */
	state = ep->gen[g & 1];
	if (direction == BPFWALL_DIR_EGRESS && !source_is_own(ep, &f, g))
		return drop(ep, direction, BPFWALL_DROP_SPOOFED, skb->len);     /* step 4b */

	/* Lifetimes are seconds: the coarse clock (jiffies) is plenty, and cheaper. */
	now = bpf_ktime_get_coarse_ns();
	ct_key_from_flow(&ct, &f, ep->endpoint_id);
	entry = bpf_map_lookup_elem(&bpfwall_ct_v2, &ct);
	switch (ct_classify(entry, &ct, &f, direction, now, revision)) {
	case CT_PASS:                                                          /* step 5 */
		count_endpoint(ep, direction, 1, skb->len);
		return PASS;
	case CT_REVOKED:                                                       /* step 5b */
		return drop(ep, direction, BPFWALL_DROP_FLOW_REVOKED, skb->len);
	case CT_RECHECK:                                                       /* step 5c */
		if (!entry)
			break;
		ct_origin_flow(&origin, entry, &f);
		reason = policy_decide(&state, entry->origin_direction, &origin, g);
		if (!reason)
			reason = l7_bypass(&state, entry->origin_direction, &origin, g);
		ct_redecided(entry, &f, direction, now, revision, !reason);
		if (reason)
			return drop(ep, direction, reason, skb->len);
		count_endpoint(ep, direction, 1, skb->len);
		return PASS;
	default:
		break;
	}
	reason = policy_decide(&state, direction, &f, g);                      /* steps 6 to 10 */
	if (!reason)
		reason = l7_bypass(&state, direction, &f, g);                  /* step 10b */
	if (reason)
		return drop(ep, direction, reason, skb->len);
	if (ct_track(entry, &ct, &f, ep, direction, now, revision))
		count_untracked(ep);
	count_endpoint(ep, direction, 1, skb->len);
	return PASS;
}

#endif /* BPFWALL_FILTER_H */
