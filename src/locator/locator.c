/* locator: the node locator RPC service (see locator.h and
 * docs/protocol.md, section 7), and a small blocking client for resolve.
 *
 * The server is one listener, a list of connections, a list of active
 * subscriptions (connect channels being streamed to) and a list of drain
 * waiters. Output to a connection collects in its bounded `out` buffer and
 * is written once per loop turn (a uv_prepare handle flushes every
 * connection that got bytes), so a burst of requests or of table changes
 * costs one write per connection, not one per message. A table change is
 * encoded once; each subscriber gets the same bytes behind its own
 * 2-to-10-byte message prefix (the only part that names its channel). */
#include "locator/locator.h"

#include "locator/ketama.h"

#include "core/alloc.h"
#include "core/log.h"
#include "core/rpc.h"
#include "core/str.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Bytes asked of the kernel per read; one buffer of this size per server. */
#define LOC_READ_SIZE 65536
/* Output buffers above this size are freed once drained, so one large burst
 * (a full table) does not pin memory on an idle connection. */
#define LOC_SHRINK_BYTES 65536
/* Bound on what a detached connection keeps of its output. */
#define LOC_SINK_MAX ((size_t)4 << 20)
/* Subscriber uuids are shown in logs and drain reports; longer ones are cut. */
#define LOC_UUID_MAX 64
#define LOC_BACKLOG  511

typedef struct loc_sub loc_sub_t;
typedef struct loc_waiter loc_waiter_t;

/* One connect channel. Linked in its connection's list for its whole life
 * (so the client's close is recognised), and in the server's active list
 * while the server still streams on it. */
struct loc_sub {
    loc_conn_t *conn;
    loc_sub_t *conn_next;
    loc_sub_t *prev, *next; /* server's active list, oldest first */
    uint64_t id;            /* server-wide, increasing: waiters search by it */
    uint64_t channel;
    uint64_t sent;  /* highest revision written to it */
    uint64_t acked; /* highest revision it confirmed */
    bool active;    /* in the server's list: the server's direction is open */
    char uuid[LOC_UUID_MAX + 1];
};

#define LOC_ROUTING_PER_CONN 16
#define LOC_GROUPS_MAX       4096

/* A routing group: members and weights, and the ketama ring built from
 * them (the same ring every router builds from the streamed weights). */
typedef struct loc_group {
    char *name;
    char **targets;
    uint32_t *weights;
    size_t n;
    ketama_t *ring;
} loc_group_t;

struct loc_conn {
    loc_server_t *srv;
    loc_conn_t *prev, *next;             /* server's connections */
    loc_conn_t *dirty_prev, *dirty_next; /* waiting for the next flush */
    uv_tcp_t tcp;
    uv_write_t wreq;
    rpc_decoder_t dec;
    rpc_channels_t chans;
    buf_t out;  /* waiting to be written */
    buf_t wout; /* being written by uv_write */
    buf_t sink; /* detached: everything written */
    loc_sub_t *subs;
    size_t n_subs;
    uint64_t routing[LOC_ROUTING_PER_CONN]; /* channels subscribed to `routing` */
    size_t n_routing;
    bool dirty;
    bool writing;
    bool reading;
    bool paused;    /* reading stopped until the output drains */
    bool finishing; /* peer sent EOF: write what is queued, then close */
    bool doomed;    /* too slow during a broadcast: close after it */
    bool closed;    /* no more input or output; freed by its close callback */
    char peer[INET6_ADDRSTRLEN + 16];
};

typedef struct loc_wait_ent {
    uint64_t sub_id;
    bool done;
} loc_wait_ent_t;

struct loc_waiter {
    loc_server_t *srv;
    loc_waiter_t *prev, *next;
    uv_timer_t timer;
    uint64_t revision;
    loc_wait_ent_t *ents; /* sorted by sub_id */
    size_t n, n_done;
    bool frozen; /* outcome decided; the callback runs from the timer */
    char *names; /* pending subscribers, set when frozen */
    loc_confirm_fn cb;
    void *data;
};

struct loc_server {
    uv_loop_t *loop; /* NULL when detached */
    uv_tcp_t listener;
    uv_prepare_t flusher;
    loc_table_t *table;
    int listen_id; /* table listener */
    int port;
    char *node_id;
    char *node_host;
    int node_port;
    size_t max_message, max_conns, max_queued;
    void (*on_ack)(const char *uuid, const char *peer, uint64_t revision, void *data);
    void *data;
    void (*cluster)(void *data, void (*add)(void *ctx, const char *id, const char *host, int port),
                    void *ctx);

    loc_conn_t *conns;
    size_t n_conns;
    loc_conn_t *dirty;
    loc_sub_t *subs_head, *subs_tail;
    size_t n_subs; /* active */
    uint64_t next_sub_id;
    loc_waiter_t *waiters;

    buf_t change; /* the change being broadcast, channel 1 */
    buf_t full;   /* the full table at full_rev, channel 1 */
    uint64_t full_rev;
    bool full_valid;
    bool any_doomed;

    loc_group_t *groups; /* sorted by name */
    size_t n_groups;

    char *rbuf;
    bool stopping;
    int open_handles;
    void (*done)(void *data);
    void *done_data;
};

/* ---- encoding ------------------------------------------------------------ */

static void loc_pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str_with_body(pk, s, n);
}

/* [[host, port]...], version, api: the three elements of a resolve answer
 * and of one table entry. A removed name (n == 0) has no endpoints. */
static void loc_pack_entry_items(msgpack_packer *pk, const loc_entry_t *e)
{
    msgpack_pack_array(pk, e->n);
    for (size_t i = 0; i < e->n; i++) {
        msgpack_pack_array(pk, 2);
        loc_pack_str(pk, e->eps[i].host ? e->eps[i].host : "");
        msgpack_pack_int(pk, e->eps[i].port);
    }
    msgpack_pack_int64(pk, e->version);
    loc_pack_str(pk, e->api ? e->api : "service");
    /* attrs are already msgpack (one map): copied through as they are */
    if (e->n && e->attrs_len)
        pk->callback(pk->data, e->attrs, e->attrs_len);
}

/* 3 elements, or 4 with attributes; a removal never carries them. */
static uint32_t loc_entry_items(const loc_entry_t *e)
{
    return e->n && e->attrs_len ? 4 : 3;
}

static void loc_pack_entry(msgpack_packer *pk, const loc_entry_t *e)
{
    msgpack_pack_array(pk, loc_entry_items(e));
    loc_pack_entry_items(pk, e);
}

static int loc_pack_table_entry(const loc_entry_t *e, void *data)
{
    msgpack_packer *pk = data;
    loc_pack_str(pk, e->name);
    loc_pack_entry(pk, e);
    return 0;
}

/* A stream message is [channel, 0, [map], [["revision", R]]]. It is encoded
 * once with channel 1 into `b`; what follows the 3-byte prefix
 * (0x94 0x01 0x00) is the same for every subscriber. */
#define LOC_SHARED_PREFIX 3

static const char *loc_shared_body(const buf_t *b, size_t *len)
{
    const unsigned char *p = (const unsigned char *)b->data;
    if (b->len <= LOC_SHARED_PREFIX || p[0] != 0x94 || p[1] != 0x01 || p[2] != 0x00)
        abort(); /* rpc_enc_begin changed its encoding: fix the prefix above */
    *len = b->len - LOC_SHARED_PREFIX;
    return b->data + LOC_SHARED_PREFIX;
}

