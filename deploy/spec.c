/* deploy_spec: what one revision of a deployment serves. */
#include <stdlib.h>

#include "deploy/server.h"

void deploy_spec_free(deploy_spec *s)
{
	if (!s)
		return;
	free(s->deployment);
	free(s->model_ref);
	free(s->model_digest);
	free(s->model_dir);
	for (size_t i = 0; i < s->nadapters; i++) {
		free(s->adapters[i].name);
		free(s->adapters[i].dir);
		free(s->adapters[i].ref);
	}
	free(s->adapters);
	free(s);
}
