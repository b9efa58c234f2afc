/* Tokenizers: BPE in its two common forms.
 *
 *   byte-level (GPT-2, Llama 3, SmolLM2, Qwen2): text is split by the
 *   pre-tokenizer's regular expressions (PCRE2, Unicode properties), each
 *   piece's bytes are mapped to printable characters, then merged by rank;
 *   SentencePiece-style (Llama 2, Mistral, TinyLlama): spaces become "▁", a
 *   "▁" is prepended, characters are merged by rank (or by the merged
 *   token's score, for GGUF "llama" vocabularies), and characters without a
 *   token fall back to <0xNN> byte tokens.
 *
 * Merging uses a heap of candidate pairs over a linked list of symbols, so a
 * long text costs O(n log n), not O(n^2). Special tokens are matched in the
 * raw text before anything else when the caller asks for it. */
#define _GNU_SOURCE
#define PCRE2_CODE_UNIT_WIDTH 8
#include "engine.h"

#include <jansson.h>
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

#include "common/gguf.h"

/* ---- a string -> int hash map ------------------------------------------------ */

/* Keys live in the map's own arena: a vocabulary and its merges are 100k
 * short strings, which one allocation each would double in size. */
typedef struct smap_block {
	struct smap_block *next;
	size_t used, cap;
	char data[];
} smap_block;

typedef struct smap {
	char **keys;
	int *vals;
	size_t cap, n;
	smap_block *arena;
} smap;

static uint64_t hash_bytes(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)s[i];
		h *= 1099511628211ull;
	}
	return h;
}

static char *smap_strdup(smap *m, const char *k)
{
	size_t len = strlen(k) + 1;
	if (!m->arena || m->arena->cap - m->arena->used < len) {
		size_t cap = len > (64u << 10) ? len : (64u << 10);
		smap_block *b = owl_xmalloc(sizeof *b + cap);
		b->next = m->arena;
		b->used = 0;
		b->cap = cap;
		m->arena = b;
	}
	char *out = m->arena->data + m->arena->used;
	memcpy(out, k, len);
	m->arena->used += len;
	return out;
}

/* Places a key (already in the arena) in a table with room for it. */
static void smap_place(smap *m, char *key, int v)
{
	size_t i = hash_bytes(key, strlen(key)) & (m->cap - 1);
	while (m->keys[i])
		i = (i + 1) & (m->cap - 1);
	m->keys[i] = key;
	m->vals[i] = v;
	m->n++;
}

/* Up to 3/4 full: linear probing stays short, and the tables are a third
 * smaller than at half full. */
static void smap_grow(smap *m)
{
	smap old = *m;
	m->cap = old.cap ? old.cap * 2 : 1024;
	m->keys = owl_xcalloc(m->cap, sizeof *m->keys);
	m->vals = owl_xcalloc(m->cap, sizeof *m->vals);
	m->n = 0;
	/* Keys move to the new table, not copied: pointers to them stay valid. */
	for (size_t i = 0; i < old.cap; i++)
		if (old.keys[i])
			smap_place(m, old.keys[i], old.vals[i]);
	free(old.keys);
	free(old.vals);
}

/* Sets k -> v; returns the key as stored (valid while the map lives). */
static const char *smap_put(smap *m, const char *k, int v)
{
	if (4 * (m->n + 1) > 3 * m->cap)
		smap_grow(m);
	size_t i = hash_bytes(k, strlen(k)) & (m->cap - 1);
	while (m->keys[i]) {
		if (strcmp(m->keys[i], k) == 0) {
			m->vals[i] = v;
			return m->keys[i];
		}
		i = (i + 1) & (m->cap - 1);
	}
	m->keys[i] = smap_strdup(m, k);
	m->vals[i] = v;
	m->n++;
	return m->keys[i];
}

/* Lookup of a key given as (pointer, length), not NUL-terminated. */
static int smap_get(const smap *m, const char *k, size_t n, int *v)
{
	if (!m->cap)
		return 0;
	size_t i = hash_bytes(k, n) & (m->cap - 1);
	while (m->keys[i]) {
		if (strncmp(m->keys[i], k, n) == 0 && m->keys[i][n] == 0) {
			*v = m->vals[i];
			return 1;
		}
		i = (i + 1) & (m->cap - 1);
	}
	return 0;
}

static void smap_free(smap *m)
{
	for (smap_block *b = m->arena, *next; b; b = next) {
		next = b->next;
		free(b);
	}
	free(m->keys);
	free(m->vals);
}

/* ---- the tokenizer ---------------------------------------------------------- */

