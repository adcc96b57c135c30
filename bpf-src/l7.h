/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * l7.h: connections to ports that HTTP rules police (see bpfwall_maps.h,
 * "L7"): which ports are steered to bpfwall's proxy, the step of the
 * decision table that drops a flow that went around it, and the sk_lookup
 * decision that hands connections to the proxy.
 *
 * Decision for a TCP connection arriving in a steered container's network
 * namespace (sk_lookup, before any socket is chosen):
 *
 *   condition                                           result
 *   not TCP, on the loopback device, or from a          not steered (the
 *   loopback address (127.0.0.0/8, ::1)                 proxy's own hop: it
 *                                                       connects from one)
 *   local address is no steered container's             not steered
 *   the container is no endpoint in the generation      not steered
 *   its (identity, port) is not steered                 not steered
 *   policy.h's steps 6-10 drop it                       not steered: the
 *                                                       container's cgroup
 *                                                       program drops it
 *                                                       as it always has
 *   no proxy socket for the container and family        drop L7_DROP_NO_PROXY
 *   the kernel refuses the socket                       drop L7_DROP_ASSIGN
 *   otherwise                                           to the proxy
 *
 * A connection not steered meets the container's own cgroup program, whose
 * step 10b drops a new flow to a steered port (L7_DROP_BYPASS): nothing
 * reaches a steered port except through the proxy.
 */
#ifndef BPFWALL_L7_H
#define BPFWALL_L7_H

#include "bpfwall_maps.h"
#include "parse.h"
#include "endpoint.h"
#include "conntrack.h"
#include "policy.h"

#ifndef LOOPBACK_IFINDEX
#define LOOPBACK_IFINDEX 1
#endif
#define L7_AF_INET 2
#define L7_AF_INET6 10

/* Is (identity, TCP port) steered to the proxy in generation g? */
static __always_inline int l7_steered(__u32 identity, __be16 dport_be, __u32 g)
{
	struct policy_key key = {
		.prefixlen = BPFWALL_POLICY_PREFIX_FULL,
		.local_identity = identity,
		.peer_identity = BPFWALL_IDENTITY_PROXY,
		.direction = BPFWALL_DIR_INGRESS,
		.protocol = IPPROTO_TCP,
		.dport_be = dport_be,
	};
	struct policy_value *v = bpf_map_lookup_elem(&bpfwall_policy_exact_v2, &key);

	return v && v->verdict[g & 1] == BPFWALL_VERDICT_PROXY;
}

/* Host-wide L7 drops, per reason (BPFWALL_L7_DROP_*); other reasons are not counted here. */
static __always_inline void count_l7_drop(__u32 reason)
{
	__u64 *n;

	if (reason < BPFWALL_L7_DROP_NO_PROXY)
		return;
	n = bpf_map_lookup_elem(&bpfwall_l7_drops_v1, &reason);
	if (n)
		*n += 1;
}

/*
 * Step 10b, after policy lets a flow through: a new inbound TCP flow to a
 * steered port that meets the container's own cgroup program did not come
 * through the proxy. Returns BPFWALL_L7_DROP_BYPASS for it, else 0.
 */
static __always_inline __u32 l7_bypass(const struct endpoint_state *ep, __u8 direction, const struct flow *f,
				       __u32 g)
{
	if (direction != BPFWALL_DIR_INGRESS || f->protocol != IPPROTO_TCP)
		return 0;
	return l7_steered(ep->identity, f->dport_be, g) ? BPFWALL_L7_DROP_BYPASS : 0;
}

/* A dropped connection at lookup: counted for the reason and the endpoint. */
static __always_inline int l7_drop(const struct endpoint_info *ep, __u32 reason)
{
	count_l7_drop(reason);
	count_endpoint(ep, BPFWALL_DIR_INGRESS, 0, 0);
	return SK_DROP;
}

/* The sk_lookup decision (the table above). */
static __always_inline int l7_lookup(struct bpf_sk_lookup *ctx)
{
	struct l7_address_key akey = {};
	struct l7_address_value *owner;
	struct endpoint_key ekey;
	struct endpoint_info *ep;
	struct endpoint_state state;
	struct flow f = {};
	struct bpf_sock *sk;
	__u32 revision, g, slot, v6, peer = 0;
	long err;

	if (ctx->protocol != IPPROTO_TCP || ctx->ingress_ifindex == LOOPBACK_IFINDEX)
		return SK_PASS;
	if (ctx->family == L7_AF_INET) {
		__u32 local = ctx->local_ip4, remote = ctx->remote_ip4;

		/* 127.0.0.0/8: only this namespace sends from there. */
		if ((bpf_ntohl(remote) >> 24) == 127)
			return SK_PASS;
		akey.family = BPFWALL_FAMILY_IPV4;
		__builtin_memcpy(akey.addr, &local, 4);
		__builtin_memcpy(f.local_addr, &local, 4);
		__builtin_memcpy(f.remote_addr, &remote, 4);
		v6 = 0;
	} else if (ctx->family == L7_AF_INET6) {
		__u32 local[4], remote[4];

#pragma unroll
		for (int i = 0; i < 4; i++) {
			local[i] = ctx->local_ip6[i];
			remote[i] = ctx->remote_ip6[i];
		}
		/* ::1: only this namespace sends from there. */
		if (!remote[0] && !remote[1] && !remote[2] && remote[3] == bpf_htonl(1))
			return SK_PASS;
		akey.family = BPFWALL_FAMILY_IPV6;
		__builtin_memcpy(akey.addr, local, 16);
		__builtin_memcpy(f.local_addr, local, 16);
		__builtin_memcpy(f.remote_addr, remote, 16);
		v6 = 1;
	} else {
		return SK_PASS;
	}
	owner = bpf_map_lookup_elem(&bpfwall_l7_addresses_v1, &akey);
	if (!owner)
		return SK_PASS;
	revision = policy_revision_now();
	g = revision & 1;
	ekey.cgroup_id = owner->cgroup_id;
	ep = endpoint_in(&ekey, g);
	if (!ep)
		return SK_PASS;
	state = ep->gen[g & 1];
	f.family = akey.family;
	f.protocol = IPPROTO_TCP;
	f.dport_be = bpf_htons((__u16)ctx->local_port);
	f.local_port_be = f.dport_be;
	f.remote_port_be = ctx->remote_port;
	if (!l7_steered(state.identity, f.dport_be, g))
		return SK_PASS;
	if (policy_decide(&state, BPFWALL_DIR_INGRESS, &f, g, &peer))
		return SK_PASS;
	slot = ep->endpoint_id * 2 + v6;
	sk = bpf_map_lookup_elem(&bpfwall_l7_sockets_v1, &slot);
	if (!sk)
		return l7_drop(ep, BPFWALL_L7_DROP_NO_PROXY);
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return l7_drop(ep, BPFWALL_L7_DROP_ASSIGN);
	count_endpoint(ep, BPFWALL_DIR_INGRESS, 1, 0);
	return SK_PASS;
}

#endif /* BPFWALL_L7_H */
