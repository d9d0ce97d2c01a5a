/* worker: the worker side of drover's worker protocol (docs/protocol.md,
 * section 5) on one unix socket and one poll() loop. See
 * include/drover/worker.h for the contract. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define READ_SIZE       ((size_t)64 << 10)
#define READS_PER_STEP  16
#define MAX_CALLS       65536
#define HB_REPLY_MIN_MS 1000
#define FINAL_FLUSH_MS  1000
#define ERROR_MSG_MAX   1024

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int set_error(drover_worker_t *w, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int set_error(drover_worker_t *w, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->errmsg, sizeof(w->errmsg), fmt, ap);
    va_end(ap);
    return rc;
}

drover_worker_t *drover_worker_new(void)
{
    drover_worker_t *w = dw_malloc(sizeof(*w));
    memset(w, 0, sizeof(*w));
    w->fd = -1;
    w->body_limit = DROVER_BODY_LIMIT;
    w->max_message = DROVER_MAX_MESSAGE;
    w->out_limit = DROVER_OUT_LIMIT;
    w->hb_ms = DROVER_HEARTBEAT_MS;
    w->silence_ms = DROVER_PEER_SILENCE_MS;
    w->grace_ms = DROVER_GRACE_MS;
    return w;
}

static void call_free(drover_call_t *c)
{
    dw_buf_free(&c->body);
    free(c->hdrs);
    free(c->event);
    free(c);
}

void drover_worker_free(drover_worker_t *w)
{
    if (!w)
        return;
    if (w->fd >= 0)
        close(w->fd);
    for (drover_call_t *c = w->calls, *next; c; c = next) {
        next = c->next;
        call_free(c);
    }
    for (dw_handler_t *h = w->handlers, *next; h; h = next) {
        next = h->next;
        free(h->event);
        free(h);
    }
    dw_buf_free(&w->in);
    dw_buf_free(&w->out);
    free(w->app);
    free(w->endpoint);
    free(w->uuid);
    free(w->locator);
    free(w->stop_reason);
    free(w);
}

/* Why both spellings: the engine passes "--app NAME", but people starting a
 * worker by hand write "--app=NAME". */
int drover_worker_parse_args(drover_worker_t *w, int argc, char *const *argv)
{
    static const char *const names[] = {"--app", "--endpoint", "--uuid", "--locator"};
    char **slots[] = {&w->app, &w->endpoint, &w->uuid, &w->locator};
    for (int i = 1; i < argc; i++) {
        for (size_t k = 0; k < 4; k++) {
            size_t n = strlen(names[k]);
            const char *val = NULL;
            if (strcmp(argv[i], names[k]) == 0) {
                if (i + 1 >= argc)
                    return set_error(w, -EINVAL, "%s needs a value", names[k]);
                val = argv[++i];
            } else if (strncmp(argv[i], names[k], n) == 0 && argv[i][n] == '=') {
                val = argv[i] + n + 1;
            }
            if (val) {
                free(*slots[k]);
                *slots[k] = dw_strndup(val, strlen(val));
                break;
            }
        }
    }
    if (!w->endpoint || !*w->endpoint)
        return set_error(w, -EINVAL, "missing --endpoint SOCKET (a worker is started by drover)");
    if (!w->uuid)
        return set_error(w, -EINVAL, "missing --uuid UUID (a worker is started by drover)");
    return 0;
}

const char *drover_worker_app(const drover_worker_t *w)
{
    return w->app;
}

const char *drover_worker_endpoint(const drover_worker_t *w)
{
    return w->endpoint;
}

const char *drover_worker_uuid(const drover_worker_t *w)
{
    return w->uuid;
}

const char *drover_worker_locator(const drover_worker_t *w)
{
    return w->locator;
}

const char *drover_worker_error(const drover_worker_t *w)
{
    return w->errmsg;
}

