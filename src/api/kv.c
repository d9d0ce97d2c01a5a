/* /v1/kv: Consul-style hierarchical config store with compare-and-swap and
 * blocking reads (api_blocking_read). */
#include "api/api_internal.h"

#include "core/alloc.h"
#include "core/log.h"
#include "core/str.h"

#include <errno.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

typedef enum kv_mode { KV_ONE, KV_RECURSE, KV_KEYS } kv_mode_t;

typedef struct kv_call {
    api_t *api;
    http_req_t *req;
    char *key;  /* as the user sees it */
    char *skey; /* store key */
    kv_mode_t mode;
    int64_t cas;
    bool has_cas;
} kv_call_t;

static void kv_call_free(kv_call_t *c)
{
    free(c->key);
    free(c->skey);
    free(c);
}

/* Validate a KV key: non-empty segments, no "." or "..", no control
 * characters, bounded length. `allow_prefix` accepts "" and a trailing '/'
 * (recursive reads and deletes address a prefix). */
static int kv_key_check(const char *key, bool allow_prefix, err_t *err)
{
    size_t n = strlen(key);
    if (n > API_KV_KEY_MAX)
        return err_set(err, -EINVAL, "key is %zu bytes, at most %d allowed", n, API_KV_KEY_MAX);
    if (n == 0) {
        if (allow_prefix)
            return 0;
        return err_set(err, -EINVAL, "key is empty");
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)key[i];
        if (ch < 0x20 || ch == 0x7f)
            return err_set(err, -EINVAL, "key %.64s: control character at byte %zu", key, i);
    }
    const char *seg = key;
    while (seg) {
        const char *slash = strchr(seg, '/');
        size_t len = slash ? (size_t)(slash - seg) : strlen(seg);
        bool last = !slash;
        bool trailing = slash && slash[1] == '\0';
        if (len == 0 && !(last && allow_prefix && seg != key))
            return err_set(err, -EINVAL, "key %.64s: empty path segment", key);
        if ((len == 1 && seg[0] == '.') || (len == 2 && seg[0] == '.' && seg[1] == '.'))
            return err_set(err, -EINVAL, "key %.64s: '%.*s' segments are not allowed", key,
                           (int)len, seg);
        if (trailing && !allow_prefix)
            return err_set(err, -EINVAL, "key %.64s: trailing '/' (use ?recurse for a prefix)",
                           key);
        seg = slash ? slash + 1 : NULL;
        if (trailing)
            break;
    }
    return 0;
}

static json_t *kv_value_json(const store_kv_t *kv, bool *b64)
{
    /* jansson refuses invalid UTF-8, which tells us when to fall back to
     * base64 so binary values survive a JSON round trip. */
    json_t *s = json_stringn(kv->value ? kv->value : "", kv->value_len);
    *b64 = s == NULL;
    if (s)
        return s;
    size_t cap = 4 * ((kv->value_len + 2) / 3) + 1;
    unsigned char *out = xmalloc(cap);
    EVP_EncodeBlock(out, (const unsigned char *)kv->value, (int)kv->value_len);
    json_t *b = json_string((const char *)out);
    free(out);
    return b;
}

static void kv_read_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    kv_call_t *c = data;
    if (status) {
        api_reply_store_error(c->api, c->req, status, err);
        kv_call_free(c);
        return;
    }
    const store_op_result_t *op = &res->ops[0];
    size_t skip = strlen(API_KV_PREFIX);
    if (op->n_kvs == 0) {
        api_reply_error(c->api, c->req, 404, NULL, "key %s not found", c->key);
    } else if (c->mode == KV_ONE) {
        const store_kv_t *kv = &op->kvs[0];
        char idx[24], mod[24], cre[24], ver[24];
        snprintf(idx, sizeof(idx), "%" PRId64, res->rev);
        snprintf(mod, sizeof(mod), "%" PRId64, kv->mod_rev);
        snprintf(cre, sizeof(cre), "%" PRId64, kv->create_rev);
        snprintf(ver, sizeof(ver), "%" PRId64, kv->version);
        http_header_t hdrs[] = {
            {"Content-Type", "application/octet-stream"},
            {"X-Drover-Index", idx},
            {"X-Drover-Mod-Revision", mod},
            {"X-Drover-Create-Revision", cre},
            {"X-Drover-Version", ver},
        };
        http_respond(c->req, 200, hdrs, 5, kv->value, kv->value_len);
    } else {
        json_t *arr = json_array();
        for (size_t i = 0; i < op->n_kvs; i++) {
            const store_kv_t *kv = &op->kvs[i];
            const char *k = kv->key + skip;
            if (c->mode == KV_KEYS) {
                json_array_append_new(arr, json_string(k));
                continue;
            }
            bool b64;
            json_t *val = kv_value_json(kv, &b64);
            json_t *o =
                json_pack("{s:s, s:o, s:I, s:I, s:I}", "key", k, b64 ? "value_base64" : "value",
                          val, "create_revision", (json_int_t)kv->create_rev, "mod_revision",
                          (json_int_t)kv->mod_rev, "version", (json_int_t)kv->version);
            json_array_append_new(arr, o);
        }
        api_reply_json(c->api, c->req, 200, arr, res->rev);
    }
    kv_call_free(c);
}

