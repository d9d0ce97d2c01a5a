/* http/client: blocking HTTP client on libcurl for the CLI and tools. (The
 * agent's non-blocking client on the loop comes with the agent issue.) */
#ifndef DROVER_HTTP_CLIENT_H
#define DROVER_HTTP_CLIENT_H

#include "core/buf.h"
#include "core/err.h"
#include "http/server.h"

#include <stdatomic.h>
#include <stddef.h>

typedef struct http_client_resp {
    int status;
    buf_t headers; /* raw response header lines, "Name: value\r\n" each */
    buf_t body;
} http_client_resp_t;

void http_client_resp_init(http_client_resp_t *resp, size_t max_body);
void http_client_resp_free(http_client_resp_t *resp);
/* Case-insensitive header lookup in resp->headers; malloc'd value or NULL. */
char *http_client_resp_header(const http_client_resp_t *resp, const char *name);

/* Perform one request. timeout_ms 0 = none. Returns 0 when an HTTP response
 * arrived (whatever its status), or a negative errno with err naming the
 * transport problem ("connection refused to 127.0.0.1:7400"). */
int http_client_request(const char *method, const char *url, const http_header_t *headers,
                        size_t n_headers, const void *body, size_t len, long timeout_ms,
                        http_client_resp_t *resp, err_t *err);

/* http_client_request that gives up with -ECANCELED within about a second
 * once *cancel becomes non-zero (set from any thread). For calls made from
 * worker threads whose owner may shut down mid-call. */
int http_client_request_cancellable(const char *method, const char *url,
                                    const http_header_t *headers, size_t n_headers,
                                    const void *body, size_t len, long timeout_ms,
                                    const atomic_int *cancel, http_client_resp_t *resp,
                                    err_t *err);

/* Like http_client_request, but the body is handed to on_data as it arrives
 * (for event streams and blocking queries); on_data returns non-zero to
 * stop. resp->body stays empty. */
int http_client_stream(const char *method, const char *url, const http_header_t *headers,
                       size_t n_headers, const void *body, size_t len,
                       int (*on_data)(const char *p, size_t n, void *data), void *data,
                       http_client_resp_t *resp, err_t *err);

#endif
