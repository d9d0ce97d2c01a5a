/* spec_diff: add / remove / change entries with their JSON paths. */
#include "spec_test.h"

#include "core/json.h"

static void expect_diff(const char *old, const char *new_, const char *want)
{
    json_t *a = old ? jq(old) : NULL, *b = new_ ? jq(new_) : NULL, *w = jq(want);
    json_t *d = spec_diff(a, b);
    if (!json_equal(d, w)) {
        dump_issues("got", d);
        dump_issues("want", w);
        fail_msg("diff of %s -> %s", old ? old : "NULL", new_ ? new_ : "NULL");
    }
    json_decref(d);
    json_decref(w);
    json_decref(a);
    json_decref(b);
}

static void test_add_remove_change(void **state)
{
    expect_diff("{'instances': 1, 'env': {'A': '1', 'K': 'same'}, 'args': ['a', 'b'], 'mem': 64}",
                "{'instances': 2, 'env': {'B': '2', 'K': 'same'}, 'args': ['a'], 'cmd': 'x',"
                " 'mem': 64}",
                "[{'path': '$.args[1]', 'op': 'remove', 'old': 'b'},"
                " {'path': '$.cmd', 'op': 'add', 'new': 'x'},"
                " {'path': '$.env.A', 'op': 'remove', 'old': '1'},"
                " {'path': '$.env.B', 'op': 'add', 'new': '2'},"
                " {'path': '$.instances', 'op': 'change', 'old': 1, 'new': 2}]");
    /* add entries carry no "old", remove entries no "new" */
    json_t *a = jq("{'x': 1}"), *b = jq("{'y': 2}");
    json_t *d = spec_diff(a, b);
    assert_int_equal(json_array_size(d), 2);
    assert_null(json_object_get(json_array_get(d, 0), "new"));
    assert_non_null(json_object_get(json_array_get(d, 0), "old"));
    assert_null(json_object_get(json_array_get(d, 1), "old"));
    assert_non_null(json_object_get(json_array_get(d, 1), "new"));
    json_decref(d);
    json_decref(a);
    json_decref(b);
}

static void test_nested_paths(void **state)
{
    expect_diff(
        "{'healthChecks': [{'portIndex': 0, 'path': '/h'}], 'container': {'docker':"
        " {'image': 'a:1', 'portMappings': [{'containerPort': 80}]}}}",
        "{'healthChecks': [{'portIndex': 1, 'path': '/h'}, {'protocol': 'TCP'}],"
        " 'container': {'docker': {'image': 'a:2', 'portMappings': [{'containerPort': 80}]}}}",
        "[{'path': '$.container.docker.image', 'op': 'change', 'old': 'a:1', 'new': 'a:2'},"
        " {'path': '$.healthChecks[0].portIndex', 'op': 'change', 'old': 0, 'new': 1},"
        " {'path': '$.healthChecks[1]', 'op': 'add', 'new': {'protocol': 'TCP'}}]");
    /* a type change is one change, not a walk */
    expect_diff("{'a': {'b': 1}}", "{'a': [1]}",
                "[{'path': '$.a', 'op': 'change', 'old': {'b': 1}, 'new': [1]}]");
    /* odd keys are quoted */
    expect_diff("{'labels': {'a b': '1', 'pool-limit': 1}}", "{'labels': {'pool-limit': 2}}",
                "[{'path': '$.labels[\\\"a b\\\"]', 'op': 'remove', 'old': '1'},"
                " {'path': '$.labels.pool-limit', 'op': 'change', 'old': 1, 'new': 2}]");
    /* top-level values */
    expect_diff("1", "2", "[{'path': '$', 'op': 'change', 'old': 1, 'new': 2}]");
}

