/* sqlite.c: the SQLite backend's threading. One store thread owns the
 * sqlite3 connection; the loop thread never touches it.
 *
 *   loop thread                      store thread
 *   store_put() -> sq_in  --queue-->  take every queued message (a batch)
 *                                     BEGIN; each request in a SAVEPOINT;
 *                                     expire leases; COMMIT (fsync)
 *   sq_async_cb <--async-- sq_out <-- one DONE per request, in order, then
 *   user callbacks, in order           event batches for each watch
 *
 * Group commit: every request queued while the previous batch was being
 * fsynced is committed by the next batch in one transaction, so N concurrent
 * writers cost about one fsync, and nobody is acknowledged before the COMMIT
 * holding their write returned. Each request is still its own revision, and
 * a failing request rolls back only its own savepoint.
 *
 * Watches are registered by a message processed in order with the writes:
 * registration replays the log up to the current revision and every later
 * write of the batch is matched after that, so nothing is skipped or sent
 * twice. Events reach the loop only after the COMMIT that made them. */
#include "core/alloc.h"
#include "core/log.h"
#include "store/sqlite_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* Cap on messages per batch, so one huge burst does not delay the first
 * acknowledgements behind thousands of statements. */
#define SQ_BATCH_MAX 512

void sq_evblock_unref(sq_evblock_t *b)
{
    if (b && atomic_fetch_sub(&b->refs, 1) == 1) {
        store_arena_free(&b->arena);
        free(b);
    }
}

/* ---- store thread --------------------------------------------------- */

static void sq_outq_push(sq_outq_t *oq, sq_out_t *o)
{
    o->next = NULL;
    if (oq->tail)
        oq->tail->next = o;
    else
        oq->head = o;
    oq->tail = o;
}

static void sq_outq_append(sq_outq_t *oq, sq_outq_t *more)
{
    if (!more->head)
        return;
    if (oq->tail)
        oq->tail->next = more->head;
    else
        oq->head = more->head;
    oq->tail = more->tail;
    more->head = more->tail = NULL;
}

static sq_out_t *sq_out_new(sq_t *q, sq_out_kind_t kind)
{
    sq_out_t *o = xcalloc(1, sizeof(*o));
    o->kind = kind;
    o->compact_rev = q->compact_rev;
    return o;
}

/* Hand finished messages to the loop thread and wake it. */
static void sq_publish(sq_t *q, sq_outq_t *oq)
{
    if (!oq->head)
        return;
    uv_mutex_lock(&q->mu);
    sq_outq_append(&q->out, oq);
    uv_mutex_unlock(&q->mu);
    uv_async_send(&q->async);
}

/* Tell the loop a watch is over: a final status (or 0 = just release). */
static void sq_watch_end(sq_t *q, sq_outq_t *oq, store_watch_t *w, int status)
{
    sq_out_t *o = sq_out_new(q, SQ_OUT_WATCH);
    o->w = w;
    o->status = status;
    o->release = true;
    sq_outq_push(oq, o);
}

static void sq_watch_free(sq_watch_t *sw)
{
    free(sw->pend);
    free(sw);
}

/* ESTALE is decided here, in order with the writes and compactions before
 * it; a start inside the kept history is replayed, then live events start
 * at the next revision (or at start_rev if that is in the future). */
static void sq_watch_register(sq_t *q, store_watch_t *w, bool txn_ok, sq_outq_t *ends)
{
    if (w->init_status) {
        sq_watch_end(q, ends, w, w->init_status);
        return;
    }
    if (w->start_rev > 0 && w->start_rev < q->compact_rev) {
        sq_watch_end(q, ends, w, -ESTALE);
        return;
    }
    sq_watch_t *sw = xcalloc(1, sizeof(*sw));
    sw->w = w;
    sw->fresh = true;
    if (w->start_rev > 0 && w->start_rev <= q->rev) {
        err_t err = {0};
        int rc = txn_ok ? sq_db_replay(q, sw, w->start_rev, &err)
                        : err_set(&err, -EIO, "store: batch failed");
        if (rc) {
            log_error("store", "watch \"%.48s\": %s", w->key, err.msg);
            sq_watch_free(sw);
            sq_watch_end(q, ends, w, rc);
            return;
        }
    }
    sw->min_rev = w->start_rev > q->rev ? w->start_rev : q->rev + 1;
    sw->next = q->watches;
    q->watches = sw;
}

