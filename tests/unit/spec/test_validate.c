/* spec_validate: errors (with exact paths), warnings, and that the seed
 * Marathon service definition passes untouched. */
#include "spec_test.h"

#include "core/json.h"

#define APP "'id': '/a/b', 'cmd': 'run'"

static void test_seed_spec_is_valid(void **state)
{
    size_t len;
    char *text = read_repo_file("examples/specs/test-server.json", &len);
    err_t err = {0};
    json_t *in = json_parse(text, len, &err);
    assert_non_null(in);
    spec_result_t r;
    int rc = spec_validate(in, &r);
    if (rc)
        dump_issues("errors", r.errors);
    assert_int_equal(rc, 0);
    assert_int_equal(json_array_size(r.errors), 0);
    assert_int_equal(json_array_size(r.warnings), 0);
    assert_string_equal(json_string_value(json_object_get(r.app, "id")),
                        "/app/production/test-server");
    spec_result_free(&r);
    json_decref(in);
    free(text);
}

static void test_examples_are_valid(void **state)
{
    size_t len;
    char *text = read_repo_file("examples/specs/echo-worker.json", &len);
    json_t *in = json_parse(text, len, NULL);
    assert_non_null(in);
    spec_result_t r;
    int rc = spec_validate(in, &r);
    if (rc)
        dump_issues("errors", r.errors);
    assert_int_equal(rc, 0);
    assert_int_equal(json_array_size(r.warnings), 0);
    assert_string_equal(json_string_value(json_object_get(r.app, "kind")), "worker");
    spec_result_free(&r);
    json_decref(in);
    free(text);
}

static void test_misspelt_field_suggests(void **state)
{
    json_t *in = jq("{" APP ", 'healtChecks': []}");
    spec_result_t r;
    assert_int_equal(spec_validate(in, &r), -EINVAL);
    assert_int_equal(json_array_size(r.errors), 1);
    json_t *e = json_array_get(r.errors, 0);
    assert_string_equal(json_string_value(json_object_get(e, "path")), "$.healtChecks");
    assert_string_equal(json_string_value(json_object_get(e, "reason")),
                        "unknown field (did you mean \"healthChecks\"?)");
    spec_result_free(&r);
    json_decref(in);

    /* nested, transposed, case, and too far for a suggestion */
    expect_error("{" APP ", 'container': {'docker': {'imgae': 'x'}}}", "$.container.docker.imgae",
                 "did you mean \"image\"?");
    expect_error("{" APP ", 'container': {'docker': {'imgae': 'x'}}}", "$.container.docker.image",
                 "is required");
    expect_error("{" APP ", 'helathChecks': []}", "$.helathChecks",
                 "did you mean \"healthChecks\"?");
    expect_error("{" APP ", 'Instances': 2}", "$.Instances", "did you mean \"instances\"?");
    expect_error("{" APP ", 'kind': 'worker', 'pool': {'pool_limit': 2}}", "$.pool.pool_limit",
                 "did you mean \"pool-limit\"?");
    expect_error("{" APP ", 'gpu': 1}", "$.gpu", "did you mean \"gpus\"?");
    in = jq("{" APP ", 'frobnicate': 1}");
    assert_int_equal(spec_validate(in, &r), -EINVAL);
    assert_string_equal(json_string_value(json_object_get(json_array_get(r.errors, 0), "reason")),
                        "unknown field");
    spec_result_free(&r);
    json_decref(in);
    /* keys that are not identifiers are quoted in the path */
    expect_error("{" APP ", 'a b': 1}", "$[\"a b\"]", "unknown field");
}

