#include "agent/launch.h"

#include "core/alloc.h"
#include "core/buf.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define LAUNCH_MAX_PORTS 1000

void launch_ports_free(launch_ports_t *p)
{
    for (size_t i = 0; i < p->n; i++)
        free(p->names[i]);
    free(p->names);
    free(p->want);
    memset(p, 0, sizeof(*p));
}

int launch_ports_from_spec(const json_t *spec, launch_ports_t *out, err_t *err)
{
    memset(out, 0, sizeof(*out));
    const json_t *defs = json_object_get(spec, "portDefinitions");
    bool require = json_is_true(json_object_get(spec, "requirePorts"));
    const char *port_key = "port";
    if (!json_array_size(defs)) {
        const json_t *docker = json_object_get(json_object_get(spec, "container"), "docker");
        defs = json_object_get(docker, "portMappings");
        if (!json_array_size(defs))
            defs = json_object_get(json_object_get(spec, "container"), "portMappings");
        port_key = "hostPort";
        require = true; /* a mapping's non-zero hostPort is always a fixed port */
    }
    size_t n = json_array_size(defs);
    if (n > LAUNCH_MAX_PORTS)
        return err_set(err, -E2BIG, "%zu ports asked for, at most %d", n, LAUNCH_MAX_PORTS);
    out->n = n;
    out->want = xcalloc(n ? n : 1, sizeof(int));
    out->names = xcalloc(n ? n : 1, sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        const json_t *d = json_array_get(defs, i);
        json_int_t port = json_integer_value(json_object_get(d, port_key));
        out->want[i] = require && port > 0 && port <= 65535 ? (int)port : 0;
        const json_t *name = json_object_get(d, "name");
        out->names[i] = json_is_string(name) ? xstrdup(json_string_value(name)) : NULL;
    }
    return 0;
}

/* A growable NULL-terminated string vector. */
typedef struct strv {
    char **v;
    size_t n, cap;
} strv_t;

static void strv_push(strv_t *s, char *owned)
{
    if (s->n + 2 > s->cap) {
        s->cap = s->cap ? s->cap * 2 : 32;
        s->v = xrealloc(s->v, s->cap * sizeof(char *));
    }
    s->v[s->n++] = owned;
    s->v[s->n] = NULL;
}

/* Set NAME=value, replacing an earlier entry of the same name, so drover's
 * variables win over the spec's. */
static void env_set(strv_t *env, const char *name, const char *value)
{
    size_t nl = strlen(name);
    char *entry = xasprintf("%s=%s", name, value);
    for (size_t i = 0; i < env->n; i++) {
        if (strncmp(env->v[i], name, nl) == 0 && env->v[i][nl] == '=') {
            free(env->v[i]);
            env->v[i] = entry;
            return;
        }
    }
    strv_push(env, entry);
}

static bool env_has(const strv_t *env, const char *name)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < env->n; i++)
        if (strncmp(env->v[i], name, nl) == 0 && env->v[i][nl] == '=')
            return true;
    return false;
}

/* PORT_<NAME>: Marathon upper-cases the name and maps other characters to
 * '_' so it is a valid variable name. */
static char *launch_port_var(const char *name)
{
    char *v = xasprintf("PORT_%s", name);
    for (char *p = v + 5; *p; p++)
        *p = isalnum((unsigned char)*p) ? (char)toupper((unsigned char)*p) : '_';
    return v;
}

void launch_strv_free(char **v)
{
    if (!v)
        return;
    for (char **p = v; *p; p++)
        free(*p);
    free(v);
}

int launch_build(const json_t *spec, const launch_ctx_t *ctx, char ***argv_out, char ***envp_out,
                 err_t *err)
{
    *argv_out = *envp_out = NULL;
    strv_t argv = {0}, env = {0};
    const char *cmd = json_string_value(json_object_get(spec, "cmd"));
    const json_t *args = json_object_get(spec, "args");
    if (cmd && *cmd) {
        strv_push(&argv, xstrdup("/bin/sh"));
        strv_push(&argv, xstrdup("-c"));
        strv_push(&argv, xstrdup(cmd));
    } else if (json_array_size(args)) {
        size_t i;
        const json_t *a;
        json_array_foreach(args, i, a)
        {
            if (!json_is_string(a)) {
                launch_strv_free(argv.v);
                return err_set(err, -EINVAL, "$.args[%zu] is not a string", i);
            }
            strv_push(&argv, xstrdup(json_string_value(a)));
        }
    } else {
        return err_set(err, -EINVAL,
                       "nothing to run with the process isolate: the spec has no cmd or args");
    }

    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)json_object_get(spec, "env"), k, v)
    {
        if (json_is_string(v))
            env_set(&env, k, json_string_value(v));
    }
    if (!env_has(&env, "PATH"))
        env_set(&env, "PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    if (!env_has(&env, "HOME"))
        env_set(&env, "HOME", ctx->sandbox);

    char num[32];
    buf_t ports = BUF_INIT(0);
    size_t n = ctx->port_info ? ctx->port_info->n : 0;
    for (size_t i = 0; i < n; i++) {
        snprintf(num, sizeof(num), "%d", ctx->ports[i]);
        char name[32];
        snprintf(name, sizeof(name), "PORT%zu", i);
        env_set(&env, name, num);
        buf_printf(&ports, "%s%d", i ? "," : "", ctx->ports[i]);
        if (ctx->port_info->names[i]) {
            char *var = launch_port_var(ctx->port_info->names[i]);
            env_set(&env, var, num);
            free(var);
        }
    }
    if (n) {
        snprintf(num, sizeof(num), "%d", ctx->ports[0]);
        env_set(&env, "PORT", num);
        env_set(&env, "PORTS", ports.data);
    }
    buf_free(&ports);
    snprintf(num, sizeof(num), "%" PRId64, ctx->version);
    env_set(&env, "HOST", ctx->host);
    env_set(&env, "DROVER_APP_ID", ctx->app_id);
    env_set(&env, "DROVER_APP_VERSION", num);
    env_set(&env, "DROVER_INSTANCE_ID", ctx->instance_id);
    env_set(&env, "DROVER_NODE", ctx->node);
    env_set(&env, "MARATHON_APP_ID", ctx->app_id);
    env_set(&env, "MARATHON_APP_VERSION", num);
    env_set(&env, "MESOS_TASK_ID", ctx->instance_id);
    env_set(&env, "MESOS_SANDBOX", ctx->sandbox);
    *argv_out = argv.v;
    *envp_out = env.v;
    return 0;
}
