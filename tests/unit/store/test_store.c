/* Unit tests for the store (SQLite backend). Each test opens a fresh
 * database in its own mkdtemp directory and runs a uv loop until the
 * callbacks it waits for have fired. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/alloc.h"
#include "core/log.h"
#include "store/store.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- fixture ---------------------------------------------------------- */

typedef struct fx {
    char dir[64];
    char path[96];
    uv_loop_t loop;
    uv_timer_t watchdog;
    store_t *s;
} fx_t;

static int g_seq; /* order in which callbacks ran */

static void watchdog_cb(uv_timer_t *t)
{
    (void)t;
    fail_msg("timed out waiting for the store");
}

#define FX_WAIT(f, cond)                                                                           \
    do {                                                                                           \
        uv_timer_start(&(f)->watchdog, watchdog_cb, 10000, 0);                                     \
        while (!(cond))                                                                            \
            uv_run(&(f)->loop, UV_RUN_ONCE);                                                       \
        uv_timer_stop(&(f)->watchdog);                                                             \
    } while (0)

static void set_true(void *data)
{
    *(bool *)data = true;
}

static void timer_flag_cb(uv_timer_t *t)
{
    *(bool *)t->data = true;
    /* A timer that fires at the start of a UV_RUN_ONCE pass would otherwise
     * let that pass block in poll until the next timer: the watchdog. */
    uv_stop(t->loop);
}

/* Run the loop for `ms` milliseconds (store callbacks keep running). */
static void fx_sleep(fx_t *f, uint64_t ms)
{
    bool fired = false;
    uv_timer_t t;
    uv_timer_init(&f->loop, &t);
    t.data = &fired;
    uv_timer_start(&t, timer_flag_cb, ms, 0);
    FX_WAIT(f, fired);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&f->loop, UV_RUN_NOWAIT);
}

static int fx_setup(void **state)
{
    fx_t *f = xcalloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/drover-store-test.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/store.db", f->dir);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    /* Active (and so keeping uv_run from returning early) only inside a wait. */
    uv_timer_init(&f->loop, &f->watchdog);
    g_seq = 0;
    *state = f;
    return 0;
}

static void fx_open_keep(fx_t *f, int64_t keep)
{
    store_options_t o = {.backend = "sqlite", .path = f->path, .keep_revisions = keep};
    err_t e = {0};
    int rc = store_open(&f->loop, &o, &f->s, &e);
    if (rc)
        fail_msg("store_open: %s", e.msg);
}

static void fx_open(fx_t *f)
{
    fx_open_keep(f, 0);
}

static void fx_close(fx_t *f)
{
    bool closed = false;
    store_close(f->s, set_true, &closed);
    FX_WAIT(f, closed);
    f->s = NULL;
}

