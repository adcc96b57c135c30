/* udp_echo: the test image's UDP peer (busybox nc has no UDP mode).
 *   udp_echo serve PORT            echo every datagram back to its sender
 *   udp_echo ask ADDR PORT MS      send one datagram, exit 0 if the echo
 *                                  arrives within MS milliseconds, else 1
 * ADDR is numeric (IPv4 or IPv6): a static binary has no name service.
 */
#include <arpa/inet.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int serve(const char *port)
{
	struct sockaddr_in6 addr = { .sin6_family = AF_INET6, .sin6_port = htons(atoi(port)) };
	int fd = socket(AF_INET6, SOCK_DGRAM, 0), off = 0;
	char buf[1500];

	setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));
	if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		perror("udp_echo: bind");
		return 2;
	}
	for (;;) {
		struct sockaddr_storage peer;
		socklen_t len = sizeof(peer);
		ssize_t n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&peer, &len);

		if (n >= 0)
			sendto(fd, buf, n, 0, (struct sockaddr *)&peer, len);
	}
}

static int ask(const char *host, const char *port, const char *ms)
{
	struct sockaddr_in v4 = { .sin_family = AF_INET, .sin_port = htons(atoi(port)) };
	struct sockaddr_in6 v6 = { .sin6_family = AF_INET6, .sin6_port = htons(atoi(port)) };
	struct sockaddr *sa;
	socklen_t salen;
	char buf[64];
	struct pollfd p;
	int fd;

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
	fd = socket(sa->sa_family, SOCK_DGRAM, 0);
	if (fd < 0 || connect(fd, sa, salen) < 0 || send(fd, "ping", 4, 0) != 4) {
		perror("udp_echo: send");
		return 1;
	}
	p.fd = fd;
	p.events = POLLIN;
	if (poll(&p, 1, atoi(ms)) == 1 && recv(fd, buf, sizeof(buf), 0) == 4 && memcmp(buf, "ping", 4) == 0) {
		puts("pong");
		return 0;
	}
	fprintf(stderr, "udp_echo: no answer from %s:%s\n", host, port);
	return 1;
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "serve") == 0)
		return serve(argv[2]);
	if (argc == 5 && strcmp(argv[1], "ask") == 0)
		return ask(argv[2], argv[3], argv[4]);
	fprintf(stderr, "usage: udp_echo serve PORT | udp_echo ask HOST PORT MS\n");
	return 2;
}