typedef struct loc_small {
    char b[16];
    size_t n;
} loc_small_t;

static int loc_small_write(void *data, const char *p, size_t n)
{
    loc_small_t *s = data;
    if (s->n + n > sizeof(s->b))
        return -1;
    memcpy(s->b + s->n, p, n);
    s->n += n;
    return 0;
}

/* The per-subscriber part of a stream message: array of 4, channel, write. */
static void loc_stream_prefix(uint64_t channel, loc_small_t *out)
{
    msgpack_packer pk;
    out->n = 0;
    msgpack_packer_init(&pk, out, loc_small_write);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint64(&pk, channel);
    msgpack_pack_uint64(&pk, RPC_WRITE);
}

static void loc_revision_text(uint64_t rev, char *buf, size_t n)
{
    snprintf(buf, n, "%" PRIu64, rev);
}

/* ---- output -------------------------------------------------------------- */

static void conn_close(loc_conn_t *c);
static void conn_on_close(uv_handle_t *h);
static loc_group_t *group_find(const loc_server_t *s, const char *name, size_t len);
static void group_clear(loc_group_t *g);
static void conn_flush(loc_conn_t *c);
static void conn_read_start(loc_conn_t *c);

/* Keep out + wout within the queue limit: out may only grow into what the
 * write in flight leaves. */
static void conn_set_room(loc_conn_t *c)
{
    size_t max = c->srv->max_queued;
    size_t room = c->wout.len < max ? max - c->wout.len : 0;
    c->out.max = room ? room : 1;
}

static size_t conn_queued(const loc_conn_t *c)
{
    return c->out.len + c->wout.len;
}

static void conn_too_slow(loc_conn_t *c)
{
    log_warn("locator", "%s: disconnected as too slow: %zu bytes waiting, limit %zu", c->peer,
             conn_queued(c), c->srv->max_queued);
    conn_close(c);
}

static void srv_on_flush(uv_prepare_t *h);

/* Output is written on the next flush (before the loop next waits for
 * I/O), so everything queued in one loop turn leaves in one write. */
static void conn_mark_dirty(loc_conn_t *c)
{
    loc_server_t *s = c->srv;
    if (!s->loop) {
        conn_flush(c);
        return;
    }
    if (c->dirty || c->closed)
        return;
    c->dirty = true;
    c->dirty_prev = NULL;
    c->dirty_next = s->dirty;
    if (s->dirty)
        s->dirty->dirty_prev = c;
    else
        uv_prepare_start(&s->flusher, srv_on_flush);
    s->dirty = c;
}

static void conn_unmark_dirty(loc_conn_t *c)
{
    if (!c->dirty)
        return;
    loc_server_t *s = c->srv;
    if (c->dirty_prev)
        c->dirty_prev->dirty_next = c->dirty_next;
    else
        s->dirty = c->dirty_next;
    if (c->dirty_next)
        c->dirty_next->dirty_prev = c->dirty_prev;
    c->dirty = false;
    c->dirty_prev = c->dirty_next = NULL;
    if (!s->dirty && s->loop)
        uv_prepare_stop(&s->flusher);
}

static void srv_on_flush(uv_prepare_t *h)
{
    loc_server_t *s = h->data;
    while (s->dirty) {
        loc_conn_t *c = s->dirty;
        conn_unmark_dirty(c);
        conn_flush(c);
    }
}

static void conn_shrink(buf_t *b)
{
    buf_reset(b);
    if (b->cap > LOC_SHRINK_BYTES)
        buf_free(b);
}

static void conn_on_write(uv_write_t *w, int status)
{
    loc_conn_t *c = w->data;
    c->writing = false;
    conn_shrink(&c->wout);
    if (c->closed)
        return;
    conn_set_room(c);
    if (status < 0) {
        log_debug("locator", "%s: write: %s", c->peer, uv_strerror(status));
        conn_close(c);
        return;
    }
    conn_flush(c);
}

/* Send what collected in c->out: uv_try_write first (no request, no
 * callback, usually takes it all), the rest with one uv_write. */
static void conn_flush(loc_conn_t *c)
{
    if (c->closed || c->writing)
        return;
    if (c->out.len > 0) {
        if (!c->srv->loop) {
            if (c->sink.len + c->out.len <= LOC_SINK_MAX)
                (void)buf_append(&c->sink, c->out.data, c->out.len);
            buf_reset(&c->out);
        } else {
            uv_buf_t b = uv_buf_init(c->out.data, (unsigned)c->out.len);
            int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
            if (n < 0 && n != UV_EAGAIN) {
                log_debug("locator", "%s: write: %s", c->peer, uv_strerror(n));
                conn_close(c);
                return;
            }
            if (n > 0 && (size_t)n == c->out.len) {
                conn_shrink(&c->out);
            } else {
                if (n > 0)
                    buf_consume(&c->out, (size_t)n);
                buf_t t = c->wout;
                c->wout = c->out;
                c->out = t;
                b = uv_buf_init(c->wout.data, (unsigned)c->wout.len);
                int rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, conn_on_write);
                if (rc < 0) {
                    log_debug("locator", "%s: write: %s", c->peer, uv_strerror(rc));
                    conn_close(c);
                    return;
                }
                c->writing = true;
            }
            conn_set_room(c);
        }
    }
    if (c->paused && conn_queued(c) <= c->srv->max_queued / 4)
        conn_read_start(c);
    if (c->finishing && !c->writing && c->out.len == 0)
        conn_close(c);
}

/* Append one shared stream message for `channel`. -ENOBUFS when it does
 * not fit under the queue limit (nothing appended). */
static int conn_queue_shared(loc_conn_t *c, uint64_t channel, const char *body, size_t len)
{
    loc_small_t pre;
    loc_stream_prefix(channel, &pre);
    if (c->out.len + pre.n + len > c->out.max)
        return -ENOBUFS;
    if (buf_append(&c->out, pre.b, pre.n) < 0)
        return -ENOBUFS;
    if (buf_append(&c->out, body, len) < 0) {
        c->out.len -= pre.n;
        return -ENOBUFS;
    }
    conn_mark_dirty(c);
    return 0;
}

/* error [[category, code], message] on a channel; closes the connection
 * as too slow when even that does not fit. */
static void conn_send_error(loc_conn_t *c, uint64_t channel, unsigned category, int code,
                            const char *msg)
{
    if (rpc_encode(&c->out, channel, RPC_ERROR, "[uu]s", category, (unsigned)code, msg) < 0) {
        conn_too_slow(c);
        return;
    }
    conn_mark_dirty(c);
}

/* ---- drain waiters ------------------------------------------------------- */

static void waiter_on_timer(uv_timer_t *t);

