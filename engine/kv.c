/* The paged KV cache (as vLLM's PagedAttention): keys and values live in a
 * pool of fixed-size blocks, and each sequence has a table of the blocks
 * that hold its positions. Memory is reserved once for the pool but touched
 * only as blocks are used (fresh blocks are handed out lowest first), so it
 * grows with the tokens actually held, not with the sequences times the
 * context. Blocks are reference-counted: a forked sequence shares its
 * parent's blocks, and full blocks are registered in a prefix cache under
 * the hash of their tokens and of everything before them, so a later
 * sequence with the same prompt prefix reuses them. A block nobody holds
 * stays cached until the pool needs it back (oldest first). */
#define _GNU_SOURCE
#include "kv_impl.h"

#include <stdlib.h>
#include <string.h>

static size_t elem_bytes(kernels_kv_type t) { return t == KERNELS_KV_F16 ? 2 : 4; }

kernels_kv_layer kv_layer(const engine_kv *kv, int r, int layer)
{
	const engine_model_info *in = &kv->m->info;
	size_t row = (size_t)kv->rank_nkv[r] * in->head_dim * elem_bytes(kv->type);
	size_t off = (size_t)layer * KV_BLOCK_TOKENS * row;
	return (kernels_kv_layer){.type = kv->type, .k = kv->k[r] + off, .v = kv->v[r] + off,
				  .block_stride = kv->block_stride[r],
				  .block_tokens = KV_BLOCK_TOKENS,
				  .row_elems = kv->rank_nkv[r] * in->head_dim};
}

/* ---- allocation that fails with an error, never aborts ---------------------- */

static void *try_calloc(size_t n, size_t size, const char *what, owl_err *err)
{
	void *p = n ? calloc(n, size) : calloc(1, 1);
	if (!p)
		owl_err_set(err, OWL_EFAIL, "cannot allocate %s (%zu MiB)", what, n * size >> 20);
	return p;
}


/* ---- the prefix cache's hash table -------------------------------------------- */

enum { SLOT_EMPTY = -1, SLOT_DELETED = -2 };

static uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

/* The hash of a full block: its tokens and the hash of the blocks before. */
static uint64_t block_hash(uint64_t parent, const int32_t *tokens)
{
	uint64_t h = mix64(parent ^ 0x9E3779B97F4A7C15ull);
	for (int i = 0; i < KV_BLOCK_TOKENS; i++)
		h = mix64(h ^ (uint64_t)(uint32_t)tokens[i]);
	return h;
}

static int table_find(const engine_kv *kv, uint64_t h, const int32_t *tokens)
{
	size_t mask = (size_t)kv->table_cap - 1;
	for (size_t i = h & mask, k = 0; k < (size_t)kv->table_cap; i = (i + 1) & mask, k++) {
		int32_t b = kv->table[i];
		if (b == SLOT_EMPTY)
			return -1;
		if (b >= 0 && kv->blk[b].hash == h &&
		    memcmp(kv->block_tokens + (size_t)b * KV_BLOCK_TOKENS, tokens,
			   KV_BLOCK_TOKENS * sizeof *tokens) == 0)
			return b;
	}
	return -1;
}

static void table_remove(engine_kv *kv, int b)
{
	size_t mask = (size_t)kv->table_cap - 1;
	for (size_t i = kv->blk[b].hash & mask, k = 0; k < (size_t)kv->table_cap;
	     i = (i + 1) & mask, k++) {
		if (kv->table[i] == SLOT_EMPTY)
			break;
		if (kv->table[i] == b) {
			kv->table[i] = SLOT_DELETED;
			kv->table_deleted++;
			break;
		}
	}
	kv->blk[b].hashed = 0;
}

/* The slot an insert of hash h takes: the first that holds no block. */
static size_t table_slot(const engine_kv *kv, uint64_t h)
{
	size_t mask = (size_t)kv->table_cap - 1, i = h & mask;
	while (kv->table[i] >= 0)
		i = (i + 1) & mask;
	return i;
}

