/* /v1/instances: the actual state of every instance, as its node's agent
 * reports it. The control plane only stores and shows these records (the
 * desired side is /assign/, written by placement); the one thing it derives
 * is an app's last failure, written in the same transaction as the failed
 * report so the two never disagree. Logs stay on the node: the API
 * redirects to the agent that holds them. */
#include "api/api_internal.h"

#include "core/alloc.h"
#include "core/json.h"
#include "core/log.h"
#include "core/str.h"
#include "spec/spec.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#define INST_PORTS_MAX 64

typedef struct inst_call {
    api_t *api;
    http_req_t *req;
    char *id;
    char *key;      /* /instances/<id> */
    char *app;      /* GET list: ?app= filter (normalized); logs: unused */
    char *node;     /* GET list: ?node= filter; logs: the instance's node */
    char *node_key; /* logs: /nodes/<node> */
    char *sub;      /* node-held paths: what follows /v1/instances/<id>/ */
} inst_call_t;

static const char *const inst_states[] = {"staging", "starting", "running", "healthy", "unhealthy",
                                          "killing", "finished", "failed",  "killed",  "lost"};

static inst_call_t *inst_call_new(api_t *api, http_req_t *req, const char *id)
{
    inst_call_t *c = xcalloc(1, sizeof(*c));
    c->api = api;
    c->req = req;
    c->id = xstrdup(id);
    c->key = xasprintf("%s%s", API_INSTANCES_PREFIX, id);
    return c;
}

static void inst_call_free(inst_call_t *c)
{
    free(c->id);
    free(c->key);
    free(c->app);
    free(c->node);
    free(c->node_key);
    free(c->sub);
    free(c);
}

/* The app part of an instance id with '_' for '/' ("production_web"): the
 * instance id alone names its app, for logs, filters and humans. */
