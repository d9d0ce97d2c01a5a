/* locator/ketama: weighted consistent hashing for routing groups (see
 * ketama.h for the model).
 *
 * Why more points than libketama, and why the tuning rounds: the share of
 * the ring a member owns is the sum of the gaps before its points, and
 * with P random points that share is off its expected value by about
 * sqrt(share * (1 - share) / P). libketama's 160 points per member gives
 * P = 320 for a two-member canary: a 90/10 group routinely sends 8% or 12%
 * to the canary, and a 50/30/20 group measured 2.5 percentage points off in
 * the median case. KETAMA_STEPS_MIN (16384 points) brings that to about
 * 0.4 points; a few rounds of scaling each member's step count by
 * target/actual then aim for KETAMA_TOLERANCE_DIV (0.025 points), the
 * rounding to whole steps being the limit: over 1800 random groups of 2 to
 * 4 members the worst member was 0.13 points off its weight. A build costs
 * about 20 ms (16k MD5s and up to ten sorts), paid once per group change.
 * Scaling keeps each member's points a prefix of its MD5 sequence, so a
 * small weight change still moves few seeds. */
#include "locator/ketama.h"

#include "core/alloc.h"

#include <errno.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define KETAMA_RING   ((uint64_t)1 << 32)
#define KETAMA_ROUNDS 10

struct ketama {
    size_t n;
    char **names;      /* sorted by strcmp */
    uint32_t *weights; /* in name order */
    uint64_t *arcs;    /* ring positions each member owns */
    ketama_point_t *points;
    size_t n_points;
};

/* ---- MD5 -------------------------------------------------------------- */

/* One fetched MD5 for the whole process: OpenSSL 3 looks the algorithm up
 * on every init when given EVP_md5(), which would cost more than the hash
 * of a short seed. The fetched method is immutable and shared by threads. */
static EVP_MD *ketama_md;
static pthread_once_t ketama_md_once = PTHREAD_ONCE_INIT;

static void ketama_md_fetch(void)
{
    ketama_md = EVP_MD_fetch(NULL, "MD5", NULL);
}

static const EVP_MD *ketama_md5(void)
{
    pthread_once(&ketama_md_once, ketama_md_fetch);
    return ketama_md;
}

static uint32_t ketama_le32(const unsigned char *d)
{
    return (uint32_t)d[0] | (uint32_t)d[1] << 8 | (uint32_t)d[2] << 16 | (uint32_t)d[3] << 24;
}

uint32_t ketama_hash(const void *seed, size_t len)
{
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    const EVP_MD *md = ketama_md5();
    /* ketama_build refuses to build without MD5, so with a ring in hand
     * this cannot fail; 0 keeps the function total anyway. */
    if (!md || !EVP_Digest(seed ? seed : "", len, d, &dlen, md, NULL) || dlen < 4)
        return 0;
    return ketama_le32(d);
}

/* ---- building --------------------------------------------------------- */

/* Per member while building: the target arc, the step count of the
 * current round and the points of the steps hashed so far (hashing is the
 * costly part, so a step is hashed once whatever the rounds do). */
typedef struct km_work {
    const char *name;
    size_t orig; /* index in the caller's array, for messages */
    uint32_t weight;
    uint64_t target;
    size_t k, k_max;
    uint32_t *pts; /* 4 per hashed step */
    size_t hashed;
} km_work_t;

static int km_name_cmp(const void *a, const void *b)
{
    return strcmp(((const km_work_t *)a)->name, ((const km_work_t *)b)->name);
}

static int km_point_cmp(const void *a, const void *b)
{
    const ketama_point_t *x = a, *y = b;
    if (x->point != y->point)
        return x->point < y->point ? -1 : 1;
    return x->member < y->member ? -1 : x->member > y->member;
}

/* Hash member w's steps up to k: MD5("<name>-<step>"), four points each. */
static int km_hash_steps(EVP_MD_CTX *ctx, const EVP_MD *md, km_work_t *w, size_t k)
{
    if (k <= w->hashed)
        return 0;
    w->pts = xrealloc(w->pts, k * 4 * sizeof(*w->pts));
    size_t name_len = strlen(w->name);
    for (size_t s = w->hashed; s < k; s++) {
        char step[24];
        int n = snprintf(step, sizeof(step), "-%zu", s);
        unsigned char d[EVP_MAX_MD_SIZE];
        unsigned int dlen = 0;
        if (!EVP_DigestInit_ex(ctx, md, NULL) || !EVP_DigestUpdate(ctx, w->name, name_len) ||
            !EVP_DigestUpdate(ctx, step, (size_t)n) || !EVP_DigestFinal_ex(ctx, d, &dlen) ||
            dlen < 16)
            return -EIO;
        for (size_t h = 0; h < 4; h++)
            w->pts[s * 4 + h] = ketama_le32(d + h * 4);
    }
    w->hashed = k;
    return 0;
}

