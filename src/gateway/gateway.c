#include "gateway/gateway.h"

#include "core/alloc.h"
#include "core/buf.h"
#include "core/json.h"
#include "core/log.h"
#include "core/str.h"
#include "spec/spec.h"
#include "http/server.h"
#include "locator/meta.h"
#include "locator/table.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Most response headers one route adds (the spec allows 32). */
#define GW_ROUTE_HEADERS_MAX 32
/* Most addresses one static route takes. */
#define GW_STATIC_EPS_MAX 64
/* How often pending drain confirmations look at the proxy threads. */
#define GW_CONFIRM_POLL_MS            1
#define GW_CONFIRM_TIMEOUT_DEFAULT_MS 10000
/* The node id the metalocator link is known by in logs and /status. */
#define GW_UPSTREAM_ID "metalocator"

typedef struct gw_static {
    char *buf; /* backing store of host, path and eps[].host */
    const char *host, *path;
    gw_endpoint_in_t eps[GW_STATIC_EPS_MAX];
    size_t n;
    char pool[32];
} gw_static_t;

typedef struct gw_group_rec {
    char *name;
    gw_group_member_in_t *m; /* m[i].pool owned */
    size_t n;
} gw_group_rec_t;

/* A drain confirmation the metalocator waits for. */
typedef struct gw_waiter {
    struct gw_waiter *next;
    uint64_t revision;
    uint64_t deadline_ms;
    loc_confirm_fn cb;
    void *data;
} gw_waiter_t;

struct gateway {
    uv_loop_t *loop;
    gateway_opts_t opts;
    gw_proxy_t *proxy;
    loc_table_t *feed;
    meta_t *meta;
    int feed_listener;
    gw_static_t *statics;
    size_t n_statics;
    gw_group_rec_t *groups;
    size_t n_groups;
    uint64_t groups_rev; /* bumped per group change, so a group change rebuilds */

    gw_snapshot_t *snap; /* the newest given to the proxy (our reference) */
    uv_timer_t rebuild;  /* 0 ms: coalesces a burst of changes into one build */
    bool rebuild_pending;
    char last_problem[512]; /* last route conflict logged, so each is logged once */

    gw_waiter_t *waiters;
    uv_timer_t poll;

    http_server_t *admin;

    /* HTTPS certificates (NULL without HTTPS) and their reloads */
    gw_tls_ctx_t *tls;
    uv_timer_t tls_timer;
    uv_signal_t sighup;
    uv_work_t tls_work;
    bool tls_busy;      /* a reload runs in the thread pool */
    bool tls_again;     /* another was asked for meanwhile */
    bool tls_wait_stop; /* gateway_stop counts the running reload as a part */
    const char *tls_why;
    int tls_rc;
    err_t tls_err;

    int open_handles;
    bool stopping;
    void (*done)(void *data);
    void *done_data;
};

/* ---- static routes ------------------------------------------------------------ */

/* "ip:port" or "[ipv6]:port" in place: host is NUL-terminated inside s. */
static int parse_addr(char *s, gw_endpoint_in_t *ep, err_t *err)
{
    char *port;
    if (s[0] == '[') {
        char *rb = strchr(s, ']');
        if (!rb || rb[1] != ':')
            return err_set(err, -EINVAL, "address \"%s\": expected [ipv6]:port", s);
        *rb = '\0';
        ep->host = s + 1;
        port = rb + 2;
    } else {
        char *colon = strrchr(s, ':');
        if (!colon || colon == s)
            return err_set(err, -EINVAL, "address \"%s\": expected ip:port", s);
        *colon = '\0';
        ep->host = s;
        port = colon + 1;
    }
    int64_t p;
    if (str_to_i64(port, 1, 65535, &p) < 0)
        return err_set(err, -EINVAL, "address \"%s\": port \"%s\" is not 1..65535", s, port);
    ep->port = (int)p;
    return 0;
}

