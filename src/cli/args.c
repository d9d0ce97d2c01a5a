/* Argument parsing and per-verb help, shared by every verb. */
#include "cli/cli.h"

#include "core/alloc.h"
#include "core/str.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static cli_opt_t *args_find(cli_opt_t *opts, size_t n_opts, const char *name, size_t len)
{
    for (size_t i = 0; i < n_opts; i++)
        if (strlen(opts[i].name) == len && memcmp(opts[i].name, name, len) == 0)
            return &opts[i];
    return NULL;
}

/* Record one occurrence of an option that takes a value. */
static void args_store(cli_opt_t *o, const char *value)
{
    if (o->type == CLI_OPT_LIST) {
        o->list = xrealloc(o->list, sizeof(*o->list) * (size_t)(o->count + 1));
        o->list[o->count] = value;
    }
    o->value = value;
    o->count++;
}

/* Flags may come anywhere among the positionals (`drover kv get --json KEY`
 * and `drover kv get KEY --json` both work) because people type them in
 * either order; `--` is the escape for values that start with '-'. */
int cli_args_parse(int argc, char **argv, cli_opt_t *opts, size_t n_opts, cli_args_t *out,
                   err_t *err)
{
    memset(out, 0, sizeof(*out));
    for (size_t i = 0; i < n_opts; i++) {
        opts[i].count = 0;
        opts[i].value = NULL;
        opts[i].list = NULL;
    }
    out->pos = xcalloc((size_t)(argc > 0 ? argc : 1), sizeof(*out->pos));
    bool flags_done = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (flags_done || a[0] != '-' || strcmp(a, "-") == 0) {
            out->pos[out->n_pos++] = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            flags_done = true;
            continue;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            out->help = true;
            continue;
        }
        if (a[1] != '-') {
            cli_opt_t *s = NULL;
            for (size_t k = 0; a[2] == '\0' && k < n_opts && !s; k++)
                if (opts[k].short_name == a[1] && opts[k].type == CLI_OPT_FLAG)
                    s = &opts[k];
            if (!s)
                return err_set(err, -EINVAL,
                               "unknown flag %s (put `--` before a value that starts with '-')", a);
            s->count++;
            continue;
        }
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const char *value = eq ? eq + 1 : NULL;
        if (nlen == 4 && memcmp(name, "addr", 4) == 0) {
            if (!value) {
                if (i + 1 >= argc)
                    return err_set(err, -EINVAL, "flag --addr needs a value (URL)");
                value = argv[++i];
            }
            out->addr = value;
            continue;
        }
        cli_opt_t *o = args_find(opts, n_opts, name, nlen);
        if (!o)
            return err_set(err, -EINVAL, "unknown flag --%.*s", (int)nlen, name);
        if (o->type == CLI_OPT_FLAG) {
            if (value)
                return err_set(err, -EINVAL, "flag --%s takes no value", o->name);
            o->count++;
            continue;
        }
        if (!value) {
            if (i + 1 >= argc)
                return err_set(err, -EINVAL, "flag --%s needs a value (%s)", o->name,
                               o->metavar ? o->metavar : "VALUE");
            value = argv[++i];
        }
        args_store(o, value);
    }
    return 0;
}

void cli_args_free(cli_args_t *args, cli_opt_t *opts, size_t n_opts)
{
    free(args->pos);
    args->pos = NULL;
    args->n_pos = 0;
    for (size_t i = 0; i < n_opts; i++) {
        free(opts[i].list);
        opts[i].list = NULL;
    }
}

/* Word-wrap a paragraph: help text is written as one string per verb and
 * should read well in an 80-column terminal. */
static void args_wrap(const char *text, size_t width, FILE *out)
{
    size_t col = 0;
    const char *p = text;
    while (*p) {
        while (*p == ' ')
            p++;
        size_t n = strcspn(p, " ");
        if (n == 0)
            break;
        if (col > 0 && col + 1 + n > width) {
            fputc('\n', out);
            col = 0;
        } else if (col > 0) {
            fputc(' ', out);
            col++;
        }
        fwrite(p, 1, n, out);
        col += n;
        p += n;
    }
    fputc('\n', out);
}

void cli_cmd_help(const cli_cmd_t *cmd, const cli_opt_t *opts, size_t n_opts, FILE *out)
{
    fprintf(out, "usage: drover %s\n\n", cmd->usage);
    args_wrap(cmd->summary, 78, out);
    fputs("\nflags:\n", out);
    for (size_t i = 0; i < n_opts; i++) {
        char left[64];
        if (opts[i].metavar)
            snprintf(left, sizeof(left), "--%s %s", opts[i].name, opts[i].metavar);
        else if (opts[i].short_name)
            snprintf(left, sizeof(left), "-%c, --%s", opts[i].short_name, opts[i].name);
        else
            snprintf(left, sizeof(left), "--%s", opts[i].name);
        fprintf(out, "  %-18s %s%s\n", left, opts[i].help,
                opts[i].type == CLI_OPT_LIST ? " (repeatable)" : "");
    }
    fprintf(out, "  %-18s %s\n", "--addr URL",
            "API address (default $DROVER_ADDR or " CLI_DEFAULT_ADDR ")");
    fprintf(out, "  %-18s %s\n", "-h, --help", "show this help");
    fprintf(out, "\nexample:\n");
    const char *p = cmd->example;
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        fprintf(out, "  %.*s\n", (int)n, p);
        p += n + (nl ? 1 : 0);
    }
}

