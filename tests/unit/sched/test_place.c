/* sched/place: resources, every constraint operator (with missing labels),
 * spread and binpack, the explanations, and the fast pick path agreeing
 * with the general one. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "sched/place.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ------------------------------------------------------------------------------ */

/* Add a node; labels as "k=v,k=v" (NULL: none). */
static int node(place_cluster_t *c, const char *id, const char *labels, double cpus, int64_t mem,
                int lo, int hi)
{
    json_t *l = json_object();
    if (labels) {
        char *copy = strdup(labels), *save = NULL;
        for (char *kv = strtok_r(copy, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
            char *eq = strchr(kv, '=');
            assert_non_null(eq);
            *eq = '\0';
            json_object_set_new(l, kv, json_string(eq + 1));
        }
        free(copy);
    }
    place_node_in_t in = {.id = id,
                          .hostname = id,
                          .labels = l,
                          .cpus = cpus,
                          .mem_mb = mem,
                          .ports_lo = lo,
                          .ports_hi = hi,
                          .isolates = PLACE_ISO_PROCESS};
    err_t err = {0};
    int idx = place_node_add(c, &in, &err);
    json_decref(l);
    assert_true(idx >= 0);
    return idx;
}

typedef struct app_opts {
    double cpus;
    int64_t mem;
    int ports;
    const int *fixed;
    size_t n_fixed;
    unsigned isolate;
    const char *constraints; /* JSON text or NULL */
    place_strategy_t strategy;
} app_opts_t;

static place_app_t *app_try(place_cluster_t *c, app_opts_t o, int *rc, err_t *err)
{
    json_t *cons = NULL;
    if (o.constraints) {
        json_error_t je;
        cons = json_loads(o.constraints, 0, &je);
        assert_non_null(cons);
    }
    place_app_in_t in = {.id = "/t/app",
                         .cpus = o.cpus,
                         .mem_mb = o.mem,
                         .n_ports = o.ports,
                         .fixed = o.fixed,
                         .n_fixed = o.n_fixed,
                         .isolate = o.isolate,
                         .constraints = cons,
                         .strategy = o.strategy};
    place_app_t *a = NULL;
    *rc = place_app_new(c, &in, &a, err);
    json_decref(cons);
    return a;
}

static place_app_t *app(place_cluster_t *c, app_opts_t o)
{
    int rc;
    err_t err = {0};
    place_app_t *a = app_try(c, o, &rc, &err);
    if (rc)
        fail_msg("place_app_new: %s", err.msg);
    assert_non_null(a);
    return a;
}

/* Pick and return the chosen node's id ("-" when none fits). */
static const char *pick(place_cluster_t *c, place_app_t *a)
{
    int i = place_pick(c, a);
    if (i < 0) {
        assert_int_equal(i, -ENOSPC);
        return "-";
    }
    return place_node_id(c, i);
}

/* The explanation's summary (copied into a static buffer). */
static const char *summary(place_cluster_t *c, place_app_t *a)
{
    static char out[2048];
    json_t *e = place_explain(c, a, 100);
    snprintf(out, sizeof(out), "%s", json_string_value(json_object_get(e, "summary")));
    json_decref(e);
    return out;
}

/* The reason given for node `id` ("" when it fits). */
static const char *reason(place_cluster_t *c, place_app_t *a, const char *id)
{
    static char out[1024];
    out[0] = '\0';
    json_t *e = place_explain(c, a, 100000);
    size_t i;
    json_t *n;
    json_array_foreach(json_object_get(e, "nodes"), i, n)
    {
        if (strcmp(json_string_value(json_object_get(n, "node")), id) == 0)
            snprintf(out, sizeof(out), "%s", json_string_value(json_object_get(n, "reason")));
    }
    json_decref(e);
    return out;
}

/* Pick n times; the ids joined by spaces. */
static const char *picks(place_cluster_t *c, place_app_t *a, int n)
{
    static char out[4096];
    size_t w = 0;
    out[0] = '\0';
    for (int i = 0; i < n; i++)
        w += (size_t)snprintf(out + w, sizeof(out) - w, "%s%s", i ? " " : "", pick(c, a));
    return out;
}

/* ---- cluster ------------------------------------------------------------------------------ */

static void test_node_add_and_find(void **state)
{
    place_cluster_t *c = place_cluster_new();
    assert_int_equal(place_node_count(c), 0);
    assert_int_equal(node(c, "n0", "rack=r0", 2, 1024, 31000, 31009), 0);
    assert_int_equal(node(c, "n1", NULL, 1, 512, 0, 0), 1);
    assert_int_equal(place_node_count(c), 2);
    assert_int_equal(place_node_find(c, "n1"), 1);
    assert_int_equal(place_node_find(c, "nope"), -1);
    assert_string_equal(place_node_id(c, 0), "n0");
    assert_null(place_node_id(c, 2));
    assert_null(place_node_id(c, -1));

    err_t err = {0};
    place_node_in_t in = {.id = "n0", .cpus = 1, .mem_mb = 1, .isolates = PLACE_ISO_PROCESS};
    assert_int_equal(place_node_add(c, &in, &err), -EEXIST);
    assert_non_null(strstr(err.msg, "n0"));
    in.id = "n2";
    in.cpus = -1;
    assert_int_equal(place_node_add(c, &in, &err), -EINVAL);
    in.cpus = 1;
    in.mem_mb = -5;
    assert_int_equal(place_node_add(c, &in, &err), -EINVAL);
    in.mem_mb = 5;
    in.ports_lo = 200;
    in.ports_hi = 100;
    assert_int_equal(place_node_add(c, &in, &err), -EINVAL);
    in.ports_lo = in.ports_hi = 0;
    json_t *bad = json_pack("{s:i}", "rack", 3);
    in.labels = bad;
    assert_int_equal(place_node_add(c, &in, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "labels"));
    json_decref(bad);
    bad = json_pack("[s]", "rack");
    in.labels = bad;
    assert_int_equal(place_node_add(c, &in, &err), -EINVAL);
    json_decref(bad);
    in.labels = NULL;
    in.id = "";
    assert_int_equal(place_node_add(c, &in, &err), -EINVAL);
    assert_int_equal(place_node_count(c), 2);
    place_cluster_free(c);
}

/* The cluster keeps its own copies of the node's strings and labels. */
static void test_node_copies_input(void **state)
{
    place_cluster_t *c = place_cluster_new();
    char id[] = "n0";
    json_t *labels = json_pack("{s:s}", "disk", "ssd");
    place_node_in_t in = {.id = id,
                          .hostname = "h0",
                          .labels = labels,
                          .cpus = 1,
                          .mem_mb = 64,
                          .isolates = PLACE_ISO_PROCESS};
    assert_int_equal(place_node_add(c, &in, NULL), 0);
    id[0] = 'x';
    json_object_set_new(labels, "disk", json_string("hdd"));
    json_decref(labels);
    assert_string_equal(place_node_id(c, 0), "n0");
    place_app_t *a =
        app(c, (app_opts_t){.cpus = 0.1, .mem = 1, .constraints = "[[\"disk\", \"IS\", \"ssd\"]]"});
    assert_string_equal(pick(c, a), "n0");
    place_app_free(a);
    place_cluster_free(c);
}

/* ---- resources ---------------------------------------------------------------------------- */

static void test_cpus_exhausted(void **state)
{
    place_cluster_t *c = place_cluster_new();
    node(c, "n0", NULL, 2, 100000, 0, 0);
    place_app_t *a = app(c, (app_opts_t){.cpus = 0.5, .mem = 1});
    assert_string_equal(picks(c, a, 5), "n0 n0 n0 n0 -");
    assert_string_equal(reason(c, a, "n0"), "not enough cpus (needs 0.5, free 0 of 2)");
    assert_string_equal(summary(c, a), "0 of 1 nodes fit: 1 lacks cpus (needs 0.5)");
    /* 0.1 steps add up exactly: 20 of them fill 2 cpus */
    place_app_t *b = app(c, (app_opts_t){.cpus = 0.1, .mem = 1});
    place_node_release(c, 0, 2, 4, 0, NULL, 0);
    int n = 0;
    while (place_pick(c, b) >= 0)
        n++;
    assert_int_equal(n, 20);
    place_app_free(b);
    /* what already runs can exceed the capacity: then nothing fits */
    place_node_release(c, 0, 2, 20, 0, NULL, 0);
    place_node_use(c, 0, 1.8, 0, 0, NULL, 0);
    assert_string_equal(reason(c, a, "n0"), "not enough cpus (needs 0.5, free 0.2 of 2)");
    place_node_use(c, 0, 5, 0, 0, NULL, 0);
    assert_string_equal(reason(c, a, "n0"), "not enough cpus (needs 0.5, free 0 of 2)");
    place_app_t *z = app(c, (app_opts_t){.cpus = 0, .mem = 0});
    assert_string_equal(pick(c, z), "-");
    place_app_free(z);
    place_app_free(a);
    place_cluster_free(c);
}

static void test_mem_exhausted(void **state)
{
    place_cluster_t *c = place_cluster_new();
    node(c, "n0", NULL, 16, 1024, 0, 0);
    node(c, "n1", NULL, 16, 512, 0, 0);
    place_app_t *a = app(c, (app_opts_t){.cpus = 0.1, .mem = 512});
    assert_string_equal(picks(c, a, 4), "n0 n1 n0 -");
    assert_string_equal(reason(c, a, "n0"), "not enough memory (needs 512 MiB, free 0 of 1024)");
    place_node_release(c, 0, 0.1, 256, 0, NULL, 0);
    assert_string_equal(reason(c, a, "n0"), "not enough memory (needs 512 MiB, free 256 of 1024)");
    assert_string_equal(summary(c, a), "0 of 2 nodes fit: 2 lack memory (needs 512 MiB)");
    place_app_free(a);
    place_cluster_free(c);
}

static void test_dynamic_ports_exhausted(void **state)
{
    place_cluster_t *c = place_cluster_new();
    node(c, "n0", NULL, 100, 100000, 31000, 31009);
    node(c, "n1", NULL, 100, 100000, 0, 0); /* no range: no dynamic ports */
    place_app_t *a = app(c, (app_opts_t){.cpus = 0.1, .mem = 1, .ports = 3});
    assert_string_equal(picks(c, a, 4), "n0 n0 n0 -");
    assert_string_equal(reason(c, a, "n0"), "no free host port (range 31000-31009 used up)");
    assert_string_equal(reason(c, a, "n1"), "no free host port (the node has no port range)");
    assert_string_equal(summary(c, a), "0 of 2 nodes fit: 2 have no free host port");
    /* one port is left: an app with one port fits, none without ports too */
    place_app_t *one = app(c, (app_opts_t){.cpus = 0.1, .mem = 1, .ports = 1});
    assert_string_equal(pick(c, one), "n0");
    assert_string_equal(pick(c, one), "-");
    place_app_t *none = app(c, (app_opts_t){.cpus = 0.1, .mem = 1});
    assert_string_equal(picks(c, none, 2), "n1 n0");
    place_app_free(one);
    place_app_free(none);
    place_app_free(a);
    place_cluster_free(c);
}

static void test_fixed_ports(void **state)
{
    place_cluster_t *c = place_cluster_new();
    node(c, "n0", NULL, 100, 100000, 31000, 31001);
    node(c, "n1", NULL, 100, 100000, 31000, 31001);
    node(c, "n2", NULL, 100, 100000, 0, 0);
    int p8080 = 8080;
    place_app_t *a = app(c, (app_opts_t){.cpus = 0.1, .mem = 1, .fixed = &p8080, .n_fixed = 1});
    /* outside the range is fine, even on a node without one; once per node */
    assert_string_equal(picks(c, a, 4), "n0 n1 n2 -");
    assert_string_equal(reason(c, a, "n1"), "host port 8080 already in use");
    assert_string_equal(summary(c, a), "0 of 3 nodes fit: 3 have host port 8080 in use");
    place_node_release(c, 1, 0.1, 1, 0, &p8080, 1);
    assert_string_equal(reason(c, a, "n1"), "");
    assert_string_equal(pick(c, a), "n1");

    /* a port held by something already running refuses the node too */
    int p9000 = 9000;
    place_node_use(c, 0, 0, 0, 0, &p9000, 1);
    place_app_t *b = app(c, (app_opts_t){.cpus = 0.1, .mem = 1, .fixed = &p9000, .n_fixed = 1});
    assert_string_equal(pick(c, b), "n1");
    place_app_free(b);

    /* a fixed port inside the range takes one of the range's ports */
    int p31000 = 31000;
    place_app_t *f =
        app(c, (app_opts_t){.cpus = 0.1, .mem = 1, .ports = 1, .fixed = &p31000, .n_fixed = 1});
    assert_string_equal(picks(c, f, 3), "n0 n1 -");
    assert_string_equal(reason(c, f, "n2"), "no free host port (the node has no port range)");
    place_app_t *d = app(c, (app_opts_t){.cpus = 0.1, .mem = 1, .ports = 1});
    assert_string_equal(pick(c, d), "-");
    place_node_release(c, 0, 0.1, 1, 1, &p31000, 1);
    assert_string_equal(pick(c, d), "n0");
    place_app_free(d);
    place_app_free(f);
    place_app_free(a);
    place_cluster_free(c);
}

static void test_isolate(void **state)
{
    place_cluster_t *c = place_cluster_new();
    node(c, "n0", NULL, 4, 1024, 0, 0);
    place_node_in_t in = {.id = "n1",
                          .hostname = "n1",
                          .cpus = 4,
                          .mem_mb = 1024,
                          .isolates = PLACE_ISO_PROCESS | PLACE_ISO_OCI};
    assert_int_equal(place_node_add(c, &in, NULL), 1);
    place_app_t *a = app(c, (app_opts_t){.cpus = 1, .mem = 1, .isolate = PLACE_ISO_OCI});
    assert_string_equal(reason(c, a, "n0"), "no isolate oci (has process)");
    assert_string_equal(picks(c, a, 5), "n1 n1 n1 n1 -");
    assert_string_equal(summary(c, a),
                        "0 of 2 nodes fit: 1 lacks isolate oci, 1 lacks cpus (needs 1)");
    place_app_t *d = app(c, (app_opts_t){.cpus = 1, .mem = 1, .isolate = PLACE_ISO_DOCKER});
    assert_string_equal(reason(c, d, "n1"), "no isolate docker (has process, oci)");
    assert_string_equal(summary(c, d), "0 of 2 nodes fit: 2 lack isolate docker");
    /* isolate 0 means process */
    place_app_t *p = app(c, (app_opts_t){.cpus = 1, .mem = 1});
    assert_string_equal(pick(c, p), "n0");
    place_app_free(p);
    place_app_free(d);
    place_app_free(a);
    place_cluster_free(c);
}

/* ---- constraints -------------------------------------------------------------------------- */

static place_cluster_t *racks(void)
{
    place_cluster_t *c = place_cluster_new();
    node(c, "web-1", "rack=r1,disk=ssd", 8, 8192, 31000, 31099);
    node(c, "web-2", "rack=r1,disk=hdd", 8, 8192, 31000, 31099);
    node(c, "web-3", "rack=r2,disk=ssd", 8, 8192, 31000, 31099);
    node(c, "db-1", "rack=r2", 8, 8192, 31000, 31099);
    node(c, "db-2", NULL, 8, 8192, 31000, 31099);
    return c;
}

static void test_unique(void **state)
{
    place_cluster_t *c = racks();
    place_app_t *a =
        app(c, (app_opts_t){.cpus = 0.1, .mem = 1, .constraints = "[[\"hostname\", \"UNIQUE\"]]"});
    assert_string_equal(picks(c, a, 6), "web-1 web-2 web-3 db-1 db-2 -");
    assert_string_equal(reason(c, a, "web-1"),
                        "constraint [\"hostname\", \"UNIQUE\"] refused (already one on web-1)");
    assert_string_equal(summary(c, a),
                        "0 of 5 nodes fit: 5 refused by constraint [\"hostname\", \"UNIQUE\"]");
    place_app_free(a);

    /* per label value; a node without the label is refused */
    place_app_t *r =
        app(c, (app_opts_t){.cpus = 0.1, .mem = 1, .constraints = "[[\"rack\", \"UNIQUE\"]]"});
    assert_string_equal(picks(c, r, 3), "web-1 web-3 -");
    assert_string_equal(reason(c, r, "web-2"),
                        "constraint [\"rack\", \"UNIQUE\"] refused (already one on rack=r1)");
    assert_string_equal(reason(c, r, "db-2"),
                        "constraint [\"rack\", \"UNIQUE\"] refused (no label rack)");
    place_app_free(r);
    place_cluster_free(c);
}

static void test_cluster_with_value(void **state)
{
    place_cluster_t *c = racks();
    place_app_t *a = app(
        c, (app_opts_t){.cpus = 4, .mem = 1, .constraints = "[[\"disk\", \"CLUSTER\", \"ssd\"]]"});
    assert_string_equal(picks(c, a, 5), "web-1 web-3 web-1 web-3 -");
    assert_string_equal(reason(c, a, "web-2"),
                        "constraint [\"disk\", \"CLUSTER\", \"ssd\"] refused (disk=hdd)");
    assert_string_equal(reason(c, a, "db-1"),
                        "constraint [\"disk\", \"CLUSTER\", \"ssd\"] refused (no label disk)");
    assert_string_equal(reason(c, a, "web-1"), "not enough cpus (needs 4, free 0 of 8)");
    assert_string_equal(summary(c, a),
                        "0 of 5 nodes fit: 3 refused by constraint [\"disk\", \"CLUSTER\", "
                        "\"ssd\"], 2 lack cpus (needs 4)");
    place_app_free(a);
    place_cluster_free(c);
}

static void test_cluster_without_value(void **state)
{
    place_cluster_t *c = racks();
    const char *cons = "[[\"rack\", \"CLUSTER\"]]";
    /* the first instance chooses the rack, every other one follows */
    place_app_t *a = app(c, (app_opts_t){.cpus = 1, .mem = 1, .constraints = cons});
    assert_string_equal(picks(c, a, 4), "web-1 web-2 web-1 web-2");
    assert_string_equal(reason(c, a, "web-3"), "constraint [\"rack\", \"CLUSTER\"] refused "
                                               "(rack=r2; the app runs on rack=r1)");
    assert_string_equal(reason(c, a, "db-2"),
                        "constraint [\"rack\", \"CLUSTER\"] refused (no label rack)");
    place_app_free(a);

    /* an instance already running pins it: counted, not taken */
    place_app_t *b = app(c, (app_opts_t){.cpus = 1, .mem = 1, .constraints = cons});
    place_app_count(b, place_node_find(c, "db-1"), 1);
    assert_string_equal(picks(c, b, 3), "web-3 db-1 web-3");
    /* the rack stays while one instance is left on it, then any rack goes */
    place_app_count(b, place_node_find(c, "db-1"), -2);
    assert_string_equal(reason(c, b, "web-1"), "constraint [\"rack\", \"CLUSTER\"] refused "
                                               "(rack=r1; the app runs on rack=r2)");
    place_app_count(b, place_node_find(c, "web-3"), -1);
    assert_non_null(strstr(reason(c, b, "web-1"), "the app runs on rack=r2"));
    place_app_count(b, place_node_find(c, "web-3"), -1);
    assert_string_equal(reason(c, b, "web-1"), "");
    assert_string_equal(summary(c, b), "4 of 5 nodes fit: 1 refused by constraint "
                                       "[\"rack\", \"CLUSTER\"]");
    /* an empty value is Marathon's way of saying none */
    place_app_t *e =
        app(c, (app_opts_t){.cpus = 1, .mem = 1, .constraints = "[[\"rack\", \"CLUSTER\", \"\"]]"});
    assert_string_equal(picks(c, e, 2), "db-1 web-3"); /* db-1 is the least used */
    place_app_free(e);
    place_app_free(b);
    place_cluster_free(c);
}

/* 3 racks of different sizes, 9 instances: 3 on each, whatever the sizes. */
static void test_group_by_even(void **state)
{
    place_cluster_t *c = place_cluster_new();
    node(c, "a0", "rack=r0", 8, 8192, 0, 0);
    for (int i = 0; i < 3; i++) {
        char id[16];
        snprintf(id, sizeof(id), "b%d", i);
        node(c, id, "rack=r1", 8, 8192, 0, 0);
    }
    for (int i = 0; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof(id), "c%d", i);
        node(c, id, "rack=r2", 8, 8192, 0, 0);
    }
    node(c, "nolabel", NULL, 8, 8192, 0, 0);
    for (int strategy = 0; strategy < 2; strategy++) {
        place_app_t *a = app(c, (app_opts_t){.cpus = 0.5,
                                             .mem = 1,
                                             .constraints = "[[\"rack\", \"GROUP_BY\", \"3\"]]",
                                             .strategy = (place_strategy_t)strategy});
        int per[3] = {0};
        int placed[10] = {0};
        for (int i = 0; i < 9; i++) {
            int n = place_pick(c, a);
            assert_true(n >= 0 && n < 9);
            placed[n]++;
            per[n == 0 ? 0 : n <= 3 ? 1 : 2]++;
            /* never more than one ahead of the emptiest rack */
            int lo = per[0] < per[1] ? per[0] : per[1];
            lo = lo < per[2] ? lo : per[2];
            int hi = per[0] > per[1] ? per[0] : per[1];
            hi = hi > per[2] ? hi : per[2];
            assert_true(hi - lo <= 1);
        }
        assert_int_equal(per[0], 3);
        assert_int_equal(per[1], 3);
        assert_int_equal(per[2], 3);
        if (strategy == PLACE_SPREAD) {
            /* inside a rack, spread over its nodes */
            assert_int_equal(placed[1], 1);
            assert_int_equal(placed[2], 1);
            assert_int_equal(placed[3], 1);
        } else {
            /* binpack fills the first node of each rack */
            assert_int_equal(placed[1], 3);
            assert_int_equal(placed[4], 3);
        }
        assert_string_equal(reason(c, a, "nolabel"),
                            "constraint [\"rack\", \"GROUP_BY\", \"3\"] refused (no label rack)");
        /* give back what was taken for the next round */
        for (int n = 0; n < 9; n++) {
            place_node_release(c, n, 0.5 * placed[n], placed[n], 0, NULL, 0);
            place_app_count(a, n, -placed[n]);
        }
        place_app_free(a);
    }
    /* instances already running count: r0 has 2, so r1 and r2 get the next ones */
    place_app_t *a =
        app(c, (app_opts_t){.cpus = 0.5, .mem = 1, .constraints = "[[\"rack\", \"GROUP_BY\"]]"});
    place_app_count(a, 0, 2);
    /* then equal racks: the node with the fewest of the app (not a0) */
    assert_string_equal(picks(c, a, 5), "b0 c0 b1 c1 b2");
    place_app_free(a);
    /* an uneven rack that is full is skipped: the evenness is a preference */
    place_cluster_t *d = place_cluster_new();
    node(d, "x0", "rack=r0", 1, 8192, 0, 0);
    node(d, "y0", "rack=r1", 8, 8192, 0, 0);
    a = app(d, (app_opts_t){.cpus = 1, .mem = 1, .constraints = "[[\"rack\", \"GROUP_BY\"]]"});
    assert_string_equal(picks(d, a, 4), "x0 y0 y0 y0");
    place_app_free(a);
    place_cluster_free(d);
    place_cluster_free(c);
}

