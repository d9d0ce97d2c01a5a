/* gateway/routes: the route table the gateway's proxy threads read.
 *
 * A snapshot is everything a proxy thread needs to route a request: the
 * routes (Host + path prefix, or a well-known internal port), the backend
 * pools they point at (one per locator name: an app, "app@version" or
 * "app#portIndex"), and the routing groups (ketama continuums over pool
 * names). It is built off to the side from the locator feed and published
 * whole: threads swap to a new snapshot between requests, so a change never
 * leaves a request half on an old table; nothing in a snapshot is changed
 * after gw_builder_finish except the backend health and load counters,
 * which are atomics shared by every thread.
 *
 * Backends outlive snapshots: a backend ("host:port") present in the
 * previous snapshot is carried into the next with its counters, so an
 * ejected backend stays ejected and least-connections keeps counting
 * across a route change; a request holds its backend with gw_backend_ref
 * and can finish on it after the snapshot it came from is gone.
 *
 * Matching, most specific first: an exact Host beats a wildcard
 * ("*.example.com" matches any name ending in ".example.com") which beats a
 * route without a host; among routes of the chosen host the longest path
 * prefix wins. A prefix matches at a segment boundary: "/api" matches
 * "/api", "/api/x" and "/api?q", never "/apix"; a prefix ending in "/"
 * matches anything starting with it. Host comparison ignores case and a
 * trailing ":port" or ".".
 *
 * Threading: builders are used on one thread; a finished snapshot is
 * immutable and may be read by any number of threads; gw_snapshot_ref/unref
 * and gw_backend_ref/unref are atomic. */
#ifndef DROVER_GATEWAY_ROUTES_H
#define DROVER_GATEWAY_ROUTES_H

#include "core/err.h"

#include <netinet/in.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Longest "host:port" text of a backend (IPv6 in brackets). */
#define GW_BACKEND_NAME_MAX 64

typedef enum gw_balance {
    GW_BALANCE_ROUNDROBIN = 0, /* default */
    GW_BALANCE_LEASTCONN,      /* fewest requests in flight */
    GW_BALANCE_HASH, /* consistent (rendezvous) hash of the sticky seed, else the client address */
} gw_balance_t;

typedef enum gw_sticky {
    GW_STICKY_NONE = 0,
    GW_STICKY_HEADER, /* seed = value of the header sticky_name */
    GW_STICKY_COOKIE, /* seed = value of the cookie sticky_name */
} gw_sticky_t;

typedef enum gw_route_kind {
    GW_ROUTE_HTTP = 0, /* HTTP reverse proxy to a service */
    GW_ROUTE_TCP,      /* L4: bytes both ways (internal ports only) */
    GW_ROUTE_WORKER,   /* HTTP over invocation to a worker app (issue 6; 501 until then) */
} gw_route_kind_t;

typedef struct gw_backend {
    /* Shared, mutable, atomic: */
    atomic_uint refs;
    atomic_uint active; /* requests (or TCP sessions) in flight to it */
    atomic_uint fails;  /* consecutive connect failures/resets; 0 after a success */
    atomic_uint_fast64_t eject_until_ms; /* gw_now_ms() before which it is not picked */
    /* Immutable: */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    uint64_t key;                   /* hash of name, for GW_BALANCE_HASH */
    char name[GW_BACKEND_NAME_MAX]; /* "10.0.0.5:31000", "[::1]:8080" */
} gw_backend_t;

typedef struct gw_pool {
    const char *name; /* locator name: "/production/web", "/production/web@3", "/x#1" */
    gw_backend_t **b; /* sorted by name; n may be 0 (the app has no healthy instance) */
    size_t n;
    atomic_uint rr; /* round-robin cursor (shared; wraps) */
    bool worker;    /* a worker app's invocation services (api "worker"; gateway/bridge.h) */
} gw_pool_t;

typedef struct gw_group gw_group_t;

typedef struct gw_route {
    gw_route_kind_t kind;
    const char *app;  /* app id the route came from ("/production/web"); "" for static routes */
    const char *host; /* lower-case; "" matches any host; "*.example.com" */
    const char *path; /* prefix, starts with "/"; "" for TCP routes */
    int internal;     /* well-known port it listens on in internal mode; 0: none */
    const gw_pool_t *pool;   /* target when group is NULL */
    const gw_group_t *group; /* routing group over pool names, or NULL */
    const char *group_name;
    gw_balance_t balance;
    gw_sticky_t sticky;
    const char *sticky_name; /* header or cookie name; NULL with GW_STICKY_NONE */
    const char *event;       /* worker routes: the event invoked ("http") */
    size_t max_body;         /* request body limit in bytes; 0: the proxy's default */
    /* Response headers added when the backend did not set them, as
     * "Name: value" lines without CRLF (HSTS and friends); may be 0. */
    const char *const *add_headers;
    size_t n_add_headers;
} gw_route_t;

typedef struct gw_snapshot gw_snapshot_t;

/* ---- reading (any thread) --------------------------------------------------- */

/* Milliseconds of CLOCK_MONOTONIC, the clock eject_until_ms counts in. */
uint64_t gw_now_ms(void);

void gw_snapshot_ref(gw_snapshot_t *s);
/* Frees the snapshot when the last reference goes (backends live on while
 * a request holds them). NULL is ignored. */
