/* The roles of a layer's projections, and PEFT LoRA adapters: loaded from
 * adapter_config.json and adapter_model.safetensors, widened to f32, laid
 * out for the base they are applied to. The forward pass (forward.c) adds
 * scale * B (A x) to each targeted projection, unmerged. */
#define _GNU_SOURCE
#define PCRE2_CODE_UNIT_WIDTH 8
#include "lora.h"

#include <jansson.h>
#include <math.h>
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

const engine_role_info engine_roles[ENGINE_ROLE_COUNT] = {
	[ENGINE_ROLE_Q] = {"self_attn.q_proj", "attn_q", "q_proj", ENGINE_PERM_HEADS, 0},
	[ENGINE_ROLE_K] = {"self_attn.k_proj", "attn_k", "k_proj", ENGINE_PERM_KV_HEADS, 0},
	[ENGINE_ROLE_V] = {"self_attn.v_proj", "attn_v", "v_proj", ENGINE_PERM_NONE, 0},
	[ENGINE_ROLE_O] = {"self_attn.o_proj", "attn_output", "o_proj", ENGINE_PERM_NONE, 1},
	[ENGINE_ROLE_GATE] = {"mlp.gate_proj", "ffn_gate", "gate_proj", ENGINE_PERM_NONE, 0},
	[ENGINE_ROLE_UP] = {"mlp.up_proj", "ffn_up", "up_proj", ENGINE_PERM_NONE, 0},
	[ENGINE_ROLE_DOWN] = {"mlp.down_proj", "ffn_down", "down_proj", ENGINE_PERM_NONE, 1},
};

void engine_role_shape(const engine_model_info *in, engine_role r, int *rows, int *cols)
{
	int qd = in->n_heads * in->head_dim, kvd = in->n_kv_heads * in->head_dim;
	switch (r) {
	case ENGINE_ROLE_Q: *rows = qd; *cols = in->dim; break;
	case ENGINE_ROLE_K:
	case ENGINE_ROLE_V: *rows = kvd; *cols = in->dim; break;
	case ENGINE_ROLE_O: *rows = in->dim; *cols = qd; break;
	case ENGINE_ROLE_GATE:
	case ENGINE_ROLE_UP: *rows = in->ffn_dim; *cols = in->dim; break;
	case ENGINE_ROLE_DOWN: *rows = in->dim; *cols = in->ffn_dim; break;
	default: *rows = *cols = 0; break;
	}
}

wmat *engine_layer_weight(layer *L, engine_role r)
{
	switch (r) {
	case ENGINE_ROLE_Q: return &L->wq;
	case ENGINE_ROLE_K: return &L->wk;
	case ENGINE_ROLE_V: return &L->wv;
	case ENGINE_ROLE_O: return &L->wo;
	case ENGINE_ROLE_GATE: return &L->w_gate;
	case ENGINE_ROLE_UP: return &L->w_up;
	case ENGINE_ROLE_DOWN: return &L->w_down;
	default: return NULL;
	}
}

/* llama.cpp's permute: within each head, GGUF row 2j + s is HF row
 * s * head_dim/2 + j (tests/tools/owl-fixture/gguf_write.c does the same). */
int engine_row_perm_src(engine_row_perm p, const engine_model_info *in, int rows, int i)
{
	if (p == ENGINE_PERM_NONE)
		return i;
	int heads = p == ENGINE_PERM_HEADS ? in->n_heads : in->n_kv_heads;
	int hd = rows / heads, half = hd / 2, h = i / hd, w = i % hd;
	return h * hd + (w % 2) * half + w / 2;
}

/* ---- adapter_config.json ------------------------------------------------------ */

/* Which (layer, role) pairs target_modules selects, as PEFT decides it: a
 * list entry matches a module whose full name equals it or ends in "." +
 * it; a string is "all-linear" or a regular expression the full name must
 * match entirely. Full names are those of the base model inside PEFT,
 * "model.layers.N.self_attn.q_proj". */
