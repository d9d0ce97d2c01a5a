/* A fake drover API (standing in for node agents too) for driving whole
 * CLI verbs in unit tests: the project's HTTP server on a uv loop in a
 * second thread, answering from a table of canned routes, and cli_main run
 * with stdout and stderr captured. Include once per test file. (Self-
 * contained: the test rule may compile it on its own.) */
#ifndef DROVER_TESTS_CLI_FAKE_API_H
#define DROVER_TESTS_CLI_FAKE_API_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cli/cli.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/log.h"
#include "http/server.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

typedef struct fake_route {
    const char *method; /* "GET" */
    const char *target; /* raw request target, matched exactly: "/v1/instances?app=%2Fa" */
    int status;
    const char *location;     /* a 307 to this: "/path" (on this server) or a full URL */
    const char *content_type; /* NULL: application/json */
    const char *body;         /* NULL: none */
    bool chunked;             /* body in two chunks 30 ms apart, as a live stream */
} fake_route_t;

static struct {
    uv_loop_t loop;
    uv_async_t stop;
    pthread_t thread;
    http_server_t *srv;
    int port;
    pthread_mutex_t mu;
    const fake_route_t *routes;
    size_t n_routes;
    buf_t log;  /* "METHOD target\n" per request */
    char *body; /* last request body with one */
    size_t body_len;
    char *reply_body; /* when set, the answer to every POST (a copy) */
} fake = {.mu = PTHREAD_MUTEX_INITIALIZER};

typedef struct fake_chunked {
    http_req_t *req;
    uv_timer_t timer;
    char *rest;
} fake_chunked_t;

static void fake_chunked_closed(uv_handle_t *h)
{
    fake_chunked_t *c = h->data;
    free(c->rest);
    free(c);
}

static void fake_chunked_tick(uv_timer_t *t)
{
    fake_chunked_t *c = t->data;
    http_stream_write(c->req, c->rest, strlen(c->rest));
    http_stream_end(c->req);
    uv_close((uv_handle_t *)&c->timer, fake_chunked_closed);
}

static void fake_handler(http_req_t *req, void *data)
{
    (void)data;
    pthread_mutex_lock(&fake.mu);
    buf_printf(&fake.log, "%s %s\n", req->method, req->target);
    if (req->body_len) {
        free(fake.body);
        fake.body = xmalloc(req->body_len);
        memcpy(fake.body, req->body, req->body_len);
        fake.body_len = req->body_len;
    }
    const fake_route_t *r = NULL;
    for (size_t i = 0; i < fake.n_routes && !r; i++)
        if (!strcmp(fake.routes[i].method, req->method) &&
            !strcmp(fake.routes[i].target, req->target))
            r = &fake.routes[i];
    char *post_reply =
        !strcmp(req->method, "POST") && fake.reply_body ? xstrdup(fake.reply_body) : NULL;
    pthread_mutex_unlock(&fake.mu);
    http_header_t json = {"Content-Type", "application/json"};
    if (post_reply && !r) {
        http_respond(req, 201, &json, 1, post_reply, strlen(post_reply));
        free(post_reply);
        return;
    }
    free(post_reply);
    if (!r) {
        char *b = xasprintf("{\"error\":\"no route for %s\"}", req->target);
        http_respond(req, 404, &json, 1, b, strlen(b));
        free(b);
        return;
    }
    if (r->location) {
        char *loc = r->location[0] == '/'
                        ? xasprintf("http://127.0.0.1:%d%s", fake.port, r->location)
                        : xstrdup(r->location);
        http_header_t h[2] = {{"Location", loc}, json};
        http_respond(req, 307, h, 2, "{\"location\":\"x\"}", 16);
        free(loc);
        return;
    }
    http_header_t ct = {"Content-Type", r->content_type ? r->content_type : "application/json"};
    const char *body = r->body ? r->body : "";
    if (!r->chunked) {
        http_respond(req, r->status, &ct, 1, body, strlen(body));
        return;
    }
    size_t half = strlen(body) / 2;
    http_stream_begin(req, r->status, &ct, 1);
    http_stream_write(req, body, half);
    fake_chunked_t *c = xcalloc(1, sizeof(*c));
    c->req = req;
    c->rest = xstrdup(body + half);
    uv_timer_init(&fake.loop, &c->timer);
    c->timer.data = c;
    uv_timer_start(&c->timer, fake_chunked_tick, 30, 0);
}

