/* LoRA training through the frozen model: trainable A and B in f32 with
 * their gradients, and a trainer that runs the forward pass over a packed
 * micro-batch keeping its activations on a tape (or only each layer's input,
 * recomputing the rest), then the backward pass, through the same kernel
 * layer as serving. The base weights are only read, in the form they are
 * stored (f32, f16, bf16, GGUF-quantised). tp = 1 only.
 *
 * The f32 master weights, their gradients and the optimiser stay in host
 * memory (train/). On a backend with memory of its own (CUDA) the trainer
 * keeps a mirror of the adapter's values and gradients there: the values
 * (and the gradients summed so far) go up before each micro-batch and the
 * gradients come back after it; the adapter is a few MiB, nothing beside a
 * step. The micro-batch's tokens, targets, positions and segments go up
 * too; everything else stays in the backend's memory. */
#include "lora.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#define K(be, op, ...) ((be)->iface->op((be), __VA_ARGS__))

/* Logits are formed LOGIT_ROWS rows at a time: each band of rows reads the
 * whole output matrix twice (forward, and widened for the backward), so
 * bands are wide; a band of a 49152-token vocabulary is 48 MiB. */
enum { LORA_MAX_RANK = 512, LOGIT_ROWS = 256 };

const char *const engine_lora_module_names[7] = {"q_proj", "k_proj", "v_proj", "o_proj",
						 "gate_proj", "up_proj", "down_proj"};

/* ---- trainable weights ---------------------------------------------------------- */

typedef struct lora_tensor {
	char name[128];
	int layer, is_b;
	engine_role role;
	int rows, cols;
	float *value, *grad;
} lora_tensor;

struct engine_lora_weights {
	engine_lora_opts o;
	float scale;
	engine_model_info info;
	int gguf_layout; /* B's q/k rows are in the GGUF base's permuted order */
	lora_tensor *t;
	size_t n;
	float *mem; /* every value, then every gradient */
	size_t floats; /* of the values (as many gradients) */
	engine_lora (*val)[ENGINE_ROLE_COUNT], (*grad)[ENGINE_ROLE_COUNT]; /* [layer][role] */
};

/* splitmix64: the seed's stream of uniform numbers. */
static uint64_t mix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static double uniform01(uint64_t *s) { return (double)(mix64(s) >> 11) * (1.0 / 9007199254740992.0); }

int engine_lora_weights_new(const engine_model *m, const engine_lora_opts *o,
			    engine_lora_weights **out, owl_err *err)
{
	*out = NULL;
	const engine_model_info *in = &m->info;
	if (o->rank < 1 || o->rank > LORA_MAX_RANK)
		return owl_err_set(err, OWL_EUSAGE, "a LoRA rank of %d is outside 1..%d", o->rank,
				   LORA_MAX_RANK);
	if (!(o->alpha > 0) || !isfinite(o->alpha))
		return owl_err_set(err, OWL_EUSAGE, "lora_alpha must be positive, not %g", o->alpha);
	if (!(o->dropout >= 0 && o->dropout < 1))
		return owl_err_set(err, OWL_EUSAGE, "a LoRA dropout of %g is outside [0, 1)", o->dropout);
	if (!(o->targets & 0x7fu) || (o->targets & ~0x7fu))
		return owl_err_set(err, OWL_EUSAGE, "the target modules (mask 0x%x) name none of the "
				   "seven projections, or others", o->targets);
	engine_lora_weights *w = calloc(1, sizeof *w);
	if (!w)
		return owl_err_set(err, OWL_EFAIL, "cannot allocate LoRA weights");
	w->o = *o;
	w->info = *in;
	w->gguf_layout = m->rope_adjacent;
	w->scale = o->rslora ? o->alpha / sqrtf((float)o->rank) : o->alpha / (float)o->rank;
	int nroles = __builtin_popcount(o->targets);
	w->n = (size_t)in->n_layers * nroles * 2;
	size_t floats = 0;
	for (int r = 0; r < ENGINE_ROLE_COUNT; r++)
		if (o->targets & (1u << r)) {
			int rows, cols;
			engine_role_shape(in, r, &rows, &cols);
			floats += (size_t)in->n_layers * o->rank * ((size_t)rows + cols);
		}
	w->t = calloc(w->n, sizeof *w->t);
	w->mem = calloc(2 * floats, sizeof *w->mem);
	w->floats = floats;
	w->val = calloc((size_t)in->n_layers, sizeof *w->val);
	w->grad = calloc((size_t)in->n_layers, sizeof *w->grad);
	if (!w->t || !w->mem || !w->val || !w->grad) {
		engine_lora_weights_free(w);
		return owl_err_set(err, OWL_EFAIL, "cannot allocate %zu MiB of LoRA weights",
				   2 * floats * sizeof(float) >> 20);
	}
	/* PEFT's order: layer by layer, the modules in order, A then B. */
	uint64_t rng = o->seed;
	size_t k = 0, off = 0;
	for (int l = 0; l < in->n_layers; l++)
		for (int r = 0; r < ENGINE_ROLE_COUNT; r++) {
			if (!(o->targets & (1u << r)))
				continue;
			int rows, cols;
			engine_role_shape(in, r, &rows, &cols);
			for (int is_b = 0; is_b < 2; is_b++) {
				lora_tensor *t = &w->t[k++];
				t->layer = l, t->role = r, t->is_b = is_b;
				t->rows = is_b ? rows : o->rank;
				t->cols = is_b ? o->rank : cols;
				snprintf(t->name, sizeof t->name, "base_model.model.model.layers.%d.%s.lora_%s.weight",
					 l, engine_roles[r].hf, is_b ? "B" : "A");
				t->value = w->mem + off;
				t->grad = w->mem + floats + off;
				off += (size_t)t->rows * t->cols;
				*(is_b ? &w->val[l][r].b : &w->val[l][r].a) = t->value;
				*(is_b ? &w->grad[l][r].b : &w->grad[l][r].a) = t->grad;
				/* PEFT: kaiming_uniform_(A, a=sqrt(5)), a bound of 1/sqrt(in); B = 0 */
				if (!is_b) {
					double bound = 1.0 / sqrt((double)cols);
					for (size_t i = 0; i < (size_t)t->rows * t->cols; i++)
						t->value[i] = (float)((2.0 * uniform01(&rng) - 1.0) * bound);
				}
			}
		}
	*out = w;
	return 0;
}

