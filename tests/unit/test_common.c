/* Unit tests of common/: errors, buffers, globs, paths, atomic writes. */
#include "test.h"

#include "common/common.h"

static void glob_matches_stars_and_questions(void)
{
	CHECK(owl_glob_match("cc-by-nc-*", "cc-by-nc-4.0"), "cc-by-nc-* should match cc-by-nc-4.0");
	CHECK(!owl_glob_match("cc-by-nc-*", "cc-by-4.0"), "cc-by-nc-* should not match cc-by-4.0");
	CHECK(owl_glob_match("llama3.?", "llama3.1"), "? matches one char");
	CHECK(owl_glob_match("*", ""), "* matches empty");
	CHECK(!owl_glob_match("a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"), "no match, and quickly");
}

static void buffer_refuses_growth_past_its_maximum(void)
{
	owl_buf b;
	owl_buf_init(&b, 8);
	CHECK_INT(owl_buf_append(&b, "12345", 5), 0);
	CHECK_INT(owl_buf_append(&b, "678", 3), 0);
	CHECK(owl_buf_append(&b, "9", 1) != 0, "append past max must fail");
	CHECK_STR(b.data, "12345678");
	owl_buf_release(&b);
}

static void err_wrap_prefixes_context(void)
{
	owl_err err = {0};
	int rc = owl_err_set(&err, OWL_EINTEGRITY, "digest mismatch");
	CHECK_INT(rc, OWL_EINTEGRITY);
	owl_err_wrap(&err, "cannot pull '%s'", "x");
	CHECK_STR(err.msg, "cannot pull 'x': digest mismatch");
	CHECK_INT(err.code, OWL_EINTEGRITY);
}

static void atomic_write_then_read_back(void)
{
	char *dir = test_tmpdir("common");
	char *sub = owl_path_join(dir, "a/b/c");
	owl_err err = {0};
	CHECK_INT(owl_mkdir_p(sub, &err), 0);
	char *f = owl_path_join(sub, "file.txt");
	CHECK_INT(owl_write_file_atomic(f, "hello", 5, &err), 0);
	char *data = NULL;
	size_t n = 0;
	CHECK_INT(owl_read_file(f, 100, &data, &n, &err), 0);
	CHECK_INT(n, 5);
	CHECK_STR(data, "hello");
	free(data);
	CHECK(owl_read_file(f, 3, &data, &n, &err) != 0, "a file larger than max must be refused");
	CHECK(strstr(err.msg, "larger") != NULL, "message names the cause: %s", err.msg);
	CHECK_INT(owl_remove_tree(dir, &err), 0);
	CHECK(!owl_path_exists(dir), "tree removed");
	free(f);
	free(sub);
	free(dir);
}

static void edit_distance_for_suggestions(void)
{
	CHECK_INT(owl_edit_distance("statsu", "status"), 2);
	CHECK_INT(owl_edit_distance("pull", "pull"), 0);
	CHECK_INT(owl_edit_distance("", "abc"), 3);
}

int main(void)
{
	RUN_TEST(glob_matches_stars_and_questions);
	RUN_TEST(buffer_refuses_growth_past_its_maximum);
	RUN_TEST(err_wrap_prefixes_context);
	RUN_TEST(atomic_write_then_read_back);
	RUN_TEST(edit_distance_for_suggestions);
	TEST_MAIN_END();
}
