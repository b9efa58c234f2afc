/* deploy/api: the OpenAI request bodies the server accepts, parsed and
 * checked before anything reaches the engine, and OpenAI's error shape.
 * Nothing here touches a model: the fuzz target drives it alone. */
#ifndef OWL_DEPLOY_API_H
#define OWL_DEPLOY_API_H

#include <stddef.h>
#include <stdint.h>

enum {
	API_MAX_STOP = 16,      /* stop strings per request */
	API_MAX_STOP_LEN = 256, /* bytes per stop string */
	API_MAX_MESSAGES = 1024,
	API_MAX_TOP_LOGPROBS = 20,
	API_MAX_PROMPT_IDS = 1 << 20,
};

typedef enum api_kind { API_COMPLETIONS = 0, API_CHAT } api_kind;

typedef struct api_msg {
	char *role;    /* system, user, assistant */
	char *content; /* text parts joined */
} api_msg;

typedef struct api_request {
	api_kind kind;
	char *model;
	char *prompt;           /* completions: the text, or NULL when given as token ids */
	int32_t *prompt_ids;
	size_t nprompt_ids;
	api_msg *msgs;          /* chat */
	size_t nmsgs;
	int max_tokens;         /* -1: not given */
	double temperature, top_p, frequency_penalty, presence_penalty;
	int has_seed;
	uint64_t seed;
	char *stop[API_MAX_STOP];
	int nstop;
	int stream, include_usage;
	int logprobs;           /* return the log probabilities of the chosen tokens */
	int top_logprobs;       /* and of this many alternatives (0..20) */
} api_request;

/* An error as OpenAI states it: the HTTP status and the JSON body's fields. */
typedef struct api_error {
	int status;
	char type[40];    /* invalid_request_error, server_error, ... */
	char param[48];   /* "" = null */
	char code[48];    /* "" = null */
	char message[512];
} api_error;

void api_error_set(api_error *e, int status, const char *type, const char *param, const char *code,
		   const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* {"error":{"message","type","param","code"}}; malloc'd, the caller frees. */
char *api_error_json(const api_error *e);

/* Parses and checks a request body of kind; 0, or -1 with e filled (a 400). */
int api_parse_request(api_kind kind, const char *body, size_t len, api_request *out, api_error *e);
void api_request_free(api_request *r);

#endif
