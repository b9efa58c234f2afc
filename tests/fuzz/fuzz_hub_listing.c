/* libFuzzer target: the hub's tree listing parser (an answer from the
 * network, so untrusted). */
#include <stddef.h>
#include <stdint.h>

#include "registry/registry.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	registry_hub_listing l = {0};
	owl_err err = {0};
	registry_hub_parse_listing((const char *)data, size, &l, &err);
	registry_hub_listing_release(&l);
	return 0;
}
