/* sched/assign: placeholder placement (see assign.h). Deliberately simple:
 * the whole desired state is recomputed from in-memory copies of the
 * store's apps, nodes, assignments and instances on every reconcile, which
 * is cheap at the sizes drover runs before its scheduler exists.
 *
 * Consistency: the maps change only from the store watch, never from this
 * module's own writes, so they always mirror the store at `seen_rev`. After
 * writing, a reconcile waits until the watch has delivered its own writes
 * (seen_rev >= wait_rev) before the next one runs; otherwise it would see
 * its assignments missing and create them twice. */
#include "sched/assign.h"

#include "core/alloc.h"
#include "core/json.h"
#include "core/log.h"
#include "core/str.h"

#include <errno.h>
#include <openssl/sha.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The api's store layout (src/api/api_internal.h). */
#define A_APPS_PREFIX   "/apps"
#define A_NODES_PREFIX  "/nodes/"
#define A_ASSIGN_PREFIX "/assign/"
#define A_INST_PREFIX   "/instances/"

#define A_COALESCE_MS 20
#define A_RETRY_MS    1000
#define A_HISTORY_MAX 32
#define A_RAND_BYTES  6 /* 12 hex digits */

typedef struct a_write {
    char *key;
    char *value; /* NULL: delete */
    size_t len;
} a_write_t;

/* sha256 (hex) of a spec without its instance count: two versions with the
 * same signature run the same thing. */
static void a_spec_sig(const json_t *spec, char out[65])
{
    json_t *copy = spec ? json_deep_copy(spec) : json_object();
    json_object_del(copy, "instances");
    size_t len;
    char *text = json_canonical(copy, &len);
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)text, len, md);
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    free(text);
    json_decref(copy);
}

struct sched_assign {
    uv_loop_t *loop;
    store_t *store;
    store_watch_t *watch;
    uv_timer_t timer; /* coalescing, and retry after a store failure */
    /* Mirrors of the store at seen_rev, keyed by id. */
    json_t *apps;    /* app id -> app record */
    json_t *nodes;   /* node id -> node record */
    json_t *asg;     /* instance id -> {"app", "version", "node"} */
    json_t *inst;    /* instance id -> instance record */
    json_t *waiting; /* app id -> instances last logged as waiting for a node */
    int64_t seen_rev;
    int64_t wait_rev;
    bool loaded;
    bool dirty;
    int inflight; /* store calls whose callback has not run */
    bool stopping;
    /* The current reconcile's writes, sent STORE_TXN_OPS_MAX at a time. */
    a_write_t *w;
    size_t n_w, cap_w, next_w;
    void (*done)(void *data);
    void *done_data;
};

static void a_load(sched_assign_t *a);
static void a_schedule(sched_assign_t *a);

/* ---- helpers --------------------------------------------------------- */

char *sched_instance_id_new(const char *app_id)
{
    unsigned char rnd[A_RAND_BYTES];
    if (uv_random(NULL, NULL, rnd, sizeof(rnd), 0, NULL) != 0) {
        /* getrandom failing is near impossible; stay unique regardless */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)rand();
        for (size_t i = 0; i < sizeof(rnd); i++)
            rnd[i] = (unsigned char)(x >> (8 * i));
    }
    const char *segs = app_id[0] == '/' ? app_id + 1 : app_id;
    size_t n = strlen(segs);
    char *id = xmalloc(n + 1 + 2 * sizeof(rnd) + 1);
    for (size_t i = 0; i < n; i++)
        id[i] = segs[i] == '/' ? '_' : segs[i];
    id[n] = '.';
    for (size_t i = 0; i < sizeof(rnd); i++) {
        id[n + 1 + 2 * i] = "0123456789abcdef"[rnd[i] >> 4];
        id[n + 2 + 2 * i] = "0123456789abcdef"[rnd[i] & 15];
    }
    id[n + 1 + 2 * sizeof(rnd)] = '\0';
    return id;
}

static void a_now(char *out, size_t n)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    size_t w = strftime(out, n, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + w, n - w, ".%03ldZ", ts.tv_nsec / 1000000);
}

static json_t *a_parse(const store_kv_t *kv)
{
    json_t *v = json_loadb(kv->value, kv->value_len, 0, NULL);
    if (!json_is_object(v)) {
        log_warn("sched", "stored record %s is not a JSON object; ignored", kv->key);
        json_decref(v);
        return NULL;
    }
    return v;
}