int drover_worker_set(drover_worker_t *w, enum drover_opt opt, uint64_t v)
{
    switch (opt) {
    case DROVER_OPT_BODY_LIMIT: w->body_limit = v ? (size_t)v : DROVER_BODY_LIMIT; return 0;
    case DROVER_OPT_MAX_MESSAGE:
        if (v && (v < (64u << 10) || v > ((uint64_t)1 << 31)))
            return set_error(w, -EINVAL, "max message %llu out of [64 KiB, 2 GiB]",
                             (unsigned long long)v);
        w->max_message = v ? (size_t)v : DROVER_MAX_MESSAGE;
        return 0;
    case DROVER_OPT_OUT_LIMIT: w->out_limit = v ? (size_t)v : DROVER_OUT_LIMIT; return 0;
    case DROVER_OPT_HEARTBEAT_MS:
    case DROVER_OPT_PEER_SILENCE_MS:
    case DROVER_OPT_GRACE_MS:
        if (v > 24u * 3600 * 1000)
            return set_error(w, -EINVAL, "time %llu ms is over a day", (unsigned long long)v);
        if (opt == DROVER_OPT_HEARTBEAT_MS)
            w->hb_ms = v ? (int64_t)v : DROVER_HEARTBEAT_MS;
        else if (opt == DROVER_OPT_PEER_SILENCE_MS)
            w->silence_ms = v ? (int64_t)v : DROVER_PEER_SILENCE_MS;
        else
            w->grace_ms = v ? (int64_t)v : DROVER_GRACE_MS;
        return 0;
    }
    return set_error(w, -EINVAL, "unknown option %d", (int)opt);
}

static dw_handler_t *find_handler(const drover_worker_t *w, const char *ev, size_t len)
{
    for (dw_handler_t *h = w->handlers; h; h = h->next)
        if (h->event_len == len && memcmp(h->event, ev, len) == 0)
            return h;
    return NULL;
}

static int add_handler(drover_worker_t *w, const char *event, dw_handler_t *tmpl)
{
    if (!event || !*event)
        return set_error(w, -EINVAL, "empty event name");
    if (find_handler(w, event, strlen(event)))
        return set_error(w, -EEXIST, "event %s already has a handler", event);
    dw_handler_t *h = dw_malloc(sizeof(*h));
    *h = *tmpl;
    h->event_len = strlen(event);
    h->event = dw_strndup(event, h->event_len);
    h->next = w->handlers;
    w->handlers = h;
    return 0;
}

int drover_worker_on(drover_worker_t *w, const char *event, drover_body_fn fn, void *data)
{
    if (!fn)
        return set_error(w, -EINVAL, "no function for event %s", event ? event : "");
    dw_handler_t t = {.mode = DW_BODY, .body_fn = fn, .data = data};
    return add_handler(w, event, &t);
}

int drover_worker_on_stream(drover_worker_t *w, const char *event, const drover_stream_ops_t *ops,
                            void *data)
{
    if (!ops)
        return set_error(w, -EINVAL, "no callbacks for event %s", event ? event : "");
    dw_handler_t t = {.mode = DW_STREAM, .ops = *ops, .data = data};
    return add_handler(w, event, &t);
}

int drover_worker_on_http(drover_worker_t *w, const char *event, drover_http_fn fn, void *data)
{
    if (!fn)
        return set_error(w, -EINVAL, "no function for event %s", event ? event : "");
    dw_handler_t t = {.mode = DW_HTTP, .http_fn = fn, .data = data};
    return add_handler(w, event, &t);
}

/* ---- output ---- */

/* Sends what the socket takes now without waiting. A failure is recorded in
 * w->broken and acted on by the step, because this runs inside callbacks
 * where the worker cannot be torn down. */
static void flush_some(drover_worker_t *w)
{
    while (w->fd >= 0 && !w->broken && dw_buf_pending(&w->out) > 0) {
        ssize_t n = send(w->fd, w->out.data + w->out.off, dw_buf_pending(&w->out),
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            dw_buf_consume(&w->out, (size_t)n);
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        } else {
            w->broken = n < 0 ? -errno : -EPIPE;
            set_error(w, w->broken, "writing to the agent: %s", strerror(-w->broken));
            return;
        }
    }
}

/* Replies written inside a callback leave when it returns, together (an
 * HTTP handler's head, body and close: one send instead of three);
 * outside callbacks, at once. */
