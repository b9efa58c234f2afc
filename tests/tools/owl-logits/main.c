/* Prints a model's logits for token ids as JSON, for comparison with the
 * PyTorch oracle and between owl's own modes (tp, stepwise vs prefill).
 * Usage: owl-logits PATH --tokens 1,2,3 [--tp N] [--threads N] [--all] [--stepwise]
 *                   [--adapter DIR] [--device auto|cpu|cuda[:N]] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "engine/lora.h" /* engine_adapter_*: to move to engine.h */

int main(int argc, char **argv)
{
	const char *path = NULL, *toks = NULL, *adapter_dir = NULL;
	engine_model_opts o = {0};
	int all = 0, stepwise = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--tokens") && i + 1 < argc) toks = argv[++i];
		else if (!strcmp(argv[i], "--tp") && i + 1 < argc) o.tp = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--threads") && i + 1 < argc) o.threads = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--adapter") && i + 1 < argc) adapter_dir = argv[++i];
		else if (!strcmp(argv[i], "--device") && i + 1 < argc) {
			owl_err derr = {0};
			if (engine_device_parse(argv[++i], &o.device, &o.first_gpu, &derr)) {
				fprintf(stderr, "owl-logits: %s\n", derr.msg);
				return 2;
			}
		}
		else if (!strcmp(argv[i], "--all")) all = 1;
		else if (!strcmp(argv[i], "--stepwise")) stepwise = 1;
		else path = argv[i];
	}
	if (!path || !toks) {
		fprintf(stderr, "usage: owl-logits PATH --tokens 1,2,3 [--tp N] [--all] [--stepwise] "
				"[--adapter DIR] [--device D]\n");
		return 2;
	}
	int32_t ids[4096];
	int n = 0;
	for (char *c = (char *)toks; *c && n < 4096;) {
		ids[n++] = (int32_t)strtol(c, &c, 10);
		if (*c == ',')
			c++;
	}
	owl_err err = {0};
	engine_model *m = NULL;
	engine_session *s = NULL;
	engine_adapter *ad = NULL;
	if (engine_model_open(path, &o, &m, &err) || engine_session_new(m, 0, &s, &err) ||
	    (adapter_dir && (engine_adapter_load(m, adapter_dir, &ad, &err) ||
			     engine_session_set_adapter(s, ad, &err)))) {
		fprintf(stderr, "owl-logits: %s\n", err.msg);
		engine_adapter_free(ad);
		engine_session_free(s);
		engine_model_close(m);
		return err.code ? err.code : 1;
	}
	int vocab = engine_model_get_info(m)->vocab;
	float *logits = malloc((size_t)n * vocab * sizeof *logits);
	int rc = 0;
	if (stepwise) {
		for (int i = 0; i < n && !rc; i++)
			rc = engine_forward(s, &ids[i], 1, logits + (size_t)i * vocab, 0, &err);
	} else {
		rc = engine_forward(s, ids, n, logits, all, &err);
	}
	if (rc) {
		fprintf(stderr, "owl-logits: %s\n", err.msg);
	} else {
		int rows = (all || stepwise) ? n : 1;
		int from = (stepwise && !all) ? n - 1 : 0;
		printf("[");
		for (int r = from; r < rows; r++) {
			printf("%s[", r > from ? "," : "");
			for (int j = 0; j < vocab; j++)
				printf("%s%.7g", j ? "," : "", logits[(size_t)r * vocab + j]);
			printf("]");
		}
		printf("]\n");
	}
	free(logits);
	engine_session_free(s);
	engine_adapter_free(ad);
	engine_model_close(m);
	return rc;
}
