/* locator/meta: the metalocator core (see meta.h and docs/protocol.md,
 * "Metalocator").
 *
 * Three layers:
 *   - the merge: a hash of names, each with the contribution of every node
 *     that has endpoints for it; a name's merged entry is recomputed from
 *     its contributions whenever one changes and written with
 *     loc_table_set (which drops no-op writes, so a resync that brings
 *     nothing new costs the routers nothing);
 *   - the stream decoding: a node's `write` messages are checked whole,
 *     then applied (full table: replace the node's contribution; change:
 *     set or remove names), with revisions checked to follow each other;
 *   - the links: per node a TCP connection with its timers, backoff, stale
 *     grace and acks (direct, or after downstream confirmation).
 *
 * Lifetimes. A node owns two timers (link timer: retry delay or connect
 * timeout; stale timer) and at most one link. A link owns its TCP handle
 * and is freed from the handle's close callback; a failed link is detached
 * from its node first, so a node never waits for its old links. A removed
 * node is unlinked at once (its id is free again) and freed once its
 * timers are closed and its name lookup came back. The metalocator is
 * freed when no node and no link remain, after meta_stop. */
#include "locator/meta.h"

#include "core/alloc.h"
#include "core/log.h"
#include "core/rpc.h"
#include "core/str.h"

#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* Bytes asked of the kernel per read; one buffer per metalocator. */
#define META_READ_SIZE 65536
/* What a link may have waiting to be written: connect and one ack. */
#define META_OUT_MAX 4096
/* Bound on what a detached node keeps of its output. */
#define META_SINK_MAX ((size_t)1 << 20)
/* Bounds on what a node may send, beyond the message size. */
#define META_NAME_MAX 1024
#define META_HOST_MAX 255
#define META_API_MAX  64
/* Bound on one entry's attributes (its routes), as msgpack. */
#define META_ATTRS_MAX (64 << 10)
#define META_UUID_MAX  255
/* Keepalive, so a node that vanishes without a RST is noticed: first probe
 * after this idle time, then every META_KEEPALIVE_INTVL_S, given up after
 * META_KEEPALIVE_CNT. */
#define META_KEEPALIVE_IDLE_S  10
#define META_KEEPALIVE_INTVL_S 5
#define META_KEEPALIVE_CNT     3

typedef struct meta_node meta_node_t;
typedef struct meta_link meta_link_t;
typedef struct meta_ticket meta_ticket_t;

/* ---- types --------------------------------------------------------------- */

typedef struct meta_ep {
    char *host;
    int port;
} meta_ep_t;

/* One node's endpoints for one name. */
typedef struct meta_contrib {
    meta_node_t *node;
    uint64_t gen; /* node's full-table generation that set it */
    meta_ep_t *eps;
    size_t n;
    int64_t version;
    char *api;
    char *attrs; /* msgpack map, or NULL */
    size_t attrs_len;
} meta_contrib_t;

/* A name some node contributes to; contributions in the order they came. */
typedef struct meta_name {
    struct meta_name *next; /* hash chain */
    uint64_t hash;
    meta_contrib_t *c;
    size_t n, cap;
    char name[];
} meta_name_t;

struct meta_link {
    meta_t *m;
    meta_node_t *node; /* NULL once detached from it (failed, closing) */
    uint64_t seq;      /* metalocator-wide, for downstream tickets */
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    rpc_decoder_t dec;
    buf_t out;  /* waiting to be written */
    buf_t wout; /* being written */
    bool writing;
    bool connect_sent;
    bool groups_full;  /* the first routing write arrived on this link */
    bool synced;       /* full table applied */
    uint64_t rev;      /* last revision applied on this link */
    uint64_t ack_want; /* highest revision that may be acked */
    uint64_t ack_sent;
    /* downstream: newest applied revision, the merged revision holding it,
     * and whether a wait for the routers' confirmation is outstanding */
    uint64_t confirm_rev;
    uint64_t confirm_merged;
    bool ticket_out;
};

struct meta_node {
    meta_t *m;
    meta_node_t *next; /* the metalocator's list, by id */
    char *id;
    char *addr;
    char *host;
    int port;
    bool numeric; /* sa holds the address; else look host up each attempt */
    struct sockaddr_storage sa;
    meta_link_state_t state;
    meta_link_t *link;
    uv_timer_t timer; /* IDLE: retry; RESOLVING..SYNCING: connect timeout */
    uv_timer_t stale_timer;
    bool stale;
    uv_getaddrinfo_t gai;
    bool gai_busy;
    bool gai_outdated; /* the address changed during the lookup */
    uint64_t backoff_ms;
    uint64_t gen; /* full tables applied */
    size_t names; /* contributions */
    bool synced;
    uint64_t revision;
    uint64_t links, failures;
    char last_error[ERR_MSG_MAX];
    bool warned; /* a failure was logged since the last sync */
    bool removed;
    int refs;   /* open timers + lookup in flight; freed at 0 once removed */
    buf_t sink; /* detached: everything written */
};

/* A downstream confirmation being waited for. loc_server_wait_confirmed
 * cannot be cancelled, so the ticket outlives whatever it names: it finds
 * its node again by id and its link by seq, and is orphaned (m NULL) when
 * the metalocator stops. */
struct meta_ticket {
    meta_t *m;
    meta_ticket_t *prev, *next;
    uint64_t link_seq;
    uint64_t rev;
    char node_id[];
};

struct meta {
    uv_loop_t *loop; /* NULL when detached */
    loc_table_t *merged;
    char *uuid;
    uint64_t backoff_start, backoff_max, connect_timeout, stale_ms, confirm_timeout;
    size_t max_message, max_nodes, max_names;
    /* downstream confirmation (a loc_server_t, or the opts' hook); NULL:
     * ack as soon as applied */
    int (*confirm)(void *ctx, uint64_t merged_revision, uint64_t timeout_ms, loc_confirm_fn cb,
                   void *cb_data);
    void *confirm_ctx;
    void (*on_groups)(const char *node_id, const msgpack_object_map *groups, bool full, void *data);
    void *groups_data;

    meta_node_t *nodes; /* by id */
    size_t n_nodes;
    meta_name_t **buckets;
    size_t n_buckets, n_names;
    meta_ticket_t *tickets;
    uint64_t next_link_seq;
    uint64_t rng;

    uv_timer_t sentinel; /* closed at stop, so done runs on a later turn */
    char *rbuf;
    bool stopping;
    int refs; /* nodes and links alive, plus the sentinel */
    void (*done)(void *data);
    void *done_data;
};

/* ---- small helpers ------------------------------------------------------- */

