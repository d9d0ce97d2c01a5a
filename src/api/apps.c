/* /v1/apps: create, update, read, list, delete apps and read their version
 * history. A change that normalizes to the current spec makes no version. */
#include "api/api_internal.h"

#include "core/alloc.h"
#include "core/buf.h"
#include "core/json.h"
#include "core/log.h"
#include "core/str.h"
#include "sched/records.h"
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
    rec_kind_t kind;
    int canary;             /* REC_CANARY: percent */
    json_int_t scale;       /* REC_SCALE: instances */
    int64_t target_version; /* REC_ROLLBACK: 0 = the previous differing one */
    int64_t rollback_from;
    char *config_prefix; /* the spec's "config", without slashes at the ends */
    char kind_name[16];
    json_int_t pool_pin; /* POST .../pool: workers per node, 0 = automatic */
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
    free(c->config_prefix);
    free(c);
}

static char *apps_version_key(const char *id, int64_t version)
{
    return rec_version_key(id, version);
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
 * last failure and its placement problem (records of their own, written by
 * agents' reports and by the scheduler) are spliced in before the closing
 * brace. */
static void apps_get_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    app_call_t *c = data;
    const store_op_result_t *op = status ? NULL : &res->ops[0];
    if (status) {
        api_reply_store_error(c->api, c->req, status, err);
        app_call_free(c);
        return;
    }
    if (!op->n_kvs) {
        api_reply_error(c->api, c->req, 404, NULL, "app %s not found", c->id);
        app_call_free(c);
        return;
    }
    const store_kv_t *kv = &op->kvs[0];
    const char *end = kv->value_len ? memrchr(kv->value, '}', kv->value_len) : NULL;
    if (!end) {
        api_reply_raw_json(c->api, c->req, 200, kv->value, kv->value_len, res->rev);
        app_call_free(c);
        return;
    }
    static const char *const fields[] = {",\"lastTaskFailure\":", ",\"placement\":"};
    buf_t b;
    buf_init(&b, 0);
    buf_append(&b, kv->value, (size_t)(end - kv->value));
    for (size_t i = 0; i < 2; i++) {
        const store_op_result_t *fop = &res->ops[i + 1];
        const store_kv_t *fkv = fop->n_kvs ? &fop->kvs[0] : NULL;
        buf_append(&b, fields[i], strlen(fields[i]));
        if (fkv && fkv->value_len && fkv->value[0] == '{')
            buf_append(&b, fkv->value, fkv->value_len);
        else
            buf_append(&b, "null", 4);
    }
    buf_append(&b, end, kv->value_len - (size_t)(end - kv->value));
    api_reply_raw_json(c->api, c->req, 200, b.data, b.len, res->rev);
    buf_free(&b);
    app_call_free(c);
}

static void apps_get(app_call_t *c)
{
    char *fkey = xasprintf("%s%s", API_LASTFAILURE_PREFIX, c->id);
    char *pkey = xasprintf("%s%s", REC_PLACEMENT_PREFIX, c->id);
    store_op_t ops[3] = {
        {.type = STORE_OP_GET, .key = c->app_key},
        {.type = STORE_OP_GET, .key = fkey},
        {.type = STORE_OP_GET, .key = pkey},
    };
    if (store_txn(c->api->store, NULL, 0, ops, 3, NULL, 0, apps_get_done, c)) {
        api_reply_error(c->api, c->req, 503, NULL, "store unavailable");
        app_call_free(c);
    }
    free(fkey);
    free(pkey);
}

/* ---- create / update and actions ---- */

static void apps_write_start(app_call_t *c);

static json_t *apps_response(app_call_t *c, bool changed)
{
    json_t *body = json_pack("{s:s, s:I, s:b, s:o}", "id", c->id, "version", (json_int_t)c->version,
                             "changed", changed, "warnings",
                             c->warnings ? json_incref(c->warnings) : json_array());
    json_t *dep = c->record ? json_object_get(c->record, "deployment") : NULL;
    json_object_set_new(body, "deployment",
                        changed && json_is_string(dep) ? json_incref(dep) : json_null());
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
        log_info("api", "app %s %s: version %" PRId64 ", deployment %s (%s)", c->id,
                 c->created ? "created" : "changed", c->version,
                 json_str(c->record, "deployment"), c->kind_name);
        api_reply_json(c->api, c->req, c->created ? 201 : 200, apps_response(c, true), res->rev);
    }
    app_call_free(c);
}