int api_instance_id_check(const char *id, char **app_out, err_t *err)
{
    if (app_out)
        *app_out = NULL;
    size_t n = strlen(id);
    if (n > API_INSTANCE_ID_MAX)
        return err_set(err, -EINVAL, "instance id is %zu characters long; at most %d allowed", n,
                       API_INSTANCE_ID_MAX);
    const char *dot = strrchr(id, '.');
    if (!dot || dot == id || strlen(dot + 1) != API_INSTANCE_RAND_LEN)
        return err_set(err, -EINVAL,
                       "instance id \"%.80s\": expected <app segments joined by '_'>.<%d hex "
                       "digits>",
                       id, API_INSTANCE_RAND_LEN);
    for (const char *p = dot + 1; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return err_set(err, -EINVAL, "instance id \"%.80s\": suffix must be lowercase hex", id);
    if (strchr(id, '/'))
        return err_set(err, -EINVAL, "instance id \"%.80s\": '/' is not allowed", id);
    char *app = xasprintf("/%.*s", (int)(dot - id), id);
    for (char *p = app + 1; *p; p++)
        if (*p == '_')
            *p = '/';
    err_t e = {0};
    int rc = spec_id_normalize(app, NULL, &e);
    if (rc) {
        free(app);
        return err_set(err, -EINVAL, "instance id \"%.80s\": its app part is invalid (%s)", id,
                       e.msg);
    }
    if (app_out)
        *app_out = app;
    else
        free(app);
    return 0;
}

static bool inst_state_known(const char *s)
{
    for (size_t i = 0; s && i < sizeof(inst_states) / sizeof(*inst_states); i++)
        if (strcmp(s, inst_states[i]) == 0)
            return true;
    return false;
}

/* ---- report (PUT) ---------------------------------------------------- */

static bool inst_opt_type(const json_t *doc, const char *k, int type, bool null_ok)
{
    json_t *v = json_object_get(doc, k);
    return !v || (null_ok && json_is_null(v)) || (int)json_typeof(v) == type ||
           (type == JSON_TRUE && json_is_boolean(v));
}

/* Check the fields the control plane reads; anything else the agent sends
 * is kept as it is (the record is the agent's to shape). */
static void inst_validate(json_t *doc, const char *id, const char *id_app, json_t *errors)
{
    char path[48];
    json_t *v = json_object_get(doc, "id");
    if (v && (!json_is_string(v) || strcmp(json_string_value(v), id) != 0))
        json_error_push(errors, "$.id", "differs from the instance id in the URL (%s)", id);
    const char *app = json_str(doc, "app");
    char *norm = NULL;
    err_t e = {0};
    if (!app)
        json_error_push(errors, "$.app", "required: the app id (string)");
    else if (spec_id_normalize(app, &norm, &e))
        json_error_push(errors, "$.app", "%s", e.msg);
    else if (strcmp(norm, id_app) != 0)
        json_error_push(errors, "$.app", "instance %s belongs to app %s, not %s", id, id_app, norm);
    free(norm);
    const char *node = json_str(doc, "node");
    if (!json_object_get(doc, "node"))
        json_error_push(errors, "$.node", "required: the id of the node running the instance");
    else if (!node || !api_node_id_valid(node))
        json_error_push(errors, "$.node", "must be a node id ([a-z0-9][a-z0-9.-]{0,62})");
    const char *state = json_str(doc, "state");
    if (!inst_state_known(state))
        json_error_push(errors, "$.state",
                        "must be one of staging, starting, running, healthy, unhealthy, killing, "
                        "finished, failed, killed, lost");
    v = json_object_get(doc, "version");
    if (v && !json_is_null(v) && (!json_is_integer(v) || json_integer_value(v) < 0))
        json_error_push(errors, "$.version", "must be an app version number");
    v = json_object_get(doc, "ports");
    if (v) {
        size_t i;
        json_t *p;
        if (!json_is_array(v) || json_array_size(v) > INST_PORTS_MAX)
            json_error_push(errors, "$.ports", "must be an array of at most %d port numbers",
                            INST_PORTS_MAX);
        else
            json_array_foreach(v, i, p)
            {
                snprintf(path, sizeof(path), "$.ports[%zu]", i);
                if (!json_is_integer(p) || json_integer_value(p) < 0 ||
                    json_integer_value(p) > 65535)
                    json_error_push(errors, path, "must be a port 0..65535");
            }
    }
    if (!inst_opt_type(doc, "healthy", JSON_TRUE, true))
        json_error_push(errors, "$.healthy", "must be true, false or null");
    static const char *const strings[] = {"reason", "host", "since", "started_at"};
    for (size_t i = 0; i < sizeof(strings) / sizeof(*strings); i++) {
        snprintf(path, sizeof(path), "$.%s", strings[i]);
        if (!inst_opt_type(doc, strings[i], JSON_STRING, true))
            json_error_push(errors, path, "must be a string or null");
    }
    static const char *const counts[] = {"pid", "restarts"};
    for (size_t i = 0; i < sizeof(counts) / sizeof(*counts); i++) {
        snprintf(path, sizeof(path), "$.%s", counts[i]);
        v = json_object_get(doc, counts[i]);
        if (v && !json_is_null(v) && (!json_is_integer(v) || json_integer_value(v) < 0))
            json_error_push(errors, path, "must be an integer >= 0 or null");
    }
    if (!inst_opt_type(doc, "exit", JSON_OBJECT, true))
        json_error_push(errors, "$.exit", "must be an object or null");
    v = json_object_get(doc, "history");
    if (v) {
        size_t i;
        json_t *h;
        if (!json_is_array(v))
            json_error_push(errors, "$.history", "must be an array of {state, at, reason}");
        else
            json_array_foreach(v, i, h)
            {
                snprintf(path, sizeof(path), "$.history[%zu]", i);
                if (!json_is_object(h) || !inst_state_known(json_str(h, "state")))
                    json_error_push(errors, path, "must be an object with a known state");
            }
    }
}

/* The app's last failure, in the shape Marathon's lastTaskFailure has
 * (adapted to drover's fields). */
static json_t *inst_failure_record(const json_t *doc, const char *now)
{
    json_t *exit = json_object_get(doc, "exit");
    json_t *code = json_object_get(exit, "code");
    if (!code)
        code = json_object_get(exit, "exit_code");
    json_t *sig = json_object_get(exit, "signal");
    json_t *ver = json_object_get(doc, "version");
    json_t *reason = json_object_get(doc, "reason");
    const char *at = json_str(doc, "since");
    return json_pack("{s:O, s:O, s:O, s:O, s:s, s:O, s:O, s:O, s:s}", "instance",
                     json_object_get(doc, "id"), "app", json_object_get(doc, "app"), "version",
                     ver ? ver : json_null(), "node", json_object_get(doc, "node"), "state",
                     "failed", "reason", reason ? reason : json_null(), "exit_code",
                     code ? code : json_null(), "signal", sig ? sig : json_null(), "at",
                     at ? at : now);
}

static void inst_put_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    inst_call_t *c = data;
    if (status)
        api_reply_store_error(c->api, c->req, status, err);
    else
        api_reply_json(c->api, c->req, 200,
                       json_pack("{s:s, s:I}", "id", c->id, "mod_revision", (json_int_t)res->rev),
                       res->rev);
    inst_call_free(c);
}

