/* locator/dns: DNS answers from the service table, over UDP and TCP.
 *
 * The first half is the zone (query bytes -> answer bytes, no I/O), the
 * second half the server that feeds it from libuv sockets. ldns parses
 * queries and writes answers (with name compression); the few header bytes
 * of an answer to a query ldns cannot parse are written by hand. */
#include "locator/dns.h"

#include "core/alloc.h"
#include "core/buf.h"
#include "core/log.h"
#include "core/str.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ldns/ldns.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define DNS_DEFAULT_DOMAIN   "drover."
#define DNS_DEFAULT_TTL      5
#define DNS_DEFAULT_UDP_MAX  1232
#define DNS_DEFAULT_TCP_CONN 256
#define DNS_DEFAULT_IDLE_MS  10000
#define DNS_PLAIN_UDP_MAX    512
#define DNS_TCP_MAX          65535
#define DNS_MAX_LABELS       128
/* The zone's apex: room for "addr." and an IPv4 label under it, so every
 * name the zone makes up stays under 255 bytes. */
#define DNS_MAX_DOMAIN 200
/* A TCP connection stops reading while this many answer bytes wait for
 * the peer to take them. */
#define DNS_TCP_MAX_QUEUED (256 * 1024)
/* SOA timers: no secondaries ever transfer this zone, the values only have
 * to be sane. */
#define DNS_SOA_REFRESH 3600
#define DNS_SOA_RETRY   600
#define DNS_SOA_EXPIRE  86400

void dns_opts_default(dns_opts_t *o)
{
    memset(o, 0, sizeof(*o));
    o->domain = DNS_DEFAULT_DOMAIN;
    o->ttl_s = DNS_DEFAULT_TTL;
    o->neg_ttl_s = DNS_DEFAULT_TTL;
    o->max_udp_size = DNS_DEFAULT_UDP_MAX;
    o->max_tcp_connections = DNS_DEFAULT_TCP_CONN;
    o->tcp_idle_timeout_ms = DNS_DEFAULT_IDLE_MS;
}

/* ---- zone --------------------------------------------------------------- */

struct dns_zone {
    loc_table_t *table;
    char *domain; /* lowercase, with the trailing dot: "drover." */
    size_t n_dom;
    char dom_label[DNS_MAX_LABELS][64];
    uint32_t ttl, neg_ttl;
    size_t max_udp;
    uint64_t rotate; /* start offset of the next answer list */
    ldns_rdf *apex, *mname, *rname;
};

/* A query name split into labels, lowercased (ASCII only, as DNS compares
 * names). Labels may hold any byte, even NUL: `len` counts, not strlen. */
typedef struct qname {
    size_t n;
    const char *label[DNS_MAX_LABELS];
    size_t len[DNS_MAX_LABELS];
    char buf[256 + DNS_MAX_LABELS];
} qname_t;

/* What a query gets, before it is put on the wire: the sections are kept
 * apart from the packet so an answer too big for its transport can be
 * rendered again with fewer records. */
typedef struct reply {
    int rcode;
    bool aa;
    ldns_rr **an;
    size_t n_an, cap_an;
    ldns_rr **ad;
    size_t *ad_first; /* index of the first answer that needs ad[j] */
    size_t n_ad, cap_ad;
    ldns_rr *soa; /* authority section, NULL when none */
} reply_t;

/* ldns returns NULL when malloc fails; drover treats that as fatal
 * everywhere (core/alloc.h), so ldns allocations go through this too. */
static void *need(void *p)
{
    if (!p) {
        log_error("dns", "out of memory in ldns");
        abort();
    }
    return p;
}

static int ttl_value(int v)
{
    if (v == 0)
        return DNS_DEFAULT_TTL;
    return v < 0 ? 0 : v;
}

static bool label_char_ok(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-';
}

/* Only [a-z0-9-] labels can name an app (app ids use no other bytes), so
 * anything else is answered NXDOMAIN without a table lookup. */
static bool label_ok(const char *l, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!label_char_ok(l[i]))
            return false;
    return true;
}

static bool label_is(const qname_t *q, size_t i, const char *s)
{
    size_t n = strlen(s);
    return q->len[i] == n && memcmp(q->label[i], s, n) == 0;
}

/* Check the configured apex once, so the names built from it later (SOA,
 * SRV targets) can never fail to parse. */
static int zone_set_domain(dns_zone_t *z, const char *domain, err_t *err)
{
    size_t n = strlen(domain);
    if (n && domain[n - 1] == '.')
        n--;
    if (n == 0 || n > DNS_MAX_DOMAIN)
        return err_set(err, -EINVAL, "dns domain \"%s\": must be 1 to %d bytes", domain,
                       DNS_MAX_DOMAIN);
    z->domain = xmalloc(n + 2);
    size_t start = 0;
    z->n_dom = 0;
    for (size_t i = 0; i <= n; i++) {
        char ch = i < n ? domain[i] : '.';
        if (ch >= 'A' && ch <= 'Z')
            ch = (char)(ch - 'A' + 'a');
        z->domain[i] = ch;
        if (ch != '.') {
            if (!label_char_ok(ch))
                return err_set(err, -EINVAL, "dns domain \"%s\": byte %zu is not [a-z0-9-]", domain,
                               i);
            continue;
        }
        size_t l = i - start;
        if (l == 0 || l > 63)
            return err_set(err, -EINVAL, "dns domain \"%s\": label at byte %zu is %s", domain,
                           start, l ? "longer than 63 bytes" : "empty");
        memcpy(z->dom_label[z->n_dom], z->domain + start, l);
        z->dom_label[z->n_dom][l] = '\0';
        z->n_dom++;
        start = i + 1;
    }
    z->domain[n + 1] = '\0';
    return 0;
}

