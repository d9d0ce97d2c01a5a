/* Worker apps from the command line: `drover app pool` (pin or show the
 * engine's pool on every node) and `drover crashlog ls|show` (what the
 * engine kept of workers that died).
 *
 * Pool state and crashlogs live on the nodes; the API redirects
 * /v1/instances/<id>/{pool,crashlogs} to the agent that runs the
 * instance, so each call here is two requests: the API's 307, then the
 * agent. A node that cannot be reached is named in the output and the
 * others are still shown. */
#include "cli/cli.h"

#include "core/alloc.h"
#include "core/json.h"
#include "core/str.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---- pure parts --------------------------------------------------------- */

int cli_pool_arg(const char *s, int64_t *out)
{
    if (strcmp(s, "auto") == 0 || strcmp(s, "automatic") == 0) {
        *out = 0;
        return 0;
    }
    return str_to_i64(s, 0, INT32_MAX, out) ? -EINVAL : 0;
}

/* "3 active, 1 spawning" from {"active": 3, "spawning": 1, ...}: states
 * with no worker are left out; "none" when there is none at all. */
void cli_pool_workers_text(const json_t *by_state, char *out, size_t n)
{
    size_t w = 0;
    out[0] = '\0';
    const char *state;
    json_t *v;
    json_object_foreach((json_t *)by_state, state, v)
    {
        if (!json_is_integer(v) || json_integer_value(v) <= 0 || w >= n ||
            strcmp(state, "total") == 0)
            continue;
        int k = snprintf(out + w, n - w, "%s%lld %s", w ? ", " : "",
                         (long long)json_integer_value(v), state);
        if (k < 0)
            break;
        w += (size_t)k < n - w ? (size_t)k : n - w - 1;
    }
    if (!w)
        snprintf(out, n, "none");
}

/* Newest first: the one a human looks at is the last crash. */
static int crash_at_cmp(const void *x, const void *y)
{
    const char *a = json_str(*(json_t *const *)x, "at"), *b = json_str(*(json_t *const *)y, "at");
    return strcmp(b ? b : "", a ? a : "");
}

/* ---- node calls --------------------------------------------------------- */

/* One request to an instance's node-held path, following the API's 307 to
 * the agent. Same results as cli_api. */
static int node_call(cli_ctx_t *ctx, const char *method, const char *inst, const char *sub,
                     const char *body, http_client_resp_t *resp, err_t *err)
{
    buf_t p = BUF_INIT(0);
    buf_append_str(&p, "/v1/instances/");
    cli_url_escape(&p, inst, false);
    buf_append_str(&p, "/");
    buf_append_str(&p, sub);
    size_t len = body ? strlen(body) : 0;
    int rc = cli_api(ctx, method, p.data, body ? "application/json" : NULL, body, len,
                     CLI_TIMEOUT_MS, resp, err);
    buf_free(&p);
    if (rc != -EPROTO || resp->status != 307)
        return rc;
    char *loc = http_client_resp_header(resp, "Location");
    http_client_resp_free(resp);
    http_client_resp_init(resp, CLI_MAX_RESPONSE);
    if (!loc)
        return err_set(err, -EPROTO, "instance %s: redirect without a Location", inst);
    http_header_t hdr[2] = {{"Accept", "application/json"}, {"Content-Type", "application/json"}};
    err_t terr = {0};
    rc =
        http_client_request(method, loc, hdr, body ? 2 : 1, body, len, CLI_TIMEOUT_MS, resp, &terr);
    if (rc < 0)
        rc = err_set(err, rc, "node of %s (%s): %s", inst, loc, terr.msg);
    else if (resp->status < 200 || resp->status > 299) {
        char msg[ERR_MSG_MAX];
        cli_error_message(resp->status, resp->body.data, resp->body.len, msg, sizeof(msg));
        rc = err_set(err, -EPROTO, "%s", msg);
    }
    free(loc);
    return rc;
}

