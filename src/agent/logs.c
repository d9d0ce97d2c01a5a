/* The agent's own HTTP endpoint: instance logs, read from the files the
 * isolate's monitor writes, and the pools and crashlogs of worker
 * instances (their engines). The API redirects `drover logs` here, so log
 * bytes go from the node to the reader without passing through the server.
 * File reads run on the thread pool; the loop only moves buffers. */
#include "agent/agent_internal.h"

#include "core/alloc.h"
#include "core/buf.h"
#include "core/json.h"
#include "core/log.h"
#include "core/str.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LOGS_TAIL_DEFAULT 100
#define LOGS_TAIL_MAX     100000
#define LOGS_TAIL_WINDOW  (4u * 1024 * 1024) /* look at most this far back for the tail */
#define LOGS_FOLLOW_CHUNK (256u * 1024)
#define LOGS_FOLLOW_MS    200

typedef struct logs_call {
    agent_t *agent;
    http_req_t *req;
    char *paths[2];
    off_t offs[2];
    int n_paths;
    int64_t tail;
    bool follow;
    bool first; /* the tail is not read yet */
    bool ended; /* client gone or stream ended */
    bool busy;  /* a read is on the thread pool */
    buf_t out;  /* filled by the worker */
    uv_work_t work;
    uv_timer_t timer;
} logs_call_t;

/* Last `lines` lines of the file (bounded window), and the file size. */
static void logs_read_tail(const char *path, int64_t lines, buf_t *out, off_t *end)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    struct stat st;
    if (fstat(fd, &st) == 0) {
        off_t from = st.st_size > (off_t)LOGS_TAIL_WINDOW ? st.st_size - LOGS_TAIL_WINDOW : 0;
        size_t len = (size_t)(st.st_size - from);
        char *data = xmalloc(len + 1);
        ssize_t got = lines > 0 ? pread(fd, data, len, from) : 0;
        if (got > 0) {
            size_t n = (size_t)got, start = 0;
            int64_t seen = 0;
            for (size_t i = n; i > 0; i--) {
                if (data[i - 1] == '\n' && i != n && ++seen == lines) {
                    start = i;
                    break;
                }
            }
            buf_append(out, data + start, n - start);
        }
        free(data);
        *end = st.st_size;
    }
    close(fd);
}

/* New bytes since *off; a file that shrank was rotated: start over. */
static void logs_read_more(const char *path, off_t *off, buf_t *out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    struct stat st;
    if (fstat(fd, &st) == 0) {
        if (st.st_size < *off)
            *off = 0;
        size_t len = (size_t)(st.st_size - *off);
        if (len > LOGS_FOLLOW_CHUNK)
            len = LOGS_FOLLOW_CHUNK;
        if (len) {
            char *data = xmalloc(len);
            ssize_t got = pread(fd, data, len, *off);
            if (got > 0) {
                buf_append(out, data, (size_t)got);
                *off += got;
            }
            free(data);
        }
    }
    close(fd);
}

static void logs_work(uv_work_t *w)
{
    logs_call_t *c = w->data;
    for (int i = 0; i < c->n_paths; i++) {
        if (c->first)
            logs_read_tail(c->paths[i], c->tail, &c->out, &c->offs[i]);
        else
            logs_read_more(c->paths[i], &c->offs[i], &c->out);
    }
}

static void logs_closed(uv_handle_t *h)
{
    logs_call_t *c = h->data;
    for (int i = 0; i < c->n_paths; i++)
        free(c->paths[i]);
    buf_free(&c->out);
    free(c);
}

static void logs_finish(logs_call_t *c)
{
    if (c->ended)
        return;
    c->ended = true;
    uv_timer_stop(&c->timer);
    http_stream_end(c->req);
    if (!c->busy)
        uv_close((uv_handle_t *)&c->timer, logs_closed);
}

static void logs_tick(uv_timer_t *t);

static void logs_after(uv_work_t *w, int status)
{
    logs_call_t *c = w->data;
    c->busy = false;
    if (c->ended) {
        uv_close((uv_handle_t *)&c->timer, logs_closed);
        return;
    }
    if (c->out.len && http_stream_write(c->req, c->out.data, c->out.len) != 0) {
        logs_finish(c);
        return;
    }
    buf_reset(&c->out);
    c->first = false;
    if (!c->follow)
        logs_finish(c);
    else
        uv_timer_start(&c->timer, logs_tick, LOGS_FOLLOW_MS, 0);
}

