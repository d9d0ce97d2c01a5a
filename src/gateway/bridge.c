/* gateway/bridge: HTTP over invocation to worker apps (see bridge.h for the
 * model). Three parts: the pure response-head mapping (also fuzzed), the
 * per-thread connections to invocation services with their channel
 * tables, and the invocation of one client request (read the body, send,
 * stream the answer back through the proxy's client write path). */
#include "gateway/bridge.h"

#include "core/alloc.h"
#include "core/log.h"
#include "core/rpc.h"
#include "gateway/proxy_internal.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Response bytes waiting for one slow client before its connection stops
 * being read (the protocol has no flow control of its own). */
#define BR_OUT_HIGH ((size_t)1 << 20)
/* Hard bound of one invocation's queue: the high mark, plus what one read
 * of the connection can still complete (a whole message). */
#define BR_OUT_MAX (BR_OUT_HIGH + RPC_MAX_MESSAGE_DEFAULT + 2 * BR_READ_BYTES)
/* Bytes queued to one invocation service connection (requests are at most
 * a message each; past this the service is not keeping up). */
#define BR_CONN_OUT_MAX      ((size_t)64 << 20)
#define BR_CONNS_PER_BACKEND 8
#define BR_CHANNELS_PER_CONN 4096
#define BR_READ_BYTES        (64u * 1024)
#define BR_HEAD_MAX          GW_UP_IN_BYTES
#define BR_HEADERS_MAX       GW_MAX_HEADERS
#define BR_EVENT_MAX         128
#define BR_APP_MAX           1024
/* Framing of the write message around the request chunk: the array, the
 * channel, the type, the args array, the bin header. */
#define BR_MSG_SLACK 32
/* The Content-Length pair added once the body is read. */
#define BR_CL_PAIR_MAX 40

typedef struct gw_binv gw_binv_t;
typedef struct br_conn br_conn_t;

typedef struct gw_bridge {
    gw_thread_t *t;
    br_conn_t *conns; /* every open connection of the thread */
    br_conn_t *dirty; /* connections with requests to send this loop turn (dnext) */
    char *rbuf;       /* reads land here, then are copied by the decoder */
} gw_bridge_t;

/* One connection to one node's invocation service of one worker app. */
struct br_conn {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_timer_t timer; /* connect timeout (and a connect that failed at once) */
    uv_write_t wreq;
    gw_bridge_t *br;
    gw_backend_t *b; /* referenced */
    br_conn_t *prev, *next;
    br_conn_t *dnext; /* br->dirty, while `dirty` */
    bool dirty;
    int handles;
    int connect_err;
    bool connected, failed, retired, reading, writing;
    unsigned paused; /* invocations over BR_OUT_HIGH: not read while > 0 */
    rpc_decoder_t dec;
    rpc_channels_t chans;
    buf_t out[2]; /* out[cur] collects; the other is being written */
    int cur;
    gw_binv_t **tab; /* open channels by id (chained through hnext) */
    size_t tab_cap, n_inv;
};

/* One request's invocation. Lives while the client holds it (c), while
 * its channel is open on a connection (conn), and while a write of its
 * bytes to the client is in flight (writing). */
struct gw_binv {
    gw_client_t *c;
    gw_thread_t *t;
    br_conn_t *conn;
    uint64_t ch;
    gw_binv_t *hnext;
    const gw_pool_t *pool; /* of c's snapshot; used only while attached */
    gw_balance_t balance;
    char *app;
    char event[BR_EVENT_MAX + 1];
    size_t event_len;
    buf_t req;  /* the request chunk: prefix, then whole once the body is in */
    buf_t body; /* the request body being read */
    uint64_t body_max;
    bool too_big, sent, head_done, ended, clean, queue_full, finished;
    gw_bridge_head_t head;
    uint64_t cl_left;
    buf_t q[2]; /* response bytes for the client: q[qcur] collects, the other is written */
    int qcur;
    bool writing, pausing;
    gw_wslot_t slot;
};

static const char chunk_end[] = "0\r\n\r\n";
static const char continue_100[] = "HTTP/1.1 100 Continue\r\n\r\n";

static void conn_end(br_conn_t *conn, int status, bool connect_failure, const char *why);
static void conn_read_update(br_conn_t *conn);
static void inv_send(gw_binv_t *inv);
static void inv_flush(gw_binv_t *inv);

/* ---- small helpers ---------------------------------------------------------- */

static void ctr_inc(atomic_uint_fast64_t *a)
{
    atomic_store_explicit(a, atomic_load_explicit(a, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

static bool name_is(const char *p, size_t n, const char *lit)
{
    size_t ln = strlen(lit);
    return n == ln && strncasecmp(p, lit, n) == 0;
}

/* RFC 9110 field-value: visible bytes, obs-text, SP and HTAB; no other
 * control byte reaches a client (CR and LF would split the response). */
static bool value_ok(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
            return false;
    }
    return true;
}

/* Printable ASCII without spaces: app names and events in headers. */
static bool name_text_ok(const char *p, size_t n, size_t max)
{
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] <= 0x20 || (unsigned char)p[i] >= 0x7f)
            return false;
    return true;
}

/* Restore a buffer to an earlier length (a failed build leaves no trace). */
static void buf_truncate(buf_t *b, size_t len)
{
    if (b->data && len <= b->len) {
        b->len = len;
        b->data[len] = '\0';
    }
}

static size_t fmt_hex(char *out, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = "0123456789abcdef"[v & 15];
        v >>= 4;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

/* Error texts from the service go into our plain-text answers: bounded,
 * control bytes replaced. */
static void clean_text(char *dst, size_t cap, const char *src, size_t n)
{
    if (n >= cap)
        n = cap - 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)src[i];
        dst[i] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
    }
    dst[n] = '\0';
}

/* ---- a bounded msgpack reader ---------------------------------------------
 * The head chunk is the worker's own bytes: read it by hand rather than
 * with msgpack_unpack, which allocates whatever an array header claims. */

typedef struct mp {
    const unsigned char *p, *end;
} mp_t;

static bool mp_be(mp_t *m, size_t n, uint64_t *v)
{
    if ((size_t)(m->end - m->p) < n)
        return false;
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++)
        x = (x << 8) | m->p[i];
    m->p += n;
    *v = x;
    return true;
}

static bool mp_array(mp_t *m, uint64_t *n)
{
    if (m->p >= m->end)
        return false;
    unsigned char b = *m->p++;
    if ((b & 0xf0) == 0x90) {
        *n = b & 0x0f;
        return true;
    }
    if (b == 0xdc)
        return mp_be(m, 2, n);
    if (b == 0xdd)
        return mp_be(m, 4, n);
    return false;
}

static bool mp_uint(mp_t *m, uint64_t *v)
{
    if (m->p >= m->end)
        return false;
    unsigned char b = *m->p++;
    if (b <= 0x7f) {
        *v = b;
        return true;
    }
    switch (b) {
    case 0xcc: return mp_be(m, 1, v);
    case 0xcd: return mp_be(m, 2, v);
    case 0xce: return mp_be(m, 4, v);
    case 0xcf: return mp_be(m, 8, v);
    case 0xd0:
    case 0xd1:
    case 0xd2:
    case 0xd3: {
        /* signed encodings of a non-negative value (some packers use them) */
        size_t n = (size_t)1 << (b - 0xd0);
        uint64_t x;
        if (!mp_be(m, n, &x) || (x >> (n * 8 - 1)) & 1)
            return false;
        *v = x;
        return true;
    }
    default: return false;
    }
}

