/* Tests for the small core modules: err, buf, str, json, log. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/err.h"
#include "core/json.h"
#include "core/log.h"
#include "core/str.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- err ---------------------------------------------------------------- */

static void test_err_set_and_str(void **state)
{
    (void)state;
    err_t e = {0};
    assert_int_equal(err_set(&e, -EINVAL, "bad port %d", 70000), -EINVAL);
    assert_int_equal(e.code, -EINVAL);
    assert_string_equal(e.msg, "bad port 70000");
    assert_string_equal(err_str(&e, -EIO), "bad port 70000");
    assert_int_equal(err_set(NULL, -ENOENT, "ignored"), -ENOENT);
    assert_string_equal(err_str(NULL, -ENOENT), strerror(ENOENT));
    err_clear(&e);
    assert_int_equal(e.code, 0);
    assert_string_equal(e.msg, "");
    assert_string_equal(err_str(&e, -EIO), strerror(EIO));
    err_clear(NULL);

    /* messages are truncated, never overflow */
    char big[2 * ERR_MSG_MAX];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    err_set(&e, -EINVAL, "%s", big);
    assert_int_equal(strlen(e.msg), ERR_MSG_MAX - 1);
}

static void test_err_wrap(void **state)
{
    (void)state;
    err_t e = {0};
    err_set(&e, -ENOENT, "key \"a\" not found");
    assert_int_equal(err_wrap(&e, -EIO, "loading %s", "x.conf"), -ENOENT);
    assert_string_equal(e.msg, "loading x.conf: key \"a\" not found");
    assert_int_equal(e.code, -ENOENT); /* the original cause is kept */
    err_wrap(&e, -EIO, "server");
    assert_string_equal(e.msg, "server: loading x.conf: key \"a\" not found");

    /* wrapping an empty error describes the code */
    err_t f = {0};
    assert_int_equal(err_wrap(&f, -EACCES, "opening %s", "/etc/x"), -EACCES);
    assert_int_equal(f.code, -EACCES);
    char *want = xasprintf("opening /etc/x: %s", strerror(EACCES));
    assert_string_equal(f.msg, want);
    free(want);

    assert_int_equal(err_wrap(NULL, -EPIPE, "x"), -EPIPE);

    /* a long chain stays bounded and keeps the newest context first */
    err_t g = {0};
    err_set(&g, -EINVAL, "root cause");
    for (int i = 0; i < 100; i++)
        err_wrap(&g, -EIO, "layer %d", i);
    assert_true(strlen(g.msg) < ERR_MSG_MAX);
    assert_true(strncmp(g.msg, "layer 99: layer 98: ", 20) == 0);
}

/* ---- buf ---------------------------------------------------------------- */

static void test_buf_basic(void **state)
{
    (void)state;
    buf_t b = BUF_INIT(0);
    assert_null(b.data);
    assert_int_equal(buf_append(&b, "abc", 3), 0);
    assert_int_equal(buf_append_str(&b, "def"), 0);
    assert_int_equal(buf_printf(&b, "-%d-%s", 42, "x"), 0);
    assert_int_equal(b.len, 11);
    assert_string_equal(b.data, "abcdef-42-x"); /* NUL-terminated */
    buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_non_null(b.data);
    assert_string_equal(b.data, "");
    /* large appends grow the buffer */
    char *big = xcalloc(1, 100000);
    assert_int_equal(buf_append(&b, big, 100000), 0);
    assert_int_equal(b.len, 100000);
    assert_true(b.cap > 100000);
    free(big);
    buf_free(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
}

static void test_buf_limits(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b, 8);
    assert_int_equal(buf_append(&b, "12345", 5), 0);
    assert_int_equal(buf_append(&b, "6789", 4), -ENOBUFS);
    assert_int_equal(b.len, 5);
    assert_string_equal(b.data, "12345");
    assert_int_equal(buf_printf(&b, "%s", "6789"), -ENOBUFS);
    assert_int_equal(b.len, 5);
    assert_string_equal(b.data, "12345");
    assert_int_equal(buf_append_str(&b, "678"), 0);
    assert_int_equal(b.len, 8);
    assert_string_equal(b.data, "12345678");
    assert_int_equal(buf_append(&b, "9", 1), -ENOBUFS);
    assert_int_equal(buf_append(&b, "", 0), 0);
    assert_string_equal(b.data, "12345678");
    /* consuming makes room again */
    buf_consume(&b, 3);
    assert_int_equal(buf_append(&b, "abc", 3), 0);
    assert_string_equal(b.data, "45678abc");
    buf_free(&b);

    /* the first append can already be too big */
    buf_t c = BUF_INIT(4);
    assert_int_equal(buf_append(&c, "12345", 5), -ENOBUFS);
    assert_int_equal(c.len, 0);
    assert_int_equal(buf_printf(&c, "%d", 12345), -ENOBUFS);
    assert_int_equal(c.len, 0);
    buf_free(&c);
}

