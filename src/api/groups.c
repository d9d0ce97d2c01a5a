/* /v1/groups: routing groups, weighted sets of app versions (or apps) that
 * one name resolves to. The API stores the definition; routers build the
 * ketama continuum from it (src/locator/ketama.h), so a group here is only
 * validated and normalized: targets in their canonical form
 * ("/production/web@41"), integer weights, at most one sticky seed.
 *
 * A group's record lives at /groups/<name>. A write is read-then-CAS on
 * the key's mod revision so created_at survives a replace and a `?cas=R`
 * from the client (0: create only) is checked against what was read. */
#include "api/api_internal.h"

#include "core/alloc.h"
#include "core/json.h"
#include "core/log.h"
#include "core/str.h"
#include "spec/spec.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define GROUP_NAME_MAX     63
#define GROUP_MEMBERS_MAX  100
#define GROUP_WEIGHT_MAX   10000
#define GROUP_BODY_MAX     (64 * 1024)
#define GROUP_STICKY_MAX   128
#define GROUP_CAS_ATTEMPTS 5

typedef struct group_call {
    api_t *api;
    http_req_t *req;
    char *name;
    char *key;      /* /groups/<name> */
    json_t *body;   /* PUT: {"members": [...], "sticky": ...} normalized */
    json_t *record; /* PUT: the record written */
    int64_t cas;
    bool has_cas;
    bool created;
    int attempts;
} group_call_t;

static group_call_t *group_call_new(api_t *api, http_req_t *req, const char *name)
{
    group_call_t *c = xcalloc(1, sizeof(*c));
    c->api = api;
    c->req = req;
    c->name = xstrdup(name);
    c->key = xasprintf("%s%s", API_GROUPS_PREFIX, name);
    return c;
}

static void group_call_free(group_call_t *c)
{
    free(c->name);
    free(c->key);
    json_decref(c->body);
    json_decref(c->record);
    free(c);
}

/* Group names are one DNS-label-like word, like node ids: a group is
 * resolved by name beside app ids ("/env/app"), and a name without '/'
 * can never be mistaken for one. */
static bool group_name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > GROUP_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = name[i];
        bool alnum = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9');
        if (!alnum && (i == 0 || (ch != '.' && ch != '-')))
            return false;
    }
    return true;
}

/* ---- validation -------------------------------------------------------- */

/* "app" or "app@version" to its canonical form: the app id normalized as
 * spec ids are ("production/web" -> "/production/web"), the version a
 * positive integer without leading zeros; "@v41" is taken for "@41", as
 * people write versions that way. NULL with reason filled otherwise. */
static char *group_target_normalize(const char *target, char *reason, size_t n)
{
    const char *at = strchr(target, '@');
    char *app_part = at ? xstrndup(target, (size_t)(at - target)) : xstrdup(target);
    char *id = NULL;
    err_t err = {0};
    char *out = NULL;
    if (spec_id_normalize(app_part, &id, &err) < 0) {
        snprintf(reason, n, "%.400s", err.msg); /* names the app id */
        goto done;
    }
    if (!at) {
        out = xstrdup(id);
        goto done;
    }
    const char *v = at + 1;
    if (*v == 'v')
        v++;
    int64_t version = 0;
    bool digits = *v != '\0' && strspn(v, "0123456789") == strlen(v);
    if (!digits || str_to_i64(v, 1, INT64_MAX, &version) < 0) {
        snprintf(reason, n,
                 "version \"%.40s\" must be a positive integer (as in /production/web@41)", at + 1);
        goto done;
    }
    out = xasprintf("%s@%" PRId64, id, version);
done:
    free(app_part);
    free(id);
    return out;
}

/* RFC 9110 token characters: what a header or cookie name may hold. */
static bool group_token_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > GROUP_STICKY_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        bool alnum =
            (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
        if (!alnum && !strchr("!#$%&'*+-.^_`|~", ch))
            return false;
    }
    return true;
}

/* Every member of obj not in known is an error at prefix.<member>: a
 * misspelt "wieght" must not silently mean weight 0. */
static void group_unknown_fields(const json_t *obj, const char *prefix, const char *const *known,
                                 size_t n_known, const char *hint, json_t *errors)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v)
    {
        bool ok = false;
        for (size_t i = 0; i < n_known; i++)
            ok |= strcmp(k, known[i]) == 0;
        if (ok)
            continue;
        char path[160];
        snprintf(path, sizeof(path), "%s.%.64s", prefix, k);
        json_error_push(errors, path, "unknown field (known: %s)", hint);
    }
}

/* The sticky seed: one header or one cookie name, or null for none. A
 * router reads exactly one place per request, so both at once is refused
 * rather than given an order. */