/* Every cached block again into an empty table: tombstones lengthen the
 * probes of every lookup that misses, and a pool that serves for long
 * removes and inserts blocks without end. */
static void table_rebuild(engine_kv *kv)
{
	for (int i = 0; i < kv->table_cap; i++)
		kv->table[i] = SLOT_EMPTY;
	for (int b = 0; b < kv->next_fresh; b++)
		if (kv->blk[b].hashed)
			kv->table[table_slot(kv, kv->blk[b].hash)] = b;
	kv->table_deleted = 0;
}

/* Inserts block b; the table has twice as many slots as there are blocks,
 * so it never fills. Tombstones are reused, and swept away once they are
 * a quarter of the table. */
static void table_insert(engine_kv *kv, int b, uint64_t h, const int32_t *tokens)
{
	if (kv->table_deleted > kv->table_cap / 4)
		table_rebuild(kv);
	size_t i = table_slot(kv, h);
	if (kv->table[i] == SLOT_DELETED)
		kv->table_deleted--;
	kv->table[i] = b;
	kv->blk[b].hashed = 1;
	kv->blk[b].hash = h;
	memcpy(kv->block_tokens + (size_t)b * KV_BLOCK_TOKENS, tokens, KV_BLOCK_TOKENS * sizeof *tokens);
}

/* ---- blocks ---------------------------------------------------------------------- */

static int blocks_available(const engine_kv *kv)
{
	int idle = 0;
	for (int b = 0; b < kv->next_fresh; b++)
		idle += kv->blk[b].ref == 0 && kv->blk[b].hashed;
	return kv->nfree + (kv->n_blocks - kv->next_fresh) + idle;
}

/* A block for new rows: one returned to the pool, else a fresh one, else
 * the cached block nobody holds that was used longest ago. -1 when none. */
static int block_take(engine_kv *kv)
{
	int b = -1;
	if (kv->nfree) {
		b = kv->free_list[--kv->nfree];
	} else if (kv->next_fresh < kv->n_blocks) {
		b = kv->next_fresh++;
	} else {
		for (int i = 0; i < kv->n_blocks; i++)
			if (kv->blk[i].ref == 0 && kv->blk[i].hashed &&
			    (b < 0 || kv->blk[i].last_use < kv->blk[b].last_use))
				b = i;
		if (b >= 0)
			table_remove(kv, b);
	}
	if (b >= 0) {
		kv->blk[b].ref = 1;
		kv->blk[b].last_use = ++kv->clock;
	}
	return b;
}

static void block_hold(engine_kv *kv, int b)
{
	kv->blk[b].ref++;
	kv->blk[b].last_use = ++kv->clock;
}

static void block_drop(engine_kv *kv, int b)
{
	if (--kv->blk[b].ref == 0 && !kv->blk[b].hashed)
		kv->free_list[kv->nfree++] = b;
}

/* ---- the pool ---------------------------------------------------------------------- */

/* Rank r's copy of a micro-batch's layout (token ids, positions, cache
 * slots, segments and the block tables they name) in its backend's memory,
 * for a backend whose memory the host cannot address; rank 0 also gets room
 * for the logits of a micro-batch. A CPU rank reads the host arrays. */
