/* Where a model's ranks run: one kernel backend instance per local rank, on
 * the CPU or on CUDA devices, and the comm that joins them (threads sharing
 * memory, NCCL between GPUs, the launch's comm between processes). The
 * choice is made once per model at load; the forward pass never branches
 * on the device. */
#include "internal.h"
#include "dist.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int engine_device_parse(const char *s, engine_device *dev, int *first_gpu, owl_err *err)
{
	*first_gpu = 0;
	if (!strcmp(s, "auto")) {
		*dev = ENGINE_DEVICE_AUTO;
		return 0;
	}
	if (!strcmp(s, "cpu")) {
		*dev = ENGINE_DEVICE_CPU;
		return 0;
	}
	if (!strncmp(s, "cuda", 4) && (s[4] == 0 || s[4] == ':')) {
		*dev = ENGINE_DEVICE_CUDA;
		if (s[4] == ':') {
			char *end;
			long n = strtol(s + 5, &end, 10);
			if (end == s + 5 || *end || n < 0 || n > 255)
				return owl_err_set(err, OWL_EUSAGE, "'%s' names no CUDA device: use cuda:N, "
						   "N from 0", s);
			*first_gpu = (int)n;
		}
		return 0;
	}
	return owl_err_set(err, OWL_EUSAGE, "unknown device '%s': use auto, cpu, cuda or cuda:N", s);
}

/* Whether this machine can run the CUDA backend: an NVIDIA driver (its
 * control device) before anything is loaded, so that a machine without one
 * never maps the CUDA libraries, then the backend object and a device.
 * Answered once per process; why not, when not. */
static pthread_once_t gpu_once = PTHREAD_ONCE_INIT;
static int gpu_usable, gpu_count;
static char gpu_why_not[300];

static void gpu_check_once(void)
{
	/* A backend object named in OWL_CUDA_LIB is asked directly (it may be
	 * the tests' host emulator of CUDA, which needs no driver). */
	const char *named = getenv("OWL_CUDA_LIB");
	if (!(named && *named) && access("/dev/nvidiactl", F_OK) != 0) {
		snprintf(gpu_why_not, sizeof gpu_why_not, "no NVIDIA driver on this machine");
		return;
	}
	engine_gpu_info gi;
	engine_gpu_probe(&gi);
	if (!gi.backend_loaded || gi.device_count < 1) {
		snprintf(gpu_why_not, sizeof gpu_why_not, "%s", gi.detail[0] ? gi.detail : "no CUDA device");
		return;
	}
	gpu_usable = 1;
	gpu_count = gi.device_count;
}

/* AUTO falling back to the CPU is said once per process, not per model. */
static pthread_once_t cpu_note_once = PTHREAD_ONCE_INIT;
static void cpu_note(void)
{
	owl_log(1, "running on the CPU: %s", gpu_why_not);
}

/* The CUDA device of local rank r: the process's ranks take devices
 * first_gpu + local_rank * tp_local + r when the machine has them, else
 * all of them share the process's one device (*shared = 1). */
static int rank_device(const engine_model_opts *o, engine_dist *dist, int tp_local, int r,
		       int *shared)
{
	int first = o ? o->first_gpu : 0, local = dist ? engine_dist_local_rank(dist) : 0;
	int base = first + local * tp_local;
	*shared = tp_local > 1 && base + tp_local > gpu_count;
	return *shared ? first + local : base + r;
}

/* Ranks sharing one device (more ranks than GPUs): their partial sums meet
 * through the backends' own ops, on rank 0's stream after every rank's
 * queue has run, summed in rank order as the CPU's comm sums them. The
 * sharding is then computed on the device as it would be over several. */
typedef struct shared_device_comm {
	kernels_comm comm;
	kernels_backend *ranks[16];
} shared_device_comm;

static int shared_wait_all(const shared_device_comm *s, int n, owl_err *err)
{
	int rc = 0;
	for (int r = 0; r < n && !rc; r++)
		rc = s->ranks[r]->iface->synchronize(s->ranks[r], err);
	return rc;
}

static int shared_all_reduce(const kernels_comm *c, float *const *bufs, size_t n, owl_err *err)
{
	const shared_device_comm *s = c->ctx;
	kernels_backend *be = s->ranks[0];
	int rc = shared_wait_all(s, c->local, err);
	for (int r = 1; r < c->local && !rc; r++)
		rc = be->iface->add(be, bufs[0], bufs[r], n, err);
	for (int r = 1; r < c->local && !rc; r++)
		rc = be->iface->copy(be, bufs[r], bufs[0], n * sizeof(float), err);
	return rc ? rc : be->iface->synchronize(be, err);
}

static int shared_all_gather(const kernels_comm *c, float *const *out, const float *const *in,
			     size_t n, owl_err *err)
{
	const shared_device_comm *s = c->ctx;
	kernels_backend *be = s->ranks[0];
	int rc = shared_wait_all(s, c->local, err);
	for (int r = 0; r < c->local && !rc; r++)
		for (int q = 0; q < c->local && !rc; q++)
			rc = be->iface->copy(be, out[r] + (size_t)q * n, in[q], n * sizeof(float), err);
	return rc ? rc : be->iface->synchronize(be, err);
}

