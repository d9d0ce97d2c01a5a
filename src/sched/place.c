/* sched/place: see place.h.
 *
 * Built for a pick loop with no string work in it. The cluster keeps the
 * per-node numbers a pick reads (free cpus, free memory, free dynamic
 * ports, used share) side by side in one small record per node, cpus
 * counted in millionths so sums and releases are exact. Compiling an app
 * turns every constraint field into a small integer per node (the id of
 * the node's value, -1 without one), evaluates what never changes during
 * a reconcile (isolate, LIKE/UNLIKE/IS/CLUSTER with a value, a missing
 * label) once, and keeps per-value instance counts for the rest. UNIQUE,
 * MAX_PER and CLUSTER without a value do not get checked per node at pick
 * time either: when a value's count crosses the limit, the nodes holding
 * that value get a block mark (value -> nodes lists make that cheap), so
 * a pick reads one integer per node to know whether the constraints allow
 * it. GROUP_BY is the only constraint the pick loop consults, as the first
 * part of the ranking. */
#include "sched/place.h"

#include "core/alloc.h"
#include "core/buf.h"
#include "core/str.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <string.h>

#define PLACE_CPU_UNIT    1000000.0 /* cpus are counted in millionths */
#define PLACE_EPS         1e-9      /* shares closer than this are equal */
#define PLACE_STATIC      (1 << 24) /* block mark of a node refused for good */
#define PLACE_SUMMARY_MAX 16384

/* What a pick reads per node, packed so a scan streams through memory. */
typedef struct place_res {
    int64_t cpu_free; /* millionths of a cpu; negative when over-committed */
    int64_t mem_free; /* MiB; negative when over-committed */
    double share;     /* used share of cpus plus used share of memory */
    int32_t port_free;
    int32_t pad_;
} place_res_t;

/* Host ports held by instances on a node (a multiset: what already runs
 * may hold a port twice). */
typedef struct place_ports {
    int *v;
    size_t n, cap;
} place_ports_t;

struct place_cluster {
    size_t n, cap;
    place_res_t *res;
    int64_t *cpu_cap, *mem_cap;
    int *port_lo, *port_hi;
    unsigned *iso;
    char **id, **host;
    json_t **labels; /* own copies; read when apps compile */
    place_ports_t *fixed;
    json_t *index; /* node id -> index */
};

typedef enum { OP_UNIQUE, OP_CLUSTER, OP_GROUP_BY, OP_LIKE, OP_UNLIKE, OP_MAX_PER, OP_IS } op_t;

static const char *const op_names[] = {"UNIQUE", "CLUSTER", "GROUP_BY", "LIKE",
                                       "UNLIKE", "MAX_PER", "IS"};

/* One compiled constraint. */
typedef struct pcons {
    op_t op;
    bool dynamic; /* UNIQUE, MAX_PER, CLUSTER without a value: depends on counts */
    char *field;
    char *value; /* NULL without one */
    char *text;  /* ["field", "OP", "value"], for messages */
    int limit;   /* UNIQUE 1, MAX_PER its value */
    int *vid;    /* per node: value id, -1 without the field */
    char **vals; /* value id -> text */
    size_t n_vals;
    bool *vok;     /* static operators: value id -> accepted */
    int *count;    /* value id -> instances of the app */
    int64_t total; /* instances over every value (CLUSTER without a value) */
    int *vstart;   /* dynamic: nodes of value v are vnodes[vstart[v] .. vstart[v+1]) */
    int *vnodes;
} pcons_t;

struct place_app {
    place_cluster_t *c;
    size_t n; /* nodes when compiled: later nodes are not considered */
    char *id;
    int64_t cpu, mem;
    int ports;
    int *fixed;
    size_t n_fixed;
    unsigned isolate;
    place_strategy_t strategy;
    pcons_t *cons;
    size_t n_cons;
    size_t *groups; /* indices of the GROUP_BY constraints, in order */
    size_t n_groups;
    int *block; /* per node: PLACE_STATIC if refused for good, +1 per dynamic refusal */
    int *count; /* per node: instances of the app */
};

/* ---- cluster ---------------------------------------------------------------------------- */

place_cluster_t *place_cluster_new(void)
{
    place_cluster_t *c = xcalloc(1, sizeof(*c));
    c->index = json_object();
    return c;
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
    free(c->res);
    free(c->cpu_cap);
    free(c->mem_cap);
    free(c->port_lo);
    free(c->port_hi);
    free(c->iso);
    free(c->id);
    free(c->host);
    free(c->labels);
    free(c->fixed);
    json_decref(c->index);
    free(c);
}

/* A double count of cpus in millionths; what is not a number counts as
 * nothing rather than poisoning every later sum. */
