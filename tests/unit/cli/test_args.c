/* cli argument parsing: flags anywhere, --, -, values, lists, errors. */
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
#include <unistd.h>

#include "cli/link_stubs.h"

/* push.c packs with the agent module's artifact_pack; the cli unit tests
 * do not link src/agent. */

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

/* A flag with a short form takes `-x` alone; other one-dash words stay
 * errors, and after `--` they are positionals. */
static void test_short_flags(void **state)
{
    (void)state;
    cli_opt_t o[2] = {CLI_FLAG_SHORT("follow", 'f', "follow"), CLI_VALUE("tail", "N", "tail")};
    cli_args_t a;
    err_t err = {0};
    char *ok[] = {"-f", "APP", "--follow", "--", "-f"};
    assert_int_equal(cli_args_parse(5, ok, o, 2, &a, &err), 0);
    assert_int_equal(o[0].count, 2);
    assert_int_equal(a.n_pos, 2);
    assert_string_equal(a.pos[0], "APP");
    assert_string_equal(a.pos[1], "-f");
    cli_args_free(&a, o, 2);
    const char *bad[] = {"-ff", "-t", "-x", "-F"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *argv[] = {(char *)bad[i]};
        assert_int_equal(cli_args_parse(1, argv, o, 2, &a, &err), -EINVAL);
        assert_non_null(strstr(err.msg, bad[i]));
        cli_args_free(&a, o, 2);
    }
    /* Help names both forms. */
    char *b = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&b, &n);
    cli_cmd_t cmd = {"x", "x", "x", "drover x"};
    cli_cmd_help(&cmd, o, 2, f);
    fclose(f);
    assert_non_null(strstr(b, "\n  -f, --follow       follow\n"));
    assert_non_null(strstr(b, "\n  --tail N           tail\n"));
    free(b);
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

/* Run cli_main with stdout and stderr captured (it writes to the real
 * streams, as the binary does). */
static int run_main(int argc, char **argv, char **out, char **err)
{
    fflush(stdout);
    fflush(stderr);
    FILE *fo = tmpfile(), *fe = tmpfile();
    assert_non_null(fo);
    assert_non_null(fe);
    int so = dup(1), se = dup(2);
    dup2(fileno(fo), 1);
    dup2(fileno(fe), 2);
    int rc = cli_main(argc, argv);
    fflush(stdout);
    fflush(stderr);
    dup2(so, 1);
    dup2(se, 2);
    close(so);
    close(se);
    FILE *fs[2] = {fo, fe};
    char **dst[2] = {out, err};
    for (int i = 0; i < 2; i++) {
        long n = ftell(fs[i]);
        *dst[i] = xcalloc((size_t)n + 1, 1);
        rewind(fs[i]);
        assert_int_equal(fread(*dst[i], 1, (size_t)n, fs[i]), (size_t)n);
        fclose(fs[i]);
    }
    return rc;
}

/* Paths that never reach the network: the exit code, and the message
 * naming the problem on stderr with nothing on stdout. */
