/* Calls from the agent to the API over libcurl's multi interface, driven
 * by the agent's own loop (uv_poll per socket, one uv_timer for curl's
 * timeouts). Nothing blocks the loop: connecting, sending and reading all
 * happen as the sockets become ready, so health checks and instance exits
 * keep being handled while the server is slow or down.
 *
 * Why not the blocking client on libuv's thread pool: a node starting a
 * thousand instances sends thousands of reports, and with one pool thread
 * per call (16 threads, two of them held by long polls) the heartbeat
 * waited behind all of them until the node's lease ran out. Here every
 * call runs at once, connections to the server are kept alive and reused
 * (no connect per report), and the number of reports in flight is bounded
 * by their caller (instance.c), not by a shared pool. */
#include "agent/agent_internal.h"

#include "core/alloc.h"
#include "core/buf.h"
#include "core/log.h"
#include "core/str.h"

#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <strings.h>

#define REMOTE_MAX_BODY        (16u * 1024 * 1024)
#define REMOTE_INDEX_MAX       32 /* digits of X-Drover-Index kept */
#define REMOTE_CONNECT_TIMEOUT 10000L
#define REMOTE_MAX_CONNS       32L /* idle connections kept for reuse */

typedef struct remote_req {
    struct remote *r;
    CURL *easy;
    struct curl_slist *headers;
    char *method;
    char *url;
    char *body;
    long timeout_ms;
    remote_cb cb;
    void *data;
    buf_t resp;
    char index[REMOTE_INDEX_MAX + 1];
    bool body_too_big;
    int early_rc; /* failed before curl had it: completed by remote_complete_failed */
    err_t early_err;
    char errbuf[CURL_ERROR_SIZE];
    struct remote_req *prev, *next; /* every call not yet completed */
} remote_req_t;

typedef struct remote_sock {
    uv_poll_t poll;
    struct remote *r;
    curl_socket_t fd;
    struct remote_sock *prev, *next; /* watched sockets */
} remote_sock_t;

struct remote {
    agent_t *agent;
    CURLM *multi;
    uv_timer_t timer; /* curl's timeout, and the cancellation at shutdown */
    uv_timer_t later; /* completes calls that failed before reaching curl */
    remote_req_t *reqs;
    remote_sock_t *socks;
    int open_handles; /* timers + socket polls not yet closed */
    bool closing;
};

static pthread_once_t remote_once = PTHREAD_ONCE_INIT;
static CURLcode remote_init_rc;

static void remote_global_init(void)
{
    remote_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---- completion ---- */

static void remote_unlink(remote_req_t *q)
{
    struct remote *r = q->r;
    if (q->prev)
        q->prev->next = q->next;
    else
        r->reqs = q->next;
    if (q->next)
        q->next->prev = q->prev;
    q->prev = q->next = NULL;
}

static void remote_req_free(remote_req_t *q)
{
    if (q->easy)
        curl_easy_cleanup(q->easy);
    curl_slist_free_all(q->headers);
    buf_free(&q->resp);
    free(q->method);
    free(q->url);
    free(q->body);
    free(q);
}

/* Name the transport problem the way the callers act on it: -ETIMEDOUT
 * makes a long poll ask again, anything else waits for a retry. */
static int remote_error(remote_req_t *q, CURLcode cc, err_t *err)
{
    const char *why = q->errbuf[0] ? q->errbuf : curl_easy_strerror(cc);
    switch (cc) {
    case CURLE_COULDNT_CONNECT:
        return err_set(err, -ECONNREFUSED, "cannot connect to %s: %s", q->url, why);
    case CURLE_COULDNT_RESOLVE_HOST:
        return err_set(err, -EHOSTUNREACH, "cannot resolve host of %s: %s", q->url, why);
    case CURLE_OPERATION_TIMEDOUT:
        return err_set(err, -ETIMEDOUT, "%s %s: timed out after %ld ms", q->method, q->url,
                       q->timeout_ms);
    case CURLE_WRITE_ERROR:
        if (q->body_too_big)
            return err_set(err, -E2BIG, "%s %s: response body exceeds %u bytes", q->method, q->url,
                           REMOTE_MAX_BODY);
        return err_set(err, -EIO, "%s %s: %s", q->method, q->url, why);
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_PARTIAL_FILE:
        return err_set(err, -ECONNRESET, "%s %s: connection closed: %s", q->method, q->url, why);
    case CURLE_SEND_ERROR:
        return err_set(err, -EPIPE, "%s %s: sending failed: %s", q->method, q->url, why);
    default: return err_set(err, -EIO, "%s %s: %s", q->method, q->url, why);
    }
}

/* Hand the outcome to the caller and forget the call. rc 0: an HTTP
 * answer came; a negative errno otherwise (message in err). */
static void remote_finish(remote_req_t *q, int rc, const err_t *err)
{
    struct remote *r = q->r;
    agent_t *a = r->agent;
    remote_unlink(q);
    if (q->easy && r->multi && !q->early_rc)
        curl_multi_remove_handle(r->multi, q->easy);
    long status = 0;
    json_t *body = NULL;
    int64_t index = 0;
    if (!rc && q->easy) {
        curl_easy_getinfo(q->easy, CURLINFO_RESPONSE_CODE, &status);
        if (q->resp.len)
            body = json_loadb(q->resp.data, q->resp.len, 0, NULL);
        if (q->index[0] && str_to_i64(q->index, 0, INT64_MAX, &index))
            index = 0;
    }
    a->calls_in_flight--;
    if (q->cb)
        q->cb(a, rc, rc ? err : NULL, (int)status, body, index, q->data);
    json_decref(body);
    remote_req_free(q);
    if (a->stopping)
        agent_maybe_done(a);
}

static void remote_complete_failed(uv_timer_t *t)
{
    struct remote *r = t->data;
    for (remote_req_t *q = r->reqs, *next; q; q = next) {
        next = q->next;
        if (q->early_rc) {
            remote_finish(q, q->early_rc, &q->early_err);
            next = r->reqs; /* the callback may have changed the list */
        }
    }
}

/* Every transfer curl has finished since the last look. */
static void remote_check_done(struct remote *r)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(r->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        remote_req_t *q = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&q);
        CURLcode cc = m->data.result;
        err_t err = {0};
        int rc = cc == CURLE_OK ? 0 : remote_error(q, cc, &err);
        remote_finish(q, rc, &err);
    }
}

