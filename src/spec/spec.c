/* spec.c: app spec validation and normalization.
 *
 * The known fields live in one schema table per kind of object (app,
 * container, health check, ...). Validation walks the document against those
 * tables, so every field gets its type and range checked by the same code
 * and an unknown field anywhere is caught (with a suggestion from the same
 * table). Rules that tie fields together (cmd XOR args, portIndex within the
 * ports, pool only for workers, ...) run after that walk, in app_checks().
 * Normalization runs only on a valid document and may therefore assume the
 * types are right. */
#include "spec/spec.h"

#include "core/alloc.h"
#include "core/buf.h"
#include "core/json.h"
#include "core/str.h"
#include "spec/spec_int.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ctype.h>
#include <strings.h>

/* ------------------------------------------------------------------------
 * Defaults (Marathon's where Marathon has one; see docs/spec.md)
 * ------------------------------------------------------------------------ */

#define DEF_INSTANCES       1
#define DEF_CPUS            0.1
#define DEF_PROGRESS_DEADLINE 600
#define DEF_MEM             128
#define DEF_DISK            0
#define DEF_BACKOFF_SECONDS 1
#define DEF_BACKOFF_FACTOR  1.15
/* Marathon >= 1.8 (PR #6686 lowered it from 3600). */
#define DEF_MAX_LAUNCH_DELAY 300
/* Marathon has none and leaves it to Mesos, whose executors escalate to
 * SIGKILL 3 s after SIGTERM; drover makes that explicit. */
#define DEF_KILL_GRACE      3
#define DEF_HC_GRACE        300
#define DEF_HC_INTERVAL     60
#define DEF_HC_TIMEOUT      20
#define DEF_HC_MAX_FAILURES 3
#define DEF_HC_DELAY        15
/* Cocaine's engine profile defaults. */
#define DEF_POOL_LIMIT        10
#define DEF_QUEUE_LIMIT       100
#define DEF_CONCURRENCY       10
#define DEF_IDLE_TIMEOUT      600
#define DEF_SPAWN_TIMEOUT     1
#define DEF_HANDSHAKE_TIMEOUT 5
#define DEF_HEARTBEAT_TIMEOUT 30
#define DEF_TERMINATE_TIMEOUT 10
#define DEF_REQUEST_TIMEOUT   86400
#define DEF_CRASHLOG_LIMIT    50
#define DEF_WORKER_EVENT      "http"

#define NOMAX         1e308
#define I32MAX        2147483647.0
#define TIMEOUT_MAX   31536000.0 /* a year, in seconds */
#define KV_PREFIX_MAX 1024

/* ------------------------------------------------------------------------
 * Schema
 * ------------------------------------------------------------------------ */

typedef enum kind {
    K_APP,
    K_CONTAINER,
    K_DOCKER,
    K_PORTMAP,
    K_PORTDEF,
    K_HEALTH,
    K_HCCMD,
    K_UPGRADE,
    K_FETCH,
    K_POOL,
    K_ROUTE,
    K_COUNT
} kind_t;

typedef enum ftype {
    FT_STR,         /* string */
    FT_BOOL,        /* true/false */
    FT_INT,         /* integer in [min, max]; an integral real is accepted */
    FT_NUM,         /* number in [min, max] (or (min, max] with F_MIN_EXCL) */
    FT_ENUM,        /* one string of `values` */
    FT_OBJ,         /* object of kind `sub` */
    FT_OBJARR,      /* array of objects of kind `sub` */
    FT_STRMAP,      /* object of string values (labels) */
    FT_STRARR,      /* array of strings */
    FT_PORTARR,     /* array of port numbers (legacy "ports") */
    FT_ENV,         /* env: strings, or {"secret": name} (warned) */
    FT_CONSTRAINTS, /* [[field, op, value?], ...] */
    FT_DROP,        /* Marathon output field: any value, dropped */
    FT_ID,          /* app id */
} ftype_t;

enum {
    F_REQUIRED = 1,
    F_NONEMPTY = 2, /* FT_STR / FT_STRARR elements: not "" */
    F_MIN_EXCL = 4, /* FT_NUM: strictly above min */
    F_ENUM_CI = 8,  /* FT_ENUM: any case accepted, normalized to the listed one */
};

typedef struct vctx vctx_t;

typedef struct field {
    const char *name;
    ftype_t type;
    unsigned flags;
    double min, max;
    kind_t sub;
    const char *const *values;
    /* Extra rule run once the type is right. */
    void (*check)(vctx_t *c, const json_t *v);
} field_t;

static const char *const v_kind[] = {"service", "worker", NULL};
static const char *const v_isolate[] = {"process", "oci", "docker", NULL};
static const char *const v_placement[] = {"spread", "binpack", NULL};
static const char *const v_ctype[] = {"DOCKER", "MESOS", "OCI", "PROCESS", NULL};
static const char *const v_network[] = {"BRIDGE", "HOST", "USER", "NONE", NULL};
static const char *const v_proto[] = {"tcp", "udp", "tcp,udp", NULL};
static const char *const v_hcproto[] = {"HTTP",       "HTTPS",       "TCP",       "COMMAND",
                                        "MESOS_HTTP", "MESOS_HTTPS", "MESOS_TCP", NULL};
static const char *const v_ops[] = {"UNIQUE", "CLUSTER", "GROUP_BY", "LIKE",
                                    "UNLIKE", "MAX_PER", "IS",       NULL};

static void check_abs_path(vctx_t *c, const json_t *v);
static void check_host(vctx_t *c, const json_t *v);
static void check_sticky(vctx_t *c, const json_t *v);
static void check_config(vctx_t *c, const json_t *v);
static void check_artifact(vctx_t *c, const json_t *v);
static void check_group(vctx_t *c, const json_t *v);
static void check_resp_headers(vctx_t *c, const json_t *v);

#define F_STR(n, fl)                                                                               \
    {                                                                                              \
        .name = (n), .type = FT_STR, .flags = (fl)                                                 \
    }
#define F_STRC(n, fl, fn)                                                                          \
    {                                                                                              \
        .name = (n), .type = FT_STR, .flags = (fl), .check = (fn)                                  \
    }
#define F_BOOL(n)                                                                                  \
    {                                                                                              \
        .name = (n), .type = FT_BOOL                                                               \
    }
#define F_INT(n, lo, hi)                                                                           \
    {                                                                                              \
        .name = (n), .type = FT_INT, .min = (lo), .max = (hi)                                      \
    }
#define F_NUM(n, fl, lo, hi)                                                                       \
    {                                                                                              \
        .name = (n), .type = FT_NUM, .flags = (fl), .min = (lo), .max = (hi)                       \
    }
#define F_ENUM(n, fl, vals)                                                                        \
    {                                                                                              \
        .name = (n), .type = FT_ENUM, .flags = (fl), .values = (vals)                              \
    }
#define F_OBJ(n, fl, k)                                                                            \
    {                                                                                              \
        .name = (n), .type = FT_OBJ, .flags = (fl), .sub = (k)                                     \
    }
#define F_OBJARR(n, k)                                                                             \
    {                                                                                              \
        .name = (n), .type = FT_OBJARR, .sub = (k)                                                 \
    }
#define F_TYPE(n, t, fl)                                                                           \
    {                                                                                              \
        .name = (n), .type = (t), .flags = (fl)                                                    \
    }
#define F_END                                                                                      \
    {                                                                                              \
        .name = NULL                                                                               \
    }

