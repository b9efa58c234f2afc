/* owl main: global options, verb dispatch, help. */
#define _GNU_SOURCE
#include "cmd.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static const owl_command *const groups[] = {
	cmd_status_commands,
	cmd_registry_commands,
	cmd_license_commands,
	cmd_engine_commands,
	cmd_deploy_commands,
	cmd_serve_commands,
	cmd_train_commands,
};
#define NGROUPS (sizeof groups / sizeof groups[0])

static const char global_usage[] =
	"owl: a self-hosted appliance for open-weights language models\n"
	"\n"
	"USAGE\n"
	"  owl [--home DIR] [--json] [--quiet] [--verbose] VERB [ARGS...]\n"
	"  owl VERB --help        help for one verb, with examples\n"
	"  owl --version\n"
	"\n"
	"GLOBAL OPTIONS (accepted before or after the verb)\n"
	"  --home DIR   data home (default: $OWL_HOME, else $XDG_DATA_HOME/owl,\n"
	"               else ~/.local/share/owl)\n"
	"  --json       machine-readable output on listing and status verbs\n"
	"  --quiet      no progress output\n"
	"  --verbose    log what owl is doing to stderr\n"
	"\n"
	"EXIT CODES\n"
	"  0 ok, 1 failure, 2 usage error, 3 denied by policy, 4 integrity failure\n";

int cmd_fail(const owl_err *err)
{
	fprintf(stderr, "owl: error: %s\n", err->msg[0] ? err->msg : "unknown failure");
	return err->code ? err->code : OWL_EFAIL;
}

