/* Tests for the process isolate and drover-shim with real processes and
 * real cgroups: exit records, log capture and rotation, exec failures,
 * signals, kill_all of escaped descendants, OOM, limits, adoption (and the
 * refusal of a recycled pid), the monitor's resistance to signals and its
 * death, and the cost of starting many instances.
 *
 * Run from the repo root after `make build/asan/drover-shim`: the shim is
 * taken from build/asan/drover-shim (DROVER_SHIM). Each test works in a
 * fresh mkdtemp directory with its own instance id. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/alloc.h"
#include "core/log.h"
#include "isolate/cgroup.h"
#include "isolate/isolate.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static const isolate_ops_t *ops = &isolate_process_ops;
static char g_shim[4096];
static int g_seq;

typedef struct fx {
    uv_loop_t loop;
    uv_timer_t timer;
    bool timed_out;
    char dir[64];
    char id[64];
    isolate_proc_t *p;
    int exits;
    isolate_exit_t how;
} fx_t;

/* ---- helpers ---------------------------------------------------------- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void nap_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static void on_timer(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

/* Run the loop until *count reaches want or ms pass; true when reached. */
static bool run_until(fx_t *f, const int *count, int want, uint64_t ms)
{
    f->timed_out = false;
    f->timer.data = &f->timed_out;
    uv_timer_start(&f->timer, on_timer, ms, 0);
    while (*count < want && !f->timed_out)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_timer_stop(&f->timer);
    return *count >= want;
}

static void run_for(fx_t *f, uint64_t ms)
{
    int never = 0;
    run_until(f, &never, 1, ms);
}

/* Exit callback: record, then release the proc from inside the callback as
 * the agent does. */
static void on_exit_release(isolate_proc_t *p, const isolate_exit_t *how, void *data)
{
    fx_t *f = data;
    assert_ptr_equal(p, f->p);
    f->exits++;
    f->how = *how;
    ops->release(p);
    f->p = NULL;
}

static isolate_spec_t spec_of(fx_t *f, char *const *argv)
{
    return (isolate_spec_t){
        .instance_id = f->id,
        .dir = f->dir,
        .argv = argv,
        .envp = environ,
    };
}

static void start_ok(fx_t *f, const isolate_spec_t *spec)
{
    err_t err = {0};
    int rc = ops->start(&f->loop, spec, on_exit_release, f, &f->p, &err);
    if (rc != 0)
        fail_msg("start: %s", err.msg);
    assert_non_null(f->p);
}

static isolate_exit_t run_to_end(fx_t *f, char *const *argv)
{
    isolate_spec_t spec = spec_of(f, argv);
    start_ok(f, &spec);
    if (!run_until(f, &f->exits, 1, 10000))
        fail_msg("%s did not end", argv[0]);
    assert_int_equal(f->exits, 1);
    return f->how;
}

static char *read_path(const char *path)
{
    FILE *fp = fopen(path, "r");
    if (!fp)
        return NULL;
    char *b = xcalloc(1, 1 << 20);
    size_t n = fread(b, 1, (1 << 20) - 1, fp);
    b[n] = '\0';
    fclose(fp);
    return b;
}

static char *read_in(const fx_t *f, const char *name)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", f->dir, name);
    return read_path(path);
}