static uint64_t meta_hash(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* xorshift64*: jitter only needs to spread reconnects apart. */
static uint64_t meta_rand(meta_t *m)
{
    uint64_t x = m->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    m->rng = x;
    return x * 2685821657736338717ull;
}

/* Printable copy of bytes a peer chose, for log lines. */
static void meta_printable(char *dst, size_t cap, const char *p, size_t n)
{
    size_t k = n < cap - 1 ? n : cap - 1;
    for (size_t i = 0; i < k; i++) {
        unsigned char ch = (unsigned char)p[i];
        dst[i] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    dst[k] = '\0';
}

static void meta_unref(meta_t *m);

/* ---- the merge ----------------------------------------------------------- */

static void contrib_clear(meta_contrib_t *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->eps[i].host);
    free(c->eps);
    free(c->api);
    free(c->attrs);
    c->eps = NULL;
    c->api = NULL;
    c->attrs = NULL;
    c->attrs_len = 0;
    c->n = 0;
}

static meta_name_t *names_find(const meta_t *m, const char *name, size_t len, uint64_t h)
{
    if (!m->n_buckets)
        return NULL;
    for (meta_name_t *nm = m->buckets[h & (m->n_buckets - 1)]; nm; nm = nm->next)
        if (nm->hash == h && strncmp(nm->name, name, len) == 0 && nm->name[len] == '\0')
            return nm;
    return NULL;
}

static void names_grow(meta_t *m)
{
    size_t nb = m->n_buckets ? m->n_buckets * 2 : 64;
    meta_name_t **b = xcalloc(nb, sizeof(*b));
    for (size_t i = 0; i < m->n_buckets; i++) {
        meta_name_t *nm = m->buckets[i];
        while (nm) {
            meta_name_t *next = nm->next;
            nm->next = b[nm->hash & (nb - 1)];
            b[nm->hash & (nb - 1)] = nm;
            nm = next;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->n_buckets = nb;
}

static meta_name_t *names_add(meta_t *m, const char *name, size_t len, uint64_t h)
{
    if (m->n_names >= m->n_buckets)
        names_grow(m);
    meta_name_t *nm = xcalloc(1, sizeof(*nm) + len + 1);
    memcpy(nm->name, name, len);
    nm->hash = h;
    size_t b = h & (m->n_buckets - 1);
    nm->next = m->buckets[b];
    m->buckets[b] = nm;
    m->n_names++;
    return nm;
}

static void names_unlink(meta_t *m, meta_name_t *nm)
{
    for (meta_name_t **p = &m->buckets[nm->hash & (m->n_buckets - 1)]; *p; p = &(*p)->next) {
        if (*p == nm) {
            *p = nm->next;
            m->n_names--;
            return;
        }
    }
}

typedef struct meta_merge_ep {
    loc_ep_t ep;
    size_t order; /* contribution index: the first reporter wins a tie */
} meta_merge_ep_t;

static int merge_ep_cmp(const void *a, const void *b)
{
    const meta_merge_ep_t *x = a, *y = b;
    int c = strcmp(x->ep.host, y->ep.host);
    if (c)
        return c;
    if (x->ep.port != y->ep.port)
        return x->ep.port < y->ep.port ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order;
}

/* Write the merged entry of `nm` from its contributions; a name nobody
 * contributes any more is removed from the table and freed here. Why the
 * whole entry each time: contributions are few per name (one per node that
 * runs the app) and loc_table_set wants the whole endpoint list anyway. */
static void name_recompute(meta_t *m, meta_name_t *nm)
{
    if (nm->n == 0) {
        names_unlink(m, nm);
        loc_table_set(m->merged, nm->name, NULL, 0, 0, NULL);
        free(nm->c);
        free(nm);
        return;
    }
    size_t total = 0;
    int64_t version = nm->c[0].version;
    /* attributes (routes) follow the newest version: during a rollout the
     * new spec's routes win on every node at once */
    const meta_contrib_t *newest = &nm->c[0];
    for (size_t i = 0; i < nm->n; i++) {
        total += nm->c[i].n;
        if (nm->c[i].version > version) {
            version = nm->c[i].version;
            newest = &nm->c[i];
        }
    }
    meta_merge_ep_t *me = xcalloc(total ? total : 1, sizeof(*me));
    size_t k = 0;
    for (size_t i = 0; i < nm->n; i++) {
        const meta_contrib_t *c = &nm->c[i];
        for (size_t j = 0; j < c->n; j++)
            me[k++] = (meta_merge_ep_t){.ep = {.host = c->eps[j].host,
                                               .port = c->eps[j].port,
                                               .node = c->node->id,
                                               .version = c->version},
                                        .order = i};
    }
    qsort(me, total, sizeof(*me), merge_ep_cmp);
    loc_ep_t *eps = xcalloc(total ? total : 1, sizeof(*eps));
    size_t n = 0;
    for (size_t i = 0; i < total; i++) {
        if (n && strcmp(eps[n - 1].host, me[i].ep.host) == 0 && eps[n - 1].port == me[i].ep.port)
            continue;
        eps[n++] = me[i].ep;
    }
    loc_table_set_attrs(m->merged, nm->name, eps, n, version, nm->c[0].api, newest->attrs,
                        newest->attrs_len);
    free(eps);
    free(me);
}

static meta_contrib_t *name_contrib(meta_name_t *nm, const meta_node_t *node, size_t *at)
{
    for (size_t i = 0; i < nm->n; i++) {
        if (nm->c[i].node == node) {
            *at = i;
            return &nm->c[i];
        }
    }
    return NULL;
}

static void name_drop_contrib(meta_name_t *nm, size_t at)
{
    meta_node_t *node = nm->c[at].node;
    contrib_clear(&nm->c[at]);
    memmove(&nm->c[at], &nm->c[at + 1], (nm->n - at - 1) * sizeof(nm->c[0]));
    nm->n--;
    node->names--;
}

/* Remove every contribution of `node` (of an older full-table generation
 * than `keep_gen` when only_old). Iterates the whole hash: done on
 * removal, stale expiry and resyncs, never per change. */
static void merge_drop_node(meta_t *m, meta_node_t *node, bool only_old, uint64_t keep_gen)
{
    for (size_t b = 0; b < m->n_buckets && node->names; b++) {
        meta_name_t *nm = m->buckets[b];
        while (nm) {
            meta_name_t *next = nm->next; /* recompute may free nm */
            size_t at;
            meta_contrib_t *c = name_contrib(nm, node, &at);
            if (c && (!only_old || c->gen != keep_gen)) {
                name_drop_contrib(nm, at);
                name_recompute(m, nm);
            }
            nm = next;
        }
    }
}

/* Forget the node's contributions without touching the merged table
 * (meta_stop: the table keeps what it holds). */
static void merge_forget_all(meta_t *m)
{
    for (size_t b = 0; b < m->n_buckets; b++) {
        meta_name_t *nm = m->buckets[b];
        while (nm) {
            meta_name_t *next = nm->next;
            for (size_t i = 0; i < nm->n; i++) {
                nm->c[i].node->names--;
                contrib_clear(&nm->c[i]);
            }
            free(nm->c);
            free(nm);
            nm = next;
        }
    }
    free(m->buckets);
    m->buckets = NULL;
    m->n_buckets = m->n_names = 0;
}

/* ---- decoding a node's stream -------------------------------------------- */

static bool obj_is_bytes(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_STR || o->type == MSGPACK_OBJECT_BIN;
}

/* str and bin share the same layout in msgpack-c. */
static const char *obj_bytes(const msgpack_object *o, size_t *len)
{
    *len = o->via.str.size;
    return o->via.str.ptr;
}

/* A name, host or api from a node: bytes within [min, max], no NUL (they
 * become C strings). */
static int check_text(const msgpack_object *o, size_t min, size_t max, const char *what,
                      const char *name, err_t *err)
{
    if (!obj_is_bytes(o))
        return err_set(err, -EPROTO, "%s%s%s is %s, expected a string", what, name ? " of " : "",
                       name ? name : "", rpc_object_type_name(o));
    size_t len;
    const char *p = obj_bytes(o, &len);
    if (len < min || len > max)
        return err_set(err, -EPROTO, "%s%s%s is %zu bytes, expected %zu to %zu", what,
                       name ? " of " : "", name ? name : "", len, min, max);
    if (memchr(p, '\0', len))
        return err_set(err, -EPROTO, "%s%s%s holds a NUL byte", what, name ? " of " : "",
                       name ? name : "");
    return 0;
}

static int obj_int64(const msgpack_object *o, int64_t *out)
{
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX) {
        *out = (int64_t)o->via.u64;
        return 0;
    }
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = o->via.i64;
        return 0;
    }
    return -1;
}

/* An entry's attributes as they travel (the merged table keeps bytes). */
static void attrs_pack(const msgpack_object *o, msgpack_sbuffer *sb)
{
    msgpack_sbuffer_init(sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_object(&pk, *o);
}

/* One map value: [[[host, port]...], version, api, attrs?]. Trailing extra
 * elements (of an entry or an endpoint) are ignored: room for later
 * fields. */
static int check_entry(const msgpack_object *key, const msgpack_object *v, err_t *err)
{
    char name[64];
    size_t klen;
    const char *k = obj_bytes(key, &klen);
    meta_printable(name, sizeof(name), k, klen);
    int64_t i64;
    if (v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size < 3)
        return err_set(err, -EPROTO, "entry %s is %s, expected [endpoints, version, api]", name,
                       v->type == MSGPACK_OBJECT_ARRAY ? "a short array" : rpc_object_type_name(v));
    const msgpack_object *e = v->via.array.ptr;
    if (e[0].type != MSGPACK_OBJECT_ARRAY)
        return err_set(err, -EPROTO, "endpoints of %s are %s, expected an array", name,
                       rpc_object_type_name(&e[0]));
    if (obj_int64(&e[1], &i64) < 0)
        return err_set(err, -EPROTO, "version of %s is %s, expected an integer", name,
                       e[1].type == MSGPACK_OBJECT_POSITIVE_INTEGER ? "too large"
                                                                    : rpc_object_type_name(&e[1]));
    if (check_text(&e[2], 1, META_API_MAX, "api", name, err) < 0)
        return -EPROTO;
    if (v->via.array.size >= 4) {
        if (e[3].type != MSGPACK_OBJECT_MAP)
            return err_set(err, -EPROTO, "attributes of %s are %s, expected a map", name,
                           rpc_object_type_name(&e[3]));
        msgpack_sbuffer sb;
        attrs_pack(&e[3], &sb);
        size_t len = sb.size;
        msgpack_sbuffer_destroy(&sb);
        if (len > META_ATTRS_MAX)
            return err_set(err, -EPROTO, "attributes of %s take %zu bytes; at most %d", name, len,
                           META_ATTRS_MAX);
    }
    const msgpack_object_array *eps = &e[0].via.array;
    for (uint32_t i = 0; i < eps->size; i++) {
        const msgpack_object *ep = &eps->ptr[i];
        if (ep->type != MSGPACK_OBJECT_ARRAY || ep->via.array.size < 2)
            return err_set(err, -EPROTO, "endpoint %" PRIu32 " of %s is not [host, port]", i, name);
        const msgpack_object *port = &ep->via.array.ptr[1];
        if (check_text(&ep->via.array.ptr[0], 1, META_HOST_MAX, "endpoint host", name, err) < 0)
            return -EPROTO;
        if (port->type != MSGPACK_OBJECT_POSITIVE_INTEGER || port->via.u64 > 65535)
            return err_set(err, -EPROTO, "endpoint %" PRIu32 " of %s: port is not 0..65535", i,
                           name);
    }
    return 0;
}

/* The whole map, before any of it is applied: a message is taken whole or
 * not at all. */
static int check_table(const msgpack_object_map *map, err_t *err)
{
    for (uint32_t i = 0; i < map->size; i++) {
        const msgpack_object *key = &map->ptr[i].key;
        if (check_text(key, 1, META_NAME_MAX, "name", NULL, err) < 0) {
            err_wrap(err, -EPROTO, "key %" PRIu32, i);
            return -EPROTO;
        }
        if (check_entry(key, &map->ptr[i].val, err) < 0)
            return -EPROTO;
    }
    return 0;
}

/* A node may contribute at most m->max_names names: a full table or a
 * change that would take it past that is refused whole. Why a bound: the
 * message limit alone admits ~150k tiny names per message and a node could
 * send such messages forever; one node must not be able to fill the
 * metalocator's memory. */
static int check_names_cap(const meta_t *m, const meta_node_t *node, const msgpack_object_map *map,
                           bool full, err_t *err)
{
    size_t total = full ? 0 : node->names;
    for (uint32_t i = 0; i < map->size; i++) {
        const msgpack_object *key = &map->ptr[i].key;
        if (map->ptr[i].val.via.array.ptr[0].via.array.size == 0)
            continue;
        if (!full) {
            size_t klen;
            const char *k = obj_bytes(key, &klen);
            meta_name_t *nm = names_find(m, k, klen, meta_hash(k, klen));
            size_t at;
            if (nm && name_contrib(nm, node, &at))
                continue;
        }
        if (++total > m->max_names)
            return err_set(err, -EPROTO, "the node would contribute more than %zu names",
                           m->max_names);
    }
    return 0;
}

/* Set (n > 0) or remove (n == 0) the node's contribution for one checked
 * name, and recompute the name if that changed anything. */
static void merge_apply(meta_t *m, meta_node_t *node, const msgpack_object *key,
                        const msgpack_object *val)
{
    size_t klen;
    const char *k = obj_bytes(key, &klen);
    const msgpack_object *e = val->via.array.ptr;
    const msgpack_object_array *eps = &e[0].via.array;
    uint64_t h = meta_hash(k, klen);
    meta_name_t *nm = names_find(m, k, klen, h);
    size_t at = 0;
    meta_contrib_t *c = nm ? name_contrib(nm, node, &at) : NULL;
    if (eps->size == 0) {
        if (!c)
            return;
        name_drop_contrib(nm, at);
        name_recompute(m, nm);
        return;
    }
    int64_t version = 0;
    (void)obj_int64(&e[1], &version);
    size_t alen;
    const char *api = obj_bytes(&e[2], &alen);
    if (!nm)
        nm = names_add(m, k, klen, h);
    if (!c) {
        if (nm->n == nm->cap) {
            nm->cap = nm->cap ? nm->cap * 2 : 2;
            nm->c = xrealloc(nm->c, nm->cap * sizeof(nm->c[0]));
        }
        c = &nm->c[nm->n++];
        memset(c, 0, sizeof(*c));
        c->node = node;
        node->names++;
    } else {
        contrib_clear(c);
    }
    c->gen = node->gen;
    c->version = version;
    c->api = xstrndup(api, alen);
    if (val->via.array.size >= 4) {
        msgpack_sbuffer sb;
        attrs_pack(&e[3], &sb);
        c->attrs = xmalloc(sb.size ? sb.size : 1);
        memcpy(c->attrs, sb.data, sb.size);
        c->attrs_len = sb.size;
        msgpack_sbuffer_destroy(&sb);
    }
    c->eps = xcalloc(eps->size, sizeof(*c->eps));
    for (uint32_t i = 0; i < eps->size; i++) {
        size_t hlen;
        const char *host = obj_bytes(&eps->ptr[i].via.array.ptr[0], &hlen);
        c->eps[i].host = xstrndup(host, hlen);
        c->eps[i].port = (int)eps->ptr[i].via.array.ptr[1].via.u64;
    }
    c->n = eps->size;
    name_recompute(m, nm);
}

/* The "revision" header: decimal text, as the locator writes it. */
static int msg_revision(const rpc_msg_t *msg, uint64_t *rev, err_t *err)
{
    const char *v;
    size_t len;
    if (rpc_msg_header(msg, "revision", &v, &len) < 0)
        return err_set(err, -EPROTO, "write without a revision header");
    char text[24];
    int64_t r;
    if (len == 0 || len >= sizeof(text) || memchr(v, '\0', len))
        return err_set(err, -EPROTO, "revision header is not a revision");
    memcpy(text, v, len);
    text[len] = '\0';
    if (text[0] < '0' || text[0] > '9' || str_to_i64(text, 0, INT64_MAX, &r) < 0) {
        char shown[24];
        meta_printable(shown, sizeof(shown), v, len);
        return err_set(err, -EPROTO, "revision header \"%s\" is not a revision", shown);
    }
    *rev = (uint64_t)r;
    return 0;
}

/* error [[category, code], message] from the locator: how it ended our
 * subscription, for the node's last_error. */
static int msg_remote_error(const rpc_msg_t *msg, err_t *err)
{
    const char *text = "";
    size_t len = 0;
    if (msg->nargs >= 2 && obj_is_bytes(&msg->args[1]))
        text = obj_bytes(&msg->args[1], &len);
    char shown[200];
    meta_printable(shown, sizeof(shown), text, len);
    uint64_t cat = 0, code = 0;
    if (msg->nargs >= 1 && msg->args[0].type == MSGPACK_OBJECT_ARRAY &&
        msg->args[0].via.array.size == 2 &&
        msg->args[0].via.array.ptr[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
        msg->args[0].via.array.ptr[1].type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        cat = msg->args[0].via.array.ptr[0].via.u64;
        code = msg->args[0].via.array.ptr[1].via.u64;
    }
    return err_set(err, -ECONNABORTED,
                   "locator ended the subscription with error [%" PRIu64 ", %" PRIu64 "] \"%s\"",
                   cat, code, shown);
}

/* One message on a link. 0, or a negative errno that ends the link. */
/* Channel 2: routing groups. Every value is checked before the callback
 * sees any of it; a refusal or close (a locator without groups) only ends
 * that channel. */
static int link_groups(meta_link_t *l, const rpc_msg_t *msg, err_t *err)
{
    meta_t *m = l->m;
    if (msg->type == RPC_ERROR || msg->type == RPC_CLOSE) {
        log_debug("meta", "node %s: routing channel ended", l->node->id);
        return 0;
    }
    const msgpack_object_map *map = NULL;
    if (msg->type != RPC_WRITE || rpc_args_count(msg, 1, 1, err) < 0 ||
        rpc_arg_map(msg, 0, &map, err) < 0)
        return err_wrap(err, -EPROTO, "routing message %" PRIu64, msg->index);
    for (uint32_t i = 0; i < map->size; i++) {
        const msgpack_object *k = &map->ptr[i].key, *v = &map->ptr[i].val;
        if (check_text(k, 1, META_NAME_MAX, "group name", NULL, err) < 0)
            return -EPROTO;
        if (v->type != MSGPACK_OBJECT_ARRAY)
            return err_set(err, -EPROTO, "routing message %" PRIu64 ": group members are %s",
                           msg->index, rpc_object_type_name(v));
        for (uint32_t j = 0; j < v->via.array.size; j++) {
            const msgpack_object *mem = &v->via.array.ptr[j];
            if (mem->type != MSGPACK_OBJECT_ARRAY || mem->via.array.size < 2 ||
                check_text(&mem->via.array.ptr[0], 1, META_NAME_MAX, "group member", NULL, err) <
                    0 ||
                mem->via.array.ptr[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
                mem->via.array.ptr[1].via.u64 > UINT32_MAX)
                return err_set(err, -EPROTO,
                               "routing message %" PRIu64 ": member %" PRIu32
                               " is not [name, weight]",
                               msg->index, j);
        }
    }
    bool full = !l->groups_full;
    l->groups_full = true;
    m->on_groups(l->node->id, map, full, m->groups_data);
    return 0;
}

static int link_handle(meta_link_t *l, const rpc_msg_t *msg, err_t *err)
{
    meta_t *m = l->m;
    meta_node_t *node = l->node;
    if (msg->channel == RPC_CONTROL_CHANNEL + 1 && m->on_groups)
        return link_groups(l, msg, err);
    if (msg->channel != RPC_CONTROL_CHANNEL)
        return err_set(err, -EPROTO,
                       "message %" PRIu64 " on channel %" PRIu64 ", only channel 1 was opened",
                       msg->index, msg->channel);
    if (msg->type == RPC_ERROR)
        return msg_remote_error(msg, err);
    if (msg->type == RPC_CLOSE)
        return err_set(err, -ECONNABORTED, "locator closed the subscription");
    if (msg->type != RPC_WRITE)
        return err_set(err, -EPROTO, "message %" PRIu64 ": unexpected type %" PRIu64, msg->index,
                       msg->type);
    uint64_t rev = 0;
    const msgpack_object_map *map = NULL;
    if (msg_revision(msg, &rev, err) < 0 || rpc_args_count(msg, 1, 1, err) < 0 ||
        rpc_arg_map(msg, 0, &map, err) < 0 || check_table(map, err) < 0 ||
        check_names_cap(m, node, map, !l->synced, err) < 0) {
        err_wrap(err, -EPROTO, "message %" PRIu64, msg->index);
        return -EPROTO;
    }
    if (l->synced && rev != l->rev + 1)
        return err_set(err, -EPROTO,
                       "message %" PRIu64 ": revision %" PRIu64 " after %" PRIu64
                       " (changes must come one revision at a time)",
                       msg->index, rev, l->rev);
    if (!l->synced) {
        /* The full table: it replaces whatever the node contributed. */
        node->gen++;
        size_t before = node->names;
        for (uint32_t i = 0; i < map->size; i++)
            merge_apply(m, node, &map->ptr[i].key, &map->ptr[i].val);
        /* Names applied above carry the new generation; the rest are gone
         * from the node. Skip the sweep when nothing older can remain. */
        if (before)
            merge_drop_node(m, node, true, node->gen);
        l->synced = true;
        node->synced = true;
        node->links++;
        node->state = META_LINK_UP;
        node->backoff_ms = m->backoff_start;
        node->warned = false;
        if (node->stale) {
            node->stale = false;
            if (m->loop)
                uv_timer_stop(&node->stale_timer);
        }
        if (m->loop)
            uv_timer_stop(&node->timer); /* the connect timeout */
        log_info("meta", "node %s (%s): synced at revision %" PRIu64 ", %zu names", node->id,
                 node->addr, rev, node->names);
    } else {
        for (uint32_t i = 0; i < map->size; i++)
            merge_apply(m, node, &map->ptr[i].key, &map->ptr[i].val);
    }
    l->rev = rev;
    node->revision = rev;
    return 0;
}

/* ---- links --------------------------------------------------------------- */

static void node_link_fail(meta_node_t *node, int code, const char *why);
static void link_flush(meta_link_t *l);

static meta_link_t *link_new(meta_node_t *node)
{
    meta_t *m = node->m;
    meta_link_t *l = xcalloc(1, sizeof(*l));
    l->m = m;
    l->node = node;
    l->seq = ++m->next_link_seq;
    rpc_decoder_init(&l->dec, m->max_message);
    buf_init(&l->out, META_OUT_MAX);
    buf_init(&l->wout, 0);
    l->tcp.data = l->creq.data = l->wreq.data = l;
    node->link = l;
    m->refs++;
    return l;
}

static void link_free(meta_link_t *l)
{
    meta_t *m = l->m;
    rpc_decoder_free(&l->dec);
    buf_free(&l->out);
    buf_free(&l->wout);
    free(l);
    meta_unref(m);
}

static void link_on_close(uv_handle_t *h)
{
    link_free(h->data);
}

/* Detach the link from its node and close it; pending connect and write
 * callbacks come back with UV_ECANCELED before the close callback. */
static void link_close(meta_link_t *l)
{
    if (l->node && l->node->link == l)
        l->node->link = NULL;
    l->node = NULL;
    if (l->m->loop)
        uv_close((uv_handle_t *)&l->tcp, link_on_close);
    else
        link_free(l);
}

static void link_on_write(uv_write_t *w, int status)
{
    meta_link_t *l = w->data;
    l->writing = false;
    buf_reset(&l->wout);
    if (!l->node)
        return;
    if (status < 0) {
        char why[96];
        snprintf(why, sizeof(why), "write: %s", uv_strerror(status));
        node_link_fail(l->node, status, why);
        return;
    }
    link_flush(l);
}

/* Send connect (once) and the newest ack. There is at most one write in
 * flight; an ack decided meanwhile is sent when it completes (a later ack
 * covers the earlier ones), so output stays one or two small messages. */
static void link_flush(meta_link_t *l)
{
    meta_node_t *node = l->node;
    if (!node || l->writing)
        return;
    if (!l->connect_sent) {
        if (rpc_encode(&l->out, RPC_CONTROL_CHANNEL, RPC_LOCATOR_CONNECT, "s", l->m->uuid) < 0)
            abort(); /* META_OUT_MAX holds a connect with the longest uuid */
        if (l->m->on_groups &&
            rpc_encode(&l->out, RPC_CONTROL_CHANNEL + 1, RPC_LOCATOR_ROUTING, "s", l->m->uuid) < 0)
            abort(); /* and a routing request too */
        l->connect_sent = true;
    }
    if (l->ack_want > l->ack_sent) {
        if (rpc_encode(&l->out, RPC_CONTROL_CHANNEL, LOC_ACK, "U", l->ack_want) < 0)
            abort(); /* out holds at most connect and one ack */
        l->ack_sent = l->ack_want;
    }
    if (l->out.len == 0)
        return;
    if (!l->m->loop) {
        if (node->sink.len + l->out.len <= META_SINK_MAX)
            (void)buf_append(&node->sink, l->out.data, l->out.len);
        buf_reset(&l->out);
        return;
    }
    uv_buf_t b = uv_buf_init(l->out.data, (unsigned)l->out.len);
    int n = uv_try_write((uv_stream_t *)&l->tcp, &b, 1);
    if (n < 0 && n != UV_EAGAIN) {
        char why[96];
        snprintf(why, sizeof(why), "write: %s", uv_strerror(n));
        node_link_fail(node, n, why);
        return;
    }
    if (n > 0 && (size_t)n == l->out.len) {
        buf_reset(&l->out);
        return;
    }
    if (n > 0)
        buf_consume(&l->out, (size_t)n);
    buf_t t = l->wout;
    l->wout = l->out;
    l->out = t;
    l->out.max = META_OUT_MAX;
    b = uv_buf_init(l->wout.data, (unsigned)l->wout.len);
    int rc = uv_write(&l->wreq, (uv_stream_t *)&l->tcp, &b, 1, link_on_write);
    if (rc < 0) {
        char why[96];
        snprintf(why, sizeof(why), "write: %s", uv_strerror(rc));
        node_link_fail(node, rc, why);
        return;
    }
    l->writing = true;
}

static void link_ack(meta_link_t *l, uint64_t rev)
{
    if (rev > l->ack_want)
        l->ack_want = rev;
    link_flush(l);
}

static void ticket_on_confirmed(uint64_t revision, size_t confirmed, size_t pending,
                                const char *pending_names, void *data);

static int downstream_confirm(void *ctx, uint64_t merged_revision, uint64_t timeout_ms,
                              loc_confirm_fn cb, void *cb_data)
{
    return loc_server_wait_confirmed(ctx, merged_revision, timeout_ms, cb, cb_data);
}

/* Wait for the downstream routers to confirm merged revision
 * l->confirm_merged, then ack l->confirm_rev to the node. */
static void link_wait_downstream(meta_link_t *l)
{
    meta_t *m = l->m;
    meta_node_t *node = l->node;
    size_t idlen = strlen(node->id);
    meta_ticket_t *t = xcalloc(1, sizeof(*t) + idlen + 1);
    memcpy(t->node_id, node->id, idlen);
    t->m = m;
    t->link_seq = l->seq;
    t->rev = l->confirm_rev;
    int rc =
        m->confirm(m->confirm_ctx, l->confirm_merged, m->confirm_timeout, ticket_on_confirmed, t);
    if (rc < 0) {
        /* The downstream server is stopping: no router follows it. */
        log_debug("meta", "node %s: downstream wait: %s; acking %" PRIu64, node->id, strerror(-rc),
                  t->rev);
        link_ack(l, t->rev);
        free(t);
        return;
    }
    l->ticket_out = true;
    t->next = m->tickets;
    if (m->tickets)
        m->tickets->prev = t;
    m->tickets = t;
}

/* The node's revisions up to l->rev are applied: ack them now, or once
 * the downstream routers confirmed the merged revision holding them. One
 * wait per link is outstanding at a time (a later one covers everything
 * applied meanwhile), so routers that never ack cost one waiter per node,
 * not one per change. */
static void link_applied(meta_link_t *l)
{
    meta_t *m = l->m;
    if (!m->confirm || !m->loop) {
        link_ack(l, l->rev);
        return;
    }
    l->confirm_rev = l->rev;
    l->confirm_merged = loc_table_revision(m->merged);
    if (!l->ticket_out)
        link_wait_downstream(l);
}

static meta_node_t *node_find(const meta_t *m, const char *id);

static void ticket_on_confirmed(uint64_t revision, size_t confirmed, size_t pending,
                                const char *pending_names, void *data)
{
    meta_ticket_t *t = data;
    meta_t *m = t->m;
    if (!m) {
        free(t); /* orphaned by meta_stop */
        return;
    }
    if (t->prev)
        t->prev->next = t->next;
    else
        m->tickets = t->next;
    if (t->next)
        t->next->prev = t->prev;
    meta_node_t *node = node_find(m, t->node_id);
    meta_link_t *l = node ? node->link : NULL;
    if (l && l->seq == t->link_seq) {
        l->ticket_out = false;
        if (pending == 0)
            link_ack(l, t->rev);
        else
            log_warn("meta",
                     "node %s: revision %" PRIu64 " not acked: downstream merged revision %" PRIu64
                     " unconfirmed by %s",
                     t->node_id, t->rev, revision, pending_names);
        /* link_ack may have failed the link. */
        if (l->node && l->confirm_rev > t->rev)
            link_wait_downstream(l);
    }
    free(t);
}

/* Everything that arrived on a link: apply each whole message, then ack. */
static int link_input(meta_link_t *l, const char *p, size_t n, err_t *err)
{
    rpc_decoder_feed(&l->dec, p, n);
    rpc_msg_t msg;
    uint64_t before = l->rev;
    bool was_synced = l->synced;
    int rc;
    while ((rc = rpc_decoder_next(&l->dec, &msg, err)) == 1) {
        rc = link_handle(l, &msg, err);
        if (rc < 0)
            break;
    }
    if (rc < 0)
        return rc;
    if (l->synced && (!was_synced || l->rev != before))
        link_applied(l);
    return 0;
}

static void link_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    meta_link_t *l = h->data;
    *b = uv_buf_init(l->m->rbuf, META_READ_SIZE);
}

static void link_on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    meta_link_t *l = st->data;
    if (!l->node || nread == 0)
        return;
    if (nread < 0) {
        char why[96];
        if (nread == UV_EOF)
            snprintf(why, sizeof(why), "locator closed the connection");
        else
            snprintf(why, sizeof(why), "read: %s", uv_strerror((int)nread));
        node_link_fail(l->node, (int)nread, why);
        return;
    }
    err_t err = {0};
    int rc = link_input(l, b->base, (size_t)nread, &err);
    if (rc < 0 && l->node)
        node_link_fail(l->node, rc, err.msg);
}

/* Notice a node that vanished without closing: keepalive probes on an
 * idle link, and a bound on how long our acks may stay unacknowledged. */
static void link_tune_socket(meta_link_t *l)
{
    uv_tcp_nodelay(&l->tcp, 1);
    uv_tcp_keepalive(&l->tcp, 1, META_KEEPALIVE_IDLE_S);
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&l->tcp, &fd) == 0) {
        int intvl = META_KEEPALIVE_INTVL_S, cnt = META_KEEPALIVE_CNT;
        unsigned timeout_ms =
            (META_KEEPALIVE_IDLE_S + META_KEEPALIVE_INTVL_S * META_KEEPALIVE_CNT) * 1000;
        (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
        (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
        (void)setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &timeout_ms, sizeof(timeout_ms));
    }
}

static void link_on_connect(uv_connect_t *req, int status)
{
    meta_link_t *l = req->data;
    meta_node_t *node = l->node;
    if (!node || status == UV_ECANCELED)
        return;
    if (status < 0) {
        char why[128];
        snprintf(why, sizeof(why), "connect: %s", uv_strerror(status));
        node_link_fail(node, status, why);
        return;
    }
    link_tune_socket(l);
    int rc = uv_read_start((uv_stream_t *)&l->tcp, link_on_alloc, link_on_read);
    if (rc < 0) {
        char why[128];
        snprintf(why, sizeof(why), "read start: %s", uv_strerror(rc));
        node_link_fail(node, rc, why);
        return;
    }
    node->state = META_LINK_SYNCING;
    log_debug("meta", "node %s (%s): connected, subscribing", node->id, node->addr);
    link_flush(l);
}

static void link_open(meta_node_t *node, const struct sockaddr *sa)
{
    meta_link_t *l = link_new(node);
    uv_tcp_init(node->m->loop, &l->tcp);
    node->state = META_LINK_CONNECTING;
    int rc = uv_tcp_connect(&l->creq, &l->tcp, sa, link_on_connect);
    if (rc < 0) {
        char why[128];
        snprintf(why, sizeof(why), "connect: %s", uv_strerror(rc));
        node_link_fail(node, rc, why);
    }
}

/* ---- nodes --------------------------------------------------------------- */

static void node_connect(meta_node_t *node);

static void node_free(meta_node_t *node)
{
    meta_t *m = node->m;
    free(node->id);
    free(node->addr);
    free(node->host);
    buf_free(&node->sink);
    free(node);
    meta_unref(m);
}

static void node_unref(meta_node_t *node)
{
    if (--node->refs == 0 && node->removed)
        node_free(node);
}

static void node_on_timer_close(uv_handle_t *h)
{
    node_unref(h->data);
}

static void node_on_stale(uv_timer_t *t)
{
    meta_node_t *node = t->data;
    node->stale = false;
    log_warn("meta", "node %s (%s): down for %" PRIu64 " ms, dropping its %zu names", node->id,
             node->addr, node->m->stale_ms, node->names);
    merge_drop_node(node->m, node, false, 0);
}

static void node_on_timer(uv_timer_t *t)
{
    meta_node_t *node = t->data;
    if (node->state == META_LINK_IDLE) {
        node_connect(node);
        return;
    }
    char why[96];
    snprintf(why, sizeof(why), "%s timed out after %" PRIu64 " ms",
             node->state == META_LINK_SYNCING ? "waiting for the full table" : "connect",
             node->m->connect_timeout);
    node_link_fail(node, -ETIMEDOUT, why);
}

/* The link failed or is being replaced: close it, keep the endpoints for
 * the stale grace, and schedule the next attempt. `code` 0 is not a
 * failure (the address changed) and reconnects at once. */
static void node_link_down(meta_node_t *node, int code, const char *why)
{
    meta_t *m = node->m;
    if (node->link)
        link_close(node->link);
    node->state = META_LINK_IDLE;
    /* A node that stays down fails the same way every few seconds: say so
     * once, then only at debug level. */
    bool repeat = node->warned && strcmp(node->last_error, why) == 0;
    if (code)
        snprintf(node->last_error, sizeof(node->last_error), "%s", why);
    if (!m->loop)
        return;
    uv_timer_stop(&node->timer);
    if (node->names && !node->stale) {
        node->stale = true;
        uv_timer_start(&node->stale_timer, node_on_stale, m->stale_ms, 0);
    }
    if (!code) {
        node_connect(node);
        return;
    }
    uint64_t d = node->backoff_ms;
    uint64_t delay = d / 2 + meta_rand(m) % (d - d / 2 + 1);
    node->backoff_ms = d * 2 < m->backoff_max ? d * 2 : m->backoff_max;
    uv_timer_start(&node->timer, node_on_timer, delay, 0);
    if (repeat)
        log_debug("meta", "node %s (%s): %s; retrying in %" PRIu64 " ms", node->id, node->addr, why,
                  delay);
    else
        log_warn("meta", "node %s (%s): %s; retrying in %" PRIu64 " ms%s", node->id, node->addr,
                 why, delay, node->stale ? " (its endpoints are kept meanwhile)" : "");
    node->warned = true;
}

static void node_link_fail(meta_node_t *node, int code, const char *why)
{
    node->failures++;
    node_link_down(node, code ? code : -EIO, why);
}

static void node_on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    meta_node_t *node = req->data;
    node->gai_busy = false;
    if (node->removed || node->m->stopping) {
        uv_freeaddrinfo(res);
        node_unref(node);
        return;
    }
    node->refs--; /* not removed: refs cannot reach 0 here (timers) */
    if (node->gai_outdated) {
        node->gai_outdated = false;
        uv_freeaddrinfo(res);
        node_connect(node);
        return;
    }
    if (node->state != META_LINK_RESOLVING) {
        uv_freeaddrinfo(res); /* timed out meanwhile */
        return;
    }
    if (status < 0 || !res) {
        char why[160];
        snprintf(why, sizeof(why), "looking up %s: %s", node->host,
                 status < 0 ? uv_strerror(status) : "no address");
        uv_freeaddrinfo(res);
        node_link_fail(node, status < 0 ? status : -EHOSTUNREACH, why);
        return;
    }
    /* Successive attempts go round the addresses, so a name with an
     * unreachable first address (::1 before 127.0.0.1) still connects. */
    size_t count = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
        count++;
    struct addrinfo *pick = res;
    for (size_t i = node->failures % count; i > 0; i--)
        pick = pick->ai_next;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    memcpy(&ss, pick->ai_addr, pick->ai_addrlen < sizeof(ss) ? pick->ai_addrlen : sizeof(ss));
    uv_freeaddrinfo(res);
    link_open(node, (const struct sockaddr *)&ss);
}