int gateway_static_route_parse(const char *spec, char *buf, const char **host, const char **path,
                               gw_endpoint_in_t *eps, size_t max_eps, size_t *n_eps, err_t *err)
{
    const char *eq = strchr(spec, '=');
    if (!eq)
        return err_set(err, -EINVAL, "route \"%s\": expected [HOST][/PATH]=ADDR[,ADDR...]", spec);
    /* buf: host NUL path NUL addresses NUL */
    size_t left = (size_t)(eq - spec);
    const char *slash = memchr(spec, '/', left);
    size_t hl = slash ? (size_t)(slash - spec) : left;
    char *p = buf;
    memcpy(p, spec, hl);
    p[hl] = '\0';
    *host = p;
    p += hl + 1;
    if (slash) {
        memcpy(p, slash, left - hl);
        p[left - hl] = '\0';
    } else {
        memcpy(p, "/", 2);
    }
    *path = p;
    p += strlen(p) + 1;
    memcpy(p, eq + 1, strlen(eq + 1) + 1);
    *n_eps = 0;
    char *save = NULL;
    for (char *a = strtok_r(p, ",", &save); a; a = strtok_r(NULL, ",", &save)) {
        if (*n_eps == max_eps)
            return err_set(err, -EINVAL, "route \"%s\": more than %zu addresses", spec, max_eps);
        if (parse_addr(a, &eps[*n_eps], err) < 0)
            return err_wrap(err, -EINVAL, "route \"%s\"", spec);
        (*n_eps)++;
    }
    if (*n_eps == 0)
        return err_set(err, -EINVAL, "route \"%s\": no address after '='", spec);
    return 0;
}

/* ---- routes from the table ----------------------------------------------------- */

static bool obj_is_str(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_STR;
}

/* A str field as a NUL-terminated copy in buf; NULL when absent or not a
 * string (or too long). */
static const char *field_str(const msgpack_object_map *m, const char *key, char *buf, size_t cap)
{
    for (uint32_t i = 0; i < m->size; i++) {
        const msgpack_object *k = &m->ptr[i].key, *v = &m->ptr[i].val;
        if (obj_is_str(k) && k->via.str.size == strlen(key) &&
            memcmp(k->via.str.ptr, key, k->via.str.size) == 0) {
            if (!obj_is_str(v) || v->via.str.size >= cap)
                return NULL;
            memcpy(buf, v->via.str.ptr, v->via.str.size);
            buf[v->via.str.size] = '\0';
            return buf;
        }
    }
    return NULL;
}

static int64_t field_int(const msgpack_object_map *m, const char *key)
{
    for (uint32_t i = 0; i < m->size; i++) {
        const msgpack_object *k = &m->ptr[i].key, *v = &m->ptr[i].val;
        if (obj_is_str(k) && k->via.str.size == strlen(key) &&
            memcmp(k->via.str.ptr, key, k->via.str.size) == 0) {
            if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 <= INT32_MAX)
                return (int64_t)v->via.u64;
            return 0;
        }
    }
    return 0;
}

static bool field_true(const msgpack_object_map *m, const char *key)
{
    for (uint32_t i = 0; i < m->size; i++) {
        const msgpack_object *k = &m->ptr[i].key, *v = &m->ptr[i].val;
        if (obj_is_str(k) && k->via.str.size == strlen(key) &&
            memcmp(k->via.str.ptr, key, k->via.str.size) == 0)
            return v->type == MSGPACK_OBJECT_BOOLEAN && v->via.boolean;
    }
    return false;
}

typedef struct build_ctx {
    gateway_t *g;
    gw_builder_t *b;
    buf_t problems; /* route conflicts of this build, logged when they change */
} build_ctx_t;

static void build_problem(build_ctx_t *c, const char *msg)
{
    if (c->problems.len)
        buf_append(&c->problems, "; ", 2);
    buf_append(&c->problems, msg, strlen(msg));
}

