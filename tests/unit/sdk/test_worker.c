/* Tests for the C worker SDK (lib/worker): the worker runs in-process on a
 * socketpair, stepped by the test, which plays the agent (agent.h). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "sdk/agent.h"

#include <ctype.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/un.h>

/* ---- handlers used by the tests ---- */

typedef struct counts {
    int opens, chunks, closes, errors, dones, bodies;
    unsigned last_err_cat, last_err_code;
    char last_err_msg[128];
    drover_call_t *held; /* a call kept to answer later */
    int busy_rc;         /* what a nested step returned */
    char header[64];
} counts_t;

static counts_t C;

static void echo_open(drover_call_t *call, void *data)
{
    C.opens++;
    drover_call_set_ctx(call, &C);
    const char *v;
    size_t n;
    if (drover_call_header(call, "trace-id", &v, &n) == 0)
        snprintf(C.header, sizeof(C.header), "%.*s", (int)n, v);
    C.busy_rc = drover_worker_step(drover_call_worker(call), 0);
}

static void echo_chunk(drover_call_t *call, void *ctx, const char *p, size_t n)
{
    assert_ptr_equal(ctx, &C);
    C.chunks++;
    assert_int_equal(drover_call_write(call, p, n), 0);
}

static void echo_close(drover_call_t *call, void *ctx)
{
    C.closes++;
    assert_int_equal(drover_call_close(call), 0);
    /* a second end is refused, and the call is still valid here */
    assert_int_equal(drover_call_close(call), -EPIPE);
    assert_int_equal(drover_call_write(call, "x", 1), -EPIPE);
}

static void echo_error(drover_call_t *call, void *ctx, const drover_error_t *e)
{
    C.errors++;
    C.last_err_cat = e->category;
    C.last_err_code = e->code;
    snprintf(C.last_err_msg, sizeof(C.last_err_msg), "%s", e->msg);
}

static void echo_done(drover_call_t *call, void *ctx)
{
    assert_ptr_equal(ctx, &C);
    C.dones++;
}

static const drover_stream_ops_t echo_ops = {echo_open, echo_chunk, echo_close, echo_error,
                                             echo_done};

static void upper(drover_call_t *call, const char *body, size_t len, void *data)
{
    C.bodies++;
    char *out = malloc(len + 1);
    for (size_t i = 0; i < len; i++)
        out[i] = (char)toupper((unsigned char)body[i]);
    assert_int_equal(drover_call_write(call, out, len), 0);
    free(out);
    assert_int_equal(drover_call_close(call), 0);
}

static void failing(drover_call_t *call, const char *body, size_t len, void *data)
{
    C.bodies++;
    assert_int_equal(drover_call_error(call, DROVER_ECAT_APP, 42, "boom %d", 7), 0);
}

static void holding(drover_call_t *call, const char *body, size_t len, void *data)
{
    C.bodies++;
    C.held = call;
}

static agent_t A;

static int setup(void **state)
{
    memset(&C, 0, sizeof(C));
    drover_worker_t *w = drover_worker_new();
    const char *argv[] = {"w", "--uuid", "u-1", "--endpoint", "/nonexistent"};
    assert_int_equal(drover_worker_parse_args(w, 5, (char *const *)argv), 0);
    assert_int_equal(drover_worker_on_stream(w, "echo", &echo_ops, NULL), 0);
    assert_int_equal(drover_worker_on(w, "upper", upper, NULL), 0);
    assert_int_equal(drover_worker_on(w, "fail", failing, NULL), 0);
    assert_int_equal(drover_worker_on(w, "hold", holding, NULL), 0);
    agent_init(&A, w);
    /* the handshake comes first */
    const msgpack_object_array *args = agent_expect(&A, 1, 0);
    assert_int_equal(args->size, 1);
    assert_int_equal(args->ptr[0].via.str.size, 3);
    assert_memory_equal(args->ptr[0].via.str.ptr, "u-1", 3);
    return 0;
}

static int teardown(void **state)
{
    agent_free(&A);
    return 0;
}

static void test_heartbeat_reply(void **state)
{
    agent_send_empty(&A, 1, 0);
    const msgpack_object_array *args = agent_expect(&A, 1, 0);
    assert_int_equal(args->size, 0);
    /* a second one right away is not answered (no ping-pong with an agent
     * that answers heartbeats too) */
    agent_send_empty(&A, 1, 0);
    agent_expect_nothing(&A, 50);
    assert_int_equal(A.last_step, 1);
}

