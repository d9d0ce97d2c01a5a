/* sched/place: choose a node for each instance of an app, honouring
 * resources (cpus, mem, ports), the app's Marathon constraints and a
 * strategy, and say why when no node fits.
 *
 * Pure and in-memory: no store, no loop, no I/O. The scheduler builds a
 * cluster from the live nodes and the assignments it keeps, compiles each
 * app once per reconcile, records where the app's instances already run,
 * then picks nodes one instance at a time. bench/scheduler drives the same
 * code with 5,000 simulated nodes.
 *
 * Constraints: [field, op] or [field, op, value]; field "hostname" (the
 * node's hostname) or a node label name; ops UNIQUE, CLUSTER, GROUP_BY,
 * LIKE, UNLIKE, MAX_PER, IS (Marathon semantics; docs/spec.md#constraints).
 * A node without the label has no value: LIKE/IS/CLUSTER refuse it, UNLIKE
 * accepts it, UNIQUE/MAX_PER/GROUP_BY refuse it. CLUSTER without a value
 * pins every instance to the value of the first node used.
 *
 * Ownership: the cluster copies every string it is given. An app borrows
 * its cluster and must be freed before it. */
#ifndef DROVER_SCHED_PLACE_H
#define DROVER_SCHED_PLACE_H

#include "core/err.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { PLACE_SPREAD = 0, PLACE_BINPACK = 1 } place_strategy_t;

/* Isolate bits of place_node_in_t.isolates and place_app_in_t.isolate. */
#define PLACE_ISO_PROCESS 1u
#define PLACE_ISO_OCI     2u
#define PLACE_ISO_DOCKER  4u

typedef struct place_cluster place_cluster_t;
typedef struct place_app place_app_t;

typedef struct place_node_in {
    const char *id;       /* node id, unique in the cluster */
    const char *hostname; /* the "hostname" field of constraints */
    const json_t *labels; /* object of string values, or NULL */
    double cpus;          /* capacity */
    int64_t mem_mb;       /* capacity */
    int ports_lo, ports_hi; /* the node's host port range (inclusive); 0,0: none */
    unsigned isolates;    /* PLACE_ISO_* bits */
} place_node_in_t;

place_cluster_t *place_cluster_new(void);
void place_cluster_free(place_cluster_t *c);
/* Add a node; returns its index (0, 1, ... in order of adding) or -EEXIST
 * (duplicate id) / -EINVAL (negative capacity, bad labels) with err set. */
int place_node_add(place_cluster_t *c, const place_node_in_t *n, err_t *err);
size_t place_node_count(const place_cluster_t *c);
const char *place_node_id(const place_cluster_t *c, int node);
/* Index of the node with this id, or -1. */
int place_node_find(const place_cluster_t *c, const char *id);
/* Account resources already taken on node (instances that keep running):
 * cpus, mem and `n_ports` dynamic ports, plus `fixed` host ports (n_fixed)
 * that no other instance on the node may take. Never fails: what is
 * already running may exceed the capacity (then nothing more fits). */
void place_node_use(place_cluster_t *c, int node, double cpus, int64_t mem_mb, int n_ports,
                    const int *fixed, size_t n_fixed);
/* Free again what place_node_use or a pick took (an instance that goes). */
void place_node_release(place_cluster_t *c, int node, double cpus, int64_t mem_mb, int n_ports,
                        const int *fixed, size_t n_fixed);

typedef struct place_app_in {
    const char *id;            /* app id, for messages */
    double cpus;               /* per instance */
    int64_t mem_mb;            /* per instance */
    int n_ports;               /* dynamic host ports per instance */
    const int *fixed;          /* host ports every instance needs (requirePorts/hostPort) */
    size_t n_fixed;
    unsigned isolate;          /* one PLACE_ISO_* bit */
    const json_t *constraints; /* array of [field, op(, value)], or NULL */
    place_strategy_t strategy;
} place_app_in_t;

/* Compile an app's requirements against the cluster (regexes compiled,
 * static constraints evaluated once per node). -EINVAL with err naming
 * the constraint ("constraints[1]: ...") when a constraint is malformed;
 * the spec validator normally caught that already. */
int place_app_new(place_cluster_t *c, const place_app_in_t *in, place_app_t **out, err_t *err);
void place_app_free(place_app_t *a);
/* One instance of this app already runs on node (or was just placed
 * there by hand): counts for UNIQUE, MAX_PER, GROUP_BY and CLUSTER. Does
 * not take resources (use place_node_use for that). delta -1 removes. */
void place_app_count(place_app_t *a, int node, int delta);

/* Choose a node for one more instance: feasible for resources and every
 * constraint; among those, spread prefers the node with the fewest
 * instances of this app, then the least used share of cpus+mem (GROUP_BY:
 * first the value with the fewest instances); binpack prefers the most
 * used node that still fits. Ties break by node index. On success returns
 * the node index, takes the resources and counts the instance. -ENOSPC
 * when no node fits (nothing changed). Cost: O(nodes) per call. */
int place_pick(place_cluster_t *c, place_app_t *a);

/* Why no node fits one more instance: {"summary": "0 of 3 nodes fit: 2
 * refused by constraint [\"disk\", \"CLUSTER\", \"ssd\"], 1 lacks memory
 * (needs 512 MiB)", "nodes": [{"node": ID, "reason": "..."}, ...]} with at
 * most `max_nodes` entries in "nodes" (the summary counts all). New
 * reference. With no nodes at all, the summary says so. */
json_t *place_explain(const place_cluster_t *c, const place_app_t *a, size_t max_nodes);

#endif