static loc_wait_ent_t *waiter_find(loc_waiter_t *w, uint64_t sub_id)
{
    size_t lo = 0, hi = w->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (w->ents[mid].sub_id == sub_id)
            return &w->ents[mid];
        if (w->ents[mid].sub_id < sub_id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* Decide the outcome now: name the subscribers still pending (they are
 * alive, or they would be done), then let the timer run the callback on
 * the next loop turn. */
static void waiter_freeze(loc_waiter_t *w)
{
    if (w->frozen)
        return;
    w->frozen = true;
    buf_t names = BUF_INIT(0);
    for (loc_sub_t *sub = w->srv->subs_head; sub; sub = sub->next) {
        loc_wait_ent_t *e = waiter_find(w, sub->id);
        if (e && !e->done)
            buf_printf(&names, "%s%s (%s)", names.len ? ", " : "", sub->uuid, sub->conn->peer);
    }
    w->names = buf_steal(&names, NULL);
    uv_timer_start(&w->timer, waiter_on_timer, 0, 0);
}

/* A subscriber confirmed more, or went away (gone): update every waiter
 * that waits on it. */
static void waiters_note(loc_server_t *s, const loc_sub_t *sub, bool gone)
{
    for (loc_waiter_t *w = s->waiters; w; w = w->next) {
        if (w->frozen)
            continue;
        loc_wait_ent_t *e = waiter_find(w, sub->id);
        if (!e || e->done || (!gone && sub->acked < w->revision))
            continue;
        e->done = true;
        if (++w->n_done == w->n)
            waiter_freeze(w);
    }
}

static void srv_handle_closed(loc_server_t *s);

static void waiter_on_close(uv_handle_t *h)
{
    loc_waiter_t *w = h->data;
    loc_server_t *s = w->srv;
    free(w->ents);
    free(w->names);
    free(w);
    srv_handle_closed(s);
}

static void waiter_on_timer(uv_timer_t *t)
{
    loc_waiter_t *w = t->data;
    loc_server_t *s = w->srv;
    waiter_freeze(w); /* the timeout: whoever is pending stays pending */
    uv_timer_stop(&w->timer);
    if (w->prev)
        w->prev->next = w->next;
    else
        s->waiters = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->cb(w->revision, w->n_done, w->n - w->n_done, w->names, w->data);
    uv_close((uv_handle_t *)&w->timer, waiter_on_close);
}

int loc_server_wait_confirmed(loc_server_t *s, uint64_t revision, uint64_t timeout_ms,
                              loc_confirm_fn cb, void *data)
{
    if (!s->loop)
        return -ENOTSUP;
    if (s->stopping)
        return -ESHUTDOWN;
    if (revision > loc_table_revision(s->table))
        return -EINVAL;
    loc_waiter_t *w = xcalloc(1, sizeof(*w));
    w->srv = s;
    w->revision = revision;
    w->cb = cb;
    w->data = data;
    w->ents = xcalloc(s->n_subs ? s->n_subs : 1, sizeof(*w->ents));
    for (loc_sub_t *sub = s->subs_head; sub; sub = sub->next) {
        /* The active list is in creation order, so ents come out sorted. */
        loc_wait_ent_t *e = &w->ents[w->n++];
        e->sub_id = sub->id;
        e->done = sub->acked >= revision;
        w->n_done += e->done;
    }
    uv_timer_init(s->loop, &w->timer);
    w->timer.data = w;
    s->open_handles++;
    w->next = s->waiters;
    if (s->waiters)
        s->waiters->prev = w;
    s->waiters = w;
    if (w->n_done == w->n)
        waiter_freeze(w);
    else
        uv_timer_start(&w->timer, waiter_on_timer, timeout_ms, 0);
    return 0;
}

/* ---- subscriptions ------------------------------------------------------- */

/* The server's direction of the channel is over: no more changes, and it
 * counts as done for the waiters. */
static void sub_deactivate(loc_sub_t *sub)
{
    if (!sub->active)
        return;
    loc_server_t *s = sub->conn->srv;
    sub->active = false;
    if (sub->prev)
        sub->prev->next = sub->next;
    else
        s->subs_head = sub->next;
    if (sub->next)
        sub->next->prev = sub->prev;
    else
        s->subs_tail = sub->prev;
    sub->prev = sub->next = NULL;
    s->n_subs--;
    log_info("locator", "%s: subscriber %s gone (confirmed revision %" PRIu64 ")", sub->conn->peer,
             sub->uuid, sub->acked);
    waiters_note(s, sub, true);
}

static void sub_remove(loc_conn_t *c, loc_sub_t *sub)
{
    sub_deactivate(sub);
    for (loc_sub_t **p = &c->subs; *p; p = &(*p)->conn_next) {
        if (*p == sub) {
            *p = sub->conn_next;
            break;
        }
    }
    c->n_subs--;
    free(sub);
}

/* End the server's direction with an error; the client may still close
 * its own. */
static void sub_fail(loc_conn_t *c, loc_sub_t *sub, int code, const char *msg)
{
    conn_send_error(c, sub->channel, RPC_ECAT_PROTOCOL, code, msg);
    sub_deactivate(sub);
}

/* The encoded full table for the table's current revision, built at most
 * once per revision however many subscribers connect. */
static const char *srv_full_table(loc_server_t *s, size_t *len)
{
    uint64_t rev = loc_table_revision(s->table);
    if (!s->full_valid || s->full_rev != rev) {
        buf_reset(&s->full);
        char text[24];
        loc_revision_text(rev, text, sizeof(text));
        rpc_enc_t e;
        rpc_enc_begin(&e, &s->full, 1, RPC_WRITE, 1, 1);
        msgpack_pack_map(&e.pk, loc_table_count(s->table));
        loc_table_foreach(s->table, loc_pack_table_entry, &e.pk);
        rpc_enc_header(&e, "revision", text, strlen(text));
        if (rpc_enc_end(&e) < 0)
            abort(); /* s->full is unbounded and the counts are right */
        s->full_rev = rev;
        s->full_valid = true;
    }
    return loc_shared_body(&s->full, len);
}

/* Display copy of a client-chosen id: printable ASCII only, bounded. */
static void loc_uuid_copy(char *dst, const char *p, size_t n)
{
    size_t k = n < LOC_UUID_MAX ? n : LOC_UUID_MAX;
    for (size_t i = 0; i < k; i++) {
        unsigned char ch = (unsigned char)p[i];
        dst[i] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    dst[k] = '\0';
    if (k == 0)
        snprintf(dst, LOC_UUID_MAX + 1, "-");
}

static void handle_connect(loc_conn_t *c, const rpc_msg_t *m)
{
    loc_server_t *s = c->srv;
    err_t err = {0};
    const char *uuid;
    size_t len;
    if (rpc_args_count(m, 1, 1, &err) < 0 || rpc_arg_bytes(m, 0, &uuid, &len, &err) < 0) {
        char msg[ERR_MSG_MAX + 16];
        snprintf(msg, sizeof(msg), "connect: %s", err.msg);
        conn_send_error(c, m->channel, RPC_ECAT_PROTOCOL, EINVAL, msg);
        return;
    }
    if (c->n_subs >= LOC_MAX_SUBS_PER_CONN) {
        conn_send_error(c, m->channel, RPC_ECAT_PROTOCOL, EMFILE,
                        "connect: too many subscriptions on one connection");
        return;
    }
    size_t blen;
    const char *body = srv_full_table(s, &blen);
    if (conn_queue_shared(c, m->channel, body, blen) < 0) {
        conn_too_slow(c);
        return;
    }
    loc_sub_t *sub = xcalloc(1, sizeof(*sub));
    sub->conn = c;
    sub->id = ++s->next_sub_id;
    sub->channel = m->channel;
    sub->sent = loc_table_revision(s->table);
    sub->active = true;
    loc_uuid_copy(sub->uuid, uuid, len);
    sub->conn_next = c->subs;
    c->subs = sub;
    c->n_subs++;
    sub->prev = s->subs_tail;
    if (s->subs_tail)
        s->subs_tail->next = sub;
    else
        s->subs_head = sub;
    s->subs_tail = sub;
    s->n_subs++;
    log_info("locator",
             "%s: subscriber %s on channel %" PRIu64 " (revision %" PRIu64 ", %zu names)", c->peer,
             sub->uuid, sub->channel, sub->sent, loc_table_count(s->table));
}

/* ack [revision]: the revision as an unsigned integer, or its decimal text
 * (what the "revision" header carries) as str or bin. */
static int loc_ack_revision(const rpc_msg_t *m, uint64_t *rev, err_t *err)
{
    if (rpc_args_count(m, 1, 1, err) < 0)
        return -EINVAL;
    const msgpack_object *o = &m->args[0];
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        *rev = o->via.u64;
        return 0;
    }
    const char *p;
    size_t len;
    if (rpc_arg_bytes(m, 0, &p, &len, err) < 0)
        return -EINVAL;
    char text[24];
    int64_t v;
    if (len == 0 || len >= sizeof(text))
        return err_set(err, -EINVAL, "argument 0 is not a revision");
    memcpy(text, p, len);
    text[len] = '\0';
    if (str_to_i64(text, 0, INT64_MAX, &v) < 0)
        return err_set(err, -EINVAL, "argument 0 is not a revision");
    *rev = (uint64_t)v;
    return 0;
}

/* A message on an open connect channel. */
static void sub_handle(loc_conn_t *c, loc_sub_t *sub, const rpc_msg_t *m)
{
    loc_server_t *s = c->srv;
    if (m->type == RPC_CLOSE || m->type == RPC_ERROR) {
        /* The subscriber ends its direction; end ours if still open. */
        if (sub->active) {
            if (rpc_encode(&c->out, sub->channel, RPC_CLOSE, "") < 0) {
                conn_too_slow(c);
                return;
            }
            conn_mark_dirty(c);
        }
        sub_remove(c, sub);
        return;
    }
    if (!sub->active)
        return; /* crossed our error; the peer has not seen it yet */
    if (m->type != LOC_ACK) {
        char msg[96];
        snprintf(msg, sizeof(msg), "connect: unexpected message type %" PRIu64 " from subscriber",
                 m->type);
        sub_fail(c, sub, EPROTO, msg);
        return;
    }
    err_t err = {0};
    uint64_t rev = 0;
    if (loc_ack_revision(m, &rev, &err) < 0) {
        char msg[ERR_MSG_MAX + 16];
        snprintf(msg, sizeof(msg), "ack: %s", err.msg);
        sub_fail(c, sub, EINVAL, msg);
        return;
    }
    if (rev > sub->sent) {
        /* Confirming what it was never sent would let a drain go ahead
         * while this router may still route to the instance. */
        char msg[128];
        snprintf(msg, sizeof(msg), "ack: revision %" PRIu64 " was never sent (last %" PRIu64 ")",
                 rev, sub->sent);
        sub_fail(c, sub, EINVAL, msg);
        return;
    }
    if (rev <= sub->acked)
        return;
    sub->acked = rev;
    waiters_note(s, sub, false);
    if (s->on_ack)
        s->on_ack(sub->uuid, c->peer, rev, s->data);
}

/* Broadcast one table change. Encoded once; a subscriber too slow to take
 * it is closed after the loop (closing unlinks subscriptions, which would
 * upset the iteration). */
static void srv_on_change(loc_table_t *t, const loc_entry_t *e, void *data)
{
    loc_server_t *s = data;
    s->full_valid = false;
    if (!s->subs_head)
        return;
    uint64_t rev = loc_table_revision(t);
    char text[24];
    loc_revision_text(rev, text, sizeof(text));
    buf_reset(&s->change);
    rpc_enc_t enc;
    rpc_enc_begin(&enc, &s->change, 1, RPC_WRITE, 1, 1);
    msgpack_pack_map(&enc.pk, 1);
    loc_pack_str(&enc.pk, e->name);
    loc_pack_entry(&enc.pk, e);
    rpc_enc_header(&enc, "revision", text, strlen(text));
    if (rpc_enc_end(&enc) < 0)
        abort(); /* s->change is unbounded and the counts are right */
    size_t len;
    const char *body = loc_shared_body(&s->change, &len);
    for (loc_sub_t *sub = s->subs_head; sub; sub = sub->next) {
        loc_conn_t *c = sub->conn;
        if (c->doomed || c->finishing)
            continue;
        if (conn_queue_shared(c, sub->channel, body, len) < 0) {
            c->doomed = true;
            s->any_doomed = true;
            continue;
        }
        sub->sent = rev;
    }
    if (s->any_doomed) {
        s->any_doomed = false;
        for (loc_conn_t *c = s->conns; c; c = c->next)
            if (c->doomed && !c->closed)
                conn_too_slow(c);
    }
    if (s->change.cap > LOC_SHRINK_BYTES)
        buf_free(&s->change);
}

/* ---- requests ------------------------------------------------------------ */

static void handle_resolve(loc_conn_t *c, const rpc_msg_t *m)
{
    err_t err = {0};
    const char *name;
    size_t len;
    const char *seed = NULL;
    size_t seed_len = 0;
    if (rpc_args_count(m, 1, 2, &err) < 0 || rpc_arg_bytes(m, 0, &name, &len, &err) < 0 ||
        (m->nargs == 2 && rpc_arg_bytes(m, 1, &seed, &seed_len, &err) < 0)) {
        char msg[ERR_MSG_MAX + 16];
        snprintf(msg, sizeof(msg), "resolve: %s", err.msg);
        conn_send_error(c, m->channel, RPC_ECAT_PROTOCOL, EINVAL, msg);
        return;
    }
    /* The table wants a C string; names are short, so no allocation. */
    const loc_entry_t *e = NULL;
    if (len && !memchr(name, '\0', len)) {
        char stack[256];
        char *heap = NULL;
        const char *cname = stack;
        if (len < sizeof(stack)) {
            memcpy(stack, name, len);
            stack[len] = '\0';
        } else {
            cname = heap = xmemdup(name, len);
        }
        e = loc_table_get(c->srv->table, cname);
        free(heap);
    }
    /* A routing group resolves to one member, picked on the ketama ring by
     * weight: by the caller's seed (sticky) or at random. */
    const loc_group_t *g = e || !len ? NULL : group_find(c->srv, name, len);
    if (g) {
        const char *member =
            seed ? ketama_pick(g->ring, seed, seed_len) : ketama_pick_random(g->ring);
        e = member ? loc_table_get(c->srv->table, member) : NULL;
    }
    if (!e) {
        conn_send_error(c, m->channel, RPC_ECAT_LOCATOR, ENOENT, "service not found");
        return;
    }
    rpc_enc_t enc;
    rpc_enc_begin(&enc, &c->out, m->channel, RPC_VALUE, loc_entry_items(e), 0);
    loc_pack_entry_items(&enc.pk, e);
    if (rpc_enc_end(&enc) < 0) {
        conn_too_slow(c);
        return;
    }
    conn_mark_dirty(c);
}

typedef struct cluster_acc {
    struct {
        char *id, *host;
        int port;
    } * v;
    size_t n;
} cluster_acc_t;

static void cluster_add(void *ctx, const char *id, const char *host, int port)
{
    cluster_acc_t *a = ctx;
    a->v = xrealloc(a->v, (a->n + 1) * sizeof(*a->v));
    a->v[a->n].id = xstrdup(id ? id : "");
    a->v[a->n].host = xstrdup(host ? host : "");
    a->v[a->n].port = port;
    a->n++;
}

static void cluster_acc_free(cluster_acc_t *a)
{
    for (size_t i = 0; i < a->n; i++) {
        free(a->v[i].id);
        free(a->v[i].host);
    }
    free(a->v);
}

static void handle_cluster(loc_conn_t *c, const rpc_msg_t *m)
{
    loc_server_t *s = c->srv;
    err_t err = {0};
    if (rpc_args_count(m, 0, 0, &err) < 0) {
        char msg[ERR_MSG_MAX + 16];
        snprintf(msg, sizeof(msg), "cluster: %s", err.msg);
        conn_send_error(c, m->channel, RPC_ECAT_PROTOCOL, EINVAL, msg);
        return;
    }
    cluster_acc_t acc = {0};
    cluster_add(&acc, s->node_id, s->node_host, s->node_port ? s->node_port : s->port);
    if (s->cluster)
        s->cluster(s->data, cluster_add, &acc);
    rpc_enc_t enc;
    rpc_enc_begin(&enc, &c->out, m->channel, RPC_VALUE, (uint32_t)acc.n, 0);
    for (size_t i = 0; i < acc.n; i++) {
        msgpack_pack_array(&enc.pk, 2);
        loc_pack_str(&enc.pk, acc.v[i].id);
        msgpack_pack_array(&enc.pk, 1);
        msgpack_pack_array(&enc.pk, 2);
        loc_pack_str(&enc.pk, acc.v[i].host);
        msgpack_pack_int(&enc.pk, acc.v[i].port);
    }
    cluster_acc_free(&acc);
    if (rpc_enc_end(&enc) < 0) {
        conn_too_slow(c);
        return;
    }
    conn_mark_dirty(c);
}

/* The byte stream is broken: framing is lost, so answer nothing more. What
 * earlier requests produced is still sent (best effort), then the
 * connection closes. */
static void conn_protocol_error(loc_conn_t *c, const char *why)
{
    log_info("locator", "%s: closing the connection: %s", c->peer, why);
    conn_unmark_dirty(c);
    conn_flush(c);
    conn_close(c);
}

static const char *const loc_method_names[] = {
    [RPC_LOCATOR_RESOLVE] = "resolve", [RPC_LOCATOR_CONNECT] = "connect",
    [RPC_LOCATOR_REFRESH] = "refresh", [RPC_LOCATOR_CLUSTER] = "cluster",
    [RPC_LOCATOR_PUBLISH] = "publish", [RPC_LOCATOR_ROUTING] = "routing",
};

/* ---- routing groups --------------------------------------------------- */

static void group_clear(loc_group_t *g)
{
    for (size_t i = 0; i < g->n; i++)
        free(g->targets[i]);
    free(g->targets);
    free(g->weights);
    ketama_free(g->ring);
    free(g->name);
    memset(g, 0, sizeof(*g));
}

static loc_group_t *group_find(const loc_server_t *s, const char *name, size_t len)
{
    for (size_t i = 0; i < s->n_groups; i++)
        if (strlen(s->groups[i].name) == len && !memcmp(s->groups[i].name, name, len))
            return &s->groups[i];
    return NULL;
}

/* name -> [[target, weight]...] (an empty list: the group is gone). */
static void group_pack(msgpack_packer *pk, const char *name, const loc_group_t *g)
{
    loc_pack_str(pk, name);
    msgpack_pack_array(pk, g ? g->n : 0);
    for (size_t i = 0; g && i < g->n; i++) {
        msgpack_pack_array(pk, 2);
        loc_pack_str(pk, g->targets[i]);
        msgpack_pack_uint32(pk, g->weights[i]);
    }
}

/* One routing message to every routing subscriber: the whole map when
 * `only` is NULL and `all` is set, else just the group that changed. */
static void routing_send(loc_conn_t *c, uint64_t channel, const char *only, const loc_group_t *g,
                         bool all)
{
    loc_server_t *s = c->srv;
    rpc_enc_t enc;
    rpc_enc_begin(&enc, &c->out, channel, RPC_WRITE, 1, 0);
    if (all) {
        msgpack_pack_map(&enc.pk, s->n_groups);
        for (size_t i = 0; i < s->n_groups; i++)
            group_pack(&enc.pk, s->groups[i].name, &s->groups[i]);
    } else {
        msgpack_pack_map(&enc.pk, 1);
        group_pack(&enc.pk, only, g);
    }
    if (rpc_enc_end(&enc) < 0) {
        conn_too_slow(c);
        return;
    }
    conn_mark_dirty(c);
}

int loc_server_group_set(loc_server_t *s, const char *name, const ketama_member_t *members,
                         size_t n, err_t *err)
{
    loc_group_t *g = group_find(s, name, strlen(name));
    ketama_t *ring = NULL;
    if (n) {
        ring = ketama_build(members, n, err);
        if (!ring)
            return err_wrap(err, -EINVAL, "group %s", name);
        if (!g) {
            if (s->n_groups == LOC_GROUPS_MAX) {
                ketama_free(ring);
                return err_set(err, -E2BIG, "group %s: at most %d groups", name, LOC_GROUPS_MAX);
            }
            s->groups = xrealloc(s->groups, (s->n_groups + 1) * sizeof(loc_group_t));
            g = &s->groups[s->n_groups++];
            memset(g, 0, sizeof(*g));
        } else {
            char *keep = g->name;
            g->name = NULL;
            group_clear(g);
            free(keep);
        }
        g->name = xstrdup(name);
        g->n = n;
        g->targets = xcalloc(n, sizeof(char *));
        g->weights = xcalloc(n, sizeof(uint32_t));
        for (size_t i = 0; i < n; i++) {
            g->targets[i] = xstrdup(members[i].name);
            g->weights[i] = members[i].weight;
        }
        g->ring = ring;
    } else if (g) {
        group_clear(g);
        *g = s->groups[--s->n_groups];
        g = NULL;
    } else {
        return 0;
    }
    for (loc_conn_t *c = s->conns; c; c = c->next)
        for (size_t i = 0; !c->closed && i < c->n_routing; i++)
            routing_send(c, c->routing[i], name, g, false);
    return 0;
}

/* routing [id]: the groups now, then every change, on this channel. */
static void handle_routing(loc_conn_t *c, const rpc_msg_t *m)
{
    err_t err = {0};
    const char *id;
    size_t len;
    if (rpc_args_count(m, 1, 1, &err) < 0 || rpc_arg_bytes(m, 0, &id, &len, &err) < 0) {
        char msg[ERR_MSG_MAX + 16];
        snprintf(msg, sizeof(msg), "routing: %s", err.msg);
        conn_send_error(c, m->channel, RPC_ECAT_PROTOCOL, EINVAL, msg);
        return;
    }
    if (c->n_routing == LOC_ROUTING_PER_CONN) {
        conn_send_error(c, m->channel, RPC_ECAT_PROTOCOL, EMFILE,
                        "routing: too many subscriptions on this connection");
        return;
    }
    c->routing[c->n_routing++] = m->channel;
    routing_send(c, m->channel, NULL, NULL, true);
}

/* A message on a routing channel: close (or error) unsubscribes. */
static bool routing_handle(loc_conn_t *c, const rpc_msg_t *m)
{
    for (size_t i = 0; i < c->n_routing; i++) {
        if (c->routing[i] != m->channel)
            continue;
        c->routing[i] = c->routing[--c->n_routing];
        if (m->type == RPC_CLOSE || m->type == RPC_ERROR) {
            if (rpc_encode(&c->out, m->channel, RPC_CLOSE, "") < 0)
                conn_too_slow(c);
            else
                conn_mark_dirty(c);
        } else {
            conn_send_error(c, m->channel, RPC_ECAT_PROTOCOL, EPROTO,
                            "routing: only close is expected from a subscriber");
        }
        return true;
    }
    return false;
}

static void conn_handle(loc_conn_t *c, const rpc_msg_t *m)
{
    if (routing_handle(c, m))
        return;
    for (loc_sub_t *sub = c->subs; sub; sub = sub->conn_next) {
        if (sub->channel == m->channel) {
            sub_handle(c, sub, m);
            return;
        }
    }
    err_t err = {0};
    if (rpc_channels_open(&c->chans, m->channel, &err) < 0) {
        conn_protocol_error(c, err.msg);
        return;
    }
    char msg[96];
    switch (m->type) {
    case RPC_LOCATOR_RESOLVE: handle_resolve(c, m); break;
    case RPC_LOCATOR_CONNECT: handle_connect(c, m); break;
    case RPC_LOCATOR_CLUSTER: handle_cluster(c, m); break;
    case RPC_LOCATOR_ROUTING: handle_routing(c, m); break;
    case RPC_LOCATOR_REFRESH:
    case RPC_LOCATOR_PUBLISH:
        snprintf(msg, sizeof(msg), "method %s is not served by this locator",
                 loc_method_names[m->type]);
        conn_send_error(c, m->channel, RPC_ECAT_PROTOCOL, ENOTSUP, msg);
        break;
    default:
        snprintf(msg, sizeof(msg), "unknown method %" PRIu64, m->type);
        conn_send_error(c, m->channel, RPC_ECAT_PROTOCOL, ENOSYS, msg);
        break;
    }
}

/* Every complete message of what arrived is handled at once (the decoder
 * never holds more than one read plus one partial message); replies leave
 * together on the next flush. */
static void conn_input(loc_conn_t *c, const char *p, size_t n)
{
    rpc_decoder_feed(&c->dec, p, n);
    rpc_msg_t m;
    err_t err = {0};
    int rc = 0;
    while (!c->closed && (rc = rpc_decoder_next(&c->dec, &m, &err)) == 1)
        conn_handle(c, &m);
    if (c->closed)
        return;
    if (rc < 0) {
        conn_protocol_error(c, err.msg);
        return;
    }
    /* A client that pipelines requests without reading the answers is
     * slowed down rather than dropped: stop reading until they drain. */
    if (c->srv->loop && c->reading && conn_queued(c) > c->srv->max_queued / 2) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
        c->paused = true;
    }
}

/* ---- connections --------------------------------------------------------- */

static void conn_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    loc_conn_t *c = h->data;
    *b = uv_buf_init(c->srv->rbuf, LOC_READ_SIZE);
}