static void test_heartbeat_sent(void **state)
{
    assert_int_equal(drover_worker_set(A.w, DROVER_OPT_HEARTBEAT_MS, 30), 0);
    agent_send_empty(&A, 1, 0); /* answered; next one in 30 ms */
    agent_expect(&A, 1, 0);
    long long t0 = agent_now_ms();
    agent_expect(&A, 1, 0);
    assert_true(agent_now_ms() - t0 < 1000);
}

static void test_stream_echo(void **state)
{
    agent_invoke(&A, 2, "echo");
    agent_send_bin(&A, 2, "abc", 3);
    agent_send_str(&A, 2, 0, "def"); /* str chunks are accepted too */
    agent_close(&A, 2);
    agent_expect_chunk(&A, 2, "abc", 3);
    agent_expect_chunk(&A, 2, "def", 3);
    agent_expect(&A, 2, 2);
    agent_pump(&A, 0);
    assert_int_equal(C.opens, 1);
    assert_int_equal(C.chunks, 2);
    assert_int_equal(C.closes, 1);
    assert_int_equal(C.dones, 1);
    assert_int_equal(C.errors, 0);
    assert_int_equal(C.busy_rc, -EBUSY); /* no step from inside a callback */
}

static void test_invoke_headers(void **state)
{
    agent_msg_t m;
    msgpack_packer *pk = &m.pk;
    msgpack_sbuffer_init(&m.sb);
    msgpack_packer_init(pk, &m.sb, msgpack_sbuffer_write);
    msgpack_pack_array(pk, 4);
    msgpack_pack_uint64(pk, 2);
    msgpack_pack_unsigned_int(pk, 0);
    msgpack_pack_array(pk, 1);
    msgpack_pack_str_with_body(pk, "echo", 4);
    msgpack_pack_array(pk, 1);
    msgpack_pack_array(pk, 2);
    msgpack_pack_str_with_body(pk, "trace-id", 8);
    msgpack_pack_bin_with_body(pk, "t42", 3);
    agent_end(&A, &m);
    agent_close(&A, 2);
    agent_expect(&A, 2, 2);
    assert_string_equal(C.header, "t42");
}

static void test_whole_body(void **state)
{
    agent_invoke(&A, 2, "upper");
    agent_send_bin(&A, 2, "ab", 2);
    agent_send_bin(&A, 2, "", 0);
    agent_send_bin(&A, 2, "cd", 2);
    agent_expect_nothing(&A, 20); /* nothing before the request is complete */
    agent_close(&A, 2);
    agent_expect_chunk(&A, 2, "ABCD", 4);
    agent_expect(&A, 2, 2);
    assert_int_equal(C.bodies, 1);
}

static void test_interleaved(void **state)
{
    agent_invoke(&A, 2, "echo");
    agent_invoke(&A, 5, "upper"); /* gaps in ids are fine */
    agent_invoke(&A, 7, "echo");
    agent_send_bin(&A, 2, "a1", 2);
    agent_send_bin(&A, 7, "c1", 2);
    agent_send_bin(&A, 5, "b1", 2);
    agent_send_bin(&A, 7, "c2", 2);
    agent_close(&A, 7);
    agent_send_bin(&A, 2, "a2", 2);
    agent_close(&A, 5);
    agent_close(&A, 2);
    agent_expect_chunk(&A, 2, "a1", 2);
    agent_expect_chunk(&A, 7, "c1", 2);
    agent_expect_chunk(&A, 7, "c2", 2);
    agent_expect(&A, 7, 2);
    agent_expect_chunk(&A, 2, "a2", 2);
    agent_expect_chunk(&A, 5, "B1", 2);
    agent_expect(&A, 5, 2);
    agent_expect(&A, 2, 2);
    agent_pump(&A, 0);
    assert_int_equal(C.opens, 2);
    assert_int_equal(C.dones, 2);
    assert_int_equal(A.last_step, 1);
}