/* str or bin */
static bool mp_bytes(mp_t *m, const char **p, size_t *n)
{
    if (m->p >= m->end)
        return false;
    unsigned char b = *m->p++;
    uint64_t len;
    if ((b & 0xe0) == 0xa0)
        len = b & 0x1f;
    else if (b == 0xd9 || b == 0xc4) {
        if (!mp_be(m, 1, &len))
            return false;
    } else if (b == 0xda || b == 0xc5) {
        if (!mp_be(m, 2, &len))
            return false;
    } else if (b == 0xdb || b == 0xc6) {
        if (!mp_be(m, 4, &len))
            return false;
    } else {
        return false;
    }
    if ((uint64_t)(m->end - m->p) < len)
        return false;
    *p = (const char *)m->p;
    *n = (size_t)len;
    m->p += len;
    return true;
}

/* ---- the response head (pure) ----------------------------------------------- */

typedef struct span {
    const char *p;
    size_t n;
} span_t;

static bool spans_have(const span_t *s, size_t n, const char *name, size_t nn)
{
    for (size_t i = 0; i < n; i++)
        if (s[i].n == nn && strncasecmp(s[i].p, name, nn) == 0)
            return true;
    return false;
}

/* A Content-Length value: decimal digits only (no sign, no list), at
 * most 18 of them so it never overflows. */
static bool parse_length(const char *p, size_t n, uint64_t *out)
{
    while (n && (p[0] == ' ' || p[0] == '\t')) {
        p++;
        n--;
    }
    while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
        n--;
    if (n == 0 || n > 18)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(p[i] - '0');
    }
    *out = v;
    return true;
}

/* Headers are read whole first: a Connection header anywhere makes the
 * headers it names hop-by-hop, as for HTTP backends. */
int gw_bridge_head_build(const void *chunk, size_t len, const gw_bridge_head_opts_t *o, buf_t *out,
                         gw_bridge_head_t *h, err_t *err)
{
    mp_t m = {chunk, (const unsigned char *)chunk + len};
    uint64_t n, code, nh;
    memset(h, 0, sizeof(*h));
    if (!mp_array(&m, &n) || n < 2)
        return err_set(err, -EPROTO, "response head is not an array [code, headers]");
    if (!mp_uint(&m, &code))
        return err_set(err, -EPROTO, "response code is not an unsigned integer");
    if (code < 200 || code > 599)
        return err_set(err, -EPROTO, "response code %llu is outside 200..599",
                       (unsigned long long)code);
    if (!mp_array(&m, &nh))
        return err_set(err, -EPROTO, "response headers are not an array");
    if (nh > BR_HEADERS_MAX)
        return err_set(err, -EPROTO, "more than %d response headers", BR_HEADERS_MAX);
    span_t names[BR_HEADERS_MAX], vals[BR_HEADERS_MAX];
    bool has_conn = false;
    for (uint64_t i = 0; i < nh; i++) {
        uint64_t pn;
        span_t *k = &names[i], *v = &vals[i];
        if (!mp_array(&m, &pn) || pn != 2 || !mp_bytes(&m, &k->p, &k->n) ||
            !mp_bytes(&m, &v->p, &v->n))
            return err_set(err, -EPROTO, "response header %llu is not [name, value]",
                           (unsigned long long)i);
        if (!gw_http_token_ok(k->p, k->n) || !value_ok(v->p, v->n))
            return err_set(err, -EPROTO, "response header %llu has an invalid %s",
                           (unsigned long long)i, gw_http_token_ok(k->p, k->n) ? "value" : "name");
        if (name_is(k->p, k->n, "content-length")) {
            uint64_t cl;
            if (!parse_length(v->p, v->n, &cl) || (h->has_length && cl != h->length))
                return err_set(err, -EPROTO, "invalid Content-Length in the response head");
            h->has_length = true;
            h->length = cl;
        }
        has_conn = has_conn || name_is(k->p, k->n, "connection");
    }
    h->status = (int)code;
    h->nobody = o->is_head || code == 204 || code == 304;
    if (code == 204)
        h->has_length = false; /* a 204 has no body to measure */
    size_t start = out->len;
    int rc = buf_printf(out, "HTTP/1.1 %d ", (int)code);
    const char *reason = http_status_str((enum http_status)code);
    if (reason && reason[0] != '<')
        rc |= buf_append_str(out, reason);
    rc |= buf_append(out, "\r\n", 2);
    bool cl_done = false;
    for (uint64_t i = 0; i < nh; i++) {
        const span_t *k = &names[i], *v = &vals[i];
        if (gw_http_hop_by_hop(k->p, k->n))
            continue;
        bool named = false;
        for (uint64_t j = 0; j < nh && has_conn && !named; j++)
            named = name_is(names[j].p, names[j].n, "connection") &&
                    gw_http_conn_token_has(vals[j].p, vals[j].n, k->p, k->n);
        if (named)
            continue;
        if (name_is(k->p, k->n, "content-length")) {
            if (cl_done || code == 204)
                continue; /* the same value twice: once is enough */
            cl_done = true;
            /* as we read it: digits only, whatever whitespace came */
            rc |= buf_printf(out, "Content-Length: %llu\r\n", (unsigned long long)h->length);
            continue;
        }
        rc |= buf_append(out, k->p, k->n);
        rc |= buf_append(out, ": ", 2);
        rc |= buf_append(out, v->p, v->n);
        rc |= buf_append(out, "\r\n", 2);
    }
    h->close = !o->keep_alive || o->draining;
    if (!h->nobody && !h->has_length) {
        if (o->http_minor >= 1)
            h->chunked = true;
        else
            h->close = true; /* HTTP/1.0: the end of the body is the close */
    }
    if (h->chunked)
        rc |= buf_append_str(out, "Transfer-Encoding: chunked\r\n");
    if (h->close)
        rc |= buf_append_str(out, "Connection: close\r\n");
    else if (o->http_minor == 0)
        rc |= buf_append_str(out, "Connection: keep-alive\r\n");
    bool sts = spans_have(names, nh, "strict-transport-security", 25);
    for (size_t i = 0; i < o->n_add_headers; i++) {
        const char *line = o->add_headers[i];
        const char *colon = strchr(line, ':');
        if (!colon)
            continue;
        size_t ln = (size_t)(colon - line);
        if (spans_have(names, nh, line, ln) || name_is(line, ln, "content-length") ||
            name_is(line, ln, "transfer-encoding") || name_is(line, ln, "connection"))
            continue;
        if (name_is(line, ln, "strict-transport-security")) {
            if (!o->hsts)
                continue; /* as for HTTP routes: HSTS only over HTTPS */
            sts = true;
        }
        rc |= buf_append_str(out, line);
        rc |= buf_append(out, "\r\n", 2);
    }
    if (o->hsts && o->hsts[0] && !sts) {
        rc |= buf_append_str(out, o->hsts);
        rc |= buf_append(out, "\r\n", 2);
    }
    rc |= buf_append(out, "\r\n", 2);
    if (rc != 0 || out->len - start > BR_HEAD_MAX) {
        buf_truncate(out, start);
        return err_set(err, -EPROTO, "response head over %u bytes", (unsigned)BR_HEAD_MAX);
    }
    return 0;
}