static const field_t s_app[] = {
    F_TYPE("id", FT_ID, F_REQUIRED),
    F_STR("cmd", F_NONEMPTY),
    F_TYPE("args", FT_STRARR, 0),
    F_TYPE("env", FT_ENV, 0),
    F_TYPE("labels", FT_STRMAP, 0),
    F_INT("instances", 0, I32MAX),
    F_NUM("cpus", F_MIN_EXCL, 0, 1e6),
    F_NUM("mem", 0, 0, 1e12),
    F_NUM("disk", 0, 0, 1e15),
    F_OBJ("container", 0, K_CONTAINER),
    F_OBJARR("portDefinitions", K_PORTDEF),
    F_TYPE("ports", FT_PORTARR, 0),
    F_BOOL("requirePorts"),
    F_OBJARR("healthChecks", K_HEALTH),
    F_OBJ("upgradeStrategy", 0, K_UPGRADE),
    F_TYPE("constraints", FT_CONSTRAINTS, 0),
    F_INT("backoffSeconds", 0, I32MAX),
    F_NUM("backoffFactor", 0, 1, 1e6),
    F_INT("maxLaunchDelaySeconds", 0, I32MAX),
    F_INT("taskKillGracePeriodSeconds", 0, I32MAX),
    F_OBJARR("fetch", K_FETCH),
    F_TYPE("uris", FT_STRARR, F_NONEMPTY),
    F_TYPE("version", FT_DROP, 0),
    F_TYPE("versionInfo", FT_DROP, 0),
    /* drover's own */
    F_ENUM("kind", 0, v_kind),
    F_OBJ("pool", 0, K_POOL),
    F_OBJARR("routes", K_ROUTE),
    F_STRC("config", F_NONEMPTY, check_config),
    F_STRC("artifact", F_NONEMPTY, check_artifact),
    F_BOOL("autoRollback"),
    F_INT("progressDeadlineSeconds", 1, I32MAX),
    F_ENUM("placement", 0, v_placement),
    F_ENUM("isolate", 0, v_isolate),
    F_END,
};

static const field_t s_container[] = {
    F_ENUM("type", F_ENUM_CI, v_ctype),
    F_OBJ("docker", 0, K_DOCKER),
    /* Marathon >= 1.5 keeps the mappings here rather than in docker. */
    F_OBJARR("portMappings", K_PORTMAP),
    F_END,
};

static const field_t s_docker[] = {
    F_STR("image", F_REQUIRED | F_NONEMPTY),
    F_BOOL("forcePullImage"),
    F_ENUM("network", F_ENUM_CI, v_network),
    F_OBJARR("portMappings", K_PORTMAP),
    F_END,
};

static const field_t s_portmap[] = {
    F_INT("containerPort", 0, 65535),
    F_INT("hostPort", 0, 65535),
    F_INT("servicePort", 0, 65535),
    F_ENUM("protocol", 0, v_proto),
    F_STR("name", F_NONEMPTY),
    F_TYPE("labels", FT_STRMAP, 0),
    F_END,
};

static const field_t s_portdef[] = {
    F_INT("port", 0, 65535),
    F_ENUM("protocol", 0, v_proto),
    F_STR("name", F_NONEMPTY),
    F_TYPE("labels", FT_STRMAP, 0),
    F_END,
};

static const field_t s_health[] = {
    F_ENUM("protocol", 0, v_hcproto),       F_STRC("path", F_NONEMPTY, check_abs_path),
    F_INT("portIndex", 0, 65535),           F_INT("port", 0, 65535),
    F_INT("gracePeriodSeconds", 0, I32MAX), F_INT("intervalSeconds", 1, I32MAX),
    F_INT("timeoutSeconds", 1, I32MAX),     F_INT("maxConsecutiveFailures", 0, I32MAX),
    F_INT("delaySeconds", 0, I32MAX),       F_BOOL("ignoreHttp1xx"),
    F_OBJ("command", 0, K_HCCMD),           F_END,
};

static const field_t s_hccmd[] = {
    F_STR("value", F_REQUIRED | F_NONEMPTY),
    F_END,
};

static const field_t s_upgrade[] = {
    F_NUM("minimumHealthCapacity", 0, 0, 1),
    F_NUM("maximumOverCapacity", 0, 0, 1),
    F_END,
};

static const field_t s_fetch[] = {
    F_STR("uri", F_REQUIRED | F_NONEMPTY),
    F_BOOL("extract"),
    F_BOOL("executable"),
    F_BOOL("cache"),
    F_END,
};

static const field_t s_pool[] = {
    F_INT("pool-limit", 1, I32MAX),
    F_INT("queue-limit", 0, I32MAX),
    F_INT("concurrency", 1, I32MAX),
    F_INT("grow-threshold", 1, I32MAX),
    F_NUM("idle-timeout", F_MIN_EXCL, 0, TIMEOUT_MAX),
    F_NUM("spawn-timeout", F_MIN_EXCL, 0, TIMEOUT_MAX),
    F_NUM("handshake-timeout", F_MIN_EXCL, 0, TIMEOUT_MAX),
    F_NUM("heartbeat-timeout", F_MIN_EXCL, 0, TIMEOUT_MAX),
    F_NUM("terminate-timeout", F_MIN_EXCL, 0, TIMEOUT_MAX),
    F_NUM("request-timeout", F_MIN_EXCL, 0, TIMEOUT_MAX),
    F_INT("crashlog-limit", 0, I32MAX),
    F_BOOL("spare"),
    F_END,
};

/* How the gateway spreads a route's requests over its instances. */
static const char *const v_balance[] = {"roundrobin", "leastconn", "hash", NULL};

static const field_t s_route[] = {
    F_STRC("host", F_NONEMPTY, check_host),
    F_STRC("path", F_NONEMPTY, check_abs_path),
    F_INT("portIndex", 0, 65535),
    F_INT("internal", 1, 65535),
    F_BOOL("tcp"),
    F_STRC("group", F_NONEMPTY, check_group),
    F_STR("event", F_NONEMPTY),
    F_STRC("sticky", F_NONEMPTY, check_sticky),
    F_ENUM("balance", 0, v_balance),
    {.name = "headers", .type = FT_STRMAP, .check = check_resp_headers},
    F_END,
};

static const field_t *const schema[K_COUNT] = {
    [K_APP] = s_app,         [K_CONTAINER] = s_container, [K_DOCKER] = s_docker,
    [K_PORTMAP] = s_portmap, [K_PORTDEF] = s_portdef,     [K_HEALTH] = s_health,
    [K_HCCMD] = s_hccmd,     [K_UPGRADE] = s_upgrade,     [K_FETCH] = s_fetch,
    [K_POOL] = s_pool,       [K_ROUTE] = s_route,
};

/* THE table of Marathon fields drover accepts but does not implement yet.
 * A non-empty value gets a warning; an empty one (null, 0, false, "", [],
 * {}) is what Marathon itself prints for "unset" and passes silently. Both
 * are kept out of the normalized spec only when empty. To implement one,
 * move it from here into the schema above. */
static const struct ignored {
    kind_t kind;
    const char *name;
} ignored[] = {
    {K_APP, "gpus"},
    {K_APP, "dependencies"},
    {K_APP, "user"},
    {K_APP, "executor"},
    {K_APP, "residency"},
    {K_APP, "secrets"},
    {K_APP, "unreachableStrategy"},
    {K_APP, "killSelection"},
    {K_APP, "networks"},
    {K_APP, "readinessChecks"},
    {K_APP, "acceptedResourceRoles"},
    {K_APP, "storeUrls"},
    {K_APP, "ipAddress"},
    {K_APP, "role"},
    {K_APP, "tty"},
    {K_APP, "check"},
    {K_APP, "resourceLimits"},
    {K_CONTAINER, "volumes"},
    {K_CONTAINER, "linuxInfo"},
    {K_DOCKER, "privileged"},
    {K_DOCKER, "parameters"},
    {K_DOCKER, "pullConfig"},
    {K_PORTMAP, "networkNames"},
    {K_FETCH, "destPath"},
};

#define IGNORED_REASON "accepted but not implemented by drover yet; ignored"

static const field_t *find_field(kind_t k, const char *name)
{
    for (const field_t *f = schema[k]; f->name; f++)
        if (strcmp(f->name, name) == 0)
            return f;
    return NULL;
}

static bool is_ignored(kind_t k, const char *name)
{
    for (size_t i = 0; i < sizeof(ignored) / sizeof(ignored[0]); i++)
        if (ignored[i].kind == k && strcmp(ignored[i].name, name) == 0)
            return true;
    return false;
}

/* ------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------ */

