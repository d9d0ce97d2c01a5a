/* /v1/nodes: node agents register, heartbeat and fetch their assignments.
 *
 * A node's record lives on a store lease: an agent that stops heartbeating
 * loses its key when the lease expires, and that delete is how the rest of
 * the control plane (placement, events) learns the node is gone. The
 * assignments list is a blocking read, like KV's: an agent long-polls it
 * with the index of its last answer and hears of a change at once. */
#include "api/api_internal.h"

#include "core/alloc.h"
#include "core/json.h"
#include "core/log.h"
#include "core/str.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define NODE_LABELS_MAX    64
#define NODE_LABEL_KEY_MAX 63
#define NODE_LABEL_VAL_MAX 255
#define NODE_STRING_MAX    255
#define NODE_URL_MAX       512

typedef struct node_call {
    api_t *api;
    http_req_t *req;
    char *id;
    char *key;           /* /nodes/<id> */
    char *assign_prefix; /* /assign/<id>/ */
    char *record;        /* PUT: canonical record to store */
    size_t record_len;
    int64_t lease;     /* PUT: the lease granted for this registration */
    int64_t put_rev;   /* PUT: revision of the write */
    bool fresh;        /* PUT: the node had no record */
    bool delete_after; /* DELETE: the key had no lease; delete it directly */
    /* blocking assignments read */
} node_call_t;

static const char *const node_isolates[] = {"process", "oci", "docker"};

bool api_node_id_valid(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > API_NODE_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = id[i];
        bool alnum = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9');
        if (!alnum && (i == 0 || (ch != '.' && ch != '-')))
            return false;
    }
    return true;
}

static node_call_t *node_call_new(api_t *api, http_req_t *req, const char *id)
{
    node_call_t *c = xcalloc(1, sizeof(*c));
    c->api = api;
    c->req = req;
    c->id = xstrdup(id);
    c->key = xasprintf("%s%s", API_NODES_PREFIX, id);
    c->assign_prefix = xasprintf("%s%s/", API_ASSIGN_PREFIX, id);
    return c;
}

static void node_call_free(node_call_t *c)
{
    free(c->id);
    free(c->key);
    free(c->assign_prefix);
    free(c->record);
    free(c);
}

/* A record as GET shows it: the stored fields plus the lease it lives on. */
static json_t *node_view(const store_kv_t *kv)
{
    json_t *rec = api_record_parse(kv);
    if (rec)
        json_object_set_new(rec, "lease_id", json_integer((json_int_t)kv->lease));
    return rec;
}

/* ---- registration ---------------------------------------------------- */

static bool node_text_ok(const char *s, size_t max, bool spaces)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 || ch == 0x7f || (!spaces && ch == ' '))
            return false;
    }
    return true;
}

static bool node_ip_ok(const char *s)
{
    unsigned char a[16];
    return inet_pton(AF_INET, s, a) == 1 || inet_pton(AF_INET6, s, a) == 1;
}

static bool node_url_ok(const char *url)
{
    const char *host = str_has_prefix(url, "http://")    ? url + strlen("http://")
                       : str_has_prefix(url, "https://") ? url + strlen("https://")
                                                         : NULL;
    return host && *host && *host != '/' && node_text_ok(url, NODE_URL_MAX, false);
}

static void node_check_labels(json_t *v, json_t *errors)
{
    if (!json_is_object(v)) {
        json_error_push(errors, "$.labels", "must be an object of strings");
        return;
    }
    if (json_object_size(v) > NODE_LABELS_MAX)
        json_error_push(errors, "$.labels", "at most %d labels", NODE_LABELS_MAX);
    const char *k;
    json_t *lv;
    json_object_foreach(v, k, lv)
    {
        char path[96];
        snprintf(path, sizeof(path), "$.labels.%.64s", k);
        if (!node_text_ok(k, NODE_LABEL_KEY_MAX, false))
            json_error_push(errors, path, "label names are 1..%d printable characters",
                            NODE_LABEL_KEY_MAX);
        else if (!json_is_string(lv) || strlen(json_string_value(lv)) > NODE_LABEL_VAL_MAX)
            json_error_push(errors, path, "must be a string of at most %d bytes",
                            NODE_LABEL_VAL_MAX);
    }
}

