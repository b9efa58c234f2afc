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

#define TRY(call)                  \
	do {                       \
		if ((rc = (call))) \
			goto out;  \
	} while (0)

int engine_forward(engine_session *s, const int32_t *tokens, int n, float *logits, int all_logits,
		   owl_err *err)
{
	engine_model *m = s->m;
	const engine_model_info *in = &m->info;
	const kernels_backend *be = m->be;
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
	const kernels_rope_layout layout = m->rope_adjacent ? KERNELS_ROPE_ADJACENT : KERNELS_ROPE_HALF;
	int rc = 0;

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

	TRY(be->embedding(x, &m->tok_embd, tokens, n, err));
	for (int l = 0; l < in->n_layers; l++) {
		const layer *L = &m->layers[l];
		float *kc = s->k + (size_t)l * s->n_ctx * kvd, *vc = s->v + (size_t)l * s->n_ctx * kvd;
		TRY(be->rmsnorm(xn, x, L->attn_norm, n, dim, in->norm_eps, err));
		for (int r = 0; r < tp; r++) {
			/* Rank r: query heads [h0, h0+hpr) and the kv heads they read. */
			int h0 = r * hpr, kv0 = h0 / group, kv1 = (h0 + hpr - 1) / group + 1;
			int nkv = kv1 - kv0;
			wmat wq = rows_of(&L->wq, h0 * hd, hpr * hd);
			wmat wk = rows_of(&L->wk, kv0 * hd, nkv * hd);
			wmat wv = rows_of(&L->wv, kv0 * hd, nkv * hd);
			if (n == 1) {
				/* Decode: one pass of the thread pool over all three. */
				const wmat *ws[3] = {&wq, &wk, &wv};
				float *ys[3] = {q, kb, vb};
				TRY(be->matvec_multi(ys, ws, 3, xn, err));
			} else {
				TRY(be->matmul(q, xn, &wq, n, err));
				TRY(be->matmul(kb, xn, &wk, n, err));
				TRY(be->matmul(vb, xn, &wv, n, err));
			}
			for (int i = 0; L->bq && i < n; i++) {
				float *qi = q + (size_t)i * hpr * hd, *ki = kb + (size_t)i * nkv * hd;
				float *vi = vb + (size_t)i * nkv * hd;
				for (int j = 0; j < hpr * hd; j++)
					qi[j] += L->bq[h0 * hd + j];
				for (int j = 0; j < nkv * hd; j++) {
					ki[j] += L->bk[kv0 * hd + j];
					vi[j] += L->bv[kv0 * hd + j];
				}
			}
			TRY(be->rope(q, n, pos0, hpr, hd, m->inv_freq, layout, err));
			TRY(be->rope(kb, n, pos0, nkv, hd, m->inv_freq, layout, err));
			/* Replicated kv heads are written by each rank that uses them,
			 * with the same values. */
			for (int i = 0; i < n; i++) {
				memcpy(kc + (size_t)(pos0 + i) * kvd + kv0 * hd, kb + (size_t)i * nkv * hd,
				       (size_t)nkv * hd * sizeof *kb);
				memcpy(vc + (size_t)(pos0 + i) * kvd + kv0 * hd, vb + (size_t)i * nkv * hd,
				       (size_t)nkv * hd * sizeof *vb);
			}
			TRY(be->attention(att, q, kc, vc, n, pos0, hpr, h0, group, kvd, hd,
					  in->sliding_window, err));
			wmat wo = cols_of(&L->wo, h0 * hd, hpr * hd);
			TRY(be->matmul(part[r], att, &wo, n, err));
		}
		TRY(m->comm.all_reduce_sum(&m->comm, x, part, (size_t)n * dim, err));

		TRY(be->rmsnorm(xn, x, L->ffn_norm, n, dim, in->norm_eps, err));
		for (int r = 0; r < tp; r++) {
			wmat wg = rows_of(&L->w_gate, r * fpr, fpr), wu = rows_of(&L->w_up, r * fpr, fpr);
			if (n == 1) {
				const wmat *ws[2] = {&wg, &wu};
				float *ys[2] = {gate, up};
				TRY(be->matvec_multi(ys, ws, 2, xn, err));
			} else {
				TRY(be->matmul(gate, xn, &wg, n, err));
				TRY(be->matmul(up, xn, &wu, n, err));
			}
			TRY(be->swiglu(gate, up, (size_t)n * fpr, err));
			wmat wd = cols_of(&L->w_down, r * fpr, fpr);
			TRY(be->matmul(part[r], gate, &wd, n, err));
		}
		TRY(m->comm.all_reduce_sum(&m->comm, x, part, (size_t)n * dim, err));
	}
	s->pos += n;
	int first = all_logits ? 0 : n - 1, nl = all_logits ? n : 1;
	TRY(be->rmsnorm(xn, x + (size_t)first * dim, m->out_norm, nl, dim, in->norm_eps, err));
	TRY(be->matmul(logits, xn, &m->output, nl, err));
out:
	for (int r = 0; r < tp; r++)
		free(part[r]);
	free(part);
	free(x);
	free(xn);
	free(q);
	free(kb);
	free(vb);
	free(att);
	free(gate);
	free(up);
	return rc;
}
