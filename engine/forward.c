/* The forward pass of Llama-family models on the CPU, with a KV cache and
 * Megatron-style tensor parallelism: rank r owns a slice of the query heads
 * (and the key/value heads they use, replicated when there are more ranks
 * than kv heads) and a slice of the feed-forward width; q/k/v and gate/up are
 * split by output rows, o and down by input columns, and the partial outputs
 * meet in one all-reduce per attention block and one per MLP, through the
 * comm interface. Each rank's shards were cut and prepared by its own
 * backend at load (engine/model.c), and each rank has its own residual
 * stream, working buffers and KV shard (engine/kv.c). A process drives its
 * local ranks r = 0 .. tp_local - 1, global ranks tp_first + r: all of them
 * in one process, its share of them in a multi-process launch, where the
 * comm carries the sums between processes (engine/dist.h). */
#include "kv_impl.h"

#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A session is one sequence on a pool of its own, sized for n_ctx tokens. */
struct engine_session {
	engine_model *m;
	engine_kv *kv;
	int seq;
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
	engine_session *s = calloc(1, sizeof *s);
	if (!s)
		return owl_err_set(err, OWL_EFAIL, "cannot allocate a session");
	s->m = m;
	engine_kv_opts ko = {.n_tokens = n_ctx, .max_seq_tokens = n_ctx, .type = m->kv_type};
	int rc = engine_kv_new(m, &ko, &s->kv, err);
	if (!rc)
		rc = engine_kv_seq_new(s->kv, 0, &s->seq, err);
	if (rc) {
		engine_session_free(s);
		return rc;
	}
	*out = s;
	return 0;
}

void engine_session_free(engine_session *s)
{
	if (!s)
		return;
	engine_kv_free(s->kv);
	free(s);
}

int engine_session_pos(const engine_session *s) { return engine_kv_seq_len(s->kv, s->seq); }
int engine_session_ctx(const engine_session *s) { return engine_kv_seq_max(s->kv); }
void engine_session_truncate(engine_session *s, int pos)
{
	engine_kv_seq_truncate(s->kv, s->seq, pos);
}

int engine_session_set_adapter(engine_session *s, const engine_adapter *a, owl_err *err)
{
	engine_kv_seq_truncate(s->kv, s->seq, 0);
	return engine_kv_seq_set_adapter(s->kv, s->seq, a, err);
}

void engine_session_get_stats(const engine_session *s, engine_kv_stats *st)
{
	engine_kv_get_stats(s->kv, st);
}

uint64_t engine_session_kv_bytes(const engine_session *s)
{
	engine_kv_stats st;
	engine_kv_get_stats(s->kv, &st);
	return st.bytes_reserved;
}

int engine_session_can_sample(const engine_session *s) { return engine_kv_can_sample(s->kv); }

int engine_forward_sample(engine_session *s, const int32_t *tokens, int n,
			  const engine_row_sample *rs, int32_t *sampled, float *logits, owl_err *err)
{
	if (n <= 0)
		return owl_err_set(err, OWL_EUSAGE, "nothing to run: no tokens");
	int32_t *seq = malloc((size_t)n * sizeof *seq);
	if (!seq)
		return owl_err_set(err, OWL_EFAIL, "cannot allocate a batch of %d tokens", n);
	for (int i = 0; i < n; i++)
		seq[i] = s->seq;
	int dev = rs && rs->device;
	engine_batch b = {.n = n, .tokens = tokens, .seq = seq, .sample = dev ? rs : NULL,
			  .sampled = dev ? sampled : NULL};
	int rc = engine_decode(s->kv, &b, logits, err);
	free(seq);
	return rc;
}

int engine_forward(engine_session *s, const int32_t *tokens, int n, float *logits, int all_logits,
		   owl_err *err)
{
	if (n <= 0)
		return owl_err_set(err, OWL_EUSAGE, "nothing to run: no tokens");
	int32_t *seq = malloc((size_t)n * sizeof *seq);
	uint8_t *want = all_logits ? malloc((size_t)n) : NULL;
	if (!seq || (all_logits && !want)) {
		free(seq), free(want);
		return owl_err_set(err, OWL_EFAIL, "cannot allocate a batch of %d tokens", n);
	}
	for (int i = 0; i < n; i++)
		seq[i] = s->seq;
	if (want)
		memset(want, 1, (size_t)n);
	engine_batch b = {.n = n, .tokens = tokens, .seq = seq, .want = want};
	int rc = engine_decode(s->kv, &b, logits, err);
	free(seq), free(want);
	return rc;
}

