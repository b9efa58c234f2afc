/* Request bodies of /v1/completions and /v1/chat/completions: every field
 * the server honours is type- and range-checked here, and a request it
 * cannot honour as asked (n > 1, tools, logit_bias) is refused rather than
 * served differently. Unknown fields are ignored, as OpenAI's clients send
 * fields of newer API versions. */
#include "deploy/api.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void api_error_set(api_error *e, int status, const char *type, const char *param, const char *code,
		   const char *fmt, ...)
{
	e->status = status;
	snprintf(e->type, sizeof e->type, "%s", type);
	snprintf(e->param, sizeof e->param, "%s", param ? param : "");
	snprintf(e->code, sizeof e->code, "%s", code ? code : "");
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e->message, sizeof e->message, fmt, ap);
	va_end(ap);
}

static json_t *str_or_null(const char *s)
{
	return *s ? json_string(s) : json_null();
}

char *api_error_json(const api_error *e)
{
	json_t *in = json_object();
	/* The message may quote client bytes cut at any point: keep it valid UTF-8. */
	json_t *msg = json_string(e->message);
	json_object_set_new(in, "message", msg ? msg : json_string("(message not valid UTF-8)"));
	json_object_set_new(in, "type", json_string(e->type));
	json_object_set_new(in, "param", str_or_null(e->param));
	json_object_set_new(in, "code", str_or_null(e->code));
	json_t *o = json_pack("{s:o}", "error", in);
	char *s = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	return s;
}

static int bad(api_error *e, const char *param, const char *fmt, const char *what)
{
	api_error_set(e, 400, "invalid_request_error", param, NULL, fmt, param, what);
	return -1;
}

/* A number field within [lo, hi]; null means not given. */
static int get_number(json_t *o, const char *key, double lo, double hi, double *out, api_error *e)
{
	json_t *v = json_object_get(o, key);
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_number(v))
		return bad(e, key, "'%s' must be a number%s", "");
	double d = json_number_value(v);
	if (!(d >= lo && d <= hi)) {
		api_error_set(e, 400, "invalid_request_error", key, NULL, "'%s' is %g: it must be between "
			      "%g and %g", key, d, lo, hi);
		return -1;
	}
	*out = d;
	return 0;
}

static int get_int(json_t *o, const char *key, long long lo, long long hi, long long *out, int *given,
		   api_error *e)
{
	json_t *v = json_object_get(o, key);
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_integer(v))
		return bad(e, key, "'%s' must be an integer%s", "");
	long long i = json_integer_value(v);
	if (i < lo || i > hi) {
		api_error_set(e, 400, "invalid_request_error", key, NULL, "'%s' is %lld: it must be "
			      "between %lld and %lld", key, i, lo, hi);
		return -1;
	}
	*out = i;
	if (given)
		*given = 1;
	return 0;
}

static int get_bool(json_t *o, const char *key, int *out, api_error *e)
{
	json_t *v = json_object_get(o, key);
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_boolean(v))
		return bad(e, key, "'%s' must be a boolean%s", "");
	*out = json_is_true(v);
	return 0;
}

static char *dup_str(json_t *v)
{
	size_t n = json_string_length(v);
	char *s = malloc(n + 1);
	if (s) {
		memcpy(s, json_string_value(v), n);
		s[n] = 0;
	}
	return s;
}

static int oom(api_error *e)
{
	api_error_set(e, 500, "server_error", NULL, NULL, "out of memory reading the request");
	return -1;
}

/* A text without NUL bytes: the engine's strings end at the first. */
static int check_text(json_t *v, const char *param, api_error *e)
{
	if (memchr(json_string_value(v), 0, json_string_length(v)))
		return bad(e, param, "'%s' contains a NUL character%s", "");
	return 0;
}

