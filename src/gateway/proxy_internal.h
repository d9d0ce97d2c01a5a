/* gateway/proxy internals shared by proxy.c (threads, listeners, metrics),
 * proxy_http.c (client side), upstream.c (backend connections, pools) and
 * proxy_tcp.c (L4). Everything here belongs to one proxy thread unless it
 * says otherwise.
 *
 * Buffers and lifetimes. Each connection (client or upstream) owns one
 * fixed input buffer `in` that reads land in and that is parsed in place.
 * Bytes forwarded to the other side are written straight out of it (no
 * copy), so the buffer is "locked" (in_locks) while such a write is queued:
 * it is neither compacted nor read into, and the connection is not freed
 * until the last write pointing into it completes. That is also the
 * backpressure: one side is not read while the other side's write of its
 * bytes is pending.
 *
 * Every write goes through a write slot (gw_wslot_t): a uv_write_t with
 * room for iovecs and the chunk-size lines of re-framed chunked bodies.
 * Each connection embeds one slot; a second concurrent write (rare: an
 * error answer while a relay is queued) gets a heap slot. */
#ifndef DROVER_GATEWAY_PROXY_INTERNAL_H
#define DROVER_GATEWAY_PROXY_INTERNAL_H

#include "core/buf.h"
#include "gateway/bridge.h"
#include "gateway/proxy.h"
#include "gateway/routes.h"
#include "gateway/tls.h"

#include <http_parser.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#define GW_IOV_MAX       64
#define GW_HEX_MAX       (GW_IOV_MAX / 2)
#define GW_UP_IN_BYTES   (32u * 1024) /* backend read buffer (also response head limit) */
#define GW_MAX_HEADERS   128
#define GW_REQID_MAX     64
#define GW_ADDR_MAX      64
#define GW_TUNNEL_MS     (3600u * 1000) /* idle limit of a tunnel (WebSocket, L4) */
#define GW_TUNNEL_FIN_MS (60u * 1000)   /* idle limit once one direction has ended */
#define GW_LAT_BUCKETS   14
#define GW_SPARE_CLIENTS 256
#define GW_TLS_SCRATCH   (64u * 1024) /* per-thread ciphertext read buffer */

typedef struct gw_thread gw_thread_t;
typedef struct gw_client gw_client_t;
typedef struct gw_upstream gw_upstream_t;

typedef enum { GW_SLOT_TO_CLIENT, GW_SLOT_TO_UP } gw_slot_dir_t;

/* What the client's one timer is waiting for. */
enum { TMO_NONE, TMO_HEADER, TMO_IDLE, TMO_CONNECT, TMO_BACKEND, TMO_TUNNEL, TMO_LINGER };

typedef struct gw_wslot {
    uv_write_t req;
    gw_slot_dir_t dir;
    bool heap;
    bool busy;
    bool close_after;       /* close the client once written */
    unsigned n;             /* iovecs in use */
    unsigned nhex;          /* chunk lines in use */
    void *owner;            /* gw_client_t (to client) or gw_upstream_t (to backend) */
    gw_client_t *src_c;     /* client whose `in` the data points into (locked), or NULL */
    gw_upstream_t *src_u;   /* upstream whose `in` the data points into (locked), or NULL */
    struct gw_wslot *dnext; /* deferred completion queue */
    struct gw_wslot *tnext; /* TLS client: slots waiting to be encrypted and sent */
    int dstatus;            /* status of a deferred completion */
    /* Called by gw_client_write_done after the slot is released, for slots
     * the worker bridge embeds in its own objects (gateway/bridge.c), which
     * learn that way that their bytes are out; NULL otherwise. */
    void (*done)(struct gw_wslot *s, int status);
    uv_buf_t iov[GW_IOV_MAX];
    char hex[GW_HEX_MAX][20];
} gw_wslot_t;

/* A header of a parsed head: offsets into the connection's `in`. */
typedef struct gw_hspan {
    uint32_t name, name_len, val, val_len;
} gw_hspan_t;