static int64_t place_cpu_units(double cpus)
{
    if (!isfinite(cpus))
        return 0;
    if (cpus > 1e12)
        cpus = 1e12;
    if (cpus < -1e12)
        cpus = -1e12;
    return llround(cpus * PLACE_CPU_UNIT);
}

/* The share of the node in use, kept next to the free amounts so a pick
 * compares one number. Clamped at 0 so an over-release cannot rank a node
 * below an empty one. */
static void place_share_update(place_cluster_t *c, size_t i)
{
    place_res_t *r = &c->res[i];
    double s = 0;
    if (c->cpu_cap[i] > 0)
        s += fmax(0, (double)(c->cpu_cap[i] - r->cpu_free) / (double)c->cpu_cap[i]);
    if (c->mem_cap[i] > 0)
        s += fmax(0, (double)(c->mem_cap[i] - r->mem_free) / (double)c->mem_cap[i]);
    r->share = s;
}

static bool place_labels_ok(const json_t *labels)
{
    if (!labels)
        return true;
    if (!json_is_object(labels))
        return false;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)labels, k, v)
    {
        if (!json_is_string(v))
            return false;
    }
    return true;
}

int place_node_add(place_cluster_t *c, const place_node_in_t *n, err_t *err)
{
    if (!n->id || !*n->id)
        return err_set(err, -EINVAL, "node without an id");
    if (place_node_find(c, n->id) >= 0)
        return err_set(err, -EEXIST, "node %s added twice", n->id);
    if (!(n->cpus >= 0) || !isfinite(n->cpus) || n->cpus > 1e9 || n->mem_mb < 0)
        return err_set(err, -EINVAL, "node %s: capacity must be a non-negative number", n->id);
    if ((n->ports_lo || n->ports_hi) &&
        (n->ports_lo < 1 || n->ports_hi > 65535 || n->ports_lo > n->ports_hi))
        return err_set(err, -EINVAL, "node %s: port range %d-%d: expected 1 <= lo <= hi <= 65535",
                       n->id, n->ports_lo, n->ports_hi);
    if (!place_labels_ok(n->labels))
        return err_set(err, -EINVAL, "node %s: labels must be an object of string values", n->id);
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 16;
#define PLACE_GROW(f) c->f = xrealloc(c->f, c->cap * sizeof(*c->f))
        PLACE_GROW(res);
        PLACE_GROW(cpu_cap);
        PLACE_GROW(mem_cap);
        PLACE_GROW(port_lo);
        PLACE_GROW(port_hi);
        PLACE_GROW(iso);
        PLACE_GROW(id);
        PLACE_GROW(host);
        PLACE_GROW(labels);
        PLACE_GROW(fixed);
#undef PLACE_GROW
    }
    size_t i = c->n++;
    c->id[i] = xstrdup(n->id);
    c->host[i] = xstrdup(n->hostname && *n->hostname ? n->hostname : n->id);
    c->labels[i] = n->labels ? json_deep_copy(n->labels) : json_object();
    c->cpu_cap[i] = place_cpu_units(n->cpus);
    c->mem_cap[i] = n->mem_mb;
    c->port_lo[i] = n->ports_lo;
    c->port_hi[i] = n->ports_hi;
    c->iso[i] = n->isolates;
    c->fixed[i] = (place_ports_t){0};
    c->res[i] = (place_res_t){
        .cpu_free = c->cpu_cap[i],
        .mem_free = n->mem_mb,
        .port_free = n->ports_hi ? n->ports_hi - n->ports_lo + 1 : 0,
    };
    place_share_update(c, i);
    json_object_set_new(c->index, n->id, json_integer((json_int_t)i));
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
    json_t *v = id ? json_object_get(c->index, id) : NULL;
    return v ? (int)json_integer_value(v) : -1;
}

static bool place_in_range(const place_cluster_t *c, size_t i, int port)
{
    return c->port_hi[i] && port >= c->port_lo[i] && port <= c->port_hi[i];
}

static bool place_port_held(const place_ports_t *f, int port)
{
    for (size_t k = 0; k < f->n; k++)
        if (f->v[k] == port)
            return true;
    return false;
}

/* Take (sign 1) or give back (sign -1) resources on a node. A fixed port
 * inside the node's range also takes one of the range's ports, as the
 * agent's port table does. */
static void place_take(place_cluster_t *c, size_t i, int sign, int64_t cpu, int64_t mem,
                       int n_ports, const int *fixed, size_t n_fixed)
{
    place_res_t *r = &c->res[i];
    r->cpu_free -= sign * cpu;
    r->mem_free -= sign * mem;
    r->port_free -= sign * n_ports;
    place_ports_t *f = &c->fixed[i];
    for (size_t k = 0; k < n_fixed; k++) {
        if (sign > 0) {
            if (f->n == f->cap) {
                f->cap = f->cap ? f->cap * 2 : 4;
                f->v = xrealloc(f->v, f->cap * sizeof(*f->v));
            }
            f->v[f->n++] = fixed[k];
        } else {
            size_t j = 0;
            while (j < f->n && f->v[j] != fixed[k])
                j++;
            if (j == f->n)
                continue; /* never held: nothing to give back */
            f->v[j] = f->v[--f->n];
        }
        if (place_in_range(c, i, fixed[k]))
            r->port_free -= sign;
    }
    place_share_update(c, i);
}

