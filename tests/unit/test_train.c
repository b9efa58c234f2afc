/* Unit tests of train/ without gradients: every JSONL format and its mask
 * of trained tokens, malformed lines, --skip-bad, the split, packing into
 * micro-batches (segments, positions, targets), AdamW against numbers
 * computed by hand, clipping, the cosine schedule, and the safetensors
 * writer and PEFT config read back. */
#include "test.h"

#include "common/safetensors.h"
#include "train/train.h"

#include <jansson.h>
#include <unistd.h>

static engine_tokenizer *tok;

static train_dataset *parse(const char *text, int train_on_inputs, int skip_bad, int max_tokens,
			    owl_err *err)
{
	train_data_opts o = {.train_on_inputs = train_on_inputs, .skip_bad = skip_bad,
			     .max_tokens = max_tokens};
	train_dataset *d = NULL;
	owl_err_clear(err);
	train_dataset_parse("data.jsonl", text, strlen(text), tok, &o, &d, err);
	return d;
}

/* The tokens of text as the loader makes them (no BOS, no specials). */
static size_t ntok(const char *text, int special)
{
	int32_t *ids = NULL;
	size_t n = 0;
	owl_err err = {0};
	engine_tokenize(tok, text, strlen(text), 0, special, &ids, &n, &err);
	free(ids);
	return n;
}

static int count_trained(const train_sample *s)
{
	int k = 0;
	for (int i = 0; i < s->n; i++)
		k += s->trained[i];
	return k;
}

static void text_trains_every_token_and_ends_with_eos(void)
{
	owl_err err = {0};
	train_dataset *d = parse("{\"text\": \"hello world\"}\n", 0, 0, 0, &err);
	CHECK(d, "parse failed: %s", err.msg);
	if (!d)
		return;
	int bos = engine_tokenizer_adds_bos(tok) ? 1 : 0;
	size_t n = ntok("hello world", 0);
	CHECK_INT(d->n, 1);
	CHECK_INT(d->samples[0].n, (int)n + 1 + bos);
	CHECK_INT(d->samples[0].tokens[d->samples[0].n - 1], engine_token_eos(tok));
	CHECK_INT(d->samples[0].trained[0], 0);
	CHECK_INT(count_trained(&d->samples[0]), d->samples[0].n - 1);
	CHECK_STR(d->format, "text");
	CHECK_INT(d->samples[0].line, 1);
	CHECK_INT(d->tokens, d->samples[0].n - 1);
	CHECK_INT(d->trained_tokens, d->samples[0].n - 1);
	CHECK_INT(strlen(d->sha256), 64);
	train_dataset_free(d);
}

static void prompt_completion_trains_the_completion_only(void)
{
	owl_err err = {0};
	const char *text = "{\"prompt\": \"Q: two plus two?\", \"completion\": \" four\"}\n";
	train_dataset *d = parse(text, 0, 0, 0, &err);
	CHECK(d, "parse failed: %s", err.msg);
	if (!d)
		return;
	size_t np = ntok("Q: two plus two?", 0), nc = ntok(" four", 0);
	int bos = engine_tokenizer_adds_bos(tok) ? 1 : 0;
	const train_sample *s = &d->samples[0];
	CHECK_INT(s->n, (int)(bos + np + nc + 1));
	CHECK_INT(count_trained(s), (int)nc + 1);
	for (int i = 0; i < bos + (int)np; i++)
		CHECK(!s->trained[i], "prompt token %d is trained", i);
	CHECK_STR(d->format, "prompt");
	train_dataset_free(d);
	/* --train-on-inputs: all but the first. */
	d = parse(text, 1, 0, 0, &err);
	CHECK(d && count_trained(&d->samples[0]) == d->samples[0].n - 1,
	      "train_on_inputs: %d of %d trained", d ? count_trained(&d->samples[0]) : -1,
	      d ? d->samples[0].n : -1);
	train_dataset_free(d);
}

