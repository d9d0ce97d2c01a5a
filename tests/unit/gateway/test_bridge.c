/* The worker bridge over real sockets: a gateway (one proxy thread) in
 * front of fake invocation services, which are libuv servers in this
 * process speaking the invocation protocol with src/core/rpc.h. What a
 * fake service answers depends on the event and the request's path. The
 * client is plain blocking sockets. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/buf.h"
#include "core/rpc.h"
#include "gateway/bridge.h"
#include "gateway/proxy.h"
#include "gateway/routes.h"

#include <arpa/inet.h>
#include <errno.h>
#include <msgpack.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

/* ---- the fake invocation service --------------------------------------------- */

typedef struct fsvc {
    char name[8];
    uv_loop_t loop;
    uv_tcp_t srv;
    uv_async_t stop;
    pthread_t thr;
    int port;
    bool full;            /* answer every invocation with queue full */
    atomic_int accepts;   /* connections accepted */
    atomic_int invokes;   /* invocations received */
    atomic_int streams;   /* endless streams running */
    atomic_int max_ch;    /* highest channel id seen */
    atomic_bool ch_order; /* channel ids strictly increased on every connection */
} fsvc_t;

typedef struct fchan {
    uint64_t id;
    char event[64];
    buf_t chunk;
    bool used;
} fchan_t;

typedef struct fconn {
    uv_tcp_t tcp;
    fsvc_t *s;
    rpc_decoder_t dec;
    uint64_t last_ch;
    fchan_t ch[64];
    bool closed;
    int refs; /* the handle + streams running */
} fconn_t;

typedef struct fwrite {
    uv_write_t req;
    buf_t b;
} fwrite_t;

typedef struct fstream {
    uv_timer_t timer;
    fconn_t *fc;
    uint64_t ch;
    size_t left;
} fstream_t;

static void fconn_unref(fconn_t *fc)
{
    if (--fc->refs > 0)
        return;
    rpc_decoder_free(&fc->dec);
    for (size_t i = 0; i < 64; i++)
        buf_free(&fc->ch[i].chunk);
    free(fc);
}

static void fconn_on_close(uv_handle_t *h)
{
    fconn_unref(h->data);
}

static void fconn_close(fconn_t *fc)
{
    if (fc->closed)
        return;
    fc->closed = true;
    uv_close((uv_handle_t *)&fc->tcp, fconn_on_close);
}

static void fw_done(uv_write_t *req, int status)
{
    (void)status;
    fwrite_t *w = req->data;
    buf_free(&w->b);
    free(w);
}

static void fsend(fconn_t *fc, buf_t *b)
{
    if (fc->closed) {
        buf_free(b);
        return;
    }
    fwrite_t *w = calloc(1, sizeof(*w));
    w->b = *b;
    w->req.data = w;
    uv_buf_t ub = uv_buf_init(w->b.data, (unsigned)w->b.len);
    if (uv_write(&w->req, (uv_stream_t *)&fc->tcp, &ub, 1, fw_done) < 0) {
        buf_free(&w->b);
        free(w);
    }
}

static void fsend_write(fconn_t *fc, uint64_t ch, const void *p, size_t n)
{
    buf_t b = BUF_INIT(0);
    assert_int_equal(rpc_encode(&b, ch, RPC_WRITE, "b", p, n), 0);
    fsend(fc, &b);
}

static void fsend_close(fconn_t *fc, uint64_t ch)
{
    buf_t b = BUF_INIT(0);
    assert_int_equal(rpc_encode(&b, ch, RPC_CLOSE, ""), 0);
    fsend(fc, &b);
}

static void fsend_error(fconn_t *fc, uint64_t ch, unsigned cat, unsigned code, const char *msg)
{
    buf_t b = BUF_INIT(0);
    assert_int_equal(rpc_encode(&b, ch, RPC_ERROR, "[uu]s", cat, code, msg), 0);
    fsend(fc, &b);
}

/* The head chunk [code, [[name, value]...]] with n pairs from kv (name,
 * value, ...), values as bin or str. */
static void pack_head_as(buf_t *out, unsigned code, const char *const *kv, size_t n, bool bin)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_unsigned_int(&pk, code);
    msgpack_pack_array(&pk, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        const char *v = kv[2 * i + 1];
        msgpack_pack_array(&pk, 2);
        msgpack_pack_str_with_body(&pk, kv[2 * i], strlen(kv[2 * i]));
        if (bin)
            msgpack_pack_bin_with_body(&pk, v, strlen(v));
        else
            msgpack_pack_str_with_body(&pk, v, strlen(v));
    }
    buf_reset(out);
    buf_append(out, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
}

static void fsend_head(fconn_t *fc, uint64_t ch, unsigned code, const char *const *kv, size_t n)
{
    buf_t b = BUF_INIT(0);
    pack_head_as(&b, code, kv, n, false);
    fsend_write(fc, ch, b.data, b.len);
    buf_free(&b);
}

static void fstream_closed(uv_handle_t *h)
{
    fstream_t *st = h->data;
    atomic_fetch_sub(&st->fc->s->streams, 1);
    fconn_unref(st->fc);
    free(st);
}

/* Endless-ish stream: 64 KiB chunks while the socket takes them. */
static void fstream_tick(uv_timer_t *t)
{
    fstream_t *st = t->data;
    fconn_t *fc = st->fc;
    static char chunk[65536];
    memset(chunk, 'e', sizeof(chunk));
    while (!fc->closed && st->left > 0 &&
           uv_stream_get_write_queue_size((uv_stream_t *)&fc->tcp) < (1u << 20)) {
        fsend_write(fc, st->ch, chunk, sizeof(chunk));
        st->left -= sizeof(chunk) < st->left ? sizeof(chunk) : st->left;
    }
    if (fc->closed || st->left == 0) {
        if (!fc->closed)
            fsend_close(fc, st->ch);
        uv_timer_stop(t);
        uv_close((uv_handle_t *)t, fstream_closed);
    }
}

/* The request chunk [method, uri, version, headers, body] decoded. */
typedef struct freq {
    char method[16], uri[256], version[8];
    buf_t dump; /* "name: value\n" lines */
    const char *body;
    size_t body_len;
} freq_t;