int dns_zone_new(loc_table_t *table, const dns_opts_t *opts, dns_zone_t **out, err_t *err)
{
    *out = NULL;
    dns_opts_t o;
    dns_opts_default(&o);
    if (opts) {
        if (opts->domain)
            o.domain = opts->domain;
        o.ttl_s = opts->ttl_s;
        o.neg_ttl_s = opts->neg_ttl_s;
        if (opts->max_udp_size)
            o.max_udp_size = opts->max_udp_size;
    }
    dns_zone_t *z = xcalloc(1, sizeof(*z));
    int rc = zone_set_domain(z, o.domain, err);
    if (rc < 0) {
        free(z->domain);
        free(z);
        return rc;
    }
    z->table = table;
    z->ttl = (uint32_t)ttl_value(o.ttl_s);
    z->neg_ttl = (uint32_t)ttl_value(o.neg_ttl_s);
    z->max_udp = o.max_udp_size < DNS_PLAIN_UDP_MAX ? DNS_PLAIN_UDP_MAX
                 : o.max_udp_size > DNS_TCP_MAX     ? DNS_TCP_MAX
                                                    : o.max_udp_size;
    char *s = xasprintf("ns.%s", z->domain);
    z->mname = need(ldns_dname_new_frm_str(s));
    free(s);
    s = xasprintf("hostmaster.%s", z->domain);
    z->rname = need(ldns_dname_new_frm_str(s));
    free(s);
    z->apex = need(ldns_dname_new_frm_str(z->domain));
    *out = z;
    return 0;
}

void dns_zone_free(dns_zone_t *z)
{
    if (!z)
        return;
    ldns_rdf_deep_free(z->apex);
    ldns_rdf_deep_free(z->mname);
    ldns_rdf_deep_free(z->rname);
    free(z->domain);
    free(z);
}

/* Split a parsed dname into lowercase labels. ldns has already checked
 * the wire form; the bounds are checked again because an overrun here
 * would be ours. */
