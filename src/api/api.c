#include "api/api_internal.h"

#include "core/alloc.h"
#include "core/log.h"
#include "core/str.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define API_VERSION_STRING "0.1.0"

uint64_t api_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void api_time_now(char *out, size_t n)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    size_t w = strftime(out, n, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + w, n - w, ".%03ldZ", ts.tv_nsec / 1000000);
}

api_t *api_new(uv_loop_t *loop, store_t *store, const api_options_t *opts)
{
    api_t *api = xcalloc(1, sizeof(*api));
    api->loop = loop;
    api->store = store;
    if (opts)
        api->opts = *opts;
    if (!api->opts.store_backend)
        api->opts.store_backend = "sqlite";
    if (api->opts.sse_ping_ms <= 0)
        api->opts.sse_ping_ms = 15000;
    api->started_ms = api_now_ms();
    return api;
}

void api_free(api_t *api)
{
    free(api);
}

void api_reply_json(api_t *api, http_req_t *req, int status, json_t *body, int64_t index)
{
    size_t len = 0;
    char *text =
        body ? json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(15)) : NULL;
    if (text)
        len = strlen(text);
    char idx[32];
    snprintf(idx, sizeof(idx), "%" PRId64, index ? index : store_revision(api->store));
    http_header_t hdrs[] = {
        {"Content-Type", "application/json"},
        {"X-Drover-Index", idx},
    };
    /* A trailing newline makes curl output readable; JSON parsers ignore it. */
    if (text) {
        text = xrealloc(text, len + 2);
        text[len++] = '\n';
        text[len] = '\0';
    }
    http_respond(req, status, hdrs, 2, text ? text : "", len);
    free(text);
    json_decref(body);
}

void api_reply_raw_json(api_t *api, http_req_t *req, int status, const char *text, size_t len,
                        int64_t index)
{
    char idx[32];
    snprintf(idx, sizeof(idx), "%" PRId64, index ? index : store_revision(api->store));
    http_header_t hdrs[] = {
        {"Content-Type", "application/json"},
        {"X-Drover-Index", idx},
    };
    http_respond(req, status, hdrs, 2, text, len);
}

void api_reply_error(api_t *api, http_req_t *req, int status, json_t *errors, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    json_t *body = json_pack("{s:s}", "error", msg);
    if (errors)
        json_object_set_new(body, "errors", errors);
    if (status >= 500)
        log_warn("api", "%s %s: %d %s", req->method, req->target, status, msg);
    else
        log_debug("api", "%s %s: %d %s", req->method, req->target, status, msg);
    api_reply_json(api, req, status, body, 0);
}

void api_reply_store_error(api_t *api, http_req_t *req, int status, const err_t *err)
{
    int code = 503;
    if (status == -EINVAL || status == -E2BIG)
        code = status == -E2BIG ? 413 : 400;
    api_reply_error(api, req, code, NULL, "store: %s", err_str(err, status));
}

void api_reply_method_not_allowed(api_t *api, http_req_t *req, const char *allow)
{
    json_t *body = json_object();
    json_object_set_new(
        body, "error",
        json_sprintf("method %s not allowed on %s (allowed: %s)", req->method, req->path, allow));
    char *text = json_dumps(body, JSON_COMPACT);
    http_header_t hdrs[] = {{"Content-Type", "application/json"}, {"Allow", allow}};
    http_respond(req, 405, hdrs, 2, text, strlen(text));
    free(text);
    json_decref(body);
}

int api_parse_blocking(const http_req_t *req, int64_t *index, int64_t *wait_ms, err_t *err)
{
    *index = 0;
    *wait_ms = 5 * 60 * 1000;
    const char *v = http_req_param(req, "index");
    if (v && str_to_i64(v, 0, INT64_MAX, index))
        return err_set(err, -EINVAL, "query parameter index=%s: expected a revision number", v);
    v = http_req_param(req, "wait");
    if (v) {
        if (str_to_duration_ms(v, wait_ms))
            return err_set(err, -EINVAL,
                           "query parameter wait=%s: expected a duration like 30s, 500ms or 5m", v);
        if (*wait_ms > 10 * 60 * 1000)
            *wait_ms = 10 * 60 * 1000;
    }
    return 0;
}

json_t *api_record_parse(const store_kv_t *kv)
{
    json_error_t je;
    json_t *v = json_loadb(kv->value, kv->value_len, 0, &je);
    if (!v || !json_is_object(v)) {
        log_error("api", "stored record %s is not a JSON object: %s", kv->key, je.text);
        json_decref(v);
        return NULL;
    }
    return v;
}

/* Only an artifact upload needs more than the server's default body limit;
 * every other route keeps the small one, so a stray big request is refused
 * before its body is read. */
size_t api_body_limit(const char *method, const char *path, void *data)
{
    if (strcmp(method, "POST") == 0 &&
        (strcmp(path, "/v1/artifacts") == 0 || strcmp(path, "/v1/artifacts/") == 0))
        return API_ARTIFACT_MAX;
    return 0;
}

static void api_status(api_t *api, http_req_t *req)
{
    if (strcmp(req->method, "GET") && strcmp(req->method, "HEAD")) {
        api_reply_method_not_allowed(api, req, "GET, HEAD");
        return;
    }
    json_t *body =
        json_pack("{s:s, s:I, s:s, s:I}", "version", API_VERSION_STRING, "revision",
                  (json_int_t)store_revision(api->store), "store", api->opts.store_backend,
                  "uptime_s", (json_int_t)((api_now_ms() - api->started_ms) / 1000));
    api_reply_json(api, req, 200, body, 0);
}

/* Route by path. Paths are matched on the decoded path; an app id or KV key
 * is the rest of the path after its prefix. */
void api_handle(http_req_t *req, void *data)
{
    api_t *api = data;
    const char *p = req->path;
    log_debug("api", "%s %s from %s", req->method, req->target, req->remote);
    if (strcmp(p, "/v1/apps") == 0 || str_has_prefix(p, "/v1/apps/")) {
        api_apps_handle(api, req, p + strlen("/v1/apps"));
    } else if (strcmp(p, "/v1/kv") == 0 || str_has_prefix(p, "/v1/kv/")) {
        api_kv_handle(api, req, p[6] ? p + 7 : "");
    } else if (strcmp(p, "/v1/nodes") == 0 || str_has_prefix(p, "/v1/nodes/")) {
        api_nodes_handle(api, req, p + strlen("/v1/nodes"));
    } else if (strcmp(p, "/v1/instances") == 0 || str_has_prefix(p, "/v1/instances/")) {
        api_instances_handle(api, req, p + strlen("/v1/instances"));
    } else if (strcmp(p, "/v1/artifacts") == 0 || str_has_prefix(p, "/v1/artifacts/")) {
        api_artifacts_handle(api, req, p + strlen("/v1/artifacts"));
    } else if (strcmp(p, "/v1/groups") == 0 || str_has_prefix(p, "/v1/groups/")) {
        api_groups_handle(api, req, p + strlen("/v1/groups"));
    } else if (strcmp(p, "/v1/deployments") == 0 || str_has_prefix(p, "/v1/deployments/")) {
        api_deployments_handle(api, req, p + strlen("/v1/deployments"));
    } else if (strcmp(p, "/v1/events") == 0) {
        api_events_handle(api, req);
    } else if (strcmp(p, "/v1/status") == 0) {
        api_status(api, req);
    } else {
        api_reply_error(api, req, 404, NULL, "no such API path: %s", p);
    }
}
