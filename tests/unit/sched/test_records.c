/* sched/records: the app, version and deployment records every change
 * writes, and the config environment a KV prefix gives. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/json.h"
#include "sched/records.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static json_t *spec(const char *cmd, int instances)
{
    return json_pack("{s:s, s:s, s:i, s:{}}", "id", "/p/web", "cmd", cmd, "instances", instances,
                     "env");
}

static json_t *change(rec_kind_t kind, json_t *cur, json_t *sp, json_t *env, int pct,
                      rec_out_t *out, int *rc)
{
    rec_change_t ch = {.kind = kind,
                       .app_id = "/p/web",
                       .cur = cur,
                       .spec = sp,
                       .config_env = env,
                       .canary_percent = pct,
                       .now = "2026-11-21T00:00:00.000Z"};
    err_t err = {0};
    *rc = rec_change(&ch, out, &err);
    return out->app;
}

static void test_create_deploy_scale(void **state)
{
    (void)state;
    rec_out_t o1, o2, o3, o4;
    int rc;
    json_t *s1 = spec("a", 2);
    json_t *app1 = change(REC_DEPLOY, NULL, s1, NULL, 0, &o1, &rc);
    assert_int_equal(rc, 0);
    assert_true(o1.changed);
    assert_string_equal(o1.kind, "create");
    assert_int_equal(json_integer_value(json_object_get(app1, "version")), 1);
    assert_string_equal(json_str(app1, "deployment"), json_str(o1.deployment, "id"));
    assert_true(json_is_null(json_object_get(o1.deployment, "from_version")));
    assert_string_equal(json_str(o1.deployment, "status"), "running");

    json_t *s2 = spec("a", 5);
    json_t *app2 = change(REC_DEPLOY, app1, s2, NULL, 0, &o2, &rc);
    assert_string_equal(o2.kind, "scale");
    assert_int_equal(json_integer_value(json_object_get(app2, "version")), 2);
    assert_int_equal(json_integer_value(json_object_get(o2.deployment, "from_version")), 1);
    assert_int_equal(json_integer_value(
                         json_object_get(json_object_get(o2.deployment, "target"), "instances")),
                     5);

    /* the same spec again: no change, nothing to write */
    change(REC_DEPLOY, app2, s2, NULL, 0, &o3, &rc);
    assert_int_equal(rc, 0);
    assert_false(o3.changed);

    json_t *s3 = spec("b", 5);
    change(REC_DEPLOY, app2, s3, NULL, 0, &o4, &rc);
    assert_string_equal(o4.kind, "deploy");
    /* the deployment remembers where it came from, for a rollback */
    assert_string_equal(json_str(json_object_get(json_object_get(o4.deployment, "from"), "spec"),
                                 "cmd"),
                        "a");
    rec_out_free(&o1);
    rec_out_free(&o2);
    rec_out_free(&o3);
    rec_out_free(&o4);
    json_decref(s1);
    json_decref(s2);
    json_decref(s3);
}

static void test_signature_ignores_instances_not_env(void **state)
{
    (void)state;
    json_t *a = spec("x", 1), *b = spec("x", 7);
    json_t *env = json_pack("{s:s}", "K", "v");
    char sa[65], sb[65], sc[65], sd[65];
    rec_signature(a, NULL, 0, sa);
    rec_signature(b, NULL, 0, sb);
    rec_signature(a, env, 0, sc);
    rec_signature(a, NULL, 1, sd);
    assert_string_equal(sa, sb);
    assert_string_not_equal(sa, sc);
    assert_string_not_equal(sa, sd);
    json_t *eff = rec_effective_spec(a, env);
    assert_string_equal(json_str(json_object_get(eff, "env"), "K"), "v");
    json_decref(eff);
    json_decref(a);
    json_decref(b);
    json_decref(env);
}