static json_t *group_check_sticky(const json_t *v, json_t *errors)
{
    if (json_is_null(v))
        return json_null();
    if (!json_is_object(v)) {
        json_error_push(errors, "$.sticky",
                        "must be {\"header\": NAME} or {\"cookie\": NAME} (or null for none)");
        return NULL;
    }
    static const char *const known[] = {"header", "cookie"};
    size_t before = json_array_size(errors);
    group_unknown_fields(v, "$.sticky", known, 2, "header, cookie", errors);
    json_t *header = json_object_get(v, "header"), *cookie = json_object_get(v, "cookie");
    if (header && cookie) {
        json_error_push(errors, "$.sticky", "give either header or cookie, not both");
        return NULL;
    }
    if (!header && !cookie) {
        if (json_array_size(errors) == before)
            json_error_push(errors, "$.sticky", "needs header or cookie: the request's seed");
        return NULL;
    }
    const char *field = header ? "header" : "cookie";
    json_t *name = header ? header : cookie;
    if (!json_is_string(name) || !group_token_valid(json_string_value(name))) {
        char path[32];
        snprintf(path, sizeof(path), "$.sticky.%s", field);
        json_error_push(errors, path, "must be a %s name: 1..%d token characters (RFC 9110)", field,
                        GROUP_STICKY_MAX);
        return NULL;
    }
    return json_array_size(errors) == before ? json_pack("{s:O}", field, name) : NULL;
}

/* Check member i and append its normalized form to members (with its
 * index, so a later duplicate can name the member it repeats). Every
 * problem of the member is reported, not only the first. */
static void group_check_member(const json_t *m, size_t i, json_t *members, json_t *errors)
{
    char path[64];
    snprintf(path, sizeof(path), "$.members[%zu]", i);
    if (!json_is_object(m)) {
        json_error_push(errors, path, "must be an object {\"target\": ..., \"weight\": ...}");
        return;
    }
    static const char *const known[] = {"target", "weight"};
    size_t before = json_array_size(errors);
    group_unknown_fields(m, path, known, 2, "target, weight", errors);

    char tpath[80], wpath[80];
    snprintf(tpath, sizeof(tpath), "%s.target", path);
    snprintf(wpath, sizeof(wpath), "%s.weight", path);
    json_t *t = json_object_get(m, "target");
    char *target = NULL;
    if (!t) {
        json_error_push(errors, tpath, "required: an app id or app@version");
    } else if (!json_is_string(t)) {
        json_error_push(errors, tpath, "must be a string: an app id or app@version");
    } else {
        char reason[ERR_MSG_MAX];
        target = group_target_normalize(json_string_value(t), reason, sizeof(reason));
        if (!target)
            json_error_push(errors, tpath, "%s", reason);
    }
    if (target) {
        /* Compare canonical forms: "web@v41" repeats "/web@41". */
        for (size_t j = 0; j < json_array_size(members); j++) {
            const char *other = json_str(json_array_get(members, j), "target");
            if (other && strcmp(other, target) == 0) {
                json_error_push(errors, tpath, "duplicate of $.members[%zu].target (%s)",
                                (size_t)json_integer_value(
                                    json_object_get(json_array_get(members, j), "index")),
                                target);
                break;
            }
        }
    }
    json_t *w = json_object_get(m, "weight");
    if (!w)
        json_error_push(errors, wpath, "required: an integer 0..%d", GROUP_WEIGHT_MAX);
    else if (!json_is_integer(w) || json_integer_value(w) < 0 ||
             json_integer_value(w) > GROUP_WEIGHT_MAX)
        json_error_push(errors, wpath, "must be an integer 0..%d", GROUP_WEIGHT_MAX);

    /* Kept even when invalid so later members are checked against it; the
     * "index" is dropped once every member is checked. */
    json_array_append_new(members, json_pack("{s:s?, s:O?, s:I}", "target", target, "weight",
                                             json_array_size(errors) == before ? w : NULL, "index",
                                             (json_int_t)i));
    free(target);
}

/* Validate a PUT body against the group named in the URL; the normalized
 * {"members": [...], "sticky": ...} or NULL with every problem in errors. */
