/* sqlite_lease.c: the store thread's in-memory lease table. Lease expiry
 * times live only in memory (a restart gives every lease a fresh TTL, as
 * etcd does on a leader change), so keepalives cost no disk write. A hash
 * finds a lease by id for puts and keepalives; a min-heap tells the store
 * thread how long it may sleep before the next lease expires. */
#include "core/alloc.h"
#include "store/sqlite_internal.h"

#include <stdlib.h>

/* splitmix64 finaliser: lease ids are sequential, spread them over buckets. */
static size_t sq_lease_hash(int64_t id, size_t n_buckets)
{
    uint64_t x = (uint64_t)id;
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return (size_t)(x & (n_buckets - 1));
}

sq_lease_t *sq_leases_find(const sq_leases_t *l, int64_t id)
{
    if (!l->n_buckets)
        return NULL;
    for (sq_lease_t *e = l->buckets[sq_lease_hash(id, l->n_buckets)]; e; e = e->hnext)
        if (e->id == id)
            return e;
    return NULL;
}

static void sq_leases_rehash(sq_leases_t *l, size_t n_buckets)
{
    sq_lease_t **nb = xcalloc(n_buckets, sizeof(*nb));
    for (size_t i = 0; i < l->n_buckets; i++) {
        sq_lease_t *e = l->buckets[i];
        while (e) {
            sq_lease_t *next = e->hnext;
            size_t h = sq_lease_hash(e->id, n_buckets);
            e->hnext = nb[h];
            nb[h] = e;
            e = next;
        }
    }
    free(l->buckets);
    l->buckets = nb;
    l->n_buckets = n_buckets;
}

static void sq_heap_swap(sq_leases_t *l, size_t a, size_t b)
{
    sq_lease_t *t = l->heap[a];
    l->heap[a] = l->heap[b];
    l->heap[b] = t;
    l->heap[a]->heap_idx = a;
    l->heap[b]->heap_idx = b;
}

static void sq_heap_up(sq_leases_t *l, size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (l->heap[p]->expires_ms <= l->heap[i]->expires_ms)
            break;
        sq_heap_swap(l, p, i);
        i = p;
    }
}

static void sq_heap_down(sq_leases_t *l, size_t i)
{
    for (;;) {
        size_t m = i, a = 2 * i + 1, b = 2 * i + 2;
        if (a < l->n && l->heap[a]->expires_ms < l->heap[m]->expires_ms)
            m = a;
        if (b < l->n && l->heap[b]->expires_ms < l->heap[m]->expires_ms)
            m = b;
        if (m == i)
            return;
        sq_heap_swap(l, i, m);
        i = m;
    }
}

sq_lease_t *sq_leases_add(sq_leases_t *l, int64_t id, int64_t ttl_s, uint64_t expires_ms)
{
    if (l->n + 1 > l->n_buckets)
        sq_leases_rehash(l, l->n_buckets ? l->n_buckets * 2 : 16);
    if (l->n + 1 > l->heap_cap) {
        l->heap_cap = l->heap_cap ? l->heap_cap * 2 : 16;
        l->heap = xrealloc(l->heap, l->heap_cap * sizeof(*l->heap));
    }
    sq_lease_t *e = xcalloc(1, sizeof(*e));
    e->id = id;
    e->ttl_s = ttl_s;
    e->expires_ms = expires_ms;
    size_t h = sq_lease_hash(id, l->n_buckets);
    e->hnext = l->buckets[h];
    l->buckets[h] = e;
    e->heap_idx = l->n;
    l->heap[l->n++] = e;
    sq_heap_up(l, e->heap_idx);
    return e;
}

void sq_leases_remove(sq_leases_t *l, sq_lease_t *e)
{
    sq_lease_t **pp = &l->buckets[sq_lease_hash(e->id, l->n_buckets)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    size_t i = e->heap_idx;
    l->n--;
    if (i != l->n) {
        l->heap[i] = l->heap[l->n];
        l->heap[i]->heap_idx = i;
        sq_heap_down(l, i);
        sq_heap_up(l, i);
    }
    free(e);
}

void sq_leases_set_expiry(sq_leases_t *l, sq_lease_t *e, uint64_t expires_ms)
{
    e->expires_ms = expires_ms;
    sq_heap_down(l, e->heap_idx);
    sq_heap_up(l, e->heap_idx);
}

sq_lease_t *sq_leases_next(const sq_leases_t *l)
{
    return l->n ? l->heap[0] : NULL;
}

void sq_leases_free(sq_leases_t *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->heap[i]);
    free(l->heap);
    free(l->buckets);
    *l = (sq_leases_t){0};
}