static int meta_new(engine_kv *kv, int r, owl_err *err)
{
	kernels_backend *be = kv->m->ranks[r];
	if (be->iface->host_memory)
		return 0;
	kv_rank_meta *mt = &kv->meta[r];
	size_t U = KV_UBATCH;
	mt->blocks_cap = U * (size_t)((kv->max_seq_tokens + KV_BLOCK_TOKENS - 1) / KV_BLOCK_TOKENS);
	mt->off_pos = U * sizeof(int32_t);
	mt->off_slots = 2 * U * sizeof(int32_t);
	mt->off_segs = 3 * U * sizeof(int32_t);
	mt->off_blocks = mt->off_segs + U * sizeof(kernels_attn_seg);
	size_t bytes = mt->off_blocks + mt->blocks_cap * sizeof(int32_t);
	if (r == 0) {
		mt->off_logits = (bytes + 63) / 64 * 64;
		bytes = mt->off_logits + U * (size_t)kv->m->info.vocab * sizeof(float);
	}
	void *base;
	int rc = kernels_alloc(be, bytes, &mt->buf, &base, err);
	if (rc)
		return owl_err_wrap(err, "cannot allocate rank %d's batch layout", r);
	uint8_t *p = base;
	mt->tokens = (int32_t *)(void *)p;
	mt->pos = (int32_t *)(void *)(p + mt->off_pos);
	mt->slots = (int32_t *)(void *)(p + mt->off_slots);
	mt->segs = (kernels_attn_seg *)(void *)(p + mt->off_segs);
	mt->blocks = (int32_t *)(void *)(p + mt->off_blocks);
	mt->logits = r == 0 ? (float *)(void *)(p + mt->off_logits) : NULL;
	if (!kv->stage_segs &&
	    (!(kv->stage_segs = try_calloc(U, sizeof(kernels_attn_seg), "segment staging", err)) ||
	     !(kv->stage_blocks = try_calloc(mt->blocks_cap, sizeof(int32_t), "block table staging", err))))
		return OWL_EFAIL;
	return 0;
}