/* The ring of the current step counts, and the arc each member owns.
 * Points of equal value keep the lowest member first, which is also the
 * one a lookup (first point >= hash) finds, so arcs match lookups. */
static void km_ring(const km_work_t *w, size_t n, ketama_point_t *pts, size_t *n_pts,
                    uint64_t *arcs)
{
    size_t np = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < w[i].k * 4; j++)
            pts[np++] = (ketama_point_t){.point = w[i].pts[j], .member = (uint32_t)i};
    qsort(pts, np, sizeof(*pts), km_point_cmp);
    memset(arcs, 0, n * sizeof(*arcs));
    for (size_t j = 1; j < np; j++)
        arcs[pts[j].member] += (uint64_t)pts[j].point - pts[j - 1].point;
    /* The first point also owns everything past the last one. */
    arcs[pts[0].member] += (uint64_t)pts[0].point + KETAMA_RING - pts[np - 1].point;
    *n_pts = np;
}

static uint64_t km_max_dev(const km_work_t *w, size_t n, const uint64_t *arcs)
{
    uint64_t worst = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t d = arcs[i] > w[i].target ? arcs[i] - w[i].target : w[i].target - arcs[i];
        if (d > worst)
            worst = d;
    }
    return worst;
}

/* Check the members and fill the work array in name order. */
static int km_prepare(const ketama_member_t *m, size_t n, km_work_t *w, uint64_t *total, err_t *err)
{
    *total = 0;
    for (size_t i = 0; i < n; i++) {
        if (!m[i].name || !m[i].name[0])
            return err_set(err, -EINVAL, "member %zu: empty name", i);
        if (strlen(m[i].name) > KETAMA_NAME_MAX)
            return err_set(err, -EINVAL, "member %zu: name longer than %d bytes", i,
                           KETAMA_NAME_MAX);
        w[i] = (km_work_t){.name = m[i].name, .orig = i, .weight = m[i].weight};
        *total += m[i].weight;
    }
    qsort(w, n, sizeof(*w), km_name_cmp);
    for (size_t i = 1; i < n; i++)
        if (strcmp(w[i - 1].name, w[i].name) == 0)
            return err_set(err, -EINVAL, "member %zu: name \"%.200s\" is also member %zu",
                           w[i].orig > w[i - 1].orig ? w[i].orig : w[i - 1].orig, w[i].name,
                           w[i].orig > w[i - 1].orig ? w[i - 1].orig : w[i].orig);
    if (*total == 0)
        return err_set(err, -EINVAL, "every member has weight 0: at least one must be > 0");
    return 0;
}

/* Rounds of k_i *= target_i / arc_i, keeping the best ring seen. Stops
 * early when every member is within tolerance or nothing would change. */
static int km_tune(ketama_t *k, km_work_t *w, size_t n, err_t *err)
{
    const EVP_MD *md = ketama_md5();
    if (!md)
        return err_set(err, -ENOSYS, "OpenSSL provides no MD5 (needed for the ketama ring)");
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx)
        return err_set(err, -ENOMEM, "EVP_MD_CTX_new failed");
    size_t cap = 0;
    for (size_t i = 0; i < n; i++)
        cap += w[i].k_max * 4;
    ketama_point_t *cur = xmalloc(cap * sizeof(*cur));
    uint64_t *arcs = xcalloc(n, sizeof(*arcs));
    k->points = xmalloc(cap * sizeof(*k->points));
    uint64_t best = UINT64_MAX, tol = KETAMA_RING / KETAMA_TOLERANCE_DIV;
    int rc = 0;
    for (int round = 0; round < KETAMA_ROUNDS; round++) {
        for (size_t i = 0; i < n && rc == 0; i++)
            rc = km_hash_steps(ctx, md, &w[i], w[i].k);
        if (rc) {
            err_set(err, rc, "MD5 failed");
            break;
        }
        size_t np;
        km_ring(w, n, cur, &np, arcs);
        uint64_t dev = km_max_dev(w, n, arcs);
        if (dev < best) {
            best = dev;
            ketama_point_t *t = k->points;
            k->points = cur;
            cur = t;
            k->n_points = np;
            memcpy(k->arcs, arcs, n * sizeof(*arcs));
        }
        if (dev <= tol)
            break;
        bool changed = false;
        for (size_t i = 0; i < n; i++) {
            if (!w[i].weight)
                continue;
            /* k * target < 2^23 * 2^32: no overflow. A member whose points
             * all sit behind others' owns nothing: double its steps. */
            uint64_t nk = arcs[i] ? (w[i].k * w[i].target + arcs[i] / 2) / arcs[i] : w[i].k * 2;
            if (nk < 1)
                nk = 1;
            if (nk > w[i].k_max)
                nk = w[i].k_max;
            changed |= nk != w[i].k;
            w[i].k = nk;
        }
        if (!changed)
            break;
    }
    free(cur);
    free(arcs);
    EVP_MD_CTX_free(ctx);
    return rc;
}

