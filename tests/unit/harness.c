#include "test.h"

#include <unistd.h>

#include "common/common.h"

int test_current_failed;
int test_total_failed;
const char *test_current_name;

char *test_tmpdir(const char *tag)
{
	const char *base = getenv("TMPDIR");
	char *tmpl = owl_xasprintf("%s/owl-test-%s-XXXXXX", base && *base ? base : "/tmp", tag);
	if (!mkdtemp(tmpl)) {
		perror("mkdtemp");
		exit(2);
	}
	return tmpl;
}