/* obj[key], with JSON null treated as absent: Marathon prints unset fields
 * as null ("args": null), and re-posting its output must work. */
static json_t *get(const json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return json_is_null(v) ? NULL : v;
}

static bool json_empty(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_NULL:
    case JSON_FALSE: return true;
    case JSON_INTEGER: return json_integer_value(v) == 0;
    case JSON_REAL: return json_real_value(v) == 0;
    case JSON_STRING: return json_string_length(v) == 0;
    case JSON_ARRAY: return json_array_size(v) == 0;
    case JSON_OBJECT: return json_object_size(v) == 0;
    default: return false;
    }
}

/* Quote a user-supplied string for a reason text: escaped, ASCII only and
 * cut, so a hostile value can neither blow up the message nor make it
 * invalid UTF-8 (jansson would then refuse the error object). */
#define QV_CAP 200
#define QV(s)  qv((char[QV_CAP]){0}, (s))
static const char *qv(char *out, const char *s)
{
    size_t o = 0, i = 0;
    out[o++] = '"';
    for (; s[i] && i < 48; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            out[o++] = '\\';
            out[o++] = (char)ch;
        } else if (ch < 0x20 || ch >= 0x7f) {
            o += (size_t)snprintf(out + o, QV_CAP - o, "\\x%02x", ch);
        } else {
            out[o++] = (char)ch;
        }
    }
    if (s[i]) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o++] = '"';
    out[o] = '\0';
    return out;
}

static char lc(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c + ('a' - 'A')) : c;
}

/* Optimal string alignment distance, case-insensitive, for "did you mean"
 * (a transposition counts 1: "helathChecks"). Inputs longer than 64 bytes
 * are never close to a field name. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t n = strlen(a), m = strlen(b);
    if (n > 64 || m > 64)
        return SIZE_MAX;
    size_t d[65][65];
    for (size_t i = 0; i <= n; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= m; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= n; i++) {
        for (size_t j = 1; j <= m; j++) {
            char x = lc(a[i - 1]), y = lc(b[j - 1]);
            size_t best = d[i - 1][j - 1] + (x != y);
            if (d[i - 1][j] + 1 < best)
                best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best)
                best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && x == lc(b[j - 2]) && lc(a[i - 2]) == y &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    }
    return d[n][m];
}

typedef struct suggest {
    const char *word;
    const char *best;
    size_t dist;
} suggest_t;

/* Keep `cand` if it is the closest so far and close enough to be a typo:
 * distance 2 at most (1 for words of 3 letters or less, else "id" would be
 * suggested for any two-letter key). Distance 0 means a case difference. */
static void suggest_consider(suggest_t *s, const char *cand)
{
    size_t n = strlen(s->word), m = strlen(cand);
    size_t lim = n <= 3 ? 1 : 2;
    if ((n > m ? n - m : m - n) > lim)
        return; /* the length difference alone is too far: skip the work */
    size_t d = edit_distance(s->word, cand);
    if (d <= lim && (s->best == NULL || d < s->dist)) {
        s->best = cand;
        s->dist = d;
    }
}

/* ------------------------------------------------------------------------
 * Validation context
 * ------------------------------------------------------------------------ */

/* What the cross-field rules need to know about the app as a whole,
 * computed up front and tolerant of wrong types (a wrong type is reported
 * by the walk; here it only counts as absent). */
typedef struct facts {
    bool worker;
    const json_t *container;
    const json_t *docker;
    const json_t *dmaps;    /* container.docker.portMappings */
    const json_t *cmaps;    /* container.portMappings */
    const json_t *mappings; /* the port mappings in effect (one of the two) */
    const char *ctype;   /* canonical container.type, "DOCKER" by default; NULL without container */
    const char *network; /* canonical network; NULL when there is neither docker nor mappings */
    bool network_given;
    bool mapped; /* ports come from port mappings (BRIDGE or USER networking) */
    size_t n_ports;
} facts_t;

struct vctx {
    json_t *errors;
    json_t *warnings;
    buf_t path;
    facts_t f;
};

/* Errors (or warnings) listed at most; a hostile document full of mistakes
 * must not make a response many times its own size. */
#define ISSUES_MAX 1000
/* Longest port or route list checked for duplicates (the check is
 * quadratic); longer lists are an error of their own. */
#define LIST_MAX 1000

static void vpush(json_t *list, const char *path, const char *fmt, va_list ap)
{
    if (json_array_size(list) >= ISSUES_MAX) {
        if (json_array_size(list) == ISSUES_MAX)
            json_error_push(list, "$", "too many problems: only the first %d are listed",
                            ISSUES_MAX);
        return;
    }
    char reason[480];
    int n = vsnprintf(reason, sizeof(reason), fmt, ap);
    if (n >= (int)sizeof(reason)) {
        size_t len = strlen(reason);
        while (len > 0 && !spec_utf8_valid(reason, len))
            len--;
        reason[len] = '\0';
    }
    size_t before = json_array_size(list);
    json_error_push(list, path, "%s", reason);
    /* Never lose an error: a spec with errors must not come out valid. */
    if (json_array_size(list) == before)
        json_error_push(list, "$", "invalid value (its description could not be encoded)");
}

static void verr(vctx_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void verr(vctx_t *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vpush(c->errors, c->path.data, fmt, ap);
    va_end(ap);
}

static void vwarn(vctx_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void vwarn(vctx_t *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vpush(c->warnings, c->path.data, fmt, ap);
    va_end(ap);
}

static size_t push_key(vctx_t *c, const char *key)
{
    size_t mark = c->path.len;
    spec_path_key(&c->path, key);
    return mark;
}

static size_t push_idx(vctx_t *c, size_t i)
{
    size_t mark = c->path.len;
    spec_path_index(&c->path, i);
    return mark;
}

static void pop(vctx_t *c, size_t mark)
{
    spec_path_trim(&c->path, mark);
}

/* Error at the current path + "." key. */
static void verr_key(vctx_t *c, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void verr_key(vctx_t *c, const char *key, const char *fmt, ...)
{
    size_t m = push_key(c, key);
    va_list ap;
    va_start(ap, fmt);
    vpush(c->errors, c->path.data, fmt, ap);
    va_end(ap);
    pop(c, m);
}

static void vwarn_key(vctx_t *c, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void vwarn_key(vctx_t *c, const char *key, const char *fmt, ...)
{
    size_t m = push_key(c, key);
    va_list ap;
    va_start(ap, fmt);
    vpush(c->warnings, c->path.data, fmt, ap);
    va_end(ap);
    pop(c, m);
}

/* "\"a\", \"b\" or \"c\"" for enum errors. */
static void enum_list(char *out, size_t cap, const char *const *values)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; values[i] && o < cap; i++) {
        const char *sep = i == 0 ? "" : values[i + 1] ? ", " : " or ";
        int n = snprintf(out + o, cap - o, "%s\"%s\"", sep, values[i]);
        if (n < 0)
            break;
        o += (size_t)n;
    }
}

/* The listed spelling of `s` in `values` (case-insensitively when `ci`),
 * or NULL. */
static const char *enum_match(const char *const *values, const char *s, bool ci)
{
    for (size_t i = 0; values[i]; i++)
        if (ci ? strcasecmp(values[i], s) == 0 : strcmp(values[i], s) == 0)
            return values[i];
    return NULL;
}

static void enum_err(vctx_t *c, const char *what, const char *const *values, const char *s)
{
    char list[256];
    enum_list(list, sizeof(list), values);
    suggest_t sg = {.word = s};
    for (size_t i = 0; values[i]; i++)
        suggest_consider(&sg, values[i]);
    if (sg.best)
        verr(c, "%s%s is not one of %s (did you mean \"%s\"?)", what, QV(s), list, sg.best);
    else
        verr(c, "%s%s is not one of %s", what, QV(s), list);
}

/* ------------------------------------------------------------------------
 * Field rules
 * ------------------------------------------------------------------------ */

static bool has_ctl_or_space(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || *s == 0x7f)
            return true;
    return false;
}

static void check_abs_path(vctx_t *c, const json_t *v)
{
    const char *s = json_string_value(v);
    if (s[0] != '/' || has_ctl_or_space(s))
        verr(c, "must be an absolute URL path starting with \"/\" (got %s)", QV(s));
}

/* Route hosts: DNS names, with an optional "*." wildcard label in front. */
static void check_host(vctx_t *c, const json_t *v)
{
    const char *s = json_string_value(v);
    const char *p = strncmp(s, "*.", 2) == 0 ? s + 2 : s;
    size_t n = strlen(s);
    bool ok = n <= 253 && *p;
    size_t label = 0;
    for (const char *q = p; ok && *q; q++) {
        char ch = *q;
        if (ch == '.') {
            ok = label > 0 && q[-1] != '-';
            label = 0;
        } else if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                   (ch >= '0' && ch <= '9') || ch == '-') {
            ok = !(ch == '-' && label == 0) && ++label <= 63;
        } else {
            ok = false;
        }
    }
    if (ok)
        ok = label > 0 && p[strlen(p) - 1] != '-';
    if (!ok)
        verr(c,
             "%s is not a host name (letters, digits, '-' and '.', at most 253 characters, "
             "optionally starting with \"*.\")",
             QV(s));
}