void engine_lora_weights_free(engine_lora_weights *w)
{
	if (!w)
		return;
	free(w->t), free(w->mem), free(w->val), free(w->grad);
	free(w);
}

const engine_lora_opts *engine_lora_weights_opts(const engine_lora_weights *w) { return &w->o; }
float engine_lora_weights_scale(const engine_lora_weights *w) { return w->scale; }
size_t engine_lora_weights_count(const engine_lora_weights *w) { return w->n; }

void engine_lora_weights_tensor(engine_lora_weights *w, size_t i, engine_lora_tensor *out)
{
	const lora_tensor *t = &w->t[i];
	memcpy(out->name, t->name, sizeof out->name);
	out->rows = t->rows, out->cols = t->cols;
	out->value = t->value, out->grad = t->grad;
}

/* The engine's row i of tensor t holds PEFT's row perm_src(i): only B of q
 * and k on a GGUF base differs. */
static int peft_row(const engine_lora_weights *w, const lora_tensor *t, int i)
{
	if (!t->is_b || !w->gguf_layout)
		return i;
	return engine_row_perm_src(engine_roles[t->role].perm, &w->info, t->rows, i);
}

void engine_lora_tensor_get(const engine_lora_weights *w, size_t i, float *dst)
{
	const lora_tensor *t = &w->t[i];
	for (int r = 0; r < t->rows; r++)
		memcpy(dst + (size_t)peft_row(w, t, r) * t->cols, t->value + (size_t)r * t->cols,
		       (size_t)t->cols * sizeof *dst);
}

void engine_lora_tensor_set(engine_lora_weights *w, size_t i, const float *src)
{
	lora_tensor *t = &w->t[i];
	for (int r = 0; r < t->rows; r++)
		memcpy(t->value + (size_t)r * t->cols, src + (size_t)peft_row(w, t, r) * t->cols,
		       (size_t)t->cols * sizeof *src);
}

void engine_lora_weights_zero_grad(engine_lora_weights *w)
{
	for (size_t i = 0; i < w->n; i++)
		memset(w->t[i].grad, 0, (size_t)w->t[i].rows * w->t[i].cols * sizeof(float));
}

int engine_lora_weights_adapter(engine_lora_weights *w, engine_adapter **out, owl_err *err)
{
	*out = NULL;
	const engine_model_info *in = &w->info;
	engine_adapter *a = calloc(1, sizeof *a);
	if (!a || !(a->lora = calloc((size_t)in->n_layers, sizeof *a->lora)) ||
	    !(a->name = strdup("(training)"))) {
		if (a)
			free(a->lora);
		free(a);
		return owl_err_set(err, OWL_EFAIL, "cannot allocate an adapter view");
	}
	a->borrowed = 1;
	a->rank = w->o.rank;
	a->scale = w->scale;
	for (int r = 0; r < ENGINE_ROLE_COUNT; r++)
		a->targeted[r] = (w->o.targets >> r) & 1u;
	a->n_layers = in->n_layers, a->dim = in->dim, a->ffn_dim = in->ffn_dim;
	a->q_dim = in->n_heads * in->head_dim, a->kv_dim = in->n_kv_heads * in->head_dim;
	a->gguf_layout = w->gguf_layout;
	memcpy(a->lora, w->val, (size_t)in->n_layers * sizeof *a->lora);
	*out = a;
	return 0;
}