static void node_check_ports(json_t *v, json_t *errors)
{
    json_int_t lo = 0, hi = 0;
    if (!json_is_array(v) || json_array_size(v) != 2 || !json_is_integer(json_array_get(v, 0)) ||
        !json_is_integer(json_array_get(v, 1))) {
        json_error_push(errors, "$.ports", "must be [low, high]: the host port range to allocate");
        return;
    }
    lo = json_integer_value(json_array_get(v, 0));
    hi = json_integer_value(json_array_get(v, 1));
    if (lo < 1 || hi > 65535 || lo > hi)
        json_error_push(errors, "$.ports",
                        "range [%" JSON_INTEGER_FORMAT ", %" JSON_INTEGER_FORMAT
                        "] must satisfy 1 <= low <= high <= 65535",
                        lo, hi);
}

static void node_check_isolates(json_t *v, json_t *errors)
{
    if (!json_is_array(v) || json_array_size(v) == 0) {
        json_error_push(errors, "$.isolates", "must be a non-empty array of isolate names");
        return;
    }
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e)
    {
        const char *name = json_string_value(e);
        char path[48];
        snprintf(path, sizeof(path), "$.isolates[%zu]", i);
        bool known = false;
        for (size_t k = 0; name && k < sizeof(node_isolates) / sizeof(*node_isolates); k++)
            known |= strcmp(name, node_isolates[k]) == 0;
        if (!known) {
            json_error_push(errors, path, "expected one of process, oci, docker");
            continue;
        }
        for (size_t j = 0; j < i; j++)
            if (json_equal(json_array_get(v, j), e))
                json_error_push(errors, path, "%s is listed twice", name);
    }
}

/* Validate a registration body and build the record to store; NULL with
 * `errors` filled (one entry per problem, as spec validation does). */
