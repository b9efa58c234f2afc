/* libFuzzer target: the model card front matter parser and the license text
 * recogniser, both fed text from checkpoints owl did not write. */
#include <stddef.h>
#include <stdint.h>

#include "licenses/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	license_card c;
	license_parse_card((const char *)data, size, &c);
	char id[64];
	double score;
	int near;
	license_recognise_text((const char *)data, size, id, sizeof id, &score, &near);
	return 0;
}
