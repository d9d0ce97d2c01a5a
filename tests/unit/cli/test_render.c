/* cli rendering of API answers: the formats docs/cli.md promises. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cli/cli.h"
#include "core/alloc.h"
#include "spec/spec.h"
#include "agent/artifact.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli/link_stubs.h"

/* push.c packs with the agent module's artifact_pack; the cli unit tests
 * do not link src/agent. */

/* 2026-11-21T12:35:00Z */
#define NOW_MS (1795262400000LL + 35 * 60 * 1000)

typedef struct cap {
    char *buf;
    size_t len;
    FILE *f;
} cap_t;

static void cap_open(cap_t *c)
{
    c->buf = NULL;
    c->len = 0;
    c->f = open_memstream(&c->buf, &c->len);
}

static char *cap_close(cap_t *c)
{
    fclose(c->f);
    return c->buf;
}

static json_t *parse(const char *s)
{
    json_error_t e;
    json_t *j = json_loads(s, 0, &e);
    if (!j)
        fail_msg("bad test JSON: %s", e.text);
    return j;
}

static void test_apps_table(void **state)
{
    (void)state;
    json_t *j = parse("{\"apps\": ["
                      "{\"id\": \"/production/web\", \"version\": 3,"
                      " \"created_at\": \"2026-11-21T12:00:00.000Z\","
                      " \"updated_at\": \"2026-11-21T12:30:00.000Z\","
                      " \"spec\": {\"instances\": 2, \"kind\": \"service\"}},"
                      "{\"id\": \"/w\", \"version\": 12, \"updated_at\": \"2026-11-19T12:35:00Z\","
                      " \"spec\": {\"instances\": 0, \"kind\": \"worker\"}},"
                      "{\"id\": \"/nokind\", \"version\": 1, \"spec\": {}}]}");
    cap_t c;
    cap_open(&c);
    cli_apps_table(json_object_get(j, "apps"), NOW_MS, c.f);
    char *s = cap_close(&c);
    assert_string_equal(s, "ID                VERSION   INSTANCES   KIND      UPDATED\n"
                           "/production/web   3         2           service   5m ago\n"
                           "/w                12        0           worker    2d ago\n"
                           "/nokind           1         -           service   -\n");
    free(s);
    cap_open(&c);
    json_t *empty = json_array();
    cli_apps_table(empty, NOW_MS, c.f);
    s = cap_close(&c);
    assert_string_equal(s, "ID   VERSION   INSTANCES   KIND   UPDATED\n");
    free(s);
    json_decref(empty);
    json_decref(j);
}

static void test_versions_table(void **state)
{
    (void)state;
    json_t *j = parse("{\"id\": \"/p/w\", \"versions\": ["
                      "{\"version\": 1, \"created_at\": \"2026-11-21T11:35:00Z\"},"
                      "{\"version\": 2, \"created_at\": \"2026-11-21T12:34:30Z\"}]}");
    cap_t c;
    cap_open(&c);
    cli_versions_table(j, NOW_MS, c.f);
    char *s = cap_close(&c);
    assert_string_equal(s, "VERSION   CREATED\n"
                           "1         1h ago\n"
                           "2         30s ago\n");
    free(s);
    json_decref(j);
}

static void test_app_show_full(void **state)
{
    (void)state;
    json_t *j = parse(
        "{\"id\": \"/production/web\", \"version\": 3,"
        " \"created_at\": \"2026-11-21T12:00:00.000Z\", \"updated_at\": "
        "\"2026-11-21T12:30:00.000Z\","
        " \"spec\": {\"id\": \"/production/web\", \"kind\": \"service\", \"instances\": 2,"
        "   \"cpus\": 0.5, \"mem\": 256, \"cmd\": \"python3 -m http.server $PORT\","
        "   \"args\": [\"--bind\", \"0.0.0.0\", \"two words\"],"
        "   \"container\": {\"docker\": {\"image\": \"nginx:1.25\"}},"
        "   \"env\": {\"A\": \"1\", \"B\": \"2\", \"C\": \"3\"},"
        "   \"labels\": {\"team\": \"web\", \"tier\": \"frontend\"},"
        "   \"healthChecks\": [{\"protocol\": \"HTTP\", \"path\": \"/health\", \"portIndex\": 0,"
        "                      \"intervalSeconds\": 10},"
        "                     {\"protocol\": \"COMMAND\", \"command\": {\"value\": \"curl -f x\"},"
        "                      \"intervalSeconds\": 60, \"timeoutSeconds\": 20,"
        "                      \"gracePeriodSeconds\": 300, \"maxConsecutiveFailures\": 3,"
        "                      \"delaySeconds\": 15}],"
        "   \"routes\": [{\"host\": \"web.example.com\", \"path\": \"/\"}]},"
        " \"warnings\": [{\"path\": \"$.dependencies\", \"reason\": \"ignored\"}]}");
    cap_t c;
    cap_open(&c);
    cli_app_show(j, NOW_MS, c.f);
    char *s = cap_close(&c);
    assert_string_equal(s, "id:         /production/web\n"
                           "version:    3\n"
                           "kind:       service\n"
                           "instances:  2\n"
                           "cpus:       0.5\n"
                           "mem:        256 MiB\n"
                           "cmd:        python3 -m http.server $PORT\n"
                           "args:       --bind 0.0.0.0 \"two words\"\n"
                           "image:      nginx:1.25\n"
                           "env:        3 variables\n"
                           "labels:     team=web, tier=frontend\n"
                           "health:\n"
                           "  - HTTP /health port index 0, every 10s\n"
                           "  - COMMAND \"curl -f x\", every 60s, timeout 20s, grace 300s, max "
                           "failures 3\n"
                           "routes:\n"
                           "  - host=web.example.com path=/\n"
                           "created:    2026-11-21T12:00:00.000Z (35m ago)\n"
                           "updated:    2026-11-21T12:30:00.000Z (5m ago)\n"
                           "warnings:\n"
                           "  - $.dependencies: ignored\n");
    free(s);
    json_decref(j);
}