/* One connection attempt, bounded by the connect timeout. */
static void node_connect(meta_node_t *node)
{
    meta_t *m = node->m;
    if (!m->loop || node->removed || m->stopping || node->link)
        return;
    uv_timer_stop(&node->timer);
    uv_timer_start(&node->timer, node_on_timer, m->connect_timeout, 0);
    if (node->numeric) {
        link_open(node, (const struct sockaddr *)&node->sa);
        return;
    }
    node->state = META_LINK_RESOLVING;
    if (node->gai_busy)
        return; /* its callback sees the state and goes on */
    char port[8];
    snprintf(port, sizeof(port), "%d", node->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    node->gai.data = node;
    int rc = uv_getaddrinfo(m->loop, &node->gai, node_on_resolved, node->host, port, &hints);
    if (rc < 0) {
        char why[160];
        snprintf(why, sizeof(why), "looking up %s: %s", node->host, uv_strerror(rc));
        node_link_fail(node, rc, why);
        return;
    }
    node->gai_busy = true;
    node->refs++;
}

static meta_node_t *node_find(const meta_t *m, const char *id)
{
    for (meta_node_t *n = m->nodes; n; n = n->next) {
        int c = strcmp(n->id, id);
        if (c == 0)
            return n;
        if (c > 0)
            break;
    }
    return NULL;
}

/* Parse host_port into the node (address fields only). */
static int node_set_addr(meta_node_t *node, const char *host_port)
{
    char *host = NULL;
    int port = 0;
    if (str_split_hostport(host_port, &host, &port) < 0)
        return -EINVAL;
    if (!*host || port == 0 || strlen(host) > META_HOST_MAX) {
        free(host);
        return -EINVAL;
    }
    free(node->addr);
    free(node->host);
    node->addr = xstrdup(host_port);
    node->host = host;
    node->port = port;
    memset(&node->sa, 0, sizeof(node->sa));
    node->numeric = uv_ip4_addr(host, port, (struct sockaddr_in *)&node->sa) == 0 ||
                    uv_ip6_addr(host, port, (struct sockaddr_in6 *)&node->sa) == 0;
    return 0;
}

static bool node_id_ok(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > META_NODE_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)id[i] < 0x21 || (unsigned char)id[i] == 0x7f)
            return false;
    return true;
}