struct engine_tokenizer {
	int byte_level;        /* else SentencePiece-style */
	int n_tokens;
	const char **tokens;   /* id -> token text: the vocab map's own keys, or "" */
	smap vocab;            /* token text -> id */
	smap merges;           /* "left\x01right" -> rank */
	float *scores;         /* GGUF llama: merge by the merged token's score */
	int *special;          /* id -> 1 for special/added tokens matched in text */
	int *by_len;           /* special ids, longest text first */
	int n_special;
	pcre2_code *re[4];     /* pre-tokenizer expressions, applied in order */
	int n_re;
	int byte_fallback;
	int add_prefix;        /* SentencePiece: prepend "▁" */
	int bos, eos, unk;
	int add_bos;
	int eog[8];            /* end-of-generation ids: eos, <|im_end|>, <|eot_id|> ... */
	int n_eog;
	char *chat_template;
	uint16_t byte_to_cp[256]; /* byte-level: byte -> printable code point */
	int cp_to_byte[0x180];
};

/* GPT-2's mapping of bytes to printable code points. */
static void init_byte_map(engine_tokenizer *t)
{
	int n = 0;
	for (int i = 0; i < 0x180; i++)
		t->cp_to_byte[i] = -1;
	for (int b = 0; b < 256; b++) {
		int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
		t->byte_to_cp[b] = (uint16_t)(printable ? b : 256 + n++);
		t->cp_to_byte[t->byte_to_cp[b]] = b;
	}
}

static int utf8_len(unsigned char c)
{
	return c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
}

static void put_utf8(owl_buf *b, unsigned cp)
{
	char s[4];
	int n;
	if (cp < 0x80) { s[0] = (char)cp; n = 1; }
	else if (cp < 0x800) { s[0] = (char)(0xC0 | cp >> 6); s[1] = (char)(0x80 | (cp & 63)); n = 2; }
	else { s[0] = (char)(0xE0 | cp >> 12); s[1] = (char)(0x80 | ((cp >> 6) & 63)); s[2] = (char)(0x80 | (cp & 63)); n = 3; }
	owl_buf_append(b, s, (size_t)n);
}

static const char *const RE_GPT2 =
	"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char *const RE_LLAMA3 =
	"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
	"\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char *const RE_QWEN2 =
	"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
	"\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static int add_regex(engine_tokenizer *t, const char *pattern, owl_err *err)
{
	if (t->n_re == 4)
		return owl_err_set(err, OWL_EFAIL, "tokenizer: more than 4 pre-tokenizer expressions");
	int code;
	PCRE2_SIZE off;
	pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
				       PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &code, &off, NULL);
	if (!re) {
		char msg[256];
		pcre2_get_error_message(code, (PCRE2_UCHAR *)msg, sizeof msg);
		return owl_err_set(err, OWL_EFAIL, "tokenizer: the pre-tokenizer expression does not "
				   "compile at offset %zu: %s", (size_t)off, msg);
	}
	pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
	t->re[t->n_re++] = re;
	return 0;
}

static void finish_specials(engine_tokenizer *t)
{
	t->n_special = 0;
	t->by_len = owl_xmalloc((size_t)t->n_tokens * sizeof *t->by_len);
	for (int i = 0; i < t->n_tokens; i++)
		if (t->special[i] && t->tokens[i][0])
			t->by_len[t->n_special++] = i;
	/* Longest first, so "<|im_end|>" wins over a shorter prefix. */
	for (int i = 1; i < t->n_special; i++)
		for (int j = i; j > 0 && strlen(t->tokens[t->by_len[j]]) > strlen(t->tokens[t->by_len[j - 1]]); j--) {
			int x = t->by_len[j];
			t->by_len[j] = t->by_len[j - 1];
			t->by_len[j - 1] = x;
		}
	static const char *const eog_names[] = {"<|im_end|>", "<|eot_id|>", "<|end_of_text|>",
						"<end_of_turn>", "<|endoftext|>", "</s>", "<|end|>"};
	t->n_eog = 0;
	if (t->eos >= 0)
		t->eog[t->n_eog++] = t->eos;
	for (size_t k = 0; k < sizeof eog_names / sizeof eog_names[0] && t->n_eog < 8; k++) {
		int id;
		if (smap_get(&t->vocab, eog_names[k], strlen(eog_names[k]), &id) && id != t->eos)
			t->eog[t->n_eog++] = id;
	}
}

