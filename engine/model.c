/* Loading a model: the Hugging Face config and safetensors weights, or a
 * GGUF file. Weights stay in the mapped files; only norm weights and biases
 * (a few KB) are converted to f32. */
#define _GNU_SOURCE
#include "internal.h"
#include "lora.h"
#include "dist.h"

#include "common/modelcfg.h"

#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static int has_suffix(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);
	return a >= b && strcasecmp(s + a - b, suffix) == 0;
}

/* ---- config.json ------------------------------------------------------------ */

/* Llama 3.x frequency scaling: long wavelengths slowed by `factor`, short
 * ones kept, a smooth blend between (as Meta's reference code does). */
static void llama3_scale(float *inv_freq, int half, float factor, float low, float high, int orig)
{
	float low_wl = (float)orig / low, high_wl = (float)orig / high;
	for (int i = 0; i < half; i++) {
		float wl = 2.0f * (float)M_PI / inv_freq[i];
		if (wl < high_wl)
			continue;
		if (wl > low_wl) {
			inv_freq[i] /= factor;
		} else {
			float smooth = ((float)orig / wl - low) / (high - low);
			inv_freq[i] = (1 - smooth) * inv_freq[i] / factor + smooth * inv_freq[i];
		}
	}
}

static int parse_config(engine_model *m, const char *dir, owl_err *err)
{
	json_t *c;
	int rc = owl_read_json_object(dir, "config.json", 4u << 20, (void **)&c, err);
	if (rc)
		return rc;
	engine_model_info *in = &m->info;
	const char *arch = json_string_value(json_array_get(json_object_get(c, "architectures"), 0));
	const char *mt = json_string_value(json_object_get(c, "model_type"));
	if (arch && strcmp(arch, "LlamaForCausalLM") == 0)
		snprintf(in->arch, sizeof in->arch, "llama");
	else if (arch && strcmp(arch, "MistralForCausalLM") == 0)
		snprintf(in->arch, sizeof in->arch, "mistral");
	else if (arch && strcmp(arch, "Qwen2ForCausalLM") == 0)
		snprintf(in->arch, sizeof in->arch, "qwen2");
	else {
		rc = owl_err_set(err, OWL_EFAIL, "config.json: architectures = %s is not supported "
				 "(LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)",
				 arch ? arch : mt ? mt : "(missing)");
		json_decref(c);
		return rc;
	}
	const char *act = json_string_value(json_object_get(c, "hidden_act"));
	if (act && strcmp(act, "silu") != 0) {
		rc = owl_err_set(err, OWL_EFAIL, "config.json: hidden_act = %s is not supported (silu)", act);
		json_decref(c);
		return rc;
	}
	/* The same checks the pull makes before it registers a checkpoint. */
	owl_model_config mc;
	if ((rc = owl_model_config_from_json(c, &mc, err))) {
		owl_err_wrap(err, "config.json");
		json_decref(c);
		return rc;
	}
	in->dim = mc.dim;
	in->ffn_dim = mc.ffn_dim;
	in->n_layers = mc.n_layers;
	in->n_heads = mc.n_heads;
	in->n_kv_heads = mc.n_kv_heads;
	in->vocab = mc.vocab;
	in->ctx_train = mc.ctx_train;
	in->head_dim = mc.head_dim;
	in->norm_eps = (float)mc.norm_eps;
	in->rope_theta = (float)mc.rope_theta;
	in->tied_embeddings = json_is_true(json_object_get(c, "tie_word_embeddings"));
	in->qkv_bias = strcmp(in->arch, "qwen2") == 0 || json_is_true(json_object_get(c, "attention_bias"));
	json_t *sw = json_object_get(c, "sliding_window");
	if (json_is_integer(sw) && json_integer_value(sw) > 0 &&
	    (strcmp(in->arch, "mistral") == 0 || json_is_true(json_object_get(c, "use_sliding_window"))))
		in->sliding_window = (int)json_integer_value(sw);

	int half = in->head_dim / 2;
	m->inv_freq = owl_xmalloc((size_t)half * sizeof *m->inv_freq);
	for (int i = 0; i < half; i++)
		m->inv_freq[i] = 1.0f / powf(in->rope_theta, (float)(2 * i) / (float)in->head_dim);
	json_t *rs = json_object_get(c, "rope_scaling");
	if (json_is_object(rs)) {
		const char *type = json_string_value(json_object_get(rs, "rope_type"));
		if (!type)
			type = json_string_value(json_object_get(rs, "type"));
		if (!type || strcmp(type, "llama3") != 0) {
			rc = owl_err_set(err, OWL_EFAIL, "config.json: rope_scaling type = %s is not "
					 "supported (llama3)", type ? type : "(missing)");
			json_decref(c);
			return rc;
		}
		llama3_scale(m->inv_freq, half,
			     (float)json_number_value(json_object_get(rs, "factor")),
			     (float)json_number_value(json_object_get(rs, "low_freq_factor")),
			     (float)json_number_value(json_object_get(rs, "high_freq_factor")),
			     (int)json_integer_value(json_object_get(rs, "original_max_position_embeddings")));
	}
	json_decref(c);
	return 0;
}

