/* rawpkt: the test image's raw-packet tool, for tests that play the attacker.
 * It needs CAP_NET_RAW, which a Docker container has by default.
 *
 *   rawpkt udp SRC SPORT DST DPORT PAYLOAD [EXT]
 *       Sends one UDP datagram built by hand, IPv4 (IP_HDRINCL) or IPv6
 *       (IPPROTO_RAW: the whole header is ours) after the family of DST.
 *       SRC is any address of that family, the container's or not (a forged
 *       source), or "auto": the address the kernel picks for DST, i.e. the
 *       container's own. A raw socket binds no port, so SPORT may be a port
 *       another process of the container holds. EXT (IPv6 only) lists
 *       extension headers to put before the UDP header, one letter each:
 *       h = hop-by-hop options (only first), d = destination options; each
 *       is 8 bytes of PadN. "ddddd" is five destination-options headers.
 *   rawpkt flood DST DPORT0 COUNT [PER_FLOW]
 *       Sends PER_FLOW (default 1) UDP datagrams, back to back, for each of
 *       COUNT distinct flows from the container's own address to DST, as
 *       fast as it can: flow i goes from source port 1024 + i % 64512 to
 *       destination port DPORT0 + i / 64512. With PER_FLOW 2 every flow is
 *       seen again after it was opened, as a live flow is (an LRU's second
 *       chance then protects none of them). Prints "sent S failed F", in
 *       datagrams (a send fails when, e.g., a filter drops it).
 *       DST may be an address of the container's subnet that no one holds:
 *       the datagrams then never leave the container (they die in its ARP
 *       queue), which spares the host's own connection tracking.
 *
 * Addresses are numeric (a static binary has no name service); an IPv6
 * address may carry a zone (fe80::1%eth0). The UDP checksum is computed over
 * the pseudo-header (Linux drops IPv6 UDP with a bad one).
 *
 * Exit: 0 every datagram sent; 1 a send failed (flood: at least one); 2 usage
 * or setup error.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_PACKET 1500
#define EXT_LEN 8

struct target {
	struct sockaddr_storage sa; /* destination, for sendto */
	socklen_t salen;
	int family;
	uint8_t src[16], dst[16]; /* network order; 4 bytes for IPv4 */
};

static int usage(void)
{
	fprintf(stderr, "usage: rawpkt udp SRC|auto SPORT DST DPORT PAYLOAD [EXT]\n"
			"       rawpkt flood DST DPORT0 COUNT [PER_FLOW]\n");
	return 2;
}

/* Parses a numeric address (IPv6 with an optional %zone) into t->sa and t->dst. */
static int parse_dst(const char *text, uint16_t port, struct target *t)
{
	struct sockaddr_in *v4 = (struct sockaddr_in *)&t->sa;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&t->sa;
	char host[INET6_ADDRSTRLEN + IF_NAMESIZE + 1];
	char *zone;

	memset(t, 0, sizeof(*t));
	snprintf(host, sizeof(host), "%s", text);
	zone = strchr(host, '%');
	if (zone)
		*zone++ = 0;
	if (!zone && inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
		v4->sin_family = AF_INET;
		v4->sin_port = htons(port);
		t->salen = sizeof(*v4);
		t->family = AF_INET;
		memcpy(t->dst, &v4->sin_addr, 4);
		return 0;
	}
	if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons(port);
		if (zone && !(v6->sin6_scope_id = if_nametoindex(zone))) {
			fprintf(stderr, "rawpkt: no interface %s\n", zone);
			return -1;
		}
		t->salen = sizeof(*v6);
		t->family = AF_INET6;
		memcpy(t->dst, &v6->sin6_addr, 16);
		return 0;
	}
	fprintf(stderr, "rawpkt: %s is not a numeric address\n", text);
	return -1;
}

/* The source address the kernel would use towards t (the container's own). */
static int own_source(struct target *t)
{
	struct sockaddr_storage me;
	socklen_t len = sizeof(me);
	int fd = socket(t->family, SOCK_DGRAM, 0);

	if (fd < 0 || connect(fd, (struct sockaddr *)&t->sa, t->salen) < 0 ||
	    getsockname(fd, (struct sockaddr *)&me, &len) < 0) {
		perror("rawpkt: finding the source address");
		return -1;
	}
	close(fd);
	if (t->family == AF_INET)
		memcpy(t->src, &((struct sockaddr_in *)&me)->sin_addr, 4);
	else
		memcpy(t->src, &((struct sockaddr_in6 *)&me)->sin6_addr, 16);
	return 0;
}

