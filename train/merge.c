/* Merging a PEFT LoRA adapter into its base: W += s * B A for every targeted
 * projection, computed in f32 and stored back in the base's dtype (f32,
 * f16 or bf16), every other tensor copied as it is, the checkpoint's
 * sharding kept. */
#include "train/train.h"
#include "common/safetensors.h"

#include <cblas.h>
#include <immintrin.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static float f16_to_f32(uint16_t h) { return _cvtsh_ss(h); }
static uint16_t f32_to_f16(float f) { return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }

static float bf16_to_f32(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, 4);
	return f;
}

/* Round to nearest even, as PyTorch's .to(torch.bfloat16). */
static uint16_t f32_to_bf16(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((u >> 16) | 0x40); /* a quiet NaN */
	u += 0x7fffu + ((u >> 16) & 1u);
	return (uint16_t)(u >> 16);
}

/* The adapter as the merge needs it. */
typedef struct merge_adapter {
	st_file *f;
	float scale;
	int rank;
} merge_adapter;

static int adapter_open(const char *dir, merge_adapter *a, owl_err *err)
{
	memset(a, 0, sizeof *a);
	json_t *cfg = NULL;
	int rc = owl_read_json_object(dir, "adapter_config.json", 1 << 20, (void **)&cfg, err);
	if (rc)
		return rc;
	json_t *r = json_object_get(cfg, "r"), *al = json_object_get(cfg, "lora_alpha");
	const char *peft_type = json_string_value(json_object_get(cfg, "peft_type"));
	if (!peft_type || strcmp(peft_type, "LORA") != 0 || !json_is_integer(r) ||
	    json_integer_value(r) < 1 || json_integer_value(r) > 4096 || !json_is_number(al))
		rc = owl_err_set(err, OWL_EUSAGE, "%s/adapter_config.json is not a LoRA config with r "
				 "and lora_alpha", dir);
	else if (json_is_true(json_object_get(cfg, "use_dora")))
		rc = owl_err_set(err, OWL_EUSAGE, "%s is a DoRA adapter, which a merge of B A does not "
				 "reproduce", dir);
	if (!rc) {
		a->rank = (int)json_integer_value(r);
		double alpha = json_number_value(al);
		a->scale = (float)(json_is_true(json_object_get(cfg, "use_rslora"))
					   ? alpha / sqrt((double)a->rank)
					   : alpha / (double)a->rank);
		char *p = owl_path_join(dir, "adapter_model.safetensors");
		rc = st_open(p, &a->f, err);
		free(p);
	}
	json_decref(cfg);
	return rc;
}

/* "model.layers.3.self_attn.q_proj.weight" -> the adapter's A and B for it. */
static void find_lora(const merge_adapter *a, const char *name, const st_tensor **A,
		      const st_tensor **B)
{
	*A = *B = NULL;
	size_t n = strlen(name);
	if (n < 8 || strcmp(name + n - 7, ".weight") != 0)
		return;
	char key[512];
	snprintf(key, sizeof key, "base_model.model.%.*s.lora_A.weight", (int)(n - 7), name);
	*A = st_find(a->f, key);
	snprintf(key, sizeof key, "base_model.model.%.*s.lora_B.weight", (int)(n - 7), name);
	*B = st_find(a->f, key);
}

static int to_f32(const st_tensor *t, float *out)
{
	size_t n = t->nbytes / st_dtype_size(t->dtype);
	const unsigned char *p = t->data;
	for (size_t i = 0; i < n; i++) {
		uint16_t h;
		switch (t->dtype) {
		case ST_F32: memcpy(&out[i], p + 4 * i, 4); break;
		case ST_F16: memcpy(&h, p + 2 * i, 2); out[i] = f16_to_f32(h); break;
		case ST_BF16: memcpy(&h, p + 2 * i, 2); out[i] = bf16_to_f32(h); break;
		default: return -1;
		}
	}
	return 0;
}

static void from_f32(const float *x, size_t n, st_dtype dt, void *out)
{
	unsigned char *p = out;
	for (size_t i = 0; i < n; i++) {
		uint16_t h;
		if (dt == ST_F32) {
			memcpy(p + 4 * i, &x[i], 4);
		} else {
			h = dt == ST_F16 ? f32_to_f16(x[i]) : f32_to_bf16(x[i]);
			memcpy(p + 2 * i, &h, 2);
		}
	}
}

