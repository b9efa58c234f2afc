/* dist: the process's place in a multi-process launch. owl does not manage a
 * cluster: an existing launcher (mpirun, Slurm's srun, Kubernetes
 * LeaderWorkerSet) starts the same command on every process and says in
 * the environment which one each is. This module reads that, joins the
 * processes (through MPI when the launch is MPI, else through a small TCP
 * rendezvous at rank 0), and offers what the CLI and the engine need on top:
 * rank 0's bytes to everyone (a sampling seed, a file, an NCCL unique id),
 * an all-gather of small records, a check that every process holds the same
 * value as rank 0 (the owl build, the model's digest), and the
 * tensor-parallel comm between the processes' CPU ranks.
 *
 * A launch without any of the launchers' variables is one process of size
 * 1: every call works and moves nothing. MPI is loaded at run time
 * (libowl_mpi.so, like the CUDA object), only when the launch is MPI, so
 * owl itself never links it. */
#ifndef OWL_ENGINE_DIST_H
#define OWL_ENGINE_DIST_H

#include "common/common.h"
#include "engine/kernels/kernels.h"

typedef enum engine_dist_launcher {
	ENGINE_DIST_NONE = 0, /* no launcher: one process */
	ENGINE_DIST_OPENMPI,  /* mpirun of OpenMPI: OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK */
	ENGINE_DIST_PMIX,     /* a PMIx launch (srun --mpi=pmix, prterun): PMIX_RANK */
	ENGINE_DIST_PMI,      /* a PMI launch (MPICH's hydra, srun --mpi=pmi2): PMI_RANK/PMI_SIZE */
	ENGINE_DIST_SLURM,    /* srun without MPI: SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID */
	ENGINE_DIST_LWS,      /* LeaderWorkerSet: LWS_WORKER_INDEX/LWS_GROUP_SIZE/LWS_LEADER_ADDRESS */
} engine_dist_launcher;

/* What the environment says. */
typedef struct engine_dist_env {
	engine_dist_launcher launcher;
	int rank, size;   /* size 0: the launcher names no size (PMIx: MPI tells) */
	int local_rank;   /* among the processes of this machine (a GPU index); 0 when unknown */
	int mpi;          /* the launcher started an MPI job: MPI can join the processes */
	char leader[256]; /* LWS_LEADER_ADDRESS (rank 0's host), or "" */
} engine_dist_env;

/* Reads the launchers' variables, in this order: OpenMPI, PMIx, PMI, Slurm,
 * LeaderWorkerSet; none is ENGINE_DIST_NONE with size 1. OWL_DIST=none
 * ignores them all (a single owl inside a Slurm allocation). A variable
 * that is set but not a number in range is an error naming it. */
int engine_dist_detect(engine_dist_env *out, owl_err *err);
const char *engine_dist_launcher_name(engine_dist_launcher l);

typedef struct engine_dist engine_dist;

typedef struct engine_dist_opts {
	/* HOST:PORT of rank 0's rendezvous, or NULL. Given, it joins the
	 * processes over TCP even under MPI; not given, an MPI launch joins
	 * through MPI, LeaderWorkerSet through LWS_LEADER_ADDRESS on port
	 * ENGINE_DIST_PORT, and any other launch of more than one process is
	 * refused with what to give. */
	const char *rendezvous;
	/* Seconds to wait for the other processes, at the rendezvous and in
	 * each exchange after it; 0: $OWL_DIST_TIMEOUT, else 300. */
	double timeout_s;
} engine_dist_opts;

enum { ENGINE_DIST_PORT = 29471 };

/* Detects the launch and joins its processes. *out is always a handle
 * when this succeeds, of size 1 when there is no launcher. */
int engine_dist_open(const engine_dist_opts *o, engine_dist **out, owl_err *err);
/* Leaves the launch. failed: this process is ending on an error: under MPI
 * the whole job is aborted (MPI_Abort) rather than left waiting for it.
 * Accepts NULL. */
void engine_dist_close(engine_dist *d, int failed);

int engine_dist_rank(const engine_dist *d);
int engine_dist_size(const engine_dist *d);
int engine_dist_local_rank(const engine_dist *d);
const engine_dist_env *engine_dist_get_env(const engine_dist *d);
/* "none", "mpi" or "tcp": what carries the exchanges. */
const char *engine_dist_transport(const engine_dist *d);

/* buf's n bytes on rank 0 overwrite buf on every process. Every process
 * calls it with the same n. */
int engine_dist_bcast(engine_dist *d, void *buf, size_t n, owl_err *err);
/* out (size * n bytes) becomes [rank 0's in | rank 1's in | ...] on every
 * process. For small records: at most 1 MiB per process. */
int engine_dist_allgather(engine_dist *d, const void *in, size_t n, void *out, owl_err *err);
/* Returns when every process has arrived. */
int engine_dist_barrier(engine_dist *d, owl_err *err);
/* Every process compares its value of what (e.g. "owl build", "model
 * digest"; at most 255 bytes) with rank 0's. A difference fails on every
 * process (OWL_EINTEGRITY) with the same message, naming the first rank that
 * differs, its value and rank 0's. */
int engine_dist_check_same(engine_dist *d, const char *what, const char *value, owl_err *err);

/* The comm of tensor parallelism over tp ranks spread evenly over the
 * processes: this process drives ranks [rank * tp/size, (rank + 1) *
 * tp/size). An all-reduce sums the process's own ranks first, then the
 * processes' partial sums in rank order on rank 0, which sends the result
 * to all: every process gets the same bits, so all of them compute the same
 * logits and pick the same token. name: "mpi" or "tcp". The comm uses d,
 * which must outlive it; one thread at a time calls it. tp not a multiple
 * of the size is refused (OWL_EUSAGE). */
int engine_dist_comm(engine_dist *d, int tp, kernels_comm *out, owl_err *err);

#endif
