/* The pool of one worker app: the queue, dispatch, growth and idle
 * shrinking, the worker lifecycle (spawning, handshaking, active, sealing,
 * terminating), the worker protocol on the unix socket, and crashlogs.
 *
 * Time is kept by one timer per app (ENG_TICK_MS) that runs only while
 * there is something to time: workers, queued invocations, unattached
 * connections or a client whose output is stuck. Deadlines, heartbeats,
 * handshake/spawn/terminate timeouts and idle shrinking are all checked
 * there, so a thousand invocations cost no timers of their own.
 *
 * Spares: while an automatic pool is at zero, one worker process waits
 * parked (isolate hold: forked, in its cgroups, right before its exec), so
 * the first request after scale-to-zero starts it with one write instead
 * of a fresh start, whose move into the cgroups alone costs the kernel an
 * RCU grace period (10-25 ms). A spare is not a worker: it is not in
 * app->workers, runs none of the app's code and is not counted in the
 * pool; taking it makes it an ordinary spawning worker. */
#include "engine/engine_internal.h"

#include "core/alloc.h"
#include "core/log.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <openssl/rand.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CRASH_TAIL_WINDOW ((size_t)256 << 10) /* bytes of a log looked at for its tail */

int64_t eng_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *const wstate_names[] = {"spawning", "handshaking", "active", "sealing",
                                           "terminating"};

const char *eng_wstate_name(int s);
const char *eng_wstate_name(int s)
{
    return wstate_names[s];
}

static void worker_set(worker_t *w, wstate_t st)
{
    w->state = st;
    w->since = uv_now(w->app->loop);
}

/* ---- the queue ---- */

void inv_unqueue(inv_t *inv)
{
    if (!inv->queued)
        return;
    engine_app_t *app = inv->app;
    if (inv->q_prev)
        inv->q_prev->q_next = inv->q_next;
    else
        app->q_head = inv->q_next;
    if (inv->q_next)
        inv->q_next->q_prev = inv->q_prev;
    else
        app->q_tail = inv->q_prev;
    inv->q_prev = inv->q_next = NULL;
    inv->queued = false;
    app->qlen--;
    /* its client may have paused for its buffer */
    if (inv->client && inv->client->conn && inv->client->conn->waiting_inv == inv) {
        inv->client->conn->waiting_inv = NULL;
        econn_resume(inv->client->conn);
    }
}

void inv_enqueue(inv_t *inv)
{
    engine_app_t *app = inv->app;
    inv->queued = true;
    inv->q_prev = app->q_tail;
    inv->q_next = NULL;
    if (app->q_tail)
        app->q_tail->q_next = inv;
    else
        app->q_head = inv;
    app->q_tail = inv;
    app->qlen++;
    app_dispatch(app);
    app_adjust(app);
    app_tick_ensure(app);
}

static void inv_worker_unlink(inv_t *inv)
{
    worker_t *w = inv->worker;
    if (!w)
        return;
    if (inv->w_prev)
        inv->w_prev->w_next = inv->w_next;
    else
        w->invs = inv->w_next;
    if (inv->w_next)
        inv->w_next->w_prev = inv->w_prev;
    inv->w_prev = inv->w_next = NULL;
    inv->worker = NULL;
    w->load--;
    inv->app->running--;
    if (!w->load)
        w->idle_since = uv_now(w->app->loop);
}

static void inv_client_unlink(inv_t *inv)
{
    client_t *cl = inv->client;
    if (!cl)
        return;
    if (inv->c_prev)
        inv->c_prev->c_next = inv->c_next;
    else
        cl->invs = inv->c_next;
    if (inv->c_next)
        inv->c_next->c_prev = inv->c_prev;
    inv->c_prev = inv->c_next = NULL;
    inv->client = NULL;
    cl->ninvs--;
}

void inv_maybe_free(inv_t *inv)
{
    if (inv->worker && inv->w_in_done && inv->w_out_done) {
        worker_t *w = inv->worker;
        inv_worker_unlink(inv);
        /* a freed slot may take a queued invocation; a sealing worker
         * with nothing left goes */
        if (w->state == W_SEALING && !w->load)
            app_adjust(inv->app);
        else
            app_dispatch(inv->app);
    }
    if (inv->client && inv->c_in_done && inv->c_out_done)
        inv_client_unlink(inv);
    if (inv->worker || inv->client || inv->queued)
        return;
    buf_free(&inv->invoke);
    buf_free(&inv->pend);
    free(inv->pend_offs);
    free(inv->event);
    free(inv);
}

