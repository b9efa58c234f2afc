/* libFuzzer target: the safetensors header parser on arbitrary bytes. Every
 * input must end in a clean success or a clean error, never a crash, a leak
 * or an out-of-bounds read. */
#include <stddef.h>
#include <stdint.h>

#include "common/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	st_file *f = NULL;
	owl_err err = {0};
	if (st_parse(data, size, "fuzz.safetensors", &f, &err) == 0) {
		for (size_t i = 0; i < st_count(f); i++) {
			const st_tensor *t = st_tensor_at(f, i);
			volatile uint8_t sink = 0;
			if (t->nbytes)
				sink ^= ((const uint8_t *)t->data)[t->nbytes - 1];
			(void)sink;
		}
		st_metadata_get(f, "license");
	}
	st_close(f);
	return 0;
}
