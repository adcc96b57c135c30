// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The baseline of the datapath microbenchmark: a cgroup/skb program that
 * passes every packet and does nothing else. Not loaded by the daemon. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("cgroup_skb/ingress")
int bench_empty(struct __sk_buff *skb)
{
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
