/* engine: the worker engine of one worker app on one node (Cocaine's
 * "app" service). It owns
 *   - the invocation service: a TCP listener on one port; clients open
 *     channels with `enqueue [event]` and stream chunks both ways
 *     (docs/protocol.md section 5, "Invocation service");
 *   - a bounded queue of invocations waiting for a worker, each with a
 *     deadline (request-timeout, or the enqueue's `timeout` header);
 *   - the pool: workers started through an isolate as
 *     `<argv...> --app NAME --endpoint SOCKET --uuid UUID --locator HOST:PORT`,
 *     speaking the worker protocol on a unix socket the engine listens on;
 *     grown with the queue up to pool-limit, shrunk by idle-timeout down to
 *     zero, or pinned to a size; crashed workers are respawned with backoff
 *     (1 s doubling to 32 s) and leave a crashlog (the tail of their output).
 *
 * Everything runs on the loop given to engine_app_start; no call blocks it
 * (crashlogs are read on the thread pool). The process must ignore SIGPIPE
 * (drover's server_run does): a peer that went away is an EPIPE here. Every buffer holding outside
 * input is bounded: rpc decoders, per-connection output (readers of a
 * connection whose peer does not keep up are paused, and a client that
 * stops reading altogether is disconnected), chunks buffered for a queued
 * invocation.
 *
 * Ownership: engine_app_start copies everything in engine_opts_t (strings,
 * argv, envp, the pool profile); the caller keeps its own. The app is owned
 * by the caller until engine_app_stop, after which it frees itself and runs
 * the `done` callback last; no other engine_app_* call is allowed after
 * engine_app_stop. Strings and JSON returned by the getters are new
 * (caller frees / decrefs). */
#ifndef DROVER_ENGINE_H
#define DROVER_ENGINE_H

#include "core/err.h"
#include "isolate/isolate.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct engine_app engine_app_t;

/* The `pool` profile of a worker spec (docs/spec.md "Worker pool"), times in
 * milliseconds. */
typedef struct engine_profile {
    int pool_limit;
    int queue_limit;
    int concurrency;
    int grow_threshold;
    int crashlog_limit; /* lines of output kept per crashlog */
    uint64_t idle_ms;
    uint64_t spawn_ms;
    uint64_t handshake_ms;
    uint64_t heartbeat_ms;
    uint64_t terminate_ms;
    uint64_t request_ms;
    bool spare; /* keep one parked, contained worker process while the pool is at zero */
} engine_profile_t;

/* Fill *out from a pool object (missing fields take the spec defaults;
 * NULL gives every default). -EINVAL naming the field when one is bad. */
int engine_profile_parse(const json_t *pool, engine_profile_t *out, err_t *err);

typedef struct engine_opts {
    const char *name;    /* app name, "/production/echo" (--app) */
    int64_t version;     /* for logs */
    const char *id;      /* instance id; workers' isolate ids are "<id>.w<hex>" */
    const json_t *pool;  /* the spec's pool profile (may be NULL: defaults) */
    char *const *argv;   /* the slave, NULL-terminated; the engine appends its args */
    char *const *envp;   /* NULL-terminated environment of workers */
    const char *cwd;     /* workers' working directory (the sandbox) */
    const char *run_dir; /* exists; holds the socket, workers/<uuid>/ and crashlogs/ */
    const char *locator; /* "host:port" passed as --locator */
    const char *listen;  /* invocation service address, "0.0.0.0:PORT" (port 0 picks) */
    const isolate_ops_t *isolate;
    bool harden;
    double cpus;       /* per worker (isolate limits); 0 = none */
    int64_t mem_bytes; /* per worker; 0 = none */
} engine_opts_t;

/* Start listening (unix socket and TCP) and return the app; no worker is
 * started until an invocation arrives or a pin asks for some. Kills workers
 * left in run_dir/workers by an earlier agent. On failure *out is NULL and
 * nothing is left to free. */
int engine_app_start(uv_loop_t *loop, const engine_opts_t *opts, engine_app_t **out, err_t *err);

/* The invocation service's port (the bound one when 0 was asked). */
int engine_app_port(const engine_app_t *app);

/* Pin the pool to n workers on this node (0: automatic: grow with the
 * queue, shrink when idle). -EINVAL when n < 0 or n > pool-limit. */
int engine_app_pin(engine_app_t *app, int n, err_t *err);

/* Stop: refuse new invocations ([3, 108]), answer queued ones [3, 108],
 * send every worker `terminate` and SIGKILL those still there after
 * terminate-timeout (at once with kill_now), close every connection, then
 * free the app and run done(data). */
void engine_app_stop(engine_app_t *app, bool kill_now, void (*done)(void *data), void *data);

/* {"app", "pin", "workers": {"spawning": n, "handshaking", "active", "sealing",
 * "terminating", "total"}, "queue": n, "queue_limit", "pool_limit",
 * "concurrency", "running": invocations on workers,
 * "totals": {"served", "refused", "timed_out", "failed", "crashes", "spawned"},
 * "backoff_ms", "workers_list": [{"uuid", "state", "pid", "load", "served", "since_ms"}]} */
json_t *engine_app_status(const engine_app_t *app);

/* Crashlogs, oldest first: [{"id", "at" (ISO 8601), "reason", "lines"}]. */
json_t *engine_app_crashlogs(const engine_app_t *app);
/* Text of one crashlog (malloc'd, *len set), or NULL when there is no such
 * id. */
char *engine_app_crashlog(const engine_app_t *app, const char *id, size_t *len);

#endif