void inv_abort(inv_t *inv, unsigned cat, unsigned code, bool drop_worker, const char *msg)
{
    inv_unqueue(inv);
    if (!inv->c_out_done) {
        inv->c_out_done = true;
        if (inv->client && inv->client->conn)
            econn_send_error(inv->client->conn, inv->cch, cat, code, "%s", msg);
    }
    if (inv->worker && !inv->w_out_done) {
        inv->w_out_done = true;
        if (inv->worker->conn)
            econn_send_error(inv->worker->conn, inv->wch, cat, code, "%s", msg);
    }
    if (drop_worker)
        inv->w_in_done = inv->w_out_done = true;
    if (!inv->worker && !inv->queued)
        inv->w_in_done = inv->w_out_done = true;
    inv_maybe_free(inv);
}

/* Bind a queued invocation to a worker: invoke, then what the client sent
 * meanwhile, with the worker channel written into each prepared message. */
static void inv_start(inv_t *inv, worker_t *w)
{
    engine_app_t *app = inv->app;
    inv_unqueue(inv);
    inv->worker = w;
    inv->wch = rpc_channels_next(&w->chans);
    inv->w_next = w->invs;
    if (w->invs)
        w->invs->w_prev = inv;
    w->invs = inv;
    w->load++;
    app->running++;
    inv->started_at = uv_now(app->loop);
    if (inv->invoke.len) {
        /* the enqueue's headers go with the invoke (trace ids, timeout) */
        unsigned char *p = (unsigned char *)inv->invoke.data + 2;
        for (int k = 0; k < 8; k++)
            p[k] = (unsigned char)(inv->wch >> (56 - 8 * k));
        if (buf_append(&w->conn->out, inv->invoke.data, inv->invoke.len) != 0)
            econn_close(w->conn, "output buffer full");
        else
            econn_commit(w->conn);
        buf_free(&inv->invoke);
    } else {
        econn_send(w->conn, inv->wch, RPC_INVOKE, "s", inv->event);
    }
    if (inv->npend && !w->conn->closing) {
        for (size_t i = 0; i < inv->npend; i++) {
            unsigned char *p = (unsigned char *)inv->pend.data + inv->pend_offs[i];
            for (int k = 0; k < 8; k++)
                p[k] = (unsigned char)(inv->wch >> (56 - 8 * k));
        }
        if (buf_append(&w->conn->out, inv->pend.data, inv->pend.len) != 0)
            econn_close(w->conn, "output buffer full");
        else
            econn_commit(w->conn);
        buf_free(&inv->pend);
        buf_init(&inv->pend, 0);
        inv->npend = 0;
    }
    if (inv->client && inv->client->conn)
        econn_pace(inv->client->conn, w->conn);
}

static worker_t *app_pick(engine_app_t *app)
{
    worker_t *best = NULL;
    for (worker_t *w = app->workers; w; w = w->next) {
        if (w->state != W_ACTIVE || !w->conn || w->conn->closing ||
            w->load >= app->prof.concurrency)
            continue;
        if (!best || w->load < best->load)
            best = w;
    }
    return best;
}

void app_dispatch(engine_app_t *app)
{
    while (app->q_head) {
        worker_t *w = app_pick(app);
        if (!w)
            break;
        inv_start(app->q_head, w);
    }
}

/* ---- workers ---- */

static void worker_on_exit(isolate_proc_t *p, const isolate_exit_t *how, void *data);
static void worker_on_pid(isolate_proc_t *p, pid_t pid, void *data);

static void eng_uuid(char out[40])
{
    unsigned char r[16];
    if (RAND_bytes(r, sizeof(r)) != 1) {
        uint64_t t = uv_hrtime();
        for (int i = 0; i < 16; i++)
            r[i] = (unsigned char)(t >> (8 * (i % 8))) ^ (unsigned char)(i * 37);
    }
    r[6] = (unsigned char)((r[6] & 0x0f) | 0x40);
    r[8] = (unsigned char)((r[8] & 0x3f) | 0x80);
    snprintf(out, 40, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", r[0],
             r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13],
             r[14], r[15]);
}

static void worker_link(engine_app_t *app, worker_t *w)
{
    w->next = app->workers;
    if (app->workers)
        app->workers->prev = w;
    app->workers = w;
    app->nworkers++;
}

