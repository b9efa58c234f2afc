/* Engine verbs: run, chat, perplexity, bench. A model is named by a registry
 * reference (NAME, NAME@V, NAME:TAG) or by a path (a checkpoint folder or a
 * .gguf file), so that a file can be tried before it is registered. */
#define _GNU_SOURCE
#include "cmd.h"
#include "deploy/deploy.h"
#include "engine/dist.h"
#include "engine/engine.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* Adds what the user can do to a library's message. */
static void append_hint(owl_err *err, const char *hint)
{
	size_t l = strlen(err->msg);
	snprintf(err->msg + l, sizeof err->msg - l, "%s", hint);
}

/* ---- a multi-process launch (engine/dist.h) ------------------------------------------
 * Under mpirun, srun or LeaderWorkerSet every process runs the same command
 * (SPMD). Before any work each checks that it runs the same owl, the same
 * command line and the same model as rank 0; what is random (the seed) and
 * what is read from files (--prompts, --file) comes from rank 0; only rank
 * 0 writes to stdout. */

/* Set when a check between processes failed: every process saw the same
 * failure at the same point, so they leave the launch together instead of
 * aborting it. (One command runs per owl process.) */
static int dist_failed_together;

/* The digest of what a path holds: a file's SHA-256, or for a folder the
 * SHA-256 of "name<TAB>digest<LF>" of each file in it, in name order (the
 * form of a registered version's digest). */
static int path_digest(const char *path, char hex[65], owl_err *err)
{
	if (!owl_is_dir(path))
		return registry_hash_file(path, hex, &(uint64_t){0}, err);
	char **names = NULL;
	size_t n = 0;
	int rc = owl_list_dir(path, &names, &n, err);
	if (rc)
		return rc;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	EVP_DigestInit_ex(md, EVP_sha256(), NULL);
	for (size_t i = 0; i < n && !rc; i++) {
		char *p = owl_path_join(path, names[i]), h[65];
		if (!owl_is_dir(p) && !(rc = registry_hash_file(p, h, &(uint64_t){0}, err))) {
			EVP_DigestUpdate(md, names[i], strlen(names[i]));
			EVP_DigestUpdate(md, "\t", 1);
			EVP_DigestUpdate(md, h, 64);
			EVP_DigestUpdate(md, "\n", 1);
		}
		free(p);
	}
	unsigned char d[32];
	unsigned int dl = 0;
	EVP_DigestFinal_ex(md, d, &dl);
	EVP_MD_CTX_free(md);
	owl_free_names(names, n);
	if (!rc)
		owl_hex(d, 32, hex);
	return rc;
}

/* Joins the launch (none: one process), and checks that every process runs
 * the same owl build (the executable's digest) and the same command line. */
static int dist_begin(owl_ctx *ctx, const char *rendezvous, int argc, char **argv,
		      engine_dist **out, owl_err *err)
{
	dist_failed_together = 0;
	engine_dist_opts o = {.rendezvous = rendezvous};
	int rc = engine_dist_open(&o, out, err);
	if (rc || engine_dist_size(*out) == 1)
		return rc;
	engine_dist *d = *out;
	if (engine_dist_rank(d) != 0) {
		/* The results are rank 0's to write; the others speak only to fail. */
		if (!freopen("/dev/null", "w", stdout))
			return owl_err_set(err, OWL_EFAIL, "cannot silence stdout: %s", strerror(errno));
		ctx->quiet = 1;
		ctx->verbose = 0;
	}
	char build[65], line[65];
	if ((rc = registry_hash_file("/proc/self/exe", build, &(uint64_t){0}, err)))
		return owl_err_wrap(err, "cannot read the owl executable");
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	EVP_DigestInit_ex(md, EVP_sha256(), NULL);
	for (int i = 0; i < argc; i++)
		EVP_DigestUpdate(md, argv[i], strlen(argv[i]) + 1);
	unsigned char dg[32];
	unsigned int dl = 0;
	EVP_DigestFinal_ex(md, dg, &dl);
	EVP_MD_CTX_free(md);
	owl_hex(dg, 32, line);
	char v_build[128], v_line[80];
	snprintf(v_build, sizeof v_build, "owl %s sha256:%.16s", OWL_VERSION, build);
	snprintf(v_line, sizeof v_line, "sha256:%.16s", line);
	rc = engine_dist_check_same(d, "owl build", v_build, err);
	if (!rc)
		rc = engine_dist_check_same(d, "command line", v_line, err);
	if (rc == OWL_EINTEGRITY)
		dist_failed_together = 1;
	return rc;
}

/* Leaves the launch; returns rc. A process that fails alone aborts the
 * launch (MPI ends every process of it) rather than leave the others
 * waiting for it. */
static int dist_end(engine_dist *d, int rc)
{
	engine_dist_close(d, rc != 0 && !dist_failed_together);
	return rc;
}

/* After the work, every process must have generated what rank 0 did (the
 * same seed, the same sums, the same tokens): texts (n of them) are
 * compared by digest, and a difference fails every process. */
static int dist_check_output(engine_dist *d, const owl_buf *texts, size_t stride, int n,
			     owl_err *err)
{
	if (engine_dist_size(d) == 1)
		return 0;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	EVP_DigestInit_ex(md, EVP_sha256(), NULL);
	for (int i = 0; i < n; i++) {
		const owl_buf *b = (const owl_buf *)((const char *)texts + (size_t)i * stride);
		uint64_t len = b->len;
		EVP_DigestUpdate(md, &len, sizeof len);
		if (b->len)
			EVP_DigestUpdate(md, b->data, b->len);
	}
	unsigned char dg[32];
	unsigned int dl = 0;
	char hex[65], value[80];
	EVP_DigestFinal_ex(md, dg, &dl);
	EVP_MD_CTX_free(md);
	owl_hex(dg, 32, hex);
	snprintf(value, sizeof value, "sha256:%.16s", hex);
	int rc = engine_dist_check_same(d, "generated text", value, err);
	if (rc == OWL_EINTEGRITY)
		dist_failed_together = 1;
	return rc;
}

/* engine_gen_opts.agree: rank 0's sampled token on every process. */
static int dist_agree(void *ctx, int32_t *token)
{
	owl_err err = {0};
	return engine_dist_bcast(ctx, token, sizeof *token, &err);
}

/* A failed verb under a launch says which process failed. */
static int dist_fail(engine_dist *d, owl_err *err)
{
	if (engine_dist_size(d) > 1)
		owl_err_wrap(err, "rank %d of %d", engine_dist_rank(d), engine_dist_size(d));
	return dist_end(d, cmd_fail(err));
}

/* A file read by rank 0 and sent to every process (the nodes need not share
 * a file system). As owl_read_file otherwise. */
static int dist_read_file(engine_dist *d, const char *path, size_t max, char **out, size_t *len,
			  owl_err *err)
{
	if (engine_dist_size(d) == 1)
		return owl_read_file(path, max, out, len, err);
	*out = NULL;
	*len = 0;
	char *data = NULL;
	size_t l = 0;
	uint64_t n = UINT64_MAX;
	int rc = 0;
	if (engine_dist_rank(d) == 0 && !(rc = owl_read_file(path, max, &data, &l, err)))
		n = l;
	owl_err berr = {0};
	if (engine_dist_bcast(d, &n, sizeof n, &berr)) {
		free(data);
		*err = berr;
		return berr.code;
	}
	if (n == UINT64_MAX) {
		if (engine_dist_rank(d) != 0)
			rc = owl_err_set(err, OWL_EFAIL, "rank 0 could not read '%s'", path);
		/* every process knows, at the same point */
		dist_failed_together = 1;
		return rc ? rc : OWL_EFAIL;
	}
	if (n > max)
		return owl_err_set(err, OWL_EFAIL, "rank 0 sent %llu bytes of '%s', more than %zu",
				   (unsigned long long)n, path, max);
	if (engine_dist_rank(d) != 0 && !(data = malloc((size_t)n + 1)))
		return owl_err_set(err, OWL_EFAIL, "cannot allocate %llu bytes for '%s'",
				   (unsigned long long)n, path);
	if ((rc = engine_dist_bcast(d, data, (size_t)n, err))) {
		free(data);
		return rc;
	}
	data[n] = 0;
	*out = data;
	*len = (size_t)n;
	return 0;
}

/* The folder or file to load for REF; *label says what it is; *version_id
 * is its registered version, 0 for a path. digest (NULL: not wanted)
 * receives the version's digest, or the digest of the path's files. */
static int model_path(owl_ctx *ctx, const char *ref, char **path, char **label,
		      int64_t *version_id, char *digest, owl_err *err)
{
	*version_id = 0;
	if (owl_path_exists(ref)) {
		*path = owl_xstrdup(ref);
		*label = owl_xstrdup(ref);
		int rc = digest ? path_digest(ref, digest, err) : 0;
		if (rc) {
			free(*path), free(*label);
			*path = *label = NULL;
		}
		return rc;
	}
	registry_store *s = NULL;
	int rc = cmd_open_store(ctx, &s, err);
	if (rc)
		return rc;
	registry_version v;
	rc = registry_checkout(s, ref, &v, path, err);
	if (!rc) {
		*label = owl_xasprintf("%s@%d", v.model, v.number);
		*version_id = v.id;
		if (digest)
			deploy_version_digest(&v, digest);
		registry_version_release(&v);
	}
	registry_store_close(s);
	return rc;
}

