/* Engine apps: start (sockets, leftovers of an earlier agent), stop, pin,
 * status and crashlogs. The pool itself is in pool.c, the invocation
 * service in service.c. */
#include "engine/engine_internal.h"

#include "core/alloc.h"
#include "core/log.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

const char *eng_wstate_name(int s);

/* ---- profile ---- */

static int prof_int(const json_t *pool, const char *name, int def, int min, int *out, err_t *err)
{
    const json_t *v = pool ? json_object_get(pool, name) : NULL;
    if (!v) {
        *out = def;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > 1000000)
        return err_set(err, -EINVAL, "pool.%s: expected an integer %d-1000000", name, min);
    *out = (int)json_integer_value(v);
    return 0;
}

static int prof_secs(const json_t *pool, const char *name, double def, uint64_t *out, err_t *err)
{
    const json_t *v = pool ? json_object_get(pool, name) : NULL;
    double s = def;
    if (v) {
        if (!json_is_number(v) || !(json_number_value(v) > 0) ||
            json_number_value(v) > 366.0 * 86400)
            return err_set(err, -EINVAL, "pool.%s: expected seconds > 0 (at most a year)", name);
        s = json_number_value(v);
    }
    *out = (uint64_t)llround(s * 1000);
    if (!*out)
        *out = 1;
    return 0;
}

int engine_profile_parse(const json_t *pool, engine_profile_t *p, err_t *err)
{
    memset(p, 0, sizeof(*p));
    if (pool && !json_is_object(pool))
        return err_set(err, -EINVAL, "pool: expected an object");
    int rc;
    if ((rc = prof_int(pool, "pool-limit", 10, 1, &p->pool_limit, err)) ||
        (rc = prof_int(pool, "queue-limit", 100, 0, &p->queue_limit, err)) ||
        (rc = prof_int(pool, "concurrency", 10, 1, &p->concurrency, err)))
        return rc;
    int grow = p->queue_limit / p->pool_limit / 2;
    if ((rc = prof_int(pool, "grow-threshold", grow < 1 ? 1 : grow, 1, &p->grow_threshold, err)) ||
        (rc = prof_int(pool, "crashlog-limit", 50, 0, &p->crashlog_limit, err)) ||
        (rc = prof_secs(pool, "idle-timeout", 600, &p->idle_ms, err)) ||
        (rc = prof_secs(pool, "spawn-timeout", 1, &p->spawn_ms, err)) ||
        (rc = prof_secs(pool, "handshake-timeout", 5, &p->handshake_ms, err)) ||
        (rc = prof_secs(pool, "heartbeat-timeout", 30, &p->heartbeat_ms, err)) ||
        (rc = prof_secs(pool, "terminate-timeout", 10, &p->terminate_ms, err)) ||
        (rc = prof_secs(pool, "request-timeout", 86400, &p->request_ms, err)))
        return rc;
    const json_t *spare = pool ? json_object_get(pool, "spare") : NULL;
    if (spare && !json_is_boolean(spare))
        return err_set(err, -EINVAL, "pool.spare: expected true or false");
    p->spare = !spare || json_is_true(spare);
    return 0;
}

/* ---- start ---- */

static char **strv_dup(char *const *v)
{
    size_t n = 0;
    while (v && v[n])
        n++;
    char **out = xcalloc(n + 1, sizeof(char *));
    for (size_t i = 0; i < n; i++)
        out[i] = xstrdup(v[i]);
    return out;
}

static void strv_free(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

static int eng_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    if (flag == FTW_DP)
        (void)rmdir(path);
    else
        (void)unlink(path);
    return 0;
}

/* Workers of an earlier agent (it died or restarted): whatever still runs
 * in their cgroups is killed and their directories go. Workers are never
 * re-adopted: their socket went with the agent, and an SDK worker exits
 * when it loses its socket anyway. A few syscalls per leftover. */