/* The peer shut its side: answer what it asked, then close. */
static void conn_finish(loc_conn_t *c)
{
    if (c->reading)
        uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = false;
    c->finishing = true;
    conn_unmark_dirty(c);
    conn_flush(c);
}

static void conn_on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    loc_conn_t *c = st->data;
    if (nread == 0 || c->closed)
        return;
    if (nread == UV_EOF) {
        conn_finish(c);
    } else if (nread < 0) {
        log_debug("locator", "%s: read: %s", c->peer, uv_strerror((int)nread));
        conn_close(c);
    } else {
        conn_input(c, b->base, (size_t)nread);
    }
}

static void conn_read_start(loc_conn_t *c)
{
    if (c->reading || c->closed || c->finishing)
        return;
    int rc = uv_read_start((uv_stream_t *)&c->tcp, conn_on_alloc, conn_on_read);
    if (rc < 0) {
        log_debug("locator", "%s: read start: %s", c->peer, uv_strerror(rc));
        conn_close(c);
        return;
    }
    c->reading = true;
    c->paused = false;
}

static loc_conn_t *conn_new(loc_server_t *s)
{
    loc_conn_t *c = xcalloc(1, sizeof(*c));
    c->srv = s;
    rpc_decoder_init(&c->dec, s->max_message);
    rpc_channels_init(&c->chans, 0);
    buf_init(&c->out, s->max_queued);
    buf_init(&c->wout, 0);
    buf_init(&c->sink, 0);
    c->wreq.data = c;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->n_conns++;
    snprintf(c->peer, sizeof(c->peer), "-");
    return c;
}

