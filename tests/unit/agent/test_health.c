/* Health checks against real peers: a plain-socket HTTP server on a thread
 * (status sequence and misbehaviours chosen per test), a listening socket
 * that never accepts, a closed port, and real shell commands. Each test runs
 * its own uv loop until every handle is closed, then requires
 * uv_loop_close() to succeed: a handle left open fails the test and ASan
 * reports anything not freed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "agent/health.h"
#include "core/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- test HTTP server --------------------------------------------------- */

typedef enum srv_mode {
    SRV_STATUS,    /* answer statuses[i] to the i-th request, then close */
    SRV_SPLIT,     /* answer 204 in small pieces with pauses */
    SRV_HOLD,      /* answer 200 with a long body never sent; wait for the peer to close */
    SRV_GARBAGE,   /* answer something that is not HTTP */
    SRV_OVERSIZED, /* 10000 bytes without a line end */
    SRV_EOF,       /* close without answering */
    SRV_ACCEPT,    /* accept and close (TCP checks) */
} srv_mode_t;

typedef struct srv {
    int lfd;
    int port;
    pthread_t thread;
    srv_mode_t mode;
    int statuses[16];
    int n_statuses;
    atomic_int n_conns;
    atomic_bool peer_closed;
    atomic_bool stop;
    char first_req[1024];
} srv_t;

static int listen_any(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(fd, 16), 0);
    socklen_t len = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    *port = ntohs(a.sin_port);
    return fd;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void send_all(int fd, const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

/* Read the request head (bounded); returns its length or -1. */
static int read_head(int fd, char *buf, size_t cap)
{
    size_t len = 0;
    while (len + 1 < cap) {
        ssize_t r = recv(fd, buf + len, cap - 1 - len, 0);
        if (r <= 0)
            return -1;
        len += (size_t)r;
        buf[len] = '\0';
        if (strstr(buf, "\r\n\r\n"))
            return (int)len;
    }
    return -1;
}

static void srv_serve(srv_t *s, int fd, int idx)
{
    char req[1024];
    char out[256];
    if (s->mode == SRV_ACCEPT)
        return;
    if (read_head(fd, req, sizeof(req)) < 0)
        return;
    if (idx == 0)
        snprintf(s->first_req, sizeof(s->first_req), "%s", req);
    switch (s->mode) {
    case SRV_STATUS: {
        int i = idx < s->n_statuses ? idx : s->n_statuses - 1;
        int n = snprintf(out, sizeof(out), "HTTP/1.1 %d Whatever\r\nContent-Length: 0\r\n\r\n",
                         s->statuses[i]);
        send_all(fd, out, (size_t)n);
        break;
    }
    case SRV_SPLIT:
        send_all(fd, "HTTP/1.1 2", 10);
        sleep_ms(20);
        send_all(fd, "04 No Content\r", 14);
        sleep_ms(20);
        send_all(fd, "\nServer: t\r\n\r\n", 14);
        break;
    case SRV_HOLD: {
        const char *h = "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
        send_all(fd, h, strlen(h));
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 5000) == 1 && recv(fd, out, sizeof(out), 0) == 0)
            atomic_store(&s->peer_closed, true);
        break;
    }
    case SRV_GARBAGE: send_all(fd, "SSH-2.0-OpenSSH_9.2\r\n", 21); break;
    case SRV_OVERSIZED: {
        static char big[10000];
        memcpy(big, "HTTP/1.1 200 ", 13);
        memset(big + 13, 'a', sizeof(big) - 13);
        send_all(fd, big, sizeof(big));
        break;
    }
    default: break;
    }
}

static void *srv_main(void *arg)
{
    srv_t *s = arg;
    for (;;) {
        int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0 || atomic_load(&s->stop)) {
            if (fd >= 0)
                close(fd);
            return NULL;
        }
        int idx = atomic_fetch_add(&s->n_conns, 1);
        srv_serve(s, fd, idx);
        close(fd);
    }
}

static srv_t *srv_start(srv_mode_t mode, const int *statuses, int n)
{
    srv_t *s = calloc(1, sizeof(*s));
    s->mode = mode;
    for (int i = 0; i < n; i++)
        s->statuses[i] = statuses[i];
    s->n_statuses = n;
    s->lfd = listen_any(&s->port);
    assert_int_equal(pthread_create(&s->thread, NULL, srv_main, s), 0);
    return s;
}