static int parse_stop(json_t *o, api_request *r, api_error *e)
{
	json_t *v = json_object_get(o, "stop");
	if (!v || json_is_null(v))
		return 0;
	json_t *one[1] = {v};
	json_t **items = one;
	size_t n = 1;
	if (json_is_array(v)) {
		n = json_array_size(v);
		if (n > API_MAX_STOP) {
			api_error_set(e, 400, "invalid_request_error", "stop", NULL, "'stop' has %zu strings: "
				      "at most %d", n, API_MAX_STOP);
			return -1;
		}
		items = NULL;
	} else if (!json_is_string(v)) {
		return bad(e, "stop", "'%s' must be a string or a list of strings%s", "");
	}
	for (size_t i = 0; i < n; i++) {
		json_t *s = items ? items[i] : json_array_get(v, i);
		if (!json_is_string(s))
			return bad(e, "stop", "'%s' must be a string or a list of strings%s", "");
		if (json_string_length(s) == 0)
			continue; /* an empty stop string would end every generation at once */
		if (json_string_length(s) > API_MAX_STOP_LEN) {
			api_error_set(e, 400, "invalid_request_error", "stop", NULL, "a stop string is "
				      "longer than %d bytes", API_MAX_STOP_LEN);
			return -1;
		}
		if (check_text(s, "stop", e))
			return -1;
		if (!(r->stop[r->nstop] = dup_str(s)))
			return oom(e);
		r->nstop++;
	}
	return 0;
}

/* A completions prompt: a string, a list of one string, or token ids
 * (a list of integers, or a list of one such list). */
static int parse_prompt(json_t *o, api_request *r, api_error *e)
{
	json_t *v = json_object_get(o, "prompt");
	if (!v || json_is_null(v))
		return bad(e, "prompt", "'%s' is required%s", "");
	if (json_is_array(v) && json_array_size(v) == 1 &&
	    (json_is_string(json_array_get(v, 0)) || json_is_array(json_array_get(v, 0))))
		v = json_array_get(v, 0);
	if (json_is_string(v)) {
		if (check_text(v, "prompt", e))
			return -1;
		if (!(r->prompt = dup_str(v)))
			return oom(e);
		return 0;
	}
	if (!json_is_array(v))
		return bad(e, "prompt", "'%s' must be a string, a list of one string or a list of token "
			   "ids%s", "");
	size_t n = json_array_size(v);
	if (n == 0)
		return bad(e, "prompt", "'%s' is empty%s", "");
	for (size_t i = 0; i < n; i++)
		if (json_is_string(json_array_get(v, i)) || json_is_array(json_array_get(v, i))) {
			api_error_set(e, 400, "invalid_request_error", "prompt", NULL, "several prompts in "
				      "one request are not supported: send one request per prompt");
			return -1;
		}
	if (n > API_MAX_PROMPT_IDS)
		return bad(e, "prompt", "'%s' holds too many token ids%s", "");
	if (!(r->prompt_ids = malloc(n * sizeof *r->prompt_ids)))
		return oom(e);
	for (size_t i = 0; i < n; i++) {
		json_t *t = json_array_get(v, i);
		if (!json_is_integer(t) || json_integer_value(t) < 0 || json_integer_value(t) > INT32_MAX)
			return bad(e, "prompt", "'%s' must be a string or a list of token ids (non-negative "
				   "integers)%s", "");
		r->prompt_ids[i] = (int32_t)json_integer_value(t);
	}
	r->nprompt_ids = n;
	return 0;
}

/* content: a string, or a list of {"type":"text","text":...} parts, joined. */
static int parse_content(json_t *c, char **out, api_error *e)
{
	if (!c || json_is_null(c)) {
		*out = calloc(1, 1);
		return *out ? 0 : oom(e);
	}
	if (json_is_string(c)) {
		if (check_text(c, "messages", e))
			return -1;
		return (*out = dup_str(c)) ? 0 : oom(e);
	}
	if (!json_is_array(c))
		return bad(e, "messages", "'%s': a message's content must be a string or a list of text "
			   "parts%s", "");
	size_t total = 0, i;
	json_t *p;
	json_array_foreach(c, i, p) {
		json_t *type = json_object_get(p, "type"), *text = json_object_get(p, "text");
		if (!json_is_object(p) || !json_is_string(type) || strcmp(json_string_value(type), "text") ||
		    !json_is_string(text))
			return bad(e, "messages", "'%s': only text content parts are supported "
				   "({\"type\": \"text\", \"text\": ...})%s", "");
		if (check_text(text, "messages", e))
			return -1;
		total += json_string_length(text);
	}
	char *s = malloc(total + 1);
	if (!s)
		return oom(e);
	size_t at = 0;
	json_array_foreach(c, i, p) {
		json_t *text = json_object_get(p, "text");
		memcpy(s + at, json_string_value(text), json_string_length(text));
		at += json_string_length(text);
	}
	s[at] = 0;
	*out = s;
	return 0;
}

