/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * policy.h: identity resolution and the policy decision.
 *
 * Decision order for one packet at one endpoint and direction (the same
 * table is in docs/design.md; its rows, in labels-policy/src/testing.rs,
 * drive the tests on both sides: the Rust port in
 * labels-policy/src/decision.rs and hook/datapath/tests/test_run.rs):
 *
 *   step  condition                                        result
 *   1     not IPv4 / IPv6                                  pass
 *   2     on loopback (ifindex 1), endpoint not in the     pass, untracked
 *         host's netns
 *   3     IP or L4 header unreadable                       drop MALFORMED
 *   3b    more IPv6 extension headers than the bound       drop EXT_HEADERS
 *   4     cgroup not an endpoint in the packet's           drop UNKNOWN_ENDPOINT
 *         generation
 *   4b    egress, source address not the endpoint's        drop SPOOFED
 *   5     conntrack: a live flow (either direction) that   pass (a cache of 6-10
 *         policy allowed at the current revision (a TCP     for the flow's opening
 *         SYN is never part of a tracked flow)              direction)
 *   5b    conntrack: a live flow policy denied at the      drop FLOW_REVOKED
 *         current revision
 *   5c    conntrack: a live flow decided at an older       steps 6-10 for its opening
 *         revision                                          direction: pass, or drop
 *                                                           and mark it revoked
 *   6     direction not enforced for the endpoint          pass, tracked
 *   7     endpoint's policy in error for the direction     drop POLICY_ERROR
 *   8     a deny entry matches, for this peer or any peer  drop POLICY_DENY
 *   9     an allow entry matches, this peer or any peer    pass, tracked
 *   10    otherwise                                        drop POLICY_DEFAULT
 *   10b   passed by 6-9, a new inbound TCP flow to a port      drop L7_DROP_BYPASS
 *         steered to the HTTP proxy (l7.h): it went around
 *         the proxy
 *
 * Every lookup reads the generation the packet started with (the lowest
 * bit of the policy revision, read once per packet): see bpfwall_maps.h.
 *
 * Within one (local identity, peer, direction) the trie returns the longest
 * match; the compiler removes every allow that a broader deny covers, so the
 * longest match is a deny whenever any deny covers the packet. Across the
 * peer-specific and the any-peer lookups, deny wins (step 8 before 9).
 */
#ifndef BPFWALL_POLICY_H
#define BPFWALL_POLICY_H

#include "bpfwall_maps.h"
#include "parse.h"

/* The peer's identity in generation g: the exact hash, then the trie. */
static __always_inline __u32 ipcache_identity(const struct flow *f, __u32 g)
{
	struct ipcache_key key = {};
	struct ipcache_value *v;
	__u32 identity = 0;

	key.family = f->family;
	key.prefixlen = BPFWALL_IPCACHE_PREFIX_BASE + (f->family == BPFWALL_FAMILY_IPV4 ? 32 : 128);
	__builtin_memcpy(key.addr, f->remote_addr, 16);
	/* Host addresses: one hash lookup; prefixes: the trie (see bpfwall_maps.h). */
	v = bpf_map_lookup_elem(&bpfwall_ipcache_exact_v2, &key);
	if (v)
		identity = v->identity[g & 1];
	if (!identity) {
		v = bpf_map_lookup_elem(&bpfwall_ipcache_v2, &key);
		if (v)
			identity = v->identity[g & 1];
	}
	return identity ? identity : BPFWALL_IDENTITY_WORLD;
}

static __always_inline __u8 policy_lookup(__u32 local_identity, __u32 peer_identity, __u8 direction,
					 const struct flow *f, __u32 g)
{
	struct policy_key key = {
		.prefixlen = BPFWALL_POLICY_PREFIX_FULL,
		.local_identity = local_identity,
		.peer_identity = peer_identity,
		.direction = direction,
		.protocol = f->protocol,
		.dport_be = f->dport_be,
	};
	/* An exact (protocol, port) entry is the longest match: hash first. */
	struct policy_value *v = bpf_map_lookup_elem(&bpfwall_policy_exact_v2, &key);
	__u8 verdict = v ? v->verdict[g & 1] : 0;

	if (!verdict) {
		v = bpf_map_lookup_elem(&bpfwall_policy_v2, &key);
		verdict = v ? v->verdict[g & 1] : 0;
	}
	return verdict;
}

/* Steps 6 to 10 in generation g. Returns 0 to pass, or a BPFWALL_DROP_* reason;
 * *peer_out gets the peer's identity when it was looked up (else it stays). */
static __always_inline __u32 policy_decide(const struct endpoint_state *ep, __u8 direction, const struct flow *f,
					   __u32 g, __u32 *peer_out)
{
	__u32 enforce = direction == BPFWALL_DIR_INGRESS ? BPFWALL_EP_ENFORCE_INGRESS : BPFWALL_EP_ENFORCE_EGRESS;
	__u32 error = direction == BPFWALL_DIR_INGRESS ? BPFWALL_EP_ERROR_INGRESS : BPFWALL_EP_ERROR_EGRESS;
	__u32 peer;
	__u8 specific, wildcard;

	if (!(ep->flags & (enforce | error)))
		return 0;
	if (ep->flags & error)
		return BPFWALL_DROP_POLICY_ERROR;
	peer = ipcache_identity(f, g);
	*peer_out = peer;
	specific = policy_lookup(ep->identity, peer, direction, f, g);
	wildcard = policy_lookup(ep->identity, BPFWALL_IDENTITY_ANY, direction, f, g);
	if (specific == BPFWALL_VERDICT_DENY || wildcard == BPFWALL_VERDICT_DENY)
		return BPFWALL_DROP_POLICY_DENY;
	if (specific == BPFWALL_VERDICT_ALLOW || wildcard == BPFWALL_VERDICT_ALLOW)
		return 0;
	return BPFWALL_DROP_POLICY_DEFAULT;
}

#endif /* BPFWALL_POLICY_H */
