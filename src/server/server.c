#include "server/server.h"

#include "api/api.h"
#include "core/alloc.h"
#include "core/err.h"
#include "core/log.h"
#include "core/str.h"
#include "gateway/gateway.h"
#include "http/server.h"
#include "locator/announce.h"
#include "locator/dns.h"
#include "locator/locator.h"
#include "locator/meta.h"
#include "sched/assign.h"
#include "server/registry.h"
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
    sched_assign_t *assign;
    agent_t *agent;
    dns_server_t *dns;
    loc_table_t *merged; /* every node's table, merged by the metalocator */
    meta_t *meta;
    loc_server_t *meta_loc; /* serves `merged` to routers and `drover resolve` */
    registry_t *registry;
    announce_listener_t *listener; /* multicast discovery (opt-in) */
    gateway_t *gateway;            /* dev: routes HTTP to what the metalocator knows */
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

/* Shutdown runs as a chain of steps, each started from the previous one's
 * completion: agent (its instances report through the API), placement,
 * HTTP, store, signals. */
static void server_stop_signals(server_t *s)
{
    uv_close((uv_handle_t *)&s->sigterm, NULL);
    uv_close((uv_handle_t *)&s->sigint, NULL);
}

static void server_store_closed(void *data)
{
    server_t *s = data;
    s->store = NULL;
    server_stop_signals(s);
}

static void server_http_closed(void *data)
{
    server_t *s = data;
    s->http = NULL;
    api_free(s->api);
    s->api = NULL;
    if (s->store)
        store_close(s->store, server_store_closed, s);
    else
        server_stop_signals(s);
}

static void server_assign_stopped(void *data)
{
    server_t *s = data;
    s->assign = NULL;
    if (s->http)
        http_server_shutdown(s->http, s->opts->shutdown_grace_ms, server_http_closed, s);
    else
        server_http_closed(s);
}

static void server_meta_loc_stopped(void *data)
{
    server_t *s = data;
    s->meta_loc = NULL;
    loc_table_free(s->merged);
    s->merged = NULL;
    if (s->assign)
        sched_assign_stop(s->assign, server_assign_stopped, s);
    else
        server_assign_stopped(s);
}

static void server_meta_stopped(void *data)
{
    server_t *s = data;
    s->meta = NULL;
    if (s->meta_loc)
        loc_server_stop(s->meta_loc, server_meta_loc_stopped, s);
    else
        server_meta_loc_stopped(s);
}

/* The agent goes first (its draining instances wait for the metalocator's
 * confirmations), then the metalocator, then placement. */
static void server_listener_stopped(void *data)
{
    server_t *s = data;
    if (s->meta)
        meta_stop(s->meta, server_meta_stopped, s);
    else
        server_meta_stopped(s);
}

static void server_agent_stopped(void *data)
{
    server_t *s = data;
    s->agent = NULL;
    registry_stop(s->registry);
    s->registry = NULL;
    if (s->listener) {
        announce_listener_stop(s->listener, server_listener_stopped, s);
        s->listener = NULL;
    } else {
        server_listener_stopped(s);
    }
}

/* A node announced itself (or changed address), or missed 3 announces. */
static void server_on_announce(const char *uuid, const announce_endpoint_t *eps, size_t n, bool up,
                               void *data)
{
    server_t *s = data;
    if (!s->meta || s->stopping)
        return;
    if (!up || n == 0) {
        log_info("server", "node %s stopped announcing", uuid);
        meta_node_remove(s->meta, uuid);
        return;
    }
    char *hp = strchr(eps[0].addr, ':') ? xasprintf("[%s]:%d", eps[0].addr, eps[0].port)
                                        : xasprintf("%s:%d", eps[0].addr, eps[0].port);
    if (meta_node_add(s->meta, uuid, hp) != 0)
        log_warn("server", "announced node %s at %s: not linked", uuid, hp);
    free(hp);
}

static void server_dns_stopped(void *data)
{
    server_t *s = data;
    s->dns = NULL;
    if (s->agent)
        agent_stop(s->agent, s->opts->stop_instances_on_exit, server_agent_stopped, s);
    else
        server_agent_stopped(s);
}

static void server_gateway_stopped(void *data)
{
    server_t *s = data;
    s->gateway = NULL;
    if (s->dns)
        dns_server_stop(s->dns, server_dns_stopped, s);
    else
        server_dns_stopped(s);
}