/* The adapter folder for REF: a folder as given (the loader checks its
 * shapes against the model), or a registered adapter, which must derive
 * from the registered version being run (model_version; 0: the model was
 * given as a path). */
static int adapter_path(owl_ctx *ctx, const char *ref, int64_t model_version,
			const char *model_label, char **path, char **label, owl_err *err)
{
	if (owl_is_dir(ref)) {
		*path = owl_xstrdup(ref);
		*label = owl_xstrdup(ref);
		return 0;
	}
	registry_store *s = NULL;
	int rc = cmd_open_store(ctx, &s, err);
	if (rc)
		return rc;
	registry_version v;
	rc = registry_checkout_adapter(s, ref, model_version, model_label, &v, path, err);
	registry_store_close(s);
	if (!rc) {
		*label = owl_xasprintf("%s@%d", v.model, v.number);
		registry_version_release(&v);
	} else if (strstr(err->msg, "names no base")) {
		append_hint(err, " (register it with owl pull DIR --base NAME@V)");
	} else if (strstr(err->msg, "is a path, not a registered version")) {
		append_hint(err, ": run the adapter's base by its registry name, or give "
				   "the adapter as a folder");
	}
	return rc;
}

typedef struct loaded {
	engine_model *m;
	engine_tokenizer *tok;
	engine_session *sess;
	engine_adapter *adapter; /* or NULL */
	char *label;
	int64_t version_id;      /* the registered version, 0 for a path */
	uint64_t dev_model_bytes; /* device memory the model's buffers took at load (0: host) */
} loaded;

static void unload(loaded *l)
{
	engine_session_free(l->sess);
	engine_adapter_free(l->adapter);
	engine_tokenizer_free(l->tok);
	engine_model_close(l->m);
	free(l->label);
	memset(l, 0, sizeof *l);
}

/* adapter: NULL, or --adapter's NAME[@V] or folder. n_ctx < 0: no session
 * (the caller makes its own KV pool). dist: the launch (NULL: one process):
 * every process checks that it holds the same model (and adapter) as rank 0
 * before it loads anything. */
static int load(owl_ctx *ctx, engine_dist *dist, const char *ref, const char *adapter, int tp,
		int threads, int n_ctx, int kv_type, const char *device, loaded *l, owl_err *err)
{
	memset(l, 0, sizeof *l);
	char *path = NULL, *apath = NULL, *alabel = NULL, digest[65] = "";
	int64_t version_id;
	int many = engine_dist_size(dist) > 1;
	int rc = model_path(ctx, ref, &path, &l->label, &version_id, many ? digest : NULL, err);
	l->version_id = rc ? 0 : version_id;
	if (!rc && adapter)
		rc = adapter_path(ctx, adapter, version_id, l->label, &apath, &alabel, err);
	if (!rc && many) {
		char value[80], adigest[65] = "none";
		snprintf(value, sizeof value, "sha256:%s", digest);
		rc = engine_dist_check_same(dist, "model digest", value, err);
		if (!rc && apath)
			rc = path_digest(apath, adigest, err);
		if (!rc) {
			snprintf(value, sizeof value, "%s%s", adapter ? "sha256:" : "", adigest);
			rc = engine_dist_check_same(dist, "adapter digest", value, err);
		}
		if (rc == OWL_EINTEGRITY)
			dist_failed_together = 1;
	}
	engine_model_opts o = {.tp = tp, .threads = threads, .kv_type = kv_type,
			       .dist = many ? dist : NULL};
	if (!rc && device)
		rc = engine_device_parse(device, &o.device, &o.first_gpu, err);
	if (!rc)
		rc = engine_model_open(path, &o, &l->m, err);
	/* Before any session: what the weights took on a device (owl bench). */
	engine_device_mem dm;
	if (!rc && !(rc = engine_model_device_memory(l->m, &dm, err)))
		l->dev_model_bytes = dm.buffer_bytes;
	if (!rc)
		rc = engine_tokenizer_for_model(l->m, &l->tok, err);
	if (!rc && n_ctx >= 0)
		rc = engine_session_new(l->m, n_ctx, &l->sess, err);
	if (!rc && adapter)
		rc = engine_adapter_load(l->m, apath, &l->adapter, err);
	if (!rc && adapter && l->sess)
		rc = engine_session_set_adapter(l->sess, l->adapter, err);
	if (!rc && adapter) {
		char *both = owl_xasprintf("%s+%s", l->label, alabel);
		free(l->label);
		l->label = both;
	}
	free(path);
	free(apath);
	free(alabel);
	if (rc) {
		owl_err_wrap(err, "cannot load %s%s%s", ref, adapter ? " with the adapter " : "",
			     adapter ? adapter : "");
		unload(l);
	}
	return rc;
}

/* The engine states facts; what the user can do about them is the CLI's
 * to say. */
static int engine_fail(engine_dist *d, owl_err *err)
{
	const char *m = err->msg;
	if (strstr(m, "tokens is full") || strstr(m, "exceeds the model's"))
		snprintf(err->msg + strlen(err->msg), sizeof err->msg - strlen(err->msg),
			 "; start over or use another --ctx");
	else if (strstr(m, "tensor parallelism over"))
		snprintf(err->msg + strlen(err->msg), sizeof err->msg - strlen(err->msg),
			 "; use a --tp that divides the model's query heads and feed-forward width");
	else if (strstr(m, "KV pool is full"))
		snprintf(err->msg + strlen(err->msg), sizeof err->msg - strlen(err->msg),
			 "; use a shorter prompt or fewer tokens");
	else if (strstr(m, "cannot be spread evenly"))
		snprintf(err->msg + strlen(err->msg), sizeof err->msg - strlen(err->msg),
			 " over the launcher's processes");
	return dist_fail(d, err);
}

static void emit_stdout(void *ctx, const char *text, size_t len)
{
	fwrite(text, 1, len, stdout);
	fflush(stdout);
}

/* Streams to stdout (unless quiet) and keeps the text: chat history, --json. */
typedef struct collector {
	owl_buf text;
	int echo;
} collector;

static void emit_collect(void *ctx, const char *text, size_t len)
{
	collector *c = ctx;
	owl_buf_append(&c->text, text, len);
	if (c->echo)
		emit_stdout(NULL, text, len);
}

/* Options shared by run and chat. */
typedef struct gen_args {
	engine_gen_opts g;
	const char *stop[16];
	int tp, threads, ctx, chat, kv_type;
	const char *system, *prompts, *adapter, *rendezvous, *device;
} gen_args;

/* --kv-type f32|f16 */
static int parse_kv_type(const char *verb, const char *s, int *out)
{
	if (!strcmp(s, "f32"))
		*out = ENGINE_KV_F32;
	else if (!strcmp(s, "f16"))
		*out = ENGINE_KV_F16;
	else
		return cmd_usage_error(verb, "--kv-type is f32 or f16");
	return 0;
}

static const struct option gen_options[] = {
	{"max-tokens", required_argument, 0, 'n'}, {"temperature", required_argument, 0, 't'},
	{"top-k", required_argument, 0, 'k'}, {"top-p", required_argument, 0, 'p'},
	{"min-p", required_argument, 0, 'm'}, {"repeat-penalty", required_argument, 0, 'r'},
	{"frequency-penalty", required_argument, 0, 'f'}, {"presence-penalty", required_argument, 0, 'P'},
	{"seed", required_argument, 0, 's'}, {"stop", required_argument, 0, 'S'},
	{"tp", required_argument, 0, 'T'}, {"threads", required_argument, 0, 'j'},
	{"ctx", required_argument, 0, 'c'}, {"chat", no_argument, 0, 'C'},
	{"system", required_argument, 0, 'y'}, {"kv-type", required_argument, 0, 'K'},
	{"prompts", required_argument, 0, 'F'}, {"adapter", required_argument, 0, 'A'},
	{"rendezvous", required_argument, 0, 'Z'}, {"device", required_argument, 0, 'D'},
	{0, 0, 0, 0},
};

/* Without --seed: the clock's nanoseconds and the process, so that two runs
 * (and two processes of a launch, before rank 0's seed replaces theirs)
 * differ even within one second. */