/* ---- one micro-batch ------------------------------------------------------------ */

/* What every rank reads during one layer of one micro-batch; each rank
 * writes only its own residual stream, working buffers, cache shard and
 * partial output. */
typedef struct step {
	engine_kv *kv;
	int l, n, nseg;
	/* the batch's layout as local rank r's backend reads it: the host
	 * arrays, or their copies in its memory (upload_layout) */
	const int32_t *tokens[KV_MAX_RANKS], *pos[KV_MAX_RANKS], *slots[KV_MAX_RANKS];
	const kernels_attn_seg *segs[KV_MAX_RANKS];
} step;

#define K(be, op, ...) ((be)->iface->op((be), __VA_ARGS__))

/* The adapters' part of one projection on local rank r's shard w of role `role`:
 * y += scale * B (A x) for the rows of every sequence that has an adapter,
 * consecutive sequences of one adapter in one call. A row-split shard
 * (q/k/v, gate/up) starts at output row `off` and takes that band of B's
 * rows; a column-split one (o, down) starts at input column `off` and takes
 * that band of A's columns, its partial summed with the other ranks' by the
 * all-reduce (exact: the adapter is linear). */
static int adapt(step *st, int r, engine_role role, float *y, const float *x, const wmat *w,
		 int off, owl_err *err)
{
	engine_kv *kv = st->kv;
	kernels_backend *be = kv->m->ranks[r];
	for (int s = 0; s < st->nseg;) {
		const engine_adapter *ad = kv->seg_adapter[s];
		int e = s + 1;
		while (e < st->nseg && kv->seg_adapter[e] == ad)
			e++;
		/* A device rank reads its own copy of the adapter. */
		const engine_lora *lo = !ad ? NULL : ad->dev[r] ? &ad->dev[r][st->l][role] : &ad->lora[st->l][role];
		if (lo && lo->a) {
			int in_full, rk = ad->rank, t0 = kv->segs[s].tok0;
			int nt = kv->segs[e - 1].tok0 + kv->segs[e - 1].ntok - t0;
			engine_role_shape(&kv->m->info, role, &(int){0}, &in_full);
			const float *a = lo->a, *b = lo->b;
			if (engine_roles[role].split_cols)
				a += off;
			else
				b += (size_t)off * rk;
			int rc = K(be, lora, y + (size_t)t0 * w->rows, x + (size_t)t0 * w->cols, nt, w->cols,
				   w->rows, rk, a, in_full, b, rk, ad->scale, kv->ws[r].lora_tmp, err);
			if (rc)
				return rc;
		}
		s = e;
	}
	return 0;
}

/* y = x W^T for rank r's shard, then the adapters. */
static int project(step *st, int r, engine_role role, float *y, const float *x, const wmat *w,
		   int off, owl_err *err)
{
	kernels_backend *be = st->kv->m->ranks[r];
	int rc = K(be, matmul, y, x, w, st->n, err);
	return rc ? rc : adapt(st, r, role, y, x, w, off, err);
}

/* Local rank r's attention block: (layer 0: the embedding; else the previous MLP's
 * summed output into its residual stream), then norm, q/k/v, RoPE, the new
 * keys and values into its cache shard, attention, and its partial o. */
