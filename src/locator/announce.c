#include "locator/announce.h"

#include "core/alloc.h"
#include "core/log.h"
#include "core/rpc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <msgpack.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#define MOD "announce"

/* Bounds on what the options may ask for, so a typo cannot make the
 * listener allocate gigabytes of hash buckets up front. */
#define MAX_NODES_LIMIT   ((size_t)1 << 20)
#define MAX_SOURCES_LIMIT ((size_t)1 << 16)
/* Slots probed for a source's bucket before the stalest one is reused. */
#define SOURCE_PROBES 8
/* The receive buffer is larger than a valid datagram so that a datagram a
 * little over the limit is seen whole and counted as oversize (a larger one
 * arrives truncated, flagged UV_UDP_PARTIAL, and is counted the same). */
#define RECV_BUF 2048

/* ---- validation ---------------------------------------------------------- */

/* A uuid is printable ASCII without spaces: it ends up in logs, in the
 * locator's cluster answers and in file names of metalocator state, where
 * control bytes or spaces would only cause trouble. */
static int uuid_check(const char *p, size_t len, err_t *err)
{
    if (len == 0 || len > ANNOUNCE_UUID_MAX)
        return err_set(err, -EINVAL, "uuid is %zu bytes, expected 1..%d", len, ANNOUNCE_UUID_MAX);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c < 0x21 || c > 0x7e)
            return err_set(err, -EINVAL, "uuid byte %zu is 0x%02x, expected printable ASCII", i, c);
    }
    return 0;
}

/* Host names follow RFC 1123 (letters, digits, '-', dot-separated labels of
 * at most 63 bytes); a last label of digits only is refused, so "1.2.3.400"
 * is a bad address rather than a host name. */
static bool hostname_ok(const char *s, size_t len)
{
    size_t label = 0;
    bool digits_only = true;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '.') {
            if (label == 0)
                return false;
            label = 0;
            digits_only = true;
            continue;
        }
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        bool digit = c >= '0' && c <= '9';
        if (!alpha && !digit && c != '-')
            return false;
        if (!digit)
            digits_only = false;
        if (++label > 63)
            return false;
    }
    return label > 0 && !digits_only;
}

/* Check an endpoint address and write its canonical form to out, so that
 * "::0:1" and "::1" or "Node-A" and "node-a" are one endpoint to a
 * listener comparing lists. */
static int addr_canon(const char *p, size_t len, char out[ANNOUNCE_ADDR_MAX + 1], err_t *err)
{
    if (len == 0 || len > ANNOUNCE_ADDR_MAX)
        return err_set(err, -EINVAL, "address is %zu bytes, expected 1..%d", len,
                       ANNOUNCE_ADDR_MAX);
    char tmp[ANNOUNCE_ADDR_MAX + 1];
    memcpy(tmp, p, len);
    tmp[len] = '\0';
    if (strlen(tmp) != len)
        return err_set(err, -EINVAL, "address contains a NUL byte");
    if (memchr(tmp, ':', len)) {
        struct in6_addr a6;
        if (inet_pton(AF_INET6, tmp, &a6) != 1 ||
            !inet_ntop(AF_INET6, &a6, out, ANNOUNCE_ADDR_MAX + 1))
            return err_set(err, -EINVAL, "address \"%s\" is not an IPv6 address", tmp);
        return 0;
    }
    struct in_addr a4;
    if (inet_pton(AF_INET, tmp, &a4) == 1) {
        inet_ntop(AF_INET, &a4, out, ANNOUNCE_ADDR_MAX + 1);
        return 0;
    }
    if (!hostname_ok(tmp, len))
        return err_set(err, -EINVAL, "address \"%s\" is neither an IP address nor a host name",
                       tmp);
    for (size_t i = 0; i <= len; i++)
        out[i] = (char)((tmp[i] >= 'A' && tmp[i] <= 'Z') ? tmp[i] - 'A' + 'a' : tmp[i]);
    return 0;
}

/* ---- decoding -------------------------------------------------------------- */

/* Walk the msgpack headers of one object before msgpack-c sees it.
 * msgpack-c allocates an array's storage from the count in its header, so
 * a 5-byte "array of 2^32 elements" would cost it 100 GB; here every
 * announced element must still have at least one byte left in the
 * datagram, which bounds msgpack-c's allocations to a small multiple of
 * the datagram's size. Also refuses bytes after the object. */