static void worker_unlink(worker_t *w)
{
    engine_app_t *app = w->app;
    if (w->prev)
        w->prev->next = w->next;
    else
        app->workers = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->prev = w->next = NULL;
    app->nworkers--;
}

/* Queued invocations cannot wait for a worker that will not come: with no
 * active worker left, a failed start answers them [3, 5] at once. */
static void app_spawn_failed(engine_app_t *app, const char *why)
{
    for (worker_t *w = app->workers; w; w = w->next)
        if (w->state == W_ACTIVE)
            return;
    char msg[400];
    snprintf(msg, sizeof(msg), "cannot start a worker: %.300s", why);
    while (app->q_head) {
        app->failed++;
        inv_abort(app->q_head, RPC_ECAT_ENGINE, EIO, false, msg);
    }
}

static void app_backoff(engine_app_t *app, const worker_t *w)
{
    uint64_t now = uv_now(app->loop);
    if (w && w->active_at && now - w->active_at >= ENG_STABLE_MS)
        app->backoff_ms = 0; /* it ran well: not a crash loop */
    app->backoff_ms = app->backoff_ms ? app->backoff_ms * 2 : ENG_BACKOFF_MIN;
    if (app->backoff_ms > ENG_BACKOFF_MAX)
        app->backoff_ms = ENG_BACKOFF_MAX;
    app->spawn_after = now + app->backoff_ms;
}

/* A new worker process (held: parked as a spare); NULL with err set. */
static worker_t *worker_start(engine_app_t *app, bool hold, err_t *err_out)
{
    err_t err = {0};
    worker_t *w = xcalloc(1, sizeof(*w));
    w->app = app;
    eng_uuid(w->uuid);
    snprintf(w->iso_id, sizeof(w->iso_id), "%.120s.w%.8s", app->id, w->uuid);
    w->dir = xasprintf("%s/workers/%s", app->run_dir, w->uuid);
    rpc_channels_init(&w->chans, RPC_CONTROL_CHANNEL);
    size_t argc = 0;
    while (app->argv[argc])
        argc++;
    char **argv = xcalloc(argc + 9, sizeof(char *));
    for (size_t i = 0; i < argc; i++)
        argv[i] = app->argv[i];
    argv[argc++] = "--app";
    argv[argc++] = app->name;
    argv[argc++] = "--endpoint";
    argv[argc++] = app->sock_path;
    argv[argc++] = "--uuid";
    argv[argc++] = w->uuid;
    argv[argc++] = "--locator";
    argv[argc++] = app->locator;
    isolate_spec_t is = {
        .instance_id = w->iso_id,
        .dir = w->dir,
        .cwd = app->cwd,
        .argv = argv,
        .envp = app->envp,
        .cpus = app->cpus,
        .mem_bytes = app->mem_bytes,
        .log_max_bytes = ENG_LOG_MAX,
        .log_keep = 1,
        .harden = app->harden,
        .on_pid = worker_on_pid,
        .hold = hold,
    };
    w->spare = hold;
    int rc = 0;
    if (mkdir(w->dir, 0755) != 0 && errno != EEXIST)
        rc = err_set(&err, -errno, "cannot create %s: %s", w->dir, strerror(errno));
    if (!rc)
        rc = app->iso->start(app->loop, &is, worker_on_exit, w, &w->proc, &err);
    free(argv);
    if (rc) {
        rmdir(w->dir);
        free(w->dir);
        free(w);
        *err_out = err;
        return NULL;
    }
    return w;
}

static int worker_spawn(engine_app_t *app)
{
    err_t err = {0};
    worker_t *w = app->spare;
    if (w) {
        /* the parked one: one byte and it execs */
        app->spare = NULL;
        app->nspares--;
        w->spare = false;
        if (app->iso->proceed(w->proc) != 0) {
            /* it is gone already; its exit ends it as a worker that failed */
            w->failed = true;
            snprintf(w->why, sizeof(w->why), "the parked spare ended before it was taken");
        }
        worker_set(w, w->pid ? W_HANDSHAKING : W_SPAWNING);
        log_debug("engine", "%s: spawning worker %s (from the spare)", app->name, w->uuid);
    } else if (!(w = worker_start(app, false, &err))) {
        app->spawned++;
        log_warn("engine", "%s: cannot start a worker: %s", app->name, err.msg);
        app->crashes++;
        app_backoff(app, NULL);
        app_spawn_failed(app, err.msg);
        return err.code ? err.code : -EIO;
    } else {
        worker_set(w, W_SPAWNING);
        log_debug("engine", "%s: spawning worker %s", app->name, w->uuid);
    }
    app->spawned++;
    worker_link(app, w);
    app_tick_ensure(app);
    return 0;
}