/* One snapshot as seen by a thread, with the requests still using it. */
typedef struct gw_snapref {
    gw_snapshot_t *s;
    size_t users;
    struct gw_snapref *next;
} gw_snapref_t;

/* Idle keep-alive connections to one backend (per thread). */
typedef struct gw_poolent {
    gw_backend_t *b;     /* referenced */
    gw_upstream_t *idle; /* LIFO list through up->pnext */
    size_t n_idle;
    bool mark;
    struct gw_poolent *next;
} gw_poolent_t;

#define GW_POOL_BUCKETS 256

typedef enum {
    CS_HEAD = 0,  /* reading a request head */
    CS_BODY,      /* request forwarded, its body streaming (or done), awaiting response */
    CS_RESP_DONE, /* our own answer is queued; closing or going on after it */
    CS_TUNNEL,    /* upgrade or L4: bytes both ways */
    CS_CLOSED,
} gw_cstate_t;

/* Per-app request counters (thread-local map; read under the thread's
 * metrics lock by gw_proxy_metrics). */
typedef struct gw_appstat {
    char *app;
    uint64_t hash;
    atomic_uint_fast64_t codes[6]; /* index: status / 100 (0: other) */
    struct gw_appstat *next;
} gw_appstat_t;

typedef struct gw_tmetrics {
    atomic_uint_fast64_t codes[6];
    atomic_uint_fast64_t lat[GW_LAT_BUCKETS + 1];
    atomic_uint_fast64_t lat_sum_us;
    atomic_uint_fast64_t bytes_in, bytes_out;
    atomic_uint_fast64_t conns_total, conns_active;
    atomic_uint_fast64_t up_conns, up_reused, retries, tcp_sessions;
    atomic_uint_fast64_t tls_conns, tls_errors;
    atomic_uint_fast64_t bridged[GW_BRIDGE_N_OUTCOMES]; /* worker bridge outcomes (bridge.c) */
} gw_tmetrics_t;

/* A listening socket watched with uv_poll (we accept ourselves). */
typedef struct gw_listener {
    uv_poll_t h;
    int fd;
    int port;
    bool internal;
    bool tls; /* the HTTPS listener */
    bool mark;
    bool paused;
    gw_thread_t *t;
    struct gw_listener *next;
} gw_listener_t;

struct gw_thread {
    gw_proxy_t *p;
    int idx;
    bool detached;
    uv_loop_t loop;
    uv_thread_t tid;
    uv_async_t async;
    uv_check_t check;
    uv_idle_t idle;          /* keeps poll from blocking while completions are deferred */
    uv_timer_t accept_timer; /* resumes accepting after EMFILE */
    int http_fd;             /* bound by gw_proxy_start, until the thread's listener owns it */
    gw_listener_t *http;
    int https_fd; /* as http_fd, for the HTTPS listener */
    gw_listener_t *https;
    gw_listener_t *ilist;
    bool draining;
    bool stopping;
    uint64_t snap_gen;                /* generation of the proxy's snapshot this thread has */
    atomic_uint_fast64_t applied_rev; /* revision of t->cur (read by other threads) */
    gw_snapref_t *cur;                /* current snapshot (may have s == NULL) */
    gw_snapref_t *old;                /* older ones still in use by requests */
    gw_client_t *clients;
    size_t n_clients;
    gw_client_t *spare; /* freed connection structs kept for reuse */
    size_t n_spare;
    size_t max_clients;
    gw_poolent_t *pool[GW_POOL_BUCKETS];
    gw_tmetrics_t m;
    uv_mutex_t app_lock; /* guards the apps list structure */
    gw_appstat_t *apps;
    buf_t log;
    uint64_t rng[2];
    gw_wslot_t *dq_head, *dq_tail; /* detached: completed writes to deliver */
    gw_upstream_t *dead_ups;       /* detached: closed upstreams whose "close callback" is due */
    gw_hspan_t *hs;                /* scratch header spans for request heads */
    size_t hs_cap;
    char *tls_scratch;    /* ciphertext lands here, then goes to gw_tls_feed (HTTPS only) */
    gw_client_t *tls_due; /* TLS clients whose decrypted input is to be pulled again */
    char date[40];
    struct gw_bridge *bridge; /* worker bridge connections (bridge.c); created on first use */
};

