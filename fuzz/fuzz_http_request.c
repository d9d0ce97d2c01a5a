/* Fuzz the server's request parsing, dispatch and response framing: the
 * bytes go through a detached connection (exactly the code a socket's
 * bytes go through), fed in uneven pieces so the incremental parser sees
 * every kind of split. The handler reads every field it is given (ASan
 * catches a bad pointer) and answers at once, whole or streamed. */
#include "core/log.h"
#include "http/http_internal.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static size_t touch(const char *s)
{
    return strlen(s);
}

static void fuzz_handler(http_req_t *r, void *data)
{
    (void)data;
    size_t sum =
        touch(r->method) + touch(r->target) + touch(r->path) + touch(r->query) + touch(r->remote);
    for (size_t i = 0; i < r->n_params; i++)
        sum += touch(r->params[i].name) + touch(r->params[i].value);
    for (size_t i = 0; i < r->n_headers; i++)
        sum += touch(r->headers[i].name) + touch(r->headers[i].value);
    if (r->body[r->body_len] != '\0')
        abort(); /* the body must be NUL-terminated */
    const char *h = http_req_header(r, "x-h");
    const char *p = http_req_param(r, "p");
    http_header_t hs[] = {{"X-Sum", "1"}, {"X-Echo", h ? h : "-"}, {"X-P", p ? p : "-"}};
    if (strstr(r->path, "stream")) {
        http_stream_begin(r, 200, hs, 3);
        http_stream_write(r, r->body, r->body_len);
        http_stream_write(r, r->path, strlen(r->path));
        http_stream_end(r);
    } else {
        http_respond(r, sum % 2 ? 200 : 404, hs, 3, r->body, r->body_len);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int once;
    if (!once) {
        log_setup(LOG_OFF, LOG_TEXT);
        once = 1;
    }
    http_limits_t lim;
    http_limits_default(&lim);
    lim.max_header_bytes = 2048;
    lim.max_body_bytes = 4096;
    http_server_t *srv = http_server_new_detached(&lim, fuzz_handler, NULL);
    http_conn_t *c = http_conn_new_detached(srv);
    size_t step = size ? (size_t)data[0] % 64 + 1 : 1;
    for (size_t off = 0; off < size;) {
        size_t n = size - off < step ? size - off : step;
        if (http_conn_feed(c, (const char *)data + off, n) < 0)
            break;
        off += n;
        step = (step * 7) % 97 + 1;
    }
    http_conn_free_detached(c);
    http_server_free_detached(srv);
    return 0;
}
