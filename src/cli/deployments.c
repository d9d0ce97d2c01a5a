/* `drover deployments`, `drover deployment show|cancel|wait`, the app
 * actions (`scale`, `rollback`, `promote`, `abort`, `restart`) and the
 * follower behind every `--wait`: a loop of blocking reads of one
 * deployment (GET /v1/deployments/<id>?index=N&wait=30s) that prints what
 * changed until the deployment ends. */
#include "cli/cli.h"

#include "core/alloc.h"
#include "core/json.h"
#include "core/str.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* How long one blocking read may wait on the server; the request's own
 * timeout leaves it room to answer. */
#define DEP_WAIT            "30s"
#define DEP_WAIT_TIMEOUT_MS (30000L + 30000L)
/* Without an X-Drover-Index to block on, the follower polls this often. */
#define DEP_POLL_MS 1000

/* ---- rendering ---------------------------------------------------------- */

int cli_canary_parse(const char *arg, int *percent, err_t *err)
{
    char num[8];
    size_t len = arg ? strlen(arg) : 0;
    if (len && arg[len - 1] == '%')
        len--;
    int64_t v;
    if (len == 0 || len >= sizeof(num))
        return err_set(err, -EINVAL, "--canary %s: expected a percentage 1..99 (10 or 10%%)",
                       arg ? arg : "");
    memcpy(num, arg, len);
    num[len] = '\0';
    if (str_to_i64(num, 1, 99, &v) < 0)
        return err_set(err, -EINVAL, "--canary %s: expected a percentage 1..99 (10 or 10%%)", arg);
    *percent = (int)v;
    return 0;
}

/* An integer member, or `dflt` when it is missing or not an integer. */
static long long dep_int(const json_t *obj, const char *key, long long dflt)
{
    json_t *v = json_object_get(obj, key);
    return json_is_integer(v) ? (long long)json_integer_value(v) : dflt;
}

static bool dep_is_canary(const json_t *dep)
{
    const char *kind = json_str(dep, "kind");
    return kind && strcmp(kind, "canary") == 0;
}