/* The version a rollback without a number goes to: the newest one older
 * than the current whose spec or config differs from the current's (the
 * versions between may be scales of it). */
static const json_t *apps_rollback_pick(app_call_t *c, const json_t *cur, json_t *versions,
                                        err_t *err)
{
    json_int_t cur_v = json_integer_value(json_object_get(cur, "version"));
    const json_t *cur_spec = json_object_get(cur, "spec");
    const json_t *cur_env = json_object_get(cur, "config_env");
    for (size_t i = json_array_size(versions); i-- > 0;) {
        const json_t *v = json_array_get(versions, i);
        json_int_t n = json_integer_value(json_object_get(v, "version"));
        if (c->target_version) {
            if (n == c->target_version)
                return v;
            continue;
        }
        if (n >= cur_v)
            continue;
        const json_t *env = json_object_get(v, "config_env");
        if (!json_equal((json_t *)json_object_get(v, "spec"), (json_t *)cur_spec) ||
            !json_equal(env ? (json_t *)env : json_null(), cur_env ? (json_t *)cur_env : json_null()))
            return v;
    }
    if (c->target_version)
        err_set(err, -ENOENT, "app %s has no version %" PRId64, c->id, c->target_version);
    else
        err_set(err, -ENOENT, "app %s has no earlier version that differs from version %" PRId64,
                c->id, (int64_t)cur_v);
    return NULL;
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
    const json_t *cur_spec = cur ? json_object_get(cur, "spec") : NULL;
    json_int_t cur_version = cur ? json_integer_value(json_object_get(cur, "version")) : 0;
    json_t *config_env = NULL;
    if (c->config_prefix && res->n_ops > 1)
        config_env = rec_config_env(res->ops[1].kvs, res->ops[1].n_kvs, c->config_prefix);

    if (c->dry_run) {
        bool changed = !cur_spec || !json_equal((json_t *)cur_spec, c->spec);
        json_t *body = json_pack("{s:s, s:b, s:o, s:O, s:o, s:O}", "id", c->id, "changed",
                                 changed, "current_version",
                                 cur ? json_integer(cur_version) : json_null(), "spec", c->spec,
                                 "diff", spec_diff(cur_spec, c->spec), "warnings", c->warnings);
        api_reply_json(c->api, c->req, 200, body, res->rev);
        json_decref(cur);
        json_decref(config_env);
        app_call_free(c);
        return;
    }

    err_t e = {0};
    json_t *spec = NULL; /* the spec the change deploys */
    json_t *versions = NULL;
    int rc = 0;
    if (!cur && c->kind != REC_DEPLOY) {
        rc = err_set(&e, -ENOENT, "app %s not found", c->id);
    } else if (c->kind == REC_DEPLOY || c->kind == REC_CANARY) {
        spec = json_incref(c->spec);
        if (c->kind == REC_CANARY && !cur)
            rc = err_set(&e, -ENOENT, "app %s not found: a canary runs beside a current version",
                         c->id);
        else if (c->kind == REC_CANARY && json_equal((json_t *)cur_spec, spec))
            rc = err_set(&e, -EALREADY, "the canary spec equals app %s's current spec", c->id);
    } else if (c->kind == REC_SCALE) {
        spec = json_deep_copy(cur_spec);
        json_object_set_new(spec, "instances", json_integer(c->scale));
        config_env = json_incref(json_object_get(cur, "config_env"));
    } else if (c->kind == REC_ROLLBACK) {
        versions = json_array();
        for (size_t i = 0; i < res->ops[1].n_kvs; i++) {
            json_t *v = apps_record_parse(&res->ops[1].kvs[i]);
            if (v)
                json_array_append_new(versions, v);
        }
        const json_t *v = apps_rollback_pick(c, cur, versions, &e);
        if (!v) {
            rc = -ENOENT;
        } else {
            spec = json_deep_copy(json_object_get(v, "spec"));
            /* a rollback keeps today's count: only what runs goes back */
            json_object_set(spec, "instances", json_object_get(cur_spec, "instances"));
            json_t *env = json_object_get(v, "config_env");
            config_env = json_is_object(env) ? json_incref(env) : NULL;
            c->rollback_from = json_integer_value(json_object_get(v, "version"));
        }
    }
    rec_out_t out = {0};
    if (!rc) {
        char now[40], reason[64] = "";
        api_time_now(now, sizeof(now));
        if (c->kind == REC_ROLLBACK)
            snprintf(reason, sizeof(reason), "back to version %" PRId64, c->rollback_from);
        rec_change_t ch = {.kind = c->kind,
                           .app_id = c->id,
                           .cur = cur,
                           .spec = spec,
                           .config_env = config_env,
                           .warnings = c->warnings,
                           .canary_percent = c->canary,
                           .reason = reason[0] ? reason : NULL,
                           .now = now};
        rc = rec_change(&ch, &out, &e);
    }
    json_decref(spec);
    json_decref(config_env);
    json_decref(versions);
    if (rc) {
        int code = rc == -ENOENT ? 404 : rc == -EINVAL ? 400 : 409;
        api_reply_error(c->api, c->req, code, NULL, "%s", e.msg);
        json_decref(cur);
        app_call_free(c);
        return;
    }
    if (!out.changed) {
        c->version = cur_version;
        c->record = json_incref(cur);
        api_reply_json(c->api, c->req, 200, apps_response(c, false), res->rev);
        json_decref(cur);
        rec_out_free(&out);
        app_call_free(c);
        return;
    }
    c->created = cur == NULL;
    c->version = out.version_no;
    c->record = json_incref(out.app);
    snprintf(c->kind_name, sizeof(c->kind_name), "%s", out.kind);
    json_decref(cur);

    store_op_t ops[4];
    size_t n = rec_ops(c->id, &out, ops);
    rec_out_free(&out);
    /* The app key must still be at the revision we read: otherwise another
     * writer made a version in between and ours would reuse its number. */
    store_cmp_t cmp = {
        .key = c->app_key, .target = STORE_CMP_MOD, .op = STORE_CMP_EQ, .num = mod_rev};
    rc = store_txn(c->api->store, &cmp, 1, ops, n, NULL, 0, apps_write_done, c);
    rec_ops_free(ops, n);
    if (rc) {
        api_reply_store_error(c->api, c->req, rc, NULL);
        app_call_free(c);
    }
}