int gw_bridge_error_status(uint64_t category, uint64_t code, bool *retry)
{
    *retry = false;
    switch (category) {
    case RPC_ECAT_PROTOCOL: return code == ENOSYS ? 404 : 502; /* no handler for the event */
    case RPC_ECAT_LOCATOR: return 404;
    case RPC_ECAT_ENGINE:
        if (code == EAGAIN || code == ESHUTDOWN) {
            *retry = true; /* refused before anything ran: another node may take it */
            return 503;
        }
        return code == ETIMEDOUT ? 504 : 503;
    case RPC_ECAT_WORKER:
    case RPC_ECAT_APP: return 500;
    default: return 502;
    }
}

const char *gw_bridge_outcome_name(int outcome)
{
    static const char *const names[GW_BRIDGE_N_OUTCOMES] = {
        "ok",           "not_found",   "queue_full", "unavailable", "timeout",
        "worker_error", "bad_gateway", "too_large",  "aborted"};
    return outcome >= 0 && outcome < GW_BRIDGE_N_OUTCOMES ? names[outcome] : "?";
}

/* ---- connections: channel table --------------------------------------------- */

static size_t tab_slot(uint64_t ch, size_t cap)
{
    return (size_t)((ch * 0x9e3779b97f4a7c15ull) >> 32) & (cap - 1);
}

static gw_binv_t *tab_find(const br_conn_t *conn, uint64_t ch)
{
    if (!conn->tab_cap)
        return NULL;
    for (gw_binv_t *i = conn->tab[tab_slot(ch, conn->tab_cap)]; i; i = i->hnext)
        if (i->ch == ch)
            return i;
    return NULL;
}

static void tab_insert(br_conn_t *conn, gw_binv_t *inv)
{
    if (conn->n_inv + 1 > conn->tab_cap) {
        size_t cap = conn->tab_cap ? conn->tab_cap * 2 : 16;
        gw_binv_t **tab = xcalloc(cap, sizeof(*tab));
        for (size_t k = 0; k < conn->tab_cap; k++)
            for (gw_binv_t *i = conn->tab[k], *next; i; i = next) {
                next = i->hnext;
                size_t s = tab_slot(i->ch, cap);
                i->hnext = tab[s];
                tab[s] = i;
            }
        free(conn->tab);
        conn->tab = tab;
        conn->tab_cap = cap;
    }
    size_t s = tab_slot(inv->ch, conn->tab_cap);
    inv->hnext = conn->tab[s];
    conn->tab[s] = inv;
    conn->n_inv++;
    inv->conn = conn;
}

static void inv_maybe_free(gw_binv_t *inv)
{
    if (inv->c || inv->conn || inv->writing)
        return;
    buf_free(&inv->req);
    buf_free(&inv->body);
    buf_free(&inv->q[0]);
    buf_free(&inv->q[1]);
    free(inv->app);
    free(inv);
}

/* The channel is over for us (its terminal message came, or we give up on
 * it): take it off its connection, which closes once idle if it is no
 * longer wanted. */
static void tab_remove(gw_binv_t *inv)
{
    br_conn_t *conn = inv->conn;
    if (!conn)
        return;
    for (gw_binv_t **pp = &conn->tab[tab_slot(inv->ch, conn->tab_cap)]; *pp; pp = &(*pp)->hnext)
        if (*pp == inv) {
            *pp = inv->hnext;
            break;
        }
    inv->hnext = NULL;
    inv->conn = NULL;
    conn->n_inv--;
    if (inv->pausing) {
        inv->pausing = false;
        conn->paused--;
        conn_read_update(conn);
    }
    gw_thread_t *t = conn->br->t;
    if (conn->n_inv == 0 && !conn->failed && (conn->retired || t->draining || t->stopping))
        conn_end(conn, 0, false, NULL);
}

/* ---- connections: I/O ------------------------------------------------------- */

static void conn_on_close(uv_handle_t *h)
{
    br_conn_t *conn = h->data;
    if (--conn->handles > 0)
        return;
    if (conn->dirty) {
        br_conn_t **pp = &conn->br->dirty;
        while (*pp != conn)
            pp = &(*pp)->dnext;
        *pp = conn->dnext;
    }
    rpc_decoder_free(&conn->dec);
    buf_free(&conn->out[0]);
    buf_free(&conn->out[1]);
    gw_backend_unref(conn->b);
    free(conn->tab);
    free(conn);
}

static void conn_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)hint;
    br_conn_t *conn = h->data;
    b->base = conn->br->rbuf;
    b->len = BR_READ_BYTES;
}

static void conn_on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b);

static void conn_read_update(br_conn_t *conn)
{
    bool want = conn->connected && !conn->failed && conn->paused == 0;
    if (want && !conn->reading) {
        if (uv_read_start((uv_stream_t *)&conn->tcp, conn_alloc, conn_on_read) == 0)
            conn->reading = true;
    } else if (!want && conn->reading) {
        uv_read_stop((uv_stream_t *)&conn->tcp);
        conn->reading = false;
    }
}

static void conn_flush(br_conn_t *conn);

static void conn_on_written(uv_write_t *req, int status)
{
    br_conn_t *conn = req->data;
    conn->writing = false;
    buf_reset(&conn->out[conn->cur ^ 1]);
    if (conn->failed)
        return;
    if (status < 0) {
        conn_end(conn, status, false, "write failed");
        return;
    }
    conn_flush(conn); /* what collected meanwhile */
}

/* One write in flight per connection: requests queued meanwhile go out
 * together when it completes. Straight to the kernel when it takes it all
 * (no request, no completion, no epoll_ctl). */
static void conn_flush(br_conn_t *conn)
{
    if (!conn->connected || conn->writing || conn->failed)
        return;
    buf_t *o = &conn->out[conn->cur];
    if (!o->len)
        return;
    uv_buf_t tb = uv_buf_init(o->data, (unsigned)o->len);
    int n = uv_try_write((uv_stream_t *)&conn->tcp, &tb, 1);
    if (n > 0)
        buf_consume(o, (size_t)n);
    if (!o->len)
        return;
    /* an error is left to uv_write, which reports it from its callback */
    conn->cur ^= 1;
    uv_buf_t ub = uv_buf_init(o->data, (unsigned)o->len);
    conn->wreq.data = conn;
    int rc = uv_write(&conn->wreq, (uv_stream_t *)&conn->tcp, &ub, 1, conn_on_written);
    if (rc < 0) {
        conn_end(conn, rc, false, "write failed");
        return;
    }
    conn->writing = true;
}

static void conn_on_connect(uv_connect_t *req, int status)
{
    br_conn_t *conn = req->data;
    if (conn->failed)
        return;
    if (status < 0) {
        conn_end(conn, status, true, "connect failed");
        return;
    }
    uv_timer_stop(&conn->timer);
    conn->connected = true;
    if (atomic_load_explicit(&conn->b->fails, memory_order_relaxed))
        gw_backend_succeeded(conn->b);
    conn_read_update(conn);
    conn_flush(conn);
}