/* ---- safetensors weights ----------------------------------------------------- */

static int st_lookup(engine_model *m, const char *name, const st_tensor **out)
{
	for (size_t i = 0; i < m->nst; i++)
		if ((*out = st_find(m->st[i], name)))
			return 0;
	return OWL_EFAIL;
}

static int st_mat(engine_model *m, const char *name, int rows, int cols, wmat *w, owl_err *err)
{
	const st_tensor *t;
	if (st_lookup(m, name, &t))
		return owl_err_set(err, OWL_EFAIL, "the checkpoint has no tensor '%s'", name);
	if (t->n_dims != 2 || t->shape[0] != rows || t->shape[1] != cols)
		return owl_err_set(err, OWL_EFAIL, "tensor '%s' has shape [%lld, %lld], the config "
				   "implies [%d, %d]", name, (long long)t->shape[0],
				   t->n_dims > 1 ? (long long)t->shape[1] : 0LL, rows, cols);
	switch (t->dtype) {
	case ST_F32: w->type = W_F32; break;
	case ST_F16: w->type = W_F16; break;
	case ST_BF16: w->type = W_BF16; break;
	default:
		return owl_err_set(err, OWL_EFAIL, "tensor '%s' has dtype %s (f32, f16, bf16 supported)",
				   name, st_dtype_name(t->dtype));
	}
	w->data = t->data;
	w->rows = rows;
	w->cols = cols;
	w->row_bytes = kernels_row_bytes(w->type, cols);
	return 0;
}

static int st_vec(engine_model *m, const char *name, int n, float **out, owl_err *err)
{
	const st_tensor *t;
	if (st_lookup(m, name, &t))
		return owl_err_set(err, OWL_EFAIL, "the checkpoint has no tensor '%s'", name);
	if (t->n_dims != 1 || t->shape[0] != n)
		return owl_err_set(err, OWL_EFAIL, "tensor '%s' should have %d elements", name, n);
	wmat w = {.data = t->data, .rows = 1, .cols = n};
	w.type = t->dtype == ST_F32 ? W_F32 : t->dtype == ST_F16 ? W_F16 : W_BF16;
	if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
		return owl_err_set(err, OWL_EFAIL, "tensor '%s' has dtype %s", name, st_dtype_name(t->dtype));
	w.row_bytes = kernels_row_bytes(w.type, n);
	*out = owl_xmalloc((size_t)n * sizeof **out);
	kernels_row_to_f32(&w, 0, *out);
	return 0;
}

