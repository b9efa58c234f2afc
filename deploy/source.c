/* The source the server reads: the current revision (following a moved tag
 * first) and a revision's spec, its versions materialised as folders. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

int deploy_spec_load(registry_store *s, const char *deployment, int64_t revision,
		     deploy_spec **out, owl_err *err)
{
	*out = NULL;
	deploy_revision r;
	int rc = deploy_revision_get(s, deployment, revision, &r, err);
	if (rc)
		return rc;
	deploy_spec *sp = owl_xcalloc(1, sizeof *sp);
	sp->deployment = owl_xstrdup(deployment);
	sp->revision = r.revision;
	sp->model_ref = owl_xstrdup(r.model_ref);
	sp->model_digest = owl_xstrdup(r.model_digest);
	sp->tp = r.tp;
	sp->ctx = r.ctx;
	registry_version v;
	rc = registry_version_by_id(s, r.model_version_id, &v, err);
	if (!rc) {
		rc = registry_version_materialize(s, &v, &sp->model_dir, err);
		registry_version_release(&v);
	}
	if (!rc && r.nadapters)
		sp->adapters = owl_xcalloc(r.nadapters, sizeof *sp->adapters);
	for (size_t i = 0; !rc && i < r.nadapters; i++) {
		deploy_adapter_spec *a = &sp->adapters[sp->nadapters++];
		a->name = owl_xstrdup(r.adapters[i].ref);
		a->ref = owl_xasprintf("%s sha256:%s", r.adapters[i].ref, r.adapters[i].digest);
		rc = registry_version_by_id(s, r.adapters[i].version_id, &v, err);
		if (!rc) {
			rc = registry_version_materialize(s, &v, &a->dir, err);
			registry_version_release(&v);
		}
	}
	deploy_revision_release(&r);
	if (rc) {
		owl_err_wrap(err, "cannot load revision %lld of deployment '%s'", (long long)revision,
			     deployment);
		deploy_spec_free(sp);
		return rc;
	}
	*out = sp;
	return 0;
}

typedef struct source {
	registry_store *s;
	char *name;
	char last_warning[1024]; /* a follow failure is logged when it changes */
} source;

static int source_current(void *ctx, int64_t *revision, owl_err *err)
{
	source *src = ctx;
	owl_err fe = {0};
	/* A tag move that cannot be made (refused, adapters that do not fit)
	 * keeps the current revision serving; it is said once. */
	if (deploy_follow(src->s, src->name, NULL, NULL, &fe) != 0) {
		if (strcmp(fe.msg, src->last_warning) != 0) {
			owl_log(0, "warning: deployment '%s' did not follow its tag: %s", src->name,
				fe.msg);
			snprintf(src->last_warning, sizeof src->last_warning, "%s", fe.msg);
		}
	} else {
		src->last_warning[0] = 0;
	}
	deploy_info d;
	int rc = deploy_get(src->s, src->name, &d, err);
	if (rc)
		return rc;
	*revision = d.current;
	deploy_info_release(&d);
	return 0;
}

static int source_load(void *ctx, int64_t revision, deploy_spec **out, owl_err *err)
{
	source *src = ctx;
	return deploy_spec_load(src->s, src->name, revision, out, err);
}

int deploy_source_new(const char *home, const char *deployment, deploy_source *out,
		      owl_err *err)
{
	memset(out, 0, sizeof *out);
	source *src = owl_xcalloc(1, sizeof *src);
	int rc = deploy_open_for_server(home, "serve", &src->s, err);
	if (!rc) {
		/* Fails early, with the message that names what exists. */
		deploy_info d;
		rc = deploy_get(src->s, deployment, &d, err);
		deploy_info_release(&d);
	}
	if (rc) {
		registry_store_close(src->s);
		free(src);
		return rc;
	}
	src->name = owl_xstrdup(deployment);
	out->ctx = src;
	out->current = source_current;
	out->load = source_load;
	return 0;
}

void deploy_source_free(deploy_source *ds)
{
	if (!ds || !ds->ctx)
		return;
	source *src = ds->ctx;
	registry_store_close(src->s);
	free(src->name);
	free(src);
	memset(ds, 0, sizeof *ds);
}
