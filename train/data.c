/* Datasets: JSONL records tokenized into samples with a mask of the trained
 * tokens, the held-out split, the epoch order and the packing of samples
 * into micro-batches. */
#include "train/train.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

uint64_t train_rng_next(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* ---- building one sample ------------------------------------------------------ */

/* Tokens and mask of the sample being built. */
typedef struct builder {
	int32_t *tokens;
	uint8_t *trained;
	size_t n, cap;
} builder;

static void put(builder *b, const int32_t *ids, size_t n, int trained)
{
	if (!n)
		return;
	if (b->n + n > b->cap) {
		b->cap = (b->n + n) * 2 + 16;
		b->tokens = owl_xrealloc(b->tokens, b->cap * sizeof *b->tokens);
		b->trained = owl_xrealloc(b->trained, b->cap);
	}
	memcpy(b->tokens + b->n, ids, n * sizeof *ids);
	memset(b->trained + b->n, trained ? 1 : 0, n);
	b->n += n;
}

/* Appends the tokens of text. Text from the data never becomes special
 * tokens (a record cannot forge a turn); a chat template's own text does. */
static int put_text(builder *b, const engine_tokenizer *tok, const char *text, int add_bos,
		    int special, int trained, owl_err *err)
{
	int32_t *ids = NULL;
	size_t n = 0;
	int rc = engine_tokenize(tok, text, strlen(text), add_bos, special, &ids, &n, err);
	if (!rc)
		put(b, ids, n, trained);
	free(ids);
	return rc;
}

/* 1 when text holds the text of one of the tokenizer's special tokens
 * (it tokenizes differently with special-token matching on), 0 when not,
 * -1 when it cannot be tokenized. A chat is rendered with its template's
 * markers and then tokenized with special tokens on, so such content would
 * become a real marker. */
static int has_special(const engine_tokenizer *tok, const char *text, size_t len)
{
	int32_t *a = NULL, *b = NULL;
	size_t na = 0, nb = 0;
	owl_err e = {0};
	int rc = engine_tokenize(tok, text, len, 0, 1, &a, &na, &e);
	if (!rc)
		rc = engine_tokenize(tok, text, len, 0, 0, &b, &nb, &e);
	int differ = rc ? -1 : na != nb || (na && memcmp(a, b, na * sizeof *a) != 0);
	free(a);
	free(b);
	return differ;
}

static const char ALPACA_WITH_INPUT[] =
	"Below is an instruction that describes a task, paired with an input that provides "
	"further context. Write a response that appropriately completes the request.\n\n"
	"### Instruction:\n%s\n\n### Input:\n%s\n\n### Response:\n";
static const char ALPACA_NO_INPUT[] =
	"Below is an instruction that describes a task. Write a response that appropriately "
	"completes the request.\n\n### Instruction:\n%s\n\n### Response:\n";

/* The string field key of o, or NULL with *why set when present but not a string. */
static const char *field(json_t *o, const char *key, int *bad, char *why, size_t wn)
{
	json_t *v = json_object_get(o, key);
	if (!v || json_is_null(v))
		return NULL;
	if (!json_is_string(v)) {
		snprintf(why, wn, "field \"%s\" is not a string", key);
		*bad = 1;
		return NULL;
	}
	return json_string_value(v);
}

/* One record into b; returns 0, or -1 with why (the record is malformed),
 * or an error code with err set (the tokenizer failed). */
static int build_record(json_t *o, const engine_tokenizer *tok, int train_on_inputs, builder *b,
			const char **format, char *why, size_t wn, owl_err *err)
{
	int bad = 0, rc = 0;
	int bos = engine_tokenizer_adds_bos(tok);
	int eos = engine_token_eos(tok);
	const char *text = field(o, "text", &bad, why, wn);
	const char *prompt = field(o, "prompt", &bad, why, wn);
	const char *completion = field(o, "completion", &bad, why, wn);
	const char *instruction = field(o, "instruction", &bad, why, wn);
	const char *input = field(o, "input", &bad, why, wn);
	const char *output = field(o, "output", &bad, why, wn);
	json_t *messages = json_object_get(o, "messages");
	if (bad)
		return -1;
	if (messages) {
		*format = "chat";
		if (!json_is_array(messages) || json_array_size(messages) == 0) {
			snprintf(why, wn, "field \"messages\" is not a non-empty array");
			return -1;
		}
		size_t nm = json_array_size(messages);
		engine_chat_msg *msgs = owl_xcalloc(nm, sizeof *msgs);
		int assistant = 0;
		for (size_t i = 0; i < nm; i++) {
			json_t *m = json_array_get(messages, i);
			json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
			if (!json_is_object(m) || !json_is_string(role) || !json_is_string(content)) {
				snprintf(why, wn, "messages[%zu] is not an object with string \"role\" and "
					 "\"content\"", i);
				free(msgs);
				return -1;
			}
			const char *r = json_string_value(role);
			if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant")) {
				snprintf(why, wn, "messages[%zu].role is \"%.40s\" (system, user or assistant)",
					 i, r);
				free(msgs);
				return -1;
			}
			int special = has_special(tok, json_string_value(content), json_string_length(content));
			if (special) {
				snprintf(why, wn, special < 0 ? "messages[%zu].content cannot be tokenized"
					 : "messages[%zu].content holds one of the model's special tokens "
					 "(an end-of-turn or role marker); rendered into the chat it would "
					 "forge a turn boundary", i);
				free(msgs);
				return -1;
			}
			assistant |= strcmp(r, "assistant") == 0;
			msgs[i] = (engine_chat_msg){r, json_string_value(content)};
		}
		if (!assistant && !train_on_inputs) {
			snprintf(why, wn, "messages has no assistant turn to train on");
			free(msgs);
			return -1;
		}
		/* The conversation rendered turn by turn: what each prefix adds is
		 * tokenized on its own, so that the boundary of every assistant turn
		 * is known. An assistant turn's text is what rendering it adds to
		 * the rendering of what came before with the assistant's opening. */
		engine_chat_family f = engine_chat_detect(engine_tokenizer_chat_template(tok));
		int tb = engine_token_bos(tok);
		const char *bos_text = tb >= 0 ? engine_token_text(tok, tb) : "";
		const char *eos_text = eos >= 0 ? engine_token_text(tok, eos) : "";
		char *done = owl_xstrdup("");
		for (size_t i = 0; i < nm && !rc; i++) {
			int is_asst = strcmp(msgs[i].role, "assistant") == 0;
			char *before = engine_chat_render(f, msgs, i, is_asst, bos_text, eos_text);
			char *after = engine_chat_render(f, msgs, i + 1, 0, bos_text, eos_text);
			size_t ld = strlen(done), lb = strlen(before);
			if (strncmp(before, done, ld) != 0 || strncmp(after, before, lb) != 0) {
				snprintf(why, wn, "the chat template (%s) does not render this conversation "
					 "turn by turn", engine_chat_family_name(f));
				rc = -1;
			}
			if (!rc && lb > ld)
				rc = put_text(b, tok, before + ld, 0, 1, train_on_inputs, err);
			if (!rc)
				rc = put_text(b, tok, after + lb, 0, 1, is_asst || train_on_inputs, err);
			free(done);
			free(before);
			done = after;
		}
		free(done);
		free(msgs);
		return rc;
	}
	char *p = NULL;
	const char *c = NULL;
	if (text && !prompt && !completion && !instruction && !output) {
		*format = "text";
		c = text;
	} else if (prompt && completion && !text && !instruction && !output) {
		*format = "prompt";
		p = owl_xstrdup(prompt);
		c = completion;
	} else if (instruction && output && !text && !prompt && !completion) {
		*format = "alpaca";
		p = input && *input ? owl_xasprintf(ALPACA_WITH_INPUT, instruction, input)
				    : owl_xasprintf(ALPACA_NO_INPUT, instruction);
		c = output;
	} else {
		snprintf(why, wn, "expected {\"text\"}, {\"prompt\", \"completion\"}, "
			 "{\"instruction\", \"input\", \"output\"} or {\"messages\"}");
		return -1;
	}
	if (p)
		rc = put_text(b, tok, p, bos, 0, train_on_inputs, err);
	if (!rc)
		rc = put_text(b, tok, c, bos && !p, 0, 1, err);
	free(p);
	if (!rc) {
		int32_t e = eos;
		put(b, &e, 1, 1);
	}
	return rc;
}

