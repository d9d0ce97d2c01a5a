/* `drover group create|set|rm|ls|show`: routing groups (/v1/groups), the
 * weighted sets of app versions one name resolves to. Members are given as
 * TARGET=WEIGHT words; the server normalizes targets ("web@v41" is
 * "/web@41") and computes each member's share. */
#include "cli/cli.h"

#include "core/alloc.h"
#include "core/json.h"
#include "core/str.h"

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define GROUP_WEIGHT_MAX 10000
/* `group set` keeps the sticky setting it read; a write between its read
 * and its write makes it read again, this many times. */
#define GROUP_SET_ATTEMPTS 3

/* ---- rendering ---------------------------------------------------------- */

/* A share in percent as people write it: "90%", "33.33%", "0.5%". */
static void group_share_text(const json_t *share, char *out, size_t n)
{
    if (!json_is_number(share)) {
        snprintf(out, n, "-");
        return;
    }
    snprintf(out, n, "%.2f", json_number_value(share));
    char *dot = strchr(out, '.');
    if (dot) {
        char *end = out + strlen(out);
        while (end > dot + 1 && end[-1] == '0')
            *--end = '\0';
        if (end == dot + 1)
            *dot = '\0';
    }
    size_t len = strlen(out);
    snprintf(out + len, n - len, "%%");
}

/* "/production/web@41=90%, /production/web@42=10%": the whole group on
 * one line, in the order the members were given. */
static char *group_members_text(const json_t *group)
{
    json_t *members = json_object_get(group, "members");
    if (json_array_size(members) == 0)
        return xstrdup("-");
    buf_t b = BUF_INIT(0);
    size_t i;
    json_t *m;
    json_array_foreach(members, i, m)
    {
        char share[32];
        group_share_text(json_object_get(m, "share"), share, sizeof(share));
        const char *t = json_str(m, "target");
        buf_printf(&b, "%s%s=%s", i ? ", " : "", t ? t : "?", share);
    }
    return buf_steal(&b, NULL);
}

static char *group_sticky_text(const json_t *group)
{
    json_t *s = json_object_get(group, "sticky");
    const char *h = json_str(s, "header"), *c = json_str(s, "cookie");
    if (h)
        return xasprintf("header %s", h);
    if (c)
        return xasprintf("cookie %s", c);
    return xstrdup("none (random)");
}

static void group_table(const json_t *groups, int64_t now_ms, FILE *out)
{
    static const char *const hdr[] = {"name", "members", "updated"};
    cli_table_t t;
    cli_table_init(&t, 3, hdr);
    size_t i;
    json_t *g;
    json_array_foreach(groups, i, g)
    {
        char *members = group_members_text(g);
        char age[32];
        cli_age_since(json_str(g, "updated_at"), now_ms, age, sizeof(age));
        const char *row[] = {json_str(g, "name"), members, age};
        cli_table_add(&t, row);
        free(members);
    }
    cli_table_print(&t, out);
    cli_table_free(&t);
}

#define GROUP_SHOW_FMT "%-11s %s\n"

static void group_show_line(FILE *out, const char *label, const char *value)
{
    char l[32];
    snprintf(l, sizeof(l), "%s:", label);
    fprintf(out, GROUP_SHOW_FMT, l, value ? value : "-");
}

static void group_show_time(FILE *out, const char *label, const char *ts, int64_t now_ms)
{
    char age[32];
    cli_age_since(ts, now_ms, age, sizeof(age));
    char *s = ts ? xasprintf("%s (%s)", ts, age) : xstrdup("-");
    group_show_line(out, label, s);
    free(s);
}

/* One member per line with its weight and share, targets padded so the
 * numbers line up. */
static void group_show(const json_t *g, int64_t now_ms, FILE *out)
{
    group_show_line(out, "name", json_str(g, "name"));
    json_t *members = json_object_get(g, "members");
    size_t width = 0, wwidth = 0, i;
    json_t *m;
    json_array_foreach(members, i, m)
    {
        const char *t = json_str(m, "target");
        size_t w = t ? cli_text_width(t) : 1;
        if (w > width)
            width = w;
        char *weight = cli_json_text(json_object_get(m, "weight"));
        if (strlen(weight) > wwidth)
            wwidth = strlen(weight);
        free(weight);
    }
    fprintf(out, "members:\n");
    json_array_foreach(members, i, m)
    {
        const char *t = json_str(m, "target");
        char *weight = cli_json_text(json_object_get(m, "weight"));
        char share[32];
        group_share_text(json_object_get(m, "share"), share, sizeof(share));
        fprintf(out, "  - %-*s   weight %-*s   %s\n", (int)width, t ? t : "?", (int)wwidth, weight,
                share);
        free(weight);
    }
    char *sticky = group_sticky_text(g);
    group_show_line(out, "sticky", sticky);
    free(sticky);
    group_show_time(out, "created", json_str(g, "created_at"), now_ms);
    group_show_time(out, "updated", json_str(g, "updated_at"), now_ms);
    char *rev = cli_json_text(json_object_get(g, "mod_revision"));
    group_show_line(out, "revision", rev);
    free(rev);
}

