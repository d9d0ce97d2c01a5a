/* The metalocator against real node locators: every test runs 1 to 3
 * loc_server_t instances on 127.0.0.1:0, each over its own table, and a
 * metalocator merging them into one table, all on one uv loop driven by
 * the test thread. Hostile node locators are raw TCP servers that write
 * scripted bytes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/buf.h"
#include "core/log.h"
#include "core/rpc.h"
#include "locator/locator.h"
#include "locator/meta.h"
#include "locator/table.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define UUID "meta-test"

/* ---- loop driving ------------------------------------------------------------ */

static uv_loop_t loop;
static uv_timer_t tick; /* keeps UV_RUN_ONCE from blocking for long */

static int64_t now_ms(void)
{
    return (int64_t)(uv_hrtime() / 1000000);
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

typedef bool (*pred_fn)(void *arg);

/* Run the loop until pred(arg) holds; fail after timeout_ms. */
static void run_until(pred_fn pred, void *arg, int64_t timeout_ms, const char *what)
{
    int64_t end = now_ms() + timeout_ms;
    while (!pred(arg)) {
        if (now_ms() > end)
            fail_msg("timed out after %" PRId64 " ms waiting for %s", timeout_ms, what);
        uv_run(&loop, UV_RUN_ONCE);
    }
}

static void run_for(int64_t ms)
{
    int64_t end = now_ms() + ms;
    while (now_ms() < end)
        uv_run(&loop, UV_RUN_ONCE);
}

static void loop_open(void)
{
    assert_int_equal(uv_loop_init(&loop), 0);
    uv_timer_init(&loop, &tick);
    uv_timer_start(&tick, on_tick, 2, 2);
}

static void on_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    fprintf(stderr, "open handle: %s\n", uv_handle_type_name(h->type));
}

/* Everything else must be closed by now: the loop has only the tick. */
static void loop_close(void)
{
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&loop);
    if (rc)
        uv_walk(&loop, on_walk, NULL);
    assert_int_equal(rc, 0);
}

/* ---- node locators ------------------------------------------------------------ */

typedef struct nd {
    loc_table_t *t;
    loc_server_t *s;
    int port;
    char addr[32];
    bool stopped;
    int acks;
    uint64_t acked;
    char ack_uuid[80];
} nd_t;

static void nd_on_ack(const char *uuid, const char *peer, uint64_t revision, void *data)
{
    nd_t *n = data;
    n->acks++;
    n->acked = revision;
    snprintf(n->ack_uuid, sizeof(n->ack_uuid), "%s", uuid);
}

/* Listen on port (0: any). The table is kept across restarts. */
static void nd_listen(nd_t *n, int port)
{
    char addr[32];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
    loc_server_opts_t o = {.node_id = "n", .on_ack = nd_on_ack, .data = n};
    err_t err = {0};
    if (loc_server_start(&loop, addr, n->t, &o, &n->s, &err) < 0)
        fail_msg("node locator: %s", err.msg);
    n->port = loc_server_port(n->s);
    snprintf(n->addr, sizeof(n->addr), "127.0.0.1:%d", n->port);
    n->stopped = false;
    n->acks = 0;
    n->acked = 0;
}

static void nd_start(nd_t *n)
{
    memset(n, 0, sizeof(*n));
    n->t = loc_table_new();
    nd_listen(n, 0);
}

static void nd_on_stopped(void *data)
{
    ((nd_t *)data)->stopped = true;
}

static bool nd_is_stopped(void *arg)
{
    return ((nd_t *)arg)->stopped;
}

/* Stop listening and serving (the table stays). */
static void nd_halt(nd_t *n)
{
    if (!n->s)
        return;
    loc_server_stop(n->s, nd_on_stopped, n);
    run_until(nd_is_stopped, n, 2000, "a node locator to stop");
    n->s = NULL;
}

static void nd_free(nd_t *n)
{
    nd_halt(n);
    loc_table_free(n->t);
    n->t = NULL;
}

/* Set `name` to endpoints host:port for each port; n == 0 removes it. */
static void tset(loc_table_t *t, const char *name, const char *host, const int *ports, size_t n,
                 int64_t version, const char *api)
{
    loc_ep_t eps[16];
    assert_true(n <= 16);
    for (size_t i = 0; i < n; i++)
        eps[i] = (loc_ep_t){.host = host, .port = ports[i], .version = version};
    loc_table_set(t, name, eps, n, version, api);
}

static void tset1(loc_table_t *t, const char *name, const char *host, int port, int64_t version)
{
    tset(t, name, host, &port, 1, version, "service");
}

/* ---- the merged table ------------------------------------------------------- */

/* "host:port host:port" of a merged entry, "" when absent. */
static const char *eps_text(loc_table_t *t, const char *name)
{
    static char out[1024];
    out[0] = '\0';
    const loc_entry_t *e = loc_table_get(t, name);
    if (!e)
        return out;
    size_t len = 0;
    for (size_t i = 0; i < e->n; i++)
        len += (size_t)snprintf(out + len, sizeof(out) - len, "%s%s:%d", i ? " " : "",
                                e->eps[i].host, e->eps[i].port);
    return out;
}

/* The whole table as "name=eps;..." text, to compare tables. */
static int dump_one(const loc_entry_t *e, void *data)
{
    buf_t *b = data;
    buf_printf(b, "%s[v%" PRId64 ",%s]=", e->name, e->version, e->api);
    for (size_t i = 0; i < e->n; i++)
        buf_printf(b, "%s%s:%d", i ? " " : "", e->eps[i].host, e->eps[i].port);
    buf_printf(b, ";");
    return 0;
}

static char *dump(loc_table_t *t)
{
    buf_t b = BUF_INIT(0);
    buf_printf(&b, "%s", "");
    loc_table_foreach(t, dump_one, &b);
    return buf_steal(&b, NULL);
}

static void assert_tables_equal(loc_table_t *a, loc_table_t *b)
{
    char *x = dump(a), *y = dump(b);
    assert_string_equal(x, y);
    free(x);
    free(y);
}

typedef struct eps_want {
    loc_table_t *t;
    const char *name;
    const char *eps;
} eps_want_t;

static bool eps_is(void *arg)
{
    eps_want_t *w = arg;
    return strcmp(eps_text(w->t, w->name), w->eps) == 0;
}

static void wait_eps(loc_table_t *t, const char *name, const char *eps, int64_t timeout_ms)
{
    eps_want_t w = {t, name, eps};
    int64_t end = now_ms() + timeout_ms;
    while (!eps_is(&w)) {
        if (now_ms() > end)
            fail_msg("%s: endpoints \"%s\", want \"%s\"", name, eps_text(t, name), eps);
        uv_run(&loop, UV_RUN_ONCE);
    }
}

/* ---- the metalocator ---------------------------------------------------------- */

static loc_table_t *merged;
static meta_t *meta;
static bool meta_done;

static void meta_open(const meta_opts_t *opts)
{
    merged = loc_table_new();
    meta_opts_t o = {.uuid = UUID};
    if (opts) {
        o = *opts;
        if (!o.uuid)
            o.uuid = UUID;
    }
    err_t err = {0};
    meta_done = false;
    if (meta_start(&loop, merged, &o, &meta, &err) < 0)
        fail_msg("meta_start: %s", err.msg);
}

