/* announce: nodes announce themselves by UDP multicast so metalocators find
 * them without configuration (docs/protocol.md, "Announce").
 *
 * Each datagram is the msgpack encoding of
 *
 *     [uuid, [[addr, port]...]]
 *
 * (not an RPC message), at most ANNOUNCE_MAX_DATAGRAM bytes, sent to an
 * IPv4 multicast group (239.192.77.1:10054 by default) every interval (5 s).
 * A listener reports a node when it first appears or its endpoints change,
 * and reports it gone once it has missed 3 intervals.
 *
 * A sender and a listener must agree on group, port and interval; the
 * datagram carries none of them.
 *
 * Everything runs on the uv loop given at start (single-threaded, nothing
 * blocks). Start functions never call a callback when they fail. Stop
 * functions close the sockets and timers; `done` (optional) is called from
 * the loop once every handle is closed and the object freed, so the caller
 * must keep running the loop until then. No other callback is called after
 * stop, and stop may be called from inside the listener's on_node. */
#ifndef DROVER_LOCATOR_ANNOUNCE_H
#define DROVER_LOCATOR_ANNOUNCE_H

#include "core/buf.h"
#include "core/err.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define ANNOUNCE_GROUP_DEFAULT    "239.192.77.1"
#define ANNOUNCE_PORT_DEFAULT     10054
#define ANNOUNCE_INTERVAL_DEFAULT 5000 /* ms */
#define ANNOUNCE_TTL_DEFAULT      1
/* A node is reported down after this many intervals without an announce. */
#define ANNOUNCE_MISSED_MAX          3
#define ANNOUNCE_MAX_NODES_DEFAULT   4096
#define ANNOUNCE_RATE_DEFAULT        50 /* datagrams per second per source address */
#define ANNOUNCE_MAX_SOURCES_DEFAULT 1024
/* rate_limit value that turns the per-source limit off. */
#define ANNOUNCE_RATE_UNLIMITED UINT32_MAX

/* Wire limits. A datagram larger than ANNOUNCE_MAX_DATAGRAM is refused by
 * the listener and never produced by the sender (so it fits one Ethernet
 * frame without fragmentation). */
#define ANNOUNCE_MAX_DATAGRAM  1400
#define ANNOUNCE_UUID_MAX      128 /* bytes of printable ASCII, no space */
#define ANNOUNCE_ADDR_MAX      253 /* an IP literal or a DNS host name */
#define ANNOUNCE_MAX_ENDPOINTS 64

typedef struct announce_endpoint {
    const char *addr; /* "10.0.0.5", "fd00::5" or "node-3.example" */
    int port;         /* 1..65535 */
} announce_endpoint_t;

/* Zero-initialised fields take the defaults. The same struct configures
 * senders and listeners; each reads the fields that concern it. */
typedef struct announce_opts {
    const char *group;    /* IPv4 multicast group; NULL: ANNOUNCE_GROUP_DEFAULT */
    int port;             /* UDP port; 0: ANNOUNCE_PORT_DEFAULT */
    uint32_t interval_ms; /* announce period; 0: ANNOUNCE_INTERVAL_DEFAULT */
    /* Local IPv4 address of the interface to send on (IP_MULTICAST_IF; the
     * sender also binds to it) and to join the group on. NULL or "": any,
     * the routing table picks the interface. */
    const char *interface;
    /* sender */
    int ttl;      /* IP_MULTICAST_TTL, 1..255; 0: ANNOUNCE_TTL_DEFAULT (the local link) */
    bool no_loop; /* false (default): IP_MULTICAST_LOOP on, so listeners on
                     the same machine hear the sender */
    /* listener */
    size_t max_nodes; /* nodes tracked at once; 0: ANNOUNCE_MAX_NODES_DEFAULT.
                         Announces of new uuids beyond it are dropped and
                         counted (stats.dropped_full) until a node expires. */
    /* Token bucket per source address (IP, not port): rate_limit datagrams
     * per second, bursts of rate_burst. Datagrams over it are dropped before
     * they are decoded. 0: ANNOUNCE_RATE_DEFAULT (burst 2x rate);
     * ANNOUNCE_RATE_UNLIMITED: off. */
    uint32_t rate_limit;
    uint32_t rate_burst;
    /* Source addresses with a bucket at once; 0: ANNOUNCE_MAX_SOURCES_DEFAULT.
     * Past it the least recently seen bucket is reused. */
    size_t max_sources;
} announce_opts_t;

/* ---- wire format ---- */

/* One decoded datagram, with its own storage (no allocation). Endpoints are
 * sorted by (addr, port) and unique; IP literals are in canonical form
 * (inet_ntop), host names lower-cased. */
