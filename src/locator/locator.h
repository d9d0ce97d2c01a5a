/* locator: the node locator, a msgpack RPC service over TCP that tells
 * routers and clients where services run (docs/protocol.md, section 7).
 *
 * The server reads a loc_table_t and never changes it. Each request opens a
 * channel (ids strictly increasing per connection) whose type is the method:
 *
 *   resolve [name]  -> value [[[host, port]...], version, api], or
 *                      error [[2, ENOENT], "service not found"]
 *   connect [uuid]  -> write [{name: [[[host, port]...], version, api]...}]
 *                      with the whole table, then one write per change
 *                      holding the changed names only (an empty endpoint
 *                      list removes a name); every write carries the header
 *                      ["revision", "<decimal>"]. The subscriber may send
 *                      ack [revision] (type LOC_ACK) on the channel to
 *                      confirm it applied everything up to that revision,
 *                      and close [] to unsubscribe.
 *   cluster []      -> value [[node id, [[host, port]]]] (one argument per
 *                      node: itself, then every node opts->cluster adds)
 *
 * A well-formed request the server cannot serve (unknown method, wrong
 * arguments) gets an error on its channel and the connection stays up.
 * Bytes that are not a valid message stream (bad msgpack, a message over
 * the size limit, a channel id going backwards) close the connection.
 *
 * Output to each connection is bounded: a peer that stops reading while
 * replies or changes pile up past max_queued_bytes is disconnected as too
 * slow, so one stuck router never makes the agent's memory grow.
 *
 * Threading: everything runs on the loop given to loc_server_start, the
 * same loop (thread) that changes the table. */
#ifndef DROVER_LOCATOR_LOCATOR_H
#define DROVER_LOCATOR_LOCATOR_H

#include "core/buf.h"
#include "core/err.h"
#include "locator/table.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Default port of a node's locator. */
#define LOC_DEFAULT_PORT 10053
/* Defaults of loc_server_opts_t's limits (a zero field takes them). */
#define LOC_MAX_MESSAGE_DEFAULT     ((size_t)64 << 10)
#define LOC_MAX_CONNECTIONS_DEFAULT 4096
#define LOC_MAX_QUEUED_DEFAULT      ((size_t)16 << 20)
/* connect channels one connection may hold open at once. */
#define LOC_MAX_SUBS_PER_CONN 64

/* Subscriber -> server on a connect channel: ack [revision] (uint, or its
 * decimal text as str/bin, as the "revision" header carries it). Types 1
 * (error) and 2 (close) keep their streaming meaning. */
enum loc_msg_type {
    LOC_ACK = 3,
};

typedef struct loc_server_opts {
    /* cluster: this node's id; NULL means the host name. */
    const char *node_id;
    /* cluster: the address others reach this locator at; NULL means the
     * host of the listen address. node_port 0 means the port listened on. */
    const char *node_host;
    int node_port;
    /* Bound on one received message; 0: LOC_MAX_MESSAGE_DEFAULT. */
    size_t max_message_bytes;
    /* Connections served at once (more are closed on accept); 0: default. */
    size_t max_connections;
    /* Bytes one connection may have waiting to be written; past it the
     * peer is disconnected as too slow. Must exceed the encoded full table
     * for subscribers to be served. 0: LOC_MAX_QUEUED_DEFAULT. */
    size_t max_queued_bytes;
    /* Called each time a subscriber confirms a higher revision than it had
     * (its connect uuid, peer "ip:port" and the revision). The strings are
     * valid during the call only. May be NULL. */
    void (*on_ack)(const char *uuid, const char *peer, uint64_t revision, void *data);
    void *data;
    /* cluster: other nodes this locator knows (a metalocator: every node
     * it links). Called per `cluster` request; it calls add once per node
     * (ctx passed through; strings copied). May be NULL. */
    void (*cluster)(void *data, void (*add)(void *ctx, const char *id, const char *host, int port),
                    void *ctx);
} loc_server_opts_t;

typedef struct loc_server loc_server_t;

/* Listen on addr ("127.0.0.1:10053", "[::]:0") and serve `table`, which
 * must outlive the server. opts may be NULL (defaults); its strings are
 * copied. On failure nothing is left running and *out is NULL. */