/* One document, many mistakes: every one reported, each at its path. */
static void test_every_error_reported(void **state)
{
    json_t *in =
        jq("{'id': '/Bad/app', 'cmd': 'x', 'args': ['y'], 'instances': 1.5, 'cpus': 0,"
           " 'mem': -1, 'labels': {'a': 1}, 'env': {'X': 2},"
           " 'healthChecks': [{'protocol': 'HTTP', 'portIndex': 3}, {'protocol': 'TCPX'}],"
           " 'upgradeStrategy': {'minimumHealthCapacity': 2},"
           " 'container': {'docker': {'image': 'i', 'portMappings': [{'containerPort': 70000}]}},"
           " 'constraints': [['hostname', 'UNIQE']], 'healtChecks': 1}");
    spec_result_t r;
    assert_int_equal(spec_validate(in, &r), -EINVAL);
    static const char *const paths[] = {
        "$.id",
        "$.args",
        "$.instances",
        "$.cpus",
        "$.mem",
        "$.labels.a",
        "$.env.X",
        "$.healthChecks[0].portIndex",
        "$.healthChecks[1].protocol",
        "$.upgradeStrategy.minimumHealthCapacity",
        "$.container.docker.portMappings[0].containerPort",
        "$.constraints[0][1]",
        "$.healtChecks",
    };
    size_t n = sizeof(paths) / sizeof(paths[0]);
    for (size_t i = 0; i < n; i++) {
        if (find_issue(r.errors, paths[i], NULL) < 0) {
            dump_issues("errors", r.errors);
            fail_msg("no error at %s", paths[i]);
        }
    }
    if (json_array_size(r.errors) != n)
        dump_issues("errors", r.errors);
    assert_int_equal(json_array_size(r.errors), n);
    assert_true(find_issue(r.errors, "$.instances", "must be an integer") >= 0);
    assert_true(find_issue(r.errors, "$.cpus", "must be > 0") >= 0);
    assert_true(
        find_issue(r.errors, "$.healthChecks[0].portIndex", "is 3 but the app has 1 port") >= 0);
    assert_true(find_issue(r.errors, "$.constraints[0][1]", "did you mean \"UNIQUE\"?") >= 0);
    assert_true(find_issue(r.errors, "$.id", "segment \"Bad\"") >= 0);
    assert_null(r.app);
    spec_result_free(&r);
    json_decref(in);
}

static void test_id_rules(void **state)
{
    expect_error("{'cmd': 'x'}", "$.id", "is required");
    expect_error("{'id': null, 'cmd': 'x'}", "$.id", "is required");
    expect_error("{'id': 5, 'cmd': 'x'}", "$.id", "must be a string");
    expect_error("{'id': '/a//b', 'cmd': 'x'}", "$.id", "empty segment");
    expect_error("{'id': '/a/b/', 'cmd': 'x'}", "$.id", "empty segment");
    expect_error("{'id': '/a/../b', 'cmd': 'x'}", "$.id", "segment \"..\" is not allowed");
    expect_error("{'id': '/a/./b', 'cmd': 'x'}", "$.id", "segment \".\" is not allowed");
    expect_error("{'id': '/a/-b', 'cmd': 'x'}", "$.id", "segment \"-b\" is invalid");
    expect_error("{'id': '/a/b-', 'cmd': 'x'}", "$.id", "segment \"b-\" is invalid");
    expect_error("{'id': '/a/b_c', 'cmd': 'x'}", "$.id", "lowercase letters, digits");
    expect_error("{'id': '', 'cmd': 'x'}", "$.id", "empty");
    expect_error("{'id': '/', 'cmd': 'x'}", "$.id", "no name");

    char *out = NULL;
    err_t err = {0};
    assert_int_equal(spec_id_normalize("prod/web", &out, &err), 0);
    assert_string_equal(out, "/prod/web");
    free(out);
    assert_int_equal(spec_id_normalize("/a.b-c/d9/x", &out, &err), 0);
    assert_string_equal(out, "/a.b-c/d9/x");
    free(out);
    assert_int_equal(spec_id_normalize("/a/B", &out, &err), -EINVAL);
    assert_null(out);
    assert_non_null(strstr(err.msg, "segment \"B\""));
    char longid[300];
    memset(longid, 'a', sizeof(longid));
    longid[0] = '/';
    longid[256] = '\0'; /* 256 characters */
    assert_int_equal(spec_id_normalize(longid, &out, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "at most 255"));
    longid[255] = '\0'; /* 255 is fine */
    assert_int_equal(spec_id_normalize(longid, &out, &err), 0);
    free(out);
    /* relative: the '/' added counts */
    assert_int_equal(spec_id_normalize(longid + 1, &out, &err), 0);
    free(out);
    longid[255] = 'a';
    assert_int_equal(spec_id_normalize(longid + 1, &out, &err), -EINVAL);
}