static int node_json(cli_ctx_t *ctx, const char *method, const char *inst, const char *sub,
                     const char *body, json_t **out, err_t *err)
{
    http_client_resp_t resp;
    *out = NULL;
    int rc = node_call(ctx, method, inst, sub, body, &resp, err);
    if (!rc) {
        err_t perr = {0};
        *out = json_parse(resp.body.data ? resp.body.data : "", resp.body.len, &perr);
        if (!*out)
            rc = err_set(err, -EPROTO, "instance %s: %s answer is not JSON: %s", inst, sub,
                         perr.msg);
    }
    http_client_resp_free(&resp);
    return rc;
}

/* The app's instances ({"instances": [...]}), or NULL after printing why. */
static json_t *app_instances(cli_ctx_t *ctx, const char *app)
{
    err_t err = {0};
    if (cli_app_exists(ctx, app, &err) < 0) {
        cli_fail(ctx, "%s", err.msg);
        return NULL;
    }
    buf_t p = BUF_INIT(0);
    buf_append_str(&p, "/v1/instances?app=");
    cli_url_escape(&p, app, true);
    http_client_resp_t resp;
    json_t *j = NULL;
    if (cli_api_json(ctx, "GET", p.data, NULL, 0, &resp, &j, &err) < 0)
        cli_fail(ctx, "%s", err.msg);
    http_client_resp_free(&resp);
    buf_free(&p);
    json_t *list = j ? json_incref(json_object_get(j, "instances")) : NULL;
    json_decref(j);
    return list;
}

/* ---- drover app pool ---------------------------------------------------- */

static int pool_pin(cli_ctx_t *ctx, const char *app, int64_t n, bool raw)
{
    char *path = cli_app_path(app, "/pool");
    char body[48];
    snprintf(body, sizeof(body), "{\"workers\": %lld}", (long long)n);
    http_client_resp_t resp;
    err_t err = {0};
    json_t *j = NULL;
    int rc = CLI_EXIT_OK;
    if (cli_api_json(ctx, "POST", path, body, strlen(body), &resp, &j, &err) < 0)
        rc = cli_fail(ctx, "%s", err.msg);
    else if (raw)
        cli_print_raw(ctx, &resp);
    else if (n)
        fprintf(ctx->out, "app %s: pool pinned to %lld worker(s) on each node\n", json_str(j, "id"),
                (long long)n);
    else
        fprintf(ctx->out, "app %s: pool sized automatically\n", json_str(j, "id"));
    json_decref(j);
    http_client_resp_free(&resp);
    free(path);
    return rc;
}

static int pool_show(cli_ctx_t *ctx, const char *app, bool raw)
{
    json_t *list = app_instances(ctx, app);
    if (!list)
        return CLI_EXIT_ERROR;
    static const char *const hdr[] = {"NODE",   "INSTANCE", "WORKERS", "QUEUE",
                                      "SERVED", "REFUSED",  "CRASHES", "PIN"};
    cli_table_t t;
    cli_table_init(&t, 8, hdr);
    json_t *all = json_array();
    int rc = CLI_EXIT_OK;
    size_t i;
    json_t *in;
    json_array_foreach(list, i, in)
    {
        const char *id = json_str(in, "id"), *node = json_str(in, "node");
        if (!id)
            continue;
        err_t err = {0};
        json_t *st = NULL;
        if (node_json(ctx, "GET", id, "pool", NULL, &st, &err) < 0) {
            fprintf(ctx->err, "drover: %s\n", err.msg);
            rc = CLI_EXIT_ERROR;
            continue;
        }
        json_object_set_new(st, "instance", json_string(id));
        if (node)
            json_object_set_new(st, "node", json_string(node));
        char workers[128], queue[48], served[24], refused[24], crashes[24], pin[24];
        cli_pool_workers_text(json_object_get(st, "workers"), workers, sizeof(workers));
        if (json_is_object(json_object_get(st, "spare"))) {
            size_t wl = strlen(workers);
            snprintf(workers + wl, sizeof(workers) - wl, " (spare parked)");
        }
        snprintf(queue, sizeof(queue), "%lld/%lld",
                 (long long)json_integer_value(json_object_get(st, "queue")),
                 (long long)json_integer_value(json_object_get(st, "queue_limit")));
        json_t *tot = json_object_get(st, "totals");
        snprintf(served, sizeof(served), "%lld",
                 (long long)json_integer_value(json_object_get(tot, "served")));
        snprintf(refused, sizeof(refused), "%lld",
                 (long long)json_integer_value(json_object_get(tot, "refused")));
        snprintf(crashes, sizeof(crashes), "%lld",
                 (long long)json_integer_value(json_object_get(tot, "crashes")));
        json_int_t p = json_integer_value(json_object_get(st, "pin"));
        if (p)
            snprintf(pin, sizeof(pin), "%lld", (long long)p);
        else
            snprintf(pin, sizeof(pin), "auto");
        const char *cells[] = {node ? node : "-", id,      workers, queue, served,
                               refused,           crashes, pin};
        cli_table_add(&t, cells);
        json_array_append_new(all, st);
    }
    if (raw) {
        char *text = json_dumps(all, JSON_INDENT(2));
        fprintf(ctx->out, "%s\n", text);
        free(text);
    } else if (!json_array_size(list)) {
        fprintf(ctx->out, "app %s runs on no node\n", app);
    } else {
        cli_table_print(&t, ctx->out);
    }
    cli_table_free(&t);
    json_decref(all);
    json_decref(list);
    return rc;
}