/* ---- helpers ------------------------------------------------------------ */

static char *group_path(const char *name, const char *query)
{
    buf_t b = BUF_INIT(0);
    buf_append_str(&b, "/v1/groups/");
    cli_url_escape(&b, name, false);
    if (query)
        buf_append_str(&b, query);
    return buf_steal(&b, NULL);
}

/* TARGET=WEIGHT words into the API's members array. The last '=' splits,
 * so the weight is always the number at the end. */
static int group_members_parse(cli_ctx_t *ctx, const cli_cmd_t *cmd, const char *const *words,
                               size_t n, json_t **out)
{
    json_t *members = json_array();
    for (size_t i = 0; i < n; i++) {
        const char *eq = strrchr(words[i], '=');
        int64_t w;
        if (!eq || eq == words[i]) {
            json_decref(members);
            return cli_usage_error(ctx, cmd, "%s: expected TARGET=WEIGHT (/production/web@41=90)",
                                   words[i]);
        }
        if (str_to_i64(eq + 1, 0, GROUP_WEIGHT_MAX, &w) < 0) {
            json_decref(members);
            return cli_usage_error(ctx, cmd, "%s: the weight must be an integer 0..%d", words[i],
                                   GROUP_WEIGHT_MAX);
        }
        char *target = xstrndup(words[i], (size_t)(eq - words[i]));
        json_array_append_new(members,
                              json_pack("{s:s, s:I}", "target", target, "weight", (json_int_t)w));
        free(target);
    }
    *out = members;
    return CLI_CONTINUE;
}

/* A 422 lists each problem with its JSON path; a member's path also names
 * the word it came from, which is what the user typed. */
static void group_print_invalid(cli_ctx_t *ctx, const http_client_resp_t *resp,
                                const char *const *words, size_t n_words)
{
    json_t *j = json_loadb(resp->body.data ? resp->body.data : "", resp->body.len, 0, NULL);
    const char *e = json_str(j, "error");
    fprintf(ctx->err, "drover: %s\n", e ? e : "routing group is invalid");
    json_t *errors = json_object_get(j, "errors");
    size_t i;
    json_t *x;
    json_array_foreach(errors, i, x)
    {
        const char *path = json_str(x, "path"), *reason = json_str(x, "reason");
        unsigned long idx;
        int used = 0;
        const char *word = NULL;
        if (path && sscanf(path, "$.members[%lu]%n", &idx, &used) == 1 && used > 0 && idx < n_words)
            word = words[idx];
        if (word)
            fprintf(ctx->err, "  %s (from %s): %s\n", path, word, reason ? reason : "");
        else
            fprintf(ctx->err, "  %s: %s\n", path ? path : "$", reason ? reason : "");
    }
    json_decref(j);
}

/* PUT the group; on success print one line (or the answer with --json).
 * *status gets the HTTP status (0 for a transport failure) so `set` can
 * retry a 409. */
static int group_put(cli_ctx_t *ctx, const char *name, const json_t *body, const char *query,
                     bool raw, const char *const *words, size_t n_words, bool quiet_409,
                     int *status)
{
    char *path = group_path(name, query);
    char *text = json_dumps(body, JSON_COMPACT);
    http_client_resp_t resp;
    json_t *j = NULL;
    err_t err = {0};
    int rc = cli_api_json(ctx, "PUT", path, text, strlen(text), &resp, &j, &err);
    *status = resp.status;
    if (rc < 0) {
        if (resp.status == 422)
            group_print_invalid(ctx, &resp, words, n_words);
        else if (!(quiet_409 && resp.status == 409))
            cli_fail(ctx, "%s", err.msg);
        rc = CLI_EXIT_ERROR;
    } else if (raw) {
        cli_print_raw(ctx, &resp);
        rc = CLI_EXIT_OK;
    } else {
        char *members = group_members_text(j);
        fprintf(ctx->out, "%s group %s: %s\n", resp.status == 201 ? "created" : "updated", name,
                members);
        free(members);
        rc = CLI_EXIT_OK;
    }
    json_decref(j);
    http_client_resp_free(&resp);
    free(path);
    free(text);
    return rc;
}

enum { O_HEADER, O_COOKIE, O_NO_STICKY, O_JSON, O_N };