struct gw_upstream {
    uv_tcp_t tcp;
    uv_connect_t creq;
    gw_thread_t *t;
    gw_backend_t *b; /* referenced */
    gw_client_t *c;  /* the client it serves, or NULL (idle in pool / orphan) */
    http_parser parser;
    char *in;
    size_t in_len, in_off;
    unsigned in_locks;
    unsigned wpending; /* writes to the backend not completed */
    bool connecting, connected, reused, closed, reading, idle;
    bool head_done; /* response head seen */
    bool got_bytes; /* any response byte for the current request */
    bool resp_done;
    bool keep;            /* reusable after the current response */
    bool interim;         /* current message is a 1xx */
    bool release_pending; /* response done; return to pool once unlocked */
    bool eof;
    bool wr_shut; /* tunnel: our FIN sent (the client ended its direction) */
    bool handle_closed;
    bool reset;      /* the read side ended with an error, not EOF */
    int connect_err; /* uv_tcp_connect failed at once (reported via the client timer) */
    uint32_t status_off, status_len; /* reason phrase in `in` */
    char pp[120];                    /* PROXY protocol line still to send */
    size_t pp_len;
    gw_hspan_t *hs;
    size_t nhs, hs_cap;
    uint32_t cur_field; /* header being parsed: index in hs */
    int cb_state;
    gw_upstream_t *pnext;
    uv_shutdown_t shut;
    gw_wslot_t slot;
};

struct gw_client {
    uv_tcp_t tcp; /* attached lazily (has_tcp): see client_attach */
    int fd;       /* the socket; -1 when detached or closed */
    bool has_tcp;
    uv_timer_t timer;
    gw_thread_t *t;
    gw_client_t *prev, *next;
    int open_handles;
    gw_cstate_t state;
    bool closing, reading, peer_eof, lingering, linger_pending, logged;
    /* our side is shut down: FIN behind the last response, or a tunnel's
     * backend ended its direction */
    bool fin_sent;
    unsigned wpending; /* writes to the client not completed */
    uv_shutdown_t shut;
    int peer_port;
    bool internal; /* accepted on an internal port */
    int port;      /* local port it was accepted on (internal routing) */
    /* input */
    char *in;
    size_t in_len, in_off, in_cap;
    unsigned in_locks;
    size_t scan; /* head terminator search resumes here */
    /* timer */
    uint64_t deadline; /* loop ms; 0: none */
    uint64_t timer_at; /* when the armed timer fires; 0: not armed */
    int tmo_kind;
    /* request */
    http_parser parser;
    uint64_t t0_ns;
    int http_minor;
    bool keep_alive; /* client wants the connection kept */
    bool req_chunked, req_body, req_done, head_sent, resp_started, upgrade, is_head;
    bool idempotent, retried, reuse_retried, resp_close, resp_chunked, resp_eof_body;
    bool resp_nobody;
    uint64_t body_limit, body_seen;
    int status;
    uint64_t resp_bytes;
    unsigned method;
    gw_snapref_t *sref;
    const gw_route_t *route;
    const gw_pool_t *pool;
    gw_backend_t *b; /* referenced, active counted */
    gw_upstream_t *up;
    char seed[128]; /* sticky seed (copied: a retry picks again) */
    size_t seed_len;
    uint32_t url_off, url_len;
    size_t nhs; /* request headers in t->hs */
    int cb_state;
    bool too_many_headers, body_too_big, xff_done, bad_response, tunnel_next, has_conn_hdr;
    gw_wslot_t *pump; /* slot parser callbacks add to */
    buf_t hdr;        /* rewritten request head (kept until the response starts) */
    buf_t rhead;      /* response head being written */
    buf_t err;        /* our own answers */
    char reqid[GW_REQID_MAX + 1];
    char addr[GW_ADDR_MAX]; /* client IP text */
    char log_host[128];
    char log_path[256];
    char log_method[16];
    /* detached */
    gw_dconn_t *d;
    /* TLS (HTTPS listener only; NULL otherwise): client bytes go through it
     * (see "the client byte layer" in proxy_http.c) */
    gw_tls_conn_t *tls;
    bool tls_starved;                 /* plaintext pull stopped for lack of room in `in` */
    bool tls_queued;                  /* on t->tls_due */
    bool tls_wbusy;                   /* tls_wreq in flight (counted in wpending) */
    bool tls_dead;                    /* TLS failed: flushing its alert, then closed */
    bool tls_shut;                    /* close_notify queued */
    gw_client_t *tls_next;            /* t->tls_due link */
    gw_wslot_t *tls_wq, *tls_wq_tail; /* slots not yet all encrypted and sent */
    unsigned tls_wi;                  /* progress in tls_wq's head: iovec... */
    size_t tls_woff;                  /* ...and offset in it */
    size_t tls_wlen;                  /* bytes of tls_wreq */
    uv_write_t tls_wreq;
    /* the worker bridge's invocation of the current request (bridge.c), or NULL */
    struct gw_binv *inv;
    /* kept over reuse from the spare list (see gw_client_new) */
    gw_wslot_t slot;
};