static bool http_token(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++) {
        char ch = *s;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              strchr("!#$%&'*+.^_`|~-", ch)))
            return false;
    }
    return true;
}

/* Response headers a route adds (HSTS, X-Frame-Options, ... as the
 * field report's HAProxy set them): each must be a header the gateway can
 * write as is, and not one that would change how the message is framed. */
static void check_resp_headers(vctx_t *c, const json_t *v)
{
    static const char *const framing[] = {
        "content-length", "transfer-encoding", "connection", "keep-alive",
        "upgrade",        "trailer",           "te",         NULL};
    if (json_object_size(v) > 32) {
        verr(c, "has %zu headers; at most 32 are allowed", json_object_size(v));
        return;
    }
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)v, key, val)
    {
        size_t m = push_key(c, key);
        size_t n = strlen(key);
        bool ok = n > 0 && n <= 64;
        for (size_t i = 0; ok && i < n; i++)
            ok = isalnum((unsigned char)key[i]) || strchr("!#$%&'*+-.^_`|~", key[i]);
        if (!ok)
            verr(c, "is not a header name (1 to 64 letters, digits or !#$%%&'*+-.^_`|~)");
        for (size_t k = 0; ok && framing[k]; k++)
            if (strcasecmp(key, framing[k]) == 0)
                verr(c, "cannot be set by a route: it frames the message");
        const char *s = json_string_value(val);
        if (s) {
            bool clean = strlen(s) <= 1024;
            for (const char *p = s; clean && *p; p++)
                clean = (unsigned char)*p >= 0x20 && *p != 0x7f;
            if (!clean)
                verr(c, "value must be at most 1024 printable characters (no CR, LF or controls)");
        }
        pop(c, m);
    }
}

static void check_sticky(vctx_t *c, const json_t *v)
{
    const char *s = json_string_value(v);
    const char *name = NULL;
    if (strncmp(s, "header:", 7) == 0)
        name = s + 7;
    else if (strncmp(s, "cookie:", 7) == 0)
        name = s + 7;
    if (!name || !http_token(name))
        verr(c, "must be \"header:NAME\" or \"cookie:NAME\" (got %s)", QV(s));
}

static void check_group(vctx_t *c, const json_t *v)
{
    const char *s = json_string_value(v);
    if (strlen(s) > 255 || has_ctl_or_space(s))
        verr(c, "must be a routing group name (no spaces, at most 255 characters)");
}

