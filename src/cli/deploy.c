/* `drover deploy FILE`: fill the template client-side, send the spec, show
 * what the server made of it (new version, unchanged, every error), and
 * with --wait follow the deployment it started (deployments.c). */
#include "cli/cli.h"

#include "core/alloc.h"
#include "core/json.h"
#include "spec/spec.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---- rendering ---------------------------------------------------------- */

static void print_path_reason(FILE *f, const char *prefix, const json_t *e)
{
    const char *path = json_str(e, "path"), *reason = json_str(e, "reason");
    fprintf(f, "%s%s: %s\n", prefix, path ? path : "$", reason ? reason : "invalid");
}

void cli_deploy_print_invalid(const json_t *answer, FILE *err)
{
    json_t *errors = json_object_get(answer, "errors");
    size_t n = json_array_size(errors);
    if (n == 0) {
        const char *e = json_str(answer, "error");
        fprintf(err, "spec invalid: %s\n", e ? e : "(no reason given)");
        return;
    }
    fprintf(err, "spec invalid (%zu error%s):\n", n, n == 1 ? "" : "s");
    for (size_t i = 0; i < n; i++)
        print_path_reason(err, "  ", json_array_get(errors, i));
}

void cli_deploy_print_warnings(const json_t *answer, FILE *err)
{
    json_t *warnings = json_object_get(answer, "warnings");
    for (size_t i = 0; i < json_array_size(warnings); i++)
        print_path_reason(err, "warning: ", json_array_get(warnings, i));
}

/* The deployment id goes on the result line so `drover deployment wait`
 * can pick it up later; a canary says how much of the app it took. */
void cli_deploy_print_result(const json_t *answer, FILE *out, FILE *err)
{
    const char *id = json_str(answer, "id");
    char *version = cli_json_text(json_object_get(answer, "version"));
    const char *dep = json_str(answer, "deployment");
    json_t *canary = json_object_get(json_object_get(answer, "app"), "canary");
    bool is_canary = json_is_object(canary) && json_equal(json_object_get(canary, "version"),
                                                          json_object_get(answer, "version"));
    /* A missing "changed" means a new version: the conservative reading. */
    if (json_is_false(json_object_get(answer, "changed"))) {
        fprintf(out, "unchanged: %s is at version %s\n", id ? id : "?", version);
    } else if (is_canary) {
        char *pct = cli_json_text(json_object_get(canary, "percent"));
        char *n = cli_json_text(json_object_get(canary, "instances"));
        fprintf(out, "canary %s version %s: %s%% of the traffic, %s instance(s)%s%s%s\n",
                id ? id : "?", version, pct, n, dep ? " (deployment " : "", dep ? dep : "",
                dep ? ")" : "");
        free(pct);
        free(n);
    } else if (dep) {
        fprintf(out, "deployed %s version %s (deployment %s)\n", id ? id : "?", version, dep);
    } else {
        fprintf(out, "deployed %s version %s\n", id ? id : "?", version);
    }
    free(version);
    cli_deploy_print_warnings(answer, err);
}

void cli_deploy_print_diff(const json_t *answer, FILE *out)
{
    const char *id = json_str(answer, "id");
    json_t *cur = json_object_get(answer, "current_version");
    if (json_is_integer(cur))
        fprintf(out, "diff against %s version %lld:\n", id ? id : "?",
                (long long)json_integer_value(cur));
    else
        fprintf(out, "new app %s:\n", id ? id : "?");
    json_t *diff = json_object_get(answer, "diff");
    if (json_array_size(diff) == 0) {
        fputs("no changes\n", out);
        return;
    }
    for (size_t i = 0; i < json_array_size(diff); i++) {
        json_t *d = json_array_get(diff, i);
        const char *path = json_str(d, "path");
        const char *op = json_str(d, "op");
        json_t *oldv = json_object_get(d, "old"), *newv = json_object_get(d, "new");
        if (!path)
            path = "$";
        /* The op decides; without one, which sides exist does. */
        bool add = op ? strcmp(op, "add") == 0 : !oldv;
        bool remove = op ? strcmp(op, "remove") == 0 : !newv;
        char *o = cli_json_compact(oldv), *n = cli_json_compact(newv);
        if (add)
            fprintf(out, "+ %s: %s\n", path, n);
        else if (remove)
            fprintf(out, "- %s: %s\n", path, o);
        else
            fprintf(out, "~ %s: %s -> %s\n", path, o, n);
        free(o);
        free(n);
    }
}