static int qname_parse(const ldns_rdf *dn, qname_t *q)
{
    const uint8_t *p = ldns_rdf_data(dn);
    size_t size = ldns_rdf_size(dn), off = 0, w = 0;
    q->n = 0;
    while (off < size) {
        size_t l = p[off++];
        if (l == 0)
            return 0;
        if (l > 63 || off + l > size || q->n == DNS_MAX_LABELS || w + l + 1 > sizeof(q->buf))
            return -EINVAL;
        q->label[q->n] = q->buf + w;
        q->len[q->n] = l;
        for (size_t i = 0; i < l; i++) {
            char ch = (char)p[off + i];
            q->buf[w++] = (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
        }
        q->buf[w++] = '\0';
        off += l;
        q->n++;
    }
    return -EINVAL;
}

/* Number of labels left of the apex, or -1 when the name is not in the
 * zone. */
static int zone_relative(const dns_zone_t *z, const qname_t *q)
{
    if (q->n < z->n_dom)
        return -1;
    size_t k = q->n - z->n_dom;
    for (size_t i = 0; i < z->n_dom; i++) {
        const char *dl = z->dom_label[i];
        if (q->len[k + i] != strlen(dl) || memcmp(q->label[k + i], dl, q->len[k + i]) != 0)
            return -1;
    }
    return (int)k;
}

/* The app id of labels [first, k) read right to left, plus `leaf` as the
 * last segment when given: web.production -> "/production/web". Returns
 * false when a label cannot be part of an app id. */
static bool appid_build(const qname_t *q, size_t first, size_t k, const char *leaf, size_t leaf_len,
                        char *out, size_t cap)
{
    size_t w = 0;
    for (size_t i = k; i > first; i--) {
        const char *l = q->label[i - 1];
        size_t n = q->len[i - 1];
        if (!label_ok(l, n) || w + n + 2 > cap)
            return false;
        out[w++] = '/';
        memcpy(out + w, l, n);
        w += n;
    }
    if (leaf) {
        if (!label_ok(leaf, leaf_len) || w + leaf_len + 2 > cap)
            return false;
        out[w++] = '/';
        memcpy(out + w, leaf, leaf_len);
        w += leaf_len;
    }
    if (w == 0)
        return false;
    out[w] = '\0';
    return true;
}

typedef struct below_ctx {
    const char *prefix;
    size_t len;
    bool found;
} below_ctx_t;

static int below_visit(const loc_entry_t *e, void *data)
{
    below_ctx_t *b = data;
    if (strncmp(e->name, b->prefix, b->len) == 0) {
        b->found = e->n > 0;
        return b->found;
    }
    /* Names come in order: once past the prefix, nothing more can match. */
    return strcmp(e->name, b->prefix) > 0;
}

/* True when some app lives below `appid` ("/production" has
 * "/production/web"). Such a name is an empty non-terminal: it exists
 * (NODATA), because NXDOMAIN would tell a resolver that nothing below it
 * exists either (RFC 8020) and hide the apps. */
static bool has_below(const dns_zone_t *z, const char *appid)
{
    char prefix[600];
    int n = snprintf(prefix, sizeof(prefix), "%s/", appid);
    if (n < 0 || (size_t)n >= sizeof(prefix))
        return false;
    below_ctx_t b = {prefix, (size_t)n, false};
    loc_table_foreach(z->table, below_visit, &b);
    return b.found;
}

static void reply_free(reply_t *r)
{
    for (size_t i = 0; i < r->n_an; i++)
        ldns_rr_free(r->an[i]);
    for (size_t i = 0; i < r->n_ad; i++)
        ldns_rr_free(r->ad[i]);
    ldns_rr_free(r->soa);
    free(r->an);
    free(r->ad);
    free(r->ad_first);
}

static void reply_an(reply_t *r, ldns_rr *rr)
{
    if (r->n_an == r->cap_an) {
        r->cap_an = r->cap_an ? 2 * r->cap_an : 8;
        r->an = xrealloc(r->an, r->cap_an * sizeof(*r->an));
    }
    r->an[r->n_an++] = rr;
}

static void reply_ad(reply_t *r, ldns_rr *rr, size_t first)
{
    if (r->n_ad == r->cap_ad) {
        r->cap_ad = r->cap_ad ? 2 * r->cap_ad : 8;
        r->ad = xrealloc(r->ad, r->cap_ad * sizeof(*r->ad));
        r->ad_first = xrealloc(r->ad_first, r->cap_ad * sizeof(*r->ad_first));
    }
    r->ad[r->n_ad] = rr;
    r->ad_first[r->n_ad++] = first;
}

static ldns_rr *rr_new(const ldns_rdf *owner, ldns_rr_type type, uint32_t ttl)
{
    ldns_rr *rr = need(ldns_rr_new());
    ldns_rr_set_owner(rr, need(ldns_rdf_clone(owner)));
    ldns_rr_set_type(rr, type);
    ldns_rr_set_class(rr, LDNS_RR_CLASS_IN);
    ldns_rr_set_ttl(rr, ttl);
    return rr;
}

static ldns_rr *rr_a(const ldns_rdf *owner, uint32_t ttl, const uint8_t addr[4])
{
    ldns_rr *rr = rr_new(owner, LDNS_RR_TYPE_A, ttl);
    ldns_rr_push_rdf(rr, need(ldns_rdf_new_frm_data(LDNS_RDF_TYPE_A, 4, addr)));
    return rr;
}

/* The zone's SOA. Its serial is the table's revision, so it moves when
 * the answers may have; its TTL and MINIMUM bound negative caching. */
static ldns_rr *zone_soa(const dns_zone_t *z)
{
    ldns_rr *rr = rr_new(z->apex, LDNS_RR_TYPE_SOA, z->neg_ttl);
    ldns_rr_push_rdf(rr, need(ldns_rdf_clone(z->mname)));
    ldns_rr_push_rdf(rr, need(ldns_rdf_clone(z->rname)));
    uint32_t serial = (uint32_t)loc_table_revision(z->table);
    ldns_rr_push_rdf(rr, need(ldns_native2rdf_int32(LDNS_RDF_TYPE_INT32, serial)));
    ldns_rr_push_rdf(rr, need(ldns_native2rdf_int32(LDNS_RDF_TYPE_PERIOD, DNS_SOA_REFRESH)));
    ldns_rr_push_rdf(rr, need(ldns_native2rdf_int32(LDNS_RDF_TYPE_PERIOD, DNS_SOA_RETRY)));
    ldns_rr_push_rdf(rr, need(ldns_native2rdf_int32(LDNS_RDF_TYPE_PERIOD, DNS_SOA_EXPIRE)));
    ldns_rr_push_rdf(rr, need(ldns_native2rdf_int32(LDNS_RDF_TYPE_PERIOD, z->neg_ttl)));
    return rr;
}

typedef struct target {
    uint32_t addr; /* host order, for sorting */
    uint16_t port;
} target_t;

static int target_cmp(const void *a, const void *b)
{
    const target_t *x = a, *y = b;
    if (x->addr != y->addr)
        return x->addr < y->addr ? -1 : 1;
    return (x->port > y->port) - (x->port < y->port);
}

/* The distinct (IPv4 address, port) pairs of an entry, sorted. With
 * `ports` false only addresses count (A answers). Hosts that are not IPv4
 * addresses, and ports outside 1..65535 for SRV, have no record. */
static size_t entry_targets(const loc_entry_t *e, bool ports, target_t **out)
{
    target_t *t = xmalloc((e->n ? e->n : 1) * sizeof(*t));
    size_t n = 0;
    for (size_t i = 0; i < e->n; i++) {
        struct in_addr in;
        if (!e->eps[i].host || inet_pton(AF_INET, e->eps[i].host, &in) != 1)
            continue;
        if (ports && (e->eps[i].port < 1 || e->eps[i].port > 65535))
            continue;
        t[n].addr = ntohl(in.s_addr);
        t[n].port = ports ? (uint16_t)e->eps[i].port : 0;
        n++;
    }
    qsort(t, n, sizeof(*t), target_cmp);
    size_t u = 0;
    for (size_t i = 0; i < n; i++)
        if (u == 0 || target_cmp(&t[u - 1], &t[i]) != 0)
            t[u++] = t[i];
    *out = t;
    return u;
}

static void addr_bytes(uint32_t a, uint8_t out[4])
{
    out[0] = (uint8_t)(a >> 24);
    out[1] = (uint8_t)(a >> 16);
    out[2] = (uint8_t)(a >> 8);
    out[3] = (uint8_t)a;
}

/* A records of an entry, starting at a rotating offset: most clients take
 * the first address, so rotating spreads them over the instances. */
static void answer_a(dns_zone_t *z, reply_t *r, const ldns_rdf *owner, const loc_entry_t *e)
{
    target_t *t;
    size_t n = entry_targets(e, false, &t);
    size_t start = n ? (size_t)(z->rotate++ % n) : 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t a[4];
        addr_bytes(t[(start + i) % n].addr, a);
        reply_an(r, rr_a(owner, z->ttl, a));
    }
    free(t);
}

