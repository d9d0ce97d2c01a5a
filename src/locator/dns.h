/* locator/dns: a Consul-style DNS server over a service table.
 *
 * Every app in a loc_table_t gets a DNS name: the app id's segments
 * reversed under the domain ("/production/web" -> web.production.drover.).
 * The server answers A (one record per distinct IPv4 address of the
 * endpoints) and SRV (one record per endpoint, priority 1, weight 1, the
 * endpoint's port, a target <a-b-c-d>.addr.<domain> whose A record goes in
 * the additional section). The RFC 2782 form _web._tcp.production.drover.
 * answers SRV too. Names under the domain that name nothing get NXDOMAIN,
 * existing names asked for another type get NODATA, both with the zone's
 * SOA in the authority section; names outside the domain get REFUSED.
 * docs/dns.md has the full rules.
 *
 * The table is read afresh for every query, so a change is visible to the
 * next query; answers carry a short TTL for the same reason.
 *
 * The wire format is read and written with ldns. dns_zone_t is the whole
 * query -> answer logic without sockets (the fuzz target drives it);
 * dns_server_t puts a zone on UDP and TCP (2-byte length framing, RFC 7766)
 * on one port.
 *
 * Single-threaded: a zone and a server are used on the thread of the loop
 * that owns the table. */
#ifndef DROVER_LOCATOR_DNS_H
#define DROVER_LOCATOR_DNS_H

#include "core/err.h"
#include "locator/table.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct dns_opts {
    /* Zone apex, lowercase labels of [a-z0-9-] ("drover." by default; the
     * trailing dot is optional). */
    const char *domain;
    /* TTL of A and SRV answers in seconds; 0 takes the default (5), a
     * negative value means TTL 0 (no caching). */
    int ttl_s;
    /* TTL of the SOA and its MINIMUM field, i.e. how long resolvers cache
     * NXDOMAIN/NODATA; 0 takes the default (5), negative means 0. */
    int neg_ttl_s;
    /* Largest UDP answer when the query's EDNS0 OPT advertises more than
     * 512 bytes (clamped to [512, 65535]; default 1232, the size that
     * avoids IP fragmentation). Without EDNS0 UDP answers stay <= 512. */
    size_t max_udp_size;
    /* Open TCP connections; one more is accepted and closed at once
     * (default 256). */
    size_t max_tcp_connections;
    /* A TCP connection that completes no query in this time is closed
     * (default 10 s). */
    uint64_t tcp_idle_timeout_ms;
} dns_opts_t;

/* Fill `o` with the defaults above. */
void dns_opts_default(dns_opts_t *o);

/* ---- zone: the query handler, no sockets -------------------------------- */

typedef struct dns_zone dns_zone_t;

typedef enum dns_transport {
    DNS_UDP = 0, /* answers limited to 512 bytes, or the EDNS0 size */
    DNS_TCP = 1, /* answers limited to 65535 bytes */
} dns_transport_t;

/* `table` is borrowed and must outlive the zone. `opts` may be NULL (all
 * defaults); a zero field takes its default. On failure *out is NULL. */
int dns_zone_new(loc_table_t *table, const dns_opts_t *opts, dns_zone_t **out, err_t *err);
void dns_zone_free(dns_zone_t *z);

/* Answer one DNS message of `len` bytes. Returns 0 with *reply (malloc'd,
 * the caller frees it with free()) and *reply_len set; or -EBADMSG with
 * *reply NULL when the message gets no answer at all (shorter than a
 * header, or itself a response). Never fails otherwise: a malformed query
 * whose header can be read is answered FORMERR. */
int dns_zone_answer(dns_zone_t *z, const uint8_t *msg, size_t len, dns_transport_t transport,
                    uint8_t **reply, size_t *reply_len);

/* ---- server: the zone on UDP and TCP ------------------------------------ */

typedef struct dns_server dns_server_t;

/* Listen on `addr` ("127.0.0.1:8600", "[::1]:8600", "0.0.0.0:0"), UDP and
 * TCP on the same port; port 0 picks a free one (dns_server_port() tells
 * which). The host must be a numeric IP address. `table` is borrowed and
 * must outlive the server; `opts` as for dns_zone_new(). On failure *out
 * is NULL and there is nothing to free. Call every dns_server_* function on
 * `loop`'s thread. */
int dns_server_start(uv_loop_t *loop, const char *addr, loc_table_t *table, const dns_opts_t *opts,
                     dns_server_t **out, err_t *err);
int dns_server_port(const dns_server_t *s);

/* Close the sockets and every TCP connection (queries in flight are
 * dropped), free the server, then call `done` (may be NULL) from a loop
 * callback, never from within this call. */
void dns_server_stop(dns_server_t *s, void (*done)(void *data), void *data);

#endif