static void logs_tick(uv_timer_t *t)
{
    logs_call_t *c = t->data;
    if (c->ended || c->busy)
        return;
    c->busy = true;
    uv_queue_work(c->agent->loop, &c->work, logs_work, logs_after);
}

static void logs_abort(http_req_t *req, void *data)
{
    logs_finish(data);
}

static bool logs_id_ok(const char *id)
{
    if (!*id || strlen(id) > 200 || strstr(id, ".."))
        return false;
    for (const char *p = id; *p; p++)
        if (*p == '/' || (unsigned char)*p < 0x21)
            return false;
    return true;
}

static void logs_reply(http_req_t *req, int status, const char *msg)
{
    char *body = xasprintf("{\"error\":\"%s\"}\n", msg);
    http_header_t h = {"Content-Type", "application/json"};
    http_respond(req, status, &h, 1, body, strlen(body));
    free(body);
}

static void logs_handle(agent_t *a, http_req_t *req, const char *id)
{
    if (!logs_id_ok(id)) {
        logs_reply(req, 400, "invalid instance id");
        return;
    }
    char *dir = xasprintf("%s/instances/%s", a->opts.data_dir, id);
    struct stat st;
    if (stat(dir, &st) != 0) {
        free(dir);
        logs_reply(req, 404, "no such instance on this node");
        return;
    }
    logs_call_t *c = xcalloc(1, sizeof(*c));
    c->agent = a;
    c->req = req;
    c->tail = LOGS_TAIL_DEFAULT;
    c->first = true;
    buf_init(&c->out, 0);
    const char *v = http_req_param(req, "tail");
    if (v && str_to_i64(v, 0, LOGS_TAIL_MAX, &c->tail)) {
        free(dir);
        free(c);
        logs_reply(req, 400, "query parameter tail: expected a number of lines 0-100000");
        return;
    }
    v = http_req_param(req, "follow");
    c->follow = v && strcmp(v, "0") && strcmp(v, "false");
    const char *stream = http_req_param(req, "stream");
    if (!stream || !strcmp(stream, "all") || !strcmp(stream, "stdout"))
        c->paths[c->n_paths++] = xasprintf("%s/stdout.log", dir);
    if (!stream || !strcmp(stream, "all") || !strcmp(stream, "stderr"))
        c->paths[c->n_paths++] = xasprintf("%s/stderr.log", dir);
    free(dir);
    if (!c->n_paths) {
        free(c);
        logs_reply(req, 400, "query parameter stream: expected stdout, stderr or all");
        return;
    }
    uv_timer_init(a->loop, &c->timer);
    c->timer.data = c;
    c->work.data = c;
    http_header_t h[] = {{"Content-Type", "text/plain; charset=utf-8"},
                         {"X-Drover-Node", a->node_id}};
    http_req_on_abort(req, logs_abort, c);
    if (http_stream_begin(req, 200, h, 2) != 0) {
        logs_finish(c);
        return;
    }
    logs_tick(&c->timer);
}

/* ---- worker pools: /v1/instances/<id>/pool and /crashlogs ---- */

static void pool_reply_json(agent_t *a, http_req_t *req, int status, json_t *body)
{
    char *text = json_dumps(body, JSON_COMPACT);
    size_t len = strlen(text);
    http_header_t h[] = {{"Content-Type", "application/json"}, {"X-Drover-Node", a->node_id}};
    http_respond(req, status, h, 2, text, len);
    free(text);
    json_decref(body);
}

static void pool_error(agent_t *a, http_req_t *req, int status, const char *msg)
{
    pool_reply_json(a, req, status, json_pack("{s:s}", "error", msg));
}

/* GET pool (status), POST pool {"workers": N} (pin on this node), GET
 * crashlogs (list), GET crashlogs/<id> (text). `rest` is what follows
 * /v1/instances/<id>/. */
