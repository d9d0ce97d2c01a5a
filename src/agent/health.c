/* health: one instance's health checks on the agent's loop.
 *
 * A health_t owns two timers (the interval tick and the per-check timeout)
 * and at most one check in flight. A check is its own allocation holding
 * either a TCP connection (HTTP, HTTPS, TCP) or a child process watched
 * through a pidfd (COMMAND), so a check that is abandoned (timed out, or the
 * health_t stopped) can finish closing on its own while the next one starts.
 * Every open handle and every live check holds a reference on the health_t;
 * it is freed from the last close callback after health_stop. */
#include "agent/health.h"

#include "core/alloc.h"
#include "core/log.h"

#include <errno.h>
#include <fcntl.h>
#include <http_parser.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* Bound on what is read before the status line must be complete. */
#define HEALTH_READ_MAX 8192
/* Bound on the HTTP path copied into the request. */
#define HEALTH_PATH_MAX 2048

/* What a COMMAND check runs with when the spec gives no environment: the
 * agent's own environment is never handed to an instance's command. */
static char *const health_default_envp[] = {
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", NULL};

typedef struct check check_t;

struct health {
    uv_loop_t *loop;
    health_protocol_t protocol;
    char *host;
    int port;
    char *path;
    char *command;
    char *cwd;
    char **envp; /* owned copy, NULL when the spec gave none */
    char *request;
    size_t request_len;
    struct sockaddr_storage addr;
    uint64_t grace_ms;
    uint64_t interval_ms;
    uint64_t timeout_ms;
    int max_failures;
    health_cb cb;
    void *data;
    uv_timer_t tick;
    uv_timer_t timeout;
    uint64_t start_ms; /* uv_hrtime at health_start, in ms */
    check_t *inflight;
    bool stopped;
    bool reported;
    bool last_healthy;
    bool ever_healthy;
    int failures;
    int refs; /* open timers + live checks */
};

struct check {
    health_t *h;
    bool done; /* result given (or abandoned): callbacks only clean up */
    bool handle_open;
    /* HTTP, HTTPS, TCP */
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_write_t write;
    http_parser parser;
    bool status_seen;
    size_t nread;
    char rbuf[HEALTH_READ_MAX];
    /* COMMAND */
    pid_t pid;
    int pidfd;
    bool reaped;
    uv_poll_t poll;
};

static void health_report(health_t *h, bool ok, const char *reason);
static void check_release(check_t *c);
static void on_timeout(uv_timer_t *t);

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000u;
}

static void health_free(health_t *h)
{
    free(h->host);
    free(h->path);
    free(h->command);
    free(h->cwd);
    if (h->envp) {
        for (char **e = h->envp; *e; e++)
            free(*e);
        free(h->envp);
    }
    free(h->request);
    free(h);
}

/* The last reference (a timer's or a check's close callback) frees the
 * health_t, so nothing ever frees it from inside its own callback. */
static void health_unref(health_t *h)
{
    if (--h->refs == 0 && h->stopped)
        health_free(h);
}

static void check_free(check_t *c)
{
    health_t *h = c->h;
    free(c);
    health_unref(h);
}

/* A check delivers its result once: the first of (its own completion, the
 * timeout) wins; whatever arrives later only finishes the cleanup. */
static void check_finish(check_t *c, bool ok, const char *reason)
{
    if (c->done)
        return;
    c->done = true;
    health_t *h = c->h;
    h->inflight = NULL;
    uv_timer_stop(&h->timeout);
    /* h outlives the release: its timers are open (it is not stopped, or
     * this check would have been abandoned and marked done). */
    check_release(c);
    health_report(h, ok, reason);
}

/* ---- HTTP and TCP ------------------------------------------------------- */

static void net_closed(uv_handle_t *handle)
{
    check_free(handle->data);
}

static int http_on_header_field(http_parser *p, const char *at, size_t n)
{
    check_t *c = p->data;
    c->status_seen = true;
    return 1; /* stop the parser: nothing after the status line is read */
}

static int http_on_headers_complete(http_parser *p)
{
    check_t *c = p->data;
    c->status_seen = true;
    http_parser_pause(p, 1);
    return 0;
}