static bool freq_parse(const buf_t *chunk, msgpack_unpacked *u, freq_t *r)
{
    size_t off = 0;
    if (msgpack_unpack_next(u, chunk->data, chunk->len, &off) != MSGPACK_UNPACK_SUCCESS)
        return false;
    msgpack_object *o = &u->data;
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 5)
        return false;
    msgpack_object *a = o->via.array.ptr;
    if (a[0].type != MSGPACK_OBJECT_STR || a[1].type != MSGPACK_OBJECT_STR ||
        a[2].type != MSGPACK_OBJECT_STR || a[3].type != MSGPACK_OBJECT_ARRAY ||
        a[4].type != MSGPACK_OBJECT_BIN)
        return false;
    snprintf(r->method, sizeof(r->method), "%.*s", (int)a[0].via.str.size, a[0].via.str.ptr);
    snprintf(r->uri, sizeof(r->uri), "%.*s", (int)a[1].via.str.size, a[1].via.str.ptr);
    snprintf(r->version, sizeof(r->version), "%.*s", (int)a[2].via.str.size, a[2].via.str.ptr);
    buf_init(&r->dump, 0);
    for (uint32_t i = 0; i < a[3].via.array.size; i++) {
        msgpack_object *p = &a[3].via.array.ptr[i];
        if (p->type != MSGPACK_OBJECT_ARRAY || p->via.array.size != 2 ||
            p->via.array.ptr[0].type != MSGPACK_OBJECT_STR ||
            p->via.array.ptr[1].type != MSGPACK_OBJECT_STR)
            return false;
        buf_printf(&r->dump, "%.*s: %.*s\n", (int)p->via.array.ptr[0].via.str.size,
                   p->via.array.ptr[0].via.str.ptr, (int)p->via.array.ptr[1].via.str.size,
                   p->via.array.ptr[1].via.str.ptr);
    }
    r->body = a[4].via.bin.ptr;
    r->body_len = a[4].via.bin.size;
    return true;
}

/* The request is in (the client closed its direction): answer it. */
static void fsvc_answer(fconn_t *fc, fchan_t *c)
{
    fsvc_t *s = fc->s;
    uint64_t ch = c->id;
    atomic_fetch_add(&s->invokes, 1);
    if (s->full) {
        fsend_error(fc, ch, 3, 11, "queue is full (100 waiting)");
        return;
    }
    if (strcmp(c->event, "other") == 0) {
        static const char *const kv[] = {"Content-Type", "text/plain"};
        fsend_head(fc, ch, 200, kv, 1);
        fsend_write(fc, ch, "event other\n", 12);
        fsend_close(fc, ch);
        return;
    }
    if (strcmp(c->event, "http") != 0) {
        fsend_error(fc, ch, 1, 38, "no handler for event");
        return;
    }
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    freq_t r = {0};
    if (!freq_parse(&c->chunk, &u, &r)) {
        fsend_error(fc, ch, 1, 22, "bad request chunk");
        goto out;
    }
    if (strncmp(r.uri, "/echo", 5) == 0) {
        static const char *const kv[] = {"Content-Type", "text/plain", "X-Worker", "yes",
                                         "Connection",   "x-hop",      "X-Hop",    "gone"};
        fsend_head(fc, ch, 201, kv, 4);
        buf_t b = BUF_INIT(0);
        buf_printf(&b, "%s %s %s %s\n%s\n", s->name, r.method, r.uri, r.version, r.dump.data);
        fsend_write(fc, ch, b.data, b.len);
        buf_free(&b);
        fsend_write(fc, ch, r.body, r.body_len);
        fsend_close(fc, ch);
    } else if (strcmp(r.uri, "/len") == 0) {
        static const char *const kv[] = {"Content-Length", "11"};
        fsend_head(fc, ch, 200, kv, 1);
        fsend_write(fc, ch, "hello", 5);
        fsend_write(fc, ch, " ", 1);
        fsend_write(fc, ch, "world", 5);
        fsend_close(fc, ch);
    } else if (strncmp(r.uri, "/big", 4) == 0) {
        fsend_head(fc, ch, 200, NULL, 0);
        static char chunk[65536];
        size_t total = (size_t)8 << 20;
        for (size_t off = 0; off < total; off += sizeof(chunk)) {
            for (size_t i = 0; i < sizeof(chunk); i++)
                chunk[i] = (char)('a' + (off + i) % 23);
            fsend_write(fc, ch, chunk, sizeof(chunk));
        }
        fsend_close(fc, ch);
    } else if (strcmp(r.uri, "/endless") == 0) {
        fsend_head(fc, ch, 200, NULL, 0);
        fstream_t *st = calloc(1, sizeof(*st));
        st->fc = fc;
        st->ch = ch;
        st->left = (size_t)16 << 20;
        fc->refs++;
        atomic_fetch_add(&s->streams, 1);
        uv_timer_init(&s->loop, &st->timer);
        st->timer.data = st;
        uv_timer_start(&st->timer, fstream_tick, 0, 2);
    } else if (strcmp(r.uri, "/timeout") == 0) {
        fsend_error(fc, ch, 3, 110, "request timed out after 5 ms");
    } else if (strcmp(r.uri, "/crash") == 0) {
        fsend_error(fc, ch, 4, 32, "worker died: exit 1");
    } else if (strcmp(r.uri, "/midcrash") == 0) {
        fsend_head(fc, ch, 200, NULL, 0);
        fsend_write(fc, ch, "partial", 7);
        fsend_error(fc, ch, 4, 32, "worker died: exit 1");
    } else if (strcmp(r.uri, "/nohandler") == 0) {
        fsend_error(fc, ch, 1, 38, "no handler for event http");
    } else if (strcmp(r.uri, "/badhead") == 0) {
        fsend_write(fc, ch, "\x92\xcd\x03\xe8\x90", 5); /* [1000, []] */
        fsend_close(fc, ch);
    } else if (strcmp(r.uri, "/nohead") == 0) {
        fsend_close(fc, ch);
    } else if (strcmp(r.uri, "/garbage") == 0) {
        buf_t b = BUF_INIT(0);
        buf_append(&b, "\xc1\xc1\xc1\xc1garbage", 11);
        fsend(fc, &b);
    } else if (strcmp(r.uri, "/hang") == 0) {
        /* never answers */
    } else {
        static const char *const kv[] = {"Content-Length", "0"};
        fsend_head(fc, ch, 404, kv, 1);
        fsend_close(fc, ch);
    }
out:
    buf_free(&r.dump);
    msgpack_unpacked_destroy(&u);
}