static int fx_teardown(void **state)
{
    fx_t *f = *state;
    if (f->s)
        fx_close(f);
    uv_close((uv_handle_t *)&f->watchdog, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    DIR *d = opendir(f->dir);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d))) {
            if (de->d_name[0] == '.')
                continue;
            char p[384];
            snprintf(p, sizeof(p), "%s/%s", f->dir, de->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

/* ---- capturing results (they are only valid during the callback) ------ */

typedef struct kvc {
    char *key;
    char *value; /* NULL when the store gave NULL */
    size_t value_len;
    int64_t create, mod, version, lease;
} kvc_t;

typedef struct opc {
    int type;
    kvc_t *kvs;
    size_t n_kvs, deleted;
    bool more;
} opc_t;

typedef struct cap {
    bool done;
    int status;
    char msg[ERR_MSG_MAX];
    int order;
    int64_t rev;
    bool succeeded;
    opc_t *ops;
    size_t n_ops;
    int64_t lease, ttl;
} cap_t;

static void kv_copy(kvc_t *d, const store_kv_t *s)
{
    d->key = s->key ? xstrdup(s->key) : NULL;
    d->value = s->value ? xmemdup(s->value, s->value_len) : NULL;
    if (s->value)
        assert_int_equal(s->value[s->value_len], '\0');
    d->value_len = s->value_len;
    d->create = s->create_rev;
    d->mod = s->mod_rev;
    d->version = s->version;
    d->lease = s->lease;
}

static void kv_free(kvc_t *k)
{
    free(k->key);
    free(k->value);
}

static void cap_cb(int status, const err_t *err, const store_result_t *res, void *data)
{
    cap_t *c = data;
    assert_false(c->done);
    c->done = true;
    c->status = status;
    c->order = ++g_seq;
    if (status) {
        assert_non_null(err);
        assert_int_equal(err->code, status);
        assert_true(err->msg[0] != '\0');
        snprintf(c->msg, sizeof(c->msg), "%s", err->msg);
        assert_null(res);
        return;
    }
    assert_null(err);
    assert_non_null(res);
    c->rev = res->rev;
    c->succeeded = res->succeeded;
    c->n_ops = res->n_ops;
    c->ops = xcalloc(res->n_ops + 1, sizeof(*c->ops));
    for (size_t i = 0; i < res->n_ops; i++) {
        const store_op_result_t *o = &res->ops[i];
        c->ops[i].type = o->type;
        c->ops[i].n_kvs = o->n_kvs;
        c->ops[i].deleted = o->deleted;
        c->ops[i].more = o->more;
        c->ops[i].kvs = xcalloc(o->n_kvs + 1, sizeof(kvc_t));
        for (size_t j = 0; j < o->n_kvs; j++)
            kv_copy(&c->ops[i].kvs[j], &o->kvs[j]);
    }
}

static void lease_cb(int status, const err_t *err, int64_t id, int64_t ttl, void *data)
{
    cap_t *c = data;
    assert_false(c->done);
    c->done = true;
    c->status = status;
    c->order = ++g_seq;
    c->lease = id;
    c->ttl = ttl;
    if (status) {
        assert_non_null(err);
        snprintf(c->msg, sizeof(c->msg), "%s", err->msg);
    } else {
        assert_null(err);
    }
}

static void cap_free(cap_t *c)
{
    for (size_t i = 0; i < c->n_ops; i++) {
        for (size_t j = 0; j < c->ops[i].n_kvs; j++)
            kv_free(&c->ops[i].kvs[j]);
        free(c->ops[i].kvs);
    }
    free(c->ops);
    memset(c, 0, sizeof(*c));
}

static cap_t fx_put(fx_t *f, const char *key, const char *val, int64_t lease)
{
    cap_t c = {0};
    assert_int_equal(store_put(f->s, key, val, val ? strlen(val) : 0, lease, cap_cb, &c), 0);
    FX_WAIT(f, c.done);
    return c;
}

/* Put that must succeed; returns the revision. */
static int64_t put_ok(fx_t *f, const char *key, const char *val)
{
    cap_t c = fx_put(f, key, val, 0);
    if (c.status)
        fail_msg("put %s: %s", key, c.msg);
    int64_t rev = c.rev;
    cap_free(&c);
    return rev;
}

static cap_t fx_get(fx_t *f, const char *key, bool prefix)
{
    cap_t c = {0};
    assert_int_equal(store_get(f->s, key, prefix, cap_cb, &c), 0);
    FX_WAIT(f, c.done);
    assert_int_equal(c.status, 0);
    return c;
}

static cap_t fx_del(fx_t *f, const char *key, bool prefix)
{
    cap_t c = {0};
    assert_int_equal(store_delete(f->s, key, prefix, cap_cb, &c), 0);
    FX_WAIT(f, c.done);
    return c;
}

static cap_t fx_txn(fx_t *f, const store_cmp_t *cmps, size_t nc, const store_op_t *ok, size_t nok,
                    const store_op_t *ko, size_t nko)
{
    cap_t c = {0};
    assert_int_equal(store_txn(f->s, cmps, nc, ok, nok, ko, nko, cap_cb, &c), 0);
    FX_WAIT(f, c.done);
    return c;
}

static cap_t fx_lease(fx_t *f, int which, int64_t arg)
{
    cap_t c = {0};
    int rc = which == 0   ? store_lease_grant(f->s, arg, lease_cb, &c)
             : which == 1 ? store_lease_keepalive(f->s, arg, lease_cb, &c)
                          : store_lease_revoke(f->s, arg, lease_cb, &c);
    assert_int_equal(rc, 0);
    FX_WAIT(f, c.done);
    return c;
}

static cap_t fx_compact(fx_t *f, int64_t rev)
{
    cap_t c = {0};
    assert_int_equal(store_compact(f->s, rev, cap_cb, &c), 0);
    FX_WAIT(f, c.done);
    return c;
}

/* ---- watch capture ------------------------------------------------------ */

typedef struct evc {
    int type;
    kvc_t kv, prev;
} evc_t;

typedef struct wcap {
    store_watch_t *w;
    int calls;
    bool ended;
    int status;
    int64_t compact_rev;
    evc_t *evs;
    size_t n, cap;
    size_t cancel_at; /* cancel from inside the callback once n >= this */
    bool cancelled;
} wcap_t;

static void wcap_cb(store_watch_t *w, int status, const store_event_t *ev, size_t n,
                    int64_t compact_rev, void *data)
{
    wcap_t *c = data;
    assert_ptr_equal(w, c->w);
    assert_false(c->ended);
    assert_false(c->cancelled);
    c->calls++;
    if (status) {
        c->ended = true;
        c->status = status;
        c->compact_rev = compact_rev;
        assert_int_equal(n, 0);
        store_watch_cancel(w); /* allowed inside the final callback: a no-op */
        return;
    }
    assert_true(n > 0);
    for (size_t i = 0; i < n; i++) {
        if (c->n == c->cap) {
            c->cap = c->cap ? c->cap * 2 : 16;
            c->evs = xrealloc(c->evs, c->cap * sizeof(*c->evs));
        }
        evc_t *e = &c->evs[c->n];
        e->type = ev[i].type;
        kv_copy(&e->kv, &ev[i].kv);
        kv_copy(&e->prev, &ev[i].prev);
        if (c->n)
            assert_true(e->kv.mod >= c->evs[c->n - 1].kv.mod);
        c->n++;
    }
    if (c->cancel_at && c->n >= c->cancel_at) {
        store_watch_cancel(w);
        c->cancelled = true;
    }
}

static void wcap_free(wcap_t *c)
{
    for (size_t i = 0; i < c->n; i++) {
        kv_free(&c->evs[i].kv);
        kv_free(&c->evs[i].prev);
    }
    free(c->evs);
    memset(c, 0, sizeof(*c));
}

static void fx_watch(fx_t *f, wcap_t *c, const char *key, bool prefix, int64_t start)
{
    assert_int_equal(store_watch(f->s, key, prefix, start, wcap_cb, c, &c->w), 0);
}

/* A full round trip through the store thread: everything queued before it
 * (events included) has been delivered when it returns. */
static void fx_sync(fx_t *f)
{
    cap_t c = fx_get(f, "/sync", false);
    cap_free(&c);
}

/* ---- tests ---------------------------------------------------------------- */

static void test_put_get_revisions(void **state)
{
    fx_t *f = *state;
    fx_open(f);
    assert_int_equal(store_revision(f->s), 0);

    cap_t c = fx_put(f, "/a", "one", 0);
    assert_int_equal(c.status, 0);
    assert_int_equal(c.rev, 1);
    assert_int_equal(c.n_ops, 1);
    assert_int_equal(c.ops[0].type, STORE_OP_PUT);
    assert_int_equal(c.ops[0].n_kvs, 0); /* no previous kv */
    cap_free(&c);

    c = fx_put(f, "/a", "two", 0);
    assert_int_equal(c.rev, 2);
    assert_int_equal(c.ops[0].n_kvs, 1);
    assert_string_equal(c.ops[0].kvs[0].value, "one");
    assert_int_equal(c.ops[0].kvs[0].version, 1);
    assert_int_equal(c.ops[0].kvs[0].mod, 1);
    cap_free(&c);

    assert_int_equal(put_ok(f, "/b", "bee"), 3);

    c = fx_get(f, "/a", false);
    assert_int_equal(c.rev, 3);
    assert_int_equal(c.ops[0].n_kvs, 1);
    kvc_t *kv = &c.ops[0].kvs[0];
    assert_string_equal(kv->key, "/a");
    assert_string_equal(kv->value, "two");
    assert_int_equal(kv->value_len, 3);
    assert_int_equal(kv->create, 1);
    assert_int_equal(kv->mod, 2);
    assert_int_equal(kv->version, 2);
    assert_int_equal(kv->lease, 0);
    cap_free(&c);

    c = fx_del(f, "/a", false);
    assert_int_equal(c.status, 0);
    assert_int_equal(c.rev, 4);
    assert_int_equal(c.ops[0].deleted, 1);
    assert_int_equal(c.ops[0].n_kvs, 1);
    assert_string_equal(c.ops[0].kvs[0].value, "two");
    cap_free(&c);

    c = fx_get(f, "/a", false);
    assert_int_equal(c.ops[0].n_kvs, 0);
    cap_free(&c);

    /* Deleting nothing makes no revision. */
    c = fx_del(f, "/a", false);
    assert_int_equal(c.status, 0);
    assert_int_equal(c.ops[0].deleted, 0);
    assert_int_equal(c.rev, 4);
    cap_free(&c);

    /* Re-created: new create_rev, version restarts at 1. */
    assert_int_equal(put_ok(f, "/a", "three"), 5);
    c = fx_get(f, "/a", false);
    assert_int_equal(c.ops[0].kvs[0].create, 5);
    assert_int_equal(c.ops[0].kvs[0].mod, 5);
    assert_int_equal(c.ops[0].kvs[0].version, 1);
    cap_free(&c);
    assert_int_equal(store_revision(f->s), 5);
}

static void test_binary_and_empty_values(void **state)
{
    fx_t *f = *state;
    fx_open(f);
    const char bin[] = {'a', 0, 'b', 0, (char)0xff};
    cap_t c = {0};
    assert_int_equal(store_put(f->s, "/bin", bin, sizeof(bin), 0, cap_cb, &c), 0);
    FX_WAIT(f, c.done);
    assert_int_equal(c.status, 0);
    cap_free(&c);
    c = fx_put(f, "/empty", NULL, 0);
    assert_int_equal(c.status, 0);
    cap_free(&c);
    put_ok(f, "/pct%_x", "like-chars");

    c = fx_get(f, "/bin", false);
    assert_int_equal(c.ops[0].kvs[0].value_len, sizeof(bin));
    assert_memory_equal(c.ops[0].kvs[0].value, bin, sizeof(bin));
    cap_free(&c);
    c = fx_get(f, "/empty", false);
    assert_int_equal(c.ops[0].n_kvs, 1);
    assert_int_equal(c.ops[0].kvs[0].value_len, 0);
    assert_string_equal(c.ops[0].kvs[0].value, "");
    cap_free(&c);
    /* % and _ are ordinary bytes in a prefix. */
    c = fx_get(f, "/pct%", true);
    assert_int_equal(c.ops[0].n_kvs, 1);
    cap_free(&c);
    c = fx_get(f, "/p_t", true);
    assert_int_equal(c.ops[0].n_kvs, 0);
    cap_free(&c);
}

static void test_range_prefix(void **state)
{
    fx_t *f = *state;
    fx_open(f);
    const char *keys[] = {"/b",  "/a/2",     "/ab",        "/a",      "/a/1",
                          "/a/", "\xff\xff", "\xff\xff/x", "\xff\xfe"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        put_ok(f, keys[i], keys[i]);

    cap_t c = fx_get(f, "/a/", true);
    assert_int_equal(c.ops[0].n_kvs, 3);
    assert_string_equal(c.ops[0].kvs[0].key, "/a/");
    assert_string_equal(c.ops[0].kvs[1].key, "/a/1");
    assert_string_equal(c.ops[0].kvs[2].key, "/a/2");
    assert_false(c.ops[0].more);
    cap_free(&c);

    c = fx_get(f, "/a", true);
    assert_int_equal(c.ops[0].n_kvs, 5);
    assert_string_equal(c.ops[0].kvs[4].key, "/ab");
    cap_free(&c);

    /* exact get does not match by prefix */
    c = fx_get(f, "/a", false);
    assert_int_equal(c.ops[0].n_kvs, 1);
    cap_free(&c);

    /* a prefix without successor (all 0xff) */
    c = fx_get(f, "\xff\xff", true);
    assert_int_equal(c.ops[0].n_kvs, 2);
    assert_string_equal(c.ops[0].kvs[0].key, "\xff\xff");
    assert_string_equal(c.ops[0].kvs[1].key, "\xff\xff/x");
    cap_free(&c);

    /* "" with prefix: everything, in byte order */
    c = fx_get(f, "", true);
    assert_int_equal(c.ops[0].n_kvs, 9);
    assert_string_equal(c.ops[0].kvs[0].key, "/a");
    assert_string_equal(c.ops[0].kvs[8].key, "\xff\xff/x");
    cap_free(&c);

    /* limit + keys_only */
    store_op_t get = {
        .type = STORE_OP_GET, .key = "/a", .prefix = true, .limit = 2, .keys_only = true};
    c = fx_txn(f, NULL, 0, &get, 1, NULL, 0);
    assert_int_equal(c.status, 0);
    assert_true(c.succeeded);
    assert_int_equal(c.ops[0].n_kvs, 2);
    assert_true(c.ops[0].more);
    assert_string_equal(c.ops[0].kvs[0].key, "/a");
    assert_null(c.ops[0].kvs[0].value);
    assert_int_equal(c.ops[0].kvs[0].value_len, 0);
    assert_int_equal(c.ops[0].kvs[0].version, 1);
    cap_free(&c);
    get.limit = 5;
    c = fx_txn(f, NULL, 0, &get, 1, NULL, 0);
    assert_int_equal(c.ops[0].n_kvs, 5);
    assert_false(c.ops[0].more);
    cap_free(&c);
}

static void test_delete_prefix(void **state)
{
    fx_t *f = *state;
    fx_open(f);
    put_ok(f, "/d/1", "1");
    put_ok(f, "/d/2", "2");
    put_ok(f, "/d2", "x");
    put_ok(f, "/d", "y");
    cap_t c = fx_del(f, "/d/", true);
    assert_int_equal(c.status, 0);
    assert_int_equal(c.rev, 5); /* both keys in one revision */
    assert_int_equal(c.ops[0].deleted, 2);
    assert_int_equal(c.ops[0].n_kvs, 2);
    assert_string_equal(c.ops[0].kvs[0].key, "/d/1");
    assert_string_equal(c.ops[0].kvs[1].value, "2");
    cap_free(&c);
    c = fx_get(f, "/d", true);
    assert_int_equal(c.ops[0].n_kvs, 2);
    assert_string_equal(c.ops[0].kvs[0].key, "/d");
    assert_string_equal(c.ops[0].kvs[1].key, "/d2");
    cap_free(&c);
}

/* Run a txn with one compare; success puts /r=ok, failure puts /r=ko. */
static bool cmp_holds(fx_t *f, const char *key, store_cmp_target_t t, store_cmp_op_t op,
                      int64_t num, const char *value)
{
    store_cmp_t cmp = {.key = key,
                       .target = t,
                       .op = op,
                       .num = num,
                       .value = value,
                       .value_len = value ? strlen(value) : 0};
    store_op_t ok = {.type = STORE_OP_GET, .key = key};
    store_op_t ko = {.type = STORE_OP_GET, .key = "/nothing"};
    cap_t c = fx_txn(f, &cmp, 1, &ok, 1, &ko, 1);
    assert_int_equal(c.status, 0);
    assert_int_equal(c.n_ops, 1);
    bool held = c.succeeded;
    cap_free(&c);
    return held;
}

static void test_txn_compares(void **state)
{
    fx_t *f = *state;
    fx_open(f);
    put_ok(f, "/k", "m");    /* rev 1 */
    put_ok(f, "/other", ""); /* rev 2 */
    put_ok(f, "/k", "m");    /* rev 3: create 1, mod 3, version 2 */

    assert_true(cmp_holds(f, "/k", STORE_CMP_VERSION, STORE_CMP_EQ, 2, NULL));
    assert_false(cmp_holds(f, "/k", STORE_CMP_VERSION, STORE_CMP_EQ, 1, NULL));
    assert_true(cmp_holds(f, "/k", STORE_CMP_VERSION, STORE_CMP_GT, 1, NULL));
    assert_true(cmp_holds(f, "/k", STORE_CMP_VERSION, STORE_CMP_NE, 3, NULL));
    assert_true(cmp_holds(f, "/k", STORE_CMP_CREATE, STORE_CMP_EQ, 1, NULL));
    assert_true(cmp_holds(f, "/k", STORE_CMP_CREATE, STORE_CMP_LT, 2, NULL));
    assert_false(cmp_holds(f, "/k", STORE_CMP_CREATE, STORE_CMP_GT, 1, NULL));
    assert_true(cmp_holds(f, "/k", STORE_CMP_MOD, STORE_CMP_EQ, 3, NULL));
    assert_false(cmp_holds(f, "/k", STORE_CMP_MOD, STORE_CMP_LT, 3, NULL));
    assert_true(cmp_holds(f, "/k", STORE_CMP_VALUE, STORE_CMP_EQ, 0, "m"));
    assert_false(cmp_holds(f, "/k", STORE_CMP_VALUE, STORE_CMP_EQ, 0, "mm"));
    assert_true(cmp_holds(f, "/k", STORE_CMP_VALUE, STORE_CMP_LT, 0, "mm"));
    assert_true(cmp_holds(f, "/k", STORE_CMP_VALUE, STORE_CMP_GT, 0, "a"));
    assert_true(cmp_holds(f, "/k", STORE_CMP_VALUE, STORE_CMP_NE, 0, "x"));
    /* empty value compares equal to "" */
    assert_true(cmp_holds(f, "/other", STORE_CMP_VALUE, STORE_CMP_EQ, 0, ""));

    /* A missing key: version/create/mod are 0; a value never compares true. */
    assert_true(cmp_holds(f, "/missing", STORE_CMP_VERSION, STORE_CMP_EQ, 0, NULL));
    assert_true(cmp_holds(f, "/missing", STORE_CMP_CREATE, STORE_CMP_EQ, 0, NULL));
    assert_true(cmp_holds(f, "/missing", STORE_CMP_MOD, STORE_CMP_LT, 1, NULL));
    assert_false(cmp_holds(f, "/missing", STORE_CMP_VALUE, STORE_CMP_EQ, 0, ""));
    assert_false(cmp_holds(f, "/missing", STORE_CMP_VALUE, STORE_CMP_NE, 0, "x"));

    /* create-if-absent, twice: the second loses and runs its failure branch */
    store_cmp_t absent = {.key = "/lock", .target = STORE_CMP_CREATE, .op = STORE_CMP_EQ, .num = 0};
    store_op_t take = {.type = STORE_OP_PUT, .key = "/lock", .value = "me", .value_len = 2};
    store_op_t look = {.type = STORE_OP_GET, .key = "/lock"};
    cap_t c = fx_txn(f, &absent, 1, &take, 1, &look, 1);
    assert_int_equal(c.status, 0);
    assert_true(c.succeeded);
    assert_int_equal(c.rev, 4);
    assert_int_equal(c.ops[0].type, STORE_OP_PUT);
    cap_free(&c);
    c = fx_txn(f, &absent, 1, &take, 1, &look, 1);
    assert_int_equal(c.status, 0);
    assert_false(c.succeeded);
    assert_int_equal(c.rev, 4); /* no write */
    assert_int_equal(c.ops[0].type, STORE_OP_GET);
    assert_string_equal(c.ops[0].kvs[0].value, "me");
    cap_free(&c);

    /* all compares must hold */
    store_cmp_t two[2] = {
        {.key = "/k", .target = STORE_CMP_VERSION, .op = STORE_CMP_EQ, .num = 2},
        {.key = "/k", .target = STORE_CMP_MOD, .op = STORE_CMP_EQ, .num = 99},
    };
    c = fx_txn(f, two, 2, &take, 1, NULL, 0);
    assert_false(c.succeeded);
    assert_int_equal(c.n_ops, 0);
    cap_free(&c);
}

static void test_txn_multi_op(void **state)
{
    fx_t *f = *state;
    fx_open(f);
    put_ok(f, "/z", "z");
    put_ok(f, "/y", "old");
    wcap_t w = {0};
    fx_watch(f, &w, "/", true, 0);
    store_op_t ops[] = {
        {.type = STORE_OP_PUT, .key = "/x", .value = "x", .value_len = 1},
        {.type = STORE_OP_PUT, .key = "/y", .value = "new", .value_len = 3},
        {.type = STORE_OP_DELETE, .key = "/z"},
        {.type = STORE_OP_GET, .key = "/y"},
    };
    cap_t c = fx_txn(f, NULL, 0, ops, 4, NULL, 0);
    assert_int_equal(c.status, 0);
    assert_true(c.succeeded);
    assert_int_equal(c.rev, 3);
    assert_int_equal(c.n_ops, 4);
    assert_int_equal(c.ops[1].n_kvs, 1); /* prev of /y */
    assert_string_equal(c.ops[1].kvs[0].value, "old");
    assert_int_equal(c.ops[2].deleted, 1);
    /* a get after a put in the same txn sees the put */
    assert_string_equal(c.ops[3].kvs[0].value, "new");
    assert_int_equal(c.ops[3].kvs[0].mod, 3);
    cap_free(&c);
    FX_WAIT(f, w.n == 3);
    assert_int_equal(w.calls, 1); /* one revision, one callback */
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(w.evs[i].kv.mod, 3);
    assert_string_equal(w.evs[0].kv.key, "/x");
    assert_int_equal(w.evs[2].type, STORE_EVENT_DELETE);
    assert_string_equal(w.evs[2].prev.value, "z");
    c = fx_get(f, "/", true);
    assert_int_equal(c.ops[0].n_kvs, 2);
    cap_free(&c);
    store_watch_cancel(w.w);
    wcap_free(&w);
}

static void test_txn_invalid(void **state)
{
    fx_t *f = *state;
    fx_open(f);
    store_op_t dup[] = {
        {.type = STORE_OP_PUT, .key = "/a", .value = "1", .value_len = 1},
        {.type = STORE_OP_PUT, .key = "/a", .value = "2", .value_len = 1},
    };
    cap_t c = fx_txn(f, NULL, 0, dup, 2, NULL, 0);
    assert_int_equal(c.status, -EINVAL);
    assert_non_null(strstr(c.msg, "twice"));
    cap_free(&c);
    store_op_t overlap[] = {
        {.type = STORE_OP_DELETE, .key = "/a/", .prefix = true},
        {.type = STORE_OP_PUT, .key = "/a/b", .value = "1", .value_len = 1},
    };
    c = fx_txn(f, NULL, 0, overlap, 2, NULL, 0);
    assert_int_equal(c.status, -EINVAL);
    cap_free(&c);
    store_op_t *many = xcalloc(STORE_TXN_OPS_MAX + 1, sizeof(*many));
    for (size_t i = 0; i <= STORE_TXN_OPS_MAX; i++)
        many[i] = (store_op_t){.type = STORE_OP_GET, .key = "/a"};
    c = fx_txn(f, NULL, 0, many, STORE_TXN_OPS_MAX + 1, NULL, 0);
    assert_int_equal(c.status, -E2BIG);
    cap_free(&c);
    c = fx_txn(f, NULL, 0, many, STORE_TXN_OPS_MAX, NULL, 0);
    assert_int_equal(c.status, 0);
    cap_free(&c);
    free(many);
    store_op_t bad = {.type = (store_op_type_t)7, .key = "/a"};
    c = fx_txn(f, NULL, 0, &bad, 1, NULL, 0);
    assert_int_equal(c.status, -EINVAL);
    cap_free(&c);
    store_op_t put_prefix = {.type = STORE_OP_PUT, .key = "/a", .prefix = true};
    c = fx_txn(f, NULL, 0, &put_prefix, 1, NULL, 0);
    assert_int_equal(c.status, -EINVAL);
    cap_free(&c);
    assert_int_equal(store_revision(f->s), 0);
}

static void test_limits(void **state)
{
    fx_t *f = *state;
    fx_open(f);
    cap_t c = fx_put(f, "", "v", 0);
    assert_int_equal(c.status, -EINVAL);
    assert_non_null(strstr(c.msg, "empty"));
    cap_free(&c);

    char *key = xmalloc(STORE_KEY_MAX + 2);
    memset(key, 'k', STORE_KEY_MAX + 1);
    key[0] = '/';
    key[STORE_KEY_MAX + 1] = '\0';
    c = fx_put(f, key, "v", 0);
    assert_int_equal(c.status, -EINVAL);
    assert_non_null(strstr(c.msg, "longer"));
    cap_free(&c);
    key[STORE_KEY_MAX] = '\0';
    c = fx_put(f, key, "v", 0);
    assert_int_equal(c.status, 0);
    cap_free(&c);
    c = fx_get(f, key, false);
    assert_int_equal(c.ops[0].n_kvs, 1);
    assert_int_equal(strlen(c.ops[0].kvs[0].key), STORE_KEY_MAX);
    cap_free(&c);
    free(key);

    char *big = xcalloc(1, STORE_VALUE_MAX + 1);
    memset(big, 'v', STORE_VALUE_MAX + 1);
    c = (cap_t){0};
    assert_int_equal(store_put(f->s, "/big", big, STORE_VALUE_MAX + 1, 0, cap_cb, &c), 0);
    FX_WAIT(f, c.done);
    assert_int_equal(c.status, -E2BIG);
    cap_free(&c);
    c = (cap_t){0};
    assert_int_equal(store_put(f->s, "/big", big, STORE_VALUE_MAX, 0, cap_cb, &c), 0);
    FX_WAIT(f, c.done);
    assert_int_equal(c.status, 0);
    cap_free(&c);
    c = fx_get(f, "/big", false);
    assert_int_equal(c.ops[0].kvs[0].value_len, STORE_VALUE_MAX);
    assert_memory_equal(c.ops[0].kvs[0].value, big, STORE_VALUE_MAX);
    cap_free(&c);
    free(big);

    c = fx_put(f, "/leased", "v", 424242);
    assert_int_equal(c.status, -ENOENT);
    assert_non_null(strstr(c.msg, "lease"));
    cap_free(&c);
    c = fx_put(f, "/neg", "v", -1);
    assert_int_equal(c.status, -EINVAL);
    cap_free(&c);

    c = fx_lease(f, 0, 0);
    assert_int_equal(c.status, -EINVAL);
    cap_free(&c);
    c = fx_lease(f, 1, 999);
    assert_int_equal(c.status, -ENOENT);
    cap_free(&c);
    c = fx_compact(f, 0);
    assert_int_equal(c.status, -EINVAL);
    cap_free(&c);

    /* Failed calls still complete in call order with the good ones. */
    cap_t a = {0}, b = {0}, d = {0};
    assert_int_equal(store_put(f->s, "/o1", "1", 1, 0, cap_cb, &a), 0);
    assert_int_equal(store_put(f->s, "", "2", 1, 0, cap_cb, &b), 0);
    assert_int_equal(store_put(f->s, "/o3", "3", 1, 0, cap_cb, &d), 0);
    FX_WAIT(f, d.done);
    assert_true(a.done && b.done);
    assert_true(a.order < b.order && b.order < d.order);
    assert_int_equal(b.status, -EINVAL);
    cap_free(&a);
    cap_free(&b);
    cap_free(&d);

    /* NULL store: synchronous error, no callback */
    assert_int_equal(store_put(NULL, "/x", "1", 1, 0, cap_cb, &a), -EINVAL);
    assert_false(a.done);
}

static void test_open_errors(void **state)
{
    fx_t *f = *state;
    store_t *s = NULL;
    err_t e = {0};
    store_options_t o = {.backend = "etcd", .endpoints = "http://127.0.0.1:2379"};
    assert_int_equal(store_open(&f->loop, &o, &s, &e), -ENOTSUP);
    assert_non_null(strstr(e.msg, "etcd"));
    o = (store_options_t){.backend = "redis", .path = f->path};
    assert_int_equal(store_open(&f->loop, &o, &s, &e), -EINVAL);
    o = (store_options_t){.path = NULL};
    assert_int_equal(store_open(&f->loop, &o, &s, &e), -EINVAL);
    o = (store_options_t){.path = "/nonexistent-dir-for-drover/x.db"};
    assert_true(store_open(&f->loop, &o, &s, &e) < 0);
    assert_non_null(strstr(e.msg, "/nonexistent-dir-for-drover/x.db"));
    o = (store_options_t){.path = f->path, .keep_revisions = -1};
    assert_int_equal(store_open(&f->loop, &o, &s, &e), -EINVAL);
    assert_null(s);

    /* A second open of the same file fails: the first holds it. */
    fx_open(f);
    o = (store_options_t){.path = f->path};
    assert_int_equal(store_open(&f->loop, &o, &s, &e), -EBUSY);
    assert_non_null(strstr(e.msg, "in use"));
    assert_null(s);

    /* A foreign file is refused. */
    char junk[128];
    snprintf(junk, sizeof(junk), "%s/junk.db", f->dir);
    FILE *fp = fopen(junk, "w");
    assert_non_null(fp);
    fputs("this is not a database, just some text that is long enough to matter\n", fp);
    fclose(fp);
    o = (store_options_t){.path = junk};
    assert_true(store_open(&f->loop, &o, &s, &e) < 0);
    assert_null(s);
}

static void test_watch_replay_then_live(void **state)
{
    fx_t *f = *state;
    fx_open(f);
    put_ok(f, "/w/a", "a1"); /* 1 */
    put_ok(f, "/w/b", "b1"); /* 2 */
    put_ok(f, "/w/a", "a2"); /* 3 */
    put_ok(f, "/x", "x");    /* 4 */

    wcap_t w = {0};
    fx_watch(f, &w, "/w/", true, 2);
    /* Writes issued right behind the watch are live events after the replay. */
    cap_t c1 = {0}, c2 = {0};
    assert_int_equal(store_put(f->s, "/w/c", "c1", 2, 0, cap_cb, &c1), 0);
    assert_int_equal(store_delete(f->s, "/w/a", false, cap_cb, &c2), 0);
    FX_WAIT(f, c2.done && w.n >= 4);
    cap_free(&c1);
    cap_free(&c2);
    put_ok(f, "/w/b", "b2"); /* 7 */
    FX_WAIT(f, w.n >= 5);
    fx_sync(f);
    assert_int_equal(w.n, 5);
    int64_t want[] = {2, 3, 5, 6, 7};
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(w.evs[i].kv.mod, want[i]);
    assert_string_equal(w.evs[0].kv.key, "/w/b");
    assert_int_equal(w.evs[0].prev.mod, 0); /* created: no previous */
    assert_string_equal(w.evs[1].kv.value, "a2");
    assert_int_equal(w.evs[1].kv.version, 2);
    assert_int_equal(w.evs[1].kv.create, 1);
    assert_string_equal(w.evs[1].prev.value, "a1");
    assert_int_equal(w.evs[1].prev.mod, 1);
    assert_int_equal(w.evs[3].type, STORE_EVENT_DELETE);
    assert_string_equal(w.evs[3].kv.key, "/w/a");
    assert_int_equal(w.evs[3].kv.value_len, 0);
    assert_int_equal(w.evs[3].prev.version, 2);
    assert_string_equal(w.evs[3].prev.value, "a2");
    assert_string_equal(w.evs[4].prev.value, "b1");
    assert_false(w.ended);
    assert_int_equal(store_revision(f->s), 7);

    /* a watch from the very first revision replays all of it */
    wcap_t all = {0};
    fx_watch(f, &all, "", true, 1);
    fx_sync(f);
    assert_int_equal(all.n, 7);
    for (size_t i = 0; i < 7; i++)
        assert_int_equal(all.evs[i].kv.mod, (int64_t)i + 1);
    /* a watch from a future revision waits for it */
    wcap_t fut = {0};
    fx_watch(f, &fut, "/w/", true, 9);
    put_ok(f, "/w/a", "8");
    put_ok(f, "/w/a", "9");
    fx_sync(f);
    assert_int_equal(fut.n, 1);
    assert_int_equal(fut.evs[0].kv.mod, 9);
    store_watch_cancel(w.w);
    store_watch_cancel(all.w);
    store_watch_cancel(fut.w);
    wcap_free(&w);
    wcap_free(&all);
    wcap_free(&fut);
}

static void test_watch_from_zero_and_filter(void **state)
{
    fx_t *f = *state;
    fx_open(f);
    put_ok(f, "/a/old", "1");
    wcap_t pre = {0}, exact = {0};
    fx_watch(f, &pre, "/a/", true, 0);
    fx_watch(f, &exact, "/a", false, 0);
    fx_sync(f);
    assert_int_equal(pre.calls, 0);
    put_ok(f, "/ab", "no");
    put_ok(f, "/a/x", "yes");
    put_ok(f, "/b", "no");
    put_ok(f, "/a", "exact");
    cap_t c = fx_del(f, "/a/", true);
    cap_free(&c);
    fx_sync(f);
    assert_int_equal(pre.n, 3);
    assert_string_equal(pre.evs[0].kv.key, "/a/x");
    assert_int_equal(pre.evs[0].kv.mod, 3);
    assert_int_equal(pre.evs[1].type, STORE_EVENT_DELETE);
    assert_int_equal(pre.evs[2].type, STORE_EVENT_DELETE);
    assert_int_equal(pre.evs[1].kv.mod, 6);
    assert_int_equal(pre.evs[2].kv.mod, 6);
    assert_int_equal(exact.n, 1);
    assert_string_equal(exact.evs[0].kv.value, "exact");
    store_watch_cancel(pre.w);
    store_watch_cancel(exact.w);
    wcap_free(&pre);
    wcap_free(&exact);
}

static void test_watch_cancel(void **state)
{
    fx_t *f = *state;
    fx_open(f);
    wcap_t w = {0}, inner = {0};
    fx_watch(f, &w, "/c/", true, 0);
    inner.cancel_at = 2;
    fx_watch(f, &inner, "/c/", true, 0);
    put_ok(f, "/c/1", "1");
    FX_WAIT(f, w.n == 1);
    /* Events already queued for a cancelled watch must not be delivered:
     * queue a put, cancel before its events can arrive. */
    cap_t c = {0};
    assert_int_equal(store_put(f->s, "/c/2", "2", 1, 0, cap_cb, &c), 0);
    store_watch_cancel(w.w);
    store_watch_cancel(w.w); /* twice is harmless */
    FX_WAIT(f, c.done);
    cap_free(&c);
    put_ok(f, "/c/3", "3");
    put_ok(f, "/c/4", "4");
    fx_sync(f);
    assert_int_equal(w.n, 1);
    assert_int_equal(w.calls, 1);
    assert_false(w.ended);
    /* cancelled from inside its own callback after 2 events */
    assert_int_equal(inner.n, 2);
    assert_true(inner.cancelled);
    wcap_free(&w);
    wcap_free(&inner);
}

static void test_watch_invalid(void **state)
{
    fx_t *f = *state;
    fx_open(f);
    wcap_t w = {0}, neg = {0};
    fx_watch(f, &w, "", false, 0);
    fx_watch(f, &neg, "/k", false, -3);
    FX_WAIT(f, w.ended && neg.ended);
    assert_int_equal(w.status, -EINVAL);
    assert_int_equal(neg.status, -EINVAL);
    store_watch_t *x = NULL;
    assert_int_equal(store_watch(f->s, "/k", false, 0, NULL, NULL, &x), -EINVAL);
    wcap_free(&w);
    wcap_free(&neg);
}

static void test_watch_compacted(void **state)
{
    fx_t *f = *state;
    fx_open(f);
    for (int i = 0; i < 5; i++)
        put_ok(f, "/k", "v");
    cap_t c = fx_compact(f, 4);
    assert_int_equal(c.status, 0);
    assert_int_equal(c.rev, 5);
    cap_free(&c);
    c = fx_compact(f, 3); /* older than the compaction point: a no-op */
    assert_int_equal(c.status, 0);
    cap_free(&c);
    c = fx_compact(f, 6); /* the future */
    assert_int_equal(c.status, -EINVAL);
    cap_free(&c);

    wcap_t old = {0}, ok = {0};
    fx_watch(f, &old, "/k", false, 3);
    fx_watch(f, &ok, "/k", false, 4);
    FX_WAIT(f, old.ended && ok.n == 2);
    assert_int_equal(old.status, -ESTALE);
    assert_int_equal(old.compact_rev, 4);
    assert_int_equal(old.n, 0);
    assert_int_equal(ok.evs[0].kv.mod, 4);
    assert_int_equal(ok.evs[1].kv.mod, 5);
    assert_int_equal(ok.evs[1].prev.mod, 4);
    store_watch_cancel(ok.w);
    wcap_free(&old);
    wcap_free(&ok);
}

static void test_auto_compaction(void **state)
{
    fx_t *f = *state;
    fx_open_keep(f, 10);
    for (int i = 0; i < 60; i++)
        put_ok(f, "/auto", "v");
    wcap_t old = {0}, recent = {0};
    fx_watch(f, &old, "/auto", false, 1);
    fx_watch(f, &recent, "/auto", false, 50); /* within the 10 kept */
    FX_WAIT(f, old.ended && recent.n == 11);
    assert_int_equal(old.status, -ESTALE);
    assert_true(old.compact_rev >= 40 && old.compact_rev <= 50);
    assert_int_equal(recent.evs[0].kv.mod, 50);
    assert_int_equal(recent.evs[10].kv.mod, 60);
    store_watch_cancel(recent.w);
    wcap_free(&old);
    wcap_free(&recent);
}

static void test_lease_expiry(void **state)
{
    fx_t *f = *state;
    fx_open(f);
    cap_t g = fx_lease(f, 0, 1);
    assert_int_equal(g.status, 0);
    assert_true(g.lease > 0);
    assert_int_equal(g.ttl, 1);
    int64_t id = g.lease;
    uint64_t t0 = uv_hrtime();
    cap_t c = fx_put(f, "/l/a", "a", id);
    assert_int_equal(c.status, 0);
    cap_free(&c);
    c = fx_put(f, "/l/b", "b", id);
    cap_free(&c);
    put_ok(f, "/l/keep", "k");
    c = fx_get(f, "/l/a", false);
    assert_int_equal(c.ops[0].kvs[0].lease, id);
    cap_free(&c);

    wcap_t w = {0};
    fx_watch(f, &w, "/l/", true, 0);
    FX_WAIT(f, w.n == 2);
    uint64_t elapsed_ms = (uv_hrtime() - t0) / 1000000;
    assert_true(elapsed_ms >= 900);
    assert_int_equal(w.calls, 1);
    assert_int_equal(w.evs[0].type, STORE_EVENT_DELETE);
    assert_int_equal(w.evs[1].type, STORE_EVENT_DELETE);
    assert_int_equal(w.evs[0].kv.mod, 4); /* both keys in one revision */
    assert_int_equal(w.evs[1].kv.mod, 4);
    assert_string_equal(w.evs[0].prev.key, "/l/a");
    assert_int_equal(w.evs[0].prev.lease, id);
    c = fx_get(f, "/l/", true);
    assert_int_equal(c.ops[0].n_kvs, 1);
    assert_string_equal(c.ops[0].kvs[0].key, "/l/keep");
    cap_free(&c);
    cap_t k = fx_lease(f, 1, id);
    assert_int_equal(k.status, -ENOENT);
    c = fx_put(f, "/l/late", "x", id);
    assert_int_equal(c.status, -ENOENT);
    cap_free(&c);
    store_watch_cancel(w.w);
    wcap_free(&w);
}

typedef struct ka {
    fx_t *f;
    int64_t id;
    int left;
    int ok;
} ka_t;

static void ka_done(int status, const err_t *err, int64_t id, int64_t ttl, void *data)
{
    ka_t *k = data;
    (void)err;
    (void)id;
    if (status == 0 && ttl == 1)
        k->ok++;
}

static void ka_tick(uv_timer_t *t)
{
    ka_t *k = t->data;
    assert_int_equal(store_lease_keepalive(k->f->s, k->id, ka_done, k), 0);
    if (--k->left == 0)
        uv_timer_stop(t);
}

static void test_lease_keepalive(void **state)
{
    fx_t *f = *state;
    fx_open(f);
    cap_t g = fx_lease(f, 0, 1);
    int64_t id = g.lease;
    cap_t c = fx_put(f, "/ka", "v", id);
    assert_int_equal(c.status, 0);
    cap_free(&c);
    wcap_t w = {0};
    fx_watch(f, &w, "/ka", false, 0);
    ka_t k = {.f = f, .id = id, .left = 5};
    uv_timer_t t;
    uv_timer_init(&f->loop, &t);
    t.data = &k;
    uv_timer_start(&t, ka_tick, 300, 300);
    fx_sleep(f, 1600); /* > TTL: alive only thanks to the keepalives */
    assert_int_equal(k.ok, 5);
    assert_int_equal(w.n, 0);
    c = fx_get(f, "/ka", false);
    assert_int_equal(c.ops[0].n_kvs, 1);
    cap_free(&c);
    uv_close((uv_handle_t *)&t, NULL);
    FX_WAIT(f, w.n == 1); /* then it expires */
    assert_int_equal(w.evs[0].type, STORE_EVENT_DELETE);
    store_watch_cancel(w.w);
    wcap_free(&w);
}

static void test_lease_revoke(void **state)
{
    fx_t *f = *state;
    fx_open(f);
    cap_t g = fx_lease(f, 0, 60);
    int64_t id = g.lease;
    cap_t g2 = fx_lease(f, 0, 60);
    assert_true(g2.lease != id);
    put_ok(f, "/r/other", "o");
    for (int i = 0; i < 3; i++) {
        char key[16];
        snprintf(key, sizeof(key), "/r/%d", i);
        cap_t c = fx_put(f, key, "v", id);
        assert_int_equal(c.status, 0);
        cap_free(&c);
    }
    /* re-putting without a lease detaches the key */
    put_ok(f, "/r/2", "detached");
    wcap_t w = {0};
    fx_watch(f, &w, "/r/", true, 0);
    cap_t r = fx_lease(f, 2, id);
    assert_int_equal(r.status, 0);
    assert_int_equal(r.lease, id);
    FX_WAIT(f, w.n == 2);
    assert_int_equal(w.evs[0].kv.mod, w.evs[1].kv.mod);
    assert_int_equal(store_revision(f->s), w.evs[0].kv.mod);
    cap_t c = fx_get(f, "/r/", true);
    assert_int_equal(c.ops[0].n_kvs, 2);
    assert_string_equal(c.ops[0].kvs[0].key, "/r/2");
    assert_string_equal(c.ops[0].kvs[1].key, "/r/other");
    cap_free(&c);
    r = fx_lease(f, 2, id);
    assert_int_equal(r.status, -ENOENT);
    /* revoking a lease with no keys makes no revision */
    int64_t rev = store_revision(f->s);
    r = fx_lease(f, 2, g2.lease);
    assert_int_equal(r.status, 0);
    fx_sync(f);
    assert_int_equal(store_revision(f->s), rev);
    store_watch_cancel(w.w);
    wcap_free(&w);
}

static void test_reopen(void **state)
{
    fx_t *f = *state;
    fx_open(f);
    put_ok(f, "/p/a", "1");
    put_ok(f, "/p/b", "2");
    cap_t c = fx_del(f, "/p/a", false);
    cap_free(&c);
    cap_t g = fx_lease(f, 0, 1);
    int64_t id = g.lease;
    c = fx_put(f, "/p/leased", "l", id);
    assert_int_equal(c.status, 0);
    cap_free(&c);
    cap_t cmp = fx_compact(f, 2);
    assert_int_equal(cmp.status, 0);
    cap_free(&cmp);
    assert_int_equal(store_revision(f->s), 4);
    fx_close(f);
    fx_sleep(f, 1200); /* longer than the lease's TTL, with the store down */

    fx_open(f);
    assert_int_equal(store_revision(f->s), 4);
    c = fx_get(f, "/p/", true);
    assert_int_equal(c.ops[0].n_kvs, 2); /* the lease got a fresh TTL */
    assert_string_equal(c.ops[0].kvs[0].key, "/p/b");
    assert_int_equal(c.ops[0].kvs[0].create, 2);
    assert_int_equal(c.ops[0].kvs[1].lease, id);
    cap_free(&c);
    /* history survives, compaction point too */
    wcap_t w = {0}, stale = {0};
    fx_watch(f, &w, "/p/", true, 2);
    fx_watch(f, &stale, "/p/", true, 1);
    FX_WAIT(f, w.n >= 3 && stale.ended);
    assert_int_equal(stale.status, -ESTALE);
    assert_int_equal(w.evs[0].kv.mod, 2);
    assert_int_equal(w.evs[1].type, STORE_EVENT_DELETE);
    /* new leases do not reuse ids */
    cap_t g2 = fx_lease(f, 0, 5);
    assert_true(g2.lease > id);
    /* and the old lease still expires */
    FX_WAIT(f, w.n == 4);
    assert_int_equal(w.evs[3].type, STORE_EVENT_DELETE);
    assert_string_equal(w.evs[3].kv.key, "/p/leased");
    assert_int_equal(w.evs[3].kv.mod, 5);
    store_watch_cancel(w.w);
    wcap_free(&w);
    wcap_free(&stale);
}

#define N_CONC 1000

static void test_concurrent_puts(void **state)
{
    fx_t *f = *state;
    fx_open(f);
    cap_t *c = xcalloc(N_CONC, sizeof(*c));
    for (int i = 0; i < N_CONC; i++) {
        char key[32], val[32];
        snprintf(key, sizeof(key), "/conc/%04d", i);
        snprintf(val, sizeof(val), "v%d", i);
        assert_int_equal(store_put(f->s, key, val, strlen(val), 0, cap_cb, &c[i]), 0);
    }
    FX_WAIT(f, c[N_CONC - 1].done);
    for (int i = 0; i < N_CONC; i++) {
        assert_true(c[i].done);
        assert_int_equal(c[i].status, 0);
        if (i) {
            assert_true(c[i].rev > c[i - 1].rev);     /* distinct, increasing */
            assert_true(c[i].order > c[i - 1].order); /* callbacks in call order */
        }
        cap_free(&c[i]);
    }
    free(c);
    assert_int_equal(store_revision(f->s), N_CONC);
    cap_t g = fx_get(f, "/conc/", true);
    assert_int_equal(g.ops[0].n_kvs, N_CONC);
    assert_string_equal(g.ops[0].kvs[999].value, "v999");
    cap_free(&g);
}

/* Requests issued together are committed as one group; one failing inside
 * it (after it already wrote a key) must leave no trace and not fail the
 * others, and must not use up a revision. */
static void test_group_partial_failure(void **state)
{
    fx_t *f = *state;
    fx_open(f);
    wcap_t w = {0};
    fx_watch(f, &w, "/g/", true, 0);
    fx_sync(f);
    cap_t c[6] = {{0}};
    store_op_t bad[] = {
        {.type = STORE_OP_PUT, .key = "/g/b", .value = "b", .value_len = 1},
        {.type = STORE_OP_DELETE, .key = "/g/a"},
        {.type = STORE_OP_PUT, .key = "/g/c", .value = "c", .value_len = 1, .lease = 777},
    };
    for (int round = 0; round < 2; round++) {
        cap_t *r = &c[round * 3];
        char ka[16], kd[16];
        snprintf(ka, sizeof(ka), "/g/a%d", round);
        snprintf(kd, sizeof(kd), "/g/d%d", round);
        assert_int_equal(store_put(f->s, ka, "a", 1, 0, cap_cb, &r[0]), 0);
        assert_int_equal(store_txn(f->s, NULL, 0, bad, 3, NULL, 0, cap_cb, &r[1]), 0);
        assert_int_equal(store_put(f->s, kd, "d", 1, 0, cap_cb, &r[2]), 0);
    }
    FX_WAIT(f, c[5].done);
    for (int round = 0; round < 2; round++) {
        cap_t *r = &c[round * 3];
        assert_int_equal(r[0].status, 0);
        assert_int_equal(r[1].status, -ENOENT);
        assert_int_equal(r[2].status, 0);
        assert_int_equal(r[2].rev, r[0].rev + 1);
    }
    for (int i = 0; i < 6; i++)
        cap_free(&c[i]);
    cap_t g = fx_get(f, "/g/", true);
    assert_int_equal(g.ops[0].n_kvs, 4);
    assert_string_equal(g.ops[0].kvs[0].key, "/g/a0");
    assert_string_equal(g.ops[0].kvs[3].key, "/g/d1");
    cap_free(&g);
    fx_sync(f);
    assert_int_equal(w.n, 4);
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(w.evs[i].kv.mod, (int64_t)i + 1);
        assert_int_equal(w.evs[i].type, STORE_EVENT_PUT);
    }
    assert_int_equal(store_revision(f->s), 4);
    store_watch_cancel(w.w);
    wcap_free(&w);
}

/* The store keeps the loop alive only while something is outstanding. */
static void test_loop_liveness(void **state)
{
    fx_t *f = *state;
    fx_open(f);
    uv_run(&f->loop, UV_RUN_DEFAULT); /* idle store: returns at once */
    cap_t c = {0};
    assert_int_equal(store_put(f->s, "/live", "1", 1, 0, cap_cb, &c), 0);
    assert_true(uv_loop_alive(&f->loop));
    uv_run(&f->loop, UV_RUN_DEFAULT); /* returns once the put is done */
    assert_true(c.done);
    assert_int_equal(c.status, 0);
    cap_free(&c);
    assert_false(uv_loop_alive(&f->loop));
    wcap_t w = {0};
    fx_watch(f, &w, "/live", false, 1);
    FX_WAIT(f, w.n == 1);
    assert_true(uv_loop_alive(&f->loop)); /* an active watch keeps it alive */
    store_watch_cancel(w.w);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_false(uv_loop_alive(&f->loop));
    wcap_free(&w);
    bool closed = false;
    store_close(f->s, set_true, &closed);
    f->s = NULL;
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_true(closed);
}

typedef struct closing {
    cap_t *caps;
    int n;
    bool closed;
    int closed_order;
} closing_t;

static void closing_cb(void *data)
{
    closing_t *cl = data;
    cl->closed = true;
    cl->closed_order = ++g_seq;
}

static void test_close_with_pending(void **state)
{
    fx_t *f = *state;
    fx_open(f);
    closing_t cl = {.n = 300};
    cl.caps = xcalloc((size_t)cl.n, sizeof(cap_t));
    wcap_t w = {0};
    fx_watch(f, &w, "/", true, 0);
    for (int i = 0; i < cl.n; i++) {
        char key[32];
        snprintf(key, sizeof(key), "/cl/%04d", i);
        assert_int_equal(store_put(f->s, key, "v", 1, 0, cap_cb, &cl.caps[i]), 0);
    }
    store_close(f->s, closing_cb, &cl);
    assert_int_equal(store_put(f->s, "/late", "v", 1, 0, cap_cb, &cl.caps[0]), -ECANCELED);
    store_watch_t *x = NULL;
    assert_int_equal(store_watch(f->s, "/late", false, 0, wcap_cb, &w, &x), -ECANCELED);
    FX_WAIT(f, cl.closed);
    f->s = NULL;
    int acked = 0;
    bool cancelled_seen = false;
    for (int i = 0; i < cl.n; i++) {
        assert_true(cl.caps[i].done);
        assert_true(cl.caps[i].order < cl.closed_order);
        if (cl.caps[i].status == 0) {
            assert_false(cancelled_seen); /* acked ones are a prefix */
            acked++;
        } else {
            assert_int_equal(cl.caps[i].status, -ECANCELED);
            cancelled_seen = true;
        }
        cap_free(&cl.caps[i]);
    }
    free(cl.caps);
    assert_true(w.ended);
    assert_int_equal(w.status, -ECANCELED);
    wcap_free(&w);

    fx_open(f);
    cap_t g = fx_get(f, "/cl/", true);
    assert_int_equal(g.ops[0].n_kvs, (size_t)acked);
    cap_free(&g);
}

static void close_in_cb(int status, const err_t *err, const store_result_t *res, void *data)
{
    (void)err;
    (void)res;
    fx_t *f = data;
    assert_int_equal(status, 0);
    store_close(f->s, NULL, NULL);
    store_close(f->s, NULL, NULL); /* second close is ignored */
    f->s = NULL;
}

static void test_close_from_callback(void **state)
{
    fx_t *f = *state;
    fx_open(f);
    store_t *s = f->s;
    cap_t after = {0};
    assert_int_equal(store_put(s, "/x", "1", 1, 0, close_in_cb, f), 0);
    assert_int_equal(store_put(s, "/y", "1", 1, 0, cap_cb, &after), 0);
    FX_WAIT(f, after.done);
    /* the second put was queued before close: it ran or was cancelled */
    assert_true(after.status == 0 || after.status == -ECANCELED);
    cap_free(&after);
    uv_run(&f->loop, UV_RUN_DEFAULT); /* until the store is freed */
}

/* ---- durability: kill -9 in the middle of a write storm ---------------- */

static struct {
    store_t *s;
    int fd;
    uint32_t next;
} child;

static void child_put(void);

static void child_ack(int status, const err_t *err, const store_result_t *res, void *data)
{
    (void)err;
    (void)res;
    if (status)
        _exit(3);
    uint32_t idx = (uint32_t)(uintptr_t)data;
    if (write(child.fd, &idx, sizeof(idx)) != sizeof(idx))
        _exit(4);
    child_put();
}

static void child_put(void)
{
    char key[32], val[160];
    uint32_t i = child.next++;
    snprintf(key, sizeof(key), "/dur/%08u", i);
    int n = snprintf(val, sizeof(val), "value-%u-%0120u", i, i);
    if (store_put(child.s, key, val, (size_t)n, 0, child_ack, (void *)(uintptr_t)i))
        _exit(5);
}

static void child_main(const char *path, int fd)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    store_options_t o = {.path = path};
    if (store_open(&loop, &o, &child.s, NULL))
        _exit(2);
    child.fd = fd;
    for (int i = 0; i < 64; i++)
        child_put();
    uv_run(&loop, UV_RUN_DEFAULT);
    _exit(6);
}

static void test_durability_kill9(void **state)
{
    fx_t *f = *state;
    int p[2];
    assert_int_equal(pipe(p), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        alarm(30);
        log_setup(LOG_ERROR, LOG_TEXT);
        child_main(f->path, p[1]);
    }
    close(p[1]);
    uint32_t idx;
    size_t n_acked = 0, cap = 4096;
    uint32_t *acked = xmalloc(cap * sizeof(*acked));
    /* let it write for a while, then kill it mid-storm */
    while (n_acked < 1500 && read(p[0], &idx, sizeof(idx)) == sizeof(idx)) {
        if (n_acked == cap)
            acked = xrealloc(acked, (cap *= 2) * sizeof(*acked));
        acked[n_acked++] = idx;
    }
    assert_int_equal(kill(pid, SIGKILL), 0);
    /* acks written before it died count too */
    while (read(p[0], &idx, sizeof(idx)) == sizeof(idx)) {
        if (n_acked == cap)
            acked = xrealloc(acked, (cap *= 2) * sizeof(*acked));
        acked[n_acked++] = idx;
    }
    close(p[0]);
    int wst = 0;
    assert_int_equal(waitpid(pid, &wst, 0), pid);
    assert_true(WIFSIGNALED(wst) && WTERMSIG(wst) == SIGKILL);
    assert_true(n_acked >= 1500);

    fx_open(f);
    assert_true(store_revision(f->s) >= (int64_t)n_acked);
    cap_t g = fx_get(f, "/dur/", true);
    size_t n_kvs = g.ops[0].n_kvs;
    assert_true(n_kvs >= n_acked);
    uint8_t *have = xcalloc(n_kvs + 64, 1);
    for (size_t i = 0; i < n_kvs; i++) {
        int64_t v = 0;
        const char *k = g.ops[0].kvs[i].key + 5;
        for (; *k; k++)
            v = v * 10 + (*k - '0');
        char want[160];
        snprintf(want, sizeof(want), "value-%u-%0120u", (unsigned)v, (unsigned)v);
        assert_string_equal(g.ops[0].kvs[i].value, want);
        if ((size_t)v < n_kvs + 64)
            have[v] = 1;
    }
    for (size_t i = 0; i < n_acked; i++)
        assert_true(acked[i] < n_kvs + 64 && have[acked[i]]);
    free(have);
    free(acked);
    cap_free(&g);
}

int main(void)
{
    log_setup(LOG_WARN, LOG_TEXT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_put_get_revisions, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_binary_and_empty_values, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_range_prefix, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_delete_prefix, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_txn_compares, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_txn_multi_op, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_txn_invalid, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_limits, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_open_errors, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_watch_replay_then_live, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_watch_from_zero_and_filter, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_watch_cancel, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_watch_invalid, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_watch_compacted, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_auto_compaction, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_lease_expiry, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_lease_keepalive, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_lease_revoke, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_reopen, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_puts, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_group_partial_failure, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_loop_liveness, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_close_with_pending, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_close_from_callback, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_durability_kill9, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
