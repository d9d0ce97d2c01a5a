/* One instance on this node: ports, sandbox, start under the isolate,
 * health checks, restarts with backoff, stop with a grace period, and a
 * report to the API after every transition. */
#include "agent/agent_internal.h"

#include "core/alloc.h"
#include "core/json.h"
#include "core/log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* An instance that ran this long before failing starts its backoff over:
 * it was not crash-looping. */
#define INST_STABLE_MS 60000
/* A started instance is "running" once its monitor tells the app's pid
 * (isolate_spec.on_pid). Should it not, app.pid is looked at every
 * INST_PID_POLL_MS, and after INST_PID_POLLS looks it is "running"
 * anyway (the pid is reported when it comes). */
#define INST_PID_POLL_MS 250
#define INST_PID_POLLS   8

static const char *const inst_state_names[] = {
    "staging", "starting", "running", "healthy", "unhealthy",
    "killing", "finished", "failed",  "killed",  "lost",
};

const char *inst_state_name(inst_state_t s)
{
    return inst_state_names[s];
}

int64_t agent_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void inst_iso_time(int64_t ms, char *out, size_t n)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    size_t w = strftime(out, n, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + w, n - w, ".%03dZ", (int)(ms % 1000));
}

/* Record a transition: state, reason, time; keep the last few in history.
 * report false: the API learns it with the next transition (or from the
 * pid wait's first look, a moment later), for the short-lived states of a
 * start: one report per started instance instead of three. */
static void inst_vset(inst_t *in, bool report, inst_state_t st, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));
static void inst_vset(inst_t *in, bool report, inst_state_t st, const char *fmt, va_list ap)
{
    vsnprintf(in->reason, sizeof(in->reason), fmt, ap);
    in->state = st;
    in->since_ms = agent_wall_ms();
    char at[40];
    inst_iso_time(in->since_ms, at, sizeof(at));
    json_array_append_new(in->history, json_pack("{s:s, s:s, s:s}", "state", inst_state_name(st),
                                                 "at", at, "reason", in->reason));
    while (json_array_size(in->history) > INST_HISTORY_MAX)
        json_array_remove(in->history, 0);
    log_info("agent", "instance %s: %s (%s)", in->id, inst_state_name(st), in->reason);
    agent_publish(in->agent, in->app);
    if (report)
        inst_report(in);
    else
        in->report_dirty = true;
}