static void test_buf_consume_steal(void **state)
{
    (void)state;
    buf_t b = BUF_INIT(0);
    buf_append_str(&b, "hello world");
    buf_consume(&b, 6);
    assert_int_equal(b.len, 5);
    assert_string_equal(b.data, "world");
    buf_consume(&b, 0);
    assert_string_equal(b.data, "world");
    buf_consume(&b, 5);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.data, "");
    buf_append_str(&b, "again");
    size_t len = 0;
    char *s = buf_steal(&b, &len);
    assert_int_equal(len, 5);
    assert_string_equal(s, "again");
    free(s);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);
    /* the buffer is usable after a steal */
    assert_int_equal(buf_append_str(&b, "x"), 0);
    assert_string_equal(b.data, "x");
    buf_free(&b);
    /* stealing an untouched buffer gives an empty string, not NULL */
    buf_t e = BUF_INIT(0);
    s = buf_steal(&e, &len);
    assert_non_null(s);
    assert_int_equal(len, 0);
    assert_string_equal(s, "");
    free(s);
    s = buf_steal(&e, NULL);
    free(s);
}

/* ---- str ---------------------------------------------------------------- */

static void test_str_to_i64(void **state)
{
    (void)state;
    int64_t v = 99;
    assert_int_equal(str_to_i64("0", 0, 10, &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(str_to_i64("-42", -100, 100, &v), 0);
    assert_int_equal(v, -42);
    assert_int_equal(str_to_i64("9223372036854775807", INT64_MIN, INT64_MAX, &v), 0);
    assert_true(v == INT64_MAX);
    assert_int_equal(str_to_i64("-9223372036854775808", INT64_MIN, INT64_MAX, &v), 0);
    assert_true(v == INT64_MIN);
    v = 99;
    assert_int_equal(str_to_i64("9223372036854775808", INT64_MIN, INT64_MAX, &v), -ERANGE);
    assert_int_equal(str_to_i64("-9223372036854775809", INT64_MIN, INT64_MAX, &v), -ERANGE);
    assert_int_equal(str_to_i64("11", 0, 10, &v), -ERANGE);
    assert_int_equal(str_to_i64("-1", 0, 10, &v), -ERANGE);
    assert_int_equal(v, 99); /* untouched on failure */
    assert_int_equal(str_to_i64("", 0, 10, &v), -EINVAL);
    assert_int_equal(str_to_i64(NULL, 0, 10, &v), -EINVAL);
    assert_int_equal(str_to_i64(" 5", 0, 10, &v), -EINVAL);
    assert_int_equal(str_to_i64("5 ", 0, 10, &v), -EINVAL);
    assert_int_equal(str_to_i64("5x", 0, 10, &v), -EINVAL);
    assert_int_equal(str_to_i64("0x10", 0, 100, &v), -EINVAL);
    assert_int_equal(str_to_i64("1.0", 0, 10, &v), -EINVAL);
    assert_int_equal(str_to_i64("-", 0, 10, &v), -EINVAL);
    assert_int_equal(v, 99);
    assert_int_equal(str_to_i64("007", 0, 10, &v), 0); /* decimal, not octal */
    assert_int_equal(v, 7);
}

static void test_str_duration(void **state)
{
    (void)state;
    int64_t ms = -1;
    assert_int_equal(str_to_duration_ms("250ms", &ms), 0);
    assert_int_equal(ms, 250);
    assert_int_equal(str_to_duration_ms("30s", &ms), 0);
    assert_int_equal(ms, 30000);
    assert_int_equal(str_to_duration_ms("30", &ms), 0);
    assert_int_equal(ms, 30000);
    assert_int_equal(str_to_duration_ms("5m", &ms), 0);
    assert_int_equal(ms, 300000);
    assert_int_equal(str_to_duration_ms("1h", &ms), 0);
    assert_int_equal(ms, 3600000);
    assert_int_equal(str_to_duration_ms("1.5s", &ms), 0);
    assert_int_equal(ms, 1500);
    assert_int_equal(str_to_duration_ms("0", &ms), 0);
    assert_int_equal(ms, 0);
    ms = -1;
    assert_int_equal(str_to_duration_ms("", &ms), -EINVAL);
    assert_int_equal(str_to_duration_ms("s", &ms), -EINVAL);
    assert_int_equal(str_to_duration_ms("-1s", &ms), -EINVAL);
    assert_int_equal(str_to_duration_ms("+1s", &ms), -EINVAL);
    assert_int_equal(str_to_duration_ms(" 1s", &ms), -EINVAL);
    assert_int_equal(str_to_duration_ms("5 s", &ms), -EINVAL);
    assert_int_equal(str_to_duration_ms("5sec", &ms), -EINVAL);
    assert_int_equal(str_to_duration_ms("5d", &ms), -EINVAL);
    assert_int_equal(str_to_duration_ms("5S", &ms), -EINVAL);
    assert_int_equal(str_to_duration_ms("1e400", &ms), -EINVAL);
    assert_int_equal(str_to_duration_ms("inf", &ms), -EINVAL);
    assert_int_equal(str_to_duration_ms("9e15", &ms), -EINVAL);
    assert_int_equal(str_to_duration_ms("0x10", &ms), -EINVAL);
    assert_int_equal(str_to_duration_ms("9000000000000000", &ms), -ERANGE);
    assert_int_equal(ms, -1);
}

/* strtod accepts "nan"; casting a NaN to an integer is undefined
 * behaviour, so str must refuse it before converting. */
static void test_str_nan_rejected(void **state)
{
    (void)state;
    int64_t ms = -1;
    size_t sz = 7;
    assert_int_equal(str_to_duration_ms("nan", &ms), -EINVAL);
    assert_int_equal(str_to_size("nan", &sz), -EINVAL);
    assert_int_equal(ms, -1);
    assert_int_equal(sz, 7);
}

static void test_str_size(void **state)
{
    (void)state;
    size_t v = 7;
    assert_int_equal(str_to_size("512", &v), 0);
    assert_int_equal(v, 512);
    assert_int_equal(str_to_size("64k", &v), 0);
    assert_int_equal(v, 65536);
    assert_int_equal(str_to_size("64K", &v), 0);
    assert_int_equal(v, 65536);
    assert_int_equal(str_to_size("64kb", &v), 0);
    assert_int_equal(v, 65536);
    assert_int_equal(str_to_size("64KiB", &v), 0);
    assert_int_equal(v, 65536);
    assert_int_equal(str_to_size("1m", &v), 0);
    assert_int_equal(v, 1048576);
    assert_int_equal(str_to_size("2g", &v), 0);
    assert_int_equal(v, 2147483648u);
    assert_int_equal(str_to_size("1.5k", &v), 0);
    assert_int_equal(v, 1536);
    assert_int_equal(str_to_size("0", &v), 0);
    assert_int_equal(v, 0);
    v = 7;
    assert_int_equal(str_to_size("", &v), -EINVAL);
    assert_int_equal(str_to_size("k", &v), -EINVAL);
    assert_int_equal(str_to_size("-1", &v), -EINVAL);
    assert_int_equal(str_to_size("1t", &v), -EINVAL);
    assert_int_equal(str_to_size("64 k", &v), -EINVAL);
    assert_int_equal(str_to_size("64kx", &v), -EINVAL);
    assert_int_equal(str_to_size("64kbb", &v), -EINVAL);
    assert_int_equal(str_to_size("64b", &v), -EINVAL);
    assert_int_equal(str_to_size("2e18", &v), -EINVAL);
    assert_int_equal(str_to_size("2000000000000000000", &v), -ERANGE);
    assert_int_equal(str_to_size("inf", &v), -EINVAL);
    assert_int_equal(v, 7);
}

static void test_str_prefix_suffix(void **state)
{
    (void)state;
    assert_true(str_has_prefix("/v1/apps", "/v1/"));
    assert_true(str_has_prefix("abc", ""));
    assert_false(str_has_prefix("/v", "/v1/"));
    assert_true(str_has_suffix("file.conf", ".conf"));
    assert_true(str_has_suffix("x", ""));
    assert_false(str_has_suffix("conf", ".conf"));
}

static void test_str_url_decode(void **state)
{
    (void)state;
    size_t n = 99;
    char *s = str_url_decode("a%20b%2Fc%2fd+e", 15, &n);
    assert_non_null(s);
    assert_string_equal(s, "a b/c/d+e");
    assert_int_equal(n, 9);
    free(s);
    /* only n bytes are read */
    s = str_url_decode("abc%41", 3, &n);
    assert_string_equal(s, "abc");
    free(s);
    s = str_url_decode("", 0, &n);
    assert_string_equal(s, "");
    assert_int_equal(n, 0);
    free(s);
    s = str_url_decode("%C3%A9", 6, NULL);
    assert_string_equal(s, "\xc3\xa9");
    free(s);
    /* malformed escapes and NUL are refused */
    assert_null(str_url_decode("%", 1, &n));
    assert_null(str_url_decode("a%2", 3, &n));
    assert_null(str_url_decode("%zz", 3, &n));
    assert_null(str_url_decode("%g0", 3, &n));
    assert_null(str_url_decode("%0g", 3, &n));
    assert_null(str_url_decode("%00", 3, &n));
    assert_null(str_url_decode("a\0b", 3, &n));
    /* "%4" followed by a byte outside n is still a truncated escape */
    assert_null(str_url_decode("%41", 2, &n));
}

static void test_str_split_hostport(void **state)
{
    (void)state;
    char *host = NULL;
    int port = -1;
    assert_int_equal(str_split_hostport("127.0.0.1:7400", &host, &port), 0);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 7400);
    free(host);
    assert_int_equal(str_split_hostport("[::1]:10053", &host, &port), 0);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 10053);
    free(host);
    assert_int_equal(str_split_hostport("[fe80::1%eth0]:80", &host, &port), 0);
    assert_string_equal(host, "fe80::1%eth0");
    free(host);
    assert_int_equal(str_split_hostport("example.com:0", &host, &port), 0);
    assert_int_equal(port, 0);
    free(host);
    assert_int_equal(str_split_hostport("h:65535", &host, &port), 0);
    assert_int_equal(port, 65535);
    free(host);
    /* an empty host means "any" for listeners */
    assert_int_equal(str_split_hostport(":8080", &host, &port), 0);
    assert_string_equal(host, "");
    free(host);
    host = NULL;
    assert_int_equal(str_split_hostport("host", &host, &port), -EINVAL);
    assert_int_equal(str_split_hostport("host:", &host, &port), -EINVAL);
    assert_int_equal(str_split_hostport("host:65536", &host, &port), -EINVAL);
    assert_int_equal(str_split_hostport("host:-1", &host, &port), -EINVAL);
    assert_int_equal(str_split_hostport("host:http", &host, &port), -EINVAL);
    assert_int_equal(str_split_hostport("[::1]", &host, &port), -EINVAL);
    assert_int_equal(str_split_hostport("[::1]80", &host, &port), -EINVAL);
    assert_int_equal(str_split_hostport("[::1:80", &host, &port), -EINVAL);
    assert_int_equal(str_split_hostport("::1:80", &host, &port), -EINVAL);
    assert_int_equal(str_split_hostport("host:+80", &host, &port), -EINVAL);
    assert_null(host);
}