static json_t *group_check(const json_t *doc, const char *name, json_t *errors)
{
    static const char *const known[] = {"name", "members", "sticky"};
    group_unknown_fields(doc, "$", known, 3, "name, members, sticky", errors);
    json_t *n = json_object_get(doc, "name");
    if (n && (!json_is_string(n) || strcmp(json_string_value(n), name) != 0))
        json_error_push(errors, "$.name", "differs from the group name in the URL (%s)", name);

    json_t *members = json_array();
    json_t *list = json_object_get(doc, "members");
    if (!list) {
        json_error_push(errors, "$.members", "required: [{\"target\": ..., \"weight\": ...}]");
    } else if (!json_is_array(list)) {
        json_error_push(errors, "$.members",
                        "must be an array of {\"target\": ..., \"weight\": ...}");
    } else if (json_array_size(list) == 0) {
        json_error_push(errors, "$.members", "needs at least one member");
    } else if (json_array_size(list) > GROUP_MEMBERS_MAX) {
        json_error_push(errors, "$.members", "%zu members, at most %d", json_array_size(list),
                        GROUP_MEMBERS_MAX);
    } else {
        size_t before = json_array_size(errors);
        json_int_t total = 0;
        for (size_t i = 0; i < json_array_size(list); i++)
            group_check_member(json_array_get(list, i), i, members, errors);
        for (size_t i = 0; i < json_array_size(members); i++) {
            json_t *m = json_array_get(members, i);
            json_object_del(m, "index");
            total += json_integer_value(json_object_get(m, "weight"));
        }
        if (json_array_size(errors) == before && total == 0)
            json_error_push(errors, "$.members",
                            "every weight is 0: at least one member needs a weight > 0");
    }
    json_t *sticky = json_null();
    json_t *sv = json_object_get(doc, "sticky");
    if (sv)
        sticky = group_check_sticky(sv, errors);
    if (json_array_size(errors)) {
        json_decref(members);
        json_decref(sticky);
        return NULL;
    }
    return json_pack("{s:o, s:o}", "members", members, "sticky", sticky);
}

/* ---- views -------------------------------------------------------------- */

/* A record as the API shows it: each member's share of the traffic in
 * percent (its weight over the total, to 0.01; the routers' ring matches
 * it to about 0.1), and the mod revision to pass back as ?cas=. */
static json_t *group_view(const json_t *rec, int64_t mod_rev)
{
    json_t *v = json_deep_copy(rec);
    json_t *members = json_object_get(v, "members");
    json_int_t total = 0;
    size_t i;
    json_t *m;
    json_array_foreach(members, i, m)
    {
        total += json_integer_value(json_object_get(m, "weight"));
    }
    json_array_foreach(members, i, m)
    {
        double w = (double)json_integer_value(json_object_get(m, "weight"));
        double share = total > 0 ? round(w * 10000.0 / (double)total) / 100.0 : 0.0;
        json_object_set_new(m, "share", json_real(share));
    }
    json_object_set_new(v, "mod_revision", json_integer((json_int_t)mod_rev));
    return v;
}

static json_t *group_kv_view(const store_kv_t *kv)
{
    json_t *rec = api_record_parse(kv);
    if (!rec)
        return NULL;
    json_t *v = group_view(rec, kv->mod_rev);
    json_decref(rec);
    return v;
}

/* ---- read --------------------------------------------------------------- */

static void group_list_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    group_call_t *c = data;
    if (status) {
        api_reply_store_error(c->api, c->req, status, err);
    } else {
        json_t *groups = json_array();
        const store_op_result_t *op = &res->ops[0];
        for (size_t i = 0; i < op->n_kvs; i++) {
            json_t *v = group_kv_view(&op->kvs[i]);
            if (v)
                json_array_append_new(groups, v);
        }
        api_reply_json(c->api, c->req, 200, json_pack("{s:o}", "groups", groups), res->rev);
    }
    group_call_free(c);
}

static void group_get_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    group_call_t *c = data;
    const store_op_result_t *op = status ? NULL : &res->ops[0];
    json_t *v = op && op->n_kvs ? group_kv_view(&op->kvs[0]) : NULL;
    if (status)
        api_reply_store_error(c->api, c->req, status, err);
    else if (!v)
        api_reply_error(c->api, c->req, 404, NULL, "group %s not found", c->name);
    else
        api_reply_json(c->api, c->req, 200, v, res->rev);
    group_call_free(c);
}

/* ---- write -------------------------------------------------------------- */

static void group_write_start(group_call_t *c);

static void group_write_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    group_call_t *c = data;
    if (status) {
        api_reply_store_error(c->api, c->req, status, err);
    } else if (!res->succeeded) {
        /* Changed between our read and our write. With the client's own
         * ?cas= that is its conflict to resolve; otherwise read again. */
        if (!c->has_cas && ++c->attempts < GROUP_CAS_ATTEMPTS) {
            json_decref(c->record);
            c->record = NULL;
            group_write_start(c);
            return;
        }
        api_reply_error(c->api, c->req, 409, NULL,
                        c->has_cas ? "cas failed: group %s changed concurrently"
                                   : "group %s kept changing concurrently; try again",
                        c->name);
    } else {
        log_info("api", "group %s %s (%zu members)", c->name, c->created ? "created" : "replaced",
                 json_array_size(json_object_get(c->record, "members")));
        api_reply_json(c->api, c->req, c->created ? 201 : 200, group_view(c->record, res->rev),
                       res->rev);
    }
    group_call_free(c);
}