/* The status line is complete once the parser reaches the first header
 * (or the end of an empty header block). */
static const http_parser_settings http_settings = {
    .on_header_field = http_on_header_field,
    .on_headers_complete = http_on_headers_complete,
};

static void net_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    check_t *c = handle->data;
    /* Every read lands in the same bounded buffer: the parser keeps what it
     * needs, and the total read is capped at HEALTH_READ_MAX. */
    buf->base = c->rbuf;
    buf->len = HEALTH_READ_MAX - c->nread;
}

static void http_status_reason(check_t *c, char *reason, size_t n, bool *ok)
{
    health_t *h = c->h;
    unsigned code = c->parser.status_code;
    *ok = code >= 200 && code <= 399;
    const char *tls =
        h->protocol == HEALTH_HTTPS ? " (HTTPS checked as plain HTTP: no TLS yet)" : "";
    if (*ok)
        snprintf(reason, n, "HTTP %u%s", code, tls);
    else
        snprintf(reason, n, "HTTP %u from %s%s", code, h->path, tls);
}

static void net_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    check_t *c = s->data;
    char reason[256];
    if (c->done || nread == 0)
        return;
    if (nread == UV_EOF) {
        check_finish(c, false, "HTTP: connection closed before the status line");
        return;
    }
    if (nread < 0) {
        snprintf(reason, sizeof(reason), "read: %s", strerror((int)-nread));
        check_finish(c, false, reason);
        return;
    }
    c->nread += (size_t)nread;
    http_parser_execute(&c->parser, &http_settings, buf->base, (size_t)nread);
    if (c->status_seen) {
        bool ok;
        http_status_reason(c, reason, sizeof(reason), &ok);
        check_finish(c, ok, reason);
        return;
    }
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (e != HPE_OK) {
        snprintf(reason, sizeof(reason), "HTTP: bad response: %s", http_errno_description(e));
        check_finish(c, false, reason);
    } else if (c->nread >= HEALTH_READ_MAX) {
        snprintf(reason, sizeof(reason), "HTTP: no status line in the first %d bytes",
                 HEALTH_READ_MAX);
        check_finish(c, false, reason);
    }
}

static void net_written(uv_write_t *req, int status)
{
    check_t *c = req->data;
    if (status < 0 && !c->done) {
        char reason[256];
        snprintf(reason, sizeof(reason), "write: %s", strerror(-status));
        check_finish(c, false, reason);
    }
}

static void net_connected(uv_connect_t *req, int status)
{
    check_t *c = req->data;
    health_t *h = c->h;
    char reason[256];
    if (c->done)
        return;
    if (status < 0) {
        snprintf(reason, sizeof(reason), "connect: %s", strerror(-status));
        check_finish(c, false, reason);
        return;
    }
    if (h->protocol == HEALTH_TCP) {
        snprintf(reason, sizeof(reason), "connected to %s:%d", h->host, h->port);
        check_finish(c, true, reason);
        return;
    }
    http_parser_init(&c->parser, HTTP_RESPONSE);
    c->parser.data = c;
    uv_buf_t b = uv_buf_init(h->request, (unsigned)h->request_len);
    c->write.data = c;
    int rc = uv_write(&c->write, (uv_stream_t *)&c->tcp, &b, 1, net_written);
    if (rc == 0)
        rc = uv_read_start((uv_stream_t *)&c->tcp, net_alloc, net_read);
    if (rc < 0) {
        snprintf(reason, sizeof(reason), "write: %s", strerror(-rc));
        check_finish(c, false, reason);
    }
}

static int net_start(check_t *c, char *reason, size_t n)
{
    health_t *h = c->h;
    int rc = uv_tcp_init(h->loop, &c->tcp);
    if (rc < 0) {
        snprintf(reason, n, "socket: %s", strerror(-rc));
        return rc;
    }
    c->handle_open = true;
    c->tcp.data = c;
    c->connect.data = c;
    rc = uv_tcp_connect(&c->connect, &c->tcp, (const struct sockaddr *)&h->addr, net_connected);
    if (rc < 0)
        snprintf(reason, n, "connect: %s", strerror(-rc));
    return rc;
}

/* ---- COMMAND ------------------------------------------------------------ */

