/* GGUF v2/v3 reader: bounded metadata + tensor infos, dequantisation.
 * API published first; implementation in common/gguf.c follows. */
#ifndef OWL_GGUF_H
#define OWL_GGUF_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "common/common.h"

typedef enum gguf_type {
    GGUF_T_F32 = 0, GGUF_T_F16 = 1, GGUF_T_Q4_0 = 2, GGUF_T_Q4_1 = 3,
    GGUF_T_Q8_0 = 8, GGUF_T_Q4_K = 12, GGUF_T_Q6_K = 14, GGUF_T_BF16 = 30
} gguf_type;

typedef struct gguf_tensor {
    char *name;
    int n_dims;            /* <= 4 */
    uint64_t dims[4];      /* ggml order: dims[0] is the row length */
    gguf_type type;
    uint64_t offset;       /* relative to the data section */
    const void *data;
    size_t nbytes;
} gguf_tensor;

typedef struct gguf_file gguf_file; /* opaque */

int gguf_parse(const void *buf, size_t size, const char *label, gguf_file **out, owl_err *err);
int gguf_open(const char *path, gguf_file **out, owl_err *err);
void gguf_close(gguf_file *f); /* accepts NULL */
uint32_t gguf_version(const gguf_file *f);
size_t gguf_tensor_count(const gguf_file *f);
const gguf_tensor *gguf_tensor_at(const gguf_file *f, size_t i);
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name);

/* Metadata getters: return 0 and fill *out, or OWL_EFAIL (missing / wrong type). */
bool gguf_has_key(const gguf_file *f, const char *key);
int gguf_get_str(const gguf_file *f, const char *key, const char **out);
int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out);
int gguf_get_i32(const gguf_file *f, const char *key, int32_t *out);
int gguf_get_u64(const gguf_file *f, const char *key, uint64_t *out);
int gguf_get_f32(const gguf_file *f, const char *key, float *out);
int gguf_get_bool(const gguf_file *f, const char *key, bool *out);
/* Arrays: *out points into the parsed file; n is the element count. */
int gguf_get_str_array(const gguf_file *f, const char *key, const char *const **out, size_t *n);
int gguf_get_f32_array(const gguf_file *f, const char *key, const float **out, size_t *n);
int gguf_get_i32_array(const gguf_file *f, const char *key, const int32_t **out, size_t *n);

/* Type table. */
size_t gguf_type_block_size(gguf_type t);  /* elements per block; 0 if unknown */
size_t gguf_type_block_bytes(gguf_type t); /* bytes per block; 0 if unknown */
const char *gguf_type_name(gguf_type t);
/* Bytes for a row of n elements (n multiple of block size), 0 if invalid. */
size_t gguf_row_bytes(gguf_type t, uint64_t n);
int gguf_dequantize_row(gguf_type t, const void *src, float *dst, size_t n, owl_err *err);
/* IEEE half to float. */
float gguf_f16_to_f32(uint16_t h);
#endif