static void test_like_unlike(void **state)
{
    place_cluster_t *c = racks();
    /* whole-value match: "web" alone matches nothing */
    place_app_t *a = app(
        c,
        (app_opts_t){.cpus = 0.1, .mem = 1, .constraints = "[[\"hostname\", \"LIKE\", \"web\"]]"});
    assert_string_equal(pick(c, a), "-");
    assert_string_equal(reason(c, a, "web-1"),
                        "constraint [\"hostname\", \"LIKE\", \"web\"] refused (web-1)");
    place_app_free(a);
    a = app(c, (app_opts_t){.cpus = 0.1,
                            .mem = 1,
                            .constraints = "[[\"hostname\", \"LIKE\", \"web-[23]|db-1\"], "
                                           "[\"hostname\", \"UNIQUE\"]]"});
    assert_string_equal(picks(c, a, 4), "web-2 web-3 db-1 -");
    place_app_free(a);
    /* LIKE refuses a node without the label; UNLIKE takes it */
    a = app(c, (app_opts_t){.cpus = 0.1,
                            .mem = 1,
                            .constraints = "[[\"rack\", \"LIKE\", \"r.*\"], "
                                           "[\"hostname\", \"UNIQUE\"]]"});
    assert_string_equal(picks(c, a, 5), "web-1 web-2 web-3 db-1 -");
    assert_string_equal(reason(c, a, "db-2"),
                        "constraint [\"rack\", \"LIKE\", \"r.*\"] refused (no label rack)");
    place_app_free(a);
    a = app(c, (app_opts_t){.cpus = 0.1,
                            .mem = 1,
                            .constraints = "[[\"disk\", \"UNLIKE\", \"ss.\"], "
                                           "[\"hostname\", \"UNIQUE\"]]"});
    /* db-2 is the least used (web-2 and db-1 hold two of the apps above) */
    assert_string_equal(picks(c, a, 4), "db-2 web-2 db-1 -");
    assert_string_equal(reason(c, a, "web-3"),
                        "constraint [\"disk\", \"UNLIKE\", \"ss.\"] refused (disk=ssd)");
    place_app_free(a);
    place_cluster_free(c);
}

