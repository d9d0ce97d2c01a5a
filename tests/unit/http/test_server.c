/* The HTTP server over real sockets: the server runs on a uv loop in a
 * second thread, the test talks to it through raw TCP sockets (and through
 * the curl client). Anything the test needs done on the loop thread goes
 * through fx_call(). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/buf.h"
#include "core/log.h"
#include "http/client.h"
#include "http/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* ---- loop thread -------------------------------------------------------- */

typedef void (*fx_fn)(void *arg);

static struct {
    uv_loop_t loop;
    uv_async_t async;
    pthread_t thread;
    http_server_t *srv;
    int port;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    fx_fn fn;
    void *arg;
    bool fn_done;
} fx = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

/* Handler state: written on the loop thread, read by the test. */
static atomic_int h_calls, h_pending, h_max_pending;
static atomic_int wait_started, abort_calls, abort_saw_gone;
static atomic_int stream_write_rc, flood_rc, flood_after_rc;
static atomic_bool server_done;
static http_req_t *stream_req; /* loop thread only */

static void fx_on_async(uv_async_t *a)
{
    pthread_mutex_lock(&fx.mu);
    fx_fn fn = fx.fn;
    void *arg = fx.arg;
    pthread_mutex_unlock(&fx.mu);
    if (!fn)
        return;
    fn(arg);
    pthread_mutex_lock(&fx.mu);
    fx.fn = NULL;
    fx.fn_done = true;
    pthread_cond_broadcast(&fx.cv);
    pthread_mutex_unlock(&fx.mu);
}

/* Run fn(arg) on the loop thread and wait for it. */
static void fx_call(fx_fn fn, void *arg)
{
    pthread_mutex_lock(&fx.mu);
    fx.fn = fn;
    fx.arg = arg;
    fx.fn_done = false;
    uv_async_send(&fx.async);
    while (!fx.fn_done)
        pthread_cond_wait(&fx.cv, &fx.mu);
    pthread_mutex_unlock(&fx.mu);
}

static void *fx_main(void *arg)
{
    (void)arg;
    uv_run(&fx.loop, UV_RUN_DEFAULT);
    return NULL;
}

static void handler(http_req_t *r, void *data);

static void fx_start(const http_limits_t *lim)
{
    h_calls = h_pending = h_max_pending = 0;
    wait_started = abort_calls = abort_saw_gone = 0;
    stream_write_rc = flood_rc = flood_after_rc = 1;
    server_done = false;
    stream_req = NULL;
    http_limits_t l;
    http_limits_default(&l);
    l.max_header_bytes = 2048;
    l.max_body_bytes = 4096;
    if (lim)
        l = *lim;
    assert_int_equal(uv_loop_init(&fx.loop), 0);
    assert_int_equal(uv_async_init(&fx.loop, &fx.async, fx_on_async), 0);
    err_t err = {0};
    int rc = http_server_listen(&fx.loop, "127.0.0.1:0", &l, handler, NULL, &fx.srv, &err);
    if (rc)
        fail_msg("listen: %s", err.msg);
    fx.port = http_server_port(fx.srv);
    assert_true(fx.port > 0);
    assert_int_equal(pthread_create(&fx.thread, NULL, fx_main, NULL), 0);
}

static void fx_on_done(void *data)
{
    (void)data;
    server_done = true;
    uv_close((uv_handle_t *)&fx.async, NULL);
}

static uint64_t shutdown_grace = 1000;

static void fx_do_shutdown(void *arg)
{
    (void)arg;
    http_server_shutdown(fx.srv, shutdown_grace, fx_on_done, NULL);
}

/* Start a shutdown without waiting for it to finish. */
static void fx_shutdown(uint64_t grace)
{
    shutdown_grace = grace;
    fx_call(fx_do_shutdown, NULL);
}

/* Wait for the loop to end (the server's done callback closes the last
 * handle); every handle must be closed by then. */
static void fx_join(void)
{
    assert_int_equal(pthread_join(fx.thread, NULL), 0);
    assert_true(server_done);
    assert_int_equal(uv_loop_close(&fx.loop), 0);
}

static void fx_stop(void)
{
    fx_shutdown(1000);
    fx_join();
}

/* ---- handler ------------------------------------------------------------ */

static void pending_down(void)
{
    atomic_fetch_sub(&h_pending, 1);
}

static void on_async_timer_closed(uv_handle_t *h)
{
    free(h);
}

static void on_async_timer(uv_timer_t *t)
{
    http_req_t *r = t->data;
    const char *id = http_req_param(r, "id");
    pending_down();
    http_respond(r, 200, NULL, 0, id, strlen(id));
    uv_close((uv_handle_t *)t, on_async_timer_closed);
}