/* "/assign/<node>/<inst>" -> node, inst (malloc'd); false for other shapes. */
static bool a_assign_key(const char *key, char **node, char **inst)
{
    const char *p = key + strlen(A_ASSIGN_PREFIX);
    const char *slash = strchr(p, '/');
    if (!slash || slash == p || !slash[1] || strchr(slash + 1, '/'))
        return false;
    *node = xstrndup(p, (size_t)(slash - p));
    *inst = xstrdup(slash + 1);
    return true;
}

/* ---- the mirrors ------------------------------------------------------ */

/* Apply one key's current value (NULL kv value for a delete) to the maps.
 * Returns true when placement may have to change. */
static bool a_apply(sched_assign_t *a, const store_kv_t *kv, bool deleted)
{
    const char *key = kv->key;
    if (str_has_prefix(key, A_APPS_PREFIX "/")) {
        const char *id = key + strlen(A_APPS_PREFIX);
        json_t *rec = deleted ? NULL : a_parse(kv);
        if (rec) {
            json_object_set_new(a->apps, id, rec);
            return true;
        }
        json_object_del(a->apps, id);
        /* Its assignments go even if an app of the same id (whose versions
         * count from 1 again) appears before the next reconcile. */
        const char *inst;
        json_t *v;
        json_object_foreach(a->asg, inst, v)
        {
            const char *app = json_str(v, "app");
            if (app && strcmp(app, id) == 0)
                json_object_set(v, "version", json_null());
        }
        return true;
    }
    if (str_has_prefix(key, A_NODES_PREFIX)) {
        const char *id = key + strlen(A_NODES_PREFIX);
        json_t *rec = deleted ? NULL : a_parse(kv);
        if (rec)
            json_object_set_new(a->nodes, id, rec);
        else
            json_object_del(a->nodes, id);
        return true;
    }
    if (str_has_prefix(key, A_ASSIGN_PREFIX)) {
        char *node, *inst;
        if (!a_assign_key(key, &node, &inst))
            return false;
        json_t *rec = deleted ? NULL : a_parse(kv);
        if (rec) {
            json_t *app = json_object_get(rec, "app");
            json_t *ver = json_object_get(rec, "version");
            char sig[65];
            a_spec_sig(json_object_get(rec, "spec"), sig);
            json_object_set_new(a->asg, inst,
                                json_pack("{s:O, s:O, s:s, s:s}", "app", app ? app : json_null(),
                                          "version", ver ? ver : json_null(), "node", node, "sig",
                                          sig));
            json_decref(rec);
        } else {
            json_object_del(a->asg, inst);
        }
        free(node);
        free(inst);
        return true;
    }
    if (str_has_prefix(key, A_INST_PREFIX)) {
        const char *id = key + strlen(A_INST_PREFIX);
        json_t *rec = deleted ? NULL : a_parse(kv);
        if (rec)
            json_object_set_new(a->inst, id, rec);
        else
            json_object_del(a->inst, id);
        return false;
    }
    return false;
}

/* ---- writes ----------------------------------------------------------- */

static void a_write_add(sched_assign_t *a, char *key, json_t *value)
{
    if (a->n_w == a->cap_w) {
        a->cap_w = a->cap_w ? a->cap_w * 2 : 64;
        a->w = xrealloc(a->w, a->cap_w * sizeof(*a->w));
    }
    a_write_t *w = &a->w[a->n_w++];
    w->key = key;
    w->value = value ? json_canonical(value, &w->len) : NULL;
    if (!value)
        w->len = 0;
}

static void a_writes_free(sched_assign_t *a)
{
    for (size_t i = 0; i < a->n_w; i++) {
        free(a->w[i].key);
        free(a->w[i].value);
    }
    a->n_w = a->next_w = 0;
}

static void a_finish_stop(sched_assign_t *a);
static void a_send_next(sched_assign_t *a);
static void a_on_timer(uv_timer_t *t);

static void a_txn_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    sched_assign_t *a = data;
    a->inflight--;
    if (a->stopping) {
        a_writes_free(a);
        a_finish_stop(a);
        return;
    }
    if (status) {
        /* What was written stands; the next reconcile recomputes the rest. */
        log_warn("sched", "placement write failed: %s; retrying", err_str(err, status));
        a_writes_free(a);
        a->dirty = true;
        uv_timer_start(&a->timer, a_on_timer, A_RETRY_MS, 0);
        return;
    }
    if (res->rev > a->wait_rev)
        a->wait_rev = res->rev;
    a_send_next(a);
}

