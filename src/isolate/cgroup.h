/* cgroup: the cgroup v1 groups that contain one instance of the process
 * isolate, /sys/fs/cgroup/<controller>/drover/<instance_id> for each of the
 * memory, cpu and pids controllers the node can use.
 *
 * The agent creates them and writes the limits; the app's process moves
 * itself in before exec (drover-shim), so everything it starts is counted
 * and can be killed together, including descendants that left its process
 * group. The shim stays outside, so killing the group never kills the
 * monitor that records how the app ended.
 *
 * Private to src/isolate. All calls are short file operations on cgroupfs;
 * kill_all and remove wait a few milliseconds at most. */
#ifndef DROVER_ISOLATE_CGROUP_H
#define DROVER_ISOLATE_CGROUP_H

#include "core/err.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum cgroup_ctrl {
    CGROUP_MEMORY = 0,
    CGROUP_CPU = 1,
    CGROUP_PIDS = 2,
    CGROUP_NCTRL = 3,
} cgroup_ctrl_t;

typedef struct cgroup_limits {
    double cpus;       /* cores; 0 = no quota */
    int64_t mem_bytes; /* 0 = no limit */
    int64_t pids_max;  /* 0 = no limit */
} cgroup_limits_t;

/* Bit (1u << ctrl) set for each controller drover can use: mounted as v1,
 * and drover/ under it exists (created here) and is writable. Probed on the
 * first call, then cached for the life of the process. */
unsigned cgroup_usable(void);

/* Probe again (ignoring the cache) and describe the missing controllers in
 * `missing` ("pids (/sys/fs/cgroup/pids: No such file or directory)"),
 * empty when all are usable. Returns the mask. */
unsigned cgroup_probe(char *missing, size_t n);

/* "memory", "cpu", "pids". */
const char *cgroup_ctrl_name(cgroup_ctrl_t c);

/* Instance ids become directory names: 1..128 of [A-Za-z0-9._-], not "."
 * or "..". */
bool cgroup_id_valid(const char *id);

/* Fill out with /sys/fs/cgroup/<ctrl>/drover/<id>. -ENAMETOOLONG or
 * -EINVAL (bad id). */
int cgroup_path(cgroup_ctrl_t c, const char *id, char *out, size_t n);

/* Create the instance's groups under every usable controller and write the
 * limits (memory.limit_in_bytes; cpu.cfs_period_us = 100000 and
 * cfs_quota_us = cpus * 100000; pids.max). A group left over from an
 * earlier instance with the same id is replaced by a fresh one when empty,
 * -EBUSY when it still holds processes. On failure nothing is left behind. */
int cgroup_create(const char *id, const cgroup_limits_t *lim, err_t *err);

/* Number of processes in the instance's groups (the first usable of pids,
 * memory, cpu); 0 when it has none or no group; negative errno on a read
 * error other than ENOENT. */
int cgroup_count(const char *id);

/* SIGKILL every process in the instance's groups, reading them again until
 * they are empty (bounded: about 100 ms). 0 when empty, -EBUSY when
 * processes remain (in uninterruptible sleep, say). */
int cgroup_kill_all(const char *id);

/* rmdir the instance's groups, retrying briefly while the last processes
 * are still exiting. 0 also when they never existed. */
int cgroup_remove(const char *id);

/* rmdir every group under drover/ of every usable controller whose
 * directory is at least min_age_s old and holds no process (the kernel
 * refuses rmdir of a group that has one, so a live instance's group is
 * never touched): what agents that were killed left behind for data
 * directories nobody starts again. Returns how many were removed. */
int cgroup_sweep(int64_t min_age_s);

#endif
