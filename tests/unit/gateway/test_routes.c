/* The gateway's route snapshot (src/gateway/routes.c): which route a
 * request matches, how backends are picked and ejected, how routing groups
 * split traffic, and that backend counters survive a rebuild while a
 * request can outlive its snapshot. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/log.h"
#include "gateway/routes.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ---------------------------------------------------------- */

static void add_pool(gw_builder_t *b, const char *name, int first_port, size_t n)
{
    gw_endpoint_in_t eps[16];
    assert_true(n <= 16);
    for (size_t i = 0; i < n; i++)
        eps[i] = (gw_endpoint_in_t){"127.0.0.1", first_port + (int)i};
    gw_builder_pool(b, name, eps, n);
}

static void add_route(gw_builder_t *b, const char *host, const char *path, const char *target)
{
    gw_route_in_t r = {
        .kind = GW_ROUTE_HTTP, .app = target, .host = host, .path = path, .target = target};
    err_t err = {0};
    assert_int_equal(gw_builder_route(b, &r, &err), 0);
}

static const char *match_app(const gw_snapshot_t *s, const char *host, const char *path)
{
    const gw_route_t *r =
        gw_snapshot_match(s, host, host ? strlen(host) : 0, path, path ? strlen(path) : 0);
    return r ? r->app : NULL;
}

static void assert_match(const gw_snapshot_t *s, const char *host, const char *path,
                         const char *want)
{
    const char *got = match_app(s, host, path);
    if (!want) {
        if (got)
            fail_msg("%s%s matched %s, want nothing", host, path, got);
        return;
    }
    if (!got || strcmp(got, want) != 0)
        fail_msg("%s%s matched %s, want %s", host ? host : "", path, got ? got : "nothing", want);
}

/* ---- matching ---------------------------------------------------------- */

static void test_match_precedence(void **state)
{
    (void)state;
    gw_builder_t *b = gw_builder_new(NULL);
    add_route(b, "web.example.com", "/", "/prod/web");
    add_route(b, "web.example.com", "/api", "/prod/api");
    add_route(b, "web.example.com", "/static/", "/prod/static");
    add_route(b, "*.example.com", "/", "/prod/wild");
    add_route(b, "*.eu.example.com", "/", "/prod/eu");
    add_route(b, NULL, "/health", "/prod/health");
    gw_snapshot_t *s = gw_builder_finish(b, 7);
    assert_int_equal(gw_snapshot_revision(s), 7);

    assert_match(s, "web.example.com", "/", "/prod/web");
    assert_match(s, "WEB.Example.COM:8080", "/x", "/prod/web");
    assert_match(s, "web.example.com.", "/x", "/prod/web");
    /* segment boundary: /api, /api/..., /api?q but not /apix */
    assert_match(s, "web.example.com", "/api", "/prod/api");
    assert_match(s, "web.example.com", "/api/v1", "/prod/api");
    assert_match(s, "web.example.com", "/api?q=1", "/prod/api");
    assert_match(s, "web.example.com", "/apix", "/prod/web");
    /* a prefix ending in / matches anything under it */
    assert_match(s, "web.example.com", "/static/a.css", "/prod/static");
    assert_match(s, "web.example.com", "/static", "/prod/web");
    /* wildcards: longest suffix first, never the bare domain */
    assert_match(s, "a.example.com", "/", "/prod/wild");
    assert_match(s, "a.b.example.com", "/", "/prod/wild");
    assert_match(s, "x.eu.example.com", "/", "/prod/eu");
    assert_match(s, "example.com", "/", NULL);
    assert_match(s, "example.com", "/health", "/prod/health");
    /* a host with no matching path falls through to any-host routes */
    assert_match(s, "a.example.com", "/health", "/prod/wild");
    assert_match(s, "other.org", "/health/live", "/prod/health");
    assert_match(s, "other.org", "/", NULL);
    assert_match(s, NULL, "/health", "/prod/health");
    assert_match(s, "", "/health", "/prod/health");

    size_t n;
    const gw_route_t *const *all = gw_snapshot_routes(s, &n);
    assert_int_equal(n, 6);
    /* exact first (longest path first), then wildcards, then any */
    assert_string_equal(all[0]->path, "/static/");
    assert_string_equal(all[3]->host, "*.eu.example.com");
    assert_string_equal(all[5]->host, "");
    gw_snapshot_unref(s);
}

