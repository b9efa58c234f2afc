/* The server's request parser (deploy/api.c) and its scheduler
 * (deploy/sched.c) driven from many threads at once, as the HTTP threads
 * drive it: jobs submitted together join one running batch and each gets
 * the greedy text it gets alone; a bounded queue refuses what does not fit;
 * a cancelled job frees its slot. This binary also runs under
 * ThreadSanitizer (test_serve_tsan). The model is a fixture written by
 * $OWL_BUILD/owl-fixture. */
#include "test.h"

#include <pthread.h>
#include <unistd.h>

#include "common/common.h"
#include "deploy/api.h"
#include "deploy/sched.h"

static int parse(api_kind k, const char *body, api_request *r, api_error *e)
{
	return api_parse_request(k, body, strlen(body), r, e);
}

static void parses_completions_and_chat(void)
{
	api_request r;
	api_error e = {0};
	CHECK_INT(parse(API_COMPLETIONS, "{\"model\":\"m\",\"prompt\":[\"hi\"],\"max_tokens\":5,"
			"\"stop\":\"x\",\"seed\":3,\"logprobs\":2,\"stream\":true,"
			"\"stream_options\":{\"include_usage\":true}}", &r, &e), 0);
	CHECK_STR(r.prompt, "hi");
	CHECK_INT(r.max_tokens, 5);
	CHECK_INT(r.nstop, 1);
	CHECK_INT(r.has_seed, 1);
	CHECK_INT(r.logprobs, 1);
	CHECK_INT(r.top_logprobs, 2);
	CHECK_INT(r.include_usage, 1);
	api_request_free(&r);
	CHECK_INT(parse(API_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"developer\",\"content\":"
			"\"be brief\"},{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
			"{\"type\":\"text\",\"text\":\"b\"}]}],\"max_tokens\":9,\"max_completion_tokens\":4}",
			&r, &e), 0);
	CHECK_INT(r.nmsgs, 2);
	CHECK_STR(r.msgs[0].role, "system");
	CHECK_STR(r.msgs[1].content, "ab");
	CHECK_INT(r.max_tokens, 4);
	CHECK_INT(r.temperature == 1 && r.top_p == 1, 1);
	api_request_free(&r);
	CHECK_INT(parse(API_COMPLETIONS, "{\"model\":\"m\",\"prompt\":[1,2,3]}", &r, &e), 0);
	CHECK_INT(r.nprompt_ids, 3);
	CHECK_INT(r.max_tokens, -1);
	api_request_free(&r);
}