int cli_app_pool(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {
        "app pool", "app pool ID [N|auto] [--json]",
        "Pin a worker app's pool to N workers on each node (auto: sized by load again), or "
        "without N show its pool on every node.",
        "drover app pool /production/resize 4\ndrover app pool /production/resize auto\n"
        "drover app pool /production/resize"};
    cli_opt_t opts[] = {CLI_FLAG("json", "print the answers as JSON")};
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, opts, 1, 1, 2, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    if (args.n_pos == 2) {
        int64_t n = 0;
        if (cli_pool_arg(args.pos[1], &n))
            rc = cli_usage_error(
                ctx, &cmd, "N: expected a number of workers >= 0 or auto, got \"%s\"", args.pos[1]);
        else
            rc = pool_pin(ctx, args.pos[0], n, opts[0].count > 0);
    } else {
        rc = pool_show(ctx, args.pos[0], opts[0].count > 0);
    }
    cli_args_free(&args, opts, 1);
    return rc;
}

/* ---- drover crashlog ---------------------------------------------------- */

/* Every crashlog of the app's instances, newest first, each with
 * "instance" (and "node") added. NULL after printing why. */
static json_t *crashlogs_all(cli_ctx_t *ctx, const char *app, int *rc)
{
    json_t *list = app_instances(ctx, app);
    if (!list) {
        *rc = CLI_EXIT_ERROR;
        return NULL;
    }
    json_t *all = json_array();
    size_t i;
    json_t *in;
    json_array_foreach(list, i, in)
    {
        const char *id = json_str(in, "id");
        if (!id)
            continue;
        err_t err = {0};
        json_t *cl = NULL;
        if (node_json(ctx, "GET", id, "crashlogs", NULL, &cl, &err) < 0) {
            fprintf(ctx->err, "drover: %s\n", err.msg);
            *rc = CLI_EXIT_ERROR;
            continue;
        }
        json_t *arr = json_is_array(cl) ? cl : json_object_get(cl, "crashlogs");
        size_t k;
        json_t *c;
        json_array_foreach(arr, k, c)
        {
            json_t *e = json_deep_copy(c);
            json_object_set_new(e, "instance", json_string(id));
            if (json_str(in, "node"))
                json_object_set_new(e, "node", json_string(json_str(in, "node")));
            json_array_append_new(all, e);
        }
        json_decref(cl);
    }
    json_decref(list);
    size_t n = json_array_size(all);
    if (n > 1) {
        json_t **v = xcalloc(n, sizeof(*v));
        for (size_t k = 0; k < n; k++)
            v[k] = json_incref(json_array_get(all, k));
        qsort(v, n, sizeof(*v), crash_at_cmp);
        json_array_clear(all);
        for (size_t k = 0; k < n; k++)
            json_array_append_new(all, v[k]);
        free(v);
    }
    return all;
}