static void cmd_closed(uv_handle_t *handle)
{
    check_t *c = handle->data;
    close(c->pidfd);
    check_free(c);
}

static void cmd_close(check_t *c)
{
    if (!uv_is_closing((uv_handle_t *)&c->poll))
        uv_close((uv_handle_t *)&c->poll, cmd_closed);
}

/* Kill the command's process group, but only while our child (running,
 * or a zombie not yet reaped) still pins the group id: had something else
 * in the agent reaped it (waitpid(-1)), the id could belong to another
 * process group by now. */
static void cmd_kill_group(check_t *c)
{
    siginfo_t si;
    memset(&si, 0, sizeof(si));
    if (waitid(P_PIDFD, (id_t)c->pidfd, &si, WEXITED | WNOHANG | WNOWAIT) == 0)
        kill(-c->pid, SIGKILL);
}

/* The pidfd turns readable when the shell exits. Its process group is
 * killed before the reap: a check must not leave background processes
 * behind. */
static void cmd_exited(uv_poll_t *p, int status, int events)
{
    check_t *c = p->data;
    int ws = 0;
    cmd_kill_group(c);
    pid_t r = waitpid(c->pid, &ws, WNOHANG);
    if (r == 0)
        return; /* not exited yet (spurious wakeup): keep watching */
    c->reaped = true;
    uv_poll_stop(p);
    if (c->done) {
        cmd_close(c);
        return;
    }
    char reason[256];
    bool ok = false;
    if (r < 0)
        snprintf(reason, sizeof(reason), "command status lost: %s", strerror(errno));
    else if (WIFEXITED(ws)) {
        ok = WEXITSTATUS(ws) == 0;
        snprintf(reason, sizeof(reason), "command exited with %d", WEXITSTATUS(ws));
    } else if (WIFSIGNALED(ws))
        snprintf(reason, sizeof(reason), "command killed by signal %d", WTERMSIG(ws));
    else
        snprintf(reason, sizeof(reason), "command ended with status 0x%x", (unsigned)ws);
    check_finish(c, ok, reason);
}

/* posix_spawn (vfork-like in glibc) rather than uv_spawn, which forks the
 * whole agent. The child gets its own process group so a timeout kills
 * everything it started, /dev/null for stdio, no inherited descriptors,
 * default signal dispositions and an empty mask whatever the agent set. */
static int cmd_start(check_t *c, char *reason, size_t n)
{
    health_t *h = c->h;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    sigset_t mask, def;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    if (h->cwd)
        posix_spawn_file_actions_addchdir_np(&fa, h->cwd);
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    posix_spawnattr_init(&at);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                      POSIX_SPAWN_SETSIGDEF);
    posix_spawnattr_setpgroup(&at, 0);
    sigemptyset(&mask);
    posix_spawnattr_setsigmask(&at, &mask);
    sigfillset(&def);
    posix_spawnattr_setsigdefault(&at, &def);
    char *argv[] = {"sh", "-c", h->command, NULL};
    char *const *envp = h->envp ? h->envp : health_default_envp;
    int rc = posix_spawn(&c->pid, "/bin/sh", &fa, &at, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    if (rc != 0) {
        snprintf(reason, n, "spawn: %s", strerror(rc));
        return -rc;
    }
    c->pidfd = (int)syscall(SYS_pidfd_open, c->pid, 0);
    if (c->pidfd < 0) {
        /* Cannot watch it without blocking: kill it now. The reap is quick
         * after SIGKILL. */
        rc = -errno;
        kill(-c->pid, SIGKILL);
        waitpid(c->pid, NULL, 0);
        snprintf(reason, n, "pidfd_open: %s", strerror(-rc));
        return rc;
    }
    rc = uv_poll_init(h->loop, &c->poll, c->pidfd);
    if (rc < 0) {
        kill(-c->pid, SIGKILL);
        waitpid(c->pid, NULL, 0);
        close(c->pidfd);
        snprintf(reason, n, "poll: %s", strerror(-rc));
        return rc;
    }
    c->handle_open = true;
    c->poll.data = c;
    rc = uv_poll_start(&c->poll, UV_READABLE, cmd_exited);
    if (rc < 0) {
        kill(-c->pid, SIGKILL);
        waitpid(c->pid, NULL, 0);
        c->reaped = true;
        snprintf(reason, n, "poll: %s", strerror(-rc));
    }
    return rc;
}