/* SRV records of an entry (rotated as A), each target named after its
 * address under "addr." so the name resolves without the table, with the
 * target's A record in the additional section once per address. */
static void answer_srv(dns_zone_t *z, reply_t *r, const ldns_rdf *owner, const loc_entry_t *e)
{
    target_t *t;
    size_t n = entry_targets(e, true, &t);
    size_t start = n ? (size_t)(z->rotate++ % n) : 0;
    uint32_t *seen = xmalloc((n ? n : 1) * sizeof(*seen));
    size_t n_seen = 0;
    for (size_t i = 0; i < n; i++) {
        const target_t *x = &t[(start + i) % n];
        uint8_t a[4];
        addr_bytes(x->addr, a);
        char name[300];
        snprintf(name, sizeof(name), "%u-%u-%u-%u.addr.%s", a[0], a[1], a[2], a[3], z->domain);
        ldns_rdf *target = need(ldns_dname_new_frm_str(name));
        ldns_rr *rr = rr_new(owner, LDNS_RR_TYPE_SRV, z->ttl);
        ldns_rr_push_rdf(rr, need(ldns_native2rdf_int16(LDNS_RDF_TYPE_INT16, 1)));
        ldns_rr_push_rdf(rr, need(ldns_native2rdf_int16(LDNS_RDF_TYPE_INT16, 1)));
        ldns_rr_push_rdf(rr, need(ldns_native2rdf_int16(LDNS_RDF_TYPE_INT16, x->port)));
        ldns_rr_push_rdf(rr, need(ldns_rdf_clone(target)));
        reply_an(r, rr);
        /* t is sorted by address, so the addresses seen so far are one
         * or two runs: a linear look back is short in practice. */
        bool dup = false;
        for (size_t j = n_seen; j > 0 && !dup; j--)
            dup = seen[j - 1] == x->addr;
        if (!dup) {
            seen[n_seen++] = x->addr;
            reply_ad(r, rr_a(target, z->ttl, a), i);
        }
        ldns_rdf_deep_free(target);
    }
    free(seen);
    free(t);
}

/* Parse "a-b-c-d" (the label of an addr. name) into address bytes. */
static bool addr_label_parse(const char *l, size_t n, uint8_t out[4])
{
    char tmp[64];
    if (n == 0 || n >= sizeof(tmp))
        return false;
    memcpy(tmp, l, n);
    tmp[n] = '\0';
    for (size_t i = 0; i < n; i++)
        if (tmp[i] == '-')
            tmp[i] = '.';
        else if (tmp[i] < '0' || tmp[i] > '9')
            return false;
    struct in_addr in;
    if (inet_pton(AF_INET, tmp, &in) != 1)
        return false;
    memcpy(out, &in.s_addr, 4);
    /* inet_pton accepts "1.2.3.4" only in that canonical form, but a label
     * must also be the one answer_srv() writes: reject leading zeros. */
    char canon[32];
    snprintf(canon, sizeof(canon), "%u.%u.%u.%u", out[0], out[1], out[2], out[3]);
    return strcmp(canon, tmp) == 0;
}

/* Fill `r` for a query of `type` on the name `q` (already known to be in
 * the zone, with `k` labels left of the apex). The names are, by the
 * leftmost labels: the apex; <a-b-c-d>.addr (SRV targets); _name._tcp.<env>
 * (RFC 2782 SRV); else an app id read right to left, or an empty
 * non-terminal above app ids. */
static void zone_lookup(dns_zone_t *z, reply_t *r, const qname_t *q, size_t k, ldns_rr_type type,
                        const ldns_rdf *owner)
{
    char id[600];
    const loc_entry_t *e = NULL;
    bool exists = false, srv_only = false;
    r->rcode = LDNS_RCODE_NOERROR;
    r->aa = true;

    if (k == 0) {
        if (type == LDNS_RR_TYPE_SOA)
            reply_an(r, zone_soa(z));
        else
            r->soa = zone_soa(z);
        return;
    }
    if (label_is(q, k - 1, "addr")) {
        uint8_t a[4];
        if (k == 1) {
            exists = true;
        } else if (k == 2 && addr_label_parse(q->label[0], q->len[0], a)) {
            exists = true;
            if (type == LDNS_RR_TYPE_A)
                reply_an(r, rr_a(owner, z->ttl, a));
        }
    } else if (q->len[0] > 0 && q->label[0][0] == '_') {
        if (k >= 3 && label_is(q, 1, "_tcp") &&
            appid_build(q, 2, k, q->label[0] + 1, q->len[0] - 1, id, sizeof(id))) {
            e = loc_table_get(z->table, id);
            srv_only = true;
        } else if (label_is(q, 0, "_tcp") && appid_build(q, 1, k, NULL, 0, id, sizeof(id))) {
            exists = has_below(z, id);
        }
    } else if (appid_build(q, 0, k, NULL, 0, id, sizeof(id))) {
        e = loc_table_get(z->table, id);
        if (!e || e->n == 0) {
            e = NULL;
            exists = has_below(z, id);
        }
    }
    if (e && e->n > 0) {
        exists = true;
        if (type == LDNS_RR_TYPE_SRV)
            answer_srv(z, r, owner, e);
        else if (type == LDNS_RR_TYPE_A && !srv_only)
            answer_a(z, r, owner, e);
    }
    if (!exists)
        r->rcode = LDNS_RCODE_NXDOMAIN;
    if (r->n_an == 0)
        r->soa = zone_soa(z);
}

