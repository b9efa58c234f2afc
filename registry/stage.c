/* Staging: a checkpoint is assembled in tmp/stage-PID-N/files/, checked, and
 * only then registered in one transaction. Until registry_stage_commit runs,
 * nothing of it is visible; a kill at any point leaves a staging folder that
 * `owl gc` removes once its process is gone. */
#define _GNU_SOURCE
#include "store_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/gguf.h"
#include "common/safetensors.h"

static atomic_int stage_counter;

int registry_stage_new(registry_store *s, const char *source, registry_stage **out, owl_err *err)
{
	*out = NULL;
	registry_stage *st = owl_xcalloc(1, sizeof *st);
	st->dir = owl_xasprintf("%s/stage-%d-%d", s->tmp_dir, (int)getpid(),
				atomic_fetch_add(&stage_counter, 1));
	st->files_dir = owl_path_join(st->dir, "files");
	st->source = owl_xstrdup(source);
	owl_remove_tree(st->dir, NULL);
	int rc = owl_mkdir_p(st->files_dir, err);
	if (rc) {
		registry_stage_free(st);
		return rc;
	}
	*out = st;
	return 0;
}

void registry_stage_free(registry_stage *st)
{
	if (!st)
		return;
	if (st->dir)
		owl_remove_tree(st->dir, NULL);
	for (size_t i = 0; i < st->nfiles; i++) {
		free(st->files[i].path);
		free(st->files[i].expected);
	}
	free(st->files);
	free(st->index);
	free(st->last_parent);
	free(st->dir);
	free(st->files_dir);
	free(st->source);
	free(st->revision);
	free(st->format);
	free(st->config_json);
	free(st->default_name);
	free(st);
}

/* A relative path that stays inside the checkpoint: no leading '/', no ".."
 * or "." component, no empty component, no control characters, at most 1024
 * bytes with components of at most 255. */
