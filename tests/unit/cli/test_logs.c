/* `drover logs`: which instance it reads, the request it makes, and the
 * bytes it copies, against a fake API whose log endpoint redirects to a
 * fake agent as the real one does. */
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

static json_t *parse(const char *s)
{
    json_error_t e;
    json_t *j = json_loads(s, 0, &e);
    if (!j)
        fail_msg("bad test JSON: %s", e.text);
    return j;
}

/* ---- pure parts --------------------------------------------------------- */

static void test_instance_id_like(void **state)
{
    (void)state;
    const char *yes[] = {"production_web.5f2c9a1b3d4e", "app_x.5f2c9a1b3d4e", "a.000000000000",
                         "a.b_c.abcdefabcdef"};
    const char *no[] = {"/production/web",  "production_web", "a.5F2C9A1B3D4E",
                        ".5f2c9a1b3d4e",    "a.5f2c9a1b3d4",  "a.5f2c9a1b3d4e0",
                        "a/b.5f2c9a1b3d4e", "a.5f2c9a1b3d4g", "",
                        "production_web."};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
        if (!cli_instance_id_like(yes[i]))
            fail_msg("%s should look like an instance id", yes[i]);
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        if (cli_instance_id_like(no[i]))
            fail_msg("%s should not look like an instance id", no[i]);
}

