/* libFuzzer target: the tokenizer.json parser, then tokenizing a short text
 * with whatever it accepted. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1);
	memcpy(text, data, size);
	text[size] = 0;
	engine_tokenizer *t = NULL;
	owl_err err = {0};
	if (engine_tokenizer_fuzz_load(text, &t, &err) == 0) {
		int32_t *ids = NULL;
		size_t n = 0;
		engine_tokenize(t, "Hello wörld 12 🦉", 19, 1, 1, &ids, &n, &err);
		char *back = engine_detokenize(t, ids, n);
		free(back);
		free(ids);
	}
	engine_tokenizer_free(t);
	free(text);
	return 0;
}