/* Unregister by id: the handle may already have been released (the watch
 * ended on its own), in which case there is nothing to do. */
static void sq_watch_unregister(sq_t *q, uint64_t id, int status, sq_outq_t *ends)
{
    for (sq_watch_t **pp = &q->watches; *pp; pp = &(*pp)->next) {
        sq_watch_t *sw = *pp;
        if (sw->w->id != id)
            continue;
        *pp = sw->next;
        sq_watch_end(q, ends, sw->w, status);
        sq_watch_free(sw);
        return;
    }
}

static bool sq_match(const store_watch_t *w, const sq_ev_t *e)
{
    if (w->prefix)
        return e->klen >= w->key_len && memcmp(e->ev.kv.key, w->key, w->key_len) == 0;
    return e->klen == w->key_len && memcmp(e->ev.kv.key, w->key, w->key_len) == 0;
}

/* After COMMIT: give each watch the batch's events it asked for, as one
 * callback (replayed history first, then live changes, in revision order). */
static void sq_fanout(sq_t *q, sq_outq_t *oq)
{
    for (sq_watch_t *sw = q->watches; sw; sw = sw->next) {
        for (size_t i = 0; i < q->n_evs; i++) {
            const sq_ev_t *e = &q->evs[i];
            if (e->ev.kv.mod_rev < sw->min_rev || !sq_match(sw->w, e))
                continue;
            if (sw->n_pend == sw->cap_pend) {
                sw->cap_pend = sw->cap_pend ? sw->cap_pend * 2 : 16;
                sw->pend = xrealloc(sw->pend, sw->cap_pend * sizeof(*sw->pend));
            }
            sw->pend[sw->n_pend++] = e->ev;
        }
        if (!sw->n_pend)
            continue;
        sq_out_t *o = sq_out_new(q, SQ_OUT_WATCH);
        o->w = sw->w;
        o->events = sw->pend;
        o->n = sw->n_pend;
        o->block = q->block;
        atomic_fetch_add(&q->block->refs, 1);
        sw->pend = NULL;
        sw->n_pend = sw->cap_pend = 0;
        sq_outq_push(oq, o);
    }
}

/* The batch's transaction could not commit: nothing of it happened. Undo
 * the in-memory state and fail every request, including the ones that ran
 * (even reads: they may have seen uncommitted writes). */
static void sq_batch_failed(sq_t *q, sq_in_t *batch, int rc, const err_t *gerr, int64_t rev0,
                            int64_t compact0, int64_t lease0, sq_outq_t *ends)
{
    size_t n = 0;
    sq_db_rollback(q);
    q->rev = rev0;
    q->compact_rev = compact0;
    q->next_lease = lease0;
    sq_db_leases_reload(q);
    for (sq_in_t *m = batch; m; m = m->next) {
        if (m->kind != SQ_IN_REQ)
            continue;
        n++;
        if (!m->req->status) {
            m->req->status = rc;
            m->req->err = *gerr;
        }
    }
    for (sq_watch_t **pp = &q->watches; *pp;) {
        sq_watch_t *sw = *pp;
        sw->n_pend = 0;
        if (sw->fresh) {
            *pp = sw->next;
            sq_watch_end(q, ends, sw->w, rc);
            sq_watch_free(sw);
        } else {
            pp = &sw->next;
        }
    }
    log_error("store", "a batch of %zu requests failed: %s", n, gerr->msg);
}

/* One group commit: run every message in order inside one transaction,
 * expire due leases, compact, COMMIT, and only then hand back results and
 * events (acks first, then each watch's events, then ended watches). */
