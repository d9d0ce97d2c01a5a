/* spec: drover's app spec (a superset of Marathon's app definition).
 *
 * Four jobs, one module:
 *  - validation: every error of a document at once, each with the JSON path
 *    of the offending value ("$.healthChecks[0].portIndex") and a reason;
 *    known-but-unimplemented Marathon fields become warnings, unknown fields
 *    are errors with a "did you mean" suggestion;
 *  - normalization: a valid spec becomes a canonical document with every
 *    default filled, so two specs that mean the same thing are equal JSON
 *    (versions compare and hash the normalized form);
 *  - templates: `$name` / `${name}` placeholders filled from `--var`s;
 *  - diff: what changes between two versions, by JSON path.
 *
 * The reference for users (fields, defaults, template syntax) is
 * docs/spec.md. Nothing here does I/O or keeps global state: every function
 * is safe to call from any thread. */
#ifndef DROVER_SPEC_H
#define DROVER_SPEC_H

#include "core/err.h"

#include <jansson.h>
#include <stddef.h>

/* Longest app id, leading '/' included. */
#define SPEC_ID_MAX 255
/* Bound on the text spec_template_fill produces (-E2BIG past it). */
#define SPEC_TEMPLATE_OUT_MAX (16u << 20)

typedef struct spec_result {
    json_t *app;      /* normalized spec (owned), NULL when there are errors */
    json_t *errors;   /* array of {"path": "$.healthChecks[0].portIndex", "reason": "..."} (owned,
                         never NULL) */
    json_t *warnings; /* same shape (owned, never NULL) */
} spec_result_t;

/* Validate a parsed app spec. Returns 0 when valid (res->app set), -EINVAL
 * when res->errors is non-empty. Never modifies `input`. `res` is
 * overwritten (not freed first); release it with spec_result_free whatever
 * the return value. Warnings are reported for valid and invalid specs alike.
 * Normalizing is idempotent: validating res->app gives res->app again. */
int spec_validate(const json_t *input, spec_result_t *res);

/* Drop the three references of `res` and set them to NULL. Safe on a zeroed
 * or already freed result. */
void spec_result_free(spec_result_t *res);

/* App id rules: segments of [a-z0-9] or [a-z0-9][a-z0-9.-]*[a-z0-9]
 * separated by '/', no empty, "." or ".." segment, at most SPEC_ID_MAX
 * characters once absolute. Accepts "/a/b" and relative "a/b" (normalized
 * to "/a/b" in *out, malloc'd, caller frees). On failure *out is NULL, the
 * return is -EINVAL and err names the offending segment and the rule. */
int spec_id_normalize(const char *id, char **out, err_t *err);

typedef struct spec_var {
    const char *name;
    const char *value;
} spec_var_t;

/* Fill $name and ${name} placeholders in a JSON template text. A value that
 * is a JSON number (e.g. "4", "0.5", "-1") substitutes as-is (so
 * `"instances": $instances` gives a number); inside a JSON string a value is
 * inserted JSON-escaped; outside a string a non-number value is inserted as
 * a JSON string ("..."). `$$` is a literal `$`; a `$` not followed by a
 * name, `{` or `$` is copied as is. A bare `$name` takes the longest run of
 * [A-Za-z0-9_] after a letter or '_'; `${name}` also allows '.' and '-'.
 * When a name is given twice in `vars` the last one wins.
 *
 * A placeholder whose variable is not given is an error naming it and its
 * line ("line 7: variable $instances is not set (use --var
 * instances=VALUE)"); all missing names are reported at once (first line of
 * each, one per line of err->msg). Other errors: an unterminated or empty
 * `${`, a value that is not UTF-8 (-EINVAL), output past
 * SPEC_TEMPLATE_OUT_MAX (-E2BIG).
 *
 * On success *out is malloc'd and NUL-terminated (caller frees), *out_len
 * (optional) its length; on failure *out is NULL. The output is not parsed:
 * validate it with json_parse + spec_validate. */
int spec_template_fill(const char *text, size_t len, const spec_var_t *vars, size_t n_vars,
                       char **out, size_t *out_len, err_t *err);

/* Differences between two JSON values as an array of
 * {"path": "$.instances", "op": "add"|"remove"|"change", "old": v, "new": v}
 * (old absent for add, new absent for remove). Objects are compared key by
 * key (keys in sorted order), arrays by index; numbers compare by value (64
 * and 64.0 are equal). NULL `old` means everything is added (one "add" per
 * member when `new_` is an object), NULL `new_` everything removed. Returns
 * a new reference (never NULL; [] when equal). */
json_t *spec_diff(const json_t *old, const json_t *new_);

/* The routes a gateway serves for a normalized spec: its "routes", plus
 * what a Marathon-era spec declares the way its routers read it, so such
 * specs route unchanged:
 *  - SERVICE_TAGS (env or label, comma-separated; the Marathon field
 *    report's marathon-registrator convention): internal-listen-http-P and
 *    internal-listen-tcp-P become internal routes on port P,
 *    balance-roundrobin / balance-leastconn set their balancing;
 *  - marathon-lb's HAPROXY_n_VHOST labels (comma-separated host names, with
 *    HAPROXY_n_PATH as the path) become host routes to port index n.
 * A staging app (label environment=staging, a "staging" tag, or a
 * "staging" segment in its id) listens on "1" + P instead of P, as the
 * report's internal HAProxy did; a port that would not fit is dropped.
 * Derived routes never repeat an internal port or host+path the spec's own
 * routes already use. Returns a new array of route objects. */
json_t *spec_routes(const json_t *spec);

/* The routing group a canary of app `app_id` runs through ("/production/web"
 * -> "canary.production.web"; ids too long for a group name get
 * "canary." and 16 hex digits of their sha256). Routers send an app's routes
 * without a group of their own through this group when it exists; the
 * scheduler writes it while a canary runs. malloc'd. */
char *spec_canary_group(const char *app_id);

#endif
