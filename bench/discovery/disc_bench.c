/* Discovery benchmark: the real locator, metalocator and table code over
 * loopback TCP.
 *   1. propagation: a change to a node's table (what the agent does when an
 *      instance turns healthy) until a subscriber of the metalocator (two
 *      hops: node locator -> metalocator -> subscriber) has it; one change
 *      at a time, N changes, p50/p99.
 *   2. resolve rate: pipelined `resolve` requests against a node locator.
 * The subscriber and the resolve clients run on their own threads with
 * blocking sockets, so the measured loop is only drover's. */
#include "core/buf.h"
#include "core/rpc.h"
#include "locator/locator.h"
#include "locator/meta.h"
#include "locator/table.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int dial(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        perror("connect");
        exit(1);
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, 1 /* TCP_NODELAY */, &one, sizeof(one));
    return fd;
}

/* ---- subscriber two hops away ---- */

static _Atomic uint64_t seen_port; /* port of the endpoint last seen for /bench/svc */
static _Atomic double seen_at;
static int meta_port;

static void *subscriber(void *arg)
{
    int fd = dial(meta_port);
    buf_t out = BUF_INIT(0);
    rpc_encode(&out, 1, RPC_LOCATOR_CONNECT, "s", "bench-subscriber");
    (void)!write(fd, out.data, out.len);
    rpc_decoder_t d;
    rpc_decoder_init(&d, RPC_MAX_MESSAGE_DEFAULT);
    char buf[65536];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n <= 0)
            break;
        double t = now_us();
        rpc_decoder_feed(&d, buf, (size_t)n);
        rpc_msg_t m;
        err_t err = {0};
        while (rpc_decoder_next(&d, &m, &err) == 1) {
            if (m.nargs < 1 || m.args[0].type != MSGPACK_OBJECT_MAP)
                continue;
            const msgpack_object_map *map = &m.args[0].via.map;
            for (uint32_t i = 0; i < map->size; i++) {
                const msgpack_object *k = &map->ptr[i].key, *v = &map->ptr[i].val;
                if (k->type != MSGPACK_OBJECT_STR || k->via.str.size != 10 ||
                    memcmp(k->via.str.ptr, "/bench/svc", 10) || v->type != MSGPACK_OBJECT_ARRAY ||
                    !v->via.array.size)
                    continue;
                const msgpack_object *eps = &v->via.array.ptr[0];
                if (eps->type != MSGPACK_OBJECT_ARRAY || !eps->via.array.size)
                    continue;
                const msgpack_object *ep = &eps->via.array.ptr[0];
                if (ep->type == MSGPACK_OBJECT_ARRAY && ep->via.array.size == 2) {
                    atomic_store(&seen_at, t);
                    atomic_store(&seen_port, ep->via.array.ptr[1].via.u64);
                }
            }
            /* Acknowledge like a router would, so drains are never held. */
            const char *rev;
            size_t rl;
            if (rpc_msg_header(&m, "revision", &rev, &rl) == 0) {
                char r[32];
                snprintf(r, sizeof(r), "%.*s", (int)rl, rev);
                buf_reset(&out);
                rpc_encode(&out, 1, 3, "S", r, strlen(r));
                (void)!write(fd, out.data, out.len);
            }
        }
    }
    return NULL;
}

/* ---- resolve rate ---- */

static int node_port;
static _Atomic uint64_t resolved;
static _Atomic int stop_resolving;

