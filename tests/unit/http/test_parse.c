/* Request parsing and response framing through the detached connection
 * (the server's own code, without sockets). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/alloc.h"
#include "core/log.h"
#include "core/str.h"
#include "http/http_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What the handler saw of the last request. */
static struct {
    int calls;
    char method[16];
    char target[256];
    char path[256];
    char query[256];
    char params[512]; /* "name=value;" each */
    char body[4096];
    size_t body_len;
    char host[64];
    int major, minor;
} seen;

static int reply_status = 200;
static const http_header_t *reply_headers;
static size_t reply_n_headers;

static void handler(http_req_t *r, void *data)
{
    (void)data;
    seen.calls++;
    snprintf(seen.method, sizeof(seen.method), "%s", r->method);
    snprintf(seen.target, sizeof(seen.target), "%s", r->target);
    snprintf(seen.path, sizeof(seen.path), "%s", r->path);
    snprintf(seen.query, sizeof(seen.query), "%s", r->query);
    seen.params[0] = '\0';
    for (size_t i = 0; i < r->n_params; i++) {
        size_t l = strlen(seen.params);
        snprintf(seen.params + l, sizeof(seen.params) - l, "%s=%s;", r->params[i].name,
                 r->params[i].value);
    }
    assert_true(r->body_len < sizeof(seen.body));
    memcpy(seen.body, r->body, r->body_len + 1); /* NUL-terminated */
    seen.body_len = r->body_len;
    const char *h = http_req_header(r, "HOST");
    snprintf(seen.host, sizeof(seen.host), "%s", h ? h : "");
    seen.major = r->http_major;
    seen.minor = r->http_minor;
    char body[300];
    int n = snprintf(body, sizeof(body), "path=%s", r->path);
    http_respond(r, reply_status, reply_headers, reply_n_headers, body, (size_t)n);
}

static http_server_t *srv;
static http_conn_t *conn;

static int setup(void **state)
{
    (void)state;
    memset(&seen, 0, sizeof(seen));
    reply_status = 200;
    reply_headers = NULL;
    reply_n_headers = 0;
    http_limits_t lim;
    http_limits_default(&lim);
    lim.max_header_bytes = 1024;
    lim.max_body_bytes = 100;
    srv = http_server_new_detached(&lim, handler, NULL);
    conn = http_conn_new_detached(srv);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    http_conn_free_detached(conn);
    http_server_free_detached(srv);
    return 0;
}

static const char *out(void)
{
    const buf_t *b = http_conn_output(conn);
    return b->data ? b->data : "";
}

