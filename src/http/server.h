/* http/server: HTTP/1.1 server on libuv + http-parser.
 *
 * One handler gets every complete request (headers and whole body, bounded
 * by the limits). Requests on one connection are handled one at a time, in
 * order: while a response is pending, further pipelined bytes stay buffered
 * (bounded) and reading pauses, so responses can never be reordered.
 *
 * Handler contract: the handler (now or later, from any loop callback) ends
 * every request exactly once, with http_respond() or with
 * http_stream_begin(), http_stream_write() (any number of times), then
 * http_stream_end(). The request
 * stays valid until then, even when the client has gone: responding to a
 * request whose client disconnected just frees it. A long-lived handler
 * (blocking query, event stream) registers http_req_on_abort() to learn
 * that the client went away or the server is shutting down, and then ends
 * the request.
 *
 * The server answers by itself, without calling the handler: 400 malformed
 * request (names the parser error), 408 request not complete within the
 * header timeout, 413 body over the limit, 431 header block over the limit,
 * 503 over max connections, 505 unsupported HTTP version; each with a short
 * text body saying why, and the connection closed after it. */
#ifndef DROVER_HTTP_SERVER_H
#define DROVER_HTTP_SERVER_H

#include "core/err.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct http_server http_server_t;

typedef struct http_header {
    const char *name;
    const char *value;
} http_header_t;

typedef struct http_param {
    const char *name;  /* percent-decoded */
    const char *value; /* percent-decoded; "" when the parameter has no '=' */
} http_param_t;

typedef struct http_req {
    /* Read-only for handlers; valid until the request is ended. */
    const char *method;         /* "GET", "PUT", ... */
    const char *target;         /* raw request target: "/v1/kv/a%20b?recurse" */
    const char *path;           /* percent-decoded path: "/v1/kv/a b" */
    const char *query;          /* raw query without '?', "" when none */
    const http_param_t *params; /* parsed query, in order */
    size_t n_params;
    int http_major, http_minor;
    const http_header_t *headers; /* names as received */
    size_t n_headers;
    const char *body; /* de-chunked, NUL-terminated (not counted in body_len) */
    size_t body_len;
    const char *remote; /* "127.0.0.1:54321" */
    void *user;         /* free for the handler */
} http_req_t;

typedef void (*http_handler_fn)(http_req_t *req, void *data);

typedef struct http_limits {
    size_t max_header_bytes;    /* request line + headers; 431 past it (default 16 KiB) */
    size_t max_body_bytes;      /* 413 past it (default 2 MiB) */
    uint64_t header_timeout_ms; /* whole request must arrive in this time; 408 (default 10 s) */
    uint64_t idle_timeout_ms;   /* keep-alive connection with no request is closed (default 60 s) */
    size_t max_connections;     /* beyond: 503 and close (default 4096) */
    size_t max_pending_write;   /* bytes queued on a slow streaming client before it is dropped
                                   (default 4 MiB) */
    size_t max_pipelined_bytes; /* bytes buffered behind a pending request (default 64 KiB) */
    /* Added: per-request body limit. When set, called once the request line
     * and headers are parsed (method and percent-decoded path as in
     * http_req_t, valid only during the call; on the loop thread); returns
     * the largest body that request may carry, 0 meaning max_body_bytes.
     * Lets one route (an upload) take more than every other. */
    size_t (*body_limit)(const char *method, const char *path, void *data);
    void *body_limit_data;
} http_limits_t;

/* Fill `lim` with the defaults above. */
void http_limits_default(http_limits_t *lim);

/* Listen on `addr` ("127.0.0.1:7400", "[::1]:0", "0.0.0.0:7400"). Port 0
 * picks a free port; http_server_port() tells which.
 * Added: `lim` may be NULL (all defaults) and a zero field takes its
 * default. The host must be a numeric IP address. On failure *out is NULL
 * and there is nothing to free. The server lives on `loop`'s thread: call
 * every http_* function from there. */
int http_server_listen(uv_loop_t *loop, const char *addr, const http_limits_t *lim,
                       http_handler_fn handler, void *data, http_server_t **out, err_t *err);
int http_server_port(const http_server_t *s);

/* Stop accepting, close idle connections, call the abort callbacks of
 * streaming/pending requests, let in-flight responses finish for up to
 * grace_ms, then close everything and free the server; `done` runs last.
 * Added: `done` (may be NULL) runs once every connection is freed, which
 * includes waiting for handlers to end the requests they still hold. */
void http_server_shutdown(http_server_t *s, uint64_t grace_ms, void (*done)(void *data),
                          void *data);

/* Case-insensitive header lookup; NULL when absent. */
const char *http_req_header(const http_req_t *r, const char *name);
/* Query parameter by name; NULL when absent, "" when present without value. */
const char *http_req_param(const http_req_t *r, const char *name);

/* Send a whole response. Content-Length, Date and Connection are added by
 * the server; `headers` adds others (Content-Type, ...). Ends the request. */
void http_respond(http_req_t *r, int status, const http_header_t *headers, size_t n_headers,
                  const void *body, size_t len);

/* Streaming response with chunked transfer encoding (HTTP/1.1) or
 * close-delimited (HTTP/1.0). Returns 0, or -EPIPE when the client is gone,
 * or -ENOBUFS when the client is too slow (the connection is then dropped);
 * either way the handler must still call http_stream_end(). */
int http_stream_begin(http_req_t *r, int status, const http_header_t *headers, size_t n_headers);
int http_stream_write(http_req_t *r, const void *data, size_t len);
/* Added: bytes of this stream accepted by http_stream_write() but not yet
 * taken by the kernel. A handler streaming a large body writes its next
 * piece only while this stays well under max_pending_write, so a slow
 * client is paced instead of dropped with -ENOBUFS. */
size_t http_stream_pending(const http_req_t *r);
void http_stream_end(http_req_t *r);

/* `cb` runs at most once, when the client disconnects or the server shuts
 * down while the request is not yet ended. The request stays valid; the
 * handler must still end it (from cb or later).
 * Added: cb runs from a loop callback of its own, never inside an http_*
 * call; registering it after the client left (or during a shutdown) still
 * gets it called. A connection dropped for -ENOBUFS does not call it: the
 * handler already learned that from http_stream_write(). */
void http_req_on_abort(http_req_t *r, void (*cb)(http_req_t *r, void *data), void *data);
/* True once the client is gone (responses will be discarded). */
bool http_req_aborted(const http_req_t *r);

/* Standard reason phrase ("Not Found"); "Unknown" for others. */
const char *http_status_text(int status);

#endif