void place_node_use(place_cluster_t *c, int node, double cpus, int64_t mem_mb, int n_ports,
                    const int *fixed, size_t n_fixed)
{
    if (node >= 0 && (size_t)node < c->n)
        place_take(c, (size_t)node, 1, place_cpu_units(cpus), mem_mb, n_ports, fixed, n_fixed);
}

void place_node_release(place_cluster_t *c, int node, double cpus, int64_t mem_mb, int n_ports,
                        const int *fixed, size_t n_fixed)
{
    if (node >= 0 && (size_t)node < c->n)
        place_take(c, (size_t)node, -1, place_cpu_units(cpus), mem_mb, n_ports, fixed, n_fixed);
}

/* ---- compiling an app -------------------------------------------------------------------- */

static const char *place_field(const place_cluster_t *c, size_t i, const char *field)
{
    if (strcmp(field, "hostname") == 0)
        return c->host[i];
    return json_string_value(json_object_get(c->labels[i], field));
}

static void pcons_free(pcons_t *k)
{
    free(k->field);
    free(k->value);
    free(k->text);
    free(k->vid);
    for (size_t v = 0; v < k->n_vals; v++)
        free(k->vals[v]);
    free(k->vals);
    free(k->vok);
    free(k->count);
    free(k->vstart);
    free(k->vnodes);
}

void place_app_free(place_app_t *a)
{
    if (!a)
        return;
    for (size_t k = 0; k < a->n_cons; k++)
        pcons_free(&a->cons[k]);
    free(a->cons);
    free(a->groups);
    free(a->block);
    free(a->count);
    free(a->fixed);
    free(a->id);
    free(a);
}

/* Number the field's distinct values over the app's nodes, once, so the
 * pick loop and the counts work on small integers. The value -> nodes
 * lists are built for the constraints whose blocks follow counts. */
static void pcons_values(const place_cluster_t *c, size_t n, pcons_t *k)
{
    json_t *ids = json_object();
    size_t cap = 0;
    k->vid = xcalloc(n ? n : 1, sizeof(*k->vid));
    for (size_t i = 0; i < n; i++) {
        const char *v = place_field(c, i, k->field);
        if (!v) {
            k->vid[i] = -1;
            continue;
        }
        json_t *id = json_object_get(ids, v);
        if (!id) {
            if (k->n_vals == cap) {
                cap = cap ? cap * 2 : 16;
                k->vals = xrealloc(k->vals, cap * sizeof(*k->vals));
            }
            k->vals[k->n_vals] = xstrdup(v);
            id = json_integer((json_int_t)k->n_vals++);
            json_object_set_new(ids, v, id);
        }
        k->vid[i] = (int)json_integer_value(id);
    }
    json_decref(ids);
    k->count = xcalloc(k->n_vals ? k->n_vals : 1, sizeof(*k->count));
    if (!k->dynamic)
        return;
    k->vstart = xcalloc(k->n_vals + 1, sizeof(*k->vstart));
    k->vnodes = xcalloc(n ? n : 1, sizeof(*k->vnodes));
    for (size_t i = 0; i < n; i++)
        if (k->vid[i] >= 0)
            k->vstart[k->vid[i] + 1]++;
    for (size_t v = 0; v < k->n_vals; v++)
        k->vstart[v + 1] += k->vstart[v];
    int *fill = xcalloc(k->n_vals ? k->n_vals : 1, sizeof(*fill));
    for (size_t i = 0; i < n; i++)
        if (k->vid[i] >= 0) {
            int v = k->vid[i];
            k->vnodes[k->vstart[v] + fill[v]++] = (int)i;
        }
    free(fill);
}

/* Parse and check one constraint. Messages name the constraint's index,
 * like the spec validator's paths. */
