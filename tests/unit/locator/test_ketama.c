/* The ketama continuum (src/locator/ketama.c): traffic shares follow the
 * weights, zero weights get nothing, seeds stick, a weight change moves
 * about the share of seeds it should, and bad member lists are refused. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/alloc.h"
#include "core/log.h"
#include "locator/ketama.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PICKS 100000
#define SEEDS 10000

/* ---- helpers ---------------------------------------------------------- */

static ketama_t *build(const char *const *names, const uint32_t *weights, size_t n)
{
    ketama_member_t m[128];
    assert_true(n <= 128);
    for (size_t i = 0; i < n; i++)
        m[i] = (ketama_member_t){.name = names[i], .weight = weights[i]};
    err_t err = {0};
    ketama_t *k = ketama_build(m, n, &err);
    if (!k)
        fail_msg("ketama_build: %s", err.msg);
    return k;
}

static size_t index_of(const char *const *names, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(names[i], name) == 0)
            return i;
    fail_msg("picked \"%s\", which is no member", name);
    return 0;
}

/* The seed of request i: what a sticky header would hold. */
static size_t seed_of(size_t i, char *buf, size_t n)
{
    return (size_t)snprintf(buf, n, "user-%zu@example.com", i);
}

/* Count picks per member and compare each member's share with its
 * weight's, in percentage points. */
static void check_shares(const char *const *names, const uint32_t *weights, size_t n, bool seeded)
{
    ketama_t *k = build(names, weights, n);
    size_t counts[128] = {0};
    double total = 0;
    for (size_t i = 0; i < n; i++)
        total += weights[i];
    for (size_t i = 0; i < PICKS; i++) {
        const char *who;
        if (seeded) {
            char seed[64];
            size_t len = seed_of(i, seed, sizeof(seed));
            who = ketama_pick(k, seed, len);
        } else {
            who = ketama_pick_random(k);
        }
        counts[index_of(names, n, who)]++;
    }
    for (size_t i = 0; i < n; i++) {
        double want = weights[i] * 100.0 / total;
        double got = counts[i] * 100.0 / PICKS;
        if (fabs(got - want) >= 1.0)
            fail_msg("%s: weight share %.2f%%, %s picks gave %.2f%%", names[i], want,
                     seeded ? "seeded" : "random", got);
    }
    /* The ring itself is tuned much closer than the sampling can show. */
    for (size_t i = 0; i < ketama_member_count(k); i++) {
        double want = ketama_member_weight(k, i) * 100.0 / total;
        double ring = ketama_member_share(k, i) * 100.0;
        if (fabs(ring - want) >= 0.25)
            fail_msg("%s owns %.3f%% of the ring for a weight share of %.3f%%",
                     ketama_member_name(k, i), ring, want);
    }
    ketama_free(k);
}

/* Fraction (percent) of SEEDS seeds whose member differs between a and b. */
static double moved_percent(const ketama_t *a, const ketama_t *b)
{
    size_t moved = 0;
    for (size_t i = 0; i < SEEDS; i++) {
        char seed[64];
        size_t len = seed_of(i, seed, sizeof(seed));
        if (strcmp(ketama_pick(a, seed, len), ketama_pick(b, seed, len)) != 0)
            moved++;
    }
    return moved * 100.0 / SEEDS;
}

/* Half the L1 distance between the weight shares: the least share of
 * seeds any scheme must move. */
static double ideal_percent(const uint32_t *wa, const uint32_t *wb, size_t n)
{
    double ta = 0, tb = 0, d = 0;
    for (size_t i = 0; i < n; i++) {
        ta += wa[i];
        tb += wb[i];
    }
    for (size_t i = 0; i < n; i++)
        d += fabs(wa[i] / ta - wb[i] / tb);
    return d * 50.0;
}

static const char *const web2[] = {"/production/web@41", "/production/web@42"};
static const char *const web3[] = {"/production/web@41", "/production/web@42",
                                   "/production/web@43"};
static const char *const web4[] = {"/production/web@1", "/production/web@2", "/production/web@3",
                                   "/production/web@4"};

/* ---- shares ----------------------------------------------------------- */

static void test_shares_90_10(void **state)
{
    (void)state;
    const uint32_t w[] = {90, 10};
    check_shares(web2, w, 2, false);
    check_shares(web2, w, 2, true);
}

static void test_shares_50_30_20(void **state)
{
    (void)state;
    const uint32_t w[] = {50, 30, 20};
    check_shares(web3, w, 3, false);
    check_shares(web3, w, 3, true);
}

static void test_shares_equal(void **state)
{
    (void)state;
    const uint32_t w[] = {1, 1, 1, 1};
    check_shares(web4, w, 4, false);
    check_shares(web4, w, 4, true);
}

