/* registry: feeds the metalocator from the server's node registry. Every
 * node record under /nodes/ names its locator ("host:port"); a node that
 * registers is linked, one whose lease expired is unlinked. This is one of
 * the three ways a metalocator finds nodes (with multicast announces and
 * static peers). */
#include "server/registry.h"

#include "core/alloc.h"
#include "core/log.h"
#include "core/str.h"

#include <errno.h>
#include <jansson.h>
#include <string.h>

#define REGISTRY_PREFIX "/nodes/"

struct registry {
    store_t *store;
    meta_t *meta;
    store_watch_t *watch;
    bool stopping;
    bool loading;
};

static void registry_apply(registry_t *r, const char *key, const char *value, size_t len,
                           bool deleted)
{
    const char *id = key + strlen(REGISTRY_PREFIX);
    if (deleted) {
        meta_node_remove(r->meta, id);
        return;
    }
    json_t *rec = json_loadb(value, len, 0, NULL);
    const char *loc = json_string_value(json_object_get(rec, "locator"));
    if (loc && *loc) {
        if (meta_node_add(r->meta, id, loc) != 0)
            log_warn("registry", "node %s: cannot link its locator %s", id, loc);
    }
    json_decref(rec);
}

static void registry_events(store_watch_t *w, int status, const store_event_t *ev, size_t n,
                            int64_t compact_rev, void *data)
{
    registry_t *r = data;
    if (status) {
        r->watch = NULL;
        if (!r->stopping && status != -ECANCELED)
            log_warn("registry", "node registry watch ended: %s", strerror(-status));
        return;
    }
    for (size_t i = 0; i < n; i++)
        registry_apply(r, ev[i].kv.key, ev[i].kv.value, ev[i].kv.value_len,
                       ev[i].type == STORE_EVENT_DELETE);
}

static void registry_loaded(int status, const err_t *err, const store_result_t *res, void *data)
{
    registry_t *r = data;
    r->loading = false;
    if (r->stopping) {
        free(r);
        return;
    }
    if (status) {
        log_warn("registry", "reading the node registry: %s", err_str(err, status));
        return;
    }
    const store_op_result_t *op = &res->ops[0];
    for (size_t i = 0; i < op->n_kvs; i++)
        registry_apply(r, op->kvs[i].key, op->kvs[i].value, op->kvs[i].value_len, false);
    if (store_watch(r->store, REGISTRY_PREFIX, true, res->rev + 1, registry_events, r, &r->watch))
        r->watch = NULL;
}

int registry_start(store_t *store, meta_t *meta, registry_t **out, err_t *err)
{
    registry_t *r = xcalloc(1, sizeof(*r));
    r->store = store;
    r->meta = meta;
    r->loading = true;
    int rc = store_get(store, REGISTRY_PREFIX, true, registry_loaded, r);
    if (rc) {
        free(r);
        return err_set(err, rc, "reading the node registry: %s", strerror(-rc));
    }
    *out = r;
    return 0;
}

void registry_stop(registry_t *r)
{
    if (!r)
        return;
    r->stopping = true;
    if (r->watch)
        store_watch_cancel(r->watch);
    r->watch = NULL;
    if (!r->loading)
        free(r);
}
