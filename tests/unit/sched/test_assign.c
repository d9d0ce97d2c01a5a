/* Placeholder placement (src/sched/assign.c) against a real SQLite store in
 * a temp directory: the test writes apps, nodes (on leases) and instance
 * reports as the API would, runs the loop, and checks the assignments the
 * placement wrote. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/alloc.h"
#include "core/json.h"
#include "core/log.h"
#include "core/str.h"
#include "sched/assign.h"
#include "store/store.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- fixture ---------------------------------------------------------- */

typedef struct fx {
    char dir[64];
    uv_loop_t loop;
    uv_timer_t watchdog;
    store_t *s;
    sched_assign_t *a;
} fx_t;

static int g_wait_line; /* which wait timed out */

static void watchdog_cb(uv_timer_t *t)
{
    (void)t;
    fail_msg("timed out waiting for the store (wait at line %d)", g_wait_line);
}

#define FX_WAIT(f, cond)                                                                           \
    do {                                                                                           \
        g_wait_line = __LINE__;                                                                    \
        uv_timer_start(&(f)->watchdog, watchdog_cb, 10000, 0);                                     \
        while (!(cond))                                                                            \
            uv_run(&(f)->loop, UV_RUN_ONCE);                                                       \
        uv_timer_stop(&(f)->watchdog);                                                             \
    } while (0)

static void set_true(void *data)
{
    *(bool *)data = true;
}

/* uv_stop: a timer that fires at the start of a UV_RUN_ONCE iteration would
 * otherwise leave that iteration polling until the next event or timer
 * (the 10 s watchdog when all is quiet). */
static void timer_flag_cb(uv_timer_t *t)
{
    *(bool *)t->data = true;
    uv_stop(t->loop);
}

/* Run the loop for `ms` (placement and store callbacks keep running). */
static void fx_sleep(fx_t *f, uint64_t ms)
{
    bool fired = false;
    uv_timer_t t;
    uv_timer_init(&f->loop, &t);
    t.data = &fired;
    uv_timer_start(&t, timer_flag_cb, ms, 0);
    FX_WAIT(f, fired);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&f->loop, UV_RUN_NOWAIT);
}

static void fx_start(fx_t *f)
{
    err_t e = {0};
    assert_int_equal(sched_assign_start(&f->loop, f->s, &f->a, &e), 0);
}

static void fx_stop(fx_t *f)
{
    bool done = false;
    sched_assign_stop(f->a, set_true, &done);
    FX_WAIT(f, done);
    f->a = NULL;
}