int cli_usage_error(cli_ctx_t *ctx, const cli_cmd_t *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("drover: ", ctx->err);
    vfprintf(ctx->err, fmt, ap);
    va_end(ap);
    fputc('\n', ctx->err);
    if (cmd)
        fprintf(ctx->err, "usage: drover %s\nrun `drover %s --help` for more\n", cmd->usage,
                cmd->name);
    return CLI_EXIT_USAGE;
}

int cli_fail(cli_ctx_t *ctx, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("drover: ", ctx->err);
    vfprintf(ctx->err, fmt, ap);
    va_end(ap);
    fputc('\n', ctx->err);
    return CLI_EXIT_ERROR;
}

int cli_parse(cli_ctx_t *ctx, const cli_cmd_t *cmd, int argc, char **argv, cli_opt_t *opts,
              size_t n_opts, size_t min_pos, size_t max_pos, cli_args_t *args)
{
    err_t err = {0};
    if (cli_args_parse(argc, argv, opts, n_opts, args, &err) < 0) {
        cli_args_free(args, opts, n_opts);
        /* Asking for help is never a usage error, whatever else is on the
         * line (`drover deploy --bogus --help`). */
        for (int i = 0; i < argc && strcmp(argv[i], "--") != 0; i++)
            if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
                cli_cmd_help(cmd, opts, n_opts, ctx->out);
                return CLI_EXIT_OK;
            }
        return cli_usage_error(ctx, cmd, "%s", err.msg);
    }
    if (args->help) {
        cli_cmd_help(cmd, opts, n_opts, ctx->out);
        cli_args_free(args, opts, n_opts);
        return CLI_EXIT_OK;
    }
    if (args->addr && cli_ctx_set_addr(ctx, args->addr, &err) < 0) {
        cli_args_free(args, opts, n_opts);
        return cli_usage_error(ctx, cmd, "%s", err.msg);
    }
    if (args->n_pos < min_pos || args->n_pos > max_pos) {
        int rc;
        if (args->n_pos < min_pos)
            rc = cli_usage_error(ctx, cmd, "missing argument");
        else
            rc = cli_usage_error(ctx, cmd, "unexpected argument '%s'", args->pos[max_pos]);
        cli_args_free(args, opts, n_opts);
        return rc;
    }
    return CLI_CONTINUE;
}

static void dispatch_list(const char *group, const cli_subcmd_t *subs, size_t n_subs, FILE *out)
{
    fprintf(out, "usage: drover %s <command> [args] [flags]\n\ncommands:\n", group);
    for (size_t i = 0; i < n_subs; i++)
        fprintf(out, "  %-22s %s\n", subs[i].usage, subs[i].summary);
    fprintf(out, "\nrun `drover %s <command> --help` for flags and examples\n", group);
}

int cli_dispatch(cli_ctx_t *ctx, const char *group, const cli_subcmd_t *subs, size_t n_subs,
                 int argc, char **argv)
{
    int i = 0;
    /* `drover kv --addr URL get KEY`: global flags may sit before the
     * sub-verb as they may before the verb. */
    while (i < argc && argv[i][0] == '-') {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            dispatch_list(group, subs, n_subs, ctx->out);
            return CLI_EXIT_OK;
        }
        const char *value = NULL;
        if (strcmp(argv[i], "--addr") == 0 && i + 1 < argc) {
            value = argv[i + 1];
            i += 2;
        } else if (str_has_prefix(argv[i], "--addr=")) {
            value = argv[i] + 7;
            i++;
        } else {
            fprintf(ctx->err, "drover: unknown flag %s\n", argv[i]);
            dispatch_list(group, subs, n_subs, ctx->err);
            return CLI_EXIT_USAGE;
        }
        err_t err = {0};
        if (cli_ctx_set_addr(ctx, value, &err) < 0) {
            fprintf(ctx->err, "drover: --addr: %s\n", err.msg);
            return CLI_EXIT_USAGE;
        }
    }
    if (i >= argc) {
        fprintf(ctx->err, "drover: %s needs a command\n", group);
        dispatch_list(group, subs, n_subs, ctx->err);
        return CLI_EXIT_USAGE;
    }
    for (size_t k = 0; k < n_subs; k++)
        if (strcmp(subs[k].name, argv[i]) == 0)
            return subs[k].run(ctx, argc - i - 1, argv + i + 1);
    fprintf(ctx->err, "drover: unknown command '%s %s'\n", group, argv[i]);
    dispatch_list(group, subs, n_subs, ctx->err);
    return CLI_EXIT_USAGE;
}