/* Read what the change starts from: the app, and the KV under a new spec's
 * config prefix or the version history for a rollback, in one snapshot. */
static void apps_write_start(app_call_t *c)
{
    store_op_t ops[2] = {{.type = STORE_OP_GET, .key = c->app_key}};
    size_t n = 1;
    char *second = NULL;
    if (c->config_prefix) {
        second = xasprintf("%s%s/", API_KV_PREFIX, c->config_prefix);
        ops[n++] = (store_op_t){.type = STORE_OP_GET, .key = second, .prefix = true};
    } else if (c->kind == REC_ROLLBACK) {
        ops[n++] = (store_op_t){.type = STORE_OP_GET, .key = c->versions_prefix, .prefix = true};
    }
    int rc = store_txn(c->api->store, NULL, 0, ops, n, NULL, 0, apps_current_done, c);
    free(second);
    if (rc) {
        api_reply_store_error(c->api, c->req, rc, NULL);
        app_call_free(c);
    }
}

/* "?canary=10" or "10%": 0 when absent, -1 when malformed. */
static int apps_canary_param(const http_req_t *req)
{
    const char *p = http_req_param(req, "canary");
    if (!p)
        return 0;
    char buf[8];
    size_t len = strlen(p);
    if (len && p[len - 1] == '%')
        len--;
    if (len == 0 || len >= sizeof(buf))
        return -1;
    memcpy(buf, p, len);
    buf[len] = '\0';
    int64_t v;
    if (str_to_i64(buf, 1, 99, &v))
        return -1;
    return (int)v;
}

/* POST /v1/apps and PUT /v1/apps/<id>: parse, validate, then compare with
 * the current version and write a new one if anything changed. */
