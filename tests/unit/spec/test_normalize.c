/* Normalization: defaults filled, specs that mean the same normalize to the
 * same document, normalizing twice changes nothing. */
#include "spec_test.h"

#include "core/json.h"

static json_t *normalized(const char *doc)
{
    spec_result_t r = expect_valid(doc);
    json_t *app = json_incref(r.app);
    spec_result_free(&r);
    return app;
}

/* normalize(normalize(x)) == normalize(x), and it stays valid. */
static void assert_idempotent(const json_t *app)
{
    spec_result_t r;
    int rc = spec_validate(app, &r);
    if (rc)
        dump_issues("errors", r.errors);
    assert_int_equal(rc, 0);
    if (!json_equal(r.app, app)) {
        json_t *d = spec_diff(app, r.app);
        dump_issues("second pass changed", d);
        json_decref(d);
        fail();
    }
    spec_result_free(&r);
}

static long long iget(const json_t *o, const char *k)
{
    const json_t *v = json_object_get(o, k);
    if (!json_is_integer(v))
        fail_msg("%s is not an integer", k);
    return json_integer_value(v);
}

static void test_app_defaults(void **state)
{
    json_t *app = normalized("{'id': 'prod/web', 'cmd': 'python3 -m http.server $PORT0'}");
    assert_string_equal(json_string_value(json_object_get(app, "id")), "/prod/web");
    assert_string_equal(json_string_value(json_object_get(app, "kind")), "service");
    assert_int_equal(iget(app, "instances"), 1);
    assert_true(json_number_value(json_object_get(app, "cpus")) == 0.1);
    assert_int_equal(iget(app, "progressDeadlineSeconds"), 600);
    assert_string_equal(json_string_value(json_object_get(app, "placement")), "spread");
    assert_int_equal(iget(app, "mem"), 128);
    assert_int_equal(iget(app, "disk"), 0);
    assert_int_equal(iget(app, "backoffSeconds"), 1);
    assert_true(json_is_real(json_object_get(app, "backoffFactor")));
    assert_true(json_real_value(json_object_get(app, "backoffFactor")) == 1.15);
    assert_int_equal(iget(app, "maxLaunchDelaySeconds"), 300);
    assert_int_equal(iget(app, "taskKillGracePeriodSeconds"), 3);
    assert_true(json_is_false(json_object_get(app, "requirePorts")));
    assert_true(json_is_false(json_object_get(app, "autoRollback")));
    assert_string_equal(json_string_value(json_object_get(app, "isolate")), "process");
    const json_t *up = json_object_get(app, "upgradeStrategy");
    assert_int_equal(iget(up, "minimumHealthCapacity"), 1);
    assert_int_equal(iget(up, "maximumOverCapacity"), 1);
    static const char *const empty_obj[] = {"env", "labels"};
    for (size_t i = 0; i < 2; i++) {
        assert_true(json_is_object(json_object_get(app, empty_obj[i])));
        assert_int_equal(json_object_size(json_object_get(app, empty_obj[i])), 0);
    }
    static const char *const empty_arr[] = {"healthChecks", "constraints", "fetch", "routes"};
    for (size_t i = 0; i < 4; i++) {
        assert_true(json_is_array(json_object_get(app, empty_arr[i])));
        assert_int_equal(json_array_size(json_object_get(app, empty_arr[i])), 0);
    }
    /* a service gets one scheduler-picked port, as in Marathon */
    json_t *want = jq("[{'port': 0, 'protocol': 'tcp'}]");
    assert_true(json_equal(json_object_get(app, "portDefinitions"), want));
    json_decref(want);
    assert_null(json_object_get(app, "pool"));
    assert_null(json_object_get(app, "container"));
    assert_idempotent(app);
    json_decref(app);
}