static void conn_on_timer(uv_timer_t *h)
{
    br_conn_t *conn = h->data;
    if (!conn->connected && !conn->failed)
        conn_end(conn, conn->connect_err ? conn->connect_err : UV_ETIMEDOUT, true,
                 "connect failed");
}

static gw_bridge_t *bridge_get(gw_thread_t *t)
{
    if (!t->bridge) {
        gw_bridge_t *br = xcalloc(1, sizeof(*br));
        br->t = t;
        br->rbuf = xmalloc(BR_READ_BYTES);
        t->bridge = br;
    }
    return t->bridge;
}

static br_conn_t *conn_new(gw_bridge_t *br, gw_backend_t *b)
{
    gw_thread_t *t = br->t;
    br_conn_t *conn = xcalloc(1, sizeof(*conn));
    conn->br = br;
    conn->b = b;
    gw_backend_ref(b);
    rpc_decoder_init(&conn->dec, RPC_MAX_MESSAGE_DEFAULT);
    rpc_channels_init(&conn->chans, 0);
    buf_init(&conn->out[0], BR_CONN_OUT_MAX);
    buf_init(&conn->out[1], BR_CONN_OUT_MAX);
    uv_tcp_init(&t->loop, &conn->tcp);
    conn->tcp.data = conn;
    uv_timer_init(&t->loop, &conn->timer);
    conn->timer.data = conn;
    conn->handles = 2;
    uv_tcp_nodelay(&conn->tcp, 1);
    conn->next = br->conns;
    if (br->conns)
        br->conns->prev = conn;
    br->conns = conn;
    conn->creq.data = conn;
    int rc =
        uv_tcp_connect(&conn->creq, &conn->tcp, (const struct sockaddr *)&b->addr, conn_on_connect);
    /* a failure now is reported from the timer: never inside the caller */
    if (rc < 0)
        conn->connect_err = rc;
    uv_timer_start(&conn->timer, conn_on_timer, rc < 0 ? 0 : t->p->o.connect_timeout_ms, 0);
    ctr_inc(&t->m.up_conns);
    return conn;
}

/* A connection for a new invocation to b: the first one neither paused nor
 * full, else a new one while there are fewer than BR_CONNS_PER_BACKEND,
 * else the least busy (a paused one too: its stall is bounded by the
 * slow client's timeout). NULL when every one is full. */
static br_conn_t *conn_get(gw_bridge_t *br, gw_backend_t *b)
{
    br_conn_t *best = NULL;
    int n = 0;
    for (br_conn_t *conn = br->conns; conn; conn = conn->next) {
        if (conn->b != b || conn->failed || conn->retired)
            continue;
        n++;
        if (conn->n_inv >= BR_CHANNELS_PER_CONN)
            continue;
        if (!conn->paused)
            return conn;
        if (!best || conn->n_inv < best->n_inv)
            best = conn;
    }
    if (n < BR_CONNS_PER_BACKEND)
        return conn_new(br, b);
    return best;
}

/* ---- invocations: nodes ----------------------------------------------------- */

static void client_drop_backend(gw_client_t *c)
{
    if (c->b) {
        atomic_fetch_sub_explicit(&c->b->active, 1, memory_order_relaxed);
        gw_backend_unref(c->b);
        c->b = NULL;
    }
}

/* A node of the app (not `exclude`), counted in as the proxy counts its
 * requests (least-connections sees bridged requests too). */
static bool inv_pick(gw_binv_t *inv, const gw_backend_t *exclude)
{
    gw_client_t *c = inv->c;
    return gw_client_pick_in(c, inv->pool, inv->balance, c->addr, strlen(c->addr), exclude);
}

/* Send the invocation again to another node, once per request, when it
 * cannot have run on the first (connect failure, queue full, stopping). */
static bool inv_retry(gw_binv_t *inv)
{
    gw_client_t *c = inv->c;
    if (c->retried || !inv->sent)
        return false;
    c->retried = true;
    gw_backend_t *old = c->b;
    if (old)
        gw_backend_ref(old);
    client_drop_backend(c);
    bool ok = inv_pick(inv, old);
    if (old)
        gw_backend_unref(old);
    if (!ok)
        return false;
    ctr_inc(&c->t->m.retries);
    inv_send(inv);
    return true;
}

/* The invocation failed after its head went out: the client connection
 * is cut (the response cannot be completed). */
static void inv_abort(gw_binv_t *inv)
{
    gw_client_t *c = inv->c;
    if (c)
        gw_client_close(c);
}

/* ---- invocations: the answer ------------------------------------------------ */

/* The worker's response head: map it and queue it for the client. */
static void inv_on_head(gw_binv_t *inv, const char *p, size_t len)
{
    gw_client_t *c = inv->c;
    gw_proxy_t *px = c->t->p;
    gw_bridge_head_opts_t o = {
        .http_minor = c->http_minor,
        .is_head = c->is_head,
        .keep_alive = c->keep_alive,
        .draining = c->t->draining,
        .hsts = c->tls && px->hsts[0] ? px->hsts : NULL,
        .add_headers = c->route ? c->route->add_headers : NULL,
        .n_add_headers = c->route ? c->route->n_add_headers : 0,
    };
    err_t err = {0};
    if (gw_bridge_head_build(p, len, &o, &inv->q[inv->qcur], &inv->head, &err) < 0) {
        tab_remove(inv);
        gw_client_respond(c, 502, "worker app %s sent an invalid response: %s", inv->app, err.msg);
        return;
    }
    inv->head_done = true;
    inv->cl_left = inv->head.length;
    c->status = inv->head.status;
    c->resp_started = true;
    c->resp_close = inv->head.close;
    /* the request can no longer be sent elsewhere */
    buf_free(&inv->req);
    inv_flush(inv);
}

/* Keep the connection unread while this invocation's client lags far
 * behind (bounded memory); read again once it caught up. */
static void inv_pause_update(gw_binv_t *inv)
{
    br_conn_t *conn = inv->conn;
    if (!conn)
        return;
    bool over = inv->c && inv->q[0].len + inv->q[1].len > BR_OUT_HIGH;
    if (over == inv->pausing)
        return;
    inv->pausing = over;
    if (over)
        conn->paused++;
    else
        conn->paused--;
    conn_read_update(conn);
}

static void inv_on_body(gw_binv_t *inv, const char *p, size_t len)
{
    gw_client_t *c = inv->c;
    if (inv->head.nobody)
        return;
    if (inv->head.has_length) {
        if (len > inv->cl_left) {
            log_debug("gateway", "worker app %s: response longer than its Content-Length",
                      inv->app);
            len = (size_t)inv->cl_left;
        }
        inv->cl_left -= len;
    }
    if (len == 0)
        return;
    buf_t *q = &inv->q[inv->qcur];
    int rc = 0;
    if (inv->head.chunked) {
        char hx[24];
        size_t hn = fmt_hex(hx, len);
        hx[hn++] = '\r';
        hx[hn++] = '\n';
        size_t at = q->len;
        if (buf_append(q, hx, hn) < 0 || buf_append(q, p, len) < 0 ||
            buf_append(q, "\r\n", 2) < 0) {
            buf_truncate(q, at);
            rc = -ENOBUFS;
        }
    } else {
        rc = buf_append(q, p, len);
    }
    if (rc < 0) {
        inv_abort(inv); /* cannot happen while pausing works; never grow past the bound */
        return;
    }
    c->resp_bytes += len;
    inv_flush(inv);
}

