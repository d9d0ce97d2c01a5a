/* spec_template_fill: placeholder syntax, quoting by context, errors. */
#include "spec_test.h"

#include "core/json.h"

/* Fill `text` (which must succeed) and return the output. */
static char *fill_ok(const char *text, const spec_var_t *vars, size_t n)
{
    char *out = NULL;
    size_t len = 0;
    err_t err = {0};
    int rc = spec_template_fill(text, strlen(text), vars, n, &out, &len, &err);
    if (rc)
        fail_msg("fill failed (%d): %s", rc, err.msg);
    assert_non_null(out);
    assert_int_equal(len, strlen(out));
    return out;
}

static void expect_fill(const char *text, const spec_var_t *vars, size_t n, const char *want)
{
    char *out = fill_ok(text, vars, n);
    assert_string_equal(out, want);
    free(out);
}

/* Marathon files use $PORT0 / ${HOST} in cmd for the instance's shell:
 * unset upper-case names inside strings pass through untouched, while a
 * given --var of that name still fills it and lower-case names stay errors. */
static void test_env_style_names_pass_through(void **state)
{
    expect_fill("{\"cmd\": \"serve --port $PORT0 --host ${HOST}\"}", NULL, 0,
                "{\"cmd\": \"serve --port $PORT0 --host ${HOST}\"}");
    spec_var_t v[] = {{"PORT0", "8080"}};
    expect_fill("\"$PORT0\"", v, 1, "\"8080\"");
    char *out = NULL;
    err_t err = {0};
    assert_int_equal(spec_template_fill("\"$port0\"", 8, NULL, 0, &out, NULL, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "$port0"));
    /* outside a string an unset name is an error whatever its case */
    assert_int_equal(spec_template_fill("[$PORT0]", 8, NULL, 0, &out, NULL, &err), -EINVAL);
}

static void test_dollar_and_braces(void **state)
{
    spec_var_t v[] = {{"env", "staging"}, {"tag", "abc"}};
    expect_fill("{\"id\": \"/app/$env/web\"}", v, 2, "{\"id\": \"/app/staging/web\"}");
    expect_fill("{\"id\": \"/app/${env}/web\"}", v, 2, "{\"id\": \"/app/staging/web\"}");
    /* braces end the name where a bare placeholder would not */
    expect_fill("\"${tag}x $tag.y $tag-z\"", v, 2, "\"abcx abc.y abc-z\"");
    /* keys are strings too */
    expect_fill("{\"$env\": 1}", v, 2, "{\"staging\": 1}");
    /* the last of two values wins, as with repeated --var */
    spec_var_t dup[] = {{"x", "1"}, {"x", "2"}};
    expect_fill("[$x]", dup, 2, "[2]");
    /* dotted names need braces */
    spec_var_t dotted[] = {{"app.tag", "v2"}};
    expect_fill("\"${app.tag}\"", dotted, 1, "\"v2\"");
}

static void test_numbers_unquoted_strings_quoted(void **state)
{
    spec_var_t v[] = {{"n", "4"},     {"f", "0.5"}, {"neg", "-1"}, {"e", "1e3"}, {"s", "abc"},
                      {"lead", "01"}, {"sp", " 4"}, {"t", "true"}, {"empty", ""}};
    expect_fill("{\"instances\": $n}", v, 9, "{\"instances\": 4}");
    expect_fill("[$f, $neg, $e]", v, 9, "[0.5, -1, 1e3]");
    expect_fill("[$s, $lead, $sp, $t, $empty]", v, 9, "[\"abc\", \"01\", \" 4\", true, \"\"]");
    /* inside a string a number is just text */
    expect_fill("\"v$n\"", v, 9, "\"v4\"");

    /* the filled seed-style line parses to a number */
    char *out = fill_ok("{\"instances\": $n, \"cpus\": $f}", v, 9);
    json_t *j = json_parse(out, strlen(out), NULL);
    assert_true(json_is_integer(json_object_get(j, "instances")));
    assert_true(json_is_real(json_object_get(j, "cpus")));
    json_decref(j);
    free(out);
}