static fchan_t *fchan_find(fconn_t *fc, uint64_t id, bool add)
{
    for (size_t i = 0; i < 64; i++)
        if (fc->ch[i].used && fc->ch[i].id == id)
            return &fc->ch[i];
    if (!add)
        return NULL;
    for (size_t i = 0; i < 64; i++)
        if (!fc->ch[i].used) {
            fc->ch[i].used = true;
            fc->ch[i].id = id;
            fc->ch[i].event[0] = '\0';
            buf_init(&fc->ch[i].chunk, 0);
            return &fc->ch[i];
        }
    return NULL;
}

static void fconn_msg(fconn_t *fc, const rpc_msg_t *m)
{
    fsvc_t *s = fc->s;
    fchan_t *c = fchan_find(fc, m->channel, false);
    if (!c) {
        /* a new channel: enqueue [event] */
        if (m->channel <= fc->last_ch)
            atomic_store(&s->ch_order, false);
        fc->last_ch = m->channel;
        if ((int)m->channel > atomic_load(&s->max_ch))
            atomic_store(&s->max_ch, (int)m->channel);
        c = fchan_find(fc, m->channel, true);
        assert_non_null(c);
        const char *ev;
        size_t n;
        assert_int_equal(m->type, RPC_INVOKE);
        assert_int_equal(rpc_arg_str(m, 0, &ev, &n, NULL), 0);
        snprintf(c->event, sizeof(c->event), "%.*s", (int)n, ev);
        return;
    }
    if (m->type == RPC_WRITE) {
        const char *p;
        size_t n;
        assert_int_equal(rpc_arg_bytes(m, 0, &p, &n, NULL), 0);
        buf_append(&c->chunk, p, n);
    } else if (m->type == RPC_CLOSE) {
        fsvc_answer(fc, c);
        buf_free(&c->chunk);
        c->used = false;
    }
}

static void fconn_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)h;
    b->base = malloc(hint);
    b->len = hint;
}

static void fconn_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    fconn_t *fc = st->data;
    if (n < 0) {
        fconn_close(fc);
    } else if (n > 0) {
        rpc_decoder_feed(&fc->dec, b->base, (size_t)n);
        rpc_msg_t m;
        int rc;
        while (!fc->closed && (rc = rpc_decoder_next(&fc->dec, &m, NULL)) == 1)
            fconn_msg(fc, &m);
    }
    free(b->base);
}

static void fsvc_accept(uv_stream_t *srv, int status)
{
    fsvc_t *s = srv->data;
    if (status < 0)
        return;
    fconn_t *fc = calloc(1, sizeof(*fc));
    fc->s = s;
    fc->refs = 1;
    rpc_decoder_init(&fc->dec, RPC_MAX_MESSAGE_DEFAULT);
    uv_tcp_init(&s->loop, &fc->tcp);
    fc->tcp.data = fc;
    if (uv_accept(srv, (uv_stream_t *)&fc->tcp) < 0) {
        fconn_close(fc);
        return;
    }
    atomic_fetch_add(&s->accepts, 1);
    uv_read_start((uv_stream_t *)&fc->tcp, fconn_alloc, fconn_read);
}

static void fsvc_walk_close(uv_handle_t *h, void *arg)
{
    fsvc_t *s = arg;
    if (uv_is_closing(h))
        return;
    if (h == (uv_handle_t *)&s->srv || h == (uv_handle_t *)&s->stop)
        uv_close(h, NULL);
    else if (h->type == UV_TCP)
        fconn_close(h->data);
    else if (h->type == UV_TIMER)
        uv_close(h, fstream_closed);
}

static void fsvc_on_stop(uv_async_t *a)
{
    uv_walk(a->loop, fsvc_walk_close, a->data);
}

static void *fsvc_main(void *arg)
{
    fsvc_t *s = arg;
    uv_run(&s->loop, UV_RUN_DEFAULT);
    return NULL;
}

static fsvc_t *fsvc_start(const char *name, bool full)
{
    fsvc_t *s = calloc(1, sizeof(*s));
    snprintf(s->name, sizeof(s->name), "%s", name);
    s->full = full;
    atomic_store(&s->ch_order, true);
    uv_loop_init(&s->loop);
    uv_tcp_init(&s->loop, &s->srv);
    s->srv.data = s;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(uv_tcp_bind(&s->srv, (const struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&s->srv, 64, fsvc_accept), 0);
    struct sockaddr_in got;
    int len = sizeof(got);
    uv_tcp_getsockname(&s->srv, (struct sockaddr *)&got, &len);
    s->port = ntohs(got.sin_port);
    uv_async_init(&s->loop, &s->stop, fsvc_on_stop);
    s->stop.data = s;
    pthread_create(&s->thr, NULL, fsvc_main, s);
    return s;
}

static void fsvc_stop(fsvc_t *s)
{
    uv_async_send(&s->stop);
    pthread_join(s->thr, NULL);
    uv_loop_close(&s->loop);
    free(s);
}

/* ---- the client ---------------------------------------------------------------- */

static void msleep(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int cli_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
}

static void send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        assert_true(w > 0);
        c += w;
        n -= (size_t)w;
    }
}

typedef struct resp {
    int status;
    char head[8192];
    buf_t body;
    bool chunked, has_cl, closed;
} resp_t;

typedef struct rd {
    int fd;
    char buf[1 << 16];
    size_t have, off;
} rd_t;

static bool rd_fill(rd_t *r)
{
    if (r->off == r->have)
        r->off = r->have = 0;
    if (r->have == sizeof(r->buf)) {
        memmove(r->buf, r->buf + r->off, r->have - r->off);
        r->have -= r->off;
        r->off = 0;
    }
    ssize_t n = recv(r->fd, r->buf + r->have, sizeof(r->buf) - r->have, 0);
    if (n <= 0)
        return false;
    r->have += (size_t)n;
    return true;
}

