#include "agent/ports.h"

#include "core/alloc.h"
#include "core/str.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int ports_init(ports_t *p, int lo, int hi, err_t *err)
{
    if (lo < 1 || hi > 65535 || lo > hi)
        return err_set(err, -EINVAL, "port range %d-%d: expected 1 <= lo <= hi <= 65535", lo, hi);
    p->lo = lo;
    p->hi = hi;
    p->used = xcalloc(65536, 1);
    p->next = lo;
    p->n_used = 0;
    p->probe = true;
    return 0;
}

void ports_free(ports_t *p)
{
    free(p->used);
    p->used = NULL;
}

int ports_parse_range(const char *s, int *lo, int *hi, err_t *err)
{
    const char *dash = strchr(s, '-');
    int64_t a, b;
    char first[16];
    if (!dash || (size_t)(dash - s) >= sizeof(first))
        return err_set(err, -EINVAL, "port range %s: expected LO-HI, like 20000-32000", s);
    memcpy(first, s, (size_t)(dash - s));
    first[dash - s] = '\0';
    if (str_to_i64(first, 1, 65535, &a) || str_to_i64(dash + 1, 1, 65535, &b) || a > b)
        return err_set(err, -EINVAL, "port range %s: expected LO-HI within 1-65535, LO <= HI", s);
    *lo = (int)a;
    *hi = (int)b;
    return 0;
}

/* Can an instance listen on this TCP port? The agent only knows its own
 * instances; a stray process, an instance of another agent on the same
 * host or any daemon may hold a port of the range, and an app handed it
 * would fail to start (again and again, with backoff). SO_REUSEADDR: a port
 * whose last connection is in TIME_WAIT is free for a listener. */
static bool ports_bindable(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return true; /* cannot tell: do not refuse for it */
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    bool ok = bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 || errno != EADDRINUSE;
    close(fd);
    return ok;
}

/* Next free port in the range after p->next, wrapping once; 0 when full
 * (*busy: how many of the range other processes held). */
static int ports_find_free(ports_t *p, const int *taken_now, size_t n_taken, int *busy)
{
    int span = p->hi - p->lo + 1;
    for (int i = 0; i < span; i++) {
        int port = p->lo + (p->next - p->lo + i) % span;
        if (p->used[port])
            continue;
        bool dup = false;
        for (size_t j = 0; j < n_taken; j++)
            dup |= taken_now[j] == port;
        if (dup)
            continue;
        if (p->probe && !ports_bindable(port)) {
            (*busy)++;
            continue;
        }
        return port;
    }
    return 0;
}

int ports_alloc(ports_t *p, size_t n, const int *want, int *out, err_t *err)
{
    /* Fixed ports first, so a dynamic pick never steals one asked for. */
    for (size_t i = 0; i < n; i++) {
        out[i] = 0;
        int w = want ? want[i] : 0;
        if (w == 0)
            continue;
        if (w < 1 || w > 65535)
            return err_set(err, -EINVAL, "port %d: not a valid port", w);
        if (p->used[w])
            return err_set(err, -EADDRINUSE, "port %d is already used by another instance", w);
        for (size_t j = 0; j < i; j++)
            if (out[j] == w)
                return err_set(err, -EINVAL, "port %d is asked for twice", w);
        out[i] = w;
    }
    for (size_t i = 0; i < n; i++) {
        if (out[i])
            continue;
        int busy = 0;
        int port = ports_find_free(p, out, n, &busy);
        if (!port)
            return err_set(err, -EADDRNOTAVAIL,
                           "no free port: all %d ports of the range %d-%d are in use "
                           "(%d by other processes of the host)",
                           p->hi - p->lo + 1, p->lo, p->hi, busy);
        out[i] = port;
        p->next = port + 1 > p->hi ? p->lo : port + 1;
    }
    for (size_t i = 0; i < n; i++) {
        p->used[out[i]] = 1;
        p->n_used++;
    }
    return 0;
}

int ports_reserve(ports_t *p, size_t n, const int *ports, err_t *err)
{
    for (size_t i = 0; i < n; i++)
        if (ports[i] < 1 || ports[i] > 65535 || p->used[ports[i]])
            return err_set(err, -EADDRINUSE, "port %d is already used by another instance",
                           ports[i]);
    for (size_t i = 0; i < n; i++) {
        p->used[ports[i]] = 1;
        p->n_used++;
    }
    return 0;
}

void ports_release(ports_t *p, size_t n, const int *ports)
{
    for (size_t i = 0; i < n; i++) {
        if (ports[i] > 0 && ports[i] <= 65535 && p->used[ports[i]]) {
            p->used[ports[i]] = 0;
            p->n_used--;
        }
    }
}