static uint64_t default_seed(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return ((uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec) ^
	       ((uint64_t)getpid() << 40);
}

static int parse_gen(const char *verb, int argc, char **argv, gen_args *a)
{
	memset(a, 0, sizeof *a);
	a->g.max_tokens = 128;
	a->g.sampling = (engine_sampler_opts){.temperature = 0.8f, .top_k = 40, .top_p = 0.95f,
					      .min_p = 0.05f, .repeat_penalty = 1.0f,
					      .seed = default_seed()};
	a->g.stop = a->stop;
	int c;
	while ((c = getopt_long(argc, argv, "", gen_options, NULL)) != -1) {
		switch (c) {
		case 'n': a->g.max_tokens = atoi(optarg); break;
		case 't': a->g.sampling.temperature = strtof(optarg, NULL); break;
		case 'k': a->g.sampling.top_k = atoi(optarg); break;
		case 'p': a->g.sampling.top_p = strtof(optarg, NULL); break;
		case 'm': a->g.sampling.min_p = strtof(optarg, NULL); break;
		case 'r': a->g.sampling.repeat_penalty = strtof(optarg, NULL); break;
		case 'f': a->g.sampling.frequency_penalty = strtof(optarg, NULL); break;
		case 'P': a->g.sampling.presence_penalty = strtof(optarg, NULL); break;
		case 's': a->g.sampling.seed = strtoull(optarg, NULL, 10); break;
		case 'S':
			if (a->g.nstop == 16)
				return cmd_usage_error(verb, "at most 16 --stop strings");
			a->stop[a->g.nstop++] = optarg;
			break;
		case 'T': a->tp = atoi(optarg); break;
		case 'j': a->threads = atoi(optarg); break;
		case 'c': a->ctx = atoi(optarg); break;
		case 'C': a->chat = 1; break;
		case 'y': a->system = optarg; break;
		case 'K':
			if (parse_kv_type(verb, optarg, &a->kv_type))
				return OWL_EUSAGE;
			break;
		case 'F': a->prompts = optarg; break;
		case 'A': a->adapter = optarg; break;
		case 'Z': a->rendezvous = optarg; break;
		case 'D': a->device = optarg; break;
		default: return cmd_usage_error(verb, "unknown option");
		}
	}
	if (a->g.max_tokens < 0 || a->g.sampling.temperature < 0 || a->tp < 0 || a->ctx < 0)
		return cmd_usage_error(verb, "--max-tokens, --temperature, --tp and --ctx cannot be negative");
	return 0;
}

static char *chat_prompt(const engine_tokenizer *tok, const engine_chat_msg *msgs, size_t n)
{
	engine_chat_family f = engine_chat_detect(engine_tokenizer_chat_template(tok));
	int bos = engine_token_bos(tok), eos = engine_token_eos(tok);
	return engine_chat_render(f, msgs, n, 1, bos >= 0 ? engine_token_text(tok, bos) : "",
				  eos >= 0 ? engine_token_text(tok, eos) : "");
}

/* ---- run --prompts: many prompts as one batch ----------------------------------------- */

enum { MAX_PROMPTS = 1024 };

/* One prompt of a --prompts file and its generation. */
typedef struct prompt_req {
	char *text;      /* the prompt as written */
	int chat;
	const char *system;
	engine_gen_opts g;
	const char *stop[16];
	int32_t *ids;
	size_t nids;
	int seq;
	engine_gen *gen;
	collector out;
	int32_t next;
	int active;
	const char *adapter_ref; /* its own --adapter, or NULL */
	const engine_adapter *adapter;
	char error[512]; /* why this prompt could not run, or "" */
} prompt_req;

static void prompt_req_release(prompt_req *r)
{
	free(r->text);
	free(r->ids);
	engine_gen_free(r->gen);
	owl_buf_release(&r->out.text);
}

/* A JSONL line's options over the command line's: every field type-checked. */
static int prompt_from_json(json_t *o, prompt_req *r, json_t **keep, char *why, size_t whylen)
{
	const char *key;
	json_t *v;
	json_object_foreach(o, key, v) {
		int ok = 1;
		if (!strcmp(key, "prompt")) {
			if ((ok = json_is_string(v)))
				r->text = owl_xstrdup(json_string_value(v));
		} else if (!strcmp(key, "max_tokens")) {
			ok = json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) <= 1 << 20;
			if (ok)
				r->g.max_tokens = (int)json_integer_value(v);
		} else if (!strcmp(key, "temperature") || !strcmp(key, "top_p") || !strcmp(key, "min_p") ||
			   !strcmp(key, "repeat_penalty")) {
			ok = json_is_number(v) && json_number_value(v) >= 0;
			float f = ok ? (float)json_number_value(v) : 0;
			if (ok && key[0] == 't' && key[1] == 'e')
				r->g.sampling.temperature = f;
			else if (ok && !strcmp(key, "top_p"))
				r->g.sampling.top_p = f;
			else if (ok && !strcmp(key, "min_p"))
				r->g.sampling.min_p = f;
			else if (ok)
				r->g.sampling.repeat_penalty = f;
		} else if (!strcmp(key, "top_k")) {
			if ((ok = json_is_integer(v) && json_integer_value(v) >= 0))
				r->g.sampling.top_k = (int)json_integer_value(v);
		} else if (!strcmp(key, "seed")) {
			if ((ok = json_is_integer(v) && json_integer_value(v) >= 0))
				r->g.sampling.seed = (uint64_t)json_integer_value(v);
		} else if (!strcmp(key, "chat")) {
			if ((ok = json_is_boolean(v)))
				r->chat = json_is_true(v);
		} else if (!strcmp(key, "system")) {
			if ((ok = json_is_string(v)))
				r->system = json_string_value(v);
		} else if (!strcmp(key, "adapter")) {
			if ((ok = json_is_string(v) && *json_string_value(v)))
				r->adapter_ref = json_string_value(v);
		} else if (!strcmp(key, "stop")) {
			ok = json_is_array(v) && json_array_size(v) <= 16;
			size_t i;
			json_t *e;
			r->g.nstop = 0;
			json_array_foreach(v, i, e) {
				if (!ok || !json_is_string(e) || !*json_string_value(e)) {
					ok = 0;
					break;
				}
				r->stop[r->g.nstop++] = json_string_value(e);
			}
		} else {
			snprintf(why, whylen, "unknown field \"%s\" (prompt, max_tokens, temperature, top_k, "
				 "top_p, min_p, repeat_penalty, seed, stop, chat, system, adapter)", key);
			return -1;
		}
		if (!ok) {
			snprintf(why, whylen, "field \"%s\" has the wrong type or range", key);
			return -1;
		}
	}
	if (!r->text) {
		snprintf(why, whylen, "no \"prompt\" string");
		return -1;
	}
	*keep = json_incref(o); /* system and stop point into it */
	return 0;
}

/* Reads FILE: one prompt per line, or a JSON object per line with its own
 * options. Empty lines are skipped. */
static int read_prompts(engine_dist *d, const char *file, const gen_args *a, prompt_req **out,
			int *nout, json_t *keep, owl_err *err)
{
	char *data = NULL;
	size_t len = 0;
	int rc = dist_read_file(d, file, 64u << 20, &data, &len, err);
	if (rc)
		return owl_err_wrap(err, "cannot read --prompts");
	prompt_req *reqs = owl_xcalloc(MAX_PROMPTS, sizeof *reqs);
	int n = 0, line = 0;
	for (char *p = data, *nl; !rc && p < data + len; p = nl + 1) {
		nl = memchr(p, '\n', (size_t)(data + len - p));
		if (!nl)
			nl = data + len;
		*nl = 0;
		line++;
		size_t l = strlen(p);
		if (l && p[l - 1] == '\r')
			p[--l] = 0;
		if (!l)
			continue;
		if (n == MAX_PROMPTS) {
			rc = owl_err_set(err, OWL_EUSAGE, "%s: more than %d prompts", file, MAX_PROMPTS);
			break;
		}
		prompt_req *r = &reqs[n];
		r->g = a->g;
		memcpy(r->stop, a->stop, sizeof r->stop);
		r->g.stop = r->stop;
		r->chat = a->chat;
		r->system = a->system;
		if (p[0] == '{') {
			json_error_t je;
			json_t *o = json_loads(p, 0, &je);
			char why[256] = "";
			json_t *held = NULL;
			if (!o || !json_is_object(o))
				snprintf(why, sizeof why, "not a JSON object: %s", o ? "" : je.text);
			else
				prompt_from_json(o, r, &held, why, sizeof why);
			if (held)
				json_array_append_new(keep, held);
			json_decref(o);
			if (*why) {
				rc = owl_err_set(err, OWL_EUSAGE, "%s:%d: %s", file, line, why);
				free(r->text);
				break;
			}
		} else {
			r->text = owl_xstrdup(p);
		}
		n++;
	}
	free(data);
	if (!rc && n == 0)
		rc = owl_err_set(err, OWL_EUSAGE, "%s holds no prompts", file);
	if (rc) {
		for (int i = 0; i < n; i++)
			prompt_req_release(&reqs[i]);
		free(reqs);
		return rc;
	}
	*out = reqs;
	*nout = n;
	return 0;
}

/* Every prompt of the file in one batch: the prompts in one forward pass,
 * then one decoding step for all unfinished ones at a time, each with its
 * own sampler, stop strings and limits. Results print in the file's order. */
