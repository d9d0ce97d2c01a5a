/* http_conn: one HTTP/1.1 connection: parsing (http-parser), dispatch of one
 * request at a time, response framing, and the socket glue (libuv). The same
 * code runs detached from any socket for the fuzzer and tests.
 *
 * Memory: the connection struct embeds the one request it handles at a
 * time, and every buffer (arena, body, output) is reused across requests,
 * so a keep-alive request costs no allocation once the buffers have grown.
 * Reads land in one buffer shared by the whole loop and are parsed in place;
 * only bytes pipelined behind a pending request are copied into the
 * connection's own (bounded) input buffer.
 *
 * Lifetime: a connection is freed when its socket and timer have gone
 * through their close callbacks, no request is pending (the handler may hold
 * a request long after the client left) and no caller on the stack holds it
 * (refs). Abort callbacks always run from a loop callback of their own (the
 * server's defer timer), never inside an http_* call the handler made. */
#include "http/http_internal.h"

#include "core/alloc.h"
#include "core/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum { CB_NONE, CB_FIELD, CB_VALUE };

/* Framing of a response head. */
#define LEN_NONE    (-1) /* no body, or close-delimited */
#define LEN_CHUNKED (-2) /* Transfer-Encoding: chunked */

#define SINK_MAX          (1u << 20)
#define LINGER_MS         2000
#define SHRINK_BYTES      (256u * 1024)
#define REQ_LINE_OVERHEAD 16 /* method, spaces, "HTTP/1.1\r\n" */

static const char http_continue[] = "HTTP/1.1 100 Continue\r\n\r\n";

static int conn_on_message_begin(http_parser *p);
static int conn_on_url(http_parser *p, const char *at, size_t n);
static int conn_on_header_field(http_parser *p, const char *at, size_t n);
static int conn_on_header_value(http_parser *p, const char *at, size_t n);
static int conn_on_headers_complete(http_parser *p);
static int conn_on_body(http_parser *p, const char *at, size_t n);
static int conn_on_message_complete(http_parser *p);
static void conn_on_timer(uv_timer_t *t);
static void conn_on_close(uv_handle_t *h);
static void conn_close(http_conn_t *c);
static void conn_flush(http_conn_t *c);
static void conn_settle(http_conn_t *c);
static uint64_t linger_ms(const http_server_t *s);

static const http_parser_settings conn_settings = {
    .on_message_begin = conn_on_message_begin,
    .on_url = conn_on_url,
    .on_header_field = conn_on_header_field,
    .on_header_value = conn_on_header_value,
    .on_headers_complete = conn_on_headers_complete,
    .on_body = conn_on_body,
    .on_message_complete = conn_on_message_complete,
};

static http_conn_t *conn_of(const http_req_t *r)
{
    return (http_conn_t *)r;
}

static void *grow(void *p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return p;
    size_t n = *cap ? *cap : 16;
    while (n < need)
        n *= 2;
    *cap = n;
    return xrealloc(p, n * elem);
}

/* Decimal or hex without printf: this runs several times per response. */
static size_t fmt_uint(char *out, uint64_t v, unsigned base)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

static void out_str(buf_t *b, const char *s)
{
    (void)buf_append(b, s, strlen(s));
}

static void out_uint(buf_t *b, uint64_t v, unsigned base)
{
    char num[24];
    (void)buf_append(b, num, fmt_uint(num, v, base));
}

/* ---- lifetime ---------------------------------------------------------- */

static http_conn_t *conn_new(http_server_t *s)
{
    http_conn_t *c = xcalloc(1, sizeof(*c));
    c->srv = s;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    buf_init(&c->arena, 0);
    buf_init(&c->body, s->lim.max_body_bytes);
    buf_init(&c->out, 0);
    buf_init(&c->wout, 0);
    buf_init(&c->sink, 0);
    buf_init(&c->dec, 0);
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    c->wreq.data = c;
    c->sreq.data = c;
    c->tcp.data = c;
    c->timer.data = c;
    snprintf(c->remote, sizeof(c->remote), "?");
    return c;
}

/* Free once nothing can reach the connection any more (see the top). */
static void conn_maybe_free(http_conn_t *c)
{
    if (c->refs > 0 || c->open_handles > 0 || !c->closed || c->pending)
        return;
    http_server_t *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->counted)
        s->n_conns--;
    buf_free(&c->arena);
    buf_free(&c->dec);
    buf_free(&c->body);
    buf_free(&c->out);
    buf_free(&c->wout);
    buf_free(&c->sink);
    free(c->in);
    free(c->hspans);
    free(c->pspans);
    free(c->hdrs);
    free(c->params);
    free(c);
    http_server_conn_gone(s);
}

void http_conn_hold(http_conn_t *c)
{
    c->refs++;
}

void http_conn_release(http_conn_t *c)
{
    c->refs--;
    conn_maybe_free(c);
}

/* Queue the abort callback for the next loop turn: the handler may be in
 * the middle of an http_* call on this request right now. */
