#include "spec/spec.h"

#include "core/alloc.h"
#include "core/str.h"

#include <openssl/sha.h>

#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define TAGS_MAX 4096

static const char *str_member(const json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* SERVICE_TAGS from env first (where marathon-registrator read it), then
 * labels; NULL when neither has it. */
static const char *service_tags(const json_t *spec)
{
    const char *t = str_member(json_object_get(spec, "env"), "SERVICE_TAGS");
    return t ? t : str_member(json_object_get(spec, "labels"), "SERVICE_TAGS");
}

/* Calls fn for each trimmed, non-empty comma-separated item of list. */
static void each_item(const char *list, void (*fn)(const char *item, void *data), void *data)
{
    char buf[TAGS_MAX];
    if (!list || strlen(list) >= sizeof(buf))
        return;
    snprintf(buf, sizeof(buf), "%s", list);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ' || *tok == '\t')
            tok++;
        size_t n = strlen(tok);
        while (n && (tok[n - 1] == ' ' || tok[n - 1] == '\t'))
            tok[--n] = '\0';
        if (n)
            fn(tok, data);
    }
}

static void find_staging(const char *item, void *data)
{
    if (strcasecmp(item, "staging") == 0)
        *(bool *)data = true;
}

static bool is_staging(const json_t *spec)
{
    const char *env = str_member(json_object_get(spec, "labels"), "environment");
    if (env)
        return strcasecmp(env, "staging") == 0;
    bool staging = false;
    each_item(service_tags(spec), find_staging, &staging);
    if (staging)
        return true;
    const char *id = str_member(spec, "id");
    for (const char *p = id ? strstr(id, "/staging") : NULL; p; p = strstr(p + 1, "/staging"))
        if (p[8] == '/' || p[8] == '\0')
            return true;
    return false;
}

/* "1" + port, as text, when it is still a port; 0 otherwise. */
static int staging_port(long long port)
{
    char text[16];
    snprintf(text, sizeof(text), "1%lld", port);
    int64_t v;
    return str_to_i64(text, 1, 65535, &v) == 0 ? (int)v : 0;
}

typedef struct derive {
    json_t *out;
    const char *balance; /* from a balance-* tag */
} derive_t;

static bool internal_taken(const json_t *routes, long long port)
{
    size_t i;
    json_t *r;
    json_array_foreach(routes, i, r) if (json_integer_value(json_object_get(r, "internal")) ==
                                         port) return true;
    return false;
}

static bool host_taken(const json_t *routes, const char *host, const char *path)
{
    size_t i;
    json_t *r;
    json_array_foreach(routes, i, r)
    {
        const char *h = str_member(r, "host"), *p = str_member(r, "path");
        if (h && strcasecmp(h, host) == 0 && p && strcmp(p, path) == 0)
            return true;
    }
    return false;
}

static void tag_balance(const char *item, void *data)
{
    derive_t *d = data;
    if (strcmp(item, "balance-roundrobin") == 0)
        d->balance = "roundrobin";
    else if (strcmp(item, "balance-leastconn") == 0)
        d->balance = "leastconn";
}

static void tag_route(const char *item, void *data)
{
    derive_t *d = data;
    static const char http[] = "internal-listen-http-", tcp[] = "internal-listen-tcp-";
    bool is_tcp = strncmp(item, tcp, sizeof(tcp) - 1) == 0;
    if (!is_tcp && strncmp(item, http, sizeof(http) - 1) != 0)
        return;
    int64_t port;
    if (str_to_i64(item + (is_tcp ? sizeof(tcp) : sizeof(http)) - 1, 1, 65535, &port) < 0 ||
        internal_taken(d->out, port))
        return;
    json_t *r =
        json_pack("{s:I, s:b, s:i}", "internal", (json_int_t)port, "tcp", is_tcp, "portIndex", 0);
    if (!is_tcp)
        json_object_set_new(r, "path", json_string("/"));
    if (d->balance)
        json_object_set_new(r, "balance", json_string(d->balance));
    json_array_append_new(d->out, r);
}

typedef struct vhost {
    json_t *out;
    int index;
    const char *path;
} vhost_t;

static void vhost_route(const char *item, void *data)
{
    vhost_t *v = data;
    char host[256];
    size_t n = strlen(item);
    if (n >= sizeof(host))
        return;
    for (size_t i = 0; i <= n; i++)
        host[i] = (char)((item[i] >= 'A' && item[i] <= 'Z') ? item[i] - 'A' + 'a' : item[i]);
    if (host_taken(v->out, host, v->path))
        return;
    json_array_append_new(v->out, json_pack("{s:s, s:s, s:i, s:b}", "host", host, "path", v->path,
                                            "portIndex", v->index, "tcp", 0));
}

json_t *spec_routes(const json_t *spec)
{
    json_t *out = json_array();
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(spec, "routes"), i, r)
        json_array_append_new(out, json_deep_copy(r));

    const char *tags = service_tags(spec);
    derive_t d = {.out = out};
    each_item(tags, tag_balance, &d);
    each_item(tags, tag_route, &d);

    const json_t *labels = json_object_get(spec, "labels");
    for (int n = 0; n < 10; n++) {
        char key[32];
        snprintf(key, sizeof(key), "HAPROXY_%d_VHOST", n);
        const char *hosts = str_member(labels, key);
        if (!hosts)
            continue;
        snprintf(key, sizeof(key), "HAPROXY_%d_PATH", n);
        const char *path = str_member(labels, key);
        vhost_t v = {.out = out, .index = n, .path = path && path[0] == '/' ? path : "/"};
        each_item(hosts, vhost_route, &v);
    }

    if (is_staging(spec)) {
        json_t *kept = json_array();
        json_array_foreach(out, i, r)
        {
            json_int_t p = json_integer_value(json_object_get(r, "internal"));
            if (p) {
                int sp = staging_port(p);
                if (!sp)
                    continue;
                json_object_set_new(r, "internal", json_integer(sp));
            }
            json_array_append(kept, r);
        }
        json_decref(out);
        out = kept;
    }
    return out;
}

char *spec_canary_group(const char *app_id)
{
    const char *p = app_id[0] == '/' ? app_id + 1 : app_id;
    size_t n = strlen(p);
    /* group names: [a-z0-9][a-z0-9.-]{0,62} */
    bool fits = n > 0 && n + 7 <= 63;
    for (size_t i = 0; fits && i < n; i++) {
        char ch = p[i];
        fits = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' ||
               ch == '/';
    }
    if (fits) {
        char *name = xasprintf("canary.%s", p);
        for (char *c = name; *c; c++)
            if (*c == '/')
                *c = '.';
        return name;
    }
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)app_id, strlen(app_id), md);
    char hex[17];
    for (int i = 0; i < 8; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return xasprintf("canary.%s", hex);
}