/* ---- json --------------------------------------------------------------- */

static void test_json_canonical(void **state)
{
    (void)state;
    err_t err = {0};
    const char *in = "{ \"b\": 1, \"a\": [3, {\"z\": null, \"y\": \"s\"}], \"c\": {} }";
    json_t *v = json_parse(in, strlen(in), &err);
    assert_non_null(v);
    size_t len = 0;
    char *s = json_canonical(v, &len);
    assert_string_equal(s, "{\"a\":[3,{\"y\":\"s\",\"z\":null}],\"b\":1,\"c\":{}}");
    assert_int_equal(len, strlen(s));
    free(s);
    /* key order of construction does not matter */
    json_t *w = json_pack("{s:{s:s, s:n}, s:i, s:[i, {}]}", "a", "z", "s", "y", "b", 1, "c", 3);
    json_t *x = json_pack("{s:[i, {}], s:i, s:{s:n, s:s}}", "c", 3, "b", 1, "a", "y", "z", "s");
    char *s1 = json_canonical(w, NULL), *s2 = json_canonical(x, NULL);
    assert_string_equal(s1, s2);
    free(s1);
    free(s2);
    json_decref(w);
    json_decref(x);
    json_decref(v);
    /* scalars and NULL */
    json_t *n = json_integer(5);
    s = json_canonical(n, NULL);
    assert_string_equal(s, "5");
    free(s);
    json_decref(n);
    s = json_canonical(NULL, &len);
    assert_string_equal(s, "null");
    free(s);
}