static int pcons_parse(const json_t *cj, size_t idx, pcons_t *k, err_t *err)
{
    if (!json_is_array(cj) || json_array_size(cj) < 2 || json_array_size(cj) > 3)
        return err_set(err, -EINVAL,
                       "constraints[%zu]: expected [field, operator] or "
                       "[field, operator, value]",
                       idx);
    const char *field = json_string_value(json_array_get(cj, 0));
    const char *op = json_string_value(json_array_get(cj, 1));
    const json_t *vj = json_array_get(cj, 2);
    const char *value = json_string_value(vj);
    if (!field || !*field)
        return err_set(err, -EINVAL, "constraints[%zu][0]: the field must be a non-empty string",
                       idx);
    if (!op)
        return err_set(err, -EINVAL, "constraints[%zu][1]: the operator must be a string", idx);
    if (vj && !value)
        return err_set(err, -EINVAL, "constraints[%zu][2]: the value must be a string", idx);
    size_t o = 0;
    while (o < sizeof(op_names) / sizeof(*op_names) && strcmp(op_names[o], op) != 0)
        o++;
    if (o == sizeof(op_names) / sizeof(*op_names))
        return err_set(err, -EINVAL,
                       "constraints[%zu][1]: unknown operator %.64s (expected UNIQUE, CLUSTER, "
                       "GROUP_BY, LIKE, UNLIKE, MAX_PER or IS)",
                       idx, op);
    k->op = (op_t)o;
    int64_t num = 0;
    switch (k->op) {
    case OP_UNIQUE:
        if (vj)
            return err_set(err, -EINVAL, "constraints[%zu][2]: UNIQUE takes no value", idx);
        k->dynamic = true;
        k->limit = 1;
        break;
    case OP_CLUSTER: /* Marathon: an empty value pins to the first node's value */
        if (value && !*value)
            value = NULL;
        k->dynamic = !value;
        break;
    case OP_GROUP_BY:
        /* The value is Marathon's hint of how many values to expect; the
         * scheduler sees every node, so it only has to be well-formed. */
        if (value && str_to_i64(value, 1, INT32_MAX, &num))
            return err_set(err, -EINVAL,
                           "constraints[%zu][2]: GROUP_BY takes a positive integer (got %.64s)",
                           idx, value);
        break;
    case OP_MAX_PER:
        if (!value || str_to_i64(value, 1, INT32_MAX, &num))
            return err_set(err, -EINVAL,
                           "constraints[%zu][2]: MAX_PER needs a positive integer value", idx);
        k->dynamic = true;
        k->limit = (int)num;
        break;
    default:
        if (!value)
            return err_set(err, -EINVAL, "constraints[%zu]: %s needs a value", idx, op);
        break;
    }
    k->field = xstrdup(field);
    k->value = value ? xstrdup(value) : NULL;
    json_t *shown = value ? json_pack("[sss]", field, op, value) : json_pack("[ss]", field, op);
    k->text = json_dumps(shown, JSON_ENCODE_ANY); /* ["disk", "CLUSTER", "ssd"] */
    json_decref(shown);
    if (!k->text)
        k->text = xstrdup(field);
    return 0;
}

/* The static verdict per value: regexes run once per distinct value, not
 * once per node. Whole-value match, as Marathon's LIKE/UNLIKE do. */
static int pcons_static(pcons_t *k, size_t idx, err_t *err)
{
    if (k->op != OP_LIKE && k->op != OP_UNLIKE && k->op != OP_IS && k->op != OP_CLUSTER)
        return 0;
    if (k->dynamic)
        return 0;
    k->vok = xcalloc(k->n_vals ? k->n_vals : 1, sizeof(*k->vok));
    if (k->op == OP_IS || k->op == OP_CLUSTER) {
        for (size_t v = 0; v < k->n_vals; v++)
            k->vok[v] = strcmp(k->vals[v], k->value) == 0;
        return 0;
    }
    regex_t re;
    char *anchored = xasprintf("^(%s)$", k->value);
    int rc = regcomp(&re, anchored, REG_EXTENDED | REG_NOSUB);
    free(anchored);
    if (rc) {
        char why[128];
        regerror(rc, &re, why, sizeof(why));
        return err_set(err, -EINVAL, "constraints[%zu][2]: %.128s is not a regular expression: %s",
                       idx, k->value, why);
    }
    for (size_t v = 0; v < k->n_vals; v++) {
        bool m = regexec(&re, k->vals[v], 0, NULL, 0) == 0;
        k->vok[v] = k->op == OP_LIKE ? m : !m;
    }
    regfree(&re);
    return 0;
}

/* Whether constraint k accepts node i whatever the counts: its value
 * passes the static operator, and a node without the field is accepted
 * only by UNLIKE. */
static bool pcons_static_ok(const pcons_t *k, size_t i)
{
    int v = k->vid[i];
    if (v < 0)
        return k->op == OP_UNLIKE;
    return k->vok ? k->vok[v] : true;
}

/* Whether the counts let value v take one more instance. */
static bool pcons_dynamic_ok(const pcons_t *k, int v)
{
    if (k->op == OP_CLUSTER)
        return k->total <= 0 || k->count[v] > 0;
    return k->count[v] < k->limit;
}