static bool rd_line(rd_t *r, char *out, size_t cap)
{
    for (;;) {
        char *e = memmem(r->buf + r->off, r->have - r->off, "\r\n", 2);
        if (e) {
            size_t n = (size_t)(e - (r->buf + r->off));
            if (n >= cap)
                return false;
            memcpy(out, r->buf + r->off, n);
            out[n] = '\0';
            r->off += n + 2;
            return true;
        }
        if (!rd_fill(r))
            return false;
    }
}

static bool rd_bytes(rd_t *r, buf_t *out, size_t n)
{
    while (n) {
        if (r->off == r->have && !rd_fill(r))
            return false;
        size_t k = r->have - r->off < n ? r->have - r->off : n;
        buf_append(out, r->buf + r->off, k);
        r->off += k;
        n -= k;
    }
    return true;
}

static const char *head_get(const resp_t *r, const char *name)
{
    static char val[512];
    size_t nl = strlen(name);
    for (const char *p = r->head; (p = strstr(p, "\n")) != NULL;) {
        p++;
        if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ')
                v++;
            size_t n = strcspn(v, "\r\n");
            snprintf(val, sizeof(val), "%.*s", (int)n, v);
            return val;
        }
    }
    return NULL;
}

/* One response from r (the head, then the body by its framing). */
static bool read_resp(rd_t *rd, resp_t *r, bool head_req)
{
    buf_free(&r->body);
    buf_init(&r->body, (size_t)64 << 20);
    r->head[0] = '\0';
    char line[4096];
    if (!rd_line(rd, line, sizeof(line)))
        return false;
    if (sscanf(line, "HTTP/1.%*d %d", &r->status) != 1)
        return false;
    snprintf(r->head, sizeof(r->head), "%s\r\n", line);
    for (;;) {
        if (!rd_line(rd, line, sizeof(line)))
            return false;
        if (!line[0])
            break;
        size_t hl = strlen(r->head);
        snprintf(r->head + hl, sizeof(r->head) - hl, "%s\r\n", line);
    }
    const char *te = head_get(r, "Transfer-Encoding");
    const char *cl = head_get(r, "Content-Length");
    r->chunked = te && strcasecmp(te, "chunked") == 0;
    r->has_cl = cl != NULL;
    if (head_req || r->status == 204 || r->status == 304)
        return true;
    if (r->chunked) {
        for (;;) {
            if (!rd_line(rd, line, sizeof(line)))
                return false;
            size_t sz = strtoul(line, NULL, 16);
            if (sz == 0) {
                rd_line(rd, line, sizeof(line));
                return true;
            }
            if (!rd_bytes(rd, &r->body, sz) || !rd_line(rd, line, sizeof(line)))
                return false;
        }
    }
    if (cl)
        return rd_bytes(rd, &r->body, strtoul(cl, NULL, 10));
    /* close-delimited */
    for (;;) {
        if (rd->off < rd->have) {
            buf_append(&r->body, rd->buf + rd->off, rd->have - rd->off);
            rd->off = rd->have;
        }
        if (!rd_fill(rd)) {
            r->closed = true;
            return true;
        }
    }
}

static int request(int port, const char *raw, resp_t *r)
{
    rd_t *rd = calloc(1, sizeof(*rd));
    rd->fd = cli_connect(port);
    send_all(rd->fd, raw, strlen(raw));
    bool ok = read_resp(rd, r, strncmp(raw, "HEAD", 4) == 0);
    close(rd->fd);
    free(rd);
    return ok ? r->status : -1;
}

static bool body_has(const resp_t *r, const char *s)
{
    return r->body.len && memmem(r->body.data, r->body.len, s, strlen(s)) != NULL;
}

/* ---- fixture -------------------------------------------------------------------- */

typedef struct fx {
    gw_proxy_t *p;
    int port;
    fsvc_t *s1, *s2, *s3, *s4; /* s1: normal; s2: normal; s3, s4: always queue full */
    gw_snapshot_t *snap;
} fx_t;

static void add_pool(gw_builder_t *bl, const char *name, bool worker, const int *ports, size_t n)
{
    gw_endpoint_in_t eps[8];
    for (size_t i = 0; i < n; i++)
        eps[i] = (gw_endpoint_in_t){"127.0.0.1", ports[i]};
    gw_builder_pool(bl, name, eps, n);
    if (worker)
        gw_builder_pool_worker(bl, name);
}

static void add_worker_route(gw_builder_t *bl, const char *app, const char *host, const char *event,
                             size_t max_body)
{
    static const char *const add[] = {"X-Frame-Options: DENY", "X-Worker: never-overrides"};
    gw_route_in_t r = {.kind = GW_ROUTE_WORKER,
                       .app = app,
                       .host = host,
                       .target = app,
                       .event = event,
                       .max_body = max_body,
                       .add_headers = add,
                       .n_add_headers = 2};
    assert_int_equal(gw_builder_route(bl, &r, NULL), 0);
}

static int dead_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, (struct sockaddr *)&a, sizeof(a));
    socklen_t l = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &l);
    close(fd);
    return ntohs(a.sin_port);
}

