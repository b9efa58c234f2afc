/* Admitting a staged checkpoint into the store, the flow every source shares
 * (owl pull, bundle import, and any long-running caller): the checks the
 * engine makes when it loads a model, license detection, the policy, and the
 * commit. The gate's "allow" decision and its audit row are written inside
 * the commit's own transaction (a SAVEPOINT), so a decision and the version
 * it allowed commit together: an import that fails after its gate leaves no
 * "allow" for something that never happened. A denial is recorded on its
 * own, since nothing else is written. */
#define _GNU_SOURCE
#include "licenses.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/gguf.h"
#include "common/modelcfg.h"

/* ---- the checks `owl run` makes, made before registering ------------------- */

static int check_config_file(const char *full, owl_err *err)
{
	char *text = NULL;
	int rc = owl_read_file(full, 4u << 20, &text, NULL, err);
	if (rc)
		return rc;
	json_t *c = json_loads(text, 0, NULL);
	free(text);
	owl_model_config mc;
	rc = owl_model_config_from_json(c, &mc, err);
	json_decref(c);
	return rc;
}

static int check_tokenizer_file(const char *full, owl_err *err)
{
	char *text = NULL;
	size_t len = 0;
	int rc = owl_read_file(full, 64u << 20, &text, &len, err);
	if (rc)
		return rc;
	rc = owl_tokenizer_json_check(text, len, err);
	free(text);
	return rc;
}

static int check_gguf_file(const char *full, owl_err *err)
{
	gguf_file *g = NULL;
	int rc = gguf_open(full, &g, err);
	owl_model_config mc;
	if (!rc)
		rc = owl_model_config_from_gguf(g, &mc, err);
	gguf_close(g);
	return rc;
}

int license_check_model_files(const registry_stage *st, owl_err *err)
{
	for (size_t i = 0; i < st->nfiles; i++) {
		const char *p = st->files[i].path;
		size_t n = strlen(p);
		int (*check)(const char *, owl_err *) =
			strcmp(p, "config.json") == 0	  ? check_config_file
			: strcmp(p, "tokenizer.json") == 0 ? check_tokenizer_file
			: n > 5 && strcasecmp(p + n - 5, ".gguf") == 0 ? check_gguf_file
								       : NULL;
		if (!check)
			continue;
		char *full = owl_path_join(st->files_dir, p);
		int rc = check(full, err);
		free(full);
		if (rc) {
			owl_err_wrap(err, "cannot accept '%s'", p);
			return rc;
		}
	}
	return 0;
}

/* ---- the gate inside the commit ---------------------------------------------- */

typedef struct admit_ctx {
	license_request rq;
	const license_findings *lf;
	int denied_inside; /* the policy changed between the check and the commit */
} admit_ctx;

/* Runs inside registry_stage_commit's transaction, the version's rows just
 * inserted: its findings, then the decision about it (a SAVEPOINT). */
static int admit_hook(void *ctx, registry_store *s, int64_t version_id, owl_err *err)
{
	admit_ctx *a = ctx;
	int rc = license_findings_store(s, version_id, a->lf, err);
	if (rc)
		return rc;
	a->rq.version_id = version_id;
	license_decision d;
	rc = license_gate(s, &a->rq, &d, err);
	a->denied_inside = rc == OWL_EDENIED;
	return rc;
}

int license_admit_stage(registry_store *s, registry_stage *st, const char *model,
			int64_t parent_version_id, const char *tag, license_admit_result *out,
			owl_err *err)
{
	memset(out, 0, sizeof *out);
	int rc = license_check_model_files(st, err);
	license_findings *lf = NULL;
	if (!rc)
		rc = license_detect_dir(s, st->files_dir, &lf, err);
	if (rc)
		return rc;
	admit_ctx a = {.lf = lf,
		       .rq = {.model = model, .findings = lf, .action = "import",
			      .parent_version_id = parent_version_id,
			      .derived = parent_version_id || (st->format && strcmp(st->format, "adapter") == 0)}};
	/* Asked first without writing: a denial stores nothing, and is recorded
	 * in its own transaction. */
	license_decision d;
	rc = license_evaluate(s, &a.rq, &d, err);
	if (!rc && !d.allowed)
		rc = license_gate(s, &a.rq, &d, err);
	if (!rc)
		rc = registry_stage_commit(s, st, model, parent_version_id, tag, admit_hook, &a,
					   &out->commit, err);
	if (rc && a.denied_inside) {
		/* The rollback took the decision with it: record it again, alone. */
		owl_err again = {0};
		a.rq.version_id = 0;
		license_gate(s, &a.rq, &d, &again);
	}
	if (rc == OWL_EDENIED && err) {
		size_t l = strlen(err->msg);
		snprintf(err->msg + l, sizeof err->msg - l, " Nothing was stored.");
	}
	if (rc) {
		license_findings_free(lf);
		return rc;
	}
	out->findings = lf;
	/* An adapter states no license of its own: it is under its base's. */
	license_status ls;
	if (parent_version_id && license_status_for(s, out->commit.version_id, NULL, 0, &ls, NULL) == 0)
		snprintf(out->license, sizeof out->license, "%s (%s, from its base)", ls.license_id,
			 ls.status);
	else
		snprintf(out->license, sizeof out->license, "%s", license_findings_summary(lf));
	return 0;
}

void license_admit_result_release(license_admit_result *r)
{
	if (!r)
		return;
	license_findings_free(r->findings);
	r->findings = NULL;
}
