/* /v1/events: store changes of interest as server-sent events. Each stream
 * is one store watch, so an event stream sees every change in revision
 * order and can resume from any revision still in the store's history. */
#include "api/api_internal.h"

#include "sched/records.h"

#include "core/alloc.h"
#include "core/buf.h"
#include "core/log.h"
#include "core/str.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#define EVENTS_MAX_FILTERS 16

typedef struct ev_stream {
    api_t *api;
    http_req_t *req;
    store_watch_t *watch;
    uv_timer_t ping;
    char *filters[EVENTS_MAX_FILTERS];
    size_t n_filters;
    bool ended;
} ev_stream_t;

static void ev_stream_closed(uv_handle_t *h)
{
    ev_stream_t *s = h->data;
    for (size_t i = 0; i < s->n_filters; i++)
        free(s->filters[i]);
    free(s);
}

static void ev_stream_end(ev_stream_t *s)
{
    if (s->ended)
        return;
    s->ended = true;
    if (s->watch) {
        store_watch_cancel(s->watch);
        s->watch = NULL;
    }
    uv_timer_stop(&s->ping);
    http_stream_end(s->req);
    uv_close((uv_handle_t *)&s->ping, ev_stream_closed);
}

/* A filter matches a type exactly or as its prefix before a dot. */
static bool ev_filter_match(const ev_stream_t *s, const char *type)
{
    if (s->n_filters == 0)
        return true;
    for (size_t i = 0; i < s->n_filters; i++) {
        size_t n = strlen(s->filters[i]);
        if (strncmp(type, s->filters[i], n) == 0 && (type[n] == '\0' || type[n] == '.'))
            return true;
    }
    return false;
}

/* Translate one store change into an API event; NULL for changes the event
 * stream does not expose. */