static void group_current_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    group_call_t *c = data;
    if (status) {
        api_reply_store_error(c->api, c->req, status, err);
        group_call_free(c);
        return;
    }
    const store_op_result_t *op = &res->ops[0];
    int64_t mod_rev = op->n_kvs ? op->kvs[0].mod_rev : 0;
    if (c->has_cas && mod_rev != c->cas) {
        if (c->cas == 0)
            api_reply_error(c->api, c->req, 409, NULL,
                            "group %s already exists (cas=0 only creates a new group)", c->name);
        else if (!mod_rev)
            api_reply_error(c->api, c->req, 409, NULL, "cas failed: group %s does not exist",
                            c->name);
        else
            api_reply_error(c->api, c->req, 409, NULL,
                            "cas failed: group %s is at mod revision %" PRId64 ", not %" PRId64,
                            c->name, mod_rev, c->cas);
        group_call_free(c);
        return;
    }
    json_t *cur = op->n_kvs ? api_record_parse(&op->kvs[0]) : NULL;
    char now[40];
    api_time_now(now, sizeof(now));
    const char *created_at = cur ? json_str(cur, "created_at") : NULL;
    c->created = op->n_kvs == 0;
    c->record =
        json_pack("{s:s, s:O, s:O, s:s, s:s}", "name", c->name, "members",
                  json_object_get(c->body, "members"), "sticky", json_object_get(c->body, "sticky"),
                  "created_at", created_at ? created_at : now, "updated_at", now);
    json_decref(cur);
    size_t len;
    char *text = json_canonical(c->record, &len);
    store_cmp_t cmp = {.key = c->key, .target = STORE_CMP_MOD, .op = STORE_CMP_EQ, .num = mod_rev};
    store_op_t put = {.type = STORE_OP_PUT, .key = c->key, .value = text, .value_len = len};
    int rc = store_txn(c->api->store, &cmp, 1, &put, 1, NULL, 0, group_write_done, c);
    free(text);
    if (rc) {
        api_reply_store_error(c->api, c->req, rc, NULL);
        group_call_free(c);
    }
}

static void group_write_start(group_call_t *c)
{
    if (store_get(c->api->store, c->key, false, group_current_done, c)) {
        api_reply_error(c->api, c->req, 503, NULL, "store unavailable");
        group_call_free(c);
    }
}

/* ?cas=R: the mod revision the client read (0: the group must not exist).
 * Returns false after answering 400. */
static bool group_parse_cas(api_t *api, http_req_t *req, group_call_t *c)
{
    const char *cas = http_req_param(req, "cas");
    if (!cas)
        return true;
    if (str_to_i64(cas, 0, INT64_MAX, &c->cas)) {
        api_reply_error(api, req, 400, NULL,
                        "query parameter cas=%.40s: expected a mod revision (0 = create only)",
                        cas);
        return false;
    }
    c->has_cas = true;
    return true;
}

static void group_put(api_t *api, http_req_t *req, const char *name)
{
    if (req->body_len > GROUP_BODY_MAX) {
        api_reply_error(api, req, 413, NULL, "group definition is %zu bytes, at most %d",
                        req->body_len, GROUP_BODY_MAX);
        return;
    }
    err_t err = {0};
    json_t *doc = req->body_len ? json_parse(req->body, req->body_len, &err) : NULL;
    if (!doc) {
        api_reply_error(api, req, 400, NULL, "%s",
                        req->body_len ? err.msg
                                      : "request body is empty: expected a group (JSON): "
                                        "{\"members\": [{\"target\": ..., \"weight\": ...}]}");
        return;
    }
    if (!json_is_object(doc)) {
        json_decref(doc);
        api_reply_error(api, req, 422,
                        json_pack("[{s:s, s:s}]", "path", "$", "reason", "must be an object"),
                        "routing group must be a JSON object");
        return;
    }
    json_t *errors = json_array();
    json_t *body = group_check(doc, name, errors);
    json_decref(doc);
    if (!body) {
        size_t n = json_array_size(errors);
        api_reply_error(api, req, 422, errors, "routing group %s is invalid (%zu error%s)", name, n,
                        n == 1 ? "" : "s");
        return;
    }
    json_decref(errors);
    group_call_t *c = group_call_new(api, req, name);
    c->body = body;
    if (!group_parse_cas(api, req, c)) {
        group_call_free(c);
        return;
    }
    group_write_start(c);
}