static void test_health_check_defaults(void **state)
{
    json_t *app = normalized("{'id': '/a', 'cmd': 'x', 'healthChecks': [{}, {'protocol': 'TCP'},"
                             " {'protocol': 'COMMAND', 'command': {'value': 'true'}},"
                             " {'protocol': 'HTTPS', 'port': 8443, 'gracePeriodSeconds': 5}]}");
    const json_t *hcs = json_object_get(app, "healthChecks");
    json_t *want =
        jq("[{'protocol': 'HTTP', 'path': '/', 'portIndex': 0, 'gracePeriodSeconds': 300,"
           "  'intervalSeconds': 60, 'timeoutSeconds': 20, 'maxConsecutiveFailures': 3,"
           "  'delaySeconds': 15, 'ignoreHttp1xx': false},"
           " {'protocol': 'TCP', 'portIndex': 0, 'gracePeriodSeconds': 300,"
           "  'intervalSeconds': 60, 'timeoutSeconds': 20, 'maxConsecutiveFailures': 3,"
           "  'delaySeconds': 15},"
           " {'protocol': 'COMMAND', 'command': {'value': 'true'}, 'gracePeriodSeconds': 300,"
           "  'intervalSeconds': 60, 'timeoutSeconds': 20, 'maxConsecutiveFailures': 3,"
           "  'delaySeconds': 15},"
           " {'protocol': 'HTTPS', 'port': 8443, 'path': '/', 'gracePeriodSeconds': 5,"
           "  'intervalSeconds': 60, 'timeoutSeconds': 20, 'maxConsecutiveFailures': 3,"
           "  'delaySeconds': 15, 'ignoreHttp1xx': false}]");
    if (!json_equal(hcs, want)) {
        json_t *d = spec_diff(want, hcs);
        dump_issues("diff", d);
        json_decref(d);
        fail();
    }
    json_decref(want);
    assert_idempotent(app);
    json_decref(app);
}

/* The short spec and the one spelling every default out are one spec. */
static void test_defaults_only_difference_normalizes_equal(void **state)
{
    json_t *a = normalized("{'id': 'web/api', 'cmd': 'serve', 'healthChecks': [{'path': '/h'}],"
                           " 'routes': [{'host': 'API.example.com'}]}");
    json_t *b = normalized(
        "{'id': '/web/api', 'cmd': 'serve', 'kind': 'service', 'instances': 1, 'cpus': 0.1,"
        " 'mem': 128, 'disk': 0, 'env': {}, 'labels': {}, 'backoffSeconds': 1,"
        " 'backoffFactor': 1.15, 'maxLaunchDelaySeconds': 300, 'taskKillGracePeriodSeconds': 3,"
        " 'upgradeStrategy': {'minimumHealthCapacity': 1, 'maximumOverCapacity': 1},"
        " 'requirePorts': false, 'constraints': [], 'fetch': [], 'autoRollback': false,"
        " 'progressDeadlineSeconds': 600, 'placement': 'spread',"
        " 'isolate': 'process', 'portDefinitions': [{'port': 0}], 'args': null,"
        " 'version': '2016-01-28T07:57:35.433Z', 'gpus': 0, 'dependencies': [],"
        " 'healthChecks': [{'protocol': 'HTTP', 'path': '/h', 'portIndex': 0,"
        "   'gracePeriodSeconds': 300, 'intervalSeconds': 60, 'timeoutSeconds': 20,"
        "   'maxConsecutiveFailures': 3, 'delaySeconds': 15, 'ignoreHttp1xx': false}],"
        " 'routes': [{'host': 'api.example.com', 'path': '/', 'tcp': false, 'portIndex': 0}]}");
    if (!json_equal(a, b)) {
        json_t *d = spec_diff(a, b);
        dump_issues("diff", d);
        json_decref(d);
        fail();
    }
    size_t la, lb;
    char *ca = json_canonical(a, &la), *cb = json_canonical(b, &lb);
    assert_string_equal(ca, cb);
    free(ca);
    free(cb);
    json_decref(a);
    json_decref(b);

    /* the same for a worker and its pool */
    a = normalized("{'id': '/w', 'args': ['w'], 'kind': 'worker', 'routes': [{'path': '/echo'}]}");
    b = normalized("{'id': '/w', 'args': ['w'], 'kind': 'worker', 'portDefinitions': [],"
                   " 'routes': [{'path': '/echo', 'tcp': false, 'event': 'http'}],"
                   " 'pool': {'pool-limit': 10, 'queue-limit': 100, 'concurrency': 10,"
                   "   'grow-threshold': 5, 'idle-timeout': 600, 'spawn-timeout': 1,"
                   "   'handshake-timeout': 5, 'heartbeat-timeout': 30, 'terminate-timeout': 10,"
                   "   'request-timeout': 86400, 'crashlog-limit': 50, 'spare': true}}");
    assert_true(json_equal(a, b));
    json_decref(a);
    json_decref(b);

    /* and a real difference stays one */
    a = normalized("{'id': '/a', 'cmd': 'x'}");
    b = normalized("{'id': '/a', 'cmd': 'x', 'instances': 2}");
    assert_false(json_equal(a, b));
    json_decref(a);
    json_decref(b);
}