static long file_size(const fx_t *f, const char *name)
{
    char path[256];
    struct stat st;
    snprintf(path, sizeof(path), "%s/%s", f->dir, name);
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static pid_t read_pid_in(const fx_t *f, const char *name)
{
    char *s = read_in(f, name);
    pid_t pid = s ? (pid_t)strtol(s, NULL, 10) : 0;
    free(s);
    return pid;
}

/* The shim writes app.pid right after forking; wait for it (the app runs
 * on its own, no loop needed). */
static pid_t wait_app_pid(const fx_t *f)
{
    for (int i = 0; i < 400; i++) {
        pid_t pid = read_pid_in(f, "app.pid");
        if (pid > 0)
            return pid;
        nap_ms(5);
    }
    fail_msg("no app.pid in %s", f->dir);
    return 0;
}

/* Alive and not a zombie. */
static bool alive(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    char *s = read_path(path);
    if (!s)
        return false;
    const char *paren = strrchr(s, ')');
    bool live = paren && paren[1] == ' ' && paren[2] != 'Z' && paren[2] != 'X';
    free(s);
    return live;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static bool have_cgroups(void)
{
    return cgroup_usable() == (1u << CGROUP_NCTRL) - 1;
}

static void write_in(const fx_t *f, const char *name, const char *text)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", f->dir, name);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
}

/* ---- fixture ---------------------------------------------------------- */

static int fx_setup(void **state)
{
    fx_t *f = xcalloc(1, sizeof(*f));
    uv_loop_init(&f->loop);
    uv_timer_init(&f->loop, &f->timer);
    snprintf(f->dir, sizeof(f->dir), "/tmp/drover-isolate-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->id, sizeof(f->id), "test-%d-%d", (int)getpid(), ++g_seq);
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    fx_t *f = *state;
    if (f->p) {
        ops->kill_all(f->p);
        run_until(f, &f->exits, 1, 5000);
        if (f->p)
            ops->release(f->p);
    }
    cgroup_kill_all(f->id);
    ops->cleanup(f->id, f->dir);
    uv_close((uv_handle_t *)&f->timer, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* ---- exit records ----------------------------------------------------- */

static void test_exit_zero(void **state)
{
    fx_t *f = *state;
    char *argv[] = {"sh", "-c", "exit 0", NULL};
    int64_t before = now_ms();
    isolate_exit_t how = run_to_end(f, argv);
    assert_int_equal(how.exit_code, 0);
    assert_int_equal(how.signal, 0);
    assert_false(how.oom);
    assert_false(how.start_failed);
    assert_string_equal(how.reason, "exited with status 0");
    assert_true(how.ended_at_ms >= before - 1000 && how.ended_at_ms <= now_ms() + 1000);
    /* the directory holds the record and both pids */
    assert_true(read_pid_in(f, "shim.pid") > 0);
    assert_true(read_pid_in(f, "app.pid") > 0);
    char *j = read_in(f, "exit.json");
    assert_non_null(j);
    assert_non_null(strstr(j, "\"reason\":\"exited with status 0\""));
    free(j);
    assert_int_equal(file_size(f, "exit.json.tmp"), -1);
}

static void test_exit_three(void **state)
{
    fx_t *f = *state;
    char *argv[] = {"sh", "-c", "exit 3", NULL};
    isolate_exit_t how = run_to_end(f, argv);
    assert_int_equal(how.exit_code, 3);
    assert_int_equal(how.signal, 0);
    assert_false(how.start_failed);
    assert_string_equal(how.reason, "exited with status 3");
}

static void test_killed_by_signal(void **state)
{
    fx_t *f = *state;
    char *argv[] = {"sh", "-c", "kill -KILL $$", NULL};
    isolate_exit_t how = run_to_end(f, argv);
    assert_int_equal(how.exit_code, -1);
    assert_int_equal(how.signal, SIGKILL);
    assert_false(how.oom);
    assert_string_equal(how.reason, "killed by signal 9 (Killed)");
}

static void test_exec_failure(void **state)
{
    fx_t *f = *state;
    char *argv[] = {"drover-no-such-command", "x", NULL};
    isolate_exit_t how = run_to_end(f, argv);
    assert_true(how.start_failed);
    assert_string_equal(how.reason,
                        "failed to start: drover-no-such-command: No such file or directory");
    /* a file that is not executable */
    f->exits = 0;
    char plain[96];
    snprintf(plain, sizeof(plain), "%s/plain", f->dir);
    write_in(f, "plain", "not a program\n");
    char *argv2[] = {plain, NULL};
    how = run_to_end(f, argv2);
    assert_true(how.start_failed);
    char want[160];
    snprintf(want, sizeof(want), "failed to start: %s: Permission denied", plain);
    assert_string_equal(how.reason, want);
}

static void test_bad_cwd_and_env(void **state)
{
    fx_t *f = *state;
    char *argv[] = {"sh", "-c", "pwd; echo \"$FOO\"", NULL};
    char *envp[] = {"PATH=/usr/bin:/bin", "FOO=bar baz", NULL};
    isolate_spec_t spec = spec_of(f, argv);
    spec.cwd = "/usr";
    spec.envp = envp;
    start_ok(f, &spec);
    assert_true(run_until(f, &f->exits, 1, 10000));
    assert_string_equal(f->how.reason, "exited with status 0");
    char *out = read_in(f, "stdout.log");
    assert_string_equal(out, "/usr\nbar baz\n");
    free(out);

    f->exits = 0;
    spec.cwd = "/nonexistent-drover";
    start_ok(f, &spec);
    assert_true(run_until(f, &f->exits, 1, 10000));
    assert_true(f->how.start_failed);
    assert_string_equal(f->how.reason,
                        "failed to start: chdir /nonexistent-drover: No such file or directory");
}

static void test_start_errors(void **state)
{
    fx_t *f = *state;
    char *argv[] = {"true", NULL};
    err_t err = {0};
    isolate_spec_t spec = spec_of(f, argv);
    spec.instance_id = "../escape";
    assert_int_equal(ops->start(&f->loop, &spec, on_exit_release, f, &f->p, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "../escape"));
    spec = spec_of(f, argv);
    spec.dir = "/nonexistent-drover/dir";
    assert_int_equal(ops->start(&f->loop, &spec, on_exit_release, f, &f->p, &err), -ENOENT);
    assert_non_null(strstr(err.msg, "/nonexistent-drover/dir"));
    char *none[] = {NULL};
    spec = spec_of(f, none);
    assert_int_equal(ops->start(&f->loop, &spec, on_exit_release, f, &f->p, &err), -EINVAL);
    assert_null(f->p);
}

static void test_probe(void **state)
{
    fx_t *f = *state;
    err_t err = {0}, err2 = {0};
    assert_int_equal(ops->probe(&err), 0);
    assert_string_equal(ops->name, "process");
    char plain[96];
    snprintf(plain, sizeof(plain), "%s/plain", f->dir);
    write_in(f, "plain", "not a program\n");
    setenv("DROVER_SHIM", "/nonexistent-drover/drover-shim", 1);
    int rc1 = ops->probe(&err);
    setenv("DROVER_SHIM", plain, 1);
    int rc2 = ops->probe(&err2);
    setenv("DROVER_SHIM", g_shim, 1);
    assert_int_equal(rc1, -ENOENT);
    assert_non_null(strstr(err.msg, "/nonexistent-drover/drover-shim"));
    assert_int_equal(rc2, -EACCES);
    assert_non_null(strstr(err2.msg, "plain"));
    char missing[256];
    unsigned mask = cgroup_probe(missing, sizeof(missing));
    if (mask == (1u << CGROUP_NCTRL) - 1)
        assert_string_equal(missing, "");
    else
        assert_true(strlen(missing) > 0);
    assert_true(cgroup_id_valid("web.1_a-B"));
    assert_false(cgroup_id_valid(".."));
    assert_false(cgroup_id_valid("a/b"));
    assert_false(cgroup_id_valid(""));
}

/* ---- logs ------------------------------------------------------------- */

static void test_logs_captured(void **state)
{
    fx_t *f = *state;
    char *argv[] = {"sh", "-c", "echo out; echo err >&2; echo out2; read x; echo \"[$x]\"", NULL};
    isolate_exit_t how = run_to_end(f, argv);
    assert_string_equal(how.reason, "exited with status 0");
    char *out = read_in(f, "stdout.log"), *err = read_in(f, "stderr.log");
    assert_string_equal(out, "out\nout2\n[]\n"); /* stdin is /dev/null */
    assert_string_equal(err, "err\n");
    free(out);
    free(err);
    /* a second run appends */
    f->exits = 0;
    how = run_to_end(f, argv);
    out = read_in(f, "stdout.log");
    assert_string_equal(out, "out\nout2\n[]\nout\nout2\n[]\n");
    free(out);
    /* the app gets exactly stdin, stdout and stderr: no descriptor of the
     * agent (this test's loop, its files) leaks through the shim */
    f->exits = 0;
    /* ls writes straight to the log: with a pipe (`| tr`), the shell
     * whose descriptors it lists would be holding the pipe's ends */
    char *argv_fds[] = {"sh", "-c", "ls /proc/$$/fd", NULL};
    how = run_to_end(f, argv_fds);
    assert_string_equal(how.reason, "exited with status 0");
    out = read_in(f, "stdout.log");
    assert_string_equal(out, "out\nout2\n[]\nout\nout2\n[]\n0\n1\n2\n");
    free(out);
}

static void test_log_rotation(void **state)
{
    fx_t *f = *state;
    /* 310 lines of 20 bytes = 6200 bytes through a 1000-byte limit */
    char *argv[] = {"sh", "-c",
                    "i=1000; while [ $i -lt 1310 ]; do echo \"line $i xxxxxxxxx\"; "
                    "i=$((i+1)); done; echo tail >&2",
                    NULL};
    isolate_spec_t spec = spec_of(f, argv);
    spec.log_max_bytes = 1000;
    spec.log_keep = 2;
    start_ok(f, &spec);
    assert_true(run_until(f, &f->exits, 1, 10000));
    assert_string_equal(f->how.reason, "exited with status 0");
    assert_true(file_size(f, "stdout.log") > 0);
    assert_int_equal(file_size(f, "stdout.log.1"), 1000);
    assert_int_equal(file_size(f, "stdout.log.2"), 1000);
    assert_int_equal(file_size(f, "stdout.log.3"), -1);
    assert_true(file_size(f, "stdout.log") <= 1000);
    char *cur = read_in(f, "stdout.log"), *prev = read_in(f, "stdout.log.1");
    /* the newest lines are kept, whole, in order */
    size_t n = strlen(cur);
    assert_true(n >= 20 && n % 20 == 0);
    assert_string_equal(cur + n - 20, "line 1309 xxxxxxxxx\n");
    assert_true(strncmp(prev, "line ", 5) == 0);
    long first_cur = strtol(cur + 5, NULL, 10), last_prev = strtol(prev + 1000 - 15, NULL, 10);
    assert_int_equal(first_cur, last_prev + 1);
    free(cur);
    free(prev);
    char *err = read_in(f, "stderr.log");
    assert_string_equal(err, "tail\n");
    free(err);
}

/* Descendants that keep the pipes open must not keep the shim (and the
 * exit record) waiting: it stops reading about a second after the app. */
static void test_descendant_holds_pipes(void **state)
{
    fx_t *f = *state;
    char *argv[] = {"sh", "-c", "sleep 30 & echo started; exit 4", NULL};
    int64_t t0 = mono_ms();
    isolate_exit_t how = run_to_end(f, argv);
    int64_t took = mono_ms() - t0;
    assert_string_equal(how.reason, "exited with status 4");
    assert_true(took >= 900 && took < 4000);
    char *out = read_in(f, "stdout.log");
    assert_string_equal(out, "started\n");
    free(out);
    if (have_cgroups()) {
        assert_int_equal(cgroup_count(f->id), 1); /* the sleep is still there */
        /* cleanup of the ended instance takes it and the groups away */
        assert_int_equal(ops->cleanup(f->id, f->dir), 0);
        assert_int_equal(cgroup_count(f->id), 0);
        char path[256];
        assert_int_equal(cgroup_path(CGROUP_PIDS, f->id, path, sizeof(path)), 0);
        assert_int_equal(access(path, F_OK), -1);
    }
}

/* ---- signals and kill_all -------------------------------------------- */

static void test_signal_term(void **state)
{
    fx_t *f = *state;
    char *argv[] = {"sleep", "100", NULL};
    isolate_spec_t spec = spec_of(f, argv);
    start_ok(f, &spec);
    /* at once: the app may not even be forked yet */
    int64_t t0 = mono_ms();
    assert_int_equal(ops->signal(f->p, SIGTERM), 0);
    assert_true(run_until(f, &f->exits, 1, 5000));
    assert_true(mono_ms() - t0 < 3000);
    assert_int_equal(f->how.signal, SIGTERM);
    assert_int_equal(f->how.exit_code, -1);
    assert_string_equal(f->how.reason, "killed by signal 15 (Terminated)");

    /* and once it surely runs, through app.pid */
    f->exits = 0;
    start_ok(f, &spec);
    pid_t app = wait_app_pid(f);
    nap_ms(50);
    assert_int_equal(ops->pid(f->p), app);
    assert_true(alive(app));
    assert_int_equal(ops->signal(f->p, SIGINT), 0);
    assert_true(run_until(f, &f->exits, 1, 5000));
    assert_int_equal(f->how.signal, SIGINT);
    assert_false(alive(app));
}

static void test_kill_all_escaped(void **state)
{
    fx_t *f = *state;
    if (!have_cgroups())
        skip();
    /* ignores SIGTERM; its child leaves the process group (new session) */
    char *argv[] = {"sh", "-c",
                    "trap '' TERM; setsid sleep 100 & echo $! > esc.pid; exec sleep 100", NULL};
    isolate_spec_t spec = spec_of(f, argv);
    spec.cwd = f->dir;
    start_ok(f, &spec);
    pid_t app = wait_app_pid(f);
    pid_t esc = 0;
    for (int i = 0; i < 400 && (esc <= 0 || cgroup_count(f->id) < 2); i++) {
        nap_ms(5);
        esc = read_pid_in(f, "esc.pid");
    }
    assert_true(esc > 0);
    assert_int_equal(cgroup_count(f->id), 2);
    for (int i = 0; i < 200 && getpgid(esc) == app; i++)
        nap_ms(5);
    assert_true(getpgid(esc) != app);

    assert_int_equal(ops->signal(f->p, SIGTERM), 0);
    run_for(f, 200);
    assert_int_equal(f->exits, 0);
    assert_true(alive(app));
    assert_true(alive(esc));

    assert_int_equal(ops->kill_all(f->p), 0);
    assert_int_equal(cgroup_count(f->id), 0);
    assert_true(run_until(f, &f->exits, 1, 5000));
    assert_int_equal(f->how.signal, SIGKILL);
    assert_false(alive(app));
    assert_false(alive(esc));
    assert_int_equal(ops->cleanup(f->id, f->dir), 0);
    char path[256];
    assert_int_equal(cgroup_path(CGROUP_MEMORY, f->id, path, sizeof(path)), 0);
    assert_int_equal(access(path, F_OK), -1);
}

/* ---- limits ----------------------------------------------------------- */

static void test_oom(void **state)
{
    fx_t *f = *state;
    if (!have_cgroups())
        skip();
    char *argv[] = {"/usr/bin/python3", "-c", "b = b'x' * (100 << 20); print('survived')", NULL};
    isolate_spec_t spec = spec_of(f, argv);
    spec.mem_bytes = 32 << 20;
    start_ok(f, &spec);
    assert_true(run_until(f, &f->exits, 1, 15000));
    assert_true(f->how.oom);
    assert_int_equal(f->how.signal, SIGKILL);
    assert_string_equal(f->how.reason, "out of memory (limit 32 MiB)");
    char *out = read_in(f, "stdout.log");
    assert_null(strstr(out, "survived"));
    free(out);
    /* the same id again starts from a fresh group: no OOM carried over */
    f->exits = 0;
    char *argv2[] = {"true", NULL};
    spec = spec_of(f, argv2);
    spec.mem_bytes = 32 << 20;
    start_ok(f, &spec);
    assert_true(run_until(f, &f->exits, 1, 10000));
    assert_false(f->how.oom);
    assert_string_equal(f->how.reason, "exited with status 0");
}

static void assert_cg_file(cgroup_ctrl_t c, const char *id, const char *file, const char *want)
{
    char path[512];
    assert_int_equal(cgroup_path(c, id, path, 256), 0);
    strcat(path, "/");
    strcat(path, file);
    char *s = read_path(path);
    assert_non_null(s);
    assert_string_equal(s, want);
    free(s);
}

static void test_limits_written(void **state)
{
    fx_t *f = *state;
    if (!have_cgroups())
        skip();
    char *argv[] = {"sleep", "100", NULL};
    isolate_spec_t spec = spec_of(f, argv);
    spec.cpus = 0.5;
    spec.mem_bytes = 64 << 20;
    spec.pids_max = 50;
    start_ok(f, &spec);
    assert_cg_file(CGROUP_CPU, f->id, "cpu.cfs_period_us", "100000\n");
    assert_cg_file(CGROUP_CPU, f->id, "cpu.cfs_quota_us", "50000\n");
    assert_cg_file(CGROUP_PIDS, f->id, "pids.max", "50\n");
    assert_cg_file(CGROUP_MEMORY, f->id, "memory.limit_in_bytes", "67108864\n");
    /* the app is inside every group */
    pid_t app = wait_app_pid(f);
    char want[32];
    snprintf(want, sizeof(want), "%d\n", (int)app);
    for (int i = 0; i < 200 && cgroup_count(f->id) < 1; i++)
        nap_ms(5);
    assert_cg_file(CGROUP_CPU, f->id, "cgroup.procs", want);
    assert_cg_file(CGROUP_PIDS, f->id, "cgroup.procs", want);
    assert_cg_file(CGROUP_MEMORY, f->id, "cgroup.procs", want);
    /* neither the directory nor the id can be used twice at once */
    isolate_proc_t *other = NULL;
    err_t err = {0};
    assert_int_equal(ops->start(&f->loop, &spec, on_exit_release, f, &other, &err), -EBUSY);
    assert_non_null(strstr(err.msg, "in use by monitor"));
    char dir2[96];
    snprintf(dir2, sizeof(dir2), "%s/second", f->dir);
    assert_int_equal(mkdir(dir2, 0755), 0);
    spec.dir = dir2;
    assert_int_equal(ops->start(&f->loop, &spec, on_exit_release, f, &other, &err), -EBUSY);
    assert_non_null(strstr(err.msg, "still holds"));
    assert_null(other);
    assert_true(alive(app));
    assert_int_equal(ops->kill_all(f->p), 0);
    assert_true(run_until(f, &f->exits, 1, 5000));

    /* pids.max is enforced: 3 processes at most */
    f->exits = 0;
    char *argv2[] = {"sh", "-c", "sleep 5 & sleep 5 & sleep 5 & sleep 5 & echo done", NULL};
    spec = spec_of(f, argv2);
    spec.pids_max = 3;
    start_ok(f, &spec);
    assert_true(run_until(f, &f->exits, 1, 10000));
    assert_true(cgroup_count(f->id) <= 3);
    char *errlog = read_in(f, "stderr.log");
    assert_true(strlen(errlog) > 0); /* the shell could not fork them all */
    free(errlog);
}

static void test_harden(void **state)
{
    fx_t *f = *state;
    char host[256] = "";
    gethostname(host, sizeof(host));
    char *argv[] = {"sh", "-c",
                    "hostname drover-hardened && hostname; grep NoNewPrivs /proc/self/status",
                    NULL};
    isolate_spec_t spec = spec_of(f, argv);
    spec.harden = true;
    start_ok(f, &spec);
    assert_true(run_until(f, &f->exits, 1, 10000));
    assert_string_equal(f->how.reason, "exited with status 0");
    char *out = read_in(f, "stdout.log");
    assert_string_equal(out, "drover-hardened\nNoNewPrivs:\t1\n");
    free(out);
    char after[256] = "";
    gethostname(after, sizeof(after));
    assert_string_equal(after, host); /* the UTS namespace kept it inside */
}

/* ---- the monitor ------------------------------------------------------ */

static void test_shim_survives_signals(void **state)
{
    fx_t *f = *state;
    char *argv[] = {"sleep", "100", NULL};
    isolate_spec_t spec = spec_of(f, argv);
    start_ok(f, &spec);
    pid_t app = wait_app_pid(f);
    pid_t shim = read_pid_in(f, "shim.pid");
    assert_true(shim > 0);
    assert_int_equal(getsid(shim), shim); /* its own session */
    assert_int_equal(kill(shim, SIGTERM), 0);
    assert_int_equal(kill(shim, SIGINT), 0);
    assert_int_equal(kill(shim, SIGHUP), 0);
    run_for(f, 200);
    assert_int_equal(f->exits, 0);
    assert_true(alive(shim));
    assert_true(alive(app));
    assert_int_equal(ops->kill_all(f->p), 0);
    assert_true(run_until(f, &f->exits, 1, 5000));
    assert_string_equal(f->how.reason, "killed by signal 9 (Killed)");
    assert_false(alive(shim));
}

static void test_monitor_killed(void **state)
{
    fx_t *f = *state;
    char *argv[] = {"sleep", "100", NULL};
    isolate_spec_t spec = spec_of(f, argv);
    start_ok(f, &spec);
    pid_t app = wait_app_pid(f);
    pid_t shim = read_pid_in(f, "shim.pid");
    nap_ms(50);
    assert_int_equal(kill(shim, SIGKILL), 0);
    assert_true(run_until(f, &f->exits, 1, 5000));
    assert_string_equal(f->how.reason, "monitor died: exit status unknown");
    assert_int_equal(f->how.exit_code, -1);
    for (int i = 0; i < 100 && alive(app); i++)
        nap_ms(5);
    assert_false(alive(app)); /* nothing left behind */
    assert_false(alive(shim));
}

/* ---- adoption --------------------------------------------------------- */

static void test_adopt_after_release(void **state)
{
    fx_t *f = *state;
    char *argv[] = {"sleep", "2", NULL};
    isolate_spec_t spec = spec_of(f, argv);
    start_ok(f, &spec);
    pid_t app = wait_app_pid(f);
    ops->release(f->p);
    f->p = NULL;
    run_for(f, 50);
    assert_int_equal(f->exits, 0);
    assert_true(alive(app)); /* release leaves the instance running */

    isolate_exit_t how;
    err_t err = {0};
    char dir_slash[80];
    snprintf(dir_slash, sizeof(dir_slash), "%s/", f->dir); /* same dir, other spelling */
    int rc = ops->adopt(&f->loop, dir_slash, on_exit_release, f, &f->p, &how, &err);
    if (rc < 0)
        fail_msg("adopt: %s", err.msg);
    assert_int_equal(rc, 1);
    assert_non_null(f->p);
    assert_int_equal(ops->pid(f->p), app);
    assert_true(run_until(f, &f->exits, 1, 5000));
    assert_string_equal(f->how.reason, "exited with status 0");
    assert_false(alive(app));
}

static void test_adopt_ended(void **state)
{
    fx_t *f = *state;
    char *argv[] = {"sh", "-c", "exit 7", NULL};
    run_to_end(f, argv);
    isolate_proc_t *p = NULL;
    isolate_exit_t how;
    memset(&how, 0, sizeof(how));
    err_t err = {0};
    assert_int_equal(ops->adopt(&f->loop, f->dir, on_exit_release, f, &p, &how, &err), 0);
    assert_null(p);
    assert_int_equal(how.exit_code, 7);
    assert_false(how.start_failed);
    assert_string_equal(how.reason, "exited with status 7");
    assert_int_equal(how.ended_at_ms, f->how.ended_at_ms);

    /* an empty directory holds no instance */
    char empty[96];
    snprintf(empty, sizeof(empty), "%s/empty", f->dir);
    assert_int_equal(mkdir(empty, 0755), 0);
    assert_int_equal(ops->adopt(&f->loop, empty, on_exit_release, f, &p, &how, &err), -ENOENT);
    assert_int_equal(
        ops->adopt(&f->loop, "/nonexistent-drover", on_exit_release, f, &p, &how, &err), -ENOENT);
    assert_null(p);
}

static void test_adopt_stale_pid(void **state)
{
    fx_t *f = *state;
    /* shim.pid names a live process that is not a shim: this very test */
    char line[32];
    snprintf(line, sizeof(line), "%d\n", (int)getpid());
    write_in(f, "shim.pid", line);
    isolate_proc_t *p = NULL;
    isolate_exit_t how;
    err_t err = {0};
    assert_int_equal(ops->adopt(&f->loop, f->dir, on_exit_release, f, &p, &how, &err), 0);
    assert_null(p);
    assert_string_equal(how.reason, "monitor died: exit status unknown");
    assert_true(how.ended_at_ms > 0);

    /* a live drover-shim, but for another directory: not ours either */
    char gdir[128], gid[128];
    snprintf(gdir, sizeof(gdir), "%s/other", f->dir);
    assert_int_equal(mkdir(gdir, 0755), 0);
    snprintf(gid, sizeof(gid), "%s-other", f->id);
    char *argv[] = {"sleep", "100", NULL};
    isolate_spec_t spec = {.instance_id = gid, .dir = gdir, .argv = argv, .envp = environ};
    isolate_proc_t *gp = NULL;
    assert_int_equal(ops->start(&f->loop, &spec, on_exit_release, f, &gp, &err), 0);
    pid_t other_app = 0;
    for (int i = 0; i < 400 && other_app <= 0; i++) {
        nap_ms(5);
        other_app = ops->pid(gp);
    }
    assert_true(other_app > 0);
    char path[160];
    snprintf(path, sizeof(path), "%s/shim.pid", gdir);
    char *other_shim = read_path(path);
    assert_non_null(other_shim);
    write_in(f, "shim.pid", other_shim);
    free(other_shim);
    /* with a record of its own, the stale directory reports it */
    write_in(f, "exit.json",
             "{\"exit_code\":2,\"signal\":0,\"oom\":false,\"start_failed\":false,"
             "\"ended_at_ms\":1234,\"reason\":\"exited with status 2\"}\n");
    assert_int_equal(ops->adopt(&f->loop, f->dir, on_exit_release, f, &p, &how, &err), 0);
    assert_null(p);
    assert_int_equal(how.exit_code, 2);
    assert_int_equal(how.ended_at_ms, 1234);
    /* the other instance was not touched */
    assert_true(alive(other_app));
    f->p = gp;
    assert_int_equal(ops->kill_all(gp), 0);
    assert_true(run_until(f, &f->exits, 1, 5000));
    assert_int_equal(ops->cleanup(gid, gdir), 0);
}

/* ---- the app's pid from the monitor ---------------------------------- */

typedef struct pid_seen {
    fx_t *f;
    int calls;
    pid_t pid;
    int exits_before; /* exits counted when on_pid ran */
} pid_seen_t;

static void on_pid_record(isolate_proc_t *p, pid_t pid, void *data)
{
    pid_seen_t *ps = data;
    assert_ptr_equal(p, ps->f->p);
    ps->calls++;
    ps->pid = pid;
    ps->exits_before = ps->f->exits;
}

static void on_exit_release_seen(isolate_proc_t *p, const isolate_exit_t *how, void *data)
{
    pid_seen_t *ps = data;
    on_exit_release(p, how, ps->f);
}

/* on_pid tells the app's pid once, without anyone polling app.pid, and it
 * is the pid of the app's process group leader that app.pid names. */
static void test_on_pid(void **state)
{
    fx_t *f = *state;
    pid_seen_t ps = {.f = f};
    char *argv[] = {"sleep", "30", NULL};
    isolate_spec_t spec = spec_of(f, argv);
    spec.on_pid = on_pid_record;
    err_t err = {0};
    int64_t t0 = mono_ms();
    assert_int_equal(ops->start(&f->loop, &spec, on_exit_release_seen, &ps, &f->p, &err), 0);
    assert_true(run_until(f, &ps.calls, 1, 5000));
    assert_true(mono_ms() - t0 < 5000);
    assert_int_equal(ps.calls, 1);
    assert_true(ps.pid > 0);
    assert_int_equal(ps.pid, read_pid_in(f, "app.pid"));
    assert_int_equal(ops->pid(f->p), ps.pid);
    assert_true(alive(ps.pid));
    assert_int_equal(getpgid(ps.pid), ps.pid);
    /* said once only */
    run_for(f, 100);
    assert_int_equal(ps.calls, 1);
    ops->kill_all(f->p);
    assert_true(run_until(f, &f->exits, 1, 5000));
    assert_int_equal(ps.calls, 1);
}

/* The pipe the pid comes on is the monitor's, not the app's: the app
 * holds no descriptor beyond its stdio. */
static void test_on_pid_not_inherited(void **state)
{
    fx_t *f = *state;
    pid_seen_t ps = {.f = f};
    char *argv[] = {"sleep", "30", NULL};
    isolate_spec_t spec = spec_of(f, argv);
    spec.on_pid = on_pid_record;
    err_t err = {0};
    assert_int_equal(ops->start(&f->loop, &spec, on_exit_release_seen, &ps, &f->p, &err), 0);
    assert_true(run_until(f, &ps.calls, 1, 5000));
    /* exec'd by now? its command line says so */
    char path[64], *cmd = NULL;
    for (int i = 0; i < 400; i++) {
        snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)ps.pid);
        free(cmd);
        cmd = read_path(path);
        if (cmd && strcmp(cmd, "sleep") == 0)
            break;
        nap_ms(5);
    }
    assert_non_null(cmd);
    assert_string_equal(cmd, "sleep");
    free(cmd);
    int n = 0;
    for (int fd = 0; fd < 64; fd++) {
        struct stat st;
        snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)ps.pid, fd);
        if (stat(path, &st) == 0) {
            assert_true(fd <= 2);
            n++;
        }
    }
    assert_int_equal(n, 3);
}

