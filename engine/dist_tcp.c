/* The TCP rendezvous: for launchers that start processes without MPI (srun
 * without --mpi, Kubernetes LeaderWorkerSet). Rank 0 listens; every other
 * rank connects to it and introduces itself; every exchange after that goes
 * through rank 0 (a star), in frames whose length the receiver knows in
 * advance, because every process makes the same calls in the same order.
 * Nothing a peer sends can make a process allocate more than it expects:
 * a frame of another length, or from a stranger, is an error. */
#define _GNU_SOURCE
#include "common/common.h"
#include "dist_impl.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define HELLO_MAGIC 0x314C574Fu /* "OWL1" */
#define FRAME_MAGIC 0x4D4C574Fu /* "OWLM" */

typedef struct tcp_ctx {
	int rank, size;
	double timeout_s;
	char where[300]; /* HOST:PORT, for messages */
	int *fd;         /* rank 0: fd[r] for each other rank; else fd[0]: rank 0 */
} tcp_ctx;

static double remaining(double deadline)
{
	double left = deadline - owl_now();
	return left > 0 ? left : 0;
}

/* Waits until fd is readable (POLLIN) or writable, at most until deadline. */
static int wait_fd(int fd, short events, double deadline)
{
	for (;;) {
		struct pollfd p = {.fd = fd, .events = events};
		int ms = (int)(remaining(deadline) * 1000);
		int n = poll(&p, 1, ms);
		if (n > 0)
			return 0;
		if (n == 0)
			return -1;
		if (errno != EINTR)
			return -1;
	}
}

