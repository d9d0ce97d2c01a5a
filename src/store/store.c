/* store.c: the backend-independent front of the store. It validates and
 * copies every call into a request, passes it to the backend through its ops
 * table, and runs the user's callbacks when the backend hands requests and
 * events back on the loop thread. Keeping validation here means every
 * backend enforces exactly the same limits with the same messages. */
#include "store/store.h"

#include "core/alloc.h"
#include "core/log.h"
#include "store/store_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STORE_DEFAULT_KEEP 10000

struct store {
    uv_loop_t *loop;
    const store_backend_ops_t *ops;
    void *be;
    int64_t rev;
    uint64_t next_watch_id;
    bool closing;
    void (*close_cb)(void *data);
    void *close_data;
};

/* ---- validation ------------------------------------------------------- */

/* Keys end up in error messages that reach API clients and logs; show only
 * a bounded head of them. */
#define KEY_SHOW 48

static int store_check_key(const char *key, bool allow_empty, const char *where, size_t *len,
                           err_t *err)
{
    if (!key)
        return err_set(err, -EINVAL, "%s: key is NULL", where);
    size_t n = strnlen(key, STORE_KEY_MAX + 1);
    if (n > STORE_KEY_MAX)
        return err_set(err, -EINVAL, "%s: key \"%.*s...\" is longer than %d bytes", where, KEY_SHOW,
                       key, STORE_KEY_MAX);
    if (n == 0 && !allow_empty)
        return err_set(err, -EINVAL, "%s: key is empty", where);
    *len = n;
    return 0;
}

static int store_check_value(const void *v, size_t len, const char *where, err_t *err)
{
    if (!v && len)
        return err_set(err, -EINVAL, "%s: value is NULL but its length is %zu", where, len);
    if (len > STORE_VALUE_MAX)
        return err_set(err, -E2BIG, "%s: value of %zu bytes is larger than the limit of %d bytes",
                       where, len, STORE_VALUE_MAX);
    return 0;
}

/* etcd rejects a txn branch that puts one key twice or puts a key that one
 * of its deletes covers (the outcome would depend on op order). The SQLite
 * backend could run such a branch, but then code tested against it would
 * fail on etcd, so both refuse it. */
static int store_check_overlap(const store_op_t *ops, size_t n, const char *branch, err_t *err)
{
    for (size_t i = 0; i < n; i++) {
        if (ops[i].type != STORE_OP_PUT)
            continue;
        for (size_t j = 0; j < n; j++) {
            if (j == i)
                continue;
            if (ops[j].type == STORE_OP_PUT && j < i && strcmp(ops[j].key, ops[i].key) == 0)
                return err_set(err, -EINVAL, "%s: key \"%.*s\" is put twice in one txn", branch,
                               KEY_SHOW, ops[i].key);
            if (ops[j].type == STORE_OP_DELETE &&
                (ops[j].prefix ? strncmp(ops[i].key, ops[j].key, strlen(ops[j].key)) == 0
                               : strcmp(ops[i].key, ops[j].key) == 0))
                return err_set(err, -EINVAL, "%s: key \"%.*s\" is both put and deleted in one txn",
                               branch, KEY_SHOW, ops[i].key);
        }
    }
    return 0;
}

/* Copy one branch of ops into the request's arena, checking each. `single`
 * names the op by its verb (store_put & co.) instead of its position. */
static int store_copy_ops(store_req_t *r, const store_op_t *in, size_t n, const char *branch,
                          bool single, const store_op_t **out)
{
    static const char *const verbs[] = {"get", "put", "delete"};
    err_t *err = &r->err;
    *out = NULL;
    if (n > STORE_TXN_OPS_MAX)
        return err_set(err, -E2BIG, "%s: %zu ops, at most %d are allowed", branch, n,
                       STORE_TXN_OPS_MAX);
    if (n && !in)
        return err_set(err, -EINVAL, "%s: ops array is NULL", branch);
    if (!n)
        return 0;
    store_op_t *ops = store_arena_zalloc(&r->arena, n * sizeof(*ops));
    for (size_t i = 0; i < n; i++) {
        const store_op_t *o = &in[i];
        store_op_t *c = &ops[i];
        char where[64];
        if ((unsigned)o->type > STORE_OP_DELETE)
            return err_set(err, -EINVAL, "%s op %zu: unknown op type %d", branch, i, (int)o->type);
        if (single)
            snprintf(where, sizeof(where), "%s", verbs[o->type]);
        else
            snprintf(where, sizeof(where), "%s op %zu (%s)", branch, i, verbs[o->type]);
        size_t klen = 0;
        int rc = store_check_key(o->key, o->type != STORE_OP_PUT && o->prefix, where, &klen, err);
        if (rc)
            return rc;
        c->type = o->type;
        c->key = store_arena_memdup(&r->arena, o->key, klen);
        if (o->type == STORE_OP_PUT) {
            if (o->prefix)
                return err_set(err, -EINVAL, "%s: prefix applies to get and delete only", where);
            if ((rc = store_check_value(o->value, o->value_len, where, err)))
                return rc;
            if (o->lease < 0)
                return err_set(err, -EINVAL, "%s: lease id %" PRId64 " is negative", where,
                               o->lease);
            c->value = store_arena_memdup(&r->arena, o->value, o->value_len);
            c->value_len = o->value_len;
            c->lease = o->lease;
            r->writes = true;
        } else {
            c->prefix = o->prefix;
            if (o->type == STORE_OP_GET) {
                c->keys_only = o->keys_only;
                c->limit = o->limit;
            } else {
                r->writes = true;
            }
        }
    }
    *out = ops;
    return store_check_overlap(ops, n, single ? verbs[ops[0].type] : branch, err);
}

