/* store: drover's desired-state store. Revisioned keys with etcd v3
 * semantics, so the SQLite backend (embedded default) and the etcd backend
 * (HA, a later issue) are interchangeable behind this interface.
 *
 * Model (as etcd v3):
 *  - one global revision, incremented by every write transaction (a txn with
 *    several ops makes one revision; a put or delete is a one-op txn);
 *  - per key: create_rev, mod_rev, version (number of puts since creation,
 *    reset by delete) and the lease it is attached to (0 = none);
 *  - watch a key or prefix from a revision: every change at or after that
 *    revision is delivered in revision order, none skipped, until the watch
 *    is cancelled; a start revision older than the compaction point fails
 *    with -ESTALE (the watcher must re-read and resume from the current rev);
 *  - leases with a TTL; when a lease expires or is revoked every key attached
 *    to it is deleted in one revision.
 *
 * Threading: every call is made on the loop thread given to store_open, and
 * every callback runs on that loop thread. Backends never do I/O on the loop
 * thread (the SQLite backend runs its own thread; etcd uses async HTTP).
 * A call never both fails synchronously and calls its callback: when a
 * function returns non-zero, its callback will not run.
 *
 * Ownership: data passed to a call (keys, values, op arrays) is copied
 * before the call returns. Results passed to callbacks belong to the store
 * and are valid only during the callback; copy what you keep. */
#ifndef DROVER_STORE_H
#define DROVER_STORE_H

#include "core/err.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct store store_t;
typedef struct store_watch store_watch_t;

/* Key and value limits, enforced by every backend with -EINVAL / -E2BIG. */
#define STORE_KEY_MAX   1024
#define STORE_VALUE_MAX (1536 * 1024)
/* At most this many compares, and this many ops per branch, in one txn
 * (etcd's default --max-txn-ops); more fails with -E2BIG. */
#define STORE_TXN_OPS_MAX 128
/* Lease TTLs are 1..STORE_LEASE_TTL_MAX seconds (etcd's MaxLeaseTTL). */
#define STORE_LEASE_TTL_MAX 9000000000LL

typedef struct store_kv {
    const char *key;
    const char *value; /* NUL-terminated for convenience; may hold NULs */
    size_t value_len;
    int64_t create_rev;
    int64_t mod_rev;
    int64_t version;
    int64_t lease;
} store_kv_t;

typedef enum store_op_type {
    STORE_OP_GET = 0, /* key exact; with prefix=true, every key starting with key */
    STORE_OP_PUT = 1,
    STORE_OP_DELETE = 2, /* key exact; with prefix=true, the whole prefix */
} store_op_type_t;

typedef struct store_op {
    store_op_type_t type;
    const char *key;
    bool prefix;       /* GET/DELETE: treat key as a prefix */
    const char *value; /* PUT */
    size_t value_len;  /* PUT */
    int64_t lease;     /* PUT: attach to this lease (0 = none) */
    bool keys_only;    /* GET: leave value NULL/0 in results */
    size_t limit;      /* GET: at most this many kvs (0 = no limit) */
} store_op_t;

typedef enum store_cmp_target {
    STORE_CMP_VERSION = 0,
    STORE_CMP_CREATE = 1,
    STORE_CMP_MOD = 2,
    STORE_CMP_VALUE = 3,
} store_cmp_target_t;

typedef enum store_cmp_op {
    STORE_CMP_EQ = 0,
    STORE_CMP_NE = 1,
    STORE_CMP_LT = 2,
    STORE_CMP_GT = 3,
} store_cmp_op_t;

/* A compare on one key. A missing key has version, create_rev and mod_rev 0
 * and never equals any value (etcd semantics). */
typedef struct store_cmp {
    const char *key;
    store_cmp_target_t target;
    store_cmp_op_t op;
    int64_t num;       /* VERSION/CREATE/MOD */
    const char *value; /* VALUE */
    size_t value_len;
} store_cmp_t;

/* Result of one op inside a txn. */
typedef struct store_op_result {
    store_op_type_t type;
    store_kv_t *kvs; /* GET: matching keys in key order; PUT/DELETE: previous kvs */
    size_t n_kvs;
    size_t deleted; /* DELETE: number of keys removed */
    bool more;      /* GET: limit cut the result */
} store_op_result_t;

