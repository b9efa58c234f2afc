/* Training verbs: train (LoRA fine-tuning into a registered adapter) and
 * runs (what past runs did, with their loss curves). A run lives in
 * runs/RUN/ of the data home: run.json (what was asked and what happened),
 * metrics.jsonl, checkpoint/, adapter/ and loss.svg. */
#define _GNU_SOURCE
#include "cmd.h"
#include "licenses/licenses.h"
#include "train/train.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- options and their defaults ----------------------------------------------------------- */

typedef struct train_args {
	const char *base, *data, *eval, *out, *resume, *targets;
	double eval_fraction;
	train_opts o;
	int alpha_set, seq_len_set, train_on_inputs, skip_bad, threads;
	engine_device device; /* ENGINE_DEVICE_AUTO (the CPU) unless --device */
	int first_gpu;
} train_args;

static void defaults(train_args *a)
{
	memset(a, 0, sizeof *a);
	a->targets = "q_proj,k_proj,v_proj,o_proj";
	a->o.lora = (engine_lora_opts){.rank = 16, .alpha = 32, .dropout = 0.05f};
	a->o.epochs = 3;
	a->o.lr = 2e-4f;
	a->o.batch = 1;
	a->o.grad_accum = 4;
	a->o.seq_len = 512;
	a->o.warmup = -1;
	a->o.adam = (train_adamw_opts){.beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0};
	a->o.max_grad_norm = 1.0f;
	a->o.seed = 42;
	a->o.checkpoint_every = 100;
	a->o.eval_every = 50;
}

/* A number option: the whole text, in range; else a usage error. */
static int num(const char *verb, const char *opt, const char *s, double lo, double hi, double *out)
{
	char *end = NULL;
	errno = 0;
	double v = strtod(s, &end);
	if (end == s || *end || errno || !(v >= lo && v <= hi))
		return cmd_usage_error(verb, "--%s wants a number from %g to %g, not '%s'", opt, lo, hi, s);
	*out = v;
	return 0;
}

static int whole(const char *verb, const char *opt, const char *s, double lo, double hi, double *out)
{
	int rc = num(verb, opt, s, lo, hi, out);
	if (!rc && *out != floor(*out))
		return cmd_usage_error(verb, "--%s wants a whole number, not '%s'", opt, s);
	return rc;
}

static int parse_train(int argc, char **argv, train_args *a)
{
	static const struct option opts[] = {
		{"data", required_argument, 0, 'd'}, {"out", required_argument, 0, 'o'},
		{"eval", required_argument, 0, 'e'}, {"eval-fraction", required_argument, 0, 'E'},
		{"rank", required_argument, 0, 'r'}, {"alpha", required_argument, 0, 'a'},
		{"rslora", no_argument, 0, 'R'}, {"dropout", required_argument, 0, 'D'},
		{"targets", required_argument, 0, 't'}, {"epochs", required_argument, 0, 'n'},
		{"max-steps", required_argument, 0, 'm'}, {"lr", required_argument, 0, 'l'},
		{"batch", required_argument, 0, 'b'}, {"grad-accum", required_argument, 0, 'k'},
		{"seq-len", required_argument, 0, 's'}, {"warmup", required_argument, 0, 'w'},
		{"weight-decay", required_argument, 0, 'W'}, {"max-grad-norm", required_argument, 0, 'g'},
		{"seed", required_argument, 0, 'S'}, {"checkpoint-every", required_argument, 0, 'c'},
		{"eval-every", required_argument, 0, 'v'},
		{"checkpoint-activations", no_argument, 0, 'C'},
		{"train-on-inputs", no_argument, 0, 'I'}, {"skip-bad", no_argument, 0, 'B'},
		{"threads", required_argument, 0, 'j'}, {"resume", required_argument, 0, 'X'},
		{"init", required_argument, 0, 'N'}, {"device", required_argument, 0, 'G'},
		{0, 0, 0, 0},
	};
	defaults(a);
	int c, given = 0;
	double v;
	const char *V = "train";
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		int rc = 0;
		if (c != 'X' && c != 'j' && c != 'G')
			given++;
		switch (c) {
		case 'd': a->data = optarg; break;
		case 'o': a->out = optarg; break;
		case 'e': a->eval = optarg; break;
		case 'E': rc = num(V, "eval-fraction", optarg, 1e-6, 0.9, &a->eval_fraction); break;
		case 'r':
			if (!(rc = whole(V, "rank", optarg, 1, 512, &v)))
				a->o.lora.rank = (int)v;
			break;
		case 'a':
			if (!(rc = num(V, "alpha", optarg, 1e-6, 1e6, &v)))
				a->o.lora.alpha = (float)v, a->alpha_set = 1;
			break;
		case 'R': a->o.lora.rslora = 1; break;
		case 'D':
			if (!(rc = num(V, "dropout", optarg, 0, 0.99, &v)))
				a->o.lora.dropout = (float)v;
			break;
		case 't': a->targets = optarg; break;
		case 'n':
			if (!(rc = whole(V, "epochs", optarg, 1, 1e6, &v)))
				a->o.epochs = (int)v;
			break;
		case 'm':
			if (!(rc = whole(V, "max-steps", optarg, 1, 1e12, &v)))
				a->o.max_steps = (int64_t)v;
			break;
		case 'l':
			if (!(rc = num(V, "lr", optarg, 1e-12, 10, &v)))
				a->o.lr = (float)v;
			break;
		case 'b':
			if (!(rc = whole(V, "batch", optarg, 1, 4096, &v)))
				a->o.batch = (int)v;
			break;
		case 'k':
			if (!(rc = whole(V, "grad-accum", optarg, 1, 1 << 20, &v)))
				a->o.grad_accum = (int)v;
			break;
		case 's':
			if (!(rc = whole(V, "seq-len", optarg, 2, 1 << 20, &v)))
				a->o.seq_len = (int)v, a->seq_len_set = 1;
			break;
		case 'w':
			if (!(rc = whole(V, "warmup", optarg, 0, 1e12, &v)))
				a->o.warmup = (int64_t)v;
			break;
		case 'W':
			if (!(rc = num(V, "weight-decay", optarg, 0, 10, &v)))
				a->o.adam.weight_decay = (float)v;
			break;
		case 'g':
			if (!(rc = num(V, "max-grad-norm", optarg, 0, 1e9, &v)))
				a->o.max_grad_norm = (float)v;
			break;
		case 'S':
			if (!(rc = whole(V, "seed", optarg, 0, 9007199254740992.0, &v)))
				a->o.seed = (uint64_t)v;
			break;
		case 'c':
			if (!(rc = whole(V, "checkpoint-every", optarg, 0, 1e12, &v)))
				a->o.checkpoint_every = (int64_t)v;
			break;
		case 'v':
			if (!(rc = whole(V, "eval-every", optarg, 0, 1e12, &v)))
				a->o.eval_every = (int64_t)v;
			break;
		case 'C': a->o.checkpoint_activations = 1; break;
		case 'I': a->train_on_inputs = 1; break;
		case 'B': a->skip_bad = 1; break;
		case 'j':
			if (!(rc = whole(V, "threads", optarg, 0, 4096, &v)))
				a->threads = (int)v;
			break;
		case 'X': a->resume = optarg; break;
		case 'N': a->o.init_adapter = optarg; break;
		case 'G': {
			owl_err e = {0};
			if (engine_device_parse(optarg, &a->device, &a->first_gpu, &e))
				return cmd_usage_error(V, "--device: %s", e.msg);
			break;
		}
		default: return cmd_usage_error(V, "unknown option");
		}
		if (rc)
			return rc;
	}
	if (a->resume) {
		if (optind != argc || given)
			return cmd_usage_error(V, "--resume RUN continues a run with its own options: "
					       "give no BASE and no other option (but --threads and --device)");
		return 0;
	}
	if (optind != argc - 1)
		return cmd_usage_error(V, "expected one BASE[@V|:TAG]");
	a->base = argv[optind];
	if (!a->data)
		return cmd_usage_error(V, "--data FILE.jsonl is required");
	if (!a->out)
		return cmd_usage_error(V, "--out NAME is required (the adapter's name in the registry)");
	if (!registry_valid_name(a->out))
		return cmd_usage_error(V, "invalid --out '%s': use letters, digits, '-', '_', '.' and '/'",
				       a->out);
	if (a->eval && a->eval_fraction > 0)
		return cmd_usage_error(V, "--eval FILE and --eval-fraction F exclude each other");
	if (!a->alpha_set)
		a->o.lora.alpha = 2.0f * (float)a->o.lora.rank;
	owl_err err = {0};
	if (train_parse_targets(a->targets, &a->o.lora.targets, &err))
		return cmd_usage_error(V, "--targets: %s", err.msg);
	a->o.lora.seed = a->o.seed;
	return 0;
}