static void inst_put(api_t *api, http_req_t *req, const char *id, const char *id_app)
{
    if (req->body_len > API_INSTANCE_BODY_MAX) {
        api_reply_error(api, req, 413, NULL, "instance report is %zu bytes, at most %d allowed",
                        req->body_len, API_INSTANCE_BODY_MAX);
        return;
    }
    err_t err = {0};
    json_t *doc = req->body_len ? json_parse(req->body, req->body_len, &err) : NULL;
    if (!doc) {
        api_reply_error(api, req, 400, NULL, "%s",
                        req->body_len ? err.msg : "request body is empty: expected an instance");
        return;
    }
    if (!json_is_object(doc)) {
        json_decref(doc);
        api_reply_error(api, req, 422, NULL, "instance report must be a JSON object");
        return;
    }
    json_t *errors = json_array();
    inst_validate(doc, id, id_app, errors);
    if (json_array_size(errors)) {
        size_t n = json_array_size(errors);
        json_decref(doc);
        api_reply_error(api, req, 422, errors, "instance report is invalid (%zu error%s)", n,
                        n == 1 ? "" : "s");
        return;
    }
    json_decref(errors);
    char now[40];
    api_time_now(now, sizeof(now));
    json_object_set_new(doc, "id", json_string(id));
    json_object_set_new(doc, "app", json_string(id_app));
    json_object_set_new(doc, "reported_at", json_string(now));

    inst_call_t *c = inst_call_new(api, req, id);
    size_t len, flen = 0;
    char *text = json_canonical(doc, &len);
    char *ftext = NULL, *fkey = NULL;
    store_op_t ops[2] = {
        {.type = STORE_OP_PUT, .key = c->key, .value = text, .value_len = len},
    };
    size_t n_ops = 1;
    if (strcmp(json_str(doc, "state"), "failed") == 0) {
        json_t *f = inst_failure_record(doc, now);
        ftext = json_canonical(f, &flen);
        json_decref(f);
        fkey = xasprintf("%s%s", API_LASTFAILURE_PREFIX, id_app);
        ops[1] = (store_op_t){.type = STORE_OP_PUT, .key = fkey, .value = ftext, .value_len = flen};
        n_ops = 2;
    }
    json_decref(doc);
    if (store_txn(api->store, NULL, 0, ops, n_ops, NULL, 0, inst_put_done, c)) {
        api_reply_error(api, req, 503, NULL, "store unavailable");
        inst_call_free(c);
    }
    free(text);
    free(ftext);
    free(fkey);
}

/* ---- delete, read, list ---------------------------------------------- */

static void inst_delete_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    inst_call_t *c = data;
    if (status)
        api_reply_store_error(c->api, c->req, status, err);
    else
        api_reply_json(c->api, c->req, 200,
                       json_pack("{s:s, s:b}", "id", c->id, "deleted", res->ops[0].deleted > 0),
                       res->rev);
    inst_call_free(c);
}