/* A command that cannot start still gets a pid (the monitor forked before
 * exec failed) or none; either way the exit comes and nothing follows it. */
static void test_on_pid_exec_failure(void **state)
{
    fx_t *f = *state;
    pid_seen_t ps = {.f = f};
    char *argv[] = {"/nonexistent/drover-test-binary", NULL};
    isolate_spec_t spec = spec_of(f, argv);
    spec.on_pid = on_pid_record;
    err_t err = {0};
    assert_int_equal(ops->start(&f->loop, &spec, on_exit_release_seen, &ps, &f->p, &err), 0);
    assert_true(run_until(f, &f->exits, 1, 10000));
    assert_true(f->how.start_failed);
    run_for(f, 50);
    assert_true(ps.calls <= 1);
    if (ps.calls)
        assert_int_equal(ps.exits_before, 0);
}

/* ---- held starts ------------------------------------------------------- */

/* A held start forks, joins its cgroups and waits before its exec: the
 * command has not run (its marker file is absent, the pid still runs the
 * shim's image) until proceed; then it runs to its end as any other, and
 * holds no descriptor beyond its stdio (the hold pipe is not inherited). */
static void test_hold_then_proceed(void **state)
{
    fx_t *f = *state;
    pid_seen_t ps = {.f = f};
    char marker[128];
    snprintf(marker, sizeof(marker), "%s/ran", f->dir);
    char script[512];
    /* no pipe: the shell itself would hold its ends while ls lists it */
    snprintf(script, sizeof(script), "ls /proc/$$/fd > %s.fds; echo yes > %s", marker, marker);
    char *argv[] = {"/bin/sh", "-c", script, NULL};
    isolate_spec_t spec = spec_of(f, argv);
    spec.on_pid = on_pid_record;
    spec.hold = true;
    err_t err = {0};
    assert_int_equal(ops->start(&f->loop, &spec, on_exit_release_seen, &ps, &f->p, &err), 0);
    assert_true(run_until(f, &ps.calls, 1, 5000));
    run_for(f, 300);
    assert_int_equal(f->exits, 0);
    assert_true(alive(ps.pid));
    assert_int_equal(access(marker, F_OK), -1);
    char path[64], exe[4096];
    snprintf(path, sizeof(path), "/proc/%d/exe", (int)ps.pid);
    ssize_t n = readlink(path, exe, sizeof(exe) - 1);
    assert_true(n > 0);
    exe[n] = '\0';
    assert_non_null(strstr(exe, "drover-shim"));
    if (have_cgroups()) {
        /* contained before it runs anything */
        char procs[256];
        snprintf(procs, sizeof(procs), "/sys/fs/cgroup/pids/drover/%s/cgroup.procs", f->id);
        char *in = read_path(procs);
        assert_non_null(in);
        assert_int_equal(atoi(in), ps.pid);
        free(in);
    }
    assert_int_equal(ops->proceed(f->p), 0);
    assert_int_equal(ops->proceed(f->p), -EALREADY);
    assert_true(run_until(f, &f->exits, 1, 5000));
    assert_int_equal(f->how.exit_code, 0);
    char *ran = read_path(marker);
    assert_non_null(ran);
    assert_string_equal(ran, "yes\n");
    free(ran);
    char fdsfile[160];
    snprintf(fdsfile, sizeof(fdsfile), "%s.fds", marker);
    char *fds = read_path(fdsfile);
    assert_non_null(fds);
    /* the shell holds its stdio, and for the redirect a saved copy of
     * stdout at 10 or above (dash's); nothing in 3-9, where the shim's
     * ready and hold pipes were */
    int n0 = 0;
    for (char *line = strtok(fds, "\n"); line; line = strtok(NULL, "\n")) {
        int fd = atoi(line);
        if (fd >= 3 && fd < 10)
            fail_msg("descriptor %d leaked into the app", fd);
        n0 += fd <= 2;
    }
    assert_int_equal(n0, 3);
    free(fds);
}