int registry_relpath_check(const char *p)
{
	if (!*p || *p == '/' || strlen(p) > 1024)
		return 0;
	const char *c = p;
	while (*c) {
		const char *e = strchr(c, '/');
		size_t n = e ? (size_t)(e - c) : strlen(c);
		if (n == 0 || n > 255 || (n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.'))
			return 0;
		for (size_t i = 0; i < n; i++)
			if ((unsigned char)c[i] < 0x20)
				return 0;
		c += n;
		if (*c == '/')
			c++;
	}
	return 1;
}

/* FNV-1a: the index only needs an even spread over a stage's paths. */
static size_t path_hash(const char *p)
{
	uint64_t h = 1469598103934665603ull;
	for (; *p; p++)
		h = (h ^ (unsigned char)*p) * 1099511628211ull;
	return (size_t)h;
}

/* The slot of path in the index: the one holding it, or the empty one where
 * it would go. Paths are looked up once per file, so a stage of 100,000
 * archive entries stays linear instead of comparing every pair. */
static size_t *index_slot(const registry_stage *st, const char *path)
{
	size_t mask = st->index_cap - 1;
	for (size_t i = path_hash(path) & mask;; i = (i + 1) & mask) {
		size_t v = st->index[i];
		if (v == 0 || strcmp(st->files[v - 1].path, path) == 0)
			return &st->index[i];
	}
}

static void index_build(registry_stage *st, size_t cap)
{
	free(st->index);
	st->index_cap = cap;
	st->index = owl_xcalloc(cap, sizeof *st->index);
	for (size_t i = 0; i < st->nfiles; i++)
		*index_slot(st, st->files[i].path) = i + 1;
	st->index_n = st->nfiles;
}

void registry_stage_reindex(registry_stage *st)
{
	/* Folders may have moved too (strip_top). */
	free(st->last_parent);
	st->last_parent = NULL;
	size_t cap = 64;
	while (cap < 2 * (st->nfiles + 1))
		cap *= 2;
	index_build(st, cap);
}

static const registry_stage_file *stage_find(const registry_stage *st, const char *path)
{
	if (st->index && st->index_n == st->nfiles) {
		size_t v = *index_slot(st, path);
		return v ? &st->files[v - 1] : NULL;
	}
	/* Entries were removed since the index was built. */
	for (size_t i = 0; i < st->nfiles; i++)
		if (strcmp(st->files[i].path, path) == 0)
			return &st->files[i];
	return NULL;
}

static int check_new_path(const registry_stage *st, const char *path, owl_err *err)
{
	if (!registry_relpath_check(path))
		return owl_err_set(err, OWL_EINTEGRITY, "refusing file path '%.200s': it is absolute, "
				   "empty, longer than 1024 bytes, or contains '..', '.', an empty "
				   "component or a control character; nothing was stored", path);
	if (stage_find(st, path))
		return owl_err_set(err, OWL_EINTEGRITY, "file '%s' appears twice in the source; "
				   "nothing was stored", path);
	return 0;
}

int registry_stage_add(registry_stage *st, const char *path, const char *digest, uint64_t size,
		       const char *expected, owl_err *err)
{
	int rc = check_new_path(st, path, err);
	if (rc)
		return rc;
	if (st->nfiles == st->cap) {
		st->cap = st->cap ? 2 * st->cap : 16;
		st->files = owl_xrealloc(st->files, st->cap * sizeof *st->files);
	}
	if (!st->index || st->index_n != st->nfiles || 2 * (st->nfiles + 1) > st->index_cap)
		registry_stage_reindex(st);
	registry_stage_file *f = &st->files[st->nfiles++];
	memset(f, 0, sizeof *f);
	f->path = owl_xstrdup(path);
	snprintf(f->digest, sizeof f->digest, "%s", digest);
	f->size = size;
	f->expected = expected ? owl_xstrdup(expected) : NULL;
	st->total_bytes += size;
	*index_slot(st, f->path) = st->nfiles;
	st->index_n = st->nfiles;
	return 0;
}

uint64_t registry_archive_entry_limit(void)
{
	const char *v = getenv("OWL_MAX_ARCHIVE_ENTRIES");
	char *end = NULL;
	unsigned long long n = v && *v ? strtoull(v, &end, 10) : 0;
	return v && *v && end && *end == 0 && n > 0 ? (uint64_t)n : 100000;
}

/* Creates the parent folders of files_dir/path. Archives list the files of
 * one folder together: the folder made last is remembered, so that 10,000
 * entries do not cost 10,000 walks of mkdir over every component. */
static int make_parents(registry_stage *st, const char *path, char **full_out, owl_err *err)
{
	char *full = owl_path_join(st->files_dir, path);
	char *parent = owl_xstrdup(full);
	char *slash = strrchr(parent, '/');
	*slash = 0;
	int rc = 0;
	if (!st->last_parent || strcmp(st->last_parent, parent) != 0) {
		rc = owl_mkdir_p(parent, err);
		free(st->last_parent);
		st->last_parent = rc ? NULL : parent;
		parent = NULL;
	}
	free(parent);
	if (rc) {
		free(full);
		return rc;
	}
	*full_out = full;
	return 0;
}

int registry_stage_create_file(registry_stage *st, const char *path, int *fd_out, owl_err *err)
{
	*fd_out = -1;
	int rc = check_new_path(st, path, err);
	if (rc)
		return rc;
	/* An earlier entry may be a file where this one needs a folder (not
	 * when the folder is the one made for the previous entry). */
	const char *last = strrchr(path, '/');
	int same_folder = 0;
	if (last && st->last_parent) {
		char *parent = owl_xasprintf("%s/%.*s", st->files_dir, (int)(last - path), path);
		same_folder = strcmp(parent, st->last_parent) == 0;
		free(parent);
	}
	for (const char *sl = same_folder ? NULL : strchr(path, '/'); sl; sl = strchr(sl + 1, '/')) {
		char *prefix = owl_xasprintf("%s/%.*s", st->files_dir, (int)(sl - path), path);
		struct stat sb;
		int is_file = lstat(prefix, &sb) == 0 && !S_ISDIR(sb.st_mode);
		free(prefix);
		if (is_file)
			return owl_err_set(err, OWL_EINTEGRITY, "file '%s' collides with a file named "
					   "like one of its folders in the source; nothing was stored",
					   path);
	}
	char *full = NULL;
	if ((rc = make_parents(st, path, &full, err)))
		return rc;
	int fd = open(full, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0) {
		/* Not a duplicate (checked above), so the name collides with a
		 * folder another entry needs, or the other way round. */
		if (errno == EEXIST || errno == EISDIR || errno == ENOTDIR)
			rc = owl_err_set(err, OWL_EINTEGRITY, "file '%s' collides with a folder of the "
					 "same name in the source; nothing was stored", path);
		else
			rc = owl_err_set(err, OWL_EFAIL, "cannot create '%s': %s", full, strerror(errno));
		free(full);
		return rc;
	}
	free(full);
	*fd_out = fd;
	return 0;
}

int registry_stage_copy(registry_stage *st, const char *src, const char *path,
			owl_progress_fn progress, void *progress_ctx, owl_err *err)
{
	int rc = check_new_path(st, path, err);
	if (rc)
		return rc;
	char *dst = NULL;
	rc = make_parents(st, path, &dst, err);
	if (rc)
		return rc;
	char hex[65];
	uint64_t size = 0;
	rc = registry_copy_hashing_unsynced(src, dst, hex, &size, progress, progress_ctx, err);
	free(dst);
	if (rc)
		return rc;
	return registry_stage_add(st, path, hex, size, NULL, err);
}

/* ---- validation ------------------------------------------------------- */

static int has_suffix(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);
	return a >= b && strcasecmp(s + a - b, suffix) == 0;
}

/* Pickle can run arbitrary code when loaded: owl never stores it. */
static int is_pickle(const char *path)
{
	static const char *const ext[] = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"};
	for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++)
		if (has_suffix(path, ext[i]))
			return 1;
	return 0;
}

