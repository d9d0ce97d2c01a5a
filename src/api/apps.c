/* /v1/apps: create, update, read, list, delete apps and read their version
 * history. A change that normalizes to the current spec makes no version. */
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

/* A concurrent writer can win the compare-and-swap; the loser re-reads and
 * tries again this many times before answering 409. */
#define APPS_CAS_ATTEMPTS 5

typedef struct app_call {
    api_t *api;
    http_req_t *req;
    char *id;
    char *app_key;
    char *versions_prefix;
    json_t *spec;     /* normalized spec to write */
    json_t *warnings; /* from validation */
    bool dry_run;
    int attempts;
    int64_t version; /* version written */
    bool created;
    json_t *record; /* app record written */
} app_call_t;

static app_call_t *app_call_new(api_t *api, http_req_t *req, const char *id)
{
    app_call_t *c = xcalloc(1, sizeof(*c));
    c->api = api;
    c->req = req;
    c->id = xstrdup(id);
    c->app_key = xasprintf("%s%s", API_APPS_PREFIX, id);
    c->versions_prefix = xasprintf("%s%s@", API_VERSIONS_PREFIX, id);
    return c;
}

static void app_call_free(app_call_t *c)
{
    free(c->id);
    free(c->app_key);
    free(c->versions_prefix);
    json_decref(c->spec);
    json_decref(c->warnings);
    json_decref(c->record);
    free(c);
}

static char *apps_version_key(const char *id, int64_t version)
{
    return xasprintf("%s%s@%010" PRId64, API_VERSIONS_PREFIX, id, version);
}

/* Parse a stored record; NULL (logged) when the store holds junk, which
 * only a bug or a hand edit could cause. */
static json_t *apps_record_parse(const store_kv_t *kv)
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

/* ---- list ---- */

static void apps_list_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    app_call_t *c = data;
    if (status) {
        api_reply_store_error(c->api, c->req, status, err);
    } else {
        json_t *apps = json_array();
        const store_op_result_t *op = &res->ops[0];
        for (size_t i = 0; i < op->n_kvs; i++) {
            json_t *rec = apps_record_parse(&op->kvs[i]);
            if (rec)
                json_array_append_new(apps, rec);
        }
        api_reply_json(c->api, c->req, 200, json_pack("{s:o}", "apps", apps), res->rev);
    }
    app_call_free(c);
}

/* ---- get one ---- */

/* Records are stored as canonical JSON, so a read answers with the stored
 * bytes as they are: no parse, no serialisation on the hot path. The app's
 * last failure (a record of its own, written with the failed instance's
 * report) is spliced in before the closing brace. */
static void apps_get_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    app_call_t *c = data;
    const store_op_result_t *op = status ? NULL : &res->ops[0];
    const store_op_result_t *fop = status ? NULL : &res->ops[1];
    if (status) {
        api_reply_store_error(c->api, c->req, status, err);
    } else if (!op->n_kvs) {
        api_reply_error(c->api, c->req, 404, NULL, "app %s not found", c->id);
    } else {
        const store_kv_t *kv = &op->kvs[0];
        const char *end = kv->value_len ? memrchr(kv->value, '}', kv->value_len) : NULL;
        const store_kv_t *fkv = fop->n_kvs ? &fop->kvs[0] : NULL;
        if (!end || !fkv || !fkv->value_len || fkv->value[0] != '{') {
            api_reply_raw_json(c->api, c->req, 200, kv->value, kv->value_len, res->rev);
        } else {
            static const char field[] = ",\"lastTaskFailure\":";
            size_t head = (size_t)(end - kv->value);
            size_t len = head + sizeof(field) - 1 + fkv->value_len + (kv->value_len - head);
            char *text = xmalloc(len + 1);
            memcpy(text, kv->value, head);
            memcpy(text + head, field, sizeof(field) - 1);
            memcpy(text + head + sizeof(field) - 1, fkv->value, fkv->value_len);
            memcpy(text + len - (kv->value_len - head), end, kv->value_len - head);
            text[len] = '\0';
            api_reply_raw_json(c->api, c->req, 200, text, len, res->rev);
            free(text);
        }
    }
    app_call_free(c);
}