static gw_snapshot_t *build_snap(fx_t *f)
{
    gw_builder_t *bl = gw_builder_new(NULL);
    add_pool(bl, "/prod/echo", true, &f->s1->port, 1);
    int pair[2] = {f->s3->port, f->s2->port};
    add_pool(bl, "/prod/pair", true, pair, 2);
    int full[2] = {f->s3->port, f->s4->port};
    add_pool(bl, "/prod/full", true, full, 2);
    int dead[2] = {dead_port(), f->s2->port};
    add_pool(bl, "/prod/dead", true, dead, 2);
    add_pool(bl, "/prod/web", false, &f->s1->port, 1);
    add_pool(bl, "/prod/empty", true, NULL, 0);
    add_worker_route(bl, "/prod/echo", "echo.test", NULL, 0);
    add_worker_route(bl, "/prod/echo", "other.test", "other", 0);
    add_worker_route(bl, "/prod/echo", "nope.test", "nope", 0);
    add_worker_route(bl, "/prod/echo", "small.test", "http", 100);
    add_worker_route(bl, "/prod/pair", "pair.test", NULL, 0);
    add_worker_route(bl, "/prod/full", "full.test", NULL, 0);
    add_worker_route(bl, "/prod/dead", "dead.test", NULL, 0);
    add_worker_route(bl, "/prod/empty", "empty.test", NULL, 0);
    return gw_builder_finish(bl, 1);
}

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));
    f->s1 = fsvc_start("S1", false);
    f->s2 = fsvc_start("S2", false);
    f->s3 = fsvc_start("S3", true);
    f->s4 = fsvc_start("S4", true);
    gw_proxy_opts_t o = {.http_addr = "127.0.0.1:0",
                         .threads = 1,
                         .header_timeout_ms = 1000,
                         .backend_timeout_ms = 700,
                         .connect_timeout_ms = 500};
    err_t err;
    if (gw_proxy_start(&o, &f->p, &err) < 0)
        fail_msg("start: %s", err.msg);
    f->port = gw_proxy_http_port(f->p);
    f->snap = build_snap(f);
    gw_proxy_set_snapshot(f->p, f->snap);
    msleep(20);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    gw_proxy_free(f->p);
    gw_snapshot_unref(f->snap);
    fsvc_stop(f->s1);
    fsvc_stop(f->s2);
    fsvc_stop(f->s3);
    fsvc_stop(f->s4);
    free(f);
    return 0;
}

static uint64_t metric(fx_t *f, const char *outcome)
{
    buf_t m = BUF_INIT(0);
    gw_proxy_metrics(f->p, &m);
    char key[128];
    snprintf(key, sizeof(key), "drover_gateway_bridge_requests_total{outcome=\"%s\"} ", outcome);
    const char *p = strstr(m.data, key);
    uint64_t v = p ? strtoull(p + strlen(key), NULL, 10) : UINT64_MAX;
    buf_free(&m);
    return v;
}

/* The proxy thread counts a request after its answer is written: wait
 * for it. */
static uint64_t metric_wait(fx_t *f, const char *outcome, uint64_t want)
{
    uint64_t v = metric(f, outcome);
    for (int i = 0; i < 200 && v < want; i++) {
        msleep(5);
        v = metric(f, outcome);
    }
    return v;
}

/* ---- tests ---------------------------------------------------------------------- */

static void test_get_chunked(void **state)
{
    fx_t *f = *state;
    resp_t r = {0};
    assert_int_equal(request(f->port,
                             "GET /echo?x=1 HTTP/1.1\r\nHost: echo.test\r\nX-Custom: v\r\n"
                             "Connection: close, X-Secret\r\nX-Secret: s\r\nTE: trailers\r\n"
                             "X-Forwarded-For: 10.1.1.1\r\nX-Request-Id: rq-1\r\n\r\n",
                             &r),
                     201);
    /* no Content-Length from the worker: chunked to an HTTP/1.1 client */
    assert_true(r.chunked);
    assert_false(r.has_cl);
    assert_true(body_has(&r, "S1 GET /echo?x=1 1.1\n"));
    assert_true(body_has(&r, "X-Custom: v\n"));
    assert_true(body_has(&r, "Host: echo.test\n"));
    assert_true(body_has(&r, "X-Forwarded-For: 10.1.1.1, 127.0.0.1\n"));
    assert_true(body_has(&r, "X-Forwarded-Proto: http\n"));
    assert_true(body_has(&r, "X-Forwarded-Host: echo.test\n"));
    assert_true(body_has(&r, "X-Request-Id: rq-1\n"));
    assert_false(body_has(&r, "X-Secret"));
    assert_false(body_has(&r, "TE:"));
    assert_false(body_has(&r, "Connection"));
    assert_false(body_has(&r, "Content-Length")); /* no body, none added */
    /* response: the worker's headers, hop-by-hop ones gone, route headers added */
    assert_string_equal(head_get(&r, "X-Worker"), "yes");
    assert_string_equal(head_get(&r, "X-Frame-Options"), "DENY");
    assert_null(head_get(&r, "X-Hop"));
    assert_string_equal(head_get(&r, "Connection"), "close");
    buf_free(&r.body);
}

static void test_post_body(void **state)
{
    fx_t *f = *state;
    resp_t r = {0};
    /* a body with a NUL in it, sent by hand */
    rd_t *rd = calloc(1, sizeof(*rd));
    rd->fd = cli_connect(f->port);
    static const char req[] = "POST /echo HTTP/1.1\r\nHost: echo.test\r\nContent-Length: 11\r\n"
                              "\r\nhello\0world";
    send_all(rd->fd, req, sizeof(req) - 1);
    assert_true(read_resp(rd, &r, false));
    assert_int_equal(r.status, 201);
    assert_true(body_has(&r, "S1 POST /echo 1.1\n"));
    assert_true(body_has(&r, "Content-Length: 11\n"));
    assert_true(r.body.len >= 11 && memcmp(r.body.data + r.body.len - 11, "hello\0world", 11) == 0);
    /* a chunked request body arrives whole, with its length */
    static const char chunked[] =
        "PUT /echo HTTP/1.1\r\nHost: echo.test\r\n"
        "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n";
    send_all(rd->fd, chunked, sizeof(chunked) - 1);
    assert_true(read_resp(rd, &r, false));
    assert_int_equal(r.status, 201);
    assert_true(body_has(&r, "Content-Length: 7\n"));
    assert_false(body_has(&r, "Transfer-Encoding"));
    assert_true(body_has(&r, "\nabcdefg"));
    /* Expect: 100-continue is answered by the gateway */
    static const char expect[] = "POST /echo HTTP/1.1\r\nHost: echo.test\r\nContent-Length: 2\r\n"
                                 "Expect: 100-continue\r\n\r\n";
    send_all(rd->fd, expect, sizeof(expect) - 1);
    char line[256];
    assert_true(rd_line(rd, line, sizeof(line)));
    assert_string_equal(line, "HTTP/1.1 100 Continue");
    assert_true(rd_line(rd, line, sizeof(line)));
    send_all(rd->fd, "ok", 2);
    assert_true(read_resp(rd, &r, false));
    assert_int_equal(r.status, 201);
    assert_true(body_has(&r, "\nok"));
    close(rd->fd);
    free(rd);
    buf_free(&r.body);
}