/* No more input or output. Subscriptions end now (the waiters count them
 * as done); the memory goes in the handle's close callback. */
static void conn_close(loc_conn_t *c)
{
    if (c->closed)
        return;
    c->closed = true;
    c->reading = false;
    conn_unmark_dirty(c);
    for (loc_sub_t *sub = c->subs; sub; sub = sub->conn_next)
        sub_deactivate(sub);
    if (c->srv->loop)
        uv_close((uv_handle_t *)&c->tcp, conn_on_close);
}

static void conn_release(loc_conn_t *c)
{
    loc_server_t *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->n_conns--;
    while (c->subs)
        sub_remove(c, c->subs);
    rpc_decoder_free(&c->dec);
    buf_free(&c->out);
    buf_free(&c->wout);
    buf_free(&c->sink);
    free(c);
}

static void conn_on_close(uv_handle_t *h)
{
    loc_conn_t *c = h->data;
    loc_server_t *s = c->srv;
    conn_release(c);
    srv_handle_closed(s);
}

static void loc_sockaddr_text(const struct sockaddr_storage *ss, char *out, size_t n)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
        snprintf(out, n, "[%s]:%u", ip, (unsigned)ntohs(a->sin6_port));
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
        snprintf(out, n, "%s:%u", ip, (unsigned)ntohs(a->sin_port));
    }
}