static int parse_targets(json_t *tm, int n_layers, unsigned char (*sel)[ENGINE_ROLE_COUNT],
			 owl_err *err)
{
	char full[128];
	if (json_is_array(tm)) {
		size_t i;
		json_t *e;
		json_array_foreach(tm, i, e) {
			const char *name = json_string_value(e);
			if (!name)
				return owl_err_set(err, OWL_EFAIL, "adapter_config.json: target_modules[%zu] "
						   "is not a string", i);
			int hits = 0;
			size_t nl = strlen(name);
			for (int l = 0; l < n_layers; l++)
				for (int r = 0; r < ENGINE_ROLE_COUNT; r++) {
					size_t fl = (size_t)snprintf(full, sizeof full, "model.layers.%d.%s",
								     l, engine_roles[r].hf);
					if (!strcmp(full, name) ||
					    (fl > nl && full[fl - nl - 1] == '.' && !strcmp(full + fl - nl, name))) {
						sel[l][r] = 1;
						hits++;
					}
				}
			if (!hits)
				return owl_err_set(err, OWL_EFAIL, "adapter_config.json: target_modules names "
						   "'%s', which is not a projection owl can adapt "
						   "(q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)",
						   name);
		}
		return 0;
	}
	const char *pat = json_string_value(tm);
	if (!pat)
		return owl_err_set(err, OWL_EFAIL, "adapter_config.json: target_modules is neither a "
				   "list of module names nor a string");
	if (!strcmp(pat, "all-linear")) {
		for (int l = 0; l < n_layers; l++)
			memset(sel[l], 1, ENGINE_ROLE_COUNT);
		return 0;
	}
	int code;
	PCRE2_SIZE off;
	pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED,
				       PCRE2_ANCHORED | PCRE2_ENDANCHORED, &code, &off, NULL);
	if (!re) {
		char msg[256];
		pcre2_get_error_message(code, (PCRE2_UCHAR *)msg, sizeof msg);
		return owl_err_set(err, OWL_EFAIL, "adapter_config.json: target_modules '%s' is not "
				   "a regular expression owl can interpret (offset %zu: %s)", pat,
				   (size_t)off, msg);
	}
	pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
	int hits = 0;
	for (int l = 0; l < n_layers; l++)
		for (int r = 0; r < ENGINE_ROLE_COUNT; r++) {
			snprintf(full, sizeof full, "model.layers.%d.%s", l, engine_roles[r].hf);
			if (pcre2_match(re, (PCRE2_SPTR)full, PCRE2_ZERO_TERMINATED, 0, 0, md, NULL) >= 0) {
				sel[l][r] = 1;
				hits++;
			}
		}
	pcre2_match_data_free(md);
	pcre2_code_free(re);
	if (!hits)
		return owl_err_set(err, OWL_EFAIL, "adapter_config.json: target_modules '%s' matches "
				   "none of the projections owl can adapt (model.layers.N.self_attn."
				   "q_proj ... model.layers.N.mlp.down_proj)", pat);
	return 0;
}

/* Whether a field is absent, null, false, [] or {}: what PEFT writes for an unused option. */
static int empty_json(json_t *v)
{
	return !v || json_is_null(v) || json_is_false(v) ||
	       (json_is_array(v) && json_array_size(v) == 0) ||
	       (json_is_object(v) && json_object_size(v) == 0);
}

static int parse_config(const char *dir, int n_layers, engine_adapter *ad,
			unsigned char (*sel)[ENGINE_ROLE_COUNT], owl_err *err)
{
	json_t *c;
	int rc = owl_read_json_object(dir, "adapter_config.json", 4u << 20, (void **)&c, err);
	if (rc)
		return rc;
	const char *type = json_string_value(json_object_get(c, "peft_type"));
	json_t *r = json_object_get(c, "r"), *alpha = json_object_get(c, "lora_alpha");
	const char *bias = json_string_value(json_object_get(c, "bias"));
	if (type && strcmp(type, "LORA") != 0)
		rc = owl_err_set(err, OWL_EFAIL, "adapter_config.json: peft_type %s is not supported "
				 "(LORA)", type);
	else if (!json_is_integer(r) || json_integer_value(r) <= 0 || json_integer_value(r) > 65536)
		rc = owl_err_set(err, OWL_EFAIL, "adapter_config.json: 'r' must be a positive integer");
	else if (alpha && !json_is_number(alpha))
		rc = owl_err_set(err, OWL_EFAIL, "adapter_config.json: 'lora_alpha' must be a number");
	else if (json_is_true(json_object_get(c, "use_dora")))
		rc = owl_err_set(err, OWL_EFAIL, "adapter_config.json: use_dora is true: DoRA adapters "
				 "(a learned magnitude per output) are not supported; merge it with "
				 "PEFT or train a plain LoRA");
	else if (!empty_json(json_object_get(c, "modules_to_save")))
		rc = owl_err_set(err, OWL_EFAIL, "adapter_config.json: modules_to_save is set: the "
				 "adapter replaces whole modules, which owl does not load; only LoRA "
				 "matrices are supported");
	else if (bias && strcmp(bias, "none") != 0)
		rc = owl_err_set(err, OWL_EFAIL, "adapter_config.json: bias = %s: adapters that train "
				 "biases are not supported (bias must be \"none\")", bias);
	else if (!empty_json(json_object_get(c, "rank_pattern")) ||
		 !empty_json(json_object_get(c, "alpha_pattern")))
		rc = owl_err_set(err, OWL_EFAIL, "adapter_config.json: rank_pattern/alpha_pattern "
				 "give modules their own rank or alpha, which owl does not support");
	else if (!empty_json(json_object_get(c, "layers_to_transform")) ||
		 !empty_json(json_object_get(c, "layer_replication")))
		rc = owl_err_set(err, OWL_EFAIL, "adapter_config.json: layers_to_transform/"
				 "layer_replication are not supported");
	else if (json_is_true(json_object_get(c, "fan_in_fan_out")))
		rc = owl_err_set(err, OWL_EFAIL, "adapter_config.json: fan_in_fan_out is true (a "
				 "Conv1D base such as GPT-2), which owl's models do not have");
	else
		rc = parse_targets(json_object_get(c, "target_modules"), n_layers, sel, err);
	if (!rc) {
		ad->rank = (int)json_integer_value(r);
		/* PEFT's default lora_alpha is 8. */
		double a = alpha ? json_number_value(alpha) : 8.0;
		ad->scale = json_is_true(json_object_get(c, "use_rslora"))
				    ? (float)(a / sqrt((double)ad->rank))
				    : (float)(a / ad->rank);
	}
	json_decref(c);
	return rc;
}

