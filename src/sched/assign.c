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

#include "sched/place.h"
#include "sched/records.h"
#include "sched/rollout.h"
#include "spec/spec.h"

#include "core/alloc.h"
#include "core/json.h"
#include "core/log.h"
#include "core/str.h"

#include <errno.h>
#include <openssl/sha.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The api's store layout (src/api/api_internal.h). */
#define A_APPS_PREFIX   "/apps"
#define A_NODES_PREFIX  "/nodes/"
#define A_ASSIGN_PREFIX "/assign/"
#define A_INST_PREFIX   "/instances/"
#define A_GROUPS_PREFIX "/groups/"

#define A_COALESCE_MS 20
#define A_RETRY_MS    1000
#define A_HISTORY_MAX 32
#define A_RAND_BYTES  6 /* 12 hex digits */
#define A_TICK_MS     1000 /* deadlines and lost-node delays are checked this often */
#define A_EXPLAIN_NODES 20

typedef struct a_write {
    char *key;
    char *value; /* NULL: delete */
    size_t len;
} a_write_t;

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
    json_t *deps;    /* deployment id -> record */
    json_t *placement; /* app id -> placement record as stored */
    json_t *groups;  /* canary group name -> record as stored */
    json_t *app_rev; /* app id -> mod revision of its record (for CAS) */
    json_t *progress; /* deployment id -> {"score", "at_ms"}: last progress */
    json_t *config_dirty; /* app id -> true: its config prefix changed */
    json_t *gone_since;   /* node id -> ms its key went (lost-node delay) */
    uv_timer_t tick;
    uint64_t lost_delay_ms;
    int side_inflight; /* rollbacks and config versions being written */
    uint64_t coalesce_ms; /* wait before the next pass (see a_on_timer) */
    json_t *rebal; /* app id -> {"inst", "from", "at_ms"}: a move in flight */
    bool rebal_due;  /* a node joined or came back: look for uneven apps */
    bool rebal_moved; /* this pass started a move */
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
static void a_on_tick(uv_timer_t *t);

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
            json_object_set_new(a->app_rev, id, json_integer(kv->mod_rev));
            return true;
        }
        json_object_del(a->apps, id);
        json_object_del(a->app_rev, id);
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
        if (rec && !json_object_get(a->nodes, id))
            a->rebal_due = true;
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
            const json_t *spec = json_object_get(rec, "spec");
            char sig[65];
            if (json_str(rec, "sig"))
                snprintf(sig, sizeof(sig), "%s", json_str(rec, "sig"));
            else
                rec_signature(spec, NULL, 0, sig);
            json_t *hc = json_object_get(spec, "healthChecks");
            json_t *m = json_pack("{s:O, s:O, s:s, s:s, s:b}", "app", app ? app : json_null(),
                                  "version", ver ? ver : json_null(), "node", node, "sig", sig,
                                  "checks", json_array_size(hc) > 0);
            json_object_set(m, "spec", json_object_get(rec, "spec"));
            json_object_set_new(m, "poolPin",
                                json_integer(json_integer_value(json_object_get(rec, "poolPin"))));
            json_object_set_new(a->asg, inst, m);
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
        json_t *old = json_object_get(a->inst, id);
        /* health decides rollouts: a change of state matters */
        bool moved = !old || !rec || !json_equal(json_object_get(old, "state"),
                                                 json_object_get(rec, "state"));
        if (rec)
            json_object_set_new(a->inst, id, rec);
        else
            json_object_del(a->inst, id);
        return moved && json_object_get(a->asg, id) != NULL;
    }
    if (str_has_prefix(key, REC_DEPLOYMENTS_PREFIX)) {
        const char *id = key + strlen(REC_DEPLOYMENTS_PREFIX);
        json_t *rec = deleted ? NULL : a_parse(kv);
        if (rec)
            json_object_set_new(a->deps, id, rec);
        else
            json_object_del(a->deps, id);
        return true;
    }
    if (str_has_prefix(key, REC_PLACEMENT_PREFIX "/")) {
        const char *id = key + strlen(REC_PLACEMENT_PREFIX);
        json_t *rec = deleted ? NULL : a_parse(kv);
        if (rec)
            json_object_set_new(a->placement, id, rec);
        else
            json_object_del(a->placement, id);
        return false;
    }
    if (str_has_prefix(key, A_GROUPS_PREFIX "canary.")) {
        const char *name = key + strlen(A_GROUPS_PREFIX);
        json_t *rec = deleted ? NULL : a_parse(kv);
        if (rec)
            json_object_set_new(a->groups, name, rec);
        else
            json_object_del(a->groups, name);
        return true;
    }
    if (str_has_prefix(key, REC_KV_PREFIX)) {
        /* a change under an app's config prefix makes a new version of it */
        const char *k = key + strlen(REC_KV_PREFIX);
        const char *id;
        json_t *app;
        bool any = false;
        json_object_foreach(a->apps, id, app)
        {
            const char *pre = json_str(json_object_get(app, "spec"), "config");
            if (!pre)
                continue;
            while (*pre == '/')
                pre++;
            size_t n = strlen(pre);
            while (n && pre[n - 1] == '/')
                n--;
            if (n && strncmp(k, pre, n) == 0 && k[n] == '/') {
                json_object_set_new(a->config_dirty, id, json_true());
                any = true;
            }
        }
        return any;
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

/* A write of its own beside the batches (a rollback, a config version):
 * guarded by a compare on the app, so a concurrent API change wins and the
 * next pass decides again. */
static void a_side_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    sched_assign_t *a = data;
    a->inflight--;
    a->side_inflight--;
    if (a->stopping) {
        a_finish_stop(a);
        return;
    }
    if (status)
        log_warn("sched", "write failed: %s; retrying", err_str(err, status));
    else if (!res->succeeded)
        log_info("sched", "an app changed meanwhile; deciding again");
    else if (res->rev > a->wait_rev)
        a->wait_rev = res->rev;
    a->dirty = true;
    a_schedule(a);
}

static void a_side_write(sched_assign_t *a, store_cmp_t *cmp, store_op_t *ops, size_t n,
                         const char *what)
{
    a->inflight++;
    a->side_inflight++;
    if (store_txn(a->store, cmp, 1, ops, n, NULL, 0, a_side_done, a)) {
        a->inflight--;
        a->side_inflight--;
        log_warn("sched", "store unavailable: %s not written", what);
    }
}

/* ---- reconcile -------------------------------------------------------- */

typedef struct a_node {
    const char *id;
    json_t *rec;
    int idx; /* in the placement cluster */
} a_node_t;

static int a_node_cmp(const void *x, const void *y)
{
    return strcmp(((const a_node_t *)x)->id, ((const a_node_t *)y)->id);
}

