/* Consul-style blocking reads, shared by every endpoint that offers
 * ?index=N&wait=D: a store watch from the client's index plus a timer.
 * Whichever fires first ends the wait; the caller then reads the current
 * state fresh, so an answer is always current state, never a replayed
 * event. */
#include "api/api_internal.h"

#include "core/alloc.h"

#include <errno.h>
#include <stdlib.h>

typedef struct api_wait {
    api_t *api;
    http_req_t *req;
    store_watch_t *watch;
    uv_timer_t timer;
    bool waiting;
    api_wait_fn read;
    api_wait_fn gone;
    void *data;
} api_wait_t;

static void wait_closed(uv_handle_t *h)
{
    free(h->data);
}

/* End the wait exactly once: the change, the timeout or the client's
 * departure, whichever came first. */
static void wait_end(api_wait_t *w, bool respond)
{
    if (!w->waiting)
        return;
    w->waiting = false;
    if (w->watch) {
        store_watch_cancel(w->watch);
        w->watch = NULL;
    }
    uv_timer_stop(&w->timer);
    http_req_on_abort(w->req, NULL, NULL); /* w is freed below */
    api_wait_fn read = w->read, gone = w->gone;
    void *data = w->data;
    http_req_t *req = w->req;
    uv_close((uv_handle_t *)&w->timer, wait_closed);
    if (respond) {
        read(data);
    } else {
        http_respond(req, 503, NULL, 0, "", 0);
        gone(data);
    }
}

static void wait_event(store_watch_t *sw, int status, const store_event_t *events, size_t n,
                       int64_t compact_rev, void *data)
{
    api_wait_t *w = data;
    if (status)
        w->watch = NULL; /* ended by the store; nothing to cancel */
    if (status || n > 0)
        wait_end(w, true);
}

static void wait_timeout(uv_timer_t *t)
{
    wait_end(t->data, true);
}

static void wait_abort(http_req_t *req, void *data)
{
    wait_end(data, false);
}

void api_blocking_read(api_t *api, http_req_t *req, const char *key, bool prefix, api_wait_fn read,
                       api_wait_fn gone, void *data)
{
    int64_t index, wait_ms;
    err_t err = {0};
    if (api_parse_blocking(req, &index, &wait_ms, &err)) {
        api_reply_error(api, req, 400, NULL, "%s", err.msg);
        gone(data);
        return;
    }
    /* An index from the future (a store that was reset) answers at once,
     * as Consul does, so a client never waits on a revision that will not
     * come. */
    if (index <= 0 || index > store_revision(api->store)) {
        read(data);
        return;
    }
    api_wait_t *w = xcalloc(1, sizeof(*w));
    w->api = api;
    w->req = req;
    w->read = read;
    w->gone = gone;
    w->data = data;
    uv_timer_init(api->loop, &w->timer);
    w->timer.data = w;
    int rc = store_watch(api->store, key, prefix, index + 1, wait_event, w, &w->watch);
    if (rc) {
        uv_close((uv_handle_t *)&w->timer, wait_closed);
        api_reply_store_error(api, req, rc, NULL);
        gone(data);
        return;
    }
    w->waiting = true;
    uv_timer_start(&w->timer, wait_timeout, (uint64_t)wait_ms, 0);
    http_req_on_abort(req, wait_abort, w);
}
