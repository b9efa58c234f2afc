/* PEFT's adapter files: adapter_config.json with the fields PEFT 0.13
 * writes, and adapter_model.safetensors with its key names, so that
 * transformers + PEFT, vLLM and llama.cpp's converter take the adapter as
 * they take one PEFT saved. */
#include "train/train.h"
#include "common/safetensors.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int train_parse_targets(const char *list, unsigned *targets, owl_err *err)
{
	*targets = 0;
	if (!strcmp(list, "all") || !strcmp(list, "all-linear")) {
		*targets = (1u << 7) - 1;
		return 0;
	}
	char *copy = owl_xstrdup(list), *save = NULL;
	int rc = 0;
	for (char *t = strtok_r(copy, ",", &save); t && !rc; t = strtok_r(NULL, ",", &save)) {
		int found = -1;
		for (int r = 0; r < 7; r++)
			if (!strcmp(t, engine_lora_module_names[r]))
				found = r;
		if (found < 0)
			rc = owl_err_set(err, OWL_EUSAGE, "unknown target module '%s' (q_proj, k_proj, "
					 "v_proj, o_proj, gate_proj, up_proj, down_proj, or all)", t);
		else
			*targets |= 1u << found;
	}
	free(copy);
	if (!rc && !*targets)
		rc = owl_err_set(err, OWL_EUSAGE, "no target module named");
	return rc;
}

char *train_peft_config_json(const engine_lora_opts *o, const char *base_model,
			     const char *revision)
{
	json_t *c = json_object();
	json_t *targets = json_array();
	/* Sorted, as a set prints the same every time. */
	const char *names[7];
	int n = 0;
	for (int r = 0; r < 7; r++)
		if (o->targets & (1u << r))
			names[n++] = engine_lora_module_names[r];
	for (int i = 0; i < n; i++)
		for (int j = i + 1; j < n; j++)
			if (strcmp(names[j], names[i]) < 0) {
				const char *t = names[i];
				names[i] = names[j];
				names[j] = t;
			}
	for (int i = 0; i < n; i++)
		json_array_append_new(targets, json_string(names[i]));
	json_object_set_new(c, "alpha_pattern", json_object());
	json_object_set_new(c, "auto_mapping", json_null());
	json_object_set_new(c, "base_model_name_or_path",
			    base_model ? json_string(base_model) : json_null());
	json_object_set_new(c, "bias", json_string("none"));
	json_object_set_new(c, "fan_in_fan_out", json_false());
	json_object_set_new(c, "inference_mode", json_true());
	json_object_set_new(c, "init_lora_weights", json_true());
	json_object_set_new(c, "layer_replication", json_null());
	json_object_set_new(c, "layers_pattern", json_null());
	json_object_set_new(c, "layers_to_transform", json_null());
	json_object_set_new(c, "loftq_config", json_object());
	/* f32 options printed at f32's precision: 0.05, not 0.0500000007. */
	/* PEFT's lora_alpha is an int field, and an int alpha is saved as 32, not 32.0; only an
	 * alpha with a fraction is written as a real. */
	double alpha = o->alpha;
	if (alpha == floor(alpha) && fabs(alpha) < 1e9)
		json_object_set_new(c, "lora_alpha", json_integer((json_int_t)alpha));
	else
		json_object_set_new(c, "lora_alpha", json_real(alpha));
	json_object_set_new(c, "lora_dropout", json_real(o->dropout));
	json_object_set_new(c, "megatron_config", json_null());
	json_object_set_new(c, "megatron_core", json_string("megatron.core"));
	json_object_set_new(c, "modules_to_save", json_null());
	json_object_set_new(c, "peft_type", json_string("LORA"));
	json_object_set_new(c, "r", json_integer(o->rank));
	json_object_set_new(c, "rank_pattern", json_object());
	json_object_set_new(c, "revision", revision ? json_string(revision) : json_null());
	json_object_set_new(c, "target_modules", targets);
	json_object_set_new(c, "task_type", json_string("CAUSAL_LM"));
	json_object_set_new(c, "use_dora", json_false());
	json_object_set_new(c, "use_rslora", o->rslora ? json_true() : json_false());
	char *text = json_dumps(c, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(7));
	json_decref(c);
	return text;
}

int train_peft_write_files(const char *dir, const engine_lora_opts *o, const char *base_model,
			   const char *revision, size_t n, const char *const *names,
			   const int *rows, const int *cols, const float *const *data, owl_err *err)
{
	st_write_tensor *t = owl_xcalloc(n ? n : 1, sizeof *t);
	for (size_t i = 0; i < n; i++)
		t[i] = (st_write_tensor){.name = names[i], .dtype = ST_F32, .n_dims = 2,
					 .shape = {rows[i], cols[i]}, .data = data[i],
					 .nbytes = (size_t)rows[i] * (size_t)cols[i] * sizeof(float)};
	static const char *const meta[] = {"format", "pt"};
	char *path = owl_path_join(dir, "adapter_model.safetensors");
	int rc = st_write_file(path, t, n, meta, 1, err);
	free(path);
	free(t);
	if (rc)
		return rc;
	char *cfg = train_peft_config_json(o, base_model, revision);
	path = owl_path_join(dir, "adapter_config.json");
	rc = owl_write_file_atomic(path, cfg, strlen(cfg), err);
	free(path);
	free(cfg);
	return rc;
}

int train_peft_save(const char *dir, const engine_lora_weights *w, const char *base_model,
		    const char *revision, owl_err *err)
{
	engine_lora_weights *mw = (engine_lora_weights *)w; /* the tensor view does not write */
	size_t n = engine_lora_weights_count(w);
	char **names = owl_xcalloc(n ? n : 1, sizeof *names);
	int *rows = owl_xcalloc(n ? n : 1, sizeof *rows), *cols = owl_xcalloc(n ? n : 1, sizeof *cols);
	float **data = owl_xcalloc(n ? n : 1, sizeof *data);
	int rc = 0;
	for (size_t i = 0; i < n && !rc; i++) {
		engine_lora_tensor t;
		engine_lora_weights_tensor(mw, i, &t);
		names[i] = owl_xstrdup(t.name);
		rows[i] = t.rows, cols[i] = t.cols;
		data[i] = malloc((size_t)t.rows * t.cols * sizeof(float));
		if (!data[i])
			rc = owl_err_set(err, OWL_EFAIL, "cannot allocate %s", t.name);
		else
			engine_lora_tensor_get(w, i, data[i]);
	}
	if (!rc)
		rc = train_peft_write_files(dir, engine_lora_weights_opts(w), base_model, revision, n,
					    (const char *const *)names, rows, cols,
					    (const float *const *)data, err);
	for (size_t i = 0; i < n; i++) {
		free(names[i]);
		free(data[i]);
	}
	free(names), free(rows), free(cols), free(data);
	return rc;
}