/* A GGUF file is parsed in full (every count, length and offset checked
 * against the file) before it is accepted. */
static int check_gguf(const char *full, const char *path, owl_err *err)
{
	gguf_file *g = NULL;
	int rc = gguf_open(full, &g, err);
	gguf_close(g);
	if (rc)
		owl_err_wrap(err, "cannot accept '%s'", path);
	return rc;
}

/* Architecture, parameters, dominant tensor type and context of a GGUF. */
static void scan_gguf(const registry_stage *st, uint64_t *params, char *dtype, size_t dn,
		      json_t *sum)
{
	for (size_t i = 0; i < st->nfiles; i++) {
		if (!has_suffix(st->files[i].path, ".gguf"))
			continue;
		char *full = owl_path_join(st->files_dir, st->files[i].path);
		gguf_file *g = NULL;
		int rc = gguf_open(full, &g, NULL);
		free(full);
		if (rc)
			continue;
		uint64_t by_type[32] = {0};
		for (size_t t = 0; t < gguf_tensor_count(g); t++) {
			const gguf_tensor *tt = gguf_tensor_at(g, t);
			uint64_t n = 1;
			for (int d = 0; d < tt->n_dims; d++)
				n *= tt->dims[d];
			*params += n;
			if ((unsigned)tt->type < 32)
				by_type[tt->type] += n;
		}
		int best = 0;
		for (int k = 1; k < 32; k++)
			if (by_type[k] > by_type[best])
				best = k;
		snprintf(dtype, dn, "%s", gguf_type_name((gguf_type)best));
		for (char *c = dtype; *c; c++)
			*c = (char)(*c >= 'A' && *c <= 'Z' ? *c + 32 : *c);
		const char *arch = NULL, *name = NULL;
		if (gguf_get_str(g, "general.architecture", &arch) == 0) {
			json_object_set_new(sum, "architecture", json_string(arch));
			char key[96];
			uint32_t v;
			snprintf(key, sizeof key, "%s.context_length", arch);
			if (gguf_get_u32(g, key, &v) == 0)
				json_object_set_new(sum, "context_length", json_integer(v));
			snprintf(key, sizeof key, "%s.block_count", arch);
			if (gguf_get_u32(g, key, &v) == 0)
				json_object_set_new(sum, "layers", json_integer(v));
			snprintf(key, sizeof key, "%s.embedding_length", arch);
			if (gguf_get_u32(g, key, &v) == 0)
				json_object_set_new(sum, "hidden_size", json_integer(v));
		}
		if (gguf_get_str(g, "general.name", &name) == 0)
			json_object_set_new(sum, "name", json_string(name));
		gguf_close(g);
		break; /* one GGUF describes the version */
	}
}