static void on_wait_abort(http_req_t *r, void *data)
{
    (void)data;
    atomic_fetch_add(&abort_calls, 1);
    if (http_req_aborted(r))
        atomic_fetch_add(&abort_saw_gone, 1);
    pending_down();
    http_respond(r, 200, NULL, 0, "late", 4);
}

static const http_header_t text_plain[] = {{"Content-Type", "text/plain"}};

static void handler(http_req_t *r, void *data)
{
    (void)data;
    atomic_fetch_add(&h_calls, 1);
    int p = atomic_fetch_add(&h_pending, 1) + 1;
    if (p > h_max_pending)
        h_max_pending = p;

    if (strcmp(r->path, "/hello") == 0) {
        pending_down();
        http_respond(r, 200, text_plain, 1, "hello", 5);
    } else if (strcmp(r->path, "/echo") == 0) {
        buf_t b = BUF_INIT(0);
        buf_printf(&b, "%s %s q=%s", r->method, r->path, r->query);
        for (size_t i = 0; i < r->n_params; i++)
            buf_printf(&b, " %s=%s", r->params[i].name, r->params[i].value);
        const char *x = http_req_header(r, "x-test");
        buf_printf(&b, " x-test=%s body=", x ? x : "-");
        buf_append(&b, r->body, r->body_len);
        pending_down();
        http_respond(r, 200, text_plain, 1, b.data, b.len);
        buf_free(&b);
    } else if (strcmp(r->path, "/async") == 0) {
        uint64_t ms = strtoull(http_req_param(r, "ms"), NULL, 10);
        uv_timer_t *t = malloc(sizeof(*t));
        uv_timer_init(&fx.loop, t);
        t->data = r;
        uv_timer_start(t, on_async_timer, ms, 0);
    } else if (strcmp(r->path, "/stream") == 0) {
        stream_req = r;
        http_stream_begin(r, 200, text_plain, 1);
        http_stream_write(r, "first-chunk", 11);
    } else if (strcmp(r->path, "/wait") == 0) {
        http_req_on_abort(r, on_wait_abort, NULL);
        atomic_fetch_add(&wait_started, 1);
    } else if (strcmp(r->path, "/big") == 0) {
        char *big = malloc(100000);
        memset(big, 'x', 100000);
        pending_down();
        http_respond(r, 200, NULL, 0, big, 100000);
        free(big);
    } else if (strcmp(r->path, "/huge") == 0) {
        size_t n = 16u << 20;
        char *huge = malloc(n);
        memset(huge, 'h', n);
        pending_down();
        http_respond(r, 200, NULL, 0, huge, n);
        free(huge);
    } else if (strcmp(r->path, "/flood") == 0) {
        /* A client that never reads: writes must fail with -ENOBUFS once
         * the kernel buffers and max_pending_write are full. */
        static char chunk[64 * 1024];
        memset(chunk, 'f', sizeof(chunk));
        http_stream_begin(r, 200, NULL, 0);
        int rc = 0;
        for (int i = 0; i < 4000 && rc == 0; i++)
            rc = http_stream_write(r, chunk, sizeof(chunk));
        flood_rc = rc;
        flood_after_rc = http_stream_write(r, chunk, 10);
        pending_down();
        http_stream_end(r);
    } else {
        pending_down();
        http_respond(r, 404, text_plain, 1, "not found", 9);
    }
}

/* Loop thread: second chunk and end of the /stream response. */
static void stream_finish(void *arg)
{
    (void)arg;
    if (!stream_req)
        return;
    stream_write_rc = http_stream_write(stream_req, "second-chunk", 12);
    pending_down();
    http_stream_end(stream_req);
    stream_req = NULL;
}

/* ---- raw client --------------------------------------------------------- */

typedef struct tconn {
    int fd;
    char *buf; /* received, not yet parsed */
    size_t len, cap;
    http_parser p;
    bool head; /* the response being read answers a HEAD */
} tconn_t;

typedef struct tresp {
    int status;
    buf_t hdrs; /* "\nname: value" with lower-case names */
    buf_t body;
    bool complete;
    int last; /* 1 field, 2 value */
} tresp_t;

static int tr_field(http_parser *p, const char *at, size_t n)
{
    tresp_t *r = p->data;
    if (r->last != 1)
        buf_append(&r->hdrs, "\n", 1);
    for (size_t i = 0; i < n; i++) {
        char ch = (char)(at[i] >= 'A' && at[i] <= 'Z' ? at[i] + 32 : at[i]);
        buf_append(&r->hdrs, &ch, 1);
    }
    r->last = 1;
    return 0;
}

static int tr_value(http_parser *p, const char *at, size_t n)
{
    tresp_t *r = p->data;
    if (r->last != 2)
        buf_append(&r->hdrs, ": ", 2);
    buf_append(&r->hdrs, at, n);
    r->last = 2;
    return 0;
}

