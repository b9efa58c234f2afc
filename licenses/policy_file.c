/* Policy files: the JSON document `owl policy export` writes and `owl
 * policy import` reads ({"owl_policy": 1, "rules": [...], "org": {...}}),
 * parsed and checked whole before anything is stored, and applied in one
 * transaction. */
#include "licenses.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static json_t *rule_json(const license_rule *r)
{
	return json_pack("{s:s, s:s, s:i, s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "name", r->name,
			 "effect", license_effect_name(r->effect), "priority", r->priority,
			 "license", r->license, "category", r->category, "action", r->action,
			 "use", r->use, "model", r->model, "when", r->when, "message", r->message);
}

static const char *json_type_name(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT: return "an object";
	case JSON_ARRAY: return "an array";
	case JSON_STRING: return "a string";
	case JSON_INTEGER: return "an integer";
	case JSON_REAL: return "a real number";
	case JSON_TRUE:
	case JSON_FALSE: return "a boolean";
	default: return "null";
	}
}

/* One rule of a policy file, every field type-checked: a wrong type is never
 * read as 0 or "" (a "priority": "high" once became priority 0). n is the
 * rule's position in the file (from 1), for messages. */
static int rule_from_json(json_t *o, size_t n, license_rule *r, owl_err *err)
{
	memset(r, 0, sizeof *r);
	if (!json_is_object(o))
		return owl_err_set(err, OWL_EUSAGE, "rule %zu is %s, expected an object", n,
				   json_type_name(o));
	const char *name = json_string_value(json_object_get(o, "name"));
	char who[96];
	snprintf(who, sizeof who, name ? "rule %zu ('%.60s')" : "rule %zu", n, name);
	struct { const char *k; char *dst; size_t n; } f[] = {
		{"name", r->name, sizeof r->name}, {"license", r->license, sizeof r->license},
		{"category", r->category, sizeof r->category}, {"action", r->action, sizeof r->action},
		{"use", r->use, sizeof r->use}, {"model", r->model, sizeof r->model},
		{"when", r->when, sizeof r->when}, {"message", r->message, sizeof r->message},
	};
	const size_t nf = sizeof f / sizeof f[0];
	const char *k;
	json_t *v;
	json_object_foreach(o, k, v) {
		int known = strcmp(k, "effect") == 0 || strcmp(k, "priority") == 0;
		for (size_t i = 0; !known && i < nf; i++)
			known = strcmp(k, f[i].k) == 0;
		if (!known)
			return owl_err_set(err, OWL_EUSAGE, "%s: unknown field '%s' (name, effect, "
					   "priority, license, category, action, use, model, when, "
					   "message)", who, k);
	}
	for (size_t i = 0; i < nf; i++) {
		v = json_object_get(o, f[i].k);
		if (!v) {
			if (i == 0)
				return owl_err_set(err, OWL_EUSAGE, "%s: field 'name' is missing", who);
			continue;
		}
		if (!json_is_string(v))
			return owl_err_set(err, OWL_EUSAGE, "%s: field '%s' is %s, expected a string",
					   who, f[i].k, json_type_name(v));
		if (json_string_length(v) >= f[i].n)
			return owl_err_set(err, OWL_EUSAGE, "%s: field '%s' is %zu bytes long, at most "
					   "%zu", who, f[i].k, json_string_length(v), f[i].n - 1);
		snprintf(f[i].dst, f[i].n, "%s", json_string_value(v));
	}
	v = json_object_get(o, "effect");
	const char *effect = json_string_value(v);
	if (!v)
		return owl_err_set(err, OWL_EUSAGE, "%s: field 'effect' is missing", who);
	if (!effect)
		return owl_err_set(err, OWL_EUSAGE, "%s: field 'effect' is %s, expected a string "
				   "(allow, deny or require_approval)", who, json_type_name(v));
	if (strcmp(effect, "deny") == 0)
		r->effect = LICENSE_DENY;
	else if (strcmp(effect, "require_approval") == 0)
		r->effect = LICENSE_REQUIRE_APPROVAL;
	else if (strcmp(effect, "allow") == 0)
		r->effect = LICENSE_ALLOW;
	else
		return owl_err_set(err, OWL_EUSAGE, "%s: field 'effect' is '%s', expected allow, deny "
				   "or require_approval", who, effect);
	v = json_object_get(o, "priority");
	if (v && !json_is_integer(v))
		return owl_err_set(err, OWL_EUSAGE, "%s: field 'priority' is %s, expected an integer",
				   who, json_type_name(v));
	if (v && (json_integer_value(v) < -1000000 || json_integer_value(v) > 1000000))
		return owl_err_set(err, OWL_EUSAGE, "%s: field 'priority' is %lld, expected an integer "
				   "from -1000000 to 1000000", who, (long long)json_integer_value(v));
	r->priority = v ? (int)json_integer_value(v) : 0;
	return 0;
}


