/* Engine connections: msgpack-RPC over a libuv stream with bounded output
 * and pacing. Output is batched twice: what the messages of one read
 * produce, on every connection, leaves when that read has been handled
 * (app->flushq); and while one write is in flight, messages gather in
 * `out` and leave together when it completes. A burst of invocations
 * costs one syscall per connection instead of one per message. */
#include "engine/engine_internal.h"

#include "core/alloc.h"
#include "core/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define ECONN_READ_BUF (64u * 1024)

econn_t *econn_new(engine_app_t *app, int kind)
{
    econn_t *c = xcalloc(1, sizeof(*c));
    c->app = app;
    c->kind = kind;
    c->u.h.data = c;
    rpc_decoder_init(&c->dec, RPC_MAX_MESSAGE_DEFAULT);
    buf_init(&c->out, ENG_OUT_MAX);
    buf_init(&c->wbuf, 0);
    c->accepted_at = uv_now(app->loop);
    c->next = app->conns;
    if (app->conns)
        app->conns->prev = c;
    app->conns = c;
    app->handles++;
    return c;
}

static void econn_closed(uv_handle_t *h)
{
    econn_t *c = h->data;
    engine_app_t *app = c->app;
    rpc_decoder_free(&c->dec);
    buf_free(&c->out);
    buf_free(&c->wbuf);
    free(c);
    app->handles--;
    app_maybe_finish(app);
}

size_t econn_pending(const econn_t *c)
{
    return c->out.len + c->wbuf.len;
}

static bool econn_paused(const econn_t *c)
{
    return c->blocked_by || c->waiting_inv;
}

/* Resume every connection that waited for `c` to drain (or to go). A
 * resumed one may close others as it handles its messages, so the list is
 * walked again from the start after each. */
static void econn_release_waiters(econn_t *c)
{
    for (;;) {
        if (!c->closing && econn_pending(c) > ENG_OUT_HIGH)
            return; /* filled up again: the others wait for the next drain */
        econn_t *o = c->app->conns;
        while (o && o->blocked_by != c)
            o = o->next;
        if (!o)
            return;
        o->blocked_by = NULL;
        econn_resume(o);
    }
}

static void econn_write_done(uv_write_t *req, int status);

void econn_flush(econn_t *c)
{
    if (c->closing || c->writing || !c->out.len)
        return;
    /* Straight to the kernel when it takes it all: no request, no
     * completion callback, and no epoll_ctl that libuv would otherwise
     * issue after every completed uv_write. Not while others wait for this
     * connection to drain: releasing them belongs in the completion. */
    if (!c->high_since) {
        uv_buf_t tb = uv_buf_init(c->out.data, (unsigned)c->out.len);
        int n = uv_try_write(&c->u.s, &tb, 1);
        if (n > 0)
            buf_consume(&c->out, (size_t)n);
        if (!c->out.len)
            return;
        /* An error (the peer went away) is left to uv_write below, which
         * reports it from its callback: closing here, inside a send, would
         * end invocations under the feet of whoever is sending. */
    }
    /* swap: out becomes the in-flight buffer, the old one is reused */
    buf_t t = c->wbuf;
    c->wbuf = c->out;
    c->out = t;
    c->out.max = ENG_OUT_MAX;
    buf_reset(&c->out);
    uv_buf_t b = uv_buf_init(c->wbuf.data, (unsigned)c->wbuf.len);
    c->wreq.data = c;
    int rc = uv_write(&c->wreq, &c->u.s, &b, 1, econn_write_done);
    if (rc) {
        buf_reset(&c->wbuf);
        econn_close(c, uv_strerror(rc));
        return;
    }
    c->writing = true;
}

static void econn_write_done(uv_write_t *req, int status)
{
    econn_t *c = req->data;
    c->writing = false;
    buf_reset(&c->wbuf);
    if (c->closing)
        return;
    if (status) {
        econn_close(c, uv_strerror(status));
        return;
    }
    econn_flush(c);
    if (econn_pending(c) < ENG_OUT_LOW) {
        c->high_since = 0;
        econn_release_waiters(c);
    }
}

static void econn_sent(econn_t *c, int rc)
{
    if (rc == -ENOBUFS) {
        log_warn("engine", "%s: output over %zu bytes: connection dropped", c->app->name,
                 (size_t)ENG_OUT_MAX);
        econn_close(c, "output buffer full");
        return;
    }
    if (econn_pending(c) > ENG_OUT_HIGH && !c->high_since) {
        c->high_since = uv_now(c->app->loop);
        app_tick_ensure(c->app);
    }
    engine_app_t *app = c->app;
    if (app->reading && econn_pending(c) <= ENG_OUT_HIGH) {
        if (!c->flush_queued) {
            c->flush_queued = true;
            c->flush_next = app->flushq;
            app->flushq = c;
        }
        return;
    }
    econn_flush(c);
}

/* End of a read: hand what it produced to the kernel. Connections closed
 * meanwhile are still allocated (their memory goes in a close callback,
 * never inside this one) and are skipped by econn_flush. */
static void econn_flush_queued(engine_app_t *app)
{
    while (app->flushq) {
        econn_t *c = app->flushq;
        app->flushq = c->flush_next;
        c->flush_next = NULL;
        c->flush_queued = false;
        econn_flush(c);
    }
}

