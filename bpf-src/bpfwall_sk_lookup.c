// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * bpfwall's sk_lookup program, attached to the network namespace of each
 * container whose ports HTTP rules police: hands their connections to
 * bpfwall's proxy. The logic is in l7.h.
 */
#include "bpfwall_maps.h"
#include "l7.h"

SEC("sk_lookup")
int bpfwall_l7_lookup(struct bpf_sk_lookup *ctx)
{
	return l7_lookup(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