/* A held start that is killed (or whose agent goes away: release) ends
 * without ever running its command. */
static void test_hold_then_kill_or_release(void **state)
{
    fx_t *f = *state;
    char marker[128];
    snprintf(marker, sizeof(marker), "%s/ran", f->dir);
    char script[256];
    snprintf(script, sizeof(script), "echo yes > %s", marker);
    char *argv[] = {"/bin/sh", "-c", script, NULL};
    for (int round = 0; round < 2; round++) {
        pid_seen_t ps = {.f = f};
        isolate_spec_t spec = spec_of(f, argv);
        spec.on_pid = on_pid_record;
        spec.hold = true;
        err_t err = {0};
        f->exits = 0;
        assert_int_equal(ops->start(&f->loop, &spec, on_exit_release_seen, &ps, &f->p, &err), 0);
        assert_true(run_until(f, &ps.calls, 1, 5000));
        run_for(f, 100);
        if (round == 0) {
            ops->kill_all(f->p);
            assert_true(run_until(f, &f->exits, 1, 5000));
            assert_true(f->how.start_failed || f->how.signal == SIGKILL);
        } else {
            /* released: the agent stops watching; EOF on the hold pipe
             * ends the parked child, and with it the shim */
            isolate_proc_t *p = f->p;
            f->p = NULL;
            ops->release(p);
            pid_t shim = read_pid_in(f, "shim.pid");
            int64_t until = mono_ms() + 5000;
            while (alive(shim) && mono_ms() < until) {
                run_for(f, 10);
            }
            assert_false(alive(shim));
            assert_false(alive(ps.pid));
            waitpid(shim, NULL, 0); /* ours to reap once released */
            char *x = read_in(f, "exit.json");
            assert_non_null(x);
            assert_non_null(strstr(x, "released before it started"));
            free(x);
        }
        assert_int_equal(access(marker, F_OK), -1);
    }
}

