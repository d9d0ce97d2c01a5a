/* Placement benchmark: 5,000 simulated nodes (labels rack=r0..r49,
 * disk=ssd|hdd, hostnames), then 100,000 instances over several apps with
 * constraints, one place_pick at a time on one thread, as the scheduler
 * does in a reconcile. Prints placements per second and per-pick latency
 * per app, plus the cost of compiling an app and of explaining a refusal
 * over every node.
 *
 * Build (from the repository root; no Makefile rule on purpose; the glob
 * is every src/core C file, written [a-z]* only to keep this comment a
 * comment):
 *   mkdir -p build/bench && gcc -std=c17 -D_GNU_SOURCE -O2 -Isrc -o build/bench/place_bench \
 *       src/sched/place.c src/core/[a-z]*.c bench/scheduler/place_bench.c \
 *       $(pkg-config --cflags --libs jansson msgpack) -lm
 * Run: build/bench/place_bench [nodes (5000)] [instances (100000)]
 * bench/scheduler/run.sh does both. */
#include "core/err.h"
#include "core/str.h"
#include "sched/place.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

typedef struct bench_app {
    const char *id;
    const char *constraints; /* JSON */
    place_strategy_t strategy;
    double cpus;
    int64_t mem;
    int ports;
    double share; /* of the instances */
} bench_app_t;

static const bench_app_t apps[] = {
    {"/bench/web", "[[\"rack\", \"GROUP_BY\"], [\"hostname\", \"UNIQUE\"]]", PLACE_SPREAD, 0.5, 256,
     1, 0.04},
    {"/bench/api", "[[\"rack\", \"GROUP_BY\"]]", PLACE_SPREAD, 0.25, 256, 1, 0.30},
    {"/bench/db", "[[\"disk\", \"CLUSTER\", \"ssd\"]]", PLACE_SPREAD, 1, 1024, 1, 0.16},
    {"/bench/batch", "[[\"disk\", \"CLUSTER\", \"ssd\"], [\"rack\", \"MAX_PER\", \"400\"]]",
     PLACE_BINPACK, 0.5, 512, 0, 0.20},
    {"/bench/plain", NULL, PLACE_SPREAD, 0.1, 64, 2, 0.20},
    {"/bench/edge",
     "[[\"hostname\", \"LIKE\", \"host-[0-9]*[02468].bench\"], "
     "[\"rack\", \"UNLIKE\", \"r4[0-9]\"]]",
     PLACE_BINPACK, 0.2, 128, 1, 0.10},
};