/* One route of entry e (a map from its attributes) into the builder. */
static void build_route(build_ctx_t *c, const loc_entry_t *e, const msgpack_object_map *rm)
{
    char host[256], path[1024], group[256], sticky[300], event[256], balance[16];
    gw_route_in_t r = {.app = e->name};
    r.host = field_str(rm, "host", host, sizeof(host));
    r.path = field_str(rm, "path", path, sizeof(path));
    r.group = field_str(rm, "group", group, sizeof(group));
    if (!r.group) {
        /* a canary of the app takes its share through the app's canary group */
        char *cg = spec_canary_group(e->name);
        for (size_t i = 0; i < c->g->n_groups && !r.group; i++)
            if (strcmp(c->g->groups[i].name, cg) == 0) {
                snprintf(group, sizeof(group), "%s", cg);
                r.group = group;
            }
        free(cg);
    }
    r.event = field_str(rm, "event", event, sizeof(event));
    r.internal = (int)field_int(rm, "internal");
    bool tcp = field_true(rm, "tcp");
    r.kind = tcp ? GW_ROUTE_TCP
                 : (e->api && strcmp(e->api, "worker") == 0 ? GW_ROUTE_WORKER : GW_ROUTE_HTTP);
    const char *bal = field_str(rm, "balance", balance, sizeof(balance));
    if (bal && strcmp(bal, "leastconn") == 0)
        r.balance = GW_BALANCE_LEASTCONN;
    else if (bal && strcmp(bal, "hash") == 0)
        r.balance = GW_BALANCE_HASH;
    const char *st = field_str(rm, "sticky", sticky, sizeof(sticky));
    if (st && strncmp(st, "header:", 7) == 0) {
        r.sticky = GW_STICKY_HEADER;
        r.sticky_name = st + 7;
    } else if (st && strncmp(st, "cookie:", 7) == 0) {
        r.sticky = GW_STICKY_COOKIE;
        r.sticky_name = st + 7;
    }
    int64_t port_index = field_int(rm, "portIndex");
    char target[1100];
    if (port_index > 0)
        snprintf(target, sizeof(target), "%s#%" PRId64, e->name, port_index);
    else
        snprintf(target, sizeof(target), "%s", e->name);
    r.target = target;
    /* "headers": {"Name": "value"} -> "Name: value" lines (the spec
     * checked them; the bound here only keeps the stack small) */
    char *hdrs[GW_ROUTE_HEADERS_MAX];
    size_t nh = 0;
    for (uint32_t i = 0; i < rm->size; i++) {
        const msgpack_object *k = &rm->ptr[i].key, *v = &rm->ptr[i].val;
        if (!obj_is_str(k) || k->via.str.size != 7 || memcmp(k->via.str.ptr, "headers", 7) ||
            v->type != MSGPACK_OBJECT_MAP)
            continue;
        for (uint32_t j = 0; j < v->via.map.size && nh < GW_ROUTE_HEADERS_MAX; j++) {
            const msgpack_object *hk = &v->via.map.ptr[j].key, *hv = &v->via.map.ptr[j].val;
            if (obj_is_str(hk) && obj_is_str(hv) && hk->via.str.size &&
                !memchr(hv->via.str.ptr, '\r', hv->via.str.size) &&
                !memchr(hv->via.str.ptr, '\n', hv->via.str.size))
                hdrs[nh++] = xasprintf("%.*s: %.*s", (int)hk->via.str.size, hk->via.str.ptr,
                                       (int)hv->via.str.size, hv->via.str.ptr);
        }
    }
    r.add_headers = (const char *const *)hdrs;
    r.n_add_headers = nh;
    err_t err = {0};
    if (gw_builder_route(c->b, &r, &err) < 0)
        build_problem(c, err.msg);
    for (size_t i = 0; i < nh; i++)
        free(hdrs[i]);
}

static int build_entry(const loc_entry_t *e, void *data)
{
    build_ctx_t *c = data;
    gw_endpoint_in_t stack[64] = {{0}};
    gw_endpoint_in_t *eps = e->n <= 64 ? stack : xcalloc(e->n, sizeof(*eps));
    for (size_t i = 0; i < e->n; i++)
        eps[i] = (gw_endpoint_in_t){e->eps[i].host, e->eps[i].port};
    gw_builder_pool(c->b, e->name, eps, e->n);
    /* a worker app's endpoints are its invocation services (gateway/bridge.h) */
    if (e->api && strcmp(e->api, "worker") == 0)
        gw_builder_pool_worker(c->b, e->name);
    if (eps != stack)
        free(eps);
    if (!e->attrs_len)
        return 0;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    if (msgpack_unpack_next(&u, e->attrs, e->attrs_len, &off) == MSGPACK_UNPACK_SUCCESS &&
        u.data.type == MSGPACK_OBJECT_MAP) {
        const msgpack_object_map *am = &u.data.via.map;
        for (uint32_t i = 0; i < am->size; i++) {
            const msgpack_object *k = &am->ptr[i].key, *v = &am->ptr[i].val;
            if (!obj_is_str(k) || k->via.str.size != 6 || memcmp(k->via.str.ptr, "routes", 6) ||
                v->type != MSGPACK_OBJECT_ARRAY)
                continue;
            for (uint32_t j = 0; j < v->via.array.size; j++)
                if (v->via.array.ptr[j].type == MSGPACK_OBJECT_MAP)
                    build_route(c, e, &v->via.array.ptr[j].via.map);
        }
    }
    msgpack_unpacked_destroy(&u);
    return 0;
}

