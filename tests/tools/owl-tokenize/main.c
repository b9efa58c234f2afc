/* Tokenizes text with a checkpoint's tokenizer (folder or .gguf) and prints
 * the ids as JSON, then the decoded text on the next line, for comparison
 * with the reference tokenizers. The text is read from a file so that any
 * bytes can be tested. Usage: owl-tokenize PATH TEXT_FILE [--no-special] [--bos] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/gguf.h"
#include "engine/engine.h"

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: owl-tokenize PATH TEXT_FILE [--no-special] [--bos]\n");
		return 2;
	}
	int special = 1, bos = 0;
	for (int i = 3; i < argc; i++) {
		if (!strcmp(argv[i], "--no-special")) special = 0;
		if (!strcmp(argv[i], "--bos")) bos = 1;
	}
	owl_err err = {0};
	engine_tokenizer *t = NULL;
	gguf_file *g = NULL;
	size_t pl = strlen(argv[1]);
	int rc = pl > 5 && !strcmp(argv[1] + pl - 5, ".gguf")
			 ? (gguf_open(argv[1], &g, &err) || engine_tokenizer_load_gguf(g, &t, &err))
			 : engine_tokenizer_load_dir(argv[1], &t, &err);
	char *text = NULL;
	size_t len = 0;
	if (!rc)
		rc = owl_read_file(argv[2], 64u << 20, &text, &len, &err);
	if (rc) {
		fprintf(stderr, "owl-tokenize: %s\n", err.msg);
		engine_tokenizer_free(t);
		gguf_close(g);
		return 1;
	}
	int32_t *ids = NULL;
	size_t n = 0;
	engine_tokenize(t, text, len, bos, special, &ids, &n, &err);
	printf("[");
	for (size_t i = 0; i < n; i++)
		printf("%s%d", i ? "," : "", ids[i]);
	printf("]\n");
	char *back = engine_detokenize(t, ids, n);
	fputs(back, stdout);
	free(back);
	free(ids);
	free(text);
	engine_tokenizer_free(t);
	gguf_close(g);
	return 0;
}