static void test_numbers_keep_their_kind(void **state)
{
    json_t *app = normalized("{'id': '/a', 'cmd': 'x', 'mem': 64.0, 'cpus': 0.05, 'disk': 10,"
                             " 'instances': 3.0, 'upgradeStrategy': {'minimumHealthCapacity': 0}}");
    assert_true(json_is_real(json_object_get(app, "mem")));
    assert_true(json_real_value(json_object_get(app, "mem")) == 64.0);
    assert_true(json_is_real(json_object_get(app, "cpus")));
    assert_true(json_is_integer(json_object_get(app, "disk")));
    /* integer fields: an integral real becomes an integer */
    assert_int_equal(iget(app, "instances"), 3);
    assert_int_equal(iget(json_object_get(app, "upgradeStrategy"), "minimumHealthCapacity"), 0);
    assert_idempotent(app);
    json_decref(app);
}

static void test_worker_pool_defaults(void **state)
{
    json_t *app = normalized("{'id': '/w', 'cmd': 'w', 'kind': 'worker'}");
    json_t *want =
        jq("{'pool-limit': 10, 'queue-limit': 100, 'concurrency': 10, 'grow-threshold': 5,"
           " 'idle-timeout': 600, 'spawn-timeout': 1, 'handshake-timeout': 5,"
           " 'heartbeat-timeout': 30, 'terminate-timeout': 10, 'request-timeout': 86400,"
           " 'crashlog-limit': 50, 'spare': true}");
    assert_true(json_equal(json_object_get(app, "pool"), want));
    json_decref(want);
    /* workers listen on no port unless told */
    assert_int_equal(json_array_size(json_object_get(app, "portDefinitions")), 0);
    assert_idempotent(app);
    json_decref(app);

    /* grow-threshold follows Cocaine: max(1, queue-limit / pool-limit / 2) */
    app = normalized("{'id': '/w', 'cmd': 'w', 'kind': 'worker',"
                     " 'pool': {'pool-limit': 4, 'queue-limit': 10, 'idle-timeout': 0.5}}");
    const json_t *pool = json_object_get(app, "pool");
    assert_int_equal(iget(pool, "grow-threshold"), 1);
    assert_true(json_is_real(json_object_get(pool, "idle-timeout")));
    json_decref(app);
    app = normalized("{'id': '/w', 'cmd': 'w', 'kind': 'worker',"
                     " 'pool': {'pool-limit': 10, 'queue-limit': 1000}}");
    assert_int_equal(iget(json_object_get(app, "pool"), "grow-threshold"), 50);
    json_decref(app);
    app = normalized("{'id': '/w', 'cmd': 'w', 'kind': 'worker', 'pool': {'grow-threshold': 7}}");
    assert_int_equal(iget(json_object_get(app, "pool"), "grow-threshold"), 7);
    json_decref(app);
}

static void test_marathon_legacy_forms(void **state)
{
    /* ports -> portDefinitions, uris -> fetch, output fields dropped */
    json_t *app =
        normalized("{'id': '/a', 'cmd': 'x', 'ports': [8080, 0], 'uris': ['http://a/b.tgz'],"
                   " 'version': 'v1', 'versionInfo': {}, 'container': null}");
    assert_null(json_object_get(app, "ports"));
    assert_null(json_object_get(app, "uris"));
    assert_null(json_object_get(app, "version"));
    assert_null(json_object_get(app, "versionInfo"));
    assert_null(json_object_get(app, "container"));
    json_t *want = jq("[{'port': 8080, 'protocol': 'tcp'}, {'port': 0, 'protocol': 'tcp'}]");
    assert_true(json_equal(json_object_get(app, "portDefinitions"), want));
    json_decref(want);
    want = jq("[{'uri': 'http://a/b.tgz', 'extract': true, 'executable': false, 'cache': false}]");
    assert_true(json_equal(json_object_get(app, "fetch"), want));
    json_decref(want);
    assert_idempotent(app);
    json_decref(app);

    /* Marathon 1.4 prints both ports and portDefinitions */
    app = normalized("{'id': '/a', 'cmd': 'x', 'ports': [10000],"
                     " 'portDefinitions': [{'port': 10000, 'protocol': 'udp', 'name': 'dns'}]}");
    want = jq("[{'port': 10000, 'protocol': 'udp', 'name': 'dns'}]");
    assert_true(json_equal(json_object_get(app, "portDefinitions"), want));
    json_decref(want);
    json_decref(app);
}