static void refuses_with_the_param_named(void)
{
	static const struct {
		api_kind k;
		const char *body, *param;
	} cases[] = {
		{API_COMPLETIONS, "{\"model\":\"m\"}", "prompt"},
		{API_COMPLETIONS, "{\"prompt\":\"x\"}", "model"},
		{API_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\",\"max_tokens\":0}", "max_tokens"},
		{API_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\",\"temperature\":3}", "temperature"},
		{API_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\",\"top_p\":0}", "top_p"},
		{API_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\",\"n\":2}", "n"},
		{API_COMPLETIONS, "{\"model\":\"m\",\"prompt\":[\"a\",\"b\"]}", "prompt"},
		{API_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\",\"stop\":[1]}", "stop"},
		{API_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\",\"logprobs\":true}", "logprobs"},
		{API_CHAT, "{\"model\":\"m\",\"messages\":[]}", "messages"},
		{API_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", "messages"},
		{API_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\"}],\"top_logprobs\":2}",
		 "top_logprobs"},
		{API_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\"}],\"tools\":[{}]}", "tools"},
		/* NUL inside a string: refused by the JSON reader itself. */
		{API_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\\u0000b\"}]}",
		 ""},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		api_request r;
		api_error e = {0};
		int rc = parse(cases[i].k, cases[i].body, &r, &e);
		CHECK(rc == -1 && e.status == 400 && !strcmp(e.param, cases[i].param),
		      "%s: rc %d status %d param '%s' (%s)", cases[i].body, rc, e.status, e.param, e.message);
	}
	api_request r;
	api_error e = {0};
	CHECK_INT(parse(API_COMPLETIONS, "{\"model\": ", &r, &e), -1);
	CHECK_STR(e.code, "invalid_json");
	char *j = api_error_json(&e);
	CHECK(strstr(j, "\"error\":{") && strstr(j, "\"param\":null") && strstr(j, "\"code\":\"invalid_json\""),
	      "%s", j);
	free(j);
}

/* ---- the scheduler ------------------------------------------------------------------ */

static char *model_dir;

static srv_rev *load_kv(int max_batch, int max_queue, int kv_tokens, int prefill, srv_metrics *met)
{
	deploy_spec *sp = owl_xcalloc(1, sizeof *sp);
	sp->deployment = owl_xstrdup("t");
	sp->revision = 1;
	sp->model_dir = owl_xstrdup(model_dir);
	sp->threads = 1;
	srv_rev_opts o = {.max_batch = max_batch, .max_queue = max_queue, .queue_timeout_s = 60,
			  .prefill_chunk = prefill, .kv_tokens = kv_tokens};
	srv_rev *r = NULL;
	owl_err err = {0};
	if (srv_rev_load(sp, &o, met, &r, &err))
		CHECK(0, "load: %s", err.msg);
	return r;
}

static srv_rev *load(int max_batch, int max_queue, srv_metrics *met)
{
	return load_kv(max_batch, max_queue, 0, 16, met);
}

/* A job for prompt, greedy, from whichever thread calls it. */
static srv_job *make_job(srv_rev *r, const char *prompt, int max_tokens)
{
	int32_t *ids = NULL;
	size_t n = 0;
	owl_err err = {0};
	if (engine_tokenize(r->tok, prompt, strlen(prompt), 1, 0, &ids, &n, &err))
		return NULL;
	srv_job *j = srv_job_new(ids, n, NULL, -1, 0, 0);
	engine_gen_opts g = {.max_tokens = max_tokens, .vocab = r->vocab,
			     .sampling = {.temperature = 0, .top_p = 1, .repeat_penalty = 1}};
	if (engine_gen_new(r->tok, &g, ids, n, srv_job_emit, j, &j->gen, &err)) {
		srv_job_release(j);
		return NULL;
	}
	return j;
}

/* Submits and waits; the text, or NULL with *status the error's status. */
static char *run_job(srv_rev *r, srv_job *j, int *status)
{
	api_error e = {0};
	*status = 200;
	if (srv_rev_submit(r, j, &e)) {
		*status = e.status;
		srv_job_release(j);
		return NULL;
	}
	pthread_mutex_lock(&j->mu);
	while (j->state < SRV_DONE)
		pthread_cond_wait(&j->cv, &j->mu);
	char *text = j->state == SRV_DONE ? strndup(j->text.data ? j->text.data : "", j->text.len) : NULL;
	if (!text)
		*status = j->err.status;
	pthread_mutex_unlock(&j->mu);
	srv_job_release(j);
	return text;
}

static const char *const prompts[] = {
	"The sky is", "Once upon a time", "x",
	"A prompt long enough to be fed in several chunks of sixteen tokens, one per step",
	"A prompt long enough to be fed in several chunks of sixteen tokens, and another",
	"Hello", "1 2 3", "owls",
};
enum { NP = sizeof prompts / sizeof *prompts, THREADS = 8, PER_THREAD = 3 };
static char *alone[NP];

typedef struct worker {
	srv_rev *r;
	int id, mismatches, failures;
} worker;

static void *worker_main(void *arg)
{
	worker *w = arg;
	for (int k = 0; k < PER_THREAD; k++) {
		int p = (w->id + k * 3) % NP, status;
		srv_job *j = make_job(w->r, prompts[p], 20);
		char *t = j ? run_job(w->r, j, &status) : NULL;
		if (!t)
			w->failures++;
		else if (strcmp(t, alone[p]) != 0)
			w->mismatches++;
		free(t);
	}
	return NULL;
}

static void threads_share_one_batch(void)
{
	srv_metrics met;
	srv_metrics_init(&met);
	srv_rev *r = load(6, 64, &met);
	if (!r)
		return;
	for (int p = 0; p < NP; p++) {
		int status;
		srv_job *j = make_job(r, prompts[p], 20);
		alone[p] = j ? run_job(r, j, &status) : NULL;
		CHECK(alone[p] != NULL, "prompt %d alone failed", p);
	}
	pthread_t th[THREADS];
	worker w[THREADS];
	for (int i = 0; i < THREADS; i++) {
		w[i] = (worker){.r = r, .id = i};
		pthread_create(&th[i], NULL, worker_main, &w[i]);
	}
	int mism = 0, fails = 0;
	for (int i = 0; i < THREADS; i++) {
		pthread_join(th[i], NULL);
		mism += w[i].mismatches, fails += w[i].failures;
	}
	CHECK(mism == 0 && fails == 0, "%d jobs differ from alone, %d failed", mism, fails);
	pthread_mutex_lock(&met.mu);
	CHECK(met.generation_tokens > 0 && met.queue_depth == 0, "generated %llu, queue %d",
	      (unsigned long long)met.generation_tokens, met.queue_depth);
	pthread_mutex_unlock(&met.mu);
	srv_rev_free(r, 0);
	pthread_mutex_lock(&met.mu);
	CHECK(met.running == 0 && met.kv_blocks_used == 0 && met.loaded_revisions == 0,
	      "after free: running %d, blocks %d, loaded %d", met.running, met.kv_blocks_used,
	      met.loaded_revisions);
	pthread_mutex_unlock(&met.mu);
	for (int p = 0; p < NP; p++)
		free(alone[p]);
	srv_metrics_destroy(&met);
}

/* One slot, one queue place: a long job runs, one waits, the next is
 * refused with 429; cancelling the long one lets the waiting one run. */
static void queue_bound_and_cancel(void)
{
	srv_metrics met;
	srv_metrics_init(&met);
	srv_rev *r = load(1, 1, &met);
	if (!r)
		return;
	srv_job *longj = make_job(r, "long", 200), *waiting = make_job(r, "next", 4),
		*refused = make_job(r, "refused", 4);
	api_error e = {0};
	CHECK_INT(srv_rev_submit(r, longj, &e), 0);
	/* Until the long job holds the slot, so that the next one queues. */
	pthread_mutex_lock(&longj->mu);
	while (longj->state == SRV_QUEUED)
		pthread_cond_wait(&longj->cv, &longj->mu);
	pthread_mutex_unlock(&longj->mu);
	CHECK_INT(srv_rev_submit(r, waiting, &e), 0);
	CHECK_INT(srv_rev_submit(r, refused, &e), -1);
	CHECK_INT(e.status, 429);
	srv_job_release(refused);
	pthread_mutex_lock(&longj->mu);
	longj->cancelled = 1;
	pthread_mutex_unlock(&longj->mu);
	srv_rev_kick(r);
	pthread_mutex_lock(&waiting->mu);
	while (waiting->state < SRV_DONE)
		pthread_cond_wait(&waiting->cv, &waiting->mu);
	int wstate = waiting->state;
	pthread_mutex_unlock(&waiting->mu);
	pthread_mutex_lock(&longj->mu);
	int lstate = longj->state, lgen = longj->gen_tokens;
	pthread_mutex_unlock(&longj->mu);
	CHECK(wstate == SRV_DONE && lstate == SRV_FAILED && lgen < 200, "waiting job state %d, "
	      "cancelled job state %d after %d tokens", wstate, lstate, lgen);
	srv_job_release(waiting);
	srv_job_release(longj);
	srv_rev_free(r, 0);
	srv_metrics_destroy(&met);
}

/* One try of full_pool_fails_one with prompts made of word w: 1 when the
 * second job was refused with 503 kv_cache_full while the first held its
 * blocks, 0 when the try proves nothing (the first job ended before the
 * second was admitted, so the pool had room), -1 when the second job ran
 * beside a live first one: the bug. */
static int full_pool_try(srv_rev *r, int w)
{
	char pa[600] = "", pb[600] = "", word[32];
	for (int i = 0; i < 40; i++) {
		snprintf(word, sizeof word, "a%d b%d ", w, i % 3);
		strcat(pa, word);
		snprintf(word, sizeof word, "c%d d%d ", w, i % 3);
		strcat(pb, word);
	}
	srv_job *hold = make_job(r, pa, 100000), *second = make_job(r, pb, 8);
	CHECK(hold->nids > 128 && second->nids > 128 && hold->nids + second->nids > 8 * 32,
	      "prompts of %zu and %zu tokens: want more than 4 blocks each", hold->nids,
	      second->nids);
	api_error e = {0};
	CHECK_INT(srv_rev_submit(r, hold, &e), 0);
	CHECK_INT(srv_rev_submit(r, second, &e), 0);
	pthread_mutex_lock(&second->mu);
	while (second->state < SRV_DONE)
		pthread_cond_wait(&second->cv, &second->mu);
	int refused = second->state == SRV_FAILED && second->err.status == 503 &&
		      !strcmp(second->err.code, "kv_cache_full");
	int state = second->state, status = second->err.status;
	pthread_mutex_unlock(&second->mu);
	srv_job_release(second);
	pthread_mutex_lock(&hold->mu);
	int hold_live = hold->state == SRV_RUNNING;
	hold->cancelled = 1;
	pthread_mutex_unlock(&hold->mu);
	srv_rev_kick(r);
	pthread_mutex_lock(&hold->mu);
	while (hold->state < SRV_DONE)
		pthread_cond_wait(&hold->cv, &hold->mu);
	pthread_mutex_unlock(&hold->mu);
	srv_job_release(hold);
	if (refused)
		return 1;
	if (!hold_live)
		return 0;
	CHECK(0, "the second job: state %d, status %d beside a live first job: want 503 "
	      "kv_cache_full", state, status);
	return -1;
}

/* A pool of 8 blocks and two prompts of 5 blocks each that share no
 * prefix: the job that cannot get its blocks fails alone with 503
 * kv_cache_full while the other holds its own; afterwards the pool is
 * whole again. The first job asks for more tokens than its context holds,
 * but on a loaded machine it may still end before the scheduler looks at
 * the second, which proves nothing: such a try is made again, with new
 * prompts (the old ones' blocks stay in the prefix cache). */
static void full_pool_fails_one(void)
{
	srv_metrics met;
	srv_metrics_init(&met);
	srv_rev *r = load_kv(2, 4, 8 * 32, 256, &met);
	if (!r)
		return;
	int got = 0, tries = 0;
	while (got == 0 && tries < 8)
		got = full_pool_try(r, tries++);
	CHECK(got == 1, "no try of %d showed the refusal (last: %d)", tries, got);
	/* The pool is whole again: a prompt of 5 blocks runs to its end. */
	char pc[600] = "";
	for (int i = 0; i < 40; i++)
		strcat(pc, "ef gh ");
	srv_job *again = make_job(r, pc, 8);
	api_error e = {0};
	CHECK_INT(srv_rev_submit(r, again, &e), 0);
	pthread_mutex_lock(&again->mu);
	while (again->state < SRV_DONE)
		pthread_cond_wait(&again->cv, &again->mu);
	CHECK(again->state == SRV_DONE, "after the first job left, the prompt: state %d (%s)",
	      again->state, again->err.message);
	pthread_mutex_unlock(&again->mu);
	srv_job_release(again);
	srv_rev_free(r, 0);
	srv_metrics_destroy(&met);
}

/* engine_decode with b->sample on the CPU backend (which has the sample
 * op): rows asked to be sampled get the backend's token (greedy: the
 * argmax of the logits a plain decode gives), the others their logits as
 * without it, in one batch of two sequences. The CPU's decode steps never
 * ask for it (engine_kv_can_sample). */
static void decode_samples_where_asked(void)
{
	owl_err err = {0};
	engine_model *m = NULL;
	engine_model_opts mo = {.threads = 1, .device = ENGINE_DEVICE_CPU};
	CHECK(engine_model_open(model_dir, &mo, &m, &err) == 0, "%s", err.msg);
	if (!m)
		return;
	const int vocab = engine_model_get_info(m)->vocab;
	engine_kv *kv[2] = {NULL, NULL};
	engine_kv_opts ko = {.n_tokens = 256, .max_seq_tokens = 64};
	int seq[2][2];
	for (int i = 0; i < 2; i++) {
		CHECK(engine_kv_new(m, &ko, &kv[i], &err) == 0, "%s", err.msg);
		for (int k = 0; kv[i] && k < 2; k++)
			CHECK(engine_kv_seq_new(kv[i], 0, &seq[i][k], &err) == 0, "%s", err.msg);
	}
	if (kv[0] && kv[1]) {
		CHECK(!engine_kv_can_sample(kv[0]), "the CPU backend's logits are host memory already");
		const int32_t tok[5] = {5, 9, 2, 7, 3};
		float *want = owl_xmalloc(2 * (size_t)vocab * sizeof *want);
		float *got = owl_xmalloc(2 * (size_t)vocab * sizeof *got);
		for (int step = 0; step < 3; step++) {
			int32_t sq[2][5];
			for (int t = 0; t < 5; t++)
				sq[0][t] = seq[0][t < 3 ? 0 : 1], sq[1][t] = seq[1][t < 3 ? 0 : 1];
			int n = step == 0 ? 5 : 2; /* the prompts, then one token each */
			int32_t stok[5];
			memcpy(stok, tok, sizeof stok);
			if (step) {
				stok[0] = (int32_t)(step * 11 % vocab), stok[1] = (int32_t)(step * 13 % vocab);
				sq[0][1] = seq[0][1], sq[1][1] = seq[1][1];
			}
			engine_batch plain = {.n = n, .tokens = stok, .seq = sq[0]};
			CHECK(engine_decode(kv[0], &plain, want, &err) == 0, "%s", err.msg);
			/* the two rows take turns at being sampled */
			engine_row_sample rs[2] = {{0}, {0}};
			rs[step % 2 ? 0 : 1].device = 1;
			int32_t ids[2] = {-1, -1};
			memset(got, 0, 2 * (size_t)vocab * sizeof *got);
			engine_batch b = {.n = n, .tokens = stok, .seq = sq[1], .sample = rs, .sampled = ids};
			CHECK(engine_decode(kv[1], &b, got, &err) == 0, "%s", err.msg);
			for (int r = 0; r < 2; r++) {
				const float *w = want + (size_t)r * vocab;
				if (rs[r].device) {
					int best = 0;
					for (int v = 1; v < vocab; v++)
						if (w[v] > w[best])
							best = v;
					CHECK(ids[r] == best, "step %d row %d: sampled %d, the argmax is %d", step, r,
					      ids[r], best);
				} else {
					CHECK(memcmp(got + (size_t)r * vocab, w, (size_t)vocab * sizeof *w) == 0,
					      "step %d row %d: the host row's logits differ", step, r);
				}
			}
		}
		free(want);
		free(got);
	}
	engine_kv_free(kv[0]);
	engine_kv_free(kv[1]);
	engine_model_close(m);
}

int main(int argc, char **argv)
{
#if defined(__SANITIZE_THREAD__)
	/* The engine's OpenMP workers synchronise inside libgomp, which
	 * ThreadSanitizer does not see, so it would report the engine's own
	 * loops; with one OpenMP thread (read when libgomp starts, hence the
	 * exec) the reports are about the threads this test and the server make. */
	if (argc > 0 && !getenv("OMP_NUM_THREADS")) {
		setenv("OMP_NUM_THREADS", "1", 1);
		execv("/proc/self/exe", argv);
	}
#else
	(void)argc, (void)argv;
#endif
	RUN_TEST(parses_completions_and_chat);
	RUN_TEST(refuses_with_the_param_named);
	const char *build = getenv("OWL_BUILD");
	char *dir = test_tmpdir("serve");
	model_dir = owl_path_join(dir, "m");
	char *cmd = owl_xasprintf("'%s/owl-fixture' --out '%s' --seed 31 --preset tiny --std-scale 2 "
				  "--quiet", build ? build : "build", model_dir);
	if (system(cmd) != 0) {
		printf("FAIL fixture_model: %s failed\n", cmd);
		return 1;
	}
	free(cmd);
	RUN_TEST(decode_samples_where_asked);
	RUN_TEST(threads_share_one_batch);
	RUN_TEST(queue_bound_and_cancel);
	RUN_TEST(full_pool_fails_one);
	owl_err err = {0};
	owl_remove_tree(dir, &err);
	free(dir);
	free(model_dir);
	TEST_MAIN_END();
}