static a_node_t *a_node_find(a_node_t *nodes, size_t n, const char *id)
{
    if (!id)
        return NULL;
    a_node_t key = {.id = id};
    return bsearch(&key, nodes, n, sizeof(*nodes), a_node_cmp);
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

static uint64_t a_ms(void)
{
    return uv_hrtime() / 1000000;
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

/* Healthy for a rollout: its checks pass, or without checks it runs. */
static bool a_inst_healthy(sched_assign_t *a, const char *inst, const json_t *m)
{
    const char *st = json_str(json_object_get(a->inst, inst), "state");
    if (!st)
        return false;
    if (strcmp(st, "healthy") == 0)
        return true;
    return strcmp(st, "running") == 0 && !json_is_true(json_object_get(m, "checks"));
}

/* Host ports an instance of spec takes: dynamic ones, and fixed ones when
 * the spec requires its ports (or maps a hostPort). */
static void a_spec_ports(const json_t *spec, int *n_dyn, int *fixed, size_t *n_fixed, size_t max)
{
    *n_dyn = 0;
    *n_fixed = 0;
    bool require = json_is_true(json_object_get(spec, "requirePorts"));
    const json_t *defs = json_object_get(spec, "portDefinitions");
    const json_t *maps = json_object_get(json_object_get(spec, "container"), "portMappings");
    if (!maps)
        maps = json_object_get(json_object_get(json_object_get(spec, "container"), "docker"),
                               "portMappings");
    size_t i;
    json_t *v;
    if (json_array_size(maps)) {
        json_array_foreach(maps, i, v)
        {
            json_int_t hp = json_integer_value(json_object_get(v, "hostPort"));
            if (hp > 0 && *n_fixed < max)
                fixed[(*n_fixed)++] = (int)hp;
            else
                (*n_dyn)++;
        }
        return;
    }
    json_array_foreach(defs, i, v)
    {
        json_int_t p = json_integer_value(json_object_get(v, "port"));
        if (require && p > 0 && *n_fixed < max)
            fixed[(*n_fixed)++] = (int)p;
        else
            (*n_dyn)++;
    }
}

static unsigned a_iso_bit(const char *name)
{
    if (name && strcmp(name, "oci") == 0)
        return PLACE_ISO_OCI;
    if (name && strcmp(name, "docker") == 0)
        return PLACE_ISO_DOCKER;
    return PLACE_ISO_PROCESS;
}

static void a_use(place_cluster_t *pc, int node, const json_t *spec, int sign)
{
    int dyn, fixed[16];
    size_t nf;
    a_spec_ports(spec, &dyn, fixed, &nf, 16);
    double cpus = json_number_value(json_object_get(spec, "cpus"));
    int64_t mem = (int64_t)ceil(json_number_value(json_object_get(spec, "mem")));
    if (sign > 0)
        place_node_use(pc, node, cpus, mem, dyn, fixed, nf);
    else
        place_node_release(pc, node, cpus, mem, dyn, fixed, nf);
}

/* The placement view of one spec of the app, with every instance it
 * has counted for the constraints. NULL (logged) if the spec's
 * constraints do not compile, which validation prevents. */
static place_app_t *a_place_app(place_cluster_t *pc, const char *app_id, const json_t *spec,
                                const json_t *list)
{
    int dyn, fixed[16];
    size_t nf;
    a_spec_ports(spec, &dyn, fixed, &nf, 16);
    const char *strategy = json_str(spec, "placement");
    place_app_in_t in = {
        .id = app_id,
        .cpus = json_number_value(json_object_get(spec, "cpus")),
        .mem_mb = (int64_t)ceil(json_number_value(json_object_get(spec, "mem"))),
        .n_ports = dyn,
        .fixed = fixed,
        .n_fixed = nf,
        .isolate = a_iso_bit(json_str(spec, "isolate")),
        .constraints = json_object_get(spec, "constraints"),
        .strategy = strategy && strcmp(strategy, "binpack") == 0 ? PLACE_BINPACK : PLACE_SPREAD,
    };
    place_app_t *pa = NULL;
    err_t err = {0};
    if (place_app_new(pc, &in, &pa, &err)) {
        log_warn("sched", "app %s cannot be placed: %s", app_id, err.msg);
        return NULL;
    }
    size_t i;
    json_t *e;
    json_array_foreach(list, i, e)
    {
        json_int_t idx = json_integer_value(json_object_get(e, "idx"));
        if (idx >= 0 && !json_is_true(json_object_get(e, "stopping")))
            place_app_count(pa, (int)idx, 1);
    }
    return pa;
}

/* One step of the app's deployment as the "steps" list shows it. */
static void a_step(json_t *steps, const char *now, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void a_step(json_t *steps, const char *now, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    json_array_append_new(steps, json_pack("{s:s, s:s}", "at", now, "message", msg));
}

/* What reconciling one app did, for its deployment record. */
typedef struct a_result {
    roll_out_t roll;
    int64_t unplaced;
    json_t *explain; /* place_explain of the first refusal, or NULL */
    json_t *steps;   /* this pass's steps */
} a_result_t;

/* Start `count` instances of one of the app's specs: pick nodes, write
 * the assignments. Returns how many got a node. */
/* The app's pool pin (POST /v1/apps/<id>/pool; 0 = automatic) travels in
 * its assignments, so the agents running a worker app apply it without a
 * new version; services have none. */
static json_int_t a_pool_pin(const json_t *app)
{
    const char *kind = json_str(json_object_get(app, "spec"), "kind");
    if (!kind || strcmp(kind, "worker") != 0)
        return 0;
    return json_integer_value(json_object_get(app, "poolPin"));
}

static void a_set_pin(json_t *rec, json_int_t pin)
{
    if (pin)
        json_object_set_new(rec, "poolPin", json_integer(pin));
}

static int64_t a_start(sched_assign_t *a, place_cluster_t *pc, a_node_t *nodes, size_t n_nodes,
                       const char *app_id, const json_t *spec, const json_t *env, int64_t restart,
                       int64_t version, const json_t *list, int64_t count, a_result_t *res,
                       json_t *placed_on)
{
    if (count <= 0)
        return 0;
    place_app_t *pa = a_place_app(pc, app_id, spec, list);
    if (!pa) {
        res->unplaced += count;
        return 0;
    }
    json_t *eff = rec_effective_spec(spec, env);
    char sig[65];
    rec_signature(spec, env, restart, sig);
    int64_t made = 0;
    for (; made < count; made++) {
        int idx = place_pick(pc, pa);
        if (idx < 0) {
            if (!res->explain)
                res->explain = place_explain(pc, pa, A_EXPLAIN_NODES);
            break;
        }
        const char *node = place_node_id(pc, idx);
        char *inst = sched_instance_id_new(app_id);
        while (json_object_get(a->asg, inst) || json_object_get(a->inst, inst)) {
            free(inst);
            inst = sched_instance_id_new(app_id);
        }
        json_t *rec = json_pack("{s:s, s:s, s:I, s:s, s:O, s:s}", "id", inst, "app", app_id,
                                "version", (json_int_t)version, "node", node, "spec", eff, "sig",
                                sig);
        a_set_pin(rec, a_pool_pin(json_object_get(a->apps, app_id)));
        a_write_add(a, xasprintf("%s%s/%s", A_ASSIGN_PREFIX, node, inst), rec);
        log_debug("sched", "app %s: instance %s on node %s", app_id, inst, node);
        json_object_set_new(placed_on, node,
                            json_integer(json_integer_value(json_object_get(placed_on, node)) + 1));
        json_decref(rec);
        free(inst);
    }
    (void)nodes;
    (void)n_nodes;
    res->unplaced += count - made;
    json_decref(eff);
    place_app_free(pa);
    return made;
}

static void a_nodes_text(const json_t *placed_on, char *out, size_t n)
{
    out[0] = '\0';
    size_t w = 0;
    const char *node;
    json_t *v;
    json_object_foreach((json_t *)placed_on, node, v)
    {
        int k = snprintf(out + w, n - w, "%s%s", w ? ", " : "", node);
        if (k < 0 || (size_t)k >= n - w)
            break;
        w += (size_t)k;
    }
}

/* The value of the app's first GROUP_BY field on node idx, or NULL. */
static const char *a_group_value(sched_assign_t *a, place_cluster_t *pc, const json_t *spec,
                                 int idx)
{
    const json_t *cons = json_object_get(spec, "constraints");
    size_t i;
    json_t *c;
    json_array_foreach(cons, i, c)
    {
        const char *op = json_string_value(json_array_get(c, 1));
        const char *field = json_string_value(json_array_get(c, 0));
        if (!op || !field || strcmp(op, "GROUP_BY") != 0)
            continue;
        json_t *node = json_object_get(a->nodes, place_node_id(pc, idx));
        if (strcmp(field, "hostname") == 0)
            return json_str(node, "hostname");
        return json_str(json_object_get(node, "labels"), field);
    }
    return NULL;
}

static bool a_has_group_by(const json_t *spec)
{
    const json_t *cons = json_object_get(spec, "constraints");
    size_t i;
    json_t *c;
    json_array_foreach(cons, i, c)
    {
        const char *op = json_string_value(json_array_get(c, 1));
        if (op && strcmp(op, "GROUP_BY") == 0)
            return true;
    }
    return false;
}

/* Nodes that come back, or join, get work again: when a converged spread
 * app is uneven by two or more (instances per node, or per GROUP_BY
 * value), start one instance where placement would put a new one now and,
 * once it is healthy, stop one on the most crowded node (a_reconcile_app).
 * One move per app at a time, each a surge like a rolling upgrade's, so
 * capacity never drops. */
static void a_rebalance(sched_assign_t *a, place_cluster_t *pc, const char *app_id,
                        const json_t *app, const json_t *list, a_result_t *res, const char *now)
{
    const json_t *spec = json_object_get(app, "spec");
    const char *strategy = json_str(spec, "placement");
    if (strategy && strcmp(strategy, "binpack") == 0)
        return;
    size_t n_nodes = place_node_count(pc);
    if (n_nodes < 2 || json_array_size(list) < 2)
        return;
    bool grouped = a_has_group_by(spec);
    json_t *per = json_object(); /* node idx or group value -> instances */
    size_t i;
    json_t *e;
    json_array_foreach(list, i, e)
    {
        int idx = (int)json_integer_value(json_object_get(e, "idx"));
        if (idx < 0 || json_is_true(json_object_get(e, "stopping")) ||
            !json_is_true(json_object_get(e, "healthy"))) {
            json_decref(per); /* only a settled app moves */
            return;
        }
        const char *key = grouped ? a_group_value(a, pc, spec, idx) : place_node_id(pc, idx);
        if (!key)
            continue;
        json_object_set_new(per, key, json_integer(json_integer_value(json_object_get(per, key)) + 1));
    }
    place_app_t *pa = a_place_app(pc, app_id, spec, list);
    if (!pa) {
        json_decref(per);
        return;
    }
    int to = place_pick(pc, pa);
    if (to < 0) {
        place_app_free(pa);
        json_decref(per);
        return;
    }
    const char *to_key = grouped ? a_group_value(a, pc, spec, to) : place_node_id(pc, to);
    json_int_t to_n = to_key ? json_integer_value(json_object_get(per, to_key)) : 0;
    /* the crowded side: the node (or a node of the value) with the most */
    const char *from = NULL;
    json_int_t from_n = 0;
    json_array_foreach(list, i, e)
    {
        int idx = (int)json_integer_value(json_object_get(e, "idx"));
        const char *key = grouped ? a_group_value(a, pc, spec, idx) : place_node_id(pc, idx);
        json_int_t k = key ? json_integer_value(json_object_get(per, key)) : 0;
        if (k > from_n) {
            from_n = k;
            from = json_str(e, "node");
        }
    }
    if (!to_key || !from || from_n - to_n < 2) {
        /* even enough: give back what the trial pick took */
        place_app_count(pa, to, -1);
        a_use(pc, to, spec, -1);
        place_app_free(pa);
        json_decref(per);
        return;
    }
    place_app_free(pa);
    json_decref(per);
    const json_t *env = json_object_get(app, "config_env");
    int64_t restart = json_integer_value(json_object_get(app, "restart"));
    json_t *eff = rec_effective_spec(spec, env);
    char sig[65];
    rec_signature(spec, env, restart, sig);
    const char *node = place_node_id(pc, to);
    char *inst = sched_instance_id_new(app_id);
    json_t *rec = json_pack("{s:s, s:s, s:O, s:s, s:o, s:s}", "id", inst, "app", app_id, "version",
                            json_object_get(app, "version"), "node", node, "spec", eff, "sig",
                            sig);
    a_set_pin(rec, a_pool_pin(app));
    a_write_add(a, xasprintf("%s%s/%s", A_ASSIGN_PREFIX, node, inst), rec);
    json_decref(rec);
    json_object_set_new(a->rebal, app_id,
                        json_pack("{s:s, s:s, s:I}", "inst", inst, "from", from, "at_ms",
                                  (json_int_t)a_ms()));
    log_info("sched", "app %s: uneven (%" JSON_INTEGER_FORMAT " vs %" JSON_INTEGER_FORMAT
                      "): starting one on node %s to move one off node %s",
             app_id, from_n, to_n, node, from);
    a_step(res->steps, now, "rebalancing: starting one instance on node %s", node);
    a->rebal_moved = true;
    free(inst);
}

/* Reconcile one app: classify what runs, plan a rollout step, stop and
 * start accordingly. `list` holds the app's live assignments
 * [{"id", "node", "idx", "sig", "version", "healthy"}]. */
static void a_reconcile_app(sched_assign_t *a, const char *app_id, json_t *app, json_t *list,
                            place_cluster_t *pc, a_node_t *nodes, size_t n_nodes, bool held,
                            const char *now, a_result_t *res)
{
    const json_t *spec = json_object_get(app, "spec");
    const json_t *env = json_object_get(app, "config_env");
    int64_t restart = json_integer_value(json_object_get(app, "restart"));
    int64_t version = json_integer_value(json_object_get(app, "version"));
    const json_t *canary = json_object_get(app, "canary");
    bool has_canary = json_is_object(canary);
    const json_t *cspec = has_canary ? json_object_get(canary, "spec") : NULL;
    const json_t *cenv = has_canary ? json_object_get(canary, "config_env") : NULL;
    char sig[65], csig[65] = "";
    rec_signature(spec, env, restart, sig);
    if (has_canary)
        rec_signature(cspec, cenv, restart, csig);

    size_t n = json_array_size(list);
    roll_inst_t *ri = xcalloc(n ? n : 1, sizeof(*ri));
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(list, i);
        const char *s = json_str(e, "sig");
        ri[i].cls = s && strcmp(s, sig) == 0                ? ROLL_MAIN
                    : has_canary && s && strcmp(s, csig) == 0 ? ROLL_CANARY
                                                              : ROLL_OLD;
        ri[i].healthy = json_is_true(json_object_get(e, "healthy"));
        ri[i].node = (int)json_integer_value(json_object_get(e, "idx"));
    }
    const json_t *up = json_object_get(spec, "upgradeStrategy");
    roll_in_t in = {
        .want = json_integer_value(json_object_get(spec, "instances")),
        .want_canary = has_canary ? json_integer_value(json_object_get(canary, "instances")) : 0,
        .min_health = json_object_get(up, "minimumHealthCapacity")
                          ? json_number_value(json_object_get(up, "minimumHealthCapacity"))
                          : 1.0,
        .max_over = json_object_get(up, "maximumOverCapacity")
                        ? json_number_value(json_object_get(up, "maximumOverCapacity"))
                        : 1.0,
    };
    /* A move in flight (a_rebalance) holds one extra instance until it is
     * healthy; then the surplus goes from the crowded node. */
    json_t *mv = json_object_get(a->rebal, app_id);
    const char *mv_inst = mv ? json_str(mv, "inst") : NULL;
    bool mv_live = false, mv_healthy = false;
    for (size_t i = 0; mv_inst && i < n; i++) {
        json_t *e = json_array_get(list, i);
        if (strcmp(json_str(e, "id"), mv_inst) == 0) {
            mv_live = ri[i].cls == ROLL_MAIN;
            mv_healthy = ri[i].healthy;
        }
    }
    json_int_t deadline_s = json_integer_value(json_object_get(spec, "progressDeadlineSeconds"));
    if (mv && (!mv_live || held || has_canary ||
               a_ms() - (uint64_t)json_integer_value(json_object_get(mv, "at_ms")) >
                   (uint64_t)(deadline_s > 0 ? deadline_s : 600) * 1000)) {
        /* the move was overtaken (a new version, a scale) or never got
         * healthy: forget it; the surplus rules tidy up */
        json_object_del(a->rebal, app_id);
        mv = NULL;
    }
    if (mv && !mv_healthy)
        in.want++;
    roll_plan(&in, ri, n, &res->roll);
    if (mv && mv_healthy) {
        /* the new one serves: take the surplus from the node it relieves */
        const char *from = json_str(mv, "from");
        size_t pick = n;
        for (size_t i = 0; i < n; i++) {
            json_t *e = json_array_get(list, i);
            if (ri[i].stop && strcmp(json_str(e, "node"), from) != 0)
                ri[i].stop = false;
            else if (!ri[i].stop && pick == n && ri[i].cls == ROLL_MAIN &&
                     strcmp(json_str(e, "node"), from) == 0 && strcmp(json_str(e, "id"), mv_inst))
                pick = i;
        }
        bool any = false;
        for (size_t i = 0; i < n; i++)
            any |= ri[i].stop;
        if (!any && pick < n)
            ri[pick].stop = true;
        log_info("sched", "app %s: moved an instance off node %s (rebalance)", app_id, from);
        a_step(res->steps, now, "rebalanced: one instance moved off node %s", from);
        json_object_del(a->rebal, app_id);
        res->roll.done = false;
    }
    if (held) {
        free(ri);
        return;
    }

    /* stops first: they free resources the starts may need */
    json_t *stopped_v = json_object(); /* version -> count */
    size_t stopped = 0;
    for (size_t i = 0; i < n; i++) {
        if (!ri[i].stop)
            continue;
        json_t *e = json_array_get(list, i);
        const char *node = json_str(e, "node");
        a_write_add(a, xasprintf("%s%s/%s", A_ASSIGN_PREFIX, node, json_str(e, "id")), NULL);
        json_t *m = json_object_get(a->asg, json_str(e, "id"));
        json_int_t idx = json_integer_value(json_object_get(e, "idx"));
        if (m && idx >= 0)
            a_use(pc, (int)idx, json_object_get(m, "spec"), -1);
        json_object_set_new(e, "stopping", json_true());
        char vk[32];
        snprintf(vk, sizeof(vk), "%" JSON_INTEGER_FORMAT,
                 json_integer_value(json_object_get(e, "version")));
        json_object_set_new(stopped_v, vk,
                            json_integer(json_integer_value(json_object_get(stopped_v, vk)) + 1));
        stopped++;
    }
    if (stopped) {
        char vs[256] = "";
        size_t w = 0;
        const char *vk;
        json_t *cnt;
        json_object_foreach(stopped_v, vk, cnt)
        {
            int k = snprintf(vs + w, sizeof(vs) - w, "%s%s", w ? ", " : "", vk);
            if (k > 0 && (size_t)k < sizeof(vs) - w)
                w += (size_t)k;
        }
        a_step(res->steps, now, "stopped %zu instance(s) of version %s", stopped, vs);
        log_info("sched", "app %s: stopping %zu instance(s) of version %s", app_id, stopped, vs);
    }
    json_decref(stopped_v);
    free(ri);

    json_t *placed_on = json_object();
    int64_t made = a_start(a, pc, nodes, n_nodes, app_id, spec, env, restart, version, list,
                           res->roll.start_main, res, placed_on);
    if (made) {
        char where[256];
        a_nodes_text(placed_on, where, sizeof(where));
        a_step(res->steps, now, "started %" PRId64 " instance(s) of version %" PRId64 " on %s",
               made, version, where);
        log_info("sched", "app %s: %" PRId64 " instance(s) of version %" PRId64 " placed on %s",
                 app_id, made, version, where);
    }
    json_object_clear(placed_on);
    if (has_canary) {
        int64_t cver = json_integer_value(json_object_get(canary, "version"));
        made = a_start(a, pc, nodes, n_nodes, app_id, cspec, cenv, restart, cver, list,
                       res->roll.start_canary, res, placed_on);
        if (made) {
            char where[256];
            a_nodes_text(placed_on, where, sizeof(where));
            a_step(res->steps, now,
                   "started %" PRId64 " canary instance(s) of version %" PRId64 " on %s", made,
                   cver, where);
        }
    }
    json_decref(placed_on);
    if (a->rebal_due && res->roll.done && !res->unplaced && !has_canary &&
        !json_object_get(a->rebal, app_id))
        a_rebalance(a, pc, app_id, app, list, res, now);
}

/* ---- placement problems ---------------------------------------------------------------- */

/* Keep /placement<app> saying why instances wait, written only when the
 * reason changes, gone once everything has a node. */
static void a_placement_record(sched_assign_t *a, const char *app_id, const a_result_t *res,
                               const char *now)
{
    json_t *cur = json_object_get(a->placement, app_id);
    if (!res->unplaced) {
        if (cur) {
            a_write_add(a, xasprintf("%s%s", REC_PLACEMENT_PREFIX, app_id), NULL);
            json_object_del(a->placement, app_id);
            log_info("sched", "app %s: every instance has a node now", app_id);
        }
        return;
    }
    json_t *summary = res->explain ? json_object_get(res->explain, "summary") : NULL;
    if (cur && json_integer_value(json_object_get(cur, "waiting")) == res->unplaced &&
        json_equal(json_object_get(cur, "summary"), summary ? summary : json_null()))
        return;
    json_t *rec = json_pack("{s:s, s:I, s:O, s:O, s:s}", "app", app_id, "waiting",
                            (json_int_t)res->unplaced, "summary", summary ? summary : json_null(),
                            "nodes",
                            res->explain && json_object_get(res->explain, "nodes")
                                ? json_object_get(res->explain, "nodes")
                                : json_array(),
                            "at", now);
    a_write_add(a, xasprintf("%s%s", REC_PLACEMENT_PREFIX, app_id), rec);
    json_object_set(a->placement, app_id, rec);
    log_info("sched", "app %s: %" PRId64 " instance(s) wait: %s", app_id, res->unplaced,
             summary ? json_string_value(summary) : "no node");
    json_decref(rec);
}

/* ---- canary groups --------------------------------------------------------------------- */

/* While an app has a canary, its group splits the app's traffic: the
 * canary's version gets its percent, the versions the main instances run
 * share the rest by their counts (a scale keeps instances on the version
 * that started them). */
static void a_canary_group(sched_assign_t *a, const char *app_id, const json_t *app,
                           const json_t *list, json_t *wanted, const char *now)
{
    const json_t *canary = json_object_get(app, "canary");
    if (!json_is_object(canary))
        return;
    char *name = spec_canary_group(app_id);
    json_object_set_new(wanted, name, json_true());
    int pct = (int)json_integer_value(json_object_get(canary, "percent"));
    json_int_t cver = json_integer_value(json_object_get(canary, "version"));
    char sig[65];
    rec_signature(json_object_get(app, "spec"), json_object_get(app, "config_env"),
                  json_integer_value(json_object_get(app, "restart")), sig);
    json_t *counts = json_object(); /* version -> main instances */
    size_t total = 0, i;
    json_t *e;
    json_array_foreach(list, i, e)
    {
        const char *s = json_str(e, "sig");
        if (!s || strcmp(s, sig) != 0)
            continue;
        char vk[32];
        snprintf(vk, sizeof(vk), "%" JSON_INTEGER_FORMAT,
                 json_integer_value(json_object_get(e, "version")));
        json_object_set_new(counts, vk, json_integer(json_integer_value(json_object_get(counts, vk)) + 1));
        total++;
    }
    json_t *members = json_array();
    const char *vk;
    json_t *cnt;
    json_object_foreach(counts, vk, cnt)
    {
        char *target = xasprintf("%s@%s", app_id, vk);
        json_int_t w = (json_int_t)((100 - pct) * 100 * json_integer_value(cnt) / (json_int_t)total);
        json_array_append_new(members, json_pack("{s:s, s:I}", "target", target, "weight", w));
        free(target);
    }
    if (!total) {
        /* nothing of the main version runs yet: route by the app's version */
        char *target = xasprintf("%s@%" JSON_INTEGER_FORMAT, app_id,
                                 json_integer_value(json_object_get(app, "version")));
        json_array_append_new(members, json_pack("{s:s, s:i}", "target", target, "weight",
                                                 (100 - pct) * 100));
        free(target);
    }
    char *ctarget = xasprintf("%s@%" JSON_INTEGER_FORMAT, app_id, cver);
    json_array_append_new(members, json_pack("{s:s, s:i}", "target", ctarget, "weight", pct * 100));
    free(ctarget);
    json_decref(counts);
    json_t *cur = json_object_get(a->groups, name);
    if (!cur || !json_equal(json_object_get(cur, "members"), members)) {
        const char *created = cur ? json_str(cur, "created_at") : NULL;
        json_t *rec = json_pack("{s:s, s:O, s:n, s:s, s:s, s:s}", "name", name, "members",
                                members, "sticky", "created_at", created ? created : now,
                                "updated_at", now, "app", app_id);
        a_write_add(a, xasprintf("%s%s", A_GROUPS_PREFIX, name), rec);
        json_object_set(a->groups, name, rec);
        json_decref(rec);
    }
    json_decref(members);
    free(name);
}

/* ---- deployments ------------------------------------------------------------------------ */

static void a_side_write(sched_assign_t *a, store_cmp_t *cmp, store_op_t *ops, size_t n,
                         const char *what);

/* The deployment failed its deadline and asks for a rollback: a new
 * version with the spec it started from, written beside the failure. */
static void a_rollback(sched_assign_t *a, const char *app_id, const json_t *app, json_t *dep,
                       const char *now)
{
    const json_t *from = json_object_get(dep, "from");
    const json_t *fspec = json_object_get(from, "spec");
    if (!json_is_object(fspec)) {
        a_write_add(a, xasprintf("%s%s", REC_DEPLOYMENTS_PREFIX, json_str(dep, "id")), dep);
        return;
    }
    json_t *spec = json_deep_copy(fspec);
    json_object_set(spec, "instances", json_object_get(json_object_get(app, "spec"), "instances"));
    char reason[128];
    snprintf(reason, sizeof(reason), "automatic, after deployment %s failed", json_str(dep, "id"));
    const json_t *fenv = json_object_get(from, "config_env");
    rec_change_t ch = {.kind = REC_ROLLBACK,
                       .app_id = app_id,
                       .cur = app,
                       .spec = spec,
                       .config_env = json_is_object(fenv) ? fenv : NULL,
                       .reason = reason,
                       .now = now};
    rec_out_t out;
    err_t err = {0};
    if (rec_change(&ch, &out, &err) || !out.changed) {
        if (out.changed || err.msg[0])
            log_warn("sched", "app %s: no rollback: %s", app_id, err.msg);
        rec_out_free(&out);
        json_decref(spec);
        a_write_add(a, xasprintf("%s%s", REC_DEPLOYMENTS_PREFIX, json_str(dep, "id")), dep);
        return;
    }
    char msg[160];
    snprintf(msg, sizeof(msg), "rolling back to version %" JSON_INTEGER_FORMAT " (deployment %s)",
             json_integer_value(json_object_get(from, "version")),
             json_str(out.deployment, "id"));
    a_step(json_object_get(dep, "steps"), now, "%s", msg);
    json_object_set_new(dep, "rolled_back_by", json_string(json_str(out.deployment, "id")));
    store_op_t ops[5];
    size_t n = rec_ops(app_id, &out, ops);
    size_t len;
    char *text = json_canonical(dep, &len);
    ops[n++] = (store_op_t){.type = STORE_OP_PUT,
                            .key = xasprintf("%s%s", REC_DEPLOYMENTS_PREFIX, json_str(dep, "id")),
                            .value = text,
                            .value_len = len};
    char *akey = xasprintf("%s%s", A_APPS_PREFIX, app_id);
    store_cmp_t cmp = {.key = akey,
                       .target = STORE_CMP_MOD,
                       .op = STORE_CMP_EQ,
                       .num = json_integer_value(json_object_get(a->app_rev, app_id))};
    log_warn("sched", "app %s: %s", app_id, msg);
    a_side_write(a, &cmp, ops, n, "rollback");
    rec_ops_free(ops, n);
    free(akey);
    rec_out_free(&out);
    json_decref(spec);
}

/* Advance the app's running deployment with what this pass saw and did:
 * progress, steps, success, or failure at its deadline. */
static void a_deployment(sched_assign_t *a, const char *app_id, const json_t *app, json_t *dep,
                         const a_result_t *res, const char *now)
{
    const char *id = json_str(dep, "id");
    json_t *d = json_deep_copy(dep);
    json_t *steps = json_object_get(d, "steps");
    if (!json_is_array(steps)) {
        steps = json_array();
        json_object_set_new(d, "steps", steps);
    }
    size_t i;
    json_t *st;
    json_array_foreach(res->steps, i, st)
        json_array_append(steps, st);
    const roll_out_t *r = &res->roll;
    json_t *progress = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "new", (json_int_t)r->main,
                                 "new_healthy", (json_int_t)r->main_healthy, "old",
                                 (json_int_t)r->old, "old_healthy", (json_int_t)r->old_healthy,
                                 "canary", (json_int_t)r->canary, "canary_healthy",
                                 (json_int_t)r->canary_healthy, "unplaced",
                                 (json_int_t)res->unplaced);
    json_object_set_new(d, "progress", progress);
    json_t *pl = json_object_get(a->placement, app_id);
    json_object_set(d, "placement", res->unplaced && pl ? pl : json_null());

    /* progress clock: any step towards the goal restarts it */
    uint64_t now_ms = a_ms();
    json_int_t score = r->main_healthy + r->canary_healthy - r->old;
    json_t *pg = json_object_get(a->progress, id);
    if (!pg || json_integer_value(json_object_get(pg, "score")) < score) {
        pg = json_pack("{s:I, s:I}", "score", score, "at_ms", (json_int_t)now_ms);
        json_object_set_new(a->progress, id, pg);
    }
    uint64_t since = (uint64_t)json_integer_value(json_object_get(pg, "at_ms"));
    json_int_t deadline_s = json_integer_value(
        json_object_get(json_object_get(app, "spec"), "progressDeadlineSeconds"));
    if (deadline_s <= 0)
        deadline_s = 600;

    bool finished = false;
    if (r->done && !res->unplaced) {
        json_object_set_new(d, "status", json_string("succeeded"));
        a_step(steps, now, "succeeded: %" PRId64 " instance(s) of version %" JSON_INTEGER_FORMAT
                           " healthy",
               r->main, json_integer_value(json_object_get(app, "version")));
        finished = true;
    } else if (now_ms - since >= (uint64_t)deadline_s * 1000) {
        char reason[512];
        snprintf(reason, sizeof(reason),
                 "no progress for %" JSON_INTEGER_FORMAT " s: %" PRId64 " of %" JSON_INTEGER_FORMAT
                 " new instance(s) healthy, %" PRId64 " old left%s%s",
                 deadline_s, r->main_healthy,
                 json_integer_value(json_object_get(json_object_get(app, "spec"), "instances")),
                 r->old, res->unplaced ? "; waiting for nodes: " : "",
                 res->unplaced && pl ? json_str(pl, "summary") : "");
        json_object_set_new(d, "status", json_string("failed"));
        json_object_set_new(d, "reason", json_string(reason));
        a_step(steps, now, "failed: %s", reason);
        log_warn("sched", "app %s: deployment %s failed: %s", app_id, id, reason);
        finished = true;
    }
    while (json_array_size(steps) > REC_STEPS_MAX)
        json_array_remove(steps, 0);
    if (finished) {
        json_object_set_new(d, "finished_at", json_string(now));
        json_object_del(a->progress, id);
    }
    bool changed = !json_equal(d, dep);
    if (changed)
        json_object_set_new(d, "updated_at", json_string(now));
    if (finished && strcmp(json_str(d, "status"), "failed") == 0 &&
        json_is_true(json_object_get(json_object_get(app, "spec"), "autoRollback"))) {
        a_rollback(a, app_id, app, d, now);
    } else if (changed) {
        a_write_add(a, xasprintf("%s%s", REC_DEPLOYMENTS_PREFIX, id), d);
        if (finished)
            log_info("sched", "app %s: deployment %s %s", app_id, id, json_str(d, "status"));
    }
    json_decref(d);
}

static int a_dep_age_cmp(const void *x, const void *y)
{
    const json_t *p = *(json_t *const *)x, *q = *(json_t *const *)y;
    const char *a = json_str(p, "created_at"), *b = json_str(q, "created_at");
    return strcmp(b ? b : "", a ? a : "");
}

/* Running deployments that are no longer their app's are superseded (or
 * cancelled with the app); finished ones beyond REC_FINISHED_KEEP per app
 * go. */
static void a_deployments_tidy(sched_assign_t *a, const char *now)
{
    json_t *per_app = json_object(); /* app -> [finished records] */
    const char *id;
    json_t *d;
    json_object_foreach(a->deps, id, d)
    {
        const char *app_id = json_str(d, "app");
        const char *st = json_str(d, "status");
        if (!app_id)
            continue;
        json_t *app = json_object_get(a->apps, app_id);
        if (st && strcmp(st, "running") == 0) {
            const char *cur = app ? json_str(app, "deployment") : NULL;
            if (cur && strcmp(cur, id) == 0)
                continue;
            json_t *c = json_deep_copy(d);
            json_object_set_new(c, "status", json_string(app ? "superseded" : "cancelled"));
            json_object_set_new(c, "reason", json_string(app ? "superseded by a newer change"
                                                             : "the app was deleted"));
            json_object_set_new(c, "finished_at", json_string(now));
            json_object_set_new(c, "updated_at", json_string(now));
            a_write_add(a, xasprintf("%s%s", REC_DEPLOYMENTS_PREFIX, id), c);
            json_decref(c);
            json_object_del(a->progress, id);
            continue;
        }
        json_t *l = json_object_get(per_app, app_id);
        if (!l) {
            l = json_array();
            json_object_set_new(per_app, app_id, l);
        }
        json_array_append(l, d);
    }
    const char *app_id;
    json_t *l;
    json_object_foreach(per_app, app_id, l)
    {
        size_t n = json_array_size(l);
        if (n <= REC_FINISHED_KEEP)
            continue;
        json_t **v = xcalloc(n, sizeof(*v));
        for (size_t i = 0; i < n; i++)
            v[i] = json_array_get(l, i);
        qsort(v, n, sizeof(*v), a_dep_age_cmp);
        for (size_t i = REC_FINISHED_KEEP; i < n; i++)
            a_write_add(a, xasprintf("%s%s", REC_DEPLOYMENTS_PREFIX, json_str(v[i], "id")), NULL);
        free(v);
    }
    json_decref(per_app);
}

/* ---- config rollouts --------------------------------------------------------------------- */

typedef struct a_cfg_read {
    sched_assign_t *a;
    char *app_id;
    char *prefix;
} a_cfg_read_t;

static void a_cfg_read_done(int status, const err_t *err, const store_result_t *res, void *data)
{
    a_cfg_read_t *r = data;
    sched_assign_t *a = r->a;
    a->side_inflight--;
    a->inflight--;
    json_t *app = a->stopping ? NULL : json_object_get(a->apps, r->app_id);
    if (status) {
        if (!a->stopping)
            log_warn("sched", "app %s: reading config %s: %s", r->app_id, r->prefix,
                     err_str(err, status));
    } else if (app) {
        json_t *env = rec_config_env(res->ops[0].kvs, res->ops[0].n_kvs, r->prefix);
        const json_t *cur = json_object_get(app, "config_env");
        if (!json_equal(env, cur ? (json_t *)cur : json_object())) {
            char now[40];
            a_now(now, sizeof(now));
            rec_change_t ch = {.kind = REC_CONFIG,
                               .app_id = r->app_id,
                               .cur = app,
                               .spec = json_object_get(app, "spec"),
                               .config_env = env,
                               .reason = "the config under its prefix changed",
                               .now = now};
            rec_out_t out;
            err_t e = {0};
            if (rec_change(&ch, &out, &e) == 0 && out.changed) {
                store_op_t ops[4];
                size_t n = rec_ops(r->app_id, &out, ops);
                char *akey = xasprintf("%s%s", A_APPS_PREFIX, r->app_id);
                store_cmp_t cmp = {.key = akey,
                                   .target = STORE_CMP_MOD,
                                   .op = STORE_CMP_EQ,
                                   .num = json_integer_value(json_object_get(a->app_rev, r->app_id))};
                log_info("sched", "app %s: config %s changed: version %" PRId64 ", deployment %s",
                         r->app_id, r->prefix, out.version_no, json_str(out.deployment, "id"));
                a_side_write(a, &cmp, ops, n, "config version");
                rec_ops_free(ops, n);
                free(akey);
            }
            rec_out_free(&out);
        }
        json_decref(env);
    }
    free(r->app_id);
    free(r->prefix);
    free(r);
    if (a->stopping)
        a_finish_stop(a);
}

/* Apps whose config prefix saw a change: read the prefix and, when the
 * environment differs, make a new version (one read per app at a time). */
static void a_config_check(sched_assign_t *a)
{
    void *tmp;
    const char *id;
    json_t *v;
    json_object_foreach_safe(a->config_dirty, tmp, id, v)
    {
        json_t *app = json_object_get(a->apps, id);
        const char *pre = app ? json_str(json_object_get(app, "spec"), "config") : NULL;
        if (!pre) {
            json_object_del(a->config_dirty, id);
            continue;
        }
        while (*pre == '/')
            pre++;
        size_t n = strlen(pre);
        while (n && pre[n - 1] == '/')
            n--;
        a_cfg_read_t *r = xcalloc(1, sizeof(*r));
        r->a = a;
        r->app_id = xstrdup(id);
        r->prefix = xstrndup(pre, n);
        char *key = xasprintf("%s%s/", REC_KV_PREFIX, r->prefix);
        a->inflight++;
        a->side_inflight++;
        if (store_get(a->store, key, true, a_cfg_read_done, r)) {
            a->inflight--;
            a->side_inflight--;
            free(r->app_id);
            free(r->prefix);
            free(r);
        }
        free(key);
        json_object_del(a->config_dirty, id);
    }
}

/* ---- one pass ------------------------------------------------------------------------------ */

static void a_reconcile(sched_assign_t *a)
{
    char now[40];
    a_now(now, sizeof(now));
    uint64_t now_ms = a_ms();
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
    place_cluster_t *pc = place_cluster_new();
    for (size_t i = 0; i < n_nodes; i++) {
        json_t *rec = nodes[i].rec;
        json_t *ports = json_object_get(rec, "ports");
        unsigned iso = 0;
        json_t *isos = json_object_get(rec, "isolates");
        if (!isos)
            iso = PLACE_ISO_PROCESS;
        size_t j;
        json_t *s;
        json_array_foreach(isos, j, s)
            iso |= a_iso_bit(json_string_value(s));
        const char *hostname = json_str(rec, "hostname");
        place_node_in_t in = {
            .id = nodes[i].id,
            .hostname = hostname ? hostname : nodes[i].id,
            .labels = json_object_get(rec, "labels"),
            .cpus = json_number_value(json_object_get(rec, "cpus")),
            .mem_mb = json_integer_value(json_object_get(rec, "mem_mb")),
            .ports_lo = (int)json_integer_value(json_array_get(ports, 0)),
            .ports_hi = (int)json_integer_value(json_array_get(ports, 1)),
            .isolates = iso,
        };
        err_t err = {0};
        nodes[i].idx = place_node_add(pc, &in, &err);
        if (nodes[i].idx < 0)
            log_warn("sched", "node %s left out of placement: %s", nodes[i].id, err.msg);
    }
    /* nodes that came back are no longer gone */
    void *tmp;
    json_object_foreach_safe(a->gone_since, tmp, id, v)
    {
        if (json_object_get(a->nodes, id))
            json_object_del(a->gone_since, id);
    }

    /* Live assignments grouped by app; the rest go. */
    json_t *lists = json_object();
    json_t *lost_nodes = json_object(); /* node id -> assignments removed */
    json_t *gone = json_object();       /* app id -> assignments removed */
    json_object_foreach(a->asg, id, v)
    {
        const char *node = json_str(v, "node");
        if (!node)
            continue; /* a_apply always sets it */
        const char *app_id = json_str(v, "app");
        json_t *app = app_id ? json_object_get(a->apps, app_id) : NULL;
        a_node_t *nd = a_node_find(nodes, n_nodes, node);
        bool keep = app && json_is_integer(json_object_get(v, "version"));
        if (keep && !nd && a->lost_delay_ms) {
            /* a node gone for less than the delay may come back */
            json_t *since = json_object_get(a->gone_since, node);
            if (!since) {
                since = json_integer((json_int_t)now_ms);
                json_object_set_new(a->gone_since, node, since);
                log_info("sched", "node %s gone: its instances are replaced in %" PRIu64 " s unless it returns",
                         node, a->lost_delay_ms / 1000);
            }
            keep = now_ms - (uint64_t)json_integer_value(since) < a->lost_delay_ms;
        } else if (keep && !nd) {
            keep = false;
        }
        if (keep) {
            json_t *list = json_object_get(lists, app_id);
            if (!list) {
                list = json_array();
                json_object_set_new(lists, app_id, list);
            }
            json_int_t pin = a_pool_pin(app);
            if (pin != json_integer_value(json_object_get(v, "poolPin"))) {
                /* the pin changed: rewrite the assignment as it was, with
                 * the new pin (same sig: nothing restarts) */
                json_t *rec = json_pack("{s:s, s:s, s:O, s:s, s:O, s:O}", "id", id, "app", app_id,
                                        "version", json_object_get(v, "version"), "node", node,
                                        "spec", json_object_get(v, "spec"), "sig",
                                        json_object_get(v, "sig"));
                a_set_pin(rec, pin);
                a_write_add(a, xasprintf("%s%s/%s", A_ASSIGN_PREFIX, node, id), rec);
                json_decref(rec);
                json_object_set_new(v, "poolPin", json_integer(pin));
            }
            int idx = nd ? nd->idx : -1;
            json_array_append_new(
                list, json_pack("{s:s, s:s, s:i, s:O, s:O, s:b}", "id", id, "node", node, "idx",
                                idx, "sig", json_object_get(v, "sig"), "version",
                                json_object_get(v, "version"), "healthy",
                                nd && a_inst_healthy(a, id, v)));
            if (idx >= 0)
                a_use(pc, idx, json_object_get(v, "spec"), 1);
            continue;
        }
        a_write_add(a, xasprintf("%s%s/%s", A_ASSIGN_PREFIX, node, id), NULL);
        if (!nd) {
            a_mark_lost(a, id, node, now);
            json_object_set_new(
                lost_nodes, node,
                json_integer(json_integer_value(json_object_get(lost_nodes, node)) + 1));
        } else if (app_id) {
            json_object_set_new(gone, app_id,
                                json_integer(json_integer_value(json_object_get(gone, app_id)) + 1));
        }
    }
    json_object_foreach(gone, id, v)
    {
        log_info("sched", "app %s: %" JSON_INTEGER_FORMAT " instance(s) removed (app deleted)", id,
                 json_integer_value(v));
    }
    json_decref(gone);
    json_object_foreach(lost_nodes, id, v)
    {
        log_info("sched", "node %s lost: %" JSON_INTEGER_FORMAT " assignment(s) moved", id,
                 json_integer_value(v));
        json_object_del(a->gone_since, id);
    }
    json_decref(lost_nodes);

    a_deployments_tidy(a, now);

    /* Apps in id order, so placement is deterministic. */
    size_t n_apps = json_object_size(a->apps);
    const char **app_ids = xcalloc(n_apps ? n_apps : 1, sizeof(*app_ids));
    k = 0;
    json_object_foreach(a->apps, id, v)
    {
        app_ids[k++] = id;
    }
    qsort(app_ids, n_apps, sizeof(*app_ids), a_str_cmp);
    json_t *groups_wanted = json_object();
    for (size_t i = 0; i < n_apps; i++) {
        json_t *app = json_object_get(a->apps, app_ids[i]);
        json_t *list = json_object_get(lists, app_ids[i]);
        if (!list) {
            list = json_array();
            json_object_set_new(lists, app_ids[i], list);
        }
        const char *dep_id = json_str(app, "deployment");
        json_t *dep = dep_id ? json_object_get(a->deps, dep_id) : NULL;
        const char *dst = dep ? json_str(dep, "status") : NULL;
        bool held = dst && strcmp(dst, "cancelled") == 0;
        a_result_t res = {.steps = json_array()};
        a_reconcile_app(a, app_ids[i], app, list, pc, nodes, n_nodes, held, now, &res);
        if (!held) {
            a_placement_record(a, app_ids[i], &res, now);
            if (dst && strcmp(dst, "running") == 0)
                a_deployment(a, app_ids[i], app, dep, &res, now);
        }
        a_canary_group(a, app_ids[i], app, list, groups_wanted, now);
        json_decref(res.explain);
        json_decref(res.steps);
    }
    /* canary groups whose canary ended go (the gateway falls back to the app) */
    json_object_foreach_safe(a->groups, tmp, id, v)
    {
        if (!json_object_get(groups_wanted, id)) {
            a_write_add(a, xasprintf("%s%s", A_GROUPS_PREFIX, id), NULL);
            json_object_del(a->groups, id);
        }
    }
    json_decref(groups_wanted);
    json_object_foreach_safe(a->placement, tmp, id, v)
    {
        if (!json_object_get(a->apps, id)) {
            a_write_add(a, xasprintf("%s%s", REC_PLACEMENT_PREFIX, id), NULL);
            json_object_del(a->placement, id);
        }
    }
    /* Rebalancing is looked for after a node joins, until a pass finds
     * nothing left to move (each move is one instance per app). */
    if (!a->rebal_moved && !json_object_size(a->rebal))
        a->rebal_due = false;
    a->rebal_moved = false;
    a_config_check(a);
    free(app_ids);
    json_decref(lists);
    place_cluster_free(pc);
    free(nodes);
}

/* Deadlines and lost-node delays pass without any store change: look
 * again every tick while either is pending. */
static void a_on_tick(uv_timer_t *t)
{
    sched_assign_t *a = t->data;
    if (a->stopping || !a->loaded)
        return;
    bool pending = json_object_size(a->gone_since) > 0 || json_object_size(a->rebal) > 0;
    const char *id;
    json_t *d;
    json_object_foreach(a->deps, id, d)
    {
        const char *st = json_str(d, "status");
        if (st && strcmp(st, "running") == 0)
            pending = true;
    }
    if (pending) {
        a->dirty = true;
        a_schedule(a);
    }
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
    uint64_t t0 = uv_hrtime();
    a_reconcile(a);
    /* A pass costs O(assignments); under a storm of reports (1,000
     * instances starting) space passes by ten times their cost, so the loop
     * the API and the agent share stays free for them. */
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    a->coalesce_ms = ms * 10 < A_COALESCE_MS ? A_COALESCE_MS : ms * 10 > 250 ? 250 : ms * 10;
    a_send_next(a);
}

/* Run a reconcile soon if one is due and nothing holds it back. */
static void a_schedule(sched_assign_t *a)
{
    if (a->stopping || !a->loaded || !a->dirty || a->inflight || a->n_w ||
        a->seen_rev < a->wait_rev)
        return;
    if (!uv_is_active((uv_handle_t *)&a->timer))
        uv_timer_start(&a->timer, a_on_timer, a->coalesce_ms ? a->coalesce_ms : A_COALESCE_MS, 0);
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
    json_object_clear(a->deps);
    json_object_clear(a->placement);
    json_object_clear(a->groups);
    json_object_clear(a->app_rev);
    for (size_t i = 0; i < res->n_ops; i++)
        for (size_t j = 0; j < res->ops[i].n_kvs; j++)
            a_apply(a, &res->ops[i].kvs[j], false);
    /* the KV may have changed while no scheduler ran */
    const char *aid;
    json_t *av;
    json_object_foreach(a->apps, aid, av)
    {
        if (json_str(json_object_get(av, "spec"), "config"))
            json_object_set_new(a->config_dirty, aid, json_true());
    }
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
    store_op_t ops[7] = {
        {.type = STORE_OP_GET, .key = A_APPS_PREFIX "/", .prefix = true},
        {.type = STORE_OP_GET, .key = A_NODES_PREFIX, .prefix = true},
        {.type = STORE_OP_GET, .key = A_ASSIGN_PREFIX, .prefix = true},
        {.type = STORE_OP_GET, .key = A_INST_PREFIX, .prefix = true},
        {.type = STORE_OP_GET, .key = REC_DEPLOYMENTS_PREFIX, .prefix = true},
        {.type = STORE_OP_GET, .key = REC_PLACEMENT_PREFIX "/", .prefix = true},
        {.type = STORE_OP_GET, .key = A_GROUPS_PREFIX "canary.", .prefix = true},
    };
    a->inflight++;
    if (store_txn(a->store, NULL, 0, ops, 7, NULL, 0, a_load_done, a)) {
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
    a->deps = json_object();
    a->placement = json_object();
    a->groups = json_object();
    a->app_rev = json_object();
    a->progress = json_object();
    a->config_dirty = json_object();
    a->gone_since = json_object();
    a->rebal = json_object();
    uv_timer_init(loop, &a->timer);
    a->timer.data = a;
    uv_timer_init(loop, &a->tick);
    a->tick.data = a;
    uv_timer_start(&a->tick, a_on_tick, A_TICK_MS, A_TICK_MS);
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
    json_decref(a->deps);
    json_decref(a->placement);
    json_decref(a->groups);
    json_decref(a->app_rev);
    json_decref(a->progress);
    json_decref(a->config_dirty);
    json_decref(a->gone_since);
    json_decref(a->rebal);
    free(a);
    if (done)
        done(done_data);
}

static void a_tick_closed(uv_handle_t *h)
{
    sched_assign_t *a = h->data;
    uv_close((uv_handle_t *)&a->timer, a_closed);
}

/* Free once no store callback can reach `a` any more. */
static void a_finish_stop(sched_assign_t *a)
{
    if (a->inflight || uv_is_closing((uv_handle_t *)&a->tick))
        return;
    uv_close((uv_handle_t *)&a->tick, a_tick_closed);
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
    uv_timer_stop(&a->tick);
    a_finish_stop(a);
}

void sched_assign_set_lost_delay(sched_assign_t *a, uint64_t ms)
{
    a->lost_delay_ms = ms;
}
