/* drover-shim: the monitor that sits between the node agent and one app.
 *
 *   drover-shim --dir DIR [--cwd CWD] --log-max BYTES --log-keep K
 *               [--cgroup /sys/fs/cgroup/CTRL/drover/ID]... [--harden] [--ready-fd N]
 *               [--hold-fd M] -- ARGV...
 *
 * The agent starts it in a session of its own with its environment set to
 * the app's. It forks the app, owns the app's stdout/stderr pipes, writes
 * them to size-bounded rotated logs in DIR and, when the app ends, records
 * how in DIR/exit.json (atomically) and exits. Because the shim and not the
 * agent is the app's parent, an agent that dies (or is upgraded) leaves its
 * instances running and the next agent learns from DIR how each one ended.
 *
 * Files in DIR: shim.pid, app.pid, stdout.log[.N], stderr.log[.N], exit.json
 * {exit_code, signal, oom, start_failed, ended_at_ms, reason, log_dropped}.
 *
 * With --ready-fd N, the app's pid is also written ("PID\n") to descriptor N
 * (a pipe from the agent) as soon as app.pid is, and N is closed: the agent
 * learns the instance runs without polling app.pid.
 *
 * With --hold-fd M, the forked app side does everything up to the exec
 * (cgroups joined, stdio, namespaces) and then waits for one byte on M
 * before it execs: a parked, pre-contained process the agent releases the
 * moment it needs one (a worker app's cold start). The first move into a
 * cgroup costs the kernel an RCU grace period (10-25 ms, cgroup v1 and v2
 * alike), which parking takes off the critical path without letting the
 * app run, even briefly, outside its limits. EOF on M instead of a byte
 * ends the parked process without running anything ("released").
 *
 * The shim is a separate binary linked against libc only and keeps no large
 * buffers, so one per instance costs little memory (about 100 KB private).
 * It never blocks the app: it reads the pipes as fast as they fill and, when
 * the disk refuses a write, drops the bytes and counts them. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SHIM_MAX_CGROUPS 8
#define SHIM_MAX_KEEP    100
#define SHIM_CHUNK       16384 /* bytes per read(2); on the stack */
#define SHIM_DRAIN_MS    1000  /* how long descendants may keep the pipes open */

/* What the app child reports through the CLOEXEC pipe when it cannot get as
 * far as running the command. */
enum {
    SHIM_FAIL_EXEC = 1,
    SHIM_FAIL_CHDIR = 2,
    SHIM_FAIL_STDIO = 3,
    SHIM_FAIL_RELEASED = 4,
    SHIM_FAIL_CGROUP = 100, /* + index of the cgroup */
};

typedef struct shim_fail {
    int stage;
    int errnum;
} shim_fail_t;

typedef struct shim_opts {
    const char *dir;
    const char *cwd; /* NULL: the app runs in dir */
    unsigned long long log_max;
    int log_keep;
    const char *cgroups[SHIM_MAX_CGROUPS];
    int ncgroups;
    bool harden;
    int ready_fd; /* -1: none */
    int hold_fd;  /* -1: none */
    char **argv;
} shim_opts_t;

typedef struct shim_log {
    const char *name; /* "stdout.log", relative to dir (the shim's cwd) */
    int fd;           /* -1 while the file cannot be opened */
    int pipe;         /* read end of the app's pipe; -1 after EOF */
    unsigned long long size;
    unsigned long long dropped_now; /* dropped since the last successful write */
} shim_log_t;

typedef struct shim_exit {
    int exit_code;
    int sig;
    bool oom;
    bool start_failed;
    long long ended_at_ms;
    char reason[256];
} shim_exit_t;

static unsigned long long shim_dropped_total;

static void shim_usage(void)
{
    static const char msg[] = "usage: drover-shim --dir DIR [--cwd DIR] --log-max BYTES "
                              "--log-keep K [--cgroup PATH]... [--harden] [--ready-fd N] "
                              "[--hold-fd M] -- ARGV...\n";
    if (write(STDERR_FILENO, msg, sizeof(msg) - 1) < 0) {
        /* nothing left to tell */
    }
    _exit(2);
}

static bool shim_parse_ull(const char *s, unsigned long long max, unsigned long long *out)
{
    if (!s || !*s || *s == '-' || *s == '+')
        return false;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v > max)
        return false;
    *out = v;
    return true;
}