/* ---- adapter_model.safetensors ------------------------------------------------- */

/* "base_model.model.model.layers.N.<hf>.lora_A.weight": layer, role, and
 * which of A (0) or B (1); -1 when the name is none of those. */
static int parse_key(const char *name, int n_layers, int *l, engine_role *role, int *is_b)
{
	const char *pre = "base_model.model.model.layers.";
	if (strncmp(name, pre, strlen(pre)) != 0)
		return -1;
	char *end;
	long n = strtol(name + strlen(pre), &end, 10);
	if (end == name + strlen(pre) || *end != '.' || n < 0 || n >= n_layers)
		return -1;
	end++;
	for (int r = 0; r < ENGINE_ROLE_COUNT; r++) {
		size_t hl = strlen(engine_roles[r].hf);
		if (strncmp(end, engine_roles[r].hf, hl) != 0)
			continue;
		const char *rest = end + hl;
		if (strcmp(rest, ".lora_A.weight") && strcmp(rest, ".lora_B.weight"))
			return -1;
		*l = (int)n;
		*role = (engine_role)r;
		*is_b = rest[6] == 'B';
		return 0;
	}
	return -1;
}

static float half_to_f32(uint16_t h, int bf16)
{
	uint32_t u;
	if (bf16) {
		u = (uint32_t)h << 16;
	} else {
		uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
		if (e == 0 && m == 0) {
			u = sign;
		} else if (e == 0) { /* subnormal: normalise */
			e = 127 - 15 + 1;
			while (!(m & 0x400)) {
				m <<= 1;
				e--;
			}
			u = sign | e << 23 | (m & 0x3ff) << 13;
		} else if (e == 31) {
			u = sign | 0x7f800000u | m << 13;
		} else {
			u = sign | (e + 127 - 15) << 23 | m << 13;
		}
	}
	float f;
	memcpy(&f, &u, sizeof f);
	return f;
}

/* The tensor as f32 [rows][cols], its row i taken from row src_row(i). */
static int widen(const st_tensor *t, int rows, int cols, engine_row_perm perm,
		 const engine_model_info *in, float **out, owl_err *err)
{
	if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
		return owl_err_set(err, OWL_EFAIL, "adapter tensor '%s' has dtype %s (f32, f16, bf16 "
				   "supported)", t->name, st_dtype_name(t->dtype));
	float *w = malloc((size_t)rows * cols * sizeof *w);
	if (!w)
		return owl_err_set(err, OWL_EFAIL, "cannot allocate %d x %d floats for '%s'", rows, cols,
				   t->name);
	for (int i = 0; i < rows; i++) {
		size_t src = (size_t)engine_row_perm_src(perm, in, rows, i) * cols;
		float *dst = w + (size_t)i * cols;
		for (int j = 0; j < cols; j++) {
			if (t->dtype == ST_F32) {
				memcpy(&dst[j], (const char *)t->data + (src + j) * 4, 4);
			} else {
				uint16_t h;
				memcpy(&h, (const char *)t->data + (src + j) * 2, 2);
				dst[j] = half_to_f32(h, t->dtype == ST_BF16);
			}
		}
	}
	*out = w;
	return 0;
}

