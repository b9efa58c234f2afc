/* The process's place in a multi-process launch (engine/dist.h): what the
 * launcher's environment says, joining the processes over MPI (loaded at
 * run time) or the TCP rendezvous, and the collectives built on either. */
#define _GNU_SOURCE
#include "dist.h"
#include "dist_impl.h"
#include "engine.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef OWL_MPI_LIB
#define OWL_MPI_LIB "libowl_mpi.so"
#endif

struct engine_dist {
	engine_dist_env env;
	int rank, size;
	dist_transport t; /* t.name NULL: one process, nothing to carry */
	/* the comm's working memory, grown to the largest all-reduce */
	float *stage, *gathered;
	size_t stage_cap, gathered_cap; /* floats */
	int tp_local;
};

/* ---- the environment ---------------------------------------------------------- */

/* *out = $name when it is set; 1 when set, 0 when not, -1 (err) when
 * malformed or outside [lo, hi]. */
static int env_int(const char *name, int lo, int hi, int *out, owl_err *err)
{
	const char *s = getenv(name);
	if (!s)
		return 0;
	char *end = NULL;
	long v = strtol(s, &end, 10);
	if (!*s || *end || v < lo || v > hi) {
		owl_err_set(err, OWL_EUSAGE, "the launcher's %s = '%s' is not a number from %d to %d",
			    name, s, lo, hi);
		return -1;
	}
	*out = (int)v;
	return 1;
}

const char *engine_dist_launcher_name(engine_dist_launcher l)
{
	switch (l) {
	case ENGINE_DIST_NONE: return "none";
	case ENGINE_DIST_OPENMPI: return "openmpi";
	case ENGINE_DIST_PMIX: return "pmix";
	case ENGINE_DIST_PMI: return "pmi";
	case ENGINE_DIST_SLURM: return "slurm";
	case ENGINE_DIST_LWS: return "leaderworkerset";
	}
	return "unknown";
}

int engine_dist_detect(engine_dist_env *e, owl_err *err)
{
	memset(e, 0, sizeof *e);
	e->size = 1;
	const char *off = getenv("OWL_DIST");
	if (off && strcmp(off, "none") == 0)
		return 0;
	enum { MAXP = 1 << 20 };
	int rank = 0, size = 0, local = 0, k;
	/* Each launcher in turn: its rank, its size, its local rank. An MPI
	 * launcher inside a Slurm step sets both, and MPI is what joins them. */
	if ((k = env_int("OMPI_COMM_WORLD_RANK", 0, MAXP, &rank, err)) != 0) {
		if (k < 0 || env_int("OMPI_COMM_WORLD_SIZE", 1, MAXP, &size, err) < 0 ||
		    env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0, MAXP, &local, err) < 0)
			return OWL_EUSAGE;
		e->launcher = ENGINE_DIST_OPENMPI;
		e->mpi = 1;
	} else if ((k = env_int("PMIX_RANK", 0, MAXP, &rank, err)) != 0) {
		if (k < 0 || env_int("SLURM_NTASKS", 1, MAXP, &size, err) < 0 ||
		    env_int("SLURM_LOCALID", 0, MAXP, &local, err) < 0)
			return OWL_EUSAGE;
		e->launcher = ENGINE_DIST_PMIX;
		e->mpi = 1;
	} else if ((k = env_int("PMI_RANK", 0, MAXP, &rank, err)) != 0) {
		if (k < 0 || env_int("PMI_SIZE", 1, MAXP, &size, err) < 0 ||
		    env_int("MPI_LOCALRANKID", 0, MAXP, &local, err) < 0)
			return OWL_EUSAGE;
		e->launcher = ENGINE_DIST_PMI;
		e->mpi = 1;
	} else if ((k = env_int("SLURM_PROCID", 0, MAXP, &rank, err)) != 0) {
		int ks = k < 0 ? -1 : env_int("SLURM_NTASKS", 1, MAXP, &size, err);
		if (ks == 0)
			return owl_err_set(err, OWL_EUSAGE, "the launcher set SLURM_PROCID but not "
					   "SLURM_NTASKS");
		if (ks < 0 || env_int("SLURM_LOCALID", 0, MAXP, &local, err) < 0)
			return OWL_EUSAGE;
		e->launcher = ENGINE_DIST_SLURM;
	} else if ((k = env_int("LWS_WORKER_INDEX", 0, MAXP, &rank, err)) != 0) {
		int ks = k < 0 ? -1 : env_int("LWS_GROUP_SIZE", 1, MAXP, &size, err);
		if (ks == 0)
			return owl_err_set(err, OWL_EUSAGE, "the launcher set LWS_WORKER_INDEX but not "
					   "LWS_GROUP_SIZE");
		if (ks < 0)
			return OWL_EUSAGE;
		const char *leader = getenv("LWS_LEADER_ADDRESS");
		if (leader && strlen(leader) >= sizeof e->leader)
			return owl_err_set(err, OWL_EUSAGE, "the launcher's LWS_LEADER_ADDRESS is longer "
					   "than %zu bytes", sizeof e->leader - 1);
		snprintf(e->leader, sizeof e->leader, "%s", leader ? leader : "");
		/* One pod per machine: its GPUs are all this process's. */
		e->launcher = ENGINE_DIST_LWS;
	} else {
		return 0;
	}
	if (size && rank >= size)
		return owl_err_set(err, OWL_EUSAGE, "the %s launcher says rank %d of %d processes",
				   engine_dist_launcher_name(e->launcher), rank, size);
	e->rank = rank;
	e->size = size;
	e->local_rank = local;
	return 0;
}