/* ---- the trainer ------------------------------------------------------------------ */

/* One layer's activations: x (its input) always, the rest on the tape, or
 * (checkpointing) in one set shared by all layers, recomputed from x. */
typedef struct tape_layer {
	float *x, *xn1, *q, *k, *v, *att, *xmid, *xn2, *g, *u, *h;
} tape_layer;

struct engine_trainer {
	engine_model *m;
	engine_lora_weights *w;
	kernels_backend *be;
	int max_tokens, ckpt, max_in;
	kernels_buffer *buf;
	size_t buf_bytes; /* the tape and the working memory, in one buffer */
	tape_layer *L;
	float *xf, *xfn, *logits;
	/* the backward pass's gradients, and the adapters' working memory */
	float *dx, *dxn, *datt, *dq, *dk, *dv, *dh, *dg, *du, *drop, *dtmp, *lora_tmp;
	kernels_scratch attn, mb;
	kernels_attn_seg *segs;
	int nseg;
	/* this micro-batch */
	const engine_train_batch *b;
	int dropout_on;
	/* What the ops read: w's own arrays on a backend that reads host memory;
	 * otherwise the device's copies (lora_buf: every value then every
	 * gradient, laid out as w->mem; batch_buf: tokens, targets, positions,
	 * segments of up to max_tokens rows). */
	engine_lora (*val)[ENGINE_ROLE_COUNT], (*grad)[ENGINE_ROLE_COUNT]; /* [layer][role] */
	const int32_t *tokens, *targets, *pos;
	const kernels_attn_seg *dsegs;
	kernels_buffer *lora_buf, *batch_buf;
	float *lora_dev;
	int32_t *dev_tokens, *dev_targets, *dev_pos;
	kernels_attn_seg *dev_segs;
};

/* On a backend with memory of its own: room there for the adapter's values
 * and gradients (pointers at the same offsets as in w->mem) and for a
 * micro-batch's layout, allocated once. */
static int device_mirror(engine_trainer *t, owl_err *err)
{
	engine_lora_weights *w = t->w;
	int L = w->info.n_layers, rc;
	if ((rc = kernels_alloc(t->be, 2 * w->floats * sizeof(float), &t->lora_buf,
				(void **)&t->lora_dev, err)))
		return owl_err_wrap(err, "cannot place the LoRA weights on the %s device",
				    t->be->iface->name);
	size_t n = (size_t)t->max_tokens;
	uint8_t *p;
	if ((rc = kernels_alloc(t->be, 3 * n * sizeof(int32_t) + n * sizeof(kernels_attn_seg),
				&t->batch_buf, (void **)&p, err)))
		return owl_err_wrap(err, "cannot allocate a micro-batch's layout on the %s device",
				    t->be->iface->name);
	t->dev_segs = (kernels_attn_seg *)(void *)p; /* first: the struct's alignment */
	t->dev_tokens = (int32_t *)(void *)(p + n * sizeof(kernels_attn_seg));
	t->dev_targets = t->dev_tokens + n, t->dev_pos = t->dev_targets + n;
	t->val = calloc((size_t)L, sizeof *t->val);
	t->grad = calloc((size_t)L, sizeof *t->grad);
	if (!t->val || !t->grad)
		return owl_err_set(err, OWL_EFAIL, "cannot allocate a trainer");
#define MIRROR(hp) ((hp) ? t->lora_dev + ((hp) - w->mem) : NULL)
	for (int l = 0; l < L; l++)
		for (int r = 0; r < ENGINE_ROLE_COUNT; r++) {
			t->val[l][r].a = MIRROR(w->val[l][r].a), t->val[l][r].b = MIRROR(w->val[l][r].b);
			t->grad[l][r].a = MIRROR(w->grad[l][r].a), t->grad[l][r].b = MIRROR(w->grad[l][r].b);
		}
#undef MIRROR
	return 0;
}