static void alpaca_uses_its_prompt_with_and_without_input(void)
{
	owl_err err = {0};
	train_dataset *d = parse("{\"instruction\": \"Add\", \"input\": \"2 and 2\", \"output\": \"4\"}\n"
				 "\n"
				 "{\"instruction\": \"Say hi\", \"output\": \"hi\"}\n",
				 0, 0, 0, &err);
	CHECK(d, "parse failed: %s", err.msg);
	if (!d)
		return;
	CHECK_INT(d->n, 2);
	CHECK_INT(d->lines, 3);
	CHECK_INT(d->samples[1].line, 3);
	CHECK_STR(d->format, "alpaca");
	CHECK_INT(count_trained(&d->samples[0]), (int)ntok("4", 0) + 1);
	CHECK_INT(count_trained(&d->samples[1]), (int)ntok("hi", 0) + 1);
	/* With an input the prompt is the longer of Alpaca's two. */
	CHECK(d->samples[0].n > d->samples[1].n, "with input %d tokens, without %d",
	      d->samples[0].n, d->samples[1].n);
	train_dataset_free(d);
}

static void chat_trains_assistant_turns_with_their_end(void)
{
	owl_err err = {0};
	const char *text = "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"},"
			   " {\"role\": \"user\", \"content\": \"Hi\"},"
			   " {\"role\": \"assistant\", \"content\": \"Hello\"},"
			   " {\"role\": \"user\", \"content\": \"Bye\"},"
			   " {\"role\": \"assistant\", \"content\": \"Bye now\"}]}";
	train_dataset *d = parse(text, 0, 0, 0, &err);
	CHECK(d, "parse failed: %s", err.msg);
	if (!d)
		return;
	const train_sample *s = &d->samples[0];
	/* The fixture's tokenizer has no template: ChatML. Each assistant turn
	 * trains its content, <|im_end|> and the newline after it. */
	size_t want = ntok("Hello<|im_end|>\n", 1) + ntok("Bye now<|im_end|>\n", 1);
	CHECK_INT(count_trained(s), (int)want);
	size_t total = ntok("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
			    "<|im_start|>assistant\n", 1) + ntok("Hello<|im_end|>\n", 1) +
		       ntok("<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n", 1) +
		       ntok("Bye now<|im_end|>\n", 1);
	CHECK_INT(s->n, (int)total);
	CHECK_STR(d->format, "chat");
	/* The last trained token is the newline after <|im_end|>, and the one
	 * before it the end of turn. */
	CHECK(engine_token_is_eog(tok, s->tokens[s->n - 2]), "token %d before the end is not an "
	      "end of turn", s->tokens[s->n - 2]);
	train_dataset_free(d);
}

/* Every chat family owl renders: the trained tokens are the assistant turns
 * (with the template's end of turn), never the system or user text. */
static void chat_masks_for_every_template(void)
{
	static const char *const families[] = {"chatml", "llama3", "llama2", "zephyr", "gemma"};
	const char *build = getenv("OWL_BUILD");
	char *dir = test_tmpdir("train-templates");
	const char *text = "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"},"
			   " {\"role\": \"user\", \"content\": \"Hi there\"},"
			   " {\"role\": \"assistant\", \"content\": \"Hello\"},"
			   " {\"role\": \"user\", \"content\": \"Bye\"},"
			   " {\"role\": \"assistant\", \"content\": \"Bye now\"}]}\n";
	for (size_t f = 0; f < sizeof families / sizeof families[0]; f++) {
		char *cmd = owl_xasprintf("'%s/owl-fixture' --out '%s/%s' --seed 4 --chat-template %s --quiet",
					  build ? build : "build", dir, families[f], families[f]);
		char *mdir = owl_xasprintf("%s/%s", dir, families[f]);
		engine_tokenizer *t = NULL;
		owl_err err = {0};
		if (system(cmd) != 0 || engine_tokenizer_load_dir(mdir, &t, &err)) {
			CHECK(0, "%s: fixture or tokenizer failed: %s", families[f], err.msg);
			free(cmd), free(mdir);
			continue;
		}
		train_data_opts o = {0};
		train_dataset *d = NULL;
		int rc = train_dataset_parse("chat.jsonl", text, strlen(text), t, &o, &d, &err);
		CHECK(rc == 0, "%s: %s", families[f], err.msg);
		if (!rc) {
			const train_sample *x = &d->samples[0];
			int32_t *ids = owl_xmalloc((size_t)x->n * sizeof *ids);
			size_t k = 0;
			for (int i = 0; i < x->n; i++)
				if (x->trained[i])
					ids[k++] = x->tokens[i];
			char *trained = engine_detokenize(t, ids, k);
			CHECK(strstr(trained, "Hello") && strstr(trained, "Bye now"), "%s: trained text '%s' "
			      "lacks an assistant turn", families[f], trained);
			CHECK(!strstr(trained, "Hi there") && !strstr(trained, "Be brief") &&
			      !strstr(trained, "user"), "%s: trained text '%s' holds system or user text",
			      families[f], trained);
			int eog = 0;
			for (size_t i = 0; i < k; i++)
				eog += engine_token_is_eog(t, ids[i]);
			CHECK(eog == 2, "%s: %d end-of-turn tokens trained, expected 2 ('%s')", families[f],
			      eog, trained);
			free(trained);
			free(ids);
		}
		train_dataset_free(d);
		engine_tokenizer_free(t);
		free(cmd), free(mdir);
	}
	owl_remove_tree(dir, NULL);
	free(dir);
}