static void inst_set(inst_t *in, inst_state_t st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void inst_set(inst_t *in, inst_state_t st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    inst_vset(in, true, st, fmt, ap);
    va_end(ap);
}

static void inst_set_quiet(inst_t *in, inst_state_t st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void inst_set_quiet(inst_t *in, inst_state_t st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    inst_vset(in, false, st, fmt, ap);
    va_end(ap);
}

inst_t *inst_new(agent_t *a, const char *id, const char *app, int64_t version, const json_t *spec)
{
    inst_t *in = xcalloc(1, sizeof(*in));
    in->agent = a;
    in->id = xstrdup(id);
    in->app = xstrdup(app);
    in->version = version;
    in->spec = spec ? json_deep_copy(spec) : json_object();
    in->dir = xasprintf("%s/instances/%s", a->opts.data_dir, id);
    in->history = json_array();
    in->healthy = -1;
    in->wanted = true;
    uv_timer_init(a->loop, &in->timer);
    in->timer.data = in;
    in->timer_inited = true;
    in->next = a->insts;
    a->insts = in;
    return in;
}

/* ---- queues ---- */

static inst_link_t *inst_link(const inst_queue_t *q, inst_t *in)
{
    return (inst_link_t *)((char *)in + q->link_off);
}

void inst_queue_init(inst_queue_t *q, size_t link_off)
{
    q->head = q->tail = NULL;
    q->link_off = link_off;
}

void inst_queue_push(inst_queue_t *q, inst_t *in)
{
    inst_link_t *l = inst_link(q, in);
    if (l->on)
        return;
    l->on = true;
    l->next = NULL;
    l->prev = q->tail;
    if (q->tail)
        inst_link(q, q->tail)->next = in;
    else
        q->head = in;
    q->tail = in;
}

void inst_queue_remove(inst_queue_t *q, inst_t *in)
{
    inst_link_t *l = inst_link(q, in);
    if (!l->on)
        return;
    if (l->prev)
        inst_link(q, l->prev)->next = l->next;
    else
        q->head = l->next;
    if (l->next)
        inst_link(q, l->next)->prev = l->prev;
    else
        q->tail = l->prev;
    l->prev = l->next = NULL;
    l->on = false;
}

inst_t *inst_queue_pop(inst_queue_t *q)
{
    inst_t *in = q->head;
    if (in)
        inst_queue_remove(q, in);
    return in;
}

/* ---- reports ---- */

/* Reports in flight at once. The API stores each one in a transaction of
 * its own: a few at a time keep it busy while connections are reused, and
 * an instance waiting its turn is reported once, in its latest state,
 * rather than once per transition. */
#define INST_REPORTS_MAX 8

static json_t *inst_record(inst_t *in)
{
    agent_t *a = in->agent;
    /* The app's pid is known once the monitor has forked it. */
    if (in->proc && a->isolate->pid(in->proc) > 0)
        in->pid = a->isolate->pid(in->proc);
    char since[40], started[40];
    inst_iso_time(in->since_ms, since, sizeof(since));
    inst_iso_time(in->started_at_ms ? in->started_at_ms : in->since_ms, started, sizeof(started));
    /* Ports are reported while the instance holds them: a failed instance
     * waiting for its restart has none. */
    json_t *ports = json_array();
    for (size_t i = 0; in->ports_held && i < in->port_info.n; i++)
        json_array_append_new(ports, json_integer(in->ports[i]));
    return json_pack("{s:s, s:s, s:I, s:s, s:s, s:o, s:s, s:s, s:I, s:s, s:s, s:i, s:o, s:O, "
                     "s:O}",
                     "id", in->id, "app", in->app, "version", (json_int_t)in->version, "node",
                     a->node_id, "host", a->advertise, "ports", ports, "state",
                     inst_state_name(in->state), "reason", in->reason, "pid", (json_int_t)in->pid,
                     "since", since, "started_at", started, "restarts", in->restarts, "healthy",
                     in->healthy < 0 ? json_null() : json_boolean(in->healthy), "history",
                     in->history, "exit", in->exit ? in->exit : json_null());
}

static void inst_report_done(agent_t *a, int status, const err_t *err, int http_status,
                             json_t *body, int64_t index, void *data)
{
    inst_t *in = data;
    in->report_busy = false;
    a->reports_in_flight--;
    bool failed = status || http_status >= 500;
    if (failed) {
        /* The server is away: the heartbeat tick sends it again. A removed
         * instance goes on to its DELETE instead. */
        log_debug("agent", "report of %s failed: %s", in->id,
                  status ? err_str(err, status) : "server error");
        in->report_dirty = !in->removing;
    } else if (http_status >= 400) {
        log_warn("agent", "server refused the report of %s: HTTP %d", in->id, http_status);
    }
    if (in->freed_pending) {
        inst_free(in);
    } else if (in->removing) {
        agent_inst_remove(a, in);
    } else if (in->report_dirty && !failed && !a->stopping) {
        inst_queue_push(&a->reports, in);
    }
    agent_flush_soon(a); /* a slot is free */
}

void inst_report(inst_t *in)
{
    agent_t *a = in->agent;
    if (a->stopping)
        return;
    in->report_dirty = true;
    if (in->report_busy)
        return; /* inst_report_done queues it again */
    inst_queue_push(&a->reports, in);
    agent_flush_soon(a);
}

/* The record is built when the request goes out, not when the state
 * changed: however long an instance waited, the API gets its latest
 * state in one request. */
static void inst_report_send(inst_t *in)
{
    agent_t *a = in->agent;
    in->report_busy = true;
    in->report_dirty = false;
    a->reports_in_flight++;
    json_t *rec = inst_record(in);
    char *path = xasprintf("/v1/instances/%s", in->id);
    remote_call(a, "PUT", path, rec, 10000, inst_report_done, in);
    free(path);
    json_decref(rec);
}

void inst_reports_pump(agent_t *a)
{
    /* A report must never run ahead of the table: the scheduler counts an
     * instance healthy from its report and may then stop an old one, so
     * routers must already have been offered the new one. With a publish
     * pending (at most AGENT_PUBLISH_GAP_MS away), reports wait for it;
     * agent_publish_flush runs the flush again. */
    if (a->publish_dirty && json_object_size(a->publish_dirty) &&
        uv_is_active((uv_handle_t *)&a->publish_timer))
        return;
    inst_t *in;
    while (!a->stopping && a->reports_in_flight < INST_REPORTS_MAX &&
           (in = inst_queue_pop(&a->reports))) {
        if (in->report_busy)
            continue;
        if (in->report_dirty)
            inst_report_send(in);
        else if (in->removing)
            agent_inst_delete(a, in);
    }
}

/* ---- freeing ---- */

static void inst_timer_closed(uv_handle_t *h)
{
    inst_t *in = h->data;
    if (in->report_busy) {
        in->freed_pending = true; /* inst_report_done frees it */
        return;
    }
    json_decref(in->spec);
    json_decref(in->history);
    json_decref(in->exit);
    launch_ports_free(&in->port_info);
    free(in->ports);
    free(in->dir);
    free(in->app);
    free(in->id);
    agent_t *a = in->agent;
    free(in);
    a->closing_handles--;
    agent_maybe_done(a);
}

static void inst_engine_freed(void *data)
{
    agent_t *a = data;
    a->closing_handles--;
    agent_maybe_done(a);
}

void inst_free(inst_t *in)
{
    if (in->freed_pending) {
        /* Second pass from inst_report_done: the timer is closed already. */
        in->report_busy = false;
        in->freed_pending = false;
        inst_timer_closed((uv_handle_t *)&in->timer);
        return;
    }
    if (in->health) {
        health_stop(in->health);
        in->health = NULL;
    }
    if (in->proc) {
        in->agent->isolate->release(in->proc);
        in->proc = NULL;
    }
    if (in->engine) {
        /* workers are not left behind (they would lose their socket
         * anyway): killed now, the agent waits for the engine to close */
        in->agent->closing_handles++;
        engine_app_stop(in->engine, true, inst_engine_freed, in->agent);
        in->engine = NULL;
    }
    inst_queue_remove(&in->agent->reports, in);
    inst_queue_remove(&in->agent->launches, in);
    inst_queue_remove(&in->agent->drains, in);
    agent_fetch_forget(in->agent, in);
    in->agent->closing_handles++;
    uv_close((uv_handle_t *)&in->timer, inst_timer_closed);
}

void inst_detach(inst_t *in)
{
    uv_timer_stop(&in->timer);
    inst_free(in);
}

/* ---- ports and files ---- */

static void inst_release_ports(inst_t *in)
{
    in->healthy = -1; /* no process, no health to speak of */
    in->agent->mem_committed_mb -= in->mem_held_mb;
    in->mem_held_mb = 0;
    if (in->ports_held)
        ports_release(&in->agent->ports, in->port_info.n, in->ports);
    in->ports_held = false;
}

static int inst_write_meta(inst_t *in, err_t *err)
{
    json_t *ports = json_array();
    for (size_t i = 0; i < in->port_info.n; i++)
        json_array_append_new(ports, json_integer(in->ports[i]));
    json_t *meta =
        json_pack("{s:s, s:s, s:I, s:o, s:O, s:I, s:i}", "id", in->id, "app", in->app, "version",
                  (json_int_t)in->version, "ports", ports, "spec", in->spec, "started_at_ms",
                  (json_int_t)in->started_at_ms, "restarts", in->restarts);
    char *tmp = xasprintf("%s/instance.json.tmp", in->dir);
    char *dst = xasprintf("%s/instance.json", in->dir);
    int rc = 0;
    if (json_dump_file(meta, tmp, JSON_COMPACT) != 0 || rename(tmp, dst) != 0)
        rc = err_set(err, -EIO, "writing %s: %s", dst, strerror(errno));
    free(tmp);
    free(dst);
    json_decref(meta);
    return rc;
}

/* ---- start ---- */

static void inst_on_exit(isolate_proc_t *p, const isolate_exit_t *how, void *data);
static void inst_on_health(health_t *h, const health_result_t *res, void *data);

static void inst_start_health(inst_t *in)
{
    const json_t *checks = json_object_get(in->spec, "healthChecks");
    const json_t *hc = json_array_get(checks, 0);
    if (!hc) {
        in->healthy = 1;
        inst_set(in, INST_HEALTHY, "running, no health checks");
        return;
    }
    health_spec_t hs = {0};
    err_t err = {0};
    const char *proto = json_string_value(json_object_get(hc, "protocol"));
    if (!proto || health_protocol_parse(proto, &hs.protocol)) {
        in->healthy = 1;
        inst_set(in, INST_HEALTHY, "running; health check protocol %s not supported, ignored",
                 proto ? proto : "?");
        return;
    }
    json_int_t idx = json_integer_value(json_object_get(hc, "portIndex"));
    json_int_t port = json_integer_value(json_object_get(hc, "port"));
    if (!port && idx >= 0 && (size_t)idx < in->port_info.n)
        port = in->ports[idx];
    hs.host = "127.0.0.1";
    hs.port = (int)port;
    hs.path = json_string_value(json_object_get(hc, "path"));
    hs.command = json_string_value(json_object_get(json_object_get(hc, "command"), "value"));
    hs.cwd = in->dir;
    hs.grace_ms = (uint64_t)json_integer_value(json_object_get(hc, "gracePeriodSeconds")) * 1000;
    hs.interval_ms = (uint64_t)json_integer_value(json_object_get(hc, "intervalSeconds")) * 1000;
    hs.timeout_ms = (uint64_t)json_integer_value(json_object_get(hc, "timeoutSeconds")) * 1000;
    hs.max_failures = (int)json_integer_value(json_object_get(hc, "maxConsecutiveFailures"));
    if (!hs.interval_ms)
        hs.interval_ms = 1000;
    if (!hs.timeout_ms)
        hs.timeout_ms = 1000;
    if (health_start(in->agent->loop, &hs, inst_on_health, in, &in->health, &err)) {
        in->healthy = 1;
        inst_set(in, INST_HEALTHY, "running; health check not started: %s", err.msg);
    }
}

static void inst_fail_start(inst_t *in, const char *why);
static void inst_spawn(inst_t *in);
static void inst_wait_pid(uv_timer_t *t);
static void inst_on_pid(isolate_proc_t *p, pid_t pid, void *data);
static void inst_fetched(int status, const err_t *ferr, const char *tree, void *data);

void inst_launch(inst_t *in)
{
    agent_t *a = in->agent;
    err_t err = {0};
    in->exit = (json_decref(in->exit), NULL);
    in->healthy = -1;
    in->pid = 0;
    inst_set_quiet(in, INST_STAGING, "preparing");
    launch_ports_free(&in->port_info);
    free(in->ports);
    in->ports = NULL;
    if (inst_is_worker(in)) {
        /* one dynamic port: the invocation service of its engine */
        in->port_info.n = 1;
        in->port_info.want = xcalloc(1, sizeof(int));
        in->port_info.names = xcalloc(1, sizeof(char *));
    } else if (launch_ports_from_spec(in->spec, &in->port_info, &err)) {
        inst_fail_start(in, err.msg);
        return;
    }
    in->ports = xcalloc(in->port_info.n ? in->port_info.n : 1, sizeof(int));
    if (ports_alloc(&a->ports, in->port_info.n, in->port_info.want, in->ports, &err)) {
        inst_fail_start(in, err.msg);
        return;
    }
    in->ports_held = true;
    /* The node's memory is never over-committed: each instance's `mem` is
     * a hard cgroup limit, and their sum must fit the machine. */
    int64_t need = (int64_t)json_number_value(json_object_get(in->spec, "mem"));
    if (need > 0 && a->mem_committed_mb + need > a->mem_total_mb) {
        err_set(&err, -ENOMEM,
                "node out of memory: the instance needs %lld MiB, %lld of %lld MiB are free",
                (long long)need, (long long)(a->mem_total_mb - a->mem_committed_mb),
                (long long)a->mem_total_mb);
        inst_fail_start(in, err.msg);
        return;
    }
    in->mem_held_mb = need > 0 ? need : 0;
    a->mem_committed_mb += in->mem_held_mb;
    if (mkdir(in->dir, 0755) && errno != EEXIST) {
        err_set(&err, -errno, "cannot create %s: %s", in->dir, strerror(errno));
        inst_fail_start(in, err.msg);
        return;
    }
    in->started_at_ms = agent_wall_ms();
    if (inst_write_meta(in, &err)) {
        inst_fail_start(in, err.msg);
        return;
    }
    const char *artifact = json_str(in->spec, "artifact");
    if (artifact && *artifact) {
        inst_set(in, INST_STAGING, "fetching artifact %s", artifact);
        in->fetching = true;
        if (agent_fetch(a, artifact, inst_fetched, in, &err)) {
            in->fetching = false;
            inst_fail_start(in, err.msg);
        }
        return;
    }
    inst_spawn(in);
}

static void inst_fetched(int status, const err_t *ferr, const char *tree, void *data)
{
    inst_t *in = data;
    err_t err = {0};
    in->fetching = false;
    if (in->stopping) {
        inst_release_ports(in);
        inst_set(in, INST_KILLED, "stopped while its artifact was fetched");
        agent_inst_remove(in->agent, in);
        return;
    }
    if (status) {
        inst_fail_start(in, err_str(ferr, status));
        return;
    }
    if (agent_link_sandbox(tree, in->dir, &err)) {
        inst_fail_start(in, err.msg);
        return;
    }
    inst_spawn(in);
}

static void inst_start_engine(inst_t *in, char **argv, char **envp);
static void inst_terminate(inst_t *in);

static void inst_spawn(inst_t *in)
{
    agent_t *a = in->agent;
    err_t err = {0};
    char **argv = NULL, **envp = NULL;
    launch_ctx_t ctx = {
        .instance_id = in->id,
        .app_id = in->app,
        .version = in->version,
        .node = a->node_id,
        .host = a->advertise,
        .sandbox = in->dir,
        .ports = in->ports,
        .port_info = &in->port_info,
    };
    if (launch_build(in->spec, &ctx, &argv, &envp, &err)) {
        inst_fail_start(in, err.msg);
        return;
    }
    if (inst_is_worker(in)) {
        inst_start_engine(in, argv, envp); /* takes argv */
        launch_strv_free(envp);
        return;
    }
    inst_set_quiet(in, INST_STARTING, "starting %s", argv[0]);
    double cpus = json_number_value(json_object_get(in->spec, "cpus"));
    double mem = json_number_value(json_object_get(in->spec, "mem"));
    isolate_spec_t is = {
        .instance_id = in->id,
        .dir = in->dir,
        .cwd = in->dir,
        .argv = argv,
        .envp = envp,
        .cpus = cpus,
        .mem_bytes = (int64_t)(mem * 1024 * 1024),
        .pids_max = 0,
        .harden = a->opts.harden,
        .on_pid = inst_on_pid,
    };
    int rc = a->isolate->start(a->loop, &is, inst_on_exit, in, &in->proc, &err);
    launch_strv_free(argv);
    launch_strv_free(envp);
    if (rc) {
        inst_fail_start(in, err.msg);
        return;
    }
    /* inst_on_pid says when the monitor has forked the app; the timer is
     * the fallback should it never say. */
    in->pid_wait = INST_PID_POLLS;
    uv_timer_start(&in->timer, inst_wait_pid, INST_PID_POLL_MS, 0);
}

bool inst_is_worker(const inst_t *in)
{
    const char *kind = json_str(in->spec, "kind");
    return kind && strcmp(kind, "worker") == 0;
}

int inst_pool_pin(inst_t *in, int n, err_t *err)
{
    if (!in->engine) {
        in->pool_pin = n; /* applied when the engine starts */
        return 0;
    }
    int rc = engine_app_pin(in->engine, n, err);
    if (rc == 0)
        in->pool_pin = n;
    return rc;
}

/* A worker instance runs an engine app instead of a process: workers are
 * started on demand by the engine, with the spec's command as the slave.
 * `cmd` runs through `sh -c`, so the engine's arguments (--app ...) reach
 * it as "$@". Running and healthy once the invocation service listens. */
static void inst_start_engine(inst_t *in, char **argv, char **envp)
{
    agent_t *a = in->agent;
    err_t err = {0};
    if (argv[0] && argv[1] && argv[2] && !argv[3] && !strcmp(argv[0], "/bin/sh") &&
        !strcmp(argv[1], "-c")) {
        char *shcmd = xasprintf("%s \"$@\"", argv[2]);
        free(argv[2]);
        argv[2] = shcmd;
        argv = xrealloc(argv, 5 * sizeof(char *));
        argv[3] = xstrdup("drover-worker");
        argv[4] = NULL;
    }
    char *listen = xasprintf("0.0.0.0:%d", in->ports[0]);
    engine_opts_t o = {
        .name = in->app,
        .version = in->version,
        .id = in->id,
        .pool = json_object_get(in->spec, "pool"),
        .argv = argv,
        .envp = envp,
        .cwd = in->dir,
        .run_dir = in->dir,
        .locator = a->locator_addr,
        .listen = listen,
        .isolate = a->isolate,
        .harden = a->opts.harden,
        .cpus = json_number_value(json_object_get(in->spec, "cpus")),
        .mem_bytes = (int64_t)(json_number_value(json_object_get(in->spec, "mem")) * 1024 * 1024),
    };
    int rc = engine_app_start(a->loop, &o, &in->engine, &err);
    free(listen);
    launch_strv_free(argv);
    if (rc) {
        inst_fail_start(in, err.msg);
        return;
    }
    if (in->pool_pin && engine_app_pin(in->engine, in->pool_pin, &err))
        log_warn("agent", "instance %s: poolPin %d: %s", in->id, in->pool_pin, err.msg);
    in->healthy = 1;
    inst_set_quiet(in, INST_RUNNING, "worker engine started");
    inst_set(in, INST_HEALTHY, "worker pool serving invocations on port %d",
             engine_app_port(in->engine));
}

static void inst_engine_stopped(void *data)
{
    inst_t *in = data;
    in->engine = NULL;
    inst_release_ports(in);
    inst_set(in, INST_KILLED, "stopped: worker pool terminated");
    agent_inst_remove(in->agent, in);
}

/* The end of a drain: SIGTERM for a process, terminate for a pool. */
static void inst_end(inst_t *in)
{
    if (in->proc)
        inst_terminate(in);
    else if (in->engine)
        engine_app_stop(in->engine, false, inst_engine_stopped, in);
}

/* The monitor forks the app a moment after it starts; reports and health
 * checks begin once the app's pid is known (or after a while, whatever). */
static void inst_running(inst_t *in)
{
    in->pid_wait = 0;
    uv_timer_stop(&in->timer);
    if (in->agent->isolate->pid(in->proc) > 0)
        in->pid = in->agent->isolate->pid(in->proc);
    inst_set(in, INST_RUNNING, "started, pid %d", (int)in->pid);
    inst_start_health(in);
}

static void inst_on_pid(isolate_proc_t *p, pid_t pid, void *data)
{
    inst_t *in = data;
    if (in->proc != p || in->stopping)
        return;
    if (in->pid_wait) {
        in->pid = pid;
        inst_running(in);
    } else if (in->pid <= 0) {
        in->pid = pid; /* reported "running" without one: tell the API now */
        inst_report(in);
    }
}

static void inst_wait_pid(uv_timer_t *t)
{
    inst_t *in = t->data;
    if (!in->proc || in->stopping || !in->pid_wait)
        return;
    if (in->agent->isolate->pid(in->proc) <= 0 && --in->pid_wait > 0) {
        if (in->report_dirty && !in->report_busy)
            inst_report(in); /* "starting" is taking a while: say so */
        uv_timer_start(&in->timer, inst_wait_pid, INST_PID_POLL_MS, 0);
        return;
    }
    inst_running(in);
}

/* ---- restarts ---- */

static void inst_restart_due(uv_timer_t *t)
{
    inst_t *in = t->data;
    if (in->wanted && !in->stopping)
        inst_launch(in);
}

static uint64_t inst_backoff_ms(inst_t *in)
{
    double base = json_number_value(json_object_get(in->spec, "backoffSeconds"));
    double factor = json_number_value(json_object_get(in->spec, "backoffFactor"));
    double max = json_number_value(json_object_get(in->spec, "maxLaunchDelaySeconds"));
    if (base <= 0)
        base = 1;
    if (factor < 1)
        factor = 1;
    if (max <= 0)
        max = 300;
    double d = base * pow(factor, in->restarts > 64 ? 64 : in->restarts);
    return (uint64_t)((d > max ? max : d) * 1000);
}

static void inst_schedule_restart(inst_t *in, inst_state_t st, const char *why)
{
    uint64_t delay = inst_backoff_ms(in);
    in->restarts++;
    inst_set(in, st, "%s; restarting in %.1fs (restart %d%s)", why, (double)delay / 1000,
             in->restarts, in->restarts >= 3 ? ", crash loop" : "");
    uv_timer_start(&in->timer, inst_restart_due, delay, 0);
}

static void inst_fail_start(inst_t *in, const char *why)
{
    inst_release_ports(in);
    in->exit = json_pack("{s:i, s:i, s:b, s:b, s:s}", "exit_code", -1, "signal", 0, "oom", 0,
                         "start_failed", 1, "reason", why);
    if (in->stopping) {
        inst_set(in, INST_KILLED, "stopped before it started: %s", why);
        agent_inst_remove(in->agent, in);
        return;
    }
    inst_schedule_restart(in, INST_FAILED, why);
}

/* ---- exits, health, stop ---- */

static void inst_on_exit(isolate_proc_t *p, const isolate_exit_t *how, void *data)
{
    inst_t *in = data;
    agent_t *a = in->agent;
    a->isolate->release(p);
    in->proc = NULL;
    a->isolate->cleanup(in->id, in->dir);
    uv_timer_stop(&in->timer);
    if (in->health) {
        health_stop(in->health);
        in->health = NULL;
    }
    inst_release_ports(in);
    json_decref(in->exit);
    in->exit = json_pack("{s:i, s:i, s:b, s:b, s:I, s:s}", "exit_code", how->exit_code, "signal",
                         how->signal, "oom", how->oom, "start_failed", how->start_failed,
                         "ended_at_ms", (json_int_t)how->ended_at_ms, "reason", how->reason);
    if (in->stopping) {
        inst_set(in, INST_KILLED, "stopped: %s", how->reason);
        agent_inst_remove(a, in);
        return;
    }
    if (how->ended_at_ms - in->started_at_ms >= INST_STABLE_MS)
        in->restarts = 0;
    if (in->restart_after_exit) {
        in->restart_after_exit = false;
        inst_schedule_restart(in, INST_FAILED, "killed after failing its health checks");
    } else if (how->exit_code == 0 && !how->signal) {
        inst_schedule_restart(in, INST_FINISHED, how->reason);
    } else {
        inst_schedule_restart(in, INST_FAILED, how->reason);
    }
}

static void inst_kill_now(uv_timer_t *t)
{
    inst_t *in = t->data;
    if (in->proc) {
        log_warn("agent", "instance %s did not stop within its grace period: SIGKILL", in->id);
        in->agent->isolate->kill_all(in->proc);
    }
}

/* SIGTERM to the group now, SIGKILL to everything in the cgroup after
 * taskKillGracePeriodSeconds. */
static void inst_terminate(inst_t *in)
{
    double grace = json_number_value(json_object_get(in->spec, "taskKillGracePeriodSeconds"));
    if (grace <= 0)
        grace = 3;
    in->agent->isolate->signal(in->proc, SIGTERM);
    uv_timer_start(&in->timer, inst_kill_now, (uint64_t)(grace * 1000), 0);
}

static void inst_on_health(health_t *h, const health_result_t *res, void *data)
{
    inst_t *in = data;
    if (in->stopping || !in->proc)
        return;
    if (res->changed || (res->healthy != (in->healthy == 1))) {
        in->healthy = res->healthy;
        inst_set(in, res->healthy ? INST_HEALTHY : INST_UNHEALTHY, "health check: %s", res->reason);
    }
    if (res->kill) {
        health_stop(in->health);
        in->health = NULL;
        in->restart_after_exit = true;
        inst_set(in, INST_KILLING, "failed %d consecutive health checks: %s",
                 res->consecutive_failures, res->reason);
        inst_terminate(in);
    }
}

typedef struct inst_drain_ctx {
    agent_t *agent;
    char *id;
} inst_drain_ctx_t;

static void inst_drained(uint64_t revision, size_t confirmed, size_t pending,
                         const char *pending_names, void *data)
{
    inst_drain_ctx_t *ctx = data;
    agent_t *a = ctx->agent;
    inst_t *in = NULL;
    for (inst_t *i = a->insts; i; i = i->next)
        if (!strcmp(i->id, ctx->id))
            in = i;
    free(ctx->id);
    free(ctx);
    if (!in || !in->draining)
        return; /* gone meanwhile (agent stopping) */
    in->draining = false;
    if (pending) {
        log_warn("agent", "instance %s: %zu router(s) did not confirm its removal in time: %s",
                 in->id, pending, pending_names ? pending_names : "?");
        inst_set(in, INST_KILLING, "stopping; not confirmed by %zu router(s): %s", pending,
                 pending_names ? pending_names : "?");
    } else if (confirmed) {
        inst_set(in, INST_KILLING, "stopping; removal confirmed by %zu router(s)", confirmed);
    }
    inst_end(in);
}

void inst_drain(inst_t *in)
{
    agent_t *a = in->agent;
    uint64_t timeout = a->opts.drain_timeout_ms ? a->opts.drain_timeout_ms : 5000;
    inst_drain_ctx_t *ctx = xcalloc(1, sizeof(*ctx));
    ctx->agent = a;
    ctx->id = xstrdup(in->id);
    in->draining = true;
    /* The revision waited for must include this instance's removal. */
    agent_publish_flush(a);
    if (!a->locator || loc_server_wait_confirmed(a->locator, loc_table_revision(a->table), timeout,
                                                 inst_drained, ctx) != 0) {
        in->draining = false;
        free(ctx->id);
        free(ctx);
        inst_end(in);
    }
}

void inst_stop(inst_t *in, const char *reason)
{
    if (in->stopping)
        return;
    in->stopping = true;
    in->wanted = false;
    uv_timer_stop(&in->timer);
    inst_queue_remove(&in->agent->launches, in);
    if (in->health) {
        health_stop(in->health);
        in->health = NULL;
    }
    if (in->fetching) {
        inst_set(in, INST_KILLING, "%s (waiting for its artifact download)", reason);
        return; /* inst_fetched finishes the stop */
    }
    if (!in->proc && !in->engine) {
        inst_release_ports(in);
        inst_set(in, INST_KILLED, "%s", reason);
        agent_inst_remove(in->agent, in);
        return;
    }
    /* inst_set unpublished it; the process gets SIGTERM only once every
     * router subscribed to this node confirmed the removal (bounded). The
     * drain starts from the turn's flush, so that stopping many instances
     * at once publishes the table once. */
    inst_set(in, INST_KILLING, "%s", reason);
    inst_queue_push(&in->agent->drains, in);
    agent_flush_soon(in->agent);
}

/* ---- re-adoption after an agent restart ---- */

int inst_adopt(inst_t *in)
{
    agent_t *a = in->agent;
    err_t err = {0};
    char *meta_path = xasprintf("%s/instance.json", in->dir);
    json_error_t je;
    json_t *meta = json_load_file(meta_path, 0, &je);
    free(meta_path);
    if (!meta)
        return -ENOENT;
    json_decref(in->spec);
    in->spec = json_incref(json_object_get(meta, "spec"));
    if (!in->spec)
        in->spec = json_object();
    if (inst_is_worker(in)) {
        /* an engine lives in the agent: its workers lost their socket with
         * it; the instance starts afresh when assigned again (its engine
         * clears what the old workers left) */
        json_decref(meta);
        return -ECHILD;
    }
    free(in->app);
    in->app = xstrdup(json_str(meta, "app") ? json_str(meta, "app") : "");
    in->version = json_integer_value(json_object_get(meta, "version"));
    in->started_at_ms = json_integer_value(json_object_get(meta, "started_at_ms"));
    in->restarts = (int)json_integer_value(json_object_get(meta, "restarts"));
    launch_ports_from_spec(in->spec, &in->port_info, NULL);
    in->ports = xcalloc(in->port_info.n ? in->port_info.n : 1, sizeof(int));
    const json_t *ports = json_object_get(meta, "ports");
    for (size_t i = 0; i < in->port_info.n; i++)
        in->ports[i] = (int)json_integer_value(json_array_get(ports, i));
    json_decref(meta);

    isolate_exit_t how = {0};
    int rc = a->isolate->adopt(a->loop, in->dir, inst_on_exit, in, &in->proc, &how, &err);
    if (rc < 0)
        return rc;
    if (rc == 1) {
        if (ports_reserve(&a->ports, in->port_info.n, in->ports, &err) == 0)
            in->ports_held = true;
        else
            log_warn("agent", "instance %s: %s", in->id, err.msg);
        int64_t mem = (int64_t)json_number_value(json_object_get(in->spec, "mem"));
        in->mem_held_mb = mem > 0 ? mem : 0;
        a->mem_committed_mb += in->mem_held_mb;
        in->pid = a->isolate->pid(in->proc);
        inst_set(in, INST_RUNNING, "re-adopted after agent restart, pid %d", (int)in->pid);
        inst_start_health(in);
        return 1;
    }
    /* It ended while no agent watched: report how, then restart if wanted. */
    in->ports_held = false;
    json_decref(in->exit);
    in->exit = json_pack("{s:i, s:i, s:b, s:b, s:I, s:s}", "exit_code", how.exit_code, "signal",
                         how.signal, "oom", how.oom, "start_failed", how.start_failed,
                         "ended_at_ms", (json_int_t)how.ended_at_ms, "reason", how.reason);
    a->isolate->cleanup(in->id, in->dir);
    inst_set(in, how.exit_code == 0 && !how.signal ? INST_FINISHED : INST_FAILED,
             "ended while the agent was down: %s", how.reason);
    return 0;
}
