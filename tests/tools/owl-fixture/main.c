/* owl-fixture: writes a small random Llama-family checkpoint in the Hugging
 * Face layout (config.json, model.safetensors or shards, tokenizer.json,
 * tokenizer_config.json, generation_config.json, README.md, LICENSE) and,
 * optionally, the same weights as GGUF. Same flags and seed: same bytes.
 * See docs/fixtures.md. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fixture.h"

static const char USAGE[] =
	"owl-fixture: write a small random Llama-family checkpoint (Hugging Face layout, optional GGUF)\n"
	"\n"
	"USAGE\n"
	"  owl-fixture --out DIR [options]\n"
	"\n"
	"MODEL\n"
	"  --preset NAME          tiny (default: hidden 64, 2 layers, 4 heads, 2 kv heads, ffn 128,\n"
	"                         vocab 512, ctx 256), smollm2-135m, tinyllama-1.1b, llama-8b (real\n"
	"                         shapes; llama-8b is 16 GB in bf16; applied first, other\n"
	"                         flags override it)\n"
	"  --arch A               llama (default) | mistral | qwen2 (qwen2: q/k/v biases)\n"
	"  --hidden N --layers N --heads N --kv-heads N --intermediate N --head-dim N\n"
	"  --vocab N              tokenizer size: 256 bytes + merges + specials, padded with\n"
	"                         unreachable <|fixture_pad_N|> tokens when the corpus runs out\n"
	"  --ctx N                max_position_embeddings\n"
	"  --tied                 tie_word_embeddings (no lm_head.weight)\n"
	"  --rope-theta F --rms-eps F\n"
	"  --rope-scaling llama3  rope_scaling {rope_type llama3}; --rope-factor F (8),\n"
	"                         --rope-low F (1), --rope-high F (4), --rope-orig-ctx N (ctx/4)\n"
	"  --sliding-window N     sliding_window (mistral)\n"
	"  --qkv-bias             q/k/v biases on any arch\n"
	"  --std-scale F          multiply the weights' standard deviation (default 1)\n"
	"  --seed N               PRNG seed (default 1)\n"
	"\n"
	"FILES\n"
	"  --dtype f32|f16|bf16   safetensors dtype (default f32)\n"
	"  --shards N             model-0000i-of-0000N.safetensors + model.safetensors.index.json\n"
	"  --st-metadata K=V      extra safetensors __metadata__ entry (repeatable)\n"
	"  --tokenizer bpe|spm    byte-level BPE (default) or SentencePiece-style BPE with byte fallback\n"
	"  --chat-template T      chatml | llama3 | llama2 | zephyr | gemma (default chatml, spm: llama2)\n"
	"  --name NAME            model name in the card and GGUF general.name\n"
	"  --license ID           card license (default apache-2.0; 'none' writes no license line)\n"
	"  --license-name N       card license_name (with --license other)\n"
	"  --license-link L       card license_link\n"
	"  --base-model ORG/REPO  card base_model\n"
	"  --license-file PATH    copy PATH to DIR/LICENSE\n"
	"  --copy SRC=DEST        copy file SRC to DIR/DEST (repeatable, e.g. USE_POLICY.md)\n"
	"  --gguf TYPE            also write model.gguf: F32 | F16 | BF16 | Q8_0 | Q4_0 | Q4_1\n"
	"  --gguf-only            write model.gguf only\n"
	"  --gguf-license ID      GGUF general.license\n"
	"  --quiet                print nothing on success\n"
	"\n"
	"EXAMPLES\n"
	"  owl-fixture --out /tmp/m\n"
	"  owl-fixture --out /tmp/m --arch qwen2 --dtype bf16 --shards 3 --chat-template chatml\n"
	"  owl-fixture --out /tmp/m --tokenizer spm --license other --license-name mrl --gguf Q8_0\n"
	"  owl-fixture --out /tmp/m --preset smollm2-135m --dtype f32 --gguf Q4_0\n";

/* ---- chat templates, as the model families ship them --------------------- */

static const char T_CHATML[] =
	"{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
	"'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

static const char T_LLAMA3[] =
	"{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
	"'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
	"'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
	"{{ content }}{% endfor %}{% if add_generation_prompt %}"
	"{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