static void *resolver(void *arg)
{
    int fd = dial(node_port);
    rpc_decoder_t d;
    rpc_decoder_init(&d, RPC_MAX_MESSAGE_DEFAULT);
    buf_t out = BUF_INIT(0);
    uint64_t ch = 1;
    char buf[65536];
    while (!atomic_load(&stop_resolving)) {
        buf_reset(&out);
        for (int i = 0; i < 32; i++)
            rpc_encode(&out, ch++, RPC_LOCATOR_RESOLVE, "s", "/bench/svc");
        (void)!write(fd, out.data, out.len);
        int got = 0;
        while (got < 32) {
            ssize_t n = read(fd, buf, sizeof(buf));
            if (n <= 0)
                return NULL;
            rpc_decoder_feed(&d, buf, (size_t)n);
            rpc_msg_t m;
            err_t err = {0};
            while (rpc_decoder_next(&d, &m, &err) == 1)
                got++;
        }
        atomic_fetch_add(&resolved, 32);
    }
    close(fd);
    return NULL;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 1000;
    uv_loop_t *loop = uv_default_loop();
    err_t err = {0};
    loc_table_t *node = loc_table_new(), *merged = loc_table_new();
    loc_server_t *node_srv, *meta_srv;
    meta_t *meta;
    loc_server_opts_t lo = {0};
    if (loc_server_start(loop, "127.0.0.1:0", node, &lo, &node_srv, &err) ||
        loc_server_start(loop, "127.0.0.1:0", merged, &lo, &meta_srv, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    meta_opts_t mo = {.downstream = meta_srv};
    if (meta_start(loop, merged, &mo, &meta, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    node_port = loc_server_port(node_srv);
    meta_port = loc_server_port(meta_srv);
    char hp[64];
    snprintf(hp, sizeof(hp), "127.0.0.1:%d", node_port);
    meta_node_add(meta, "bench-node", hp);
    /* Some other services, so the tables are not trivially small. */
    for (int i = 0; i < 200; i++) {
        char name[32];
        snprintf(name, sizeof(name), "/bench/other-%d", i);
        loc_ep_t ep = {.host = "10.0.0.1", .port = 1000 + i};
        loc_table_set(node, name, &ep, 1, 1, "service");
    }
    pthread_t sub;
    pthread_create(&sub, NULL, subscriber, NULL);
    for (int i = 0; i < 50; i++)
        uv_run(loop, UV_RUN_NOWAIT), usleep(10000);

    double *lat = calloc((size_t)n, sizeof(double));
    for (int i = 0; i < n; i++) {
        int port = 20000 + i % 10000;
        loc_ep_t ep = {
            .host = "127.0.0.1", .port = port, .instance = "i", .node = "bench-node", .version = 1};
        double t0 = now_us();
        loc_table_set(node, "/bench/svc", &ep, 1, 1, "service");
        /* UV_RUN_ONCE blocks in epoll like a real agent's loop: each hop
         * pays its wake-up (the subscriber's ack wakes the last pass). */
        while (atomic_load(&seen_port) != (uint64_t)port) {
            uv_run(loop, UV_RUN_ONCE);
            if (now_us() - t0 > 5e6) {
                fprintf(stderr, "change %d not seen after 5 s\n", i);
                return 1;
            }
        }
        lat[i] = atomic_load(&seen_at) - t0;
    }
    qsort(lat, (size_t)n, sizeof(double), cmp_d);
    fflush(stdout);
    printf("propagation node -> metalocator -> subscriber (%d changes): p50 %.3f ms  p99 %.3f ms"
           "  max %.3f ms\n",
           n, lat[n / 2] / 1000, lat[(int)(n * 0.99) - 1] / 1000, lat[n - 1] / 1000);

    pthread_t rs[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&rs[i], NULL, resolver, NULL);
    double t0 = now_us();
    while (now_us() - t0 < 3e6)
        uv_run(loop, UV_RUN_NOWAIT);
    uint64_t done = atomic_load(&resolved);
    double secs = (now_us() - t0) / 1e6;
    atomic_store(&stop_resolving, 1);
    while (atomic_load(&resolved) == done && now_us() - t0 < 4e6)
        uv_run(loop, UV_RUN_NOWAIT);
    for (int i = 0; i < 50; i++)
        uv_run(loop, UV_RUN_NOWAIT);
    printf("resolve against a node locator (2 clients, 32 in flight each): %.0f/s\n",
           (double)done / secs);
    free(lat);
    fflush(stdout);
    _exit(0); /* the subscriber thread blocks in read(); nothing to clean up */
}