static void test_route_errors(void **state)
{
    (void)state;
    gw_builder_t *b = gw_builder_new(NULL);
    err_t err = {0};
    add_route(b, "a.example.com", "/", "/one");
    gw_route_in_t dup = {.app = "/two", .host = "A.example.com", .path = "/", .target = "/two"};
    assert_int_equal(gw_builder_route(b, &dup, &err), -EEXIST);
    assert_non_null(strstr(err.msg, "/one"));

    gw_route_in_t none = {.app = "/three", .host = "b.example.com"};
    assert_int_equal(gw_builder_route(b, &none, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "no target"));

    gw_route_in_t badpath = {.app = "/x", .path = "nope", .target = "/x"};
    assert_int_equal(gw_builder_route(b, &badpath, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "nope"));

    gw_route_in_t tcp = {.kind = GW_ROUTE_TCP, .app = "/db", .target = "/db"};
    assert_int_equal(gw_builder_route(b, &tcp, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "internal port"));

    gw_route_in_t in1 = {.kind = GW_ROUTE_TCP, .app = "/db", .internal = 5432, .target = "/db"};
    assert_int_equal(gw_builder_route(b, &in1, &err), 0);
    gw_route_in_t in2 = {.app = "/web", .internal = 5432, .target = "/web"};
    assert_int_equal(gw_builder_route(b, &in2, &err), -EEXIST);
    assert_non_null(strstr(err.msg, "/db"));
    gw_builder_free(b);
}

static void test_internal_routes(void **state)
{
    (void)state;
    gw_builder_t *b = gw_builder_new(NULL);
    err_t err = {0};
    gw_route_in_t r1 = {.app = "/prod/web", .internal = 3000, .target = "/prod/web"};
    gw_route_in_t r2 = {
        .kind = GW_ROUTE_TCP, .app = "/prod/db", .internal = 2000, .target = "/prod/db"};
    gw_route_in_t r3 = {
        .app = "/prod/api", .host = "api.local", .internal = 4000, .target = "/prod/api"};
    assert_int_equal(gw_builder_route(b, &r1, &err), 0);
    assert_int_equal(gw_builder_route(b, &r2, &err), 0);
    assert_int_equal(gw_builder_route(b, &r3, &err), 0);
    gw_snapshot_t *s = gw_builder_finish(b, 1);
    size_t n;
    const gw_route_t *const *in = gw_snapshot_internal(s, &n);
    assert_int_equal(n, 3);
    assert_int_equal(in[0]->internal, 2000);
    assert_int_equal(in[1]->internal, 3000);
    assert_int_equal(in[2]->internal, 4000);
    assert_int_equal(in[0]->kind, GW_ROUTE_TCP);
    assert_string_equal(gw_snapshot_internal_route(s, 3000)->app, "/prod/web");
    assert_null(gw_snapshot_internal_route(s, 3001));
    /* an internal-only route (no host) is not reachable on the edge; one
     * with a host is both */
    assert_match(s, "any.host", "/", NULL);
    assert_match(s, "api.local", "/", "/prod/api");
    gw_snapshot_unref(s);
}

/* ---- picking ----------------------------------------------------------- */