static void test_content_length_and_keepalive(void **state)
{
    fx_t *f = *state;
    resp_t r = {0};
    rd_t *rd = calloc(1, sizeof(*rd));
    rd->fd = cli_connect(f->port);
    /* three pipelined requests on one connection, answered in order */
    static const char reqs[] = "GET /len HTTP/1.1\r\nHost: echo.test\r\n\r\n"
                               "HEAD /len HTTP/1.1\r\nHost: echo.test\r\n\r\n"
                               "GET /echo HTTP/1.1\r\nHost: echo.test\r\n\r\n";
    send_all(rd->fd, reqs, sizeof(reqs) - 1);
    assert_true(read_resp(rd, &r, false));
    assert_int_equal(r.status, 200);
    assert_true(r.has_cl);
    assert_false(r.chunked);
    assert_string_equal(head_get(&r, "Content-Length"), "11");
    assert_int_equal(r.body.len, 11);
    assert_memory_equal(r.body.data, "hello world", 11);
    assert_true(read_resp(rd, &r, true));
    assert_int_equal(r.status, 200);
    assert_string_equal(head_get(&r, "Content-Length"), "11");
    assert_true(read_resp(rd, &r, false));
    assert_int_equal(r.status, 201);
    assert_true(body_has(&r, "S1 GET /echo 1.1"));
    close(rd->fd);
    free(rd);
    /* HTTP/1.0 without a length: the body ends with the connection */
    assert_int_equal(request(f->port, "GET /echo HTTP/1.0\r\nHost: echo.test\r\n\r\n", &r), 201);
    assert_false(r.chunked);
    assert_true(r.closed);
    assert_true(body_has(&r, "S1 GET /echo 1.0"));
    buf_free(&r.body);
}

static void test_large_stream(void **state)
{
    fx_t *f = *state;
    resp_t r = {0};
    rd_t *rd = calloc(1, sizeof(*rd));
    /* a small receive buffer, so the gateway cannot hand much over */
    rd->fd = socket(AF_INET, SOCK_STREAM, 0);
    int small = 16384;
    setsockopt(rd->fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(rd->fd, (struct sockaddr *)&a, sizeof(a)), 0);
    static const char req[] = "GET /big HTTP/1.1\r\nHost: echo.test\r\n\r\n";
    send_all(rd->fd, req, sizeof(req) - 1);
    /* not reading for a while: the gateway holds a bounded amount and
     * stops reading that connection; another request meanwhile gets a
     * connection of its own and is answered */
    msleep(250);
    resp_t r2 = {0};
    assert_int_equal(request(f->port, "GET /echo HTTP/1.1\r\nHost: echo.test\r\n\r\n", &r2), 201);
    assert_int_equal(atomic_load(&f->s1->accepts), 2);
    buf_free(&r2.body);
    assert_true(read_resp(rd, &r, false));
    assert_int_equal(r.status, 200);
    assert_true(r.chunked);
    assert_int_equal(r.body.len, (size_t)8 << 20);
    for (size_t i = 0; i < r.body.len; i += 4093)
        assert_int_equal(r.body.data[i], (char)('a' + i % 23));
    close(rd->fd);
    free(rd);
    buf_free(&r.body);
}

static void test_queue_full_retry(void **state)
{
    fx_t *f = *state;
    resp_t r = {0};
    uint64_t full0 = metric(f, "queue_full");
    int s3 = atomic_load(&f->s3->invokes);
    /* S3 is full, S2 is not: every request ends on S2 */
    for (int i = 0; i < 4; i++) {
        assert_int_equal(request(f->port, "GET /echo HTTP/1.1\r\nHost: pair.test\r\n\r\n", &r),
                         201);
        assert_true(body_has(&r, "S2 GET /echo"));
    }
    assert_true(atomic_load(&f->s3->invokes) > s3); /* round robin tried S3 and retried */
    /* both full: one retry, then 503 */
    int s3b = atomic_load(&f->s3->invokes), s4b = atomic_load(&f->s4->invokes);
    assert_int_equal(request(f->port, "GET /echo HTTP/1.1\r\nHost: full.test\r\n\r\n", &r), 503);
    assert_true(body_has(&r, "queue is full"));
    assert_int_equal(atomic_load(&f->s3->invokes) + atomic_load(&f->s4->invokes), s3b + s4b + 2);
    assert_int_equal(metric_wait(f, "queue_full", full0 + 1), full0 + 1);
    buf_free(&r.body);
}

static void test_error_mapping(void **state)
{
    fx_t *f = *state;
    resp_t r = {0};
    assert_int_equal(request(f->port, "GET /timeout HTTP/1.1\r\nHost: echo.test\r\n\r\n", &r), 504);
    assert_true(body_has(&r, "timed out"));
    assert_int_equal(request(f->port, "GET /crash HTTP/1.1\r\nHost: echo.test\r\n\r\n", &r), 500);
    assert_true(body_has(&r, "worker died"));
    assert_int_equal(request(f->port, "GET /nohandler HTTP/1.1\r\nHost: echo.test\r\n\r\n", &r),
                     404);
    /* a route naming an event the worker has no handler for */
    assert_int_equal(request(f->port, "GET / HTTP/1.1\r\nHost: nope.test\r\n\r\n", &r), 404);
    /* the worker's own 404 passes through */
    assert_int_equal(request(f->port, "GET /nothing HTTP/1.1\r\nHost: echo.test\r\n\r\n", &r), 404);
    assert_int_equal(request(f->port, "GET /badhead HTTP/1.1\r\nHost: echo.test\r\n\r\n", &r), 502);
    assert_true(body_has(&r, "outside 200..599"));
    assert_int_equal(request(f->port, "GET /nohead HTTP/1.1\r\nHost: echo.test\r\n\r\n", &r), 502);
    assert_int_equal(request(f->port, "GET / HTTP/1.1\r\nHost: empty.test\r\n\r\n", &r), 503);
    /* a node that refuses connections: retried on the other one */
    for (int i = 0; i < 3; i++)
        assert_int_equal(request(f->port, "GET /echo HTTP/1.1\r\nHost: dead.test\r\n\r\n", &r),
                         201);
    /* the gateway's own timeout */
    assert_int_equal(request(f->port, "GET /hang HTTP/1.1\r\nHost: echo.test\r\n\r\n", &r), 504);
    /* the body limit of the route */
    assert_int_equal(
        request(f->port, "POST /echo HTTP/1.1\r\nHost: small.test\r\nContent-Length: 101\r\n\r\n",
                &r),
        413);
    /* an error after the head cuts the connection: the chunked body never ends */
    rd_t *rd = calloc(1, sizeof(*rd));
    rd->fd = cli_connect(f->port);
    static const char mid[] = "GET /midcrash HTTP/1.1\r\nHost: echo.test\r\n\r\n";
    send_all(rd->fd, mid, sizeof(mid) - 1);
    assert_false(read_resp(rd, &r, false));
    assert_int_equal(r.status, 200);
    close(rd->fd);
    free(rd);
    buf_free(&r.body);
}

