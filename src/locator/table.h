/* locator/table: the service table a locator serves, name -> endpoints.
 *
 * Every node's agent keeps one table of what runs healthy on it; a
 * metalocator keeps the merge of many nodes' tables; the locator RPC service
 * and the DNS server read a table and follow its changes. Names are app ids
 * ("/production/web"), app@version ("/production/web@3") and the agent's
 * own services ("drover/locator", ...). An entry with no endpoints does not
 * exist.
 *
 * Single-threaded: used on one loop thread. Listeners are called
 * synchronously from loc_table_set, after the table changed, in the order
 * they were added; a listener may remove itself (or another) from within. */
#ifndef DROVER_LOCATOR_TABLE_H
#define DROVER_LOCATOR_TABLE_H

#include <stddef.h>
#include <stdint.h>

typedef struct loc_ep {
    const char *host;     /* "10.0.0.5" */
    int port;             /* first named port of the instance */
    const char *instance; /* instance id, may be NULL */
    const char *node;     /* node id, may be NULL */
    int64_t version;      /* app version the instance runs */
} loc_ep_t;

typedef struct loc_entry {
    const char *name;
    const loc_ep_t *eps; /* sorted by (host, port); n == 0 when removed */
    size_t n;
    int64_t version; /* newest app version among the endpoints */
    const char *api; /* "service" or "worker" */
    /* Optional attributes of the name, opaque to the table: the msgpack
     * encoding of one map (today {"routes": [...]}, docs/protocol.md
     * "Entry attributes"), NULL/0 when none. Part of the entry's value: a
     * change of attrs alone is a change. */
    const void *attrs;
    size_t attrs_len;
} loc_entry_t;

typedef struct loc_table loc_table_t;

/* Called after `e` changed; e->n == 0 means the name was removed. `e` is
 * valid during the call only. */
typedef void (*loc_table_listener_fn)(loc_table_t *t, const loc_entry_t *e, void *data);

loc_table_t *loc_table_new(void);
void loc_table_free(loc_table_t *t);

/* Replace the endpoints of `name` (copied). n == 0 removes it. Bumps the
 * table's revision and calls the listeners, unless nothing changed. */
void loc_table_set(loc_table_t *t, const char *name, const loc_ep_t *eps, size_t n, int64_t version,
                   const char *api);
/* The same with attributes (copied; attrs NULL or attrs_len 0: none). */
void loc_table_set_attrs(loc_table_t *t, const char *name, const loc_ep_t *eps, size_t n,
                         int64_t version, const char *api, const void *attrs, size_t attrs_len);
/* NULL when the name has no endpoints. Valid until the next set. */
const loc_entry_t *loc_table_get(const loc_table_t *t, const char *name);
/* Every entry, in name order; fn returns non-zero to stop. */
void loc_table_foreach(const loc_table_t *t, int (*fn)(const loc_entry_t *e, void *data),
                       void *data);
size_t loc_table_count(const loc_table_t *t);
/* Increases with every change; a subscriber that saw revision R has seen
 * every change up to R. */
uint64_t loc_table_revision(const loc_table_t *t);

/* Returns a listener id (> 0) for loc_table_unlisten. */
int loc_table_listen(loc_table_t *t, loc_table_listener_fn fn, void *data);
void loc_table_unlisten(loc_table_t *t, int id);

#endif