/* A whole new snapshot from the table, the groups and the static routes.
 * Why rebuild everything: a build of a few thousand names takes well under
 * a millisecond, and a whole build can never drift from the table the way
 * incremental patches could. */
static void gateway_build(gateway_t *g)
{
    build_ctx_t c = {.g = g, .b = gw_builder_new(g->snap)};
    buf_init(&c.problems, 64 << 10);
    for (size_t i = 0; i < g->n_statics; i++) {
        gw_static_t *st = &g->statics[i];
        gw_builder_pool(c.b, st->pool, st->eps, st->n);
        gw_route_in_t r = {.app = "", .host = st->host, .path = st->path, .target = st->pool};
        err_t err = {0};
        if (gw_builder_route(c.b, &r, &err) < 0)
            build_problem(&c, err.msg);
    }
    loc_table_foreach(g->feed, build_entry, &c);
    for (size_t i = 0; i < g->n_groups; i++) {
        err_t err = {0};
        if (gw_builder_group(c.b, g->groups[i].name, g->groups[i].m, g->groups[i].n, &err) < 0)
            build_problem(&c, err.msg);
    }
    uint64_t rev = loc_table_revision(g->feed);
    gw_snapshot_t *s = gw_builder_finish(c.b, rev);
    const char *problems = c.problems.len ? c.problems.data : "";
    if (strncmp(problems, g->last_problem, sizeof(g->last_problem) - 1) != 0) {
        if (problems[0])
            log_warn("gateway", "routes not served: %s", problems);
        snprintf(g->last_problem, sizeof(g->last_problem), "%s", problems);
    }
    buf_free(&c.problems);
    gw_proxy_set_snapshot(g->proxy, s);
    gw_snapshot_unref(g->snap);
    g->snap = s;
    size_t n_routes;
    gw_snapshot_routes(s, &n_routes);
    log_debug("gateway", "snapshot at revision %" PRIu64 ": %zu routes, %zu names", rev, n_routes,
              loc_table_count(g->feed));
}

static void gateway_on_rebuild(uv_timer_t *t)
{
    gateway_t *g = t->data;
    g->rebuild_pending = false;
    gateway_build(g);
}

static void gateway_schedule(gateway_t *g)
{
    if (g->rebuild_pending || g->stopping)
        return;
    g->rebuild_pending = true;
    uv_timer_start(&g->rebuild, gateway_on_rebuild, 0, 0);
}

static void gateway_on_feed(loc_table_t *t, const loc_entry_t *e, void *data)
{
    (void)t;
    (void)e;
    gateway_schedule(data);
}

/* ---- routing groups ------------------------------------------------------------- */

static void group_rec_clear(gw_group_rec_t *r)
{
    for (size_t i = 0; i < r->n; i++)
        free((char *)r->m[i].pool);
    free(r->m);
    free(r->name);
    memset(r, 0, sizeof(*r));
}

