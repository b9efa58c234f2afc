/* cmd: the owl command line. One table entry per verb; each verb group lives
 * in its own file (cmd_registry.c, cmd_license.c, ...) and exports a
 * NULL-terminated array that main.c concatenates.
 *
 * Adding a verb:
 *   1. an entry {name, run, summary, usage} in its group's array;
 *   2. usage text with a USAGE line, options and at least one example
 *      (shown by `owl VERB --help` and `owl help VERB`);
 *   3. an end-to-end test in tests/e2e/;
 *   4. its section in docs/cli.md.
 */
#ifndef OWL_CMD_H
#define OWL_CMD_H

#include "common/common.h"
#include "registry/registry.h"

typedef struct owl_ctx {
	const char *home; /* resolved data home: --home, $OWL_HOME, or XDG data dir */
	int json;         /* --json: machine-readable output on stdout */
	int quiet;        /* --quiet: no progress output */
	int verbose;      /* --verbose */
	const char *verb; /* "list", "policy add" ...: for messages */
	int read_only_ok; /* the verb only reads: a read-only home is opened read-only */
} owl_ctx;

typedef struct owl_command {
	const char *name;
	/* argv[0] is the verb; global options are already removed. Returns an exit
	 * code (OWL_OK, OWL_EFAIL, OWL_EUSAGE, OWL_EDENIED, OWL_EINTEGRITY). */
	int (*run)(owl_ctx *ctx, int argc, char **argv);
	const char *summary; /* one line for `owl help` */
	const char *usage;   /* full help: usage, description, options, examples */
} owl_command;

extern const owl_command cmd_status_commands[];
extern const owl_command cmd_registry_commands[];
extern const owl_command cmd_license_commands[];
extern const owl_command cmd_engine_commands[];
extern const owl_command cmd_deploy_commands[];
extern const owl_command cmd_serve_commands[];
extern const owl_command cmd_train_commands[];

/* Opens the data home's store with every module's schema applied. Writers
 * that wait for another owl's lock say so on stderr (unless --quiet). */
struct registry_store;
int cmd_open_store(owl_ctx *ctx, struct registry_store **out, owl_err *err);
/* A progress reporter that is silent under --quiet and --json. */
void cmd_progress_init(owl_ctx *ctx, owl_progress *p);

/* Prints "owl: error: MSG" to stderr and returns err->code (OWL_EFAIL if 0). */
int cmd_fail(const owl_err *err);
/* Prints "owl: error: ..." plus "see 'owl VERB --help'" and returns OWL_EUSAGE. */
int cmd_usage_error(const char *verb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prints a JSON value (jansson json_t*) to stdout, indented, and decrefs it. */
struct json_t;
void cmd_print_json(struct json_t *value);

#endif