/* Send the next batch of the current reconcile's writes, or finish it. */
static void a_send_next(sched_assign_t *a)
{
    if (a->next_w >= a->n_w) {
        a_writes_free(a);
        a_schedule(a);
        return;
    }
    size_t n = a->n_w - a->next_w;
    if (n > STORE_TXN_OPS_MAX)
        n = STORE_TXN_OPS_MAX;
    store_op_t ops[STORE_TXN_OPS_MAX];
    for (size_t i = 0; i < n; i++) {
        const a_write_t *w = &a->w[a->next_w + i];
        ops[i] = (store_op_t){.type = w->value ? STORE_OP_PUT : STORE_OP_DELETE,
                              .key = w->key,
                              .value = w->value,
                              .value_len = w->len};
    }
    a->next_w += n;
    a->inflight++;
    if (store_txn(a->store, NULL, 0, ops, n, NULL, 0, a_txn_done, a)) {
        a->inflight--;
        log_warn("sched", "store unavailable: placement writes dropped");
        a_writes_free(a);
    }
}

/* ---- reconcile -------------------------------------------------------- */

typedef struct a_node {
    const char *id;
    json_t *rec;
    size_t count; /* assignments kept or made on it in this reconcile */
} a_node_t;

static int a_node_cmp(const void *x, const void *y)
{
    return strcmp(((const a_node_t *)x)->id, ((const a_node_t *)y)->id);
}

static a_node_t *a_node_find(a_node_t *nodes, size_t n, const char *id)
{
    a_node_t key = {.id = id};
    return bsearch(&key, nodes, n, sizeof(*nodes), a_node_cmp);
}

static bool a_node_has_isolate(const a_node_t *n, const char *isolate)
{
    json_t *iso = json_object_get(n->rec, "isolates");
    if (!iso)
        return strcmp(isolate, "process") == 0;
    size_t i;
    json_t *v;
    json_array_foreach(iso, i, v)
    {
        if (json_is_string(v) && strcmp(json_string_value(v), isolate) == 0)
            return true;
    }
    return false;
}

static int a_str_cmp(const void *x, const void *y)
{
    return strcmp(*(const char *const *)x, *(const char *const *)y);
}

static bool a_terminal(const char *state)
{
    return !state || !strcmp(state, "finished") || !strcmp(state, "failed") ||
           !strcmp(state, "killed") || !strcmp(state, "lost");
}

/* The instance ran on a node that is gone: say so in its record, since no
 * agent is left to report it. */
static void a_mark_lost(sched_assign_t *a, const char *inst, const char *node, const char *now)
{
    json_t *rec = json_object_get(a->inst, inst);
    if (!rec || a_terminal(json_str(rec, "state")))
        return;
    json_t *copy = json_deep_copy(rec);
    char *reason = xasprintf("node %s lost (lease expired)", node);
    json_object_set_new(copy, "state", json_string("lost"));
    json_object_set_new(copy, "reason", json_string(reason));
    json_object_set_new(copy, "since", json_string(now));
    json_object_set_new(copy, "healthy", json_null());
    json_object_set_new(copy, "reported_at", json_string(now));
    json_t *hist = json_object_get(copy, "history");
    if (json_is_array(hist)) {
        json_array_append_new(
            hist, json_pack("{s:s, s:s, s:s}", "state", "lost", "at", now, "reason", reason));
        while (json_array_size(hist) > A_HISTORY_MAX)
            json_array_remove(hist, 0);
    }
    a_write_add(a, xasprintf("%s%s", A_INST_PREFIX, inst), copy);
    json_decref(copy);
    free(reason);
}

/* The app's desired instance count and version; false when the record
 * lacks them (then it gets nothing). */
static bool a_app_want(const json_t *app, json_int_t *version, json_int_t *count,
                       const char **isolate)
{
    json_t *v = json_object_get(app, "version");
    json_t *spec = json_object_get(app, "spec");
    json_t *n = json_object_get(spec, "instances");
    if (!json_is_integer(v) || !json_is_integer(n) || json_integer_value(n) < 0)
        return false;
    *version = json_integer_value(v);
    *count = json_integer_value(n);
    *isolate = json_str(spec, "isolate");
    if (!*isolate)
        *isolate = "process";
    return true;
}