/* The gateway goes first: its in-flight requests finish while every
 * backend still runs. */
static void server_stop_gateway(server_t *s)
{
    if (s->gateway)
        gateway_stop(s->gateway, s->opts->shutdown_grace_ms, server_gateway_stopped, s);
    else
        server_gateway_stopped(s);
}

/* First signal: drain. A second signal while draining exits at once, as
 * operators expect. */
static void server_on_signal(uv_signal_t *h, int signum)
{
    server_t *s = h->data;
    if (s->stopping) {
        log_warn("server", "second signal: exiting now");
        exit(1);
    }
    s->stopping = true;
    log_info("server", "%s received, shutting down", strsignal(signum));
    server_stop_gateway(s);
}

typedef struct cluster_walk {
    void (*add)(void *ctx, const char *id, const char *host, int port);
    void *ctx;
} cluster_walk_t;

static int server_cluster_node(const meta_node_info_t *n, void *data)
{
    cluster_walk_t *w = data;
    char *host = NULL;
    int port = 0;
    if (str_split_hostport(n->addr, &host, &port) == 0)
        w->add(w->ctx, n->id, host, port);
    free(host);
    return 0;
}

/* `cluster` at the metalocator: every node it links, after itself. */
static void server_cluster(void *data,
                           void (*add)(void *ctx, const char *id, const char *host, int port),
                           void *ctx)
{
    server_t *s = data;
    cluster_walk_t w = {add, ctx};
    if (s->meta)
        meta_nodes_foreach(s->meta, server_cluster_node, &w);
}

static int server_start_control_plane(server_t *s, err_t *err)
{
    const server_options_t *opts = s->opts;
    int rc = server_mkdirs(opts->data_dir, err);
    if (rc)
        return rc;
    char *db = xasprintf("%s/store.db", opts->data_dir);
    store_options_t so = {.backend = opts->store_backend, .path = db};
    rc = store_open(&s->loop, &so, &s->store, err);
    if (rc) {
        err_wrap(err, rc, "opening store %s", db);
        free(db);
        return rc;
    }
    free(db);
    api_options_t ao = {.store_backend = opts->store_backend, .data_dir = opts->data_dir};
    s->api = api_new(&s->loop, s->store, &ao);
    http_limits_t lim;
    http_limits_default(&lim);
    lim.body_limit = api_body_limit;
    lim.body_limit_data = s->api;
    rc = http_server_listen(&s->loop, opts->api_addr, &lim, api_handle, s->api, &s->http, err);
    if (rc)
        return err_wrap(err, rc, "API listener on %s", opts->api_addr);
    rc = sched_assign_start(&s->loop, s->store, &s->assign, err);
    if (rc)
        return err_wrap(err, rc, "starting placement");
    sched_assign_set_lost_delay(s->assign, s->opts->lost_delay_ms);
    /* The metalocator: links every registered node's locator, merges their
     * tables and serves the result, so routers and DNS need one address. */
    s->merged = loc_table_new();
    loc_server_opts_t lo = {.cluster = server_cluster, .data = s};
    const char *maddr = opts->meta_addr ? opts->meta_addr : "0.0.0.0:10053";
    rc = loc_server_start(&s->loop, maddr, s->merged, &lo, &s->meta_loc, err);
    if (rc)
        return err_wrap(err, rc, "metalocator on %s", maddr);
    meta_opts_t mo = {.downstream = s->meta_loc};
    rc = meta_start(&s->loop, s->merged, &mo, &s->meta, err);
    if (rc)
        return err_wrap(err, rc, "starting the metalocator");
    rc = registry_start(s->store, s->meta, s->meta_loc, &s->registry, err);
    if (rc)
        return rc;
    /* Static peers: nodes found by configuration, where neither the
     * registry nor multicast reaches (another site, another network). */
    if (opts->peers && *opts->peers) {
        char *list = xstrdup(opts->peers);
        for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok && !rc;
             tok = strtok_r(NULL, ",", &save)) {
            char *eq = strchr(tok, '=');
            char *host = NULL;
            int port = 0;
            if (!eq || eq == tok || str_split_hostport(eq + 1, &host, &port) || port == 0) {
                rc = err_set(err, -EINVAL, "peers: %s: expected id=host:port", tok);
            } else {
                *eq = '\0';
                if (meta_node_add(s->meta, tok, eq + 1) != 0)
                    rc = err_set(err, -EINVAL, "peers: cannot link %s at %s", tok, eq + 1);
            }
            free(host);
        }
        free(list);
        if (rc)
            return rc;
    }
    if (opts->discover) {
        char *group = NULL;
        int gport = 0;
        if (str_split_hostport(opts->discover, &group, &gport))
            return err_set(err, -EINVAL, "discover %s: expected GROUP:PORT", opts->discover);
        announce_opts_t lo_an = {.group = group,
                                 .port = gport,
                                 .interval_ms = (uint32_t)opts->announce_interval_ms,
                                 .interface = opts->announce_if};
        rc = announce_listener_start(&s->loop, &lo_an, server_on_announce, s, &s->listener, err);
        free(group);
        if (rc)
            return err_wrap(err, rc, "listening for announces on %s", opts->discover);
        log_info("server", "finding nodes by multicast on %s", opts->discover);
    }
    log_info("server", "metalocator on %s:%d", maddr, loc_server_port(s->meta_loc));
    return 0;
}

