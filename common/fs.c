#define _GNU_SOURCE
#include "common.h"

#include <dirent.h>
#include <dlfcn.h>
#include <limits.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

int owl_mkdir_p(const char *path, owl_err *err)
{
	char *p = owl_xstrdup(path);
	int rc = 0;
	for (char *s = p + 1; ; s++) {
		if (*s == '/' || *s == 0) {
			char saved = *s;
			*s = 0;
			if (mkdir(p, 0755) != 0 && errno != EEXIST) {
				rc = owl_err_set(err, OWL_EFAIL, "cannot create directory '%s': %s", p,
						 strerror(errno));
				break;
			}
			*s = saved;
			if (!saved)
				break;
		}
	}
	if (!rc && !owl_is_dir(path))
		rc = owl_err_set(err, OWL_EFAIL, "'%s' exists and is not a directory", path);
	free(p);
	return rc;
}

int owl_path_exists(const char *path)
{
	struct stat st;
	return lstat(path, &st) == 0;
}

int owl_is_dir(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

char *owl_path_join(const char *a, const char *b)
{
	size_t la = strlen(a);
	while (la > 1 && a[la - 1] == '/')
		la--;
	while (*b == '/')
		b++;
	return owl_xasprintf("%.*s/%s", (int)la, a, b);
}

int owl_fsync_dir(const char *dir, owl_err *err)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY);
	if (fd < 0)
		return owl_err_set(err, OWL_EFAIL, "cannot open directory '%s': %s", dir,
				   strerror(errno));
	int rc = 0;
	if (fsync(fd) != 0 && errno != EINVAL)
		rc = owl_err_set(err, OWL_EFAIL, "cannot sync directory '%s': %s", dir,
				 strerror(errno));
	close(fd);
	return rc;
}

int owl_write_file_atomic(const char *path, const void *data, size_t n, owl_err *err)
{
	char *tmp = owl_xasprintf("%s.tmp.%d", path, (int)getpid());
	char *dir = owl_xstrdup(path);
	char *slash = strrchr(dir, '/');
	if (slash)
		*slash = 0;
	else
		strcpy(dir, ".");
	int rc = 0;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		rc = owl_err_set(err, OWL_EFAIL, "cannot create '%s': %s", tmp, strerror(errno));
		goto out;
	}
	const char *p = data;
	size_t left = n;
	while (left > 0) {
		ssize_t w = write(fd, p, left);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			rc = owl_err_set(err, OWL_EFAIL, "cannot write '%s': %s", tmp, strerror(errno));
			break;
		}
		p += w;
		left -= (size_t)w;
	}
	if (!rc && fsync(fd) != 0)
		rc = owl_err_set(err, OWL_EFAIL, "cannot sync '%s': %s", tmp, strerror(errno));
	close(fd);
	if (!rc && rename(tmp, path) != 0)
		rc = owl_err_set(err, OWL_EFAIL, "cannot rename '%s' to '%s': %s", tmp, path,
				 strerror(errno));
	if (rc)
		unlink(tmp);
	else
		rc = owl_fsync_dir(dir, err);
out:
	free(tmp);
	free(dir);
	return rc;
}

int owl_read_file(const char *path, size_t max, char **out, size_t *outlen, owl_err *err)
{
	*out = NULL;
	if (outlen)
		*outlen = 0;
	FILE *f = fopen(path, "rb");
	if (!f)
		return owl_err_set(err, OWL_EFAIL, "cannot open '%s': %s", path, strerror(errno));
	owl_buf b;
	owl_buf_init(&b, max);
	char chunk[65536];
	size_t r;
	int rc = 0;
	while ((r = fread(chunk, 1, sizeof chunk, f)) > 0) {
		if (owl_buf_append(&b, chunk, r) != 0) {
			rc = owl_err_set(err, OWL_EFAIL, "'%s' is larger than the %zu bytes allowed",
					 path, max);
			break;
		}
	}
	if (!rc && ferror(f))
		rc = owl_err_set(err, OWL_EFAIL, "cannot read '%s': %s", path, strerror(errno));
	fclose(f);
	if (rc) {
		owl_buf_release(&b);
		return rc;
	}
	if (outlen)
		*outlen = b.len;
	*out = owl_buf_steal(&b);
	return 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path) != 0 && errno != ENOENT ? -1 : 0;
}

int owl_remove_tree(const char *path, owl_err *err)
{
	if (!owl_path_exists(path))
		return 0;
	if (nftw(path, remove_entry, 32, FTW_DEPTH | FTW_PHYS) != 0)
		return owl_err_set(err, OWL_EFAIL, "cannot remove '%s': %s", path, strerror(errno));
	return 0;
}

int64_t owl_disk_free(const char *path)
{
	struct statvfs sv;
	if (statvfs(path, &sv) != 0)
		return -1;
	return (int64_t)sv.f_bavail * (int64_t)sv.f_frsize;
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int owl_list_dir(const char *dir, char ***names, size_t *n, owl_err *err)
{
	*names = NULL;
	*n = 0;
	DIR *d = opendir(dir);
	if (!d)
		return owl_err_set(err, OWL_EFAIL, "cannot read folder '%s': %s", dir, strerror(errno));
	size_t cap = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		if (*n == cap) {
			cap = cap ? 2 * cap : 32;
			*names = owl_xrealloc(*names, cap * sizeof **names);
		}
		(*names)[(*n)++] = owl_xstrdup(de->d_name);
	}
	closedir(d);
	if (*n > 1)
		qsort(*names, *n, sizeof **names, cmp_names);
	return 0;
}

void owl_free_names(char **names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

int owl_read_json_object(const char *dir, const char *name, size_t max, void **out, owl_err *err)
{
	*out = NULL;
	char *path = owl_path_join(dir, name);
	char *text = NULL;
	int rc = owl_read_file(path, max, &text, NULL, err);
	free(path);
	if (rc)
		return rc;
	json_error_t je;
	json_t *c = json_loads(text, 0, &je);
	free(text);
	if (!json_is_object(c)) {
		json_decref(c);
		return owl_err_set(err, OWL_EFAIL, "%s is not a JSON object (line %d: %s)", name, je.line,
				   je.text);
	}
	*out = c;
	return 0;
}

void *owl_dlopen_lib(const char *env_name, const char *name, int global, char *why, size_t why_len)
{
	const char *env = getenv(env_name);
	char exe[PATH_MAX];
	char *beside = NULL;
	ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
	if (n > 0) {
		exe[n] = 0;
		char *slash = strrchr(exe, '/');
		if (slash) {
			*slash = 0;
			beside = owl_xasprintf("%s/%s", exe, name);
		}
	}
	const char *candidates[] = {env, beside, name};
	void *h = NULL;
	for (size_t i = 0; i < 3 && !h; i++) {
		if (!candidates[i] || !*candidates[i])
			continue;
		if (i < 2 && access(candidates[i], F_OK) != 0)
			continue;
		h = dlopen(candidates[i], RTLD_NOW | (global ? RTLD_GLOBAL : RTLD_LOCAL));
		if (!h && why_len)
			snprintf(why, why_len, "%s", dlerror());
	}
	free(beside);
	return h;
}