/* ---- sweep ------------------------------------------------------------ */

static void backdate_groups(const char *id, time_t secs)
{
    for (int c = 0; c < CGROUP_NCTRL; c++) {
        char dir[512];
        if (!(cgroup_usable() & (1u << c)) || cgroup_path((cgroup_ctrl_t)c, id, dir, sizeof(dir)))
            continue;
        struct timespec ts[2] = {{time(NULL) - secs, 0}, {time(NULL) - secs, 0}};
        assert_int_equal(utimensat(AT_FDCWD, dir, ts, 0), 0);
    }
}

static bool group_exists(const char *id)
{
    char dir[512];
    for (int c = 0; c < CGROUP_NCTRL; c++)
        if ((cgroup_usable() & (1u << c)) && !cgroup_path((cgroup_ctrl_t)c, id, dir, sizeof(dir)) &&
            access(dir, F_OK) == 0)
            return true;
    return false;
}

/* Empty groups older than the age go; young ones and ones holding a
 * process stay, whatever their age. */
static void test_sweep(void **state)
{
    fx_t *f = *state;
    if (!have_cgroups())
        skip();
    char old_id[96], young_id[96];
    snprintf(old_id, sizeof(old_id), "%s-old", f->id);
    snprintf(young_id, sizeof(young_id), "%s-young", f->id);
    cgroup_limits_t lim = {0};
    err_t err = {0};
    assert_int_equal(cgroup_create(old_id, &lim, &err), 0);
    assert_int_equal(cgroup_create(young_id, &lim, &err), 0);
    backdate_groups(old_id, 7200);
    /* a live instance's group, just as old */
    char *argv[] = {"sleep", "30", NULL};
    isolate_spec_t spec = spec_of(f, argv);
    start_ok(f, &spec);
    wait_app_pid(f);
    int64_t until = mono_ms() + 5000;
    while (cgroup_count(f->id) < 1 && mono_ms() < until)
        nap_ms(5);
    assert_int_equal(cgroup_count(f->id), 1);
    backdate_groups(f->id, 7200);

    assert_true(ops->sweep(3600) >= 1);
    assert_false(group_exists(old_id));
    assert_true(group_exists(young_id));
    assert_true(group_exists(f->id));
    assert_int_equal(cgroup_count(f->id), 1);
    cgroup_remove(young_id);
}

