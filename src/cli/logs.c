/* `drover logs APP|INSTANCE`: an instance's output. The logs stay on the
 * node that ran the instance; GET /v1/instances/<id>/logs redirects to its
 * agent, and the bytes are copied to stdout as they arrive. */
#include "cli/cli.h"

#include "core/alloc.h"
#include "core/json.h"
#include "core/str.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define LOGS_RAND_LEN  12     /* hex digits after the '.' of an instance id */
#define LOGS_TAIL_MAX  100000 /* the agent's bound on ?tail= */
#define LOGS_IDS_SHOWN 8      /* ids named in an error before "..." */
#define LOGS_HEAD_MAX  4096   /* bytes of an error answer kept for its message */

/* ---- pure parts --------------------------------------------------------- */

bool cli_instance_id_like(const char *s)
{
    const char *dot = strrchr(s, '.');
    if (!dot || dot == s || strchr(s, '/') || strlen(dot + 1) != LOGS_RAND_LEN)
        return false;
    for (const char *p = dot + 1; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    return true;
}

char *cli_logs_path(const char *id, int64_t tail, bool follow, const char *stream)
{
    buf_t b = BUF_INIT(0);
    buf_append_str(&b, "/v1/instances/");
    cli_url_escape(&b, id, false);
    buf_append_str(&b, "/logs");
    char sep = '?';
    if (tail >= 0) {
        buf_printf(&b, "%ctail=%lld", sep, (long long)tail);
        sep = '&';
    }
    if (follow) {
        buf_printf(&b, "%cfollow=1", sep);
        sep = '&';
    }
    if (stream)
        buf_printf(&b, "%cstream=%s", sep, stream);
    return buf_steal(&b, NULL);
}

static int logs_id_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* "a, b, c" naming at most LOGS_IDS_SHOWN ids, for error messages. */
static char *logs_id_list(const char **ids, size_t n)
{
    buf_t b = BUF_INIT(0);
    for (size_t i = 0; i < n && i < LOGS_IDS_SHOWN; i++)
        buf_printf(&b, "%s%s", i ? ", " : "", ids[i]);
    if (n > LOGS_IDS_SHOWN)
        buf_printf(&b, ", ... (%zu more)", n - LOGS_IDS_SHOWN);
    return buf_steal(&b, NULL);
}

int cli_logs_pick(const json_t *instances, const char *app, const char *instance, bool follow,
                  const char ***ids, size_t *n_ids, err_t *err)
{
    *ids = NULL;
    *n_ids = 0;
    size_t n = 0;
    const char **all = xcalloc(json_array_size(instances) + 1, sizeof(*all));
    for (size_t i = 0; i < json_array_size(instances); i++) {
        const char *id = json_str(json_array_get(instances, i), "id");
        if (id)
            all[n++] = id;
    }
    qsort(all, n, sizeof(*all), logs_id_cmp);
    int rc = 0;
    if (n == 0) {
        rc = err_set(err, -ENOENT, "app %s has no instances", app);
    } else if (instance) {
        const char *found = NULL;
        for (size_t i = 0; i < n && !found; i++)
            if (strcmp(all[i], instance) == 0)
                found = all[i];
        if (found) {
            all[0] = found;
            n = 1;
        } else {
            char *list = logs_id_list(all, n);
            rc = err_set(err, -ESRCH, "instance %s is not an instance of %s (its instances: %s)",
                         instance, app, list);
            free(list);
        }
    } else if (follow && n > 1) {
        char *list = logs_id_list(all, n);
        rc = err_set(err, -EINVAL,
                     "app %s has %zu instances; --follow reads one: add --instance ID (one of %s)",
                     app, n, list);
        free(list);
    }
    if (rc < 0) {
        free(all);
        return rc;
    }
    *ids = all;
    *n_ids = n;
    return 0;
}

/* ---- streaming ---------------------------------------------------------- */

typedef struct logs_stream {
    cli_ctx_t *ctx;
    http_client_resp_t *resp;
    bool checked; /* the status was looked at (first chunk) */
    bool ok;      /* 2xx: the body is log output */
    bool write_failed;
    buf_t head;   /* an error answer's first bytes */
    size_t n_out; /* log bytes written */
    char last;    /* last log byte written */
} logs_stream_t;

/* Log bytes go out as they come (a follower watches them live); an error
 * answer is kept for its message instead. */
static int logs_on_data(const char *p, size_t n, void *data)
{
    logs_stream_t *st = data;
    if (!st->checked) {
        st->ok = st->resp->status >= 200 && st->resp->status <= 299;
        st->checked = true;
    }
    if (!st->ok) {
        size_t room = st->head.max - st->head.len;
        buf_append(&st->head, p, n < room ? n : room);
        return 0;
    }
    if (n == 0)
        return 0;
    if (fwrite(p, 1, n, st->ctx->out) != n || fflush(st->ctx->out) != 0) {
        /* The reader went away (`drover logs x | head`): stop quietly. */
        st->write_failed = true;
        return 1;
    }
    st->n_out += n;
    st->last = p[n - 1];
    return 0;
}

typedef struct logs_req {
    int64_t tail;
    bool follow;
    const char *stream;
} logs_req_t;

/* Copy one instance's log to ctx->out. Returns CLI_EXIT_OK or, after
 * printing why, CLI_EXIT_ERROR. *ended_line tells whether the output ends
 * at a line start (for the next header). */
static int logs_copy(cli_ctx_t *ctx, const char *id, const char *node, const logs_req_t *r,
                     bool *ended_line)
{
    char *path = cli_logs_path(id, r->tail, r->follow, r->stream);
    char *url = xasprintf("%s%s", ctx->addr, path);
    free(path);
    http_client_resp_t resp;
    http_client_resp_init(&resp, 0);
    logs_stream_t st = {.ctx = ctx, .resp = &resp};
    buf_init(&st.head, LOGS_HEAD_MAX);
    http_header_t hdr = {"Accept", "text/plain"};
    err_t err = {0};
    /* A followed stream never ends by itself; a tail is one bounded read. */
    int trc = http_client_stream_follow("GET", url, &hdr, 1, r->follow ? 0 : CLI_TIMEOUT_MS,
                                        logs_on_data, &st, &resp, &err);
    int rc = CLI_EXIT_OK;
    if (st.write_failed) {
        rc = CLI_EXIT_OK;
    } else if (trc < 0) {
        /* The API answered the instance list a moment ago; what failed is
         * most likely the node's agent, which serves the bytes. */
        char where[128] = "";
        if (node)
            snprintf(where, sizeof(where), " (the agent of node %s serves these logs)", node);
        rc = cli_fail(ctx, "%s: %s%s%s", id, st.n_out ? "log stream broken: " : "",
                      err_str(&err, trc), where);
    } else if (resp.status < 200 || resp.status > 299) {
        char msg[ERR_MSG_MAX];
        cli_error_message(resp.status, st.head.data, st.head.len, msg, sizeof(msg));
        rc = cli_fail(ctx, "%s: %s", id, msg);
    }
    *ended_line = st.n_out == 0 || st.last == '\n';
    buf_free(&st.head);
    http_client_resp_free(&resp);
    free(url);
    return rc;
}

/* ---- verb --------------------------------------------------------------- */

/* GET /v1/instances/<id>: 0 with *rec, -ENOENT when there is no such
 * instance, else the API error (printed by the caller). */
static int logs_get_instance(cli_ctx_t *ctx, const char *id, json_t **rec, err_t *err)
{
    buf_t path = BUF_INIT(0);
    buf_append_str(&path, "/v1/instances/");
    cli_url_escape(&path, id, false);
    http_client_resp_t resp;
    int rc = cli_api_json(ctx, "GET", path.data, NULL, 0, &resp, rec, err);
    if (rc < 0 && resp.status == 404)
        rc = -ENOENT;
    http_client_resp_free(&resp);
    buf_free(&path);
    return rc;
}

int cli_cmd_logs(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {
        "logs", "logs APP|INSTANCE [--instance ID] [-f] [--tail N] [--stdout|--stderr]",
        "Print the output (stdout and stderr) of an app's instance, read from the node that "
        "runs it. With one instance, its log; with several, the tail of each under a "
        "\"==> ID <==\" header, or the one picked with --instance. -f keeps printing as the "
        "instance writes (one instance only). An instance id may stand for APP.",
        "drover logs /production/web\n"
        "drover logs /production/web --instance production_web.5f2c9a1b3d4e -f\n"
        "drover logs production_web.5f2c9a1b3d4e --tail 20 --stderr"};
    enum { O_INSTANCE, O_FOLLOW, O_TAIL, O_STDOUT, O_STDERR, O_N };
    cli_opt_t opts[O_N] = {
        [O_INSTANCE] = CLI_VALUE("instance", "ID", "read this instance of APP"),
        [O_FOLLOW] = CLI_FLAG_SHORT("follow", 'f', "keep printing output as it is written"),
        [O_TAIL] =
            CLI_VALUE("tail", "N", "start with the last N lines of each stream (default 100)"),
        [O_STDOUT] = CLI_FLAG("stdout", "only the instance's stdout"),
        [O_STDERR] = CLI_FLAG("stderr", "only the instance's stderr"),
    };
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, opts, O_N, 1, 1, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *target = args.pos[0];
    const char *want = opts[O_INSTANCE].value;
    logs_req_t req = {.tail = -1, .follow = opts[O_FOLLOW].count > 0};
    json_t *list = NULL, *rec = NULL;
    const char **ids = NULL;
    size_t n_ids = 0;
    err_t err = {0};
    if (opts[O_STDOUT].count && opts[O_STDERR].count) {
        rc = cli_usage_error(ctx, &cmd, "--stdout and --stderr exclude each other (neither: both)");
        goto out;
    }
    req.stream = opts[O_STDOUT].count ? "stdout" : opts[O_STDERR].count ? "stderr" : NULL;
    if (opts[O_TAIL].value && str_to_i64(opts[O_TAIL].value, 0, LOGS_TAIL_MAX, &req.tail) < 0) {
        rc = cli_usage_error(ctx, &cmd, "--tail %s: expected a number of lines 0-%d",
                             opts[O_TAIL].value, LOGS_TAIL_MAX);
        goto out;
    }

    /* An instance id names its app too: read that instance directly. */
    bool tried_instance = false;
    if (cli_instance_id_like(target) && (!want || strcmp(want, target) == 0)) {
        tried_instance = true;
        int grc = logs_get_instance(ctx, target, &rec, &err);
        if (grc == 0) {
            ids = xcalloc(1, sizeof(*ids));
            ids[0] = target;
            n_ids = 1;
        } else if (grc != -ENOENT) {
            rc = cli_fail(ctx, "%s", err.msg);
            goto out;
        }
    }
    if (!n_ids) {
        buf_t path = BUF_INIT(0);
        buf_append_str(&path, "/v1/instances?app=");
        cli_url_escape(&path, target, false);
        http_client_resp_t resp;
        int lrc = cli_api_json(ctx, "GET", path.data, NULL, 0, &resp, &list, &err);
        http_client_resp_free(&resp);
        buf_free(&path);
        if (lrc < 0) {
            if (tried_instance)
                rc = cli_fail(ctx, "no instance or app named %s", target);
            else
                rc = cli_fail(ctx, "%s", err.msg);
            goto out;
        }
        json_t *insts = json_object_get(list, "instances");
        if (json_array_size(insts) == 0) {
            err_t aerr = {0};
            if (cli_app_exists(ctx, target, &aerr) < 0) {
                if (tried_instance)
                    rc = cli_fail(ctx, "no instance or app named %s", target);
                else
                    rc = cli_fail(ctx, "%s", aerr.msg);
                goto out;
            }
        }
        int prc = cli_logs_pick(insts, target, want, req.follow, &ids, &n_ids, &err);
        if (prc == -EINVAL) {
            rc = cli_usage_error(ctx, &cmd, "%s", err.msg);
            goto out;
        }
        if (prc < 0) {
            rc = cli_fail(ctx, "%s", err.msg);
            goto out;
        }
    }

    /* Several instances read like `tail` reads several files. */
    rc = CLI_EXIT_OK;
    bool at_line_start = true;
    for (size_t i = 0; i < n_ids; i++) {
        if (n_ids > 1) {
            if (!at_line_start)
                fputc('\n', ctx->out);
            fprintf(ctx->out, "%s==> %s <==\n", i ? "\n" : "", ids[i]);
            fflush(ctx->out);
        }
        const char *node = NULL;
        json_t *insts = json_object_get(list, "instances");
        for (size_t k = 0; k < json_array_size(insts) && !node; k++) {
            const char *kid = json_str(json_array_get(insts, k), "id");
            if (kid && strcmp(kid, ids[i]) == 0)
                node = json_str(json_array_get(insts, k), "node");
        }
        if (!node)
            node = json_str(rec, "node");
        if (logs_copy(ctx, ids[i], node, &req, &at_line_start) != CLI_EXIT_OK)
            rc = CLI_EXIT_ERROR;
    }
out:
    free(ids);
    json_decref(list);
    json_decref(rec);
    cli_args_free(&args, opts, O_N);
    return rc;
}