/* Before a micro-batch: what the ops read, in the backend's memory. */
static int upload(engine_trainer *t, const engine_train_batch *b, int with_grads, owl_err *err)
{
	if (!t->lora_buf) {
		t->tokens = b->tokens, t->targets = b->targets, t->pos = b->pos, t->dsegs = t->segs;
		return 0;
	}
	const kernels_backend_iface *f = t->be->iface;
	size_t n = (size_t)t->max_tokens, ib = (size_t)b->n * sizeof(int32_t);
	size_t seg0 = 0, tok0 = n * sizeof(kernels_attn_seg);
	size_t lora_bytes = (with_grads ? 2 : 1) * t->w->floats * sizeof(float);
	int rc;
	if ((rc = f->copy_to_device(t->be, t->lora_buf, 0, t->w->mem, lora_bytes, err)) ||
	    (rc = f->copy_to_device(t->be, t->batch_buf, seg0, t->segs,
				    (size_t)t->nseg * sizeof(kernels_attn_seg), err)) ||
	    (rc = f->copy_to_device(t->be, t->batch_buf, tok0, b->tokens, ib, err)) ||
	    (rc = f->copy_to_device(t->be, t->batch_buf, tok0 + n * sizeof(int32_t), b->targets, ib,
				    err)) ||
	    (rc = f->copy_to_device(t->be, t->batch_buf, tok0 + 2 * n * sizeof(int32_t), b->pos, ib,
				    err)))
		return owl_err_wrap(err, "cannot upload a micro-batch to the %s device", f->name);
	t->tokens = t->dev_tokens, t->targets = t->dev_targets, t->pos = t->dev_pos;
	t->dsegs = t->dev_segs;
	return 0;
}

/* After a micro-batch's backward pass: the gradients back into w (the
 * device's held the sum so far, uploaded before, plus this one's). */
static int download_grads(engine_trainer *t, owl_err *err)
{
	if (!t->lora_buf)
		return 0;
	const kernels_backend_iface *f = t->be->iface;
	size_t bytes = t->w->floats * sizeof(float);
	int rc = f->synchronize(t->be, err);
	if (!rc)
		rc = f->copy_to_host(t->be, t->w->mem + t->w->floats, t->lora_buf, bytes, bytes, err);
	return rc;
}

int engine_trainer_new(engine_model *m, engine_lora_weights *w, int max_tokens,
		       int checkpoint_activations, engine_trainer **out, owl_err *err)
{
	*out = NULL;
	const engine_model_info *in = &m->info;
	if (in->tp > 1)
		return owl_err_set(err, OWL_EUSAGE, "training runs on one rank: the model was opened with "
				   "tp %d (open it with tp 1)", in->tp);
	if (w->info.n_layers != in->n_layers || w->info.dim != in->dim ||
	    w->info.ffn_dim != in->ffn_dim || w->info.n_heads != in->n_heads ||
	    w->info.n_kv_heads != in->n_kv_heads || w->gguf_layout != m->rope_adjacent)
		return owl_err_set(err, OWL_EUSAGE, "the LoRA weights were made for another model");
	if (max_tokens < 1 || max_tokens > in->ctx_train * 64 || max_tokens > (1 << 20))
		return owl_err_set(err, OWL_EUSAGE, "a micro-batch of %d tokens is outside 1..%d",
				   max_tokens, in->ctx_train * 64 < (1 << 20) ? in->ctx_train * 64 : 1 << 20);
	kernels_backend *be = m->be;
	const kernels_backend_iface *f = be->iface;
	if (!f->attention_packed || !f->matmul_widened || !f->matmul_backward || !f->lora_backward || !f->rmsnorm_backward ||
	    !f->rope_backward || !f->attention_backward || !f->swiglu_backward ||
	    !f->cross_entropy_backward || !f->copy || !f->fill_zero)
		return owl_err_set(err, OWL_EUSAGE, "the %s backend has no backward ops", f->name);
	if (w->o.dropout > 0 && !f->dropout)
		return owl_err_set(err, OWL_EUSAGE, "the %s backend has no dropout op (train with "
				   "lora_dropout 0, or on the CPU)", f->name);
	const layer *R = m->rank_layers[0];
	for (int l = 0; l < in->n_layers; l++)
		for (int r = 0; r < ENGINE_ROLE_COUNT; r++) {
			const wmat *wm = engine_layer_weight((layer *)&R[l], r);
			if (!f->supports(be, KERNELS_OP_MATMUL_BACKWARD, wm->type))
				return owl_err_set(err, OWL_EUSAGE, "the %s backend cannot run the backward "
						   "pass through a %s weight", f->name, kernels_dtype_name(wm->type));
		}
	if (!f->supports(be, KERNELS_OP_MATMUL_BACKWARD, m->output.type))
		return owl_err_set(err, OWL_EUSAGE, "the %s backend cannot run the backward pass through "
				   "a %s output weight", f->name, kernels_dtype_name(m->output.type));

	engine_trainer *t = calloc(1, sizeof *t);
	if (!t || !(t->L = calloc((size_t)in->n_layers, sizeof *t->L)) ||
	    !(t->segs = calloc((size_t)max_tokens, sizeof *t->segs))) {
		if (t)
			free(t->L);
		free(t);
		return owl_err_set(err, OWL_EFAIL, "cannot allocate a trainer");
	}
	t->m = m, t->w = w, t->be = be, t->max_tokens = max_tokens, t->ckpt = checkpoint_activations;
	size_t n = (size_t)max_tokens;
	size_t dim = in->dim, qd = (size_t)in->n_heads * in->head_dim,
	       kvd = (size_t)in->n_kv_heads * in->head_dim, ffn = in->ffn_dim;
	size_t max_in = dim > qd ? dim : qd;
	max_in = max_in > ffn ? max_in : ffn;
	t->max_in = (int)max_in;
	size_t rest = 3 * dim + 2 * qd + 2 * kvd + 3 * ffn; /* a layer's tape but x */
	int sets = checkpoint_activations ? 1 : in->n_layers;
	int threads = in->threads;
	size_t attn_floats = kernels_attention_packed_scratch(max_tokens, max_tokens, (int)qd, threads);
	size_t mb_floats = kernels_matmul_backward_scratch(max_tokens, (int)max_in, threads);
	size_t logit_rows = n < LOGIT_ROWS ? n : LOGIT_ROWS;
	size_t total = n * dim * (in->n_layers + 2) + n * rest * sets +
		       n * (2 * dim + 2 * qd + 2 * kvd + 3 * ffn + 2 * max_in) +
		       2 * n * (size_t)w->o.rank + logit_rows * in->vocab + attn_floats + mb_floats;
	float *p;
	int rc = kernels_alloc(be, total * sizeof(float), &t->buf, (void **)&p, err);
	t->buf_bytes = total * sizeof(float);
	if (rc) {
		engine_trainer_free(t);
		owl_err_wrap(err, "cannot allocate the trainer's workspace for %d tokens", max_tokens);
		return rc;
	}
#define TAKE(ptr, count) ((ptr) = p, p += (count))
	for (int l = 0; l < in->n_layers; l++) {
		tape_layer *T = &t->L[l];
		TAKE(T->x, n * dim);
		if (l < sets) {
			TAKE(T->xn1, n * dim), TAKE(T->q, n * qd), TAKE(T->k, n * kvd), TAKE(T->v, n * kvd);
			TAKE(T->att, n * qd), TAKE(T->xmid, n * dim), TAKE(T->xn2, n * dim);
			TAKE(T->g, n * ffn), TAKE(T->u, n * ffn), TAKE(T->h, n * ffn);
		} else {
			tape_layer x = *T;
			*T = t->L[0];
			T->x = x.x;
		}
	}
	TAKE(t->xf, n * dim), TAKE(t->xfn, n * dim);
	TAKE(t->dx, n * dim), TAKE(t->dxn, n * dim), TAKE(t->datt, n * qd), TAKE(t->dq, n * qd);
	TAKE(t->dk, n * kvd), TAKE(t->dv, n * kvd), TAKE(t->dh, n * ffn), TAKE(t->dg, n * ffn);
	TAKE(t->du, n * ffn), TAKE(t->drop, n * max_in), TAKE(t->dtmp, n * max_in);
	TAKE(t->lora_tmp, 2 * n * (size_t)w->o.rank);
	TAKE(t->logits, logit_rows * in->vocab);
	t->attn.data = p, t->attn.n = attn_floats, p += attn_floats;
	t->mb.data = p, t->mb.n = mb_floats, p += mb_floats;
#undef TAKE
	t->val = w->val, t->grad = w->grad;
	if (!f->host_memory && (rc = device_mirror(t, err))) {
		engine_trainer_free(t);
		return rc;
	}
	*out = t;
	return 0;
}

