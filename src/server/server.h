/* server: assembles a drover process on one loop and runs it until
 * SIGTERM/SIGINT. `drover server` is the control plane (store, API,
 * placement); `drover agent` is a node agent; `drover dev` is both in one
 * process, the agent talking to the API over loopback like any other. */
#ifndef DROVER_SERVER_H
#define DROVER_SERVER_H

#include "agent/agent.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct server_options {
    const char *mode;          /* "dev", "server" or "agent", for logs */
    bool run_control_plane;    /* store + API + placement */
    const char *data_dir;      /* created if missing; holds store.db */
    const char *api_addr;      /* "127.0.0.1:7400" */
    const char *store_backend; /* "sqlite" */
    bool run_agent;
    agent_options_t agent;
    bool stop_instances_on_exit; /* dev: Ctrl-C stops the instances too */
    const char *dns_addr;        /* DNS over the merged table ("127.0.0.1:8600"), or NULL */
    const char *meta_addr;       /* metalocator: the merged table of every node ("0.0.0.0:10053") */
    const char *discover;        /* multicast "GROUP:PORT" to find nodes on, or NULL (off) */
    const char *peers;           /* static node locators "id=host:port,..." (or NULL) */
    uint64_t announce_interval_ms; /* the nodes' announce interval (a node is gone after 3) */
    const char *announce_if;       /* interface address for multicast (default any) */
    uint64_t shutdown_grace_ms;
    uint64_t lost_delay_ms; /* replace a lost node's instances after this long (0: at once) */
    const char
        *gateway_addr; /* dev: a gateway's HTTP listener following the metalocator, or NULL */
} server_options_t;

/* Blocks until a termination signal; 0 on a clean shutdown, or a negative
 * errno when startup failed (already logged). */
int server_run(const server_options_t *opts);

#endif
