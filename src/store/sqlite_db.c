/* sqlite_db.c: the SQLite backend's data layer, run on the store thread
 * only. Tables:
 *   kv(key, create_rev, mod_rev, version, lease, value)   current state
 *   log(rev, type, key, create_rev, version, lease, prev_*, value, prev_value)
 *       one row per changed key per revision, in rowid order, so a watch
 *       can replay history (several rows share a rev in a multi-op txn)
 *   leases(id, ttl)   expiry times are kept in memory (sqlite_lease.c)
 *   meta(rev, compact_rev, next_lease)
 * Keys are bound as BLOBs everywhere, so SQLite compares them bytewise like
 * etcd, and a prefix is the range [prefix, successor(prefix)), which uses
 * the key index (LIKE would not, and would treat % and _ specially). */
#include "core/alloc.h"
#include "core/log.h"
#include "store/sqlite_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SQ_SCHEMA_VERSION 1
#define SQ_APP_ID         0x64727672 /* "drvr" */
/* Checkpoint once the WAL holds this many pages (as SQLite's default), but
 * after a batch has been acknowledged rather than inside its COMMIT. */
#define SQ_CHECKPOINT_PAGES 1000
/* Bounded work for one automatic compaction. */
#define SQ_COMPACT_MAX_STEP 10000

static const char sq_schema[] =
    "CREATE TABLE IF NOT EXISTS meta("
    " id INTEGER PRIMARY KEY CHECK (id = 0), rev INTEGER NOT NULL,"
    " compact_rev INTEGER NOT NULL, next_lease INTEGER NOT NULL);"
    "INSERT OR IGNORE INTO meta(id, rev, compact_rev, next_lease) VALUES(0, 0, 0, 1);"
    "CREATE TABLE IF NOT EXISTS kv("
    " key BLOB NOT NULL UNIQUE, create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL,"
    " version INTEGER NOT NULL, lease INTEGER NOT NULL, value BLOB NOT NULL);"
    "CREATE INDEX IF NOT EXISTS kv_lease ON kv(lease) WHERE lease <> 0;"
    "CREATE TABLE IF NOT EXISTS log("
    " rev INTEGER NOT NULL, type INTEGER NOT NULL, key BLOB NOT NULL,"
    " create_rev INTEGER NOT NULL, version INTEGER NOT NULL, lease INTEGER NOT NULL,"
    " prev_create_rev INTEGER NOT NULL, prev_mod_rev INTEGER NOT NULL,"
    " prev_version INTEGER NOT NULL, prev_lease INTEGER NOT NULL,"
    " value BLOB, prev_value BLOB);"
    "CREATE INDEX IF NOT EXISTS log_rev ON log(rev);"
    "CREATE TABLE IF NOT EXISTS leases(id INTEGER PRIMARY KEY, ttl INTEGER NOT NULL);";

static const char *const sq_sql[SQ_STMT_COUNT] = {
    [SQ_BEGIN] = "BEGIN",
    [SQ_COMMIT] = "COMMIT",
    [SQ_ROLLBACK] = "ROLLBACK",
    [SQ_SAVEPOINT] = "SAVEPOINT req",
    [SQ_RELEASE] = "RELEASE req",
    [SQ_ROLLBACK_TO] = "ROLLBACK TO req",
    [SQ_KV_GET] = "SELECT create_rev, mod_rev, version, lease, value FROM kv WHERE key = ?1",
    [SQ_KV_RANGE] = "SELECT key, create_rev, mod_rev, version, lease, value FROM kv"
                    " WHERE key >= ?1 AND key < ?2 ORDER BY key LIMIT ?3",
    [SQ_KV_RANGE_KEYS] = "SELECT key, create_rev, mod_rev, version, lease FROM kv"
                         " WHERE key >= ?1 AND key < ?2 ORDER BY key LIMIT ?3",
    [SQ_KV_UPSERT] = "INSERT INTO kv(key, create_rev, mod_rev, version, lease, value)"
                     " VALUES(?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(key) DO UPDATE SET"
                     " mod_rev = excluded.mod_rev, version = excluded.version,"
                     " lease = excluded.lease, value = excluded.value",
    [SQ_KV_DELETE] = "DELETE FROM kv WHERE key = ?1",
    [SQ_KV_DELETE_RANGE] = "DELETE FROM kv WHERE key >= ?1 AND key < ?2",
    [SQ_KV_BY_LEASE] = "SELECT key, create_rev, mod_rev, version, lease, value FROM kv"
                       " WHERE lease = ?1 AND lease <> 0 ORDER BY key",
    [SQ_LOG_INSERT] = "INSERT INTO log(rev, type, key, create_rev, version, lease,"
                      " prev_create_rev, prev_mod_rev, prev_version, prev_lease, value,"
                      " prev_value) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    [SQ_LOG_REPLAY] = "SELECT rev, type, key, create_rev, version, lease, prev_create_rev,"
                      " prev_mod_rev, prev_version, prev_lease, value, prev_value FROM log"
                      " WHERE rev >= ?1 AND key >= ?2 AND key < ?3 ORDER BY rev, rowid",
    [SQ_LOG_COMPACT] = "DELETE FROM log WHERE rev < ?1",
    [SQ_META_UPDATE] = "UPDATE meta SET rev = ?1, compact_rev = ?2, next_lease = ?3 WHERE id = 0",
    [SQ_LEASE_INSERT] = "INSERT INTO leases(id, ttl) VALUES(?1, ?2)",
    [SQ_LEASE_DELETE] = "DELETE FROM leases WHERE id = ?1",
};