static int store_copy_cmps(store_req_t *r, const store_cmp_t *in, size_t n)
{
    err_t *err = &r->err;
    if (n > STORE_TXN_OPS_MAX)
        return err_set(err, -E2BIG, "txn: %zu compares, at most %d are allowed", n,
                       STORE_TXN_OPS_MAX);
    if (n && !in)
        return err_set(err, -EINVAL, "txn: compare array is NULL");
    if (!n)
        return 0;
    store_cmp_t *cmps = store_arena_zalloc(&r->arena, n * sizeof(*cmps));
    for (size_t i = 0; i < n; i++) {
        const store_cmp_t *c = &in[i];
        char where[48];
        snprintf(where, sizeof(where), "txn compare %zu", i);
        size_t klen = 0;
        int rc = store_check_key(c->key, false, where, &klen, err);
        if (rc)
            return rc;
        if ((unsigned)c->target > STORE_CMP_VALUE)
            return err_set(err, -EINVAL, "%s: unknown target %d", where, (int)c->target);
        if ((unsigned)c->op > STORE_CMP_GT)
            return err_set(err, -EINVAL, "%s: unknown operator %d", where, (int)c->op);
        cmps[i] = *c;
        cmps[i].key = store_arena_memdup(&r->arena, c->key, klen);
        if (c->target == STORE_CMP_VALUE) {
            if ((rc = store_check_value(c->value, c->value_len, where, err)))
                return rc;
            cmps[i].value = store_arena_memdup(&r->arena, c->value, c->value_len);
        } else {
            cmps[i].value = NULL;
            cmps[i].value_len = 0;
        }
    }
    r->cmps = cmps;
    r->n_cmps = n;
    return 0;
}

/* ---- requests --------------------------------------------------------- */

static store_req_t *store_req_new(store_t *s, store_req_kind_t kind, void *data)
{
    store_req_t *r = xcalloc(1, sizeof(*r));
    r->s = s;
    r->kind = kind;
    r->data = data;
    return r;
}

void store_req_free(store_req_t *r)
{
    store_arena_free(&r->arena);
    free(r);
}

/* Invalid arguments are not returned synchronously: they travel through the
 * backend like any request so that (1) the callback gets an err naming the
 * problem and (2) callbacks still run in call order. */
static int store_txn_submit(store_t *s, const store_cmp_t *cmps, size_t n_cmps,
                            const store_op_t *success, size_t n_success, const store_op_t *failure,
                            size_t n_failure, bool single, store_cb cb, void *data)
{
    if (!s)
        return -EINVAL;
    if (s->closing)
        return -ECANCELED;
    store_req_t *r = store_req_new(s, STORE_REQ_TXN, data);
    r->cb = cb;
    int rc = store_copy_cmps(r, cmps, n_cmps);
    if (!rc)
        rc = store_copy_ops(r, success, n_success, "success", single, &r->success);
    if (!rc)
        rc = store_copy_ops(r, failure, n_failure, "failure", single, &r->failure);
    r->n_success = r->success ? n_success : 0;
    r->n_failure = r->failure ? n_failure : 0;
    r->status = rc;
    s->ops->submit(s->be, r);
    return 0;
}