int econn_send(econn_t *c, uint64_t ch, uint64_t type, const char *fmt, ...)
{
    if (c->closing)
        return -EPIPE;
    /* rpc_encode has no va_list flavour: the engine's messages have at
     * most two plain arguments, so they are encoded by hand here. */
    rpc_enc_t e;
    va_list ap;
    va_start(ap, fmt);
    uint32_t n = 0;
    for (const char *f = fmt; *f; f++)
        n += (*f == 'u' || *f == 's' || *f == 'b' || *f == 'S');
    rpc_enc_begin(&e, &c->out, ch, type, n, 0);
    for (const char *f = fmt; *f; f++) {
        if (*f == 'u') {
            msgpack_pack_unsigned_int(&e.pk, va_arg(ap, unsigned));
        } else if (*f == 's') {
            const char *s = va_arg(ap, const char *);
            msgpack_pack_str_with_body(&e.pk, s, strlen(s));
        } else if (*f == 'S' || *f == 'b') {
            const char *p = va_arg(ap, const char *);
            size_t len = va_arg(ap, size_t);
            if (*f == 'S')
                msgpack_pack_str_with_body(&e.pk, p, len);
            else
                msgpack_pack_bin_with_body(&e.pk, p, len);
        }
    }
    va_end(ap);
    int rc = rpc_enc_end(&e);
    econn_sent(c, rc);
    return rc;
}

void econn_commit(econn_t *c)
{
    if (!c->closing)
        econn_sent(c, 0);
}

int econn_forward(econn_t *c, uint64_t ch, const rpc_msg_t *m)
{
    if (c->closing)
        return -EPIPE;
    msgpack_object args = {.type = MSGPACK_OBJECT_ARRAY};
    args.via.array.size = (uint32_t)m->nargs;
    args.via.array.ptr = (msgpack_object *)m->args;
    int rc = rpc_encode_object(&c->out, ch, m->type, &args);
    econn_sent(c, rc);
    return rc;
}

int econn_send_error(econn_t *c, uint64_t ch, unsigned cat, unsigned code, const char *fmt, ...)
{
    if (c->closing)
        return -EPIPE;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    int rc = rpc_encode(&c->out, ch, RPC_ERROR, "[uu]s", cat, code, msg);
    econn_sent(c, rc);
    return rc;
}

void econn_pace(econn_t *src, econn_t *dst)
{
    if (!src || !dst || src->closing || dst->closing || econn_pending(dst) <= ENG_OUT_HIGH)
        return;
    if (!src->blocked_by)
        src->blocked_by = dst;
    if (src->reading) {
        uv_read_stop(&src->u.s);
        src->reading = false;
    }
}

void econn_pause_for_inv(econn_t *c, inv_t *inv)
{
    if (c->closing)
        return;
    c->waiting_inv = inv;
    if (c->reading) {
        uv_read_stop(&c->u.s);
        c->reading = false;
    }
}

static void econn_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    static _Thread_local char mem[ECONN_READ_BUF];
    (void)h;
    (void)hint;
    *b = uv_buf_init(mem, sizeof(mem));
}

/* Hand out the messages the decoder holds, as long as nothing paused the
 * connection: a paused one keeps its messages (bounded: at most what one
 * read brought) until resumed. */
static void econn_drain(econn_t *c)
{
    rpc_msg_t m;
    err_t err = {0};
    int rc = 0;
    while (!c->closing && !econn_paused(c) && (rc = rpc_decoder_next(&c->dec, &m, &err)) == 1)
        c->on_msg(c, &m);
    if (rc < 0 && !c->closing) {
        log_info("engine", "%s: %s connection: %s", c->app->name,
                 c->kind == ECONN_CLIENT ? "client" : "worker", err.msg);
        char why[600];
        snprintf(why, sizeof(why), "protocol error: %s", err.msg);
        econn_close(c, why);
    }
}

static void econn_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    econn_t *c = s->data;
    if (c->closing)
        return;
    if (n < 0) {
        econn_close(c, n == UV_EOF ? "connection closed" : uv_strerror((int)n));
        return;
    }
    if (n == 0)
        return;
    rpc_decoder_feed(&c->dec, b->base, (size_t)n);
    engine_app_t *app = c->app;
    app->reading++;
    econn_drain(c);
    if (--app->reading == 0)
        econn_flush_queued(app);
}

void econn_resume(econn_t *c)
{
    if (c->closing)
        return;
    econn_drain(c);
    if (!c->closing && !econn_paused(c) && !c->reading) {
        if (uv_read_start(&c->u.s, econn_alloc, econn_read) == 0)
            c->reading = true;
    }
}

int econn_start(econn_t *c)
{
    int rc = uv_read_start(&c->u.s, econn_alloc, econn_read);
    if (rc == 0)
        c->reading = true;
    return rc;
}

void econn_close(econn_t *c, const char *why)
{
    if (c->closing)
        return;
    c->closing = true;
    if (c->reading)
        uv_read_stop(&c->u.s);
    c->reading = false;
    engine_app_t *app = c->app;
    if (c->prev)
        c->prev->next = c->next;
    else
        app->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    econn_release_waiters(c);
    if (c->on_lost)
        c->on_lost(c, why);
    c->owner = NULL;
    uv_close(&c->u.h, econn_closed);
}
