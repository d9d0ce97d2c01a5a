/* gateway/proxy: threads, listeners, snapshot distribution, metrics,
 * access log, write slots, and the detached (socket-less) mode.
 *
 * Each thread owns a loop, a SO_REUSEPORT listener on the HTTP address
 * (bound by gw_proxy_start so bind errors reach the caller), its internal
 * listeners, its connections and its pools. The only cross-thread traffic
 * is an async wake-up per snapshot change, drain or stop; threads read the
 * proxy's snapshot under a mutex once per change, never per request.
 *
 * Snapshot lifetime per thread: a request counts itself on the thread's
 * gw_snapref_t of the snapshot it started on (plain integer, one thread);
 * when the thread switches, the old snapref stays on a list until its last
 * request ends, then the snapshot reference is dropped. */
#include "gateway/proxy_internal.h"

#include "core/alloc.h"
#include "core/log.h"
#include "core/str.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define DRAIN_POLL_MS 5
static const double lat_bounds_s[GW_LAT_BUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                    0.1,    0.25,  0.5,    1,     2.5,  5,     10};

static inline void ctr_add(atomic_uint_fast64_t *a, uint64_t v)
{
    /* one writer (the owning thread): a relaxed load+store is enough and
     * cheaper than a locked add */
    atomic_store_explicit(a, atomic_load_explicit(a, memory_order_relaxed) + v,
                          memory_order_relaxed);
}

/* ---- write slots ------------------------------------------------------------ */

gw_wslot_t *gw_slot_get(gw_wslot_t *embedded, gw_slot_dir_t dir, void *owner)
{
    gw_wslot_t *s = embedded;
    if (s->busy) {
        s = xmalloc(sizeof(*s));
        s->heap = true;
    } else {
        s->heap = false;
    }
    s->busy = true;
    s->dir = dir;
    s->owner = owner;
    s->n = 0;
    s->nhex = 0;
    s->close_after = false;
    s->src_c = NULL;
    s->src_u = NULL;
    s->dnext = NULL;
    s->done = NULL;
    return s;
}

void gw_slot_free(gw_wslot_t *s)
{
    if (s->heap)
        free(s);
    else
        s->busy = false;
}

void gw_slot_add(gw_wslot_t *s, const void *p, size_t n)
{
    if (n == 0)
        return;
    if (s->n >= GW_IOV_MAX) {
        /* callers pause their parser well before this; reaching it is a bug */
        log_error("gateway", "write slot overflow");
        abort();
    }
    s->iov[s->n++] = uv_buf_init((char *)p, (unsigned)n);
}

bool gw_slot_full(const gw_wslot_t *s, unsigned need)
{
    return s->n + need > GW_IOV_MAX || s->nhex + 2 > GW_HEX_MAX;
}

void gw_slot_complete(gw_wslot_t *s, int status)
{
    if (s->dir == GW_SLOT_TO_CLIENT)
        gw_client_write_done(s->owner, s, status);
    else
        gw_up_write_done(s->owner, s, status);
}

static void on_idle(uv_idle_t *h)
{
    (void)h; /* only there so the loop polls without blocking */
}

/* Keep the loop from blocking in poll until the check phase has run (work
 * queued for it: deferred completions, TLS input to pull). */
void gw_thread_wake(gw_thread_t *t)
{
    if (!t->detached && !uv_is_active((uv_handle_t *)&t->idle))
        uv_idle_start(&t->idle, on_idle);
}

/* Complete s later, from the thread's check phase (or gw_detached_run): a
 * write callback never runs inside the code that wrote, as with libuv. */
void gw_defer_complete(gw_thread_t *t, gw_wslot_t *s, int status)
{
    s->dstatus = status;
    s->dnext = NULL;
    if (t->dq_tail)
        t->dq_tail->dnext = s;
    else
        t->dq_head = s;
    t->dq_tail = s;
    if (!t->detached && !uv_is_active((uv_handle_t *)&t->idle))
        uv_idle_start(&t->idle, on_idle);
}

/* Write straight away when the kernel takes everything (uv_try_write: no
 * request is queued, so libuv does not touch epoll when its write queue
 * drains, one epoll_ctl saved per write); otherwise queue the rest with
 * uv_write. */
void gw_stream_write(gw_thread_t *t, gw_wslot_t *s, uv_stream_t *st, uv_write_cb cb, bool closed)
{
    s->req.data = s;
    if (closed) {
        gw_defer_complete(t, s, UV_ECANCELED);
        return;
    }
    size_t total = 0;
    for (unsigned i = 0; i < s->n; i++)
        total += s->iov[i].len;
    int w = uv_try_write(st, s->iov, s->n);
    if (w >= 0 && (size_t)w == total) {
        gw_defer_complete(t, s, 0);
        return;
    }
    if (w < 0 && w != UV_EAGAIN) {
        gw_defer_complete(t, s, w);
        return;
    }
    unsigned first = 0;
    if (w > 0) {
        size_t left = (size_t)w;
        while (left >= s->iov[first].len) {
            left -= s->iov[first].len;
            first++;
        }
        s->iov[first].base += left;
        s->iov[first].len -= left;
    }
    int rc = uv_write(&s->req, st, s->iov + first, s->n - first, cb);
    if (rc < 0)
        gw_defer_complete(t, s, rc);
}

/* ---- small thread services -------------------------------------------------- */

uint64_t gw_thread_now(gw_thread_t *t)
{
    (void)t;
    return gw_now_ms();
}

/* xorshift128+: request ids need to be unique, not secret; seeded from
 * getrandom once per thread. */
