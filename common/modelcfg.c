/* Model config and tokenizer checks shared by the engine and the pull (see
 * common/modelcfg.h). Every value is bounds-checked as a 64-bit number before
 * it is narrowed to the int the engine keeps. */
#define _GNU_SOURCE
#include "common/modelcfg.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/gguf.h"

/* A JSON value as the user wrote it, shortened, for messages. */
static void show_value(const json_t *v, char *out, size_t n)
{
	char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
	if (!s) {
		snprintf(out, n, "(unprintable)");
		return;
	}
	if (strlen(s) > 40)
		snprintf(out, n, "%.37s...", s);
	else
		snprintf(out, n, "%s", s);
	free(s);
}

/* One size of the config. dflt is the value when absent; -1 makes the
 * field required; 0 leaves it 0 ("not stated"). */
static int cfg_size(const json_t *c, const char *key, long long max, int dflt, int *out,
		     owl_err *err)
{
	const json_t *v = json_object_get(c, key);
	if (!v || json_is_null(v)) {
		if (dflt < 0)
			return owl_err_set(err, OWL_EINTEGRITY, "'%s' is missing", key);
		*out = dflt;
		return 0;
	}
	char shown[48];
	show_value(v, shown, sizeof shown);
	if (!json_is_integer(v))
		return owl_err_set(err, OWL_EINTEGRITY, "%s = %s is not a whole number", key, shown);
	json_int_t x = json_integer_value(v);
	if (x < 1 || x > max)
		return owl_err_set(err, OWL_EINTEGRITY, "%s = %lld is out of range (1 to %lld)", key,
				   (long long)x, max);
	*out = (int)x;
	return 0;
}

/* A positive, finite real: rope_theta, rms_norm_eps, rope_scaling factors. */
static int cfg_real(const json_t *c, const char *key, const char *label, double lo, double hi,
		     double dflt, double *out, owl_err *err)
{
	const json_t *v = json_object_get(c, key);
	if (!v || json_is_null(v)) {
		if (dflt < 0)
			return owl_err_set(err, OWL_EINTEGRITY, "'%s' is missing", label);
		*out = dflt;
		return 0;
	}
	char shown[48];
	show_value(v, shown, sizeof shown);
	if (!json_is_number(v))
		return owl_err_set(err, OWL_EINTEGRITY, "%s = %s is not a number", label, shown);
	double x = json_number_value(v);
	if (!isfinite(x) || x < lo || x > hi)
		return owl_err_set(err, OWL_EINTEGRITY, "%s = %g is out of range (%g to %g)", label,
				   x, lo, hi);
	*out = x;
	return 0;
}

/* Llama 3 frequency scaling divides by factor and by (high - low). */
static int check_rope_scaling(const json_t *rs, owl_err *err)
{
	if (!json_is_object(rs))
		return 0;
	const char *type = json_string_value(json_object_get(rs, "rope_type"));
	if (!type)
		type = json_string_value(json_object_get(rs, "type"));
	if (!type || strcmp(type, "llama3") != 0)
		return 0; /* the engine names unsupported types itself */
	double factor, low, high;
	int orig = 0;
	int rc = cfg_real(rs, "factor", "rope_scaling.factor", 1e-6, 1e6, -1, &factor, err);
	if (!rc)
		rc = cfg_real(rs, "low_freq_factor", "rope_scaling.low_freq_factor", 1e-6, 1e6, -1,
			       &low, err);
	if (!rc)
		rc = cfg_real(rs, "high_freq_factor", "rope_scaling.high_freq_factor", 1e-6, 1e6, -1,
			       &high, err);
	if (!rc && (rc = cfg_size(rs, "original_max_position_embeddings", OWL_CFG_MAX_CONTEXT, -1,
				   &orig, err)))
		owl_err_wrap(err, "rope_scaling");
	if (!rc && high <= low)
		rc = owl_err_set(err, OWL_EINTEGRITY, "rope_scaling.high_freq_factor = %g is not above "
				 "rope_scaling.low_freq_factor = %g", high, low);
	return rc;
}