static int open_safetensors(engine_model *m, const char *dir, owl_err *err)
{
	char *ixp = owl_path_join(dir, "model.safetensors.index.json");
	int rc = 0;
	if (owl_path_exists(ixp)) {
		st_index *ix = NULL;
		rc = st_index_load(ixp, &ix, err);
		if (!rc) {
			m->nst = st_index_file_count(ix);
			m->st = owl_xcalloc(m->nst, sizeof *m->st);
			for (size_t i = 0; i < m->nst && !rc; i++) {
				char *p = owl_path_join(dir, st_index_file_at(ix, i));
				rc = st_open(p, &m->st[i], err);
				free(p);
			}
		}
		st_index_free(ix);
	} else {
		char *p = owl_path_join(dir, "model.safetensors");
		m->nst = 1;
		m->st = owl_xcalloc(1, sizeof *m->st);
		rc = st_open(p, &m->st[0], err);
		free(p);
	}
	free(ixp);
	if (rc)
		return rc;
	engine_model_info *in = &m->info;
	int qd = in->n_heads * in->head_dim, kvd = in->n_kv_heads * in->head_dim;
	rc = st_mat(m, "model.embed_tokens.weight", in->vocab, in->dim, &m->tok_embd, err);
	if (!rc && !in->tied_embeddings && st_lookup(m, "lm_head.weight", &(const st_tensor *){0}) == 0)
		rc = st_mat(m, "lm_head.weight", in->vocab, in->dim, &m->output, err);
	else if (!rc) {
		m->output = m->tok_embd;
		in->tied_embeddings = 1;
	}
	if (!rc)
		rc = st_vec(m, "model.norm.weight", in->dim, &m->out_norm, err);
	m->layers = owl_xcalloc((size_t)in->n_layers, sizeof *m->layers);
	char name[160];
#define P(fmt) (snprintf(name, sizeof name, "model.layers.%d." fmt, l), name)
	for (int l = 0; l < in->n_layers && !rc; l++) {
		layer *L = &m->layers[l];
		rc = st_vec(m, P("input_layernorm.weight"), in->dim, &L->attn_norm, err);
		if (!rc) rc = st_vec(m, P("post_attention_layernorm.weight"), in->dim, &L->ffn_norm, err);
		for (int r = 0; r < ENGINE_ROLE_COUNT && !rc; r++) {
			int rows, cols;
			engine_role_shape(in, (engine_role)r, &rows, &cols);
			snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, engine_roles[r].hf);
			rc = st_mat(m, name, rows, cols, engine_layer_weight(L, (engine_role)r), err);
		}
		if (!rc && in->qkv_bias) {
			rc = st_vec(m, P("self_attn.q_proj.bias"), qd, &L->bq, err);
			if (!rc) rc = st_vec(m, P("self_attn.k_proj.bias"), kvd, &L->bk, err);
			if (!rc) rc = st_vec(m, P("self_attn.v_proj.bias"), kvd, &L->bv, err);
		}
	}
#undef P
	snprintf(in->source, sizeof in->source, "safetensors");
	return rc;
}

/* ---- GGUF --------------------------------------------------------------------- */

static int gg_type(gguf_type t, wtype *w)
{
	switch (t) {
	case GGUF_T_F32: *w = W_F32; return 0;
	case GGUF_T_F16: *w = W_F16; return 0;
	case GGUF_T_BF16: *w = W_BF16; return 0;
	case GGUF_T_Q8_0: *w = W_Q8_0; return 0;
	case GGUF_T_Q4_0: *w = W_Q4_0; return 0;
	case GGUF_T_Q4_1: *w = W_Q4_1; return 0;
	case GGUF_T_Q4_K: *w = W_Q4_K; return 0;
	case GGUF_T_Q6_K: *w = W_Q6_K; return 0;
	}
	return OWL_EFAIL;
}

