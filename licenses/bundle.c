/* Bundles under the policy: export asks the gate (action "export") and
 * writes the license and its obligations into the manifest, so that they
 * travel with the files; import reads and verifies the bundle and admits it
 * as every other checkpoint is admitted (license_admit_stage). */
#include "licenses.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

int license_export_bundle(registry_store *s, const registry_version *v, const char *file,
			  const char *sign_key, owl_err *err)
{
	license_request rq = {.model = v->model, .version_id = v->id, .action = "export"};
	license_decision d;
	int rc = license_gate(s, &rq, &d, err);
	if (rc)
		return rc;
	char *extra = NULL;
	license_facts facts;
	if (license_catalog_get(s, d.license_id, &facts, NULL) == 0) {
		json_t *l = json_pack("{s:s, s:s, s:s, s:b, s:s, s:s}", "id", facts.id, "name",
				      facts.name, "status", d.license_status, "flow_down",
				      facts.flow_down, "attribution", facts.attribution, "link",
				      facts.link);
		json_t *wrap = json_pack("{s:o}", "license", l);
		extra = json_dumps(wrap, JSON_COMPACT);
		json_decref(wrap);
	}
	rc = registry_export(s, v, file, extra, sign_key, err);
	free(extra);
	return rc;
}

void license_import_result_release(license_import_result *r)
{
	if (!r)
		return;
	license_admit_result_release(&r->admit);
	free(r->model);
	memset(r, 0, sizeof *r);
}

int license_import_bundle(registry_store *s, const char *file, const char *trust_key,
			  const char *name, const char *tag, license_import_result *out,
			  owl_err *err)
{
	memset(out, 0, sizeof *out);
	registry_stage *st = NULL;
	char *manifest = NULL;
	int rc = registry_import_stage(s, file, trust_key, &st, &manifest, &out->trust, err);
	if (!rc) {
		out->model = owl_xstrdup(name ? name : st->default_name);
		out->nfiles = st->nfiles;
		rc = license_admit_stage(s, st, out->model, 0, tag, &out->admit, err);
	}
	free(manifest);
	registry_stage_free(st);
	if (rc)
		license_import_result_release(out);
	return rc;
}
