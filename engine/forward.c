/* The forward pass of Llama-family models on the CPU, with a KV cache and
 * Megatron-style tensor parallelism: rank r owns a slice of the query heads
 * (and the key/value heads they use, replicated when there are more ranks
 * than kv heads) and a slice of the feed-forward width; q/k/v and gate/up are
 * split by output rows, o and down by input columns, and the partial outputs
 * meet in one all-reduce per attention block and one per MLP, through the
 * comm interface. On the CPU every rank's shard is a view of the same mapped
 * weights, so sharding costs no memory. */
#include "internal.h"
#include "lora.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

struct engine_session {
	engine_model *m;
	int n_ctx, pos;
	float *k, *v; /* [layer][n_ctx][n_kv * head_dim] */
	const engine_adapter *adapter; /* applied to every projection, or NULL */
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

int engine_session_set_adapter(engine_session *s, const engine_adapter *a, owl_err *err)
{
	int rc = a ? engine_adapter_check(a, s->m, err) : 0;
	if (rc)
		return rc;
	s->adapter = a;
	s->pos = 0;
	return 0;
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
/* One forward step's state, shared by the ranks; each rank has its own
 * activation buffers and writes only its own partial output. */
typedef struct step {
	engine_session *s;
	const layer *L;
	int n, pos0, l;
	const float *xn;      /* normalised input, [n, dim] (read by all ranks) */
	float **q, **kb, **vb, **att, **gate, **up, **part; /* per rank */
	float **lora_tmp;     /* per rank: [n, rank] scratch of the adapter, if any */
	int rc[16];           /* per rank */
	owl_err err[16];
} step;

/* Rank r's query heads [h0, h0+hpr) read kv heads [kv0, kv1). */
static void rank_heads(const engine_model_info *in, int r, int *h0, int *kv0, int *nkv)
{
	int hpr = in->n_heads / in->tp, group = in->n_heads / in->n_kv_heads;
	*h0 = r * hpr;
	*kv0 = *h0 / group;
	*nkv = (*h0 + hpr - 1) / group + 1 - *kv0;
}

/* The adapter's part of a projection on rank r's shard w of role `role`:
 * y += scale * B (A x). A row-split shard (q/k/v, gate/up) starts at output
 * row `off` and takes that band of B's rows; a column-split one (o, down)
 * starts at input column `off` and takes that band of A's columns, its
 * partial summed with the other ranks' by the all-reduce (exact: linear). */
static int adapt(step *st, int r, engine_role role, float *y, const float *x, const wmat *w,
		 int off, owl_err *err)
{
	const engine_adapter *ad = st->s->adapter;
	if (!ad)
		return 0;
	const engine_lora *lo = &ad->lora[st->l][role];
	if (!lo->a)
		return 0;
	int in_full, rk = ad->rank;
	engine_role_shape(&st->s->m->info, role, &(int){0}, &in_full);
	const float *a = lo->a, *b = lo->b;
	if (engine_roles[role].split_cols)
		a += off;
	else
		b += (size_t)off * rk;
	return st->s->m->be->lora(y, x, st->n, w->cols, w->rows, rk, a, in_full, b, rk, ad->scale,
				  st->lora_tmp[r], err);
}

/* y = x W^T for rank r's shard, then its adapter. */
static int project(step *st, int r, engine_role role, float *y, const float *x, const wmat *w,
		   int off, owl_err *err)
{
	int rc = st->s->m->be->matmul(y, x, w, st->n, err);
	return rc ? rc : adapt(st, r, role, y, x, w, off, err);
}

static int rank_qkv(step *st, int r, owl_err *err)
{
	const engine_model *m = st->s->m;
	const engine_model_info *in = &m->info;
	const kernels_backend *be = m->be;
	const layer *L = st->L;
	int hd = in->head_dim, hpr = in->n_heads / in->tp, n = st->n, h0, kv0, nkv, rc;
	rank_heads(in, r, &h0, &kv0, &nkv);
	wmat wq = rows_of(&L->wq, h0 * hd, hpr * hd);
	wmat wk = rows_of(&L->wk, kv0 * hd, nkv * hd);
	wmat wv = rows_of(&L->wv, kv0 * hd, nkv * hd);
	float *q = st->q[r], *kb = st->kb[r], *vb = st->vb[r];
	if (n == 1) {
		/* Decode: one pass of the thread pool over all three. */
		const wmat *ws[3] = {&wq, &wk, &wv};
		float *ys[3] = {q, kb, vb};
		if ((rc = be->matvec_multi(ys, ws, 3, st->xn, err)) ||
		    (rc = adapt(st, r, ENGINE_ROLE_Q, q, st->xn, &wq, h0 * hd, err)) ||
		    (rc = adapt(st, r, ENGINE_ROLE_K, kb, st->xn, &wk, kv0 * hd, err)) ||
		    (rc = adapt(st, r, ENGINE_ROLE_V, vb, st->xn, &wv, kv0 * hd, err)))
			return rc;
	} else if ((rc = project(st, r, ENGINE_ROLE_Q, q, st->xn, &wq, h0 * hd, err)) ||
		   (rc = project(st, r, ENGINE_ROLE_K, kb, st->xn, &wk, kv0 * hd, err)) ||
		   (rc = project(st, r, ENGINE_ROLE_V, vb, st->xn, &wv, kv0 * hd, err))) {
		return rc;
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
	kernels_rope_layout layout = m->rope_adjacent ? KERNELS_ROPE_ADJACENT : KERNELS_ROPE_HALF;
	if ((rc = be->rope(q, n, st->pos0, hpr, hd, m->inv_freq, layout, err)))
		return rc;
	return be->rope(kb, n, st->pos0, nkv, hd, m->inv_freq, layout, err);
}

/* Rank r's new keys and values into the cache. A kv head shared by several
 * ranks (replicated when tp > n_kv_heads) is written once, by the first. */
static void rank_store_kv(step *st, int r)
{
	const engine_model_info *in = &st->s->m->info;
	int hd = in->head_dim, kvd = in->n_kv_heads * hd, h0, kv0, nkv, prev_end = 0;
	rank_heads(in, r, &h0, &kv0, &nkv);
	if (r > 0) {
		int p0, pk0, pn;
		rank_heads(in, r - 1, &p0, &pk0, &pn);
		prev_end = pk0 + pn;
	}
	float *kc = st->s->k + (size_t)st->l * st->s->n_ctx * kvd;
	float *vc = st->s->v + (size_t)st->l * st->s->n_ctx * kvd;
	for (int j = kv0 < prev_end ? prev_end : kv0; j < kv0 + nkv; j++)
		for (int i = 0; i < st->n; i++) {
			size_t dst = (size_t)(st->pos0 + i) * kvd + (size_t)j * hd;
			size_t src = ((size_t)i * nkv + (size_t)(j - kv0)) * hd;
			memcpy(kc + dst, st->kb[r] + src, (size_t)hd * sizeof(float));
			memcpy(vc + dst, st->vb[r] + src, (size_t)hd * sizeof(float));
		}
}

static int rank_attention(step *st, int r, owl_err *err)
{
	const engine_model *m = st->s->m;
	const engine_model_info *in = &m->info;
	int hd = in->head_dim, hpr = in->n_heads / in->tp, kvd = in->n_kv_heads * hd, h0, kv0, nkv, rc;
	rank_heads(in, r, &h0, &kv0, &nkv);
	const float *kc = st->s->k + (size_t)st->l * st->s->n_ctx * kvd;
	const float *vc = st->s->v + (size_t)st->l * st->s->n_ctx * kvd;
	if ((rc = m->be->attention(st->att[r], st->q[r], kc, vc, st->n, st->pos0, hpr, h0,
				   in->n_heads / in->n_kv_heads, kvd, hd, in->sliding_window, err)))
		return rc;
	wmat wo = cols_of(&st->L->wo, h0 * hd, hpr * hd);
	return project(st, r, ENGINE_ROLE_O, st->part[r], st->att[r], &wo, h0 * hd, err);
}

static int rank_ffn(step *st, int r, owl_err *err)
{
	const engine_model *m = st->s->m;
	const kernels_backend *be = m->be;
	int fpr = m->info.ffn_dim / m->info.tp, n = st->n, rc;
	wmat wg = rows_of(&st->L->w_gate, r * fpr, fpr), wu = rows_of(&st->L->w_up, r * fpr, fpr);
	if (n == 1) {
		const wmat *ws[2] = {&wg, &wu};
		float *ys[2] = {st->gate[r], st->up[r]};
		if ((rc = be->matvec_multi(ys, ws, 2, st->xn, err)) ||
		    (rc = adapt(st, r, ENGINE_ROLE_GATE, st->gate[r], st->xn, &wg, r * fpr, err)) ||
		    (rc = adapt(st, r, ENGINE_ROLE_UP, st->up[r], st->xn, &wu, r * fpr, err)))
			return rc;
	} else if ((rc = project(st, r, ENGINE_ROLE_GATE, st->gate[r], st->xn, &wg, r * fpr, err)) ||
		   (rc = project(st, r, ENGINE_ROLE_UP, st->up[r], st->xn, &wu, r * fpr, err))) {
		return rc;
	}
	if ((rc = be->swiglu(st->gate[r], st->up[r], (size_t)n * fpr, err)))
		return rc;
	wmat wd = cols_of(&st->L->w_down, r * fpr, fpr);
	return project(st, r, ENGINE_ROLE_DOWN, st->part[r], st->gate[r], &wd, r * fpr, err);
}

/* Runs fn for every rank: each rank a thread group of threads/tp threads,
 * the groups side by side (nested OpenMP); tp = 1 is one group of all. */
static int for_ranks(step *st, int (*fn)(step *, int, owl_err *), owl_err *err)
{
	const engine_model_info *in = &st->s->m->info;
	int tp = in->tp;
	if (tp == 1)
		return fn(st, 0, err);
	int inner = in->threads / tp > 0 ? in->threads / tp : 1;
#pragma omp parallel for num_threads(tp) schedule(static, 1)
	for (int r = 0; r < tp; r++) {
		omp_set_num_threads(inner);
		owl_err_clear(&st->err[r]);
		st->rc[r] = fn(st, r, &st->err[r]);
	}
	for (int r = 0; r < tp; r++)
		if (st->rc[r]) {
			if (err)
				*err = st->err[r];
			return st->rc[r];
		}
	return 0;
}

#define TRY(call)                  \
	do {                       \
		if ((rc = (call))) \
			goto out;  \
	} while (0)

/* One micro-batch of n tokens at s->pos; logits NULL skips the output layer
 * (a prompt's earlier micro-batches). */
static int forward_batch(engine_session *s, const int32_t *tokens, int n, float *logits,
			 int all_logits, owl_err *err)
{
	engine_model *m = s->m;
	const engine_model_info *in = &m->info;
	const kernels_backend *be = m->be;
	const int dim = in->dim, hd = in->head_dim, tp = in->tp;
	const int hpr = in->n_heads / tp, fpr = in->ffn_dim / tp;
	int rc = 0;
	step st = {.s = s, .n = n, .pos0 = s->pos};
	float *x = owl_xmalloc((size_t)n * dim * sizeof *x);
	float *xn = owl_xmalloc((size_t)n * dim * sizeof *xn);
	st.xn = xn;
	float ***bufs[] = {&st.q, &st.kb, &st.vb, &st.att, &st.gate, &st.up, &st.part, &st.lora_tmp};
	/* Sizes per rank: kv heads per rank are at most hpr (replication). */
	size_t sizes[] = {(size_t)n * hpr * hd, (size_t)n * hpr * hd, (size_t)n * hpr * hd,
			  (size_t)n * hpr * hd, (size_t)n * fpr, (size_t)n * fpr, (size_t)n * dim,
			  (size_t)n * (s->adapter ? s->adapter->rank : 1)};
	for (size_t b = 0; b < sizeof bufs / sizeof bufs[0]; b++) {
		*bufs[b] = owl_xcalloc((size_t)tp, sizeof ***bufs);
		for (int r = 0; r < tp; r++)
			(*bufs[b])[r] = owl_xmalloc(sizes[b] * sizeof(float));
	}

	TRY(be->embedding(x, &m->tok_embd, tokens, n, err));
	for (int l = 0; l < in->n_layers; l++) {
		st.L = &m->layers[l];
		st.l = l;
		TRY(be->rmsnorm(xn, x, st.L->attn_norm, n, dim, in->norm_eps, err));
		TRY(for_ranks(&st, rank_qkv, err));
		for (int r = 0; r < tp; r++)
			rank_store_kv(&st, r);
		TRY(for_ranks(&st, rank_attention, err));
		TRY(m->comm.all_reduce_sum(&m->comm, x, st.part, (size_t)n * dim, err));
		TRY(be->rmsnorm(xn, x, st.L->ffn_norm, n, dim, in->norm_eps, err));
		TRY(for_ranks(&st, rank_ffn, err));
		TRY(m->comm.all_reduce_sum(&m->comm, x, st.part, (size_t)n * dim, err));
	}
	s->pos += n;
	if (logits) {
		int first = all_logits ? 0 : n - 1, nl = all_logits ? n : 1;
		TRY(be->rmsnorm(xn, x + (size_t)first * dim, m->out_norm, nl, dim, in->norm_eps, err));
		TRY(be->matmul(logits, xn, &m->output, nl, err));
	}
out:
	for (size_t b = 0; b < sizeof bufs / sizeof bufs[0]; b++) {
		for (int r = 0; r < tp; r++)
			free((*bufs[b])[r]);
		free(*bufs[b]);
	}
	free(x);
	free(xn);
	return rc;
}

/* Prompts run in micro-batches of UBATCH tokens: the activations of a
 * forward pass (q/k/v, the MLP's hidden width, attention scores) grow with
 * the tokens in flight, while the kernels gain nothing past a few 16-token
 * tiles (measured: pp512 the same at 64 and 128 for SmolLM2 Q4_0 and
 * TinyLlama Q4_0/f16), so bigger batches would only cost memory. */
enum { UBATCH = 64 };

int engine_forward(engine_session *s, const int32_t *tokens, int n, float *logits, int all_logits,
		   owl_err *err)
{
	const engine_model_info *in = &s->m->info;
	if (n <= 0)
		return owl_err_set(err, OWL_EUSAGE, "nothing to run: no tokens");
	if (s->pos + n > s->n_ctx)
		return owl_err_set(err, OWL_EUSAGE, "the context of %d tokens is full (%d used, %d more "
				   "asked); start over or use a larger --ctx", s->n_ctx, s->pos, n);
	for (int i = 0; i < n; i++)
		if (tokens[i] < 0 || tokens[i] >= in->vocab)
			return owl_err_set(err, OWL_EUSAGE, "token id %d is outside the vocabulary of %d",
					   tokens[i], in->vocab);
	if (in->tp > 16)
		return owl_err_set(err, OWL_EUSAGE, "--tp %d: at most 16 ranks", in->tp);
	omp_set_num_threads(in->threads);
	omp_set_max_active_levels(2);
	const int pos0 = s->pos;
	for (int i = 0; i < n; i += UBATCH) {
		int nb = n - i < UBATCH ? n - i : UBATCH, last = i + nb == n;
		float *out = all_logits ? logits + (size_t)i * in->vocab : last ? logits : NULL;
		int rc = forward_batch(s, tokens + i, nb, out, all_logits, err);
		if (rc) {
			s->pos = pos0; /* all or nothing: a failed prompt leaves the session as it was */
			return rc;
		}
	}
	return 0;
}