static void test_types_and_ranges(void **state)
{
    expect_error("{'id': '/a', 'cmd': 5}", "$.cmd", "must be a string");
    expect_error("{'id': '/a', 'cmd': ''}", "$.cmd", "must not be empty");
    expect_error("{'id': '/a', 'args': 'run'}", "$.args", "array of strings");
    expect_error("{'id': '/a', 'args': ['run', 1]}", "$.args[1]", "must be a string");
    expect_error("{" APP ", 'instances': -1}", "$.instances", ">= 0");
    expect_error("{" APP ", 'instances': '3'}", "$.instances", "must be an integer");
    expect_error("{" APP ", 'cpus': -0.5}", "$.cpus", "> 0");
    expect_error("{" APP ", 'cpus': 'lots'}", "$.cpus", "must be a number");
    expect_error("{" APP ", 'mem': -1}", "$.mem", ">= 0");
    expect_error("{" APP ", 'disk': -1}", "$.disk", ">= 0");
    expect_error("{" APP ", 'requirePorts': 'yes'}", "$.requirePorts", "true or false");
    expect_error("{" APP ", 'backoffFactor': 0.5}", "$.backoffFactor", ">= 1");
    expect_error("{" APP ", 'backoffSeconds': -1}", "$.backoffSeconds", ">= 0");
    expect_error("{" APP ", 'maxLaunchDelaySeconds': 1.5}", "$.maxLaunchDelaySeconds", "integer");
    expect_error("{" APP ", 'taskKillGracePeriodSeconds': -3}", "$.taskKillGracePeriodSeconds",
                 ">= 0");
    expect_error("{" APP ", 'upgradeStrategy': {'maximumOverCapacity': -0.1}}",
                 "$.upgradeStrategy.maximumOverCapacity", "between 0 and 1");
    expect_error("{" APP ", 'upgradeStrategy': 1}", "$.upgradeStrategy", "must be an object");
    expect_error("{" APP ", 'labels': {'a': 'b', 'c': true}}", "$.labels.c", "must be a string");
    expect_error("{" APP ", 'labels': []}", "$.labels", "object of string values");
    expect_error("{" APP ", 'env': {'A=B': 'x'}}", "$.env[\"A=B\"]", "no '='");
    expect_error("{" APP ", 'env': {'A': {'secret': 1}}}", "$.env.A", "must be a string");
    expect_error("{" APP ", 'ports': [80, 65536]}", "$.ports[1]", "between 0 and 65535");
    /* huge numbers reach the cross-field rules unconverted (no UB) */
    expect_error("{" APP ", 'ports': [1e300, 1e300], 'routes': [{'internal': 1e300},"
                 " {'internal': 1e300}], 'healthChecks': [{'portIndex': -1e300}]}",
                 "$.ports[0]", "between 0 and 65535");
    expect_error("{" APP ", 'portDefinitions': [{'port': -1}]}", "$.portDefinitions[0].port",
                 "between 0 and 65535");
    expect_error("{" APP ", 'portDefinitions': [{'port': 80, 'protocol': 'sctp'}]}",
                 "$.portDefinitions[0].protocol", "not one of \"tcp\", \"udp\" or \"tcp,udp\"");
    expect_error("{" APP ", 'portDefinitions': {}}", "$.portDefinitions", "array of objects");
    expect_error("{" APP ", 'portDefinitions': [80]}", "$.portDefinitions[0]", "must be an object");
    expect_error("{" APP ", 'fetch': [{'extract': true}]}", "$.fetch[0].uri", "is required");
    expect_error("{" APP ", 'fetch': [{'uri': 'http://x/a.tgz', 'cache': 'no'}]}",
                 "$.fetch[0].cache", "true or false");
    expect_error("{" APP ", 'kind': 'job'}", "$.kind", "not one of \"service\" or \"worker\"");
    expect_error("{" APP ", 'isolate': 'vm'}", "$.isolate", "not one of");
    expect_error("{" APP ", 'autoRollback': 1}", "$.autoRollback", "true or false");
    expect_error("[1, 2]", "$", "must be a JSON object");

    /* an integral real is an integer; null means unset */
    spec_result_t r = expect_valid("{" APP ", 'instances': 4.0, 'args': null, 'container': null}");
    assert_true(json_is_integer(json_object_get(r.app, "instances")));
    assert_int_equal(json_integer_value(json_object_get(r.app, "instances")), 4);
    spec_result_free(&r);
}