static void eng_clear_leftovers(engine_app_t *app, const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char *sub = xasprintf("%s/%s", dir, e->d_name);
        char *idf = xasprintf("%s/instance_id", sub);
        FILE *f = fopen(idf, "r");
        char id[160] = "";
        if (f) {
            if (!fgets(id, sizeof(id), f))
                id[0] = '\0';
            fclose(f);
            id[strcspn(id, "\n")] = '\0';
        }
        if (id[0])
            app->iso->cleanup(id, sub);
        nftw(sub, eng_rm, 8, FTW_DEPTH | FTW_PHYS);
        free(idf);
        free(sub);
        n++;
    }
    closedir(d);
    if (n)
        log_info("engine", "%s: cleared %d worker(s) left by an earlier agent", app->name, n);
}

static void eng_listen_closed(uv_handle_t *h)
{
    engine_app_t *app = h->data;
    app->handles--;
    app_maybe_finish(app);
}

static void eng_free(engine_app_t *app)
{
    for (int i = 0; i < app->ncrash; i++) {
        crashlog_t *c = &app->crashlogs[(app->crash_first + i) % ENG_CRASHLOGS_MAX];
        free(c->reason);
        free(c->text);
    }
    if (app->sock_path)
        unlink(app->sock_path);
    if (app->sock_tmpdir)
        rmdir(app->sock_tmpdir);
    free(app->sock_tmpdir);
    free(app->sock_path);
    free(app->name);
    free(app->id);
    free(app->cwd);
    free(app->run_dir);
    free(app->locator);
    strv_free(app->argv);
    strv_free(app->envp);
    free(app);
}

static void worker_on_conn(uv_stream_t *server, int status)
{
    engine_app_t *app = server->data;
    if (status < 0)
        return;
    econn_t *c = econn_new(app, ECONN_WORKER);
    uv_pipe_init(app->loop, &c->u.pipe, 0);
    if (uv_accept(server, &c->u.s) != 0) {
        econn_close(c, "accept failed");
        return;
    }
    if (app->stopping) {
        econn_close(c, "app is stopping");
        return;
    }
    worker_accept(app, c);
    if (econn_start(c) != 0)
        econn_close(c, "cannot read");
}

int engine_app_start(uv_loop_t *loop, const engine_opts_t *o, engine_app_t **out, err_t *err)
{
    *out = NULL;
    if (!o->name || !o->id || !o->argv || !o->argv[0] || !o->run_dir || !o->listen || !o->isolate)
        return err_set(err, -EINVAL,
                       "engine: name, id, argv, run_dir, listen and isolate are needed");
    engine_profile_t prof;
    int rc = engine_profile_parse(o->pool, &prof, err);
    if (rc)
        return rc;
    engine_app_t *app = xcalloc(1, sizeof(*app));
    app->loop = loop;
    app->prof = prof;
    app->name = xstrdup(o->name);
    app->id = xstrdup(o->id);
    app->version = o->version;
    app->argv = strv_dup(o->argv);
    app->envp = strv_dup(o->envp);
    app->cwd = xstrdup(o->cwd ? o->cwd : o->run_dir);
    app->run_dir = xstrdup(o->run_dir);
    app->locator = xstrdup(o->locator ? o->locator : "127.0.0.1:10053");
    app->iso = o->isolate;
    app->harden = o->harden;
    app->cpus = o->cpus;
    app->mem_bytes = o->mem_bytes;

    char *wdir = xasprintf("%s/workers", o->run_dir);
    if (mkdir(wdir, 0755) != 0 && errno != EEXIST) {
        rc = err_set(err, -errno, "cannot create %s: %s", wdir, strerror(errno));
        free(wdir);
        eng_free(app);
        return rc;
    }
    eng_clear_leftovers(app, wdir);
    free(wdir);
    /* sun_path holds 108 bytes: a deep run_dir gets a short directory of
     * its own for the socket */
    struct sockaddr_un sun;
    app->sock_path = xasprintf("%s/worker.sock", o->run_dir);
    if (strlen(app->sock_path) >= sizeof(sun.sun_path)) {
        char tmpl[] = "/tmp/drover-w-XXXXXX";
        if (!mkdtemp(tmpl)) {
            rc = err_set(err, -errno, "mkdtemp for the worker socket: %s", strerror(errno));
            eng_free(app);
            return rc;
        }
        app->sock_tmpdir = xstrdup(tmpl);
        free(app->sock_path);
        app->sock_path = xasprintf("%s/worker.sock", tmpl);
    }
    unlink(app->sock_path);

    uv_timer_init(loop, &app->tick);
    app->tick.data = app;
    app->handles++;
    uv_pipe_init(loop, &app->wlisten, 0);
    app->wlisten.data = app;
    app->handles++;
    if ((rc = uv_pipe_bind(&app->wlisten, app->sock_path)) ||
        (rc = uv_listen((uv_stream_t *)&app->wlisten, 128, worker_on_conn))) {
        err_set(err, rc, "worker socket %s: %s", app->sock_path, uv_strerror(rc));
        goto fail;
    }
    chmod(app->sock_path, 0700);
    if ((rc = service_listen(app, o->listen, err)))
        goto fail;
    log_info("engine",
             "%s: invocation service on port %d, workers on %s (pool-limit %d, "
             "queue-limit %d, concurrency %d)",
             app->name, app->port, app->sock_path, prof.pool_limit, prof.queue_limit,
             prof.concurrency);
    *out = app;
    app_adjust(app); /* parks the spare */
    return 0;
fail:
    /* handles are closed and the app freed once they are: stop does it */
    app->stopping = true;
    app->finishing = true;
    uv_close((uv_handle_t *)&app->tick, eng_listen_closed);
    uv_close((uv_handle_t *)&app->wlisten, eng_listen_closed);
    if (app->clisten.type == UV_TCP)
        uv_close((uv_handle_t *)&app->clisten, eng_listen_closed);
    app->done = NULL;
    return rc;
}