/* ---- run.json -------------------------------------------------------------------------------- */

/* An f32 option as JSON: 0.05, not the double nearest 0.05f (0.050000000745...). */
static json_t *json_f32(float f)
{
	char text[32];
	snprintf(text, sizeof text, "%.7g", f);
	return json_real(strtod(text, NULL));
}

static json_t *hyper_json(const train_args *a)
{
	const train_opts *o = &a->o;
	json_t *targets = json_array();
	for (int r = 0; r < 7; r++)
		if (o->lora.targets & (1u << r))
			json_array_append_new(targets, json_string(engine_lora_module_names[r]));
	json_t *h = json_object();
	json_object_set_new(h, "rank", json_integer(o->lora.rank));
	json_object_set_new(h, "alpha", json_f32(o->lora.alpha));
	json_object_set_new(h, "rslora", json_boolean(o->lora.rslora));
	json_object_set_new(h, "dropout", json_f32(o->lora.dropout));
	json_object_set_new(h, "targets", targets);
	json_object_set_new(h, "epochs", json_integer(o->epochs));
	json_object_set_new(h, "max_steps", json_integer(o->max_steps));
	json_object_set_new(h, "lr", json_f32(o->lr));
	json_object_set_new(h, "batch", json_integer(o->batch));
	json_object_set_new(h, "grad_accum", json_integer(o->grad_accum));
	json_object_set_new(h, "seq_len", json_integer(o->seq_len));
	json_object_set_new(h, "warmup", json_integer(o->warmup));
	json_object_set_new(h, "weight_decay", json_f32(o->adam.weight_decay));
	json_object_set_new(h, "beta1", json_f32(o->adam.beta1));
	json_object_set_new(h, "beta2", json_f32(o->adam.beta2));
	json_object_set_new(h, "eps", json_f32(o->adam.eps));
	json_object_set_new(h, "max_grad_norm", json_f32(o->max_grad_norm));
	json_object_set_new(h, "seed", json_integer((json_int_t)o->seed));
	json_object_set_new(h, "checkpoint_every", json_integer(o->checkpoint_every));
	json_object_set_new(h, "eval_every", json_integer(o->eval_every));
	json_object_set_new(h, "checkpoint_activations", json_boolean(o->checkpoint_activations));
	json_object_set_new(h, "train_on_inputs", json_boolean(a->train_on_inputs));
	json_object_set_new(h, "skip_bad", json_boolean(a->skip_bad));
	json_object_set_new(h, "eval_fraction", json_real(a->eval_fraction));
	if (o->init_adapter) {
		char *abs = realpath(o->init_adapter, NULL);
		json_object_set_new(h, "init", json_string(abs ? abs : o->init_adapter));
		free(abs);
	}
	return h;
}

/* The options of a run back from its run.json (--resume). */
static int hyper_from_json(json_t *h, train_args *a, owl_err *err)
{
	defaults(a);
	train_opts *o = &a->o;
#define F(key) json_number_value(json_object_get(h, key))
	o->lora.rank = (int)F("rank");
	o->lora.alpha = (float)F("alpha");
	o->lora.rslora = json_is_true(json_object_get(h, "rslora"));
	o->lora.dropout = (float)F("dropout");
	o->epochs = (int)F("epochs");
	o->max_steps = (int64_t)F("max_steps");
	o->lr = (float)F("lr");
	o->batch = (int)F("batch");
	o->grad_accum = (int)F("grad_accum");
	o->seq_len = (int)F("seq_len");
	o->warmup = (int64_t)F("warmup");
	o->adam.weight_decay = (float)F("weight_decay");
	o->adam.beta1 = (float)F("beta1");
	o->adam.beta2 = (float)F("beta2");
	o->adam.eps = (float)F("eps");
	o->max_grad_norm = (float)F("max_grad_norm");
	o->seed = (uint64_t)json_integer_value(json_object_get(h, "seed"));
	o->checkpoint_every = (int64_t)F("checkpoint_every");
	o->eval_every = (int64_t)F("eval_every");
	o->checkpoint_activations = json_is_true(json_object_get(h, "checkpoint_activations"));
	a->train_on_inputs = json_is_true(json_object_get(h, "train_on_inputs"));
	a->skip_bad = json_is_true(json_object_get(h, "skip_bad"));
	a->eval_fraction = F("eval_fraction");
#undef F
	o->lora.seed = o->seed;
	a->seq_len_set = 1;
	a->alpha_set = 1;
	owl_buf t;
	owl_buf_init(&t, 256);
	size_t i;
	json_t *x;
	json_array_foreach(json_object_get(h, "targets"), i, x)
		owl_buf_printf(&t, "%s%s", i ? "," : "", json_string_value(x));
	int rc = train_parse_targets(t.len ? t.data : "", &o->lora.targets, err);
	owl_buf_release(&t);
	return rc;
}

static int write_run_json(const char *run_dir, json_t *run, owl_err *err)
{
	char *text = json_dumps(run, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(7));
	char *path = owl_path_join(run_dir, "run.json");
	int rc = owl_write_file_atomic(path, text, strlen(text), err);
	free(path);
	free(text);
	return rc;
}