static void check_config(vctx_t *c, const json_t *v)
{
    const char *s = json_string_value(v);
    bool ok = strlen(s) <= KV_PREFIX_MAX && !has_ctl_or_space(s);
    for (const char *p = s; ok && *p;) {
        const char *e = strchr(p, '/');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if ((n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
            ok = false;
        p += n + (e ? 1 : 0);
    }
    if (!ok)
        verr(c,
             "must be a KV prefix such as \"production/test-server/\" (no spaces, no \".\" or "
             "\"..\" segments, at most %d characters)",
             KV_PREFIX_MAX);
}

static void check_artifact(vctx_t *c, const json_t *v)
{
    const char *s = json_string_value(v);
    bool ok;
    if (strncmp(s, "sha256:", 7) == 0) {
        const char *h = s + 7;
        ok = strlen(h) == 64 && strspn(h, "0123456789abcdef") == 64;
    } else {
        const char *p = s;
        ok = *p >= 'a' && *p <= 'z';
        while (ok && *p && *p != ':') {
            ok = (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '+' || *p == '.' ||
                 *p == '-';
            p++;
        }
        ok = ok && strncmp(p, "://", 3) == 0 && p[3] && !has_ctl_or_space(s);
    }
    if (!ok)
        verr(c, "must be a URL (scheme://...) or an image id sha256:<64 hex digits> (got %s)",
             QV(s));
}

static void range_err(vctx_t *c, const field_t *f, double d)
{
    bool excl = f->flags & F_MIN_EXCL;
    if (f->max <= 65535)
        verr(c, "must be between %g and %g (got %.15g)", f->min, f->max, d);
    else if (d > f->max)
        verr(c, "must be <= %.15g (got %.15g)", f->max, d);
    else
        verr(c, "must be %s %g (got %.15g)", excl ? ">" : ">=", f->min, d);
}

static bool positive_int_string(const char *s)
{
    int64_t n;
    return str_to_i64(s, 1, INT32_MAX, &n) == 0;
}

/* Marathon constraints: [field, operator] or [field, operator, value]. */
static void check_constraints(vctx_t *c, const json_t *v)
{
    if (!json_is_array(v)) {
        verr(c, "must be an array of [field, operator, value] arrays");
        return;
    }
    for (size_t i = 0; i < json_array_size(v); i++) {
        const json_t *e = json_array_get(v, i);
        size_t m = push_idx(c, i);
        size_t n = json_array_size(e);
        if (!json_is_array(e) || n < 2 || n > 3) {
            verr(c, "must be [field, operator] or [field, operator, value]");
            pop(c, m);
            continue;
        }
        const json_t *field = json_array_get(e, 0), *opv = json_array_get(e, 1);
        const json_t *val = n == 3 ? json_array_get(e, 2) : NULL;
        size_t m2;
        if (!json_is_string(field) || json_string_length(field) == 0) {
            m2 = push_idx(c, 0);
            verr(c, "the field must be a non-empty string (\"hostname\" or an agent attribute)");
            pop(c, m2);
        }
        if (val && !json_is_string(val)) {
            m2 = push_idx(c, 2);
            verr(c, "the value must be a string");
            pop(c, m2);
            val = NULL;
        }
        const char *op = NULL;
        m2 = push_idx(c, 1);
        if (!json_is_string(opv))
            verr(c, "the operator must be a string");
        else if (!(op = enum_match(v_ops, json_string_value(opv), false)))
            enum_err(c, "operator ", v_ops, json_string_value(opv));
        pop(c, m2);
        if (op) {
            const char *s = val ? json_string_value(val) : NULL;
            if (strcmp(op, "UNIQUE") == 0) {
                if (n == 3) {
                    m2 = push_idx(c, 2);
                    verr(c, "UNIQUE takes no value");
                    pop(c, m2);
                }
            } else if (strcmp(op, "GROUP_BY") == 0 || strcmp(op, "MAX_PER") == 0) {
                if (n == 2 && strcmp(op, "MAX_PER") == 0) {
                    verr(c, "MAX_PER needs a value (the most instances per field value)");
                } else if (s && !positive_int_string(s)) {
                    m2 = push_idx(c, 2);
                    verr(c, "%s needs a positive integer value (got %s)", op, QV(s));
                    pop(c, m2);
                }
            } else if (n == 2 || (s && !*s)) {
                verr(c, "%s needs a value", op);
            }
        }
        pop(c, m);
    }
}

static void validate_object(vctx_t *c, kind_t k, const json_t *o);

/* env and labels: free-form keys (never "unknown"), string values; env
 * also takes Marathon's secret references, which drover does not resolve. */
static void check_strmap(vctx_t *c, const json_t *v, bool env)
{
    if (!json_is_object(v)) {
        verr(c, "must be an object of string values");
        return;
    }
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)v, key, val)
    {
        size_t m = push_key(c, key);
        if (!*key || (env && strchr(key, '=')))
            verr(c, env ? "a variable name must be non-empty and contain no '='"
                        : "a label name must be non-empty");
        if (json_is_string(val)) {
            /* fine */
        } else if (env && json_is_object(val) && json_object_size(val) == 1 &&
                   json_is_string(json_object_get(val, "secret"))) {
            vwarn(c, "secret references are " IGNORED_REASON);
        } else {
            verr(c, env ? "must be a string (or a {\"secret\": \"name\"} reference)"
                        : "must be a string");
        }
        pop(c, m);
    }
}

/* Type and range of one member; a value of the wrong type is reported once
 * and not looked into further (its contents would only add noise). */
static void validate_value(vctx_t *c, const field_t *f, const json_t *v)
{
    switch (f->type) {
    case FT_STR:
        if (!json_is_string(v))
            verr(c, "must be a string");
        else if ((f->flags & F_NONEMPTY) && json_string_length(v) == 0)
            verr(c, "must not be empty");
        else if (f->check)
            f->check(c, v);
        break;
    case FT_BOOL:
        if (!json_is_boolean(v))
            verr(c, "must be true or false");
        break;
    case FT_INT: {
        if (!json_is_number(v)) {
            verr(c, "must be an integer");
            break;
        }
        double d = json_number_value(v);
        if (json_is_real(v) && floor(d) != d)
            verr(c, "must be an integer (got %g)", d);
        else if (d < f->min || d > f->max)
            range_err(c, f, d);
        break;
    }
    case FT_NUM: {
        if (!json_is_number(v)) {
            verr(c, "must be a number");
            break;
        }
        double d = json_number_value(v);
        bool low = (f->flags & F_MIN_EXCL) ? d <= f->min : d < f->min;
        if (low || d > f->max)
            range_err(c, f, d);
        break;
    }
    case FT_ENUM:
        if (!json_is_string(v)) {
            char list[256];
            enum_list(list, sizeof(list), f->values);
            verr(c, "must be a string: %s", list);
        } else if (!enum_match(f->values, json_string_value(v), f->flags & F_ENUM_CI)) {
            enum_err(c, "", f->values, json_string_value(v));
        }
        break;
    case FT_OBJ: validate_object(c, f->sub, v); break;
    case FT_OBJARR:
        if (!json_is_array(v)) {
            verr(c, "must be an array of objects");
            break;
        }
        for (size_t i = 0; i < json_array_size(v); i++) {
            size_t m = push_idx(c, i);
            validate_object(c, f->sub, json_array_get(v, i));
            pop(c, m);
        }
        break;
    case FT_STRMAP:
        check_strmap(c, v, false);
        if (f->check && json_is_object(v))
            f->check(c, v);
        break;
    case FT_ENV: check_strmap(c, v, true); break;
    case FT_STRARR:
        if (!json_is_array(v)) {
            verr(c, "must be an array of strings");
            break;
        }
        for (size_t i = 0; i < json_array_size(v); i++) {
            const json_t *e = json_array_get(v, i);
            size_t m = push_idx(c, i);
            if (!json_is_string(e))
                verr(c, "must be a string");
            else if ((f->flags & F_NONEMPTY) && json_string_length(e) == 0)
                verr(c, "must not be empty");
            pop(c, m);
        }
        break;
    case FT_PORTARR:
        if (!json_is_array(v)) {
            verr(c, "must be an array of port numbers");
            break;
        }
        for (size_t i = 0; i < json_array_size(v); i++) {
            const json_t *e = json_array_get(v, i);
            size_t m = push_idx(c, i);
            double d = json_number_value(e);
            if (!json_is_number(e) || floor(d) != d || d < 0 || d > 65535)
                verr(c, "must be a port number between 0 and 65535");
            pop(c, m);
        }
        break;
    case FT_CONSTRAINTS: check_constraints(c, v); break;
    case FT_DROP: break;
    case FT_ID: {
        if (!json_is_string(v)) {
            verr(c, "must be a string such as \"/production/test-server\"");
            break;
        }
        err_t err = {0};
        char *id = NULL;
        if (spec_id_normalize(json_string_value(v), &id, &err) < 0)
            verr(c, "%s", err.msg);
        free(id);
        break;
    }
    }
}

/* Walk one object against its schema: every member is checked or reported,
 * then the required members. */
static void validate_object(vctx_t *c, kind_t k, const json_t *o)
{
    if (!json_is_object(o)) {
        verr(c, "must be an object");
        return;
    }
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)o, key, v)
    {
        size_t m = push_key(c, key);
        const field_t *f = find_field(k, key);
        if (f) {
            if (!json_is_null(v))
                validate_value(c, f, v);
        } else if (is_ignored(k, key)) {
            if (!json_empty(v))
                vwarn(c, IGNORED_REASON);
        } else {
            suggest_t sg = {.word = key};
            for (const field_t *g = schema[k]; g->name; g++)
                suggest_consider(&sg, g->name);
            for (size_t i = 0; i < sizeof(ignored) / sizeof(ignored[0]); i++)
                if (ignored[i].kind == k)
                    suggest_consider(&sg, ignored[i].name);
            if (sg.best)
                verr(c, "unknown field (did you mean \"%s\"?)", sg.best);
            else
                verr(c, "unknown field");
        }
        pop(c, m);
    }
    for (const field_t *f = schema[k]; f->name; f++)
        if ((f->flags & F_REQUIRED) && !get(o, f->name))
            verr_key(c, f->name, "is required");
}

/* ------------------------------------------------------------------------
 * Cross-field rules
 * ------------------------------------------------------------------------ */

static bool is_http_check(const char *proto)
{
    return strcmp(proto, "HTTP") == 0 || strcmp(proto, "HTTPS") == 0 ||
           strcmp(proto, "MESOS_HTTP") == 0 || strcmp(proto, "MESOS_HTTPS") == 0;
}

/* Marathon's network mode decides where the ports of an app come from: the
 * port mappings with BRIDGE/USER networking, else portDefinitions (or the
 * legacy ports), else one port picked by the scheduler for a service. */
static facts_t compute_facts(const json_t *app)
{
    facts_t f = {0};
    const json_t *kind = get(app, "kind");
    f.worker = json_is_string(kind) && strcmp(json_string_value(kind), "worker") == 0;
    f.container = json_is_object(get(app, "container")) ? get(app, "container") : NULL;
    f.docker = json_is_object(get(f.container, "docker")) ? get(f.container, "docker") : NULL;
    f.dmaps = json_is_array(get(f.docker, "portMappings")) ? get(f.docker, "portMappings") : NULL;
    f.cmaps =
        json_is_array(get(f.container, "portMappings")) ? get(f.container, "portMappings") : NULL;
    f.mappings = json_array_size(f.dmaps) ? f.dmaps : f.cmaps ? f.cmaps : f.dmaps;
    if (f.container) {
        const json_t *t = get(f.container, "type");
        f.ctype = !t                  ? "DOCKER"
                  : json_is_string(t) ? enum_match(v_ctype, json_string_value(t), true)
                                      : NULL;
    }
    const json_t *net = get(f.docker, "network");
    if (json_is_string(net) && enum_match(v_network, json_string_value(net), true)) {
        f.network = enum_match(v_network, json_string_value(net), true);
        f.network_given = true;
    } else if (json_array_size(f.mappings)) {
        f.network = "BRIDGE";
    } else if (f.docker) {
        f.network = "HOST";
    }
    f.mapped = f.network && (strcmp(f.network, "BRIDGE") == 0 || strcmp(f.network, "USER") == 0);
    const json_t *defs = get(app, "portDefinitions"), *ports = get(app, "ports");
    if (f.mapped)
        f.n_ports = json_array_size(f.mappings);
    else if (json_is_array(defs))
        f.n_ports = json_array_size(defs);
    else if (json_is_array(ports))
        f.n_ports = json_array_size(ports);
    else
        f.n_ports = f.worker ? 0 : 1;
    return f;
}