static json_t *node_record_build(const json_t *doc, const char *id, json_t *errors)
{
    static const char *const known[] = {"id",      "hostname", "address", "agent_url",
                                        "labels",  "cpus",     "mem_mb",  "ports",
                                        "version", "isolates", "locator"};
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)doc, k, v)
    {
        bool ok = false;
        for (size_t i = 0; i < sizeof(known) / sizeof(*known); i++)
            ok |= strcmp(k, known[i]) == 0;
        if (!ok) {
            char path[80];
            snprintf(path, sizeof(path), "$.%.64s", k);
            json_error_push(errors, path, "unknown field");
        }
    }
    json_t *idv = json_object_get(doc, "id");
    if (idv && (!json_is_string(idv) || strcmp(json_string_value(idv), id) != 0))
        json_error_push(errors, "$.id", "differs from the node id in the URL (%s)", id);
    const char *hostname = json_str(doc, "hostname");
    if (json_object_get(doc, "hostname") && (!hostname || !node_text_ok(hostname, 253, false)))
        json_error_push(errors, "$.hostname", "must be a host name of 1..253 characters");
    const char *address = json_str(doc, "address");
    if (!json_object_get(doc, "address"))
        json_error_push(errors, "$.address", "required: the IP address other nodes reach it at");
    else if (!address || !node_ip_ok(address))
        json_error_push(errors, "$.address", "must be a numeric IPv4 or IPv6 address");
    const char *url = json_str(doc, "agent_url");
    if (!json_object_get(doc, "agent_url"))
        json_error_push(errors, "$.agent_url",
                        "required: the agent's own HTTP endpoint (http://host:port)");
    else if (!url || !node_url_ok(url))
        json_error_push(errors, "$.agent_url",
                        "must be an http:// or https:// URL of at most %d characters",
                        NODE_URL_MAX);
    json_t *labels = json_object_get(doc, "labels");
    if (labels)
        node_check_labels(labels, errors);
    json_t *cpus = json_object_get(doc, "cpus");
    if (cpus && (!json_is_number(cpus) || !isfinite(json_number_value(cpus)) ||
                 json_number_value(cpus) < 0 || json_number_value(cpus) > 1e6))
        json_error_push(errors, "$.cpus", "must be a number >= 0");
    json_t *mem = json_object_get(doc, "mem_mb");
    if (mem && (!json_is_integer(mem) || json_integer_value(mem) < 0))
        json_error_push(errors, "$.mem_mb", "must be an integer >= 0");
    json_t *ports = json_object_get(doc, "ports");
    if (ports && !json_is_null(ports))
        node_check_ports(ports, errors);
    const char *version = json_str(doc, "version");
    if (json_object_get(doc, "version") && (!version || strlen(version) > 64))
        json_error_push(errors, "$.version", "must be a string of at most 64 characters");
    json_t *isolates = json_object_get(doc, "isolates");
    if (isolates)
        node_check_isolates(isolates, errors);
    /* The node's locator ("host:port"): where routers and metalocators
     * subscribe to what runs there. */
    const char *locator = json_str(doc, "locator");
    char *lhost = NULL;
    int lport = 0;
    if (json_object_get(doc, "locator") &&
        (!locator || str_split_hostport(locator, &lhost, &lport) || lport == 0))
        json_error_push(errors, "$.locator", "must be host:port of the node's locator");
    free(lhost);
    if (json_array_size(errors))
        return NULL;

    char now[40];
    api_time_now(now, sizeof(now));
    json_t *rec = json_pack(
        "{s:s, s:s, s:s, s:s, s:o, s:o, s:I, s:O, s:s, s:o, s:s}", "id", id, "hostname",
        hostname ? hostname : id, "address", address, "agent_url", url, "labels",
        labels ? json_deep_copy(labels) : json_object(), "cpus",
        cpus ? json_real(json_number_value(cpus)) : json_real(0), "mem_mb",
        (json_int_t)(mem ? json_integer_value(mem) : 0), "ports", ports ? ports : json_null(),
        "version", version ? version : "", "isolates",
        isolates ? json_deep_copy(isolates) : json_pack("[s]", "process"), "registered_at", now);
    if (locator)
        json_object_set_new(rec, "locator", json_string(locator));
    return rec;
}

static void node_register_reply(node_call_t *c)
{
    log_info("api", "node %s %s (lease %" PRId64 ")", c->id,
             c->fresh ? "registered" : "registered again", c->lease);
    api_reply_json(c->api, c->req, 200,
                   json_pack("{s:s, s:I, s:i, s:i}", "id", c->id, "lease_id", (json_int_t)c->lease,
                             "lease_ttl_s", API_NODE_LEASE_TTL_S, "heartbeat_s",
                             API_NODE_HEARTBEAT_S),
                   c->put_rev);
    node_call_free(c);
}

static void node_old_lease_revoked(int status, const err_t *err, int64_t lease_id, int64_t ttl_s,
                                   void *data)
{
    node_call_t *c = data;
    /* -ENOENT: the old lease expired on its own meanwhile, as good. */
    if (status && status != -ENOENT)
        log_warn("api", "node %s: revoking its old lease %" PRId64 ": %s", c->id, lease_id,
                 err_str(err, status));
    node_register_reply(c);
}

static void node_lease_dropped(int status, const err_t *err, int64_t lease_id, int64_t ttl_s,
                               void *data)
{
    if (status && status != -ENOENT)
        log_warn("api", "dropping unused lease %" PRId64 ": %s", lease_id, err_str(err, status));
}