static void test_ignored_fields(void **state)
{
    json_t *app = normalized("{'id': '/a', 'cmd': 'x', 'gpus': 0, 'executor': '',"
                             " 'dependencies': ['/db'], 'container': {'type': 'MESOS',"
                             " 'volumes': [], 'docker': {'image': 'x', 'privileged': false}}}");
    assert_null(json_object_get(app, "gpus"));
    assert_null(json_object_get(app, "executor"));
    json_t *want = jq("['/db']");
    assert_true(json_equal(json_object_get(app, "dependencies"), want));
    json_decref(want);
    const json_t *ct = json_object_get(app, "container");
    assert_null(json_object_get(ct, "volumes"));
    assert_null(json_object_get(json_object_get(ct, "docker"), "privileged"));
    /* a Mesos container running an image goes to the OCI isolate */
    assert_string_equal(json_string_value(json_object_get(app, "isolate")), "oci");
    assert_idempotent(app);
    json_decref(app);
}

static void test_container_and_routes(void **state)
{
    json_t *app = normalized(
        "{'id': '/a', 'container': {'type': 'docker', 'docker': {'image': 'nginx', 'network': "
        "'bridge',"
        " 'portMappings': [{'containerPort': 80}, {'containerPort': 53, 'protocol': 'udp'}]}},"
        " 'routes': [{'host': 'WWW.Example.COM'}, {'internal': 10053, 'tcp': true, 'portIndex': "
        "1}]}");
    const json_t *ct = json_object_get(app, "container");
    assert_string_equal(json_string_value(json_object_get(ct, "type")), "DOCKER");
    json_t *want = jq("{'image': 'nginx', 'network': 'BRIDGE', 'forcePullImage': false,"
                      " 'portMappings': [{'containerPort': 80, 'hostPort': 0, 'servicePort': 0,"
                      " 'protocol': 'tcp'}, {'containerPort': 53, 'hostPort': 0, 'servicePort': 0,"
                      " 'protocol': 'udp'}]}");
    assert_true(json_equal(json_object_get(ct, "docker"), want));
    json_decref(want);
    want = jq("[{'host': 'www.example.com', 'path': '/', 'tcp': false, 'portIndex': 0},"
              " {'internal': 10053, 'tcp': true, 'portIndex': 1}]");
    assert_true(json_equal(json_object_get(app, "routes"), want));
    json_decref(want);
    assert_int_equal(json_array_size(json_object_get(app, "portDefinitions")), 0);
    assert_string_equal(json_string_value(json_object_get(app, "isolate")), "docker");
    assert_idempotent(app);
    json_decref(app);

    /* docker without mappings: host networking, Marathon's default */
    app = normalized("{'id': '/a', 'container': {'docker': {'image': 'nginx'}}}");
    assert_string_equal(
        json_string_value(json_object_get(
            json_object_get(json_object_get(app, "container"), "docker"), "network")),
        "HOST");
    assert_int_equal(json_array_size(json_object_get(app, "portDefinitions")), 1);
    assert_idempotent(app);
    json_decref(app);
}

static void test_seed_normalized(void **state)
{
    size_t len;
    char *text = read_repo_file("examples/specs/test-server.json", &len);
    json_t *in = json_parse(text, len, NULL);
    spec_result_t r;
    assert_int_equal(spec_validate(in, &r), 0);
    const json_t *dk = json_object_get(json_object_get(r.app, "container"), "docker");
    assert_string_equal(json_string_value(json_object_get(dk, "network")), "BRIDGE");
    const json_t *hc = json_array_get(json_object_get(r.app, "healthChecks"), 0);
    assert_string_equal(json_string_value(json_object_get(hc, "path")), "/healthcheck");
    assert_int_equal(iget(hc, "gracePeriodSeconds"), 2);
    assert_int_equal(iget(hc, "timeoutSeconds"), 20);
    assert_int_equal(iget(hc, "portIndex"), 0);
    assert_int_equal(iget(r.app, "instances"), 4);
    assert_true(json_is_real(json_object_get(r.app, "mem")));
    assert_true(json_real_value(json_object_get(json_object_get(r.app, "upgradeStrategy"),
                                                "minimumHealthCapacity")) == 0.5);
    assert_idempotent(r.app);
    spec_result_free(&r);
    json_decref(in);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_app_defaults),
        cmocka_unit_test(test_health_check_defaults),
        cmocka_unit_test(test_defaults_only_difference_normalizes_equal),
        cmocka_unit_test(test_numbers_keep_their_kind),
        cmocka_unit_test(test_worker_pool_defaults),
        cmocka_unit_test(test_marathon_legacy_forms),
        cmocka_unit_test(test_ignored_fields),
        cmocka_unit_test(test_container_and_routes),
        cmocka_unit_test(test_seed_normalized),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
