/* safetensors reader: see safetensors.h. */
#include "common/safetensors.h"
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct st_file {
    st_tensor *t;
    size_t n;
    char **mkeys, **mvals;
    size_t nmeta;
    void *map;
    size_t map_size;
};

static const struct { const char *name; size_t size; } dtypes[] = {
    {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4},
    {"I16", 2}, {"I8", 1}, {"U8", 1}, {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1},
};

size_t st_dtype_size(st_dtype t) { return (size_t)t < 12 ? dtypes[t].size : 0; }
const char *st_dtype_name(st_dtype t) { return (size_t)t < 12 ? dtypes[t].name : "?"; }

static int by_begin(const void *a, const void *b)
{
    const st_tensor *x = a, *y = b;
    const char *px = x->data, *py = y->data;
    return px < py ? -1 : px > py;
}

int st_parse(const void *buf, size_t size, const char *label, st_file **out, owl_err *err)
{
    const unsigned char *p = buf;
    st_file *f = NULL;
    json_t *root = NULL;
    int rc = OWL_EFAIL;
    *out = NULL;
    if (size < 8)
        return owl_err_set(err, OWL_EINTEGRITY, "cannot accept '%s': file too short (%zu bytes)", label, size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | p[i];
    if (hlen > ST_MAX_HEADER || hlen > size - 8)
        return owl_err_set(err, OWL_EINTEGRITY, "cannot accept '%s': header length %llu exceeds the file or the 100 MB limit",
                           label, (unsigned long long)hlen);
    json_error_t je;
    root = json_loadb((const char *)p + 8, hlen, JSON_REJECT_DUPLICATES, &je);
    if (!root || !json_is_object(root)) {
        rc = owl_err_set(err, OWL_EINTEGRITY, "cannot accept '%s': header is not a JSON object: %s", label, root ? "" : je.text);
        goto cleanup;
    }
    const unsigned char *data = p + 8 + hlen;
    size_t dsize = size - 8 - hlen;
    f = owl_xcalloc(1, sizeof *f);
    size_t cap = json_object_size(root);
    f->t = owl_xcalloc(cap ? cap : 1, sizeof *f->t);
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "__metadata__")) {
            if (!json_is_object(v)) { rc = owl_err_set(err, OWL_EINTEGRITY, "cannot accept '%s': __metadata__ is not an object", label); goto cleanup; }
            size_t m = json_object_size(v), i = 0;
            f->mkeys = owl_xcalloc(m ? m : 1, sizeof(char *));
            f->mvals = owl_xcalloc(m ? m : 1, sizeof(char *));
            const char *mk; json_t *mv;
            json_object_foreach(v, mk, mv) {
                if (!json_is_string(mv)) { rc = owl_err_set(err, OWL_EINTEGRITY, "cannot accept '%s': __metadata__ value '%s' is not a string", label, mk); goto cleanup; }
                f->mkeys[i] = owl_xstrdup(mk); f->mvals[i] = owl_xstrdup(json_string_value(mv)); f->nmeta = ++i;
            }
            continue;
        }
        st_tensor *t = &f->t[f->n];
        t->name = owl_xstrdup(key);
        f->n++;
        json_t *dt = json_object_get(v, "dtype"), *sh = json_object_get(v, "shape"), *of = json_object_get(v, "data_offsets");
        if (!json_is_object(v) || !json_is_string(dt) || !json_is_array(sh) || !json_is_array(of) || json_array_size(of) != 2) {
            rc = owl_err_set(err, OWL_EINTEGRITY, "cannot accept '%s': tensor '%s' lacks dtype, shape or data_offsets", label, key); goto cleanup;
        }
        size_t d;
        for (d = 0; d < 12; d++) if (!strcmp(json_string_value(dt), dtypes[d].name)) break;
        if (d == 12) { rc = owl_err_set(err, OWL_EINTEGRITY, "cannot accept '%s': tensor '%s' has unknown dtype '%s'", label, key, json_string_value(dt)); goto cleanup; }
        t->dtype = (st_dtype)d;
        if (json_array_size(sh) > ST_MAX_DIMS) { rc = owl_err_set(err, OWL_EINTEGRITY, "cannot accept '%s': tensor '%s' has more than %d dims", label, key, ST_MAX_DIMS); goto cleanup; }
        t->n_dims = (int)json_array_size(sh);
        uint64_t count = 1;
        for (int k = 0; k < t->n_dims; k++) {
            json_t *e = json_array_get(sh, (size_t)k);
            if (!json_is_integer(e) || json_integer_value(e) < 0 ||
                (json_integer_value(e) && count > UINT64_MAX / (uint64_t)json_integer_value(e))) {
                rc = owl_err_set(err, OWL_EINTEGRITY, "cannot accept '%s': tensor '%s' has a bad shape", label, key); goto cleanup;
            }
            t->shape[k] = json_integer_value(e);
            count *= (uint64_t)t->shape[k];
        }
        json_t *b = json_array_get(of, 0), *e = json_array_get(of, 1);
        if (!json_is_integer(b) || !json_is_integer(e) || json_integer_value(b) < 0 || json_integer_value(e) < json_integer_value(b)) {
            rc = owl_err_set(err, OWL_EINTEGRITY, "cannot accept '%s': tensor '%s' has bad data_offsets", label, key); goto cleanup;
        }
        uint64_t ub = (uint64_t)json_integer_value(b), ue = (uint64_t)json_integer_value(e);
        if (ue > dsize) {
            rc = owl_err_set(err, OWL_EINTEGRITY, "cannot accept '%s': tensor '%s' offsets [%llu,%llu) run past the data (size %zu)",
                             label, key, (unsigned long long)ub, (unsigned long long)ue, dsize); goto cleanup;
        }
        if (count > UINT64_MAX / dtypes[d].size || count * dtypes[d].size != ue - ub) {
            rc = owl_err_set(err, OWL_EINTEGRITY, "cannot accept '%s': tensor '%s' shape does not match its %llu bytes",
                             label, key, (unsigned long long)(ue - ub)); goto cleanup;
        }
        t->data = data + ub;
        t->nbytes = (size_t)(ue - ub);
    }
    /* Tensors must tile the data region exactly: no holes, no overlap. */
    st_tensor *s = owl_xcalloc(f->n ? f->n : 1, sizeof *s);
    memcpy(s, f->t, f->n * sizeof *s);
    qsort(s, f->n, sizeof *s, by_begin);
    const unsigned char *pos = data;
    for (size_t i = 0; i < f->n; i++) {
        if ((const unsigned char *)s[i].data != pos) {
            rc = owl_err_set(err, OWL_EINTEGRITY, "cannot accept '%s': tensor '%s' %s the previous tensor", label, s[i].name,
                             (const unsigned char *)s[i].data < pos ? "overlaps" : "leaves a hole after");
            free(s); goto cleanup;
        }
        pos += s[i].nbytes;
    }
    free(s);
    if ((size_t)(pos - data) != dsize) {
        rc = owl_err_set(err, OWL_EINTEGRITY, "cannot accept '%s': %zu trailing bytes after the last tensor", label, dsize - (size_t)(pos - data));
        goto cleanup;
    }
    *out = f; f = NULL; rc = OWL_OK;