static void alloc_tokens(engine_tokenizer *t, int n)
{
	t->n_tokens = n;
	t->tokens = owl_xcalloc((size_t)n, sizeof *t->tokens);
	t->special = owl_xcalloc((size_t)n, sizeof *t->special);
}

/* ---- loading from tokenizer.json ------------------------------------------------ */

static int find_id(engine_tokenizer *t, const char *text)
{
	int id;
	return text && smap_get(&t->vocab, text, strlen(text), &id) ? id : -1;
}

/* A token named in tokenizer_config.json: a string or {"content": ...}. */
static int config_token(engine_tokenizer *t, json_t *cfg, const char *key)
{
	json_t *v = json_object_get(cfg, key);
	if (json_is_object(v))
		v = json_object_get(v, "content");
	return find_id(t, json_string_value(v));
}

static int walk_pretokenizers(engine_tokenizer *t, json_t *pt, owl_err *err)
{
	const char *type = json_string_value(json_object_get(pt, "type"));
	if (!type)
		return 0;
	if (strcmp(type, "Sequence") == 0) {
		size_t i;
		json_t *p;
		json_array_foreach(json_object_get(pt, "pretokenizers"), i, p) {
			int rc = walk_pretokenizers(t, p, err);
			if (rc)
				return rc;
		}
		return 0;
	}
	if (strcmp(type, "Split") == 0) {
		const char *re = json_string_value(json_object_get(json_object_get(pt, "pattern"), "Regex"));
		if (!re)
			return owl_err_set(err, OWL_EFAIL, "tokenizer.json: a Split pre-tokenizer without "
					   "a Regex pattern is not supported");
		return add_regex(t, re, err);
	}
	if (strcmp(type, "ByteLevel") == 0) {
		t->byte_level = 1;
		json_t *ur = json_object_get(pt, "use_regex");
		if (!ur || json_is_true(ur))
			return add_regex(t, RE_GPT2, err);
		return 0;
	}
	if (strcmp(type, "Digits") == 0)
		return add_regex(t, json_is_true(json_object_get(pt, "individual_digits")) ? "\\p{N}" : "\\p{N}+", err);
	if (strcmp(type, "Metaspace") == 0) {
		t->add_prefix = 1;
		return 0;
	}
	return owl_err_set(err, OWL_EFAIL, "tokenizer.json: pre-tokenizer type %s is not supported", type);
}

static int load_json(engine_tokenizer *t, const char *dir, owl_err *err)
{
	char *path = owl_path_join(dir, "tokenizer.json"), *text = NULL;
	int rc = owl_read_file(path, 64u << 20, &text, NULL, err);
	free(path);
	if (rc)
		return rc;
	rc = engine_tokenizer_parse_json(t, text, err);
	free(text);
	if (rc)
		return rc;
	/* tokenizer_config.json: chat template, bos/eos, add_bos. */
	path = owl_path_join(dir, "tokenizer_config.json");
	text = NULL;
	if (owl_read_file(path, 16u << 20, &text, NULL, NULL) == 0) {
		json_t *cfg = json_loads(text, 0, NULL);
		if (json_is_object(cfg)) {
			int id = config_token(t, cfg, "bos_token");
			if (id >= 0)
				t->bos = id;
			id = config_token(t, cfg, "eos_token");
			if (id >= 0)
				t->eos = id;
			json_t *ab = json_object_get(cfg, "add_bos_token");
			if (json_is_boolean(ab))
				t->add_bos = json_is_true(ab);
			const char *tmpl = json_string_value(json_object_get(cfg, "chat_template"));
			if (tmpl)
				t->chat_template = owl_xstrdup(tmpl);
		}
		json_decref(cfg);
	}
	free(text);
	free(path);
	finish_specials(t);
	return 0;
}

