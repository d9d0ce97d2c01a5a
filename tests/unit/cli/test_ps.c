/* `drover ps` and `drover nodes`: the tables docs/cli.md promises, and the
 * verbs against a fake API. */
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
        fail_msg("bad test JSON: %s", e.text);
    return j;
}

static char *render_ps(const char *instances_json, bool all)
{
    json_t *j = parse(instances_json);
    char *b = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&b, &n);
    cli_ps_table(j, all, NOW_MS, f);
    fclose(f);
    json_decref(j);
    return b;
}

#define INSTANCES                                                                                  \
    "["                                                                                            \
    "{\"id\": \"w_web.00000000000b\", \"app\": \"/w/web\", \"version\": 3, \"node\": \"n1\","      \
    " \"host\": \"10.0.0.5\", \"ports\": [31000, 31001], \"state\": \"healthy\","                  \
    " \"reason\": \"health check passed\", \"since\": \"2026-11-21T12:30:00.000Z\","               \
    " \"restarts\": 0, \"healthy\": true},"                                                        \
    "{\"id\": \"w_api.00000000000c\", \"app\": \"/w/api\", \"version\": 1, \"node\": \"n2\","      \
    " \"host\": \"10.0.0.6\", \"ports\": [], \"state\": \"failed\","                               \
    " \"reason\": \"exited with code 1; restarting in 4.0s (restart 3, crash loop)\","             \
    " \"since\": \"2026-11-21T12:34:50Z\", \"restarts\": 3, \"healthy\": null},"                   \
    "{\"id\": \"w_web.00000000000a\", \"app\": \"/w/web\", \"version\": 3, \"node\": \"n1\","      \
    " \"host\": \"10.0.0.5\", \"ports\": [31002], \"state\": \"failed\","                          \
    " \"reason\": \"exited with code 2\", \"since\": \"2026-11-21T10:35:00Z\", \"restarts\": 2},"  \
    "{\"id\": \"w_web.00000000000d\", \"app\": \"/w/web\", \"version\": 2, \"node\": \"n1\","      \
    " \"host\": \"10.0.0.5\", \"ports\": [31003], \"state\": \"killed\","                          \
    " \"reason\": \"stopped: SIGTERM\", \"since\": \"2026-11-21T12:00:00Z\", \"restarts\": 0},"    \
    "{\"id\": \"j_x.00000000000e\", \"app\": \"/j/x\", \"version\": 1, \"node\": \"n2\","          \
    " \"host\": \"10.0.0.6\", \"state\": \"finished\", \"since\": \"2026-11-20T12:35:00Z\","       \
    " \"restarts\": 0, \"reason\": null}"                                                          \
    "]"

/* Sorted by app then id; ended-as-asked instances hidden; a failed
 * instance with 3 restarts is a crash loop, one with 2 is not; the reason
 * is cut at 40 characters. */
static void test_ps_table(void **state)
{
    (void)state;
    char *s = render_ps(INSTANCES, false);
    assert_string_equal(s, "ID                   APP      VERSION   NODE   ADDRESS                "
                           "STATE                 SINCE     RESTARTS   REASON\n"
                           "w_api.00000000000c   /w/api   1         n2     10.0.0.6               "
                           "failed (crash loop)   10s ago   3          exited with code 1; "
                           "restarting in 4.0...\n"
                           "w_web.00000000000a   /w/web   3         n1     10.0.0.5:31002         "
                           "failed                2h ago    2          exited with code 2\n"
                           "w_web.00000000000b   /w/web   3         n1     10.0.0.5:31000,31001   "
                           "healthy               5m ago    0          health check passed\n");
    free(s);
}

static void test_ps_table_all(void **state)
{
    (void)state;
    char *s = render_ps(INSTANCES, true);
    /* Every record, /j/x first; a finished job without ports or reason. */
    const char *first = strchr(s, '\n') + 1;
    assert_true(strncmp(first, "j_x.00000000000e     /j/x     1 ", 32) == 0);
    assert_non_null(strstr(first, "   10.0.0.6   "));
    assert_non_null(strstr(s, "   finished   "));
    assert_non_null(strstr(s, "w_web.00000000000d"));
    assert_non_null(strstr(s, "   killed   "));
    size_t lines = 0;
    for (const char *p = s; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, 6);
    free(s);
    /* Empty: the header alone. */
    s = render_ps("[]", false);
    assert_string_equal(
        s, "ID   APP   VERSION   NODE   ADDRESS   STATE   SINCE   RESTARTS   REASON\n");
    free(s);
}