/* ---- check lifecycle ---------------------------------------------------- */

/* Close what a check holds; it is freed from the close callback. A command
 * still running is killed and stays watched until reaped, so no zombie is
 * left. */
static void check_release(check_t *c)
{
    if (!c->handle_open) {
        check_free(c);
        return;
    }
    if (c->h->protocol == HEALTH_COMMAND) {
        if (c->reaped)
            cmd_close(c);
        else
            cmd_kill_group(c);
        return;
    }
    if (!uv_is_closing((uv_handle_t *)&c->tcp))
        uv_close((uv_handle_t *)&c->tcp, net_closed);
}

static void check_start(health_t *h)
{
    check_t *c = xcalloc(1, sizeof(*c));
    c->h = h;
    c->pidfd = -1;
    h->refs++;
    h->inflight = c;
    uv_timer_start(&h->timeout, on_timeout, h->timeout_ms, 0);
    char reason[256];
    int rc = h->protocol == HEALTH_COMMAND ? cmd_start(c, reason, sizeof(reason))
                                           : net_start(c, reason, sizeof(reason));
    if (rc < 0)
        check_finish(c, false, reason);
}

static void on_timeout(uv_timer_t *t)
{
    health_t *h = t->data;
    if (!h->inflight)
        return;
    char reason[256];
    snprintf(reason, sizeof(reason), "timed out after %llu ms", (unsigned long long)h->timeout_ms);
    check_finish(h->inflight, false, reason);
}

/* One check per interval; a tick that finds the previous check still
 * running (timeout longer than interval) is skipped. */
static void on_tick(uv_timer_t *t)
{
    health_t *h = t->data;
    if (h->inflight) {
        log_debug("health", "check of %s still running, tick skipped",
                  h->command ? h->command : h->host);
        return;
    }
    check_start(h);
}

/* Marathon's rules: a failure counts unless it falls in the grace period
 * before the first success; kill is asked for on every counted failure at
 * or past max_failures. */
static void health_report(health_t *h, bool ok, const char *reason)
{
    health_result_t r;
    memset(&r, 0, sizeof(r));
    if (ok) {
        h->failures = 0;
        h->ever_healthy = true;
    } else if (h->ever_healthy || now_ms() - h->start_ms >= h->grace_ms) {
        h->failures++;
    }
    r.healthy = ok;
    r.changed = !h->reported || h->last_healthy != ok;
    r.kill = !ok && h->max_failures > 0 && h->failures >= h->max_failures;
    r.consecutive_failures = h->failures;
    snprintf(r.reason, sizeof(r.reason), "%s", reason);
    h->reported = true;
    h->last_healthy = ok;
    if (r.changed)
        log_debug("health", "%s: %s", ok ? "healthy" : "unhealthy", r.reason);
    h->cb(h, &r, h->data);
}

/* ---- public API --------------------------------------------------------- */

static void timer_closed(uv_handle_t *handle)
{
    health_unref(handle->data);
}

/* The path goes verbatim into the request line: no spaces or control bytes
 * (a CR/LF would let a spec inject headers). */
static int path_valid(const char *p)
{
    size_t n = strlen(p);
    if (p[0] != '/' || n > HEALTH_PATH_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch <= 0x20 || ch == 0x7f)
            return 0;
    }
    return 1;
}