static void test_cmd_args_and_something_to_run(void **state)
{
    expect_error("{'id': '/a', 'cmd': 'x', 'args': ['y']}", "$.args", "mutually exclusive");
    expect_error("{'id': '/a'}", "$", "nothing to run");
    expect_error("{'id': '/a', 'args': []}", "$", "nothing to run");
    spec_result_t r = expect_valid("{'id': '/a', 'container': {'docker': {'image': 'nginx'}}}");
    spec_result_free(&r);
    r = expect_valid("{'id': '/a', 'artifact': 'sha256:"
                     "0123456789abcdef0123456789abcdef"
                     "0123456789abcdef0123456789abcdef"
                     "'}");
    spec_result_free(&r);
    r = expect_valid("{'id': '/a', 'artifact': 'https://builds.local/a.tar.gz', 'args': ['./a']}");
    spec_result_free(&r);
    /* empty args beside cmd is what Marathon prints: fine, and dropped */
    r = expect_valid("{'id': '/a', 'cmd': 'x', 'args': []}");
    assert_null(json_object_get(r.app, "args"));
    spec_result_free(&r);
    expect_error("{'id': '/a', 'artifact': 'notaurl'}", "$.artifact", "must be a URL");
    expect_error("{'id': '/a', 'artifact': 'sha256:abc'}", "$.artifact", "sha256:<64 hex digits>");
}

static void test_health_checks(void **state)
{
    /* a service has one port by default: index 0 fine, 1 not */
    spec_result_t r = expect_valid("{" APP ", 'healthChecks': [{'protocol': 'TCP'}]}");
    spec_result_free(&r);
    expect_error("{" APP ", 'healthChecks': [{'portIndex': 1}]}", "$.healthChecks[0].portIndex",
                 "is 1 but the app has 1 port");
    expect_error("{" APP ", 'portDefinitions': [], 'healthChecks': [{'protocol': 'HTTP'}]}",
                 "$.healthChecks[0]", "needs a port, but the app has none");
    expect_error("{" APP ", 'kind': 'worker', 'healthChecks': [{'protocol': 'TCP'}]}",
                 "$.healthChecks[0]", "needs a port");
    expect_error("{" APP ", 'healthChecks': [{'port': 80, 'portIndex': 0}]}",
                 "$.healthChecks[0].port", "either port or portIndex");
    expect_error("{" APP ", 'healthChecks': [{'protocol': 'COMMAND'}]}",
                 "$.healthChecks[0].command", "is required for protocol COMMAND");
    expect_error("{" APP ", 'healthChecks': [{'command': {'value': 'true'}}]}",
                 "$.healthChecks[0].command", "only valid with protocol COMMAND");
    expect_error("{" APP ", 'healthChecks': [{'protocol': 'COMMAND', 'command': {}}]}",
                 "$.healthChecks[0].command.value", "is required");
    expect_error("{" APP ", 'healthChecks': [{'protocol': 'http'}]}", "$.healthChecks[0].protocol",
                 "did you mean \"HTTP\"?");
    expect_error("{" APP ", 'healthChecks': [{'intervalSeconds': 0}]}",
                 "$.healthChecks[0].intervalSeconds", ">= 1");
    expect_error("{" APP ", 'healthChecks': [{'timeoutSeconds': 2.5}]}",
                 "$.healthChecks[0].timeoutSeconds", "integer");
    expect_error("{" APP ", 'healthChecks': [{'path': 'health'}]}", "$.healthChecks[0].path",
                 "starting with \"/\"");
    expect_error("{" APP ", 'healthChecks': [{'ignoreHttp1xx': 'no'}]}",
                 "$.healthChecks[0].ignoreHttp1xx", "true or false");
    /* COMMAND checks need no port even without any */
    r = expect_valid("{" APP ", 'portDefinitions': [], 'healthChecks': [{'protocol': 'COMMAND',"
                     " 'command': {'value': 'curl -f localhost'}}]}");
    spec_result_free(&r);
    /* path on a TCP check: a warning, not an error */
    r = expect_valid("{" APP ", 'healthChecks': [{'protocol': 'TCP', 'path': '/x'}]}");
    assert_true(find_issue(r.warnings, "$.healthChecks[0].path", "ignored for protocol TCP") >= 0);
    spec_result_free(&r);
}