static int gg_mat(engine_model *m, const char *name, int rows, int cols, wmat *w, owl_err *err)
{
	const gguf_tensor *t = gguf_find_tensor(m->gguf, name);
	if (!t)
		return owl_err_set(err, OWL_EFAIL, "the GGUF has no tensor '%s'", name);
	if (t->n_dims != 2 || t->dims[0] != (uint64_t)cols || t->dims[1] != (uint64_t)rows)
		return owl_err_set(err, OWL_EFAIL, "GGUF tensor '%s' has shape [%llu, %llu], the "
				   "metadata implies [%d, %d]", name, (unsigned long long)t->dims[0],
				   (unsigned long long)(t->n_dims > 1 ? t->dims[1] : 0), cols, rows);
	if (gg_type(t->type, &w->type))
		return owl_err_set(err, OWL_EFAIL, "GGUF tensor '%s' type %s is not supported", name,
				   gguf_type_name(t->type));
	w->data = t->data;
	w->rows = rows;
	w->cols = cols;
	w->row_bytes = kernels_row_bytes(w->type, cols);
	return 0;
}

static int gg_vec(engine_model *m, const char *name, int n, float **out, owl_err *err)
{
	const gguf_tensor *t = gguf_find_tensor(m->gguf, name);
	if (!t)
		return owl_err_set(err, OWL_EFAIL, "the GGUF has no tensor '%s'", name);
	if (t->dims[0] != (uint64_t)n || t->n_dims != 1)
		return owl_err_set(err, OWL_EFAIL, "GGUF tensor '%s' should have %d elements", name, n);
	*out = owl_xmalloc((size_t)n * sizeof **out);
	return gguf_dequantize_row(t->type, t->data, *out, (size_t)n, err);
}

static int open_gguf(engine_model *m, const char *path, owl_err *err)
{
	int rc = gguf_open(path, &m->gguf, err);
	if (rc)
		return rc;
	const char *arch = NULL;
	if (gguf_get_str(m->gguf, "general.architecture", &arch) || strcmp(arch, "llama") != 0)
		return owl_err_set(err, OWL_EFAIL, "GGUF general.architecture = %s is not supported "
				   "(llama)", arch ? arch : "(missing)");
	engine_model_info *in = &m->info;
	snprintf(in->arch, sizeof in->arch, "llama");
	/* The same checks the pull makes before it registers a GGUF. */
	owl_model_config mc;
	if ((rc = owl_model_config_from_gguf(m->gguf, &mc, err))) {
		owl_err_wrap(err, "GGUF");
		return rc;
	}
	in->dim = mc.dim;
	in->ffn_dim = mc.ffn_dim;
	in->n_layers = mc.n_layers;
	in->n_heads = mc.n_heads;
	in->n_kv_heads = mc.n_kv_heads;
	in->ctx_train = mc.ctx_train;
	in->head_dim = mc.head_dim;
	in->vocab = mc.vocab;
	in->norm_eps = (float)mc.norm_eps;
	in->rope_theta = (float)mc.rope_theta;
	int half = in->head_dim / 2;
	m->inv_freq = owl_xmalloc((size_t)half * sizeof *m->inv_freq);
	for (int i = 0; i < half; i++)
		m->inv_freq[i] = 1.0f / powf(in->rope_theta, (float)(2 * i) / (float)in->head_dim);
	/* Llama 3.x scaling travels as per-frequency divisors. */
	const gguf_tensor *rf = gguf_find_tensor(m->gguf, "rope_freqs.weight");
	if (rf && rf->type == GGUF_T_F32 && rf->dims[0] == (uint64_t)half)
		for (int i = 0; i < half; i++)
			m->inv_freq[i] /= ((const float *)rf->data)[i];
	m->rope_adjacent = 1;
	rc = gg_mat(m, "token_embd.weight", in->vocab, in->dim, &m->tok_embd, err);
	if (!rc && gguf_find_tensor(m->gguf, "output.weight"))
		rc = gg_mat(m, "output.weight", in->vocab, in->dim, &m->output, err);
	else if (!rc) {
		m->output = m->tok_embd;
		in->tied_embeddings = 1;
	}
	if (!rc)
		rc = gg_vec(m, "output_norm.weight", in->dim, &m->out_norm, err);
	m->layers = owl_xcalloc((size_t)in->n_layers, sizeof *m->layers);
	char name[96];
#define G(fmt) (snprintf(name, sizeof name, "blk.%d." fmt, l), name)
	for (int l = 0; l < in->n_layers && !rc; l++) {
		layer *L = &m->layers[l];
		rc = gg_vec(m, G("attn_norm.weight"), in->dim, &L->attn_norm, err);
		if (!rc) rc = gg_vec(m, G("ffn_norm.weight"), in->dim, &L->ffn_norm, err);
		/* q/k rows are stored permuted (engine_roles[].perm); the forward
		 * pass reads them so, rotating adjacent RoPE pairs. */
		for (int r = 0; r < ENGINE_ROLE_COUNT && !rc; r++) {
			int rows, cols;
			engine_role_shape(in, (engine_role)r, &rows, &cols);
			snprintf(name, sizeof name, "blk.%d.%s.weight", l, engine_roles[r].gguf);
			rc = gg_mat(m, name, rows, cols, engine_layer_weight(L, (engine_role)r), err);
		}
	}
#undef G
	snprintf(in->source, sizeof in->source, "gguf");
	return rc;
}