static void sq_run_batch(sq_t *q, sq_in_t *batch)
{
    sq_outq_t outs = {0}, ends = {0};
    int64_t rev0 = q->rev, compact0 = q->compact_rev, lease0 = q->next_lease;
    err_t gerr = {0};
    int grc = sq_db_begin(q, &gerr);
    for (sq_in_t *m = batch; m; m = m->next) {
        if (!grc && q->broken) {
            gerr = q->broken_err;
            grc = gerr.code;
        }
        switch (m->kind) {
        case SQ_IN_REQ:
            if (!grc && !m->req->status)
                sq_db_exec(q, m->req);
            break;
        case SQ_IN_WATCH: sq_watch_register(q, m->w, !grc && !q->broken, &ends); break;
        case SQ_IN_UNWATCH: sq_watch_unregister(q, m->watch_id, 0, &ends); break;
        }
    }
    if (!grc && !q->broken)
        sq_db_expire(q, sq_now_ms());
    if (!grc && !q->broken && q->rev != rev0)
        grc = sq_db_autocompact(q, &gerr);
    if (!grc && !q->broken &&
        (q->rev != rev0 || q->compact_rev != compact0 || q->next_lease != lease0))
        grc = sq_db_save_meta(q, &gerr);
    if (!grc && q->broken) {
        gerr = q->broken_err;
        grc = gerr.code;
    }
    if (!grc)
        grc = sq_db_commit(q, &gerr);
    if (grc)
        sq_batch_failed(q, batch, grc, &gerr, rev0, compact0, lease0, &ends);

    for (sq_in_t *m = batch; m;) {
        sq_in_t *next = m->next;
        if (m->kind == SQ_IN_REQ) {
            sq_out_t *o = sq_out_new(q, SQ_OUT_DONE);
            o->req = m->req;
            sq_outq_push(&outs, o);
        }
        free(m);
        m = next;
    }
    if (!grc)
        sq_fanout(q, &outs);
    for (sq_watch_t *sw = q->watches; sw; sw = sw->next)
        sw->fresh = false;
    q->n_evs = 0;
    sq_evblock_unref(q->block);
    q->block = NULL;
    sq_outq_append(&outs, &ends);
    sq_publish(q, &outs);
}

/* Close: requests not yet run get -ECANCELED, every watch is released (the
 * loop side tells its user -ECANCELED), then the database is closed. */
static void sq_shutdown(sq_t *q, sq_in_t *batch)
{
    sq_outq_t outs = {0};
    for (sq_in_t *m = batch; m;) {
        sq_in_t *next = m->next;
        switch (m->kind) {
        case SQ_IN_REQ: {
            store_req_t *r = m->req;
            if (!r->status)
                r->status = err_set(&r->err, -ECANCELED, "store: closed before the request ran");
            sq_out_t *o = sq_out_new(q, SQ_OUT_DONE);
            o->req = r;
            sq_outq_push(&outs, o);
            break;
        }
        case SQ_IN_WATCH: sq_watch_end(q, &outs, m->w, 0); break;
        case SQ_IN_UNWATCH: sq_watch_unregister(q, m->watch_id, 0, &outs); break;
        }
        free(m);
        m = next;
    }
    while (q->watches)
        sq_watch_unregister(q, q->watches->w->id, 0, &outs);
    sq_db_close(q);
    sq_leases_free(&q->leases);
    free(q->evs);
    free(q->kvbuf);
    q->evs = NULL;
    q->kvbuf = NULL;
    sq_outq_push(&outs, sq_out_new(q, SQ_OUT_STOPPED));
    sq_publish(q, &outs);
}

/* The store thread sleeps on the condition variable until a message
 * arrives or the next lease is due, whichever is first, so lease expiry
 * needs no timer on the loop and no polling. */
