/* A small unit-test harness. Each test binary runs its TEST functions with
 * RUN_TEST; every test prints "PASS name" or "FAIL name: what was expected and
 * what was got", which tests/run.sh counts. The binary exits non-zero when any
 * test failed, so a verdict is never printed and then ignored. */
#ifndef OWL_TEST_H
#define OWL_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern int test_current_failed;
extern int test_total_failed;
extern const char *test_current_name;

/* Records a failure of the current test with a message; the test goes on so
 * that one run shows every broken expectation. */
#define CHECK(cond, ...)                                                              \
	do {                                                                          \
		if (!(cond)) {                                                        \
			if (!test_current_failed)                                     \
				printf("FAIL %s: ", test_current_name);               \
			else                                                          \
				printf("     %s: ", test_current_name);               \
			printf("%s:%d: ", __FILE__, __LINE__);                        \
			printf(__VA_ARGS__);                                          \
			printf("\n");                                                 \
			test_current_failed = 1;                                      \
		}                                                                     \
	} while (0)

#define CHECK_INT(got, want)                                                          \
	do {                                                                          \
		long long g_ = (long long)(got), w_ = (long long)(want);              \
		CHECK(g_ == w_, "%s: expected %lld, got %lld", #got, w_, g_);         \
	} while (0)

#define CHECK_STR(got, want)                                                          \
	do {                                                                          \
		const char *g_ = (got), *w_ = (want);                                 \
		CHECK(g_ && w_ && strcmp(g_, w_) == 0, "%s: expected \"%s\", got \"%s\"", \
		      #got, w_ ? w_ : "(null)", g_ ? g_ : "(null)");                  \
	} while (0)

#define CHECK_NEAR(got, want, tol)                                                    \
	do {                                                                          \
		double g_ = (got), w_ = (want);                                       \
		CHECK(fabs(g_ - w_) <= (tol), "%s: expected %g ± %g, got %g", #got, w_, \
		      (double)(tol), g_);                                             \
	} while (0)

#define RUN_TEST(fn)                                                                  \
	do {                                                                          \
		test_current_name = #fn;                                              \
		test_current_failed = 0;                                              \
		fn();                                                                 \
		if (test_current_failed)                                              \
			test_total_failed++;                                          \
		else                                                                  \
			printf("PASS %s\n", #fn);                                     \
		fflush(stdout);                                                       \
	} while (0)

#define TEST_MAIN_END() return test_total_failed ? 1 : 0

/* A fresh empty directory under $TMPDIR for one test; caller frees the path
 * and may remove the tree with owl_remove_tree. */
char *test_tmpdir(const char *tag);

#endif