static json_t *dataset_json(const char *path, const train_dataset *d)
{
	json_t *j = json_object();
	char *abs = realpath(path, NULL);
	json_object_set_new(j, "path", json_string(abs ? abs : path));
	free(abs);
	json_object_set_new(j, "sha256", json_string(d->sha256));
	json_object_set_new(j, "lines", json_integer((json_int_t)d->lines));
	json_object_set_new(j, "samples", json_integer((json_int_t)d->n));
	json_object_set_new(j, "skipped", json_integer((json_int_t)d->skipped));
	json_object_set_new(j, "format", json_string(d->format));
	json_object_set_new(j, "tokens", json_integer(d->tokens));
	json_object_set_new(j, "trained_tokens", json_integer(d->trained_tokens));
	return j;
}

/* ---- progress and Ctrl-C ------------------------------------------------------------------- */

static volatile sig_atomic_t train_interrupted;

static void on_train_signal(int sig)
{
	if (train_interrupted)
		_exit(130);
	train_interrupted = 1;
}

static int train_should_stop(void *ctx) { return train_interrupted != 0; }

static void train_step_line(void *ctx, const train_progress *p)
{
	const owl_ctx *c = ctx;
	if (c->quiet || c->json)
		return;
	char eta[32];
	owl_fmt_duration(p->eta_s, eta, sizeof eta);
	fprintf(stderr, "step %lld/%lld  loss %.4f  lr %.3e  %.0f tok/s  ETA %s", (long long)p->step,
		(long long)p->total, p->loss, p->lr, p->tok_per_s, eta);
	if (p->has_eval)
		fprintf(stderr, "  eval loss %.4f", p->eval_loss);
	fprintf(stderr, "\n");
}

/* ---- registering the adapter ----------------------------------------------------------------- */

/* The base as PEFT's base_model_name_or_path: the hub repository it was
 * pulled from, else its registry reference. */
static char *base_model_name(const registry_version *v)
{
	if (v->source && !strncmp(v->source, "hf://", 5)) {
		char *s = owl_xstrdup(v->source + 5), *at = strchr(s, '@');
		if (at)
			*at = 0;
		return s;
	}
	return owl_xasprintf("%s@%d", v->model, v->number);
}

/* Stages run_dir/adapter, adds the lineage to its summary and registers it
 * as the next version of name, derived from the base. */
static int register_adapter(owl_ctx *ctx, const char *run_dir, const char *run_id,
			    const char *name, int64_t base_id, json_t *lineage,
			    registry_commit_result *res, char **license_out, owl_err *err)
{
	registry_store *s = NULL;
	registry_stage *st = NULL;
	int rc = cmd_open_store(ctx, &s, err);
	char *source = owl_xasprintf("owl train run %s", run_id);
	char *adir = owl_path_join(run_dir, "adapter");
	if (!rc)
		rc = registry_stage_new(s, source, &st, err);
	static const char *const files[] = {"adapter_config.json", "adapter_model.safetensors"};
	for (int i = 0; i < 2 && !rc; i++) {
		char *p = owl_path_join(adir, files[i]);
		rc = registry_stage_copy(st, p, files[i], NULL, NULL, err);
		free(p);
	}
	if (!rc)
		rc = registry_stage_validate(st, err);
	if (!rc && strcmp(st->format, "adapter") != 0)
		rc = owl_err_set(err, OWL_EFAIL, "the run's adapter folder was taken for format %s",
				 st->format);
	if (!rc) {
		json_t *sum = json_loads(st->config_json ? st->config_json : "{}", 0, NULL);
		if (!sum)
			sum = json_object();
		json_object_set(sum, "lineage", lineage);
		free(st->config_json);
		st->config_json = json_dumps(sum, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(7));
		json_decref(sum);
	}
	license_admit_result adm = {0};
	if (!rc)
		rc = license_admit_stage(s, st, name, base_id, NULL, &adm, err);
	if (!rc) {
		*res = adm.commit;
		*license_out = owl_xstrdup(adm.license);
		license_admit_result_release(&adm);
	}
	registry_stage_free(st);
	registry_store_close(s);
	free(source);
	free(adir);
	return rc;
}

/* ---- train ----------------------------------------------------------------------------------- */

static char *new_run_id(void)
{
	time_t now = time(NULL);
	struct tm tm;
	gmtime_r(&now, &tm);
	uint64_t r = (uint64_t)getpid() * 0x9e3779b97f4a7c15ull ^ (uint64_t)(owl_now() * 1e6);
	return owl_xasprintf("%04d%02d%02d-%02d%02d%02d-%04x", tm.tm_year + 1900, tm.tm_mon + 1,
			     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
			     (unsigned)(train_rng_next(&r) & 0xffff));
}

/* A run id names a folder under runs/: nothing else. */
static int valid_run_id(const char *id)
{
	if (!*id || strlen(id) > 64)
		return 0;
	for (const char *p = id; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      *p == '-' || *p == '_'))
			return 0;
	return 1;
}

/* Holds runs/RUN/lock (flock) while the run trains, so that two owls never
 * train, checkpoint or resume the same run at once. Returns the descriptor. */
static int lock_run(const char *run_dir, const char *run_id, int *fd_out, owl_err *err)
{
	char *path = owl_path_join(run_dir, "lock");
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	free(path);
	if (fd < 0)
		return owl_err_set(err, OWL_EFAIL, "cannot open the lock of run %s: %s", run_id,
				   strerror(errno));
	if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
		close(fd);
		return owl_err_set(err, OWL_EFAIL, "run %s is being trained by another owl right now",
				   run_id);
	}
	*fd_out = fd;
	return 0;
}

static int is_vllm_rank(int r)
{
	static const int ok[] = {1, 8, 16, 32, 64, 128, 256, 320, 512};
	for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
		if (ok[i] == r)
			return 1;
	return 0;
}