/* ---- curl's hooks into the loop ---- */

static void remote_handle_closed(uv_handle_t *h)
{
    struct remote *r = h->data;
    if (h->type == UV_POLL)
        free(h);
    if (--r->open_handles == 0 && r->closing) {
        agent_t *a = r->agent;
        free(r);
        a->remote = NULL;
        a->closing_handles--;
        agent_maybe_done(a);
    }
}

/* Stop watching a socket curl is done with (or that shutdown drops). */
static void remote_sock_close(struct remote *r, remote_sock_t *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        r->socks = s->next;
    if (s->next)
        s->next->prev = s->prev;
    uv_poll_stop(&s->poll);
    uv_close((uv_handle_t *)&s->poll, remote_handle_closed);
}

static void remote_on_poll(uv_poll_t *h, int status, int events)
{
    remote_sock_t *s = (remote_sock_t *)h;
    struct remote *r = s->r;
    int flags = 0;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    int running = 0;
    curl_multi_socket_action(r->multi, s->fd, flags, &running);
    remote_check_done(r);
}

static void remote_on_timer(uv_timer_t *t)
{
    struct remote *r = t->data;
    int running = 0;
    curl_multi_socket_action(r->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    remote_check_done(r);
}

/* CURLMOPT_SOCKETFUNCTION: watch (or stop watching) one of curl's sockets.
 * Curl says REMOVE before it closes a socket, so a poll handle never
 * outlives its descriptor's watch. */
static int remote_on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    struct remote *r = userp;
    remote_sock_t *s = socketp;
    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            remote_sock_close(r, s);
            curl_multi_assign(r->multi, fd, NULL);
        }
        return 0;
    }
    if (!s) {
        s = xcalloc(1, sizeof(*s));
        s->r = r;
        s->fd = fd;
        if (uv_poll_init_socket(r->agent->loop, &s->poll, fd) < 0) {
            free(s);
            return -1;
        }
        s->poll.data = r;
        r->open_handles++;
        s->next = r->socks;
        if (r->socks)
            r->socks->prev = s;
        r->socks = s;
        curl_multi_assign(r->multi, fd, s);
    }
    int ev = 0;
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
        ev |= UV_READABLE;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
        ev |= UV_WRITABLE;
    uv_poll_start(&s->poll, ev, remote_on_poll);
    return 0;
}

/* CURLMOPT_TIMERFUNCTION. Curl must not be re-entered from here, so even a
 * timeout of 0 goes through the loop. */
