/* Opening the store for a command, through deploy_home_open: the registry's
 * schema and every other module's, so that each verb sees one fully
 * migrated database. */
#include "cmd.h"
#include "deploy/deploy.h"

#include <string.h>

static void say_waiting(void *c, const char *what, int pid, double waited)
{
	owl_ctx *ctx = c;
	if (ctx->quiet)
		return;
	if (pid)
		fprintf(stderr, "owl: waiting for another owl (pid %d) holding the lock on '%s' "
			"(%.0f s so far)\n", pid, what, waited);
	else
		fprintf(stderr, "owl: waiting for another owl holding the lock on '%s' (%.0f s so far)\n",
			what, waited);
}

int cmd_open_store(owl_ctx *ctx, registry_store **out, owl_err *err)
{
	registry_open_opts o = {.read_only_ok = ctx->read_only_ok, .verb = ctx->verb,
				.recover = ctx->verb && strcmp(ctx->verb, "recover") == 0,
				.wait_fn = say_waiting, .wait_ctx = ctx};
	return deploy_home_open(ctx->home, &o, out, err);
}

void cmd_progress_init(owl_ctx *ctx, owl_progress *p)
{
	owl_progress_init(p, ctx->quiet || ctx->json);
}