static void shim_parse_args(int argc, char **argv, shim_opts_t *o)
{
    o->log_max = 10ull << 20;
    o->log_keep = 3;
    o->ready_fd = -1;
    o->hold_fd = -1;
    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        unsigned long long n;
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        } else if (strcmp(a, "--harden") == 0) {
            o->harden = true;
            continue;
        }
        if (!v)
            shim_usage();
        if (strcmp(a, "--dir") == 0) {
            o->dir = v;
        } else if (strcmp(a, "--cwd") == 0) {
            o->cwd = v;
        } else if (strcmp(a, "--log-max") == 0) {
            if (!shim_parse_ull(v, 1ull << 50, &n) || n == 0)
                shim_usage();
            o->log_max = n;
        } else if (strcmp(a, "--log-keep") == 0) {
            if (!shim_parse_ull(v, SHIM_MAX_KEEP, &n))
                shim_usage();
            o->log_keep = (int)n;
        } else if (strcmp(a, "--ready-fd") == 0) {
            if (!shim_parse_ull(v, 1024, &n) || n < 3)
                shim_usage();
            o->ready_fd = (int)n;
        } else if (strcmp(a, "--hold-fd") == 0) {
            if (!shim_parse_ull(v, 1024, &n) || n < 3)
                shim_usage();
            o->hold_fd = (int)n;
        } else if (strcmp(a, "--cgroup") == 0) {
            if (o->ncgroups == SHIM_MAX_CGROUPS)
                shim_usage();
            o->cgroups[o->ncgroups++] = v;
        } else {
            shim_usage();
        }
        i++;
    }
    if (!o->dir || i >= argc || (o->hold_fd >= 0 && o->hold_fd == o->ready_fd))
        shim_usage();
    o->argv = &argv[i];
}

