/* Fuzz the announce decoder: the input is one datagram as a listener would
 * read it from the multicast socket.
 *
 * Properties: no crash, no leak, no allocation out of proportion to the
 * input (msgpack-c would allocate gigabytes for a forged array header if the
 * pre-scan let one through); a decoded announce is well-formed (valid uuid,
 * 1..ANNOUNCE_MAX_ENDPOINTS endpoints, sorted, unique, ports in range), and
 * its canonical form is a fixed point: encoding it and decoding the result
 * gives back exactly the same announce. */
#include "core/buf.h"
#include "core/log.h"
#include "locator/announce.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "fuzz_locator_announce: %s\n", what);
        abort();
    }
}

static void check_msg(const announce_msg_t *m)
{
    size_t ulen = strlen(m->uuid);
    check(ulen >= 1 && ulen <= ANNOUNCE_UUID_MAX, "uuid length");
    for (size_t i = 0; i < ulen; i++)
        check(m->uuid[i] > 0x20 && m->uuid[i] < 0x7f, "uuid byte");
    check(m->n >= 1 && m->n <= ANNOUNCE_MAX_ENDPOINTS, "endpoint count");
    for (size_t i = 0; i < m->n; i++) {
        size_t alen = strlen(m->eps[i].addr);
        check(alen >= 1 && alen <= ANNOUNCE_ADDR_MAX, "address length");
        check(m->eps[i].port >= 1 && m->eps[i].port <= 65535, "port range");
        if (i > 0) {
            int c = strcmp(m->eps[i - 1].addr, m->eps[i].addr);
            check(c < 0 || (c == 0 && m->eps[i - 1].port < m->eps[i].port),
                  "endpoints not sorted and unique");
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int once;
    static announce_msg_t *m1, *m2;
    if (!once) {
        log_setup(LOG_OFF, LOG_TEXT);
        m1 = malloc(sizeof(*m1));
        m2 = malloc(sizeof(*m2));
        once = 1;
    }
    err_t err;
    int rc = announce_decode(data, size, m1, &err);
    if (rc < 0) {
        check(rc == -EMSGSIZE || rc == -EPROTO || rc == -EINVAL, "unexpected error code");
        check(err.msg[0] != '\0', "error without a message");
        check(rc != -EMSGSIZE || size > ANNOUNCE_MAX_DATAGRAM, "EMSGSIZE for a small datagram");
        return 0;
    }
    check(size <= ANNOUNCE_MAX_DATAGRAM, "accepted an oversized datagram");
    check_msg(m1);

    /* Canonical addresses can be longer than what was sent ("::a:b" is
     * "::0.10.0.11"), so the re-encoding may not fit; when it does, it
     * decodes to the same announce. */
    buf_t b = BUF_INIT(0);
    rc = announce_encode(&b, m1->uuid, m1->eps, m1->n, &err);
    check(rc == 0 || rc == -EMSGSIZE, "a decoded announce does not encode");
    if (rc == 0) {
        check(b.len <= ANNOUNCE_MAX_DATAGRAM, "encoding over the limit");
        check(announce_decode(b.data, b.len, m2, &err) == 0, "own encoding does not decode");
        check(strcmp(m1->uuid, m2->uuid) == 0, "uuid changed in a round trip");
        check(m1->n == m2->n, "endpoint count changed in a round trip");
        for (size_t i = 0; i < m1->n; i++)
            check(strcmp(m1->eps[i].addr, m2->eps[i].addr) == 0 &&
                      m1->eps[i].port == m2->eps[i].port,
                  "endpoint changed in a round trip");
    }
    buf_free(&b);
    return 0;
}