static void test_ports_and_container(void **state)
{
    expect_error("{" APP ", 'ports': [80], 'portDefinitions': [{'port': 81}]}", "$.ports",
                 "not both");
    spec_result_t r = expect_valid("{" APP ", 'ports': [80], 'portDefinitions': [{'port': 80}]}");
    spec_result_free(&r);
    expect_error("{" APP ", 'portDefinitions': [{'port': 80}, {'port': 80}]}",
                 "$.portDefinitions[1].port", "also used by portDefinitions[0]");
    expect_error("{" APP
                 ", 'portDefinitions': [{'port': 0, 'name': 'web'}, {'port': 0, 'name': 'web'}]}",
                 "$.portDefinitions[1].name", "also used");
    expect_error("{" APP ", 'ports': [8080, 8080]}", "$.ports[1]", "also used by ports[0]");
    expect_error("{" APP ", 'container': {'type': 'VM', 'docker': {'image': 'x'}}}",
                 "$.container.type", "not one of");
    expect_error("{" APP ", 'container': {'type': 'DOCKER'}}", "$.container.docker",
                 "is required for container type DOCKER");
    expect_error("{" APP ", 'container': {'type': 'PROCESS', 'docker': {'image': 'x'}}}",
                 "$.container.docker", "not valid for container type PROCESS");
    expect_error("{" APP ", 'container': {'docker': {'image': 'x', 'network': 'HOST',"
                 " 'portMappings': [{'containerPort': 80}]}}}",
                 "$.container.docker.network", "need BRIDGE or USER");
    expect_error("{" APP ", 'container': {'docker': {'image': 'x', 'network': 'bridged'}}}",
                 "$.container.docker.network", "did you mean \"BRIDGE\"?");
    expect_error("{" APP ", 'container': {'portMappings': [{'containerPort': 1}], 'docker': {"
                 "'image': 'x', 'portMappings': [{'containerPort': 2}]}}}",
                 "$.container.portMappings", "given twice");
    expect_error("{" APP ", 'container': {'docker': {'image': 'x', 'network': 'BRIDGE',"
                 " 'portMappings': [{'containerPort': 80, 'hostPort': 8080},"
                 " {'containerPort': 81, 'hostPort': 8080}]}}}",
                 "$.container.docker.portMappings[1].hostPort", "also used");
    expect_error("{" APP ", 'container': {'docker': {'image': 'x',"
                 " 'portMappings': [{'containerPort': 80, 'protocol': 'TCP'}]}}}",
                 "$.container.docker.portMappings[0].protocol", "did you mean \"tcp\"?");
    /* with bridge networking the index counts mappings */
    expect_error("{" APP ", 'container': {'docker': {'image': 'x', 'network': 'BRIDGE',"
                 " 'portMappings': [{'containerPort': 80}]}}, 'healthChecks': [{'portIndex': 1}]}",
                 "$.healthChecks[0].portIndex", "is 1 but the app has 1 port");
    expect_error("{" APP ", 'uris': ['http://a/b'], 'fetch': [{'uri': 'http://a/c'}]}", "$.uris",
                 "not both");
    /* container type any case */
    r = expect_valid("{" APP ", 'container': {'type': 'docker', 'docker': {'image': 'x'}}}");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(r.app, "container"), "type")), "DOCKER");
    spec_result_free(&r);
    /* portDefinitions beside bridge mappings: warned, kept */
    r = expect_valid(
        "{" APP ", 'portDefinitions': [{'port': 10000}], 'container': {'docker': {"
        "'image': 'x', 'network': 'BRIDGE', 'portMappings': [{'containerPort': 80}]}}}");
    assert_true(find_issue(r.warnings, "$.portDefinitions", "ignored with BRIDGE networking") >= 0);
    spec_result_free(&r);
}

