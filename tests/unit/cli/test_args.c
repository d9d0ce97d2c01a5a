/* cli argument parsing: flags anywhere, --, -, values, lists, errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cli/cli.h"
#include "core/alloc.h"
#include "spec/spec.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* The cli module links deploy.c, which uses the spec module; unit tests of
 * cli link only core, cli and http, so the one spec function is stubbed. */
int spec_template_fill(const char *text, size_t len, const spec_var_t *vars, size_t n_vars,
                       char **out, size_t *out_len, err_t *err)
{
    (void)vars;
    (void)n_vars;
    (void)err;
    *out = xstrndup(text, len);
    if (out_len)
        *out_len = len;
    return 0;
}

enum { O_JSON, O_CAS, O_VAR, O_N };

static void opts_init(cli_opt_t *o)
{
    cli_opt_t init[O_N] = {
        [O_JSON] = CLI_FLAG("json", "json"),
        [O_CAS] = CLI_VALUE("cas", "R", "cas"),
        [O_VAR] = CLI_LIST("var", "K=V", "var"),
    };
    memcpy(o, init, sizeof(init));
}

static int parse(int argc, char **argv, cli_opt_t *o, cli_args_t *a, err_t *err)
{
    opts_init(o);
    return cli_args_parse(argc, argv, o, O_N, a, err);
}

static void test_flags_anywhere(void **state)
{
    (void)state;
    char *argv[] = {"--json", "KEY", "--cas", "7", "VALUE", "--var=a=1", "--var", "b=2"};
    cli_opt_t o[O_N];
    cli_args_t a;
    err_t err = {0};
    assert_int_equal(parse(8, argv, o, &a, &err), 0);
    assert_int_equal(a.n_pos, 2);
    assert_string_equal(a.pos[0], "KEY");
    assert_string_equal(a.pos[1], "VALUE");
    assert_int_equal(o[O_JSON].count, 1);
    assert_string_equal(o[O_CAS].value, "7");
    assert_int_equal(o[O_VAR].count, 2);
    assert_string_equal(o[O_VAR].list[0], "a=1");
    assert_string_equal(o[O_VAR].list[1], "b=2");
    assert_false(a.help);
    assert_null(a.addr);
    cli_args_free(&a, o, O_N);
}

static void test_double_dash_and_stdin(void **state)
{
    (void)state;
    char *argv[] = {"KEY", "-", "--", "-5", "--json"};
    cli_opt_t o[O_N];
    cli_args_t a;
    assert_int_equal(parse(5, argv, o, &a, NULL), 0);
    assert_int_equal(a.n_pos, 4);
    assert_string_equal(a.pos[1], "-");
    assert_string_equal(a.pos[2], "-5");
    assert_string_equal(a.pos[3], "--json");
    assert_int_equal(o[O_JSON].count, 0);
    cli_args_free(&a, o, O_N);
}

static void test_unknown_flag_named(void **state)
{
    (void)state;
    char *argv[] = {"KEY", "--jsn"};
    cli_opt_t o[O_N];
    cli_args_t a;
    err_t err = {0};
    assert_int_equal(parse(2, argv, o, &a, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "unknown flag --jsn"));
    cli_args_free(&a, o, O_N);

    char *argv2[] = {"-x"};
    assert_int_equal(parse(1, argv2, o, &a, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "unknown flag -x"));
    cli_args_free(&a, o, O_N);

    /* --name=value on an unknown flag names the flag without the value. */
    char *argv3[] = {"--nope=3"};
    assert_int_equal(parse(1, argv3, o, &a, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "--nope"));
    assert_null(strstr(err.msg, "=3"));
    cli_args_free(&a, o, O_N);
}

static void test_value_errors(void **state)
{
    (void)state;
    cli_opt_t o[O_N];
    cli_args_t a;
    err_t err = {0};
    char *argv[] = {"--cas"};
    assert_int_equal(parse(1, argv, o, &a, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "--cas needs a value"));
    cli_args_free(&a, o, O_N);
    char *argv2[] = {"--json=1"};
    assert_int_equal(parse(1, argv2, o, &a, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "--json takes no value"));
    cli_args_free(&a, o, O_N);
    char *argv3[] = {"--addr"};
    assert_int_equal(parse(1, argv3, o, &a, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "--addr"));
    cli_args_free(&a, o, O_N);
}

