/* Tests for src/core/config: the accepted syntax, quoting, every error with
 * its file:line, loading from disk with the size limit, unknown-key
 * suggestions and the typed getters. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/alloc.h"
#include "core/config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static config_t *parse_ok(const char *text)
{
    config_t *c = NULL;
    err_t err = {0};
    int rc = config_parse_string(text, strlen(text), "t.conf", &c, &err);
    if (rc)
        fail_msg("unexpected error: %s", err.msg);
    assert_non_null(c);
    return c;
}

static void assert_parse_error(const char *text, size_t n, const char *msg)
{
    config_t *c = (config_t *)1;
    err_t err = {0};
    assert_int_equal(config_parse_string(text, n, "t.conf", &c, &err), -EINVAL);
    assert_null(c);
    assert_int_equal(err.code, -EINVAL);
    assert_string_equal(err.msg, msg);
}

#define PARSE_ERROR(text, msg) assert_parse_error(text, sizeof(text) - 1, msg)

static void test_happy_path(void **state)
{
    (void)state;
    config_t *c = parse_ok("# drover server config\n"
                           "\n"
                           "data-dir = /var/lib/drover\n"
                           "listen 0.0.0.0:7400\n"
                           "   indented\t=\tvalue with  inner  spaces   \n"
                           "log-level=debug\n"
                           "url = http://x/#frag # trailing comment\n"
                           "hash=#notacomment\n"
                           "\t# indented comment\n"
                           "k2 v#x\n"
                           "n1 1\n"
                           "tabbed\tv\t#c\n"
                           "a-b-9 = \"x = y\"\n"
                           "eq = =x");
    assert_int_equal(config_count(c), 11);
    assert_string_equal(config_get(c, "data-dir"), "/var/lib/drover");
    assert_string_equal(config_get(c, "listen"), "0.0.0.0:7400");
    assert_string_equal(config_get(c, "indented"), "value with  inner  spaces");
    assert_string_equal(config_get(c, "log-level"), "debug");
    assert_string_equal(config_get(c, "url"), "http://x/#frag");
    assert_string_equal(config_get(c, "hash"), "#notacomment");
    assert_string_equal(config_get(c, "k2"), "v#x");
    assert_string_equal(config_get(c, "n1"), "1");
    assert_string_equal(config_get(c, "tabbed"), "v");
    assert_string_equal(config_get(c, "a-b-9"), "x = y");
    assert_string_equal(config_get(c, "eq"), "=x");
    assert_null(config_get(c, "missing"));
    assert_null(config_get(c, "data"));
    assert_int_equal(config_line(c, "data-dir"), 3);
    assert_int_equal(config_line(c, "eq"), 14);
    assert_int_equal(config_line(c, "missing"), 0);
    assert_string_equal(config_name(c), "t.conf");
    /* keys in file order */
    const char *order[] = {"data-dir", "listen", "indented", "log-level", "url", "hash",
                           "k2",       "n1",     "tabbed",   "a-b-9",     "eq"};
    for (size_t i = 0; i < 11; i++)
        assert_string_equal(config_key(c, i), order[i]);
    assert_string_equal(config_value(c, 1), "0.0.0.0:7400");
    assert_null(config_key(c, 11));
    assert_null(config_value(c, 99));
    config_free(c);
}

static void test_empty_and_line_ends(void **state)
{
    (void)state;
    config_t *c = parse_ok("");
    assert_int_equal(config_count(c), 0);
    assert_null(config_get(c, "x"));
    config_free(c);
    c = parse_ok("\n\n# only comments\n   \n");
    assert_int_equal(config_count(c), 0);
    config_free(c);
    /* CRLF, a BOM, no final newline */
    c = parse_ok("\xef\xbb\xbf"
                 "a = 1\r\nb \"two\"\r\n\r\nc 3");
    assert_string_equal(config_get(c, "a"), "1");
    assert_string_equal(config_get(c, "b"), "two");
    assert_string_equal(config_get(c, "c"), "3");
    assert_int_equal(config_line(c, "c"), 4);
    config_free(c);
    config_free(NULL);
}

