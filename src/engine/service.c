/* The invocation service: clients connect over TCP and open channels with
 * `enqueue [event]`; their chunks go to the worker the invocation was given
 * to (or wait with it in the queue, bounded), the worker's come back on the
 * client's channel. A client's misbehaviour ends its own channel (session
 * errors) or its own connection (protocol errors), nothing else. */
#include "engine/engine_internal.h"

#include "core/alloc.h"
#include "core/log.h"
#include "core/str.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static inv_t *client_find(client_t *cl, uint64_t ch)
{
    for (inv_t *i = cl->invs; i; i = i->c_next)
        if (i->cch == ch)
            return i;
    return NULL;
}

/* The invoke for the worker when the enqueue carried headers: [ch, 0,
 * [event], headers], the headers as they came (validated pairs), with room
 * for the channel as in inv_pend. -E2BIG past the bounds. */
static int inv_invoke_with_headers(inv_t *inv, const rpc_msg_t *m, const char *ev, size_t len)
{
    static const unsigned char head[10] = {0x94, 0xcf}; /* [ch (uint64), type, args, headers] */
    if (m->nheaders > ENG_INVOKE_HDRS_MAX)
        return -E2BIG;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_uint64(&pk, RPC_INVOKE);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_str_with_body(&pk, ev, len);
    msgpack_pack_array(&pk, (uint32_t)m->nheaders);
    for (size_t i = 0; i < m->nheaders; i++)
        msgpack_pack_object(&pk, m->headers[i]);
    buf_init(&inv->invoke, ENG_INVOKE_MAX);
    int rc = buf_append(&inv->invoke, head, sizeof(head));
    if (!rc)
        rc = buf_append(&inv->invoke, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    if (rc) {
        buf_free(&inv->invoke);
        buf_init(&inv->invoke, 0);
        return -E2BIG;
    }
    return 0;
}

/* A message of a queued invocation, prepared for the worker with room for
 * the channel (8 bytes, uint64 format) that is only known at dispatch. */
static int inv_pend(inv_t *inv, const rpc_msg_t *m)
{
    static const unsigned char head[10] = {0x93, 0xcf}; /* [ch (uint64), ... */
    size_t before = inv->pend.len;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_uint64(&pk, m->type);
    msgpack_pack_array(&pk, (uint32_t)m->nargs);
    for (size_t i = 0; i < m->nargs; i++)
        msgpack_pack_object(&pk, m->args[i]);
    int rc = buf_append(&inv->pend, head, sizeof(head));
    if (!rc)
        rc = buf_append(&inv->pend, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    if (rc) {
        inv->pend.len = before;
        if (inv->pend.data)
            inv->pend.data[before] = '\0';
        return rc;
    }
    if (inv->npend == inv->cappend) {
        inv->cappend = inv->cappend ? inv->cappend * 2 : 4;
        inv->pend_offs = xrealloc(inv->pend_offs, inv->cappend * sizeof(size_t));
    }
    inv->pend_offs[inv->npend++] = before + 2;
    return 0;
}

static void client_enqueue(client_t *cl, const rpc_msg_t *m)
{
    econn_t *c = cl->conn;
    engine_app_t *app = c->app;
    inv_t *inv = xcalloc(1, sizeof(*inv));
    inv->app = app;
    inv->client = cl;
    inv->cch = m->channel;
    buf_init(&inv->pend, RPC_MAX_MESSAGE_DEFAULT + ENG_PEND_HIGH);
    inv->c_next = cl->invs;
    if (cl->invs)
        cl->invs->c_prev = inv;
    cl->invs = inv;
    cl->ninvs++;
    /* not dispatched: nothing to wait for on a worker's side */
    inv->w_in_done = inv->w_out_done = true;
    err_t err = {0};
    const char *ev;
    size_t len;
    if (m->type != 0) {
        app->refused++;
        inv_abort(inv, RPC_ECAT_PROTOCOL, EINVAL, false, "unknown method: expected enqueue (0)");
        return;
    }
    if (rpc_args_count(m, 1, 1, &err) || rpc_arg_str(m, 0, &ev, &len, &err) || !len || len > 255) {
        app->refused++;
        char msg[600];
        snprintf(msg, sizeof(msg), "enqueue [event]: %s", err.msg[0] ? err.msg : "bad event name");
        inv_abort(inv, RPC_ECAT_PROTOCOL, EINVAL, false, msg);
        return;
    }
    if (app->stopping) {
        app->refused++;
        inv_abort(inv, RPC_ECAT_ENGINE, ESHUTDOWN, false, "app is stopping");
        return;
    }
    if (app->qlen >= app->prof.queue_limit) {
        app->refused++;
        char msg[100];
        snprintf(msg, sizeof(msg), "queue is full (%d waiting)", app->qlen);
        inv_abort(inv, RPC_ECAT_ENGINE, EAGAIN, false, msg);
        return;
    }
    if (m->nheaders && inv_invoke_with_headers(inv, m, ev, len) != 0) {
        app->refused++;
        char msg[120];
        snprintf(msg, sizeof(msg), "enqueue headers: %zu, at most %d and %zu bytes", m->nheaders,
                 ENG_INVOKE_HDRS_MAX, ENG_INVOKE_MAX);
        inv_abort(inv, RPC_ECAT_PROTOCOL, EINVAL, false, msg);
        return;
    }
    inv->event = xstrndup(ev, len);
    inv->timeout_ms = app->prof.request_ms;
    const char *tv;
    size_t tlen;
    if (rpc_msg_header(m, "timeout", &tv, &tlen) == 0 && tlen < 20) {
        char num[24];
        memcpy(num, tv, tlen);
        num[tlen] = '\0';
        int64_t t;
        if (str_to_i64(num, 1, INT64_MAX, &t) == 0 && (uint64_t)t < inv->timeout_ms)
            inv->timeout_ms = (uint64_t)t;
    }
    inv->w_in_done = inv->w_out_done = false;
    inv->enqueued_at = uv_now(app->loop);
    inv->deadline = inv->enqueued_at + inv->timeout_ms;
    inv_enqueue(inv);
}

static void client_on_msg(econn_t *c, const rpc_msg_t *m)
{
    client_t *cl = c->owner;
    err_t err = {0};
    inv_t *inv = client_find(cl, m->channel);
    if (!inv) {
        if (rpc_channels_open(&cl->chans, m->channel, &err) != 0) {
            econn_close(c, err.msg);
            return;
        }
        if (cl->ninvs >= ENG_CHANNELS_MAX) {
            econn_close(c, "too many open channels");
            return;
        }
        client_enqueue(cl, m);
        return;
    }
    if (inv->c_in_done) {
        /* after its close: a session error, when it can still be said */
        if (!inv->c_out_done)
            inv_abort(inv, RPC_ECAT_PROTOCOL, EPROTO, false, "message after close");
        return;
    }
    const char *p;
    size_t len;
    if (m->type > RPC_CLOSE || (m->type == RPC_WRITE && rpc_arg_bytes(m, 0, &p, &len, &err))) {
        char msg[600];
        snprintf(msg, sizeof(msg), "%s", m->type > RPC_CLOSE ? "unknown message type" : err.msg);
        inv->c_in_done = true;
        inv_abort(inv, RPC_ECAT_PROTOCOL, EINVAL, false, msg);
        return;
    }
    if (m->type != RPC_WRITE)
        inv->c_in_done = true;
    if (inv->queued) {
        if (m->type != RPC_WRITE)
            inv->w_out_done = true; /* delivered with the rest at dispatch */
        if (inv_pend(inv, m) != 0) {
            inv->c_in_done = true;
            inv_abort(inv, RPC_ECAT_ENGINE, ENOBUFS, false,
                      "request too large to wait in the queue");
            return;
        }
        if (inv->pend.len > ENG_PEND_HIGH)
            econn_pause_for_inv(c, inv);
    } else if (inv->worker && !inv->w_out_done) {
        econn_t *wc = inv->worker->conn;
        if (m->type != RPC_WRITE)
            inv->w_out_done = true;
        if (wc) {
            econn_forward(wc, inv->wch, m);
            econn_pace(c, wc);
        }
    }
    /* else: the invocation already ended on the engine's side; dropped */
    inv_maybe_free(inv);
}

/* The client is gone: queued invocations go, running ones are told
 * ([3, 104] to the worker) and stay on the worker until it ends them. */
void client_lost(econn_t *c, const char *why)
{
    client_t *cl = c->owner;
    if (!cl)
        return;
    engine_app_t *app = c->app;
    app->nclients--;
    cl->conn = NULL;
    while (cl->invs) {
        inv_t *inv = cl->invs;
        inv->c_in_done = inv->c_out_done = true;
        inv_unqueue(inv);
        if (inv->worker && !inv->w_out_done) {
            inv->w_out_done = true;
            if (inv->worker->conn)
                econn_send_error(inv->worker->conn, inv->wch, RPC_ECAT_ENGINE, ECONNRESET,
                                 "client disconnected");
        }
        if (!inv->worker)
            inv->w_in_done = inv->w_out_done = true;
        inv_maybe_free(inv);
    }
    log_debug("engine", "%s: client gone: %s", app->name, why);
    free(cl);
}

static void service_on_conn(uv_stream_t *server, int status)
{
    engine_app_t *app = server->data;
    if (status < 0 || app->stopping)
        return;
    econn_t *c = econn_new(app, ECONN_CLIENT);
    uv_tcp_init(app->loop, &c->u.tcp);
    if (uv_accept(server, &c->u.s) != 0) {
        econn_close(c, "accept failed");
        return;
    }
    if (app->nclients >= ENG_CLIENTS_MAX) {
        log_warn("engine", "%s: %d clients connected: refusing another", app->name, app->nclients);
        econn_close(c, "too many clients");
        return;
    }
    uv_tcp_nodelay(&c->u.tcp, 1);
    client_t *cl = xcalloc(1, sizeof(*cl));
    cl->conn = c;
    rpc_channels_init(&cl->chans, 0);
    c->owner = cl;
    c->on_msg = client_on_msg;
    c->on_lost = client_lost;
    app->nclients++;
    if (econn_start(c) != 0)
        econn_close(c, "cannot read");
}

int service_listen(engine_app_t *app, const char *addr, err_t *err)
{
    char *host = NULL;
    int port = 0;
    if (str_split_hostport(addr, &host, &port))
        return err_set(err, -EINVAL, "invocation service address %s: expected HOST:PORT", addr);
    struct sockaddr_storage ss;
    int rc = uv_ip4_addr(host, port, (struct sockaddr_in *)&ss);
    if (rc)
        rc = uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss);
    free(host);
    if (rc)
        return err_set(err, -EINVAL, "invocation service address %s: not a numeric IP", addr);
    uv_tcp_init(app->loop, &app->clisten);
    app->clisten.data = app;
    app->handles++;
    if ((rc = uv_tcp_bind(&app->clisten, (struct sockaddr *)&ss, 0)) ||
        (rc = uv_listen((uv_stream_t *)&app->clisten, 512, service_on_conn)))
        return err_set(err, rc, "invocation service on %s: %s", addr, uv_strerror(rc));
    struct sockaddr_storage got;
    int len = sizeof(got);
    uv_tcp_getsockname(&app->clisten, (struct sockaddr *)&got, &len);
    app->port = ntohs(got.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&got)->sin6_port
                                                : ((struct sockaddr_in *)&got)->sin_port);
    return 0;
}
