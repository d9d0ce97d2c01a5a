/* The service table: copies, ordering, revisions only on real changes, and
 * listeners that may remove themselves or each other while being called. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "locator/table.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* ---- helpers ------------------------------------------------------------- */

typedef struct seen {
    int calls;
    char names[16][64];
    size_t n[16];
    uint64_t revision[16];
} seen_t;

static void record(loc_table_t *t, const loc_entry_t *e, void *data)
{
    seen_t *s = data;
    if (s->calls < 16) {
        snprintf(s->names[s->calls], sizeof(s->names[0]), "%s", e->name);
        s->n[s->calls] = e->n;
        s->revision[s->calls] = loc_table_revision(t);
    }
    s->calls++;
}

static void set1(loc_table_t *t, const char *name, const char *host, int port, int64_t version)
{
    loc_ep_t ep = {.host = host, .port = port, .version = version};
    loc_table_set(t, name, &ep, 1, version, "service");
}

/* ---- tests --------------------------------------------------------------- */

static void test_empty(void **state)
{
    (void)state;
    loc_table_t *t = loc_table_new();
    assert_int_equal(loc_table_count(t), 0);
    assert_int_equal(loc_table_revision(t), 0);
    assert_null(loc_table_get(t, "/a"));
    /* Removing what is not there is no change. */
    loc_table_set(t, "/a", NULL, 0, 0, NULL);
    assert_int_equal(loc_table_revision(t), 0);
    loc_table_free(t);
    loc_table_free(NULL);
}

static void test_set_copies_and_sorts(void **state)
{
    (void)state;
    loc_table_t *t = loc_table_new();
    char host1[] = "10.0.0.9", host2[] = "10.0.0.1", inst[] = "web.1", node[] = "n1";
    loc_ep_t eps[3] = {
        {.host = host1, .port = 80, .instance = inst, .node = node, .version = 2},
        {.host = host2, .port = 9000, .version = 3},
        {.host = host2, .port = 81, .version = 3},
    };
    char name[] = "/prod/web";
    loc_table_set(t, name, eps, 3, 3, "worker");
    /* The caller's memory is not referenced. */
    memset(host1, 'x', sizeof(host1) - 1);
    memset(host2, 'x', sizeof(host2) - 1);
    memset(inst, 'x', sizeof(inst) - 1);
    memset(name, 'x', sizeof(name) - 1);
    const loc_entry_t *e = loc_table_get(t, "/prod/web");
    assert_non_null(e);
    assert_string_equal(e->name, "/prod/web");
    assert_int_equal(e->n, 3);
    assert_int_equal(e->version, 3);
    assert_string_equal(e->api, "worker");
    assert_string_equal(e->eps[0].host, "10.0.0.1");
    assert_int_equal(e->eps[0].port, 81);
    assert_string_equal(e->eps[1].host, "10.0.0.1");
    assert_int_equal(e->eps[1].port, 9000);
    assert_string_equal(e->eps[2].host, "10.0.0.9");
    assert_int_equal(e->eps[2].port, 80);
    assert_string_equal(e->eps[2].instance, "web.1");
    assert_string_equal(e->eps[2].node, "n1");
    assert_int_equal(e->eps[2].version, 2);
    assert_null(e->eps[0].instance);
    assert_int_equal(loc_table_count(t), 1);
    assert_int_equal(loc_table_revision(t), 1);
    loc_table_free(t);
}

static void test_defaults(void **state)
{
    (void)state;
    loc_table_t *t = loc_table_new();
    loc_ep_t ep = {.host = NULL, .port = 5};
    loc_table_set(t, "/x", &ep, 1, 1, NULL);
    const loc_entry_t *e = loc_table_get(t, "/x");
    assert_non_null(e);
    assert_string_equal(e->api, "service");
    assert_string_equal(e->eps[0].host, "");
    loc_table_free(t);
}

/* A set that changes nothing keeps the revision and calls nobody; any real
 * difference (an endpoint, the version, the api, an endpoint's node or
 * version) is a change. */
