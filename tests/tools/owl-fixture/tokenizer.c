/* Trains a small BPE tokenizer on the built-in corpus and writes it as a
 * Hugging Face tokenizer.json.
 *
 * Two flavours, as the model families ship them:
 *  - byte-level (GPT-2 / Llama 3 / SmolLM2 / Qwen2): text is split with the
 *    Llama 3 regex, every byte is mapped to a printable character (GPT-2's
 *    bytes_to_unicode), and merges start from the 256 byte symbols;
 *  - SentencePiece-style (Llama 2 / Mistral / TinyLlama): spaces become U+2581,
 *    merges start from the characters seen in the corpus, and any other
 *    character falls back to <0xXX> byte tokens.
 * Training is the textbook loop: count adjacent pairs weighted by word count,
 * merge the most frequent (ties: smallest pair of ids), repeat. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "fixture.h"

#define SPM_SPACE "\xe2\x96\x81" /* U+2581 LOWER ONE EIGHTH BLOCK */

/* Llama 3's pre-tokenizer regex (also what tokenizer.json carries). */
static const char PRE_REGEX[] =
	"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
	"\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

const char *fx_tok_pre_regex(void)
{
	return PRE_REGEX;
}

/* ---- a string -> int map (open addressing) ------------------------------ */

typedef struct strmap {
	char **keys;
	int *vals;
	size_t cap, len;
} strmap;

static uint64_t hash_str(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603ULL;
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)s[i];
		h *= 1099511628211ULL;
	}
	return h;
}

static void strmap_init(strmap *m)
{
	m->cap = 1024;
	m->len = 0;
	m->keys = owl_xcalloc(m->cap, sizeof(char *));
	m->vals = owl_xcalloc(m->cap, sizeof(int));
}

static void strmap_free(strmap *m)
{
	for (size_t i = 0; i < m->cap; i++)
		free(m->keys[i]);
	free(m->keys);
	free(m->vals);
}

/* Returns the slot of key (found or empty). */
static size_t strmap_slot(const strmap *m, const char *key)
{
	size_t i = hash_str(key, strlen(key)) & (m->cap - 1);
	while (m->keys[i] && strcmp(m->keys[i], key) != 0)
		i = (i + 1) & (m->cap - 1);
	return i;
}

static int *strmap_get(const strmap *m, const char *key)
{
	size_t i = strmap_slot(m, key);
	return m->keys[i] ? &m->vals[i] : NULL;
}

static void strmap_put(strmap *m, const char *key, int val)
{
	if ((m->len + 1) * 2 > m->cap) {
		strmap old = *m;
		m->cap *= 2;
		m->len = 0;
		m->keys = owl_xcalloc(m->cap, sizeof(char *));
		m->vals = owl_xcalloc(m->cap, sizeof(int));
		for (size_t i = 0; i < old.cap; i++)
			if (old.keys[i]) {
				size_t j = strmap_slot(m, old.keys[i]);
				m->keys[j] = old.keys[i];
				m->vals[j] = old.vals[i];
				m->len++;
			}
		free(old.keys);
		free(old.vals);
	}
	size_t i = strmap_slot(m, key);
	if (!m->keys[i]) {
		m->keys[i] = owl_xstrdup(key);
		m->len++;
	}
	m->vals[i] = val;
}

/* ---- UTF-8 helpers ---------------------------------------------------- */