int main(int argc, char **argv)
{
    int64_t n_nodes = 5000, n_inst = 100000;
    if ((argc > 1 && str_to_i64(argv[1], 1, 1000000, &n_nodes)) ||
        (argc > 2 && str_to_i64(argv[2], 1, 100000000, &n_inst))) {
        fprintf(stderr, "usage: %s [nodes] [instances]\n", argv[0]);
        return 2;
    }
    place_cluster_t *c = place_cluster_new();
    double t0 = now_s();
    for (int64_t i = 0; i < n_nodes; i++) {
        char id[32], host[48], rack[16];
        snprintf(id, sizeof(id), "node-%05lld", (long long)i);
        snprintf(host, sizeof(host), "host-%05lld.bench", (long long)i);
        snprintf(rack, sizeof(rack), "r%lld", (long long)(i % 50));
        json_t *labels = json_pack("{s:s, s:s}", "rack", rack, "disk", i % 3 == 0 ? "hdd" : "ssd");
        place_node_in_t in = {.id = id,
                              .hostname = host,
                              .labels = labels,
                              .cpus = 64,
                              .mem_mb = 262144,
                              .ports_lo = 20000,
                              .ports_hi = 29999,
                              .isolates = PLACE_ISO_PROCESS};
        err_t err = {0};
        if (place_node_add(c, &in, &err) < 0) {
            fprintf(stderr, "node %s: %s\n", id, err.msg);
            return 1;
        }
        json_decref(labels);
    }
    double t_nodes = now_s() - t0;
    printf("placement: %lld nodes (rack=r0..r49, disk=ssd|hdd), %lld instances, one thread\n",
           (long long)n_nodes, (long long)n_inst);
    printf("%-14s %8s %11s %8s %8s %8s  %s\n", "app", "placed", "picks/s", "p50 us", "p99 us",
           "max us", "strategy, constraints");

    size_t n_apps = sizeof(apps) / sizeof(*apps);
    double *lat = malloc(sizeof(double) * (size_t)n_inst);
    double all_time = 0, compile_max = 0;
    int64_t all_placed = 0;
    for (size_t k = 0; k < n_apps; k++) {
        const bench_app_t *b = &apps[k];
        json_t *cons = b->constraints ? json_loads(b->constraints, 0, NULL) : NULL;
        place_app_in_t in = {.id = b->id,
                             .cpus = b->cpus,
                             .mem_mb = b->mem,
                             .n_ports = b->ports,
                             .isolate = PLACE_ISO_PROCESS,
                             .constraints = cons,
                             .strategy = b->strategy};
        place_app_t *a = NULL;
        err_t err = {0};
        double tc = now_s();
        if (place_app_new(c, &in, &a, &err)) {
            fprintf(stderr, "%s: %s\n", b->id, err.msg);
            return 1;
        }
        tc = now_s() - tc;
        if (tc > compile_max)
            compile_max = tc;
        int64_t want = (int64_t)((double)n_inst * b->share), placed = 0;
        double start = now_s();
        for (int64_t i = 0; i < want; i++) {
            double s = now_s();
            int node = place_pick(c, a);
            lat[placed] = now_s() - s;
            if (node < 0)
                break;
            placed++;
        }
        double took = now_s() - start;
        all_time += took;
        all_placed += placed;
        qsort(lat, (size_t)placed, sizeof(double), cmp_double);
        printf("%-14s %8lld %11.0f %8.1f %8.1f %8.1f  %s %s\n", b->id, (long long)placed,
               placed ? (double)placed / took : 0, placed ? lat[placed / 2] * 1e6 : 0,
               placed ? lat[placed * 99 / 100] * 1e6 : 0, placed ? lat[placed - 1] * 1e6 : 0,
               b->strategy == PLACE_BINPACK ? "binpack" : "spread",
               b->constraints ? b->constraints : "-");
        if (placed < want) {
            json_t *e = place_explain(c, a, 3);
            printf("  stopped at %lld of %lld: %s\n", (long long)placed, (long long)want,
                   json_string_value(json_object_get(e, "summary")));
            json_decref(e);
        }
        place_app_free(a);
        json_decref(cons);
    }
    printf("%-14s %8lld %11.0f\n", "all", (long long)all_placed, (double)all_placed / all_time);

    /* A refusal explained over every node: what a deployment record pays
     * once per unplaceable app. */
    json_t *cons =
        json_loads("[[\"disk\", \"CLUSTER\", \"ssd\"], [\"rack\", \"GROUP_BY\"]]", 0, NULL);
    place_app_in_t big = {.id = "/bench/huge",
                          .cpus = 100,
                          .mem_mb = 1024,
                          .isolate = PLACE_ISO_PROCESS,
                          .constraints = cons};
    place_app_t *a = NULL;
    double tc = now_s();
    place_app_new(c, &big, &a, NULL);
    tc = now_s() - tc;
    int miss = place_pick(c, a);
    double te = now_s();
    json_t *e = place_explain(c, a, 20);
    te = now_s() - te;
    printf("\nnodes added in %.1f ms; compiling an app: at most %.2f ms (2 constraints: %.2f ms)\n",
           t_nodes * 1e3, compile_max * 1e3, tc * 1e3);
    printf("explain over %lld nodes (pick %s): %.2f ms: %s\n", (long long)n_nodes,
           miss == -ENOSPC ? "refused" : "placed", te * 1e3,
           json_string_value(json_object_get(e, "summary")));
    json_decref(e);
    place_app_free(a);
    json_decref(cons);
    free(lat);
    place_cluster_free(c);
    return 0;
}