static void test_roundrobin_and_skip_ejected(void **state)
{
    (void)state;
    gw_builder_t *b = gw_builder_new(NULL);
    add_pool(b, "/web", 9000, 3);
    add_route(b, NULL, "/", "/web");
    gw_snapshot_t *s = gw_builder_finish(b, 1);
    const gw_route_t *r = gw_snapshot_match(s, "x", 1, "/", 1);
    const gw_pool_t *p = gw_route_pool(s, r, NULL, 0);
    assert_non_null(p);
    assert_int_equal(p->n, 3);

    int counts[3] = {0};
    uint64_t now = gw_now_ms();
    for (int i = 0; i < 300; i++) {
        gw_backend_t *be = gw_pool_pick(p, GW_BALANCE_ROUNDROBIN, NULL, 0, now, NULL);
        counts[be == p->b[0] ? 0 : (be == p->b[1] ? 1 : 2)]++;
        gw_backend_unref(be);
    }
    assert_int_equal(counts[0], 100);
    assert_int_equal(counts[1], 100);
    assert_int_equal(counts[2], 100);

    /* eject the second: it gets nothing until its time is up */
    gw_backend_failed(p->b[1], now, 1000, 30000);
    assert_int_equal(atomic_load(&p->b[1]->fails), 1);
    for (int i = 0; i < 50; i++) {
        gw_backend_t *be = gw_pool_pick(p, GW_BALANCE_ROUNDROBIN, NULL, 0, now, NULL);
        assert_ptr_not_equal(be, p->b[1]);
        gw_backend_unref(be);
    }
    gw_backend_t *later = NULL;
    for (int i = 0; i < 3; i++) {
        gw_backend_t *be = gw_pool_pick(p, GW_BALANCE_ROUNDROBIN, NULL, 0, now + 1001, NULL);
        if (be == p->b[1])
            later = be;
        gw_backend_unref(be);
    }
    assert_ptr_equal(later, p->b[1]);

    /* backoff doubles per consecutive failure, capped; success clears */
    gw_backend_failed(p->b[1], now, 1000, 30000);
    gw_backend_failed(p->b[1], now, 1000, 30000);
    assert_int_equal(atomic_load(&p->b[1]->eject_until_ms), now + 4000);
    for (int i = 0; i < 10; i++)
        gw_backend_failed(p->b[1], now, 1000, 30000);
    assert_int_equal(atomic_load(&p->b[1]->eject_until_ms), now + 30000);
    gw_backend_succeeded(p->b[1]);
    assert_int_equal(atomic_load(&p->b[1]->fails), 0);
    assert_int_equal(atomic_load(&p->b[1]->eject_until_ms), 0);

    /* all ejected: the one back soonest; exclude is honoured */
    gw_backend_failed(p->b[0], now, 5000, 30000);
    gw_backend_failed(p->b[1], now, 1000, 30000);
    gw_backend_failed(p->b[2], now, 3000, 30000);
    gw_backend_t *be = gw_pool_pick(p, GW_BALANCE_ROUNDROBIN, NULL, 0, now, NULL);
    assert_ptr_equal(be, p->b[1]);
    gw_backend_unref(be);
    be = gw_pool_pick(p, GW_BALANCE_ROUNDROBIN, NULL, 0, now, p->b[1]);
    assert_ptr_equal(be, p->b[2]);
    gw_backend_unref(be);
    gw_snapshot_unref(s);
}

static void test_leastconn(void **state)
{
    (void)state;
    gw_builder_t *b = gw_builder_new(NULL);
    add_pool(b, "/web", 9000, 3);
    gw_snapshot_t *s = gw_builder_finish(b, 1);
    size_t n;
    const gw_pool_t *p = gw_snapshot_pools(s, &n)[0];
    atomic_store(&p->b[0]->active, 5);
    atomic_store(&p->b[1]->active, 2);
    atomic_store(&p->b[2]->active, 9);
    for (int i = 0; i < 10; i++) {
        gw_backend_t *be = gw_pool_pick(p, GW_BALANCE_LEASTCONN, NULL, 0, gw_now_ms(), NULL);
        assert_ptr_equal(be, p->b[1]);
        gw_backend_unref(be);
    }
    gw_backend_t *be = gw_pool_pick(p, GW_BALANCE_LEASTCONN, NULL, 0, gw_now_ms(), p->b[1]);
    assert_ptr_equal(be, p->b[0]);
    gw_backend_unref(be);
    gw_snapshot_unref(s);
}

/* Rendezvous hashing: a seed sticks to its backend, seeds spread evenly,
 * and removing a backend moves only the seeds it had. */
