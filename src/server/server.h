/* server: assembles a control-plane process (store + HTTP + API) on one
 * loop and runs it until SIGTERM/SIGINT. `drover dev` and `drover server`
 * are both this, with different defaults; later issues add the agent and
 * the gateway to dev. */
#ifndef DROVER_SERVER_H
#define DROVER_SERVER_H

#include <stdint.h>

typedef struct server_options {
    const char *data_dir;      /* created if missing; holds store.db */
    const char *api_addr;      /* "127.0.0.1:7400" */
    const char *store_backend; /* "sqlite" */
    const char *mode;          /* "dev" or "server", for logs */
    uint64_t shutdown_grace_ms;
} server_options_t;

/* Blocks until a termination signal; 0 on a clean shutdown, or a negative
 * errno when startup failed (already logged). */
int server_run(const server_options_t *opts);

#endif
