/* gateway/upstream: connections to backends and the per-thread keep-alive
 * pools that hold them between requests.
 *
 * A pool is per thread and per backend (keyed by the backend pointer,
 * which the pool entry references so it cannot be reused for another
 * backend while the entry exists), LIFO so the warmest connection is used
 * first. Idle connections keep reading: a backend that closes one (idle
 * timeout, restart) is noticed at once and the connection dropped, instead
 * of failing the next request sent on it. When a snapshot swap removes a
 * backend, gw_pool_sweep closes its idle connections. */
#include "gateway/proxy_internal.h"

#include "core/alloc.h"
#include "core/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static size_t pool_bucket(const gw_backend_t *b)
{
    uintptr_t x = (uintptr_t)b;
    x ^= x >> 17;
    x *= 0x9e3779b97f4a7c15ull;
    return (size_t)(x >> 56) % GW_POOL_BUCKETS;
}

static gw_poolent_t *pool_find(gw_thread_t *t, const gw_backend_t *b, bool add)
{
    size_t i = pool_bucket(b);
    for (gw_poolent_t *e = t->pool[i]; e; e = e->next)
        if (e->b == b)
            return e;
    if (!add)
        return NULL;
    gw_poolent_t *e = xcalloc(1, sizeof(*e));
    e->b = (gw_backend_t *)b;
    gw_backend_ref(e->b);
    e->next = t->pool[i];
    t->pool[i] = e;
    return e;
}

static void pool_unlink(gw_upstream_t *u)
{
    gw_poolent_t *e = pool_find(u->t, u->b, false);
    if (!e)
        return;
    for (gw_upstream_t **pp = &e->idle; *pp; pp = &(*pp)->pnext) {
        if (*pp == u) {
            *pp = u->pnext;
            e->n_idle--;
            break;
        }
    }
    u->pnext = NULL;
    u->idle = false;
}

static void up_maybe_free(gw_upstream_t *u)
{
    if (!u->closed || !u->handle_closed || u->in_locks > 0 || u->slot.busy || u->wpending)
        return;
    gw_backend_unref(u->b);
    free(u->in);
    free(u->hs);
    free(u);
}

void gw_up_handle_closed(gw_upstream_t *u)
{
    u->handle_closed = true;
    up_maybe_free(u);
}

static void up_on_close(uv_handle_t *h)
{
    gw_up_handle_closed(h->data);
}

void gw_up_close(gw_upstream_t *u)
{
    if (u->closed)
        return;
    u->closed = true;
    if (u->idle)
        pool_unlink(u);
    u->c = NULL;
    gw_thread_t *t = u->t;
    if (t->detached) {
        gw_wslot_t **pp = &t->dq_head, *prev = NULL, *cancel = NULL;
        while (*pp) {
            gw_wslot_t *s = *pp;
            if (s->dir == GW_SLOT_TO_UP && s->owner == u) {
                *pp = s->dnext;
                if (t->dq_tail == s)
                    t->dq_tail = prev;
                s->dnext = cancel;
                cancel = s;
            } else {
                prev = s;
                pp = &s->dnext;
            }
        }
        while (cancel) {
            gw_wslot_t *s = cancel;
            cancel = s->dnext;
            gw_slot_complete(s, UV_ECANCELED);
        }
        /* freed from gw_detached_run, like a close callback: callers up
         * the stack may still look at u */
        u->pnext = t->dead_ups;
        t->dead_ups = u;
        return;
    }
    if (u->reading)
        uv_read_stop((uv_stream_t *)&u->tcp);
    u->reading = false;
    uv_close((uv_handle_t *)&u->tcp, up_on_close);
}

/* A tunnel's client ended its direction: the backend must see that end
 * (it may be what makes it answer or finish) while we keep reading it. */
void gw_up_shut_write(gw_upstream_t *u)
{
    if (u->closed || u->wr_shut || !u->connected)
        return;
    u->wr_shut = true;
    if (u->t->detached)
        return;
    /* queued after pending writes; a failure shows on the next read or
     * write, so it needs no callback */
    (void)uv_shutdown(&u->shut, (uv_stream_t *)&u->tcp, NULL);
}

static void up_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    gw_upstream_t *u = h->data;
    b->base = u->in + u->in_len;
    b->len = GW_UP_IN_BYTES - u->in_len;
}

/* Bytes (or EOF) from the backend: a pooled idle connection has nothing to
 * say, so anything there means it is unusable. */
static void up_deliver(gw_upstream_t *u, ssize_t n)
{
    if (n > 0) {
        u->in_len += (size_t)n;
        u->got_bytes = true;
        if (u->idle || !u->c) {
            gw_up_close(u);
            return;
        }
        gw_client_up_bytes(u->c, u);
        if (!u->closed)
            gw_up_read_update(u);
    } else if (n < 0) {
        u->eof = true;
        if (n != UV_EOF)
            u->reset = true;
        gw_up_read_update(u);
        if (u->idle || !u->c) {
            gw_up_close(u);
            return;
        }
        gw_client_up_eof(u->c, u, (int)n);
    }
}

static void up_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    up_deliver(s->data, n);
}