static void out_ready(drover_worker_t *w)
{
    if (!w->in_cb)
        flush_some(w);
}

static void cb_done(drover_worker_t *w)
{
    if (--w->in_cb == 0)
        flush_some(w);
}

/* Waits (poll) until at most `until` bytes are queued, or deadline. */
static int flush_wait(drover_worker_t *w, size_t until, int64_t deadline)
{
    for (;;) {
        flush_some(w);
        if (w->broken)
            return w->broken;
        if (w->fd < 0)
            return -ENOTCONN;
        if (dw_buf_pending(&w->out) <= until)
            return 0;
        int64_t left = deadline - now_ms();
        if (left <= 0)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = w->fd, .events = POLLOUT};
        if (poll(&p, 1, (int)left) < 0 && errno != EINTR)
            return -errno;
    }
}

static void pack_head(msgpack_packer *pk, uint64_t ch, unsigned type, size_t nargs)
{
    msgpack_pack_array(pk, 3);
    msgpack_pack_uint64(pk, ch);
    msgpack_pack_unsigned_int(pk, type);
    msgpack_pack_array(pk, nargs);
}

static void send_heartbeat(drover_worker_t *w)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, &w->out, dw_buf_pack_write);
    pack_head(&pk, 1, 0, 0);
    int64_t now = now_ms();
    w->last_hb_tx = now;
    w->next_hb = now + w->hb_ms;
    flush_some(w);
}

static void send_control(drover_worker_t *w, unsigned type, const char *str, int with_code,
                         unsigned code)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, &w->out, dw_buf_pack_write);
    pack_head(&pk, 1, type, with_code ? 2 : 1);
    if (with_code)
        msgpack_pack_unsigned_int(&pk, code);
    msgpack_pack_str_with_body(&pk, str, strlen(str));
    flush_some(w);
}

static void send_chunk(drover_worker_t *w, uint64_t ch, const void *data, size_t len)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, &w->out, dw_buf_pack_write);
    pack_head(&pk, ch, 0, 1);
    msgpack_pack_bin_with_body(&pk, data, len);
}

static void send_close(drover_worker_t *w, uint64_t ch)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, &w->out, dw_buf_pack_write);
    pack_head(&pk, ch, 2, 0);
    out_ready(w);
}

static void send_error(drover_worker_t *w, uint64_t ch, unsigned cat, unsigned code,
                       const char *msg)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, &w->out, dw_buf_pack_write);
    pack_head(&pk, ch, 1, 2);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_unsigned_int(&pk, cat);
    msgpack_pack_unsigned_int(&pk, code);
    size_t n = strnlen(msg, ERROR_MSG_MAX);
    msgpack_pack_str_with_body(&pk, msg, n);
    out_ready(w);
}

/* ---- calls ---- */

const char *drover_call_event(const drover_call_t *c)
{
    return c->event ? c->event : "";
}

uint64_t drover_call_id(const drover_call_t *c)
{
    return c->id;
}

drover_worker_t *drover_call_worker(const drover_call_t *c)
{
    return c->w;
}

void drover_call_set_ctx(drover_call_t *c, void *ctx)
{
    c->ctx = ctx;
}

void *drover_call_ctx(const drover_call_t *c)
{
    return c->ctx;
}

int drover_call_header(const drover_call_t *c, const char *name, const char **value, size_t *len)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < c->nhdrs; i++) {
        if (c->hdrs[i].name_len == n && memcmp(c->hdrs[i].name, name, n) == 0) {
            *value = c->hdrs[i].value;
            *len = c->hdrs[i].value_len;
            return 0;
        }
    }
    return -ENOENT;
}

static int call_usable(const drover_call_t *c)
{
    if (c->w->fd < 0 || c->w->broken)
        return -ENOTCONN;
    if (c->res_ended)
        return -EPIPE;
    return 0;
}