/* An answer of only a header, for queries whose body is unusable (or not
 * parsed at all): the id, opcode and RD bit come back, counts are zero. */
static int header_reply(const uint8_t *msg, int rcode, uint8_t **reply, size_t *reply_len)
{
    uint8_t *h = xcalloc(1, LDNS_HEADER_SIZE);
    h[0] = msg[0];
    h[1] = msg[1];
    h[2] = (uint8_t)(LDNS_QR_MASK | (msg[2] & (LDNS_OPCODE_MASK | LDNS_RD_MASK)));
    h[3] = (uint8_t)(rcode & LDNS_RCODE_MASK);
    *reply = h;
    *reply_len = LDNS_HEADER_SIZE;
    return 0;
}

typedef struct render_in {
    const ldns_pkt *q;
    const reply_t *r;
    bool edns;
    bool badvers;
    uint16_t udp_size;
} render_in_t;

/* Put the first `k` answers on the wire (with the additional records
 * they need when `with_ad`), setting TC when asked. Returns the wire
 * bytes (malloc'd by ldns) or NULL. */
static uint8_t *render(const render_in_t *in, size_t k, bool with_ad, bool tc, size_t *len)
{
    ldns_pkt *p = need(ldns_pkt_new());
    const ldns_pkt *q = in->q;
    const reply_t *r = in->r;
    ldns_pkt_set_id(p, ldns_pkt_id(q));
    ldns_pkt_set_qr(p, true);
    ldns_pkt_set_opcode(p, LDNS_PACKET_QUERY);
    ldns_pkt_set_rd(p, ldns_pkt_rd(q));
    ldns_pkt_set_cd(p, ldns_pkt_cd(q));
    ldns_pkt_set_aa(p, r->aa);
    ldns_pkt_set_tc(p, tc);
    ldns_pkt_set_rcode(p, (uint8_t)r->rcode);
    ldns_rr_list *qs = ldns_pkt_question(q);
    ldns_pkt_push_rr(p, LDNS_SECTION_QUESTION, need(ldns_rr_clone(ldns_rr_list_rr(qs, 0))));
    for (size_t i = 0; i < k; i++)
        ldns_pkt_push_rr(p, LDNS_SECTION_ANSWER, need(ldns_rr_clone(r->an[i])));
    for (size_t j = 0; with_ad && j < r->n_ad; j++)
        if (r->ad_first[j] < k)
            ldns_pkt_push_rr(p, LDNS_SECTION_ADDITIONAL, need(ldns_rr_clone(r->ad[j])));
    if (r->soa)
        ldns_pkt_push_rr(p, LDNS_SECTION_AUTHORITY, need(ldns_rr_clone(r->soa)));
    if (in->edns) {
        ldns_pkt_set_edns_udp_size(p, in->udp_size);
        ldns_pkt_set_edns_version(p, 0);
        /* BADVERS (16) is 1 in the OPT's upper rcode bits, 0 in the header. */
        if (in->badvers)
            ldns_pkt_set_edns_extended_rcode(p, 1);
    }
    uint8_t *w = NULL;
    *len = 0;
    if (ldns_pkt2wire(&w, p, len) != LDNS_STATUS_OK) {
        free(w);
        w = NULL;
    }
    ldns_pkt_free(p);
    return w;
}

/* Fit the answer into `max` bytes. Additional records go first (dropping
 * them needs no TC, RFC 2181 9), then answers from the end, with TC set
 * so the client retries over TCP. */
static uint8_t *render_fit(const render_in_t *in, size_t max, size_t *len)
{
    const reply_t *r = in->r;
    uint8_t *w = render(in, r->n_an, true, false, len);
    if (!w || *len <= max)
        return w;
    free(w);
    if (r->n_ad) {
        w = render(in, r->n_an, false, false, len);
        if (!w || *len <= max)
            return w;
        free(w);
    }
    /* Largest k with k answers (and their additionals) fitting: k = lo. */
    size_t lo = 0, hi = r->n_an;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        w = render(in, mid, true, true, len);
        if (!w)
            return NULL;
        free(w);
        if (*len <= max)
            lo = mid;
        else
            hi = mid;
    }
    return render(in, lo, true, true, len);
}

