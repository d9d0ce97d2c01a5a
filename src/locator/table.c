#include "locator/table.h"

#include "core/alloc.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* A sorted array of entries: tables hold hundreds to a few thousand names,
 * changes are rare next to reads, and a sorted array makes ordered
 * iteration (full-table streams, DNS) free. */
typedef struct entry {
    loc_entry_t pub;
    loc_ep_t *eps; /* owned copies; pub.eps points here */
} entry_t;

typedef struct listener {
    int id;
    loc_table_listener_fn fn;
    void *data;
} listener_t;

struct loc_table {
    entry_t *entries;
    size_t n, cap;
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
    for (size_t i = 0; i < t->n; i++) {
        entry_clear(&t->entries[i]);
        free((char *)t->entries[i].pub.name);
    }
    free(t->entries);
    free(t->ls);
    free(t);
}

/* Index of name, or where it would go (with *found false). */
static size_t table_find(const loc_table_t *t, const char *name, bool *found)
{
    size_t lo = 0, hi = t->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(t->entries[mid].pub.name, name);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
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
    bool found;
    size_t at = table_find(t, name, &found);
    if (found && eps_equal(t->entries[at].eps, t->entries[at].pub.n, copy, n) &&
        t->entries[at].pub.version == version && str_eq(t->entries[at].pub.api, api) &&
        attrs_equal(&t->entries[at].pub, attrs, attrs_len)) {
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
        entry_t gone = t->entries[at];
        memmove(&t->entries[at], &t->entries[at + 1], (t->n - at - 1) * sizeof(entry_t));
        t->n--;
        loc_entry_t e = {
            .name = gone.pub.name, .eps = NULL, .n = 0, .version = version, .api = gone.pub.api};
        table_notify(t, &e);
        entry_clear(&gone);
        free((char *)gone.pub.name);
        free(copy);
        return;
    }
    if (!found) {
        if (t->n == t->cap) {
            t->cap = t->cap ? t->cap * 2 : 16;
            t->entries = xrealloc(t->entries, t->cap * sizeof(entry_t));
        }
        memmove(&t->entries[at + 1], &t->entries[at], (t->n - at) * sizeof(entry_t));
        t->n++;
        memset(&t->entries[at], 0, sizeof(entry_t));
        t->entries[at].pub.name = xstrdup(name);
    } else {
        entry_clear(&t->entries[at]);
    }
    entry_t *en = &t->entries[at];
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
    bool found;
    size_t at = table_find(t, name, &found);
    return found ? &t->entries[at].pub : NULL;
}

void loc_table_foreach(const loc_table_t *t, int (*fn)(const loc_entry_t *e, void *data),
                       void *data)
{
    for (size_t i = 0; i < t->n; i++)
        if (fn(&t->entries[i].pub, data))
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