/* Parameters and dominant dtype from the safetensors headers. */
static int scan_safetensors(const registry_stage *st, uint64_t *params, char *dtype, size_t dn,
			    owl_err *err)
{
	uint64_t by_dtype[16] = {0};
	*params = 0;
	for (size_t i = 0; i < st->nfiles; i++) {
		if (!has_suffix(st->files[i].path, ".safetensors"))
			continue;
		char *full = owl_path_join(st->files_dir, st->files[i].path);
		st_file *sf = NULL;
		int rc = st_open(full, &sf, err);
		free(full);
		if (rc)
			return rc;
		for (size_t t = 0; t < st_count(sf); t++) {
			const st_tensor *tt = st_tensor_at(sf, t);
			uint64_t n = 1;
			for (int d = 0; d < tt->n_dims; d++)
				n *= (uint64_t)tt->shape[d];
			*params += n;
			if ((unsigned)tt->dtype < 16)
				by_dtype[tt->dtype] += n;
		}
		st_close(sf);
	}
	int best = -1;
	for (int d = 0; d < 16; d++)
		if (by_dtype[d] && (best < 0 || by_dtype[d] > by_dtype[best]))
			best = d;
	snprintf(dtype, dn, "%s", best >= 0 ? st_dtype_name((st_dtype)best) : "");
	for (char *c = dtype; *c; c++)
		*c = (char)(*c >= 'A' && *c <= 'Z' ? *c + 32 : *c);
	return 0;
}

/* The summary `owl show` prints: architecture, parameters, dtype, context. */
static int summarise_config(registry_stage *st, uint64_t params, const char *dtype, owl_err *err)
{
	json_t *sum = json_object();
	const registry_stage_file *cf = stage_find(st, "config.json");
	if (!cf)
		cf = stage_find(st, "adapter_config.json");
	if (cf) {
		char *full = owl_path_join(st->files_dir, cf->path);
		char *text = NULL;
		int rc = owl_read_file(full, 4u << 20, &text, NULL, err);
		free(full);
		if (rc) {
			json_decref(sum);
			return rc;
		}
		json_error_t je;
		json_t *cfg = json_loads(text, JSON_REJECT_DUPLICATES, &je);
		free(text);
		if (!json_is_object(cfg)) {
			json_decref(cfg);
			json_decref(sum);
			return owl_err_set(err, OWL_EINTEGRITY, "cannot accept '%s': not a JSON object "
					   "(line %d: %s)", cf->path, je.line, je.text);
		}
		json_t *arch = json_array_get(json_object_get(cfg, "architectures"), 0);
		if (json_is_string(arch))
			json_object_set(sum, "architecture", arch);
		static const struct { const char *from, *to; } keys[] = {
			{"model_type", "model_type"}, {"max_position_embeddings", "context_length"},
			{"num_hidden_layers", "layers"}, {"hidden_size", "hidden_size"},
			{"num_attention_heads", "heads"}, {"num_key_value_heads", "kv_heads"},
			{"vocab_size", "vocab_size"}, {"torch_dtype", "torch_dtype"},
			{"peft_type", "peft_type"}, {"r", "lora_rank"},
			{"base_model_name_or_path", "base_model"},
		};
		for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
			json_t *v = json_object_get(cfg, keys[i].from);
			if (v && !json_is_null(v))
				json_object_set(sum, keys[i].to, v);
		}
		json_decref(cfg);
	}
	if (!cf) {
		uint64_t gp = 0;
		char gd[16] = "";
		scan_gguf(st, &gp, gd, sizeof gd, sum);
		if (gp) {
			params = gp;
			dtype = NULL;
			if (gd[0])
				json_object_set_new(sum, "dtype", json_string(gd));
		}
	}
	if (params)
		json_object_set_new(sum, "parameters", json_integer((json_int_t)params));
	if (dtype && *dtype)
		json_object_set_new(sum, "dtype", json_string(dtype));
	char *text = json_dumps(sum, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(sum);
	free(st->config_json);
	st->config_json = text;
	return 0;
}