cleanup:
    json_decref(root);
    st_close(f);
    return rc;
}

int st_open(const char *path, st_file **out, owl_err *err)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return owl_err_set(err, OWL_EFAIL, "cannot open '%s': %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || sb.st_size <= 0) { close(fd); return owl_err_set(err, OWL_EINTEGRITY, "cannot accept '%s': empty or unreadable", path); }
    void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return owl_err_set(err, OWL_EFAIL, "cannot map '%s': %s", path, strerror(errno));
    const char *base = strrchr(path, '/');
    int rc = st_parse(m, (size_t)sb.st_size, base ? base + 1 : path, out, err);
    if (rc) { munmap(m, (size_t)sb.st_size); return rc; }
    (*out)->map = m; (*out)->map_size = (size_t)sb.st_size;
    return OWL_OK;
}

void st_close(st_file *f)
{
    if (!f) return;
    for (size_t i = 0; i < f->n; i++) free(f->t[i].name);
    for (size_t i = 0; i < f->nmeta; i++) { free(f->mkeys[i]); free(f->mvals[i]); }
    free(f->t); free(f->mkeys); free(f->mvals);
    if (f->map) munmap(f->map, f->map_size);
    free(f);
}

size_t st_count(const st_file *f) { return f->n; }
const st_tensor *st_tensor_at(const st_file *f, size_t i) { return i < f->n ? &f->t[i] : NULL; }
const st_tensor *st_find(const st_file *f, const char *name)
{
    for (size_t i = 0; i < f->n; i++) if (!strcmp(f->t[i].name, name)) return &f->t[i];
    return NULL;
}
const char *st_metadata_get(const st_file *f, const char *key)
{
    for (size_t i = 0; i < f->nmeta; i++) if (!strcmp(f->mkeys[i], key)) return f->mvals[i];
    return NULL;
}
size_t st_metadata_count(const st_file *f) { return f->nmeta; }
const char *st_metadata_key_at(const st_file *f, size_t i) { return i < f->nmeta ? f->mkeys[i] : NULL; }

