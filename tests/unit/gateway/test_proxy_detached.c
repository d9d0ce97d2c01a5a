/* The proxy's byte-level behaviour through a detached connection: what
 * exactly reaches the backend for a given request (the rewritten head,
 * re-framed bodies) and what exactly reaches the client for a given
 * response, whatever the way the bytes are split. The same code serves
 * sockets (test_proxy.c drives those). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/buf.h"
#include "core/log.h"
#include "gateway/proxy.h"
#include "gateway/routes.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static gw_proxy_t *proxy;

static int setup(void **state)
{
    gw_builder_t *b = gw_builder_new(NULL);
    gw_endpoint_in_t ep = {"127.0.0.1", 9};
    gw_builder_pool(b, "/app", &ep, 1);
    gw_route_in_t r = {
        .kind = GW_ROUTE_HTTP, .app = "/app", .host = "", .path = "/", .target = "/app"};
    assert_int_equal(gw_builder_route(b, &r, NULL), 0);
    gw_snapshot_t *s = gw_builder_finish(b, 1);
    gw_proxy_opts_t o = {.max_header_bytes = 1024};
    proxy = gw_proxy_new_detached(&o, s);
    gw_snapshot_unref(s);
    return 0;
}

static int teardown(void **state)
{
    gw_proxy_free_detached(proxy);
    return 0;
}

/* Feed `req` in pieces of `step` bytes. */
static int feed(gw_dconn_t *d, const char *req, size_t n, size_t step)
{
    int rc = 0;
    for (size_t off = 0; off < n && rc == 0; off += step)
        rc = gw_dconn_feed(d, req + off, n - off < step ? n - off : step);
    return rc;
}

static char *str_of(const buf_t *b)
{
    return b->data ? b->data : "";
}

/* The head sent to the backend, with the generated request id blanked. */
static void assert_backend_head(gw_dconn_t *d, const char *want)
{
    const char *got = str_of(gw_dconn_backend_output(d));
    if (strncmp(got, want, strlen(want)) != 0)
        fail_msg("backend got:\n%s\nwanted:\n%s", got, want);
}