int place_app_new(place_cluster_t *c, const place_app_in_t *in, place_app_t **out, err_t *err)
{
    *out = NULL;
    if (in->constraints && !json_is_array(in->constraints))
        return err_set(err, -EINVAL, "constraints: expected an array");
    if (!(in->cpus >= 0) || !isfinite(in->cpus) || in->mem_mb < 0 || in->n_ports < 0)
        return err_set(err, -EINVAL, "app %s: cpus, mem and ports must not be negative",
                       in->id ? in->id : "?");
    for (size_t f = 0; f < in->n_fixed; f++) {
        if (in->fixed[f] < 1 || in->fixed[f] > 65535)
            return err_set(err, -EINVAL, "host port %d: not a valid port", in->fixed[f]);
        for (size_t g = 0; g < f; g++)
            if (in->fixed[g] == in->fixed[f])
                return err_set(err, -EINVAL, "host port %d is asked for twice", in->fixed[f]);
    }
    place_app_t *a = xcalloc(1, sizeof(*a));
    a->c = c;
    a->n = c->n;
    a->id = xstrdup(in->id ? in->id : "?");
    a->cpu = place_cpu_units(in->cpus);
    a->mem = in->mem_mb;
    a->ports = in->n_ports;
    a->n_fixed = in->n_fixed;
    a->fixed = xcalloc(in->n_fixed ? in->n_fixed : 1, sizeof(*a->fixed));
    if (in->n_fixed)
        memcpy(a->fixed, in->fixed, in->n_fixed * sizeof(*a->fixed));
    a->isolate = in->isolate ? in->isolate : PLACE_ISO_PROCESS;
    a->strategy = in->strategy;
    size_t nc = json_array_size(in->constraints);
    a->cons = xcalloc(nc ? nc : 1, sizeof(*a->cons));
    a->groups = xcalloc(nc ? nc : 1, sizeof(*a->groups));
    for (size_t k = 0; k < nc; k++) {
        pcons_t *p = &a->cons[k];
        a->n_cons = k + 1;
        int rc = pcons_parse(json_array_get(in->constraints, k), k, p, err);
        if (!rc) {
            pcons_values(c, a->n, p);
            rc = pcons_static(p, k, err);
        }
        if (rc) {
            place_app_free(a);
            return rc;
        }
        if (p->op == OP_GROUP_BY)
            a->groups[a->n_groups++] = k;
    }
    a->block = xcalloc(a->n ? a->n : 1, sizeof(*a->block));
    a->count = xcalloc(a->n ? a->n : 1, sizeof(*a->count));
    for (size_t i = 0; i < a->n; i++) {
        bool ok = (c->iso[i] & a->isolate) != 0;
        for (size_t k = 0; ok && k < a->n_cons; k++)
            ok = pcons_static_ok(&a->cons[k], i);
        a->block[i] = ok ? 0 : PLACE_STATIC;
    }
    *out = a;
    return 0;
}

/* Mark (d 1) or unmark (d -1) every node holding value v as refused. */
static void pcons_block(place_app_t *a, const pcons_t *k, int v, int d)
{
    for (int j = k->vstart[v]; j < k->vstart[v + 1]; j++)
        a->block[k->vnodes[j]] += d;
}

/* Keep the block marks of a dynamic constraint in step with a change of
 * value v's count by delta: only values whose verdict flips touch nodes. */
static void pcons_count(place_app_t *a, pcons_t *k, int v, int delta)
{
    if (k->op == OP_CLUSTER) {
        int64_t old_total = k->total;
        int old_v = k->count[v];
        k->count[v] += delta;
        k->total += delta;
        if ((old_total > 0) != (k->total > 0)) {
            /* the first instance pins, the last one unpins: every value may flip */
            for (size_t x = 0; x < k->n_vals; x++) {
                int before = x == (size_t)v ? old_v : k->count[x];
                bool was = old_total > 0 && before <= 0;
                bool is = k->total > 0 && k->count[x] <= 0;
                if (was != is)
                    pcons_block(a, k, (int)x, is ? 1 : -1);
            }
        } else if (k->total > 0 && (old_v > 0) != (k->count[v] > 0)) {
            pcons_block(a, k, v, k->count[v] > 0 ? -1 : 1);
        }
        return;
    }
    bool was = k->count[v] >= k->limit;
    k->count[v] += delta;
    bool is = k->count[v] >= k->limit;
    if (was != is)
        pcons_block(a, k, v, is ? 1 : -1);
}

void place_app_count(place_app_t *a, int node, int delta)
{
    if (node < 0 || (size_t)node >= a->n)
        return;
    if (a->count[node] + delta < 0)
        delta = -a->count[node]; /* never below none */
    if (delta == 0)
        return;
    a->count[node] += delta;
    for (size_t k = 0; k < a->n_cons; k++) {
        pcons_t *p = &a->cons[k];
        int v = p->vid[node];
        if (v < 0)
            continue;
        if (p->dynamic)
            pcons_count(a, p, v, delta);
        else if (p->op == OP_GROUP_BY)
            p->count[v] += delta;
    }
}

