#include "locator/table.h"

#include "core/alloc.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Entries live in an open-addressing hash table (lookups and changes in
 * constant time, so a metalocator applying a full table of 100k names
 * does not go quadratic), each allocated on its own so pointers handed out
 * stay put; name order, which full-table streams want, is a sorted array
 * of pointers rebuilt only when a name was added or removed since the
 * last ordered walk. */
typedef struct entry {
    loc_entry_t pub;
    loc_ep_t *eps; /* owned copies; pub.eps points here */
    uint64_t hash;
} entry_t;

typedef struct listener {
    int id;
    loc_table_listener_fn fn;
    void *data;
} listener_t;

struct loc_table {
    entry_t **slots; /* cap is a power of two; NULL: empty */
    size_t n, cap;
    entry_t **order; /* every entry by name, when order_valid */
    size_t order_cap;
    bool order_valid;
    uint64_t revision;
    listener_t *ls;
    size_t n_ls, cap_ls;
    int next_id;
};

loc_table_t *loc_table_new(void)
{
    return xcalloc(1, sizeof(loc_table_t));
}

static void entry_clear(entry_t *e)
{
    for (size_t i = 0; i < e->pub.n; i++) {
        free((char *)e->eps[i].host);
        free((char *)e->eps[i].instance);
        free((char *)e->eps[i].node);
    }
    free(e->eps);
    free((char *)e->pub.api);
    free((void *)e->pub.attrs);
    e->eps = NULL;
    e->pub.eps = NULL;
    e->pub.n = 0;
    e->pub.api = NULL;
    e->pub.attrs = NULL;
    e->pub.attrs_len = 0;
}

void loc_table_free(loc_table_t *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->cap; i++) {
        entry_t *e = t->slots[i];
        if (!e)
            continue;
        entry_clear(e);
        free((char *)e->pub.name);
        free(e);
    }
    free(t->slots);
    free(t->order);
    free(t->ls);
    free(t);
}

static uint64_t name_hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ull;
    }
    return h;
}

/* The slot holding name, or the empty slot where it would go. */
static size_t table_slot(const loc_table_t *t, const char *name, uint64_t h)
{
    size_t mask = t->cap - 1;
    size_t i = (size_t)h & mask;
    while (t->slots[i] && (t->slots[i]->hash != h || strcmp(t->slots[i]->pub.name, name) != 0))
        i = (i + 1) & mask;
    return i;
}

static entry_t *table_find(const loc_table_t *t, const char *name, uint64_t h)
{
    return t->cap ? t->slots[table_slot(t, name, h)] : NULL;
}

/* Keep the load under 1/2 so probes stay short. */
static void table_grow(loc_table_t *t)
{
    size_t old_cap = t->cap;
    entry_t **old = t->slots;
    t->cap = old_cap ? old_cap * 2 : 16;
    t->slots = xcalloc(t->cap, sizeof(entry_t *));
    for (size_t i = 0; i < old_cap; i++)
        if (old[i])
            t->slots[table_slot(t, old[i]->pub.name, old[i]->hash)] = old[i];
    free(old);
}

/* Linear probing's deletion: pull later members of the probe run back so
 * no lookup stops early at the hole. */
static void table_delete_slot(loc_table_t *t, size_t i)
{
    size_t mask = t->cap - 1;
    t->slots[i] = NULL;
    for (size_t j = (i + 1) & mask; t->slots[j]; j = (j + 1) & mask) {
        entry_t *e = t->slots[j];
        size_t home = (size_t)e->hash & mask;
        /* e may move to i when i lies cyclically in [home, j) */
        bool movable = i <= j ? (home <= i || home > j) : (home <= i && home > j);
        if (movable) {
            t->slots[i] = e;
            t->slots[j] = NULL;
            i = j;
        }
    }
}

static int entry_name_cmp(const void *a, const void *b)
{
    return strcmp((*(entry_t *const *)a)->pub.name, (*(entry_t *const *)b)->pub.name);
}

/* Name order for walks; the cache is rebuilt after adds and removals
 * (updates of existing names keep it valid). */
static void table_order(loc_table_t *t)
{
    if (t->order_valid)
        return;
    if (t->order_cap < t->n) {
        t->order_cap = t->n;
        t->order = xrealloc(t->order, t->order_cap * sizeof(entry_t *));
    }
    size_t k = 0;
    for (size_t i = 0; i < t->cap; i++)
        if (t->slots[i])
            t->order[k++] = t->slots[i];
    if (k > 1)
        qsort(t->order, k, sizeof(entry_t *), entry_name_cmp);
    t->order_valid = true;
}

static int ep_cmp(const void *a, const void *b)
{
    const loc_ep_t *x = a, *y = b;
    int c = strcmp(x->host, y->host);
    if (c)
        return c;
    if (x->port != y->port)
        return x->port < y->port ? -1 : 1;
    c = strcmp(x->instance ? x->instance : "", y->instance ? y->instance : "");
    if (c)
        return c;
    /* Ties broken on every field, so the same endpoints given in another
     * order sort the same and do not count as a change. */
    c = strcmp(x->node ? x->node : "", y->node ? y->node : "");
    if (c)
        return c;
    return x->version < y->version ? -1 : x->version > y->version;
}

static bool str_eq(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static bool eps_equal(const loc_ep_t *a, size_t na, const loc_ep_t *b, size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++)
        if (ep_cmp(&a[i], &b[i]) || a[i].version != b[i].version || !str_eq(a[i].node, b[i].node))
            return false;
    return true;
}