static void srv_stop(srv_t *s)
{
    atomic_store(&s->stop, true);
    shutdown(s->lfd, SHUT_RDWR); /* wakes accept() */
    pthread_join(s->thread, NULL);
    close(s->lfd);
    free(s);
}

/* A port nothing listens on (bound then closed). */
static int closed_port(void)
{
    int port;
    int fd = listen_any(&port);
    close(fd);
    return port;
}

/* ---- running a health check --------------------------------------------- */

#define MAX_RESULTS 64

typedef struct rec {
    health_result_t r;
    uint64_t at_ms; /* since just before health_start */
} rec_t;

typedef struct run {
    uv_loop_t loop;
    uv_timer_t guard; /* fails the test if the expected results never come */
    uv_timer_t stopper;
    health_t *h;
    int stop_after;      /* health_stop after this many results */
    bool stop_on_kill;   /* ... or at the first kill */
    bool double_stop;    /* call health_stop twice from the callback */
    uint64_t stop_at_ms; /* > 0: health_stop from a timer, not the callback */
    uint64_t t0;
    rec_t rec[MAX_RESULTS];
    int n;
    bool guard_fired;
    bool stopped;
} run_t;

static uint64_t ms_now(void)
{
    return uv_hrtime() / 1000000u;
}

static void run_finish(run_t *r)
{
    if (r->stopped)
        return;
    r->stopped = true;
    health_stop(r->h);
    uv_close((uv_handle_t *)&r->guard, NULL);
    if (r->stop_at_ms)
        uv_close((uv_handle_t *)&r->stopper, NULL);
}

static void on_result(health_t *h, const health_result_t *res, void *data)
{
    run_t *r = data;
    assert_ptr_equal(h, r->h);
    assert_false(r->stopped); /* no callback after health_stop */
    if (r->n < MAX_RESULTS) {
        r->rec[r->n].r = *res;
        r->rec[r->n].at_ms = ms_now() - r->t0;
        r->n++;
    }
    if (r->stop_at_ms)
        return;
    if (r->n >= r->stop_after || (r->stop_on_kill && res->kill) || r->n == MAX_RESULTS) {
        if (r->double_stop)
            health_stop(h);
        run_finish(r);
    }
}

static void on_guard(uv_timer_t *t)
{
    run_t *r = t->data;
    r->guard_fired = true;
    run_finish(r);
}

static void on_stopper(uv_timer_t *t)
{
    run_finish(t->data);
}

/* Run one health check until stop_after results (or the stopper timer),
 * with a 15 s guard. Returns the elapsed time. */
static uint64_t run_health(run_t *r, const health_spec_t *spec)
{
    assert_int_equal(uv_loop_init(&r->loop), 0);
    uv_timer_init(&r->loop, &r->guard);
    r->guard.data = r;
    uv_timer_start(&r->guard, on_guard, 15000, 0);
    if (r->stop_at_ms) {
        uv_timer_init(&r->loop, &r->stopper);
        r->stopper.data = r;
        uv_timer_start(&r->stopper, on_stopper, r->stop_at_ms, 0);
    }
    err_t err = {0};
    r->t0 = ms_now();
    int rc = health_start(&r->loop, spec, on_result, r, &r->h, &err);
    if (rc != 0)
        fail_msg("health_start: %s", err.msg);
    uv_run(&r->loop, UV_RUN_DEFAULT);
    uint64_t elapsed = ms_now() - r->t0;
    assert_false(r->guard_fired);
    assert_int_equal(uv_loop_close(&r->loop), 0); /* every handle closed */
    return elapsed;
}

/* Healthy, or fail showing why not. */
static void expect_healthy(const run_t *r, int i)
{
    assert_true(i < r->n);
    if (!r->rec[i].r.healthy)
        fail_msg("result %d unhealthy: %s", i, r->rec[i].r.reason);
}

/* Timeouts of checks expected to pass are generous: the machine running
 * the tests may be loaded, and ASan slows the spawns. */
static health_spec_t http_spec(int port)
{
    health_spec_t s = {
        .protocol = HEALTH_HTTP,
        .host = "127.0.0.1",
        .port = port,
        .path = "/hc",
        .interval_ms = 20,
        .timeout_ms = 8000,
    };
    return s;
}