int meta_node_add(meta_t *m, const char *node_id, const char *host_port)
{
    if (m->stopping)
        return -ESHUTDOWN;
    if (!node_id || !node_id_ok(node_id)) {
        log_warn("meta", "node id \"%s\": expected 1 to %d printable characters, no spaces",
                 node_id ? node_id : "(null)", META_NODE_ID_MAX);
        return -EINVAL;
    }
    if (!host_port) {
        log_warn("meta", "node %s: no locator address", node_id);
        return -EINVAL;
    }
    meta_node_t *node = node_find(m, node_id);
    if (node) {
        if (strcmp(node->addr, host_port) == 0)
            return 0;
        char *old = xstrdup(node->addr);
        if (node_set_addr(node, host_port) < 0) {
            log_warn("meta", "node %s: locator address \"%s\": expected host:port", node_id,
                     host_port);
            free(old);
            return -EINVAL;
        }
        log_info("meta", "node %s: locator moved from %s to %s", node_id, old, host_port);
        free(old);
        node->backoff_ms = m->backoff_start;
        if (node->gai_busy)
            node->gai_outdated = true;
        node_link_down(node, 0, "address changed");
        return 0;
    }
    if (m->n_nodes >= m->max_nodes) {
        log_warn("meta", "node %s: refused, %zu nodes followed already (the limit)", node_id,
                 m->n_nodes);
        return -EMFILE;
    }
    node = xcalloc(1, sizeof(*node));
    node->m = m;
    if (node_set_addr(node, host_port) < 0) {
        log_warn("meta", "node %s: locator address \"%s\": expected host:port", node_id, host_port);
        free(node);
        return -EINVAL;
    }
    node->id = xstrdup(node_id);
    node->backoff_ms = m->backoff_start;
    buf_init(&node->sink, META_SINK_MAX);
    meta_node_t **p = &m->nodes;
    while (*p && strcmp((*p)->id, node_id) < 0)
        p = &(*p)->next;
    node->next = *p;
    *p = node;
    m->n_nodes++;
    m->refs++;
    if (m->loop) {
        uv_timer_init(m->loop, &node->timer);
        uv_timer_init(m->loop, &node->stale_timer);
        node->timer.data = node->stale_timer.data = node;
        node->refs = 2;
        log_info("meta", "node %s: following its locator at %s", node_id, host_port);
        node_connect(node);
    } else {
        link_new(node);
        node->state = META_LINK_SYNCING;
        link_flush(node->link);
    }
    return 0;
}

