/*
 * http_upgrade: a tiny HTTP/1.1 server for the L7 tests.
 *
 *   http_upgrade PORT
 *   http_upgrade fnv FILE|-     (prints the FNV-1a 64 of the bytes)
 *
 * Serves each connection in a child process. A request with an Upgrade
 * header is answered "101 Switching Protocols" (Upgrade: websocket), after
 * which every byte the client sends comes back prefixed, line by line, with
 * "echo: ". Any other request is answered "200 OK" with the body
 * "plain <method> <target> xff=<X-Forwarded-For>\n", or, when it had a
 * body (Content-Length or chunked), "body <bytes> fnv=<FNV-1a 64>\n"; the
 * connection is kept for the next request.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

static unsigned long long fnv(unsigned long long h, const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)p[i];
		h *= 1099511628211ULL;
	}
	return h;
}

#define FNV_START 14695981039346656037ULL

static int write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n <= 0)
			return -1;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* The value of header `name` in a request head, copied into out ("" if none). */
static void header(const char *head, const char *name, char *out, size_t size)
{
	size_t len = strlen(name);
	const char *p = strstr(head, "\r\n");

	out[0] = 0;
	while (p && p[2] != '\r') {
		p += 2;
		if (strncasecmp(p, name, len) == 0 && p[len] == ':') {
			const char *v = p + len + 1;
			size_t n = 0;
			while (*v == ' ')
				v++;
			while (v[n] && v[n] != '\r' && n + 1 < size)
				n++;
			memcpy(out, v, n);
			out[n] = 0;
			return;
		}
		p = strstr(p, "\r\n");
	}
}

static void echo(int fd, char *rest, size_t have)
{
	char buf[4096];
	int at_line_start = 1;

	for (;;) {
		ssize_t n;
		if (have > 0) {
			n = (ssize_t)have;
			memcpy(buf, rest, have);
			have = 0;
		} else {
			n = read(fd, buf, sizeof(buf));
			if (n <= 0)
				return;
		}
		for (ssize_t i = 0; i < n; i++) {
			if (at_line_start && write_all(fd, "echo: ", 6) < 0)
				return;
			if (write_all(fd, &buf[i], 1) < 0)
				return;
			at_line_start = buf[i] == '\n';
		}
	}
}

static void serve(int fd)
{
	static char buf[65536];
	size_t have = 0;

	for (;;) {
		char *end;
		while (!(end = memmem(buf, have, "\r\n\r\n", 4))) {
			ssize_t n;
			if (have >= sizeof(buf) - 1)
				return;
			n = read(fd, buf + have, sizeof(buf) - 1 - have);
			if (n <= 0)
				return;
			have += (size_t)n;
		}
		size_t head_len = (size_t)(end - buf) + 4;
		char head[8192], method[32] = "", target[4096] = "", upgrade[256], xff[256], cl[32], out[8192];
		size_t copy = head_len < sizeof(head) - 1 ? head_len : sizeof(head) - 1;
		memcpy(head, buf, copy);
		head[copy] = 0;
		sscanf(head, "%31s %4095s", method, target);
		header(head, "Upgrade", upgrade, sizeof(upgrade));
		header(head, "X-Forwarded-For", xff, sizeof(xff));
		header(head, "Content-Length", cl, sizeof(cl));
		char te[64];
		header(head, "Transfer-Encoding", te, sizeof(te));
		size_t body = (size_t)strtoul(cl, NULL, 10), got = 0;
		int had_body = body > 0 || strcasecmp(te, "chunked") == 0;
		unsigned long long sum = FNV_START;
		memmove(buf, buf + head_len, have - head_len);
		have -= head_len;
		if (upgrade[0]) {
			const char *ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
			if (write_all(fd, ok, strlen(ok)) < 0)
				return;
			echo(fd, buf, have);
			return;
		}
		if (strcasecmp(te, "chunked") == 0) {
			/* Chunks: a hex size line, the bytes, CRLF; size 0 ends. */
			for (;;) {
				char *eol;
				while (!(eol = memmem(buf, have, "\r\n", 2))) {
					ssize_t n = read(fd, buf + have, sizeof(buf) - 1 - have);
					if (n <= 0)
						return;
					have += (size_t)n;
				}
				size_t size = (size_t)strtoul(buf, NULL, 16), line = (size_t)(eol - buf) + 2;
				memmove(buf, buf + line, have - line);
				have -= line;
				body = size + 2;
				if (size == 0)
					body = 2; /* the final CRLF (no trailers) */
				while (body > 0) {
					if (have == 0) {
						ssize_t n = read(fd, buf, sizeof(buf) - 1);
						if (n <= 0)
							return;
						have = (size_t)n;
					}
					size_t take = have < body ? have : body;
					size_t data = body > 2 ? (take < body - 2 ? take : body - 2) : 0;
					sum = fnv(sum, buf, data);
					got += data;
					memmove(buf, buf + take, have - take);
					have -= take;
					body -= take;
				}
				if (size == 0)
					break;
			}
		}
		/* A Content-Length body. */
		while (body > 0) {
			if (have == 0) {
				ssize_t n = read(fd, buf, sizeof(buf));
				if (n <= 0)
					return;
				have = (size_t)n;
			}
			size_t take = have < body ? have : body;
			sum = fnv(sum, buf, take);
			got += take;
			memmove(buf, buf + take, have - take);
			have -= take;
			body -= take;
		}
		char text[4608];
		int tlen = had_body ? snprintf(text, sizeof(text), "body %zu fnv=%016llx\n", got, sum)
				    : snprintf(text, sizeof(text), "plain %s %s xff=%s\n", method, target, xff);
		int olen = snprintf(out, sizeof(out), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s", tlen, text);
		if (write_all(fd, out, (size_t)olen) < 0)
			return;
	}
}

int main(int argc, char **argv)
{
	struct sockaddr_in6 addr = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_ANY_INIT };
	int one = 1, zero = 0, s;

	if (argc == 3 && strcmp(argv[1], "fnv") == 0) {
		char b[65536];
		unsigned long long h = FNV_START;
		size_t total = 0;
		FILE *f = strcmp(argv[2], "-") == 0 ? stdin : fopen(argv[2], "rb");
		size_t n;
		if (!f) {
			perror(argv[2]);
			return 1;
		}
		while ((n = fread(b, 1, sizeof(b), f)) > 0) {
			h = fnv(h, b, n);
			total += n;
		}
		printf("body %zu fnv=%016llx\n", total, h);
		return 0;
	}
	if (argc != 2) {
		fprintf(stderr, "usage: http_upgrade PORT | http_upgrade fnv FILE\n");
		return 2;
	}
	signal(SIGCHLD, SIG_IGN);
	addr.sin6_port = htons((unsigned short)atoi(argv[1]));
	s = socket(AF_INET6, SOCK_STREAM, 0);
	if (s < 0 || setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero)) < 0 ||
	    bind(s, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(s, 64) < 0) {
		perror("http_upgrade");
		return 1;
	}
	for (;;) {
		int c = accept(s, NULL, NULL);
		if (c < 0)
			continue;
		if (fork() == 0) {
			close(s);
			serve(c);
			_exit(0);
		}
		close(c);
	}
}