static long long shim_now_ms(clockid_t clk)
{
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool shim_write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* tmp + rename so a reader (the agent, now or after a restart) sees either
 * no file or the whole of it; `durable` adds the fsyncs that make the
 * record survive a machine crash, which only exit.json needs. */
static int shim_write_atomic(const char *name, const char *data, size_t n, bool durable)
{
    char tmp[64];
    snprintf(tmp, sizeof(tmp), "%s.tmp", name);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    bool ok = shim_write_all(fd, data, n) && (!durable || fsync(fd) == 0);
    int e = errno;
    close(fd);
    if (!ok || rename(tmp, name) != 0) {
        e = ok ? errno : e;
        unlink(tmp);
        return -e;
    }
    if (durable) {
        int dfd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    }
    return 0;
}

static int shim_write_pid(const char *name, pid_t pid)
{
    char b[32];
    int n = snprintf(b, sizeof(b), "%d\n", (int)pid);
    return shim_write_atomic(name, b, (size_t)n, false);
}

static void shim_log_open(shim_log_t *l)
{
    if (l->fd >= 0)
        return;
    l->fd = open(l->name, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (l->fd < 0)
        return;
    struct stat st;
    l->size = fstat(l->fd, &st) == 0 ? (unsigned long long)st.st_size : 0;
}

/* Rotated files: NAME.1 is the newest; the oldest beyond keep is dropped
 * by being renamed over. */
static void shim_log_rotate(shim_log_t *l, int keep)
{
    char from[64], to[64];
    if (l->fd >= 0)
        close(l->fd);
    l->fd = -1;
    if (keep == 0) {
        unlink(l->name);
    } else {
        for (int i = keep - 1; i >= 1; i--) {
            snprintf(from, sizeof(from), "%s.%d", l->name, i);
            snprintf(to, sizeof(to), "%s.%d", l->name, i + 1);
            rename(from, to);
        }
        snprintf(to, sizeof(to), "%s.1", l->name);
        rename(l->name, to);
    }
    l->size = 0;
    shim_log_open(l); /* the current file always exists, if only empty */
}

static void shim_log_drop(shim_log_t *l, size_t n)
{
    l->dropped_now += n;
    shim_dropped_total += n;
}

/* Append bytes to the log, never letting the file pass log_max: a chunk
 * that would is cut at its last newline that fits, a line that does not fit
 * starts the next file, and only a line longer than log_max is cut. A failed
 * write drops the data instead of retrying, so a full disk slows nothing. */
static void shim_log_write(shim_log_t *l, const shim_opts_t *o, const char *p, size_t n)
{
    while (n > 0) {
        shim_log_open(l);
        if (l->fd < 0) {
            shim_log_drop(l, n);
            return;
        }
        if (l->size >= o->log_max) {
            shim_log_rotate(l, o->log_keep);
            continue;
        }
        if (l->dropped_now) {
            char note[96];
            int k = snprintf(note, sizeof(note), "[drover-shim: %llu bytes of output dropped]\n",
                             l->dropped_now);
            if (l->size + (unsigned long long)k <= o->log_max &&
                shim_write_all(l->fd, note, (size_t)k)) {
                l->size += (unsigned long long)k;
                l->dropped_now = 0;
            }
        }
        unsigned long long room = o->log_max > l->size ? o->log_max - l->size : 0;
        size_t take = n;
        if ((unsigned long long)take > room) {
            take = (size_t)room;
            const char *nl = memrchr(p, '\n', take);
            if (nl) {
                take = (size_t)(nl - p) + 1;
            } else if (l->size > 0) {
                shim_log_rotate(l, o->log_keep); /* start the line in a fresh file */
                continue;
            }
        }
        ssize_t w = write(l->fd, p, take);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            shim_log_drop(l, n);
            return;
        }
        l->size += (unsigned long long)w;
        p += w;
        n -= (size_t)w;
        if (l->size >= o->log_max)
            shim_log_rotate(l, o->log_keep);
    }
}

/* The shim's own complaints go where the user looks: the app's stderr log. */
static void shim_complain(shim_log_t *err_log, const shim_opts_t *o, const char *what, int e)
{
    char b[512];
    int n = snprintf(b, sizeof(b), "drover-shim: %s: %s\n", what, strerror(e));
    if (n > 0)
        shim_log_write(err_log, o, b, (size_t)n < sizeof(b) ? (size_t)n : sizeof(b) - 1);
}

/* One read per readiness: the app is never held up by more than the time
 * to copy a chunk to the page cache. Returns false at EOF. */
static bool shim_pump(shim_log_t *l, const shim_opts_t *o)
{
    char chunk[SHIM_CHUNK];
    ssize_t r = read(l->pipe, chunk, sizeof(chunk));
    if (r > 0) {
        shim_log_write(l, o, chunk, (size_t)r);
        return true;
    }
    if (r < 0 && (errno == EINTR || errno == EAGAIN))
        return true;
    close(l->pipe);
    l->pipe = -1;
    return false;
}

static bool shim_read_small(const char *path, char *b, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t r = read(fd, b, cap - 1);
    close(fd);
    if (r < 0)
        return false;
    b[r] = '\0';
    return true;
}

/* The v1 memory controller counts OOM kills per cgroup; any kill in the
 * instance's cgroup means the app (or one of its processes) ran out of its
 * memory limit, whatever the exit status says. */
static bool shim_oom(const shim_opts_t *o, long long *limit_mib)
{
    char path[PATH_MAX], b[512];
    for (int i = 0; i < o->ncgroups; i++) {
        snprintf(path, sizeof(path), "%s/memory.oom_control", o->cgroups[i]);
        if (!shim_read_small(path, b, sizeof(b)))
            continue;
        const char *k = strstr(b, "oom_kill ");
        if (!k || strtoll(k + 9, NULL, 10) <= 0)
            return false;
        *limit_mib = 0;
        snprintf(path, sizeof(path), "%s/memory.limit_in_bytes", o->cgroups[i]);
        if (shim_read_small(path, b, sizeof(b))) {
            unsigned long long lim = strtoull(b, NULL, 10);
            if (lim > 0 && lim < (1ull << 50))
                *limit_mib = (long long)(lim >> 20);
        }
        return true;
    }
    return false;
}

static void shim_describe_status(shim_exit_t *x, int status, const shim_opts_t *o)
{
    long long limit_mib = 0;
    if (WIFEXITED(status)) {
        x->exit_code = WEXITSTATUS(status);
        snprintf(x->reason, sizeof(x->reason), "exited with status %d", x->exit_code);
    } else {
        x->exit_code = -1;
        x->sig = WTERMSIG(status);
        const char *name = strsignal(x->sig);
        snprintf(x->reason, sizeof(x->reason), "killed by signal %d (%s)", x->sig,
                 name ? name : "unknown");
    }
    if (shim_oom(o, &limit_mib)) {
        x->oom = true;
        if (limit_mib > 0)
            snprintf(x->reason, sizeof(x->reason), "out of memory (limit %lld MiB)", limit_mib);
        else
            snprintf(x->reason, sizeof(x->reason), "out of memory");
    }
}

static void shim_describe_failure(shim_exit_t *x, const shim_fail_t *f, const shim_opts_t *o)
{
    x->start_failed = true;
    x->exit_code = 127;
    const char *e = strerror(f->errnum);
    if (f->stage >= SHIM_FAIL_CGROUP && f->stage - SHIM_FAIL_CGROUP < o->ncgroups)
        snprintf(x->reason, sizeof(x->reason), "failed to start: joining cgroup %s: %s",
                 o->cgroups[f->stage - SHIM_FAIL_CGROUP], e);
    else if (f->stage == SHIM_FAIL_CHDIR)
        snprintf(x->reason, sizeof(x->reason), "failed to start: chdir %s: %s",
                 o->cwd ? o->cwd : o->dir, e);
    else if (f->stage == SHIM_FAIL_STDIO)
        snprintf(x->reason, sizeof(x->reason), "failed to start: redirecting stdio: %s", e);
    else if (f->stage == SHIM_FAIL_RELEASED)
        snprintf(x->reason, sizeof(x->reason), "released before it started");
    else
        snprintf(x->reason, sizeof(x->reason), "failed to start: %s: %s", o->argv[0], e);
}

/* JSON string body: control characters, quotes and backslashes escaped;
 * bytes outside ASCII become '?' so the record always parses (the reason
 * may hold an argv[0] in any encoding). */
static size_t shim_json_escape(char *out, size_t cap, const char *s)
{
    size_t n = 0;
    for (; *s && n + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[n++] = '\\';
            out[n++] = (char)c;
        } else if (c < 0x20) {
            n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
        } else {
            out[n++] = c < 0x80 ? (char)c : '?';
        }
    }
    out[n] = '\0';
    return n;
}

