/* Calls from the agent to the API, run on libuv's thread pool with the
 * blocking client so the agent's loop keeps running health checks and
 * instance exits while the server is slow or down. */
#include "agent/agent_internal.h"

#include "core/alloc.h"
#include "core/log.h"
#include "core/str.h"
#include "http/client.h"

#include <errno.h>
#include <string.h>

#define REMOTE_MAX_BODY (16u * 1024 * 1024)

typedef struct remote_req {
    uv_work_t work;
    agent_t *agent;
    char *method;
    char *url;
    char *body;
    size_t body_len;
    long timeout_ms;
    remote_cb cb;
    void *data;
    int rc;
    err_t err;
    http_client_resp_t resp;
} remote_req_t;

static void remote_work(uv_work_t *w)
{
    remote_req_t *r = w->data;
    http_header_t hdr = {"Content-Type", "application/json"};
    r->rc = http_client_request_cancellable(r->method, r->url, r->body ? &hdr : NULL,
                                            r->body ? 1 : 0, r->body, r->body_len, r->timeout_ms,
                                            &r->agent->cancel, &r->resp, &r->err);
}

static void remote_after(uv_work_t *w, int status)
{
    remote_req_t *r = w->data;
    agent_t *a = r->agent;
    a->calls_in_flight--;
    if (status == UV_ECANCELED && !r->rc)
        r->rc = err_set(&r->err, -ECANCELED, "%s %s: cancelled", r->method, r->url);
    json_t *body = NULL;
    int64_t index = 0;
    if (!r->rc && r->resp.body.len) {
        body = json_loadb(r->resp.body.data, r->resp.body.len, 0, NULL);
        char *idx = http_client_resp_header(&r->resp, "X-Drover-Index");
        if (idx && str_to_i64(idx, 0, INT64_MAX, &index))
            index = 0;
        free(idx);
    }
    if (r->cb)
        r->cb(a, r->rc, r->rc ? &r->err : NULL, r->resp.status, body, index, r->data);
    json_decref(body);
    http_client_resp_free(&r->resp);
    free(r->method);
    free(r->url);
    free(r->body);
    free(r);
    if (a->stopping)
        agent_maybe_done(a);
}

void remote_call(agent_t *a, const char *method, const char *path, const json_t *body,
                 long timeout_ms, remote_cb cb, void *data)
{
    remote_req_t *r = xcalloc(1, sizeof(*r));
    r->agent = a;
    r->method = xstrdup(method);
    r->url = xasprintf("%s%s", a->opts.server_url, path);
    if (body) {
        r->body = json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(15));
        r->body_len = strlen(r->body);
    }
    r->timeout_ms = timeout_ms;
    r->cb = cb;
    r->data = data;
    http_client_resp_init(&r->resp, REMOTE_MAX_BODY);
    r->work.data = r;
    a->calls_in_flight++;
    uv_queue_work(a->loop, &r->work, remote_work, remote_after);
}