int engine_kv_new(engine_model *m, const engine_kv_opts *o, engine_kv **out, owl_err *err)
{
	*out = NULL;
	const engine_model_info *in = &m->info;
	engine_kv_opts d = o ? *o : (engine_kv_opts){0};
	if (d.n_tokens < 0 || d.max_seq_tokens < 0)
		return owl_err_set(err, OWL_EUSAGE, "a KV pool of %d tokens (longest sequence %d) is "
				   "not a size", d.n_tokens, d.max_seq_tokens);
	if (d.n_tokens == 0)
		d.n_tokens = in->ctx_train;
	if (d.max_seq_tokens == 0)
		d.max_seq_tokens = d.n_tokens < in->ctx_train ? d.n_tokens : in->ctx_train;
	if (d.max_seq_tokens > in->ctx_train)
		return owl_err_set(err, OWL_EUSAGE, "a context of %d tokens exceeds the model's %d",
				   d.max_seq_tokens, in->ctx_train);
	if (d.n_tokens > (1 << 24))
		return owl_err_set(err, OWL_EUSAGE, "a KV pool of %d tokens is more than the %d "
				   "allowed", d.n_tokens, 1 << 24);
	if (d.type != ENGINE_KV_F32 && d.type != ENGINE_KV_F16)
		return owl_err_set(err, OWL_EUSAGE, "unknown KV cache type %d", (int)d.type);
	if (in->tp_local < 1 || in->tp_local > KV_MAX_RANKS)
		return owl_err_set(err, OWL_EUSAGE, "%d tensor-parallel ranks in one process: at most %d",
				   in->tp_local, KV_MAX_RANKS);
	engine_kv *kv = calloc(1, sizeof *kv);
	if (!kv)
		return owl_err_set(err, OWL_EFAIL, "cannot allocate a KV pool");
	kv->m = m;
	kv->type = d.type == ENGINE_KV_F16 ? KERNELS_KV_F16 : KERNELS_KV_F32;
	kv->n_blocks = (d.n_tokens + KV_BLOCK_TOKENS - 1) / KV_BLOCK_TOKENS;
	kv->max_seq_tokens = d.max_seq_tokens;
	kv->threads_per_rank = kernels_cpu_backend_threads(m->ranks[0]);
	int rc = 0;
	const int hd = in->head_dim, hpr = in->n_heads / in->tp, fpr = in->ffn_dim / in->tp;
	/* Only this process's ranks: their cache shards and working memory. */
	for (int r = 0; r < in->tp_local && !rc; r++) {
		int h0;
		engine_rank_heads(in, in->tp_first + r, &h0, &kv->rank_kv0[r], &kv->rank_nkv[r]);
		kv->block_stride[r] = (size_t)in->n_layers * KV_BLOCK_TOKENS * kv->rank_nkv[r] * hd *
				      elem_bytes(kv->type);
		kv->pool_bytes[r] = (size_t)kv->n_blocks * kv->block_stride[r];
		kernels_backend *be = m->ranks[r];
		void *k, *v;
		if (kernels_alloc(be, kv->pool_bytes[r], &kv->kbuf[r], &k, err) ||
		    kernels_alloc(be, kv->pool_bytes[r], &kv->vbuf[r], &v, err))
			rc = owl_err_wrap(err, "cannot reserve a KV pool of %zu MiB for %d tokens",
					  2 * kv->pool_bytes[r] >> 20, d.n_tokens);
		else
			kv->k[r] = k, kv->v[r] = v;
	}
	kv->table_cap = 1;
	while (kv->table_cap < 2 * kv->n_blocks)
		kv->table_cap *= 2;
	size_t U = KV_UBATCH;
	if (!rc && (!(kv->blk = try_calloc((size_t)kv->n_blocks, sizeof *kv->blk, "KV block table", err)) ||
		    !(kv->free_list = try_calloc((size_t)kv->n_blocks, sizeof(int32_t), "KV free list", err)) ||
		    !(kv->table = try_calloc((size_t)kv->table_cap, sizeof(int32_t), "prefix cache", err)) ||
		    !(kv->block_tokens = try_calloc((size_t)kv->n_blocks * KV_BLOCK_TOKENS, sizeof(int32_t),
						    "prefix cache tokens", err)) ||
		    !(kv->pos = try_calloc(U, sizeof(int32_t), "positions", err)) ||
		    !(kv->slots = try_calloc(U, sizeof(int32_t), "KV slots", err)) ||
		    !(kv->segs = try_calloc(U, sizeof(kernels_attn_seg), "attention segments", err)) ||
		    !(kv->seg_adapter = try_calloc(U, sizeof(*kv->seg_adapter), "segment adapters", err))))
		rc = OWL_EFAIL;
	for (int i = 0; !rc && i < kv->table_cap; i++)
		kv->table[i] = SLOT_EMPTY;
	for (int r = 0; r < in->tp_local && !rc; r++) {
		kv_rank_ws *w = &kv->ws[r];
		size_t kvd = (size_t)kv->rank_nkv[r] * hd, D = (size_t)in->dim;
		w->attn.n = kernels_attention_scratch(kv->max_seq_tokens, (int)kvd, kv->threads_per_rank);
		/* x, xn, xl, part: [U][dim]; q, att: [U][hpr*hd]; kb, vb: [U][kvd];
		 * gate, up: [U][fpr]; then the attention scratch */
		size_t sizes[] = {U * D, U * D, U * D, U * D, U * hpr * hd, U * hpr * hd, U * kvd,
				  U * kvd, U * fpr, U * fpr, U * KV_MAX_LORA_RANK, w->attn.n};
		float **dst[] = {&w->x, &w->xn, &w->xl, &w->part, &w->q, &w->att, &w->kb, &w->vb,
				 &w->gate, &w->up, &w->lora_tmp, &w->attn.data};
		size_t total = 0;
		for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
			total += (sizes[i] + 15) / 16 * 16; /* 64-byte aligned pieces */
		void *base;
		if ((rc = kernels_alloc(m->ranks[r], total * sizeof(float), &w->buf, &base, err)))
			break;
		float *p = base;
		for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
			*dst[i] = p;
			p += (sizes[i] + 15) / 16 * 16;
		}
	}
	for (int r = 0; r < in->tp_local && !rc; r++)
		rc = meta_new(kv, r, err);
	if (rc) {
		engine_kv_free(kv);
		return rc;
	}
	/* Graphs on one device rank in one process: several ranks would record
	 * on several streams, joined by the comm. OWL_CUDA_GRAPHS=0 turns them
	 * off (to compare, or to rule them out). */
	const char *g = getenv("OWL_CUDA_GRAPHS");
	kv->graphs_on = in->tp_local == 1 && in->processes == 1 && m->ranks[0]->iface->graph_begin &&
			!(g && !strcmp(g, "0"));
	*out = kv;
	return 0;
}

