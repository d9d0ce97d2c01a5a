/* Deployments in the CLI: --canary and version parsing, the progress and
 * result lines, the follower's output (plain and terminal), the tables and
 * summaries docs/cli.md promises, and the verbs against a fake API. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "agent/artifact.h"
#include "cli/cli.h"
#include "core/alloc.h"
#include "spec/spec.h"

#include "cli/fake_api.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli/link_stubs.h"

/* 2026-11-21T12:35:00Z */
#define NOW_MS (1795262400000LL + 35 * 60 * 1000)

static json_t *parse(const char *s)
{
    json_error_t e;
    json_t *j = json_loads(s, 0, &e);
    if (!j)
        fail_msg("bad test JSON: %s (%s)", e.text, s);
    return j;
}

typedef struct cap {
    char *buf;
    size_t len;
    FILE *f;
} cap_t;

static FILE *cap_open(cap_t *c)
{
    c->buf = NULL;
    c->len = 0;
    c->f = open_memstream(&c->buf, &c->len);
    return c->f;
}

static char *cap_close(cap_t *c)
{
    fclose(c->f);
    return c->buf;
}

/* A running deploy of /production/web from version 3 to 4. */
#define DEP_RUNNING                                                                                \
    "{\"id\": \"5f2c9a1b3d4e\", \"app\": \"/production/web\", \"kind\": \"deploy\","               \
    " \"from_version\": 3, \"version\": 4, \"status\": \"running\", \"reason\": null,"             \
    " \"created_at\": \"2026-11-21T12:34:00.000Z\", \"updated_at\": \"2026-11-21T12:34:10Z\","     \
    " \"finished_at\": null, \"target\": {\"instances\": 4, \"canary_instances\": 0},"             \
    " \"progress\": {\"new\": 2, \"new_healthy\": 1, \"old\": 3, \"old_healthy\": 3,"              \
    "   \"canary\": 0, \"canary_healthy\": 0, \"unplaced\": 0},"                                   \
    " \"steps\": [{\"at\": \"2026-11-21T12:34:00.000Z\", \"message\": \"deploy: version 4\"},"     \
    "   {\"at\": \"2026-11-21T12:34:01.000Z\", \"message\": \"started 2 instance(s) of version "   \
    "4\"}],"                                                                                       \
    " \"placement\": null}"

/* ---- parsing ------------------------------------------------------------ */