static void test_json_parse_errors(void **state)
{
    (void)state;
    err_t err = {0};
    assert_null(json_parse("{\"a\":1,}", 8, &err));
    assert_int_equal(err.code, -EINVAL);
    assert_string_equal(err.msg,
                        "invalid JSON at line 1 column 8: string or '}' expected near '}'");
    assert_null(json_parse("{\n\"a\": 1,\n\"a\": 2}", 17, &err));
    assert_string_equal(err.msg,
                        "invalid JSON at line 3 column 3: duplicate object key near '\"a\"'");
    assert_null(json_parse("", 0, &err));
    assert_true(strncmp(err.msg, "invalid JSON at line", 20) == 0);
    assert_null(json_parse("[1] x", 5, NULL));
    /* only n bytes are parsed */
    json_t *v = json_parse("[1]garbage", 3, &err);
    assert_non_null(v);
    json_decref(v);
}

static void test_json_helpers(void **state)
{
    (void)state;
    json_t *o = json_pack("{s:s, s:i}", "name", "web", "port", 80);
    assert_string_equal(json_str(o, "name"), "web");
    assert_null(json_str(o, "port"));
    assert_null(json_str(o, "missing"));
    assert_null(json_str(NULL, "name"));
    json_decref(o);
    json_t *errors = json_array();
    json_error_push(errors, "$.instances", "must be >= %d", 0);
    json_error_push(errors, "$.id", "required");
    char *s = json_canonical(errors, NULL);
    assert_string_equal(s, "[{\"path\":\"$.instances\",\"reason\":\"must be >= 0\"},"
                           "{\"path\":\"$.id\",\"reason\":\"required\"}]");
    free(s);
    json_decref(errors);
}