static void test_revision_only_on_change(void **state)
{
    (void)state;
    loc_table_t *t = loc_table_new();
    seen_t s = {0};
    loc_table_listen(t, record, &s);
    loc_ep_t a[2] = {{.host = "10.0.0.1", .port = 1, .node = "n1", .version = 1},
                     {.host = "10.0.0.2", .port = 2, .node = "n2", .version = 1}};
    loc_ep_t b[2] = {a[1], a[0]}; /* same endpoints, other order */
    loc_table_set(t, "/a", a, 2, 1, "service");
    assert_int_equal(loc_table_revision(t), 1);
    loc_table_set(t, "/a", b, 2, 1, "service");
    assert_int_equal(loc_table_revision(t), 1);
    assert_int_equal(s.calls, 1);

    /* api NULL is stored as "service": setting it again is no change. */
    loc_table_set(t, "/a", a, 2, 1, NULL);
    assert_int_equal(loc_table_revision(t), 1);
    loc_table_set(t, "/a", a, 2, 1, NULL);
    assert_int_equal(loc_table_revision(t), 1);
    assert_int_equal(s.calls, 1);

    loc_table_set(t, "/a", a, 2, 2, "service"); /* entry version */
    assert_int_equal(loc_table_revision(t), 2);
    loc_table_set(t, "/a", a, 2, 2, "worker"); /* api */
    assert_int_equal(loc_table_revision(t), 3);
    b[0] = a[0];
    b[1] = a[1];
    b[1].node = "n3"; /* an endpoint's node */
    loc_table_set(t, "/a", b, 2, 2, "worker");
    assert_int_equal(loc_table_revision(t), 4);
    b[1].version = 7; /* an endpoint's version */
    loc_table_set(t, "/a", b, 2, 2, "worker");
    assert_int_equal(loc_table_revision(t), 5);
    b[1].port = 3; /* an endpoint */
    loc_table_set(t, "/a", b, 2, 2, "worker");
    assert_int_equal(loc_table_revision(t), 6);
    loc_table_set(t, "/a", b, 1, 2, "worker"); /* one fewer */
    assert_int_equal(loc_table_revision(t), 7);
    assert_int_equal(s.calls, 7);
    for (int i = 0; i < 7; i++) {
        assert_string_equal(s.names[i], "/a");
        assert_int_equal(s.revision[i], (uint64_t)i + 1);
    }
    loc_table_free(t);
}

/* Removal: listeners see the name with n == 0 (still valid during the
 * call), and the name is gone afterwards. */
static void test_remove(void **state)
{
    (void)state;
    loc_table_t *t = loc_table_new();
    set1(t, "/a", "h", 1, 1);
    set1(t, "/b", "h", 2, 1);
    set1(t, "/c", "h", 3, 1);
    seen_t s = {0};
    loc_table_listen(t, record, &s);
    loc_table_set(t, "/b", NULL, 0, 1, "service");
    assert_int_equal(s.calls, 1);
    assert_string_equal(s.names[0], "/b");
    assert_int_equal(s.n[0], 0);
    assert_int_equal(s.revision[0], 4);
    assert_null(loc_table_get(t, "/b"));
    assert_non_null(loc_table_get(t, "/a"));
    assert_non_null(loc_table_get(t, "/c"));
    assert_int_equal(loc_table_count(t), 2);
    /* Removing it again is no change. */
    loc_table_set(t, "/b", NULL, 0, 1, "service");
    assert_int_equal(s.calls, 1);
    assert_int_equal(loc_table_revision(t), 4);
    /* And it can come back. */
    set1(t, "/b", "h", 9, 2);
    assert_int_equal(loc_table_get(t, "/b")->eps[0].port, 9);
    assert_int_equal(loc_table_count(t), 3);
    loc_table_free(t);
}

typedef struct walk {
    char names[16][32];
    int n;
    int stop_after;
} walk_t;

static int walk_fn(const loc_entry_t *e, void *data)
{
    walk_t *w = data;
    snprintf(w->names[w->n++], sizeof(w->names[0]), "%s", e->name);
    return w->stop_after && w->n >= w->stop_after;
}