static void test_quoting(void **state)
{
    (void)state;
    config_t *c = parse_ok("a = \"say \\\"hi\\\"\"\n"
                           "b = \"back\\\\slash\"\n"
                           "c = \"two\\nlines\"\n"
                           "d = \"\"\n"
                           "e = \"# not a comment\"   # a comment\n"
                           "f = \"  padded  \"\n"
                           "g \"tab\there\"\n"
                           "h = a\"b\n");
    assert_string_equal(config_get(c, "a"), "say \"hi\"");
    assert_string_equal(config_get(c, "b"), "back\\slash");
    assert_string_equal(config_get(c, "c"), "two\nlines");
    assert_string_equal(config_get(c, "d"), "");
    assert_string_equal(config_get(c, "e"), "# not a comment");
    assert_string_equal(config_get(c, "f"), "  padded  ");
    assert_string_equal(config_get(c, "g"), "tab\there");
    assert_string_equal(config_get(c, "h"), "a\"b");
    config_free(c);
}

static void test_errors(void **state)
{
    (void)state;
    PARSE_ERROR("ok = 1\nbad = \"open\n",
                "t.conf:2: unterminated quoted value (missing closing \")");
    PARSE_ERROR("bad = \"ends with \\", "t.conf:1: unterminated quoted value (line ends after \\)");
    PARSE_ERROR(
        "\n\nbad = \"a\\tb\"",
        "t.conf:3: unknown escape \\ followed by 't' in quoted value (use \\\", \\\\ or \\n)");
    PARSE_ERROR("bad = \"a\" b",
                "t.conf:1: unexpected text after the quoted value (a comment needs #)");
    PARSE_ERROR("bad = \"a\"#c",
                "t.conf:1: unexpected text after the quoted value (a comment needs #)");
    PARSE_ERROR("Data-dir = x", "t.conf:1: invalid character 'D' in key (keys use a-z, 0-9 and -)");
    PARSE_ERROR("x=1\ndata_dir = x",
                "t.conf:2: invalid character '_' in key (keys use a-z, 0-9 and -)");
    PARSE_ERROR("key#x", "t.conf:1: invalid character '#' in key (keys use a-z, 0-9 and -)");
    PARSE_ERROR("= x", "t.conf:1: missing key before =");
    PARSE_ERROR("\"q\" = x", "t.conf:1: invalid character '\"' in key (keys use a-z, 0-9 and -)");
    PARSE_ERROR("a=1\nb=2\nlonely",
                "t.conf:3: key \"lonely\" has no value (write \"\" for an empty one)");
    PARSE_ERROR("k =", "t.conf:1: key \"k\" has no value (write \"\" for an empty one)");
    PARSE_ERROR("k = # just a comment",
                "t.conf:1: key \"k\" has no value (write \"\" for an empty one)");
    PARSE_ERROR("k   # just a comment",
                "t.conf:1: key \"k\" has no value (write \"\" for an empty one)");
    PARSE_ERROR("a = 1\nb = 2\n\n# c\na = 3\n",
                "t.conf:5: duplicate key \"a\" (first set on line 1)");
    PARSE_ERROR("a = x\x01y", "t.conf:1: control character (byte 0x01) in value");
    PARSE_ERROR("a = \"x\x1by\"", "t.conf:1: control character (byte 0x1b) in value");
    PARSE_ERROR("a = x\ry", "t.conf:1: control character (byte 0x0d) in value");
    PARSE_ERROR("a = 1\nb = x\0y\n", "t.conf:2: NUL byte in line");
    PARSE_ERROR("\xc3\xa9t\xc3\xa9 = 1",
                "t.conf:1: invalid character byte 0xc3 in key (keys use a-z, 0-9 and -)");
}

static void test_too_big_string(void **state)
{
    (void)state;
    size_t n = CONFIG_MAX_BYTES + 1;
    char *text = xmalloc(n);
    memset(text, '\n', n);
    config_t *c = NULL;
    err_t err = {0};
    assert_int_equal(config_parse_string(text, n, "big.conf", &c, &err), -EFBIG);
    assert_null(c);
    assert_string_equal(err.msg, "big.conf: larger than 1048576 bytes");
    /* exactly the limit is fine */
    assert_int_equal(config_parse_string(text, n - 1, "big.conf", &c, &err), 0);
    config_free(c);
    free(text);
}