uint64_t sq_now_ms(void)
{
    return uv_hrtime() / 1000000u;
}

/* ---- errors ----------------------------------------------------------- */

static int sq_errno(sq_t *q, int rc)
{
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return -EBUSY;
    case SQLITE_NOMEM: return -ENOMEM;
    case SQLITE_READONLY: return -EROFS;
    case SQLITE_FULL: return -ENOSPC;
    case SQLITE_TOOBIG: return -E2BIG;
    case SQLITE_CANTOPEN: {
        int e = q->db ? sqlite3_system_errno(q->db) : 0;
        return e > 0 ? -e : -EIO;
    }
    default: return -EIO;
    }
}

/* Turn a SQLite failure into our error idiom. SQLite rolls the whole
 * transaction back by itself after some errors (disk full, I/O error); the
 * batch must then fail as a whole, so remember that in q->broken. */
static int sq_fail(sq_t *q, err_t *err, int rc, const char *what)
{
    int code = sq_errno(q, rc);
    const char *msg = q->db ? sqlite3_errmsg(q->db) : sqlite3_errstr(rc);
    if (q->in_txn && q->db && sqlite3_get_autocommit(q->db) && !q->broken) {
        q->broken = true;
        err_set(&q->broken_err, code, "store: %s: %s", what, msg);
    }
    return err_set(err, code, "store: %s: %s", what, msg);
}

/* Step a statement that returns no rows, then reset it for reuse. */
static int sq_done(sq_t *q, sqlite3_stmt *st, err_t *err, const char *what)
{
    int rc = sqlite3_step(st);
    int ret = 0;
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        ret = sq_fail(q, err, rc, what);
    sqlite3_reset(st);
    return ret;
}

/* An empty key or value must be bound as a zero-length BLOB, never NULL
 * (bind_blob with a NULL pointer binds SQL NULL). */
static void sq_bind_blob(sqlite3_stmt *st, int i, const void *p, size_t n)
{
    sqlite3_bind_blob64(st, i, n ? p : "", n, SQLITE_STATIC);
}

static int sq_exec(sq_t *q, const char *sql, err_t *err)
{
    char *emsg = NULL;
    int rc = sqlite3_exec(q->db, sql, NULL, NULL, &emsg);
    if (rc == SQLITE_OK)
        return 0;
    int code = sq_errno(q, rc);
    err_set(err, code, "store: %s: %s", q->path, emsg ? emsg : sqlite3_errstr(rc));
    sqlite3_free(emsg);
    return code;
}

/* Run a one-row query and return its first column (for PRAGMAs). */
static int sq_query_int(sq_t *q, const char *sql, int64_t *out, err_t *err)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(q->db, sql, -1, &st, NULL);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            *out = sqlite3_column_int64(st, 0);
            rc = SQLITE_OK;
        }
    }
    int ret = rc == SQLITE_OK ? 0 : sq_fail(q, err, rc, sql);
    sqlite3_finalize(st);
    return ret;
}

/* ---- open / close ----------------------------------------------------- */

static int sq_wal_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
    (void)db;
    (void)name;
    ((sq_t *)arg)->wal_pages = pages;
    return SQLITE_OK;
}

/* Every open gives each lease a full TTL again: expiry times are not worth a
 * disk write per keepalive, and the holder had no chance to renew while the
 * store was down. Leases still in the table keep their expiry (used after a
 * failed batch). */
void sq_db_leases_reload(sq_t *q)
{
    sq_leases_t fresh = {0};
    uint64_t now = sq_now_ms();
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(q->db, "SELECT id, ttl FROM leases", -1, &st, NULL);
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t id = sqlite3_column_int64(st, 0), ttl = sqlite3_column_int64(st, 1);
        sq_lease_t *old = sq_leases_find(&q->leases, id);
        sq_leases_add(&fresh, id, ttl, old ? old->expires_ms : now + (uint64_t)ttl * 1000u);
        rc = SQLITE_OK;
    }
    if (rc != SQLITE_DONE)
        log_error("store", "reloading leases from %s: %s", q->path, sqlite3_errmsg(q->db));
    sqlite3_finalize(st);
    sq_leases_free(&q->leases);
    q->leases = fresh;
}