void gw_snapshot_unref(gw_snapshot_t *s);
/* Revision of the locator table it was built from (for metrics, logs). */
uint64_t gw_snapshot_revision(const gw_snapshot_t *s);

/* The HTTP or worker route for a request: host is the Host header (may be
 * NULL/empty), path the request target's path (query included is fine).
 * NULL when nothing matches. Does not allocate. */
const gw_route_t *gw_snapshot_match(const gw_snapshot_t *s, const char *host, size_t host_len,
                                    const char *path, size_t path_len);
/* Routes with an internal port, in port order (internal mode listens on
 * each); *n set to their count. */
const gw_route_t *const *gw_snapshot_internal(const gw_snapshot_t *s, size_t *n);
/* The route an internal port serves, or NULL. */
const gw_route_t *gw_snapshot_internal_route(const gw_snapshot_t *s, int port);
/* Every route, in match order (for status pages). */
const gw_route_t *const *gw_snapshot_routes(const gw_snapshot_t *s, size_t *n);
/* Every pool, in name order (for status pages and metrics). */
const gw_pool_t *const *gw_snapshot_pools(const gw_snapshot_t *s, size_t *n);

/* The pool a request on route r goes to: r->pool, or for a group the
 * member the seed hashes to (a random member with seed NULL). NULL when a
 * group member has no pool in the snapshot. */
const gw_pool_t *gw_route_pool(const gw_snapshot_t *s, const gw_route_t *r, const void *seed,
                               size_t seed_len);

/* The pool called `name` (exact), or NULL (for X-Drover-App, which names
 * a worker app rather than a route). */
const gw_pool_t *gw_snapshot_pool(const gw_snapshot_t *s, const char *name, size_t name_len);

/* Pick a backend of pool p by `balance`, skipping backends ejected at
 * now_ms and `exclude` (the backend a retry failed on; may be NULL). With
 * every backend ejected it picks the one whose ejection ends first (better
 * a likely failure than a certain 503). hash_seed feeds GW_BALANCE_HASH.
 * Returns a referenced backend (gw_backend_unref when done) or NULL when
 * the pool is empty or exclude was its only member. Does not change
 * `active`; the caller counts its request in and out. */
gw_backend_t *gw_pool_pick(const gw_pool_t *p, gw_balance_t balance, const void *hash_seed,
                           size_t seed_len, uint64_t now_ms, const gw_backend_t *exclude);

void gw_backend_ref(gw_backend_t *b);
void gw_backend_unref(gw_backend_t *b);

/* Passive health: a connect failure or a reset before any response byte
 * ejects b for min(base_ms << (fails - 1), max_ms); a success clears it. */
void gw_backend_failed(gw_backend_t *b, uint64_t now_ms, uint64_t base_ms, uint64_t max_ms);
void gw_backend_succeeded(gw_backend_t *b);

/* ---- building (one thread) -------------------------------------------------- */

typedef struct gw_builder gw_builder_t;

typedef struct gw_endpoint_in {
    const char *host; /* numeric IPv4 or IPv6 address; others are skipped */
    int port;
} gw_endpoint_in_t;

typedef struct gw_route_in {
    gw_route_kind_t kind;
    const char *app;
    const char *host; /* NULL or "" for any; lower-cased by the builder */
    const char *path; /* NULL: "/" for HTTP and worker routes */
    int internal;
    const char *target; /* pool name; required unless group is set */
    const char *group;  /* routing group name, or NULL */
    gw_balance_t balance;
    gw_sticky_t sticky;
    const char *sticky_name;
    const char *event;
    size_t max_body;
    const char *const *add_headers;
    size_t n_add_headers;
} gw_route_in_t;

typedef struct gw_group_member_in {
    const char *pool; /* pool name */
    uint32_t weight;
} gw_group_member_in_t;

/* prev (may be NULL) lends its backends' counters to the new snapshot. */
gw_builder_t *gw_builder_new(const gw_snapshot_t *prev);
/* Define a pool; a name defined twice keeps the second. Endpoints that
 * are not numeric addresses are skipped (logged). */
void gw_builder_pool(gw_builder_t *b, const char *name, const gw_endpoint_in_t *eps, size_t n);
/* Mark the pool `name` (defined before; otherwise nothing happens) as a
 * worker app's invocation services, the only pools X-Drover-App reaches. */
void gw_builder_pool_worker(gw_builder_t *b, const char *name);
/* Define a routing group over pool names (members need not exist yet; a
 * member with no pool gets no traffic: gw_route_pool returns NULL when
 * picked). -EINVAL when ketama refuses the members (err says why). */
int gw_builder_group(gw_builder_t *b, const char *name, const gw_group_member_in_t *m, size_t n,
                     err_t *err);
/* Add a route. A route whose target pool is not defined gets an empty
 * pool (503 until it has backends). -EINVAL for a route that matches
 * nothing or names no target; -EEXIST when an earlier route has the same
 * (host, path) or internal port (the first one wins; err names both apps). */
int gw_builder_route(gw_builder_t *b, const gw_route_in_t *r, err_t *err);
/* The finished snapshot (one reference, owned by the caller); frees b. */
gw_snapshot_t *gw_builder_finish(gw_builder_t *b, uint64_t revision);
/* Drop a builder without finishing it. */
void gw_builder_free(gw_builder_t *b);

#endif