static health_spec_t cmd_spec(const char *command)
{
    health_spec_t s = {
        .protocol = HEALTH_COMMAND,
        .command = command,
        .interval_ms = 20,
        .timeout_ms = 8000,
    };
    return s;
}

/* ---- HTTP --------------------------------------------------------------- */

static void test_http_healthy_request(void **state)
{
    int st[] = {200};
    srv_t *s = srv_start(SRV_STATUS, st, 1);
    health_spec_t spec = http_spec(s->port);
    run_t r = {.stop_after = 1};
    run_health(&r, &spec);
    assert_int_equal(r.n, 1);
    expect_healthy(&r, 0);
    assert_true(r.rec[0].r.changed);
    assert_false(r.rec[0].r.kill);
    assert_int_equal(r.rec[0].r.consecutive_failures, 0);
    assert_string_equal(r.rec[0].r.reason, "HTTP 200");
    char want[256];
    snprintf(want, sizeof(want),
             "GET /hc HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: drover-health\r\n"
             "Connection: close\r\n\r\n",
             s->port);
    assert_string_equal(s->first_req, want);
    srv_stop(s);
}

/* 2xx and 3xx are healthy, the rest not; changed flips only on a change;
 * consecutive failures reset on success. */
static void test_http_status_sequence(void **state)
{
    int st[] = {200, 200, 399, 400, 199, 500, 301};
    srv_t *s = srv_start(SRV_STATUS, st, 7);
    health_spec_t spec = http_spec(s->port);
    run_t r = {.stop_after = 7};
    run_health(&r, &spec);
    srv_stop(s);
    assert_int_equal(r.n, 7);
    bool healthy[] = {1, 1, 1, 0, 0, 0, 1};
    bool changed[] = {1, 0, 0, 1, 0, 0, 1};
    int fails[] = {0, 0, 0, 1, 2, 3, 0};
    for (int i = 0; i < 7; i++) {
        assert_int_equal(r.rec[i].r.healthy, healthy[i]);
        assert_int_equal(r.rec[i].r.changed, changed[i]);
        assert_int_equal(r.rec[i].r.consecutive_failures, fails[i]);
        assert_false(r.rec[i].r.kill);
    }
    assert_string_equal(r.rec[2].r.reason, "HTTP 399");
    assert_string_equal(r.rec[3].r.reason, "HTTP 400 from /hc");
    assert_string_equal(r.rec[4].r.reason, "HTTP 199 from /hc");
    assert_string_equal(r.rec[6].r.reason, "HTTP 301");
}

static void test_http_split_status_line(void **state)
{
    srv_t *s = srv_start(SRV_SPLIT, NULL, 0);
    health_spec_t spec = http_spec(s->port);
    run_t r = {.stop_after = 1};
    run_health(&r, &spec);
    srv_stop(s);
    expect_healthy(&r, 0);
    assert_string_equal(r.rec[0].r.reason, "HTTP 204");
}

/* The check ends at the status line: it neither waits for the body nor for
 * the server to close, and it closes the connection itself. */
static void test_http_closes_after_status(void **state)
{
    srv_t *s = srv_start(SRV_HOLD, NULL, 0);
    health_spec_t spec = http_spec(s->port);
    spec.timeout_ms = 5000;
    run_t r = {.stop_after = 1};
    uint64_t elapsed = run_health(&r, &spec);
    expect_healthy(&r, 0);
    assert_true(elapsed < 2000);
    for (int i = 0; i < 200 && !atomic_load(&s->peer_closed); i++)
        sleep_ms(10);
    assert_true(atomic_load(&s->peer_closed));
    srv_stop(s);
}

static void test_http_garbage(void **state)
{
    srv_t *s = srv_start(SRV_GARBAGE, NULL, 0);
    health_spec_t spec = http_spec(s->port);
    run_t r = {.stop_after = 1};
    run_health(&r, &spec);
    srv_stop(s);
    assert_false(r.rec[0].r.healthy);
    assert_non_null(strstr(r.rec[0].r.reason, "HTTP: bad response"));
}

static void test_http_oversized_status_line(void **state)
{
    srv_t *s = srv_start(SRV_OVERSIZED, NULL, 0);
    health_spec_t spec = http_spec(s->port);
    run_t r = {.stop_after = 1};
    run_health(&r, &spec);
    srv_stop(s);
    assert_false(r.rec[0].r.healthy);
    assert_string_equal(r.rec[0].r.reason, "HTTP: no status line in the first 8192 bytes");
}