/* Server text (reasons, step messages) shown on one line whatever it holds. */
static char *dep_clean(const char *s)
{
    char *c = xstrdup(s ? s : "");
    for (char *p = c; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    return c;
}

/* The follower, the table and `show` say the same thing about progress in
 * different lengths: `full` is the follower's wording, else the table's. */
static char *dep_progress_text(const json_t *dep, bool full)
{
    json_t *p = json_object_get(dep, "progress");
    json_t *t = json_object_get(dep, "target");
    if (!json_is_object(p))
        return xstrdup(full ? "waiting for the scheduler" : "-");
    buf_t b = BUF_INIT(0);
    long long old = dep_int(p, "old", 0);
    if (dep_is_canary(dep)) {
        /* The current version keeps running beside a canary; only what
         * still has to go is worth a number. */
        buf_printf(&b, full ? "%lld/%lld canary healthy" : "%lld/%lld canary",
                   dep_int(p, "canary_healthy", 0), dep_int(t, "canary_instances", 0));
        if (old > 0)
            buf_printf(&b, full ? ", %lld old left" : ", %lld old", old);
    } else
        buf_printf(&b, full ? "%lld/%lld new healthy, %lld old left" : "%lld/%lld new, %lld old",
                   dep_int(p, "new_healthy", 0), dep_int(t, "instances", 0), old);
    long long unplaced = dep_int(p, "unplaced", 0);
    if (unplaced > 0)
        buf_printf(&b, full ? ", %lld waiting for a node" : ", %lld unplaced", unplaced);
    return buf_steal(&b, NULL);
}

char *cli_deployment_progress(const json_t *dep)
{
    return dep_progress_text(dep, true);
}

char *cli_deployment_versions(const json_t *dep, const char *sep)
{
    char *to = cli_json_text(json_object_get(dep, "version"));
    json_t *from = json_object_get(dep, "from_version");
    if (!json_is_integer(from))
        return to;
    char *s = xasprintf("%lld%s%s", (long long)json_integer_value(from), sep, to);
    free(to);
    return s;
}

/* "12.3 s" under a minute (deployments are usually that quick and the
 * tenths matter), else "2m 5s". */
static void dep_elapsed(const json_t *dep, char *out, size_t n)
{
    int64_t start, end;
    const char *fin = json_str(dep, "finished_at");
    if (!fin)
        fin = json_str(dep, "updated_at");
    if (cli_time_parse(json_str(dep, "created_at"), &start) < 0 || cli_time_parse(fin, &end) < 0) {
        out[0] = '\0';
        return;
    }
    int64_t ms = end > start ? end - start : 0;
    if (ms < 60000)
        snprintf(out, n, "%.1f s", (double)ms / 1000.0);
    else
        cli_duration_format(ms / 1000, out, n);
}

char *cli_deployment_result(const json_t *dep)
{
    const char *status = json_str(dep, "status");
    const char *id = json_str(dep, "id");
    if (!id)
        id = "?";
    if (!status || strcmp(status, "running") == 0)
        return NULL;
    if (strcmp(status, "succeeded") == 0) {
        char el[32];
        dep_elapsed(dep, el, sizeof(el));
        return el[0] ? xasprintf("deployment %s succeeded in %s", id, el)
                     : xasprintf("deployment %s succeeded", id);
    }
    if (strcmp(status, "cancelled") == 0)
        return xasprintf("deployment %s cancelled", id);
    if (strcmp(status, "superseded") == 0)
        return xasprintf("deployment %s superseded by a newer change to %s", id,
                         json_str(dep, "app") ? json_str(dep, "app") : "the app");
    char *reason = dep_clean(json_str(dep, "reason") ? json_str(dep, "reason") : "no reason given");
    char *st = dep_clean(status);
    /* With autoRollback the server names the deployment taking the app
     * back; say so, it is the next thing to follow. */
    const char *rb = json_str(dep, "rolled_back_by");
    char *s =
        rb ? xasprintf("deployment %s %s: %s (rolling back: deployment %s)", id, st, reason, rb)
           : xasprintf("deployment %s %s: %s", id, st, reason);
    free(reason);
    free(st);
    return s;
}

void cli_deployments_table(const json_t *deps, int64_t now_ms, FILE *out)
{
    static const char *const hdr[] = {"id", "app", "kind", "version", "status", "progress", "age"};
    cli_table_t t;
    cli_table_init(&t, 7, hdr);
    size_t i;
    json_t *d;
    json_array_foreach(deps, i, d)
    {
        char *versions = cli_deployment_versions(d, "->");
        char *progress = dep_progress_text(d, false);
        char age[32];
        cli_age_since(json_str(d, "created_at"), now_ms, age, sizeof(age));
        const char *row[] = {json_str(d, "id"),
                             json_str(d, "app"),
                             json_str(d, "kind"),
                             versions,
                             json_str(d, "status"),
                             progress,
                             age};
        cli_table_add(&t, row);
        free(versions);
        free(progress);
    }
    cli_table_print(&t, out);
    cli_table_free(&t);
}

static void dep_line(FILE *out, const char *label, const char *value)
{
    char l[32];
    snprintf(l, sizeof(l), "%s:", label);
    fprintf(out, "%-11s %s\n", l, value ? value : "-");
}

static void dep_time(FILE *out, const char *label, const char *ts, int64_t now_ms)
{
    char age[32];
    cli_age_since(ts, now_ms, age, sizeof(age));
    char *s = ts ? xasprintf("%s (%s)", ts, age) : xstrdup("-");
    dep_line(out, label, s);
    free(s);
}

void cli_placement_print(const json_t *placement, FILE *out)
{
    if (!json_is_object(placement))
        return;
    char *summary = dep_clean(json_str(placement, "summary"));
    long long waiting = dep_int(placement, "waiting", -1);
    char *s = waiting >= 0 ? xasprintf("%lld waiting for a node: %s", waiting, summary)
                           : xstrdup(summary);
    dep_line(out, "placement", s);
    free(s);
    free(summary);
    size_t i;
    json_t *n;
    json_array_foreach(json_object_get(placement, "nodes"), i, n)
    {
        char *node = dep_clean(json_str(n, "node") ? json_str(n, "node") : "?");
        char *reason = dep_clean(json_str(n, "reason"));
        fprintf(out, "  - %s: %s\n", node, reason);
        free(node);
        free(reason);
    }
}

/* What `deployment show` prints: the summary first, every number second,
 * then the steps, newest last as they happened. */
void cli_deployment_show(const json_t *dep, int64_t now_ms, FILE *out)
{
    dep_line(out, "id", json_str(dep, "id"));
    dep_line(out, "app", json_str(dep, "app"));
    dep_line(out, "kind", json_str(dep, "kind"));
    char *versions = cli_deployment_versions(dep, " -> ");
    if (!json_is_integer(json_object_get(dep, "from_version"))) {
        char *v = xasprintf("%s (new app)", versions);
        free(versions);
        versions = v;
    }
    dep_line(out, "version", versions);
    free(versions);
    dep_line(out, "status", json_str(dep, "status"));
    const char *reason = json_str(dep, "reason");
    if (reason) {
        char *r = dep_clean(reason);
        dep_line(out, "reason", r);
        free(r);
    }
    json_t *t = json_object_get(dep, "target");
    long long ci = dep_int(t, "canary_instances", 0);
    char *target = ci > 0
                       ? xasprintf("%lld instance(s) + %lld canary", dep_int(t, "instances", 0), ci)
                       : xasprintf("%lld instance(s)", dep_int(t, "instances", 0));
    dep_line(out, "target", target);
    free(target);
    char *progress = cli_deployment_progress(dep);
    dep_line(out, "progress", progress);
    free(progress);
    json_t *p = json_object_get(dep, "progress");
    if (json_is_object(p)) {
        buf_t b = BUF_INIT(0);
        buf_printf(&b, "new %lld (%lld healthy), old %lld (%lld healthy)", dep_int(p, "new", 0),
                   dep_int(p, "new_healthy", 0), dep_int(p, "old", 0),
                   dep_int(p, "old_healthy", 0));
        if (ci > 0 || dep_int(p, "canary", 0) > 0)
            buf_printf(&b, ", canary %lld (%lld healthy)", dep_int(p, "canary", 0),
                       dep_int(p, "canary_healthy", 0));
        buf_printf(&b, ", unplaced %lld", dep_int(p, "unplaced", 0));
        dep_line(out, "instances", b.data);
        buf_free(&b);
    }
    cli_placement_print(json_object_get(dep, "placement"), out);
    dep_time(out, "created", json_str(dep, "created_at"), now_ms);
    dep_time(out, "updated", json_str(dep, "updated_at"), now_ms);
    const char *fin = json_str(dep, "finished_at");
    if (fin) {
        char el[32];
        dep_elapsed(dep, el, sizeof(el));
        char age[32];
        cli_age_since(fin, now_ms, age, sizeof(age));
        char *s =
            el[0] ? xasprintf("%s (%s, took %s)", fin, age, el) : xasprintf("%s (%s)", fin, age);
        dep_line(out, "finished", s);
        free(s);
    } else {
        dep_line(out, "finished", "-");
    }
    json_t *steps = json_object_get(dep, "steps");
    if (json_array_size(steps) == 0) {
        dep_line(out, "steps", "none");
        return;
    }
    fprintf(out, "steps:\n");
    size_t i;
    json_t *s;
    json_array_foreach(steps, i, s)
    {
        char *msg = dep_clean(json_str(s, "message"));
        const char *at = json_str(s, "at");
        fprintf(out, "  - %s  %s\n", at ? at : "-", msg);
        free(msg);
    }
}

/* ---- the follower (pure part) ------------------------------------------- */

void cli_follow_init(cli_follow_t *f, bool tty)
{
    memset(f, 0, sizeof(*f));
    f->tty = tty;
}

void cli_follow_free(cli_follow_t *f)
{
    free(f->step_at);
    free(f->step_msg);
    free(f->line);
    free(f->placement);
    memset(f, 0, sizeof(*f));
}

/* The steps array keeps the last 50 actions, so "new" is whatever comes
 * after the last step already shown; when that one rotated out, all are. */
static size_t follow_new_steps(const cli_follow_t *f, const json_t *steps)
{
    size_t n = json_array_size(steps);
    if (!f->step_msg)
        return 0;
    for (size_t i = n; i-- > 0;) {
        json_t *s = json_array_get(steps, i);
        const char *at = json_str(s, "at"), *msg = json_str(s, "message");
        if (strcmp(at ? at : "", f->step_at) == 0 && strcmp(msg ? msg : "", f->step_msg) == 0)
            return i + 1;
    }
    return 0;
}

static void follow_clear_status(cli_follow_t *f, FILE *out)
{
    if (f->tty && f->status_shown) {
        fputs("\r\033[K", out);
        f->status_shown = false;
    }
}

/* Lines change only when something a reader cares about changed: the
 * progress text, a new step or a new reason to wait for a node. On a
 * terminal the progress is one line redrawn in place and only steps and
 * placement scroll. */
void cli_follow_render(cli_follow_t *f, const json_t *dep, FILE *out)
{
    json_t *steps = json_object_get(dep, "steps");
    size_t first = follow_new_steps(f, steps), n = json_array_size(steps);
    char *progress = cli_deployment_progress(dep);
    bool changed = !f->line || strcmp(f->line, progress) != 0;
    if (first < n) {
        json_t *last = json_array_get(steps, n - 1);
        free(f->step_at);
        free(f->step_msg);
        f->step_at = xstrdup(json_str(last, "at") ? json_str(last, "at") : "");
        f->step_msg = xstrdup(json_str(last, "message") ? json_str(last, "message") : "");
    }
    json_t *placement = json_object_get(dep, "placement");
    const char *summary = json_is_object(placement) ? json_str(placement, "summary") : NULL;
    bool new_placement = summary && (!f->placement || strcmp(f->placement, summary) != 0);
    if (f->tty) {
        if (first < n || new_placement)
            follow_clear_status(f, out);
        for (size_t i = first; i < n; i++) {
            char *msg = dep_clean(json_str(json_array_get(steps, i), "message"));
            fprintf(out, "  %s\n", msg);
            free(msg);
        }
        if (new_placement) {
            char *s = dep_clean(summary);
            fprintf(out, "  waiting for a node: %s\n", s);
            free(s);
        }
        if (changed || !f->status_shown) {
            fprintf(out, "\r\033[K  %s", progress);
            f->status_shown = true;
        }
    } else {
        if (changed || first < n) {
            fprintf(out, "  %s", progress);
            for (size_t i = first; i < n; i++) {
                char *msg = dep_clean(json_str(json_array_get(steps, i), "message"));
                fprintf(out, "%s%s", i == first ? " (" : "; ", msg);
                free(msg);
            }
            fputs(first < n ? ")\n" : "\n", out);
        }
        if (new_placement) {
            char *s = dep_clean(summary);
            fprintf(out, "  waiting for a node: %s\n", s);
            free(s);
        }
    }
    if (new_placement) {
        free(f->placement);
        f->placement = xstrdup(summary);
    } else if (!summary) {
        free(f->placement);
        f->placement = NULL;
    }
    free(f->line);
    f->line = progress;
    fflush(out);
}

int cli_follow_finish(cli_follow_t *f, const json_t *dep, FILE *out)
{
    if (f->tty && f->status_shown) {
        fputc('\n', out);
        f->status_shown = false;
    }
    char *result = cli_deployment_result(dep);
    const char *status = json_str(dep, "status");
    fprintf(out, "%s\n", result ? result : "deployment still running");
    free(result);
    fflush(out);
    return status && strcmp(status, "succeeded") == 0 ? CLI_EXIT_OK : CLI_EXIT_ERROR;
}

/* ---- the follower (requests) -------------------------------------------- */

static char *dep_path(const char *id, const char *query)
{
    buf_t b = BUF_INIT(0);
    buf_append_str(&b, "/v1/deployments/");
    cli_url_escape(&b, id, false);
    if (query)
        buf_append_str(&b, query);
    return buf_steal(&b, NULL);
}

static void dep_sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

int cli_deployment_follow(cli_ctx_t *ctx, const char *id, unsigned flags)
{
    FILE *out = (flags & CLI_FOLLOW_JSON) ? ctx->err : ctx->out;
    cli_follow_t f;
    cli_follow_init(&f, !(flags & CLI_FOLLOW_JSON) && ctx->tty);
    int64_t index = -1;
    int rc = CLI_EXIT_ERROR;
    for (;;) {
        char query[64];
        if (index >= 0)
            snprintf(query, sizeof(query), "?index=%" PRId64 "&wait=" DEP_WAIT, index);
        char *path = dep_path(id, index >= 0 ? query : NULL);
        http_client_resp_t resp;
        err_t err = {0};
        int arc = cli_api(ctx, "GET", path, NULL, NULL, 0, DEP_WAIT_TIMEOUT_MS, &resp, &err);
        free(path);
        json_t *dep = NULL;
        if (arc == 0) {
            err_t perr = {0};
            dep = json_parse(resp.body.data ? resp.body.data : "", resp.body.len, &perr);
            if (!dep)
                err_set(&err, -EPROTO, "deployment %s: answer is not JSON: %s", id, perr.msg);
        }
        if (!dep) {
            if (f.tty && f.status_shown)
                fputc('\n', out);
            if (index >= 0)
                cli_fail(ctx, "%s (the deployment goes on: `drover deployment wait %s` follows it)",
                         err.msg, id);
            else
                cli_fail(ctx, "%s", err.msg);
            http_client_resp_free(&resp);
            break;
        }
        if (index < 0 && (flags & CLI_FOLLOW_HEADER)) {
            char *versions = cli_deployment_versions(dep, " -> ");
            const char *kind = json_str(dep, "kind");
            const char *app = json_str(dep, "app");
            fprintf(out, "deployment %s: %s %s version %s\n", id, kind ? kind : "?",
                    app ? app : "?", versions);
            free(versions);
        }
        cli_follow_render(&f, dep, out);
        const char *status = json_str(dep, "status");
        if (status && strcmp(status, "running") != 0) {
            rc = cli_follow_finish(&f, dep, out);
            if (flags & CLI_FOLLOW_PRINT_JSON)
                cli_print_raw(ctx, &resp);
            json_decref(dep);
            http_client_resp_free(&resp);
            break;
        }
        char *h = http_client_resp_header(&resp, "X-Drover-Index");
        int64_t next;
        if (h && str_to_i64(h, 0, INT64_MAX, &next) == 0) {
            index = next;
        } else {
            /* No index to block on: poll, gently. */
            index = -1;
            flags &= ~(unsigned)CLI_FOLLOW_HEADER;
            dep_sleep_ms(DEP_POLL_MS);
        }
        free(h);
        json_decref(dep);
        http_client_resp_free(&resp);
    }
    cli_follow_free(&f);
    return rc;
}

/* ---- app actions -------------------------------------------------------- */

void cli_action_print(const char *action, const json_t *answer, FILE *out)
{
    const char *id = json_str(answer, "id");
    if (!id)
        id = "?";
    json_t *app = json_object_get(answer, "app");
    char *version = cli_json_text(json_object_get(answer, "version"));
    const char *dep = json_str(answer, "deployment");
    if (json_is_false(json_object_get(answer, "changed"))) {
        fprintf(out, "unchanged: %s is at version %s\n", id, version);
        free(version);
        return;
    }
    char *tail = dep ? xasprintf("version %s, deployment %s", version, dep)
                     : xasprintf("version %s", version);
    char *instances = cli_json_text(json_object_get(json_object_get(app, "spec"), "instances"));
    if (strcmp(action, "scale") == 0) {
        fprintf(out, "scaled %s to %s (%s)\n", id, instances, tail);
    } else if (strcmp(action, "rollback") == 0) {
        fprintf(out, "rolled back %s (%s)\n", id, tail);
    } else if (strcmp(action, "promote") == 0) {
        fprintf(out, "promoted the canary of %s (%s)\n", id, tail);
    } else if (strcmp(action, "abort") == 0) {
        fprintf(out, "aborted the canary of %s; the current version keeps all traffic (%s)\n", id,
                tail);
    } else if (strcmp(action, "restart") == 0) {
        fprintf(out, "restarting every instance of %s (%s)\n", id, tail);
    } else if (strcmp(action, "stop") == 0) {
        char *was = cli_json_text(json_object_get(json_object_get(app, "stopped"), "instances"));
        fprintf(out, "stopped %s (%s); `drover app start %s` brings back %s instance(s)\n", id,
                tail, id, was);
        free(was);
    } else if (strcmp(action, "start") == 0) {
        fprintf(out, "started %s with %s instance(s) (%s)\n", id, instances, tail);
    } else {
        fprintf(out, "%s %s (%s)\n", action, id, tail);
    }
    free(instances);
    free(tail);
    free(version);
}

int cli_app_action(cli_ctx_t *ctx, const char *app, const char *action, const json_t *body,
                   bool wait, bool raw)
{
    char *suffix = xasprintf("/%s", action);
    char *path = cli_app_path(app, suffix);
    free(suffix);
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    http_client_resp_t resp;
    json_t *answer = NULL;
    err_t err = {0};
    int rc;
    if (cli_api_json(ctx, "POST", path, text, text ? strlen(text) : 0, &resp, &answer, &err) < 0) {
        rc = cli_fail(ctx, "%s", err.msg);
    } else {
        if (raw)
            cli_print_raw(ctx, &resp);
        else
            cli_action_print(action, answer, ctx->out);
        fflush(ctx->out);
        const char *dep = json_str(answer, "deployment");
        rc = CLI_EXIT_OK;
        if (wait && dep)
            rc = cli_deployment_follow(ctx, dep, raw ? CLI_FOLLOW_JSON : 0);
    }
    json_decref(answer);
    http_client_resp_free(&resp);
    free(text);
    free(path);
    return rc;
}

enum { A_WAIT, A_JSON, A_N };

#define ACTION_OPTS                                                                                \
    {                                                                                              \
        [A_WAIT] = CLI_FLAG("wait", "follow the deployment until it ends (exit 1 unless it "       \
                                    "succeeds)"),                                                  \
        [A_JSON] =                                                                                 \
            CLI_FLAG("json", "print the API answer (with --wait, progress goes to stderr)"),       \
    }

/* The actions without arguments besides the app share everything but
 * their help. */
static int action_simple(cli_ctx_t *ctx, const cli_cmd_t *cmd, const char *action, int argc,
                         char **argv)
{
    cli_opt_t opts[A_N] = ACTION_OPTS;
    cli_args_t args;
    int rc = cli_parse(ctx, cmd, argc, argv, opts, A_N, 1, 1, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    rc = cli_app_action(ctx, args.pos[0], action, NULL, opts[A_WAIT].count > 0,
                        opts[A_JSON].count > 0);
    cli_args_free(&args, opts, A_N);
    return rc;
}

int cli_cmd_scale(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {
        "scale", "scale APP N [--wait] [--json]",
        "Set an app's instance count: a new version with only `instances` changed. Running "
        "instances are not restarted; new ones start, extra ones stop.",
        "drover scale /production/web 4\ndrover scale production/web 0 --wait"};
    cli_opt_t opts[A_N] = ACTION_OPTS;
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, opts, A_N, 2, 2, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    int64_t n;
    if (str_to_i64(args.pos[1], 0, INT32_MAX, &n) < 0) {
        rc = cli_usage_error(ctx, &cmd, "N %s: expected an instance count (integer >= 0)",
                             args.pos[1]);
    } else {
        json_t *body = json_pack("{s:I}", "instances", (json_int_t)n);
        rc = cli_app_action(ctx, args.pos[0], "scale", body, opts[A_WAIT].count > 0,
                            opts[A_JSON].count > 0);
        json_decref(body);
    }
    cli_args_free(&args, opts, A_N);
    return rc;
}

int cli_version_parse(const char *arg, int64_t *version, err_t *err)
{
    const char *p = arg && (arg[0] == 'v' || arg[0] == 'V') ? arg + 1 : arg;
    if (!p || str_to_i64(p, 1, INT64_MAX, version) < 0)
        return err_set(err, -EINVAL, "version %s: expected a version number (3 or v3)",
                       arg ? arg : "");
    return 0;
}

int cli_cmd_rollback(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {
        "rollback", "rollback APP [VERSION] [--wait] [--json]",
        "Roll an app back: a new version whose spec (and config environment) is VERSION's; "
        "without VERSION, the newest earlier version whose spec differs from the current one. "
        "The instance count stays as it is now.",
        "drover rollback /production/web\ndrover rollback /production/web 3 --wait"};
    cli_opt_t opts[A_N] = ACTION_OPTS;
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, opts, A_N, 1, 2, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    json_t *body = NULL;
    int64_t v;
    err_t err = {0};
    if (args.n_pos == 2 && cli_version_parse(args.pos[1], &v, &err) < 0) {
        rc = cli_usage_error(ctx, &cmd, "%s", err.msg);
    } else {
        if (args.n_pos == 2)
            body = json_pack("{s:I}", "version", (json_int_t)v);
        rc = cli_app_action(ctx, args.pos[0], "rollback", body, opts[A_WAIT].count > 0,
                            opts[A_JSON].count > 0);
    }
    json_decref(body);
    cli_args_free(&args, opts, A_N);
    return rc;
}

int cli_cmd_promote(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {
        "promote", "promote APP [--wait] [--json]",
        "Make the app's canary version the current one, rolled out to every instance as an "
        "upgrade. Fails (exit 1) when no canary runs.",
        "drover promote /production/web --wait"};
    return action_simple(ctx, &cmd, "promote", argc, argv);
}

int cli_cmd_abort(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {
        "abort", "abort APP [--wait] [--json]",
        "Stop the app's canary; the current version keeps all the traffic. Fails (exit 1) when "
        "no canary runs.",
        "drover abort /production/web"};
    return action_simple(ctx, &cmd, "abort", argc, argv);
}

int cli_cmd_restart(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {
        "restart", "restart APP [--wait] [--json]",
        "Replace every instance of an app, rolling, as for an upgrade (a new version with the "
        "same spec).",
        "drover restart /production/web --wait"};
    return action_simple(ctx, &cmd, "restart", argc, argv);
}

int cli_app_stop_start(cli_ctx_t *ctx, bool stop, int argc, char **argv)
{
    static const cli_cmd_t stop_cmd = {
        "app stop", "app stop APP [--wait] [--json]",
        "Scale an app to 0, remembering its instance count for `app start`.",
        "drover app stop /staging/web"};
    static const cli_cmd_t start_cmd = {
        "app start", "app start APP [--wait] [--json]",
        "Bring a stopped app back to the instance count it had when stopped. Fails (exit 1) "
        "unless the app is stopped.",
        "drover app start /staging/web --wait"};
    return action_simple(ctx, stop ? &stop_cmd : &start_cmd, stop ? "stop" : "start", argc, argv);
}

/* ---- deployments verbs -------------------------------------------------- */

static int dep_get(cli_ctx_t *ctx, const char *path, bool raw, json_t **out)
{
    http_client_resp_t resp;
    err_t err = {0};
    int rc = cli_api_json(ctx, "GET", path, NULL, 0, &resp, out, &err);
    if (rc == 0 && raw)
        cli_print_raw(ctx, &resp);
    http_client_resp_free(&resp);
    return rc < 0 ? cli_fail(ctx, "%s", err.msg) : CLI_EXIT_OK;
}

int cli_cmd_deployments(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {
        "deployments", "deployments [--app APP] [--all] [--json]",
        "List running deployments, newest first (with --all, the finished ones too: the last 20 "
        "per app).",
        "drover deployments\ndrover deployments --app /production/web --all"};
    enum { O_APP, O_ALL, O_JSON, O_N };
    cli_opt_t opts[O_N] = {
        [O_APP] = CLI_VALUE("app", "APP", "only the deployments of APP"),
        [O_ALL] = CLI_FLAG("all", "include finished deployments"),
        [O_JSON] = CLI_FLAG("json", "print the API answer ({\"deployments\": [...]})"),
    };
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, opts, O_N, 0, 0, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    buf_t path = BUF_INIT(0);
    buf_append_str(&path, "/v1/deployments");
    char sep = '?';
    if (opts[O_APP].value) {
        const char *app = opts[O_APP].value;
        buf_printf(&path, "%capp=%s", sep, app[0] == '/' ? "" : "%2F");
        cli_url_escape(&path, app, false);
        sep = '&';
    }
    if (opts[O_ALL].count)
        buf_printf(&path, "%call=1", sep);
    json_t *j = NULL;
    rc = dep_get(ctx, path.data, opts[O_JSON].count > 0, &j);
    if (rc == CLI_EXIT_OK && !opts[O_JSON].count)
        cli_deployments_table(json_object_get(j, "deployments"), cli_now_ms(), ctx->out);
    json_decref(j);
    buf_free(&path);
    cli_args_free(&args, opts, O_N);
    return rc;
}

static int deployment_show(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {
        "deployment show", "deployment show ID [--json]",
        "Show one deployment: kind, versions, status and reason, target, progress, why "
        "instances wait for a node, times and its steps.",
        "drover deployment show 5f2c9a1b3d4e\n"
        "drover deployment show 5f2c9a1b3d4e --json | jq .progress"};
    cli_opt_t opts[] = {CLI_FLAG("json", "print the API answer")};
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, opts, 1, 1, 1, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    char *path = dep_path(args.pos[0], NULL);
    json_t *j = NULL;
    rc = dep_get(ctx, path, opts[0].count > 0, &j);
    if (rc == CLI_EXIT_OK && !opts[0].count)
        cli_deployment_show(j, cli_now_ms(), ctx->out);
    json_decref(j);
    free(path);
    cli_args_free(&args, opts, 1);
    return rc;
}

static int deployment_cancel(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {
        "deployment cancel", "deployment cancel ID [--json]",
        "Stop a running deployment where it is: the app keeps the instances it has now, old and "
        "new, until its next change (deploy, scale, rollback).",
        "drover deployment cancel 5f2c9a1b3d4e"};
    cli_opt_t opts[] = {CLI_FLAG("json", "print the API answer (the cancelled deployment)")};
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, opts, 1, 1, 1, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    char *path = dep_path(args.pos[0], NULL);
    http_client_resp_t resp;
    json_t *j = NULL;
    err_t err = {0};
    if (cli_api_json(ctx, "DELETE", path, NULL, 0, &resp, &j, &err) < 0) {
        rc = cli_fail(ctx, "%s", err.msg);
    } else {
        if (opts[0].count) {
            cli_print_raw(ctx, &resp);
        } else {
            char *progress = cli_deployment_progress(j);
            const char *app = json_str(j, "app");
            fprintf(ctx->out, "cancelled deployment %s of %s (%s)\n", args.pos[0], app ? app : "?",
                    progress);
            free(progress);
        }
        rc = CLI_EXIT_OK;
    }
    json_decref(j);
    http_client_resp_free(&resp);
    free(path);
    cli_args_free(&args, opts, 1);
    return rc;
}

static int deployment_wait(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {
        "deployment wait", "deployment wait ID [--json]",
        "Follow a deployment, one line per change, until it ends. Exit 0 when it succeeded, 1 "
        "when it failed, was cancelled or superseded.",
        "drover deployment wait 5f2c9a1b3d4e"};
    cli_opt_t opts[] = {
        CLI_FLAG("json", "print the finished deployment as JSON (progress goes to stderr)")};
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, opts, 1, 1, 1, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    unsigned flags = CLI_FOLLOW_HEADER;
    if (opts[0].count)
        flags |= CLI_FOLLOW_JSON | CLI_FOLLOW_PRINT_JSON;
    rc = cli_deployment_follow(ctx, args.pos[0], flags);
    cli_args_free(&args, opts, 1);
    return rc;
}

int cli_cmd_deployment(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_subcmd_t subs[] = {
        {"show", "deployment show ID", "show one deployment with its progress and steps",
         deployment_show},
        {"cancel", "deployment cancel ID", "stop a running deployment where it is",
         deployment_cancel},
        {"wait", "deployment wait ID", "follow a deployment until it ends", deployment_wait},
    };
    return cli_dispatch(ctx, "deployment", subs, sizeof(subs) / sizeof(subs[0]), argc, argv);
}