/* Would the pool park a spare now, time (crash backoff) aside? */
static bool app_spare_wanted(const engine_app_t *app)
{
    return app->prof.spare && app->iso->proceed && !app->stopping && !app->finishing &&
           !app->spare && !app->pin && !app->workers && !app->q_head;
}

static void app_spare_ensure(engine_app_t *app)
{
    if (!app_spare_wanted(app) || uv_now(app->loop) < app->spawn_after)
        return;
    err_t err = {0};
    worker_t *w = worker_start(app, true, &err);
    if (!w) {
        log_warn("engine", "%s: cannot park a spare worker: %s", app->name, err.msg);
        app_backoff(app, NULL);
        app_tick_ensure(app);
        return;
    }
    worker_set(w, W_SPAWNING);
    app->spare = w;
    app->nspares++;
    log_debug("engine", "%s: spare worker %s parked", app->name, w->uuid);
}

void app_spare_drop(engine_app_t *app)
{
    worker_t *w = app->spare;
    if (!w)
        return;
    app->spare = NULL; /* its exit callback still counts it in nspares */
    if (w->proc && !w->killed) {
        w->killed = true;
        app->iso->kill_all(w->proc);
    }
}

static void worker_on_pid(isolate_proc_t *p, pid_t pid, void *data)
{
    (void)p;
    worker_t *w = data;
    w->pid = pid;
    if (w->state == W_SPAWNING && !w->spare)
        worker_set(w, W_HANDSHAKING);
}

/* Kill now (a timeout, a protocol error, the app stopping at once). The
 * exit callback finishes the job. */
static void worker_kill(worker_t *w, bool failed, const char *why)
{
    if (failed && !w->failed) {
        w->failed = true;
        snprintf(w->why, sizeof(w->why), "%s", why);
        log_warn("engine", "%s: worker %s killed: %s", w->app->name, w->uuid, why);
    } else if (!w->why[0]) {
        snprintf(w->why, sizeof(w->why), "%s", why);
    }
    if (w->state != W_TERMINATING)
        worker_set(w, W_TERMINATING);
    if (w->conn)
        econn_close(w->conn, why);
    if (w->proc && !w->killed) {
        w->killed = true;
        w->app->iso->kill_all(w->proc);
    }
}

/* Ask to stop: `terminate`, then SIGKILL after terminate-timeout. A worker
 * that never connected has nobody to ask. */
static void worker_terminate(worker_t *w, const char *why)
{
    if (w->state == W_TERMINATING)
        return;
    snprintf(w->why, sizeof(w->why), "%s", why);
    if (!w->conn || w->conn->closing) {
        worker_kill(w, false, why);
        return;
    }
    worker_set(w, W_TERMINATING);
    w->kill_at = uv_now(w->app->loop) + w->app->prof.terminate_ms;
    econn_send(w->conn, RPC_CONTROL_CHANNEL, RPC_TERMINATE, "us", 1u, why);
    log_debug("engine", "%s: terminating worker %s: %s", w->app->name, w->uuid, why);
}

/* Its invocations end with it: [4, 32] worker died (or [3, 108] when the
 * app is stopping). */
static void worker_fail_invs(worker_t *w, const char *why)
{
    engine_app_t *app = w->app;
    char msg[400];
    unsigned cat = RPC_ECAT_WORKER, code = EPIPE;
    if (app->stopping) {
        cat = RPC_ECAT_ENGINE;
        code = ESHUTDOWN;
        snprintf(msg, sizeof(msg), "app is stopping (worker ended: %s)", why);
    } else {
        snprintf(msg, sizeof(msg), "worker died: %s", why);
    }
    while (w->invs) {
        inv_t *inv = w->invs;
        inv->w_out_done = true; /* nobody to tell */
        if (!inv->c_out_done)
            app->failed++;
        inv_abort(inv, cat, code, true, msg);
    }
}

static void worker_conn_lost(econn_t *c, const char *why)
{
    worker_t *w = c->owner;
    if (!w) {
        return; /* never handshaken */
    }
    w->conn = NULL;
    if (w->state != W_TERMINATING) {
        /* a worker without its socket is of no use */
        worker_kill(w, true, why);
    }
    worker_fail_invs(w, w->why[0] ? w->why : why);
    app_dispatch(w->app);
    app_adjust(w->app);
}