static void srv_on_connection(uv_stream_t *l, int status)
{
    loc_server_t *s = l->data;
    if (status < 0) {
        log_warn("locator", "accept on port %d: %s", s->port, uv_strerror(status));
        return;
    }
    if (s->stopping)
        return;
    loc_conn_t *c = conn_new(s);
    uv_tcp_init(s->loop, &c->tcp);
    c->tcp.data = c;
    s->open_handles++;
    int rc = uv_accept(l, (uv_stream_t *)&c->tcp);
    if (rc < 0) {
        log_warn("locator", "accept on port %d: %s", s->port, uv_strerror(rc));
        conn_close(c);
        return;
    }
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0)
        loc_sockaddr_text(&ss, c->peer, sizeof(c->peer));
    if (s->n_conns > s->max_conns) {
        log_warn("locator", "%s: refused: %zu connections open, the limit", c->peer, s->max_conns);
        conn_close(c);
        return;
    }
    /* Changes are small messages a router waits for: never hold them back. */
    uv_tcp_nodelay(&c->tcp, 1);
    log_debug("locator", "%s: connected", c->peer);
    conn_read_start(c);
}

/* ---- server -------------------------------------------------------------- */

static loc_server_t *srv_new(loc_table_t *table, const loc_server_opts_t *opts)
{
    loc_server_opts_t o = {0};
    if (opts)
        o = *opts;
    loc_server_t *s = xcalloc(1, sizeof(*s));
    s->table = table;
    s->max_message = o.max_message_bytes ? o.max_message_bytes : LOC_MAX_MESSAGE_DEFAULT;
    s->max_conns = o.max_connections ? o.max_connections : LOC_MAX_CONNECTIONS_DEFAULT;
    s->max_queued = o.max_queued_bytes ? o.max_queued_bytes : LOC_MAX_QUEUED_DEFAULT;
    if (o.node_id) {
        s->node_id = xstrdup(o.node_id);
    } else {
        char host[UV_MAXHOSTNAMESIZE];
        size_t n = sizeof(host);
        s->node_id = xstrdup(uv_os_gethostname(host, &n) == 0 ? host : "localhost");
    }
    s->node_host = o.node_host ? xstrdup(o.node_host) : NULL;
    s->node_port = o.node_port;
    s->on_ack = o.on_ack;
    s->data = o.data;
    s->cluster = o.cluster;
    buf_init(&s->change, 0);
    buf_init(&s->full, 0);
    s->listen_id = loc_table_listen(table, srv_on_change, s);
    return s;
}