int dns_zone_answer(dns_zone_t *z, const uint8_t *msg, size_t len, dns_transport_t transport,
                    uint8_t **reply, size_t *reply_len)
{
    *reply = NULL;
    *reply_len = 0;
    /* A response is never answered: two servers would bounce forever. */
    if (len < LDNS_HEADER_SIZE || len > DNS_TCP_MAX || LDNS_QR_WIRE(msg))
        return -EBADMSG;
    if (LDNS_OPCODE_WIRE(msg) != LDNS_PACKET_QUERY)
        return header_reply(msg, LDNS_RCODE_NOTIMPL, reply, reply_len);
    ldns_pkt *q = NULL;
    if (ldns_wire2pkt(&q, msg, len) != LDNS_STATUS_OK || !q)
        return header_reply(msg, LDNS_RCODE_FORMERR, reply, reply_len);
    if (ldns_pkt_qdcount(q) != 1 || ldns_rr_list_rr_count(ldns_pkt_question(q)) != 1) {
        ldns_pkt_free(q);
        return header_reply(msg, LDNS_RCODE_FORMERR, reply, reply_len);
    }
    const ldns_rr *question = ldns_rr_list_rr(ldns_pkt_question(q), 0);
    const ldns_rdf *owner = ldns_rr_owner(question);
    ldns_rr_type type = ldns_rr_get_type(question);
    ldns_rr_class cls = ldns_rr_get_class(question);

    reply_t r = {.rcode = LDNS_RCODE_NOERROR};
    render_in_t in = {.q = q, .r = &r, .edns = ldns_pkt_edns(q), .udp_size = (uint16_t)z->max_udp};
    size_t max = DNS_PLAIN_UDP_MAX;
    if (transport == DNS_TCP)
        max = DNS_TCP_MAX;
    else if (in.edns && ldns_pkt_edns_udp_size(q) > DNS_PLAIN_UDP_MAX)
        max = ldns_pkt_edns_udp_size(q) < z->max_udp ? ldns_pkt_edns_udp_size(q) : z->max_udp;

    qname_t qn;
    int k = -1;
    if (owner && ldns_rdf_get_type(owner) == LDNS_RDF_TYPE_DNAME && qname_parse(owner, &qn) == 0)
        k = zone_relative(z, &qn);
    if (in.edns && ldns_pkt_edns_version(q) > 0) {
        in.badvers = true; /* RFC 6891 6.1.3: only version 0 exists */
    } else if (k < 0 || (cls != LDNS_RR_CLASS_IN && cls != LDNS_RR_CLASS_ANY) ||
               type == LDNS_RR_TYPE_AXFR || type == LDNS_RR_TYPE_IXFR) {
        r.rcode = LDNS_RCODE_REFUSED;
    } else {
        zone_lookup(z, &r, &qn, (size_t)k, type, owner);
    }

    uint8_t *w = render_fit(&in, max, reply_len);
    reply_free(&r);
    ldns_pkt_free(q);
    if (!w || *reply_len > max) {
        /* Cannot happen with a question of at most 255 bytes; answer
         * something rather than nothing. */
        free(w);
        return header_reply(msg, LDNS_RCODE_SERVFAIL, reply, reply_len);
    }
    *reply = w;
    return 0;
}

/* ---- server ------------------------------------------------------------- */

typedef struct dns_conn dns_conn_t;

struct dns_server {
    uv_loop_t *loop;
    dns_zone_t *zone;
    uv_udp_t udp;
    uv_tcp_t tcp;
    int port;
    size_t max_conns;
    uint64_t idle_ms;
    size_t n_conns;    /* counted against max_conns */
    dns_conn_t *conns; /* every connection not yet freed */
    int refs;          /* udp + tcp handles + conns; the server is freed at 0 */
    bool stopping;
    bool limit_warned;
    void (*done)(void *data);
    void *done_data;
    char udp_buf[65536]; /* one datagram at a time, answered before the next */
    char tcp_buf[65536]; /* read chunk, copied into the connection's buffer */
};

struct dns_conn {
    dns_server_t *s;
    dns_conn_t *prev, *next;
    uv_tcp_t tcp;
    uv_timer_t timer;
    buf_t in; /* bytes of frames not yet answered */
    int handles;
    int writes; /* write requests not yet called back */
    bool counted, closing, paused, eof;
};

typedef struct dns_write {
    uv_write_t req;
    dns_conn_t *c;
    uint8_t len[2];
    uint8_t *data; /* malloc'd by ldns or header_reply */
} dns_write_t;

/* The server is freed only after the last of its handles and connections
 * is closed, so no libuv callback ever sees freed memory. */
static void server_release(dns_server_t *s)
{
    if (--s->refs > 0 || !s->stopping)
        return;
    void (*done)(void *) = s->done;
    void *data = s->done_data;
    dns_zone_free(s->zone);
    free(s);
    if (done)
        done(data);
}

static void server_on_handle_close(uv_handle_t *h)
{
    server_release(h->data);
}

static void conn_on_close(uv_handle_t *h)
{
    dns_conn_t *c = h->data;
    if (--c->handles > 0)
        return;
    dns_server_t *s = c->s;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    buf_free(&c->in);
    free(c);
    server_release(s);
}

static void conn_close(dns_conn_t *c)
{
    if (c->closing)
        return;
    c->closing = true;
    if (c->counted && --c->s->n_conns < c->s->max_conns / 2)
        c->s->limit_warned = false;
    uv_close((uv_handle_t *)&c->tcp, conn_on_close);
    uv_close((uv_handle_t *)&c->timer, conn_on_close);
}

static void conn_on_idle(uv_timer_t *t)
{
    dns_conn_t *c = t->data;
    log_debug("dns", "closing idle tcp connection");
    conn_close(c);
}

static void conn_touch(dns_conn_t *c)
{
    uv_timer_start(&c->timer, conn_on_idle, c->s->idle_ms, 0);
}

static void conn_process(dns_conn_t *c);
static void tcp_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void tcp_on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

/* A peer that half-closed after its queries still gets the answers: the
 * connection ends once the last one is written. */
static void conn_maybe_finish(dns_conn_t *c)
{
    if (c->eof && !c->paused && c->writes == 0)
        conn_close(c);
}