static void table_notify(loc_table_t *t, const loc_entry_t *e)
{
    /* Iterate by id so a listener that removes itself (or others) is safe. */
    int last = 0;
    for (;;) {
        listener_t *next = NULL;
        for (size_t i = 0; i < t->n_ls; i++)
            if (t->ls[i].id > last && (!next || t->ls[i].id < next->id))
                next = &t->ls[i];
        if (!next)
            return;
        last = next->id;
        listener_t l = *next;
        l.fn(t, e, l.data);
    }
}

static bool attrs_equal(const loc_entry_t *e, const void *attrs, size_t len)
{
    return e->attrs_len == len && (len == 0 || memcmp(e->attrs, attrs, len) == 0);
}

void loc_table_set(loc_table_t *t, const char *name, const loc_ep_t *eps, size_t n, int64_t version,
                   const char *api)
{
    loc_table_set_attrs(t, name, eps, n, version, api, NULL, 0);
}

void loc_table_set_attrs(loc_table_t *t, const char *name, const loc_ep_t *eps, size_t n,
                         int64_t version, const char *api, const void *attrs, size_t attrs_len)
{
    if (!attrs)
        attrs_len = 0;
    loc_ep_t *copy = xcalloc(n ? n : 1, sizeof(loc_ep_t));
    for (size_t i = 0; i < n; i++) {
        copy[i].host = xstrdup(eps[i].host ? eps[i].host : "");
        copy[i].port = eps[i].port;
        copy[i].instance = eps[i].instance ? xstrdup(eps[i].instance) : NULL;
        copy[i].node = eps[i].node ? xstrdup(eps[i].node) : NULL;
        copy[i].version = eps[i].version;
    }
    qsort(copy, n, sizeof(loc_ep_t), ep_cmp);
    /* NULL is stored as "service"; compare it as such, or setting the same
     * endpoints again would count as a change. */
    if (!api)
        api = "service";
    uint64_t h = name_hash(name);
    entry_t *found = table_find(t, name, h);
    if (found && eps_equal(found->eps, found->pub.n, copy, n) && found->pub.version == version &&
        str_eq(found->pub.api, api) && attrs_equal(&found->pub, attrs, attrs_len)) {
        entry_t tmp = {.eps = copy, .pub = {.n = n}};
        entry_clear(&tmp);
        return;
    }
    if (!found && n == 0) {
        free(copy);
        return;
    }
    t->revision++;
    if (n == 0) {
        /* Tell listeners with the name still valid, then drop it. */
        table_delete_slot(t, table_slot(t, name, h));
        t->n--;
        t->order_valid = false;
        loc_entry_t e = {.name = found->pub.name,
                         .eps = NULL,
                         .n = 0,
                         .version = version,
                         .api = found->pub.api};
        table_notify(t, &e);
        entry_clear(found);
        free((char *)found->pub.name);
        free(found);
        free(copy);
        return;
    }
    if (!found) {
        if ((t->n + 1) * 2 > t->cap)
            table_grow(t);
        found = xcalloc(1, sizeof(entry_t));
        found->pub.name = xstrdup(name);
        found->hash = h;
        t->slots[table_slot(t, name, h)] = found;
        t->n++;
        t->order_valid = false;
    } else {
        entry_clear(found);
    }
    entry_t *en = found;
    en->eps = copy;
    en->pub.eps = copy;
    en->pub.n = n;
    en->pub.version = version;
    en->pub.api = xstrdup(api);
    if (attrs_len) {
        void *a = xmalloc(attrs_len);
        memcpy(a, attrs, attrs_len);
        en->pub.attrs = a;
        en->pub.attrs_len = attrs_len;
    }
    loc_entry_t snapshot = en->pub;
    table_notify(t, &snapshot);
}

const loc_entry_t *loc_table_get(const loc_table_t *t, const char *name)
{
    entry_t *e = table_find(t, name, name_hash(name));
    return e ? &e->pub : NULL;
}

void loc_table_foreach(const loc_table_t *t, int (*fn)(const loc_entry_t *e, void *data),
                       void *data)
{
    /* The order cache is internal state, not the table's value: building
     * it in a const walk is what keeps walks cheap between changes. */
    loc_table_t *mt = (loc_table_t *)t;
    table_order(mt);
    for (size_t i = 0; i < mt->n; i++)
        if (fn(&mt->order[i]->pub, data))
            return;
}

size_t loc_table_count(const loc_table_t *t)
{
    return t->n;
}

uint64_t loc_table_revision(const loc_table_t *t)
{
    return t->revision;
}

int loc_table_listen(loc_table_t *t, loc_table_listener_fn fn, void *data)
{
    if (t->n_ls == t->cap_ls) {
        t->cap_ls = t->cap_ls ? t->cap_ls * 2 : 8;
        t->ls = xrealloc(t->ls, t->cap_ls * sizeof(listener_t));
    }
    int id = ++t->next_id;
    t->ls[t->n_ls++] = (listener_t){.id = id, .fn = fn, .data = data};
    return id;
}

void loc_table_unlisten(loc_table_t *t, int id)
{
    for (size_t i = 0; i < t->n_ls; i++) {
        if (t->ls[i].id == id) {
            t->ls[i] = t->ls[--t->n_ls];
            return;
        }
    }
}
