/* The node agent: node registration and lease, the assignment watch, and
 * convergence of this node's instances towards it. */
#include "agent/agent_internal.h"

#include "core/alloc.h"
#include "core/json.h"
#include "core/log.h"
#include "core/rpc.h"
#include "core/str.h"
#include "locator/ketama.h"
#include "spec/spec.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <ifaddrs.h>
#include <stddef.h>
#include <inttypes.h>
#include <net/if.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#define AGENT_VERSION          "0.1.0"
#define AGENT_HEARTBEAT_MS     5000
#define AGENT_SWEEP_MIN_AGE_S  3600 /* empty leftover cgroups older than this go at start */
#define AGENT_WATCH_WAIT       "30s"
#define AGENT_WATCH_TIMEOUT_MS 40000
#define AGENT_RETRY_MS         1000
/* Launching one instance takes a few syscalls (directories, cgroups, a
 * spawn); a turn of the loop launches for at most this long, so reports,
 * exits and health checks go on while a thousand instances start. */
#define AGENT_LAUNCH_SLICE_NS (8u * 1000 * 1000)
/* Least time between two publishes of the table while instances change. */
#define AGENT_PUBLISH_GAP_MS 50

static void agent_register(agent_t *a);
static void agent_watch(agent_t *a);

const char *agent_node_id(const agent_t *a)
{
    return a->node_id;
}

loc_table_t *agent_table(agent_t *a)
{
    return a->table;
}

/* ---- the service table ---- */

static bool agent_inst_published(const inst_t *in)
{
    return in->state == INST_HEALTHY && (in->proc || in->engine) && !in->stopping && !in->removing;
}

/* What one published name holds: the app's instances (of one version, or
 * all), reached on one of their ports, with the app's routes attached when
 * it is the app's own name. */
typedef struct publish_name {
    const char *name;
    const char *app;
    int64_t only_version; /* 0: every version */
    int port_index;       /* which of the instance's ports (app#k names) */
    bool with_routes;
    const char *api;
} publish_name_t;

/* {"routes": [...]} as msgpack, from the newest spec: gateways read an
 * app's routes from the locator stream, so routing keeps working while
 * every server is down (DESIGN.md "State and scale"). Empty when the app
 * has no routes. */
static void agent_route_attrs(const json_t *spec, msgpack_sbuffer *sb)
{
    json_t *routes = spec ? spec_routes(spec) : NULL;
    if (json_array_size(routes)) {
        msgpack_packer pk;
        msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 1);
        msgpack_pack_str_with_body(&pk, "routes", 6);
        rpc_pack_json(&pk, routes);
    }
    json_decref(routes);
}