static void apps_get(app_call_t *c)
{
    char *fkey = xasprintf("%s%s", API_LASTFAILURE_PREFIX, c->id);
    store_op_t ops[2] = {
        {.type = STORE_OP_GET, .key = c->app_key},
        {.type = STORE_OP_GET, .key = fkey},
    };
    if (store_txn(c->api->store, NULL, 0, ops, 2, NULL, 0, apps_get_done, c)) {
        api_reply_error(c->api, c->req, 503, NULL, "store unavailable");
        app_call_free(c);
    }
    free(fkey);
}

/* ---- create / update ---- */

static void apps_write_start(app_call_t *c);

static json_t *apps_response(app_call_t *c, bool changed)
{
    json_t *body = json_pack("{s:s, s:I, s:b, s:O}", "id", c->id, "version", (json_int_t)c->version,
                             "changed", changed, "warnings", c->warnings);
    if (c->record)
        json_object_set(body, "app", c->record);
    return body;
}

static void apps_write_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    app_call_t *c = data;
    if (status) {
        api_reply_store_error(c->api, c->req, status, err);
    } else if (!res->succeeded) {
        if (++c->attempts < APPS_CAS_ATTEMPTS) {
            json_decref(c->record);
            c->record = NULL;
            apps_write_start(c);
            return;
        }
        api_reply_error(c->api, c->req, 409, NULL, "app %s kept changing concurrently; try again",
                        c->id);
    } else {
        log_info("api", "app %s %s, version %" PRId64, c->id, c->created ? "created" : "updated",
                 c->version);
        api_reply_json(c->api, c->req, c->created ? 201 : 200, apps_response(c, true), res->rev);
    }
    app_call_free(c);
}

static void apps_current_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    app_call_t *c = data;
    if (status) {
        api_reply_store_error(c->api, c->req, status, err);
        app_call_free(c);
        return;
    }
    const store_op_result_t *op = &res->ops[0];
    json_t *cur = op->n_kvs ? apps_record_parse(&op->kvs[0]) : NULL;
    int64_t mod_rev = op->n_kvs ? op->kvs[0].mod_rev : 0;
    json_t *cur_spec = cur ? json_object_get(cur, "spec") : NULL;
    json_int_t cur_version = cur ? json_integer_value(json_object_get(cur, "version")) : 0;
    bool changed = !cur_spec || !json_equal(cur_spec, c->spec);

    if (c->dry_run) {
        json_t *body =
            json_pack("{s:s, s:b, s:o, s:O, s:o, s:O}", "id", c->id, "changed", changed,
                      "current_version", cur ? json_integer(cur_version) : json_null(), "spec",
                      c->spec, "diff", spec_diff(cur_spec, c->spec), "warnings", c->warnings);
        api_reply_json(c->api, c->req, 200, body, res->rev);
        json_decref(cur);
        app_call_free(c);
        return;
    }
    if (!changed) {
        c->version = cur_version;
        c->record = json_incref(cur);
        api_reply_json(c->api, c->req, 200, apps_response(c, false), res->rev);
        json_decref(cur);
        app_call_free(c);
        return;
    }

    char now[40];
    api_time_now(now, sizeof(now));
    c->created = cur == NULL;
    c->version = cur_version + 1;
    const char *created_at = cur ? json_str(cur, "created_at") : NULL;
    c->record = json_pack("{s:s, s:I, s:s, s:s, s:O, s:O}", "id", c->id, "version",
                          (json_int_t)c->version, "created_at", created_at ? created_at : now,
                          "updated_at", now, "spec", c->spec, "warnings", c->warnings);
    json_t *vrec =
        json_pack("{s:s, s:I, s:s, s:O, s:O}", "id", c->id, "version", (json_int_t)c->version,
                  "created_at", now, "spec", c->spec, "warnings", c->warnings);
    json_decref(cur);

    size_t rec_len, vrec_len;
    char *rec_text = json_canonical(c->record, &rec_len);
    char *vrec_text = json_canonical(vrec, &vrec_len);
    json_decref(vrec);
    char *vkey = apps_version_key(c->id, c->version);
    /* The app key must still be at the revision we read: otherwise another
     * writer made a version in between and ours would reuse its number. */
    store_cmp_t cmp = {
        .key = c->app_key, .target = STORE_CMP_MOD, .op = STORE_CMP_EQ, .num = mod_rev};
    store_op_t ops[2] = {
        {.type = STORE_OP_PUT, .key = c->app_key, .value = rec_text, .value_len = rec_len},
        {.type = STORE_OP_PUT, .key = vkey, .value = vrec_text, .value_len = vrec_len},
    };
    err_t e = {0};
    int rc = store_txn(c->api->store, &cmp, 1, ops, 2, NULL, 0, apps_write_done, c);
    free(rec_text);
    free(vrec_text);
    free(vkey);
    if (rc) {
        api_reply_store_error(c->api, c->req, rc, &e);
        app_call_free(c);
    }
}