/* A non-negative int (integral reals included), or -1 when `v` is absent
 * or not one: the cross-field rules run on unvalidated input too. */
static long long int_value(const json_t *v)
{
    if (!json_is_number(v))
        return -1;
    double d = json_number_value(v);
    if (floor(d) != d || d < 0 || d > 1e15)
        return -1;
    return (long long)d;
}

static long long int_member(const json_t *o, const char *key)
{
    return int_value(get(o, key));
}

/* Check that `idx` names one of the app's ports; the error goes on the
 * portIndex member when the spec gave one, else on the object itself. */
static void check_port_index(vctx_t *c, const json_t *o, const char *what)
{
    long long idx = int_member(o, "portIndex");
    bool given = get(o, "portIndex") != NULL;
    if (!given)
        idx = 0;
    if (idx < 0 || (size_t)idx < c->f.n_ports)
        return;
    if (given)
        verr_key(c, "portIndex", "is %lld but the app has %zu port%s (indexes start at 0)", idx,
                 c->f.n_ports, c->f.n_ports == 1 ? "" : "s");
    else
        verr(c, "%s needs a port, but the app has none (add portDefinitions%s)", what,
             c->f.mapped ? " or portMappings" : "");
}

/* Duplicate non-zero port numbers and duplicate names in one port list. */
static void check_port_list(vctx_t *c, const char *key, const json_t *list, const char *port_key)
{
    size_t n = json_array_size(list);
    if (n > LIST_MAX) {
        verr(c, "has %zu ports; at most %d are allowed", n, LIST_MAX);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *a = json_array_get(list, i);
        long long pa = port_key ? int_member(a, port_key) : int_value(a);
        const json_t *na = get(a, "name");
        for (size_t j = 0; j < i; j++) {
            const json_t *b = json_array_get(list, j);
            long long pb = port_key ? int_member(b, port_key) : int_value(b);
            const json_t *nb = get(b, "name");
            size_t m = push_idx(c, i);
            if (pa > 0 && pa == pb) {
                if (port_key)
                    verr_key(c, port_key, "port %lld is also used by %s[%zu]", pa, key, j);
                else
                    verr(c, "port %lld is also used by %s[%zu]", pa, key, j);
            }
            if (json_is_string(na) && json_is_string(nb) && json_equal(na, nb))
                verr_key(c, "name", "port name %s is also used by %s[%zu]",
                         QV(json_string_value(na)), key, j);
            pop(c, m);
        }
    }
}

/* Port rules that span fields: legacy and new port lists agreeing, port
 * mappings only where the network mode uses them, unique ports and names
 * in the list in effect (two instances cannot bind one host port). */
static void check_ports(vctx_t *c, const json_t *app)
{
    facts_t *f = &c->f;
    const json_t *defs = get(app, "portDefinitions"), *ports = get(app, "ports");
    if (json_is_array(defs) && json_is_array(ports)) {
        /* Marathon 1.4 prints both; accept them when they agree. */
        bool same = json_array_size(defs) == json_array_size(ports);
        for (size_t i = 0; same && i < json_array_size(defs); i++) {
            long long p = int_member(json_array_get(defs, i), "port");
            const json_t *q = json_array_get(ports, i);
            same = json_is_number(q) && (double)p == json_number_value(q);
        }
        if (!same)
            verr_key(c, "ports", "give either ports (legacy) or portDefinitions, not both");
    }
    if (f->mapped) {
        if (json_array_size(defs))
            vwarn_key(c, "portDefinitions",
                      "ignored with %s networking: the ports come from portMappings", f->network);
        else if (json_array_size(ports))
            vwarn_key(c, "ports", "ignored with %s networking: the ports come from portMappings",
                      f->network);
    }
    size_t m = push_key(c, "container");
    if (json_array_size(f->dmaps) && json_array_size(f->cmaps)) {
        verr_key(c, "portMappings",
                 "port mappings are given twice: keep either container.portMappings or "
                 "container.docker.portMappings");
    }
    if (json_array_size(f->mappings) && f->network_given && !f->mapped) {
        size_t m2 = push_key(c, "docker");
        verr_key(c, "network", "is %s, but portMappings need BRIDGE or USER networking",
                 f->network);
        pop(c, m2);
    }
    if (f->mappings && f->mapped) {
        if (f->mappings == f->dmaps) {
            size_t m2 = push_key(c, "docker");
            size_t m3 = push_key(c, "portMappings");
            check_port_list(c, "portMappings", f->mappings, "hostPort");
            pop(c, m3);
            pop(c, m2);
        } else {
            size_t m3 = push_key(c, "portMappings");
            check_port_list(c, "portMappings", f->mappings, "hostPort");
            pop(c, m3);
        }
    }
    pop(c, m);
    if (!f->mapped && json_is_array(defs)) {
        m = push_key(c, "portDefinitions");
        check_port_list(c, "portDefinitions", defs, "port");
        pop(c, m);
    } else if (!f->mapped && json_is_array(ports)) {
        m = push_key(c, "ports");
        check_port_list(c, "ports", ports, NULL);
        pop(c, m);
    }
}

static void check_container(vctx_t *c)
{
    facts_t *f = &c->f;
    if (!f->container || !f->ctype)
        return;
    size_t m = push_key(c, "container");
    if (strcmp(f->ctype, "DOCKER") == 0 && !get(f->container, "docker"))
        verr_key(c, "docker", "is required for container type DOCKER (it names the image)");
    if (strcmp(f->ctype, "PROCESS") == 0 && get(f->container, "docker"))
        verr_key(c, "docker", "is not valid for container type PROCESS");
    pop(c, m);
}

/* What the protocol of each health check implies: a command for COMMAND,
 * a port that exists for the network ones. */
static void check_health(vctx_t *c, const json_t *app)
{
    const json_t *hcs = get(app, "healthChecks");
    if (!json_is_array(hcs))
        return;
    size_t m = push_key(c, "healthChecks");
    for (size_t i = 0; i < json_array_size(hcs); i++) {
        const json_t *hc = json_array_get(hcs, i);
        if (!json_is_object(hc))
            continue;
        const json_t *pv = get(hc, "protocol");
        const char *proto = "HTTP";
        if (pv && !(proto = enum_match(v_hcproto, json_is_string(pv) ? json_string_value(pv) : "",
                                       false)))
            continue; /* already reported */
        size_t m2 = push_idx(c, i);
        bool command = strcmp(proto, "COMMAND") == 0;
        if (command && !get(hc, "command"))
            verr_key(c, "command", "is required for protocol COMMAND");
        if (!command && get(hc, "command"))
            verr_key(c, "command", "is only valid with protocol COMMAND (protocol is %s)", proto);
        if (get(hc, "port") && get(hc, "portIndex"))
            verr_key(c, "port", "give either port or portIndex, not both");
        if (get(hc, "path") && !is_http_check(proto))
            vwarn_key(c, "path", "ignored for protocol %s", proto);
        if (!get(hc, "port") && (!command || get(hc, "portIndex"))) {
            char what[64];
            snprintf(what, sizeof(what), "protocol %s", proto);
            check_port_index(c, hc, what);
        }
        pop(c, m2);
    }
    pop(c, m);
}

/* Routes mean different things for the two kinds: a service is reached on
 * one of its ports (HTTP or TCP), a worker through an invocation event. */
