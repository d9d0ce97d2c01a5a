/* locator/ketama: the consistent-hash continuum behind routing groups.
 *
 * A routing group resolves one name to several weighted members (app
 * versions, apps). Each member owns points on a 32-bit ring; a request
 * hashes its seed (a sticky header or cookie, else random bytes) onto the
 * ring and goes to the member owning the first point at or after the hash,
 * wrapping past the top. As in libketama and Cocaine: a member's points are
 * the MD5 digests of "<name>-<step>" for step = 0, 1, ..., each digest giving
 * four points (its four 32-bit little-endian words), and the number of
 * steps is in proportion to the member's weight.
 *
 * Two departures from libketama, both for traffic splitting rather than
 * cache sharding (see ketama.c for the measurements):
 *  - the ring holds at least KETAMA_STEPS_MIN steps (4 points each) however
 *    few members there are, not 160 points per member: with 160 per member
 *    a member's real share of the ring is routinely 2-6 percentage points
 *    away from its weight, too coarse for a 1% canary;
 *  - the step counts are then tuned (a few rounds of k *= target/actual)
 *    until every member's share of the ring is within KETAMA_TOLERANCE_DIV of
 *    its weight's share.
 * Points stay the same MD5 sequence, so a change of one weight moves about
 * the share of seeds that weight moved, and a member's points do not depend
 * on the order the members were given in.
 *
 * Threading: a built ketama_t is immutable; any number of threads may pick
 * from it at once. Ownership: ketama_build copies the names; the caller
 * frees the result with ketama_free. */
#ifndef DROVER_LOCATOR_KETAMA_H
#define DROVER_LOCATOR_KETAMA_H

#include "core/err.h"

#include <stddef.h>
#include <stdint.h>

/* At least this many MD5 steps (4 points each) on a ring; more with many
 * members (KETAMA_STEPS_PER_MEMBER each, libketama's 160 points). */
#define KETAMA_STEPS_MIN        4096
#define KETAMA_STEPS_PER_MEMBER 40
/* The gap between a member's share of the ring and its weight's share
 * that tuning aims for, in parts of the ring (1/4000 = 0.025 percentage
 * points). A goal, not a bound: tuning stops after a few rounds with the
 * best ring it found (measured worst: 0.13 points). */
#define KETAMA_TOLERANCE_DIV 4000
#define KETAMA_MEMBERS_MAX   65536
#define KETAMA_NAME_MAX      1024

typedef struct ketama_member {
    const char *name; /* non-empty, unique, at most KETAMA_NAME_MAX bytes */
    uint32_t weight;  /* 0: never picked; at least one member must be > 0 */
} ketama_member_t;

/* One point of the continuum: the member owning the hashes in
 * (previous point, point], the first point also owning those above the
 * last. */
typedef struct ketama_point {
    uint32_t point;
    uint32_t member; /* index into the members in name order (ketama_member_name) */
} ketama_point_t;

typedef struct ketama ketama_t;

/* Build the continuum of n members. NULL with err set (-EINVAL naming the
 * member: no members, empty, too long or duplicate name, every weight 0;
 * -E2BIG past KETAMA_MEMBERS_MAX; -ENOSYS when OpenSSL has no MD5). */
ketama_t *ketama_build(const ketama_member_t *m, size_t n, err_t *err);
void ketama_free(ketama_t *k);

/* The member a seed goes to: MD5 of the seed's len bytes, first four bytes
 * little-endian, onto the ring. Same seed, same member, for as long as the
 * group is unchanged. Never NULL; the name lives as long as k. */
const char *ketama_pick(const ketama_t *k, const void *seed, size_t len);
/* The member for a random seed (requests without a sticky seed). Uses a
 * per-thread generator seeded from the kernel, not MD5 of random bytes. */
const char *ketama_pick_random(const ketama_t *k);
/* The member a 32-bit ring position goes to (what the two above end in;
 * exposed so routers and tests can reproduce a lookup). */
const char *ketama_pick_hash(const ketama_t *k, uint32_t hash);
/* The ring position of a seed, as ketama_pick computes it. */
uint32_t ketama_hash(const void *seed, size_t len);

/* Export, for streaming the continuum to routers: the points sorted by
 * (point, member), valid as long as k. */
const ketama_point_t *ketama_points(const ketama_t *k, size_t *n);
/* Members in name order (the order ketama_point_t.member indexes). */
size_t ketama_member_count(const ketama_t *k);
const char *ketama_member_name(const ketama_t *k, size_t i);
uint32_t ketama_member_weight(const ketama_t *k, size_t i);
/* The fraction of the ring (0..1) member i owns: the share of uniformly
 * random seeds it gets. */
double ketama_member_share(const ketama_t *k, size_t i);

#endif