static int scan_object(const unsigned char *p, size_t len, err_t *err)
{
    enum { PLAIN, BYTES, EXT, ARRAY, MAP };
    size_t off = 0;
    uint64_t pending = 1;
    while (pending) {
        if (off >= len)
            return err_set(err, -EPROTO, "datagram ends inside an object (%zu bytes)", len);
        size_t at = off;
        unsigned char b = p[off++];
        uint64_t children = 0, skip = 0;
        unsigned hlen = 0;
        int kind = PLAIN;
        if (b <= 0x7f || b >= 0xe0) {
            /* fixint */
        } else if (b <= 0x8f) {
            children = 2u * (b & 0x0fu);
        } else if (b <= 0x9f) {
            children = b & 0x0fu;
        } else if (b <= 0xbf) {
            skip = b & 0x1fu;
        } else {
            switch (b) {
            case 0xc0:
            case 0xc2:
            case 0xc3: break;
            case 0xc4:
            case 0xd9: hlen = 1, kind = BYTES; break;
            case 0xc5:
            case 0xda: hlen = 2, kind = BYTES; break;
            case 0xc6:
            case 0xdb: hlen = 4, kind = BYTES; break;
            case 0xc7: hlen = 1, kind = EXT; break;
            case 0xc8: hlen = 2, kind = EXT; break;
            case 0xc9: hlen = 4, kind = EXT; break;
            case 0xca: skip = 4; break;
            case 0xcb: skip = 8; break;
            case 0xcc:
            case 0xd0: skip = 1; break;
            case 0xcd:
            case 0xd1: skip = 2; break;
            case 0xce:
            case 0xd2: skip = 4; break;
            case 0xcf:
            case 0xd3: skip = 8; break;
            case 0xd4: skip = 2; break;
            case 0xd5: skip = 3; break;
            case 0xd6: skip = 5; break;
            case 0xd7: skip = 9; break;
            case 0xd8: skip = 17; break;
            case 0xdc: hlen = 2, kind = ARRAY; break;
            case 0xdd: hlen = 4, kind = ARRAY; break;
            case 0xde: hlen = 2, kind = MAP; break;
            case 0xdf: hlen = 4, kind = MAP; break;
            default: return err_set(err, -EPROTO, "byte %zu is 0x%02x, not msgpack", at, b);
            }
        }
        if (hlen) {
            if (len - off < hlen)
                return err_set(err, -EPROTO, "datagram ends inside an object (%zu bytes)", len);
            uint64_t v = 0;
            for (unsigned i = 0; i < hlen; i++)
                v = v << 8 | p[off++];
            switch (kind) {
            case BYTES: skip = v; break;
            case EXT: skip = v + 1; break; /* the type byte follows the length */
            case ARRAY: children = v; break;
            case MAP: children = 2 * v; break;
            }
        }
        if (skip > len - off)
            return err_set(err, -EPROTO, "object at byte %zu claims %" PRIu64 " bytes, %zu left",
                           at, skip, len - off);
        off += (size_t)skip;
        pending = pending - 1 + children;
        if (pending > len - off)
            return err_set(err, -EPROTO,
                           "container at byte %zu claims %" PRIu64 " elements, %zu bytes left", at,
                           children, len - off);
    }
    if (off != len)
        return err_set(err, -EPROTO, "%zu bytes after the msgpack object", len - off);
    return 0;
}

static int ep_cmp(const void *a, const void *b)
{
    const announce_endpoint_t *x = a, *y = b;
    int c = strcmp(x->addr, y->addr);
    return c ? c : (x->port > y->port) - (x->port < y->port);
}

