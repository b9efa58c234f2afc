/* Renders a conversation with a checkpoint's chat template family, for
 * comparison with jinja2 rendering the template itself.
 * Usage: owl-chat-render CHECKPOINT_DIR MESSAGES.json
 * MESSAGES.json: [{"role": "system"|"user"|"assistant", "content": "..."}, ...] */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "engine/engine.h"

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: owl-chat-render CHECKPOINT_DIR MESSAGES.json\n");
		return 2;
	}
	owl_err err = {0};
	engine_tokenizer *t = NULL;
	if (engine_tokenizer_load_dir(argv[1], &t, &err)) {
		fprintf(stderr, "owl-chat-render: %s\n", err.msg);
		return 1;
	}
	json_error_t je;
	json_t *arr = json_load_file(argv[2], 0, &je);
	size_t n = json_array_size(arr);
	engine_chat_msg *msgs = calloc(n ? n : 1, sizeof *msgs);
	for (size_t i = 0; i < n; i++) {
		msgs[i].role = json_string_value(json_object_get(json_array_get(arr, i), "role"));
		msgs[i].content = json_string_value(json_object_get(json_array_get(arr, i), "content"));
	}
	engine_chat_family f = engine_chat_detect(engine_tokenizer_chat_template(t));
	int bos = engine_token_bos(t), eos = engine_token_eos(t);
	char *s = engine_chat_render(f, msgs, n, 1, bos >= 0 ? engine_token_text(t, bos) : "",
				     eos >= 0 ? engine_token_text(t, eos) : "");
	fputs(s, stdout);
	free(s);
	free(msgs);
	json_decref(arr);
	engine_tokenizer_free(t);
	return 0;
}
