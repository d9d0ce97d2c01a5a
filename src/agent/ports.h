/* ports: the node's host port range, handed out to instances. A port is
 * never given to two instances at once and comes back on release. Fixed
 * ports (requirePorts, hostPort) are honoured or refused with the reason. */
#ifndef DROVER_AGENT_PORTS_H
#define DROVER_AGENT_PORTS_H

#include "core/err.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ports {
    int lo, hi;    /* inclusive range for dynamic ports */
    uint8_t *used; /* one byte per port 0..65535 (64 KiB; simple and fast) */
    int next;      /* where the next dynamic search starts: spreads reuse */
    size_t n_used;
    /* Skip a dynamic port something else on the host is bound to (a bind
     * probe); on by default, off in tests that need exact picks. */
    bool probe;
} ports_t;

int ports_init(ports_t *p, int lo, int hi, err_t *err);
void ports_free(ports_t *p);
/* Parse "20000-32000". */
int ports_parse_range(const char *s, int *lo, int *hi, err_t *err);
/* Allocate n ports. want[i] > 0 asks for that exact port (refused with a
 * reason when taken or invalid); want[i] == 0 takes a free one from the
 * range. All or nothing. want may be NULL (all dynamic). */
int ports_alloc(ports_t *p, size_t n, const int *want, int *out, err_t *err);
/* Mark ports as used (re-adopting a running instance); fails if taken. */
int ports_reserve(ports_t *p, size_t n, const int *ports, err_t *err);
void ports_release(ports_t *p, size_t n, const int *ports);

#endif
