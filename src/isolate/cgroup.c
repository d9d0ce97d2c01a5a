#include "isolate/cgroup.h"

#include "core/err.h"
#include "core/str.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define CGROUP_ROOT        "/sys/fs/cgroup"
#define CGROUP_PARENT      "drover"
#define CGROUP_PATH_MAX    256
#define CGROUP_CFS_PERIOD  100000
#define CGROUP_KILL_ROUNDS 100
#define CGROUP_RMDIR_TRIES 50

static const char *const cgroup_names[CGROUP_NCTRL] = {"memory", "cpu", "pids"};
/* A file only the controller's own groups have: proof that the hierarchy
 * mounted there really carries the controller. */
static const char *const cgroup_key_files[CGROUP_NCTRL] = {"memory.limit_in_bytes",
                                                           "cpu.cfs_quota_us", "pids.max"};

static bool cgroup_probed;
static unsigned cgroup_mask;

const char *cgroup_ctrl_name(cgroup_ctrl_t c)
{
    return c < CGROUP_NCTRL ? cgroup_names[c] : "?";
}

bool cgroup_id_valid(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n > 128 || strcmp(id, ".") == 0 || strcmp(id, "..") == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

int cgroup_path(cgroup_ctrl_t c, const char *id, char *out, size_t n)
{
    if (c >= CGROUP_NCTRL || !cgroup_id_valid(id))
        return -EINVAL;
    int k = snprintf(out, n, "%s/%s/%s/%s", CGROUP_ROOT, cgroup_names[c], CGROUP_PARENT, id);
    return k < 0 || (size_t)k >= n ? -ENAMETOOLONG : 0;
}

static void cgroup_note_missing(char *missing, size_t n, cgroup_ctrl_t c, const char *path, int e)
{
    size_t used = strlen(missing);
    if (used + 1 >= n)
        return;
    snprintf(missing + used, n - used, "%s%s (%s: %s)", used ? ", " : "", cgroup_names[c], path,
             strerror(e));
}

unsigned cgroup_probe(char *missing, size_t n)
{
    unsigned mask = 0;
    if (missing && n)
        missing[0] = '\0';
    for (int c = 0; c < CGROUP_NCTRL; c++) {
        char dir[CGROUP_PATH_MAX], file[CGROUP_PATH_MAX + 64];
        snprintf(dir, sizeof(dir), "%s/%s/%s", CGROUP_ROOT, cgroup_names[c], CGROUP_PARENT);
        const char *bad = dir;
        int e = 0;
        if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
            e = errno;
        } else {
            snprintf(file, sizeof(file), "%s/%s", dir, cgroup_key_files[c]);
            bad = file;
            if (access(file, W_OK) != 0) {
                e = errno;
            } else {
                snprintf(file, sizeof(file), "%s/cgroup.procs", dir);
                if (access(file, W_OK) != 0)
                    e = errno;
            }
        }
        if (e == 0)
            mask |= 1u << c;
        else if (missing && n)
            cgroup_note_missing(missing, n, (cgroup_ctrl_t)c, bad, e);
    }
    cgroup_mask = mask;
    cgroup_probed = true;
    return mask;
}

unsigned cgroup_usable(void)
{
    if (!cgroup_probed)
        cgroup_probe(NULL, 0);
    return cgroup_mask;
}