int st_validate_file(const char *path, owl_err *err)
{
    st_file *f = NULL;
    int rc = st_open(path, &f, err);
    st_close(f);
    return rc;
}

struct st_index {
    char **names, **files;  /* weight_map pairs */
    size_t n;
    char **uniq;            /* distinct shard file names */
    size_t nuniq;
};

int st_index_load(const char *path, st_index **out, owl_err *err)
{
    json_error_t je;
    st_index *ix = NULL;
    int rc = OWL_EFAIL;
    *out = NULL;
    /* An index names each tensor once: 64 MiB covers models with millions
     * of tensors, and bounds what a hostile file can make us parse. */
    char *text = NULL;
    size_t len = 0;
    if (owl_read_file(path, 64u << 20, &text, &len, err) != 0)
        return err ? err->code : OWL_EFAIL;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    free(text);
    json_t *wm = root ? json_object_get(root, "weight_map") : NULL;
    if (!json_is_object(wm)) {
        rc = owl_err_set(err, OWL_EINTEGRITY, "cannot read '%s': no weight_map object%s%s", path, root ? "" : ": ", root ? "" : je.text);
        goto cleanup;
    }
    ix = owl_xcalloc(1, sizeof *ix);
    size_t m = json_object_size(wm);
    ix->names = owl_xcalloc(m ? m : 1, sizeof(char *));
    ix->files = owl_xcalloc(m ? m : 1, sizeof(char *));
    ix->uniq = owl_xcalloc(m ? m : 1, sizeof(char *));
    const char *k; json_t *v;
    json_object_foreach(wm, k, v) {
        const char *file = json_string_value(v);
        if (!file || !*file || strchr(file, '/') || !strcmp(file, "..")) {
            rc = owl_err_set(err, OWL_EINTEGRITY, "cannot read '%s': tensor '%s' maps to a bad file name", path, k);
            goto cleanup;
        }
        ix->names[ix->n] = owl_xstrdup(k);
        ix->files[ix->n] = owl_xstrdup(file);
        ix->n++;
        size_t u;
        for (u = 0; u < ix->nuniq; u++) if (!strcmp(ix->uniq[u], file)) break;
        if (u == ix->nuniq) ix->uniq[ix->nuniq++] = owl_xstrdup(file);
    }
    *out = ix; ix = NULL; rc = OWL_OK;
cleanup:
    json_decref(root);
    st_index_free(ix);
    return rc;
}

const char *st_index_file_for(const st_index *ix, const char *name)
{
    for (size_t i = 0; i < ix->n; i++) if (!strcmp(ix->names[i], name)) return ix->files[i];
    return NULL;
}
size_t st_index_file_count(const st_index *ix) { return ix->nuniq; }
const char *st_index_file_at(const st_index *ix, size_t i) { return i < ix->nuniq ? ix->uniq[i] : NULL; }