static void test_unknown_event(void **state)
{
    agent_invoke(&A, 2, "nope");
    agent_expect_error(&A, 2, 1, 38, "no handler for event nope");
    /* the agent may still write and close the request: no protocol error */
    agent_send_bin(&A, 2, "x", 1);
    agent_close(&A, 2);
    agent_invoke(&A, 3, "upper");
    agent_close(&A, 3);
    agent_expect(&A, 3, 2);
    assert_int_equal(A.last_step, 1);
}

static void test_handler_error(void **state)
{
    agent_invoke(&A, 2, "fail");
    agent_close(&A, 2);
    agent_expect_error(&A, 2, 5, 42, "boom 7");
    agent_pump(&A, 0);
    assert_int_equal(A.last_step, 1);
}

static void test_agent_error_on_request(void **state)
{
    agent_invoke(&A, 2, "echo");
    agent_send_bin(&A, 2, "a", 1);
    agent_error(&A, 2, 3, 110, "client went away");
    agent_expect_chunk(&A, 2, "a", 1);
    agent_pump(&A, 0);
    assert_int_equal(C.errors, 1);
    assert_int_equal(C.last_err_cat, 3);
    assert_int_equal(C.last_err_code, 110);
    assert_string_equal(C.last_err_msg, "client went away");
    assert_int_equal(C.dones, 0); /* our side is still open */
    /* whole-body call ended by the agent: the SDK closes our side */
    agent_invoke(&A, 3, "upper");
    agent_error(&A, 3, 3, 110, "gone");
    agent_expect(&A, 3, 2);
    assert_int_equal(C.bodies, 0);
}

static void test_later_response(void **state)
{
    agent_invoke(&A, 2, "hold");
    agent_close(&A, 2);
    agent_invoke(&A, 3, "upper");
    agent_send_bin(&A, 3, "x", 1);
    agent_close(&A, 3);
    agent_expect_chunk(&A, 3, "X", 1);
    agent_expect(&A, 3, 2);
    assert_non_null(C.held);
    /* answered after its callback returned, from outside the loop */
    assert_int_equal(drover_call_write(C.held, "late", 4), 0);
    assert_int_equal(drover_call_close(C.held), 0);
    agent_expect_chunk(&A, 2, "late", 4);
    agent_expect(&A, 2, 2);
}

static void test_terminate_waits_for_open_calls(void **state)
{
    agent_invoke(&A, 2, "hold");
    agent_close(&A, 2);
    agent_pump(&A, 0);
    assert_non_null(C.held);
    agent_msg_t m;
    msgpack_packer *pk = agent_begin(&m, 1, 1, 2);
    msgpack_pack_unsigned_int(pk, 1);
    msgpack_pack_str_with_body(pk, "normal", 6);
    agent_end(&A, &m);
    agent_expect_nothing(&A, 50);
    assert_int_equal(A.last_step, 1);
    /* no new invocations once terminating */
    agent_invoke(&A, 3, "upper");
    agent_expect_error(&A, 3, 4, 108, "worker is terminating");
    assert_int_equal(drover_call_close(C.held), 0);
    agent_expect(&A, 2, 2);
    const msgpack_object_array *args = agent_expect(&A, 1, 1);
    assert_int_equal(args->size, 2);
    assert_int_equal(args->ptr[0].via.u64, 1);
    assert_int_equal(agent_run_until_end(&A, 1000), 0);
    /* the worker closed its end */
    char b;
    assert_int_equal(read(A.fd, &b, 1), 0);
}

static void test_terminate_grace_ends(void **state)
{
    assert_int_equal(drover_worker_set(A.w, DROVER_OPT_GRACE_MS, 50), 0);
    agent_invoke(&A, 2, "echo");
    agent_send_bin(&A, 2, "a", 1);
    agent_send_empty(&A, 1, 1); /* terminate with no args is tolerated */
    long long t0 = agent_now_ms();
    agent_expect_chunk(&A, 2, "a", 1);
    agent_expect_error(&A, 2, 4, 108, NULL);
    agent_expect(&A, 1, 1);
    assert_int_equal(agent_run_until_end(&A, 1000), 0);
    long long took = agent_now_ms() - t0;
    assert_true(took >= 45 && took < 1000);
    assert_int_equal(C.errors, 1);
    assert_int_equal(C.last_err_code, 108);
    assert_int_equal(C.dones, 1);
    assert_int_equal(drover_worker_step(A.w, 0), 0);
}