void store_req_complete(store_req_t *r)
{
    store_t *s = r->s;
    int st = r->status;
    const err_t *e = NULL;
    if (st) {
        if (!r->err.msg[0])
            err_set(&r->err, st, "store: %s", strerror(-st));
        r->err.code = st;
        e = &r->err;
    } else {
        store_note_revision(s, r->res.rev);
    }
    switch (r->kind) {
    case STORE_REQ_TXN:
    case STORE_REQ_COMPACT:
        if (r->cb)
            r->cb(st, e, st ? NULL : &r->res, r->data);
        break;
    case STORE_REQ_LEASE_GRANT:
    case STORE_REQ_LEASE_KEEPALIVE:
    case STORE_REQ_LEASE_REVOKE:
        if (r->lease_cb)
            r->lease_cb(st, e, r->out_lease, st ? 0 : r->out_ttl, r->data);
        break;
    }
    store_req_free(r);
}

/* ---- public API ------------------------------------------------------- */

/* Picks the backend by name; everything backend-specific stays behind the
 * ops table so the etcd backend only has to add a branch here. */
int store_open(uv_loop_t *loop, const store_options_t *opts, store_t **out, err_t *err)
{
    if (!loop || !opts || !out)
        return err_set(err, -EINVAL, "store: loop, options and out are required");
    const char *backend = opts->backend && *opts->backend ? opts->backend : "sqlite";
    const store_backend_ops_t *ops = NULL;
    if (strcmp(backend, "sqlite") == 0)
        ops = &store_sqlite_ops;
    else if (strcmp(backend, "etcd") == 0)
        return err_set(err, -ENOTSUP,
                       "store: the etcd backend is not implemented yet (use backend \"sqlite\")");
    else
        return err_set(err, -EINVAL, "store: unknown backend \"%.32s\" (expected sqlite or etcd)",
                       backend);
    if (opts->keep_revisions < 0)
        return err_set(err, -EINVAL, "store: keep_revisions %" PRId64 " is negative",
                       opts->keep_revisions);
    store_options_t o = *opts;
    o.backend = backend;
    if (o.keep_revisions == 0)
        o.keep_revisions = STORE_DEFAULT_KEEP;

    store_t *s = xcalloc(1, sizeof(*s));
    s->loop = loop;
    s->ops = ops;
    int rc = ops->open(s, loop, &o, &s->be, &s->rev, err);
    if (rc) {
        free(s);
        return rc;
    }
    *out = s;
    return 0;
}

void store_close(store_t *s, void (*cb)(void *data), void *data)
{
    if (!s || s->closing)
        return;
    s->closing = true;
    s->close_cb = cb;
    s->close_data = data;
    s->ops->close(s->be);
}

void store_backend_closed(store_t *s)
{
    void (*cb)(void *) = s->close_cb;
    void *data = s->close_data;
    free(s);
    if (cb)
        cb(data);
}

int64_t store_revision(const store_t *s)
{
    return s ? s->rev : 0;
}

void store_note_revision(store_t *s, int64_t rev)
{
    if (rev > s->rev)
        s->rev = rev;
}

int store_txn(store_t *s, const store_cmp_t *cmps, size_t n_cmps, const store_op_t *success,
              size_t n_success, const store_op_t *failure, size_t n_failure, store_cb cb,
              void *data)
{
    return store_txn_submit(s, cmps, n_cmps, success, n_success, failure, n_failure, false, cb,
                            data);
}

int store_get(store_t *s, const char *key, bool prefix, store_cb cb, void *data)
{
    store_op_t op = {.type = STORE_OP_GET, .key = key, .prefix = prefix};
    return store_txn_submit(s, NULL, 0, &op, 1, NULL, 0, true, cb, data);
}

int store_put(store_t *s, const char *key, const void *value, size_t len, int64_t lease,
              store_cb cb, void *data)
{
    store_op_t op = {
        .type = STORE_OP_PUT, .key = key, .value = value, .value_len = len, .lease = lease};
    return store_txn_submit(s, NULL, 0, &op, 1, NULL, 0, true, cb, data);
}

int store_delete(store_t *s, const char *key, bool prefix, store_cb cb, void *data)
{
    store_op_t op = {.type = STORE_OP_DELETE, .key = key, .prefix = prefix};
    return store_txn_submit(s, NULL, 0, &op, 1, NULL, 0, true, cb, data);
}

