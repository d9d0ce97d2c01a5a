/* sched/place: see place.h.
 *
 * Layout for speed: the cluster keeps nodes as parallel arrays, and an app
 * compiles each constraint's field into a small integer per node (the id
 * of the node's value, -1 for none), evaluates the static constraints once
 * into one flag per node, and keeps per-value counts for the dynamic ones.
 * A pick is then one pass over arrays with no string work. */
#include "sched/place.h"

#include "core/alloc.h"
#include "core/buf.h"
#include "core/json.h"

#include <errno.h>
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <string.h>

#define PLACE_EPS 1e-9

typedef struct place_fixed {
    int *v;
    size_t n, cap;
} place_fixed_t;

struct place_cluster {
    size_t n, cap;
    char **id, **host;
    json_t **labels;
    double *cpus, *cpus_used;
    int64_t *mem, *mem_used;
    int *lo, *hi, *ports_used;
    unsigned *iso;
    place_fixed_t *fixed;
};

typedef enum { OP_UNIQUE, OP_CLUSTER, OP_GROUP_BY, OP_LIKE, OP_UNLIKE, OP_MAX_PER, OP_IS } op_t;

typedef struct pcons {
    op_t op;
    char *field, *value;
    char *text; /* ["field", "OP", "value"] for messages */
    int *vid;   /* per node: value id, -1 without the field */
    size_t n_vals;
    char **vals;  /* value id -> text */
    int *count;   /* value id -> instances of the app */
    int max;      /* MAX_PER */
    int pinned;   /* CLUSTER without value: the value id in use, or -1 */
    bool is_static;
    bool *ok;     /* static: per node */
} pcons_t;

struct place_app {
    place_cluster_t *c;
    char *id;
    double cpus;
    int64_t mem;
    int n_ports;
    int *fixed;
    size_t n_fixed;
    unsigned isolate;
    place_strategy_t strategy;
    pcons_t *cons;
    size_t n_cons;
    bool *static_ok; /* per node: isolate and every static constraint */
    int *count;      /* per node: instances of the app */
    int group;       /* index of the GROUP_BY constraint, -1 */
};

/* ---- cluster -------------------------------------------------------------------------- */

place_cluster_t *place_cluster_new(void)
{
    return xcalloc(1, sizeof(place_cluster_t));
}

void place_cluster_free(place_cluster_t *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++) {
        free(c->id[i]);
        free(c->host[i]);
        json_decref(c->labels[i]);
        free(c->fixed[i].v);
    }
    free(c->id);
    free(c->host);
    free(c->labels);
    free(c->cpus);
    free(c->cpus_used);
    free(c->mem);
    free(c->mem_used);
    free(c->lo);
    free(c->hi);
    free(c->ports_used);
    free(c->iso);
    free(c->fixed);
    free(c);
}

int place_node_add(place_cluster_t *c, const place_node_in_t *n, err_t *err)
{
    if (!n->id || !*n->id)
        return err_set(err, -EINVAL, "node without an id");
    if (place_node_find(c, n->id) >= 0)
        return err_set(err, -EEXIST, "node %s added twice", n->id);
    if (!(n->cpus >= 0) || n->mem_mb < 0 || n->ports_hi < n->ports_lo)
        return err_set(err, -EINVAL, "node %s: negative capacity or an empty port range", n->id);
    if (n->labels && !json_is_object(n->labels))
        return err_set(err, -EINVAL, "node %s: labels must be an object", n->id);
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 16;
#define GROW(f) c->f = xrealloc(c->f, c->cap * sizeof(*c->f))
        GROW(id);
        GROW(host);
        GROW(labels);
        GROW(cpus);
        GROW(cpus_used);
        GROW(mem);
        GROW(mem_used);
        GROW(lo);
        GROW(hi);
        GROW(ports_used);
        GROW(iso);
        GROW(fixed);
#undef GROW
    }
    size_t i = c->n++;
    c->id[i] = xstrdup(n->id);
    c->host[i] = xstrdup(n->hostname ? n->hostname : n->id);
    c->labels[i] = n->labels ? json_deep_copy(n->labels) : json_object();
    c->cpus[i] = n->cpus;
    c->cpus_used[i] = 0;
    c->mem[i] = n->mem_mb;
    c->mem_used[i] = 0;
    c->lo[i] = n->ports_lo;
    c->hi[i] = n->ports_hi;
    c->ports_used[i] = 0;
    c->iso[i] = n->isolates;
    c->fixed[i] = (place_fixed_t){0};
    return (int)i;
}