static void test_worker_stop(void **state)
{
    assert_int_equal(drover_worker_stop(A.w, 3, "going away"), 0);
    const msgpack_object_array *args = agent_expect(&A, 1, 1);
    assert_int_equal(args->ptr[0].via.u64, 3);
    assert_int_equal(args->ptr[1].via.str.size, 10);
    assert_int_equal(agent_run_until_end(&A, 1000), 0);
}

static void test_garbage(void **state)
{
    agent_invoke(&A, 2, "echo");
    agent_pump(&A, 0);
    agent_write_raw(&A, "\xc1\x00\x00", 3);
    assert_int_equal(agent_run_until_end(&A, 1000), -EPROTO);
    assert_true(strlen(drover_worker_error(A.w)) > 0);
    /* the open call was told and released */
    assert_int_equal(C.errors, 1);
    assert_int_equal(C.dones, 1);
    assert_int_equal(drover_worker_step(A.w, 0), -EPROTO);
}

static void test_bad_shapes(void **state)
{
    /* a map where the message array should be */
    agent_write_raw(&A, "\x81\x01\x02", 3);
    assert_int_equal(agent_run_until_end(&A, 1000), -EPROTO);
    assert_non_null(strstr(drover_worker_error(A.w), "array"));
}

static void test_channel_backwards(void **state)
{
    agent_invoke(&A, 5, "upper");
    agent_close(&A, 5);
    agent_expect(&A, 5, 2);
    agent_invoke(&A, 4, "upper");
    assert_int_equal(agent_run_until_end(&A, 1000), -EPROTO);
    assert_non_null(strstr(drover_worker_error(A.w), "backwards"));
}

static void test_bad_invoke_and_types(void **state)
{
    agent_send_empty(&A, 2, 0); /* invoke without an event */
    agent_expect_error(&A, 2, 1, 22, NULL);
    agent_close(&A, 2);
    agent_send_empty(&A, 1, 9); /* unknown control message: ignored */
    agent_invoke(&A, 3, "echo");
    agent_send_empty(&A, 3, 7); /* unknown type on a call */
    agent_expect_error(&A, 3, 1, 22, "unknown message type 7");
    agent_send_empty(&A, 3, 0); /* write without a chunk: dropped now */
    agent_close(&A, 3);
    agent_pump(&A, 0);
    agent_pump(&A, 0);
    assert_int_equal(C.errors, 1);
    assert_int_equal(C.dones, 1);
    assert_int_equal(A.last_step, 1);
}

static void test_message_after_close(void **state)
{
    agent_invoke(&A, 2, "hold");
    agent_close(&A, 2);
    agent_send_bin(&A, 2, "x", 1);
    assert_int_equal(agent_run_until_end(&A, 1000), -EPROTO);
}

static void test_message_size_limit(void **state)
{
    /* a bin32 header announcing 64 MiB: refused before the data comes */
    agent_write_raw(&A, "\x93\x02\x00\x91\xc6\x04\x00\x00\x00", 9);
    assert_int_equal(agent_run_until_end(&A, 1000), -EMSGSIZE);
}

static void test_array_count_limit(void **state)
{
    /* an array32 claiming 2^32-1 elements */
    agent_write_raw(&A, "\x93\x02\x00\xdd\xff\xff\xff\xff", 8);
    assert_int_equal(agent_run_until_end(&A, 1000), -EMSGSIZE);
}

static void test_body_limit(void **state)
{
    assert_int_equal(drover_worker_set(A.w, DROVER_OPT_BODY_LIMIT, 10), 0);
    agent_invoke(&A, 2, "upper");
    agent_send_bin(&A, 2, "12345678", 8);
    agent_send_bin(&A, 2, "12345678", 8);
    agent_expect_error(&A, 2, 1, 90, "request body over 10 bytes");
    agent_send_bin(&A, 2, "1", 1);
    agent_close(&A, 2);
    agent_pump(&A, 0);
    agent_pump(&A, 0);
    assert_int_equal(C.bodies, 0);
    /* streaming handlers are told */
    agent_invoke(&A, 3, "echo");
    agent_send_bin(&A, 3, "12345678", 8);
    agent_send_bin(&A, 3, "abc", 3);
    agent_close(&A, 3);
    agent_expect_chunk(&A, 3, "12345678", 8);
    agent_expect_error(&A, 3, 1, 90, NULL);
    agent_pump(&A, 0);
    assert_int_equal(C.errors, 1);
    assert_int_equal(C.last_err_code, 90);
    assert_int_equal(C.dones, 1);
    assert_int_equal(A.last_step, 1);
}