int owl_model_config_from_json(const json_t *c, owl_model_config *out, owl_err *err)
{
	memset(out, 0, sizeof *out);
	if (!json_is_object(c))
		return owl_err_set(err, OWL_EINTEGRITY, "not a JSON object");
	const char *arch = json_string_value(json_array_get(json_object_get(c, "architectures"), 0));
	static const char *const known[][2] = {
		{"LlamaForCausalLM", "llama"}, {"MistralForCausalLM", "mistral"},
		{"Qwen2ForCausalLM", "qwen2"},
	};
	for (size_t i = 0; arch && i < sizeof known / sizeof known[0]; i++)
		if (strcmp(arch, known[i][0]) == 0)
			snprintf(out->arch, sizeof out->arch, "%s", known[i][1]);
	/* For an architecture the engine does not run, the fields are checked
	 * where present: they mean the same in every transformers config. */
	int req = out->arch[0] ? -1 : 0;
	int rc = cfg_size(c, "hidden_size", OWL_CFG_MAX_HIDDEN, req, &out->dim, err);
	if (!rc)
		rc = cfg_size(c, "intermediate_size", OWL_CFG_MAX_FFN, req, &out->ffn_dim, err);
	if (!rc)
		rc = cfg_size(c, "num_hidden_layers", OWL_CFG_MAX_LAYERS, req, &out->n_layers, err);
	if (!rc)
		rc = cfg_size(c, "num_attention_heads", OWL_CFG_MAX_HEADS, req, &out->n_heads, err);
	if (!rc)
		rc = cfg_size(c, "num_key_value_heads", OWL_CFG_MAX_HEADS, out->n_heads,
			       &out->n_kv_heads, err);
	if (!rc)
		rc = cfg_size(c, "vocab_size", OWL_CFG_MAX_VOCAB, req, &out->vocab, err);
	if (!rc)
		rc = cfg_size(c, "max_position_embeddings", OWL_CFG_MAX_CONTEXT, out->arch[0] ? 2048 : 0,
			       &out->ctx_train, err);
	if (!rc)
		rc = cfg_size(c, "head_dim", OWL_CFG_MAX_HEAD_DIM,
			       out->n_heads ? out->dim / out->n_heads : 0, &out->head_dim, err);
	if (!rc)
		rc = cfg_real(c, "rms_norm_eps", "rms_norm_eps", OWL_CFG_MIN_NORM_EPS,
			       OWL_CFG_MAX_NORM_EPS, 1e-6, &out->norm_eps, err);
	if (!rc)
		rc = cfg_real(c, "rope_theta", "rope_theta", 1e-6, OWL_CFG_MAX_ROPE_THETA, 10000.0,
			       &out->rope_theta, err);
	if (!rc)
		rc = check_rope_scaling(json_object_get(c, "rope_scaling"), err);
	if (!rc)
		rc = owl_model_config_check(out, 0, err);
	return rc;
}

/* One llama.* size of a GGUF; dflt as for json_size. */
static int gguf_size(const gguf_file *g, const char *key, long long max, int dflt, int *out,
		     owl_err *err)
{
	if (!gguf_has_key(g, key)) {
		if (dflt < 0)
			return owl_err_set(err, OWL_EINTEGRITY, "'%s' is missing", key);
		*out = dflt;
		return 0;
	}
	uint64_t u;
	int32_t i;
	if (gguf_get_u64(g, key, &u) != 0) {
		if (gguf_get_i32(g, key, &i) == 0)
			return owl_err_set(err, OWL_EINTEGRITY, "%s = %d is out of range (1 to %lld)",
					   key, (int)i, max);
		return owl_err_set(err, OWL_EINTEGRITY, "%s is not a whole number", key);
	}
	if (u < 1 || u > (uint64_t)max)
		return owl_err_set(err, OWL_EINTEGRITY, "%s = %llu is out of range (1 to %lld)", key,
				   (unsigned long long)u, max);
	*out = (int)u;
	return 0;
}