/* DNS answers from the merged table (every node), or from the agent's own
 * table on an agent-only process. */
static int server_start_dns(server_t *s, err_t *err)
{
    const server_options_t *opts = s->opts;
    loc_table_t *t = s->merged ? s->merged : (s->agent ? agent_table(s->agent) : NULL);
    int rc = t ? dns_server_start(&s->loop, opts->dns_addr, t, NULL, &s->dns, err) : 0;
    if (rc)
        err_wrap(err, rc, "DNS on %s", opts->dns_addr);
    else if (s->dns)
        log_info("server", "DNS on %s:%d (names like web.production.drover.)", opts->dns_addr,
                 dns_server_port(s->dns));
    return rc;
}

int server_run(const server_options_t *opts)
{
    err_t err = {0};
    signal(SIGPIPE, SIG_IGN);
    server_t s = {0};
    s.opts = opts;
    uv_loop_init(&s.loop);
    uv_signal_init(&s.loop, &s.sigterm);
    uv_signal_init(&s.loop, &s.sigint);
    s.sigterm.data = s.sigint.data = &s;
    /* Watch signals before anything starts: a SIGTERM during startup must
     * mean a clean stop once the loop runs, not the default instant death. */
    uv_signal_start(&s.sigterm, server_on_signal, SIGTERM);
    uv_signal_start(&s.sigint, server_on_signal, SIGINT);

    int rc = 0;
    if (opts->run_control_plane)
        rc = server_start_control_plane(&s, &err);
    if (!rc && opts->gateway_addr && s.meta_loc) {
        char *meta = xasprintf("127.0.0.1:%d", loc_server_port(s.meta_loc));
        gateway_opts_t go = {.metalocator = meta, .uuid = "dev-gateway"};
        go.proxy.http_addr = opts->gateway_addr;
        rc = gateway_start(&s.loop, &go, &s.gateway, &err);
        free(meta);
        if (rc)
            err_wrap(&err, rc, "gateway on %s", opts->gateway_addr);
        else
            log_info("server", "gateway on http://%s (apps' routes; Host header picks the app)",
                     opts->gateway_addr);
    }
    /* Fixed ports bind before the agent takes ephemeral ones, so those can
     * never land on them. */
    if (!rc && opts->dns_addr && s.merged)
        rc = server_start_dns(&s, &err);
    if (!rc && opts->run_agent) {
        rc = agent_start(&s.loop, &opts->agent, &s.agent, &err);
        if (rc)
            err_wrap(&err, rc, "starting the agent");
    }
    if (!rc && opts->dns_addr && !s.merged)
        rc = server_start_dns(&s, &err);
    if (rc) {
        log_error("server", "%s", err_str(&err, rc));
        s.stopping = true;
        server_stop_gateway(&s);
        uv_run(&s.loop, UV_RUN_DEFAULT);
        uv_loop_close(&s.loop);
        return rc;
    }
    if (opts->run_control_plane)
        log_info("server", "drover %s ready: API http://%s (store %s in %s, revision %lld)",
                 opts->mode, opts->api_addr, opts->store_backend, opts->data_dir,
                 (long long)store_revision(s.store));
    if (s.agent)
        log_info("server", "agent on node %s", agent_node_id(s.agent));
    uv_run(&s.loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(&s.loop);
    if (rc)
        log_warn("server", "loop closed with handles still open: %s", uv_strerror(rc));
    log_info("server", "stopped");
    return 0;
}