/* All n bytes, or an error that says from whom and why. */
static int read_all(tcp_ctx *c, int fd, int peer, void *buf, size_t n, double deadline,
		    owl_err *err)
{
	uint8_t *p = buf;
	while (n) {
		if (wait_fd(fd, POLLIN, deadline))
			return owl_err_set(err, OWL_EFAIL, "rank %d sent nothing for %.0f s (rendezvous %s)",
					   peer, c->timeout_s, c->where);
		ssize_t k = recv(fd, p, n, 0);
		if (k == 0)
			return owl_err_set(err, OWL_EFAIL, "rank %d closed its connection (rendezvous %s): "
					   "it ended, see its own messages", peer, c->where);
		if (k < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return owl_err_set(err, OWL_EFAIL, "cannot read from rank %d (rendezvous %s): %s",
					   peer, c->where, strerror(errno));
		}
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

static int write_all(tcp_ctx *c, int fd, int peer, const void *buf, size_t n, double deadline,
		     owl_err *err)
{
	const uint8_t *p = buf;
	while (n) {
		if (wait_fd(fd, POLLOUT, deadline))
			return owl_err_set(err, OWL_EFAIL, "rank %d took nothing for %.0f s (rendezvous %s)",
					   peer, c->timeout_s, c->where);
		ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
		if (k < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return owl_err_set(err, OWL_EFAIL, "cannot write to rank %d (rendezvous %s): %s",
					   peer, c->where, strerror(errno));
		}
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

static int send_frame(tcp_ctx *c, int fd, int peer, const void *buf, size_t n, owl_err *err)
{
	double deadline = owl_now() + c->timeout_s;
	uint32_t h[4] = {FRAME_MAGIC, 0, (uint32_t)(n & 0xffffffffu), (uint32_t)((uint64_t)n >> 32)};
	int rc = write_all(c, fd, peer, h, sizeof h, deadline, err);
	return rc ? rc : write_all(c, fd, peer, buf, n, deadline, err);
}

/* A frame of exactly n bytes into buf. */
static int recv_frame(tcp_ctx *c, int fd, int peer, void *buf, size_t n, owl_err *err)
{
	double deadline = owl_now() + c->timeout_s;
	uint32_t h[4];
	int rc = read_all(c, fd, peer, h, sizeof h, deadline, err);
	if (rc)
		return rc;
	uint64_t len = (uint64_t)h[2] | (uint64_t)h[3] << 32;
	if (h[0] != FRAME_MAGIC)
		return owl_err_set(err, OWL_EFAIL, "rank %d sent something that is not an owl frame "
				   "(rendezvous %s)", peer, c->where);
	if (len != n)
		return owl_err_set(err, OWL_EFAIL, "rank %d sent %llu bytes where %zu were expected: "
				   "the processes are not running the same command (rendezvous %s)",
				   peer, (unsigned long long)len, n, c->where);
	return read_all(c, fd, peer, buf, n, deadline, err);
}

static int check_size(size_t n, owl_err *err)
{
	if (n > DIST_MAX_MESSAGE)
		return owl_err_set(err, OWL_EUSAGE, "an exchange of %zu bytes is more than the %zu a "
				   "message may carry", n, DIST_MAX_MESSAGE);
	return 0;
}

static int tcp_bcast(void *ctx, void *buf, size_t n, owl_err *err)
{
	tcp_ctx *c = ctx;
	int rc = check_size(n, err);
	if (c->rank != 0)
		return rc ? rc : recv_frame(c, c->fd[0], 0, buf, n, err);
	for (int r = 1; r < c->size && !rc; r++)
		rc = send_frame(c, c->fd[r], r, buf, n, err);
	return rc;
}

static int tcp_gather(void *ctx, const void *in, size_t n, void *out, owl_err *err)
{
	tcp_ctx *c = ctx;
	int rc = check_size(n, err);
	if (c->rank != 0)
		return rc ? rc : send_frame(c, c->fd[0], 0, in, n, err);
	if (!rc && n)
		memcpy(out, in, n);
	for (int r = 1; r < c->size && !rc; r++)
		rc = recv_frame(c, c->fd[r], r, (uint8_t *)out + (size_t)r * n, n, err);
	return rc;
}

static int tcp_allgather(void *ctx, const void *in, size_t n, void *out, owl_err *err)
{
	tcp_ctx *c = ctx;
	int rc = tcp_gather(ctx, in, n, out, err);
	return rc ? rc : tcp_bcast(ctx, out, n * (size_t)c->size, err);
}

static int tcp_barrier(void *ctx, owl_err *err)
{
	tcp_ctx *c = ctx;
	uint8_t *all = calloc((size_t)c->size, 1);
	if (!all)
		return owl_err_set(err, OWL_EFAIL, "cannot allocate a barrier");
	uint8_t one = 1;
	int rc = tcp_allgather(ctx, &one, 1, all, err);
	free(all);
	return rc;
}

static void tcp_close(void *ctx, int failed)
{
	tcp_ctx *c = ctx;
	if (!c)
		return;
	for (int r = 0; r < (c->rank == 0 ? c->size : 1); r++)
		if (c->fd[r] >= 0)
			close(c->fd[r]);
	free(c->fd);
	free(c);
}

/* HOST:PORT (HOST may be [v6]) into host and port. */
static int split_hostport(const char *s, char *host, size_t hostlen, char *port, size_t portlen,
			  owl_err *err)
{
	const char *colon = strrchr(s, ':');
	const char *h = s, *he = colon;
	if (s[0] == '[') {
		const char *close_br = strchr(s, ']');
		if (!close_br || close_br[1] != ':')
			colon = NULL;
		else
			h = s + 1, he = close_br, colon = close_br + 1;
	}
	char *end = NULL;
	long p = colon ? strtol(colon + 1, &end, 10) : 0;
	if (!colon || he == h || !*(colon + 1) || *end || p < 1 || p > 65535 ||
	    (size_t)(he - h) >= hostlen)
		return owl_err_set(err, OWL_EUSAGE, "the rendezvous '%s' is not HOST:PORT (a port from "
				   "1 to 65535)", s);
	memcpy(host, h, (size_t)(he - h));
	host[he - h] = 0;
	snprintf(port, portlen, "%ld", p);
	return 0;
}

static void tune(int fd)
{
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* Rank 0: every other rank connects and says who it is. */
static int listen_for_peers(tcp_ctx *c, const char *port, owl_err *err)
{
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				 .ai_flags = AI_PASSIVE}, *ai = NULL;
	int g = getaddrinfo(NULL, port, &hints, &ai);
	if (g)
		return owl_err_set(err, OWL_EFAIL, "cannot listen on port %s: %s", port, gai_strerror(g));
	/* Prefer a dual-stack IPv6 socket; fall back to IPv4. */
	int ls = -1;
	for (int pass = 0; pass < 2 && ls < 0; pass++)
		for (struct addrinfo *a = ai; a && ls < 0; a = a->ai_next) {
			if ((pass == 0) != (a->ai_family == AF_INET6))
				continue;
			int s = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
			if (s < 0)
				continue;
			int one = 1, zero = 0;
			setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
			if (a->ai_family == AF_INET6)
				setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
			if (bind(s, a->ai_addr, a->ai_addrlen) == 0 && listen(s, 64) == 0)
				ls = s;
			else
				close(s);
		}
	freeaddrinfo(ai);
	if (ls < 0)
		return owl_err_set(err, OWL_EFAIL, "rank 0 cannot listen on port %s for the rendezvous: "
				   "%s", port, strerror(errno));
	double deadline = owl_now() + c->timeout_s;
	int arrived = 0, rc = 0;
	while (!rc && arrived < c->size - 1) {
		if (wait_fd(ls, POLLIN, deadline)) {
			char missing[200] = "";
			size_t len = 0;
			for (int r = 1; r < c->size && len + 12 < sizeof missing; r++)
				if (c->fd[r] < 0)
					len += (size_t)snprintf(missing + len, sizeof missing - len, "%s%d",
								len ? ", " : "", r);
			rc = owl_err_set(err, OWL_EFAIL, "rank 0 waited %.0f s at the rendezvous %s for "
					 "%d of %d processes: rank%s %s never connected", c->timeout_s,
					 c->where, c->size - 1 - arrived, c->size,
					 c->size - 1 - arrived > 1 ? "s" : "", missing);
			break;
		}
		int s = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
		if (s < 0)
			continue;
		uint32_t hello[3];
		owl_err ignored = {0};
		double hello_deadline = owl_now() + (remaining(deadline) < 5 ? remaining(deadline) : 5);
		/* Something that is not an owl (a port scan) is dropped, not fatal. */
		if (read_all(c, s, -1, hello, sizeof hello, hello_deadline, &ignored) ||
		    hello[0] != HELLO_MAGIC) {
			close(s);
			continue;
		}
		int r = (int)hello[1], sz = (int)hello[2];
		if (sz != c->size)
			rc = owl_err_set(err, OWL_EUSAGE, "rank %d joined the rendezvous %s for %d "
					 "processes, rank 0 is one of %d", r, c->where, sz, c->size);
		else if (r < 1 || r >= c->size)
			rc = owl_err_set(err, OWL_EUSAGE, "a process that calls itself rank %d joined the "
					 "rendezvous %s of %d processes", r, c->where, c->size);
		else if (c->fd[r] >= 0)
			rc = owl_err_set(err, OWL_EUSAGE, "two processes joined the rendezvous %s as rank "
					 "%d: the launcher gave the same rank twice", c->where, r);
		if (rc) {
			close(s);
			break;
		}
		tune(s);
		c->fd[r] = s;
		arrived++;
	}
	close(ls);
	/* Everyone is here: tell them, so that no rank starts before all have. */
	uint32_t ok[3] = {HELLO_MAGIC, 0, (uint32_t)c->size};
	for (int r = 1; r < c->size && !rc; r++)
		rc = write_all(c, c->fd[r], r, ok, sizeof ok, owl_now() + c->timeout_s, err);
	return rc;
}

/* Other ranks: connect to rank 0, retrying until it listens. */
static int connect_to_root(tcp_ctx *c, const char *host, const char *port, owl_err *err)
{
	double deadline = owl_now() + c->timeout_s;
	char last[256] = "no answer";
	while (remaining(deadline) > 0) {
		struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
		int g = getaddrinfo(host, port, &hints, &ai);
		if (g) {
			/* A Kubernetes service name resolves only once its pod is up. */
			snprintf(last, sizeof last, "%s", gai_strerror(g));
		}
		for (struct addrinfo *a = g ? NULL : ai; a; a = a->ai_next) {
			int s = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
			if (s < 0)
				continue;
			if (connect(s, a->ai_addr, a->ai_addrlen) == 0) {
				freeaddrinfo(ai);
				tune(s);
				c->fd[0] = s;
				uint32_t hello[3] = {HELLO_MAGIC, (uint32_t)c->rank, (uint32_t)c->size}, ok[3];
				int rc = write_all(c, s, 0, hello, sizeof hello, deadline, err);
				if (!rc)
					rc = read_all(c, s, 0, ok, sizeof ok, owl_now() + c->timeout_s, err);
				if (!rc && (ok[0] != HELLO_MAGIC || (int)ok[2] != c->size))
					rc = owl_err_set(err, OWL_EFAIL, "the rendezvous %s did not answer as an "
							 "owl rank 0", c->where);
				return rc;
			}
			snprintf(last, sizeof last, "%s", strerror(errno));
			close(s);
		}
		if (!g)
			freeaddrinfo(ai);
		usleep(100 * 1000);
	}
	return owl_err_set(err, OWL_EFAIL, "rank %d could not reach rank 0 at the rendezvous %s "
			   "within %.0f s: %s", c->rank, c->where, c->timeout_s, last);
}

int dist_tcp_open(const char *hostport, int rank, int size, double timeout_s, dist_transport *out,
		  owl_err *err)
{
	memset(out, 0, sizeof *out);
	char host[256], port[16];
	int rc = split_hostport(hostport, host, sizeof host, port, sizeof port, err);
	if (rc)
		return rc;
	if (size < 2 || rank < 0 || rank >= size || size > 4096)
		return owl_err_set(err, OWL_EUSAGE, "rank %d of %d is not a place in a rendezvous", rank,
				   size);
	tcp_ctx *c = calloc(1, sizeof *c);
	int *fds = calloc((size_t)size, sizeof *fds);
	if (!c || !fds) {
		free(c), free(fds);
		return owl_err_set(err, OWL_EFAIL, "cannot allocate a rendezvous of %d processes", size);
	}
	c->rank = rank;
	c->size = size;
	c->timeout_s = timeout_s;
	c->fd = fds;
	for (int r = 0; r < size; r++)
		c->fd[r] = -1;
	snprintf(c->where, sizeof c->where, "%s", hostport);
	rc = rank == 0 ? listen_for_peers(c, port, err) : connect_to_root(c, host, port, err);
	if (rc) {
		tcp_close(c, 1);
		return rc;
	}
	*out = (dist_transport){.name = "tcp", .ctx = c, .bcast = tcp_bcast, .gather = tcp_gather,
				.allgather = tcp_allgather, .barrier = tcp_barrier, .close = tcp_close};
	return 0;
}