static void agent_publish_name(agent_t *a, const publish_name_t *pn)
{
    size_t n = 0, cap = 8;
    loc_ep_t *eps = xcalloc(cap, sizeof(loc_ep_t));
    int64_t newest = 0;
    const json_t *newest_spec = NULL;
    for (inst_t *in = a->insts; in; in = in->next) {
        if (strcmp(in->app, pn->app) != 0 || !agent_inst_published(in))
            continue;
        if (pn->only_version && in->version != pn->only_version)
            continue;
        int port = 0;
        if (in->ports_held && in->port_info.n > (size_t)pn->port_index)
            port = in->ports[pn->port_index];
        else if (pn->port_index > 0)
            continue; /* this version has no such port */
        if (n == cap) {
            cap *= 2;
            eps = xrealloc(eps, cap * sizeof(loc_ep_t));
        }
        eps[n++] = (loc_ep_t){.host = a->advertise,
                              .port = port,
                              .instance = in->id,
                              .node = a->node_id,
                              .version = in->version};
        if (in->version > newest || !newest_spec) {
            newest = in->version > newest ? in->version : newest;
            newest_spec = in->spec;
        }
    }
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    if (pn->with_routes && n)
        agent_route_attrs(newest_spec, &sb);
    loc_table_set_attrs(a->table, pn->name, eps, n, newest, pn->api, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    free(eps);
}

typedef struct publish_scan {
    const char *prefix; /* "/a/b@" or "/a/b#" */
    size_t len;
    char **names;
    size_t n, cap;
} publish_scan_t;

static void publish_scan_add(publish_scan_t *ps, char *name)
{
    if (ps->n == ps->cap) {
        ps->cap = ps->cap ? ps->cap * 2 : 8;
        ps->names = xrealloc(ps->names, ps->cap * sizeof(char *));
    }
    ps->names[ps->n++] = name;
}

static int agent_publish_collect(const loc_entry_t *e, void *data)
{
    publish_scan_t *ps = data;
    if (strncmp(e->name, ps->prefix, ps->len) == 0)
        publish_scan_add(ps, xstrdup(e->name));
    return 0;
}

static int publish_name_cmp(const void *x, const void *y)
{
    return strcmp(*(char *const *)x, *(char *const *)y);
}

/* Names app<sep>N: the ones already published (so one that went away is
 * removed) and the ones wanted now; each is republished. An app's
 * instances share a handful of versions, so the wanted names come from
 * its distinct versions (one spec_routes per version, not per instance):
 * the cost stays linear in the instances however many there are. */
static void agent_publish_suffixed(agent_t *a, const char *app, char sep, const char *api)
{
    char *prefix = xasprintf("%s%c", app, sep);
    publish_scan_t ps = {.prefix = prefix, .len = strlen(prefix)};
    loc_table_foreach(a->table, agent_publish_collect, &ps);
    int64_t *seen = NULL;
    size_t nseen = 0, capseen = 0;
    for (inst_t *in = a->insts; in; in = in->next) {
        if (strcmp(in->app, app) != 0)
            continue;
        bool dup = false;
        for (size_t k = 0; k < nseen && !dup; k++)
            dup = seen[k] == in->version;
        if (dup)
            continue;
        if (nseen == capseen) {
            capseen = capseen ? capseen * 2 : 4;
            seen = xrealloc(seen, capseen * sizeof(*seen));
        }
        seen[nseen++] = in->version;
        if (sep == '@') {
            publish_scan_add(&ps, xasprintf("%s%" PRId64, prefix, in->version));
            continue;
        }
        /* app#k for each port index k > 0 a route of a service sends to */
        json_t *routes = spec_routes(in->spec);
        size_t i;
        json_t *r;
        json_array_foreach(routes, i, r)
        {
            json_int_t k = json_integer_value(json_object_get(r, "portIndex"));
            if (k > 0)
                publish_scan_add(&ps, xasprintf("%s%" JSON_INTEGER_FORMAT, prefix, k));
        }
        json_decref(routes);
    }
    free(seen);
    if (ps.n)
        qsort(ps.names, ps.n, sizeof(char *), publish_name_cmp);
    for (size_t i = 0; i < ps.n; i++) {
        int64_t v = 0;
        if (i && strcmp(ps.names[i - 1], ps.names[i]) == 0)
            continue;
        if (str_to_i64(ps.names[i] + ps.len, 1, INT64_MAX, &v) == 0) {
            publish_name_t pn = {.name = ps.names[i], .app = app, .api = api};
            if (sep == '@')
                pn.only_version = v;
            else if (v < 65536)
                pn.port_index = (int)v;
            else
                continue;
            agent_publish_name(a, &pn);
        }
    }
    for (size_t i = 0; i < ps.n; i++)
        free(ps.names[i]);
    free(ps.names);
    free(prefix);
}

static void agent_publish_now(agent_t *a, const char *app)
{
    const char *api = "service";
    for (inst_t *in = a->insts; in; in = in->next)
        if (strcmp(in->app, app) == 0 && json_str(in->spec, "kind"))
            api = json_str(in->spec, "kind");
    publish_name_t pn = {.name = app, .app = app, .with_routes = true, .api = api};
    agent_publish_name(a, &pn);
    agent_publish_suffixed(a, app, '@', api);
    agent_publish_suffixed(a, app, '#', api);
}

static void agent_publish_fire(uv_timer_t *t)
{
    agent_publish_flush(t->data);
}

/* Every change of an instance used to republish its app at once: with a
 * thousand instances starting, that was a thousand full rebuilds of an
 * entry growing to a thousand endpoints, each streamed to every
 * subscriber. Now a change marks the app, and the marked apps are
 * published together: at once when nothing was published for
 * AGENT_PUBLISH_GAP_MS, else when that gap has passed. */
void agent_publish(agent_t *a, const char *app)
{
    if (!app || !*app || !a->table || !a->publish_dirty || a->stopping)
        return;
    json_object_set_new(a->publish_dirty, app, json_true());
    if (uv_is_active((uv_handle_t *)&a->publish_timer))
        return;
    uint64_t now = uv_now(a->loop), due = a->published_at + AGENT_PUBLISH_GAP_MS;
    uv_timer_start(&a->publish_timer, agent_publish_fire, due > now ? due - now : 0, 0);
}

void agent_publish_flush(agent_t *a)
{
    if (a->stopping)
        return;
    uv_timer_stop(&a->publish_timer);
    if (!a->publish_dirty || !json_object_size(a->publish_dirty))
        return;
    a->published_at = uv_now(a->loop);
    json_t *dirty = a->publish_dirty;
    a->publish_dirty = json_object();
    const char *app;
    json_t *v;
    json_object_foreach(dirty, app, v)
    {
        agent_publish_now(a, app);
    }
    json_decref(dirty);
    agent_flush_soon(a); /* reports held back for this publish */
}

/* The agent's own services are names like any app's, so a client finds
 * a node's locator, its node API or its log endpoint the way it finds
 * services; merged at a metalocator, each name lists every node's. */
static void agent_publish_own(agent_t *a)
{
    loc_ep_t loc = {.host = a->advertise,
                    .port = loc_server_port(a->locator),
                    .instance = "locator",
                    .node = a->node_id,
                    .version = 1};
    loc_ep_t http = {.host = a->advertise,
                     .port = http_server_port(a->http),
                     .instance = "node",
                     .node = a->node_id,
                     .version = 1};
    loc_table_set(a->table, "drover/locator", &loc, 1, 1, "service");
    loc_table_set(a->table, "drover/node", &http, 1, 1, "service");
    http.instance = "logging";
    loc_table_set(a->table, "drover/logging", &http, 1, 1, "service");
}

/* ---- node identity ---- */

/* The node id survives restarts (data_dir/node-id), so a restarted agent is
 * the same node with the same instances. New ids are the host name plus
 * random hex, lower-cased to the node id alphabet. */
static int agent_load_node_id(agent_t *a, err_t *err)
{
    char *path = xasprintf("%s/node-id", a->opts.data_dir);
    FILE *f = fopen(path, "r");
    char buf[80] = "";
    if (f) {
        if (!fgets(buf, sizeof(buf), f))
            buf[0] = '\0';
        fclose(f);
        buf[strcspn(buf, "\r\n")] = '\0';
    }
    if (!buf[0]) {
        char host[64] = "node";
        gethostname(host, sizeof(host) - 1);
        size_t j = 0;
        for (size_t i = 0; host[i] && j < 40; i++) {
            char c = (char)tolower((unsigned char)host[i]);
            if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')
                buf[j++] = c;
        }
        if (!j)
            j = (size_t)snprintf(buf, sizeof(buf), "node");
        unsigned char rnd[4];
        RAND_bytes(rnd, sizeof(rnd));
        snprintf(buf + j, sizeof(buf) - j, "-%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3]);
        f = fopen(path, "w");
        if (!f || fprintf(f, "%s\n", buf) < 0 || fclose(f) != 0) {
            int e = errno;
            free(path);
            return err_set(err, -e, "cannot write node id to %s/node-id: %s", a->opts.data_dir,
                           strerror(e));
        }
    }
    free(path);
    a->node_id = xstrdup(buf);
    return 0;
}

/* First non-loopback IPv4 address: what other nodes can reach. */
static char *agent_detect_address(void)
{
    struct ifaddrs *ifs = NULL;
    char out[INET_ADDRSTRLEN] = "127.0.0.1";
    if (getifaddrs(&ifs) == 0) {
        for (struct ifaddrs *i = ifs; i; i = i->ifa_next) {
            if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET || (i->ifa_flags & IFF_LOOPBACK))
                continue;
            inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, out, sizeof(out));
            break;
        }
        freeifaddrs(ifs);
    }
    return xstrdup(out);
}