uint64_t gw_rand64(gw_thread_t *t)
{
    uint64_t s1 = t->rng[0];
    const uint64_t s0 = t->rng[1];
    t->rng[0] = s0;
    s1 ^= s1 << 23;
    t->rng[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return t->rng[1] + s0;
}

static void rng_seed(gw_thread_t *t)
{
    if (getrandom(t->rng, sizeof(t->rng), GRND_NONBLOCK) != (ssize_t)sizeof(t->rng)) {
        t->rng[0] = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)t;
        t->rng[1] = uv_hrtime() | 1;
    }
    if (!t->rng[0] && !t->rng[1])
        t->rng[1] = 1;
}

void gw_thread_snap_release(gw_thread_t *t, gw_snapref_t *r)
{
    r->users--;
    if (r == t->cur || r->users > 0)
        return;
    for (gw_snapref_t **pp = &t->old; *pp; pp = &(*pp)->next) {
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    }
    gw_snapshot_unref(r->s);
    free(r);
}

static void thread_install(gw_thread_t *t, gw_snapshot_t *s)
{
    gw_snapref_t *r = xcalloc(1, sizeof(*r));
    r->s = s; /* reference passed in */
    gw_snapref_t *old = t->cur;
    t->cur = r;
    if (old) {
        if (old->users == 0) {
            gw_snapshot_unref(old->s);
            free(old);
        } else {
            old->next = t->old;
            t->old = old;
        }
    }
    gw_pool_sweep(t, s);
    gw_bridge_sweep(t, s); /* worker bridge connections (bridge.c) */
}

/* ---- metrics and access log ------------------------------------------------- */

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

void gw_metrics_request(gw_thread_t *t, const gw_client_t *c)
{
    int cls = c->status / 100;
    if (cls < 1 || cls > 5)
        cls = 0;
    ctr_add(&t->m.codes[cls], 1);
    uint64_t us = (uv_hrtime() - c->t0_ns) / 1000;
    ctr_add(&t->m.lat_sum_us, us);
    int i = 0;
    while (i < GW_LAT_BUCKETS && (double)us > lat_bounds_s[i] * 1e6)
        i++;
    ctr_add(&t->m.lat[i], 1);
    const char *app = c->route ? c->route->app : NULL;
    if (!app || !app[0])
        return;
    uint64_t h = hash_str(app);
    gw_appstat_t *a;
    for (a = t->apps; a; a = a->next)
        if (a->hash == h && strcmp(a->app, app) == 0)
            break;
    if (!a) {
        a = xcalloc(1, sizeof(*a));
        a->app = xstrdup(app);
        a->hash = h;
        uv_mutex_lock(&t->app_lock);
        a->next = t->apps;
        t->apps = a;
        uv_mutex_unlock(&t->app_lock);
    }
    ctr_add(&a->codes[cls], 1);
}

static void json_str(buf_t *b, const char *s)
{
    (void)buf_append(b, "\"", 1);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            char e[2] = {'\\', (char)ch};
            (void)buf_append(b, e, 2);
        } else if (ch < 0x20) {
            (void)buf_printf(b, "\\u%04x", ch);
        } else {
            (void)buf_append(b, s, 1);
        }
    }
    (void)buf_append(b, "\"", 1);
}

/* One JSON line per request into the thread's buffer; written out once per
 * loop turn (check handle) so logging costs no syscall per request. */
void gw_access_log(gw_thread_t *t, const gw_client_t *c)
{
    if (c->logged)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    buf_t *b = &t->log;
    if (b->len > (4u << 20))
        return; /* log sink stuck: drop rather than grow */
    (void)buf_printf(b, "{\"ts\":%lld.%03ld,\"client\":", (long long)ts.tv_sec,
                     ts.tv_nsec / 1000000);
    json_str(b, c->addr);
    (void)buf_append_str(b, ",\"method\":");
    json_str(b, c->log_method);
    (void)buf_append_str(b, ",\"host\":");
    json_str(b, c->log_host);
    (void)buf_append_str(b, ",\"path\":");
    json_str(b, c->log_path);
    (void)buf_printf(b, ",\"status\":%d,\"bytes\":%llu,\"ms\":%.3f,\"app\":", c->status,
                     (unsigned long long)c->resp_bytes, (double)(uv_hrtime() - c->t0_ns) / 1e6);
    json_str(b, c->route && c->route->app ? c->route->app : "");
    (void)buf_append_str(b, ",\"backend\":");
    json_str(b, c->b ? c->b->name : "");
    (void)buf_append_str(b, ",\"request_id\":");
    json_str(b, c->reqid);
    (void)buf_append_str(b, "}\n");
    if (t->detached)
        buf_reset(b);
}

static void thread_flush_log(gw_thread_t *t)
{
    FILE *f = t->p->o.access_log;
    if (!f || t->log.len == 0)
        return;
    fwrite(t->log.data, 1, t->log.len, f);
    fflush(f);
    buf_reset(&t->log);
}

static void on_check(uv_check_t *h)
{
    gw_thread_t *t = h->data;
    gw_detached_run(t);
    if (uv_is_active((uv_handle_t *)&t->idle))
        uv_idle_stop(&t->idle);
    /* after the deferred work, which may have started more invocations;
     * what the flush itself defers (a failed connection's answers)
     * restarts the idle handle */
    gw_bridge_flush(t); /* worker invocations this turn brought (bridge.c) */
    thread_flush_log(t);
}

/* ---- listeners -------------------------------------------------------------- */

