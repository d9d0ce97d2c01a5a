/* http/server: the listening side. Connections, parsing and responses live
 * in http_conn.c; this file owns the listener, the limits, the Date cache,
 * graceful shutdown and the server's lifetime. */
#include "http/server.h"

#include "core/alloc.h"
#include "core/log.h"
#include "core/str.h"
#include "http/http_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define HTTP_BACKLOG 511

void http_limits_default(http_limits_t *lim)
{
    lim->max_header_bytes = 16 * 1024;
    lim->max_body_bytes = 2 * 1024 * 1024;
    lim->header_timeout_ms = 10 * 1000;
    lim->idle_timeout_ms = 60 * 1000;
    lim->max_connections = 4096;
    lim->max_pending_write = 4 * 1024 * 1024;
    lim->max_pipelined_bytes = 64 * 1024;
    lim->body_limit = NULL;
    lim->body_limit_data = NULL;
}

/* A zero field takes its default, so callers can set only what they mean. */
static void srv_limits(http_limits_t *out, const http_limits_t *lim)
{
    http_limits_t d;
    http_limits_default(&d);
    if (!lim) {
        *out = d;
        return;
    }
    *out = *lim;
#define DEF(f)                                                                                     \
    if (!out->f)                                                                                   \
        out->f = d.f;
    DEF(max_header_bytes)
    DEF(max_body_bytes)
    DEF(header_timeout_ms)
    DEF(idle_timeout_ms)
    DEF(max_connections)
    DEF(max_pending_write)
    DEF(max_pipelined_bytes)
#undef DEF
}

static http_server_t *srv_new(const http_limits_t *lim, http_handler_fn handler, void *data)
{
    http_server_t *s = xcalloc(1, sizeof(*s));
    srv_limits(&s->lim, lim);
    s->handler = handler;
    s->data = data;
    return s;
}

const char *http_server_date(http_server_t *s, size_t *len)
{
    time_t now = time(NULL);
    if (now != s->date_sec || !s->date_len) {
        struct tm tm;
        gmtime_r(&now, &tm);
        s->date_len =
            strftime(s->date, sizeof(s->date), "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
        s->date_sec = now;
    }
    *len = s->date_len;
    return s->date;
}

static void srv_on_connection(uv_stream_t *l, int status)
{
    http_server_t *s = l->data;
    if (status < 0) {
        log_warn("http", "accept on port %d: %s", s->port, uv_strerror(status));
        return;
    }
    if (s->shutting_down)
        return;
    http_conn_accept(s);
}

static void srv_free(http_server_t *s)
{
    void (*done)(void *) = s->done;
    void *done_data = s->done_data;
    free(s->rbuf);
    free(s);
    if (done)
        done(done_data);
}

static void srv_on_handle_close(uv_handle_t *h)
{
    http_server_t *s = h->data;
    if (--s->open_handles == 0 && s->finishing)
        srv_free(s);
}

static void srv_on_defer(uv_timer_t *t)
{
    http_conn_run_deferred(t->data);
}

void http_server_kick_deferred(http_server_t *s)
{
    if (s->loop)
        uv_timer_start(&s->defer_timer, srv_on_defer, 0, 0);
}

static void srv_close_handles(http_server_t *s)
{
    if (!uv_is_closing((uv_handle_t *)&s->listener))
        uv_close((uv_handle_t *)&s->listener, srv_on_handle_close);
    uv_close((uv_handle_t *)&s->grace_timer, srv_on_handle_close);
    uv_close((uv_handle_t *)&s->defer_timer, srv_on_handle_close);
}

int http_server_listen(uv_loop_t *loop, const char *addr, const http_limits_t *lim,
                       http_handler_fn handler, void *data, http_server_t **out, err_t *err)
{
    char *host = NULL;
    int port = 0;
    struct sockaddr_storage ss;
    *out = NULL;
    if (str_split_hostport(addr, &host, &port))
        return err_set(err, -EINVAL, "listen address \"%s\": expected host:port or [v6]:port",
                       addr);
    memset(&ss, 0, sizeof(ss));
    int rc = uv_ip4_addr(host, port, (struct sockaddr_in *)&ss);
    if (rc < 0)
        rc = uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss);
    free(host);
    if (rc < 0)
        return err_set(err, -EINVAL, "listen address \"%s\": host is not a numeric IP address",
                       addr);

    http_server_t *s = srv_new(lim, handler, data);
    s->loop = loop;
    uv_tcp_init(loop, &s->listener);
    uv_timer_init(loop, &s->grace_timer);
    uv_timer_init(loop, &s->defer_timer);
    s->listener.data = s->grace_timer.data = s->defer_timer.data = s;
    s->open_handles = 3;

    rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener, HTTP_BACKLOG, srv_on_connection);
    if (rc == 0) {
        struct sockaddr_storage bound;
        int len = sizeof(bound);
        rc = uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &len);
        if (rc == 0)
            s->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                        : ((struct sockaddr_in *)&bound)->sin_port);
    }
    if (rc < 0) {
        /* The handles are freed by their close callbacks on the next loop turn. */
        s->finishing = true;
        srv_close_handles(s);
        return err_set(err, rc, "listen on %s: %s", addr, uv_strerror(rc));
    }
    s->rbuf = xmalloc(HTTP_READ_SIZE);
    log_info("http", "listening on %s (port %d)", addr, s->port);
    *out = s;
    return 0;
}