/* The service closed the channel: the response is complete (or short of
 * its Content-Length, which only a close of the connection can tell the
 * client). */
static void inv_on_close(gw_binv_t *inv)
{
    gw_client_t *c = inv->c;
    if (!inv->head_done) {
        gw_client_respond(c, 502, "worker app %s closed the invocation without a response",
                          inv->app);
        return;
    }
    if (inv->head.chunked && buf_append(&inv->q[inv->qcur], chunk_end, sizeof(chunk_end) - 1) < 0) {
        inv_abort(inv);
        return;
    }
    if (inv->head.has_length && inv->cl_left > 0 && !inv->head.nobody) {
        c->resp_close = true;
    } else {
        inv->clean = true;
    }
    inv->ended = true;
    inv_flush(inv);
}

static void inv_on_error(gw_binv_t *inv, uint64_t cat, uint64_t code, const char *msg,
                         size_t msg_len)
{
    gw_client_t *c = inv->c;
    char text[256];
    clean_text(text, sizeof(text), msg, msg_len);
    if (inv->head_done) {
        log_debug("gateway", "worker app %s: error [%llu, %llu] mid-response: %s", inv->app,
                  (unsigned long long)cat, (unsigned long long)code, text);
        inv_abort(inv);
        return;
    }
    bool retry;
    int status = gw_bridge_error_status(cat, code, &retry);
    if (retry && inv_retry(inv))
        return;
    inv->queue_full = cat == RPC_ECAT_ENGINE && code == EAGAIN;
    gw_client_respond(c, status, "worker app %s: %s (error [%llu, %llu])", inv->app,
                      text[0] ? text : "error", (unsigned long long)cat, (unsigned long long)code);
}

/* One message for one of this connection's channels. */
static void conn_dispatch(br_conn_t *conn, const rpc_msg_t *m)
{
    gw_binv_t *inv = tab_find(conn, m->channel);
    if (!inv) {
        if (m->channel > conn->chans.last) {
            conn_end(conn, UV_EPROTO, false, "message on a channel never opened");
            return;
        }
        return; /* for a channel we gave up on: dropped */
    }
    err_t err = {0};
    if (m->type == RPC_WRITE) {
        const char *p;
        size_t len;
        if (rpc_args_count(m, 1, 1, &err) < 0 || rpc_arg_bytes(m, 0, &p, &len, &err) < 0) {
            tab_remove(inv);
            if (!inv->c)
                inv_maybe_free(inv);
            else if (inv->head_done)
                inv_abort(inv);
            else
                gw_client_respond(inv->c, 502, "worker app %s: invalid write: %s", inv->app,
                                  err.msg);
            return;
        }
        if (!inv->c || inv->ended)
            return;
        gw_client_set_deadline(inv->c, inv->c->t->p->o.backend_timeout_ms, TMO_BACKEND);
        if (!inv->head_done)
            inv_on_head(inv, p, len);
        else
            inv_on_body(inv, p, len);
        return;
    }
    /* anything else ends the channel */
    tab_remove(inv);
    if (!inv->c) {
        inv_maybe_free(inv);
        return;
    }
    if (m->type == RPC_CLOSE) {
        inv_on_close(inv);
    } else if (m->type == RPC_ERROR) {
        const msgpack_object *cc = m->nargs >= 1 ? &m->args[0] : NULL;
        uint64_t cat = 0, code = 0;
        const char *msg = "";
        size_t msg_len = 0;
        if (cc && cc->type == MSGPACK_OBJECT_ARRAY && cc->via.array.size >= 2 &&
            cc->via.array.ptr[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
            cc->via.array.ptr[1].type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
            cat = cc->via.array.ptr[0].via.u64;
            code = cc->via.array.ptr[1].via.u64;
        }
        if (m->nargs >= 2 && rpc_arg_bytes(m, 1, &msg, &msg_len, NULL) < 0) {
            msg = "";
            msg_len = 0;
        }
        inv_on_error(inv, cat, code, msg, msg_len);
    } else if (inv->head_done) {
        inv_abort(inv);
    } else {
        gw_client_respond(inv->c, 502, "worker app %s: message of unknown type %llu", inv->app,
                          (unsigned long long)m->type);
    }
}

static void conn_on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    br_conn_t *conn = st->data;
    if (n < 0) {
        conn_end(conn, (int)n, false, n == UV_EOF ? "closed by the service" : "read failed");
        return;
    }
    if (n == 0 || conn->failed)
        return;
    (void)rpc_decoder_feed(&conn->dec, b->base, (size_t)n);
    rpc_msg_t m;
    err_t err = {0};
    int rc;
    while (!conn->failed && (rc = rpc_decoder_next(&conn->dec, &m, &err)) == 1)
        conn_dispatch(conn, &m);
    if (!conn->failed && rc < 0) {
        log_warn("gateway", "invocation service %s: %s", conn->b->name, err.msg);
        conn_end(conn, UV_EPROTO, false, "protocol error");
    }
}

/* The connection is done (failed, or closed because unused): every
 * invocation still on it fails, retried elsewhere when it cannot have
 * reached the service. */
static void conn_end(br_conn_t *conn, int status, bool connect_failure, const char *why)
{
    if (conn->failed)
        return;
    conn->failed = true;
    gw_bridge_t *br = conn->br;
    gw_thread_t *t = br->t;
    if (conn->prev)
        conn->prev->next = conn->next;
    else
        br->conns = conn->next;
    if (conn->next)
        conn->next->prev = conn->prev;
    conn->prev = conn->next = NULL;
    if (connect_failure)
        gw_backend_failed(conn->b, gw_thread_now(t), t->p->o.eject_base_ms, t->p->o.eject_max_ms);
    if (why && status < 0 && status != UV_ECANCELED)
        log_debug("gateway", "invocation service %s: %s: %s", conn->b->name, why,
                  uv_strerror(status));
    /* take every invocation off first: answering one may start others */
    gw_binv_t *list = NULL;
    for (size_t k = 0; k < conn->tab_cap; k++)
        while (conn->tab[k]) {
            gw_binv_t *i = conn->tab[k];
            conn->tab[k] = i->hnext;
            i->hnext = list;
            list = i;
        }
    conn->n_inv = 0;
    conn->paused = 0;
    if (conn->reading)
        uv_read_stop((uv_stream_t *)&conn->tcp);
    conn->reading = false;
    uv_close((uv_handle_t *)&conn->tcp, conn_on_close);
    uv_close((uv_handle_t *)&conn->timer, conn_on_close);
    while (list) {
        gw_binv_t *inv = list;
        list = inv->hnext;
        inv->hnext = NULL;
        inv->conn = NULL;
        inv->pausing = false;
        if (!inv->c) {
            inv_maybe_free(inv);
            continue;
        }
        if (inv->head_done) {
            inv_abort(inv);
            continue;
        }
        if (connect_failure && inv_retry(inv))
            continue;
        if (connect_failure)
            gw_client_respond(inv->c, status == UV_ETIMEDOUT ? 504 : 502,
                              "worker app %s: cannot connect to the invocation service at %s: %s",
                              inv->app, conn->b->name, uv_strerror(status));
        else
            gw_client_respond(inv->c, 502,
                              "worker app %s: the invocation service at %s %s before answering",
                              inv->app, conn->b->name,
                              status == UV_EPROTO ? "broke the protocol" : "closed the connection");
    }
}

