/* The process isolate: each instance is a plain process tree under a
 * drover-shim monitor, contained by cgroup v1 groups (src/isolate/cgroup.c).
 *
 * The agent spawns the shim with posix_spawn (a vfork-style clone: the big
 * agent is never copied) in a session of its own, so neither a terminal
 * hangup nor the agent's death reaches it. It learns that the shim ended
 * through a pidfd watched by uv_poll, reaps only that pid, and reads the
 * record the shim left in the instance directory. An adopted shim (started
 * by an earlier agent) is watched the same way; only its parent differs.
 *
 * Besides the files isolate.h lists, the directory holds `instance_id` (the
 * id, written at start) so that a later agent can find the cgroups of an
 * instance whose monitor died.
 *
 * A shim started here also gets the write end of a pipe (--ready-fd 3) on
 * which it writes the app's pid right after forking it; the agent learns
 * the app runs from that pipe becoming readable, without polling app.pid.
 *
 * A held start (isolate_spec_t.hold) also hands it the read end of a
 * second pipe (--hold-fd): the app side parks, contained, right before its
 * exec until proceed writes a byte there; closing the write end instead
 * (release, kill_all) ends it without running anything. */
#include "isolate/isolate.h"

#include "core/alloc.h"
#include "core/err.h"
#include "core/json.h"
#include "core/log.h"
#include "core/str.h"
#include "isolate/cgroup.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROC_LOG_MAX_DEFAULT   (10u << 20)
#define PROC_LOG_KEEP_DEFAULT  3
#define PROC_EXIT_JSON_MAX     (64 * 1024)
#define PROC_PENDING_SIGNAL_MS 5000            /* how long a signal waits for app.pid */
#define PROC_PATH_MAX          (PATH_MAX + 64) /* a directory plus one of its file names */
#define PROC_MONITOR_DIED      "monitor died: exit status unknown"

extern char **environ;

struct isolate_proc {
    uv_loop_t *loop;
    uv_poll_t poll;   /* readable when the shim has exited */
    uv_timer_t timer; /* retries a signal asked for before app.pid existed */
    uv_poll_t ready;  /* the shim's --ready-fd pipe, while open */
    int ready_fd;     /* -1 when none or closed */
    int hold_fd;      /* write end of the --hold-fd pipe while held; -1 otherwise */
    bool ready_open;  /* `ready` is initialised and not closed yet */
    char ready_buf[24];
    size_t ready_len;
    isolate_pid_cb on_pid;
    int open_handles; /* freed when the last close callback runs */
    int pidfd;
    pid_t shim_pid;
    pid_t app_pid; /* also the app's process group; 0 until read from app.pid */
    int pending_sig;
    uint64_t pending_until; /* uv_now() deadline for pending_sig */
    char *dir;              /* absolute */
    char *instance_id;      /* NULL when the directory does not name one */
    isolate_exit_cb cb;
    void *data;
    bool ended;
    bool released;
};

static bool proc_warned_cgroups;

static int proc_pidfd_open(pid_t pid)
{
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

/* The shim lives next to the agent's binary, so a release tarball or a
 * build tree works without configuration; DROVER_SHIM overrides (tests,
 * packaging that splits bin/ and libexec/). */
static int proc_shim_path(char *out, size_t n, err_t *err)
{
    const char *env = getenv("DROVER_SHIM");
    if (env && *env) {
        if (strlen(env) >= n)
            return err_set(err, -ENAMETOOLONG, "DROVER_SHIM is too long");
        snprintf(out, n, "%s", env);
        return 0;
    }
    char exe[PATH_MAX];
    ssize_t r = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (r < 0)
        return err_set(err, -errno, "readlink /proc/self/exe: %s", strerror(errno));
    exe[r] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash)
        *slash = '\0';
    int k = snprintf(out, n, "%s/drover-shim", slash ? exe : ".");
    if (k < 0 || (size_t)k >= n)
        return err_set(err, -ENAMETOOLONG, "monitor path too long");
    return 0;
}