int registry_stage_validate(registry_stage *st, owl_err *err)
{
	if (st->nfiles == 0)
		return owl_err_set(err, OWL_EUSAGE, "'%s' holds no files", st->source);
	/* 1. Pickle is refused by name, before anything is opened. */
	owl_buf names;
	owl_buf_init(&names, 4096);
	int npickle = 0;
	for (size_t i = 0; i < st->nfiles; i++)
		if (is_pickle(st->files[i].path)) {
			owl_buf_printf(&names, "%s'%s'", npickle ? ", " : "", st->files[i].path);
			npickle++;
		}
	if (npickle) {
		int rc = owl_err_set(err, OWL_EDENIED,
				     "refusing %s: pickle files (.bin .pt .pth .ckpt .pkl) can run "
				     "arbitrary code when loaded; owl accepts safetensors and GGUF only "
				     "(convert the weights, or leave those files out of the source)",
				     names.data);
		owl_buf_release(&names);
		return rc;
	}
	owl_buf_release(&names);

	/* 2. Weights are checked by their format's own rules. */
	int n_st = 0, n_gguf = 0;
	for (size_t i = 0; i < st->nfiles; i++) {
		const char *p = st->files[i].path;
		char *full = owl_path_join(st->files_dir, p);
		int rc = 0;
		if (has_suffix(p, ".safetensors")) {
			n_st++;
			rc = st_validate_file(full, err);
		} else if (has_suffix(p, ".gguf")) {
			n_gguf++;
			rc = check_gguf(full, p, err);
		}
		free(full);
		if (rc)
			return rc;
	}
	/* 3. Format: what the engine will be able to load. */
	const char *format;
	if (stage_find(st, "adapter_config.json") && n_st)
		format = "adapter";
	else if (stage_find(st, "config.json") && n_st)
		format = "hf";
	else if (n_gguf)
		format = "gguf";
	else if (n_st)
		format = "safetensors";
	else
		return owl_err_set(err, OWL_EUSAGE, "'%s' holds no model weights: expected "
				   ".safetensors files (with config.json) or a .gguf file", st->source);
	free(st->format);
	st->format = owl_xstrdup(format);

	const registry_stage_file *ixf = stage_find(st, "model.safetensors.index.json");
	if (ixf) {
		char *full = owl_path_join(st->files_dir, ixf->path);
		st_index *ix = NULL;
		int rc = st_index_load(full, &ix, err);
		free(full);
		if (rc)
			return rc;
		for (size_t i = 0; i < st_index_file_count(ix); i++)
			if (!stage_find(st, st_index_file_at(ix, i))) {
				rc = owl_err_set(err, OWL_EINTEGRITY, "the sharded checkpoint is incomplete: "
						 "model.safetensors.index.json names '%s', which the "
						 "source does not have", st_index_file_at(ix, i));
				break;
			}
		st_index_free(ix);
		if (rc)
			return rc;
	}

	uint64_t params = 0;
	char dtype[16] = "";
	int rc = scan_safetensors(st, &params, dtype, sizeof dtype, err);
	if (rc)
		return rc;
	return summarise_config(st, params, dtype, err);
}

/* ---- registering ------------------------------------------------------ */

static int64_t model_id_for(registry_store *s, const char *name, int create, owl_err *err)
{
	sqlite3_stmt *q = NULL;
	int64_t id = 0;
	if (registry_store_prepare(s, "SELECT id FROM models WHERE name=?", &q, err))
		return 0;
	sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
	if (sqlite3_step(q) == SQLITE_ROW)
		id = sqlite3_column_int64(q, 0);
	sqlite3_finalize(q);
	if (id || !create)
		return id;
	if (registry_store_prepare(s, "INSERT INTO models(name, created_at) VALUES (?, ?)", &q, err))
		return 0;
	sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 2, owl_unix_time());
	if (sqlite3_step(q) == SQLITE_DONE)
		id = sqlite3_last_insert_rowid(s->db);
	else
		owl_err_set(err, OWL_EFAIL, "cannot add model '%s': %s", name, sqlite3_errmsg(s->db));
	sqlite3_finalize(q);
	return id;
}

int registry_valid_name(const char *name)
{
	size_t n = strlen(name);
	if (n == 0 || n > 128)
		return 0;
	if (!((name[0] >= 'a' && name[0] <= 'z') || (name[0] >= 'A' && name[0] <= 'Z') ||
	      (name[0] >= '0' && name[0] <= '9')))
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_' || c == '.' || c == '/'))
			return 0;
	}
	return strstr(name, "..") == NULL && name[n - 1] != '/' && strstr(name, "//") == NULL;
}

static int step_done(registry_store *s, sqlite3_stmt *q, const char *what, owl_err *err)
{
	int rc = sqlite3_step(q);
	sqlite3_reset(q);
	if (rc != SQLITE_DONE)
		return owl_err_set(err, OWL_EFAIL, "cannot %s: %s", what, sqlite3_errmsg(s->db));
	return 0;
}