static int parse_src(const char *text, struct target *t)
{
	if (strcmp(text, "auto") == 0)
		return own_source(t);
	if (inet_pton(t->family, text, t->src) == 1)
		return 0;
	fprintf(stderr, "rawpkt: %s is not a numeric address of the destination's family\n", text);
	return -1;
}

static uint32_t sum16(const uint8_t *p, size_t len, uint32_t sum)
{
	for (size_t i = 0; i + 1 < len; i += 2)
		sum += (uint32_t)p[i] << 8 | p[i + 1];
	if (len & 1)
		sum += (uint32_t)p[len - 1] << 8;
	return sum;
}

static uint16_t fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

/* The UDP checksum over the pseudo-header of t's family and the datagram. */
static uint16_t udp_checksum(const struct target *t, const uint8_t *udp, size_t len)
{
	size_t alen = t->family == AF_INET ? 4 : 16;
	uint32_t sum = sum16(t->src, alen, 0);
	uint16_t c;

	sum = sum16(t->dst, alen, sum);
	sum += IPPROTO_UDP + (uint32_t)len;
	sum = sum16(udp, len, sum);
	c = fold(sum);
	return c ? c : 0xffff; /* 0 means "no checksum" */
}

/*
 * Builds IP header, extension headers (IPv6), UDP header and payload into pkt;
 * returns the packet's length, or -1. Offsets of the UDP header go to *udp_off.
 */
static int build(const struct target *t, uint16_t sport, uint16_t dport, const char *payload, const char *ext,
		 uint8_t *pkt, size_t *udp_off)
{
	size_t plen = strlen(payload), nexts = strlen(ext), ip_len, off, udp_len = 8 + plen;
	uint8_t *udp;

	if (t->family == AF_INET && nexts) {
		fprintf(stderr, "rawpkt: extension headers are IPv6 only\n");
		return -1;
	}
	ip_len = t->family == AF_INET ? 20 : 40;
	if (ip_len + nexts * EXT_LEN + udp_len > MAX_PACKET) {
		fprintf(stderr, "rawpkt: packet too long\n");
		return -1;
	}
	memset(pkt, 0, MAX_PACKET);
	off = ip_len;
	if (t->family == AF_INET) {
		pkt[0] = 0x45;
		pkt[2] = (uint8_t)((ip_len + udp_len) >> 8);
		pkt[3] = (uint8_t)(ip_len + udp_len);
		pkt[8] = 64; /* TTL */
		pkt[9] = IPPROTO_UDP;
		memcpy(&pkt[12], t->src, 4);
		memcpy(&pkt[16], t->dst, 4);
		uint16_t c = fold(sum16(pkt, 20, 0));
		pkt[10] = (uint8_t)(c >> 8);
		pkt[11] = (uint8_t)c;
	} else {
		size_t payload_len = nexts * EXT_LEN + udp_len;
		uint8_t *next = &pkt[6];

		pkt[0] = 0x60;
		pkt[4] = (uint8_t)(payload_len >> 8);
		pkt[5] = (uint8_t)payload_len;
		pkt[7] = 64; /* hop limit */
		memcpy(&pkt[8], t->src, 16);
		memcpy(&pkt[24], t->dst, 16);
		for (size_t i = 0; i < nexts; i++) {
			if (ext[i] == 'h' && i == 0)
				*next = IPPROTO_HOPOPTS;
			else if (ext[i] == 'd')
				*next = IPPROTO_DSTOPTS;
			else {
				fprintf(stderr, "rawpkt: EXT is letters h (first only) and d, not %s\n", ext);
				return -1;
			}
			/* next header (filled by the next one), length 0 (8 bytes), PadN of 4. */
			next = &pkt[off];
			pkt[off + 1] = 0;
			pkt[off + 2] = 1;
			pkt[off + 3] = 4;
			off += EXT_LEN;
		}
		*next = IPPROTO_UDP;
	}
	udp = &pkt[off];
	udp[0] = (uint8_t)(sport >> 8);
	udp[1] = (uint8_t)sport;
	udp[2] = (uint8_t)(dport >> 8);
	udp[3] = (uint8_t)dport;
	udp[4] = (uint8_t)(udp_len >> 8);
	udp[5] = (uint8_t)udp_len;
	memcpy(&udp[8], payload, plen);
	uint16_t c = udp_checksum(t, udp, udp_len);
	udp[6] = (uint8_t)(c >> 8);
	udp[7] = (uint8_t)c;
	*udp_off = off;
	return (int)(off + udp_len);
}