static int run_train(owl_ctx *ctx, int argc, char **argv)
{
	train_args a;
	int rc = parse_train(argc, argv, &a);
	if (rc)
		return rc;
	owl_err err = {0};
	registry_store *s = NULL;
	registry_version base = {0};
	engine_model *m = NULL;
	engine_tokenizer *tok = NULL;
	train_dataset *tr = NULL, *ev = NULL;
	json_t *run = NULL;
	char *run_id = NULL, *run_dir = NULL, *runs_dir = NULL, *path = NULL, *base_label = NULL;
	char *base_name = NULL, *license = NULL;
	int resume = a.resume != NULL;
	int threads = a.threads, first_gpu = a.first_gpu;
	engine_device device = a.device;
	int lock_fd = -1;

	if ((rc = cmd_open_store(ctx, &s, &err)))
		goto fail;
	runs_dir = owl_path_join(registry_store_home(s), "runs");

	if (resume) {
		/* Everything but the machine's threads comes from the run itself. */
		if (!valid_run_id(a.resume)) {
			rc = owl_err_set(&err, OWL_EUSAGE, "'%s' is not a run id (see 'owl runs list')",
					 a.resume);
			goto fail;
		}
		run_id = owl_xstrdup(a.resume);
		run_dir = owl_path_join(runs_dir, run_id);
		if (!owl_is_dir(run_dir)) {
			rc = owl_err_set(&err, OWL_EUSAGE, "no run %s in %s ('owl runs list' shows the runs)",
					 run_id, runs_dir);
			goto fail;
		}
		if ((rc = lock_run(run_dir, run_id, &lock_fd, &err)))
			goto fail;
		if ((rc = owl_read_json_object(run_dir, "run.json", 1 << 20, (void **)&run, &err))) {
			owl_err_wrap(&err, "cannot resume run %s", run_id);
			goto fail;
		}
		const char *status = json_string_value(json_object_get(run, "status"));
		if (status && !strcmp(status, "registered")) {
			rc = owl_err_set(&err, OWL_EUSAGE, "run %s is finished: its adapter is %s", run_id,
					 json_string_value(json_object_get(run, "adapter")));
			goto fail;
		}
		if ((rc = hyper_from_json(json_object_get(run, "hyperparameters"), &a, &err)))
			goto fail;
		a.out = json_string_value(json_object_get(run, "out"));
		a.data = json_string_value(json_object_get(json_object_get(run, "data"), "path"));
		a.eval = json_string_value(json_object_get(json_object_get(run, "eval"), "path"));
		if (a.eval_fraction > 0)
			a.eval = NULL;
		int64_t bid = json_integer_value(json_object_get(run, "base_version_id"));
		if (!a.out || !a.data || !bid) {
			rc = owl_err_set(&err, OWL_EINTEGRITY, "%s/run.json lacks out, data or base",
					 run_dir);
			goto fail;
		}
		if ((rc = registry_version_by_id(s, bid, &base, &err)))
			goto fail;
		a.threads = threads, a.device = device, a.first_gpu = first_gpu;
	} else if ((rc = registry_resolve(s, a.base, &base, &err))) {
		/* The adapter is registered as a version derived from its base, so
		 * the base must be one. */
		if (owl_path_exists(a.base))
			owl_err_set(&err, OWL_EUSAGE, "'%s' is a path: owl train takes a registered "
				    "model ('owl pull %s' registers it)", a.base, a.base);
		rc = err.code;
		goto fail;
	}
	base_label = owl_xasprintf("%s@%d", base.model, base.number);
	if (strcmp(base.format, "hf") != 0 && strcmp(base.format, "gguf") != 0) {
		rc = owl_err_set(&err, OWL_EUSAGE, "%s is a version of format %s: train on a model "
				 "(a checkpoint or a GGUF), not on an adapter", base_label, base.format);
		goto fail;
	}
	/* The gate first, before any work: a denial costs nothing and leaves
	 * nothing but its audit row. */
	license_request rq = {.model = a.out, .version_id = base.id, .action = "finetune",
			      .derived = 1};
	license_decision d;
	if ((rc = license_gate(s, &rq, &d, &err)))
		goto fail;
	if ((rc = registry_version_materialize(s, &base, &path, &err)))
		goto fail;
	/* auto trains on the CPU (see the help): a GPU only when --device names it. */
	engine_model_opts mo = {.threads = a.threads, .first_gpu = a.first_gpu,
				.device = a.device == ENGINE_DEVICE_CUDA ? ENGINE_DEVICE_CUDA
									 : ENGINE_DEVICE_CPU};
	if ((rc = engine_model_open(path, &mo, &m, &err)) ||
	    (rc = engine_tokenizer_for_model(m, &tok, &err))) {
		owl_err_wrap(&err, "cannot load %s", base_label);
		goto fail;
	}
	const engine_model_info *info = engine_model_get_info(m);
	if (!a.seq_len_set && a.o.seq_len > info->ctx_train)
		a.o.seq_len = info->ctx_train;
	if (a.o.seq_len > info->ctx_train) {
		rc = owl_err_set(&err, OWL_EUSAGE, "--seq-len %d is longer than %s's context of %d "
				 "tokens", a.o.seq_len, base_label, info->ctx_train);
		goto fail;
	}
	train_data_opts dopt = {.train_on_inputs = a.train_on_inputs, .skip_bad = a.skip_bad,
				.max_tokens = a.o.seq_len + 1};
	if ((rc = train_dataset_load(a.data, tok, &dopt, &tr, &err))) {
		if (strstr(err.msg, "more than the"))
			owl_err_wrap(&err, "--data (shorten the sample, or raise --seq-len up to %d)",
				     info->ctx_train);
		else
			owl_err_wrap(&err, "--data%s", a.skip_bad ? "" : " (--skip-bad skips malformed lines)");
		goto fail;
	}
	if (resume) {
		const char *want = json_string_value(json_object_get(json_object_get(run, "data"), "sha256"));
		if (!want || strcmp(want, tr->sha256) != 0) {
			rc = owl_err_set(&err, OWL_EUSAGE, "%s changed since run %s began (sha256 %s, now "
					 "%s): a resume trains on the same data", a.data, run_id,
					 want ? want : "?", tr->sha256);
			goto fail;
		}
	}
	if (a.eval) {
		if ((rc = train_dataset_load(a.eval, tok, &dopt, &ev, &err))) {
			owl_err_wrap(&err, "--eval");
			goto fail;
		}
	} else if (a.eval_fraction > 0 &&
		   (rc = train_dataset_split(tr, a.eval_fraction, a.o.seed, &ev, &err))) {
		owl_err_wrap(&err, "--eval-fraction");
		goto fail;
	}
	int64_t total = train_total_steps(tr, &a.o);
	if (a.o.warmup < 0)
		a.o.warmup = (int64_t)(0.03 * (double)total);

	if (!resume) {
		run_id = new_run_id();
		run_dir = owl_path_join(runs_dir, run_id);
		if ((rc = owl_mkdir_p(run_dir, &err)) || (rc = lock_run(run_dir, run_id, &lock_fd, &err)))
			goto fail;
		char when[32];
		owl_fmt_time(owl_unix_time(), when, sizeof when);
		run = json_object();
		json_object_set_new(run, "run", json_string(run_id));
		json_object_set_new(run, "status", json_string("running"));
		json_object_set_new(run, "created_at", json_string(when));
		json_object_set_new(run, "user", json_string(owl_user_name()));
		json_object_set_new(run, "base", json_string(base_label));
		json_object_set_new(run, "base_version_id", json_integer(base.id));
		json_object_set_new(run, "out", json_string(a.out));
		json_object_set_new(run, "data", dataset_json(a.data, tr));
		if (ev)
			json_object_set_new(run, "eval", a.eval ? dataset_json(a.eval, ev)
								: json_pack("{s:f, s:I}", "fraction",
									    a.eval_fraction, "samples",
									    (json_int_t)ev->n));
		json_object_set_new(run, "hyperparameters", hyper_json(&a));
		json_object_set_new(run, "total_steps", json_integer(total));
		if ((rc = write_run_json(run_dir, run, &err)))
			goto fail;
	} else {
		json_object_set_new(run, "status", json_string("running"));
		if ((rc = write_run_json(run_dir, run, &err)))
			goto fail;
	}
	/* Training takes long: no database connection is held meanwhile. */
	registry_store_close(s);
	s = NULL;

	if (!ctx->quiet && !ctx->json) {
		fprintf(stderr, "%s run %s: %s on %s, %zu samples (%s, %lld trained tokens%s), %lld steps\n",
			resume ? "resuming" : "training", run_id, a.out, base_label, tr->n, tr->format,
			(long long)tr->trained_tokens, ev ? ", eval held out" : "", (long long)total);
		if (tr->skipped)
			fprintf(stderr, "owl: skipped %zu malformed line%s of %s (first, %s)\n", tr->skipped,
				tr->skipped == 1 ? "" : "s", a.data, tr->first_skipped);
		/* vLLM serves an adapter of rank r under a --max-lora-rank >= r, and takes only
		 * these values for it (vllm/config/lora.py; 8 to 256 in 0.6). */
		if (a.o.lora.rank > 512)
			fprintf(stderr, "owl: note: rank %d is above 512, vLLM's largest --max-lora-rank: "
				"vLLM cannot serve the adapter (PEFT, llama.cpp and owl can)\n",
				a.o.lora.rank);
		else if (!is_vllm_rank(a.o.lora.rank))
			fprintf(stderr, "owl: note: vLLM's --max-lora-rank is one of 1, 8, 16, 32, 64, "
				"128, 256, 320, 512; a rank-%d adapter is served under the next of them "
				"up, with that rank's memory\n", a.o.lora.rank);
		if (a.o.lora.rslora)
			fprintf(stderr, "owl: note: --rslora: vLLM 0.6 refuses rsLoRA adapters (later "
				"versions accept them), and llama.cpp's convert_lora_to_gguf.py ignores "
				"use_rslora and scales by alpha/r, so there the adapter is not applied as "
				"trained\n");
	}
	base_name = base_model_name(&base);
	train_hooks hooks = {.step = train_step_line, .stop = train_should_stop, .ctx = ctx};
	train_result res;
	struct sigaction sa = {.sa_handler = on_train_signal}, old_int, old_term;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, &old_int);
	sigaction(SIGTERM, &sa, &old_term);
	rc = train_run(m, tr, ev, &a.o, run_dir, resume, base_name, &hooks, &res, &err);
	sigaction(SIGINT, &old_int, NULL);
	sigaction(SIGTERM, &old_term, NULL);

	char *metrics = owl_path_join(run_dir, "metrics.jsonl");
	char *svg_path = owl_path_join(run_dir, "loss.svg");
	train_curves curves;
	if (!train_curves_read(metrics, &curves, NULL)) {
		char *title = owl_xasprintf("%s on %s, run %s", a.out, base_label, run_id);
		char *svg = train_curves_svg(&curves, title);
		owl_write_file_atomic(svg_path, svg, strlen(svg), NULL);
		free(svg);
		free(title);
		train_curves_release(&curves);
	}
	if (rc || res.stopped) {
		json_object_set_new(run, "status", json_string(rc ? "failed" : "stopped"));
		if (rc)
			json_object_set_new(run, "error", json_string(err.msg));
		json_object_set_new(run, "steps", json_integer(res.steps));
		owl_err e2 = {0};
		write_run_json(run_dir, run, &e2);
		if (!rc) {
			fprintf(stderr, "owl: stopped at step %lld of %lld with a checkpoint; nothing was "
				"registered. 'owl train --resume %s' continues\n", (long long)res.steps,
				(long long)res.total_steps, run_id);
			rc = OWL_EFAIL;
			free(metrics);
			free(svg_path);
			goto done;
		}
		free(metrics);
		free(svg_path);
		goto fail;
	}

	json_t *lineage = json_object();
	json_object_set_new(lineage, "base", json_string(base_label));
	json_object_set_new(lineage, "run", json_string(run_id));
	json_object_set_new(lineage, "dataset", json_pack("{s:s, s:I, s:I, s:s}", "sha256", tr->sha256,
							  "lines", (json_int_t)tr->lines, "samples",
							  (json_int_t)tr->n, "format", tr->format));
	json_object_set(lineage, "hyperparameters", json_object_get(run, "hyperparameters"));
	json_object_set_new(lineage, "steps", json_integer(res.steps));
	json_object_set_new(lineage, "final_loss", json_real(isfinite(res.last_loss) ? res.last_loss : 0));
	if (res.has_eval && isfinite(res.eval_loss))
		json_object_set_new(lineage, "eval_loss", json_real(res.eval_loss));
	registry_commit_result cr = {0};
	rc = register_adapter(ctx, run_dir, run_id, a.out, base.id, lineage, &cr, &license, &err);
	json_decref(lineage);
	if (rc) {
		json_object_set_new(run, "status", json_string("failed"));
		json_object_set_new(run, "error", json_string(err.msg));
		owl_err e2 = {0};
		write_run_json(run_dir, run, &e2);
		free(metrics);
		free(svg_path);
		goto fail;
	}
	char *ref = owl_xasprintf("%s@%d", a.out, cr.number);
	json_object_set_new(run, "status", json_string("registered"));
	json_object_set_new(run, "adapter", json_string(ref));
	json_object_set_new(run, "steps", json_integer(res.steps));
	json_object_set_new(run, "first_loss", json_real(isfinite(res.first_loss) ? res.first_loss : 0));
	json_object_set_new(run, "final_loss", json_real(isfinite(res.last_loss) ? res.last_loss : 0));
	if (res.has_eval && isfinite(res.eval_loss))
		json_object_set_new(run, "eval_loss", json_real(res.eval_loss));
	json_object_set_new(run, "seconds", json_real(res.seconds));
	write_run_json(run_dir, run, &err);
	if (ctx->json) {
		json_t *o = json_object();
		json_object_set_new(o, "run", json_string(run_id));
		json_object_set_new(o, "adapter", json_string(ref));
		json_object_set_new(o, "base", json_string(base_label));
		json_object_set_new(o, "steps", json_integer(res.steps));
		json_object_set_new(o, "first_loss", json_real(isfinite(res.first_loss) ? res.first_loss : 0));
		json_object_set_new(o, "final_loss", json_real(isfinite(res.last_loss) ? res.last_loss : 0));
		if (res.has_eval && isfinite(res.eval_loss))
			json_object_set_new(o, "eval_loss", json_real(res.eval_loss));
		json_object_set_new(o, "tokens", json_integer(res.tokens));
		json_object_set_new(o, "seconds", json_real(res.seconds));
		json_object_set_new(o, "license", json_string(license));
		json_object_set_new(o, "run_dir", json_string(run_dir));
		json_object_set_new(o, "metrics", json_string(metrics));
		json_object_set_new(o, "loss_curve", json_string(svg_path));
		cmd_print_json(o);
	} else {
		char dur[32];
		owl_fmt_duration(res.seconds, dur, sizeof dur);
		printf("run %s: %lld steps in %s, loss %.4f -> %.4f", run_id, (long long)res.steps, dur,
		       res.first_loss, res.last_loss);
		if (res.has_eval)
			printf(", eval loss %.4f", res.eval_loss);
		printf("\nregistered %s, an adapter of %s (license: %s)\n", ref, base_label, license);
		printf("  metrics:    %s\n  loss curve: %s\n", metrics, svg_path);
	}
	free(ref);
	free(metrics);
	free(svg_path);
	rc = OWL_OK;
	goto done;
