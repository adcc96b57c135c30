/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * events.h: what the datapath tells the daemon about its decisions, off the
 * fast path: one flow event per new-flow decision (allowed, audit) and per
 * drop, rate-limited per (endpoint, peer identity, direction, protocol,
 * port, kind, reason) so a flood cannot swamp the daemon; host-wide
 * counters (forwarded, decisions, drops by reason and direction, events
 * sent and lost) in a per-CPU map, exact whatever the events do. A packet
 * of an established flow costs one per-CPU counter here and nothing else.
 */
#ifndef BPFWALL_EVENTS_H
#define BPFWALL_EVENTS_H

#include "bpfwall_maps.h"
#include "parse.h"
#include "policy.h"

static __always_inline struct metrics_counters *metrics_now(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&bpfwall_metrics_v1, &zero);
}

static __always_inline void metrics_forwarded(__u8 direction)
{
	struct metrics_counters *m = metrics_now();

	if (m && direction <= BPFWALL_DIR_EGRESS)
		m->forwarded[direction] += 1;
}

static __always_inline void metrics_verdict(__u8 kind, __u8 direction)
{
	struct metrics_counters *m = metrics_now();

	if (m && kind < BPFWALL_EVENT_KINDS && direction <= BPFWALL_DIR_EGRESS)
		m->verdicts[kind][direction] += 1;
}

static __always_inline void metrics_drop(__u32 reason, __u8 direction)
{
	struct metrics_counters *m = metrics_now();

	if (m && reason < BPFWALL_DROP_REASON_MAX && direction <= BPFWALL_DIR_EGRESS)
		m->drops[reason][direction] += 1;
}

/* Does the endpoint's audit mode let this drop pass? Policy drops only
 * (see BPFWALL_EP_AUDIT). */
static __always_inline int audit_lets_pass(const struct endpoint_state *state, __u32 reason)
{
	return (state->flags & BPFWALL_EP_AUDIT) &&
	       (reason == BPFWALL_DROP_POLICY_DENY || reason == BPFWALL_DROP_POLICY_DEFAULT);
}

/* Hands a filled event to the daemon. Not inlined: its prototype puts
 * struct flow_event in the object's BTF, where the layout test finds it
 * (a ring buffer map carries no value type); it runs only when an event is
 * sent. */
static __attribute__((noinline)) int flow_event_submit(struct flow_event *e)
{
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/*
 * Reports one decision. `peer` 0 is looked up here (a direction without
 * rules decides without it). Sends at most one event per key and interval;
 * the others are counted and ride on the next one sent.
 */
static __always_inline void flow_event(__u8 kind, __u8 direction, __u32 reason, const struct endpoint_info *ep,
				       __u32 local_identity, const struct flow *f, __u32 peer, __u32 revision,
				       __u32 g)
{
	__u32 zero = 0, suppressed = 0;
	struct events_config *config = bpf_map_lookup_elem(&bpfwall_events_config_v1, &zero);
	struct event_limit_key key = {};
	struct event_limit_value *last;
	struct metrics_counters *m;
	struct flow_event *e;
	__u64 now;

	if (!config || !config->enabled)
		return;
	if (!peer && f->family)
		peer = ipcache_identity(f, g);
	key.endpoint_id = ep ? ep->endpoint_id : 0;
	key.peer_identity = peer;
	key.dport_be = f->dport_be;
	key.direction = direction;
	key.protocol = f->protocol;
	key.kind = kind;
	key.reason = reason;
	now = bpf_ktime_get_ns();
	last = bpf_map_lookup_elem(&bpfwall_event_limit_v1, &key);
	if (last) {
		if (config->interval_ns && now - last->last_sent_ns < config->interval_ns) {
			__sync_fetch_and_add(&last->suppressed, 1);
			return;
		}
		suppressed = last->suppressed;
		if (suppressed)
			__sync_fetch_and_add(&last->suppressed, -suppressed);
		last->last_sent_ns = now;
	} else {
		struct event_limit_value fresh = { .last_sent_ns = now };

		bpf_map_update_elem(&bpfwall_event_limit_v1, &key, &fresh, BPF_ANY);
	}
	m = metrics_now();
	e = bpf_ringbuf_reserve(&bpfwall_events_v1, sizeof(*e), 0);
	if (!e) {
		if (m)
			m->events_lost += 1 + suppressed;
		return;
	}
	e->time_ns = now;
	e->endpoint_id = key.endpoint_id;
	e->local_identity = local_identity;
	e->peer_identity = peer;
	e->policy_revision = revision;
	e->suppressed = suppressed;
	e->kind = kind;
	e->direction = direction;
	e->reason = reason;
	e->protocol = f->protocol;
	e->family = f->family;
	e->tcp_flags = f->tcp_flags;
	e->dport_be = f->dport_be;
	e->local_port_be = f->local_port_be;
	e->remote_port_be = f->remote_port_be;
	__builtin_memcpy(e->local_addr, f->local_addr, 16);
	__builtin_memcpy(e->remote_addr, f->remote_addr, 16);
	flow_event_submit(e);
	if (m)
		m->events_sent += 1;
}

#endif /* BPFWALL_EVENTS_H */