static void on_meta_done(void *data)
{
    (void)data;
    meta_done = true;
}

static bool meta_is_done(void *arg)
{
    (void)arg;
    return meta_done;
}

static void meta_close(void)
{
    meta_stop(meta, on_meta_done, NULL);
    assert_false(meta_done); /* never from within meta_stop */
    run_until(meta_is_done, NULL, 2000, "the metalocator to stop");
    meta = NULL;
    loc_table_free(merged);
    merged = NULL;
}

static meta_node_info_t info(const char *id)
{
    meta_node_info_t i;
    if (meta_node_info(meta, id, &i) < 0)
        fail_msg("no node %s", id);
    return i;
}

typedef struct sync_want {
    const char *id;
    uint64_t revision;
} sync_want_t;

static bool node_synced_at(void *arg)
{
    sync_want_t *w = arg;
    meta_node_info_t i;
    return meta_node_info(meta, w->id, &i) == 0 && i.state == META_LINK_UP &&
           i.revision == w->revision;
}

/* Wait until the node's link is up and applied the node table's revision. */
static void wait_synced(const char *id, const nd_t *n)
{
    sync_want_t w = {id, loc_table_revision(n->t)};
    char what[64];
    snprintf(what, sizeof(what), "node %s in sync", id);
    run_until(node_synced_at, &w, 3000, what);
}

static void add(const char *id, nd_t *n)
{
    assert_int_equal(meta_node_add(meta, id, n->addr), 0);
    wait_synced(id, n);
}

/* Merged-table changes, in order, as "name=eps" strings. */
typedef struct rec {
    char **lines;
    size_t n, cap;
    int id;
} rec_t;

static void rec_on_change(loc_table_t *t, const loc_entry_t *e, void *data)
{
    rec_t *r = data;
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 64;
        r->lines = realloc(r->lines, r->cap * sizeof(char *));
    }
    buf_t b = BUF_INIT(0);
    buf_printf(&b, "%s=", e->name);
    for (size_t i = 0; i < e->n; i++)
        buf_printf(&b, "%s%s:%d", i ? " " : "", e->eps[i].host, e->eps[i].port);
    r->lines[r->n++] = buf_steal(&b, NULL);
}

static void rec_start(rec_t *r)
{
    memset(r, 0, sizeof(*r));
    r->id = loc_table_listen(merged, rec_on_change, r);
}

static void rec_stop(rec_t *r)
{
    loc_table_unlisten(merged, r->id);
    for (size_t i = 0; i < r->n; i++)
        free(r->lines[i]);
    free(r->lines);
}

/* ---- tests ---------------------------------------------------------------------- */

typedef struct acked_want {
    nd_t *n;
    uint64_t rev;
} acked_want_t;

static bool nd_acked(void *arg)
{
    acked_want_t *w = arg;
    return w->n->acked >= w->rev;
}

static int collect_ids(const meta_node_info_t *n, void *data)
{
    strncat(data, n->id, 2);
    return 0;
}

/* Attributes (an app's routes) travel node -> metalocator byte for byte;
 * the newest version's win, a change of attrs alone is a change, and a
 * removal drops them. */