/* A hostile record stays one row per line, missing fields print "-". */
static void test_ps_table_odd_records(void **state)
{
    (void)state;
    char *s = render_ps("[{\"id\": \"a.000000000001\", \"app\": \"/a\","
                        " \"reason\": \"line1\\nline2\\u001b[31m\"}, 7, null]",
                        false);
    assert_string_equal(s, "ID               APP   VERSION   NODE   ADDRESS   STATE   SINCE   "
                           "RESTARTS   REASON\n"
                           "a.000000000001   /a    -         -      -         -       -       -"
                           "          <binary 16 bytes>\n");
    free(s);
}

static void test_instance_address_and_state(void **state)
{
    (void)state;
    struct {
        const char *json, *addr, *state;
    } cases[] = {
        {"{\"host\": \"h\", \"ports\": [1, 2, 3], \"state\": \"running\"}", "h:1,2,3", "running"},
        {"{\"host\": \"h\", \"state\": \"failed\", \"restarts\": 3}", "h", "failed (crash loop)"},
        {"{\"host\": \"h\", \"state\": \"failed\", \"restarts\": 9}", "h", "failed (crash loop)"},
        {"{\"host\": \"h\", \"state\": \"failed\", \"restarts\": 2}", "h", "failed"},
        {"{\"host\": \"h\", \"state\": \"failed\", \"restarts\": \"3\"}", "h", "failed"},
        {"{\"host\": \"h\", \"state\": \"running\", \"restarts\": 5}", "h", "running"},
        {"{\"host\": \"\", \"ports\": [1]}", "-", "-"},
        {"{\"ports\": [1]}", "-", "-"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *j = parse(cases[i].json);
        char *a = cli_instance_address(j), *st = cli_instance_state(j);
        if (strcmp(a, cases[i].addr) || strcmp(st, cases[i].state))
            fail_msg("case %zu: address [%s] state [%s]", i, a, st);
        free(a);
        free(st);
        json_decref(j);
    }
}

static void test_mem_format(void **state)
{
    (void)state;
    struct {
        int64_t mb;
        const char *s;
    } cases[] = {{0, "0 MiB"},    {512, "512 MiB"},    {1023, "1023 MiB"},
                 {1024, "1 GiB"}, {15872, "15.5 GiB"}, {16384, "16 GiB"},
                 {-5, "0 MiB"},   {1536, "1.5 GiB"},   {1048576, "1024 GiB"}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char b[32];
        cli_mem_format(cases[i].mb, b, sizeof(b));
        assert_string_equal(b, cases[i].s);
    }
}

#define NODES                                                                                      \
    "[{\"id\": \"n2\", \"hostname\": \"b\", \"address\": \"10.0.0.6\", \"agent_url\": "            \
    "\"http://10.0.0.6:7401\", \"labels\": {\"zone\": \"b\", \"disk\": \"ssd\"}, \"cpus\": 2.5,"   \
    " \"mem_mb\": 3584, \"ports\": [20000, 32000], \"version\": \"0.1.0\","                        \
    " \"isolates\": [\"process\"], \"registered_at\": \"2026-11-21T10:35:00.000Z\"},"              \
    "{\"id\": \"n1\", \"address\": \"10.0.0.5\", \"labels\": {}, \"cpus\": 8.0,"                   \
    " \"mem_mb\": 16384, \"ports\": [31000, 31999], \"registered_at\": \"2026-11-21T12:34:30Z\"}]"

static void test_nodes_table(void **state)
{
    (void)state;
    json_t *j = parse(NODES);
    char *b = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&b, &n);
    cli_nodes_table(j, NOW_MS, f);
    fclose(f);
    assert_string_equal(b, "ID   ADDRESS    CPUS   MEM       PORTS         LABELS            AGE\n"
                           "n1   10.0.0.5   8      16 GiB    31000-31999   -                 30s "
                           "ago\n"
                           "n2   10.0.0.6   2.5    3.5 GiB   20000-32000   zone=b,disk=ssd   2h "
                           "ago\n");
    free(b);
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

static void test_ps_verb(void **state)
{
    (void)state;
    static const char list[] = "{\"instances\": " INSTANCES "}";
    static const char empty[] = "{\"instances\": []}";
    const fake_route_t routes[] = {
        {"GET", "/v1/instances", 200, NULL, NULL, list, false},
        {"GET", "/v1/instances?app=%2Fw%2Fweb", 200, NULL, NULL, list, false},
        {"GET", "/v1/instances?app=%2Fnope", 200, NULL, NULL, empty, false},
        {"GET", "/v1/instances?app=%2Fidle", 200, NULL, NULL, empty, false},
        {"GET", "/v1/apps/idle", 200, NULL, NULL, "{\"id\": \"/idle\"}", false},
        {"GET", "/v1/apps/nope", 404, NULL, NULL, "{\"error\": \"app /nope not found\"}", false},
    };
    fake_set(routes, sizeof(routes) / sizeof(routes[0]));
    char *out, *err;
    assert_int_equal(fake_run(&out, &err, "ps", NULL), 0);
    assert_string_equal(err, "");
    assert_true(strncmp(out, "ID   ", 5) == 0);
    assert_non_null(strstr(out, "failed (crash loop)"));
    assert_null(strstr(out, "killed"));
    free(out);
    free(err);

    assert_int_equal(fake_run(&out, &err, "ps", "/w/web", "--all", NULL), 0);
    assert_non_null(strstr(out, "killed"));
    free(out);
    free(err);

    /* --json is the answer as received, whatever --all says. */
    assert_int_equal(fake_run(&out, &err, "ps", "--json", NULL), 0);
    assert_string_equal(out, "{\"instances\": " INSTANCES "}\n");
    free(out);
    free(err);

    /* An app without instances is an empty table; a missing app is an error. */
    assert_int_equal(fake_run(&out, &err, "ps", "/idle", NULL), 0);
    assert_string_equal(
        out, "ID   APP   VERSION   NODE   ADDRESS   STATE   SINCE   RESTARTS   REASON\n");
    free(out);
    free(err);
    assert_int_equal(fake_run(&out, &err, "ps", "/nope", NULL), 1);
    assert_string_equal(out, "");
    assert_string_equal(err, "drover: app /nope not found\n");
    free(out);
    free(err);

    char *log = fake_log();
    assert_string_equal(log, "GET /v1/instances\n"
                             "GET /v1/instances?app=%2Fw%2Fweb\n"
                             "GET /v1/instances\n"
                             "GET /v1/instances?app=%2Fidle\n"
                             "GET /v1/apps/idle\n"
                             "GET /v1/instances?app=%2Fnope\n"
                             "GET /v1/apps/nope\n");
    free(log);

    assert_int_equal(fake_run(&out, &err, "ps", "a", "b", NULL), 2);
    assert_non_null(strstr(err, "unexpected argument 'b'\nusage: drover ps [APP]"));
    free(out);
    free(err);
}

static void test_nodes_verb(void **state)
{
    (void)state;
    static const char list[] = "{\"nodes\": " NODES "}";
    const fake_route_t routes[] = {{"GET", "/v1/nodes", 200, NULL, NULL, list, false}};
    fake_set(routes, 1);
    char *out, *err;
    assert_int_equal(fake_run(&out, &err, "nodes", NULL), 0);
    assert_true(strncmp(out, "ID   ADDRESS    CPUS   MEM       PORTS ", 39) == 0);
    assert_non_null(
        strstr(out, "\nn2   10.0.0.6   2.5    3.5 GiB   20000-32000   zone=b,disk=ssd"));
    assert_string_equal(err, "");
    free(out);
    free(err);
    assert_int_equal(fake_run(&out, &err, "nodes", "--json", NULL), 0);
    assert_string_equal(out, "{\"nodes\": " NODES "}\n");
    free(out);
    free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ps_table),
        cmocka_unit_test(test_ps_table_all),
        cmocka_unit_test(test_ps_table_odd_records),
        cmocka_unit_test(test_instance_address_and_state),
        cmocka_unit_test(test_mem_format),
        cmocka_unit_test(test_nodes_table),
        cmocka_unit_test_setup_teardown(test_ps_verb, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nodes_verb, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