static void test_main_usage_errors(void **state)
{
    (void)state;
    struct {
        int argc;
        char *argv[9];
        int rc;
        const char *err; /* substring of stderr */
    } cases[] = {
        {2, {"drover", "frobnicate"}, 2, "drover: unknown command 'frobnicate'"},
        {3, {"drover", "kv", "nope"}, 2, "drover: unknown command 'kv nope'"},
        {3, {"drover", "apps", "--bogus"}, 2, "drover: unknown flag --bogus\nusage: drover apps"},
        {5,
         {"drover", "deploy", "x.json", "--var", "novalue"},
         2,
         "--var novalue: expected NAME=VALUE"},
        {4,
         {"drover", "deploy", "/nonexistent/x.json", "--no-template"},
         1,
         "drover: cannot open /nonexistent/x.json"},
        {7, {"drover", "kv", "put", "k", "v", "--cas", "abc"}, 2, "--cas abc: expected a revision"},
        {8,
         {"drover", "kv", "get", "k", "--wait", "soon", "--index", "3"},
         2,
         "--wait soon: expected a duration"},
        {5, {"drover", "kv", "get", "k", "--wait=5s"}, 2, "--wait needs --index"},
        {4, {"drover", "events", "--from", "-1"}, 2, "--from -1: expected a revision"},
        {2, {"drover", "--addr"}, 2, "--addr needs a value"},
        {3, {"drover", "--addr=", "apps"}, 2, "empty API address"},
        {2, {"drover", "app"}, 2, "drover: app needs a command"},
        {3, {"drover", "app", "show"}, 2, "drover: missing argument\nusage: drover app show ID"},
        {5, {"drover", "app", "show", "a", "b"}, 2, "unexpected argument 'b'"},
        {4, {"drover", "--addr", "127.0.0.1:9", "dev"}, 2, "'dev' must be the first argument"},
        {3, {"drover", "help", "nope"}, 2, "unknown command 'nope'"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *out, *err;
        int rc = run_main(cases[i].argc, cases[i].argv, &out, &err);
        if (rc != cases[i].rc || !strstr(err, cases[i].err) || *out)
            fail_msg("case %zu (%s): rc %d, stdout [%s], stderr [%s]", i, cases[i].argv[1], rc, out,
                     err);
        free(out);
        free(err);
    }
}

static void test_main_help(void **state)
{
    (void)state;
    struct {
        int argc;
        char *argv[6];
        const char *out;
    } cases[] = {
        {3, {"drover", "status", "--help"}, "usage: drover status [--json]\n"},
        {4, {"drover", "help", "kv", "get"}, "usage: drover kv get KEY"},
        {5, {"drover", "--addr", "127.0.0.1:1", "kv", "--help"}, "kv put KEY VALUE|-"},
        {3, {"drover", "app", "-h"}, "app versions ID"},
        {2, {"drover", "help"}, "Processes:"},
        {2, {"drover", "--help"}, "Observe:"},
        {4, {"drover", "deploy", "--help", "--bogus"}, "--var NAME=VALUE"},
        {3, {"drover", "ps", "--help"}, "usage: drover ps [APP] [--all] [--json]\n"},
        {3, {"drover", "logs", "-h"}, "\n  -f, --follow       keep printing"},
        {3, {"drover", "help", "nodes"}, "usage: drover nodes [--json]\n"},
        {3, {"drover", "push", "--help"}, "usage: drover push DIR [--json]\n"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *out, *err;
        int rc = run_main(cases[i].argc, cases[i].argv, &out, &err);
        if (rc != 0 || !strstr(out, cases[i].out) || *err)
            fail_msg("case %zu: rc %d, stdout [%s], stderr [%s]", i, rc, out, err);
        /* Help fits a terminal. */
        for (char *l = out; *l;) {
            size_t n = strcspn(l, "\n");
            if (n > 100)
                fail_msg("case %zu: help line over 100 columns: %.*s", i, (int)n, l);
            l += n + (l[n] ? 1 : 0);
        }
        free(out);
        free(err);
    }
}

/* A transport failure is exit 1 with the address and a hint. */
static void test_main_transport_error(void **state)
{
    (void)state;
    char *argv[] = {"drover", "--addr", "http://127.0.0.1:1", "status"};
    char *out, *err;
    assert_int_equal(run_main(4, argv, &out, &err), CLI_EXIT_ERROR);
    assert_string_equal(out, "");
    assert_non_null(strstr(err, "drover: "));
    assert_non_null(strstr(err, "127.0.0.1:1"));
    assert_non_null(strstr(err, "is drover running"));
    free(out);
    free(err);
}

static void test_usage_lists_every_verb(void **state)
{
    (void)state;
    char *b = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&b, &n);
    cli_usage(f);
    fclose(f);
    const char *want[] = {
        "Processes:",      "Apps:",          "Config:",         "Observe:",       "\n  dev ",
        "\n  server ",     "\n  apps ",      "\n  app show ID", "\n  app rm ID",  "\n  deploy FILE",
        "\n  versions ID", "\n  kv get KEY", "\n  kv put KEY",  "\n  kv del KEY", "\n  kv ls",
        "\n  events ",     "\n  status ",    "DROVER_ADDR",     "Instances:",     "\n  ps ",
        "\n  logs ",       "\n  nodes ",     "\n  push DIR",    "\n  agent "};
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
        cmocka_unit_test(test_short_flags),
        cmocka_unit_test(test_help_and_addr),
        cmocka_unit_test(test_ctx_addr),
        cmocka_unit_test(test_var_parse),
        cmocka_unit_test(test_cli_parse_exit_codes),
        cmocka_unit_test(test_main_usage_errors),
        cmocka_unit_test(test_main_help),
        cmocka_unit_test(test_main_transport_error),
        cmocka_unit_test(test_usage_lists_every_verb),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