int cli_var_parse(const char *arg, char **name, const char **value, err_t *err)
{
    const char *eq = strchr(arg, '=');
    if (!eq)
        return err_set(err, -EINVAL, "--var %s: expected NAME=VALUE", arg);
    if (eq == arg)
        return err_set(err, -EINVAL, "--var %s: empty variable name", arg);
    *name = xstrndup(arg, (size_t)(eq - arg));
    *value = eq + 1;
    return 0;
}

/* ---- verb --------------------------------------------------------------- */

/* spec_template_fill reports every missing variable, one per line; each
 * line gets its own "drover: " so none reads as a continuation. */
static void print_lines(cli_ctx_t *ctx, const char *msg)
{
    while (*msg) {
        size_t n = strcspn(msg, "\n");
        fprintf(ctx->err, "drover: %.*s\n", (int)n, msg);
        msg += n + (msg[n] ? 1 : 0);
    }
}

/* canary: 0 for a plain deploy, else the percentage (?canary=N). With
 * `wait`, the answer's deployment is followed to its end and decides the
 * exit code; an unchanged spec makes none, so there is nothing to wait
 * for. */
static int deploy_send(cli_ctx_t *ctx, const char *text, size_t len, bool dry_run, bool raw,
                       int canary, bool wait)
{
    http_client_resp_t resp;
    err_t err = {0};
    char path[64];
    snprintf(path, sizeof(path), "/v1/apps%s", dry_run ? "?dry_run=1" : "");
    if (canary)
        snprintf(path + strlen(path), sizeof(path) - strlen(path), "%ccanary=%d",
                 dry_run ? '&' : '?', canary);
    int rc = cli_api(ctx, "POST", path, "application/json", text, len, CLI_TIMEOUT_MS, &resp, &err);
    json_t *answer = NULL;
    if (resp.status > 0)
        answer = json_loadb(resp.body.data ? resp.body.data : "", resp.body.len, 0, NULL);
    int exit_code = CLI_EXIT_OK;
    if (rc < 0) {
        if (resp.status == 422 && answer)
            cli_deploy_print_invalid(answer, ctx->err);
        else
            cli_fail(ctx, "%s", err.msg);
        exit_code = CLI_EXIT_ERROR;
    } else if (!answer) {
        exit_code = cli_fail(ctx, "POST %s: answer is not JSON", path);
    } else if (raw) {
        cli_print_raw(ctx, &resp);
    } else if (!dry_run) {
        cli_deploy_print_result(answer, ctx->out, ctx->err);
    } else {
        /* What would be sent, then what it would change. */
        json_t *spec = json_loadb(text, len, 0, NULL);
        if (spec) {
            char *pretty = json_dumps(spec, JSON_INDENT(2));
            fprintf(ctx->out, "%s\n", pretty ? pretty : "null");
            free(pretty);
            json_decref(spec);
        } else {
            fwrite(text, 1, len, ctx->out);
            if (len == 0 || text[len - 1] != '\n')
                fputc('\n', ctx->out);
        }
        fputc('\n', ctx->out);
        cli_deploy_print_diff(answer, ctx->out);
        cli_deploy_print_warnings(answer, ctx->err);
    }
    const char *dep = exit_code == CLI_EXIT_OK && !dry_run ? json_str(answer, "deployment") : NULL;
    if (wait && dep) {
        fflush(ctx->out);
        char *id = xstrdup(dep);
        exit_code = cli_deployment_follow(ctx, id, raw ? CLI_FOLLOW_JSON : 0);
        free(id);
    }
    json_decref(answer);
    http_client_resp_free(&resp);
    return exit_code;
}