/* ---- invocations: writing to the client ------------------------------------- */

/* The client took a write of ours: the buffer it came from is free again. */
static void inv_slot_done(gw_wslot_t *s, int status)
{
    gw_binv_t *inv = (gw_binv_t *)((char *)s - offsetof(gw_binv_t, slot));
    inv->writing = false;
    buf_reset(&inv->q[inv->qcur ^ 1]);
    if (!inv->c) {
        inv_maybe_free(inv);
        return;
    }
    if (status < 0)
        return; /* the client is closed by the proxy right after */
    inv_flush(inv);
}

/* Hand what collected to the client, one write at a time (the other
 * buffer collects meanwhile); once the channel ended and everything is
 * handed over, the response is done and the client goes on (inv may be
 * gone on return). */
static void inv_flush(gw_binv_t *inv)
{
    gw_client_t *c = inv->c;
    if (!c || c->closing)
        return;
    if (inv->writing) {
        inv_pause_update(inv);
        return;
    }
    buf_t *q = &inv->q[inv->qcur];
    if (q->len) {
        inv->qcur ^= 1;
        gw_wslot_t *s = gw_slot_get(&inv->slot, GW_SLOT_TO_CLIENT, c);
        s->done = inv_slot_done;
        gw_slot_add(s, q->data, q->len);
        s->close_after = inv->ended && c->resp_close;
        inv->writing = true;
        gw_client_write(c, s);
        if (inv->c != c || c->closing)
            return;
    }
    if (inv->ended && !inv->finished && inv->q[inv->qcur].len == 0) {
        inv->finished = true;
        gw_client_finish_response(c); /* detaches inv */
        return;
    }
    inv_pause_update(inv);
}

/* ---- invocations: the request ----------------------------------------------- */

static int pk_buf_write(void *data, const char *p, size_t n)
{
    return buf_append(data, p, n) < 0 ? -1 : 0;
}

static void pk_str(msgpack_packer *pk, const char *p, size_t n)
{
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, p, n);
}

static void pk_pair(msgpack_packer *pk, const char *n, size_t nl, const char *v, size_t vl)
{
    msgpack_pack_array(pk, 2);
    pk_str(pk, n, nl);
    pk_str(pk, v, vl);
}

/* Is request header i passed to the worker as it is? Hop-by-hop ones and
 * those a Connection header names are not, nor the ones replaced by ours
 * (Host, X-Forwarded-*, X-Request-Id, Content-Length) or answered here
 * (Expect). */
static bool req_header_kept(const gw_client_t *c, size_t i)
{
    const gw_hspan_t *hs = c->t->hs;
    const char *base = c->in;
    const char *n = base + hs[i].name;
    size_t nl = hs[i].name_len;
    if (gw_http_hop_by_hop(n, nl) || name_is(n, nl, "host") || name_is(n, nl, "content-length") ||
        name_is(n, nl, "x-forwarded-for") || name_is(n, nl, "x-forwarded-proto") ||
        name_is(n, nl, "x-forwarded-host") || name_is(n, nl, "x-request-id") ||
        name_is(n, nl, "expect"))
        return false;
    return !(c->has_conn_hdr && gw_http_named_by_connection(base, hs, c->nhs, n, nl));
}

/* [method, uri, version, [[name, value]...] up to the body: the headers
 * the backend of an HTTP route would get (hop-by-hop ones dropped,
 * X-Forwarded-* and X-Request-Id ours), copied now because c->in is
 * reused for the body. Content-Length and the body follow once read. */
static int inv_pack_prefix(gw_binv_t *inv, const char *target, size_t target_len, const char *host,
                           size_t host_len)
{
    gw_client_t *c = inv->c;
    const gw_hspan_t *hs = c->t->hs;
    const char *base = c->in;
    buf_t xff = BUF_INIT(16384);
    size_t kept = 0;
    for (size_t i = 0; i < c->nhs; i++) {
        if (name_is(base + hs[i].name, hs[i].name_len, "x-forwarded-for")) {
            if (xff.len)
                (void)buf_append(&xff, ", ", 2);
            (void)buf_append(&xff, base + hs[i].val, hs[i].val_len);
        } else if (req_header_kept(c, i)) {
            kept++;
        }
    }
    if (xff.len)
        (void)buf_append(&xff, ", ", 2);
    int rc = buf_append_str(&xff, c->addr);
    size_t total = kept + 3 + (host_len ? 2 : 0) + (c->req_body ? 1 : 0);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &inv->req, pk_buf_write);
    msgpack_pack_array(&pk, 5);
    const char *method = http_method_str((enum http_method)c->method);
    pk_str(&pk, method, strlen(method));
    pk_str(&pk, target, target_len);
    pk_str(&pk, c->http_minor == 0 ? "1.0" : "1.1", 3);
    msgpack_pack_array(&pk, (uint32_t)total);
    for (size_t i = 0; i < c->nhs; i++)
        if (req_header_kept(c, i))
            pk_pair(&pk, base + hs[i].name, hs[i].name_len, base + hs[i].val, hs[i].val_len);
    if (host_len)
        pk_pair(&pk, "Host", 4, host, host_len);
    pk_pair(&pk, "X-Forwarded-For", 15, xff.data ? xff.data : "", xff.len);
    const char *proto = c->tls ? "https" : "http";
    pk_pair(&pk, "X-Forwarded-Proto", 17, proto, strlen(proto));
    if (host_len)
        pk_pair(&pk, "X-Forwarded-Host", 16, host, host_len);
    pk_pair(&pk, "X-Request-Id", 12, c->reqid, strlen(c->reqid));
    buf_free(&xff);
    if (rc < 0 || inv->req.len + BR_MSG_SLACK + BR_CL_PAIR_MAX >= RPC_MAX_MESSAGE_DEFAULT)
        return -ENOBUFS;
    return 0;
}

/* The body is in: complete the chunk (Content-Length, the body) and send. */
static void inv_finish_request(gw_binv_t *inv)
{
    gw_client_t *c = inv->c;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &inv->req, pk_buf_write);
    if (c->req_body) {
        char num[24];
        int nl = snprintf(num, sizeof(num), "%zu", inv->body.len);
        pk_pair(&pk, "Content-Length", 14, num, (size_t)nl);
    }
    msgpack_pack_bin(&pk, (uint32_t)inv->body.len);
    if (inv->body.len)
        msgpack_pack_bin_body(&pk, inv->body.data, inv->body.len);
    buf_free(&inv->body);
    if (inv->req.len + BR_MSG_SLACK > RPC_MAX_MESSAGE_DEFAULT || inv->req.len == 0) {
        gw_client_respond(c, 413, "request over the %zu bytes of one invocation",
                          RPC_MAX_MESSAGE_DEFAULT);
        return;
    }
    inv->sent = true;
    inv_send(inv);
}