static void test_values_escaped(void **state)
{
    const char *nasty = "say \"hi\"\\ \n\ttab \x01 caf\xc3\xa9";
    spec_var_t v[] = {{"x", nasty}};
    expect_fill("\"$x\"", v, 1, "\"say \\\"hi\\\"\\\\ \\n\\ttab \\u0001 caf\xc3\xa9\"");
    /* whatever the value, both places round-trip through a JSON parser */
    char *out = fill_ok("{\"in\": \"<$x>\", \"out\": $x}", v, 1);
    json_t *j = json_parse(out, strlen(out), NULL);
    assert_non_null(j);
    char want[128];
    snprintf(want, sizeof(want), "<%s>", nasty);
    assert_string_equal(json_string_value(json_object_get(j, "in")), want);
    assert_string_equal(json_string_value(json_object_get(j, "out")), nasty);
    json_decref(j);
    free(out);
    /* an escaped quote does not end the string */
    spec_var_t w[] = {{"y", "hi"}};
    expect_fill("{\"k\": \"say \\\"$y\\\"\", \"n\": $y}", w, 1,
                "{\"k\": \"say \\\"hi\\\"\", \"n\": \"hi\"}");
    /* an escaped backslash does not hide the closing quote */
    expect_fill("[\"\\\\\", $y]", w, 1, "[\"\\\\\", \"hi\"]");
}

static void test_missing_vars_all_reported(void **state)
{
    const char *text = "{\n"
                       "  \"id\": \"/app/$environment/web\",\n"
                       "  \"labels\": {\"v\": \"${tag}\"},\n"
                       "  \"env\": {\"E\": \"$environment\"},\n"
                       "  \"cpus\": $cpus,\n"
                       "  \"mem\": $mem,\n"
                       "  \"instances\": $instances\n"
                       "}\n";
    spec_var_t v[] = {{"cpus", "0.5"}, {"mem", "64"}};
    char *out = (char *)1;
    size_t len = 99;
    err_t err = {0};
    assert_int_equal(spec_template_fill(text, strlen(text), v, 2, &out, &len, &err), -EINVAL);
    assert_null(out);
    assert_int_equal(len, 0);
    assert_int_equal(err.code, -EINVAL);
    assert_string_equal(err.msg,
                        "line 2: variable $environment is not set (use --var environment=VALUE)\n"
                        "line 3: variable $tag is not set (use --var tag=VALUE)\n"
                        "line 7: variable $instances is not set (use --var instances=VALUE)");
}

static void test_many_missing_vars_summarized(void **state)
{
    char text[4096];
    size_t o = 0;
    for (int i = 0; i < 100; i++)
        o += (size_t)snprintf(text + o, sizeof(text) - o, "$v%d\n", i);
    char *out = NULL;
    err_t err = {0};
    assert_int_equal(spec_template_fill(text, o, NULL, 0, &out, NULL, &err), -EINVAL);
    assert_null(out);
    assert_true(strlen(err.msg) < ERR_MSG_MAX);
    assert_non_null(strstr(err.msg, "line 1: variable $v0 is not set"));
    assert_non_null(strstr(err.msg, "more problem(s)"));
}

static void test_literal_dollar(void **state)
{
    spec_var_t v[] = {{"x", "1"}};
    expect_fill("\"cost $$5 and $$x\"", v, 1, "\"cost $5 and $x\"");
    expect_fill("\"echo $$PORT0\"", NULL, 0, "\"echo $PORT0\"");
    /* a $ that starts no placeholder is copied */
    expect_fill("\"a $ b $5 $\"", NULL, 0, "\"a $ b $5 $\"");
    expect_fill("$", NULL, 0, "$");
    expect_fill("", NULL, 0, "");
    /* no placeholder, no change */
    const char *plain = "{\"a\": [1, 2.5, \"x\\\"y\"], \"b\": null}";
    expect_fill(plain, NULL, 0, plain);
}