static void fake_on_done(void *data)
{
    (void)data;
    uv_close((uv_handle_t *)&fake.stop, NULL);
}

static void fake_on_stop(uv_async_t *a)
{
    (void)a;
    http_server_shutdown(fake.srv, 200, fake_on_done, NULL);
}

static void *fake_main(void *arg)
{
    (void)arg;
    uv_run(&fake.loop, UV_RUN_DEFAULT);
    return NULL;
}

static void fake_start(void)
{
    log_setup(LOG_WARN, LOG_TEXT);
    buf_init(&fake.log, 1 << 20);
    fake.routes = NULL;
    fake.n_routes = 0;
    fake.body = NULL;
    fake.body_len = 0;
    fake.reply_body = NULL;
    assert_int_equal(uv_loop_init(&fake.loop), 0);
    assert_int_equal(uv_async_init(&fake.loop, &fake.stop, fake_on_stop), 0);
    http_limits_t lim;
    http_limits_default(&lim);
    lim.max_body_bytes = 8u << 20;
    err_t err = {0};
    if (http_server_listen(&fake.loop, "127.0.0.1:0", &lim, fake_handler, NULL, &fake.srv, &err))
        fail_msg("listen: %s", err.msg);
    fake.port = http_server_port(fake.srv);
    assert_int_equal(pthread_create(&fake.thread, NULL, fake_main, NULL), 0);
}

static void fake_stop(void)
{
    uv_async_send(&fake.stop);
    pthread_join(fake.thread, NULL);
    assert_int_equal(uv_loop_close(&fake.loop), 0);
    buf_free(&fake.log);
    free(fake.body);
    free(fake.reply_body);
    fake.body = fake.reply_body = NULL;
}

static void fake_set(const fake_route_t *routes, size_t n)
{
    pthread_mutex_lock(&fake.mu);
    fake.routes = routes;
    fake.n_routes = n;
    buf_reset(&fake.log);
    pthread_mutex_unlock(&fake.mu);
}

/* The requests seen since the last fake_set, "METHOD target\n" each. */
static char *fake_log(void)
{
    pthread_mutex_lock(&fake.mu);
    char *s = xstrdup(fake.log.data ? fake.log.data : "");
    pthread_mutex_unlock(&fake.mu);
    return s;
}

/* Run `drover --addr <fake> args...` (NULL-terminated) with stdout and
 * stderr captured, as the binary writes them. */
static int fake_run(char **out, char **err, ...)
{
    char *argv[32];
    char addr[64];
    snprintf(addr, sizeof(addr), "http://127.0.0.1:%d", fake.port);
    int argc = 0;
    argv[argc++] = "drover";
    argv[argc++] = "--addr";
    argv[argc++] = addr;
    va_list ap;
    va_start(ap, err);
    for (char *a; (a = va_arg(ap, char *)) && argc < 31;)
        argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    fflush(stdout);
    fflush(stderr);
    FILE *fo = tmpfile(), *fe = tmpfile();
    assert_non_null(fo);
    assert_non_null(fe);
    int so = dup(1), se = dup(2);
    dup2(fileno(fo), 1);
    dup2(fileno(fe), 2);
    int rc = cli_main(argc, argv);
    fflush(stdout);
    fflush(stderr);
    dup2(so, 1);
    dup2(se, 2);
    close(so);
    close(se);
    FILE *fs[2] = {fo, fe};
    char **dst[2] = {out, err};
    for (int i = 0; i < 2; i++) {
        long n = ftell(fs[i]);
        *dst[i] = xcalloc((size_t)n + 1, 1);
        rewind(fs[i]);
        assert_int_equal(fread(*dst[i], 1, (size_t)n, fs[i]), (size_t)n);
        fclose(fs[i]);
    }
    return rc;
}

#endif