static void apps_write_start(app_call_t *c)
{
    int rc = store_get(c->api->store, c->app_key, false, apps_current_done, c);
    if (rc) {
        api_reply_store_error(c->api, c->req, rc, NULL);
        app_call_free(c);
    }
}

/* POST /v1/apps and PUT /v1/apps/<id>: parse, validate, then compare with
 * the current version and write a new one if anything changed. */
static void apps_write(api_t *api, http_req_t *req, const char *path_id)
{
    err_t err = {0};
    if (req->body_len == 0) {
        api_reply_error(api, req, 400, NULL, "request body is empty: expected an app spec (JSON)");
        return;
    }
    json_t *doc = json_parse(req->body, req->body_len, &err);
    if (!doc) {
        api_reply_error(api, req, 400, NULL, "%s", err.msg);
        return;
    }
    if (!json_is_object(doc)) {
        json_decref(doc);
        api_reply_error(api, req, 422, NULL, "app spec must be a JSON object");
        return;
    }
    if (path_id) {
        const char *body_id = json_str(doc, "id");
        if (body_id) {
            char *norm = NULL;
            if (spec_id_normalize(body_id, &norm, NULL) == 0 && strcmp(norm, path_id) != 0) {
                api_reply_error(api, req, 422,
                                json_pack("[{s:s, s:s}]", "path", "$.id", "reason",
                                          "differs from the app id in the URL"),
                                "spec id %s differs from the URL's app id %s", norm, path_id);
                free(norm);
                json_decref(doc);
                return;
            }
            free(norm);
        } else {
            json_object_set_new(doc, "id", json_string(path_id));
        }
    }
    spec_result_t sr = {0};
    int rc = spec_validate(doc, &sr);
    json_decref(doc);
    if (rc) {
        size_t n = json_array_size(sr.errors);
        api_reply_error(api, req, 422, json_incref(sr.errors), "app spec is invalid (%zu error%s)",
                        n, n == 1 ? "" : "s");
        spec_result_free(&sr);
        return;
    }
    const char *id = json_str(sr.app, "id");
    app_call_t *c = app_call_new(api, req, id);
    c->spec = json_incref(sr.app);
    c->warnings = json_incref(sr.warnings);
    const char *dry = http_req_param(req, "dry_run");
    c->dry_run = dry && strcmp(dry, "0") != 0 && strcmp(dry, "false") != 0;
    spec_result_free(&sr);
    apps_write_start(c);
}

/* ---- delete ---- */

static void apps_delete_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    app_call_t *c = data;
    if (status)
        api_reply_store_error(c->api, c->req, status, err);
    else if (!res->succeeded)
        api_reply_error(c->api, c->req, 404, NULL, "app %s not found", c->id);
    else {
        log_info("api", "app %s deleted", c->id);
        api_reply_json(c->api, c->req, 200, json_pack("{s:s, s:b}", "id", c->id, "deleted", 1),
                       res->rev);
    }
    app_call_free(c);
}

static void apps_delete(app_call_t *c)
{
    store_cmp_t cmp = {
        .key = c->app_key, .target = STORE_CMP_VERSION, .op = STORE_CMP_GT, .num = 0};
    /* The last failure goes too: a new app of the same id starts clean. */
    char *fkey = xasprintf("%s%s", API_LASTFAILURE_PREFIX, c->id);
    store_op_t ops[3] = {
        {.type = STORE_OP_DELETE, .key = c->app_key},
        {.type = STORE_OP_DELETE, .key = c->versions_prefix, .prefix = true},
        {.type = STORE_OP_DELETE, .key = fkey},
    };
    int rc = store_txn(c->api->store, &cmp, 1, ops, 3, NULL, 0, apps_delete_done, c);
    free(fkey);
    if (rc) {
        api_reply_store_error(c->api, c->req, rc, NULL);
        app_call_free(c);
    }
}

/* ---- versions ---- */

