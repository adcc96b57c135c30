/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* parse.h: read an skb (cgroup/skb: data starts at the IP header) into a flow. */
#ifndef BPFWALL_PARSE_H
#define BPFWALL_PARSE_H

#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include "bpfwall_maps.h"

/*
 * At most this many IPv6 extension headers are walked; a packet with more is
 * dropped (BPFWALL_DROP_EXT_HEADERS) rather than decided on a guess.
 */
#define IPV6_MAX_EXT_HEADERS 8

/* parse_flow's results. */
#define PARSE_OK 0
#define PARSE_NOT_IP 1         /* neither IPv4 nor IPv6: passed */
#define PARSE_MALFORMED (-1)   /* a header could not be read */
#define PARSE_EXT_HEADERS (-2) /* more IPv6 extension headers than the bound */

#ifndef IPPROTO_MH
#define IPPROTO_MH 135
#endif

/* From linux/icmp.h and linux/icmpv6.h, which pull in libc headers. */
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY 129

/* One packet, seen from the endpoint: "local" is the container's side. */
struct flow {
	__u8 local_addr[16];
	__u8 remote_addr[16];
	__be16 local_port_be;
	__be16 remote_port_be;
	__be16 dport_be; /* destination port (or ICMP type) of this packet */
	__u8 protocol;
	__u8 family;
	__u8 tcp_flags;  /* TCP_FLAG_* below; 0 for other protocols */
	__u8 is_icmp_request; /* echo request */
	__u8 pad[2];
};

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* Reads ports (or ICMP type/id) at offset l4 into the flow, oriented by direction. */
static __always_inline int parse_l4(struct __sk_buff *skb, __u32 l4, __u8 direction, struct flow *f)
{
	__be16 sport = 0, dport = 0;

	switch (f->protocol) {
	case IPPROTO_TCP: {
		__u8 hdr[14];

		if (bpf_skb_load_bytes(skb, l4, hdr, sizeof(hdr)) < 0)
			return PARSE_MALFORMED;
		__builtin_memcpy(&sport, &hdr[0], 2);
		__builtin_memcpy(&dport, &hdr[2], 2);
		f->tcp_flags = hdr[13];
		break;
	}
	case IPPROTO_UDP: {
		struct udphdr uh;

		if (bpf_skb_load_bytes(skb, l4, &uh, sizeof(uh)) < 0)
			return PARSE_MALFORMED;
		sport = uh.source;
		dport = uh.dest;
		break;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		/* type, code, checksum, then the echo identifier */
		__u8 hdr[6];
		__be16 id;
		__u8 request = f->protocol == IPPROTO_ICMP ? ICMP_ECHO : ICMPV6_ECHO_REQUEST;
		__u8 reply = f->protocol == IPPROTO_ICMP ? ICMP_ECHOREPLY : ICMPV6_ECHO_REPLY;

		if (bpf_skb_load_bytes(skb, l4, hdr, sizeof(hdr)) < 0)
			return PARSE_MALFORMED;
		__builtin_memcpy(&id, &hdr[4], 2);
		/* Policy matches the ICMP type; conntrack pairs echoes by identifier. */
		f->dport_be = bpf_htons(hdr[0]);
		f->is_icmp_request = hdr[0] == request;
		if (hdr[0] == request || hdr[0] == reply) {
			f->local_port_be = id;
			f->remote_port_be = id;
		}
		return PARSE_OK;
	}
	default:
		return PARSE_OK;
	}
	f->dport_be = dport;
	if (direction == BPFWALL_DIR_EGRESS) {
		f->local_port_be = sport;
		f->remote_port_be = dport;
	} else {
		f->local_port_be = dport;
		f->remote_port_be = sport;
	}
	return PARSE_OK;
}

static __always_inline void set_addrs(struct flow *f, __u8 direction, const void *src, const void *dst, __u32 len)
{
	if (direction == BPFWALL_DIR_EGRESS) {
		__builtin_memcpy(f->local_addr, src, 16);
		__builtin_memcpy(f->remote_addr, dst, 16);
	} else {
		__builtin_memcpy(f->local_addr, dst, 16);
		__builtin_memcpy(f->remote_addr, src, 16);
	}
	if (len == 4) {
		__builtin_memset(&f->local_addr[4], 0, 12);
		__builtin_memset(&f->remote_addr[4], 0, 12);
	}
}