/* Close what the node holds; it is freed once its timers closed and its
 * lookup came back. It must already be unlinked from the list. */
static void node_release(meta_node_t *node)
{
    meta_t *m = node->m;
    node->removed = true;
    if (node->link)
        link_close(node->link);
    if (!m->loop) {
        node_free(node);
        return;
    }
    if (node->gai_busy)
        uv_cancel((uv_req_t *)&node->gai);
    uv_close((uv_handle_t *)&node->timer, node_on_timer_close);
    uv_close((uv_handle_t *)&node->stale_timer, node_on_timer_close);
}

void meta_node_remove(meta_t *m, const char *node_id)
{
    if (m->stopping || !node_id)
        return;
    for (meta_node_t **p = &m->nodes; *p; p = &(*p)->next) {
        meta_node_t *node = *p;
        if (strcmp(node->id, node_id) != 0)
            continue;
        *p = node->next;
        m->n_nodes--;
        log_info("meta", "node %s (%s): removed, dropping its %zu names", node->id, node->addr,
                 node->names);
        merge_drop_node(m, node, false, 0);
        node_release(node);
        return;
    }
}

size_t meta_node_count(const meta_t *m)
{
    return m->n_nodes;
}

static void node_info(const meta_node_t *node, meta_node_info_t *out)
{
    const meta_link_t *l = node->link;
    *out = (meta_node_info_t){
        .id = node->id,
        .addr = node->addr,
        .state = node->state,
        .connected = node->state == META_LINK_SYNCING || node->state == META_LINK_UP,
        .synced = node->synced,
        .stale = node->stale,
        .revision = node->revision,
        .acked = l ? l->ack_sent : 0,
        .names = node->names,
        .links = node->links,
        .failures = node->failures,
        .last_error = node->last_error,
    };
}

