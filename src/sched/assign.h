/* sched/assign: placeholder placement of app instances onto registered
 * nodes, until the scheduler lands (it replaces this module).
 *
 * It keeps, in memory, the apps (/apps/), the live nodes (/nodes/), the
 * assignments (/assign/<node>/<inst>) and the reported instances
 * (/instances/), follows every change through one store watch, and after a
 * relevant change reconciles (coalesced over 20 ms, one reconcile at a
 * time):
 *  - each app gets exactly spec.instances assignments of its current
 *    version; assignments of other versions, of deleted apps and beyond the
 *    count are deleted (all at once: no rolling upgrade yet);
 *  - a missing assignment goes to the live node with the fewest
 *    assignments (ties by node id) whose "isolates" holds spec.isolate;
 *  - a node whose key is gone (lease expired) loses its assignments, and
 *    their instances that are not finished yet are marked "lost"; the app
 *    gets replacements by the rule above.
 * Writes are batched in store transactions of at most STORE_TXN_OPS_MAX
 * ops. An assignment is {"id", "app", "version", "node", "spec"} with the
 * app's normalized spec of that version.
 *
 * Threading: everything runs on the store's loop thread. */
#ifndef DROVER_SCHED_ASSIGN_H
#define DROVER_SCHED_ASSIGN_H

#include "core/err.h"
#include "store/store.h"

#include <stdint.h>
#include <uv.h>

typedef struct sched_assign sched_assign_t;

/* Start reading and watching `store` (borrowed; must outlive the
 * placement). Returns 0 with *out set, or a negative errno (nothing to
 * free). Store failures later are logged and retried. */
int sched_assign_start(uv_loop_t *loop, store_t *store, sched_assign_t **out, err_t *err);
/* Stop: cancel the watch, let an in-flight store write finish, free
 * everything, then call done(data) (done may be NULL). Call it before
 * closing the store. */
void sched_assign_stop(sched_assign_t *a, void (*done)(void *data), void *data);

/* Replace the instances of a node whose lease expired only after `ms`
 * (0, the default: at once); a node back within the delay keeps them. */
void sched_assign_set_lost_delay(sched_assign_t *a, uint64_t ms);

/* Build the instance id for app `app_id` ("/production/web"): the app's
 * segments joined by '_', a '.', and 12 random lowercase hex digits
 * ("production_web.5f2c9a1b3d4e"). malloc'd. */
char *sched_instance_id_new(const char *app_id);

#endif