ketama_t *ketama_build(const ketama_member_t *m, size_t n, err_t *err)
{
    if (!m || n == 0) {
        err_set(err, -EINVAL, "a ketama ring needs at least one member");
        return NULL;
    }
    if (n > KETAMA_MEMBERS_MAX) {
        err_set(err, -E2BIG, "%zu members, at most %d", n, KETAMA_MEMBERS_MAX);
        return NULL;
    }
    km_work_t *w = xcalloc(n, sizeof(*w));
    uint64_t total;
    ketama_t *k = NULL;
    if (km_prepare(m, n, w, &total, err))
        goto out;
    uint64_t steps = KETAMA_STEPS_MIN;
    if ((uint64_t)n * KETAMA_STEPS_PER_MEMBER > steps)
        steps = (uint64_t)n * KETAMA_STEPS_PER_MEMBER;
    for (size_t i = 0; i < n; i++) {
        if (!w[i].weight)
            continue;
        /* weight < 2^32 and steps < 2^22: both products fit 64 bits. */
        w[i].target = ((uint64_t)w[i].weight << 32) / total;
        w[i].k = (size_t)((uint64_t)w[i].weight * steps / total);
        if (w[i].k < 1)
            w[i].k = 1; /* every member with a weight stays reachable */
        w[i].k_max = w[i].k * 4 + 16;
    }
    k = xcalloc(1, sizeof(*k));
    k->n = n;
    k->arcs = xcalloc(n, sizeof(*k->arcs));
    if (km_tune(k, w, n, err)) {
        ketama_free(k);
        k = NULL;
        goto out;
    }
    k->points = xrealloc(k->points, k->n_points * sizeof(*k->points));
    k->names = xcalloc(n, sizeof(*k->names));
    k->weights = xcalloc(n, sizeof(*k->weights));
    for (size_t i = 0; i < n; i++) {
        k->names[i] = xstrdup(w[i].name);
        k->weights[i] = w[i].weight;
    }
out:
    for (size_t i = 0; i < n; i++)
        free(w[i].pts);
    free(w);
    return k;
}

void ketama_free(ketama_t *k)
{
    if (!k)
        return;
    for (size_t i = 0; k->names && i < k->n; i++)
        free(k->names[i]);
    free(k->names);
    free(k->weights);
    free(k->arcs);
    free(k->points);
    free(k);
}

/* ---- lookups ---------------------------------------------------------- */

const char *ketama_pick_hash(const ketama_t *k, uint32_t hash)
{
    size_t lo = 0, hi = k->n_points;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (k->points[mid].point < hash)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == k->n_points)
        lo = 0; /* past the last point: wrap to the first */
    return k->names[k->points[lo].member];
}

const char *ketama_pick(const ketama_t *k, const void *seed, size_t len)
{
    return ketama_pick_hash(k, ketama_hash(seed, len));
}

/* splitmix64 per thread: picks are on the request path, so no lock and no
 * system call per pick; seeded once per thread from getrandom(2). */
static _Thread_local uint64_t ketama_rng;
static _Thread_local int ketama_rng_seeded;

static uint32_t ketama_random32(void)
{
    if (!ketama_rng_seeded) {
        if (getrandom(&ketama_rng, sizeof(ketama_rng), GRND_NONBLOCK) != sizeof(ketama_rng)) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ketama_rng =
                (uint64_t)ts.tv_nsec ^ (uint64_t)ts.tv_sec << 32 ^ (uint64_t)(uintptr_t)&ketama_rng;
        }
        ketama_rng_seeded = 1;
    }
    uint64_t z = (ketama_rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return (uint32_t)(z >> 32);
}

const char *ketama_pick_random(const ketama_t *k)
{
    return ketama_pick_hash(k, ketama_random32());
}

/* ---- export ----------------------------------------------------------- */

const ketama_point_t *ketama_points(const ketama_t *k, size_t *n)
{
    if (n)
        *n = k->n_points;
    return k->points;
}

size_t ketama_member_count(const ketama_t *k)
{
    return k->n;
}

const char *ketama_member_name(const ketama_t *k, size_t i)
{
    return i < k->n ? k->names[i] : NULL;
}

uint32_t ketama_member_weight(const ketama_t *k, size_t i)
{
    return i < k->n ? k->weights[i] : 0;
}

double ketama_member_share(const ketama_t *k, size_t i)
{
    return i < k->n ? (double)k->arcs[i] / (double)KETAMA_RING : 0.0;
}
