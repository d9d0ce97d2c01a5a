/* Throughput of the HTTP server alone: a trivial handler on one loop (one
 * core). bench/http/run.sh builds it and points wrk at it. */
#include "core/log.h"
#include "http/server.h"

#include <stdio.h>

static void hello(http_req_t *r, void *data)
{
    (void)data;
    static const http_header_t h[] = {{"Content-Type", "text/plain"}};
    http_respond(r, 200, h, 1, "hello\n", 6);
}

int main(int argc, char **argv)
{
    log_setup(LOG_WARN, LOG_TEXT);
    uv_loop_t *loop = uv_default_loop();
    http_server_t *s;
    err_t err = {0};
    if (http_server_listen(loop, argc > 1 ? argv[1] : "127.0.0.1:7480", NULL, hello, NULL, &s,
                           &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    return uv_run(loop, UV_RUN_DEFAULT);
}