static void test_headers_routing(void **state)
{
    fx_t *f = *state;
    resp_t r = {0};
    /* the path form /<app>/<event>/<rest> when no route matches: the
     * worker sees /<rest> with the query */
    assert_int_equal(
        request(f->port, "GET /prod/echo/http/echo?q=1 HTTP/1.1\r\nHost: unrouted.test\r\n\r\n",
                &r),
        201);
    assert_true(body_has(&r, "S1 GET /echo?q=1"));
    assert_int_equal(
        request(f->port, "GET /prod/echo/other HTTP/1.1\r\nHost: unrouted.test\r\n\r\n", &r),
        200);
    assert_true(body_has(&r, "event other"));
    /* no event after the app, a service, an unknown app: the usual 404 */
    assert_int_equal(
        request(f->port, "GET /prod/echo HTTP/1.1\r\nHost: unrouted.test\r\n\r\n", &r), 404);
    assert_true(body_has(&r, "no route for host"));
    assert_int_equal(
        request(f->port, "GET /prod/web/http/x HTTP/1.1\r\nHost: unrouted.test\r\n\r\n", &r),
        404);
    assert_int_equal(
        request(f->port, "GET /prod/nope/http HTTP/1.1\r\nHost: unrouted.test\r\n\r\n", &r),
        404);
    assert_int_equal(request(f->port,
                             "GET /echo HTTP/1.1\r\nHost: unrouted.test\r\n"
                             "X-Drover-App: /prod/echo\r\n\r\n",
                             &r),
                     201);
    assert_true(body_has(&r, "S1 GET /echo"));
    assert_null(head_get(&r, "X-Frame-Options")); /* no route, no route headers */
    assert_int_equal(request(f->port,
                             "GET /x HTTP/1.1\r\nHost: echo.test\r\nX-Drover-App: /prod/echo\r\n"
                             "X-Drover-Event: other\r\n\r\n",
                             &r),
                     200);
    assert_true(body_has(&r, "event other"));
    assert_int_equal(request(f->port,
                             "GET /x HTTP/1.1\r\nHost: echo.test\r\nX-Drover-App: /prod/echo\r\n"
                             "X-Drover-Event: missing\r\n\r\n",
                             &r),
                     404);
    /* a route may name its event too */
    assert_int_equal(request(f->port, "GET /x HTTP/1.1\r\nHost: other.test\r\n\r\n", &r), 200);
    assert_true(body_has(&r, "event other"));
    /* only worker apps: not a service, not an unknown name */
    assert_int_equal(
        request(f->port, "GET /x HTTP/1.1\r\nHost: a.test\r\nX-Drover-App: /prod/web\r\n\r\n", &r),
        404);
    assert_int_equal(
        request(f->port, "GET /x HTTP/1.1\r\nHost: a.test\r\nX-Drover-App: /prod/nope\r\n\r\n", &r),
        404);
    assert_true(body_has(&r, "no worker app /prod/nope"));
    assert_int_equal(request(f->port,
                             "GET /x HTTP/1.1\r\nHost: a.test\r\nX-Drover-App: /prod/echo\r\n"
                             "X-Drover-Event: a b\r\n\r\n",
                             &r),
                     400);
    buf_free(&r.body);
}

static void test_client_disconnect(void **state)
{
    fx_t *f = *state;
    resp_t r = {0};
    /* warm a connection, so the stream shares it with what follows */
    assert_int_equal(request(f->port, "GET /echo HTTP/1.1\r\nHost: echo.test\r\n\r\n", &r), 201);
    int accepts = atomic_load(&f->s1->accepts);
    uint64_t aborted = metric(f, "aborted");
    int fd = cli_connect(f->port);
    static const char req[] = "GET /endless HTTP/1.1\r\nHost: echo.test\r\n\r\n";
    send_all(fd, req, sizeof(req) - 1);
    char buf[65536];
    size_t got = 0;
    while (got < 200000) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        assert_true(n > 0);
        got += (size_t)n;
    }
    assert_true(atomic_load(&f->s1->streams) == 1);
    close(fd);
    /* the stream goes on for its abandoned channel; others are served on
     * the same connection meanwhile */
    for (int i = 0; i < 3; i++)
        assert_int_equal(request(f->port, "GET /echo HTTP/1.1\r\nHost: echo.test\r\n\r\n", &r),
                         201);
    for (int i = 0; i < 500 && atomic_load(&f->s1->streams) > 0; i++)
        msleep(10);
    assert_int_equal(atomic_load(&f->s1->streams), 0);
    assert_int_equal(request(f->port, "GET /echo HTTP/1.1\r\nHost: echo.test\r\n\r\n", &r), 201);
    /* Usually the same connection; on a loaded machine the abandoned
     * stream may have paused it (backpressure) before the disconnect was
     * seen, and one more connection is then fair. Never one per request. */
    assert_true(atomic_load(&f->s1->accepts) <= accepts + 1);
    assert_int_equal(metric_wait(f, "aborted", aborted + 1), aborted + 1);
    assert_true(atomic_load(&f->s1->ch_order));
    buf_free(&r.body);
}