/* ---- MPI, loaded at run time --------------------------------------------------- */

static pthread_once_t mpi_once = PTHREAD_ONCE_INIT;
static void *mpi_handle;
static char mpi_reason[512];

/* $OWL_MPI_LIB, beside the executable, then the library path, as the CUDA
 * object. RTLD_GLOBAL: OpenMPI's own components, opened by libmpi, look
 * for libmpi's symbols in the global scope. */
static void mpi_open_once(void)
{
	mpi_handle = owl_dlopen_lib("OWL_MPI_LIB", OWL_MPI_LIB, 1, mpi_reason, sizeof mpi_reason);
}

static const owl_mpi_api *mpi_api(owl_err *err)
{
	pthread_once(&mpi_once, mpi_open_once);
	if (!mpi_handle) {
		owl_err_set(err, OWL_EFAIL, "the launch is MPI, but owl's MPI object %s cannot be "
			    "loaded: %s (build it with make where OpenMPI's libopenmpi-dev is installed, "
			    "or join the processes with --rendezvous HOST:PORT)", OWL_MPI_LIB,
			    mpi_reason[0] ? mpi_reason : "not found");
		return NULL;
	}
	const owl_mpi_api *(*get)(void) = (const owl_mpi_api *(*)(void))dlsym(mpi_handle, "owl_mpi_get");
	const owl_mpi_api *api = get ? get() : NULL;
	if (!api || api->abi != OWL_MPI_ABI) {
		owl_err_set(err, OWL_EFAIL, "%s was built for another owl (its interface is %d, this "
			    "owl's is %d)", OWL_MPI_LIB, api ? api->abi : -1, OWL_MPI_ABI);
		return NULL;
	}
	return api;
}

static int mpi_rc(int rc, const char *msg, owl_err *err)
{
	return rc ? owl_err_set(err, OWL_EFAIL, "MPI: %s", msg) : 0;
}

static int mpi_bcast(void *ctx, void *buf, size_t n, owl_err *err)
{
	const owl_mpi_api *api = ctx;
	char msg[512] = "";
	return mpi_rc(api->bcast(buf, n, msg, sizeof msg), msg, err);
}

static int mpi_gather(void *ctx, const void *in, size_t n, void *out, owl_err *err)
{
	const owl_mpi_api *api = ctx;
	char msg[512] = "";
	return mpi_rc(api->gather(in, n, out, msg, sizeof msg), msg, err);
}

static int mpi_allgather(void *ctx, const void *in, size_t n, void *out, owl_err *err)
{
	const owl_mpi_api *api = ctx;
	char msg[512] = "";
	return mpi_rc(api->allgather(in, n, out, msg, sizeof msg), msg, err);
}

static int mpi_barrier(void *ctx, owl_err *err)
{
	const owl_mpi_api *api = ctx;
	char msg[512] = "";
	return mpi_rc(api->barrier(msg, sizeof msg), msg, err);
}

static void mpi_close(void *ctx, int failed)
{
	const owl_mpi_api *api = ctx;
	if (failed)
		api->abort(1);
	else
		api->finalize();
}

static int mpi_join(engine_dist *d, owl_err *err)
{
	const owl_mpi_api *api = mpi_api(err);
	if (!api)
		return OWL_EFAIL;
	char msg[512] = "";
	int rank = 0, size = 0;
	if (api->init(&rank, &size, msg, sizeof msg))
		return owl_err_set(err, OWL_EFAIL, "MPI: %s", msg);
	if ((d->env.size && size != d->env.size) || rank != d->env.rank) {
		api->finalize();
		return owl_err_set(err, OWL_EFAIL, "MPI says rank %d of %d, the %s launcher rank %d of "
				   "%d: owl's MPI object is not the launcher's MPI", rank, size,
				   engine_dist_launcher_name(d->env.launcher), d->env.rank, d->env.size);
	}
	d->size = size;
	d->t = (dist_transport){.name = "mpi", .ctx = (void *)api, .bcast = mpi_bcast,
				.gather = mpi_gather, .allgather = mpi_allgather,
				.barrier = mpi_barrier, .close = mpi_close};
	return 0;
}

