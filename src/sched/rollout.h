/* sched/rollout: one step of moving an app's instances towards what its
 * current version (and canary) want, within the upgrade strategy's bounds.
 * Pure: the scheduler calls it on every reconcile with what runs now and
 * applies the answer (stop these, start that many); repeated calls make a
 * rolling upgrade, a scale, or nothing once converged.
 *
 * Rules (Marathon's upgradeStrategy, docs/api.md#deployments):
 *  - at least ceil(min_health x want) main+old instances stay healthy;
 *  - at most want + floor(max_over x want) main+old instances run (with
 *    1 and 0, one extra is allowed, else nothing could move);
 *  - old instances that are not healthy go at once (they serve nothing);
 *  - canary instances sit outside both bounds: they are started or stopped
 *    to their own count. */
#ifndef DROVER_SCHED_ROLLOUT_H
#define DROVER_SCHED_ROLLOUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { ROLL_MAIN = 0, ROLL_CANARY = 1, ROLL_OLD = 2 } roll_class_t;

typedef struct roll_inst {
    roll_class_t cls;
    bool healthy;
    int node;   /* for spreading stops: instances on the busiest node go first */
    bool stop;  /* out: stop this instance */
} roll_inst_t;

typedef struct roll_in {
    int64_t want;        /* main instances */
    int64_t want_canary; /* canary instances (0: no canary) */
    double min_health;   /* 0..1 */
    double max_over;     /* 0..1 */
} roll_in_t;

typedef struct roll_out {
    int64_t start_main, start_canary; /* how many to start now */
    size_t n_stop;                    /* how many insts[i].stop were set */
    /* counts before this step */
    int64_t main, main_healthy, old, old_healthy, canary, canary_healthy;
    bool done; /* nothing old left, counts met, everything healthy */
} roll_out_t;

/* insts[i].stop is set for each instance to stop now. */
void roll_plan(const roll_in_t *in, roll_inst_t *insts, size_t n, roll_out_t *out);

#endif