static void check_routes(vctx_t *c, const json_t *app)
{
    const json_t *routes = get(app, "routes");
    if (!json_is_array(routes))
        return;
    bool worker = c->f.worker;
    size_t m = push_key(c, "routes");
    if (json_array_size(routes) > LIST_MAX) {
        verr(c, "has %zu routes; at most %d are allowed", json_array_size(routes), LIST_MAX);
        pop(c, m);
        return;
    }
    for (size_t i = 0; i < json_array_size(routes); i++) {
        const json_t *r = json_array_get(routes, i);
        if (!json_is_object(r))
            continue;
        size_t m2 = push_idx(c, i);
        bool tcp = json_is_true(get(r, "tcp"));
        if (worker && get(r, "portIndex"))
            verr_key(c, "portIndex",
                     "is not valid for a worker app: workers are reached by "
                     "invocation, not on a port");
        if (worker && tcp)
            verr_key(c, "tcp",
                     "TCP routes are not valid for a worker app (the gateway bridges "
                     "HTTP to invocations)");
        if (!worker && get(r, "event"))
            verr_key(c, "event", "is only valid for a worker app (\"kind\": \"worker\")");
        if (tcp) {
            if (!get(r, "internal"))
                verr(c, "a TCP route needs an internal port");
            static const char *const http_only[] = {"host", "path", "sticky", "headers"};
            for (size_t k = 0; k < 4; k++)
                if (get(r, http_only[k]))
                    verr_key(c, http_only[k], "is not valid for a TCP route");
        }
        if (!get(r, "host") && !get(r, "path") && !get(r, "internal"))
            verr(c, "matches nothing: set host, path or internal");
        if (!worker)
            check_port_index(c, r, "a route");
        long long in = int_member(r, "internal");
        for (size_t j = 0; in > 0 && j < i; j++) {
            if (int_member(json_array_get(routes, j), "internal") == in) {
                verr_key(c, "internal", "port %lld is also used by routes[%zu]", in, j);
                break;
            }
        }
        pop(c, m2);
    }
    pop(c, m);
}

/* Rules that no single field can check; run after the schema walk so each
 * problem is reported once, at the field a user would change. */
static void app_checks(vctx_t *c, const json_t *app)
{
    const json_t *cmd = get(app, "cmd"), *args = get(app, "args");
    bool has_args = args && !(json_is_array(args) && json_array_size(args) == 0);
    if (cmd && has_args)
        verr_key(c, "args", "cmd and args are mutually exclusive: give one of them");
    if (!cmd && !has_args && !get(c->f.docker, "image") && !get(app, "artifact"))
        verr(c, "nothing to run: set cmd, args, container.docker.image or artifact");
    if (json_array_size(get(app, "uris")) && json_array_size(get(app, "fetch")))
        verr_key(c, "uris", "give either uris (legacy) or fetch, not both");
    if (get(app, "pool") && !c->f.worker)
        verr_key(c, "pool", "is only valid for a worker app (\"kind\": \"worker\")");
    check_container(c);
    check_ports(c, app);
    check_health(c, app);
    check_routes(c, app);
}

/* ------------------------------------------------------------------------
 * Normalization (input known valid)
 * ------------------------------------------------------------------------ */

static void set_default(json_t *o, const char *key, json_t *v)
{
    if (json_object_get(o, key))
        json_decref(v);
    else
        json_object_set_new(o, key, v);
}

/* Object member `key`, created empty when absent. */
static json_t *ensure(json_t *o, const char *key, json_t *(*make)(void))
{
    json_t *v = json_object_get(o, key);
    if (!v) {
        v = make();
        json_object_set_new(o, key, v);
    }
    return v;
}

/* Schema-driven part: nulls and output-only fields go, integral reals in
 * integer fields become integers, case-insensitive enums take their listed
 * spelling, empty unimplemented fields go. */
static void norm_object(kind_t k, json_t *o)
{
    const char *key;
    json_t *v;
    void *tmp;
    json_object_foreach_safe(o, tmp, key, v)
    {
        const field_t *f = find_field(k, key);
        if (!f) {
            if (json_empty(v))
                json_object_del(o, key);
            continue;
        }
        if (json_is_null(v) || f->type == FT_DROP) {
            json_object_del(o, key);
            continue;
        }
        switch (f->type) {
        case FT_INT:
            if (json_is_real(v))
                json_object_set_new(o, key, json_integer((json_int_t)json_real_value(v)));
            break;
        case FT_ENUM: {
            const char *canon = enum_match(f->values, json_string_value(v), true);
            if (strcmp(canon, json_string_value(v)) != 0)
                json_object_set_new(o, key, json_string(canon));
            break;
        }
        case FT_OBJ: norm_object(f->sub, v); break;
        case FT_OBJARR:
            for (size_t i = 0; i < json_array_size(v); i++)
                norm_object(f->sub, json_array_get(v, i));
            break;
        default: break;
        }
    }
}

static void norm_mappings(json_t *maps, const char *network)
{
    for (size_t i = 0; i < json_array_size(maps); i++) {
        json_t *pm = json_array_get(maps, i);
        set_default(pm, "containerPort", json_integer(0));
        if (network && strcmp(network, "BRIDGE") == 0)
            set_default(pm, "hostPort", json_integer(0));
        set_default(pm, "servicePort", json_integer(0));
        set_default(pm, "protocol", json_string("tcp"));
    }
}

/* One place for ports in the normalized form: legacy `ports` become
 * portDefinitions, and the implicit Marathon port of a service is written
 * out, so consumers never re-derive it. */
static void norm_ports(json_t *app, const facts_t *f)
{
    json_t *ports = json_object_get(app, "ports");
    if (ports && !json_object_get(app, "portDefinitions")) {
        json_t *defs = json_array();
        for (size_t i = 0; i < json_array_size(ports); i++)
            json_array_append_new(defs,
                                  json_pack("{s:I, s:s}", "port",
                                            (json_int_t)json_number_value(json_array_get(ports, i)),
                                            "protocol", "tcp"));
        json_object_set_new(app, "portDefinitions", defs);
    }
    json_object_del(app, "ports");
    if (!json_object_get(app, "portDefinitions")) {
        json_t *defs = json_array();
        if (!f->mapped && !f->worker)
            json_array_append_new(defs, json_pack("{s:i, s:s}", "port", 0, "protocol", "tcp"));
        json_object_set_new(app, "portDefinitions", defs);
    }
    json_t *defs = json_object_get(app, "portDefinitions");
    for (size_t i = 0; i < json_array_size(defs); i++)
        set_default(json_array_get(defs, i), "protocol", json_string("tcp"));
}

static void norm_container(json_t *app, const facts_t *f)
{
    json_t *ct = json_object_get(app, "container");
    if (!ct)
        return;
    set_default(ct, "type", json_string("DOCKER"));
    json_t *dk = json_object_get(ct, "docker");
    if (dk) {
        set_default(dk, "forcePullImage", json_false());
        set_default(dk, "network", json_string(f->network));
        norm_mappings(json_object_get(dk, "portMappings"), f->network);
    }
    norm_mappings(json_object_get(ct, "portMappings"), f->network);
}

static void norm_health(json_t *app)
{
    json_t *hcs = ensure(app, "healthChecks", json_array);
    for (size_t i = 0; i < json_array_size(hcs); i++) {
        json_t *hc = json_array_get(hcs, i);
        set_default(hc, "protocol", json_string("HTTP"));
        const char *proto = json_string_value(json_object_get(hc, "protocol"));
        set_default(hc, "gracePeriodSeconds", json_integer(DEF_HC_GRACE));
        set_default(hc, "intervalSeconds", json_integer(DEF_HC_INTERVAL));
        set_default(hc, "timeoutSeconds", json_integer(DEF_HC_TIMEOUT));
        set_default(hc, "maxConsecutiveFailures", json_integer(DEF_HC_MAX_FAILURES));
        set_default(hc, "delaySeconds", json_integer(DEF_HC_DELAY));
        if (is_http_check(proto)) {
            set_default(hc, "path", json_string("/"));
            set_default(hc, "ignoreHttp1xx", json_false());
        }
        if (strcmp(proto, "COMMAND") != 0 && !json_object_get(hc, "port"))
            set_default(hc, "portIndex", json_integer(0));
    }
}