void engine_trainer_free(engine_trainer *t)
{
	if (!t)
		return;
	if (t->buf)
		t->be->iface->buffer_free(t->be, t->buf);
	t->be->iface->buffer_free(t->be, t->lora_buf);
	t->be->iface->buffer_free(t->be, t->batch_buf);
	if (t->val != t->w->val)
		free(t->val), free(t->grad);
	free(t->L), free(t->segs);
	free(t);
}

/* Checks the batch and cuts it into attention segments. */
static int batch_segments(engine_trainer *t, const engine_train_batch *b, owl_err *err)
{
	const engine_model_info *in = &t->m->info;
	if (b->n < 1 || b->n > t->max_tokens)
		return owl_err_set(err, OWL_EUSAGE, "a micro-batch of %d tokens (the trainer takes 1..%d)",
				   b->n, t->max_tokens);
	t->nseg = 0;
	for (int i = 0; i < b->n; i++) {
		if (b->tokens[i] < 0 || b->tokens[i] >= in->vocab)
			return owl_err_set(err, OWL_EUSAGE, "token id %d at row %d is outside the vocabulary "
					   "of %d", b->tokens[i], i, in->vocab);
		if (b->targets[i] < -1 || b->targets[i] >= in->vocab)
			return owl_err_set(err, OWL_EUSAGE, "target %d at row %d is outside the vocabulary "
					   "of %d", b->targets[i], i, in->vocab);
		if (b->pos[i] < 0 || b->pos[i] >= in->ctx_train)
			return owl_err_set(err, OWL_EUSAGE, "position %d at row %d is outside the model's "
					   "context of %d", b->pos[i], i, in->ctx_train);
		if (i == 0 || b->seg[i] != b->seg[i - 1]) {
			for (int s = 0; s < t->nseg; s++)
				if (b->seg[t->segs[s].tok0] == b->seg[i])
					return owl_err_set(err, OWL_EUSAGE, "sample %d is not contiguous (rows %d "
							   "and %d)", b->seg[i], t->segs[s].tok0, i);
			t->segs[t->nseg++] = (kernels_attn_seg){.tok0 = i, .ntok = 0};
		}
		t->segs[t->nseg - 1].ntok++;
	}
	return 0;
}

