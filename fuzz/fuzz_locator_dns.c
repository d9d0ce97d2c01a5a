/* Fuzz the DNS query handler: the input is one raw DNS message, answered
 * as if it came over UDP and over TCP by a zone over a fixed table (a few
 * small apps and one with 300 endpoints, so truncation runs too). Every
 * answer must be a well-formed response to the same id, within the size
 * its transport allows. */
#include "locator/dns.h"
#include "locator/table.h"

#include <ldns/ldns.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "fuzz_locator_dns: %s\n", what);
        abort();
    }
}

static loc_table_t *table;
static dns_zone_t *zone;

static void setup(void)
{
    table = loc_table_new();
    loc_ep_t web[] = {{"10.0.0.1", 8080, "i1", "n1", 1},
                      {"10.0.0.1", 8081, "i2", "n1", 1},
                      {"10.0.0.2", 8080, NULL, NULL, 1},
                      {"fe80::1", 80, NULL, NULL, 1}};
    loc_table_set(table, "/production/web", web, 4, 1, "service");
    loc_ep_t one[] = {{"192.168.0.9", 0, NULL, NULL, 2}};
    loc_table_set(table, "/app/production/test-server", one, 1, 2, "service");
    static char hosts[300][24];
    loc_ep_t many[300];
    for (int i = 0; i < 300; i++) {
        snprintf(hosts[i], sizeof(hosts[i]), "10.2.%d.%d", i / 250, i % 250 + 1);
        many[i] = (loc_ep_t){hosts[i], 1000 + i, NULL, NULL, 1};
    }
    loc_table_set(table, "/production/big", many, 300, 1, "service");
    dns_opts_t o;
    dns_opts_default(&o);
    check(dns_zone_new(table, &o, &zone, NULL) == 0, "zone");
}

static void run(const uint8_t *data, size_t size, dns_transport_t tr)
{
    uint8_t *reply = (uint8_t *)1;
    size_t len = 99;
    int rc = dns_zone_answer(zone, data, size, tr, &reply, &len);
    if (rc != 0) {
        check(reply == NULL && len == 0, "dropped message left a reply");
        check(size < 12 || (data[2] & 0x80), "a query with a header was dropped");
        return;
    }
    check(size >= 12, "answered a message shorter than a header");
    check(len >= 12 && len <= 65535, "reply size");
    check(reply[0] == data[0] && reply[1] == data[1], "reply id");
    check(reply[2] & 0x80, "reply QR bit");
    ldns_pkt *p = NULL;
    check(ldns_wire2pkt(&p, reply, len) == LDNS_STATUS_OK, "reply does not parse");
    if (tr == DNS_UDP)
        check(len <= (ldns_pkt_edns(p) ? 1232u : 512u), "udp reply too big");
    check(ldns_pkt_qdcount(p) <= 1, "reply questions");
    ldns_pkt_free(p);
    free(reply);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!zone)
        setup();
    /* a copy of exactly `size` bytes, so ASan sees any over-read */
    uint8_t *msg = malloc(size ? size : 1);
    memcpy(msg, data, size);
    run(msg, size, DNS_UDP);
    run(msg, size, DNS_TCP);
    free(msg);
    return 0;
}