static int sq_db_schema(sq_t *q, err_t *err)
{
    int64_t app = 0, ver = 0;
    int rc = sq_exec(q, "BEGIN IMMEDIATE", err);
    if (rc) {
        if (rc == -EBUSY)
            return err_set(err, -EBUSY, "store: database %s is in use by another process", q->path);
        return rc;
    }
    if ((rc = sq_query_int(q, "PRAGMA application_id", &app, err)) ||
        (rc = sq_query_int(q, "PRAGMA user_version", &ver, err)))
        goto fail;
    if (app != 0 && app != SQ_APP_ID) {
        rc = err_set(err, -EINVAL, "store: %s is an SQLite database of another application",
                     q->path);
        goto fail;
    }
    if (ver > SQ_SCHEMA_VERSION) {
        rc = err_set(err, -EINVAL,
                     "store: %s has schema version %" PRId64 ", newer than this drover's (%d)",
                     q->path, ver, SQ_SCHEMA_VERSION);
        goto fail;
    }
    char pragmas[96];
    snprintf(pragmas, sizeof(pragmas), "PRAGMA application_id = %d; PRAGMA user_version = %d;",
             SQ_APP_ID, SQ_SCHEMA_VERSION);
    if ((rc = sq_exec(q, sq_schema, err)) || (rc = sq_exec(q, pragmas, err)) ||
        (rc = sq_exec(q, "COMMIT", err)))
        goto fail;
    return 0;
fail:
    sqlite3_exec(q->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

/* Open the database for this process alone: locking_mode=EXCLUSIVE keeps
 * the file locked from the first access until close, so a second drover on
 * the same file fails fast instead of running with a stale view of the
 * revision counter (which lives in memory). WAL + synchronous=FULL makes a
 * COMMIT durable (the WAL is fsynced) before it returns. */
int sq_db_open(sq_t *q, err_t *err)
{
    int rc = sqlite3_open_v2(
        q->path, &q->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        rc = sq_fail(q, err, rc, "opening the database");
        err_wrap(err, rc, "%s", q->path);
        goto fail;
    }
    sqlite3_busy_timeout(q->db, 200);
    if ((rc = sq_exec(q, "PRAGMA locking_mode = EXCLUSIVE", err)))
        goto fail;
    /* journal_mode returns the mode in effect; insist on WAL. */
    sqlite3_stmt *st = NULL;
    rc = sqlite3_prepare_v2(q->db, "PRAGMA journal_mode = WAL", -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        rc = sq_fail(q, err, rc, "setting journal_mode=WAL");
        if (rc == -EBUSY)
            err_set(err, -EBUSY, "store: database %s is in use by another process", q->path);
        sqlite3_finalize(st);
        goto fail;
    }
    const char *mode = (const char *)sqlite3_column_text(st, 0);
    char mode_buf[16];
    snprintf(mode_buf, sizeof(mode_buf), "%s", mode ? mode : "none");
    sqlite3_finalize(st);
    if (strcmp(mode_buf, "wal") != 0) {
        rc = err_set(err, -EINVAL, "store: %s: cannot use write-ahead logging (journal mode %s)",
                     q->path, mode_buf);
        goto fail;
    }
    if ((rc = sq_exec(q,
                      "PRAGMA synchronous = FULL; PRAGMA journal_size_limit = 67108864;"
                      " PRAGMA cache_size = -16384; PRAGMA foreign_keys = OFF;",
                      err)))
        goto fail;
    sqlite3_wal_hook(q->db, sq_wal_hook, q); /* replaces the auto-checkpoint */
    if ((rc = sq_db_schema(q, err)))
        goto fail;
    for (int i = 0; i < SQ_STMT_COUNT; i++) {
        rc = sqlite3_prepare_v3(q->db, sq_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &q->st[i], NULL);
        if (rc != SQLITE_OK) {
            rc = sq_fail(q, err, rc, "preparing statements");
            goto fail;
        }
    }
    if ((rc = sq_query_int(q, "SELECT rev FROM meta WHERE id = 0", &q->rev, err)) ||
        (rc = sq_query_int(q, "SELECT compact_rev FROM meta WHERE id = 0", &q->compact_rev, err)) ||
        (rc = sq_query_int(q, "SELECT next_lease FROM meta WHERE id = 0", &q->next_lease, err)))
        goto fail;
    sq_db_leases_reload(q);
    return 0;
fail:
    sq_db_close(q);
    return rc;
}

void sq_db_close(sq_t *q)
{
    for (int i = 0; i < SQ_STMT_COUNT; i++) {
        sqlite3_finalize(q->st[i]);
        q->st[i] = NULL;
    }
    if (q->db) {
        int rc = sqlite3_close(q->db);
        if (rc != SQLITE_OK)
            log_warn("store", "closing %s: %s", q->path, sqlite3_errstr(rc));
        q->db = NULL;
    }
}

/* ---- transactions ----------------------------------------------------- */

int sq_db_begin(sq_t *q, err_t *err)
{
    q->broken = false;
    int rc = sq_done(q, q->st[SQ_BEGIN], err, "beginning a transaction");
    if (!rc)
        q->in_txn = true;
    return rc;
}

int sq_db_commit(sq_t *q, err_t *err)
{
    int rc = sq_done(q, q->st[SQ_COMMIT], err, "committing");
    if (!rc)
        q->in_txn = false;
    return rc;
}

void sq_db_rollback(sq_t *q)
{
    if (!sqlite3_get_autocommit(q->db))
        sq_done(q, q->st[SQ_ROLLBACK], NULL, "rolling back");
    q->in_txn = false;
    q->broken = false;
}

static int sq_savepoint(sq_t *q, err_t *err)
{
    return sq_done(q, q->st[SQ_SAVEPOINT], err, "opening a savepoint");
}

static int sq_release(sq_t *q, err_t *err)
{
    return sq_done(q, q->st[SQ_RELEASE], err, "releasing a savepoint");
}

/* Undo one request. If even that fails the batch's transaction is in an
 * unknown state, so the whole batch must fail. */
static void sq_rollback_to(sq_t *q)
{
    err_t e = {0};
    if (q->broken)
        return;
    if (sq_done(q, q->st[SQ_ROLLBACK_TO], &e, "rolling back a request") ||
        sq_done(q, q->st[SQ_RELEASE], &e, "releasing a savepoint")) {
        if (!q->broken) {
            q->broken = true;
            q->broken_err = e;
        }
    }
}

/* ---- rows and events --------------------------------------------------- */

/* Columns: key, create_rev, mod_rev, version, lease[, value]. */
static void sq_read_kv(sqlite3_stmt *st, store_arena_t *a, bool with_value, store_kv_t *kv)
{
    const void *k = sqlite3_column_blob(st, 0);
    kv->key = store_arena_memdup(a, k, (size_t)sqlite3_column_bytes(st, 0));
    kv->create_rev = sqlite3_column_int64(st, 1);
    kv->mod_rev = sqlite3_column_int64(st, 2);
    kv->version = sqlite3_column_int64(st, 3);
    kv->lease = sqlite3_column_int64(st, 4);
    if (with_value) {
        const void *v = sqlite3_column_blob(st, 5);
        kv->value_len = (size_t)sqlite3_column_bytes(st, 5);
        kv->value = store_arena_memdup(a, v, kv->value_len);
    } else {
        kv->value = NULL;
        kv->value_len = 0;
    }
}

static void sq_kvbuf_push(sq_t *q, size_t n)
{
    if (n < q->cap_kvbuf)
        return;
    q->cap_kvbuf = q->cap_kvbuf ? q->cap_kvbuf * 2 : 64;
    q->kvbuf = xrealloc(q->kvbuf, q->cap_kvbuf * sizeof(*q->kvbuf));
}

/* Copy an event into arena `a`. kv/prev may point into SQLite's row memory;
 * a missing prev (prev == NULL) is reported with mod_rev 0. */
static void sq_event_copy(store_arena_t *a, store_event_t *ev, int type, const store_kv_t *kv,
                          size_t klen, const store_kv_t *prev)
{
    char *k = store_arena_memdup(a, kv->key, klen);
    ev->type = type;
    ev->kv = *kv;
    ev->kv.key = k;
    ev->kv.value = store_arena_memdup(a, kv->value, kv->value_len);
    if (prev) {
        ev->prev = *prev;
        ev->prev.value = store_arena_memdup(a, prev->value, prev->value_len);
    } else {
        ev->prev = (store_kv_t){.value = ""};
    }
    ev->prev.key = k;
}

static sq_evblock_t *sq_block(sq_t *q)
{
    if (!q->block) {
        q->block = xcalloc(1, sizeof(*q->block));
        atomic_init(&q->block->refs, 1);
    }
    return q->block;
}

/* Remember a change for the watches. Skipped when nobody watches: a watch
 * registered later in the batch starts after this revision anyway. */
static void sq_record(sq_t *q, int type, const store_kv_t *kv, size_t klen, const store_kv_t *prev)
{
    if (!q->watches)
        return;
    sq_evblock_t *b = sq_block(q);
    if (q->n_evs == q->cap_evs) {
        q->cap_evs = q->cap_evs ? q->cap_evs * 2 : 64;
        q->evs = xrealloc(q->evs, q->cap_evs * sizeof(*q->evs));
    }
    sq_ev_t *e = &q->evs[q->n_evs++];
    e->klen = klen;
    sq_event_copy(&b->arena, &e->ev, type, kv, klen, prev);
}

static int sq_log(sq_t *q, int64_t rev, int type, const store_kv_t *kv, size_t klen,
                  const store_kv_t *prev, err_t *err)
{
    sqlite3_stmt *st = q->st[SQ_LOG_INSERT];
    sqlite3_bind_int64(st, 1, rev);
    sqlite3_bind_int(st, 2, type);
    sq_bind_blob(st, 3, kv->key, klen);
    sqlite3_bind_int64(st, 4, kv->create_rev);
    sqlite3_bind_int64(st, 5, kv->version);
    sqlite3_bind_int64(st, 6, kv->lease);
    sqlite3_bind_int64(st, 7, prev ? prev->create_rev : 0);
    sqlite3_bind_int64(st, 8, prev ? prev->mod_rev : 0);
    sqlite3_bind_int64(st, 9, prev ? prev->version : 0);
    sqlite3_bind_int64(st, 10, prev ? prev->lease : 0);
    if (type == STORE_EVENT_PUT)
        sq_bind_blob(st, 11, kv->value, kv->value_len);
    else
        sqlite3_bind_null(st, 11);
    if (prev)
        sq_bind_blob(st, 12, prev->value, prev->value_len);
    else
        sqlite3_bind_null(st, 12);
    return sq_done(q, st, err, "writing the history log");
}

/* Delete one key (whose current row is `prev`) at `rev`: log + event. The
 * kv row itself is removed by the caller (singly or as a range). */
static int sq_log_delete(sq_t *q, int64_t rev, const store_kv_t *prev, err_t *err)
{
    size_t klen = strlen(prev->key);
    store_kv_t dead = {.key = prev->key, .value = "", .mod_rev = rev};
    int rc = sq_log(q, rev, STORE_EVENT_DELETE, &dead, klen, prev, err);
    if (!rc)
        sq_record(q, STORE_EVENT_DELETE, &dead, klen, prev);
    return rc;
}

/* ---- ops ---------------------------------------------------------------- */

/* Keys of [lo, hi) in order, at most `limit` (0 = all) into arena `a`. One
 * row more than the limit is read so `more` is exact without a COUNT. */
static int sq_range(sq_t *q, const char *key, bool prefix, size_t limit, bool keys_only,
                    store_arena_t *a, store_kv_t **out, size_t *n_out, bool *more, err_t *err)
{
    size_t klen = strlen(key);
    unsigned char hi[STORE_KEY_MAX + 1];
    size_t hlen = store_key_range_end(key, klen, prefix, hi);
    sqlite3_stmt *st = q->st[keys_only ? SQ_KV_RANGE_KEYS : SQ_KV_RANGE];
    sq_bind_blob(st, 1, key, klen);
    sq_bind_blob(st, 2, hi, hlen);
    sqlite3_bind_int64(st, 3, limit && limit < (size_t)INT64_MAX ? (int64_t)limit + 1 : -1);
    size_t n = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        sq_kvbuf_push(q, n);
        sq_read_kv(st, a, !keys_only, &q->kvbuf[n++]);
    }
    if (rc != SQLITE_DONE) {
        rc = sq_fail(q, err, rc, "reading a range");
        sqlite3_reset(st);
        return rc;
    }
    sqlite3_reset(st);
    if (limit && n > limit) {
        n = limit;
        if (more)
            *more = true;
    }
    *out = NULL;
    if (n) {
        *out = store_arena_alloc(a, n * sizeof(**out));
        memcpy(*out, q->kvbuf, n * sizeof(**out));
    }
    *n_out = n;
    return 0;
}

/* etcd put semantics: version counts puts since creation, create_rev is
 * kept, a put without a lease detaches the key from its old lease. The old
 * row is read first because it is the result (prev kv), the event's prev and
 * the log row's prev_* all at once. */
static int sq_put(sq_t *q, const store_op_t *op, int64_t rev, store_arena_t *a,
                  store_op_result_t *res, err_t *err)
{
    size_t klen = strlen(op->key);
    if (op->lease && !sq_leases_find(&q->leases, op->lease))
        return err_set(err, -ENOENT, "put \"%.48s\": lease %" PRId64 " not found", op->key,
                       op->lease);
    store_kv_t prev = {.key = op->key};
    bool found = false;
    sqlite3_stmt *st = q->st[SQ_KV_GET];
    sq_bind_blob(st, 1, op->key, klen);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        found = true;
        prev.create_rev = sqlite3_column_int64(st, 0);
        prev.mod_rev = sqlite3_column_int64(st, 1);
        prev.version = sqlite3_column_int64(st, 2);
        prev.lease = sqlite3_column_int64(st, 3);
        const void *v = sqlite3_column_blob(st, 4);
        prev.value_len = (size_t)sqlite3_column_bytes(st, 4);
        prev.value = store_arena_memdup(a, v, prev.value_len);
    } else if (rc != SQLITE_DONE) {
        rc = sq_fail(q, err, rc, "reading a key");
        sqlite3_reset(st);
        return rc;
    }
    sqlite3_reset(st);

    store_kv_t kv = {
        .key = op->key,
        .value = op->value,
        .value_len = op->value_len,
        .create_rev = found ? prev.create_rev : rev,
        .mod_rev = rev,
        .version = found ? prev.version + 1 : 1,
        .lease = op->lease,
    };
    st = q->st[SQ_KV_UPSERT];
    sq_bind_blob(st, 1, kv.key, klen);
    sqlite3_bind_int64(st, 2, kv.create_rev);
    sqlite3_bind_int64(st, 3, kv.mod_rev);
    sqlite3_bind_int64(st, 4, kv.version);
    sqlite3_bind_int64(st, 5, kv.lease);
    sq_bind_blob(st, 6, kv.value, kv.value_len);
    if ((rc = sq_done(q, st, err, "writing a key")))
        return rc;
    if ((rc = sq_log(q, rev, STORE_EVENT_PUT, &kv, klen, found ? &prev : NULL, err)))
        return rc;
    sq_record(q, STORE_EVENT_PUT, &kv, klen, found ? &prev : NULL);
    if (found) {
        res->kvs = store_arena_alloc(a, sizeof(*res->kvs));
        res->kvs[0] = prev;
        res->n_kvs = 1;
    }
    return 0;
}