int engine_tokenizer_parse_json(engine_tokenizer *t, const char *text, owl_err *err)
{
	json_error_t je;
	json_t *root = json_loads(text, 0, &je);
	if (!json_is_object(root)) {
		json_decref(root);
		return owl_err_set(err, OWL_EFAIL, "tokenizer.json is not a JSON object (line %d: %s)",
				   je.line, je.text);
	}
	int rc = 0;
	json_t *model = json_object_get(root, "model");
	const char *type = json_string_value(json_object_get(model, "type"));
	json_t *vocab = json_object_get(model, "vocab");
	if (!type || strcmp(type, "BPE") != 0) {
		rc = owl_err_set(err, OWL_EFAIL, "tokenizer.json: model type %s is not supported (BPE)",
				 type ? type : "(missing)");
		goto out;
	}
	if (!json_is_object(vocab)) {
		rc = owl_err_set(err, OWL_EFAIL, "tokenizer.json: the model has no vocab object");
		goto out;
	}
	int max_id = -1;
	const char *k;
	json_t *v;
	json_object_foreach(vocab, k, v) {
		json_int_t id = json_integer_value(v);
		if (!json_is_integer(v) || id < 0 || id > (1 << 22)) {
			rc = owl_err_set(err, OWL_EFAIL, "tokenizer.json: token '%.40s' has an invalid id", k);
			goto out;
		}
		if (id > max_id)
			max_id = (int)id;
	}
	size_t i;
	json_t *a;
	json_array_foreach(json_object_get(root, "added_tokens"), i, a) {
		json_int_t id = json_integer_value(json_object_get(a, "id"));
		if (id < 0 || id > (1 << 22) || !json_string_value(json_object_get(a, "content"))) {
			rc = owl_err_set(err, OWL_EFAIL, "tokenizer.json: added token %zu is invalid", i);
			goto out;
		}
		if (id > max_id)
			max_id = (int)id;
	}
	alloc_tokens(t, max_id + 1);
	json_object_foreach(vocab, k, v) {
		int id = (int)json_integer_value(v);
		t->tokens[id] = smap_put(&t->vocab, k, id);
	}
	json_array_foreach(json_object_get(root, "added_tokens"), i, a) {
		int id = (int)json_integer_value(json_object_get(a, "id"));
		const char *c = json_string_value(json_object_get(a, "content"));
		t->tokens[id] = smap_put(&t->vocab, c, id);
		t->special[id] = 1;
	}
	for (int id = 0; id < t->n_tokens; id++)
		if (!t->tokens[id])
			t->tokens[id] = "";
	json_t *merges = json_object_get(model, "merges");
	json_array_foreach(merges, i, a) {
		char key[512];
		if (json_is_string(a)) {
			const char *m = json_string_value(a), *sp = strchr(m, ' ');
			if (!sp) {
				rc = owl_err_set(err, OWL_EFAIL, "tokenizer.json: merge %zu has no space", i);
				goto out;
			}
			snprintf(key, sizeof key, "%.*s\x01%s", (int)(sp - m), m, sp + 1);
		} else if (json_is_array(a) && json_array_size(a) == 2) {
			snprintf(key, sizeof key, "%s\x01%s", json_string_value(json_array_get(a, 0)),
				 json_string_value(json_array_get(a, 1)));
		} else {
			rc = owl_err_set(err, OWL_EFAIL, "tokenizer.json: merge %zu is malformed", i);
			goto out;
		}
		smap_put(&t->merges, key, (int)i);
	}
	t->byte_fallback = json_is_true(json_object_get(model, "byte_fallback"));
	json_t *pt = json_object_get(root, "pre_tokenizer");
	if (json_is_object(pt) && (rc = walk_pretokenizers(t, pt, err)))
		goto out;
	/* SentencePiece style: a normalizer that prepends and replaces with "▁". */
	json_t *norm = json_object_get(root, "normalizer");
	char *ns = norm ? json_dumps(norm, JSON_COMPACT) : NULL;
	if (ns && strstr(ns, "\"Prepend\""))
		t->add_prefix = 1;
	free(ns);
	t->unk = find_id(t, json_string_value(json_object_get(model, "unk_token")));
out:
	json_decref(root);
	return rc;
}

/* ---- loading from GGUF ------------------------------------------------------------- */

