/* sqlite_internal: shared by the SQLite backend's files.
 *   sqlite.c        the store thread, its queues, batching, watch fan-out
 *   sqlite_db.c     schema, cached statements, executing requests in SQL
 *   sqlite_lease.c  in-memory lease expiry (hash by id + min-heap by time)
 * Everything in sq_t below the "store thread only" line is touched by the
 * store thread alone, which owns the sqlite3 connection. */
#ifndef DROVER_STORE_SQLITE_INTERNAL_H
#define DROVER_STORE_SQLITE_INTERNAL_H

#include "store/store_internal.h"

#include <sqlite3.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

/* ---- leases ----------------------------------------------------------- */

typedef struct sq_lease {
    struct sq_lease *hnext; /* hash chain */
    int64_t id;
    int64_t ttl_s;
    uint64_t expires_ms; /* monotonic clock (uv_hrtime) in ms */
    size_t heap_idx;
} sq_lease_t;

typedef struct sq_leases {
    sq_lease_t **buckets;
    size_t n_buckets; /* power of two, 0 before the first add */
    size_t n;
    sq_lease_t **heap; /* min-heap on expires_ms, n entries */
    size_t heap_cap;
} sq_leases_t;

sq_lease_t *sq_leases_find(const sq_leases_t *l, int64_t id);
sq_lease_t *sq_leases_add(sq_leases_t *l, int64_t id, int64_t ttl_s, uint64_t expires_ms);
/* Unlink and free. */
void sq_leases_remove(sq_leases_t *l, sq_lease_t *lease);
void sq_leases_set_expiry(sq_leases_t *l, sq_lease_t *lease, uint64_t expires_ms);
/* The lease that expires first, or NULL. */
sq_lease_t *sq_leases_next(const sq_leases_t *l);
/* Remove every lease and free the tables. */
void sq_leases_free(sq_leases_t *l);

/* ---- events ------------------------------------------------------------ */

/* The key/value bytes of the events made by one batch, shared by every
 * watch that gets them; the last holder frees it (loop or store thread). */
typedef struct sq_evblock {
    atomic_int refs;
    store_arena_t arena;
} sq_evblock_t;

typedef struct sq_ev {
    store_event_t ev;
    size_t klen;
} sq_ev_t;

/* The store thread's view of a registered watch. */
typedef struct sq_watch {
    struct sq_watch *next;
    store_watch_t *w;    /* loop-side handle; only its immutable fields are read */
    int64_t min_rev;     /* live events from this revision on */
    bool fresh;          /* registered by the batch being run */
    store_event_t *pend; /* events for the batch being run (replay + live) */
    size_t n_pend;
    size_t cap_pend;
} sq_watch_t;

/* ---- messages --------------------------------------------------------- */

typedef enum sq_in_kind { SQ_IN_REQ = 0, SQ_IN_WATCH, SQ_IN_UNWATCH } sq_in_kind_t;

typedef struct sq_in {
    struct sq_in *next;
    sq_in_kind_t kind;
    store_req_t *req;  /* REQ */
    store_watch_t *w;  /* WATCH */
    uint64_t watch_id; /* UNWATCH: by id, the handle may be gone */
} sq_in_t;

typedef enum sq_out_kind { SQ_OUT_DONE = 0, SQ_OUT_WATCH, SQ_OUT_STOPPED } sq_out_kind_t;

typedef struct sq_out {
    struct sq_out *next;
    sq_out_kind_t kind;
    store_req_t *req; /* DONE */
    store_watch_t *w; /* WATCH */
    int status;       /* WATCH: != 0 ends it */
    int64_t compact_rev;
    store_event_t *events; /* WATCH: malloc'd, n entries */
    size_t n;
    sq_evblock_t *block; /* WATCH: holds the bytes events point to */
    bool release;        /* WATCH: store_watch_release after delivering */
} sq_out_t;

typedef struct sq_outq {
    sq_out_t *head;
    sq_out_t *tail;
} sq_outq_t;

/* ---- statements ------------------------------------------------------- */

enum sq_stmt {
    SQ_BEGIN = 0,
    SQ_COMMIT,
    SQ_ROLLBACK,
    SQ_SAVEPOINT,
    SQ_RELEASE,
    SQ_ROLLBACK_TO,
    SQ_KV_GET,
    SQ_KV_RANGE,
    SQ_KV_RANGE_KEYS,
    SQ_KV_UPSERT,
    SQ_KV_DELETE,
    SQ_KV_DELETE_RANGE,
    SQ_KV_BY_LEASE,
    SQ_LOG_INSERT,
    SQ_LOG_REPLAY,
    SQ_LOG_COMPACT,
    SQ_META_UPDATE,
    SQ_LEASE_INSERT,
    SQ_LEASE_DELETE,
    SQ_STMT_COUNT
};

/* ---- the backend ------------------------------------------------------ */

typedef struct sq {
    store_t *s;
    uv_loop_t *loop;
    uv_async_t async; /* wakes the loop when out has messages */
    uv_thread_t thread;
    bool closing;   /* loop thread: close was called */
    size_t pending; /* loop thread: requests + watches not handed back yet */

    /* shared, under mu */
    uv_mutex_t mu;
    uv_cond_t cond;
    sq_in_t *in_head, *in_tail;
    sq_outq_t out;
    bool stop;
    bool started;
    bool open_done;
    int open_rc;
    err_t open_err;

    /* ---- store thread only ---- */
    char *path;
    int64_t keep_revisions;
    sqlite3 *db;
    sqlite3_stmt *st[SQ_STMT_COUNT];
    int64_t rev;
    int64_t compact_rev;
    int64_t next_lease;
    sq_leases_t leases;
    sq_watch_t *watches;
    int wal_pages;
    bool in_txn;
    bool broken; /* sqlite rolled the batch's transaction back on its own */
    err_t broken_err;

    /* events of the batch being run */
    sq_evblock_t *block;
    sq_ev_t *evs;
    size_t n_evs, cap_evs;

    /* scratch */
    store_kv_t *kvbuf;
    size_t cap_kvbuf;
} sq_t;

/* sqlite_db.c */
int sq_db_open(sq_t *q, err_t *err);
void sq_db_close(sq_t *q);
int sq_db_begin(sq_t *q, err_t *err);
int sq_db_commit(sq_t *q, err_t *err);
void sq_db_rollback(sq_t *q);
/* Run one request inside the batch's transaction; fills req->status/err and
 * results. A failing request leaves no trace (savepoint). */
void sq_db_exec(sq_t *q, store_req_t *req);
/* Append the history of sw's key range from `from` to sw->pend. */
int sq_db_replay(sq_t *q, sq_watch_t *sw, int64_t from, err_t *err);
/* Revoke every lease whose time is up (now_ms). */
void sq_db_expire(sq_t *q, uint64_t now_ms);
/* Compaction that keeps keep_revisions, bounded work per call. */
int sq_db_autocompact(sq_t *q, err_t *err);
/* Persist rev / compact_rev / next_lease. */
int sq_db_save_meta(sq_t *q, err_t *err);
/* After a failed batch: make the lease table match the database again. */
void sq_db_leases_reload(sq_t *q);
/* Move WAL content into the database file when the WAL has grown. */
void sq_db_maybe_checkpoint(sq_t *q);

uint64_t sq_now_ms(void);
void sq_evblock_unref(sq_evblock_t *b);

#endif