/* The deleted rows are read before deleting because the caller gets them
 * back (prev kvs) and each needs its own log row and event. */
static int sq_delete(sq_t *q, const store_op_t *op, int64_t rev, store_arena_t *a,
                     store_op_result_t *res, err_t *err)
{
    int rc = sq_range(q, op->key, op->prefix, 0, false, a, &res->kvs, &res->n_kvs, NULL, err);
    if (rc || res->n_kvs == 0)
        return rc;
    size_t klen = strlen(op->key);
    sqlite3_stmt *st;
    if (op->prefix) {
        unsigned char hi[STORE_KEY_MAX + 1];
        size_t hlen = store_key_range_end(op->key, klen, true, hi);
        st = q->st[SQ_KV_DELETE_RANGE];
        sq_bind_blob(st, 1, op->key, klen);
        sq_bind_blob(st, 2, hi, hlen);
        rc = sq_done(q, st, err, "deleting a range");
    } else {
        st = q->st[SQ_KV_DELETE];
        sq_bind_blob(st, 1, op->key, klen);
        rc = sq_done(q, st, err, "deleting a key");
    }
    for (size_t i = 0; !rc && i < res->n_kvs; i++)
        rc = sq_log_delete(q, rev, &res->kvs[i], err);
    if (!rc)
        res->deleted = res->n_kvs;
    return rc;
}

