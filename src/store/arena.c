#include "core/alloc.h"
#include "store/store_internal.h"

#include <stdalign.h>
#include <stdlib.h>
#include <string.h>

#define ARENA_BLOCK 8192
#define ARENA_ALIGN alignof(max_align_t)

struct store_arena_blk {
    store_arena_blk_t *next;
    size_t used;
    size_t cap;
    max_align_t data[];
};

/* Small allocations are carved from the head block; a large one (a value of
 * up to STORE_VALUE_MAX) gets a block of its own linked behind the head, so
 * the partly used head keeps serving small allocations. */
void *store_arena_alloc(store_arena_t *a, size_t n)
{
    n = (n + ARENA_ALIGN - 1) & ~(ARENA_ALIGN - 1);
    if (n == 0)
        n = ARENA_ALIGN;
    store_arena_blk_t *h = a->head;
    if (h && h->cap - h->used >= n) {
        void *p = (char *)h->data + h->used;
        h->used += n;
        return p;
    }
    if (n > ARENA_BLOCK / 4) {
        store_arena_blk_t *b = xmalloc(sizeof(*b) + n);
        b->used = b->cap = n;
        if (h) {
            b->next = h->next;
            h->next = b;
        } else {
            b->next = NULL;
            a->head = b;
        }
        return b->data;
    }
    store_arena_blk_t *b = xmalloc(sizeof(*b) + ARENA_BLOCK);
    b->cap = ARENA_BLOCK;
    b->used = n;
    b->next = h;
    a->head = b;
    return b->data;
}

void *store_arena_zalloc(store_arena_t *a, size_t n)
{
    void *p = store_arena_alloc(a, n);
    memset(p, 0, n);
    return p;
}

char *store_arena_memdup(store_arena_t *a, const void *p, size_t n)
{
    char *d = store_arena_alloc(a, n + 1);
    if (n)
        memcpy(d, p, n);
    d[n] = '\0';
    return d;
}

void store_arena_free(store_arena_t *a)
{
    store_arena_blk_t *b = a->head;
    while (b) {
        store_arena_blk_t *next = b->next;
        free(b);
        b = next;
    }
    a->head = NULL;
}
