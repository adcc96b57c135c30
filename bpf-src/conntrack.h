/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * conntrack.h: per-endpoint connection tracking. Runs before policy: a packet
 * that answers a flow the endpoint already allowed (the reply direction of an
 * entry) passes without a policy lookup.
 */
#ifndef BPFWALL_CONNTRACK_H
#define BPFWALL_CONNTRACK_H

#include "bpfwall_maps.h"
#include "parse.h"

#define NSEC_PER_SEC 1000000000ULL
/* Lifetimes since the last packet, after Cilium's defaults. */
#define CT_LIFETIME_TCP (21600ULL * NSEC_PER_SEC)
#define CT_LIFETIME_TCP_CLOSING (10ULL * NSEC_PER_SEC)
#define CT_LIFETIME_OTHER (60ULL * NSEC_PER_SEC)
/* last_seen is rewritten at most this often, to keep writes off the fast path. */
#define CT_REFRESH_INTERVAL NSEC_PER_SEC

static __always_inline void ct_key_from_flow(struct ct_key *key, const struct flow *f, __u32 endpoint_id)
{
	__builtin_memset(key, 0, sizeof(*key));
	__builtin_memcpy(key->local_addr, f->local_addr, 16);
	__builtin_memcpy(key->remote_addr, f->remote_addr, 16);
	key->local_port_be = f->local_port_be;
	key->remote_port_be = f->remote_port_be;
	key->protocol = f->protocol;
	key->family = f->family;
	key->endpoint_id = endpoint_id;
}

static __always_inline int ct_is_live(const struct ct_key *key, const struct ct_value *v, __u64 now)
{
	__u64 lifetime = CT_LIFETIME_OTHER;

	if (v->flags & BPFWALL_CT_TCP_CLOSING)
		lifetime = CT_LIFETIME_TCP_CLOSING;
	else if (key->protocol == IPPROTO_TCP)
		lifetime = CT_LIFETIME_TCP;
	/* Signed: an entry stamped by a finer clock may be a tick ahead of ours. */
	return (__s64)(now - v->last_seen_ns) < (__s64)lifetime;
}

static __always_inline int flow_opens_connection(const struct flow *f)
{
	if (f->protocol == IPPROTO_TCP)
		return (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	return 0;
}

/* The revision of the maps every cached decision is checked against. */
static __always_inline __u32 policy_revision_now(void)
{
	__u32 zero = 0;
	struct policy_revision *r = bpf_map_lookup_elem(&bpfwall_policy_rev_v1, &zero);

	return r ? r->revision : 0;
}

static __always_inline void ct_refresh(struct ct_value *v, const struct flow *f, __u64 now)
{
	if (f->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		v->flags |= BPFWALL_CT_TCP_CLOSING;
	if ((__s64)(now - v->last_seen_ns) > (__s64)CT_REFRESH_INTERVAL)
		v->last_seen_ns = now;
}

#define CT_NEW 0         /* no usable entry: decide by policy */
#define CT_REPLY 1       /* a reply of a live flow opened the other way */
#define CT_ESTABLISHED 2 /* a live flow in its origin direction, allowed at this revision */

/*
 * Classifies the packet against its conntrack entry *v (or none). A TCP
 * SYN is never a reply nor established: a new connection that reuses an
 * old tuple is policed as new. CT_ESTABLISHED is only a cache of steps 6
 * to 10: it holds while the maps are unchanged since policy allowed the
 * flow, so it never lets through what a fresh decision would drop.
 */
static __always_inline int ct_classify(struct ct_value *v, const struct ct_key *key, const struct flow *f,
				       __u8 direction, __u64 now, __u32 revision)
{
	if (!v || !ct_is_live(key, v, now) || flow_opens_connection(f))
		return CT_NEW;
	if (v->origin_direction != direction) {
		ct_refresh(v, f, now);
		return CT_REPLY;
	}
	if (v->policy_revision == revision) {
		ct_refresh(v, f, now);
		return CT_ESTABLISHED;
	}
	return CT_NEW;
}

/* Records (or refreshes) a flow that policy allowed in this direction. */
static __always_inline void ct_track(struct ct_value *v, const struct ct_key *key, const struct flow *f,
				     __u8 direction, __u64 now, __u32 revision)
{
	struct ct_value fresh = {};

	if (v && v->origin_direction == direction && ct_is_live(key, v, now) && !flow_opens_connection(f)) {
		v->policy_revision = revision;
		ct_refresh(v, f, now);
		return;
	}
	fresh.last_seen_ns = now;
	fresh.origin_direction = direction;
	fresh.policy_revision = revision;
	if (f->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		fresh.flags |= BPFWALL_CT_TCP_CLOSING;
	bpf_map_update_elem(&bpfwall_ct_v1, key, &fresh, BPF_ANY);
}

#endif /* BPFWALL_CONNTRACK_H */