static void test_constraints(void **state)
{
    spec_result_t r = expect_valid(
        "{" APP ", 'constraints': [['hostname', 'UNIQUE'], ['rack', 'GROUP_BY'],"
        " ['rack', 'GROUP_BY', '3'], ['disk', 'CLUSTER', 'ssd'], ['host', 'LIKE', 'web.*'],"
        " ['host', 'UNLIKE', 'db.*'], ['rack', 'MAX_PER', '2'], ['env', 'IS', 'prod']]}");
    spec_result_free(&r);
    expect_error("{" APP ", 'constraints': 'hostname:UNIQUE'}", "$.constraints",
                 "must be an array");
    expect_error("{" APP ", 'constraints': [['hostname']]}", "$.constraints[0]",
                 "[field, operator]");
    expect_error("{" APP ", 'constraints': ['hostname']}", "$.constraints[0]", "[field, operator]");
    expect_error("{" APP ", 'constraints': [['', 'UNIQUE']]}", "$.constraints[0][0]", "non-empty");
    expect_error("{" APP ", 'constraints': [['hostname', 'UNIQUE', 'x']]}", "$.constraints[0][2]",
                 "UNIQUE takes no value");
    expect_error("{" APP ", 'constraints': [['rack', 'LIKE']]}", "$.constraints[0]",
                 "LIKE needs a value");
    expect_error("{" APP ", 'constraints': [['rack', 'CLUSTER', '']]}", "$.constraints[0]",
                 "CLUSTER needs a value");
    expect_error("{" APP ", 'constraints': [['rack', 'MAX_PER']]}", "$.constraints[0]",
                 "MAX_PER needs a value");
    expect_error("{" APP ", 'constraints': [['rack', 'MAX_PER', 'two']]}", "$.constraints[0][2]",
                 "positive integer");
    expect_error("{" APP ", 'constraints': [['rack', 'GROUP_BY', '0']]}", "$.constraints[0][2]",
                 "positive integer");
    expect_error("{" APP ", 'constraints': [['rack', 'IS', 3]]}", "$.constraints[0][2]",
                 "must be a string");
    expect_error("{" APP ", 'constraints': [['rack', 'unique']]}", "$.constraints[0][1]",
                 "did you mean \"UNIQUE\"?");
}