static void test_max_per(void **state)
{
    place_cluster_t *c = racks();
    place_app_t *a = app(
        c, (app_opts_t){.cpus = 0.1, .mem = 1, .constraints = "[[\"rack\", \"MAX_PER\", \"2\"]]"});
    assert_string_equal(picks(c, a, 5), "web-1 web-2 web-3 db-1 -");
    assert_string_equal(reason(c, a, "web-1"),
                        "constraint [\"rack\", \"MAX_PER\", \"2\"] refused (already 2 on rack=r1)");
    assert_string_equal(reason(c, a, "db-2"),
                        "constraint [\"rack\", \"MAX_PER\", \"2\"] refused (no label rack)");
    /* one goes: its rack takes one again */
    place_node_release(c, place_node_find(c, "web-2"), 0.1, 1, 0, NULL, 0);
    place_app_count(a, place_node_find(c, "web-2"), -1);
    assert_string_equal(picks(c, a, 2), "web-2 -");
    place_app_free(a);
    place_cluster_free(c);
}

static void test_is(void **state)
{
    place_cluster_t *c = racks();
    place_app_t *a =
        app(c, (app_opts_t){.cpus = 0.1, .mem = 1, .constraints = "[[\"rack\", \"IS\", \"r2\"]]"});
    assert_string_equal(picks(c, a, 3), "web-3 db-1 web-3");
    assert_string_equal(reason(c, a, "web-1"),
                        "constraint [\"rack\", \"IS\", \"r2\"] refused (rack=r1)");
    assert_string_equal(reason(c, a, "db-2"),
                        "constraint [\"rack\", \"IS\", \"r2\"] refused (no label rack)");
    place_app_free(a);
    /* a value that exists nowhere */
    a = app(c, (app_opts_t){
                   .cpus = 0.1, .mem = 1, .constraints = "[[\"hostname\", \"IS\", \"web-9\"]]"});
    assert_string_equal(pick(c, a), "-");
    assert_string_equal(summary(c, a), "0 of 5 nodes fit: 5 refused by constraint "
                                       "[\"hostname\", \"IS\", \"web-9\"]");
    place_app_free(a);
    place_cluster_free(c);
}

