/* Benchmark: time to evaluate a policy of 1,000 rules, and to recognise a
 * license text. Usage: owl-bench-policy [LICENSE_TEXT] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "licenses/internal.h"

int main(int argc, char **argv)
{
	char tmpl[] = "/tmp/owl-bench-policy-XXXXXX";
	if (!mkdtemp(tmpl))
		return 1;
	owl_err err = {0};
	registry_store *s = NULL;
	if (registry_store_open(tmpl, &s, &err) || licenses_migrate(s, &err)) {
		fprintf(stderr, "owl-bench-policy: %s\n", err.msg);
		return 1;
	}
	registry_store_begin(s, &err);
	/* 1,000 rules that the request reaches only at the end: each one is
	 * tried and rejected on a different matcher. */
	for (int i = 0; i < 1000; i++) {
		license_rule r = {.effect = i % 3 ? LICENSE_DENY : LICENSE_REQUIRE_APPROVAL,
				  .priority = 5000 - i};
		snprintf(r.name, sizeof r.name, "rule-%04d", i);
		switch (i % 4) {
		case 0: snprintf(r.license, sizeof r.license, "vendor-%d-*", i); break;
		case 1: snprintf(r.model, sizeof r.model, "team-%d/*", i); break;
		case 2: snprintf(r.action, sizeof r.action, "finetune"); break;
		default: snprintf(r.license, sizeof r.license, "mit"); snprintf(r.when, sizeof r.when, "mau-over-limit"); break;
		}
		if (license_rule_add(s, &r, &err)) {
			fprintf(stderr, "owl-bench-policy: %s\n", err.msg);
			return 1;
		}
	}
	registry_store_commit(s, &err);
	license_findings lf = {0};
	license_finding item = {.confidence = 0.9};
	snprintf(item.license_id, sizeof item.license_id, "mit");
	lf.items = &item;
	lf.n = 1;
	license_request rq = {.model = "acme/bot", .findings = &lf, .action = "deploy",
			      .use = "commercial"};
	license_decision d;
	int reps = 200;
	double t0 = owl_now();
	for (int i = 0; i < reps; i++)
		license_evaluate(s, &rq, &d, &err);
	double per = (owl_now() - t0) / reps;
	printf("policy of 1009 rules (1000 added + 9 default): %.3f ms per evaluation (decided by %s)\n",
	       per * 1e3, d.rule);
	if (argc > 1) {
		char *text = NULL;
		size_t len = 0;
		if (owl_read_file(argv[1], 1u << 20, &text, &len, &err) == 0) {
			char id[64];
			double score;
			int near;
			t0 = owl_now();
			for (int i = 0; i < 100; i++)
				license_recognise_text(text, len, id, sizeof id, &score, &near);
			printf("recognising a %zu-byte license text: %.3f ms (%s)\n", len,
			       (owl_now() - t0) / 100 * 1e3, id);
			free(text);
		}
	}
	registry_store_close(s);
	owl_remove_tree(tmpl, NULL);
	return 0;
}