static void test_http_eof_before_status(void **state)
{
    srv_t *s = srv_start(SRV_EOF, NULL, 0);
    health_spec_t spec = http_spec(s->port);
    run_t r = {.stop_after = 1};
    run_health(&r, &spec);
    srv_stop(s);
    assert_false(r.rec[0].r.healthy);
    assert_string_equal(r.rec[0].r.reason, "HTTP: connection closed before the status line");
}

/* A listener that never accepts: the kernel completes the handshake and
 * takes the request, nobody answers. */
static void test_http_timeout(void **state)
{
    int port;
    int lfd = listen_any(&port);
    health_spec_t spec = http_spec(port);
    spec.timeout_ms = 200;
    spec.interval_ms = 1000;
    run_t r = {.stop_after = 1};
    run_health(&r, &spec);
    close(lfd);
    assert_false(r.rec[0].r.healthy);
    assert_string_equal(r.rec[0].r.reason, "timed out after 200 ms");
    assert_true(r.rec[0].at_ms >= 200);
    assert_true(r.rec[0].at_ms < 1500);
}

static void test_http_refused(void **state)
{
    health_spec_t spec = http_spec(closed_port());
    run_t r = {.stop_after = 1};
    run_health(&r, &spec);
    assert_false(r.rec[0].r.healthy);
    assert_string_equal(r.rec[0].r.reason, "connect: Connection refused");
}

static void test_https_noted(void **state)
{
    int st[] = {200};
    srv_t *s = srv_start(SRV_STATUS, st, 1);
    health_spec_t spec = http_spec(s->port);
    spec.protocol = HEALTH_HTTPS;
    run_t r = {.stop_after = 1};
    run_health(&r, &spec);
    srv_stop(s);
    expect_healthy(&r, 0);
    assert_string_equal(r.rec[0].r.reason, "HTTP 200 (HTTPS checked as plain HTTP: no TLS yet)");
}

/* ---- TCP ---------------------------------------------------------------- */

static void test_tcp(void **state)
{
    srv_t *s = srv_start(SRV_ACCEPT, NULL, 0);
    health_spec_t spec = http_spec(s->port);
    spec.protocol = HEALTH_TCP;
    run_t r = {.stop_after = 2};
    run_health(&r, &spec);
    char want[64];
    snprintf(want, sizeof(want), "connected to 127.0.0.1:%d", s->port);
    srv_stop(s);
    expect_healthy(&r, 0);
    assert_true(r.rec[0].r.changed);
    assert_false(r.rec[1].r.changed);
    assert_string_equal(r.rec[0].r.reason, want);

    spec.port = closed_port();
    run_t r2 = {.stop_after = 1};
    run_health(&r2, &spec);
    assert_false(r2.rec[0].r.healthy);
    assert_string_equal(r2.rec[0].r.reason, "connect: Connection refused");
}

/* ---- COMMAND ------------------------------------------------------------ */

static void test_command_exit_status(void **state)
{
    health_spec_t spec = cmd_spec("true");
    run_t r = {.stop_after = 1};
    run_health(&r, &spec);
    expect_healthy(&r, 0);
    assert_string_equal(r.rec[0].r.reason, "command exited with 0");

    spec = cmd_spec("false");
    run_t r2 = {.stop_after = 1};
    run_health(&r2, &spec);
    assert_false(r2.rec[0].r.healthy);
    assert_string_equal(r2.rec[0].r.reason, "command exited with 1");

    spec = cmd_spec("exit 7");
    run_t r3 = {.stop_after = 1};
    run_health(&r3, &spec);
    assert_string_equal(r3.rec[0].r.reason, "command exited with 7");
}

static void read_pids(const char *path, long *pids, int n)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    for (int i = 0; i < n; i++)
        assert_int_equal(fscanf(f, "%ld", &pids[i]), 1);
    fclose(f);
}

/* Gone, or a zombie waiting for init (the container's pid 1 may not reap). */
static bool pid_dead(long pid)
{
    char p[64], buf[512];
    snprintf(p, sizeof(p), "/proc/%ld/stat", pid);
    for (int i = 0; i < 200; i++) {
        FILE *f = fopen(p, "r");
        if (!f)
            return true;
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = '\0';
        char *rp = strrchr(buf, ')');
        if (rp && rp[1] == ' ' && rp[2] == 'Z')
            return true;
        sleep_ms(10);
    }
    return false;
}