static void srv_unlisten(loc_server_t *s)
{
    if (s->listen_id) {
        loc_table_unlisten(s->table, s->listen_id);
        s->listen_id = 0;
    }
}

static void srv_free(loc_server_t *s)
{
    void (*done)(void *) = s->done;
    void *done_data = s->done_data;
    srv_unlisten(s);
    for (size_t i = 0; i < s->n_groups; i++)
        group_clear(&s->groups[i]);
    free(s->groups);
    free(s->node_id);
    free(s->node_host);
    buf_free(&s->change);
    buf_free(&s->full);
    free(s->rbuf);
    free(s);
    if (done)
        done(done_data);
}

static void srv_handle_closed(loc_server_t *s)
{
    if (--s->open_handles == 0 && s->stopping)
        srv_free(s);
}

static void srv_on_handle_close(uv_handle_t *h)
{
    srv_handle_closed(h->data);
}

int loc_server_start(uv_loop_t *loop, const char *addr, loc_table_t *table,
                     const loc_server_opts_t *opts, loc_server_t **out, err_t *err)
{
    *out = NULL;
    char *host = NULL;
    int port = 0;
    struct sockaddr_storage ss;
    if (str_split_hostport(addr, &host, &port))
        return err_set(err, -EINVAL,
                       "locator listen address \"%s\": expected host:port or [v6]:port", addr);
    memset(&ss, 0, sizeof(ss));
    int rc = uv_ip4_addr(host, port, (struct sockaddr_in *)&ss);
    if (rc < 0)
        rc = uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss);
    if (rc < 0) {
        free(host);
        return err_set(err, -EINVAL,
                       "locator listen address \"%s\": host is not a numeric IP address", addr);
    }
    loc_server_t *s = srv_new(table, opts);
    if (!s->node_host)
        s->node_host = host;
    else
        free(host);
    s->loop = loop;
    uv_tcp_init(loop, &s->listener);
    uv_prepare_init(loop, &s->flusher);
    s->listener.data = s->flusher.data = s;
    s->open_handles = 2;
    rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener, LOC_BACKLOG, srv_on_connection);
    if (rc == 0) {
        struct sockaddr_storage bound;
        int len = sizeof(bound);
        rc = uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &len);
        if (rc == 0)
            s->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                        : ((struct sockaddr_in *)&bound)->sin_port);
    }
    if (rc < 0) {
        /* The handles are freed by their close callbacks on the next turn. */
        srv_unlisten(s);
        s->stopping = true;
        uv_close((uv_handle_t *)&s->listener, srv_on_handle_close);
        uv_close((uv_handle_t *)&s->flusher, srv_on_handle_close);
        return err_set(err, rc, "locator: listen on %s: %s", addr, uv_strerror(rc));
    }
    s->rbuf = xmalloc(LOC_READ_SIZE);
    log_info("locator", "listening on %s (port %d)", addr, s->port);
    *out = s;
    return 0;
}

int loc_server_port(const loc_server_t *s)
{
    return s->port;
}

size_t loc_server_connections(const loc_server_t *s)
{
    size_t n = 0;
    for (const loc_conn_t *c = s->conns; c; c = c->next)
        n += !c->closed;
    return n;
}

size_t loc_server_subscribers(const loc_server_t *s)
{
    return s->n_subs;
}

void loc_server_stop(loc_server_t *s, void (*done)(void *data), void *data)
{
    if (s->stopping)
        return;
    s->stopping = true;
    s->done = done;
    s->done_data = data;
    srv_unlisten(s);
    /* Outcomes are decided before the connections close, so a stop does
     * not pass for every router's confirmation. */
    for (loc_waiter_t *w = s->waiters; w; w = w->next)
        waiter_freeze(w);
    for (loc_conn_t *c = s->conns; c; c = c->next)
        conn_close(c);
    uv_close((uv_handle_t *)&s->listener, srv_on_handle_close);
    uv_close((uv_handle_t *)&s->flusher, srv_on_handle_close);
    log_info("locator", "stopped listening on port %d", s->port);
}

/* ---- detached mode ------------------------------------------------------- */

loc_server_t *loc_server_new_detached(loc_table_t *table, const loc_server_opts_t *opts)
{
    loc_server_t *s = srv_new(table, opts);
    if (!s->node_host)
        s->node_host = xstrdup("127.0.0.1");
    return s;
}

void loc_server_free_detached(loc_server_t *s)
{
    srv_free(s);
}

loc_conn_t *loc_conn_new_detached(loc_server_t *s)
{
    loc_conn_t *c = conn_new(s);
    snprintf(c->peer, sizeof(c->peer), "detached");
    return c;
}

int loc_conn_feed(loc_conn_t *c, const void *bytes, size_t n)
{
    if (c->closed)
        return -EPIPE;
    conn_input(c, bytes, n);
    return c->closed ? -EPIPE : 0;
}

const buf_t *loc_conn_output(const loc_conn_t *c)
{
    return &c->sink;
}

void loc_conn_free_detached(loc_conn_t *c)
{
    conn_close(c);
    conn_release(c);
}

/* ---- blocking client ----------------------------------------------------- */

static int64_t loc_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait until fd is ready for `events` or the deadline passes. */
static int loc_wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - loc_now_ms();
        if (left <= 0)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, left > 60000 ? 60000 : (int)left);
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return -errno;
    }
}

