/* sched/records: the stored shapes of app changes, shared by the API (which
 * makes changes on request) and the scheduler (which makes them itself for
 * config rollouts and automatic rollbacks), so both write exactly the same
 * app, version and deployment records.
 *
 * Store layout (the API's, src/api/api_internal.h):
 *   /apps<id>                  app record: current version, spec, deployment,
 *                              canary, config_env, stopped, restart
 *   /versions<id>@<%010 N>     immutable version record
 *   /deployments/<dep-id>      deployment record (docs/api.md#deployments)
 *   /placement<id>             why instances of the app wait (scheduler)
 *
 * Everything here is pure: JSON in, JSON out. */
#ifndef DROVER_SCHED_RECORDS_H
#define DROVER_SCHED_RECORDS_H

#include "core/err.h"
#include "store/store.h"

#include <jansson.h>
#include <stdint.h>

#define REC_APPS_PREFIX        "/apps"
#define REC_VERSIONS_PREFIX    "/versions"
#define REC_DEPLOYMENTS_PREFIX "/deployments/"
#define REC_PLACEMENT_PREFIX   "/placement"
#define REC_KV_PREFIX          "/kv/"
/* Steps kept in a deployment record, and finished deployments per app. */
#define REC_STEPS_MAX     50
#define REC_FINISHED_KEEP 20
/* Bound of the environment a config prefix may contribute. */
#define REC_CONFIG_ENV_MAX (64 * 1024)

/* "/versions/production/web@0000000004" (malloc'd). */
char *rec_version_key(const char *app_id, int64_t version);
/* 12 random lowercase hex digits (malloc'd). */
char *rec_deployment_id_new(void);

/* The environment a config prefix gives: each key under kv_prefix ("config/
 * web", without /kv/ and without trailing slash) becomes a variable named by
 * the rest of the key, '/' -> '_', upper-cased, other characters than
 * A-Z0-9_ -> '_'. Values that are not text without NUL are skipped. `kvs`
 * are store kvs with full keys ("/kv/config/web/db/host"). New object;
 * stops adding once REC_CONFIG_ENV_MAX bytes are reached. */
json_t *rec_config_env(const store_kv_t *kvs, size_t n, const char *kv_prefix);

/* What an instance of this version runs: spec with config_env laid over
 * its env (KV wins). New reference. */
json_t *rec_effective_spec(const json_t *spec, const json_t *config_env);
/* Signature of what runs: sha256 hex of the effective spec without
 * "instances", plus the restart generation. Two versions with the same
 * signature run the same thing, so a scale restarts nothing. */
void rec_signature(const json_t *spec, const json_t *config_env, int64_t restart, char out[65]);

typedef enum {
    REC_DEPLOY = 0, /* a new spec (kind "create" for a new app, "scale" when only instances
                       changed, "config" when only config_env changed) */
    REC_SCALE,
    REC_CONFIG,
    REC_ROLLBACK,
    REC_RESTART,
    REC_STOP,
    REC_START,
    REC_CANARY,
    REC_PROMOTE,
    REC_ABORT,
} rec_kind_t;

typedef struct rec_change {
    rec_kind_t kind;
    const char *app_id;
    const json_t *cur;        /* current app record; NULL: the app is new */
    const json_t *spec;       /* the new version's spec (DEPLOY, SCALE, CONFIG, ROLLBACK,
                                 CANARY); NULL: keep the current one */
    const json_t *config_env; /* with spec; NULL: none (or keep, without spec) */
    const json_t *warnings;   /* validation warnings, may be NULL */
    int canary_percent;       /* CANARY: 1..99 */
    const char *reason;       /* first step's message addition, may be NULL */
    const char *now;          /* timestamp */
} rec_change_t;

typedef struct rec_out {
    json_t *app;        /* the new app record */
    json_t *version;    /* the new version record, or NULL (PROMOTE, ABORT, START of ...) */
    json_t *deployment; /* the new deployment record */
    int64_t version_no; /* the app's version after the change (CANARY: the canary's) */
    const char *kind;   /* the deployment kind written */
    bool changed;       /* false: the change is a no-op (same spec); nothing to write */
} rec_out_t;

/* Build the records of a change. -ENOENT (no app), -EALREADY/-EINVAL (the
 * action does not apply: no canary to promote, not stopped, ...) with err
 * naming why. */
int rec_change(const rec_change_t *in, rec_out_t *out, err_t *err);
void rec_out_free(rec_out_t *out);

/* Store writes of out: up to 3 puts (app, version, deployment), plus
 * (when `superseded` is non-NULL) the running deployment it replaces marked
 * superseded. keys/values are malloc'd into ops; free with rec_ops_free. */
size_t rec_ops(const char *app_id, const rec_out_t *out, store_op_t ops[4]);
void rec_ops_free(store_op_t *ops, size_t n);

#endif