static void test_foreach_order(void **state)
{
    (void)state;
    loc_table_t *t = loc_table_new();
    const char *names[] = {"/m", "/b", "/z", "/a", "drover/locator", "/b@2", "/c"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        set1(t, names[i], "h", (int)i + 1, 1);
    /* Growing past the initial capacity keeps everything findable. */
    for (int i = 0; i < 40; i++) {
        char n[32];
        snprintf(n, sizeof(n), "/g/%02d", 39 - i);
        set1(t, n, "h", i + 100, 1);
    }
    assert_int_equal(loc_table_count(t), 47);
    walk_t w = {0};
    /* A big walk only records the first 16. */
    w.stop_after = 16;
    loc_table_foreach(t, walk_fn, &w);
    assert_int_equal(w.n, 16);
    assert_string_equal(w.names[0], "/a");
    assert_string_equal(w.names[1], "/b");
    assert_string_equal(w.names[2], "/b@2");
    assert_string_equal(w.names[3], "/c");
    assert_string_equal(w.names[4], "/g/00");
    assert_string_equal(w.names[15], "/g/11");
    for (int i = 0; i < 40; i++) {
        char n[32];
        snprintf(n, sizeof(n), "/g/%02d", i);
        const loc_entry_t *e = loc_table_get(t, n);
        assert_non_null(e);
        assert_int_equal(e->eps[0].port, 139 - i);
    }
    w = (walk_t){.stop_after = 3};
    loc_table_foreach(t, walk_fn, &w);
    assert_int_equal(w.n, 3);
    loc_table_free(t);
}

/* ---- listeners ----------------------------------------------------------- */

typedef struct order {
    int log[32];
    int n;
    int ids[4];
    loc_table_t *t;
    int remove_self;                     /* index of a listener that unlistens itself */
    int remove_other_from, remove_other; /* listener a removes listener b */
} order_t;

typedef struct lctx {
    order_t *o;
    int idx;
} lctx_t;

static void ordered(loc_table_t *t, const loc_entry_t *e, void *data)
{
    lctx_t *c = data;
    order_t *o = c->o;
    o->log[o->n++] = c->idx;
    if (o->remove_self == c->idx)
        loc_table_unlisten(t, o->ids[c->idx]);
    if (o->remove_other_from == c->idx)
        loc_table_unlisten(t, o->ids[o->remove_other]);
}

static void test_listeners(void **state)
{
    (void)state;
    loc_table_t *t = loc_table_new();
    order_t o = {.remove_self = -1, .remove_other_from = -1};
    lctx_t ctx[4];
    for (int i = 0; i < 4; i++) {
        ctx[i] = (lctx_t){&o, i};
        o.ids[i] = loc_table_listen(t, ordered, &ctx[i]);
        assert_true(o.ids[i] > 0);
        if (i)
            assert_true(o.ids[i] != o.ids[i - 1]);
    }
    set1(t, "/a", "h", 1, 1);
    assert_int_equal(o.n, 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(o.log[i], i);

    /* Listener 1 removes itself: 2 and 3 are still called, in order. */
    o.n = 0;
    o.remove_self = 1;
    set1(t, "/a", "h", 2, 1);
    assert_int_equal(o.n, 4);
    assert_int_equal(o.log[0], 0);
    assert_int_equal(o.log[1], 1);
    assert_int_equal(o.log[2], 2);
    assert_int_equal(o.log[3], 3);
    o.n = 0;
    o.remove_self = -1;
    set1(t, "/a", "h", 3, 1);
    assert_int_equal(o.n, 3);
    assert_int_equal(o.log[0], 0);
    assert_int_equal(o.log[1], 2);
    assert_int_equal(o.log[2], 3);

    /* Listener 0 removes listener 2 before it runs: 2 is skipped. */
    o.n = 0;
    o.remove_other_from = 0;
    o.remove_other = 2;
    set1(t, "/a", "h", 4, 1);
    assert_int_equal(o.n, 2);
    assert_int_equal(o.log[0], 0);
    assert_int_equal(o.log[1], 3);

    /* Unlisten of an unknown id is harmless. */
    loc_table_unlisten(t, 12345);
    o.n = 0;
    o.remove_other_from = -1;
    loc_table_unlisten(t, o.ids[0]);
    set1(t, "/a", "h", 5, 1);
    assert_int_equal(o.n, 1);
    assert_int_equal(o.log[0], 3);
    loc_table_free(t);
}

/* Many names added and removed in a random order: every lookup and every
 * ordered walk agrees with a plain reference array (this exercises hash
 * collisions, growth and the deletion that shifts probe runs back). */
typedef struct walk_check {
    const char *prev;
    size_t n;
    bool sorted;
} walk_check_t;

static int walk_check_fn(const loc_entry_t *e, void *data)
{
    walk_check_t *w = data;
    if (w->prev && strcmp(w->prev, e->name) >= 0)
        w->sorted = false;
    w->prev = e->name;
    w->n++;
    return 0;
}

static void test_many_names(void **state)
{
    (void)state;
    enum { N = 20000 };
    loc_table_t *t = loc_table_new();
    static bool present[N];
    memset(present, 0, sizeof(present));
    unsigned seed = 12345;
    size_t count = 0;
    char name[32];
    for (int round = 0; round < 4 * N; round++) {
        seed = seed * 1103515245u + 12345u;
        int k = (int)((seed >> 8) % N);
        snprintf(name, sizeof(name), "/svc/%05d", k);
        if (present[k] && (seed & 0x10000)) {
            loc_table_set(t, name, NULL, 0, 0, NULL);
            present[k] = false;
            count--;
        } else if (!present[k]) {
            set1(t, name, "10.0.0.1", 1000 + k % 50000, k);
            present[k] = true;
            count++;
        }
        if (round % 4000 == 0) {
            walk_check_t w = {.sorted = true};
            loc_table_foreach(t, walk_check_fn, &w);
            assert_true(w.sorted);
            assert_int_equal(w.n, count);
        }
    }
    assert_int_equal(loc_table_count(t), count);
    for (int k = 0; k < N; k++) {
        snprintf(name, sizeof(name), "/svc/%05d", k);
        const loc_entry_t *e = loc_table_get(t, name);
        if (present[k]) {
            assert_non_null(e);
            assert_int_equal(e->version, k);
        } else {
            assert_null(e);
        }
    }
    walk_check_t w = {.sorted = true};
    loc_table_foreach(t, walk_check_fn, &w);
    assert_true(w.sorted);
    assert_int_equal(w.n, count);
    loc_table_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),     cmocka_unit_test(test_set_copies_and_sorts),
        cmocka_unit_test(test_defaults),  cmocka_unit_test(test_revision_only_on_change),
        cmocka_unit_test(test_remove),    cmocka_unit_test(test_foreach_order),
        cmocka_unit_test(test_listeners), cmocka_unit_test(test_many_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