static int load_tensors(const engine_model *m, const char *dir, engine_adapter *ad,
			unsigned char (*sel)[ENGINE_ROLE_COUNT], owl_err *err)
{
	const engine_model_info *in = &m->info;
	char *path = owl_path_join(dir, "adapter_model.safetensors");
	st_file *f = NULL;
	int rc = st_open(path, &f, err);
	free(path);
	if (rc)
		return rc;
	for (size_t i = 0; i < st_count(f) && !rc; i++) {
		const st_tensor *t = st_tensor_at(f, i);
		int l, is_b;
		engine_role r;
		if (parse_key(t->name, in->n_layers, &l, &r, &is_b)) {
			rc = owl_err_set(err, OWL_EFAIL, "adapter tensor '%s' is not a LoRA matrix of a "
					 "projection of this %d-layer model (owl applies LoRA to q/k/v/o/"
					 "gate/up/down_proj, not to embeddings or the output layer)",
					 t->name, in->n_layers);
			break;
		}
		if (!sel[l][r]) {
			rc = owl_err_set(err, OWL_EFAIL, "adapter tensor '%s' is for a module that "
					 "adapter_config.json's target_modules does not name", t->name);
			break;
		}
		int rows, cols;
		engine_role_shape(in, r, &rows, &cols);
		int want0 = is_b ? rows : ad->rank, want1 = is_b ? ad->rank : cols;
		if (t->n_dims != 2 || t->shape[0] != want0 || t->shape[1] != want1) {
			rc = owl_err_set(err, OWL_EFAIL, "adapter tensor '%s' has shape [%lld, %lld], the "
					 "model's %s (%d x %d) with r = %d needs [%d, %d]", t->name,
					 (long long)t->shape[0], t->n_dims > 1 ? (long long)t->shape[1] : 0LL,
					 engine_roles[r].peft, rows, cols, ad->rank, want0, want1);
			break;
		}
		engine_lora *lo = &ad->lora[l][r];
		if (is_b ? lo->b != NULL : lo->a != NULL) {
			rc = owl_err_set(err, OWL_EFAIL, "adapter tensor '%s' appears twice", t->name);
			break;
		}
		/* A GGUF base keeps q/k output rows permuted: B's rows follow. */
		engine_row_perm perm = is_b && ad->gguf_layout ? engine_roles[r].perm : ENGINE_PERM_NONE;
		rc = widen(t, want0, want1, perm, in, is_b ? &lo->b : &lo->a, err);
	}
	for (int l = 0; l < in->n_layers && !rc; l++)
		for (int r = 0; r < ENGINE_ROLE_COUNT && !rc; r++) {
			engine_lora *lo = &ad->lora[l][r];
			if (sel[l][r] && (!lo->a || !lo->b))
				rc = owl_err_set(err, OWL_EFAIL, "adapter_model.safetensors lacks "
						 "base_model.model.model.layers.%d.%s.%s.weight, which "
						 "target_modules selects", l, engine_roles[r].hf,
						 lo->a ? "lora_B" : "lora_A");
			ad->targeted[r] |= lo->a != NULL;
		}
	st_close(f);
	return rc;
}

/* Copies A and B into the memory of every local rank of m whose backend is
 * a device, once at load, so that the forward pass never moves them. */
