/* health: Marathon-semantics health checks of one instance, run on the
 * agent's loop. HTTP (GET path on host:port; 2xx and 3xx are healthy),
 * HTTPS is treated as HTTP until TLS lands (noted in the reason), TCP
 * (connect succeeds), COMMAND (`/bin/sh -c command` exits 0, run with the
 * instance's environment).
 *
 * Timing: the first check runs at once and then every interval; a check
 * that takes longer than timeout fails. Failures during the grace period
 * (counted from health_start) are ignored until the first success; after the
 * grace period, or after the first success, consecutive failures count, and
 * reaching max_failures (> 0) reports `kill = true`. */
#ifndef DROVER_AGENT_HEALTH_H
#define DROVER_AGENT_HEALTH_H

#include "core/err.h"

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef enum health_protocol {
    HEALTH_HTTP = 0,
    HEALTH_HTTPS = 1,
    HEALTH_TCP = 2,
    HEALTH_COMMAND = 3,
} health_protocol_t;

typedef struct health_spec {
    health_protocol_t protocol;
    const char *host;    /* "127.0.0.1" */
    int port;            /* host port (already resolved from portIndex) */
    const char *path;    /* HTTP: "/healthcheck" */
    const char *command; /* COMMAND */
    char *const *envp;   /* COMMAND: environment (NULL-terminated), may be NULL */
    const char *cwd;     /* COMMAND: working directory, may be NULL */
    uint64_t grace_ms;
    uint64_t interval_ms;
    uint64_t timeout_ms;
    int max_failures; /* 0 = never ask for a kill */
} health_spec_t;

typedef struct health_result {
    bool healthy;             /* state after this check */
    bool changed;             /* healthy differs from the previous report (first report: true) */
    bool kill;                /* consecutive failures reached max_failures */
    int consecutive_failures; /* counted ones (not those ignored in grace) */
    char reason[256];         /* "HTTP 200", "HTTP 503 from /healthcheck", "connect: Connection
                               * refused", "timed out after 2000 ms", "command exited with 1" */
} health_result_t;

typedef struct health health_t;

/* Called after every check (only on the loop thread). */
typedef void (*health_cb)(health_t *h, const health_result_t *res, void *data);

/* Copies what it needs from spec. */
int health_start(uv_loop_t *loop, const health_spec_t *spec, health_cb cb, void *data,
                 health_t **out, err_t *err);
/* No callback after this returns; in-flight checks are abandoned (their
 * sockets closed, a COMMAND's process killed); freed from close callbacks. */
void health_stop(health_t *h);

/* Parse Marathon's protocol names ("HTTP", "MESOS_HTTP", "TCP", ...). */
int health_protocol_parse(const char *s, health_protocol_t *out);

#endif