/* ---- crashlogs and worker directories (thread pool) ---- */

typedef struct reap_work {
    uv_work_t work;
    engine_app_t *app;
    char *dir;
    bool crash;
    int lines;
    int64_t at_ms;
    char uuid[40];
    char reason[300];
    buf_t text;
    int nlines;
} reap_work_t;

/* The last `lines` lines of a log file, read through a bounded window. */
static int crash_tail(const char *path, int lines, buf_t *out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || lines <= 0) {
        if (fd >= 0)
            close(fd);
        return 0;
    }
    struct stat st;
    int n = 0;
    if (fstat(fd, &st) == 0 && st.st_size > 0) {
        size_t len =
            (size_t)st.st_size > CRASH_TAIL_WINDOW ? CRASH_TAIL_WINDOW : (size_t)st.st_size;
        char *data = xmalloc(len + 1);
        ssize_t got = pread(fd, data, len, st.st_size - (off_t)len);
        if (got > 0) {
            size_t end = (size_t)got, start = 0;
            if (data[end - 1] == '\n')
                end--;
            for (size_t i = end; i > 0; i--) {
                if (data[i - 1] == '\n') {
                    if (++n == lines) {
                        start = i;
                        break;
                    }
                }
            }
            if (n < lines)
                n++; /* the first line of the window */
            buf_append(out, data + start, end - start);
            buf_append(out, "\n", 1);
        }
        free(data);
    }
    close(fd);
    return n;
}

static int reap_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    if (flag == FTW_DP)
        (void)rmdir(path);
    else
        (void)unlink(path);
    return 0;
}

static void reap_run(uv_work_t *wk)
{
    reap_work_t *r = wk->data;
    if (r->crash) {
        buf_printf(&r->text, "worker %s: %s\n", r->uuid, r->reason);
        for (int i = 0; i < 2; i++) {
            const char *name = i ? "stderr" : "stdout";
            char *path = xasprintf("%s/%s.log", r->dir, name);
            buf_t part = BUF_INIT(0);
            int n = crash_tail(path, r->lines, &part);
            buf_printf(&r->text, "--- %s (last %d lines) ---\n", name, n);
            buf_append(&r->text, part.data ? part.data : "", part.len);
            buf_free(&part);
            r->nlines += n;
            free(path);
        }
    }
    nftw(r->dir, reap_rm, 8, FTW_DEPTH | FTW_PHYS);
}

static void crashlog_add(engine_app_t *app, reap_work_t *r)
{
    if (app->ncrash == ENG_CRASHLOGS_MAX) {
        crashlog_t *old = &app->crashlogs[app->crash_first];
        free(old->reason);
        free(old->text);
        app->crash_first = (app->crash_first + 1) % ENG_CRASHLOGS_MAX;
        app->ncrash--;
    }
    crashlog_t *c = &app->crashlogs[(app->crash_first + app->ncrash) % ENG_CRASHLOGS_MAX];
    app->ncrash++;
    memset(c, 0, sizeof(*c));
    snprintf(c->id, sizeof(c->id), "%" PRId64 "-%.8s", r->at_ms, r->uuid);
    c->at_ms = r->at_ms;
    c->reason = xstrdup(r->reason);
    c->text = buf_steal(&r->text, &c->len);
    c->lines = r->nlines;
}

static void reap_done(uv_work_t *wk, int status)
{
    reap_work_t *r = wk->data;
    engine_app_t *app = r->app;
    if (r->crash && status == 0)
        crashlog_add(app, r);
    buf_free(&r->text);
    free(r->dir);
    free(r);
    app->works--;
    app_maybe_finish(app);
}

static void reap_queue(engine_app_t *app, worker_t *w, bool crash, const char *reason)
{
    reap_work_t *r = xcalloc(1, sizeof(*r));
    r->app = app;
    r->dir = w->dir;
    r->crash = crash;
    r->lines = app->prof.crashlog_limit;
    r->at_ms = eng_wall_ms();
    memcpy(r->uuid, w->uuid, sizeof(r->uuid));
    snprintf(r->reason, sizeof(r->reason), "%s", reason);
    buf_init(&r->text, 0);
    r->work.data = r;
    app->works++;
    if (uv_queue_work(app->loop, &r->work, reap_run, reap_done) != 0) {
        app->works--;
        buf_free(&r->text);
        free(r->dir);
        free(r);
    }
}