static void test_hash_consistent(void **state)
{
    (void)state;
    gw_builder_t *b = gw_builder_new(NULL);
    add_pool(b, "/four", 9000, 4);
    add_pool(b, "/three", 9000, 3);
    gw_snapshot_t *s = gw_builder_finish(b, 1);
    size_t n;
    const gw_pool_t *const *pools = gw_snapshot_pools(s, &n);
    const gw_pool_t *four = pools[0], *three = pools[1];
    assert_string_equal(four->name, "/four");
    int counts[4] = {0};
    int moved = 0, was_on_removed = 0;
    for (int i = 0; i < 4000; i++) {
        char seed[32];
        int len = snprintf(seed, sizeof(seed), "client-%d", i);
        gw_backend_t *x = gw_pool_pick(four, GW_BALANCE_HASH, seed, (size_t)len, 0, NULL);
        gw_backend_t *y = gw_pool_pick(four, GW_BALANCE_HASH, seed, (size_t)len, 0, NULL);
        assert_ptr_equal(x, y);
        for (int k = 0; k < 4; k++)
            counts[k] += four->b[k] == x;
        gw_backend_t *z = gw_pool_pick(three, GW_BALANCE_HASH, seed, (size_t)len, 0, NULL);
        if (x == four->b[3])
            was_on_removed++;
        else if (z != x)
            moved++;
        gw_backend_unref(x);
        gw_backend_unref(y);
        gw_backend_unref(z);
    }
    for (int k = 0; k < 4; k++)
        assert_in_range(counts[k], 800, 1200);
    assert_int_equal(moved, 0);
    assert_true(was_on_removed > 800);
    gw_snapshot_unref(s);
}

static void test_group_split(void **state)
{
    (void)state;
    gw_builder_t *b = gw_builder_new(NULL);
    add_pool(b, "/web@1", 9000, 2);
    add_pool(b, "/web@2", 9100, 1);
    gw_group_member_in_t m[] = {{"/web@1", 90}, {"/web@2", 10}, {"/web@3", 0}};
    err_t err = {0};
    assert_int_equal(gw_builder_group(b, "web", m, 3, &err), 0);
    gw_route_in_t r = {.app = "/web",
                       .host = "web.local",
                       .group = "web",
                       .sticky = GW_STICKY_HEADER,
                       .sticky_name = "X-User"};
    assert_int_equal(gw_builder_route(b, &r, &err), 0);
    gw_route_in_t missing = {.app = "/other", .host = "other.local", .group = "nope"};
    assert_int_equal(gw_builder_route(b, &missing, &err), 0);
    gw_group_member_in_t bad[] = {{"/x", 0}};
    assert_int_equal(gw_builder_group(b, "zero", bad, 1, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "zero"));
    gw_snapshot_t *s = gw_builder_finish(b, 3);

    const gw_route_t *rt = gw_snapshot_match(s, "web.local", 9, "/", 1);
    assert_non_null(rt);
    assert_string_equal(rt->group_name, "web");
    assert_int_equal(rt->sticky, GW_STICKY_HEADER);
    int v2 = 0;
    for (int i = 0; i < 20000; i++) {
        const gw_pool_t *p = gw_route_pool(s, rt, NULL, 0);
        assert_non_null(p);
        v2 += strcmp(p->name, "/web@2") == 0;
    }
    /* 10% within 1 point over 20k random picks */
    assert_in_range(v2, 1800, 2200);
    const gw_pool_t *a = gw_route_pool(s, rt, "user-42", 7);
    for (int i = 0; i < 20; i++)
        assert_ptr_equal(gw_route_pool(s, rt, "user-42", 7), a);

    /* a route to an unknown group has no pool */
    const gw_route_t *ro = gw_snapshot_match(s, "other.local", 11, "/", 1);
    assert_non_null(ro);
    assert_null(gw_route_pool(s, ro, NULL, 0));
    gw_snapshot_unref(s);
}

/* ---- lifetimes ---------------------------------------------------------- */