void meta_nodes_foreach(const meta_t *m, int (*fn)(const meta_node_info_t *n, void *data),
                        void *data)
{
    for (const meta_node_t *node = m->nodes; node; node = node->next) {
        meta_node_info_t info;
        node_info(node, &info);
        if (fn(&info, data))
            return;
    }
}

int meta_node_info(const meta_t *m, const char *node_id, meta_node_info_t *out)
{
    const meta_node_t *node = node_find(m, node_id);
    if (!node)
        return -ENOENT;
    node_info(node, out);
    return 0;
}

const char *meta_link_state_name(meta_link_state_t s)
{
    switch (s) {
    case META_LINK_IDLE: return "idle";
    case META_LINK_RESOLVING: return "resolving";
    case META_LINK_CONNECTING: return "connecting";
    case META_LINK_SYNCING: return "syncing";
    case META_LINK_UP: return "up";
    }
    return "?";
}

const char *meta_uuid(const meta_t *m)
{
    return m->uuid;
}

/* ---- the metalocator ----------------------------------------------------- */

static int meta_configure(meta_t *m, const meta_opts_t *opts, err_t *err)
{
    meta_opts_t o = {0};
    if (opts)
        o = *opts;
    m->backoff_start = o.backoff_start_ms ? o.backoff_start_ms : META_BACKOFF_START_DEFAULT_MS;
    m->backoff_max = o.backoff_max_ms ? o.backoff_max_ms : META_BACKOFF_MAX_DEFAULT_MS;
    if (m->backoff_start > m->backoff_max)
        return err_set(err, -EINVAL,
                       "metalocator: backoff start %" PRIu64 " ms over its max %" PRIu64 " ms",
                       m->backoff_start, m->backoff_max);
    m->connect_timeout =
        o.connect_timeout_ms ? o.connect_timeout_ms : META_CONNECT_TIMEOUT_DEFAULT_MS;
    m->stale_ms = o.stale_ms ? o.stale_ms : META_STALE_DEFAULT_MS;
    m->confirm_timeout =
        o.confirm_timeout_ms ? o.confirm_timeout_ms : META_CONFIRM_TIMEOUT_DEFAULT_MS;
    m->max_message = o.max_message_bytes ? o.max_message_bytes : RPC_MAX_MESSAGE_DEFAULT;
    m->max_nodes = o.max_nodes ? o.max_nodes : META_MAX_NODES_DEFAULT;
    m->max_names = o.max_names_per_node ? o.max_names_per_node : META_MAX_NAMES_DEFAULT;
    if (o.downstream) {
        m->confirm = downstream_confirm;
        m->confirm_ctx = o.downstream;
    } else {
        m->confirm = o.confirm;
        m->confirm_ctx = o.confirm_ctx;
    }
    m->on_groups = o.on_groups;
    m->groups_data = o.groups_data;
    if (o.uuid) {
        size_t n = strlen(o.uuid);
        if (n == 0 || n > META_UUID_MAX)
            return err_set(err, -EINVAL, "metalocator: uuid is %zu bytes, expected 1 to %d", n,
                           META_UUID_MAX);
        m->uuid = xstrdup(o.uuid);
    } else {
        char host[UV_MAXHOSTNAMESIZE];
        size_t n = sizeof(host);
        m->uuid =
            xasprintf("metalocator-%s", uv_os_gethostname(host, &n) == 0 ? host : "localhost");
    }
    return 0;
}