static void pool_handle(agent_t *a, http_req_t *req, const char *id, const char *rest)
{
    inst_t *in = NULL;
    for (inst_t *i = a->insts; i; i = i->next)
        if (!strcmp(i->id, id))
            in = i;
    if (!in) {
        pool_error(a, req, 404, "no such instance on this node");
        return;
    }
    if (!inst_is_worker(in)) {
        pool_error(a, req, 404, "not a worker instance (its app has no \"kind\": \"worker\")");
        return;
    }
    bool post = !strcmp(req->method, "POST");
    if (!strcmp(rest, "pool") && post) {
        err_t err = {0};
        json_t *body = json_parse(req->body, req->body_len, &err);
        json_t *w = json_object_get(body, "workers");
        if (!json_is_integer(w) || json_integer_value(w) < 0 || json_integer_value(w) > 1000000) {
            json_decref(body);
            pool_error(a, req, 400, "workers: expected an integer >= 0 (0: automatic)");
            return;
        }
        int n = (int)json_integer_value(w);
        json_decref(body);
        if (!in->engine) {
            in->pool_pin = n;
            pool_error(a, req, 409, "the worker pool is not running (it is starting or stopping)");
            return;
        }
        if (inst_pool_pin(in, n, &err)) {
            pool_error(a, req, 400, err.msg);
            return;
        }
        pool_reply_json(a, req, 200, engine_app_status(in->engine));
        return;
    }
    if (post) {
        pool_error(a, req, 405, "method not allowed");
        return;
    }
    if (!in->engine) {
        pool_error(a, req, 409, "the worker pool is not running (it is starting or stopping)");
        return;
    }
    if (!strcmp(rest, "pool")) {
        pool_reply_json(a, req, 200, engine_app_status(in->engine));
    } else if (!strcmp(rest, "crashlogs")) {
        pool_reply_json(a, req, 200, engine_app_crashlogs(in->engine));
    } else if (str_has_prefix(rest, "crashlogs/")) {
        size_t len = 0;
        char *text = engine_app_crashlog(in->engine, rest + strlen("crashlogs/"), &len);
        if (!text) {
            pool_error(a, req, 404, "no such crashlog");
            return;
        }
        http_header_t h[] = {{"Content-Type", "text/plain; charset=utf-8"},
                             {"X-Drover-Node", a->node_id}};
        http_respond(req, 200, h, 2, text, len);
        free(text);
    } else {
        pool_error(a, req, 404, "no such path on the agent");
    }
}

void agent_http_handle(http_req_t *req, void *data)
{
    agent_t *a = data;
    const char *p = req->path;
    if (str_has_prefix(p, "/v1/instances/") && !str_has_suffix(p, "/logs")) {
        const char *id = p + strlen("/v1/instances/");
        const char *slash = strchr(id, '/');
        if (slash && (!strcmp(slash + 1, "pool") || !strcmp(slash + 1, "crashlogs") ||
                      str_has_prefix(slash + 1, "crashlogs/"))) {
            char *iid = xstrndup(id, (size_t)(slash - id));
            if (strcmp(req->method, "GET") && strcmp(req->method, "HEAD") &&
                strcmp(req->method, "POST"))
                logs_reply(req, 405, "method not allowed");
            else
                pool_handle(a, req, iid, slash + 1);
            free(iid);
            return;
        }
    }
    if (strcmp(req->method, "GET") && strcmp(req->method, "HEAD")) {
        logs_reply(req, 405, "method not allowed");
        return;
    }
    if (str_has_prefix(p, "/v1/instances/") && str_has_suffix(p, "/logs")) {
        size_t n = strlen(p) - strlen("/v1/instances/") - strlen("/logs");
        char *id = xstrndup(p + strlen("/v1/instances/"), n);
        logs_handle(a, req, id);
        free(id);
        return;
    }
    if (!strcmp(p, "/v1/status")) {
        int n = 0;
        for (inst_t *in = a->insts; in; in = in->next)
            n++;
        char *body = xasprintf("{\"node\":\"%s\",\"instances\":%d,\"registered\":%s}\n", a->node_id,
                               n, a->registered ? "true" : "false");
        http_header_t h = {"Content-Type", "application/json"};
        http_respond(req, 200, &h, 1, body, strlen(body));
        free(body);
        return;
    }
    logs_reply(req, 404, "no such path on the agent");
}