static int proc_check_shim(char *path, size_t n, err_t *err)
{
    int rc = proc_shim_path(path, n, err);
    if (rc < 0)
        return rc;
    struct stat st;
    if (stat(path, &st) != 0)
        return err_set(err, -errno, "monitor binary %s: %s (set DROVER_SHIM)", path,
                       strerror(errno));
    if (!S_ISREG(st.st_mode) || access(path, X_OK) != 0)
        return err_set(err, -EACCES, "monitor binary %s is not an executable file", path);
    return 0;
}

static void proc_warn_cgroups_once(void)
{
    if (proc_warned_cgroups)
        return;
    char missing[512];
    unsigned mask = cgroup_probe(missing, sizeof(missing));
    if (mask == (1u << CGROUP_NCTRL) - 1)
        return;
    proc_warned_cgroups = true;
    log_warn("isolate", "cgroup controllers unusable: %s; their limits are not enforced", missing);
}

/* Bounded read of a small file of the instance directory into a
 * NUL-terminated buffer. */
static int proc_read_file(const char *dir, const char *name, char *out, size_t cap, size_t *len)
{
    char path[PROC_PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t have = 0;
    for (;;) {
        ssize_t r = read(fd, out + have, cap - 1 - have);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        have += (size_t)r;
        if (r == 0 || have == cap - 1)
            break;
    }
    close(fd);
    out[have] = '\0';
    if (len)
        *len = have;
    return 0;
}

static pid_t proc_read_pid(const char *dir, const char *name)
{
    char b[32];
    int rc = proc_read_file(dir, name, b, sizeof(b), NULL);
    if (rc < 0)
        return rc;
    b[strcspn(b, "\n")] = '\0';
    int64_t v;
    if (str_to_i64(b, 2, INT32_MAX, &v) < 0)
        return -EINVAL;
    return (pid_t)v;
}

/* tmp + rename, like the shim: a reader never sees half a file. */
static int proc_write_file(const char *dir, const char *name, const char *text)
{
    char path[PROC_PATH_MAX], tmp[PROC_PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    snprintf(tmp, sizeof(tmp), "%s/%s.agent.tmp", dir, name);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    size_t n = strlen(text);
    ssize_t w = write(fd, text, n);
    int e = w < 0 ? errno : EIO;
    close(fd);
    if (w != (ssize_t)n || rename(tmp, path) != 0) {
        e = w == (ssize_t)n ? errno : e;
        unlink(tmp);
        return -e;
    }
    return 0;
}

static void proc_monitor_died(isolate_exit_t *how)
{
    memset(how, 0, sizeof(*how));
    how->exit_code = -1;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    how->ended_at_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    snprintf(how->reason, sizeof(how->reason), "%s", PROC_MONITOR_DIED);
}

/* exit.json as the shim wrote it. -ENOENT when there is none; -EINVAL when
 * it does not parse (treated by callers like a missing one). */
static int proc_read_exit(const char *dir, isolate_exit_t *how)
{
    char *b = xmalloc(PROC_EXIT_JSON_MAX);
    size_t n = 0;
    int rc = proc_read_file(dir, "exit.json", b, PROC_EXIT_JSON_MAX, &n);
    if (rc < 0) {
        free(b);
        return rc;
    }
    json_t *j = json_parse(b, n, NULL);
    free(b);
    json_t *code = json_object_get(j, "exit_code"), *sig = json_object_get(j, "signal");
    json_t *ended = json_object_get(j, "ended_at_ms");
    const char *reason = json_str(j, "reason");
    if (!json_is_integer(code) || !json_is_integer(sig) || !json_is_integer(ended) || !reason) {
        json_decref(j);
        return -EINVAL;
    }
    memset(how, 0, sizeof(*how));
    how->exit_code = (int)json_integer_value(code);
    how->signal = (int)json_integer_value(sig);
    how->oom = json_is_true(json_object_get(j, "oom"));
    how->start_failed = json_is_true(json_object_get(j, "start_failed"));
    how->ended_at_ms = json_integer_value(ended);
    snprintf(how->reason, sizeof(how->reason), "%s", reason);
    json_decref(j);
    return 0;
}

/* Group leader check before a group kill where the app's state is not
 * known: a pgid names our group only while that group exists, so refuse a
 * number whose process is not leading a group of that id. */
static bool proc_group_exists(pid_t pgid)
{
    return pgid > 1 && getpgid(pgid) == pgid;
}

static pid_t proc_app_pgid(isolate_proc_t *p)
{
    if (p->app_pid <= 0) {
        pid_t pid = proc_read_pid(p->dir, "app.pid");
        if (pid > 0)
            p->app_pid = pid;
    }
    return p->app_pid;
}

/* Nothing of an instance whose monitor is gone may keep running unobserved:
 * kill what its cgroups hold, and its group while it still leads one. */
static void proc_kill_orphans(const char *instance_id, pid_t pgid)
{
    if (instance_id)
        cgroup_kill_all(instance_id);
    if (pgid > 0 && proc_group_exists(pgid))
        kill(-pgid, SIGKILL);
}

static void proc_on_close(uv_handle_t *h)
{
    isolate_proc_t *p = h->data;
    if (h == (uv_handle_t *)&p->ready && p->ready_fd >= 0) {
        close(p->ready_fd);
        p->ready_fd = -1;
    }
    if (--p->open_handles > 0)
        return;
    if (p->pidfd >= 0)
        close(p->pidfd);
    free(p->dir);
    free(p->instance_id);
    free(p);
}

/* The shim exited: it wrote exit.json first unless it was killed. Reap it
 * through the pidfd, which names exactly that process, so nothing else the
 * agent runs is ever reaped here (ECHILD for an adopted shim, which is
 * init's child). */
static void proc_on_readable(uv_poll_t *h, int status, int events)
{
    isolate_proc_t *p = h->data;
    (void)events;
    if (status < 0) {
        /* An error from the poller is not an exit: believe only the pidfd. */
        struct pollfd pfd = {.fd = p->pidfd, .events = POLLIN};
        if (poll(&pfd, 1, 0) != 1) {
            log_warn("isolate", "watching monitor %d: %s", (int)p->shim_pid, uv_strerror(status));
            return;
        }
    }
    uv_poll_stop(&p->poll);
    uv_timer_stop(&p->timer);
    siginfo_t si;
    memset(&si, 0, sizeof(si));
    while (waitid(P_PIDFD, (id_t)p->pidfd, &si, WEXITED | WNOHANG) < 0 && errno == EINTR) {
    }
    isolate_exit_t how;
    if (proc_read_exit(p->dir, &how) < 0) {
        proc_monitor_died(&how);
        log_warn("isolate", "monitor %d of %s died without an exit record", (int)p->shim_pid,
                 p->dir);
        proc_kill_orphans(p->instance_id, proc_app_pgid(p));
    }
    p->ended = true;
    p->cb(p, &how, p->data);
}

static void proc_ready_close(isolate_proc_t *p)
{
    if (!p->ready_open)
        return;
    p->ready_open = false;
    uv_poll_stop(&p->ready);
    uv_close((uv_handle_t *)&p->ready, proc_on_close);
}

/* The shim wrote the app's pid (or closed the pipe without one: it failed
 * before forking, and its exit tells the rest). */
static void proc_on_ready(uv_poll_t *h, int status, int events)
{
    isolate_proc_t *p = h->data;
    (void)events;
    bool done = status < 0;
    while (!done) {
        ssize_t r =
            read(p->ready_fd, p->ready_buf + p->ready_len, sizeof(p->ready_buf) - 1 - p->ready_len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return; /* the rest of the line comes later */
        if (r > 0)
            p->ready_len += (size_t)r;
        done = r <= 0 || memchr(p->ready_buf, '\n', p->ready_len) ||
               p->ready_len == sizeof(p->ready_buf) - 1;
    }
    p->ready_buf[p->ready_len] = '\0';
    p->ready_buf[strcspn(p->ready_buf, "\n")] = '\0';
    int64_t v = 0;
    pid_t pid = 0;
    if (p->ready_len && str_to_i64(p->ready_buf, 2, INT32_MAX, &v) == 0)
        pid = (pid_t)v;
    proc_ready_close(p);
    if (pid > 0 && p->app_pid <= 0)
        p->app_pid = pid;
    if (p->app_pid > 0 && p->on_pid && !p->released) {
        isolate_pid_cb cb = p->on_pid;
        p->on_pid = NULL;
        cb(p, p->app_pid, p->data);
    }
}

static void proc_on_timer(uv_timer_t *t)
{
    isolate_proc_t *p = t->data;
    pid_t pgid = proc_app_pgid(p);
    if (pgid > 0) {
        kill(-pgid, p->pending_sig);
        p->pending_sig = 0;
    }
    if (pgid > 0 || p->ended || uv_now(p->loop) >= p->pending_until) {
        p->pending_sig = 0;
        uv_timer_stop(t);
    }
}

/* ready_fd: read end of the shim's --ready-fd pipe, or -1; taken over
 * (closed) whatever happens. */
static int proc_watch(uv_loop_t *loop, const char *dir, const char *instance_id, pid_t shim_pid,
                      int pidfd, int ready_fd, isolate_pid_cb on_pid, isolate_exit_cb cb,
                      void *data, isolate_proc_t **out, err_t *err)
{
    isolate_proc_t *p = xcalloc(1, sizeof(*p));
    p->loop = loop;
    p->pidfd = pidfd;
    p->ready_fd = -1;
    p->hold_fd = -1;
    p->shim_pid = shim_pid;
    p->dir = xstrdup(dir);
    p->instance_id = instance_id ? xstrdup(instance_id) : NULL;
    p->cb = cb;
    p->data = data;
    int rc = uv_poll_init(loop, &p->poll, pidfd);
    if (rc < 0) {
        if (ready_fd >= 0)
            close(ready_fd);
        free(p->dir);
        free(p->instance_id);
        free(p);
        return err_set(err, rc, "watching monitor %d: %s", (int)shim_pid, uv_strerror(rc));
    }
    uv_timer_init(loop, &p->timer);
    p->poll.data = p;
    p->timer.data = p;
    p->open_handles = 2;
    uv_poll_start(&p->poll, UV_READABLE, proc_on_readable);
    if (ready_fd >= 0 && uv_poll_init(loop, &p->ready, ready_fd) == 0) {
        p->ready_fd = ready_fd;
        p->ready_open = true;
        p->ready.data = p;
        p->on_pid = on_pid;
        p->open_handles++;
        uv_poll_start(&p->ready, UV_READABLE, proc_on_ready);
    } else if (ready_fd >= 0) {
        close(ready_fd);
    }
    *out = p;
    return 0;
}

/* Is pid a drover-shim watching dir? Its command line says so: argv[0]
 * ends in drover-shim and "--dir DIR" comes before "--". A recycled pid
 * (the shim died long ago) fails this and is never adopted. */
static bool proc_is_our_shim(pid_t pid, const char *dir)
{
    char path[64], b[8192];
    size_t n = 0;
    snprintf(path, sizeof(path), "/proc/%d", (int)pid);
    if (proc_read_file(path, "cmdline", b, sizeof(b), &n) < 0 || n == 0)
        return false;
    const char *end = b + n;
    const char *arg = b;
    const char *base = strrchr(arg, '/');
    base = base ? base + 1 : arg;
    if (strstr(base, "drover-shim") == NULL)
        return false;
    for (arg += strlen(arg) + 1; arg < end; arg += strlen(arg) + 1) {
        if (strcmp(arg, "--") == 0)
            return false;
        if (strcmp(arg, "--dir") == 0) {
            const char *v = arg + strlen(arg) + 1;
            return v < end && strcmp(v, dir) == 0;
        }
    }
    return false;
}

static int process_probe(err_t *err)
{
    char shim[PATH_MAX];
    int rc = proc_check_shim(shim, sizeof(shim), err);
    if (rc < 0)
        return rc;
    int fd = proc_pidfd_open(getpid());
    if (fd < 0)
        return err_set(err, -errno, "pidfd_open: %s (Linux 5.3 or later is needed)",
                       strerror(errno));
    close(fd);
    proc_warn_cgroups_once();
    return 0;
}

/* The descriptors handed to the shim: --ready-fd at 3, --hold-fd after it. */
static const char *const proc_child_fd[] = {"3", "4"};

static char **proc_shim_argv(const char *shim, const char *dir, const isolate_spec_t *spec,
                             char cgroups[CGROUP_NCTRL][256], int ncg, bool ready, bool hold,
                             char **owned)
{
    size_t argc = 0;
    while (spec->argv[argc])
        argc++;
    char **v = xcalloc(16 + 2 * CGROUP_NCTRL + argc + 1, sizeof(*v));
    size_t i = 0;
    size_t log_max = spec->log_max_bytes ? spec->log_max_bytes : PROC_LOG_MAX_DEFAULT;
    int keep = spec->log_keep > 0 ? spec->log_keep : spec->log_keep < 0 ? 0 : PROC_LOG_KEEP_DEFAULT;
    if (keep > 100)
        keep = 100;
    owned[0] = xasprintf("%zu", log_max);
    owned[1] = xasprintf("%d", keep);
    v[i++] = (char *)shim;
    v[i++] = "--dir";
    v[i++] = (char *)dir;
    if (spec->cwd) {
        v[i++] = "--cwd";
        v[i++] = (char *)spec->cwd;
    }
    v[i++] = "--log-max";
    v[i++] = owned[0];
    v[i++] = "--log-keep";
    v[i++] = owned[1];
    for (int c = 0; c < ncg; c++) {
        v[i++] = "--cgroup";
        v[i++] = cgroups[c];
    }
    if (spec->harden)
        v[i++] = "--harden";
    if (ready) {
        v[i++] = "--ready-fd";
        v[i++] = (char *)proc_child_fd[0];
    }
    if (hold) {
        v[i++] = "--hold-fd";
        v[i++] = (char *)proc_child_fd[ready ? 1 : 0];
    }
    v[i++] = "--";
    for (size_t k = 0; k < argc; k++)
        v[i++] = spec->argv[k];
    v[i] = NULL;
    return v;
}

/* A descriptor of a pipe end for the shim, moved above the slots the
 * ends are dup2'ed to (3, 4): dup2 onto itself would keep CLOEXEC, and one
 * sitting in the other's slot would be overwritten. */
static int proc_fd_high(int fd)
{
    if (fd < 0 || fd > 4)
        return fd;
    int high = fcntl(fd, F_DUPFD_CLOEXEC, 5);
    int e = errno;
    close(fd);
    errno = e;
    return high;
}

static void proc_close_pair(int p[2])
{
    for (int i = 0; i < 2; i++)
        if (p[i] >= 0)
            close(p[i]);
    p[0] = p[1] = -1;
}

/* EOF on the hold pipe: a parked app side ends without running. */
static void proc_unhold(isolate_proc_t *p)
{
    if (p->hold_fd >= 0) {
        close(p->hold_fd);
        p->hold_fd = -1;
    }
}

/* posix_spawn: glibc clones with CLONE_VM|CLONE_VFORK, so starting a shim
 * costs the same whatever the agent's size. The shim gets /dev/null for
 * stdio, no other descriptor, default signal handling and an empty mask,
 * whatever the agent itself has set up. */
static int proc_spawn(const char *shim, char **argv, char *const *envp, int ready_fd, int hold_fd,
                      pid_t *pid, err_t *err)
{
    posix_spawnattr_t attr;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_init(&fa);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    sigdelset(&all, SIGKILL);
    sigdelset(&all, SIGSTOP);
    posix_spawnattr_setflags(&attr,
                             POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDWR, 0);
    posix_spawn_file_actions_adddup2(&fa, STDIN_FILENO, STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&fa, STDIN_FILENO, STDERR_FILENO);
    /* The pipes' ends are CLOEXEC and above the slots they go to
     * (proc_fd_high); dup2 clears the flag. */
    int next = 3;
    if (ready_fd >= 0)
        posix_spawn_file_actions_adddup2(&fa, ready_fd, next++);
    if (hold_fd >= 0)
        posix_spawn_file_actions_adddup2(&fa, hold_fd, next++);
    posix_spawn_file_actions_addclosefrom_np(&fa, next);
    int rc = posix_spawn(pid, shim, &fa, &attr, argv, envp ? envp : environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (rc != 0)
        return err_set(err, -rc, "starting monitor %s: %s", shim, strerror(rc));
    return 0;
}

static int process_start(uv_loop_t *loop, const isolate_spec_t *spec, isolate_exit_cb cb,
                         void *data, isolate_proc_t **out, err_t *err)
{
    if (!spec || !spec->dir || !spec->argv || !spec->argv[0] || !cb || !out)
        return err_set(err, -EINVAL, "spec needs dir, argv and a callback");
    if (!cgroup_id_valid(spec->instance_id))
        return err_set(err, -EINVAL, "instance id \"%s\" is not a valid name",
                       spec->instance_id ? spec->instance_id : "");
    char shim[PATH_MAX], dir[PATH_MAX];
    int rc = proc_check_shim(shim, sizeof(shim), err);
    if (rc < 0)
        return rc;
    if (!realpath(spec->dir, dir))
        return err_set(err, -errno, "instance dir %s: %s", spec->dir, strerror(errno));

    /* Two monitors writing the same logs and records would garble both. */
    pid_t old = proc_read_pid(dir, "shim.pid");
    if (old > 0 && proc_is_our_shim(old, dir))
        return err_set(err, -EBUSY, "instance dir %s is in use by monitor %d", dir, (int)old);
    /* Files of an earlier run in the same directory must not be taken for
     * this one's (an old exit.json would end it at once). */
    static const char *const stale[] = {"exit.json", "exit.json.tmp", "app.pid", "shim.pid"};
    for (size_t i = 0; i < sizeof(stale) / sizeof(stale[0]); i++) {
        char path[PROC_PATH_MAX];
        snprintf(path, sizeof(path), "%s/%s", dir, stale[i]);
        if (unlink(path) != 0 && errno != ENOENT)
            return err_set(err, -errno, "removing %s: %s", path, strerror(errno));
    }
    char idline[160];
    snprintf(idline, sizeof(idline), "%s\n", spec->instance_id);
    rc = proc_write_file(dir, "instance_id", idline);
    if (rc < 0)
        return err_set(err, rc, "writing %s/instance_id: %s", dir, strerror(-rc));

    proc_warn_cgroups_once();
    cgroup_limits_t lim = {spec->cpus, spec->mem_bytes, spec->pids_max};
    rc = cgroup_create(spec->instance_id, &lim, err);
    if (rc < 0)
        return rc;
    char cgroups[CGROUP_NCTRL][256];
    int ncg = 0;
    unsigned mask = cgroup_usable();
    for (int c = 0; c < CGROUP_NCTRL; c++)
        if (mask & (1u << c))
            cgroup_path((cgroup_ctrl_t)c, spec->instance_id, cgroups[ncg++], sizeof(cgroups[0]));

    /* The ready pipe only for a caller that wants the pid. */
    int ready[2] = {-1, -1}, hold[2] = {-1, -1};
    if (spec->on_pid && pipe2(ready, O_CLOEXEC | O_NONBLOCK) == 0)
        ready[1] = proc_fd_high(ready[1]);
    if (spec->hold) {
        if (pipe2(hold, O_CLOEXEC) != 0 || (hold[0] = proc_fd_high(hold[0])) < 0) {
            rc = err_set(err, -errno, "hold pipe: %s", strerror(errno));
            proc_close_pair(ready);
            proc_close_pair(hold);
            cgroup_remove(spec->instance_id);
            return rc;
        }
        fcntl(hold[1], F_SETFL, O_NONBLOCK);
    }
    char *owned[2] = {NULL, NULL};
    char **argv =
        proc_shim_argv(shim, dir, spec, cgroups, ncg, ready[1] >= 0, hold[0] >= 0, owned);
    pid_t pid = 0;
    rc = proc_spawn(shim, argv, spec->envp, ready[1], hold[0], &pid, err);
    free(argv);
    free(owned[0]);
    free(owned[1]);
    if (ready[1] >= 0)
        close(ready[1]);
    if (hold[0] >= 0)
        close(hold[0]);
    if (rc < 0) {
        if (ready[0] >= 0)
            close(ready[0]);
        if (hold[1] >= 0)
            close(hold[1]);
        cgroup_remove(spec->instance_id);
        return rc;
    }
    /* The shim writes it too; written here as well so an agent killed right
     * now still finds the instance when it comes back. */
    char pidline[32];
    snprintf(pidline, sizeof(pidline), "%d\n", (int)pid);
    proc_write_file(dir, "shim.pid", pidline);

    int pidfd = proc_pidfd_open(pid);
    if (pidfd < 0) {
        int e = errno;
        if (ready[0] >= 0)
            close(ready[0]);
        if (hold[1] >= 0)
            close(hold[1]);
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        }
        cgroup_kill_all(spec->instance_id);
        return err_set(err, -e, "pidfd_open of monitor %d: %s", (int)pid, strerror(e));
    }
    rc = proc_watch(loop, dir, spec->instance_id, pid, pidfd, ready[0], spec->on_pid, cb, data, out,
                    err);
    if (rc < 0) {
        siginfo_t si;
        if (hold[1] >= 0)
            close(hold[1]);
        kill(pid, SIGKILL);
        while (waitid(P_PIDFD, (id_t)pidfd, &si, WEXITED) < 0 && errno == EINTR) {
        }
        close(pidfd);
        cgroup_kill_all(spec->instance_id);
        return rc;
    }
    (*out)->hold_fd = hold[1];
    log_debug("isolate", "started %s (monitor %d) in %s%s", spec->argv[0], (int)pid, dir,
              spec->hold ? ", held" : "");
    return 0;
}

static int process_adopt(uv_loop_t *loop, const char *dir_in, isolate_exit_cb cb, void *data,
                         isolate_proc_t **out, isolate_exit_t *how, err_t *err)
{
    char dir[PATH_MAX];
    if (!dir_in || !cb || !out || !how)
        return err_set(err, -EINVAL, "adopt needs a directory, a callback and out parameters");
    if (!realpath(dir_in, dir))
        return err_set(err, -errno, "instance dir %s: %s", dir_in, strerror(errno));
    char idline[160];
    char *instance_id = NULL;
    if (proc_read_file(dir, "instance_id", idline, sizeof(idline), NULL) == 0) {
        idline[strcspn(idline, "\n")] = '\0';
        if (cgroup_id_valid(idline))
            instance_id = idline;
    }
    pid_t shim = proc_read_pid(dir, "shim.pid");
    if (shim < 0) {
        if (proc_read_exit(dir, how) == 0)
            return 0;
        return err_set(err, -ENOENT, "%s holds no instance (no shim.pid)", dir);
    }
    int pidfd = proc_pidfd_open(shim);
    if (pidfd >= 0 && proc_is_our_shim(shim, dir)) {
        int rc = proc_watch(loop, dir, instance_id, shim, pidfd, -1, NULL, cb, data, out, err);
        if (rc < 0) {
            close(pidfd);
            return rc;
        }
        proc_app_pgid(*out);
        log_debug("isolate", "adopted monitor %d of %s", (int)shim, dir);
        return 1;
    }
    if (pidfd >= 0)
        close(pidfd);
    if (proc_read_exit(dir, how) == 0)
        return 0;
    /* The monitor died before recording anything: whatever it ran must not
     * go on unwatched. Only the cgroup is used here; after this long, the
     * number in app.pid may well be someone else's. */
    proc_monitor_died(how);
    if (instance_id)
        cgroup_kill_all(instance_id);
    return 0;
}

static int process_signal(isolate_proc_t *p, int sig)
{
    if (p->ended)
        return -ESRCH;
    pid_t pgid = proc_app_pgid(p);
    if (pgid > 0)
        return kill(-pgid, sig) == 0 ? 0 : -errno;
    /* The shim has not forked the app yet: deliver it as soon as app.pid
     * appears. SIGKILL, once asked for, is not replaced by a milder one. */
    if (p->pending_sig != SIGKILL)
        p->pending_sig = sig;
    p->pending_until = uv_now(p->loop) + PROC_PENDING_SIGNAL_MS;
    uv_timer_start(&p->timer, proc_on_timer, 5, 5);
    return 0;
}

static int process_kill_all(isolate_proc_t *p)
{
    proc_unhold(p);
    int rc = p->instance_id ? cgroup_kill_all(p->instance_id) : 0;
    pid_t pgid = proc_app_pgid(p);
    if (!p->ended) {
        if (pgid > 0)
            kill(-pgid, SIGKILL);
        else
            process_signal(p, SIGKILL);
    } else if (pgid > 0 && !(cgroup_usable() & (1u << CGROUP_MEMORY | 1u << CGROUP_PIDS)) &&
               proc_group_exists(pgid)) {
        /* Without cgroups the group is the only handle on what is left. */
        kill(-pgid, SIGKILL);
    }
    return rc;
}

/* The app's pid (its process group leader), read from app.pid while the
 * proc has not cached it; 0 until the shim has forked the app. */
static pid_t process_pid(const isolate_proc_t *p)
{
    if (p->app_pid > 0)
        return p->app_pid;
    pid_t pid = proc_read_pid(p->dir, "app.pid");
    return pid > 0 ? pid : 0;
}

static void process_release(isolate_proc_t *p)
{
    if (!p || p->released)
        return;
    p->released = true;
    proc_unhold(p);
    proc_ready_close(p);
    uv_poll_stop(&p->poll);
    uv_timer_stop(&p->timer);
    uv_close((uv_handle_t *)&p->poll, proc_on_close);
    uv_close((uv_handle_t *)&p->timer, proc_on_close);
}

/* The instance has ended: what its processes left running (daemons that
 * outlived the app) is killed too, since nothing would supervise it. */
static int process_cleanup(const char *instance_id, const char *dir)
{
    (void)dir;
    if (!cgroup_id_valid(instance_id))
        return -EINVAL;
    cgroup_kill_all(instance_id);
    return cgroup_remove(instance_id);
}

static int process_proceed(isolate_proc_t *p)
{
    if (p->hold_fd < 0)
        return -EALREADY;
    char go = 'g';
    ssize_t w;
    while ((w = write(p->hold_fd, &go, 1)) < 0 && errno == EINTR) {
    }
    int e = w == 1 ? 0 : errno ? errno : EIO;
    proc_unhold(p);
    return -e;
}

const isolate_ops_t isolate_process_ops = {
    .name = "process",
    .probe = process_probe,
    .start = process_start,
    .adopt = process_adopt,
    .signal = process_signal,
    .kill_all = process_kill_all,
    .pid = process_pid,
    .release = process_release,
    .cleanup = process_cleanup,
    .proceed = process_proceed,
    .sweep = cgroup_sweep,
};