static int rank_attention(step *st, int r, owl_err *err)
{
	engine_kv *kv = st->kv;
	const engine_model *m = kv->m;
	const engine_model_info *in = &m->info;
	kernels_backend *be = m->ranks[r];
	kv_rank_ws *w = &kv->ws[r];
	int hd = in->head_dim, hpr = in->n_heads / in->tp, n = st->n, h0, kv0, nkv, rc;
	engine_rank_heads(in, in->tp_first + r, &h0, &kv0, &nkv);
	if (st->l == 0)
		rc = K(be, embedding, w->x, &m->tok_embd, st->tokens[r], n, err);
	else
		rc = K(be, add, w->x, w->part, (size_t)n * in->dim, err);
	/* The rank's own shards and vectors, prepared at load. */
	const layer *R = &m->rank_layers[r][st->l];
	if (rc || (rc = K(be, rmsnorm, w->xn, w->x, R->attn_norm, n, in->dim, in->norm_eps, err)))
		return rc;
	const wmat *wq = &R->wq, *wk = &R->wk, *wv = &R->wv;
	if (n == 1) {
		/* Decode: one pass of the thread pool over all three. */
		const wmat *ws[3] = {wq, wk, wv};
		float *ys[3] = {w->q, w->kb, w->vb};
		if ((rc = K(be, matvec_multi, ys, ws, 3, w->xn, err)) ||
		    (rc = adapt(st, r, ENGINE_ROLE_Q, w->q, w->xn, wq, h0 * hd, err)) ||
		    (rc = adapt(st, r, ENGINE_ROLE_K, w->kb, w->xn, wk, kv0 * hd, err)) ||
		    (rc = adapt(st, r, ENGINE_ROLE_V, w->vb, w->xn, wv, kv0 * hd, err)))
			return rc;
	} else if ((rc = project(st, r, ENGINE_ROLE_Q, w->q, w->xn, wq, h0 * hd, err)) ||
		   (rc = project(st, r, ENGINE_ROLE_K, w->kb, w->xn, wk, kv0 * hd, err)) ||
		   (rc = project(st, r, ENGINE_ROLE_V, w->vb, w->xn, wv, kv0 * hd, err))) {
		return rc;
	}
	if (R->bq && ((rc = K(be, add_rows, w->q, R->bq, n, hpr * hd, err)) ||
		      (rc = K(be, add_rows, w->kb, R->bk, n, nkv * hd, err)) ||
		      (rc = K(be, add_rows, w->vb, R->bv, n, nkv * hd, err))))
		return rc;
	kernels_rope_layout layout = m->rope_adjacent ? KERNELS_ROPE_ADJACENT : KERNELS_ROPE_HALF;
	kernels_kv_layer cache = kv_layer(kv, r, st->l);
	if ((rc = K(be, rope, w->q, n, st->pos[r], hpr, hd, m->rank_inv_freq[r], layout, err)) ||
	    (rc = K(be, rope, w->kb, n, st->pos[r], nkv, hd, m->rank_inv_freq[r], layout, err)) ||
	    (rc = K(be, kv_store, &cache, w->kb, w->vb, st->slots[r], n, err)) ||
	    (rc = K(be, attention, w->att, w->q, st->segs[r], st->nseg, &cache, hpr, h0,
		    in->n_heads / in->n_kv_heads, kv0, hd, in->sliding_window, &w->attn, err)))
		return rc;
	return project(st, r, ENGINE_ROLE_O, w->part, w->att, &R->wo, h0 * hd, err);
}

/* Local rank r's MLP block: the attention's summed output into its residual
 * stream, norm, its slice of gate/up, SwiGLU, and its partial down. */
static int rank_ffn(step *st, int r, owl_err *err)
{
	engine_kv *kv = st->kv;
	const engine_model *m = kv->m;
	const engine_model_info *in = &m->info;
	kernels_backend *be = m->ranks[r];
	kv_rank_ws *w = &kv->ws[r];
	int fpr = in->ffn_dim / in->tp, n = st->n, f0 = (in->tp_first + r) * fpr, rc;
	const layer *R = &m->rank_layers[r][st->l];
	if ((rc = K(be, add, w->x, w->part, (size_t)n * in->dim, err)) ||
	    (rc = K(be, rmsnorm, w->xn, w->x, R->ffn_norm, n, in->dim, in->norm_eps, err)))
		return rc;
	if (n == 1) {
		const wmat *ws[2] = {&R->w_gate, &R->w_up};
		float *ys[2] = {w->gate, w->up};
		if ((rc = K(be, matvec_multi, ys, ws, 2, w->xn, err)) ||
		    (rc = adapt(st, r, ENGINE_ROLE_GATE, w->gate, w->xn, &R->w_gate, f0, err)) ||
		    (rc = adapt(st, r, ENGINE_ROLE_UP, w->up, w->xn, &R->w_up, f0, err)))
			return rc;
	} else if ((rc = project(st, r, ENGINE_ROLE_GATE, w->gate, w->xn, &R->w_gate, f0, err)) ||
		   (rc = project(st, r, ENGINE_ROLE_UP, w->up, w->xn, &R->w_up, f0, err))) {
		return rc;
	}
	if ((rc = K(be, swiglu, w->gate, w->up, (size_t)n * fpr, err)))
		return rc;
	return project(st, r, ENGINE_ROLE_DOWN, w->part, w->gate, &R->w_down, f0, err);
}