static int shared_barrier(const kernels_comm *c, owl_err *err)
{
	return shared_wait_all(c->ctx, c->local, err);
}

static void shared_comm_new(engine_model *m)
{
	shared_device_comm *s = owl_xcalloc(1, sizeof *s);
	for (int r = 0; r < m->info.tp_local; r++)
		s->ranks[r] = m->ranks[r];
	s->comm = (kernels_comm){.name = "device-shared", .size = m->info.tp, .local = m->info.tp_local,
				 .first = 0, .ctx = s, .all_reduce = shared_all_reduce,
				 .all_gather = shared_all_gather, .barrier = shared_barrier};
	m->comm = s->comm;
	m->shared_comm = s;
}

/* NCCL between this process's GPUs, or between processes with the unique
 * id rank 0 makes and the launch carries to every process. */
static int cuda_comm(engine_model *m, engine_dist *dist, int shared, owl_err *err)
{
	const engine_model_info *in = &m->info;
	kernels_comm *c = NULL;
	int rc;
	if (!dist) {
		if (in->tp_local == 1)
			return 0; /* one rank: the shared-memory comm sums nothing */
		if (shared) {
			shared_comm_new(m);
			return 0;
		}
		rc = engine_cuda_nccl_comm_new(m->ranks, in->tp_local, &c, err);
	} else {
		if (in->tp_local != 1)
			return owl_err_set(err, OWL_EUSAGE, "on GPUs a process of a multi-process launch "
					   "drives one rank (it would drive %d): start one process per GPU",
					   in->tp_local);
		unsigned char id[128] = {0};
		rc = engine_dist_rank(dist) == 0 ? engine_cuda_nccl_unique_id(id, err) : 0;
		/* Every rank takes part in the broadcast, even after rank 0 failed
		 * to make the id, so that none waits for ever: a zero id is the
		 * failure's mark. */
		unsigned char ok = rc == 0;
		int brc = engine_dist_bcast(dist, &ok, 1, rc ? NULL : err);
		if (!rc && brc)
			rc = brc;
		if (!rc && !ok)
			rc = owl_err_set(err, OWL_EFAIL, "rank 0 could not make NCCL's unique id");
		if (!rc)
			rc = engine_dist_bcast(dist, id, sizeof id, err);
		if (!rc)
			rc = engine_cuda_nccl_comm_init_rank(id, in->tp, in->tp_first, m->ranks[0], &c, err);
	}
	if (rc)
		return rc;
	m->comm = *c;
	m->comm_owned = c;
	return 0;
}

int engine_model_backends(engine_model *m, const engine_model_opts *o, engine_dist *dist,
			  owl_err *err)
{
	engine_model_info *in = &m->info;
	engine_device want = o ? o->device : ENGINE_DEVICE_AUTO;
	int cuda = 0;
	if (want != ENGINE_DEVICE_CPU) {
		pthread_once(&gpu_once, gpu_check_once);
		if (gpu_usable)
			cuda = 1;
		else if (want == ENGINE_DEVICE_CUDA)
			return owl_err_set(err, OWL_EFAIL, "no GPU to run on: %s", gpu_why_not);
		else
			pthread_once(&cpu_note_once, cpu_note);
	}
	int nl = in->tp_local, rc = 0, shared = 0;
	int per_rank = nl == 1 ? in->threads : (in->threads / nl > 0 ? in->threads / nl : 1);
	for (int r = 0; r < nl && !rc; r++) {
		if (cuda)
			rc = engine_cuda_backend_new(rank_device(o, dist, nl, r, &shared), &m->ranks[r], err);
		else
			rc = kernels_cpu_backend_new(per_rank, &m->ranks[r], err);
	}
	if (rc)
		return rc;
	m->be = m->ranks[0];
	snprintf(in->backend, sizeof in->backend, "%s", m->be->iface->name);
	if (!dist) {
		m->comm = *kernels_cpu_comm();
		m->comm.size = m->comm.local = in->tp;
	}
	if (cuda && shared && dist)
		return owl_err_set(err, OWL_EUSAGE, "this process's %d ranks would share one GPU: across "
				   "processes each rank needs a GPU of its own (start one process per GPU)", nl);
	return cuda ? cuda_comm(m, dist, shared, err) : 0;
}

int engine_model_device_memory(const engine_model *m, engine_device_mem *out, owl_err *err)
{
	memset(out, 0, sizeof *out);
	int seen[16];
	for (int r = 0; r < m->info.tp_local; r++) {
		kernels_backend *be = m->ranks[r];
		if (be->iface->host_memory || !be->iface->mem_info)
			continue;
		kernels_mem_info mi;
		int rc = be->iface->mem_info(be, &mi, err);
		if (rc)
			return owl_err_wrap(err, "rank %d's device memory", m->info.tp_first + r);
		out->known = 1;
		out->buffer_bytes += mi.buffer_bytes;
		out->work_bytes += mi.work_bytes;
		out->pinned_bytes += mi.pinned_bytes;
		/* ranks sharing a device count its memory once */
		int dup = 0;
		for (int i = 0; i < out->devices && !dup; i++)
			dup = seen[i] == be->device;
		if (!dup) {
			seen[out->devices++] = be->device;
			out->device_total += mi.device_total;
			out->device_free += mi.device_free;
		}
	}
	return 0;
}