static int parse_messages(json_t *o, api_request *r, api_error *e)
{
	json_t *v = json_object_get(o, "messages");
	if (!v || json_is_null(v))
		return bad(e, "messages", "'%s' is required%s", "");
	if (!json_is_array(v))
		return bad(e, "messages", "'%s' must be a list of messages%s", "");
	size_t n = json_array_size(v);
	if (n == 0)
		return bad(e, "messages", "'%s' is empty%s", "");
	if (n > API_MAX_MESSAGES) {
		api_error_set(e, 400, "invalid_request_error", "messages", NULL, "%zu messages: at most %d",
			      n, API_MAX_MESSAGES);
		return -1;
	}
	if (!(r->msgs = calloc(n, sizeof *r->msgs)))
		return oom(e);
	for (size_t i = 0; i < n; i++) {
		json_t *m = json_array_get(v, i);
		json_t *role = json_is_object(m) ? json_object_get(m, "role") : NULL;
		if (!json_is_string(role))
			return bad(e, "messages", "'%s': each message must be an object with a string "
				   "\"role\"%s", "");
		const char *rs = json_string_value(role);
		/* "developer" is the newer name of the system role. */
		const char *norm = !strcmp(rs, "developer") ? "system" : rs;
		if (strcmp(norm, "system") && strcmp(norm, "user") && strcmp(norm, "assistant")) {
			api_error_set(e, 400, "invalid_request_error", "messages", NULL, "message %zu has "
				      "role '%.40s': system, user and assistant are supported", i, rs);
			return -1;
		}
		r->nmsgs = i + 1;
		if (!(r->msgs[i].role = strdup(norm)))
			return oom(e);
		if (parse_content(json_object_get(m, "content"), &r->msgs[i].content, e))
			return -1;
	}
	return 0;
}

/* Fields whose meaning the server cannot give: refused, never ignored. */
static int refuse_unsupported(json_t *o, api_error *e)
{
	static const char *const keys[] = {"tools", "functions", "tool_choice", "function_call"};
	for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
		json_t *v = json_object_get(o, keys[i]);
		if (v && !json_is_null(v) && !(json_is_array(v) && json_array_size(v) == 0) &&
		    !(json_is_string(v) && !strcmp(json_string_value(v), "none")))
			return bad(e, keys[i], "'%s' is not supported by this server%s", "");
	}
	json_t *lb = json_object_get(o, "logit_bias");
	if (lb && !json_is_null(lb) && !(json_is_object(lb) && json_object_size(lb) == 0))
		return bad(e, "logit_bias", "'%s' is not supported by this server%s", "");
	json_t *echo = json_object_get(o, "echo");
	if (echo && json_is_true(echo))
		return bad(e, "echo", "'%s' is not supported by this server%s", "");
	json_t *rf = json_object_get(o, "response_format");
	if (rf && !json_is_null(rf)) {
		json_t *t = json_is_object(rf) ? json_object_get(rf, "type") : NULL;
		if (!json_is_string(t) || strcmp(json_string_value(t), "text"))
			return bad(e, "response_format", "'%s': only {\"type\": \"text\"} is supported%s", "");
	}
	return 0;
}