static void test_last_value_wins_and_empty_value(void **state)
{
    (void)state;
    char *argv[] = {"--cas", "1", "--cas=", "x"};
    cli_opt_t o[O_N];
    cli_args_t a;
    assert_int_equal(parse(4, argv, o, &a, NULL), 0);
    assert_string_equal(o[O_CAS].value, "");
    assert_int_equal(o[O_CAS].count, 2);
    assert_int_equal(a.n_pos, 1);
    cli_args_free(&a, o, O_N);
}

static void test_help_and_addr(void **state)
{
    (void)state;
    char *argv[] = {"x", "-h", "--addr", "http://h:1", "--help"};
    cli_opt_t o[O_N];
    cli_args_t a;
    assert_int_equal(parse(5, argv, o, &a, NULL), 0);
    assert_true(a.help);
    assert_string_equal(a.addr, "http://h:1");
    assert_int_equal(a.n_pos, 1);
    cli_args_free(&a, o, O_N);
    char *argv2[] = {"--addr=127.0.0.1:9"};
    assert_int_equal(parse(1, argv2, o, &a, NULL), 0);
    assert_string_equal(a.addr, "127.0.0.1:9");
    cli_args_free(&a, o, O_N);
}

static void test_ctx_addr(void **state)
{
    (void)state;
    cli_ctx_t ctx = {0};
    err_t err = {0};
    assert_int_equal(cli_ctx_set_addr(&ctx, "127.0.0.1:7499", &err), 0);
    assert_string_equal(ctx.addr, "http://127.0.0.1:7499");
    assert_int_equal(cli_ctx_set_addr(&ctx, "https://x.example/api//", &err), 0);
    assert_string_equal(ctx.addr, "https://x.example/api");
    assert_int_equal(cli_ctx_set_addr(&ctx, "", &err), -EINVAL);
    assert_int_equal(cli_ctx_set_addr(&ctx, "http://", &err), -EINVAL);
    assert_string_equal(ctx.addr, "https://x.example/api");
    free(ctx.addr);
}

static void test_var_parse(void **state)
{
    (void)state;
    char *name;
    const char *value;
    err_t err = {0};
    assert_int_equal(cli_var_parse("instances=3", &name, &value, &err), 0);
    assert_string_equal(name, "instances");
    assert_string_equal(value, "3");
    free(name);
    assert_int_equal(cli_var_parse("cmd=a=b", &name, &value, &err), 0);
    assert_string_equal(name, "cmd");
    assert_string_equal(value, "a=b");
    free(name);
    assert_int_equal(cli_var_parse("empty=", &name, &value, &err), 0);
    assert_string_equal(value, "");
    free(name);
    assert_int_equal(cli_var_parse("noequals", &name, &value, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "NAME=VALUE"));
    assert_int_equal(cli_var_parse("=3", &name, &value, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "empty variable name"));
}

/* cli_parse: the wrapper every verb uses; exit codes and where text goes. */
static void test_cli_parse_exit_codes(void **state)
{
    (void)state;
    static const cli_cmd_t cmd = {"kv get", "kv get KEY [--json]", "Print a value.",
                                  "drover kv get a/b"};
    char *outb = NULL, *errb = NULL;
    size_t outn = 0, errn = 0;
    cli_ctx_t ctx = {0};
    ctx.out = open_memstream(&outb, &outn);
    ctx.err = open_memstream(&errb, &errn);
    cli_ctx_set_addr(&ctx, CLI_DEFAULT_ADDR, NULL);
    cli_opt_t o[O_N];
    cli_args_t a;

    opts_init(o);
    char *help[] = {"--help"};
    assert_int_equal(cli_parse(&ctx, &cmd, 1, help, o, O_N, 1, 1, &a), CLI_EXIT_OK);
    fflush(ctx.out);
    assert_non_null(strstr(outb, "usage: drover kv get KEY [--json]"));
    assert_non_null(strstr(outb, "--cas R"));
    assert_non_null(strstr(outb, "--var K=V"));
    assert_non_null(strstr(outb, "(repeatable)"));
    assert_non_null(strstr(outb, "example:\n  drover kv get a/b\n"));

    opts_init(o);
    char *bad[] = {"k", "--bogus"};
    assert_int_equal(cli_parse(&ctx, &cmd, 2, bad, o, O_N, 1, 1, &a), CLI_EXIT_USAGE);
    fflush(ctx.err);
    assert_non_null(strstr(errb, "drover: unknown flag --bogus\n"));
    assert_non_null(strstr(errb, "usage: drover kv get KEY [--json]\n"));

    opts_init(o);
    char *none[] = {"--json"};
    assert_int_equal(cli_parse(&ctx, &cmd, 1, none, o, O_N, 1, 1, &a), CLI_EXIT_USAGE);
    fflush(ctx.err);
    assert_non_null(strstr(errb, "drover: missing argument"));

    opts_init(o);
    char *many[] = {"a", "b"};
    assert_int_equal(cli_parse(&ctx, &cmd, 2, many, o, O_N, 1, 1, &a), CLI_EXIT_USAGE);
    fflush(ctx.err);
    assert_non_null(strstr(errb, "unexpected argument 'b'"));

    opts_init(o);
    char *ok[] = {"a", "--addr", "10.0.0.1:7400", "--json"};
    assert_int_equal(cli_parse(&ctx, &cmd, 4, ok, o, O_N, 1, 1, &a), CLI_CONTINUE);
    assert_string_equal(ctx.addr, "http://10.0.0.1:7400");
    assert_int_equal(o[O_JSON].count, 1);
    cli_args_free(&a, o, O_N);

    fclose(ctx.out);
    fclose(ctx.err);
    free(outb);
    free(errb);
    free(ctx.addr);
}