static int crashlog_ls(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {"crashlog ls", "crashlog ls APP [--json]",
                                  "List what the engine kept of a worker app's workers that died, "
                                  "newest first, on every node.",
                                  "drover crashlog ls /production/resize"};
    cli_opt_t opts[] = {CLI_FLAG("json", "print them as JSON")};
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, opts, 1, 1, 1, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    rc = CLI_EXIT_OK;
    json_t *all = crashlogs_all(ctx, args.pos[0], &rc);
    if (all && opts[0].count) {
        char *text = json_dumps(all, JSON_INDENT(2));
        fprintf(ctx->out, "%s\n", text);
        free(text);
    } else if (all && !json_array_size(all)) {
        fprintf(ctx->out, "no crashlogs for %s\n", args.pos[0]);
    } else if (all) {
        static const char *const hdr[] = {"ID", "AGE", "NODE", "INSTANCE", "LINES", "REASON"};
        cli_table_t t;
        cli_table_init(&t, 6, hdr);
        int64_t now = cli_now_ms();
        size_t i;
        json_t *e;
        json_array_foreach(all, i, e)
        {
            char age[32], lines[24];
            cli_age_since(json_str(e, "at"), now, age, sizeof(age));
            snprintf(lines, sizeof(lines), "%lld",
                     (long long)json_integer_value(json_object_get(e, "lines")));
            const char *id = json_str(e, "id"), *node = json_str(e, "node"),
                       *why = json_str(e, "reason");
            const char *cells[] = {id ? id : "-",           age,   node ? node : "-",
                                   json_str(e, "instance"), lines, why ? why : "-"};
            cli_table_add(&t, cells);
        }
        cli_table_print(&t, ctx->out);
        cli_table_free(&t);
    }
    json_decref(all);
    cli_args_free(&args, opts, 1);
    return rc;
}

static int crashlog_show(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {
        "crashlog show", "crashlog show APP [CRASHLOG-ID]",
        "Print one crashlog of a worker app: the last lines its worker wrote before it died "
        "(the newest crash when no id is given).",
        "drover crashlog show /production/resize\ndrover crashlog show /production/resize 3"};
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, NULL, 0, 1, 2, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    rc = CLI_EXIT_OK;
    json_t *all = crashlogs_all(ctx, args.pos[0], &rc);
    const json_t *pick = NULL;
    size_t i;
    json_t *e;
    json_array_foreach(all, i, e)
    {
        const char *id = json_str(e, "id");
        char idtext[32];
        if (!id && json_is_integer(json_object_get(e, "id"))) {
            snprintf(idtext, sizeof(idtext), "%lld",
                     (long long)json_integer_value(json_object_get(e, "id")));
            id = idtext;
        }
        if (!pick && (args.n_pos == 1 || (id && strcmp(id, args.pos[1]) == 0)))
            pick = e;
    }
    if (all && !pick) {
        rc = cli_fail(ctx, args.n_pos == 2 ? "app %s has no crashlog %s" : "no crashlogs for %s",
                      args.pos[0], args.n_pos == 2 ? args.pos[1] : "");
    } else if (pick) {
        char sub[96];
        const json_t *idv = json_object_get(pick, "id");
        if (json_is_integer(idv))
            snprintf(sub, sizeof(sub), "crashlogs/%lld", (long long)json_integer_value(idv));
        else
            snprintf(sub, sizeof(sub), "crashlogs/%s", json_string_value(idv));
        http_client_resp_t resp;
        err_t err = {0};
        if (node_call(ctx, "GET", json_str(pick, "instance"), sub, NULL, &resp, &err) < 0)
            rc = cli_fail(ctx, "%s", err.msg);
        else if (resp.body.len)
            fwrite(resp.body.data, 1, resp.body.len, ctx->out);
        http_client_resp_free(&resp);
    }
    json_decref(all);
    cli_args_free(&args, NULL, 0);
    return rc;
}

int cli_cmd_crashlog(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_subcmd_t subs[] = {
        {"ls", "crashlog ls APP", "list a worker app's crashlogs, newest first", crashlog_ls},
        {"show", "crashlog show APP [ID]", "print one crashlog (the newest by default)",
         crashlog_show},
    };
    return cli_dispatch(ctx, "crashlog", subs, sizeof(subs) / sizeof(subs[0]), argc, argv);
}
