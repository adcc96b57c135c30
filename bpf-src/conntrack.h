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
	return now - v->last_seen_ns < lifetime;
}

static __always_inline int flow_opens_connection(const struct flow *f)
{
	if (f->protocol == IPPROTO_TCP)
		return (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	return 0;
}

/*
 * Returns 1 when the packet is a reply of a live flow the endpoint opened in
 * the other direction. A TCP SYN is never a reply: a new connection that
 * reuses an old tuple from the other side is policed as new.
 */
static __always_inline int ct_is_reply(const struct ct_key *key, const struct flow *f, __u8 direction, __u64 now)
{
	struct ct_value *v = bpf_map_lookup_elem(&bpfwall_ct_v1, key);

	if (!v || !ct_is_live(key, v, now))
		return 0;
	if (v->origin_direction == direction || flow_opens_connection(f))
		return 0;
	if (f->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		v->flags |= BPFWALL_CT_TCP_CLOSING;
	if (now - v->last_seen_ns > CT_REFRESH_INTERVAL)
		v->last_seen_ns = now;
	return 1;
}

/* Records (or refreshes) a flow that policy allowed in this direction. */
static __always_inline void ct_track(const struct ct_key *key, const struct flow *f, __u8 direction, __u64 now)
{
	struct ct_value *v = bpf_map_lookup_elem(&bpfwall_ct_v1, key);
	struct ct_value fresh = {};

	if (v && v->origin_direction == direction && ct_is_live(key, v, now) && !flow_opens_connection(f)) {
		if (f->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
			v->flags |= BPFWALL_CT_TCP_CLOSING;
		if (now - v->last_seen_ns > CT_REFRESH_INTERVAL)
			v->last_seen_ns = now;
		return;
	}
	fresh.last_seen_ns = now;
	fresh.origin_direction = direction;
	if (f->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		fresh.flags |= BPFWALL_CT_TCP_CLOSING;
	bpf_map_update_elem(&bpfwall_ct_v1, key, &fresh, BPF_ANY);
}

#endif /* BPFWALL_CONNTRACK_H */