static int feed(const char *s)
{
    return http_conn_feed(conn, s, strlen(s));
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

static void test_simple_get(void **state)
{
    (void)state;
    assert_int_equal(feed("GET /hello HTTP/1.1\r\nHost: example\r\n\r\n"), 0);
    assert_int_equal(seen.calls, 1);
    assert_string_equal(seen.method, "GET");
    assert_string_equal(seen.path, "/hello");
    assert_string_equal(seen.query, "");
    assert_string_equal(seen.host, "example");
    assert_int_equal(seen.major, 1);
    assert_int_equal(seen.minor, 1);
    const char *o = out();
    assert_true(str_has_prefix(o, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(o, "\r\nContent-Length: 11\r\n"));
    assert_non_null(strstr(o, "\r\nDate: "));
    assert_null(strstr(o, "Connection:"));
    assert_true(strlen(o) > 11 && strcmp(o + strlen(o) - 15, "\r\n\r\npath=/hello") == 0);
}

/* The incremental parser must give the same answers however the bytes are
 * split: feed three pipelined requests one byte at a time. */
static void test_pipelined_byte_by_byte(void **state)
{
    (void)state;
    const char *reqs = "GET /a HTTP/1.1\r\n\r\n"
                       "POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
                       "PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                       "3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nTrailer: x\r\n\r\n";
    for (const char *p = reqs; *p; p++)
        assert_int_equal(http_conn_feed(conn, p, 1), 0);
    assert_int_equal(seen.calls, 3);
    assert_string_equal(seen.method, "PUT");
    assert_string_equal(seen.body, "abcde");
    assert_int_equal(seen.body_len, 5);
    const char *o = out();
    assert_int_equal(count(o, "HTTP/1.1 200 OK\r\n"), 3);
    const char *a = strstr(o, "path=/a"), *b = strstr(o, "path=/b"), *c = strstr(o, "path=/c");
    assert_true(a && b && c && a < b && b < c);
}

static void test_decoding(void **state)
{
    (void)state;
    assert_int_equal(feed("GET /a%20b/c%2Fd?x=1&y=a+b%21&flag&=v&&e=&n%61me=%2B HTTP/1.1\r\n\r\n"),
                     0);
    assert_string_equal(seen.target, "/a%20b/c%2Fd?x=1&y=a+b%21&flag&=v&&e=&n%61me=%2B");
    assert_string_equal(seen.path, "/a b/c/d");
    assert_string_equal(seen.query, "x=1&y=a+b%21&flag&=v&&e=&n%61me=%2B");
    assert_string_equal(seen.params, "x=1;y=a b!;flag=;=v;e=;name=+;");
    /* '+' is literal in the path */
    assert_int_equal(feed("GET /a+b HTTP/1.1\r\n\r\n"), 0);
    assert_string_equal(seen.path, "/a+b");
    /* absolute form */
    assert_int_equal(feed("GET http://example.com:8080/p%41th?q=1 HTTP/1.1\r\n\r\n"), 0);
    assert_string_equal(seen.path, "/pAth");
    assert_string_equal(seen.params, "q=1;");
    assert_int_equal(feed("OPTIONS * HTTP/1.1\r\n\r\n"), 0);
    assert_string_equal(seen.path, "*");
    assert_int_equal(seen.calls, 4);
}

static void test_param_lookup(void **state)
{
    (void)state;
    http_param_t ps[] = {{"a", "1"}, {"flag", ""}};
    http_header_t hs[] = {{"Content-Type", "text/plain"}};
    http_req_t r = {.params = ps, .n_params = 2, .headers = hs, .n_headers = 1};
    assert_string_equal(http_req_param(&r, "a"), "1");
    assert_string_equal(http_req_param(&r, "flag"), "");
    assert_null(http_req_param(&r, "b"));
    assert_string_equal(http_req_header(&r, "content-type"), "text/plain");
    assert_null(http_req_header(&r, "accept"));
    assert_string_equal(http_status_text(404), "Not Found");
    assert_string_equal(http_status_text(431), "Request Header Fields Too Large");
    assert_string_equal(http_status_text(799), "Unknown");
}

static void expect_error(const char *req, const char *status_line, const char *why)
{
    assert_int_equal(feed(req), -EPIPE);
    assert_int_equal(seen.calls, 0);
    const char *o = out();
    assert_true(str_has_prefix(o, status_line));
    assert_non_null(strstr(o, "\r\nConnection: close\r\n"));
    assert_non_null(strstr(o, "\r\nContent-Type: text/plain"));
    if (!strcasestr(o, why))
        fail_msg("response %s does not say \"%s\"", o, why);
}

static void test_bad_escape(void **state)
{
    (void)state;
    expect_error("GET /a%zz HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request\r\n",
                 "invalid percent-encoding in the request path");
}

static void test_decoded_nul(void **state)
{
    (void)state;
    expect_error("GET /a%00b HTTP/1.1\r\n\r\n", "HTTP/1.1 400 ", "percent-encoding");
}

static void test_bad_param_escape(void **state)
{
    (void)state;
    expect_error("GET /a?x=%4 HTTP/1.1\r\n\r\n", "HTTP/1.1 400 ", "query parameter x");
}

static void test_garbage(void **state)
{
    (void)state;
    expect_error("\x01\x02garbage\r\n\r\n", "HTTP/1.1 400 ", "HPE_INVALID_METHOD");
}

static void test_cl_and_te(void **state)
{
    (void)state;
    expect_error("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "3\r\nabc\r\n0\r\n\r\n",
                 "HTTP/1.1 400 ", "content-length");
}

static void test_header_too_big(void **state)
{
    (void)state;
    char req[2048];
    char pad[1500];
    memset(pad, 'a', sizeof(pad) - 1);
    pad[sizeof(pad) - 1] = '\0';
    snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nX-Pad: %s\r\n\r\n", pad);
    expect_error(req, "HTTP/1.1 431 Request Header Fields Too Large\r\n",
                 "request header block exceeds 1024 bytes");
}

static void test_body_too_big(void **state)
{
    (void)state;
    expect_error("POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n", "HTTP/1.1 413 ",
                 "request body of 101 bytes exceeds 100 bytes");
}

static void test_chunked_body_too_big(void **state)
{
    (void)state;
    char req[512];
    char chunk[61];
    memset(chunk, 'x', 60);
    chunk[60] = '\0';
    snprintf(req, sizeof(req),
             "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3c\r\n%s\r\n3c\r\n%s\r\n", chunk,
             chunk);
    expect_error(req, "HTTP/1.1 413 ", "request body exceeds 100 bytes");
}

/* The body limit hook: one route may take a bigger body than the server
 * default, the others keep the default, and the route's own limit still
 * holds (Content-Length and chunked alike). */
static int hook_calls;
static char hook_seen[64];

static size_t big_body_limit(const char *method, const char *path, void *data)
{
    hook_calls++;
    snprintf(hook_seen, sizeof(hook_seen), "%s %s", method, path);
    assert_ptr_equal(data, &hook_calls);
    return strcmp(method, "POST") == 0 && strcmp(path, "/up load") == 0 ? 1000 : 0;
}

static void hook_reset(void)
{
    http_conn_free_detached(conn);
    http_server_free_detached(srv);
    memset(&seen, 0, sizeof(seen));
    http_limits_t lim;
    http_limits_default(&lim);
    lim.max_header_bytes = 1024;
    lim.max_body_bytes = 100;
    lim.body_limit = big_body_limit;
    lim.body_limit_data = &hook_calls;
    srv = http_server_new_detached(&lim, handler, NULL);
    conn = http_conn_new_detached(srv);
}

static void test_body_limit_hook(void **state)
{
    (void)state;
    hook_reset();
    hook_calls = 0;
    char req[2048], body[1001];
    memset(body, 'b', sizeof(body));
    body[1000] = '\0';
    /* the upload route takes 1000 bytes, sent as Content-Length and chunked */
    snprintf(req, sizeof(req), "POST /up%%20load?x=1 HTTP/1.1\r\nContent-Length: 1000\r\n\r\n%s",
             body);
    assert_int_equal(feed(req), 0);
    assert_int_equal(seen.calls, 1);
    assert_int_equal(seen.body_len, 1000);
    assert_int_equal(hook_calls, 1);
    assert_string_equal(hook_seen, "POST /up load");
    snprintf(
        req, sizeof(req),
        "POST /up%%20load HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n%s\r\n0\r\n\r\n",
        body);
    assert_int_equal(feed(req), 0);
    assert_int_equal(seen.calls, 2);
    assert_int_equal(seen.body_len, 1000);
    /* the default still holds for the next request on the connection */
    assert_int_equal(feed("POST /other HTTP/1.1\r\nContent-Length: 101\r\n\r\n"), -EPIPE);
    assert_int_equal(seen.calls, 2);
    assert_non_null(strstr(out(), "HTTP/1.1 413 "));
    assert_non_null(strstr(out(), "request body of 101 bytes exceeds 100 bytes"));

    /* past the route's own limit: 413 naming it, by length and by chunks */
    hook_reset();
    expect_error("POST /up%20load HTTP/1.1\r\nContent-Length: 1001\r\n\r\n", "HTTP/1.1 413 ",
                 "request body of 1001 bytes exceeds 1000 bytes");
    hook_reset();
    snprintf(
        req, sizeof(req),
        "POST /up%%20load HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n%s\r\n1\r\nx\r\n",
        body);
    expect_error(req, "HTTP/1.1 413 ", "request body exceeds 1000 bytes");
    /* GET on the same path keeps the default */
    hook_reset();
    expect_error("GET /up%20load HTTP/1.1\r\nContent-Length: 101\r\n\r\n", "HTTP/1.1 413 ",
                 "exceeds 100 bytes");
}

static void test_bad_version(void **state)
{
    (void)state;
    expect_error("GET / HTTP/2.0\r\n\r\n", "HTTP/1.1 505 ", "HTTP version 2.0 is not supported");
}

static void test_http10(void **state)
{
    (void)state;
    /* keep-alive asked for: stays open and says so */
    assert_int_equal(feed("GET /k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), 0);
    assert_non_null(strstr(out(), "\r\nConnection: keep-alive\r\n"));
    /* plain 1.0: closed after the answer, later requests ignored */
    assert_int_equal(feed("GET /c HTTP/1.0\r\n\r\nGET /never HTTP/1.1\r\n\r\n"), -EPIPE);
    assert_int_equal(seen.calls, 2);
    assert_string_equal(seen.path, "/c");
    assert_non_null(strstr(out(), "\r\nConnection: close\r\n"));
}

static void test_connection_close(void **state)
{
    (void)state;
    assert_int_equal(feed("GET /1 HTTP/1.1\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"),
                     -EPIPE);
    assert_int_equal(seen.calls, 1);
    assert_int_equal(count(out(), "HTTP/1.1 200"), 1);
}

static void test_head(void **state)
{
    (void)state;
    assert_int_equal(feed("HEAD /h HTTP/1.1\r\n\r\nGET /g HTTP/1.1\r\n\r\n"), 0);
    const char *o = out();
    assert_non_null(strstr(o, "Content-Length: 7\r\n\r\nHTTP/1.1 200 OK")); /* no body after HEAD */
    assert_non_null(strstr(o, "\r\n\r\npath=/g"));
    assert_null(strstr(o, "path=/h"));
}

static void test_response_headers(void **state)
{
    (void)state;
    static const http_header_t hs[] = {
        {"Content-Type", "application/json"},
        {"X-Evil", "a\r\nInjected: yes"},
        {"Bad Name", "v"},
        {"Content-Length", "999"},
        {"X-Ok", "1"},
    };
    reply_headers = hs;
    reply_n_headers = 5;
    assert_int_equal(feed("GET / HTTP/1.1\r\n\r\n"), 0);
    const char *o = out();
    assert_non_null(strstr(o, "\r\nContent-Type: application/json\r\n"));
    assert_non_null(strstr(o, "\r\nX-Ok: 1\r\n"));
    assert_null(strstr(o, "Injected"));
    assert_null(strstr(o, "Bad Name"));
    assert_null(strstr(o, "999"));
    assert_int_equal(count(o, "Content-Length"), 1);
}

static void test_no_content(void **state)
{
    (void)state;
    reply_status = 204;
    assert_int_equal(feed("DELETE /x HTTP/1.1\r\n\r\n"), 0);
    const char *o = out();
    assert_true(str_has_prefix(o, "HTTP/1.1 204 No Content\r\n"));
    assert_null(strstr(o, "Content-Length"));
    assert_null(strstr(o, "path="));
}

static void test_expect_continue(void **state)
{
    (void)state;
    assert_int_equal(feed("PUT /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"),
                     0);
    assert_string_equal(out(), "HTTP/1.1 100 Continue\r\n\r\n");
    assert_int_equal(feed("abc"), 0);
    assert_string_equal(seen.body, "abc");
    assert_non_null(strstr(out(), "\r\n\r\nHTTP/1.1 200 OK\r\n"));
}

static void test_expect_too_big(void **state)
{
    (void)state;
    expect_error("PUT /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n",
                 "HTTP/1.1 413 ", "exceeds 100 bytes");
    assert_null(strstr(out(), "100 Continue"));
}

int main(void)
{
    log_setup(LOG_OFF, LOG_TEXT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_simple_get, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelined_byte_by_byte, setup, teardown),
        cmocka_unit_test_setup_teardown(test_decoding, setup, teardown),
        cmocka_unit_test(test_param_lookup),
        cmocka_unit_test_setup_teardown(test_bad_escape, setup, teardown),
        cmocka_unit_test_setup_teardown(test_decoded_nul, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_param_escape, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cl_and_te, setup, teardown),
        cmocka_unit_test_setup_teardown(test_header_too_big, setup, teardown),
        cmocka_unit_test_setup_teardown(test_body_too_big, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chunked_body_too_big, setup, teardown),
        cmocka_unit_test_setup_teardown(test_body_limit_hook, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_version, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http10, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_head, setup, teardown),
        cmocka_unit_test_setup_teardown(test_response_headers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_content, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expect_continue, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expect_too_big, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