/* Runs fn for every local rank: each rank a thread group of its backend's
 * threads, the groups side by side (nested OpenMP); one rank is one group. */
static int for_ranks(step *st, int (*fn)(step *, int, owl_err *), owl_err *err)
{
	const engine_model_info *in = &st->kv->m->info;
	int tp = in->tp_local;
	if (tp == 1)
		return fn(st, 0, err);
	int rcs[KV_MAX_RANKS];
	owl_err errs[KV_MAX_RANKS];
	int inner = st->kv->threads_per_rank;
#pragma omp parallel for num_threads(tp) schedule(static, 1)
	for (int r = 0; r < tp; r++) {
		omp_set_num_threads(inner);
		owl_err_clear(&errs[r]);
		rcs[r] = fn(st, r, &errs[r]);
	}
	for (int r = 0; r < tp; r++)
		if (rcs[r]) {
			if (err)
				*err = errs[r];
			return rcs[r];
		}
	return 0;
}

/* Every rank's partial output becomes the sum, in place. One rank in one
 * process has nothing to sum (the comm returns at once). */
static int all_reduce(engine_kv *kv, int n, owl_err *err)
{
	const engine_model *m = kv->m;
	float *parts[KV_MAX_RANKS];
	for (int r = 0; r < m->info.tp_local; r++)
		parts[r] = kv->ws[r].part;
	return m->comm.all_reduce(&m->comm, parts, (size_t)n * m->info.dim, err);
}

/* Points every local rank at the micro-batch's layout: a CPU rank at the
 * host arrays, a device rank at its copies, uploaded here with the block
 * tables the segments name (their pointers rewritten to the copies). */
static int upload_layout(engine_kv *kv, step *st, const int32_t *tokens, owl_err *err)
{
	const engine_model *m = kv->m;
	int n = st->n, rc = 0;
	/* The block tables, gathered once for every device rank; only the
	 * segments' pointers into them differ from rank to rank. */
	size_t nb_total = 0, seg_off[KV_UBATCH];
	int gathered = 0;
	for (int r = 0; r < m->info.tp_local && !rc; r++) {
		kernels_backend *be = m->ranks[r];
		kv_rank_meta *mt = &kv->meta[r];
		if (!mt->buf) {
			st->tokens[r] = tokens, st->pos[r] = kv->pos, st->slots[r] = kv->slots;
			st->segs[r] = kv->segs;
			continue;
		}
		for (int s = 0; !gathered && s < st->nseg; s++) {
			const kernels_attn_seg *g = &kv->segs[s];
			size_t nb = (size_t)(g->pos0 + g->ntok + KV_BLOCK_TOKENS - 1) / KV_BLOCK_TOKENS;
			if (nb_total + nb > mt->blocks_cap)
				return owl_err_set(err, OWL_EFAIL, "a micro-batch names %zu KV blocks, more "
						   "than the %zu its layout holds", nb_total + nb, mt->blocks_cap);
			memcpy(kv->stage_blocks + nb_total, g->blocks, nb * sizeof(int32_t));
			seg_off[s] = nb_total;
			nb_total += nb;
		}
		gathered = 1;
		for (int s = 0; s < st->nseg; s++) {
			kv->stage_segs[s] = kv->segs[s];
			kv->stage_segs[s].blocks = mt->blocks + seg_off[s];
		}
		const kernels_backend_iface *f = be->iface;
		size_t ib = (size_t)n * sizeof(int32_t);
		if ((rc = f->copy_to_device(be, mt->buf, 0, tokens, ib, err)) ||
		    (rc = f->copy_to_device(be, mt->buf, mt->off_pos, kv->pos, ib, err)) ||
		    (rc = f->copy_to_device(be, mt->buf, mt->off_slots, kv->slots, ib, err)) ||
		    (rc = f->copy_to_device(be, mt->buf, mt->off_segs, kv->stage_segs,
					    (size_t)st->nseg * sizeof(kernels_attn_seg), err)) ||
		    (rc = f->copy_to_device(be, mt->buf, mt->off_blocks, kv->stage_blocks,
					    nb_total * sizeof(int32_t), err)))
			break;
		st->tokens[r] = mt->tokens, st->pos[r] = mt->pos, st->slots[r] = mt->slots;
		st->segs[r] = mt->segs;
	}
	return rc;
}