static const char T_LLAMA2[] =
	"{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
	"messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}"
	"{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
	"{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
	"{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
	"'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
	"{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
	"{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
	"{% endfor %}";

static const char T_ZEPHYR[] =
	"{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
	"eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
	"{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
	"{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";

static const char T_GEMMA[] =
	"{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
	"{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
	"{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
	"{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
	"{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
	"{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}";

const char *fx_chat_template_text(const char *name)
{
	if (strcmp(name, "chatml") == 0)
		return T_CHATML;
	if (strcmp(name, "llama3") == 0)
		return T_LLAMA3;
	if (strcmp(name, "llama2") == 0)
		return T_LLAMA2;
	if (strcmp(name, "zephyr") == 0)
		return T_ZEPHYR;
	if (strcmp(name, "gemma") == 0)
		return T_GEMMA;
	return NULL;
}

/* ---- options ---------------------------------------------------------------- */

#define MAX_COPIES 16

typedef struct copy_spec {
	const char *src, *dest;
} copy_spec;

static void preset_apply(fx_opts *o, const char *name, int *ok)
{
	*ok = 1;
	if (strcmp(name, "tiny") == 0) {
		o->hidden = 64, o->layers = 2, o->heads = 4, o->kv_heads = 2, o->intermediate = 128;
		o->vocab = 512, o->ctx = 256;
	} else if (strcmp(name, "smollm2-135m") == 0) {
		o->hidden = 576, o->layers = 30, o->heads = 9, o->kv_heads = 3, o->intermediate = 1536;
		o->vocab = 49152, o->ctx = 8192, o->tied = 1, o->rope_theta = 100000, o->rms_eps = 1e-5;
		o->chat_template = "chatml";
		o->model_name = "owl-fixture-smollm2-135m";
	} else if (strcmp(name, "tinyllama-1.1b") == 0) {
		o->hidden = 2048, o->layers = 22, o->heads = 32, o->kv_heads = 4, o->intermediate = 5632;
		o->vocab = 32000, o->ctx = 2048, o->rope_theta = 10000, o->rms_eps = 1e-5;
		o->spm = 1;
		o->chat_template = "zephyr";
		o->model_name = "owl-fixture-tinyllama-1.1b";
	} else if (strcmp(name, "llama-8b") == 0) {
		/* Llama 3.1 8B's shapes (16 GB in bf16): for GPU benchmarks */
		o->hidden = 4096, o->layers = 32, o->heads = 32, o->kv_heads = 8, o->intermediate = 14336;
		o->vocab = 128256, o->ctx = 8192, o->rope_theta = 500000, o->rms_eps = 1e-5;
		o->model_name = "owl-fixture-llama-8b";
	} else {
		*ok = 0;
	}
}

static int parse_int(const char *flag, const char *s, int min, int *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || *end || end == s || v < min || v > 1000000000) {
		fprintf(stderr, "owl-fixture: error: %s wants an integer >= %d, got '%s'\n", flag, min, s);
		return -1;
	}
	*out = (int)v;
	return 0;
}

static int parse_double(const char *flag, const char *s, double *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || *end || end == s) {
		fprintf(stderr, "owl-fixture: error: %s wants a number, got '%s'\n", flag, s);
		return -1;
	}
	*out = v;
	return 0;
}

/* ---- the JSON files and the card -------------------------------------------- */

static json_t *eos_json(const fx_tok *tok)
{
	if (tok->n_eos == 1)
		return json_integer(tok->eos_id);
	json_t *a = json_array();
	for (int i = 0; i < tok->n_eos; i++)
		json_array_append_new(a, json_integer(tok->eos_ids[i]));
	return a;
}

static int write_json(const char *dir, const char *name, json_t *root, owl_err *err)
{
	char *path = owl_path_join(dir, name);
	char *text = json_dumps(root, JSON_INDENT(2) | JSON_REAL_PRECISION(10));
	int rc = OWL_OK;
	if (!text)
		rc = owl_err_set(err, OWL_EFAIL, "cannot encode '%s'", path);
	else {
		/* HF files end with a newline */
		char *t2 = owl_xasprintf("%s\n", text);
		rc = owl_write_file_atomic(path, t2, strlen(t2), err);
		free(t2);
	}
	free(text);
	free(path);
	json_decref(root);
	return rc;
}