/* ---- open / close ------------------------------------------------------------------ */

int engine_dist_open(const engine_dist_opts *o, engine_dist **out, owl_err *err)
{
	*out = NULL;
	engine_dist *d = calloc(1, sizeof *d);
	if (!d)
		return owl_err_set(err, OWL_EFAIL, "cannot allocate the launch's state");
	int rc = engine_dist_detect(&d->env, err);
	if (rc) {
		free(d);
		return rc;
	}
	d->rank = d->env.rank;
	d->size = d->env.size;
	double timeout = o && o->timeout_s > 0 ? o->timeout_s : 0;
	const char *ts = getenv("OWL_DIST_TIMEOUT");
	if (timeout <= 0 && ts && atof(ts) > 0)
		timeout = atof(ts);
	if (timeout <= 0)
		timeout = 300;
	const char *rv = o && o->rendezvous && *o->rendezvous ? o->rendezvous : NULL;
	char lws[300];
	if (d->env.launcher == ENGINE_DIST_NONE) {
		if (rv)
			rc = owl_err_set(err, OWL_EUSAGE, "--rendezvous %s was given, but no launcher "
					 "(mpirun, srun, LeaderWorkerSet) started this process: there "
					 "is nothing to join", rv);
	} else if (rv && d->size > 1) {
		rc = dist_tcp_open(rv, d->rank, d->size, timeout, &d->t, err);
	} else if (d->env.mpi && d->size != 1) {
		rc = mpi_join(d, err);
	} else if (d->env.launcher == ENGINE_DIST_LWS && d->size > 1) {
		if (!d->env.leader[0])
			rc = owl_err_set(err, OWL_EUSAGE, "LeaderWorkerSet rank %d of %d: "
					 "LWS_LEADER_ADDRESS is not set; give --rendezvous HOST:PORT",
					 d->rank, d->size);
		else {
			snprintf(lws, sizeof lws, "%s:%d", d->env.leader, ENGINE_DIST_PORT);
			rc = dist_tcp_open(lws, d->rank, d->size, timeout, &d->t, err);
		}
	} else if (d->size > 1) {
		rc = owl_err_set(err, OWL_EUSAGE, "the %s launcher started rank %d of %d processes "
				 "without MPI: give --rendezvous HOST:PORT (rank 0's host and a free "
				 "port) or launch with MPI (srun --mpi=pmix)",
				 engine_dist_launcher_name(d->env.launcher), d->rank, d->size);
	}
	if (rc) {
		free(d);
		return rc;
	}
	*out = d;
	return 0;
}

void engine_dist_close(engine_dist *d, int failed)
{
	if (!d)
		return;
	if (d->t.close)
		d->t.close(d->t.ctx, failed);
	free(d->stage);
	free(d->gathered);
	free(d);
}

int engine_dist_rank(const engine_dist *d) { return d ? d->rank : 0; }
int engine_dist_size(const engine_dist *d) { return d ? d->size : 1; }
int engine_dist_local_rank(const engine_dist *d) { return d ? d->env.local_rank : 0; }
const engine_dist_env *engine_dist_get_env(const engine_dist *d) { return &d->env; }
const char *engine_dist_transport(const engine_dist *d)
{
	return d && d->t.name ? d->t.name : "none";
}

/* ---- collectives -------------------------------------------------------------------- */

int engine_dist_bcast(engine_dist *d, void *buf, size_t n, owl_err *err)
{
	if (!d || !d->t.name || !n)
		return 0;
	return d->t.bcast(d->t.ctx, buf, n, err);
}

int engine_dist_allgather(engine_dist *d, const void *in, size_t n, void *out, owl_err *err)
{
	if (n > (1u << 20))
		return owl_err_set(err, OWL_EUSAGE, "an all-gather of %zu bytes per process is more "
				   "than the 1 MiB of a record", n);
	if (!d || !d->t.name) {
		memcpy(out, in, n);
		return 0;
	}
	return d->t.allgather(d->t.ctx, in, n, out, err);
}

int engine_dist_barrier(engine_dist *d, owl_err *err)
{
	return d && d->t.name ? d->t.barrier(d->t.ctx, err) : 0;
}

enum { CHECK_RECORD = 256 };