static int gguf_real(const gguf_file *g, const char *key, double lo, double hi, double dflt,
		     double *out, owl_err *err)
{
	float f;
	if (!gguf_has_key(g, key)) {
		*out = dflt;
		return 0;
	}
	if (gguf_get_f32(g, key, &f) != 0)
		return owl_err_set(err, OWL_EINTEGRITY, "%s is not a number", key);
	if (!isfinite(f) || f < lo || f > hi)
		return owl_err_set(err, OWL_EINTEGRITY, "%s = %g is out of range (%g to %g)", key,
				   (double)f, lo, hi);
	*out = f;
	return 0;
}

int owl_model_config_from_gguf(const gguf_file *g, owl_model_config *out, owl_err *err)
{
	memset(out, 0, sizeof *out);
	const char *arch = NULL;
	if (gguf_get_str(g, "general.architecture", &arch) || strcmp(arch, "llama") != 0)
		return 0;
	snprintf(out->arch, sizeof out->arch, "llama");
	int rc = gguf_size(g, "llama.embedding_length", OWL_CFG_MAX_HIDDEN, -1, &out->dim, err);
	if (!rc)
		rc = gguf_size(g, "llama.feed_forward_length", OWL_CFG_MAX_FFN, -1, &out->ffn_dim, err);
	if (!rc)
		rc = gguf_size(g, "llama.block_count", OWL_CFG_MAX_LAYERS, -1, &out->n_layers, err);
	if (!rc)
		rc = gguf_size(g, "llama.attention.head_count", OWL_CFG_MAX_HEADS, -1, &out->n_heads,
			       err);
	if (!rc)
		rc = gguf_size(g, "llama.attention.head_count_kv", OWL_CFG_MAX_HEADS, out->n_heads,
			       &out->n_kv_heads, err);
	if (!rc)
		rc = gguf_size(g, "llama.context_length", OWL_CFG_MAX_CONTEXT, 2048, &out->ctx_train,
			       err);
	if (!rc)
		rc = gguf_size(g, "llama.rope.dimension_count", OWL_CFG_MAX_HEAD_DIM,
			       out->dim / out->n_heads, &out->head_dim, err);
	if (!rc)
		rc = gguf_real(g, "llama.attention.layer_norm_rms_epsilon", OWL_CFG_MIN_NORM_EPS,
			       OWL_CFG_MAX_NORM_EPS, 1e-5, &out->norm_eps, err);
	if (!rc)
		rc = gguf_real(g, "llama.rope.freq_base", 1e-6, OWL_CFG_MAX_ROPE_THETA, 10000.0,
			       &out->rope_theta, err);
	if (rc)
		return rc;
	const gguf_tensor *emb = gguf_find_tensor(g, "token_embd.weight");
	if (!emb || emb->n_dims != 2)
		return owl_err_set(err, OWL_EINTEGRITY, "there is no 2-D token_embd.weight");
	if (emb->dims[1] < 1 || emb->dims[1] > OWL_CFG_MAX_VOCAB)
		return owl_err_set(err, OWL_EINTEGRITY, "token_embd.weight has %llu rows (the "
				   "vocabulary), out of range (1 to %d)",
				   (unsigned long long)emb->dims[1], OWL_CFG_MAX_VOCAB);
	out->vocab = (int)emb->dims[1];
	return owl_model_config_check(out, 1, err);
}

