/* `drover apps`, `drover app show|rm|versions|stop|start`, `drover versions`. */
#include "cli/cli.h"

#include "core/alloc.h"
#include "core/json.h"

#include <stdlib.h>
#include <string.h>

/* ---- rendering ---------------------------------------------------------- */

static const char *spec_kind(const json_t *spec)
{
    const char *k = json_str(spec, "kind");
    return k ? k : "service";
}

void cli_apps_table(const json_t *apps, int64_t now_ms, FILE *out)
{
    static const char *const hdr[] = {"id", "version", "instances", "kind", "updated"};
    cli_table_t t;
    cli_table_init(&t, 5, hdr);
    for (size_t i = 0; i < json_array_size(apps); i++) {
        json_t *app = json_array_get(apps, i);
        json_t *spec = json_object_get(app, "spec");
        char *version = cli_json_text(json_object_get(app, "version"));
        char *inst = cli_json_text(json_object_get(spec, "instances"));
        char age[32];
        cli_age_since(json_str(app, "updated_at"), now_ms, age, sizeof(age));
        const char *row[] = {json_str(app, "id"), version, inst, spec_kind(spec), age};
        cli_table_add(&t, row);
        free(version);
        free(inst);
    }
    cli_table_print(&t, out);
    cli_table_free(&t);
}

void cli_versions_table(const json_t *answer, int64_t now_ms, FILE *out)
{
    static const char *const hdr[] = {"version", "created"};
    cli_table_t t;
    cli_table_init(&t, 2, hdr);
    for (size_t i = 0; i < json_array_size(json_object_get(answer, "versions")); i++) {
        json_t *v = json_array_get(json_object_get(answer, "versions"), i);
        char *version = cli_json_text(json_object_get(v, "version"));
        char age[32];
        cli_age_since(json_str(v, "created_at"), now_ms, age, sizeof(age));
        const char *row[] = {version, age};
        cli_table_add(&t, row);
        free(version);
    }
    cli_table_print(&t, out);
    cli_table_free(&t);
}

#define SHOW_FMT "%-11s %s\n"

static void show_line(FILE *out, const char *label, const char *value)
{
    char l[32];
    snprintf(l, sizeof(l), "%s:", label);
    fprintf(out, SHOW_FMT, l, value);
}

static void show_value(FILE *out, const char *label, const json_t *v)
{
    char *s = cli_json_text(v);
    show_line(out, label, s);
    free(s);
}

/* An object's members as "k=v" in the server's order, separated by sep. */
static char *show_pairs(const json_t *obj, const char *sep)
{
    buf_t b = BUF_INIT(0);
    for (void *it = json_object_iter((json_t *)obj); it;
         it = json_object_iter_next((json_t *)obj, it)) {
        char *s = cli_json_text(json_object_iter_value(it));
        buf_printf(&b, "%s%s=%s", b.len ? sep : "", json_object_iter_key(it), s);
        free(s);
    }
    return buf_steal(&b, NULL);
}

/* Lists (health checks, routes, warnings) take one indented line per item
 * under their label, or "none", so a script can count them. */
static void show_list(FILE *out, const char *label, const json_t *list,
                      char *(*item)(const json_t *))
{
    if (!json_is_array(list) || json_array_size(list) == 0) {
        show_line(out, label, "none");
        return;
    }
    fprintf(out, "%s:\n", label);
    for (size_t i = 0; i < json_array_size(list); i++) {
        json_t *v = json_array_get(list, i);
        char *s = item(v);
        fprintf(out, "  - %s\n", s);
        free(s);
    }
}

/* "HTTP /health port index 0, every 10s, timeout 20s, grace 300s, max
 * failures 3": what the check does and how soon it gives up. Fields the
 * summary does not name are in `--json`. */
static char *show_health_item(const json_t *hc)
{
    if (!json_is_object(hc))
        return cli_json_text(hc);
    buf_t b = BUF_INIT(0);
    const char *proto = json_str(hc, "protocol");
    buf_append_str(&b, proto ? proto : "?");
    const char *path = json_str(hc, "path");
    json_t *cmd = json_object_get(hc, "command");
    if (path)
        buf_printf(&b, " %s", path);
    if (cmd) {
        json_t *v = json_is_object(cmd) ? json_object_get(cmd, "value") : cmd;
        char *c = cli_json_compact(v);
        buf_printf(&b, " %s", c);
        free(c);
    }
    static const char *const fields[][2] = {
        {"portIndex", " port index %s"},       {"port", " port %s"},
        {"intervalSeconds", ", every %ss"},    {"timeoutSeconds", ", timeout %ss"},
        {"gracePeriodSeconds", ", grace %ss"}, {"maxConsecutiveFailures", ", max failures %s"},
    };
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        json_t *v = json_object_get(hc, fields[i][0]);
        if (!v || json_is_null(v))
            continue;
        char *t = cli_json_text(v);
        buf_printf(&b, fields[i][1], t);
        free(t);
    }
    return buf_steal(&b, NULL);
}