void license_policy_free(license_policy *p)
{
	if (!p)
		return;
	free(p->rules);
	license_org_attrs_free(p->org, p->norg);
	free(p);
}

int license_policy_parse(const char *text, size_t len, const char *label, license_policy **out,
			 owl_err *err)
{
	*out = NULL;
	json_error_t je;
	json_t *doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
	if (!doc)
		return owl_err_set(err, OWL_EUSAGE, "'%s' is not valid JSON (line %d: %s)", label,
				   je.line, je.text);
	json_t *rules = json_object_get(doc, "rules");
	json_t *org = json_object_get(doc, "org");
	if (!json_is_array(rules)) {
		json_decref(doc);
		return owl_err_set(err, OWL_EUSAGE, "'%s' is not a policy file (expected {\"rules\": "
				   "[...]})", label);
	}
	/* Every rule and attribute is checked before anything is returned, so a
	 * wrong one imports nothing and names itself. */
	license_policy *p = owl_xcalloc(1, sizeof *p);
	p->nrules = json_array_size(rules);
	p->rules = owl_xcalloc(p->nrules ? p->nrules : 1, sizeof *p->rules);
	int rc = 0;
	const char *k;
	json_t *v;
	json_object_foreach(doc, k, v) {
		if (!rc && strcmp(k, "rules") && strcmp(k, "org") && strcmp(k, "owl_policy"))
			rc = owl_err_set(err, OWL_EUSAGE, "'%s': unknown top-level field '%s' "
					 "(owl_policy, rules, org)", label, k);
	}
	for (size_t i = 0; !rc && i < p->nrules; i++)
		rc = rule_from_json(json_array_get(rules, i), i + 1, &p->rules[i], err);
	if (!rc && org && !json_is_object(org))
		rc = owl_err_set(err, OWL_EUSAGE, "'%s': field 'org' is %s, expected an object of "
				 "strings", label, json_type_name(org));
	if (!rc && org) {
		p->org = owl_xcalloc(json_object_size(org) + 1, sizeof *p->org);
		json_object_foreach(org, k, v) {
			if (!json_is_string(v)) {
				rc = owl_err_set(err, OWL_EUSAGE, "'%s': org attribute '%s' is %s, "
						 "expected a string", label, k, json_type_name(v));
				break;
			}
			p->org[p->norg].key = owl_xstrdup(k);
			p->org[p->norg].value = owl_xstrdup(json_string_value(v));
			p->norg++;
		}
	}
	json_decref(doc);
	if (rc) {
		license_policy_free(p);
		return rc;
	}
	*out = p;
	return 0;
}

int license_policy_apply(registry_store *s, const license_policy *p, int replace, owl_err *err)
{
	/* All or nothing: a rule the store refuses (a duplicate name, an unknown
	 * condition) leaves the old policy in place. */
	int rc = registry_store_begin(s, err);
	if (rc)
		return rc;
	if (replace)
		rc = registry_store_exec(s, "DELETE FROM policy_rules", err);
	for (size_t i = 0; !rc && i < p->nrules; i++)
		if ((rc = license_rule_add(s, &p->rules[i], err)))
			owl_err_wrap(err, "rule %zu ('%s')", i + 1, p->rules[i].name);
	for (size_t i = 0; !rc && i < p->norg; i++)
		rc = license_org_set(s, p->org[i].key, p->org[i].value, err);
	if (!rc)
		return registry_store_commit(s, err);
	registry_store_rollback(s);
	return rc;
}

int license_policy_read(registry_store *s, license_policy **out, owl_err *err)
{
	*out = NULL;
	license_policy *p = owl_xcalloc(1, sizeof *p);
	int rc = license_rules_list(s, &p->rules, &p->nrules, err);
	if (!rc)
		rc = license_org_list(s, &p->org, &p->norg, err);
	if (rc) {
		license_policy_free(p);
		return rc;
	}
	*out = p;
	return 0;
}

char *license_policy_to_json(const license_policy *p, int as_file)
{
	json_t *arr = json_array();
	for (size_t i = 0; i < p->nrules; i++)
		json_array_append_new(arr, rule_json(&p->rules[i]));
	json_t *org = json_object();
	for (size_t i = 0; i < p->norg; i++)
		json_object_set_new(org, p->org[i].key, json_string(p->org[i].value));
	json_t *doc = as_file ? json_pack("{s:i, s:o, s:o}", "owl_policy", 1, "rules", arr, "org", org)
			      : json_pack("{s:o, s:o}", "rules", arr, "org", org);
	char *text = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	json_decref(doc);
	return text ? text : owl_xstrdup("{}");
}