typedef struct announce_msg {
    char uuid[ANNOUNCE_UUID_MAX + 1];
    announce_endpoint_t eps[ANNOUNCE_MAX_ENDPOINTS]; /* addr points into addrs */
    size_t n;                                        /* >= 1 */
    char addrs[ANNOUNCE_MAX_ENDPOINTS][ANNOUNCE_ADDR_MAX + 1];
} announce_msg_t;

/* Decode one datagram. 0, or -EMSGSIZE (over ANNOUNCE_MAX_DATAGRAM),
 * -EPROTO (not one msgpack object, or bytes after it) or -EINVAL (wrong
 * shape: err names the element, "endpoint 2: port 0 out of range").
 * Extra elements after the first two of the top array, or after [addr,
 * port] in an endpoint, are ignored (room for later versions). Never
 * allocates more than a small multiple of len. */
int announce_decode(const void *data, size_t len, announce_msg_t *out, err_t *err);

/* Append the datagram for (uuid, eps) to out. -EINVAL for an invalid uuid,
 * address, port or count (n must be 1..ANNOUNCE_MAX_ENDPOINTS), -EMSGSIZE
 * when it would exceed ANNOUNCE_MAX_DATAGRAM, -ENOBUFS when out's own limit
 * is hit; out is unchanged on failure. Endpoints are packed in the order
 * given, addresses in canonical form. */
int announce_encode(buf_t *out, const char *uuid, const announce_endpoint_t *eps, size_t n,
                    err_t *err);

/* ---- sender ---- */

typedef struct announce_sender announce_sender_t;

typedef struct announce_sender_stats {
    uint64_t sent;        /* datagrams handed to the kernel */
    uint64_t send_errors; /* failed sends (logged when the error changes) */
    uint64_t skipped;     /* ticks skipped because the previous send was still pending */
} announce_sender_stats_t;

/* Announce (uuid, eps) now and then every interval until stopped. uuid and
 * eps are copied. On failure nothing is left running (handles already
 * created are closed; the loop frees them on its next run). */
int announce_sender_start(uv_loop_t *loop, const announce_opts_t *opts, const char *uuid,
                          const announce_endpoint_t *eps, size_t n, announce_sender_t **out,
                          err_t *err);
/* Replace the endpoints (copied) and announce them at once, so listeners
 * see the change without waiting for the next tick. On failure the old
 * endpoints stay in use. */
int announce_sender_update(announce_sender_t *s, const announce_endpoint_t *eps, size_t n,
                           err_t *err);
void announce_sender_stats(const announce_sender_t *s, announce_sender_stats_t *out);
/* Stop announcing. s is freed before done(data) is called from the loop. */
void announce_sender_stop(announce_sender_t *s, void (*done)(void *data), void *data);

/* ---- listener ---- */

typedef struct announce_listener announce_listener_t;

/* up == true: uuid appeared or its endpoints changed (eps is the new full
 * list); up == false: it missed ANNOUNCE_MISSED_MAX intervals and is no
 * longer tracked (eps is its last list). uuid and eps are valid during the
 * call only. */
typedef void (*announce_node_fn)(const char *uuid, const announce_endpoint_t *eps, size_t n,
                                 bool up, void *data);

typedef struct announce_listener_stats {
    uint64_t received;     /* datagrams read from the socket */
    uint64_t accepted;     /* decoded and applied (includes unchanged re-announces) */
    uint64_t oversize;     /* larger than ANNOUNCE_MAX_DATAGRAM */
    uint64_t malformed;    /* not msgpack, or not [uuid, [[addr, port]...]] */
    uint64_t rate_limited; /* over their source's rate */
    uint64_t dropped_full; /* new uuids refused because max_nodes were tracked */
    uint64_t ups;          /* on_node(up=true) calls */
    uint64_t downs;        /* on_node(up=false) calls */
    size_t nodes;          /* tracked now */
} announce_listener_stats_t;

/* Join the group and report nodes to on_node (required). Binds
 * group:port with SO_REUSEADDR, so several listeners may run on one host.
 * On failure nothing is left running and on_node is never called. */
int announce_listener_start(uv_loop_t *loop, const announce_opts_t *opts, announce_node_fn on_node,
                            void *data, announce_listener_t **out, err_t *err);
void announce_listener_stats(const announce_listener_t *l, announce_listener_stats_t *out);
/* Stop listening; tracked nodes are forgotten without down reports. l is
 * freed before done(data) is called from the loop. */
void announce_listener_stop(announce_listener_t *l, void (*done)(void *data), void *data);

#endif