static int parse_addr(const char *host, int port, struct sockaddr_storage *ss, err_t *err)
{
    memset(ss, 0, sizeof(*ss));
    if (!host || !host[0] || strcmp(host, "*") == 0)
        host = "0.0.0.0";
    if (strcmp(host, "localhost") == 0)
        host = "127.0.0.1";
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0)
        return 0;
    if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) == 0)
        return 0;
    return err_set(err, -EINVAL, "address %s: not a numeric IP address", host);
}

/* A listening socket with SO_REUSEPORT, so every thread binds its own and
 * the kernel spreads connections (libuv 1.44 has no flag for it). */
static int listen_fd(const struct sockaddr_storage *ss, const char *what, err_t *err)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return err_set(err, -errno, "%s: socket: %s", what, strerror(errno));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) {
        int e = errno;
        close(fd);
        return err_set(err, -e, "%s: SO_REUSEPORT: %s", what, strerror(e));
    }
    socklen_t sl =
        ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    if (bind(fd, (const struct sockaddr *)ss, sl) < 0) {
        int e = errno;
        close(fd);
        return err_set(err, -e, "%s: bind: %s", what, strerror(e));
    }
    if (listen(fd, 4096) < 0) {
        int e = errno;
        close(fd);
        return err_set(err, -e, "%s: listen: %s", what, strerror(e));
    }
    return fd;
}

/* Accept with our own accept4 on a polled listener rather than
 * uv_listen/uv_accept: accept4 hands back the peer address (no
 * getpeername per connection) and accepted sockets inherit TCP_NODELAY
 * from the listener (no setsockopt per connection). A burst is accepted
 * in one wake-up, bounded so one thread's loop stays responsive. */
static void on_listener_ready(uv_poll_t *h, int status, int events)
{
    gw_listener_t *l = h->data;
    gw_thread_t *t = l->t;
    if (status < 0 || t->draining || t->stopping)
        return;
    for (int i = 0; i < 128; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* out of descriptors: stop polling for a moment instead of
                 * spinning on a listener that stays readable */
                log_warn("gateway", "accept: %s; pausing accepts for 100 ms", strerror(errno));
                uv_poll_stop(&l->h);
                l->paused = true;
                if (!uv_is_active((uv_handle_t *)&t->accept_timer))
                    uv_timer_start(&t->accept_timer, gw_thread_resume_accept, 100, 0);
            }
            return;
        }
        gw_client_accept(t, fd, &ss, l->internal, l->port, l->tls);
    }
}

void gw_thread_resume_accept(uv_timer_t *h)
{
    gw_thread_t *t = h->data;
    if (t->draining || t->stopping)
        return;
    if (t->http && t->http->paused) {
        t->http->paused = false;
        uv_poll_start(&t->http->h, UV_READABLE, on_listener_ready);
    }
    if (t->https && t->https->paused) {
        t->https->paused = false;
        uv_poll_start(&t->https->h, UV_READABLE, on_listener_ready);
    }
    for (gw_listener_t *l = t->ilist; l; l = l->next)
        if (l->paused) {
            l->paused = false;
            uv_poll_start(&l->h, UV_READABLE, on_listener_ready);
        }
}

static void on_listener_close(uv_handle_t *h)
{
    gw_listener_t *l = h->data;
    close(l->fd);
    free(l);
}

static void listener_close(gw_listener_t *l)
{
    uv_poll_stop(&l->h);
    uv_close((uv_handle_t *)&l->h, on_listener_close);
}

/* Watch a bound, listening fd on t's loop; the listener owns fd from here
 * (also on failure). */
static gw_listener_t *listener_open(gw_thread_t *t, int fd, bool internal, int port)
{
    gw_listener_t *l = xcalloc(1, sizeof(*l));
    l->t = t;
    l->fd = fd;
    l->internal = internal;
    l->port = port;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (uv_poll_init_socket(&t->loop, &l->h, fd) < 0) {
        close(fd);
        free(l);
        return NULL;
    }
    l->h.data = l;
    uv_poll_start(&l->h, UV_READABLE, on_listener_ready);
    return l;
}

/* Open listeners for internal ports the snapshot has and close the ones it
 * dropped (per thread: each thread binds its own SO_REUSEPORT socket). */
static void thread_sync_internal(gw_thread_t *t)
{
    gw_proxy_t *p = t->p;
    if (!p->o.internal || t->draining || t->stopping)
        return;
    for (gw_listener_t *l = t->ilist; l; l = l->next)
        l->mark = false;
    size_t n = 0;
    const gw_route_t *const *rs = t->cur->s ? gw_snapshot_internal(t->cur->s, &n) : NULL;
    for (size_t i = 0; i < n; i++) {
        int port = rs[i]->internal;
        gw_listener_t *l;
        for (l = t->ilist; l; l = l->next)
            if (l->port == port)
                break;
        if (l) {
            l->mark = true;
            continue;
        }
        struct sockaddr_storage ss;
        err_t err;
        char what[96];
        snprintf(what, sizeof(what), "internal port %s:%d", p->internal_host, port);
        if (parse_addr(p->internal_host, port, &ss, &err) < 0) {
            log_warn("gateway", "%s", err.msg);
            continue;
        }
        int fd = listen_fd(&ss, what, &err);
        if (fd < 0) {
            if (t->idx == 0)
                log_warn("gateway", "%s", err.msg);
            continue;
        }
        l = listener_open(t, fd, true, port);
        if (!l) {
            log_warn("gateway", "%s: cannot listen", what);
            continue;
        }
        l->mark = true;
        l->next = t->ilist;
        t->ilist = l;
    }
    for (gw_listener_t **pp = &t->ilist; *pp;) {
        gw_listener_t *l = *pp;
        if (!l->mark) {
            *pp = l->next;
            listener_close(l);
        } else {
            pp = &l->next;
        }
    }
}