int engine_app_port(const engine_app_t *app)
{
    return app->port;
}

int engine_app_pin(engine_app_t *app, int n, err_t *err)
{
    if (n < 0 || n > app->prof.pool_limit)
        return err_set(err, -EINVAL, "workers: expected 0 (automatic) to pool-limit %d, got %d",
                       app->prof.pool_limit, n);
    if (app->stopping)
        return err_set(err, -ESHUTDOWN, "app is stopping");
    if (n != app->pin)
        log_info("engine", "%s: pool %s%d", app->name, n ? "pinned to " : "automatic (was ",
                 n ? n : app->pin);
    app->pin = n;
    /* an unpinned pool shrinks through idle-timeout like any other */
    uint64_t now = uv_now(app->loop);
    for (worker_t *w = app->workers; w; w = w->next)
        if (!w->load)
            w->idle_since = now;
    app_adjust(app);
    app_tick_ensure(app);
    return 0;
}

/* ---- stop ---- */

void app_maybe_finish(engine_app_t *app)
{
    if (!app->stopping)
        return;
    if (!app->finishing) {
        if (app->workers || app->works || app->nspares)
            return;
        app->finishing = true;
        uv_timer_stop(&app->tick);
        uv_close((uv_handle_t *)&app->tick, eng_listen_closed);
        uv_close((uv_handle_t *)&app->wlisten, eng_listen_closed);
        while (app->conns)
            econn_close(app->conns, "app stopped");
        return; /* the close callbacks come back here */
    }
    if (app->handles || app->works)
        return;
    void (*done)(void *) = app->done;
    void *data = app->done_data;
    log_debug("engine", "%s: stopped", app->name);
    eng_free(app);
    if (done)
        done(data);
}

void engine_app_stop(engine_app_t *app, bool kill_now, void (*done)(void *data), void *data)
{
    app->done = done;
    app->done_data = data;
    if (!app->stopping) {
        app->stopping = true;
        uv_close((uv_handle_t *)&app->clisten, eng_listen_closed);
        while (app->q_head)
            inv_abort(app->q_head, RPC_ECAT_ENGINE, ESHUTDOWN, true, "app is stopping");
    }
    app_spare_drop(app);
    /* a second call may ask for kill_now after a graceful first one */
    app->kill_now = app->kill_now || kill_now;
    for (worker_t *w = app->workers, *next; w; w = next) {
        next = w->next;
        if (app->kill_now || !w->conn) {
            if (!w->why[0])
                snprintf(w->why, sizeof(w->why), "app stopped");
            w->state = W_TERMINATING;
            if (w->conn)
                econn_close(w->conn, "app stopped");
            if (w->proc && !w->killed) {
                w->killed = true;
                app->iso->kill_all(w->proc);
            }
        } else if (w->state != W_TERMINATING) {
            w->state = W_TERMINATING;
            w->since = uv_now(app->loop);
            w->kill_at = w->since + app->prof.terminate_ms;
            econn_send(w->conn, RPC_CONTROL_CHANNEL, RPC_TERMINATE, "us", 1u, "app is stopping");
        }
    }
    app_tick_ensure(app);
    app_maybe_finish(app);
}

