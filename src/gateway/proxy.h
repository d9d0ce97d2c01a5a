/* gateway/proxy: the gateway's data plane, an HTTP/1.x reverse proxy and
 * L4 TCP proxy over route snapshots (gateway/routes.h).
 *
 * Threads: gw_proxy_start runs `threads` event loops, each with its own
 * SO_REUSEPORT listener (the kernel spreads new connections over them), its
 * own client connections, its own keep-alive pools of backend connections
 * and its own metrics counters. Nothing is shared between loops on the
 * request path except the snapshot (immutable) and the backend counters
 * (atomics in routes.h).
 *
 * Snapshots: gw_proxy_set_snapshot publishes a new route table; each loop
 * switches to it within one loop turn. A request keeps the snapshot it
 * started with (and its backend) until it ends, so a swap never cuts a
 * request short; the old snapshot is released when its last request ends.
 *
 * Expect: 100-continue is relayed: the header goes to the backend and the
 * backend's "100 Continue" goes back to the client (HTTP/1.1 clients only),
 * so a backend can still refuse a body before it is sent.
 *
 * Retries: a request is sent again only when it cannot have reached the
 * first backend (connect failure or connect timeout: that backend is
 * ejected and one other backend is tried), or when it has no body, an
 * idempotent method, and a reused keep-alive connection failed before any
 * response byte (the backend closed it while idle: a fresh connection to
 * the same backend is tried once).
 *
 * Tunnels (WebSocket after a 101, L4 routes) pass half-closes on: when one
 * side ends its direction (FIN, or a TLS client's close_notify), what it
 * sent is delivered, the end is passed to the other side, and the other
 * direction keeps flowing until it ends too (idle limit 60 s from then on);
 * a reset or write error closes both.
 *
 * A response after which the client connection closes leaves with its FIN
 * in the same segment (MSG_MORE on the last write, then shutdown), which
 * saves a packet and an ACK per connection-per-request client.
 *
 * Client aborts are noticed when the next read or write on the client
 * fails: a connection whose request has been read whole is not watched
 * until its response is out (as HAProxy without abortonclose), which keeps
 * a connection-per-request client free of epoll registrations.
 *
 * The access log is written with stdio from the threads' loops once per
 * loop turn: give it a regular file, not a pipe that can block.
 *
 * Listeners use SO_REUSEPORT: a second process binding the same address as
 * the same user shares the port rather than failing.
 *
 * Threading of the API: every function is called from threads that are not
 * proxy threads (the owner's loop, main). */
#ifndef DROVER_GATEWAY_PROXY_H
#define DROVER_GATEWAY_PROXY_H

#include "core/buf.h"
#include "core/err.h"
#include "gateway/routes.h"
#include "gateway/tls.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct gw_proxy_opts {
    const char *http_addr; /* "127.0.0.1:8080"; NULL: no HTTP listener */
    /* HTTPS: a listener per thread like HTTP, connections through TLS
     * (gateway/tls.h), everything else identical (X-Forwarded-Proto says
     * https). NULL: none. Needs tls. */
    const char *https_addr;
    gw_tls_ctx_t *tls;     /* not owned; must outlive the proxy; reload it off the proxy threads */
    uint64_t hsts_seconds; /* > 0: "Strict-Transport-Security: max-age=N" on HTTPS responses
                              that lack one */
    int threads;           /* event-loop threads; 0: number of CPUs */
    bool internal;         /* also listen on each snapshot's internal ports */
    const char *internal_host;    /* address internal listeners bind to; NULL: "0.0.0.0" */
    size_t max_header_bytes;      /* request head limit; 0: 16 KiB (-> 431) */
    size_t max_body_bytes;        /* body limit when route->max_body is 0; 0: 100 MiB (-> 413) */
    uint64_t header_timeout_ms;   /* whole request head within it; 0: 10 s (-> 408) */
    uint64_t idle_timeout_ms;     /* client keep-alive idle; 0: 60 s */
    uint64_t connect_timeout_ms;  /* backend connect; 0: 3 s */
    uint64_t backend_timeout_ms;  /* response head / between body reads; 0: 60 s (-> 504) */
    uint64_t eject_base_ms;       /* passive health back-off base; 0: 1 s */
    uint64_t eject_max_ms;        /* and ceiling; 0: 30 s */
    size_t max_connections;       /* client connections per process; 0: 10000 per thread (-> 503) */
    size_t pool_idle_per_backend; /* idle backend connections kept per thread per backend; 0: 64 */
    FILE *access_log;             /* NULL: off; JSON lines (not closed by the proxy) */
    /* PROXY protocol v1 header on each backend connection; such a
     * connection speaks for one client, so it is never pooled */
    bool proxy_protocol;
    /* Called (on a proxy thread) once every proxy thread routes with a
     * snapshot of at least `revision`: new requests no longer see older
     * tables (drain confirmation). NULL: none. Must not block. */
    void (*on_applied)(uint64_t revision, void *data);
    void *on_applied_data;
} gw_proxy_opts_t;