static void test_canary_promote_abort(void **state)
{
    (void)state;
    rec_out_t o1, oc, op, oa;
    int rc;
    json_t *s1 = spec("a", 4), *s2 = spec("b", 4);
    json_t *app = change(REC_DEPLOY, NULL, s1, NULL, 0, &o1, &rc);
    json_t *capp = change(REC_CANARY, app, s2, NULL, 25, &oc, &rc);
    assert_int_equal(rc, 0);
    assert_int_equal(json_integer_value(json_object_get(capp, "version")), 1);
    json_t *canary = json_object_get(capp, "canary");
    assert_int_equal(json_integer_value(json_object_get(canary, "version")), 2);
    assert_int_equal(json_integer_value(json_object_get(canary, "instances")), 1);
    assert_int_equal(oc.version_no, 2);
    assert_non_null(oc.version); /* the canary's version is recorded */

    json_t *papp = change(REC_PROMOTE, capp, NULL, NULL, 0, &op, &rc);
    assert_int_equal(rc, 0);
    assert_int_equal(json_integer_value(json_object_get(papp, "version")), 2);
    assert_string_equal(json_str(json_object_get(papp, "spec"), "cmd"), "b");
    assert_true(json_is_null(json_object_get(papp, "canary")));
    assert_null(op.version);

    json_t *aapp = change(REC_ABORT, capp, NULL, NULL, 0, &oa, &rc);
    assert_int_equal(rc, 0);
    assert_int_equal(json_integer_value(json_object_get(aapp, "version")), 1);
    assert_true(json_is_null(json_object_get(aapp, "canary")));
    /* the next version number skips the canary's */
    rec_out_t on;
    json_t *s3 = spec("c", 4);
    json_t *napp = change(REC_DEPLOY, aapp, s3, NULL, 0, &on, &rc);
    assert_int_equal(json_integer_value(json_object_get(napp, "version")), 3);

    rec_out_t bad;
    change(REC_PROMOTE, napp, NULL, NULL, 0, &bad, &rc);
    assert_int_equal(rc, -EALREADY);
    change(REC_CANARY, napp, s2, NULL, 100, &bad, &rc);
    assert_int_equal(rc, -EINVAL);
    rec_out_free(&o1);
    rec_out_free(&oc);
    rec_out_free(&op);
    rec_out_free(&oa);
    rec_out_free(&on);
    json_decref(s1);
    json_decref(s2);
    json_decref(s3);
}

static void test_stop_start_restart(void **state)
{
    (void)state;
    rec_out_t o1, os, ost, or ;
    int rc;
    json_t *s1 = spec("a", 3);
    json_t *app = change(REC_DEPLOY, NULL, s1, NULL, 0, &o1, &rc);
    json_t *stopped = change(REC_STOP, app, NULL, NULL, 0, &os, &rc);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(stopped, "spec"), "instances")), 0);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(stopped, "stopped"), "instances")), 3);
    json_t *started = change(REC_START, stopped, NULL, NULL, 0, &ost, &rc);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(started, "spec"), "instances")), 3);
    assert_true(json_is_null(json_object_get(started, "stopped")));
    rec_out_t bad;
    change(REC_START, started, NULL, NULL, 0, &bad, &rc);
    assert_int_equal(rc, -EALREADY);
    json_t *restarted = change(REC_RESTART, started, NULL, NULL, 0, &or, &rc);
    assert_int_equal(json_integer_value(json_object_get(restarted, "restart")), 1);
    assert_int_equal(json_integer_value(json_object_get(restarted, "version")), 4);
    change(REC_SCALE, NULL, s1, NULL, 0, &bad, &rc);
    assert_int_equal(rc, -ENOENT);
    rec_out_free(&o1);
    rec_out_free(&os);
    rec_out_free(&ost);
    rec_out_free(&or);
    json_decref(s1);
}

static void test_config_env(void **state)
{
    (void)state;
    store_kv_t kvs[] = {
        {.key = "/kv/config/web/db/host", .value = "10.0.0.9", .value_len = 8},
        {.key = "/kv/config/web/feature.x-on", .value = "1", .value_len = 1},
        {.key = "/kv/config/web/bin", .value = "a\0b", .value_len = 3},
        {.key = "/kv/config/webby/other", .value = "no", .value_len = 2},
        {.key = "/kv/config/web/", .value = "dir", .value_len = 3},
    };
    json_t *env = rec_config_env(kvs, sizeof(kvs) / sizeof(*kvs), "config/web");
    assert_int_equal(json_object_size(env), 2);
    assert_string_equal(json_str(env, "DB_HOST"), "10.0.0.9");
    assert_string_equal(json_str(env, "FEATURE_X_ON"), "1");
    json_decref(env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_deploy_scale),
        cmocka_unit_test(test_signature_ignores_instances_not_env),
        cmocka_unit_test(test_canary_promote_abort),
        cmocka_unit_test(test_stop_start_restart),
        cmocka_unit_test(test_config_env),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