/* ---- status ---- */

json_t *engine_app_status(const engine_app_t *app)
{
    int counts[5] = {0};
    json_t *list = json_array();
    uint64_t now = uv_now(app->loop);
    for (const worker_t *w = app->workers; w; w = w->next) {
        counts[w->state]++;
        json_array_append_new(list,
                              json_pack("{s:s, s:s, s:i, s:i, s:I, s:I}", "uuid", w->uuid, "state",
                                        eng_wstate_name(w->state), "pid", (int)w->pid, "load",
                                        w->load, "served", (json_int_t)w->served, "since_ms",
                                        (json_int_t)(now - w->since)));
    }
    json_t *workers = json_object();
    for (int i = 0; i < 5; i++)
        json_object_set_new(workers, eng_wstate_name(i), json_integer(counts[i]));
    json_object_set_new(workers, "total", json_integer(app->nworkers));
    json_t *totals =
        json_pack("{s:I, s:I, s:I, s:I, s:I, s:I}", "served", (json_int_t)app->served, "refused",
                  (json_int_t)app->refused, "timed_out", (json_int_t)app->timed_out, "failed",
                  (json_int_t)app->failed, "crashes", (json_int_t)app->crashes, "spawned",
                  (json_int_t)app->spawned);
    uint64_t backoff = app->spawn_after > now ? app->spawn_after - now : 0;
    json_t *spare = app->spare ? json_pack("{s:s, s:i, s:I}", "uuid", app->spare->uuid, "pid",
                                           (int)app->spare->pid, "since_ms",
                                           (json_int_t)(now - app->spare->since))
                               : json_null();
    return json_pack("{s:s, s:i, s:o, s:o, s:i, s:i, s:i, s:i, s:i, s:i, s:o, s:I, s:o, s:b}",
                     "app", app->name, "pin", app->pin, "workers", workers, "spare", spare,
                     "queue", app->qlen,
                     "queue_limit", app->prof.queue_limit, "pool_limit", app->prof.pool_limit,
                     "concurrency", app->prof.concurrency, "running", app->running, "clients",
                     app->nclients, "totals", totals, "backoff_ms", (json_int_t)backoff,
                     "workers_list", list, "stopping", app->stopping);
}

static void eng_iso_time(int64_t ms, char *out, size_t n)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    size_t w = strftime(out, n, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + w, n - w, ".%03dZ", (int)(ms % 1000));
}

json_t *engine_app_crashlogs(const engine_app_t *app)
{
    json_t *out = json_array();
    for (int i = 0; i < app->ncrash; i++) {
        const crashlog_t *c = &app->crashlogs[(app->crash_first + i) % ENG_CRASHLOGS_MAX];
        char at[40];
        eng_iso_time(c->at_ms, at, sizeof(at));
        json_array_append_new(out, json_pack("{s:s, s:s, s:s, s:i}", "id", c->id, "at", at,
                                             "reason", c->reason, "lines", c->lines));
    }
    return out;
}

char *engine_app_crashlog(const engine_app_t *app, const char *id, size_t *len)
{
    for (int i = 0; i < app->ncrash; i++) {
        const crashlog_t *c = &app->crashlogs[(app->crash_first + i) % ENG_CRASHLOGS_MAX];
        if (strcmp(c->id, id) == 0) {
            char *t = xmalloc(c->len + 1);
            memcpy(t, c->text, c->len);
            t[c->len] = '\0';
            *len = c->len;
            return t;
        }
    }
    return NULL;
}