static void apps_write(api_t *api, http_req_t *req, const char *path_id)
{
    err_t err = {0};
    int canary = apps_canary_param(req);
    if (canary < 0) {
        api_reply_error(api, req, 400, NULL, "canary=%s: expected a percentage 1..99",
                        http_req_param(req, "canary"));
        return;
    }
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
    c->kind = canary ? REC_CANARY : REC_DEPLOY;
    c->canary = canary;
    const char *prefix = json_str(sr.app, "config");
    if (prefix)
        c->config_prefix = xstrdup(prefix[0] == '/' ? prefix + 1 : prefix);
    if (c->config_prefix) {
        size_t l = strlen(c->config_prefix);
        while (l && c->config_prefix[l - 1] == '/')
            c->config_prefix[--l] = '\0';
    }
    const char *dry = http_req_param(req, "dry_run");
    c->dry_run = dry && strcmp(dry, "0") != 0 && strcmp(dry, "false") != 0;
    spec_result_free(&sr);
    apps_write_start(c);
}

/* ---- pool pin ---- */

/* The pin is runtime control, like Cocaine's `control`: it is kept on the
 * app record (so it survives agent restarts and reaches nodes the app
 * moves to) but makes no version and no deployment, because nothing that
 * runs changes; the scheduler copies it into the app's assignments. */
static void apps_pool_start(app_call_t *c);

static void apps_pool_written(int status, const err_t *err, const store_result_t *res, void *data)
{
    app_call_t *c = data;
    if (status) {
        api_reply_store_error(c->api, c->req, status, err);
    } else if (!res->succeeded && ++c->attempts < APPS_CAS_ATTEMPTS) {
        apps_pool_start(c);
        return;
    } else if (!res->succeeded) {
        api_reply_error(c->api, c->req, 409, NULL, "app %s kept changing concurrently; try again",
                        c->id);
    } else {
        log_info("api", "app %s: pool %s", c->id, c->pool_pin ? "pinned" : "automatic");
        api_reply_json(c->api, c->req, 200,
                       json_pack("{s:s, s:I, s:b}", "id", c->id, "workers", c->pool_pin,
                                 "automatic", c->pool_pin == 0),
                       res->rev);
    }
    app_call_free(c);
}

static void apps_pool_read(int status, const err_t *err, const store_result_t *res, void *data)
{
    app_call_t *c = data;
    const store_op_result_t *op = status ? NULL : &res->ops[0];
    json_t *cur = op && op->n_kvs ? apps_record_parse(&op->kvs[0]) : NULL;
    const char *kind = cur ? json_str(json_object_get(cur, "spec"), "kind") : NULL;
    int limit = (int)json_integer_value(
        json_object_get(json_object_get(json_object_get(cur, "spec"), "pool"), "pool-limit"));
    if (status)
        api_reply_store_error(c->api, c->req, status, err);
    else if (!cur)
        api_reply_error(c->api, c->req, 404, NULL, "app %s not found", c->id);
    else if (!kind || strcmp(kind, "worker") != 0)
        api_reply_error(c->api, c->req, 409, NULL,
                        "app %s is a service: only worker apps have a pool (scale it instead)",
                        c->id);
    else if (limit > 0 && c->pool_pin > limit)
        api_reply_error(c->api, c->req, 400, NULL,
                        "$.workers: %" JSON_INTEGER_FORMAT " is over the app's pool-limit %d",
                        c->pool_pin, limit);
    else {
        if (c->pool_pin)
            json_object_set_new(cur, "poolPin", json_integer(c->pool_pin));
        else
            json_object_del(cur, "poolPin");
        char *text = json_dumps(cur, JSON_COMPACT);
        store_cmp_t cmp = {.key = c->app_key,
                           .target = STORE_CMP_MOD,
                           .op = STORE_CMP_EQ,
                           .num = op->kvs[0].mod_rev};
        store_op_t put = {.type = STORE_OP_PUT,
                          .key = c->app_key,
                          .value = text,
                          .value_len = strlen(text)};
        int rc = store_txn(c->api->store, &cmp, 1, &put, 1, NULL, 0, apps_pool_written, c);
        free(text);
        json_decref(cur);
        if (rc) {
            api_reply_store_error(c->api, c->req, rc, NULL);
            app_call_free(c);
        }
        return;
    }
    json_decref(cur);
    app_call_free(c);
}

static void apps_pool_start(app_call_t *c)
{
    if (store_get(c->api->store, c->app_key, false, apps_pool_read, c)) {
        api_reply_error(c->api, c->req, 503, NULL, "store unavailable");
        app_call_free(c);
    }
}