static int run_prompts(owl_ctx *ctx, gen_args *a, engine_dist *d, int argc, char **argv)
{
	owl_err err = {0};
	json_t *keep = json_array();
	prompt_req *reqs = NULL;
	int n = 0, rc = read_prompts(d, a->prompts, a, &reqs, &n, keep, &err);
	loaded l = {0};
	if (!rc)
		rc = load(ctx, d, argv[optind], a->adapter, a->tp, a->threads, -1, a->kv_type, a->device, &l, &err);
	if (rc) {
		json_decref(keep);
		free(reqs);
		return engine_fail(d, &err);
	}
	const engine_model_info *in = engine_model_get_info(l.m);
	int max_seq = a->ctx > 0 ? a->ctx : in->ctx_train;
	/* Each adapter a prompt names is loaded once; one that cannot be fails
	 * the prompts that name it. */
	enum { MAX_ADAPTERS = 16 };
	const char *ad_ref[MAX_ADAPTERS];
	engine_adapter *ad_loaded[MAX_ADAPTERS];
	char ad_err[MAX_ADAPTERS][512];
	int nad = 0;
	for (int i = 0; i < n; i++) {
		prompt_req *r = &reqs[i];
		r->adapter = l.adapter;
		if (!r->adapter_ref)
			continue;
		int k = 0;
		while (k < nad && strcmp(ad_ref[k], r->adapter_ref) != 0)
			k++;
		if (k == nad && nad == MAX_ADAPTERS) {
			snprintf(r->error, sizeof r->error, "more than %d adapters in one batch",
				 MAX_ADAPTERS);
			continue;
		}
		if (k == nad) {
			owl_err e = {0};
			char *apath = NULL, *alabel = NULL;
			ad_ref[k] = r->adapter_ref;
			ad_loaded[k] = NULL;
			ad_err[k][0] = 0;
			if (adapter_path(ctx, r->adapter_ref, l.version_id, l.label, &apath, &alabel, &e) ||
			    engine_adapter_load(l.m, apath, &ad_loaded[k], &e))
				snprintf(ad_err[k], sizeof ad_err[k], "adapter %s: %s", r->adapter_ref, e.msg);
			free(apath), free(alabel);
			nad++;
		}
		r->adapter = ad_loaded[k];
		if (ad_err[k][0])
			snprintf(r->error, sizeof r->error, "%s", ad_err[k]);
	}
	/* Tokenize; a prompt that cannot run fails alone. */
	size_t pool = 0;
	for (int i = 0; i < n; i++) {
		prompt_req *r = &reqs[i];
		r->g.vocab = in->vocab;
		r->out.echo = 0;
		owl_buf_init(&r->out.text, 64u << 20);
		char *text = r->text;
		if (r->chat) {
			engine_chat_msg msgs[2];
			size_t k = 0;
			if (r->system)
				msgs[k++] = (engine_chat_msg){"system", r->system};
			msgs[k++] = (engine_chat_msg){"user", r->text};
			text = chat_prompt(l.tok, msgs, k);
		}
		owl_err e = {0};
		if (engine_tokenize(l.tok, text, strlen(text), !r->chat, r->chat, &r->ids, &r->nids, &e))
			snprintf(r->error, sizeof r->error, "%s", e.msg);
		else if (r->nids >= (size_t)max_seq)
			snprintf(r->error, sizeof r->error, "the prompt has %zu tokens, more than the "
				 "context of %d (use --ctx)", r->nids, max_seq);
		else if (engine_gen_new(l.tok, &r->g, r->ids, r->nids, emit_collect, &r->out, &r->gen, &e))
			snprintf(r->error, sizeof r->error, "%s", e.msg);
		if (text != r->text)
			free(text);
		if (!*r->error) {
			size_t need = r->nids + (size_t)r->g.max_tokens;
			pool += (need < (size_t)max_seq ? need : (size_t)max_seq) + 32;
		}
	}
	engine_kv *kv = NULL;
	engine_kv_opts ko = {.n_tokens = pool > (1u << 24) ? 1 << 24 : (int)(pool ? pool : 32),
			     .max_seq_tokens = max_seq, .type = a->kv_type};
	rc = engine_kv_new(l.m, &ko, &kv, &err);
	size_t total = 0;
	for (int i = 0; i < n; i++)
		total += reqs[i].nids;
	int32_t *tok = owl_xmalloc((total + (size_t)n + 1) * sizeof *tok);
	int32_t *seq = owl_xmalloc((total + (size_t)n + 1) * sizeof *seq);
	float *logits = owl_xmalloc((size_t)n * in->vocab * sizeof *logits);
	int *row_req = owl_xmalloc((size_t)n * sizeof *row_req);
	int gen_total = 0, prompt_total = 0;
	double t0 = owl_now(), t_prompt = 0;
	/* The prompts: one batch. */
	int nb = 0, rows = 0;
	for (int i = 0; !rc && i < n; i++) {
		prompt_req *r = &reqs[i];
		if (*r->error)
			continue;
		if ((rc = engine_kv_seq_new(kv, 0, &r->seq, &err)) ||
		    (rc = engine_kv_seq_set_adapter(kv, r->seq, r->adapter, &err)))
			break;
		for (size_t k = 0; k < r->nids; k++, nb++)
			tok[nb] = r->ids[k], seq[nb] = r->seq;
		row_req[rows++] = i;
		prompt_total += (int)r->nids;
	}
	for (int step = 0; !rc && rows > 0; step++) {
		engine_batch b = {.n = nb, .tokens = tok, .seq = seq};
		if ((rc = engine_decode(kv, &b, logits, &err)))
			break;
		if (step == 0)
			t_prompt = owl_now() - t0;
		/* Sample each sequence's next token; the unfinished ones form the next step. */
		int nrows = rows;
		nb = rows = 0;
		for (int k = 0; k < nrows; k++) {
			prompt_req *r = &reqs[row_req[k]];
			if (!engine_gen_step(r->gen, logits + (size_t)k * in->vocab, &r->next))
				continue;
			if (engine_kv_seq_len(kv, r->seq) >= max_seq) {
				engine_gen_stop(r->gen, "context_full");
				continue;
			}
			tok[nb] = r->next, seq[nb++] = r->seq;
			row_req[rows++] = row_req[k];
		}
	}
	double t_all = owl_now() - t0;
	for (int i = 0; i < n; i++)
		gen_total += reqs[i].gen ? engine_gen_count(reqs[i].gen) : 0;
	if (!rc)
		rc = dist_check_output(d, &reqs[0].out.text, sizeof reqs[0], n, &err);
	int failed = 0;
	json_t *results = json_array();
	for (int i = 0; !rc && i < n; i++) {
		prompt_req *r = &reqs[i];
		char *clean = owl_utf8_sanitize(r->out.text.data ? r->out.text.data : "", r->out.text.len);
		failed += *r->error != 0;
		if (ctx->json) {
			json_t *o = json_pack("{s:i, s:s}", "index", i + 1, "prompt", r->text);
			if (*r->error)
				json_object_set_new(o, "error", json_string(r->error));
			else {
				json_object_set_new(o, "text", json_string(clean));
				json_object_set_new(o, "prompt_tokens", json_integer((json_int_t)r->nids));
				json_object_set_new(o, "generated_tokens", json_integer(engine_gen_count(r->gen)));
				json_object_set_new(o, "stop_reason", json_string(engine_gen_stop_reason(r->gen)));
			}
			json_array_append_new(results, o);
		} else if (*r->error) {
			printf("=== %d: error: %s\n\n", i + 1, r->error);
		} else {
			printf("=== %d\n%s%s\n\n", i + 1, r->chat ? "" : r->text, clean);
		}
		free(clean);
	}
	if (!rc && ctx->json)
		cmd_print_json(json_pack("{s:s, s:o, s:i, s:i, s:f, s:f}", "model", l.label, "results",
					 results, "prompt_tokens", prompt_total, "generated_tokens", gen_total,
					 "prompt_tokens_per_s", t_prompt > 0 ? prompt_total / t_prompt : 0.0,
					 "generation_tokens_per_s", t_all - t_prompt > 0 ?
					 gen_total / (t_all - t_prompt) : 0.0));
	else
		json_decref(results);
	if (!rc && (ctx->verbose || failed) && !ctx->json)
		fprintf(stderr, "%s: %d prompts in one batch: %d prompt tokens (%.1f t/s), %d generated "
			"(%.1f t/s together)%s\n", l.label, n, prompt_total,
			t_prompt > 0 ? prompt_total / t_prompt : 0.0, gen_total,
			t_all - t_prompt > 0 ? gen_total / (t_all - t_prompt) : 0.0,
			failed ? "; some prompts failed" : "");
	for (int i = 0; i < n; i++)
		prompt_req_release(&reqs[i]);
	for (int k = 0; k < nad; k++)
		engine_adapter_free(ad_loaded[k]);
	free(reqs), free(tok), free(seq), free(logits), free(row_req);
	json_decref(keep);
	engine_kv_free(kv);
	unload(&l);
	if (rc)
		return engine_fail(d, &err);
	if (failed) {
		owl_err_set(&err, OWL_EFAIL, "%d of %d prompts failed", failed, n);
		/* every process ran the same prompts to the same failures */
		dist_failed_together = 1;
		return engine_fail(d, &err);
	}
	return dist_end(d, OWL_OK);
}