static void test_worker_pool_and_routes(void **state)
{
    spec_result_t r = expect_valid(
        "{'id': '/w', 'cmd': 'worker', 'kind': 'worker', 'pool': {'pool-limit': 4,"
        " 'idle-timeout': 0.5}, 'routes': [{'host': 'echo.example.com', 'event': 'ping'}]}");
    spec_result_free(&r);
    expect_error("{" APP ", 'pool': {'pool-limit': 2}}", "$.pool", "only valid for a worker app");
    expect_error("{" APP ", 'kind': 'worker', 'pool': {'pool-limit': 0}}", "$.pool.pool-limit",
                 ">= 1");
    expect_error("{" APP ", 'kind': 'worker', 'pool': {'concurrency': 1.5}}", "$.pool.concurrency",
                 "integer");
    expect_error("{" APP ", 'kind': 'worker', 'pool': {'idle-timeout': 0}}", "$.pool.idle-timeout",
                 "> 0");
    expect_error("{" APP ", 'kind': 'worker', 'pool': {'request-timeout': -1}}",
                 "$.pool.request-timeout", "> 0");
    expect_error("{" APP ", 'kind': 'worker', 'pool': {'crashlog-limit': -1}}",
                 "$.pool.crashlog-limit", ">= 0");
    expect_error("{" APP ", 'kind': 'worker', 'pool': []}", "$.pool", "must be an object");
    expect_error("{" APP ", 'kind': 'worker', 'pool': {'spare': 'yes'}}", "$.pool.spare",
                 "true or false");

    r = expect_valid(
        "{" APP ", 'routes': [{'host': '*.Example.com', 'path': '/api',"
        " 'sticky': 'cookie:sid', 'group': 'web'}, {'internal': 10001, 'tcp': true}]}");
    spec_result_free(&r);
    expect_error("{" APP ", 'routes': [{'host': 'bad host'}]}", "$.routes[0].host",
                 "not a host name");
    expect_error("{" APP ", 'routes': [{'host': 'a..b'}]}", "$.routes[0].host", "not a host name");
    expect_error("{" APP ", 'routes': [{'host': '-a.b'}]}", "$.routes[0].host", "not a host name");
    expect_error("{" APP ", 'routes': [{'path': 'api'}]}", "$.routes[0].path",
                 "starting with \"/\"");
    expect_error("{" APP ", 'routes': [{'internal': 0}]}", "$.routes[0].internal",
                 "between 1 and 65535");
    expect_error("{" APP ", 'routes': [{'internal': 10000, 'tcp': true, 'host': 'a.b'}]}",
                 "$.routes[0].host", "not valid for a TCP route");
    expect_error("{" APP ", 'routes': [{'tcp': true}]}", "$.routes[0]", "needs an internal port");
    expect_error("{" APP ", 'routes': [{'tcp': false}]}", "$.routes[0]", "matches nothing");
    expect_error("{" APP ", 'routes': [{'internal': 10000}, {'internal': 10000}]}",
                 "$.routes[1].internal", "also used by routes[0]");
    expect_error("{" APP ", 'routes': [{'host': 'a.b', 'portIndex': 1}]}", "$.routes[0].portIndex",
                 "is 1 but the app has 1 port");
    expect_error("{" APP ", 'routes': [{'host': 'a.b', 'sticky': 'session'}]}",
                 "$.routes[0].sticky", "header:NAME");
    expect_error("{" APP ", 'routes': [{'host': 'a.b', 'event': 'x'}]}", "$.routes[0].event",
                 "only valid for a worker app");
    expect_error("{" APP ", 'kind': 'worker', 'routes': [{'host': 'a.b', 'portIndex': 0}]}",
                 "$.routes[0].portIndex", "not valid for a worker app");
    expect_error("{" APP ", 'kind': 'worker', 'routes': [{'internal': 9, 'tcp': true}]}",
                 "$.routes[0].tcp", "not valid for a worker app");
    expect_error("{" APP ", 'routes': [{'host': 'a.b', 'hots': 'x'}]}", "$.routes[0].hots",
                 "did you mean \"host\"?");
    expect_error("{" APP ", 'config': 'a/../b'}", "$.config", "KV prefix");
    expect_error("{" APP ", 'config': ''}", "$.config", "must not be empty");
    r = expect_valid("{" APP ", 'config': 'production/test-server/'}");
    spec_result_free(&r);
}