static void thread_close_listeners(gw_thread_t *t)
{
    if (t->http) {
        listener_close(t->http);
        t->http = NULL;
    }
    if (t->https) {
        listener_close(t->https);
        t->https = NULL;
    }
    while (t->ilist) {
        gw_listener_t *l = t->ilist;
        t->ilist = l->next;
        listener_close(l);
    }
}

/* ---- threads ---------------------------------------------------------------- */

static void thread_take_snapshot(gw_thread_t *t)
{
    gw_proxy_t *p = t->p;
    uv_mutex_lock(&p->lock);
    if (p->snap_gen == t->snap_gen) {
        uv_mutex_unlock(&p->lock);
        return;
    }
    gw_snapshot_t *s = p->snap;
    if (s)
        gw_snapshot_ref(s);
    t->snap_gen = p->snap_gen;
    uv_mutex_unlock(&p->lock);
    thread_install(t, s);
    thread_sync_internal(t);
    atomic_store(&t->applied_rev, s ? gw_snapshot_revision(s) : 0);
    uint64_t min = gw_proxy_applied_revision(p);
    uint64_t seen = atomic_load(&p->notified_rev);
    /* the thread that completes a revision reports it, once */
    while (min > seen) {
        if (atomic_compare_exchange_weak(&p->notified_rev, &seen, min)) {
            if (p->o.on_applied)
                p->o.on_applied(min, p->o.on_applied_data);
            break;
        }
    }
}

uint64_t gw_proxy_applied_revision(const gw_proxy_t *p)
{
    uint64_t min = UINT64_MAX;
    for (int i = 0; i < p->n_threads; i++) {
        uint64_t r = atomic_load(&p->threads[i].applied_rev);
        if (r < min)
            min = r;
    }
    return p->n_threads ? min : 0;
}

static void thread_stop(gw_thread_t *t)
{
    if (t->stopping)
        return;
    t->stopping = true;
    thread_close_listeners(t);
    gw_client_t *c = t->clients;
    while (c) {
        gw_client_t *next = c->next;
        gw_client_close(c);
        c = next;
    }
    gw_pool_close_all(t);
    gw_bridge_close_all(t); /* worker bridge connections (bridge.c) */
    uv_close((uv_handle_t *)&t->async, NULL);
    uv_close((uv_handle_t *)&t->accept_timer, NULL);
    uv_close((uv_handle_t *)&t->idle, NULL);
    uv_check_stop(&t->check);
    uv_close((uv_handle_t *)&t->check, NULL);
}

static void on_async(uv_async_t *h)
{
    gw_thread_t *t = h->data;
    gw_proxy_t *p = t->p;
    if (atomic_load(&p->stopping)) {
        thread_flush_log(t);
        thread_stop(t);
        return;
    }
    thread_take_snapshot(t);
    if (atomic_load(&p->draining) && !t->draining) {
        t->draining = true;
        thread_close_listeners(t);
        gw_pool_close_all(t);
        gw_client_t *c = t->clients;
        while (c) {
            gw_client_t *next = c->next;
            gw_client_drain(c);
            c = next;
        }
    }
}

static void thread_main(void *arg)
{
    gw_thread_t *t = arg;
    uv_run(&t->loop, UV_RUN_DEFAULT);
    /* write completions deferred in the last turn free what they hold */
    while (t->dq_head) {
        gw_detached_run(t);
        uv_run(&t->loop, UV_RUN_NOWAIT);
    }
    thread_flush_log(t);
}

static void thread_init_common(gw_proxy_t *p, gw_thread_t *t, int idx)
{
    t->p = p;
    t->idx = idx;
    size_t per = p->o.max_connections
                     ? (p->o.max_connections + (size_t)p->n_threads - 1) / (size_t)p->n_threads
                     : 10000;
    t->max_clients = per;
    uv_mutex_init(&t->app_lock);
    buf_init(&t->log, 0);
    rng_seed(t);
    t->cur = xcalloc(1, sizeof(*t->cur));
    if (p->https_addr)
        t->tls_scratch = xmalloc(GW_TLS_SCRATCH);
}

static void thread_free_common(gw_thread_t *t)
{
    while (t->spare) {
        gw_client_t *c = t->spare;
        t->spare = c->next;
        gw_client_destroy(c);
    }
    while (t->old) {
        gw_snapref_t *r = t->old;
        t->old = r->next;
        gw_snapshot_unref(r->s);
        free(r);
    }
    if (t->cur) {
        gw_snapshot_unref(t->cur->s);
        free(t->cur);
        t->cur = NULL;
    }
    while (t->apps) {
        gw_appstat_t *a = t->apps;
        t->apps = a->next;
        free(a->app);
        free(a);
    }
    uv_mutex_destroy(&t->app_lock);
    buf_free(&t->log);
    free(t->hs);
    free(t->tls_scratch);
    gw_bridge_thread_free(t); /* worker bridge (bridge.c) */
}

static void apply_defaults(gw_proxy_opts_t *o)
{
    if (!o->max_header_bytes)
        o->max_header_bytes = 16 * 1024;
    if (!o->max_body_bytes)
        o->max_body_bytes = (size_t)100 << 20;
    if (!o->header_timeout_ms)
        o->header_timeout_ms = 10000;
    if (!o->idle_timeout_ms)
        o->idle_timeout_ms = 60000;
    if (!o->connect_timeout_ms)
        o->connect_timeout_ms = 3000;
    if (!o->backend_timeout_ms)
        o->backend_timeout_ms = 60000;
    if (!o->eject_base_ms)
        o->eject_base_ms = 1000;
    if (!o->eject_max_ms)
        o->eject_max_ms = 30000;
    if (!o->pool_idle_per_backend)
        o->pool_idle_per_backend = 64;
}