/* POST /v1/apps/<id>/<action>. */
static void apps_action(api_t *api, http_req_t *req, const char *id, const char *action)
{
    static const struct {
        const char *name;
        rec_kind_t kind;
    } actions[] = {
        {"scale", REC_SCALE},     {"rollback", REC_ROLLBACK}, {"stop", REC_STOP},
        {"start", REC_START},     {"restart", REC_RESTART},   {"promote", REC_PROMOTE},
        {"abort", REC_ABORT},
    };
    size_t i = 0;
    while (i < sizeof(actions) / sizeof(*actions) && strcmp(actions[i].name, action) != 0)
        i++;
    bool pool = strcmp(action, "pool") == 0;
    if (i == sizeof(actions) / sizeof(*actions) && !pool) {
        api_reply_error(api, req, 404, NULL,
                        "no app action \"%.40s\" (known: scale, rollback, stop, start, restart, "
                        "promote, abort, pool)",
                        action);
        return;
    }
    if (strcmp(req->method, "POST") != 0) {
        api_reply_method_not_allowed(api, req, "POST");
        return;
    }
    err_t err = {0};
    json_t *body = NULL;
    if (req->body_len) {
        body = json_parse(req->body, req->body_len, &err);
        if (!body || !json_is_object(body)) {
            api_reply_error(api, req, 400, NULL, "%s", body ? "body must be a JSON object" : err.msg);
            json_decref(body);
            return;
        }
    }
    app_call_t *c = app_call_new(api, req, id);
    if (pool) {
        json_t *w = body ? json_object_get(body, "workers") : NULL;
        bool ok = json_is_integer(w) && json_integer_value(w) >= 0 &&
                  json_integer_value(w) <= INT32_MAX;
        c->pool_pin = ok ? json_integer_value(w) : 0;
        json_decref(body);
        if (!ok) {
            api_reply_error(api, req, 400, NULL,
                            "$.workers: required, an integer >= 0 (0: automatic)");
            app_call_free(c);
            return;
        }
        apps_pool_start(c);
        return;
    }
    c->kind = actions[i].kind;
    json_t *n = body ? json_object_get(body, "instances") : NULL;
    json_t *v = body ? json_object_get(body, "version") : NULL;
    const char *bad = NULL;
    if (c->kind == REC_SCALE) {
        if (!json_is_integer(n) || json_integer_value(n) < 0 || json_integer_value(n) > INT32_MAX)
            bad = "$.instances: required, an integer >= 0";
        else
            c->scale = json_integer_value(n);
    } else if (c->kind == REC_ROLLBACK && v) {
        if (!json_is_integer(v) || json_integer_value(v) < 1)
            bad = "$.version: a positive version number";
        else
            c->target_version = json_integer_value(v);
    }
    json_decref(body);
    if (bad) {
        api_reply_error(api, req, 400, NULL, "%s", bad);
        app_call_free(c);
        return;
    }
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
    char *pkey = xasprintf("%s%s", REC_PLACEMENT_PREFIX, c->id);
    store_op_t ops[4] = {
        {.type = STORE_OP_DELETE, .key = c->app_key},
        {.type = STORE_OP_DELETE, .key = c->versions_prefix, .prefix = true},
        {.type = STORE_OP_DELETE, .key = fkey},
        {.type = STORE_OP_DELETE, .key = pkey},
    };
    int rc = store_txn(c->api->store, &cmp, 1, ops, 4, NULL, 0, apps_delete_done, c);
    free(fkey);
    free(pkey);
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

    /* POST on an app's path is only ever an action: /v1/apps/<id>/<action> */
    if (strcmp(req->method, "POST") == 0) {
        const char *slash = strrchr(rest, '/');
        char *aid = NULL;
        err_t aerr = {0};
        if (!slash || slash == rest) {
            api_reply_method_not_allowed(api, req, "GET, HEAD, PUT, DELETE");
        } else {
            char *raw = xstrndup(rest, (size_t)(slash - rest));
            if (spec_id_normalize(raw, &aid, &aerr))
                api_reply_error(api, req, 400, NULL, "invalid app id in URL: %s", aerr.msg);
            else
                apps_action(api, req, aid, slash + 1);
            free(raw);
            free(aid);
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