int drover_call_write(drover_call_t *c, const void *data, size_t len)
{
    drover_worker_t *w = c->w;
    int rc = call_usable(c);
    if (rc < 0)
        return rc;
    const char *p = data;
    while (len > 0) {
        if (dw_buf_pending(&w->out) > w->out_limit) {
            rc = flush_wait(w, w->out_limit / 2, now_ms() + w->silence_ms);
            if (rc < 0)
                return rc;
        }
        size_t n = len < DROVER_CHUNK_MAX ? len : DROVER_CHUNK_MAX;
        send_chunk(w, c->id, p, n);
        p += n;
        len -= n;
    }
    out_ready(w);
    return 0;
}

int drover_call_close(drover_call_t *c)
{
    c->user_holds = false;
    int rc = call_usable(c);
    if (rc < 0)
        return rc;
    c->res_ended = true;
    send_close(c->w, c->id);
    return 0;
}

int drover_call_verror(drover_call_t *c, unsigned cat, unsigned code, const char *fmt, va_list ap)
{
    c->user_holds = false;
    int rc = call_usable(c);
    if (rc < 0)
        return rc;
    char msg[ERROR_MSG_MAX + 1];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    c->res_ended = true;
    send_error(c->w, c->id, cat, code, msg);
    return 0;
}

int drover_call_error(drover_call_t *c, unsigned cat, unsigned code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = drover_call_verror(c, cat, code, fmt, ap);
    va_end(ap);
    return rc;
}

/* The SDK ends a call on its own (bad message, body limit, terminate,
 * lost connection): answer the error if our side is open, and tell a
 * streaming handler that its request is over. */
static void call_abort(drover_call_t *c, unsigned cat, unsigned code, const char *msg)
{
    drover_worker_t *w = c->w;
    if (!c->res_ended) {
        if (w->fd >= 0 && !w->broken)
            send_error(w, c->id, cat, code, msg);
        /* a whole-body call the user holds stays theirs to end */
        c->res_ended = true;
    }
    dw_buf_free(&c->body);
    if (!c->req_dropping) {
        c->req_dropping = true;
        if (c->h && c->h->mode == DW_STREAM && c->h->ops.on_error) {
            drover_error_t e = {cat, code, msg};
            w->in_cb++;
            c->h->ops.on_error(c, c->ctx, &e);
            cb_done(w);
        }
    }
}

/* Frees the calls whose both directions ended. Why here and not in
 * drover_call_close: the user may still be inside a callback holding the
 * pointer, so release happens only from the loop. */
static void reap(drover_worker_t *w)
{
    drover_call_t **pp = &w->calls;
    while (*pp) {
        drover_call_t *c = *pp;
        if (c->req_ended && c->res_ended && !c->user_holds) {
            *pp = c->next;
            w->ncalls--;
            if (c->h && c->h->mode == DW_STREAM && c->h->ops.on_done) {
                w->in_cb++;
                c->h->ops.on_done(c, c->ctx);
                cb_done(w);
            }
            call_free(c);
        } else {
            pp = &c->next;
        }
    }
}

static drover_call_t *find_call(drover_worker_t *w, uint64_t id)
{
    for (drover_call_t *c = w->calls; c; c = c->next)
        if (c->id == id)
            return c;
    return NULL;
}

/* Copies the invoke headers: they must outlive the message's zone. */
static void copy_headers(drover_call_t *c, const dw_msg_t *m)
{
    if (m->nheaders == 0)
        return;
    size_t bytes = m->nheaders * sizeof(dw_hdr_t);
    for (size_t i = 0; i < m->nheaders; i++) {
        const msgpack_object *kv = m->headers[i].via.array.ptr;
        const char *p;
        size_t n;
        dw_obj_bytes(&kv[1], &p, &n);
        bytes += kv[0].via.str.size + 1 + n + 1;
    }
    c->hdrs = dw_malloc(bytes);
    c->nhdrs = m->nheaders;
    char *s = (char *)(c->hdrs + m->nheaders);
    for (size_t i = 0; i < m->nheaders; i++) {
        const msgpack_object *kv = m->headers[i].via.array.ptr;
        const char *p;
        size_t n;
        dw_obj_bytes(&kv[1], &p, &n);
        c->hdrs[i].name = s;
        c->hdrs[i].name_len = kv[0].via.str.size;
        memcpy(s, kv[0].via.str.ptr, kv[0].via.str.size);
        s += kv[0].via.str.size;
        *s++ = '\0';
        c->hdrs[i].value = s;
        c->hdrs[i].value_len = n;
        if (n)
            memcpy(s, p, n);
        s += n;
        *s++ = '\0';
    }
}