static const char *torch_dtype(int dtype)
{
	return dtype == FX_F16 ? "float16" : dtype == FX_BF16 ? "bfloat16" : "float32";
}

static int write_config(const fx_opts *o, const fx_tok *tok, owl_err *err)
{
	int mistral = strcmp(o->arch, "mistral") == 0, qwen2 = strcmp(o->arch, "qwen2") == 0;
	json_t *c = json_object();
	json_object_set_new(c, "architectures",
	                    json_pack("[s]", mistral ? "MistralForCausalLM"
	                                     : qwen2 ? "Qwen2ForCausalLM"
	                                             : "LlamaForCausalLM"));
	if (!qwen2)
		json_object_set_new(c, "attention_bias", json_boolean(o->qkv_bias));
	json_object_set_new(c, "attention_dropout", json_real(0.0));
	json_object_set_new(c, "bos_token_id", json_integer(tok->bos_id));
	json_object_set_new(c, "eos_token_id", eos_json(tok));
	json_object_set_new(c, "head_dim", json_integer(o->head_dim));
	json_object_set_new(c, "hidden_act", json_string("silu"));
	json_object_set_new(c, "hidden_size", json_integer(o->hidden));
	json_object_set_new(c, "initializer_range", json_real(0.02));
	json_object_set_new(c, "intermediate_size", json_integer(o->intermediate));
	json_object_set_new(c, "max_position_embeddings", json_integer(o->ctx));
	if (qwen2)
		json_object_set_new(c, "max_window_layers", json_integer(o->layers));
	if (!mistral && !qwen2)
		json_object_set_new(c, "mlp_bias", json_false());
	json_object_set_new(c, "model_type", json_string(mistral ? "mistral" : qwen2 ? "qwen2" : "llama"));
	json_object_set_new(c, "num_attention_heads", json_integer(o->heads));
	json_object_set_new(c, "num_hidden_layers", json_integer(o->layers));
	json_object_set_new(c, "num_key_value_heads", json_integer(o->kv_heads));
	if (!mistral && !qwen2)
		json_object_set_new(c, "pretraining_tp", json_integer(1));
	json_object_set_new(c, "rms_norm_eps", json_real(o->rms_eps));
	if (o->rope_llama3)
		json_object_set_new(c, "rope_scaling",
		                    json_pack("{s:f, s:f, s:f, s:i, s:s}", "factor", o->rope_factor, "high_freq_factor",
		                              o->rope_high, "low_freq_factor", o->rope_low,
		                              "original_max_position_embeddings", o->rope_orig_ctx, "rope_type",
		                              "llama3"));
	else
		json_object_set_new(c, "rope_scaling", json_null());
	json_object_set_new(c, "rope_theta", json_real(o->rope_theta));
	if (mistral || qwen2)
		json_object_set_new(c, "sliding_window",
		                    o->sliding_window ? json_integer(o->sliding_window)
		                    : qwen2           ? json_integer(o->ctx)
		                                      : json_null());
	json_object_set_new(c, "tie_word_embeddings", json_boolean(o->tied));
	json_object_set_new(c, "torch_dtype", json_string(torch_dtype(o->dtype)));
	json_object_set_new(c, "transformers_version", json_string("4.46.0"));
	json_object_set_new(c, "use_cache", json_true());
	if (qwen2)
		json_object_set_new(c, "use_sliding_window", json_boolean(o->sliding_window > 0));
	json_object_set_new(c, "vocab_size", json_integer(tok->n));
	return write_json(o->out_dir, "config.json", c, err);
}

static int write_generation_config(const fx_opts *o, const fx_tok *tok, owl_err *err)
{
	json_t *g = json_object();
	json_object_set_new(g, "_from_model_config", json_true());
	json_object_set_new(g, "bos_token_id", json_integer(tok->bos_id));
	json_object_set_new(g, "eos_token_id", eos_json(tok));
	json_object_set_new(g, "max_length", json_integer(o->ctx));
	json_object_set_new(g, "transformers_version", json_string("4.46.0"));
	return write_json(o->out_dir, "generation_config.json", g, err);
}