/* The ops of one micro-batch whose layout is uploaded: every layer on every
 * rank, then the first local rank's stream, with the last MLP's output,
 * through the output layer for the rows that want logits (every process
 * has the same stream, so every process computes the same logits): into
 * dst on a host rank, into the rank's logits buffer on a device. *nl: the
 * rows of logits made. */
static int micro_ops(engine_kv *kv, step *st, const engine_batch *b, int t0, float *dst, int *nl,
		     owl_err *err)
{
	engine_model *m = kv->m;
	const engine_model_info *in = &m->info;
	const int dim = in->dim, n = st->n;
	int rc;
	*nl = 0;
	for (int l = 0; l < in->n_layers; l++) {
		st->l = l;
		if ((rc = for_ranks(st, rank_attention, err)) || (rc = all_reduce(kv, n, err)) ||
		    (rc = for_ranks(st, rank_ffn, err)) || (rc = all_reduce(kv, n, err)))
			return rc;
	}
	kernels_backend *be = m->be;
	kv_rank_ws *w = &kv->ws[0];
	if ((rc = K(be, add, w->x, w->part, (size_t)n * dim, err)))
		return rc;
	int rows = 0;
	for (int i = 0; i < n; i++) {
		int t = t0 + i;
		int want = b->want ? b->want[t] != 0 : (t + 1 == b->n || b->seq[t + 1] != b->seq[t]);
		if (want && (rc = K(be, copy, w->xl + (size_t)rows++ * dim, w->x + (size_t)i * dim,
				    (size_t)dim * sizeof(float), err)))
			return rc;
	}
	if (!rows)
		return 0;
	const kv_rank_meta *mt = &kv->meta[0];
	if ((rc = K(be, rmsnorm, w->xn, w->xl, m->rank_out_norm, rows, dim, in->norm_eps, err)) ||
	    (rc = K(be, matmul, mt->buf ? mt->logits : dst, w->xn, &m->output, rows, err)))
		return rc;
	*nl = rows;
	return 0;
}

/* Whether a micro-batch is a decoding step a graph can replay: one token of
 * each of n sequences, every row wanting logits, no adapters (which ops run
 * depends on which sequences have one), on a pool whose backend records. */
static int graphable(const engine_kv *kv, const engine_batch *b, int t0, int n, int nseg)
{
	if (!kv->graphs_on || n != nseg)
		return 0;
	for (int s = 0; s < nseg; s++)
		if (kv->seg_adapter[s])
			return 0;
	for (int i = 0; b->want && i < n; i++)
		if (!b->want[t0 + i])
			return 0;
	return 1;
}

/* Recording failed: this pool stops recording, said once per process. */
static pthread_once_t graph_note_once = PTHREAD_ONCE_INIT;
static char graph_note[sizeof(((owl_err *)0)->msg)];
static void say_graph_note(void)
{
	fprintf(stderr, "owl: decoding without CUDA graphs: %s\n", graph_note);
}

/* A decoding step through graph[n]: replayed when recorded, else run op by
 * op (the shape's first step) or recorded and launched (its second). The
 * buffers a graph names are the pool's own and its layout's, whose contents
 * upload_layout has just rewritten; a graph the backend calls stale (its
 * workspace moved) is dropped and made again. */
static int graph_step(engine_kv *kv, step *st, const engine_batch *b, int t0, float *dst, int *nl,
		      owl_err *err)
{
	kernels_backend *be = kv->m->ranks[0];
	const kernels_backend_iface *f = be->iface;
	int n = st->n, stale = 0, rc;
	kernels_graph **g = &kv->graph[n];
	if (*g) {
		if ((rc = f->graph_launch(be, *g, &stale, err)))
			return rc;
		if (!stale) {
			*nl = n;
			kv->graph_launches++;
			return 0;
		}
		f->graph_free(be, *g);
		*g = NULL;
		kv->graph_seen[n] = 0;
	}
	if (!kv->graph_seen[n]) {
		kv->graph_seen[n] = 1;
		return micro_ops(kv, st, b, t0, dst, nl, err);
	}
	owl_err rec = {0};
	rc = f->graph_begin(be, &rec);
	if (!rc) {
		int orc = micro_ops(kv, st, b, t0, dst, nl, &rec);
		owl_err end = {0};
		int erc = f->graph_end(be, g, &end);
		rc = orc ? orc : erc;
		if (!orc && erc)
			rec = end;
	}
	if (rc) {
		/* Nothing recorded ran: the step runs op by op. */
		f->graph_free(be, *g);
		*g = NULL;
		kv->graphs_on = 0;
		snprintf(graph_note, sizeof graph_note, "%s", rec.msg);
		pthread_once(&graph_note_once, say_graph_note);
		return micro_ops(kv, st, b, t0, dst, nl, err);
	}
	kv->graph_recordings++;
	if ((rc = f->graph_launch(be, *g, &stale, err)))
		return rc;
	if (stale)
		return owl_err_set(err, OWL_EFAIL, "a CUDA graph was stale at once");
	*nl = n;
	kv->graph_launches++;
	return 0;
}

