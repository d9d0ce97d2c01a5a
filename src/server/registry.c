/* registry: feeds the metalocator from the control plane's store.
 *   /nodes/<id>   every node record names its locator ("host:port"): a node
 *                 that registers is linked, one whose lease expired is
 *                 unlinked (with multicast announces and static peers, one
 *                 of the three ways a metalocator finds nodes);
 *   /groups/<name> routing groups: served to routers by `routing` and
 *                 resolvable by name on the metalocator. */
#include "server/registry.h"

#include "core/alloc.h"
#include "core/log.h"
#include "core/str.h"
#include "locator/ketama.h"

#include <errno.h>
#include <jansson.h>
#include <string.h>

#define REGISTRY_NODES  "/nodes/"
#define REGISTRY_GROUPS "/groups/"

typedef struct feed {
    struct registry *r;
    const char *prefix;
    void (*apply)(struct registry *r, const char *name, const char *value, size_t len,
                  bool deleted);
    store_watch_t *watch;
    bool loading;
} feed_t;

struct registry {
    store_t *store;
    meta_t *meta;
    loc_server_t *loc;
    feed_t feeds[2];
    bool stopping;
};

static void registry_node(registry_t *r, const char *id, const char *value, size_t len,
                          bool deleted)
{
    if (deleted) {
        meta_node_remove(r->meta, id);
        return;
    }
    json_t *rec = json_loadb(value, len, 0, NULL);
    const char *loc = json_string_value(json_object_get(rec, "locator"));
    if (loc && *loc && meta_node_add(r->meta, id, loc) != 0)
        log_warn("registry", "node %s: cannot link its locator %s", id, loc);
    json_decref(rec);
}

static void registry_group(registry_t *r, const char *name, const char *value, size_t len,
                           bool deleted)
{
    err_t err = {0};
    if (deleted) {
        loc_server_group_set(r->loc, name, NULL, 0, &err);
        return;
    }
    json_t *rec = json_loadb(value, len, 0, NULL);
    json_t *members = json_object_get(rec, "members");
    size_t n = json_array_size(members);
    ketama_member_t *m = xcalloc(n ? n : 1, sizeof(*m));
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(members, i);
        m[i].name = json_string_value(json_object_get(e, "target"));
        m[i].weight = (uint32_t)json_integer_value(json_object_get(e, "weight"));
        if (!m[i].name)
            m[i].name = "";
    }
    if (n && loc_server_group_set(r->loc, name, m, n, &err) != 0)
        log_warn("registry", "routing group %s not served: %s", name, err.msg);
    free(m);
    json_decref(rec);
}

static void feed_events(store_watch_t *w, int status, const store_event_t *ev, size_t n,
                        int64_t compact_rev, void *data)
{
    feed_t *f = data;
    if (status) {
        f->watch = NULL;
        if (!f->r->stopping && status != -ECANCELED)
            log_warn("registry", "watch of %s ended: %s", f->prefix, strerror(-status));
        return;
    }
    for (size_t i = 0; i < n; i++)
        f->apply(f->r, ev[i].kv.key + strlen(f->prefix), ev[i].kv.value, ev[i].kv.value_len,
                 ev[i].type == STORE_EVENT_DELETE);
}

static void registry_maybe_free(registry_t *r)
{
    if (r->stopping && !r->feeds[0].loading && !r->feeds[1].loading)
        free(r);
}

static void feed_loaded(int status, const err_t *err, const store_result_t *res, void *data)
{
    feed_t *f = data;
    registry_t *r = f->r;
    f->loading = false;
    if (r->stopping) {
        registry_maybe_free(r);
        return;
    }
    if (status) {
        log_warn("registry", "reading %s: %s", f->prefix, err_str(err, status));
        return;
    }
    const store_op_result_t *op = &res->ops[0];
    for (size_t i = 0; i < op->n_kvs; i++)
        f->apply(r, op->kvs[i].key + strlen(f->prefix), op->kvs[i].value, op->kvs[i].value_len,
                 false);
    if (store_watch(r->store, f->prefix, true, res->rev + 1, feed_events, f, &f->watch))
        f->watch = NULL;
}

int registry_start(store_t *store, meta_t *meta, loc_server_t *loc, registry_t **out, err_t *err)
{
    registry_t *r = xcalloc(1, sizeof(*r));
    r->store = store;
    r->meta = meta;
    r->loc = loc;
    r->feeds[0] = (feed_t){.r = r, .prefix = REGISTRY_NODES, .apply = registry_node};
    r->feeds[1] = (feed_t){.r = r, .prefix = REGISTRY_GROUPS, .apply = registry_group};
    for (int i = 0; i < 2; i++) {
        r->feeds[i].loading = true;
        int rc = store_get(store, r->feeds[i].prefix, true, feed_loaded, &r->feeds[i]);
        if (rc) {
            r->feeds[i].loading = false;
            r->stopping = true;
            registry_maybe_free(r);
            return err_set(err, rc, "reading the registry: %s", strerror(-rc));
        }
    }
    *out = r;
    return 0;
}

void registry_stop(registry_t *r)
{
    if (!r)
        return;
    r->stopping = true;
    for (int i = 0; i < 2; i++) {
        if (r->feeds[i].watch)
            store_watch_cancel(r->feeds[i].watch);
        r->feeds[i].watch = NULL;
    }
    registry_maybe_free(r);
}