static int loc_client_connect(const char *host_port, int64_t deadline, int *fd_out, err_t *err)
{
    char *host = NULL;
    int port = 0;
    if (str_split_hostport(host_port, &host, &port) < 0)
        return err_set(err, -EINVAL, "locator address \"%s\": expected host:port", host_port);
    char ps[8];
    snprintf(ps, sizeof(ps), "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV},
                    *res = NULL;
    int g = getaddrinfo(host, ps, &hints, &res);
    free(host);
    if (g != 0)
        return err_set(err, -EHOSTUNREACH, "locator %s: %s", host_port, gai_strerror(g));
    int rc = -ECONNREFUSED;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd =
            socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            rc = -errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
            rc = 0;
        } else if (errno == EINPROGRESS) {
            rc = loc_wait_fd(fd, POLLOUT, deadline);
            if (rc == 0) {
                int soerr = 0;
                socklen_t sl = sizeof(soerr);
                if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
                    soerr = errno;
                rc = -soerr;
            }
        } else {
            rc = -errno;
        }
        if (rc == 0) {
            *fd_out = fd;
            break;
        }
        close(fd);
        if (rc == -ETIMEDOUT)
            break;
    }
    freeaddrinfo(res);
    if (rc < 0)
        return err_set(err, rc, "cannot connect to locator %s: %s", host_port,
                       rc == -ETIMEDOUT ? "timed out" : strerror(-rc));
    return 0;
}

/* value [[[host, port]...], version, api, attrs?] (attrs, the routers'
 * business, are not kept) */
static int loc_parse_value(const rpc_msg_t *m, const char *where, loc_resolved_t *out, err_t *err)
{
    err_t e = {0};
    const msgpack_object_array *eps;
    const char *api;
    size_t alen;
    if (rpc_args_count(m, 3, 4, &e) < 0 || rpc_arg_array(m, 0, &eps, &e) < 0 ||
        rpc_arg_int(m, 1, &out->version, &e) < 0 || rpc_arg_str(m, 2, &api, &alen, &e) < 0)
        return err_set(err, -EPROTO, "locator %s answered a malformed value: %s", where, e.msg);
    out->eps = xcalloc(eps->size ? eps->size : 1, sizeof(*out->eps));
    for (uint32_t i = 0; i < eps->size; i++) {
        const msgpack_object *o = &eps->ptr[i];
        bool pair = o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == 2;
        const msgpack_object *h = pair ? &o->via.array.ptr[0] : NULL;
        const msgpack_object *p = pair ? &o->via.array.ptr[1] : NULL;
        if (!pair || (h->type != MSGPACK_OBJECT_STR && h->type != MSGPACK_OBJECT_BIN) ||
            p->type != MSGPACK_OBJECT_POSITIVE_INTEGER || p->via.u64 > 65535)
            return err_set(err, -EPROTO,
                           "locator %s answered a malformed value: endpoint %" PRIu32
                           " is not [host, port]",
                           where, i);
        out->eps[i].host = xstrndup(h->via.str.ptr, h->via.str.size);
        out->eps[i].port = (int)p->via.u64;
        out->n++;
    }
    out->api = xstrndup(api, alen);
    return 0;
}

/* error [[category, code], message]: a name the locator does not know is
 * -ENOENT with its message; other errors keep their errno code. */
static int loc_parse_error(const rpc_msg_t *m, const char *where, err_t *err)
{
    err_t e = {0};
    const msgpack_object_array *cc;
    const char *msg;
    size_t len;
    if (rpc_args_count(m, 2, 2, &e) < 0 || rpc_arg_array(m, 0, &cc, &e) < 0 ||
        rpc_arg_str(m, 1, &msg, &len, &e) < 0 || cc->size != 2 ||
        cc->ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
        cc->ptr[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return err_set(err, -EPROTO, "locator %s answered a malformed error", where);
    uint64_t cat = cc->ptr[0].via.u64, code = cc->ptr[1].via.u64;
    int n = len > 300 ? 300 : (int)len;
    if (cat == RPC_ECAT_LOCATOR && code == ENOENT)
        return err_set(err, -ENOENT, "%.*s", n, msg);
    int rc = code > 0 && code < 4096 ? -(int)code : -EPROTO;
    return err_set(err, rc, "locator %s: %.*s", where, n, msg);
}

void loc_resolved_free(loc_resolved_t *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n; i++)
        free(r->eps[i].host);
    free(r->eps);
    free(r->api);
    memset(r, 0, sizeof(*r));
}

int loc_client_resolve(const char *host_port, const char *name, long timeout_ms,
                       loc_resolved_t *out, err_t *err)
{
    memset(out, 0, sizeof(*out));
    int64_t deadline = loc_now_ms() + (timeout_ms > 0 ? timeout_ms : 1);
    int fd = -1;
    int rc = loc_client_connect(host_port, deadline, &fd, err);
    if (rc < 0)
        return rc;
    buf_t req = BUF_INIT(0);
    rpc_decoder_t dec;
    rpc_decoder_init(&dec, RPC_MAX_MESSAGE_DEFAULT);
    rc = rpc_encode(&req, 1, RPC_LOCATOR_RESOLVE, "s", name);
    if (rc < 0)
        err_set(err, rc, "resolve request for %s", name);
    for (size_t off = 0; rc == 0 && off < req.len;) {
        ssize_t n = send(fd, req.data + off, req.len - off, MSG_NOSIGNAL);
        if (n > 0)
            off += (size_t)n;
        else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            rc = loc_wait_fd(fd, POLLOUT, deadline);
        else if (n < 0 && errno == EINTR)
            continue;
        else
            rc = -errno;
        if (rc < 0)
            err_set(err, rc, "sending to locator %s: %s", host_port,
                    rc == -ETIMEDOUT ? "timed out" : strerror(-rc));
    }
    char rb[16384];
    while (rc == 0) {
        rpc_msg_t m;
        err_t derr = {0};
        int got = rpc_decoder_next(&dec, &m, &derr);
        if (got < 0) {
            rc = err_set(err, -EPROTO, "locator %s: %s", host_port, derr.msg);
            break;
        }
        if (got == 1) {
            if (m.channel != 1)
                continue;
            if (m.type == RPC_VALUE)
                rc = loc_parse_value(&m, host_port, out, err);
            else if (m.type == RPC_VALUE_ERROR)
                rc = loc_parse_error(&m, host_port, err);
            else
                rc = err_set(err, -EPROTO, "locator %s answered with message type %" PRIu64,
                             host_port, m.type);
            break;
        }
        ssize_t n = recv(fd, rb, sizeof(rb), 0);
        if (n > 0) {
            rpc_decoder_feed(&dec, rb, (size_t)n);
        } else if (n == 0) {
            rc = err_set(err, -ECONNRESET, "locator %s closed the connection without answering",
                         host_port);
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            rc = loc_wait_fd(fd, POLLIN, deadline);
            if (rc == -ETIMEDOUT)
                err_set(err, rc, "locator %s did not answer within %ld ms", host_port, timeout_ms);
            else if (rc < 0)
                err_set(err, rc, "reading from locator %s: %s", host_port, strerror(-rc));
        } else if (errno != EINTR) {
            rc = -errno;
            err_set(err, rc, "reading from locator %s: %s", host_port, strerror(-rc));
        }
    }
    rpc_decoder_free(&dec);
    buf_free(&req);
    close(fd);
    if (rc < 0)
        loc_resolved_free(out);
    return rc;
}