/* ---- log ---------------------------------------------------------------- */

static void test_log_parse(void **state)
{
    (void)state;
    log_level_t l = LOG_INFO;
    assert_int_equal(log_level_parse("debug", &l), 0);
    assert_int_equal(l, LOG_DEBUG);
    assert_int_equal(log_level_parse("info", &l), 0);
    assert_int_equal(l, LOG_INFO);
    assert_int_equal(log_level_parse("warn", &l), 0);
    assert_int_equal(l, LOG_WARN);
    assert_int_equal(log_level_parse("error", &l), 0);
    assert_int_equal(l, LOG_ERROR);
    assert_int_equal(log_level_parse("off", &l), 0);
    assert_int_equal(l, LOG_OFF);
    assert_int_equal(log_level_parse("WARN", &l), -EINVAL);
    assert_int_equal(log_level_parse("warning", &l), -EINVAL);
    assert_int_equal(log_level_parse("", &l), -EINVAL);
    assert_int_equal(l, LOG_OFF);
    log_format_t f = LOG_TEXT;
    assert_int_equal(log_format_parse("json", &f), 0);
    assert_int_equal(f, LOG_JSON);
    assert_int_equal(log_format_parse("text", &f), 0);
    assert_int_equal(f, LOG_TEXT);
    assert_int_equal(log_format_parse("xml", &f), -EINVAL);
    assert_int_equal(f, LOG_TEXT);
}

/* Run fn with stderr redirected to a temp file; return what it wrote. */
static char *capture_stderr(void (*fn)(void))
{
    char path[] = "/tmp/drover-log-test-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    int saved = dup(2);
    dup2(fd, 2);
    fn();
    dup2(saved, 2);
    close(saved);
    off_t size = lseek(fd, 0, SEEK_END);
    char *out = xcalloc(1, (size_t)size + 1);
    assert_int_equal(pread(fd, out, (size_t)size, 0), size);
    close(fd);
    return out;
}

