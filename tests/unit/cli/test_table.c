/* cli table printer: alignment, widths in characters, sanitizing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cli/cli.h"
#include "core/alloc.h"
#include "spec/spec.h"
#include "agent/artifact.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli/link_stubs.h"

/* push.c packs with the agent module's artifact_pack; the cli unit tests
 * do not link src/agent. */

static char *render(const cli_table_t *t)
{
    char *b = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&b, &n);
    cli_table_print(t, f);
    fclose(f);
    return b;
}

static void test_alignment(void **state)
{
    (void)state;
    static const char *const hdr[] = {"id", "version", "kind"};
    cli_table_t t;
    cli_table_init(&t, 3, hdr);
    const char *r1[] = {"/production/web", "3", "service"};
    const char *r2[] = {"/a", "12", "worker"};
    cli_table_add(&t, r1);
    cli_table_add(&t, r2);
    char *s = render(&t);
    assert_string_equal(s, "ID                VERSION   KIND\n"
                           "/production/web   3         service\n"
                           "/a                12        worker\n");
    free(s);
    cli_table_free(&t);
}

static void test_header_only(void **state)
{
    (void)state;
    static const char *const hdr[] = {"key", "value", "mod_rev"};
    cli_table_t t;
    cli_table_init(&t, 3, hdr);
    char *s = render(&t);
    assert_string_equal(s, "KEY   VALUE   MOD_REV\n");
    free(s);
    cli_table_free(&t);
}

static void test_utf8_width_and_no_trailing_blanks(void **state)
{
    (void)state;
    static const char *const hdr[] = {"a", "b", "c"};
    cli_table_t t;
    cli_table_init(&t, 3, hdr);
    const char *r1[] = {"h\xc3\xa9llo", "", ""}; /* "héllo": 5 characters, 6 bytes */
    const char *r2[] = {"x", "yy", NULL};
    cli_table_add(&t, r1);
    cli_table_add(&t, r2);
    char *s = render(&t);
    assert_string_equal(s, "A       B    C\n"
                           "h\xc3\xa9llo\n"
                           "x       yy   -\n");
    free(s);
    assert_int_equal(cli_text_width("h\xc3\xa9llo"), 5);
    assert_int_equal(cli_text_width(""), 0);
    assert_int_equal(cli_text_width("\xe2\x82\xac\xf0\x9f\x98\x80"), 2);
    cli_table_free(&t);
}

static void test_control_characters_replaced(void **state)
{
    (void)state;
    static const char *const hdr[] = {"key"};
    cli_table_t t;
    cli_table_init(&t, 1, hdr);
    const char *r1[] = {"a\nb\x1b[31m\x7f"};
    cli_table_add(&t, r1);
    char *s = render(&t);
    assert_string_equal(s, "KEY\na?b?[31m?\n");
    free(s);
    cli_table_free(&t);
}

static void test_many_rows_grow(void **state)
{
    (void)state;
    static const char *const hdr[] = {"n", "sq"};
    cli_table_t t;
    cli_table_init(&t, 2, hdr);
    for (int i = 0; i < 100; i++) {
        char a[16], b[16];
        snprintf(a, sizeof(a), "%d", i);
        snprintf(b, sizeof(b), "%d", i * i);
        const char *r[] = {a, b};
        cli_table_add(&t, r);
    }
    assert_int_equal(t.n_rows, 101);
    char *s = render(&t);
    /* Column 1 is as wide as "99", so the second column starts at 5. */
    assert_non_null(strstr(s, "\n0    0\n"));
    assert_non_null(strstr(s, "\n99   9801\n"));
    assert_true(strncmp(s, "N    SQ\n", 8) == 0);
    free(s);
    cli_table_free(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alignment),
        cmocka_unit_test(test_header_only),
        cmocka_unit_test(test_utf8_width_and_no_trailing_blanks),
        cmocka_unit_test(test_control_characters_replaced),
        cmocka_unit_test(test_many_rows_grow),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