int cli_cmd_deploy(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {
        "deploy", "deploy FILE|- [--var NAME=VALUE]... [--wait] [--canary N%] [--dry-run] [--json]",
        "Create or update an app from a JSON spec. $name and ${name} placeholders in FILE are "
        "filled from --var before sending (a number goes in unquoted; $$ is a literal $). A "
        "spec equal to the current version makes no new version. --wait follows the "
        "deployment until it ends (exit 1 unless it succeeds); --canary runs the spec beside "
        "the current version with N% of the instances and traffic.",
        "drover deploy web.json --wait\n"
        "drover deploy web.json --var instances=3 --var image=nginx:1.25 --dry-run\n"
        "drover deploy web.json --canary 10% --wait\n"
        "sed s/v1/v2/ web.json | drover deploy -"};
    enum { O_VAR, O_DRY, O_JSON, O_NOTPL, O_WAIT, O_CANARY, O_N };
    cli_opt_t opts[O_N] = {
        [O_VAR] = CLI_LIST("var", "NAME=VALUE", "fill the template variable NAME"),
        [O_DRY] = CLI_FLAG("dry-run", "print the filled spec and its diff; store nothing"),
        [O_JSON] = CLI_FLAG("json", "print the API answer (with --wait, progress goes to stderr)"),
        [O_NOTPL] = CLI_FLAG("no-template", "send FILE as is, leaving every $ untouched"),
        [O_WAIT] = CLI_FLAG("wait", "follow the deployment until it ends; exit 1 unless it "
                                    "succeeds"),
        [O_CANARY] =
            CLI_VALUE("canary", "N%", "run it as a canary: N% (1..99) of instances and traffic"),
    };
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, opts, O_N, 1, 1, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    size_t n_vars = (size_t)opts[O_VAR].count;
    spec_var_t *vars = xcalloc(n_vars + 1, sizeof(*vars));
    buf_t text = BUF_INIT(CLI_MAX_SPEC);
    char *filled = NULL;
    size_t filled_len = 0;
    err_t err = {0};
    for (size_t i = 0; i < n_vars; i++) {
        char *name;
        if (cli_var_parse(opts[O_VAR].list[i], &name, &vars[i].value, &err) < 0) {
            rc = cli_usage_error(ctx, &cmd, "%s", err.msg);
            goto out;
        }
        vars[i].name = name;
    }
    if (opts[O_NOTPL].count && n_vars) {
        rc = cli_usage_error(ctx, &cmd, "--var and --no-template do not go together");
        goto out;
    }
    int canary = 0;
    if (opts[O_CANARY].value && cli_canary_parse(opts[O_CANARY].value, &canary, &err) < 0) {
        rc = cli_usage_error(ctx, &cmd, "%s", err.msg);
        goto out;
    }
    if (opts[O_WAIT].count && opts[O_DRY].count) {
        rc = cli_usage_error(ctx, &cmd, "--wait and --dry-run do not go together");
        goto out;
    }
    if (cli_read_input(args.pos[0], CLI_MAX_SPEC, &text, &err) < 0) {
        rc = cli_fail(ctx, "%s", err.msg);
        goto out;
    }
    if (opts[O_NOTPL].count) {
        filled = buf_steal(&text, &filled_len);
    } else if (spec_template_fill(text.data ? text.data : "", text.len, vars, n_vars, &filled,
                                  &filled_len, &err) < 0) {
        print_lines(ctx, err.msg);
        rc = CLI_EXIT_USAGE;
        goto out;
    }
    rc = deploy_send(ctx, filled, filled_len, opts[O_DRY].count > 0, opts[O_JSON].count > 0, canary,
                     opts[O_WAIT].count > 0);
out:
    for (size_t i = 0; i < n_vars; i++)
        free((char *)vars[i].name);
    free(vars);
    free(filled);
    buf_free(&text);
    cli_args_free(&args, opts, O_N);
    return rc;
}
