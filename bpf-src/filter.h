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
#include "events.h"
#include "l7.h"

#define LOOPBACK_IFINDEX 1
#define PASS 1
#define DROP 0

/* Returns PASS or DROP (cgroup/skb's 1 and 0). Every drop leaves through
 * `dropped` and every decided pass through `passed` (or the conntrack
 * shortcut): the counters and the events (events.h) are kept there. */
static __always_inline int bpfwall_filter(struct __sk_buff *skb, __u8 direction)
{
	struct endpoint_info *ep;
	struct endpoint_state state = {};
	struct ct_value *entry;
	struct ct_key ct;
	struct flow f, origin;
	__u64 now;
	__u32 reason = 0, revision, g, peer = 0, bypass;
	__u8 event = 0, decided = direction;
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
	if (parsed == PARSE_EXT_HEADERS) {
		reason = BPFWALL_DROP_EXT_HEADERS;                             /* step 3b */
		goto dropped;
	}
	if (parsed != PARSE_OK) {
		reason = BPFWALL_DROP_MALFORMED;                               /* step 3 */
		goto dropped;
	}
	if (!ep) {
		reason = BPFWALL_DROP_UNKNOWN_ENDPOINT;                        /* step 4 */
		goto dropped;
	}
	state = ep->gen[g & 1];
	if (direction == BPFWALL_DIR_EGRESS && !source_is_own(ep, &f, g)) {
		reason = BPFWALL_DROP_SPOOFED;                                 /* step 4b */
		goto dropped;
	}

	/* Lifetimes are seconds: the coarse clock (jiffies) is plenty, and cheaper. */
	now = bpf_ktime_get_coarse_ns();
	ct_key_from_flow(&ct, &f, ep->endpoint_id);
	entry = bpf_map_lookup_elem(&bpfwall_ct_v2, &ct);
	switch (ct_classify(entry, &ct, &f, direction, now, revision)) {
	case CT_PASS:                                                          /* step 5 */
		count_endpoint(ep, direction, 1, skb->len);
		metrics_forwarded(direction);
		return PASS;
	case CT_REVOKED:                                                       /* step 5b */
		reason = BPFWALL_DROP_FLOW_REVOKED;
		goto dropped;
	case CT_RECHECK:                                                       /* step 5c */
		if (!entry)
			break;
		ct_origin_flow(&origin, entry, &f);
		decided = entry->origin_direction;
		reason = policy_decide(&state, decided, &origin, g, &peer);
		if (reason && audit_lets_pass(&state, reason))
			event = BPFWALL_EVENT_AUDIT;
		/* Step 10b, also where audit lets a flow through: audit never
		 * opens a way around the proxy. */
		if (!reason || event) {
			bypass = l7_bypass(&state, decided, &origin, g);
			if (bypass) {
				reason = bypass;
				event = 0;
			}
		}
		metrics_verdict(reason && !event ? BPFWALL_EVENT_DENIED : event ? event : BPFWALL_EVENT_ALLOWED, decided);
		ct_redecided(entry, &f, direction, now, revision, !reason || event);
		/* Reported as the decision it is: the opening direction and port. */
		f.dport_be = origin.dport_be;
		if (reason && !event)
			goto dropped;
		goto passed;
	default:
		break;
	}
	reason = policy_decide(&state, direction, &f, g, &peer);               /* steps 6 to 10 */
	if (!reason || audit_lets_pass(&state, reason)) {
		bypass = l7_bypass(&state, direction, &f, g);                  /* step 10b */
		if (bypass)
			reason = bypass; /* never one audit lets pass */
	}
	if (reason && !audit_lets_pass(&state, reason)) {
		metrics_verdict(BPFWALL_EVENT_DENIED, direction);
		goto dropped;
	}
	event = reason ? BPFWALL_EVENT_AUDIT : BPFWALL_EVENT_ALLOWED;
	metrics_verdict(event, direction);
	if (ct_track(entry, &ct, &f, ep, direction, now, revision))
		count_untracked(ep);
passed:
	count_endpoint(ep, direction, 1, skb->len);
	metrics_forwarded(direction);
	if (event)
		flow_event(event, decided, reason, ep, state.identity, &f, peer, revision, g);
	return PASS;
dropped:
	count_drop(reason);
	count_l7_drop(reason);
	metrics_drop(reason, direction);
	if (ep)
		count_endpoint(ep, direction, 0, skb->len);
	flow_event(BPFWALL_EVENT_DENIED, decided, reason, ep, state.identity, &f, peer, revision, g);
	return DROP;
}

#endif /* BPFWALL_FILTER_H */
