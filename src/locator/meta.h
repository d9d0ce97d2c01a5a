/* locator/meta: the metalocator core. It subscribes to many node locators
 * (connect [uuid], docs/protocol.md section 7) and merges their tables into
 * one loc_table_t, which a loc_server_t and the DNS server then serve, so
 * routers follow one stream instead of one per node, and metalocators stack
 * (docs/protocol.md, "Metalocator").
 *
 * Per node there is one link: TCP connect, `connect [uuid]` on channel 1,
 * the full table (which replaces everything the node contributed before, so
 * a reconnect resyncs), then every change in revision order. The merged
 * entry of a name is the union of every node's endpoints for it (an
 * endpoint is host:port; the same one from two nodes counts once, credited
 * to the node that reported it first), its version the highest of the
 * nodes' versions, its api that of the node that has contributed the name
 * the longest. Merged endpoints carry the node id they came from (loc_ep_t
 * .node) and the version of that node's entry (the wire has no per-endpoint
 * version); instance is NULL.
 *
 * A link that fails (connect error or timeout, EOF, a protocol error, a
 * message the protocol does not allow, a revision that goes backwards or
 * skips) is closed and retried with backoff until the node is removed. The
 * node's endpoints stay in the merged table for stale_ms after the failure
 * (a locator that blips does not empty the routers), and leave it then
 * unless a new full table came in meanwhile. meta_node_remove drops them at
 * once. Bytes from a node only ever change that node's own contribution,
 * and a message is checked whole before any of it is applied.
 *
 * Acks: without a downstream server a node's revision is acked as soon as
 * it is applied (once per read from the socket). With one, revision R is
 * acked only after every subscriber of the downstream server confirmed the
 * merged revision holding R's changes (loc_server_wait_confirmed), so a
 * node's drain waits for the routers two hops away; if that wait times out
 * with routers pending, R is not acked (a later confirmed revision covers
 * it), and the node's own drain names this metalocator.
 *
 * The merged table is written by the metalocator only: a name no node
 * contributes is removed from it. It should be empty at meta_start. It is
 * left as it stands by meta_stop (routers keep their routes while a
 * metalocator restarts).
 *
 * Threading: everything runs on the loop given to meta_start, the thread
 * that owns the merged table. No function may be called from within a
 * listener of the merged table (the metalocator is writing it then). */
#ifndef DROVER_LOCATOR_META_H
#define DROVER_LOCATOR_META_H

#include "core/buf.h"
#include "core/err.h"
#include "locator/locator.h"
#include "locator/table.h"

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Defaults of meta_opts_t (a zero field takes them). */
#define META_BACKOFF_START_DEFAULT_MS   100
#define META_BACKOFF_MAX_DEFAULT_MS     5000
#define META_CONNECT_TIMEOUT_DEFAULT_MS 5000
#define META_STALE_DEFAULT_MS           15000
#define META_CONFIRM_TIMEOUT_DEFAULT_MS 60000
#define META_MAX_NODES_DEFAULT          4096
#define META_MAX_NAMES_DEFAULT          10000
/* Longest node id meta_node_add accepts. */
#define META_NODE_ID_MAX 255

typedef struct meta_opts {
    /* Subscriber uuid sent in connect; NULL: "metalocator-<hostname>". */
    const char *uuid;
    /* Reconnect delay: starts at backoff_start_ms, doubles per failed
     * attempt up to backoff_max_ms, each delay drawn from [d/2, d]; back to
     * the start once a link delivers its full table. */
    uint64_t backoff_start_ms;
    uint64_t backoff_max_ms;
    /* Bound on TCP connect (name lookup included) plus the arrival of the
     * full table; past it the attempt fails. */
    uint64_t connect_timeout_ms;
    /* How long a failed node's endpoints stay in the merged table. */
    uint64_t stale_ms;
    /* Bound on one message from a node (the full table is one message);
     * 0: RPC_MAX_MESSAGE_DEFAULT (4 MiB). */
    size_t max_message_bytes;
    /* meta_node_add refuses more nodes than this (-EMFILE). */
    size_t max_nodes;
    /* Names one node may contribute; a message that would take it past
     * this ends the link (a protocol error). */
    size_t max_names_per_node;
    /* The server serving the merged table, or NULL (see "Acks" above). Not
     * owned; must be running while the metalocator is. */
    loc_server_t *downstream;
    /* How long one downstream confirmation is waited for. */
    uint64_t confirm_timeout_ms;
    /* Instead of a downstream server, whoever consumes the merged table
     * itself (a gateway) may confirm: called like loc_server_wait_confirmed
     * (same contract: cb runs once, on a later loop turn) with
     * confirm_ctx. Ignored when downstream is set. */
    int (*confirm)(void *ctx, uint64_t merged_revision, uint64_t timeout_ms, loc_confirm_fn cb,
                   void *cb_data);
    void *confirm_ctx;
    /* When set, each link also follows the node's routing groups
     * (`routing [uuid]` on channel 2) and hands every write to on_groups:
     * `full` for the first one on a link (every group the node serves),
     * then only changed groups, an empty member list meaning deleted. Each
     * value was checked to be [[member, weight]...] (member a non-empty
     * str, weight a uint32). Called on the loop; `groups` is valid during
     * the call. A node that refuses routing just has no groups. */
    void (*on_groups)(const char *node_id, const msgpack_object_map *groups, bool full, void *data);
    void *groups_data;
} meta_opts_t;