static int agent_parse_labels(const char *s, json_t *out, err_t *err)
{
    if (!s || !*s)
        return 0;
    char *copy = xstrdup(s);
    int rc = 0;
    for (char *save = NULL, *tok = strtok_r(copy, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        if (!eq || eq == tok) {
            rc = err_set(err, -EINVAL, "label %s: expected key=value", tok);
            break;
        }
        *eq = '\0';
        json_object_set_new(out, tok, json_string(eq + 1));
    }
    free(copy);
    return rc;
}

/* ---- registration and heartbeat ---- */

static json_t *agent_node_record(agent_t *a)
{
    double cpus = a->opts.cpus > 0 ? a->opts.cpus : (double)sysconf(_SC_NPROCESSORS_ONLN);
    return json_pack("{s:s, s:s, s:s, s:s, s:O, s:f, s:I, s:[i,i], s:s, s:[s], s:s}", "id",
                     a->node_id, "hostname", a->hostname, "address", a->advertise, "agent_url",
                     a->agent_url, "labels", a->labels, "cpus", cpus, "mem_mb",
                     (json_int_t)a->mem_total_mb, "ports", a->ports.lo, a->ports.hi, "version",
                     AGENT_VERSION, "isolates", a->isolate->name, "locator", a->locator_addr);
}

static void agent_retry_fire(uv_timer_t *t)
{
    agent_t *a = t->data;
    if (!a->registered)
        agent_register(a);
    else
        agent_watch(a);
}

static void agent_retry_later(agent_t *a)
{
    if (!a->stopping)
        uv_timer_start(&a->retry, agent_retry_fire, AGENT_RETRY_MS, 0);
}

static void agent_registered(agent_t *a, int status, const err_t *err, int http_status,
                             json_t *body, int64_t index, void *data)
{
    if (a->stopping)
        return;
    if (status || http_status != 200) {
        const char *why = status ? err_str(err, status) : json_str(body, "error");
        log_warn("agent", "registering node %s with %s failed: %s%s; retrying", a->node_id,
                 a->opts.server_url, why ? why : "", status ? "" : " (HTTP error)");
        agent_retry_later(a);
        return;
    }
    bool first = !a->registered;
    a->registered = true;
    log_info("agent", "node %s registered with %s (address %s, agent %s)", a->node_id,
             a->opts.server_url, a->advertise, a->agent_url);
    if (first && !a->watch_busy)
        agent_watch(a);
}

static void agent_register(agent_t *a)
{
    json_t *rec = agent_node_record(a);
    char *path = xasprintf("/v1/nodes/%s", a->node_id);
    remote_call(a, "PUT", path, rec, 10000, agent_registered, NULL);
    free(path);
    json_decref(rec);
}

static void agent_heartbeat_done(agent_t *a, int status, const err_t *err, int http_status,
                                 json_t *body, int64_t index, void *data)
{
    if (a->stopping)
        return;
    if (!status && http_status == 404) {
        /* The lease expired (the server was away too long): the node key
         * is gone, so register again; instances keep running meanwhile. */
        log_warn("agent", "node %s lease expired; registering again", a->node_id);
        a->registered = false;
        agent_register(a);
    } else if (status) {
        log_debug("agent", "heartbeat failed: %s", err_str(err, status));
    }
}

static void agent_heartbeat_tick(uv_timer_t *t)
{
    agent_t *a = t->data;
    if (!a->registered)
        return;
    char *path = xasprintf("/v1/nodes/%s/heartbeat", a->node_id);
    remote_call(a, "POST", path, NULL, 5000, agent_heartbeat_done, NULL);
    free(path);
    /* Reports that failed while the server was away go again now. */
    for (inst_t *in = a->insts; in; in = in->next)
        if (in->report_dirty && !in->report_busy)
            inst_report(in);
}

/* ---- per-turn work ---- */

static void agent_flush_fire(uv_timer_t *t)
{
    agent_t *a = t->data;
    if (a->stopping)
        return;
    a->flushing = true;
    uint64_t t0 = uv_hrtime();
    inst_t *in;
    while (uv_hrtime() - t0 < AGENT_LAUNCH_SLICE_NS && (in = inst_queue_pop(&a->launches)))
        if (!in->stopping && !in->removing)
            inst_launch(in);
    /* Instances stopped this turn: their removal from the table is
     * published once, then each waits for the routers to confirm it. */
    if (a->drains.head) {
        agent_publish_flush(a);
        while ((in = inst_queue_pop(&a->drains)))
            if ((in->proc || in->engine) && in->stopping && !in->removing)
                inst_drain(in);
    }
    inst_reports_pump(a);
    a->flushing = false;
    /* More launches: after the loop has polled (1 ms, not 0, which would
     * run again in this same pass over the timers). */
    if (a->launches.head)
        uv_timer_start(&a->flush, agent_flush_fire, 1, 0);
}

void agent_flush_soon(agent_t *a)
{
    if (a->stopping || a->flushing || uv_is_active((uv_handle_t *)&a->flush))
        return;
    uv_timer_start(&a->flush, agent_flush_fire, 0, 0);
}

/* ---- convergence ---- */

static inst_t *agent_find(agent_t *a, const char *id)
{
    for (inst_t *in = a->insts; in; in = in->next)
        if (strcmp(in->id, id) == 0)
            return in;
    return NULL;
}

static void agent_converge(agent_t *a, const json_t *assigned)
{
    for (inst_t *in = a->insts; in; in = in->next)
        in->wanted = false;
    size_t i;
    const json_t *as;
    json_array_foreach(assigned, i, as)
    {
        const char *id = json_str(as, "id");
        const char *app = json_str(as, "app");
        const json_t *spec = json_object_get(as, "spec");
        if (!id || !app || !json_is_object(spec))
            continue;
        inst_t *in = agent_find(a, id);
        const json_t *pin = json_object_get(as, "poolPin");
        int pool_pin = json_is_integer(pin) ? (int)json_integer_value(pin) : 0;
        if (in) {
            if (in->stopping)
                continue;
            in->wanted = true;
            if (pool_pin != in->pool_pin) {
                err_t err = {0};
                if (inst_pool_pin(in, pool_pin, &err))
                    log_warn("agent", "instance %s: poolPin %d: %s", in->id, pool_pin, err.msg);
            }
            /* Re-adopted but ended while we were away: start it again. */
            if (!in->proc && !in->engine && !uv_is_active((uv_handle_t *)&in->timer) &&
                in->state != INST_STAGING)
                inst_launch(in);
            continue;
        }
        in = inst_new(a, id, app, json_integer_value(json_object_get(as, "version")), spec);
        in->pool_pin = pool_pin;
        inst_queue_push(&a->launches, in);
    }
    if (a->launches.head)
        agent_flush_soon(a);
    for (inst_t *in = a->insts, *next; in; in = next) {
        next = in->next;
        if (!in->wanted && !in->stopping && !in->removing)
            inst_stop(in, "no longer assigned to this node");
    }
}

static void agent_watch_done(agent_t *a, int status, const err_t *err, int http_status,
                             json_t *body, int64_t index, void *data)
{
    a->watch_busy = false;
    if (a->stopping || a->draining)
        return;
    if (status || http_status != 200) {
        if (status == -ETIMEDOUT) {
            agent_watch(a); /* a long poll that outlived its timeout: ask again */
            return;
        }
        log_debug("agent", "assignment watch failed: %s",
                  status ? err_str(err, status) : json_str(body, "error"));
        if (!status && http_status == 404)
            a->registered = false;
        agent_retry_later(a);
        return;
    }
    agent_converge(a, json_object_get(body, "instances"));
    a->synced = true;
    if (index > a->assign_index)
        a->assign_index = index;
    agent_watch(a);
}

static void agent_watch(agent_t *a)
{
    if (a->stopping || a->watch_busy)
        return;
    a->watch_busy = true;
    char *path = a->assign_index ? xasprintf("/v1/nodes/%s/assignments?index=%" PRId64 "&wait=%s",
                                             a->node_id, a->assign_index, AGENT_WATCH_WAIT)
                                 : xasprintf("/v1/nodes/%s/assignments", a->node_id);
    remote_call(a, "GET", path, NULL, AGENT_WATCH_TIMEOUT_MS, agent_watch_done, NULL);
    free(path);
}

/* ---- routing groups ---- */

static void agent_groups_watch(agent_t *a);

static void agent_groups_retry_fire(uv_timer_t *t)
{
    agent_groups_watch(t->data);
}

/* Serve every group of the answer from this node's locator (resolve by
 * group name, `routing` streams) and drop the ones that are gone, so a
 * weight change reaches the node's subscribers without a reconnect. */
static void agent_groups_apply(agent_t *a, const json_t *groups)
{
    json_t *seen = json_object();
    size_t i;
    json_t *g;
    json_array_foreach(groups, i, g)
    {
        const char *name = json_str(g, "name");
        const json_t *members = json_object_get(g, "members");
        if (!name)
            continue;
        size_t n = json_array_size(members);
        ketama_member_t *m = xcalloc(n ? n : 1, sizeof(*m));
        size_t k = 0;
        for (size_t j = 0; j < n; j++) {
            const json_t *e = json_array_get(members, j);
            const char *target = json_str(e, "target");
            if (!target)
                continue;
            m[k].name = target;
            m[k++].weight = (uint32_t)json_integer_value(json_object_get(e, "weight"));
        }
        err_t err = {0};
        if (k && loc_server_group_set(a->locator, name, m, k, &err) == 0)
            json_object_set_new(seen, name, json_true());
        else if (k)
            log_warn("agent", "routing group %s not served: %s", name, err.msg);
        free(m);
    }
    const char *name;
    json_t *v;
    json_object_foreach(a->groups_known, name, v)
    {
        if (!json_object_get(seen, name))
            loc_server_group_set(a->locator, name, NULL, 0, NULL);
    }
    json_decref(a->groups_known);
    a->groups_known = seen;
}

static void agent_groups_done(agent_t *a, int status, const err_t *err, int http_status,
                              json_t *body, int64_t index, void *data)
{
    (void)data;
    a->groups_busy = false;
    if (a->stopping)
        return;
    if (status == -ETIMEDOUT) {
        agent_groups_watch(a);
        return;
    }
    if (status || http_status != 200) {
        log_debug("agent", "routing group watch failed: %s",
                  status ? err_str(err, status) : json_str(body, "error"));
        uv_timer_start(&a->groups_retry, agent_groups_retry_fire, AGENT_RETRY_MS, 0);
        return;
    }
    agent_groups_apply(a, json_object_get(body, "groups"));
    if (index > a->groups_index)
        a->groups_index = index;
    agent_groups_watch(a);
}

static void agent_groups_watch(agent_t *a)
{
    if (a->stopping || a->groups_busy)
        return;
    a->groups_busy = true;
    char *path = a->groups_index ? xasprintf("/v1/groups?index=%" PRId64 "&wait=%s",
                                             a->groups_index, AGENT_WATCH_WAIT)
                                 : xstrdup("/v1/groups");
    remote_call(a, "GET", path, NULL, AGENT_WATCH_TIMEOUT_MS, agent_groups_done, NULL);
    free(path);
}

/* ---- removal of stopped instances ---- */

static int agent_rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    /* Best effort: a file that cannot go stays, the walk goes on. */
    if (flag == FTW_DP)
        (void)rmdir(path);
    else
        (void)unlink(path);
    return 0;
}