static void conn_queue_abort(http_conn_t *c)
{
    if (!c->pending || !c->abort_due || !c->abort_cb || c->abort_notified || c->deferred)
        return;
    http_server_t *s = c->srv;
    c->deferred = true;
    http_conn_hold(c);
    c->defer_next = s->deferred;
    s->deferred = c;
    http_server_kick_deferred(s);
}

void http_conn_run_deferred(http_server_t *s)
{
    while (s->deferred) {
        http_conn_t *c = s->deferred;
        s->deferred = c->defer_next;
        c->deferred = false;
        if (c->pending && c->abort_cb && !c->abort_notified) {
            c->abort_notified = true;
            c->abort_cb(&c->req, c->abort_data);
        }
        http_conn_release(c);
    }
}

static void conn_close(http_conn_t *c)
{
    if (c->closed)
        return;
    c->closed = true;
    c->closing = true;
    c->reading = false;
    if (c->srv->loop) {
        uv_close((uv_handle_t *)&c->tcp, conn_on_close);
        uv_close((uv_handle_t *)&c->timer, conn_on_close);
    }
    if (c->pending) {
        c->aborted = true;
        c->abort_due = true;
        log_debug("http", "%s: client gone while %s %s is pending", c->remote, c->req.method,
                  c->req.target);
        conn_queue_abort(c);
    }
}

static void conn_on_close(uv_handle_t *h)
{
    http_conn_t *c = h->data;
    c->open_handles--;
    conn_maybe_free(c);
}

void http_conn_close(http_conn_t *c)
{
    http_conn_hold(c);
    conn_close(c);
    http_conn_release(c);
}

/* ---- responses --------------------------------------------------------- */

static bool header_name_ok(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch <= ' ' || ch >= 127 || strchr("()<>@,;:\\\"/[]?={}", ch))
            return false;
    }
    return true;
}

/* Headers the server owns; a handler's copy would contradict the framing. */
static bool header_reserved(const char *s)
{
    return strcasecmp(s, "content-length") == 0 || strcasecmp(s, "transfer-encoding") == 0 ||
           strcasecmp(s, "connection") == 0 || strcasecmp(s, "date") == 0;
}

/* Append a status line and header block to c->out. `len` is the body
 * length, LEN_CHUNKED or LEN_NONE. */
static void conn_head(http_conn_t *c, int status, const http_header_t *h, size_t nh, int64_t len)
{
    buf_t *o = &c->out;
    (void)buf_append(o, "HTTP/1.1 ", 9);
    out_uint(o, (uint64_t)status, 10);
    (void)buf_append(o, " ", 1);
    out_str(o, http_status_text(status));
    (void)buf_append(o, "\r\n", 2);
    size_t dlen;
    const char *date = http_server_date(c->srv, &dlen);
    (void)buf_append(o, date, dlen);
    if (len >= 0) {
        (void)buf_append(o, "Content-Length: ", 16);
        out_uint(o, (uint64_t)len, 10);
        (void)buf_append(o, "\r\n", 2);
    } else if (len == LEN_CHUNKED) {
        out_str(o, "Transfer-Encoding: chunked\r\n");
    }
    if (!c->keep_alive)
        out_str(o, "Connection: close\r\n");
    else if (c->req.http_major == 1 && c->req.http_minor == 0)
        out_str(o, "Connection: keep-alive\r\n");
    for (size_t i = 0; i < nh; i++) {
        if (!h[i].name || !h[i].value || !header_name_ok(h[i].name) ||
            strpbrk(h[i].value, "\r\n")) {
            log_warn("http", "%s: dropping invalid response header %s", c->remote,
                     h[i].name ? h[i].name : "(null)");
            continue;
        }
        if (header_reserved(h[i].name))
            continue;
        out_str(o, h[i].name);
        (void)buf_append(o, ": ", 2);
        out_str(o, h[i].value);
        (void)buf_append(o, "\r\n", 2);
    }
    (void)buf_append(o, "\r\n", 2);
}

/* The server's own error answer; the connection closes after it. */
static void conn_fail(http_conn_t *c, int status, const char *msg)
{
    log_warn("http", "%s: %d %s: %s", c->remote, status, http_status_text(status), msg);
    static const http_header_t plain = {"Content-Type", "text/plain; charset=utf-8"};
    size_t n = strlen(msg);
    c->msg_started = false;
    c->keep_alive = false;
    c->closing = true;
    c->status = status;
    conn_head(c, status, &plain, 1, (int64_t)n + 1);
    if (!c->head_req) {
        (void)buf_append(&c->out, msg, n);
        (void)buf_append(&c->out, "\n", 1);
    }
    /* Bounds how long an unread error response can hold the connection. */
    if (c->srv->loop && !c->closed)
        uv_timer_start(&c->timer, conn_on_timer, linger_ms(c->srv) + 1000, 0);
}

/* ---- socket glue ------------------------------------------------------- */