/* ---- the file ------------------------------------------------------------------ */

static void dataset_add(train_dataset *d, size_t *cap, builder *b, int line)
{
	if (d->n == *cap) {
		*cap = *cap ? 2 * *cap : 64;
		d->samples = owl_xrealloc(d->samples, *cap * sizeof *d->samples);
	}
	train_sample *s = &d->samples[d->n++];
	s->n = (int)b->n;
	s->line = line;
	s->tokens = owl_xmalloc(b->n * sizeof *s->tokens);
	s->trained = owl_xmalloc(b->n);
	memcpy(s->tokens, b->tokens, b->n * sizeof *s->tokens);
	memcpy(s->trained, b->trained, b->n);
	s->trained[0] = 0; /* the first token is never predicted: nothing comes before it */
	d->tokens += s->n - 1;
	for (int i = 1; i < s->n; i++)
		d->trained_tokens += s->trained[i];
}

int train_dataset_parse(const char *label, const char *data, size_t len,
			const engine_tokenizer *tok, const train_data_opts *o, train_dataset **out,
			owl_err *err)
{
	*out = NULL;
	if (engine_token_eos(tok) < 0)
		return owl_err_set(err, OWL_EUSAGE, "the model's tokenizer names no end-of-sequence "
				   "token to end the samples with");
	train_dataset *d = owl_xcalloc(1, sizeof *d);
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned mdlen = 0;
	EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL);
	owl_hex(md, 32, d->sha256);
	size_t cap = 0;
	const char *format = NULL;
	builder b = {0};
	int rc = 0;
	const char *p = data, *end = data + len;
	int line = 0;
	while (p < end && !rc) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t l = nl ? (size_t)(nl - p) : (size_t)(end - p);
		const char *next = nl ? nl + 1 : end;
		line++;
		d->lines++;
		while (l && (p[l - 1] == '\r' || p[l - 1] == ' ' || p[l - 1] == '\t'))
			l--;
		size_t lead = 0;
		while (lead < l && (p[lead] == ' ' || p[lead] == '\t'))
			lead++;
		if (lead == l) {
			p = next;
			continue;
		}
		char why[384] = "";
		json_error_t je;
		json_t *obj = json_loadb(p, l, JSON_REJECT_DUPLICATES, &je);
		const char *fmt = NULL;
		b.n = 0;
		int bad = 0;
		if (!obj) {
			snprintf(why, sizeof why, "not JSON (column %d: %s)", je.column, je.text);
			bad = 1;
		} else if (!json_is_object(obj)) {
			snprintf(why, sizeof why, "a JSON object was expected");
			bad = 1;
		} else {
			int r = build_record(obj, tok, o->train_on_inputs, &b, &fmt, why, sizeof why, err);
			if (r > 0) {
				owl_err_wrap(err, "%s:%d", label, line);
				rc = r;
			} else if (r < 0) {
				bad = 1;
			} else if (o->max_tokens > 0 && b.n > (size_t)o->max_tokens) {
				snprintf(why, sizeof why, "the sample has %zu tokens, more than the %d that a "
					 "sequence of --seq-len %d holds", b.n, o->max_tokens, o->max_tokens - 1);
				bad = 1;
			} else if (b.n < 2) {
				snprintf(why, sizeof why, "the sample has fewer than 2 tokens");
				bad = 1;
			}
		}
		json_decref(obj);
		if (!rc && bad) {
			if (!o->skip_bad) {
				rc = owl_err_set(err, OWL_EUSAGE, "%s:%d: %s", label, line, why);
			} else {
				if (!d->skipped)
					snprintf(d->first_skipped, sizeof d->first_skipped, "line %d: %s", line,
						 why);
				d->skipped++;
			}
		} else if (!rc) {
			if (!format)
				format = fmt;
			else if (strcmp(format, fmt) != 0)
				format = "mixed";
			dataset_add(d, &cap, &b, line);
		}
		p = next;
	}
	free(b.tokens);
	free(b.trained);
	if (!rc && d->n == 0)
		rc = d->skipped ? owl_err_set(err, OWL_EUSAGE, "%s: every one of its %zu records is "
					      "malformed (first, %s)", label, d->skipped,
					      d->first_skipped)
				: owl_err_set(err, OWL_EUSAGE, "%s holds no samples (an empty file?)", label);
	if (!rc && d->trained_tokens == 0)
		rc = owl_err_set(err, OWL_EUSAGE, "%s: no token of any sample is trained", label);
	if (rc) {
		train_dataset_free(d);
		return rc;
	}
	snprintf(d->format, sizeof d->format, "%s", format);
	*out = d;
	return 0;
}