/* ---- picking ----------------------------------------------------------------------------- */

/* The common case as one tight pass: no fixed ports, at most one GROUP_BY.
 * `grp` and `binpack` are constants at each call site, so the compiler
 * makes four loops without those branches. Ranking: fewest instances on
 * the GROUP_BY value, then spread: fewest instances on the node, least
 * used share; binpack: most used share; then the lowest index (the scan
 * order: only a strictly better node replaces the best). */
static inline int place_scan_fast(const place_cluster_t *c, const place_app_t *a, const bool grp,
                                  const bool binpack)
{
    const place_res_t *res = c->res;
    const int *block = a->block, *cnt = a->count;
    const int *gvid = grp ? a->cons[a->groups[0]].vid : NULL;
    const int *gcount = grp ? a->cons[a->groups[0]].count : NULL;
    const int64_t cpu = a->cpu, mem = a->mem;
    const int32_t ports = a->ports;
    int best = -1, best_g = INT_MAX, best_n = INT_MAX;
    double best_s = 0;
    for (size_t i = 0; i < a->n; i++) {
        if (block[i])
            continue;
        const place_res_t *r = &res[i];
        if (r->cpu_free < cpu || r->mem_free < mem || r->port_free < ports)
            continue;
        int g = grp ? gcount[gvid[i]] : 0;
        if (g > best_g)
            continue;
        bool better;
        if (g < best_g)
            better = true;
        else if (binpack)
            better = r->share > best_s + PLACE_EPS;
        else
            better = cnt[i] < best_n || (cnt[i] == best_n && r->share < best_s - PLACE_EPS);
        if (!better)
            continue;
        best = (int)i;
        best_g = g;
        best_n = cnt[i];
        best_s = r->share;
        /* spread: an empty node on an empty value cannot be beaten */
        if (!binpack && best_g == 0 && best_n == 0 && best_s <= PLACE_EPS)
            break;
    }
    return best;
}

/* Host ports the app needs on node i that some instance there already
 * holds: the first one, or 0. Also counts the app's fixed ports inside
 * the node's range, which take dynamic slots. */
static int place_fixed_clash(const place_cluster_t *c, const place_app_t *a, size_t i,
                             int *in_range)
{
    *in_range = 0;
    int clash = 0;
    for (size_t f = 0; f < a->n_fixed; f++) {
        if (!clash && place_port_held(&c->fixed[i], a->fixed[f]))
            clash = a->fixed[f];
        *in_range += place_in_range(c, i, a->fixed[f]);
    }
    return clash;
}

/* Whether node i ranks strictly before node j for this app (see
 * place_scan_fast, which must agree). */
static bool place_better(const place_cluster_t *c, const place_app_t *a, size_t i, size_t j)
{
    for (size_t g = 0; g < a->n_groups; g++) {
        const pcons_t *k = &a->cons[a->groups[g]];
        int gi = k->count[k->vid[i]], gj = k->count[k->vid[j]];
        if (gi != gj)
            return gi < gj;
    }
    double si = c->res[i].share, sj = c->res[j].share;
    if (a->strategy == PLACE_BINPACK)
        return si > sj + PLACE_EPS;
    if (a->count[i] != a->count[j])
        return a->count[i] < a->count[j];
    return si < sj - PLACE_EPS;
}

/* Everything else: fixed host ports, several GROUP_BYs. */
static int place_scan_generic(const place_cluster_t *c, const place_app_t *a)
{
    int best = -1;
    for (size_t i = 0; i < a->n; i++) {
        if (a->block[i])
            continue;
        const place_res_t *r = &c->res[i];
        int in_range = 0;
        if (r->cpu_free < a->cpu || r->mem_free < a->mem || r->port_free < a->ports ||
            place_fixed_clash(c, a, i, &in_range) || r->port_free < a->ports + in_range)
            continue;
        if (best < 0 || place_better(c, a, i, (size_t)best))
            best = (int)i;
    }
    return best;
}

int place_pick(place_cluster_t *c, place_app_t *a)
{
    int best;
    bool binpack = a->strategy == PLACE_BINPACK;
    if (a->n_fixed || a->n_groups > 1)
        best = place_scan_generic(c, a);
    else if (a->n_groups)
        best = binpack ? place_scan_fast(c, a, true, true) : place_scan_fast(c, a, true, false);
    else
        best = binpack ? place_scan_fast(c, a, false, true) : place_scan_fast(c, a, false, false);
    if (best < 0)
        return -ENOSPC;
    place_take(c, (size_t)best, 1, a->cpu, a->mem, a->ports, a->fixed, a->n_fixed);
    place_app_count(a, best, 1);
    return best;
}