static int health_copy_spec(health_t *h, const health_spec_t *spec, err_t *err)
{
    if ((unsigned)spec->protocol > HEALTH_COMMAND)
        return err_set(err, -EINVAL, "health check: unknown protocol %d", (int)spec->protocol);
    if (spec->interval_ms == 0 || spec->timeout_ms == 0)
        return err_set(err, -EINVAL, "health check: interval and timeout must be > 0");
    if (spec->max_failures < 0)
        return err_set(err, -EINVAL, "health check: maxConsecutiveFailures %d is negative",
                       spec->max_failures);
    h->protocol = spec->protocol;
    h->grace_ms = spec->grace_ms;
    h->interval_ms = spec->interval_ms;
    h->timeout_ms = spec->timeout_ms;
    h->max_failures = spec->max_failures;
    if (spec->protocol == HEALTH_COMMAND) {
        if (!spec->command || !*spec->command)
            return err_set(err, -EINVAL, "health check: COMMAND without a command");
        h->command = xstrdup(spec->command);
        if (spec->cwd)
            h->cwd = xstrdup(spec->cwd);
        if (spec->envp) {
            size_t n = 0;
            while (spec->envp[n])
                n++;
            h->envp = xcalloc(n + 1, sizeof(char *));
            for (size_t i = 0; i < n; i++)
                h->envp[i] = xstrdup(spec->envp[i]);
        }
        return 0;
    }
    if (!spec->host)
        return err_set(err, -EINVAL, "health check: no host");
    if (spec->port < 1 || spec->port > 65535)
        return err_set(err, -EINVAL, "health check: port %d out of range", spec->port);
    bool v6 = false;
    if (uv_ip4_addr(spec->host, spec->port, (struct sockaddr_in *)&h->addr) != 0) {
        if (uv_ip6_addr(spec->host, spec->port, (struct sockaddr_in6 *)&h->addr) != 0)
            return err_set(err, -EINVAL, "health check: host \"%s\" is not an IP address",
                           spec->host);
        v6 = true;
    }
    h->host = xstrdup(spec->host);
    h->port = spec->port;
    if (spec->protocol == HEALTH_TCP)
        return 0;
    const char *path = spec->path && *spec->path ? spec->path : "/";
    if (!path_valid(path))
        return err_set(err, -EINVAL,
                       "health check: path must start with / and hold no spaces or control "
                       "characters (at most %d bytes)",
                       HEALTH_PATH_MAX);
    h->path = xstrdup(path);
    h->request = xasprintf("GET %s HTTP/1.1\r\nHost: %s%s%s:%d\r\nUser-Agent: drover-health\r\n"
                           "Connection: close\r\n\r\n",
                           path, v6 ? "[" : "", spec->host, v6 ? "]" : "", spec->port);
    h->request_len = strlen(h->request);
    return 0;
}

int health_start(uv_loop_t *loop, const health_spec_t *spec, health_cb cb, void *data,
                 health_t **out, err_t *err)
{
    if (!loop || !spec || !cb || !out)
        return err_set(err, -EINVAL, "health_start: missing argument");
    health_t *h = xcalloc(1, sizeof(*h));
    int rc = health_copy_spec(h, spec, err);
    if (rc < 0) {
        health_free(h);
        return rc;
    }
    h->loop = loop;
    h->cb = cb;
    h->data = data;
    h->start_ms = now_ms();
    uv_timer_init(loop, &h->tick);
    uv_timer_init(loop, &h->timeout);
    h->tick.data = h;
    h->timeout.data = h;
    h->refs = 2;
    /* First check on the next loop iteration (never from inside
     * health_start), then every interval. */
    uv_timer_start(&h->tick, on_tick, 0, h->interval_ms);
    *out = h;
    return 0;
}

void health_stop(health_t *h)
{
    if (!h || h->stopped)
        return;
    h->stopped = true;
    if (h->inflight) {
        check_t *c = h->inflight;
        c->done = true;
        h->inflight = NULL;
        check_release(c);
    }
    uv_close((uv_handle_t *)&h->tick, timer_closed);
    uv_close((uv_handle_t *)&h->timeout, timer_closed);
}

int health_protocol_parse(const char *s, health_protocol_t *out)
{
    static const struct {
        const char *name;
        health_protocol_t p;
    } names[] = {
        {"HTTP", HEALTH_HTTP},         {"MESOS_HTTP", HEALTH_HTTP}, {"HTTPS", HEALTH_HTTPS},
        {"MESOS_HTTPS", HEALTH_HTTPS}, {"TCP", HEALTH_TCP},         {"MESOS_TCP", HEALTH_TCP},
        {"COMMAND", HEALTH_COMMAND},
    };
    if (!s)
        return -EINVAL;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcmp(s, names[i].name) == 0) {
            *out = names[i].p;
            return 0;
        }
    }
    return -EINVAL;
}
