/* sched/rollout: see rollout.h. */
#include "sched/rollout.h"

#include <math.h>
#include <string.h>

/* Instances of class cls on the same node as insts[i] that are not stopped. */
static size_t roll_node_load(const roll_inst_t *insts, size_t n, size_t i)
{
    size_t c = 0;
    for (size_t k = 0; k < n; k++)
        if (!insts[k].stop && insts[k].node == insts[i].node)
            c++;
    return c;
}

/* Mark up to `count` instances of class cls for stopping: unhealthy ones
 * first (they serve nothing), then from the node with the most instances
 * (keeps the spread), later index first. Returns how many were marked. */
static int64_t roll_stop(roll_inst_t *insts, size_t n, roll_class_t cls, int64_t count,
                         bool healthy_too)
{
    int64_t done = 0;
    while (done < count) {
        size_t best = n, best_load = 0;
        bool best_healthy = true;
        for (size_t i = n; i-- > 0;) {
            if (insts[i].cls != cls || insts[i].stop || (insts[i].healthy && !healthy_too))
                continue;
            size_t load = roll_node_load(insts, n, i);
            bool better = best == n || (best_healthy && !insts[i].healthy) ||
                          (best_healthy == insts[i].healthy && load > best_load);
            if (better) {
                best = i;
                best_load = load;
                best_healthy = insts[i].healthy;
            }
        }
        if (best == n)
            break;
        insts[best].stop = true;
        done++;
    }
    return done;
}

void roll_plan(const roll_in_t *in, roll_inst_t *insts, size_t n, roll_out_t *out)
{
    memset(out, 0, sizeof(*out));
    for (size_t i = 0; i < n; i++) {
        insts[i].stop = false;
        switch (insts[i].cls) {
        case ROLL_MAIN: out->main++, out->main_healthy += insts[i].healthy; break;
        case ROLL_CANARY: out->canary++, out->canary_healthy += insts[i].healthy; break;
        case ROLL_OLD: out->old++, out->old_healthy += insts[i].healthy; break;
        }
    }
    int64_t want = in->want < 0 ? 0 : in->want;
    int64_t want_canary = in->want_canary < 0 ? 0 : in->want_canary;

    /* canary: to its own count */
    if (out->canary > want_canary)
        out->n_stop += (size_t)roll_stop(insts, n, ROLL_CANARY, out->canary - want_canary, true);
    else
        out->start_canary = want_canary - out->canary;

    int64_t min_healthy = (int64_t)ceil((double)want * in->min_health - 1e-9);
    int64_t max_total = want + (int64_t)floor((double)want * in->max_over + 1e-9);
    if (max_total == want && min_healthy >= want && want > 0 && out->old > 0)
        max_total = want + 1;

    int64_t main = out->main, old = out->old;
    /* main beyond its count: the surplus goes, unhealthy first */
    if (main > want) {
        int64_t s = roll_stop(insts, n, ROLL_MAIN, main - want, true);
        out->n_stop += (size_t)s;
        main -= s;
    }
    if (old > 0) {
        /* old ones that serve nothing go at once */
        int64_t s = roll_stop(insts, n, ROLL_OLD, old - out->old_healthy, false);
        out->n_stop += (size_t)s;
        old -= s;
        int64_t main_healthy = out->main_healthy > want ? want : out->main_healthy;
        /* healthy old ones go as far as the healthy floor allows */
        int64_t spare = out->old_healthy + main_healthy - min_healthy;
        if (spare > 0) {
            s = roll_stop(insts, n, ROLL_OLD, spare, true);
            out->n_stop += (size_t)s;
            old -= s;
        }
    }
    if (main < want) {
        int64_t room = max_total - (main + old);
        int64_t need = want - main;
        out->start_main = room < need ? (room > 0 ? room : 0) : need;
    }
    out->done = out->old == 0 && out->main == want && out->main_healthy == want &&
                out->canary == want_canary && out->canary_healthy == want_canary;
}
