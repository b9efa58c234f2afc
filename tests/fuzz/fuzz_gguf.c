/* libFuzzer target: the GGUF reader (header, metadata, tensor infos) and the
 * dequantisation of whatever tensors it accepted. */
#include <stdint.h>
#include <stdlib.h>

#include "common/gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	gguf_file *f = NULL;
	owl_err err = {0};
	if (gguf_parse(data, size, "fuzz.gguf", &f, &err) == 0) {
		const char *s;
		gguf_get_str(f, "general.architecture", &s);
		const char *const *toks;
		size_t n;
		gguf_get_str_array(f, "tokenizer.ggml.tokens", &toks, &n);
		for (size_t i = 0; i < gguf_tensor_count(f) && i < 8; i++) {
			const gguf_tensor *t = gguf_tensor_at(f, i);
			float *row = malloc(t->dims[0] * sizeof *row);
			if (row)
				gguf_dequantize_row(t->type, t->data, row, t->dims[0], &err);
			free(row);
		}
	}
	gguf_close(f);
	return 0;
}