fail:
	rc = cmd_fail(&err);
done:
	if (lock_fd >= 0)
		close(lock_fd);
	json_decref(run);
	train_dataset_free(tr);
	train_dataset_free(ev);
	engine_tokenizer_free(tok);
	engine_model_close(m);
	registry_version_release(&base);
	registry_store_close(s);
	free(run_id), free(run_dir), free(runs_dir), free(path), free(base_label), free(base_name);
	free(license);
	return rc;
}

/* ---- runs --------------------------------------------------------------------------------------- */

static int runs_list(owl_ctx *ctx, const char *runs_dir)
{
	char **names = NULL;
	size_t n = 0;
	owl_err err = {0};
	if (owl_is_dir(runs_dir) && owl_list_dir(runs_dir, &names, &n, &err))
		return cmd_fail(&err);
	json_t *arr = json_array();
	if (!ctx->json)
		printf("%-22s %-10s %-24s %-24s %9s %9s\n", "RUN", "STATUS", "BASE", "ADAPTER", "STEPS",
		       "LOSS");
	for (size_t i = 0; i < n; i++) {
		char *dir = owl_path_join(runs_dir, names[i]);
		json_t *r = NULL;
		if (owl_read_json_object(dir, "run.json", 1 << 20, (void **)&r, NULL) == 0) {
			const char *adapter = json_string_value(json_object_get(r, "adapter"));
			const char *name = json_string_value(json_object_get(r, "out"));
			const char *status = json_string_value(json_object_get(r, "status"));
			const char *base = json_string_value(json_object_get(r, "base"));
			char out[160];
			snprintf(out, sizeof out, "%s", adapter ? adapter : name ? name : "-");
			if (ctx->json) {
				json_array_append(arr, r);
			} else {
				json_t *fl = json_object_get(r, "final_loss");
				char loss[32] = "-";
				if (json_is_number(fl))
					snprintf(loss, sizeof loss, "%.4f", json_number_value(fl));
				printf("%-22s %-10s %-24s %-24s %4lld/%-4lld %9s\n", names[i],
				       status ? status : "?", base ? base : "?", out,
				       (long long)json_integer_value(json_object_get(r, "steps")),
				       (long long)json_integer_value(json_object_get(r, "total_steps")), loss);
			}
			json_decref(r);
		}
		free(dir);
	}
	owl_free_names(names, n);
	if (ctx->json)
		cmd_print_json(arr);
	else {
		json_decref(arr);
		if (!n)
			printf("(no runs yet: 'owl train BASE --data FILE --out NAME' starts one)\n");
	}
	return OWL_OK;
}