static void pack_routes(msgpack_sbuffer *sb, const char *host)
{
    msgpack_sbuffer_init(sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_str_with_body(&pk, "routes", 6);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_str_with_body(&pk, "host", 4);
    msgpack_pack_str_with_body(&pk, host, strlen(host));
}

typedef struct attrs_want {
    const char *name;
    const msgpack_sbuffer *sb; /* NULL: no attrs */
} attrs_want_t;

static bool attrs_are(void *arg)
{
    attrs_want_t *w = arg;
    const loc_entry_t *e = loc_table_get(merged, w->name);
    if (!e)
        return false;
    if (!w->sb)
        return e->attrs_len == 0;
    return e->attrs_len == w->sb->size && memcmp(e->attrs, w->sb->data, e->attrs_len) == 0;
}

static void test_attrs(void **state)
{
    (void)state;
    loop_open();
    nd_t a, b;
    nd_start(&a);
    nd_start(&b);
    msgpack_sbuffer old, new_;
    pack_routes(&old, "old.example.com");
    pack_routes(&new_, "new.example.com");
    loc_ep_t ea = {.host = "10.0.0.1", .port = 80}, eb = {.host = "10.0.0.2", .port = 80};
    loc_table_set_attrs(a.t, "/web", &ea, 1, 1, "service", old.data, old.size);
    meta_open(NULL);
    add("a", &a);
    attrs_want_t w = {"/web", &old};
    run_until(attrs_are, &w, 2000, "attrs of version 1");

    /* b runs version 2 with new routes: those win */
    loc_table_set_attrs(b.t, "/web", &eb, 1, 2, "service", new_.data, new_.size);
    add("b", &b);
    w.sb = &new_;
    run_until(attrs_are, &w, 2000, "attrs of version 2");
    assert_string_equal(eps_text(merged, "/web"), "10.0.0.1:80 10.0.0.2:80");

    /* only the attrs change on b: still a change that reaches the merge */
    uint64_t rev = loc_table_revision(b.t);
    loc_table_set_attrs(b.t, "/web", &eb, 1, 2, "service", old.data, old.size);
    assert_int_equal(loc_table_revision(b.t), rev + 1);
    w.sb = &old;
    run_until(attrs_are, &w, 2000, "changed attrs");
    /* setting the same again is not a change */
    loc_table_set_attrs(b.t, "/web", &eb, 1, 2, "service", old.data, old.size);
    assert_int_equal(loc_table_revision(b.t), rev + 1);

    /* no attrs at all on both */
    loc_table_set(a.t, "/web", &ea, 1, 1, "service");
    loc_table_set(b.t, "/web", &eb, 1, 2, "service");
    w.sb = NULL;
    run_until(attrs_are, &w, 2000, "attrs dropped");

    msgpack_sbuffer_destroy(&old);
    msgpack_sbuffer_destroy(&new_);
    meta_close();
    nd_free(&a);
    nd_free(&b);
    loop_close();
}

static void test_merge(void **state)
{
    (void)state;
    loop_open();
    nd_t a, b, c;
    nd_start(&a);
    nd_start(&b);
    nd_start(&c);
    int p80[] = {80, 81};
    tset(a.t, "/prod/web", "10.0.0.1", p80, 2, 3, "service");
    tset1(a.t, "/prod/db", "10.0.0.1", 5432, 1);
    tset(b.t, "/prod/web", "10.0.0.2", p80, 1, 5, "worker");
    tset1(b.t, "/prod/shared", "10.9.9.9", 9000, 1); /* same endpoint on b and c */
    tset1(c.t, "/prod/api", "10.0.0.3", 8080, 7);
    tset1(c.t, "/prod/shared", "10.9.9.9", 9000, 2);
    meta_open(NULL);
    assert_string_equal(meta_uuid(meta), UUID);
    add("a", &a); /* a first: its api wins for /prod/web */
    add("b", &b);
    add("c", &c);
    assert_int_equal(meta_node_count(meta), 3);

    assert_string_equal(eps_text(merged, "/prod/web"), "10.0.0.1:80 10.0.0.1:81 10.0.0.2:80");
    const loc_entry_t *e = loc_table_get(merged, "/prod/web");
    assert_int_equal(e->version, 5);          /* the highest */
    assert_string_equal(e->api, "service");   /* a contributed it first */
    assert_string_equal(e->eps[2].node, "b"); /* credited to its node */
    assert_int_equal(e->eps[2].version, 5);
    assert_string_equal(eps_text(merged, "/prod/db"), "10.0.0.1:5432");
    assert_string_equal(eps_text(merged, "/prod/api"), "10.0.0.3:8080");
    assert_string_equal(eps_text(merged, "/prod/shared"), "10.9.9.9:9000"); /* counted once */
    assert_string_equal(loc_table_get(merged, "/prod/shared")->eps[0].node, "b");
    assert_int_equal(loc_table_count(merged), 4);

    /* Each node got acks for what it sent, from the configured uuid. */
    nd_t *all[] = {&a, &b, &c};
    for (size_t k = 0; k < 3; k++) {
        acked_want_t aw = {all[k], loc_table_revision(all[k]->t)};
        run_until(nd_acked, &aw, 2000, "acks");
        assert_string_equal(all[k]->ack_uuid, UUID);
        assert_int_equal(loc_server_subscribers(all[k]->s), 1);
    }
    meta_node_info_t i = info("a");
    assert_true(i.connected && i.synced && !i.stale);
    assert_int_equal(i.state, META_LINK_UP);
    assert_string_equal(meta_link_state_name(i.state), "up");
    assert_int_equal(i.revision, loc_table_revision(a.t));
    assert_int_equal(i.acked, loc_table_revision(a.t));
    assert_int_equal(i.names, 2);
    assert_int_equal(i.links, 1);
    assert_int_equal(i.failures, 0);
    assert_string_equal(i.last_error, "");
    assert_string_equal(i.addr, a.addr);

    /* Same address again: nothing happens (no new link). */
    assert_int_equal(meta_node_add(meta, "a", a.addr), 0);
    run_for(50);
    assert_int_equal(info("a").links, 1);
    assert_int_equal(loc_server_connections(a.s), 1);

    /* Nodes are listed in id order. */
    char ids[16] = "";
    meta_nodes_foreach(meta, collect_ids, ids);
    assert_string_equal(ids, "abc");

    meta_close();
    nd_free(&a);
    nd_free(&b);
    nd_free(&c);
    loop_close();
}

typedef struct confirm {
    bool done;
    size_t confirmed, pending;
} confirm_t;

static void on_confirm(uint64_t revision, size_t confirmed, size_t pending, const char *names,
                       void *data)
{
    confirm_t *c = data;
    c->done = true;
    c->confirmed = confirmed;
    c->pending = pending;
}

static bool confirm_done(void *arg)
{
    return ((confirm_t *)arg)->done;
}

static void test_changes_in_order(void **state)
{
    (void)state;
    loop_open();
    nd_t a, b;
    nd_start(&a);
    nd_start(&b);
    tset1(b.t, "/x", "10.0.0.2", 1, 1);
    meta_open(NULL);
    add("a", &a);
    add("b", &b);
    rec_t r;
    rec_start(&r);
    /* 50 changes in one loop turn: they leave in one write and may arrive
     * in one read; each must come out, in order. */
    for (int i = 1; i <= 50; i++)
        tset1(a.t, "/x", "10.0.0.1", 1000 + i, i);
    tset1(a.t, "/x", "10.0.0.1", 0, 0);
    loc_table_set(a.t, "/x", NULL, 0, 0, NULL);
    tset1(a.t, "/y", "10.0.0.1", 7, 1);
    uint64_t last = loc_table_revision(a.t);
    confirm_t c = {0};
    assert_int_equal(loc_server_wait_confirmed(a.s, last, 3000, on_confirm, &c), 0);
    run_until(confirm_done, &c, 3000, "the node's wait for the metalocator's ack");
    assert_int_equal(c.confirmed, 1);
    assert_int_equal(c.pending, 0);
    assert_int_equal(info("a").revision, last);

    assert_int_equal(r.n, 53);
    for (int i = 1; i <= 50; i++) {
        char want[64];
        snprintf(want, sizeof(want), "/x=10.0.0.1:%d 10.0.0.2:1", 1000 + i);
        assert_string_equal(r.lines[i - 1], want);
    }
    assert_string_equal(r.lines[50], "/x=10.0.0.1:0 10.0.0.2:1");
    assert_string_equal(r.lines[51], "/x=10.0.0.2:1"); /* b's endpoint stays */
    assert_string_equal(r.lines[52], "/y=10.0.0.1:7");
    assert_string_equal(eps_text(merged, "/x"), "10.0.0.2:1");
    rec_stop(&r);
    meta_close();
    nd_free(&a);
    nd_free(&b);
    loop_close();
}

static void test_node_remove(void **state)
{
    (void)state;
    loop_open();
    nd_t a, b;
    nd_start(&a);
    nd_start(&b);
    tset1(a.t, "/web", "10.0.0.1", 80, 1);
    tset1(a.t, "/only-a", "10.0.0.1", 81, 1);
    tset1(b.t, "/web", "10.0.0.2", 80, 2);
    tset1(b.t, "/only-b", "10.0.0.2", 82, 1);
    meta_open(NULL);
    add("a", &a);
    add("b", &b);
    assert_string_equal(eps_text(merged, "/web"), "10.0.0.1:80 10.0.0.2:80");
    assert_int_equal(loc_table_get(merged, "/web")->version, 2);

    meta_node_remove(meta, "b"); /* at once, no loop turn needed */
    assert_string_equal(eps_text(merged, "/web"), "10.0.0.1:80");
    assert_int_equal(loc_table_get(merged, "/web")->version, 1);
    assert_string_equal(eps_text(merged, "/only-b"), "");
    assert_string_equal(eps_text(merged, "/only-a"), "10.0.0.1:81");
    assert_int_equal(meta_node_count(meta), 1);
    meta_node_info_t i;
    assert_int_equal(meta_node_info(meta, "b", &i), -ENOENT);
    meta_node_remove(meta, "nope"); /* unknown: ignored */

    /* b's locator sees its subscriber go away. */
    while (loc_server_subscribers(b.s) != 0)
        uv_run(&loop, UV_RUN_ONCE);
    /* b's later changes do not reach the merged table. */
    tset1(b.t, "/later", "10.0.0.2", 83, 1);
    run_for(50);
    assert_string_equal(eps_text(merged, "/later"), "");
    /* Added again, it resyncs. */
    add("b", &b);
    assert_string_equal(eps_text(merged, "/later"), "10.0.0.2:83");
    assert_string_equal(eps_text(merged, "/web"), "10.0.0.1:80 10.0.0.2:80");

    meta_close();
    nd_free(&a);
    nd_free(&b);
    loop_close();
}

static bool not_connected(void *arg)
{
    meta_node_info_t i;
    return meta_node_info(meta, arg, &i) == 0 && !i.connected;
}

static void test_stale_grace(void **state)
{
    (void)state;
    loop_open();
    nd_t a, b;
    nd_start(&a);
    nd_start(&b);
    tset1(a.t, "/web", "10.0.0.1", 80, 1);
    tset1(a.t, "/only-a", "10.0.0.1", 81, 1);
    tset1(b.t, "/web", "10.0.0.2", 80, 1);
    meta_opts_t o = {.stale_ms = 300, .backoff_start_ms = 20, .backoff_max_ms = 40};
    meta_open(&o);
    add("a", &a);
    add("b", &b);

    int64_t t0 = now_ms();
    nd_halt(&a); /* the node's locator goes away */
    run_until(not_connected, "a", 2000, "the link to notice");
    meta_node_info_t i = info("a");
    assert_true(i.stale);
    assert_true(i.failures >= 1);
    assert_string_not_equal(i.last_error, "");
    assert_int_equal(i.names, 2);
    /* Kept during the grace, while the link keeps retrying. */
    run_for(150);
    assert_string_equal(eps_text(merged, "/web"), "10.0.0.1:80 10.0.0.2:80");
    assert_string_equal(eps_text(merged, "/only-a"), "10.0.0.1:81");
    assert_true(info("a").failures >= 2);
    /* Then dropped; b's stay. */
    wait_eps(merged, "/only-a", "", 2000);
    int64_t gone = now_ms() - t0;
    assert_true(gone >= 290);
    assert_true(gone < 1500);
    assert_string_equal(eps_text(merged, "/web"), "10.0.0.2:80");
    i = info("a");
    assert_false(i.stale);
    assert_int_equal(i.names, 0);
    assert_int_equal(meta_node_count(meta), 2); /* still followed */

    /* The locator comes back on the same port: the retries find it and
     * the node's endpoints return. */
    nd_listen(&a, a.port);
    wait_eps(merged, "/only-a", "10.0.0.1:81", 2000);
    assert_string_equal(eps_text(merged, "/web"), "10.0.0.1:80 10.0.0.2:80");
    assert_int_equal(info("a").links, 2);

    meta_close();
    nd_free(&a);
    nd_free(&b);
    loop_close();
}

static void test_restart_resync(void **state)
{
    (void)state;
    loop_open();
    nd_t a;
    nd_start(&a);
    tset1(a.t, "/same", "10.0.0.1", 80, 1);
    tset1(a.t, "/going", "10.0.0.1", 81, 1);
    tset1(a.t, "/moving", "10.0.0.1", 82, 1);
    meta_opts_t o = {.stale_ms = 400, .backoff_start_ms = 20, .backoff_max_ms = 40};
    meta_open(&o);
    add("a", &a);
    uint64_t first_rev = loc_table_revision(a.t);
    assert_true(first_rev >= 3);

    /* The agent restarts: a new locator on a new port, with a fresh table
     * (revisions start over) that differs from the old one. */
    nd_halt(&a);
    run_until(not_connected, "a", 2000, "the link to notice");
    loc_table_free(a.t);
    a.t = loc_table_new();
    tset1(a.t, "/same", "10.0.0.1", 80, 1);
    tset1(a.t, "/moving", "10.0.0.1", 92, 1);
    tset1(a.t, "/new", "10.0.0.1", 83, 1);
    nd_listen(&a, 0);
    rec_t r;
    rec_start(&r);
    assert_int_equal(meta_node_add(meta, "a", a.addr), 0);
    assert_true(info("a").state != META_LINK_UP);
    wait_synced("a", &a);
    /* Resynced well before stale_ms: the names the node lost are gone, the
     * unchanged one was never touched. */
    assert_string_equal(eps_text(merged, "/going"), "");
    assert_string_equal(eps_text(merged, "/moving"), "10.0.0.1:92");
    assert_string_equal(eps_text(merged, "/new"), "10.0.0.1:83");
    assert_string_equal(eps_text(merged, "/same"), "10.0.0.1:80");
    assert_int_equal(r.n, 3);
    for (size_t k = 0; k < r.n; k++)
        assert_null(strstr(r.lines[k], "/same"));
    meta_node_info_t i = info("a");
    uint64_t failures = i.failures;
    assert_false(i.stale);
    assert_int_equal(i.revision, 3);
    assert_int_equal(i.links, 2);
    assert_string_equal(i.addr, a.addr);
    rec_stop(&r);

    /* The old address is not retried any more: changes on the new one
     * flow. The stale grace that began with the outage is over: nothing
     * is dropped when it would have ended. */
    tset1(a.t, "/new", "10.0.0.1", 84, 2);
    wait_eps(merged, "/new", "10.0.0.1:84", 2000);
    run_for(450);
    assert_string_equal(eps_text(merged, "/same"), "10.0.0.1:80");
    assert_int_equal(info("a").names, 3);
    assert_int_equal(info("a").failures, failures);

    meta_close();
    nd_free(&a);
    loop_close();
}

/* ---- a downstream subscriber that acks when told to ----------------------------- */

typedef struct sub {
    int fd;
    rpc_decoder_t dec;
    uint64_t rev; /* highest revision received */
    int writes;
} sub_t;

static void sub_open(sub_t *s, int port)
{
    memset(s, 0, sizeof(*s));
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(s->fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(0x7f000001);
    assert_int_equal(connect(s->fd, (struct sockaddr *)&a, sizeof(a)), 0);
    rpc_decoder_init(&s->dec, 1 << 20);
    buf_t out = BUF_INIT(0);
    assert_int_equal(rpc_encode(&out, 1, RPC_LOCATOR_CONNECT, "s", "router-1"), 0);
    assert_int_equal(send(s->fd, out.data, out.len, 0), (ssize_t)out.len);
    buf_free(&out);
}

/* Take what arrived without blocking (the loop runs between calls). */
static bool sub_poll(void *arg)
{
    sub_t *s = arg;
    char b[65536];
    ssize_t n = recv(s->fd, b, sizeof(b), MSG_DONTWAIT);
    if (n > 0)
        rpc_decoder_feed(&s->dec, b, (size_t)n);
    rpc_msg_t m;
    err_t err;
    while (rpc_decoder_next(&s->dec, &m, &err) == 1) {
        const char *v;
        size_t len;
        if (m.type == RPC_WRITE && rpc_msg_header(&m, "revision", &v, &len) == 0) {
            s->rev = strtoull(v, NULL, 10);
            s->writes++;
        }
    }
    return false;
}

typedef struct sub_want {
    sub_t *s;
    uint64_t rev;
} sub_want_t;

static bool sub_has(void *arg)
{
    sub_want_t *w = arg;
    sub_poll(w->s);
    return w->s->rev >= w->rev && w->s->writes > 0;
}

static void sub_ack(sub_t *s, uint64_t rev)
{
    buf_t out = BUF_INIT(0);
    assert_int_equal(rpc_encode(&out, 1, LOC_ACK, "U", rev), 0);
    assert_int_equal(send(s->fd, out.data, out.len, 0), (ssize_t)out.len);
    buf_free(&out);
}

static void sub_close(sub_t *s)
{
    close(s->fd);
    rpc_decoder_free(&s->dec);
}

static bool ds_has_subscriber(void *arg)
{
    return loc_server_subscribers(arg) == 1;
}

static void test_downstream_confirmation(void **state)
{
    (void)state;
    loop_open();
    nd_t a;
    nd_start(&a);
    tset1(a.t, "/web", "10.0.0.1", 80, 1);
    tset1(a.t, "/web", "10.0.0.1", 81, 1);
    /* The metalocator's own locator, serving the merged table. */
    loc_table_t *mt = loc_table_new();
    loc_server_t *ds = NULL;
    err_t err = {0};
    assert_int_equal(loc_server_start(&loop, "127.0.0.1:0", mt, NULL, &ds, &err), 0);
    merged = mt;
    meta_opts_t o = {.uuid = UUID, .downstream = ds, .confirm_timeout_ms = 5000};
    assert_int_equal(meta_start(&loop, merged, &o, &meta, &err), 0);
    meta_done = false;
    sub_t router;
    sub_open(&router, loc_server_port(ds));
    run_until(ds_has_subscriber, ds, 2000, "the router to subscribe");
    assert_int_equal(meta_node_add(meta, "a", a.addr), 0);
    wait_synced("a", &a);
    sub_want_t sw = {&router, loc_table_revision(mt)};
    run_until(sub_has, &sw, 2000, "the router to get the node's endpoints");
    /* Not acked to the node until the router acks. */
    run_for(100);
    assert_int_equal(a.acks, 0);
    sub_ack(&router, router.rev);
    acked_want_t aw = {&a, loc_table_revision(a.t)};
    run_until(nd_acked, &aw, 2000, "the node to get the metalocator's ack");

    /* A drain on the node: remove the endpoint, wait for confirmation. */
    tset1(a.t, "/web", "10.0.0.1", 81, 1);
    loc_table_set(a.t, "/web", NULL, 0, 0, NULL);
    uint64_t drain_rev = loc_table_revision(a.t);
    confirm_t c = {0};
    assert_int_equal(loc_server_wait_confirmed(a.s, drain_rev, 5000, on_confirm, &c), 0);
    wait_eps(mt, "/web", "", 2000);
    sw.rev = loc_table_revision(mt);
    run_until(sub_has, &sw, 2000, "the router to see the removal");
    run_for(150); /* the router holds its ack: the drain must wait */
    assert_false(c.done);
    assert_true(a.acked < drain_rev);
    assert_int_equal(info("a").acked, a.acked);
    sub_ack(&router, router.rev);
    run_until(confirm_done, &c, 2000, "the drain to complete after the router's ack");
    assert_int_equal(c.confirmed, 1);
    assert_int_equal(c.pending, 0);
    assert_int_equal(a.acked, drain_rev);

    /* A router that goes away counts as confirmed (the server's rule). */
    tset1(a.t, "/web", "10.0.0.1", 82, 1);
    drain_rev = loc_table_revision(a.t);
    wait_eps(mt, "/web", "10.0.0.1:82", 2000);
    run_for(50);
    assert_true(a.acked < drain_rev);
    sub_close(&router);
    aw.rev = drain_rev;
    run_until(nd_acked, &aw, 2000, "the ack once the router left");

    meta_stop(meta, on_meta_done, NULL);
    run_until(meta_is_done, NULL, 2000, "the metalocator to stop");
    loc_server_stop(ds, NULL, NULL);
    run_for(20);
    loc_table_free(mt);
    merged = NULL;
    nd_free(&a);
    loop_close();
}

/* A downstream wait that times out with the router silent: the node's
 * revision is not acked, so the node's own drain names the metalocator. */
static void test_downstream_timeout(void **state)
{
    (void)state;
    loop_open();
    nd_t a;
    nd_start(&a);
    tset1(a.t, "/web", "10.0.0.1", 80, 1);
    loc_table_t *mt = loc_table_new();
    loc_server_t *ds = NULL;
    err_t err = {0};
    assert_int_equal(loc_server_start(&loop, "127.0.0.1:0", mt, NULL, &ds, &err), 0);
    merged = mt;
    meta_opts_t o = {.uuid = UUID, .downstream = ds, .confirm_timeout_ms = 100};
    assert_int_equal(meta_start(&loop, merged, &o, &meta, &err), 0);
    sub_t router;
    sub_open(&router, loc_server_port(ds));
    run_until(ds_has_subscriber, ds, 2000, "the router to subscribe");
    add("a", &a);
    tset1(a.t, "/web", "10.0.0.1", 81, 1);
    uint64_t rev = loc_table_revision(a.t);
    confirm_t c = {0};
    assert_int_equal(loc_server_wait_confirmed(a.s, rev, 400, on_confirm, &c), 0);
    run_until(confirm_done, &c, 2000, "the node's drain to time out");
    assert_int_equal(c.confirmed, 0);
    assert_int_equal(c.pending, 1);
    assert_int_equal(a.acks, 0);
    /* Stop with a wait still pending at the downstream server. */
    tset1(a.t, "/web", "10.0.0.1", 82, 1);
    wait_eps(mt, "/web", "10.0.0.1:82", 2000);
    meta_done = false;
    meta_stop(meta, on_meta_done, NULL);
    run_until(meta_is_done, NULL, 2000, "the metalocator to stop");
    loc_server_stop(ds, NULL, NULL);
    sub_close(&router);
    run_for(20);
    loc_table_free(mt);
    merged = NULL;
    nd_free(&a);
    loop_close();
}

/* ---- hostile node locators ------------------------------------------------------ */

typedef struct evil_conn {
    uv_tcp_t tcp;
    struct evil *ev;
    struct evil_conn *next;
    bool closed;
} evil_conn_t;

typedef struct evil {
    uv_tcp_t listener;
    int port;
    char addr[32];
    buf_t payload;    /* written on every accepted connection */
    bool close_after; /* and then close */
    int accepted;
    evil_conn_t *conns;
} evil_t;

static void evil_conn_on_close(uv_handle_t *h)
{
    evil_conn_t *c = h->data;
    evil_t *ev = c->ev;
    for (evil_conn_t **p = &ev->conns; *p; p = &(*p)->next) {
        if (*p == c) {
            *p = c->next;
            break;
        }
    }
    free(c);
}

static void evil_conn_close(evil_conn_t *c)
{
    if (c->closed)
        return;
    c->closed = true;
    uv_close((uv_handle_t *)&c->tcp, evil_conn_on_close);
}

static void evil_on_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    static char rb[4096];
    *b = uv_buf_init(rb, sizeof(rb));
}

static void evil_on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    if (n < 0)
        evil_conn_close(st->data);
}