/*
 * The extension headers that may stand between the IPv6 header and the
 * upper layer. ESP (50) and "no next header" (59) end the chain: they are
 * the packet's protocol, without ports.
 */
static __always_inline int ipv6_is_ext_header(__u8 nexthdr)
{
	return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
	       nexthdr == IPPROTO_DSTOPTS || nexthdr == IPPROTO_FRAGMENT ||
	       nexthdr == IPPROTO_AH || nexthdr == IPPROTO_MH;
}

/*
 * Fills f for IPv4 and IPv6 and returns PARSE_OK; PARSE_NOT_IP for packets
 * that are neither (the caller passes those); PARSE_MALFORMED when a header
 * cannot be read; PARSE_EXT_HEADERS when the IPv6 extension headers go on
 * past IPV6_MAX_EXT_HEADERS.
 */
static __always_inline int parse_flow(struct __sk_buff *skb, __u8 direction, struct flow *f)
{
	__u8 version;

	__builtin_memset(f, 0, sizeof(*f));
	if (bpf_skb_load_bytes(skb, 0, &version, 1) < 0)
		return PARSE_MALFORMED;
	version >>= 4;

	if (version == 4) {
		struct iphdr iph;
		__u8 src[16] = {}, dst[16] = {};

		if (bpf_skb_load_bytes(skb, 0, &iph, sizeof(iph)) < 0)
			return PARSE_MALFORMED;
		if (iph.ihl < 5)
			return PARSE_MALFORMED;
		f->family = BPFWALL_FAMILY_IPV4;
		f->protocol = iph.protocol;
		__builtin_memcpy(src, &iph.saddr, 4);
		__builtin_memcpy(dst, &iph.daddr, 4);
		set_addrs(f, direction, src, dst, 4);
		/* A non-first fragment carries no L4 header. */
		if (iph.frag_off & bpf_htons(0x1fff))
			return PARSE_OK;
		return parse_l4(skb, iph.ihl * 4, direction, f);
	}
	if (version == 6) {
		struct ipv6hdr ip6h;
		__u32 off = sizeof(struct ipv6hdr);
		__u8 nexthdr;

		if (bpf_skb_load_bytes(skb, 0, &ip6h, sizeof(ip6h)) < 0)
			return PARSE_MALFORMED;
		f->family = BPFWALL_FAMILY_IPV6;
		set_addrs(f, direction, &ip6h.saddr, &ip6h.daddr, 16);
		nexthdr = ip6h.nexthdr;
#pragma unroll
		for (int i = 0; i < IPV6_MAX_EXT_HEADERS; i++) {
			__u8 ext[2];

			if (!ipv6_is_ext_header(nexthdr))
				break;
			if (bpf_skb_load_bytes(skb, off, ext, sizeof(ext)) < 0)
				return PARSE_MALFORMED;
			if (nexthdr == IPPROTO_FRAGMENT) {
				__be16 frag_off;

				if (bpf_skb_load_bytes(skb, off + 2, &frag_off, 2) < 0)
					return PARSE_MALFORMED;
				nexthdr = ext[0];
				off += 8;
				if (frag_off & bpf_htons(0xfff8)) {
					/* A non-first fragment: no upper-layer header. */
					f->protocol = nexthdr;
					return PARSE_OK;
				}
				continue;
			}
			if (nexthdr == IPPROTO_AH)
				off += ((__u32)ext[1] + 2) * 4; /* AH counts 32-bit words, minus 2 */
			else
				off += ((__u32)ext[1] + 1) * 8; /* the others: 8 bytes, minus 1 */
			nexthdr = ext[0];
		}
		if (ipv6_is_ext_header(nexthdr))
			return PARSE_EXT_HEADERS;
		f->protocol = nexthdr;
		return parse_l4(skb, off, direction, f);
	}
	return PARSE_NOT_IP;
}

#endif /* BPFWALL_PARSE_H */