/* Makes everything written under dir durable. syncfs flushes the file system
 * in one pass, which costs about one fsync however many files a stage holds
 * (an archive of 10,000 entries would otherwise pay 10,000 journal commits);
 * where it is missing each file is fsync'd. */
static int sync_tree(const char *dir, const registry_stage *st, owl_err *err)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return owl_err_set(err, OWL_EFAIL, "cannot open '%s': %s", dir, strerror(errno));
	int rc = syncfs(fd);
	int e = errno;
	close(fd);
	if (rc == 0)
		return 0;
	if (e != ENOSYS || !st)
		return owl_err_set(err, OWL_EFAIL, "cannot flush '%s' to disk: %s", dir, strerror(e));
	for (size_t i = 0; i < st->nfiles; i++) {
		char *p = owl_path_join(st->files_dir, st->files[i].path);
		int f = open(p, O_RDONLY | O_CLOEXEC);
		int bad = f < 0 || fsync(f) != 0;
		e = errno;
		if (f >= 0)
			close(f);
		if (bad) {
			rc = owl_err_set(err, OWL_EFAIL, "cannot flush '%s': %s", p, strerror(e));
			free(p);
			return rc;
		}
		free(p);
	}
	return 0;
}

/* Moves every staged file into blobs/ under its digest: the staged bytes
 * are made durable first, then renamed, then the renames are made durable.
 * Runs outside any transaction, under the shared ingest lock. */
static int move_into_blobs(registry_store *s, registry_stage *st, registry_commit_result *res,
			   owl_err *err)
{
	int rc = sync_tree(st->files_dir, st, err);
	unsigned char made[256] = {0}; /* blobs/<2 hex>/ known to exist */
	for (size_t i = 0; !rc && i < st->nfiles; i++) {
		registry_stage_file *f = &st->files[i];
		if (!owl_is_hex_digest(f->digest, 64))
			return owl_err_set(err, OWL_EFAIL, "not a sha256 digest: '%s'", f->digest);
		unsigned hi = 0;
		sscanf(f->digest, "%2x", &hi);
		if (!made[hi]) {
			char *dir = owl_xasprintf("%s/%.2s", s->blobs_dir, f->digest);
			rc = owl_mkdir_p(dir, err);
			free(dir);
			if (rc)
				return rc;
			made[hi] = 1;
		}
		char *blob = registry_blob_path(s, f->digest);
		char *staged = owl_path_join(st->files_dir, f->path);
		if (owl_path_exists(blob))
			res->shared_bytes += f->size;
		else
			res->new_bytes += f->size;
		/* Blobs are immutable: read-only for everyone, so that a stray
		 * write through a snapshot link fails instead of corrupting a
		 * version. Renaming over an existing blob of the same digest keeps
		 * one copy and heals a blob damaged since it was stored: the
		 * staged bytes were just hashed. */
		chmod(staged, 0444);
		if (rename(staged, blob) != 0)
			rc = owl_err_set(err, OWL_EFAIL, "cannot move '%s' into the blob store: %s",
					 staged, strerror(errno));
		free(blob);
		free(staged);
	}
	if (!rc)
		rc = sync_tree(s->blobs_dir, NULL, err);
	return rc;
}