static void a_reconcile_app(sched_assign_t *a, const char *app_id, json_t *app, json_t *kept,
                            a_node_t *nodes, size_t n_nodes)
{
    json_int_t version = 0, want = 0;
    const char *isolate = NULL;
    if (!a_app_want(app, &version, &want, &isolate))
        want = 0;
    size_t have = json_array_size(kept);
    /* Scale down from the busiest nodes first, to keep the spread. */
    size_t removed = 0;
    while (have > (size_t)want) {
        size_t best = 0;
        a_node_t *bn = NULL;
        for (size_t i = 0; i < json_array_size(kept); i++) {
            json_t *e = json_array_get(kept, i);
            a_node_t *nd = a_node_find(nodes, n_nodes, json_str(e, "node"));
            if (!bn || nd->count > bn->count ||
                (nd->count == bn->count && strcmp(nd->id, bn->id) > 0)) {
                bn = nd;
                best = i;
            }
        }
        json_t *e = json_array_get(kept, best);
        a_write_add(a, xasprintf("%s%s/%s", A_ASSIGN_PREFIX, bn->id, json_str(e, "id")), NULL);
        bn->count--;
        json_array_remove(kept, best);
        have--;
        removed++;
    }
    if (removed)
        log_info("sched", "app %s: %zu instance(s) fewer (scale down to %" JSON_INTEGER_FORMAT ")",
                 app_id, removed, want);

    size_t made = 0, missing = have < (size_t)want ? (size_t)want - have : 0;
    json_t *spec = json_object_get(app, "spec");
    for (; made < missing; made++) {
        a_node_t *bn = NULL;
        for (size_t i = 0; i < n_nodes; i++)
            if (a_node_has_isolate(&nodes[i], isolate) && (!bn || nodes[i].count < bn->count))
                bn = &nodes[i]; /* sorted by id: the first of equals wins ties */
        if (!bn)
            break;
        char *inst = sched_instance_id_new(app_id);
        while (json_object_get(a->asg, inst) || json_object_get(a->inst, inst)) {
            free(inst);
            inst = sched_instance_id_new(app_id);
        }
        json_t *rec = json_pack("{s:s, s:s, s:I, s:s, s:O}", "id", inst, "app", app_id, "version",
                                version, "node", bn->id, "spec", spec);
        a_write_add(a, xasprintf("%s%s/%s", A_ASSIGN_PREFIX, bn->id, inst), rec);
        log_debug("sched", "app %s: instance %s on node %s", app_id, inst, bn->id);
        json_decref(rec);
        free(inst);
        bn->count++;
    }
    if (made)
        log_info("sched", "app %s: %zu instance(s) of version %" JSON_INTEGER_FORMAT " placed",
                 app_id, made, version);
    /* Say once (per count) that instances wait, not on every reconcile. */
    size_t waiting = missing - made;
    json_int_t logged = json_integer_value(json_object_get(a->waiting, app_id));
    if (waiting && (json_int_t)waiting != logged) {
        if (n_nodes)
            log_info("sched", "app %s: %zu instance(s) wait for a node with isolate %s", app_id,
                     waiting, isolate);
        else
            log_info("sched", "app %s: %zu instance(s) wait for a node", app_id, waiting);
        json_object_set_new(a->waiting, app_id, json_integer((json_int_t)waiting));
    } else if (!waiting) {
        json_object_del(a->waiting, app_id);
    }
}