static void node_put_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    node_call_t *c = data;
    if (status) {
        /* The new lease holds nothing; do not leave it to expire. */
        if (status != -ECANCELED)
            store_lease_revoke(c->api->store, c->lease, node_lease_dropped, NULL);
        api_reply_store_error(c->api, c->req, status, err);
        node_call_free(c);
        return;
    }
    c->put_rev = res->rev;
    const store_op_result_t *op = &res->ops[0];
    int64_t old = op->n_kvs ? op->kvs[0].lease : 0;
    c->fresh = op->n_kvs == 0;
    /* Revoked only now that the key hangs on the new lease: revoking first
     * would delete the key and tell everyone the node was lost. */
    if (old && old != c->lease &&
        store_lease_revoke(c->api->store, old, node_old_lease_revoked, c) == 0)
        return;
    node_register_reply(c);
}

static void node_lease_granted(int status, const err_t *err, int64_t lease_id, int64_t ttl_s,
                               void *data)
{
    node_call_t *c = data;
    if (status) {
        api_reply_store_error(c->api, c->req, status, err);
        node_call_free(c);
        return;
    }
    c->lease = lease_id;
    store_op_t op = {.type = STORE_OP_PUT,
                     .key = c->key,
                     .value = c->record,
                     .value_len = c->record_len,
                     .lease = lease_id};
    if (store_txn(c->api->store, NULL, 0, &op, 1, NULL, 0, node_put_done, c)) {
        api_reply_error(c->api, c->req, 503, NULL, "store unavailable");
        node_call_free(c);
    }
}

/* PUT /v1/nodes/<id>: a fresh lease for every registration, so an agent
 * that restarted (and forgot its lease) or lost its lease simply registers
 * again. */
static void node_register(api_t *api, http_req_t *req, const char *id)
{
    err_t err = {0};
    json_t *doc = req->body_len ? json_parse(req->body, req->body_len, &err) : NULL;
    if (!doc) {
        api_reply_error(api, req, 400, NULL, "%s",
                        req->body_len ? err.msg : "request body is empty: expected a node (JSON)");
        return;
    }
    if (!json_is_object(doc)) {
        json_decref(doc);
        api_reply_error(api, req, 422, NULL, "node registration must be a JSON object");
        return;
    }
    json_t *errors = json_array();
    json_t *rec = node_record_build(doc, id, errors);
    json_decref(doc);
    if (!rec) {
        size_t n = json_array_size(errors);
        api_reply_error(api, req, 422, errors, "node registration is invalid (%zu error%s)", n,
                        n == 1 ? "" : "s");
        return;
    }
    json_decref(errors);
    node_call_t *c = node_call_new(api, req, id);
    c->record = json_canonical(rec, &c->record_len);
    json_decref(rec);
    if (store_lease_grant(api->store, API_NODE_LEASE_TTL_S, node_lease_granted, c)) {
        api_reply_error(api, req, 503, NULL, "store unavailable");
        node_call_free(c);
    }
}

/* ---- heartbeat ------------------------------------------------------- */

static void node_not_registered(node_call_t *c)
{
    api_reply_error(c->api, c->req, 404, NULL,
                    "node %s is not registered (lease expired); register again", c->id);
}

static void node_keepalive_done(int status, const err_t *err, int64_t lease_id, int64_t ttl_s,
                                void *data)
{
    node_call_t *c = data;
    if (status == -ENOENT)
        node_not_registered(c);
    else if (status)
        api_reply_error(c->api, c->req, 503, NULL, "store: %s", err_str(err, status));
    else
        api_reply_json(c->api, c->req, 200,
                       json_pack("{s:b, s:I}", "ok", 1, "lease_ttl_s", (json_int_t)ttl_s), 0);
    node_call_free(c);
}

static void node_heartbeat_read(int status, const err_t *err, const store_result_t *res, void *data)
{
    node_call_t *c = data;
    if (status) {
        api_reply_store_error(c->api, c->req, status, err);
        node_call_free(c);
        return;
    }
    const store_op_result_t *op = &res->ops[0];
    if (!op->n_kvs || !op->kvs[0].lease) {
        node_not_registered(c);
        node_call_free(c);
        return;
    }
    if (store_lease_keepalive(c->api->store, op->kvs[0].lease, node_keepalive_done, c)) {
        api_reply_error(c->api, c->req, 503, NULL, "store unavailable");
        node_call_free(c);
    }
}