static int shim_write_exit(const shim_exit_t *x)
{
    char reason[sizeof(x->reason) * 6 + 8];
    char b[sizeof(reason) + 256];
    shim_json_escape(reason, sizeof(reason), x->reason);
    int n =
        snprintf(b, sizeof(b),
                 "{\"exit_code\":%d,\"signal\":%d,\"oom\":%s,\"start_failed\":%s,"
                 "\"ended_at_ms\":%lld,\"reason\":\"%s\",\"log_dropped\":%llu}\n",
                 x->exit_code, x->sig, x->oom ? "true" : "false",
                 x->start_failed ? "true" : "false", x->ended_at_ms, reason, shim_dropped_total);
    return shim_write_atomic("exit.json", b, (size_t)n, true);
}

static void shim_child_fail(int fd, int stage, int errnum)
{
    shim_fail_t f = {stage, errnum};
    if (write(fd, &f, sizeof(f)) < 0) {
        /* the shim then sees a bare exit 127 */
    }
    _exit(127);
}

static bool shim_join_cgroup(const char *cg)
{
    char path[PATH_MAX], b[32];
    snprintf(path, sizeof(path), "%s/cgroup.procs", cg);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    int n = snprintf(b, sizeof(b), "%d\n", (int)getpid());
    bool ok = write(fd, b, (size_t)n) == n;
    int e = errno;
    close(fd);
    errno = e;
    return ok;
}

/* Namespaces the kernel lets us have; none of them is essential, so a
 * refusal (no privilege, a kernel built without them) is not an error.
 * No pid namespace: its first process is an init that ignores signals it
 * has no handler for, so the agent's SIGTERM would no longer stop a plain
 * app; doing it right takes a forwarding init, a second process per
 * instance. */
static void shim_child_harden(void)
{
    static const int flags[] = {CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUTS};
    if (unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS) == 0) {
        mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
    } else {
        for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
            if (unshare(flags[i]) == 0 && flags[i] == CLONE_NEWNS)
                mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
    }
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
}

/* The forked app side. Joins the cgroups first so that nothing it starts
 * can escape them, takes its own process group (the agent signals the
 * group), and reports any failure up to the exec through fail_fd, which
 * closes by itself when exec succeeds. */
