#include "gateway/routes.h"

#include "core/alloc.h"
#include "core/log.h"
#include "locator/ketama.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* Longest host name matched (DNS limit); longer Host headers match nothing. */
#define HOST_MAX 255

struct gw_group {
    const char *name;
    ketama_t *ring;
    size_t n;
    const char **members;    /* ketama's own name pointers, index order */
    const gw_pool_t **pools; /* pool of each member, NULL when undefined */
};

/* Routes of one host (or of the wildcard suffix, or of any host), longest
 * path first, so the first prefix that matches is the longest. */
typedef struct host_bucket {
    const char *host; /* exact name, or the suffix ".example.com" of "*.example.com" */
    size_t host_len;
    const gw_route_t **routes;
    size_t n;
} host_bucket_t;

struct gw_snapshot {
    atomic_uint refs;
    uint64_t revision;
    /* every allocation the snapshot owns, freed at the last unref */
    void **allocs;
    size_t n_allocs, cap_allocs;

    const gw_pool_t **pools; /* by name */
    size_t n_pools;
    gw_backend_t **backends; /* unique, by name; one reference each */
    size_t n_backends;
    gw_group_t **groups; /* by name */
    size_t n_groups;

    const gw_route_t **routes; /* match order */
    size_t n_routes;
    host_bucket_t *exact; /* by host */
    size_t n_exact;
    host_bucket_t *wild; /* longest suffix first */
    size_t n_wild;
    host_bucket_t any;
    const gw_route_t **internal; /* by port */
    size_t n_internal;
};

/* ---- small helpers ---------------------------------------------------------- */

uint64_t gw_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t fnv1a64(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* splitmix64's finalizer: spreads the bits of seed ^ backend key so the
 * rendezvous scores of different backends are independent. */
static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

static void *snap_own(gw_snapshot_t *s, void *p)
{
    if (s->n_allocs == s->cap_allocs) {
        s->cap_allocs = s->cap_allocs ? s->cap_allocs * 2 : 64;
        s->allocs = xrealloc(s->allocs, s->cap_allocs * sizeof(void *));
    }
    s->allocs[s->n_allocs++] = p;
    return p;
}

static const char *snap_strdup(gw_snapshot_t *s, const char *str)
{
    return snap_own(s, xstrdup(str ? str : ""));
}

static void *snap_calloc(gw_snapshot_t *s, size_t n, size_t size)
{
    return snap_own(s, xcalloc(n ? n : 1, size));
}

/* qsort of an array of pointers; an empty array may be NULL. */
static void sort_ptrs(void *v, size_t n, size_t size, int (*cmp)(const void *, const void *))
{
    if (n > 1)
        qsort(v, n, size, cmp);
}

/* ---- backends ------------------------------------------------------------------ */

void gw_backend_ref(gw_backend_t *b)
{
    atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
}

void gw_backend_unref(gw_backend_t *b)
{
    if (b && atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1)
        free(b);
}

void gw_backend_failed(gw_backend_t *b, uint64_t now_ms, uint64_t base_ms, uint64_t max_ms)
{
    unsigned fails = atomic_fetch_add_explicit(&b->fails, 1, memory_order_relaxed) + 1;
    uint64_t delay = base_ms;
    for (unsigned i = 1; i < fails && delay < max_ms; i++)
        delay *= 2;
    if (delay > max_ms)
        delay = max_ms;
    atomic_store_explicit(&b->eject_until_ms, now_ms + delay, memory_order_relaxed);
}

void gw_backend_succeeded(gw_backend_t *b)
{
    /* Loads first: the common case (healthy backend) then writes nothing,
     * so threads do not bounce the cache line on every response. */
    if (atomic_load_explicit(&b->fails, memory_order_relaxed))
        atomic_store_explicit(&b->fails, 0, memory_order_relaxed);
    if (atomic_load_explicit(&b->eject_until_ms, memory_order_relaxed))
        atomic_store_explicit(&b->eject_until_ms, 0, memory_order_relaxed);
}

/* "host:port" (IPv6 in brackets) into name; -EINVAL for a host that is not
 * a numeric address or a port out of range. */
static int backend_addr(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len,
                        char *name, size_t name_len)
{
    if (!host || port < 1 || port > 65535)
        return -EINVAL;
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)port);
        *len = sizeof(*in4);
        snprintf(name, name_len, "%s:%d", host, port);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        *len = sizeof(*in6);
        char txt[INET6_ADDRSTRLEN];
        inet_ntop(AF_INET6, &in6->sin6_addr, txt, sizeof(txt));
        snprintf(name, name_len, "[%s]:%d", txt, port);
        return 0;
    }
    return -EINVAL;
}