static void conn_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    http_conn_t *c = h->data;
    size_t n = HTTP_READ_SIZE;
    if (c->pending && !c->closing) {
        /* Read no more than fits under the pipelining bound (plus one byte,
         * which tells us the bound is crossed and reading must stop). */
        size_t buffered = c->in_len - c->in_off, lim = c->srv->lim.max_pipelined_bytes;
        size_t room = buffered >= lim ? 1 : lim - buffered + 1;
        if (room < n)
            n = room;
    }
    b->base = c->srv->rbuf;
    b->len = n;
}

static void conn_input(http_conn_t *c, const char *p, size_t n);

static void conn_on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    http_conn_t *c = st->data;
    if (nread == 0)
        return;
    http_conn_hold(c);
    if (nread < 0) {
        if (nread != UV_EOF && nread != UV_ECONNRESET)
            log_debug("http", "%s: read: %s", c->remote, uv_strerror((int)nread));
        conn_close(c);
    } else {
        conn_input(c, b->base, (size_t)nread);
    }
    http_conn_release(c);
}

static int conn_read_start(http_conn_t *c)
{
    if (c->reading)
        return 0;
    int rc = uv_read_start((uv_stream_t *)&c->tcp, conn_on_alloc, conn_on_read);
    if (rc < 0) {
        log_debug("http", "%s: read start: %s", c->remote, uv_strerror(rc));
        conn_close(c);
        return rc;
    }
    c->reading = true;
    return 0;
}

static void conn_on_shutdown(uv_shutdown_t *req, int status)
{
    http_conn_t *c = req->data;
    if (status < 0 && status != UV_ECANCELED) {
        http_conn_hold(c);
        conn_close(c);
        http_conn_release(c);
    }
}

/* Everything is written and the connection takes no more requests: shut
 * the write side and drain what the client still sends, so that closing
 * does not reset the connection and destroy the response in flight. */
static void conn_finish(http_conn_t *c)
{
    if (c->lingering || c->closed)
        return;
    if (!c->srv->loop) {
        conn_close(c);
        return;
    }
    c->lingering = true;
    if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, conn_on_shutdown) < 0) {
        conn_close(c);
        return;
    }
    if (conn_read_start(c) < 0)
        return;
    uv_timer_start(&c->timer, conn_on_timer, linger_ms(c->srv), 0);
}

static void conn_on_write(uv_write_t *w, int status)
{
    http_conn_t *c = w->data;
    c->writing = false;
    buf_reset(&c->wout);
    if (c->wout.cap > SHRINK_BYTES)
        buf_free(&c->wout);
    http_conn_hold(c);
    if (status < 0) {
        if (status != UV_ECANCELED)
            log_debug("http", "%s: write: %s", c->remote, uv_strerror(status));
        conn_close(c);
    } else {
        conn_flush(c);
        conn_settle(c);
    }
    http_conn_release(c);
}

/* Send what collected in c->out. Most of the time the kernel takes it all
 * at once (uv_try_write: no write request, no callback); the rest goes out
 * with one uv_write. Only one uv_write is in flight; what collects meanwhile
 * follows when it completes. Several pipelined responses leave together. */
static void conn_flush(http_conn_t *c)
{
    if (c->closed || c->writing)
        return;
    if (c->out.len > 0) {
        if (!c->srv->loop) {
            if (c->sink.len + c->out.len <= SINK_MAX)
                (void)buf_append(&c->sink, c->out.data, c->out.len);
            buf_reset(&c->out);
        } else {
            uv_buf_t b = {.base = c->out.data, .len = c->out.len};
            int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
            if (n < 0 && n != UV_EAGAIN) {
                log_debug("http", "%s: write: %s", c->remote, uv_strerror(n));
                conn_close(c);
                return;
            }
            if (n > 0 && (size_t)n == c->out.len) {
                buf_reset(&c->out);
                if (c->out.cap > SHRINK_BYTES)
                    buf_free(&c->out);
            } else {
                if (n > 0)
                    buf_consume(&c->out, (size_t)n);
                buf_t t = c->wout;
                c->wout = c->out;
                c->out = t;
                b.base = c->wout.data;
                b.len = c->wout.len;
                int rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, conn_on_write);
                if (rc < 0) {
                    log_debug("http", "%s: write: %s", c->remote, uv_strerror(rc));
                    conn_close(c);
                    return;
                }
                c->writing = true;
                return;
            }
        }
    }
    if (c->closing && !c->pending)
        conn_finish(c);
}

/* Bring reading and the idle timer in line with the connection's state
 * after anything changed it. */
