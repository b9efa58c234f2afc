/* Sampling, chat templates and the generation loop. */
#define _GNU_SOURCE
#include "engine.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- sampling ------------------------------------------------------------------ */

struct engine_sampler {
	engine_sampler_opts o;
	uint64_t rng;
	int vocab;
	int *count;     /* occurrences of each token in the recent window */
	float *probs;
	int *order;
};

static uint64_t next_rand(uint64_t *s)
{
	/* splitmix64: small, fast, and the same sequence for the same seed everywhere. */
	uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

engine_sampler *engine_sampler_new(const engine_sampler_opts *o, int vocab)
{
	engine_sampler *s = owl_xcalloc(1, sizeof *s);
	s->o = *o;
	s->rng = o->seed;
	s->vocab = vocab;
	s->count = owl_xcalloc((size_t)vocab, sizeof *s->count);
	s->probs = owl_xmalloc((size_t)vocab * sizeof *s->probs);
	s->order = owl_xmalloc((size_t)vocab * sizeof *s->order);
	return s;
}

void engine_sampler_free(engine_sampler *s)
{
	if (!s)
		return;
	free(s->count);
	free(s->probs);
	free(s->order);
	free(s);
}

static const float *sort_logits;
static int by_logit_desc(const void *a, const void *b)
{
	float x = sort_logits[*(const int *)a], y = sort_logits[*(const int *)b];
	return x < y ? 1 : x > y ? -1 : (*(const int *)a - *(const int *)b);
}

int engine_sample(engine_sampler *s, float *logits, const int32_t *history, size_t nhist)
{
	const engine_sampler_opts *o = &s->o;
	int V = s->vocab;
	/* Penalties over the recent window (llama.cpp's and OpenAI's meanings). */
	size_t window = o->penalty_last_n > 0 ? (size_t)o->penalty_last_n : 64;
	size_t from = nhist > window ? nhist - window : 0;
	if (o->repeat_penalty != 1.0f || o->frequency_penalty != 0 || o->presence_penalty != 0) {
		for (size_t i = from; i < nhist; i++)
			if (history[i] >= 0 && history[i] < V)
				s->count[history[i]]++;
		for (size_t i = from; i < nhist; i++) {
			int id = history[i];
			if (id < 0 || id >= V || s->count[id] == 0)
				continue;
			float *l = &logits[id];
			if (o->repeat_penalty > 0 && o->repeat_penalty != 1.0f)
				*l = *l > 0 ? *l / o->repeat_penalty : *l * o->repeat_penalty;
			*l -= (float)s->count[id] * o->frequency_penalty + o->presence_penalty;
			s->count[id] = 0; /* each token once */
		}
	}
	if (o->temperature <= 0) {
		int best = 0;
		for (int i = 1; i < V; i++)
			if (logits[i] > logits[best])
				best = i;
		return best;
	}
	for (int i = 0; i < V; i++)
		s->order[i] = i;
	sort_logits = logits;
	qsort(s->order, (size_t)V, sizeof *s->order, by_logit_desc);
	int n = o->top_k > 0 && o->top_k < V ? o->top_k : V;
	float mx = logits[s->order[0]] / o->temperature;
	double sum = 0;
	for (int i = 0; i < n; i++) {
		s->probs[i] = expf(logits[s->order[i]] / o->temperature - mx);
		sum += s->probs[i];
	}
	for (int i = 0; i < n; i++)
		s->probs[i] = (float)(s->probs[i] / sum);
	/* min-p: drop tokens far less likely than the best one. */
	if (o->min_p > 0) {
		int k = 1;
		while (k < n && s->probs[k] >= o->min_p * s->probs[0])
			k++;
		n = k;
	}
	/* top-p: the smallest head whose mass reaches p. */
	if (o->top_p > 0 && o->top_p < 1) {
		double c = 0;
		int k = 0;
		while (k < n) {
			c += s->probs[k++];
			if (c >= o->top_p)
				break;
		}
		n = k;
	}
	double mass = 0;
	for (int i = 0; i < n; i++)
		mass += s->probs[i];
	double r = (double)(next_rand(&s->rng) >> 11) / 9007199254740992.0 * mass;
	for (int i = 0; i < n; i++) {
		r -= s->probs[i];
		if (r <= 0)
			return s->order[i];
	}
	return s->order[n - 1];
}

/* ---- chat templates ---------------------------------------------------------------- */

engine_chat_family engine_chat_detect(const char *tmpl)
{
	if (!tmpl)
		return ENGINE_CHAT_UNKNOWN;
	if (strstr(tmpl, "<|im_start|>"))
		return ENGINE_CHAT_CHATML;
	if (strstr(tmpl, "<|start_header_id|>"))
		return ENGINE_CHAT_LLAMA3;
	if (strstr(tmpl, "<start_of_turn>"))
		return ENGINE_CHAT_GEMMA;
	if (strstr(tmpl, "<|user|>"))
		return ENGINE_CHAT_ZEPHYR;
	if (strstr(tmpl, "[INST]"))
		return ENGINE_CHAT_LLAMA2;
	return ENGINE_CHAT_UNKNOWN;
}

const char *engine_chat_family_name(engine_chat_family f)
{
	static const char *const names[] = {"unknown", "chatml", "llama3", "llama2", "zephyr", "gemma"};
	return names[f];
}

/* Leading and trailing whitespace removed, as the templates' strip() does. */
static void put_stripped(owl_buf *b, const char *s)
{
	while (*s == ' ' || *s == '\n' || *s == '\t' || *s == '\r')
		s++;
	size_t n = strlen(s);
	while (n && (s[n - 1] == ' ' || s[n - 1] == '\n' || s[n - 1] == '\t' || s[n - 1] == '\r'))
		n--;
	owl_buf_append(b, s, n);
}

char *engine_chat_render(engine_chat_family f, const engine_chat_msg *msgs, size_t n, int add_gen,
			 const char *bos, const char *eos)
{
	owl_buf b;
	owl_buf_init(&b, 64u << 20);
	bos = bos ? bos : "";
	eos = eos ? eos : "";
	const char *system = NULL;
	size_t first = 0;
	if (n && strcmp(msgs[0].role, "system") == 0 && f != ENGINE_CHAT_CHATML &&
	    f != ENGINE_CHAT_LLAMA3 && f != ENGINE_CHAT_ZEPHYR && f != ENGINE_CHAT_UNKNOWN) {
		system = msgs[0].content;
		first = 1;
	}
	switch (f) {
	case ENGINE_CHAT_UNKNOWN:
	case ENGINE_CHAT_CHATML:
		for (size_t i = 0; i < n; i++)
			owl_buf_printf(&b, "<|im_start|>%s\n%s<|im_end|>\n", msgs[i].role, msgs[i].content);
		if (add_gen)
			owl_buf_printf(&b, "<|im_start|>assistant\n");
		break;
	case ENGINE_CHAT_LLAMA3:
		owl_buf_printf(&b, "%s", bos);
		for (size_t i = 0; i < n; i++) {
			owl_buf_printf(&b, "<|start_header_id|>%s<|end_header_id|>\n\n", msgs[i].role);
			put_stripped(&b, msgs[i].content);
			owl_buf_printf(&b, "<|eot_id|>");
		}
		if (add_gen)
			owl_buf_printf(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
		break;
	case ENGINE_CHAT_LLAMA2:
		for (size_t i = first, k = 0; i < n; i++, k++) {
			if (strcmp(msgs[i].role, "user") == 0) {
				owl_buf_printf(&b, "%s[INST] ", bos);
				if (system && i == first) {
					owl_buf_printf(&b, "<<SYS>>\n%s\n<</SYS>>\n\n", system);
					owl_buf_printf(&b, "%s", msgs[i].content);
					/* the template strips the combined content */
				} else {
					put_stripped(&b, msgs[i].content);
				}
				owl_buf_printf(&b, " [/INST]");
			} else {
				owl_buf_printf(&b, " ");
				put_stripped(&b, msgs[i].content);
				owl_buf_printf(&b, " %s", eos);
			}
		}
		break;
	case ENGINE_CHAT_ZEPHYR:
		for (size_t i = 0; i < n; i++)
			owl_buf_printf(&b, "<|%s|>\n%s%s\n", msgs[i].role, msgs[i].content, eos);
		if (add_gen)
			owl_buf_printf(&b, "<|assistant|>\n");
		break;
	case ENGINE_CHAT_GEMMA:
		owl_buf_printf(&b, "%s", bos);
		for (size_t i = first; i < n; i++) {
			const char *role = strcmp(msgs[i].role, "assistant") == 0 ? "model" : msgs[i].role;
			owl_buf_printf(&b, "<start_of_turn>%s\n", role);
			if (system && i == first)
				owl_buf_printf(&b, "%s\n\n", system);
			put_stripped(&b, msgs[i].content);
			owl_buf_printf(&b, "<end_of_turn>\n");
		}
		if (add_gen)
			owl_buf_printf(&b, "<start_of_turn>model\n");
		break;
	}
	char *s = b.len ? owl_buf_steal(&b) : owl_xstrdup("");
	owl_buf_release(&b);
	return s;
}

/* ---- generation ------------------------------------------------------------------------ */

int engine_generate(engine_session *sess, const engine_tokenizer *tok, const int32_t *prompt,
		    size_t nprompt, const engine_gen_opts *o, engine_emit_fn emit, void *emit_ctx,
		    engine_gen_stats *st, owl_err *err)
{
	memset(st, 0, sizeof *st);
	/* The model's vocabulary may be padded beyond the tokenizer's. */
	int vocab = o->vocab > 0 ? o->vocab : engine_token_count(tok);
	float *logits = owl_xmalloc((size_t)vocab * sizeof *logits);
	size_t cap = nprompt + (size_t)(o->max_tokens > 0 ? o->max_tokens : 0) + 1;
	int32_t *hist = owl_xmalloc(cap * sizeof *hist);
	memcpy(hist, prompt, nprompt * sizeof *hist);
	size_t nh = nprompt;
	engine_sampler *smp = engine_sampler_new(&o->sampling, vocab);
	double t0 = owl_now();
	int rc = 0;
	/* Prompt processing in chunks, so a long prompt never needs one huge batch. */
	for (size_t i = 0; i < nprompt && !rc; i += 512) {
		size_t n = nprompt - i < 512 ? nprompt - i : 512;
		rc = engine_forward(sess, prompt + i, (int)n, logits, 0, err);
	}
	st->prompt_tokens = (int)nprompt;
	st->prompt_s = owl_now() - t0;
	engine_detok d;
	engine_detok_init(&d, tok);
	owl_buf text; /* everything generated, to find stop strings */
	owl_buf_init(&text, 64u << 20);
	size_t emitted = 0;
	size_t hold = 0;
	for (int k = 0; k < o->nstop; k++)
		if (strlen(o->stop[k]) > hold)
			hold = strlen(o->stop[k]);
	double t1 = owl_now();
	snprintf(st->stop_reason, sizeof st->stop_reason, "max_tokens");
	for (int g = 0; !rc && g < o->max_tokens; g++) {
		int id = engine_sample(smp, logits, hist, nh);
		if (engine_token_is_eog(tok, id)) {
			snprintf(st->stop_reason, sizeof st->stop_reason, "eos");
			break;
		}
		hist[nh++] = id;
		st->gen_tokens++;
		char piece[256];
		size_t pl = engine_detok_feed(&d, id, piece, sizeof piece);
		owl_buf_append(&text, piece, pl);
		/* A stop string ends the text before it; hold back bytes that could
		 * still become the start of one. */
		int stopped = 0;
		for (int k = 0; k < o->nstop && text.len; k++) {
			char *hit = memmem(text.data, text.len, o->stop[k], strlen(o->stop[k]));
			if (hit) {
				text.len = (size_t)(hit - text.data);
				stopped = 1;
			}
		}
		size_t ready = stopped ? text.len : text.len > hold ? text.len - hold : 0;
		if (ready > emitted && emit)
			emit(emit_ctx, text.data + emitted, ready - emitted);
		if (ready > emitted)
			emitted = ready;
		if (stopped) {
			snprintf(st->stop_reason, sizeof st->stop_reason, "stop");
			break;
		}
		if (engine_session_pos(sess) >= engine_session_ctx(sess)) {
			snprintf(st->stop_reason, sizeof st->stop_reason, "context_full");
			break;
		}
		rc = engine_forward(sess, &id, 1, logits, 0, err);
		if (!rc)
			st->gen_cached++;
	}
	if (!rc && text.len > emitted && emit && strcmp(st->stop_reason, "stop") != 0)
		emit(emit_ctx, text.data + emitted, text.len - emitted);
	st->gen_s = owl_now() - t1;
	owl_buf_release(&text);
	engine_sampler_free(smp);
	/* The generated ids that entered the KV cache (the last sampled one
	 * enters only if generation went on after it). */
	st->tokens = owl_xmalloc((size_t)(st->gen_cached + 1) * sizeof *st->tokens);
	memcpy(st->tokens, hist + nprompt, (size_t)st->gen_cached * sizeof *st->tokens);
	free(hist);
	free(logits);
	return rc;
}
