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
 *   2     on loopback (ifindex 1) in the endpoint's netns  pass, untracked
 *   3     IP or L4 header unreadable                       drop MALFORMED
 *   4     cgroup not in bpfwall_endpoints_v1               drop UNKNOWN_ENDPOINT
 *   5     conntrack: reply of a live flow opened the       pass
 *         other way (a TCP SYN is never a reply)
 *   5b    conntrack: a live flow in its origin direction   pass (a cache of 6-10:
 *         that policy allowed at the current policy         same answer, no
 *         revision (not a TCP SYN)                          lookups)
 *   6     direction not enforced for the endpoint          pass, tracked
 *   7     endpoint's policy in error for the direction     drop POLICY_ERROR
 *   8     a deny entry matches, for this peer or any peer  drop POLICY_DENY
 *   9     an allow entry matches, this peer or any peer    pass, tracked
 *   10    otherwise                                        drop POLICY_DEFAULT
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

static __always_inline __u32 ipcache_identity(const struct flow *f)
{
	struct ipcache_key key = {};
	struct ipcache_value *v;

	key.family = f->family;
	key.prefixlen = BPFWALL_IPCACHE_PREFIX_BASE + (f->family == BPFWALL_FAMILY_IPV4 ? 32 : 128);
	__builtin_memcpy(key.addr, f->remote_addr, 16);
	/* Host addresses: one hash lookup; prefixes: the trie (see bpfwall_maps.h). */
	v = bpf_map_lookup_elem(&bpfwall_ipcache_exact_v1, &key);
	if (!v)
		v = bpf_map_lookup_elem(&bpfwall_ipcache_v1, &key);
	return v ? v->identity : BPFWALL_IDENTITY_WORLD;
}

static __always_inline __u8 policy_lookup(__u32 local_identity, __u32 peer_identity, __u8 direction,
					 const struct flow *f)
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
	struct policy_value *v = bpf_map_lookup_elem(&bpfwall_policy_exact_v1, &key);

	if (!v)
		v = bpf_map_lookup_elem(&bpfwall_policy_v1, &key);
	return v ? v->verdict : 0;
}

/* Steps 6 to 10. Returns 0 to pass, or a BPFWALL_DROP_* reason. */
static __always_inline __u32 policy_decide(const struct endpoint_info *ep, __u8 direction, const struct flow *f)
{
	__u32 enforce = direction == BPFWALL_DIR_INGRESS ? BPFWALL_EP_ENFORCE_INGRESS : BPFWALL_EP_ENFORCE_EGRESS;
	__u32 error = direction == BPFWALL_DIR_INGRESS ? BPFWALL_EP_ERROR_INGRESS : BPFWALL_EP_ERROR_EGRESS;
	__u32 peer;
	__u8 specific, wildcard;

	if (!(ep->flags & (enforce | error)))
		return 0;
	if (ep->flags & error)
		return BPFWALL_DROP_POLICY_ERROR;
	peer = ipcache_identity(f);
	specific = policy_lookup(ep->identity, peer, direction, f);
	wildcard = policy_lookup(ep->identity, BPFWALL_IDENTITY_ANY, direction, f);
	if (specific == BPFWALL_VERDICT_DENY || wildcard == BPFWALL_VERDICT_DENY)
		return BPFWALL_DROP_POLICY_DENY;
	if (specific == BPFWALL_VERDICT_ALLOW || wildcard == BPFWALL_VERDICT_ALLOW)
		return 0;
	return BPFWALL_DROP_POLICY_DEFAULT;
}

#endif /* BPFWALL_POLICY_H */