static void conn_on_write(uv_write_t *req, int status)
{
    dns_write_t *w = (dns_write_t *)req;
    dns_conn_t *c = w->c;
    free(w->data);
    free(w);
    c->writes--;
    if (c->closing)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    conn_touch(c);
    if (c->paused && c->tcp.write_queue_size <= DNS_TCP_MAX_QUEUED / 2) {
        c->paused = false;
        conn_process(c);
        if (!c->paused && !c->closing && !c->eof)
            uv_read_start((uv_stream_t *)&c->tcp, tcp_on_alloc, tcp_on_read);
    }
    conn_maybe_finish(c);
}

static void conn_send(dns_conn_t *c, uint8_t *data, size_t len)
{
    dns_write_t *w = xcalloc(1, sizeof(*w));
    w->c = c;
    w->data = data;
    w->len[0] = (uint8_t)(len >> 8);
    w->len[1] = (uint8_t)len;
    uv_buf_t bufs[2] = {uv_buf_init((char *)w->len, 2), uv_buf_init((char *)data, (unsigned)len)};
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, 2, conn_on_write);
    if (rc < 0) {
        free(data);
        free(w);
        conn_close(c);
        return;
    }
    c->writes++;
}

/* Answer every complete frame in the buffer, in order (RFC 7766 lets a
 * client pipeline queries), until the peer stops taking answers. */
static void conn_process(dns_conn_t *c)
{
    size_t off = 0;
    const uint8_t *d = (const uint8_t *)c->in.data;
    while (!c->paused && !c->closing && c->in.len - off >= 2) {
        size_t n = ((size_t)d[off] << 8) | d[off + 1];
        if (c->in.len - off - 2 < n)
            break;
        const uint8_t *m = d + off + 2;
        off += 2 + n;
        conn_touch(c);
        uint8_t *reply;
        size_t rlen;
        if (dns_zone_answer(c->s->zone, m, n, DNS_TCP, &reply, &rlen) == 0)
            conn_send(c, reply, rlen);
        if (c->tcp.write_queue_size > DNS_TCP_MAX_QUEUED) {
            c->paused = true;
            uv_read_stop((uv_stream_t *)&c->tcp);
        }
    }
    if (off)
        buf_consume(&c->in, off);
}

static void tcp_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    dns_conn_t *c = h->data;
    buf->base = c->s->tcp_buf;
    buf->len = sizeof(c->s->tcp_buf);
}

static void tcp_on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    dns_conn_t *c = st->data;
    if (nread == 0 || c->closing)
        return;
    if (nread < 0) {
        if (nread != UV_EOF) {
            conn_close(c);
            return;
        }
        c->eof = true;
        uv_read_stop(st);
        conn_maybe_finish(c);
        return;
    }
    if (buf_append(&c->in, buf->base, (size_t)nread) < 0) {
        conn_close(c);
        return;
    }
    conn_process(c);
}

static void tcp_on_connection(uv_stream_t *listener, int status)
{
    dns_server_t *s = listener->data;
    if (status < 0 || s->stopping) {
        if (status < 0)
            log_warn("dns", "tcp accept: %s", uv_strerror(status));
        return;
    }
    dns_conn_t *c = xcalloc(1, sizeof(*c));
    c->s = s;
    /* At most one frame of 2 + 65535 bytes is incomplete when a read
     * chunk of up to sizeof(tcp_buf) bytes lands. */
    buf_init(&c->in, 2 + DNS_TCP_MAX + sizeof(s->tcp_buf));
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->handles = 2;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->refs++;
    int rc = uv_accept(listener, (uv_stream_t *)&c->tcp);
    if (rc < 0) {
        log_warn("dns", "tcp accept: %s", uv_strerror(rc));
        conn_close(c);
        return;
    }
    if (s->n_conns >= s->max_conns) {
        /* Warn once per overload, not once per refused connection. */
        if (!s->limit_warned)
            log_warn("dns", "tcp connections refused: %zu open (max_tcp_connections)", s->n_conns);
        s->limit_warned = true;
        conn_close(c);
        return;
    }
    c->counted = true;
    s->n_conns++;
    conn_touch(c);
    rc = uv_read_start((uv_stream_t *)&c->tcp, tcp_on_alloc, tcp_on_read);
    if (rc < 0)
        conn_close(c);
}

static void udp_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    dns_server_t *s = h->data;
    buf->base = s->udp_buf;
    buf->len = sizeof(s->udp_buf);
}

/* Answer a datagram at once. The answer is sent with try_send: a full
 * socket buffer drops it like any lost datagram, instead of queueing
 * answers without bound. */
static void udp_on_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf,
                        const struct sockaddr *from, unsigned flags)
{
    dns_server_t *s = h->data;
    if (nread <= 0 || !from || (flags & UV_UDP_PARTIAL) || s->stopping)
        return;
    uint8_t *reply;
    size_t len;
    if (dns_zone_answer(s->zone, (const uint8_t *)buf->base, (size_t)nread, DNS_UDP, &reply,
                        &len) != 0)
        return;
    uv_buf_t b = uv_buf_init((char *)reply, (unsigned)len);
    int rc = uv_udp_try_send(h, &b, 1, from);
    if (rc < 0)
        log_debug("dns", "udp answer dropped: %s", uv_strerror(rc));
    free(reply);
}