/* A timed-out command and everything it started are killed, and the shell
 * is reaped before the loop lets go. */
static void test_command_timeout_kills_group(void **state)
{
    char dir[] = "/tmp/drover-health-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char pidfile[64], cmd[256];
    snprintf(pidfile, sizeof(pidfile), "%s/pids", dir);
    snprintf(cmd, sizeof(cmd), "sleep 10 & echo $! > %s; echo $$ >> %s; wait", pidfile, pidfile);
    health_spec_t spec = cmd_spec(cmd);
    spec.timeout_ms = 300;
    spec.interval_ms = 5000;
    run_t r = {.stop_after = 1};
    uint64_t elapsed = run_health(&r, &spec);
    assert_false(r.rec[0].r.healthy);
    assert_string_equal(r.rec[0].r.reason, "timed out after 300 ms");
    assert_true(elapsed < 3000);
    long pids[2];
    read_pids(pidfile, pids, 2);
    assert_true(pid_dead(pids[0])); /* the background sleep */
    errno = 0;
    assert_int_equal(kill((pid_t)pids[1], 0), -1); /* the shell: reaped */
    assert_int_equal(errno, ESRCH);
    unlink(pidfile);
    rmdir(dir);
}

/* A command that exits leaving a background process behind: the
 * leftover is killed with the group when the shell is reaped. */
static void test_command_leftovers_killed(void **state)
{
    char dir[] = "/tmp/drover-health-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char pidfile[64], cmd[256];
    snprintf(pidfile, sizeof(pidfile), "%s/pids", dir);
    snprintf(cmd, sizeof(cmd), "sleep 10 & echo $! > %s; exit 0", pidfile);
    health_spec_t spec = cmd_spec(cmd);
    run_t r = {.stop_after = 1};
    run_health(&r, &spec);
    expect_healthy(&r, 0);
    long pid;
    read_pids(pidfile, &pid, 1);
    assert_true(pid_dead(pid));
    unlink(pidfile);
    rmdir(dir);
}

/* The command gets the spec's environment (not the agent's), cwd, /dev/null
 * for output, no inherited descriptors, no blocked or ignored standard
 * signals (the test ignores SIGPIPE like the agent; glibc itself leaves its
 * two internal real-time signals ignored). The masks are read with shell
 * builtins only: a forked reader could catch the shell blocking SIGCHLD
 * around its own fork. */
static void test_command_env_cwd_stdio(void **state)
{
    char dir[] = "/tmp/drover-health-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char real[PATH_MAX];
    assert_non_null(realpath(dir, real));
    int leak = open("/dev/null", O_RDONLY); /* no O_CLOEXEC on purpose */
    assert_true(leak >= 3);
    setenv("DROVER_TEST_SECRET", "s3cret", 1);
    char cmd[PATH_MAX + 512];
    snprintf(cmd, sizeof(cmd),
             "[ \"$FOO\" = bar ] && [ -z \"$DROVER_TEST_SECRET\" ] && [ \"$(pwd -P)\" = '%s' ] && "
             "[ \"$(readlink /proc/$$/fd/1)\" = /dev/null ] && "
             "[ \"$(readlink /proc/$$/fd/2)\" = /dev/null ] && [ ! -e /proc/$$/fd/%d ] && "
             "while read -r k v; do case $k in SigBlk:) blk=$v;; SigIgn:) ign=$v;; esac; "
             "done < /proc/$$/status && [ $((0x$blk)) -eq 0 ] && "
             "[ $((0x$ign & 0x7fffffff)) -eq 0 ]",
             real, leak);
    char *envp[] = {"FOO=bar", "PATH=/usr/bin:/bin", NULL};
    health_spec_t spec = cmd_spec(cmd);
    spec.envp = envp;
    spec.cwd = dir;
    run_t r = {.stop_after = 1};
    run_health(&r, &spec);
    expect_healthy(&r, 0);

    /* Without envp: a default PATH only. */
    spec = cmd_spec("[ -z \"$DROVER_TEST_SECRET\" ] && [ -n \"$PATH\" ] && sleep 0");
    run_t r2 = {.stop_after = 1};
    run_health(&r2, &spec);
    expect_healthy(&r2, 0);

    unsetenv("DROVER_TEST_SECRET");
    close(leak);
    rmdir(dir);
}