static int load_gguf_vocab(engine_tokenizer *t, const gguf_file *g, owl_err *err)
{
	const char *model = NULL;
	if (gguf_get_str(g, "tokenizer.ggml.model", &model))
		return owl_err_set(err, OWL_EFAIL, "the GGUF has no tokenizer.ggml.model");
	const char *const *toks;
	size_t n;
	if (gguf_get_str_array(g, "tokenizer.ggml.tokens", &toks, &n) || n == 0)
		return owl_err_set(err, OWL_EFAIL, "the GGUF has no tokenizer.ggml.tokens");
	alloc_tokens(t, (int)n);
	for (size_t i = 0; i < n; i++) {
		t->tokens[i] = smap_put(&t->vocab, toks[i], (int)i);
	}
	const int32_t *types = NULL;
	size_t nt = 0;
	if (gguf_get_i32_array(g, "tokenizer.ggml.token_type", &types, &nt) == 0 && nt == n)
		for (size_t i = 0; i < n; i++)
			t->special[i] = types[i] == 3 || types[i] == 4; /* control, user-defined */
	int rc = 0;
	if (strcmp(model, "gpt2") == 0) {
		t->byte_level = 1;
		const char *const *merges;
		size_t nm = 0;
		if (gguf_get_str_array(g, "tokenizer.ggml.merges", &merges, &nm) == 0)
			for (size_t i = 0; i < nm; i++) {
				const char *sp = strchr(merges[i], ' ');
				if (!sp)
					continue;
				char key[512];
				snprintf(key, sizeof key, "%.*s\x01%s", (int)(sp - merges[i]), merges[i], sp + 1);
				smap_put(&t->merges, key, (int)i);
			}
		const char *pre = "gpt2";
		gguf_get_str(g, "tokenizer.ggml.pre", &pre);
		if (strcmp(pre, "llama-bpe") == 0 || strcmp(pre, "llama3") == 0 || strcmp(pre, "dbrx") == 0)
			rc = add_regex(t, RE_LLAMA3, err);
		else if (strcmp(pre, "qwen2") == 0)
			rc = add_regex(t, RE_QWEN2, err);
		else if (strcmp(pre, "smollm") == 0) {
			rc = add_regex(t, "\\p{N}", err);
			if (!rc)
				rc = add_regex(t, RE_GPT2, err);
		} else
			rc = add_regex(t, RE_GPT2, err);
	} else if (strcmp(model, "llama") == 0) {
		const float *scores;
		size_t ns;
		if (gguf_get_f32_array(g, "tokenizer.ggml.scores", &scores, &ns) || ns != n)
			return owl_err_set(err, OWL_EFAIL, "the GGUF llama tokenizer has no scores");
		t->scores = owl_xmalloc(n * sizeof *t->scores);
		memcpy(t->scores, scores, n * sizeof *scores);
		t->byte_fallback = 1;
		t->add_prefix = 1;
	} else {
		return owl_err_set(err, OWL_EFAIL, "GGUF tokenizer.ggml.model = %s is not supported "
				   "(gpt2, llama)", model);
	}
	uint32_t id;
	t->bos = gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &id) == 0 ? (int)id : -1;
	t->eos = gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &id) == 0 ? (int)id : -1;
	t->unk = gguf_get_u32(g, "tokenizer.ggml.unknown_token_id", &id) == 0 ? (int)id : -1;
	bool ab;
	if (gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &ab) == 0)
		t->add_bos = ab;
	else
		t->add_bos = !t->byte_level;
	const char *tmpl;
	if (gguf_get_str(g, "tokenizer.chat_template", &tmpl) == 0)
		t->chat_template = owl_xstrdup(tmpl);
	return rc;
}

static engine_tokenizer *tokenizer_new(void)
{
	engine_tokenizer *t = owl_xcalloc(1, sizeof *t);
	t->bos = t->eos = t->unk = -1;
	init_byte_map(t);
	return t;
}

int engine_tokenizer_load_dir(const char *dir, engine_tokenizer **out, owl_err *err)
{
	*out = NULL;
	engine_tokenizer *t = tokenizer_new();
	int rc = load_json(t, dir, err);
	if (rc) {
		engine_tokenizer_free(t);
		return rc;
	}
	*out = t;
	return 0;
}

int engine_tokenizer_load_gguf(const struct gguf_file *g, engine_tokenizer **out, owl_err *err)
{
	*out = NULL;
	engine_tokenizer *t = tokenizer_new();
	int rc = load_gguf_vocab(t, g, err);
	if (rc) {
		engine_tokenizer_free(t);
		return rc;
	}
	finish_specials(t);
	*out = t;
	return 0;
}

int engine_tokenizer_fuzz_load(const char *json_text, engine_tokenizer **out, owl_err *err)
{
	*out = NULL;
	engine_tokenizer *t = tokenizer_new();
	int rc = engine_tokenizer_parse_json(t, json_text, err);
	if (rc) {
		engine_tokenizer_free(t);
		return rc;
	}
	finish_specials(t);
	*out = t;
	return 0;
}

int engine_tokenizer_for_model(const engine_model *m, engine_tokenizer **out, owl_err *err)
{
	if (engine_model_gguf(m))
		return engine_tokenizer_load_gguf(engine_model_gguf(m), out, err);
	return engine_tokenizer_load_dir(engine_model_dir(m), out, err);
}

void engine_tokenizer_free(engine_tokenizer *t)
{
	if (!t)
		return;
	free(t->tokens); /* the texts belong to the vocab map */
	free(t->special);
	free(t->by_len);
	free(t->scores);
	smap_free(&t->vocab);
	smap_free(&t->merges);
	for (int i = 0; i < t->n_re; i++)
		pcre2_code_free(t->re[i]);
	free(t->chat_template);
	free(t);
}