static gw_proxy_t *proxy_alloc(const gw_proxy_opts_t *opts)
{
    gw_proxy_t *p = xcalloc(1, sizeof(*p));
    p->o = *opts;
    apply_defaults(&p->o);
    p->http_addr = opts->http_addr ? xstrdup(opts->http_addr) : NULL;
    p->https_addr = opts->https_addr ? xstrdup(opts->https_addr) : NULL;
    p->o.https_addr = p->https_addr;
    p->https_port = -1;
    if (opts->hsts_seconds)
        snprintf(p->hsts, sizeof(p->hsts), "Strict-Transport-Security: max-age=%llu",
                 (unsigned long long)opts->hsts_seconds);
    p->internal_host = xstrdup(opts->internal_host ? opts->internal_host : "0.0.0.0");
    p->o.http_addr = p->http_addr;
    p->o.internal_host = p->internal_host;
    p->http_port = -1;
    uv_mutex_init(&p->lock);
    return p;
}

/* Bind one SO_REUSEPORT socket per thread on addr (port 0: the first
 * socket's port for the others too) into each thread's *fd slot. */
static int proxy_bind(gw_proxy_t *p, const char *addr, const char *what, bool tls, int *port_out,
                      err_t *err)
{
    char *host = NULL;
    int port = 0;
    struct sockaddr_storage ss;
    if (str_split_hostport(addr, &host, &port) < 0)
        return err_set(err, -EINVAL, "%s address %s: expected host:port", what, addr);
    int rc = parse_addr(host, port, &ss, err);
    free(host);
    if (rc < 0)
        return rc;
    for (int i = 0; i < p->n_threads; i++) {
        char label[128];
        snprintf(label, sizeof(label), "%s address %s", what, addr);
        int fd = listen_fd(&ss, label, err);
        if (fd < 0)
            return fd;
        /* HTTP and TLS clients speak first: have the kernel hand over a
         * connection only once its first bytes arrived, so the recv right
         * after accept finds the request instead of costing another
         * wake-up. (Not on internal TCP ports: there the server may speak
         * first.) */
        int defer = 1;
        (void)setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer, sizeof(defer));
        if (tls)
            p->threads[i].https_fd = fd;
        else
            p->threads[i].http_fd = fd;
        if (i == 0) {
            struct sockaddr_storage got;
            socklen_t gl = sizeof(got);
            getsockname(fd, (struct sockaddr *)&got, &gl);
            port = got.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&got)->sin6_port)
                                             : ntohs(((struct sockaddr_in *)&got)->sin_port);
            *port_out = port;
            if (ss.ss_family == AF_INET6)
                ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)port);
            else
                ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)port);
        }
    }
    return 0;
}

static void proxy_close_unowned_fds(gw_proxy_t *p)
{
    for (int i = 0; i < p->n_threads; i++) {
        if (p->threads[i].http_fd >= 0)
            close(p->threads[i].http_fd);
        if (p->threads[i].https_fd >= 0)
            close(p->threads[i].https_fd);
        p->threads[i].http_fd = p->threads[i].https_fd = -1;
    }
}

int gw_proxy_start(const gw_proxy_opts_t *opts, gw_proxy_t **out, err_t *err)
{
    *out = NULL;
    if (opts->https_addr && !opts->tls)
        return err_set(err, -EINVAL, "https address %s: no TLS certificates", opts->https_addr);
    gw_proxy_t *p = proxy_alloc(opts);
    int n = opts->threads > 0 ? opts->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        n = 1;
    if (n > 256)
        n = 256;
    p->n_threads = n;
    p->threads = xcalloc((size_t)n, sizeof(gw_thread_t));
    for (int i = 0; i < n; i++)
        p->threads[i].http_fd = p->threads[i].https_fd = -1;
    int rc = 0;
    if (p->http_addr && (rc = proxy_bind(p, p->http_addr, "http", false, &p->http_port, err)) < 0)
        goto fail;
    if (p->https_addr &&
        (rc = proxy_bind(p, p->https_addr, "https", true, &p->https_port, err)) < 0)
        goto fail;
    for (int i = 0; i < n; i++) {
        gw_thread_t *t = &p->threads[i];
        thread_init_common(p, t, i);
        uv_loop_init(&t->loop);
        uv_async_init(&t->loop, &t->async, on_async);
        t->async.data = t;
        uv_check_init(&t->loop, &t->check);
        t->check.data = t;
        uv_check_start(&t->check, on_check);
        uv_unref((uv_handle_t *)&t->check);
        uv_idle_init(&t->loop, &t->idle);
        t->idle.data = t;
        uv_timer_init(&t->loop, &t->accept_timer);
        t->accept_timer.data = t;
        uv_unref((uv_handle_t *)&t->accept_timer);
        const char *bad = NULL;
        if (t->http_fd >= 0) {
            int fd = t->http_fd;
            t->http_fd = -1;
            t->http = listener_open(t, fd, false, p->http_port);
            if (!t->http)
                bad = p->http_addr;
        }
        if (!bad && t->https_fd >= 0) {
            int fd = t->https_fd;
            t->https_fd = -1;
            t->https = listener_open(t, fd, false, p->https_port);
            if (t->https)
                t->https->tls = true;
            else
                bad = p->https_addr;
        }
        if (bad) {
            rc = err_set(err, -EIO, "address %s: cannot watch the listener", bad);
            /* no thread runs yet: unwind the loops set up so far */
            for (int j = 0; j <= i; j++) {
                gw_thread_t *tj = &p->threads[j];
                thread_close_listeners(tj);
                uv_close((uv_handle_t *)&tj->async, NULL);
                uv_close((uv_handle_t *)&tj->check, NULL);
                uv_close((uv_handle_t *)&tj->accept_timer, NULL);
                uv_close((uv_handle_t *)&tj->idle, NULL);
                uv_run(&tj->loop, UV_RUN_DEFAULT);
                uv_loop_close(&tj->loop);
                thread_free_common(tj);
            }
            proxy_close_unowned_fds(p);
            free(p->threads);
            p->threads = NULL;
            p->n_threads = 0;
            goto fail;
        }
    }
    p->running = true;
    for (int i = 0; i < n; i++)
        uv_thread_create(&p->threads[i].tid, thread_main, &p->threads[i]);
    *out = p;
    return 0;
fail:
    if (p->threads)
        proxy_close_unowned_fds(p);
    free(p->threads);
    p->threads = NULL;
    p->n_threads = 0;
    gw_proxy_free(p);
    return rc < 0 ? rc : -EIO;
}