static void apps_versions_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    app_call_t *c = data;
    if (status) {
        api_reply_store_error(c->api, c->req, status, err);
        app_call_free(c);
        return;
    }
    const store_op_result_t *op = &res->ops[0];
    if (op->n_kvs == 0) {
        api_reply_error(c->api, c->req, 404, NULL, "app %s not found", c->id);
        app_call_free(c);
        return;
    }
    json_t *list = json_array();
    for (size_t i = 0; i < op->n_kvs; i++) {
        json_t *rec = apps_record_parse(&op->kvs[i]);
        if (!rec)
            continue;
        json_array_append_new(list,
                              json_pack("{s:O, s:O}", "version", json_object_get(rec, "version"),
                                        "created_at", json_object_get(rec, "created_at")));
        json_decref(rec);
    }
    api_reply_json(c->api, c->req, 200, json_pack("{s:s, s:o}", "id", c->id, "versions", list),
                   res->rev);
    app_call_free(c);
}

static void apps_version_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    app_call_t *c = data;
    const store_op_result_t *op = status ? NULL : &res->ops[0];
    if (status)
        api_reply_store_error(c->api, c->req, status, err);
    else if (!op->n_kvs)
        api_reply_error(c->api, c->req, 404, NULL, "app %s has no version %" PRId64, c->id,
                        c->version);
    else
        api_reply_raw_json(c->api, c->req, 200, op->kvs[0].value, op->kvs[0].value_len, res->rev);
    app_call_free(c);
}

/* Split "/production/web/versions[/N]" into the id and the version part. */
static int apps_split_versions(const char *rest, char **id, const char **vpart)
{
    const char *v = strstr(rest, "/versions");
    while (v) {
        const char *after = v + strlen("/versions");
        if (*after == '\0' || (*after == '/' && !strchr(after + 1, '/'))) {
            *id = xstrndup(rest, (size_t)(v - rest));
            *vpart = *after ? after + 1 : "";
            return 1;
        }
        v = strstr(v + 1, "/versions");
    }
    return 0;
}

static bool apps_method(const http_req_t *req, const char *m)
{
    return strcmp(req->method, m) == 0 || (strcmp(m, "GET") == 0 && !strcmp(req->method, "HEAD"));
}

void api_apps_handle(api_t *api, http_req_t *req, const char *rest)
{
    if (*rest == '\0' || strcmp(rest, "/") == 0) {
        if (apps_method(req, "GET")) {
            app_call_t *c = app_call_new(api, req, "");
            if (store_get(api->store, API_APPS_PREFIX "/", true, apps_list_done, c)) {
                api_reply_error(api, req, 503, NULL, "store unavailable");
                app_call_free(c);
            }
        } else if (apps_method(req, "POST")) {
            apps_write(api, req, NULL);
        } else {
            api_reply_method_not_allowed(api, req, "GET, HEAD, POST");
        }
        return;
    }

    char *raw_id = NULL;
    const char *vpart = NULL;
    bool versions = apps_split_versions(rest, &raw_id, &vpart);
    err_t err = {0};
    char *id = NULL;
    if (spec_id_normalize(versions ? raw_id : rest, &id, &err)) {
        api_reply_error(api, req, 400, NULL, "invalid app id in URL: %s", err.msg);
        free(raw_id);
        return;
    }
    free(raw_id);

    if (versions) {
        if (!apps_method(req, "GET")) {
            api_reply_method_not_allowed(api, req, "GET, HEAD");
        } else if (*vpart == '\0') {
            app_call_t *c = app_call_new(api, req, id);
            if (store_get(api->store, c->versions_prefix, true, apps_versions_done, c)) {
                api_reply_error(api, req, 503, NULL, "store unavailable");
                app_call_free(c);
            }
        } else {
            int64_t v;
            if (str_to_i64(vpart, 1, INT64_MAX, &v)) {
                api_reply_error(api, req, 400, NULL,
                                "version %s: expected a positive version number", vpart);
            } else {
                app_call_t *c = app_call_new(api, req, id);
                c->version = v;
                char *vkey = apps_version_key(id, v);
                if (store_get(api->store, vkey, false, apps_version_done, c)) {
                    api_reply_error(api, req, 503, NULL, "store unavailable");
                    app_call_free(c);
                }
                free(vkey);
            }
        }
        free(id);
        return;
    }

    if (apps_method(req, "GET")) {
        apps_get(app_call_new(api, req, id));
    } else if (apps_method(req, "PUT")) {
        apps_write(api, req, id);
    } else if (apps_method(req, "DELETE")) {
        apps_delete(app_call_new(api, req, id));
    } else {
        api_reply_method_not_allowed(api, req, "GET, HEAD, PUT, DELETE");
    }
    free(id);
}
