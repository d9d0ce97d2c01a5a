/* isolate: how an instance's processes are run and contained. One struct of
 * function pointers per kind (process now; oci and docker later) so the
 * agent never knows which one it drives.
 *
 * Every instance runs under a small monitor (bin/drover-shim for the process
 * isolate; conmon/containerd-shim play this part elsewhere) that owns the
 * app's stdout/stderr pipes, writes size-bounded rotated logs, waits for the
 * app and records how it ended in the instance directory. Because of it,
 * kill -9 of the agent leaves instances running, and an agent that starts
 * again re-adopts them (isolate_ops.adopt) and learns how the ones that
 * ended in the meantime ended.
 *
 * Instance directory layout (dir below), owned by the isolate:
 *   shim.pid     pid of the monitor           app.pid   pid of the app (process group leader)
 *   exit.json    written by the monitor when the app ended (atomically, tmp + rename)
 *   stdout.log   stdout.log.1 ...  stderr.log  stderr.log.1 ...   (rotated)
 *
 * Threading: all calls on the loop thread; callbacks on it too. start/adopt
 * do no blocking work longer than a few syscalls (posix_spawn, cgroup file
 * writes). */
#ifndef DROVER_ISOLATE_H
#define DROVER_ISOLATE_H

#include "core/err.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

typedef struct isolate_proc isolate_proc_t;

/* The app's pid became known (its monitor has forked it): called at most
 * once per start, on the loop, with the `data` given to start, never after
 * release. */
typedef void (*isolate_pid_cb)(isolate_proc_t *p, pid_t pid, void *data);

typedef struct isolate_spec {
    const char *instance_id;
    const char *dir;      /* instance directory (exists; isolate writes its files here) */
    const char *cwd;      /* working directory of the app */
    char *const *argv;    /* NULL-terminated; argv[0] looked up in PATH of envp */
    char *const *envp;    /* NULL-terminated, the app's whole environment */
    double cpus;          /* CPU limit in cores (cfs quota); 0 = none */
    int64_t mem_bytes;    /* memory limit; 0 = none; exceeding it kills the app: oom */
    int64_t pids_max;     /* process limit; 0 = none */
    size_t log_max_bytes; /* rotate a log file past this size (default 10 MiB) */
    int log_keep;         /* rotated files kept per stream (default 3) */
    bool harden; /* pid/mount/ipc/uts namespaces and no_new_privs where the kernel permits */
    isolate_pid_cb on_pid; /* optional: told the app's pid as soon as it is known */
    /* Park the app, contained and ready, right before its exec until
     * isolate_ops.proceed (a pre-started spare; see drover-shim --hold-fd). */
    bool hold;
} isolate_spec_t;

typedef struct isolate_exit {
    int exit_code;       /* -1 when killed by a signal */
    int signal;          /* 0 when it exited */
    bool oom;            /* killed for exceeding mem_bytes */
    bool start_failed;   /* the command could not be started (exec failed) */
    int64_t ended_at_ms; /* wall clock, ms since the epoch */
    char reason[256];    /* "exited with status 1", "killed by signal 9 (Killed)",
                          * "out of memory (limit 64 MiB)", "failed to start: nope: No such file
                          * or directory", "monitor died: exit status unknown" */
} isolate_exit_t;

/* Called once when the app has ended (and its monitor recorded it). The
 * proc stays valid until isolate_ops.release. */
typedef void (*isolate_exit_cb)(isolate_proc_t *p, const isolate_exit_t *how, void *data);

typedef struct isolate_ops {
    const char *name; /* "process" */
    /* Check the node can run this isolate (cgroup controllers, monitor
     * binary); fills err with what is missing. */
    int (*probe)(err_t *err);
    int (*start)(uv_loop_t *loop, const isolate_spec_t *spec, isolate_exit_cb cb, void *data,
                 isolate_proc_t **out, err_t *err);
    /* Re-attach to an instance started by an earlier agent. Returns 1 and
     * sets *out when it is still running; returns 0 and fills *how when it
     * ended meanwhile (then the directory's state is final); negative errno
     * when the directory holds no instance. */
    int (*adopt)(uv_loop_t *loop, const char *dir, isolate_exit_cb cb, void *data,
                 isolate_proc_t **out, isolate_exit_t *how, err_t *err);
    /* Signal the app's whole process group. */
    int (*signal)(isolate_proc_t *p, int sig);
    /* SIGKILL every process of the instance, descendants that left the
     * process group included (through the cgroup). */
    int (*kill_all)(isolate_proc_t *p);
    pid_t (*pid)(const isolate_proc_t *p);
    /* Forget the proc: after its exit callback, or at agent shutdown (the
     * instance keeps running, to be adopted later). May be called from
     * inside the exit callback; memory is freed from close callbacks. */
    void (*release)(isolate_proc_t *p);
    /* Remove what the isolate created for an ended instance (cgroups).
     * Logs stay. */
    int (*cleanup)(const char *instance_id, const char *dir);
    /* Let a held start run its command (0; -EALREADY when it was not held
     * or was already let go). A held app that is killed or released
     * instead ends without running anything ("released before it
     * started"). */
    int (*proceed)(isolate_proc_t *p);
    /* Remove what instances of agents that are gone left on the host and
     * nothing will clean (empty cgroups older than min_age_s); the number
     * removed. Never touches anything still in use. */
    int (*sweep)(int64_t min_age_s);
} isolate_ops_t;

extern const isolate_ops_t isolate_process_ops;

#endif
