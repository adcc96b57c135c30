/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * conntrack.h: per-endpoint connection tracking. Runs before policy: a packet
 * of a flow that policy allowed at the current policy revision (either way)
 * passes without a policy lookup; a flow decided at an older revision is
 * decided again, in its opening direction, whichever way the packet goes, so
 * a revoked rule cuts both directions of a live flow.
 */
#ifndef BPFWALL_CONNTRACK_H
#define BPFWALL_CONNTRACK_H

#include "bpfwall_maps.h"
#include "parse.h"

#define NSEC_PER_SEC 1000000000ULL
#define CT_LIFETIME_TCP (BPFWALL_CT_LIFETIME_TCP_S * NSEC_PER_SEC)
#define CT_LIFETIME_TCP_OPENING (BPFWALL_CT_LIFETIME_TCP_OPENING_S * NSEC_PER_SEC)
#define CT_LIFETIME_TCP_CLOSING (BPFWALL_CT_LIFETIME_TCP_CLOSING_S * NSEC_PER_SEC)
#define CT_LIFETIME_OTHER (BPFWALL_CT_LIFETIME_OTHER_S * NSEC_PER_SEC)
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

/* The daemon's collector applies the same rule (hook/datapath/src/maps/conntrack.rs). */
static __always_inline int ct_is_live(const struct ct_key *key, const struct ct_value *v, __u64 now)
{
	__u64 lifetime = CT_LIFETIME_OTHER;

	if (v->flags & BPFWALL_CT_TCP_CLOSING)
		lifetime = CT_LIFETIME_TCP_CLOSING;
	else if (key->protocol == IPPROTO_TCP)
		lifetime = v->flags & BPFWALL_CT_SEEN_REPLY ? CT_LIFETIME_TCP : CT_LIFETIME_TCP_OPENING;
	/* Signed: an entry stamped by a finer clock may be a tick ahead of ours. */
	return (__s64)(now - v->last_seen_ns) < (__s64)lifetime;
}