static void malformed_lines_name_their_line_and_problem(void)
{
	static const struct { const char *text, *want; } cases[] = {
		{"{\"text\": \"a\"}\n{\"text\": \"b\"\n", "data.jsonl:2: not JSON"},
		{"[1, 2]\n", "data.jsonl:1: a JSON object was expected"},
		{"{\"text\": 5}\n", "data.jsonl:1: field \"text\" is not a string"},
		{"{\"prompt\": \"p\"}\n", "data.jsonl:1: expected {\"text\"}"},
		{"{\"text\": \"a\", \"prompt\": \"p\", \"completion\": \"c\"}\n", "expected {\"text\"}"},
		{"{\"messages\": []}\n", "field \"messages\" is not a non-empty array"},
		{"{\"messages\": [{\"role\": \"bot\", \"content\": \"x\"}]}\n",
		 "data.jsonl:1: messages[0].role is \"bot\""},
		{"{\"messages\": [{\"role\": \"user\", \"content\": 3}]}\n", "messages[0] is not an object"},
		{"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n", "no assistant turn"},
		{"{\"messages\": [{\"role\": \"user\", \"content\": \"hi<|im_end|>\\n<|im_start|>assistant\\nyes\"},"
		 " {\"role\": \"assistant\", \"content\": \"no\"}]}\n",
		 "data.jsonl:1: messages[0].content holds one of the model's special tokens"},
		{"", "holds no samples"},
		{"\n\n  \n", "holds no samples"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		owl_err err = {0};
		train_dataset *d = parse(cases[i].text, 0, 0, 0, &err);
		CHECK(!d && err.code == OWL_EUSAGE && strstr(err.msg, cases[i].want),
		      "case %zu: expected an error with '%s', got %s '%s'", i, cases[i].want,
		      d ? "a dataset" : "error", err.msg);
		train_dataset_free(d);
	}
}

static void skip_bad_counts_and_keeps_the_rest(void)
{
	owl_err err = {0};
	train_dataset *d = parse("{\"text\": \"one\"}\nnot json\n{\"text\": 1}\n{\"text\": \"two\"}\n", 0, 1,
				 0, &err);
	CHECK(d, "parse failed: %s", err.msg);
	if (!d)
		return;
	CHECK_INT(d->n, 2);
	CHECK_INT(d->skipped, 2);
	CHECK(strstr(d->first_skipped, "line 2: not JSON"), "first skipped: %s", d->first_skipped);
	CHECK_INT(d->samples[1].line, 4);
	train_dataset_free(d);
	d = parse("oops\n{\"text\": 2}\n", 0, 1, 0, &err);
	CHECK(!d && strstr(err.msg, "every one of its 2 records is malformed"), "got %s", err.msg);
	train_dataset_free(d);
}

static void sample_longer_than_the_sequence_is_refused(void)
{
	owl_err err = {0};
	char text[600];
	snprintf(text, sizeof text, "{\"text\": \"short\"}\n{\"text\": \"%s\"}\n",
		 "a long line of text that cannot fit into a sequence of eight tokens at all");
	train_dataset *d = parse(text, 0, 0, 9, &err);
	CHECK(!d && strstr(err.msg, "data.jsonl:2: the sample has") &&
	      strstr(err.msg, "--seq-len 8"), "got %s", err.msg);
	train_dataset_free(d);
	d = parse(text, 0, 1, 9, &err);
	CHECK(d && d->n == 1 && d->skipped == 1, "skip_bad: %s", err.msg);
	train_dataset_free(d);
}

static void mixed_formats_and_sha256(void)
{
	owl_err err = {0};
	const char *text = "{\"text\": \"x y\"}\n{\"prompt\": \"p\", \"completion\": \"c\"}\n";
	train_dataset *d = parse(text, 0, 0, 0, &err);
	CHECK(d, "%s", err.msg);
	if (!d)
		return;
	CHECK_STR(d->format, "mixed");
	/* sha256 of the bytes, known from sha256sum. */
	char want[65];
	FILE *p = popen("printf '{\"text\": \"x y\"}\\n{\"prompt\": \"p\", \"completion\": \"c\"}\\n' | "
			"sha256sum", "r");
	CHECK(p && fscanf(p, "%64s", want) == 1, "sha256sum did not run");
	if (p)
		pclose(p);
	CHECK_STR(d->sha256, want);
	train_dataset_free(d);
}

static void split_is_seeded_and_complete(void)
{
	owl_err err = {0};
	owl_buf b;
	owl_buf_init(&b, 1 << 20);
	for (int i = 0; i < 20; i++)
		owl_buf_printf(&b, "{\"text\": \"sample %d\"}\n", i);
	train_dataset *d = parse(b.data, 0, 0, 0, &err), *e = NULL;
	train_dataset *d2 = parse(b.data, 0, 0, 0, &err), *e2 = NULL;
	owl_buf_release(&b);
	CHECK(d && d2, "%s", err.msg);
	if (!d || !d2)
		return;
	CHECK_INT(train_dataset_split(d, 0.2, 7, &e, &err), 0);
	CHECK_INT(train_dataset_split(d2, 0.2, 7, &e2, &err), 0);
	CHECK_INT(e->n, 4);
	CHECK_INT(d->n, 16);
	int same = 1, lines = 0;
	for (size_t i = 0; i < e->n; i++)
		same &= e->samples[i].line == e2->samples[i].line;
	for (size_t i = 0; i < d->n; i++)
		lines += d->samples[i].line;
	for (size_t i = 0; i < e->n; i++)
		lines += e->samples[i].line;
	CHECK(same, "the same seed held out other lines");
	CHECK_INT(lines, 20 * 21 / 2);
	for (size_t i = 1; i < e->n; i++)
		CHECK(e->samples[i].line > e->samples[i - 1].line, "eval set out of file order");
	train_dataset_free(e);
	train_dataset_free(e2);
	train_dataset_free(d);
	train_dataset_free(d2);
	train_dataset *one = parse("{\"text\": \"a b\"}\n", 0, 0, 0, &err);
	CHECK_INT(train_dataset_split(one, 0.5, 1, &e, &err), OWL_EUSAGE);
	train_dataset_free(one);
}

/* A dataset of samples with the given lengths (tokens = 1000 * sample + i,
 * every token after the first trained but the second). */
static train_dataset *synthetic(const int *lens, size_t n)
{
	train_dataset *d = owl_xcalloc(1, sizeof *d);
	d->samples = owl_xcalloc(n, sizeof *d->samples);
	d->n = n;
	for (size_t s = 0; s < n; s++) {
		train_sample *x = &d->samples[s];
		x->n = lens[s];
		x->tokens = owl_xmalloc((size_t)x->n * sizeof *x->tokens);
		x->trained = owl_xmalloc((size_t)x->n);
		for (int i = 0; i < x->n; i++) {
			x->tokens[i] = (int32_t)(1000 * s + i);
			x->trained[i] = i != 0 && i != 1;
		}
	}
	return d;
}

static void packing_fills_rows_and_never_crosses_samples(void)
{
	/* Input tokens are n - 1: 5, 3, 7, 2, 8, 1. Rows of 8, 2 per micro-batch:
	 * [5 3][7] | [2][8] | [1]. */
	static const int lens[] = {6, 4, 8, 3, 9, 2};
	train_dataset *d = synthetic(lens, 6);
	uint32_t *order = NULL;
	train_epoch_order(d, 0, 0, 0, &order);
	train_micro *mb = NULL;
	size_t n = 0;
	train_pack(d, order, 8, 2, &mb, &n);
	CHECK_INT(n, 3);
	if (n == 3) {
		CHECK(mb[0].first == 0 && mb[0].count == 3 && mb[0].tokens == 15, "mb0 %zu+%zu %d",
		      mb[0].first, mb[0].count, mb[0].tokens);
		CHECK(mb[1].first == 3 && mb[1].count == 2 && mb[1].tokens == 10, "mb1 %zu+%zu %d",
		      mb[1].first, mb[1].count, mb[1].tokens);
		CHECK(mb[2].first == 5 && mb[2].count == 1 && mb[2].tokens == 1, "mb2");
		/* scored: every input position but the first (its target is token 1). */
		CHECK_INT(mb[0].scored, 4 + 2 + 6);
	}
	train_batch_buf buf;
	train_batch_buf_init(&buf, 16);
	engine_train_batch b;
	train_batch_fill(d, order, &mb[0], &buf, 42, &b);
	CHECK_INT(b.n, 15);
	CHECK_INT(b.dropout_seed, 42);
	int ok = 1, scored = 0;
	for (int i = 0; i < b.n; i++) {
		int s = b.seg[i], p = b.pos[i];
		ok &= b.tokens[i] == 1000 * s + p;
		int want = p + 1 == 1 ? -1 : 1000 * s + p + 1;
		ok &= b.targets[i] == want;
		scored += b.targets[i] >= 0;
	}
	CHECK(ok, "tokens, segments, positions or targets wrong");
	CHECK_INT(scored, mb[0].scored);
	CHECK(b.seg[4] == 0 && b.seg[5] == 1 && b.pos[5] == 0 && b.seg[8] == 2, "segments restart");
	train_batch_buf_release(&buf);
	free(mb);
	/* Shuffled orders: a permutation, seeded, different per epoch. */
	uint32_t *o1 = NULL, *o2 = NULL, *o3 = NULL;
	train_epoch_order(d, 5, 0, 1, &o1);
	train_epoch_order(d, 5, 0, 1, &o2);
	train_epoch_order(d, 5, 1, 1, &o3);
	int seen[6] = {0}, same = 1, diff = 0;
	for (int i = 0; i < 6; i++) {
		seen[o1[i]]++;
		same &= o1[i] == o2[i];
		diff |= o1[i] != o3[i];
	}
	for (int i = 0; i < 6; i++)
		CHECK_INT(seen[i], 1);
	CHECK(same, "the same seed and epoch gave another order");
	CHECK(diff, "epochs 0 and 1 have the same order");
	free(o1);
	free(o2);
	free(o3);
	free(order);
	train_dataset_free(d);
}

static void adamw_matches_hand_computed_steps(void)
{
	/* p = 1, lr 0.1, betas 0.9/0.999, eps 1e-8, weight decay 0.01, gradients
	 * 0.5, -0.25, 0.125; by hand (PyTorch's formula, in double):
	 * 0.899000002, 0.8714672987058463, 0.8365529176159483. */
	train_adamw_opts o = {.beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f};
	float p = 1, m = 0, v = 0;
	static const float g[] = {0.5f, -0.25f, 0.125f};
	static const double want[] = {0.899000002, 0.8714672987058463, 0.8365529176159483};
	for (int t = 0; t < 3; t++) {
		train_adamw_update(&p, &g[t], &m, &v, 1, 0.1f, &o, t + 1);
		CHECK_NEAR(p, want[t], 2e-6);
	}
	/* Vectors update elementwise: the same as one at a time. */
	float pv[3] = {1, 2, 3}, gv[3] = {0.1f, -0.2f, 0.3f}, mv[3] = {0}, vv[3] = {0};
	train_adamw_update(pv, gv, mv, vv, 3, 0.01f, &o, 1);
	for (int i = 0; i < 3; i++) {
		float p1 = (float)(i + 1), m1 = 0, v1 = 0;
		train_adamw_update(&p1, &gv[i], &m1, &v1, 1, 0.01f, &o, 1);
		CHECK(p1 == pv[i], "element %d: %g alone, %g in a vector", i, p1, pv[i]);
	}
}

static void clipping_by_global_norm(void)
{
	float a[2] = {3, 0}, b[1] = {4};
	double norm = sqrt(train_sum_squares(a, 2) + train_sum_squares(b, 1));
	CHECK_NEAR(norm, 5.0, 1e-12);
	CHECK_NEAR(train_clip_factor(norm, 1.0f), 1.0 / (5.0 + 1e-6), 1e-7);
	CHECK_NEAR(train_clip_factor(norm, 10.0f), 1.0, 0);
	CHECK_NEAR(train_clip_factor(norm, 0), 1.0, 0);
}

static void cosine_schedule_with_warmup(void)
{
	/* Hugging Face's get_cosine_schedule_with_warmup(warmup 3, total 10) at
	 * lr 2e-4, computed in Python. */
	static const double want[] = {0.0, 6.666666666666667e-05, 0.00013333333333333334, 0.0002,
				      0.0001900968867902419, 0.00016234898018587337,
				      0.00012225209339563145, 7.774790660436858e-05,
				      3.7651019814126654e-05, 9.903113209758096e-06};
	train_schedule s = {.lr = 2e-4f, .warmup = 3, .total = 10};
	for (int i = 0; i < 10; i++)
		CHECK_NEAR(train_lr_at(&s, i), want[i], 1e-10);
	train_schedule flat = {.lr = 1e-3f, .warmup = 0, .total = 1};
	CHECK_NEAR(train_lr_at(&flat, 0), 1e-3, 1e-10);
}

static void peft_files_read_back(void)
{
	char *dir = test_tmpdir("train-peft");
	engine_lora_opts o = {.rank = 2, .alpha = 16, .rslora = 1, .targets = 1u | 4u,
			      .dropout = 0.05f};
	float a[2 * 3] = {1, 2, 3, 4, 5, 6}, bm[4 * 2] = {0.5f, -1, 2, 3, 4, 5, 6, 7};
	const char *names[] = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
			       "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"};
	int rows[] = {2, 4}, cols[] = {3, 2};
	const float *data[] = {a, bm};
	owl_err err = {0};
	CHECK_INT(train_peft_write_files(dir, &o, "base@1", NULL, 2, names, rows, cols, data, &err), 0);
	char *path = owl_path_join(dir, "adapter_model.safetensors");
	st_file *f = NULL;
	CHECK_INT(st_open(path, &f, &err), 0);
	if (f) {
		CHECK_INT(st_count(f), 2);
		const st_tensor *t = st_find(f, names[1]);
		CHECK(t && t->dtype == ST_F32 && t->n_dims == 2 && t->shape[0] == 4 && t->shape[1] == 2 &&
		      memcmp(t->data, bm, sizeof bm) == 0, "lora_B did not read back");
		CHECK_STR(st_metadata_get(f, "format"), "pt");
		st_close(f);
	}
	free(path);
	json_t *cfg = NULL;
	CHECK_INT(owl_read_json_object(dir, "adapter_config.json", 1 << 20, (void **)&cfg, &err), 0);
	if (cfg) {
		CHECK_STR(json_string_value(json_object_get(cfg, "peft_type")), "LORA");
		CHECK_INT(json_integer_value(json_object_get(cfg, "r")), 2);
		CHECK_NEAR(json_number_value(json_object_get(cfg, "lora_alpha")), 16, 0);
		/* 16, as PEFT saves its int lora_alpha, not 16.0 */
		CHECK(json_is_integer(json_object_get(cfg, "lora_alpha")), "integral lora_alpha");
		CHECK_NEAR(json_number_value(json_object_get(cfg, "lora_dropout")), 0.05, 1e-12);
		CHECK(json_is_true(json_object_get(cfg, "use_rslora")), "use_rslora");
		json_t *tm = json_object_get(cfg, "target_modules");
		CHECK(json_array_size(tm) == 2 && !strcmp(json_string_value(json_array_get(tm, 0)), "q_proj")
		      && !strcmp(json_string_value(json_array_get(tm, 1)), "v_proj"), "target_modules");
		CHECK(json_is_null(json_object_get(cfg, "modules_to_save")), "modules_to_save");
		CHECK_INT(json_object_size(cfg), 24); /* what PEFT 0.13.2 writes */
		json_decref(cfg);
	}
	/* An alpha with a fraction stays a real. */
	o.alpha = 2.5f;
	char *text = train_peft_config_json(&o, "base@1", NULL);
	cfg = json_loads(text, 0, NULL);
	CHECK(json_is_real(json_object_get(cfg, "lora_alpha")) &&
	      json_real_value(json_object_get(cfg, "lora_alpha")) == 2.5, "lora_alpha 2.5: %s", text);
	json_decref(cfg);
	free(text);
	/* A tensor whose bytes do not match its shape is refused. */
	st_write_tensor bad = {.name = "x", .dtype = ST_F32, .n_dims = 1, .shape = {3}, .data = a,
			       .nbytes = 8};
	path = owl_path_join(dir, "bad.safetensors");
	CHECK_INT(st_write_file(path, &bad, 1, NULL, 0, &err), OWL_EFAIL);
	CHECK(!owl_path_exists(path), "a refused file was left behind");
	free(path);
	unsigned t = 0;
	CHECK_INT(train_parse_targets("all", &t, &err), 0);
	CHECK_INT(t, 127);
	CHECK_INT(train_parse_targets("q_proj,down_proj", &t, &err), 0);
	CHECK_INT(t, 1 | 64);
	CHECK_INT(train_parse_targets("q_proj,lm_head", &t, &err), OWL_EUSAGE);
	CHECK(strstr(err.msg, "'lm_head'"), "%s", err.msg);
	owl_remove_tree(dir, NULL);
	free(dir);
}

