/* agent: the node agent. Registers its node with the server, keeps the
 * node's lease alive, watches the instances assigned to it and converges:
 * starts what is missing, stops what is no longer wanted, restarts what
 * failed (with backoff), health-checks what runs, and reports every state
 * change to the API. Instances run under the isolate's monitor, so the
 * agent can die and come back without touching them.
 *
 * Runs on the loop given to agent_start. API calls are non-blocking on that
 * loop (libcurl's multi interface, connections kept alive); a thousand
 * instances assigned at once are launched a slice per loop turn, reported
 * with a bounded number of calls in flight (each in its latest state), and
 * published to the node's table once per change burst, so heartbeats,
 * exits and health checks are never stuck behind them. */
#ifndef DROVER_AGENT_H
#define DROVER_AGENT_H

#include "core/err.h"

#include <stdbool.h>
#include <uv.h>

typedef struct agent agent_t;

typedef struct agent_options {
    const char *server_url;    /* "http://127.0.0.1:7400" */
    const char *data_dir;      /* node-id, instances/, artifacts/, versions/ */
    const char *labels;        /* "disk=ssd,env=production" (may be NULL) */
    const char *advertise;     /* address instances are reached at (default: detected) */
    const char *listen;        /* agent HTTP (logs): "0.0.0.0:7401"; port 0 picks one */
    const char *ports;         /* host port range "20000-32000" */
    const char *locator;       /* node locator (msgpack RPC): "0.0.0.0:10053"; port 0 picks one */
    uint64_t drain_timeout_ms; /* wait for routers to confirm a removal (default 5 s) */
    const char *announce;      /* multicast "GROUP:PORT" to announce this node on, or NULL (off) */
    uint64_t announce_interval_ms; /* default 5 s */
    const char *announce_if;       /* IPv4 address of the interface to announce on (default any) */
    bool harden;                   /* namespaces / no_new_privs for instances */
    const char *hostname;          /* the node's "hostname" for constraints (default: the host's) */
    double cpus;                   /* cpus offered to placement (0: the online processors) */
    int64_t mem_mb;                /* memory offered, MiB (0: the machine's) */
} agent_options_t;

int agent_start(uv_loop_t *loop, const agent_options_t *opts, agent_t **out, err_t *err);
/* Stop the agent; `done` runs last. With stop_instances false (a node agent
 * being restarted or upgraded) instances keep running, to be re-adopted by
 * the next agent. With stop_instances true (`drover dev` exiting) every
 * instance is stopped first, gracefully, and its record removed. */
void agent_stop(agent_t *a, bool stop_instances, void (*done)(void *data), void *data);
const char *agent_node_id(const agent_t *a);
/* The node's service table (healthy instances), owned by the agent. */
struct loc_table *agent_table(agent_t *a);

#endif
