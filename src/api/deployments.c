/* /v1/deployments: list and follow deployments (blocking reads) and cancel
 * one. The records are written by app changes (apps.c, through
 * sched/records) and advanced by the scheduler; this file only reads them,
 * except for a cancel, which marks the record and so holds the app where it
 * is (the scheduler leaves an app alone while its deployment is
 * cancelled). */
#include "api/api_internal.h"

#include "core/alloc.h"
#include "core/json.h"
#include "core/log.h"
#include "core/str.h"
#include "sched/records.h"
#include "spec/spec.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#define DEP_ID_MAX 32

typedef struct dep_call {
    api_t *api;
    http_req_t *req;
    char *id;     /* one deployment, or NULL for the list */
    char *app;    /* ?app= filter, normalized */
    bool all;     /* ?all=1 */
    char *key;
    int attempts;
} dep_call_t;

static void dep_call_free(dep_call_t *c)
{
    free(c->id);
    free(c->app);
    free(c->key);
    free(c);
}

static bool dep_id_valid(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > DEP_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((id[i] >= 'a' && id[i] <= 'z') || (id[i] >= '0' && id[i] <= '9') || id[i] == '-'))
            return false;
    return true;
}

/* Newest first: by created_at, then id, so the order is stable. */
static int dep_cmp(const void *x, const void *y)
{
    const json_t *a = *(json_t *const *)x, *b = *(json_t *const *)y;
    const char *ta = json_str(a, "created_at"), *tb = json_str(b, "created_at");
    int c = strcmp(tb ? tb : "", ta ? ta : "");
    if (c)
        return c;
    return strcmp(json_str(b, "id") ? json_str(b, "id") : "", json_str(a, "id") ? json_str(a, "id") : "");
}

static void dep_list_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    dep_call_t *c = data;
    if (status) {
        api_reply_store_error(c->api, c->req, status, err);
        dep_call_free(c);
        return;
    }
    const store_op_result_t *op = &res->ops[0];
    json_t **list = xcalloc(op->n_kvs ? op->n_kvs : 1, sizeof(*list));
    size_t n = 0;
    for (size_t i = 0; i < op->n_kvs; i++) {
        json_t *rec = api_record_parse(&op->kvs[i]);
        if (!rec)
            continue;
        const char *st = json_str(rec, "status"), *app = json_str(rec, "app");
        if ((!c->all && (!st || strcmp(st, "running") != 0)) ||
            (c->app && (!app || strcmp(app, c->app) != 0))) {
            json_decref(rec);
            continue;
        }
        list[n++] = rec;
    }
    qsort(list, n, sizeof(*list), dep_cmp);
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, list[i]);
    free(list);
    api_reply_json(c->api, c->req, 200, json_pack("{s:o}", "deployments", arr), res->rev);
    dep_call_free(c);
}

static void dep_get_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    dep_call_t *c = data;
    if (status)
        api_reply_store_error(c->api, c->req, status, err);
    else if (!res->ops[0].n_kvs)
        api_reply_error(c->api, c->req, 404, NULL, "deployment %s not found", c->id);
    else
        api_reply_raw_json(c->api, c->req, 200, res->ops[0].kvs[0].value,
                           res->ops[0].kvs[0].value_len, res->rev);
    dep_call_free(c);
}

static void dep_read(void *data)
{
    dep_call_t *c = data;
    int rc = c->id ? store_get(c->api->store, c->key, false, dep_get_done, c)
                   : store_get(c->api->store, REC_DEPLOYMENTS_PREFIX, true, dep_list_done, c);
    if (rc) {
        api_reply_error(c->api, c->req, 503, NULL, "store unavailable");
        dep_call_free(c);
    }
}

static void dep_gone(void *data)
{
    dep_call_free(data);
}

/* ---- cancel ----------------------------------------------------------------- */

static void dep_cancel_start(dep_call_t *c);

static void dep_cancel_written(int status, const err_t *err, const store_result_t *res, void *data)
{
    dep_call_t *c = data;
    if (status) {
        api_reply_store_error(c->api, c->req, status, err);
    } else if (!res->succeeded) {
        /* the scheduler updated its progress meanwhile: read again */
        if (++c->attempts < 10) {
            dep_cancel_start(c);
            return;
        }
        api_reply_error(c->api, c->req, 409, NULL, "deployment %s kept changing; try again",
                        c->id);
    } else {
        log_info("api", "deployment %s cancelled", c->id);
        dep_read(c);
        return;
    }
    dep_call_free(c);
}