int loc_server_start(uv_loop_t *loop, const char *addr, loc_table_t *table,
                     const loc_server_opts_t *opts, loc_server_t **out, err_t *err);
/* The port listened on (useful after listening on port 0). */
int loc_server_port(const loc_server_t *s);
/* Close the listener and every connection. Waiters of
 * loc_server_wait_confirmed get their callback with the confirmations as
 * they stood at this call. done(data) runs on a later loop turn once every
 * handle is closed and the server is freed; may be NULL. Call once. */
void loc_server_stop(loc_server_t *s, void (*done)(void *data), void *data);
/* Connections open, and connect channels being streamed to. */
size_t loc_server_connections(const loc_server_t *s);
size_t loc_server_subscribers(const loc_server_t *s);

/* Called once: `confirmed` subscribers (of those connected when the wait
 * began) acked >= revision or went away; `pending` did neither before the
 * timeout (or the server stopped), and pending_names lists them as
 * "uuid (ip:port)" separated by ", " ("" when none; valid during the call). */
typedef void (*loc_confirm_fn)(uint64_t revision, size_t confirmed, size_t pending,
                               const char *pending_names, void *data);

/* Wait until every subscriber connected now has confirmed `revision` (a
 * revision of the table not newer than its current one), or timeout_ms
 * passes. cb always runs on a later loop turn, never from within this
 * call; with no subscribers it runs on the next turn. Returns 0, -EINVAL
 * for a revision the table has not reached, -ESHUTDOWN once stopping. This
 * is how an agent drains an instance only after every router dropped it. */
int loc_server_wait_confirmed(loc_server_t *s, uint64_t revision, uint64_t timeout_ms,
                              loc_confirm_fn cb, void *data);

/* ---- blocking client (CLI, tests) ---------------------------------------- */

typedef struct loc_endpoint {
    char *host;
    int port;
} loc_endpoint_t;

/* A resolve answer; owned by the caller, freed with loc_resolved_free. */
typedef struct loc_resolved {
    loc_endpoint_t *eps;
    size_t n;
    int64_t version;
    char *api;
} loc_resolved_t;

/* Resolve `name` at the locator at host_port ("127.0.0.1:10053"; a host
 * name is looked up). Blocks for at most timeout_ms in all. Returns 0 with
 * *out filled, -ENOENT when the locator does not know the name (err holds
 * its message), -ETIMEDOUT, a connect error (-ECONNREFUSED...), or -EPROTO
 * for an answer that is not what the protocol says. *out is zeroed on
 * failure. */
int loc_client_resolve(const char *host_port, const char *name, long timeout_ms,
                       loc_resolved_t *out, err_t *err);
void loc_resolved_free(loc_resolved_t *r);

/* ---- without sockets (the fuzzer, unit tests) ------------------------------
 * A detached server has no loop and no listener: connections are fed bytes
 * by the caller and their output collects in memory, through exactly the
 * code that serves sockets. loc_server_wait_confirmed is not available. */

typedef struct loc_conn loc_conn_t;

loc_server_t *loc_server_new_detached(loc_table_t *table, const loc_server_opts_t *opts);
/* Every detached connection must have been freed first. */
void loc_server_free_detached(loc_server_t *s);
/* Owned by the caller: free with loc_conn_free_detached. */
loc_conn_t *loc_conn_new_detached(loc_server_t *s);
/* Bytes from the peer. 0 while the connection takes more, -EPIPE once the
 * server closed it (protocol error, too slow). */
int loc_conn_feed(loc_conn_t *c, const void *bytes, size_t n);
/* Everything the server wrote to c (at most 4 MiB are kept). */
const buf_t *loc_conn_output(const loc_conn_t *c);
/* The peer goes away. */
void loc_conn_free_detached(loc_conn_t *c);

/* Routing groups served by `routing` and resolvable by name: set (or, with
 * n == 0, remove) a group; routing subscribers get the change at once. */
struct ketama_member;
int loc_server_group_set(loc_server_t *s, const char *name, const struct ketama_member *members,
                         size_t n, err_t *err);

#endif