static int run_run(owl_ctx *ctx, int argc, char **argv)
{
	gen_args a;
	int rc = parse_gen("run", argc, argv, &a);
	if (rc)
		return rc;
	if (a.prompts && optind != argc - 1)
		return cmd_usage_error("run", "expected MODEL --prompts FILE (no PROMPT)");
	if (!a.prompts && optind != argc - 2)
		return cmd_usage_error("run", "expected MODEL PROMPT (or MODEL --prompts FILE)");
	owl_err err = {0};
	engine_dist *d = NULL;
	/* The seed (by default the clock's) is rank 0's on every process. */
	if (dist_begin(ctx, a.rendezvous, argc, argv, &d, &err) ||
	    engine_dist_bcast(d, &a.g.sampling.seed, sizeof a.g.sampling.seed, &err))
		return engine_fail(d, &err);
	if (engine_dist_size(d) > 1) {
		a.g.agree = dist_agree;
		a.g.agree_ctx = d;
	}
	if (a.prompts)
		return run_prompts(ctx, &a, d, argc, argv);
	loaded l;
	if (load(ctx, d, argv[optind], a.adapter, a.tp, a.threads, a.ctx, a.kv_type, a.device, &l, &err))
		return engine_fail(d, &err);
	const char *prompt = argv[optind + 1];
	char *text = NULL;
	if (a.chat) {
		engine_chat_msg msgs[2];
		size_t n = 0;
		if (a.system)
			msgs[n++] = (engine_chat_msg){"system", a.system};
		msgs[n++] = (engine_chat_msg){"user", prompt};
		text = chat_prompt(l.tok, msgs, n);
	} else {
		text = owl_xstrdup(prompt);
	}
	int32_t *ids = NULL;
	size_t nids = 0;
	/* A chat rendering carries its own BOS; a raw prompt gets the model's. */
	rc = engine_tokenize(l.tok, text, strlen(text), !a.chat, a.chat, &ids, &nids, &err);
	a.g.vocab = engine_model_get_info(l.m)->vocab;
	engine_gen_stats st;
	if (!rc && nids + (size_t)a.g.max_tokens > (size_t)engine_session_ctx(l.sess) &&
	    nids >= (size_t)engine_session_ctx(l.sess))
		rc = owl_err_set(&err, OWL_EUSAGE, "the prompt has %zu tokens, more than the context "
				 "of %d (use --ctx)", nids, engine_session_ctx(l.sess));
	if (!rc && !ctx->json && !a.chat)
		fputs(prompt, stdout);
	collector out = {.echo = !ctx->json};
	owl_buf_init(&out.text, 64u << 20);
	if (!rc)
		rc = engine_generate(l.sess, l.tok, ids, nids, &a.g, emit_collect, &out, &st, &err);
	if (!rc && (rc = dist_check_output(d, &out.text, 0, 1, &err)))
		free(st.tokens);
	if (!rc) {
		if (!ctx->json) {
			printf("\n");
			fflush(stdout); /* before the statistics on stderr, when both go to one log */
		}
		if (ctx->verbose || ctx->json) {
			double pp = st.prompt_s > 0 ? st.prompt_tokens / st.prompt_s : 0;
			double tg = st.gen_s > 0 ? st.gen_tokens / st.gen_s : 0;
			char *clean = owl_utf8_sanitize(out.text.data ? out.text.data : "", out.text.len);
			if (ctx->json)
				cmd_print_json(json_pack("{s:s, s:s, s:i, s:i, s:f, s:f, s:s}", "model",
							 l.label, "text", clean, "prompt_tokens", st.prompt_tokens,
							 "generated_tokens", st.gen_tokens,
							 "prompt_tokens_per_s", pp, "generation_tokens_per_s",
							 tg, "stop_reason", st.stop_reason));
			else
				fprintf(stderr, "%s: %d prompt tokens (%.1f t/s), %d generated (%.1f t/s), "
					"stopped: %s\n", l.label, st.prompt_tokens, pp, st.gen_tokens, tg,
					st.stop_reason);
			free(clean);
		}
	}
	owl_buf_release(&out.text);
	if (!rc)
		free(st.tokens);
	free(ids);
	free(text);
	unload(&l);
	return rc ? engine_fail(d, &err) : dist_end(d, OWL_OK);
}

/* ---- chat -------------------------------------------------------------------------- */

static int run_chat(owl_ctx *ctx, int argc, char **argv)
{
	gen_args a;
	int rc = parse_gen("chat", argc, argv, &a);
	if (rc)
		return rc;
	if (optind != argc - 1)
		return cmd_usage_error("chat", "expected MODEL");
	owl_err err = {0};
	engine_dist *d = NULL;
	engine_dist_env env;
	if (engine_dist_detect(&env, &err))
		return engine_fail(d, &err);
	if (env.size != 1 || a.rendezvous) {
		owl_err_set(&err, OWL_EUSAGE, "owl chat reads a conversation from one terminal and runs "
			    "in one process (the %s launcher started %d): use 'owl run' under the "
			    "launcher, or 'owl chat --tp N' in one process",
			    engine_dist_launcher_name(env.launcher), env.size);
		return engine_fail(d, &err);
	}
	loaded l;
	if (load(ctx, NULL, argv[optind], a.adapter, a.tp, a.threads, a.ctx, a.kv_type, a.device, &l, &err))
		return engine_fail(d, &err);
	a.g.vocab = engine_model_get_info(l.m)->vocab;
	engine_chat_family f = engine_chat_detect(engine_tokenizer_chat_template(l.tok));
	if (f == ENGINE_CHAT_UNKNOWN)
		fprintf(stderr, "owl: warning: %s has no chat template owl recognises; using ChatML\n",
			l.label);
	int tty = isatty(STDIN_FILENO);
	if (tty)
		fprintf(stderr, "chatting with %s (%s template); /reset starts over, /exit or Ctrl-D "
			"ends\n", l.label, engine_chat_family_name(f));
	engine_chat_msg msgs[256];
	char *owned[256];
	size_t n = 0;
	if (a.system) {
		msgs[n] = (engine_chat_msg){"system", a.system};
		owned[n++] = NULL;
	}
	size_t base = n;
	int32_t *cached = NULL; /* the tokens in the KV cache */
	size_t ncached = 0;
	char *line = NULL;
	size_t cap = 0;
	for (;;) {
		if (tty)
			fprintf(stderr, "> ");
		ssize_t got = getline(&line, &cap, stdin);
		if (got < 0)
			break;
		while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r'))
			line[--got] = 0;
		if (!strcmp(line, "/exit") || !strcmp(line, "/quit"))
			break;
		if (!strcmp(line, "/reset")) {
			for (size_t i = base; i < n; i++)
				free(owned[i]);
			n = base;
			engine_session_truncate(l.sess, 0);
			ncached = 0;
			fprintf(stderr, "(conversation reset)\n");
			continue;
		}
		if (!got)
			continue;
		if (n + 2 > 256) {
			fprintf(stderr, "owl: the conversation is too long; /reset to start over\n");
			continue;
		}
		owned[n] = owl_xstrdup(line);
		msgs[n] = (engine_chat_msg){"user", owned[n]};
		n++;
		/* Render the whole conversation and run only what the cache lacks. */
		char *text = chat_prompt(l.tok, msgs, n);
		int32_t *ids = NULL;
		size_t nids = 0;
		engine_tokenize(l.tok, text, strlen(text), 0, 1, &ids, &nids, &err);
		free(text);
		/* The conversation so far is still in the KV cache: run only what
		 * differs from it (usually just the new user turn). */
		size_t keep = 0;
		while (keep < ncached && keep + 1 < nids && cached[keep] == ids[keep])
			keep++;
		engine_session_truncate(l.sess, (int)keep);
		collector reply = {.echo = 1};
		owl_buf_init(&reply.text, 16u << 20);
		engine_gen_stats st;
		rc = engine_generate(l.sess, l.tok, ids + keep, nids - keep, &a.g, emit_collect, &reply,
				     &st, &err);
		if (!rc) {
			/* What the cache now holds: the prompt, then the reply so far. */
			cached = owl_xrealloc(cached, (nids + (size_t)st.gen_cached + 1) * sizeof *cached);
			memcpy(cached, ids, nids * sizeof *ids);
			memcpy(cached + nids, st.tokens, (size_t)st.gen_cached * sizeof *cached);
			ncached = nids + (size_t)st.gen_cached;
			free(st.tokens);
		} else {
			ncached = 0;
		}
		printf("\n");
		fflush(stdout);
		free(ids);
		if (rc) {
			fprintf(stderr, "owl: error: %s\n", err.msg);
			owl_buf_release(&reply.text);
			n--;
			free(owned[n]);
			if (err.code == OWL_EUSAGE)
				continue;
			break;
		}
		/* The reply joins the history, so the next turn sees the whole exchange. */
		owned[n] = reply.text.len ? owl_buf_steal(&reply.text) : owl_xstrdup("");
		owl_buf_release(&reply.text);
		msgs[n] = (engine_chat_msg){"assistant", owned[n]};
		n++;
	}
	free(line);
	free(cached);
	for (size_t i = base; i < n; i++)
		free(owned[i]);
	unload(&l);
	return rc ? OWL_EFAIL : OWL_OK;
}

/* ---- perplexity ---------------------------------------------------------------------- */

static void ppl_progress(void *ctx, size_t chunk, size_t nchunks, double ppl)
{
	printf("[%zu]%.4f,", chunk, ppl);
	fflush(stdout);
}

