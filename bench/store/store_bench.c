/* store_bench: latency and throughput of the store's SQLite backend, as a
 * loop-thread user sees them (submit -> callback).
 *
 *   store_bench [DIR]     (default: a fresh directory under $TMPDIR or /tmp)
 *
 * Phases: sequential durable puts (one in flight), concurrent puts (64 in
 * flight, group commit), sequential and concurrent gets, and watch delivery
 * latency (put submitted -> watch callback, and put ack -> watch callback). */
#include "core/alloc.h"
#include "core/log.h"
#include "store/store.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SEQ_N     2000
#define CONC_N    20000
#define GET_N     50000
#define INFLIGHT  64
#define VALUE_LEN 256

static uv_loop_t loop;
static store_t *st;
static char value[VALUE_LEN];

typedef struct phase {
    const char *label;
    const char *name; /* key component */
    size_t total, issued, done, inflight_max, inflight;
    uint64_t *lat; /* ns, one per op */
    uint64_t *t_submit;
    uint64_t t0, t1;
    bool is_get;
    int failures;
} phase_t;

static phase_t *cur;

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static double pct(uint64_t *v, size_t n, double p)
{
    if (!n)
        return 0;
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return (double)v[i] / 1000.0; /* us */
}

static void issue(void);

static void op_cb(int status, const err_t *err, const store_result_t *res, void *data)
{
    (void)res;
    size_t i = (size_t)(uintptr_t)data;
    if (status) {
        if (cur->failures++ < 3)
            fprintf(stderr, "op %zu failed: %s\n", i, err_str(err, status));
    }
    cur->lat[i] = uv_hrtime() - cur->t_submit[i];
    cur->done++;
    cur->inflight--;
    if (cur->done == cur->total)
        cur->t1 = uv_hrtime();
    else
        issue();
}

static void issue(void)
{
    while (cur->issued < cur->total && cur->inflight < cur->inflight_max) {
        size_t i = cur->issued++;
        char key[48];
        snprintf(key, sizeof(key), "/bench/%s/%08zu", cur->is_get ? "seq" : cur->name,
                 cur->is_get ? i % SEQ_N : i);
        cur->t_submit[i] = uv_hrtime();
        cur->inflight++;
        int rc = cur->is_get
                     ? store_get(st, key, false, op_cb, (void *)(uintptr_t)i)
                     : store_put(st, key, value, sizeof(value), 0, op_cb, (void *)(uintptr_t)i);
        if (rc) {
            fprintf(stderr, "submit: %d\n", rc);
            exit(1);
        }
    }
}

static void run_phase(phase_t *p)
{
    p->lat = xcalloc(p->total, sizeof(uint64_t));
    p->t_submit = xcalloc(p->total, sizeof(uint64_t));
    cur = p;
    p->t0 = uv_hrtime();
    issue();
    while (p->done < p->total)
        uv_run(&loop, UV_RUN_ONCE);
    double secs = (double)(p->t1 - p->t0) / 1e9;
    qsort(p->lat, p->total, sizeof(uint64_t), cmp_u64);
    printf("| %-34s | %6zu | %4zu | %9.0f | %8.1f | %8.1f | %8.1f |\n", p->label, p->total,
           p->inflight_max, (double)p->total / secs, pct(p->lat, p->total, 0.5),
           pct(p->lat, p->total, 0.99), pct(p->lat, p->total, 1.0));
    if (p->failures)
        printf("|   %d failures\n", p->failures);
    free(p->lat);
    free(p->t_submit);
}

/* ---- watch delivery ---------------------------------------------------- */

static struct {
    uint64_t t_submit[SEQ_N], t_ack[SEQ_N], from_submit[SEQ_N], from_ack[SEQ_N];
    size_t acked, seen;
    bool waiting_ack;
} wb;

static void wput_cb(int status, const err_t *err, const store_result_t *res, void *data)
{
    (void)err;
    (void)res;
    (void)status;
    size_t i = (size_t)(uintptr_t)data;
    wb.t_ack[i] = uv_hrtime();
    wb.acked++;
}

static void watch_cb(store_watch_t *w, int status, const store_event_t *ev, size_t n,
                     int64_t compact_rev, void *data)
{
    (void)w;
    (void)compact_rev;
    (void)data;
    uint64_t now = uv_hrtime();
    if (status) {
        fprintf(stderr, "watch ended: %d\n", status);
        exit(1);
    }
    for (size_t k = 0; k < n; k++) {
        const char *slash = strrchr(ev[k].kv.key, '/');
        size_t i = (size_t)strtoul(slash + 1, NULL, 10);
        wb.from_submit[i] = now - wb.t_submit[i];
        /* ack and event come from the same batch; the ack runs first */
        wb.from_ack[i] = wb.t_ack[i] ? now - wb.t_ack[i] : 0;
        wb.seen++;
    }
}