static char *show_route_item(const json_t *r)
{
    return json_is_object(r) ? show_pairs(r, " ") : cli_json_text(r);
}

static char *show_warning_item(const json_t *w)
{
    const char *path = json_str(w, "path"), *reason = json_str(w, "reason");
    if (!path && !reason)
        return cli_json_text(w);
    return xasprintf("%s: %s", path ? path : "$", reason ? reason : "");
}

static void show_time(FILE *out, const char *label, const char *ts, int64_t now_ms)
{
    if (!ts) {
        show_line(out, label, "-");
        return;
    }
    char age[32];
    cli_age_since(ts, now_ms, age, sizeof(age));
    char *s = xasprintf("%s (%s)", ts, age);
    show_line(out, label, s);
    free(s);
}

/* The app's last failed instance, the first thing to look at when an app
 * does not come up: "<at> instance <id> <reason>". Only when the server
 * recorded one. The reason is the agent's text, shown escaped so it stays
 * on one line. */
static void show_failure(FILE *out, const json_t *f)
{
    if (!json_is_object(f))
        return;
    const char *at = json_str(f, "at"), *inst = json_str(f, "instance");
    json_t *r = json_object_get(f, "reason");
    char *reason = json_is_string(r) && json_string_length(r)
                       ? cli_value_display(json_string_value(r), json_string_length(r), 200)
                       : NULL;
    char *s = xasprintf("%s instance %s%s%s", at ? at : "-", inst ? inst : "-", reason ? " " : "",
                        reason ? reason : "");
    for (char *p = s; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    show_line(out, "last failure", s);
    free(s);
    free(reason);
}

/* What is changing: the running deployment (summarized from its record
 * when the caller fetched it), a canary beside the current version, a
 * stopped app's remembered count, and why instances wait for a node. Each
 * line only when the server sent the field, so answers of servers without
 * deployments read as before. */
static void show_rollout(FILE *out, const json_t *app, const json_t *dep)
{
    json_t *d = json_object_get(app, "deployment");
    if (json_is_string(d)) {
        if (json_is_object(dep)) {
            char *versions = cli_deployment_versions(dep, " -> ");
            char *progress = cli_deployment_progress(dep);
            const char *kind = json_str(dep, "kind"), *status = json_str(dep, "status");
            char *s = xasprintf("%s (%s, version %s, %s: %s)", json_string_value(d),
                                kind ? kind : "?", versions, status ? status : "?", progress);
            show_line(out, "deployment", s);
            free(s);
            free(versions);
            free(progress);
        } else {
            show_line(out, "deployment", json_string_value(d));
        }
    } else if (d) {
        show_line(out, "deployment", "none");
    }
    json_t *c = json_object_get(app, "canary");
    if (json_is_object(c)) {
        char *v = cli_json_text(json_object_get(c, "version"));
        char *p = cli_json_text(json_object_get(c, "percent"));
        char *n = cli_json_text(json_object_get(c, "instances"));
        char *s = xasprintf("version %s, %s%% of the traffic, %s instance(s)", v, p, n);
        show_line(out, "canary", s);
        free(s);
        free(v);
        free(p);
        free(n);
    }
    json_t *st = json_object_get(app, "stopped");
    if (json_is_object(st)) {
        char *n = cli_json_text(json_object_get(st, "instances"));
        char *s = xasprintf("yes (`drover app start` brings back %s instance(s))", n);
        show_line(out, "stopped", s);
        free(s);
        free(n);
    }
    json_t *env = json_object_get(app, "config_env");
    if (json_is_object(env)) {
        size_t n = json_object_size(env);
        char *s = xasprintf("%zu variable%s from %s", n, n == 1 ? "" : "s",
                            json_str(json_object_get(app, "spec"), "config")
                                ? json_str(json_object_get(app, "spec"), "config")
                                : "KV");
        show_line(out, "config env", s);
        free(s);
    }
    cli_placement_print(json_object_get(app, "placement"), out);
}

/* The summary answers "what is running and how is it configured" at a
 * glance; everything else is one `--json` away. */
void cli_app_show(const json_t *app, int64_t now_ms, FILE *out)
{
    cli_app_show_with(app, NULL, now_ms, out);
}

void cli_app_show_with(const json_t *app, const json_t *dep, int64_t now_ms, FILE *out)
{
    json_t *spec = json_object_get(app, "spec");
    show_value(out, "id", json_object_get(app, "id"));
    show_value(out, "version", json_object_get(app, "version"));
    show_line(out, "kind", spec_kind(spec));
    show_value(out, "instances", json_object_get(spec, "instances"));
    show_value(out, "cpus", json_object_get(spec, "cpus"));
    json_t *mem = json_object_get(spec, "mem");
    if (json_is_number(mem)) {
        char *m = xasprintf("%g MiB", json_number_value(mem));
        show_line(out, "mem", m);
        free(m);
    } else {
        show_value(out, "mem", mem);
    }
    const char *cmd = json_str(spec, "cmd");
    json_t *args = json_object_get(spec, "args");
    const char *image =
        json_str(json_object_get(json_object_get(spec, "container"), "docker"), "image");
    if (cmd)
        show_line(out, "cmd", cmd);
    if (json_is_array(args) && json_array_size(args) > 0) {
        /* Arguments are shown JSON-quoted when they need it, so spaces
         * inside one argument stay visible. */
        buf_t b = BUF_INIT(0);
        for (size_t i = 0; i < json_array_size(args); i++) {
            json_t *a = json_array_get(args, i);
            const char *s = json_string_value(a);
            bool plain = s && *s && strcspn(s, " \t\n\"'\\$") == strlen(s);
            char *txt = plain ? xstrdup(s) : cli_json_compact(a);
            buf_printf(&b, "%s%s", i ? " " : "", txt);
            free(txt);
        }
        show_line(out, "args", b.data);
        buf_free(&b);
    }
    if (image)
        show_line(out, "image", image);
    if (!cmd && !image && !(json_is_array(args) && json_array_size(args) > 0))
        show_line(out, "cmd", "-");
    json_t *env = json_object_get(spec, "env");
    size_t n_env = json_is_object(env) ? json_object_size(env) : 0;
    char *envs = xasprintf("%zu variable%s", n_env, n_env == 1 ? "" : "s");
    show_line(out, "env", envs);
    free(envs);
    json_t *labels = json_object_get(spec, "labels");
    if (json_is_object(labels) && json_object_size(labels) > 0) {
        char *l = show_pairs(labels, ", ");
        show_line(out, "labels", l);
        free(l);
    } else {
        show_line(out, "labels", "none");
    }
    show_list(out, "health", json_object_get(spec, "healthChecks"), show_health_item);
    show_list(out, "routes", json_object_get(spec, "routes"), show_route_item);
    show_rollout(out, app, dep);
    show_time(out, "created", json_str(app, "created_at"), now_ms);
    show_time(out, "updated", json_str(app, "updated_at"), now_ms);
    show_failure(out, json_object_get(app, "lastTaskFailure"));
    show_list(out, "warnings", json_object_get(app, "warnings"), show_warning_item);
}

/* ---- verbs -------------------------------------------------------------- */

int cli_app_exists(cli_ctx_t *ctx, const char *app, err_t *err)
{
    char *path = cli_app_path(app, NULL);
    http_client_resp_t resp;
    int rc = cli_api(ctx, "GET", path, NULL, NULL, 0, CLI_TIMEOUT_MS, &resp, err);
    http_client_resp_free(&resp);
    free(path);
    return rc;
}

static int app_get_json(cli_ctx_t *ctx, const char *path, bool raw, json_t **out)
{
    http_client_resp_t resp;
    err_t err = {0};
    int rc = cli_api_json(ctx, "GET", path, NULL, 0, &resp, out, &err);
    if (rc == 0 && raw)
        cli_print_raw(ctx, &resp);
    http_client_resp_free(&resp);
    if (rc < 0)
        return cli_fail(ctx, "%s", err.msg);
    return CLI_EXIT_OK;
}

int cli_cmd_apps(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {
        "apps", "apps [--json]",
        "List every app with its current version, instance count, kind and last change.",
        "drover apps\ndrover apps --json | jq -r '.apps[].id'"};
    cli_opt_t opts[] = {CLI_FLAG("json", "print the API answer ({\"apps\": [...]})")};
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, opts, 1, 0, 0, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    json_t *j = NULL;
    rc = app_get_json(ctx, "/v1/apps", opts[0].count > 0, &j);
    if (rc == CLI_EXIT_OK && !opts[0].count)
        cli_apps_table(json_object_get(j, "apps"), cli_now_ms(), ctx->out);
    json_decref(j);
    cli_args_free(&args, opts, 1);
    return rc;
}

static int app_show(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {
        "app show", "app show ID [--json]",
        "Show an app's current version: resources, command or image, env, labels, health "
        "checks, routes, the running deployment, a canary, why instances wait for a node, "
        "times and warnings.",
        "drover app show /production/web\ndrover app show /production/web --json | jq .spec"};
    cli_opt_t opts[] = {CLI_FLAG("json", "print the API answer (id, version, spec, ...)")};
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, opts, 1, 1, 1, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    char *path = cli_app_path(args.pos[0], NULL);
    json_t *j = NULL;
    rc = app_get_json(ctx, path, opts[0].count > 0, &j);
    if (rc == CLI_EXIT_OK && !opts[0].count) {
        /* The running deployment's progress is worth a second request; if
         * that one fails the id alone is still shown. */
        json_t *dep = NULL;
        const char *dep_id = json_str(j, "deployment");
        if (dep_id) {
            buf_t dp = BUF_INIT(0);
            buf_append_str(&dp, "/v1/deployments/");
            cli_url_escape(&dp, dep_id, false);
            http_client_resp_t resp;
            err_t err = {0};
            if (cli_api_json(ctx, "GET", dp.data, NULL, 0, &resp, &dep, &err) < 0)
                dep = NULL;
            http_client_resp_free(&resp);
            buf_free(&dp);
        }
        cli_app_show_with(j, dep, cli_now_ms(), ctx->out);
        json_decref(dep);
    }
    json_decref(j);
    free(path);
    cli_args_free(&args, opts, 1);
    return rc;
}

static int app_stop(cli_ctx_t *ctx, int argc, char **argv)
{
    return cli_app_stop_start(ctx, true, argc, argv);
}

static int app_start(cli_ctx_t *ctx, int argc, char **argv)
{
    return cli_app_stop_start(ctx, false, argc, argv);
}

static int app_rm(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {"app rm", "app rm ID [--json]",
                                  "Delete an app and its whole version history.",
                                  "drover app rm /staging/web"};
    cli_opt_t opts[] = {CLI_FLAG("json", "print the API answer")};
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, opts, 1, 1, 1, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    char *path = cli_app_path(args.pos[0], NULL);
    http_client_resp_t resp;
    err_t err = {0};
    json_t *j = NULL;
    if (cli_api_json(ctx, "DELETE", path, NULL, 0, &resp, &j, &err) < 0) {
        rc = cli_fail(ctx, "%s", err.msg);
    } else {
        if (opts[0].count) {
            cli_print_raw(ctx, &resp);
        } else {
            const char *id = json_str(j, "id");
            fprintf(ctx->out, "deleted %s\n", id ? id : args.pos[0]);
        }
        rc = CLI_EXIT_OK;
    }
    json_decref(j);
    http_client_resp_free(&resp);
    free(path);
    cli_args_free(&args, opts, 1);
    return rc;
}

static int versions_run(cli_ctx_t *ctx, const char *name, int argc, char **argv)
{
    cli_cmd_t cmd = {name, NULL, "List the versions of an app, oldest first.", NULL};
    bool is_app = strcmp(name, "app versions") == 0;
    cmd.usage = is_app ? "app versions ID [--json]" : "versions ID [--json]";
    cmd.example =
        is_app ? "drover app versions /production/web" : "drover versions /production/web";
    cli_opt_t opts[] = {CLI_FLAG("json", "print the API answer")};
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, opts, 1, 1, 1, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    char *path = cli_app_path(args.pos[0], "/versions");
    json_t *j = NULL;
    rc = app_get_json(ctx, path, opts[0].count > 0, &j);
    if (rc == CLI_EXIT_OK && !opts[0].count)
        cli_versions_table(j, cli_now_ms(), ctx->out);
    json_decref(j);
    free(path);
    cli_args_free(&args, opts, 1);
    return rc;
}

int cli_cmd_versions(cli_ctx_t *ctx, int argc, char **argv)
{
    return versions_run(ctx, "versions", argc, argv);
}

static int app_versions(cli_ctx_t *ctx, int argc, char **argv)
{
    return versions_run(ctx, "app versions", argc, argv);
}

int cli_cmd_app(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_subcmd_t subs[] = {
        {"show", "app show ID", "show one app's current version", app_show},
        {"rm", "app rm ID", "delete an app and its version history", app_rm},
        {"versions", "app versions ID", "list the versions of an app", app_versions},
        {"stop", "app stop ID", "scale an app to 0, remembering its count", app_stop},
        {"start", "app start ID", "bring a stopped app back", app_start},
        {"pool", "app pool ID [N|auto]", "pin a worker app's pool per node, or show it",
         cli_app_pool},
    };
    return cli_dispatch(ctx, "app", subs, sizeof(subs) / sizeof(subs[0]), argc, argv);
}