static int utf8_put(uint32_t cp, char *out)
{
	if (cp < 0x80) {
		out[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (char)(0xc0 | (cp >> 6));
		out[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = (char)(0xe0 | (cp >> 12));
		out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		out[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	out[0] = (char)(0xf0 | (cp >> 18));
	out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
	out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
	out[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

/* Length of the UTF-8 sequence starting with byte c (the corpus is valid UTF-8). */
static int utf8_len(unsigned char c)
{
	if (c < 0x80)
		return 1;
	if ((c & 0xe0) == 0xc0)
		return 2;
	if ((c & 0xf0) == 0xe0)
		return 3;
	return 4;
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the
 * others to 256, 257, ... in byte order. */
static void byte_level_table(char out[256][4])
{
	int n = 0;
	for (int b = 0; b < 256; b++) {
		int printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
		uint32_t cp = printable ? (uint32_t)b : (uint32_t)(256 + n++);
		int len = utf8_put(cp, out[b]);
		out[b][len] = 0;
	}
}

/* ---- the trainer ---------------------------------------------------------- */

typedef struct word {
	int *sym;
	int n;
	int count;
} word;

typedef struct trainer {
	word *words;
	int n_words, cap_words;
	char **syms;   /* symbol strings; index = symbol id during training */
	int n_syms, cap_syms;
	strmap sym_ids;
	int (*merges)[2];
	int n_merges, cap_merges;
} trainer;

static int trainer_sym(trainer *t, const char *s)
{
	int *id = strmap_get(&t->sym_ids, s);
	if (id)
		return *id;
	if (t->n_syms == t->cap_syms) {
		t->cap_syms = t->cap_syms ? 2 * t->cap_syms : 512;
		t->syms = owl_xrealloc(t->syms, (size_t)t->cap_syms * sizeof(char *));
	}
	t->syms[t->n_syms] = owl_xstrdup(s);
	strmap_put(&t->sym_ids, s, t->n_syms);
	return t->n_syms++;
}

static void trainer_add_word(trainer *t, const int *sym, int n, int count)
{
	if (n < 2)
		return; /* nothing to merge inside */
	if (t->n_words == t->cap_words) {
		t->cap_words = t->cap_words ? 2 * t->cap_words : 256;
		t->words = owl_xrealloc(t->words, (size_t)t->cap_words * sizeof(word));
	}
	word *w = &t->words[t->n_words++];
	w->sym = owl_xmalloc((size_t)n * sizeof(int));
	memcpy(w->sym, sym, (size_t)n * sizeof(int));
	w->n = n;
	w->count = count;
}

static void trainer_free(trainer *t)
{
	for (int i = 0; i < t->n_words; i++)
		free(t->words[i].sym);
	free(t->words);
	for (int i = 0; i < t->n_syms; i++)
		free(t->syms[i]);
	free(t->syms);
	strmap_free(&t->sym_ids);
	free(t->merges);
}

/* Pair counts live in an open-addressing table keyed by (a, b). */
typedef struct pair_slot {
	uint64_t key; /* (a+1) << 32 | (b+1); 0 = empty */
	long count;
} pair_slot;

/* Runs merges until `max_new` new symbols exist or no pair occurs twice. */
static void trainer_run(trainer *t, int max_new)
{
	size_t cap = 1 << 16;
	pair_slot *tab = owl_xmalloc(cap * sizeof(pair_slot));
	int created = 0;
	while (created < max_new) {
		memset(tab, 0, cap * sizeof(pair_slot));
		uint64_t best_key = 0;
		long best = 0;
		for (int wi = 0; wi < t->n_words; wi++) {
			word *w = &t->words[wi];
			for (int i = 0; i + 1 < w->n; i++) {
				uint64_t key = ((uint64_t)(w->sym[i] + 1) << 32) | (uint64_t)(w->sym[i + 1] + 1);
				size_t h = (size_t)((key * 0x9E3779B97F4A7C15ULL) >> 40) & (cap - 1);
				while (tab[h].key && tab[h].key != key)
					h = (h + 1) & (cap - 1);
				tab[h].key = key;
				tab[h].count += w->count;
				long c = tab[h].count;
				if (c > best || (c == best && key < best_key)) {
					best = c;
					best_key = key;
				}
			}
		}
		if (best < 2)
			break;
		int a = (int)(best_key >> 32) - 1, b = (int)(best_key & 0xffffffffu) - 1;
		char *joined = owl_xasprintf("%s%s", t->syms[a], t->syms[b]);
		int before = t->n_syms;
		int c = trainer_sym(t, joined);
		free(joined);
		if (t->n_syms > before)
			created++;
		if (t->n_merges == t->cap_merges) {
			t->cap_merges = t->cap_merges ? 2 * t->cap_merges : 256;
			t->merges = owl_xrealloc(t->merges, (size_t)t->cap_merges * sizeof(*t->merges));
		}
		t->merges[t->n_merges][0] = a;
		t->merges[t->n_merges][1] = b;
		t->n_merges++;
		for (int wi = 0; wi < t->n_words; wi++) {
			word *w = &t->words[wi];
			int j = 0;
			for (int i = 0; i < w->n; i++) {
				if (i + 1 < w->n && w->sym[i] == a && w->sym[i + 1] == b) {
					w->sym[j++] = c;
					i++;
				} else {
					w->sym[j++] = w->sym[i];
				}
			}
			w->n = j;
		}
	}
	free(tab);
}

/* ---- chat-template families: their special tokens --------------------- */

typedef struct family {
	const char *name;
	const char *specials[6];
	const char *bos, *eos, *eos2;
	int add_bos;
} family;

static const family FAMILIES[] = {
	{"chatml", {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}, "<|im_start|>", "<|im_end|>",
	 "<|endoftext|>", 0},
	{"llama3",
	 {"<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"},
	 "<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>", 1},
	{"llama2", {"<s>", "</s>"}, "<s>", "</s>", NULL, 1},
	{"zephyr", {"<s>", "</s>"}, "<s>", "</s>", NULL, 1},
	{"gemma", {"<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"}, "<bos>", "<eos>",
	 "<end_of_turn>", 1},
};

static const family *family_find(const char *name)
{
	for (size_t i = 0; i < sizeof(FAMILIES) / sizeof(FAMILIES[0]); i++)
		if (strcmp(FAMILIES[i].name, name) == 0)
			return &FAMILIES[i];
	return NULL;
}

/* ---- building the vocabulary ------------------------------------------ */

typedef struct vocab_b {
	char **tok;
	int *type;
	float *score;
	int n, cap;
	strmap ids;
} vocab_b;

static int vocab_add(vocab_b *v, const char *s, int type, float score)
{
	int *have = strmap_get(&v->ids, s);
	if (have)
		return *have;
	if (v->n == v->cap) {
		v->cap = v->cap ? 2 * v->cap : 1024;
		v->tok = owl_xrealloc(v->tok, (size_t)v->cap * sizeof(char *));
		v->type = owl_xrealloc(v->type, (size_t)v->cap * sizeof(int));
		v->score = owl_xrealloc(v->score, (size_t)v->cap * sizeof(float));
	}
	v->tok[v->n] = owl_xstrdup(s);
	v->type[v->n] = type;
	v->score[v->n] = score;
	strmap_put(&v->ids, s, v->n);
	return v->n++;
}

static int cmp_strp(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Splits the corpus with the pre-tokenizer regex and adds every piece as a
 * word of byte symbols (symbol id = byte value). */
static int collect_byte_level_words(trainer *t, owl_err *err)
{
	int rc = OWL_OK;
	int errcode;
	PCRE2_SIZE erroff;
	strmap counts;
	strmap_init(&counts);
	pcre2_code *re = pcre2_compile((PCRE2_SPTR)PRE_REGEX, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
	                               &errcode, &erroff, NULL);
	pcre2_match_data *md = NULL;
	if (!re) {
		rc = owl_err_set(err, OWL_EFAIL, "cannot compile the pre-tokenizer regex at offset %zu",
		                 (size_t)erroff);
		goto cleanup;
	}
	md = pcre2_match_data_create_from_pattern(re, NULL);
	size_t len = strlen(fx_corpus), pos = 0;
	char piece[512];
	while (pos < len) {
		int m = pcre2_match(re, (PCRE2_SPTR)fx_corpus, len, pos, 0, md, NULL);
		if (m < 0)
			break;
		PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
		size_t s = ov[0], e = ov[1];
		if (e <= s) { /* an empty match cannot happen with this regex; step over it */
			pos += utf8_len((unsigned char)fx_corpus[pos]);
			continue;
		}
		size_t n = e - s < sizeof(piece) - 1 ? e - s : sizeof(piece) - 1;
		memcpy(piece, fx_corpus + s, n);
		piece[n] = 0;
		int *c = strmap_get(&counts, piece);
		strmap_put(&counts, piece, c ? *c + 1 : 1);
		pos = e;
	}
	/* Words in a fixed order (sorted keys) so that training is deterministic
	 * regardless of hash-table layout. */
	char **keys = owl_xmalloc(counts.len * sizeof(char *));
	size_t nk = 0;
	for (size_t i = 0; i < counts.cap; i++)
		if (counts.keys[i])
			keys[nk++] = counts.keys[i];
	qsort(keys, nk, sizeof(char *), cmp_strp);
	for (size_t i = 0; i < nk; i++) {
		const char *k = keys[i];
		int n = (int)strlen(k);
		int sym[512];
		for (int j = 0; j < n; j++)
			sym[j] = (unsigned char)k[j];
		trainer_add_word(t, sym, n, *strmap_get(&counts, k));
	}
	free(keys);
cleanup:
	pcre2_match_data_free(md);
	pcre2_code_free(re);
	strmap_free(&counts);
	return rc;
}

/* SentencePiece style: the corpus normalised (spaces -> U+2581, one U+2581 in
 * front), cut into words at each U+2581; the alphabet is every character seen
 * at least twice, except control characters (those go to byte fallback).
 * Characters outside the alphabet split words, as they cannot be merged. */
static void collect_spm_words(trainer *t, char ***alphabet, int *n_alpha)
{
	strmap chars, counts;
	strmap_init(&chars);
	strmap_init(&counts);
	size_t len = strlen(fx_corpus);
	for (size_t i = 0; i < len;) {
		int l = utf8_len((unsigned char)fx_corpus[i]);
		char ch[8];
		if (fx_corpus[i] == ' ')
			strcpy(ch, SPM_SPACE);
		else {
			memcpy(ch, fx_corpus + i, (size_t)l);
			ch[l] = 0;
		}
		int *c = strmap_get(&chars, ch);
		strmap_put(&chars, ch, c ? *c + 1 : 1);
		i += (size_t)l;
	}
	int *sp = strmap_get(&chars, SPM_SPACE);
	strmap_put(&chars, SPM_SPACE, (sp ? *sp : 0) + 2);

	char **alpha = owl_xmalloc(chars.len * sizeof(char *));
	int na = 0;
	for (size_t i = 0; i < chars.cap; i++)
		if (chars.keys[i] && chars.vals[i] >= 2 && (unsigned char)chars.keys[i][0] >= 0x20)
			alpha[na++] = owl_xstrdup(chars.keys[i]);
	qsort(alpha, (size_t)na, sizeof(char *), cmp_strp);
	for (int i = 0; i < na; i++)
		trainer_sym(t, alpha[i]);

	/* Words: runs of alphabet characters, a new word at each U+2581. */
	owl_buf wb;
	owl_buf_init(&wb, 1 << 20);
	size_t i = 0;
	int first = 1;
	while (i <= len) {
		char ch[8] = "";
		int l = 0;
		if (first) {
			strcpy(ch, SPM_SPACE);
		} else if (i < len) {
			l = utf8_len((unsigned char)fx_corpus[i]);
			if (fx_corpus[i] == ' ')
				strcpy(ch, SPM_SPACE);
			else {
				memcpy(ch, fx_corpus + i, (size_t)l);
				ch[l] = 0;
			}
		}
		int known = ch[0] && strmap_get(&t->sym_ids, ch) != NULL;
		int boundary = !known || strcmp(ch, SPM_SPACE) == 0;
		if (boundary && wb.len > 0) {
			int *c = strmap_get(&counts, wb.data);
			strmap_put(&counts, wb.data, c ? *c + 1 : 1);
			wb.len = 0;
			wb.data[0] = 0;
		}
		if (known)
			owl_buf_append(&wb, ch, strlen(ch));
		if (i == len && !first)
			break;
		if (first)
			first = 0;
		else
			i += (size_t)l;
	}
	owl_buf_release(&wb);

	char **keys = owl_xmalloc(counts.len * sizeof(char *) + 1);
	size_t nk = 0;
	for (size_t k = 0; k < counts.cap; k++)
		if (counts.keys[k])
			keys[nk++] = counts.keys[k];
	qsort(keys, nk, sizeof(char *), cmp_strp);
	for (size_t k = 0; k < nk; k++) {
		const char *w = keys[k];
		int sym[512], n = 0;
		for (size_t p = 0; w[p] && n < 512;) {
			int l = utf8_len((unsigned char)w[p]);
			char ch[8];
			memcpy(ch, w + p, (size_t)l);
			ch[l] = 0;
			sym[n++] = *strmap_get(&t->sym_ids, ch);
			p += (size_t)l;
		}
		trainer_add_word(t, sym, n, *strmap_get(&counts, w));
	}
	free(keys);
	strmap_free(&chars);
	strmap_free(&counts);
	*alphabet = alpha;
	*n_alpha = na;
}

int fx_tok_train(fx_tok *tok, const fx_opts *o, int target, owl_err *err)
{
	int rc = OWL_OK;
	memset(tok, 0, sizeof(*tok));
	tok->spm = o->spm;
	const family *fam = family_find(o->chat_template);
	if (!fam)
		return owl_err_set(err, OWL_EUSAGE, "unknown chat template '%s' (chatml, llama3, llama2, zephyr, gemma)",
		                   o->chat_template);
	trainer t;
	memset(&t, 0, sizeof(t));
	strmap_init(&t.sym_ids);
	vocab_b v;
	memset(&v, 0, sizeof(v));
	strmap_init(&v.ids);
	char **alpha = NULL;
	int n_alpha = 0;
	int n_specials = 0;
	while (n_specials < 6 && fam->specials[n_specials])
		n_specials++;

	char bl[256][4];
	byte_level_table(bl);
	int fixed;
	if (!o->spm) {
		for (int b = 0; b < 256; b++)
			trainer_sym(&t, bl[b]);
		rc = collect_byte_level_words(&t, err);
		if (rc)
			goto cleanup;
		fixed = 256 + n_specials;
	} else {
		collect_spm_words(&t, &alpha, &n_alpha);
		int extra = 0;
		for (int i = 0; i < n_specials; i++)
			if (strcmp(fam->specials[i], "<s>") && strcmp(fam->specials[i], "</s>"))
				extra++;
		fixed = 3 + 256 + n_alpha + extra;
	}
	if (target < fixed) {
		rc = owl_err_set(err, OWL_EUSAGE, "cannot make a vocabulary of %d tokens: at least %d are needed",
		                 target, fixed);
		goto cleanup;
	}
	int base_syms = t.n_syms;
	trainer_run(&t, target - fixed);
	int created = t.n_syms - base_syms;

	/* Assemble the vocabulary in id order. */
	if (!o->spm) {
		for (int i = 0; i < t.n_syms; i++)
			vocab_add(&v, t.syms[i], 1, 0);
	} else {
		vocab_add(&v, "<unk>", 2, 0);
		vocab_add(&v, "<s>", 3, 0);
		vocab_add(&v, "</s>", 3, 0);
		for (int b = 0; b < 256; b++) {
			char name[8];
			snprintf(name, sizeof(name), "<0x%02X>", b);
			vocab_add(&v, name, 6, 0);
		}
		/* Scores as SentencePiece would rank them: characters first by
		 * alphabet order, then merges by the order they were learned. A
		 * score only matters for pieces a merge produces. */
		for (int i = 0; i < t.n_syms; i++)
			vocab_add(&v, t.syms[i], 1, i < base_syms ? -1e6f - (float)i : -(float)(i - base_syms));
	}
	int n_pad = target - fixed - created;
	for (int i = 0; i < n_pad; i++) {
		char name[48];
		snprintf(name, sizeof(name), "<|fixture_pad_%d|>", i);
		vocab_add(&v, name, 1, -1e9f);
	}
	tok->first_special = v.n;
	for (int i = 0; i < n_specials; i++)
		vocab_add(&v, fam->specials[i], 3, 0);
	if (v.n != target) {
		rc = owl_err_set(err, OWL_EFAIL, "cannot make a vocabulary of %d tokens: built %d", target, v.n);
		goto cleanup;
	}

	tok->n = v.n;
	tok->tokens = v.tok;
	tok->types = v.type;
	tok->scores = v.score;
	v.tok = NULL;
	v.type = NULL;
	v.score = NULL;
	tok->n_padding = n_pad;
	tok->n_merges = t.n_merges;
	tok->merges = owl_xcalloc((size_t)t.n_merges + 1, sizeof(char *));
	for (int i = 0; i < t.n_merges; i++)
		tok->merges[i] = owl_xasprintf("%s %s", t.syms[t.merges[i][0]], t.syms[t.merges[i][1]]);
	tok->bos = fam->bos;
	tok->eos = fam->eos;
	tok->add_bos = fam->add_bos;
	tok->bos_id = *strmap_get(&v.ids, fam->bos);
	tok->eos_id = *strmap_get(&v.ids, fam->eos);
	tok->unk_id = o->spm ? 0 : -1;
	tok->eos_ids[tok->n_eos++] = tok->eos_id;
	if (fam->eos2)
		tok->eos_ids[tok->n_eos++] = *strmap_get(&v.ids, fam->eos2);
	int *pad = strmap_get(&v.ids, strcmp(fam->name, "gemma") == 0 ? "<pad>" : "<|endoftext|>");
	tok->pad_id = pad ? *pad : -1;
cleanup:
	trainer_free(&t);
	if (v.tok)
		for (int i = 0; i < v.n; i++)
			free(v.tok[i]);
	free(v.tok);
	free(v.type);
	free(v.score);
	strmap_free(&v.ids);
	for (int i = 0; i < n_alpha; i++)
		free(alpha[i]);
	free(alpha);
	return rc;
}

void fx_tok_free(fx_tok *tok)
{
	if (!tok)
		return;
	for (int i = 0; i < tok->n; i++)
		free(tok->tokens[i]);
	free(tok->tokens);
	free(tok->types);
	free(tok->scores);
	for (int i = 0; i < tok->n_merges; i++)
		free(tok->merges[i]);
	free(tok->merges);
	memset(tok, 0, sizeof(*tok));
}

/* ---- tokenizer.json -------------------------------------------------------- */

static json_t *added_token(int id, const char *content)
{
	return json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", id, "content", content, "single_word", 0,
	                 "lstrip", 0, "rstrip", 0, "normalized", 0, "special", 1);
}

static json_t *bos_template(const fx_tok *tok)
{
	const char *b = tok->bos;
	json_t *single = json_pack("[{s:{s:s, s:i}}, {s:{s:s, s:i}}]", "SpecialToken", "id", b, "type_id", 0,
	                           "Sequence", "id", "A", "type_id", 0);
	json_t *pair = json_pack("[{s:{s:s, s:i}}, {s:{s:s, s:i}}, {s:{s:s, s:i}}, {s:{s:s, s:i}}]",
	                         "SpecialToken", "id", b, "type_id", 0, "Sequence", "id", "A", "type_id", 0,
	                         "SpecialToken", "id", b, "type_id", 1, "Sequence", "id", "B", "type_id", 1);
	json_t *specials = json_object();
	json_object_set_new(specials, b, json_pack("{s:s, s:[i], s:[s]}", "id", b, "ids", tok->bos_id, "tokens", b));
	return json_pack("{s:s, s:o, s:o, s:o}", "type", "TemplateProcessing", "single", single, "pair", pair,
	                 "special_tokens", specials);
}

int fx_tok_write_json(const fx_tok *tok, const fx_opts *o, const char *path, owl_err *err)
{
	json_t *root = json_object();
	json_object_set_new(root, "version", json_string("1.0"));
	json_object_set_new(root, "truncation", json_null());
	json_object_set_new(root, "padding", json_null());
	json_t *added = json_array();
	if (tok->spm) {
		json_array_append_new(added, added_token(0, "<unk>"));
		json_array_append_new(added, added_token(1, "<s>"));
		json_array_append_new(added, added_token(2, "</s>"));
	}
	for (int i = tok->first_special; i < tok->n; i++)
		json_array_append_new(added, added_token(i, tok->tokens[i]));
	json_object_set_new(root, "added_tokens", added);

	if (!tok->spm) {
		json_object_set_new(root, "normalizer", json_null());
		json_t *pre = json_pack(
			"{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b, s:b}]}", "type", "Sequence",
			"pretokenizers", "type", "Split", "pattern", "Regex", PRE_REGEX, "behavior", "Isolated",
			"invert", 0, "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1, "use_regex", 0);
		json_object_set_new(root, "pre_tokenizer", pre);
		json_object_set_new(root, "post_processor",
		                    tok->add_bos ? bos_template(tok)
		                                 : json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel",
		                                             "add_prefix_space", 1, "trim_offsets", 0, "use_regex", 1));
		json_object_set_new(root, "decoder", json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel",
		                                               "add_prefix_space", 1, "trim_offsets", 1,
		                                               "use_regex", 1));
	} else {
		json_t *norm = json_pack("{s:s, s:[{s:s, s:s}, {s:s, s:{s:s}, s:s}]}", "type", "Sequence",
		                         "normalizers", "type", "Prepend", "prepend", SPM_SPACE, "type", "Replace",
		                         "pattern", "String", " ", "content", SPM_SPACE);
		json_object_set_new(root, "normalizer", norm);
		json_object_set_new(root, "pre_tokenizer", json_null());
		json_object_set_new(root, "post_processor", tok->add_bos ? bos_template(tok) : json_null());
		json_t *dec = json_pack("{s:s, s:[{s:s, s:{s:s}, s:s}, {s:s}, {s:s}, {s:s, s:s, s:i, s:i}]}", "type",
		                        "Sequence", "decoders", "type", "Replace", "pattern", "String", SPM_SPACE,
		                        "content", " ", "type", "ByteFallback", "type", "Fuse", "type", "Strip",
		                        "content", " ", "start", 1, "stop", 0);
		json_object_set_new(root, "decoder", dec);
	}

	json_t *model = json_object();
	json_object_set_new(model, "type", json_string("BPE"));
	json_object_set_new(model, "dropout", json_null());
	json_object_set_new(model, "unk_token", tok->spm ? json_string("<unk>") : json_null());
	json_object_set_new(model, "continuing_subword_prefix", json_null());
	json_object_set_new(model, "end_of_word_suffix", json_null());
	json_object_set_new(model, "fuse_unk", json_boolean(tok->spm));
	json_object_set_new(model, "byte_fallback", json_boolean(tok->spm));
	json_t *vocab = json_object();
	for (int i = 0; i < tok->n; i++)
		json_object_set_new(vocab, tok->tokens[i], json_integer(i));
	json_object_set_new(model, "vocab", vocab);
	json_t *merges = json_array();
	for (int i = 0; i < tok->n_merges; i++)
		json_array_append_new(merges, json_string(tok->merges[i]));
	json_object_set_new(model, "merges", merges);
	json_object_set_new(root, "model", model);

	int rc = OWL_OK;
	char *text = json_dumps(root, JSON_INDENT(2));
	if (!text)
		rc = owl_err_set(err, OWL_EFAIL, "cannot encode '%s'", path);
	else
		rc = owl_write_file_atomic(path, text, strlen(text), err);
	free(text);
	json_decref(root);
	(void)o;
	return rc;
}
