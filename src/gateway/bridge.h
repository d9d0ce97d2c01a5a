/* gateway/bridge: HTTP over invocation, the gateway's way into worker apps
 * (docs/protocol.md section 6, docs/gateway.md "Worker apps").
 *
 * A request for a worker app (a route whose app has api "worker", or any
 * request carrying X-Drover-App) is read whole, body included, and sent as
 * one invocation to the app's invocation service on one of its nodes:
 *
 *     [ch, 0, [event]]                                       enqueue
 *     [ch, 0, [bin [method, uri, version, [[n, v]...], body]]]  write
 *     [ch, 2, []]                                            close
 *
 * The first chunk coming back is [code, [[name, value]...]] (the response
 * head); every further chunk is raw body bytes, streamed to the client as
 * they arrive (chunked when the head has no Content-Length); the service's
 * close ends the response. An error before the head becomes an HTTP error
 * (gw_bridge_error_status); after the head it cuts the client connection.
 *
 * Connections. Each proxy thread keeps its own connections to the
 * invocation services it talks to, keyed by backend (one node's
 * [addr, port] of the app's entry), and multiplexes any number of
 * invocations on each (channel ids strictly increasing per connection). A
 * connection that fails is dropped (its invocations fail) and the next
 * request opens a new one; connect failures eject the backend as for HTTP
 * backends. Nodes are picked per request from the thread's current route
 * table, so a new table (endpoints, routing-group weights) applies to the
 * next request; connections to backends no longer in the table are closed
 * once idle.
 *
 * Bounds. The request chunk is at most the route's body limit and the
 * 4 MiB message limit (413 past either). The response waiting for a slow
 * client is bounded per invocation: past BR_OUT_HIGH its connection stops
 * being read until the client catches up (new invocations go to another
 * connection meanwhile). A client that goes away abandons its channel only:
 * the protocol has no cancel after our close, so what still comes for it is
 * dropped.
 *
 * Threading: everything except the pure helpers and gw_bridge_metrics runs
 * on the proxy thread that owns the client. */
#ifndef DROVER_GATEWAY_BRIDGE_H
#define DROVER_GATEWAY_BRIDGE_H

#include "core/buf.h"
#include "core/err.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- pure helpers (unit tests, fuzzing) --------------------------------- */

/* How the client side of a response is to be framed. */
typedef struct gw_bridge_head_opts {
    int http_minor;   /* the client's HTTP/1.x minor version */
    bool is_head;     /* the request was HEAD: no body whatever the head says */
    bool keep_alive;  /* the connection may stay open after this response */
    bool draining;    /* the gateway is stopping: close after this response */
    const char *hsts; /* "Strict-Transport-Security: max-age=N" to add when absent, or NULL */
    /* route response headers ("Name: value"), added when the worker did not
     * set them */
    const char *const *add_headers;
    size_t n_add_headers;
} gw_bridge_head_opts_t;

typedef struct gw_bridge_head {
    int status;      /* 200..599 */
    bool nobody;     /* HEAD, 204, 304: body chunks are dropped */
    bool has_length; /* the worker set Content-Length ... */
    uint64_t length; /* ... to this */
    bool chunked;    /* body goes out chunked (HTTP/1.1, no length) */
    bool close;      /* the connection closes after the body */
} gw_bridge_head_t;

/* Decode the response head chunk (msgpack [code, [[name, value]...]],
 * names and values str or bin; further elements are ignored) and append
 * the HTTP/1.1 response head for the client to `out`, ending with the
 * blank line. Hop-by-hop headers are dropped; a header name that is not a
 * token, a value with CR, LF or NUL, a code outside 200..599, Content-Length
 * values that disagree or are not decimal, more than 128 headers, or a head
 * larger than 32 KiB: -EPROTO (err says what), out unchanged. */
int gw_bridge_head_build(const void *chunk, size_t len, const gw_bridge_head_opts_t *o, buf_t *out,
                         gw_bridge_head_t *h, err_t *err);

/* The HTTP status for an invocation error [category, code] that came
 * before any response head; *retry is set when the invocation never ran
 * and may be sent to another node (queue full, app stopping). */
int gw_bridge_error_status(uint64_t category, uint64_t code, bool *retry);

/* Outcomes counted in /metrics (drover_gateway_bridge_requests_total). */
enum gw_bridge_outcome {
    GW_BRIDGE_OK = 0,       /* the worker's response went out whole */
    GW_BRIDGE_NOT_FOUND,    /* 404: no such worker app, unknown event */
    GW_BRIDGE_QUEUE_FULL,   /* 503 after a retry on another node */
    GW_BRIDGE_UNAVAILABLE,  /* 503: no node, cannot start a worker, stopping */
    GW_BRIDGE_TIMEOUT,      /* 504 */
    GW_BRIDGE_WORKER_ERROR, /* 500: the worker failed or died */
    GW_BRIDGE_BAD_GATEWAY,  /* 502: the service broke the protocol or the connection */
    GW_BRIDGE_TOO_LARGE,    /* 413 */
    GW_BRIDGE_ABORTED,      /* cut after the head, or the client went away */
    GW_BRIDGE_N_OUTCOMES
};
const char *gw_bridge_outcome_name(int outcome);

/* ---- proxy integration (gateway/proxy_http.c, proxy.c) ------------------ */

struct gw_client;
struct gw_thread;
struct gw_proxy;
struct gw_snapshot;
struct gw_route;

/* Take over c's request: its head is parsed (c->in, t->hs), target is the
 * request target, host the Host value (may be NULL). route is the matched
 * worker route, or NULL when the X-Drover-App header names the app. Either
 * starts the invocation (reading the body first) or answers at once. */
void gw_bridge_start(struct gw_client *c, const struct gw_snapshot *snap,
                     const struct gw_route *route, const char *target, size_t target_len,
                     const char *host, size_t host_len);
/* No route matched: if the path is /<app>/<event>/<rest> for a worker app
 * in snap (longest app id wins), the bridge takes the request (true);
 * false leaves it to the caller's 404. */
bool gw_bridge_try_path(struct gw_client *c, const struct gw_snapshot *snap, const char *target,
                        size_t target_len, const char *host, size_t host_len);
/* More request body bytes are in c->in (state CS_BODY with c->inv). */
void gw_bridge_client_bytes(struct gw_client *c);
/* The request ends (answered, or the client is closing): let go of the
 * invocation; a channel still open is abandoned. */
void gw_bridge_detach(struct gw_client *c);
/* A new route table: connections to backends it lacks are closed once
 * idle. */
void gw_bridge_sweep(struct gw_thread *t, const struct gw_snapshot *s);
/* The thread's check phase: send what this loop turn queued on each
 * connection, one write per connection. */
void gw_bridge_flush(struct gw_thread *t);
/* The thread stops: close every connection (their clients are gone). */
void gw_bridge_close_all(struct gw_thread *t);
/* After the thread's loop ended: free what is left. */
void gw_bridge_thread_free(struct gw_thread *t);
/* Prometheus text for the bridge's counters (any thread). */
void gw_bridge_metrics(struct gw_proxy *p, buf_t *out);

#endif