typedef struct store_result {
    int64_t rev;            /* store revision the operation ran at (after it, for writes) */
    bool succeeded;         /* txn: compares held, success ops ran */
    store_op_result_t *ops; /* results of the ops that ran */
    size_t n_ops;
} store_result_t;

/* status: 0 or negative errno; err holds context when status != 0 (err is
 * NULL when status == 0, res is NULL when status != 0).
 * Argument errors (empty or too long key -> -EINVAL, value too large ->
 * -E2BIG, unknown lease -> -ENOENT, ...) are reported through the callback
 * with err naming the culprit, in call order; the functions below return
 * non-zero only for a NULL store or a store being closed (-ECANCELED). */
typedef void (*store_cb)(int status, const err_t *err, const store_result_t *res, void *data);

typedef struct store_event {
    enum { STORE_EVENT_PUT = 0, STORE_EVENT_DELETE = 1 } type;
    store_kv_t kv;   /* for DELETE: key, mod_rev = revision of the delete, value empty */
    store_kv_t prev; /* previous version of the key; prev.mod_rev == 0 when none */
} store_event_t;

/* Called with events in revision order. status != 0 ends the watch: -ESTALE
 * (start revision compacted; compact_rev says where history starts) or
 * another error. After a status != 0 call, or after store_watch_cancel, the
 * callback is not called again. */
typedef void (*store_watch_cb)(store_watch_t *w, int status, const store_event_t *events, size_t n,
                               int64_t compact_rev, void *data);

typedef void (*store_lease_cb)(int status, const err_t *err, int64_t lease_id, int64_t ttl_s,
                               void *data);

typedef struct store_options {
    const char *backend;    /* "sqlite" (default) or "etcd" (later) */
    const char *path;       /* sqlite: database file */
    const char *endpoints;  /* etcd: comma-separated URLs (later) */
    int64_t keep_revisions; /* automatic compaction keeps at least this many (default 10000) */
} store_options_t;

/* Open a store bound to `loop`. Recovers after a crash: every write that was
 * acknowledged before the crash is there after store_open. Blocks until the
 * database is open and recovered (startup only). SQLite: the file is locked
 * for this process (a second open fails with -EBUSY); leases restart with a
 * full TTL. */
int store_open(uv_loop_t *loop, const store_options_t *opts, store_t **out, err_t *err);
/* Stop the backend; pending callbacks run with -ECANCELED before `cb` (may
 * be NULL) runs; then the store is freed. Active watches end with -ECANCELED. */
void store_close(store_t *s, void (*cb)(void *data), void *data);

/* Current revision as last seen on the loop thread (cheap, no I/O). */
int64_t store_revision(const store_t *s);

int store_txn(store_t *s, const store_cmp_t *cmps, size_t n_cmps, const store_op_t *success,
              size_t n_success, const store_op_t *failure, size_t n_failure, store_cb cb,
              void *data);

/* Conveniences over store_txn (results as a one-op txn). */
int store_get(store_t *s, const char *key, bool prefix, store_cb cb, void *data);
int store_put(store_t *s, const char *key, const void *value, size_t len, int64_t lease,
              store_cb cb, void *data);
int store_delete(store_t *s, const char *key, bool prefix, store_cb cb, void *data);

/* Watch `key` (or every key under it when prefix; "" with prefix watches
 * everything) from start_rev (0 = only changes after now). The handle is
 * owned by the store: it stays valid until store_watch_cancel() returns or
 * until a callback with status != 0 returns (-ESTALE, -EINVAL for a bad key
 * or start_rev, -ECANCELED when the store closes); drop it then. Events come
 * in batches; events of one revision are never split across callbacks. */
int store_watch(store_t *s, const char *key, bool prefix, int64_t start_rev, store_watch_cb cb,
                void *data, store_watch_t **out);
/* The callback will not be called after this returns. May be called from
 * inside the watch's own callback; a no-op after a status != 0 callback. */
void store_watch_cancel(store_watch_t *w);

int store_lease_grant(store_t *s, int64_t ttl_s, store_lease_cb cb, void *data);
int store_lease_keepalive(store_t *s, int64_t lease_id, store_lease_cb cb, void *data);
int store_lease_revoke(store_t *s, int64_t lease_id, store_lease_cb cb, void *data);

/* Drop history before `rev` (watches from older revisions get -ESTALE).
 * rev above the current revision fails with -EINVAL; a rev at or below the
 * current compaction point succeeds and does nothing. */
int store_compact(store_t *s, int64_t rev, store_cb cb, void *data);

#endif