static void sq_thread_main(void *arg)
{
    sq_t *q = arg;
    err_t err = {0};
    int rc = sq_db_open(q, &err);
    uv_mutex_lock(&q->mu);
    q->open_rc = rc;
    q->open_err = err;
    q->open_done = true;
    uv_cond_broadcast(&q->cond);
    while (!rc && !q->started && !q->stop)
        uv_cond_wait(&q->cond, &q->mu);
    bool go = !rc && q->started;
    uv_mutex_unlock(&q->mu);
    if (!go) {
        sq_db_close(q);
        sq_leases_free(&q->leases);
        return;
    }
    for (;;) {
        uv_mutex_lock(&q->mu);
        while (!q->in_head && !q->stop) {
            sq_lease_t *l = sq_leases_next(&q->leases);
            if (!l) {
                uv_cond_wait(&q->cond, &q->mu);
                continue;
            }
            uint64_t now = sq_now_ms();
            if (l->expires_ms <= now)
                break;
            uv_cond_timedwait(&q->cond, &q->mu, (l->expires_ms - now) * 1000000u);
        }
        sq_in_t *batch = q->in_head;
        if (q->stop) {
            q->in_head = q->in_tail = NULL;
            uv_mutex_unlock(&q->mu);
            sq_shutdown(q, batch);
            return;
        }
        if (batch) {
            sq_in_t *last = batch;
            for (size_t n = 1; last->next && n < SQ_BATCH_MAX; n++)
                last = last->next;
            q->in_head = last->next;
            if (!q->in_head)
                q->in_tail = NULL;
            last->next = NULL;
        }
        uv_mutex_unlock(&q->mu);
        sq_run_batch(q, batch);
        sq_db_maybe_checkpoint(q);
    }
}

/* ---- loop thread ---------------------------------------------------- */

/* Keep the loop alive while requests or watches are outstanding (as libuv
 * does for its own requests and active handles), and only then: an idle
 * store must not stop uv_run(UV_RUN_DEFAULT) from returning. */
static void sq_hold(sq_t *q, bool more)
{
    if (more) {
        if (q->pending++ == 0)
            uv_ref((uv_handle_t *)&q->async);
    } else if (--q->pending == 0) {
        uv_unref((uv_handle_t *)&q->async);
    }
}

static void sq_push_in(sq_t *q, sq_in_t *m)
{
    m->next = NULL;
    uv_mutex_lock(&q->mu);
    bool was_empty = !q->in_head;
    if (q->in_tail)
        q->in_tail->next = m;
    else
        q->in_head = m;
    q->in_tail = m;
    if (was_empty)
        uv_cond_signal(&q->cond);
    uv_mutex_unlock(&q->mu);
}

static void sq_closed_cb(uv_handle_t *h)
{
    sq_t *q = h->data;
    store_t *s = q->s;
    /* Only cancels can arrive after the thread stopped, and need nothing. */
    for (sq_in_t *m = q->in_head; m;) {
        sq_in_t *next = m->next;
        free(m);
        m = next;
    }
    uv_mutex_destroy(&q->mu);
    uv_cond_destroy(&q->cond);
    free(q->path);
    free(q);
    store_backend_closed(s);
}

/* Run the store thread's results, in the order it produced them. A
 * callback may call store_close(); the STOPPED message then comes later. */
static void sq_async_cb(uv_async_t *h)
{
    sq_t *q = h->data;
    uv_mutex_lock(&q->mu);
    sq_out_t *o = q->out.head;
    q->out.head = q->out.tail = NULL;
    uv_mutex_unlock(&q->mu);
    bool stopped = false;
    while (o) {
        sq_out_t *next = o->next;
        switch (o->kind) {
        case SQ_OUT_DONE:
            sq_hold(q, false);
            store_req_complete(o->req);
            break;
        case SQ_OUT_WATCH:
            if (o->status || o->n)
                store_watch_deliver(o->w, o->status, o->events, o->n, o->compact_rev);
            free(o->events);
            sq_evblock_unref(o->block);
            if (o->release) {
                sq_hold(q, false);
                store_watch_release(o->w);
            }
            break;
        case SQ_OUT_STOPPED: stopped = true; break;
        }
        free(o);
        o = next;
    }
    if (stopped) {
        /* The thread's last act was the uv_async_send for this message. */
        uv_thread_join(&q->thread);
        uv_close((uv_handle_t *)&q->async, sq_closed_cb);
    }
}

