/* sched/rollout: the rolling-upgrade arithmetic, step by step, as the
 * scheduler drives it (start what the plan says, let it become healthy,
 * stop what the plan says, repeat). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "sched/rollout.h"

#include <string.h>

#define MAXI 64

typedef struct sim {
    roll_inst_t in[MAXI];
    size_t n;
    int64_t max_running; /* the most main+old seen at once */
    int64_t min_healthy; /* the fewest healthy main+old seen after the start */
} sim_t;

static void sim_add(sim_t *s, roll_class_t cls, bool healthy, int node)
{
    assert_true(s->n < MAXI);
    s->in[s->n++] = (roll_inst_t){.cls = cls, .healthy = healthy, .node = node};
}

static void sim_apply(sim_t *s, const roll_out_t *o)
{
    size_t k = 0;
    for (size_t i = 0; i < s->n; i++)
        if (!s->in[i].stop)
            s->in[k++] = s->in[i];
    s->n = k;
    for (int64_t i = 0; i < o->start_main; i++)
        sim_add(s, ROLL_MAIN, false, (int)(i % 3));
    for (int64_t i = 0; i < o->start_canary; i++)
        sim_add(s, ROLL_CANARY, false, 0);
    int64_t running = 0, healthy = 0;
    for (size_t i = 0; i < s->n; i++)
        if (s->in[i].cls != ROLL_CANARY) {
            running++;
            healthy += s->in[i].healthy;
        }
    if (running > s->max_running)
        s->max_running = running;
    if (healthy < s->min_healthy)
        s->min_healthy = healthy;
}

static void sim_heal(sim_t *s)
{
    for (size_t i = 0; i < s->n; i++)
        s->in[i].healthy = true;
}

/* Drive to convergence; returns the number of plan rounds. */
static int sim_run(sim_t *s, const roll_in_t *in)
{
    s->max_running = 0;
    s->min_healthy = 1 << 30;
    for (int round = 1; round < 50; round++) {
        roll_out_t o;
        roll_plan(in, s->in, s->n, &o);
        if (o.done)
            return round;
        sim_apply(s, &o);
        sim_heal(s);
    }
    fail_msg("rollout did not converge");
    return -1;
}

static void test_defaults_surge_then_retire(void **state)
{
    (void)state;
    sim_t s = {0};
    for (int i = 0; i < 4; i++)
        sim_add(&s, ROLL_OLD, true, i % 2);
    roll_in_t in = {.want = 4, .min_health = 1, .max_over = 1};
    roll_out_t o;
    roll_plan(&in, s.in, s.n, &o);
    /* 1 and 1: start all four new, stop nothing healthy yet */
    assert_int_equal(o.start_main, 4);
    assert_int_equal(o.n_stop, 0);
    assert_false(o.done);
    sim_run(&s, &in);
    assert_int_equal(s.max_running, 8);
    assert_int_equal(s.min_healthy, 4);
}

static void test_half_and_half(void **state)
{
    (void)state;
    sim_t s = {0};
    for (int i = 0; i < 4; i++)
        sim_add(&s, ROLL_OLD, true, i % 2);
    roll_in_t in = {.want = 4, .min_health = 0.5, .max_over = 0.5};
    roll_out_t o;
    roll_plan(&in, s.in, s.n, &o);
    assert_int_equal(o.n_stop, 2);   /* down to the floor of 2 healthy */
    assert_int_equal(o.start_main, 4); /* 2 old + 4 new = 6 = 4 + 2 */
    sim_run(&s, &in);
    assert_true(s.max_running <= 6);
    assert_true(s.min_healthy >= 2);
}

/* 1 and 0 would deadlock; one extra instance is allowed. */
static void test_no_surge_no_loss_allows_one(void **state)
{
    (void)state;
    sim_t s = {0};
    for (int i = 0; i < 3; i++)
        sim_add(&s, ROLL_OLD, true, i);
    roll_in_t in = {.want = 3, .min_health = 1, .max_over = 0};
    roll_out_t o;
    roll_plan(&in, s.in, s.n, &o);
    assert_int_equal(o.start_main, 1);
    assert_int_equal(o.n_stop, 0);
    int rounds = sim_run(&s, &in);
    assert_true(rounds >= 4); /* one at a time */
    assert_int_equal(s.max_running, 4);
    assert_int_equal(s.min_healthy, 3);
}

/* 0 and 0: stop everything old at once, then start the new. */
static void test_zero_zero(void **state)
{
    (void)state;
    sim_t s = {0};
    for (int i = 0; i < 3; i++)
        sim_add(&s, ROLL_OLD, true, i);
    roll_in_t in = {.want = 3, .min_health = 0, .max_over = 0};
    roll_out_t o;
    roll_plan(&in, s.in, s.n, &o);
    assert_int_equal(o.n_stop, 3);
    assert_int_equal(o.start_main, 3);
}