/* ---- open / close ----------------------------------------------------------------- */

static void account(engine_model *m)
{
	engine_model_info *in = &m->info;
	const wmat *all[2 + 7] = {&m->tok_embd, &m->output};
	uint64_t params = 0, bytes = 0;
	int mixed = 0;
	wtype first = m->layers[0].wq.type;
	for (int l = 0; l < in->n_layers; l++) {
		layer *L = &m->layers[l];
		const wmat *ws[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
		for (int k = 0; k < 7; k++) {
			params += (uint64_t)ws[k]->rows * (uint64_t)ws[k]->cols;
			bytes += (uint64_t)ws[k]->rows * ws[k]->row_bytes;
			mixed |= ws[k]->type != first;
		}
		params += 2 * (uint64_t)in->dim;
	}
	for (int k = 0; k < (in->tied_embeddings ? 1 : 2); k++) {
		params += (uint64_t)all[k]->rows * (uint64_t)all[k]->cols;
		bytes += (uint64_t)all[k]->rows * all[k]->row_bytes;
	}
	in->n_params = params + (uint64_t)in->dim;
	in->weight_bytes = bytes;
	snprintf(in->weight_dtype, sizeof in->weight_dtype, "%s", mixed ? "mixed" : kernels_dtype_name(first));
}

/* ---- preparing the weights: each rank's shard ------------------------------------ */

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
	size_t off = kernels_row_bytes(w->type, c0);
	v.data = w->data + off;
	v.cols = n;
	return v;
}
/* w replaced by what rank r's backend makes of it (repacked, copied from a
 * column shard, or left a view); the memory is the model's to free. */
void engine_rank_heads(const engine_model_info *in, int r, int *h0, int *kv0, int *nkv)
{
	int hpr = in->n_heads / in->tp, group = in->n_heads / in->n_kv_heads;
	*h0 = r * hpr;
	*kv0 = *h0 / group;
	*nkv = (*h0 + hpr - 1) / group + 1 - *kv0;
}

/* buf (memory of be) is the model's from now on, freed at close; on
 * failure it is freed here. */
static int keep_prepared(engine_model *m, kernels_backend *be, kernels_buffer *buf, owl_err *err)
{
	kernels_buffer **p = realloc(m->prepared, (size_t)(m->nprepared + 1) * sizeof *p);
	if (p)
		m->prepared = p;
	kernels_backend **q = p ? realloc(m->prepared_by, (size_t)(m->nprepared + 1) * sizeof *q) : NULL;
	if (q)
		m->prepared_by = q;
	if (!p || !q) {
		be->iface->buffer_free(be, buf);
		return owl_err_set(err, OWL_EFAIL, "cannot allocate the model's weight table");
	}
	m->prepared[m->nprepared] = buf;
	m->prepared_by[m->nprepared++] = be;
	return 0;
}