static void run_watch(void)
{
    store_watch_t *w = NULL;
    if (store_watch(st, "/bench/watch/", true, 0, watch_cb, NULL, &w)) {
        fprintf(stderr, "watch failed\n");
        exit(1);
    }
    uint64_t t0 = uv_hrtime();
    for (size_t i = 0; i < SEQ_N; i++) {
        char key[48];
        snprintf(key, sizeof(key), "/bench/watch/%08zu", i);
        wb.t_submit[i] = uv_hrtime();
        store_put(st, key, value, sizeof(value), 0, wput_cb, (void *)(uintptr_t)i);
        while (wb.seen <= i || wb.acked <= i)
            uv_run(&loop, UV_RUN_ONCE);
    }
    double secs = (double)(uv_hrtime() - t0) / 1e9;
    qsort(wb.from_submit, SEQ_N, sizeof(uint64_t), cmp_u64);
    qsort(wb.from_ack, SEQ_N, sizeof(uint64_t), cmp_u64);
    printf("| %-34s | %6d | %4d | %9.0f | %8.1f | %8.1f | %8.1f |\n", "watch: put submit -> event",
           SEQ_N, 1, SEQ_N / secs, pct(wb.from_submit, SEQ_N, 0.5),
           pct(wb.from_submit, SEQ_N, 0.99), pct(wb.from_submit, SEQ_N, 1.0));
    printf("| %-34s | %6d | %4d | %9s | %8.1f | %8.1f | %8.1f |\n", "watch: put ack -> event",
           SEQ_N, 1, "-", pct(wb.from_ack, SEQ_N, 0.5), pct(wb.from_ack, SEQ_N, 0.99),
           pct(wb.from_ack, SEQ_N, 1.0));
    store_watch_cancel(w);
}

static void closed_cb(void *data)
{
    *(bool *)data = true;
}

static void rm_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char p[4400];
        snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

int main(int argc, char **argv)
{
    log_setup(LOG_WARN, LOG_TEXT);
    char dir[4096];
    bool own_dir = argc < 2;
    if (own_dir) {
        const char *tmp = getenv("TMPDIR");
        snprintf(dir, sizeof(dir), "%s/drover-store-bench.XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(dir)) {
            perror("mkdtemp");
            return 1;
        }
    } else {
        snprintf(dir, sizeof(dir), "%s", argv[1]);
    }
    char path[4200];
    snprintf(path, sizeof(path), "%s/bench.db", dir);
    memset(value, 'v', sizeof(value));
    uv_loop_init(&loop);
    store_options_t o = {.path = path};
    err_t err = {0};
    if (store_open(&loop, &o, &st, &err)) {
        fprintf(stderr, "store_open: %s\n", err.msg);
        return 1;
    }
    printf("store benchmark: %s, %d-byte values, sqlite WAL synchronous=FULL\n\n", path, VALUE_LEN);
    printf("| %-34s | %6s | %4s | %9s | %8s | %8s | %8s |\n", "phase", "ops", "infl", "ops/s",
           "p50 us", "p99 us", "max us");
    printf("|%.36s|%.8s|%.6s|%.11s|%.10s|%.10s|%.10s|\n", "------------------------------------",
           "--------", "------", "-----------", "----------", "----------", "----------");

    phase_t seq = {
        .label = "put, durable, sequential", .name = "seq", .total = SEQ_N, .inflight_max = 1};
    run_phase(&seq);
    phase_t conc = {.label = "put, durable, concurrent",
                    .name = "conc",
                    .total = CONC_N,
                    .inflight_max = INFLIGHT};
    run_phase(&conc);
    phase_t gseq = {.label = "get, sequential", .total = SEQ_N, .inflight_max = 1, .is_get = true};
    run_phase(&gseq);
    phase_t gconc = {
        .label = "get, concurrent", .total = GET_N, .inflight_max = INFLIGHT, .is_get = true};
    run_phase(&gconc);
    run_watch();

    bool closed = false;
    store_close(st, closed_cb, &closed);
    while (!closed)
        uv_run(&loop, UV_RUN_ONCE);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    if (own_dir)
        rm_dir(dir);
    return 0;
}