/* Validate the object's shape and copy it into m. */
static int decode_object(const msgpack_object *o, announce_msg_t *m, err_t *err)
{
    if (o->type != MSGPACK_OBJECT_ARRAY)
        return err_set(err, -EINVAL, "datagram is %s, expected an array [uuid, endpoints]",
                       rpc_object_type_name(o));
    if (o->via.array.size < 2)
        return err_set(err, -EINVAL,
                       "datagram array has %" PRIu32 " elements, expected 2 [uuid, endpoints]",
                       o->via.array.size);
    const msgpack_object *uuid = &o->via.array.ptr[0], *eps = &o->via.array.ptr[1];
    if (uuid->type != MSGPACK_OBJECT_STR)
        return err_set(err, -EINVAL, "uuid is %s, expected a string", rpc_object_type_name(uuid));
    int rc = uuid_check(uuid->via.str.ptr, uuid->via.str.size, err);
    if (rc)
        return rc;
    memcpy(m->uuid, uuid->via.str.ptr, uuid->via.str.size);
    m->uuid[uuid->via.str.size] = '\0';
    if (eps->type != MSGPACK_OBJECT_ARRAY)
        return err_set(err, -EINVAL, "endpoints are %s, expected an array",
                       rpc_object_type_name(eps));
    if (eps->via.array.size < 1 || eps->via.array.size > ANNOUNCE_MAX_ENDPOINTS)
        return err_set(err, -EINVAL, "%" PRIu32 " endpoints, expected 1..%d", eps->via.array.size,
                       ANNOUNCE_MAX_ENDPOINTS);
    size_t n = eps->via.array.size;
    for (size_t i = 0; i < n; i++) {
        const msgpack_object *e = &eps->via.array.ptr[i];
        if (e->type != MSGPACK_OBJECT_ARRAY || e->via.array.size < 2)
            return err_set(err, -EINVAL, "endpoint %zu is %s, expected [addr, port]", i,
                           e->type == MSGPACK_OBJECT_ARRAY ? "a short array"
                                                           : rpc_object_type_name(e));
        const msgpack_object *addr = &e->via.array.ptr[0], *port = &e->via.array.ptr[1];
        if (addr->type != MSGPACK_OBJECT_STR)
            return err_set(err, -EINVAL, "endpoint %zu: address is %s, expected a string", i,
                           rpc_object_type_name(addr));
        if ((rc = addr_canon(addr->via.str.ptr, addr->via.str.size, m->addrs[i], err)))
            return err_wrap(err, rc, "endpoint %zu", i);
        if (port->type != MSGPACK_OBJECT_POSITIVE_INTEGER || port->via.u64 < 1 ||
            port->via.u64 > 65535) {
            if (port->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
                return err_set(err, -EINVAL, "endpoint %zu: port %" PRIu64 " out of range", i,
                               port->via.u64);
            return err_set(err, -EINVAL, "endpoint %zu: port is %s, expected 1..65535", i,
                           rpc_object_type_name(port));
        }
        m->eps[i].addr = m->addrs[i];
        m->eps[i].port = (int)port->via.u64;
    }
    /* Sorted and unique, so listeners compare lists with one pass and
     * report the same list however a sender ordered it. */
    qsort(m->eps, n, sizeof(m->eps[0]), ep_cmp);
    size_t k = 1;
    for (size_t i = 1; i < n; i++)
        if (ep_cmp(&m->eps[i], &m->eps[k - 1]) != 0)
            m->eps[k++] = m->eps[i];
    m->n = k;
    return 0;
}

int announce_decode(const void *data, size_t len, announce_msg_t *out, err_t *err)
{
    if (len > ANNOUNCE_MAX_DATAGRAM)
        return err_set(err, -EMSGSIZE, "datagram is %zu bytes, over %d", len,
                       ANNOUNCE_MAX_DATAGRAM);
    if (len == 0)
        return err_set(err, -EPROTO, "empty datagram");
    int rc = scan_object(data, len, err);
    if (rc)
        return rc;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack_next(&u, data, len, &off);
    if (ur != MSGPACK_UNPACK_SUCCESS || off != len)
        rc = err_set(err, -EPROTO, "not one msgpack object (msgpack-c says %d)", (int)ur);
    else
        rc = decode_object(&u.data, out, err);
    msgpack_unpacked_destroy(&u);
    return rc;
}

/* ---- encoding -------------------------------------------------------------- */

static int pack_write(void *data, const char *p, size_t n)
{
    return buf_append(data, p, n) ? -1 : 0;
}

int announce_encode(buf_t *out, const char *uuid, const announce_endpoint_t *eps, size_t n,
                    err_t *err)
{
    if (!uuid)
        return err_set(err, -EINVAL, "uuid is missing");
    int rc = uuid_check(uuid, strlen(uuid), err);
    if (rc)
        return rc;
    if (n < 1 || n > ANNOUNCE_MAX_ENDPOINTS || !eps)
        return err_set(err, -EINVAL, "%zu endpoints, expected 1..%d", n, ANNOUNCE_MAX_ENDPOINTS);
    char canon[ANNOUNCE_ADDR_MAX + 1];
    buf_t tmp = BUF_INIT(ANNOUNCE_MAX_DATAGRAM);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &tmp, pack_write);
    int bad = msgpack_pack_array(&pk, 2);
    bad |= msgpack_pack_str_with_body(&pk, uuid, strlen(uuid));
    bad |= msgpack_pack_array(&pk, n);
    for (size_t i = 0; i < n; i++) {
        if (!eps[i].addr) {
            rc = err_set(err, -EINVAL, "endpoint %zu: address is missing", i);
            goto out;
        }
        if ((rc = addr_canon(eps[i].addr, strlen(eps[i].addr), canon, err))) {
            err_wrap(err, rc, "endpoint %zu", i);
            goto out;
        }
        if (eps[i].port < 1 || eps[i].port > 65535) {
            rc = err_set(err, -EINVAL, "endpoint %zu: port %d out of range", i, eps[i].port);
            goto out;
        }
        bad |= msgpack_pack_array(&pk, 2);
        bad |= msgpack_pack_str_with_body(&pk, canon, strlen(canon));
        bad |= msgpack_pack_unsigned_int(&pk, (unsigned)eps[i].port);
    }
    if (bad) {
        rc = err_set(err, -EMSGSIZE, "announce of %zu endpoints is over %d bytes", n,
                     ANNOUNCE_MAX_DATAGRAM);
        goto out;
    }
    if (buf_append(out, tmp.data, tmp.len))
        rc = err_set(err, -ENOBUFS, "output buffer full");
out:
    buf_free(&tmp);
    return rc;
}