static int cgroup_write(const char *dir, const char *file, const char *value, err_t *err)
{
    char path[CGROUP_PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return err_set(err, -errno, "cgroup %s: %s", path, strerror(errno));
    size_t len = strlen(value);
    ssize_t w = write(fd, value, len);
    int e = w < 0 ? errno : EIO;
    close(fd);
    if (w != (ssize_t)len)
        return err_set(err, -e, "cgroup %s: writing %s: %s", path, value, strerror(e));
    return 0;
}

/* Call fn for every pid listed in dir/cgroup.procs. The list can be long
 * (a fork bomb up to pids.max), so it is parsed as it streams through a
 * small buffer instead of being read whole. Returns the count or -errno. */
static int cgroup_each_pid(const char *dir, void (*fn)(pid_t pid, void *arg), void *arg)
{
    char path[CGROUP_PATH_MAX + 64], b[4096];
    snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int count = 0;
    size_t have = 0;
    for (;;) {
        ssize_t r = read(fd, b + have, sizeof(b) - 1 - have);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        have += (size_t)r;
        b[have] = '\0';
        char *line = b, *nl;
        while ((nl = strchr(line, '\n')) != NULL || (r == 0 && *line)) {
            if (nl)
                *nl = '\0';
            int64_t pid;
            if (str_to_i64(line, 1, INT32_MAX, &pid) == 0) {
                count++;
                if (fn)
                    fn((pid_t)pid, arg);
            }
            line = nl ? nl + 1 : line + strlen(line);
        }
        have = (size_t)(b + have - line);
        memmove(b, line, have);
        if (r == 0 || have == sizeof(b) - 1)
            break;
    }
    close(fd);
    return count;
}

/* The group whose member list kill_all and count read: every process of the
 * instance joined all of them, so any usable one will do. */
static int cgroup_member_dir(const char *id, char *out, size_t n)
{
    static const cgroup_ctrl_t order[] = {CGROUP_PIDS, CGROUP_MEMORY, CGROUP_CPU};
    unsigned mask = cgroup_usable();
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++)
        if (mask & (1u << order[i]))
            return cgroup_path(order[i], id, out, n);
    return -ENOENT;
}

int cgroup_count(const char *id)
{
    char dir[CGROUP_PATH_MAX];
    int rc = cgroup_member_dir(id, dir, sizeof(dir));
    if (rc < 0)
        return rc == -ENOENT ? 0 : rc;
    rc = cgroup_each_pid(dir, NULL, NULL);
    return rc == -ENOENT ? 0 : rc;
}

int cgroup_create(const char *id, const cgroup_limits_t *lim, err_t *err)
{
    if (!cgroup_id_valid(id))
        return err_set(err, -EINVAL, "instance id \"%s\" is not a valid cgroup name", id ? id : "");
    if (lim->cpus < 0 || lim->cpus > 1e6 || lim->mem_bytes < 0 || lim->pids_max < 0)
        return err_set(err, -EINVAL, "negative or absurd limits");
    unsigned mask = cgroup_usable();
    char dirs[CGROUP_NCTRL][CGROUP_PATH_MAX];
    bool made[CGROUP_NCTRL] = {false};
    char v[32];
    int rc = 0;
    for (int c = 0; c < CGROUP_NCTRL && rc == 0; c++) {
        if (!(mask & (1u << c)))
            continue;
        rc = cgroup_path((cgroup_ctrl_t)c, id, dirs[c], sizeof(dirs[c]));
        if (rc < 0) {
            err_set(err, rc, "cgroup path for %s too long", id);
            break;
        }
        if (mkdir(dirs[c], 0755) != 0) {
            /* Left over from an earlier instance: start from a fresh group
             * so that its counters (oom_kill above all) start at zero. */
            int e = errno;
            int busy = e == EEXIST ? cgroup_each_pid(dirs[c], NULL, NULL) : 0;
            if (busy > 0) {
                rc = err_set(err, -EBUSY, "cgroup %s still holds %d processes", dirs[c], busy);
                break;
            }
            if (e == EEXIST)
                e = rmdir(dirs[c]) == 0 && mkdir(dirs[c], 0755) == 0 ? 0 : errno;
            if (e != 0) {
                rc = err_set(err, -e, "cgroup %s: %s", dirs[c], strerror(e));
                break;
            }
        }
        made[c] = true;
        switch ((cgroup_ctrl_t)c) {
        case CGROUP_MEMORY:
            snprintf(v, sizeof(v), "%lld", lim->mem_bytes > 0 ? (long long)lim->mem_bytes : -1LL);
            rc = cgroup_write(dirs[c], "memory.limit_in_bytes", v, err);
            break;
        case CGROUP_CPU: {
            long long quota = -1;
            if (lim->cpus > 0) {
                quota = (long long)(lim->cpus * CGROUP_CFS_PERIOD + 0.5);
                if (quota < 1000) /* the kernel's smallest quota */
                    quota = 1000;
            }
            /* quota first: a period shorter than the current quota is refused */
            rc = cgroup_write(dirs[c], "cpu.cfs_quota_us", "-1", err);
            if (rc == 0) {
                snprintf(v, sizeof(v), "%d", CGROUP_CFS_PERIOD);
                rc = cgroup_write(dirs[c], "cpu.cfs_period_us", v, err);
            }
            if (rc == 0) {
                snprintf(v, sizeof(v), "%lld", quota);
                rc = cgroup_write(dirs[c], "cpu.cfs_quota_us", v, err);
            }
            break;
        }
        case CGROUP_PIDS:
            if (lim->pids_max > 0)
                snprintf(v, sizeof(v), "%lld", (long long)lim->pids_max);
            else
                snprintf(v, sizeof(v), "max");
            rc = cgroup_write(dirs[c], "pids.max", v, err);
            break;
        default: break;
        }
    }
    if (rc < 0)
        for (int c = 0; c < CGROUP_NCTRL; c++)
            if (made[c])
                rmdir(dirs[c]);
    return rc;
}