/* The sticky flags as the API's "sticky" value; NULL when none was given
 * (`set` then keeps the group's current one). */
static int group_sticky_flags(cli_ctx_t *ctx, const cli_cmd_t *cmd, const cli_opt_t *opts,
                              json_t **out)
{
    *out = NULL;
    int given = (opts[O_HEADER].value != NULL) + (opts[O_COOKIE].value != NULL) +
                (opts[O_NO_STICKY].count > 0);
    if (given > 1)
        return cli_usage_error(ctx, cmd,
                               "give one of --sticky-header, --sticky-cookie, --no-sticky");
    if (opts[O_HEADER].value)
        *out = json_pack("{s:s}", "header", opts[O_HEADER].value);
    else if (opts[O_COOKIE].value)
        *out = json_pack("{s:s}", "cookie", opts[O_COOKIE].value);
    else if (opts[O_NO_STICKY].count)
        *out = json_null();
    return CLI_CONTINUE;
}

/* create and set: the same words, different write rules. */
static int group_write(cli_ctx_t *ctx, int argc, char **argv, bool create)
{
    static const cli_cmd_t create_cmd = {
        "group create",
        "group create NAME TARGET=WEIGHT... [--sticky-header H|--sticky-cookie C] [--json]",
        "Create a routing group: NAME resolves to the targets (an app id, or app@version with an "
        "optional v: /production/web@v41), each getting WEIGHT/total of the traffic (weights "
        "0..10000). Fails if the group exists (use `group set`). With a sticky header or "
        "cookie, requests carrying the same value go to the same member.",
        "drover group create web /production/web@41=90 /production/web@42=10\n"
        "drover group create web /production/web@v41=50 /production/web@v42=50 "
        "--sticky-cookie uid"};
    static const cli_cmd_t set_cmd = {
        "group set",
        "group set NAME TARGET=WEIGHT... [--sticky-header H|--sticky-cookie C|--no-sticky] "
        "[--json]",
        "Replace a routing group's members (creating the group if needed). The sticky setting "
        "is kept unless a sticky flag is given. Weights are 0..10000; 0 drains a member.",
        "drover group set web /production/web@v41=90 /production/web@v42=10\n"
        "drover group set web /production/web@42=100 /production/web@41=0"};
    const cli_cmd_t *cmd = create ? &create_cmd : &set_cmd;
    cli_opt_t opts[O_N] = {
        [O_HEADER] = CLI_VALUE("sticky-header", "H", "requests with the same header H stick"),
        [O_COOKIE] = CLI_VALUE("sticky-cookie", "C", "requests with the same cookie C stick"),
        [O_NO_STICKY] = CLI_FLAG("no-sticky", "no sticky seed: spread requests at random"),
        [O_JSON] = CLI_FLAG("json", "print the API answer (the group with shares)"),
    };
    cli_args_t args;
    int rc = cli_parse(ctx, cmd, argc, argv, opts, O_N, 1, SIZE_MAX, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    json_t *members = NULL, *sticky = NULL, *body = NULL;
    const char *name = args.pos[0];
    const char *const *words = args.pos + 1;
    size_t n_words = args.n_pos - 1;
    if (n_words == 0) {
        rc = cli_usage_error(ctx, cmd, "give at least one member as TARGET=WEIGHT");
        goto out;
    }
    if ((rc = group_members_parse(ctx, cmd, words, n_words, &members)) != CLI_CONTINUE)
        goto out;
    if ((rc = group_sticky_flags(ctx, cmd, opts, &sticky)) != CLI_CONTINUE)
        goto out;
    bool raw = opts[O_JSON].count > 0;
    body = json_pack("{s:O}", "members", members);
    int status = 0;
    if (create) {
        if (sticky)
            json_object_set(body, "sticky", sticky);
        rc = group_put(ctx, name, body, "?cas=0", raw, words, n_words, true, &status);
        if (status == 409)
            cli_fail(ctx, "group %s already exists (use `drover group set` to replace it)", name);
        goto out;
    }
    if (sticky) {
        json_object_set(body, "sticky", sticky);
        rc = group_put(ctx, name, body, NULL, raw, words, n_words, false, &status);
        goto out;
    }
    /* Keep the current sticky setting: read it, then write only if the
     * group is still at the revision read. */
    for (int attempt = 0; attempt < GROUP_SET_ATTEMPTS; attempt++) {
        char *path = group_path(name, NULL);
        http_client_resp_t resp;
        json_t *cur = NULL;
        err_t err = {0};
        int grc = cli_api_json(ctx, "GET", path, NULL, 0, &resp, &cur, &err);
        free(path);
        char query[48];
        if (grc == 0) {
            json_t *s = json_object_get(cur, "sticky");
            json_object_set(body, "sticky", s ? s : json_null());
            snprintf(query, sizeof(query), "?cas=%" JSON_INTEGER_FORMAT,
                     json_integer_value(json_object_get(cur, "mod_revision")));
        } else if (resp.status == 404) {
            snprintf(query, sizeof(query), "?cas=0");
        } else {
            rc = cli_fail(ctx, "%s", err.msg);
            json_decref(cur);
            http_client_resp_free(&resp);
            goto out;
        }
        json_decref(cur);
        http_client_resp_free(&resp);
        bool last = attempt + 1 == GROUP_SET_ATTEMPTS;
        rc = group_put(ctx, name, body, query, raw, words, n_words, !last, &status);
        if (status != 409)
            break;
    }
out:
    json_decref(members);
    json_decref(sticky);
    json_decref(body);
    cli_args_free(&args, opts, O_N);
    return rc;
}

/* ---- verbs -------------------------------------------------------------- */

static int group_create(cli_ctx_t *ctx, int argc, char **argv)
{
    return group_write(ctx, argc, argv, true);
}

static int group_set(cli_ctx_t *ctx, int argc, char **argv)
{
    return group_write(ctx, argc, argv, false);
}

static int group_rm(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {"group rm", "group rm NAME [--json]",
                                  "Delete a routing group. Its name stops resolving.",
                                  "drover group rm web"};
    cli_opt_t opts[] = {CLI_FLAG("json", "print the API answer")};
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, opts, 1, 1, 1, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    char *path = group_path(args.pos[0], NULL);
    http_client_resp_t resp;
    json_t *j = NULL;
    err_t err = {0};
    if (cli_api_json(ctx, "DELETE", path, NULL, 0, &resp, &j, &err) < 0) {
        rc = cli_fail(ctx, "%s", err.msg);
    } else {
        if (opts[0].count)
            cli_print_raw(ctx, &resp);
        else
            fprintf(ctx->out, "deleted group %s\n", args.pos[0]);
        rc = CLI_EXIT_OK;
    }
    json_decref(j);
    http_client_resp_free(&resp);
    free(path);
    cli_args_free(&args, opts, 1);
    return rc;
}

static int group_get(cli_ctx_t *ctx, const char *path, bool raw, json_t **out)
{
    http_client_resp_t resp;
    err_t err = {0};
    int rc = cli_api_json(ctx, "GET", path, NULL, 0, &resp, out, &err);
    if (rc == 0 && raw)
        cli_print_raw(ctx, &resp);
    http_client_resp_free(&resp);
    return rc < 0 ? cli_fail(ctx, "%s", err.msg) : CLI_EXIT_OK;
}

static int group_ls(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {
        "group ls", "group ls [--json]",
        "List routing groups with each member's share of the traffic and the last change.",
        "drover group ls\ndrover group ls --json | jq -r '.groups[].name'"};
    cli_opt_t opts[] = {CLI_FLAG("json", "print the API answer ({\"groups\": [...]})")};
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, opts, 1, 0, 0, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    json_t *j = NULL;
    rc = group_get(ctx, "/v1/groups", opts[0].count > 0, &j);
    if (rc == CLI_EXIT_OK && !opts[0].count)
        group_table(json_object_get(j, "groups"), cli_now_ms(), ctx->out);
    json_decref(j);
    cli_args_free(&args, opts, 1);
    return rc;
}

static int group_show_cmd(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {
        "group show", "group show NAME [--json]",
        "Show a routing group: each member's target, weight and share, the sticky setting, "
        "times and the revision (for ?cas= in the API).",
        "drover group show web\ndrover group show web --json | jq '.members'"};
    cli_opt_t opts[] = {CLI_FLAG("json", "print the API answer")};
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, opts, 1, 1, 1, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    char *path = group_path(args.pos[0], NULL);
    json_t *j = NULL;
    rc = group_get(ctx, path, opts[0].count > 0, &j);
    if (rc == CLI_EXIT_OK && !opts[0].count)
        group_show(j, cli_now_ms(), ctx->out);
    json_decref(j);
    free(path);
    cli_args_free(&args, opts, 1);
    return rc;
}

int cli_cmd_group(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_subcmd_t subs[] = {
        {"create", "group create NAME T=W...", "create a routing group", group_create},
        {"set", "group set NAME T=W...", "replace a group's members (weights)", group_set},
        {"rm", "group rm NAME", "delete a routing group", group_rm},
        {"ls", "group ls", "list routing groups and their shares", group_ls},
        {"show", "group show NAME", "show one group's members, weights and shares", group_show_cmd},
    };
    return cli_dispatch(ctx, "group", subs, sizeof(subs) / sizeof(subs[0]), argc, argv);
}
