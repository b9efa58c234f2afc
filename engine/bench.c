/* Figures `owl bench` prints beside tokens/s: the bytes one decoding step
 * reads (for the fraction of the memory-bandwidth roofline) and the speed of
 * a prompt's matrix products run alone on the model's own weights (for the
 * fraction of its GEMMs' throughput that prompt processing reaches). */
#include "lora.h"

#include <stdlib.h>
#include <string.h>

#define K(be, op, ...) ((be)->iface->op((be), __VA_ARGS__))

static uint64_t matrix_bytes(const wmat *w) { return (uint64_t)w->rows * w->row_bytes; }

uint64_t engine_model_decode_bytes(const engine_model *m)
{
	const engine_model_info *in = &m->info;
	uint64_t bytes = 0;
	for (int l = 0; l < in->n_layers; l++) {
		for (int r = 0; r < ENGINE_ROLE_COUNT; r++)
			bytes += matrix_bytes(engine_layer_weight(&m->layers[l], (engine_role)r));
		bytes += 2 * (uint64_t)in->dim * sizeof(float); /* the two norms */
	}
	/* The output matrix is read whole; the embedding lookup reads one row. */
	bytes += matrix_bytes(&m->output) + m->tok_embd.row_bytes + (uint64_t)in->dim * sizeof(float);
	return bytes;
}

uint64_t engine_model_kv_token_bytes(const engine_model *m, int kv_type)
{
	const engine_model_info *in = &m->info;
	uint64_t elem = kv_type == ENGINE_KV_F16 ? 2 : 4;
	return (uint64_t)in->n_layers * 2 * (uint64_t)in->n_kv_heads * (uint64_t)in->head_dim * elem;
}

/* Every projection of every layer on n rows, then the output matrix on one
 * row (a prompt's forward pass scores its last token only). */
static int products(engine_model *m, float *x, float *y, int n, owl_err *err)
{
	const engine_model_info *in = &m->info;
	kernels_backend *be = m->ranks[0];
	int rc = 0;
	for (int l = 0; l < in->n_layers && !rc; l++)
		for (int r = 0; r < ENGINE_ROLE_COUNT && !rc; r++)
			rc = K(be, matmul, y, x, engine_layer_weight(&m->rank_layers[0][l], (engine_role)r), n,
			       err);
	if (!rc)
		rc = K(be, matmul, y, x, &m->output, 1, err);
	if (!rc)
		rc = K(be, synchronize, err);
	return rc;
}

int engine_model_gemm_bench(engine_model *m, int n, int reps, double *seconds, double *flops,
			    owl_err *err)
{
	const engine_model_info *in = &m->info;
	*seconds = 0, *flops = 0;
	if (in->tp != 1 || in->processes != 1)
		return owl_err_set(err, OWL_EUSAGE, "the GEMM reference runs on one rank (tp 1, one process)");
	if (n < 1 || reps < 1)
		return owl_err_set(err, OWL_EUSAGE, "the GEMM reference needs n >= 1 and reps >= 1");
	size_t widest_in = (size_t)(in->dim > in->ffn_dim ? in->dim : in->ffn_dim);
	size_t qd = (size_t)in->n_heads * in->head_dim;
	widest_in = widest_in > qd ? widest_in : qd;
	size_t widest_out = widest_in > (size_t)in->vocab ? widest_in : (size_t)in->vocab;
	size_t x_floats = (size_t)n * widest_in, y_floats = (size_t)n * widest_out;
	kernels_backend *be = m->ranks[0];
	kernels_buffer *xb = NULL, *yb = NULL;
	float *x, *y;
	int rc = kernels_alloc(be, x_floats * sizeof(float), &xb, (void **)&x, err);
	if (!rc)
		rc = kernels_alloc(be, y_floats * sizeof(float), &yb, (void **)&y, err);
	/* Inputs of a normed activation's size; the values do not change the speed. */
	float *host = rc ? NULL : malloc(x_floats * sizeof *host);
	if (!rc && !host)
		rc = owl_err_set(err, OWL_EFAIL, "cannot allocate %zu MiB of GEMM inputs",
				 x_floats * sizeof *host >> 20);
	if (!rc) {
		uint64_t s = 12345;
		for (size_t i = 0; i < x_floats; i++) {
			s = s * 6364136223846793005ull + 1442695040888963407ull;
			host[i] = (float)((int)(s >> 41) % 2001 - 1000) * 1e-3f;
		}
		rc = be->iface->copy_to_device(be, xb, 0, host, x_floats * sizeof *host, err);
	}
	free(host);
	/* One pass warms the caches and whatever the backend sets up lazily. */
	if (!rc)
		rc = products(m, x, y, n, err);
	double t0 = owl_now();
	for (int r = 0; r < reps && !rc; r++)
		rc = products(m, x, y, n, err);
	double t = owl_now() - t0;
	be->iface->buffer_free(be, xb);
	be->iface->buffer_free(be, yb);
	if (rc) {
		owl_err_wrap(err, "the GEMM reference of %d rows", n);
		return rc;
	}
	double f = 0;
	for (int l = 0; l < in->n_layers; l++)
		for (int r = 0; r < ENGINE_ROLE_COUNT; r++) {
			const wmat *w = engine_layer_weight(&m->layers[l], (engine_role)r);
			f += 2.0 * n * w->rows * (double)w->cols;
		}
	f += 2.0 * m->output.rows * (double)m->output.cols;
	*seconds = t / reps, *flops = f;
	return 0;
}