static void test_garbage(void **state)
{
    fx_t *f = *state;
    resp_t r = {0};
    int accepts = atomic_load(&f->s1->accepts);
    assert_int_equal(request(f->port, "GET /garbage HTTP/1.1\r\nHost: echo.test\r\n\r\n", &r), 502);
    assert_true(body_has(&r, "broke the protocol"));
    /* a new connection for the next one, and the gateway is fine */
    assert_int_equal(request(f->port, "GET /echo HTTP/1.1\r\nHost: echo.test\r\n\r\n", &r), 201);
    assert_int_equal(atomic_load(&f->s1->accepts), accepts + 2);
    assert_int_equal(metric_wait(f, "bad_gateway", 1), 1);
    assert_int_equal(metric_wait(f, "ok", 1), 1);
    buf_free(&r.body);
}

/* ---- pure parts ------------------------------------------------------------------ */

static void pack_head(buf_t *out, unsigned code, const char *const *kv, size_t n)
{
    pack_head_as(out, code, kv, n, true);
}

static void test_head_build(void **state)
{
    (void)state;
    buf_t in = BUF_INIT(0), out = BUF_INIT(0);
    gw_bridge_head_t h;
    err_t err;
    gw_bridge_head_opts_t o = {.http_minor = 1, .keep_alive = true};
    static const char *const kv[] = {"Content-Type", "text/html",  "Transfer-Encoding",
                                     "gzip",         "Keep-Alive", "5"};
    pack_head(&in, 200, kv, 3);
    assert_int_equal(gw_bridge_head_build(in.data, in.len, &o, &out, &h, &err), 0);
    assert_string_equal(out.data, "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
                                  "Transfer-Encoding: chunked\r\n\r\n");
    assert_true(h.chunked);
    assert_false(h.close);
    /* HTTP/1.0 keep-alive with a length; the route's headers when absent */
    static const char *const kv2[] = {"Content-Length", "5", "content-length", "5"};
    static const char *const add[] = {"X-Frame-Options: DENY", "Content-Length: 9",
                                      "Strict-Transport-Security: max-age=1"};
    gw_bridge_head_opts_t o2 = {
        .http_minor = 0, .keep_alive = true, .add_headers = add, .n_add_headers = 3};
    pack_head(&in, 404, kv2, 2);
    buf_reset(&out);
    assert_int_equal(gw_bridge_head_build(in.data, in.len, &o2, &out, &h, &err), 0);
    assert_string_equal(out.data, "HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n"
                                  "Connection: keep-alive\r\nX-Frame-Options: DENY\r\n\r\n");
    assert_true(h.has_length);
    assert_int_equal(h.length, 5);
    /* 204: no body, no length; draining closes; HSTS over HTTPS */
    gw_bridge_head_opts_t o3 = {.http_minor = 1,
                                .keep_alive = true,
                                .draining = true,
                                .hsts = "Strict-Transport-Security: max-age=9"};
    pack_head(&in, 204, kv2, 1);
    buf_reset(&out);
    assert_int_equal(gw_bridge_head_build(in.data, in.len, &o3, &out, &h, &err), 0);
    assert_string_equal(out.data, "HTTP/1.1 204 No Content\r\nConnection: close\r\n"
                                  "Strict-Transport-Security: max-age=9\r\n\r\n");
    assert_true(h.nobody);
    /* refused */
    static const char *const bad1[] = {"Bad Name", "x"};
    static const char *const bad2[] = {"X", "a\r\nInjected: 1"};
    static const char *const bad3[] = {"Content-Length", "5", "Content-Length", "6"};
    static const char *const bad4[] = {"Content-Length", "-1"};
    const char *const *bads[] = {bad1, bad2, bad3, bad4};
    size_t nb[] = {1, 1, 2, 1};
    for (size_t i = 0; i < 4; i++) {
        pack_head(&in, 200, bads[i], nb[i]);
        buf_reset(&out);
        assert_int_equal(gw_bridge_head_build(in.data, in.len, &o, &out, &h, &err), -EPROTO);
        assert_int_equal(out.len, 0);
    }
    pack_head(&in, 101, NULL, 0);
    assert_int_equal(gw_bridge_head_build(in.data, in.len, &o, &out, &h, &err), -EPROTO);
    assert_int_equal(gw_bridge_head_build("\x92\xcc", 2, &o, &out, &h, &err), -EPROTO);
    assert_int_equal(gw_bridge_head_build("\xdd\xff\xff\xff\xff", 5, &o, &out, &h, &err), -EPROTO);
    /* [200, <2^32 headers claimed>] costs nothing */
    assert_int_equal(
        gw_bridge_head_build("\x92\xcc\xc8\xdd\xff\xff\xff\xff", 8, &o, &out, &h, &err), -EPROTO);
    buf_free(&in);
    buf_free(&out);
}

static void test_error_status(void **state)
{
    (void)state;
    bool retry;
    assert_int_equal(gw_bridge_error_status(3, 11, &retry), 503);
    assert_true(retry);
    assert_int_equal(gw_bridge_error_status(3, 108, &retry), 503);
    assert_true(retry);
    assert_int_equal(gw_bridge_error_status(3, 110, &retry), 504);
    assert_false(retry);
    assert_int_equal(gw_bridge_error_status(3, 5, &retry), 503);
    assert_false(retry);
    assert_int_equal(gw_bridge_error_status(4, 32, &retry), 500);
    assert_int_equal(gw_bridge_error_status(5, 1234, &retry), 500);
    assert_int_equal(gw_bridge_error_status(1, 38, &retry), 404);
    assert_int_equal(gw_bridge_error_status(2, 2, &retry), 404);
    assert_int_equal(gw_bridge_error_status(1, 22, &retry), 502);
    assert_int_equal(gw_bridge_error_status(9, 1, &retry), 502);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_head_build),
        cmocka_unit_test(test_error_status),
        cmocka_unit_test_setup_teardown(test_get_chunked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_post_body, setup, teardown),
        cmocka_unit_test_setup_teardown(test_content_length_and_keepalive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_large_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_full_retry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_mapping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_headers_routing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_disconnect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