static void inst_get_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    inst_call_t *c = data;
    const store_op_result_t *op = status ? NULL : &res->ops[0];
    if (status)
        api_reply_store_error(c->api, c->req, status, err);
    else if (!op->n_kvs)
        api_reply_error(c->api, c->req, 404, NULL, "instance %s not found", c->id);
    else
        api_reply_raw_json(c->api, c->req, 200, op->kvs[0].value, op->kvs[0].value_len, res->rev);
    inst_call_free(c);
}

static void inst_list_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    inst_call_t *c = data;
    if (status) {
        api_reply_store_error(c->api, c->req, status, err);
        inst_call_free(c);
        return;
    }
    json_t *list = json_array();
    const store_op_result_t *op = &res->ops[0];
    for (size_t i = 0; i < op->n_kvs; i++) {
        json_t *rec = api_record_parse(&op->kvs[i]);
        if (!rec)
            continue;
        const char *app = json_str(rec, "app"), *node = json_str(rec, "node");
        if ((c->app && (!app || strcmp(app, c->app))) ||
            (c->node && (!node || strcmp(node, c->node))))
            json_decref(rec);
        else
            json_array_append_new(list, rec);
    }
    api_reply_json(c->api, c->req, 200, json_pack("{s:o}", "instances", list), res->rev);
    inst_call_free(c);
}

/* GET /v1/instances[?app=][&node=]. An app's instance ids share a prefix,
 * which narrows the range read; the exact app match is still checked on
 * each record ("/a" and "/a.b" give "a." and "a.b." ids). */
static void inst_list(api_t *api, http_req_t *req)
{
    const char *app = http_req_param(req, "app");
    const char *node = http_req_param(req, "node");
    err_t err = {0};
    char *norm = NULL;
    if (app && spec_id_normalize(app, &norm, &err)) {
        api_reply_error(api, req, 400, NULL, "query parameter app: %s", err.msg);
        return;
    }
    if (node && !api_node_id_valid(node)) {
        free(norm);
        api_reply_error(api, req, 400, NULL, "query parameter node=%.80s: not a node id", node);
        return;
    }
    inst_call_t *c = inst_call_new(api, req, "");
    c->app = norm;
    c->node = node ? xstrdup(node) : NULL;
    char *prefix;
    if (norm) {
        prefix = xasprintf("%s%s.", API_INSTANCES_PREFIX, norm + 1);
        for (char *p = prefix + strlen(API_INSTANCES_PREFIX); *p; p++)
            if (*p == '/')
                *p = '_';
    } else {
        prefix = xstrdup(API_INSTANCES_PREFIX);
    }
    if (store_get(api->store, prefix, true, inst_list_done, c)) {
        api_reply_error(api, req, 503, NULL, "store unavailable");
        inst_call_free(c);
    }
    free(prefix);
}

/* ---- node-held paths: redirect to the node's agent -------------------- *
 *
 * An instance's logs, and a worker instance's pool and crashlogs, live on
 * the node that runs it; the API says where (307 keeps the method, so a
 * POST to .../pool reaches the agent as a POST). */

static void inst_logs_node_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    inst_call_t *c = data;
    json_t *node = NULL;
    if (status) {
        api_reply_store_error(c->api, c->req, status, err);
    } else if (!res->ops[0].n_kvs || !(node = api_record_parse(&res->ops[0].kvs[0]))) {
        api_reply_error(c->api, c->req, 404, NULL,
                        "node %s of instance %s is not registered (its agent serves its %s)",
                        c->node, c->id, c->sub);
    } else {
        const char *url = json_str(node, "agent_url");
        if (!url || !*url) {
            api_reply_error(c->api, c->req, 502, NULL,
                            "node %s has no agent_url: cannot reach its %s", c->node, c->sub);
        } else {
            size_t ulen = strlen(url);
            while (ulen && url[ulen - 1] == '/')
                ulen--;
            const char *q = c->req->query;
            char *loc =
                xasprintf("%.*s/v1/instances/%s/%s%s%s", (int)ulen, url, c->id, c->sub, *q ? "?" : "", q);
            json_t *body = json_pack("{s:s}", "location", loc);
            char *text = json_dumps(body, JSON_COMPACT);
            json_decref(body);
            http_header_t hdrs[] = {{"Location", loc}, {"Content-Type", "application/json"}};
            http_respond(c->req, 307, hdrs, 2, text, strlen(text));
            free(text);
            free(loc);
        }
    }
    json_decref(node);
    inst_call_free(c);
}