int engine_adapter_upload(const engine_model *m, engine_adapter *ad, owl_err *err)
{
	const engine_model_info *in = &m->info;
	ad->dev_model = m;
	size_t floats = 0;
	for (int l = 0; l < in->n_layers; l++)
		for (int r = 0; r < ENGINE_ROLE_COUNT; r++)
			if (ad->lora[l][r].a) {
				int rows, cols;
				engine_role_shape(in, r, &rows, &cols);
				floats += (size_t)ad->rank * ((size_t)rows + cols);
			}
	for (int k = 0; k < in->tp_local; k++) {
		kernels_backend *be = m->ranks[k];
		if (be->iface->host_memory || !floats)
			continue;
		void *base;
		int rc = kernels_alloc(be, floats * sizeof(float), &ad->dev_buf[k], &base, err);
		if (rc)
			return owl_err_wrap(err, "cannot place the adapter on rank %d's device", k);
		ad->dev[k] = owl_xcalloc((size_t)in->n_layers, sizeof *ad->dev[k]);
		size_t off = 0;
		for (int l = 0; l < in->n_layers && !rc; l++)
			for (int r = 0; r < ENGINE_ROLE_COUNT && !rc; r++) {
				const engine_lora *lo = &ad->lora[l][r];
				if (!lo->a)
					continue;
				int rows, cols;
				engine_role_shape(in, r, &rows, &cols);
				size_t na = (size_t)ad->rank * cols, nb = (size_t)rows * ad->rank;
				ad->dev[k][l][r].a = (float *)base + off;
				ad->dev[k][l][r].b = (float *)base + off + na;
				rc = be->iface->copy_to_device(be, ad->dev_buf[k], off * sizeof(float), lo->a,
							       na * sizeof(float), err);
				if (!rc)
					rc = be->iface->copy_to_device(be, ad->dev_buf[k], (off + na) * sizeof(float),
								       lo->b, nb * sizeof(float), err);
				off += na + nb;
			}
		if (rc)
			return rc;
	}
	return 0;
}

int engine_adapter_load(const engine_model *m, const char *dir, engine_adapter **out, owl_err *err)
{
	*out = NULL;
	const engine_model_info *in = &m->info;
	engine_adapter *ad = owl_xcalloc(1, sizeof *ad);
	ad->name = owl_xstrdup(dir);
	ad->n_layers = in->n_layers;
	ad->dim = in->dim;
	ad->ffn_dim = in->ffn_dim;
	ad->q_dim = in->n_heads * in->head_dim;
	ad->kv_dim = in->n_kv_heads * in->head_dim;
	ad->gguf_layout = m->rope_adjacent;
	ad->lora = owl_xcalloc((size_t)in->n_layers, sizeof *ad->lora);
	unsigned char (*sel)[ENGINE_ROLE_COUNT] = owl_xcalloc((size_t)in->n_layers, sizeof *sel);
	int rc = parse_config(dir, in->n_layers, ad, sel, err);
	if (!rc)
		rc = load_tensors(m, dir, ad, sel, err);
	if (!rc)
		rc = engine_adapter_upload(m, ad, err);
	free(sel);
	if (rc) {
		owl_err_wrap(err, "cannot load the adapter '%s'", dir);
		engine_adapter_free(ad);
		return rc;
	}
	*out = ad;
	return 0;
}

void engine_adapter_free(engine_adapter *a)
{
	if (!a)
		return;
	for (int l = 0; a->lora && !a->borrowed && l < a->n_layers; l++)
		for (int r = 0; r < ENGINE_ROLE_COUNT; r++) {
			free(a->lora[l][r].a);
			free(a->lora[l][r].b);
		}
	free(a->lora);
	for (int k = 0; k < 16; k++) {
		if (a->dev_buf[k]) {
			kernels_backend *be = a->dev_model->ranks[k];
			be->iface->buffer_free(be, a->dev_buf[k]);
		}
		free(a->dev[k]);
	}
	free(a->name);
	free(a);
}

int engine_adapter_check(const engine_adapter *a, const engine_model *m, owl_err *err)
{
	const engine_model_info *in = &m->info;
	int qd = in->n_heads * in->head_dim, kvd = in->n_kv_heads * in->head_dim;
	if (a->n_layers != in->n_layers || a->dim != in->dim || a->ffn_dim != in->ffn_dim ||
	    a->q_dim != qd || a->kv_dim != kvd)
		return owl_err_set(err, OWL_EUSAGE, "the adapter '%s' was loaded for a model of %d "
				   "layers, hidden %d, ffn %d, q %d, kv %d; this one has %d, %d, %d, %d, %d",
				   a->name, a->n_layers, a->dim, a->ffn_dim, a->q_dim, a->kv_dim,
				   in->n_layers, in->dim, in->ffn_dim, qd, kvd);
	if (a->dev_model && a->dev_model != m)
		for (int k = 0; k < 16; k++)
			if (a->dev[k])
				return owl_err_set(err, OWL_EUSAGE, "the adapter '%s' was placed on another "
						   "model's devices: load it again for this model", a->name);
	if (a->gguf_layout != m->rope_adjacent)
		return owl_err_set(err, OWL_EUSAGE, "the adapter '%s' was laid out for a %s base, this "
				   "model is %s: load it again for this model", a->name,
				   a->gguf_layout ? "GGUF" : "safetensors", in->source);
	return 0;
}