static void gateway_on_groups(const char *node_id, const msgpack_object_map *groups, bool full,
                              void *data)
{
    (void)node_id;
    gateway_t *g = data;
    if (full) {
        for (size_t i = 0; i < g->n_groups; i++)
            group_rec_clear(&g->groups[i]);
        g->n_groups = 0;
    }
    for (uint32_t i = 0; i < groups->size; i++) {
        const msgpack_object *k = &groups->ptr[i].key;
        const msgpack_object_array *members = &groups->ptr[i].val.via.array;
        char *name = xstrndup(k->via.str.ptr, k->via.str.size);
        size_t at = g->n_groups;
        for (size_t j = 0; j < g->n_groups; j++)
            if (strcmp(g->groups[j].name, name) == 0)
                at = j;
        if (at < g->n_groups)
            group_rec_clear(&g->groups[at]);
        if (members->size == 0) {
            if (at < g->n_groups)
                g->groups[at] = g->groups[--g->n_groups];
            free(name);
            continue;
        }
        if (at == g->n_groups)
            g->groups = xrealloc(g->groups, ++g->n_groups * sizeof(gw_group_rec_t));
        gw_group_rec_t *r = &g->groups[at];
        r->name = name;
        r->n = members->size;
        r->m = xcalloc(r->n, sizeof(gw_group_member_in_t));
        for (uint32_t j = 0; j < members->size; j++) {
            const msgpack_object *mem = members->ptr[j].via.array.ptr;
            r->m[j].pool = xstrndup(mem[0].via.str.ptr, mem[0].via.str.size);
            r->m[j].weight = (uint32_t)mem[1].via.u64;
        }
    }
    g->groups_rev++;
    gateway_schedule(g);
}

/* ---- drain confirmation ----------------------------------------------------------- */

static void gateway_poll_waiters(uv_timer_t *t)
{
    gateway_t *g = t->data;
    uint64_t applied = gw_proxy_applied_revision(g->proxy);
    uint64_t now = uv_now(g->loop);
    gw_waiter_t **pp = &g->waiters;
    while (*pp) {
        gw_waiter_t *w = *pp;
        bool ok = applied >= w->revision;
        if (ok || now >= w->deadline_ms || g->stopping) {
            *pp = w->next;
            w->cb(w->revision, ok ? 1 : 0, ok ? 0 : 1, ok ? "" : "gateway proxy threads", w->data);
            free(w);
            continue;
        }
        pp = &w->next;
    }
    if (!g->waiters)
        uv_timer_stop(&g->poll);
}

static int gateway_confirm(void *ctx, uint64_t revision, uint64_t timeout_ms, loc_confirm_fn cb,
                           void *cb_data)
{
    gateway_t *g = ctx;
    if (g->stopping)
        return -ESHUTDOWN;
    /* the snapshot holding this revision is built on the next loop turn at
     * the latest (gateway_schedule ran when the table changed) */
    gw_waiter_t *w = xcalloc(1, sizeof(*w));
    w->revision = revision;
    uint64_t bound = g->opts.confirm_timeout_ms;
    w->deadline_ms = uv_now(g->loop) + (timeout_ms < bound ? timeout_ms : bound);
    w->cb = cb;
    w->data = cb_data;
    w->next = g->waiters;
    g->waiters = w;
    if (!uv_is_active((uv_handle_t *)&g->poll))
        uv_timer_start(&g->poll, gateway_poll_waiters, GW_CONFIRM_POLL_MS, GW_CONFIRM_POLL_MS);
    return 0;
}

/* ---- admin ----------------------------------------------------------------------- */

static void admin_status(gateway_t *g, http_req_t *req)
{
    json_t *root = json_object();
    json_object_set_new(root, "revision", json_integer((json_int_t)gateway_revision(g)));
    json_object_set_new(root, "applied",
                        json_integer((json_int_t)gw_proxy_applied_revision(g->proxy)));
    json_t *routes = json_array();
    size_t n = 0;
    const gw_route_t *const *rs = g->snap ? gw_snapshot_routes(g->snap, &n) : NULL;
    static const char *const kinds[] = {"http", "tcp", "worker"};
    static const char *const bals[] = {"roundrobin", "leastconn", "hash"};
    for (size_t i = 0; i < n; i++) {
        const gw_route_t *r = rs[i];
        json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s}", "app", r->app, "kind", kinds[r->kind],
                              "host", r->host, "path", r->path, "balance", bals[r->balance]);
        if (r->internal)
            json_object_set_new(o, "internal", json_integer(r->internal));
        if (r->group_name)
            json_object_set_new(o, "group", json_string(r->group_name));
        if (r->pool)
            json_object_set_new(o, "pool", json_string(r->pool->name));
        json_array_append_new(routes, o);
    }
    json_object_set_new(root, "routes", routes);
    json_t *pools = json_array();
    const gw_pool_t *const *ps = g->snap ? gw_snapshot_pools(g->snap, &n) : NULL;
    uint64_t now = gw_now_ms();
    for (size_t i = 0; i < n; i++) {
        json_t *bs = json_array();
        for (size_t k = 0; k < ps[i]->n; k++) {
            gw_backend_t *b = ps[i]->b[k];
            json_array_append_new(bs, json_pack("{s:s, s:i, s:b}", "addr", b->name, "active",
                                                (int)atomic_load(&b->active), "ejected",
                                                atomic_load(&b->eject_until_ms) > now));
        }
        json_array_append_new(pools, json_pack("{s:s, s:o}", "name", ps[i]->name, "backends", bs));
    }
    json_object_set_new(root, "pools", pools);
    if (g->meta) {
        meta_node_info_t ni;
        if (meta_node_info(g->meta, GW_UPSTREAM_ID, &ni) == 0)
            json_object_set_new(root, "metalocator",
                                json_pack("{s:s, s:s, s:I, s:s}", "addr", ni.addr, "state",
                                          meta_link_state_name(ni.state), "revision",
                                          (json_int_t)ni.revision, "last_error", ni.last_error));
    }
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS);
    http_header_t h = {"Content-Type", "application/json"};
    http_respond(req, 200, &h, 1, text, strlen(text));
    free(text);
    json_decref(root);
}