/* enqueue, write, close on a new channel of a connection to c->b. */
static void inv_send(gw_binv_t *inv)
{
    gw_client_t *c = inv->c;
    br_conn_t *conn = conn_get(bridge_get(c->t), c->b);
    if (!conn) {
        gw_client_respond(c, 503, "worker app %s: too many invocations in flight to %s", inv->app,
                          c->b->name);
        return;
    }
    uint64_t ch = rpc_channels_next(&conn->chans);
    buf_t *o = &conn->out[conn->cur];
    size_t at = o->len;
    int rc = rpc_encode(o, ch, RPC_INVOKE, "S", inv->event, inv->event_len);
    if (rc == 0) {
        rpc_enc_t e;
        rpc_enc_begin(&e, o, ch, RPC_WRITE, 1, 0);
        msgpack_pack_bin(&e.pk, (uint32_t)inv->req.len);
        msgpack_pack_bin_body(&e.pk, inv->req.data, inv->req.len);
        rc = rpc_enc_end(&e);
    }
    if (rc == 0)
        rc = rpc_encode(o, ch, RPC_CLOSE, "");
    if (rc < 0) {
        buf_truncate(o, at);
        gw_client_respond(c, 503, "worker app %s: the invocation service at %s is not keeping up",
                          inv->app, c->b->name);
        return;
    }
    inv->ch = ch;
    tab_insert(conn, inv);
    gw_client_set_deadline(c, c->t->p->o.backend_timeout_ms, TMO_BACKEND);
    /* sent at the end of this loop turn, with every other request the turn
     * brought for the same node: one write for all of them */
    if (!conn->dirty) {
        conn->dirty = true;
        conn->dnext = conn->br->dirty;
        conn->br->dirty = conn;
        gw_thread_wake(c->t);
    }
}

static int body_on_body(http_parser *p, const char *at, size_t n)
{
    gw_client_t *c = p->data;
    gw_binv_t *inv = c->inv;
    if (inv->body.len + n > inv->body_max) {
        inv->too_big = true;
        return 1;
    }
    (void)buf_append(&inv->body, at, n);
    return 0;
}

static int body_on_complete(http_parser *p)
{
    gw_client_t *c = p->data;
    c->req_done = true;
    http_parser_pause(p, 1); /* what follows is the next request */
    return 0;
}

static const http_parser_settings body_settings = {
    .on_body = body_on_body,
    .on_message_complete = body_on_complete,
};

void gw_bridge_client_bytes(gw_client_t *c)
{
    gw_binv_t *inv = c->inv;
    if (inv->sent || c->req_done)
        return;
    size_t avail = c->in_len - c->in_off;
    if (avail) {
        size_t got = http_parser_execute(&c->parser, &body_settings, c->in + c->in_off, avail);
        c->in_off += got;
        enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
        if (e == HPE_PAUSED) {
            http_parser_pause(&c->parser, 0);
        } else if (e != HPE_OK) {
            if (inv->too_big)
                gw_client_respond(c, 413, "request body over the limit of %llu bytes",
                                  (unsigned long long)inv->body_max);
            else
                gw_client_respond(c, 400, "malformed request body: %s", http_errno_description(e));
            return;
        }
    }
    /* the body is copied out: the input buffer is free again */
    if (c->in_off == c->in_len && c->in_locks == 0)
        c->in_off = c->in_len = 0;
    if (c->req_done)
        inv_finish_request(inv);
    else
        gw_client_set_deadline(c, c->t->p->o.backend_timeout_ms, TMO_BACKEND);
}

/* The value of request header `name` (first one), or NULL. */
static const char *req_header(const gw_client_t *c, const char *name, size_t *len)
{
    const gw_hspan_t *hs = c->t->hs;
    for (size_t i = 0; i < c->nhs; i++)
        if (name_is(c->in + hs[i].name, hs[i].name_len, name)) {
            *len = hs[i].val_len;
            return c->in + hs[i].val;
        }
    return NULL;
}

static void bridge_begin(gw_client_t *c, const gw_pool_t *pool, gw_balance_t balance,
                         const char *app, size_t app_len, const char *ev, size_t ev_len,
                         const char *target, size_t target_len, const char *host, size_t host_len);

void gw_bridge_start(gw_client_t *c, const gw_snapshot_t *snap, const gw_route_t *route,
                     const char *target, size_t target_len, const char *host, size_t host_len)
{
    gw_thread_t *t = c->t;
    if (t->detached) {
        gw_client_respond(c, 501, "worker apps are not served by a detached proxy");
        return;
    }
    if (c->upgrade) {
        gw_client_respond(c, 501, "worker apps do not take protocol upgrades");
        return;
    }
    const char *app, *ev = "http";
    size_t app_len, ev_len = 4;
    const gw_pool_t *pool;
    gw_balance_t balance = GW_BALANCE_ROUNDROBIN;
    if (route) {
        app = route->app;
        app_len = strlen(app);
        if (route->event && route->event[0]) {
            ev = route->event;
            ev_len = strlen(ev);
        }
        pool = gw_route_pool(snap, route, NULL, 0);
        balance = route->balance;
    } else {
        app = req_header(c, "x-drover-app", &app_len);
        if (!app || !name_text_ok(app, app_len, BR_APP_MAX)) {
            gw_client_respond(c, 400, "X-Drover-App: expected an app id such as /production/echo");
            return;
        }
        size_t l;
        const char *e = req_header(c, "x-drover-event", &l);
        if (e) {
            ev = e;
            ev_len = l;
        }
        pool = gw_snapshot_pool(snap, app, app_len);
        if (!pool || !pool->worker) {
            char name[256];
            clean_text(name, sizeof(name), app, app_len);
            gw_client_respond(c, 404, "no worker app %s", name);
            return;
        }
    }
    bridge_begin(c, pool, balance, app, app_len, ev, ev_len, target, target_len, host, host_len);
}

/* The path form, /<app>/<event>/<rest>: app ids hold slashes themselves
 * (/production/resize), so the longest leading run of segments that names
 * a worker app in the table wins; the segment after it is the event, and
 * the worker sees /<rest> with the query. Only tried when no route
 * matched, so routes always take precedence. */