/* A raw socket that takes our IP header as it is. */
static int raw_socket(int family)
{
	int on = 1, fd = socket(family, SOCK_RAW, IPPROTO_RAW);

	if (fd < 0) {
		perror("rawpkt: raw socket (is CAP_NET_RAW there?)");
		return -1;
	}
	/* IPPROTO_RAW implies IP_HDRINCL (IPv4) and a full IPv6 header; say it anyway. */
	if (family == AF_INET && setsockopt(fd, IPPROTO_IP, IP_HDRINCL, &on, sizeof(on)) < 0) {
		perror("rawpkt: IP_HDRINCL");
		return -1;
	}
	return fd;
}

static int port_arg(const char *text, uint16_t *port)
{
	char *end;
	long n = strtol(text, &end, 10);

	if (*text == 0 || *end != 0 || n < 0 || n > 65535)
		return -1;
	*port = (uint16_t)n;
	return 0;
}

static int send_udp(char **argv, int argc)
{
	uint8_t pkt[MAX_PACKET];
	struct target t;
	uint16_t sport, dport;
	size_t udp_off;
	int len, fd;

	if (port_arg(argv[3], &sport) < 0 || port_arg(argv[5], &dport) < 0)
		return usage();
	if (parse_dst(argv[4], dport, &t) < 0 || parse_src(argv[2], &t) < 0)
		return 2;
	len = build(&t, sport, dport, argv[6], argc == 8 ? argv[7] : "", pkt, &udp_off);
	if (len < 0 || (fd = raw_socket(t.family)) < 0)
		return 2;
	/* For IPv6 the destination's port must be 0 (it would be taken as a protocol). */
	if (t.family == AF_INET6)
		((struct sockaddr_in6 *)&t.sa)->sin6_port = 0;
	if (sendto(fd, pkt, (size_t)len, 0, (struct sockaddr *)&t.sa, t.salen) != len) {
		perror("rawpkt: sendto");
		return 1;
	}
	return 0;
}

static int flood(char **argv, int argc)
{
	uint8_t pkt[MAX_PACKET];
	struct target t;
	uint16_t dport0;
	unsigned long count, per_flow = 1, sent = 0, failed = 0;
	size_t udp_off;
	int len, fd, last_errno = 0;
	char *end;

	count = strtoul(argv[4], &end, 10);
	if (*end == 0 && argc == 6)
		per_flow = strtoul(argv[5], &end, 10);
	if (port_arg(argv[3], &dport0) < 0 || *end != 0 || count == 0 || per_flow == 0 ||
	    (unsigned long)dport0 + (count - 1) / 64512 > 65535)
		return usage();
	if (parse_dst(argv[2], dport0, &t) < 0 || own_source(&t) < 0)
		return 2;
	len = build(&t, 1024, dport0, "flood", "", pkt, &udp_off);
	if (len < 0 || (fd = raw_socket(t.family)) < 0)
		return 2;
	/*
	 * The largest send buffer allowed (the kernel clamps it): datagrams to
	 * an address nobody answers ARP for wait in the neighbour queue, whose
	 * bytes count against this buffer; with the buffer larger than the
	 * queue, the queue drops its oldest instead of the send blocking.
	 */
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &(int){ 1 << 30 }, sizeof(int));
	if (t.family == AF_INET6)
		((struct sockaddr_in6 *)&t.sa)->sin6_port = 0;
	for (unsigned long i = 0; i < count; i++) {
		uint8_t *udp = &pkt[udp_off];
		uint16_t sport = (uint16_t)(1024 + i % 64512), dport = (uint16_t)(dport0 + i / 64512), c;

		udp[0] = (uint8_t)(sport >> 8);
		udp[1] = (uint8_t)sport;
		udp[2] = (uint8_t)(dport >> 8);
		udp[3] = (uint8_t)dport;
		udp[6] = udp[7] = 0;
		c = udp_checksum(&t, udp, (size_t)len - udp_off);
		udp[6] = (uint8_t)(c >> 8);
		udp[7] = (uint8_t)c;
		for (unsigned long n = 0; n < per_flow; n++) {
			if (sendto(fd, pkt, (size_t)len, 0, (struct sockaddr *)&t.sa, t.salen) == len) {
				sent++;
			} else {
				failed++;
				last_errno = errno;
			}
		}
	}
	printf("sent %lu failed %lu\n", sent, failed);
	if (failed)
		fprintf(stderr, "rawpkt: last send error: %s\n", strerror(last_errno));
	return failed ? 1 : 0;
}

int main(int argc, char **argv)
{
	if ((argc == 7 || argc == 8) && strcmp(argv[1], "udp") == 0)
		return send_udp(argv, argc);
	if ((argc == 5 || argc == 6) && strcmp(argv[1], "flood") == 0)
		return flood(argv, argc);
	return usage();
}