static void conn_settle(http_conn_t *c)
{
    if (c->closed || c->closing || !c->srv->loop)
        return;
    /* Only a transition starts the idle timer: bytes that begin no request
     * (stray CRLFs) must not keep an idle connection alive. Idle starts when
     * the last response is written: a slow reader of a big response is not
     * idle. */
    if (!c->pending && !c->msg_started && !c->writing && !uv_is_active((uv_handle_t *)&c->timer))
        uv_timer_start(&c->timer, conn_on_timer, c->srv->lim.idle_timeout_ms, 0);
    bool want = !c->pending || c->in_len - c->in_off <= c->srv->lim.max_pipelined_bytes;
    if (want) {
        conn_read_start(c);
    } else if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

static void conn_on_timer(uv_timer_t *t)
{
    http_conn_t *c = t->data;
    http_conn_hold(c);
    if (c->closing || c->lingering) {
        conn_close(c);
    } else if (c->msg_started && !c->pending) {
        char msg[96];
        snprintf(msg, sizeof(msg), "request not complete within %llu ms",
                 (unsigned long long)c->srv->lim.header_timeout_ms);
        conn_fail(c, 408, msg);
        conn_flush(c);
    } else if (!c->pending) {
        log_debug("http", "%s: idle, closing", c->remote);
        conn_close(c);
    }
    http_conn_release(c);
}

/* ---- request parsing --------------------------------------------------- */

__attribute__((format(printf, 3, 4))) static int conn_reject(http_conn_t *c, int status,
                                                             const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err_msg, sizeof(c->err_msg), fmt, ap);
    va_end(ap);
    c->err_status = status;
    return -1;
}

static int conn_count(http_conn_t *c, size_t n)
{
    c->hdr_bytes += n;
    if (c->hdr_bytes > c->srv->lim.max_header_bytes)
        return conn_reject(c, 431, "request header block exceeds %zu bytes",
                           c->srv->lim.max_header_bytes);
    return 0;
}

static int conn_on_message_begin(http_parser *p)
{
    http_conn_t *c = p->data;
    c->msg_started = true;
    c->headers_done = false;
    c->last_cb = CB_NONE;
    c->url_len = 0;
    c->hdr_bytes = REQ_LINE_OVERHEAD;
    c->n_hspans = c->n_pspans = 0;
    c->err_status = 0;
    c->head_req = false;
    buf_reset(&c->arena);
    buf_reset(&c->dec);
    buf_reset(&c->body);
    if (c->srv->loop && !c->closed)
        uv_timer_start(&c->timer, conn_on_timer, c->srv->lim.header_timeout_ms, 0);
    return 0;
}

static int conn_on_url(http_parser *p, const char *at, size_t n)
{
    http_conn_t *c = p->data;
    if (conn_count(c, n))
        return -1;
    (void)buf_append(&c->arena, at, n);
    c->url_len += n;
    return 0;
}

static int conn_on_header_field(http_parser *p, const char *at, size_t n)
{
    http_conn_t *c = p->data;
    if (conn_count(c, n))
        return -1;
    if (c->headers_done) /* chunked trailers: bounded, not kept */
        return 0;
    if (c->last_cb != CB_FIELD) {
        if (conn_count(c, 4)) /* ": " and CRLF */
            return -1;
        (void)buf_append(&c->arena, "", 1); /* ends the target or the previous value */
        c->hspans = grow(c->hspans, &c->cap_hspans, c->n_hspans + 1, sizeof(*c->hspans));
        c->hspans[c->n_hspans].name = c->arena.len;
        c->hspans[c->n_hspans].value = 0;
        c->n_hspans++;
        c->last_cb = CB_FIELD;
    }
    (void)buf_append(&c->arena, at, n);
    return 0;
}

static int conn_on_header_value(http_parser *p, const char *at, size_t n)
{
    http_conn_t *c = p->data;
    if (conn_count(c, n))
        return -1;
    if (c->headers_done)
        return 0;
    if (c->last_cb == CB_NONE)
        return conn_reject(c, 400, "header value without a name");
    if (c->last_cb == CB_FIELD) {
        (void)buf_append(&c->arena, "", 1);
        c->hspans[c->n_hspans - 1].value = c->arena.len;
        c->last_cb = CB_VALUE;
    }
    (void)buf_append(&c->arena, at, n);
    return 0;
}

/* Append the percent-decoding of s[0..n) and a NUL to `out`, '+' becoming a
 * space when `plus` (form rules for query parameters); *at gets the offset.
 * Not str_url_decode(): this writes into the connection's reused buffer
 * instead of a malloc per string, and knows the '+' rule. Returns -1 for a
 * malformed escape or a decoded NUL. */
static int http_decode(buf_t *out, const char *s, size_t n, bool plus, size_t *at)
{
    static const signed char hex[256] = {
        ['0'] = 1,  ['1'] = 2,  ['2'] = 3,  ['3'] = 4,  ['4'] = 5,  ['5'] = 6,
        ['6'] = 7,  ['7'] = 8,  ['8'] = 9,  ['9'] = 10, ['a'] = 11, ['b'] = 12,
        ['c'] = 13, ['d'] = 14, ['e'] = 15, ['f'] = 16, ['A'] = 11, ['B'] = 12,
        ['C'] = 13, ['D'] = 14, ['E'] = 15, ['F'] = 16,
    };
    *at = out->len;
    size_t run = 0; /* start of the current run of literal bytes */
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch != '%' && !(plus && ch == '+'))
            continue;
        (void)buf_append(out, s + run, i - run);
        if (ch == '+') {
            (void)buf_append(out, " ", 1);
        } else {
            if (n - i < 3)
                return -1;
            int hi = hex[(unsigned char)s[i + 1]], lo = hex[(unsigned char)s[i + 2]];
            if (!hi || !lo || (hi == 1 && lo == 1))
                return -1;
            char d = (char)((hi - 1) * 16 + (lo - 1));
            (void)buf_append(out, &d, 1);
            i += 2;
        }
        run = i + 1;
    }
    (void)buf_append(out, s + run, n - run);
    if (memchr(s, '\0', n)) /* cannot come from the parser; stay safe */
        return -1;
    return buf_append(out, "", 1);
}

