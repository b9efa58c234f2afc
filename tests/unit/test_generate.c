/* The sampler and the per-request generation state: top-k found without
 * sorting the vocabulary picks only among the k best, the same seed gives
 * the same tokens, stop strings and max_tokens end a state, and states
 * stepped from several threads at once give what each gives alone (this
 * binary also runs under ThreadSanitizer as test_generate_tsan). */
#include "test.h"

#include <pthread.h>

#include "common/common.h"
#include "engine/engine.h"

enum { V = 512 };

static uint64_t lcg(uint64_t *s)
{
	*s = *s * 6364136223846793005ull + 1442695040888963407ull;
	return *s >> 33;
}

/* Logits with many ties, as quantised models give. */
static void fill_logits(float *l, uint64_t seed)
{
	for (int i = 0; i < V; i++)
		l[i] = (float)(lcg(&seed) % 64) / 8.0f;
}

static void top_k_picks_among_the_k_best(void)
{
	float logits[V], copy[V];
	for (int k = 1; k <= 40; k += 13) {
		engine_sampler_opts o = {.temperature = 1.5f, .top_k = k, .top_p = 1, .repeat_penalty = 1,
					 .seed = (uint64_t)k};
		engine_sampler *s = engine_sampler_new(&o, V);
		for (int draw = 0; draw < 300; draw++) {
			fill_logits(logits, (uint64_t)draw * 7 + 1);
			memcpy(copy, logits, sizeof copy);
			int id = engine_sample(s, logits, NULL, 0);
			/* id is among the k best if fewer than k tokens rank above it */
			int above = 0;
			for (int i = 0; i < V; i++)
				above += copy[i] > copy[id] || (copy[i] == copy[id] && i < id);
			CHECK(above < k, "top_k %d drew token %d with %d better tokens", k, id, above);
		}
		engine_sampler_free(s);
	}
	/* top_k 1 is the best token, the lowest id among equals. */
	engine_sampler_opts o = {.temperature = 1, .top_k = 1, .top_p = 1, .repeat_penalty = 1};
	engine_sampler *s = engine_sampler_new(&o, V);
	for (int i = 0; i < V; i++)
		logits[i] = i == 100 || i == 300 ? 5.0f : 0.0f;
	CHECK_INT(engine_sample(s, logits, NULL, 0), 100);
	engine_sampler_free(s);
}

static void same_seed_same_tokens(void)
{
	engine_sampler_opts o = {.temperature = 0.9f, .top_k = 40, .top_p = 0.9f, .min_p = 0.01f,
				 .repeat_penalty = 1.1f, .seed = 42};
	engine_sampler *a = engine_sampler_new(&o, V), *b = engine_sampler_new(&o, V);
	float la[V], lb[V];
	int32_t hist[64];
	int differ = 0, distinct = 0;
	for (int i = 0; i < 64; i++) {
		fill_logits(la, (uint64_t)i + 3);
		memcpy(lb, la, sizeof la);
		int x = engine_sample(a, la, hist, (size_t)i), y = engine_sample(b, lb, hist, (size_t)i);
		differ += x != y;
		distinct += i > 0 && x != hist[i - 1];
		hist[i] = x;
	}
	CHECK_INT(differ, 0);
	CHECK(distinct > 10, "the sampler hardly varies: %d changes in 64 draws", distinct);
	engine_sampler_free(a), engine_sampler_free(b);
}

static engine_tokenizer *tok;

typedef struct run {
	uint64_t seed;
	int32_t tokens[64];
	int n;
	char text[4096];
	size_t len;
	char reason[16];
} run;

static void collect(void *ctx, const char *t, size_t n)
{
	run *r = ctx;
	if (r->len + n < sizeof r->text) {
		memcpy(r->text + r->len, t, n);
		r->len += n;
	}
}

/* One request's generation over logits derived from its own history, as a
 * model would give them. */