static int runs_show(owl_ctx *ctx, const char *runs_dir, const char *id)
{
	owl_err err = {0};
	if (!valid_run_id(id))
		return cmd_usage_error("runs", "'%s' is not a run id", id);
	char *dir = owl_path_join(runs_dir, id);
	json_t *r = NULL;
	if (owl_read_json_object(dir, "run.json", 1 << 20, (void **)&r, &err)) {
		free(dir);
		owl_err_set(&err, OWL_EUSAGE, "no run %s in %s ('owl runs list' shows the runs)", id,
			    runs_dir);
		return cmd_fail(&err);
	}
	char *metrics = owl_path_join(dir, "metrics.jsonl");
	char *svg_path = owl_path_join(dir, "loss.svg");
	train_curves c;
	int rc = train_curves_read(metrics, &c, &err);
	if (!rc) {
		char *title = owl_xasprintf("%s on %s, run %s", json_string_value(json_object_get(r, "out")),
					    json_string_value(json_object_get(r, "base")), id);
		char *svg = train_curves_svg(&c, title);
		rc = owl_write_file_atomic(svg_path, svg, strlen(svg), &err);
		free(svg);
		free(title);
	}
	if (rc) {
		json_decref(r);
		free(dir), free(metrics), free(svg_path);
		return cmd_fail(&err);
	}
	if (ctx->json) {
		json_object_set_new(r, "metrics", json_string(metrics));
		json_object_set_new(r, "loss_curve", json_string(svg_path));
		json_t *tl = json_array(), *el = json_array();
		for (size_t i = 0; i < c.ntrain; i++)
			json_array_append_new(tl, json_pack("[I, f]", (json_int_t)c.train[i].step,
							    isfinite(c.train[i].loss) ? c.train[i].loss : 0));
		for (size_t i = 0; i < c.neval; i++)
			json_array_append_new(el, json_pack("[I, f]", (json_int_t)c.eval[i].step,
							    isfinite(c.eval[i].loss) ? c.eval[i].loss : 0));
		json_object_set_new(r, "train_loss", tl);
		json_object_set_new(r, "eval_loss_curve", el);
		cmd_print_json(json_incref(r));
	} else {
		json_t *d = json_object_get(r, "data"), *h = json_object_get(r, "hyperparameters");
		printf("run %s: %s\n", id, json_string_value(json_object_get(r, "status")));
		printf("  base:     %s\n", json_string_value(json_object_get(r, "base")));
		const char *adapter = json_string_value(json_object_get(r, "adapter"));
		printf("  adapter:  %s\n", adapter ? adapter : "(not registered)");
		printf("  created:  %s by %s\n", json_string_value(json_object_get(r, "created_at")),
		       json_string_value(json_object_get(r, "user")));
		printf("  data:     %s\n            sha256:%s, %lld lines, %lld samples (%s), %lld "
		       "skipped\n", json_string_value(json_object_get(d, "path")),
		       json_string_value(json_object_get(d, "sha256")),
		       (long long)json_integer_value(json_object_get(d, "lines")),
		       (long long)json_integer_value(json_object_get(d, "samples")),
		       json_string_value(json_object_get(d, "format")),
		       (long long)json_integer_value(json_object_get(d, "skipped")));
		printf("  training: rank %lld, alpha %g, lr %g, batch %lld x %lld tokens, grad-accum %lld, "
		       "seed %lld\n", (long long)json_integer_value(json_object_get(h, "rank")),
		       json_number_value(json_object_get(h, "alpha")),
		       json_number_value(json_object_get(h, "lr")),
		       (long long)json_integer_value(json_object_get(h, "batch")),
		       (long long)json_integer_value(json_object_get(h, "seq_len")),
		       (long long)json_integer_value(json_object_get(h, "grad_accum")),
		       (long long)json_integer_value(json_object_get(h, "seed")));
		printf("  steps:    %lld of %lld\n", (long long)json_integer_value(json_object_get(r, "steps")),
		       (long long)json_integer_value(json_object_get(r, "total_steps")));
		if (c.ntrain)
			printf("  loss:     %.4f at step %lld, %.4f at step %lld\n", c.train[0].loss,
			       (long long)c.train[0].step, c.train[c.ntrain - 1].loss,
			       (long long)c.train[c.ntrain - 1].step);
		if (c.neval)
			printf("  eval:     %.4f at step %lld\n", c.eval[c.neval - 1].loss,
			       (long long)c.eval[c.neval - 1].step);
		const char *e = json_string_value(json_object_get(r, "error"));
		if (e)
			printf("  error:    %s\n", e);
		printf("  metrics:    %s\n  loss curve: %s\n", metrics, svg_path);
	}
	train_curves_release(&c);
	json_decref(r);
	free(dir), free(metrics), free(svg_path);
	return OWL_OK;
}