static void admin_handler(http_req_t *req, void *data)
{
    gateway_t *g = data;
    if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0) {
        http_header_t h = {"Allow", "GET, HEAD"};
        const char *msg = "only GET and HEAD are served here\n";
        http_respond(req, 405, &h, 1, msg, strlen(msg));
        return;
    }
    if (strcmp(req->path, "/metrics") == 0) {
        buf_t out;
        buf_init(&out, 64 << 20);
        gw_proxy_metrics(g->proxy, &out);
        char line[160];
        int n = snprintf(line, sizeof(line),
                         "# HELP drover_gateway_table_revision Locator table revision followed.\n"
                         "# TYPE drover_gateway_table_revision gauge\n"
                         "drover_gateway_table_revision %" PRIu64 "\n",
                         loc_table_revision(g->feed));
        buf_append(&out, line, (size_t)n);
        http_header_t h = {"Content-Type", "text/plain; version=0.0.4"};
        http_respond(req, 200, &h, 1, out.data, out.len);
        buf_free(&out);
    } else if (strcmp(req->path, "/status") == 0) {
        admin_status(g, req);
    } else if (strcmp(req->path, "/healthz") == 0) {
        http_respond(req, 200, NULL, 0, "ok\n", 3);
    } else {
        const char *msg = "not found: try /metrics, /status or /healthz\n";
        http_respond(req, 404, NULL, 0, msg, strlen(msg));
    }
}

/* ---- certificates ------------------------------------------------------------------ */

/* In the thread pool: gw_tls_ctx_reload stats and reads files, which must
 * block neither this loop (admin, metalocator) nor a proxy thread. */
static void tls_reload_work(uv_work_t *w)
{
    gateway_t *g = w->data;
    g->tls_err = (err_t){0};
    g->tls_rc = gw_tls_ctx_reload(g->tls, &g->tls_err);
}

static void tls_reload_start(gateway_t *g, const char *why);
static void gateway_part_done(void *data);

static void tls_reload_done(uv_work_t *w, int status)
{
    gateway_t *g = w->data;
    g->tls_busy = false;
    if (g->tls_wait_stop) {
        gateway_part_done(g);
        return;
    }
    /* hosts that switched and files that failed are logged by the TLS
     * layer itself; say what triggered it when someone asked */
    if (status < 0)
        log_warn("gateway", "tls: certificate reload (%s) did not run: %s", g->tls_why,
                 uv_strerror(status));
    else if (g->tls_rc < 0)
        log_warn("gateway", "tls: certificate reload (%s): %s", g->tls_why, g->tls_err.msg);
    else if (strcmp(g->tls_why, "timer") != 0)
        log_info("gateway", "tls: certificates reloaded (%s)", g->tls_why);
    if (g->tls_again && !g->stopping) {
        g->tls_again = false;
        tls_reload_start(g, "SIGHUP");
    }
}

static void tls_reload_start(gateway_t *g, const char *why)
{
    if (!g->tls || g->stopping)
        return;
    if (g->tls_busy) {
        g->tls_again = true;
        return;
    }
    g->tls_busy = true;
    g->tls_why = why;
    g->tls_work.data = g;
    if (uv_queue_work(g->loop, &g->tls_work, tls_reload_work, tls_reload_done) < 0)
        g->tls_busy = false;
}