static void evil_on_written(uv_write_t *w, int status)
{
    evil_conn_t *c = w->data;
    free(w);
    if (c->ev->close_after)
        evil_conn_close(c);
}

static void evil_on_conn(uv_stream_t *l, int status)
{
    evil_t *ev = l->data;
    evil_conn_t *c = calloc(1, sizeof(*c));
    c->ev = ev;
    uv_tcp_init(&loop, &c->tcp);
    c->tcp.data = c;
    c->next = ev->conns;
    ev->conns = c;
    assert_int_equal(uv_accept(l, (uv_stream_t *)&c->tcp), 0);
    ev->accepted++;
    uv_read_start((uv_stream_t *)&c->tcp, evil_on_alloc, evil_on_read);
    if (ev->payload.len) {
        uv_write_t *w = calloc(1, sizeof(*w));
        w->data = c;
        uv_buf_t b = uv_buf_init(ev->payload.data, (unsigned)ev->payload.len);
        uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, evil_on_written);
    } else if (ev->close_after) {
        evil_conn_close(c);
    }
}

static void evil_start(evil_t *ev)
{
    memset(ev, 0, sizeof(*ev));
    buf_init(&ev->payload, 0);
    uv_tcp_init(&loop, &ev->listener);
    ev->listener.data = ev;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(uv_tcp_bind(&ev->listener, (struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&ev->listener, 16, evil_on_conn), 0);
    struct sockaddr_in b;
    int len = sizeof(b);
    uv_tcp_getsockname(&ev->listener, (struct sockaddr *)&b, &len);
    ev->port = ntohs(b.sin_port);
    snprintf(ev->addr, sizeof(ev->addr), "127.0.0.1:%d", ev->port);
}

static void evil_drop_conns(evil_t *ev)
{
    for (evil_conn_t *c = ev->conns; c; c = c->next)
        evil_conn_close(c);
    run_for(10);
}

static void evil_stop(evil_t *ev)
{
    evil_drop_conns(ev);
    uv_close((uv_handle_t *)&ev->listener, NULL);
    run_for(10);
    buf_free(&ev->payload);
}

/* A locator stream message: [ch, type, [map], [["revision", rev]]] with
 * the map built by the caller between begin and end. */
static void ev_begin(rpc_enc_t *e, buf_t *b, uint64_t ch, uint64_t type, uint32_t nentries,
                     bool with_rev)
{
    rpc_enc_begin(e, b, ch, type, 1, with_rev ? 1 : 0);
    msgpack_pack_map(&e->pk, nentries);
}

static void ev_end(rpc_enc_t *e, const char *rev)
{
    if (rev)
        rpc_enc_header(e, "revision", rev, strlen(rev));
    assert_int_equal(rpc_enc_end(e), 0);
}

static void pk_str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* name -> [[[host, port]], version, "service"] */
static void ev_entry(rpc_enc_t *e, const char *name, const char *host, int port)
{
    pk_str(&e->pk, name);
    msgpack_pack_array(&e->pk, 3);
    msgpack_pack_array(&e->pk, host ? 1 : 0);
    if (host) {
        msgpack_pack_array(&e->pk, 2);
        pk_str(&e->pk, host);
        msgpack_pack_int(&e->pk, port);
    }
    msgpack_pack_int(&e->pk, 1);
    pk_str(&e->pk, "service");
}

/* A valid full table: /web and /evil-only. */
static void ev_full(buf_t *b, const char *rev)
{
    rpc_enc_t e;
    ev_begin(&e, b, 1, RPC_WRITE, 2, true);
    ev_entry(&e, "/web", "10.6.6.6", 666);
    ev_entry(&e, "/evil-only", "10.6.6.6", 667);
    ev_end(&e, rev);
}

typedef struct hostile {
    const char *what;
    void (*build)(buf_t *b);
    const char *error; /* in last_error */
    bool keeps;        /* a valid full table came first: its endpoints stay (stale) */
} hostile_t;

static void h_garbage(buf_t *b)
{
    buf_append(b, "\xc1\xc1\xc1 GET / HTTP/1.1\r\n\r\n", 23);
}

static void h_oversized(buf_t *b)
{
    /* [1, 0, [str of 4 GiB]] announced */
    buf_append(b, "\x93\x01\x00\x91\xdb\xff\xff\xff\xff", 9);
}

static void h_not_a_message(buf_t *b)
{
    buf_append(b, "\x92\x01\x00", 3); /* a 2-element array */
}

static void h_wrong_value_type(buf_t *b)
{
    rpc_enc_t e;
    ev_begin(&e, b, 1, RPC_WRITE, 1, true);
    pk_str(&e.pk, "/web");
    pk_str(&e.pk, "not an entry");
    ev_end(&e, "1");
}

static void h_bad_port(buf_t *b)
{
    rpc_enc_t e;
    ev_begin(&e, b, 1, RPC_WRITE, 2, true);
    ev_entry(&e, "/evil-only", "10.6.6.6", 667); /* valid, but the message is refused whole */
    ev_entry(&e, "/web", "10.6.6.6", 70000);
    ev_end(&e, "1");
}

static void h_nul_in_name(buf_t *b)
{
    rpc_enc_t e;
    ev_begin(&e, b, 1, RPC_WRITE, 1, true);
    ev_entry(&e, "/web", "10.6.6.6", 666);
    ev_end(&e, "1");
    /* turn "/web" into "/w\0b" */
    char *p = memmem(b->data, b->len, "/web", 4);
    p[2] = '\0';
}

static void h_args_not_map(buf_t *b)
{
    rpc_enc_t e;
    rpc_enc_begin(&e, b, 1, RPC_WRITE, 1, 1);
    msgpack_pack_array(&e.pk, 0);
    ev_end(&e, "1");
}

static void h_no_revision(buf_t *b)
{
    rpc_enc_t e;
    ev_begin(&e, b, 1, RPC_WRITE, 1, false);
    ev_entry(&e, "/web", "10.6.6.6", 666);
    ev_end(&e, NULL);
}

static void h_bad_revision(buf_t *b)
{
    rpc_enc_t e;
    ev_begin(&e, b, 1, RPC_WRITE, 1, true);
    ev_entry(&e, "/web", "10.6.6.6", 666);
    ev_end(&e, "-3");
}

static void h_unknown_type(buf_t *b)
{
    rpc_encode(b, 1, 7, "s", "hello");
}

static void h_wrong_channel(buf_t *b)
{
    rpc_enc_t e;
    ev_begin(&e, b, 2, RPC_WRITE, 1, true);
    ev_entry(&e, "/web", "10.6.6.6", 666);
    ev_end(&e, "1");
}

static void h_remote_error(buf_t *b)
{
    rpc_encode(b, 1, RPC_ERROR, "[uu]s", 1u, 22u, "go away");
}

static void h_skip(buf_t *b)
{
    ev_full(b, "5");
    rpc_enc_t e;
    ev_begin(&e, b, 1, RPC_WRITE, 1, true);
    ev_entry(&e, "/web", NULL, 0);
    ev_end(&e, "7");
}

static void h_backwards(buf_t *b)
{
    ev_full(b, "5");
    rpc_enc_t e;
    ev_begin(&e, b, 1, RPC_WRITE, 1, true);
    ev_entry(&e, "/web", NULL, 0);
    ev_end(&e, "5");
}

static void h_full_then_garbage(buf_t *b)
{
    ev_full(b, "5");
    buf_append(b, "\xc1", 1);
}

static void h_full_then_close(buf_t *b)
{
    ev_full(b, "5");
    rpc_encode(b, 1, RPC_CLOSE, "");
}

static void h_deep(buf_t *b)
{
    /* [1, 0, [[[[...]]]]] 40 deep */
    buf_append(b, "\x93\x01\x00", 3);
    for (int i = 0; i < 40; i++)
        buf_append(b, "\x91", 1);
    buf_append(b, "\x90", 1);
}

static void h_too_many_names(buf_t *b)
{
    rpc_enc_t e;
    ev_begin(&e, b, 1, RPC_WRITE, 3, true);
    ev_entry(&e, "/a", "10.6.6.6", 1);
    ev_entry(&e, "/b", "10.6.6.6", 2);
    ev_entry(&e, "/c", "10.6.6.6", 3);
    ev_end(&e, "1");
}

static void h_change_too_many_names(buf_t *b)
{
    ev_full(b, "5");
    rpc_enc_t e;
    ev_begin(&e, b, 1, RPC_WRITE, 3, true);
    ev_entry(&e, "/web", NULL, 0); /* frees one, but the message adds two */
    ev_entry(&e, "/c", "10.6.6.6", 3);
    ev_entry(&e, "/d", "10.6.6.6", 4);
    ev_end(&e, "6");
}

static const hostile_t hostiles[] = {
    {"garbage", h_garbage, "not msgpack", false},
    {"oversized", h_oversized, "over the limit", false},
    {"not a message", h_not_a_message, "elements", false},
    {"wrong value type", h_wrong_value_type, "entry /web is a string", false},
    {"bad port", h_bad_port, "port is not", false},
    {"NUL in name", h_nul_in_name, "NUL", false},
    {"args not a map", h_args_not_map, "map", false},
    {"no revision", h_no_revision, "without a revision header", false},
    {"bad revision", h_bad_revision, "is not a revision", false},
    {"unknown type", h_unknown_type, "unexpected type 7", false},
    {"wrong channel", h_wrong_channel, "channel 2", false},
    {"remote error", h_remote_error, "go away", false},
    {"revision skips", h_skip, "revision 7 after 5", true},
    {"revision repeats", h_backwards, "revision 5 after 5", true},
    {"full then garbage", h_full_then_garbage, "not msgpack", true},
    {"full then close", h_full_then_close, "closed the subscription", true},
    {"too deep", h_deep, "deeper", false},
    {"too many names", h_too_many_names, "more than 2 names", false},
    {"change adds too many names", h_change_too_many_names, "more than 2 names", true},
};

typedef struct fail_want {
    const char *id;
    uint64_t failures;
} fail_want_t;

static bool failed_n(void *arg)
{
    fail_want_t *w = arg;
    meta_node_info_t i;
    return meta_node_info(meta, w->id, &i) == 0 && i.failures >= w->failures;
}

static void test_hostile_locator(void **state)
{
    (void)state;
    loop_open();
    nd_t a;
    nd_start(&a);
    tset1(a.t, "/web", "10.0.0.1", 80, 1);
    tset1(a.t, "/only-a", "10.0.0.1", 81, 1);
    /* What the merged table must hold whenever the evil node adds nothing. */
    loc_table_t *ref = loc_table_new();
    loc_ep_t e1 = {.host = "10.0.0.1", .port = 80, .node = "a", .version = 1};
    loc_ep_t e2 = {.host = "10.0.0.1", .port = 81, .node = "a", .version = 1};
    loc_table_set(ref, "/web", &e1, 1, 1, "service");
    loc_table_set(ref, "/only-a", &e2, 1, 1, "service");
    meta_opts_t o = {.stale_ms = 60000,
                     .backoff_start_ms = 5,
                     .backoff_max_ms = 10,
                     .max_message_bytes = 4096,
                     .max_names_per_node = 2};
    meta_open(&o);
    add("a", &a);
    evil_t ev;
    evil_start(&ev);
    for (size_t k = 0; k < sizeof(hostiles) / sizeof(hostiles[0]); k++) {
        const hostile_t *h = &hostiles[k];
        buf_reset(&ev.payload);
        h->build(&ev.payload);
        ev.accepted = 0;
        assert_int_equal(meta_node_add(meta, "evil", ev.addr), 0);
        /* Dropped and retried: at least two attempts failed. */
        fail_want_t w = {"evil", 2};
        run_until(failed_n, &w, 3000, h->what);
        meta_node_info_t i = info("evil");
        if (!strstr(i.last_error, h->error))
            fail_msg("%s: last error \"%s\", want \"%s\" in it", h->what, i.last_error, h->error);
        assert_true(ev.accepted >= 2);
        if (h->keeps) {
            assert_true(i.synced);
            assert_string_equal(eps_text(merged, "/web"), "10.0.0.1:80 10.6.6.6:666");
            assert_string_equal(eps_text(merged, "/evil-only"), "10.6.6.6:667");
        } else {
            assert_false(i.synced);
            assert_tables_equal(merged, ref);
        }
        /* a is unaffected and still follows its node. */
        assert_int_equal(info("a").state, META_LINK_UP);
        assert_int_equal(info("a").failures, 0);
        meta_node_remove(meta, "evil");
        assert_tables_equal(merged, ref);
        evil_drop_conns(&ev);
    }
    /* And after all that a still streams. */
    tset1(a.t, "/only-a", "10.0.0.1", 82, 1);
    wait_eps(merged, "/only-a", "10.0.0.1:82", 2000);

    /* A locator that accepts and sends nothing: the full-table timeout. */
    meta_close();
    o.connect_timeout_ms = 100;
    meta_open(&o);
    buf_reset(&ev.payload);
    assert_int_equal(meta_node_add(meta, "silent", ev.addr), 0);
    int64_t t0 = now_ms();
    fail_want_t w = {"silent", 1};
    run_until(failed_n, &w, 2000, "the full-table timeout");
    assert_true(now_ms() - t0 >= 95);
    assert_non_null(strstr(info("silent").last_error, "waiting for the full table timed out"));
    meta_close();

    evil_stop(&ev);
    loc_table_free(ref);
    nd_free(&a);
    loop_close();
}

static void test_connect_refused_backoff(void **state)
{
    (void)state;
    loop_open();
    /* A port nothing listens on. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(0x7f000001);
    socklen_t len = sizeof(a);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    getsockname(fd, (struct sockaddr *)&a, &len);
    close(fd);
    char addr[32];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", ntohs(a.sin_port));
    meta_opts_t o = {.backoff_start_ms = 20, .backoff_max_ms = 80};
    meta_open(&o);
    assert_int_equal(meta_node_add(meta, "gone", addr), 0);
    run_for(800);
    meta_node_info_t i = info("gone");
    /* 10-20, 20-40, 40-80, then 40-80 ms apart: 13 to 20 attempts in
     * 800 ms. Without backoff it would be thousands, without the cap
     * about 7. */
    if (i.failures < 10 || i.failures > 30)
        fail_msg("%" PRIu64 " failed attempts in 800 ms", i.failures);
    assert_non_null(strstr(i.last_error, "connect"));
    assert_false(i.connected);
    assert_int_equal(i.names, 0);
    meta_close();
    loop_close();
}

static void test_add_errors(void **state)
{
    (void)state;
    loop_open();
    meta_t *m = NULL;
    err_t err = {0};
    loc_table_t *t = loc_table_new();
    meta_opts_t bad = {.backoff_start_ms = 500, .backoff_max_ms = 100};
    assert_int_equal(meta_start(&loop, t, &bad, &m, &err), -EINVAL);
    assert_null(m);
    assert_non_null(strstr(err.msg, "backoff"));
    meta_opts_t bad2 = {.uuid = ""};
    assert_int_equal(meta_start(&loop, t, &bad2, &m, &err), -EINVAL);
    loc_table_free(t);

    meta_opts_t o = {.max_nodes = 2, .backoff_start_ms = 1000, .backoff_max_ms = 1000};
    meta_open(&o);
    assert_int_equal(meta_node_add(meta, "", "127.0.0.1:1"), -EINVAL);
    assert_int_equal(meta_node_add(meta, "has space", "127.0.0.1:1"), -EINVAL);
    char long_id[300];
    memset(long_id, 'x', sizeof(long_id) - 1);
    long_id[sizeof(long_id) - 1] = '\0';
    assert_int_equal(meta_node_add(meta, long_id, "127.0.0.1:1"), -EINVAL);
    assert_int_equal(meta_node_add(meta, "n1", "127.0.0.1"), -EINVAL);
    assert_int_equal(meta_node_add(meta, "n1", "127.0.0.1:0"), -EINVAL);
    assert_int_equal(meta_node_add(meta, "n1", "127.0.0.1:99999"), -EINVAL);
    assert_int_equal(meta_node_add(meta, "n1", ":80"), -EINVAL);
    assert_int_equal(meta_node_add(meta, "n1", NULL), -EINVAL);
    assert_int_equal(meta_node_count(meta), 0);
    assert_int_equal(meta_node_add(meta, "n1", "127.0.0.1:1"), 0);
    assert_int_equal(meta_node_add(meta, "n2", "[::1]:1"), 0);
    assert_int_equal(meta_node_add(meta, "n3", "127.0.0.1:1"), -EMFILE);
    /* A bad new address leaves the old one. */
    assert_int_equal(meta_node_add(meta, "n1", "nonsense"), -EINVAL);
    assert_string_equal(info("n1").addr, "127.0.0.1:1");
    assert_int_equal(meta_node_count(meta), 2);
    meta_close();
    loop_close();
}

/* A host name is looked up off the loop (and ::1 before 127.0.0.1 is
 * handled by going round the addresses). */
static void test_hostname(void **state)
{
    (void)state;
    loop_open();
    nd_t a;
    nd_start(&a);
    tset1(a.t, "/web", "10.0.0.1", 80, 1);
    meta_opts_t o = {.backoff_start_ms = 10, .backoff_max_ms = 20, .connect_timeout_ms = 20000};
    meta_open(&o);
    char addr[64];
    snprintf(addr, sizeof(addr), "localhost:%d", a.port);
    assert_int_equal(meta_node_add(meta, "a", addr), 0);
    wait_synced("a", &a);
    assert_string_equal(eps_text(merged, "/web"), "10.0.0.1:80");
    /* An unknown host fails and is retried; removal while a lookup may be
     * running is safe. */
    assert_int_equal(meta_node_add(meta, "b", "no-such-host.invalid:10053"), 0);
    fail_want_t w = {"b", 1};
    run_until(failed_n, &w, 5000, "the lookup to fail");
    assert_non_null(strstr(info("b").last_error, "looking up no-such-host.invalid"));
    meta_node_remove(meta, "b");
    assert_int_equal(meta_node_add(meta, "c", "no-such-host.invalid:10053"), 0);
    meta_node_remove(meta, "c");
    meta_close();
    nd_free(&a);
    loop_close();
}

static void test_stop_links_up(void **state)
{
    (void)state;
    loop_open();
    nd_t a, b, c;
    nd_start(&a);
    nd_start(&b);
    nd_start(&c);
    tset1(a.t, "/web", "10.0.0.1", 80, 1);
    tset1(b.t, "/web", "10.0.0.2", 80, 1);
    tset1(c.t, "/api", "10.0.0.3", 80, 1);
    meta_open(NULL);
    add("a", &a);
    add("b", &b);
    add("c", &c);
    assert_int_equal(meta_node_add(meta, "d", "127.0.0.1:1"), 0); /* retrying */
    /* Changes in flight while stopping. */
    tset1(a.t, "/web", "10.0.0.1", 81, 2);
    char *before = dump(merged);
    meta_stop(meta, on_meta_done, NULL);
    assert_false(meta_done);
    run_until(meta_is_done, NULL, 2000, "the metalocator to stop");
    /* The merged table keeps what it held; the nodes see their
     * subscriber go. */
    char *after = dump(merged);
    assert_string_equal(before, after);
    free(before);
    free(after);
    while (loc_server_subscribers(a.s) + loc_server_subscribers(b.s) +
               loc_server_subscribers(c.s) !=
           0)
        uv_run(&loop, UV_RUN_ONCE);
    loc_table_free(merged);
    merged = NULL;
    nd_free(&a);
    nd_free(&b);
    nd_free(&c);
    loop_close(); /* fails if the metalocator left a handle open */
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void test_propagation_latency(void **state)
{
    (void)state;
    loop_open();
    nd_t a;
    nd_start(&a);
    tset1(a.t, "/lat", "10.0.0.1", 1, 1);
    meta_open(NULL);
    add("a", &a);
    enum { N = 1000 };
    uint64_t *us = calloc(N, sizeof(*us));
    rec_t r;
    rec_start(&r);
    for (int i = 0; i < N; i++) {
        size_t seen = r.n;
        uint64_t t0 = uv_hrtime();
        tset1(a.t, "/lat", "10.0.0.1", 2 + i, 1);
        while (r.n == seen)
            uv_run(&loop, UV_RUN_ONCE);
        us[i] = (uv_hrtime() - t0) / 1000;
    }
    char want[64];
    snprintf(want, sizeof(want), "/lat=10.0.0.1:%d", 1 + N);
    assert_string_equal(r.lines[r.n - 1], want);
    assert_int_equal(r.n, N);
    rec_stop(&r);
    qsort(us, N, sizeof(*us), cmp_u64);
    printf("# propagation node table -> merged table over %d changes: p50 %" PRIu64
           " us, p99 %" PRIu64 " us, max %" PRIu64 " us\n",
           N, us[N / 2], us[N * 99 / 100], us[N - 1]);
    /* Loopback and one loop: generous bounds that still catch a timer or
     * a batching delay sneaking in. */
    assert_true(us[N / 2] < 20000);
    free(us);
    meta_close();
    nd_free(&a);
    loop_close();
}

int main(void)
{
    log_setup(LOG_OFF, LOG_TEXT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_merge),
        cmocka_unit_test(test_attrs),
        cmocka_unit_test(test_changes_in_order),
        cmocka_unit_test(test_node_remove),
        cmocka_unit_test(test_stale_grace),
        cmocka_unit_test(test_restart_resync),
        cmocka_unit_test(test_downstream_confirmation),
        cmocka_unit_test(test_downstream_timeout),
        cmocka_unit_test(test_hostile_locator),
        cmocka_unit_test(test_connect_refused_backoff),
        cmocka_unit_test(test_add_errors),
        cmocka_unit_test(test_hostname),
        cmocka_unit_test(test_stop_links_up),
        cmocka_unit_test(test_propagation_latency),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