/* Split the request target into path and query, decode the path and the
 * query parameters into c->dec and point the request at them. */
static int conn_target(http_conn_t *c, bool is_connect)
{
    const char *t = c->arena.data;
    size_t n = c->url_len;
    size_t path_at = 0, path_len = 0, q_at = 0, q_len = 0;
    const char *path_src = t;
    if (n > 0 && t[0] == '/') {
        const char *hash = memchr(t, '#', n);
        size_t end = hash ? (size_t)(hash - t) : n;
        const char *qm = memchr(t, '?', end);
        path_len = qm ? (size_t)(qm - t) : end;
        if (qm) {
            q_at = path_len + 1;
            q_len = end - q_at;
        }
    } else if (is_connect || (n == 1 && t[0] == '*')) {
        path_len = n; /* authority or asterisk form: the path is the target */
    } else {
        /* absolute form: "http://host:port/path?query" */
        struct http_parser_url u;
        http_parser_url_init(&u);
        if (n > UINT16_MAX || http_parser_parse_url(t, n, 0, &u))
            return conn_reject(c, 400, "invalid request target");
        if (u.field_set & (1 << UF_PATH)) {
            path_at = u.field_data[UF_PATH].off;
            path_len = u.field_data[UF_PATH].len;
        } else {
            path_src = "/";
            path_len = 1;
        }
        if (u.field_set & (1 << UF_QUERY)) {
            q_at = u.field_data[UF_QUERY].off;
            q_len = u.field_data[UF_QUERY].len;
        }
    }
    if (path_src == t)
        path_src = t + path_at;

    size_t path_off, query_off;
    if (http_decode(&c->dec, path_src, path_len, false, &path_off))
        return conn_reject(c, 400, "invalid percent-encoding in the request path");
    query_off = c->dec.len;
    (void)buf_append(&c->dec, t + q_at, q_len);
    (void)buf_append(&c->dec, "", 1);

    const char *q = t + q_at;
    for (size_t i = 0; i < q_len;) {
        const char *amp = memchr(q + i, '&', q_len - i);
        size_t j = amp ? (size_t)(amp - q) : q_len;
        if (j > i) {
            const char *seg = q + i;
            size_t len = j - i;
            const char *eq = memchr(seg, '=', len);
            size_t nlen = eq ? (size_t)(eq - seg) : len;
            c->pspans = grow(c->pspans, &c->cap_pspans, c->n_pspans + 1, sizeof(*c->pspans));
            http_span_t *sp = &c->pspans[c->n_pspans++];
            if (http_decode(&c->dec, seg, nlen, true, &sp->name) ||
                http_decode(&c->dec, eq ? eq + 1 : "", eq ? len - nlen - 1 : 0, true, &sp->value))
                return conn_reject(c, 400, "invalid percent-encoding in query parameter %.*s",
                                   (int)(nlen < 64 ? nlen : 64), seg);
        }
        i = j + 1;
    }

    /* c->dec no longer grows for this request: pointers are stable now. */
    http_req_t *r = &c->req;
    r->target = c->arena.data;
    r->path = c->dec.data + path_off;
    r->query = c->dec.data + query_off;
    c->params = grow(c->params, &c->cap_params, c->n_pspans, sizeof(*c->params));
    for (size_t i = 0; i < c->n_pspans; i++) {
        c->params[i].name = c->dec.data + c->pspans[i].name;
        c->params[i].value = c->dec.data + c->pspans[i].value;
    }
    r->params = c->params;
    r->n_params = c->n_pspans;
    return 0;
}

