/* Checks the batch API and the paged KV pool on a real model: sequences of
 * different lengths and positions in one forward pass give each the logits
 * it gets alone; shared prefixes (forked and found in the prefix cache),
 * blocks freed and reused, a full pool that refuses one request while the
 * others go on, and f16 keys and values. Prints "PASS name" / "FAIL name:
 * why" lines for tests/run.sh and exits 1 when anything failed.
 * With two --adapter folders it checks sequences of both adapters and of
 * none in one batch instead.
 * Usage: owl-batch MODEL [--tp N] [--threads N] [--tol X] [--f16-tol X]
 *        [--adapter DIR --adapter DIR] */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "engine/engine.h"

static int failures;
static engine_model *model;
static int vocab;
static double tol = 1e-4, f16_tol = 1e-2;

static void report(const char *name, int ok, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void report(const char *name, int ok, const char *fmt, ...)
{
	if (ok) {
		printf("PASS %s\n", name);
		return;
	}
	failures++;
	printf("FAIL %s: ", name);
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
}

static double max_diff(const float *a, const float *b, size_t n)
{
	double w = 0;
	for (size_t i = 0; i < n; i++)
		w = fmax(w, fabs((double)a[i] - b[i]));
	return w;
}

static uint64_t rng = 12345;
static int32_t next_token(void)
{
	rng = rng * 6364136223846793005ull + 1442695040888963407ull;
	return (int32_t)((rng >> 33) % (uint64_t)vocab);
}

/* A sequence's tokens, and its logits when run alone: after the prompt
 * (every row) and after each decoded token. */
typedef struct seqcase {
	int nprompt, ndec;
	int32_t toks[160];
	float *alone; /* [nprompt + ndec][vocab] */
} seqcase;

static engine_adapter *adapters[2];

static int run_alone_with(seqcase *c, int kv_type, const engine_adapter *ad, owl_err *err)
{
	engine_kv *kv = NULL;
	engine_kv_opts o = {.n_tokens = 256, .type = kv_type};
	int seq, rc = engine_kv_new(model, &o, &kv, err);
	if (!rc)
		rc = engine_kv_seq_new(kv, 0, &seq, err);
	if (!rc)
		rc = engine_kv_seq_set_adapter(kv, seq, ad, err);
	c->alone = malloc((size_t)(c->nprompt + c->ndec) * vocab * sizeof(float));
	int32_t seqs[160];
	uint8_t want[160];
	for (int i = 0; i < 160; i++)
		seqs[i] = seq, want[i] = 1;
	if (!rc) {
		engine_batch b = {.n = c->nprompt, .tokens = c->toks, .seq = seqs, .want = want};
		rc = engine_decode(kv, &b, c->alone, err);
	}
	for (int d = 0; !rc && d < c->ndec; d++) {
		engine_batch b = {.n = 1, .tokens = &c->toks[c->nprompt + d], .seq = seqs};
		rc = engine_decode(kv, &b, c->alone + (size_t)(c->nprompt + d) * vocab, err);
	}
	engine_kv_free(kv);
	return rc;
}

static int run_alone(seqcase *c, int kv_type, owl_err *err)
{
	return run_alone_with(c, kv_type, NULL, err);
}

static void make_case(seqcase *c, int nprompt, int ndec)
{
	c->nprompt = nprompt;
	c->ndec = ndec;
	for (int i = 0; i < nprompt + ndec; i++)
		c->toks[i] = next_token();
}

/* Four sequences: their prompts in one batch (one of them 70 tokens, across
 * micro-batches and blocks), then decoding steps with every sequence at its
 * own position, and one step where a late prompt joins decoding ones. */
static void batched_equals_alone(void)
{
	owl_err err = {0};
	enum { S = 4 };
	static const int lens[S] = {5, 37, 70, 1};
	seqcase c[S];
	for (int s = 0; s < S; s++) {
		make_case(&c[s], lens[s], 4);
		if (run_alone(&c[s], ENGINE_KV_F32, &err))
			return report("batched_equals_alone", 0, "alone: %s", err.msg);
	}
	engine_kv *kv = NULL;
	engine_kv_opts o = {.n_tokens = 1024};
	int seq[S], rc = engine_kv_new(model, &o, &kv, &err);
	for (int s = 0; s < S && !rc; s++)
		rc = engine_kv_seq_new(kv, 0, &seq[s], &err);
	/* Step 1: the prompts of sequences 0, 1, 2 (3 joins later). */
	int32_t toks[256], sq[256];
	uint8_t want[256];
	int n = 0;
	for (int s = 0; s < 3; s++)
		for (int i = 0; i < c[s].nprompt; i++, n++)
			toks[n] = c[s].toks[i], sq[n] = seq[s], want[n] = 1;
	float *lg = malloc(256 * (size_t)vocab * sizeof *lg);
	double worst = 0;
	if (!rc) {
		engine_batch b = {.n = n, .tokens = toks, .seq = sq, .want = want};
		rc = engine_decode(kv, &b, lg, &err);
		for (int s = 0, row = 0; !rc && s < 3; row += c[s].nprompt, s++)
			worst = fmax(worst, max_diff(lg + (size_t)row * vocab, c[s].alone,
						     (size_t)c[s].nprompt * vocab));
	}
	/* Steps 2-5: 0, 1, 2 decode while 3 runs its prompt, then decodes too. */
	int done[S] = {0};
	for (int step = 0; !rc && step < 5; step++) {
		n = 0;
		int row_of[S];
		for (int s = 0; s < S; s++) {
			int pos = s == 3 ? (step == 0 ? 0 : c[s].nprompt + done[s]) : c[s].nprompt + done[s];
			if (s == 3 && step == 0) {
				for (int i = 0; i < c[s].nprompt; i++, n++)
					toks[n] = c[s].toks[i], sq[n] = seq[s], want[n] = i + 1 == c[s].nprompt;
			} else if (done[s] < c[s].ndec) {
				toks[n] = c[s].toks[pos], sq[n] = seq[s], want[n] = 1, n++;
			} else {
				row_of[s] = -1;
				continue;
			}
			row_of[s] = 0;
		}
		engine_batch b = {.n = n, .tokens = toks, .seq = sq, .want = want};
		rc = engine_decode(kv, &b, lg, &err);
		for (int s = 0, row = 0; !rc && s < S; s++) {
			if (row_of[s] < 0)
				continue;
			/* The alone logits of the row this sequence just ran. */
			int at = s == 3 && step == 0 ? c[s].nprompt - 1 : c[s].nprompt + done[s];
			if (!(s == 3 && step == 0))
				done[s]++;
			worst = fmax(worst, max_diff(lg + (size_t)row * vocab, c[s].alone + (size_t)at * vocab,
						     (size_t)vocab));
			row++;
		}
	}
	if (rc)
		report("batched_equals_alone", 0, "%s", err.msg);
	else
		report("batched_equals_alone", worst <= tol, "max abs difference %g (tolerance %g)",
		       worst, tol);
	/* The same pool holds them all, in blocks of what each holds. */
	engine_kv_stats st;
	engine_kv_get_stats(kv, &st);
	int want_blocks = 0;
	for (int s = 0; s < S; s++)
		want_blocks += (engine_kv_seq_len(kv, seq[s]) + st.block_tokens - 1) / st.block_tokens;
	report("kv_memory_follows_tokens", !rc && st.blocks_used == want_blocks &&
	       st.bytes_touched < st.bytes_reserved / 4, "%d blocks in use for %d needed, %llu of "
	       "%llu bytes touched", st.blocks_used, want_blocks, (unsigned long long)st.bytes_touched,
	       (unsigned long long)st.bytes_reserved);
	free(lg);
	engine_kv_free(kv);
	for (int s = 0; s < S; s++)
		free(c[s].alone);
}

/* A prompt prefix shared by fork and by the prefix cache. */
static void shared_prefixes(void)
{
	owl_err err = {0};
	seqcase a, b;
	make_case(&a, 100, 1);
	b = a;
	/* b: a's first 70 tokens, then its own 30 */
	for (int i = 70; i < 100; i++)
		b.toks[i] = next_token();
	if (run_alone(&a, ENGINE_KV_F32, &err) || run_alone(&b, ENGINE_KV_F32, &err))
		return report("fork_shares_prefix", 0, "alone: %s", err.msg);
	engine_kv *kv = NULL;
	engine_kv_opts o = {.n_tokens = 1024};
	int sa, sb, sc, rc = engine_kv_new(model, &o, &kv, &err);
	if (!rc)
		rc = engine_kv_seq_new(kv, 0, &sa, &err);
	float *lg = malloc(100 * (size_t)vocab * sizeof *lg);
	int32_t sq[100];
	uint8_t want[100];
	for (int i = 0; i < 100; i++)
		want[i] = 1;
	for (int i = 0; i < 100; i++)
		sq[i] = sa;
	if (!rc) {
		engine_batch bt = {.n = 100, .tokens = a.toks, .seq = sq, .want = want};
		rc = engine_decode(kv, &bt, lg, &err);
	}
	double worst = 0;
	engine_kv_stats before, after;
	engine_kv_get_stats(kv, &before);
	/* Fork at 70: two full blocks shared, the partial third copied on write. */
	if (!rc)
		rc = engine_kv_seq_fork(kv, sa, 70, &sb, &err);
	for (int i = 0; i < 30; i++)
		sq[i] = sb;
	if (!rc) {
		engine_batch bt = {.n = 30, .tokens = b.toks + 70, .seq = sq, .want = want};
		rc = engine_decode(kv, &bt, lg, &err);
		worst = max_diff(lg, b.alone + (size_t)70 * vocab, (size_t)30 * vocab);
	}
	engine_kv_get_stats(kv, &after);
	/* a's own rows after the fork point are intact: b wrote into a copy. */
	sq[0] = sa;
	if (!rc) {
		engine_batch bt = {.n = 1, .tokens = a.toks + 100, .seq = sq};
		rc = engine_decode(kv, &bt, lg, &err);
		worst = fmax(worst, max_diff(lg, a.alone + (size_t)100 * vocab, (size_t)vocab));
	}
	/* a holds 4 blocks; b's 100 tokens need 4, of which 2 are a's. */
	if (rc)
		report("fork_shares_prefix", 0, "%s", err.msg);
	else
		report("fork_shares_prefix", worst <= tol && after.blocks_used - before.blocks_used == 2,
		       "max abs difference %g (tolerance %g); the fork took %d new blocks (want 2)", worst,
		       tol, after.blocks_used - before.blocks_used);
	/* The prefix cache: a new sequence with b's tokens finds a's first two
	 * blocks (b's own third block holds other tokens than a's). */
	engine_kv_seq_free(kv, sb);
	if (!rc)
		rc = engine_kv_seq_new(kv, 0, &sc, &err);
	int reused = rc ? 0 : engine_kv_seq_reuse_prefix(kv, sc, b.toks, 100);
	for (int i = 0; i < 100; i++)
		sq[i] = sc;
	if (!rc && reused > 0) {
		engine_batch bt = {.n = 100 - reused, .tokens = b.toks + reused, .seq = sq, .want = want};
		rc = engine_decode(kv, &bt, lg, &err);
		worst = max_diff(lg, b.alone + (size_t)reused * vocab, (size_t)(100 - reused) * vocab);
	}
	/* b's blocks were cached when it was freed: all three full ones match. */
	if (rc)
		report("prefix_cache_reuses_blocks", 0, "%s", err.msg);
	else
		report("prefix_cache_reuses_blocks", reused == 96 && worst <= tol,
		       "reused %d tokens (want 96), max abs difference %g (tolerance %g)", reused, worst, tol);
	/* Another salt (another adapter) must not see those blocks. */
	int sd = -1;
	if (!rc)
		rc = engine_kv_seq_new(kv, 77, &sd, &err);
	int other = rc ? -1 : engine_kv_seq_reuse_prefix(kv, sd, b.toks, 100);
	report("prefix_cache_keyed_by_salt", !rc && other == 0, "a sequence of another salt reused %d "
	       "tokens", other);
	free(lg);
	free(a.alone), free(b.alone);
	engine_kv_free(kv);
}

/* A pool that serves for long: 300 prompts of one full block each come and
 * go through a pool of 8 blocks, each evicting the oldest cached block (a
 * tombstone in the prefix cache's table, swept away as they pile up). The
 * most recent prompts are still found, the old ones are not. */
static void prefix_cache_churn(void)
{
	owl_err err = {0};
	engine_kv *kv = NULL;
	engine_kv_opts o = {.n_tokens = 8 * 32, .max_seq_tokens = 64};
	int rc = engine_kv_new(model, &o, &kv, &err);
	enum { PROMPTS = 300, LEN = 33 };
	static int32_t toks[PROMPTS][LEN];
	float *lg = malloc((size_t)vocab * sizeof *lg);
	int32_t sq[LEN];
	int found_recent = 1, found_old = 0;
	for (int p = 0; p < PROMPTS && !rc; p++) {
		for (int i = 0; i < LEN; i++)
			toks[p][i] = next_token();
		int s;
		if ((rc = engine_kv_seq_new(kv, 0, &s, &err)))
			break;
		for (int i = 0; i < LEN; i++)
			sq[i] = s;
		engine_batch b = {.n = LEN, .tokens = toks[p], .seq = sq};
		rc = engine_decode(kv, &b, lg, &err);
		engine_kv_seq_free(kv, s);
		/* the last three prompts' blocks are cached; one from 20 prompts
		 * ago has been evicted */
		for (int back = 0; !rc && back < 3 && back <= p; back++) {
			int t;
			if ((rc = engine_kv_seq_new(kv, 0, &t, &err)))
				break;
			found_recent &= engine_kv_seq_reuse_prefix(kv, t, toks[p - back], LEN) == 32;
			engine_kv_seq_free(kv, t);
		}
		if (!rc && p >= 20) {
			int t;
			if (!(rc = engine_kv_seq_new(kv, 0, &t, &err))) {
				found_old |= engine_kv_seq_reuse_prefix(kv, t, toks[p - 20], LEN) != 0;
				engine_kv_seq_free(kv, t);
			}
		}
	}
	if (rc)
		report("prefix_cache_churn", 0, "%s", err.msg);
	else
		report("prefix_cache_churn", found_recent && !found_old, "recent prompts found: %s; an "
		       "evicted one found: %s", found_recent ? "all" : "not all", found_old ? "yes" : "no");
	free(lg);
	engine_kv_free(kv);
}

/* A pool of 8 blocks: sequences come and go, their blocks are reused, and
 * one that cannot get a block is refused while another goes on. */
static void blocks_freed_and_reused(void)
{
	owl_err err = {0};
	engine_kv *kv = NULL;
	engine_kv_opts o = {.n_tokens = 8 * 32, .max_seq_tokens = 256};
	int rc = engine_kv_new(model, &o, &kv, &err);
	float *lg = malloc(160 * (size_t)vocab * sizeof *lg);
	int32_t sq[160];
	double worst = 0;
	for (int round = 0; !rc && round < 4; round++) {
		seqcase c;
		make_case(&c, 150, 0); /* 5 blocks: two rounds cannot both fit */
		if ((rc = run_alone(&c, ENGINE_KV_F32, &err)))
			break;
		int s;
		rc = engine_kv_seq_new(kv, 0, &s, &err);
		for (int i = 0; i < 150; i++)
			sq[i] = s;
		uint8_t want[150];
		memset(want, 1, sizeof want);
		if (!rc) {
			engine_batch b = {.n = 150, .tokens = c.toks, .seq = sq, .want = want};
			rc = engine_decode(kv, &b, lg, &err);
			worst = fmax(worst, max_diff(lg, c.alone, (size_t)150 * vocab));
		}
		engine_kv_seq_free(kv, s);
		free(c.alone);
	}
	if (rc)
		report("blocks_freed_and_reused", 0, "%s", err.msg);
	else
		report("blocks_freed_and_reused", worst <= tol, "max abs difference %g (tolerance %g)",
		       worst, tol);
	/* Full pool: a holds 5 blocks; b asks for 4 more than the 3 left. */
	seqcase a, b;
	make_case(&a, 150, 2);
	make_case(&b, 130, 0);
	rc = run_alone(&a, ENGINE_KV_F32, &err);
	int sa = -1, sb = -1;
	if (!rc)
		rc = engine_kv_seq_new(kv, 0, &sa, &err);
	if (!rc)
		rc = engine_kv_seq_new(kv, 0, &sb, &err);
	for (int i = 0; i < 150; i++)
		sq[i] = sa;
	if (!rc) {
		engine_batch bt = {.n = 150, .tokens = a.toks, .seq = sq};
		rc = engine_decode(kv, &bt, lg, &err);
	}
	owl_err full = {0};
	int frc = rc ? 0 : engine_kv_reserve(kv, sb, 130, &full);
	report("full_pool_refuses_one_request", !rc && frc == OWL_EFAIL &&
	       strstr(full.msg, "KV pool is full") != NULL, "reserve returned %d (%s)", frc, full.msg);
	/* The same through engine_decode: all or nothing, a goes on. */
	for (int i = 0; i < 130; i++)
		sq[i] = sb;
	owl_err full2 = {0};
	engine_batch bb = {.n = 130, .tokens = b.toks, .seq = sq};
	int drc = rc ? 0 : engine_decode(kv, &bb, lg, &full2);
	sq[0] = sa;
	engine_batch ba = {.n = 1, .tokens = &a.toks[150], .seq = sq};
	if (!rc)
		rc = engine_decode(kv, &ba, lg, &err);
	worst = rc ? 0 : max_diff(lg, a.alone + (size_t)150 * vocab, (size_t)vocab);
	report("full_pool_leaves_others_running", !rc && drc != 0 && engine_kv_seq_len(kv, sb) == 0 &&
	       worst <= tol, "decode of the refused batch returned %d, the other sequence: %s, "
	       "difference %g", drc, rc ? err.msg : "ran", worst);
	free(a.alone), free(b.alone);
	free(lg);
	engine_kv_free(kv);
}

/* f16 keys and values: half the memory, logits close to f32's. */
static void kv_f16(void)
{
	owl_err err = {0};
	seqcase c32, c16;
	make_case(&c32, 60, 4);
	c16 = c32;
	if (run_alone(&c32, ENGINE_KV_F32, &err) || run_alone(&c16, ENGINE_KV_F16, &err))
		return report("kv_f16_close_to_f32", 0, "%s", err.msg);
	double worst = max_diff(c32.alone, c16.alone, (size_t)64 * vocab), scale = 0;
	for (size_t i = 0; i < (size_t)64 * vocab; i++)
		scale = fmax(scale, fabs(c32.alone[i]));
	report("kv_f16_close_to_f32", worst <= f16_tol * fmax(scale, 1.0) && worst > 0,
	       "max abs difference %g for logits up to %g", worst, scale);
	engine_kv *a = NULL, *b = NULL;
	engine_kv_opts o32 = {.n_tokens = 512}, o16 = {.n_tokens = 512, .type = ENGINE_KV_F16};
	if (!engine_kv_new(model, &o32, &a, &err) && !engine_kv_new(model, &o16, &b, &err)) {
		engine_kv_stats s32, s16;
		engine_kv_get_stats(a, &s32);
		engine_kv_get_stats(b, &s16);
		report("kv_f16_halves_memory", s16.bytes_reserved * 2 == s32.bytes_reserved,
		       "f16 pool %llu bytes, f32 pool %llu", (unsigned long long)s16.bytes_reserved,
		       (unsigned long long)s32.bytes_reserved);
	} else {
		report("kv_f16_halves_memory", 0, "%s", err.msg);
	}
	engine_kv_free(a), engine_kv_free(b);
	free(c32.alone), free(c16.alone);
}

/* Batches the engine must refuse, naming what is wrong. */
static void bad_batches(void)
{
	owl_err err = {0};
	engine_kv *kv = NULL;
	engine_kv_opts o = {.n_tokens = 256};
	int s0, s1;
	if (engine_kv_new(model, &o, &kv, &err) || engine_kv_seq_new(kv, 0, &s0, &err) ||
	    engine_kv_seq_new(kv, 0, &s1, &err))
		return report("bad_batches_refused", 0, "%s", err.msg);
	float *lg = malloc(4 * (size_t)vocab * sizeof *lg);
	int32_t toks[4] = {1, 2, 3, 4}, split[4] = {s0, s1, s0, s1}, unknown[1] = {99};
	int32_t wrong_pos[1] = {5}, one[1] = {s0};
	engine_batch twice = {.n = 4, .tokens = toks, .seq = split};
	engine_batch nosuch = {.n = 1, .tokens = toks, .seq = unknown};
	engine_batch pos = {.n = 1, .tokens = toks, .seq = one, .pos = wrong_pos};
	owl_err e1 = {0}, e2 = {0}, e3 = {0};
	int r1 = engine_decode(kv, &twice, lg, &e1), r2 = engine_decode(kv, &nosuch, lg, &e2);
	int r3 = engine_decode(kv, &pos, lg, &e3);
	report("bad_batches_refused", r1 == OWL_EUSAGE && strstr(e1.msg, "two runs") && r2 == OWL_EUSAGE &&
	       strstr(e2.msg, "does not hold") && r3 == OWL_EUSAGE && strstr(e3.msg, "position") &&
	       engine_kv_seq_len(kv, s0) == 0, "got %d '%s' / %d '%s' / %d '%s'", r1, e1.msg, r2,
	       e2.msg, r3, e3.msg);
	free(lg);
	engine_kv_free(kv);
}

/* Sequences with two adapters and none in one batch, not grouped by
 * adapter: each gets what it gets alone with its adapter, for its prompt
 * and for decoding steps taken together. */
static void two_adapters_in_one_batch(void)
{
	owl_err err = {0};
	enum { S = 4 };
	static const int lens[S] = {20, 37, 10, 5};
	const engine_adapter *ad[S] = {adapters[0], adapters[1], NULL, adapters[0]};
	seqcase c[S];
	for (int s = 0; s < S; s++) {
		make_case(&c[s], lens[s], 3);
		if (run_alone_with(&c[s], ENGINE_KV_F32, ad[s], &err))
			return report("two_adapters_in_one_batch", 0, "alone: %s", err.msg);
	}
	engine_kv *kv = NULL;
	engine_kv_opts o = {.n_tokens = 1024};
	int seq[S], rc = engine_kv_new(model, &o, &kv, &err);
	for (int s = 0; s < S && !rc; s++)
		if (!(rc = engine_kv_seq_new(kv, 0, &seq[s], &err)))
			rc = engine_kv_seq_set_adapter(kv, seq[s], ad[s], &err);
	int32_t toks[128], sq[128];
	uint8_t want[128];
	float *lg = malloc(128 * (size_t)vocab * sizeof *lg);
	int n = 0;
	for (int s = 0; s < S; s++)
		for (int i = 0; i < c[s].nprompt; i++, n++)
			toks[n] = c[s].toks[i], sq[n] = seq[s], want[n] = 1;
	double worst = 0;
	if (!rc) {
		engine_batch b = {.n = n, .tokens = toks, .seq = sq, .want = want};
		rc = engine_decode(kv, &b, lg, &err);
		for (int s = 0, row = 0; !rc && s < S; row += c[s].nprompt, s++)
			worst = fmax(worst, max_diff(lg + (size_t)row * vocab, c[s].alone,
						     (size_t)c[s].nprompt * vocab));
	}
	for (int d = 0; !rc && d < 3; d++) {
		for (int s = 0; s < S; s++)
			toks[s] = c[s].toks[c[s].nprompt + d], sq[s] = seq[s];
		engine_batch b = {.n = S, .tokens = toks, .seq = sq};
		rc = engine_decode(kv, &b, lg, &err);
		for (int s = 0; !rc && s < S; s++)
			worst = fmax(worst, max_diff(lg + (size_t)s * vocab,
						     c[s].alone + (size_t)(c[s].nprompt + d) * vocab, (size_t)vocab));
	}
	/* The adapters matter: without them the same tokens give other logits. */
	seqcase plain = c[1];
	double moved = 0;
	if (!rc && !(rc = run_alone(&plain, ENGINE_KV_F32, &err)))
		moved = max_diff(plain.alone, c[1].alone, (size_t)c[1].nprompt * vocab);
	if (rc)
		report("two_adapters_in_one_batch", 0, "%s", err.msg);
	else
		report("two_adapters_in_one_batch", worst <= tol && moved > 0.05, "max abs difference "
		       "%g (tolerance %g); the adapter moves the logits by %g", worst, tol, moved);
	free(plain.alone);
	for (int s = 0; s < S; s++)
		free(c[s].alone);
	free(lg);
	engine_kv_free(kv);
}

/* A pool the address space cannot hold is an error, not an abort (the
 * address space is limited for the check; not under AddressSanitizer,
 * which reserves terabytes of shadow). */
static void unsatisfiable_pool_is_an_error(void)
{
#if defined(__SANITIZE_ADDRESS__)
	printf("skip unsatisfiable_pool_is_an_error: AddressSanitizer reserves the address space\n");
#else
	struct rlimit old;
	getrlimit(RLIMIT_AS, &old);
	long pages = 0;
	FILE *f = fopen("/proc/self/statm", "r");
	if (f && fscanf(f, "%ld", &pages) != 1)
		pages = 0;
	if (f)
		fclose(f);
	struct rlimit lim = old;
	lim.rlim_cur = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + (512u << 20);
	setrlimit(RLIMIT_AS, &lim);
	owl_err err = {0};
	engine_kv *kv = NULL;
	engine_kv_opts o = {.n_tokens = 1 << 24, .max_seq_tokens = 128};
	int rc = engine_kv_new(model, &o, &kv, &err);
	setrlimit(RLIMIT_AS, &old);
	report("unsatisfiable_pool_is_an_error", rc == OWL_EFAIL && kv == NULL &&
	       strstr(err.msg, "KV pool") != NULL, "engine_kv_new returned %d (%s)", rc, err.msg);
	engine_kv_free(kv);
#endif
}

int main(int argc, char **argv)
{
	const char *path = NULL, *adirs[2] = {0};
	int nad = 0;
	engine_model_opts o = {0};
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--tp") && i + 1 < argc) o.tp = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--threads") && i + 1 < argc) o.threads = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--tol") && i + 1 < argc) tol = atof(argv[++i]);
		else if (!strcmp(argv[i], "--f16-tol") && i + 1 < argc) f16_tol = atof(argv[++i]);
		else if (!strcmp(argv[i], "--adapter") && i + 1 < argc && nad < 2) adirs[nad++] = argv[++i];
		else path = argv[i];
	}
	if (!path) {
		fprintf(stderr, "usage: owl-batch MODEL [--tp N] [--threads N] [--tol X]\n");
		return 2;
	}
	owl_err err = {0};
	if (engine_model_open(path, &o, &model, &err)) {
		fprintf(stderr, "owl-batch: %s\n", err.msg);
		return 1;
	}
	vocab = engine_model_get_info(model)->vocab;
	for (int i = 0; i < nad; i++)
		if (engine_adapter_load(model, adirs[i], &adapters[i], &err)) {
			fprintf(stderr, "owl-batch: %s\n", err.msg);
			return 1;
		}
	if (nad == 2) {
		/* Only the adapter checks: the rest runs without adapters elsewhere. */
		two_adapters_in_one_batch();
		engine_adapter_free(adapters[0]), engine_adapter_free(adapters[1]);
		engine_model_close(model);
		return failures ? 1 : 0;
	}
	batched_equals_alone();
	shared_prefixes();
	blocks_freed_and_reused();
	prefix_cache_churn();
	kv_f16();
	bad_batches();
	unsatisfiable_pool_is_an_error();
	engine_model_close(model);
	return failures ? 1 : 0;
}