void gw_up_read_update(gw_upstream_t *u)
{
    bool want = !u->closed && u->connected && !u->eof && u->in_len < GW_UP_IN_BYTES;
    if (u->t->detached) {
        u->reading = want;
        return;
    }
    if (want && !u->reading) {
        if (uv_read_start((uv_stream_t *)&u->tcp, up_alloc, up_on_read) == 0)
            u->reading = true;
    } else if (!want && u->reading) {
        uv_read_stop((uv_stream_t *)&u->tcp);
        u->reading = false;
    }
}

static void up_on_connect(uv_connect_t *req, int status)
{
    gw_upstream_t *u = req->data;
    u->connecting = false;
    if (u->closed)
        return;
    if (status == 0) {
        u->connected = true;
        uv_tcp_nodelay(&u->tcp, 1);
        gw_up_read_update(u);
    }
    if (u->c)
        gw_client_up_connected(u->c, status);
    else if (status < 0)
        gw_up_close(u);
}

/* PROXY protocol v1 line for a new connection: the client's address and
 * the address it connected to. */
static void up_proxy_line(gw_upstream_t *u, gw_client_t *c)
{
    struct sockaddr_storage ss;
    socklen_t ssl = sizeof(ss);
    char dst[GW_ADDR_MAX] = "";
    int dport = 0;
    if (c->fd >= 0 && getsockname(c->fd, (struct sockaddr *)&ss, &ssl) == 0) {
        if (ss.ss_family == AF_INET) {
            uv_ip4_name((struct sockaddr_in *)&ss, dst, sizeof(dst));
            dport = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&ss, dst, sizeof(dst));
            dport = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        }
    }
    bool v6 = strchr(c->addr, ':') != NULL;
    int n;
    if (!dst[0] || (strchr(dst, ':') != NULL) != v6)
        n = snprintf(u->pp, sizeof(u->pp), "PROXY UNKNOWN\r\n");
    else
        n = snprintf(u->pp, sizeof(u->pp), "PROXY %s %s %s %d %d\r\n", v6 ? "TCP6" : "TCP4",
                     c->addr, dst, c->peer_port, dport);
    u->pp_len = n > 0 && (size_t)n < sizeof(u->pp) ? (size_t)n : 0;
}