/* The database is opened on the store thread (it owns the connection) while
 * the caller waits: store_open must report open errors synchronously. The
 * async handle is created only once the open worked, so a failed open
 * leaves nothing on the loop. */
static int sq_open(store_t *s, uv_loop_t *loop, const store_options_t *opts, void **be,
                   int64_t *rev, err_t *err)
{
    if (!opts->path || !*opts->path)
        return err_set(err, -EINVAL, "store: the sqlite backend needs a database path");
    sq_t *q = xcalloc(1, sizeof(*q));
    q->s = s;
    q->loop = loop;
    q->path = xstrdup(opts->path);
    q->keep_revisions = opts->keep_revisions;
    uv_mutex_init(&q->mu);
    uv_cond_init(&q->cond);
    int rc = uv_thread_create(&q->thread, sq_thread_main, q);
    if (rc) {
        err_set(err, rc, "store: cannot start the store thread: %s", uv_strerror(rc));
        goto fail;
    }
    uv_mutex_lock(&q->mu);
    while (!q->open_done)
        uv_cond_wait(&q->cond, &q->mu);
    rc = q->open_rc;
    if (rc && err)
        *err = q->open_err;
    *rev = q->rev;
    uv_mutex_unlock(&q->mu);
    if (!rc) {
        rc = uv_async_init(loop, &q->async, sq_async_cb);
        if (rc)
            err_set(err, rc, "store: uv_async_init: %s", uv_strerror(rc));
    }
    uv_mutex_lock(&q->mu);
    if (rc)
        q->stop = true;
    else
        q->started = true;
    uv_cond_broadcast(&q->cond);
    uv_mutex_unlock(&q->mu);
    if (rc) {
        uv_thread_join(&q->thread);
        goto fail;
    }
    q->async.data = q;
    uv_unref((uv_handle_t *)&q->async);
    log_info("store", "sqlite store %s open at revision %" PRId64, q->path, *rev);
    *be = q;
    return 0;
fail:
    uv_mutex_destroy(&q->mu);
    uv_cond_destroy(&q->cond);
    free(q->path);
    free(q);
    return rc;
}

static void sq_submit(void *be, store_req_t *req)
{
    sq_in_t *m = xcalloc(1, sizeof(*m));
    m->kind = SQ_IN_REQ;
    m->req = req;
    sq_hold(be, true);
    sq_push_in(be, m);
}

static void sq_watch_start(void *be, store_watch_t *w)
{
    sq_in_t *m = xcalloc(1, sizeof(*m));
    m->kind = SQ_IN_WATCH;
    m->w = w;
    sq_hold(be, true);
    sq_push_in(be, m);
}

static void sq_watch_cancel(void *be, store_watch_t *w)
{
    sq_t *q = be;
    if (q->closing)
        return; /* the stopping thread releases every watch anyway */
    sq_in_t *m = xcalloc(1, sizeof(*m));
    m->kind = SQ_IN_UNWATCH;
    m->watch_id = w->id;
    sq_push_in(q, m);
}

static void sq_close(void *be)
{
    sq_t *q = be;
    q->closing = true;
    sq_hold(q, true); /* until the thread has stopped */
    uv_mutex_lock(&q->mu);
    q->stop = true;
    uv_cond_signal(&q->cond);
    uv_mutex_unlock(&q->mu);
}

const store_backend_ops_t store_sqlite_ops = {
    .name = "sqlite",
    .open = sq_open,
    .submit = sq_submit,
    .watch_start = sq_watch_start,
    .watch_cancel = sq_watch_cancel,
    .close = sq_close,
};
