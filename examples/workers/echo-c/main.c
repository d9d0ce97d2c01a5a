/* echo-worker: a drover worker (C SDK) that streams every request chunk
 * straight back, for event "echo". Started by the engine as
 *     echo-worker --app NAME --endpoint SOCKET --uuid UUID --locator HOST:PORT
 * Try it: `drover invoke /examples/echo-c echo hello`. */
#include <drover/worker.h>

#include <stdio.h>

/* Streaming mode: each chunk is written back as it arrives, so a large
 * request never sits in memory. */
static void echo_chunk(drover_call_t *call, void *ctx, const char *chunk, size_t len)
{
    drover_call_write(call, chunk, len);
}

static void echo_close(drover_call_t *call, void *ctx)
{
    drover_call_close(call);
}

/* The agent ended the request with an error (the client went away, the
 * request timed out): end our side too, or the call would stay open. */
static void echo_error(drover_call_t *call, void *ctx, const drover_error_t *err)
{
    drover_call_close(call);
}

int main(int argc, char **argv)
{
    static const drover_stream_ops_t echo = {
        .on_chunk = echo_chunk,
        .on_close = echo_close,
        .on_error = echo_error,
    };
    drover_worker_t *w = drover_worker_new();
    int rc = drover_worker_on_stream(w, "echo", &echo, NULL);
    if (rc == 0)
        rc = drover_worker_parse_args(w, argc, argv);
    if (rc == 0)
        rc = drover_worker_run(w);
    if (rc < 0)
        fprintf(stderr, "echo-worker: %s\n", drover_worker_error(w));
    drover_worker_free(w);
    return rc < 0 ? 1 : 0;
}