static void test_bad_placeholders(void **state)
{
    spec_var_t v[] = {{"x", "1"}, {"bad", "\xff\xfe"}};
    const char *cases[] = {"\"${x\"", "\"${}\"", "\"${x y}\"", "${"};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *out = NULL;
        err_t err = {0};
        assert_int_equal(spec_template_fill(cases[i], strlen(cases[i]), v, 2, &out, NULL, &err),
                         -EINVAL);
        assert_null(out);
        assert_non_null(strstr(err.msg, "line 1: \"${\" must be followed by a name"));
    }
    char *out = NULL;
    err_t err = {0};
    assert_int_equal(spec_template_fill("\"$bad\"", 6, v, 2, &out, NULL, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "not valid UTF-8"));
}

static void test_output_bounded(void **state)
{
    size_t n = (1u << 20) + 1;
    char *big = xmalloc(n + 1);
    memset(big, 'a', n);
    big[n] = '\0';
    spec_var_t v[] = {{"big", big}};
    char text[20 * 5 + 1] = "";
    for (int i = 0; i < 17; i++)
        strcat(text, "$big ");
    char *out = NULL;
    err_t err = {0};
    assert_int_equal(spec_template_fill(text, strlen(text), v, 1, &out, NULL, &err), -E2BIG);
    assert_null(out);
    /* 15 copies fit */
    text[15 * 5] = '\0';
    assert_int_equal(spec_template_fill(text, strlen(text), v, 1, &out, NULL, &err), 0);
    free(out);
    free(big);
}

/* The seed's template, filled as `drover deploy` would, is a valid spec. */
static void test_seed_template(void **state)
{
    size_t len;
    char *text = read_repo_file("examples/specs/test-server.tmpl.json", &len);
    spec_var_t v[] = {{"environment", "staging"}, {"tag", "abc"}, {"instances", "4"}};
    char *out = NULL;
    size_t out_len = 0;
    err_t err = {0};
    assert_int_equal(spec_template_fill(text, len, v, 3, &out, &out_len, &err), 0);
    json_t *in = json_parse(out, out_len, &err);
    if (!in)
        fail_msg("%s", err.msg);
    spec_result_t r;
    int rc = spec_validate(in, &r);
    if (rc)
        dump_issues("errors", r.errors);
    assert_int_equal(rc, 0);
    assert_int_equal(json_array_size(r.warnings), 0);
    const json_t *app = r.app;
    assert_string_equal(json_string_value(json_object_get(app, "id")), "/app/staging/test-server");
    assert_true(json_is_integer(json_object_get(app, "instances")));
    assert_int_equal(json_integer_value(json_object_get(app, "instances")), 4);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(app, "labels"), "version")), "abc");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(app, "env"), "SERVICE_TAGS")),
        "staging,internal-listen-http-3000");
    assert_string_equal(json_string_value(json_array_get(json_object_get(app, "args"), 3)),
                        "app/staging/test-server");
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_object_get(app, "container"), "docker"), "image")),
                        "registry.local/test-server:abc");
    spec_result_free(&r);
    json_decref(in);
    free(out);

    /* without --var instances: named, with its line */
    assert_int_equal(spec_template_fill(text, len, v, 2, &out, NULL, &err), -EINVAL);
    assert_string_equal(err.msg, "line 13: variable $instances is not set (use --var "
                                 "instances=VALUE)");
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dollar_and_braces),
        cmocka_unit_test(test_env_style_names_pass_through),
        cmocka_unit_test(test_numbers_unquoted_strings_quoted),
        cmocka_unit_test(test_values_escaped),
        cmocka_unit_test(test_missing_vars_all_reported),
        cmocka_unit_test(test_many_missing_vars_summarized),
        cmocka_unit_test(test_literal_dollar),
        cmocka_unit_test(test_bad_placeholders),
        cmocka_unit_test(test_output_bounded),
        cmocka_unit_test(test_seed_template),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