static int run_runs(owl_ctx *ctx, int argc, char **argv)
{
	if (argc < 2 || (strcmp(argv[1], "list") && strcmp(argv[1], "show")))
		return cmd_usage_error("runs", "expected 'list' or 'show RUN'");
	if (!strcmp(argv[1], "list") && argc != 2)
		return cmd_usage_error("runs", "'runs list' takes no argument");
	if (!strcmp(argv[1], "show") && argc != 3)
		return cmd_usage_error("runs", "expected 'runs show RUN'");
	owl_err err = {0};
	registry_store *s = NULL;
	if (cmd_open_store(ctx, &s, &err))
		return cmd_fail(&err);
	char *runs_dir = owl_path_join(registry_store_home(s), "runs");
	registry_store_close(s);
	int rc = !strcmp(argv[1], "list") ? runs_list(ctx, runs_dir) : runs_show(ctx, runs_dir, argv[2]);
	free(runs_dir);
	return rc;
}


/* ---- merge --------------------------------------------------------------------------------------- */

static int ends_with(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);
	return a >= b && strcmp(s + a - b, suffix) == 0;
}

static int run_merge(owl_ctx *ctx, int argc, char **argv)
{
	static const struct option opts[] = {{"out", required_argument, 0, 'o'}, {0, 0, 0, 0}};
	const char *out = NULL;
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (c == 'o')
			out = optarg;
		else
			return cmd_usage_error("merge", "unknown option");
	}
	if (optind != argc - 1 || !out)
		return cmd_usage_error("merge", "expected ADAPTER[@V] --out NAME");
	if (!registry_valid_name(out))
		return cmd_usage_error("merge", "invalid --out '%s': use letters, digits, '-', '_', "
				       "'.' and '/'", out);
	owl_err err = {0};
	registry_store *s = NULL;
	registry_version ad = {0}, base = {0};
	registry_stage *st = NULL;
	char *adir = NULL, *bdir = NULL, *source = NULL, *aref = NULL, *bref = NULL;
	license_admit_result adm = {0};
	int rc = cmd_open_store(ctx, &s, &err);
	if (!rc)
		rc = registry_resolve(s, argv[optind], &ad, &err);
	if (!rc && strcmp(ad.format, "adapter") != 0)
		rc = owl_err_set(&err, OWL_EUSAGE, "%s@%d is a %s version, not an adapter", ad.model,
				 ad.number, ad.format);
	if (!rc && !ad.parent_id)
		rc = owl_err_set(&err, OWL_EUSAGE, "the adapter %s@%d names no base to merge into",
				 ad.model, ad.number);
	if (!rc)
		rc = registry_version_by_id(s, ad.parent_id, &base, &err);
	if (!rc && strcmp(base.format, "hf") != 0)
		rc = owl_err_set(&err, OWL_EUSAGE, "the base %s@%d is a %s version: a merge writes a "
				 "safetensors checkpoint, from a safetensors base (pull the model's Hugging "
				 "Face checkpoint and merge an adapter of it)", base.model, base.number,
				 base.format);
	if (rc)
		goto done;
	aref = owl_xasprintf("%s@%d", ad.model, ad.number);
	bref = owl_xasprintf("%s@%d", base.model, base.number);
	/* A merge is a derived model like the adapter: the same gate, first. */
	license_request rq = {.model = out, .version_id = ad.id, .action = "finetune", .derived = 1};
	license_decision d;
	if ((rc = license_gate(s, &rq, &d, &err)))
		goto done;
	if ((rc = registry_version_materialize(s, &ad, &adir, &err)) ||
	    (rc = registry_version_materialize(s, &base, &bdir, &err)))
		goto done;
	source = owl_xasprintf("owl merge %s into %s", aref, bref);
	if ((rc = registry_stage_new(s, source, &st, &err)))
		goto done;
	size_t merged = 0;
	for (size_t i = 0; i < base.nfiles && !rc; i++) {
		const char *path = base.files[i].path;
		char *src = owl_path_join(bdir, path);
		if (ends_with(path, ".safetensors")) {
			if (!ctx->quiet && !ctx->json)
				fprintf(stderr, "merging %s into %s\n", aref, path);
			char *dst = owl_path_join(st->files_dir, path);
			char *slash = strrchr(dst, '/');
			*slash = 0;
			rc = owl_mkdir_p(dst, &err);
			*slash = '/';
			char hex[65];
			uint64_t size = 0;
			if (!rc)
				rc = train_merge_file(src, adir, dst, &merged, &err);
			if (!rc)
				rc = registry_hash_file(dst, hex, &size, &err);
			if (!rc)
				rc = registry_stage_add(st, path, hex, size, NULL, &err);
			free(dst);
		} else {
			rc = registry_stage_copy(st, src, path, NULL, NULL, &err);
		}
		free(src);
	}
	size_t want = train_adapter_tensor_count(adir) / 2;
	if (!rc && merged != want)
		rc = owl_err_set(&err, OWL_EUSAGE, "%zu of the adapter's %zu A/B pairs found their "
				 "weight in %s", merged, want, bref);
	if (!rc)
		rc = registry_stage_validate(st, &err);
	if (!rc) {
		json_t *sum = json_loads(st->config_json ? st->config_json : "{}", 0, NULL);
		if (!sum)
			sum = json_object();
		json_object_set_new(sum, "merged_from", json_pack("{s:s, s:s}", "adapter", aref, "base",
								  bref));
		free(st->config_json);
		st->config_json = json_dumps(sum, JSON_COMPACT | JSON_SORT_KEYS);
		json_decref(sum);
		rc = license_admit_stage(s, st, out, ad.id, NULL, &adm, &err);
	}
	if (!rc) {
		license_status ls = {0};
		license_status_for(s, adm.commit.version_id, NULL, 0, &ls, NULL);
		if (ctx->json)
			cmd_print_json(json_pack("{s:s, s:i, s:s, s:s, s:I, s:s}", "model", out, "version",
						 adm.commit.number, "adapter", aref, "base", bref,
						 "merged_tensors", (json_int_t)merged, "license",
						 ls.license_id));
		else
			printf("registered %s@%d: %s merged into %s (%zu weights changed), license %s\n",
			       out, adm.commit.number, aref, bref, merged, ls.license_id);
		license_admit_result_release(&adm);
	}
done:
	registry_stage_free(st);
	registry_version_release(&ad);
	registry_version_release(&base);
	registry_store_close(s);
	free(adir), free(bdir), free(source), free(aref), free(bref);
	return rc ? cmd_fail(&err) : OWL_OK;
}