static void test_app_show_minimal(void **state)
{
    (void)state;
    json_t *j = parse("{\"id\": \"/a\", \"version\": 1, \"spec\": {\"env\": {\"X\": \"1\"}},"
                      " \"warnings\": []}");
    cap_t c;
    cap_open(&c);
    cli_app_show(j, NOW_MS, c.f);
    char *s = cap_close(&c);
    assert_string_equal(s, "id:         /a\n"
                           "version:    1\n"
                           "kind:       service\n"
                           "instances:  -\n"
                           "cpus:       -\n"
                           "mem:        -\n"
                           "cmd:        -\n"
                           "env:        1 variable\n"
                           "labels:     none\n"
                           "health:     none\n"
                           "routes:     none\n"
                           "created:    -\n"
                           "updated:    -\n"
                           "warnings:   none\n");
    free(s);
    json_decref(j);
}

/* GET /v1/apps/<id> carries "lastTaskFailure" once an instance failed. */
static void test_app_show_last_failure(void **state)
{
    (void)state;
    json_t *j = parse("{\"id\": \"/a\", \"version\": 2, \"spec\": {},"
                      " \"updated_at\": \"2026-11-21T12:30:00Z\","
                      " \"lastTaskFailure\": {\"instance\": \"a.5f2c9a1b3d4e\", \"version\": 2,"
                      "  \"node\": \"n1\", \"state\": \"failed\","
                      "  \"reason\": \"exited with code 1\\nrestarting\", \"exit_code\": 1,"
                      "  \"signal\": 0, \"at\": \"2026-11-21T12:34:00.000Z\"}}");
    cap_t c;
    cap_open(&c);
    cli_app_show(j, NOW_MS, c.f);
    char *s = cap_close(&c);
    assert_non_null(strstr(s, "updated:    2026-11-21T12:30:00Z (5m ago)\n"
                              "last failure: 2026-11-21T12:34:00.000Z instance a.5f2c9a1b3d4e "
                              "exited with code 1\\nrestarting\n"
                              "warnings:   none\n"));
    free(s);
    json_decref(j);
    /* Without a reason the line ends after the instance. */
    j = parse("{\"id\": \"/a\", \"lastTaskFailure\": {\"instance\": \"a.5f2c9a1b3d4e\","
              " \"reason\": null, \"at\": \"2026-11-21T12:34:00Z\"}}");
    cap_open(&c);
    cli_app_show(j, NOW_MS, c.f);
    s = cap_close(&c);
    assert_non_null(strstr(s, "\nlast failure: 2026-11-21T12:34:00Z instance a.5f2c9a1b3d4e\n"));
    free(s);
    json_decref(j);
}

static void test_deploy_invalid(void **state)
{
    (void)state;
    json_t *j = parse("{\"error\": \"app spec is invalid (2 errors)\", \"errors\": ["
                      "{\"path\": \"$.healtChecks\", \"reason\": \"unknown field (did you mean "
                      "\\\"healthChecks\\\"?)\"},"
                      "{\"path\": \"$.instances\", \"reason\": \"must be an integer >= 0\"}]}");
    cap_t c;
    cap_open(&c);
    cli_deploy_print_invalid(j, c.f);
    char *s = cap_close(&c);
    assert_string_equal(s, "spec invalid (2 errors):\n"
                           "  $.healtChecks: unknown field (did you mean \"healthChecks\"?)\n"
                           "  $.instances: must be an integer >= 0\n");
    free(s);
    json_decref(j);

    j = parse("{\"errors\": [{\"path\": \"$.id\", \"reason\": \"required\"}]}");
    cap_open(&c);
    cli_deploy_print_invalid(j, c.f);
    s = cap_close(&c);
    assert_string_equal(s, "spec invalid (1 error):\n  $.id: required\n");
    free(s);
    json_decref(j);

    j = parse("{\"error\": \"odd\"}");
    cap_open(&c);
    cli_deploy_print_invalid(j, c.f);
    s = cap_close(&c);
    assert_string_equal(s, "spec invalid: odd\n");
    free(s);
    json_decref(j);
}