/* ---- read, list, delete ---------------------------------------------- */

static void node_list_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    node_call_t *c = data;
    if (status) {
        api_reply_store_error(c->api, c->req, status, err);
    } else {
        json_t *nodes = json_array();
        const store_op_result_t *op = &res->ops[0];
        for (size_t i = 0; i < op->n_kvs; i++) {
            json_t *rec = node_view(&op->kvs[i]);
            if (rec)
                json_array_append_new(nodes, rec);
        }
        api_reply_json(c->api, c->req, 200, json_pack("{s:o}", "nodes", nodes), res->rev);
    }
    node_call_free(c);
}

static void node_get_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    node_call_t *c = data;
    const store_op_result_t *op = status ? NULL : &res->ops[0];
    json_t *rec = op && op->n_kvs ? node_view(&op->kvs[0]) : NULL;
    if (status)
        api_reply_store_error(c->api, c->req, status, err);
    else if (!rec)
        api_reply_error(c->api, c->req, 404, NULL, "node %s not found", c->id);
    else
        api_reply_json(c->api, c->req, 200, rec, res->rev);
    node_call_free(c);
}

static void node_delete_reply(node_call_t *c)
{
    log_info("api", "node %s deregistered", c->id);
    api_reply_json(c->api, c->req, 200, json_pack("{s:s, s:b}", "id", c->id, "deleted", 1), 0);
    node_call_free(c);
}

static void node_key_deleted(int status, const err_t *err, const store_result_t *res, void *data)
{
    node_call_t *c = data;
    if (status) {
        api_reply_store_error(c->api, c->req, status, err);
        node_call_free(c);
    } else if (!res->ops[0].deleted) {
        api_reply_error(c->api, c->req, 404, NULL, "node %s not found", c->id);
        node_call_free(c);
    } else {
        node_delete_reply(c);
    }
}

static void node_delete_key(node_call_t *c)
{
    if (store_delete(c->api->store, c->key, false, node_key_deleted, c)) {
        api_reply_error(c->api, c->req, 503, NULL, "store unavailable");
        node_call_free(c);
    }
}

static void node_revoked(int status, const err_t *err, int64_t lease_id, int64_t ttl_s, void *data)
{
    node_call_t *c = data;
    if (status == -ENOENT) /* expired meanwhile: the key went with it */
        node_delete_key(c);
    else if (status) {
        api_reply_error(c->api, c->req, 503, NULL, "store: %s", err_str(err, status));
        node_call_free(c);
    } else {
        node_delete_reply(c);
    }
}

/* Revoking the lease (rather than deleting the key) ends the node exactly
 * as an expiry would, in one revision. */
static void node_delete_read(int status, const err_t *err, const store_result_t *res, void *data)
{
    node_call_t *c = data;
    if (status) {
        api_reply_store_error(c->api, c->req, status, err);
        node_call_free(c);
        return;
    }
    const store_op_result_t *op = &res->ops[0];
    if (!op->n_kvs) {
        api_reply_error(c->api, c->req, 404, NULL, "node %s not found", c->id);
        node_call_free(c);
    } else if (!op->kvs[0].lease) {
        node_delete_key(c);
    } else if (store_lease_revoke(c->api->store, op->kvs[0].lease, node_revoked, c)) {
        api_reply_error(c->api, c->req, 503, NULL, "store unavailable");
        node_call_free(c);
    }
}

/* ---- assignments (blocking read) ------------------------------------- */