/* ---- delete ------------------------------------------------------------- */

static void group_delete_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    group_call_t *c = data;
    if (status) {
        api_reply_store_error(c->api, c->req, status, err);
    } else if (res->succeeded && res->n_ops && res->ops[0].deleted) {
        log_info("api", "group %s deleted", c->name);
        api_reply_json(c->api, c->req, 200, json_pack("{s:s, s:b}", "name", c->name, "deleted", 1),
                       res->rev);
    } else if (!res->succeeded && res->n_ops && res->ops[0].n_kvs) {
        api_reply_error(c->api, c->req, 409, NULL,
                        "cas failed: group %s is at mod revision %" PRId64 ", not %" PRId64,
                        c->name, res->ops[0].kvs[0].mod_rev, c->cas);
    } else {
        api_reply_error(c->api, c->req, 404, NULL, "group %s not found", c->name);
    }
    group_call_free(c);
}

/* One transaction: the failure branch reads the key, so a refused delete
 * tells "no such group" (404) from "not at your revision" (409). */
static void group_delete(group_call_t *c)
{
    store_cmp_t cmp = {.key = c->key, .target = STORE_CMP_VERSION, .op = STORE_CMP_GT, .num = 0};
    if (c->has_cas)
        cmp = (store_cmp_t){
            .key = c->key, .target = STORE_CMP_MOD, .op = STORE_CMP_EQ, .num = c->cas};
    store_op_t del = {.type = STORE_OP_DELETE, .key = c->key};
    store_op_t get = {.type = STORE_OP_GET, .key = c->key, .keys_only = true};
    if (store_txn(c->api->store, &cmp, 1, &del, 1, &get, 1, group_delete_done, c)) {
        api_reply_error(c->api, c->req, 503, NULL, "store unavailable");
        group_call_free(c);
    }
}

/* ---- routing ------------------------------------------------------------ */

static bool group_method(const http_req_t *req, const char *m)
{
    return strcmp(req->method, m) == 0 || (strcmp(m, "GET") == 0 && !strcmp(req->method, "HEAD"));
}

static void group_start_get(api_t *api, http_req_t *req, const char *name, const char *key,
                            bool prefix, store_cb cb)
{
    group_call_t *c = group_call_new(api, req, name);
    if (store_get(api->store, key ? key : c->key, prefix, cb, c)) {
        api_reply_error(api, req, 503, NULL, "store unavailable");
        group_call_free(c);
    }
}

/* The list is a blocking read (?index=N&wait=D): agents follow the
 * groups this way to serve them from their own locators. */
typedef struct group_list_wait {
    api_t *api;
    http_req_t *req;
} group_list_wait_t;

static void group_list_read(void *data)
{
    group_list_wait_t *w = data;
    group_start_get(w->api, w->req, "", API_GROUPS_PREFIX, true, group_list_done);
    free(w);
}

static void group_list_gone(void *data)
{
    free(data);
}

void api_groups_handle(api_t *api, http_req_t *req, const char *rest)
{
    if (*rest == '\0' || strcmp(rest, "/") == 0) {
        if (group_method(req, "GET")) {
            group_list_wait_t *w = xcalloc(1, sizeof(*w));
            w->api = api;
            w->req = req;
            api_blocking_read(api, req, API_GROUPS_PREFIX, true, group_list_read, group_list_gone,
                              w);
        } else
            api_reply_method_not_allowed(api, req, "GET, HEAD");
        return;
    }
    const char *name = rest + 1; /* after the '/' */
    if (strchr(name, '/')) {
        api_reply_error(api, req, 404, NULL, "no such API path: %s", req->path);
        return;
    }
    if (!group_name_valid(name)) {
        api_reply_error(api, req, 400, NULL,
                        "invalid group name \"%.80s\": expected [a-z0-9][a-z0-9.-]{0,62}", name);
        return;
    }
    if (group_method(req, "GET")) {
        group_start_get(api, req, name, NULL, false, group_get_done);
    } else if (group_method(req, "PUT")) {
        group_put(api, req, name);
    } else if (group_method(req, "DELETE")) {
        group_call_t *c = group_call_new(api, req, name);
        if (group_parse_cas(api, req, c))
            group_delete(c);
        else
            group_call_free(c);
    } else {
        api_reply_method_not_allowed(api, req, "GET, HEAD, PUT, DELETE");
    }
}
