/* Unit tests of common/modelcfg.c: the config.json and tokenizer.json checks
 * that the engine and the pull share. Each refusal must name the field and
 * the value; every valid config must keep the defaults transformers uses. */
#include "test.h"

#include "common/modelcfg.h"

static const char *GOOD =
	"{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
	"\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
	"\"vocab_size\":512,\"rms_norm_eps\":1e-5,\"rope_theta\":500000.0}";

/* GOOD with one field replaced by `value` (raw JSON; NULL removes it). */
static int check_with(const char *key, const char *value, owl_model_config *mc, owl_err *err)
{
	json_t *c = json_loads(GOOD, 0, NULL);
	if (value)
		json_object_set_new(c, key, json_loads(value, JSON_DECODE_ANY, NULL));
	else
		json_object_del(c, key);
	int rc = owl_model_config_from_json(c, mc, err);
	json_decref(c);
	return rc;
}

static void good_config_and_its_defaults(void)
{
	owl_model_config mc;
	owl_err err = {0};
	CHECK_INT(check_with("x", NULL, &mc, &err), 0);
	CHECK_STR(mc.arch, "llama");
	CHECK_INT(mc.head_dim, 16);
	CHECK_INT(mc.ctx_train, 2048);
	CHECK_NEAR(mc.rope_theta, 500000.0, 0);
	CHECK_INT(check_with("num_key_value_heads", NULL, &mc, &err), 0);
	CHECK_INT(mc.n_kv_heads, 4);
	CHECK_INT(check_with("rope_theta", NULL, &mc, &err), 0);
	CHECK_NEAR(mc.rope_theta, 10000.0, 0);
	CHECK_INT(check_with("rms_norm_eps", NULL, &mc, &err), 0);
	CHECK_NEAR(mc.norm_eps, 1e-6, 1e-12);
}

static void absurd_values_name_field_and_value(void)
{
	static const struct { const char *key, *value, *want; } cases[] = {
		{"hidden_size", "0", "hidden_size = 0 is out of range"},
		{"num_attention_heads", "-4", "num_attention_heads = -4 is out of range"},
		{"vocab_size", "2147483648", "vocab_size = 2147483648 is out of range"},
		{"num_hidden_layers", "1000000", "num_hidden_layers = 1000000 is out of range"},
		{"num_hidden_layers", "\"2\"", "num_hidden_layers = \"2\" is not a whole number"},
		{"num_hidden_layers", "2.0", "num_hidden_layers = 2.0 is not a whole number"},
		{"num_key_value_heads", "3", "num_attention_heads = 4 is not a multiple of "
					     "num_key_value_heads = 3"},
		{"head_dim", "15", "head_dim = 15 is odd"},
		{"rope_theta", "-1.0", "rope_theta = -1 is out of range"},
		{"rope_theta", "1e300", "rope_theta = 1e+300 is out of range"},
		{"rms_norm_eps", "-1e-5", "rms_norm_eps = -1e-05 is out of range"},
		{"rms_norm_eps", "0", "rms_norm_eps = 0 is out of range"},
		{"rms_norm_eps", "\"1e-5\"", "rms_norm_eps = \"1e-5\" is not a number"},
		{"hidden_size", NULL, "'hidden_size' is missing"},
		{"rope_scaling", "{\"rope_type\":\"llama3\",\"factor\":0,\"low_freq_factor\":1,"
				 "\"high_freq_factor\":4,\"original_max_position_embeddings\":8192}",
		 "rope_scaling.factor = 0 is out of range"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		owl_model_config mc;
		owl_err err = {0};
		int rc = check_with(cases[i].key, cases[i].value, &mc, &err);
		CHECK(rc == OWL_EINTEGRITY && strstr(err.msg, cases[i].want),
		      "%s = %s: expected exit 4 and \"%s\", got %d \"%s\"", cases[i].key,
		      cases[i].value ? cases[i].value : "(removed)", cases[i].want, rc, err.msg);
	}
	/* A head_dim derived from hidden / heads is checked like a stated one. */
	owl_model_config mc;
	owl_err err = {0};
	CHECK_INT(check_with("num_attention_heads", "128", &mc, &err), OWL_EINTEGRITY);
	CHECK(strstr(err.msg, "head_dim = 0") && strstr(err.msg, "hidden_size / num_attention_heads"),
	      "derived head_dim: %s", err.msg);
}

static void other_architectures_check_what_they_state(void)
{
	owl_model_config mc;
	owl_err err = {0};
	json_t *c = json_loads("{\"architectures\":[\"BertModel\"],\"vocab_size\":30522}", 0, NULL);
	CHECK_INT(owl_model_config_from_json(c, &mc, &err), 0);
	CHECK_STR(mc.arch, "");
	json_object_set_new(c, "num_hidden_layers", json_integer(0));
	CHECK_INT(owl_model_config_from_json(c, &mc, &err), OWL_EINTEGRITY);
	json_decref(c);
}

static void tokenizer_json_checks(void)
{
	static const struct { const char *text, *want; } cases[] = {
		{"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a b\"]}}", NULL},
		{"{\"model\":{\"type\":\"Unigram\",\"vocab\":[[\"a\",-1.5]]}}", NULL},
		{"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,", "truncated"},
		{"[1]", "not a JSON object"},
		{"{\"model\":{\"vocab\":{\"a\":-1}}}", "token 'a' has id -1"},
		{"{\"model\":{\"vocab\":{\"a\":0},\"merges\":[3]}}", "model.merges entry 0"},
		{"{\"model\":{\"vocab\":{\"a\":0}},\"added_tokens\":[{\"id\":9999999,\"content\":\"x\"}]}",
		 "added token 'x' has id 9999999"},
		{"{\"model\":{\"type\":\"Unigram\",\"vocab\":[[\"a\"]]}}", "model.vocab entry 0"},
		{"{\"model\":{\"vocab\":{}},\"pre_tokenizer\":\"x\"}", "pre_tokenizer is neither"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		owl_err err = {0};
		int rc = owl_tokenizer_json_check(cases[i].text, strlen(cases[i].text), &err);
		if (!cases[i].want)
			CHECK(rc == 0, "case %zu: expected success, got %d \"%s\"", i, rc, err.msg);
		else
			CHECK(rc == OWL_EINTEGRITY && strstr(err.msg, cases[i].want),
			      "case %zu: expected \"%s\", got %d \"%s\"", i, cases[i].want, rc, err.msg);
	}
}

int main(void)
{
	RUN_TEST(good_config_and_its_defaults);
	RUN_TEST(absurd_values_name_field_and_value);
	RUN_TEST(other_architectures_check_what_they_state);
	RUN_TEST(tokenizer_json_checks);
	TEST_MAIN_END();
}
