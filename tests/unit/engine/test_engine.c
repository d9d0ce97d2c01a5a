/* Tests of the worker engine with real worker processes under the process
 * isolate: the test binary re-executes itself as the worker
 * (`test_engine --worker MODE --app .. --endpoint .. --uuid .. --locator ..`),
 * speaking the worker protocol through src/core/rpc.h, and the tests talk
 * to the invocation service over TCP with a small libuv client on the
 * engine's own loop.
 *
 * Worker modes: echo (normal), nohandshake, noheartbeat, ignoreterm,
 * garbage (garbage instead of a handshake), badexit (exits before
 * connecting). Events of the echo worker: anything echoes each chunk and
 * closes after the client's close; "crash" answers one chunk then dies on
 * the next one; "garbage" writes garbage on the socket; "flood" writes
 * FLOOD_BYTES in 64 KiB chunks then closes; "badch" writes on a channel
 * never opened.
 *
 * Run from the repo root after `make build/asan/drover-shim`. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/log.h"
#include "core/rpc.h"
#include "engine/engine.h"

#include <errno.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define FLOOD_BYTES ((size_t)24 << 20)

static char g_self[4096];
static const char *g_cwd; /* workers' cwd when set (default: the fixture's directory) */

/* ======================================================================
 * The worker (runs in a child process; blocking I/O, no libuv)
 * ====================================================================== */

static int w_fd = -1;

static void w_send(buf_t *b)
{
    size_t off = 0;
    while (off < b->len) {
        ssize_t n = write(w_fd, b->data + off, b->len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            _exit(10);
        off += (size_t)n;
    }
    buf_reset(b);
}

static int64_t w_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#define W_MAXCH 256

static int worker_main(int argc, char **argv)
{
    const char *mode = argv[2], *endpoint = NULL, *uuid = NULL;
    for (int i = 3; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--endpoint"))
            endpoint = argv[i + 1];
        else if (!strcmp(argv[i], "--uuid"))
            uuid = argv[i + 1];
    }
    printf("worker %s starting in mode %s\n", uuid ? uuid : "?", mode);
    fflush(stdout);
    if (!strcmp(mode, "badexit")) {
        fprintf(stderr, "boom: cannot start\n");
        _exit(2);
    }
    if (!endpoint || !uuid)
        _exit(11);
    w_fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", endpoint);
    if (connect(w_fd, (struct sockaddr *)&sun, sizeof(sun)) != 0)
        _exit(12);
    buf_t out = BUF_INIT(0);
    if (!strcmp(mode, "garbage")) {
        buf_append(&out, "\xc1\xc1\xc1\xc1garbage", 11);
        w_send(&out);
        sleep(30);
        _exit(0);
    }
    if (!strcmp(mode, "nohandshake")) {
        sleep(30);
        _exit(0);
    }
    rpc_encode(&out, 1, RPC_HANDSHAKE, "s", uuid);
    w_send(&out);
    bool beats = strcmp(mode, "noheartbeat") != 0;
    rpc_decoder_t d;
    rpc_decoder_init(&d, RPC_MAX_MESSAGE_DEFAULT);
    uint64_t chans[W_MAXCH];
    char events[W_MAXCH][32];
    int nch = 0;
    int64_t last_beat = w_now_ms();
    char rbuf[65536];
    for (;;) {
        struct pollfd p = {.fd = w_fd, .events = POLLIN};
        int pr = poll(&p, 1, 50);
        if (beats && w_now_ms() - last_beat >= 100) {
            rpc_encode(&out, 1, RPC_HEARTBEAT, "");
            w_send(&out);
            last_beat = w_now_ms();
        }
        if (pr <= 0)
            continue;
        ssize_t n = read(w_fd, rbuf, sizeof(rbuf));
        if (n <= 0)
            _exit(0); /* the agent went away */
        rpc_decoder_feed(&d, rbuf, (size_t)n);
        rpc_msg_t m;
        err_t err;
        int rc;
        while ((rc = rpc_decoder_next(&d, &m, &err)) == 1) {
            if (m.channel == 1) {
                if (m.type == RPC_TERMINATE && strcmp(mode, "ignoreterm") != 0) {
                    rpc_encode(&out, 1, RPC_TERMINATE, "us", 1u, "bye");
                    w_send(&out);
                    _exit(0);
                }
                continue;
            }
            int k = -1;
            for (int i = 0; i < nch; i++)
                if (chans[i] == m.channel)
                    k = i;
            if (k < 0) {
                const char *ev = "";
                size_t len = 0;
                rpc_arg_str(&m, 0, &ev, &len, NULL);
                k = nch < W_MAXCH ? nch++ : W_MAXCH - 1;
                chans[k] = m.channel;
                snprintf(events[k], sizeof(events[k]), "%.*s", (int)(len < 31 ? len : 31), ev);
                if (!strcmp(events[k], "crash")) {
                    rpc_encode(&out, m.channel, RPC_WRITE, "b", "partial", (size_t)7);
                    w_send(&out);
                } else if (!strcmp(events[k], "garbage")) {
                    buf_append(&out, "\xc1\xc1\xc1\xc1", 4);
                    w_send(&out);
                } else if (!strcmp(events[k], "headers")) {
                    /* answers the invoke's headers as "name=value;..." */
                    char hs[1024];
                    size_t hl = 0;
                    rpc_header_t h;
                    for (size_t i = 0; rpc_msg_header_at(&m, i, &h) == 0 && hl < 900; i++)
                        hl += (size_t)snprintf(hs + hl, sizeof(hs) - hl, "%.*s=%.*s;",
                                               (int)h.name_len, h.name, (int)h.value_len, h.value);
                    rpc_encode(&out, m.channel, RPC_WRITE, "b", hs, hl);
                    rpc_encode(&out, m.channel, RPC_CLOSE, "");
                    w_send(&out);
                } else if (!strcmp(events[k], "badch")) {
                    rpc_encode(&out, 999, RPC_WRITE, "b", "x", (size_t)1);
                    w_send(&out);
                } else if (!strcmp(events[k], "flood")) {
                    static char chunk[65536];
                    memset(chunk, 'f', sizeof(chunk));
                    for (size_t sent = 0; sent < FLOOD_BYTES; sent += sizeof(chunk)) {
                        rpc_encode(&out, m.channel, RPC_WRITE, "b", chunk, sizeof(chunk));
                        w_send(&out);
                    }
                    rpc_encode(&out, m.channel, RPC_CLOSE, "");
                    w_send(&out);
                }
                continue;
            }
            if (m.type == RPC_WRITE) {
                if (!strcmp(events[k], "crash")) {
                    for (int i = 0; i < 5; i++)
                        printf("crash line %d\n", i);
                    fflush(stdout);
                    fprintf(stderr, "dying on purpose\n");
                    _exit(3);
                }
                const char *chunk;
                size_t len;
                if (rpc_arg_bytes(&m, 0, &chunk, &len, NULL) == 0 && strcmp(events[k], "flood"))
                    rpc_encode(&out, m.channel, RPC_WRITE, "b", chunk, len);
            } else if (strcmp(events[k], "flood")) {
                /* close or error from the agent: end our direction too */
                rpc_encode(&out, m.channel, RPC_CLOSE, "");
            }
            w_send(&out);
        }
        if (rc < 0)
            _exit(13);
    }
}

/* ======================================================================
 * Test side: engine on a loop, libuv clients
 * ====================================================================== */

typedef struct tmsg {
    uint64_t ch, type;
    char *data; /* write chunk or error message */
    size_t len;
    uint64_t cat, code;
    uint64_t at; /* uv_hrtime */
} tmsg_t;

typedef struct tcli {
    uv_tcp_t tcp;
    uv_connect_t creq;
    bool connected, closed, close_sent;
    rpc_decoder_t dec;
    tmsg_t *msgs;
    size_t n, cap;
    size_t bytes; /* write chunk bytes received */
    bool count_only;
} tcli_t;

typedef struct fx {
    uv_loop_t loop;
    uv_timer_t timer;
    bool timed_out;
    char dir[64];
    engine_app_t *app;
    bool stopped;
} fx_t;

static fx_t *g_fx;

static void nop_timer(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

typedef bool (*pred_fn)(void *arg);

/* Run the loop until pred holds or ms pass. */
static bool run_until(pred_fn pred, void *arg, uint64_t ms)
{
    fx_t *f = g_fx;
    f->timed_out = false;
    f->timer.data = &f->timed_out;
    uv_timer_start(&f->timer, nop_timer, ms, 0);
    while (!pred(arg) && !f->timed_out)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_timer_stop(&f->timer);
    return pred(arg);
}

static bool never(void *arg)
{
    (void)arg;
    return false;
}

static void run_for(uint64_t ms)
{
    run_until(never, NULL, ms);
}

static void cli_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    static char mem[65536];
    *b = uv_buf_init(mem, sizeof(mem));
}

static void cli_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    tcli_t *c = s->data;
    if (n < 0) {
        c->closed = true;
        uv_read_stop(s);
        return;
    }
    rpc_decoder_feed(&c->dec, b->base, (size_t)n);
    rpc_msg_t m;
    err_t err;
    while (rpc_decoder_next(&c->dec, &m, &err) == 1) {
        const char *p = NULL;
        size_t len = 0;
        if (m.type == RPC_WRITE) {
            rpc_arg_bytes(&m, 0, &p, &len, NULL);
            c->bytes += len;
            if (c->count_only)
                continue;
        }
        if (c->n == c->cap) {
            c->cap = c->cap ? c->cap * 2 : 16;
            c->msgs = xrealloc(c->msgs, c->cap * sizeof(tmsg_t));
        }
        tmsg_t *t = &c->msgs[c->n++];
        memset(t, 0, sizeof(*t));
        t->ch = m.channel;
        t->type = m.type;
        t->at = uv_hrtime();
        if (m.type == RPC_ERROR) {
            const msgpack_object_array *a;
            if (rpc_arg_array(&m, 0, &a, NULL) == 0 && a->size == 2) {
                t->cat = a->ptr[0].via.u64;
                t->code = a->ptr[1].via.u64;
            }
            rpc_arg_str(&m, 1, &p, &len, NULL);
        }
        if (p) {
            t->data = xstrndup(p, len);
            t->len = len;
        }
    }
}

