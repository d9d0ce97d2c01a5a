/* Tests for the agent's API calls (remote.c: libcurl multi on the agent's
 * loop) against a real HTTP server on the same loop, and for the
 * intrusive instance queues the agent's per-turn work uses: answers,
 * bodies and X-Drover-Index reach the callback; many calls share a few
 * kept-alive connections; refused and timed-out calls say so; shutdown
 * cancels what is open; a callback never runs inside remote_call. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "agent/agent_internal.h"
#include "core/alloc.h"
#include "core/log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

typedef struct fx {
    uv_loop_t loop;
    uv_timer_t timer;
    bool timed_out;
    http_server_t *srv;
    agent_t *a;
    json_t *remotes;     /* client address -> requests seen from it */
    http_req_t *held[8]; /* requests left unanswered */
    int n_held;
    int served;
} fx_t;

typedef struct call {
    bool in_remote_call; /* set around remote_call: the callback must not see it */
    int done;
    int status;
    int http_status;
    int64_t index;
    char err[sizeof(((err_t *)0)->msg)];
    json_t *body;
} call_t;

static void on_timer(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

static bool run_until(fx_t *f, const int *count, int want, uint64_t ms)
{
    f->timed_out = false;
    f->timer.data = &f->timed_out;
    uv_timer_start(&f->timer, on_timer, ms, 0);
    while (*count < want && !f->timed_out)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_timer_stop(&f->timer);
    return *count >= want;
}

/* The client gave up (or the server stops): the request still has to be
 * ended. */
static void held_aborted(http_req_t *r, void *data)
{
    fx_t *f = data;
    for (int i = 0; i < f->n_held; i++)
        if (f->held[i] == r)
            f->held[i] = f->held[--f->n_held];
    http_respond(r, 503, NULL, 0, "", 0);
}

/* /echo answers what it got; /hold never answers; anything else 404. */
static void handler(http_req_t *r, void *data)
{
    fx_t *f = data;
    json_object_set_new(
        f->remotes, r->remote,
        json_integer(json_integer_value(json_object_get(f->remotes, r->remote)) + 1));
    if (strcmp(r->path, "/hold") == 0) {
        assert_true(f->n_held < 8);
        f->held[f->n_held++] = r;
        http_req_on_abort(r, held_aborted, f);
        return;
    }
    f->served++;
    if (strcmp(r->path, "/echo") != 0) {
        http_respond(r, 404, NULL, 0, "{\"error\": \"no\"}", 15);
        return;
    }
    const char *ct = http_req_header(r, "Content-Type");
    json_t *out = json_pack("{s:s, s:s, s:s#}", "method", r->method, "content_type", ct ? ct : "",
                            "body", r->body ? r->body : "", (int)r->body_len);
    char *text = json_dumps(out, JSON_COMPACT);
    http_header_t h[] = {{"Content-Type", "application/json"}, {"X-Drover-Index", "42"}};
    http_respond(r, 200, h, 2, text, strlen(text));
    free(text);
    json_decref(out);
}

static int fx_setup(void **state)
{
    fx_t *f = xcalloc(1, sizeof(*f));
    uv_loop_init(&f->loop);
    uv_timer_init(&f->loop, &f->timer);
    f->remotes = json_object();
    http_limits_t lim;
    http_limits_default(&lim);
    err_t err = {0};
    if (http_server_listen(&f->loop, "127.0.0.1:0", &lim, handler, f, &f->srv, &err))
        fail_msg("listen: %s", err.msg);
    f->a = xcalloc(1, sizeof(agent_t));
    f->a->loop = &f->loop;
    f->a->opts.server_url = xasprintf("http://127.0.0.1:%d", http_server_port(f->srv));
    assert_int_equal(remote_init(f->a, &err), 0);
    *state = f;
    return 0;
}

static void srv_closed(void *data)
{
    *(int *)data = 1;
}

static int fx_teardown(void **state)
{
    fx_t *f = *state;
    agent_t *a = f->a;
    remote_shutdown(a);
    while (a->remote)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(a->closing_handles, 0);
    assert_int_equal(a->calls_in_flight, 0);
    int closed = 0;
    http_server_shutdown(f->srv, 100, srv_closed, &closed);
    run_until(f, &closed, 1, 5000);
    uv_close((uv_handle_t *)&f->timer, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free((char *)a->opts.server_url);
    free(a);
    json_decref(f->remotes);
    free(f);
    return 0;
}

static void on_done(agent_t *a, int status, const err_t *err, int http_status, json_t *body,
                    int64_t index, void *data)
{
    call_t *c = data;
    (void)a;
    assert_false(c->in_remote_call);
    c->done++;
    c->status = status;
    c->http_status = http_status;
    c->index = index;
    snprintf(c->err, sizeof(c->err), "%s", err ? err->msg : "");
    if (status)
        assert_non_null(err);
    json_decref(c->body);
    c->body = json_incref(body);
}

static void call(fx_t *f, call_t *c, const char *method, const char *path, const json_t *body,
                 long timeout_ms)
{
    c->in_remote_call = true;
    remote_call(f->a, method, path, body, timeout_ms, on_done, c);
    c->in_remote_call = false;
}

/* ---- answers ---------------------------------------------------------- */

static void test_put_body_and_index(void **state)
{
    fx_t *f = *state;
    call_t c = {0};
    json_t *body = json_pack("{s:s, s:i}", "state", "running", "pid", 42);
    call(f, &c, "PUT", "/echo", body, 5000);
    json_decref(body);
    assert_int_equal(c.done, 0); /* not from inside remote_call */
    assert_int_equal(f->a->calls_in_flight, 1);
    assert_true(run_until(f, &c.done, 1, 5000));
    assert_int_equal(c.status, 0);
    assert_int_equal(c.http_status, 200);
    assert_int_equal(c.index, 42);
    assert_string_equal(json_string_value(json_object_get(c.body, "method")), "PUT");
    assert_string_equal(json_string_value(json_object_get(c.body, "content_type")),
                        "application/json");
    json_t *sent = json_loads(json_string_value(json_object_get(c.body, "body")), 0, NULL);
    assert_string_equal(json_string_value(json_object_get(sent, "state")), "running");
    assert_int_equal(json_integer_value(json_object_get(sent, "pid")), 42);
    json_decref(sent);
    assert_int_equal(f->a->calls_in_flight, 0);
    json_decref(c.body);
}

static void test_bodiless_and_error_status(void **state)
{
    fx_t *f = *state;
    call_t post = {0}, del = {0}, missing = {0};
    call(f, &post, "POST", "/echo", NULL, 5000);
    call(f, &del, "DELETE", "/echo", NULL, 5000);
    call(f, &missing, "GET", "/nothing-here", NULL, 5000);
    assert_true(run_until(f, &missing.done, 1, 5000));
    assert_true(run_until(f, &post.done, 1, 5000));
    assert_true(run_until(f, &del.done, 1, 5000));
    assert_string_equal(json_string_value(json_object_get(post.body, "method")), "POST");
    assert_string_equal(json_string_value(json_object_get(post.body, "body")), "");
    assert_string_equal(json_string_value(json_object_get(del.body, "method")), "DELETE");
    /* an HTTP error is an answer: status 0, the code and body passed on */
    assert_int_equal(missing.status, 0);
    assert_int_equal(missing.http_status, 404);
    assert_string_equal(json_string_value(json_object_get(missing.body, "error")), "no");
    assert_int_equal(missing.index, 0);
    json_decref(post.body);
    json_decref(del.body);
    json_decref(missing.body);
}

/* Reports come by the thousand: they must share kept-alive connections
 * rather than connect once each. */
static void test_many_calls_reuse_connections(void **state)
{
    fx_t *f = *state;
    enum { N = 300, AT_ONCE = 8 };
    static call_t c[N];
    memset(c, 0, sizeof(c));
    int sent = 0, done = 0;
    while (done < N) {
        while (sent < N && sent - done < AT_ONCE) {
            json_t *b = json_pack("{s:i}", "n", sent);
            call(f, &c[sent], "PUT", "/echo", b, 5000);
            json_decref(b);
            sent++;
        }
        uv_run(&f->loop, UV_RUN_ONCE);
        done = 0;
        for (int i = 0; i < N; i++)
            done += c[i].done;
    }
    for (int i = 0; i < N; i++) {
        assert_int_equal(c[i].status, 0);
        assert_int_equal(c[i].http_status, 200);
        json_t *sentb = json_loads(json_string_value(json_object_get(c[i].body, "body")), 0, NULL);
        assert_int_equal(json_integer_value(json_object_get(sentb, "n")), i);
        json_decref(sentb);
        json_decref(c[i].body);
    }
    assert_int_equal(f->served, N);
    size_t conns = json_object_size(f->remotes);
    print_message("%d calls over %zu connections\n", N, conns);
    assert_true(conns <= AT_ONCE + 2);
}

/* ---- failures --------------------------------------------------------- */

static void test_refused(void **state)
{
    fx_t *f = *state;
    /* a port that was just free: nothing listens there */
    uv_tcp_t t;
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    uv_tcp_init(&f->loop, &t);
    assert_int_equal(uv_tcp_bind(&t, (const struct sockaddr *)&sa, 0), 0);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    uv_tcp_getsockname(&t, (struct sockaddr *)&ss, &len);
    int port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&f->loop, UV_RUN_NOWAIT);

    const char *saved = f->a->opts.server_url;
    char *url = xasprintf("http://127.0.0.1:%d", port);
    f->a->opts.server_url = url;
    call_t c = {0};
    call(f, &c, "POST", "/v1/nodes/n/heartbeat", NULL, 5000);
    f->a->opts.server_url = saved;
    free(url);
    assert_true(run_until(f, &c.done, 1, 5000));
    assert_int_equal(c.status, -ECONNREFUSED);
    assert_non_null(strstr(c.err, "cannot connect"));
    assert_null(c.body);
}

static void test_timeout(void **state)
{
    fx_t *f = *state;
    call_t c = {0};
    call(f, &c, "GET", "/hold", NULL, 200);
    assert_true(run_until(f, &c.done, 1, 5000));
    assert_int_equal(c.status, -ETIMEDOUT);
    assert_non_null(strstr(c.err, "timed out"));
    /* the connection it held is dropped; the next call still works */
    call_t next = {0};
    call(f, &next, "GET", "/echo", NULL, 5000);
    assert_true(run_until(f, &next.done, 1, 5000));
    assert_int_equal(next.http_status, 200);
    json_decref(next.body);
}

/* At agent stop, open calls (a long poll) end with -ECANCELED from the
 * loop, and calls made afterwards end the same way. */
static void test_shutdown_cancels(void **state)
{
    fx_t *f = *state;
    call_t poll = {0}, late = {0};
    call(f, &poll, "GET", "/hold", NULL, 40000);
    int n = 0;
    while (f->n_held < 1 && run_until(f, &n, 1, 10) == false) {
    }
    assert_int_equal(f->n_held, 1);
    remote_shutdown(f->a);
    assert_int_equal(poll.done, 0);
    call(f, &late, "PUT", "/echo", NULL, 5000);
    assert_int_equal(late.done, 0);
    assert_true(run_until(f, &poll.done, 1, 5000));
    assert_true(run_until(f, &late.done, 1, 5000));
    assert_int_equal(poll.status, -ECANCELED);
    assert_int_equal(late.status, -ECANCELED);
    assert_int_equal(f->a->calls_in_flight, 0);
}

/* ---- queues ----------------------------------------------------------- */

static void test_queues(void **state)
{
    (void)state;
    inst_t x[4];
    memset(x, 0, sizeof(x));
    inst_queue_t q, r;
    inst_queue_init(&q, offsetof(inst_t, report_link));
    inst_queue_init(&r, offsetof(inst_t, launch_link));
    assert_null(inst_queue_pop(&q));
    for (int i = 0; i < 4; i++)
        inst_queue_push(&q, &x[i]);
    inst_queue_push(&q, &x[1]); /* already queued: stays in place */
    inst_queue_push(&r, &x[2]); /* another queue, its own link */
    inst_queue_push(&r, &x[0]);
    inst_queue_remove(&q, &x[2]);
    inst_queue_remove(&q, &x[2]); /* not queued any more: nothing */
    assert_ptr_equal(inst_queue_pop(&q), &x[0]);
    assert_ptr_equal(inst_queue_pop(&q), &x[1]);
    inst_queue_push(&q, &x[0]); /* goes to the back */
    assert_ptr_equal(inst_queue_pop(&q), &x[3]);
    assert_ptr_equal(inst_queue_pop(&q), &x[0]);
    assert_null(inst_queue_pop(&q));
    assert_null(q.tail);
    assert_ptr_equal(inst_queue_pop(&r), &x[2]);
    inst_queue_remove(&r, &x[0]);
    assert_null(r.head);
    assert_null(r.tail);
    assert_null(inst_queue_pop(&r));
}

int main(void)
{
    log_setup(LOG_WARN, LOG_TEXT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_put_body_and_index, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_bodiless_and_error_status, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_many_calls_reuse_connections, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_refused, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_timeout, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_shutdown_cancels, fx_setup, fx_teardown),
        cmocka_unit_test(test_queues),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