int engine_dist_check_same(engine_dist *d, const char *what, const char *value, owl_err *err)
{
	if (strlen(value) >= CHECK_RECORD)
		return owl_err_set(err, OWL_EUSAGE, "the %s to compare between processes is longer "
				   "than %d bytes", what, CHECK_RECORD - 1);
	int size = engine_dist_size(d);
	if (size == 1)
		return 0;
	char mine[CHECK_RECORD] = {0};
	memcpy(mine, value, strlen(value));
	char *all = malloc((size_t)size * CHECK_RECORD);
	if (!all)
		return owl_err_set(err, OWL_EFAIL, "cannot allocate the values of %d processes", size);
	int rc = engine_dist_allgather(d, mine, CHECK_RECORD, all, err);
	for (int r = 1; !rc && r < size; r++) {
		char *theirs = all + (size_t)r * CHECK_RECORD;
		theirs[CHECK_RECORD - 1] = 0;
		all[CHECK_RECORD - 1] = 0;
		if (strcmp(theirs, all) != 0)
			rc = owl_err_set(err, OWL_EINTEGRITY, "rank %d has another %s than rank 0: %s, "
					 "rank 0 has %s", r, what, theirs, all);
	}
	free(all);
	return rc;
}

/* ---- the comm between processes ---------------------------------------------------- */

static int grow(float **p, size_t *cap, size_t n, owl_err *err)
{
	if (n <= *cap)
		return 0;
	float *q = realloc(*p, n * sizeof *q);
	if (!q)
		return owl_err_set(err, OWL_EFAIL, "cannot allocate %zu MiB for an exchange between "
				   "processes", n * sizeof *q >> 20);
	*p = q;
	*cap = n;
	return 0;
}

/* The process's ranks summed in rank order (as the shared-memory comm sums
 * all of them), the processes' sums gathered on rank 0 and summed there in
 * process order, the result sent to every process and copied into each of
 * its ranks. With one rank per process this is the shared-memory comm's
 * sum, bit for bit. */
static int dist_all_reduce(const kernels_comm *c, float *const *bufs, size_t n, owl_err *err)
{
	engine_dist *d = c->ctx;
	int W = d->size, L = c->local, rc;
	const float *mine = bufs[0];
	if (L > 1) {
		if ((rc = grow(&d->stage, &d->stage_cap, n, err)))
			return rc;
#pragma omp parallel for schedule(static) if (n > 16384)
		for (size_t i = 0; i < n; i++) {
			float s = 0;
			for (int r = 0; r < L; r++)
				s += bufs[r][i];
			d->stage[i] = s;
		}
		mine = d->stage;
	}
	if (d->rank == 0 && (rc = grow(&d->gathered, &d->gathered_cap, n * (size_t)W, err)))
		return rc;
	if ((rc = d->t.gather(d->t.ctx, mine, n * sizeof(float), d->gathered, err)))
		return rc;
	if (d->rank == 0) {
		const float *g = d->gathered;
		float *dst = bufs[0];
#pragma omp parallel for schedule(static) if (n > 16384)
		for (size_t i = 0; i < n; i++) {
			float s = 0;
			for (int p = 0; p < W; p++)
				s += g[(size_t)p * n + i];
			dst[i] = s;
		}
	}
	if ((rc = d->t.bcast(d->t.ctx, bufs[0], n * sizeof(float), err)))
		return rc;
	for (int r = 1; r < L; r++)
		memcpy(bufs[r], bufs[0], n * sizeof(float));
	return 0;
}

static int dist_all_gather(const kernels_comm *c, float *const *out, const float *const *in,
			   size_t n, owl_err *err)
{
	engine_dist *d = c->ctx;
	int L = c->local, rc;
	if ((rc = grow(&d->stage, &d->stage_cap, n * (size_t)L, err)))
		return rc;
	for (int r = 0; r < L; r++)
		memcpy(d->stage + (size_t)r * n, in[r], n * sizeof(float));
	if ((rc = d->t.allgather(d->t.ctx, d->stage, n * (size_t)L * sizeof(float), out[0], err)))
		return rc;
	for (int r = 1; r < L; r++)
		memcpy(out[r], out[0], n * (size_t)c->size * sizeof(float));
	return 0;
}

static int dist_barrier(const kernels_comm *c, owl_err *err)
{
	return engine_dist_barrier(c->ctx, err);
}

int engine_dist_comm(engine_dist *d, int tp, kernels_comm *out, owl_err *err)
{
	memset(out, 0, sizeof *out);
	int W = engine_dist_size(d);
	if (W == 1 || !d->t.name)
		return owl_err_set(err, OWL_EUSAGE, "one process has no comm between processes: use "
				   "the shared-memory comm");
	if (tp < W || tp % W)
		return owl_err_set(err, OWL_EUSAGE, "tensor parallelism over %d ranks cannot be spread "
				   "evenly over %d processes (use a --tp that is a multiple of %d)", tp, W,
				   W);
	*out = (kernels_comm){.name = d->t.name, .size = tp, .local = tp / W,
			      .first = d->rank * (tp / W), .ctx = d, .all_reduce = dist_all_reduce,
			      .all_gather = dist_all_gather, .barrier = dist_barrier};
	return 0;
}