int owl_model_config_check(const owl_model_config *c, int gguf, owl_err *err)
{
	const struct { const char *name, *key; int v; long long max; } f[] = {
		{"hidden_size", "llama.embedding_length", c->dim, OWL_CFG_MAX_HIDDEN},
		{"intermediate_size", "llama.feed_forward_length", c->ffn_dim, OWL_CFG_MAX_FFN},
		{"num_hidden_layers", "llama.block_count", c->n_layers, OWL_CFG_MAX_LAYERS},
		{"num_attention_heads", "llama.attention.head_count", c->n_heads, OWL_CFG_MAX_HEADS},
		{"num_key_value_heads", "llama.attention.head_count_kv", c->n_kv_heads,
		 OWL_CFG_MAX_HEADS},
		{"vocab_size", "token_embd.weight rows", c->vocab, OWL_CFG_MAX_VOCAB},
		{"max_position_embeddings", "llama.context_length", c->ctx_train, OWL_CFG_MAX_CONTEXT},
		{"head_dim", "llama.rope.dimension_count", c->head_dim, OWL_CFG_MAX_HEAD_DIM},
	};
	/* 0 means "not stated", which only a config of another architecture may be. */
	for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
		if ((c->arch[0] && f[i].v < 1) || f[i].v < 0 || f[i].v > f[i].max)
			return owl_err_set(err, OWL_EINTEGRITY, "%s = %d is out of range (1 to %lld)%s",
					   gguf ? f[i].key : f[i].name, f[i].v, f[i].max,
					   i == 7 && c->n_heads && c->head_dim < 1
						   ? (gguf ? " (embedding_length / head_count)"
							   : " (hidden_size / num_attention_heads)")
						   : "");
	const char *heads = gguf ? "llama.attention.head_count" : "num_attention_heads";
	const char *kv = gguf ? "llama.attention.head_count_kv" : "num_key_value_heads";
	if (c->n_heads && c->n_kv_heads && c->n_heads % c->n_kv_heads)
		return owl_err_set(err, OWL_EINTEGRITY, "%s = %d is not a multiple of %s = %d", heads,
				   c->n_heads, kv, c->n_kv_heads);
	if (c->head_dim % 2)
		return owl_err_set(err, OWL_EINTEGRITY, "%s = %d is odd (rotary embeddings turn pairs)",
				   gguf ? "llama.rope.dimension_count" : "head_dim", c->head_dim);
	if (c->arch[0] && !(c->rope_theta > 0 && isfinite(c->rope_theta)))
		return owl_err_set(err, OWL_EINTEGRITY, "%s = %g is not a positive finite number",
				   gguf ? "llama.rope.freq_base" : "rope_theta", c->rope_theta);
	if (c->arch[0] && !(c->norm_eps > 0 && isfinite(c->norm_eps)))
		return owl_err_set(err, OWL_EINTEGRITY, "%s = %g is not a positive finite number",
				   gguf ? "llama.attention.layer_norm_rms_epsilon" : "rms_norm_eps",
				   c->norm_eps);
	/* Weights implied by the sizes: each factor is bounded above, so these
	 * 64-bit products cannot wrap (at most about 2^49). */
	uint64_t d = (uint64_t)c->dim, q = (uint64_t)c->n_heads * (uint64_t)c->head_dim;
	uint64_t k = (uint64_t)c->n_kv_heads * (uint64_t)c->head_dim;
	uint64_t per_layer = d * (2 * q + 2 * k) + 3 * d * (uint64_t)c->ffn_dim + 2 * d;
	uint64_t total = (uint64_t)c->n_layers * per_layer + 2 * (uint64_t)c->vocab * d;
	if (total > OWL_CFG_MAX_PARAMS)
		return owl_err_set(err, OWL_EINTEGRITY, "the sizes imply %llu weights (%s %d, %s %d, "
				   "%s %d, %s %d), more than the %llu owl accepts",
				   (unsigned long long)total, gguf ? "embedding_length" : "hidden_size",
				   c->dim, gguf ? "block_count" : "num_hidden_layers", c->n_layers,
				   gguf ? "feed_forward_length" : "intermediate_size", c->ffn_dim,
				   gguf ? "vocabulary" : "vocab_size", c->vocab,
				   (unsigned long long)OWL_CFG_MAX_PARAMS);
	return 0;
}

/* ---- tokenizer.json ------------------------------------------------------------ */

static int token_id(const json_t *v, const char *what, const char *name, owl_err *err)
{
	char shown[48];
	if (json_is_integer(v) && json_integer_value(v) >= 0 &&
	    json_integer_value(v) <= OWL_CFG_MAX_VOCAB)
		return 0;
	show_value(v, shown, sizeof shown);
	return owl_err_set(err, OWL_EINTEGRITY, "%s '%.40s' has id %s, not a whole number from 0 "
			   "to %d", what, name, shown, OWL_CFG_MAX_VOCAB);
}