void gateway_tls_reload(gateway_t *g)
{
    tls_reload_start(g, "requested");
}

static void tls_on_timer(uv_timer_t *t)
{
    tls_reload_start(t->data, "timer");
}

static void tls_on_sighup(uv_signal_t *h, int signum)
{
    (void)signum;
    log_info("gateway", "SIGHUP: reloading certificates");
    tls_reload_start(h->data, "SIGHUP");
}

/* ---- lifecycle --------------------------------------------------------------------- */

int gateway_http_port(const gateway_t *g)
{
    return gw_proxy_http_port(g->proxy);
}

int gateway_https_port(const gateway_t *g)
{
    return gw_proxy_https_port(g->proxy);
}

int gateway_admin_port(const gateway_t *g)
{
    return g->admin ? http_server_port(g->admin) : -1;
}

uint64_t gateway_revision(const gateway_t *g)
{
    return g->snap ? gw_snapshot_revision(g->snap) : 0;
}

static void gateway_free(gateway_t *g)
{
    for (size_t i = 0; i < g->n_statics; i++)
        free(g->statics[i].buf);
    free(g->statics);
    for (size_t i = 0; i < g->n_groups; i++)
        group_rec_clear(&g->groups[i]);
    free(g->groups);
    gw_snapshot_unref(g->snap);
    gw_proxy_free(g->proxy);
    gw_tls_ctx_free(g->tls); /* after the proxy: its connections use it */
    if (g->feed)
        loc_table_free(g->feed);
    free((char *)g->opts.uuid);
    free(g);
}

static void gateway_handle_closed(uv_handle_t *h)
{
    gateway_t *g = h->data;
    if (--g->open_handles == 0) {
        void (*done)(void *) = g->done;
        void *data = g->done_data;
        gateway_free(g);
        if (done)
            done(data);
    }
}

static void gateway_part_done(void *data)
{
    gateway_t *g = data;
    if (--g->open_handles == 0) {
        void (*done)(void *) = g->done;
        void *dd = g->done_data;
        gateway_free(g);
        if (done)
            done(dd);
    }
}