/* Many keys: the index handles growth and still finds duplicates. */
static void test_many_keys(void **state)
{
    (void)state;
    char *text = xmalloc(20 * 5000 + 64);
    size_t len = 0;
    for (int i = 0; i < 5000; i++)
        len += (size_t)snprintf(text + len, 32, "key-%d = v%d\n", i, i);
    config_t *c = NULL;
    err_t err = {0};
    assert_int_equal(config_parse_string(text, len, "m", &c, &err), 0);
    assert_int_equal(config_count(c), 5000);
    assert_string_equal(config_get(c, "key-0"), "v0");
    assert_string_equal(config_get(c, "key-4999"), "v4999");
    assert_string_equal(config_get(c, "key-1234"), "v1234");
    assert_int_equal(config_line(c, "key-1234"), 1235);
    assert_null(config_get(c, "key-5000"));
    config_free(c);
    len += (size_t)snprintf(text + len, 32, "key-2500 = again\n");
    assert_int_equal(config_parse_string(text, len, "m", &c, &err), -EINVAL);
    assert_string_equal(err.msg, "m:5001: duplicate key \"key-2500\" (first set on line 2501)");
    free(text);
}

static char tmpdir[64];

static int setup_tmp(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/drover-config-test-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_tmp(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static char *write_file(const char *name, const char *data, size_t n)
{
    char *path = xasprintf("%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
    return path;
}

static void test_load(void **state)
{
    (void)state;
    const char *text = "data-dir = /srv\nlisten :7400\n";
    char *path = write_file("ok.conf", text, strlen(text));
    config_t *c = NULL;
    err_t err = {0};
    assert_int_equal(config_load(path, &c, &err), 0);
    assert_string_equal(config_get(c, "data-dir"), "/srv");
    assert_string_equal(config_name(c), path);
    config_free(c);
    free(path);

    path = write_file("bad.conf", "a = 1\nB = 2\n", 12);
    assert_int_equal(config_load(path, &c, &err), -EINVAL);
    assert_null(c);
    char *want = xasprintf("%s:2: invalid character 'B' in key (keys use a-z, 0-9 and -)", path);
    assert_string_equal(err.msg, want);
    free(want);
    free(path);

    path = xasprintf("%s/missing.conf", tmpdir);
    assert_int_equal(config_load(path, &c, &err), -ENOENT);
    want = xasprintf("cannot read %s: No such file or directory", path);
    assert_string_equal(err.msg, want);
    free(want);
    free(path);

    assert_int_equal(config_load(tmpdir, &c, &err), -EISDIR);
    assert_null(c);
}

static void test_load_size_limit(void **state)
{
    (void)state;
    size_t n = CONFIG_MAX_BYTES;
    char *data = xmalloc(n + 1);
    memset(data, '#', n + 1);
    data[n - 1] = '\n';
    char *path = write_file("exact.conf", data, n);
    config_t *c = NULL;
    err_t err = {0};
    assert_int_equal(config_load(path, &c, &err), 0);
    assert_int_equal(config_count(c), 0);
    config_free(c);
    free(path);
    path = write_file("big.conf", data, n + 1);
    assert_int_equal(config_load(path, &c, &err), -EFBIG);
    assert_null(c);
    char *want = xasprintf("%s: larger than 1048576 bytes (1 MiB)", path);
    assert_string_equal(err.msg, want);
    free(want);
    free(path);
    free(data);
}

static const char *const known[] = {"data-dir",   "listen",    "log-level",
                                    "log-format", "node-name", NULL};

static void test_check_known(void **state)
{
    (void)state;
    config_t *c = parse_ok("listen :1\ndata-dir /x\n");
    err_t err = {0};
    assert_int_equal(config_check_known(c, known, &err), 0);
    config_free(c);

    c = parse_ok("listen :1\n\n# x\ndta-dir /x\nlog-levle debug\n");
    assert_int_equal(config_check_known(c, known, &err), -EINVAL);
    assert_string_equal(err.msg, "t.conf:4: unknown key \"dta-dir\" (did you mean \"data-dir\"?)");
    config_free(c);

    c = parse_ok("log-levle debug\n");
    assert_int_equal(config_check_known(c, known, &err), -EINVAL);
    assert_string_equal(err.msg,
                        "t.conf:1: unknown key \"log-levle\" (did you mean \"log-level\"?)");
    config_free(c);

    c = parse_ok("listen-addr x\n");
    assert_int_equal(config_check_known(c, known, &err), -EINVAL);
    assert_string_equal(err.msg, "t.conf:1: unknown key \"listen-addr\"");
    config_free(c);

    c = parse_ok("zzz 1\n");
    assert_int_equal(config_check_known(c, known, &err), -EINVAL);
    assert_string_equal(err.msg, "t.conf:1: unknown key \"zzz\"");
    config_free(c);

    /* the closest of several near misses wins */
    c = parse_ok("log-formt json\n");
    assert_int_equal(config_check_known(c, known, &err), -EINVAL);
    assert_string_equal(err.msg,
                        "t.conf:1: unknown key \"log-formt\" (did you mean \"log-format\"?)");
    config_free(c);

    /* a very long key gives no suggestion and no slowness */
    char *longkey = xmalloc(200001 + 8);
    memset(longkey, 'a', 200000);
    memcpy(longkey + 200000, " 1\n", 4);
    c = parse_ok(longkey);
    assert_int_equal(config_check_known(c, known, &err), -EINVAL);
    assert_true(strncmp(err.msg, "t.conf:1: unknown key \"aaaa", 27) == 0);
    config_free(c);
    free(longkey);

    const char *const none[] = {NULL};
    c = parse_ok("a 1\n");
    assert_int_equal(config_check_known(c, none, &err), -EINVAL);
    config_free(c);
}

static void test_typed(void **state)
{
    (void)state;
    config_t *c = parse_ok("workers 8\nneg -3\nbig 99999999999999999999\nwords 1x\n"
                           "timeout 250ms\nbad-timeout soon\n"
                           "cache 64k\nbad-cache 64q\n"
                           "t1 yes\nt2 off\nt3 maybe\n");
    err_t err = {0};
    int64_t i = 42;
    assert_int_equal(config_get_i64(c, "absent", 0, 100, &i, &err), 0);
    assert_int_equal(i, 42);
    assert_int_equal(config_get_i64(c, "workers", 1, 64, &i, &err), 0);
    assert_int_equal(i, 8);
    assert_int_equal(config_get_i64(c, "neg", -10, 10, &i, &err), 0);
    assert_int_equal(i, -3);
    assert_int_equal(config_get_i64(c, "workers", 1, 4, &i, &err), -EINVAL);
    assert_string_equal(err.msg, "t.conf:1: workers: 8 is out of range [1, 4]");
    assert_int_equal(config_get_i64(c, "big", 0, INT64_MAX, &i, &err), -EINVAL);
    assert_string_equal(
        err.msg, "t.conf:3: big: 99999999999999999999 is out of range [0, 9223372036854775807]");
    assert_int_equal(config_get_i64(c, "words", 0, 10, &i, &err), -EINVAL);
    assert_string_equal(err.msg, "t.conf:4: words: expected an integer, got \"1x\"");
    assert_int_equal(i, -3);

    int64_t ms = 0;
    assert_int_equal(config_get_duration_ms(c, "timeout", &ms, &err), 0);
    assert_int_equal(ms, 250);
    assert_int_equal(config_get_duration_ms(c, "bad-timeout", &ms, &err), -EINVAL);
    assert_string_equal(
        err.msg,
        "t.conf:6: bad-timeout: expected a duration like 250ms, 30s, 5m or 1h, got \"soon\"");
    assert_int_equal(config_get_duration_ms(c, "absent", &ms, &err), 0);
    assert_int_equal(ms, 250);

    size_t sz = 0;
    assert_int_equal(config_get_size(c, "cache", &sz, &err), 0);
    assert_int_equal(sz, 65536);
    assert_int_equal(config_get_size(c, "bad-cache", &sz, &err), -EINVAL);
    assert_string_equal(
        err.msg, "t.conf:8: bad-cache: expected a size like 512, 64k, 1m or 2g, got \"64q\"");

    bool b = false;
    assert_int_equal(config_get_bool(c, "t1", &b, &err), 0);
    assert_true(b);
    assert_int_equal(config_get_bool(c, "t2", &b, &err), 0);
    assert_false(b);
    assert_int_equal(config_get_bool(c, "t3", &b, &err), -EINVAL);
    assert_string_equal(err.msg, "t.conf:11: t3: expected true or false, got \"maybe\"");
    config_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_happy_path),     cmocka_unit_test(test_empty_and_line_ends),
        cmocka_unit_test(test_quoting),        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_too_big_string), cmocka_unit_test(test_many_keys),
        cmocka_unit_test(test_load),           cmocka_unit_test(test_load_size_limit),
        cmocka_unit_test(test_check_known),    cmocka_unit_test(test_typed),
    };
    return cmocka_run_group_tests(tests, setup_tmp, teardown_tmp);
}