static int run_perplexity(owl_ctx *ctx, int argc, char **argv)
{
	static const struct option opts[] = {
		{"file", required_argument, 0, 'f'}, {"ctx", required_argument, 0, 'c'},
		{"tp", required_argument, 0, 'T'}, {"threads", required_argument, 0, 'j'},
		{"chunks", required_argument, 0, 'k'}, {"adapter", required_argument, 0, 'A'},
		{"rendezvous", required_argument, 0, 'Z'}, {"device", required_argument, 0, 'D'},
		{0, 0, 0, 0},
	};
	const char *file = NULL, *adapter = NULL, *rendezvous = NULL, *device = NULL;
	int n_ctx = 512, tp = 0, threads = 0, max_chunks = 0, c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'f': file = optarg; break;
		case 'c': n_ctx = atoi(optarg); break;
		case 'T': tp = atoi(optarg); break;
		case 'j': threads = atoi(optarg); break;
		case 'k': max_chunks = atoi(optarg); break;
		case 'A': adapter = optarg; break;
		case 'Z': rendezvous = optarg; break;
		case 'D': device = optarg; break;
		default: return cmd_usage_error("perplexity", "unknown option");
		}
	}
	if (optind != argc - 1 || !file)
		return cmd_usage_error("perplexity", "expected MODEL --file TEXT");
	if (n_ctx < 8)
		return cmd_usage_error("perplexity", "--ctx must be at least 8");
	owl_err err = {0};
	char *text = NULL;
	size_t len = 0;
	engine_dist *d = NULL;
	if (dist_begin(ctx, rendezvous, argc, argv, &d, &err) ||
	    dist_read_file(d, file, 1u << 30, &text, &len, &err))
		return engine_fail(d, &err);
	loaded l;
	if (load(ctx, d, argv[optind], adapter, tp, threads, -1, ENGINE_KV_F32, device, &l, &err)) {
		free(text);
		return engine_fail(d, &err);
	}
	int32_t *ids = NULL;
	size_t n = 0;
	int rc = engine_tokenize(l.tok, text, len, 0, 0, &ids, &n, &err);
	free(text);
	engine_ppl_opts po = {.n_ctx = n_ctx, .max_chunks = max_chunks, .adapter = l.adapter};
	engine_ppl_result res;
	if (!rc && !ctx->json && !ctx->quiet && n >= (size_t)n_ctx)
		fprintf(stderr, "perplexity: %zu tokens, %zu chunks of %d, scoring the second half of "
			"each\n", n, max_chunks > 0 && n / (size_t)n_ctx > (size_t)max_chunks ?
			(size_t)max_chunks : n / (size_t)n_ctx, n_ctx);
	if (!rc)
		rc = engine_perplexity(l.m, l.tok, ids, n, &po, ctx->json ? NULL : ppl_progress, NULL,
				       &res, &err);
	free(ids);
	if (rc) {
		if (rc == OWL_EUSAGE && n < (size_t)n_ctx)
			owl_err_set(&err, OWL_EUSAGE, "'%s' has %zu tokens, fewer than one context of %d "
				    "(use a smaller --ctx)", file, n, n_ctx);
		unload(&l);
		dist_failed_together = rc == OWL_EUSAGE; /* the same text on every process */
		return engine_fail(d, &err);
	}
	if (ctx->json)
		cmd_print_json(json_pack("{s:s, s:f, s:f, s:I, s:i, s:I, s:f}", "model", l.label, "ppl",
					 res.ppl, "ppl_error", res.ppl_error, "tokens_scored",
					 (json_int_t)res.tokens_scored, "ctx", n_ctx, "chunks",
					 (json_int_t)res.chunks, "seconds", res.seconds));
	else
		printf("\nFinal estimate: PPL = %.4f +/- %.5f  (%zu tokens scored in %.1f s)\n", res.ppl,
		       res.ppl_error, res.tokens_scored, res.seconds);
	unload(&l);
	return dist_end(d, OWL_OK);
}

/* ---- bench --------------------------------------------------------------------------- */

/* A "Vm...: N kB" line of /proc/self/status (VmHWM: peak resident, VmRSS: now). */
static long status_kib(const char *key)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kib = 0;
	size_t klen = strlen(key);
	while (f && fgets(line, sizeof line, f))
		if (!strncmp(line, key, klen) && line[klen] == ':') {
			kib = atol(line + klen + 1);
			break;
		}
	if (f)
		fclose(f);
	return kib;
}

static void mean_sd(const double *x, int n, double *mean, double *sd)
{
	double s = 0, s2 = 0;
	for (int i = 0; i < n; i++)
		s += x[i];
	*mean = s / n;
	for (int i = 0; i < n; i++)
		s2 += (x[i] - *mean) * (x[i] - *mean);
	*sd = n > 1 ? sqrt(s2 / (n - 1)) : 0;
}

/* Aggregate decoding speed of batch sequences stepping together from an
 * empty context: each step is one forward pass over batch tokens, so the
 * weights are read once for all of them. */
static int bench_batch(engine_model *m, const engine_adapter *adapter, int batch, int ntg,
		       int kv_type, int32_t tok, double *tps, uint64_t *graph_launches, owl_err *err)
{
	engine_kv *kv = NULL;
	engine_kv_opts o = {.n_tokens = batch * (ntg + 32), .max_seq_tokens = ntg, .type = kv_type};
	int rc = engine_kv_new(m, &o, &kv, err);
	int32_t *toks = owl_xmalloc((size_t)batch * sizeof *toks);
	int32_t *seq = owl_xmalloc((size_t)batch * sizeof *seq);
	float *logits = owl_xmalloc((size_t)batch * engine_model_get_info(m)->vocab * sizeof *logits);
	for (int i = 0; i < batch && !rc; i++) {
		rc = engine_kv_seq_new(kv, 0, &seq[i], err);
		if (!rc)
			rc = engine_kv_seq_set_adapter(kv, seq[i], adapter, err);
		toks[i] = tok;
	}
	double t0 = owl_now();
	for (int g = 0; g < ntg && !rc; g++) {
		engine_batch b = {.n = batch, .tokens = toks, .seq = seq};
		rc = engine_decode(kv, &b, logits, err);
	}
	*tps = rc ? 0 : (double)batch * ntg / (owl_now() - t0);
	engine_kv_stats st;
	if (kv) {
		engine_kv_get_stats(kv, &st);
		*graph_launches += st.graph_launches;
	}
	free(toks), free(seq), free(logits);
	engine_kv_free(kv);
	return rc;
}