/* A new version that never becomes healthy never costs an old one. */
static void test_unhealthy_new_keeps_old(void **state)
{
    (void)state;
    sim_t s = {0};
    for (int i = 0; i < 4; i++)
        sim_add(&s, ROLL_OLD, true, i);
    roll_in_t in = {.want = 4, .min_health = 1, .max_over = 0.5};
    for (int round = 0; round < 5; round++) {
        roll_out_t o;
        roll_plan(&in, s.in, s.n, &o);
        assert_false(o.done);
        for (size_t i = 0; i < s.n; i++)
            assert_false(s.in[i].stop && s.in[i].cls == ROLL_OLD);
        sim_apply(&s, &o); /* new ones stay unhealthy */
    }
    size_t old = 0, main = 0;
    for (size_t i = 0; i < s.n; i++) {
        old += s.in[i].cls == ROLL_OLD;
        main += s.in[i].cls == ROLL_MAIN;
    }
    assert_int_equal(old, 4);
    assert_int_equal(main, 2);
}

/* Old instances that serve nothing go at once, unhealthy first. */
static void test_unhealthy_old_go_first(void **state)
{
    (void)state;
    sim_t s = {0};
    sim_add(&s, ROLL_OLD, true, 0);
    sim_add(&s, ROLL_OLD, false, 1);
    sim_add(&s, ROLL_OLD, true, 2);
    roll_in_t in = {.want = 3, .min_health = 1, .max_over = 0};
    roll_out_t o;
    roll_plan(&in, s.in, s.n, &o);
    assert_true(s.in[1].stop);
    assert_false(s.in[0].stop);
    assert_false(s.in[2].stop);
    assert_int_equal(o.start_main, 2); /* 2 old + 2 new = 4 = 3 + 1 */
}

static void test_scale_up_down(void **state)
{
    (void)state;
    sim_t s = {0};
    sim_add(&s, ROLL_MAIN, true, 0);
    sim_add(&s, ROLL_MAIN, true, 0);
    sim_add(&s, ROLL_MAIN, true, 1);
    roll_in_t in = {.want = 5, .min_health = 1, .max_over = 0};
    roll_out_t o;
    roll_plan(&in, s.in, s.n, &o);
    assert_int_equal(o.start_main, 2); /* a scale is not bounded by the surge */
    assert_int_equal(o.n_stop, 0);
    in.want = 2;
    roll_plan(&in, s.in, s.n, &o);
    assert_int_equal(o.n_stop, 1);
    assert_true(s.in[0].stop || s.in[1].stop); /* from the busiest node */
    assert_false(s.in[2].stop);
    in.want = 3;
    roll_plan(&in, s.in, s.n, &o);
    assert_true(o.done);
    assert_int_equal(o.n_stop, 0);
    assert_int_equal(o.start_main, 0);
}

static void test_canary_beside(void **state)
{
    (void)state;
    sim_t s = {0};
    for (int i = 0; i < 4; i++)
        sim_add(&s, ROLL_MAIN, true, i);
    roll_in_t in = {.want = 4, .want_canary = 1, .min_health = 1, .max_over = 0};
    roll_out_t o;
    roll_plan(&in, s.in, s.n, &o);
    assert_int_equal(o.start_canary, 1);
    assert_int_equal(o.start_main, 0);
    assert_int_equal(o.n_stop, 0);
    sim_apply(&s, &o);
    sim_heal(&s);
    roll_plan(&in, s.in, s.n, &o);
    assert_true(o.done);
    /* abort: the canary goes, main untouched */
    in.want_canary = 0;
    roll_plan(&in, s.in, s.n, &o);
    assert_int_equal(o.n_stop, 1);
    assert_true(s.in[4].stop);
}

static void test_scale_to_zero(void **state)
{
    (void)state;
    sim_t s = {0};
    sim_add(&s, ROLL_MAIN, true, 0);
    sim_add(&s, ROLL_OLD, true, 0);
    roll_in_t in = {.want = 0, .min_health = 1, .max_over = 1};
    roll_out_t o;
    roll_plan(&in, s.in, s.n, &o);
    assert_int_equal(o.n_stop, 2);
    assert_int_equal(o.start_main, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_surge_then_retire),
        cmocka_unit_test(test_half_and_half),
        cmocka_unit_test(test_no_surge_no_loss_allows_one),
        cmocka_unit_test(test_zero_zero),
        cmocka_unit_test(test_unhealthy_new_keeps_old),
        cmocka_unit_test(test_unhealthy_old_go_first),
        cmocka_unit_test(test_scale_up_down),
        cmocka_unit_test(test_canary_beside),
        cmocka_unit_test(test_scale_to_zero),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