static int conn_on_headers_complete(http_parser *p)
{
    http_conn_t *c = p->data;
    http_server_t *s = c->srv;
    http_req_t *r = &c->req;
    c->headers_done = true;
    if (c->last_cb == CB_FIELD) { /* a name whose value never came: "" */
        (void)buf_append(&c->arena, "", 1);
        c->hspans[c->n_hspans - 1].value = c->arena.len;
    }
    (void)buf_append(&c->arena, "", 1);

    r->method = http_method_str((enum http_method)p->method);
    r->http_major = p->http_major;
    r->http_minor = p->http_minor;
    c->head_req = p->method == HTTP_HEAD;
    /* An upgrade (or CONNECT) turns the rest of the stream into another
     * protocol, which drover does not speak: answer, then close. */
    c->keep_alive = http_should_keep_alive(p) && !p->upgrade;
    if (p->http_major != 1)
        return conn_reject(c, 505, "HTTP version %u.%u is not supported", p->http_major,
                           p->http_minor);

    c->hdrs = grow(c->hdrs, &c->cap_hdrs, c->n_hspans, sizeof(*c->hdrs));
    bool has_cl = false, has_te = false;
    const char *expect = NULL;
    for (size_t i = 0; i < c->n_hspans; i++) {
        const char *name = c->arena.data + c->hspans[i].name;
        c->hdrs[i].name = name;
        c->hdrs[i].value = c->arena.data + c->hspans[i].value;
        if (strcasecmp(name, "content-length") == 0)
            has_cl = true;
        else if (strcasecmp(name, "transfer-encoding") == 0)
            has_te = true;
        else if (strcasecmp(name, "expect") == 0)
            expect = c->hdrs[i].value;
    }
    r->headers = c->hdrs;
    r->n_headers = c->n_hspans;
    /* Two framings disagreeing is how requests are smuggled past proxies. */
    if (has_cl && has_te)
        return conn_reject(c, 400, "request has both Content-Length and Transfer-Encoding");
    if (conn_target(c, p->method == HTTP_CONNECT))
        return -1;
    /* The route decides how big its body may be; known only now that the
     * path is decoded. */
    c->body.max = s->lim.max_body_bytes;
    if (s->lim.body_limit) {
        size_t lim = s->lim.body_limit(r->method, r->path, s->lim.body_limit_data);
        if (lim)
            c->body.max = lim;
    }
    bool chunked = p->flags & F_CHUNKED;
    if (!chunked && p->content_length != ULLONG_MAX && p->content_length > c->body.max)
        return conn_reject(c, 413, "request body of %llu bytes exceeds %zu bytes",
                           (unsigned long long)p->content_length, c->body.max);
    bool has_body = chunked || (p->content_length > 0 && p->content_length != ULLONG_MAX);
    if (expect && strcasecmp(expect, "100-continue") == 0 && p->http_minor >= 1 && has_body) {
        /* Goes out when the parse loop flushes, i.e. once it waits for the body. */
        (void)buf_append(&c->out, http_continue, sizeof(http_continue) - 1);
    }
    return 0;
}

static int conn_on_body(http_parser *p, const char *at, size_t n)
{
    http_conn_t *c = p->data;
    if (buf_append(&c->body, at, n))
        return conn_reject(c, 413, "request body exceeds %zu bytes", c->body.max);
    return 0;
}

/* Pause so the parse loop dispatches this request before looking at the
 * next one: requests on a connection are handled one at a time. */
static int conn_on_message_complete(http_parser *p)
{
    http_parser_pause(p, 1);
    return 0;
}

static void conn_dispatch(http_conn_t *c)
{
    http_server_t *s = c->srv;
    http_req_t *r = &c->req;
    c->msg_started = false;
    c->pending = true;
    c->streaming = c->chunked_out = false;
    c->aborted = c->abort_due = c->abort_notified = false;
    c->abort_cb = NULL;
    c->abort_data = NULL;
    c->status = 0;
    r->body = c->body.data ? c->body.data : "";
    r->body_len = c->body.len;
    r->user = NULL;
    r->remote = c->remote;
    if (s->loop)
        uv_timer_stop(&c->timer);
    if (s->shutting_down) {
        c->keep_alive = false;
        c->abort_due = true;
    }
    s->handler(r, s->data);
}

static void conn_parse_error(http_conn_t *c, enum http_errno e)
{
    if (c->err_status) {
        conn_fail(c, c->err_status, c->err_msg);
    } else if (e == HPE_HEADER_OVERFLOW) {
        conn_fail(c, 431, "request header block too large");
    } else {
        char msg[192];
        snprintf(msg, sizeof(msg), "malformed request: %s: %s", http_errno_name(e),
                 http_errno_description(e));
        conn_fail(c, 400, msg);
    }
}

/* Run the parser over p[0..n) until it needs more bytes, a dispatched
 * request is still pending, or the connection takes no more requests.
 * Handlers that answer at once are answered inside the loop, and all their
 * responses are flushed together at its end. Returns the bytes consumed. */
static size_t conn_parse(http_conn_t *c, const char *p, size_t n)
{
    size_t off = 0;
    c->in_parse = true;
    while (off < n && !c->pending && !c->closing) {
        size_t used = http_parser_execute(&c->parser, &conn_settings, p + off, n - off);
        off += used;
        enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
        if (e == HPE_PAUSED) {
            http_parser_pause(&c->parser, 0);
            conn_dispatch(c);
        } else if (e != HPE_OK) {
            conn_parse_error(c, e);
        } else if (used == 0) {
            break;
        }
    }
    c->in_parse = false;
    conn_flush(c);
    return off;
}

static void conn_in_append(http_conn_t *c, const char *p, size_t n)
{
    if (c->in_off == c->in_len)
        c->in_off = c->in_len = 0;
    if (c->in_cap - c->in_len < n && c->in_off) {
        memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
        c->in_len -= c->in_off;
        c->in_off = 0;
    }
    if (c->in_cap - c->in_len < n) {
        size_t cap = c->in_cap ? c->in_cap : 4096;
        while (cap - c->in_len < n)
            cap *= 2;
        c->in = xrealloc(c->in, cap);
        c->in_cap = cap;
    }
    memcpy(c->in + c->in_len, p, n);
    c->in_len += n;
}