static void open_call(drover_worker_t *w, const dw_msg_t *m)
{
    drover_call_t *c = dw_malloc(sizeof(*c));
    memset(c, 0, sizeof(*c));
    c->w = w;
    c->id = m->channel;
    c->req_dropping = true; /* until a handler takes it */
    c->next = w->calls;
    w->calls = c;
    w->ncalls++;
    const char *ev;
    size_t evlen;
    if (m->type != 0 || m->nargs < 1 || !dw_obj_bytes(&m->args[0], &ev, &evlen)) {
        char msg[96];
        snprintf(msg, sizeof(msg), "channel %llu: expected invoke [event], got type %llu",
                 (unsigned long long)m->channel, (unsigned long long)m->type);
        c->res_ended = true;
        send_error(w, c->id, DROVER_ECAT_PROTOCOL, EINVAL, msg);
        return;
    }
    c->event = dw_strndup(ev, evlen);
    copy_headers(c, m);
    if (w->stopping) {
        c->res_ended = true;
        send_error(w, c->id, DROVER_ECAT_WORKER, ESHUTDOWN, "worker is terminating");
        return;
    }
    const dw_handler_t *h = find_handler(w, ev, evlen);
    if (!h) {
        char msg[ERROR_MSG_MAX];
        snprintf(msg, sizeof(msg), "no handler for event %.*s", (int)(evlen > 900 ? 900 : evlen),
                 ev);
        c->res_ended = true;
        send_error(w, c->id, DROVER_ECAT_PROTOCOL, ENOSYS, msg);
        return;
    }
    c->h = h;
    c->req_dropping = false;
    if (h->mode == DW_STREAM && h->ops.on_open) {
        w->in_cb++;
        h->ops.on_open(c, h->data);
        cb_done(w);
    }
}

/* The request is complete: hand the body to a whole-body handler. */
static void deliver_body(drover_worker_t *w, drover_call_t *c)
{
    c->req_dropping = true;
    if (c->res_ended) {
        dw_buf_free(&c->body);
        return;
    }
    c->user_holds = true;
    const char *body = c->body.data ? c->body.data + c->body.off : "";
    size_t len = dw_buf_pending(&c->body);
    w->in_cb++;
    if (c->h->mode == DW_HTTP)
        dw_http_dispatch(c, body, len);
    else
        c->h->body_fn(c, body, len, c->h->data);
    cb_done(w);
    dw_buf_free(&c->body);
}

static void on_chunk(drover_worker_t *w, drover_call_t *c, const char *p, size_t n)
{
    if (c->req_dropping)
        return;
    if (n > w->body_limit - c->received) {
        char msg[96];
        snprintf(msg, sizeof(msg), "request body over %zu bytes", w->body_limit);
        call_abort(c, DROVER_ECAT_PROTOCOL, EMSGSIZE, msg);
        return;
    }
    c->received += n;
    if (c->h->mode == DW_STREAM) {
        if (c->h->ops.on_chunk) {
            w->in_cb++;
            c->h->ops.on_chunk(c, c->ctx, p, n);
            cb_done(w);
        }
    } else {
        dw_buf_append(&c->body, p, n);
    }
}

/* Reads [[category, code], message] leniently: an agent's error always ends
 * the request, whatever its shape. */