/* ---- options --------------------------------------------------------------- */

typedef struct cfg {
    struct sockaddr_in group; /* with the port */
    char group_str[INET_ADDRSTRLEN];
    int port;
    bool has_iface;
    struct in_addr iface;
    char iface_str[INET_ADDRSTRLEN];
    uint32_t interval_ms;
    int ttl;
    bool loop;
    size_t max_nodes;
    uint32_t rate, burst;
    size_t max_sources;
} cfg_t;

/* Fill in defaults and check every option once, before any handle exists,
 * so a bad option fails start without anything to clean up. */
static int cfg_resolve(const announce_opts_t *o, cfg_t *c, err_t *err)
{
    static const announce_opts_t none;
    if (!o)
        o = &none;
    memset(c, 0, sizeof(*c));
    const char *group = o->group ? o->group : ANNOUNCE_GROUP_DEFAULT;
    c->port = o->port ? o->port : ANNOUNCE_PORT_DEFAULT;
    if (c->port < 1 || c->port > 65535)
        return err_set(err, -EINVAL, "announce port %d out of range", o->port);
    c->group.sin_family = AF_INET;
    c->group.sin_port = htons((uint16_t)c->port);
    if (inet_pton(AF_INET, group, &c->group.sin_addr) != 1 ||
        !IN_MULTICAST(ntohl(c->group.sin_addr.s_addr)))
        return err_set(err, -EINVAL,
                       "announce group \"%s\" is not an IPv4 multicast address (224.0.0.0/4)",
                       group);
    inet_ntop(AF_INET, &c->group.sin_addr, c->group_str, sizeof(c->group_str));
    if (o->interface && o->interface[0]) {
        if (inet_pton(AF_INET, o->interface, &c->iface) != 1)
            return err_set(err, -EINVAL,
                           "announce interface \"%s\" is not the IPv4 address of an interface",
                           o->interface);
        c->has_iface = true;
        inet_ntop(AF_INET, &c->iface, c->iface_str, sizeof(c->iface_str));
    }
    c->interval_ms = o->interval_ms ? o->interval_ms : ANNOUNCE_INTERVAL_DEFAULT;
    c->ttl = o->ttl ? o->ttl : ANNOUNCE_TTL_DEFAULT;
    if (c->ttl < 1 || c->ttl > 255)
        return err_set(err, -EINVAL, "announce ttl %d out of range 1..255", o->ttl);
    c->loop = !o->no_loop;
    c->max_nodes = o->max_nodes ? o->max_nodes : ANNOUNCE_MAX_NODES_DEFAULT;
    if (c->max_nodes > MAX_NODES_LIMIT)
        return err_set(err, -EINVAL, "announce max nodes %zu over %zu", c->max_nodes,
                       MAX_NODES_LIMIT);
    c->rate = o->rate_limit ? o->rate_limit : ANNOUNCE_RATE_DEFAULT;
    c->burst =
        o->rate_burst ? o->rate_burst : (c->rate > UINT32_MAX / 2 ? UINT32_MAX : c->rate * 2);
    c->max_sources = o->max_sources ? o->max_sources : ANNOUNCE_MAX_SOURCES_DEFAULT;
    if (c->max_sources > MAX_SOURCES_LIMIT)
        return err_set(err, -EINVAL, "announce max sources %zu over %zu", c->max_sources,
                       MAX_SOURCES_LIMIT);
    return 0;
}

static size_t pow2_at_least(size_t n, size_t min)
{
    size_t p = min;
    while (p < n)
        p <<= 1;
    return p;
}

/* ---- sender ---------------------------------------------------------------- */

struct announce_sender {
    uv_loop_t *loop;
    uv_udp_t udp;
    uv_timer_t timer;
    cfg_t cfg;
    char *uuid;
    char datagram[ANNOUNCE_MAX_DATAGRAM]; /* what the next send sends */
    size_t len;
    /* One send at a time: its bytes are copied to wbuf so an update can
     * change datagram while the kernel still has the previous one. */
    uv_udp_send_t req;
    char wbuf[ANNOUNCE_MAX_DATAGRAM];
    bool in_flight;
    bool resend; /* an update arrived during the send: send again after it */
    bool stopping;
    int closing; /* handles whose close callback is still due */
    int last_err;
    announce_sender_stats_t stats;
    void (*done)(void *);
    void *done_data;
};

