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

/* Candidate order: higher logit first, the lower id first among equals. */
static int ranks_before(const float *logits, int a, int b)
{
	return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
}

/* heap[0..n) is a min-heap in candidate order (its root the weakest). */
static void sift_down(int *heap, int n, int i, const float *logits)
{
	for (;;) {
		int l = 2 * i + 1, r = l + 1, w = i;
		if (l < n && ranks_before(logits, heap[w], heap[l]))
			w = l;
		if (r < n && ranks_before(logits, heap[w], heap[r]))
			w = r;
		if (w == i)
			return;
		int t = heap[i];
		heap[i] = heap[w];
		heap[w] = t;
		i = w;
	}
}

/* The k best candidates into order[0..k), best first, in O(V log k): a
 * heap of the k best so far, then sorted in place (heapsort), so top-k
 * never sorts the whole vocabulary. */
static void top_candidates(const float *logits, int V, int k, int *order)
{
	for (int i = 0; i < k; i++)
		order[i] = i;
	for (int i = k / 2 - 1; i >= 0; i--)
		sift_down(order, k, i, logits);
	for (int i = k; i < V; i++)
		if (ranks_before(logits, i, order[0])) {
			order[0] = i;
			sift_down(order, k, 0, logits);
		}
	/* Repeatedly move the weakest to the end: best first when done. */
	for (int n = k - 1; n > 0; n--) {
		int t = order[0];
		order[0] = order[n];
		order[n] = t;
		sift_down(order, n, 0, logits);
	}
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
	int n = o->top_k > 0 && o->top_k < V ? o->top_k : V;
	top_candidates(logits, V, n, s->order);
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

int engine_sampler_device_row(engine_sampler *s, engine_row_sample *rs)
{
	const engine_sampler_opts *o = &s->o;
	memset(rs, 0, sizeof *rs);
	/* The op has no penalties (they need the history on the device) and
	 * no min_p: those requests keep the host's sampler. */
	if (o->repeat_penalty != 1.0f || o->frequency_penalty != 0 || o->presence_penalty != 0 ||
	    o->min_p > 0)
		return 0;
	rs->device = 1;
	rs->temperature = o->temperature > 0 ? o->temperature : 0;
	rs->top_k = o->top_k;
	rs->top_p = o->top_p;
	if (rs->temperature > 0) {
		/* One draw per sampled token, as engine_sample takes it; in float,
		 * as the op takes it, kept below 1. */
		float u = (float)((double)(next_rand(&s->rng) >> 11) / 9007199254740992.0);
		rs->u = u < 1.0f ? u : nextafterf(1.0f, 0.0f);
	}
	return 1;
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

/* One request's generation: its sampler, the tokens so far (the penalty
 * history), the streaming detokenizer and the text that stop strings are
 * looked for in. The caller runs the model and feeds logits in. */
struct engine_gen {
	const engine_tokenizer *tok;
	engine_gen_opts o;
	char **stop;         /* owned copies of o.stop */
	engine_sampler *smp;
	int32_t *hist;
	size_t nh, nprompt, cap;
	engine_detok d;
	owl_buf text;        /* everything generated, to find stop strings in */
	size_t emitted, hold;
	int done, generated;
	char stop_reason[16];
	engine_emit_fn emit;
	void *emit_ctx;
};

int engine_gen_new(const engine_tokenizer *tok, const engine_gen_opts *o, const int32_t *prompt,
		   size_t nprompt, engine_emit_fn emit, void *emit_ctx, engine_gen **out, owl_err *err)
{
	*out = NULL;
	int vocab = o->vocab > 0 ? o->vocab : engine_token_count(tok);
	if (o->max_tokens < 0 || o->max_tokens > (1 << 24) || nprompt > (1u << 24))
		return owl_err_set(err, OWL_EUSAGE, "max_tokens %d with a prompt of %zu tokens is out of "
				   "range", o->max_tokens, nprompt);
	if (o->nstop < 0 || o->nstop > 64)
		return owl_err_set(err, OWL_EUSAGE, "%d stop strings: at most 64", o->nstop);
	engine_gen *g = calloc(1, sizeof *g);
	if (!g)
		return owl_err_set(err, OWL_EFAIL, "cannot allocate a generation state");
	g->tok = tok;
	g->o = *o;
	g->o.vocab = vocab;
	g->emit = emit;
	g->emit_ctx = emit_ctx;
	g->cap = nprompt + (size_t)o->max_tokens + 1;
	g->hist = malloc(g->cap * sizeof *g->hist);
	g->stop = calloc((size_t)(o->nstop > 0 ? o->nstop : 1), sizeof *g->stop);
	g->smp = g->hist && g->stop ? engine_sampler_new(&o->sampling, vocab) : NULL;
	if (!g->smp) {
		engine_gen_free(g);
		return owl_err_set(err, OWL_EFAIL, "cannot allocate a generation state for %zu tokens",
				   g->cap);
	}
	for (int k = 0; k < o->nstop; k++) {
		size_t len = strlen(o->stop[k]);
		if (len == 0 || len > 1024) {
			engine_gen_free(g);
			return owl_err_set(err, OWL_EUSAGE, "stop string %d is %s", k + 1,
					   len ? "longer than 1024 bytes" : "empty");
		}
		g->stop[k] = owl_xstrdup(o->stop[k]);
		g->hold = len > g->hold ? len : g->hold;
	}
	g->o.stop = (const char *const *)g->stop;
	if (nprompt)
		memcpy(g->hist, prompt, nprompt * sizeof *g->hist);
	g->nh = g->nprompt = nprompt;
	engine_detok_init(&g->d, tok);
	owl_buf_init(&g->text, 64u << 20);
	snprintf(g->stop_reason, sizeof g->stop_reason, "max_tokens");
	g->done = o->max_tokens == 0;
	*out = g;
	return 0;
}

void engine_gen_free(engine_gen *g)
{
	if (!g)
		return;
	for (int k = 0; g->stop && k < g->o.nstop; k++)
		free(g->stop[k]);
	free(g->stop);
	engine_sampler_free(g->smp);
	free(g->hist);
	owl_buf_release(&g->text);
	free(g);
}

static void gen_finish(engine_gen *g, const char *reason)
{
	g->done = 1;
	snprintf(g->stop_reason, sizeof g->stop_reason, "%s", reason);
	/* What was held back for a stop string that never came is text too. */
	if (strcmp(reason, "stop") != 0 && g->text.len > g->emitted && g->emit)
		g->emit(g->emit_ctx, g->text.data + g->emitted, g->text.len - g->emitted);
	g->emitted = g->text.len;
}

int engine_gen_step(engine_gen *g, float *logits, int32_t *next)
{
	*next = -1;
	if (g->done)
		return 0;
	return engine_gen_step_token(g, engine_sample(g->smp, logits, g->hist, g->nh), next);
}

int engine_gen_device_row(engine_gen *g, engine_row_sample *rs)
{
	if (g->done) {
		memset(rs, 0, sizeof *rs);
		return 0;
	}
	return engine_sampler_device_row(g->smp, rs);
}

int engine_gen_step_token(engine_gen *g, int32_t id, int32_t *next)
{
	*next = -1;
	if (g->done)
		return 0;
	if (g->o.agree && g->o.agree(g->o.agree_ctx, &id)) {
		gen_finish(g, "error");
		return 0;
	}
	if (id < 0 || (g->o.vocab > 0 && id >= g->o.vocab)) {
		gen_finish(g, "error");
		return 0;
	}
	if (engine_token_is_eog(g->tok, id)) {
		gen_finish(g, "eos");
		return 0;
	}
	g->hist[g->nh++] = id;
	g->generated++;
	char piece[256];
	size_t pl = engine_detok_feed(&g->d, id, piece, sizeof piece);
	owl_buf_append(&g->text, piece, pl);
	/* A stop string ends the text before it; hold back bytes that could
	 * still become the start of one. */
	int stopped = 0;
	for (int k = 0; k < g->o.nstop && g->text.len; k++) {
		char *hit = memmem(g->text.data, g->text.len, g->stop[k], strlen(g->stop[k]));
		if (hit) {
			g->text.len = (size_t)(hit - g->text.data);
			stopped = 1;
		}
	}
	size_t ready = stopped ? g->text.len : g->text.len > g->hold ? g->text.len - g->hold : 0;
	if (ready > g->emitted && g->emit)
		g->emit(g->emit_ctx, g->text.data + g->emitted, ready - g->emitted);
	if (ready > g->emitted)
		g->emitted = ready;
	if (stopped) {
		gen_finish(g, "stop");
		return 0;
	}
	if (g->generated >= g->o.max_tokens) {
		gen_finish(g, "max_tokens");
		return 0;
	}
	*next = id;
	return 1;
}

void engine_gen_stop(engine_gen *g, const char *reason)
{
	if (!g->done)
		gen_finish(g, reason);
}

int engine_gen_done(const engine_gen *g) { return g->done; }
const char *engine_gen_stop_reason(const engine_gen *g) { return g->stop_reason; }
int engine_gen_count(const engine_gen *g) { return g->generated; }
const int32_t *engine_gen_tokens(const engine_gen *g) { return g->hist + g->nprompt; }

int engine_generate(engine_session *sess, const engine_tokenizer *tok, const int32_t *prompt,
		    size_t nprompt, const engine_gen_opts *o, engine_emit_fn emit, void *emit_ctx,
		    engine_gen_stats *st, owl_err *err)
{
	memset(st, 0, sizeof *st);
	/* The model's vocabulary may be padded beyond the tokenizer's. */
	int vocab = o->vocab > 0 ? o->vocab : engine_token_count(tok);
	engine_gen *g = NULL;
	int rc = engine_gen_new(tok, o, prompt, nprompt, emit, emit_ctx, &g, err);
	float *logits = rc ? NULL : malloc((size_t)vocab * sizeof *logits);
	if (!rc && !logits)
		rc = owl_err_set(err, OWL_EFAIL, "cannot allocate logits for a vocabulary of %d", vocab);
	/* On a device backend the last position's logits are sampled where
	 * they are, so only the token crosses to the host (rs.device); the
	 * request's draw is taken just before the pass whose logits it picks
	 * from, as the host's sampler takes it just after. */
	const int on_device = engine_session_can_sample(sess);
	engine_row_sample rs = {0};
	int32_t picked = -1;
	double t0 = owl_now();
	/* Prompt processing in chunks, so a long prompt never needs one huge batch. */
	for (size_t i = 0; i < nprompt && !rc; i += 512) {
		size_t n = nprompt - i < 512 ? nprompt - i : 512;
		if (on_device && i + n == nprompt)
			engine_gen_device_row(g, &rs);
		rc = engine_forward_sample(sess, prompt + i, (int)n, &rs, &picked, logits, err);
	}
	st->prompt_tokens = (int)nprompt;
	st->prompt_s = owl_now() - t0;
	double t1 = owl_now();
	int32_t id;
	while (!rc && (rs.device ? engine_gen_step_token(g, picked, &id)
				 : engine_gen_step(g, logits, &id))) {
		if (engine_session_pos(sess) >= engine_session_ctx(sess)) {
			engine_gen_stop(g, "context_full");
			break;
		}
		if (on_device)
			engine_gen_device_row(g, &rs);
		rc = engine_forward_sample(sess, &id, 1, &rs, &picked, logits, err);
		if (!rc)
			st->gen_cached++;
	}
	st->gen_s = owl_now() - t1;
	if (g) {
		st->gen_tokens = engine_gen_count(g);
		snprintf(st->stop_reason, sizeof st->stop_reason, "%s", engine_gen_stop_reason(g));
		/* The generated ids that entered the KV cache (the last sampled one
		 * enters only if generation went on after it). */
		st->tokens = owl_xmalloc((size_t)(st->gen_cached + 1) * sizeof *st->tokens);
		memcpy(st->tokens, engine_gen_tokens(g), (size_t)st->gen_cached * sizeof *st->tokens);
	}
	engine_gen_free(g);
	free(logits);
	return rc;
}