void engine_kv_free(engine_kv *kv)
{
	if (!kv)
		return;
	for (int r = 0; r < KV_MAX_RANKS; r++) {
		kernels_backend *be = kv->m->ranks[r];
		if (!be)
			continue;
		be->iface->buffer_free(be, kv->kbuf[r]);
		be->iface->buffer_free(be, kv->vbuf[r]);
		be->iface->buffer_free(be, kv->ws[r].buf);
		be->iface->buffer_free(be, kv->meta[r].buf);
	}
	for (int n = 0; n <= KV_UBATCH; n++)
		if (kv->graph[n])
			kv->m->ranks[0]->iface->graph_free(kv->m->ranks[0], kv->graph[n]);
	free(kv->stage_segs);
	free(kv->stage_blocks);
	for (int s = 0; s < kv->nseqs; s++) {
		free(kv->seqs[s].blocks);
		free(kv->seqs[s].tokens);
	}
	free(kv->seqs);
	free(kv->blk), free(kv->free_list), free(kv->table), free(kv->block_tokens);
	free(kv->pos), free(kv->slots), free(kv->segs), free(kv->seg_adapter);
	free(kv);
}

void engine_kv_get_stats(const engine_kv *kv, engine_kv_stats *st)
{
	memset(st, 0, sizeof *st);
	st->block_tokens = KV_BLOCK_TOKENS;
	st->blocks_total = kv->n_blocks;
	for (int b = 0; b < kv->next_fresh; b++) {
		st->blocks_used += kv->blk[b].ref > 0;
		st->blocks_cached += kv->blk[b].ref == 0 && kv->blk[b].hashed;
	}
	size_t per_block = 0;
	for (int r = 0; r < kv->m->info.tp_local; r++) {
		st->bytes_reserved += 2 * kv->pool_bytes[r];
		per_block += 2 * kv->block_stride[r];
	}
	st->bytes_used = (uint64_t)st->blocks_used * per_block;
	st->graph_launches = kv->graph_launches;
	st->graph_recordings = kv->graph_recordings;
	st->bytes_touched = (uint64_t)kv->next_fresh * per_block;
}

/* ---- sequences ----------------------------------------------------------------------- */

static kv_seq *seq_get(engine_kv *kv, int seq)
{
	return seq >= 0 && seq < kv->nseqs && kv->seqs[seq].used ? &kv->seqs[seq] : NULL;
}

int engine_kv_seq_new(engine_kv *kv, uint64_t salt, int *seq_out, owl_err *err)
{
	*seq_out = -1;
	int s = 0;
	while (s < kv->nseqs && kv->seqs[s].used)
		s++;
	if (s == kv->nseqs) {
		if (kv->nseqs >= 65536)
			return owl_err_set(err, OWL_EFAIL, "more than 65536 sequences in one KV pool");
		kv_seq *grown = realloc(kv->seqs, (size_t)(kv->nseqs + 1) * sizeof *grown);
		if (!grown)
			return owl_err_set(err, OWL_EFAIL, "cannot allocate a sequence");
		kv->seqs = grown;
		memset(&kv->seqs[kv->nseqs++], 0, sizeof *grown);
	}
	kv_seq *q = &kv->seqs[s];
	if (!q->blocks) {
		q->cap = (kv->max_seq_tokens + KV_BLOCK_TOKENS - 1) / KV_BLOCK_TOKENS;
		q->blocks = calloc((size_t)q->cap, sizeof *q->blocks);
		q->tokens = calloc((size_t)q->cap * KV_BLOCK_TOKENS, sizeof *q->tokens);
		if (!q->blocks || !q->tokens) {
			free(q->blocks), free(q->tokens);
			q->blocks = q->tokens = NULL;
			return owl_err_set(err, OWL_EFAIL, "cannot allocate the block table of a sequence");
		}
	}
	q->used = 1;
	q->len = q->nblocks = 0;
	q->salt = salt;
	q->adapter = NULL;
	*seq_out = s;
	return 0;
}

