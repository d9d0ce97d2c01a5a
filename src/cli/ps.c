/* `drover ps [APP]`: every instance the agents report, where it runs and
 * in what state (GET /v1/instances). */
#include "cli/cli.h"

#include "core/alloc.h"
#include "core/json.h"

#include <stdlib.h>
#include <string.h>

#define PS_REASON_COLS 40
/* The agent calls a failed instance crash-looping from its third restart
 * in a row (src/agent/instance.c); the listing says so the same way. */
#define PS_CRASH_LOOP_RESTARTS 3

/* ---- rendering ---------------------------------------------------------- */

char *cli_instance_address(const json_t *inst)
{
    const char *host = json_str(inst, "host");
    if (!host || !*host)
        return xstrdup("-");
    buf_t b = BUF_INIT(0);
    buf_append_str(&b, host);
    json_t *ports = json_object_get(inst, "ports");
    for (size_t i = 0; i < json_array_size(ports); i++) {
        char *p = cli_json_text(json_array_get(ports, i));
        buf_printf(&b, "%s%s", i ? "," : ":", p);
        free(p);
    }
    return buf_steal(&b, NULL);
}

char *cli_instance_state(const json_t *inst)
{
    const char *state = json_str(inst, "state");
    if (!state)
        return xstrdup("-");
    json_t *r = json_object_get(inst, "restarts");
    if (strcmp(state, "failed") == 0 && json_is_integer(r) &&
        json_integer_value(r) >= PS_CRASH_LOOP_RESTARTS)
        return xasprintf("%s (crash loop)", state);
    return xstrdup(state);
}

/* Finished and killed instances ended because they were meant to; failed
 * and lost ones need a look, so they stay in the default listing. */
static bool ps_shown(const json_t *inst, bool all)
{
    const char *state = json_str(inst, "state");
    return all || !state || (strcmp(state, "finished") != 0 && strcmp(state, "killed") != 0);
}

static int ps_cmp(const void *a, const void *b)
{
    const json_t *x = *(const json_t *const *)a, *y = *(const json_t *const *)b;
    const char *ax = json_str(x, "app"), *ay = json_str(y, "app");
    int c = strcmp(ax ? ax : "", ay ? ay : "");
    if (c)
        return c;
    const char *ix = json_str(x, "id"), *iy = json_str(y, "id");
    return strcmp(ix ? ix : "", iy ? iy : "");
}

void cli_ps_table(const json_t *instances, bool all, int64_t now_ms, FILE *out)
{
    static const char *const hdr[] = {"id",    "app",   "version",  "node",  "address",
                                      "state", "since", "restarts", "reason"};
    size_t n = json_array_size(instances), k = 0;
    const json_t **rows = xcalloc(n ? n : 1, sizeof(*rows));
    for (size_t i = 0; i < n; i++) {
        const json_t *inst = json_array_get(instances, i);
        if (json_is_object(inst) && ps_shown(inst, all))
            rows[k++] = inst;
    }
    qsort(rows, k, sizeof(*rows), ps_cmp);
    cli_table_t t;
    cli_table_init(&t, 9, hdr);
    for (size_t i = 0; i < k; i++) {
        const json_t *inst = rows[i];
        char *version = cli_json_text(json_object_get(inst, "version"));
        char *addr = cli_instance_address(inst);
        char *state = cli_instance_state(inst);
        char since[32];
        cli_age_since(json_str(inst, "since"), now_ms, since, sizeof(since));
        char *restarts = cli_json_text(json_object_get(inst, "restarts"));
        json_t *r = json_object_get(inst, "reason");
        char *reason =
            json_is_string(r) && json_string_length(r)
                ? cli_value_display(json_string_value(r), json_string_length(r), PS_REASON_COLS)
                : xstrdup("-");
        const char *row[] = {json_str(inst, "id"),
                             json_str(inst, "app"),
                             version,
                             json_str(inst, "node"),
                             addr,
                             state,
                             since,
                             restarts,
                             reason};
        cli_table_add(&t, row);
        free(version);
        free(addr);
        free(state);
        free(restarts);
        free(reason);
    }
    cli_table_print(&t, out);
    cli_table_free(&t);
    free(rows);
}

/* ---- verb --------------------------------------------------------------- */

int cli_cmd_ps(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {
        "ps", "ps [APP] [--all] [--json]",
        "List instances (of APP, or of every app): node, address (host:port,...), state, how "
        "long in it, restarts and the last reason. Instances that ended as asked (finished, "
        "killed) are shown with --all only; a failed instance restarted 3 times or more in a "
        "row shows as \"failed (crash loop)\".",
        "drover ps\ndrover ps /production/web\ndrover ps --json | jq -r '.instances[].id'"};
    enum { O_ALL, O_JSON, O_N };
    cli_opt_t opts[O_N] = {
        [O_ALL] = CLI_FLAG("all", "also list finished and killed instances"),
        [O_JSON] = CLI_FLAG("json", "print the API answer ({\"instances\": [...]}, all of them)"),
    };
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, opts, O_N, 0, 1, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    buf_t path = BUF_INIT(0);
    buf_append_str(&path, "/v1/instances");
    if (args.n_pos) {
        buf_append_str(&path, "?app=");
        cli_url_escape(&path, args.pos[0], false);
    }
    http_client_resp_t resp;
    json_t *j = NULL;
    err_t err = {0};
    if (cli_api_json(ctx, "GET", path.data, NULL, 0, &resp, &j, &err) < 0) {
        rc = cli_fail(ctx, "%s", err.msg);
    } else if (args.n_pos && !opts[O_JSON].count &&
               json_array_size(json_object_get(j, "instances")) == 0 &&
               cli_app_exists(ctx, args.pos[0], &err) < 0) {
        /* A mistyped app would list nothing, like an app with no
         * instances; say which it is. */
        rc = cli_fail(ctx, "%s", err.msg);
    } else {
        if (opts[O_JSON].count)
            cli_print_raw(ctx, &resp);
        else
            cli_ps_table(json_object_get(j, "instances"), opts[O_ALL].count > 0, cli_now_ms(),
                         ctx->out);
        rc = CLI_EXIT_OK;
    }
    json_decref(j);
    http_client_resp_free(&resp);
    buf_free(&path);
    cli_args_free(&args, opts, O_N);
    return rc;
}