static void kv_read(kv_call_t *c)
{
    store_op_t op = {
        .type = STORE_OP_GET,
        .key = c->skey,
        .prefix = c->mode != KV_ONE,
        .keys_only = c->mode == KV_KEYS,
    };
    int rc = store_txn(c->api->store, NULL, 0, &op, 1, NULL, 0, kv_read_done, c);
    if (rc) {
        api_reply_store_error(c->api, c->req, rc, NULL);
        kv_call_free(c);
    }
}

static void kv_read_cb(void *data)
{
    kv_read(data);
}

static void kv_gone_cb(void *data)
{
    kv_call_free(data);
}

static void kv_get(kv_call_t *c)
{
    api_blocking_read(c->api, c->req, c->skey, c->mode != KV_ONE, kv_read_cb, kv_gone_cb, c);
}

static void kv_write_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    kv_call_t *c = data;
    bool is_put = strcmp(c->req->method, "PUT") == 0;
    if (status) {
        api_reply_store_error(c->api, c->req, status, err);
    } else if (!res->succeeded) {
        api_reply_error(c->api, c->req, 409, NULL,
                        "cas failed: key %s is not at mod revision %" PRId64, c->key, c->cas);
    } else if (is_put) {
        api_reply_json(c->api, c->req, 200,
                       json_pack("{s:s, s:I}", "key", c->key, "mod_revision", (json_int_t)res->rev),
                       res->rev);
    } else {
        size_t deleted = res->n_ops ? res->ops[0].deleted : 0;
        api_reply_json(c->api, c->req, 200, json_pack("{s:I}", "deleted", (json_int_t)deleted),
                       res->rev);
    }
    kv_call_free(c);
}

static void kv_write(kv_call_t *c, bool is_put)
{
    if (is_put && c->req->body_len > API_KV_VALUE_MAX) {
        api_reply_error(c->api, c->req, 413, NULL, "value is %zu bytes, at most %d allowed",
                        c->req->body_len, API_KV_VALUE_MAX);
        kv_call_free(c);
        return;
    }
    store_op_t op = {
        .type = is_put ? STORE_OP_PUT : STORE_OP_DELETE,
        .key = c->skey,
        .prefix = !is_put && c->mode == KV_RECURSE,
        .value = c->req->body,
        .value_len = c->req->body_len,
    };
    store_cmp_t cmp = {.key = c->skey, .target = STORE_CMP_MOD, .op = STORE_CMP_EQ, .num = c->cas};
    int rc = store_txn(c->api->store, c->has_cas ? &cmp : NULL, c->has_cas ? 1 : 0, &op, 1, NULL, 0,
                       kv_write_done, c);
    if (rc) {
        api_reply_store_error(c->api, c->req, rc, NULL);
        kv_call_free(c);
    }
}

void api_kv_handle(api_t *api, http_req_t *req, const char *key)
{
    bool get = !strcmp(req->method, "GET") || !strcmp(req->method, "HEAD");
    bool put = !strcmp(req->method, "PUT");
    bool del = !strcmp(req->method, "DELETE");
    if (!get && !put && !del) {
        api_reply_method_not_allowed(api, req, "GET, HEAD, PUT, DELETE");
        return;
    }
    kv_mode_t mode = KV_ONE;
    if (http_req_param(req, "keys") && get)
        mode = KV_KEYS;
    else if (http_req_param(req, "recurse") && !put)
        mode = KV_RECURSE;

    err_t err = {0};
    if (kv_key_check(key, mode != KV_ONE, &err)) {
        api_reply_error(api, req, 400, NULL, "invalid key: %s", err.msg);
        return;
    }
    kv_call_t *c = xcalloc(1, sizeof(*c));
    c->api = api;
    c->req = req;
    c->key = xstrdup(key);
    c->skey = xasprintf("%s%s", API_KV_PREFIX, key);
    c->mode = mode;
    const char *cas = http_req_param(req, "cas");
    if (cas && !get) {
        if (str_to_i64(cas, 0, INT64_MAX, &c->cas)) {
            api_reply_error(api, req, 400, NULL,
                            "query parameter cas=%s: expected a mod revision (0 = create only)",
                            cas);
            kv_call_free(c);
            return;
        }
        c->has_cas = true;
    }
    if (get)
        kv_get(c);
    else
        kv_write(c, put);
}