void engine_kv_seq_free(engine_kv *kv, int seq)
{
	kv_seq *q = seq_get(kv, seq);
	if (!q)
		return;
	for (int i = 0; i < q->nblocks; i++)
		block_drop(kv, q->blocks[i]);
	q->used = 0;
	q->len = q->nblocks = 0;
}

int engine_kv_seq_len(const engine_kv *kv, int seq)
{
	const kv_seq *q = seq_get((engine_kv *)kv, seq);
	return q ? q->len : -1;
}

int engine_kv_seq_max(const engine_kv *kv) { return kv->max_seq_tokens; }

void engine_kv_seq_truncate(engine_kv *kv, int seq, int len)
{
	kv_seq *q = seq_get(kv, seq);
	if (!q || len < 0 || len >= q->len)
		return;
	int keep = (len + KV_BLOCK_TOKENS - 1) / KV_BLOCK_TOKENS;
	for (int i = keep; i < q->nblocks; i++)
		block_drop(kv, q->blocks[i]);
	q->nblocks = keep;
	q->len = len;
}

int engine_kv_seq_fork(engine_kv *kv, int src, int n_tokens, int *seq_out, owl_err *err)
{
	*seq_out = -1;
	kv_seq *p = seq_get(kv, src);
	if (!p)
		return owl_err_set(err, OWL_EUSAGE, "no sequence %d to fork", src);
	if (n_tokens < 0 || n_tokens > p->len)
		n_tokens = p->len;
	int s, rc = engine_kv_seq_new(kv, p->salt, &s, err);
	if (rc)
		return rc;
	p = &kv->seqs[src]; /* the array may have moved */
	kv_seq *q = &kv->seqs[s];
	q->adapter = p->adapter;
	q->nblocks = (n_tokens + KV_BLOCK_TOKENS - 1) / KV_BLOCK_TOKENS;
	for (int i = 0; i < q->nblocks; i++) {
		q->blocks[i] = p->blocks[i];
		block_hold(kv, q->blocks[i]);
	}
	memcpy(q->tokens, p->tokens, (size_t)n_tokens * sizeof *q->tokens);
	q->len = n_tokens;
	*seq_out = s;
	return 0;
}

int engine_kv_seq_set_adapter(engine_kv *kv, int seq, const engine_adapter *a, owl_err *err)
{
	kv_seq *q = seq_get(kv, seq);
	if (!q)
		return owl_err_set(err, OWL_EUSAGE, "no sequence %d in the KV pool", seq);
	if (q->len)
		return owl_err_set(err, OWL_EUSAGE, "sequence %d holds %d tokens computed without "
				   "the adapter", seq, q->len);
	int rc = a ? engine_adapter_check(a, kv->m, err) : 0;
	if (rc)
		return rc;
	if (a && a->rank > KV_MAX_LORA_RANK)
		return owl_err_set(err, OWL_EUSAGE, "an adapter of rank %d: at most %d", a->rank,
				   KV_MAX_LORA_RANK);
	/* The adapter changes every key and value: its own prefix cache. */
	if (q->adapter)
		q->salt ^= mix64((uint64_t)(uintptr_t)q->adapter);
	q->adapter = a;
	if (a)
		q->salt ^= mix64((uint64_t)(uintptr_t)a);
	return 0;
}

int engine_kv_seq_reuse_prefix(engine_kv *kv, int seq, const int32_t *tokens, int n)
{
	kv_seq *q = seq_get(kv, seq);
	if (!q || q->len != 0 || n <= 0)
		return 0;
	/* At least one token is left to run, so that its logits exist. */
	int full = (n - 1) / KV_BLOCK_TOKENS;
	if (full > q->cap)
		full = q->cap;
	uint64_t h = q->salt;
	for (int i = 0; i < full; i++) {
		const int32_t *t = tokens + (size_t)i * KV_BLOCK_TOKENS;
		h = block_hash(h, t);
		int b = table_find(kv, h, t);
		if (b < 0)
			break;
		block_hold(kv, b);
		q->blocks[q->nblocks++] = b;
		memcpy(q->tokens + q->len, t, KV_BLOCK_TOKENS * sizeof *t);
		q->len += KV_BLOCK_TOKENS;
	}
	return q->len;
}

