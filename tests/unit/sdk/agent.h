/* A fake agent for the SDK's unit tests: the worker runs in-process on one
 * end of a socketpair and is stepped by the test; the test speaks the
 * agent's side on the other end with msgpack-c. */
#ifndef DROVER_TESTS_SDK_AGENT_H
#define DROVER_TESTS_SDK_AGENT_H

#include <drover/worker.h>

#include <errno.h>
#include <msgpack.h>
#include <poll.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct agent {
    drover_worker_t *w;
    int fd; /* the agent's end */
    msgpack_unpacker up;
    msgpack_unpacked msg;
    int last_step; /* last drover_worker_step result */
} agent_t;

static inline long long agent_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Attaches w to a fresh socketpair; the agent's end stays blocking. */
static inline void agent_init(agent_t *a, drover_worker_t *w)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    a->w = w;
    a->fd = sv[1];
    a->last_step = 1;
    assert_true(msgpack_unpacker_init(&a->up, 1 << 16));
    msgpack_unpacked_init(&a->msg);
    assert_int_equal(drover_worker_attach(w, sv[0]), 0);
}

static inline void agent_free(agent_t *a)
{
    msgpack_unpacked_destroy(&a->msg);
    msgpack_unpacker_destroy(&a->up);
    if (a->fd >= 0)
        close(a->fd);
    drover_worker_free(a->w);
}

static inline void agent_write_raw(agent_t *a, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t k = write(a->fd, c, n);
        assert_true(k > 0);
        c += k;
        n -= (size_t)k;
    }
}

/* Sends [ch, type, args] where args is built by the caller's packer calls:
 * agent_begin .. pack args .. agent_end. */
typedef struct agent_msg {
    msgpack_sbuffer sb;
    msgpack_packer pk;
} agent_msg_t;

static inline msgpack_packer *agent_begin(agent_msg_t *m, uint64_t ch, unsigned type, size_t nargs)
{
    msgpack_sbuffer_init(&m->sb);
    msgpack_packer_init(&m->pk, &m->sb, msgpack_sbuffer_write);
    msgpack_pack_array(&m->pk, 3);
    msgpack_pack_uint64(&m->pk, ch);
    msgpack_pack_unsigned_int(&m->pk, type);
    msgpack_pack_array(&m->pk, nargs);
    return &m->pk;
}

static inline void agent_end(agent_t *a, agent_msg_t *m)
{
    agent_write_raw(a, m->sb.data, m->sb.size);
    msgpack_sbuffer_destroy(&m->sb);
}

static inline void agent_send_empty(agent_t *a, uint64_t ch, unsigned type)
{
    agent_msg_t m;
    agent_begin(&m, ch, type, 0);
    agent_end(a, &m);
}

static inline void agent_send_str(agent_t *a, uint64_t ch, unsigned type, const char *s)
{
    agent_msg_t m;
    msgpack_packer *pk = agent_begin(&m, ch, type, 1);
    msgpack_pack_str_with_body(pk, s, strlen(s));
    agent_end(a, &m);
}

static inline void agent_send_bin(agent_t *a, uint64_t ch, const void *p, size_t n)
{
    agent_msg_t m;
    msgpack_packer *pk = agent_begin(&m, ch, 0, 1);
    msgpack_pack_bin_with_body(pk, p, n);
    agent_end(a, &m);
}

static inline void agent_invoke(agent_t *a, uint64_t ch, const char *event)
{
    agent_send_str(a, ch, 0, event);
}

static inline void agent_close(agent_t *a, uint64_t ch)
{
    agent_send_empty(a, ch, 2);
}

static inline void agent_error(agent_t *a, uint64_t ch, unsigned cat, unsigned code,
                               const char *msg)
{
    agent_msg_t m;
    msgpack_packer *pk = agent_begin(&m, ch, 1, 2);
    msgpack_pack_array(pk, 2);
    msgpack_pack_unsigned_int(pk, cat);
    msgpack_pack_unsigned_int(pk, code);
    msgpack_pack_str_with_body(pk, msg, strlen(msg));
    agent_end(a, &m);
}