/* Bind UDP and TCP to one port with plain sockets before libuv sees them:
 * with port 0 the kernel picks the UDP port, and the TCP port of the same
 * number may be taken, so the pair is retried; closing a plain fd is
 * synchronous, unlike closing a libuv handle. */
static int bind_pair(const struct sockaddr_storage *ss, socklen_t sl, int *ufd, int *tfd, int *port,
                     err_t *err)
{
    int fam = ss->ss_family;
    bool any_port = fam == AF_INET ? ((const struct sockaddr_in *)ss)->sin_port == 0
                                   : ((const struct sockaddr_in6 *)ss)->sin6_port == 0;
    for (int attempt = 0; attempt < 16; attempt++) {
        struct sockaddr_storage a = *ss;
        int u = socket(fam, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (u < 0)
            return err_set(err, -errno, "dns udp socket: %s", strerror(errno));
        if (bind(u, (struct sockaddr *)&a, sl) < 0) {
            int e = errno;
            close(u);
            return err_set(err, -e, "dns udp bind: %s", strerror(e));
        }
        socklen_t al = sizeof(a);
        getsockname(u, (struct sockaddr *)&a, &al);
        int p = ntohs(fam == AF_INET ? ((struct sockaddr_in *)&a)->sin_port
                                     : ((struct sockaddr_in6 *)&a)->sin6_port);
        int t = socket(fam, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (t < 0) {
            int e = errno;
            close(u);
            return err_set(err, -e, "dns tcp socket: %s", strerror(e));
        }
        int one = 1;
        setsockopt(t, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(t, (struct sockaddr *)&a, sl) < 0 || listen(t, 128) < 0) {
            int e = errno;
            close(t);
            close(u);
            if (e == EADDRINUSE && any_port)
                continue;
            return err_set(err, -e, "dns tcp bind port %d: %s", p, strerror(e));
        }
        *ufd = u;
        *tfd = t;
        *port = p;
        return 0;
    }
    return err_set(err, -EADDRINUSE, "dns: no free port for both udp and tcp");
}

static int parse_addr(const char *addr, struct sockaddr_storage *ss, socklen_t *sl, err_t *err)
{
    char *host = NULL;
    int port;
    if (str_split_hostport(addr, &host, &port) < 0)
        return err_set(err, -EINVAL, "dns address \"%s\": want host:port", addr);
    memset(ss, 0, sizeof(*ss));
    int rc;
    if (strchr(host, ':')) {
        rc = uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss);
        *sl = sizeof(struct sockaddr_in6);
    } else {
        rc = uv_ip4_addr(host, port, (struct sockaddr_in *)ss);
        *sl = sizeof(struct sockaddr_in);
    }
    free(host);
    if (rc < 0)
        return err_set(err, -EINVAL, "dns address \"%s\": host is not a numeric IP", addr);
    return 0;
}

int dns_server_start(uv_loop_t *loop, const char *addr, loc_table_t *table, const dns_opts_t *opts,
                     dns_server_t **out, err_t *err)
{
    *out = NULL;
    struct sockaddr_storage ss;
    socklen_t sl = 0;
    int rc = parse_addr(addr, &ss, &sl, err);
    if (rc < 0)
        return rc;
    dns_zone_t *zone;
    rc = dns_zone_new(table, opts, &zone, err);
    if (rc < 0)
        return rc;
    int ufd = -1, tfd = -1, port = 0;
    rc = bind_pair(&ss, sl, &ufd, &tfd, &port, err);
    if (rc < 0) {
        dns_zone_free(zone);
        return rc;
    }
    dns_server_t *s = xcalloc(1, sizeof(*s));
    s->loop = loop;
    s->zone = zone;
    s->port = port;
    s->max_conns =
        opts && opts->max_tcp_connections ? opts->max_tcp_connections : DNS_DEFAULT_TCP_CONN;
    s->idle_ms =
        opts && opts->tcp_idle_timeout_ms ? opts->tcp_idle_timeout_ms : DNS_DEFAULT_IDLE_MS;
    uv_udp_init(loop, &s->udp);
    uv_tcp_init(loop, &s->tcp);
    s->udp.data = s;
    s->tcp.data = s;
    s->refs = 2;
    rc = uv_udp_open(&s->udp, ufd);
    if (rc < 0) {
        close(ufd);
        close(tfd);
    } else {
        rc = uv_tcp_open(&s->tcp, tfd);
        if (rc < 0)
            close(tfd);
    }
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->tcp, 128, tcp_on_connection);
    if (rc == 0)
        rc = uv_udp_recv_start(&s->udp, udp_on_alloc, udp_on_recv);
    if (rc < 0) {
        /* The handles own the fds now; closing them frees the server from
         * a later callback, with no `done` to call. */
        err_set(err, rc, "dns listen on %s: %s", addr, uv_strerror(rc));
        dns_server_stop(s, NULL, NULL);
        return rc;
    }
    log_info("dns", "serving %s on %s port %d (udp+tcp)", zone->domain, addr, port);
    *out = s;
    return 0;
}

int dns_server_port(const dns_server_t *s)
{
    return s->port;
}

void dns_server_stop(dns_server_t *s, void (*done)(void *data), void *data)
{
    if (s->stopping)
        return;
    s->stopping = true;
    s->done = done;
    s->done_data = data;
    for (dns_conn_t *c = s->conns; c; c = c->next)
        conn_close(c);
    uv_close((uv_handle_t *)&s->udp, server_on_handle_close);
    uv_close((uv_handle_t *)&s->tcp, server_on_handle_close);
}