void gw_proxy_set_snapshot(gw_proxy_t *p, gw_snapshot_t *snap)
{
    if (!p || !snap)
        return;
    gw_snapshot_ref(snap);
    uv_mutex_lock(&p->lock);
    gw_snapshot_t *old = p->snap;
    p->snap = snap;
    p->snap_gen++;
    uv_mutex_unlock(&p->lock);
    gw_snapshot_unref(old);
    ctr_add(&p->snap_swaps, 1);
    if (p->detached) {
        thread_take_snapshot(&p->threads[0]);
        return;
    }
    if (!p->running)
        return; /* stopped: the asyncs are closed */
    for (int i = 0; i < p->n_threads; i++)
        uv_async_send(&p->threads[i].async);
}

int gw_proxy_http_port(const gw_proxy_t *p)
{
    return p ? p->http_port : -1;
}

int gw_proxy_https_port(const gw_proxy_t *p)
{
    return p ? p->https_port : -1;
}

static void proxy_stop_threads(gw_proxy_t *p)
{
    if (!p->running)
        return;
    atomic_store(&p->stopping, true);
    for (int i = 0; i < p->n_threads; i++)
        uv_async_send(&p->threads[i].async);
    for (int i = 0; i < p->n_threads; i++) {
        gw_thread_t *t = &p->threads[i];
        uv_thread_join(&t->tid);
        /* the loop ended: every handle is closed */
        uv_loop_close(&t->loop);
    }
    p->running = false;
}

static uint64_t proxy_active(gw_proxy_t *p)
{
    uint64_t n = 0;
    for (int i = 0; i < p->n_threads; i++)
        n += atomic_load_explicit(&p->threads[i].m.conns_active, memory_order_relaxed);
    return n;
}