static json_t *ev_translate(const store_event_t *e)
{
    const char *key = e->kv.key;
    bool put = e->type == STORE_EVENT_PUT;
    json_int_t rev = (json_int_t)e->kv.mod_rev;
    if (str_has_prefix(key, API_APPS_PREFIX "/")) {
        const char *id = key + strlen(API_APPS_PREFIX);
        if (!put)
            return json_pack("{s:s, s:I, s:s}", "type", "app.deleted", "revision", rev, "id", id);
        json_t *rec = json_loadb(e->kv.value, e->kv.value_len, 0, NULL);
        json_t *ev = json_pack("{s:s, s:I, s:s, s:O}", "type",
                               e->prev.mod_rev ? "app.updated" : "app.created", "revision", rev,
                               "id", id, "version", json_object_get(rec, "version"));
        json_decref(rec);
        return ev;
    }
    if (str_has_prefix(key, API_VERSIONS_PREFIX "/")) {
        if (!put)
            return NULL; /* history goes with app.deleted */
        const char *id = key + strlen(API_VERSIONS_PREFIX);
        const char *at = strrchr(id, '@');
        int64_t v = 0;
        if (!at || str_to_i64(at + 1, 0, INT64_MAX, &v))
            return NULL;
        char *app = xstrndup(id, (size_t)(at - id));
        json_t *ev = json_pack("{s:s, s:I, s:s, s:I}", "type", "version.created", "revision", rev,
                               "id", app, "version", (json_int_t)v);
        free(app);
        return ev;
    }
    if (str_has_prefix(key, API_NODES_PREFIX)) {
        const char *id = key + strlen(API_NODES_PREFIX);
        if (!put)
            return json_pack("{s:s, s:I, s:s}", "type", "node.lost", "revision", rev, "id", id);
        json_t *rec = json_loadb(e->kv.value, e->kv.value_len, 0, NULL);
        json_t *addr = json_object_get(rec, "address");
        json_t *ev = json_pack("{s:s, s:I, s:s, s:O}", "type", "node.registered", "revision", rev,
                               "id", id, "address", addr ? addr : json_null());
        json_decref(rec);
        return ev;
    }
    if (str_has_prefix(key, API_INSTANCES_PREFIX)) {
        const char *id = key + strlen(API_INSTANCES_PREFIX);
        if (!put)
            return json_pack("{s:s, s:I, s:s}", "type", "instance.removed", "revision", rev, "id",
                             id);
        json_t *rec = json_loadb(e->kv.value, e->kv.value_len, 0, NULL);
        json_t *ev =
            json_pack("{s:s, s:I, s:s}", "type", "instance.state", "revision", rev, "id", id);
        static const char *const fields[] = {"app", "version", "node", "state", "reason"};
        for (size_t i = 0; i < sizeof(fields) / sizeof(*fields); i++) {
            json_t *v = json_object_get(rec, fields[i]);
            json_object_set(ev, fields[i], v ? v : json_null());
        }
        json_decref(rec);
        return ev;
    }
    if (str_has_prefix(key, API_GROUPS_PREFIX)) {
        const char *name = key + strlen(API_GROUPS_PREFIX);
        return json_pack("{s:s, s:I, s:s}", "type", put ? "group.updated" : "group.deleted",
                         "revision", rev, "name", name);
    }
    if (str_has_prefix(key, REC_DEPLOYMENTS_PREFIX)) {
        if (!put)
            return NULL; /* pruning old records is not news */
        json_t *rec = json_loadb(e->kv.value, e->kv.value_len, 0, NULL);
        json_t *ev = json_pack("{s:s, s:I, s:s}", "type", "deployment", "revision", rev, "id",
                               key + strlen(REC_DEPLOYMENTS_PREFIX));
        static const char *const fields[] = {"app", "kind", "version", "status", "reason",
                                             "progress"};
        for (size_t i = 0; i < sizeof(fields) / sizeof(*fields); i++) {
            json_t *v = json_object_get(rec, fields[i]);
            json_object_set(ev, fields[i], v ? v : json_null());
        }
        json_t *steps = json_object_get(rec, "steps");
        json_t *last = json_array_get(steps, json_array_size(steps) - 1);
        json_object_set(ev, "step", last ? json_object_get(last, "message") : json_null());
        json_decref(rec);
        return ev;
    }
    if (str_has_prefix(key, REC_PLACEMENT_PREFIX "/")) {
        const char *id = key + strlen(REC_PLACEMENT_PREFIX);
        if (!put)
            return json_pack("{s:s, s:I, s:s}", "type", "app.placed", "revision", rev, "id", id);
        json_t *rec = json_loadb(e->kv.value, e->kv.value_len, 0, NULL);
        json_t *ev = json_pack("{s:s, s:I, s:s, s:O, s:O}", "type", "app.waiting", "revision", rev,
                               "id", id, "waiting",
                               json_object_get(rec, "waiting") ? json_object_get(rec, "waiting")
                                                               : json_null(),
                               "summary",
                               json_object_get(rec, "summary") ? json_object_get(rec, "summary")
                                                               : json_null());
        json_decref(rec);
        return ev;
    }
    if (str_has_prefix(key, API_KV_PREFIX)) {
        const char *k = key + strlen(API_KV_PREFIX);
        if (put)
            return json_pack("{s:s, s:I, s:s, s:I}", "type", "kv.put", "revision", rev, "key", k,
                             "mod_revision", rev);
        return json_pack("{s:s, s:I, s:s}", "type", "kv.deleted", "revision", rev, "key", k);
    }
    return NULL;
}

static void ev_write(ev_stream_t *s, buf_t *b)
{
    if (b->len && http_stream_write(s->req, b->data, b->len) != 0)
        ev_stream_end(s);
}

static void ev_watch_start(ev_stream_t *s, int64_t from);