struct gw_dconn {
    gw_proxy_t *p;
    gw_client_t *c;
    buf_t out;
    buf_t bout;
    bool closed;
};

struct gw_proxy {
    gw_proxy_opts_t o; /* defaults applied */
    char *http_addr;
    char *internal_host;
    char *https_addr;
    int https_port;
    char hsts[64]; /* "Strict-Transport-Security: max-age=N" or "" */
    int n_threads;
    gw_thread_t *threads;
    int http_port;
    bool detached;
    bool running;
    uv_mutex_t lock; /* guards snap, snap_gen */
    gw_snapshot_t *snap;
    uint64_t snap_gen;
    atomic_bool draining;
    atomic_bool stopping;
    atomic_uint_fast64_t snap_swaps;
    atomic_uint_fast64_t notified_rev; /* last revision reported to on_applied */
};

/* ---- proxy.c ---- */
uint64_t gw_thread_now(gw_thread_t *t);
void gw_thread_resume_accept(uv_timer_t *h);
void gw_thread_snap_release(gw_thread_t *t, gw_snapref_t *r);
void gw_metrics_request(gw_thread_t *t, const gw_client_t *c);
void gw_access_log(gw_thread_t *t, const gw_client_t *c);
uint64_t gw_rand64(gw_thread_t *t);
void gw_slot_complete(gw_wslot_t *s, int status);
void gw_stream_write(gw_thread_t *t, gw_wslot_t *s, uv_stream_t *st, uv_write_cb cb, bool closed);
void gw_defer_complete(gw_thread_t *t, gw_wslot_t *s, int status);
void gw_thread_wake(gw_thread_t *t);
gw_wslot_t *gw_slot_get(gw_wslot_t *embedded, gw_slot_dir_t dir, void *owner);
void gw_slot_free(gw_wslot_t *s);
void gw_slot_add(gw_wslot_t *s, const void *p, size_t n);
bool gw_slot_full(const gw_wslot_t *s, unsigned need);

/* ---- proxy_http.c ---- */
void gw_client_accept(gw_thread_t *t, int fd, const struct sockaddr_storage *peer, bool internal,
                      int port, bool tls);
/* Pull decrypted input of the TLS clients on t->tls_due (from the check
 * phase: see gw_detached_run). */