static int sender_encode(announce_sender_t *s, const announce_endpoint_t *eps, size_t n, err_t *err)
{
    buf_t b = BUF_INIT(ANNOUNCE_MAX_DATAGRAM);
    int rc = announce_encode(&b, s->uuid, eps, n, err);
    if (rc == 0) {
        memcpy(s->datagram, b.data, b.len);
        s->len = b.len;
    }
    buf_free(&b);
    return rc;
}

/* Send errors repeat every interval while a network is down; log only
 * when the error changes so the log shows transitions, not a drip. */
static void sender_note(announce_sender_t *s, int status)
{
    if (status < 0) {
        s->stats.send_errors++;
        if (status != s->last_err)
            log_warn(MOD, "announcing %s to %s:%d: %s", s->uuid, s->cfg.group_str, s->cfg.port,
                     uv_strerror(status));
    } else {
        s->stats.sent++;
        if (s->last_err)
            log_info(MOD, "announcing %s to %s:%d works again", s->uuid, s->cfg.group_str,
                     s->cfg.port);
    }
    s->last_err = status < 0 ? status : 0;
}

static void sender_send(announce_sender_t *s);

static void sender_on_sent(uv_udp_send_t *req, int status)
{
    announce_sender_t *s = req->data;
    s->in_flight = false;
    if (status == UV_ECANCELED || s->stopping)
        return;
    sender_note(s, status);
    if (s->resend) {
        s->resend = false;
        sender_send(s);
    }
}

static void sender_send(announce_sender_t *s)
{
    if (s->stopping)
        return;
    if (s->in_flight) {
        s->stats.skipped++;
        return;
    }
    memcpy(s->wbuf, s->datagram, s->len);
    uv_buf_t b = uv_buf_init(s->wbuf, (unsigned)s->len);
    s->req.data = s;
    int rc = uv_udp_send(&s->req, &s->udp, &b, 1, (const struct sockaddr *)&s->cfg.group,
                         sender_on_sent);
    if (rc < 0)
        sender_note(s, rc);
    else
        s->in_flight = true;
}

static void sender_on_tick(uv_timer_t *t)
{
    sender_send(t->data);
}

static void sender_on_close(uv_handle_t *h)
{
    announce_sender_t *s = h->data;
    if (--s->closing > 0)
        return;
    void (*done)(void *) = s->done;
    void *data = s->done_data;
    free(s->uuid);
    free(s);
    if (done)
        done(data);
}

static void sender_close(announce_sender_t *s)
{
    s->stopping = true;
    s->closing = 2;
    uv_timer_stop(&s->timer);
    uv_close((uv_handle_t *)&s->timer, sender_on_close);
    uv_close((uv_handle_t *)&s->udp, sender_on_close);
}

int announce_sender_start(uv_loop_t *loop, const announce_opts_t *opts, const char *uuid,
                          const announce_endpoint_t *eps, size_t n, announce_sender_t **out,
                          err_t *err)
{
    *out = NULL;
    announce_sender_t *s = xcalloc(1, sizeof(*s));
    int rc = cfg_resolve(opts, &s->cfg, err);
    if (rc == 0 && !uuid)
        rc = err_set(err, -EINVAL, "uuid is missing");
    if (rc == 0) {
        s->uuid = xstrdup(uuid);
        rc = sender_encode(s, eps, n, err);
    }
    if (rc == 0 && (rc = uv_udp_init_ex(loop, &s->udp, AF_INET)) < 0)
        err_set(err, rc, "announce socket: %s", uv_strerror(rc));
    if (rc) {
        free(s->uuid);
        free(s);
        return rc;
    }
    s->loop = loop;
    s->udp.data = s;
    uv_timer_init(loop, &s->timer);
    s->timer.data = s;

    struct sockaddr_in local = {.sin_family = AF_INET};
    local.sin_addr.s_addr = s->cfg.has_iface ? s->cfg.iface.s_addr : htonl(INADDR_ANY);
    const char *what = "binding";
    if ((rc = uv_udp_bind(&s->udp, (const struct sockaddr *)&local, 0)) < 0)
        goto fail;
    what = "setting the multicast ttl";
    if ((rc = uv_udp_set_multicast_ttl(&s->udp, s->cfg.ttl)) < 0)
        goto fail;
    what = "setting multicast loop";
    if ((rc = uv_udp_set_multicast_loop(&s->udp, s->cfg.loop)) < 0)
        goto fail;
    what = "choosing the multicast interface";
    if (s->cfg.has_iface && (rc = uv_udp_set_multicast_interface(&s->udp, s->cfg.iface_str)) < 0)
        goto fail;
    uv_timer_start(&s->timer, sender_on_tick, 0, s->cfg.interval_ms);
    log_debug(MOD, "announcing %s to %s:%d every %" PRIu32 " ms", s->uuid, s->cfg.group_str,
              s->cfg.port, s->cfg.interval_ms);
    *out = s;
    return 0;
fail:
    err_set(err, rc, "announce sender: %s (interface %s): %s", what,
            s->cfg.has_iface ? s->cfg.iface_str : "any", uv_strerror(rc));
    sender_close(s);
    return rc;
}