/* The seed of the dropout mask of (layer, role) (the dropout op's mask of
 * the adapter's input): from the micro-batch's seed alone, so that the
 * backward pass draws the same mask again. */
static uint64_t dropout_seed(const engine_trainer *t, int l, int role)
{
	return t->b->dropout_seed ^ ((uint64_t)(l * ENGINE_ROLE_COUNT + role + 1) * 0xd1b54a32d192ed03ull);
}

/* The adapter's input for (l, role): x itself, or x with dropout into t->drop. */
static int adapter_input(engine_trainer *t, int l, engine_role role, const float *x, int n, int in,
			 const float **xa, owl_err *err)
{
	*xa = x;
	if (!t->dropout_on)
		return 0;
	*xa = t->drop;
	return K(t->be, dropout, t->drop, x, (size_t)n * in, dropout_seed(t, l, role), t->w->o.dropout,
		 0, err);
}

/* Whether matmul on this type may round its input (integer kernels of the
 * GGUF block types): then the trainer takes the widened f32 product, the
 * function its backward pass differentiates. */
static int quantised(wtype type)
{
	return type == W_Q8_0 || type == W_Q4_0 || type == W_Q4_1 || type == W_Q4_K ||
	       type == W_Q6_K;
}

/* y = x W^T, exact in f32 */
static int frozen_matmul(engine_trainer *t, float *y, const float *x, const wmat *wm, int n,
			 owl_err *err)
{
	kernels_backend *be = t->be;
	if (quantised(wm->type))
		return K(be, matmul_widened, y, x, wm, n, &t->mb, err);
	return K(be, matmul, y, x, wm, n, err);
}

/* y = x W^T + scale B (A drop(x)) */
static int project(engine_trainer *t, int l, engine_role role, float *y, const float *x,
		   const wmat *wm, int n, owl_err *err)
{
	kernels_backend *be = t->be;
	int rc = frozen_matmul(t, y, x, wm, n, err);
	const engine_lora *lo = &t->val[l][role];
	const float *xa;
	if (rc || !lo->a || (rc = adapter_input(t, l, role, x, n, wm->cols, &xa, err)))
		return rc;
	int r = t->w->o.rank;
	return K(be, lora, y, xa, n, wm->cols, wm->rows, r, lo->a, wm->cols, lo->b, r, t->w->scale,
		 t->lora_tmp, err);
}

/* dx (+)= dy W, and the adapter's gradients dA, dB and its part of dx. */
static int project_backward(engine_trainer *t, int l, engine_role role, float *dx, int accumulate,
			    const float *dy, const float *x, const wmat *wm, int n, owl_err *err)
{
	kernels_backend *be = t->be;
	int rc = K(be, matmul_backward, dx, dy, wm, n, accumulate, &t->mb, err);
	const engine_lora *lo = &t->val[l][role], *gr = &t->grad[l][role];
	if (rc || !lo->a)
		return rc;
	int r = t->w->o.rank, in = wm->cols;
	if (!t->dropout_on)
		return K(be, lora_backward, dx, gr->a, gr->b, dy, x, n, in, wm->rows, r, lo->a, in, lo->b,
			 r, t->w->scale, t->lora_tmp, err);
	const float *xa;
	size_t total = (size_t)n * in;
	if ((rc = adapter_input(t, l, role, x, n, in, &xa, err)) ||
	    (rc = K(be, fill_zero, t->dtmp, total * sizeof(float), err)) ||
	    (rc = K(be, lora_backward, t->dtmp, gr->a, gr->b, dy, xa, n, in, wm->rows, r, lo->a, in,
		    lo->b, r, t->w->scale, t->lora_tmp, err)))
		return rc;
	/* the adapter's part of dx passes the same mask */
	return K(be, dropout, dx, t->dtmp, total, dropout_seed(t, l, role), t->w->o.dropout, 1, err);
}