static void test_command_spawn_failure(void **state)
{
    health_spec_t spec = cmd_spec("true");
    spec.cwd = "/nonexistent/drover-health";
    run_t r = {.stop_after = 2};
    run_health(&r, &spec);
    assert_false(r.rec[0].r.healthy);
    assert_string_equal(r.rec[0].r.reason, "spawn: No such file or directory");
    assert_int_equal(r.rec[1].r.consecutive_failures, 2);
}

/* A check longer than the interval: ticks are skipped, never overlapped. */
static void test_command_slower_than_interval(void **state)
{
    health_spec_t spec = cmd_spec("sleep 0.2");
    spec.interval_ms = 30;
    run_t r = {.stop_after = 2};
    run_health(&r, &spec);
    expect_healthy(&r, 0);
    expect_healthy(&r, 1);
    assert_true(r.rec[1].at_ms - r.rec[0].at_ms >= 190);
}

/* ---- grace and kill ----------------------------------------------------- */

static void test_grace_ignores_failures(void **state)
{
    health_spec_t spec = cmd_spec("false");
    spec.grace_ms = 400;
    spec.interval_ms = 40;
    spec.max_failures = 2;
    run_t r = {.stop_after = MAX_RESULTS, .stop_on_kill = true};
    run_health(&r, &spec);
    int in_grace = 0;
    for (int i = 0; i < r.n; i++) {
        const rec_t *x = &r.rec[i];
        assert_false(x->r.healthy);
        assert_int_equal(x->r.changed, i == 0);
        if (x->at_ms < spec.grace_ms) {
            /* measured from before health_start: surely inside the grace */
            assert_int_equal(x->r.consecutive_failures, 0);
            assert_false(x->r.kill);
            in_grace++;
        }
    }
    assert_true(in_grace >= 3);
    const rec_t *last = &r.rec[r.n - 1];
    assert_true(last->r.kill);
    assert_int_equal(last->r.consecutive_failures, 2);
    assert_true(last->at_ms >= spec.grace_ms);
    assert_int_equal(r.rec[r.n - 2].r.consecutive_failures, 1);
    assert_false(r.rec[r.n - 2].r.kill);
}

/* The first success ends the grace period early. */
static void test_success_ends_grace(void **state)
{
    int st[] = {200, 503, 503};
    srv_t *s = srv_start(SRV_STATUS, st, 3);
    health_spec_t spec = http_spec(s->port);
    spec.grace_ms = 60000;
    spec.max_failures = 2;
    run_t r = {.stop_after = 3};
    run_health(&r, &spec);
    srv_stop(s);
    expect_healthy(&r, 0);
    assert_int_equal(r.rec[1].r.consecutive_failures, 1);
    assert_false(r.rec[1].r.kill);
    assert_true(r.rec[1].r.changed);
    assert_string_equal(r.rec[1].r.reason, "HTTP 503 from /hc");
    assert_int_equal(r.rec[2].r.consecutive_failures, 2);
    assert_true(r.rec[2].r.kill);
    assert_false(r.rec[2].r.changed);
}

static void test_no_kill_without_max_failures(void **state)
{
    health_spec_t spec = cmd_spec("false");
    spec.max_failures = 0;
    run_t r = {.stop_after = 3};
    run_health(&r, &spec);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r.rec[i].r.consecutive_failures, i + 1);
        assert_false(r.rec[i].r.kill);
    }
}

/* ---- stopping ----------------------------------------------------------- */

static void test_stop_inside_callback(void **state)
{
    health_spec_t spec = cmd_spec("true");
    spec.interval_ms = 5;
    run_t r = {.stop_after = 1, .double_stop = true};
    run_health(&r, &spec);
    assert_int_equal(r.n, 1);
}

/* Stopping with a command in flight: no callback, the command killed and
 * reaped before the loop ends. */
static void test_stop_inflight_command(void **state)
{
    health_spec_t spec = cmd_spec("sleep 10");
    spec.timeout_ms = 10000;
    run_t r = {.stop_at_ms = 100};
    uint64_t elapsed = run_health(&r, &spec);
    assert_int_equal(r.n, 0);
    assert_true(elapsed < 3000);
}

static void test_stop_inflight_http(void **state)
{
    int port;
    int lfd = listen_any(&port);
    health_spec_t spec = http_spec(port);
    run_t r = {.stop_at_ms = 50};
    uint64_t elapsed = run_health(&r, &spec);
    close(lfd);
    assert_int_equal(r.n, 0);
    assert_true(elapsed < 1500);
}