static int fx_setup(void **state)
{
    fx_t *f = xcalloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/drover-assign-test.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    uv_timer_init(&f->loop, &f->watchdog);
    char path[128];
    snprintf(path, sizeof(path), "%s/store.db", f->dir);
    store_options_t o = {.backend = "sqlite", .path = path};
    err_t e = {0};
    if (store_open(&f->loop, &o, &f->s, &e))
        fail_msg("store_open: %s", e.msg);
    fx_start(f);
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    fx_t *f = *state;
    if (f->a)
        fx_stop(f);
    bool closed = false;
    store_close(f->s, set_true, &closed);
    FX_WAIT(f, closed);
    uv_close((uv_handle_t *)&f->watchdog, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    DIR *d = opendir(f->dir);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d))) {
            if (de->d_name[0] == '.')
                continue;
            char p[384];
            snprintf(p, sizeof(p), "%s/%s", f->dir, de->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

/* ---- synchronous store access ---------------------------------------- */

typedef struct cap {
    bool done;
    int status;
    int64_t rev;
    int64_t lease;
    json_t *kvs; /* GET results: [{"key", "value" (parsed JSON), "lease"}] */
} cap_t;

static void cap_cb(int status, const err_t *err, const store_result_t *res, void *data)
{
    (void)err;
    cap_t *c = data;
    c->done = true;
    c->status = status;
    if (status)
        return;
    c->rev = res->rev;
    c->kvs = json_array();
    for (size_t i = 0; i < res->n_ops; i++) {
        if (res->ops[i].type != STORE_OP_GET)
            continue;
        for (size_t j = 0; j < res->ops[i].n_kvs; j++) {
            const store_kv_t *kv = &res->ops[i].kvs[j];
            json_t *v = json_loadb(kv->value, kv->value_len, 0, NULL);
            assert_non_null(v);
            json_array_append_new(c->kvs, json_pack("{s:s, s:o, s:I}", "key", kv->key, "value", v,
                                                    "lease", (json_int_t)kv->lease));
        }
    }
}

static void lease_cb(int status, const err_t *err, int64_t lease_id, int64_t ttl_s, void *data)
{
    (void)err;
    (void)ttl_s;
    cap_t *c = data;
    c->done = true;
    c->status = status;
    c->lease = lease_id;
}

static void put_json(fx_t *f, const char *key, json_t *value, int64_t lease)
{
    size_t len;
    char *text = json_canonical(value, &len);
    cap_t c = {0};
    assert_int_equal(store_put(f->s, key, text, len, lease, cap_cb, &c), 0);
    FX_WAIT(f, c.done);
    assert_int_equal(c.status, 0);
    json_decref(c.kvs);
    free(text);
    json_decref(value);
}

static void del_key(fx_t *f, const char *key)
{
    cap_t c = {0};
    assert_int_equal(store_delete(f->s, key, false, cap_cb, &c), 0);
    FX_WAIT(f, c.done);
    assert_int_equal(c.status, 0);
    json_decref(c.kvs);
}

/* Every kv under `prefix` (caller decrefs). */
static json_t *get_prefix(fx_t *f, const char *prefix)
{
    cap_t c = {0};
    assert_int_equal(store_get(f->s, prefix, true, cap_cb, &c), 0);
    FX_WAIT(f, c.done);
    assert_int_equal(c.status, 0);
    return c.kvs;
}

static json_t *get_one(fx_t *f, const char *key)
{
    cap_t c = {0};
    assert_int_equal(store_get(f->s, key, false, cap_cb, &c), 0);
    FX_WAIT(f, c.done);
    assert_int_equal(c.status, 0);
    json_t *v = json_array_size(c.kvs)
                    ? json_incref(json_object_get(json_array_get(c.kvs, 0), "value"))
                    : NULL;
    json_decref(c.kvs);
    return v;
}

/* ---- what the API would write ---------------------------------------- */

static void put_app_cmd(fx_t *f, const char *id, int version, int instances, const char *isolate,
                        const char *cmd)
{
    char key[300];
    snprintf(key, sizeof(key), "/apps%s", id);
    json_t *spec = json_pack("{s:s, s:s, s:i, s:s, s:f, s:i}", "id", id, "cmd", cmd, "instances",
                             instances, "isolate", isolate ? isolate : "process", "cpus", 0.1,
                             "mem", 16);
    put_json(f, key, json_pack("{s:s, s:i, s:o}", "id", id, "version", version, "spec", spec), 0);
}

static void put_app(fx_t *f, const char *id, int version, int instances, const char *isolate)
{
    put_app_cmd(f, id, version, instances, isolate, "sleep 1000");
}

static void del_app(fx_t *f, const char *id)
{
    char key[300];
    snprintf(key, sizeof(key), "/apps%s", id);
    del_key(f, key);
}

/* A node on its own lease, as a registration makes it; returns the lease. */
static int64_t add_node(fx_t *f, const char *id, const char *isolates)
{
    cap_t c = {0};
    assert_int_equal(store_lease_grant(f->s, 60, lease_cb, &c), 0);
    FX_WAIT(f, c.done);
    assert_int_equal(c.status, 0);
    char key[128];
    snprintf(key, sizeof(key), "/nodes/%s", id);
    json_t *iso = json_array();
    char *copy = xstrdup(isolates ? isolates : "process");
    for (char *save = NULL, *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save))
        json_array_append_new(iso, json_string(t));
    free(copy);
    put_json(f, key,
             json_pack("{s:s, s:s, s:s, s:o, s:f, s:i, s:[i,i]}", "id", id, "address", "10.0.0.1",
                       "agent_url", "http://10.0.0.1:7401", "isolates", iso, "cpus", 100.0,
                       "mem_mb", 65536, "ports", 20000, 30000),
             c.lease);
    return c.lease;
}

/* The node's lease ends as an expiry would end it. */
static void lose_node(fx_t *f, int64_t lease)
{
    cap_t c = {0};
    assert_int_equal(store_lease_revoke(f->s, lease, lease_cb, &c), 0);
    FX_WAIT(f, c.done);
    assert_int_equal(c.status, 0);
}

static void put_instance(fx_t *f, const char *inst, const char *app, const char *node,
                         const char *state)
{
    char key[300];
    snprintf(key, sizeof(key), "/instances/%s", inst);
    put_json(f, key,
             json_pack("{s:s, s:s, s:s, s:s, s:i, s:[{s:s, s:s}]}", "id", inst, "app", app, "node",
                       node, "state", state, "version", 1, "history", "state", state, "at",
                       "2026-01-01T00:00:00.000Z"),
             0);
}

/* ---- checking assignments -------------------------------------------- */

typedef struct tally {
    int total;
    int by_node[8]; /* n1..n8 */
    int by_version[8];
    int of_app;
} tally_t;

/* Count assignments (of `app` when given) and check each is well formed:
 * key /assign/<node>/<id>, record {id, app, version, node, spec}. */
static tally_t count(fx_t *f, const char *app)
{
    tally_t t = {0};
    json_t *all = get_prefix(f, "/assign/");
    size_t i;
    json_t *e;
    json_array_foreach(all, i, e)
    {
        json_t *rec = json_object_get(e, "value");
        const char *id = json_str(rec, "id"), *node = json_str(rec, "node");
        const char *rapp = json_str(rec, "app");
        assert_non_null(id);
        assert_non_null(node);
        assert_non_null(rapp);
        char key[400];
        snprintf(key, sizeof(key), "/assign/%s/%s", node, id);
        assert_string_equal(json_str(e, "key"), key);
        assert_true(json_is_object(json_object_get(rec, "spec")));
        assert_string_equal(json_str(json_object_get(rec, "spec"), "id"), rapp);
        json_int_t v = json_integer_value(json_object_get(rec, "version"));
        t.total++;
        if (app && strcmp(rapp, app) == 0)
            t.of_app++;
        if (node[0] == 'n' && node[1] >= '1' && node[1] <= '8' && !node[2])
            t.by_node[node[1] - '1']++;
        if (v >= 0 && v < 8)
            t.by_version[v]++;
    }
    json_decref(all);
    return t;
}

/* Run the loop until `total` assignments exist and the placement has been
 * quiet for a while (no more writes): the state it settles on. */
static tally_t settle(fx_t *f, int total)
{
    int64_t last_rev = -1;
    int quiet = 0;
    for (int i = 0; i < 500; i++) {
        fx_sleep(f, 10);
        tally_t t = count(f, NULL);
        int64_t rev = store_revision(f->s);
        quiet = rev == last_rev ? quiet + 1 : 0;
        last_rev = rev;
        if (t.total == total && quiet >= 8)
            return t;
    }
    tally_t t = count(f, NULL);
    fail_msg("placement did not settle on %d assignments (has %d)", total, t.total);
    return t;
}

/* ---- tests ------------------------------------------------------------ */

static void test_instance_id(void **state)
{
    (void)state;
    char *a = sched_instance_id_new("/production/test-server");
    char *b = sched_instance_id_new("/production/test-server");
    assert_true(str_has_prefix(a, "production_test-server."));
    assert_int_equal(strlen(a), strlen("production_test-server.") + 12);
    for (const char *p = a + strlen("production_test-server."); *p; p++)
        assert_non_null(strchr("0123456789abcdef", *p));
    assert_string_not_equal(a, b);
    free(a);
    free(b);
    char *c = sched_instance_id_new("/a.b/c");
    assert_true(str_has_prefix(c, "a.b_c."));
    free(c);
}

/* Apps x nodes: every app gets its count, spread evenly over the nodes. */
static void test_spread(void **state)
{
    fx_t *f = *state;
    add_node(f, "n1", NULL);
    add_node(f, "n2", NULL);
    add_node(f, "n3", NULL);
    fx_sleep(f, 50);
    put_app(f, "/a", 1, 5, NULL);
    put_app(f, "/prod/b", 1, 4, NULL);
    tally_t t = settle(f, 9);
    assert_int_equal(t.by_node[0], 3);
    assert_int_equal(t.by_node[1], 3);
    assert_int_equal(t.by_node[2], 3);
    assert_int_equal(count(f, "/a").of_app, 5);
    assert_int_equal(count(f, "/prod/b").of_app, 4);
    /* instance ids carry their app */
    json_t *all = get_prefix(f, "/assign/");
    size_t i;
    json_t *e;
    json_array_foreach(all, i, e)
    {
        json_t *rec = json_object_get(e, "value");
        const char *want = strcmp(json_str(rec, "app"), "/a") == 0 ? "a." : "prod_b.";
        assert_true(str_has_prefix(json_str(rec, "id"), want));
    }
    json_decref(all);
}

/* Scaling down removes from the busiest nodes; the spread stays even. */
static void test_scale_down(void **state)
{
    fx_t *f = *state;
    add_node(f, "n1", NULL);
    add_node(f, "n2", NULL);
    fx_sleep(f, 50);
    put_app(f, "/a", 1, 6, NULL);
    tally_t t = settle(f, 6);
    assert_int_equal(t.by_node[0], 3);
    assert_int_equal(t.by_node[1], 3);
    json_t *before = get_prefix(f, "/assign/");
    put_app(f, "/a", 1, 2, NULL);
    t = settle(f, 2);
    assert_int_equal(t.by_node[0], 1);
    assert_int_equal(t.by_node[1], 1);
    /* the survivors are old assignments, not new ones */
    json_t *after = get_prefix(f, "/assign/");
    size_t i, j;
    json_t *e, *g;
    json_array_foreach(after, i, e)
    {
        bool found = false;
        json_array_foreach(before, j, g) found |= json_equal(e, g);
        assert_true(found);
    }
    json_decref(before);
    json_decref(after);
    /* to zero */
    put_app(f, "/a", 1, 0, NULL);
    settle(f, 0);
}

/* A version that changes what runs replaces every assignment of the old
 * one. */
static void test_version_change(void **state)
{
    fx_t *f = *state;
    add_node(f, "n1", NULL);
    add_node(f, "n2", NULL);
    fx_sleep(f, 50);
    put_app(f, "/a", 1, 3, NULL);
    tally_t t = settle(f, 3);
    assert_int_equal(t.by_version[1], 3);
    put_app_cmd(f, "/a", 2, 3, NULL, "sleep 2000");
    t = settle(f, 3);
    assert_int_equal(t.by_version[1], 0);
    assert_int_equal(t.by_version[2], 3);
    assert_int_equal(t.by_node[0] + t.by_node[1], 3);
    assert_true(t.by_node[0] >= 1 && t.by_node[1] >= 1);
}

/* A version that only changes the instance count keeps the running
 * assignments (a scale restarts nothing) and adds the missing ones. */
static void test_scale_version_keeps(void **state)
{
    fx_t *f = *state;
    add_node(f, "n1", NULL);
    add_node(f, "n2", NULL);
    fx_sleep(f, 50);
    put_app(f, "/a", 1, 3, NULL);
    settle(f, 3);
    json_t *before = get_prefix(f, "/assign/");
    put_app(f, "/a", 2, 5, NULL);
    tally_t t = settle(f, 5);
    assert_int_equal(t.by_node[0] + t.by_node[1], 5);
    assert_true(t.by_node[0] >= 2 && t.by_node[1] >= 2);
    json_t *after = get_prefix(f, "/assign/");
    size_t i, j;
    json_t *e, *g;
    json_array_foreach(before, i, e)
    {
        bool found = false;
        json_array_foreach(after, j, g) found |=
            strcmp(json_str(e, "key"), json_str(g, "key")) == 0;
        assert_true(found);
    }
    json_decref(before);
    json_decref(after);
}

/* Deleting an app removes its assignments, and leaves its instance
 * records for the agents to finish. */
static void test_app_delete(void **state)
{
    fx_t *f = *state;
    add_node(f, "n1", NULL);
    fx_sleep(f, 50);
    put_app(f, "/a", 1, 2, NULL);
    put_app(f, "/b", 1, 1, NULL);
    settle(f, 3);
    put_instance(f, "a.000000000001", "/a", "n1", "running");
    del_app(f, "/a");
    tally_t t = settle(f, 1);
    assert_int_equal(count(f, "/b").of_app, 1);
    assert_int_equal(t.total, 1);
    json_t *rec = get_one(f, "/instances/a.000000000001");
    assert_non_null(rec);
    assert_string_equal(json_str(rec, "state"), "running");
    json_decref(rec);
}

/* A node whose lease ends: its assignments move to the live nodes, its
 * unfinished instances become "lost", finished ones stay as they were. */
static void test_node_loss(void **state)
{
    fx_t *f = *state;
    add_node(f, "n1", NULL);
    int64_t l2 = add_node(f, "n2", NULL);
    fx_sleep(f, 50);
    put_app(f, "/a", 1, 4, NULL);
    tally_t t = settle(f, 4);
    assert_int_equal(t.by_node[1], 2);
    json_t *on2 = get_prefix(f, "/assign/n2/");
    assert_int_equal(json_array_size(on2), 2);
    const char *i1 = json_str(json_object_get(json_array_get(on2, 0), "value"), "id");
    const char *i2 = json_str(json_object_get(json_array_get(on2, 1), "value"), "id");
    put_instance(f, i1, "/a", "n2", "running");
    put_instance(f, i2, "/a", "n2", "failed");
    lose_node(f, l2);
    t = settle(f, 4);
    assert_int_equal(t.by_node[0], 4);
    assert_int_equal(t.by_node[1], 0);
    char key[300];
    snprintf(key, sizeof(key), "/instances/%s", i1);
    json_t *r1 = get_one(f, key);
    assert_string_equal(json_str(r1, "state"), "lost");
    assert_string_equal(json_str(r1, "reason"), "node n2 lost (lease expired)");
    assert_string_equal(json_str(r1, "node"), "n2");
    json_t *hist = json_object_get(r1, "history");
    assert_int_equal(json_array_size(hist), 2);
    assert_string_equal(json_str(json_array_get(hist, 1), "state"), "lost");
    snprintf(key, sizeof(key), "/instances/%s", i2);
    json_t *r2 = get_one(f, key);
    assert_string_equal(json_str(r2, "state"), "failed");
    json_decref(r1);
    json_decref(r2);
    json_decref(on2);
}

/* No node: nothing is assigned; the first node gets everything, and a
 * node without the app's isolate gets nothing. */
static void test_no_nodes_then_node(void **state)
{
    fx_t *f = *state;
    put_app(f, "/a", 1, 2, NULL);
    put_app(f, "/d", 1, 1, "docker");
    fx_sleep(f, 150);
    assert_int_equal(count(f, NULL).total, 0);
    add_node(f, "n1", NULL);
    tally_t t = settle(f, 2);
    assert_int_equal(t.by_node[0], 2);
    assert_int_equal(count(f, "/d").of_app, 0);
    add_node(f, "n2", "docker,process");
    t = settle(f, 3);
    assert_int_equal(t.by_node[1], 1);
    assert_int_equal(count(f, "/d").of_app, 1);
}

/* More writes than one transaction may hold go out in several. */
static void test_big_batch(void **state)
{
    fx_t *f = *state;
    add_node(f, "n1", NULL);
    add_node(f, "n2", NULL);
    fx_sleep(f, 50);
    put_app(f, "/big", 1, 300, NULL);
    tally_t t = settle(f, 300);
    assert_int_equal(t.by_node[0], 150);
    assert_int_equal(t.by_node[1], 150);
    del_app(f, "/big");
    settle(f, 0);
}

/* A restarted placement picks up the store as it is: nothing duplicated,
 * and assignments to nodes that went away meanwhile are cleaned up. */
static void test_restart(void **state)
{
    fx_t *f = *state;
    add_node(f, "n1", NULL);
    fx_sleep(f, 50);
    put_app(f, "/a", 1, 3, NULL);
    settle(f, 3);
    fx_stop(f);
    put_json(f, "/assign/n5/a.0000000000ff",
             json_pack("{s:s, s:s, s:i, s:s, s:{s:s}}", "id", "a.0000000000ff", "app", "/a",
                       "version", 1, "node", "n5", "spec", "id", "/a"),
             0);
    fx_start(f);
    tally_t t = settle(f, 3);
    assert_int_equal(t.by_node[0], 3);
    assert_int_equal(t.by_node[4], 0);
}

/* Stopping while a reconcile's writes are in flight waits for them. */
static void test_stop_busy(void **state)
{
    fx_t *f = *state;
    add_node(f, "n1", NULL);
    put_app(f, "/a", 1, 200, NULL);
    fx_sleep(f, 25);
    fx_stop(f);
}

/* An instance no node can take waits, and /placement<app> says why, per
 * node; once it fits, the record goes. */
static void test_unplaced_says_why(void **state)
{
    fx_t *f = *state;
    add_node(f, "n1", NULL);
    add_node(f, "n2", "oci");
    fx_sleep(f, 50);
    json_t *spec = json_pack("{s:s, s:s, s:i, s:s, s:f, s:i}", "id", "/huge", "cmd", "x",
                             "instances", 1, "isolate", "process", "cpus", 500.0, "mem", 16);
    put_json(f, "/apps/huge", json_pack("{s:s, s:i, s:o}", "id", "/huge", "version", 1, "spec", spec),
             0);
    json_t *rec = NULL;
    for (int i = 0; i < 200 && !rec; i++) {
        fx_sleep(f, 10);
        rec = get_one(f, "/placement/huge");
    }
    assert_non_null(rec);
    assert_int_equal(json_integer_value(json_object_get(rec, "waiting")), 1);
    const char *summary = json_str(rec, "summary");
    assert_non_null(summary);
    assert_non_null(strstr(summary, "0 of 2 nodes fit"));
    json_t *nodes = json_object_get(rec, "nodes");
    assert_int_equal(json_array_size(nodes), 2);
    json_decref(rec);
    assert_int_equal(count(f, "/huge").of_app, 0);
    /* smaller: it fits, the record goes */
    spec = json_pack("{s:s, s:s, s:i, s:s, s:f, s:i}", "id", "/huge", "cmd", "x", "instances", 1,
                     "isolate", "process", "cpus", 1.0, "mem", 16);
    put_json(f, "/apps/huge", json_pack("{s:s, s:i, s:o}", "id", "/huge", "version", 2, "spec", spec),
             0);
    settle(f, 1);
    rec = get_one(f, "/placement/huge");
    assert_null(rec);
}

/* A running deployment advances with the instances' reported health and
 * ends as succeeded; a newer one supersedes an older. */
/* A worker app's pool pin (set on the app record by POST .../pool) reaches
 * its assignments without restarting anything: same instances, same sig,
 * new poolPin; back to automatic drops it. Services never carry one. */
static void put_worker(fx_t *f, int pin)
{
    json_t *spec = json_pack("{s:s, s:s, s:s, s:i, s:s, s:f, s:i}", "id", "/w", "kind", "worker",
                             "cmd", "sleep 1000", "instances", 2, "isolate", "process", "cpus",
                             0.1, "mem", 16);
    json_t *rec = json_pack("{s:s, s:i, s:o}", "id", "/w", "version", 1, "spec", spec);
    if (pin)
        json_object_set_new(rec, "poolPin", json_integer(pin));
    put_json(f, "/apps/w", rec, 0);
}

static void assert_pins(fx_t *f, json_int_t want, json_t *before)
{
    json_t *all = get_prefix(f, "/assign/");
    size_t i;
    json_t *e;
    assert_int_equal(json_array_size(all), 2);
    json_array_foreach(all, i, e)
    {
        json_t *v = json_object_get(e, "value");
        assert_int_equal(json_integer_value(json_object_get(v, "poolPin")), want);
        assert_int_equal(json_object_get(v, "poolPin") != NULL, want != 0);
        if (before) {
            /* the same instance, the same signature */
            json_t *b = json_array_get(before, i);
            assert_string_equal(json_str(e, "key"), json_str(b, "key"));
            assert_string_equal(json_str(v, "sig"),
                                json_str(json_object_get(b, "value"), "sig"));
        }
    }
    json_decref(all);
}

static void test_pool_pin(void **state)
{
    fx_t *f = *state;
    add_node(f, "n1", NULL);
    fx_sleep(f, 50);
    put_worker(f, 3);
    settle(f, 2);
    assert_pins(f, 3, NULL);
    json_t *before = get_prefix(f, "/assign/");
    put_worker(f, 5);
    settle(f, 2);
    assert_pins(f, 5, before);
    put_worker(f, 0);
    settle(f, 2);
    assert_pins(f, 0, before);
    json_decref(before);
    /* a service's record with a stray poolPin: not passed on */
    json_t *spec = json_pack("{s:s, s:s, s:i, s:s, s:f, s:i}", "id", "/s", "cmd", "sleep 1000",
                             "instances", 1, "isolate", "process", "cpus", 0.1, "mem", 16);
    put_json(f, "/apps/s",
             json_pack("{s:s, s:i, s:o, s:i}", "id", "/s", "version", 1, "spec", spec, "poolPin", 4),
             0);
    settle(f, 3);
    json_t *all = get_prefix(f, "/assign/");
    size_t i;
    json_t *e;
    json_array_foreach(all, i, e)
    {
        json_t *v = json_object_get(e, "value");
        if (strcmp(json_str(v, "app"), "/s") == 0)
            assert_null(json_object_get(v, "poolPin"));
    }
    json_decref(all);
}

static void test_deployment_progress(void **state)
{
    fx_t *f = *state;
    add_node(f, "n1", NULL);
    fx_sleep(f, 50);
    json_t *spec = json_pack("{s:s, s:s, s:i, s:s, s:f, s:i}", "id", "/d", "cmd", "x",
                             "instances", 2, "isolate", "process", "cpus", 0.1, "mem", 16);
    put_json(f, "/deployments/old1", json_pack("{s:s, s:s, s:s, s:s, s:[]}", "id", "old1", "app",
                                               "/d", "status", "running", "created_at", "1",
                                               "steps"), 0);
    put_json(f, "/deployments/dep1", json_pack("{s:s, s:s, s:s, s:s, s:[]}", "id", "dep1", "app",
                                               "/d", "status", "running", "created_at", "2",
                                               "steps"), 0);
    put_json(f, "/apps/d", json_pack("{s:s, s:i, s:o, s:s}", "id", "/d", "version", 1, "spec", spec,
                                     "deployment", "dep1"), 0);
    settle(f, 2);
    json_t *dep = get_one(f, "/deployments/dep1");
    assert_string_equal(json_str(dep, "status"), "running");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(dep, "progress"), "new")),
                     2);
    json_decref(dep);
    json_t *old = get_one(f, "/deployments/old1");
    assert_string_equal(json_str(old, "status"), "superseded");
    json_decref(old);
    /* the agent reports both healthy */
    json_t *all = get_prefix(f, "/assign/");
    size_t i;
    json_t *e;
    json_array_foreach(all, i, e)
    {
        const char *id = json_str(json_object_get(e, "value"), "id");
        char key[300];
        snprintf(key, sizeof(key), "/instances/%s", id);
        put_json(f, key, json_pack("{s:s, s:s, s:s}", "id", id, "app", "/d", "state", "healthy"), 0);
    }
    json_decref(all);
    for (int k = 0; k < 200; k++) {
        fx_sleep(f, 10);
        dep = get_one(f, "/deployments/dep1");
        if (dep && strcmp(json_str(dep, "status"), "succeeded") == 0)
            break;
        json_decref(dep);
        dep = NULL;
    }
    assert_non_null(dep);
    json_t *steps = json_object_get(dep, "steps");
    assert_true(json_array_size(steps) >= 2);
    assert_non_null(strstr(json_str(json_array_get(steps, 0), "message"), "started 2 instance(s)"));
    json_decref(dep);
}

int main(void)
{
    log_setup(getenv("TEST_DEBUG") ? LOG_DEBUG : LOG_WARN, LOG_TEXT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_instance_id),
        cmocka_unit_test_setup_teardown(test_spread, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_scale_down, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_version_change, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_scale_version_keeps, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_app_delete, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_node_loss, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_no_nodes_then_node, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_big_batch, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_restart, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_stop_busy, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_unplaced_says_why, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_deployment_progress, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_pool_pin, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
