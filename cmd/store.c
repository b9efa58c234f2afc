/* Opening the store for a command: the registry's schema and every other
 * module's, so that each verb sees one fully migrated database. */
#include "cmd.h"
#include "licenses/licenses.h"

int cmd_open_store(owl_ctx *ctx, registry_store **out, owl_err *err)
{
	registry_store *s = NULL;
	int rc = registry_store_open(ctx->home, &s, err);
	if (!rc)
		rc = licenses_migrate(s, err);
	if (rc) {
		registry_store_close(s);
		return rc;
	}
	*out = s;
	return 0;
}

void cmd_progress_init(owl_ctx *ctx, owl_progress *p)
{
	owl_progress_init(p, ctx->quiet || ctx->json);
}