/* One pass: compare the mirrors with what should be, queue the writes. */
static void a_reconcile(sched_assign_t *a)
{
    char now[40];
    a_now(now, sizeof(now));
    size_t n_nodes = json_object_size(a->nodes);
    a_node_t *nodes = xcalloc(n_nodes ? n_nodes : 1, sizeof(*nodes));
    size_t k = 0;
    const char *id;
    json_t *v;
    json_object_foreach(a->nodes, id, v)
    {
        nodes[k].id = id;
        nodes[k].rec = v;
        k++;
    }
    qsort(nodes, n_nodes, sizeof(*nodes), a_node_cmp);

    /* Assignments to keep, grouped by app; the rest go. */
    json_t *kept = json_object();
    json_t *lost_nodes = json_object(); /* node id -> assignments removed */
    json_t *gone = json_object();       /* app id -> assignments removed */
    json_object_foreach(a->asg, id, v)
    {
        const char *node = json_str(v, "node");
        const char *app_id = json_str(v, "app");
        json_t *app = app_id ? json_object_get(a->apps, app_id) : NULL;
        a_node_t *nd = a_node_find(nodes, n_nodes, node);
        json_int_t version = 0, want = 0;
        const char *isolate;
        bool current = app && a_app_want(app, &version, &want, &isolate) &&
                       json_is_integer(json_object_get(v, "version")) &&
                       json_integer_value(json_object_get(v, "version")) == version;
        if (app && !current && a_app_want(app, &version, &want, &isolate)) {
            /* A version that only changed the instance count (a scale)
             * keeps the instances it has: scaling restarts nothing. */
            char sig[65];
            a_spec_sig(json_object_get(app, "spec"), sig);
            current = json_str(v, "sig") && strcmp(json_str(v, "sig"), sig) == 0;
        }
        if (nd && current) {
            json_t *list = json_object_get(kept, app_id);
            if (!list) {
                list = json_array();
                json_object_set_new(kept, app_id, list);
            }
            json_array_append_new(list, json_pack("{s:s, s:s}", "id", id, "node", node));
            nd->count++;
            continue;
        }
        a_write_add(a, xasprintf("%s%s/%s", A_ASSIGN_PREFIX, node, id), NULL);
        if (!nd) {
            a_mark_lost(a, id, node, now);
            json_object_set_new(
                lost_nodes, node,
                json_integer(json_integer_value(json_object_get(lost_nodes, node)) + 1));
        } else {
            const char *why = app ? "of an old version removed" : "removed (app deleted)";
            log_debug("sched", "app %s: instance %s %s", app_id ? app_id : "?", id, why);
            if (app_id)
                json_object_set_new(
                    gone, app_id,
                    json_integer(json_integer_value(json_object_get(gone, app_id)) + 1));
        }
    }
    json_object_foreach(gone, id, v)
    {
        log_info(
            "sched", "app %s: %" JSON_INTEGER_FORMAT " instance(s) %s", id, json_integer_value(v),
            json_object_get(a->apps, id) ? "of old versions removed" : "removed (app deleted)");
    }
    json_decref(gone);
    json_object_foreach(lost_nodes, id, v)
    {
        log_info("sched", "node %s lost: %" JSON_INTEGER_FORMAT " assignment(s) moved", id,
                 json_integer_value(v));
    }
    json_decref(lost_nodes);

    /* Apps in id order, so placement is deterministic. */
    size_t n_apps = json_object_size(a->apps);
    const char **app_ids = xcalloc(n_apps ? n_apps : 1, sizeof(*app_ids));
    k = 0;
    json_object_foreach(a->apps, id, v)
    {
        app_ids[k++] = id;
    }
    qsort(app_ids, n_apps, sizeof(*app_ids), a_str_cmp);
    json_t *empty = json_array();
    for (size_t i = 0; i < n_apps; i++) {
        json_t *list = json_object_get(kept, app_ids[i]);
        a_reconcile_app(a, app_ids[i], json_object_get(a->apps, app_ids[i]), list ? list : empty,
                        nodes, n_nodes);
    }
    void *tmp;
    json_object_foreach_safe(a->waiting, tmp, id, v)
    {
        if (!json_object_get(a->apps, id))
            json_object_del(a->waiting, id);
    }
    json_decref(empty);
    free(app_ids);
    json_decref(kept);
    free(nodes);
}

static void a_on_timer(uv_timer_t *t)
{
    sched_assign_t *a = t->data;
    if (a->stopping)
        return;
    if (!a->loaded) {
        a_load(a);
        return;
    }
    if (a->inflight || a->n_w || a->seen_rev < a->wait_rev)
        return; /* a_schedule runs again when that changes */
    a->dirty = false;
    a_reconcile(a);
    a_send_next(a);
}

/* Run a reconcile soon if one is due and nothing holds it back. */
static void a_schedule(sched_assign_t *a)
{
    if (a->stopping || !a->loaded || !a->dirty || a->inflight || a->n_w ||
        a->seen_rev < a->wait_rev)
        return;
    if (!uv_is_active((uv_handle_t *)&a->timer))
        uv_timer_start(&a->timer, a_on_timer, A_COALESCE_MS, 0);
}

/* ---- watch and load --------------------------------------------------- */

static void a_watch_start(sched_assign_t *a);

static void a_on_events(store_watch_t *w, int status, const store_event_t *events, size_t n,
                        int64_t compact_rev, void *data)
{
    sched_assign_t *a = data;
    if (status) {
        a->watch = NULL;
        if (status == -ECANCELED || a->stopping)
            return;
        /* History gone or the watch failed: start over from a fresh read. */
        log_warn("sched", "store watch ended (%s); reloading", strerror(-status));
        a->loaded = false;
        uv_timer_start(&a->timer, a_on_timer, status == -ESTALE ? 0 : A_RETRY_MS, 0);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        if (a_apply(a, &events[i].kv, events[i].type == STORE_EVENT_DELETE))
            a->dirty = true;
        if (events[i].kv.mod_rev > a->seen_rev)
            a->seen_rev = events[i].kv.mod_rev;
    }
    a_schedule(a);
}

