/* cli formatting helpers: times and ages, URLs, value display, errors. */
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
#include <unistd.h>

#include "cli/link_stubs.h"

/* push.c packs with the agent module's artifact_pack; the cli unit tests
 * do not link src/agent. */

static void test_time_parse(void **state)
{
    (void)state;
    int64_t ms;
    assert_int_equal(cli_time_parse("1970-01-01T00:00:00Z", &ms), 0);
    assert_int_equal(ms, 0);
    assert_int_equal(cli_time_parse("2026-11-21T12:00:00.000Z", &ms), 0);
    assert_int_equal(ms, 1795262400000LL);
    assert_int_equal(cli_time_parse("2026-11-21T12:00:00.5Z", &ms), 0);
    assert_int_equal(ms, 1795262400500LL);
    assert_int_equal(cli_time_parse("2026-11-21T12:00:00.123456Z", &ms), 0);
    assert_int_equal(ms, 1795262400123LL);
    assert_int_equal(cli_time_parse("2026-11-21T14:00:00+02:00", &ms), 0);
    assert_int_equal(ms, 1795262400000LL);
    assert_int_equal(cli_time_parse("2026-11-21T09:30:00-02:30", &ms), 0);
    assert_int_equal(ms, 1795262400000LL);
    const char *bad[] = {"",
                         "2026-11-21",
                         "2026-11-21T12:00:00",
                         "2026-13-01T00:00:00Z",
                         "2026-11-21T12:00:00.Z",
                         "2026-11-21T12:00:00Zjunk",
                         "x026-11-21T12:00:00Z",
                         "2026-11-21T25:00:00Z"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(cli_time_parse(bad[i], &ms), -EINVAL);
    assert_int_equal(cli_time_parse(NULL, &ms), -EINVAL);
}

static void test_age(void **state)
{
    (void)state;
    char b[32];
    struct {
        int64_t s;
        const char *want;
    } cases[] = {
        {-5, "0s ago"},
        {0, "0s ago"},
        {59, "59s ago"},
        {60, "1m ago"},
        {3599, "59m ago"},
        {3600, "1h ago"},
        {86399, "23h ago"},
        {86400, "1d ago"},
        {364 * 86400, "364d ago"},
        {365 * 86400, "1y ago"},
        {3 * 365 * 86400 + 5, "3y ago"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cli_age_format(cases[i].s, b, sizeof(b));
        assert_string_equal(b, cases[i].want);
    }
    int64_t now = 1795262400000LL + 5 * 60 * 1000 + 999;
    cli_age_since("2026-11-21T12:00:00.000Z", now, b, sizeof(b));
    assert_string_equal(b, "5m ago");
    cli_age_since("garbage", now, b, sizeof(b));
    assert_string_equal(b, "-");
    cli_age_since(NULL, now, b, sizeof(b));
    assert_string_equal(b, "-");
}

static void test_duration(void **state)
{
    (void)state;
    char b[32];
    cli_duration_format(12, b, sizeof(b));
    assert_string_equal(b, "12s");
    cli_duration_format(725, b, sizeof(b));
    assert_string_equal(b, "12m 5s");
    cli_duration_format(3 * 3600 + 120 + 7, b, sizeof(b));
    assert_string_equal(b, "3h 2m");
    cli_duration_format(4 * 86400 + 3600, b, sizeof(b));
    assert_string_equal(b, "4d 1h");
}

static void test_url_escape_and_app_path(void **state)
{
    (void)state;
    buf_t b = BUF_INIT(0);
    assert_int_equal(cli_url_escape(&b, "config/web/a b?&=%#\xc3\xa9~._-", true), 0);
    assert_string_equal(b.data, "config/web/a%20b%3F%26%3D%25%23%C3%A9~._-");
    buf_reset(&b);
    assert_int_equal(cli_url_escape(&b, "a/b,c", false), 0);
    assert_string_equal(b.data, "a%2Fb%2Cc");
    buf_free(&b);
    buf_t small = BUF_INIT(4);
    assert_int_equal(cli_url_escape(&small, "a b", false), -ENOBUFS);
    buf_free(&small);

    /* "." and ".." segments are escaped so no client resolves them away. */
    buf_t d = BUF_INIT(0);
    assert_int_equal(cli_url_escape(&d, "a/../b/./c/.d/e./.../..", true), 0);
    assert_string_equal(d.data, "a/%2E%2E/b/%2E/c/.d/e./.../%2E%2E");
    buf_reset(&d);
    assert_int_equal(cli_url_escape(&d, "..", true), 0);
    assert_string_equal(d.data, "%2E%2E");
    buf_reset(&d);
    assert_int_equal(cli_url_escape(&d, "1.5", false), 0);
    assert_string_equal(d.data, "1.5");
    buf_free(&d);

    char *p = cli_app_path("/production/web", NULL);
    assert_string_equal(p, "/v1/apps/production/web");
    free(p);
    p = cli_app_path("production/web", "/versions");
    assert_string_equal(p, "/v1/apps/production/web/versions");
    free(p);
    p = cli_app_path("/x y", NULL);
    assert_string_equal(p, "/v1/apps/x%20y");
    free(p);
}

static void check_display(const char *v, size_t len, size_t max, const char *want)
{
    char *s = cli_value_display(v, len, max);
    assert_string_equal(s, want);
    free(s);
}

static void test_value_display(void **state)
{
    (void)state;
    check_display("8080", 4, 40, "8080");
    check_display("", 0, 40, "");
    check_display("a\nb\tc", 5, 40, "a\\nb\\tc");
    /* 40 characters fit as they are; 41 are cut to 37 + "...". */
    const char *forty = "0123456789012345678901234567890123456789";
    check_display(forty, 40, 40, forty);
    check_display("01234567890123456789012345678901234567890", 41, 40,
                  "0123456789012345678901234567890123456...");
    /* Cut counts characters, not bytes, and never splits one. */
    check_display("\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", 12, 5, "\xc3\xa9\xc3\xa9...");
    /* Never splits an escape either. */
    check_display("abc\ndefgh", 9, 6, "abc...");
    check_display("ab\ndefgh", 8, 6, "ab...");
    check_display("\x00\x01\x02", 3, 40, "<binary 3 bytes>");
    check_display("ok\x1b[0m", 6, 40, "<binary 6 bytes>");
    check_display("\xff\xfe", 2, 40, "<binary 2 bytes>");
    check_display("\xc0\xaf", 2, 40, "<binary 2 bytes>");         /* overlong */
    check_display("\xed\xa0\x80", 3, 40, "<binary 3 bytes>");     /* surrogate */
    check_display("\xc2\x9b", 2, 40, "<binary 2 bytes>");         /* C1 control */
    check_display("\xe2\x82", 2, 40, "<binary 2 bytes>");         /* truncated */
    check_display("\xf0\x9f\x98\x80", 4, 40, "\xf0\x9f\x98\x80"); /* emoji */
}

static void test_base64_len_and_json_text(void **state)
{
    (void)state;
    assert_int_equal(cli_base64_decoded_len(""), 0);
    assert_int_equal(cli_base64_decoded_len("QQ=="), 1);
    assert_int_equal(cli_base64_decoded_len("QUI="), 2);
    assert_int_equal(cli_base64_decoded_len("QUJD"), 3);
    assert_int_equal(cli_base64_decoded_len("QUJDRA=="), 4);

    json_t *j = json_loads("[\"s\", 3, 0.5, null, true, {\"a\":1}]", 0, NULL);
    const char *want[] = {"s", "3", "0.5", "-", "true", "{\"a\":1}"};
    for (size_t i = 0; i < 6; i++) {
        char *s = cli_json_text(json_array_get(j, i));
        assert_string_equal(s, want[i]);
        free(s);
    }
    json_t *real = json_real(1.15);
    char *r = cli_json_text(real);
    assert_string_equal(r, "1.15");
    free(r);
    r = cli_json_compact(real);
    assert_string_equal(r, "1.15");
    free(r);
    json_decref(real);
    char *s = cli_json_text(NULL);
    assert_string_equal(s, "-");
    free(s);
    s = cli_json_compact(json_array_get(j, 0));
    assert_string_equal(s, "\"s\"");
    free(s);
    json_decref(j);
}

static void test_error_message(void **state)
{
    (void)state;
    char m[128];
    const char *body = "{\"error\": \"no such app /x\"}";
    cli_error_message(404, body, strlen(body), m, sizeof(m));
    assert_string_equal(m, "no such app /x");
    const char *text = "\r\nrequest body too large\r\nmore";
    cli_error_message(413, text, strlen(text), m, sizeof(m));
    assert_string_equal(m, "request body too large (HTTP 413)");
    cli_error_message(502, "", 0, m, sizeof(m));
    assert_string_equal(m, "HTTP 502");
    const char *noerr = "{\"x\": 1}";
    cli_error_message(500, noerr, strlen(noerr), m, sizeof(m));
    assert_string_equal(m, "{\"x\": 1} (HTTP 500)");
    const char *ctl = "bad\x1b[31m";
    cli_error_message(400, ctl, strlen(ctl), m, sizeof(m));
    assert_string_equal(m, "bad?[31m (HTTP 400)");
}

static void test_read_input_bounded(void **state)
{
    (void)state;
    char path[] = "/tmp/drover_cli_test_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    char data[40000];
    memset(data, 'x', sizeof(data));
    assert_int_equal(write(fd, data, sizeof(data)), (ssize_t)sizeof(data));
    close(fd);
    buf_t b = BUF_INIT(0);
    err_t err = {0};
    assert_int_equal(cli_read_input(path, sizeof(data), &b, &err), 0);
    assert_int_equal(b.len, sizeof(data));
    buf_reset(&b);
    assert_int_equal(cli_read_input(path, sizeof(data) - 1, &b, &err), -EFBIG);
    assert_non_null(strstr(err.msg, "larger than 39999 bytes"));
    buf_free(&b);
    unlink(path);
    assert_true(cli_read_input("/nonexistent/drover.json", 10, &b, &err) < 0);
    assert_non_null(strstr(err.msg, "/nonexistent/drover.json"));
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_time_parse),    cmocka_unit_test(test_age),
        cmocka_unit_test(test_duration),      cmocka_unit_test(test_url_escape_and_app_path),
        cmocka_unit_test(test_value_display), cmocka_unit_test(test_base64_len_and_json_text),
        cmocka_unit_test(test_error_message), cmocka_unit_test(test_read_input_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