/* Layer l from T->x: writes the tape and the layer's output into out. */
static int layer_forward(engine_trainer *t, int l, const tape_layer *T, float *out, owl_err *err)
{
	engine_model *m = t->m;
	const engine_model_info *in = &m->info;
	kernels_backend *be = t->be;
	const layer *R = &m->rank_layers[0][l];
	int n = t->b->n, hd = in->head_dim, dim = in->dim, rc;
	size_t nd = (size_t)n * dim;
	kernels_rope_layout layout = m->rope_adjacent ? KERNELS_ROPE_ADJACENT : KERNELS_ROPE_HALF;
	if ((rc = K(be, rmsnorm, T->xn1, T->x, R->attn_norm, n, dim, in->norm_eps, err)) ||
	    (rc = project(t, l, ENGINE_ROLE_Q, T->q, T->xn1, &R->wq, n, err)) ||
	    (rc = project(t, l, ENGINE_ROLE_K, T->k, T->xn1, &R->wk, n, err)) ||
	    (rc = project(t, l, ENGINE_ROLE_V, T->v, T->xn1, &R->wv, n, err)))
		return rc;
	if (R->bq && ((rc = K(be, add_rows, T->q, R->bq, n, in->n_heads * hd, err)) ||
		      (rc = K(be, add_rows, T->k, R->bk, n, in->n_kv_heads * hd, err)) ||
		      (rc = K(be, add_rows, T->v, R->bv, n, in->n_kv_heads * hd, err))))
		return rc;
	if ((rc = K(be, rope, T->q, n, t->pos, in->n_heads, hd, m->rank_inv_freq[0], layout, err)) ||
	    (rc = K(be, rope, T->k, n, t->pos, in->n_kv_heads, hd, m->rank_inv_freq[0], layout, err)) ||
	    (rc = K(be, attention_packed, T->att, T->q, T->k, T->v, t->dsegs, t->nseg, in->n_heads,
		    in->n_kv_heads, hd, in->sliding_window, &t->attn, err)) ||
	    (rc = project(t, l, ENGINE_ROLE_O, T->xmid, T->att, &R->wo, n, err)) ||
	    (rc = K(be, add, T->xmid, T->x, nd, err)) ||
	    (rc = K(be, rmsnorm, T->xn2, T->xmid, R->ffn_norm, n, dim, in->norm_eps, err)) ||
	    (rc = project(t, l, ENGINE_ROLE_GATE, T->g, T->xn2, &R->w_gate, n, err)) ||
	    (rc = project(t, l, ENGINE_ROLE_UP, T->u, T->xn2, &R->w_up, n, err)))
		return rc;
	size_t nf = (size_t)n * in->ffn_dim;
	if ((rc = K(be, copy, T->h, T->g, nf * sizeof(float), err)) ||
	    (rc = K(be, swiglu, T->h, T->u, nf, err)) ||
	    (rc = project(t, l, ENGINE_ROLE_DOWN, out, T->h, &R->w_down, n, err)))
		return rc;
	return K(be, add, out, T->xmid, nd, err);
}

/* Layer l backward: t->dx holds the gradient of the layer's output on
 * entry, of its input on return. */
static int layer_backward(engine_trainer *t, int l, const tape_layer *T, owl_err *err)
{
	engine_model *m = t->m;
	const engine_model_info *in = &m->info;
	kernels_backend *be = t->be;
	const layer *R = &m->rank_layers[0][l];
	int n = t->b->n, hd = in->head_dim, dim = in->dim, rc;
	kernels_rope_layout layout = m->rope_adjacent ? KERNELS_ROPE_ADJACENT : KERNELS_ROPE_HALF;
	/* the MLP: x_out = xmid + down(swiglu(gate(xn2), up(xn2))) */
	if ((rc = project_backward(t, l, ENGINE_ROLE_DOWN, t->dh, 0, t->dx, T->h, &R->w_down, n, err)) ||
	    (rc = K(be, swiglu_backward, t->dg, t->du, t->dh, T->g, T->u, (size_t)n * in->ffn_dim, err)) ||
	    (rc = project_backward(t, l, ENGINE_ROLE_GATE, t->dxn, 0, t->dg, T->xn2, &R->w_gate, n, err)) ||
	    (rc = project_backward(t, l, ENGINE_ROLE_UP, t->dxn, 1, t->du, T->xn2, &R->w_up, n, err)) ||
	    (rc = K(be, rmsnorm_backward, t->dx, NULL, t->dxn, T->xmid, R->ffn_norm, n, dim,
		    in->norm_eps, err)))
		return rc;
	/* attention: xmid = x + o(attn(rope(q(xn1)), rope(k(xn1)), v(xn1))) */
	if ((rc = project_backward(t, l, ENGINE_ROLE_O, t->datt, 0, t->dx, T->att, &R->wo, n, err)) ||
	    (rc = K(be, attention_backward, t->dq, t->dk, t->dv, t->datt, T->q, T->k, T->v, t->dsegs,
		    t->nseg, in->n_heads, in->n_kv_heads, hd, in->sliding_window, &t->attn, err)) ||
	    (rc = K(be, rope_backward, t->dq, n, t->pos, in->n_heads, hd, m->rank_inv_freq[0],
		    layout, err)) ||
	    (rc = K(be, rope_backward, t->dk, n, t->pos, in->n_kv_heads, hd, m->rank_inv_freq[0],
		    layout, err)) ||
	    (rc = project_backward(t, l, ENGINE_ROLE_Q, t->dxn, 0, t->dq, T->xn1, &R->wq, n, err)) ||
	    (rc = project_backward(t, l, ENGINE_ROLE_K, t->dxn, 1, t->dk, T->xn1, &R->wk, n, err)) ||
	    (rc = project_backward(t, l, ENGINE_ROLE_V, t->dxn, 1, t->dv, T->xn1, &R->wv, n, err)))
		return rc;
	return K(be, rmsnorm_backward, t->dx, NULL, t->dxn, T->x, R->attn_norm, n, dim, in->norm_eps,
		 err);
}