/* Parse the bytes that were held back while a request was pending. */
static void conn_parse_buffered(http_conn_t *c)
{
    if (c->in_len > c->in_off && !c->closing)
        c->in_off += conn_parse(c, c->in + c->in_off, c->in_len - c->in_off);
    if (c->in_off == c->in_len || c->closing) {
        c->in_off = c->in_len = 0;
        if (c->in_cap > HTTP_READ_SIZE) {
            free(c->in);
            c->in = NULL;
            c->in_cap = 0;
        }
    }
}

/* New bytes from the client. */
static void conn_input(http_conn_t *c, const char *p, size_t n)
{
    if (c->closing) /* answered for the last time: drain */
        return;
    if (c->pending || c->in_len > c->in_off) {
        conn_in_append(c, p, n);
        if (!c->pending)
            conn_parse_buffered(c);
    } else {
        size_t used = conn_parse(c, p, n);
        if (used < n && !c->closing)
            conn_in_append(c, p + used, n - used);
    }
    conn_settle(c);
}

/* The handler ended the current request. */
static void conn_end(http_conn_t *c)
{
    c->pending = false;
    c->streaming = false;
    c->abort_cb = NULL;
    c->abort_data = NULL;
    log_debug("http", "%s %s %s -> %d", c->remote, c->req.method, c->req.target, c->status);
    if (c->body.cap > SHRINK_BYTES)
        buf_free(&c->body);
    if (c->closed)
        return;
    if (!c->keep_alive)
        c->closing = true;
    if (c->in_parse)
        return; /* the parse loop goes on with the next request and flushes */
    conn_parse_buffered(c);
    conn_flush(c);
    conn_settle(c);
}

/* ---- handler API ------------------------------------------------------- */

void http_respond(http_req_t *r, int status, const http_header_t *headers, size_t n_headers,
                  const void *body, size_t len)
{
    http_conn_t *c = conn_of(r);
    if (!c->pending || c->streaming) {
        log_error("http", "http_respond on a request that is %s",
                  c->pending ? "streaming" : "already ended");
        return;
    }
    if (status < 100 || status > 999) {
        log_error("http", "%s %s: handler answered with status %d; sending 500", r->method,
                  r->target, status);
        status = 500;
    }
    http_conn_hold(c);
    c->status = status;
    if (!c->closed) {
        if (c->srv->shutting_down)
            c->keep_alive = false;
        bool no_body = status < 200 || status == 204 || status == 304;
        conn_head(c, status, headers, n_headers, no_body ? LEN_NONE : (int64_t)len);
        if (!no_body && !c->head_req && len)
            (void)buf_append(&c->out, body, len);
    }
    conn_end(c);
    http_conn_release(c);
}

int http_stream_begin(http_req_t *r, int status, const http_header_t *headers, size_t n_headers)
{
    http_conn_t *c = conn_of(r);
    if (!c->pending || c->streaming) {
        log_error("http", "http_stream_begin on a request that is %s",
                  c->pending ? "streaming" : "already ended");
        return -EINVAL;
    }
    if (status < 100 || status > 999)
        status = 500;
    c->streaming = true;
    c->status = status;
    if (c->closed)
        return -EPIPE;
    if (c->srv->shutting_down)
        c->keep_alive = false;
    c->chunked_out = r->http_minor >= 1;
    if (!c->chunked_out)
        c->keep_alive = false; /* HTTP/1.0: the body ends when the connection does */
    conn_head(c, status, headers, n_headers, c->chunked_out ? LEN_CHUNKED : LEN_NONE);
    conn_flush(c); /* even inside the parse loop: a stream's bytes should not wait */
    return c->closed ? -EPIPE : 0;
}

int http_stream_write(http_req_t *r, const void *data, size_t len)
{
    http_conn_t *c = conn_of(r);
    if (!c->pending || !c->streaming)
        return -EINVAL;
    if (c->closed)
        return -EPIPE;
    if (c->head_req || len == 0)
        return 0;
    size_t queued = c->out.len;
    if (c->srv->loop)
        queued += uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
    if (queued > 0 && queued + len > c->srv->lim.max_pending_write) {
        log_warn("http", "%s: %s %s: client too slow (%zu bytes pending), dropping it", c->remote,
                 r->method, r->target, queued);
        c->abort_notified = true; /* the handler learns it from -ENOBUFS */
        conn_close(c);
        return -ENOBUFS;
    }
    if (c->chunked_out) {
        out_uint(&c->out, len, 16);
        (void)buf_append(&c->out, "\r\n", 2);
    }
    (void)buf_append(&c->out, data, len);
    if (c->chunked_out)
        (void)buf_append(&c->out, "\r\n", 2);
    conn_flush(c);
    return c->closed ? -EPIPE : 0;
}