const owl_command cmd_train_commands[] = {
	{"train", run_train, "fine-tune a LoRA adapter on a JSONL file and register it",
	 "USAGE\n"
	 "  owl train BASE[@V|:TAG] --data FILE.jsonl --out NAME [options]\n"
	 "  owl train --resume RUN [--threads N] [--device D]\n"
	 "\n"
	 "Trains a LoRA adapter on the registered model BASE, on this machine (the data\n"
	 "never leaves it), and registers it as the next version of NAME, an adapter of\n"
	 "BASE that inherits its license and naming rules (a Llama 3.1 derivative's name\n"
	 "must begin with \"Llama\"). The license gate (action finetune) is asked first.\n"
	 "It prints the run id, one line per step (step, loss, learning rate, tokens/s,\n"
	 "ETA) on stderr, and where the metrics and the loss curve are. The run lives in\n"
	 "runs/RUN/ of the data home (run.json, metrics.jsonl, checkpoint/, adapter/,\n"
	 "loss.svg); 'owl runs show RUN' summarises it. The adapter is PEFT's\n"
	 "(adapter_config.json, adapter_model.safetensors): it loads in transformers +\n"
	 "PEFT, vLLM and llama.cpp's convert_lora_to_gguf.py --base. 'owl show NAME@V'\n"
	 "shows its lineage: base version, dataset SHA-256 and line count,\n"
	 "hyperparameters and run id. Nothing is registered when anything fails.\n"
	 "\n"
	 "DATA: one JSON object per line, any of\n"
	 "  {\"text\": ...}                                  every token trained\n"
	 "  {\"prompt\": ..., \"completion\": ...}             the completion trained\n"
	 "  {\"instruction\": ..., \"input\": ..., \"output\": ...}   Alpaca; the output trained\n"
	 "  {\"messages\": [{\"role\": ..., \"content\": ...}]}  the model's chat template;\n"
	 "                                                 assistant turns trained\n"
	 "The model's end token ends every sample (a chat turn ends with the template's\n"
	 "own end of turn). Samples are packed into rows of --seq-len tokens; attention\n"
	 "never crosses samples. A malformed line stops the run naming its line and what\n"
	 "is wrong; so does a sample longer than --seq-len.\n"
	 "\n"
	 "OPTIONS (defaults in brackets)\n"
	 "  --data FILE          training data (JSONL)\n"
	 "  --out NAME           the adapter's name in the registry\n"
	 "  --eval FILE          held-out data for the eval loss [none]\n"
	 "  --eval-fraction F    hold out this fraction of --data instead [none]\n"
	 "  --eval-every N       eval loss every N steps, and at the end [50]\n"
	 "  --rank R             LoRA rank [16]; vLLM's --max-lora-rank: 1, 8, 16, 32, 64, 128,\n"
	 "                       256, 320, 512 (other ranks are served under the next one up)\n"
	 "  --alpha A            lora_alpha [2 x rank]\n"
	 "  --rslora             scale by alpha/sqrt(r) instead of alpha/r [off]; llama.cpp\n"
	 "                       ignores it, vLLM 0.6 refuses it\n"
	 "  --dropout D          LoRA dropout on the adapter's input [0.05]\n"
	 "  --targets LIST|all   modules [q_proj,k_proj,v_proj,o_proj]; all: also gate_proj,\n"
	 "                       up_proj, down_proj\n"
	 "  --epochs N           passes over the data [3]\n"
	 "  --max-steps N        optimiser steps instead of epochs [0: the epochs decide]\n"
	 "  --lr LR              peak learning rate [2e-4]\n"
	 "  --batch B            rows of --seq-len tokens per micro-batch [1]\n"
	 "  --grad-accum K       micro-batches per optimiser step [4]\n"
	 "  --seq-len N          tokens per row [512, or the model's context if shorter]\n"
	 "  --warmup N           steps of linear warmup, then cosine decay [3% of the steps]\n"
	 "  --weight-decay W     AdamW weight decay [0]\n"
	 "  --max-grad-norm G    clip the gradients' global norm [1.0; 0: off]\n"
	 "  --seed S             data order, dropout and A's initialisation [42]\n"
	 "  --checkpoint-every N checkpoint every N steps [100; 0: only on Ctrl-C]\n"
	 "  --checkpoint-activations  recompute activations in the backward pass: less\n"
	 "                       memory, more time [off]\n"
	 "  --train-on-inputs    train on prompts and user turns too [off]\n"
	 "  --skip-bad           skip malformed lines and count them [off]\n"
	 "  --init DIR           start from this PEFT adapter (same --rank and --targets)\n"
	 "                       instead of PEFT's initialisation [none]\n"
	 "  --threads N          CPU threads [0: all cores]\n"
	 "  --device auto|cpu|cuda[:N]  where the steps run [auto: the CPU]; cuda: the\n"
	 "                       CUDA backend on GPU N [0], the adapter's master weights\n"
	 "                       and AdamW staying in host memory. auto keeps the CPU,\n"
	 "                       unlike 'owl run': a GPU's float sums differ from the\n"
	 "                       CPU's in the last bits, and the CPU's steps are the\n"
	 "                       ones checked against PyTorch and resumed bit for bit\n"
	 "  --resume RUN         continue a stopped run from its checkpoint, with its own\n"
	 "                       options and data (its SHA-256 must match): the losses are\n"
	 "                       those of an uninterrupted run\n"
	 "  --json               print the result as JSON (no step lines)\n"
	 "\n"
	 "AdamW has betas 0.9 and 0.999 and eps 1e-8. The loss of a step is the mean over\n"
	 "the trained tokens of all its micro-batches. Ctrl-C stops at the end of the\n"
	 "current step with a checkpoint (a second Ctrl-C ends at once).\n"
	 "\n"
	 "EXAMPLES\n"
	 "  owl train smollm2@1 --data support.jsonl --out support-bot\n"
	 "  owl train llama-3.1-8b:stable --data chats.jsonl --eval-fraction 0.05 \\\n"
	 "      --out Llama-support --rank 32 --targets all --epochs 2\n"
	 "  owl train --resume 20261203-101500-3fa2\n"},
	{"runs", run_runs, "list training runs, or show one with its loss curves",
	 "USAGE\n"
	 "  owl runs list [--json]\n"
	 "  owl runs show RUN [--json]\n"
	 "\n"
	 "list prints every run of the data home: status (running, stopped, failed,\n"
	 "registered), base, adapter, steps and final loss. show prints one run's data\n"
	 "(path, SHA-256, lines), hyperparameters and losses, and draws its train and\n"
	 "eval loss curves into runs/RUN/loss.svg, which any browser opens.\n"
	 "\n"
	 "EXAMPLES\n"
	 "  owl runs list\n"
	 "  owl runs show 20261203-101500-3fa2\n"},
	{"merge", run_merge, "merge a LoRA adapter into its base as a new full checkpoint",
	 "USAGE\n"
	 "  owl merge ADAPTER[@V|:TAG] --out NAME [--json]\n"
	 "\n"
	 "Writes the adapter's base with the adapter merged into every projection it\n"
	 "targets (W += s * B A, computed in f32 and stored in the base's dtype: f32,\n"
	 "f16 or bf16), the other tensors, the sharding and the other files (config,\n"
	 "tokenizer, card, license) as they are, and registers it as the next version\n"
	 "of NAME, derived from the adapter. The license gate (action finetune) is asked\n"
	 "first; the merge inherits the base's license and naming rules. The base must\n"
	 "be a safetensors checkpoint (format hf). 'owl show NAME@V' names what was\n"
	 "merged into what.\n"
	 "\n"
	 "EXAMPLES\n"
	 "  owl merge support-bot@1 --out support-bot-merged\n"},
	{0},
};