/* Merges into one safetensors file: src -> dst. *merged counts the tensors changed. */
static int merge_file(const char *src, const char *dst, const merge_adapter *a, size_t *merged,
		      owl_err *err)
{
	st_file *f = NULL;
	int rc = st_open(src, &f, err);
	if (rc)
		return rc;
	size_t n = st_count(f);
	st_write_tensor *out = owl_xcalloc(n ? n : 1, sizeof *out);
	void **owned = owl_xcalloc(n ? n : 1, sizeof *owned);
	for (size_t i = 0; i < n && !rc; i++) {
		const st_tensor *t = st_tensor_at(f, i);
		out[i] = (st_write_tensor){.name = t->name, .dtype = t->dtype, .n_dims = t->n_dims,
					   .data = t->data, .nbytes = t->nbytes};
		memcpy(out[i].shape, t->shape, sizeof t->shape);
		const st_tensor *A, *B;
		find_lora(a, t->name, &A, &B);
		if (!A && !B)
			continue;
		if (!A || !B || t->n_dims != 2 || A->n_dims != 2 || B->n_dims != 2 ||
		    A->shape[0] != a->rank || B->shape[1] != a->rank || A->shape[1] != t->shape[1] ||
		    B->shape[0] != t->shape[0]) {
			rc = owl_err_set(err, OWL_EUSAGE, "the adapter's A and B for '%s' are missing one "
					 "or do not fit its [%lld, %lld]", t->name, (long long)t->shape[0],
					 (long long)t->shape[1]);
			break;
		}
		if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16) {
			rc = owl_err_set(err, OWL_EUSAGE, "'%s' is %s: a merge takes f32, f16 or bf16 "
					 "weights", t->name, st_dtype_name(t->dtype));
			break;
		}
		size_t rows = (size_t)t->shape[0], cols = (size_t)t->shape[1], r = (size_t)a->rank;
		float *w = malloc(rows * cols * sizeof *w), *fa = malloc(r * cols * sizeof *fa),
		      *fb = malloc(rows * r * sizeof *fb);
		owned[i] = malloc(t->nbytes);
		if (!w || !fa || !fb || !owned[i]) {
			rc = owl_err_set(err, OWL_EFAIL, "cannot allocate the merge of '%s'", t->name);
		} else if (to_f32(t, w) || to_f32(A, fa) || to_f32(B, fb)) {
			rc = owl_err_set(err, OWL_EUSAGE, "the adapter's tensors for '%s' are not f32, "
					 "f16 or bf16", t->name);
		} else {
			/* W += s * B A, in f32 (as PEFT's merge for f16/bf16 weights). */
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)cols, (int)r,
				    a->scale, fb, (int)r, fa, (int)cols, 1.0f, w, (int)cols);
			from_f32(w, rows * cols, t->dtype, owned[i]);
			out[i].data = owned[i];
			(*merged)++;
		}
		free(w), free(fa), free(fb);
	}
	if (!rc) {
		size_t nmeta = st_metadata_count(f);
		const char **meta = owl_xcalloc(2 * nmeta + 1, sizeof *meta);
		for (size_t i = 0; i < nmeta; i++) {
			meta[2 * i] = st_metadata_key_at(f, i);
			meta[2 * i + 1] = st_metadata_get(f, meta[2 * i]);
		}
		rc = st_write_file(dst, out, n, meta, nmeta, err);
		free(meta);
	}
	for (size_t i = 0; i < n; i++)
		free(owned[i]);
	free(owned);
	free(out);
	st_close(f);
	return rc;
}

int train_merge_file(const char *base_file, const char *adapter_dir, const char *out_file,
		     size_t *merged, owl_err *err)
{
	merge_adapter a;
	int rc = adapter_open(adapter_dir, &a, err);
	if (!rc)
		rc = merge_file(base_file, out_file, &a, merged, err);
	st_close(a.f);
	return rc;
}

size_t train_adapter_tensor_count(const char *adapter_dir)
{
	merge_adapter a;
	if (adapter_open(adapter_dir, &a, NULL))
		return 0;
	size_t n = st_count(a.f);
	st_close(a.f);
	return n;
}