/* A spare ended before anyone took it: dropped on purpose, or it could
 * not get as far as its hold (a cgroup, the working directory), which a
 * fresh start would hit too: backoff, as for a crash. */
static void spare_on_exit(worker_t *w, const isolate_exit_t *how)
{
    engine_app_t *app = w->app;
    if (app->spare == w)
        app->spare = NULL;
    app->nspares--;
    if (!w->killed && !app->stopping) {
        log_warn("engine", "%s: spare worker %s ended: %s", app->name, w->uuid, how->reason);
        app_backoff(app, NULL);
        app_tick_ensure(app);
    }
    reap_queue(app, w, false, how->reason);
    free(w);
    app_maybe_finish(app);
}

static void worker_on_exit(isolate_proc_t *p, const isolate_exit_t *how, void *data)
{
    worker_t *w = data;
    engine_app_t *app = w->app;
    app->iso->release(p);
    w->proc = NULL;
    app->iso->cleanup(w->iso_id, w->dir);
    if (w->spare) {
        spare_on_exit(w, how);
        return;
    }
    bool asked = w->state == W_TERMINATING && !w->failed;
    bool crash = !asked && !app->stopping;
    char reason[300];
    if (w->failed)
        snprintf(reason, sizeof(reason), "%.150s (%.140s)", w->why, how->reason);
    else
        snprintf(reason, sizeof(reason), "%s", how->reason);
    if (crash && !w->failed)
        log_warn("engine", "%s: worker %s %s", app->name, w->uuid, how->reason);
    else
        log_debug("engine", "%s: worker %s ended: %s", app->name, w->uuid, reason);
    if (w->conn) {
        worker_set(w, W_TERMINATING); /* conn_lost: no second kill */
        econn_close(w->conn, reason);
    }
    worker_fail_invs(w, reason);
    bool never_active = !w->active_at;
    worker_unlink(w);
    if (crash) {
        app->crashes++;
        app_backoff(app, w);
    }
    reap_queue(app, w, crash, reason);
    free(w);
    if (crash && never_active)
        app_spawn_failed(app, reason);
    app_dispatch(app);
    app_adjust(app);
    app_maybe_finish(app);
}

/* ---- the worker protocol ---- */

static void worker_on_msg(econn_t *c, const rpc_msg_t *m);

static void worker_handshake(econn_t *c, const rpc_msg_t *m)
{
    engine_app_t *app = c->app;
    const char *uuid;
    size_t len;
    err_t err = {0};
    if (m->channel != RPC_CONTROL_CHANNEL || m->type != RPC_HANDSHAKE ||
        rpc_arg_str(m, 0, &uuid, &len, &err) != 0) {
        log_info("engine", "%s: a worker connection did not start with a handshake", app->name);
        econn_close(c, "no handshake");
        return;
    }
    worker_t *w = app->workers;
    while (w && !(strlen(w->uuid) == len && memcmp(w->uuid, uuid, len) == 0))
        w = w->next;
    if (!w || w->conn || (w->state != W_SPAWNING && w->state != W_HANDSHAKING)) {
        log_info("engine", "%s: handshake with unknown or duplicate uuid %.*s refused", app->name,
                 (int)(len > 40 ? 40 : len), uuid);
        econn_close(c, "unknown uuid");
        return;
    }
    c->owner = w;
    c->on_msg = worker_on_msg;
    c->on_lost = worker_conn_lost;
    w->conn = c;
    uint64_t now = uv_now(app->loop);
    w->active_at = w->idle_since = w->last_recv = w->last_sent = now;
    worker_set(w, W_ACTIVE);
    econn_send(c, RPC_CONTROL_CHANNEL, RPC_HEARTBEAT, "");
    log_debug("engine", "%s: worker %s active", app->name, w->uuid);
    app_dispatch(app);
    app_adjust(app);
}

static inv_t *worker_find(worker_t *w, uint64_t ch)
{
    for (inv_t *i = w->invs; i; i = i->w_next)
        if (i->wch == ch)
            return i;
    return NULL;
}