/* A missing key compares as version/create/mod 0; a VALUE compare on it is
 * false whatever the operator (etcd's applyCompare does the same). */
static int sq_compare(sq_t *q, const store_cmp_t *c, bool *hold, err_t *err)
{
    sqlite3_stmt *st = q->st[SQ_KV_GET];
    sq_bind_blob(st, 1, c->key, strlen(c->key));
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        rc = sq_fail(q, err, rc, "reading a compared key");
        sqlite3_reset(st);
        return rc;
    }
    bool found = rc == SQLITE_ROW;
    int r = 0;
    if (c->target == STORE_CMP_VALUE) {
        if (!found) {
            sqlite3_reset(st);
            *hold = false;
            return 0;
        }
        const void *v = sqlite3_column_blob(st, 4);
        size_t n = (size_t)sqlite3_column_bytes(st, 4);
        size_t m = n < c->value_len ? n : c->value_len;
        r = m ? memcmp(v, c->value, m) : 0;
        if (r == 0)
            r = (n > c->value_len) - (n < c->value_len);
    } else {
        int col = c->target == STORE_CMP_CREATE ? 0 : c->target == STORE_CMP_MOD ? 1 : 2;
        int64_t have = found ? sqlite3_column_int64(st, col) : 0;
        r = (have > c->num) - (have < c->num);
    }
    sqlite3_reset(st);
    switch (c->op) {
    case STORE_CMP_EQ: *hold = r == 0; break;
    case STORE_CMP_NE: *hold = r != 0; break;
    case STORE_CMP_LT: *hold = r < 0; break;
    case STORE_CMP_GT: *hold = r > 0; break;
    }
    return 0;
}

