/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * network_gate.h: the network plugin's gate on the host end of each veth
 * (see the netgate section of bpfwall_maps.h). tc programs: data starts at
 * the Ethernet header.
 *
 * From the container (the host end's ingress), in order:
 *
 *   no entry for the interface           drop UNKNOWN
 *   ARP  sender address not its own       drop SPOOFED   (0.0.0.0 allowed: a probe)
 *        reply                            pass           (answers the host)
 *        request for its own address      pass
 *        request inside its network       answered here  (host end's MAC)
 *        anything else                    drop NEIGHBOUR
 *   ND   (ICMPv6 133, 135, 136) from its own, a link-local or (NS) the
 *        unspecified address, else        drop SPOOFED
 *        NS for an address of its network other than its own, from a
 *        configured address               answered here  (host end's MAC)
 *        NA for an address not its own or link-local   drop SPOOFED
 *        other RS, NS and NA              pass
 *        RA, redirects, MLD               drop NEIGHBOUR
 *   IPv6 other, from a link-local or the unspecified address (MLD behind
 *        a hop-by-hop header)             drop NEIGHBOUR
 *   IPv4/IPv6 source not its own address  drop SPOOFED
 *        not bound (no OPEN flag)         drop CLOSED
 *        internal, destination outside    drop INTERNAL
 *        otherwise                        pass (its cgroup programs police it)
 *   other EtherTypes, or a family the network lacks   drop PROTOCOL
 *
 * To the container (the host end's egress): ARP and ND pass; IP is dropped
 * CLOSED until bound, INTERNAL when it comes from outside an internal
 * network; other EtherTypes are dropped PROTOCOL.
 */
#ifndef BPFWALL_NETWORK_GATE_H
#define BPFWALL_NETWORK_GATE_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include "bpfwall_maps.h"

#define NETGATE_ARPOP_REQUEST 1
#define NETGATE_ARPOP_REPLY 2
#define NETGATE_ND_ROUTER_SOLICIT 133
#define NETGATE_ND_NEIGHBOR_SOLICIT 135
#define NETGATE_ND_NEIGHBOR_ADVERT 136
#define NETGATE_ND_REDIRECT 137
#define NETGATE_ND_OPT_SOURCE_LL 1
#define NETGATE_ND_OPT_TARGET_LL 2
/* NA flags: solicited, override. */
#define NETGATE_NA_FLAGS 0x60000000

#define NETGATE_OFF_IP ETH_HLEN
#define NETGATE_OFF_L4V6 (ETH_HLEN + 40)

/* ARP for Ethernet and IPv4. */
struct netgate_arp {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[6];
	__u8 spa[4];
	__u8 tha[6];
	__u8 tpa[4];
} __attribute__((packed));

/* The part of an IPv6 header the gate reads. */
struct netgate_ip6 {
	__be32 vtc_flow;
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
};

/* A neighbour advertisement with its target link-layer address option. */
struct netgate_na {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__be32 flags;
	__u8 target[16];
	__u8 opt_type;
	__u8 opt_len;
	__u8 opt_mac[6];
};

/* The IPv6 pseudo-header of an ICMPv6 checksum. */
struct netgate_pseudo6 {
	__u8 saddr[16];
	__u8 daddr[16];
	__be32 len;
	__u8 zero[3];
	__u8 nexthdr;
};

static __always_inline int netgate_drop(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&bpfwall_netgate_drops_v1, &reason);

	if (n)
		*n += 1;
	return TC_ACT_SHOT;
}

static __always_inline int netgate_eq4(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static __always_inline int netgate_zero4(const __u8 *a)
{
	return (a[0] | a[1] | a[2] | a[3]) == 0;
}

static __always_inline int netgate_eq6(const __u8 *a, const __u8 *b)
{
	int diff = 0;

#pragma unroll
	for (int i = 0; i < 16; i++)
		diff |= a[i] ^ b[i];
	return diff == 0;
}

static __always_inline int netgate_zero6(const __u8 *a)
{
	int any = 0;

#pragma unroll
	for (int i = 0; i < 16; i++)
		any |= a[i];
	return any == 0;
}

/* fe80::/10 */
static __always_inline int netgate_link_local6(const __u8 *a)
{
	return a[0] == 0xfe && (a[1] & 0xc0) == 0x80;
}

/* Is addr (size bytes) inside prefix/len? */
static __always_inline int netgate_in_prefix(const __u8 *prefix, __u8 len, const __u8 *addr, int size)
{
#pragma unroll
	for (int i = 0; i < 16; i++) {
		int bits = (int)len - i * 8;
		__u8 mask;

		if (i >= size || bits <= 0)
			return 1;
		mask = bits >= 8 ? 0xff : (__u8)(0xff << (8 - bits));
		if ((addr[i] ^ prefix[i]) & mask)
			return 0;
	}
	return 1;
}

static __always_inline __u16 netgate_csum_fold(__s64 sum)
{
	__u64 s = (__u64)sum;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/* Turns an ARP request into the reply for its target, sent back out of
 * the interface it came in on. */
static __always_inline int netgate_answer_arp(struct __sk_buff *skb, const struct netgate_endpoint *ep,
					      struct netgate_arp *arp)
{
	__u8 eth[12];
	__u8 target[4];

	__builtin_memcpy(target, arp->tpa, 4);
	__builtin_memcpy(&eth[0], arp->sha, 6);
	__builtin_memcpy(&eth[6], ep->host_mac, 6);
	arp->op = bpf_htons(NETGATE_ARPOP_REPLY);
	__builtin_memcpy(arp->tha, arp->sha, 6);
	__builtin_memcpy(arp->tpa, arp->spa, 4);
	__builtin_memcpy(arp->sha, ep->host_mac, 6);
	__builtin_memcpy(arp->spa, target, 4);
	if (bpf_skb_store_bytes(skb, 0, eth, sizeof(eth), 0) < 0 ||
	    bpf_skb_store_bytes(skb, NETGATE_OFF_IP, arp, sizeof(*arp), 0) < 0)
		return netgate_drop(BPFWALL_NETGATE_DROP_MALFORMED);
	return bpf_redirect(skb->ifindex, 0);
}

static __always_inline int netgate_arp_from_container(struct __sk_buff *skb, const struct netgate_endpoint *ep)
{
	struct netgate_arp arp;

	if (bpf_skb_load_bytes(skb, NETGATE_OFF_IP, &arp, sizeof(arp)) < 0)
		return netgate_drop(BPFWALL_NETGATE_DROP_MALFORMED);
	if (arp.htype != bpf_htons(1) || arp.ptype != bpf_htons(ETH_P_IP) || arp.hlen != 6 || arp.plen != 4)
		return netgate_drop(BPFWALL_NETGATE_DROP_MALFORMED);
	if (!(ep->flags & BPFWALL_NETGATE_IPV4))
		return netgate_drop(BPFWALL_NETGATE_DROP_PROTOCOL);
	if (!netgate_eq4(arp.spa, ep->addr4) && !netgate_zero4(arp.spa))
		return netgate_drop(BPFWALL_NETGATE_DROP_SPOOFED);
	if (arp.op == bpf_htons(NETGATE_ARPOP_REPLY))
		return TC_ACT_OK;
	if (arp.op != bpf_htons(NETGATE_ARPOP_REQUEST))
		return netgate_drop(BPFWALL_NETGATE_DROP_NEIGHBOUR);
	if (netgate_eq4(arp.tpa, ep->addr4))
		return TC_ACT_OK;
	if (!netgate_zero4(arp.spa) && netgate_in_prefix(ep->subnet4, ep->subnet4_len, arp.tpa, 4))
		return netgate_answer_arp(skb, ep, &arp);
	return netgate_drop(BPFWALL_NETGATE_DROP_NEIGHBOUR);
}

/* Answers a neighbour solicitation for target with an advertisement from
 * the host end's MAC, sent back out of the interface it came in on.
 * icmp_len is the solicitation's ICMPv6 length: 24 (no option) or 32
 * (a source link-layer option); the answer has the same length. */
static __always_inline int netgate_answer_ns(struct __sk_buff *skb, const struct netgate_endpoint *ep,
					     const struct netgate_ip6 *ip6, const __u8 *target, __u32 icmp_len)
{
	struct netgate_pseudo6 pseudo = {};
	struct netgate_na na = {};
	struct netgate_ip6 out = {};
	__u8 eth[12];
	__s64 sum;

	if (bpf_skb_load_bytes(skb, 6, &eth[0], 6) < 0)
		return netgate_drop(BPFWALL_NETGATE_DROP_MALFORMED);
	__builtin_memcpy(&eth[6], ep->host_mac, 6);

	out.vtc_flow = bpf_htonl(0x60000000);
	out.payload_len = ip6->payload_len;
	out.nexthdr = IPPROTO_ICMPV6;
	out.hop_limit = 255;
	__builtin_memcpy(out.saddr, target, 16);
	__builtin_memcpy(out.daddr, ip6->saddr, 16);

	na.type = NETGATE_ND_NEIGHBOR_ADVERT;
	na.flags = bpf_htonl(NETGATE_NA_FLAGS);
	__builtin_memcpy(na.target, target, 16);
	na.opt_type = NETGATE_ND_OPT_TARGET_LL;
	na.opt_len = 1;
	__builtin_memcpy(na.opt_mac, ep->host_mac, 6);

	__builtin_memcpy(pseudo.saddr, out.saddr, 16);
	__builtin_memcpy(pseudo.daddr, out.daddr, 16);
	pseudo.len = bpf_htonl(icmp_len);
	pseudo.nexthdr = IPPROTO_ICMPV6;
	sum = bpf_csum_diff(0, 0, (__be32 *)&pseudo, sizeof(pseudo), 0);
	if (sum < 0)
		return netgate_drop(BPFWALL_NETGATE_DROP_MALFORMED);
	if (icmp_len == 32)
		sum = bpf_csum_diff(0, 0, (__be32 *)&na, 32, (__wsum)sum);
	else
		sum = bpf_csum_diff(0, 0, (__be32 *)&na, 24, (__wsum)sum);
	if (sum < 0)
		return netgate_drop(BPFWALL_NETGATE_DROP_MALFORMED);
	na.checksum = netgate_csum_fold(sum);

	if (bpf_skb_store_bytes(skb, 0, eth, sizeof(eth), 0) < 0 ||
	    bpf_skb_store_bytes(skb, NETGATE_OFF_IP, &out, sizeof(out), 0) < 0)
		return netgate_drop(BPFWALL_NETGATE_DROP_MALFORMED);
	if (icmp_len == 32) {
		if (bpf_skb_store_bytes(skb, NETGATE_OFF_L4V6, &na, 32, 0) < 0)
			return netgate_drop(BPFWALL_NETGATE_DROP_MALFORMED);
	} else if (bpf_skb_store_bytes(skb, NETGATE_OFF_L4V6, &na, 24, 0) < 0) {
		return netgate_drop(BPFWALL_NETGATE_DROP_MALFORMED);
	}
	return bpf_redirect(skb->ifindex, 0);
}

/* ICMPv6 neighbour discovery from the container; -1: not ND, go on. */
static __always_inline int netgate_nd_from_container(struct __sk_buff *skb, const struct netgate_endpoint *ep,
						     const struct netgate_ip6 *ip6)
{
	__u8 icmp[24];
	__u8 type;
	__u32 icmp_len = bpf_ntohs(ip6->payload_len);
	int own_src = netgate_eq6(ip6->saddr, ep->addr6);
	int unspecified_src = netgate_zero6(ip6->saddr);

	if (bpf_skb_load_bytes(skb, NETGATE_OFF_L4V6, &type, 1) < 0)
		return netgate_drop(BPFWALL_NETGATE_DROP_MALFORMED);
	switch (type) {
	case NETGATE_ND_ROUTER_SOLICIT:
	case NETGATE_ND_NEIGHBOR_SOLICIT:
	case NETGATE_ND_NEIGHBOR_ADVERT:
		break;
	case NETGATE_ND_REDIRECT:
	case 134: /* router advertisement */
	case 130: /* MLD query, report, done; MLDv2 report */
	case 131:
	case 132:
	case 143:
		return netgate_drop(BPFWALL_NETGATE_DROP_NEIGHBOUR);
	default:
		return -1;
	}
	if (!own_src && !netgate_link_local6(ip6->saddr) && !(unspecified_src && type == NETGATE_ND_NEIGHBOR_SOLICIT))
		return netgate_drop(BPFWALL_NETGATE_DROP_SPOOFED);
	if (type == NETGATE_ND_ROUTER_SOLICIT)
		return TC_ACT_OK;
	if (icmp_len < 24 || bpf_skb_load_bytes(skb, NETGATE_OFF_L4V6, icmp, sizeof(icmp)) < 0)
		return netgate_drop(BPFWALL_NETGATE_DROP_MALFORMED);
	/* The target is at offset 8 in both NS and NA. */
	if (type == NETGATE_ND_NEIGHBOR_ADVERT) {
		if (netgate_eq6(&icmp[8], ep->addr6) || netgate_link_local6(&icmp[8]))
			return TC_ACT_OK;
		return netgate_drop(BPFWALL_NETGATE_DROP_SPOOFED);
	}
	if (netgate_eq6(&icmp[8], ep->addr6) || netgate_link_local6(&icmp[8]))
		return TC_ACT_OK;
	if (!unspecified_src && netgate_in_prefix(ep->subnet6, ep->subnet6_len, &icmp[8], 16)) {
		if (icmp_len == 24)
			return netgate_answer_ns(skb, ep, ip6, &icmp[8], 24);
		if (icmp_len == 32) {
			__u8 opt;

			if (bpf_skb_load_bytes(skb, NETGATE_OFF_L4V6 + 24, &opt, 1) < 0)
				return netgate_drop(BPFWALL_NETGATE_DROP_MALFORMED);
			if (opt == NETGATE_ND_OPT_SOURCE_LL)
				return netgate_answer_ns(skb, ep, ip6, &icmp[8], 32);
		}
	}
	return netgate_drop(BPFWALL_NETGATE_DROP_NEIGHBOUR);
}

static __always_inline int netgate_from_container(struct __sk_buff *skb)
{
	struct netgate_key key = { .ifindex = skb->ifindex };
	struct netgate_endpoint *ep = bpf_map_lookup_elem(&bpfwall_netgate_v1, &key);
	__be16 proto;

	if (!ep)
		return netgate_drop(BPFWALL_NETGATE_DROP_UNKNOWN);
	if (bpf_skb_load_bytes(skb, 12, &proto, sizeof(proto)) < 0)
		return netgate_drop(BPFWALL_NETGATE_DROP_MALFORMED);
	if (proto == bpf_htons(ETH_P_ARP))
		return netgate_arp_from_container(skb, ep);
	if (proto == bpf_htons(ETH_P_IP)) {
		__u8 hdr[20];

		if (!(ep->flags & BPFWALL_NETGATE_IPV4))
			return netgate_drop(BPFWALL_NETGATE_DROP_PROTOCOL);
		if (bpf_skb_load_bytes(skb, NETGATE_OFF_IP, hdr, sizeof(hdr)) < 0 || (hdr[0] >> 4) != 4)
			return netgate_drop(BPFWALL_NETGATE_DROP_MALFORMED);
		if (!netgate_eq4(&hdr[12], ep->addr4))
			return netgate_drop(BPFWALL_NETGATE_DROP_SPOOFED);
		if (!(ep->flags & BPFWALL_NETGATE_OPEN))
			return netgate_drop(BPFWALL_NETGATE_DROP_CLOSED);
		if ((ep->flags & BPFWALL_NETGATE_INTERNAL) &&
		    !netgate_in_prefix(ep->subnet4, ep->subnet4_len, &hdr[16], 4))
			return netgate_drop(BPFWALL_NETGATE_DROP_INTERNAL);
		return TC_ACT_OK;
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct netgate_ip6 ip6;
		int nd;

		if (!(ep->flags & BPFWALL_NETGATE_IPV6))
			return netgate_drop(BPFWALL_NETGATE_DROP_PROTOCOL);
		if (bpf_skb_load_bytes(skb, NETGATE_OFF_IP, &ip6, sizeof(ip6)) < 0 ||
		    (bpf_ntohl(ip6.vtc_flow) >> 28) != 6)
			return netgate_drop(BPFWALL_NETGATE_DROP_MALFORMED);
		if (ip6.nexthdr == IPPROTO_ICMPV6) {
			nd = netgate_nd_from_container(skb, ep, &ip6);
			if (nd >= 0)
				return nd;
		}
		/* Link-local and unspecified sources are the link's own business
		 * (MLD reports come with a hop-by-hop header): not passed, and
		 * not counted as spoofing. */
		if (!netgate_eq6(ip6.saddr, ep->addr6))
			return netgate_drop(netgate_link_local6(ip6.saddr) || netgate_zero6(ip6.saddr)
						    ? BPFWALL_NETGATE_DROP_NEIGHBOUR
						    : BPFWALL_NETGATE_DROP_SPOOFED);
		if (!(ep->flags & BPFWALL_NETGATE_OPEN))
			return netgate_drop(BPFWALL_NETGATE_DROP_CLOSED);
		if ((ep->flags & BPFWALL_NETGATE_INTERNAL) &&
		    !netgate_in_prefix(ep->subnet6, ep->subnet6_len, ip6.daddr, 16))
			return netgate_drop(BPFWALL_NETGATE_DROP_INTERNAL);
		return TC_ACT_OK;
	}
	return netgate_drop(BPFWALL_NETGATE_DROP_PROTOCOL);
}

static __always_inline int netgate_to_container(struct __sk_buff *skb)
{
	struct netgate_key key = { .ifindex = skb->ifindex };
	struct netgate_endpoint *ep = bpf_map_lookup_elem(&bpfwall_netgate_v1, &key);
	__be16 proto;

	if (!ep)
		return netgate_drop(BPFWALL_NETGATE_DROP_UNKNOWN);
	if (bpf_skb_load_bytes(skb, 12, &proto, sizeof(proto)) < 0)
		return netgate_drop(BPFWALL_NETGATE_DROP_MALFORMED);
	if (proto == bpf_htons(ETH_P_ARP))
		return TC_ACT_OK;
	if (proto == bpf_htons(ETH_P_IP)) {
		__u8 hdr[20];

		if (bpf_skb_load_bytes(skb, NETGATE_OFF_IP, hdr, sizeof(hdr)) < 0)
			return netgate_drop(BPFWALL_NETGATE_DROP_MALFORMED);
		if (!(ep->flags & BPFWALL_NETGATE_OPEN))
			return netgate_drop(BPFWALL_NETGATE_DROP_CLOSED);
		if ((ep->flags & BPFWALL_NETGATE_INTERNAL) &&
		    !netgate_in_prefix(ep->subnet4, ep->subnet4_len, &hdr[12], 4))
			return netgate_drop(BPFWALL_NETGATE_DROP_INTERNAL);
		return TC_ACT_OK;
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct netgate_ip6 ip6;

		if (bpf_skb_load_bytes(skb, NETGATE_OFF_IP, &ip6, sizeof(ip6)) < 0)
			return netgate_drop(BPFWALL_NETGATE_DROP_MALFORMED);
		if (ip6.nexthdr == IPPROTO_ICMPV6) {
			__u8 type;

			if (bpf_skb_load_bytes(skb, NETGATE_OFF_L4V6, &type, 1) < 0)
				return netgate_drop(BPFWALL_NETGATE_DROP_MALFORMED);
			if (type >= NETGATE_ND_ROUTER_SOLICIT && type <= NETGATE_ND_REDIRECT)
				return TC_ACT_OK;
		}
		if (!(ep->flags & BPFWALL_NETGATE_OPEN))
			return netgate_drop(BPFWALL_NETGATE_DROP_CLOSED);
		if ((ep->flags & BPFWALL_NETGATE_INTERNAL) &&
		    !netgate_in_prefix(ep->subnet6, ep->subnet6_len, ip6.saddr, 16))
			return netgate_drop(BPFWALL_NETGATE_DROP_INTERNAL);
		return TC_ACT_OK;
	}
	return netgate_drop(BPFWALL_NETGATE_DROP_PROTOCOL);
}

#endif /* BPFWALL_NETWORK_GATE_H */