static __always_inline int flow_opens_connection(const struct flow *f)
{
	if (f->protocol == IPPROTO_TCP)
		return (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	return 0;
}

/* The revision of the maps; its lowest bit is the active generation. */
static __always_inline __u32 policy_revision_now(void)
{
	__u32 zero = 0;
	struct policy_revision *r = bpf_map_lookup_elem(&bpfwall_policy_rev_v2, &zero);

	return r ? r->revision : 0;
}

static __always_inline void ct_refresh(struct ct_value *v, const struct flow *f, __u8 direction, __u64 now)
{
	__u8 flags = v->flags;

	if (f->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		flags |= BPFWALL_CT_TCP_CLOSING;
	if (direction != v->origin_direction)
		flags |= BPFWALL_CT_SEEN_REPLY;
	if (flags != v->flags)
		v->flags = flags;
	if ((__s64)(now - v->last_seen_ns) > (__s64)CT_REFRESH_INTERVAL)
		v->last_seen_ns = now;
}

#define CT_NEW 0     /* no usable entry: decide by policy in this direction */
#define CT_PASS 1    /* a flow policy allowed at this revision: pass */
#define CT_RECHECK 2 /* a flow decided at another revision: decide it again */
#define CT_REVOKED 3 /* a flow policy denied at this revision: drop */

/*
 * Classifies the packet against its conntrack entry *v (or none). A TCP
 * SYN is never part of a tracked flow: a new connection that reuses an old
 * tuple is decided as new. CT_PASS is only a cache of steps 6 to 10 for
 * the flow's opening direction: it holds while the maps are unchanged
 * since policy decided the flow, so it never lets through what a fresh
 * decision would drop.
 */
static __always_inline int ct_classify(struct ct_value *v, const struct ct_key *key, const struct flow *f,
				       __u8 direction, __u64 now, __u32 revision)
{
	if (!v || !ct_is_live(key, v, now) || flow_opens_connection(f))
		return CT_NEW;
	if (v->policy_revision != revision)
		return CT_RECHECK;
	if (v->flags & BPFWALL_CT_REVOKED)
		return CT_REVOKED;
	ct_refresh(v, f, direction, now);
	return CT_PASS;
}

/*
 * The flow as its opening packet looked, for deciding it again: the same
 * addresses, protocol and ports, and the opening packet's destination port
 * (or ICMP echo request type).
 */
static __always_inline void ct_origin_flow(struct flow *o, const struct ct_value *v, const struct flow *f)
{
	*o = *f;
	if (f->protocol == IPPROTO_ICMP)
		o->dport_be = bpf_htons(ICMP_ECHO);
	else if (f->protocol == IPPROTO_ICMPV6)
		o->dport_be = bpf_htons(ICMPV6_ECHO_REQUEST);
	else if (v->origin_direction == BPFWALL_DIR_EGRESS)
		o->dport_be = f->remote_port_be;
	else
		o->dport_be = f->local_port_be;
}

/* Records the outcome of deciding a tracked flow again. */
static __always_inline void ct_redecided(struct ct_value *v, const struct flow *f, __u8 direction, __u64 now,
					 __u32 revision, int allowed)
{
	v->policy_revision = revision;
	if (allowed) {
		v->flags &= ~BPFWALL_CT_REVOKED;
		ct_refresh(v, f, direction, now);
	} else {
		v->flags |= BPFWALL_CT_REVOKED;
	}
}

/* May this endpoint hold one more entry? (see bpfwall_maps.h) */
static __always_inline int ct_room_for(const struct endpoint_info *ep)
{
	__u32 zero = 0, idx = ep->endpoint_id;
	struct ct_config *config = bpf_map_lookup_elem(&bpfwall_ct_config_v2, &zero);
	__u32 *all = bpf_map_lookup_elem(&bpfwall_ct_used_v2, &zero);
	__u32 *mine = bpf_map_lookup_elem(&bpfwall_ct_used_v2, &idx);

	if (!config || !all || !mine || !idx)
		return 0;
	if (*mine >= ep->ct_limit)
		return 0;
	return *all < config->shared_limit || *mine < config->guaranteed;
}

static __always_inline void ct_count_new(const struct endpoint_info *ep)
{
	__u32 zero = 0, idx = ep->endpoint_id;
	__u32 *all = bpf_map_lookup_elem(&bpfwall_ct_used_v2, &zero);
	__u32 *mine = bpf_map_lookup_elem(&bpfwall_ct_used_v2, &idx);

	if (all)
		__sync_fetch_and_add(all, 1);
	if (mine)
		__sync_fetch_and_add(mine, 1);
}

/*
 * Records (or refreshes) a flow that policy allowed in this direction.
 * Returns 0 when it is tracked, -1 when it found no room (it passes, but
 * untracked: its replies are decided as new flows).
 */
static __always_inline int ct_track(struct ct_value *v, const struct ct_key *key, const struct flow *f,
				    const struct endpoint_info *ep, __u8 direction, __u64 now, __u32 revision)
{
	struct ct_value fresh = {};

	if (v && v->origin_direction == direction && ct_is_live(key, v, now) && !flow_opens_connection(f)) {
		v->policy_revision = revision;
		v->flags &= ~BPFWALL_CT_REVOKED;
		ct_refresh(v, f, direction, now);
		return 0;
	}
	fresh.last_seen_ns = now;
	fresh.origin_direction = direction;
	fresh.policy_revision = revision;
	if (f->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		fresh.flags |= BPFWALL_CT_TCP_CLOSING;
	if (v) {
		/* The tuple is tracked already (an expired flow, or one opened the
		 * other way): replace it in place, it is counted. */
		return bpf_map_update_elem(&bpfwall_ct_v2, key, &fresh, BPF_EXIST) ? -1 : 0;
	}
	if (!ct_room_for(ep))
		return -1;
	if (bpf_map_update_elem(&bpfwall_ct_v2, key, &fresh, BPF_NOEXIST))
		return -1;
	ct_count_new(ep);
	return 0;
}

#endif /* BPFWALL_CONNTRACK_H */