static void cli_connected(uv_connect_t *req, int status)
{
    tcli_t *c = req->data;
    if (status) {
        c->closed = true;
        return;
    }
    c->connected = true;
    uv_read_start((uv_stream_t *)&c->tcp, cli_alloc, cli_read);
}

static bool cli_is_connected(void *arg)
{
    tcli_t *c = arg;
    return c->connected || c->closed;
}

static tcli_t *cli_new(int port)
{
    tcli_t *c = xcalloc(1, sizeof(*c));
    rpc_decoder_init(&c->dec, RPC_MAX_MESSAGE_DEFAULT);
    uv_tcp_init(&g_fx->loop, &c->tcp);
    c->tcp.data = c;
    c->creq.data = c;
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", port, &sa);
    uv_tcp_nodelay(&c->tcp, 1);
    uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&sa, cli_connected);
    assert_true(run_until(cli_is_connected, c, 2000));
    assert_true(c->connected);
    return c;
}

static void cli_closed_cb(uv_handle_t *h)
{
    tcli_t *c = h->data;
    for (size_t i = 0; i < c->n; i++)
        free(c->msgs[i].data);
    free(c->msgs);
    rpc_decoder_free(&c->dec);
    free(c);
}

static void cli_free(tcli_t *c)
{
    uv_close((uv_handle_t *)&c->tcp, cli_closed_cb);
}

static void cli_wrote(uv_write_t *w, int status)
{
    free(w->data);
    free(w);
}

static void cli_raw(tcli_t *c, const void *p, size_t len)
{
    uv_write_t *w = xcalloc(1, sizeof(*w));
    char *copy = xmalloc(len);
    memcpy(copy, p, len);
    w->data = copy;
    uv_buf_t b = uv_buf_init(copy, (unsigned)len);
    uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, cli_wrote);
}

static void cli_send(tcli_t *c, buf_t *b)
{
    cli_raw(c, b->data, b->len);
    buf_free(b);
}