/* One txn = at most one revision: every write of the chosen branch uses
 * rev+1, and the counter only moves if something changed (a delete of
 * nothing or a read-only branch makes no revision, as in etcd). The
 * savepoint makes a failing op undo the branch's earlier ops only. */
static void sq_exec_txn(sq_t *q, store_req_t *r)
{
    err_t *err = &r->err;
    bool ok = true;
    int rc = 0;
    for (size_t i = 0; i < r->n_cmps && ok; i++) {
        if ((rc = sq_compare(q, &r->cmps[i], &ok, err))) {
            r->status = rc;
            return;
        }
    }
    const store_op_t *ops = ok ? r->success : r->failure;
    size_t n = ok ? r->n_success : r->n_failure;
    bool writes = false;
    for (size_t i = 0; i < n; i++)
        writes |= ops[i].type != STORE_OP_GET;
    r->res.succeeded = ok;
    r->res.n_ops = n;
    r->res.ops = n ? store_arena_zalloc(&r->arena, n * sizeof(*r->res.ops)) : NULL;
    if (writes && (rc = sq_savepoint(q, err))) {
        r->status = rc;
        return;
    }
    size_t ev_mark = q->n_evs;
    int64_t rev = q->rev + 1;
    bool changed = false;
    for (size_t i = 0; i < n; i++) {
        const store_op_t *op = &ops[i];
        store_op_result_t *res = &r->res.ops[i];
        res->type = op->type;
        switch (op->type) {
        case STORE_OP_GET:
            rc = sq_range(q, op->key, op->prefix, op->limit, op->keys_only, &r->arena, &res->kvs,
                          &res->n_kvs, &res->more, err);
            break;
        case STORE_OP_PUT:
            rc = sq_put(q, op, rev, &r->arena, res, err);
            changed = true;
            break;
        case STORE_OP_DELETE:
            rc = sq_delete(q, op, rev, &r->arena, res, err);
            changed |= res->deleted > 0;
            break;
        }
        if (rc)
            goto undo;
    }
    if (writes && (rc = sq_release(q, err)))
        goto undo;
    if (changed)
        q->rev = rev;
    r->res.rev = q->rev;
    return;
undo:
    q->n_evs = ev_mark;
    if (writes)
        sq_rollback_to(q);
    r->status = rc;
}