void st_index_free(st_index *ix)
{
    if (!ix) return;
    for (size_t i = 0; i < ix->n; i++) { free(ix->names[i]); free(ix->files[i]); }
    for (size_t i = 0; i < ix->nuniq; i++) free(ix->uniq[i]);
    free(ix->names); free(ix->files); free(ix->uniq); free(ix);
}

/* ---- writer ------------------------------------------------------------ */

int st_write_file(const char *path, const st_write_tensor *t, size_t n, const char *const *meta,
                  size_t nmeta, owl_err *err)
{
    int rc = 0;
    char *hdr = NULL, *tmp = NULL;
    FILE *f = NULL;
    json_t *root = json_object();
    if (nmeta) {
        json_t *m = json_object();
        for (size_t i = 0; i < nmeta; i++)
            json_object_set_new(m, meta[2 * i], json_string(meta[2 * i + 1]));
        json_object_set_new(root, "__metadata__", m);
    }
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        size_t esz = st_dtype_size(t[i].dtype);
        uint64_t numel = 1;
        json_t *shape = json_array();
        if (t[i].n_dims < 0 || t[i].n_dims > ST_MAX_DIMS) {
            json_decref(shape);
            rc = owl_err_set(err, OWL_EFAIL, "cannot write '%s': tensor '%s' has %d dimensions",
                             path, t[i].name, t[i].n_dims);
            goto cleanup;
        }
        for (int d = 0; d < t[i].n_dims; d++) {
            numel *= (uint64_t)t[i].shape[d];
            json_array_append_new(shape, json_integer(t[i].shape[d]));
        }
        if (!esz || numel * esz != t[i].nbytes || json_object_get(root, t[i].name)) {
            json_decref(shape);
            rc = owl_err_set(err, OWL_EFAIL, "cannot write '%s': tensor '%s' %s", path, t[i].name,
                             json_object_get(root, t[i].name) ? "is named twice"
                                                              : "has a size that does not match its shape");
            goto cleanup;
        }
        json_object_set_new(root, t[i].name,
                            json_pack("{s:s, s:o, s:[I, I]}", "dtype", st_dtype_name(t[i].dtype),
                                      "shape", shape, "data_offsets", (json_int_t)off,
                                      (json_int_t)(off + t[i].nbytes)));
        off += t[i].nbytes;
    }
    /* Keys in the order given: the reader does not care, people reading
     * the header do. */
    hdr = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    size_t hlen = strlen(hdr), padded = (hlen + 7) / 8 * 8;
    tmp = owl_xasprintf("%s.tmp", path);
    f = fopen(tmp, "wb");
    if (!f) {
        rc = owl_err_set(err, OWL_EFAIL, "cannot write '%s': %s", tmp, strerror(errno));
        goto cleanup;
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(hdr, 1, hlen, f) == hlen;
    for (size_t i = hlen; ok && i < padded; i++)
        ok = fputc(' ', f) != EOF;
    for (size_t i = 0; ok && i < n; i++)
        ok = fwrite(t[i].data, 1, t[i].nbytes, f) == t[i].nbytes;
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    if (fclose(f) != 0)
        ok = 0;
    f = NULL;
    if (!ok || rename(tmp, path) != 0) {
        rc = owl_err_set(err, OWL_EFAIL, "cannot write '%s': %s", path, strerror(errno));
        unlink(tmp);
        goto cleanup;
    }
    char *dir = owl_xstrdup(path), *slash = strrchr(dir, '/');
    if (slash)
        *slash = 0;
    rc = owl_fsync_dir(!slash ? "." : *dir ? dir : "/", err);
    free(dir);
cleanup:
    if (f) {
        fclose(f);
        unlink(tmp);
    }
    free(tmp);
    free(hdr);
    json_decref(root);
    return rc;
}
