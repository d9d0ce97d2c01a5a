/* store_internal: what the store front end (store.c) shares with its
 * backends (sqlite.c, later etcd.c). Not for use outside src/store.
 *
 * Split of work: store.c validates and deep-copies every call into a
 * store_req_t (or a store_watch_t), hands it to the backend through a
 * store_backend_ops_t, and runs the user's callback when the backend hands
 * the request back on the loop thread. A backend only executes requests and
 * streams watch events; it never calls user callbacks itself. */
#ifndef DROVER_STORE_INTERNAL_H
#define DROVER_STORE_INTERNAL_H

#include "store/store.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- arena: many small allocations freed at once ---------------------- */

/* A request's inputs and results are many small strings and arrays that all
 * die together when the callback returns; an arena makes that one free and
 * keeps result pointers stable. Single-threaded: an arena is handed between
 * threads only through a mutex-protected queue. */
typedef struct store_arena_blk store_arena_blk_t;
typedef struct store_arena {
    store_arena_blk_t *head;
} store_arena_t;

/* Memory aligned for any type; never NULL (aborts on OOM). */
void *store_arena_alloc(store_arena_t *a, size_t n);
/* Like store_arena_alloc but zeroed. */
void *store_arena_zalloc(store_arena_t *a, size_t n);
/* Copy n bytes and add a NUL (so values can be read as strings). p may be
 * NULL when n is 0; the result is never NULL. */
char *store_arena_memdup(store_arena_t *a, const void *p, size_t n);
void store_arena_free(store_arena_t *a);

/* ---- requests ---------------------------------------------------------- */

typedef enum store_req_kind {
    STORE_REQ_TXN = 0,
    STORE_REQ_LEASE_GRANT,
    STORE_REQ_LEASE_KEEPALIVE,
    STORE_REQ_LEASE_REVOKE,
    STORE_REQ_COMPACT,
} store_req_kind_t;

/* One queued call. Owned by store.c until submitted, then by the backend
 * until it calls store_req_complete(), which frees it. */
typedef struct store_req {
    struct store_req *next; /* free for the backend's own queues */
    store_t *s;
    store_req_kind_t kind;
    store_arena_t arena; /* inputs are copied here; backends put results here too */

    /* inputs (TXN); keys are NUL-terminated, values NUL-terminated copies */
    const store_cmp_t *cmps;
    size_t n_cmps;
    const store_op_t *success;
    size_t n_success;
    const store_op_t *failure;
    size_t n_failure;
    bool writes; /* some op in either branch is a PUT or DELETE */
    /* inputs (lease, compact) */
    int64_t lease_id; /* KEEPALIVE, REVOKE */
    int64_t ttl_s;    /* GRANT */
    int64_t rev;      /* COMPACT */

    store_cb cb;
    store_lease_cb lease_cb;
    void *data;

    /* outputs. status may already be non-zero at submit time (the arguments
     * were invalid): the backend must then complete the request, in order,
     * without running it. */
    int status;
    err_t err;
    store_result_t res; /* TXN, COMPACT (rev only) */
    int64_t out_lease;  /* lease calls */
    int64_t out_ttl;
} store_req_t;

/* ---- watches ----------------------------------------------------------- */

/* Allocated by store.c, freed by store_watch_release(). Fields above the
 * line are immutable after store_watch() and may be read by the backend's
 * own thread until it releases the watch. */
struct store_watch {
    store_t *s;
    uint64_t id; /* unique per store, never reused */
    char *key;   /* NUL-terminated copy */
    size_t key_len;
    bool prefix;
    int64_t start_rev;
    int init_status; /* non-zero: invalid arguments; backend ends the watch with it */
    /* ---- loop thread only ---- */
    store_watch_cb cb;
    void *data;
    bool done; /* cancelled or ended: never call cb again */
};

/* ---- backend interface ------------------------------------------------- */

/* Every function is called on the loop thread. The backend calls the
 * store_* functions below on the loop thread only. */
typedef struct store_backend_ops {
    const char *name;
    /* Open synchronously (may block the caller briefly: startup only). Fill
     * *be and the current revision. On failure nothing is left behind. */
    int (*open)(store_t *s, uv_loop_t *loop, const store_options_t *opts, void **be, int64_t *rev,
                err_t *err);
    /* Take ownership of req; execute requests in submission order and hand
     * each back with store_req_complete() (in that order). */
    void (*submit)(void *be, store_req_t *req);
    /* Start streaming w's events with store_watch_deliver(); end it with
     * store_watch_release() exactly once (after a final status, on cancel,
     * or when closing). */
    void (*watch_start)(void *be, store_watch_t *w);
    /* The user cancelled w (w->done is set): release it soon. */
    void (*watch_cancel)(void *be, store_watch_t *w);
    /* Stop: complete requests not yet run with -ECANCELED, release every
     * watch, free the backend, then call store_backend_closed(). */
    void (*close)(void *be);
} store_backend_ops_t;

extern const store_backend_ops_t store_sqlite_ops;

/* Run the request's callback (unless status says otherwise) and free it. */
void store_req_complete(store_req_t *req);
/* Free a request without calling anything (used by the front end only). */
void store_req_free(store_req_t *req);
/* Hand events (or a final status != 0) to the user unless w is done. */
void store_watch_deliver(store_watch_t *w, int status, const store_event_t *events, size_t n,
                         int64_t compact_rev);
/* The backend is done with w: tell the user -ECANCELED if nothing ended it
 * yet (store closing), then free it. */
void store_watch_release(store_watch_t *w);
/* Remember the newest revision the loop thread has seen. */
void store_note_revision(store_t *s, int64_t rev);
/* Last call of a closing backend: frees s and runs the close callback. */
void store_backend_closed(store_t *s);

/* Key range [lo, hi) of an exact key or a prefix, in byte order. hi must
 * hold STORE_KEY_MAX + 1 bytes; returns its length. An exact key's range is
 * key..key\0; a prefix with no successor (empty or all 0xff) gets a bound of
 * STORE_KEY_MAX + 1 0xff bytes, which sorts above every valid key. */
size_t store_key_range_end(const char *key, size_t len, bool prefix, unsigned char *hi);

#endif