static void test_big_write_is_chunked(void **state)
{
    agent_invoke(&A, 2, "hold");
    agent_close(&A, 2);
    agent_pump(&A, 0);
    size_t n = (5u << 20) / 2; /* 2.5 MiB */
    char *big = malloc(n);
    memset(big, 'z', n);
    assert_int_equal(drover_call_write(C.held, big, n), 0);
    assert_int_equal(drover_call_close(C.held), 0);
    size_t got = 0;
    int chunks = 0;
    for (;;) {
        const msgpack_object *o = agent_next(&A, 2000);
        assert_non_null(o);
        if (o->via.array.ptr[1].via.u64 == 2)
            break;
        const msgpack_object *c = &o->via.array.ptr[2].via.array.ptr[0];
        assert_true(c->via.bin.size <= DROVER_CHUNK_MAX);
        got += c->via.bin.size;
        chunks++;
    }
    assert_int_equal(got, n);
    assert_int_equal(chunks, 3);
    free(big);
}

static void test_out_limit_bounds_writes(void **state)
{
    assert_int_equal(drover_worker_set(A.w, DROVER_OPT_OUT_LIMIT, 65536), 0);
    assert_int_equal(drover_worker_set(A.w, DROVER_OPT_PEER_SILENCE_MS, 200), 0);
    agent_invoke(&A, 2, "hold");
    agent_close(&A, 2);
    agent_pump(&A, 0);
    char *big = calloc(1, 1 << 20);
    int rc = 0;
    /* the agent reads nothing: the writer waits, then gives up */
    for (int i = 0; i < 64 && rc == 0; i++)
        rc = drover_call_write(C.held, big, 1 << 20);
    assert_int_equal(rc, -ETIMEDOUT);
    free(big);
}

static void test_peer_closed(void **state)
{
    agent_invoke(&A, 2, "echo");
    agent_pump(&A, 0);
    close(A.fd);
    A.fd = -1;
    assert_int_equal(agent_run_until_end(&A, 1000), -ECONNRESET);
    assert_int_equal(C.errors, 1);
    assert_int_equal(C.last_err_cat, 4);
    assert_int_equal(C.dones, 1);
}

static void test_peer_silence(void **state)
{
    assert_int_equal(drover_worker_set(A.w, DROVER_OPT_PEER_SILENCE_MS, 80), 0);
    long long t0 = agent_now_ms();
    assert_int_equal(agent_run_until_end(&A, 2000), -ETIMEDOUT);
    assert_true(agent_now_ms() - t0 < 1000);
    assert_non_null(strstr(drover_worker_error(A.w), "no message from the agent"));
}

static void test_split_input(void **state)
{
    /* messages cut at every byte still arrive whole */
    agent_msg_t m;
    msgpack_sbuffer all;
    msgpack_sbuffer_init(&all);
    msgpack_packer *pk = agent_begin(&m, 2, 0, 1);
    msgpack_pack_str_with_body(pk, "echo", 4);
    msgpack_sbuffer_write(&all, m.sb.data, m.sb.size);
    msgpack_sbuffer_destroy(&m.sb);
    pk = agent_begin(&m, 2, 0, 1);
    msgpack_pack_bin_with_body(pk, "hello", 5);
    msgpack_sbuffer_write(&all, m.sb.data, m.sb.size);
    msgpack_sbuffer_destroy(&m.sb);
    for (size_t i = 0; i < all.size; i++) {
        agent_write_raw(&A, all.data + i, 1);
        agent_pump(&A, 0);
    }
    msgpack_sbuffer_destroy(&all);
    agent_expect_chunk(&A, 2, "hello", 5);
    agent_close(&A, 2);
    agent_expect(&A, 2, 2);
}