static void test_backends_carry_over(void **state)
{
    (void)state;
    gw_builder_t *b = gw_builder_new(NULL);
    add_pool(b, "/web", 9000, 2);
    gw_snapshot_t *s1 = gw_builder_finish(b, 1);
    size_t n;
    const gw_pool_t *p1 = gw_snapshot_pools(s1, &n)[0];
    gw_backend_t *kept = p1->b[1];
    gw_backend_failed(kept, 1000, 1000, 30000);
    atomic_store(&kept->active, 3);

    /* a request holds the backend that goes away with the next build */
    gw_backend_t *held = gw_pool_pick(p1, GW_BALANCE_ROUNDROBIN, NULL, 0, 0, kept);
    assert_string_equal(held->name, "127.0.0.1:9000");

    gw_builder_t *b2 = gw_builder_new(s1);
    gw_endpoint_in_t eps[] = {{"127.0.0.1", 9001},
                              {"127.0.0.1", 9002},
                              {"localhost", 1},
                              {"::1", 9003},
                              {"127.0.0.1", 9001}};
    gw_builder_pool(b2, "/web", eps, 5);
    gw_snapshot_t *s2 = gw_builder_finish(b2, 2);
    gw_snapshot_unref(s1);

    const gw_pool_t *p2 = gw_snapshot_pools(s2, &n)[0];
    assert_int_equal(p2->n, 3); /* localhost skipped, the duplicate once */
    assert_string_equal(p2->b[0]->name, "127.0.0.1:9001");
    assert_string_equal(p2->b[1]->name, "127.0.0.1:9002");
    assert_string_equal(p2->b[2]->name, "[::1]:9003");
    assert_ptr_equal(p2->b[0], kept);
    assert_int_equal(atomic_load(&p2->b[0]->fails), 1);
    assert_int_equal(atomic_load(&p2->b[0]->active), 3);
    assert_int_equal(p2->b[2]->addr.ss_family, AF_INET6);

    /* the held backend is still valid after its snapshot is gone */
    assert_string_equal(held->name, "127.0.0.1:9000");
    gw_backend_unref(held);
    gw_snapshot_unref(s2);
}

/* A group whose members have no pools at all (no app has instances yet). */
static void test_group_without_pools(void **state)
{
    (void)state;
    gw_builder_t *b = gw_builder_new(NULL);
    gw_group_member_in_t m[] = {{"/a@1", 1}, {"/a@2", 1}};
    assert_int_equal(gw_builder_group(b, "g", m, 2, NULL), 0);
    gw_route_in_t r = {.app = "/a", .host = "a.local", .group = "g"};
    assert_int_equal(gw_builder_route(b, &r, NULL), 0);
    gw_snapshot_t *s = gw_builder_finish(b, 1);
    const gw_route_t *rt = gw_snapshot_match(s, "a.local", 7, "/", 1);
    assert_non_null(rt);
    assert_null(gw_route_pool(s, rt, "x", 1));
    gw_snapshot_unref(s);
}

static void test_builder_free_unfinished(void **state)
{
    (void)state;
    gw_builder_t *b = gw_builder_new(NULL);
    add_pool(b, "/a", 9000, 3);
    add_route(b, "a.local", "/", "/a");
    gw_group_member_in_t m[] = {{"/a", 1}};
    assert_int_equal(gw_builder_group(b, "g", m, 1, NULL), 0);
    gw_builder_free(b); /* ASan checks nothing leaks */
}

int main(void)
{
    log_setup(getenv("TEST_DEBUG") ? LOG_DEBUG : LOG_ERROR, LOG_TEXT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_match_precedence),
        cmocka_unit_test(test_route_errors),
        cmocka_unit_test(test_internal_routes),
        cmocka_unit_test(test_roundrobin_and_skip_ejected),
        cmocka_unit_test(test_leastconn),
        cmocka_unit_test(test_hash_consistent),
        cmocka_unit_test(test_group_split),
        cmocka_unit_test(test_backends_carry_over),
        cmocka_unit_test(test_group_without_pools),
        cmocka_unit_test(test_builder_free_unfinished),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
