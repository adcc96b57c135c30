// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * bpfwall's entry programs: cgroup/skb ingress and egress, attached to every
 * managed container's cgroup v2. The logic is in the headers:
 *
 *   bpfwall_maps.h  every map, key, value and shared constant
 *   parse.h         packet -> flow
 *   endpoint.h      cgroup -> endpoint; counters
 *   conntrack.h     replies and established flows
 *   policy.h        identities and the decision table
 *   filter.h        the steps in order
 */
#include "bpfwall_maps.h"
#include "filter.h"

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