static int tr_headers_done(http_parser *p)
{
    tresp_t *r = p->data;
    r->status = p->status_code;
    buf_append(&r->hdrs, "\n", 1);
    tconn_t *tc = (tconn_t *)((char *)p - offsetof(tconn_t, p));
    return tc->head ? 1 : 0;
}

static int tr_body(http_parser *p, const char *at, size_t n)
{
    tresp_t *r = p->data;
    buf_append(&r->body, at, n);
    return 0;
}

static int tr_complete(http_parser *p)
{
    tresp_t *r = p->data;
    r->complete = true;
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings tr_settings = {
    .on_header_field = tr_field,
    .on_header_value = tr_value,
    .on_headers_complete = tr_headers_done,
    .on_body = tr_body,
    .on_message_complete = tr_complete,
};

/* rcvbuf > 0: a small receive buffer, so the server's writes back up. */
static tconn_t *tc_open_buf(int rcvbuf)
{
    tconn_t *tc = calloc(1, sizeof(*tc));
    tc->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(tc->fd >= 0);
    if (rcvbuf > 0)
        setsockopt(tc->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    struct timeval tv = {.tv_sec = 5};
    setsockopt(tc->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)fx.port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(tc->fd, (struct sockaddr *)&a, sizeof(a)), 0);
    return tc;
}

static tconn_t *tc_open(void)
{
    return tc_open_buf(0);
}

static void tc_close(tconn_t *tc)
{
    if (tc->fd >= 0)
        close(tc->fd);
    free(tc->buf);
    free(tc);
}

static void tc_send(tconn_t *tc, const char *s)
{
    size_t n = strlen(s);
    while (n) {
        ssize_t w = send(tc->fd, s, n, MSG_NOSIGNAL);
        assert_true(w > 0);
        s += w;
        n -= (size_t)w;
    }
}

/* Read more bytes into tc->buf; returns what recv returned. */
static ssize_t tc_recv(tconn_t *tc)
{
    char tmp[16384];
    ssize_t r = recv(tc->fd, tmp, sizeof(tmp), 0);
    if (r > 0) {
        if (tc->len + (size_t)r + 1 > tc->cap) {
            tc->cap = (tc->len + (size_t)r + 1) * 2;
            tc->buf = realloc(tc->buf, tc->cap);
        }
        memcpy(tc->buf + tc->len, tmp, (size_t)r);
        tc->len += (size_t)r;
        tc->buf[tc->len] = '\0';
    }
    return r;
}

/* Read bytes until `needle` has arrived (nothing is consumed). */
static bool tc_read_until(tconn_t *tc, const char *needle)
{
    while (!tc->buf || !memmem(tc->buf, tc->len, needle, strlen(needle)))
        if (tc_recv(tc) <= 0)
            return false;
    return true;
}

static void tresp_free(tresp_t *r)
{
    buf_free(&r->hdrs);
    buf_free(&r->body);
}

/* Read one whole response (fails the test if it does not come). */
static void tc_response(tconn_t *tc, tresp_t *r)
{
    memset(r, 0, sizeof(*r));
    buf_init(&r->hdrs, 0);
    buf_init(&r->body, 0);
    buf_append(&r->body, "", 0);
    http_parser_init(&tc->p, HTTP_RESPONSE);
    tc->p.data = r;
    for (;;) {
        if (tc->len) {
            size_t n = http_parser_execute(&tc->p, &tr_settings, tc->buf, tc->len);
            memmove(tc->buf, tc->buf + n, tc->len - n);
            tc->len -= n;
            if (r->complete)
                return;
            if (HTTP_PARSER_ERRNO(&tc->p) != HPE_OK)
                fail_msg("bad response: %s", http_errno_name(HTTP_PARSER_ERRNO(&tc->p)));
        }
        ssize_t got = tc_recv(tc);
        if (got == 0) {
            http_parser_execute(&tc->p, &tr_settings, NULL, 0); /* close-delimited end */
            if (r->complete)
                return;
        }
        if (got <= 0)
            fail_msg("connection ended before a whole response (recv %zd, %s)", got,
                     strerror(errno));
    }
}

/* Value of header `name` (lower case) in r, or NULL. */
static const char *tresp_header(const tresp_t *r, const char *name)
{
    static char val[256];
    char key[80];
    snprintf(key, sizeof(key), "\n%s: ", name);
    const char *p = r->hdrs.data ? strstr(r->hdrs.data, key) : NULL;
    if (!p)
        return NULL;
    p += strlen(key);
    size_t n = strcspn(p, "\n");
    snprintf(val, sizeof(val), "%.*s", (int)n, p);
    return val;
}

/* True when the server closes the connection (EOF or reset) with nothing
 * more sent. */
static bool tc_eof(tconn_t *tc)
{
    if (tc->len)
        return false;
    char b[64];
    ssize_t r = recv(tc->fd, b, sizeof(b), 0);
    return r == 0 || (r < 0 && errno == ECONNRESET);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static bool wait_for(atomic_int *v, int want)
{
    for (int i = 0; i < 1000 && atomic_load(v) != want; i++)
        usleep(2000);
    return atomic_load(v) == want;
}

/* Send `req` on a fresh connection and read the one response. */
static void one_shot(const char *req, tresp_t *r)
{
    tconn_t *tc = tc_open();
    tc_send(tc, req);
    tc_response(tc, r);
    tc_close(tc);
}

/* ---- tests -------------------------------------------------------------- */

static void test_simple_get(void **state)
{
    (void)state;
    fx_start(NULL);
    tresp_t r;
    one_shot("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body.data, "hello");
    assert_string_equal(tresp_header(&r, "content-length"), "5");
    assert_string_equal(tresp_header(&r, "content-type"), "text/plain");
    assert_non_null(tresp_header(&r, "date"));
    assert_null(tresp_header(&r, "connection"));
    tresp_free(&r);
    fx_stop();
}

static void test_keep_alive(void **state)
{
    (void)state;
    fx_start(NULL);
    tconn_t *tc = tc_open();
    tresp_t r;
    tc_send(tc, "GET /echo?a=1 HTTP/1.1\r\n\r\n");
    tc_response(tc, &r);
    assert_string_equal(r.body.data, "GET /echo q=a=1 a=1 x-test=- body=");
    tresp_free(&r);
    tc_send(tc, "POST /echo HTTP/1.1\r\nX-Test: two\r\nContent-Length: 3\r\n\r\nabc");
    tc_response(tc, &r);
    assert_string_equal(r.body.data, "POST /echo q= x-test=two body=abc");
    tresp_free(&r);
    tc_close(tc);
    fx_stop();
}

static void test_pipelined_sync(void **state)
{
    (void)state;
    fx_start(NULL);
    tconn_t *tc = tc_open();
    tc_send(tc, "GET /echo?n=1 HTTP/1.1\r\n\r\nGET /echo?n=2 HTTP/1.1\r\n\r\n"
                "GET /echo?n=3 HTTP/1.1\r\n\r\n");
    for (int i = 1; i <= 3; i++) {
        tresp_t r;
        char want[64];
        snprintf(want, sizeof(want), "GET /echo q=n=%d n=%d x-test=- body=", i, i);
        tc_response(tc, &r);
        assert_string_equal(r.body.data, want);
        tresp_free(&r);
    }
    tc_close(tc);
    fx_stop();
}

/* The first request takes longest: were they handled concurrently, the
 * answers would come back reversed. */
static void test_pipelined_async_in_order(void **state)
{
    (void)state;
    fx_start(NULL);
    tconn_t *tc = tc_open();
    tc_send(tc, "GET /async?id=1&ms=60 HTTP/1.1\r\n\r\nGET /async?id=2&ms=30 HTTP/1.1\r\n\r\n"
                "GET /async?id=3&ms=1 HTTP/1.1\r\n\r\n");
    for (int i = 1; i <= 3; i++) {
        tresp_t r;
        char want[16];
        snprintf(want, sizeof(want), "%d", i);
        tc_response(tc, &r);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body.data, want);
        tresp_free(&r);
    }
    assert_int_equal(h_calls, 3);
    assert_int_equal(h_max_pending, 1);
    tc_close(tc);
    fx_stop();
}

/* More pipelined bytes than max_pipelined_bytes behind a slow request:
 * reading stops and resumes, and every request is still answered in order. */
static void test_pipelined_over_limit(void **state)
{
    (void)state;
    http_limits_t lim;
    http_limits_default(&lim);
    lim.max_pipelined_bytes = 512;
    fx_start(&lim);
    tconn_t *tc = tc_open();
    buf_t req = BUF_INIT(0);
    buf_printf(&req, "GET /async?id=0&ms=50 HTTP/1.1\r\n\r\n");
    for (int i = 1; i <= 60; i++)
        buf_printf(&req, "GET /async?id=%d&ms=0 HTTP/1.1\r\n\r\n", i);
    tc_send(tc, req.data);
    buf_free(&req);
    for (int i = 0; i <= 60; i++) {
        tresp_t r;
        char want[16];
        snprintf(want, sizeof(want), "%d", i);
        tc_response(tc, &r);
        assert_string_equal(r.body.data, want);
        tresp_free(&r);
    }
    assert_int_equal(h_max_pending, 1);
    tc_close(tc);
    fx_stop();
}

static void test_chunked_request(void **state)
{
    (void)state;
    fx_start(NULL);
    tresp_t r;
    one_shot("POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
             "5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n",
             &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body.data, "POST /echo q= x-test=- body=hello world");
    tresp_free(&r);
    fx_stop();
}

/* Read a server error on tc: status, reason in the body, then the close;
 * the handler has seen `calls` requests in all. */
static void expect_error_n(tconn_t *tc, int status, const char *why, int calls)
{
    tresp_t r;
    tc_response(tc, &r);
    assert_int_equal(r.status, status);
    assert_string_equal(tresp_header(&r, "connection"), "close");
    assert_non_null(strstr(tresp_header(&r, "content-type"), "text/plain"));
    if (!strstr(r.body.data, why))
        fail_msg("body \"%s\" does not say \"%s\"", r.body.data, why);
    tresp_free(&r);
    assert_true(tc_eof(tc));
    assert_int_equal(h_calls, calls);
}

static void expect_error(tconn_t *tc, int status, const char *why)
{
    expect_error_n(tc, status, why, 0);
}

static void test_413_content_length(void **state)
{
    (void)state;
    fx_start(NULL);
    tconn_t *tc = tc_open();
    tc_send(tc, "POST /echo HTTP/1.1\r\nContent-Length: 100000\r\n\r\nsome of the body");
    expect_error(tc, 413, "request body of 100000 bytes exceeds 4096 bytes");
    tc_close(tc);
    fx_stop();
}

static void test_413_chunked(void **state)
{
    (void)state;
    fx_start(NULL);
    tconn_t *tc = tc_open();
    tc_send(tc, "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    char chunk[1100];
    memset(chunk, 'z', sizeof(chunk));
    memcpy(chunk, "400\r\n", 5);
    memcpy(chunk + 5 + 1024, "\r\n", 3);
    for (int i = 0; i < 5; i++)
        tc_send(tc, chunk);
    expect_error(tc, 413, "request body exceeds 4096 bytes");
    tc_close(tc);
    fx_stop();
}

static void test_431(void **state)
{
    (void)state;
    fx_start(NULL);
    tconn_t *tc = tc_open();
    char req[4096];
    char pad[3000];
    memset(pad, 'p', sizeof(pad) - 1);
    pad[sizeof(pad) - 1] = '\0';
    snprintf(req, sizeof(req), "GET /hello HTTP/1.1\r\nX-Pad: %s\r\n\r\n", pad);
    tc_send(tc, req);
    expect_error(tc, 431, "request header block exceeds 2048 bytes");
    tc_close(tc);
    fx_stop();
}

static void test_400_garbage(void **state)
{
    (void)state;
    fx_start(NULL);
    tconn_t *tc = tc_open();
    tc_send(tc, "\x16\x03\x01 not http at all\r\n\r\n");
    expect_error(tc, 400, "HPE_INVALID_METHOD");
    tc_close(tc);
    tc = tc_open();
    tc_send(tc, "GET /hello HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                "3\r\nabc\r\n0\r\n\r\n");
    expect_error(tc, 400, "content-length");
    tc_close(tc);
    fx_stop();
}

static void test_408(void **state)
{
    (void)state;
    http_limits_t lim;
    http_limits_default(&lim);
    lim.header_timeout_ms = 100;
    fx_start(&lim);
    tconn_t *tc = tc_open();
    double t0 = now_ms();
    tc_send(tc, "GET /hello HTTP/1.1\r\nHost: x\r\n"); /* never finished */
    expect_error(tc, 408, "request not complete within 100 ms");
    assert_true(now_ms() - t0 >= 90);
    tc_close(tc);
    fx_stop();
}

static void test_idle_close(void **state)
{
    (void)state;
    http_limits_t lim;
    http_limits_default(&lim);
    lim.idle_timeout_ms = 100;
    fx_start(&lim);
    tconn_t *tc = tc_open();
    tresp_t r;
    tc_send(tc, "GET /hello HTTP/1.1\r\n\r\n");
    tc_response(tc, &r);
    tresp_free(&r);
    double t0 = now_ms();
    assert_true(tc_eof(tc));
    assert_true(now_ms() - t0 >= 80);
    tc_close(tc);
    fx_stop();
}

/* A client slowly reading a big response is not idle: the idle timer only
 * starts once the response is written. */
static void test_slow_reader_not_idle(void **state)
{
    (void)state;
    http_limits_t lim;
    http_limits_default(&lim);
    lim.idle_timeout_ms = 50;
    fx_start(&lim);
    tconn_t *tc = tc_open_buf(16384);
    tc_send(tc, "GET /huge HTTP/1.1\r\n\r\n");
    usleep(300 * 1000);
    tresp_t r;
    tc_response(tc, &r);
    assert_int_equal(r.body.len, 16u << 20);
    tresp_free(&r);
    assert_true(tc_eof(tc)); /* idle after that */
    tc_close(tc);
    fx_stop();
}

static void test_http10(void **state)
{
    (void)state;
    fx_start(NULL);
    tconn_t *tc = tc_open();
    tresp_t r;
    tc_send(tc, "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    tc_response(tc, &r);
    assert_string_equal(tresp_header(&r, "connection"), "keep-alive");
    tresp_free(&r);
    tc_send(tc, "GET /hello HTTP/1.0\r\n\r\n");
    tc_response(tc, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body.data, "hello");
    assert_string_equal(tresp_header(&r, "connection"), "close");
    tresp_free(&r);
    assert_true(tc_eof(tc));
    tc_close(tc);
    /* Connection: close on 1.1 too */
    tc = tc_open();
    tc_send(tc, "GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n");
    tc_response(tc, &r);
    assert_string_equal(tresp_header(&r, "connection"), "close");
    tresp_free(&r);
    assert_true(tc_eof(tc));
    tc_close(tc);
    fx_stop();
}

static void test_head(void **state)
{
    (void)state;
    fx_start(NULL);
    tconn_t *tc = tc_open();
    tresp_t r;
    tc_send(tc, "HEAD /hello HTTP/1.1\r\n\r\nGET /echo HTTP/1.1\r\n\r\n");
    tc->head = true;
    tc_response(tc, &r);
    tc->head = false;
    assert_int_equal(r.status, 200);
    assert_string_equal(tresp_header(&r, "content-length"), "5");
    assert_int_equal(r.body.len, 0);
    tresp_free(&r);
    /* the next response follows right after the head: no body was sent */
    tc_response(tc, &r);
    assert_string_equal(r.body.data, "GET /echo q= x-test=- body=");
    tresp_free(&r);
    tc_close(tc);
    fx_stop();
}

static void test_stream(void **state)
{
    (void)state;
    fx_start(NULL);
    tconn_t *tc = tc_open();
    tc_send(tc, "GET /stream HTTP/1.1\r\n\r\n");
    assert_true(tc_read_until(tc, "first-chunk\r\n"));
    assert_null(memmem(tc->buf, tc->len, "\r\n0\r\n\r\n", 7)); /* not ended yet */
    fx_call(stream_finish, NULL);
    assert_int_equal(stream_write_rc, 0);
    tresp_t r;
    tc_response(tc, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(tresp_header(&r, "transfer-encoding"), "chunked");
    assert_string_equal(r.body.data, "first-chunksecond-chunk");
    tresp_free(&r);
    /* still keep-alive */
    tc_send(tc, "GET /hello HTTP/1.1\r\n\r\n");
    tc_response(tc, &r);
    assert_string_equal(r.body.data, "hello");
    tresp_free(&r);
    tc_close(tc);
    fx_stop();
}

static void test_stream_http10(void **state)
{
    (void)state;
    fx_start(NULL);
    tconn_t *tc = tc_open();
    tc_send(tc, "GET /stream HTTP/1.0\r\n\r\n");
    assert_true(tc_read_until(tc, "first-chunk"));
    fx_call(stream_finish, NULL);
    tresp_t r;
    tc_response(tc, &r); /* ends at EOF */
    assert_null(tresp_header(&r, "transfer-encoding"));
    assert_string_equal(tresp_header(&r, "connection"), "close");
    assert_string_equal(r.body.data, "first-chunksecond-chunk");
    tresp_free(&r);
    tc_close(tc);
    fx_stop();
}

static void test_stream_slow_client(void **state)
{
    (void)state;
    http_limits_t lim;
    http_limits_default(&lim);
    lim.max_pending_write = 256 * 1024;
    fx_start(&lim);
    tconn_t *tc = tc_open();
    int small = 4096;
    setsockopt(tc->fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    tc_send(tc, "GET /flood HTTP/1.1\r\n\r\n");
    assert_true(wait_for(&flood_after_rc, -EPIPE));
    assert_int_equal(flood_rc, -ENOBUFS);
    tc_close(tc);
    fx_stop();
}

static void test_abort_on_disconnect(void **state)
{
    (void)state;
    fx_start(NULL);
    tconn_t *tc = tc_open();
    tc_send(tc, "GET /wait HTTP/1.1\r\n\r\n");
    assert_true(wait_for(&wait_started, 1));
    assert_int_equal(abort_calls, 0);
    close(tc->fd);
    tc->fd = -1;
    assert_true(wait_for(&abort_calls, 1));
    assert_int_equal(abort_saw_gone, 1);
    assert_true(wait_for(&h_pending, 0));
    tc_close(tc);
    fx_stop();
    assert_int_equal(abort_calls, 1);
}

static void test_503(void **state)
{
    (void)state;
    http_limits_t lim;
    http_limits_default(&lim);
    lim.max_connections = 2;
    fx_start(&lim);
    tconn_t *a = tc_open(), *b = tc_open();
    tresp_t r;
    tc_send(a, "GET /hello HTTP/1.1\r\n\r\n");
    tc_response(a, &r);
    tresp_free(&r);
    tc_send(b, "GET /hello HTTP/1.1\r\n\r\n");
    tc_response(b, &r);
    tresp_free(&r);
    tconn_t *c = tc_open();
    tc_send(c, "GET /hello HTTP/1.1\r\n\r\n");
    expect_error_n(c, 503, "server is at its limit of 2 connections", 2);
    tc_close(c);
    /* a freed slot is usable again */
    tc_close(a);
    tconn_t *d = NULL;
    for (int i = 0; i < 100; i++) {
        d = tc_open();
        tc_send(d, "GET /hello HTTP/1.1\r\n\r\n");
        tc_response(d, &r);
        int st = r.status;
        tresp_free(&r);
        if (st == 200)
            break;
        tc_close(d);
        d = NULL;
        usleep(5000);
    }
    assert_non_null(d);
    tc_close(d);
    tc_close(b);
    fx_stop();
}

static void test_expect_continue(void **state)
{
    (void)state;
    fx_start(NULL);
    tconn_t *tc = tc_open();
    tresp_t r;
    tc_send(tc, "PUT /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    tc_response(tc, &r);
    assert_int_equal(r.status, 100);
    tresp_free(&r);
    tc_send(tc, "data");
    tc_response(tc, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body.data, "PUT /echo q= x-test=- body=data");
    tresp_free(&r);
    /* too big: 413 at once, no 100 */
    tc_send(tc, "PUT /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 999999\r\n\r\n");
    tc_response(tc, &r);
    assert_int_equal(r.status, 413);
    tresp_free(&r);
    assert_true(tc_eof(tc));
    tc_close(tc);
    fx_stop();
}

static void test_shutdown(void **state)
{
    (void)state;
    fx_start(NULL);
    tconn_t *idle = tc_open(), *busy = tc_open();
    tresp_t r;
    tc_send(idle, "GET /hello HTTP/1.1\r\n\r\n");
    tc_response(idle, &r);
    tresp_free(&r);
    tc_send(busy, "GET /wait HTTP/1.1\r\n\r\n");
    assert_true(wait_for(&wait_started, 1));
    fx_shutdown(5000);
    /* idle connection closed, pending request aborted and answered */
    assert_true(tc_eof(idle));
    tc_response(busy, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body.data, "late");
    assert_string_equal(tresp_header(&r, "connection"), "close");
    tresp_free(&r);
    assert_true(tc_eof(busy));
    fx_join();
    assert_int_equal(abort_calls, 1);
    assert_int_equal(abort_saw_gone, 0); /* the client was still there */
    tc_close(idle);
    tc_close(busy);
    /* no longer listening */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)fx.port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_not_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    close(fd);
}

/* A handler that ignores the shutdown: its socket is closed when the grace
 * ends, and the server is freed once the handler ends the request. */
static void test_shutdown_grace(void **state)
{
    (void)state;
    fx_start(NULL);
    tconn_t *tc = tc_open();
    tc_send(tc, "GET /stream HTTP/1.1\r\n\r\n");
    assert_true(tc_read_until(tc, "first-chunk\r\n"));
    tc->len = 0;
    double t0 = now_ms();
    fx_shutdown(100);
    assert_true(tc_eof(tc));
    assert_true(now_ms() - t0 >= 90);
    assert_false(server_done);
    fx_call(stream_finish, NULL);
    assert_int_equal(stream_write_rc, -EPIPE);
    fx_join();
    tc_close(tc);
}

static void test_listen_addresses(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    http_server_t *s = NULL;
    err_t err = {0};
    assert_int_equal(http_server_listen(&loop, "nonsense", NULL, handler, NULL, &s, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "nonsense"));
    assert_int_equal(http_server_listen(&loop, "localhost:80", NULL, handler, NULL, &s, &err),
                     -EINVAL);
    int rc = http_server_listen(&loop, "[::1]:0", NULL, handler, NULL, &s, &err);
    if (rc == 0) {
        assert_true(http_server_port(s) > 0);
        /* the same port again is taken */
        char addr[32];
        snprintf(addr, sizeof(addr), "[::1]:%d", http_server_port(s));
        http_server_t *s2 = NULL;
        assert_int_equal(http_server_listen(&loop, addr, NULL, handler, NULL, &s2, &err),
                         -EADDRINUSE);
        assert_non_null(strstr(err.msg, addr));
        http_server_shutdown(s, 0, NULL, NULL);
    } else {
        assert_true(rc == -EADDRNOTAVAIL || rc == -EAFNOSUPPORT);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- client ------------------------------------------------------------- */

static void test_client_request(void **state)
{
    (void)state;
    fx_start(NULL);
    char url[128];
    http_client_resp_t resp;
    http_client_resp_init(&resp, 1 << 20);
    err_t err = {0};
    http_header_t hs[] = {{"X-Test", "yes"}};
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/echo?a=%%20b", fx.port);
    assert_int_equal(http_client_request("PUT", url, hs, 1, "payload", 7, 5000, &resp, &err), 0);
    assert_int_equal(resp.status, 200);
    assert_string_equal(resp.body.data, "PUT /echo q=a=%20b a= b x-test=yes body=payload");
    char *ct = http_client_resp_header(&resp, "content-type");
    assert_string_equal(ct, "text/plain");
    free(ct);
    assert_null(http_client_resp_header(&resp, "x-missing"));
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/nope", fx.port);
    assert_int_equal(http_client_request("GET", url, NULL, 0, NULL, 0, 5000, &resp, &err), 0);
    assert_int_equal(resp.status, 404);
    assert_string_equal(resp.body.data, "not found");
    http_client_resp_free(&resp);

    http_client_resp_init(&resp, 1000);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/big", fx.port);
    assert_int_equal(http_client_request("GET", url, NULL, 0, NULL, 0, 5000, &resp, &err), -E2BIG);
    assert_non_null(strstr(err.msg, "exceeds 1000 bytes"));
    http_client_resp_free(&resp);
    fx_stop();

    /* nothing listens on that port any more */
    http_client_resp_init(&resp, 1000);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", fx.port);
    assert_int_equal(http_client_request("GET", url, NULL, 0, NULL, 0, 5000, &resp, &err),
                     -ECONNREFUSED);
    char want[256];
    snprintf(want, sizeof(want), "cannot connect to %s: Connection refused", url);
    assert_string_equal(err.msg, want);
    http_client_resp_free(&resp);
}

typedef struct stream_rx {
    buf_t got;
    bool finished_it;
    bool stop_early;
} stream_rx_t;

static int on_stream_data(const char *p, size_t n, void *data)
{
    stream_rx_t *rx = data;
    buf_append(&rx->got, p, n);
    if (rx->stop_early)
        return 1;
    if (!rx->finished_it && strstr(rx->got.data, "first-chunk")) {
        rx->finished_it = true; /* only now does the server end the stream */
        fx_call(stream_finish, NULL);
    }
    return 0;
}

static void test_client_stream(void **state)
{
    (void)state;
    fx_start(NULL);
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/stream", fx.port);
    http_client_resp_t resp;
    http_client_resp_init(&resp, 1000);
    err_t err = {0};
    stream_rx_t rx = {.got = BUF_INIT(0)};
    assert_int_equal(
        http_client_stream("GET", url, NULL, 0, NULL, 0, on_stream_data, &rx, &resp, &err), 0);
    assert_int_equal(resp.status, 200);
    assert_true(rx.finished_it);
    assert_string_equal(rx.got.data, "first-chunksecond-chunk");
    assert_int_equal(resp.body.len, 0);
    buf_free(&rx.got);

    /* on_data stops the transfer: not an error */
    stream_rx_t rx2 = {.got = BUF_INIT(0), .stop_early = true};
    assert_int_equal(
        http_client_stream("GET", url, NULL, 0, NULL, 0, on_stream_data, &rx2, &resp, &err), 0);
    assert_string_equal(rx2.got.data, "first-chunk");
    buf_free(&rx2.got);
    fx_call(stream_finish, NULL);
    http_client_resp_free(&resp);
    fx_stop();
}

int main(void)
{
    log_setup(LOG_OFF, LOG_TEXT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_simple_get),
        cmocka_unit_test(test_keep_alive),
        cmocka_unit_test(test_pipelined_sync),
        cmocka_unit_test(test_pipelined_async_in_order),
        cmocka_unit_test(test_pipelined_over_limit),
        cmocka_unit_test(test_chunked_request),
        cmocka_unit_test(test_413_content_length),
        cmocka_unit_test(test_413_chunked),
        cmocka_unit_test(test_431),
        cmocka_unit_test(test_400_garbage),
        cmocka_unit_test(test_408),
        cmocka_unit_test(test_idle_close),
        cmocka_unit_test(test_slow_reader_not_idle),
        cmocka_unit_test(test_http10),
        cmocka_unit_test(test_head),
        cmocka_unit_test(test_stream),
        cmocka_unit_test(test_stream_http10),
        cmocka_unit_test(test_stream_slow_client),
        cmocka_unit_test(test_abort_on_disconnect),
        cmocka_unit_test(test_503),
        cmocka_unit_test(test_expect_continue),
        cmocka_unit_test(test_shutdown),
        cmocka_unit_test(test_shutdown_grace),
        cmocka_unit_test(test_listen_addresses),
        cmocka_unit_test(test_client_request),
        cmocka_unit_test(test_client_stream),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