int announce_sender_update(announce_sender_t *s, const announce_endpoint_t *eps, size_t n,
                           err_t *err)
{
    int rc = sender_encode(s, eps, n, err);
    if (rc)
        return rc;
    if (s->in_flight)
        s->resend = true;
    else
        sender_send(s);
    return 0;
}

void announce_sender_stats(const announce_sender_t *s, announce_sender_stats_t *out)
{
    *out = s->stats;
}

void announce_sender_stop(announce_sender_t *s, void (*done)(void *data), void *data)
{
    if (!s || s->stopping)
        return;
    s->done = done;
    s->done_data = data;
    sender_close(s);
}

/* ---- listener -------------------------------------------------------------- */

typedef struct node {
    struct node *hnext;       /* hash chain */
    struct node *prev, *next; /* seen order, least recently announced first */
    uint64_t last_seen;       /* loop time, ms */
    announce_endpoint_t *eps; /* one allocation with the address strings */
    size_t n;
    char uuid[];
} node_t;

/* Token bucket of one source address; tokens are in thousandths so the
 * refill is exact integer arithmetic at any rate. */
typedef struct source {
    bool used;
    uint32_t addr; /* network order */
    uint64_t tokens;
    uint64_t last_ms;
} source_t;

struct announce_listener {
    uv_loop_t *loop;
    uv_udp_t udp;
    uv_timer_t timer;
    cfg_t cfg;
    announce_node_fn on_node;
    void *data;
    uint64_t seed;
    node_t **buckets;
    size_t bucket_mask;
    node_t *oldest, *newest;
    source_t *sources;
    size_t source_mask;
    bool full_logged; /* the table-full warning was logged at full_logged_at */
    uint64_t full_logged_at;
    bool stopping;
    int closing;
    announce_listener_stats_t stats;
    void (*done)(void *);
    void *done_data;
    announce_msg_t msg; /* scratch for the datagram being handled */
    char rbuf[RECV_BUF];
};

/* FNV-1a mixed with a per-listener random seed: uuids come from the
 * network, and a fixed hash would let a sender pick uuids that all land in
 * one chain. The table holds at most max_nodes entries either way. */
static uint64_t hash_bytes(uint64_t seed, const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = 0xcbf29ce484222325ULL ^ seed;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    h ^= h >> 29;
    return h;
}

static node_t **node_slot(announce_listener_t *l, const char *uuid)
{
    node_t **pp = &l->buckets[hash_bytes(l->seed, uuid, strlen(uuid)) & l->bucket_mask];
    while (*pp && strcmp((*pp)->uuid, uuid) != 0)
        pp = &(*pp)->hnext;
    return pp;
}

static void seen_unlink(announce_listener_t *l, node_t *nd)
{
    if (nd->prev)
        nd->prev->next = nd->next;
    else
        l->oldest = nd->next;
    if (nd->next)
        nd->next->prev = nd->prev;
    else
        l->newest = nd->prev;
    nd->prev = nd->next = NULL;
}

static void seen_append(announce_listener_t *l, node_t *nd)
{
    nd->prev = l->newest;
    nd->next = NULL;
    if (l->newest)
        l->newest->next = nd;
    else
        l->oldest = nd;
    l->newest = nd;
}

static bool eps_equal(const node_t *nd, const announce_msg_t *m)
{
    if (nd->n != m->n)
        return false;
    for (size_t i = 0; i < m->n; i++)
        if (nd->eps[i].port != m->eps[i].port || strcmp(nd->eps[i].addr, m->eps[i].addr) != 0)
            return false;
    return true;
}

/* One allocation per list, so a node costs at most a few KiB (the list
 * came from a datagram of at most 1400 bytes). */
static void node_set_eps(node_t *nd, const announce_msg_t *m)
{
    size_t strbytes = 0;
    for (size_t i = 0; i < m->n; i++)
        strbytes += strlen(m->eps[i].addr) + 1;
    char *mem = xmalloc(m->n * sizeof(announce_endpoint_t) + strbytes);
    announce_endpoint_t *eps = (announce_endpoint_t *)mem;
    char *s = mem + m->n * sizeof(announce_endpoint_t);
    for (size_t i = 0; i < m->n; i++) {
        size_t len = strlen(m->eps[i].addr) + 1;
        memcpy(s, m->eps[i].addr, len);
        eps[i].addr = s;
        eps[i].port = m->eps[i].port;
        s += len;
    }
    free(nd->eps);
    nd->eps = eps;
    nd->n = m->n;
}

