/* safetensors reader: bounded header parse, validation, mmap'd tensor data.
 * API published first; implementation in common/safetensors.c follows. */
#ifndef OWL_SAFETENSORS_H
#define OWL_SAFETENSORS_H
#include <stddef.h>
#include <stdint.h>
#include "common/common.h"

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER (100u * 1024u * 1024u)

typedef enum st_dtype {
    ST_F64, ST_F32, ST_F16, ST_BF16, ST_I64, ST_I32, ST_I16, ST_I8, ST_U8, ST_BOOL,
    ST_F8_E4M3, ST_F8_E5M2 /* known but unsupported for compute */
} st_dtype;

typedef struct st_tensor {
    char *name;
    st_dtype dtype;
    int n_dims;
    int64_t shape[ST_MAX_DIMS];
    const void *data;   /* points into the mapping/buffer */
    size_t nbytes;
} st_tensor;

typedef struct st_file st_file; /* opaque */

/* Parse a buffer of `size` bytes (not copied; must outlive the result). */
int st_parse(const void *buf, size_t size, const char *label, st_file **out, owl_err *err);
/* mmap and parse a file; st_close unmaps. */
int st_open(const char *path, st_file **out, owl_err *err);
void st_close(st_file *f); /* accepts NULL */
size_t st_count(const st_file *f);
const st_tensor *st_tensor_at(const st_file *f, size_t i);
const st_tensor *st_find(const st_file *f, const char *name);
/* __metadata__ value for key, or NULL. */
const char *st_metadata_get(const st_file *f, const char *key);
size_t st_metadata_count(const st_file *f);
const char *st_metadata_key_at(const st_file *f, size_t i);
/* Validate a file without keeping it; error like
 * "cannot accept 'model.safetensors': tensor 'x' offsets [a,b) run past the data (size n)". */
int st_validate_file(const char *path, owl_err *err);
size_t st_dtype_size(st_dtype t);
const char *st_dtype_name(st_dtype t);

/* The writer: one tensor to write. data holds nbytes in dtype's
 * little-endian layout (nbytes must equal the shape's element count times
 * the dtype's size). */
typedef struct st_write_tensor {
    const char *name;
    st_dtype dtype;
    int n_dims;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
    size_t nbytes;
} st_write_tensor;

/* Writes a safetensors file: header (the tensors in the order given, each
 * name once, __metadata__ from the nmeta key/value pairs meta[2i],
 * meta[2i+1]) padded with spaces to 8 bytes, then the data. Written to
 * PATH.tmp, fsync'd and renamed, so that PATH is either absent, the old
 * file or the whole new one. */
int st_write_file(const char *path, const st_write_tensor *t, size_t n, const char *const *meta,
                  size_t nmeta, owl_err *err);

/* Sharded checkpoints: model.safetensors.index.json weight_map. */
typedef struct st_index st_index;
int st_index_load(const char *path, st_index **out, owl_err *err);
/* File name holding tensor `name`, or NULL. */
const char *st_index_file_for(const st_index *ix, const char *name);
size_t st_index_file_count(const st_index *ix);
const char *st_index_file_at(const st_index *ix, size_t i);
void st_index_free(st_index *ix);
#endif