static void test_warnings(void **state)
{
    spec_result_t r = expect_valid(
        "{" APP ", 'dependencies': ['/db'], 'gpus': 1, 'user': 'nobody',"
        " 'env': {'DB_PASSWORD': {'secret': 'db'}, 'A': 'b'},"
        " 'container': {'volumes': [{'containerPath': '/data'}], 'docker': {'image': 'x',"
        " 'privileged': true, 'parameters': [{'key': 'a', 'value': 'b'}]}},"
        " 'fetch': [{'uri': 'http://a/b', 'destPath': 'b'}]}");
    static const char *const paths[] = {
        "$.dependencies",
        "$.gpus",
        "$.user",
        "$.env.DB_PASSWORD",
        "$.container.volumes",
        "$.container.docker.privileged",
        "$.container.docker.parameters",
        "$.fetch[0].destPath",
    };
    size_t n = sizeof(paths) / sizeof(paths[0]);
    for (size_t i = 0; i < n; i++) {
        if (find_issue(r.warnings, paths[i], "not implemented by drover yet; ignored") < 0) {
            dump_issues("warnings", r.warnings);
            fail_msg("no warning at %s", paths[i]);
        }
    }
    assert_int_equal(json_array_size(r.warnings), n);
    assert_string_equal(json_string_value(json_object_get(json_array_get(r.warnings, 0), "reason")),
                        "accepted but not implemented by drover yet; ignored");
    spec_result_free(&r);

    /* Marathon's "unset" values are not worth a warning */
    r = expect_valid("{" APP ", 'gpus': 0, 'dependencies': [], 'user': null, 'executor': '',"
                     " 'secrets': {}, 'version': '2016-01-28T07:57:35.433Z',"
                     " 'versionInfo': {'lastScalingAt': '2016-01-28T07:57:35.433Z'}}");
    assert_int_equal(json_array_size(r.warnings), 0);
    spec_result_free(&r);

    /* warnings are reported for invalid documents too */
    json_t *in = jq("{'id': '/a', 'gpus': 2}");
    assert_int_equal(spec_validate(in, &r), -EINVAL);
    assert_true(find_issue(r.warnings, "$.gpus", NULL) >= 0);
    assert_true(find_issue(r.errors, "$", "nothing to run") >= 0);
    spec_result_free(&r);
    json_decref(in);
}

/* A document full of mistakes gets a bounded answer. */
static void test_limits(void **state)
{
    json_t *in = jq("{" APP "}");
    for (int i = 0; i < 1500; i++) {
        char key[32];
        snprintf(key, sizeof(key), "junk%d", i);
        json_object_set_new(in, key, json_integer(i));
    }
    spec_result_t r;
    assert_int_equal(spec_validate(in, &r), -EINVAL);
    assert_int_equal(json_array_size(r.errors), 1001);
    assert_true(find_issue(r.errors, "$.junk0", "unknown field") >= 0);
    assert_true(find_issue(r.errors, "$", "too many problems") == 1000);
    spec_result_free(&r);
    json_decref(in);

    in = jq("{" APP ", 'portDefinitions': []}");
    json_t *defs = json_object_get(in, "portDefinitions");
    for (int i = 0; i < 1001; i++)
        json_array_append_new(defs, json_pack("{s:i}", "port", 0));
    assert_int_equal(spec_validate(in, &r), -EINVAL);
    assert_true(find_issue(r.errors, "$.portDefinitions", "at most 1000") >= 0);
    spec_result_free(&r);
    json_array_remove(defs, 0);
    assert_int_equal(spec_validate(in, &r), 0);
    spec_result_free(&r);
    json_decref(in);
}

static void test_input_untouched(void **state)
{
    json_t *in = jq("{'id': 'a/b', 'cmd': 'x', 'instances': 2.0, 'version': 'v',"
                    " 'container': {'type': 'docker', 'docker': {'image': 'i'}}, 'ports': [80],"
                    " 'uris': ['http://a/b'], 'args': null}");
    char *before = json_dumps(in, JSON_SORT_KEYS);
    spec_result_t r;
    assert_int_equal(spec_validate(in, &r), 0);
    char *after = json_dumps(in, JSON_SORT_KEYS);
    assert_string_equal(before, after);
    assert_int_equal(in->refcount, 1);
    free(before);
    free(after);
    spec_result_free(&r);
    spec_result_free(&r); /* twice is fine */
    json_decref(in);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seed_spec_is_valid),
        cmocka_unit_test(test_examples_are_valid),
        cmocka_unit_test(test_misspelt_field_suggests),
        cmocka_unit_test(test_every_error_reported),
        cmocka_unit_test(test_id_rules),
        cmocka_unit_test(test_types_and_ranges),
        cmocka_unit_test(test_cmd_args_and_something_to_run),
        cmocka_unit_test(test_health_checks),
        cmocka_unit_test(test_ports_and_container),
        cmocka_unit_test(test_constraints),
        cmocka_unit_test(test_worker_pool_and_routes),
        cmocka_unit_test(test_warnings),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_input_untouched),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