/* ---- BPE ------------------------------------------------------------------------------- */

typedef struct sym {
	int start, len; /* into the word's buffer */
	int prev, next;
	int gone;
} sym;

typedef struct cand {
	float rank;
	int left, right, lsize, rsize; /* sizes detect stale candidates */
} cand;

static void heap_push(cand **h, int *n, int *cap, cand c)
{
	if (*n == *cap) {
		*cap = *cap ? 2 * *cap : 64;
		*h = owl_xrealloc(*h, (size_t)*cap * sizeof **h);
	}
	int i = (*n)++;
	while (i > 0) {
		int p = (i - 1) / 2;
		/* Lower rank first; at equal rank, the leftmost pair. */
		if ((*h)[p].rank < c.rank || ((*h)[p].rank == c.rank && (*h)[p].left < c.left))
			break;
		(*h)[i] = (*h)[p];
		i = p;
	}
	(*h)[i] = c;
}

static cand heap_pop(cand *h, int *n)
{
	cand top = h[0], last = h[--*n];
	int i = 0;
	for (;;) {
		int c = 2 * i + 1;
		if (c >= *n)
			break;
		if (c + 1 < *n && (h[c + 1].rank < h[c].rank ||
				   (h[c + 1].rank == h[c].rank && h[c + 1].left < h[c].left)))
			c++;
		if (last.rank < h[c].rank || (last.rank == h[c].rank && last.left < h[c].left))
			break;
		h[i] = h[c];
		i = c;
	}
	h[i] = last;
	return top;
}

/* The rank of merging symbols a and b, or -1. */
static int pair_rank(const engine_tokenizer *t, const char *w, const sym *a, const sym *b, float *rank)
{
	char key[1024];
	if (a->len + b->len + 2 > (int)sizeof key)
		return 0;
	if (t->scores) {
		int id;
		memcpy(key, w + a->start, (size_t)a->len);
		memcpy(key + a->len, w + b->start, (size_t)b->len);
		if (!smap_get(&t->vocab, key, (size_t)(a->len + b->len), &id))
			return 0;
		*rank = -t->scores[id];
		return 1;
	}
	memcpy(key, w + a->start, (size_t)a->len);
	key[a->len] = '\x01';
	memcpy(key + a->len + 1, w + b->start, (size_t)b->len);
	int r;
	if (!smap_get(&t->merges, key, (size_t)(a->len + b->len + 1), &r))
		return 0;
	*rank = (float)r;
	return 1;
}

typedef struct idbuf {
	int32_t *ids;
	size_t n, cap;
} idbuf;

static void ids_push(idbuf *b, int32_t id)
{
	if (b->n == b->cap) {
		b->cap = b->cap ? 2 * b->cap : 256;
		b->ids = owl_xrealloc(b->ids, b->cap * sizeof *b->ids);
	}
	b->ids[b->n++] = id;
}

/* Merges one word (already mapped: byte-level characters or "▁" text). */
static void bpe_word(const engine_tokenizer *t, const char *w, int len, idbuf *out)
{
	int ns = 0;
	sym *s = owl_xmalloc((size_t)(len + 1) * sizeof *s);
	for (int i = 0; i < len;) {
		int l = utf8_len((unsigned char)w[i]);
		if (i + l > len)
			l = len - i;
		s[ns] = (sym){.start = i, .len = l, .prev = ns - 1, .next = ns + 1};
		ns++;
		i += l;
	}
	if (ns)
		s[ns - 1].next = -1;
	cand *h = NULL;
	int hn = 0, hcap = 0;
	for (int i = 0; i + 1 < ns; i++) {
		float r;
		if (pair_rank(t, w, &s[i], &s[i + 1], &r))
			heap_push(&h, &hn, &hcap, (cand){r, i, i + 1, s[i].len, s[i + 1].len});
	}
	while (hn) {
		cand c = heap_pop(h, &hn);
		sym *a = &s[c.left], *b = &s[c.right];
		if (a->gone || b->gone || a->next != c.right || a->len != c.lsize || b->len != c.rsize)
			continue; /* stale: one side changed since this pair was queued */
		a->len += b->len;
		b->gone = 1;
		a->next = b->next;
		if (b->next >= 0)
			s[b->next].prev = c.left;
		float r;
		if (a->prev >= 0 && pair_rank(t, w, &s[a->prev], a, &r))
			heap_push(&h, &hn, &hcap, (cand){r, a->prev, c.left, s[a->prev].len, a->len});
		if (a->next >= 0 && pair_rank(t, w, a, &s[a->next], &r))
			heap_push(&h, &hn, &hcap, (cand){r, c.left, a->next, a->len, s[a->next].len});
	}
	for (int i = 0; i < ns; i = s[i].next) {
		int id;
		if (smap_get(&t->vocab, w + s[i].start, (size_t)s[i].len, &id)) {
			ids_push(out, id);
		} else if (t->byte_fallback) {
			for (int k = 0; k < s[i].len; k++) {
				char hex[8];
				snprintf(hex, sizeof hex, "<0x%02X>", (unsigned char)w[s[i].start + k]);
				ids_push(out, smap_get(&t->vocab, hex, strlen(hex), &id) ? id : t->unk);
			}
		} else if (t->unk >= 0) {
			ids_push(out, t->unk);
		}
		if (s[i].next < 0)
			break;
	}
	free(h);
	free(s);
}

