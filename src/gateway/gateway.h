/* gateway/gateway: the router's control side. It follows a metalocator
 * (connect for names and endpoints, routing for groups) into its own
 * table, turns that table into route snapshots (gateway/routes.h) and
 * hands each to the proxy (gateway/proxy.h), so a locator change reaches
 * routing within one loop turn, with no reload.
 *
 * Routes come from the table: an entry's attributes carry its app's
 * routes (docs/protocol.md, "Entry attributes"); static routes given on
 * the command line are added to every snapshot (for backends that drover
 * does not run, and for benchmarks).
 *
 * Drain confirmation: the gateway acks a revision to its metalocator only
 * once every proxy thread routes with a snapshot at least that new, so an
 * agent stopping an instance knows this gateway sends it nothing more.
 *
 * HTTPS: with proxy.https_addr the gateway loads `certs` into a TLS
 * context (gateway/tls.h) that it owns, and re-reads the files that
 * changed every tls_reload_ms and on SIGHUP, in libuv's thread pool (file
 * I/O never runs on the proxy threads or blocks this loop); new handshakes
 * get the new certificate, established connections keep theirs.
 *
 * Threading: gateway_* run on the loop given to gateway_start; the proxy
 * runs its own threads. */
#ifndef DROVER_GATEWAY_GATEWAY_H
#define DROVER_GATEWAY_GATEWAY_H

#include "core/err.h"
#include "gateway/proxy.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct gateway_opts {
    const char *metalocator; /* "host:port" to follow, or NULL (static routes only) */
    /* "[HOST][/PATH]=ADDR[,ADDR...]" each: ADDR is "ip:port" or "[ipv6]:port" */
    const char *const *static_routes;
    size_t n_static;
    const char *admin_addr;      /* /metrics, /status, /healthz; NULL: none */
    const char *uuid;            /* subscriber id at the metalocator; NULL: "gateway-<hostname>" */
    uint64_t confirm_timeout_ms; /* bound on one drain confirmation; 0: 10 s */
    /* certificates for proxy.https_addr (required with it; copied) */
    const gw_tls_cert_in_t *certs;
    size_t n_certs;
    uint64_t tls_reload_ms; /* periodic certificate check; 0: 60 s */
    gw_proxy_opts_t proxy;  /* proxy.tls is set by the gateway */
} gateway_opts_t;

typedef struct gateway gateway_t;

/* Parse one static route; 0 or -EINVAL naming what is wrong. Fills
 * host/path (host "" for any; path "/" by default) and the addresses into
 * eps (at most max_eps; host strings point into `buf`, which must hold
 * strlen(spec) + 3 bytes). */
int gateway_static_route_parse(const char *spec, char *buf, const char **host, const char **path,
                               gw_endpoint_in_t *eps, size_t max_eps, size_t *n_eps, err_t *err);

/* Start: parse static routes, bind the proxy and the admin listener, start
 * following the metalocator. On failure nothing is left running. */
int gateway_start(uv_loop_t *loop, const gateway_opts_t *opts, gateway_t **out, err_t *err);
int gateway_http_port(const gateway_t *g);
int gateway_https_port(const gateway_t *g);
/* Re-read changed certificate files now (in the thread pool; what it does
 * is logged). The gateway also does this on SIGHUP and every
 * tls_reload_ms. No-op without HTTPS. */
void gateway_tls_reload(gateway_t *g);
int gateway_admin_port(const gateway_t *g);
/* Revision of the snapshot the proxy was last given. */
uint64_t gateway_revision(const gateway_t *g);
/* Stop following, drain the proxy (in-flight requests finish, bounded by
 * drain_ms; this blocks the loop while it drains), close the admin
 * listener; done(data) runs once everything is freed. Call once. */
void gateway_stop(gateway_t *g, uint64_t drain_ms, void (*done)(void *data), void *data);

#endif