static void parse_error(const dw_msg_t *m, drover_error_t *e, char *buf, size_t buflen)
{
    e->category = DROVER_ECAT_PROTOCOL;
    e->code = EINVAL;
    e->msg = "error";
    if (m->nargs >= 1 && m->args[0].type == MSGPACK_OBJECT_ARRAY &&
        m->args[0].via.array.size == 2) {
        const msgpack_object *cc = m->args[0].via.array.ptr;
        if (cc[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER && cc[0].via.u64 <= 0xffffffffu)
            e->category = (unsigned)cc[0].via.u64;
        if (cc[1].type == MSGPACK_OBJECT_POSITIVE_INTEGER && cc[1].via.u64 <= 0xffffffffu)
            e->code = (unsigned)cc[1].via.u64;
    }
    const char *p;
    size_t n;
    if (m->nargs >= 2 && dw_obj_bytes(&m->args[1], &p, &n)) {
        snprintf(buf, buflen, "%.*s", (int)(n > buflen ? buflen : n), p);
        e->msg = buf;
    }
}

static void begin_stop(drover_worker_t *w, unsigned code, const char *reason)
{
    if (w->stopping)
        return;
    w->stopping = true;
    w->stop_code = code;
    free(w->stop_reason);
    w->stop_reason = dw_strndup(reason, strnlen(reason, ERROR_MSG_MAX));
    w->stop_deadline = now_ms() + w->grace_ms;
}

/* One message from the agent. A negative return is a protocol error that
 * ends the connection (message in w->errmsg). */
static int dispatch(drover_worker_t *w, const dw_msg_t *m)
{
    if (m->channel == 1) {
        if (m->type == 0) {
            if (now_ms() - w->last_hb_tx >= HB_REPLY_MIN_MS)
                send_heartbeat(w);
        } else if (m->type == 1) {
            unsigned code = 0;
            if (m->nargs >= 1 && m->args[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
                m->args[0].via.u64 <= 0xffffffffu)
                code = (unsigned)m->args[0].via.u64;
            begin_stop(w, code, "terminated");
        }
        return 0; /* unknown control messages are ignored */
    }
    drover_call_t *c = find_call(w, m->channel);
    if (!c) {
        if (m->channel <= w->last_channel)
            return set_error(w, -EPROTO, "channel %llu goes backwards (last %llu)",
                             (unsigned long long)m->channel, (unsigned long long)w->last_channel);
        if (w->ncalls >= MAX_CALLS)
            return set_error(w, -EPROTO, "over %d invocations open at once", MAX_CALLS);
        w->last_channel = m->channel;
        open_call(w, m);
        return 0;
    }
    if (c->req_ended)
        return set_error(w, -EPROTO, "channel %llu: message after the request ended",
                         (unsigned long long)m->channel);
    const char *p;
    size_t n;
    switch (m->type) {
    case 0:
        if (m->nargs < 1 || !dw_obj_bytes(&m->args[0], &p, &n)) {
            call_abort(c, DROVER_ECAT_PROTOCOL, EINVAL, "write expects [chunk] (str or bin)");
            return 0;
        }
        on_chunk(w, c, p, n);
        return 0;
    case 1: {
        c->req_ended = true;
        if (c->req_dropping)
            return 0;
        drover_error_t e;
        char buf[ERROR_MSG_MAX + 1];
        parse_error(m, &e, buf, sizeof(buf) - 1);
        c->req_dropping = true;
        dw_buf_free(&c->body);
        if (c->h->mode == DW_STREAM) {
            if (c->h->ops.on_error) {
                w->in_cb++;
                c->h->ops.on_error(c, c->ctx, &e);
                cb_done(w);
            }
        } else if (!c->res_ended) {
            /* the user never saw this request: just end our side */
            c->res_ended = true;
            send_close(w, c->id);
        }
        return 0;
    }
    case 2:
        c->req_ended = true;
        if (c->req_dropping)
            return 0;
        if (c->h->mode == DW_STREAM) {
            c->req_dropping = true;
            if (c->h->ops.on_close) {
                w->in_cb++;
                c->h->ops.on_close(c, c->ctx);
                cb_done(w);
            }
        } else {
            deliver_body(w, c);
        }
        return 0;
    default: {
        char msg[64];
        snprintf(msg, sizeof(msg), "unknown message type %llu", (unsigned long long)m->type);
        call_abort(c, DROVER_ECAT_PROTOCOL, EINVAL, msg);
        return 0;
    }
    }
}

/* ---- connection ---- */

int drover_worker_attach(drover_worker_t *w, int fd)
{
    if (w->fd >= 0 || w->state != DW_IDLE) {
        close(fd);
        return set_error(w, -EISCONN, "worker already connected");
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        int rc = -errno;
        close(fd);
        return set_error(w, rc, "fcntl: %s", strerror(-rc));
    }
    w->fd = fd;
    w->state = DW_RUNNING;
    int64_t now = now_ms();
    w->last_rx = now;
    w->next_hb = now + w->hb_ms;
    w->last_hb_tx = now - HB_REPLY_MIN_MS;
    send_control(w, 0, w->uuid ? w->uuid : "", 0, 0);
    return 0;
}

int drover_worker_connect(drover_worker_t *w)
{
    if (!w->endpoint)
        return set_error(w, -EINVAL, "no endpoint (call drover_worker_parse_args first)");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(w->endpoint) >= sizeof(sa.sun_path))
        return set_error(w, -ENAMETOOLONG, "endpoint %s is longer than a unix socket path",
                         w->endpoint);
    memcpy(sa.sun_path, w->endpoint, strlen(w->endpoint) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return set_error(w, -errno, "socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int rc = -errno;
        close(fd);
        return set_error(w, rc, "connect %s: %s", w->endpoint, strerror(-rc));
    }
    return drover_worker_attach(w, fd);
}

int drover_worker_fd(const drover_worker_t *w)
{
    return w->fd;
}

size_t drover_worker_pending(const drover_worker_t *w)
{
    return dw_buf_pending(&w->out);
}

int drover_worker_stop(drover_worker_t *w, unsigned code, const char *reason)
{
    if (w->fd < 0)
        return set_error(w, -ENOTCONN, "worker not connected");
    begin_stop(w, code, reason ? reason : "stopping");
    return 0;
}

/* Ends every open call because the connection is over (lost, or closed by
 * us after terminate), then releases them. */
static void abort_all(drover_worker_t *w, unsigned cat, unsigned code, const char *msg)
{
    for (drover_call_t *c = w->calls; c; c = c->next) {
        c->req_ended = true;
        if (!c->res_ended || !c->req_dropping)
            call_abort(c, cat, code, msg);
    }
    reap(w);
}

static int fail(drover_worker_t *w, int rc)
{
    if (w->fd >= 0) {
        close(w->fd);
        w->fd = -1;
    }
    w->state = DW_FAILED;
    w->fail_rc = rc;
    abort_all(w, DROVER_ECAT_WORKER, ECONNRESET, "connection to the agent lost");
    dw_buf_free(&w->in);
    dw_buf_free(&w->out);
    return rc;
}

/* Terminate done: answer it, give the answer a moment to leave, close. */
static int finish(drover_worker_t *w)
{
    for (drover_call_t *c = w->calls; c; c = c->next)
        if (!c->res_ended)
            call_abort(c, DROVER_ECAT_WORKER, ESHUTDOWN,
                       "worker terminated before the invocation finished");
    send_control(w, 1, w->stop_reason ? w->stop_reason : "terminated", 1, w->stop_code);
    flush_wait(w, 0, now_ms() + FINAL_FLUSH_MS);
    close(w->fd);
    w->fd = -1;
    w->state = DW_DONE;
    abort_all(w, DROVER_ECAT_WORKER, ESHUTDOWN, "worker terminated");
    dw_buf_free(&w->in);
    dw_buf_free(&w->out);
    return 0;
}

/* Heartbeats, silence and the terminate grace period. 1 while running. */
static int check_timers(drover_worker_t *w, int64_t now)
{
    if (w->broken)
        return fail(w, w->broken);
    if (now - w->last_rx >= w->silence_ms)
        return fail(w, set_error(w, -ETIMEDOUT, "no message from the agent for %lld ms",
                                 (long long)(now - w->last_rx)));
    if (w->stopping) {
        bool busy = false;
        for (drover_call_t *c = w->calls; c; c = c->next)
            busy |= !c->res_ended;
        if (!busy || now >= w->stop_deadline)
            return finish(w);
    }
    if (now >= w->next_hb)
        send_heartbeat(w);
    if (w->broken)
        return fail(w, w->broken);
    return 1;
}

/* Reads what is there (bounded per step so the timers get their turn) and
 * dispatches every complete message. */
static int read_input(drover_worker_t *w)
{
    size_t cap = w->max_message + READ_SIZE;
    for (int i = 0; i < READS_PER_STEP; i++) {
        size_t have = dw_buf_pending(&w->in);
        size_t room = cap - have < READ_SIZE ? cap - have : READ_SIZE;
        if (room == 0)
            return set_error(w, -EMSGSIZE, "a message from the agent is over %zu bytes",
                             w->max_message);
        char tmp[READ_SIZE];
        ssize_t n = recv(w->fd, tmp, room, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (n < 0)
            return set_error(w, -errno, "reading from the agent: %s", strerror(errno));
        if (n == 0)
            return set_error(w, -ECONNRESET, "the agent closed the connection");
        w->last_rx = now_ms();
        dw_buf_append(&w->in, tmp, (size_t)n);
        for (;;) {
            size_t mlen;
            int rc = dw_scan_next(&w->scan, (unsigned char *)w->in.data + w->in.off,
                                  dw_buf_pending(&w->in), w->max_message, &mlen);
            if (rc == 0)
                break;
            if (rc == -EMSGSIZE)
                return set_error(w, rc, "a message from the agent is over %zu bytes",
                                 w->max_message);
            if (rc < 0)
                return set_error(w, rc, "bad msgpack from the agent");
            msgpack_unpacked res;
            msgpack_unpacked_init(&res);
            dw_msg_t m;
            char why[96];
            rc = dw_msg_parse(&res, (unsigned char *)w->in.data + w->in.off, mlen, &m, why,
                              sizeof(why));
            if (rc < 0)
                set_error(w, rc, "bad message from the agent: %s", why);
            else
                rc = dispatch(w, &m);
            msgpack_unpacked_destroy(&res);
            if (rc < 0)
                return rc;
            dw_buf_consume(&w->in, mlen);
            dw_scan_reset(&w->scan);
            if (w->fd < 0 || w->broken)
                return 0;
        }
        if ((size_t)n < room)
            return 0;
    }
    return 0;
}

int drover_worker_step(drover_worker_t *w, int timeout_ms)
{
    if (w->in_cb)
        return -EBUSY;
    if (w->state == DW_DONE)
        return 0;
    if (w->state == DW_FAILED)
        return w->fail_rc;
    if (w->fd < 0)
        return set_error(w, -ENOTCONN, "worker not connected");
    int64_t now = now_ms();
    int rc = check_timers(w, now);
    if (rc <= 0)
        return rc;
    int64_t wait = w->next_hb - now;
    if (w->last_rx + w->silence_ms - now < wait)
        wait = w->last_rx + w->silence_ms - now;
    if (w->stopping && w->stop_deadline - now < wait)
        wait = w->stop_deadline - now;
    if (timeout_ms >= 0 && timeout_ms < wait)
        wait = timeout_ms;
    if (wait < 0)
        wait = 0;
    struct pollfd p = {.fd = w->fd, .events = POLLIN};
    if (dw_buf_pending(&w->out) > 0)
        p.events |= POLLOUT;
    int n = poll(&p, 1, (int)wait);
    if (n < 0 && errno != EINTR)
        return fail(w, set_error(w, -errno, "poll: %s", strerror(errno)));
    if (n > 0 && (p.revents & POLLOUT))
        flush_some(w);
    if (n > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR))) {
        rc = read_input(w);
        if (rc < 0) {
            if (rc == -ECONNRESET && w->stopping) {
                /* the agent hung up while we were finishing: that is a stop */
                fail(w, rc);
                w->state = DW_DONE;
                return 0;
            }
            return fail(w, rc);
        }
    }
    reap(w);
    return check_timers(w, now_ms());
}

int drover_worker_run(drover_worker_t *w)
{
    if (w->state == DW_IDLE) {
        int rc = drover_worker_connect(w);
        if (rc < 0)
            return rc;
    }
    int rc;
    while ((rc = drover_worker_step(w, -1)) == 1)
        ;
    return rc;
}