gw_upstream_t *gw_up_get(gw_thread_t *t, gw_backend_t *b, gw_client_t *c, bool fresh, bool *reused)
{
    *reused = false;
    if (!fresh) {
        gw_poolent_t *e = pool_find(t, b, false);
        if (e && e->idle) {
            gw_upstream_t *u = e->idle;
            e->idle = u->pnext;
            e->n_idle--;
            u->pnext = NULL;
            u->idle = false;
            u->reused = true;
            u->c = c;
            *reused = true;
            atomic_store_explicit(&t->m.up_reused,
                                  atomic_load_explicit(&t->m.up_reused, memory_order_relaxed) + 1,
                                  memory_order_relaxed);
            return u;
        }
    }
    gw_upstream_t *u = xcalloc(1, sizeof(*u));
    u->t = t;
    u->b = b;
    gw_backend_ref(b);
    u->c = c;
    u->in = xmalloc(GW_UP_IN_BYTES);
    u->slot.dir = GW_SLOT_TO_UP;
    u->slot.owner = u;
    u->tcp.data = u;
    u->creq.data = u;
    atomic_store_explicit(&t->m.up_conns,
                          atomic_load_explicit(&t->m.up_conns, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    if (t->p->o.proxy_protocol)
        up_proxy_line(u, c);
    if (t->detached) {
        u->connected = true;
        gw_up_read_update(u);
        return u;
    }
    uv_tcp_init(&t->loop, &u->tcp);
    u->connecting = true;
    int rc = uv_tcp_connect(&u->creq, &u->tcp, (const struct sockaddr *)&b->addr, up_on_connect);
    if (rc < 0) {
        /* reported through the client's connect timer, never from inside
         * this call (the caller is not ready for a callback yet) */
        u->connecting = false;
        u->connect_err = rc;
    }
    return u;
}

static void up_write_cb(uv_write_t *req, int status)
{
    gw_slot_complete(req->data, status);
}

void gw_up_write(gw_upstream_t *u, gw_wslot_t *s)
{
    s->busy = true;
    if (s->src_c)
        s->src_c->in_locks++;
    gw_thread_t *t = u->t;
    if (t->detached) {
        u->wpending++;
        gw_client_t *c = s->src_c ? s->src_c : u->c;
        for (unsigned i = 0; i < s->n; i++)
            if (c && c->d && c->d->bout.len + s->iov[i].len <= (1u << 20))
                (void)buf_append(&c->d->bout, s->iov[i].base, s->iov[i].len);
        gw_defer_complete(t, s, 0);
        return;
    }
    u->wpending++;
    gw_stream_write(t, s, (uv_stream_t *)&u->tcp, up_write_cb, u->closed);
}

void gw_up_write_done(gw_upstream_t *u, gw_wslot_t *s, int status)
{
    gw_client_t *src = s->src_c;
    s->src_c = NULL;
    gw_slot_free(s);
    u->wpending--;
    if (src) {
        src->in_locks--;
        if (src->closing)
            gw_client_close(src); /* may free it now */
    }
    if (u->closed) {
        up_maybe_free(u);
        return;
    }
    if (u->c)
        gw_client_up_write_done(u->c, status);
    else
        gw_up_unlock(u); /* a release may have waited for this write */
}

void gw_up_begin_response(gw_upstream_t *u, bool head_request)
{
    http_parser_init(&u->parser, HTTP_RESPONSE);
    u->parser.data = u;
    u->head_done = false;
    u->resp_done = false;
    u->got_bytes = false;
    u->interim = false;
    u->keep = false;
    u->nhs = 0;
    if (u->in_locks == 0 && u->in_off == u->in_len)
        u->in_off = u->in_len = 0;
}

static void pool_put(gw_upstream_t *u)
{
    gw_thread_t *t = u->t;
    size_t max = t->p->o.pool_idle_per_backend;
    if (t->stopping || t->draining || u->eof || u->in_off != u->in_len) {
        gw_up_close(u);
        return;
    }
    gw_poolent_t *e = pool_find(t, u->b, true);
    if (e->n_idle >= max) {
        gw_up_close(u);
        return;
    }
    u->in_off = u->in_len = 0;
    u->idle = true;
    u->pnext = e->idle;
    e->idle = u;
    e->n_idle++;
    gw_up_read_update(u);
}

void gw_up_release(gw_upstream_t *u, bool reusable)
{
    u->c = NULL;
    if (!reusable) {
        gw_up_close(u);
        return;
    }
    if (u->in_locks > 0 || u->slot.busy) {
        u->release_pending = true;
        return;
    }
    pool_put(u);
}

void gw_up_unlock(gw_upstream_t *u)
{
    if (u->in_locks > 0)
        return;
    if (u->closed) {
        up_maybe_free(u);
        return;
    }
    if (u->release_pending && !u->slot.busy) {
        u->release_pending = false;
        pool_put(u);
    }
}

bool gw_up_keep_ok(const gw_upstream_t *u)
{
    return u->keep && !u->eof && !u->closed && u->in_off == u->in_len;
}

static void pool_drop_entry(gw_poolent_t *e)
{
    while (e->idle) {
        gw_upstream_t *u = e->idle;
        e->idle = u->pnext;
        e->n_idle--;
        u->pnext = NULL;
        u->idle = false;
        gw_up_close(u);
    }
    gw_backend_unref(e->b);
    free(e);
}

/* Drop pooled connections to backends the snapshot no longer has. */
void gw_pool_sweep(gw_thread_t *t, const gw_snapshot_t *s)
{
    for (size_t i = 0; i < GW_POOL_BUCKETS; i++)
        for (gw_poolent_t *e = t->pool[i]; e; e = e->next)
            e->mark = false;
    size_t np = 0;
    const gw_pool_t *const *pools = s ? gw_snapshot_pools(s, &np) : NULL;
    for (size_t i = 0; i < np; i++)
        for (size_t j = 0; j < pools[i]->n; j++) {
            gw_poolent_t *e = pool_find(t, pools[i]->b[j], false);
            if (e)
                e->mark = true;
        }
    for (size_t i = 0; i < GW_POOL_BUCKETS; i++) {
        gw_poolent_t **pp = &t->pool[i];
        while (*pp) {
            gw_poolent_t *e = *pp;
            if (!e->mark) {
                *pp = e->next;
                pool_drop_entry(e);
            } else {
                pp = &e->next;
            }
        }
    }
}

void gw_pool_close_all(gw_thread_t *t)
{
    for (size_t i = 0; i < GW_POOL_BUCKETS; i++) {
        while (t->pool[i]) {
            gw_poolent_t *e = t->pool[i];
            t->pool[i] = e->next;
            pool_drop_entry(e);
        }
    }
}

/* Is b a backend of snapshot s? (a request that started on an older
 * snapshot asks before pooling its connection) */
bool gw_snapshot_has_backend(const gw_snapshot_t *s, const gw_backend_t *b)
{
    size_t np = 0;
    const gw_pool_t *const *pools = s ? gw_snapshot_pools(s, &np) : NULL;
    for (size_t i = 0; i < np; i++)
        for (size_t j = 0; j < pools[i]->n; j++)
            if (pools[i]->b[j] == b)
                return true;
    return false;
}

int gw_up_detached_feed(gw_upstream_t *u, const void *bytes, size_t n)
{
    if (u->closed)
        return -EPIPE;
    if (n == 0) {
        if (!u->eof)
            up_deliver(u, UV_EOF);
        return 0;
    }
    const char *p = bytes;
    while (n > 0 && !u->closed && !u->eof) {
        size_t room = GW_UP_IN_BYTES - u->in_len;
        if (room == 0 || !u->reading)
            return -EAGAIN;
        size_t k = n < room ? n : room;
        memcpy(u->in + u->in_len, p, k);
        up_deliver(u, (ssize_t)k);
        p += k;
        n -= k;
        gw_detached_run(u->t);
    }
    return 0;
}