int kv_seq_reserve(engine_kv *kv, int seq, int n, owl_err *err)
{
	kv_seq *q = seq_get(kv, seq);
	if (!q)
		return owl_err_set(err, OWL_EUSAGE, "no sequence %d in the KV pool", seq);
	if (n > kv->max_seq_tokens - q->len)
		return owl_err_set(err, OWL_EUSAGE, "the context of %d tokens is full (%d used, %d more "
				   "asked)", kv->max_seq_tokens, q->len, n);
	int need = (q->len + n + KV_BLOCK_TOKENS - 1) / KV_BLOCK_TOKENS - q->nblocks;
	if (need < 0)
		need = 0;
	/* The block the new rows start in must be this sequence's alone. */
	int last = q->len % KV_BLOCK_TOKENS ? q->len / KV_BLOCK_TOKENS : -1;
	int copy = 0;
	if (n > 0 && last >= 0 && last < q->nblocks) {
		kv_block *b = &kv->blk[q->blocks[last]];
		if (b->ref > 1)
			copy = 1;
		else if (b->hashed)
			table_remove(kv, q->blocks[last]); /* it is about to change */
	}
	if (need + copy > 0 && blocks_available(kv) < need + copy)
		return owl_err_set(err, OWL_EFAIL, "the KV pool is full: a sequence needs %d more "
				   "blocks of %d tokens and %d are free (pool of %d tokens)", need + copy,
				   KV_BLOCK_TOKENS, blocks_available(kv), kv->n_blocks * KV_BLOCK_TOKENS);
	if (copy) {
		/* Through each rank's backend: the cache may be device memory. */
		int old = q->blocks[last], nb = block_take(kv), rc = 0;
		for (int r = 0; r < kv->m->info.tp_local && !rc; r++) {
			kernels_backend *be = kv->m->ranks[r];
			size_t st = kv->block_stride[r];
			rc = be->iface->copy(be, kv->k[r] + (size_t)nb * st, kv->k[r] + (size_t)old * st, st, err);
			if (!rc)
				rc = be->iface->copy(be, kv->v[r] + (size_t)nb * st,
						     kv->v[r] + (size_t)old * st, st, err);
		}
		if (rc) {
			block_drop(kv, nb);
			return rc;
		}
		block_drop(kv, old);
		q->blocks[last] = nb;
	}
	for (int i = 0; i < need; i++)
		q->blocks[q->nblocks++] = block_take(kv);
	return 0;
}

int engine_kv_reserve(engine_kv *kv, int seq, int n, owl_err *err)
{
	return kv_seq_reserve(kv, seq, n, err);
}

void kv_seq_commit(engine_kv *kv, int seq, const int32_t *tokens, int n)
{
	kv_seq *q = seq_get(kv, seq);
	int first = q->len / KV_BLOCK_TOKENS;
	memcpy(q->tokens + q->len, tokens, (size_t)n * sizeof *tokens);
	q->len += n;
	int full = q->len / KV_BLOCK_TOKENS;
	if (full <= first)
		return;
	uint64_t h = q->salt;
	for (int i = 0; i < full; i++) {
		const int32_t *t = q->tokens + (size_t)i * KV_BLOCK_TOKENS;
		h = block_hash(h, t);
		int b = q->blocks[i];
		if (i < first || kv->blk[b].hashed)
			continue;
		/* A block with the same tokens after the same prefix is cached
		 * already: this copy stays private. */
		if (table_find(kv, h, t) < 0)
			table_insert(kv, b, h, t);
	}
}