int gateway_start(uv_loop_t *loop, const gateway_opts_t *opts, gateway_t **out, err_t *err)
{
    *out = NULL;
    gateway_t *g = xcalloc(1, sizeof(*g));
    g->loop = loop;
    g->opts = *opts;
    g->opts.static_routes = NULL;
    g->opts.uuid = NULL;
    if (!g->opts.confirm_timeout_ms)
        g->opts.confirm_timeout_ms = GW_CONFIRM_TIMEOUT_DEFAULT_MS;
    if (opts->uuid) {
        g->opts.uuid = xstrdup(opts->uuid);
    } else {
        char host[UV_MAXHOSTNAMESIZE] = "local";
        size_t n = sizeof(host);
        (void)uv_os_gethostname(host, &n);
        g->opts.uuid = xasprintf("gateway-%s", host);
    }
    g->statics = xcalloc(opts->n_static ? opts->n_static : 1, sizeof(gw_static_t));
    for (size_t i = 0; i < opts->n_static; i++) {
        gw_static_t *st = &g->statics[i];
        st->buf = xmalloc(strlen(opts->static_routes[i]) + 3);
        g->n_statics++;
        if (gateway_static_route_parse(opts->static_routes[i], st->buf, &st->host, &st->path,
                                       st->eps, GW_STATIC_EPS_MAX, &st->n, err) < 0) {
            gateway_free(g);
            return err->code ? err->code : -EINVAL;
        }
        snprintf(st->pool, sizeof(st->pool), "static:%zu", i);
    }
    g->feed = loc_table_new();
    g->opts.certs = NULL;
    g->opts.proxy.tls = NULL;
    if (opts->proxy.https_addr) {
        if (opts->n_certs == 0) {
            gateway_free(g);
            return err_set(err, -EINVAL, "https %s: no certificates given", opts->proxy.https_addr);
        }
        int trc = gw_tls_ctx_new(opts->certs, opts->n_certs, &g->tls, err);
        if (trc < 0) {
            gateway_free(g);
            return trc;
        }
        g->opts.proxy.tls = g->tls;
    }
    int rc = gw_proxy_start(&g->opts.proxy, &g->proxy, err);
    if (rc < 0) {
        gateway_free(g);
        return rc;
    }
    if (opts->admin_addr) {
        http_limits_t lim;
        http_limits_default(&lim);
        rc = http_server_listen(loop, opts->admin_addr, &lim, admin_handler, g, &g->admin, err);
        if (rc < 0) {
            err_wrap(err, rc, "gateway admin");
            gw_proxy_drain(g->proxy, 0);
            gateway_free(g);
            return rc;
        }
    }
    uv_timer_init(loop, &g->rebuild);
    g->rebuild.data = g;
    uv_timer_init(loop, &g->poll);
    g->poll.data = g;
    if (g->tls) {
        uint64_t every = opts->tls_reload_ms ? opts->tls_reload_ms : 60000;
        uv_timer_init(loop, &g->tls_timer);
        g->tls_timer.data = g;
        uv_timer_start(&g->tls_timer, tls_on_timer, every, every);
        uv_unref((uv_handle_t *)&g->tls_timer);
        uv_signal_init(loop, &g->sighup);
        g->sighup.data = g;
        uv_signal_start(&g->sighup, tls_on_sighup, SIGHUP);
        uv_unref((uv_handle_t *)&g->sighup);
    }
    g->feed_listener = loc_table_listen(g->feed, gateway_on_feed, g);
    if (opts->metalocator) {
        meta_opts_t mo = {.uuid = g->opts.uuid,
                          .confirm = gateway_confirm,
                          .confirm_ctx = g,
                          .confirm_timeout_ms = g->opts.confirm_timeout_ms,
                          .on_groups = gateway_on_groups,
                          .groups_data = g};
        rc = meta_start(loop, g->feed, &mo, &g->meta, err);
        if (rc == 0)
            rc = meta_node_add(g->meta, GW_UPSTREAM_ID, opts->metalocator);
        if (rc < 0) {
            err_set(err, rc, "gateway: cannot follow metalocator \"%s\"", opts->metalocator);
            g->stopping = true;
            g->done = NULL;
            /* unwind through the normal stop path, synchronously enough */
            gateway_stop(g, 0, NULL, NULL);
            return rc;
        }
    }
    gateway_build(g); /* static routes serve at once */
    if (g->tls)
        log_info("gateway", "routing HTTP on port %d, HTTPS on port %d (%zu certificates)%s%s",
                 gateway_http_port(g), gateway_https_port(g), opts->n_certs,
                 opts->metalocator ? ", following metalocator " : " (static routes only)",
                 opts->metalocator ? opts->metalocator : "");
    else
        log_info("gateway", "routing HTTP on port %d%s%s", gateway_http_port(g),
                 opts->metalocator ? ", following metalocator " : " (static routes only)",
                 opts->metalocator ? opts->metalocator : "");
    *out = g;
    return 0;
}

void gateway_stop(gateway_t *g, uint64_t drain_ms, void (*done)(void *data), void *data)
{
    g->stopping = true;
    g->done = done;
    g->done_data = data;
    /* answer pending confirmations (as unconfirmed) before the links go */
    gateway_poll_waiters(&g->poll);
    loc_table_unlisten(g->feed, g->feed_listener);
    gw_proxy_drain(g->proxy, drain_ms);
    g->open_handles = 2;
    uv_close((uv_handle_t *)&g->rebuild, gateway_handle_closed);
    uv_close((uv_handle_t *)&g->poll, gateway_handle_closed);
    if (g->tls) {
        g->open_handles += 2;
        uv_close((uv_handle_t *)&g->tls_timer, gateway_handle_closed);
        uv_close((uv_handle_t *)&g->sighup, gateway_handle_closed);
        if (g->tls_busy) {
            /* the context is freed with the gateway: wait for the reload */
            g->open_handles++;
            g->tls_wait_stop = true;
        }
    }
    if (g->meta) {
        g->open_handles++;
        meta_stop(g->meta, gateway_part_done, g);
        g->meta = NULL;
    }
    if (g->admin) {
        g->open_handles++;
        http_server_shutdown(g->admin, 1000, gateway_part_done, g);
        g->admin = NULL;
    }
}