static void worker_on_msg(econn_t *c, const rpc_msg_t *m)
{
    worker_t *w = c->owner;
    engine_app_t *app = c->app;
    char why[300];
    w->last_recv = uv_now(app->loop);
    if (m->channel == RPC_CONTROL_CHANNEL) {
        if (m->type == RPC_HEARTBEAT)
            return;
        if (m->type == RPC_TERMINATE) {
            /* the worker wants to go: answer, then let it exit */
            if (w->state != W_TERMINATING) {
                log_info("engine", "%s: worker %s asks to terminate", app->name, w->uuid);
                worker_terminate(w, "worker asked to terminate");
            }
            return;
        }
        snprintf(why, sizeof(why), "protocol error: control message of type %" PRIu64, m->type);
        worker_kill(w, true, why);
        return;
    }
    inv_t *inv = worker_find(w, m->channel);
    if (!inv) {
        if (m->channel <= w->chans.last)
            return; /* a channel the engine gave up on (timeout, client gone) */
        snprintf(why, sizeof(why),
                 "protocol error: channel %" PRIu64 " was never opened (last %" PRIu64 ")",
                 m->channel, w->chans.last);
        worker_kill(w, true, why);
        return;
    }
    if (inv->w_in_done)
        return; /* write after close: dropped */
    const char *p;
    size_t len;
    err_t err = {0};
    if (m->type > RPC_CLOSE || (m->type == RPC_WRITE && rpc_arg_bytes(m, 0, &p, &len, &err))) {
        snprintf(why, sizeof(why), "protocol error on channel %" PRIu64 ": %.200s", m->channel,
                 m->type > RPC_CLOSE ? "unknown message type" : err.msg);
        worker_kill(w, true, why);
        return;
    }
    econn_t *dst = inv->client && !inv->c_out_done ? inv->client->conn : NULL;
    if (dst)
        econn_forward(dst, inv->cch, m);
    if (m->type != RPC_WRITE) {
        inv->w_in_done = true;
        if (!inv->c_out_done) {
            inv->c_out_done = true;
            if (m->type == RPC_CLOSE)
                app->served++;
            else
                app->failed++;
        }
        w->served++;
        inv_maybe_free(inv);
    }
    if (dst)
        econn_pace(c, dst);
}

void worker_accept(engine_app_t *app, econn_t *c)
{
    c->on_msg = worker_handshake;
    c->on_lost = worker_conn_lost;
    app_tick_ensure(app);
}

/* ---- growth, shrinking, time ---- */

/* Bring the pool towards what it should be: pinned size, or grown with
 * the queue (always one worker coming when something waits and none is
 * there), sealing workers retired once empty. */
void app_adjust(engine_app_t *app)
{
    if (app->stopping || app->finishing)
        return;
    int starting = 0, active = 0, alive = 0;
    for (worker_t *w = app->workers; w; w = w->next) {
        if (w->state == W_SEALING && !w->load)
            worker_terminate(w, "sealed and idle");
        if (w->state == W_SPAWNING || w->state == W_HANDSHAKING)
            starting++;
        if (w->state == W_ACTIVE)
            active++;
        if (w->state != W_TERMINATING && w->state != W_SEALING)
            alive++;
    }
    uint64_t now = uv_now(app->loop);
    bool may_spawn = now >= app->spawn_after;
    if (app->pin > 0) {
        while (alive < app->pin && may_spawn) {
            if (worker_spawn(app) != 0)
                return;
            alive++;
        }
        /* too many: seal the least loaded active ones */
        while (alive > app->pin) {
            worker_t *pick = NULL;
            for (worker_t *w = app->workers; w; w = w->next)
                if ((w->state == W_ACTIVE || w->state == W_SPAWNING || w->state == W_HANDSHAKING) &&
                    (!pick || w->load < pick->load))
                    pick = w;
            if (!pick)
                break;
            if (pick->state == W_ACTIVE && pick->load) {
                worker_set(pick, W_SEALING);
            } else {
                worker_terminate(pick, "pool pinned to fewer workers");
            }
            alive--;
        }
        return;
    }
    int limit = app->prof.pool_limit;
    while (may_spawn && alive < limit &&
           ((app->qlen > 0 && active + starting == 0) ||
            app->qlen > app->prof.grow_threshold * (starting + 1))) {
        if (worker_spawn(app) != 0)
            return;
        starting++;
        alive++;
    }
    app_spare_ensure(app);
}

static void app_tick(uv_timer_t *t);

void app_tick_ensure(engine_app_t *app)
{
    if (app->finishing || uv_is_active((uv_handle_t *)&app->tick))
        return;
    uv_timer_start(&app->tick, app_tick, ENG_TICK_MS, ENG_TICK_MS);
}

