/* sched/records: see records.h. */
#include "sched/records.h"

#include "core/alloc.h"
#include "core/json.h"
#include "core/str.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

char *rec_version_key(const char *app_id, int64_t version)
{
    return xasprintf("%s%s@%010" PRId64, REC_VERSIONS_PREFIX, app_id, version);
}

char *rec_deployment_id_new(void)
{
    unsigned char rnd[6];
    if (uv_random(NULL, NULL, rnd, sizeof(rnd), 0, NULL) != 0) {
        uint64_t x = uv_hrtime() ^ (uint64_t)(uintptr_t)rnd;
        memcpy(rnd, &x, sizeof(rnd));
    }
    char *id = xmalloc(2 * sizeof(rnd) + 1);
    for (size_t i = 0; i < sizeof(rnd); i++) {
        id[2 * i] = "0123456789abcdef"[rnd[i] >> 4];
        id[2 * i + 1] = "0123456789abcdef"[rnd[i] & 15];
    }
    id[2 * sizeof(rnd)] = '\0';
    return id;
}

json_t *rec_config_env(const store_kv_t *kvs, size_t n, const char *kv_prefix)
{
    json_t *env = json_object();
    char *full = xasprintf("%s%s/", REC_KV_PREFIX, kv_prefix);
    size_t flen = strlen(full), total = 0;
    for (size_t i = 0; i < n; i++) {
        const store_kv_t *kv = &kvs[i];
        if (!str_has_prefix(kv->key, full) || !kv->key[flen])
            continue;
        /* jansson refuses invalid UTF-8; a NUL cannot go into an environment */
        json_t *val = memchr(kv->value, '\0', kv->value_len)
                          ? NULL
                          : json_stringn(kv->value, kv->value_len);
        if (!val)
            continue;
        const char *rest = kv->key + flen;
        size_t nlen = strlen(rest);
        if (total + nlen + kv->value_len > REC_CONFIG_ENV_MAX) {
            json_decref(val);
            break;
        }
        char *name = xmalloc(nlen + 1);
        for (size_t k = 0; k < nlen; k++) {
            char ch = rest[k];
            if (ch >= 'a' && ch <= 'z')
                ch = (char)(ch - 'a' + 'A');
            else if (!((ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_'))
                ch = '_';
            name[k] = ch;
        }
        name[nlen] = '\0';
        json_object_set_new(env, name, val);
        total += nlen + kv->value_len;
        free(name);
    }
    free(full);
    return env;
}

json_t *rec_effective_spec(const json_t *spec, const json_t *config_env)
{
    json_t *eff = json_deep_copy(spec);
    if (json_object_size(config_env)) {
        json_t *env = json_object_get(eff, "env");
        if (!json_is_object(env)) {
            env = json_object();
            json_object_set_new(eff, "env", env);
        }
        json_object_update(env, (json_t *)config_env);
    }
    return eff;
}

void rec_signature(const json_t *spec, const json_t *config_env, int64_t restart, char out[65])
{
    json_t *eff = spec ? rec_effective_spec(spec, config_env) : json_object();
    json_object_del(eff, "instances");
    if (restart)
        json_object_set_new(eff, "\x01restart", json_integer(restart));
    size_t len;
    char *text = json_canonical(eff, &len);
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)text, len, md);
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    free(text);
    json_decref(eff);
}

static const char *const rec_kind_names[] = {
    [REC_DEPLOY] = "deploy",   [REC_SCALE] = "scale",     [REC_CONFIG] = "config",
    [REC_ROLLBACK] = "rollback", [REC_RESTART] = "restart", [REC_STOP] = "stop",
    [REC_START] = "start",     [REC_CANARY] = "canary",   [REC_PROMOTE] = "promote",
    [REC_ABORT] = "abort",
};

static json_int_t rec_int(const json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}

static json_int_t rec_instances(const json_t *spec)
{
    return rec_int(spec, "instances");
}

/* The newest version number in use (the canary's is above the app's). */
static json_int_t rec_top_version(const json_t *cur)
{
    json_int_t v = rec_int(cur, "version");
    json_t *canary = json_object_get(cur, "canary");
    if (json_is_object(canary) && rec_int(canary, "version") > v)
        v = rec_int(canary, "version");
    json_int_t last = rec_int(cur, "last_version");
    return last > v ? last : v;
}

static json_t *rec_or_null(const json_t *v)
{
    return v ? json_deep_copy(v) : json_null();
}

int rec_change(const rec_change_t *in, rec_out_t *out, err_t *err)
{
    memset(out, 0, sizeof(*out));
    const json_t *cur = in->cur;
    const json_t *cur_spec = json_object_get(cur, "spec");
    json_t *cur_canary = json_object_get(cur, "canary");
    bool has_canary = json_is_object(cur_canary);
    if (!cur && in->kind != REC_DEPLOY)
        return err_set(err, -ENOENT, "app %s not found", in->app_id);
    if ((in->kind == REC_PROMOTE || in->kind == REC_ABORT) && !has_canary)
        return err_set(err, -EALREADY, "app %s has no canary to %s", in->app_id,
                       in->kind == REC_PROMOTE ? "promote" : "abort");
    if (in->kind == REC_START && !json_is_object(json_object_get(cur, "stopped")))
        return err_set(err, -EALREADY, "app %s is not stopped", in->app_id);
    if (in->kind == REC_STOP && json_is_object(json_object_get(cur, "stopped")))
        return err_set(err, -EALREADY, "app %s is already stopped", in->app_id);
    if (in->kind == REC_CANARY && (in->canary_percent < 1 || in->canary_percent > 99))
        return err_set(err, -EINVAL, "canary percent %d: must be 1..99", in->canary_percent);

    const json_t *cur_env = json_object_get(cur, "config_env");
    json_int_t cur_version = rec_int(cur, "version");
    json_int_t restart = rec_int(cur, "restart");
    const char *kind = rec_kind_names[in->kind];
    json_t *spec = NULL; /* the main spec after the change */
    json_t *env = NULL;
    json_t *canary = NULL; /* the app's canary after the change */
    json_t *stopped = json_incref(json_object_get(cur, "stopped"));
    bool new_version = false;
    json_int_t version = cur_version;

    switch (in->kind) {
    case REC_DEPLOY:
    case REC_SCALE:
    case REC_CONFIG:
    case REC_ROLLBACK:
        spec = json_deep_copy(in->spec);
        env = rec_or_null(in->config_env);
        if (cur && json_equal(spec, (json_t *)cur_spec) &&
            json_equal(env, cur_env ? (json_t *)cur_env : json_null()) && !has_canary) {
            json_decref(spec);
            json_decref(env);
            json_decref(stopped);
            out->changed = false;
            out->version_no = cur_version;
            out->kind = kind;
            return 0;
        }
        if (in->kind == REC_DEPLOY) {
            char a[65], b[65];
            rec_signature(spec, env, restart, a);
            rec_signature(cur_spec, cur_env, restart, b);
            if (!cur)
                kind = "create";
            else if (strcmp(a, b) == 0)
                kind = "scale";
            else if (json_equal(spec, (json_t *)cur_spec))
                kind = "config";
        }
        json_decref(stopped);
        stopped = json_null();
        new_version = true;
        break;
    case REC_RESTART:
        spec = json_deep_copy(cur_spec);
        env = rec_or_null(cur_env);
        restart++;
        new_version = true;
        break;
    case REC_STOP:
    case REC_START:
        spec = json_deep_copy(cur_spec);
        env = rec_or_null(cur_env);
        json_decref(stopped);
        if (in->kind == REC_STOP) {
            stopped = json_pack("{s:I}", "instances", rec_instances(cur_spec));
            json_object_set_new(spec, "instances", json_integer(0));
        } else {
            json_object_set_new(
                spec, "instances",
                json_integer(rec_int(json_object_get(cur, "stopped"), "instances")));
            stopped = json_null();
        }
        new_version = true;
        break;
    case REC_CANARY: {
        spec = json_deep_copy(cur_spec);
        env = rec_or_null(cur_env);
        json_int_t n = rec_instances(in->spec);
        json_int_t cn = (json_int_t)llround((double)n * in->canary_percent / 100.0);
        if (cn < 1)
            cn = 1;
        canary = json_pack("{s:I, s:i, s:I, s:O, s:o}", "version",
                           (json_int_t)rec_top_version(cur) + 1, "percent", in->canary_percent,
                           "instances", cn, "spec", in->spec, "config_env",
                           rec_or_null(in->config_env));
        break;
    }
    case REC_PROMOTE:
        spec = json_deep_copy(json_object_get(cur_canary, "spec"));
        env = json_deep_copy(json_object_get(cur_canary, "config_env"));
        version = rec_int(cur_canary, "version");
        json_decref(stopped);
        stopped = json_null();
        break;
    case REC_ABORT:
        spec = json_deep_copy(cur_spec);
        env = rec_or_null(cur_env);
        break;
    }
    if (!canary)
        canary = json_null();
    if (new_version)
        version = rec_top_version(cur) + 1;

    char *dep_id = rec_deployment_id_new();
    const char *created_at = cur ? json_str(cur, "created_at") : NULL;
    json_int_t last = rec_top_version(cur);
    if (version > last)
        last = version;
    if (json_is_object(canary) && rec_int(canary, "version") > last)
        last = rec_int(canary, "version");
    out->app = json_pack(
        "{s:s, s:I, s:I, s:s, s:s, s:O, s:o, s:s, s:o, s:o, s:o, s:I}", "id", in->app_id, "version",
        version, "last_version", last, "created_at", created_at ? created_at : in->now,
        "updated_at", in->now, "spec", spec, "warnings",
        in->warnings ? json_incref((json_t *)in->warnings)
                     : rec_or_null(json_object_get(cur, "warnings")),
        "deployment", dep_id, "canary", canary, "config_env", env ? env : json_null(), "stopped",
        stopped ? stopped : json_null(), "restart", restart);
    if (json_is_null(json_object_get(out->app, "warnings")))
        json_object_set_new(out->app, "warnings", json_array());
    if (json_is_null(json_object_get(out->app, "config_env")))
        json_object_del(out->app, "config_env");

    json_int_t dep_version = version;
    const json_t *vspec = spec;
    const json_t *venv = env;
    if (in->kind == REC_CANARY) {
        dep_version = rec_int(canary, "version");
        vspec = in->spec;
        venv = in->config_env;
    }
    if (new_version || in->kind == REC_CANARY) {
        out->version = json_pack("{s:s, s:I, s:s, s:s, s:O, s:O, s:O, s:I}", "id", in->app_id,
                                 "version", dep_version, "created_at", in->now, "kind", kind,
                                 "spec", vspec, "warnings", json_object_get(out->app, "warnings"),
                                 "config_env", venv ? venv : json_null(), "restart", restart);
    }
    char *msg = xasprintf("%s: version %" JSON_INTEGER_FORMAT "%s%s", kind, dep_version,
                          in->reason ? ", " : "", in->reason ? in->reason : "");
    json_t *from = cur ? json_pack("{s:I, s:O, s:O, s:I}", "version", cur_version, "spec",
                                   cur_spec, "config_env", cur_env ? cur_env : json_null(),
                                   "restart", rec_int(cur, "restart"))
                       : json_null();
    out->deployment = json_pack(
        "{s:s, s:s, s:s, s:o, s:I, s:s, s:n, s:s, s:s, s:n, s:{s:I, s:I}, s:n, s:[{s:s, s:s}], "
        "s:n, s:o}",
        "id", dep_id, "app", in->app_id, "kind", kind, "from_version",
        cur ? json_integer(cur_version) : json_null(), "version", dep_version, "status", "running",
        "reason", "created_at", in->now, "updated_at", in->now, "finished_at", "target",
        "instances", rec_instances(spec), "canary_instances",
        json_is_object(canary) ? rec_int(canary, "instances") : 0, "progress", "steps", "at",
        in->now, "message", msg, "placement", "from", from);
    free(msg);
    free(dep_id);
    json_decref(spec); /* the app record holds its own reference */
    out->version_no = dep_version;
    out->kind = kind;
    out->changed = true;
    return 0;
}

void rec_out_free(rec_out_t *out)
{
    json_decref(out->app);
    json_decref(out->version);
    json_decref(out->deployment);
    memset(out, 0, sizeof(*out));
}

size_t rec_ops(const char *app_id, const rec_out_t *out, store_op_t ops[4])
{
    size_t n = 0, len;
    char *text = json_canonical(out->app, &len);
    ops[n++] = (store_op_t){.type = STORE_OP_PUT,
                            .key = xasprintf("%s%s", REC_APPS_PREFIX, app_id),
                            .value = text,
                            .value_len = len};
    if (out->version) {
        text = json_canonical(out->version, &len);
        ops[n++] = (store_op_t){
            .type = STORE_OP_PUT,
            .key = rec_version_key(app_id, json_integer_value(json_object_get(out->version, "version"))),
            .value = text,
            .value_len = len};
    }
    text = json_canonical(out->deployment, &len);
    ops[n++] = (store_op_t){
        .type = STORE_OP_PUT,
        .key = xasprintf("%s%s", REC_DEPLOYMENTS_PREFIX, json_str(out->deployment, "id")),
        .value = text,
        .value_len = len};
    return n;
}

void rec_ops_free(store_op_t *ops, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free((char *)ops[i].key);
        free((char *)ops[i].value);
    }
}