/* Byte-level: each piece's bytes become printable characters, then BPE. */
static void encode_piece(const engine_tokenizer *t, const char *p, size_t n, idbuf *out)
{
	owl_buf b;
	owl_buf_init(&b, 64u << 20);
	for (size_t i = 0; i < n; i++)
		put_utf8(&b, t->byte_to_cp[(unsigned char)p[i]]);
	if (b.len)
		bpe_word(t, b.data, (int)b.len, out);
	owl_buf_release(&b);
}

/* Splits by expression k, recursing into the next expression for each part
 * (matches and the text between them alike, as "Isolated" splitting does). */
static void split_and_encode(const engine_tokenizer *t, int k, const char *p, size_t n, idbuf *out)
{
	if (k >= t->n_re) {
		encode_piece(t, p, n, out);
		return;
	}
	pcre2_match_data *md = pcre2_match_data_create_from_pattern(t->re[k], NULL);
	size_t pos = 0;
	while (pos < n) {
		int rc = pcre2_match(t->re[k], (PCRE2_SPTR)p, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
		if (rc < 0)
			break;
		PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
		if (ov[0] > pos)
			split_and_encode(t, k + 1, p + pos, ov[0] - pos, out);
		if (ov[1] > ov[0])
			split_and_encode(t, k + 1, p + ov[0], ov[1] - ov[0], out);
		pos = ov[1] > pos ? ov[1] : pos + (size_t)utf8_len((unsigned char)p[pos]);
	}
	if (pos < n)
		split_and_encode(t, k + 1, p + pos, n - pos, out);
	pcre2_match_data_free(md);
}

/* SentencePiece style: " " -> "▁", one "▁" in front, then BPE on the whole. */
static void encode_spm(const engine_tokenizer *t, const char *p, size_t n, int first, idbuf *out)
{
	owl_buf b;
	owl_buf_init(&b, 256u << 20);
	if (t->add_prefix && first)
		owl_buf_append(&b, "\xe2\x96\x81", 3);
	for (size_t i = 0; i < n; i++) {
		if (p[i] == ' ')
			owl_buf_append(&b, "\xe2\x96\x81", 3);
		else
			owl_buf_append(&b, &p[i], 1);
	}
	if (b.len)
		bpe_word(t, b.data, (int)b.len, out);
	owl_buf_release(&b);
}

int engine_tokenize(const engine_tokenizer *t, const char *text, size_t len, int add_bos,
		    int parse_special, int32_t **ids_out, size_t *n_out, owl_err *err)
{
	idbuf out = {0};
	if (add_bos && t->add_bos && t->bos >= 0)
		ids_push(&out, t->bos);
	size_t pos = 0, seg = 0;
	int first = 1;
	while (pos <= len) {
		int sid = -1;
		size_t slen = 0;
		if (parse_special && pos < len)
			for (int k = 0; k < t->n_special; k++) {
				const char *s = t->tokens[t->by_len[k]];
				size_t l = strlen(s);
				if (l <= len - pos && memcmp(text + pos, s, l) == 0) {
					sid = t->by_len[k];
					slen = l;
					break;
				}
			}
		if (sid >= 0 || pos == len) {
			if (pos > seg) {
				if (t->byte_level)
					split_and_encode(t, 0, text + seg, pos - seg, &out);
				else
					encode_spm(t, text + seg, pos - seg, first, &out);
				first = 0;
			}
			if (sid < 0)
				break;
			ids_push(&out, sid);
			pos += slen;
			seg = pos;
			continue;
		}
		pos++;
	}
	(void)err;
	*ids_out = out.ids ? out.ids : owl_xmalloc(sizeof **ids_out);
	*n_out = out.n;
	return 0;
}

/* ---- decoding -------------------------------------------------------------------------- */

/* Appends the bytes a token stands for. */
void engine_token_bytes(const engine_tokenizer *t, int id, owl_buf *out)
{
	if (id < 0 || id >= t->n_tokens)
		return;
	const char *s = t->tokens[id];
	if (t->special[id]) {
		owl_buf_append(out, s, strlen(s));
		return;
	}
	if (t->byte_level) {
		for (size_t i = 0; s[i];) {
			unsigned cp;
			int l = utf8_len((unsigned char)s[i]);
			if (l == 1) cp = (unsigned char)s[i];
			else if (l == 2) cp = ((s[i] & 0x1Fu) << 6) | (s[i + 1] & 0x3Fu);
			else cp = 0x180; /* not a byte character */
			char b = cp < 0x180 && t->cp_to_byte[cp] >= 0 ? (char)t->cp_to_byte[cp] : '?';
			if (cp < 0x180 && t->cp_to_byte[cp] >= 0)
				owl_buf_append(out, &b, 1);
			else
				owl_buf_append(out, s + i, (size_t)l);
			i += (size_t)l;
		}
		return;
	}
	unsigned byte;
	if (strlen(s) == 6 && sscanf(s, "<0x%02X>", &byte) == 1) {
		char b = (char)byte;
		owl_buf_append(out, &b, 1);
		return;
	}
	for (size_t i = 0; s[i];) {
		if (strncmp(s + i, "\xe2\x96\x81", 3) == 0) {
			owl_buf_append(out, " ", 1);
			i += 3;
		} else {
			owl_buf_append(out, s + i, 1);
			i++;
		}
	}
}

char *engine_detokenize(const engine_tokenizer *t, const int32_t *ids, size_t n)
{
	owl_buf b;
	owl_buf_init(&b, 256u << 20);
	for (size_t i = 0; i < n; i++)
		engine_token_bytes(t, ids[i], &b);
	char *s = b.len ? owl_buf_steal(&b) : owl_xstrdup("");
	owl_buf_release(&b);
	/* SentencePiece's decoder strips the one space its encoder prepended. */
	if (!t->byte_level && t->add_prefix && s[0] == ' ')
		memmove(s, s + 1, strlen(s));
	return s;
}

void engine_detok_init(engine_detok *d, const engine_tokenizer *t)
{
	memset(d, 0, sizeof *d);
	d->t = t;
	d->first = 1;
}

/* Emits only complete UTF-8 characters; the rest waits for the next token. */
size_t engine_detok_feed(engine_detok *d, int id, char *out, size_t outlen)
{
	owl_buf b;
	owl_buf_init(&b, 4096);
	engine_token_bytes(d->t, id, &b);
	size_t add = b.len < sizeof d->pending - d->npending ? b.len : sizeof d->pending - d->npending;
	memcpy(d->pending + d->npending, b.data, add);
	d->npending += add;
	owl_buf_release(&b);
	size_t start = 0;
	if (d->first && !d->t->byte_level && d->t->add_prefix && d->npending && d->pending[0] == ' ')
		start = 1;
	/* The longest prefix made of complete characters. */
	size_t end = start;
	while (end < d->npending) {
		int l = utf8_len((unsigned char)d->pending[end]);
		if (end + (size_t)l > d->npending)
			break;
		end += (size_t)l;
	}
	size_t n = end - start < outlen - 1 ? end - start : outlen - 1;
	memcpy(out, d->pending + start, n);
	out[n] = 0;
	if (end > 0)
		d->first = 0;
	memmove(d->pending, d->pending + end, d->npending - end);
	d->npending -= end;
	return n;
}

int engine_token_count(const engine_tokenizer *t) { return t->n_tokens; }
int engine_token_bos(const engine_tokenizer *t) { return t->bos; }
int engine_token_eos(const engine_tokenizer *t) { return t->eos; }
const char *engine_token_text(const engine_tokenizer *t, int id)
{
	return id >= 0 && id < t->n_tokens ? t->tokens[id] : "";
}
int engine_token_is_eog(const engine_tokenizer *t, int id)
{
	for (int i = 0; i < t->n_eog; i++)
		if (t->eog[i] == id)
			return 1;
	return 0;
}
const char *engine_tokenizer_chat_template(const engine_tokenizer *t) { return t->chat_template; }

int engine_tokenizer_adds_bos(const engine_tokenizer *t) { return t->add_bos && t->bos >= 0; }