static void test_canary_parse(void **state)
{
    (void)state;
    static const struct {
        const char *arg;
        int want; /* 0: refused */
    } cases[] = {
        {"10", 10},  {"10%", 10}, {"1", 1},   {"99%", 99}, {"0", 0},          {"100", 0},
        {"100%", 0}, {"", 0},     {"%", 0},   {"10%%", 0}, {"abc", 0},        {"5.5", 0},
        {"-3", 0},   {" 5", 0},   {"5 %", 0}, {"0x10", 0}, {"1234567890", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int pct = -1;
        err_t err = {0};
        int rc = cli_canary_parse(cases[i].arg, &pct, &err);
        if (cases[i].want) {
            assert_int_equal(rc, 0);
            assert_int_equal(pct, cases[i].want);
        } else {
            assert_int_equal(rc, -EINVAL);
            assert_int_equal(pct, -1);
            assert_non_null(strstr(err.msg, "--canary"));
            assert_non_null(strstr(err.msg, "1..99"));
        }
    }
}

static void test_version_parse(void **state)
{
    (void)state;
    int64_t v = 0;
    err_t err = {0};
    assert_int_equal(cli_version_parse("3", &v, &err), 0);
    assert_int_equal(v, 3);
    assert_int_equal(cli_version_parse("v41", &v, &err), 0);
    assert_int_equal(v, 41);
    assert_int_equal(cli_version_parse("0", &v, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "version 0"));
    assert_int_equal(cli_version_parse("v", &v, &err), -EINVAL);
    assert_int_equal(cli_version_parse("latest", &v, &err), -EINVAL);
    assert_int_equal(cli_version_parse("-2", &v, &err), -EINVAL);
}

/* ---- progress, versions and results ------------------------------------- */

static void test_progress_text(void **state)
{
    (void)state;
    json_t *d = parse(DEP_RUNNING);
    char *s = cli_deployment_progress(d);
    assert_string_equal(s, "1/4 new healthy, 3 old left");
    free(s);
    /* Instances that have no node are named. */
    json_object_set_new(json_object_get(d, "progress"), "unplaced", json_integer(2));
    s = cli_deployment_progress(d);
    assert_string_equal(s, "1/4 new healthy, 3 old left, 2 waiting for a node");
    free(s);
    /* Before the scheduler's first pass there is no progress yet. */
    json_object_set_new(d, "progress", json_null());
    s = cli_deployment_progress(d);
    assert_string_equal(s, "waiting for the scheduler");
    free(s);
    json_decref(d);

    /* A canary counts its own instances; the current version's keep
     * running beside it and are not counted down. */
    d = parse("{\"kind\": \"canary\", \"target\": {\"instances\": 4, \"canary_instances\": 1},"
              " \"progress\": {\"new\": 4, \"new_healthy\": 4, \"old\": 0, \"canary\": 1,"
              " \"canary_healthy\": 0, \"unplaced\": 0}}");
    s = cli_deployment_progress(d);
    assert_string_equal(s, "0/1 canary healthy");
    free(s);
    json_object_set_new(json_object_get(d, "progress"), "old", json_integer(2));
    s = cli_deployment_progress(d);
    assert_string_equal(s, "0/1 canary healthy, 2 old left");
    free(s);
    json_decref(d);
}

static void test_versions_text(void **state)
{
    (void)state;
    json_t *d = parse(DEP_RUNNING);
    char *s = cli_deployment_versions(d, "->");
    assert_string_equal(s, "3->4");
    free(s);
    json_object_set_new(d, "from_version", json_null());
    s = cli_deployment_versions(d, " -> ");
    assert_string_equal(s, "4");
    free(s);
    json_decref(d);
}

static void test_result_line(void **state)
{
    (void)state;
    json_t *d = parse(DEP_RUNNING);
    assert_null(cli_deployment_result(d));
    json_object_set_new(d, "status", json_string("succeeded"));
    json_object_set_new(d, "finished_at", json_string("2026-11-21T12:34:12.300Z"));
    char *s = cli_deployment_result(d);
    assert_string_equal(s, "deployment 5f2c9a1b3d4e succeeded in 12.3 s");
    free(s);
    /* Past a minute, minutes and seconds. */
    json_object_set_new(d, "finished_at", json_string("2026-11-21T12:36:05Z"));
    s = cli_deployment_result(d);
    assert_string_equal(s, "deployment 5f2c9a1b3d4e succeeded in 2m 5s");
    free(s);
    /* Without times, no duration. */
    json_object_set_new(d, "created_at", json_null());
    s = cli_deployment_result(d);
    assert_string_equal(s, "deployment 5f2c9a1b3d4e succeeded");
    free(s);

    json_object_set_new(d, "status", json_string("failed"));
    json_object_set_new(d, "reason",
                        json_string("no progress for 60 s: 0 of 4 new instances healthy\n"));
    s = cli_deployment_result(d);
    assert_string_equal(
        s, "deployment 5f2c9a1b3d4e failed: no progress for 60 s: 0 of 4 new instances healthy?");
    free(s);
    json_object_set_new(d, "rolled_back_by", json_string("0a41c77e9b12"));
    s = cli_deployment_result(d);
    assert_string_equal(s, "deployment 5f2c9a1b3d4e failed: no progress for 60 s: 0 of 4 new "
                           "instances healthy? (rolling back: deployment 0a41c77e9b12)");
    free(s);
    json_object_del(d, "rolled_back_by");
    json_object_set_new(d, "reason", json_null());
    s = cli_deployment_result(d);
    assert_string_equal(s, "deployment 5f2c9a1b3d4e failed: no reason given");
    free(s);
    json_object_set_new(d, "status", json_string("cancelled"));
    json_object_set_new(d, "reason", json_string("cancelled by request"));
    s = cli_deployment_result(d);
    assert_string_equal(s, "deployment 5f2c9a1b3d4e cancelled");
    free(s);
    json_object_set_new(d, "status", json_string("superseded"));
    s = cli_deployment_result(d);
    assert_string_equal(s,
                        "deployment 5f2c9a1b3d4e superseded by a newer change to /production/web");
    free(s);
    json_decref(d);
}

/* ---- tables and summaries ----------------------------------------------- */

static void test_deployments_table(void **state)
{
    (void)state;
    json_t *j = parse("[" DEP_RUNNING ","
                      "{\"id\": \"0a41c77e9b12\", \"app\": \"/jobs/resize\", \"kind\": \"create\","
                      " \"from_version\": null, \"version\": 1, \"status\": \"succeeded\","
                      " \"created_at\": \"2026-11-21T10:35:00Z\","
                      " \"target\": {\"instances\": 2, \"canary_instances\": 0},"
                      " \"progress\": {\"new\": 2, \"new_healthy\": 2, \"old\": 0}},"
                      "{\"id\": \"c01dbeef0042\", \"app\": \"/p/api\", \"kind\": \"canary\","
                      " \"from_version\": 7, \"version\": 8, \"status\": \"running\","
                      " \"target\": {\"instances\": 10, \"canary_instances\": 1},"
                      " \"progress\": null}]");
    cap_t c;
    cli_deployments_table(j, NOW_MS, cap_open(&c));
    char *s = cap_close(&c);
    assert_string_equal(
        s,
        "ID             APP               KIND     VERSION   STATUS      PROGRESS         AGE\n"
        "5f2c9a1b3d4e   /production/web   deploy   3->4      running     1/4 new, 3 old   1m ago\n"
        "0a41c77e9b12   /jobs/resize      create   1         succeeded   2/2 new, 0 old   2h ago\n"
        "c01dbeef0042   /p/api            canary   7->8      running     -                -\n");
    free(s);
    json_decref(j);
    j = json_array();
    cli_deployments_table(j, NOW_MS, cap_open(&c));
    s = cap_close(&c);
    assert_string_equal(s, "ID   APP   KIND   VERSION   STATUS   PROGRESS   AGE\n");
    free(s);
    json_decref(j);
}

static void test_deployment_show(void **state)
{
    (void)state;
    json_t *d = parse(DEP_RUNNING);
    json_object_set_new(
        d, "placement",
        parse("{\"waiting\": 1, \"summary\": \"0 of 2 nodes fit: 2 lack memory (needs 512 MiB)\","
              " \"nodes\": [{\"node\": \"n1\", \"reason\": \"lacks memory\"},"
              "             {\"node\": \"n2\", \"reason\": \"lacks memory\\n(2 GiB free)\"}]}"));
    cap_t c;
    cli_deployment_show(d, NOW_MS, cap_open(&c));
    char *s = cap_close(&c);
    assert_string_equal(s, "id:         5f2c9a1b3d4e\n"
                           "app:        /production/web\n"
                           "kind:       deploy\n"
                           "version:    3 -> 4\n"
                           "status:     running\n"
                           "target:     4 instance(s)\n"
                           "progress:   1/4 new healthy, 3 old left\n"
                           "instances:  new 2 (1 healthy), old 3 (3 healthy), unplaced 0\n"
                           "placement:  1 waiting for a node: 0 of 2 nodes fit: 2 lack memory "
                           "(needs 512 MiB)\n"
                           "  - n1: lacks memory\n"
                           "  - n2: lacks memory?(2 GiB free)\n"
                           "created:    2026-11-21T12:34:00.000Z (1m ago)\n"
                           "updated:    2026-11-21T12:34:10Z (50s ago)\n"
                           "finished:   -\n"
                           "steps:\n"
                           "  - 2026-11-21T12:34:00.000Z  deploy: version 4\n"
                           "  - 2026-11-21T12:34:01.000Z  started 2 instance(s) of version 4\n");
    free(s);
    json_decref(d);

    d = parse("{\"id\": \"x1\", \"app\": \"/a\", \"kind\": \"create\", \"from_version\": null,"
              " \"version\": 1, \"status\": \"failed\", \"reason\": \"no progress for 60 s\","
              " \"created_at\": \"2026-11-21T12:30:00Z\", \"updated_at\": \"2026-11-21T12:31:00Z\","
              " \"finished_at\": \"2026-11-21T12:31:00Z\","
              " \"target\": {\"instances\": 1, \"canary_instances\": 0}, \"progress\": null,"
              " \"steps\": []}");
    cli_deployment_show(d, NOW_MS, cap_open(&c));
    s = cap_close(&c);
    assert_string_equal(s, "id:         x1\n"
                           "app:        /a\n"
                           "kind:       create\n"
                           "version:    1 (new app)\n"
                           "status:     failed\n"
                           "reason:     no progress for 60 s\n"
                           "target:     1 instance(s)\n"
                           "progress:   waiting for the scheduler\n"
                           "created:    2026-11-21T12:30:00Z (5m ago)\n"
                           "updated:    2026-11-21T12:31:00Z (4m ago)\n"
                           "finished:   2026-11-21T12:31:00Z (4m ago, took 1m 0s)\n"
                           "steps:      none\n");
    free(s);
    json_decref(d);
}

/* ---- the follower ------------------------------------------------------- */

static void test_follow_plain(void **state)
{
    (void)state;
    cli_follow_t f;
    cli_follow_init(&f, false);
    json_t *d = parse(DEP_RUNNING);
    cap_t c;
    FILE *out = cap_open(&c);
    /* First answer: the progress and every step so far. */
    cli_follow_render(&f, d, out);
    /* The same answer again (a blocking read that timed out): nothing. */
    cli_follow_render(&f, d, out);
    /* Progress alone changed: one line without steps. */
    json_object_set_new(json_object_get(d, "progress"), "new_healthy", json_integer(2));
    cli_follow_render(&f, d, out);
    /* A new step and new progress. */
    json_object_set_new(json_object_get(d, "progress"), "new_healthy", json_integer(4));
    json_object_set_new(json_object_get(d, "progress"), "old", json_integer(0));
    json_array_append_new(json_object_get(d, "steps"),
                          parse("{\"at\": \"2026-11-21T12:34:09Z\", \"message\": \"stopped 3 "
                                "instance(s) of version 3\"}"));
    cli_follow_render(&f, d, out);
    /* Instances waiting for a node: the summary once, until it changes. */
    json_object_set_new(d, "placement",
                        parse("{\"waiting\": 1, \"summary\": \"0 of 1 nodes fit\"}"));
    cli_follow_render(&f, d, out);
    cli_follow_render(&f, d, out);
    json_object_set_new(d, "status", json_string("succeeded"));
    json_object_set_new(d, "finished_at", json_string("2026-11-21T12:34:12.300Z"));
    assert_int_equal(cli_follow_finish(&f, d, out), CLI_EXIT_OK);
    char *s = cap_close(&c);
    assert_string_equal(s, "  1/4 new healthy, 3 old left (deploy: version 4; started 2 "
                           "instance(s) of version 4)\n"
                           "  2/4 new healthy, 3 old left\n"
                           "  4/4 new healthy, 0 old left (stopped 3 instance(s) of version 3)\n"
                           "  waiting for a node: 0 of 1 nodes fit\n"
                           "deployment 5f2c9a1b3d4e succeeded in 12.3 s\n");
    free(s);
    cli_follow_free(&f);
    json_decref(d);
}

/* The steps array keeps the last 50: what is new is what follows the last
 * step shown, even when older ones rotated out. */
static void test_follow_steps_rotate(void **state)
{
    (void)state;
    cli_follow_t f;
    cli_follow_init(&f, false);
    json_t *d = parse(DEP_RUNNING);
    cap_t c;
    FILE *out = cap_open(&c);
    cli_follow_render(&f, d, out);
    json_t *steps = json_object_get(d, "steps");
    json_array_remove(steps, 0);
    json_array_append_new(steps, parse("{\"at\": \"t3\", \"message\": \"three\"}"));
    json_array_append_new(steps, parse("{\"at\": \"t4\", \"message\": \"four\"}"));
    cli_follow_render(&f, d, out);
    /* The last shown step is gone altogether: all are new. */
    json_array_clear(steps);
    json_array_append_new(steps, parse("{\"at\": \"t5\", \"message\": \"five\"}"));
    cli_follow_render(&f, d, out);
    char *s = cap_close(&c);
    assert_string_equal(s, "  1/4 new healthy, 3 old left (deploy: version 4; started 2 "
                           "instance(s) of version 4)\n"
                           "  1/4 new healthy, 3 old left (three; four)\n"
                           "  1/4 new healthy, 3 old left (five)\n");
    free(s);
    cli_follow_free(&f);
    json_decref(d);
}

static void test_follow_tty(void **state)
{
    (void)state;
    cli_follow_t f;
    cli_follow_init(&f, true);
    json_t *d = parse(DEP_RUNNING);
    cap_t c;
    FILE *out = cap_open(&c);
    cli_follow_render(&f, d, out);
    cli_follow_render(&f, d, out); /* unchanged: nothing drawn */
    json_object_set_new(json_object_get(d, "progress"), "new_healthy", json_integer(2));
    cli_follow_render(&f, d, out);
    json_object_set_new(json_object_get(d, "progress"), "old", json_integer(1));
    json_array_append_new(json_object_get(d, "steps"),
                          parse("{\"at\": \"t9\", \"message\": \"stopped 2 instance(s)\"}"));
    cli_follow_render(&f, d, out);
    json_object_set_new(d, "status", json_string("failed"));
    json_object_set_new(d, "reason", json_string("no progress for 60 s"));
    assert_int_equal(cli_follow_finish(&f, d, out), CLI_EXIT_ERROR);
    char *s = cap_close(&c);
    assert_string_equal(s, "  deploy: version 4\n"
                           "  started 2 instance(s) of version 4\n"
                           "\r\033[K  1/4 new healthy, 3 old left"
                           "\r\033[K  2/4 new healthy, 3 old left"
                           "\r\033[K  stopped 2 instance(s)\n"
                           "\r\033[K  2/4 new healthy, 1 old left\n"
                           "deployment 5f2c9a1b3d4e failed: no progress for 60 s\n");
    free(s);
    cli_follow_free(&f);
    json_decref(d);
}

/* ---- answers of writes -------------------------------------------------- */

static void test_action_print(void **state)
{
    (void)state;
    json_t *a = parse("{\"id\": \"/production/web\", \"version\": 5, \"changed\": true,"
                      " \"deployment\": \"5f2c9a1b3d4e\","
                      " \"app\": {\"spec\": {\"instances\": 4}, \"stopped\": {\"instances\": 3}}}");
    static const struct {
        const char *action, *want;
    } cases[] = {
        {"scale", "scaled /production/web to 4 (version 5, deployment 5f2c9a1b3d4e)\n"},
        {"rollback", "rolled back /production/web (version 5, deployment 5f2c9a1b3d4e)\n"},
        {"promote",
         "promoted the canary of /production/web (version 5, deployment 5f2c9a1b3d4e)\n"},
        {"abort", "aborted the canary of /production/web; the current version keeps all traffic "
                  "(version 5, deployment 5f2c9a1b3d4e)\n"},
        {"restart",
         "restarting every instance of /production/web (version 5, deployment 5f2c9a1b3d4e)\n"},
        {"stop", "stopped /production/web (version 5, deployment 5f2c9a1b3d4e); `drover app start "
                 "/production/web` brings back 3 instance(s)\n"},
        {"start",
         "started /production/web with 4 instance(s) (version 5, deployment 5f2c9a1b3d4e)\n"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cap_t c;
        cli_action_print(cases[i].action, a, cap_open(&c));
        char *s = cap_close(&c);
        assert_string_equal(s, cases[i].want);
        free(s);
    }
    json_object_set_new(a, "changed", json_false());
    json_object_set_new(a, "deployment", json_null());
    cap_t c;
    cli_action_print("scale", a, cap_open(&c));
    char *s = cap_close(&c);
    assert_string_equal(s, "unchanged: /production/web is at version 5\n");
    free(s);
    json_decref(a);
}

static void test_deploy_result_deployment(void **state)
{
    (void)state;
    json_t *a = parse("{\"id\": \"/production/web\", \"version\": 4, \"changed\": true,"
                      " \"deployment\": \"5f2c9a1b3d4e\", \"warnings\": [],"
                      " \"app\": {\"version\": 3, \"canary\": null}}");
    cap_t out, err;
    cli_deploy_print_result(a, cap_open(&out), cap_open(&err));
    char *o = cap_close(&out), *e = cap_close(&err);
    assert_string_equal(o, "deployed /production/web version 4 (deployment 5f2c9a1b3d4e)\n");
    assert_string_equal(e, "");
    free(o);
    free(e);
    json_object_set_new(json_object_get(a, "app"), "canary",
                        parse("{\"version\": 4, \"percent\": 10, \"instances\": 1}"));
    cli_deploy_print_result(a, cap_open(&out), cap_open(&err));
    o = cap_close(&out);
    e = cap_close(&err);
    assert_string_equal(o, "canary /production/web version 4: 10% of the traffic, 1 instance(s) "
                           "(deployment 5f2c9a1b3d4e)\n");
    free(o);
    free(e);
    json_decref(a);
}

static void test_app_show_rollout(void **state)
{
    (void)state;
    json_t *app = parse(
        "{\"id\": \"/a\", \"version\": 3, \"spec\": {\"config\": \"config/a\"}, \"warnings\": [],"
        " \"deployment\": \"5f2c9a1b3d4e\","
        " \"canary\": {\"version\": 4, \"percent\": 10, \"instances\": 1, \"spec\": {}},"
        " \"config_env\": {\"DB_HOST\": \"10.0.0.9\", \"PORT\": \"1\"},"
        " \"stopped\": {\"instances\": 3},"
        " \"placement\": {\"waiting\": 2, \"summary\": \"0 of 1 nodes fit: 1 refused by "
        "constraint\", \"nodes\": [{\"node\": \"n1\", \"reason\": \"refused by constraint\"}]}}");
    json_t *dep = parse(DEP_RUNNING);
    cap_t c;
    cli_app_show_with(app, dep, NOW_MS, cap_open(&c));
    char *s = cap_close(&c);
    assert_non_null(strstr(s, "routes:     none\n"
                              "deployment: 5f2c9a1b3d4e (deploy, version 3 -> 4, running: 1/4 "
                              "new healthy, 3 old left)\n"
                              "canary:     version 4, 10% of the traffic, 1 instance(s)\n"
                              "stopped:    yes (`drover app start` brings back 3 instance(s))\n"
                              "config env: 2 variables from config/a\n"
                              "placement:  2 waiting for a node: 0 of 1 nodes fit: 1 refused by "
                              "constraint\n"
                              "  - n1: refused by constraint\n"
                              "created:    -\n"));
    free(s);
    /* Without the deployment record: the id alone. Without a deployment:
     * none; no canary, stop or placement lines when they are null. */
    cli_app_show(app, NOW_MS, cap_open(&c));
    s = cap_close(&c);
    assert_non_null(strstr(s, "\ndeployment: 5f2c9a1b3d4e\ncanary:"));
    free(s);
    json_object_set_new(app, "deployment", json_null());
    json_object_set_new(app, "canary", json_null());
    json_object_set_new(app, "stopped", json_null());
    json_object_set_new(app, "placement", json_null());
    json_object_del(app, "config_env");
    cli_app_show(app, NOW_MS, cap_open(&c));
    s = cap_close(&c);
    assert_non_null(strstr(s, "routes:     none\ndeployment: none\ncreated:    -\n"));
    assert_null(strstr(s, "canary"));
    assert_null(strstr(s, "placement"));
    free(s);
    json_decref(dep);
    json_decref(app);
}

/* ---- verbs against the fake API ----------------------------------------- */

static int setup(void **state)
{
    (void)state;
    fake_start();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    fake_stop();
    return 0;
}

#define DEP_DONE                                                                                   \
    "{\"id\": \"5f2c9a1b3d4e\", \"app\": \"/production/web\", \"kind\": \"scale\","                \
    " \"from_version\": 4, \"version\": 5, \"status\": \"succeeded\","                             \
    " \"created_at\": \"2026-11-21T12:34:00.000Z\", \"finished_at\": "                             \
    "\"2026-11-21T12:34:02.500Z\","                                                                \
    " \"target\": {\"instances\": 4}, \"progress\": {\"new_healthy\": 4, \"old\": 0},"             \
    " \"steps\": [{\"at\": \"a\", \"message\": \"scale: version 5\"}]}"

#define DEP_FAILED                                                                                 \
    "{\"id\": \"00000000bad0\", \"app\": \"/production/web\", \"kind\": \"deploy\","               \
    " \"from_version\": 4, \"version\": 5, \"status\": \"failed\", \"reason\": \"no progress\","   \
    " \"target\": {\"instances\": 1}, \"progress\": {\"new_healthy\": 0, \"old\": 1},"             \
    " \"steps\": []}"

#define ACTION_ANSWER                                                                              \
    "{\"id\": \"/production/web\", \"version\": 5, \"changed\": true,"                             \
    " \"deployment\": \"5f2c9a1b3d4e\", \"app\": {\"spec\": {\"instances\": 4}}}"

static void test_verb_scale_wait(void **state)
{
    (void)state;
    const fake_route_t routes[] = {
        {"POST", "/v1/apps/production/web/scale", 200, NULL, NULL, ACTION_ANSWER, false},
        {"GET", "/v1/deployments/5f2c9a1b3d4e", 200, NULL, NULL, DEP_DONE, false},
    };
    fake_set(routes, 2);
    char *out, *err;
    assert_int_equal(fake_run(&out, &err, "scale", "production/web", "4", "--wait", NULL), 0);
    assert_string_equal(out, "scaled /production/web to 4 (version 5, deployment 5f2c9a1b3d4e)\n"
                             "  4/4 new healthy, 0 old left (scale: version 5)\n"
                             "deployment 5f2c9a1b3d4e succeeded in 2.5 s\n");
    assert_string_equal(err, "");
    free(out);
    free(err);
    char *log = fake_log();
    assert_string_equal(log, "POST /v1/apps/production/web/scale\n"
                             "GET /v1/deployments/5f2c9a1b3d4e\n");
    free(log);
    assert_int_equal(fake.body_len, strlen("{\"instances\":4}"));
    assert_memory_equal(fake.body, "{\"instances\":4}", fake.body_len);

    /* Without --wait, the one line; a bad count is a usage error. */
    assert_int_equal(fake_run(&out, &err, "scale", "/production/web", "4", NULL), 0);
    assert_string_equal(out, "scaled /production/web to 4 (version 5, deployment 5f2c9a1b3d4e)\n");
    free(out);
    free(err);
    assert_int_equal(fake_run(&out, &err, "scale", "/production/web", "four", NULL), 2);
    assert_non_null(strstr(err, "expected an instance count"));
    free(out);
    free(err);
    /* --json --wait: stdout is the answer alone, progress on stderr. */
    assert_int_equal(
        fake_run(&out, &err, "scale", "/production/web", "4", "--wait", "--json", NULL), 0);
    assert_string_equal(out, ACTION_ANSWER "\n");
    assert_non_null(strstr(err, "deployment 5f2c9a1b3d4e succeeded in 2.5 s\n"));
    free(out);
    free(err);
}

static void test_verb_deployment_wait(void **state)
{
    (void)state;
    const fake_route_t routes[] = {
        {"GET", "/v1/deployments/5f2c9a1b3d4e", 200, NULL, NULL, DEP_DONE, false},
        {"GET", "/v1/deployments/00000000bad0", 200, NULL, NULL, DEP_FAILED, false},
    };
    fake_set(routes, 2);
    char *out, *err;
    assert_int_equal(fake_run(&out, &err, "deployment", "wait", "5f2c9a1b3d4e", NULL), 0);
    assert_string_equal(out, "deployment 5f2c9a1b3d4e: scale /production/web version 4 -> 5\n"
                             "  4/4 new healthy, 0 old left (scale: version 5)\n"
                             "deployment 5f2c9a1b3d4e succeeded in 2.5 s\n");
    free(out);
    free(err);
    assert_int_equal(fake_run(&out, &err, "deployment", "wait", "00000000bad0", NULL), 1);
    assert_non_null(strstr(out, "deployment 00000000bad0 failed: no progress\n"));
    free(out);
    free(err);
    /* --json: the finished deployment on stdout, the rest on stderr. */
    assert_int_equal(fake_run(&out, &err, "deployment", "wait", "00000000bad0", "--json", NULL), 1);
    assert_string_equal(out, DEP_FAILED "\n");
    assert_non_null(strstr(err, "failed: no progress"));
    free(out);
    free(err);
    /* An unknown deployment is the server's 404. */
    assert_int_equal(fake_run(&out, &err, "deployment", "wait", "nope", NULL), 1);
    assert_non_null(strstr(err, "drover: no route for /v1/deployments/nope"));
    free(out);
    free(err);
}

static void test_verb_deploy_canary_wait(void **state)
{
    (void)state;
    char path[] = "/tmp/drover-test-deploy-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char spec[] = "{\"id\": \"/production/web\", \"cmd\": \"sleep 1000\"}";
    assert_int_equal(write(fd, spec, sizeof(spec) - 1), (ssize_t)(sizeof(spec) - 1));
    close(fd);
    const fake_route_t routes[] = {
        {"POST", "/v1/apps?canary=10", 200, NULL, NULL, ACTION_ANSWER, false},
        {"POST", "/v1/apps", 200, NULL, NULL,
         "{\"id\": \"/production/web\", \"version\": 5, \"changed\": false,"
         " \"deployment\": null, \"warnings\": []}",
         false},
        {"GET", "/v1/deployments/5f2c9a1b3d4e", 200, NULL, NULL, DEP_DONE, false},
    };
    fake_set(routes, 3);
    char *out, *err;
    assert_int_equal(fake_run(&out, &err, "deploy", path, "--canary", "10%", "--wait", NULL), 0);
    assert_non_null(strstr(out, "deployed /production/web version 5 (deployment 5f2c9a1b3d4e)\n"
                                "  4/4 new healthy"));
    free(out);
    free(err);
    char *log = fake_log();
    assert_string_equal(log, "POST /v1/apps?canary=10\nGET /v1/deployments/5f2c9a1b3d4e\n");
    free(log);
    /* Unchanged: no deployment, nothing to wait for. */
    fake_set(routes, 3);
    assert_int_equal(fake_run(&out, &err, "deploy", path, "--wait", NULL), 0);
    assert_string_equal(out, "unchanged: /production/web is at version 5\n");
    free(out);
    free(err);
    log = fake_log();
    assert_string_equal(log, "POST /v1/apps\n");
    free(log);
    /* Bad flags send nothing. */
    fake_set(routes, 3);
    assert_int_equal(fake_run(&out, &err, "deploy", path, "--canary", "100", NULL), 2);
    assert_non_null(strstr(err, "--canary 100: expected a percentage 1..99"));
    free(out);
    free(err);
    assert_int_equal(fake_run(&out, &err, "deploy", path, "--wait", "--dry-run", NULL), 2);
    free(out);
    free(err);
    log = fake_log();
    assert_string_equal(log, "");
    free(log);
    unlink(path);
}

static void test_verb_list_cancel_rollback(void **state)
{
    (void)state;
    const fake_route_t routes[] = {
        {"GET", "/v1/deployments?app=%2Fproduction%2Fweb&all=1", 200, NULL, NULL,
         "{\"deployments\": [" DEP_FAILED "]}", false},
        {"GET", "/v1/deployments", 200, NULL, NULL, "{\"deployments\": []}", false},
        {"DELETE", "/v1/deployments/5f2c9a1b3d4e", 200, NULL, NULL,
         "{\"id\": \"5f2c9a1b3d4e\", \"app\": \"/production/web\", \"kind\": \"deploy\","
         " \"status\": \"cancelled\", \"target\": {\"instances\": 4},"
         " \"progress\": {\"new_healthy\": 1, \"old\": 3}}",
         false},
        {"POST", "/v1/apps/production/web/rollback", 200, NULL, NULL, ACTION_ANSWER, false},
        {"POST", "/v1/apps/production/web/stop", 409, NULL, NULL,
         "{\"error\": \"app /production/web is already stopped\"}", false},
    };
    fake_set(routes, sizeof(routes) / sizeof(routes[0]));
    char *out, *err;
    assert_int_equal(fake_run(&out, &err, "deployments", "--app", "production/web", "--all", NULL),
                     0);
    assert_non_null(strstr(out, "00000000bad0   /production/web   deploy   4->5      failed"));
    free(out);
    free(err);
    assert_int_equal(fake_run(&out, &err, "deployments", NULL), 0);
    assert_string_equal(out, "ID   APP   KIND   VERSION   STATUS   PROGRESS   AGE\n");
    free(out);
    free(err);
    assert_int_equal(fake_run(&out, &err, "deployment", "cancel", "5f2c9a1b3d4e", NULL), 0);
    assert_string_equal(
        out,
        "cancelled deployment 5f2c9a1b3d4e of /production/web (1/4 new healthy, 3 old left)\n");
    free(out);
    free(err);
    assert_int_equal(fake_run(&out, &err, "rollback", "/production/web", "v3", NULL), 0);
    assert_string_equal(out, "rolled back /production/web (version 5, deployment 5f2c9a1b3d4e)\n");
    assert_memory_equal(fake.body, "{\"version\":3}", fake.body_len);
    free(out);
    free(err);
    assert_int_equal(fake_run(&out, &err, "rollback", "/production/web", "latest", NULL), 2);
    free(out);
    free(err);
    assert_int_equal(fake_run(&out, &err, "app", "stop", "/production/web", NULL), 1);
    assert_string_equal(err, "drover: app /production/web is already stopped\n");
    free(out);
    free(err);
    char *log = fake_log();
    assert_string_equal(log, "GET /v1/deployments?app=%2Fproduction%2Fweb&all=1\n"
                             "GET /v1/deployments\n"
                             "DELETE /v1/deployments/5f2c9a1b3d4e\n"
                             "POST /v1/apps/production/web/rollback\n"
                             "POST /v1/apps/production/web/stop\n");
    free(log);
}

/* Every new verb has help, and it fits a terminal. */
static void test_verb_help(void **state)
{
    (void)state;
    static const char *const verbs[][2] = {
        {"deployments", NULL},  {"deployment", "show"}, {"deployment", "cancel"},
        {"deployment", "wait"}, {"scale", NULL},        {"rollback", NULL},
        {"promote", NULL},      {"abort", NULL},        {"restart", NULL},
        {"app", "stop"},        {"app", "start"},       {"deploy", NULL},
        {"deployment", NULL},   {"app", NULL},          {"--help", NULL},
    };
    for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
        char *out, *err;
        int rc = verbs[i][1] ? fake_run(&out, &err, verbs[i][0], verbs[i][1], "--help", NULL)
                 : verbs[i][0][0] == '-' ? fake_run(&out, &err, verbs[i][0], NULL)
                                         : fake_run(&out, &err, verbs[i][0], "--help", NULL);
        assert_int_equal(rc, 0);
        assert_non_null(strstr(out, "usage: drover "));
        for (char *l = out; *l;) {
            size_t n = strcspn(l, "\n");
            if (n > 100)
                fail_msg("%s %s: help line over 100 columns: %.*s", verbs[i][0],
                         verbs[i][1] ? verbs[i][1] : "", (int)n, l);
            l += n + (l[n] ? 1 : 0);
        }
        free(out);
        free(err);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_canary_parse),
        cmocka_unit_test(test_version_parse),
        cmocka_unit_test(test_progress_text),
        cmocka_unit_test(test_versions_text),
        cmocka_unit_test(test_result_line),
        cmocka_unit_test(test_deployments_table),
        cmocka_unit_test(test_deployment_show),
        cmocka_unit_test(test_follow_plain),
        cmocka_unit_test(test_follow_steps_rotate),
        cmocka_unit_test(test_follow_tty),
        cmocka_unit_test(test_action_print),
        cmocka_unit_test(test_deploy_result_deployment),
        cmocka_unit_test(test_app_show_rollout),
        cmocka_unit_test_setup_teardown(test_verb_scale_wait, setup, teardown),
        cmocka_unit_test_setup_teardown(test_verb_deployment_wait, setup, teardown),
        cmocka_unit_test_setup_teardown(test_verb_deploy_canary_wait, setup, teardown),
        cmocka_unit_test_setup_teardown(test_verb_list_cancel_rollback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_verb_help, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