static void app_tick_workers(engine_app_t *app, uint64_t now)
{
    char why[200];
    for (worker_t *w = app->workers, *next; w; w = next) {
        next = w->next;
        uint64_t in_state = now - w->since;
        switch (w->state) {
        case W_SPAWNING:
            if (in_state >= app->prof.spawn_ms) {
                snprintf(why, sizeof(why), "spawn timeout: not running after %" PRIu64 " ms",
                         in_state);
                worker_kill(w, true, why);
            }
            break;
        case W_HANDSHAKING:
            if (in_state >= app->prof.handshake_ms) {
                snprintf(why, sizeof(why), "handshake timeout: none after %" PRIu64 " ms",
                         in_state);
                worker_kill(w, true, why);
            }
            break;
        case W_ACTIVE:
        case W_SEALING:
            if (!w->conn)
                break;
            if (w->conn->blocked_by) {
                w->last_recv = now; /* not read while paused: silence is ours */
            } else if (now - w->last_recv >= app->prof.heartbeat_ms) {
                snprintf(why, sizeof(why), "heartbeat timeout: silent for %" PRIu64 " ms",
                         now - w->last_recv);
                worker_kill(w, true, why);
                break;
            }
            if (now - w->last_sent >= app->prof.heartbeat_ms / 2) {
                w->last_sent = now;
                econn_send(w->conn, RPC_CONTROL_CHANNEL, RPC_HEARTBEAT, "");
            }
            if (w->state == W_ACTIVE && !app->pin && !w->load &&
                now - w->idle_since >= app->prof.idle_ms)
                worker_terminate(w, "idle");
            if (w->active_at && now - w->active_at >= ENG_STABLE_MS && app->backoff_ms &&
                now >= app->spawn_after)
                app->backoff_ms = 0;
            break;
        case W_TERMINATING:
            if (!w->killed && w->kill_at && now >= w->kill_at) {
                log_warn("engine", "%s: worker %s did not exit within terminate-timeout: SIGKILL",
                         app->name, w->uuid);
                worker_kill(w, false, "did not exit within terminate-timeout");
            }
            break;
        }
    }
}

/* Invocations past their deadline: [3, 110], in the queue or on a worker
 * (whose slot is freed at once: the worker is told, not waited for). */
static void app_tick_deadlines(engine_app_t *app, uint64_t now)
{
    char msg[160];
    for (inv_t *inv = app->q_head, *next; inv; inv = next) {
        next = inv->q_next;
        if (now < inv->deadline)
            continue;
        snprintf(msg, sizeof(msg), "deadline passed after %" PRIu64 " ms in the queue",
                 now - inv->enqueued_at);
        app->timed_out++;
        inv_abort(inv, RPC_ECAT_ENGINE, ETIMEDOUT, true, msg);
    }
    for (worker_t *w = app->workers; w; w = w->next) {
        for (inv_t *inv = w->invs, *next; inv; inv = next) {
            next = inv->w_next;
            if (now < inv->deadline)
                continue;
            snprintf(msg, sizeof(msg), "request timed out after %" PRIu64 " ms",
                     now - inv->enqueued_at);
            app->timed_out++;
            inv_abort(inv, RPC_ECAT_ENGINE, ETIMEDOUT, true, msg);
            next = w->invs; /* the list changed: start over (few entries) */
        }
    }
}

static void app_tick(uv_timer_t *t)
{
    engine_app_t *app = t->data;
    uint64_t now = uv_now(app->loop);
    app_tick_deadlines(app, now);
    app_tick_workers(app, now);
    bool busy = app->workers || app->q_head || app_spare_wanted(app);
    for (econn_t *c = app->conns, *next; c; c = next) {
        next = c->next;
        if (c->kind == ECONN_WORKER && !c->owner) {
            busy = true;
            if (now - c->accepted_at >= app->prof.handshake_ms)
                econn_close(c, "no handshake in time");
        } else if (c->kind == ECONN_CLIENT && c->high_since) {
            busy = true;
            if (now - c->high_since >= ENG_STALL_MS) {
                log_info("engine", "%s: client not reading its replies for %d s: disconnected",
                         app->name, ENG_STALL_MS / 1000);
                econn_close(c, "client too slow");
            }
        }
    }
    app_adjust(app);
    if (!busy && !app->workers && !app->q_head)
        uv_timer_stop(t);
}