static void shim_child(const shim_opts_t *o, int out_w, int err_w, int fail_fd)
{
    for (int i = 0; i < o->ncgroups; i++)
        if (!shim_join_cgroup(o->cgroups[i]))
            shim_child_fail(fail_fd, SHIM_FAIL_CGROUP + i, errno);
    setpgid(0, 0);
    if (o->cwd && chdir(o->cwd) != 0)
        shim_child_fail(fail_fd, SHIM_FAIL_CHDIR, errno);
    int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null_fd < 0 || dup2(null_fd, STDIN_FILENO) < 0 || dup2(out_w, STDOUT_FILENO) < 0 ||
        dup2(err_w, STDERR_FILENO) < 0)
        shim_child_fail(fail_fd, SHIM_FAIL_STDIO, errno);
    if (o->harden)
        shim_child_harden();
    if (o->hold_fd >= 0) {
        char go;
        ssize_t r;
        while ((r = read(o->hold_fd, &go, 1)) < 0 && errno == EINTR) {
        }
        if (r != 1)
            shim_child_fail(fail_fd, SHIM_FAIL_RELEASED, 0);
        close(o->hold_fd);
    }
    /* Undo the shim's own signal setup; a signal that arrived while it was
     * blocked is delivered now and ends the child before the exec. */
    signal(SIGPIPE, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execvp(o->argv[0], o->argv);
    shim_child_fail(fail_fd, SHIM_FAIL_EXEC, errno);
}

static void shim_finish(const shim_exit_t *x, shim_log_t *err_log, const shim_opts_t *o)
{
    int rc = shim_write_exit(x);
    if (rc < 0)
        shim_complain(err_log, o, "writing exit.json", -rc);
    exit(rc < 0 ? 1 : 0);
}

/* Read both pipes until the app is gone and they are drained, or until
 * SHIM_DRAIN_MS after the app died if descendants hold them open. The
 * pidfd says when the app died without a SIGCHLD handler; kernels without
 * pidfd fall back to polling waitpid. */
static int shim_monitor(pid_t child, shim_log_t logs[2], const shim_opts_t *o, long long *ended)
{
    int pidfd = (int)syscall(SYS_pidfd_open, child, 0);
    int status = 0;
    bool exited = false;
    long long deadline = 0;
    for (;;) {
        struct pollfd pfd[3];
        shim_log_t *who[3];
        nfds_t n = 0;
        for (int i = 0; i < 2; i++)
            if (logs[i].pipe >= 0) {
                pfd[n] = (struct pollfd){.fd = logs[i].pipe, .events = POLLIN};
                who[n++] = &logs[i];
            }
        if (exited && n == 0)
            break;
        int timeout = -1;
        if (exited) {
            long long left = deadline - shim_now_ms(CLOCK_MONOTONIC);
            if (left <= 0)
                break;
            timeout = (int)left;
        } else if (pidfd >= 0) {
            pfd[n] = (struct pollfd){.fd = pidfd, .events = POLLIN};
            who[n++] = NULL;
        } else {
            timeout = 100;
        }
        int r = poll(pfd, n, timeout);
        if (r < 0 && errno != EINTR)
            break;
        for (nfds_t i = 0; r > 0 && i < n; i++)
            if (who[i] && pfd[i].revents)
                shim_pump(who[i], o);
        if (!exited && waitpid(child, &status, WNOHANG) == child) {
            exited = true;
            *ended = shim_now_ms(CLOCK_REALTIME);
            deadline = shim_now_ms(CLOCK_MONOTONIC) + SHIM_DRAIN_MS;
        }
    }
    if (!exited) {
        while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
        }
        *ended = shim_now_ms(CLOCK_REALTIME);
    }
    if (pidfd >= 0)
        close(pidfd);
    return status;
}

/* Close every descriptor above 2 except the two the agent handed over
 * (either may be -1); those become CLOEXEC, not the app's to inherit, and
 * one that cannot be kept is dropped (-1). */