int cmd_usage_error(const char *verb, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("owl: error: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	fprintf(stderr, "see 'owl %s --help'\n", verb);
	return OWL_EUSAGE;
}

void cmd_print_json(json_t *value)
{
	char *s = json_dumps(value, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	if (s) {
		puts(s);
		free(s);
	}
	json_decref(value);
}

static const owl_command *find_command(const char *name)
{
	for (size_t g = 0; g < NGROUPS; g++)
		for (const owl_command *c = groups[g]; c->name; c++)
			if (strcmp(c->name, name) == 0)
				return c;
	return NULL;
}

static void print_help(void)
{
	fputs(global_usage, stdout);
	puts("\nVERBS");
	for (size_t g = 0; g < NGROUPS; g++)
		for (const owl_command *c = groups[g]; c->name; c++)
			printf("  %-14s %s\n", c->name, c->summary);
	puts("\nRun 'owl VERB --help' for the options and examples of one verb.");
}

static int suggest(const char *verb)
{
	fprintf(stderr, "owl: error: '%s' is not an owl verb\n", verb);
	const char *best = NULL;
	int best_d = 3;
	for (size_t g = 0; g < NGROUPS; g++)
		for (const owl_command *c = groups[g]; c->name; c++) {
			int d = owl_edit_distance(verb, c->name);
			if (d < best_d || (strncmp(verb, c->name, strlen(verb)) == 0 && d < 6 && !best)) {
				best = c->name;
				best_d = d;
			}
		}
	if (best)
		fprintf(stderr, "did you mean 'owl %s'?\n", best);
	fprintf(stderr, "run 'owl help' for the list of verbs\n");
	return OWL_EUSAGE;
}

/* Verbs that only read the data home: on a read-only home (a mounted
 * store, a service account without write access) they open the database
 * read-only; every other verb is told that it needs write access. A verb
 * with a subcommand is listed as "verb sub". */
static const char *const read_only_verbs[] = {
	"list", "show", "verify", "run", "license show", "deploy list", "deploy show",
	"deploy history", "keys list", NULL,
};

static int is_read_only_verb(int argc, char **argv)
{
	for (const char *const *v = read_only_verbs; *v; v++) {
		const char *sp = strchr(*v, ' ');
		if (!sp && strcmp(*v, argv[0]) == 0)
			return 1;
		if (sp && argc > 1 && strncmp(*v, argv[0], (size_t)(sp - *v)) == 0 &&
		    argv[0][sp - *v] == 0 && strcmp(sp + 1, argv[1]) == 0)
			return 1;
	}
	return 0;
}

static char *default_home(void)
{
	const char *h = getenv("OWL_HOME");
	if (h && *h)
		return owl_xstrdup(h);
	const char *xdg = getenv("XDG_DATA_HOME");
	if (xdg && *xdg)
		return owl_path_join(xdg, "owl");
	const char *home = getenv("HOME");
	return owl_xasprintf("%s/.local/share/owl", home && *home ? home : ".");
}

int main(int argc, char **argv)
{
	owl_ctx ctx = {0};
	char *home = NULL;
	int want_help = 0;
	/* Pull global options out of argv wherever they appear (before "--"), so
	 * that `owl list --json` and `owl --json list` both work. */
	char **rest = owl_xcalloc((size_t)argc + 1, sizeof *rest);
	int nrest = 0, after_dashdash = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (after_dashdash) {
			rest[nrest++] = argv[i];
		} else if (strcmp(a, "--") == 0) {
			after_dashdash = 1;
			rest[nrest++] = argv[i];
		} else if (strcmp(a, "--home") == 0) {
			if (i + 1 >= argc) {
				fprintf(stderr, "owl: error: --home needs a directory\n");
				free(rest);
				free(home);
				return OWL_EUSAGE;
			}
			free(home);
			home = owl_xstrdup(argv[++i]);
		} else if (strncmp(a, "--home=", 7) == 0) {
			free(home);
			home = owl_xstrdup(a + 7);
		} else if (strcmp(a, "--json") == 0) {
			ctx.json = 1;
		} else if (strcmp(a, "--quiet") == 0 || strcmp(a, "-q") == 0) {
			ctx.quiet = 1;
		} else if (strcmp(a, "--verbose") == 0 || strcmp(a, "-v") == 0) {
			ctx.verbose = 1;
		} else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			want_help = 1;
		} else if (strcmp(a, "--version") == 0 && nrest == 0) {
			printf("owl %s\n", OWL_VERSION);
			free(rest);
			free(home);
			return OWL_OK;
		} else {
			rest[nrest++] = argv[i];
		}
	}
	rest[nrest] = NULL;
	if (!home)
		home = default_home();
	ctx.home = home;
	owl_log_set_level(ctx.verbose ? 2 : 0);

	int rc;
	if (nrest == 0) {
		if (want_help) {
			print_help();
			rc = OWL_OK;
		} else {
			fputs(global_usage, stderr);
			fputs("\nrun 'owl help' for the list of verbs\n", stderr);
			rc = OWL_EUSAGE;
		}
	} else if (strcmp(rest[0], "help") == 0) {
		if (nrest > 1) {
			const owl_command *c = find_command(rest[1]);
			rc = c ? (fputs(c->usage, stdout), OWL_OK) : suggest(rest[1]);
		} else {
			print_help();
			rc = OWL_OK;
		}
	} else {
		const owl_command *c = find_command(rest[0]);
		if (!c)
			rc = suggest(rest[0]);
		else if (want_help)
			rc = (fputs(c->usage, stdout), OWL_OK);
		else {
			char verb[64];
			/* Groups of subcommands are named with theirs: "policy add". */
			int sub = nrest > 1 && rest[1][0] != '-' &&
				  (strcmp(rest[0], "license") == 0 || strcmp(rest[0], "policy") == 0 ||
				   strcmp(rest[0], "audit") == 0 || strcmp(rest[0], "deploy") == 0 ||
				   strcmp(rest[0], "keys") == 0);
			snprintf(verb, sizeof verb, "%s%s%s", rest[0], sub ? " " : "",
				 sub ? rest[1] : "");
			ctx.verb = verb;
			ctx.read_only_ok = is_read_only_verb(nrest, rest);
			rc = c->run(&ctx, nrest, rest);
		}
	}
	free(rest);
	free(home);
	return rc;
}