/* The forward pass to the loss; with backward, the output layer's
 * gradient into t->dxn (dlogits scaled by grad_scale), then every layer's. */
static int run(engine_trainer *t, const engine_train_batch *b, int backward, float grad_scale,
	       double *loss_sum, int64_t *count, owl_err *err)
{
	engine_model *m = t->m;
	const engine_model_info *in = &m->info;
	kernels_backend *be = t->be;
	int rc = batch_segments(t, b, err);
	if (!rc)
		rc = upload(t, b, backward, err);
	if (rc)
		return rc;
	omp_set_num_threads(in->threads);
	t->b = b;
	t->dropout_on = backward && t->w->o.dropout > 0;
	int n = b->n, dim = in->dim, L = in->n_layers;
	size_t nd = (size_t)n * dim;
	if ((rc = K(be, embedding, t->L[0].x, &m->tok_embd, t->tokens, n, err)))
		return rc;
	for (int l = 0; l < L; l++)
		if ((rc = layer_forward(t, l, &t->L[l], l + 1 < L ? t->L[l + 1].x : t->xf, err)))
			return rc;
	if ((rc = K(be, rmsnorm, t->xfn, t->xf, m->rank_out_norm, n, dim, in->norm_eps, err)))
		return rc;
	/* The logits a band of rows at a time: the loss, and dlogits in place. */
	double total = 0;
	int64_t scored = 0;
	for (int r0 = 0; r0 < n; r0 += LOGIT_ROWS) {
		int nr = n - r0 < LOGIT_ROWS ? n - r0 : LOGIT_ROWS;
		int any = 0;
		for (int i = r0; i < r0 + nr; i++)
			any |= b->targets[i] >= 0;
		if (!any) {
			if (backward && (rc = K(be, fill_zero, t->dxn + (size_t)r0 * dim,
						(size_t)nr * dim * sizeof(float), err)))
				return rc;
			continue;
		}
		double ls;
		int64_t c;
		if ((rc = frozen_matmul(t, t->logits, t->xfn + (size_t)r0 * dim, &m->output, nr, err)) ||
		    (rc = K(be, cross_entropy_backward, t->logits, t->logits, t->targets + r0, nr, in->vocab,
			    grad_scale, &ls, &c, err)))
			return rc;
		total += ls, scored += c;
		if (backward && (rc = K(be, matmul_backward, t->dxn + (size_t)r0 * dim, t->logits, &m->output,
					nr, 0, &t->mb, err)))
			return rc;
	}
	*loss_sum = total, *count = scored;
	if (!backward)
		return 0;
	if ((rc = K(be, fill_zero, t->dx, nd * sizeof(float), err)) ||
	    (rc = K(be, rmsnorm_backward, t->dx, NULL, t->dxn, t->xf, m->rank_out_norm, n, dim,
		    in->norm_eps, err)))
		return rc;
	for (int l = L - 1; l >= 0; l--) {
		/* Checkpointing: the layer's activations again from its input
		 * (its output, already consumed, goes to the scratch of dxn). */
		if (t->ckpt && (rc = layer_forward(t, l, &t->L[l], t->dxn, err)))
			return rc;
		if ((rc = layer_backward(t, l, &t->L[l], err)))
			return rc;
	}
	return download_grads(t, err);
}

int engine_train_step(engine_trainer *t, const engine_train_batch *b, float grad_scale,
		      double *loss_sum, int64_t *count, owl_err *err)
{
	*loss_sum = 0, *count = 0;
	return run(t, b, 1, grad_scale, loss_sum, count, err);
}

int engine_train_eval(engine_trainer *t, const engine_train_batch *b, double *loss_sum,
		      int64_t *count, owl_err *err)
{
	*loss_sum = 0, *count = 0;
	return run(t, b, 0, 0.0f, loss_sum, count, err);
}

size_t engine_trainer_workspace_bytes(const engine_trainer *t) { return t->buf_bytes; }