static void test_equal_and_numbers(void **state)
{
    expect_diff("{'a': [1, {'b': null}], 'c': 'x'}", "{'c': 'x', 'a': [1, {'b': null}]}", "[]");
    /* 64 and 64.0 are the same amount of memory */
    expect_diff("{'mem': 64, 'l': [1.0]}", "{'mem': 64.0, 'l': [1]}", "[]");
    expect_diff("{'cpus': 0.5}", "{'cpus': 0.25}",
                "[{'path': '$.cpus', 'op': 'change', 'old': 0.5, 'new': 0.25}]");
    expect_diff("{'a': true}", "{'a': false}",
                "[{'path': '$.a', 'op': 'change', 'old': true, 'new': false}]");
}

static void test_null_sides(void **state)
{
    expect_diff(NULL, "{'id': '/a', 'cmd': 'x'}",
                "[{'path': '$.cmd', 'op': 'add', 'new': 'x'},"
                " {'path': '$.id', 'op': 'add', 'new': '/a'}]");
    expect_diff("{'id': '/a'}", NULL, "[{'path': '$.id', 'op': 'remove', 'old': '/a'}]");
    expect_diff(NULL, "[1]", "[{'path': '$', 'op': 'add', 'new': [1]}]");
    json_t *d = spec_diff(NULL, NULL);
    assert_true(json_is_array(d));
    assert_int_equal(json_array_size(d), 0);
    json_decref(d);
}

/* The seed file and the seed template filled with the seed's own values are
 * the same spec once normalized: no difference at all. Filled for staging,
 * exactly the placeholders differ. */
static void test_seed_against_template(void **state)
{
    size_t n1, n2;
    char *spec_text = read_repo_file("examples/specs/test-server.json", &n1);
    char *tmpl = read_repo_file("examples/specs/test-server.tmpl.json", &n2);
    json_t *seed = json_parse(spec_text, n1, NULL);
    spec_result_t rs;
    assert_int_equal(spec_validate(seed, &rs), 0);

    spec_var_t prod[] = {{"environment", "production"},
                         {"tag", "master-ef5a154e25b268c611006d08a78a3ec0a451e7ed-56"},
                         {"instances", "4"}};
    char *out;
    size_t len;
    assert_int_equal(spec_template_fill(tmpl, n2, prod, 3, &out, &len, NULL), 0);
    json_t *filled = json_parse(out, len, NULL);
    free(out);
    spec_result_t rf;
    assert_int_equal(spec_validate(filled, &rf), 0);
    json_t *d = spec_diff(rs.app, rf.app);
    if (json_array_size(d))
        dump_issues("diff", d);
    assert_int_equal(json_array_size(d), 0);
    json_decref(d);
    spec_result_free(&rf);
    json_decref(filled);

    spec_var_t staging[] = {{"environment", "staging"}, {"tag", "abc"}, {"instances", "2"}};
    assert_int_equal(spec_template_fill(tmpl, n2, staging, 3, &out, &len, NULL), 0);
    filled = json_parse(out, len, NULL);
    free(out);
    assert_int_equal(spec_validate(filled, &rf), 0);
    d = spec_diff(rs.app, rf.app);
    static const char *const paths[] = {
        "$.args[3]",   "$.container.docker.image", "$.env.SERVICE_TAGS", "$.id",
        "$.instances", "$.labels.environment",     "$.labels.version",
    };
    assert_int_equal(json_array_size(d), sizeof(paths) / sizeof(paths[0]));
    for (size_t i = 0; i < json_array_size(d); i++) {
        const json_t *e = json_array_get(d, i);
        assert_string_equal(json_string_value(json_object_get(e, "path")), paths[i]);
        assert_string_equal(json_string_value(json_object_get(e, "op")), "change");
    }
    json_decref(d);
    spec_result_free(&rf);
    json_decref(filled);
    spec_result_free(&rs);
    json_decref(seed);
    free(spec_text);
    free(tmpl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_remove_change),     cmocka_unit_test(test_nested_paths),
        cmocka_unit_test(test_equal_and_numbers),     cmocka_unit_test(test_null_sides),
        cmocka_unit_test(test_seed_against_template),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