static void a_watch_start(sched_assign_t *a)
{
    int rc = store_watch(a->store, "/", true, a->seen_rev + 1, a_on_events, a, &a->watch);
    if (rc) {
        a->watch = NULL;
        a->loaded = false;
        log_warn("sched", "cannot watch the store (%s); retrying", strerror(-rc));
        uv_timer_start(&a->timer, a_on_timer, A_RETRY_MS, 0);
    }
}

static void a_load_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    sched_assign_t *a = data;
    a->inflight--;
    if (a->stopping) {
        a_finish_stop(a);
        return;
    }
    if (status) {
        log_warn("sched", "reading the store: %s; retrying", err_str(err, status));
        uv_timer_start(&a->timer, a_on_timer, A_RETRY_MS, 0);
        return;
    }
    json_object_clear(a->apps);
    json_object_clear(a->nodes);
    json_object_clear(a->asg);
    json_object_clear(a->inst);
    for (size_t i = 0; i < res->n_ops; i++)
        for (size_t j = 0; j < res->ops[i].n_kvs; j++)
            a_apply(a, &res->ops[i].kvs[j], false);
    a->seen_rev = res->rev;
    a->wait_rev = 0;
    a->loaded = true;
    a->dirty = true;
    log_info("sched",
             "placement started at revision %" PRId64 ": %zu app(s), %zu node(s), %zu "
             "assignment(s)",
             res->rev, json_object_size(a->apps), json_object_size(a->nodes),
             json_object_size(a->asg));
    a_watch_start(a);
    a_schedule(a);
}

static void a_load(sched_assign_t *a)
{
    store_op_t ops[4] = {
        {.type = STORE_OP_GET, .key = A_APPS_PREFIX "/", .prefix = true},
        {.type = STORE_OP_GET, .key = A_NODES_PREFIX, .prefix = true},
        {.type = STORE_OP_GET, .key = A_ASSIGN_PREFIX, .prefix = true},
        {.type = STORE_OP_GET, .key = A_INST_PREFIX, .prefix = true},
    };
    a->inflight++;
    if (store_txn(a->store, NULL, 0, ops, 4, NULL, 0, a_load_done, a)) {
        a->inflight--;
        log_warn("sched", "store unavailable; retrying");
        uv_timer_start(&a->timer, a_on_timer, A_RETRY_MS, 0);
    }
}

/* ---- lifetime --------------------------------------------------------- */

int sched_assign_start(uv_loop_t *loop, store_t *store, sched_assign_t **out, err_t *err)
{
    *out = NULL;
    if (!loop || !store)
        return err_set(err, -EINVAL, "placement needs a loop and a store");
    sched_assign_t *a = xcalloc(1, sizeof(*a));
    a->loop = loop;
    a->store = store;
    a->apps = json_object();
    a->nodes = json_object();
    a->asg = json_object();
    a->inst = json_object();
    a->waiting = json_object();
    uv_timer_init(loop, &a->timer);
    a->timer.data = a;
    a_load(a);
    *out = a;
    return 0;
}

static void a_closed(uv_handle_t *h)
{
    sched_assign_t *a = h->data;
    void (*done)(void *) = a->done;
    void *done_data = a->done_data;
    a_writes_free(a);
    free(a->w);
    json_decref(a->apps);
    json_decref(a->nodes);
    json_decref(a->asg);
    json_decref(a->inst);
    json_decref(a->waiting);
    free(a);
    if (done)
        done(done_data);
}

/* Free once no store callback can reach `a` any more. */
static void a_finish_stop(sched_assign_t *a)
{
    if (a->inflight || uv_is_closing((uv_handle_t *)&a->timer))
        return;
    uv_close((uv_handle_t *)&a->timer, a_closed);
}

void sched_assign_stop(sched_assign_t *a, void (*done)(void *data), void *data)
{
    if (!a || a->stopping)
        return;
    a->stopping = true;
    a->done = done;
    a->done_data = data;
    if (a->watch) {
        store_watch_cancel(a->watch);
        a->watch = NULL;
    }
    uv_timer_stop(&a->timer);
    a_finish_stop(a);
}

void sched_assign_set_lost_delay(sched_assign_t *a, uint64_t ms)
{
    (void)a;
    (void)ms;
}