/* Steps the worker once (no wait) and reads what it wrote. */
static inline void agent_pump(agent_t *a, int timeout_ms)
{
    if (a->last_step == 1)
        a->last_step = drover_worker_step(a->w, timeout_ms);
    struct pollfd p = {.fd = a->fd, .events = POLLIN};
    while (poll(&p, 1, 0) > 0 && (p.revents & POLLIN)) {
        if (msgpack_unpacker_buffer_capacity(&a->up) < 65536)
            assert_true(msgpack_unpacker_reserve_buffer(&a->up, 65536));
        ssize_t n = read(a->fd, msgpack_unpacker_buffer(&a->up), 65536);
        if (n <= 0)
            break;
        msgpack_unpacker_buffer_consumed(&a->up, (size_t)n);
    }
}

/* The next message from the worker, within timeout_ms (stepping it); NULL
 * when none came. Valid until the next call. */
static inline const msgpack_object *agent_next(agent_t *a, int timeout_ms)
{
    long long deadline = agent_now_ms() + timeout_ms;
    for (;;) {
        msgpack_unpack_return r = msgpack_unpacker_next(&a->up, &a->msg);
        if (r == MSGPACK_UNPACK_SUCCESS)
            return &a->msg.data;
        assert_true(r == MSGPACK_UNPACK_CONTINUE);
        if (agent_now_ms() >= deadline)
            return NULL;
        agent_pump(a, 5);
    }
}

/* Checks a message's channel and type; returns its args array. */
static inline const msgpack_object_array *agent_expect(agent_t *a, uint64_t ch, unsigned type)
{
    const msgpack_object *o = agent_next(a, 2000);
    assert_non_null(o);
    assert_int_equal(o->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(o->via.array.size, 3);
    assert_int_equal(o->via.array.ptr[0].via.u64, ch);
    assert_int_equal(o->via.array.ptr[1].via.u64, type);
    assert_int_equal(o->via.array.ptr[2].type, MSGPACK_OBJECT_ARRAY);
    return &o->via.array.ptr[2].via.array;
}

/* Expects [ch, 0, [chunk]] with exactly these bytes. */
static inline void agent_expect_chunk(agent_t *a, uint64_t ch, const void *p, size_t n)
{
    const msgpack_object_array *args = agent_expect(a, ch, 0);
    assert_int_equal(args->size, 1);
    const msgpack_object *c = &args->ptr[0];
    assert_int_equal(c->type, MSGPACK_OBJECT_BIN);
    assert_int_equal(c->via.bin.size, n);
    assert_memory_equal(c->via.bin.ptr, p, n);
}

/* Expects [ch, 1, [[cat, code], msg]]; msg NULL skips the text check. */
static inline void agent_expect_error(agent_t *a, uint64_t ch, unsigned cat, unsigned code,
                                      const char *msg)
{
    const msgpack_object_array *args = agent_expect(a, ch, 1);
    assert_int_equal(args->size, 2);
    assert_int_equal(args->ptr[0].type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(args->ptr[0].via.array.ptr[0].via.u64, cat);
    assert_int_equal(args->ptr[0].via.array.ptr[1].via.u64, code);
    assert_int_equal(args->ptr[1].type, MSGPACK_OBJECT_STR);
    if (msg) {
        assert_int_equal(args->ptr[1].via.str.size, strlen(msg));
        assert_memory_equal(args->ptr[1].via.str.ptr, msg, strlen(msg));
    }
}

/* Nothing more from the worker within ms. */
static inline void agent_expect_nothing(agent_t *a, int ms)
{
    const msgpack_object *o = agent_next(a, ms);
    assert_null(o);
}

/* Steps until the worker's step returns something other than 1. */
static inline int agent_run_until_end(agent_t *a, int timeout_ms)
{
    long long deadline = agent_now_ms() + timeout_ms;
    while (a->last_step == 1 && agent_now_ms() < deadline)
        agent_pump(a, 10);
    return a->last_step;
}

#endif