static void test_logs_path(void **state)
{
    (void)state;
    struct {
        const char *id;
        int64_t tail;
        bool follow;
        const char *stream, *want;
    } cases[] = {
        {"a.000000000001", -1, false, NULL, "/v1/instances/a.000000000001/logs"},
        {"a.000000000001", 5, true, "stderr",
         "/v1/instances/a.000000000001/logs?tail=5&follow=1&stream=stderr"},
        {"a.000000000001", 0, false, NULL, "/v1/instances/a.000000000001/logs?tail=0"},
        {"a.000000000001", -1, true, NULL, "/v1/instances/a.000000000001/logs?follow=1"},
        {"a.000000000001", -1, false, "stdout", "/v1/instances/a.000000000001/logs?stream=stdout"},
        /* Escaped whole: an id cannot add or climb a path segment. */
        {"a b/..", -1, false, NULL, "/v1/instances/a%20b%2F%2E%2E/logs"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *p = cli_logs_path(cases[i].id, cases[i].tail, cases[i].follow, cases[i].stream);
        if (strcmp(p, cases[i].want))
            fail_msg("case %zu: %s, want %s", i, p, cases[i].want);
        free(p);
    }
}

static void test_logs_pick(void **state)
{
    (void)state;
    json_t *three = parse("[{\"id\": \"w.00000000000c\"}, {\"id\": \"w.00000000000a\"},"
                          " {\"id\": \"w.00000000000b\"}, {\"no\": \"id\"}]");
    json_t *one = parse("[{\"id\": \"w.00000000000a\"}]");
    json_t *none = json_array();
    const char **ids;
    size_t n;
    err_t err = {0};

    /* Several without --follow: every one, by id. */
    assert_int_equal(cli_logs_pick(three, "/w", NULL, false, &ids, &n, &err), 0);
    assert_int_equal(n, 3);
    assert_string_equal(ids[0], "w.00000000000a");
    assert_string_equal(ids[1], "w.00000000000b");
    assert_string_equal(ids[2], "w.00000000000c");
    free(ids);

    /* --instance picks one, following or not. */
    assert_int_equal(cli_logs_pick(three, "/w", "w.00000000000b", true, &ids, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(ids[0], "w.00000000000b");
    free(ids);

    /* One instance needs no --instance, even to follow. */
    assert_int_equal(cli_logs_pick(one, "/w", NULL, true, &ids, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(ids[0], "w.00000000000a");
    free(ids);

    assert_int_equal(cli_logs_pick(three, "/w", NULL, true, &ids, &n, &err), -EINVAL);
    assert_null(ids);
    assert_string_equal(err.msg, "app /w has 3 instances; --follow reads one: add --instance ID "
                                 "(one of w.00000000000a, w.00000000000b, w.00000000000c)");
    assert_int_equal(cli_logs_pick(three, "/w", "x.00000000000a", false, &ids, &n, &err), -ESRCH);
    assert_string_equal(err.msg, "instance x.00000000000a is not an instance of /w (its "
                                 "instances: w.00000000000a, w.00000000000b, w.00000000000c)");
    assert_int_equal(cli_logs_pick(none, "/w", NULL, false, &ids, &n, &err), -ENOENT);
    assert_string_equal(err.msg, "app /w has no instances");
    assert_int_equal(cli_logs_pick(none, "/w", "w.00000000000a", false, &ids, &n, &err), -ENOENT);

    /* Long lists are cut in messages. */
    json_t *many = json_array();
    for (int i = 0; i < 11; i++) {
        char id[32];
        snprintf(id, sizeof(id), "w.0000000000%02d", i);
        json_array_append_new(many, json_pack("{s:s}", "id", id));
    }
    assert_int_equal(cli_logs_pick(many, "/w", NULL, true, &ids, &n, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "w.000000000007, ... (3 more))"));
    json_decref(many);
    json_decref(three);
    json_decref(one);
    json_decref(none);
}

/* ---- the verb against a fake API and agent ------------------------------ */

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

#define ONE_LIST                                                                                   \
    "{\"instances\": [{\"id\": \"one.000000000001\", \"app\": \"/one\", \"node\": \"n1\","         \
    " \"state\": \"running\"}]}"
#define MULTI_LIST                                                                                 \
    "{\"instances\": [{\"id\": \"multi.00000000000b\", \"app\": \"/multi\", \"node\": \"n2\"},"    \
    " {\"id\": \"multi.00000000000a\", \"app\": \"/multi\", \"node\": \"n1\"}]}"
#define ONE_LOGS "/v1/instances/one.000000000001/logs"

static const fake_route_t routes[] = {
    {"GET", "/v1/instances?app=%2Fone", 200, NULL, NULL, ONE_LIST, false},
    {"GET", "/v1/instances?app=%2Fmulti", 200, NULL, NULL, MULTI_LIST, false},
    {"GET", "/v1/instances?app=%2Fnope", 200, NULL, NULL, "{\"instances\": []}", false},
    {"GET", "/v1/instances?app=%2Fidle", 200, NULL, NULL, "{\"instances\": []}", false},
    {"GET", "/v1/instances?app=zz.000000000009", 200, NULL, NULL, "{\"instances\": []}", false},
    {"GET", "/v1/apps/idle", 200, NULL, NULL, "{\"id\": \"/idle\"}", false},
    {"GET", "/v1/apps/nope", 404, NULL, NULL, "{\"error\": \"app /nope not found\"}", false},
    {"GET", "/v1/apps/zz.000000000009", 404, NULL, NULL, "{\"error\": \"app not found\"}", false},
    {"GET", "/v1/instances/one.000000000001", 200, NULL, NULL,
     "{\"id\": \"one.000000000001\", \"app\": \"/one\", \"node\": \"n1\"}", false},
    {"GET", "/v1/instances/zz.000000000009", 404, NULL, NULL,
     "{\"error\": \"instance zz.000000000009 not found\"}", false},
    /* The API redirects; the "agent" (same server, /agent prefix) streams. */
    {"GET", ONE_LOGS, 307, "/agent" ONE_LOGS, NULL, NULL, false},
    {"GET", "/agent" ONE_LOGS, 200, NULL, "text/plain; charset=utf-8", "hello\nworld\n", true},
    {"GET", ONE_LOGS "?tail=5&follow=1&stream=stderr", 307,
     "/agent" ONE_LOGS "?tail=5&follow=1&stream=stderr", NULL, NULL, false},
    {"GET", "/agent" ONE_LOGS "?tail=5&follow=1&stream=stderr", 200, NULL, "text/plain",
     "err1\nerr2\n", true},
    {"GET", "/v1/instances/multi.00000000000a/logs", 307,
     "/agent/v1/instances/multi.00000000000a/logs", NULL, NULL, false},
    {"GET", "/agent/v1/instances/multi.00000000000a/logs", 200, NULL, "text/plain", "A1\nA2",
     false},
    {"GET", "/v1/instances/multi.00000000000b/logs", 307,
     "/agent/v1/instances/multi.00000000000b/logs", NULL, NULL, false},
    {"GET", "/agent/v1/instances/multi.00000000000b/logs", 200, NULL, "text/plain", "B1\n", false},
    /* Error paths: an agent that is down, an agent that says no. */
    {"GET", ONE_LOGS "?tail=1", 307, "http://127.0.0.1:1" ONE_LOGS "?tail=1", NULL, NULL, false},
    {"GET", ONE_LOGS "?tail=2", 307, "/agent" ONE_LOGS "?tail=2", NULL, NULL, false},
    {"GET", ONE_LOGS "?tail=3", 307, ONE_LOGS "?tail=3", NULL, NULL, false},
    {"GET", "/agent" ONE_LOGS "?tail=2", 404, NULL, NULL,
     "{\"error\":\"no such instance on this node\"}", false},
};

typedef struct logs_case {
    const char *argv[8];
    int rc;
    const char *out;      /* exact stdout */
    const char *err;      /* substring of stderr ("" = empty stderr) */
    const char *requests; /* exact request log, NULL = not checked */
} logs_case_t;

static void run_cases(const logs_case_t *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        fake_set(routes, sizeof(routes) / sizeof(routes[0]));
        const char *const *a = cases[i].argv;
        char *out, *err;
        int rc = fake_run(&out, &err, "logs", a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], NULL);
        char *log = fake_log();
        bool ok = rc == cases[i].rc && strcmp(out, cases[i].out) == 0 &&
                  (*cases[i].err ? strstr(err, cases[i].err) != NULL : *err == '\0') &&
                  (!cases[i].requests || strcmp(log, cases[i].requests) == 0);
        if (!ok)
            fail_msg("case %zu (%s): rc %d\nstdout [%s]\nstderr [%s]\nrequests [%s]", i, a[0], rc,
                     out, err, log);
        free(out);
        free(err);
        free(log);
    }
}

static void test_logs_streams(void **state)
{
    (void)state;
    const logs_case_t cases[] = {
        /* One instance: its log, through the redirect, nothing added. */
        {{"/one"},
         0,
         "hello\nworld\n",
         "",
         "GET /v1/instances?app=%2Fone\nGET " ONE_LOGS "\nGET /agent" ONE_LOGS "\n"},
        /* Flags become the query, passed on to the agent. */
        {{"/one", "-f", "--tail", "5", "--stderr"},
         0,
         "err1\nerr2\n",
         "",
         "GET /v1/instances?app=%2Fone\n"
         "GET " ONE_LOGS "?tail=5&follow=1&stream=stderr\n"
         "GET /agent" ONE_LOGS "?tail=5&follow=1&stream=stderr\n"},
        {{"/one", "--follow", "--tail=5", "--stderr", "--instance", "one.000000000001"},
         0,
         "err1\nerr2\n",
         "",
         NULL},
        /* An instance id stands for its app. */
        {{"one.000000000001"},
         0,
         "hello\nworld\n",
         "",
         "GET /v1/instances/one.000000000001\nGET " ONE_LOGS "\nGET /agent" ONE_LOGS "\n"},
        /* Several: each under a header, by id, like tail. */
        {{"/multi"},
         0,
         "==> multi.00000000000a <==\nA1\nA2\n\n==> multi.00000000000b <==\nB1\n",
         "",
         NULL},
        {{"/multi", "--instance", "multi.00000000000b"}, 0, "B1\n", "", NULL},
    };
    run_cases(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_logs_errors(void **state)
{
    (void)state;
    const logs_case_t cases[] = {
        {{"/multi", "-f"},
         2,
         "",
         "drover: app /multi has 2 instances; --follow reads one: add --instance ID (one of "
         "multi.00000000000a, multi.00000000000b)\nusage: drover logs",
         "GET /v1/instances?app=%2Fmulti\n"},
        {{"/multi", "--instance", "one.000000000001"},
         1,
         "",
         "drover: instance one.000000000001 is not an instance of /multi (its instances: "
         "multi.00000000000a, multi.00000000000b)\n",
         NULL},
        {{"/nope"}, 1, "", "drover: app /nope not found\n", NULL},
        {{"/idle"}, 1, "", "drover: app /idle has no instances\n", NULL},
        {{"zz.000000000009"}, 1, "", "drover: no instance or app named zz.000000000009\n", NULL},
        {{"/one", "--tail", "1"},
         1,
         "",
         "drover: one.000000000001: cannot connect to http://127.0.0.1:1" ONE_LOGS
         "?tail=1: Connection refused (the agent of node n1 serves these logs)\n",
         NULL},
        {{"/one", "--tail", "2"},
         1,
         "",
         "drover: one.000000000001: no such instance on this node\n",
         NULL},
        /* A redirect loop ends. */
        {{"/one", "--tail", "3"}, 1, "", "logs?tail=3: Maximum (5) redirects followed", NULL},
        {{"/one", "--stdout", "--stderr"}, 2, "", "--stdout and --stderr exclude each other", ""},
        {{"/one", "--tail", "lots"}, 2, "", "--tail lots: expected a number of lines 0-100000", ""},
        {{"/one", "--tail", "100001"}, 2, "", "--tail 100001: expected", ""},
        {{"/one", "-x"}, 2, "", "unknown flag -x", ""},
        {{"/one", "-ff"}, 2, "", "unknown flag -ff", ""},
        {{NULL}, 2, "", "drover: missing argument\nusage: drover logs APP|INSTANCE", ""},
    };
    run_cases(cases, sizeof(cases) / sizeof(cases[0]));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_instance_id_like),
        cmocka_unit_test(test_logs_path),
        cmocka_unit_test(test_logs_pick),
        cmocka_unit_test_setup_teardown(test_logs_streams, setup, teardown),
        cmocka_unit_test_setup_teardown(test_logs_errors, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