int main(void)
{
	/* The tokenizer of a fixture model (ChatML template, EOS <|endoftext|>). */
	const char *build = getenv("OWL_BUILD");
	char *dir = test_tmpdir("train-fixture");
	char *cmd = owl_xasprintf("'%s/owl-fixture' --out '%s/m' --seed 4 --quiet", build ? build : "build",
				  dir);
	char *mdir = owl_path_join(dir, "m");
	owl_err err = {0};
	if (system(cmd) != 0 || engine_tokenizer_load_dir(mdir, &tok, &err)) {
		printf("FAIL tokenizer_loads: %s (%s)\n", err.msg, cmd);
		return 1;
	}
	free(cmd);
	free(mdir);
	owl_remove_tree(dir, NULL);
	free(dir);
	RUN_TEST(text_trains_every_token_and_ends_with_eos);
	RUN_TEST(prompt_completion_trains_the_completion_only);
	RUN_TEST(alpaca_uses_its_prompt_with_and_without_input);
	RUN_TEST(chat_trains_assistant_turns_with_their_end);
	RUN_TEST(chat_masks_for_every_template);
	RUN_TEST(malformed_lines_name_their_line_and_problem);
	RUN_TEST(skip_bad_counts_and_keeps_the_rest);
	RUN_TEST(sample_longer_than_the_sequence_is_refused);
	RUN_TEST(mixed_formats_and_sha256);
	RUN_TEST(split_is_seeded_and_complete);
	RUN_TEST(packing_fills_rows_and_never_crosses_samples);
	RUN_TEST(adamw_matches_hand_computed_steps);
	RUN_TEST(clipping_by_global_norm);
	RUN_TEST(cosine_schedule_with_warmup);
	RUN_TEST(peft_files_read_back);
	engine_tokenizer_free(tok);
	TEST_MAIN_END();
}