static int write_tokenizer_config(const fx_opts *o, const fx_tok *tok, owl_err *err)
{
	json_t *t = json_object();
	json_object_set_new(t, "add_bos_token", json_boolean(tok->add_bos));
	json_object_set_new(t, "add_eos_token", json_false());
	json_t *dec = json_object();
	for (int i = 0; i < tok->n; i++) {
		if (tok->types[i] != 2 && tok->types[i] != 3)
			continue;
		char id[16];
		snprintf(id, sizeof(id), "%d", i);
		json_object_set_new(dec, id,
		                    json_pack("{s:s, s:b, s:b, s:b, s:b, s:b}", "content", tok->tokens[i], "lstrip", 0,
		                              "normalized", 0, "rstrip", 0, "single_word", 0, "special", 1));
	}
	json_object_set_new(t, "added_tokens_decoder", dec);
	json_object_set_new(t, "bos_token", json_string(tok->bos));
	json_object_set_new(t, "chat_template", json_string(fx_chat_template_text(o->chat_template)));
	json_object_set_new(t, "clean_up_tokenization_spaces", json_false());
	json_object_set_new(t, "eos_token", json_string(tok->eos));
	json_object_set_new(t, "model_max_length", json_integer(o->ctx));
	if (tok->pad_id >= 0)
		json_object_set_new(t, "pad_token", json_string(tok->tokens[tok->pad_id]));
	json_object_set_new(t, "tokenizer_class", json_string("PreTrainedTokenizerFast"));
	json_object_set_new(t, "unk_token", tok->spm ? json_string("<unk>") : json_null());
	return write_json(o->out_dir, "tokenizer_config.json", t, err);
}

static int write_card(const fx_opts *o, int64_t params, owl_err *err)
{
	owl_buf b;
	owl_buf_init(&b, 1 << 20);
	owl_buf_printf(&b, "---\n");
	if (strcmp(o->license, "none") != 0)
		owl_buf_printf(&b, "license: %s\n", o->license);
	if (o->license_name)
		owl_buf_printf(&b, "license_name: %s\n", o->license_name);
	if (o->license_link)
		owl_buf_printf(&b, "license_link: %s\n", o->license_link);
	if (o->base_model)
		owl_buf_printf(&b, "base_model: %s\n", o->base_model);
	owl_buf_printf(&b, "library_name: transformers\npipeline_tag: text-generation\ntags:\n- owl-fixture\n---\n\n");
	owl_buf_printf(&b, "# %s\n\n", o->model_name);
	owl_buf_printf(&b,
	               "A tiny random %s checkpoint written by owl-fixture for tests (seed %llu, %lld parameters). "
	               "Its weights are noise: it does not produce language.\n",
	               o->arch, (unsigned long long)o->seed, (long long)params);
	char *path = owl_path_join(o->out_dir, "README.md");
	int rc = owl_write_file_atomic(path, b.data, b.len, err);
	free(path);
	owl_buf_release(&b);
	return rc;
}

static int copy_file(const char *src, const char *dir, const char *dest, owl_err *err)
{
	char *data = NULL;
	size_t len = 0;
	int rc = owl_read_file(src, 64u << 20, &data, &len, err);
	if (rc)
		return rc;
	if (strstr(dest, "..") || dest[0] == '/') {
		free(data);
		return owl_err_set(err, OWL_EUSAGE, "cannot copy to '%s': the name must stay inside the output", dest);
	}
	char *path = owl_path_join(dir, dest);
	rc = owl_write_file_atomic(path, data, len, err);
	free(path);
	free(data);
	return rc;
}

/* ---- main -------------------------------------------------------------------- */