static void test_main_usage_errors(void **state)
{
    (void)state;
    /* Only paths that never reach the network. */
    char *a1[] = {"drover", "frobnicate"};
    assert_int_equal(cli_main(2, a1), CLI_EXIT_USAGE);
    char *a2[] = {"drover", "kv", "nope"};
    assert_int_equal(cli_main(3, a2), CLI_EXIT_USAGE);
    char *a3[] = {"drover", "apps", "--bogus"};
    assert_int_equal(cli_main(3, a3), CLI_EXIT_USAGE);
    char *a4[] = {"drover", "deploy", "x.json", "--var", "novalue"};
    assert_int_equal(cli_main(5, a4), CLI_EXIT_USAGE);
    char *a5[] = {"drover", "kv", "put", "k", "v", "--cas", "abc"};
    assert_int_equal(cli_main(7, a5), CLI_EXIT_USAGE);
    char *a6[] = {"drover", "kv", "get", "k", "--wait", "soon", "--index", "3"};
    assert_int_equal(cli_main(8, a6), CLI_EXIT_USAGE);
    char *a7[] = {"drover", "events", "--from", "-1"};
    assert_int_equal(cli_main(4, a7), CLI_EXIT_USAGE);
    char *a8[] = {"drover", "--addr"};
    assert_int_equal(cli_main(2, a8), CLI_EXIT_USAGE);
    char *a9[] = {"drover", "app"};
    assert_int_equal(cli_main(2, a9), CLI_EXIT_USAGE);
    char *a10[] = {"drover", "status", "--help"};
    assert_int_equal(cli_main(3, a10), CLI_EXIT_OK);
    char *a11[] = {"drover", "help", "kv", "get"};
    assert_int_equal(cli_main(4, a11), CLI_EXIT_OK);
    char *a12[] = {"drover", "--addr", "127.0.0.1:1", "kv", "--help"};
    assert_int_equal(cli_main(5, a12), CLI_EXIT_OK);
}

static void test_usage_lists_every_verb(void **state)
{
    (void)state;
    char *b = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&b, &n);
    cli_usage(f);
    fclose(f);
    const char *want[] = {"Processes:", "Apps:", "Config:", "Observe:", "\n  dev ",
                          "\n  server ", "\n  apps ", "\n  app show ID", "\n  app rm ID",
                          "\n  deploy FILE", "\n  versions ID", "\n  kv get KEY",
                          "\n  kv put KEY", "\n  kv del KEY", "\n  kv ls", "\n  events ",
                          "\n  status ", "DROVER_ADDR"};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        assert_non_null(strstr(b, want[i]));
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flags_anywhere),
        cmocka_unit_test(test_double_dash_and_stdin),
        cmocka_unit_test(test_unknown_flag_named),
        cmocka_unit_test(test_value_errors),
        cmocka_unit_test(test_last_value_wins_and_empty_value),
        cmocka_unit_test(test_help_and_addr),
        cmocka_unit_test(test_ctx_addr),
        cmocka_unit_test(test_var_parse),
        cmocka_unit_test(test_cli_parse_exit_codes),
        cmocka_unit_test(test_main_usage_errors),
        cmocka_unit_test(test_usage_lists_every_verb),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