static void cgroup_kill_one(pid_t pid, void *arg)
{
    (void)arg;
    kill(pid, SIGKILL);
}

static void cgroup_nap(long ns)
{
    struct timespec ts = {0, ns};
    nanosleep(&ts, NULL);
}

/* Read-kill-repeat: a process can fork between the read and the kill, and
 * its child only shows up in the next read. A process with SIGKILL pending
 * can no longer fork, so a few rounds empty the group; the loop bound only
 * matters for processes stuck in the kernel. */
int cgroup_kill_all(const char *id)
{
    char dir[CGROUP_PATH_MAX];
    int rc = cgroup_member_dir(id, dir, sizeof(dir));
    if (rc < 0)
        return rc == -ENOENT ? 0 : rc;
    for (int round = 0; round < CGROUP_KILL_ROUNDS; round++) {
        int n = cgroup_each_pid(dir, cgroup_kill_one, NULL);
        if (n == -ENOENT || n == 0)
            return 0;
        if (n < 0)
            return n;
        cgroup_nap(1000000);
    }
    return -EBUSY;
}

int cgroup_remove(const char *id)
{
    int rc = 0;
    for (int c = 0; c < CGROUP_NCTRL; c++) {
        char dir[CGROUP_PATH_MAX];
        int prc = cgroup_path((cgroup_ctrl_t)c, id, dir, sizeof(dir));
        if (prc < 0)
            return prc;
        for (int tries = 0;; tries++) {
            if (rmdir(dir) == 0 || errno == ENOENT)
                break;
            if (errno != EBUSY || tries == CGROUP_RMDIR_TRIES) {
                rc = -errno;
                break;
            }
            cgroup_nap(2000000);
        }
    }
    return rc;
}

int cgroup_sweep(int64_t min_age_s)
{
    unsigned mask = cgroup_usable();
    time_t now = time(NULL);
    int n = 0;
    for (int c = 0; c < CGROUP_NCTRL; c++) {
        if (!(mask & (1u << c)))
            continue;
        char parent[CGROUP_PATH_MAX];
        snprintf(parent, sizeof(parent), "%s/%s/%s", CGROUP_ROOT, cgroup_names[c], CGROUP_PARENT);
        DIR *d = opendir(parent);
        if (!d)
            continue;
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!cgroup_id_valid(e->d_name))
                continue;
            char dir[CGROUP_PATH_MAX];
            struct stat st;
            if (cgroup_path((cgroup_ctrl_t)c, e->d_name, dir, sizeof(dir)) < 0 ||
                stat(dir, &st) != 0 || !S_ISDIR(st.st_mode) || now - st.st_mtime < min_age_s)
                continue;
            if (rmdir(dir) == 0)
                n++;
        }
        closedir(d);
    }
    return n;
}