/* ---- scale ------------------------------------------------------------ */

static void on_exit_count(isolate_proc_t *p, const isolate_exit_t *how, void *data)
{
    (void)how;
    (*(int *)data)++;
    ops->release(p);
}

static void test_many_instances(void **state)
{
    fx_t *f = *state;
    enum { N = 200 };
    static isolate_proc_t *procs[N];
    static char ids[N][80];
    int ended = 0;
    char *argv[] = {"sleep", "30", NULL};
    int64_t t0 = mono_ms();
    for (int i = 0; i < N; i++) {
        char dir[96];
        snprintf(dir, sizeof(dir), "%s/i%03d", f->dir, i);
        assert_int_equal(mkdir(dir, 0755), 0);
        snprintf(ids[i], sizeof(ids[i]), "%s-%d", f->id, i);
        isolate_spec_t spec = {.instance_id = ids[i], .dir = dir, .argv = argv, .envp = environ};
        err_t err = {0};
        int rc = ops->start(&f->loop, &spec, on_exit_count, &ended, &procs[i], &err);
        if (rc)
            fail_msg("start %d: %s", i, err.msg);
    }
    int64_t t_start = mono_ms() - t0;
    /* wait until every app runs */
    int running = 0;
    for (int tries = 0; tries < 2000 && running < N; tries++) {
        running = 0;
        for (int i = 0; i < N; i++)
            running += ops->pid(procs[i]) > 0;
        if (running < N)
            nap_ms(5);
    }
    int64_t t_running = mono_ms() - t0;
    assert_int_equal(running, N);
    print_message("%d instances: started in %lld ms, all running after %lld ms\n", N,
                  (long long)t_start, (long long)t_running);
    assert_true(t_start < 10000);
    for (int i = 0; i < N; i++)
        ops->kill_all(procs[i]);
    assert_true(run_until(f, &ended, N, 15000));
    for (int i = 0; i < N; i++)
        assert_int_equal(ops->cleanup(ids[i], NULL), 0);
}

int main(void)
{
    if (!realpath("build/asan/drover-shim", g_shim)) {
        fprintf(stderr, "build/asan/drover-shim not found: run from the repo root after "
                        "`make build/asan/drover-shim`\n");
        return 1;
    }
    setenv("DROVER_SHIM", g_shim, 1);
    log_setup(LOG_WARN, LOG_TEXT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_probe, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_sweep, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_hold_then_proceed, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_hold_then_kill_or_release, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_exit_zero, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_exit_three, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_killed_by_signal, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_exec_failure, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_bad_cwd_and_env, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_start_errors, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_logs_captured, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_log_rotation, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_descendant_holds_pipes, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_signal_term, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_kill_all_escaped, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_oom, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_limits_written, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_harden, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_shim_survives_signals, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_monitor_killed, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_adopt_after_release, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_adopt_ended, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_adopt_stale_pid, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_on_pid, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_on_pid_not_inherited, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_on_pid_exec_failure, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_many_instances, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