int owl_tokenizer_json_check(const char *text, size_t len, owl_err *err)
{
	json_error_t je;
	json_t *root = json_loadb(text, len, 0, &je);
	int rc = 0;
	if (!root)
		return owl_err_set(err, OWL_EINTEGRITY, "not valid JSON at line %d, column %d: %s%s",
				   je.line, je.column, je.text,
				   je.position >= (int)len ? " (the file is truncated)" : "");
	if (!json_is_object(root)) {
		rc = owl_err_set(err, OWL_EINTEGRITY, "not a JSON object");
		goto out;
	}
	json_t *model = json_object_get(root, "model");
	if (!json_is_object(model)) {
		rc = owl_err_set(err, OWL_EINTEGRITY, "'model' is %s", model ? "not an object"
									: "missing");
		goto out;
	}
	json_t *type = json_object_get(model, "type");
	if (type && !json_is_string(type)) {
		rc = owl_err_set(err, OWL_EINTEGRITY, "model.type is not a string");
		goto out;
	}
	json_t *vocab = json_object_get(model, "vocab");
	const char *k;
	json_t *v;
	size_t i;
	json_t *a;
	if (json_is_object(vocab)) {
		json_object_foreach(vocab, k, v)
			if ((rc = token_id(v, "model.vocab: token", k, err)))
				goto out;
	} else if (json_is_array(vocab)) {
		/* Unigram: [piece, score] pairs. */
		json_array_foreach(vocab, i, a) {
			if (!json_is_array(a) || json_array_size(a) != 2 ||
			    !json_is_string(json_array_get(a, 0)) ||
			    !json_is_number(json_array_get(a, 1))) {
				rc = owl_err_set(err, OWL_EINTEGRITY, "model.vocab entry %zu is not a "
						 "[piece, score] pair", i);
				goto out;
			}
		}
		if (json_array_size(vocab) > OWL_CFG_MAX_VOCAB + 1u) {
			rc = owl_err_set(err, OWL_EINTEGRITY, "model.vocab has %zu entries (at most %d)",
					 json_array_size(vocab), OWL_CFG_MAX_VOCAB + 1);
			goto out;
		}
	} else {
		rc = owl_err_set(err, OWL_EINTEGRITY, "model.vocab is %s", vocab ? "neither an object "
				 "nor an array" : "missing");
		goto out;
	}
	json_t *merges = json_object_get(model, "merges");
	if (merges && !json_is_array(merges)) {
		rc = owl_err_set(err, OWL_EINTEGRITY, "model.merges is not an array");
		goto out;
	}
	json_array_foreach(merges, i, a) {
		int ok = (json_is_string(a) && strchr(json_string_value(a), ' ')) ||
			 (json_is_array(a) && json_array_size(a) == 2 &&
			  json_is_string(json_array_get(a, 0)) && json_is_string(json_array_get(a, 1)));
		if (!ok) {
			rc = owl_err_set(err, OWL_EINTEGRITY, "model.merges entry %zu is neither \"a b\" "
					 "nor [\"a\", \"b\"]", i);
			goto out;
		}
	}
	json_t *added = json_object_get(root, "added_tokens");
	if (added && !json_is_array(added) && !json_is_null(added)) {
		rc = owl_err_set(err, OWL_EINTEGRITY, "added_tokens is not an array");
		goto out;
	}
	json_array_foreach(added, i, a) {
		const char *content = json_string_value(json_object_get(a, "content"));
		if (!content) {
			rc = owl_err_set(err, OWL_EINTEGRITY, "added_tokens entry %zu has no content "
					 "string", i);
			goto out;
		}
		if ((rc = token_id(json_object_get(a, "id"), "added token", content, err)))
			goto out;
	}
	static const char *const parts[] = {"normalizer", "pre_tokenizer", "post_processor",
					    "decoder"};
	for (size_t p = 0; p < sizeof parts / sizeof parts[0]; p++) {
		json_t *x = json_object_get(root, parts[p]);
		if (x && !json_is_object(x) && !json_is_null(x)) {
			rc = owl_err_set(err, OWL_EINTEGRITY, "%s is neither an object nor null", parts[p]);
			goto out;
		}
	}
out:
	json_decref(root);
	return rc;
}