static meta_t *meta_new(loc_table_t *merged)
{
    meta_t *m = xcalloc(1, sizeof(*m));
    m->merged = merged;
    m->rng = uv_hrtime() ^ (uint64_t)(uintptr_t)m;
    if (!m->rng)
        m->rng = 1;
    return m;
}

static void meta_free(meta_t *m)
{
    void (*done)(void *) = m->done;
    void *done_data = m->done_data;
    merge_forget_all(m);
    free(m->uuid);
    free(m->rbuf);
    free(m);
    if (done)
        done(done_data);
}

static void meta_unref(meta_t *m)
{
    if (--m->refs == 0 && m->stopping)
        meta_free(m);
}

static void meta_on_sentinel_close(uv_handle_t *h)
{
    meta_unref(h->data);
}

int meta_start(uv_loop_t *loop, loc_table_t *merged, const meta_opts_t *opts, meta_t **out,
               err_t *err)
{
    *out = NULL;
    meta_t *m = meta_new(merged);
    int rc = meta_configure(m, opts, err);
    if (rc < 0) {
        free(m->uuid);
        free(m);
        return rc;
    }
    m->loop = loop;
    m->rbuf = xmalloc(META_READ_SIZE);
    uv_timer_init(loop, &m->sentinel);
    m->sentinel.data = m;
    m->refs = 1;
    log_info("meta", "metalocator %s started", m->uuid);
    *out = m;
    return 0;
}

