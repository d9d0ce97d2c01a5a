#include "server/server.h"

#include "api/api.h"
#include "core/alloc.h"
#include "core/err.h"
#include "core/log.h"
#include "http/server.h"
#include "store/store.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct server {
    uv_loop_t loop;
    uv_signal_t sigterm, sigint;
    store_t *store;
    http_server_t *http;
    api_t *api;
    const server_options_t *opts;
    bool stopping;
} server_t;

/* mkdir -p: the data directory may be nested and new. */
static int server_mkdirs(const char *path, err_t *err)
{
    char *p = xstrdup(path);
    int rc = 0;
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, 0755) && errno != EEXIST) {
            rc = err_set(err, -errno, "cannot create %s: %s", p, strerror(errno));
            goto out;
        }
        *s = '/';
    }
    if (mkdir(p, 0755) && errno != EEXIST)
        rc = err_set(err, -errno, "cannot create data directory %s: %s", p, strerror(errno));
out:
    free(p);
    return rc;
}

static void server_store_closed(void *data)
{
    server_t *s = data;
    s->store = NULL;
    uv_close((uv_handle_t *)&s->sigterm, NULL);
    uv_close((uv_handle_t *)&s->sigint, NULL);
}

static void server_http_closed(void *data)
{
    server_t *s = data;
    s->http = NULL;
    api_free(s->api);
    s->api = NULL;
    store_close(s->store, server_store_closed, s);
}

/* First signal: drain (stop accepting, let requests finish, end streams).
 * A second signal while draining exits at once, as operators expect. */
static void server_on_signal(uv_signal_t *h, int signum)
{
    server_t *s = h->data;
    if (s->stopping) {
        log_warn("server", "second signal: exiting now");
        exit(1);
    }
    s->stopping = true;
    log_info("server", "%s received, shutting down", strsignal(signum));
    http_server_shutdown(s->http, s->opts->shutdown_grace_ms, server_http_closed, s);
}

int server_run(const server_options_t *opts)
{
    err_t err = {0};
    int rc = server_mkdirs(opts->data_dir, &err);
    if (rc) {
        log_error("server", "%s", err.msg);
        return rc;
    }
    signal(SIGPIPE, SIG_IGN);

    server_t s = {0};
    s.opts = opts;
    uv_loop_init(&s.loop);

    char *db = xasprintf("%s/store.db", opts->data_dir);
    store_options_t so = {.backend = opts->store_backend, .path = db};
    rc = store_open(&s.loop, &so, &s.store, &err);
    if (rc) {
        log_error("server", "opening store %s: %s", db, err_str(&err, rc));
        free(db);
        uv_loop_close(&s.loop);
        return rc;
    }
    api_options_t ao = {.store_backend = opts->store_backend};
    s.api = api_new(&s.loop, s.store, &ao);
    http_limits_t lim;
    http_limits_default(&lim);
    rc = http_server_listen(&s.loop, opts->api_addr, &lim, api_handle, s.api, &s.http, &err);
    if (rc) {
        log_error("server", "API listener on %s: %s", opts->api_addr, err_str(&err, rc));
        api_free(s.api);
        store_close(s.store, NULL, NULL);
        uv_run(&s.loop, UV_RUN_DEFAULT);
        uv_loop_close(&s.loop);
        free(db);
        return rc;
    }
    uv_signal_init(&s.loop, &s.sigterm);
    uv_signal_init(&s.loop, &s.sigint);
    s.sigterm.data = s.sigint.data = &s;
    uv_signal_start(&s.sigterm, server_on_signal, SIGTERM);
    uv_signal_start(&s.sigint, server_on_signal, SIGINT);

    log_info("server", "drover %s ready: API http://%s (store %s at %s, revision %lld)", opts->mode,
             opts->api_addr, opts->store_backend, db, (long long)store_revision(s.store));
    free(db);
    uv_run(&s.loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(&s.loop);
    if (rc)
        log_warn("server", "loop closed with handles still open: %s", uv_strerror(rc));
    log_info("server", "stopped");
    return 0;
}