static int run_bench(owl_ctx *ctx, int argc, char **argv)
{
	static const struct option opts[] = {
		{"prompt", required_argument, 0, 'p'}, {"gen", required_argument, 0, 'g'},
		{"reps", required_argument, 0, 'r'}, {"tp", required_argument, 0, 'T'},
		{"threads", required_argument, 0, 'j'}, {"batch", required_argument, 0, 'b'},
		{"kv-type", required_argument, 0, 'K'}, {"adapter", required_argument, 0, 'A'},
		{"rendezvous", required_argument, 0, 'Z'}, {"device", required_argument, 0, 'D'},
		{"bandwidth", required_argument, 0, 'W'}, {"gemm", no_argument, 0, 'G'},
		{0, 0, 0, 0},
	};
	int npp = 512, ntg = 128, reps = 3, tp = 0, threads = 0, batch = 1, kv_type = 0, gemm = 0, c;
	double bandwidth = 0; /* GB/s of the memory the weights lie in; 0: unknown */
	const char *adapter = NULL, *rendezvous = NULL, *device = NULL;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'p': npp = atoi(optarg); break;
		case 'g': ntg = atoi(optarg); break;
		case 'r': reps = atoi(optarg); break;
		case 'T': tp = atoi(optarg); break;
		case 'j': threads = atoi(optarg); break;
		case 'b': batch = atoi(optarg); break;
		case 'K':
			if (parse_kv_type("bench", optarg, &kv_type))
				return OWL_EUSAGE;
			break;
		case 'A': adapter = optarg; break;
		case 'Z': rendezvous = optarg; break;
		case 'D': device = optarg; break;
		case 'W': {
			char *end;
			bandwidth = strtod(optarg, &end);
			if (end == optarg || *end || !(bandwidth > 0) || bandwidth > 1e6)
				return cmd_usage_error("bench", "--bandwidth takes GB/s, a number above 0");
			break;
		}
		case 'G': gemm = 1; break;
		default: return cmd_usage_error("bench", "unknown option");
		}
	}
	if (optind != argc - 1)
		return cmd_usage_error("bench", "expected MODEL");
	if (npp < 1 || ntg < 0 || reps < 1 || reps > 100 || batch < 1 || batch > 256)
		return cmd_usage_error("bench", "--prompt >= 1, --gen >= 0, 1 <= --reps <= 100, "
				       "1 <= --batch <= 256");
	owl_err err = {0};
	loaded l;
	engine_dist *d = NULL;
	if (dist_begin(ctx, rendezvous, argc, argv, &d, &err))
		return engine_fail(d, &err);
	/* What the process holds before the model (code, libraries, the
	 * registry): peak memory is reported as this plus what the model adds. */
	long base_kib = status_kib("VmRSS");
	if (load(ctx, d, argv[optind], adapter, tp, threads, npp > ntg ? npp : ntg, kv_type, device, &l, &err))
		return engine_fail(d, &err);
	const engine_model_info *in = engine_model_get_info(l.m);
	float *logits = owl_xmalloc((size_t)in->vocab * sizeof *logits);
	int32_t *toks = owl_xmalloc((size_t)npp * sizeof *toks);
	uint64_t seed = 42;
	for (int i = 0; i < npp; i++) {
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		toks[i] = (int32_t)((seed >> 33) % (uint64_t)in->vocab);
	}
	double pp[100], tg[100];
	uint64_t graph_launches = 0; /* decoding steps replayed from CUDA graphs */
	int rc = 0;
	/* One warm-up pass maps the weights in and settles the thread pools. */
	engine_session_truncate(l.sess, 0);
	rc = engine_forward(l.sess, toks, npp < 16 ? npp : 16, logits, 0, &err);
	for (int r = 0; r < reps && !rc; r++) {
		engine_session_truncate(l.sess, 0);
		double t0 = owl_now();
		rc = engine_forward(l.sess, toks, npp, logits, 0, &err);
		pp[r] = npp / (owl_now() - t0);
		if (rc || ntg == 0) {
			tg[r] = 0;
			continue;
		}
		/* As llama-bench: generation is timed from an empty context, so
		 * pp and tg measure one thing each. */
		if (batch > 1) {
			rc = bench_batch(l.m, l.adapter, batch, ntg, kv_type, toks[npp - 1], &tg[r],
					 &graph_launches, &err);
			continue;
		}
		engine_session_truncate(l.sess, 0);
		int32_t t = toks[npp - 1];
		t0 = owl_now();
		for (int g = 0; g < ntg && !rc; g++)
			rc = engine_forward(l.sess, &t, 1, logits, 0, &err);
		tg[r] = ntg / (owl_now() - t0);
	}
	if (batch == 1) {
		engine_kv_stats st;
		engine_session_get_stats(l.sess, &st);
		graph_launches = st.graph_launches;
	}
	free(toks);
	free(logits);
	engine_device_mem dm = {0};
	if (!rc)
		rc = engine_model_device_memory(l.m, &dm, &err);
	/* The prompt's matrix products alone, on the same weights and backend:
	 * what prompt processing would reach if nothing else took time. */
	double gemm_s = 0, gemm_flops = 0;
	if (!rc && gemm && in->tp == 1 && in->processes == 1)
		rc = engine_model_gemm_bench(l.m, npp, reps, &gemm_s, &gemm_flops, &err);
	if (rc) {
		unload(&l);
		return engine_fail(d, &err);
	}
	double ppm, pps, tgm, tgs;
	mean_sd(pp, reps, &ppm, &pps);
	mean_sd(tg, reps, &tgm, &tgs);
	/* A decoding step reads the weights once for the whole batch and each
	 * sequence's keys and values: from an empty context, step g attends to
	 * g + 1 positions, (ntg + 1) / 2 on average. */
	double step_bytes = (double)engine_model_decode_bytes(l.m) +
			    batch * (double)engine_model_kv_token_bytes(l.m, kv_type) * (ntg + 1) / 2.0;
	double read_gbps = ntg && tgm > 0 ? step_bytes * (tgm / batch) / 1e9 : 0;
	int roofline = bandwidth > 0 && read_gbps > 0 && in->tp == 1 && in->processes == 1;
	long rss = status_kib("VmHWM");
	uint64_t kv = engine_session_kv_bytes(l.sess);
	uint64_t model_bytes = rss > base_kib ? (uint64_t)(rss - base_kib) * 1024 : 0;
	uint64_t want = in->weight_bytes + kv;
	uint64_t work = model_bytes > want ? model_bytes - want : 0;
	char wsize[32], kvs[32], rsss[32], params[32], bases[32], models[32], works[32];
	owl_fmt_bytes(in->weight_bytes, wsize, sizeof wsize);
	owl_fmt_bytes(kv, kvs, sizeof kvs);
	owl_fmt_bytes((uint64_t)rss * 1024, rsss, sizeof rsss);
	owl_fmt_bytes((uint64_t)base_kib * 1024, bases, sizeof bases);
	owl_fmt_bytes(model_bytes, models, sizeof models);
	owl_fmt_bytes(work, works, sizeof works);
	snprintf(params, sizeof params, "%.2f M", (double)in->n_params / 1e6);
	/* Ranks over processes are named by what joins them. */
	char backend[32];
	if (in->processes > 1)
		snprintf(backend, sizeof backend, "%s %s", in->backend,
			 !strcmp(in->backend, "cpu") ? engine_dist_transport(d) : "nccl");
	else
		snprintf(backend, sizeof backend, "%s%s", in->backend, in->tp > 1 ? " tp" : "");
	/* On a device: what the backend holds there, the weights (as loaded),
	 * the KV cache and the batch buffers, and the device's own figures. */
	uint64_t dev_other = dm.buffer_bytes > l.dev_model_bytes + kv ?
			     dm.buffer_bytes - l.dev_model_bytes - kv : 0;
	if (ctx->json) {
		json_t *o = json_pack("{s:s, s:s, s:s, s:I, s:I, s:s, s:i, s:i, s:i, s:i, s:f, s:f, s:f,"
					 " s:f, s:i, s:s, s:I, s:I, s:I, s:i}",
					 "model", l.label, "arch", in->arch, "dtype", in->weight_dtype,
					 "params", (json_int_t)in->n_params, "weight_bytes",
					 (json_int_t)in->weight_bytes, "backend", backend, "threads",
					 in->threads, "tp", in->tp, "prompt", npp, "gen", ntg,
					 "pp_tokens_per_s", ppm, "pp_stddev", pps, "tg_tokens_per_s", tgm,
					 "tg_stddev", tgs, "batch", batch, "kv_type", kv_type ? "f16" : "f32",
					 "kv_bytes", (json_int_t)kv, "peak_rss_bytes",
					 (json_int_t)rss * 1024, "baseline_rss_bytes",
					 (json_int_t)base_kib * 1024, "processes", in->processes);
		if (o && ntg) {
			json_object_set_new(o, "decode_graph_launches", json_integer((json_int_t)graph_launches));
			json_object_set_new(o, "decode_bytes_per_step", json_integer((json_int_t)step_bytes));
			json_object_set_new(o, "decode_read_gbps", json_real(read_gbps));
		}
		if (o && roofline) {
			json_object_set_new(o, "bandwidth_gbps", json_real(bandwidth));
			json_object_set_new(o, "roofline_fraction", json_real(read_gbps / bandwidth));
		}
		if (o && gemm_s > 0) {
			json_object_set_new(o, "gemm_seconds", json_real(gemm_s));
			json_object_set_new(o, "gemm_flops_per_s", json_real(gemm_flops / gemm_s));
			json_object_set_new(o, "pp_gemm_fraction", json_real(gemm_s * ppm / npp));
		}
		if (o && dm.known)
			json_object_set_new(o, "device_memory", json_pack(
				"{s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "devices", dm.devices,
				"backend_bytes", (json_int_t)(dm.buffer_bytes + dm.work_bytes),
				"weight_bytes", (json_int_t)l.dev_model_bytes, "kv_bytes", (json_int_t)kv,
				"batch_buffer_bytes", (json_int_t)dev_other,
				"workspace_bytes", (json_int_t)dm.work_bytes,
				"pinned_host_bytes", (json_int_t)dm.pinned_bytes,
				"device_total_bytes", (json_int_t)dm.device_total,
				"device_free_bytes", (json_int_t)dm.device_free));
		cmd_print_json(o);
	} else {
		printf("| %-28s | %10s | %9s | %-5s | %7s | %3s | %8s | %16s |\n", "model", "size",
		       "params", "dtype", "backend", "thr", "test", "t/s");
		printf("| %-28s | %10s | %9s | %-5s | %7s | %3s | %8s | %16s |\n",
		       "----------------------------", "----------", "---------", "-----", "-------",
		       "---", "--------", "----------------");
		char test[32];
		snprintf(test, sizeof test, "pp%d", npp);
		printf("| %-28.28s | %10s | %9s | %-5s | %7s | %3d | %8s | %8.2f ± %5.2f |\n", l.label,
		       wsize, params, in->weight_dtype, backend, in->threads, test,
		       ppm, pps);
		if (ntg) {
			if (batch > 1)
				snprintf(test, sizeof test, "tg%dx%d", ntg, batch);
			else
				snprintf(test, sizeof test, "tg%d", ntg);
			printf("| %-28.28s | %10s | %9s | %-5s | %7s | %3d | %8s | %8.2f ± %5.2f |\n",
			       l.label, wsize, params, in->weight_dtype, backend,
			       in->threads, test, tgm, tgs);
		}
		printf("peak memory %s: %s before loading + %s for the model (weights %s + KV cache "
		       "%s for %d tokens + %s working buffers, %.1f%% over weights + KV)\n",
		       rsss, bases, models, wsize, kvs, npp > ntg ? npp : ntg, works,
		       want ? 100.0 * ((double)model_bytes - (double)want) / (double)want : 0.0);
		char sb[32];
		owl_fmt_bytes((uint64_t)step_bytes, sb, sizeof sb);
		if (roofline)
			printf("roofline %s: a step reads %s (weights + KV), %.1f GB/s = %.1f%% of %.0f "
			       "GB/s\n", test, sb, read_gbps, 100.0 * read_gbps / bandwidth, bandwidth);
		else if (ntg)
			printf("roofline %s: a step reads %s (weights + KV), %.1f GB/s (--bandwidth GBPS "
			       "gives the fraction%s)\n", test, sb, read_gbps,
			       in->tp == 1 && in->processes == 1 ? "" : "; tp 1 only");
		if (graph_launches)
			printf("cuda graphs: %llu of the decoding steps replayed from a recorded graph\n",
			       (unsigned long long)graph_launches);
		if (gemm_s > 0)
			printf("gemm pp%d: its matrix products alone take %.1f ms (%.2f TFLOP/s); pp%d "
			       "reaches %.1f%% of that\n", npp, gemm_s * 1e3, gemm_flops / gemm_s / 1e12,
			       npp, 100.0 * gemm_s * ppm / npp);
		else if (gemm)
			printf("gemm pp%d: not measured (tp 1 in one process only)\n", npp);
		if (dm.known) {
			char all[32], dw[32], dkv[32], doth[32], dws[32], tot[32], fr[32];
			owl_fmt_bytes(dm.buffer_bytes + dm.work_bytes, all, sizeof all);
			owl_fmt_bytes(l.dev_model_bytes, dw, sizeof dw);
			owl_fmt_bytes(kv, dkv, sizeof dkv);
			owl_fmt_bytes(dev_other, doth, sizeof doth);
			owl_fmt_bytes(dm.work_bytes, dws, sizeof dws);
			owl_fmt_bytes(dm.device_total, tot, sizeof tot);
			owl_fmt_bytes(dm.device_free, fr, sizeof fr);
			printf("device memory (%s, %d device%s): the backend holds %s (weights %s + KV "
			       "cache %s + %s batch buffers + %s op workspace); the device%s %s total, "
			       "%s free\n", in->backend, dm.devices, dm.devices == 1 ? "" : "s", all, dw,
			       dkv, doth, dws, dm.devices == 1 ? " has" : "s have", tot, fr);
		}
	}
	unload(&l);
	return dist_end(d, OWL_OK);
}