static void cli_enqueue(tcli_t *c, uint64_t ch, const char *event)
{
    buf_t b = BUF_INIT(0);
    rpc_encode(&b, ch, 0, "s", event);
    cli_send(c, &b);
}

static void cli_enqueue_timeout(tcli_t *c, uint64_t ch, const char *event, const char *ms)
{
    buf_t b = BUF_INIT(0);
    rpc_enc_t e;
    rpc_enc_begin(&e, &b, ch, 0, 1, 1);
    msgpack_pack_str_with_body(&e.pk, event, strlen(event));
    rpc_enc_header(&e, "timeout", ms, strlen(ms));
    assert_int_equal(rpc_enc_end(&e), 0);
    cli_send(c, &b);
}

/* enqueue with n headers "h0=v0", "h1=v1", ... plus trace-id and timeout */
static void cli_enqueue_headers(tcli_t *c, uint64_t ch, const char *event, uint32_t n)
{
    buf_t b = BUF_INIT(0);
    rpc_enc_t e;
    rpc_enc_begin(&e, &b, ch, 0, 1, n + 2);
    msgpack_pack_str_with_body(&e.pk, event, strlen(event));
    rpc_enc_header(&e, "trace-id", "abc", 3);
    rpc_enc_header_bin(&e, "timeout", "5000", 4);
    for (uint32_t i = 0; i < n; i++) {
        char name[16], value[16];
        snprintf(name, sizeof(name), "h%u", i);
        snprintf(value, sizeof(value), "v%u", i);
        rpc_enc_header(&e, name, value, strlen(value));
    }
    assert_int_equal(rpc_enc_end(&e), 0);
    cli_send(c, &b);
}

static void cli_write(tcli_t *c, uint64_t ch, const char *s)
{
    buf_t b = BUF_INIT(0);
    rpc_encode(&b, ch, RPC_WRITE, "b", s, strlen(s));
    cli_send(c, &b);
}

static void cli_close(tcli_t *c, uint64_t ch)
{
    buf_t b = BUF_INIT(0);
    rpc_encode(&b, ch, RPC_CLOSE, "");
    cli_send(c, &b);
}

/* The terminal message (close or error) received on ch, or NULL. */
static const tmsg_t *cli_end(const tcli_t *c, uint64_t ch)
{
    for (size_t i = 0; i < c->n; i++)
        if (c->msgs[i].ch == ch && c->msgs[i].type != RPC_WRITE)
            return &c->msgs[i];
    return NULL;
}

typedef struct chwait {
    tcli_t *c;
    uint64_t ch;
} chwait_t;

static bool cli_has_end(void *arg)
{
    chwait_t *w = arg;
    return cli_end(w->c, w->ch) != NULL || w->c->closed;
}

static const tmsg_t *cli_wait_end(tcli_t *c, uint64_t ch, uint64_t ms)
{
    chwait_t w = {c, ch};
    run_until(cli_has_end, &w, ms);
    return cli_end(c, ch);
}

/* Concatenated write chunks received on ch (static buffer). */
static const char *cli_data(const tcli_t *c, uint64_t ch)
{
    static char out[4096];
    size_t n = 0;
    out[0] = '\0';
    for (size_t i = 0; i < c->n; i++)
        if (c->msgs[i].ch == ch && c->msgs[i].type == RPC_WRITE && c->msgs[i].data) {
            size_t l = c->msgs[i].len;
            if (n + l >= sizeof(out))
                break;
            memcpy(out + n, c->msgs[i].data, l);
            n += l;
            out[n] = '\0';
        }
    return out;
}

static int status_int(const char *path1, const char *path2)
{
    json_t *s = engine_app_status(g_fx->app);
    json_t *v = json_object_get(s, path1);
    if (path2)
        v = json_object_get(v, path2);
    int r = (int)json_integer_value(v);
    json_decref(s);
    return r;
}

typedef struct stwait {
    const char *a, *b;
    int want;
} stwait_t;

static bool status_is(void *arg)
{
    stwait_t *w = arg;
    return status_int(w->a, w->b) == w->want;
}

static bool wait_status(const char *a, const char *b, int want, uint64_t ms)
{
    stwait_t w = {a, b, want};
    return run_until(status_is, &w, ms);
}

/* ---- fixture ---- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    if (flag == FTW_DP)
        rmdir(path);
    else
        unlink(path);
    return 0;
}

static int fx_setup(void **state)
{
    fx_t *f = xcalloc(1, sizeof(*f));
    uv_loop_init(&f->loop);
    uv_timer_init(&f->loop, &f->timer);
    snprintf(f->dir, sizeof(f->dir), "/tmp/drover-engine-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    g_fx = f;
    *state = f;
    return 0;
}

static void on_stopped(void *data)
{
    ((fx_t *)data)->stopped = true;
}

static bool is_stopped(void *arg)
{
    return ((fx_t *)arg)->stopped;
}

static void fx_stop_app(fx_t *f)
{
    if (!f->app)
        return;
    f->stopped = false; /* a test may stop more than one app */
    engine_app_stop(f->app, false, on_stopped, f);
    assert_true(run_until(is_stopped, f, 8000));
    f->app = NULL;
}

