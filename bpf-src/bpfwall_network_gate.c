// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The network plugin's gate: two tc programs on the host end of every veth
 * the plugin makes. The logic, and the table of what passes, is in
 * network_gate.h; the maps are in bpfwall_maps.h (the netgate section).
 */
#include "bpfwall_maps.h"
#include "network_gate.h"

SEC("classifier")
int bpfwall_netgate_in(struct __sk_buff *skb)
{
	return netgate_from_container(skb);
}

SEC("classifier")
int bpfwall_netgate_out(struct __sk_buff *skb)
{
	return netgate_to_container(skb);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