const owl_command cmd_engine_commands[] = {
	{"run", run_run, "generate text from a model",
	 "USAGE\n"
	 "  owl run MODEL PROMPT [--max-tokens N] [--temperature T] [--top-k K] [--top-p P]\n"
	 "          [--min-p P] [--repeat-penalty R] [--frequency-penalty F]\n"
	 "          [--presence-penalty P] [--seed S] [--stop STR]... [--chat [--system TEXT]]\n"
	 "          [--ctx N] [--kv-type f32|f16] [--tp N] [--threads N] [--adapter NAME[@V]|DIR]\n"
	 "          [--device auto|cpu|cuda[:N]] [--rendezvous HOST:PORT]\n"
	 "  owl run MODEL --prompts FILE [the same options] [--json]\n"
	 "\n"
	 "MODEL is a registry reference (NAME, NAME@V, NAME:TAG) or a path to a\n"
	 "checkpoint folder or a .gguf file. The text streams to stdout. Temperature 0\n"
	 "is greedy; the same --seed gives the same text. --chat wraps the prompt in the\n"
	 "model's own chat template (ChatML, Llama 3, Llama 2/Mistral, Zephyr, Gemma) and\n"
	 "stops at its end-of-turn token. --tp N splits the model across N ranks.\n"
	 "--adapter applies a PEFT LoRA adapter unmerged: a folder (adapter_config.json,\n"
	 "adapter_model.safetensors; its shapes must fit MODEL), or an adapter registered\n"
	 "with 'owl pull DIR --base NAME@V', whose base must be the MODEL version run.\n"
	 "Defaults: --max-tokens 128, --temperature 0.8, --top-k 40, --top-p 0.95,\n"
	 "--min-p 0.05, --ctx the model's training context, --kv-type f32 (f16 halves the\n"
	 "KV cache's memory), --device auto.\n"
	 "\n"
	 "--device picks where the ranks run: auto takes the GPUs when this machine has\n"
	 "an NVIDIA driver, a CUDA device and owl's CUDA backend (libowl_cuda.so beside\n"
	 "owl), else the CPU; cpu always the CPU; cuda a GPU or an error saying why there\n"
	 "is none (cuda:N starts at device N; rank r takes device N + r, and with --tp >\n"
	 "1 the GPUs sum through NCCL). 'owl status' shows what this machine has.\n"
	 "\n"
	 "--prompts FILE runs every prompt of FILE as one batch: all prompts in one\n"
	 "forward pass, then one decoding step for all unfinished ones at a time, and\n"
	 "prints the results in the file's order (=== N, then the text; --json: one\n"
	 "object with every result). A line is a prompt, or a JSON object with \"prompt\"\n"
	 "and its own options: max_tokens, temperature, top_k, top_p, min_p,\n"
	 "repeat_penalty, seed, stop (an array), chat, system, adapter (its own\n"
	 "--adapter: prompts with different adapters share each forward pass). At most\n"
	 "1024 prompts; a prompt that cannot run is reported with its error while the\n"
	 "others run.\n"
	 "\n"
	 "Across processes: under mpirun, srun or Kubernetes LeaderWorkerSet every process\n"
	 "runs the same command, and --tp N spreads the N ranks evenly over them (N a\n"
	 "multiple of the processes). Before any work each process checks that it runs\n"
	 "the same owl, command line and model as rank 0; the seed and the --prompts file\n"
	 "come from rank 0; only rank 0 writes the text. An MPI launch joins through MPI;\n"
	 "otherwise --rendezvous HOST:PORT names rank 0's host and a port it listens on\n"
	 "(LeaderWorkerSet: LWS_LEADER_ADDRESS by default). See docs/distributed.md.\n"
	 "\n"
	 "EXAMPLES\n"
	 "  owl run smollm2 \"The capital of France is\" --temperature 0 --max-tokens 20\n"
	 "  owl run smollm2 --prompts questions.jsonl --chat --max-tokens 64\n"
	 "  owl run smollm2:stable \"Why is the sky blue?\" --chat --seed 7\n"
	 "  owl run ./model.gguf \"def fib(n):\" --stop \"\\n\\n\"\n"
	 "  owl run smollm2@1 \"Hello\" --adapter support-lora\n"
	 "  mpirun -np 2 owl run smollm2 \"Hello\" --tp 2 --temperature 0\n"
	 "  srun -N 2 owl run llama@3 \"Hello\" --tp 4 --rendezvous node1:29471\n"},
	{"chat", run_chat, "chat with a model interactively, with its chat template",
	 "USAGE\n"
	 "  owl chat MODEL [--system TEXT] [generation options of 'owl run']\n"
	 "\n"
	 "Reads one user message per line from stdin and streams the answer. /reset\n"
	 "starts a new conversation; /exit or end of input ends.\n"
	 "\n"
	 "EXAMPLES\n"
	 "  owl chat smollm2 --system \"You answer in one sentence.\"\n"
	 "  echo \"Hello\" | owl chat smollm2 --temperature 0\n"},
	{"perplexity", run_perplexity, "measure a model's perplexity on a text file",
	 "USAGE\n"
	 "  owl perplexity MODEL --file TEXT [--ctx N] [--chunks N] [--adapter NAME[@V]|DIR]\n"
	 "                 [--tp N] [--threads N] [--device D] [--rendezvous HOST:PORT] [--json]\n"
	 "\n"
	 "Splits the tokenized file into chunks of --ctx tokens (default 512) and scores\n"
	 "the second half of each chunk given what precedes it, as llama.cpp's\n"
	 "llama-perplexity does, printing the running value per chunk and the final\n"
	 "estimate with its standard error. Use it to validate a model, a quantisation\n"
	 "or an upgrade on your own text: lower is better. --adapter applies a LoRA\n"
	 "adapter unmerged (a registered one must derive from MODEL), so a fine-tune can be\n"
	 "compared with its base on held-out text. Under a launcher (mpirun, srun,\n"
	 "LeaderWorkerSet) the --tp ranks spread over the processes as in 'owl run'; the\n"
	 "text is rank 0's file, sent to every process. --device as in 'owl run'.\n"
	 "\n"
	 "EXAMPLES\n"
	 "  owl perplexity smollm2@2 --file wiki.test.raw --ctx 512\n"
	 "  owl perplexity ./model.Q4_0.gguf --file docs.txt --chunks 20 --json\n"
	 "  owl perplexity llama@3 --adapter support-lora@2 --file held-out.txt\n"
	 "  mpirun -np 2 owl perplexity smollm2 --file wiki.test.raw --tp 2\n"},
	{"bench", run_bench, "measure prompt processing and generation speed",
	 "USAGE\n"
	 "  owl bench MODEL [--prompt 512] [--gen 128] [--reps 3] [--batch N] [--kv-type f32|f16]\n"
	 "            [--tp N] [--threads N] [--adapter NAME[@V]|DIR] [--device D]\n"
	 "            [--bandwidth GBPS] [--gemm] [--rendezvous HOST:PORT] [--json]\n"
	 "\n"
	 "Prints a table like llama-bench: prompt processing (ppN: N tokens in one batch)\n"
	 "and generation (tgN: N tokens one by one from an empty context) in tokens per\n"
	 "second, mean ± standard deviation over the repetitions, and the peak memory:\n"
	 "what the process held before loading the model, plus what the model added\n"
	 "(weights, KV cache, working buffers), beside the weights and KV cache sizes.\n"
	 "--batch N times generation as N sequences decoding together (tgGxN), one\n"
	 "forward pass of N tokens per step, and reports their aggregate tokens/s.\n"
	 "--adapter measures with a LoRA adapter applied (as in 'owl run'). Under a\n"
	 "launcher the --tp ranks spread over the processes as in 'owl run'; the backend\n"
	 "column names what joins them (cpu mpi, cpu tcp) and the memory is rank 0's.\n"
	 "--device as in 'owl run'; the backend column names the device's backend, and on a\n"
	 "device a last line (--json: device_memory) says what the backend holds there\n"
	 "(weights, KV cache, batch buffers, op workspace) and the device's total and free.\n"
	 "\n"
	 "Against the hardware's limits (tp 1, one process): the roofline line gives the\n"
	 "bytes a decoding step reads (the weights once, plus each sequence's keys and\n"
	 "values, from an empty context) and the rate generation reads them at; with\n"
	 "--bandwidth GBPS (the memory's bandwidth: an H200 has 4800, a DDR5 server\n"
	 "socket a few hundred) as a fraction of it. --gemm runs the prompt's matrix\n"
	 "products alone on the same weights and backend (cuBLAS on a GPU, the CPU's\n"
	 "kernels here) and gives pp as a fraction of their throughput.\n"
	 "\n"
	 "EXAMPLES\n"
	 "  owl bench smollm2 --threads 2\n"
	 "  owl bench smollm2 --batch 8 --gen 64\n"
	 "  owl bench ./tinyllama.Q8_0.gguf --prompt 512 --gen 128 --json\n"
	 "  owl bench llama-8b --device cuda --bandwidth 4800 --gemm --batch 32\n"
	 "  mpirun -np 2 owl bench smollm2 --tp 2 --threads 1\n"},
	{0},
};
