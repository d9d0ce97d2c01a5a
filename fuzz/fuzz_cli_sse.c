/* Fuzz the CLI's event-stream parser and event line rendering.
 *
 * Property: the events parsed from a stream do not depend on where the
 * stream is cut into chunks (the input's first byte picks the chunk size),
 * and every rendered line is one line with no control characters. */
#include "agent/artifact.h"
#include "cli/cli.h"
#include "core/alloc.h"
#include "spec/spec.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Fuzz targets link src/core and src/cli only; the CLI's other
 * dependencies are never reached from the parser, so they are stubs. */
void http_client_resp_init(http_client_resp_t *resp, size_t max_body)
{
    resp->status = 0;
    buf_init(&resp->headers, 1);
    buf_init(&resp->body, max_body);
}
void http_client_resp_free(http_client_resp_t *resp)
{
    buf_free(&resp->headers);
    buf_free(&resp->body);
}
char *http_client_resp_header(const http_client_resp_t *resp, const char *name)
{
    (void)resp;
    (void)name;
    return NULL;
}
int http_client_request(const char *method, const char *url, const http_header_t *headers,
                        size_t n_headers, const void *body, size_t len, long timeout_ms,
                        http_client_resp_t *resp, err_t *err)
{
    return err_set(err, -ENOSYS, "fuzz stub");
}
int http_client_stream(const char *method, const char *url, const http_header_t *headers,
                       size_t n_headers, const void *body, size_t len,
                       int (*on_data)(const char *p, size_t n, void *data), void *data,
                       http_client_resp_t *resp, err_t *err)
{
    return err_set(err, -ENOSYS, "fuzz stub");
}
int http_client_stream_follow(const char *method, const char *url, const http_header_t *headers,
                              size_t n_headers, long timeout_ms,
                              int (*on_data)(const char *p, size_t n, void *data), void *data,
                              http_client_resp_t *resp, err_t *err)
{
    return err_set(err, -ENOSYS, "fuzz stub");
}
int http_client_upload(const char *method, const char *url, const http_header_t *headers,
                       size_t n_headers, const char *path, long timeout_ms,
                       http_client_resp_t *resp, err_t *err)
{
    return err_set(err, -ENOSYS, "fuzz stub");
}
int spec_template_fill(const char *text, size_t len, const spec_var_t *vars, size_t n_vars,
                       char **out, size_t *out_len, err_t *err)
{
    return err_set(err, -ENOSYS, "fuzz stub");
}
int artifact_pack(const char *dir, const char *out, char *id_out, err_t *err)
{
    return err_set(err, -ENOSYS, "fuzz stub");
}

typedef struct trace {
    buf_t log;
} trace_t;

static int on_event(const cli_sse_event_t *ev, void *data)
{
    trace_t *t = data;
    /* id, type and data with their lengths, so a NUL cannot hide a
     * difference. */
    buf_printf(&t->log, "%zu:%s|%zu:%s|%zu:", strlen(ev->id), ev->id, strlen(ev->type), ev->type,
               ev->data_len);
    buf_append(&t->log, ev->data, ev->data_len);
    buf_append(&t->log, "\n", 1);
    char *lines[2] = {cli_event_line(ev), cli_event_json_line(ev)};
    for (int i = 0; i < 2; i++) {
        for (const unsigned char *p = (const unsigned char *)lines[i]; *p; p++)
            if (i == 0 && (*p < 0x20 || *p == 0x7f))
                abort();
        if (strchr(lines[i], '\n'))
            abort();
        free(lines[i]);
    }
    return 0;
}

static int run(const uint8_t *data, size_t size, size_t step, buf_t *out)
{
    trace_t t = {BUF_INIT(0)};
    cli_sse_t p;
    cli_sse_init(&p, on_event, &t);
    int rc = 0;
    for (size_t i = 0; i < size && rc == 0; i += step) {
        size_t n = size - i < step ? size - i : step;
        rc = cli_sse_feed(&p, (const char *)data + i, n, NULL);
    }
    cli_sse_free(&p);
    *out = t.log;
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t step = (size_t)data[0] % 16 + 1;
    data++;
    size--;
    buf_t whole, cut;
    int a = run(data, size, size ? size : 1, &whole);
    int b = run(data, size, step, &cut);
    /* A bound (an over-long event type) fails both runs at the same line,
     * after the same events. */
    if (a != b)
        abort();
    if (whole.len != cut.len || (whole.len && memcmp(whole.data, cut.data, whole.len) != 0))
        abort();
    buf_free(&whole);
    buf_free(&cut);
    return 0;
}