typedef struct agent_rm {
    uv_work_t work;
    char *dir;
} agent_rm_t;

static void agent_rm_work(uv_work_t *w)
{
    agent_rm_t *r = w->data;
    nftw(r->dir, agent_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void agent_rm_after(uv_work_t *w, int status)
{
    agent_rm_t *r = w->data;
    free(r->dir);
    free(r);
}

/* The sandbox of a removed instance goes (logs with it), off the loop: a
 * leftover directory would be "re-adopted" by the next agent start. */
static void agent_rm_dir(agent_t *a, const char *dir)
{
    agent_rm_t *r = xcalloc(1, sizeof(*r));
    r->dir = xstrdup(dir);
    r->work.data = r;
    uv_queue_work(a->loop, &r->work, agent_rm_work, agent_rm_after);
}

static void agent_drain_check(agent_t *a);

static void agent_removed(agent_t *a, int status, const err_t *err, int http_status, json_t *body,
                          int64_t index, void *data)
{
    inst_t *in = data;
    in->report_busy = false;
    a->reports_in_flight--;
    if (status || http_status >= 500)
        log_debug("agent", "deleting the record of %s failed: %s", in->id,
                  status ? err_str(err, status) : "server error");
    if (!a->stopping)
        agent_rm_dir(a, in->dir);
    inst_free(in);
    agent_drain_check(a);
    agent_flush_soon(a); /* a slot is free */
}

/* The DELETE of a removed instance, sent by inst_reports_pump once its last
 * report is through (so the two requests cannot overtake each other). */
void agent_inst_delete(agent_t *a, inst_t *in)
{
    in->report_busy = true;
    a->reports_in_flight++;
    char *path = xasprintf("/v1/instances/%s", in->id);
    remote_call(a, "DELETE", path, NULL, 10000, agent_removed, in);
    free(path);
}

/* An instance stopped for good: unlink it, delete its record once its last
 * report is through (so the two requests cannot overtake each other), drop
 * its sandbox, free it. */
void agent_inst_remove(agent_t *a, inst_t *in)
{
    if (!in->removing) {
        in->removing = true;
        for (inst_t **pp = &a->insts; *pp; pp = &(*pp)->next) {
            if (*pp == in) {
                *pp = in->next;
                break;
            }
        }
        in->next = NULL;
    }
    if (in->report_busy)
        return; /* inst_report_done queues it again */
    if (a->stopping) {
        inst_free(in); /* no more calls: its record stays for the next agent */
        return;
    }
    inst_queue_push(&a->reports, in);
    agent_flush_soon(a);
}

/* ---- start and stop ---- */

/* Instances started by an earlier agent on this node. */
static void agent_adopt_all(agent_t *a)
{
    char *root = xasprintf("%s/instances", a->opts.data_dir);
    DIR *d = opendir(root);
    if (!d) {
        free(root);
        return;
    }
    struct dirent *e;
    int adopted = 0, ended = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        inst_t *in = inst_new(a, e->d_name, "", 0, NULL);
        int rc = inst_adopt(in);
        if (rc < 0) {
            if (rc == -ECHILD)
                log_info("agent",
                         "worker instance %s is started again when assigned (workers "
                         "are not re-adopted)",
                         e->d_name);
            else
                log_warn("agent", "instance directory %s/%s holds no instance; ignored", root,
                         e->d_name);
            for (inst_t **pp = &a->insts; *pp; pp = &(*pp)->next)
                if (*pp == in) {
                    *pp = in->next;
                    break;
                }
            inst_detach(in);
            continue;
        }
        rc == 1 ? adopted++ : ended++;
    }
    closedir(d);
    free(root);
    if (adopted || ended)
        log_info("agent", "re-adopted %d running instances; %d ended while the agent was down",
                 adopted, ended);
}

static int agent_mkdir(const char *path, err_t *err)
{
    if (mkdir(path, 0755) && errno != EEXIST)
        return err_set(err, -errno, "cannot create %s: %s", path, strerror(errno));
    return 0;
}

int agent_start(uv_loop_t *loop, const agent_options_t *opts, agent_t **out, err_t *err)
{
    agent_t *a = xcalloc(1, sizeof(*a));
    a->loop = loop;
    a->opts = *opts;
    a->labels = json_object();
    a->isolate = &isolate_process_ops;
    a->table = loc_table_new();
    a->publish_dirty = json_object();
    inst_queue_init(&a->reports, offsetof(inst_t, report_link));
    inst_queue_init(&a->launches, offsetof(inst_t, launch_link));
    inst_queue_init(&a->drains, offsetof(inst_t, drain_link));
    int lo = 20000, hi = 32000, rc;
    char *dir = NULL;
    if ((rc = agent_mkdir(opts->data_dir, err)))
        goto fail;
    for (int i = 0; i < 2; i++) {
        dir = xasprintf("%s/%s", opts->data_dir, i ? "artifacts" : "instances");
        rc = agent_mkdir(dir, err);
        free(dir);
        if (rc)
            goto fail;
    }
    if ((rc = agent_load_node_id(a, err)) ||
        (rc = agent_parse_labels(opts->labels, a->labels, err)))
        goto fail;
    if (opts->ports && (rc = ports_parse_range(opts->ports, &lo, &hi, err)))
        goto fail;
    if ((rc = ports_init(&a->ports, lo, hi, err)))
        goto fail;
    struct sysinfo si;
    sysinfo(&si);
    a->mem_total_mb = (int64_t)((uint64_t)si.totalram * si.mem_unit / (1024 * 1024));
    err_t probe = {0};
    if (a->isolate->probe(&probe))
        log_warn("agent", "isolate %s: %s", a->isolate->name, probe.msg);
    if (opts->mem_mb > 0)
        a->mem_total_mb = opts->mem_mb;
    char host[256] = "localhost";
    gethostname(host, sizeof(host) - 1);
    a->hostname = xstrdup(opts->hostname && *opts->hostname ? opts->hostname : host);
    a->advertise = opts->advertise ? xstrdup(opts->advertise) : agent_detect_address();

    http_limits_t lim;
    http_limits_default(&lim);
    const char *listen = opts->listen ? opts->listen : "0.0.0.0:7401";
    if ((rc = http_server_listen(loop, listen, &lim, agent_http_handle, a, &a->http, err)))
        goto fail;
    a->agent_url = xasprintf("http://%s:%d", a->advertise, http_server_port(a->http));
    loc_server_opts_t lo_opts = {.node_id = a->node_id, .node_host = a->advertise};
    const char *laddr = opts->locator ? opts->locator : "0.0.0.0:10053";
    if ((rc = loc_server_start(loop, laddr, a->table, &lo_opts, &a->locator, err))) {
        err_wrap(err, rc, "locator on %s", laddr);
        goto fail;
    }
    a->locator_addr = xasprintf("%s:%d", a->advertise, loc_server_port(a->locator));
    agent_publish_own(a);
    if (opts->announce) {
        /* Metalocators that listen find this node without configuration:
         * [node id, [[address, locator port]]] every interval. */
        char *group = NULL;
        int gport = 0;
        if (str_split_hostport(opts->announce, &group, &gport)) {
            rc = err_set(err, -EINVAL, "announce %s: expected GROUP:PORT", opts->announce);
            goto fail;
        }
        announce_opts_t ao = {.group = group,
                              .port = gport,
                              .interval_ms = (uint32_t)opts->announce_interval_ms,
                              .interface = opts->announce_if};
        announce_endpoint_t ep = {.addr = a->advertise, .port = loc_server_port(a->locator)};
        rc = announce_sender_start(loop, &ao, a->node_id, &ep, 1, &a->announcer, err);
        free(group);
        if (rc) {
            err_wrap(err, rc, "announcing on %s", opts->announce);
            goto fail;
        }
    }

    if ((rc = remote_init(a, err)))
        goto fail;
    uv_timer_init(loop, &a->heartbeat);
    uv_timer_init(loop, &a->retry);
    a->heartbeat.data = a->retry.data = a;
    uv_timer_start(&a->heartbeat, agent_heartbeat_tick, AGENT_HEARTBEAT_MS, AGENT_HEARTBEAT_MS);
    uv_timer_init(loop, &a->groups_retry);
    a->groups_retry.data = a;
    uv_timer_init(loop, &a->flush);
    a->flush.data = a;
    uv_timer_init(loop, &a->publish_timer);
    a->publish_timer.data = a;
    a->groups_known = json_object();
    agent_groups_watch(a);
    agent_adopt_all(a);
    /* Groups of instances whose agent was killed with a data directory that
     * is never started again stay forever otherwise; an hour old and empty
     * is nobody's (a restart in backoff makes its group again). */
    int swept = a->isolate->sweep ? a->isolate->sweep(AGENT_SWEEP_MIN_AGE_S) : 0;
    if (swept > 0)
        log_info("agent", "removed %d empty cgroup(s) left by instances of earlier agents", swept);
    log_info("agent", "node %s starting: server %s, ports %d-%d, labels %s, locator %s", a->node_id,
             opts->server_url, lo, hi, opts->labels && *opts->labels ? opts->labels : "none",
             a->locator_addr);
    agent_register(a);
    *out = a;
    return 0;
fail:
    json_decref(a->labels);
    json_decref(a->publish_dirty);
    ports_free(&a->ports);
    loc_table_free(a->table);
    free(a->node_id);
    free(a);
    return rc;
}

static void agent_handle_closed(uv_handle_t *h)
{
    agent_t *a = h->data;
    a->closing_handles--;
    agent_maybe_done(a);
}

static void agent_announcer_stopped(void *data)
{
    agent_t *a = data;
    a->closing_handles--;
    agent_maybe_done(a);
}

static void agent_locator_stopped(void *data)
{
    agent_t *a = data;
    a->locator = NULL;
    a->closing_handles--;
    agent_maybe_done(a);
}

static void agent_http_closed(void *data)
{
    agent_t *a = data;
    a->http = NULL;
    a->closing_handles--;
    agent_maybe_done(a);
}

void agent_maybe_done(agent_t *a)
{
    if (!a->stopping || a->calls_in_flight || a->closing_handles || a->insts)
        return;
    void (*done)(void *) = a->stop_done;
    void *data = a->stop_data;
    json_decref(a->labels);
    json_decref(a->groups_known);
    json_decref(a->publish_dirty);
    ports_free(&a->ports);
    loc_table_free(a->table);
    free(a->node_id);
    free(a->hostname);
    free(a->advertise);
    free(a->agent_url);
    free(a->locator_addr);
    free(a);
    if (done)
        done(data);
}

static void agent_stop_now(agent_t *a)
{
    a->draining = false;
    a->stopping = true;
    atomic_store(&a->cancel, 1);
    if (a->insts)
        log_info("agent", "stopping; instances keep running and are re-adopted on restart");
    for (inst_t *in = a->insts, *next; in; in = next) {
        next = in->next;
        a->insts = next;
        inst_detach(in);
    }
    /* Removed instances still waiting to send their DELETE: not in insts,
     * not in flight, so nothing else would free them. */
    for (inst_t *in; (in = inst_queue_pop(&a->reports));)
        if (in->removing)
            inst_free(in);
    a->closing_handles += 7;
    remote_shutdown(a);
    if (a->announcer) {
        a->closing_handles++;
        announce_sender_stop(a->announcer, agent_announcer_stopped, a);
        a->announcer = NULL;
    }
    loc_server_stop(a->locator, agent_locator_stopped, a);
    a->heartbeat.data = a->retry.data = a;
    uv_close((uv_handle_t *)&a->heartbeat, agent_handle_closed);
    uv_close((uv_handle_t *)&a->retry, agent_handle_closed);
    a->groups_retry.data = a;
    uv_close((uv_handle_t *)&a->groups_retry, agent_handle_closed);
    a->flush.data = a;
    uv_close((uv_handle_t *)&a->flush, agent_handle_closed);
    a->publish_timer.data = a;
    uv_close((uv_handle_t *)&a->publish_timer, agent_handle_closed);
    http_server_shutdown(a->http, 1000, agent_http_closed, a);
}

void agent_stop(agent_t *a, bool stop_instances, void (*done)(void *data), void *data)
{
    a->stop_done = done;
    a->stop_data = data;
    if (!stop_instances || !a->insts) {
        agent_stop_now(a);
        return;
    }
    a->draining = true;
    log_info("agent", "stopping every instance before exiting");
    for (inst_t *in = a->insts, *next; in; in = next) {
        next = in->next;
        inst_stop(in, "drover is shutting down");
    }
    if (!a->insts)
        agent_stop_now(a);
}

/* While draining, the last instance gone lets the stop go on. */
static void agent_drain_check(agent_t *a)
{
    if (a->draining && !a->insts)
        agent_stop_now(a);
}
