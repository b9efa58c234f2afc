/* The forward pass of Llama-family models on the CPU, with a KV cache and
 * Megatron-style tensor parallelism: rank r owns a slice of the query heads
 * (and the key/value heads they use, replicated when there are more ranks
 * than kv heads) and a slice of the feed-forward width; q/k/v and gate/up are
 * split by output rows, o and down by input columns, and the partial outputs
 * meet in one all-reduce per attention block and one per MLP, through the
 * comm interface. On the CPU every rank's shard is a view of the same mapped
 * weights, so sharding costs no memory. */
#include "internal.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

struct engine_session {
	engine_model *m;
	int n_ctx, pos;
	float *k, *v; /* [layer][n_ctx][n_kv * head_dim] */
};

int engine_session_new(engine_model *m, int n_ctx, engine_session **out, owl_err *err)
{
	*out = NULL;
	const engine_model_info *in = &m->info;
	if (n_ctx <= 0)
		n_ctx = in->ctx_train;
	if (n_ctx > in->ctx_train)
		return owl_err_set(err, OWL_EUSAGE, "a context of %d tokens exceeds the model's %d",
				   n_ctx, in->ctx_train);
	size_t per = (size_t)in->n_layers * (size_t)n_ctx * (size_t)(in->n_kv_heads * in->head_dim);
	engine_session *s = owl_xcalloc(1, sizeof *s);
	s->m = m;
	s->n_ctx = n_ctx;
	s->k = calloc(per, sizeof *s->k);
	s->v = calloc(per, sizeof *s->v);
	if (!s->k || !s->v) {
		engine_session_free(s);
		return owl_err_set(err, OWL_EFAIL, "cannot allocate a KV cache of %zu MiB for %d tokens",
				   2 * per * sizeof(float) >> 20, n_ctx);
	}
	*out = s;
	return 0;
}

void engine_session_free(engine_session *s)
{
	if (!s)
		return;
	free(s->k);
	free(s->v);
	free(s);
}

int engine_session_pos(const engine_session *s) { return s->pos; }
int engine_session_ctx(const engine_session *s) { return s->n_ctx; }
void engine_session_truncate(engine_session *s, int pos)
{
	if (pos >= 0 && pos < s->pos)
		s->pos = pos;
}

uint64_t engine_session_kv_bytes(const engine_session *s)
{
	const engine_model_info *in = &s->m->info;
	return 2ull * (uint64_t)in->n_layers * (uint64_t)s->n_ctx *
	       (uint64_t)(in->n_kv_heads * in->head_dim) * sizeof(float);
}

/* ---- the shard of rank r ----------------------------------------------------- */

/* Rows [r0, r0+n) of w: contiguous, a plain view. */
static wmat rows_of(const wmat *w, int r0, int n)
{
	wmat v = *w;
	v.data = w->data + (size_t)r0 * w->row_bytes;
	v.rows = n;
	return v;
}

/* Columns [c0, c0+n) of every row: a strided view (row_bytes unchanged). */
static wmat cols_of(const wmat *w, int c0, int n)
{
	wmat v = *w;
	size_t off = wtype_row_bytes(w->type, c0);
	v.data = w->data + off;
	v.cols = n;
	return v;
}

/* The CPU all-reduce: ranks share memory, so the sum is read from each
 * rank's partial buffer in place. An NCCL implementation has the same shape. */
static void all_reduce_add(float *x, float *const *partials, int tp, size_t n)
{
	/* Small vectors (one token) are cheaper than waking the thread pool. */
#pragma omp parallel for schedule(static) if (n > 16384)
	for (size_t i = 0; i < n; i++) {
		float s = 0;
		for (int r = 0; r < tp; r++)
			s += partials[r][i];
		x[i] += s;
	}
}

static void rope(float *v, int nheads, int hd, int pos, const float *inv_freq, int adjacent)
{
	int half = hd / 2;
	for (int h = 0; h < nheads; h++) {
		float *x = v + (size_t)h * hd;
		for (int i = 0; i < half; i++) {
			float a = (float)pos * inv_freq[i], c = cosf(a), s = sinf(a);
			int i0 = adjacent ? 2 * i : i, i1 = adjacent ? 2 * i + 1 : i + half;
			float x0 = x[i0], x1 = x[i1];
			x[i0] = x0 * c - x1 * s;
			x[i1] = x0 * s + x1 * c;
		}
	}
}