typedef struct gw_proxy gw_proxy_t;

/* Bind the listeners (an error such as EADDRINUSE comes back with err
 * naming the address), then start the threads. The proxy serves 503 until
 * the first gw_proxy_set_snapshot. *out is owned by the caller
 * (gw_proxy_free). opts->access_log must outlive the proxy. */
int gw_proxy_start(const gw_proxy_opts_t *opts, gw_proxy_t **out, err_t *err);
/* Publish a route table; takes its own reference (the caller keeps its
 * own). NULL is ignored. */
void gw_proxy_set_snapshot(gw_proxy_t *p, gw_snapshot_t *snap);
/* Lowest snapshot revision that every proxy thread routes with (0 until
 * the first snapshot reached all of them). Any thread. */
uint64_t gw_proxy_applied_revision(const gw_proxy_t *p);
/* Port of the HTTP listener (useful after binding port 0); -1 without one. */
int gw_proxy_http_port(const gw_proxy_t *p);
/* Port of the HTTPS listener; -1 without one. */
int gw_proxy_https_port(const gw_proxy_t *p);
/* Append Prometheus text exposition of the proxy's metrics to out. */
void gw_proxy_metrics(gw_proxy_t *p, buf_t *out);
/* Stop accepting, let in-flight requests finish (keep-alive connections
 * get Connection: close on their current response, idle ones are closed),
 * and block until every connection is gone or timeout_ms passed; then
 * close whatever is left and stop the threads. */
void gw_proxy_drain(gw_proxy_t *p, uint64_t timeout_ms);
/* Stop the threads if still running and free everything. NULL is ignored. */
void gw_proxy_free(gw_proxy_t *p);

/* ---- detached mode (fuzzing, tests) -------------------------------------- *
 * A detached proxy has no threads, loops or sockets: a client connection is
 * fed bytes by the caller and its output collects in memory, through the
 * same parsing, validation, routing and rewriting code that serves sockets.
 * Backend connections "connect" at once; what the proxy writes to them
 * collects in gw_detached_backend_output and the caller supplies their
 * answer with gw_detached_backend_feed. */
typedef struct gw_dconn gw_dconn_t;

gw_proxy_t *gw_proxy_new_detached(const gw_proxy_opts_t *opts, gw_snapshot_t *snap);
/* Every detached connection must have been freed first. */
void gw_proxy_free_detached(gw_proxy_t *p);
gw_dconn_t *gw_dconn_new(gw_proxy_t *p);
/* Client bytes; 0 while the connection is open, -EPIPE once the proxy
 * closed it. */
int gw_dconn_feed(gw_dconn_t *d, const void *bytes, size_t n);
/* Bytes the current backend connection receives from the proxy
 * (accumulated over the connection's life, at most 1 MiB kept). */
const buf_t *gw_dconn_backend_output(const gw_dconn_t *d);
/* The backend answers (n == 0: the backend closes). -ENOTCONN without a
 * backend connection in use. */
int gw_dconn_backend_feed(gw_dconn_t *d, const void *bytes, size_t n);
/* Everything written to the client (at most 1 MiB kept). */
const buf_t *gw_dconn_output(const gw_dconn_t *d);
/* The client goes away; frees d. */
void gw_dconn_free(gw_dconn_t *d);

#endif