/* Weights need not add up to 100, and a tiny canary still gets its share
 * (libketama's 160 points per member would leave 99/1 several points off). */
static void test_shares_other_scales(void **state)
{
    (void)state;
    const uint32_t w1[] = {9900, 100};
    check_shares(web2, w1, 2, false);
    const uint32_t w2[] = {7, 3, 10000};
    check_shares(web3, w2, 3, false);
}

/* Many members: each is still close to its weight on the ring. */
static void test_shares_many_members(void **state)
{
    (void)state;
    char buf[100][40];
    const char *names[100];
    uint32_t w[100];
    for (size_t i = 0; i < 100; i++) {
        snprintf(buf[i], sizeof(buf[i]), "/staging/app-%zu@%zu", i % 7, i + 1);
        names[i] = buf[i];
        w[i] = (uint32_t)(1 + (i * 37) % 200);
    }
    check_shares(names, w, 100, false);
}

static void test_zero_weight_never_picked(void **state)
{
    (void)state;
    const uint32_t w[] = {5, 0, 5};
    ketama_t *k = build(web3, w, 3);
    for (size_t i = 0; i < PICKS; i++)
        assert_string_not_equal(ketama_pick_random(k), "/production/web@42");
    for (size_t i = 0; i < SEEDS; i++) {
        char seed[64];
        size_t len = seed_of(i, seed, sizeof(seed));
        assert_string_not_equal(ketama_pick(k, seed, len), "/production/web@42");
    }
    /* It is still a member (named, weight 0) but owns no point. */
    assert_int_equal(ketama_member_count(k), 3);
    assert_string_equal(ketama_member_name(k, 1), "/production/web@42");
    assert_true(ketama_member_share(k, 1) == 0.0);
    size_t n;
    const ketama_point_t *p = ketama_points(k, &n);
    for (size_t i = 0; i < n; i++)
        assert_int_not_equal(p[i].member, 1);
    ketama_free(k);

    /* Every other member at 0 leaves one member with all the traffic. */
    const uint32_t only[] = {0, 0, 3};
    k = build(web3, only, 3);
    for (size_t i = 0; i < 1000; i++)
        assert_string_equal(ketama_pick_random(k), "/production/web@43");
    assert_true(fabs(ketama_member_share(k, 2) - 1.0) < 1e-12);
    ketama_free(k);
}

/* ---- stickiness ------------------------------------------------------- */

