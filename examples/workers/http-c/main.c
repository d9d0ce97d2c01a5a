/* http-worker: a drover worker (C SDK) answering HTTP over invocation
 * (event "http"): {"app": ..., "method": ..., "path": ..., "pid": ...} for
 * any request, or N bytes of 'x' for `?size=N` (benchmarks). Started by the
 * engine as http-worker --app NAME --endpoint SOCKET --uuid UUID --locator
 * HOST:PORT; reached through the gateway's routes. */
#include <drover/worker.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SIZE_MAX_ANSWER ((unsigned long long)1 << 30)
#define BLOCK           ((size_t)64 << 10)

/* The value of ?size=N, or -1 when absent, -2 when not a number in range. */
static long long query_size(const char *query)
{
    for (const char *p = query; p && *p; p = strchr(p, '&') ? strchr(p, '&') + 1 : NULL) {
        if (strncmp(p, "size=", 5) != 0)
            continue;
        const char *v = p + 5;
        if (*v < '0' || *v > '9')
            return -2;
        char *end;
        errno = 0;
        unsigned long long n = strtoull(v, &end, 10);
        if (errno || (*end && *end != '&') || n > SIZE_MAX_ANSWER)
            return -2;
        return (long long)n;
    }
    return -1;
}

/* Appends s as a JSON string body (quotes added by the caller). */
static size_t json_escape(char *out, size_t cap, const char *s)
{
    size_t n = 0;
    for (; *s && n + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[n++] = '\\';
            out[n++] = (char)c;
        } else if (c < 0x20) {
            n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
        } else {
            out[n++] = (char)c;
        }
    }
    out[n] = '\0';
    return n;
}

static void serve(drover_call_t *call, const drover_http_request_t *req, void *data)
{
    long long size = query_size(req->query);
    if (size == -2) {
        static const drover_http_header_t h[] = {{"content-type", 12, "text/plain", 10}};
        drover_http_respond(call, 400, h, 1, "bad size\n", 9);
        return;
    }
    if (size >= 0) {
        static char block[BLOCK];
        if (!block[0])
            memset(block, 'x', sizeof(block));
        char len[32];
        int n = snprintf(len, sizeof(len), "%lld", size);
        drover_http_header_t h[] = {{"content-type", 12, "application/octet-stream", 24},
                                    {"content-length", 14, len, (size_t)n}};
        int rc = drover_http_write_head(call, 200, h, 2);
        for (long long left = size; rc == 0 && left > 0; left -= (long long)BLOCK)
            rc = drover_call_write(call, block, left < (long long)BLOCK ? (size_t)left : BLOCK);
        if (rc == 0)
            drover_call_close(call);
        else
            drover_call_error(call, DROVER_ECAT_APP, 1, "writing the body: %s", strerror(-rc));
        return;
    }
    char method[64], path[2048], app[256], body[2560];
    json_escape(method, sizeof(method), req->method);
    json_escape(path, sizeof(path), req->path);
    const char *a = drover_worker_app(drover_call_worker(call));
    json_escape(app, sizeof(app), a ? a : "");
    int n = snprintf(body, sizeof(body),
                     "{\"app\": \"%s\", \"method\": \"%s\", \"path\": \"%s\", \"pid\": %ld}\n", app,
                     method, path, (long)getpid());
    static const drover_http_header_t h[] = {{"content-type", 12, "application/json", 16}};
    drover_http_respond(call, 200, h, 1, body, (size_t)n);
}

int main(int argc, char **argv)
{
    drover_worker_t *w = drover_worker_new();
    int rc = drover_worker_on_http(w, "http", serve, NULL);
    if (rc == 0)
        rc = drover_worker_parse_args(w, argc, argv);
    if (rc == 0)
        rc = drover_worker_run(w);
    if (rc < 0)
        fprintf(stderr, "http-worker: %s\n", drover_worker_error(w));
    drover_worker_free(w);
    return rc < 0 ? 1 : 0;
}
