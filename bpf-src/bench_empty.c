// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The baselines of the benchmarks: cgroup/skb programs that pass every
 * packet and do nothing else (BPF_PROG_TEST_RUN's floor, and the "bpf-empty"
 * configuration of scripts/bench-datapath.sh: the cost of the hook itself).
 * Not loaded by the daemon. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("cgroup_skb/ingress")
int bench_empty(struct __sk_buff *skb)
{
	return 1;
}

SEC("cgroup_skb/egress")
int bench_empty_egress(struct __sk_buff *skb)
{
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