static void test_deploy_result(void **state)
{
    (void)state;
    json_t *j = parse("{\"id\": \"/production/web\", \"version\": 3, \"changed\": true,"
                      " \"warnings\": [{\"path\": \"$.dependencies\", \"reason\": \"ignored\"}]}");
    cap_t out, err;
    cap_open(&out);
    cap_open(&err);
    cli_deploy_print_result(j, out.f, err.f);
    char *o = cap_close(&out), *e = cap_close(&err);
    assert_string_equal(o, "deployed /production/web version 3\n");
    assert_string_equal(e, "warning: $.dependencies: ignored\n");
    free(o);
    free(e);
    json_decref(j);

    j = parse("{\"id\": \"/x\", \"version\": 3, \"changed\": false, \"warnings\": []}");
    cap_open(&out);
    cap_open(&err);
    cli_deploy_print_result(j, out.f, err.f);
    o = cap_close(&out);
    e = cap_close(&err);
    assert_string_equal(o, "unchanged: /x is at version 3\n");
    assert_string_equal(e, "");
    free(o);
    free(e);
    json_decref(j);
}

static void test_deploy_diff(void **state)
{
    (void)state;
    json_t *j = parse("{\"id\": \"/production/web\", \"changed\": true, \"current_version\": 2,"
                      " \"diff\": [{\"path\": \"$.instances\", \"op\": \"change\", \"old\": 2,"
                      " \"new\": 4},"
                      " {\"path\": \"$.env.DEBUG\", \"op\": \"add\", \"new\": \"1\"},"
                      " {\"path\": \"$.labels\", \"op\": \"remove\", \"old\": {\"a\": \"b\"}}]}");
    cap_t c;
    cap_open(&c);
    cli_deploy_print_diff(j, c.f);
    char *s = cap_close(&c);
    assert_string_equal(s, "diff against /production/web version 2:\n"
                           "~ $.instances: 2 -> 4\n"
                           "+ $.env.DEBUG: \"1\"\n"
                           "- $.labels: {\"a\":\"b\"}\n");
    free(s);
    json_decref(j);

    j = parse("{\"id\": \"/x\", \"changed\": false, \"current_version\": 5, \"diff\": []}");
    cap_open(&c);
    cli_deploy_print_diff(j, c.f);
    s = cap_close(&c);
    assert_string_equal(s, "diff against /x version 5:\nno changes\n");
    free(s);
    json_decref(j);

    j = parse("{\"id\": \"/new\", \"changed\": true, \"current_version\": null,"
              " \"diff\": [{\"path\": \"$.id\", \"op\": \"add\", \"new\": \"/new\"}]}");
    cap_open(&c);
    cli_deploy_print_diff(j, c.f);
    s = cap_close(&c);
    assert_string_equal(s, "new app /new:\n+ $.id: \"/new\"\n");
    free(s);
    json_decref(j);
}

static void test_kv_table(void **state)
{
    (void)state;
    json_t *j = parse(
        "[{\"key\": \"config/web/PORT\", \"value\": \"8080\", \"mod_revision\": 9},"
        " {\"key\": \"config/web/cert\", \"value\": \"-----BEGIN "
        "CERTIFICATE-----\\nMIIBIjANBgkqhkiG9w0\","
        "  \"mod_revision\": 12},"
        " {\"key\": \"config/web/blob\", \"value_base64\": \"AAEC/w==\", \"mod_revision\": 13}]");
    cap_t c;
    cap_open(&c);
    cli_kv_table(j, c.f);
    char *s = cap_close(&c);
    assert_string_equal(s, "KEY               VALUE                                      MOD_REV\n"
                           "config/web/PORT   8080                                       9\n"
                           "config/web/cert   -----BEGIN CERTIFICATE-----\\nMIIBIjAN...   12\n"
                           "config/web/blob   <binary 4 bytes>                           13\n");
    free(s);
    json_decref(j);
}

static void test_status(void **state)
{
    (void)state;
    json_t *j = parse("{\"version\": \"0.1.0\", \"revision\": 42, \"store\": \"sqlite\","
                      " \"uptime_s\": 3725, \"node\": \"n1\"}");
    cap_t c;
    cap_open(&c);
    cli_status_print(j, "http://127.0.0.1:7400", c.f);
    char *s = cap_close(&c);
    assert_string_equal(s, "addr:      http://127.0.0.1:7400\n"
                           "version:   0.1.0\n"
                           "revision:  42\n"
                           "store:     sqlite\n"
                           "uptime:    1h 2m\n"
                           "node:      n1\n");
    free(s);
    json_decref(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_apps_table),
        cmocka_unit_test(test_versions_table),
        cmocka_unit_test(test_app_show_full),
        cmocka_unit_test(test_app_show_minimal),
        cmocka_unit_test(test_app_show_last_failure),
        cmocka_unit_test(test_deploy_invalid),
        cmocka_unit_test(test_deploy_result),
        cmocka_unit_test(test_deploy_diff),
        cmocka_unit_test(test_kv_table),
        cmocka_unit_test(test_status),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