void gw_client_tls_run_due(gw_thread_t *t);
gw_client_t *gw_client_new(gw_thread_t *t);
void gw_client_destroy(gw_client_t *c);
void gw_client_on_bytes(gw_client_t *c, size_t n);
void gw_client_on_eof(gw_client_t *c, int status);
void gw_client_close(gw_client_t *c);
void gw_client_write(gw_client_t *c, gw_wslot_t *s);
void gw_client_write_done(gw_client_t *c, gw_wslot_t *s, int status);
void gw_client_read_update(gw_client_t *c);
void gw_client_drain(gw_client_t *c);
/* upstream events delivered to the client */
void gw_client_up_connected(gw_client_t *c, int status);
void gw_client_up_bytes(gw_client_t *c, gw_upstream_t *u);
void gw_client_up_eof(gw_client_t *c, gw_upstream_t *u, int status);
void gw_client_up_write_done(gw_client_t *c, int status);
void gw_client_up_unlocked(gw_client_t *c, gw_upstream_t *u);
void gw_client_set_deadline(gw_client_t *c, uint64_t ms, int kind);
void gw_client_respond(gw_client_t *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void gw_client_end_request(gw_client_t *c);
/* The response is fully queued to the client: account the request, then
 * close or go on with the next one (the worker bridge's end of response). */
void gw_client_finish_response(gw_client_t *c);
/* End the bytes to the client (FIN, or close_notify over TLS) and keep
 * reading from it: a tunnel whose backend ended its direction. */
void gw_client_shut_write(gw_client_t *c);

/* Header name checks shared by the HTTP proxy and the worker bridge:
 * hop-by-hop (RFC 9110 7.6.1, plus the framing headers the gateway
 * rewrites), and RFC 9110 token characters (http-parser, not built strict,
 * lets spaces through in names). Case-insensitive where names are. */
bool gw_http_hop_by_hop(const char *p, size_t n);
bool gw_http_token_ok(const char *p, size_t n);
/* Is `name` one of the comma-separated tokens of a Connection value? */
/* Pick a backend of pool for c (not `exclude`) and count the request on it
 * (c->b); false when none is left. */
bool gw_client_pick_in(gw_client_t *c, const gw_pool_t *pool, gw_balance_t balance,
                       const void *seed, size_t sl, const gw_backend_t *exclude);
bool gw_http_conn_token_has(const char *v, size_t vn, const char *name, size_t nn);
/* Named by any Connection header among the spans (so hop-by-hop for this
 * message)? */
bool gw_http_named_by_connection(const char *base, const gw_hspan_t *hs, size_t nhs,
                                 const char *name, size_t nn);

/* ---- upstream.c ---- */
/* A connection to b for c: a pooled idle one (*reused true) or a new one
 * being connected. */
gw_upstream_t *gw_up_get(gw_thread_t *t, gw_backend_t *b, gw_client_t *c, bool fresh, bool *reused);
void gw_up_write(gw_upstream_t *u, gw_wslot_t *s);
void gw_up_write_done(gw_upstream_t *u, gw_wslot_t *s, int status);
void gw_up_read_update(gw_upstream_t *u);
/* c is done with u: keep it in the pool when reusable, else close it. */
void gw_up_release(gw_upstream_t *u, bool reusable);
void gw_up_close(gw_upstream_t *u);
/* Send FIN to the backend once queued writes are out, and keep reading
 * (a tunnel whose client ended its direction). */
void gw_up_shut_write(gw_upstream_t *u);
void gw_up_unlock(gw_upstream_t *u);
void gw_up_begin_response(gw_upstream_t *u, bool head_request);
void gw_pool_sweep(gw_thread_t *t, const gw_snapshot_t *s);
void gw_pool_close_all(gw_thread_t *t);
int gw_up_detached_feed(gw_upstream_t *u, const void *bytes, size_t n);
void gw_up_handle_closed(gw_upstream_t *u);
bool gw_up_keep_ok(const gw_upstream_t *u);
bool gw_snapshot_has_backend(const gw_snapshot_t *s, const gw_backend_t *b);
void gw_detached_run(gw_thread_t *t);

/* ---- proxy_tcp.c ---- */
void gw_tcp_session_start(gw_client_t *c, const gw_route_t *r);
void gw_tunnel_client_bytes(gw_client_t *c);
void gw_tunnel_up_bytes(gw_client_t *c, gw_upstream_t *u);
void gw_tunnel_eof(gw_client_t *c, bool from_client);
void gw_tunnel_begin(gw_client_t *c, gw_upstream_t *u, gw_wslot_t *s);
void gw_tunnel_connected(gw_client_t *c);
void gw_tcp_connect_failed(gw_client_t *c, gw_upstream_t *u, int status);

#endif