/* Logit rows [row0, row0 + nl) of the batch, just computed in the first
 * rank's logits buffer (dst itself on a host backend): the rows whose
 * b->sample entry has device set sampled there, the others' logits copied
 * to dst. One sample call takes the micro-batch's rows; the host's rows
 * ride along greedily, which costs an argmax and spares a second layout. */
static int sample_rows(engine_kv *kv, const engine_batch *b, int row0, int nl, float *dst,
		       owl_err *err)
{
	kernels_backend *be = kv->m->be;
	const kv_rank_meta *mt = &kv->meta[0];
	const int vocab = kv->m->info.vocab;
	const size_t row_bytes = (size_t)vocab * sizeof(float);
	kernels_sample_row p[KV_UBATCH];
	int32_t got[KV_UBATCH];
	int ndev = 0;
	for (int i = 0; i < nl; i++) {
		const engine_row_sample *rs = &b->sample[row0 + i];
		p[i] = rs->device ? (kernels_sample_row){rs->temperature, rs->top_p, rs->top_k, rs->u}
				  : (kernels_sample_row){0, 1, 0, 0};
		ndev += rs->device != 0;
	}
	int rc;
	if (!ndev)
		return mt->buf ? K(be, copy_to_host, dst, mt->buf, mt->off_logits,
				   (size_t)nl * row_bytes, err) : 0;
	if (!be->iface->sample)
		return owl_err_set(err, OWL_EUSAGE, "the %s backend cannot sample: its logits go to the "
				   "host", be->iface->name);
	const float *lg = mt->buf ? mt->logits : dst;
	if ((rc = K(be, sample, got, lg, nl, vocab, p, err)))
		return owl_err_wrap(err, "sampling %d rows on the %s backend", nl, be->iface->name);
	for (int i = 0; i < nl; i++) {
		if (b->sample[row0 + i].device)
			b->sampled[row0 + i] = got[i];
		else if (mt->buf && (rc = K(be, copy_to_host, dst + (size_t)i * vocab, mt->buf,
					    mt->off_logits + (size_t)i * row_bytes, row_bytes, err)))
			return rc;
	}
	return 0;
}

int engine_kv_can_sample(const engine_kv *kv)
{
	const kernels_backend *be = kv->m->be;
	return be->iface->sample != NULL && !be->iface->host_memory;
}

/* Tokens [t0, t0 + n) of the batch, n <= KV_UBATCH, whose runs and
 * positions the caller checked and whose blocks it reserved. Logits of the
 * rows that want them go to logits (rows counted from the batch's start). */
static int forward_micro(engine_kv *kv, const engine_batch *b, int t0, int n, const int *start_len,
			 float *logits, int *nl_done, owl_err *err)
{
	engine_model *m = kv->m;
	const engine_model_info *in = &m->info;
	int rc, nseg = 0;
	/* Positions, cache slots and one attention segment per run. */
	for (int i = 0; i < n; i++) {
		int t = t0 + i;
		const kv_seq *q = &kv->seqs[b->seq[t]];
		int p = start_len[t];
		kv->pos[i] = p;
		kv->slots[i] = q->blocks[p / KV_BLOCK_TOKENS] * KV_BLOCK_TOKENS + p % KV_BLOCK_TOKENS;
		if (i == 0 || b->seq[t] != b->seq[t - 1]) {
			kv->seg_adapter[nseg] = q->adapter;
			kv->segs[nseg++] = (kernels_attn_seg){.tok0 = i, .ntok = 0, .pos0 = p,
							      .blocks = q->blocks};
		}
		kv->segs[nseg - 1].ntok++;
	}
	step st = {.kv = kv, .n = n, .nseg = nseg};
	if ((rc = upload_layout(kv, &st, b->tokens + t0, err)))
		return rc;
	int nl = 0;
	float *dst = logits + (size_t)*nl_done * in->vocab;
	rc = graphable(kv, b, t0, n, nseg) ? graph_step(kv, &st, b, t0, dst, &nl, err)
					   : micro_ops(kv, &st, b, t0, dst, &nl, err);
	if (rc || !nl)
		return rc;
	/* A device computed the logits in its memory: they come over now, or
	 * are sampled there and only the tokens come. */
	const kv_rank_meta *mt = &kv->meta[0];
	size_t lbytes = (size_t)nl * in->vocab * sizeof(float);
	rc = b->sample ? sample_rows(kv, b, *nl_done, nl, dst, err)
	     : mt->buf ? K(m->be, copy_to_host, dst, mt->buf, mt->off_logits, lbytes, err) : 0;
	if (rc)
		return rc;
	*nl_done += nl;
	return 0;
}