static void test_sticky(void **state)
{
    (void)state;
    const uint32_t w[] = {50, 30, 20};
    ketama_t *k = build(web3, w, 3);
    /* The same members in another order make the same ring. */
    const char *const rev[] = {web3[2], web3[0], web3[1]};
    const uint32_t wrev[] = {20, 50, 30};
    ketama_t *k2 = build(rev, wrev, 3);
    size_t seen[3] = {0};
    for (size_t i = 0; i < SEEDS; i++) {
        char seed[64];
        size_t len = seed_of(i, seed, sizeof(seed));
        const char *first = ketama_pick(k, seed, len);
        assert_string_equal(ketama_pick(k, seed, len), first);
        assert_string_equal(ketama_pick(k2, seed, len), first);
        assert_ptr_equal(ketama_pick_hash(k, ketama_hash(seed, len)), first);
        seen[index_of(web3, 3, first)]++;
    }
    /* Sticky, not stuck: the seeds spread over every member. */
    for (size_t i = 0; i < 3; i++)
        assert_true(seen[i] > SEEDS / 10);
    size_t n1, n2;
    const ketama_point_t *p1 = ketama_points(k, &n1), *p2 = ketama_points(k2, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(p1, p2, n1 * sizeof(*p1));
    ketama_free(k);
    ketama_free(k2);
}

/* The seed hash is MD5's first four bytes, little-endian (libketama's):
 * MD5("") = d41d8cd9..., MD5("abc") = 90015098... */
static void test_hash_is_md5_le32(void **state)
{
    (void)state;
    assert_int_equal(ketama_hash("", 0), 0xd98c1dd4u);
    assert_int_equal(ketama_hash(NULL, 0), 0xd98c1dd4u);
    assert_int_equal(ketama_hash("abc", 3), 0x98500190u);
}

/* ---- minimal disruption ----------------------------------------------- */

/* Moving weight between two members moves about that share of seeds, and
 * only from the member that lost weight to the one that gained it. */
static void test_disruption_shift(void **state)
{
    (void)state;
    const uint32_t a[] = {90, 10}, b[] = {80, 20};
    ketama_t *ka = build(web2, a, 2), *kb = build(web2, b, 2);
    double moved = moved_percent(ka, kb), ideal = ideal_percent(a, b, 2);
    size_t backwards = 0;
    for (size_t i = 0; i < SEEDS; i++) {
        char seed[64];
        size_t len = seed_of(i, seed, sizeof(seed));
        if (strcmp(ketama_pick(ka, seed, len), web2[1]) == 0 &&
            strcmp(ketama_pick(kb, seed, len), web2[0]) == 0)
            backwards++;
    }
    print_message("90/10 -> 80/20: moved %.2f%% (ideal %.2f%%), %zu against the change\n", moved,
                  ideal, backwards);
    assert_true(moved >= ideal - 1.5);
    assert_true(moved <= ideal + 1.5);
    assert_true(backwards * 100.0 / SEEDS < 0.5);
    ketama_free(ka);
    ketama_free(kb);
}

static void check_disruption(const char *const *names, const uint32_t *a, const uint32_t *b,
                             size_t n, double factor)
{
    ketama_t *ka = build(names, a, n), *kb = build(names, b, n);
    double moved = moved_percent(ka, kb), ideal = ideal_percent(a, b, n);
    print_message("moved %.2f%% of seeds, ideal %.2f%%\n", moved, ideal);
    if (moved > ideal * factor + 1.0 || moved < ideal - 1.5)
        fail_msg("moved %.2f%% of seeds for an ideal of %.2f%%", moved, ideal);
    ketama_free(ka);
    ketama_free(kb);
}

/* When the total weight changes every member's share changes too; ketama
 * then moves more than the ideal (removed points hand their arcs to
 * whoever follows), but a bounded multiple of it, never a reshuffle:
 * hashing mod n would move about 3/4 of the seeds here. */
static void test_disruption_total_changes(void **state)
{
    (void)state;
    const uint32_t a4[] = {1, 1, 1, 1}, b4[] = {1, 1, 1, 2};
    check_disruption(web4, a4, b4, 4, 1.6);
    const uint32_t a3[] = {50, 30, 20}, b3[] = {50, 30, 40};
    check_disruption(web3, a3, b3, 3, 1.6);
    /* A member drained to 0: its seeds must move, the others' mostly stay. */
    const uint32_t d4[] = {1, 1, 1, 0};
    check_disruption(web4, a4, d4, 4, 1.6);
}

/* Unchanged weights (total included) give the very same ring: a rebuild
 * (a router reconnecting, a server restart) moves nobody. */
static void test_rebuild_is_identical(void **state)
{
    (void)state;
    const uint32_t w[] = {3, 5, 7, 11};
    ketama_t *a = build(web4, w, 4), *b = build(web4, w, 4);
    assert_true(moved_percent(a, b) == 0.0);
    ketama_free(a);
    ketama_free(b);
}

/* ---- export ----------------------------------------------------------- */

static void test_export(void **state)
{
    (void)state;
    const char *const names[] = {"b", "c", "a"};
    const uint32_t w[] = {2, 0, 1};
    ketama_t *k = build(names, w, 3);
    assert_int_equal(ketama_member_count(k), 3);
    assert_string_equal(ketama_member_name(k, 0), "a");
    assert_string_equal(ketama_member_name(k, 1), "b");
    assert_string_equal(ketama_member_name(k, 2), "c");
    assert_null(ketama_member_name(k, 3));
    assert_int_equal(ketama_member_weight(k, 0), 1);
    assert_int_equal(ketama_member_weight(k, 1), 2);
    size_t n;
    const ketama_point_t *p = ketama_points(k, &n);
    assert_true(n >= 4 * KETAMA_STEPS_MIN / 2);
    assert_int_equal(n % 4, 0);
    double sum = 0;
    for (size_t i = 0; i < 3; i++)
        sum += ketama_member_share(k, i);
    assert_true(fabs(sum - 1.0) < 1e-9);
    size_t per[3] = {0};
    for (size_t i = 0; i < n; i++) {
        assert_true(p[i].member < 3);
        per[p[i].member]++;
        if (i)
            assert_true(p[i - 1].point < p[i].point ||
                        (p[i - 1].point == p[i].point && p[i - 1].member < p[i].member));
        /* A lookup of a point's own value lands on it (or on an equal
         * point listed before it). */
        const char *who = ketama_pick_hash(k, p[i].point);
        if (!(i && p[i - 1].point == p[i].point))
            assert_string_equal(who, ketama_member_name(k, p[i].member));
    }
    assert_int_equal(per[2], 0);
    assert_true(per[0] > 0 && per[1] > per[0]);
    /* Past the last point wraps to the first; 0 goes to the first. */
    if (p[n - 1].point != UINT32_MAX)
        assert_string_equal(ketama_pick_hash(k, p[n - 1].point + 1),
                            ketama_member_name(k, p[0].member));
    assert_string_equal(ketama_pick_hash(k, 0), ketama_member_name(k, p[0].member));
    if (p[n - 1].point != UINT32_MAX)
        assert_string_equal(ketama_pick_hash(k, UINT32_MAX), ketama_member_name(k, p[0].member));
    ketama_free(k);
}

/* The points are Cocaine's: MD5("<name>-<step>") cut into four
 * little-endian words. A lone member keeps exactly KETAMA_STEPS_MIN steps:
 * "x-0" .. "x-4095" are on the ring, "x-4096" is not. (Digests computed
 * with Python's hashlib.) */
static bool has_point(const ketama_point_t *p, size_t n, uint32_t v)
{
    for (size_t i = 0; i < n; i++)
        if (p[i].point == v)
            return true;
    return false;
}

static void test_points_are_md5_of_name_step(void **state)
{
    (void)state;
    const char *const names[] = {"x"};
    const uint32_t w[] = {1};
    ketama_t *k = build(names, w, 1);
    size_t n;
    const ketama_point_t *p = ketama_points(k, &n);
    assert_int_equal(n, 4 * KETAMA_STEPS_MIN);
    static const uint32_t x0[] = {0xb61d25db, 0xe4981446, 0xb85496f2, 0x24efe5c6};
    static const uint32_t x4095[] = {0x8d7c9c81, 0xd31cc0e7, 0x6a11f5dc, 0xda284272};
    static const uint32_t x4096[] = {0x98195429, 0xdbabc0ab, 0x45af8acd, 0x1292d2c9};
    for (size_t i = 0; i < 4; i++) {
        assert_true(has_point(p, n, x0[i]));
        assert_true(has_point(p, n, x4095[i]));
        assert_false(has_point(p, n, x4096[i]));
    }
    assert_int_equal(ketama_hash("x-0", 3), x0[0]);
    ketama_free(k);
}

/* ---- errors ----------------------------------------------------------- */

static void test_build_errors(void **state)
{
    (void)state;
    err_t err = {0};
    assert_null(ketama_build(NULL, 0, &err));
    assert_int_equal(err.code, -EINVAL);
    assert_non_null(strstr(err.msg, "at least one member"));

    ketama_member_t zero[] = {{"a", 0}, {"b", 0}};
    err_clear(&err);
    assert_null(ketama_build(zero, 2, &err));
    assert_int_equal(err.code, -EINVAL);
    assert_non_null(strstr(err.msg, "weight 0"));

    ketama_member_t dup[] = {{"a", 1}, {"b", 1}, {"a", 2}};
    err_clear(&err);
    assert_null(ketama_build(dup, 3, &err));
    assert_int_equal(err.code, -EINVAL);
    assert_non_null(strstr(err.msg, "member 2"));
    assert_non_null(strstr(err.msg, "\"a\""));

    ketama_member_t empty[] = {{"a", 1}, {"", 1}};
    err_clear(&err);
    assert_null(ketama_build(empty, 2, &err));
    assert_non_null(strstr(err.msg, "member 1: empty name"));

    ketama_member_t null_name[] = {{NULL, 1}};
    err_clear(&err);
    assert_null(ketama_build(null_name, 1, &err));
    assert_int_equal(err.code, -EINVAL);

    char *long_name = xmalloc(KETAMA_NAME_MAX + 2);
    memset(long_name, 'n', KETAMA_NAME_MAX + 1);
    long_name[KETAMA_NAME_MAX + 1] = '\0';
    ketama_member_t too_long[] = {{long_name, 1}};
    err_clear(&err);
    assert_null(ketama_build(too_long, 1, &err));
    assert_non_null(strstr(err.msg, "longer than"));
    free(long_name);

    err_clear(&err);
    assert_null(ketama_build(dup, KETAMA_MEMBERS_MAX + 1, &err));
    assert_int_equal(err.code, -E2BIG);

    /* err may be NULL. */
    assert_null(ketama_build(zero, 2, NULL));
    ketama_free(NULL);
}

int main(void)
{
    log_setup(getenv("TEST_DEBUG") ? LOG_DEBUG : LOG_WARN, LOG_TEXT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shares_90_10),
        cmocka_unit_test(test_shares_50_30_20),
        cmocka_unit_test(test_shares_equal),
        cmocka_unit_test(test_shares_other_scales),
        cmocka_unit_test(test_shares_many_members),
        cmocka_unit_test(test_zero_weight_never_picked),
        cmocka_unit_test(test_sticky),
        cmocka_unit_test(test_hash_is_md5_le32),
        cmocka_unit_test(test_disruption_shift),
        cmocka_unit_test(test_disruption_total_changes),
        cmocka_unit_test(test_rebuild_is_identical),
        cmocka_unit_test(test_export),
        cmocka_unit_test(test_points_are_md5_of_name_step),
        cmocka_unit_test(test_build_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
