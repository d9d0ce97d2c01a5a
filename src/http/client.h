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
                                    const atomic_int *cancel, http_client_resp_t *resp, err_t *err);

/* Like http_client_request, but the body is handed to on_data as it arrives
 * (for event streams and blocking queries); on_data returns non-zero to
 * stop. resp->body stays empty. Added: resp->status and resp->headers
 * already hold the response's status and headers when on_data first runs,
 * so it can tell an error answer from the stream it asked for. */
int http_client_stream(const char *method, const char *url, const http_header_t *headers,
                       size_t n_headers, const void *body, size_t len,
                       int (*on_data)(const char *p, size_t n, void *data), void *data,
                       http_client_resp_t *resp, err_t *err);

/* Most redirects http_client_stream_follow takes before giving up. */
#define HTTP_CLIENT_MAX_REDIRECTS 5

/* http_client_stream without a request body that follows redirects (301,
 * 302, 303, 307, 308; http and https only; at most
 * HTTP_CLIENT_MAX_REDIRECTS), for endpoints that send the reader elsewhere
 * (GET /v1/instances/<id>/logs answers 307 to the node's agent). The
 * bodies of the redirects are skipped: on_data sees the final response
 * only, and resp->status/headers are the final response's. A transport
 * error names the URL that failed (the redirect's target). timeout_ms 0 =
 * none (a followed log stream never ends by itself). */
int http_client_stream_follow(const char *method, const char *url, const http_header_t *headers,
                              size_t n_headers, long timeout_ms,
                              int (*on_data)(const char *p, size_t n, void *data), void *data,
                              http_client_resp_t *resp, err_t *err);

/* http_client_request whose body is the file at `path`, read while it is
 * sent (with a Content-Length) so a large upload never sits in memory.
 * Pass the Content-Type in headers (libcurl would otherwise send its form
 * default).
 * -errno with err naming the file when it cannot be opened or read; a
 * file that is not regular is -EINVAL. The answer goes in resp as for
 * http_client_request (bounded by its max_body). */
int http_client_upload(const char *method, const char *url, const http_header_t *headers,
                       size_t n_headers, const char *path, long timeout_ms,
                       http_client_resp_t *resp, err_t *err);

#endif