static int parse_fields(json_t *o, api_request *r, api_error *e)
{
	json_t *model = json_object_get(o, "model");
	if (!model || json_is_null(model))
		return bad(e, "model", "'%s' is required%s", "");
	if (!json_is_string(model) || json_string_length(model) == 0 || json_string_length(model) > 256)
		return bad(e, "model", "'%s' must be a model name (a non-empty string)%s", "");
	if (check_text(model, "model", e))
		return -1;
	if (!(r->model = dup_str(model)))
		return oom(e);
	if (refuse_unsupported(o, e))
		return -1;
	if (r->kind == API_COMPLETIONS ? parse_prompt(o, r, e) : parse_messages(o, r, e))
		return -1;
	long long n = 1, mt = -1, seed = 0, tl = 0, best_of = 1;
	int given = 0;
	if (get_int(o, "n", 1, 128, &n, NULL, e))
		return -1;
	if (n != 1)
		return bad(e, "n", "'%s' must be 1: send one request per choice%s", "");
	if (get_int(o, "best_of", 1, 128, &best_of, NULL, e))
		return -1;
	if (best_of != 1)
		return bad(e, "best_of", "'%s' must be 1%s", "");
	/* max_completion_tokens is the newer name; it wins when both are given. */
	if (get_int(o, "max_tokens", 1, INT32_MAX, &mt, NULL, e) ||
	    get_int(o, "max_completion_tokens", 1, INT32_MAX, &mt, NULL, e))
		return -1;
	r->max_tokens = (int)mt;
	r->temperature = 1, r->top_p = 1;
	if (get_number(o, "temperature", 0, 2, &r->temperature, e) ||
	    get_number(o, "top_p", 0, 1, &r->top_p, e) ||
	    get_number(o, "frequency_penalty", -2, 2, &r->frequency_penalty, e) ||
	    get_number(o, "presence_penalty", -2, 2, &r->presence_penalty, e))
		return -1;
	if (r->top_p <= 0)
		return bad(e, "top_p", "'%s' must be greater than 0%s", "");
	if (get_int(o, "seed", INT64_MIN, INT64_MAX, &seed, &given, e))
		return -1;
	r->has_seed = given;
	r->seed = (uint64_t)seed;
	if (parse_stop(o, r, e) || get_bool(o, "stream", &r->stream, e))
		return -1;
	json_t *so = json_object_get(o, "stream_options");
	if (so && !json_is_null(so)) {
		if (!json_is_object(so))
			return bad(e, "stream_options", "'%s' must be an object%s", "");
		if (get_bool(so, "include_usage", &r->include_usage, e))
			return -1;
	}
	/* logprobs: an integer count on completions, a boolean plus
	 * top_logprobs on chat. */
	if (r->kind == API_COMPLETIONS) {
		json_t *lp = json_object_get(o, "logprobs");
		if (lp && json_is_boolean(lp))
			return bad(e, "logprobs", "'%s' must be an integer (0 to 5) on completions%s", "");
		long long k = -1;
		if (get_int(o, "logprobs", 0, 5, &k, NULL, e))
			return -1;
		r->logprobs = k >= 0;
		r->top_logprobs = k > 0 ? (int)k : 0;
	} else {
		if (get_bool(o, "logprobs", &r->logprobs, e) ||
		    get_int(o, "top_logprobs", 0, API_MAX_TOP_LOGPROBS, &tl, &given, e))
			return -1;
		if (tl > 0 && !r->logprobs)
			return bad(e, "top_logprobs", "'%s' needs 'logprobs' set to true%s", "");
		r->top_logprobs = (int)tl;
	}
	return 0;
}

int api_parse_request(api_kind kind, const char *body, size_t len, api_request *out, api_error *e)
{
	memset(out, 0, sizeof *out);
	out->kind = kind;
	out->max_tokens = -1;
	json_error_t je;
	json_t *o = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
	if (!o) {
		api_error_set(e, 400, "invalid_request_error", NULL, "invalid_json", "the body is not "
			      "valid JSON: %s (line %d, column %d)", je.text, je.line, je.column);
		return -1;
	}
	int rc = 0;
	if (!json_is_object(o)) {
		api_error_set(e, 400, "invalid_request_error", NULL, "invalid_json", "the body must be a "
			      "JSON object");
		rc = -1;
	} else {
		rc = parse_fields(o, out, e);
	}
	json_decref(o);
	if (rc)
		api_request_free(out);
	return rc;
}

void api_request_free(api_request *r)
{
	free(r->model);
	free(r->prompt);
	free(r->prompt_ids);
	for (size_t i = 0; i < r->nmsgs; i++)
		free(r->msgs[i].role), free(r->msgs[i].content);
	free(r->msgs);
	for (int i = 0; i < r->nstop; i++)
		free(r->stop[i]);
	memset(r, 0, sizeof *r);
}