size_t place_node_count(const place_cluster_t *c)
{
    return c->n;
}

const char *place_node_id(const place_cluster_t *c, int node)
{
    return node >= 0 && (size_t)node < c->n ? c->id[node] : NULL;
}

int place_node_find(const place_cluster_t *c, const char *id)
{
    for (size_t i = 0; i < c->n; i++)
        if (strcmp(c->id[i], id) == 0)
            return (int)i;
    return -1;
}

static int place_ports_total(const place_cluster_t *c, size_t i)
{
    return c->hi[i] > 0 ? c->hi[i] - c->lo[i] + 1 : 0;
}

static bool place_fixed_has(const place_fixed_t *f, int port)
{
    for (size_t i = 0; i < f->n; i++)
        if (f->v[i] == port)
            return true;
    return false;
}

void place_node_use(place_cluster_t *c, int node, double cpus, int64_t mem_mb, int n_ports,
                    const int *fixed, size_t n_fixed)
{
    if (node < 0 || (size_t)node >= c->n)
        return;
    c->cpus_used[node] += cpus;
    c->mem_used[node] += mem_mb;
    c->ports_used[node] += n_ports;
    place_fixed_t *f = &c->fixed[node];
    for (size_t i = 0; i < n_fixed; i++) {
        if (f->n == f->cap) {
            f->cap = f->cap ? f->cap * 2 : 4;
            f->v = xrealloc(f->v, f->cap * sizeof(int));
        }
        f->v[f->n++] = fixed[i];
        /* a fixed port inside the range also takes one of its ports */
        if (fixed[i] >= c->lo[node] && fixed[i] <= c->hi[node])
            c->ports_used[node]++;
    }
}

void place_node_release(place_cluster_t *c, int node, double cpus, int64_t mem_mb, int n_ports,
                        const int *fixed, size_t n_fixed)
{
    if (node < 0 || (size_t)node >= c->n)
        return;
    c->cpus_used[node] -= cpus;
    c->mem_used[node] -= mem_mb;
    c->ports_used[node] -= n_ports;
    place_fixed_t *f = &c->fixed[node];
    for (size_t i = 0; i < n_fixed; i++) {
        for (size_t k = 0; k < f->n; k++)
            if (f->v[k] == fixed[i]) {
                f->v[k] = f->v[--f->n];
                break;
            }
        if (fixed[i] >= c->lo[node] && fixed[i] <= c->hi[node])
            c->ports_used[node]--;
    }
}

/* ---- app -------------------------------------------------------------------------------- */