/* ---- a batch ----------------------------------------------------------------------- */

int engine_batch_logit_rows(const engine_batch *b)
{
	int nl = 0;
	for (int t = 0; t < b->n; t++)
		nl += b->want ? b->want[t] != 0 : (t + 1 == b->n || b->seq[t + 1] != b->seq[t]);
	return nl;
}

/* Checks the batch's shape: tokens in the vocabulary, known sequences,
 * each sequence in one run, positions continuing its cache. Fills
 * start_len[t] with token t's position. */
static int batch_check(engine_kv *kv, const engine_batch *b, int *start_len, owl_err *err)
{
	const engine_model_info *in = &kv->m->info;
	if (b->n <= 0)
		return owl_err_set(err, OWL_EUSAGE, "nothing to run: no tokens");
	for (int t = 0; t < b->n; t++) {
		if (b->tokens[t] < 0 || b->tokens[t] >= in->vocab)
			return owl_err_set(err, OWL_EUSAGE, "token id %d is outside the vocabulary of %d",
					   b->tokens[t], in->vocab);
		int s = b->seq[t];
		if (s < 0 || s >= kv->nseqs || !kv->seqs[s].used)
			return owl_err_set(err, OWL_EUSAGE, "batch row %d names sequence %d, which the KV "
					   "pool does not hold", t, s);
		int new_run = t == 0 || b->seq[t - 1] != s;
		if (new_run)
			for (int u = 0; u < t; u++)
				if (b->seq[u] == s)
					return owl_err_set(err, OWL_EUSAGE, "sequence %d appears in two runs of "
							   "the batch (rows %d and %d)", s, u, t);
		start_len[t] = new_run ? kv->seqs[s].len : start_len[t - 1] + 1;
		if (b->pos && b->pos[t] != start_len[t])
			return owl_err_set(err, OWL_EUSAGE, "batch row %d: sequence %d is at position %d, "
					   "not %d", t, s, start_len[t], b->pos[t]);
	}
	return 0;
}

int engine_decode(engine_kv *kv, const engine_batch *b, float *logits, owl_err *err)
{
	const engine_model_info *in = &kv->m->info;
	int *start_len = malloc((size_t)(b->n > 0 ? b->n : 1) * sizeof *start_len);
	if (!start_len)
		return owl_err_set(err, OWL_EFAIL, "cannot allocate a batch of %d tokens", b->n);
	int rc = batch_check(kv, b, start_len, err);
	/* Room for every run first, so that a full pool fails before any work. */
	for (int t = 0; !rc && t < b->n; t++) {
		int u = t;
		while (u + 1 < b->n && b->seq[u + 1] == b->seq[t])
			u++;
		rc = kv_seq_reserve(kv, b->seq[t], u - t + 1, err);
		t = u;
	}
	omp_set_num_threads(in->threads);
	int nl_done = 0;
	for (int t0 = 0; !rc && t0 < b->n; t0 += KV_UBATCH) {
		int n = b->n - t0 < KV_UBATCH ? b->n - t0 : KV_UBATCH;
		rc = forward_micro(kv, b, t0, n, start_len, logits, &nl_done, err);
	}
	/* Only a pass that ran to the end moves the sequences on. */
	for (int t = 0; !rc && t < b->n; t++) {
		int u = t;
		while (u + 1 < b->n && b->seq[u + 1] == b->seq[t])
			u++;
		kv_seq_commit(kv, b->seq[t], b->tokens + t, u - t + 1);
		t = u;
	}
	free(start_len);
	return rc;
}