/* Delete every key attached to lease `id` at revision `rev`, then the lease
 * row. *n_deleted says whether the revision was used. */
static int sq_lease_drop(sq_t *q, int64_t id, int64_t rev, size_t *n_deleted, err_t *err)
{
    store_arena_t tmp = {0};
    sqlite3_stmt *st = q->st[SQ_KV_BY_LEASE];
    sqlite3_bind_int64(st, 1, id);
    size_t n = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        sq_kvbuf_push(q, n);
        sq_read_kv(st, &tmp, true, &q->kvbuf[n++]);
    }
    if (rc != SQLITE_DONE)
        rc = sq_fail(q, err, rc, "reading a lease's keys");
    else
        rc = 0;
    sqlite3_reset(st);
    for (size_t i = 0; !rc && i < n; i++) {
        st = q->st[SQ_KV_DELETE];
        sq_bind_blob(st, 1, q->kvbuf[i].key, strlen(q->kvbuf[i].key));
        rc = sq_done(q, st, err, "deleting a lease's key");
        if (!rc)
            rc = sq_log_delete(q, rev, &q->kvbuf[i], err);
    }
    if (!rc) {
        st = q->st[SQ_LEASE_DELETE];
        sqlite3_bind_int64(st, 1, id);
        rc = sq_done(q, st, err, "deleting a lease");
    }
    store_arena_free(&tmp);
    *n_deleted = rc ? 0 : n;
    return rc;
}

/* Revoke (or expire) one lease as one request: all its keys go in one
 * revision, or nothing happens. */
static int sq_lease_end(sq_t *q, sq_lease_t *l, err_t *err)
{
    size_t ev_mark = q->n_evs, n = 0;
    int64_t rev = q->rev + 1;
    int rc = sq_savepoint(q, err);
    if (rc)
        return rc;
    if ((rc = sq_lease_drop(q, l->id, rev, &n, err)) || (rc = sq_release(q, err))) {
        q->n_evs = ev_mark;
        sq_rollback_to(q);
        return rc;
    }
    if (n)
        q->rev = rev;
    sq_leases_remove(&q->leases, l);
    return 0;
}

/* Grant writes only the lease row (ids come from meta.next_lease so they
 * are never reused, even after a restart); keepalive touches memory only. */
static void sq_exec_lease(sq_t *q, store_req_t *r)
{
    err_t *err = &r->err;
    uint64_t now = sq_now_ms();
    r->res.rev = q->rev;
    if (r->kind == STORE_REQ_LEASE_GRANT) {
        int64_t id = q->next_lease;
        sqlite3_stmt *st = q->st[SQ_LEASE_INSERT];
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_int64(st, 2, r->ttl_s);
        if ((r->status = sq_done(q, st, err, "granting a lease")))
            return;
        q->next_lease = id + 1;
        sq_leases_add(&q->leases, id, r->ttl_s, now + (uint64_t)r->ttl_s * 1000u);
        r->out_lease = id;
        r->out_ttl = r->ttl_s;
        return;
    }
    const char *verb = r->kind == STORE_REQ_LEASE_REVOKE ? "revoke" : "keepalive";
    sq_lease_t *l = sq_leases_find(&q->leases, r->lease_id);
    if (!l) {
        r->status =
            err_set(err, -ENOENT, "lease %s: lease %" PRId64 " not found", verb, r->lease_id);
        return;
    }
    if (r->kind == STORE_REQ_LEASE_KEEPALIVE) {
        sq_leases_set_expiry(&q->leases, l, now + (uint64_t)l->ttl_s * 1000u);
        r->out_ttl = l->ttl_s;
        return;
    }
    if ((r->status = sq_lease_end(q, l, err)))
        return;
    r->out_ttl = 0;
    r->res.rev = q->rev;
}

/* Compacting to an old point again is a no-op rather than an error, so
 * callers need not track where the automatic compaction got to. */
static void sq_exec_compact(sq_t *q, store_req_t *r)
{
    r->res.succeeded = true;
    r->res.rev = q->rev;
    if (r->rev > q->rev) {
        r->status =
            err_set(&r->err, -EINVAL,
                    "compact: revision %" PRId64 " is newer than the current revision %" PRId64,
                    r->rev, q->rev);
        return;
    }
    if (r->rev <= q->compact_rev)
        return;
    sqlite3_stmt *st = q->st[SQ_LOG_COMPACT];
    sqlite3_bind_int64(st, 1, r->rev);
    if ((r->status = sq_done(q, st, &r->err, "compacting the history log")))
        return;
    q->compact_rev = r->rev;
}