static void *generate(void *arg)
{
	run *r = arg;
	engine_gen_opts o = {.max_tokens = 48, .vocab = V,
			     .sampling = {.temperature = 0.8f, .top_k = 20, .top_p = 0.95f,
					  .repeat_penalty = 1.1f, .seed = r->seed}};
	static const char *const stop[] = {"zzzz"};
	o.stop = stop;
	o.nstop = 1;
	owl_err err = {0};
	engine_gen *g = NULL;
	int32_t prompt[3] = {5, 6, 7};
	if (engine_gen_new(tok, &o, prompt, 3, collect, r, &g, &err))
		return NULL;
	float logits[V];
	int32_t next;
	uint64_t h = r->seed;
	do {
		fill_logits(logits, h);
		for (int i = 500; i < V; i++)
			logits[i] = -100; /* keep clear of the special tokens */
	} while (engine_gen_step(g, logits, &next) && (h = h * 31 + (uint64_t)next, 1));
	r->n = engine_gen_count(g);
	memcpy(r->tokens, engine_gen_tokens(g), (size_t)r->n * sizeof(int32_t));
	snprintf(r->reason, sizeof r->reason, "%s", engine_gen_stop_reason(g));
	engine_gen_free(g);
	return NULL;
}

static void states_on_threads_equal_alone(void)
{
	enum { N = 6 };
	run alone[N], together[N];
	memset(alone, 0, sizeof alone);
	memset(together, 0, sizeof together);
	for (int i = 0; i < N; i++) {
		alone[i].seed = together[i].seed = 100 + (uint64_t)i;
		generate(&alone[i]);
	}
	pthread_t th[N];
	for (int i = 0; i < N; i++)
		pthread_create(&th[i], NULL, generate, &together[i]);
	for (int i = 0; i < N; i++)
		pthread_join(th[i], NULL);
	for (int i = 0; i < N; i++) {
		CHECK(alone[i].n == 48 && strcmp(alone[i].reason, "max_tokens") == 0,
		      "request %d: %d tokens, %s", i, alone[i].n, alone[i].reason);
		CHECK(together[i].n == alone[i].n &&
		      memcmp(together[i].tokens, alone[i].tokens, (size_t)alone[i].n * 4) == 0 &&
		      together[i].len == alone[i].len &&
		      memcmp(together[i].text, alone[i].text, alone[i].len) == 0,
		      "request %d differs when run beside others", i);
	}
	CHECK(memcmp(alone[0].tokens, alone[1].tokens, sizeof alone[0].tokens) != 0,
	      "two seeds gave the same tokens");
}

static void stop_string_and_limits(void)
{
	owl_err err = {0};
	engine_gen *g = NULL;
	/* A stop string made of the text of two tokens ends generation, and
	 * its text is never emitted. */
	const char *a = engine_token_text(tok, 300), *b = engine_token_text(tok, 301);
	(void)a, (void)b;
	owl_buf want;
	owl_buf_init(&want, 1 << 20);
	engine_token_bytes(tok, 300, &want);
	engine_token_bytes(tok, 301, &want);
	owl_buf_append(&want, "", 1);
	const char *stop[1] = {want.data};
	engine_gen_opts o = {.max_tokens = 10, .vocab = V, .stop = stop, .nstop = 1,
			     .sampling = {.temperature = 0}};
	run r = {0};
	CHECK_INT(engine_gen_new(tok, &o, NULL, 0, collect, &r, &g, &err), 0);
	float logits[V];
	int32_t next, seq[3] = {200, 300, 301};
	int steps = 0;
	for (int i = 0; i < 3; i++) {
		for (int j = 0; j < V; j++)
			logits[j] = j == seq[i] ? 10.0f : 0.0f;
		steps += engine_gen_step(g, logits, &next);
	}
	CHECK_INT(steps, 2);
	CHECK_STR(engine_gen_stop_reason(g), "stop");
	owl_buf first;
	owl_buf_init(&first, 1 << 20);
	engine_token_bytes(tok, 200, &first);
	CHECK(r.len == first.len && memcmp(r.text, first.data, first.len) == 0,
	      "emitted %zu bytes, want the first token's %zu", r.len, first.len);
	engine_gen_free(g);
	owl_buf_release(&want);
	owl_buf_release(&first);
	/* Sizes a client sets are bounded: an error, not an allocation. */
	engine_gen_opts huge = {.max_tokens = 1 << 30, .vocab = V};
	g = NULL;
	CHECK_INT(engine_gen_new(tok, &huge, NULL, 0, NULL, NULL, &g, &err), OWL_EUSAGE);
	CHECK(g == NULL, "a refused state was returned");
}