void meta_stop(meta_t *m, void (*done)(void *data), void *data)
{
    if (m->stopping)
        return;
    m->stopping = true;
    m->done = done;
    m->done_data = data;
    for (meta_ticket_t *t = m->tickets; t; t = t->next)
        t->m = NULL; /* freed by their callbacks, whenever those run */
    m->tickets = NULL;
    merge_forget_all(m);
    while (m->nodes) {
        meta_node_t *node = m->nodes;
        m->nodes = node->next;
        m->n_nodes--;
        node_release(node);
    }
    log_info("meta", "metalocator %s stopped", m->uuid);
    uv_close((uv_handle_t *)&m->sentinel, meta_on_sentinel_close);
}

/* ---- detached ------------------------------------------------------------ */

meta_t *meta_new_detached(loc_table_t *merged, const meta_opts_t *opts)
{
    meta_t *m = meta_new(merged);
    m->rng = 1;
    meta_opts_t o = {0};
    if (opts)
        o = *opts;
    o.downstream = NULL;
    o.confirm = NULL;
    if (meta_configure(m, &o, NULL) < 0)
        abort(); /* a programming error in the caller's options */
    return m;
}

void meta_free_detached(meta_t *m)
{
    m->stopping = true;
    m->refs++; /* held while nodes go, so m outlives the loop below */
    merge_forget_all(m);
    while (m->nodes) {
        meta_node_t *node = m->nodes;
        m->nodes = node->next;
        m->n_nodes--;
        node_release(node);
    }
    meta_unref(m);
}

int meta_node_feed(meta_t *m, const char *node_id, const void *bytes, size_t n, err_t *err)
{
    meta_node_t *node = node_find(m, node_id);
    if (!node)
        return err_set(err, -ENOENT, "no node %s", node_id);
    if (!node->link) {
        link_new(node);
        node->state = META_LINK_SYNCING;
        link_flush(node->link);
    }
    err_t e = {0};
    int rc = link_input(node->link, bytes, n, &e);
    if (rc < 0) {
        node_link_fail(node, rc, e.msg);
        return err_set(err, rc, "%s", e.msg);
    }
    return 0;
}

const buf_t *meta_node_output(const meta_t *m, const char *node_id)
{
    const meta_node_t *node = node_find(m, node_id);
    return node ? &node->sink : NULL;
}
