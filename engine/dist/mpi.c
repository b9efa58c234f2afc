/* libowl_mpi.so: the MPI side of engine/dist.c, built apart and linked with
 * -lmpi so that owl itself never depends on an MPI library. owl opens it
 * with dlopen only when the launcher's environment says the launch is MPI,
 * and calls it through the table below (engine/dist_impl.h). One thread at
 * a time calls it: MPI_THREAD_SERIALIZED. */
#include "engine/dist_impl.h"

#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <string.h>

static int initialized_here;

static int fail(int code, const char *what, char *msg, size_t len)
{
	char s[MPI_MAX_ERROR_STRING];
	int n = 0;
	if (MPI_Error_string(code, s, &n) != MPI_SUCCESS)
		snprintf(s, sizeof s, "error %d", code);
	snprintf(msg, len, "%s failed: %s", what, s);
	return -1;
}

static int too_big(size_t n, char *msg, size_t len)
{
	if (n <= (size_t)INT_MAX)
		return 0;
	snprintf(msg, len, "a message of %zu bytes is more than MPI's count of %d", n, INT_MAX);
	return -1;
}

static int mpi_init(int *rank, int *size, char *msg, size_t len)
{
	int inited = 0, provided = 0, rc;
	MPI_Initialized(&inited);
	if (!inited) {
		if ((rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided)) != MPI_SUCCESS)
			return fail(rc, "MPI_Init_thread", msg, len);
		initialized_here = 1;
	}
	/* Errors come back as codes, so owl can say what failed. */
	MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
	if ((rc = MPI_Comm_rank(MPI_COMM_WORLD, rank)) != MPI_SUCCESS ||
	    (rc = MPI_Comm_size(MPI_COMM_WORLD, size)) != MPI_SUCCESS)
		return fail(rc, "MPI_Comm_rank", msg, len);
	return 0;
}

static int mpi_bcast(void *buf, size_t n, char *msg, size_t len)
{
	if (too_big(n, msg, len))
		return -1;
	int rc = MPI_Bcast(buf, (int)n, MPI_BYTE, 0, MPI_COMM_WORLD);
	return rc == MPI_SUCCESS ? 0 : fail(rc, "MPI_Bcast", msg, len);
}

static int mpi_gather(const void *in, size_t n, void *out, char *msg, size_t len)
{
	if (too_big(n, msg, len))
		return -1;
	int rc = MPI_Gather(in, (int)n, MPI_BYTE, out, (int)n, MPI_BYTE, 0, MPI_COMM_WORLD);
	return rc == MPI_SUCCESS ? 0 : fail(rc, "MPI_Gather", msg, len);
}

static int mpi_allgather(const void *in, size_t n, void *out, char *msg, size_t len)
{
	if (too_big(n, msg, len))
		return -1;
	int rc = MPI_Allgather(in, (int)n, MPI_BYTE, out, (int)n, MPI_BYTE, MPI_COMM_WORLD);
	return rc == MPI_SUCCESS ? 0 : fail(rc, "MPI_Allgather", msg, len);
}

static int mpi_barrier(char *msg, size_t len)
{
	int rc = MPI_Barrier(MPI_COMM_WORLD);
	return rc == MPI_SUCCESS ? 0 : fail(rc, "MPI_Barrier", msg, len);
}

static void mpi_finalize(void)
{
	int done = 0;
	MPI_Finalized(&done);
	if (initialized_here && !done)
		MPI_Finalize();
}

/* The launcher ends every process of the job: a rank that failed must not
 * leave the others waiting in a collective for it. */
static void mpi_abort(int code)
{
	int done = 0;
	MPI_Finalized(&done);
	if (!done)
		MPI_Abort(MPI_COMM_WORLD, code);
}

static const owl_mpi_api api = {
	/* .abi       = */ OWL_MPI_ABI,
	/* .init      = */ mpi_init,
	/* .bcast     = */ mpi_bcast,
	/* .gather    = */ mpi_gather,
	/* .allgather = */ mpi_allgather,
	/* .barrier   = */ mpi_barrier,
	/* .finalize  = */ mpi_finalize,
	/* .abort     = */ mpi_abort,
};

const owl_mpi_api *owl_mpi_get(void) { return &api; }
