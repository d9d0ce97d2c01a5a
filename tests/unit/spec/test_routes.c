/* spec_routes: the routes a gateway serves, including the ones Marathon-era
 * specs declare through SERVICE_TAGS and marathon-lb labels. */
#include "spec_test.h"

#include "core/json.h"

static char *routes_of(const char *spec_json)
{
    json_t *spec = jq(spec_json);
    json_t *r = spec_routes(spec);
    char *text = json_dumps(r, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(r);
    json_decref(spec);
    return text;
}

static void expect(const char *spec_json, const char *want_json)
{
    char *got = routes_of(spec_json);
    json_t *want = jq(want_json);
    char *w = json_dumps(want, JSON_COMPACT | JSON_SORT_KEYS);
    if (strcmp(got, w) != 0)
        fail_msg("routes\n got  %s\n want %s", got, w);
    free(got);
    free(w);
    json_decref(want);
}

static void test_own_routes_copied(void **state)
{
    (void)state;
    expect(
        "{'id': '/prod/web', 'routes': [{'host': 'web.example.com', 'path': '/', 'portIndex': 0}]}",
        "[{'host': 'web.example.com', 'path': '/', 'portIndex': 0}]");
    expect("{'id': '/prod/web'}", "[]");
}

/* The field report's test-server: production on 3000, staging on 13000. */
static void test_service_tags(void **state)
{
    (void)state;
    expect("{'id': '/app/production/test-server', 'env': {'SERVICE_TAGS': "
           "'production,internal-listen-http-3000'}}",
           "[{'internal': 3000, 'tcp': false, 'path': '/', 'portIndex': 0}]");
    expect("{'id': '/app/staging/test-server', 'env': {'SERVICE_TAGS': "
           "'staging,internal-listen-http-3000'}}",
           "[{'internal': 13000, 'tcp': false, 'path': '/', 'portIndex': 0}]");
    expect(
        "{'id': '/db', 'labels': {'SERVICE_TAGS': 'internal-listen-tcp-5432, balance-leastconn, "
        "internal-listen-http-3010'}}",
        "[{'internal': 5432, 'tcp': true, 'portIndex': 0, 'balance': 'leastconn'},"
        " {'internal': 3010, 'tcp': false, 'path': '/', 'portIndex': 0, 'balance': 'leastconn'}]");
    /* an explicit route keeps its port; junk tags are ignored */
    expect("{'id': '/web', 'routes': [{'internal': 3000, 'path': '/'}], 'env': {'SERVICE_TAGS': "
           "'internal-listen-http-3000,internal-listen-http-x,internal-listen-http-70000'}}",
           "[{'internal': 3000, 'path': '/'}]");
    /* staging ports that do not fit are dropped */
    expect("{'id': '/web', 'labels': {'environment': 'staging'}, 'env': {'SERVICE_TAGS': "
           "'internal-listen-http-8080,internal-listen-http-10080'}}",
           "[{'internal': 18080, 'tcp': false, 'path': '/', 'portIndex': 0}]");
}

static void test_marathon_lb_labels(void **state)
{
    (void)state;
    expect("{'id': '/web', 'labels': {'HAPROXY_0_VHOST': 'Web.Example.com, www.example.com',"
           " 'HAPROXY_1_VHOST': 'admin.example.com', 'HAPROXY_1_PATH': '/admin'}}",
           "[{'host': 'web.example.com', 'path': '/', 'portIndex': 0, 'tcp': false},"
           " {'host': 'www.example.com', 'path': '/', 'portIndex': 0, 'tcp': false},"
           " {'host': 'admin.example.com', 'path': '/admin', 'portIndex': 1, 'tcp': false}]");
}

/* Per-route response headers (the field report's HSTS, X-Frame-Options,
 * X-Content-Type-Options): accepted as given, bad ones named by path. */
static void test_route_headers(void **state)
{
    (void)state;
    spec_result_t r = expect_valid_at(
        "{'id': '/web', 'cmd': 'x', 'routes': [{'host': 'w.example.com', 'headers': "
        "{'Strict-Transport-Security': 'max-age=31536000; preload', 'X-Frame-Options': 'DENY'}}]}",
        __FILE__, __LINE__);
    json_t *h = json_object_get(json_array_get(json_object_get(r.app, "routes"), 0), "headers");
    assert_string_equal(json_string_value(json_object_get(h, "X-Frame-Options")), "DENY");
    spec_result_free(&r);
    expect_error(
        "{'id': '/web', 'cmd': 'x', 'routes': [{'host': 'w.x', 'headers': {'Bad Name': 'v'}}]}",
        "$.routes[0].headers[\"Bad Name\"]", "not a header name");
    expect_error(
        "{'id': '/web', 'cmd': 'x', 'routes': [{'host': 'w.x', 'headers': {'X-A': 'a\\r\\nb'}}]}",
        "$.routes[0].headers.X-A", "printable");
    expect_error("{'id': '/web', 'cmd': 'x', 'routes': [{'host': 'w.x', 'headers': "
                 "{'Content-Length': '1'}}]}",
                 "$.routes[0].headers.Content-Length", "frames the message");
    expect_error("{'id': '/web', 'cmd': 'x', 'routes': [{'host': 'w.x', 'headers': {'X-A': 1}}]}",
                 "$.routes[0].headers.X-A", "must be a string");
    expect_error("{'id': '/db', 'cmd': 'x', 'routes': [{'internal': 5432, 'tcp': true, "
                 "'headers': {'X-A': 'b'}}]}",
                 "$.routes[0].headers", "not valid for a TCP route");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_own_routes_copied),
        cmocka_unit_test(test_service_tags),
        cmocka_unit_test(test_marathon_lb_labels),
        cmocka_unit_test(test_route_headers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