int http_server_port(const http_server_t *s)
{
    return s->port;
}

/* Last step of a shutdown: every connection is freed. */
static void srv_maybe_finish(http_server_t *s)
{
    if (!s->shutting_down || s->finishing || s->conns || s->deferred)
        return;
    s->finishing = true;
    uv_timer_stop(&s->grace_timer);
    srv_close_handles(s);
}

void http_server_conn_gone(http_server_t *s)
{
    if (s->loop)
        srv_maybe_finish(s);
}

static void srv_on_grace(uv_timer_t *t)
{
    http_server_t *s = t->data;
    size_t n = 0;
    for (http_conn_t *c = s->conns; c; c = c->next)
        n++;
    if (n)
        log_warn("http", "shutdown grace over: closing %zu connection(s)", n);
    /* Snapshot: closing may free connections (and unlink them) as we go. */
    http_conn_t **all = xmalloc((n ? n : 1) * sizeof(*all));
    size_t i = 0;
    for (http_conn_t *c = s->conns; c; c = c->next) {
        http_conn_hold(c);
        all[i++] = c;
    }
    for (i = 0; i < n; i++)
        http_conn_close(all[i]);
    for (i = 0; i < n; i++)
        http_conn_release(all[i]);
    free(all);
}

void http_server_shutdown(http_server_t *s, uint64_t grace_ms, void (*done)(void *data), void *data)
{
    if (s->shutting_down) {
        log_warn("http", "server on port %d: shutdown called twice", s->port);
        return;
    }
    log_info("http", "server on port %d shutting down (grace %llu ms)", s->port,
             (unsigned long long)grace_ms);
    s->shutting_down = true;
    s->done = done;
    s->done_data = data;
    uv_close((uv_handle_t *)&s->listener, srv_on_handle_close);

    size_t n = 0;
    for (http_conn_t *c = s->conns; c; c = c->next)
        n++;
    http_conn_t **all = xmalloc((n ? n : 1) * sizeof(*all));
    size_t i = 0;
    for (http_conn_t *c = s->conns; c; c = c->next) {
        http_conn_hold(c);
        all[i++] = c;
    }
    for (i = 0; i < n; i++)
        http_conn_shutdown(all[i]);
    for (i = 0; i < n; i++)
        http_conn_release(all[i]);
    free(all);

    uv_timer_start(&s->grace_timer, srv_on_grace, grace_ms, 0);
    srv_maybe_finish(s);
}

const char *http_status_text(int status)
{
    const char *t = http_status_str((enum http_status)status);
    return strcmp(t, "<unknown>") == 0 ? "Unknown" : t;
}

http_server_t *http_server_new_detached(const http_limits_t *lim, http_handler_fn handler,
                                        void *data)
{
    return srv_new(lim, handler, data);
}

void http_server_free_detached(http_server_t *s)
{
    if (s->conns)
        log_error("http", "detached server freed with connections left");
    free(s);
}