/* ---- explaining -------------------------------------------------------------------------- */

/* Kinds of refusal, in the order a node is checked. */
enum { WHY_OK, WHY_ISOLATE, WHY_CONSTRAINT, WHY_CPUS, WHY_MEM, WHY_PORTS, WHY_FIXED, WHY_N };

/* The first reason node i refuses one more instance: isolate, static
 * constraints (with missing fields), dynamic constraints, cpus, memory,
 * dynamic ports, fixed ports. Agrees with the pick's feasibility. */
static int place_why(const place_cluster_t *c, const place_app_t *a, size_t i, size_t *cons,
                     int *port)
{
    *cons = 0;
    *port = 0;
    if (!(c->iso[i] & a->isolate))
        return WHY_ISOLATE;
    for (size_t k = 0; k < a->n_cons; k++)
        if (!pcons_static_ok(&a->cons[k], i)) {
            *cons = k;
            return WHY_CONSTRAINT;
        }
    for (size_t k = 0; k < a->n_cons; k++)
        if (a->cons[k].dynamic && !pcons_dynamic_ok(&a->cons[k], a->cons[k].vid[i])) {
            *cons = k;
            return WHY_CONSTRAINT;
        }
    const place_res_t *r = &c->res[i];
    if (r->cpu_free < a->cpu)
        return WHY_CPUS;
    if (r->mem_free < a->mem)
        return WHY_MEM;
    int in_range = 0;
    *port = place_fixed_clash(c, a, i, &in_range);
    if (r->port_free < a->ports + in_range)
        return WHY_PORTS;
    if (*port)
        return WHY_FIXED;
    return WHY_OK;
}

/* "web-1" for hostnames, "rack=r1" for labels: how a value is named. */
static void place_where(char *out, size_t n, const char *field, const char *value)
{
    if (strcmp(field, "hostname") == 0)
        snprintf(out, n, "%s", value);
    else
        snprintf(out, n, "%s=%s", field, value);
}

static void place_iso_names(unsigned bits, char *out, size_t n)
{
    static const char *const names[] = {"process", "oci", "docker"};
    size_t w = 0;
    out[0] = '\0';
    for (int b = 0; b < 3; b++)
        if (bits & (1u << b)) {
            int m = snprintf(out + w, n - w, "%s%s", w ? ", " : "", names[b]);
            if (m < 0 || (size_t)m >= n - w)
                break;
            w += (size_t)m;
        }
    if (!w)
        snprintf(out, n, "none");
}

/* The sentence for a constraint refusing node i. */
static void place_why_constraint(const pcons_t *k, size_t i, char *msg, size_t n)
{
    int v = k->vid[i];
    char where[300];
    if (v < 0) {
        snprintf(msg, n, "constraint %s refused (no label %s)", k->text, k->field);
        return;
    }
    place_where(where, sizeof(where), k->field, k->vals[v]);
    if (!k->dynamic || pcons_dynamic_ok(k, v)) {
        snprintf(msg, n, "constraint %s refused (%s)", k->text, where);
    } else if (k->op == OP_UNIQUE) {
        snprintf(msg, n, "constraint %s refused (already one on %s)", k->text, where);
    } else if (k->op == OP_MAX_PER) {
        snprintf(msg, n, "constraint %s refused (already %d on %s)", k->text, k->count[v], where);
    } else {
        char pinned[300] = "?";
        for (size_t x = 0; x < k->n_vals; x++)
            if (k->count[x] > 0) {
                place_where(pinned, sizeof(pinned), k->field, k->vals[x]);
                break;
            }
        snprintf(msg, n, "constraint %s refused (%s; the app runs on %s)", k->text, where, pinned);
    }
}

static void place_why_text(const place_cluster_t *c, const place_app_t *a, size_t i, int why,
                           size_t cons, int port, char *msg, size_t n)
{
    const place_res_t *r = &c->res[i];
    char have[64], want[64];
    switch (why) {
    case WHY_ISOLATE:
        place_iso_names(c->iso[i], have, sizeof(have));
        place_iso_names(a->isolate, want, sizeof(want));
        snprintf(msg, n, "no isolate %s (has %s)", want, have);
        break;
    case WHY_CONSTRAINT: place_why_constraint(&a->cons[cons], i, msg, n); break;
    case WHY_CPUS:
        snprintf(msg, n, "not enough cpus (needs %g, free %g of %g)",
                 (double)a->cpu / PLACE_CPU_UNIT,
                 (double)(r->cpu_free > 0 ? r->cpu_free : 0) / PLACE_CPU_UNIT,
                 (double)c->cpu_cap[i] / PLACE_CPU_UNIT);
        break;
    case WHY_MEM:
        snprintf(msg, n, "not enough memory (needs %lld MiB, free %lld of %lld)", (long long)a->mem,
                 (long long)(r->mem_free > 0 ? r->mem_free : 0), (long long)c->mem_cap[i]);
        break;
    case WHY_PORTS:
        if (c->port_hi[i])
            snprintf(msg, n, "no free host port (range %d-%d used up)", c->port_lo[i],
                     c->port_hi[i]);
        else
            snprintf(msg, n, "no free host port (the node has no port range)");
        break;
    default: snprintf(msg, n, "host port %d already in use", port); break;
    }
}