static void walk_close(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static int fx_teardown(void **state)
{
    fx_t *f = *state;
    fx_stop_app(f);
    uv_walk(&f->loop, walk_close, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    uv_loop_close(&f->loop);
    nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    g_fx = NULL;
    return 0;
}

/* Start an app whose workers run in `mode`, with a pool profile. */
static void fx_start(fx_t *f, const char *mode, const char *pool_json)
{
    json_error_t je;
    json_t *pool = json_loads(pool_json, 0, &je);
    assert_non_null(pool);
    char *argv[] = {g_self, "--worker", (char *)mode, NULL};
    /* ENGINE_TEST_SLAVE: measure the cold start with another echo worker
     * (a small release-built one, say) instead of this ASan binary */
    const char *slave = getenv("ENGINE_TEST_SLAVE");
    if (slave && !strcmp(mode, "echo-slave")) {
        argv[0] = (char *)slave;
        argv[1] = NULL;
    }
    engine_opts_t o = {
        .name = "/test/echo",
        .version = 1,
        .id = "test.echo.1",
        .pool = pool,
        .argv = argv,
        .envp = environ,
        .cwd = g_cwd ? g_cwd : f->dir,
        .run_dir = f->dir,
        .locator = "127.0.0.1:10053",
        .listen = "127.0.0.1:0",
        .isolate = &isolate_process_ops,
    };
    err_t err = {0};
    int rc = engine_app_start(&f->loop, &o, &f->app, &err);
    if (rc)
        fprintf(stderr, "engine_app_start: %s\n", err.msg);
    assert_int_equal(rc, 0);
    assert_true(engine_app_port(f->app) > 0);
    json_decref(pool);
}

static const char *status_str(const char *path1, const char *path2, char *out, size_t n)
{
    json_t *s = engine_app_status(g_fx->app);
    json_t *v = json_object_get(s, path1);
    if (path2)
        v = json_object_get(v, path2);
    snprintf(out, n, "%s", json_is_string(v) ? json_string_value(v) : "");
    json_decref(s);
    return out;
}

static bool spare_parked(void *arg)
{
    (void)arg;
    return status_int("spare", "pid") > 0;
}

/* The executable a pid runs: a parked spare still runs the shim's. */
static bool pid_runs(int pid, const char *exe_suffix)
{
    char path[64], exe[4096];
    snprintf(path, sizeof(path), "/proc/%d/exe", pid);
    ssize_t n = readlink(path, exe, sizeof(exe) - 1);
    if (n <= 0)
        return false;
    exe[n] = '\0';
    size_t l = strlen(exe_suffix);
    return (size_t)n >= l && strcmp(exe + n - l, exe_suffix) == 0;
}

static bool pid_gone(void *arg)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d", *(int *)arg);
    return access(path, F_OK) != 0;
}

/* The app's crashlogs once there is one (they are read off the loop). */
static json_t *wait_crashlogs(engine_app_t *app)
{
    for (int i = 0; i < 200; i++) {
        json_t *list = engine_app_crashlogs(app);
        if (json_array_size(list))
            return list;
        json_decref(list);
        run_for(10);
    }
    fail_msg("no crashlog after 2 s");
    return NULL;
}

/* ======================================================================
 * Tests
 * ====================================================================== */

static void test_profile(void **state)
{
    engine_profile_t p;
    err_t err = {0};
    assert_int_equal(engine_profile_parse(NULL, &p, &err), 0);
    assert_int_equal(p.pool_limit, 10);
    assert_int_equal(p.queue_limit, 100);
    assert_int_equal(p.grow_threshold, 5);
    assert_int_equal(p.idle_ms, 600000);
    json_t *bad = json_pack("{s:s}", "idle-timeout", "soon");
    assert_int_equal(engine_profile_parse(bad, &p, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "pool.idle-timeout"));
    json_decref(bad);
    bad = json_pack("{s:i}", "pool-limit", 0);
    assert_int_equal(engine_profile_parse(bad, &p, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "pool.pool-limit"));
    json_decref(bad);
}

/* Pool at zero: the first invocation starts a worker; chunks stream both
 * ways; the cold start is logged. */
static void test_echo_cold_start(void **state)
{
    fx_t *f = *state;
    fx_start(f, "echo", "{\"idle-timeout\": 5}");
    assert_int_equal(status_int("workers", "total"), 0);
    /* the spare parked, and given the time to reach its hold */
    assert_true(run_until(spare_parked, NULL, 3000));
    run_for(100);
    tcli_t *c = cli_new(engine_app_port(f->app));
    uint64_t t0 = uv_hrtime();
    cli_enqueue(c, 1, "echo");
    cli_write(c, 1, "hello ");
    const tmsg_t *end = NULL;
    chwait_t w = {c, 1};
    (void)w;
    /* first reply byte */
    for (int i = 0; i < 500 && c->n == 0; i++)
        run_for(2);
    assert_true(c->n > 0);
    double cold_ms = (double)(c->msgs[0].at - t0) / 1e6;
    printf("cold start (enqueue to first reply byte, pool at zero, process isolate, ASan "
           "worker): %.2f ms\n",
           cold_ms);
    cli_write(c, 1, "world");
    cli_close(c, 1);
    end = cli_wait_end(c, 1, 3000);
    assert_non_null(end);
    assert_int_equal(end->type, RPC_CLOSE);
    assert_string_equal(cli_data(c, 1), "hello world");
    /* warm: a second invocation on the same worker */
    t0 = uv_hrtime();
    cli_enqueue(c, 2, "echo");
    cli_write(c, 2, "again");
    cli_close(c, 2);
    end = cli_wait_end(c, 2, 3000);
    assert_non_null(end);
    printf("warm invocation round trip: %.3f ms\n", (double)(end->at - t0) / 1e6);
    assert_string_equal(cli_data(c, 2), "again");
    if (getenv("ENGINE_TEST_SLAVE")) {
        /* the same with the other worker, pool at zero again */
        cli_free(c);
        fx_stop_app(f);
        f->stopped = false;
        fx_start(f, "echo-slave", "{}");
        c = cli_new(engine_app_port(f->app));
        t0 = uv_hrtime();
        size_t before = c->n;
        cli_enqueue(c, 1, "echo");
        cli_write(c, 1, "x");
        for (int i = 0; i < 2000 && c->n == before; i++)
            uv_run(&f->loop, UV_RUN_ONCE);
        assert_true(c->n > before);
        printf("cold start with ENGINE_TEST_SLAVE: %.2f ms\n",
               (double)(c->msgs[before].at - t0) / 1e6);
    }
    assert_int_equal(status_int("totals", "served"), 2);
    assert_int_equal(status_int("totals", "spawned"), 1);
    assert_int_equal(status_int("workers", "active"), 1);
    cli_free(c);
}

/* concurrency 2, one worker: the third invocation waits until a slot is
 * free, then runs. */
static void test_concurrency(void **state)
{
    fx_t *f = *state;
    fx_start(f, "echo", "{\"pool-limit\": 1, \"concurrency\": 2}");
    tcli_t *c = cli_new(engine_app_port(f->app));
    for (uint64_t ch = 1; ch <= 3; ch++) {
        cli_enqueue(c, ch, "hold");
        cli_write(c, ch, "x");
    }
    assert_true(wait_status("running", NULL, 2, 3000));
    assert_int_equal(status_int("queue", NULL), 1);
    /* the third sent its chunk while queued: it is replayed at dispatch */
    cli_close(c, 1);
    assert_non_null(cli_wait_end(c, 1, 2000));
    assert_true(wait_status("queue", NULL, 0, 2000));
    cli_close(c, 2);
    cli_close(c, 3);
    assert_non_null(cli_wait_end(c, 3, 2000));
    assert_string_equal(cli_data(c, 3), "x");
    assert_int_equal(cli_end(c, 3)->type, RPC_CLOSE);
    assert_non_null(cli_wait_end(c, 2, 2000));
    assert_int_equal(status_int("workers", "total"), 1);
    cli_free(c);
}

static void test_queue_full(void **state)
{
    fx_t *f = *state;
    fx_start(f, "echo", "{\"pool-limit\": 1, \"concurrency\": 1, \"queue-limit\": 1}");
    tcli_t *c = cli_new(engine_app_port(f->app));
    cli_enqueue(c, 1, "hold");
    assert_true(wait_status("running", NULL, 1, 3000));
    cli_enqueue(c, 2, "hold");
    cli_enqueue(c, 3, "hold");
    const tmsg_t *e = cli_wait_end(c, 3, 2000);
    assert_non_null(e);
    assert_int_equal(e->type, RPC_ERROR);
    assert_int_equal(e->cat, 3);
    assert_int_equal(e->code, EAGAIN);
    assert_string_equal(e->data, "queue is full (1 waiting)");
    assert_null(cli_end(c, 2));
    assert_int_equal(status_int("totals", "refused"), 1);
    /* the refused channel is still the client's to close */
    cli_close(c, 3);
    cli_close(c, 1);
    cli_close(c, 2);
    assert_non_null(cli_wait_end(c, 2, 2000));
    assert_int_equal(cli_end(c, 2)->type, RPC_CLOSE);
    cli_free(c);
}

static void test_deadlines(void **state)
{
    fx_t *f = *state;
    fx_start(f, "echo", "{\"pool-limit\": 1, \"concurrency\": 1, \"request-timeout\": 0.4}");
    tcli_t *c = cli_new(engine_app_port(f->app));
    cli_enqueue(c, 1, "hold");
    assert_true(wait_status("running", NULL, 1, 3000));
    cli_enqueue_timeout(c, 2, "hold", "100"); /* queued behind 1, shorter timeout */
    const tmsg_t *e = cli_wait_end(c, 2, 2000);
    assert_non_null(e);
    assert_int_equal(e->cat, 3);
    assert_int_equal(e->code, ETIMEDOUT);
    assert_non_null(strstr(e->data, "in the queue"));
    assert_null(cli_end(c, 1));
    e = cli_wait_end(c, 1, 2000);
    assert_non_null(e);
    assert_int_equal(e->code, ETIMEDOUT);
    assert_non_null(strstr(e->data, "request timed out after"));
    assert_int_equal(status_int("totals", "timed_out"), 2);
    /* the slot is free again: a new invocation runs */
    cli_close(c, 1);
    cli_close(c, 2);
    cli_enqueue(c, 3, "echo");
    cli_write(c, 3, "ok");
    cli_close(c, 3);
    e = cli_wait_end(c, 3, 2000);
    assert_non_null(e);
    assert_int_equal(e->type, RPC_CLOSE);
    assert_string_equal(cli_data(c, 3), "ok");
    cli_free(c);
}

/* Grow with the queue up to pool-limit, shrink to zero when idle, start
 * again on the next invocation. */
static void test_grow_idle_zero(void **state)
{
    fx_t *f = *state;
    fx_start(f, "echo",
             "{\"pool-limit\": 3, \"concurrency\": 1, \"grow-threshold\": 1, "
             "\"idle-timeout\": 0.3}");
    tcli_t *c = cli_new(engine_app_port(f->app));
    for (uint64_t ch = 1; ch <= 5; ch++)
        cli_enqueue(c, ch, "hold");
    assert_true(wait_status("running", NULL, 3, 5000));
    assert_int_equal(status_int("workers", "total"), 3);
    assert_int_equal(status_int("queue", NULL), 2);
    for (uint64_t ch = 1; ch <= 5; ch++)
        cli_close(c, ch);
    assert_non_null(cli_wait_end(c, 5, 3000));
    assert_true(wait_status("workers", "total", 0, 3000));
    assert_int_equal(status_int("totals", "crashes"), 0);
    cli_enqueue(c, 6, "echo");
    cli_write(c, 6, "back");
    cli_close(c, 6);
    assert_non_null(cli_wait_end(c, 6, 3000));
    assert_string_equal(cli_data(c, 6), "back");
    assert_int_equal(status_int("totals", "spawned"), 4);
    cli_free(c);
}

/* A worker dying mid-stream: [4, 32] to the client, a crashlog with its
 * last output, a respawn after the backoff. */
static void test_crash_crashlog_respawn(void **state)
{
    fx_t *f = *state;
    fx_start(f, "echo", "{\"crashlog-limit\": 3}");
    tcli_t *c = cli_new(engine_app_port(f->app));
    cli_enqueue(c, 1, "crash");
    cli_write(c, 1, "die");
    const tmsg_t *e = cli_wait_end(c, 1, 3000);
    assert_non_null(e);
    assert_int_equal(e->type, RPC_ERROR);
    assert_int_equal(e->cat, 4);
    assert_int_equal(e->code, EPIPE);
    assert_non_null(strstr(e->data, "worker died"));
    assert_string_equal(cli_data(c, 1), "partial");
    json_t *list = wait_crashlogs(f->app);
    json_t *cl = json_array_get(list, 0);
    assert_non_null(strstr(json_string_value(json_object_get(cl, "reason")), "status 3"));
    size_t len = 0;
    char *text = engine_app_crashlog(f->app, json_string_value(json_object_get(cl, "id")), &len);
    assert_non_null(text);
    assert_non_null(strstr(text, "crash line 4"));
    assert_non_null(strstr(text, "dying on purpose"));
    assert_null(strstr(text, "crash line 1")); /* only the last 3 lines of stdout */
    assert_int_equal(json_integer_value(json_object_get(cl, "lines")), 4);
    free(text);
    assert_null(engine_app_crashlog(f->app, "nope", &len));
    json_decref(list);
    assert_int_equal(status_int("totals", "crashes"), 1);
    assert_true(status_int("backoff_ms", NULL) > 500);
    /* the next invocation waits out the backoff (1 s), then runs */
    cli_enqueue(c, 2, "echo");
    cli_write(c, 2, "alive");
    cli_close(c, 2);
    e = cli_wait_end(c, 2, 4000);
    assert_non_null(e);
    assert_int_equal(e->type, RPC_CLOSE);
    assert_string_equal(cli_data(c, 2), "alive");
    cli_free(c);
}

static void test_handshake_timeout(void **state)
{
    fx_t *f = *state;
    fx_start(f, "nohandshake", "{\"handshake-timeout\": 0.3}");
    tcli_t *c = cli_new(engine_app_port(f->app));
    cli_enqueue(c, 1, "echo");
    const tmsg_t *e = cli_wait_end(c, 1, 3000);
    assert_non_null(e);
    assert_int_equal(e->cat, 3);
    assert_int_equal(e->code, EIO);
    assert_non_null(strstr(e->data, "cannot start a worker: handshake timeout"));
    assert_true(wait_status("workers", "total", 0, 2000));
    cli_free(c);
}

static void test_spawn_failures(void **state)
{
    fx_t *f = *state;
    fx_start(f, "badexit", "{}");
    tcli_t *c = cli_new(engine_app_port(f->app));
    cli_enqueue(c, 1, "echo");
    const tmsg_t *e = cli_wait_end(c, 1, 3000);
    assert_non_null(e);
    assert_int_equal(e->cat, 3);
    assert_int_equal(e->code, EIO);
    assert_non_null(strstr(e->data, "exited with status 2"));
    json_t *list = wait_crashlogs(f->app);
    size_t len;
    char *text = engine_app_crashlog(
        f->app, json_string_value(json_object_get(json_array_get(list, 0), "id")), &len);
    assert_non_null(strstr(text, "boom: cannot start"));
    free(text);
    json_decref(list);
    /* within the backoff, queued invocations wait rather than fail */
    cli_enqueue(c, 2, "echo");
    run_for(100);
    assert_int_equal(status_int("queue", NULL), 1);
    cli_free(c);
}

static void test_heartbeat_timeout(void **state)
{
    fx_t *f = *state;
    fx_start(f, "noheartbeat", "{\"heartbeat-timeout\": 0.4}");
    tcli_t *c = cli_new(engine_app_port(f->app));
    cli_enqueue(c, 1, "hold");
    assert_true(wait_status("running", NULL, 1, 3000));
    const tmsg_t *e = cli_wait_end(c, 1, 3000);
    assert_non_null(e);
    assert_int_equal(e->cat, 4);
    assert_non_null(strstr(e->data, "heartbeat timeout"));
    assert_true(wait_status("totals", "crashes", 1, 2000));
    cli_free(c);
}

/* Idle workers get `terminate`; one ignoring it is killed after
 * terminate-timeout; that is not a crash. */
static void test_terminate_timeout(void **state)
{
    fx_t *f = *state;
    fx_start(f, "ignoreterm", "{\"idle-timeout\": 0.1, \"terminate-timeout\": 0.3}");
    tcli_t *c = cli_new(engine_app_port(f->app));
    cli_enqueue(c, 1, "echo");
    cli_close(c, 1);
    assert_non_null(cli_wait_end(c, 1, 3000));
    assert_true(wait_status("workers", "terminating", 1, 2000));
    uint64_t t0 = uv_hrtime();
    assert_true(wait_status("workers", "total", 0, 3000));
    assert_true((uv_hrtime() - t0) / 1000000 >= 150);
    assert_int_equal(status_int("totals", "crashes"), 0);
    cli_free(c);
}

/* A client gone mid-invocation: the worker is told (it closes its side),
 * the slot frees, another client is served. */
static void test_client_disconnect(void **state)
{
    fx_t *f = *state;
    fx_start(f, "echo", "{\"pool-limit\": 1, \"concurrency\": 1}");
    tcli_t *a = cli_new(engine_app_port(f->app));
    tcli_t *b = cli_new(engine_app_port(f->app));
    cli_enqueue(a, 1, "hold");
    cli_write(a, 1, "half");
    assert_true(wait_status("running", NULL, 1, 3000));
    cli_enqueue(b, 1, "echo");
    cli_write(b, 1, "queued");
    cli_close(b, 1);
    run_for(50);
    assert_int_equal(status_int("queue", NULL), 1);
    cli_free(a);
    const tmsg_t *e = cli_wait_end(b, 1, 3000);
    assert_non_null(e);
    assert_int_equal(e->type, RPC_CLOSE);
    assert_string_equal(cli_data(b, 1), "queued");
    assert_int_equal(status_int("clients", NULL), 1);
    cli_free(b);
}

/* Garbage and misuse from clients: their channel or connection ends,
 * others go on. */
static void test_client_bad_input(void **state)
{
    fx_t *f = *state;
    fx_start(f, "echo", "{}");
    int port = engine_app_port(f->app);
    tcli_t *good = cli_new(port);
    cli_enqueue(good, 1, "hold");
    cli_write(good, 1, "a");

    tcli_t *g = cli_new(port);
    cli_raw(g, "\xc1\xc1\xc1 not msgpack", 15);
    assert_true(run_until(cli_is_connected, g, 10) && g->connected);
    for (int i = 0; i < 100 && !g->closed; i++)
        run_for(10);
    assert_true(g->closed);

    tcli_t *back = cli_new(port);
    cli_enqueue(back, 5, "echo");
    cli_enqueue(back, 3, "echo"); /* goes backwards: protocol error */
    for (int i = 0; i < 100 && !back->closed; i++)
        run_for(10);
    assert_true(back->closed);

    tcli_t *s = cli_new(port);
    buf_t b = BUF_INIT(0);
    rpc_encode(&b, 1, 7, "s", "x"); /* not enqueue */
    cli_send(s, &b);
    const tmsg_t *e = cli_wait_end(s, 1, 2000);
    assert_non_null(e);
    assert_int_equal(e->cat, 1);
    assert_int_equal(e->code, EINVAL);
    /* a write after its close, while the engine's side is still open */
    b = (buf_t)BUF_INIT(0);
    rpc_encode(&b, 2, 0, "s", "hold");
    rpc_encode(&b, 2, RPC_CLOSE, "");
    rpc_encode(&b, 2, RPC_WRITE, "b", "late", (size_t)4);
    cli_send(s, &b);
    e = cli_wait_end(s, 2, 3000);
    assert_non_null(e);
    assert_int_equal(e->cat, 1);
    assert_int_equal(e->code, EPROTO);
    assert_string_equal(e->data, "message after close");
    b = (buf_t)BUF_INIT(0);
    rpc_encode(&b, 3, 0, "u", 5u); /* event is not a string */
    cli_send(s, &b);
    e = cli_wait_end(s, 3, 2000);
    assert_non_null(e);
    assert_int_equal(e->code, EINVAL);
    run_for(50);
    assert_false(s->closed);

    cli_close(good, 1);
    e = cli_wait_end(good, 1, 2000);
    assert_non_null(e);
    assert_int_equal(e->type, RPC_CLOSE);
    assert_string_equal(cli_data(good, 1), "a");
    cli_free(good);
    cli_free(g);
    cli_free(back);
    cli_free(s);
}

/* Garbage from a worker, a write on a channel never opened, a worker
 * sending garbage instead of a handshake: the worker goes, the engine stays. */
static void test_worker_bad_input(void **state)
{
    fx_t *f = *state;
    fx_start(f, "echo", "{\"pool-limit\": 2, \"concurrency\": 1, \"grow-threshold\": 1}");
    tcli_t *c = cli_new(engine_app_port(f->app));
    cli_enqueue(c, 1, "hold");
    assert_true(wait_status("running", NULL, 1, 3000));
    cli_enqueue(c, 2, "garbage");
    cli_enqueue(c, 3, "badch");
    const tmsg_t *e = cli_wait_end(c, 2, 5000);
    assert_non_null(e);
    assert_int_equal(e->cat, 4);
    assert_non_null(strstr(e->data, "protocol error"));
    /* the first worker never noticed */
    cli_write(c, 1, "still here");
    cli_close(c, 1);
    e = cli_wait_end(c, 1, 2000);
    assert_non_null(e);
    assert_int_equal(e->type, RPC_CLOSE);
    assert_string_equal(cli_data(c, 1), "still here");
    e = cli_wait_end(c, 3, 5000);
    assert_non_null(e);
    assert_int_equal(e->cat, 4);
    assert_non_null(strstr(e->data, "never opened"));
    cli_free(c);
    fx_stop_app(f);

    f->stopped = false;
    fx_start(f, "garbage", "{}");
    c = cli_new(engine_app_port(f->app));
    cli_enqueue(c, 1, "echo");
    run_for(300);
    assert_int_equal(status_int("workers", "active"), 0);
    cli_free(c);
}

/* A worker writing 24 MiB as fast as it can to a client that reads:
 * paced by backpressure, all of it arrives. */
static void test_flood_paced(void **state)
{
    fx_t *f = *state;
    fx_start(f, "echo", "{}");
    tcli_t *c = cli_new(engine_app_port(f->app));
    c->count_only = true;
    cli_enqueue(c, 1, "flood");
    cli_close(c, 1);
    const tmsg_t *e = cli_wait_end(c, 1, 20000);
    assert_non_null(e);
    assert_int_equal(e->type, RPC_CLOSE);
    assert_int_equal(c->bytes, FLOOD_BYTES);
    cli_free(c);
}

static void test_pin(void **state)
{
    fx_t *f = *state;
    fx_start(f, "echo", "{\"pool-limit\": 3, \"idle-timeout\": 0.2}");
    err_t err = {0};
    assert_int_equal(engine_app_pin(f->app, 4, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "pool-limit 3"));
    assert_int_equal(engine_app_pin(f->app, 2, &err), 0);
    assert_true(wait_status("workers", "active", 2, 3000));
    run_for(400); /* pinned: idle-timeout does not apply */
    assert_int_equal(status_int("workers", "active"), 2);
    assert_int_equal(status_int("pin", NULL), 2);
    assert_int_equal(engine_app_pin(f->app, 1, &err), 0);
    assert_true(wait_status("workers", "total", 1, 3000));
    assert_int_equal(engine_app_pin(f->app, 0, &err), 0);
    assert_true(wait_status("workers", "total", 0, 3000));
}

/* Stop: queued invocations get [3, 108], running ones end with their
 * worker, the app frees itself. */
static void test_stop(void **state)
{
    fx_t *f = *state;
    fx_start(f, "echo", "{\"pool-limit\": 1, \"concurrency\": 1}");
    tcli_t *c = cli_new(engine_app_port(f->app));
    cli_enqueue(c, 1, "hold");
    assert_true(wait_status("running", NULL, 1, 3000));
    cli_enqueue(c, 2, "hold");
    run_for(30);
    engine_app_stop(f->app, false, on_stopped, f);
    const tmsg_t *e = cli_wait_end(c, 2, 2000);
    assert_non_null(e);
    assert_int_equal(e->cat, 3);
    assert_int_equal(e->code, ESHUTDOWN);
    assert_true(run_until(is_stopped, f, 5000));
    f->app = NULL;
    e = cli_end(c, 1);
    /* the echo worker answered terminate by exiting: its invocation ends
     * [3, 108] too (or the connection closed with the app) */
    assert_true(c->closed || (e && e->code == ESHUTDOWN));
    cli_free(c);
}

/* The enqueue's headers reach the worker with its invoke, as they came
 * (str or bin); past the bound the enqueue is refused [1, 22] naming it. */
static void test_enqueue_headers(void **state)
{
    fx_t *f = *state;
    fx_start(f, "echo", "{}");
    tcli_t *c = cli_new(engine_app_port(f->app));
    /* the first waits in the queue while its worker starts */
    cli_enqueue_headers(c, 1, "headers", 1);
    const tmsg_t *e = cli_wait_end(c, 1, 5000);
    assert_non_null(e);
    assert_int_equal(e->type, RPC_CLOSE);
    assert_string_equal(cli_data(c, 1), "trace-id=abc;timeout=5000;h0=v0;");
    /* the next goes straight to the running worker */
    cli_enqueue_headers(c, 2, "headers", 3);
    assert_non_null(cli_wait_end(c, 2, 5000));
    assert_string_equal(cli_data(c, 2), "trace-id=abc;timeout=5000;h0=v0;h1=v1;h2=v2;");
    cli_enqueue_headers(c, 3, "headers", 100);
    e = cli_wait_end(c, 3, 5000);
    assert_non_null(e);
    assert_int_equal(e->type, RPC_ERROR);
    assert_int_equal(e->cat, 1);
    assert_int_equal(e->code, EINVAL);
    assert_non_null(strstr(e->data, "at most 64"));
    /* the connection goes on */
    cli_enqueue(c, 4, "echo");
    cli_write(c, 4, "still");
    cli_close(c, 4);
    assert_non_null(cli_wait_end(c, 4, 5000));
    assert_string_equal(cli_data(c, 4), "still");
    cli_free(c);
}

/* With the pool at zero a spare waits parked (the shim's child, not yet
 * the worker); the first invocation takes it, and once idle shrinking
 * brings the pool back to zero another one is parked. Stopping the app
 * ends the parked one without running the worker. */
static void test_spare(void **state)
{
    fx_t *f = *state;
    fx_start(f, "echo", "{\"idle-timeout\": 0.3}");
    assert_true(run_until(spare_parked, NULL, 3000));
    int parked = status_int("spare", "pid");
    run_for(100);
    assert_true(pid_runs(parked, "drover-shim")); /* held before its exec */
    assert_int_equal(status_int("workers", "total"), 0);
    assert_int_equal(status_int("totals", "spawned"), 0);
    char uuid[64], now_uuid[64];
    status_str("spare", "uuid", uuid, sizeof(uuid));

    tcli_t *c = cli_new(engine_app_port(f->app));
    cli_enqueue(c, 1, "echo");
    cli_write(c, 1, "warm");
    cli_close(c, 1);
    assert_non_null(cli_wait_end(c, 1, 3000));
    assert_string_equal(cli_data(c, 1), "warm");
    assert_int_equal(status_int("workers", "total"), 1);
    assert_int_equal(status_int("totals", "spawned"), 1);
    json_t *st = engine_app_status(f->app);
    assert_true(json_is_null(json_object_get(st, "spare")));
    json_t *w0 = json_array_get(json_object_get(st, "workers_list"), 0);
    assert_string_equal(json_string_value(json_object_get(w0, "uuid")), uuid); /* the spare */
    assert_int_equal(json_integer_value(json_object_get(w0, "pid")), parked);
    json_decref(st);
    assert_true(pid_runs(parked, "test_engine")); /* it exec'd the worker */

    assert_true(wait_status("workers", "total", 0, 3000));
    assert_true(run_until(spare_parked, NULL, 3000));
    int again = status_int("spare", "pid");
    assert_int_not_equal(again, parked);
    assert_string_not_equal(status_str("spare", "uuid", now_uuid, sizeof(now_uuid)), uuid);
    assert_int_equal(status_int("totals", "crashes"), 0);
    cli_free(c);
    fx_stop_app(f);
    assert_true(run_until(pid_gone, &again, 3000));
}

/* "spare": false parks nothing; a spare that cannot get as far as its
 * hold (here its working directory is missing) is not restarted in a hot
 * loop: the crash backoff applies, and a real start reports why. */
static void test_spare_off_and_failing(void **state)
{
    fx_t *f = *state;
    fx_start(f, "echo", "{\"spare\": false}");
    run_for(200);
    json_t *st = engine_app_status(f->app);
    assert_true(json_is_null(json_object_get(st, "spare")));
    json_decref(st);
    fx_stop_app(f);

    char missing[600];
    snprintf(missing, sizeof(missing), "%s/no-such-dir", f->dir);
    g_cwd = missing;
    fx_start(f, "echo", "{}");
    g_cwd = NULL;
    bool backed_off = false;
    for (int i = 0; i < 300 && !backed_off; i++) {
        run_for(10);
        backed_off = status_int("backoff_ms", NULL) > 0;
    }
    assert_true(backed_off);
    st = engine_app_status(f->app);
    assert_true(json_is_null(json_object_get(st, "spare")));
    json_decref(st);
    tcli_t *c = cli_new(engine_app_port(f->app));
    cli_enqueue(c, 1, "echo");
    const tmsg_t *e = cli_wait_end(c, 1, 5000);
    assert_non_null(e);
    assert_int_equal(e->cat, 3);
    assert_non_null(strstr(e->data, "chdir"));
    cli_free(c);
}

int main(int argc, char **argv)
{
    if (argc > 2 && !strcmp(argv[1], "--worker"))
        return worker_main(argc, argv);
    /* as in drover itself (server_run): a peer that went away is an EPIPE
     * the engine handles, not a signal that ends the process */
    signal(SIGPIPE, SIG_IGN);
    if (!realpath("/proc/self/exe", g_self)) {
        perror("realpath");
        return 1;
    }
    char shim[4096];
    if (!getenv("DROVER_SHIM")) {
        if (!realpath("build/asan/drover-shim", shim)) {
            fprintf(stderr, "build/asan/drover-shim not found: run from the repo root after "
                            "`make build/asan/drover-shim`\n");
            return 1;
        }
        setenv("DROVER_SHIM", shim, 1);
    }
    log_setup(getenv("ENGINE_TEST_DEBUG") ? LOG_DEBUG : LOG_ERROR, LOG_TEXT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_profile),
        cmocka_unit_test_setup_teardown(test_echo_cold_start, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_concurrency, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_queue_full, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_deadlines, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_grow_idle_zero, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_crash_crashlog_respawn, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_handshake_timeout, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_spawn_failures, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_heartbeat_timeout, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_terminate_timeout, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_client_disconnect, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_client_bad_input, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_worker_bad_input, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_flood_paced, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_pin, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_stop, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_spare, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_enqueue_headers, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_spare_off_and_failing, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