static void shim_keep_fds(int *a, int *b)
{
    int keep[2] = {*a, *b};
    if (keep[0] > keep[1]) {
        int t = keep[0];
        keep[0] = keep[1];
        keep[1] = t;
    }
    unsigned from = 3;
    for (int i = 0; i < 2; i++) {
        if (keep[i] < 3)
            continue;
        if ((unsigned)keep[i] > from)
            close_range(from, (unsigned)keep[i] - 1, 0);
        from = (unsigned)keep[i] + 1;
    }
    close_range(from, ~0u, 0);
    if (*a >= 0 && fcntl(*a, F_SETFD, FD_CLOEXEC) != 0)
        *a = -1;
    if (*b >= 0 && fcntl(*b, F_SETFD, FD_CLOEXEC) != 0)
        *b = -1;
}

int main(int argc, char **argv)
{
    shim_opts_t o = {0};
    shim_parse_args(argc, argv, &o);
    /* Whatever the starter left open is not ours to keep alive; 0-2 must be
     * open, or the pipes made below could land there and be clobbered by
     * the child's dup2. */
    shim_keep_fds(&o.ready_fd, &o.hold_fd);
    int fd;
    while ((fd = open("/dev/null", O_RDWR | O_CLOEXEC)) >= 0 && fd < 3) {
    }
    if (fd >= 3)
        close(fd);
    if (chdir(o.dir) != 0)
        return 2;

    /* The agent signals the app's group, never the shim; blocked (not
     * ignored) so the forked child cannot lose a signal sent to it before
     * it unblocks them right before exec. */
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGHUP);
    sigprocmask(SIG_BLOCK, &block, NULL);
    signal(SIGPIPE, SIG_IGN);

    shim_log_t logs[2] = {
        {.name = "stdout.log", .fd = -1, .pipe = -1},
        {.name = "stderr.log", .fd = -1, .pipe = -1},
    };
    shim_exit_t x = {0};
    shim_write_pid("shim.pid", getpid());
    shim_log_open(&logs[0]); /* both exist from the start, even if they stay empty */
    shim_log_open(&logs[1]);

    int out_p[2], err_p[2], fail_p[2];
    if (pipe2(out_p, O_CLOEXEC) != 0 || pipe2(err_p, O_CLOEXEC) != 0 ||
        pipe2(fail_p, O_CLOEXEC) != 0) {
        shim_fail_t f = {SHIM_FAIL_STDIO, errno};
        shim_describe_failure(&x, &f, &o);
        x.ended_at_ms = shim_now_ms(CLOCK_REALTIME);
        shim_finish(&x, &logs[1], &o);
    }
    pid_t child = fork();
    if (child < 0) {
        int e = errno;
        snprintf(x.reason, sizeof(x.reason), "failed to start: fork: %s", strerror(e));
        x.start_failed = true;
        x.exit_code = 127;
        x.ended_at_ms = shim_now_ms(CLOCK_REALTIME);
        shim_finish(&x, &logs[1], &o);
    }
    if (child == 0) {
        close(out_p[0]);
        close(err_p[0]);
        close(fail_p[0]);
        shim_child(&o, out_p[1], err_p[1], fail_p[1]);
    }
    if (o.hold_fd >= 0) {
        close(o.hold_fd); /* the child's alone: its EOF is the agent's */
        o.hold_fd = -1;
    }
    /* Both sides set the group so it exists before app.pid names it. */
    setpgid(child, child);
    shim_write_pid("app.pid", child);
    if (o.ready_fd >= 0) {
        char line[24];
        int n = snprintf(line, sizeof(line), "%d\n", (int)child);
        if (write(o.ready_fd, line, (size_t)n) < 0) {
            /* the agent went away: app.pid tells the next one */
        }
        close(o.ready_fd);
        o.ready_fd = -1;
    }
    close(out_p[1]);
    close(err_p[1]);
    close(fail_p[1]);
    logs[0].pipe = out_p[0];
    logs[1].pipe = err_p[0];
    fcntl(out_p[0], F_SETFL, O_NONBLOCK);
    fcntl(err_p[0], F_SETFL, O_NONBLOCK);

    shim_fail_t f = {0};
    ssize_t r;
    while ((r = read(fail_p[0], &f, sizeof(f))) < 0 && errno == EINTR) {
    }
    close(fail_p[0]);

    int status = shim_monitor(child, logs, &o, &x.ended_at_ms);
    if (r == (ssize_t)sizeof(f))
        shim_describe_failure(&x, &f, &o);
    else
        shim_describe_status(&x, status, &o);
    shim_finish(&x, &logs[1], &o);
    return 0;
}