int registry_stage_commit(registry_store *s, registry_stage *st, const char *name,
			  int64_t parent_version_id, const char *tag, registry_commit_hook hook,
			  void *hook_ctx, registry_commit_result *res, owl_err *err)
{
	memset(res, 0, sizeof *res);
	if (!registry_valid_name(name))
		return owl_err_set(err, OWL_EUSAGE, "invalid model name '%s': use letters, digits, "
				   "'-', '_', '.' and '/' (e.g. smollm2-135m or acme/support-bot)", name);
	if (!st->format)
		return owl_err_set(err, OWL_EFAIL, "internal: stage committed before validation");
	if (s->read_only)
		return registry_store_begin(s, err); /* says the home is read-only */
	/* gc must not run between moving the blobs in and recording them. */
	int lock = -1;
	int rc = registry_ingest_lock(s, 0, &lock, err);
	if (rc)
		return rc;
	uint64_t new_bytes = 0, shared_bytes = 0;
	if ((rc = move_into_blobs(s, st, res, err)))
		goto out;
	new_bytes = res->new_bytes;
	shared_bytes = res->shared_bytes;

	/* The transaction holds rows only. */
	sqlite3_stmt *q = NULL, *qb = NULL, *qf = NULL;
	if ((rc = registry_store_begin(s, err)))
		goto out;
	int64_t mid = model_id_for(s, name, 1, err);
	if (!mid) {
		rc = err && err->code ? err->code : OWL_EFAIL;
		goto fail;
	}
	int number = 0;
	if ((rc = registry_store_prepare(s, "SELECT COALESCE(MAX(version),0)+1 FROM versions"
					 " WHERE model_id=?", &q, err)))
		goto fail;
	sqlite3_bind_int64(q, 1, mid);
	if (sqlite3_step(q) == SQLITE_ROW)
		number = sqlite3_column_int(q, 0);
	sqlite3_finalize(q);
	if (number < 1) {
		rc = owl_err_set(err, OWL_EFAIL, "cannot number the new version of '%s': %s", name,
				 sqlite3_errmsg(s->db));
		goto fail;
	}

	if ((rc = registry_store_prepare(s,
			   "INSERT INTO versions(model_id, version, source, revision, format,"
			   " parent_version_id, config_json, total_bytes, created_at)"
			   " VALUES (?,?,?,?,?,?,?,?,?)", &q, err)))
		goto fail;
	sqlite3_bind_int64(q, 1, mid);
	sqlite3_bind_int(q, 2, number);
	sqlite3_bind_text(q, 3, st->source, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 4, st->revision, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 5, st->format, -1, SQLITE_STATIC);
	if (parent_version_id)
		sqlite3_bind_int64(q, 6, parent_version_id);
	sqlite3_bind_text(q, 7, st->config_json, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 8, (sqlite3_int64)st->total_bytes);
	sqlite3_bind_int64(q, 9, owl_unix_time());
	rc = step_done(s, q, "add the version", err);
	sqlite3_finalize(q);
	if (rc)
		goto fail;
	int64_t vid = sqlite3_last_insert_rowid(s->db);

	if ((rc = registry_store_prepare(s, "INSERT OR IGNORE INTO blobs(digest, size, created_at)"
					 " VALUES (?,?,?)", &qb, err)) ||
	    (rc = registry_store_prepare(s, "INSERT INTO version_files(version_id, path, digest,"
					 " size, expected_digest) VALUES (?,?,?,?,?)", &qf, err))) {
		sqlite3_finalize(qb);
		goto fail;
	}
	int64_t now = owl_unix_time();
	for (size_t i = 0; !rc && i < st->nfiles; i++) {
		registry_stage_file *f = &st->files[i];
		sqlite3_bind_text(qb, 1, f->digest, -1, SQLITE_STATIC);
		sqlite3_bind_int64(qb, 2, (sqlite3_int64)f->size);
		sqlite3_bind_int64(qb, 3, now);
		rc = step_done(s, qb, "record a blob", err);
		if (rc)
			break;
		sqlite3_bind_int64(qf, 1, vid);
		sqlite3_bind_text(qf, 2, f->path, -1, SQLITE_STATIC);
		sqlite3_bind_text(qf, 3, f->digest, -1, SQLITE_STATIC);
		sqlite3_bind_int64(qf, 4, (sqlite3_int64)f->size);
		sqlite3_bind_text(qf, 5, f->expected, -1, SQLITE_STATIC);
		rc = step_done(s, qf, "record a file", err);
	}
	sqlite3_finalize(qb);
	sqlite3_finalize(qf);
	if (rc)
		goto fail;
	if (hook && (rc = hook(hook_ctx, s, vid, err)))
		goto fail;
	if (tag) {
		registry_version v = {.id = vid, .model_id = mid, .model = (char *)name,
				      .number = number};
		if ((rc = registry_tag_set(s, &v, tag, err)))
			goto fail;
	}
	if ((rc = registry_store_commit(s, err)))
		goto fail;
	res->version_id = vid;
	res->number = number;
	res->new_bytes = new_bytes;
	res->shared_bytes = shared_bytes;
	registry_ingest_unlock(lock);
	return 0;
fail:
	registry_store_rollback(s);
out:
	registry_ingest_unlock(lock);
	memset(res, 0, sizeof *res);
	return rc ? rc : OWL_EFAIL;
}