static int prepare_one(engine_model *m, int r, wmat *w, owl_err *err)
{
	kernels_backend *be = m->ranks[r];
	wmat out;
	kernels_buffer *owned = NULL;
	int rc = be->iface->weight_prepare(be, w, 1, &out, &owned, err);
	if (rc)
		return rc;
	if (owned && (rc = keep_prepared(m, be, owned, err)))
		return rc;
	*w = out;
	return 0;
}

/* Local rank r's vectors (norms, its heads' biases, RoPE frequencies, the
 * first local rank: the output norm) copied into one buffer of its backend. */
static int prepare_vectors(engine_model *m, int r, owl_err *err)
{
	const engine_model_info *in = &m->info;
	kernels_backend *be = m->ranks[r];
	int hd = in->head_dim, hpr = in->n_heads / in->tp, h0, kv0, nkv;
	engine_rank_heads(in, in->tp_first + r, &h0, &kv0, &nkv);
	size_t per_layer = 2 * (size_t)in->dim + (in->qkv_bias ? (size_t)(hpr + 2 * nkv) * hd : 0);
	size_t total = per_layer * in->n_layers + (size_t)hd / 2 + (r == 0 ? (size_t)in->dim : 0);
	kernels_buffer *buf;
	void *base;
	int rc = kernels_alloc(be, total * sizeof(float), &buf, &base, err);
	if (rc)
		return rc;
	size_t off = 0;
	float *dst = base;
	/* host array -> its place in the buffer */
#define PUT(field, src, n)                                                                  \
	do {                                                                                \
		if (!rc && !(rc = be->iface->copy_to_device(be, buf, off * sizeof(float), (src), \
							     (size_t)(n) * sizeof(float), err))) \
			field = dst + off;                                                  \
		off += (size_t)(n);                                                         \
	} while (0)
	for (int l = 0; l < in->n_layers; l++) {
		const layer *L = &m->layers[l];
		layer *R = &m->rank_layers[r][l];
		PUT(R->attn_norm, L->attn_norm, in->dim);
		PUT(R->ffn_norm, L->ffn_norm, in->dim);
		if (in->qkv_bias) {
			PUT(R->bq, L->bq + h0 * hd, hpr * hd);
			PUT(R->bk, L->bk + kv0 * hd, nkv * hd);
			PUT(R->bv, L->bv + kv0 * hd, nkv * hd);
		}
	}
	PUT(m->rank_inv_freq[r], m->inv_freq, hd / 2);
	if (r == 0)
		PUT(m->rank_out_norm, m->out_norm, in->dim);
#undef PUT
	/* The buffer is freed with the prepared weights, even after a failed copy. */
	int krc = keep_prepared(m, be, buf, err);
	return rc ? rc : krc;
}

/* Each local rank's shard of every layer is cut first (q/k/v, gate, up by
 * rows; o and down by columns), then prepared by the rank's backend, so each
 * rank owns its weights contiguously in the layout its kernels want (a
 * process of a multi-process launch cuts only its own ranks' shards and
 * never touches the others' pages of the files): on the CPU
 * f32, f16, bf16, Q8_0, Q4_0 and Q4_1 matrices are repacked into 16-row
 * groups where the CPU takes them (engine/kernels/cpu/repack.c), with the
 * file's pages dropped as they are copied, so the weights are held once,
 * during the load too. The embedding and output matrices belong to the
 * first local rank of every process (a tied table is the output matrix;
 * lookups read its rows from the groups). */