static void test_parse_args(void **state)
{
    drover_worker_t *w = drover_worker_new();
    const char *argv[] = {"w",        "--locator", "h:1",       "--extra",    "x",
                          "--uuid=U", "--app",     "/prod/app", "--endpoint", "/tmp/s"};
    assert_int_equal(drover_worker_parse_args(w, 10, (char *const *)argv), 0);
    assert_string_equal(drover_worker_app(w), "/prod/app");
    assert_string_equal(drover_worker_endpoint(w), "/tmp/s");
    assert_string_equal(drover_worker_uuid(w), "U");
    assert_string_equal(drover_worker_locator(w), "h:1");
    drover_worker_free(w);

    w = drover_worker_new();
    const char *noend[] = {"w", "--uuid", "U"};
    assert_int_equal(drover_worker_parse_args(w, 3, (char *const *)noend), -EINVAL);
    assert_non_null(strstr(drover_worker_error(w), "--endpoint"));
    const char *dangling[] = {"w", "--endpoint", "/s", "--uuid"};
    assert_int_equal(drover_worker_parse_args(w, 4, (char *const *)dangling), -EINVAL);
    assert_int_equal(drover_worker_step(w, 0), -ENOTCONN);
    assert_int_equal(drover_worker_on(w, "", upper, NULL), -EINVAL);
    assert_int_equal(drover_worker_on(w, "a", upper, NULL), 0);
    assert_int_equal(drover_worker_on_stream(w, "a", &echo_ops, NULL), -EEXIST);
    assert_int_equal(drover_worker_set(w, DROVER_OPT_MAX_MESSAGE, 10), -EINVAL);
    assert_int_equal(drover_worker_set(w, (enum drover_opt)99, 1), -EINVAL);
    drover_worker_free(w);
}

static void test_connect_unix(void **state)
{
    char dir[] = "/tmp/drover-sdk-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[96];
    snprintf(path, sizeof(path), "%s/w.sock", dir);
    int ls = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    assert_int_equal(bind(ls, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(ls, 1), 0);

    drover_worker_t *w = drover_worker_new();
    const char *argv[] = {"w", "--endpoint", path, "--uuid", "abc"};
    assert_int_equal(drover_worker_parse_args(w, 5, (char *const *)argv), 0);
    assert_int_equal(drover_worker_connect(w), 0);
    assert_true(drover_worker_fd(w) >= 0);
    int fd = accept(ls, NULL, NULL);
    assert_true(fd >= 0);
    unsigned char buf[64];
    ssize_t n = read(fd, buf, sizeof(buf));
    /* [1, 0, ["abc"]] */
    assert_int_equal(n, 8);
    assert_memory_equal(buf,
                        "\x93\x01\x00\x91\xa3"
                        "abc",
                        8);
    close(fd);
    drover_worker_free(w);

    /* nobody listening, and a path too long for a unix socket */
    unlink(path);
    w = drover_worker_new();
    assert_int_equal(drover_worker_parse_args(w, 5, (char *const *)argv), 0);
    assert_true(drover_worker_run(w) < 0);
    assert_non_null(strstr(drover_worker_error(w), "connect"));
    drover_worker_free(w);
    char longp[200];
    memset(longp, 'a', sizeof(longp) - 1);
    longp[0] = '/';
    longp[sizeof(longp) - 1] = 0;
    const char *argl[] = {"w", "--endpoint", longp, "--uuid", "abc"};
    w = drover_worker_new();
    assert_int_equal(drover_worker_parse_args(w, 5, (char *const *)argl), 0);
    assert_int_equal(drover_worker_connect(w), -ENAMETOOLONG);
    drover_worker_free(w);
    close(ls);
    rmdir(dir);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_heartbeat_reply),
        T(test_heartbeat_sent),
        T(test_stream_echo),
        T(test_invoke_headers),
        T(test_whole_body),
        T(test_interleaved),
        T(test_unknown_event),
        T(test_handler_error),
        T(test_agent_error_on_request),
        T(test_later_response),
        T(test_terminate_waits_for_open_calls),
        T(test_terminate_grace_ends),
        T(test_worker_stop),
        T(test_garbage),
        T(test_bad_shapes),
        T(test_channel_backwards),
        T(test_bad_invoke_and_types),
        T(test_message_after_close),
        T(test_message_size_limit),
        T(test_array_count_limit),
        T(test_body_limit),
        T(test_big_write_is_chunked),
        T(test_out_limit_bounds_writes),
        T(test_peer_closed),
        T(test_peer_silence),
        T(test_split_input),
        cmocka_unit_test(test_parse_args),
        cmocka_unit_test(test_connect_unix),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