bool gw_bridge_try_path(gw_client_t *c, const gw_snapshot_t *snap, const char *target,
                        size_t target_len, const char *host, size_t host_len)
{
    if (c->t->detached || !target_len || target[0] != '/')
        return false;
    size_t path_len = 0;
    while (path_len < target_len && target[path_len] != '?')
        path_len++;
    const gw_pool_t *pool = NULL;
    size_t app_len = 0;
    for (size_t i = 1; i <= path_len && i <= BR_APP_MAX; i++) {
        if (i < path_len && target[i] != '/')
            continue;
        const gw_pool_t *p = gw_snapshot_pool(snap, target, i);
        if (p && p->worker) {
            pool = p;
            app_len = i;
        }
    }
    if (!pool || app_len >= path_len)
        return false; /* no worker app, or no event after it */
    size_t ev_off = app_len + 1, ev_end = ev_off;
    while (ev_end < path_len && target[ev_end] != '/')
        ev_end++;
    if (ev_end == ev_off)
        return false;
    /* what the worker sees: the rest of the path (at least "/"), query kept */
    char *rest;
    if (ev_end < path_len)
        rest = xstrndup(target + ev_end, target_len - ev_end);
    else
        rest = xasprintf("/%.*s", (int)(target_len - ev_end), target + ev_end);
    bridge_begin(c, pool, GW_BALANCE_ROUNDROBIN, target, app_len, target + ev_off, ev_end - ev_off,
                 rest, strlen(rest), host, host_len);
    free(rest);
    return true;
}

/* From here on the request is the bridge's, whatever way it named its app:
 * an invocation is set up, the head packed, a node picked. */
static void bridge_begin(gw_client_t *c, const gw_pool_t *pool, gw_balance_t balance,
                         const char *app, size_t app_len, const char *ev, size_t ev_len,
                         const char *target, size_t target_len, const char *host, size_t host_len)
{
    gw_thread_t *t = c->t;
    if (!name_text_ok(ev, ev_len, BR_EVENT_MAX)) {
        gw_client_respond(c, 400, "invalid event name (1-%d printable characters)", BR_EVENT_MAX);
        return;
    }
    gw_binv_t *inv = xcalloc(1, sizeof(*inv));
    inv->c = c;
    inv->t = t;
    inv->pool = pool;
    inv->balance = balance;
    inv->app = xstrndup(app, app_len);
    for (char *p = inv->app; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    memcpy(inv->event, ev, ev_len);
    inv->event_len = ev_len;
    buf_init(&inv->req, RPC_MAX_MESSAGE_DEFAULT);
    buf_init(&inv->q[0], BR_OUT_MAX);
    buf_init(&inv->q[1], BR_OUT_MAX);
    c->inv = inv;
    c->pool = pool;
    if (!pool || pool->n == 0) {
        gw_client_respond(c, 503, "no node runs worker app %s", inv->app);
        return;
    }
    if (inv_pack_prefix(inv, target, target_len, host, host_len) < 0) {
        gw_client_respond(c, 431, "request head too large for an invocation");
        return;
    }
    uint64_t room = RPC_MAX_MESSAGE_DEFAULT - inv->req.len - BR_MSG_SLACK - BR_CL_PAIR_MAX;
    inv->body_max = c->body_limit && c->body_limit < room ? c->body_limit : room;
    buf_init(&inv->body, (size_t)inv->body_max);
    if ((c->parser.flags & F_CONTENTLENGTH) && c->parser.content_length > inv->body_max) {
        gw_client_respond(c, 413, "request body of %llu bytes is over the limit of %llu",
                          (unsigned long long)c->parser.content_length,
                          (unsigned long long)inv->body_max);
        return;
    }
    if (!inv_pick(inv, NULL)) {
        gw_client_respond(c, 503, "no healthy node for worker app %s", inv->app);
        return;
    }
    c->state = CS_BODY;
    size_t el;
    const char *expect = req_header(c, "expect", &el);
    if (expect && !c->req_done && c->http_minor >= 1 && el == 12 &&
        strncasecmp(expect, "100-continue", 12) == 0) {
        (void)buf_append(&inv->q[inv->qcur], continue_100, sizeof(continue_100) - 1);
        inv_flush(inv);
        if (c->inv != inv)
            return;
    }
    gw_client_set_deadline(c, t->p->o.backend_timeout_ms, TMO_BACKEND);
    if (c->req_done)
        inv_finish_request(inv);
    else
        gw_bridge_client_bytes(c);
}

/* ---- the end of a request ---------------------------------------------------- */

static int inv_outcome(const gw_binv_t *inv, int status)
{
    if (inv->head_done)
        return inv->clean && inv->finished ? GW_BRIDGE_OK : GW_BRIDGE_ABORTED;
    switch (status) {
    case 404: return GW_BRIDGE_NOT_FOUND;
    case 413: return GW_BRIDGE_TOO_LARGE;
    case 500: return GW_BRIDGE_WORKER_ERROR;
    case 502: return GW_BRIDGE_BAD_GATEWAY;
    case 503: return inv->queue_full ? GW_BRIDGE_QUEUE_FULL : GW_BRIDGE_UNAVAILABLE;
    case 504: return GW_BRIDGE_TIMEOUT;
    default: return GW_BRIDGE_ABORTED;
    }
}

void gw_bridge_detach(gw_client_t *c)
{
    gw_binv_t *inv = c->inv;
    c->inv = NULL;
    inv->c = NULL;
    ctr_inc(&c->t->m.bridged[inv_outcome(inv, c->status)]);
    if (inv->pausing && inv->conn) {
        inv->pausing = false;
        inv->conn->paused--;
        conn_read_update(inv->conn);
    }
    /* what was not handed to the client yet is dropped; a write in flight
     * keeps its buffer until it completes */
    buf_free(&inv->req);
    buf_free(&inv->body);
    buf_free(&inv->q[inv->qcur]);
    inv_maybe_free(inv);
}

/* ---- thread-level ------------------------------------------------------------ */

void gw_bridge_sweep(gw_thread_t *t, const gw_snapshot_t *s)
{
    gw_bridge_t *br = t->bridge;
    if (!br)
        return;
    br_conn_t *next;
    for (br_conn_t *conn = br->conns; conn; conn = next) {
        next = conn->next;
        if (gw_snapshot_has_backend(s, conn->b))
            continue;
        conn->retired = true;
        if (conn->n_inv == 0)
            conn_end(conn, 0, false, NULL);
    }
}

void gw_bridge_flush(gw_thread_t *t)
{
    gw_bridge_t *br = t->bridge;
    while (br && br->dirty) {
        br_conn_t *conn = br->dirty;
        br->dirty = conn->dnext;
        conn->dnext = NULL;
        conn->dirty = false;
        conn_flush(conn);
    }
}

void gw_bridge_close_all(gw_thread_t *t)
{
    gw_bridge_t *br = t->bridge;
    while (br && br->conns)
        conn_end(br->conns, UV_ECANCELED, false, NULL);
}

void gw_bridge_thread_free(gw_thread_t *t)
{
    gw_bridge_t *br = t->bridge;
    if (!br)
        return;
    free(br->rbuf);
    free(br);
    t->bridge = NULL;
}

void gw_bridge_metrics(gw_proxy_t *p, buf_t *out)
{
    (void)buf_append_str(out, "# TYPE drover_gateway_bridge_requests_total counter\n");
    for (int k = 0; k < GW_BRIDGE_N_OUTCOMES; k++) {
        uint64_t n = 0;
        for (int i = 0; i < p->n_threads; i++)
            n += atomic_load_explicit(&p->threads[i].m.bridged[k], memory_order_relaxed);
        (void)buf_printf(out, "drover_gateway_bridge_requests_total{outcome=\"%s\"} %llu\n",
                         gw_bridge_outcome_name(k), (unsigned long long)n);
    }
}