size_t http_stream_pending(const http_req_t *r)
{
    const http_conn_t *c = conn_of(r);
    if (!c->pending || !c->streaming || c->closed)
        return 0;
    size_t queued = c->out.len;
    if (c->srv->loop)
        queued += uv_stream_get_write_queue_size((const uv_stream_t *)&c->tcp);
    return queued;
}

void http_stream_end(http_req_t *r)
{
    http_conn_t *c = conn_of(r);
    if (!c->pending || !c->streaming) {
        log_error("http", "http_stream_end on a request that is not streaming");
        return;
    }
    http_conn_hold(c);
    if (!c->closed && c->chunked_out && !c->head_req)
        (void)buf_append(&c->out, "0\r\n\r\n", 5);
    conn_end(c);
    http_conn_release(c);
}

void http_req_on_abort(http_req_t *r, void (*cb)(http_req_t *r, void *data), void *data)
{
    http_conn_t *c = conn_of(r);
    if (!c->pending)
        return;
    c->abort_cb = cb;
    c->abort_data = data;
    conn_queue_abort(c); /* the client may be gone already */
}

bool http_req_aborted(const http_req_t *r)
{
    return conn_of(r)->aborted;
}

const char *http_req_header(const http_req_t *r, const char *name)
{
    for (size_t i = 0; i < r->n_headers; i++)
        if (strcasecmp(r->headers[i].name, name) == 0)
            return r->headers[i].value;
    return NULL;
}

const char *http_req_param(const http_req_t *r, const char *name)
{
    for (size_t i = 0; i < r->n_params; i++)
        if (strcmp(r->params[i].name, name) == 0)
            return r->params[i].value;
    return NULL;
}

/* ---- server side ------------------------------------------------------- */

static void conn_peer_name(http_conn_t *c)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    char ip[INET6_ADDRSTRLEN];
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) < 0)
        return;
    if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
        if (uv_ip6_name(a, ip, sizeof(ip)) == 0)
            snprintf(c->remote, sizeof(c->remote), "[%s]:%u", ip, ntohs(a->sin6_port));
    } else if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
        if (uv_ip4_name(a, ip, sizeof(ip)) == 0)
            snprintf(c->remote, sizeof(c->remote), "%s:%u", ip, ntohs(a->sin_port));
    }
}

void http_conn_accept(http_server_t *s)
{
    http_conn_t *c = conn_new(s);
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->open_handles = 2;
    http_conn_hold(c);
    int rc = uv_accept((uv_stream_t *)&s->listener, (uv_stream_t *)&c->tcp);
    if (rc < 0) {
        log_warn("http", "accept: %s", uv_strerror(rc));
        conn_close(c);
    } else {
        uv_tcp_nodelay(&c->tcp, 1);
        conn_peer_name(c);
        if (s->n_conns >= s->lim.max_connections) {
            char msg[96];
            snprintf(msg, sizeof(msg), "server is at its limit of %zu connections",
                     s->lim.max_connections);
            conn_fail(c, 503, msg);
            conn_flush(c);
        } else {
            c->counted = true;
            s->n_conns++;
            /* A fresh connection gets the shorter of the two timeouts:
             * connections that never send a request are cheap to make. */
            uint64_t ms = s->lim.idle_timeout_ms < s->lim.header_timeout_ms
                              ? s->lim.idle_timeout_ms
                              : s->lim.header_timeout_ms;
            uv_timer_start(&c->timer, conn_on_timer, ms, 0);
            conn_settle(c);
        }
    }
    http_conn_release(c);
}

void http_conn_shutdown(http_conn_t *c)
{
    if (c->closed)
        return;
    http_conn_hold(c);
    if (c->pending) {
        c->keep_alive = false;
        c->abort_due = true;
        conn_queue_abort(c);
    } else if (!c->msg_started) {
        /* idle (a request being received is answered, with Connection: close) */
        if (c->writing || c->out.len)
            c->closing = true;
        else
            conn_close(c);
    }
    http_conn_release(c);
}

static uint64_t linger_ms(const http_server_t *s)
{
    return s->lim.idle_timeout_ms < LINGER_MS ? s->lim.idle_timeout_ms : LINGER_MS;
}

/* ---- detached mode ----------------------------------------------------- */

http_conn_t *http_conn_new_detached(http_server_t *s)
{
    http_conn_t *c = conn_new(s);
    c->refs = 1; /* the caller's */
    snprintf(c->remote, sizeof(c->remote), "detached");
    return c;
}

int http_conn_feed(http_conn_t *c, const char *p, size_t n)
{
    http_conn_hold(c);
    conn_input(c, p, n);
    int rc = c->closed || c->closing ? -EPIPE : 0;
    http_conn_release(c);
    return rc;
}

const buf_t *http_conn_output(const http_conn_t *c)
{
    return &c->sink;
}

void http_conn_free_detached(http_conn_t *c)
{
    http_server_t *s = c->srv;
    http_conn_hold(c);
    conn_close(c);
    http_conn_run_deferred(s);
    http_conn_release(c);
    http_conn_release(c);
}