static void inst_logs_inst_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    inst_call_t *c = data;
    json_t *rec = NULL;
    if (status) {
        api_reply_store_error(c->api, c->req, status, err);
    } else if (!res->ops[0].n_kvs || !(rec = api_record_parse(&res->ops[0].kvs[0]))) {
        api_reply_error(c->api, c->req, 404, NULL, "instance %s not found", c->id);
    } else {
        const char *node = json_str(rec, "node");
        if (!node || !api_node_id_valid(node)) {
            api_reply_error(c->api, c->req, 404, NULL, "instance %s has no node", c->id);
        } else {
            c->node = xstrdup(node);
            c->node_key = xasprintf("%s%s", API_NODES_PREFIX, node);
            json_decref(rec);
            if (store_get(c->api->store, c->node_key, false, inst_logs_node_done, c)) {
                api_reply_error(c->api, c->req, 503, NULL, "store unavailable");
                inst_call_free(c);
            }
            return;
        }
    }
    json_decref(rec);
    inst_call_free(c);
}

/* ---- routing --------------------------------------------------------- */

static bool inst_method(const http_req_t *req, const char *m)
{
    return strcmp(req->method, m) == 0 || (strcmp(m, "GET") == 0 && !strcmp(req->method, "HEAD"));
}

static void inst_start_get(inst_call_t *c, store_cb cb)
{
    if (store_get(c->api->store, c->key, false, cb, c)) {
        api_reply_error(c->api, c->req, 503, NULL, "store unavailable");
        inst_call_free(c);
    }
}

void api_instances_handle(api_t *api, http_req_t *req, const char *rest)
{
    if (*rest == '\0' || strcmp(rest, "/") == 0) {
        if (inst_method(req, "GET"))
            inst_list(api, req);
        else
            api_reply_method_not_allowed(api, req, "GET, HEAD");
        return;
    }
    rest++;
    const char *slash = strchr(rest, '/');
    char *id = xstrndup(rest, slash ? (size_t)(slash - rest) : strlen(rest));
    const char *sub = slash ? slash + 1 : NULL;
    err_t err = {0};
    char *app = NULL;
    if (api_instance_id_check(id, &app, &err)) {
        api_reply_error(api, req, 400, NULL, "%s", err.msg);
        free(id);
        return;
    }
    if (!sub) {
        if (inst_method(req, "GET"))
            inst_start_get(inst_call_new(api, req, id), inst_get_done);
        else if (inst_method(req, "PUT"))
            inst_put(api, req, id, app);
        else if (inst_method(req, "DELETE")) {
            inst_call_t *c = inst_call_new(api, req, id);
            if (store_delete(api->store, c->key, false, inst_delete_done, c)) {
                api_reply_error(api, req, 503, NULL, "store unavailable");
                inst_call_free(c);
            }
        } else
            api_reply_method_not_allowed(api, req, "GET, HEAD, PUT, DELETE");
    } else if (strcmp(sub, "logs") == 0 || strcmp(sub, "crashlogs") == 0 ||
               (str_has_prefix(sub, "crashlogs/") && !strchr(sub + strlen("crashlogs/"), '/'))) {
        if (inst_method(req, "GET")) {
            inst_call_t *c = inst_call_new(api, req, id);
            c->sub = xstrdup(sub);
            inst_start_get(c, inst_logs_inst_done);
        } else {
            api_reply_method_not_allowed(api, req, "GET, HEAD");
        }
    } else if (strcmp(sub, "pool") == 0) {
        if (inst_method(req, "GET") || inst_method(req, "POST")) {
            inst_call_t *c = inst_call_new(api, req, id);
            c->sub = xstrdup(sub);
            inst_start_get(c, inst_logs_inst_done);
        } else {
            api_reply_method_not_allowed(api, req, "GET, HEAD, POST");
        }
    } else {
        api_reply_error(api, req, 404, NULL, "no such API path: %s", req->path);
    }
    free(app);
    free(id);
}