static int prepare_weights(engine_model *m, owl_err *err)
{
	const engine_model_info *in = &m->info;
	int tp = in->tp, hd = in->head_dim, hpr = in->n_heads / tp, fpr = in->ffn_dim / tp, rc = 0;
	for (int r = 0; r < in->tp_local && !rc; r++) {
		int g = in->tp_first + r; /* the global rank */
		if (!(m->rank_layers[r] = calloc((size_t)in->n_layers, sizeof(layer))))
			return owl_err_set(err, OWL_EFAIL, "cannot allocate rank %d's layers", g);
		int h0, kv0, nkv;
		engine_rank_heads(in, g, &h0, &kv0, &nkv);
		for (int l = 0; l < in->n_layers && !rc; l++) {
			const layer *L = &m->layers[l];
			layer *R = &m->rank_layers[r][l];
			R->wq = rows_of(&L->wq, h0 * hd, hpr * hd);
			R->wk = rows_of(&L->wk, kv0 * hd, nkv * hd);
			R->wv = rows_of(&L->wv, kv0 * hd, nkv * hd);
			R->wo = cols_of(&L->wo, h0 * hd, hpr * hd);
			R->w_gate = rows_of(&L->w_gate, g * fpr, fpr);
			R->w_up = rows_of(&L->w_up, g * fpr, fpr);
			R->w_down = cols_of(&L->w_down, g * fpr, fpr);
			wmat *ws[7] = {&R->wq, &R->wk, &R->wv, &R->wo, &R->w_gate, &R->w_up, &R->w_down};
			for (int i = 0; i < 7 && !rc; i++)
				rc = prepare_one(m, r, ws[i], err);
		}
		if (!rc)
			rc = prepare_vectors(m, r, err);
	}
	if (!rc && in->tied_embeddings) {
		rc = prepare_one(m, 0, &m->tok_embd, err);
		m->output = m->tok_embd;
	} else if (!rc) {
		rc = prepare_one(m, 0, &m->output, err);
		/* The CPU looks rows up in the file's mapping; a device needs the
		 * table in its own memory. */
		if (!rc && !m->be->iface->host_memory)
			rc = prepare_one(m, 0, &m->tok_embd, err);
	}
	return rc;
}

/* A folder with exactly one .gguf and no config.json is that GGUF. */
static char *single_gguf(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return NULL;
	char *found = NULL;
	int n = 0;
	struct dirent *de;
	while ((de = readdir(d)))
		if (has_suffix(de->d_name, ".gguf")) {
			n++;
			free(found);
			found = owl_path_join(dir, de->d_name);
		}
	closedir(d);
	if (n != 1) {
		free(found);
		return NULL;
	}
	return found;
}

static pthread_once_t omp_levels_once = PTHREAD_ONCE_INIT;
static void set_omp_levels(void) { omp_set_max_active_levels(2); }