/* Spend one token of the datagram's source. A flood of spoofed addresses
 * only evicts other buckets (which start full again), so memory stays at
 * max_sources slots whatever arrives. */
static bool source_allow(announce_listener_t *l, const struct sockaddr *sa)
{
    if (l->cfg.rate == ANNOUNCE_RATE_UNLIMITED)
        return true;
    uint32_t ip = sa->sa_family == AF_INET ? ((const struct sockaddr_in *)sa)->sin_addr.s_addr : 0;
    uint64_t now = uv_now(l->loop);
    uint64_t cap = (uint64_t)l->cfg.burst * 1000;
    size_t h = hash_bytes(l->seed, &ip, sizeof(ip)) & l->source_mask;
    size_t probes = l->source_mask + 1 < SOURCE_PROBES ? l->source_mask + 1 : SOURCE_PROBES;
    source_t *src = NULL, *victim = NULL;
    for (size_t i = 0; i < probes; i++) {
        source_t *c = &l->sources[(h + i) & l->source_mask];
        if (c->used && c->addr == ip) {
            src = c;
            break;
        }
        if (!victim || (victim->used && (!c->used || c->last_ms < victim->last_ms)))
            victim = c;
    }
    if (!src) {
        src = victim;
        *src = (source_t){.used = true, .addr = ip, .tokens = cap, .last_ms = now};
    }
    uint64_t elapsed = now - src->last_ms;
    src->last_ms = now;
    if (elapsed > cap / l->cfg.rate)
        src->tokens = cap;
    else if ((src->tokens += elapsed * l->cfg.rate) > cap)
        src->tokens = cap;
    if (src->tokens < 1000)
        return false;
    src->tokens -= 1000;
    return true;
}

static void node_free(node_t *nd)
{
    free(nd->eps);
    free(nd);
}

/* Record the announce in l->msg; report it when it is news. */
static void listener_apply(announce_listener_t *l)
{
    const announce_msg_t *m = &l->msg;
    node_t **slot = node_slot(l, m->uuid);
    node_t *nd = *slot;
    bool changed;
    if (!nd) {
        if (l->stats.nodes >= l->cfg.max_nodes) {
            /* A flood keeps the table full for as long as it lasts: one
             * line a minute says so without flooding the log too. */
            uint64_t now = uv_now(l->loop);
            l->stats.dropped_full++;
            if (!l->full_logged || now - l->full_logged_at >= 60000) {
                log_warn(MOD,
                         "tracking %zu nodes, the limit: announces of new nodes are dropped "
                         "until some expire (%" PRIu64 " dropped so far)",
                         l->stats.nodes, l->stats.dropped_full);
                l->full_logged = true;
                l->full_logged_at = now;
            }
            return;
        }
        size_t ulen = strlen(m->uuid);
        nd = xcalloc(1, sizeof(*nd) + ulen + 1);
        memcpy(nd->uuid, m->uuid, ulen + 1);
        *slot = nd;
        l->stats.nodes++;
        changed = true;
    } else {
        changed = !eps_equal(nd, m);
        seen_unlink(l, nd);
    }
    if (changed)
        node_set_eps(nd, m);
    nd->last_seen = uv_now(l->loop);
    seen_append(l, nd);
    l->stats.accepted++;
    if (changed) {
        l->stats.ups++;
        l->on_node(nd->uuid, nd->eps, nd->n, true, l->data);
    }
}

static void listener_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    announce_listener_t *l = h->data;
    *buf = uv_buf_init(l->rbuf, sizeof(l->rbuf));
}

static void listener_on_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf,
                             const struct sockaddr *addr, unsigned flags)
{
    announce_listener_t *l = h->data;
    if (l->stopping)
        return;
    if (nread < 0) {
        log_warn(MOD, "reading announces on %s:%d: %s", l->cfg.group_str, l->cfg.port,
                 uv_strerror((int)nread));
        return;
    }
    if (!addr)
        return; /* nothing more to read */
    l->stats.received++;
    if (!source_allow(l, addr)) {
        l->stats.rate_limited++;
        return;
    }
    char from[INET_ADDRSTRLEN] = "?";
    if (addr->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)addr)->sin_addr, from, sizeof(from));
    if ((flags & UV_UDP_PARTIAL) || (size_t)nread > ANNOUNCE_MAX_DATAGRAM) {
        l->stats.oversize++;
        log_debug(MOD, "ignoring a datagram from %s: over %d bytes", from, ANNOUNCE_MAX_DATAGRAM);
        return;
    }
    err_t err;
    if (announce_decode(buf->base, (size_t)nread, &l->msg, &err) < 0) {
        l->stats.malformed++;
        log_debug(MOD, "ignoring a datagram from %s: %s", from, err.msg);
        return;
    }
    listener_apply(l);
}