static void test_head_rewrite_any_split(void **state)
{
    static const char req[] =
        "GET /p?q=1 HTTP/1.1\r\nHost: Example.COM\r\nConnection: keep-alive, X-Drop\r\n"
        "X-Drop: 1\r\nKeep-Alive: 300\r\nTE: trailers\r\nUpgrade: h2c\r\n"
        "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\nAccept: */*\r\n"
        "X-Request-Id: rid-1\r\n\r\n";
    static const char want[] = "GET /p?q=1 HTTP/1.1\r\nHost: Example.COM\r\n"
                               "X-Forwarded-For: 10.0.0.1, 10.0.0.2, 192.0.2.1\r\n"
                               "Accept: */*\r\nX-Forwarded-Proto: http\r\n"
                               "X-Forwarded-Host: Example.COM\r\nX-Request-Id: rid-1\r\n\r\n";
    for (size_t step = 1; step <= sizeof(req); step += 7) {
        gw_dconn_t *d = gw_dconn_new(proxy);
        assert_int_equal(feed(d, req, sizeof(req) - 1, step), 0);
        assert_backend_head(d, want);
        static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-H\r\n"
                                   "X-H: 1\r\nKeep-Alive: 1\r\n\r\nok";
        assert_int_equal(gw_dconn_backend_feed(d, resp, sizeof(resp) - 1), 0);
        assert_string_equal(str_of(gw_dconn_output(d)),
                            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        gw_dconn_free(d);
    }
}

static void test_chunked_reframed(void **state)
{
    static const char req[] = "POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                              "4;ext=\"x\"\r\nabcd\r\n3\r\nefg\r\n0\r\nX-Trailer: 1\r\n\r\n";
    for (size_t step = 1; step < sizeof(req); step += 5) {
        gw_dconn_t *d = gw_dconn_new(proxy);
        assert_int_equal(feed(d, req, sizeof(req) - 1, step), 0);
        const char *got = str_of(gw_dconn_backend_output(d));
        const char *body = strstr(got, "\r\n\r\n");
        assert_non_null(body);
        assert_non_null(strstr(got, "\r\nTransfer-Encoding: chunked\r\n"));
        /* our framing, whatever the pieces: data preserved, extensions
         * and trailers gone */
        buf_t data = BUF_INIT(0);
        const char *p = body + 4;
        for (;;) {
            char *end;
            long n = strtol(p, &end, 16);
            assert_memory_equal(end, "\r\n", 2);
            if (n == 0) {
                assert_string_equal(end, "\r\n\r\n");
                break;
            }
            (void)buf_append(&data, end + 2, (size_t)n);
            assert_memory_equal(end + 2 + n, "\r\n", 2);
            p = end + 2 + n + 2;
        }
        assert_string_equal(data.data, "abcdefg");
        buf_free(&data);
        gw_dconn_free(d);
    }
}

static void test_dechunk_for_http10(void **state)
{
    gw_dconn_t *d = gw_dconn_new(proxy);
    static const char req[] = "GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n";
    assert_int_equal(feed(d, req, sizeof(req) - 1, 64), 0);
    /* the backend is always asked with HTTP/1.1 */
    assert_backend_head(d, "GET / HTTP/1.1\r\nHost: a\r\n");
    static const char resp[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                               "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
    for (size_t i = 0; i < sizeof(resp) - 1; i++)
        (void)gw_dconn_backend_feed(d, resp + i, 1);
    assert_string_equal(str_of(gw_dconn_output(d)),
                        "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabcde");
    assert_int_equal(gw_dconn_feed(d, "x", 1), -EPIPE);
    gw_dconn_free(d);
}

static void test_continue_and_pipelining(void **state)
{
    gw_dconn_t *d = gw_dconn_new(proxy);
    static const char req[] = "PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n"
                              "Expect: 100-continue\r\n\r\n";
    assert_int_equal(feed(d, req, sizeof(req) - 1, 1000), 0);
    assert_non_null(strstr(str_of(gw_dconn_backend_output(d)), "\r\nExpect: 100-continue\r\n"));
    static const char r100[] = "HTTP/1.1 100 Continue\r\n\r\n";
    assert_int_equal(gw_dconn_backend_feed(d, r100, sizeof(r100) - 1), 0);
    assert_string_equal(str_of(gw_dconn_output(d)), "HTTP/1.1 100 Continue\r\n\r\n");
    /* body, then a pipelined GET in the same bytes */
    static const char more[] = "hiGET /2 HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_int_equal(feed(d, more, sizeof(more) - 1, 1000), 0);
    assert_non_null(strstr(str_of(gw_dconn_backend_output(d)), "\r\n\r\nhi"));
    assert_null(strstr(str_of(gw_dconn_backend_output(d)), "GET /2"));
    static const char r1[] = "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
    assert_int_equal(gw_dconn_backend_feed(d, r1, sizeof(r1) - 1), 0);
    /* the second request goes out only after the first answer */
    assert_non_null(strstr(str_of(gw_dconn_backend_output(d)), "GET /2 HTTP/1.1\r\n"));
    static const char r2[] = "HTTP/1.1 204 No Content\r\n\r\n";
    assert_int_equal(gw_dconn_backend_feed(d, r2, sizeof(r2) - 1), 0);
    const char *out = str_of(gw_dconn_output(d));
    const char *a = strstr(out, "HTTP/1.1 201"), *b = strstr(out, "HTTP/1.1 204");
    assert_true(a && b && a < b);
    gw_dconn_free(d);
}

static void test_rejects(void **state)
{
    static const struct {
        const char *req;
        int status;
        const char *why;
    } cases[] = {
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
         400, "Content-Length"},
        {"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400, "bare CR"},
        {"GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n", 400, "bare LF"},
        {"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\tmore\r\n\r\n", 400, "folding"},
        {"GET / HTTP/1.1\r\nHost: a\r\nX Y: 1\r\n\r\n", 400, "header name"},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", 400, "chunk"},
        {"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 405, "CONNECT"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        gw_dconn_t *d = gw_dconn_new(proxy);
        (void)feed(d, cases[i].req, strlen(cases[i].req), 3);
        const char *out = str_of(gw_dconn_output(d));
        char want[32];
        snprintf(want, sizeof(want), "HTTP/1.1 %d ", cases[i].status);
        if (strncmp(out, want, strlen(want)) != 0 || !strstr(out, cases[i].why))
            fail_msg("case %zu: got %s", i, out);
        if (cases[i].status == 400)
            assert_non_null(strstr(out, "Connection: close"));
        assert_int_equal(gw_dconn_backend_output(d)->len, 0);
        gw_dconn_free(d);
    }
    /* a head over max_header_bytes (1024) */
    gw_dconn_t *d = gw_dconn_new(proxy);
    char big[1500];
    memset(big, 'a', sizeof(big));
    memcpy(big, "GET / HTTP/1.1\r\nX: ", 19);
    (void)feed(d, big, sizeof(big), 100);
    assert_memory_equal(str_of(gw_dconn_output(d)), "HTTP/1.1 431 ", 13);
    gw_dconn_free(d);
}

/* What the backend sends is checked too: a 1xx carries no body, control
 * bytes never reach the client. */
static void test_backend_input(void **state)
{
    static const char req[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    gw_dconn_t *d = gw_dconn_new(proxy);
    assert_int_equal(feed(d, req, sizeof(req) - 1, 100), 0);
    static const char r1[] = "HTTP/1.1 100 Continue\r\nTransfer-Encoding: chunked\r\n\r\n"
                             "HTTP/1.1 200 Fine\r\nContent-Length: 1\r\n\r\nx";
    assert_int_equal(gw_dconn_backend_feed(d, r1, sizeof(r1) - 1), 0);
    assert_string_equal(str_of(gw_dconn_output(d)),
                        "HTTP/1.1 100 Continue\r\n\r\n"
                        "HTTP/1.1 200 Fine\r\nContent-Length: 1\r\n\r\nx");
    gw_dconn_free(d);

    d = gw_dconn_new(proxy);
    assert_int_equal(feed(d, req, sizeof(req) - 1, 100), 0);
    static const char r2[] = "HTTP/1.1 200 OK\r\nX: a\0b\r\nContent-Length: 0\r\n\r\n";
    (void)gw_dconn_backend_feed(d, r2, sizeof(r2) - 1);
    assert_memory_equal(str_of(gw_dconn_output(d)), "HTTP/1.1 502 ", 13);
    gw_dconn_free(d);

    d = gw_dconn_new(proxy);
    assert_int_equal(feed(d, req, sizeof(req) - 1, 100), 0);
    static const char r3[] = "HTTP/1.1 404 Not\x01Found\r\nContent-Length: 0\r\n\r\n";
    (void)gw_dconn_backend_feed(d, r3, sizeof(r3) - 1);
    assert_string_equal(str_of(gw_dconn_output(d)),
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    gw_dconn_free(d);
}

int main(void)
{
    log_setup(LOG_ERROR, LOG_TEXT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_head_rewrite_any_split),
        cmocka_unit_test(test_chunked_reframed),
        cmocka_unit_test(test_dechunk_for_http10),
        cmocka_unit_test(test_continue_and_pipelining),
        cmocka_unit_test(test_rejects),
        cmocka_unit_test(test_backend_input),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