/* One part of the summary: how many nodes refuse for one kind of reason. */
typedef struct place_part {
    size_t n;
    size_t order; /* stable order among equal counts */
    char text[512];
} place_part_t;

static int place_part_cmp(const void *x, const void *y)
{
    const place_part_t *p = x, *q = y;
    if (p->n != q->n)
        return p->n > q->n ? -1 : 1;
    return p->order < q->order ? -1 : p->order > q->order;
}

json_t *place_explain(const place_cluster_t *c, const place_app_t *a, size_t max_nodes)
{
    json_t *nodes = json_array();
    size_t kinds[WHY_N] = {0}, fit = 0;
    size_t *by_cons = xcalloc(a->n_cons ? a->n_cons : 1, sizeof(*by_cons));
    int fixed_port = 0; /* the clashing port when every clash names the same one */
    bool fixed_mixed = false;
    for (size_t i = 0; i < a->n; i++) {
        size_t cons;
        int port;
        int why = place_why(c, a, i, &cons, &port);
        kinds[why]++;
        if (why == WHY_OK) {
            fit++;
            continue;
        }
        if (why == WHY_CONSTRAINT)
            by_cons[cons]++;
        if (why == WHY_FIXED) {
            if (fixed_port && fixed_port != port)
                fixed_mixed = true;
            fixed_port = port;
        }
        if (json_array_size(nodes) >= max_nodes)
            continue;
        char msg[1024];
        place_why_text(c, a, i, why, cons, port, msg, sizeof(msg));
        json_array_append_new(nodes, json_pack("{s:s, s:s}", "node", c->id[i], "reason", msg));
    }

    size_t n_parts = 0;
    place_part_t *parts = xcalloc(a->n_cons + WHY_N, sizeof(*parts));
#define PLACE_PART(count, ...)                                                                     \
    do {                                                                                           \
        parts[n_parts].n = (count);                                                                \
        parts[n_parts].order = n_parts;                                                            \
        snprintf(parts[n_parts].text, sizeof(parts[n_parts].text), __VA_ARGS__);                   \
        n_parts++;                                                                                 \
    } while (0)
    char iso[64];
    place_iso_names(a->isolate, iso, sizeof(iso));
    size_t m;
    if ((m = kinds[WHY_ISOLATE]))
        PLACE_PART(m, "%zu %s isolate %s", m, m == 1 ? "lacks" : "lack", iso);
    for (size_t k = 0; k < a->n_cons; k++)
        if ((m = by_cons[k]))
            PLACE_PART(m, "%zu refused by constraint %s", m, a->cons[k].text);
    if ((m = kinds[WHY_CPUS]))
        PLACE_PART(m, "%zu %s cpus (needs %g)", m, m == 1 ? "lacks" : "lack",
                   (double)a->cpu / PLACE_CPU_UNIT);
    if ((m = kinds[WHY_MEM]))
        PLACE_PART(m, "%zu %s memory (needs %lld MiB)", m, m == 1 ? "lacks" : "lack",
                   (long long)a->mem);
    if ((m = kinds[WHY_PORTS]))
        PLACE_PART(m, "%zu %s no free host port", m, m == 1 ? "has" : "have");
    if ((m = kinds[WHY_FIXED])) {
        if (fixed_mixed)
            PLACE_PART(m, "%zu %s a required host port in use", m, m == 1 ? "has" : "have");
        else
            PLACE_PART(m, "%zu %s host port %d in use", m, m == 1 ? "has" : "have", fixed_port);
    }
#undef PLACE_PART
    qsort(parts, n_parts, sizeof(*parts), place_part_cmp);

    buf_t b;
    buf_init(&b, PLACE_SUMMARY_MAX);
    if (a->n == 0) {
        buf_append_str(&b, "no nodes registered");
    } else {
        buf_printf(&b, "%zu of %zu nodes fit", fit, a->n);
        for (size_t p = 0; p < n_parts; p++)
            if (buf_printf(&b, "%s%s", p ? ", " : ": ", parts[p].text) < 0)
                break; /* bounded: the first kinds are the largest */
    }
    json_t *out = json_pack("{s:s, s:o}", "summary", b.data ? b.data : "", "nodes", nodes);
    buf_free(&b);
    free(parts);
    free(by_cons);
    return out;
}