/* ---- arguments ---------------------------------------------------------- */

static void expect_invalid(const health_spec_t *spec, const char *needle)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    health_t *h = NULL;
    err_t err = {0};
    run_t r = {0};
    assert_int_equal(health_start(&loop, spec, on_result, &r, &h, &err), -EINVAL);
    assert_null(h);
    if (!strstr(err.msg, needle))
        fail_msg("error \"%s\" does not mention \"%s\"", err.msg, needle);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_start_invalid(void **state)
{
    health_spec_t s = http_spec(80);
    s.host = "example.com";
    expect_invalid(&s, "not an IP address");
    s = http_spec(80);
    s.path = "/a b";
    expect_invalid(&s, "path");
    s.path = "/x\r\nEvil: 1";
    expect_invalid(&s, "path");
    s.path = "nosl";
    expect_invalid(&s, "path");
    s = http_spec(0);
    expect_invalid(&s, "port 0");
    s = http_spec(80);
    s.interval_ms = 0;
    expect_invalid(&s, "interval");
    s = cmd_spec("");
    expect_invalid(&s, "command");
    s = cmd_spec("true");
    s.max_failures = -1;
    expect_invalid(&s, "negative");
    s.protocol = (health_protocol_t)9;
    expect_invalid(&s, "protocol");
}

static void test_protocol_parse(void **state)
{
    health_protocol_t p;
    assert_int_equal(health_protocol_parse("HTTP", &p), 0);
    assert_int_equal(p, HEALTH_HTTP);
    assert_int_equal(health_protocol_parse("MESOS_HTTP", &p), 0);
    assert_int_equal(p, HEALTH_HTTP);
    assert_int_equal(health_protocol_parse("HTTPS", &p), 0);
    assert_int_equal(p, HEALTH_HTTPS);
    assert_int_equal(health_protocol_parse("MESOS_HTTPS", &p), 0);
    assert_int_equal(p, HEALTH_HTTPS);
    assert_int_equal(health_protocol_parse("TCP", &p), 0);
    assert_int_equal(p, HEALTH_TCP);
    assert_int_equal(health_protocol_parse("MESOS_TCP", &p), 0);
    assert_int_equal(p, HEALTH_TCP);
    assert_int_equal(health_protocol_parse("COMMAND", &p), 0);
    assert_int_equal(p, HEALTH_COMMAND);
    assert_int_equal(health_protocol_parse("http", &p), -EINVAL);
    assert_int_equal(health_protocol_parse("", &p), -EINVAL);
    assert_int_equal(health_protocol_parse(NULL, &p), -EINVAL);
}

int main(void)
{
    log_setup(LOG_OFF, LOG_TEXT);
    /* Like the agent: SIGPIPE ignored, a signal blocked (for a signalfd).
     * Commands must get neither. */
    signal(SIGPIPE, SIG_IGN);
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &block, NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_http_healthy_request),
        cmocka_unit_test(test_http_status_sequence),
        cmocka_unit_test(test_http_split_status_line),
        cmocka_unit_test(test_http_closes_after_status),
        cmocka_unit_test(test_http_garbage),
        cmocka_unit_test(test_http_oversized_status_line),
        cmocka_unit_test(test_http_eof_before_status),
        cmocka_unit_test(test_http_timeout),
        cmocka_unit_test(test_http_refused),
        cmocka_unit_test(test_https_noted),
        cmocka_unit_test(test_tcp),
        cmocka_unit_test(test_command_exit_status),
        cmocka_unit_test(test_command_timeout_kills_group),
        cmocka_unit_test(test_command_leftovers_killed),
        cmocka_unit_test(test_command_env_cwd_stdio),
        cmocka_unit_test(test_command_spawn_failure),
        cmocka_unit_test(test_command_slower_than_interval),
        cmocka_unit_test(test_grace_ignores_failures),
        cmocka_unit_test(test_success_ends_grace),
        cmocka_unit_test(test_no_kill_without_max_failures),
        cmocka_unit_test(test_stop_inside_callback),
        cmocka_unit_test(test_stop_inflight_command),
        cmocka_unit_test(test_stop_inflight_http),
        cmocka_unit_test(test_start_invalid),
        cmocka_unit_test(test_protocol_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