int train_dataset_load(const char *path, const engine_tokenizer *tok, const train_data_opts *o,
		       train_dataset **out, owl_err *err)
{
	char *data = NULL;
	size_t len = 0;
	int rc = owl_read_file(path, (size_t)4 << 30, &data, &len, err);
	if (rc)
		return rc;
	rc = train_dataset_parse(path, data, len, tok, o, out, err);
	free(data);
	return rc;
}

void train_dataset_free(train_dataset *d)
{
	if (!d)
		return;
	for (size_t i = 0; i < d->n; i++) {
		free(d->samples[i].tokens);
		free(d->samples[i].trained);
	}
	free(d->samples);
	free(d);
}

static void count_tokens(train_dataset *d)
{
	d->tokens = d->trained_tokens = 0;
	for (size_t i = 0; i < d->n; i++) {
		d->tokens += d->samples[i].n - 1;
		for (int j = 1; j < d->samples[i].n; j++)
			d->trained_tokens += d->samples[i].trained[j];
	}
}

int train_dataset_split(train_dataset *d, double fraction, uint64_t seed,
			train_dataset **eval_out, owl_err *err)
{
	*eval_out = NULL;
	if (!(fraction > 0 && fraction < 1))
		return owl_err_set(err, OWL_EUSAGE, "the eval fraction %g is not between 0 and 1",
				   fraction);
	if (d->n < 2)
		return owl_err_set(err, OWL_EUSAGE, "%zu sample%s cannot be split into a training and "
				   "an eval set", d->n, d->n == 1 ? "" : "s");
	size_t k = (size_t)(fraction * (double)d->n + 0.5);
	k = k < 1 ? 1 : k > d->n - 1 ? d->n - 1 : k;
	/* Which samples go: the first k of a permutation; they keep the file's
	 * order on both sides. */
	uint32_t *perm = owl_xmalloc(d->n * sizeof *perm);
	uint8_t *held = owl_xcalloc(d->n, 1);
	for (size_t i = 0; i < d->n; i++)
		perm[i] = (uint32_t)i;
	uint64_t st = seed ^ 0x5e1ec7edull;
	for (size_t i = d->n - 1; i > 0; i--) {
		size_t j = (size_t)(train_rng_next(&st) % (i + 1));
		uint32_t t = perm[i];
		perm[i] = perm[j];
		perm[j] = t;
	}
	for (size_t i = 0; i < k; i++)
		held[perm[i]] = 1;
	train_dataset *e = owl_xcalloc(1, sizeof *e);
	*e = *d;
	e->samples = owl_xmalloc(k * sizeof *e->samples);
	e->n = 0;
	size_t kept = 0;
	for (size_t i = 0; i < d->n; i++) {
		if (held[i])
			e->samples[e->n++] = d->samples[i];
		else
			d->samples[kept++] = d->samples[i];
	}
	d->n = kept;
	count_tokens(d);
	count_tokens(e);
	free(perm);
	free(held);
	*eval_out = e;
	return 0;
}