void gw_proxy_drain(gw_proxy_t *p, uint64_t timeout_ms)
{
    if (!p || !p->running)
        return;
    atomic_store(&p->draining, true);
    for (int i = 0; i < p->n_threads; i++)
        uv_async_send(&p->threads[i].async);
    uint64_t end = gw_now_ms() + timeout_ms;
    while (gw_now_ms() < end) {
        /* a drained thread may still have a connection in its close
         * callbacks; one more poll catches it */
        if (proxy_active(p) == 0)
            break;
        struct timespec ts = {0, DRAIN_POLL_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
    proxy_stop_threads(p);
}

void gw_proxy_free(gw_proxy_t *p)
{
    if (!p)
        return;
    if (p->detached) {
        gw_proxy_free_detached(p);
        return;
    }
    proxy_stop_threads(p);
    for (int i = 0; i < p->n_threads; i++)
        thread_free_common(&p->threads[i]);
    free(p->threads);
    gw_snapshot_unref(p->snap);
    uv_mutex_destroy(&p->lock);
    free(p->http_addr);
    free(p->https_addr);
    free(p->internal_host);
    free(p);
}

/* ---- metrics ---------------------------------------------------------------- */

static void prom_label(buf_t *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            (void)buf_append(b, "\\", 1);
        if (*s == '\n') {
            (void)buf_append(b, "\\n", 2);
            continue;
        }
        (void)buf_append(b, s, 1);
    }
}

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

void gw_proxy_metrics(gw_proxy_t *p, buf_t *out)
{
    static const char *cls[6] = {"other", "1xx", "2xx", "3xx", "4xx", "5xx"};
    uint64_t codes[6] = {0}, lat[GW_LAT_BUCKETS + 1] = {0}, lat_sum = 0, bin = 0, bout = 0,
             active = 0, total = 0, upc = 0, upr = 0, retries = 0, tcp = 0, tlsc = 0, tlse = 0;
    for (int i = 0; i < p->n_threads; i++) {
        gw_tmetrics_t *m = &p->threads[i].m;
        for (int k = 0; k < 6; k++)
            codes[k] += LOAD(m->codes[k]);
        for (int k = 0; k <= GW_LAT_BUCKETS; k++)
            lat[k] += LOAD(m->lat[k]);
        lat_sum += LOAD(m->lat_sum_us);
        bin += LOAD(m->bytes_in);
        bout += LOAD(m->bytes_out);
        active += LOAD(m->conns_active);
        total += LOAD(m->conns_total);
        upc += LOAD(m->up_conns);
        upr += LOAD(m->up_reused);
        retries += LOAD(m->retries);
        tcp += LOAD(m->tcp_sessions);
        tlsc += LOAD(m->tls_conns);
        tlse += LOAD(m->tls_errors);
    }
    (void)buf_append_str(out, "# TYPE drover_gateway_requests_total counter\n");
    for (int k = 0; k < 6; k++)
        (void)buf_printf(out, "drover_gateway_requests_total{code=\"%s\"} %llu\n", cls[k],
                         (unsigned long long)codes[k]);
    (void)buf_append_str(out, "# TYPE drover_gateway_app_requests_total counter\n");
    /* per app: sum over threads (an app appears once per thread at most) */
    typedef struct {
        const char *app;
        uint64_t c[6];
    } acc_t;
    acc_t *acc = NULL;
    size_t nacc = 0, capacc = 0;
    for (int i = 0; i < p->n_threads; i++) {
        gw_thread_t *t = &p->threads[i];
        uv_mutex_lock(&t->app_lock);
        for (gw_appstat_t *a = t->apps; a; a = a->next) {
            size_t j;
            for (j = 0; j < nacc; j++)
                if (strcmp(acc[j].app, a->app) == 0)
                    break;
            if (j == nacc) {
                if (nacc == capacc) {
                    capacc = capacc ? capacc * 2 : 16;
                    acc = xrealloc(acc, capacc * sizeof(*acc));
                }
                memset(&acc[nacc], 0, sizeof(acc[nacc]));
                acc[nacc].app = a->app;
                nacc++;
            }
            for (int k = 0; k < 6; k++)
                acc[j].c[k] += LOAD(a->codes[k]);
        }
        uv_mutex_unlock(&t->app_lock);
    }
    /* app strings stay valid: entries are only freed with the proxy */
    for (size_t j = 0; j < nacc; j++)
        for (int k = 1; k < 6; k++) {
            if (!acc[j].c[k])
                continue;
            (void)buf_append_str(out, "drover_gateway_app_requests_total{app=\"");
            prom_label(out, acc[j].app);
            (void)buf_printf(out, "\",code=\"%s\"} %llu\n", cls[k],
                             (unsigned long long)acc[j].c[k]);
        }
    free(acc);
    (void)buf_append_str(out, "# TYPE drover_gateway_request_duration_seconds histogram\n");
    uint64_t cum = 0, count = 0;
    for (int k = 0; k <= GW_LAT_BUCKETS; k++)
        count += lat[k];
    for (int k = 0; k < GW_LAT_BUCKETS; k++) {
        cum += lat[k];
        (void)buf_printf(out, "drover_gateway_request_duration_seconds_bucket{le=\"%g\"} %llu\n",
                         lat_bounds_s[k], (unsigned long long)cum);
    }
    (void)buf_printf(out,
                     "drover_gateway_request_duration_seconds_bucket{le=\"+Inf\"} %llu\n"
                     "drover_gateway_request_duration_seconds_sum %.6f\n"
                     "drover_gateway_request_duration_seconds_count %llu\n",
                     (unsigned long long)count, (double)lat_sum / 1e6, (unsigned long long)count);
    (void)buf_printf(out,
                     "# TYPE drover_gateway_connections_active gauge\n"
                     "drover_gateway_connections_active %llu\n"
                     "# TYPE drover_gateway_connections_total counter\n"
                     "drover_gateway_connections_total %llu\n"
                     "# TYPE drover_gateway_backend_connections_total counter\n"
                     "drover_gateway_backend_connections_total %llu\n"
                     "# TYPE drover_gateway_backend_reused_total counter\n"
                     "drover_gateway_backend_reused_total %llu\n"
                     "# TYPE drover_gateway_retries_total counter\n"
                     "drover_gateway_retries_total %llu\n"
                     "# TYPE drover_gateway_tcp_sessions_total counter\n"
                     "drover_gateway_tcp_sessions_total %llu\n"
                     "# TYPE drover_gateway_received_bytes_total counter\n"
                     "drover_gateway_received_bytes_total %llu\n"
                     "# TYPE drover_gateway_sent_bytes_total counter\n"
                     "drover_gateway_sent_bytes_total %llu\n",
                     (unsigned long long)active, (unsigned long long)total, (unsigned long long)upc,
                     (unsigned long long)upr, (unsigned long long)retries, (unsigned long long)tcp,
                     (unsigned long long)bin, (unsigned long long)bout);
    if (p->https_addr)
        (void)buf_printf(out,
                         "# TYPE drover_gateway_tls_connections_total counter\n"
                         "drover_gateway_tls_connections_total %llu\n"
                         "# TYPE drover_gateway_tls_errors_total counter\n"
                         "drover_gateway_tls_errors_total %llu\n",
                         (unsigned long long)tlsc, (unsigned long long)tlse);
    gw_bridge_metrics(p, out); /* worker bridge outcomes (bridge.c) */
    uv_mutex_lock(&p->lock);
    gw_snapshot_t *s = p->snap;
    if (s)
        gw_snapshot_ref(s);
    uv_mutex_unlock(&p->lock);
    (void)buf_printf(out,
                     "# TYPE drover_gateway_snapshot_revision gauge\n"
                     "drover_gateway_snapshot_revision %llu\n"
                     "# TYPE drover_gateway_snapshot_swaps_total counter\n"
                     "drover_gateway_snapshot_swaps_total %llu\n",
                     (unsigned long long)(s ? gw_snapshot_revision(s) : 0),
                     (unsigned long long)LOAD(p->snap_swaps));
    if (s) {
        size_t np = 0;
        const gw_pool_t *const *pools = gw_snapshot_pools(s, &np);
        uint64_t now = gw_now_ms();
        (void)buf_append_str(out, "# TYPE drover_gateway_backend_active gauge\n"
                                  "# TYPE drover_gateway_backend_ejected gauge\n");
        for (size_t i = 0; i < np; i++)
            for (size_t j = 0; j < pools[i]->n; j++) {
                const gw_backend_t *b = pools[i]->b[j];
                (void)buf_append_str(out, "drover_gateway_backend_active{pool=\"");
                prom_label(out, pools[i]->name);
                (void)buf_printf(out, "\",backend=\"%s\"} %u\n", b->name, atomic_load(&b->active));
                (void)buf_append_str(out, "drover_gateway_backend_ejected{pool=\"");
                prom_label(out, pools[i]->name);
                (void)buf_printf(out, "\",backend=\"%s\"} %d\n", b->name,
                                 atomic_load(&b->eject_until_ms) > now ? 1 : 0);
            }
        gw_snapshot_unref(s);
    }
}

/* ---- detached mode ---------------------------------------------------------- */

/* Deliver queued write completions (a detached write completes at once,
 * but its callback runs here, outside the code that wrote, as libuv's
 * would). */
void gw_detached_run(gw_thread_t *t)
{
    for (;;) {
        while (t->dq_head) {
            gw_wslot_t *s = t->dq_head;
            t->dq_head = s->dnext;
            if (!t->dq_head)
                t->dq_tail = NULL;
            gw_slot_complete(s, s->dstatus);
        }
        if (t->tls_due) {
            gw_client_tls_run_due(t);
            continue;
        }
        if (!t->dead_ups)
            break;
        while (t->dead_ups) {
            gw_upstream_t *u = t->dead_ups;
            t->dead_ups = u->pnext;
            u->pnext = NULL;
            gw_up_handle_closed(u);
        }
    }
}

gw_proxy_t *gw_proxy_new_detached(const gw_proxy_opts_t *opts, gw_snapshot_t *snap)
{
    gw_proxy_t *p = proxy_alloc(opts);
    p->detached = true;
    p->n_threads = 1;
    p->threads = xcalloc(1, sizeof(gw_thread_t));
    gw_thread_t *t = &p->threads[0];
    t->http_fd = t->https_fd = -1;
    thread_init_common(p, t, 0);
    t->detached = true;
    if (snap)
        gw_proxy_set_snapshot(p, snap);
    return p;
}

void gw_proxy_free_detached(gw_proxy_t *p)
{
    gw_thread_t *t = &p->threads[0];
    t->stopping = true;
    gw_pool_close_all(t);
    gw_detached_run(t);
    thread_free_common(t);
    free(p->threads);
    gw_snapshot_unref(p->snap);
    uv_mutex_destroy(&p->lock);
    free(p->http_addr);
    free(p->https_addr);
    free(p->internal_host);
    free(p);
}

gw_dconn_t *gw_dconn_new(gw_proxy_t *p)
{
    gw_thread_t *t = &p->threads[0];
    gw_client_t *c = gw_client_new(t);
    gw_dconn_t *d = xcalloc(1, sizeof(*d));
    d->p = p;
    d->c = c;
    buf_init(&d->out, 0);
    buf_init(&d->bout, 0);
    c->d = d;
    snprintf(c->addr, sizeof(c->addr), "192.0.2.1");
    c->peer_port = 40000;
    c->state = CS_HEAD;
    gw_client_set_deadline(c, p->o.header_timeout_ms, TMO_HEADER);
    gw_client_read_update(c);
    return d;
}

int gw_dconn_feed(gw_dconn_t *d, const void *bytes, size_t n)
{
    gw_client_t *c = d->c;
    gw_thread_t *t = c->t;
    if (d->closed)
        return -EPIPE;
    if (n == 0) {
        gw_client_on_eof(c, UV_EOF);
        gw_detached_run(t);
        return d->closed ? -EPIPE : 0;
    }
    const char *p = bytes;
    while (n > 0 && !d->closed) {
        size_t room = c->in_cap - c->in_len;
        if (!c->reading || room == 0) {
            gw_detached_run(t);
            room = c->in_cap - c->in_len;
            if (!c->reading || room == 0)
                break; /* the proxy stopped reading: the rest waits in the kernel */
        }
        size_t k = n < room ? n : room;
        memcpy(c->in + c->in_len, p, k);
        gw_client_on_bytes(c, k);
        p += k;
        n -= k;
        gw_detached_run(t);
    }
    return d->closed ? -EPIPE : 0;
}

const buf_t *gw_dconn_output(const gw_dconn_t *d)
{
    return &d->out;
}

const buf_t *gw_dconn_backend_output(const gw_dconn_t *d)
{
    return &d->bout;
}

int gw_dconn_backend_feed(gw_dconn_t *d, const void *bytes, size_t n)
{
    if (d->closed || !d->c->up)
        return -ENOTCONN;
    int rc = gw_up_detached_feed(d->c->up, bytes, n);
    gw_detached_run(d->c->t);
    return rc;
}

void gw_dconn_free(gw_dconn_t *d)
{
    gw_client_t *c = d->c;
    gw_thread_t *t = c->t;
    gw_client_close(c);
    gw_detached_run(t);
    c->d = NULL;
    buf_free(&d->out);
    buf_free(&d->bout);
    free(d);
    gw_client_close(c); /* frees it: nothing refers to it any more */
    gw_detached_run(t);
}