static int backend_cmp(const void *a, const void *b)
{
    return strcmp((*(gw_backend_t *const *)a)->name, (*(gw_backend_t *const *)b)->name);
}

static gw_backend_t *backends_find(gw_backend_t *const *v, size_t n, const char *name)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(v[mid]->name, name);
        if (c == 0)
            return v[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* ---- reading --------------------------------------------------------------------- */

void gw_snapshot_ref(gw_snapshot_t *s)
{
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
}

static void snapshot_free(gw_snapshot_t *s)
{
    for (size_t i = 0; i < s->n_backends; i++)
        gw_backend_unref(s->backends[i]);
    for (size_t i = 0; i < s->n_groups; i++)
        ketama_free(s->groups[i]->ring);
    for (size_t i = 0; i < s->n_allocs; i++)
        free(s->allocs[i]);
    free(s->allocs);
    free(s);
}

void gw_snapshot_unref(gw_snapshot_t *s)
{
    if (s && atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1)
        snapshot_free(s);
}

uint64_t gw_snapshot_revision(const gw_snapshot_t *s)
{
    return s->revision;
}

/* Does prefix match path at a segment boundary? */
static bool path_matches(const char *prefix, const char *path, size_t path_len)
{
    size_t n = strlen(prefix);
    if (n > path_len || memcmp(prefix, path, n) != 0)
        return false;
    if (n == path_len || prefix[n - 1] == '/')
        return true;
    char next = path[n];
    return next == '/' || next == '?' || next == '#';
}

static const gw_route_t *bucket_match(const host_bucket_t *b, const char *path, size_t path_len)
{
    for (size_t i = 0; i < b->n; i++)
        if (path_matches(b->routes[i]->path, path, path_len))
            return b->routes[i];
    return NULL;
}

/* Lower-case, without ":port" and a trailing "."; 0 when it cannot match
 * (empty, too long, or an IPv6 literal's brackets unbalanced). */
static size_t host_normalize(const char *host, size_t len, char *out)
{
    if (!host)
        return 0;
    size_t end = len;
    if (len && host[0] == '[') {
        const char *rb = memchr(host, ']', len);
        if (!rb)
            return 0;
        end = (size_t)(rb - host) + 1;
    } else {
        const char *colon = memchr(host, ':', len);
        if (colon)
            end = (size_t)(colon - host);
    }
    if (end && host[end - 1] == '.')
        end--;
    if (end == 0 || end > HOST_MAX)
        return 0;
    for (size_t i = 0; i < end; i++) {
        char c = host[i];
        out[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
    }
    out[end] = '\0';
    return end;
}

static int bucket_cmp_key(const void *key, const void *elem)
{
    return strcmp(key, ((const host_bucket_t *)elem)->host);
}

const gw_route_t *gw_snapshot_match(const gw_snapshot_t *s, const char *host, size_t host_len,
                                    const char *path, size_t path_len)
{
    char h[HOST_MAX + 1];
    size_t hl = host_normalize(host, host_len, h);
    if (!path || !path_len) {
        path = "/";
        path_len = 1;
    }
    if (hl) {
        const host_bucket_t *b =
            bsearch(h, s->exact, s->n_exact, sizeof(host_bucket_t), bucket_cmp_key);
        const gw_route_t *r = b ? bucket_match(b, path, path_len) : NULL;
        if (r)
            return r;
        for (size_t i = 0; i < s->n_wild; i++) {
            const host_bucket_t *w = &s->wild[i];
            if (hl > w->host_len && memcmp(h + hl - w->host_len, w->host, w->host_len) == 0) {
                r = bucket_match(w, path, path_len);
                if (r)
                    return r;
            }
        }
    }
    return bucket_match(&s->any, path, path_len);
}

const gw_route_t *const *gw_snapshot_internal(const gw_snapshot_t *s, size_t *n)
{
    *n = s->n_internal;
    return s->internal;
}

const gw_route_t *gw_snapshot_internal_route(const gw_snapshot_t *s, int port)
{
    size_t lo = 0, hi = s->n_internal;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->internal[mid]->internal == port)
            return s->internal[mid];
        if (s->internal[mid]->internal < port)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const gw_route_t *const *gw_snapshot_routes(const gw_snapshot_t *s, size_t *n)
{
    *n = s->n_routes;
    return s->routes;
}

const gw_pool_t *const *gw_snapshot_pools(const gw_snapshot_t *s, size_t *n)
{
    *n = s->n_pools;
    return s->pools;
}

/* Pools are sorted by name (gw_builder_finish); names may hold any byte
 * but NUL, so a length-bounded compare finds the exact one. */
const gw_pool_t *gw_snapshot_pool(const gw_snapshot_t *s, const char *name, size_t name_len)
{
    size_t lo = 0, hi = s ? s->n_pools : 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const char *pn = s->pools[mid]->name;
        size_t pl = strlen(pn);
        int c = memcmp(pn, name, pl < name_len ? pl : name_len);
        if (c == 0)
            c = pl < name_len ? -1 : pl > name_len ? 1 : 0;
        if (c == 0)
            return s->pools[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const gw_pool_t *gw_route_pool(const gw_snapshot_t *s, const gw_route_t *r, const void *seed,
                               size_t seed_len)
{
    (void)s;
    const gw_group_t *g = r->group;
    if (!g)
        return r->pool;
    const char *m = seed ? ketama_pick(g->ring, seed, seed_len) : ketama_pick_random(g->ring);
    for (size_t i = 0; i < g->n; i++)
        if (g->members[i] == m)
            return g->pools[i];
    return NULL;
}

static bool ejected(const gw_backend_t *b, uint64_t now_ms)
{
    return atomic_load_explicit(&b->eject_until_ms, memory_order_relaxed) > now_ms;
}

gw_backend_t *gw_pool_pick(const gw_pool_t *p, gw_balance_t balance, const void *hash_seed,
                           size_t seed_len, uint64_t now_ms, const gw_backend_t *exclude)
{
    if (!p || p->n == 0)
        return NULL;
    size_t n = p->n;
    gw_backend_t *best = NULL;
    /* RR's cursor also rotates where least-connections starts, so ties
     * spread instead of piling onto the first backend. */
    size_t start = 0;
    if (balance != GW_BALANCE_HASH)
        start = atomic_fetch_add_explicit(&((gw_pool_t *)p)->rr, 1, memory_order_relaxed) % n;
    uint64_t seed = hash_seed ? fnv1a64(hash_seed, seed_len) : 0;
    uint64_t best_score = 0;
    unsigned best_active = 0;
    for (size_t k = 0; k < n; k++) {
        gw_backend_t *b = p->b[(start + k) % n];
        if (b == exclude || ejected(b, now_ms))
            continue;
        if (balance == GW_BALANCE_ROUNDROBIN) {
            best = b;
            break;
        }
        if (balance == GW_BALANCE_LEASTCONN) {
            unsigned a = atomic_load_explicit(&b->active, memory_order_relaxed);
            if (!best || a < best_active) {
                best = b;
                best_active = a;
            }
        } else {
            uint64_t score = mix64(seed ^ b->key);
            if (!best || score > best_score) {
                best = b;
                best_score = score;
            }
        }
    }
    if (!best) {
        /* Everything ejected: the one back soonest is the best bet. */
        uint64_t soonest = UINT64_MAX;
        for (size_t k = 0; k < n; k++) {
            gw_backend_t *b = p->b[k];
            uint64_t until = atomic_load_explicit(&b->eject_until_ms, memory_order_relaxed);
            if (b != exclude && until < soonest) {
                soonest = until;
                best = b;
            }
        }
    }
    if (best)
        gw_backend_ref(best);
    return best;
}

/* ---- building ----------------------------------------------------------------- */

/* Backends of the snapshot being built, by name: an open-addressing table
 * so a feed of thousands of endpoints builds in linear time. */
typedef struct bmap {
    gw_backend_t **slots;
    size_t cap, n;
} bmap_t;

struct gw_builder {
    gw_snapshot_t *s;
    const gw_snapshot_t *prev;
    bmap_t bm;
    /* pools by insertion; a later definition of a name replaces it */
    gw_pool_t **pools;
    size_t n_pools, cap_pools;
    gw_group_t **groups;
    size_t n_groups, cap_groups;
    gw_route_t **routes;
    size_t n_routes, cap_routes;
};

static gw_backend_t **bmap_slot(bmap_t *m, const char *name)
{
    size_t mask = m->cap - 1;
    size_t i = (size_t)fnv1a64(name, strlen(name)) & mask;
    while (m->slots[i] && strcmp(m->slots[i]->name, name) != 0)
        i = (i + 1) & mask;
    return &m->slots[i];
}

static void bmap_grow(bmap_t *m)
{
    bmap_t old = *m;
    m->cap = old.cap ? old.cap * 2 : 64;
    m->slots = xcalloc(m->cap, sizeof(gw_backend_t *));
    m->n = 0;
    for (size_t i = 0; i < old.cap; i++) {
        if (old.slots[i]) {
            *bmap_slot(m, old.slots[i]->name) = old.slots[i];
            m->n++;
        }
    }
    free(old.slots);
}

/* The backend for host:port in the new snapshot: the same object as in
 * the previous snapshot when it was there (counters carry over). Holds
 * one reference for the snapshot. NULL for a non-numeric host. */
static gw_backend_t *builder_backend(gw_builder_t *b, const char *host, int port)
{
    struct sockaddr_storage ss;
    socklen_t len;
    char name[GW_BACKEND_NAME_MAX];
    if (backend_addr(host, port, &ss, &len, name, sizeof(name)) < 0)
        return NULL;
    if ((b->bm.n + 1) * 2 > b->bm.cap)
        bmap_grow(&b->bm);
    gw_backend_t **slot = bmap_slot(&b->bm, name);
    if (*slot)
        return *slot;
    gw_backend_t *be = b->prev ? backends_find(b->prev->backends, b->prev->n_backends, name) : NULL;
    if (be) {
        gw_backend_ref(be);
    } else {
        be = xcalloc(1, sizeof(*be));
        atomic_init(&be->refs, 1);
        be->addr = ss;
        be->addrlen = len;
        memcpy(be->name, name, sizeof(name));
        be->key = mix64(fnv1a64(name, strlen(name)));
    }
    *slot = be;
    b->bm.n++;
    return be;
}

gw_builder_t *gw_builder_new(const gw_snapshot_t *prev)
{
    gw_builder_t *b = xcalloc(1, sizeof(*b));
    b->s = xcalloc(1, sizeof(gw_snapshot_t));
    atomic_init(&b->s->refs, 1);
    b->prev = prev;
    return b;
}

#define GROW(arr, n, cap)                                                                          \
    do {                                                                                           \
        if ((n) == (cap)) {                                                                        \
            (cap) = (cap) ? (cap)*2 : 16;                                                          \
            (arr) = xrealloc((arr), (cap) * sizeof(*(arr)));                                       \
        }                                                                                          \
    } while (0)

static gw_pool_t *builder_find_pool(gw_builder_t *b, const char *name)
{
    for (size_t i = b->n_pools; i-- > 0;)
        if (strcmp(b->pools[i]->name, name) == 0)
            return b->pools[i];
    return NULL;
}

void gw_builder_pool_worker(gw_builder_t *b, const char *name)
{
    gw_pool_t *p = builder_find_pool(b, name);
    if (p)
        p->worker = true;
}

void gw_builder_pool(gw_builder_t *b, const char *name, const gw_endpoint_in_t *eps, size_t n)
{
    gw_pool_t *p = builder_find_pool(b, name);
    if (!p) {
        p = snap_calloc(b->s, 1, sizeof(*p));
        p->name = snap_strdup(b->s, name);
        GROW(b->pools, b->n_pools, b->cap_pools);
        b->pools[b->n_pools++] = p;
    }
    p->b = snap_calloc(b->s, n, sizeof(gw_backend_t *));
    p->n = 0;
    for (size_t i = 0; i < n; i++) {
        gw_backend_t *be = builder_backend(b, eps[i].host, eps[i].port);
        if (!be) {
            log_warn("gateway", "pool %s: endpoint %s:%d skipped (not a numeric address)", name,
                     eps[i].host ? eps[i].host : "(null)", eps[i].port);
            continue;
        }
        bool dup = false;
        for (size_t k = 0; k < p->n && !dup; k++)
            dup = p->b[k] == be;
        if (!dup)
            p->b[p->n++] = be;
    }
    sort_ptrs(p->b, p->n, sizeof(gw_backend_t *), backend_cmp);
}

int gw_builder_group(gw_builder_t *b, const char *name, const gw_group_member_in_t *m, size_t n,
                     err_t *err)
{
    ketama_member_t *km = xcalloc(n ? n : 1, sizeof(*km));
    for (size_t i = 0; i < n; i++) {
        km[i].name = m[i].pool;
        km[i].weight = m[i].weight;
    }
    err_t e = {0};
    ketama_t *ring = ketama_build(km, n, &e);
    free(km);
    if (!ring)
        return err_set(err, e.code, "group %s: %s", name, e.msg);
    gw_group_t *g = snap_calloc(b->s, 1, sizeof(*g));
    g->name = snap_strdup(b->s, name);
    g->ring = ring;
    g->n = ketama_member_count(ring);
    g->members = snap_calloc(b->s, g->n, sizeof(char *));
    g->pools = snap_calloc(b->s, g->n, sizeof(gw_pool_t *));
    for (size_t i = 0; i < g->n; i++)
        g->members[i] = ketama_member_name(ring, i);
    for (size_t i = 0; i < b->n_groups; i++) {
        if (strcmp(b->groups[i]->name, name) == 0) {
            ketama_free(b->groups[i]->ring);
            b->groups[i] = g;
            return 0;
        }
    }
    GROW(b->groups, b->n_groups, b->cap_groups);
    b->groups[b->n_groups++] = g;
    return 0;
}

static gw_group_t *builder_find_group(gw_builder_t *b, const char *name)
{
    for (size_t i = 0; i < b->n_groups; i++)
        if (strcmp(b->groups[i]->name, name) == 0)
            return b->groups[i];
    return NULL;
}

static bool route_is_external(const gw_route_t *r)
{
    return r->kind != GW_ROUTE_TCP && !(r->internal && !r->host[0]);
}

int gw_builder_route(gw_builder_t *b, const gw_route_in_t *in, err_t *err)
{
    const char *app = in->app ? in->app : "";
    if (in->internal < 0 || in->internal > 65535)
        return err_set(err, -EINVAL, "route of %s: internal port %d out of range", app,
                       in->internal);
    if (in->kind == GW_ROUTE_TCP && !in->internal)
        return err_set(err, -EINVAL, "route of %s: a TCP route needs an internal port", app);
    if (!in->group && (!in->target || !in->target[0]))
        return err_set(err, -EINVAL, "route of %s: names no target pool or group", app);
    char host[HOST_MAX + 1] = "";
    if (in->host && in->host[0]) {
        bool wild = strncmp(in->host, "*.", 2) == 0;
        size_t hl = host_normalize(in->host, strlen(in->host), host);
        if (!hl || (wild && hl < 3))
            return err_set(err, -EINVAL, "route of %s: host \"%s\" is not a host name", app,
                           in->host);
    }
    const char *path = in->kind == GW_ROUTE_TCP ? "" : (in->path && in->path[0] ? in->path : "/");
    if (in->kind != GW_ROUTE_TCP && path[0] != '/')
        return err_set(err, -EINVAL, "route of %s: path \"%s\" does not start with /", app, path);
    for (size_t i = 0; i < b->n_routes; i++) {
        const gw_route_t *o = b->routes[i];
        if (in->internal && o->internal == in->internal)
            return err_set(err, -EEXIST, "route of %s: internal port %d is taken by %s", app,
                           in->internal, o->app[0] ? o->app : "a static route");
        if (!in->internal && !o->internal && in->kind != GW_ROUTE_TCP &&
            strcmp(o->host, host) == 0 && strcmp(o->path, path) == 0)
            return err_set(err, -EEXIST, "route of %s: %s%s is taken by %s", app,
                           host[0] ? host : "(any host)", path,
                           o->app[0] ? o->app : "a static route");
    }
    gw_snapshot_t *s = b->s;
    gw_route_t *r = snap_calloc(s, 1, sizeof(*r));
    r->kind = in->kind;
    r->app = snap_strdup(s, app);
    r->host = snap_strdup(s, host);
    r->path = snap_strdup(s, path);
    r->internal = in->internal;
    if (in->group) {
        r->group_name = snap_strdup(s, in->group);
    } else {
        gw_pool_t *p = builder_find_pool(b, in->target);
        if (!p) {
            gw_builder_pool(b, in->target, NULL, 0);
            p = builder_find_pool(b, in->target);
        }
        r->pool = p;
    }
    r->balance = in->balance;
    r->sticky = in->sticky;
    r->sticky_name =
        in->sticky != GW_STICKY_NONE && in->sticky_name ? snap_strdup(s, in->sticky_name) : NULL;
    if (r->sticky_name == NULL)
        r->sticky = GW_STICKY_NONE;
    r->event = in->event ? snap_strdup(s, in->event) : NULL;
    r->max_body = in->max_body;
    if (in->n_add_headers) {
        const char **h = snap_calloc(s, in->n_add_headers, sizeof(char *));
        for (size_t i = 0; i < in->n_add_headers; i++)
            h[i] = snap_strdup(s, in->add_headers[i]);
        r->add_headers = h;
        r->n_add_headers = in->n_add_headers;
    }
    GROW(b->routes, b->n_routes, b->cap_routes);
    b->routes[b->n_routes++] = r;
    return 0;
}

static int pool_cmp(const void *a, const void *b)
{
    return strcmp((*(const gw_pool_t *const *)a)->name, (*(const gw_pool_t *const *)b)->name);
}

static int group_cmp(const void *a, const void *b)
{
    return strcmp((*(gw_group_t *const *)a)->name, (*(gw_group_t *const *)b)->name);
}

/* Longest path first, then path text, so a bucket scans most specific
 * first and the order is reproducible. */
static int route_path_cmp(const void *a, const void *b)
{
    const gw_route_t *x = *(const gw_route_t *const *)a, *y = *(const gw_route_t *const *)b;
    size_t lx = strlen(x->path), ly = strlen(y->path);
    if (lx != ly)
        return lx > ly ? -1 : 1;
    return strcmp(x->path, y->path);
}

/* Exact hosts by name, then wildcards by suffix length (longest first),
 * then any-host; within a host, route_path_cmp. */
static int route_order(const gw_route_t *r)
{
    if (!r->host[0])
        return 2;
    return strncmp(r->host, "*.", 2) == 0 ? 1 : 0;
}

static int route_match_cmp(const void *a, const void *b)
{
    const gw_route_t *x = *(const gw_route_t *const *)a, *y = *(const gw_route_t *const *)b;
    int ox = route_order(x), oy = route_order(y);
    if (ox != oy)
        return ox - oy;
    if (ox == 1) {
        size_t lx = strlen(x->host), ly = strlen(y->host);
        if (lx != ly)
            return lx > ly ? -1 : 1;
    }
    int c = strcmp(x->host, y->host);
    return c ? c : route_path_cmp(a, b);
}

static int route_port_cmp(const void *a, const void *b)
{
    return (*(const gw_route_t *const *)a)->internal - (*(const gw_route_t *const *)b)->internal;
}

/* Group the match-ordered external routes into host buckets. */
static void snapshot_index(gw_snapshot_t *s)
{
    size_t n_ext = 0;
    for (size_t i = 0; i < s->n_routes; i++)
        if (route_is_external(s->routes[i]))
            n_ext++;
    s->exact = snap_calloc(s, n_ext, sizeof(host_bucket_t));
    s->wild = snap_calloc(s, n_ext, sizeof(host_bucket_t));
    s->any.routes = snap_calloc(s, n_ext, sizeof(gw_route_t *));
    s->any.host = "";
    /* every route lands in exactly one bucket, so one array of n_ext
     * pointers backs them all */
    const gw_route_t **slots = snap_calloc(s, n_ext, sizeof(gw_route_t *));
    size_t used = 0;
    for (size_t i = 0; i < s->n_routes; i++) {
        const gw_route_t *r = s->routes[i];
        if (!route_is_external(r))
            continue;
        int o = route_order(r);
        if (o == 2) {
            s->any.routes[s->any.n++] = r;
            continue;
        }
        host_bucket_t *v = o == 0 ? s->exact : s->wild;
        size_t *nv = o == 0 ? &s->n_exact : &s->n_wild;
        const char *key = o == 0 ? r->host : r->host + 1; /* ".example.com" */
        if (*nv == 0 || strcmp(v[*nv - 1].host, key) != 0) {
            v[*nv].host = key;
            v[*nv].host_len = strlen(key);
            v[*nv].routes = slots + used;
            v[*nv].n = 0;
            (*nv)++;
        }
        v[*nv - 1].routes[v[*nv - 1].n++] = r;
        used++;
    }
}

gw_snapshot_t *gw_builder_finish(gw_builder_t *b, uint64_t revision)
{
    gw_snapshot_t *s = b->s;
    s->revision = revision;
    sort_ptrs(b->pools, b->n_pools, sizeof(gw_pool_t *), pool_cmp);
    s->pools = snap_own(s, b->pools);
    s->n_pools = b->n_pools;
    b->pools = NULL;

    s->backends = snap_calloc(s, b->bm.n, sizeof(gw_backend_t *));
    for (size_t i = 0; i < b->bm.cap; i++)
        if (b->bm.slots[i])
            s->backends[s->n_backends++] = b->bm.slots[i];
    sort_ptrs(s->backends, s->n_backends, sizeof(gw_backend_t *), backend_cmp);
    free(b->bm.slots);
    b->bm.slots = NULL;

    sort_ptrs(b->groups, b->n_groups, sizeof(gw_group_t *), group_cmp);
    s->groups = snap_own(s, b->groups);
    s->n_groups = b->n_groups;
    b->groups = NULL;
    for (size_t i = 0; i < s->n_groups; i++) {
        gw_group_t *g = s->groups[i];
        for (size_t k = 0; k < g->n; k++) {
            gw_pool_t key = {.name = g->members[k]};
            const gw_pool_t *kp = &key;
            const gw_pool_t **p =
                s->n_pools ? bsearch(&kp, s->pools, s->n_pools, sizeof(gw_pool_t *), pool_cmp)
                           : NULL;
            g->pools[k] = p ? *p : NULL;
        }
    }

    for (size_t i = 0; i < b->n_routes; i++) {
        gw_route_t *r = b->routes[i];
        if (r->group_name) {
            gw_builder_t tmp = {.groups = s->groups, .n_groups = s->n_groups};
            r->group = builder_find_group(&tmp, r->group_name);
        }
    }
    sort_ptrs(b->routes, b->n_routes, sizeof(gw_route_t *), route_match_cmp);
    s->routes = snap_own(s, b->routes);
    s->n_routes = b->n_routes;
    b->routes = NULL;
    snapshot_index(s);

    s->internal = snap_calloc(s, s->n_routes, sizeof(gw_route_t *));
    for (size_t i = 0; i < s->n_routes; i++)
        if (s->routes[i]->internal)
            s->internal[s->n_internal++] = s->routes[i];
    sort_ptrs(s->internal, s->n_internal, sizeof(gw_route_t *), route_port_cmp);
    free(b);
    return s;
}

void gw_builder_free(gw_builder_t *b)
{
    if (!b)
        return;
    for (size_t i = 0; i < b->bm.cap; i++)
        if (b->bm.slots[i])
            gw_backend_unref(b->bm.slots[i]);
    free(b->bm.slots);
    for (size_t i = 0; i < b->n_groups; i++)
        ketama_free(b->groups[i]->ring);
    free(b->pools);
    free(b->groups);
    free(b->routes);
    b->s->n_backends = 0;
    snapshot_free(b->s);
    free(b);
}