/* ---- order and packing ------------------------------------------------------------- */

void train_epoch_order(const train_dataset *d, uint64_t seed, int epoch, int shuffle,
		       uint32_t **order)
{
	uint32_t *o = owl_xmalloc((d->n ? d->n : 1) * sizeof *o);
	for (size_t i = 0; i < d->n; i++)
		o[i] = (uint32_t)i;
	if (shuffle && d->n > 1) {
		uint64_t st = seed * 0x100000001b3ull + (uint64_t)epoch * 0x9e3779b97f4a7c15ull + 1;
		for (size_t i = d->n - 1; i > 0; i--) {
			size_t j = (size_t)(train_rng_next(&st) % (i + 1));
			uint32_t t = o[i];
			o[i] = o[j];
			o[j] = t;
		}
	}
	*order = o;
}

void train_pack(const train_dataset *d, const uint32_t *order, int seq_len, int rows,
		train_micro **out, size_t *n)
{
	size_t cap = 16, nm = 0;
	train_micro *m = owl_xmalloc(cap * sizeof *m);
	size_t i = 0;
	while (i < d->n) {
		train_micro mb = {.first = i};
		int row = 0, used = 0;
		while (i < d->n) {
			const train_sample *s = &d->samples[order[i]];
			int len = s->n - 1;
			if (used + len > seq_len) {
				if (row + 1 == rows || used == 0)
					break;
				row++;
				used = 0;
				continue;
			}
			used += len;
			mb.tokens += len;
			for (int j = 1; j < s->n; j++)
				mb.scored += s->trained[j];
			mb.count++;
			i++;
		}
		if (mb.count == 0) {
			/* A sample longer than a row: the loader refuses those, so this
			 * only guards against a caller's mistake (one per micro-batch). */
			const train_sample *s = &d->samples[order[i]];
			mb.count = 1;
			mb.tokens = s->n - 1;
			for (int j = 1; j < s->n; j++)
				mb.scored += s->trained[j];
			i++;
		}
		if (nm == cap) {
			cap *= 2;
			m = owl_xrealloc(m, cap * sizeof *m);
		}
		m[nm++] = mb;
	}
	*out = m;
	*n = nm;
}