/* Which nodes each operator accepts when a node lacks the label. */
static void test_missing_labels(void **state)
{
    place_cluster_t *c = place_cluster_new();
    node(c, "bare", NULL, 8, 8192, 0, 0);
    static const struct {
        const char *cons;
        bool takes;
    } cases[] = {
        {"[[\"zone\", \"UNIQUE\"]]", false},         {"[[\"zone\", \"CLUSTER\", \"a\"]]", false},
        {"[[\"zone\", \"CLUSTER\"]]", false},        {"[[\"zone\", \"GROUP_BY\"]]", false},
        {"[[\"zone\", \"LIKE\", \".*\"]]", false},   {"[[\"zone\", \"UNLIKE\", \".*\"]]", true},
        {"[[\"zone\", \"MAX_PER\", \"3\"]]", false}, {"[[\"zone\", \"IS\", \"\"]]", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        place_app_t *a = app(c, (app_opts_t){.cpus = 0.1, .mem = 1, .constraints = cases[i].cons});
        const char *got = pick(c, a);
        if (strcmp(got, cases[i].takes ? "bare" : "-") != 0)
            fail_msg("%s: picked %s", cases[i].cons, got);
        if (!cases[i].takes)
            assert_non_null(strstr(reason(c, a, "bare"), "refused (no label zone)"));
        place_app_free(a);
    }
    place_cluster_free(c);
}

/* ---- strategies --------------------------------------------------------------------------- */

static void test_spread_vs_binpack(void **state)
{
    place_cluster_t *c = place_cluster_new();
    node(c, "n0", NULL, 4, 4096, 0, 0);
    node(c, "n1", NULL, 4, 4096, 0, 0);
    node(c, "n2", NULL, 2, 2048, 0, 0);
    /* other apps' load: n0 half used, n1 a quarter */
    place_node_use(c, 0, 2, 2048, 0, NULL, 0);
    place_node_use(c, 1, 1, 1024, 0, NULL, 0);
    place_app_t *s = app(c, (app_opts_t){.cpus = 1, .mem = 1024});
    /* spread: fewest of this app first, then the least used */
    assert_string_equal(picks(c, s, 3), "n2 n1 n0");
    place_app_t *b = app(c, (app_opts_t){.cpus = 1, .mem = 1024, .strategy = PLACE_BINPACK});
    /* n0 3/4, n1 2/4, n2 1/2 used: binpack fills the fullest until it is full */
    assert_string_equal(picks(c, b, 4), "n0 n1 n1 n2");
    assert_string_equal(picks(c, s, 1), "-");
    place_app_free(b);
    place_app_free(s);

    /* equal nodes: ties go to the lowest index */
    place_cluster_t *d = place_cluster_new();
    node(d, "m0", NULL, 2, 2048, 0, 0);
    node(d, "m1", NULL, 2, 2048, 0, 0);
    node(d, "m2", NULL, 2, 2048, 0, 0);
    s = app(d, (app_opts_t){.cpus = 0.5, .mem = 1});
    assert_string_equal(picks(d, s, 4), "m0 m1 m2 m0");
    b = app(d, (app_opts_t){.cpus = 0.5, .mem = 1, .strategy = PLACE_BINPACK});
    /* m0 is the fullest now */
    assert_string_equal(picks(d, b, 3), "m0 m0 m1");
    /* spread counts its own instances before the share: m2 (1 of s) beats m1 (1 of s, more used) */
    assert_string_equal(pick(d, s), "m2");
    place_app_free(b);
    place_app_free(s);
    place_cluster_free(d);
    place_cluster_free(c);
}

/* ---- explain ------------------------------------------------------------------------------ */

static void test_explain_summary(void **state)
{
    place_cluster_t *c = place_cluster_new();
    node(c, "n0", "disk=hdd", 4, 4096, 0, 0);
    node(c, "n1", "disk=hdd", 4, 4096, 0, 0);
    node(c, "n2", "disk=ssd", 4, 256, 0, 0);
    place_app_t *a = app(
        c,
        (app_opts_t){.cpus = 0.5, .mem = 512, .constraints = "[[\"disk\", \"CLUSTER\", \"ssd\"]]"});
    assert_int_equal(place_pick(c, a), -ENOSPC);
    json_t *e = place_explain(c, a, 10);
    assert_string_equal(json_string_value(json_object_get(e, "summary")),
                        "0 of 3 nodes fit: 2 refused by constraint [\"disk\", \"CLUSTER\", "
                        "\"ssd\"], 1 lacks memory (needs 512 MiB)");
    json_t *nodes = json_object_get(e, "nodes");
    assert_int_equal(json_array_size(nodes), 3);
    assert_string_equal(json_string_value(json_object_get(json_array_get(nodes, 0), "node")), "n0");
    assert_string_equal(json_string_value(json_object_get(json_array_get(nodes, 2), "reason")),
                        "not enough memory (needs 512 MiB, free 256 of 256)");
    json_decref(e);
    /* at most max_nodes listed; the summary still counts all */
    e = place_explain(c, a, 1);
    assert_int_equal(json_array_size(json_object_get(e, "nodes")), 1);
    assert_non_null(strstr(json_string_value(json_object_get(e, "summary")), "2 refused"));
    json_decref(e);
    /* the first reason wins: isolate before constraints before resources */
    place_app_t *o = app(c, (app_opts_t){.cpus = 100,
                                         .mem = 100000,
                                         .isolate = PLACE_ISO_OCI,
                                         .constraints = "[[\"disk\", \"IS\", \"ssd\"]]"});
    assert_string_equal(summary(c, o), "0 of 3 nodes fit: 3 lack isolate oci");
    place_app_free(o);
    o = app(c, (app_opts_t){.cpus = 100,
                            .mem = 100000,
                            .constraints = "[[\"hostname\", \"UNIQUE\"], "
                                           "[\"disk\", \"IS\", \"ssd\"]]"});
    place_app_count(o, 2, 1);
    /* static constraints come before dynamic ones, whatever their order */
    assert_string_equal(reason(c, o, "n0"),
                        "constraint [\"disk\", \"IS\", \"ssd\"] refused (disk=hdd)");
    assert_string_equal(reason(c, o, "n2"),
                        "constraint [\"hostname\", \"UNIQUE\"] refused (already one on n2)");
    place_app_count(o, 2, -1);
    /* cpus before memory */
    assert_string_equal(reason(c, o, "n2"), "not enough cpus (needs 100, free 4 of 4)");
    place_app_free(o);
    /* when some fit, the summary says how many */
    place_app_t *f = app(c, (app_opts_t){.cpus = 0.5, .mem = 512});
    assert_string_equal(summary(c, f), "2 of 3 nodes fit: 1 lacks memory (needs 512 MiB)");
    place_app_free(f);
    place_app_free(a);
    place_cluster_free(c);

    /* no nodes at all */
    c = place_cluster_new();
    a = app(c, (app_opts_t){.cpus = 1, .mem = 1});
    assert_int_equal(place_pick(c, a), -ENOSPC);
    assert_string_equal(summary(c, a), "no nodes registered");
    place_app_free(a);
    place_cluster_free(c);
}

/* ---- lifecycle and errors ----------------------------------------------------------------- */

static void test_release_then_pick(void **state)
{
    place_cluster_t *c = place_cluster_new();
    node(c, "n0", "rack=r0", 1, 1024, 31000, 31000);
    node(c, "n1", "rack=r1", 1, 1024, 31000, 31000);
    place_app_t *a = app(
        c, (app_opts_t){
               .cpus = 1, .mem = 512, .ports = 1, .constraints = "[[\"hostname\", \"UNIQUE\"]]"});
    assert_string_equal(picks(c, a, 3), "n0 n1 -");
    /* the instance on n0 goes: resources and the UNIQUE count both come back */
    place_node_release(c, 0, 1, 512, 1, NULL, 0);
    assert_string_equal(reason(c, a, "n0"),
                        "constraint [\"hostname\", \"UNIQUE\"] refused (already one on n0)");
    place_app_count(a, 0, -1);
    assert_string_equal(reason(c, a, "n0"), "");
    assert_string_equal(picks(c, a, 2), "n0 -");
    /* out-of-range nodes and over-removal are ignored */
    place_app_count(a, 7, 1);
    place_app_count(a, -1, 1);
    place_node_use(c, 9, 1, 1, 1, NULL, 0);
    place_app_count(a, 1, -5);
    place_node_release(c, 1, 1, 512, 1, NULL, 0);
    assert_string_equal(picks(c, a, 2), "n1 -");
    /* the count went to none, not below: one instance is one again */
    assert_string_equal(reason(c, a, "n1"),
                        "constraint [\"hostname\", \"UNIQUE\"] refused (already one on n1)");
    place_app_free(a);
    place_cluster_free(c);
}

static void test_malformed_constraints(void **state)
{
    place_cluster_t *c = racks();
    static const struct {
        const char *cons, *msg;
    } cases[] = {
        {"{\"a\": 1}", "constraints: expected an array"},
        {"[[\"hostname\"]]", "constraints[0]: expected [field, operator]"},
        {"[[\"hostname\", \"UNIQUE\"], \"x\"]", "constraints[1]: expected"},
        {"[[\"a\", \"IS\", \"b\", \"c\"]]", "constraints[0]: expected"},
        {"[[\"\", \"UNIQUE\"]]", "constraints[0][0]: the field"},
        {"[[3, \"UNIQUE\"]]", "constraints[0][0]: the field"},
        {"[[\"rack\", 1]]", "constraints[0][1]: the operator"},
        {"[[\"rack\", \"unique\"]]", "constraints[0][1]: unknown operator unique"},
        {"[[\"rack\", \"NEAR\", \"x\"]]", "constraints[0][1]: unknown operator NEAR"},
        {"[[\"rack\", \"IS\", 3]]", "constraints[0][2]: the value must be a string"},
        {"[[\"rack\", \"UNIQUE\", \"x\"]]", "constraints[0][2]: UNIQUE takes no value"},
        {"[[\"rack\", \"IS\"]]", "constraints[0]: IS needs a value"},
        {"[[\"rack\", \"LIKE\"]]", "constraints[0]: LIKE needs a value"},
        {"[[\"rack\", \"UNLIKE\"]]", "constraints[0]: UNLIKE needs a value"},
        {"[[\"rack\", \"MAX_PER\"]]", "constraints[0][2]: MAX_PER needs a positive integer"},
        {"[[\"rack\", \"MAX_PER\", \"0\"]]", "constraints[0][2]: MAX_PER needs a positive"},
        {"[[\"rack\", \"MAX_PER\", \"2x\"]]", "constraints[0][2]: MAX_PER needs a positive"},
        {"[[\"rack\", \"GROUP_BY\", \"-1\"]]", "constraints[0][2]: GROUP_BY takes a positive"},
        {"[[\"rack\", \"UNIQUE\"], [\"rack\", \"LIKE\", \"r(\"]]",
         "constraints[1][2]: r( is not a regular expression"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        int rc = 0;
        err_t err = {0};
        place_app_t *a =
            app_try(c, (app_opts_t){.cpus = 1, .mem = 1, .constraints = cases[i].cons}, &rc, &err);
        if (rc != -EINVAL || a || !strstr(err.msg, cases[i].msg))
            fail_msg("%s: rc %d, message \"%s\", wanted \"%s\"", cases[i].cons, rc, err.msg,
                     cases[i].msg);
    }
    /* bad resources and ports */
    int rc = 0;
    err_t err = {0};
    assert_null(app_try(c, (app_opts_t){.cpus = -1, .mem = 1}, &rc, &err));
    assert_int_equal(rc, -EINVAL);
    assert_null(app_try(c, (app_opts_t){.cpus = 1, .mem = -1}, &rc, &err));
    assert_int_equal(rc, -EINVAL);
    int dup[] = {80, 80};
    assert_null(
        app_try(c, (app_opts_t){.cpus = 1, .mem = 1, .fixed = dup, .n_fixed = 2}, &rc, &err));
    assert_int_equal(rc, -EINVAL);
    assert_non_null(strstr(err.msg, "host port 80 is asked for twice"));
    int big = 70000;
    assert_null(
        app_try(c, (app_opts_t){.cpus = 1, .mem = 1, .fixed = &big, .n_fixed = 1}, &rc, &err));
    assert_int_equal(rc, -EINVAL);
    place_cluster_free(c);
}

/* ---- the fast path agrees with the general one -------------------------------------------- */

static uint64_t rng_state = 88172645463325252ull;

static unsigned rnd(unsigned n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (unsigned)(rng_state % n);
}

static place_cluster_t *random_cluster(size_t n)
{
    place_cluster_t *c = place_cluster_new();
    for (size_t i = 0; i < n; i++) {
        char id[32], labels[64];
        snprintf(id, sizeof(id), "n%zu", i);
        snprintf(labels, sizeof(labels), "rack=r%u,zone=z%u", rnd(7), rnd(3));
        node(c, id, labels, 1 + rnd(8), 512 + 512 * rnd(8), 20000, 20000 + (int)rnd(20));
        place_node_use(c, (int)i, 0.25 * rnd(4), 128 * rnd(4), 0, NULL, 0);
    }
    return c;
}

/* A fixed host port outside every range never clashes under UNIQUE
 * hostname, so it only switches the pick to the general scan: both must
 * choose the same nodes, in both strategies, with and without GROUP_BY. */
static void test_fast_and_general_agree(void **state)
{
    static const char *const cons[] = {
        "[[\"hostname\", \"UNIQUE\"]]",
        "[[\"hostname\", \"UNIQUE\"], [\"rack\", \"GROUP_BY\"]]",
        "[[\"hostname\", \"UNIQUE\"], [\"zone\", \"GROUP_BY\"], [\"rack\", \"LIKE\", \"r[0-4]\"]]",
    };
    int port = 8080;
    for (size_t k = 0; k < sizeof(cons) / sizeof(*cons); k++)
        for (int strategy = 0; strategy < 2; strategy++) {
            uint64_t seed = rng_state;
            place_cluster_t *c1 = random_cluster(300);
            rng_state = seed;
            place_cluster_t *c2 = random_cluster(300);
            app_opts_t o = {.cpus = 0.5,
                            .mem = 256,
                            .ports = 1,
                            .constraints = cons[k],
                            .strategy = (place_strategy_t)strategy};
            place_app_t *fast = app(c1, o);
            o.fixed = &port;
            o.n_fixed = 1;
            place_app_t *general = app(c2, o);
            int placed = 0;
            for (;;) {
                int x = place_pick(c1, fast), y = place_pick(c2, general);
                if (x != y)
                    fail_msg("%s strategy %d: pick %d: fast %d, general %d", cons[k], strategy,
                             placed, x, y);
                if (x < 0)
                    break;
                placed++;
            }
            assert_true(placed > 50);
            place_app_free(fast);
            place_app_free(general);
            place_cluster_free(c1);
            place_cluster_free(c2);
        }
}

/* Random apps placed until full: never over capacity (checked against our
 * own bookkeeping), the chosen node is never one explain refuses, and a
 * failed pick matches "0 of N nodes fit". */
static void test_random_never_overcommits(void **state)
{
    enum { N = 60 };
    place_cluster_t *c = place_cluster_new();
    double cap_cpu[N], used_cpu[N] = {0};
    int64_t cap_mem[N], used_mem[N] = {0};
    int cap_ports[N], used_ports[N] = {0};
    for (int i = 0; i < N; i++) {
        char id[16], labels[64];
        snprintf(id, sizeof(id), "n%d", i);
        snprintf(labels, sizeof(labels), "rack=r%u,disk=%s", rnd(5), rnd(2) ? "ssd" : "hdd");
        cap_cpu[i] = 1 + rnd(4);
        cap_mem[i] = 256 * (1 + rnd(8));
        cap_ports[i] = 1 + (int)rnd(6);
        node(c, id, labels, cap_cpu[i], cap_mem[i], 30000, 30000 + cap_ports[i] - 1);
    }
    static const char *const cons[] = {
        NULL,
        "[[\"rack\", \"GROUP_BY\"]]",
        "[[\"disk\", \"CLUSTER\", \"ssd\"]]",
        "[[\"rack\", \"MAX_PER\", \"3\"]]",
        "[[\"rack\", \"CLUSTER\"]]",
        "[[\"hostname\", \"UNIQUE\"], [\"disk\", \"UNLIKE\", \"h.*\"]]",
    };
    int fails = 0, placed = 0;
    for (int round = 0; round < 40; round++) {
        app_opts_t o = {.cpus = 0.25 * (1 + rnd(4)),
                        .mem = 64 * (1 + rnd(6)),
                        .ports = (int)rnd(2),
                        .constraints = cons[rnd(6)],
                        .strategy = (place_strategy_t)rnd(2)};
        place_app_t *a = app(c, o);
        for (int k = 0; k < 8; k++) {
            json_t *e = place_explain(c, a, N);
            int n = place_pick(c, a);
            const char *s = json_string_value(json_object_get(e, "summary"));
            if (n < 0) {
                assert_true(strncmp(s, "0 of 60 nodes fit", 17) == 0);
                fails++;
                json_decref(e);
                break;
            }
            assert_true(strncmp(s, "0 of", 4) != 0);
            size_t j;
            json_t *r;
            json_array_foreach(json_object_get(e, "nodes"), j, r) assert_string_not_equal(
                json_string_value(json_object_get(r, "node")), place_node_id(c, n));
            json_decref(e);
            used_cpu[n] += o.cpus;
            used_mem[n] += o.mem;
            used_ports[n] += o.ports;
            assert_true(used_cpu[n] <= cap_cpu[n] + 1e-9);
            assert_true(used_mem[n] <= cap_mem[n]);
            assert_true(used_ports[n] <= cap_ports[n]);
            placed++;
        }
        place_app_free(a);
    }
    assert_true(placed > 50);
    assert_true(fails > 0);
    place_cluster_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_node_add_and_find),
        cmocka_unit_test(test_node_copies_input),
        cmocka_unit_test(test_cpus_exhausted),
        cmocka_unit_test(test_mem_exhausted),
        cmocka_unit_test(test_dynamic_ports_exhausted),
        cmocka_unit_test(test_fixed_ports),
        cmocka_unit_test(test_isolate),
        cmocka_unit_test(test_unique),
        cmocka_unit_test(test_cluster_with_value),
        cmocka_unit_test(test_cluster_without_value),
        cmocka_unit_test(test_group_by_even),
        cmocka_unit_test(test_like_unlike),
        cmocka_unit_test(test_max_per),
        cmocka_unit_test(test_is),
        cmocka_unit_test(test_missing_labels),
        cmocka_unit_test(test_spread_vs_binpack),
        cmocka_unit_test(test_explain_summary),
        cmocka_unit_test(test_release_then_pick),
        cmocka_unit_test(test_malformed_constraints),
        cmocka_unit_test(test_fast_and_general_agree),
        cmocka_unit_test(test_random_never_overcommits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