static void norm_routes(json_t *app, const facts_t *f)
{
    json_t *routes = ensure(app, "routes", json_array);
    for (size_t i = 0; i < json_array_size(routes); i++) {
        json_t *r = json_array_get(routes, i);
        json_t *host = json_object_get(r, "host");
        if (host) {
            char *h = xstrdup(json_string_value(host));
            for (char *p = h; *p; p++)
                *p = lc(*p);
            json_object_set_new(r, "host", json_string(h));
            free(h);
        }
        set_default(r, "tcp", json_false());
        if (!json_is_true(json_object_get(r, "tcp")))
            set_default(r, "path", json_string("/"));
        if (f->worker)
            set_default(r, "event", json_string(DEF_WORKER_EVENT));
        else
            set_default(r, "portIndex", json_integer(0));
    }
}

/* Every worker gets a full profile, so the engine reads limits from the
 * spec alone. */
static void norm_pool(json_t *app)
{
    json_t *pool = ensure(app, "pool", json_object);
    set_default(pool, "pool-limit", json_integer(DEF_POOL_LIMIT));
    set_default(pool, "queue-limit", json_integer(DEF_QUEUE_LIMIT));
    set_default(pool, "concurrency", json_integer(DEF_CONCURRENCY));
    /* Cocaine: grow when the queue holds more than half a worker's share. */
    json_int_t pl = json_integer_value(json_object_get(pool, "pool-limit"));
    json_int_t ql = json_integer_value(json_object_get(pool, "queue-limit"));
    json_int_t grow = pl > 0 ? ql / pl / 2 : 1;
    set_default(pool, "grow-threshold", json_integer(grow < 1 ? 1 : grow));
    set_default(pool, "idle-timeout", json_integer(DEF_IDLE_TIMEOUT));
    set_default(pool, "spawn-timeout", json_integer(DEF_SPAWN_TIMEOUT));
    set_default(pool, "handshake-timeout", json_integer(DEF_HANDSHAKE_TIMEOUT));
    set_default(pool, "heartbeat-timeout", json_integer(DEF_HEARTBEAT_TIMEOUT));
    set_default(pool, "terminate-timeout", json_integer(DEF_TERMINATE_TIMEOUT));
    set_default(pool, "request-timeout", json_integer(DEF_REQUEST_TIMEOUT));
    set_default(pool, "crashlog-limit", json_integer(DEF_CRASHLOG_LIMIT));
    set_default(pool, "spare", json_true());
}

/* Build the normalized copy of a valid spec. Every default is written so
 * that equal meaning gives equal JSON (versions are compared and hashed on
 * this form) and so that readers of the stored spec need no defaults of
 * their own. */
static json_t *normalize(const json_t *input, const facts_t *f)
{
    json_t *app = json_deep_copy(input);
    norm_object(K_APP, app);

    char *id = NULL;
    if (spec_id_normalize(json_string_value(json_object_get(app, "id")), &id, NULL) == 0) {
        json_object_set_new(app, "id", json_string(id));
        free(id);
    }
    json_t *args = json_object_get(app, "args");
    if (args && json_array_size(args) == 0)
        json_object_del(app, "args");

    set_default(app, "kind", json_string(f->worker ? "worker" : "service"));
    set_default(app, "instances", json_integer(DEF_INSTANCES));
    set_default(app, "cpus", json_real(DEF_CPUS));
    set_default(app, "mem", json_integer(DEF_MEM));
    set_default(app, "disk", json_integer(DEF_DISK));
    set_default(app, "env", json_object());
    set_default(app, "labels", json_object());
    set_default(app, "requirePorts", json_false());
    set_default(app, "backoffSeconds", json_integer(DEF_BACKOFF_SECONDS));
    set_default(app, "backoffFactor", json_real(DEF_BACKOFF_FACTOR));
    set_default(app, "maxLaunchDelaySeconds", json_integer(DEF_MAX_LAUNCH_DELAY));
    set_default(app, "taskKillGracePeriodSeconds", json_integer(DEF_KILL_GRACE));
    set_default(app, "constraints", json_array());
    set_default(app, "autoRollback", json_false());
    set_default(app, "progressDeadlineSeconds", json_integer(DEF_PROGRESS_DEADLINE));
    set_default(app, "placement", json_string("spread"));

    json_t *up = ensure(app, "upgradeStrategy", json_object);
    set_default(up, "minimumHealthCapacity", json_integer(1));
    set_default(up, "maximumOverCapacity", json_integer(1));

    json_t *uris = json_object_get(app, "uris");
    if (uris && !json_object_get(app, "fetch")) {
        json_t *fetch = json_array();
        for (size_t i = 0; i < json_array_size(uris); i++)
            json_array_append_new(fetch, json_pack("{s:O}", "uri", json_array_get(uris, i)));
        json_object_set_new(app, "fetch", fetch);
    }
    json_object_del(app, "uris");
    json_t *fetch = ensure(app, "fetch", json_array);
    for (size_t i = 0; i < json_array_size(fetch); i++) {
        json_t *e = json_array_get(fetch, i);
        set_default(e, "extract", json_true());
        set_default(e, "executable", json_false());
        set_default(e, "cache", json_false());
    }

    norm_container(app, f);
    norm_ports(app, f);
    norm_health(app);
    norm_routes(app, f);
    if (f->worker)
        norm_pool(app);

    const char *isolate = "process";
    if (f->docker && get(f->docker, "image"))
        isolate = f->ctype && strcmp(f->ctype, "DOCKER") == 0 ? "docker" : "oci";
    set_default(app, "isolate", json_string(isolate));
    return app;
}

/* ------------------------------------------------------------------------
 * Public API
 * ------------------------------------------------------------------------ */

int spec_validate(const json_t *input, spec_result_t *res)
{
    res->app = NULL;
    res->errors = json_array();
    res->warnings = json_array();
    vctx_t c = {.errors = res->errors, .warnings = res->warnings};
    buf_init(&c.path, SPEC_PATH_MAX);
    buf_append_str(&c.path, "$");
    if (!json_is_object(input)) {
        verr(&c, "an app spec must be a JSON object");
    } else {
        c.f = compute_facts(input);
        validate_object(&c, K_APP, input);
        app_checks(&c, input);
    }
    buf_free(&c.path);
    if (json_array_size(res->errors))
        return -EINVAL;
    res->app = normalize(input, &c.f);
    return 0;
}

void spec_result_free(spec_result_t *res)
{
    if (!res)
        return;
    json_decref(res->app);
    json_decref(res->errors);
    json_decref(res->warnings);
    res->app = res->errors = res->warnings = NULL;
}

static bool id_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9');
}

int spec_id_normalize(const char *id, char **out, err_t *err)
{
    if (out)
        *out = NULL;
    if (!id || !*id)
        return err_set(err, -EINVAL, "app id is empty");
    size_t n = strlen(id);
    bool rel = id[0] != '/';
    if (n + rel > SPEC_ID_MAX)
        return err_set(err, -EINVAL, "app id is %zu characters long; at most %d are allowed",
                       n + rel, SPEC_ID_MAX);
    const char *p = rel ? id : id + 1;
    if (!*p)
        return err_set(err, -EINVAL,
                       "app id \"/\" has no name: use a path such as /production/test-server");
    for (;;) {
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        char seg[SPEC_ID_MAX + 1];
        memcpy(seg, p, len);
        seg[len] = '\0';
        if (len == 0)
            return err_set(err, -EINVAL,
                           "app id %s has an empty segment (\"//\" or a trailing \"/\")", QV(id));
        if (strcmp(seg, ".") == 0 || strcmp(seg, "..") == 0)
            return err_set(err, -EINVAL, "app id %s: segment \"%s\" is not allowed", QV(id), seg);
        bool ok = id_char(seg[0]) && id_char(seg[len - 1]);
        for (size_t i = 0; ok && i < len; i++)
            ok = id_char(seg[i]) || seg[i] == '-' || seg[i] == '.';
        if (!ok)
            return err_set(err, -EINVAL,
                           "app id %s: segment %s is invalid: use lowercase letters, digits, '-' "
                           "and '.', starting and ending with a letter or digit",
                           QV(id), QV(seg));
        if (!e)
            break;
        p = e + 1;
    }
    if (out)
        *out = rel ? xasprintf("/%s", id) : xstrdup(id);
    return 0;
}
