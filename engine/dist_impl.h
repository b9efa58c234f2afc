/* Private to engine/dist*.c and the MPI object (engine/dist/mpi.c): the
 * transports that carry the exchanges between processes, and the table the
 * MPI object exports. */
#ifndef OWL_ENGINE_DIST_IMPL_H
#define OWL_ENGINE_DIST_IMPL_H

#include <stddef.h>

/* ---- the MPI object's table (libowl_mpi.so: owl_mpi_get) ----------------
 * Plain C with message buffers, so the object needs nothing of owl's. Every
 * call returns 0 or -1 with the reason in msg. */
#define OWL_MPI_ABI 1
typedef struct owl_mpi_api {
	int abi; /* OWL_MPI_ABI */
	int (*init)(int *rank, int *size, char *msg, size_t len);
	int (*bcast)(void *buf, size_t n, char *msg, size_t len);
	/* rank 0's out receives size * n bytes in rank order; others' out is unused */
	int (*gather)(const void *in, size_t n, void *out, char *msg, size_t len);
	int (*allgather)(const void *in, size_t n, void *out, char *msg, size_t len);
	int (*barrier)(char *msg, size_t len);
	void (*finalize)(void);
	void (*abort)(int code);
} owl_mpi_api;

const owl_mpi_api *owl_mpi_get(void);

#ifdef OWL_COMMON_H
/* ---- a transport: what engine/dist.c builds its collectives on ---------- */
typedef struct dist_transport {
	const char *name; /* "mpi", "tcp" */
	void *ctx;
	int (*bcast)(void *ctx, void *buf, size_t n, owl_err *err);
	int (*gather)(void *ctx, const void *in, size_t n, void *out, owl_err *err);
	int (*allgather)(void *ctx, const void *in, size_t n, void *out, owl_err *err);
	int (*barrier)(void *ctx, owl_err *err);
	void (*close)(void *ctx, int failed);
} dist_transport;

/* The TCP rendezvous (engine/dist_tcp.c): rank 0 listens on HOST:PORT's
 * port, the others connect to it; every exchange goes through rank 0. */
int dist_tcp_open(const char *hostport, int rank, int size, double timeout_s,
		  dist_transport *out, owl_err *err);

/* The largest message either transport carries in one exchange. */
#define DIST_MAX_MESSAGE ((size_t)1 << 30)
#endif

#endif