/* engine_gen_opts.agree (processes of a launch taking rank 0's token): a
 * state whose own draws differ follows the agreed tokens exactly, its text
 * and its stop included. */
typedef struct agreed {
	const int32_t *tokens;
	int n, next, calls;
} agreed;

static int agree_with(void *ctx, int32_t *token)
{
	agreed *a = ctx;
	a->calls++;
	if (a->next >= a->n)
		return -1; /* the other side is gone */
	*token = a->tokens[a->next++];
	return 0;
}

static void agree_replaces_the_sampled_token(void)
{
	run leader = {.seed = 1};
	generate(&leader);
	CHECK(leader.n > 8, "the leader generated %d tokens", leader.n);
	agreed ag = {.tokens = leader.tokens, .n = leader.n};
	engine_gen_opts o = {.max_tokens = leader.n, .vocab = V,
			     .sampling = {.temperature = 0.8f, .top_k = 20, .top_p = 0.95f,
					  .repeat_penalty = 1.1f, .seed = 999},
			     .agree = agree_with, .agree_ctx = &ag};
	owl_err err = {0};
	engine_gen *g = NULL;
	int32_t prompt[3] = {5, 6, 7}, next;
	run follower = {0};
	CHECK_INT(engine_gen_new(tok, &o, prompt, 3, collect, &follower, &g, &err), 0);
	float logits[V];
	uint64_t h = 12345; /* other logits than the leader's */
	do {
		fill_logits(logits, h);
		for (int i = 500; i < V; i++)
			logits[i] = -100;
	} while (engine_gen_step(g, logits, &next) && (h = h * 31 + (uint64_t)next, 1));
	CHECK_INT(engine_gen_count(g), leader.n);
	CHECK(memcmp(engine_gen_tokens(g), leader.tokens, (size_t)leader.n * sizeof(int32_t)) == 0,
	      "the follower's tokens are not the leader's");
	CHECK(follower.len == leader.len && memcmp(follower.text, leader.text, leader.len) == 0,
	      "the follower's text is not the leader's");
	CHECK_INT(ag.calls, leader.n);
	engine_gen_free(g);
	/* Without the hook the same state draws its own tokens. */
	run alone = {.seed = 999};
	generate(&alone);
	CHECK(alone.n != leader.n || memcmp(alone.tokens, leader.tokens, (size_t)leader.n * 4) != 0,
	      "seed 999 drew the leader's tokens by itself: the test shows nothing");
	/* An agreement that fails ends the generation, with the reason. */
	ag.next = ag.n;
	ag.calls = 0;
	CHECK_INT(engine_gen_new(tok, &o, prompt, 3, NULL, NULL, &g, &err), 0);
	fill_logits(logits, 1);
	CHECK_INT(engine_gen_step(g, logits, &next), 0);
	CHECK_STR(engine_gen_stop_reason(g), "error");
	engine_gen_free(g);
}

int main(void)
{
	const char *root = getenv("OWL_ROOT");
	char *path = owl_xasprintf("%s/tests/fuzz/corpus/tokenizer_json/bpe.json", root ? root : ".");
	char *text = NULL;
	size_t len = 0;
	owl_err err = {0};
	if (owl_read_file(path, 1 << 24, &text, &len, &err) || engine_tokenizer_fuzz_load(text, &tok, &err)) {
		printf("FAIL tokenizer_loads: %s\n", err.msg);
		return 1;
	}
	free(text);
	free(path);
	RUN_TEST(top_k_picks_among_the_k_best);
	RUN_TEST(same_seed_same_tokens);
	RUN_TEST(states_on_threads_equal_alone);
	RUN_TEST(stop_string_and_limits);
	RUN_TEST(agree_replaces_the_sampled_token);
	engine_tokenizer_free(tok);
	TEST_MAIN_END();
}
