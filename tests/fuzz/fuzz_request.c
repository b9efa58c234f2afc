/* libFuzzer target: request bodies of /v1/completions and
 * /v1/chat/completions (deploy/api.c), straight from the network. The first
 * byte picks the endpoint; every parsed request must be freed cleanly and
 * every refusal must render as OpenAI's error shape. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "deploy/api.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	api_kind kind = data[0] & 1 ? API_CHAT : API_COMPLETIONS;
	api_request r;
	api_error e = {0};
	if (api_parse_request(kind, (const char *)data + 1, size - 1, &r, &e) == 0) {
		if (r.nstop > API_MAX_STOP || r.top_logprobs > API_MAX_TOP_LOGPROBS || !r.model)
			abort();
		api_request_free(&r);
	} else {
		char *s = api_error_json(&e);
		if (!s || !strstr(s, "\"error\"") || e.status < 400)
			abort();
		free(s);
	}
	return 0;
}
