/* udp_echo: the test image's UDP peer (busybox nc has no UDP mode).
 *   udp_echo serve PORT            echo every datagram back to its sender
 *   udp_echo log PORT [echo]       print one line per datagram that arrives,
 *                                  "PORT SRC-ADDR SRC-PORT PAYLOAD" (flushed
 *                                  at once: read it with docker logs); with
 *                                  "echo", also echo it back
 *   udp_echo ask ADDR PORT MS [COUNT [GAP_MS]]
 *                                  send a datagram and wait up to MS
 *                                  milliseconds for its echo, COUNT times
 *                                  (default 1) from one socket (one flow),
 *                                  GAP_MS apart; prints "pong" (COUNT 1) or
 *                                  "answered N of COUNT"; exit 0 if every
 *                                  echo arrived, else 1
 * ADDR is numeric (IPv4 or IPv6): a static binary has no name service.
 * Exit 2: usage or setup error.
 */
#include <arpa/inet.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Binds PORT (IPv4 and IPv6); echo: send every datagram back; print: log it. */
static int serve(const char *port, int echo, int print)
{
	struct sockaddr_in6 addr = { .sin6_family = AF_INET6, .sin6_port = htons(atoi(port)) };
	int fd = socket(AF_INET6, SOCK_DGRAM, 0), off = 0;
	char buf[1500];

	setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));
	if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		perror("udp_echo: bind");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (;;) {
		struct sockaddr_in6 peer;
		socklen_t len = sizeof(peer);
		ssize_t n = recvfrom(fd, buf, sizeof(buf) - 1, 0, (struct sockaddr *)&peer, &len);
		char from[INET6_ADDRSTRLEN] = "?";
		const uint8_t *a = peer.sin6_addr.s6_addr;
		static const uint8_t v4mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

		if (n < 0)
			continue;
		if (print) {
			buf[n] = 0;
			if (memcmp(a, v4mapped, 12) == 0)
				inet_ntop(AF_INET, a + 12, from, sizeof(from));
			else
				inet_ntop(AF_INET6, a, from, sizeof(from));
			printf("%s %s %u %s\n", port, from, ntohs(peer.sin6_port), buf);
		}
		if (echo)
			sendto(fd, buf, n, 0, (struct sockaddr *)&peer, len);
	}
}

static int ask(const char *host, const char *port, const char *ms, int count, int gap_ms)
{
	struct sockaddr_in v4 = { .sin_family = AF_INET, .sin_port = htons(atoi(port)) };
	struct sockaddr_in6 v6 = { .sin6_family = AF_INET6, .sin6_port = htons(atoi(port)) };
	struct sockaddr *sa;
	socklen_t salen;
	int fd, answered = 0;

	if (inet_pton(AF_INET, host, &v4.sin_addr) == 1) {
		sa = (struct sockaddr *)&v4;
		salen = sizeof(v4);
	} else if (inet_pton(AF_INET6, host, &v6.sin6_addr) == 1) {
		sa = (struct sockaddr *)&v6;
		salen = sizeof(v6);
	} else {
		fprintf(stderr, "udp_echo: %s is not a numeric address\n", host);
		return 2;
	}
	if (count < 1 || gap_ms < 0) {
		fprintf(stderr, "udp_echo: COUNT must be 1 or more, GAP_MS 0 or more\n");
		return 2;
	}
	fd = socket(sa->sa_family, SOCK_DGRAM, 0);
	if (fd < 0 || connect(fd, sa, salen) < 0) {
		perror("udp_echo: connect");
		return 1;
	}
	for (int i = 0; i < count; i++) {
		char want[32], buf[64];
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int len = snprintf(want, sizeof(want), count == 1 ? "ping" : "ping %d", i);
		struct timespec gap = { .tv_sec = gap_ms / 1000, .tv_nsec = (long)(gap_ms % 1000) * 1000000 };

		if (i > 0 && gap_ms > 0)
			nanosleep(&gap, NULL);
		if (send(fd, want, len, 0) != len) {
			perror("udp_echo: send");
			continue;
		}
		/* An echo of an earlier, late round does not answer this one. */
		while (poll(&p, 1, atoi(ms)) == 1) {
			ssize_t n = recv(fd, buf, sizeof(buf), 0);

			if (n == len && memcmp(buf, want, len) == 0) {
				answered++;
				break;
			}
		}
	}
	if (count == 1 && answered == 1) {
		puts("pong");
		return 0;
	}
	if (count > 1)
		printf("answered %d of %d\n", answered, count);
	if (answered == count)
		return 0;
	fprintf(stderr, "udp_echo: %d of %d echoes from %s:%s did not come\n", count - answered, count, host, port);
	return 1;
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "serve") == 0)
		return serve(argv[2], 1, 0);
	if (argc == 3 && strcmp(argv[1], "log") == 0)
		return serve(argv[2], 0, 1);
	if (argc == 4 && strcmp(argv[1], "log") == 0 && strcmp(argv[3], "echo") == 0)
		return serve(argv[2], 1, 1);
	if (argc >= 5 && argc <= 7 && strcmp(argv[1], "ask") == 0)
		return ask(argv[2], argv[3], argv[4], argc > 5 ? atoi(argv[5]) : 1, argc > 6 ? atoi(argv[6]) : 0);
	fprintf(stderr, "usage: udp_echo serve PORT | udp_echo log PORT [echo]\n"
			"       udp_echo ask ADDR PORT MS [COUNT [GAP_MS]]\n");
	return 2;
}