static void log_levels_body(void)
{
    log_setup(LOG_WARN, LOG_TEXT);
    log_debug("t", "hidden debug");
    log_info("t", "hidden info");
    log_warn("store", "shown %d", 1);
    log_error("http", "shown %s", "two");
    assert_false(log_enabled(LOG_INFO));
    assert_true(log_enabled(LOG_WARN));
    log_setup(LOG_OFF, LOG_TEXT);
    log_error("t", "hidden error");
}

static void test_log_levels_text(void **state)
{
    (void)state;
    char *out = capture_stderr(log_levels_body);
    assert_null(strstr(out, "hidden"));
    /* "2024-01-02T03:04:05.678Z warn  store: shown 1\n" */
    char *l1 = out, *l2 = strchr(out, '\n');
    assert_non_null(l2);
    *l2++ = '\0';
    assert_int_equal(strlen(l1), 24 + strlen(" warn  store: shown 1"));
    assert_true(l1[4] == '-' && l1[10] == 'T' && l1[19] == '.' && l1[23] == 'Z');
    assert_string_equal(l1 + 24, " warn  store: shown 1");
    assert_string_equal(l2 + 24, " error http: shown two\n");
    free(out);
}

static void log_json_body(void)
{
    log_setup(LOG_DEBUG, LOG_JSON);
    log_debug("api", "quote \" backslash \\ newline \n tab \t");
    log_setup(LOG_INFO, LOG_TEXT);
}

static void test_log_json(void **state)
{
    (void)state;
    char *out = capture_stderr(log_json_body);
    size_t n = strlen(out);
    assert_true(n > 0 && out[n - 1] == '\n');
    err_t err = {0};
    json_t *v = json_parse(out, n, &err);
    if (!v)
        fail_msg("log line is not JSON: %s (%s)", out, err.msg);
    assert_string_equal(json_str(v, "level"), "debug");
    assert_string_equal(json_str(v, "module"), "api");
    assert_string_equal(json_str(v, "msg"), "quote \" backslash \\ newline \n tab \t");
    assert_int_equal(strlen(json_str(v, "ts")), 24);
    json_decref(v);
    free(out);
}

static void log_long_body(void)
{
    log_setup(LOG_INFO, LOG_JSON);
    char big[5000];
    memset(big, '"', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    log_info("t", "%s", big);
    log_setup(LOG_INFO, LOG_TEXT);
    memset(big, 'x', sizeof(big) - 1);
    log_info("t", "%s", big);
}

/* Over-long lines are cut, stay one line each, and JSON stays valid. */
static void test_log_long_lines(void **state)
{
    (void)state;
    char *out = capture_stderr(log_long_body);
    char *nl = strchr(out, '\n');
    assert_non_null(nl);
    err_t err = {0};
    json_t *v = json_parse(out, (size_t)(nl - out + 1), &err);
    if (!v)
        fail_msg("truncated JSON log line is invalid: %s", err.msg);
    json_decref(v);
    char *second = nl + 1;
    char *nl2 = strchr(second, '\n');
    assert_non_null(nl2);
    assert_int_equal(nl2[1], '\0');
    assert_true(nl2 - second < 4096);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_err_set_and_str),   cmocka_unit_test(test_err_wrap),
        cmocka_unit_test(test_buf_basic),         cmocka_unit_test(test_buf_limits),
        cmocka_unit_test(test_buf_consume_steal), cmocka_unit_test(test_str_to_i64),
        cmocka_unit_test(test_str_duration),      cmocka_unit_test(test_str_nan_rejected),
        cmocka_unit_test(test_str_size),          cmocka_unit_test(test_str_prefix_suffix),
        cmocka_unit_test(test_str_url_decode),    cmocka_unit_test(test_str_split_hostport),
        cmocka_unit_test(test_json_canonical),    cmocka_unit_test(test_json_parse_errors),
        cmocka_unit_test(test_json_helpers),      cmocka_unit_test(test_log_parse),
        cmocka_unit_test(test_log_levels_text),   cmocka_unit_test(test_log_json),
        cmocka_unit_test(test_log_long_lines),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