int engine_model_open(const char *path, const engine_model_opts *o, engine_model **out,
		      owl_err *err)
{
	*out = NULL;
	engine_model *m = owl_xcalloc(1, sizeof *m);
	int rc;
	char *gg = NULL;
	if (owl_is_dir(path)) {
		char *cfg = owl_path_join(path, "config.json");
		int has_cfg = owl_path_exists(cfg);
		free(cfg);
		m->dir = owl_xstrdup(path);
		if (!has_cfg && !(gg = single_gguf(path))) {
			engine_model_close(m);
			return owl_err_set(err, OWL_EFAIL, "'%s' holds neither config.json with "
					   "safetensors weights nor a single .gguf file", path);
		}
	} else if (has_suffix(path, ".gguf")) {
		gg = owl_xstrdup(path);
	} else {
		engine_model_close(m);
		return owl_err_set(err, OWL_EFAIL, "'%s' is not a checkpoint folder or a .gguf file", path);
	}
	if (gg)
		rc = open_gguf(m, gg, err);
	else {
		rc = parse_config(m, path, err);
		if (!rc)
			rc = open_safetensors(m, path, err);
	}
	free(gg);
	engine_model_info *in = &m->info;
	int tp = o && o->tp > 1 ? o->tp : 1;
	engine_dist *dist = o && engine_dist_size(o->dist) > 1 ? o->dist : NULL;
	if (!rc && dist)
		rc = engine_dist_comm(dist, tp, &m->comm, err);
	if (!rc && in->n_heads % tp)
		rc = owl_err_set(err, OWL_EUSAGE, "tensor parallelism over %d ranks does not divide the "
				 "model's %d query heads (it has %d key/value heads)", tp, in->n_heads,
				 in->n_kv_heads);
	if (!rc && in->ffn_dim % tp)
		rc = owl_err_set(err, OWL_EUSAGE, "tensor parallelism over %d ranks does not divide the "
				 "feed-forward width %d",
				 tp, in->ffn_dim);
	if (rc) {
		engine_model_close(m);
		return rc;
	}
	/* Column shards of quantised matrices must start on a block boundary. */
	for (int l = 0; !rc && tp > 1 && l < in->n_layers; l++) {
		const layer *L = &m->layers[l];
		int qcols = in->n_heads / tp * in->head_dim, fcols = in->ffn_dim / tp;
		if (!kernels_row_bytes(L->wo.type, qcols) || !kernels_row_bytes(L->w_down.type, fcols))
			rc = owl_err_set(err, OWL_EUSAGE, "tensor parallelism over %d ranks would cut %s "
					 "blocks of layer %d in the middle (shards of %d and %d columns)",
					 tp, kernels_dtype_name(L->wo.type), l, qcols, fcols);
	}
	if (rc) {
		engine_model_close(m);
		return rc;
	}
	in->tp = tp;
	in->tp_local = dist ? m->comm.local : tp;
	in->tp_first = dist ? m->comm.first : 0;
	in->processes = dist ? engine_dist_size(dist) : 1;
	if (in->tp_local > 16) {
		engine_model_close(m);
		return owl_err_set(err, OWL_EUSAGE, "%d tensor-parallel ranks in one process: at most 16",
				   in->tp_local);
	}
	in->threads = o && o->threads > 0 ? o->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
	m->kv_type = o && o->kv_type == ENGINE_KV_F16 ? ENGINE_KV_F16 : ENGINE_KV_F32;
	/* Nested parallelism (rank groups, then threads within each) is a
	 * process-wide setting: made once, not on every forward pass. */
	pthread_once(&omp_levels_once, set_omp_levels);
	if ((rc = engine_model_backends(m, o, dist, err))) {
		engine_model_close(m);
		return rc;
	}
	account(m);
	if ((rc = prepare_weights(m, err))) {
		engine_model_close(m);
		return rc;
	}
	*out = m;
	return 0;
}

void engine_model_close(engine_model *m)
{
	if (!m)
		return;
	for (int l = 0; m->layers && l < m->info.n_layers; l++) {
		layer *L = &m->layers[l];
		free(L->attn_norm);
		free(L->ffn_norm);
		free(L->bq);
		free(L->bk);
		free(L->bv);
	}
	free(m->layers);
	free(m->out_norm);
	free(m->inv_freq);
	for (size_t i = 0; i < m->nst; i++)
		st_close(m->st[i]);
	free(m->st);
	gguf_close(m->gguf);
	for (int i = 0; i < m->nprepared; i++)
		m->prepared_by[i]->iface->buffer_free(m->prepared_by[i], m->prepared[i]);
	free(m->prepared);
	free(m->prepared_by);
	for (int r = 0; r < 16; r++)
		free(m->rank_layers[r]);
	free(m->dir);
	engine_cuda_nccl_comm_free(m->comm_owned);
	free(m->shared_comm);
	for (int r = 0; r < 16; r++)
		kernels_backend_free(m->ranks[r]);
	free(m);
}

const engine_model_info *engine_model_get_info(const engine_model *m) { return &m->info; }
const struct gguf_file *engine_model_gguf(const engine_model *m) { return m->gguf; }
const char *engine_model_dir(const engine_model *m) { return m->dir; }