void sq_db_exec(sq_t *q, store_req_t *r)
{
    switch (r->kind) {
    case STORE_REQ_TXN: sq_exec_txn(q, r); break;
    case STORE_REQ_LEASE_GRANT:
    case STORE_REQ_LEASE_KEEPALIVE:
    case STORE_REQ_LEASE_REVOKE: sq_exec_lease(q, r); break;
    case STORE_REQ_COMPACT: sq_exec_compact(q, r); break;
    }
}

void sq_db_expire(sq_t *q, uint64_t now_ms)
{
    sq_lease_t *l;
    while (!q->broken && (l = sq_leases_next(&q->leases)) && l->expires_ms <= now_ms) {
        int64_t id = l->id;
        err_t err = {0};
        if (sq_lease_end(q, l, &err)) {
            /* Try again later rather than spin on a failing database. */
            log_error("store", "expiring lease %" PRId64 ": %s", id, err.msg);
            sq_leases_set_expiry(&q->leases, l, now_ms + 1000);
            continue;
        }
        log_debug("store", "lease %" PRId64 " expired", id);
    }
}

/* Runs inside the batch's transaction, so it sees the writes of requests
 * queued before the watch, and the watch's live events start right after. */
int sq_db_replay(sq_t *q, sq_watch_t *sw, int64_t from, err_t *err)
{
    store_watch_t *w = sw->w;
    unsigned char hi[STORE_KEY_MAX + 1];
    size_t hlen = store_key_range_end(w->key, w->key_len, w->prefix, hi);
    sqlite3_stmt *st = q->st[SQ_LOG_REPLAY];
    sqlite3_bind_int64(st, 1, from);
    sq_bind_blob(st, 2, w->key, w->key_len);
    sq_bind_blob(st, 3, hi, hlen);
    store_arena_t *a = &sq_block(q)->arena;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        store_kv_t kv = {0}, prev = {0};
        int type = sqlite3_column_int(st, 1);
        kv.mod_rev = sqlite3_column_int64(st, 0);
        kv.key = sqlite3_column_blob(st, 2);
        size_t klen = (size_t)sqlite3_column_bytes(st, 2);
        kv.create_rev = sqlite3_column_int64(st, 3);
        kv.version = sqlite3_column_int64(st, 4);
        kv.lease = sqlite3_column_int64(st, 5);
        prev.create_rev = sqlite3_column_int64(st, 6);
        prev.mod_rev = sqlite3_column_int64(st, 7);
        prev.version = sqlite3_column_int64(st, 8);
        prev.lease = sqlite3_column_int64(st, 9);
        kv.value = sqlite3_column_blob(st, 10);
        kv.value_len = (size_t)sqlite3_column_bytes(st, 10);
        prev.value = sqlite3_column_blob(st, 11);
        prev.value_len = (size_t)sqlite3_column_bytes(st, 11);
        if (sw->n_pend == sw->cap_pend) {
            sw->cap_pend = sw->cap_pend ? sw->cap_pend * 2 : 16;
            sw->pend = xrealloc(sw->pend, sw->cap_pend * sizeof(*sw->pend));
        }
        sq_event_copy(a, &sw->pend[sw->n_pend++], type, &kv, klen, prev.mod_rev ? &prev : NULL);
    }
    if (rc != SQLITE_DONE)
        rc = sq_fail(q, err, rc, "replaying history");
    else
        rc = 0;
    sqlite3_reset(st);
    return rc;
}

/* Runs in the write batch that crosses a step (a tenth of keep_revisions,
 * at most 1000 revisions), so each run deletes a small, bounded slice of the
 * log instead of one huge delete stalling the acknowledgements. */
int sq_db_autocompact(sq_t *q, err_t *err)
{
    int64_t keep = q->keep_revisions;
    int64_t step = keep / 10;
    if (step < 1)
        step = 1;
    if (step > 1000)
        step = 1000;
    int64_t target = q->rev - keep;
    if (target <= q->compact_rev || target - q->compact_rev < step)
        return 0;
    if (target - q->compact_rev > SQ_COMPACT_MAX_STEP)
        target = q->compact_rev + SQ_COMPACT_MAX_STEP;
    sqlite3_stmt *st = q->st[SQ_LOG_COMPACT];
    sqlite3_bind_int64(st, 1, target);
    int rc = sq_done(q, st, err, "compacting the history log");
    if (!rc)
        q->compact_rev = target;
    return rc;
}

int sq_db_save_meta(sq_t *q, err_t *err)
{
    sqlite3_stmt *st = q->st[SQ_META_UPDATE];
    sqlite3_bind_int64(st, 1, q->rev);
    sqlite3_bind_int64(st, 2, q->compact_rev);
    sqlite3_bind_int64(st, 3, q->next_lease);
    return sq_done(q, st, err, "saving the revision");
}

void sq_db_maybe_checkpoint(sq_t *q)
{
    if (q->wal_pages < SQ_CHECKPOINT_PAGES)
        return;
    int rc = sqlite3_wal_checkpoint_v2(q->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    if (rc != SQLITE_OK)
        log_warn("store", "checkpointing %s: %s", q->path, sqlite3_errmsg(q->db));
    q->wal_pages = 0;
}