int engine_forward(engine_session *s, const int32_t *tokens, int n, float *logits, int all_logits,
		   owl_err *err)
{
	engine_model *m = s->m;
	const engine_model_info *in = &m->info;
	if (n <= 0)
		return owl_err_set(err, OWL_EUSAGE, "nothing to run: no tokens");
	if (s->pos + n > s->n_ctx)
		return owl_err_set(err, OWL_EUSAGE, "the context of %d tokens is full (%d used, %d more "
				   "asked); start over or use a larger --ctx", s->n_ctx, s->pos, n);
	for (int i = 0; i < n; i++)
		if (tokens[i] < 0 || tokens[i] >= in->vocab)
			return owl_err_set(err, OWL_EUSAGE, "token id %d is outside the vocabulary of %d",
					   tokens[i], in->vocab);
	omp_set_num_threads(in->threads);
	const int dim = in->dim, hd = in->head_dim, H = in->n_heads, KV = in->n_kv_heads;
	const int tp = in->tp, hpr = H / tp, group = H / KV, fpr = in->ffn_dim / tp;
	const int kvd = KV * hd, pos0 = s->pos;
	const float scale = 1.0f / sqrtf((float)hd);

	float *x = owl_xmalloc((size_t)n * dim * sizeof *x);
	float *xn = owl_xmalloc((size_t)n * dim * sizeof *xn);
	float *q = owl_xmalloc((size_t)n * hpr * hd * sizeof *q);
	float *kb = owl_xmalloc((size_t)n * kvd * sizeof *kb);
	float *vb = owl_xmalloc((size_t)n * kvd * sizeof *vb);
	float *att = owl_xmalloc((size_t)n * hpr * hd * sizeof *att);
	float *gate = owl_xmalloc((size_t)n * fpr * sizeof *gate);
	float *up = owl_xmalloc((size_t)n * fpr * sizeof *up);
	float **part = owl_xmalloc((size_t)tp * sizeof *part);
	for (int r = 0; r < tp; r++)
		part[r] = owl_xmalloc((size_t)n * dim * sizeof **part);
	int nthreads = in->threads;
	float *scores = owl_xmalloc((size_t)nthreads * s->n_ctx * sizeof *scores);

	for (int i = 0; i < n; i++)
		w_row_to_f32(&m->tok_embd, tokens[i], x + (size_t)i * dim);

	for (int l = 0; l < in->n_layers; l++) {
		const layer *L = &m->layers[l];
		float *kc = s->k + (size_t)l * s->n_ctx * kvd, *vc = s->v + (size_t)l * s->n_ctx * kvd;
		for (int i = 0; i < n; i++)
			rmsnorm(xn + (size_t)i * dim, x + (size_t)i * dim, L->attn_norm, dim, in->norm_eps);
		for (int r = 0; r < tp; r++) {
			int h0 = r * hpr, kv0 = h0 / group, kv1 = (h0 + hpr - 1) / group + 1;
			int nkv = kv1 - kv0;
			wmat wq = rows_of(&L->wq, h0 * hd, hpr * hd);
			wmat wk = rows_of(&L->wk, kv0 * hd, nkv * hd);
			wmat wv = rows_of(&L->wv, kv0 * hd, nkv * hd);
			if (n == 1) {
				/* Decode: one pass of the thread pool over all three. */
				const wmat *ws[3] = {&wq, &wk, &wv};
				float *ys[3] = {q, kb, vb};
				w_matvec_multi(ws, ys, 3, xn);
			} else {
				w_matmul(&wq, xn, q, n);
				w_matmul(&wk, xn, kb, n);
				w_matmul(&wv, xn, vb, n);
			}
			for (int i = 0; i < n; i++) {
				float *qi = q + (size_t)i * hpr * hd, *ki = kb + (size_t)i * nkv * hd;
				float *vi = vb + (size_t)i * nkv * hd;
				if (L->bq) {
					for (int j = 0; j < hpr * hd; j++)
						qi[j] += L->bq[h0 * hd + j];
					for (int j = 0; j < nkv * hd; j++) {
						ki[j] += L->bk[kv0 * hd + j];
						vi[j] += L->bv[kv0 * hd + j];
					}
				}
				rope(qi, hpr, hd, pos0 + i, m->inv_freq, m->rope_adjacent);
				rope(ki, nkv, hd, pos0 + i, m->inv_freq, m->rope_adjacent);
				/* Replicated kv heads are written by each rank that uses them,
				 * with the same values. */
				memcpy(kc + (size_t)(pos0 + i) * kvd + kv0 * hd, ki, (size_t)nkv * hd * sizeof *ki);
				memcpy(vc + (size_t)(pos0 + i) * kvd + kv0 * hd, vi, (size_t)nkv * hd * sizeof *vi);
			}
#pragma omp parallel for collapse(2) schedule(static) if (n * hpr > 1)
			for (int i = 0; i < n; i++)
				for (int h = 0; h < hpr; h++) {
					float *sc = scores + (size_t)omp_get_thread_num() * s->n_ctx;
					const float *qh = q + ((size_t)i * hpr + h) * hd;
					int kvh = (h0 + h) / group, p = pos0 + i;
					int lo = in->sliding_window ? p - in->sliding_window + 1 : 0;
					if (lo < 0)
						lo = 0;
					float mx = -INFINITY;
					for (int j = lo; j <= p; j++) {
						const float *kj = kc + (size_t)j * kvd + kvh * hd;
						sc[j] = vec_dot(qh, kj, hd) * scale;
						if (sc[j] > mx)
							mx = sc[j];
					}
					float sum = 0;
					for (int j = lo; j <= p; j++) {
						sc[j] = expf(sc[j] - mx);
						sum += sc[j];
					}
					float *o = att + ((size_t)i * hpr + h) * hd;
					memset(o, 0, (size_t)hd * sizeof *o);
					for (int j = lo; j <= p; j++) {
						const float *vj = vc + (size_t)j * kvd + kvh * hd;
						vec_axpy(o, sc[j] / sum, vj, hd);
					}
				}
			wmat wo = cols_of(&L->wo, h0 * hd, hpr * hd);
			w_matmul(&wo, att, part[r], n);
		}
		all_reduce_add(x, part, tp, (size_t)n * dim);

		for (int i = 0; i < n; i++)
			rmsnorm(xn + (size_t)i * dim, x + (size_t)i * dim, L->ffn_norm, dim, in->norm_eps);
		for (int r = 0; r < tp; r++) {
			wmat wg = rows_of(&L->w_gate, r * fpr, fpr), wu = rows_of(&L->w_up, r * fpr, fpr);
			if (n == 1) {
				const wmat *ws[2] = {&wg, &wu};
				float *ys[2] = {gate, up};
				w_matvec_multi(ws, ys, 2, xn);
			} else {
				w_matmul(&wg, xn, gate, n);
				w_matmul(&wu, xn, up, n);
			}
#pragma omp parallel for schedule(static) if ((size_t)n * fpr > 16384)
			for (size_t j = 0; j < (size_t)n * fpr; j++) {
				float g = gate[j];
				gate[j] = g / (1.0f + expf(-g)) * up[j];
			}
			wmat wd = cols_of(&L->w_down, r * fpr, fpr);
			w_matmul(&wd, gate, part[r], n);
		}
		all_reduce_add(x, part, tp, (size_t)n * dim);
	}
	s->pos += n;
	int first = all_logits ? 0 : n - 1, nl = all_logits ? n : 1;
	for (int i = 0; i < nl; i++)
		rmsnorm(xn + (size_t)i * dim, x + (size_t)(first + i) * dim, m->out_norm, dim,
			in->norm_eps);
	w_matmul(&m->output, xn, logits, nl);

	for (int r = 0; r < tp; r++)
		free(part[r]);
	free(part);
	free(scores);
	free(x);
	free(xn);
	free(q);
	free(kb);
	free(vb);
	free(att);
	free(gate);
	free(up);
	return 0;
}