void train_batch_buf_init(train_batch_buf *b, int cap)
{
	b->cap = cap;
	b->tokens = owl_xmalloc((size_t)cap * sizeof *b->tokens);
	b->targets = owl_xmalloc((size_t)cap * sizeof *b->targets);
	b->seg = owl_xmalloc((size_t)cap * sizeof *b->seg);
	b->pos = owl_xmalloc((size_t)cap * sizeof *b->pos);
}

void train_batch_buf_release(train_batch_buf *b)
{
	free(b->tokens);
	free(b->targets);
	free(b->seg);
	free(b->pos);
	memset(b, 0, sizeof *b);
}

void train_batch_fill(const train_dataset *d, const uint32_t *order, const train_micro *mb,
		      train_batch_buf *buf, uint64_t dropout_seed, engine_train_batch *out)
{
	int k = 0;
	for (size_t s = 0; s < mb->count; s++) {
		const train_sample *x = &d->samples[order[mb->first + s]];
		for (int j = 0; j + 1 < x->n && k < buf->cap; j++, k++) {
			buf->tokens[k] = x->tokens[j];
			buf->targets[k] = x->trained[j + 1] ? x->tokens[j + 1] : -1;
			buf->seg[k] = (int32_t)s;
			buf->pos[k] = j;
		}
	}
	*out = (engine_train_batch){.n = k, .tokens = buf->tokens, .targets = buf->targets,
				    .seg = buf->seg, .pos = buf->pos, .dropout_seed = dropout_seed};
}
