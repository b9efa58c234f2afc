/* Dequantises raw GGUF blocks with owl's reader and prints the values as a
 * JSON array, for comparison with the gguf package's dequantisation.
 * Usage: owl-dequant TYPE FILE   (TYPE: F16 BF16 Q8_0 Q4_0 Q4_1 Q4_K Q6_K) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/gguf.h"

int main(int argc, char **argv)
{
	static const struct { const char *name; gguf_type t; } types[] = {
		{"F16", GGUF_T_F16}, {"BF16", GGUF_T_BF16}, {"Q8_0", GGUF_T_Q8_0}, {"Q4_0", GGUF_T_Q4_0},
		{"Q4_1", GGUF_T_Q4_1}, {"Q4_K", GGUF_T_Q4_K}, {"Q6_K", GGUF_T_Q6_K},
	};
	if (argc != 3) {
		fprintf(stderr, "usage: owl-dequant TYPE FILE\n");
		return 2;
	}
	int k = -1;
	for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
		if (!strcmp(argv[1], types[i].name))
			k = (int)i;
	owl_err err = {0};
	char *raw = NULL;
	size_t len = 0;
	if (k < 0 || owl_read_file(argv[2], 64u << 20, &raw, &len, &err)) {
		fprintf(stderr, "owl-dequant: %s\n", k < 0 ? "unknown type" : err.msg);
		return 2;
	}
	gguf_type t = types[k].t;
	size_t n = len / gguf_type_block_bytes(t) * gguf_type_block_size(t);
	float *out = malloc((n ? n : 1) * sizeof *out);
	if (gguf_dequantize_row(t, raw, out, n, &err)) {
		fprintf(stderr, "owl-dequant: %s\n", err.msg);
		return 1;
	}
	printf("[");
	for (size_t i = 0; i < n; i++)
		printf("%s%.9g", i ? "," : "", out[i]);
	printf("]\n");
	free(out);
	free(raw);
	return 0;
}
