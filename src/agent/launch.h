/* launch: turn a normalized app spec into what the isolate runs: argv,
 * environment and the ports to allocate. Pure functions (no I/O), so the
 * Marathon compatibility rules are unit-tested on their own. */
#ifndef DROVER_AGENT_LAUNCH_H
#define DROVER_AGENT_LAUNCH_H

#include "core/err.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef struct launch_ports {
    size_t n;
    int *want;    /* 0 = any port from the range; > 0 = this exact host port */
    char **names; /* port names ("http") or NULL entries */
} launch_ports_t;

/* Ports the instance needs: portDefinitions (HOST networking) or
 * container.docker.portMappings (BRIDGE/USER), in that order of the spec.
 * With requirePorts, portDefinitions' port numbers are host ports; a
 * mapping's non-zero hostPort is always fixed. */
int launch_ports_from_spec(const json_t *spec, launch_ports_t *out, err_t *err);
void launch_ports_free(launch_ports_t *p);

typedef struct launch_ctx {
    const char *instance_id;
    const char *app_id;
    int64_t version;
    const char *node;
    const char *host;    /* address the instance is reached at */
    const char *sandbox; /* the instance's working directory */
    const int *ports;    /* host ports, same order as launch_ports_from_spec */
    const launch_ports_t *port_info;
} launch_ctx_t;

/* argv: `cmd` runs as {"/bin/sh", "-c", cmd} (as Marathon does); `args` is
 * exec'd as given. envp: the spec's env (string values; Marathon's secret
 * references are skipped), then drover's and Marathon's variables, which win
 * over the spec's: PORT, PORT0..n, PORTS, PORT_<NAME>, HOST, DROVER_APP_ID,
 * DROVER_APP_VERSION, DROVER_INSTANCE_ID, DROVER_NODE, MARATHON_APP_ID,
 * MARATHON_APP_VERSION, MESOS_TASK_ID, MESOS_SANDBOX; PATH and HOME get
 * defaults when the spec does not set them. Both NULL-terminated, malloc'd:
 * free with launch_strv_free. */
int launch_build(const json_t *spec, const launch_ctx_t *ctx, char ***argv, char ***envp,
                 err_t *err);
void launch_strv_free(char **v);

#endif