int main(int argc, char **argv)
{
	fx_opts o;
	memset(&o, 0, sizeof(o));
	o.seed = 1;
	o.arch = "llama";
	o.rope_theta = 0;
	o.rms_eps = 0;
	o.rope_factor = 8, o.rope_low = 1, o.rope_high = 4;
	o.dtype = FX_F32;
	o.shards = 1;
	o.chat_template = NULL;
	o.license = "apache-2.0";
	o.model_name = "owl-fixture-tiny";
	o.gguf_type = -1;
	o.std_scale = 1.0;
	copy_spec copies[MAX_COPIES];
	int n_copies = 0, quiet = 0, ok = 1;
	int qkv_bias_flag = 0;
	const char *tokenizer = "bpe";

	preset_apply(&o, "tiny", &ok);
	for (int i = 1; i + 1 < argc; i++)
		if (strcmp(argv[i], "--preset") == 0) {
			preset_apply(&o, argv[i + 1], &ok);
			if (!ok) {
				fprintf(stderr, "owl-fixture: error: unknown preset '%s' (tiny, smollm2-135m, tinyllama-1.1b, llama-8b)\n",
				        argv[i + 1]);
				return OWL_EUSAGE;
			}
			if (o.spm)
				tokenizer = "spm";
		}

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		int r = 0;
#define FLAG(name) (strcmp(a, name) == 0)
#define NEED()                                                                       \
	do {                                                                         \
		if (!v) {                                                            \
			fprintf(stderr, "owl-fixture: error: %s wants a value\n", a); \
			return OWL_EUSAGE;                                            \
		}                                                                    \
		i++;                                                                 \
	} while (0)
		if (FLAG("--help") || FLAG("-h")) {
			fputs(USAGE, stdout);
			return OWL_OK;
		} else if (FLAG("--quiet")) {
			quiet = 1;
		} else if (FLAG("--tied")) {
			o.tied = 1;
		} else if (FLAG("--untied")) {
			o.tied = 0;
		} else if (FLAG("--qkv-bias")) {
			qkv_bias_flag = 1;
		} else if (FLAG("--gguf-only")) {
			o.gguf_only = 1;
		} else if (FLAG("--out")) {
			NEED();
			o.out_dir = v;
		} else if (FLAG("--preset")) {
			NEED();
		} else if (FLAG("--seed")) {
			NEED();
			char *end;
			errno = 0;
			o.seed = strtoull(v, &end, 0);
			if (errno || *end || end == v) {
				fprintf(stderr, "owl-fixture: error: --seed wants an integer, got '%s'\n", v);
				return OWL_EUSAGE;
			}
		} else if (FLAG("--arch")) {
			NEED();
			if (strcmp(v, "llama") && strcmp(v, "mistral") && strcmp(v, "qwen2")) {
				fprintf(stderr, "owl-fixture: error: unknown arch '%s' (llama, mistral, qwen2)\n", v);
				return OWL_EUSAGE;
			}
			o.arch = v;
		} else if (FLAG("--hidden")) {
			NEED();
			r = parse_int(a, v, 1, &o.hidden);
		} else if (FLAG("--layers")) {
			NEED();
			r = parse_int(a, v, 1, &o.layers);
		} else if (FLAG("--heads")) {
			NEED();
			r = parse_int(a, v, 1, &o.heads);
		} else if (FLAG("--kv-heads")) {
			NEED();
			r = parse_int(a, v, 1, &o.kv_heads);
		} else if (FLAG("--intermediate")) {
			NEED();
			r = parse_int(a, v, 1, &o.intermediate);
		} else if (FLAG("--head-dim")) {
			NEED();
			r = parse_int(a, v, 2, &o.head_dim);
		} else if (FLAG("--vocab")) {
			NEED();
			r = parse_int(a, v, 1, &o.vocab);
		} else if (FLAG("--ctx")) {
			NEED();
			r = parse_int(a, v, 1, &o.ctx);
		} else if (FLAG("--rope-theta")) {
			NEED();
			r = parse_double(a, v, &o.rope_theta);
		} else if (FLAG("--rms-eps")) {
			NEED();
			r = parse_double(a, v, &o.rms_eps);
		} else if (FLAG("--rope-scaling")) {
			NEED();
			if (strcmp(v, "llama3") != 0) {
				fprintf(stderr, "owl-fixture: error: --rope-scaling supports 'llama3', got '%s'\n", v);
				return OWL_EUSAGE;
			}
			o.rope_llama3 = 1;
		} else if (FLAG("--rope-factor")) {
			NEED();
			r = parse_double(a, v, &o.rope_factor);
		} else if (FLAG("--rope-low")) {
			NEED();
			r = parse_double(a, v, &o.rope_low);
		} else if (FLAG("--rope-high")) {
			NEED();
			r = parse_double(a, v, &o.rope_high);
		} else if (FLAG("--rope-orig-ctx")) {
			NEED();
			r = parse_int(a, v, 1, &o.rope_orig_ctx);
		} else if (FLAG("--sliding-window")) {
			NEED();
			r = parse_int(a, v, 1, &o.sliding_window);
		} else if (FLAG("--std-scale")) {
			NEED();
			r = parse_double(a, v, &o.std_scale);
		} else if (FLAG("--dtype")) {
			NEED();
			if (strcmp(v, "f32") == 0)
				o.dtype = FX_F32;
			else if (strcmp(v, "f16") == 0)
				o.dtype = FX_F16;
			else if (strcmp(v, "bf16") == 0)
				o.dtype = FX_BF16;
			else {
				fprintf(stderr, "owl-fixture: error: unknown dtype '%s' (f32, f16, bf16)\n", v);
				return OWL_EUSAGE;
			}
		} else if (FLAG("--shards")) {
			NEED();
			r = parse_int(a, v, 1, &o.shards);
		} else if (FLAG("--st-metadata")) {
			NEED();
			const char *eq = strchr(v, '=');
			if (!eq || eq == v || o.n_st_meta == FX_MAX_ST_META) {
				fprintf(stderr, "owl-fixture: error: --st-metadata wants KEY=VALUE (at most %d), got '%s'\n",
				        FX_MAX_ST_META, v);
				return OWL_EUSAGE;
			}
			o.st_meta_key[o.n_st_meta] = owl_xasprintf("%.*s", (int)(eq - v), v);
			o.st_meta_val[o.n_st_meta++] = eq + 1;
		} else if (FLAG("--tokenizer")) {
			NEED();
			if (strcmp(v, "bpe") && strcmp(v, "spm")) {
				fprintf(stderr, "owl-fixture: error: unknown tokenizer '%s' (bpe, spm)\n", v);
				return OWL_EUSAGE;
			}
			tokenizer = v;
		} else if (FLAG("--chat-template")) {
			NEED();
			if (!fx_chat_template_text(v)) {
				fprintf(stderr,
				        "owl-fixture: error: unknown chat template '%s' (chatml, llama3, llama2, zephyr, gemma)\n",
				        v);
				return OWL_EUSAGE;
			}
			o.chat_template = v;
		} else if (FLAG("--name")) {
			NEED();
			o.model_name = v;
		} else if (FLAG("--license")) {
			NEED();
			o.license = v;
		} else if (FLAG("--license-name")) {
			NEED();
			o.license_name = v;
		} else if (FLAG("--license-link")) {
			NEED();
			o.license_link = v;
		} else if (FLAG("--base-model")) {
			NEED();
			o.base_model = v;
		} else if (FLAG("--license-file") || FLAG("--copy")) {
			NEED();
			if (n_copies == MAX_COPIES) {
				fprintf(stderr, "owl-fixture: error: at most %d files to copy\n", MAX_COPIES);
				return OWL_EUSAGE;
			}
			if (FLAG("--license-file")) {
				copies[n_copies].src = v;
				copies[n_copies++].dest = "LICENSE";
			} else {
				const char *eq = strchr(v, '=');
				if (!eq || eq == v || !eq[1]) {
					fprintf(stderr, "owl-fixture: error: --copy wants SRC=DEST, got '%s'\n", v);
					return OWL_EUSAGE;
				}
				copies[n_copies].src = owl_xasprintf("%.*s", (int)(eq - v), v);
				copies[n_copies++].dest = eq + 1;
			}
		} else if (FLAG("--gguf")) {
			NEED();
			o.gguf_type = fx_gguf_type_parse(v);
			if (o.gguf_type < 0) {
				fprintf(stderr, "owl-fixture: error: unknown GGUF type '%s' (F32, F16, BF16, Q8_0, Q4_0, Q4_1)\n",
				        v);
				return OWL_EUSAGE;
			}
		} else if (FLAG("--gguf-license")) {
			NEED();
			o.gguf_license = v;
		} else if (a[0] != '-' && !o.out_dir) {
			o.out_dir = a;
		} else {
			fprintf(stderr, "owl-fixture: error: unknown option '%s' (see --help)\n", a);
			return OWL_EUSAGE;
		}
		if (r)
			return OWL_EUSAGE;
#undef FLAG
#undef NEED
	}
	if (!o.out_dir) {
		fprintf(stderr, "owl-fixture: error: --out DIR is required (see --help)\n");
		return OWL_EUSAGE;
	}
	o.spm = strcmp(tokenizer, "spm") == 0;
	int qwen2 = strcmp(o.arch, "qwen2") == 0;
	o.qkv_bias = qwen2 || qkv_bias_flag;
	if (!o.chat_template)
		o.chat_template = o.spm ? "llama2" : "chatml";
	if (o.rope_theta == 0)
		o.rope_theta = qwen2 ? 1000000.0 : 10000.0;
	if (o.rms_eps == 0)
		o.rms_eps = qwen2 ? 1e-6 : 1e-5;
	if (o.head_dim == 0) {
		if (o.hidden % o.heads) {
			fprintf(stderr, "owl-fixture: error: --hidden %d is not a multiple of --heads %d (give --head-dim)\n",
			        o.hidden, o.heads);
			return OWL_EUSAGE;
		}
		o.head_dim = o.hidden / o.heads;
	}
	if (o.heads % o.kv_heads) {
		fprintf(stderr, "owl-fixture: error: --heads %d is not a multiple of --kv-heads %d\n", o.heads,
		        o.kv_heads);
		return OWL_EUSAGE;
	}
	if (o.head_dim % 2) {
		fprintf(stderr, "owl-fixture: error: the head dimension %d must be even for RoPE\n", o.head_dim);
		return OWL_EUSAGE;
	}
	if (o.rope_orig_ctx == 0)
		o.rope_orig_ctx = o.ctx / 4 > 0 ? o.ctx / 4 : 1;
	if (o.gguf_only && o.gguf_type < 0)
		o.gguf_type = FX_GGML_F32;

	owl_err err = {0};
	fx_tok tok;
	memset(&tok, 0, sizeof(tok));
	fx_tensor *ts = NULL;
	int nt = 0, rc;
	char *path = NULL;

	rc = owl_mkdir_p(o.out_dir, &err);
	if (!rc)
		rc = fx_tok_train(&tok, &o, o.vocab, &err);
	if (rc)
		goto done;
	o.vocab = tok.n;
	fx_tensors_list(&o, &ts, &nt);
	int64_t params = 0;
	for (int i = 0; i < nt; i++)
		params += fx_tensor_numel(&ts[i]);

	if (!o.gguf_only) {
		path = owl_path_join(o.out_dir, "tokenizer.json");
		rc = fx_tok_write_json(&tok, &o, path, &err);
		free(path);
		path = NULL;
		if (!rc)
			rc = write_config(&o, &tok, &err);
		if (!rc)
			rc = write_generation_config(&o, &tok, &err);
		if (!rc)
			rc = write_tokenizer_config(&o, &tok, &err);
		if (!rc)
			rc = write_card(&o, params, &err);
		for (int i = 0; i < n_copies && !rc; i++)
			rc = copy_file(copies[i].src, o.out_dir, copies[i].dest, &err);
		if (!rc)
			rc = fx_safetensors_write(&o, ts, nt, &err);
	}
	if (!rc && o.gguf_type >= 0) {
		path = owl_path_join(o.out_dir, "model.gguf");
		rc = fx_gguf_write(&o, &tok, fx_chat_template_text(o.chat_template), ts, nt, path, &err);
		free(path);
		path = NULL;
	}
done:
	if (rc)
		fprintf(stderr, "owl-fixture: error: %s\n", err.msg);
	else if (!quiet)
		fprintf(stderr, "owl-fixture: wrote %s (%s, %lld parameters, vocab %d with %d merges)\n", o.out_dir,
		        o.arch, (long long)params, tok.n, tok.n_merges);
	fx_tok_free(&tok);
	free(ts);
	return rc;
}