/* Nodes are kept in announce order, so the expired ones are at the front
 * and a check costs nothing when none expired. */
static void listener_on_tick(uv_timer_t *t)
{
    announce_listener_t *l = t->data;
    uint64_t now = uv_now(l->loop);
    uint64_t limit = (uint64_t)l->cfg.interval_ms * ANNOUNCE_MISSED_MAX;
    while (!l->stopping && l->oldest && now - l->oldest->last_seen > limit) {
        node_t *nd = l->oldest;
        seen_unlink(l, nd);
        *node_slot(l, nd->uuid) = nd->hnext;
        l->stats.nodes--;
        l->stats.downs++;
        l->on_node(nd->uuid, nd->eps, nd->n, false, l->data);
        node_free(nd);
    }
}

static void listener_on_close(uv_handle_t *h)
{
    announce_listener_t *l = h->data;
    if (--l->closing > 0)
        return;
    void (*done)(void *) = l->done;
    void *data = l->done_data;
    for (node_t *nd = l->oldest, *next; nd; nd = next) {
        next = nd->next;
        node_free(nd);
    }
    free(l->buckets);
    free(l->sources);
    free(l);
    if (done)
        done(data);
}

static void listener_close(announce_listener_t *l)
{
    l->stopping = true;
    l->closing = 2;
    uv_udp_recv_stop(&l->udp);
    uv_timer_stop(&l->timer);
    uv_close((uv_handle_t *)&l->timer, listener_on_close);
    uv_close((uv_handle_t *)&l->udp, listener_on_close);
}

int announce_listener_start(uv_loop_t *loop, const announce_opts_t *opts, announce_node_fn on_node,
                            void *data, announce_listener_t **out, err_t *err)
{
    *out = NULL;
    cfg_t cfg;
    int rc = cfg_resolve(opts, &cfg, err);
    if (rc)
        return rc;
    if (!on_node)
        return err_set(err, -EINVAL, "announce listener needs an on_node callback");
    announce_listener_t *l = xcalloc(1, sizeof(*l));
    l->cfg = cfg;
    if ((rc = uv_udp_init_ex(loop, &l->udp, AF_INET)) < 0) {
        free(l);
        return err_set(err, rc, "announce socket: %s", uv_strerror(rc));
    }
    l->loop = loop;
    l->on_node = on_node;
    l->data = data;
    l->udp.data = l;
    uv_timer_init(loop, &l->timer);
    l->timer.data = l;
    size_t nb = pow2_at_least(cfg.max_nodes, 16);
    l->buckets = xcalloc(nb, sizeof(node_t *));
    l->bucket_mask = nb - 1;
    size_t ns = pow2_at_least(cfg.max_sources, SOURCE_PROBES);
    l->sources = xcalloc(ns, sizeof(source_t));
    l->source_mask = ns - 1;
    if (uv_random(NULL, NULL, &l->seed, sizeof(l->seed), 0, NULL) < 0)
        l->seed = uv_hrtime() ^ (uint64_t)(uintptr_t)l;

    /* Bound to the group address, the socket gets only this group's
     * datagrams, not unicast to the port or other groups the host joined. */
    const char *what = "binding";
    if ((rc = uv_udp_bind(&l->udp, (const struct sockaddr *)&cfg.group, UV_UDP_REUSEADDR)) < 0)
        goto fail;
    what = "joining the group";
    if ((rc = uv_udp_set_membership(&l->udp, cfg.group_str, cfg.has_iface ? cfg.iface_str : NULL,
                                    UV_JOIN_GROUP)) < 0)
        goto fail;
    what = "reading";
    if ((rc = uv_udp_recv_start(&l->udp, listener_alloc, listener_on_recv)) < 0)
        goto fail;
    uint64_t check = cfg.interval_ms / 4 ? cfg.interval_ms / 4 : 1;
    uv_timer_start(&l->timer, listener_on_tick, check, check);
    *out = l;
    return 0;
fail:
    err_set(err, rc, "announce listener on %s:%d (interface %s): %s: %s", cfg.group_str, cfg.port,
            cfg.has_iface ? cfg.iface_str : "any", what, uv_strerror(rc));
    listener_close(l);
    return rc;
}

void announce_listener_stats(const announce_listener_t *l, announce_listener_stats_t *out)
{
    *out = l->stats;
}

void announce_listener_stop(announce_listener_t *l, void (*done)(void *data), void *data)
{
    if (!l || l->stopping)
        return;
    l->done = done;
    l->done_data = data;
    listener_close(l);
}