typedef enum meta_link_state {
    META_LINK_IDLE = 0,   /* no link: waiting to (re)connect */
    META_LINK_RESOLVING,  /* looking the host name up */
    META_LINK_CONNECTING, /* TCP connect in progress */
    META_LINK_SYNCING,    /* connected, connect sent, waiting for the full table */
    META_LINK_UP,         /* full table applied, following changes */
} meta_link_state_t;

/* One node, as meta_nodes_foreach and meta_node_info report it. Strings
 * are valid during the callback (or until the next call into the
 * metalocator for meta_node_info). */
typedef struct meta_node_info {
    const char *id;
    const char *addr; /* "host:port" as given to meta_node_add */
    meta_link_state_t state;
    bool connected;         /* SYNCING or UP */
    bool synced;            /* a full table was applied since the node was added */
    bool stale;             /* link down, endpoints kept until the stale timer */
    uint64_t revision;      /* last revision of the node's table applied */
    uint64_t acked;         /* highest revision acked on the current link */
    size_t names;           /* names the node contributes to the merged table */
    uint64_t links;         /* links that delivered a full table */
    uint64_t failures;      /* links that failed */
    const char *last_error; /* why the last link failed; "" when none did */
} meta_node_info_t;

typedef struct meta meta_t;

/* Start a metalocator writing `merged` (which must outlive it) on `loop`,
 * with no nodes. opts may be NULL (defaults); its strings are copied.
 * Returns 0, or -EINVAL for bad options (backoff_start > backoff_max, an
 * empty uuid or one over 255 bytes) with *out NULL. */
int meta_start(uv_loop_t *loop, loc_table_t *merged, const meta_opts_t *opts, meta_t **out,
               err_t *err);

/* Follow the locator of `node_id` at host_port ("10.0.0.5:10053",
 * "[::1]:10053", "node7:10053"; a host name is looked up off the loop).
 * Idempotent: the same address again changes nothing; a changed address
 * closes the current link and connects to the new one at once (the
 * endpoints stay until the new full table replaces them, or stale_ms).
 * Returns 0, -EINVAL (bad id or address; logged), -EMFILE (max_nodes
 * reached), -ESHUTDOWN (stopping). */
int meta_node_add(meta_t *m, const char *node_id, const char *host_port);
/* Stop following a node: its endpoints leave the merged table now. An
 * unknown id is ignored. */
void meta_node_remove(meta_t *m, const char *node_id);
/* Nodes added and not removed. */
size_t meta_node_count(const meta_t *m);
/* Every node, in id order; fn returns non-zero to stop. */
void meta_nodes_foreach(const meta_t *m, int (*fn)(const meta_node_info_t *n, void *data),
                        void *data);
/* One node; -ENOENT when unknown. */
int meta_node_info(const meta_t *m, const char *node_id, meta_node_info_t *out);
/* "idle", "resolving", "connecting", "syncing", "up". */
const char *meta_link_state_name(meta_link_state_t s);
/* The uuid sent to node locators. */
const char *meta_uuid(const meta_t *m);

/* Close every link and timer. The merged table keeps what it holds. done
 * (may be NULL) runs on a later loop turn once every handle is closed and
 * the metalocator is freed. Call once. */
void meta_stop(meta_t *m, void (*done)(void *data), void *data);

/* ---- without sockets (the fuzzer) -----------------------------------------
 * A detached metalocator has no loop: nodes are added as usual but never
 * connect; the caller feeds each node's link the bytes its locator would
 * send, and what the metalocator would write collects in memory. A link is
 * up (connect sent) from the node's add on; once it fails, the next feed
 * starts a new one, as a reconnect would. A failed node's endpoints stay
 * until it resyncs or is removed (there are no timers). opts->downstream is
 * ignored (acks go out right after applying). */

meta_t *meta_new_detached(loc_table_t *merged, const meta_opts_t *opts);
/* Frees every node; the merged table keeps what it holds. */
void meta_free_detached(meta_t *m);
/* Bytes from the node's locator. 0 while the link takes more; a negative
 * errno once it failed (err says why), -ENOENT for an unknown node. */
int meta_node_feed(meta_t *m, const char *node_id, const void *bytes, size_t n, err_t *err);
/* Everything written to the node over all its links (at most 1 MiB is
 * kept), or NULL for an unknown node. */
const buf_t *meta_node_output(const meta_t *m, const char *node_id);

#endif
