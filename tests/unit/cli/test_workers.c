/* Worker apps in the CLI: `app pool` (pin through the API, show through
 * each node's redirect) and `crashlog ls|show` (gathered from every node,
 * newest first), against a fake API whose instance paths redirect to the
 * same fake standing in for the agent. */
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

/* ---- pure parts --------------------------------------------------------- */

static void test_pool_arg(void **state)
{
    (void)state;
    int64_t n = -1;
    assert_int_equal(cli_pool_arg("4", &n), 0);
    assert_int_equal(n, 4);
    assert_int_equal(cli_pool_arg("auto", &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(cli_pool_arg("0", &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(cli_pool_arg("-1", &n), -EINVAL);
    assert_int_equal(cli_pool_arg("four", &n), -EINVAL);
    assert_int_equal(cli_pool_arg("", &n), -EINVAL);
}

static void test_workers_text(void **state)
{
    (void)state;
    char out[64];
    json_error_t e;
    json_t *j = json_loads("{\"active\": 3, \"spawning\": 1, \"sealing\": 0, \"total\": 4}", 0, &e);
    cli_pool_workers_text(j, out, sizeof(out));
    assert_string_equal(out, "3 active, 1 spawning");
    json_decref(j);
    j = json_object();
    cli_pool_workers_text(j, out, sizeof(out));
    assert_string_equal(out, "none");
    cli_pool_workers_text(NULL, out, sizeof(out));
    assert_string_equal(out, "none");
    json_decref(j);
    /* a tiny buffer is cut, never overrun */
    j = json_loads("{\"active\": 300000, \"handshaking\": 200000}", 0, &e);
    char small[12];
    cli_pool_workers_text(j, small, sizeof(small));
    assert_true(strlen(small) < sizeof(small));
    json_decref(j);
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

#define APP_W "{\"id\": \"/w\", \"version\": 1, \"spec\": {\"kind\": \"worker\"}}"
#define INSTS                                                                                      \
    "{\"instances\": [{\"id\": \"w.aaaaaaaaaaaa\", \"node\": \"n1\"},"                             \
    " {\"id\": \"w.bbbbbbbbbbbb\", \"node\": \"n2\"}]}"

static void test_verb_pool_pin(void **state)
{
    (void)state;
    const fake_route_t routes[] = {
        {"POST", "/v1/apps/w/pool", 200, NULL, NULL,
         "{\"id\": \"/w\", \"workers\": 3, \"automatic\": false}", false},
    };
    fake_set(routes, 1);
    char *out, *err;
    assert_int_equal(fake_run(&out, &err, "app", "pool", "w", "3", NULL), 0);
    assert_string_equal(out, "app /w: pool pinned to 3 worker(s) on each node\n");
    assert_string_equal(err, "");
    assert_memory_equal(fake.body, "{\"workers\": 3}", fake.body_len);
    free(out);
    free(err);
    char *log = fake_log();
    assert_string_equal(log, "POST /v1/apps/w/pool\n");
    free(log);
    assert_int_equal(fake_run(&out, &err, "app", "pool", "w", "many", NULL), 2);
    assert_non_null(strstr(err, "N: expected a number of workers >= 0 or auto, got \"many\""));
    free(out);
    free(err);
}

static void test_verb_pool_show(void **state)
{
    (void)state;
    const fake_route_t routes[] = {
        {"GET", "/v1/apps/w", 200, NULL, NULL, APP_W, false},
        {"GET", "/v1/instances?app=w", 200, NULL, NULL, INSTS, false},
        {"GET", "/v1/instances/w.aaaaaaaaaaaa/pool", 307, "/agent1/pool", NULL, NULL, false},
        {"GET", "/v1/instances/w.bbbbbbbbbbbb/pool", 307, "/agent2/pool", NULL, NULL, false},
        {"GET", "/agent1/pool", 200, NULL, NULL,
         "{\"workers\": {\"active\": 2}, \"queue\": 1, \"queue_limit\": 50, \"pin\": 2,"
         " \"totals\": {\"served\": 40, \"refused\": 1, \"crashes\": 0}}",
         false},
        {"GET", "/agent2/pool", 500, NULL, NULL, "{\"error\": \"engine gone\"}", false},
    };
    fake_set(routes, 6);
    char *out, *err;
    assert_int_equal(fake_run(&out, &err, "app", "pool", "w", NULL), 1);
    assert_non_null(strstr(out, "NODE"));
    assert_non_null(strstr(out, "w.aaaaaaaaaaaa"));
    assert_non_null(strstr(out, "2 active"));
    assert_non_null(strstr(out, "1/50"));
    /* the node that failed is named; the other is still shown */
    assert_null(strstr(out, "w.bbbbbbbbbbbb"));
    assert_non_null(strstr(err, "engine gone"));
    free(out);
    free(err);
}

static void test_verb_crashlog(void **state)
{
    (void)state;
    const fake_route_t routes[] = {
        {"GET", "/v1/apps/w", 200, NULL, NULL, APP_W, false},
        {"GET", "/v1/instances?app=w", 200, NULL, NULL, INSTS, false},
        {"GET", "/v1/instances/w.aaaaaaaaaaaa/crashlogs", 307, "/a1/crashlogs", NULL, NULL, false},
        {"GET", "/v1/instances/w.bbbbbbbbbbbb/crashlogs", 307, "/a2/crashlogs", NULL, NULL, false},
        {"GET", "/a1/crashlogs", 200, NULL, NULL,
         "[{\"id\": \"1\", \"at\": \"2026-11-21T10:00:00.000Z\", \"reason\": \"exit 1\","
         " \"lines\": 3}]",
         false},
        {"GET", "/a2/crashlogs", 200, NULL, NULL,
         "[{\"id\": \"7\", \"at\": \"2026-11-21T11:00:00.000Z\", \"reason\": \"signal 9\","
         " \"lines\": 1}]",
         false},
        {"GET", "/v1/instances/w.bbbbbbbbbbbb/crashlogs/7", 307, "/a2/crashlogs/7", NULL, NULL,
         false},
        {"GET", "/a2/crashlogs/7", 200, NULL, "text/plain", "boom\n", false},
        {"GET", "/v1/instances/w.aaaaaaaaaaaa/crashlogs/1", 307, "/a1/crashlogs/1", NULL, NULL,
         false},
        {"GET", "/a1/crashlogs/1", 200, NULL, "text/plain", "line 1\nline 2\nline 3\n", false},
    };
    fake_set(routes, 10);
    char *out, *err;
    assert_int_equal(fake_run(&out, &err, "crashlog", "ls", "w", NULL), 0);
    /* newest first: node 2's crash, then node 1's */
    char *first = strstr(out, "signal 9"), *second = strstr(out, "exit 1");
    assert_non_null(first);
    assert_non_null(second);
    assert_true(first < second);
    free(out);
    free(err);
    /* show: the newest without an id, a given one with it */
    assert_int_equal(fake_run(&out, &err, "crashlog", "show", "w", NULL), 0);
    assert_string_equal(out, "boom\n");
    free(out);
    free(err);
    assert_int_equal(fake_run(&out, &err, "crashlog", "show", "w", "1", NULL), 0);
    assert_string_equal(out, "line 1\nline 2\nline 3\n");
    free(out);
    free(err);
    assert_int_equal(fake_run(&out, &err, "crashlog", "show", "w", "99", NULL), 1);
    assert_non_null(strstr(err, "app w has no crashlog 99"));
    free(out);
    free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool_arg),
        cmocka_unit_test(test_workers_text),
        cmocka_unit_test_setup_teardown(test_verb_pool_pin, setup, teardown),
        cmocka_unit_test_setup_teardown(test_verb_pool_show, setup, teardown),
        cmocka_unit_test_setup_teardown(test_verb_crashlog, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