static int store_lease_submit(store_t *s, store_req_kind_t kind, int64_t id, int64_t ttl,
                              store_lease_cb cb, void *data)
{
    if (!s)
        return -EINVAL;
    if (s->closing)
        return -ECANCELED;
    store_req_t *r = store_req_new(s, kind, data);
    r->lease_cb = cb;
    r->lease_id = id;
    r->ttl_s = ttl;
    r->out_lease = id;
    if (kind == STORE_REQ_LEASE_GRANT) {
        if (ttl < 1 || ttl > STORE_LEASE_TTL_MAX)
            r->status = err_set(&r->err, -EINVAL,
                                "lease grant: ttl %" PRId64 "s is outside 1..%" PRId64 "s", ttl,
                                (int64_t)STORE_LEASE_TTL_MAX);
    } else if (id <= 0) {
        r->status = err_set(&r->err, -EINVAL, "lease %s: lease id %" PRId64 " is not positive",
                            kind == STORE_REQ_LEASE_REVOKE ? "revoke" : "keepalive", id);
    }
    s->ops->submit(s->be, r);
    return 0;
}

int store_lease_grant(store_t *s, int64_t ttl_s, store_lease_cb cb, void *data)
{
    return store_lease_submit(s, STORE_REQ_LEASE_GRANT, 0, ttl_s, cb, data);
}

int store_lease_keepalive(store_t *s, int64_t lease_id, store_lease_cb cb, void *data)
{
    return store_lease_submit(s, STORE_REQ_LEASE_KEEPALIVE, lease_id, 0, cb, data);
}

int store_lease_revoke(store_t *s, int64_t lease_id, store_lease_cb cb, void *data)
{
    return store_lease_submit(s, STORE_REQ_LEASE_REVOKE, lease_id, 0, cb, data);
}

int store_compact(store_t *s, int64_t rev, store_cb cb, void *data)
{
    if (!s)
        return -EINVAL;
    if (s->closing)
        return -ECANCELED;
    store_req_t *r = store_req_new(s, STORE_REQ_COMPACT, data);
    r->cb = cb;
    r->rev = rev;
    if (rev < 1)
        r->status = err_set(&r->err, -EINVAL, "compact: revision %" PRId64 " is not positive", rev);
    s->ops->submit(s->be, r);
    return 0;
}

/* ---- watches ---------------------------------------------------------- */

/* A bad key or start revision ends the watch through its callback (in
 * order, like the other calls' argument errors) rather than by the return
 * value, which is kept for a missing store or callback and for closing. */
int store_watch(store_t *s, const char *key, bool prefix, int64_t start_rev, store_watch_cb cb,
                void *data, store_watch_t **out)
{
    if (!s || !cb || !out)
        return -EINVAL;
    if (s->closing)
        return -ECANCELED;
    store_watch_t *w = xcalloc(1, sizeof(*w));
    w->s = s;
    w->id = ++s->next_watch_id;
    w->prefix = prefix;
    w->start_rev = start_rev;
    w->cb = cb;
    w->data = data;
    size_t n = 0;
    err_t err = {0};
    if (store_check_key(key, prefix, "watch", &n, &err) == 0 && start_rev < 0)
        err_set(&err, -EINVAL, "watch: start revision %" PRId64 " is negative", start_rev);
    if (err.code) {
        /* The watch callback has no err_t: log the reason, end with -EINVAL. */
        log_warn("store", "%s", err.msg);
        w->init_status = err.code;
        w->key = xstrdup("");
    } else {
        w->key = xmemdup(key, n);
        w->key_len = n;
    }
    *out = w;
    s->ops->watch_start(s->be, w);
    return 0;
}

void store_watch_cancel(store_watch_t *w)
{
    if (!w || w->done)
        return;
    w->done = true;
    w->s->ops->watch_cancel(w->s->be, w);
}

void store_watch_deliver(store_watch_t *w, int status, const store_event_t *events, size_t n,
                         int64_t compact_rev)
{
    if (w->done)
        return;
    if (n)
        store_note_revision(w->s, events[n - 1].kv.mod_rev);
    if (status)
        w->done = true; /* before the call: cancelling from inside it is a no-op */
    w->cb(w, status, events, n, compact_rev, w->data);
}

void store_watch_release(store_watch_t *w)
{
    if (!w->done) {
        w->done = true;
        w->cb(w, -ECANCELED, NULL, 0, 0, w->data);
    }
    free(w->key);
    free(w);
}

/* ---- helpers for backends -------------------------------------------- */

size_t store_key_range_end(const char *key, size_t len, bool prefix, unsigned char *hi)
{
    if (!prefix) {
        memcpy(hi, key, len);
        hi[len] = 0;
        return len + 1;
    }
    for (size_t i = len; i > 0; i--) {
        if ((unsigned char)key[i - 1] != 0xff) {
            memcpy(hi, key, i);
            hi[i - 1]++;
            return i;
        }
    }
    memset(hi, 0xff, STORE_KEY_MAX + 1);
    return STORE_KEY_MAX + 1;
}