static void dep_cancel_read(int status, const err_t *err, const store_result_t *res, void *data)
{
    dep_call_t *c = data;
    if (status) {
        api_reply_store_error(c->api, c->req, status, err);
        dep_call_free(c);
        return;
    }
    if (!res->ops[0].n_kvs) {
        api_reply_error(c->api, c->req, 404, NULL, "deployment %s not found", c->id);
        dep_call_free(c);
        return;
    }
    const store_kv_t *kv = &res->ops[0].kvs[0];
    json_t *rec = api_record_parse(kv);
    const char *st = rec ? json_str(rec, "status") : NULL;
    if (!st || strcmp(st, "running") != 0) {
        api_reply_error(c->api, c->req, 409, NULL, "deployment %s is not running (status %s)",
                        c->id, st ? st : "unknown");
        json_decref(rec);
        dep_call_free(c);
        return;
    }
    char now[40];
    api_time_now(now, sizeof(now));
    json_object_set_new(rec, "status", json_string("cancelled"));
    json_object_set_new(rec, "reason", json_string("cancelled by request"));
    json_object_set_new(rec, "finished_at", json_string(now));
    json_object_set_new(rec, "updated_at", json_string(now));
    json_t *steps = json_object_get(rec, "steps");
    if (json_is_array(steps)) {
        json_array_append_new(steps, json_pack("{s:s, s:s}", "at", now, "message",
                                               "cancelled: the app keeps what runs now"));
        while (json_array_size(steps) > REC_STEPS_MAX)
            json_array_remove(steps, 0);
    }
    size_t len;
    char *text = json_canonical(rec, &len);
    json_decref(rec);
    store_cmp_t cmp = {.key = c->key, .target = STORE_CMP_MOD, .op = STORE_CMP_EQ, .num = kv->mod_rev};
    store_op_t put = {.type = STORE_OP_PUT, .key = c->key, .value = text, .value_len = len};
    int rc = store_txn(c->api->store, &cmp, 1, &put, 1, NULL, 0, dep_cancel_written, c);
    free(text);
    if (rc) {
        api_reply_store_error(c->api, c->req, rc, NULL);
        dep_call_free(c);
    }
}

static void dep_cancel_start(dep_call_t *c)
{
    if (store_get(c->api->store, c->key, false, dep_cancel_read, c)) {
        api_reply_error(c->api, c->req, 503, NULL, "store unavailable");
        dep_call_free(c);
    }
}

/* ---- routing ------------------------------------------------------------------ */

void api_deployments_handle(api_t *api, http_req_t *req, const char *rest)
{
    bool get = strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0;
    dep_call_t *c = xcalloc(1, sizeof(*c));
    c->api = api;
    c->req = req;
    if (*rest == '\0' || strcmp(rest, "/") == 0) {
        if (!get) {
            api_reply_method_not_allowed(api, req, "GET, HEAD");
            dep_call_free(c);
            return;
        }
        const char *app = http_req_param(req, "app");
        const char *all = http_req_param(req, "all");
        c->all = all && strcmp(all, "0") != 0 && strcmp(all, "false") != 0;
        if (app) {
            err_t err = {0};
            if (spec_id_normalize(app, &c->app, &err)) {
                api_reply_error(api, req, 400, NULL, "app=%s: %s", app, err.msg);
                dep_call_free(c);
                return;
            }
        }
        api_blocking_read(api, req, REC_DEPLOYMENTS_PREFIX, true, dep_read, dep_gone, c);
        return;
    }
    const char *id = rest + 1;
    if (!dep_id_valid(id)) {
        api_reply_error(api, req, 400, NULL, "invalid deployment id \"%.40s\"", id);
        dep_call_free(c);
        return;
    }
    c->id = xstrdup(id);
    c->key = xasprintf("%s%s", REC_DEPLOYMENTS_PREFIX, id);
    if (get)
        api_blocking_read(api, req, c->key, false, dep_read, dep_gone, c);
    else if (strcmp(req->method, "DELETE") == 0)
        dep_cancel_start(c);
    else {
        api_reply_method_not_allowed(api, req, "GET, HEAD, DELETE");
        dep_call_free(c);
    }
}