static void node_assign_read_done(int status, const err_t *err, const store_result_t *res,
                                  void *data)
{
    node_call_t *c = data;
    if (status) {
        api_reply_store_error(c->api, c->req, status, err);
        node_call_free(c);
        return;
    }
    json_t *list = json_array();
    const store_op_result_t *op = &res->ops[1];
    for (size_t i = 0; i < op->n_kvs; i++) {
        json_t *rec = api_record_parse(&op->kvs[i]);
        if (rec)
            json_array_append_new(list, rec);
    }
    api_reply_json(c->api, c->req, 200,
                   json_pack("{s:s, s:b, s:o}", "node", c->id, "registered", res->ops[0].n_kvs > 0,
                             "instances", list),
                   res->rev);
    node_call_free(c);
}

static void node_assign_read(node_call_t *c)
{
    store_op_t ops[2] = {
        {.type = STORE_OP_GET, .key = c->key, .keys_only = true},
        {.type = STORE_OP_GET, .key = c->assign_prefix, .prefix = true},
    };
    if (store_txn(c->api->store, NULL, 0, ops, 2, NULL, 0, node_assign_read_done, c)) {
        api_reply_error(c->api, c->req, 503, NULL, "store unavailable");
        node_call_free(c);
    }
}

static void node_assign_read_cb(void *data)
{
    node_assign_read(data);
}

static void node_gone_cb(void *data)
{
    node_call_free(data);
}

static void node_assignments(node_call_t *c)
{
    api_blocking_read(c->api, c->req, c->assign_prefix, true, node_assign_read_cb, node_gone_cb, c);
}

/* ---- routing --------------------------------------------------------- */

static bool node_method(const http_req_t *req, const char *m)
{
    return strcmp(req->method, m) == 0 || (strcmp(m, "GET") == 0 && !strcmp(req->method, "HEAD"));
}

static void node_start_get(node_call_t *c, const char *key, bool prefix, store_cb cb)
{
    if (store_get(c->api->store, key ? key : c->key, prefix, cb, c)) {
        api_reply_error(c->api, c->req, 503, NULL, "store unavailable");
        node_call_free(c);
    }
}

void api_nodes_handle(api_t *api, http_req_t *req, const char *rest)
{
    if (*rest == '\0' || strcmp(rest, "/") == 0) {
        if (node_method(req, "GET"))
            node_start_get(node_call_new(api, req, ""), API_NODES_PREFIX, true, node_list_done);
        else
            api_reply_method_not_allowed(api, req, "GET, HEAD");
        return;
    }
    rest++; /* the '/' */
    const char *slash = strchr(rest, '/');
    size_t id_len = slash ? (size_t)(slash - rest) : strlen(rest);
    const char *sub = slash ? slash + 1 : NULL;
    char *id = xstrndup(rest, id_len);
    if (!api_node_id_valid(id)) {
        api_reply_error(api, req, 400, NULL,
                        "invalid node id \"%.80s\": expected [a-z0-9][a-z0-9.-]{0,62}", id);
        free(id);
        return;
    }
    if (!sub) {
        if (node_method(req, "GET"))
            node_start_get(node_call_new(api, req, id), NULL, false, node_get_done);
        else if (node_method(req, "PUT"))
            node_register(api, req, id);
        else if (node_method(req, "DELETE"))
            node_start_get(node_call_new(api, req, id), NULL, false, node_delete_read);
        else
            api_reply_method_not_allowed(api, req, "GET, HEAD, PUT, DELETE");
    } else if (strcmp(sub, "heartbeat") == 0) {
        if (node_method(req, "POST"))
            node_start_get(node_call_new(api, req, id), NULL, false, node_heartbeat_read);
        else
            api_reply_method_not_allowed(api, req, "POST");
    } else if (strcmp(sub, "assignments") == 0) {
        if (node_method(req, "GET"))
            node_assignments(node_call_new(api, req, id));
        else
            api_reply_method_not_allowed(api, req, "GET, HEAD");
    } else {
        api_reply_error(api, req, 404, NULL, "no such API path: %s", req->path);
    }
    free(id);
}