static const char *place_field(const place_cluster_t *c, size_t i, const char *field)
{
    if (strcmp(field, "hostname") == 0)
        return c->host[i];
    json_t *v = json_object_get(c->labels[i], field);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static void pcons_free(pcons_t *k)
{
    free(k->field);
    free(k->value);
    free(k->text);
    free(k->vid);
    for (size_t i = 0; i < k->n_vals; i++)
        free(k->vals[i]);
    free(k->vals);
    free(k->count);
    free(k->ok);
}

void place_app_free(place_app_t *a)
{
    if (!a)
        return;
    for (size_t i = 0; i < a->n_cons; i++)
        pcons_free(&a->cons[i]);
    free(a->cons);
    free(a->static_ok);
    free(a->count);
    free(a->fixed);
    free(a->id);
    free(a);
}

/* Value ids for the field over every node. */
static void pcons_values(const place_cluster_t *c, pcons_t *k)
{
    json_t *ids = json_object();
    k->vid = xcalloc(c->n ? c->n : 1, sizeof(int));
    for (size_t i = 0; i < c->n; i++) {
        const char *v = place_field(c, i, k->field);
        if (!v) {
            k->vid[i] = -1;
            continue;
        }
        json_t *id = json_object_get(ids, v);
        if (!id) {
            k->vals = xrealloc(k->vals, (k->n_vals + 1) * sizeof(char *));
            k->vals[k->n_vals] = xstrdup(v);
            id = json_integer((json_int_t)k->n_vals++);
            json_object_set_new(ids, v, id);
        }
        k->vid[i] = (int)json_integer_value(id);
    }
    json_decref(ids);
    k->count = xcalloc(k->n_vals ? k->n_vals : 1, sizeof(int));
}

static int pcons_compile(const place_cluster_t *c, const json_t *cj, size_t idx, pcons_t *k,
                         err_t *err)
{
    static const char *const names[] = {"UNIQUE", "CLUSTER", "GROUP_BY", "LIKE",
                                        "UNLIKE", "MAX_PER", "IS"};
    if (!json_is_array(cj) || json_array_size(cj) < 2 || json_array_size(cj) > 3)
        return err_set(err, -EINVAL, "constraints[%zu]: expected [field, operator(, value)]", idx);
    const char *field = json_string_value(json_array_get(cj, 0));
    const char *op = json_string_value(json_array_get(cj, 1));
    json_t *vj = json_array_get(cj, 2);
    const char *value = json_string_value(vj);
    if (!field || !*field || !op || (vj && !value))
        return err_set(err, -EINVAL, "constraints[%zu]: field, operator and value are strings",
                       idx);
    size_t o = 0;
    while (o < sizeof(names) / sizeof(*names) && strcmp(names[o], op) != 0)
        o++;
    if (o == sizeof(names) / sizeof(*names))
        return err_set(err, -EINVAL, "constraints[%zu]: unknown operator %s", idx, op);
    k->op = (op_t)o;
    k->pinned = -1;
    bool needs = k->op == OP_CLUSTER ? false
                 : k->op == OP_UNIQUE || k->op == OP_GROUP_BY ? false
                                                              : true;
    if (needs && !value)
        return err_set(err, -EINVAL, "constraints[%zu]: %s needs a value", idx, op);
    if (k->op == OP_UNIQUE && value)
        return err_set(err, -EINVAL, "constraints[%zu]: UNIQUE takes no value", idx);
    if (k->op == OP_MAX_PER) {
        char *end = NULL;
        long m = strtol(value, &end, 10);
        if (!end || *end || m < 1 || m > 1000000)
            return err_set(err, -EINVAL, "constraints[%zu]: MAX_PER needs a positive integer",
                           idx);
        k->max = (int)m;
    }
    k->field = xstrdup(field);
    k->value = value ? xstrdup(value) : NULL;
    k->text = value ? xasprintf("[\"%s\", \"%s\", \"%s\"]", field, op, value)
                    : xasprintf("[\"%s\", \"%s\"]", field, op);
    pcons_values(c, k);
    k->is_static = k->op == OP_LIKE || k->op == OP_UNLIKE || k->op == OP_IS ||
                   (k->op == OP_CLUSTER && value);
    if (!k->is_static)
        return 0;
    k->ok = xcalloc(c->n ? c->n : 1, sizeof(bool));
    regex_t re;
    if (k->op == OP_LIKE || k->op == OP_UNLIKE) {
        char *anchored = xasprintf("^(%s)$", value);
        int rc = regcomp(&re, anchored, REG_EXTENDED | REG_NOSUB);
        free(anchored);
        if (rc)
            return err_set(err, -EINVAL, "constraints[%zu]: %s is not a regular expression",
                           idx, value);
    }
    /* evaluate per distinct value, then spread over the nodes */
    bool *vok = xcalloc(k->n_vals ? k->n_vals : 1, sizeof(bool));
    for (size_t v = 0; v < k->n_vals; v++) {
        switch (k->op) {
        case OP_LIKE: vok[v] = regexec(&re, k->vals[v], 0, NULL, 0) == 0; break;
        case OP_UNLIKE: vok[v] = regexec(&re, k->vals[v], 0, NULL, 0) != 0; break;
        default: vok[v] = strcmp(k->vals[v], value) == 0; break;
        }
    }
    for (size_t i = 0; i < c->n; i++)
        k->ok[i] = k->vid[i] >= 0 ? vok[k->vid[i]] : k->op == OP_UNLIKE;
    free(vok);
    if (k->op == OP_LIKE || k->op == OP_UNLIKE)
        regfree(&re);
    return 0;
}

int place_app_new(place_cluster_t *c, const place_app_in_t *in, place_app_t **out, err_t *err)
{
    *out = NULL;
    if (in->constraints && !json_is_array(in->constraints))
        return err_set(err, -EINVAL, "constraints: expected an array");
    place_app_t *a = xcalloc(1, sizeof(*a));
    a->c = c;
    a->id = xstrdup(in->id ? in->id : "?");
    a->cpus = in->cpus;
    a->mem = in->mem_mb;
    a->n_ports = in->n_ports;
    a->n_fixed = in->n_fixed;
    a->fixed = xcalloc(in->n_fixed ? in->n_fixed : 1, sizeof(int));
    if (in->n_fixed)
        memcpy(a->fixed, in->fixed, in->n_fixed * sizeof(int));
    a->isolate = in->isolate ? in->isolate : PLACE_ISO_PROCESS;
    a->strategy = in->strategy;
    a->group = -1;
    size_t n = json_array_size(in->constraints);
    a->cons = xcalloc(n ? n : 1, sizeof(pcons_t));
    for (size_t i = 0; i < n; i++) {
        int rc = pcons_compile(c, json_array_get(in->constraints, i), i, &a->cons[i], err);
        a->n_cons = i + 1;
        if (rc) {
            place_app_free(a);
            return rc;
        }
        if (a->cons[i].op == OP_GROUP_BY && a->group < 0)
            a->group = (int)i;
    }
    a->static_ok = xcalloc(c->n ? c->n : 1, sizeof(bool));
    a->count = xcalloc(c->n ? c->n : 1, sizeof(int));
    for (size_t i = 0; i < c->n; i++) {
        bool ok = (c->iso[i] & a->isolate) != 0;
        for (size_t k = 0; ok && k < a->n_cons; k++)
            if (a->cons[k].is_static)
                ok = a->cons[k].ok[i];
        a->static_ok[i] = ok;
    }
    *out = a;
    return 0;
}

void place_app_count(place_app_t *a, int node, int delta)
{
    if (node < 0 || (size_t)node >= a->c->n)
        return;
    a->count[node] += delta;
    for (size_t k = 0; k < a->n_cons; k++) {
        pcons_t *p = &a->cons[k];
        int v = p->vid[node];
        if (v < 0 || p->is_static)
            continue;
        p->count[v] += delta;
        if (p->op == OP_CLUSTER && p->pinned < 0 && p->count[v] > 0)
            p->pinned = v;
        if (p->op == OP_CLUSTER && p->pinned == v && p->count[v] <= 0) {
            /* the value frees up once none of the app's instances uses it */
            p->pinned = -1;
            for (size_t x = 0; x < p->n_vals; x++)
                if (p->count[x] > 0)
                    p->pinned = (int)x;
        }
    }
}

/* Why node i refuses one more instance, as a kind (for the summary) and a
 * sentence; 0 when it fits. */
enum { WHY_OK = 0, WHY_ISOLATE, WHY_CONSTRAINT, WHY_CPUS, WHY_MEM, WHY_PORTS, WHY_FIXED };

static int place_why(const place_cluster_t *c, const place_app_t *a, size_t i, int *cons)
{
    *cons = -1;
    if (!(c->iso[i] & a->isolate))
        return WHY_ISOLATE;
    for (size_t k = 0; k < a->n_cons; k++) {
        const pcons_t *p = &a->cons[k];
        int v = p->vid[i];
        bool ok = true;
        if (p->is_static)
            ok = p->ok[i];
        else if (p->op == OP_UNIQUE)
            ok = v >= 0 && p->count[v] == 0;
        else if (p->op == OP_MAX_PER)
            ok = v >= 0 && p->count[v] < p->max;
        else if (p->op == OP_CLUSTER)
            ok = v >= 0 && (p->pinned < 0 || p->pinned == v);
        else if (p->op == OP_GROUP_BY)
            ok = v >= 0;
        if (!ok) {
            *cons = (int)k;
            return WHY_CONSTRAINT;
        }
    }
    if (c->cpus_used[i] + a->cpus > c->cpus[i] + PLACE_EPS)
        return WHY_CPUS;
    if (c->mem_used[i] + a->mem > c->mem[i])
        return WHY_MEM;
    if (c->ports_used[i] + a->n_ports > place_ports_total(c, i))
        return WHY_PORTS;
    for (size_t f = 0; f < a->n_fixed; f++)
        if (place_fixed_has(&c->fixed[i], a->fixed[f]))
            return WHY_FIXED;
    return WHY_OK;
}

static double place_share(const place_cluster_t *c, size_t i)
{
    double s = 0;
    if (c->cpus[i] > 0)
        s += c->cpus_used[i] / c->cpus[i];
    if (c->mem[i] > 0)
        s += (double)c->mem_used[i] / (double)c->mem[i];
    return s;
}

int place_pick(place_cluster_t *c, place_app_t *a)
{
    int best = -1;
    int best_group = 0, best_count = 0;
    double best_share = 0;
    const pcons_t *g = a->group >= 0 ? &a->cons[a->group] : NULL;
    for (size_t i = 0; i < c->n; i++) {
        if (!a->static_ok[i])
            continue;
        /* resources first: the cheapest refusals */
        if (c->cpus_used[i] + a->cpus > c->cpus[i] + PLACE_EPS ||
            c->mem_used[i] + a->mem > c->mem[i] ||
            c->ports_used[i] + a->n_ports > place_ports_total(c, i))
            continue;
        int why, cons;
        if (a->n_cons || a->n_fixed) {
            why = place_why(c, a, i, &cons);
            if (why)
                continue;
        }
        int group = g ? g->count[g->vid[i]] : 0;
        double share = place_share(c, i);
        bool better;
        if (best < 0)
            better = true;
        else if (group != best_group)
            better = group < best_group;
        else if (a->strategy == PLACE_BINPACK)
            better = share > best_share + PLACE_EPS;
        else if (a->count[i] != best_count)
            better = a->count[i] < best_count;
        else
            better = share < best_share - PLACE_EPS;
        if (better) {
            best = (int)i;
            best_group = group;
            best_count = a->count[i];
            best_share = share;
        }
    }
    if (best < 0)
        return -ENOSPC;
    place_node_use(c, best, a->cpus, a->mem, a->n_ports, a->fixed, a->n_fixed);
    place_app_count(a, best, 1);
    return best;
}

json_t *place_explain(const place_cluster_t *c, const place_app_t *a, size_t max_nodes)
{
    json_t *nodes = json_array();
    size_t counts[WHY_FIXED + 1] = {0};
    size_t *cons_counts = xcalloc(a->n_cons ? a->n_cons : 1, sizeof(size_t));
    size_t fit = 0;
    for (size_t i = 0; i < c->n; i++) {
        int cons;
        int why = place_why(c, a, i, &cons);
        counts[why]++;
        if (why == WHY_OK) {
            fit++;
            continue;
        }
        if (why == WHY_CONSTRAINT)
            cons_counts[cons]++;
        if (json_array_size(nodes) >= max_nodes)
            continue;
        char msg[512];
        switch (why) {
        case WHY_ISOLATE: {
            char have[64] = "";
            static const char *const iso_names[] = {"process", "oci", "docker"};
            for (int b = 0; b < 3; b++)
                if (c->iso[i] & (1u << b))
                    snprintf(have + strlen(have), sizeof(have) - strlen(have), "%s%s",
                             have[0] ? ", " : "", iso_names[b]);
            const char *want = a->isolate & PLACE_ISO_OCI      ? "oci"
                               : a->isolate & PLACE_ISO_DOCKER ? "docker"
                                                               : "process";
            snprintf(msg, sizeof(msg), "no isolate %s (has %s)", want, have[0] ? have : "none");
            break;
        }
        case WHY_CONSTRAINT: {
            const pcons_t *p = &a->cons[cons];
            const char *v = place_field(c, i, p->field);
            if (!v)
                snprintf(msg, sizeof(msg), "constraint %s refused (no %s)", p->text, p->field);
            else if (p->op == OP_UNIQUE || p->op == OP_MAX_PER)
                snprintf(msg, sizeof(msg), "constraint %s refused (%s already on %s=%s)", p->text,
                         p->op == OP_UNIQUE ? "one" : "the most",
                         p->field, v);
            else if (p->op == OP_CLUSTER && !p->value)
                snprintf(msg, sizeof(msg), "constraint %s refused (%s=%s; the app is on %s)",
                         p->text, p->field, v, p->pinned >= 0 ? p->vals[p->pinned] : "?");
            else
                snprintf(msg, sizeof(msg), "constraint %s refused (%s=%s)", p->text, p->field, v);
            break;
        }
        case WHY_CPUS:
            snprintf(msg, sizeof(msg), "not enough cpus (needs %g, free %g of %g)", a->cpus,
                     fmax(0, c->cpus[i] - c->cpus_used[i]), c->cpus[i]);
            break;
        case WHY_MEM:
            snprintf(msg, sizeof(msg),
                     "not enough memory (needs %lld MiB, free %lld of %lld)", (long long)a->mem,
                     (long long)(c->mem[i] - c->mem_used[i] > 0 ? c->mem[i] - c->mem_used[i] : 0),
                     (long long)c->mem[i]);
            break;
        case WHY_PORTS:
            snprintf(msg, sizeof(msg), "no free host port (range %d-%d used up)", c->lo[i],
                     c->hi[i]);
            break;
        default: {
            int port = 0;
            for (size_t f = 0; f < a->n_fixed && !port; f++)
                if (place_fixed_has(&c->fixed[i], a->fixed[f]))
                    port = a->fixed[f];
            snprintf(msg, sizeof(msg), "host port %d already in use", port);
            break;
        }
        }
        json_array_append_new(nodes, json_pack("{s:s, s:s}", "node", c->id[i], "reason", msg));
    }
    /* the summary: kinds of refusal, largest first */
    typedef struct {
        size_t n;
        char text[300];
    } part_t;
    part_t parts[64];
    size_t np = 0;
    for (size_t k = 0; k < a->n_cons && np < 60; k++)
        if (cons_counts[k]) {
            parts[np].n = cons_counts[k];
            snprintf(parts[np].text, sizeof(parts[np].text), "%zu refused by constraint %s",
                     cons_counts[k], a->cons[k].text);
            np++;
        }
    const struct {
        int why;
        const char *fmt;
    } kinds[] = {{WHY_ISOLATE, "%zu lack the isolate"},
                 {WHY_CPUS, "%zu lack cpus (needs %g)"},
                 {WHY_MEM, "%zu lack memory (needs %lld MiB)"},
                 {WHY_PORTS, "%zu have no free host port"},
                 {WHY_FIXED, "%zu have a required host port in use"}};
    for (size_t k = 0; k < sizeof(kinds) / sizeof(*kinds); k++) {
        size_t n = counts[kinds[k].why];
        if (!n)
            continue;
        parts[np].n = n;
        if (kinds[k].why == WHY_CPUS)
            snprintf(parts[np].text, sizeof(parts[np].text), kinds[k].fmt, n, a->cpus);
        else if (kinds[k].why == WHY_MEM)
            snprintf(parts[np].text, sizeof(parts[np].text), kinds[k].fmt, n, (long long)a->mem);
        else
            snprintf(parts[np].text, sizeof(parts[np].text), kinds[k].fmt, n);
        np++;
    }
    for (size_t x = 1; x < np; x++) /* insertion sort, largest first, stable */
        for (size_t y = x; y > 0 && parts[y].n > parts[y - 1].n; y--) {
            part_t t = parts[y];
            parts[y] = parts[y - 1];
            parts[y - 1] = t;
        }
    buf_t b;
    buf_init(&b, 4096);
    char head[64];
    if (c->n == 0)
        buf_append_str(&b, "no nodes registered");
    else {
        snprintf(head, sizeof(head), "%zu of %zu nodes fit", fit, c->n);
        buf_append_str(&b, head);
        for (size_t x = 0; x < np; x++) {
            buf_append_str(&b, x ? ", " : ": ");
            buf_append_str(&b, parts[x].text);
        }
    }
    buf_append(&b, "", 1);
    json_t *out = json_pack("{s:s, s:o}", "summary", b.data, "nodes", nodes);
    buf_free(&b);
    free(cons_counts);
    return out;
}