static int remote_on_timeout(CURLM *multi, long timeout_ms, void *userp)
{
    struct remote *r = userp;
    (void)multi;
    if (r->closing)
        return 0;
    if (timeout_ms < 0)
        uv_timer_stop(&r->timer);
    else
        uv_timer_start(&r->timer, remote_on_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

/* ---- response ---- */

static size_t remote_on_header(char *p, size_t size, size_t n, void *ud)
{
    remote_req_t *q = ud;
    size_t len = size * n;
    static const char name[] = "X-Drover-Index:";
    if (len >= 5 && strncmp(p, "HTTP/", 5) == 0) {
        q->index[0] = '\0'; /* an interim answer's headers do not count */
        return len;
    }
    if (len > sizeof(name) - 1 && strncasecmp(p, name, sizeof(name) - 1) == 0) {
        const char *v = p + sizeof(name) - 1, *e = p + len;
        while (v < e && (*v == ' ' || *v == '\t'))
            v++;
        while (e > v && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' ' || e[-1] == '\t'))
            e--;
        size_t vl = (size_t)(e - v);
        if (vl <= REMOTE_INDEX_MAX) {
            memcpy(q->index, v, vl);
            q->index[vl] = '\0';
        }
    }
    return len;
}

static size_t remote_on_body(char *p, size_t size, size_t n, void *ud)
{
    remote_req_t *q = ud;
    size_t len = size * n;
    if (buf_append(&q->resp, p, len)) {
        q->body_too_big = true;
        return 0;
    }
    return len;
}

/* ---- lifecycle ---- */

int remote_init(agent_t *a, err_t *err)
{
    pthread_once(&remote_once, remote_global_init);
    if (remote_init_rc != CURLE_OK)
        return err_set(err, -EIO, "curl_global_init: %s", curl_easy_strerror(remote_init_rc));
    struct remote *r = xcalloc(1, sizeof(*r));
    r->agent = a;
    r->multi = curl_multi_init();
    if (!r->multi) {
        free(r);
        return err_set(err, -ENOMEM, "curl_multi_init failed");
    }
    curl_multi_setopt(r->multi, CURLMOPT_SOCKETFUNCTION, remote_on_socket);
    curl_multi_setopt(r->multi, CURLMOPT_SOCKETDATA, r);
    curl_multi_setopt(r->multi, CURLMOPT_TIMERFUNCTION, remote_on_timeout);
    curl_multi_setopt(r->multi, CURLMOPT_TIMERDATA, r);
    curl_multi_setopt(r->multi, CURLMOPT_MAXCONNECTS, REMOTE_MAX_CONNS);
    uv_timer_init(a->loop, &r->timer);
    uv_timer_init(a->loop, &r->later);
    r->timer.data = r->later.data = r;
    r->open_handles = 2;
    a->remote = r;
    return 0;
}

/* Shutdown, on the loop after agent_stop: every call still open completes
 * with -ECANCELED (callbacks run, so their owners free what they hold),
 * then curl lets go of its sockets and the handles close. */
static void remote_cancel_all(uv_timer_t *t)
{
    struct remote *r = t->data;
    while (r->reqs) {
        remote_req_t *q = r->reqs;
        err_t err = {0};
        int rc = err_set(&err, -ECANCELED, "%s %s: cancelled", q->method, q->url);
        remote_finish(q, rc, &err);
    }
    /* Curl closes its cached connections here; whatever it still had
     * watched is let go of here too. */
    curl_multi_cleanup(r->multi);
    r->multi = NULL;
    while (r->socks)
        remote_sock_close(r, r->socks);
    uv_close((uv_handle_t *)&r->timer, remote_handle_closed);
    uv_close((uv_handle_t *)&r->later, remote_handle_closed);
}

void remote_shutdown(agent_t *a)
{
    struct remote *r = a->remote;
    if (!r || r->closing)
        return;
    r->closing = true;
    a->closing_handles++;
    uv_timer_start(&r->timer, remote_cancel_all, 0, 0);
}

/* A call that could not be handed to curl completes from the loop, like a
 * cancelled one: its callback never runs inside remote_call. */
static void remote_fail_later(struct remote *r, remote_req_t *q, int rc, const char *why)
{
    q->early_rc = rc;
    err_set(&q->early_err, rc, "%s %s: %s", q->method, q->url, why);
    if (q->easy) {
        curl_easy_cleanup(q->easy);
        q->easy = NULL;
    }
    uv_timer_start(&r->later, remote_complete_failed, 0, 0);
}

void remote_call(agent_t *a, const char *method, const char *path, const json_t *body,
                 long timeout_ms, remote_cb cb, void *data)
{
    struct remote *r = a->remote;
    remote_req_t *q = xcalloc(1, sizeof(*q));
    q->r = r;
    q->method = xstrdup(method);
    q->url = xasprintf("%s%s", a->opts.server_url, path);
    q->timeout_ms = timeout_ms;
    q->cb = cb;
    q->data = data;
    buf_init(&q->resp, REMOTE_MAX_BODY);
    a->calls_in_flight++;
    q->next = r->reqs;
    if (r->reqs)
        r->reqs->prev = q;
    r->reqs = q;
    if (r->closing)
        return; /* remote_cancel_all completes it */

    CURL *h = q->easy = curl_easy_init();
    q->headers = curl_slist_append(NULL, "Expect:");
    if (q->headers && body) {
        struct curl_slist *n = curl_slist_append(q->headers, "Content-Type: application/json");
        if (!n) {
            curl_slist_free_all(q->headers);
            q->headers = NULL;
        }
    }
    if (!h || !q->headers) {
        remote_fail_later(r, q, -ENOMEM, "cannot set up the request");
        return;
    }
    curl_easy_setopt(h, CURLOPT_URL, q->url);
    curl_easy_setopt(h, CURLOPT_PRIVATE, q);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, q->errbuf);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, q->headers);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, remote_on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, q);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, remote_on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, q);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, REMOTE_CONNECT_TIMEOUT);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    if (timeout_ms > 0)
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    if (body) {
        q->body = json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(15));
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, q->body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(q->body));
    } else if (strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
    }
    CURLMcode mc = curl_multi_add_handle(r->multi, h);
    if (mc != CURLM_OK)
        remote_fail_later(r, q, -EIO, curl_multi_strerror(mc));
}