static void ev_on_events(store_watch_t *w, int status, const store_event_t *events, size_t n,
                         int64_t compact_rev, void *data)
{
    ev_stream_t *s = data;
    buf_t b = BUF_INIT(0);
    if (status == -ESTALE) {
        s->watch = NULL;
        buf_printf(&b,
                   "event: reset\ndata: {\"type\":\"reset\",\"compact_revision\":%" PRId64
                   ",\"reason\":\"history before this revision was compacted; continuing from "
                   "now\"}\n\n",
                   compact_rev);
        ev_write(s, &b);
        buf_free(&b);
        if (!s->ended)
            ev_watch_start(s, 0);
        return;
    }
    if (status) {
        s->watch = NULL;
        log_warn("api", "event stream to %s ended: %s", s->req->remote, strerror(-status));
        ev_stream_end(s);
        return;
    }
    /* Translate and filter first, so the id can go on the last event
     * actually sent for each revision: a client resuming from that id has
     * seen the whole revision, whatever its filter dropped. */
    json_t **out = xcalloc(n ? n : 1, sizeof(json_t *));
    for (size_t i = 0; i < n; i++) {
        out[i] = ev_translate(&events[i]);
        if (out[i] && !ev_filter_match(s, json_string_value(json_object_get(out[i], "type")))) {
            json_decref(out[i]);
            out[i] = NULL;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (!out[i])
            continue;
        int64_t rev = events[i].kv.mod_rev;
        bool last_of_rev = true;
        for (size_t j = i + 1; j < n && events[j].kv.mod_rev == rev; j++)
            last_of_rev &= out[j] == NULL;
        char *text = json_dumps(out[i], JSON_COMPACT);
        if (last_of_rev)
            buf_printf(&b, "id: %" PRId64 "\n", rev);
        buf_printf(&b, "event: %s\ndata: %s\n\n",
                   json_string_value(json_object_get(out[i], "type")), text);
        free(text);
        json_decref(out[i]);
    }
    free(out);
    ev_write(s, &b);
    buf_free(&b);
}

static void ev_watch_start(ev_stream_t *s, int64_t from)
{
    int rc = store_watch(s->api->store, "/", true, from, ev_on_events, s, &s->watch);
    if (rc) {
        s->watch = NULL;
        log_warn("api", "cannot watch the store for events: %s", strerror(-rc));
        ev_stream_end(s);
    }
}

static void ev_ping(uv_timer_t *t)
{
    ev_stream_t *s = t->data;
    buf_t b = BUF_INIT(0);
    buf_append_str(&b, ": ping\n\n");
    ev_write(s, &b);
    buf_free(&b);
}

static void ev_abort(http_req_t *req, void *data)
{
    ev_stream_end(data);
}

void api_events_handle(api_t *api, http_req_t *req)
{
    if (strcmp(req->method, "GET") != 0) {
        api_reply_method_not_allowed(api, req, "GET");
        return;
    }
    int64_t from = 0;
    const char *last = http_req_header(req, "Last-Event-ID");
    const char *fromp = http_req_param(req, "from");
    if (fromp && str_to_i64(fromp, 0, INT64_MAX, &from)) {
        api_reply_error(api, req, 400, NULL, "query parameter from=%s: expected a revision", fromp);
        return;
    }
    if (last && !fromp) {
        if (str_to_i64(last, 0, INT64_MAX - 1, &from)) {
            api_reply_error(api, req, 400, NULL, "header Last-Event-ID: %.64s is not a revision",
                            last);
            return;
        }
        from += 1;
    }
    ev_stream_t *s = xcalloc(1, sizeof(*s));
    s->api = api;
    s->req = req;
    const char *types = http_req_param(req, "type");
    if (types && *types) {
        const char *p = types;
        while (*p) {
            const char *comma = strchr(p, ',');
            size_t len = comma ? (size_t)(comma - p) : strlen(p);
            if (len) {
                if (s->n_filters == EVENTS_MAX_FILTERS) {
                    free(s->filters[0]);
                    for (size_t i = 1; i < s->n_filters; i++)
                        free(s->filters[i]);
                    free(s);
                    api_reply_error(api, req, 400, NULL, "query parameter type: at most %d types",
                                    EVENTS_MAX_FILTERS);
                    return;
                }
                s->filters[s->n_filters++] = xstrndup(p, len);
            }
            p += len;
            if (*p == ',')
                p++;
        }
    }
    char idx[24];
    snprintf(idx, sizeof(idx), "%" PRId64, store_revision(api->store));
    http_header_t hdrs[] = {
        {"Content-Type", "text/event-stream"},
        {"Cache-Control", "no-cache"},
        {"X-Accel-Buffering", "no"},
        {"X-Drover-Index", idx},
    };
    uv_timer_init(api->loop, &s->ping);
    s->ping.data = s;
    http_req_on_abort(req, ev_abort, s);
    if (http_stream_begin(req, 200, hdrs, 4) != 0) {
        ev_stream_end(s);
        return;
    }
    buf_t b = BUF_INIT(0);
    buf_printf(&b, "retry: 2000\n: connected at revision %s\n\n", idx);
    ev_write(s, &b);
    buf_free(&b);
    if (s->ended)
        return;
    uv_timer_start(&s->ping, ev_ping, (uint64_t)api->opts.sse_ping_ms,
                   (uint64_t)api->opts.sse_ping_ms);
    ev_watch_start(s, from);
}
